//! One AMQP connection on the device listeners (5671, and WebSockets on 443): the protocol
//! header (SASL or not), the connection and its sessions, CBS token puts, and the links devices
//! attach (telemetry, C2D, twin, direct methods, for devices and modules). Links of services
//! (`service.rs`) and of Event Hubs readers (`eventhub.rs`) are dispatched from here too.
//!
//! Who a link acts for is decided by the device session core, exactly as a CONNECT is: a CBS
//! `put-token` for `{host}/devices/{id}` is judged as a SAS CONNECT of that id (named reasons,
//! audit, refusal limits); a link of an identity with no token is judged by the TLS client
//! chain. An admitted identity is a session of the core (registered, so a newer connection, a
//! revocation or a settings switch closes it, and its token's expiry is honoured); the
//! connection is closed with `amqp:unauthorized-access` when any of its identities is shut out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use certhub_core::{AuthenticatedDevice, MessageProperties};
use certhub_pki::CertificateDer;
use fe2o3_amqp::Sendable;
use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SessionAcceptor, SupportedReceiverSettleModes,
    SupportedSenderSettleModes,
};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::definitions::{self, AmqpError, ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Outcome, Properties,
    TargetArchetype,
};
use fe2o3_amqp::types::primitives::{Array, SimpleValue, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::address::{self, Node, Owner};
use super::eventhub;
use super::service::{self, ServiceSlot};
use crate::device::{Attempt, DeviceCore, Ended, Live, Settle};
use crate::mqtt::session::Connection;
use crate::sessions::{DESIRED, METHODS, Mail, MethodReply, MethodRequest, Outbound};
use crate::state::now_ms;

/// The protocol header and the AMQP open must come this soon after the handshake.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without a client certificate must have an identity admitted (a CBS token put)
/// this soon after its open, or it is closed: it holds memory and proves nothing.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Telemetry larger than Azure's 256 KB is refused.
const MAX_MESSAGE: u64 = 256 * 1024;
/// The largest frame the hub reads.
const MAX_FRAME: u32 = 64 * 1024;
/// Telemetry messages of one link being stored at once (the writer batches them).
const MAX_STORING: usize = 256;
/// Links one session may hold (a device SDK attaches about ten; an Event Hubs client a few
/// per session): more is an attach storm, refused link by link.
const MAX_LINKS: usize = 64;
/// Sessions one connection may hold at once (rhea-based clients begin one per link).
const MAX_SESSIONS: usize = 64;

/// A message waiting in one of the hub's own queues to a link. Boxed: a tokio channel
/// allocates its first block of 32 slots when it is made, and an unboxed message would make
/// that 21 KiB per queue, held by every idle connection.
pub(super) type Queued = Box<Message<Body<Value>>>;

/// Counts a task while it runs.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// SASL: every mechanism the Azure clients offer. PLAIN is a service's policy and token
/// (judged at once); the others grant nothing by themselves: an identity is admitted only by
/// a CBS token or the TLS client chain, link by link.
#[derive(Debug, Clone)]
struct HubSasl {
    state: crate::state::AppState,
    service: Arc<ServiceSlot>,
}

impl SaslAcceptor for HubSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("MSSBCBS"),
            Symbol::from("PLAIN"),
            Symbol::from("EXTERNAL"),
            Symbol::from("ANONYMOUS"),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        if init.mechanism.as_str() == "PLAIN" {
            return service::sasl_plain(&self.state, &init, &self.service);
        }
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }
}

/// A byte stream with bytes already read (the protocol header) put back in front.
#[derive(Debug)]
struct Prefixed<S> {
    prefix: [u8; 8],
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The identities admitted on one connection, and how to close it.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) core: Arc<DeviceCore>,
    peer: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    tls13: bool,
    /// By client id: the admitted device and its token's expiry (ms; renewed by a new put).
    admitted: Mutex<HashMap<String, Admitted>>,
    /// Why the connection is being shut (a kick, an expired token): the first reason wins.
    closing: watch::Sender<Option<String>>,
    /// Why the connection ended, when the client did not close it (lost, or a protocol error).
    end_reason: Mutex<Option<String>>,
    /// A service's credentials (SASL PLAIN or a policy token put on `$cbs`).
    pub(super) service: Arc<ServiceSlot>,
    /// Cancelled when the connection has ended.
    pub(super) ended: CancellationToken,
}

impl Shared {
    /// Shuts the connection for `reason` (the first reason wins).
    fn shut(&self, reason: &str) {
        self.closing.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason.to_string());
            true
        });
    }
}

#[derive(Debug)]
struct Admitted {
    device: AuthenticatedDevice,
    expiry: watch::Sender<Option<i64>>,
    links: Arc<IdentityLinks>,
}

/// What the links of one admitted identity share with its session's watcher.
#[derive(Debug)]
struct IdentityLinks {
    /// Its session's connection number among the hub's sessions.
    conn: u64,
    /// Woken when C2D messages were queued for the identity.
    c2d: tokio::sync::Notify,
    /// The twin link the hub sends on (responses and desired-property pushes), once attached.
    twin: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    /// The method link the hub sends requests on, once attached.
    methods: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    /// Method calls sent and not answered: correlation id (a v4 uuid) -> the hub's request id.
    calls: Mutex<HashMap<[u8; 16], String>>,
}

impl IdentityLinks {
    /// Sends a direct method request on the method link, under a fresh uuid as correlation id
    /// (the SDKs require one); its answer names it.
    fn call(&self, request: &MethodRequest) {
        let mut id = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut id).is_err() {
            return;
        }
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
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
                vec![fe2o3_amqp::types::messaging::Data(
                    request.payload.clone().into(),
                )]
                .into(),
            ))
            .build();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, request.rid.clone());
        let methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        if methods
            .as_ref()
            .is_none_or(|m| m.send(Box::new(message)).is_err())
        {
            // No method link: the caller's wait runs out (504), as for a device that is gone.
            self.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }

    /// Sends on the twin link; false when none is attached.
    fn to_twin(&self, message: Message<Body<Value>>) -> bool {
        let twin = self.twin.lock().unwrap_or_else(|e| e.into_inner());
        twin.as_ref()
            .is_some_and(|t| t.send(Box::new(message)).is_ok())
    }
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
    let mut header = [0u8; 8];
    let read = crate::gate::owed(
        &mut pending,
        deadline,
        io.read_exact(&mut header),
        core.state(),
        core.listener(),
    )
    .await;
    if !matches!(read, Some(Ok(_))) {
        return;
    }
    let stream = Prefixed {
        prefix: header,
        at: 0,
        inner: io,
    };
    let builder = ConnectionAcceptor::builder()
        .container_id("certhub")
        .max_frame_size(MAX_FRAME)
        .properties({
            let mut p = fe2o3_amqp::types::primitives::OrderedMap::new();
            p.insert(Symbol::from("product"), Value::String("certhub".into()));
            p
        });
    // Protocol id 3 is the SASL layer; 0 is AMQP itself (the Node SDK's SAS devices).
    let service = Arc::new(ServiceSlot::default());
    let accepted = if header[4] == 3 {
        let acceptor = builder
            .sasl_acceptor(HubSasl {
                state: core.state().clone(),
                service: service.clone(),
            })
            .build();
        tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(stream))).await
    } else {
        let acceptor = builder.build();
        tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(stream))).await
    };
    drop(pending);
    let mut connection = match accepted {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "AMQP open failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "AMQP open timed out");
            return;
        }
    };
    let (closing, mut closing_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        core,
        peer,
        chain,
        tls13,
        admitted: Mutex::new(HashMap::new()),
        closing,
        service,
        end_reason: Mutex::new(None),
        ended: CancellationToken::new(),
    });
    if shared.chain.is_empty() {
        tokio::spawn(token_deadline(shared.clone()));
    }
    let sessions = SessionAcceptor::new();
    let live_sessions = Arc::new(AtomicUsize::new(0));
    // Shutting out: every session is ended with the reason (the Azure SDKs then let go of
    // their links at once and close the connection, which the hub answers); a client that
    // has not closed within a second gets the connection closed with the reason.
    let mut shut_by: Option<tokio::time::Instant> = None;
    loop {
        let shut_wait = async {
            match shut_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            incoming = connection.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                if shut_by.is_some() {
                    continue;
                }
                match Box::pin(sessions.accept_incoming_session(incoming, &mut connection)).await {
                    Ok(mut session) if live_sessions.load(Ordering::Relaxed) >= MAX_SESSIONS => {
                        let why = format!(
                            "this connection already has {MAX_SESSIONS} sessions: end some first"
                        );
                        let error =
                            definitions::Error::new(AmqpError::ResourceLimitExceeded, why, None);
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                session.end_with_error(error),
                            )
                            .await;
                        });
                    }
                    Ok(session) => {
                        live_sessions.fetch_add(1, Ordering::Relaxed);
                        let counted = Counted(live_sessions.clone());
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let _counted = counted;
                            serve_session(session, shared).await;
                        });
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "AMQP session not begun");
                        break;
                    }
                }
            }
            changed = closing_rx.changed(), if shut_by.is_none() => {
                if changed.is_err() {
                    break;
                }
                shut_by = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            () = shut_wait => {
                let reason = closing_rx.borrow().clone().unwrap_or_default();
                Box::pin(close_with(&mut connection, AmqpError::UnauthorizedAccess, &reason)).await;
                break;
            }
        }
    }
    if shut_by.is_none() {
        // The client closed the connection (its AMQP close: a clean end), or it was lost or
        // ended with an error: the identities' sessions end with that reason.
        let closed = tokio::time::timeout(Duration::from_secs(1), connection.on_close()).await;
        if let Ok(Err(e)) = closed {
            *shared.end_reason.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("the AMQP connection ended without a close: {e}"));
        }
    }
    shared.ended.cancel();
}

/// Shuts a connection without a client certificate that has put no valid token in time, or
/// (a service's) once every token put on it has run out and no device is admitted on it.
async fn token_deadline(shared: Arc<Shared>) {
    tokio::select! {
        () = tokio::time::sleep(TOKEN_TIMEOUT) => {}
        () = shared.ended.cancelled() => return,
    }
    let none = shared
        .admitted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
        && !shared.service.is_set();
    if none {
        shared.shut(&format!(
            "no identity was admitted within {} s of the AMQP open: put a SAS token on $cbs first, or present a client certificate",
            TOKEN_TIMEOUT.as_secs()
        ));
        return;
    }
    // A service's connection lasts as long as one of its tokens (renewals move the end).
    while let Some(expiry) = shared.service.latest_expiry() {
        let left = expiry.saturating_mul(1000) - now_ms();
        if left > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0))) => {}
                () = shared.ended.cancelled() => return,
            }
            continue;
        }
        let devices = shared
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if devices == 0 {
            shared.shut(
                "the service's SAS token expired: put a fresh one on $cbs before it runs out",
            );
        }
        return;
    }
}

async fn close_with(connection: &mut ListenerConnectionHandle, condition: AmqpError, why: &str) {
    let error = definitions::Error::new(condition, why.to_string(), None);
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.close_with_error(error)).await;
}

/// The reply links of a session, by node: a request's answer goes to the client's receiver
/// attached to the same node.
#[derive(Debug, Default)]
pub(super) struct Replies {
    nodes: Mutex<HashMap<&'static str, Reply>>,
}

type Reply = (
    mpsc::UnboundedSender<Queued>,
    Option<mpsc::UnboundedReceiver<Queued>>,
);

impl Replies {
    pub(super) fn with<T>(&self, node: &'static str, f: impl FnOnce(&mut Reply) -> T) -> T {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let entry = nodes.entry(node).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Some(rx))
        });
        f(entry)
    }
}

async fn serve_session(mut session: ListenerSessionHandle, shared: Arc<Shared>) {
    let replies = Arc::new(Replies::default());
    // The links of this session being served.
    let live = Arc::new(AtomicUsize::new(0));
    // Dispositions go out settled (rcv-settle-mode first); the hub's sends are settled when
    // the client allows it (snd-settle-mode mixed), so replies never wait for an answer.
    let links = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .supported_sender_settle_modes(SupportedSenderSettleModes::SettledAndMixed)
        .fallback_sender_settle_mode(SenderSettleMode::Mixed)
        .max_message_size(MAX_MESSAGE)
        .build();
    let mut closing = shared.closing.subscribe();
    loop {
        let attach = tokio::select! {
            attach = session.next_incoming_attach() => attach,
            changed = closing.changed() => {
                if changed.is_err() {
                    return;
                }
                let reason = closing.borrow().clone().unwrap_or_default();
                let error = definitions::Error::new(AmqpError::UnauthorizedAccess, reason, None);
                let _ = tokio::time::timeout(Duration::from_secs(1), Box::pin(session.end_with_error(error)))
                    .await;
                return;
            }
        };
        let Some(attach) = attach else { return };
        // The client's sender delivers to the target; its receiver reads from the source.
        let client_sends = attach.role == definitions::Role::Sender;
        // An Event Hubs reader's owner level (epoch), if it asks for one.
        let owner_level = attach.properties.as_ref().and_then(|p| {
            match p.get(&Symbol::from("com.microsoft:epoch")) {
                Some(Value::Long(n)) => Some(*n),
                Some(Value::Int(n)) => Some(i64::from(*n)),
                _ => None,
            }
        });
        let address = if client_sends {
            attach.target.as_deref().and_then(|t| match t {
                TargetArchetype::Target(t) => t.address.clone(),
                #[allow(unreachable_patterns)]
                _ => None,
            })
        } else {
            attach.source.as_ref().and_then(|s| s.address.clone())
        }
        .unwrap_or_default();
        let link = match Box::pin(links.accept_incoming_attach(attach, &mut session)).await {
            Ok(link) => link,
            Err(e) => {
                tracing::debug!(peer = %shared.peer, error = %e, "AMQP attach failed");
                continue;
            }
        };
        let node = address::parse(&address);
        let shared = shared.clone();
        let replies = replies.clone();
        if live.load(Ordering::Relaxed) >= MAX_LINKS {
            let why = format!(
                "this session already has {MAX_LINKS} links: detach some, or begin another session"
            );
            let error = definitions::Error::new(AmqpError::ResourceLimitExceeded, why, None);
            tokio::spawn(refuse(link, error));
            continue;
        }
        let task: Pin<Box<dyn Future<Output = ()> + Send>> = match (node, link) {
            (Ok(Node::Cbs), LinkEndpoint::Receiver(rx)) => {
                Box::pin(cbs_requests(rx, shared, replies))
            }
            (Ok(Node::Cbs), LinkEndpoint::Sender(tx)) => {
                Box::pin(send_replies(tx, replies, "$cbs", shared.ended.clone()))
            }
            (
                Ok(
                    node @ (Node::Events(_)
                    | Node::Twin(_)
                    | Node::DeviceBound(_)
                    | Node::Methods(_)),
                ),
                link,
            ) => Box::pin(device_link(node, link, shared)),
            (
                Ok(node @ (Node::ServiceDeviceBound | Node::Feedback | Node::FileNotifications)),
                link,
            ) => Box::pin(service::service_link(node, link, shared)),
            (Ok(Node::Management), LinkEndpoint::Receiver(rx)) => {
                Box::pin(eventhub::management_requests(rx, shared, replies))
            }
            (Ok(Node::Management), LinkEndpoint::Sender(tx)) => {
                Box::pin(eventhub::management_replies(tx, replies, shared))
            }
            (
                Ok(Node::Partition {
                    entity,
                    consumer_group,
                    partition,
                }),
                link,
            ) => Box::pin(eventhub::partition_link(
                eventhub::Reader {
                    entity,
                    group: consumer_group,
                    partition,
                    owner_level,
                },
                link,
                shared,
            )),
            (Err(e), link) => {
                let error = definitions::Error::new(AmqpError::NotFound, e.to_string(), None);
                Box::pin(refuse(link, error))
            }
        };
        live.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(live.clone());
        tokio::spawn(async move {
            let _counted = counted;
            task.await;
        });
    }
}

/// Detaches a link the hub does not serve, with the condition that says why.
pub(super) async fn refuse(link: LinkEndpoint, error: definitions::Error) {
    let _ = match link {
        LinkEndpoint::Receiver(rx) => rx.close_with_error(error).await,
        LinkEndpoint::Sender(tx) => tx.close_with_error(error).await,
    };
}

/// The client's receiver on a request node: the replies, in order, each sent settled.
pub(super) async fn send_replies(
    mut tx: fe2o3_amqp::Sender,
    replies: Arc<Replies>,
    node: &'static str,
    ended: CancellationToken,
) {
    let Some(mut queue) = replies.with(node, |r| r.1.take()) else {
        let why = format!("{node} already has a reply link on this session");
        let _ = tx
            .close_with_error(definitions::Error::new(
                AmqpError::ResourceLocked,
                why,
                None,
            ))
            .await;
        return;
    };
    // The queue's sender lives in `replies` too: the end of the connection ends this link.
    while let Some(reply) = tokio::select! {
        reply = queue.recv() => reply,
        () = ended.cancelled() => None,
    } {
        let sendable = Sendable::builder().message(*reply).settled(true).build();
        if tx.send(sendable).await.is_err() {
            return;
        }
    }
}

/// The next message on `rx`, or none once the link or the connection has ended.
pub(super) async fn next_delivery(
    rx: &mut fe2o3_amqp::Receiver,
    ended: &CancellationToken,
) -> Option<fe2o3_amqp::link::delivery::Delivery<Body<Value>>> {
    tokio::select! {
        d = rx.recv::<Body<Value>>() => d.ok(),
        () = ended.cancelled() => None,
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
) -> Message<Body<Value>> {
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

/// `$cbs` put-token requests: each token is judged as a SAS CONNECT of the identity its
/// audience names.
async fn cbs_requests(mut rx: fe2o3_amqp::Receiver, shared: Arc<Shared>, replies: Arc<Replies>) {
    let answers = replies.with("$cbs", |r| r.0.clone());
    loop {
        let Some(delivery) = next_delivery(&mut rx, &shared.ended).await else {
            return;
        };
        let _ = rx.accept(&delivery).await;
        let request = delivery.message();
        // Boxed: the judgement is a large future, and an idle link should not hold its space.
        let (status, description) = Box::pin(put_token(request, &shared)).await;
        let _ = answers.send(Box::new(reply_to(
            request,
            status,
            &description,
            Value::Null,
        )));
    }
}

async fn put_token(request: &Message<Body<Value>>, shared: &Arc<Shared>) -> (i32, String) {
    if property(request, "operation") != Some("put-token") {
        return (
            400,
            "the CBS node takes operation put-token (a SAS token as the body, the audience as name)"
                .into(),
        );
    }
    let Some(audience) = property(request, "name") else {
        return (400, "a put-token request names its audience (name)".into());
    };
    let token = match &request.body {
        Body::Value(AmqpValue(Value::String(t))) => t.clone(),
        _ => {
            return (
                400,
                "a put-token request carries the token as a string body".into(),
            );
        }
    };
    let Some((host, owner)) = audience_owner(audience) else {
        if token.contains("skn=") {
            // Signed with a shared access policy's key: a service.
            return service::put_token(shared, &token).await;
        }
        return (
            404,
            format!(
                "{audience:?} is not an audience of this hub: {{host}}/devices/{{id}}[/modules/{{id}}]"
            ),
        );
    };
    match admit(shared, &owner, &host, Some(token.as_bytes())).await {
        Ok(()) => (200, "OK".into()),
        Err(why) => (401, why),
    }
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

/// Admits `owner` on this connection (a token: judged as SAS; none: by the TLS chain), or
/// renews its token. Errors name what was wrong, as the audit does.
async fn admit(
    shared: &Arc<Shared>,
    owner: &Owner,
    host: &str,
    token: Option<&[u8]>,
) -> Result<(), String> {
    let client_id = owner.client_id();
    let username = format!("{host}/{client_id}/?api-version=amqp");
    let core = &shared.core;
    let attempt = Attempt {
        peer: shared.peer,
        chain: &shared.chain,
        tls13: shared.tls13,
        client_id: &client_id,
        username: Some(&username),
        password: token,
    };
    let device = core
        .authenticate(attempt)
        .await
        .map_err(|_| format!("{client_id} is not authorized (the hub's audit trail names why)"))?;
    let expiry_ms = device.expires().map(|se| se.saturating_mul(1000));
    {
        let admitted = shared.admitted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = admitted.get(&client_id) {
            // A renewed token of an admitted identity: its session goes on to the new expiry.
            a.expiry.send_replace(expiry_ms);
            return Ok(());
        }
    }
    let slot = core
        .slot(&client_id, shared.peer)
        .await
        .map_err(|_| "the hub's device session limit is reached; retry".to_string())?;
    let opened = core.open(device.clone(), slot, false).await;
    core.announce(&opened.live, shared.peer).await;
    let (expiry, expiry_rx) = watch::channel(expiry_ms);
    let links = Arc::new(IdentityLinks {
        conn: opened.live.ticket.conn,
        c2d: tokio::sync::Notify::new(),
        twin: Mutex::new(None),
        methods: Mutex::new(None),
        calls: Mutex::new(HashMap::new()),
    });
    shared
        .admitted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            client_id,
            Admitted {
                device,
                expiry,
                links: links.clone(),
            },
        );
    tokio::spawn(watch_session(opened.live, expiry_rx, links, shared.clone()));
    Ok(())
}

/// Holds an admitted identity's session until a kick, its token's expiry or the end of the
/// connection, then ends it with the core (kicks and expiry close the connection).
async fn watch_session(
    live: Live,
    mut expiry: watch::Receiver<Option<i64>>,
    links: Arc<IdentityLinks>,
    shared: Arc<Shared>,
) {
    let mailbox = live.ticket.mailbox.clone();
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
            mail = mailbox.next() => match mail {
                Mail::Kicked(reason) => {
                    shared.shut(&reason);
                    break Ended::Closed(reason);
                }
                Mail::Work(Outbound::C2d) => links.c2d.notify_one(),
                // A desired-properties push: a message without correlation id on the twin
                // link (the session has subscribed through it).
                Mail::Work(Outbound::Desired(patch)) => {
                    links.to_twin(data_message(Properties::default(), None, patch));
                }
                Mail::Work(Outbound::Method(request)) => links.call(&request),
            },
            () = expired => {
                shared.shut("the SAS token expired");
                break Ended::TokenExpired(deadline.unwrap_or_default() / 1000);
            }
            changed = expiry.changed() => {
                if changed.is_err() {
                    break Ended::Closed("the connection ended".into());
                }
            }
            () = shared.ended.cancelled() => {
                let reason = shared
                    .end_reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                break reason.map_or(Ended::Clean, Ended::Closed);
            }
        }
    };
    shared
        .admitted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&live.cn);
    shared.core.close(live, end, None).await;
}

/// The admitted device of `owner` on this connection (admitted now by the TLS chain when it
/// holds no token yet), with what the identity's links share.
async fn admitted(
    shared: &Arc<Shared>,
    owner: &Owner,
) -> Result<(AuthenticatedDevice, Arc<IdentityLinks>), String> {
    let client_id = owner.client_id();
    if let Some(a) = shared
        .admitted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&client_id)
    {
        return Ok((a.device.clone(), a.links.clone()));
    }
    let host = shared
        .core
        .state()
        .hostnames()
        .first()
        .cloned()
        .unwrap_or_default();
    admit(shared, owner, &host, None).await?;
    shared
        .admitted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&client_id)
        .map(|a| (a.device.clone(), a.links.clone()))
        .ok_or_else(|| format!("{client_id} was shut out"))
}

/// A link of a device's own node: who it acts for is admitted first (by its token, else by the
/// TLS chain), or the link is detached with the reason; then the node's handler serves it.
async fn device_link(node: Node, link: LinkEndpoint, shared: Arc<Shared>) {
    let owner = match &node {
        Node::Events(o) | Node::Twin(o) | Node::DeviceBound(o) | Node::Methods(o) => o.clone(),
        _ => return,
    };
    let (device, links) = match Box::pin(admitted(&shared, &owner)).await {
        Ok(a) => a,
        Err(why) => {
            let error = definitions::Error::new(AmqpError::UnauthorizedAccess, why, None);
            refuse(link, error).await;
            return;
        }
    };
    let it = Identity {
        owner,
        device,
        links,
        shared,
    };
    match (node, link) {
        (Node::Events(_), LinkEndpoint::Receiver(rx)) => telemetry(rx, it).await,
        (Node::Twin(_), LinkEndpoint::Receiver(rx)) => twin_requests(rx, it).await,
        (Node::Twin(_), LinkEndpoint::Sender(tx)) => twin_out(tx, it).await,
        (Node::Methods(_), LinkEndpoint::Sender(tx)) => methods_out(tx, it).await,
        (Node::Methods(_), LinkEndpoint::Receiver(rx)) => method_responses(rx, it).await,
        (Node::DeviceBound(o), LinkEndpoint::Sender(tx)) if o.module.is_none() => {
            cloud_to_device(tx, it).await;
        }
        (node, link) => {
            let why =
                format!("{node:?} is not served in this direction (or for modules) over AMQP");
            refuse(
                link,
                definitions::Error::new(AmqpError::NotImplemented, why, None),
            )
            .await;
        }
    }
}

/// An admitted identity as its links see it.
struct Identity {
    owner: Owner,
    device: AuthenticatedDevice,
    links: Arc<IdentityLinks>,
    shared: Arc<Shared>,
}

/// Rejects a telemetry message the hub could not store: the client sends it again.
async fn not_stored(rx: &fe2o3_amqp::Receiver, info: DeliveryInfo, owner: &Owner, e: &str) {
    tracing::warn!(
        client_id = owner.client_id(),
        error = e,
        "telemetry not stored"
    );
    let error = definitions::Error::new(
        AmqpError::InternalError,
        "the hub could not store the message; send it again".to_string(),
        None,
    );
    let _ = rx.reject(info, error).await;
}

/// `/devices/{id}/messages/events`: each message is stored durably, then accepted.
async fn telemetry(mut rx: fe2o3_amqp::Receiver, it: Identity) {
    use futures_util::stream::FuturesOrdered;
    use futures_util::{FutureExt, StreamExt};
    let Identity {
        owner,
        device,
        shared,
        ..
    } = it;
    let core = &shared.core;
    // Messages handed to the telemetry writer and not yet settled, in order: the writer
    // commits in the order it is given, so a link's messages are stored together in batches
    // while the client keeps sending, and each is accepted once it is on disk.
    let mut storing = FuturesOrdered::new();
    loop {
        tokio::select! {
            stored = storing.next(), if !storing.is_empty() => {
                let Some((info, committed)): Option<(DeliveryInfo, Result<i64, String>)> = stored
                else {
                    continue;
                };
                match committed {
                    Ok(_) => {
                        // Every message already stored after it too: one disposition for the
                        // run (fe2o3 sends a range when the delivery ids follow each other).
                        let mut run = vec![info];
                        let mut failed = None;
                        while let Some(Some((next, committed))) = storing.next().now_or_never() {
                            match committed {
                                Ok(_) => run.push(next),
                                Err(e) => {
                                    failed = Some((next, e));
                                    break;
                                }
                            }
                        }
                        for _ in &run {
                            core.telemetry_counted();
                        }
                        let accepted = if run.len() == 1 {
                            rx.accept(run.remove(0)).await
                        } else {
                            rx.accept_all(run).await
                        };
                        if accepted.is_err() {
                            return;
                        }
                        if let Some((info, e)) = failed {
                            not_stored(&rx, info, &owner, &e).await;
                        }
                    }
                    Err(e) => not_stored(&rx, info, &owner, &e).await,
                }
            }
            delivery = next_delivery(&mut rx, &shared.ended), if storing.len() < MAX_STORING => {
                let Some(delivery) = delivery else { return };
                let (info, message) = delivery.into_parts();
                let (props, body) = telemetry_parts(&message);
                drop(message);
                let record = core.telemetry(&device, &props, body);
                let submitted = core.state().telemetry().submit(record).await;
                storing.push_back(async move {
                    let committed = match submitted {
                        Ok(c) => c.await,
                        Err(e) => Err(e),
                    };
                    (info, committed)
                });
            }
        }
    }
}

/// How long a C2D message sent over AMQP stays locked for the device's disposition; one that
/// comes later finds it delivered again.
const C2D_LOCK_MS: i64 = 60_000;

/// `/devices/{id}/messages/devicebound`: the device's C2D queue (the one MQTT and HTTPS use),
/// a message at a time, locked while the device holds it. Its disposition settles it:
/// accepted completes it, rejected rejects it (feedback `Rejected`), released or modified
/// abandons it (delivered again).
async fn cloud_to_device(mut tx: fe2o3_amqp::Sender, it: Identity) {
    let Identity {
        owner,
        device,
        links: wake,
        shared,
    } = it;
    let core = &shared.core;
    loop {
        let locked = match core.lock_c2d(&device, C2D_LOCK_MS).await {
            Ok(locked) => locked,
            Err(e) => {
                tracing::warn!(client_id = owner.client_id(), error = %e, "C2D queue not read");
                None
            }
        };
        let Some((token, message, _)) = locked else {
            // Woken when a message is queued; read again now and then for locks that ran out.
            tokio::select! {
                () = wake.c2d.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
                () = shared.ended.cancelled() => return,
            }
            continue;
        };
        let sendable = Sendable::builder()
            .message(c2d_message(&message, &owner))
            .settled(false)
            .build();
        let outcome = tokio::select! {
            o = tokio::time::timeout(Duration::from_millis(C2D_LOCK_MS as u64), tx.send(sendable)) => o,
            () = shared.ended.cancelled() => return,
        };
        let settle = match outcome {
            Ok(Ok(Outcome::Accepted(_))) => Settle::Complete,
            Ok(Ok(Outcome::Rejected(_))) => Settle::Reject,
            Ok(Ok(_)) => Settle::Abandon,
            Ok(Err(_)) => {
                // The link ended: the message is delivered again.
                let _ = core.settle_c2d(&device, &token, Settle::Abandon).await;
                return;
            }
            // No disposition while it was locked: it is delivered again.
            Err(_) => continue,
        };
        if let Err(e) = core.settle_c2d(&device, &token, settle).await {
            tracing::warn!(client_id = owner.client_id(), error = %e, "C2D disposition not stored");
        }
    }
}

/// A queued C2D message as AMQP carries it: system properties in the properties section,
/// application properties as strings, the body as one data section.
fn c2d_message(m: &certhub_core::C2dMessage, owner: &Owner) -> Message<Body<Value>> {
    let text = |k: &str| m.system.get(k).cloned();
    let symbol = |k: &str| m.system.get(k).map(|v| Symbol::from(v.as_str()));
    let properties = Properties {
        message_id: text("messageId").map(MessageId::String),
        correlation_id: text("correlationId").map(MessageId::String),
        user_id: text("userId").map(|u| u.into_bytes().into()),
        to: Some(format!("/devices/{}/messages/deviceBound", owner.device)),
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
        .body(Body::Data(
            vec![fe2o3_amqp::types::messaging::Data(m.body.clone().into())].into(),
        ))
        .build()
}

/// A message whose body is one data section, with message annotations if any.
fn data_message(
    properties: Properties,
    annotations: Option<fe2o3_amqp::types::messaging::MessageAnnotations>,
    body: Vec<u8>,
) -> Message<Body<Value>> {
    let body = Body::Data(vec![fe2o3_amqp::types::messaging::Data(body.into())].into());
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

/// The twin link the hub sends on: responses and desired-property pushes, each settled.
async fn twin_out(mut tx: fe2o3_amqp::Sender, it: Identity) {
    let Identity { links, shared, .. } = it;
    let (out, mut queue) = mpsc::unbounded_channel();
    *links.twin.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
    while let Some(message) = tokio::select! {
        m = queue.recv() => m,
        () = shared.ended.cancelled() => None,
    } {
        let sendable = Sendable::builder().message(*message).settled(true).build();
        if tx.send(sendable).await.is_err() {
            break;
        }
    }
    *links.twin.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Twin requests on `/devices/{id}/twin`: the `operation` (and `resource`) annotations say
/// which; each is answered on the twin link the hub sends on, with the request's correlation
/// id, a `status` annotation (int) and, for a reported patch, the twin's new `version` (long).
async fn twin_requests(mut rx: fe2o3_amqp::Receiver, it: Identity) {
    let Identity {
        owner,
        device,
        links,
        shared,
    } = it;
    let core = &shared.core;
    loop {
        let Some(delivery) = next_delivery(&mut rx, &shared.ended).await else {
            return;
        };
        let _ = rx.accept(&delivery).await;
        let request = delivery.message();
        let sessions = core.state().sessions();
        let cn = owner.client_id();
        let (status, version, body): (i32, Option<i64>, Vec<u8>) = match (
            annotation(request, "operation"),
            annotation(request, "resource"),
        ) {
            (Some("GET"), _) => match core.read_twin(&device).await {
                Ok(twin) => (200, None, twin),
                Err((status, why)) => (i32::from(status), None, error_body(&why)),
            },
            (Some("PATCH"), Some("/properties/reported")) => {
                let (_, patch) = telemetry_parts(request);
                match core.patch_reported(&device, &patch).await {
                    Ok(version) => (204, Some(version), Vec::new()),
                    Err((status, why)) => (i32::from(status), None, error_body(&why)),
                }
            }
            (Some("PUT"), Some("/notifications/twin/properties/desired")) => {
                sessions.subscribed(&cn, links.conn, &[(DESIRED.to_string(), 0)]);
                (200, None, Vec::new())
            }
            (Some("DELETE"), Some("/notifications/twin/properties/desired")) => {
                sessions.unsubscribed(&cn, links.conn, &[DESIRED.to_string()]);
                (200, None, Vec::new())
            }
            (operation, resource) => (
                400,
                None,
                error_body(&format!(
                    "unknown twin operation {operation:?} on {resource:?}: GET, PATCH /properties/reported, PUT or DELETE /notifications/twin/properties/desired"
                )),
            ),
        };
        let correlation = request
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let mut annotations = fe2o3_amqp::types::messaging::MessageAnnotations::builder()
            .insert(OwnedKey::Symbol(Symbol::from("status")), Value::Int(status));
        if let Some(v) = version {
            annotations =
                annotations.insert(OwnedKey::Symbol(Symbol::from("version")), Value::Long(v));
        }
        let response = data_message(
            Properties {
                correlation_id: correlation,
                ..Default::default()
            },
            Some(annotations.build()),
            body,
        );
        if !links.to_twin(response) {
            tracing::debug!(
                client_id = cn,
                "a twin response with no twin link to send it on"
            );
        }
    }
}

/// The method link the hub sends on: attaching it subscribes the identity to direct methods
/// (as MQTT's SUBSCRIBE to `$iothub/methods/POST/#` does), detaching it ends that.
async fn methods_out(mut tx: fe2o3_amqp::Sender, it: Identity) {
    let Identity {
        owner,
        links,
        shared,
        ..
    } = it;
    let (out, mut queue) = mpsc::unbounded_channel();
    *links.methods.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
    let sessions = shared.core.state().sessions();
    let cn = owner.client_id();
    sessions.subscribed(&cn, links.conn, &[(METHODS.to_string(), 0)]);
    while let Some(message) = tokio::select! {
        m = queue.recv() => m,
        () = shared.ended.cancelled() => None,
    } {
        let sendable = Sendable::builder().message(*message).settled(true).build();
        if tx.send(sendable).await.is_err() {
            break;
        }
    }
    *links.methods.lock().unwrap_or_else(|e| e.into_inner()) = None;
    sessions.unsubscribed(&cn, links.conn, &[METHODS.to_string()]);
}

/// Method answers on `/devices/{id}/methods/devicebound`: the request's correlation id, the
/// status in `IoThub-status`, the JSON payload as the body.
async fn method_responses(mut rx: fe2o3_amqp::Receiver, it: Identity) {
    let Identity {
        owner,
        links,
        shared,
        ..
    } = it;
    let cn = owner.client_id();
    while let Some(delivery) = next_delivery(&mut rx, &shared.ended).await {
        let _ = rx.accept(&delivery).await;
        let answer = delivery.message();
        let id = answer
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.as_ref())
            .and_then(uuid_bytes);
        let rid = id.and_then(|id| {
            links
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
        });
        let Some(rid) = rid else {
            tracing::info!(client_id = cn, "a method answer for no call of this hub");
            continue;
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
        if !shared
            .core
            .state()
            .sessions()
            .finish_method(&cn, &rid, reply)
        {
            tracing::info!(
                client_id = cn,
                rid,
                "method response for no waiting call (timed out?)"
            );
        }
    }
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
fn telemetry_parts(message: &Message<Body<Value>>) -> (MessageProperties, Vec<u8>) {
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
    let body = match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(AmqpValue(Value::String(s))) => s.clone().into_bytes(),
        Body::Value(AmqpValue(Value::Binary(b))) => b.to_vec(),
        _ => Vec::new(),
    };
    (props, body)
}

pub(super) fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_ref()),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn uuid_text(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if hex.len() == 32 {
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    } else {
        hex
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
