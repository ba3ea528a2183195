//! One AMQP connection on the device listeners (5671, and WebSockets on 443), in one task:
//! the socket, certhub-amqp's engine (headers, SASL, sessions, links, flow control) and what
//! every link is doing for the hub. Bytes read become engine events acted on at once; the
//! hub's slow work (a judgement, a store call) runs as a future of this task and comes back
//! as a [`Done`]; the identities' mailboxes (kicks, C2D, twin pushes, method calls) reach the
//! task as [`Wake`]s. Everything the connection owes the client leaves in one write.
//!
//! Who a link acts for is decided by the device session core, exactly as a CONNECT is: a CBS
//! `put-token` for `{host}/devices/{id}` is judged as a SAS CONNECT of that id (named reasons,
//! audit, refusal limits); a link of an identity with no token is judged by the TLS client
//! chain. An admitted identity is a session of the core (registered, so a newer connection, a
//! revocation or a settings switch closes it, and its token's expiry is honoured); the
//! connection is shut when any of its identities is shut out. Links of services
//! (`service.rs`) and of Event Hubs readers (`eventhub.rs`) are served here too.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use certhub_amqp::message::{AnyMessage, decode, encode};
use certhub_amqp::types::definitions::{AmqpError, Error, ErrorCondition, LinkError};
use certhub_amqp::types::messaging::annotations::OwnedKey;
use certhub_amqp::types::messaging::{
    Accepted, AmqpValue, ApplicationProperties, Body, Data, DeliveryState, Message,
    MessageAnnotations, MessageId, Properties, Rejected,
};
use certhub_amqp::types::primitives::{SimpleValue, Symbol, Value};
use certhub_amqp::{AttachRequest, Config, Engine, Event, LinkId, error};
use certhub_core::{AuthenticatedDevice, MessageProperties};
use certhub_pki::CertificateDer;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::address::{self, Node, Owner};
use super::eventhub::{self, Partition};
use super::service::{self, ServiceLink, ServiceSlot};
use crate::device::{Attempt, DeviceCore, Ended, Live, Settle};
use crate::mqtt::session::Connection;
use crate::sessions::{DESIRED, METHODS, Mail, MethodReply, MethodRequest, Outbound};
use crate::state::now_ms;
use crate::telemetry::Committed;

/// The protocol header and the AMQP open must come this soon after the handshake.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without a client certificate must have an identity admitted (a CBS token put)
/// this soon after its open, or it is closed: it holds memory and proves nothing.
const TOKEN_TIMEOUT_MS: i64 = 10_000;
/// Telemetry larger than Azure's 256 KB is refused.
const MAX_MESSAGE: u64 = 256 * 1024;
/// The largest frame the hub reads.
const MAX_FRAME: u32 = 64 * 1024;
/// Telemetry messages of one link being stored at once (its credit window).
const TELEMETRY_WINDOW: u32 = 256;
/// Requests (CBS, twin, management, method answers) a link may have in flight.
const REQUEST_WINDOW: u32 = 16;
/// Links one session may hold (a device SDK attaches about ten; an Event Hubs client a few
/// per session): more is an attach storm, refused link by link.
const MAX_LINKS: usize = 64;
/// Sessions one connection may hold at once (rhea-based clients begin one per link).
const MAX_SESSIONS: u16 = 64;
/// The idle timeout the hub announces (Azure IoT Hub's): clients send something at least
/// this often; one silent for twice as long is closed.
const IDLE_TIMEOUT_MS: u32 = 240_000;
/// A write the client does not take within this time ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a C2D message sent over AMQP stays locked for the device's disposition; one that
/// comes later finds it delivered again.
pub(super) const C2D_LOCK_MS: i64 = 60_000;
/// How often an idle C2D link looks at its queue again (locks run out).
const C2D_POLL_MS: i64 = 10_000;
/// A shut-out client that has not closed this long after its sessions were ended is closed.
const SHUT_GRACE_MS: i64 = 1_000;
/// Read buffer of a busy connection.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer of a quiet one.
const IDLE_READ: usize = 512;
/// A connection that has read nothing for this long is quiet (its large buffer goes).
const BUSY_MS: i64 = 1_000;

/// A future of the connection's task.
pub(super) type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Slow work of the hub, come back to the connection.
pub(super) enum Done {
    /// An identity was judged (for a CBS put or a link's attach).
    Judged {
        client_id: String,
        result: Result<Judged, String>,
        then: Then,
    },
    /// A reply to send on a session's reply link of `node`.
    Reply {
        channel: u16,
        node: &'static str,
        message: Vec<u8>,
    },
    /// A received delivery's outcome (none: it came settled; telemetry is still counted).
    Settle {
        link: LinkId,
        delivery: Option<u32>,
        state: DeliveryState,
    },
    /// A twin response for an identity's twin link.
    Twin { client_id: String, message: Vec<u8> },
    /// A C2D message locked for a device link (or none waiting).
    C2dLocked {
        link: LinkId,
        device: AuthenticatedDevice,
        locked: Option<(String, Vec<u8>)>,
    },
    /// A settle of a C2D message or a service queue record was stored: the link may go on.
    Next { link: LinkId },
    /// A service link's attach was judged.
    ServiceAttach {
        request: Box<AttachRequest>,
        result: Result<ServiceLink, Error>,
    },
    /// A partition receiver's attach was judged.
    PartitionAttach {
        request: Box<AttachRequest>,
        result: Result<Box<Partition>, Error>,
    },
    /// A service queue record locked for a receiver (or none waiting, or the link lost its
    /// right).
    Queued {
        link: LinkId,
        queue: certhub_store::ServiceQueue,
        result: Result<Option<(String, Vec<u8>)>, Error>,
    },
    /// A provisioning request's answer: its delivery settled, the answer sent.
    Dps {
        link: LinkId,
        delivery: Option<u32>,
        id: String,
        correlation: Option<MessageId>,
        answer: crate::dps::Answer,
    },
    /// Telemetry read for a partition receiver.
    Events {
        link: LinkId,
        result: Result<Vec<(i64, Vec<u8>)>, String>,
    },
}

/// A judged identity: newly opened, or a renewed token of one admitted.
pub(super) enum Judged {
    Opened(Box<(AuthenticatedDevice, Live)>),
    Renewed(AuthenticatedDevice),
}

/// What waited for an identity's judgement.
pub(super) enum Then {
    /// A CBS put-token: the reply.
    Cbs {
        channel: u16,
        request: Box<AnyMessage>,
    },
    /// Links of the identity, to accept or refuse.
    Attach(Vec<(Box<AttachRequest>, Node)>),
}

/// News from outside the connection's task.
#[derive(Debug)]
enum Wake {
    /// An identity's session was shut out (a kick): who, and why.
    Kicked(Box<(String, String)>),
    /// C2D messages were queued for an identity.
    C2d(String),
    /// A desired-properties patch for an identity's twin link.
    Desired(Box<(String, Vec<u8>)>),
    /// A direct method call for an identity.
    Method(Box<(String, MethodRequest)>),
    /// An identity's token expired.
    Expired(String),
    /// A partition receiver's partition was taken by a reader of a higher owner level.
    Stolen(LinkId),
}

/// What the identity watchers share with the connection.
#[derive(Debug, Default)]
struct Ending {
    /// Cancelled when the connection has ended.
    ended: CancellationToken,
    /// Why it ended, when the client did not close it (lost, or a protocol error).
    reason: Mutex<Option<String>>,
}

impl Ending {
    /// How the identities' sessions end: cleanly, or with the reason the connection ended.
    fn end(&self) -> Ended {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        reason.map_or(Ended::Clean, Ended::Closed)
    }
}

/// An identity admitted on this connection.
#[derive(Debug)]
struct Identity {
    device: AuthenticatedDevice,
    /// Its session's connection number among the hub's sessions.
    conn: u64,
    /// Its token's expiry (ms), watched by its session's watcher (renewals move it).
    expiry: watch::Sender<Option<i64>>,
    twin_out: Option<LinkId>,
    methods_out: Option<LinkId>,
    c2d: Vec<LinkId>,
    /// Method calls sent and not answered: correlation id (a v4 uuid) -> the hub's request id.
    calls: HashMap<[u8; 16], String>,
}

/// What a link does for the hub.
enum Handler {
    /// Attached, its answer being worked out.
    Pending,
    /// `$cbs` requests (the client sends).
    CbsIn,
    /// A reply link (`$cbs`, `$management`; the client receives).
    Replies {
        node: &'static str,
        queue: VecDeque<Vec<u8>>,
    },
    Telemetry {
        device: AuthenticatedDevice,
    },
    TwinIn {
        client_id: String,
    },
    /// The hub's sends of one identity's twin or methods (responses, pushes, calls).
    Out {
        client_id: String,
        queue: VecDeque<Vec<u8>>,
    },
    MethodsIn {
        client_id: String,
    },
    C2d {
        client_id: String,
        device: AuthenticatedDevice,
        state: Held,
    },
    Service(ServiceLink),
    /// A provisioning client's requests for registration `id` (it sends); the answers go
    /// on its `Out` link named `$dps/{id}`.
    DpsIn {
        id: String,
    },
    ManagementIn,
    Partition(Box<Partition>),
}

/// A queue link's message in the client's hands.
#[derive(Debug)]
pub(super) enum Held {
    /// Nothing held; look again at this time (ms) unless woken.
    Idle { next: i64 },
    /// Reading or settling (a future of the task).
    Busy,
    /// Sent unsettled under the lock `token` until `until`.
    Sent {
        token: String,
        delivery: u32,
        until: i64,
    },
}

/// The connection.
struct Conn {
    engine: Engine,
    core: Arc<DeviceCore>,
    peer: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    tls13: bool,
    links: HashMap<LinkId, Handler>,
    /// Replies waiting for their session's reply link: (channel, node) -> messages.
    replies: HashMap<(u16, &'static str), LinkId>,
    identities: HashMap<String, Identity>,
    /// Identities being judged -> what waits for them.
    judging: HashMap<String, Vec<(Box<AttachRequest>, Node)>>,
    service: Arc<ServiceSlot>,
    work: FuturesUnordered<Work>,
    /// Telemetry handed to the writer, oldest first: accepted once committed.
    owed: VecDeque<(LinkId, Option<u32>, Committed)>,
    wake_tx: mpsc::UnboundedSender<Wake>,
    ending: Arc<Ending>,
    /// Shutting out: why, and when the connection is closed if the client has not.
    shut: Option<(String, i64)>,
    /// The hub closed the connection: when it stops waiting for the client's close.
    closing_until: Option<i64>,
    /// When a connection without a certificate must have an identity.
    token_check: Option<i64>,
    /// Telemetry log updates, while a partition receiver waits for them.
    follow: Option<watch::Receiver<i64>>,
    /// Service queue updates, while a service receiver waits for them.
    service_queues: Option<watch::Receiver<u64>>,
    /// A provisioning client's SASL PLAIN credential: its registration id and SAS token.
    dps_token: Option<(String, String)>,
}

/// How the hub offers its AMQP connections (one for all of them).
fn config() -> Arc<Config> {
    static CONFIG: std::sync::OnceLock<Arc<Config>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut properties = certhub_amqp::types::primitives::OrderedMap::new();
            properties.insert(Symbol::from("product"), Value::String("certhub".into()));
            Arc::new(Config {
                container_id: "certhub".into(),
                max_frame_size: MAX_FRAME,
                max_sessions: MAX_SESSIONS,
                max_links: MAX_LINKS,
                max_message_size: MAX_MESSAGE,
                idle_timeout_ms: IDLE_TIMEOUT_MS,
                mechanisms: vec!["MSSBCBS", "PLAIN", "EXTERNAL", "ANONYMOUS"],
                properties: Some(properties),
            })
        })
        .clone()
}

/// A device connection from its first AMQP byte to its end.
pub(crate) async fn run<S>(mut io: S, conn: Connection, core: Arc<DeviceCore>)
where
    S: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let Connection {
        peer,
        chain,
        tls13,
        mut pending,
    } = conn;
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    let (wake_tx, mut wakes) = mpsc::unbounded_channel();
    let mut c = Box::new(Conn {
        engine: Engine::new(config(), now_ms()),
        core,
        peer,
        chain,
        tls13,
        links: HashMap::new(),
        replies: HashMap::new(),
        identities: HashMap::new(),
        judging: HashMap::new(),
        service: Arc::new(ServiceSlot::default()),
        work: FuturesUnordered::new(),
        owed: VecDeque::new(),
        wake_tx,
        ending: Arc::new(Ending::default()),
        shut: None,
        dps_token: None,
        closing_until: None,
        token_check: None,
        follow: None,
        service_queues: None,
    });
    let mut input = BytesMut::with_capacity(512);
    // Until the open: the handshake slot is held, and the whole exchange has a deadline.
    loop {
        let read = crate::gate::owed(
            &mut pending,
            deadline,
            io.read_buf(&mut input),
            c.core.state(),
            c.core.listener(),
        )
        .await;
        if !matches!(read, Some(Ok(n)) if n > 0) {
            return;
        }
        c.feed(&mut input);
        if !c.write(&mut io).await || c.engine.is_closed() {
            c.finish();
            return;
        }
        if c.engine.is_open() {
            break;
        }
        input.reserve(512);
    }
    drop(pending);
    if c.chain.is_empty() {
        c.token_check = Some(now_ms() + TOKEN_TIMEOUT_MS);
    }
    let lost = Box::pin(c.serve(&mut io, &mut input, &mut wakes)).await;
    if let Some(why) = lost {
        *c.ending.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
    c.finish();
}

impl Conn {
    fn state(&self) -> &crate::state::AppState {
        self.core.state()
    }

    /// Serves the open connection until it ends; `Some` says why when the client did not
    /// close it.
    async fn serve<S>(
        &mut self,
        io: &mut S,
        input: &mut BytesMut,
        wakes: &mut mpsc::UnboundedReceiver<Wake>,
    ) -> Option<String>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        // One timer for the connection, moved earlier when something is due sooner and
        // otherwise only when it fires (a read or a write does no timer work).
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut armed: Option<i64> = None;
        // The read buffer: a small one while the connection is quiet, a large one while it is
        // busy (kept until it has been quiet for a second).
        let mut buf: Vec<u8> = Vec::new();
        let mut last_read_ms = 0i64;
        loop {
            let now = now_ms();
            if self.engine.is_closed() || self.closing_until.is_some_and(|t| t <= now) {
                return None;
            }
            if buf.len() > IDLE_READ && now - last_read_ms >= BUSY_MS {
                buf = Vec::new();
            }
            if buf.is_empty() {
                buf = vec![0; IDLE_READ];
            }
            let mut deadline = self.deadline();
            if buf.len() > IDLE_READ {
                let quiet = last_read_ms + BUSY_MS;
                deadline = Some(deadline.map_or(quiet, |d| d.min(quiet)));
            }
            if let Some(at) = deadline
                && armed.is_none_or(|a| at < a)
            {
                let left = u64::try_from(at - now).unwrap_or(0);
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_millis(left));
                armed = Some(at);
            }
            let follow = async {
                match self.follow.as_mut() {
                    Some(f) => f.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let queues = async {
                match self.service_queues.as_mut() {
                    Some(q) => q.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = io.read(&mut buf) => match read {
                    Ok(0) => return Some("the AMQP connection ended without a close: the client went away".into()),
                    Err(e) => return Some(format!("the AMQP connection ended without a close: {e}")),
                    Ok(n) => {
                        last_read_ms = now_ms();
                        input.extend_from_slice(&buf[..n]);
                        if n == buf.len() && buf.len() < READ_CHUNK {
                            buf = vec![0; READ_CHUNK];
                        }
                        self.feed(input);
                        if input.is_empty() {
                            // Nothing of a frame left over: the connection holds no input.
                            *input = BytesMut::new();
                        }
                    }
                },
                result = next_commit(&mut self.owed), if !self.owed.is_empty() => {
                    self.stored(result);
                    while let Some(more) = next_commit(&mut self.owed).now_or_never() {
                        self.stored(more);
                    }
                }
                done = self.work.next(), if !self.work.is_empty() => {
                    if let Some(done) = done {
                        self.done(done);
                    }
                    while let Some(Some(done)) = self.work.next().now_or_never() {
                        self.done(done);
                    }
                }
                wake = wakes.recv() => {
                    if let Some(wake) = wake {
                        self.wake(wake);
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.tick();
                }
                changed = follow => {
                    if !changed {
                        self.follow = None;
                    }
                    self.pump_partitions();
                }
                changed = queues => {
                    if !changed {
                        self.service_queues = None;
                    }
                    self.pump_service_queues();
                }
            }
            if !self.write(io).await {
                return Some("the client did not take what the hub wrote".into());
            }
        }
    }

    /// Writes what the engine has for the client; false when the write failed. A write the
    /// socket takes at once needs no timer; one that waits has [`WRITE_TIMEOUT`].
    async fn write<S: AsyncWrite + Unpin>(&mut self, io: &mut S) -> bool {
        let Some(out) = self.engine.take_output(now_ms()) else {
            return true;
        };
        let mut at = 0;
        while at < out.len() {
            match io.write(&out[at..]).now_or_never() {
                Some(Ok(0) | Err(_)) => return false,
                Some(Ok(n)) => at += n,
                None => break,
            }
        }
        if at == out.len()
            && let Some(flushed) = io.flush().now_or_never()
        {
            return flushed.is_ok();
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            io.write_all(&out[at..]).await?;
            io.flush().await
        })
        .await;
        matches!(written, Ok(Ok(())))
    }

    /// The connection has ended: the identities' sessions end with its reason.
    fn finish(&mut self) {
        // What the client held of the hub's queues goes back for the next receiver.
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.release(link);
        }
        self.ending.ended.cancel();
    }

    fn deadline(&self) -> Option<i64> {
        let mut at = self.engine.deadline();
        let mut earlier = |t: Option<i64>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        earlier(self.shut.as_ref().map(|(_, t)| *t));
        earlier(self.closing_until);
        earlier(self.token_check);
        for handler in self.links.values() {
            earlier(match handler {
                Handler::C2d { state, .. } => state.deadline(),
                Handler::Service(s) => s.deadline(),
                Handler::Partition(p) => Some(p.deadline()),
                _ => None,
            });
        }
        at
    }

    fn tick(&mut self) {
        let now = now_ms();
        self.engine.tick(now);
        if let Some((reason, at)) = &self.shut
            && *at <= now
        {
            let error = error(AmqpError::UnauthorizedAccess, reason);
            self.engine.close(Some(error));
            self.shut = None;
            self.closing_until = Some(now + SHUT_GRACE_MS);
        }
        if let Some(at) = self.token_check
            && at <= now
        {
            self.token_check = None;
            self.check_tokens();
        }
        let due: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, h)| match h {
                Handler::C2d { state, .. } => state.deadline().is_some_and(|t| t <= now),
                Handler::Service(s) => s.deadline().is_some_and(|t| t <= now),
                Handler::Partition(p) => p.deadline() <= now,
                _ => false,
            })
            .map(|(l, _)| *l)
            .collect();
        for link in due {
            self.timer_due(link, now);
        }
        self.events();
    }

    /// Shuts a connection without a client certificate that has put no valid token in time,
    /// or (a service's) once every token put on it has run out and no device is admitted.
    fn check_tokens(&mut self) {
        if self.identities.is_empty() && !self.service.is_set() {
            self.shut_out(&format!(
                "no identity was admitted within {} s of the AMQP open: put a SAS token on $cbs first, or present a client certificate",
                TOKEN_TIMEOUT_MS / 1000
            ));
            return;
        }
        if let Some(expiry) = self.service.latest_expiry() {
            let at = expiry.saturating_mul(1000);
            if at > now_ms() {
                self.token_check = Some(at);
            } else if self.identities.is_empty() {
                self.shut_out(
                    "the service's SAS token expired: put a fresh one on $cbs before it runs out",
                );
            }
        }
    }

    /// Shuts the connection out for `reason`: every session is ended with it (the Azure SDKs
    /// then let go of their links at once and close the connection); a client that has not
    /// closed within a second gets the connection closed with the reason.
    fn shut_out(&mut self, reason: &str) {
        if self.shut.is_some() || !self.engine.is_open() {
            return;
        }
        self.engine
            .end_all(error(AmqpError::UnauthorizedAccess, reason));
        self.shut = Some((reason.to_string(), now_ms() + SHUT_GRACE_MS));
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.release(link);
        }
    }

    /// Feeds what was read to the engine and acts on its events, again while it takes more
    /// (it stops at a SASL init until the hub's outcome; a client may have sent its AMQP
    /// header and open right behind it).
    fn feed(&mut self, input: &mut BytesMut) {
        loop {
            let before = input.len();
            self.engine.receive(input, now_ms());
            self.events();
            if input.is_empty() || input.len() == before {
                return;
            }
        }
    }

    /// Acts on every event the engine has.
    fn events(&mut self) {
        while let Some(event) = self.engine.next_event() {
            match event {
                Event::SaslInit {
                    mechanism,
                    response,
                    ..
                } => {
                    let ok = if mechanism == "PLAIN"
                        && let Some(credential) = provisioning_plain(response.as_deref())
                    {
                        // A provisioning client's symmetric key: judged with its register
                        // request.
                        self.dps_token = Some(credential);
                        true
                    } else if mechanism == "PLAIN" {
                        service::sasl_plain(self.state(), response.as_deref(), &self.service)
                    } else {
                        true
                    };
                    self.engine.sasl_outcome(ok);
                }
                Event::Opened { .. } => {}
                Event::Attach(request) => self.attach(request),
                Event::Transfer {
                    link,
                    delivery,
                    settled,
                    payload,
                } => self.transfer(link, delivery, settled, &payload),
                Event::Outcome {
                    link,
                    delivery,
                    state,
                } => self.outcome(link, delivery, state),
                Event::Credit { link } => self.pump(link),
                Event::Detached { link, .. } => {
                    self.release(link);
                    self.links.remove(&link);
                }
                Event::Closed { .. } => {}
                Event::Failed(why) => {
                    tracing::debug!(peer = %self.peer, reason = why, "AMQP connection failed");
                    *self.ending.reason.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("AMQP protocol error: {why}"));
                }
            }
        }
    }

    fn attach(&mut self, request: Box<AttachRequest>) {
        if self.shut.is_some() {
            let why = self.shut.as_ref().map(|s| s.0.clone()).unwrap_or_default();
            self.engine
                .refuse(*request, error(AmqpError::UnauthorizedAccess, &why));
            return;
        }
        let link = request.link;
        let node = match address::parse(&request.address) {
            Ok(node) => node,
            Err(e) => {
                self.engine
                    .refuse(*request, error(AmqpError::NotFound, &e.to_string()));
                return;
            }
        };
        let channel = self.engine.session_of(link).unwrap_or(0);
        match (node, request.client_sends) {
            (Node::Cbs, true) => {
                self.engine.accept(&request, REQUEST_WINDOW);
                self.links.insert(link, Handler::CbsIn);
            }
            (Node::Management, true) => {
                self.engine.accept(&request, REQUEST_WINDOW);
                self.links.insert(link, Handler::ManagementIn);
            }
            (node @ (Node::Cbs | Node::Management), false) => {
                let name = if node == Node::Cbs {
                    "$cbs"
                } else {
                    "$management"
                };
                if self.replies.contains_key(&(channel, name)) {
                    let why = format!("{name} already has a reply link on this session");
                    self.engine
                        .refuse(*request, error(AmqpError::ResourceLocked, &why));
                    return;
                }
                self.engine.accept(&request, 0);
                self.replies.insert((channel, name), link);
                self.links.insert(
                    link,
                    Handler::Replies {
                        node: name,
                        queue: VecDeque::new(),
                    },
                );
            }
            (
                node @ (Node::Events(_) | Node::Twin(_) | Node::DeviceBound(_) | Node::Methods(_)),
                _,
            ) => self.device_attach(request, node),
            (Node::Registration { scope, id }, client_sends) => {
                if !scope.eq_ignore_ascii_case(self.state().id_scope()) {
                    let why = format!(
                        "no ID scope {scope:?} here; this hub's is {}",
                        self.state().id_scope()
                    );
                    self.engine
                        .refuse(*request, error(AmqpError::NotFound, &why));
                    return;
                }
                if client_sends {
                    self.engine.accept(&request, REQUEST_WINDOW);
                    self.links.insert(link, Handler::DpsIn { id });
                } else {
                    self.engine.accept(&request, 0);
                    self.links.insert(
                        link,
                        Handler::Out {
                            client_id: format!("$dps/{id}"),
                            queue: VecDeque::new(),
                        },
                    );
                }
            }
            (node @ (Node::ServiceDeviceBound | Node::Feedback | Node::FileNotifications), _) => {
                self.links.insert(link, Handler::Pending);
                let state = self.state().clone();
                let slot = self.service.clone();
                self.work.push(Box::pin(async move {
                    let result = service::attach(&state, &slot, &node, request.client_sends).await;
                    Done::ServiceAttach { request, result }
                }));
            }
            (
                Node::Partition {
                    entity,
                    consumer_group,
                    partition,
                },
                _,
            ) => {
                self.links.insert(link, Handler::Pending);
                let state = self.state().clone();
                let slot = self.service.clone();
                let stolen = self.wake_tx.clone();
                self.work.push(Box::pin(async move {
                    let result = eventhub::attach(
                        &state,
                        &slot,
                        &request,
                        eventhub::Asked {
                            entity,
                            group: consumer_group,
                            partition,
                        },
                        move |claim| {
                            // Watches the claim while the link lives (the guard is the link's).
                            let taken = claim.taken.clone();
                            let gone = CancellationToken::new();
                            let guard = gone.clone().drop_guard();
                            tokio::spawn(async move {
                                tokio::select! {
                                    () = taken.cancelled() => {
                                        let _ = stolen.send(Wake::Stolen(link));
                                    }
                                    () = gone.cancelled() => {}
                                }
                            });
                            guard
                        },
                    )
                    .await;
                    Done::PartitionAttach { request, result }
                }));
            }
        }
    }

    /// A link of a device's own node: who it acts for is admitted first (by its token, else
    /// by the TLS chain), or the link is refused with the reason.
    fn device_attach(&mut self, request: Box<AttachRequest>, node: Node) {
        let owner = match &node {
            Node::Events(o) | Node::Twin(o) | Node::DeviceBound(o) | Node::Methods(o) => o.clone(),
            _ => return,
        };
        let client_id = owner.client_id();
        self.links.insert(request.link, Handler::Pending);
        if self.identities.contains_key(&client_id) {
            self.device_link(request, node, &client_id);
            return;
        }
        if let Some(waiting) = self.judging.get_mut(&client_id) {
            waiting.push((request, node));
            return;
        }
        self.judging
            .insert(client_id.clone(), vec![(request, node)]);
        let host = self
            .state()
            .hostnames()
            .first()
            .cloned()
            .unwrap_or_default();
        self.judge(client_id, &host, None, Then::Attach(Vec::new()));
    }

    /// Judges an identity (a token: as SAS; none: by the TLS chain) in a future of the task.
    fn judge(&mut self, client_id: String, host: &str, token: Option<String>, then: Then) {
        let core = self.core.clone();
        let peer = self.peer;
        let chain = self.chain.clone();
        let tls13 = self.tls13;
        let renewal = self.identities.contains_key(&client_id);
        let username = format!("{host}/{client_id}/?api-version=amqp");
        self.work.push(Box::pin(async move {
            let attempt = Attempt {
                peer,
                chain: &chain,
                tls13,
                client_id: &client_id,
                username: Some(&username),
                password: token.as_deref().map(str::as_bytes),
            };
            let judged = core.authenticate(attempt).await;
            let result = match judged {
                Err(_) => Err(format!(
                    "{client_id} is not authorized (the hub's audit trail names why)"
                )),
                Ok(device) if renewal => Ok(Judged::Renewed(device)),
                Ok(device) => match core.slot(&client_id, peer).await {
                    Err(_) => Err("the hub's device session limit is reached; retry".to_string()),
                    Ok(slot) => {
                        let opened = core.open(device.clone(), slot, false).await;
                        core.announce(&opened.live, peer).await;
                        Ok(Judged::Opened(Box::new((device, opened.live))))
                    }
                },
            };
            Done::Judged {
                client_id,
                result,
                then,
            }
        }));
    }

    fn judged(&mut self, client_id: String, result: Result<Judged, String>, then: Then) {
        let result = match result {
            Ok(Judged::Opened(opened)) => {
                let (device, live) = *opened;
                if self.shut.is_some() || self.engine.is_closed() {
                    // The connection is going: the session ends at once.
                    let core = self.core.clone();
                    tokio::spawn(async move {
                        core.close(live, Ended::Closed("the connection ended".into()), None)
                            .await;
                    });
                    Err("the connection is being closed".to_string())
                } else {
                    self.admitted(client_id.clone(), device, live);
                    Ok(())
                }
            }
            Ok(Judged::Renewed(device)) => match self.identities.get(&client_id) {
                Some(identity) => {
                    let expiry = device.expires().map(|se| se.saturating_mul(1000));
                    identity.expiry.send_replace(expiry);
                    Ok(())
                }
                None => Err(format!("{client_id} was shut out")),
            },
            Err(why) => Err(why),
        };
        let waiting = self.judging.remove(&client_id).unwrap_or_default();
        match then {
            Then::Cbs { channel, request } => {
                let (status, description) = match &result {
                    Ok(()) => (200, "OK".to_string()),
                    Err(why) => (401, why.clone()),
                };
                self.reply(
                    channel,
                    "$cbs",
                    reply_to(&request, status, &description, Value::Null),
                );
            }
            Then::Attach(more) => {
                for (request, node) in more {
                    self.after_judgement(request, node, &client_id, &result);
                }
            }
        }
        for (request, node) in waiting {
            self.after_judgement(request, node, &client_id, &result);
        }
    }

    fn after_judgement(
        &mut self,
        request: Box<AttachRequest>,
        node: Node,
        client_id: &str,
        result: &Result<(), String>,
    ) {
        match result {
            Ok(()) if self.identities.contains_key(client_id) => {
                self.device_link(request, node, client_id);
            }
            Ok(()) => {
                self.links.remove(&request.link);
                let why = format!("{client_id} was shut out");
                self.engine
                    .refuse(*request, error(AmqpError::UnauthorizedAccess, &why));
            }
            Err(why) => {
                self.links.remove(&request.link);
                self.engine
                    .refuse(*request, error(AmqpError::UnauthorizedAccess, why));
            }
        }
    }

    /// Registers an admitted identity and watches its session (kicks, work, token expiry).
    fn admitted(&mut self, client_id: String, device: AuthenticatedDevice, live: Live) {
        let expiry_ms = device.expires().map(|se| se.saturating_mul(1000));
        let (expiry, expiry_rx) = watch::channel(expiry_ms);
        self.identities.insert(
            client_id,
            Identity {
                device,
                conn: live.ticket.conn,
                expiry,
                twin_out: None,
                methods_out: None,
                c2d: Vec::new(),
                calls: HashMap::new(),
            },
        );
        tokio::spawn(watch_session(
            live,
            expiry_rx,
            self.wake_tx.clone(),
            self.core.clone(),
            self.ending.clone(),
        ));
    }

    /// Serves a device link of an admitted identity.
    fn device_link(&mut self, request: Box<AttachRequest>, node: Node, client_id: &str) {
        if !matches!(self.links.get(&request.link), Some(Handler::Pending)) {
            // Detached by the client while its identity was judged.
            return;
        }
        let Some(identity) = self.identities.get_mut(client_id) else {
            return;
        };
        let link = request.link;
        let device = identity.device.clone();
        let client_id = client_id.to_string();
        let sessions = self.core.state().sessions();
        let handler = match (node, request.client_sends) {
            (Node::Events(_), true) => {
                self.engine.accept(&request, TELEMETRY_WINDOW);
                Handler::Telemetry { device }
            }
            (Node::Twin(_), true) => {
                self.engine.accept(&request, REQUEST_WINDOW);
                Handler::TwinIn { client_id }
            }
            (Node::Twin(_), false) => {
                self.engine.accept(&request, 0);
                identity.twin_out = Some(link);
                Handler::Out {
                    client_id,
                    queue: VecDeque::new(),
                }
            }
            (Node::Methods(_), false) => {
                // Attaching it subscribes the identity to direct methods (as MQTT's
                // SUBSCRIBE to `$iothub/methods/POST/#` does), detaching it ends that.
                self.engine.accept(&request, 0);
                identity.methods_out = Some(link);
                sessions.subscribed(&client_id, identity.conn, &[(METHODS.to_string(), 0)]);
                Handler::Out {
                    client_id,
                    queue: VecDeque::new(),
                }
            }
            (Node::Methods(_), true) => {
                self.engine.accept(&request, REQUEST_WINDOW);
                Handler::MethodsIn { client_id }
            }
            (Node::DeviceBound(o), false) if o.module.is_none() => {
                self.engine.accept(&request, 0);
                identity.c2d.push(link);
                Handler::C2d {
                    client_id,
                    device,
                    state: Held::Idle { next: 0 },
                }
            }
            (node, _) => {
                self.links.remove(&link);
                let why =
                    format!("{node:?} is not served in this direction (or for modules) over AMQP");
                self.engine
                    .refuse(*request, error(AmqpError::NotImplemented, &why));
                return;
            }
        };
        self.links.insert(link, handler);
        self.pump(link);
    }

    /// A message on a link the hub receives on.
    fn transfer(&mut self, link: LinkId, delivery: u32, settled: bool, payload: &[u8]) {
        let Some(handler) = self.links.get(&link) else {
            return;
        };
        if let Handler::Telemetry { device } = handler {
            let message = match decode(payload) {
                Ok(m) => m,
                Err(why) => {
                    self.engine
                        .settle(link, delivery, rejected(AmqpError::DecodeError, &why));
                    return;
                }
            };
            let (props, body) = telemetry_parts(&message);
            let record = self.core.telemetry(device, &props, body);
            match self.state().telemetry().try_submit(record) {
                Ok(committed) => {
                    let owed = (!settled).then_some(delivery);
                    self.owed.push_back((link, owed, committed));
                }
                Err(record) => {
                    let state = self.state().clone();
                    self.work.push(Box::pin(async move {
                        let committed = match state.telemetry().submit(record).await {
                            Ok(c) => c.await,
                            Err(e) => Err(e),
                        };
                        Done::Settle {
                            link,
                            delivery: (!settled).then_some(delivery),
                            state: stored_state(committed),
                        }
                    }));
                }
            }
            return;
        }
        let request = match decode(payload) {
            Ok(m) => m,
            Err(why) => {
                if !settled {
                    self.engine
                        .settle(link, delivery, rejected(AmqpError::DecodeError, &why));
                }
                return;
            }
        };
        // Requests are accepted as read (their answer is a message of its own); a C2D send
        // is settled with its outcome.
        if !settled && !matches!(handler, Handler::Service(_) | Handler::DpsIn { .. }) {
            self.engine
                .settle(link, delivery, DeliveryState::Accepted(Accepted {}));
        }
        let channel = self.engine.session_of(link).unwrap_or(0);
        match self.links.get(&link) {
            Some(Handler::CbsIn) => self.put_token(channel, request),
            Some(Handler::ManagementIn) => {
                let state = self.state().clone();
                let slot = self.service.clone();
                self.work.push(Box::pin(async move {
                    let (status, description, body) =
                        eventhub::management(&request, &state, &slot).await;
                    Done::Reply {
                        channel,
                        node: "$management",
                        message: encode(&reply_to(&request, status, &description, body)),
                    }
                }));
            }
            Some(Handler::TwinIn { client_id }) => {
                let client_id = client_id.clone();
                self.twin_request(client_id, request);
            }
            Some(Handler::DpsIn { id }) => {
                let id = id.clone();
                self.provisioning_request(link, (!settled).then_some(delivery), id, &request);
            }
            Some(Handler::MethodsIn { client_id }) => {
                let client_id = client_id.clone();
                self.method_answer(&client_id, &request);
            }
            Some(Handler::Service(s)) if s.sends_c2d() => {
                let state = self.state().clone();
                let slot = self.service.clone();
                self.work.push(Box::pin(async move {
                    let state = service::c2d_send(&state, &slot, &request).await;
                    Done::Settle {
                        link,
                        delivery: (!settled).then_some(delivery),
                        state,
                    }
                }));
            }
            _ => {}
        }
    }

    /// `$cbs` put-token: each device token is judged as a SAS CONNECT of the identity its
    /// audience names; a token signed with a policy key is a service's.
    fn put_token(&mut self, channel: u16, request: AnyMessage) {
        let bad = |why: &str| Some((400, why.to_string()));
        let refusal = if property(&request, "operation") != Some("put-token") {
            bad(
                "the CBS node takes operation put-token (a SAS token as the body, the audience as name)",
            )
        } else if property(&request, "name").is_none() {
            bad("a put-token request names its audience (name)")
        } else if !matches!(&request.body, Body::Value(AmqpValue(Value::String(_)))) {
            bad("a put-token request carries the token as a string body")
        } else {
            None
        };
        if let Some((status, why)) = refusal {
            self.reply(
                channel,
                "$cbs",
                reply_to(&request, status, &why, Value::Null),
            );
            return;
        }
        let audience = property(&request, "name").unwrap_or_default().to_string();
        let token = match &request.body {
            Body::Value(AmqpValue(Value::String(t))) => t.clone(),
            _ => String::new(),
        };
        let Some((host, owner)) = audience_owner(&audience) else {
            if token.contains("skn=") {
                // Signed with a shared access policy's key: a service.
                let state = self.state().clone();
                let slot = self.service.clone();
                self.work.push(Box::pin(async move {
                    let (status, description) = service::put_token(&state, &slot, &token).await;
                    Done::Reply {
                        channel,
                        node: "$cbs",
                        message: encode(&reply_to(&request, status, &description, Value::Null)),
                    }
                }));
                // A service's connection lasts as long as one of its tokens.
                self.token_check = Some(now_ms() + 1_000);
                return;
            }
            let why = format!(
                "{audience:?} is not an audience of this hub: {{host}}/devices/{{id}}[/modules/{{id}}]"
            );
            self.reply(channel, "$cbs", reply_to(&request, 404, &why, Value::Null));
            return;
        };
        let client_id = owner.client_id();
        if self.judging.contains_key(&client_id) {
            self.reply(
                channel,
                "$cbs",
                reply_to(
                    &request,
                    409,
                    "a token of this identity is being judged; put the next when it is answered",
                    Value::Null,
                ),
            );
            return;
        }
        self.judging.insert(client_id.clone(), Vec::new());
        self.judge(
            client_id,
            &host,
            Some(token),
            Then::Cbs {
                channel,
                request: Box::new(request),
            },
        );
    }

    /// Queues a reply on its session's reply link of `node`.
    fn reply(&mut self, channel: u16, node: &'static str, message: AnyMessage) {
        self.reply_bytes(channel, node, encode(&message));
    }

    fn reply_bytes(&mut self, channel: u16, node: &'static str, message: Vec<u8>) {
        let Some(link) = self.replies.get(&(channel, node)).copied() else {
            tracing::debug!(peer = %self.peer, node, "a reply with no reply link to send it on");
            return;
        };
        if let Some(Handler::Replies { queue, .. }) = self.links.get_mut(&link) {
            queue.push_back(message);
        }
        self.pump(link);
    }

    /// Twin requests: the `operation` (and `resource`) annotations say which; each is
    /// answered on the twin link the hub sends on, with the request's correlation id, a
    /// `status` annotation (int) and, for a reported patch, the twin's new `version` (long).
    fn twin_request(&mut self, client_id: String, request: AnyMessage) {
        let Some(identity) = self.identities.get(&client_id) else {
            return;
        };
        let device = identity.device.clone();
        let conn = identity.conn;
        let sessions = self.state().sessions();
        let operation = annotation(&request, "operation").map(str::to_string);
        let resource = annotation(&request, "resource").map(str::to_string);
        let correlation = request
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let answer = move |status: i32, version: Option<i64>, body: Vec<u8>| {
            let mut annotations = MessageAnnotations::builder()
                .insert(OwnedKey::Symbol(Symbol::from("status")), Value::Int(status));
            if let Some(v) = version {
                annotations =
                    annotations.insert(OwnedKey::Symbol(Symbol::from("version")), Value::Long(v));
            }
            encode(&data_message(
                Properties {
                    correlation_id: correlation,
                    ..Default::default()
                },
                Some(annotations.build()),
                body,
            ))
        };
        let immediate = match (operation.as_deref(), resource.as_deref()) {
            (Some("PUT"), Some("/notifications/twin/properties/desired")) => {
                sessions.subscribed(&client_id, conn, &[(DESIRED.to_string(), 0)]);
                Some((200, Vec::new()))
            }
            (Some("DELETE"), Some("/notifications/twin/properties/desired")) => {
                sessions.unsubscribed(&client_id, conn, &[DESIRED.to_string()]);
                Some((200, Vec::new()))
            }
            (Some("GET"), _) | (Some("PATCH"), Some("/properties/reported")) => None,
            (operation, resource) => Some((
                400,
                error_body(&format!(
                    "unknown twin operation {operation:?} on {resource:?}: GET, PATCH /properties/reported, PUT or DELETE /notifications/twin/properties/desired"
                )),
            )),
        };
        if let Some((status, body)) = immediate {
            let message = answer(status, None, body);
            self.send_on_twin(&client_id, message);
            return;
        }
        let core = self.core.clone();
        self.work.push(Box::pin(async move {
            let (status, version, body) = if operation.as_deref() == Some("GET") {
                match core.read_twin(&device).await {
                    Ok(twin) => (200, None, twin),
                    Err((status, why)) => (i32::from(status), None, error_body(&why)),
                }
            } else {
                let (_, patch) = telemetry_parts(&request);
                match core.patch_reported(&device, &patch).await {
                    Ok(version) => (204, Some(version), Vec::new()),
                    Err((status, why)) => (i32::from(status), None, error_body(&why)),
                }
            };
            Done::Twin {
                client_id,
                message: answer(status, version, body),
            }
        }));
    }

    /// A provisioning request (azure-more-protocols 6.2): `iotdps-operation-type` says
    /// register or poll; the credential is the connection's TLS chain or its SASL PLAIN token.
    fn provisioning_request(
        &mut self,
        link: LinkId,
        delivery: Option<u32>,
        id: String,
        request: &AnyMessage,
    ) {
        let operation = property(request, "iotdps-operation-type")
            .unwrap_or_default()
            .to_string();
        let operation_id = property(request, "iotdps-operation-id").map(str::to_string);
        let force = request
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get("iotdps-forceRegistration"))
            .is_some_and(|v| matches!(v, SimpleValue::Bool(true)));
        let correlation = request
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let body = body_bytes(request);
        let token = self
            .dps_token
            .as_ref()
            .filter(|(who, _)| who.eq_ignore_ascii_case(&id))
            .map(|(_, t)| t.clone());
        let state = self.state().clone();
        let peer = self.peer;
        let chain = self.chain.clone();
        let transport = self.core.listener();
        self.work.push(Box::pin(async move {
            let answer = match (operation.as_str(), operation_id) {
                ("iotdps-register", _) => {
                    crate::dps::register_request(
                        &state,
                        crate::dps::Request {
                            registration_id: &id,
                            peer,
                            chain: &chain,
                            token: token.as_deref(),
                            payload: None,
                            force,
                            transport,
                        },
                        &body,
                    )
                    .await
                }
                ("iotdps-get-operationstatus", Some(op)) => {
                    if crate::dps::prove_again(&state, &id, &chain, token.as_deref()).await {
                        crate::dps::operation_status(&state, &id, &op).await
                    } else {
                        crate::dps::Answer::error(&crate::dps::unauthorized())
                    }
                }
                (other, _) => crate::dps::Answer::error(&certhub_core::dps::DpsError::bad_request(
                    format!("iotdps-operation-type {other:?} is not one this service answers (iotdps-register, iotdps-get-operationstatus with iotdps-operation-id)"),
                )),
            };
            Done::Dps {
                link,
                delivery,
                id,
                correlation,
                answer,
            }
        }));
    }

    /// Settles a provisioning request and sends its answer: a refusal rejects the delivery
    /// (the Node SDK reports it as the error), a retryable failure rejects it as an internal
    /// error (the SDK tries again), anything else is accepted and answered on the client's
    /// receiver link under the request's correlation id.
    fn provisioning_answer(
        &mut self,
        link: LinkId,
        delivery: Option<u32>,
        id: &str,
        correlation: Option<MessageId>,
        answer: &crate::dps::Answer,
    ) {
        if answer.status >= 300 {
            let message = answer.body["message"]
                .as_str()
                .unwrap_or("refused")
                .to_string();
            let condition = match answer.status {
                401 | 403 => AmqpError::UnauthorizedAccess,
                404 => AmqpError::NotFound,
                429 | 500.. => AmqpError::InternalError,
                _ => AmqpError::InvalidField,
            };
            if let Some(d) = delivery {
                self.engine.settle(link, d, rejected(condition, &message));
            }
            return;
        }
        if let Some(d) = delivery {
            self.engine
                .settle(link, d, DeliveryState::Accepted(Accepted {}));
        }
        let mut properties = ApplicationProperties::builder();
        if let Some(s) = answer.retry_after {
            properties = properties.insert("retry-after", s.to_string());
        }
        let message = Message::builder()
            .properties(Properties {
                correlation_id: correlation,
                ..Default::default()
            })
            .application_properties(properties.build())
            .body(Body::Data(
                vec![Data(answer.body.to_string().into_bytes().into())].into(),
            ))
            .build();
        let name = format!("$dps/{id}");
        let out = self.links.iter_mut().find_map(|(l, h)| match h {
            Handler::Out { client_id, queue } if *client_id == name => Some((*l, queue)),
            _ => None,
        });
        if let Some((out, queue)) = out {
            queue.push_back(encode(&message));
            self.pump(out);
        } else {
            tracing::debug!(
                registration_id = id,
                "a provisioning answer with no receiver link"
            );
        }
    }

    fn send_on_twin(&mut self, client_id: &str, message: Vec<u8>) {
        let Some(link) = self.identities.get(client_id).and_then(|i| i.twin_out) else {
            tracing::debug!(client_id, "a twin message with no twin link to send it on");
            return;
        };
        if let Some(Handler::Out { queue, .. }) = self.links.get_mut(&link) {
            queue.push_back(message);
        }
        self.pump(link);
    }

    /// A direct method request on the method link, under a fresh uuid as correlation id (the
    /// SDKs require one); its answer names it.
    fn call(&mut self, client_id: &str, request: &MethodRequest) {
        let Some(identity) = self.identities.get_mut(client_id) else {
            return;
        };
        let Some(link) = identity.methods_out else {
            // No method link: the caller's wait runs out (504), as for a device that is gone.
            return;
        };
        let id = lock_tag();
        let message = Message::builder()
            .properties(Properties {
                correlation_id: Some(MessageId::Uuid(id.into())),
                ..Default::default()
            })
            .application_properties(
                ApplicationProperties::builder()
                    .insert("IoThub-methodname", request.name.as_str())
                    .build(),
            )
            .body(Body::Data(
                vec![Data(request.payload.clone().into())].into(),
            ))
            .build();
        identity.calls.insert(id, request.rid.clone());
        if let Some(Handler::Out { queue, .. }) = self.links.get_mut(&link) {
            queue.push_back(encode(&message));
        }
        self.pump(link);
    }

    /// A method answer: the request's correlation id, the status in `IoThub-status`, the
    /// JSON payload as the body.
    fn method_answer(&mut self, client_id: &str, answer: &AnyMessage) {
        let id = answer
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.as_ref())
            .and_then(uuid_bytes);
        let rid = id.and_then(|id| {
            self.identities
                .get_mut(client_id)
                .and_then(|i| i.calls.remove(&id))
        });
        let Some(rid) = rid else {
            tracing::info!(client_id, "a method answer for no call of this hub");
            return;
        };
        let status = match answer
            .application_properties
            .as_ref()
            .and_then(|a| a.0.get("IoThub-status"))
        {
            Some(SimpleValue::Int(n)) => i64::from(*n),
            Some(SimpleValue::Long(n)) => *n,
            Some(other) => simple_text(other).parse().unwrap_or(500),
            None => 500,
        };
        let (_, payload) = telemetry_parts(answer);
        let reply = MethodReply { status, payload };
        if !self
            .state()
            .sessions()
            .finish_method(client_id, &rid, reply)
        {
            tracing::info!(
                client_id,
                rid,
                "method response for no waiting call (timed out?)"
            );
        }
    }

    /// The client's disposition of a message the hub sent unsettled.
    fn outcome(&mut self, link: LinkId, delivery: u32, state: Option<DeliveryState>) {
        let settle = match state {
            Some(DeliveryState::Accepted(_)) => Settle::Complete,
            Some(DeliveryState::Rejected(_)) => Settle::Reject,
            _ => Settle::Abandon,
        };
        match self.links.get_mut(&link) {
            Some(Handler::C2d { device, state, .. }) => {
                let Held::Sent {
                    token,
                    delivery: sent,
                    ..
                } = state
                else {
                    return;
                };
                if *sent != delivery {
                    return;
                }
                let token = std::mem::take(token);
                let device = device.clone();
                *state = Held::Busy;
                let core = self.core.clone();
                self.work.push(Box::pin(async move {
                    if let Err(e) = core.settle_c2d(&device, &token, settle).await {
                        tracing::warn!(error = %e, "C2D disposition not stored");
                    }
                    Done::Next { link }
                }));
            }
            Some(Handler::Service(s)) => {
                if let Some(work) = s.outcome(self.core.state(), link, delivery, settle) {
                    self.work.push(work);
                }
            }
            _ => {}
        }
    }

    /// Sends what a link the hub sends on has, while it has credit; starts reading a queue
    /// for it when it has nothing.
    fn pump(&mut self, link: LinkId) {
        let now = now_ms();
        let Some(handler) = self.links.get_mut(&link) else {
            return;
        };
        match handler {
            Handler::Replies { queue, .. } | Handler::Out { queue, .. } => {
                while self.engine.credit(link) > 0 {
                    let Some(message) = queue.pop_front() else {
                        break;
                    };
                    if let Err(why) = self.engine.send(link, None, &message, true) {
                        tracing::warn!(peer = %self.peer, reason = why, "a reply not sent");
                    }
                }
            }
            Handler::C2d { device, state, .. } => {
                let ready = matches!(state, Held::Idle { next } if *next <= now);
                if ready && self.engine.credit(link) > 0 {
                    *state = Held::Busy;
                    let core = self.core.clone();
                    let device = device.clone();
                    let owner = device.id().clone();
                    self.work.push(Box::pin(async move {
                        let locked = match core.lock_c2d(&device, C2D_LOCK_MS).await {
                            Ok(locked) => locked,
                            Err(e) => {
                                tracing::warn!(client_id = owner.cn(), error = %e, "C2D queue not read");
                                None
                            }
                        };
                        Done::C2dLocked {
                            link,
                            device,
                            locked: locked
                                .map(|(token, m, _)| (token, encode(&c2d_message(&m, &owner.device)))),
                        }
                    }));
                }
            }
            Handler::Service(s) => {
                let credit = self.engine.credit(link);
                if let Some(work) = s.pump(self.core.state(), &self.service, link, credit, now) {
                    self.work.push(work);
                    if self.service_queues.is_none() {
                        self.service_queues = Some(self.core.state().service_queues_changed());
                    }
                }
            }
            Handler::Partition(p) => {
                while self.engine.credit(link) > 0 {
                    let Some((seq, message)) = p.ready.pop_front() else {
                        break;
                    };
                    if let Err(why) = self.engine.send(link, None, &message, true) {
                        // Skipping it would lose it for the reader: the link ends, saying why.
                        let why =
                            format!("event {seq}: {why}; attach with a larger max-message-size");
                        self.links.remove(&link);
                        self.engine
                            .detach(link, Some(error(LinkError::MessageSizeExceeded, &why)));
                        return;
                    }
                }
                if let Some(work) = p.read_more(self.core.state(), link) {
                    self.work.push(work);
                }
                if p.waiting && self.follow.is_none() {
                    self.follow = Some(self.core.state().telemetry().follow());
                }
            }
            _ => {}
        }
    }

    fn pump_partitions(&mut self) {
        let links: Vec<LinkId> = self
            .links
            .iter()
            .filter_map(|(l, h)| matches!(h, Handler::Partition(_)).then_some(*l))
            .collect();
        if links.is_empty() {
            self.follow = None;
        }
        for link in links {
            if let Some(Handler::Partition(p)) = self.links.get_mut(&link) {
                p.waiting = false;
            }
            self.pump(link);
        }
    }

    fn pump_service_queues(&mut self) {
        let links: Vec<LinkId> = self
            .links
            .iter()
            .filter_map(|(l, h)| matches!(h, Handler::Service(s) if s.receives()).then_some(*l))
            .collect();
        if links.is_empty() {
            self.service_queues = None;
        }
        for link in links {
            if let Some(Handler::Service(s)) = self.links.get_mut(&link) {
                s.wake();
            }
            self.pump(link);
        }
    }

    /// A link's timer ran out: a C2D or queue lock unanswered, a poll due, a token expired.
    fn timer_due(&mut self, link: LinkId, now: i64) {
        match self.links.get_mut(&link) {
            Some(Handler::C2d { state, .. }) => {
                // Unanswered while it was locked: it is delivered again later; idle: look.
                *state = Held::Idle { next: now };
                self.pump(link);
            }
            Some(Handler::Service(s)) => match s.timer(self.core.state(), &self.service, now) {
                Ok(()) => self.pump(link),
                Err(error) => {
                    self.release(link);
                    self.links.remove(&link);
                    self.engine.detach(link, Some(error));
                }
            },
            Some(Handler::Partition(p)) => match p.timer(self.core.state(), &self.service, now) {
                Ok(()) => self.pump(link),
                Err(error) => {
                    self.links.remove(&link);
                    self.engine.detach(link, Some(error));
                }
            },
            _ => {}
        }
    }

    /// Slow work came back.
    fn done(&mut self, done: Done) {
        match done {
            Done::Judged {
                client_id,
                result,
                then,
            } => self.judged(client_id, result, then),
            Done::Reply {
                channel,
                node,
                message,
            } => self.reply_bytes(channel, node, message),
            Done::Settle {
                link,
                delivery,
                state,
            } => {
                if matches!(state, DeliveryState::Accepted(_))
                    && matches!(self.links.get(&link), Some(Handler::Telemetry { .. }))
                {
                    self.core.telemetry_counted();
                }
                if let Some(delivery) = delivery {
                    self.engine.settle(link, delivery, state);
                }
            }
            Done::Twin { client_id, message } => self.send_on_twin(&client_id, message),
            Done::Dps {
                link,
                delivery,
                id,
                correlation,
                answer,
            } => self.provisioning_answer(link, delivery, &id, correlation, &answer),
            Done::C2dLocked {
                link,
                device,
                locked,
            } => {
                let now = now_ms();
                let Some(Handler::C2d { state, .. }) = self.links.get_mut(&link) else {
                    // The link went while the message was locked: it goes back at once.
                    if let Some((token, _)) = locked {
                        let core = self.core.clone();
                        tokio::spawn(async move {
                            let _ = core.settle_c2d(&device, &token, Settle::Abandon).await;
                        });
                    }
                    return;
                };
                let Some((token, message)) = locked else {
                    *state = Held::Idle {
                        next: now + C2D_POLL_MS,
                    };
                    return;
                };
                match self.engine.send(link, Some(&lock_tag()), &message, false) {
                    Ok(Some(delivery)) => {
                        *state = Held::Sent {
                            token,
                            delivery,
                            until: now + C2D_LOCK_MS,
                        };
                    }
                    _ => {
                        // No credit after all (or too large for the client): back it goes.
                        *state = Held::Busy;
                        let core = self.core.clone();
                        self.work.push(Box::pin(async move {
                            let _ = core.settle_c2d(&device, &token, Settle::Abandon).await;
                            Done::Next { link }
                        }));
                    }
                }
            }
            Done::Next { link } => {
                match self.links.get_mut(&link) {
                    Some(Handler::C2d { state, .. }) => *state = Held::Idle { next: 0 },
                    Some(Handler::Service(s)) => s.settled(),
                    _ => return,
                }
                self.pump(link);
            }
            Done::ServiceAttach { request, result } => {
                let link = request.link;
                if !matches!(self.links.get(&link), Some(Handler::Pending)) {
                    return;
                }
                match result {
                    Ok(s) => {
                        let window = if request.client_sends {
                            REQUEST_WINDOW
                        } else {
                            0
                        };
                        self.engine.accept(&request, window);
                        self.links.insert(link, Handler::Service(s));
                        self.pump(link);
                    }
                    Err(error) => {
                        self.links.remove(&link);
                        self.engine.refuse(*request, error);
                    }
                }
            }
            Done::PartitionAttach { request, result } => {
                let link = request.link;
                if !matches!(self.links.get(&link), Some(Handler::Pending)) {
                    return;
                }
                match result {
                    Ok(p) => {
                        self.engine.accept(&request, 0);
                        self.links.insert(link, Handler::Partition(p));
                        self.pump(link);
                    }
                    Err(error) => {
                        self.links.remove(&link);
                        self.engine.refuse(*request, error);
                    }
                }
            }
            Done::Queued {
                link,
                queue,
                result,
            } => {
                let now = now_ms();
                let Some(Handler::Service(s)) = self.links.get_mut(&link) else {
                    if let Ok(Some((token, _))) = result {
                        service::abandon_later(self.core.state(), queue, token);
                    }
                    return;
                };
                match s.queued(self.core.state(), result, &mut self.engine, link, now) {
                    Ok(Some(work)) => self.work.push(work),
                    Ok(None) => {}
                    Err(error) => {
                        self.links.remove(&link);
                        self.engine.detach(link, Some(error));
                    }
                }
            }
            Done::Events { link, result } => {
                if let Some(Handler::Partition(p)) = self.links.get_mut(&link) {
                    p.read_done(result);
                    self.pump(link);
                }
            }
        }
    }

    /// Telemetry committed (or not): accepted, or rejected so that the client sends again.
    fn stored(&mut self, (link, delivery, result): (LinkId, Option<u32>, Result<i64, String>)) {
        if result.is_ok() {
            self.core.telemetry_counted();
        }
        let state = stored_state(result);
        if let Some(delivery) = delivery {
            self.engine.settle(link, delivery, state);
        }
    }

    /// News from an identity's watcher or a partition claim.
    fn wake(&mut self, wake: Wake) {
        match wake {
            Wake::Kicked(kicked) => {
                let (client_id, reason) = *kicked;
                self.identities.remove(&client_id);
                self.shut_out(&reason);
            }
            Wake::Expired(client_id) => {
                self.identities.remove(&client_id);
                self.shut_out("the SAS token expired");
            }
            Wake::C2d(client_id) => {
                let links = self
                    .identities
                    .get(&client_id)
                    .map(|i| i.c2d.clone())
                    .unwrap_or_default();
                for link in links {
                    if let Some(Handler::C2d { state, .. }) = self.links.get_mut(&link)
                        && let Held::Idle { next } = state
                    {
                        *next = 0;
                    }
                    self.pump(link);
                }
            }
            // A desired-properties push: a message without correlation id on the twin link
            // (the session has subscribed through it).
            Wake::Desired(desired) => {
                let (client_id, patch) = *desired;
                let message = encode(&data_message(Properties::default(), None, patch));
                self.send_on_twin(&client_id, message);
            }
            Wake::Method(call) => self.call(&call.0, &call.1),
            Wake::Stolen(link) => {
                if matches!(self.links.get(&link), Some(Handler::Partition(_))) {
                    self.links.remove(&link);
                    self.engine.detach(
                        link,
                        Some(error(
                            LinkError::Stolen,
                            "a reader with an equal or higher owner level took this partition of the consumer group",
                        )),
                    );
                }
            }
        }
    }

    /// A link has ended (or the connection): what it held of the hub's queues goes back, and
    /// what its identity knew of it is forgotten.
    fn release(&mut self, link: LinkId) {
        let Some(handler) = self.links.get_mut(&link) else {
            return;
        };
        match handler {
            Handler::C2d {
                client_id,
                device,
                state,
            } => {
                if let Held::Sent { token, .. } = std::mem::replace(state, Held::Busy) {
                    let core = self.core.clone();
                    let device = device.clone();
                    tokio::spawn(async move {
                        let _ = core.settle_c2d(&device, &token, Settle::Abandon).await;
                    });
                }
                if let Some(i) = self.identities.get_mut(client_id.as_str()) {
                    i.c2d.retain(|l| *l != link);
                }
            }
            Handler::Out { client_id, .. } => {
                if let Some(i) = self.identities.get_mut(client_id.as_str()) {
                    if i.twin_out == Some(link) {
                        i.twin_out = None;
                    }
                    if i.methods_out == Some(link) {
                        i.methods_out = None;
                        self.core.state().sessions().unsubscribed(
                            client_id,
                            i.conn,
                            &[METHODS.to_string()],
                        );
                    }
                }
            }
            Handler::Replies { node, .. } => {
                let node = *node;
                self.replies.retain(|(_, n), l| !(*n == node && *l == link));
            }
            Handler::Service(s) => s.release(self.core.state()),
            _ => {}
        }
    }
}

impl Held {
    pub(super) fn deadline(&self) -> Option<i64> {
        match self {
            Held::Idle { next } if *next > 0 => Some(*next),
            Held::Sent { until, .. } => Some(*until),
            _ => None,
        }
    }
}

/// A delivery tag for a message the client settles: a fresh v4 uuid's 16 bytes, as IoT Hub's
/// (the C# SDKs read a C2D message's or a feedback batch's lock token from it as a Guid).
pub(super) fn lock_tag() -> [u8; 16] {
    crate::random::uuid_v4()
}

/// The oldest awaited commit, once it completes. Cancel-safe: nothing is removed until it
/// completes.
async fn next_commit(
    owed: &mut VecDeque<(LinkId, Option<u32>, Committed)>,
) -> (LinkId, Option<u32>, Result<i64, String>) {
    let Some((_, _, front)) = owed.front_mut() else {
        return std::future::pending().await;
    };
    let result = front.await;
    let (link, delivery, _) = owed.pop_front().expect("the front was there");
    (link, delivery, result)
}

/// The disposition of a telemetry message: accepted once durable, else rejected so that the
/// client sends it again.
fn stored_state(committed: Result<i64, String>) -> DeliveryState {
    match committed {
        Ok(_) => DeliveryState::Accepted(Accepted {}),
        Err(e) if e == crate::telemetry::DISK_FULL => rejected(
            AmqpError::ResourceLimitExceeded,
            crate::telemetry::DISK_FULL,
        ),
        Err(e) => {
            tracing::warn!(error = e, "telemetry not stored");
            rejected(
                AmqpError::InternalError,
                "the hub could not store the message; send it again",
            )
        }
    }
}

/// A rejected outcome with the condition and the reason.
pub(super) fn rejected(condition: impl Into<ErrorCondition>, why: &str) -> DeliveryState {
    DeliveryState::Rejected(Rejected {
        error: Some(error(condition, why)),
    })
}

/// Holds an admitted identity's session until a kick, its token's expiry or the end of the
/// connection, then ends it with the core; work for it is passed to the connection.
async fn watch_session(
    live: Live,
    mut expiry: watch::Receiver<Option<i64>>,
    wakes: mpsc::UnboundedSender<Wake>,
    core: Arc<DeviceCore>,
    ending: Arc<Ending>,
) {
    let mailbox = live.ticket.mailbox.clone();
    let cn = live.cn.clone();
    let end = loop {
        let deadline = *expiry.borrow_and_update();
        let expired = async {
            match deadline {
                Some(ms) => {
                    let wait = u64::try_from(ms - now_ms()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            mail = mailbox.next() => {
                let wake = match mail {
                    Mail::Kicked(reason) => {
                        let _ = wakes.send(Wake::Kicked(Box::new((cn.clone(), reason.to_string()))));
                        break Ended::Closed(reason);
                    }
                    Mail::Work(Outbound::C2d) => Wake::C2d(cn.clone()),
                    Mail::Work(Outbound::Desired(patch)) => Wake::Desired(Box::new((cn.clone(), patch))),
                    Mail::Work(Outbound::Method(request)) => Wake::Method(Box::new((cn.clone(), *request))),
                };
                let _ = wakes.send(wake);
            }
            () = expired => {
                let _ = wakes.send(Wake::Expired(cn.clone()));
                break Ended::TokenExpired(deadline.unwrap_or_default() / 1000);
            }
            changed = expiry.changed() => {
                if changed.is_err() {
                    // The connection let go of the identity: it has ended.
                    ending.ended.cancelled().await;
                    break ending.end();
                }
            }
            () = ending.ended.cancelled() => break ending.end(),
        }
    };
    core.close(live, end, None).await;
}

/// `{host}/devices/{d}[/modules/{m}]`, percent-encoded whole as the Node SDK sends it or not:
/// the host and the identity.
fn audience_owner(audience: &str) -> Option<(String, Owner)> {
    let decoded;
    let audience = if audience.contains('/') {
        audience
    } else {
        decoded = percent_encoding::percent_decode_str(audience)
            .decode_utf8()
            .ok()?;
        &decoded
    };
    let audience = audience
        .strip_prefix("amqps://")
        .or_else(|| audience.strip_prefix("sb://"))
        .unwrap_or(audience);
    let (host, path) = audience.split_once('/')?;
    match address::parse(&format!("/{}/messages/events", path.trim_end_matches('/'))) {
        Ok(Node::Events(owner)) => Some((host.to_string(), owner)),
        _ => None,
    }
}

/// A string application property of a message.
pub(super) fn property<'a, T>(message: &'a Message<T>, key: &str) -> Option<&'a str> {
    match message.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The answer to a request: its message id as correlation id (the same AMQP type), a status
/// code (int) and description, and `body` as an AMQP value.
pub(super) fn reply_to<T>(
    request: &Message<T>,
    status: i32,
    description: &str,
    body: Value,
) -> AnyMessage {
    let correlation = request
        .properties
        .as_ref()
        .and_then(|p| p.message_id.clone());
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("status-code", status)
                .insert("status-description", description)
                .build(),
        )
        .body(Body::Value(AmqpValue(body)))
        .build()
}

/// A queued C2D message as AMQP carries it: system properties in the properties section,
/// application properties as strings, the body as one data section.
fn c2d_message(m: &certhub_core::C2dMessage, device: &certhub_core::DeviceId) -> AnyMessage {
    let text = |k: &str| m.system.get(k).cloned();
    let symbol = |k: &str| m.system.get(k).map(|v| Symbol::from(v.as_str()));
    let properties = Properties {
        message_id: text("messageId").map(MessageId::String),
        correlation_id: text("correlationId").map(MessageId::String),
        user_id: text("userId").map(|u| u.into_bytes().into()),
        to: Some(format!("/devices/{device}/messages/deviceBound")),
        content_type: symbol("contentType"),
        content_encoding: symbol("contentEncoding"),
        ..Default::default()
    };
    let mut application = ApplicationProperties::builder();
    for (k, v) in &m.application {
        application = application.insert(k.as_str(), v.clone().unwrap_or_default());
    }
    Message::builder()
        .properties(properties)
        .application_properties(application.build())
        .body(Body::Data(vec![Data(m.body.clone().into())].into()))
        .build()
}

/// A message whose body is one data section, with message annotations if any.
fn data_message(
    properties: Properties,
    annotations: Option<MessageAnnotations>,
    body: Vec<u8>,
) -> AnyMessage {
    let body = Body::Data(vec![Data(body.into())].into());
    match annotations {
        Some(a) => Message::builder()
            .properties(properties)
            .message_annotations(a)
            .body(body)
            .build(),
        None => Message::builder().properties(properties).body(body).build(),
    }
}

/// A message annotation of type string, by its symbol key.
fn annotation<'a, T>(message: &'a Message<T>, key: &str) -> Option<&'a str> {
    let annotations = message.message_annotations.as_ref()?;
    annotations.0.iter().find_map(|(k, v)| match (k, v) {
        (OwnedKey::Symbol(s), Value::String(text)) if s.0 == key => Some(text.as_str()),
        _ => None,
    })
}

/// A correlation id that is a uuid, as AMQP carries it or as its text.
fn uuid_bytes(id: &MessageId) -> Option<[u8; 16]> {
    match id {
        MessageId::Uuid(u) => Some(*u.as_inner()),
        MessageId::String(s) => {
            let hex: String = s.chars().filter(|c| *c != '-').collect();
            if hex.len() != 32 {
                return None;
            }
            let mut out = [0u8; 16];
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        }
        _ => None,
    }
}

/// An error's JSON body, as the twin responses carry it.
fn error_body(message: &str) -> Vec<u8> {
    serde_json::json!({ "Message": message })
        .to_string()
        .into_bytes()
}

/// A telemetry message's system and application properties and its body bytes.
fn telemetry_parts(message: &AnyMessage) -> (MessageProperties, Vec<u8>) {
    let mut props = MessageProperties::default();
    if let Some(p) = &message.properties {
        let mut system = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                props.system.insert(name.to_string(), v);
            }
        };
        system("messageId", p.message_id.as_ref().map(id_text));
        system("correlationId", p.correlation_id.as_ref().map(id_text));
        system(
            "userId",
            p.user_id
                .as_ref()
                .map(|u| String::from_utf8_lossy(u).into_owned()),
        );
        system("contentType", p.content_type.as_ref().map(|s| s.0.clone()));
        system(
            "contentEncoding",
            p.content_encoding.as_ref().map(|s| s.0.clone()),
        );
        // `to` names the link's own address: the other transports store none either.
    }
    if let Some(app) = &message.application_properties {
        for (key, value) in &app.0 {
            props.application.insert(key.clone(), simple_text(value));
        }
    }
    (props, body_bytes(message))
}

/// A message's body as bytes: its data sections, or a string or binary value.
fn body_bytes(message: &AnyMessage) -> Vec<u8> {
    match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(AmqpValue(Value::String(s))) => s.clone().into_bytes(),
        Body::Value(AmqpValue(Value::Binary(b))) => b.to_vec(),
        _ => Vec::new(),
    }
}

pub(super) fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => crate::random::uuid_text(u.as_ref()),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

pub(super) fn simple_text(value: &SimpleValue) -> String {
    match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.0.clone(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Double(n) => n.to_string(),
        SimpleValue::Float(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// A provisioning client's SASL PLAIN response: user `{idScope}/registrations/{id}`, the SAS
/// token as password. Returns the registration id and the token.
fn provisioning_plain(response: Option<&[u8]>) -> Option<(String, String)> {
    let mut parts = response?.split(|b| *b == 0);
    let (_, Some(user), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let user = std::str::from_utf8(user).ok()?;
    let mut segments = user.split('/');
    let (Some(scope), Some(word), Some(id), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return None;
    };
    if scope.is_empty() || id.is_empty() || !word.eq_ignore_ascii_case("registrations") {
        return None;
    }
    Some((
        id.to_string(),
        String::from_utf8_lossy(password).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_name_a_host_and_an_identity() {
        let (host, owner) = audience_owner("hub.example/devices/d1").expect("device");
        assert_eq!(
            (host.as_str(), owner.client_id().as_str()),
            ("hub.example", "d1")
        );
        let (host, owner) =
            audience_owner("hub.example%3A5671%2Fdevices%2Fd%2B1").expect("encoded");
        assert_eq!(
            (host.as_str(), owner.client_id().as_str()),
            ("hub.example:5671", "d+1")
        );
        let (_, owner) =
            audience_owner("amqps://hub.example/devices/d1/modules/m1").expect("module");
        assert_eq!(owner.client_id(), "d1/m1");
        assert!(audience_owner("hub.example/messages/devicebound").is_none());
        assert!(audience_owner("hub.example").is_none());
    }
}
