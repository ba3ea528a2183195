//! The engine against a real AMQP 1.0 client (fe2o3-amqp's) over an in-memory stream, and
//! against hand-made frames where a well-behaved client cannot go (limits it enforces
//! itself, malformed input, the clock).
//!
//! The hub side of the client tests is a small server loop (`serve`) that owns an
//! [`Engine`], feeds it what the stream gives, hands every event to the test's handler and
//! writes what the engine has to say; everything it saw and wrote is kept for the checks.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use certhub_amqp::{AttachRequest, Config, Engine, Event, LinkId, error};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::frames::amqp::{FrameBody, FrameDecoder};
use fe2o3_amqp::frames::sasl;
use fe2o3_amqp::link::builder::{Builder, WithName, WithSource, WithTarget};
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::link::role::ReceiverMarker;
use fe2o3_amqp::link::{CreditMode, DetachError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{
    self, AmqpError, ConnectionError, ErrorCondition, Handle, LinkError, ReceiverSettleMode, Role,
    SenderSettleMode, SessionError,
};
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{
    Accepted, AmqpValue, Body, DeliveryState, Message, Outcome, Released, SerializableBody, Source,
    Target, TargetArchetype,
};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, End, Flow, MaxFrameSize, Open, Transfer,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::codec::{Decoder, Encoder};

/// How long any one step may take before the test fails (nothing here takes more than a
/// fraction of it when the engine works).
const STEP: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn config() -> Config {
    Config {
        container_id: "certhub-test".into(),
        max_frame_size: 64 * 1024,
        max_sessions: 4,
        max_links: 8,
        max_message_size: 1 << 20,
        idle_timeout_ms: 0,
        mechanisms: vec!["PLAIN", "ANONYMOUS"],
        properties: None,
    }
}

fn accepted() -> DeliveryState {
    DeliveryState::Accepted(Accepted {})
}

fn encode<B: SerializableBody>(message: Message<B>) -> Vec<u8> {
    serde_amqp::to_vec(&Serializable(message)).expect("a message encodes")
}

fn decode(payload: &[u8]) -> Message<Body<Value>> {
    serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(payload)
        .expect("a message decodes")
        .0
}

fn text(message: &Message<Body<Value>>) -> String {
    match &message.body {
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.clone(),
            other => panic!("a string body was expected, not {other:?}"),
        },
        other => panic!("an amqp-value body was expected, not {other:?}"),
    }
}

fn data(message: &Message<Body<Value>>) -> Vec<u8> {
    match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect(),
        other => panic!("a data body was expected, not {other:?}"),
    }
}

fn string_body(s: &str) -> Body<Value> {
    Body::Value(AmqpValue(Value::String(s.to_string())))
}

fn text_message(s: &str) -> Vec<u8> {
    encode(Message::builder().value(s.to_string()).build())
}

// ---------------------------------------------------------------------------------------
// What the engine said and wrote, kept in a form the checks can compare.

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    SaslInit {
        mechanism: String,
        response: Option<Vec<u8>>,
        hostname: Option<String>,
    },
    Opened {
        hostname: Option<String>,
    },
    Attach {
        link: LinkId,
        client_sends: bool,
        address: String,
        name: String,
    },
    Transfer {
        link: LinkId,
        delivery: u32,
        settled: bool,
        payload: Bytes,
    },
    Outcome {
        link: LinkId,
        delivery: u32,
        state: Option<DeliveryState>,
    },
    Credit {
        link: LinkId,
    },
    Detached {
        link: LinkId,
        error: Option<definitions::Error>,
    },
    Closed {
        error: Option<definitions::Error>,
    },
    Failed(String),
}

fn seen(event: &Event) -> Seen {
    match event {
        Event::SaslInit {
            mechanism,
            response,
            hostname,
        } => Seen::SaslInit {
            mechanism: mechanism.clone(),
            response: response.clone(),
            hostname: hostname.clone(),
        },
        Event::Opened { hostname } => Seen::Opened {
            hostname: hostname.clone(),
        },
        Event::Attach(request) => Seen::Attach {
            link: request.link,
            client_sends: request.client_sends,
            address: request.address.clone(),
            name: request.attach.name.clone(),
        },
        Event::Transfer {
            link,
            delivery,
            settled,
            payload,
        } => Seen::Transfer {
            link: *link,
            delivery: *delivery,
            settled: *settled,
            payload: payload.clone(),
        },
        Event::Outcome {
            link,
            delivery,
            state,
        } => Seen::Outcome {
            link: *link,
            delivery: *delivery,
            state: state.clone(),
        },
        Event::Credit { link } => Seen::Credit { link: *link },
        Event::Detached { link, error } => Seen::Detached {
            link: *link,
            error: error.clone(),
        },
        Event::Closed { error } => Seen::Closed {
            error: error.clone(),
        },
        Event::Failed(why) => Seen::Failed(why.clone()),
    }
}

/// One unit the engine wrote (kept for the checks only, so its size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Written {
    Header([u8; 8]),
    Sasl(sasl::Frame),
    Amqp {
        channel: u16,
        /// The frame's size as written (its first four bytes).
        size: usize,
        body: FrameBody,
    },
}

/// Splits what the engine wrote into headers and frames, decoding each (with fe2o3's own
/// decoders: whatever the engine writes must be readable by a client).
fn parse_output(mut bytes: &[u8]) -> Vec<Written> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.starts_with(b"AMQP") {
            let mut header = [0u8; 8];
            header.copy_from_slice(&bytes[..8]);
            out.push(Written::Header(header));
            bytes = &bytes[8..];
            continue;
        }
        assert!(
            bytes.len() >= 8,
            "a truncated frame in the output: {bytes:02x?}"
        );
        let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert!(
            size >= 8 && size <= bytes.len(),
            "a frame of {size} bytes with {} left",
            bytes.len()
        );
        let mut frame = BytesMut::from(&bytes[4..size]);
        match frame[1] {
            0 => {
                let decoded = (FrameDecoder {})
                    .decode(&mut frame)
                    .expect("an AMQP frame of the engine decodes")
                    .expect("a whole frame");
                out.push(Written::Amqp {
                    channel: decoded.channel,
                    size,
                    body: decoded.body,
                });
            }
            1 => {
                let decoded = (sasl::FrameCodec {})
                    .decode(&mut frame)
                    .expect("a SASL frame of the engine decodes")
                    .expect("a whole frame");
                out.push(Written::Sasl(decoded));
            }
            t => panic!("a frame of type {t} in the output"),
        }
        bytes = &bytes[size..];
    }
    out
}

/// The items of `items` that `pattern` matches (with an optional guard), each as `value`:
/// `pick!(bodies(w), (_, FrameBody::Close(c)) => c)`.
macro_rules! pick {
    ($items:expr, $pattern:pat if $guard:expr => $value:expr) => {
        $items
            .into_iter()
            .filter_map(|item| match item {
                $pattern if $guard => Some($value),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    ($items:expr, $pattern:pat => $value:expr) => {
        pick!($items, $pattern if true => $value)
    };
}

fn bodies(written: &[Written]) -> impl Iterator<Item = (u16, &FrameBody)> {
    written.iter().filter_map(|w| match w {
        Written::Amqp { channel, body, .. } => Some((*channel, body)),
        _ => None,
    })
}

fn closes(written: &[Written]) -> Vec<&Close> {
    pick!(bodies(written), (_, FrameBody::Close(c)) => c)
}

fn detaches(written: &[Written]) -> Vec<&Detach> {
    pick!(bodies(written), (_, FrameBody::Detach(d)) => d)
}

fn ends(written: &[Written]) -> Vec<(u16, &End)> {
    pick!(bodies(written), (c, FrameBody::End(e)) => (c, e))
}

fn begins(written: &[Written]) -> Vec<(u16, &Begin)> {
    pick!(bodies(written), (c, FrameBody::Begin(b)) => (c, b))
}

fn all_flows(written: &[Written]) -> Vec<&Flow> {
    pick!(bodies(written), (_, FrameBody::Flow(f)) => f)
}

fn link_flows(written: &[Written], handle: u32) -> Vec<&Flow> {
    pick!(all_flows(written), f if f.handle.as_ref().map(|h| h.0) == Some(handle) => f)
}

fn opens(written: &[Written]) -> Vec<&Open> {
    pick!(bodies(written), (_, FrameBody::Open(o)) => o)
}

fn transfer_frames(written: &[Written]) -> Vec<&Transfer> {
    pick!(bodies(written), (_, FrameBody::Transfer { performative, .. }) => performative)
}

fn heartbeats(written: &[Written]) -> usize {
    bodies(written)
        .filter(|(_, b)| matches!(b, FrameBody::Empty))
        .count()
}

fn is_header(written: Option<&Written>, header: &[u8]) -> bool {
    matches!(written, Some(Written::Header(h)) if h[..] == *header)
}

/// The hub's handle of the link attached with `name` (from the reply attach it wrote).
fn hub_handle(written: &[Written], name: &str) -> u32 {
    bodies(written)
        .find_map(|(_, b)| match b {
            FrameBody::Attach(a) if a.name == name => Some(a.handle.0),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no attach for {name} was written"))
}

fn condition_of(e: &definitions::Error) -> &ErrorCondition {
    &e.condition
}

fn assert_error(e: Option<&definitions::Error>, condition: ErrorCondition, words: &str) {
    let e = e.unwrap_or_else(|| panic!("an error {condition:?} was expected, none came"));
    assert_eq!(condition_of(e), &condition, "condition of {e:?}");
    let description = e.description.as_deref().unwrap_or_default();
    assert!(
        description.contains(words),
        "description {description:?} should say {words:?}"
    );
}

/// The engine wrote one close, with `condition` and `words`.
fn assert_one_close(written: &[Written], condition: ErrorCondition, words: &str) {
    let c = closes(written);
    assert_eq!(c.len(), 1, "{written:?}");
    assert_error(c[0].error.as_ref(), condition, words);
}

/// The engine wrote one detach, closing the link with `condition` and `words`.
fn assert_one_detach(written: &[Written], condition: ErrorCondition, words: &str) {
    let d = detaches(written);
    assert_eq!(d.len(), 1, "{written:?}");
    assert!(d[0].closed, "{:?}", d[0]);
    assert_error(d[0].error.as_ref(), condition, words);
}

/// `e`'s debug form says every one of `words`.
fn assert_debug_says(e: &impl std::fmt::Debug, words: &[&str]) {
    let s = format!("{e:?}");
    for w in words {
        assert!(s.contains(w), "{s} should say {w:?}");
    }
}

/// The only event is a failure whose reason says `words`.
fn assert_failed(events: &[Event], words: &str) {
    assert!(
        matches!(events, [Event::Failed(why)] if why.contains(words)),
        "a failure saying {words:?} was expected: {events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The server loop.

/// The hub's side of one connection as the handler and the actions see it.
struct Ctx {
    engine: Engine,
    start: Instant,
    /// Every event, in order.
    seen: Vec<Seen>,
    /// Everything written, in order.
    written: Vec<Written>,
    /// Every event as it happens, for the test to wait on.
    live: mpsc::UnboundedSender<Seen>,
    /// Messages to send on links the hub sends on when they have credit: (payload, settled).
    outbox: VecDeque<(Vec<u8>, bool)>,
    /// What the hub sent: (link, delivery id, settled).
    sent: Vec<(LinkId, u32, bool)>,
    /// The hub's own `send` refused (too large).
    send_errors: Vec<String>,
}

impl Ctx {
    fn now(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_millis()).expect("a short test")
    }

    /// Sends from the outbox while `link` has credit.
    fn send_pending(&mut self, link: LinkId) {
        while self.engine.credit(link) > 0 {
            let Some((payload, settled)) = self.outbox.pop_front() else {
                return;
            };
            match self.engine.send(link, None, &payload, settled) {
                Ok(Some(delivery)) => self.sent.push((link, delivery, settled)),
                Ok(None) => panic!("send refused with credit {}", self.engine.credit(link)),
                Err(e) => self.send_errors.push(e),
            }
        }
    }

    fn pump(&mut self, input: &mut BytesMut, handler: &mut Handler) {
        loop {
            let now = self.now();
            self.engine.receive(input, now);
            let mut any = false;
            while let Some(event) = self.engine.next_event() {
                any = true;
                let s = seen(&event);
                let _ = self.live.send(s.clone());
                self.seen.push(s);
                handler(self, event);
            }
            if !any {
                return;
            }
        }
    }
}

type Handler = Box<dyn FnMut(&mut Ctx, Event) + Send>;
type Action = Box<dyn FnOnce(&mut Ctx) + Send>;

async fn serve(
    mut stream: DuplexStream,
    mut ctx: Ctx,
    mut handler: Handler,
    mut actions: mpsc::UnboundedReceiver<Action>,
) -> Ctx {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut actions_open = true;
    loop {
        ctx.pump(&mut input, &mut handler);
        let now = ctx.now();
        if let Some(out) = ctx.engine.take_output(now) {
            ctx.written.extend(parse_output(&out));
            if stream.write_all(&out).await.is_err() {
                break;
            }
        }
        if ctx.engine.is_closed() {
            break;
        }
        let deadline = ctx
            .engine
            .deadline()
            .map(|ms| ctx.start + Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        tokio::select! {
            read = stream.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            action = actions.recv(), if actions_open => match action {
                Some(action) => action(&mut ctx),
                None => actions_open = false,
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let now = ctx.now();
                ctx.engine.tick(now);
            }
        }
    }
    let _ = stream.shutdown().await;
    ctx
}

struct Hub {
    actions: mpsc::UnboundedSender<Action>,
    live: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<Ctx>,
}

impl Hub {
    fn start(
        config: Config,
        handler: impl FnMut(&mut Ctx, Event) + Send + 'static,
    ) -> (Hub, DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (live_tx, live_rx) = mpsc::unbounded_channel();
        let (actions_tx, actions_rx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            engine: Engine::new(config, 0),
            start: Instant::now(),
            seen: Vec::new(),
            written: Vec::new(),
            live: live_tx,
            outbox: VecDeque::new(),
            sent: Vec::new(),
            send_errors: Vec::new(),
        };
        let task = tokio::spawn(serve(server, ctx, Box::new(handler), actions_rx));
        (
            Hub {
                actions: actions_tx,
                live: live_rx,
                task,
            },
            client,
        )
    }

    /// The usual hub (`obliging(4)` on `config()`) with `outbox` queued before the client
    /// comes.
    fn start_sending(outbox: Vec<(Vec<u8>, bool)>) -> (Hub, DuplexStream) {
        let (hub, stream) = Hub::start(config(), obliging(4));
        hub.act(move |ctx| ctx.outbox.extend(outbox));
        (hub, stream)
    }

    /// Runs `f` on the hub's side, between two reads.
    fn act(&self, f: impl FnOnce(&mut Ctx) + Send + 'static) {
        self.actions
            .send(Box::new(f))
            .expect("the hub loop is running");
    }

    /// Runs `f` on the hub's side and gives back its answer.
    async fn ask<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Ctx) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.act(move |ctx| {
            let _ = tx.send(f(ctx));
        });
        step(what, rx).await
    }

    /// Waits for the next event that `pick` takes something from.
    async fn wait_map<T>(&mut self, what: &str, pick: impl Fn(&Seen) -> Option<T>) -> T {
        within(what, async {
            loop {
                match self.live.recv().await {
                    Some(s) => {
                        if let Some(t) = pick(&s) {
                            return t;
                        }
                    }
                    None => panic!("the hub loop ended before: {what}"),
                }
            }
        })
        .await
    }

    /// Waits for the next event that `pred` matches.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        self.wait_map(what, |s| pred(s).then(|| s.clone())).await
    }

    /// Waits for the next attach and gives its link.
    async fn next_attach(&mut self) -> LinkId {
        self.wait_map("attach", |s| match s {
            Seen::Attach { link, .. } => Some(*link),
            _ => None,
        })
        .await
    }

    /// Waits for the next credit and gives its link.
    async fn next_credit(&mut self) -> LinkId {
        self.wait_map("credit", |s| match s {
            Seen::Credit { link } => Some(*link),
            _ => None,
        })
        .await
    }

    /// Waits for the next detached link and its error.
    async fn next_detached(&mut self) -> (LinkId, Option<definitions::Error>) {
        self.wait_map("detached", |s| match s {
            Seen::Detached { link, error } => Some((*link, error.clone())),
            _ => None,
        })
        .await
    }

    async fn next_outcome(&mut self) -> Seen {
        self.wait_for("an outcome", |s| matches!(s, Seen::Outcome { .. }))
            .await
    }

    /// Waits for the hub loop to end (the connection closed) and gives back what it saw.
    async fn finish(self) -> Ctx {
        within("the hub loop ends", self.task)
            .await
            .expect("the hub loop does not panic")
    }
}

/// The usual hub: SASL passes, every link is accepted with `window`, every transfer
/// settled accepted at once, the outbox sent on credit.
fn obliging(window: u32) -> impl FnMut(&mut Ctx, Event) + Send + 'static {
    move |ctx, event| match event {
        Event::SaslInit { .. } => ctx.engine.sasl_outcome(true),
        Event::Attach(request) => ctx.engine.accept(&request, window),
        Event::Transfer {
            link,
            delivery,
            settled: false,
            ..
        } => ctx.engine.settle(link, delivery, accepted()),
        Event::Credit { link } => ctx.send_pending(link),
        _ => {}
    }
}

fn transfers(seen: &[Seen]) -> Vec<(LinkId, u32, bool, Bytes)> {
    pick!(
        seen,
        Seen::Transfer { link, delivery, settled, payload } =>
            (*link, *delivery, *settled, payload.clone())
    )
}

fn detached_links(seen: &[Seen]) -> Vec<LinkId> {
    pick!(seen, Seen::Detached { link, .. } => *link)
}

fn outcomes(seen: &[Seen]) -> usize {
    seen.iter()
        .filter(|s| matches!(s, Seen::Outcome { .. }))
        .count()
}

fn attach_link(seen: &[Seen], name: &str) -> LinkId {
    seen.iter()
        .find_map(|s| match s {
            Seen::Attach { link, name: n, .. } if n == name => Some(*link),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no attach event for {name}"))
}

// ---------------------------------------------------------------------------------------
// The client's side: fe2o3's connection, sessions and links, every step within `STEP`.

/// `within`, for a step that must succeed too.
async fn step<T, E: std::fmt::Debug>(what: &str, fut: impl Future<Output = Result<T, E>>) -> T {
    within(what, fut)
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
}

async fn connect(stream: DuplexStream) -> ConnectionHandle<()> {
    step(
        "the client's open",
        Connection::builder()
            .container_id("test-client")
            .open_with_stream(stream),
    )
    .await
}

async fn begin(connection: &mut ConnectionHandle<()>) -> SessionHandle<()> {
    step("begin", Session::begin(connection)).await
}

/// The client connected to `hub` with one session begun.
async fn session_on(
    (hub, stream): (Hub, DuplexStream),
) -> (Hub, ConnectionHandle<()>, SessionHandle<()>) {
    let mut connection = connect(stream).await;
    let session = begin(&mut connection).await;
    (hub, connection, session)
}

/// The usual hub (`obliging(4)`) on `cfg`, the client connected with one session begun.
async fn open_session(cfg: Config) -> (Hub, ConnectionHandle<()>, SessionHandle<()>) {
    session_on(Hub::start(cfg, obliging(4))).await
}

async fn attach_sender(session: &mut SessionHandle<()>, name: &str, address: &str) -> Sender {
    step("attach", Sender::attach(session, name, address)).await
}

async fn attach_receiver(session: &mut SessionHandle<()>, name: &str, address: &str) -> Receiver {
    step("attach", Receiver::attach(session, name, address)).await
}

type ReceiverBuilder = Builder<ReceiverMarker, Target, WithName, WithSource, WithTarget>;

/// A receiver `name` on "out", with `options` set on fe2o3's builder.
async fn attach_receiver_with(
    session: &mut SessionHandle<()>,
    name: &str,
    options: impl FnOnce(ReceiverBuilder) -> ReceiverBuilder,
) -> Receiver {
    let builder = options(Receiver::builder().name(name).source("out"));
    step("attach", builder.attach(session)).await
}

/// Sends `text` unsettled and checks the hub accepted it.
async fn send_accepted(sender: &mut Sender, text: &str) {
    let message = Message::builder().value(text.to_string()).build();
    let outcome = step("send", sender.send(message)).await;
    assert!(
        matches!(outcome, Outcome::Accepted(_)),
        "{text}: {outcome:?}"
    );
}

/// A new sender `name` on `session` whose first message the hub accepts.
async fn sender_that_sends(session: &mut SessionHandle<()>, name: &str) -> Sender {
    let mut sender = attach_sender(session, name, "q").await;
    send_accepted(&mut sender, "x").await;
    sender
}

/// Receives the next message and checks it is the string `expected`.
async fn recv_text(receiver: &mut Receiver, expected: &str) -> Delivery<Body<Value>> {
    let delivery = step("recv", receiver.recv::<Body<Value>>()).await;
    assert_eq!(delivery.body(), &string_body(expected), "{expected}");
    delivery
}

/// `recv_text`, then accepts it.
async fn recv_accept(receiver: &mut Receiver, expected: &str) {
    let delivery = recv_text(receiver, expected).await;
    step("accept", receiver.accept(&delivery)).await;
}

/// The hub detaches `sender` with `condition` and `words`.
async fn assert_detached_by_hub(sender: &mut Sender, condition: ErrorCondition, words: &str) {
    match within("detach", sender.on_detach()).await {
        DetachError::RemoteClosedWithError(e) => assert_error(Some(&e), condition, words),
        other => panic!("the hub's {condition:?} was expected, not {other:?}"),
    }
}

/// A sender the hub refuses: either it attaches and is detached at once with `condition`
/// and `words`, or its attach fails with an error whose debug form says `debug_words`.
async fn assert_sender_refused(
    session: &mut SessionHandle<()>,
    (name, address): (&str, &str),
    condition: ErrorCondition,
    words: &str,
    debug_words: &[&str],
) {
    match within("attach", Sender::attach(session, name, address)).await {
        Ok(mut sender) => assert_detached_by_hub(&mut sender, condition, words).await,
        Err(e) => assert_debug_says(&e, debug_words),
    }
}

/// Closes the client's connection and waits for the hub loop to end.
async fn close_and_finish(mut connection: ConnectionHandle<()>, hub: Hub) -> Ctx {
    step("close", connection.close()).await;
    hub.finish().await
}

/// After `silence`, a new session and link on `connection` still work; then it closes.
async fn alive_after(silence: Duration, mut connection: ConnectionHandle<()>, hub: Hub) -> Ctx {
    sleep(silence).await;
    let mut session = begin(&mut connection).await;
    let _sender = sender_that_sends(&mut session, "s").await;
    close_and_finish(connection, hub).await
}

// ---------------------------------------------------------------------------------------
// 1. Plain AMQP, a client sender, credit and settlement.

#[tokio::test]
async fn plain_header_sender_gets_credit_in_windows_and_every_send_accepted() {
    let (hub, connection, mut session) = open_session(config()).await;
    let mut sender = attach_sender(&mut session, "sender-1", "q").await;

    // Twenty unsettled sends in flight at once: five times the window, so the client has to
    // wait for the hub's settlements and the credit they give back.
    let mut pending = Vec::new();
    for i in 0..20 {
        let message = Message::builder().value(format!("m{i}")).build();
        pending.push(step("send", sender.send_batchable(message)).await);
    }
    for (i, fut) in pending.into_iter().enumerate() {
        let outcome = step("outcome", fut).await;
        assert!(
            matches!(outcome, Outcome::Accepted(_)),
            "send {i}: {outcome:?}"
        );
    }

    step("sender close", sender.close()).await;
    step("session end", session.end()).await;
    let ctx = close_and_finish(connection, hub).await;

    assert!(is_header(ctx.written.first(), AMQP));
    assert_eq!(
        ctx.seen.first(),
        Some(&Seen::Opened { hostname: None }),
        "{:?}",
        ctx.seen
    );
    let link = attach_link(&ctx.seen, "sender-1");
    assert!(ctx.seen.contains(&Seen::Attach {
        link,
        client_sends: true,
        address: "q".into(),
        name: "sender-1".into()
    }));

    // Every message arrived once, whole, in order, unsettled.
    let got = transfers(&ctx.seen);
    assert_eq!(got.len(), 20);
    for (i, (l, delivery, settled, payload)) in got.iter().enumerate() {
        assert_eq!(*l, link);
        assert_eq!(*delivery, i as u32);
        assert!(!settled);
        assert_eq!(text(&decode(payload)), format!("m{i}"));
    }

    // Every delivery was settled accepted by a disposition (ranges may merge).
    let mut settled = vec![false; 20];
    for d in pick!(bodies(&ctx.written), (_, FrameBody::Disposition(d)) => d) {
        assert_eq!(d.role, Role::Receiver);
        assert!(d.settled);
        assert_eq!(d.state, Some(accepted()));
        for id in d.first..=d.last.unwrap_or(d.first) {
            assert!(!settled[id as usize], "delivery {id} settled twice");
            settled[id as usize] = true;
        }
    }
    assert!(settled.iter().all(|s| *s), "unsettled: {settled:?}");

    // Credit came in windows of four, renewed as the hub settled.
    let flows = link_flows(&ctx.written, hub_handle(&ctx.written, "sender-1"));
    assert!(
        flows.len() >= 5,
        "credit renewed only {} times",
        flows.len()
    );
    assert_eq!(flows[0].link_credit, Some(4));
    assert_eq!(flows[0].delivery_count, Some(0));
    for f in &flows {
        assert!(f.link_credit.unwrap_or(0) <= 4, "{f:?}");
    }
    let reach = flows
        .iter()
        .map(|f| f.delivery_count.unwrap_or(0) + f.link_credit.unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(reach >= 20, "the credit reached only {reach}");

    // No detach but the answer to the client's (no transfer-limit-exceeded on the way).
    let ds = detaches(&ctx.written);
    assert_eq!(ds.len(), 1);
    assert!(ds[0].error.is_none(), "{:?}", ds[0]);
    assert!(ctx.seen.contains(&Seen::Detached { link, error: None }));
    assert_eq!(ctx.seen.last(), Some(&Seen::Closed { error: None }));
    assert!(ctx.engine.is_closed());
}

// ---------------------------------------------------------------------------------------
// 2. SASL.

async fn sasl_open(
    profile: SaslProfile,
    ok: bool,
) -> (
    Result<ConnectionHandle<()>, fe2o3_amqp::connection::OpenError>,
    Hub,
) {
    let mut rest = obliging(8);
    let (hub, stream) = Hub::start(config(), move |ctx: &mut Ctx, event| match event {
        Event::SaslInit { .. } => ctx.engine.sasl_outcome(ok),
        other => rest(ctx, other),
    });
    let result = within(
        "the client's open",
        Connection::builder()
            .container_id("test-client")
            .hostname("hub.example")
            .sasl_hostname("sasl.hub.example")
            .sasl_profile(profile)
            .open_with_stream(stream),
    )
    .await;
    (result, hub)
}

fn plain(username: &str, password: &str) -> SaslProfile {
    SaslProfile::Plain {
        username: username.into(),
        password: password.into(),
    }
}

fn assert_sasl_preamble(written: &[Written]) {
    assert!(is_header(written.first(), SASL), "{:?}", written.first());
    match written.get(1) {
        Some(Written::Sasl(sasl::Frame::Mechanisms(m))) => {
            let names: Vec<&str> = m
                .sasl_server_mechanisms
                .0
                .iter()
                .map(|s| s.0.as_str())
                .collect();
            assert_eq!(names, ["PLAIN", "ANONYMOUS"]);
        }
        other => panic!("mechanisms were expected, not {other:?}"),
    }
}

#[tokio::test]
async fn sasl_plain_passes_the_credentials_and_opens() {
    let (result, hub) = sasl_open(plain("device-1", "s3cret"), true).await;
    let mut connection = result.expect("the connection opens after SASL");
    let mut session = begin(&mut connection).await;
    let mut sender = attach_sender(&mut session, "s", "q").await;
    send_accepted(&mut sender, "hi").await;
    let ctx = close_and_finish(connection, hub).await;

    assert_eq!(
        ctx.seen.first(),
        Some(&Seen::SaslInit {
            mechanism: "PLAIN".into(),
            response: Some(b"\0device-1\0s3cret".to_vec()),
            hostname: Some("sasl.hub.example".into()),
        })
    );
    assert_eq!(
        ctx.seen.get(1),
        Some(&Seen::Opened {
            hostname: Some("hub.example".into())
        })
    );
    assert_sasl_preamble(&ctx.written);
    assert!(matches!(
        ctx.written.get(2),
        Some(Written::Sasl(sasl::Frame::Outcome(o))) if o.code == SaslCode::Ok
    ));
    assert!(is_header(ctx.written.get(3), AMQP));
    assert_eq!(opens(&ctx.written).len(), 1);
}

#[tokio::test]
async fn sasl_anonymous_opens_without_a_response() {
    let (result, hub) = sasl_open(SaslProfile::Anonymous, true).await;
    let connection = result.expect("the connection opens after SASL");
    let ctx = close_and_finish(connection, hub).await;
    assert!(
        matches!(
            ctx.seen.first(),
            Some(Seen::SaslInit { mechanism, response, .. })
                if mechanism == "ANONYMOUS" && response.as_deref().unwrap_or_default().is_empty()
        ),
        "{:?}",
        ctx.seen
    );
    assert!(matches!(ctx.seen.get(1), Some(Seen::Opened { .. })));
    assert_eq!(ctx.seen.last(), Some(&Seen::Closed { error: None }));
}

#[tokio::test]
async fn sasl_refused_fails_the_open() {
    for profile in [plain("device-1", "wrong"), SaslProfile::Anonymous] {
        let (result, hub) = sasl_open(profile, false).await;
        match result {
            Err(fe2o3_amqp::connection::OpenError::SaslError { code, .. }) => {
                assert_eq!(code, SaslCode::Auth)
            }
            Err(other) => panic!("a SASL error was expected, not {other:?}"),
            Ok(_) => panic!("the open should fail"),
        }
        let ctx = hub.finish().await;
        assert!(ctx.engine.is_closed());
        assert_eq!(ctx.seen.len(), 1, "{:?}", ctx.seen);
        assert!(matches!(ctx.seen[0], Seen::SaslInit { .. }));
        assert!(matches!(
            ctx.written.last(),
            Some(Written::Sasl(sasl::Frame::Outcome(o))) if o.code == SaslCode::Auth
        ));
        assert!(opens(&ctx.written).is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// 3. The hub sends; large messages both ways.

#[tokio::test]
async fn hub_sends_settled_and_unsettled_split_to_the_client_frame_size() {
    let cfg = Config {
        max_frame_size: 4096,
        ..config()
    };
    let (mut hub, stream) = Hub::start(cfg, obliging(16));

    let big_out: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let bigger_out: String = "z".repeat(1500);
    let plan: Vec<(String, bool)> = vec![
        ("first, settled".into(), true),
        ("second, unsettled".into(), false),
        (big_out.clone(), false),
        (bigger_out.clone(), true),
        ("last, unsettled".into(), false),
    ];
    let queued: Vec<(Vec<u8>, bool)> = plan
        .iter()
        .map(|(t, settled)| (text_message(t), *settled))
        .collect();
    hub.act(move |ctx| ctx.outbox.extend(queued));

    let mut connection = step(
        "open",
        Connection::builder()
            .container_id("small-frames")
            .max_frame_size(512)
            .open_with_stream(stream),
    )
    .await;
    let mut session = begin(&mut connection).await;
    let mut receiver = attach_receiver(&mut session, "receiver-1", "out").await;
    for (expected, _) in &plan {
        recv_accept(&mut receiver, expected).await;
    }
    // Every unsettled one comes back accepted.
    let mut outcomes_seen = Vec::new();
    for _ in 0..3 {
        outcomes_seen.push(hub.next_outcome().await);
    }

    // The other way: 100 kB from the client in frames of at most 4096 bytes.
    let mut sender = attach_sender(&mut session, "sender-1", "in").await;
    let big_in: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let outcome = step(
        "the large send",
        sender.send(
            Message::builder()
                .data(Binary::from(big_in.clone()))
                .build(),
        ),
    )
    .await;
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");

    let ctx = close_and_finish(connection, hub).await;
    assert!(ctx.send_errors.is_empty(), "{:?}", ctx.send_errors);

    let out_link = attach_link(&ctx.seen, "receiver-1");
    assert_eq!(ctx.sent.len(), 5);
    let got: Vec<Seen> = pick!(&ctx.sent, (_, d, false) => Seen::Outcome {
        link: out_link,
        delivery: *d,
        state: Some(accepted()),
    });
    assert_eq!(outcomes_seen, got);
    // Only the unsettled ones: no outcome for the settled.
    assert_eq!(outcomes(&ctx.seen), 3);

    // The hub's transfers: no frame over the client's 512 bytes, the large ones in several.
    let handle = hub_handle(&ctx.written, "receiver-1");
    let mut frames_per_delivery: Vec<usize> = Vec::new();
    for w in &ctx.written {
        if let Written::Amqp {
            size,
            body: FrameBody::Transfer { performative, .. },
            ..
        } = w
        {
            assert!(
                *size <= 512,
                "a frame of {size} bytes to a client reading 512"
            );
            if performative.handle.0 != handle {
                continue;
            }
            if performative.delivery_id.is_some() {
                frames_per_delivery.push(1);
            } else {
                *frames_per_delivery
                    .last_mut()
                    .expect("a continuation after a first frame") += 1;
            }
        }
    }
    assert_eq!(frames_per_delivery.len(), 5);
    assert_eq!(frames_per_delivery[0], 1);
    assert!(frames_per_delivery[2] >= 6, "{frames_per_delivery:?}");
    assert!(frames_per_delivery[3] >= 3, "{frames_per_delivery:?}");

    // The client's large message, whole.
    let in_link = attach_link(&ctx.seen, "sender-1");
    let got = transfers(&ctx.seen);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, in_link);
    assert_eq!(data(&decode(&got[0].3)), big_in);
}

#[tokio::test]
async fn hub_send_refuses_a_message_larger_than_the_client_takes() {
    let (mut hub, connection, mut session) = session_on(Hub::start_sending(vec![
        (vec![0x40; 2000], false),
        (text_message("fits"), true),
    ]))
    .await;
    let mut receiver =
        attach_receiver_with(&mut session, "small", |b| b.max_message_size(1000u64)).await;
    recv_text(&mut receiver, "fits").await;
    hub.next_credit().await;
    let ctx = close_and_finish(connection, hub).await;
    assert_eq!(ctx.send_errors.len(), 1, "{:?}", ctx.send_errors);
    assert!(ctx.send_errors[0].contains("2000"), "{:?}", ctx.send_errors);
    assert_eq!(ctx.sent.len(), 1);
}

// ---------------------------------------------------------------------------------------
// 4. Refusal.

#[tokio::test]
async fn refused_attach_reaches_the_client_with_the_condition() {
    let (hub, connection, mut session) =
        session_on(Hub::start(config(), |ctx: &mut Ctx, event| match event {
            Event::Attach(request) if request.address.starts_with("forbidden") => {
                let why = error(
                    AmqpError::UnauthorizedAccess,
                    "no access to forbidden things",
                );
                ctx.engine.refuse(*request, why)
            }
            other => obliging(4)(ctx, other),
        }))
        .await;
    let says = ["UnauthorizedAccess", "no access"];

    // A sender: attached, then detached at once with the hub's error.
    assert_sender_refused(
        &mut session,
        ("s-forbidden", "forbidden/q"),
        AmqpError::UnauthorizedAccess.into(),
        "no access to forbidden things",
        &says,
    )
    .await;
    // A receiver likewise.
    match within(
        "attach",
        Receiver::attach(&mut session, "r-forbidden", "forbidden/out"),
    )
    .await
    {
        Ok(mut receiver) => {
            let e = within("recv", receiver.recv::<Body<Value>>())
                .await
                .expect_err("no message on a refused link");
            assert_debug_says(&e, &says);
        }
        Err(e) => assert_debug_says(&e, &says),
    }
    // The session goes on.
    let _s_ok = sender_that_sends(&mut session, "s-ok").await;
    let ctx = close_and_finish(connection, hub).await;

    // The refused links end without a Detached event (the hub ended them).
    for name in ["s-forbidden", "r-forbidden"] {
        let link = attach_link(&ctx.seen, name);
        assert!(
            !detached_links(&ctx.seen).contains(&link),
            "{name}: {:?}",
            ctx.seen
        );
    }
    let refused = pick!(detaches(&ctx.written), d if d.error.is_some() => d);
    assert_eq!(refused.len(), 2);
    for d in refused {
        assert!(d.closed);
        assert_error(
            d.error.as_ref(),
            AmqpError::UnauthorizedAccess.into(),
            "no access",
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. Limits.

#[tokio::test]
async fn links_beyond_max_links_are_refused_with_resource_limit_exceeded() {
    let (hub, connection, mut session) = open_session(Config {
        max_links: 2,
        ..config()
    })
    .await;
    let mut s1 = attach_sender(&mut session, "s1", "q").await;
    let mut s2 = attach_sender(&mut session, "s2", "q").await;
    assert_sender_refused(
        &mut session,
        ("s3", "q"),
        AmqpError::ResourceLimitExceeded.into(),
        "2 links",
        &["ResourceLimitExceeded"],
    )
    .await;
    // The two work; once one is gone another may come.
    for s in [&mut s1, &mut s2] {
        send_accepted(s, "x").await;
    }
    step("close s1", s1.close()).await;
    let mut s4 = attach_sender(&mut session, "s4", "q").await;
    send_accepted(&mut s4, "y").await;
    let ctx = close_and_finish(connection, hub).await;

    let attached = pick!(&ctx.seen, Seen::Attach { name, .. } => name.as_str());
    assert_eq!(attached, ["s1", "s2", "s4"], "s3 never reaches the hub");
    assert_eq!(begins(&ctx.written)[0].1.handle_max, Handle(1));
}

#[tokio::test]
async fn sessions_beyond_max_sessions_are_ended_with_resource_limit_exceeded() {
    // Raw frames: fe2o3's client keeps to the channel-max the hub announces (checked below).
    let mut raw = Raw::opened(Config {
        max_sessions: 2,
        ..config()
    });
    let out = raw.output();
    assert_eq!(opens(&out)[0].channel_max, ChannelMax(1));
    for channel in 0..3 {
        raw.feed(&begin_frame(channel));
    }
    let out = raw.output();
    let begun = pick!(begins(&out), (c, b) => (c, b.remote_channel));
    assert_eq!(begun, [(0, Some(0)), (1, Some(1)), (2, Some(2))]);
    let e = ends(&out);
    assert_eq!(e.len(), 1, "{out:?}");
    assert_eq!(e[0].0, 2);
    assert_error(
        e[0].1.error.as_ref(),
        AmqpError::ResourceLimitExceeded.into(),
        "2 sessions",
    );
    // The client's answer frees the place without another end; an attach on the ended
    // session never reaches the hub.
    let events = raw.feed(&attach_frame(2, 0, "late", Role::Sender, "q"));
    assert!(events.is_empty(), "{events:?}");
    let events = raw.feed(&end_frame(2));
    assert!(events.is_empty(), "{events:?}");
    assert!(ends(&raw.output()).is_empty());
    // One of the two live sessions ends: a new one may begin.
    raw.feed(&end_frame(1));
    let out = raw.output();
    assert_eq!(ends(&out).len(), 1, "the client's end is answered");
    raw.feed(&begin_frame(5));
    let out = raw.output();
    assert!(ends(&out).is_empty(), "{out:?}");
    assert!(
        begins(&out)
            .iter()
            .any(|(_, b)| b.remote_channel == Some(5))
    );
    assert!(raw.engine.is_open());
}

#[tokio::test]
async fn client_keeps_to_the_announced_channel_max() {
    let (hub, mut connection, _s1) = open_session(Config {
        max_sessions: 2,
        ..config()
    })
    .await;
    let _s2 = begin(&mut connection).await;
    let third = within("third begin", Session::begin(&mut connection)).await;
    assert!(
        matches!(
            third,
            Err(fe2o3_amqp::session::BeginError::LocalChannelMaxReached)
        ),
        "{third:?}"
    );
    close_and_finish(connection, hub).await;
}

// ---------------------------------------------------------------------------------------
// 6. Message size.

#[tokio::test]
async fn message_larger_than_max_message_size_detaches_the_link() {
    let cfg = Config {
        max_message_size: 1000,
        ..config()
    };
    // In one frame.
    let (mut raw, link) = Raw::with_link(cfg.clone(), "big", 10);
    let out = raw.output();
    assert!(
        bodies(&out)
            .any(|(_, b)| matches!(b, FrameBody::Attach(a) if a.max_message_size == Some(1000)))
    );
    let events = raw.feed(&transfer_frame(0, 0, Some(0), false, false, &[7; 1001]));
    assert!(events.is_empty(), "{events:?}");
    assert_one_detach(
        &raw.output(),
        LinkError::MessageSizeExceeded.into(),
        "1000 bytes",
    );
    // The client's answering detach raises nothing.
    let events = raw.feed(&frame(0, &detach(0, None), &[]));
    assert!(events.is_empty(), "{events:?}");
    assert!(raw.engine.is_open());
    assert_eq!(raw.engine.credit(link), 0);

    // Over several frames, each small: the sum counts.
    let (mut raw, _) = Raw::with_link(cfg, "big", 10);
    raw.output();
    let mut events = raw.feed(&transfer_frame(0, 0, Some(0), false, true, &[1; 400]));
    events.extend(raw.feed(&transfer_frame(0, 0, None, false, true, &[2; 400])));
    assert!(events.is_empty(), "{events:?}");
    assert!(detaches(&raw.output()).is_empty());
    let events = raw.feed(&transfer_frame(0, 0, None, false, false, &[3; 400]));
    assert!(events.is_empty(), "{events:?}");
    assert_one_detach(&raw.output(), LinkError::MessageSizeExceeded.into(), "1000");
}

#[tokio::test]
async fn client_learns_the_max_message_size_from_the_attach() {
    let (hub, connection, mut session) = open_session(Config {
        max_message_size: 1000,
        ..config()
    })
    .await;
    let mut sender = attach_sender(&mut session, "s", "q").await;
    assert_eq!(sender.max_message_size(), Some(1000));
    let too_big = Message::builder()
        .data(Binary::from(vec![0u8; 2000]))
        .build();
    let result = within("send", sender.send(too_big)).await;
    assert!(
        matches!(
            result,
            Err(fe2o3_amqp::link::SendError::MessageSizeExceeded(_))
        ),
        "{result:?}"
    );
    let ctx = close_and_finish(connection, hub).await;
    assert!(transfers(&ctx.seen).is_empty());
}

// ---------------------------------------------------------------------------------------
// 7. Detach, end and close, either side.

#[tokio::test]
async fn client_detach_and_close_are_raised_and_answered() {
    let (mut hub, connection, mut session) = open_session(config()).await;
    let sender = attach_sender(&mut session, "plain", "q").await;
    let with_error = attach_sender(&mut session, "with-error", "q").await;
    let _receiver = attach_receiver(&mut session, "left-open", "out").await;

    step("close", sender.close()).await;
    let (link, error) = hub.next_detached().await;
    assert!(error.is_none());

    let why = definitions::Error::new(AmqpError::InternalError, "client trouble".to_string(), None);
    step("close with error", with_error.close_with_error(why.clone())).await;
    let (link2, error2) = hub.next_detached().await;
    assert_eq!(error2, Some(why));

    // The connection closes with the receiver still attached: it ends with it.
    let ctx = close_and_finish(connection, hub).await;
    assert_eq!(link, attach_link(&ctx.seen, "plain"));
    assert_eq!(link2, attach_link(&ctx.seen, "with-error"));
    let left_open = attach_link(&ctx.seen, "left-open");
    let tail: Vec<&Seen> = ctx.seen.iter().rev().take(2).rev().collect();
    assert_eq!(
        tail,
        [
            &Seen::Detached {
                link: left_open,
                error: None
            },
            &Seen::Closed { error: None }
        ]
    );
    assert!(ctx.engine.is_closed());
    assert!(!ctx.engine.is_open());
    // The answers: a detach for each client detach, a close for the close.
    let answered: Vec<bool> = detaches(&ctx.written).iter().map(|d| d.closed).collect();
    assert_eq!(answered, [true, true]);
    assert!(detaches(&ctx.written).iter().all(|d| d.error.is_none()));
    let c = closes(&ctx.written);
    assert_eq!(c.len(), 1);
    assert!(c[0].error.is_none());
}

#[tokio::test]
async fn client_close_with_error_is_raised() {
    let (hub, stream) = Hub::start(config(), obliging(4));
    let mut connection = connect(stream).await;
    let why = definitions::Error::new(AmqpError::NotImplemented, "going away".to_string(), None);
    let _ = within("close", connection.close_with_error(why.clone())).await;
    let ctx = hub.finish().await;
    assert_eq!(ctx.seen.last(), Some(&Seen::Closed { error: Some(why) }));
    assert!(ctx.engine.is_closed());
}

#[tokio::test]
async fn hub_close_with_error_reaches_the_client() {
    let (mut hub, mut connection, mut session) = open_session(config()).await;
    let _sender = attach_sender(&mut session, "s", "q").await;
    hub.next_attach().await;
    hub.act(|ctx| {
        ctx.engine.close(Some(error(
            AmqpError::UnauthorizedAccess,
            "the device was disabled",
        )));
        assert!(!ctx.engine.is_open());
        assert!(!ctx.engine.is_closed(), "the client's close is awaited");
    });
    let result = within("on close", connection.on_close()).await;
    match result {
        Err(fe2o3_amqp::connection::Error::RemoteClosedWithError(e)) => assert_error(
            Some(&e),
            AmqpError::UnauthorizedAccess.into(),
            "the device was disabled",
        ),
        other => panic!("the hub's error was expected, not {other:?}"),
    }
    let ctx = hub.finish().await;
    assert!(ctx.engine.is_closed());
    // Closed by the hub: neither Closed nor Detached is raised.
    assert!(
        !ctx.seen
            .iter()
            .any(|s| matches!(s, Seen::Closed { .. } | Seen::Detached { .. })),
        "{:?}",
        ctx.seen
    );
    assert_eq!(closes(&ctx.written).len(), 1);
}

#[tokio::test]
async fn end_all_ends_every_session_with_the_error_and_new_sessions_still_work() {
    let (mut hub, mut connection, mut session1) = open_session(config()).await;
    let mut session2 = begin(&mut connection).await;
    let mut sender1 = attach_sender(&mut session1, "s1", "q").await;
    let _receiver2 = attach_receiver(&mut session2, "r2", "out").await;
    hub.wait_for(
        "attach",
        |s| matches!(s, Seen::Attach { name, .. } if name == "r2"),
    )
    .await;
    hub.act(|ctx| {
        ctx.engine.end_all(error(
            AmqpError::ResourceLimitExceeded,
            "the hub is shedding load",
        ))
    });
    for session in [&mut session1, &mut session2] {
        match within("on end", session.on_end()).await {
            Err(fe2o3_amqp::session::Error::RemoteEndedWithError(e)) => assert_error(
                Some(&e),
                AmqpError::ResourceLimitExceeded.into(),
                "shedding load",
            ),
            other => panic!("the hub's error was expected, not {other:?}"),
        }
    }
    let result = within(
        "send",
        sender1.send(Message::builder().value("late").build()),
    )
    .await;
    assert!(result.is_err(), "{result:?}");

    // The connection is still open: a new session and link work.
    let mut session3 = begin(&mut connection).await;
    let _s3 = sender_that_sends(&mut session3, "s3").await;
    let ctx = close_and_finish(connection, hub).await;

    let with_error = pick!(ends(&ctx.written), (c, e) if e.error.is_some() => c);
    assert_eq!(with_error, [0, 1]);
    // The links of the ended sessions end without events; s3 ends with the close.
    let s3 = attach_link(&ctx.seen, "s3");
    assert_eq!(detached_links(&ctx.seen), [s3]);
    assert!(transfers(&ctx.seen).iter().all(|t| t.0 == s3));
}

#[tokio::test]
async fn hub_detach_ends_the_link_and_the_session_goes_on() {
    let (mut hub, connection, mut session) = open_session(config()).await;
    let mut sender = attach_sender(&mut session, "s", "q").await;
    let link = hub.next_attach().await;
    hub.act(move |ctx| {
        ctx.engine.detach(
            link,
            Some(error(LinkError::Stolen, "another connection took the link")),
        )
    });
    assert_detached_by_hub(&mut sender, LinkError::Stolen.into(), "another connection").await;
    // The same name attaches again.
    let _again = sender_that_sends(&mut session, "s").await;
    let ctx = close_and_finish(connection, hub).await;
    assert!(!detached_links(&ctx.seen).contains(&link));
}

// ---------------------------------------------------------------------------------------
// 8. Malformed input (raw bytes).

#[test]
fn garbage_instead_of_a_header_fails() {
    let mut raw = Raw::new(config());
    assert_failed(&raw.feed(b"GET / HTTP/1.1\r\n"), "protocol header");
    assert!(raw.engine.is_closed());
    let out = raw.output();
    // The header the hub speaks, then nothing.
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(is_header(out.first(), SASL));
    // Nothing more is read.
    assert!(raw.feed(AMQP).is_empty());
    assert!(raw.output().is_empty());
}

#[test]
fn a_second_sasl_header_after_sasl_fails() {
    let mut raw = Raw::new(config());
    raw.feed(SASL);
    let events = raw.feed(&sasl_init("ANONYMOUS", None));
    assert!(matches!(events.as_slice(), [Event::SaslInit { .. }]));
    raw.engine.sasl_outcome(true);
    assert_failed(&raw.feed(SASL), "");
    assert!(raw.engine.is_closed());
}

#[test]
fn a_sasl_frame_other_than_init_fails() {
    let mut raw = Raw::new(config());
    raw.feed(SASL);
    let mut body = BytesMut::new();
    (sasl::FrameCodec {})
        .encode(
            sasl::Frame::Outcome(fe2o3_amqp::types::sasl::SaslOutcome {
                code: SaslCode::Ok,
                additional_data: None,
            }),
            &mut body,
        )
        .expect("encode");
    assert_failed(&raw.feed(&sized(&body)), "");
    assert!(raw.engine.is_closed());
}

#[test]
fn a_frame_smaller_than_its_header_fails_with_a_close() {
    let mut raw = Raw::new(config());
    raw.feed(AMQP);
    let out = raw.fails_with_close(
        &[0, 0, 0, 4, 2, 0, 0, 0],
        ConnectionError::FramingError.into(),
        "4 bytes",
    );
    // Before the open: an open first, then the close (AMQP 2.4.5).
    assert_eq!(opens(&out).len(), 1);
}

#[test]
fn a_frame_larger_than_max_frame_size_fails_with_a_close() {
    let mut raw = Raw::opened(Config {
        max_frame_size: 4096,
        ..config()
    });
    raw.output();
    // Only the size is needed to refuse it.
    let out = raw.fails_with_close(
        &[0, 0, 0x10, 0x01, 2, 0, 0, 0],
        ConnectionError::FramingError.into(),
        "4097",
    );
    assert!(opens(&out).is_empty(), "the open was sent already");
}

#[test]
fn before_the_open_frames_up_to_512_bytes_are_read_whatever_the_limit() {
    let mut raw = Raw::new(Config {
        max_frame_size: 256,
        ..config()
    });
    raw.feed(AMQP);
    // An open padded with properties past the hub's own limit, within AMQP's floor.
    let mut props = fe2o3_amqp::types::primitives::OrderedMap::new();
    props.insert(Symbol::from("pad"), Value::String("x".repeat(300)));
    let mut open = open_performative(None, 512);
    open.properties = Some(props);
    let padded_open = frame(0, &open, &[]);
    assert!(padded_open.len() > 256 && padded_open.len() <= 512);
    let events = raw.feed(&padded_open);
    assert!(
        matches!(events.as_slice(), [Event::Opened { .. }]),
        "{events:?}"
    );
    assert!(raw.engine.is_open());
}

#[test]
fn a_frame_that_does_not_decode_fails_with_decode_error() {
    let mut raw = Raw::opened(config());
    raw.output();
    raw.fails_with_close(
        &[0, 0, 0, 12, 2, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef],
        AmqpError::DecodeError.into(),
        "does not decode",
    );
}

#[test]
fn a_sasl_frame_where_amqp_frames_are_expected_fails() {
    let mut raw = Raw::opened(config());
    raw.output();
    raw.fails_with_close(
        &[0, 0, 0, 8, 2, 1, 0, 0],
        ConnectionError::FramingError.into(),
        "type 1",
    );
}

#[test]
fn frames_out_of_place_fail() {
    // A begin before the open.
    let mut raw = Raw::new(config());
    raw.feed(AMQP);
    raw.fails_with_close(
        &begin_frame(0),
        AmqpError::IllegalState.into(),
        "before the open",
    );

    // A second open.
    let mut raw = Raw::opened(config());
    assert_failed(&raw.feed(&open_frame(None, 4096)), "second open");

    // An attach on a channel with no session.
    Raw::opened(config()).fails_with_close(
        &attach_frame(3, 0, "x", Role::Sender, "q"),
        ConnectionError::FramingError.into(),
        "channel 3",
    );

    // A second begin on a channel.
    let mut raw = Raw::with_session(config());
    assert_failed(&raw.feed(&begin_frame(0)), "");

    // A handle attached twice.
    let (mut raw, _) = Raw::with_link(config(), "a", 4);
    raw.fails_with_close(
        &attach_frame(0, 0, "b", Role::Sender, "q"),
        SessionError::HandleInUse.into(),
        "handle 0",
    );

    // A transfer on a handle never attached.
    Raw::with_session(config()).fails_with_close(
        &transfer_frame(0, 7, Some(0), true, false, b"x"),
        SessionError::UnattachedHandle.into(),
        "handle 7",
    );
}

#[test]
fn input_a_byte_at_a_time_is_read_the_same() {
    let mut raw = Raw::new(config());
    let mut all = Vec::new();
    all.extend_from_slice(AMQP);
    all.extend(open_frame(None, 4096));
    all.extend(begin_frame(0));
    all.extend(attach_frame(0, 0, "s", Role::Sender, "q"));
    let mut events = raw.feed_bytewise(&all);
    assert!(
        matches!(events.as_slice(), [Event::Opened { .. }, Event::Attach(a)] if a.address == "q" && a.client_sends),
        "{events:?}"
    );
    let Some(Event::Attach(request)) = events.pop() else {
        unreachable!()
    };
    raw.engine.accept(&request, 2);
    raw.output();
    let message = text_message("one byte at a time");
    let events = raw.feed_bytewise(&transfer_frame(0, 0, Some(0), false, false, &message));
    assert!(
        matches!(events.as_slice(), [Event::Transfer { payload, settled: false, delivery: 0, .. }] if payload[..] == message[..]),
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Flow control edge cases (raw).

#[test]
fn a_transfer_beyond_credit_detaches_with_transfer_limit_exceeded() {
    let (mut raw, _) = Raw::with_link(config(), "s", 2);
    let out = raw.output();
    let flows = link_flows(&out, 0);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].link_credit, Some(2));
    // Two unsettled transfers fill the window; the hub settles none.
    let mut events = raw.feed(&transfer_frame(0, 0, Some(0), false, false, b"a"));
    events.extend(raw.feed(&transfer_frame(0, 0, Some(1), false, false, b"b")));
    assert_eq!(events.len(), 2);
    // No new credit while both are unsettled.
    assert!(link_flows(&raw.output(), 0).is_empty());
    let events = raw.feed(&transfer_frame(0, 0, Some(2), false, false, b"c"));
    assert!(events.is_empty(), "{events:?}");
    assert_one_detach(
        &raw.output(),
        LinkError::TransferLimitExceeded.into(),
        "credit",
    );
}

#[test]
fn settling_gives_the_credit_back_in_one_flow_and_merges_dispositions() {
    let (mut raw, link) = Raw::with_link(config(), "s", 4);
    raw.output();
    let mut ids = Vec::new();
    for id in 0..4 {
        let events = raw.feed(&transfer_frame(0, 0, Some(id), false, false, b"x"));
        let [Event::Transfer { delivery, .. }] = events.as_slice() else {
            panic!("{events:?}")
        };
        ids.push(*delivery);
    }
    assert_eq!(ids, [0, 1, 2, 3]);
    raw.engine.settle(link, 0, accepted());
    raw.engine.settle(link, 1, accepted());
    raw.engine
        .settle(link, 2, DeliveryState::Released(Released {}));
    raw.engine.settle(link, 3, accepted());
    let out = raw.output();
    let ranges = pick!(bodies(&out), (_, FrameBody::Disposition(d)) => (
        d.first,
        d.last,
        matches!(d.state, Some(DeliveryState::Accepted(_))),
    ));
    assert_eq!(
        ranges,
        [(0, Some(1), true), (2, None, false), (3, None, true)]
    );
    let flows = link_flows(&out, 0);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].delivery_count, Some(4));
    assert_eq!(flows[0].link_credit, Some(4));
    // The session's window: the hub has seen transfers 0..4.
    assert_eq!(flows[0].next_incoming_id, Some(4));
}

#[test]
fn an_aborted_delivery_is_dropped_and_frees_its_credit() {
    let (mut raw, _) = Raw::with_link(config(), "s", 1);
    raw.output();
    let events = raw.feed(&transfer_frame(0, 0, Some(0), false, true, b"part"));
    assert!(events.is_empty());
    let mut aborted = transfer_performative(0, None, false, false);
    aborted.aborted = true;
    let events = raw.feed(&frame(0, &aborted, &[]));
    assert!(events.is_empty(), "{events:?}");
    let flows_out = raw.output();
    let flows = link_flows(&flows_out, 0);
    assert_eq!(
        flows.len(),
        1,
        "the aborted delivery's credit is given back"
    );
    assert_eq!(flows[0].link_credit, Some(1));
    let events = raw.feed(&transfer_frame(0, 0, Some(1), true, false, b"next"));
    assert!(
        matches!(events.as_slice(), [Event::Transfer { delivery: 1, settled: true, payload, .. }] if &payload[..] == b"next"),
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 9. Idle timeouts and heartbeats.

#[test]
fn the_hub_idle_timeout_fails_a_silent_client() {
    let mut raw = Raw::opened(Config {
        idle_timeout_ms: 1000,
        ..config()
    });
    let out = raw.output();
    assert_eq!(opens(&out)[0].idle_time_out, Some(1000));
    // Closed at twice the announced timeout (AMQP 2.4.5: the announced value is half the
    // actual threshold).
    assert_eq!(raw.engine.deadline(), Some(2000));
    // Anything read counts, a heartbeat too.
    raw.now = 600;
    assert!(raw.feed(&[0, 0, 0, 8, 2, 0, 0, 0]).is_empty());
    assert_eq!(raw.engine.deadline(), Some(2600));
    raw.engine.tick(1600);
    raw.engine.tick(2599);
    assert!(raw.engine.next_event().is_none());
    assert!(raw.engine.is_open());
    raw.engine.tick(2600);
    assert!(matches!(raw.engine.next_event(), Some(Event::Failed(why)) if why.contains("2 s")));
    assert!(raw.engine.is_closed());
    raw.now = 2600;
    assert_one_close(
        &raw.output(),
        AmqpError::ResourceLimitExceeded.into(),
        "nothing received",
    );
    assert_eq!(raw.engine.deadline(), None);
}

#[test]
fn the_client_idle_timeout_gets_heartbeats_at_half() {
    let mut raw = Raw::new(config());
    raw.feed(AMQP);
    raw.feed(&open_frame(Some(400), 4096));
    assert_eq!(
        raw.engine.deadline(),
        Some(200),
        "half of 400 after the last write (at 0)"
    );
    raw.now = 10;
    let out = raw.output();
    assert_eq!(opens(&out).len(), 1);
    assert_eq!(
        opens(&out)[0].idle_time_out,
        None,
        "the hub has no timeout of its own"
    );
    assert_eq!(raw.engine.deadline(), Some(210));
    raw.engine.tick(209);
    assert!(raw.engine.take_output(209).is_none());
    raw.engine.tick(210);
    let beat = raw.engine.take_output(210).expect("a heartbeat");
    assert_eq!(&beat[..], &[0, 0, 0, 8, 2, 0, 0, 0]);
    assert_eq!(raw.engine.deadline(), Some(410));
    // Other output counts as much as a heartbeat.
    raw.now = 300;
    raw.feed(&begin_frame(0));
    raw.output();
    assert_eq!(raw.engine.deadline(), Some(500));
    assert!(raw.engine.is_open());
}

#[tokio::test]
async fn a_client_with_an_idle_timeout_stays_connected_through_silence() {
    let (hub, stream) = Hub::start(config(), obliging(4));
    let connection = step(
        "open",
        Connection::builder()
            .container_id("idle-client")
            .idle_time_out(200u32)
            .open_with_stream(stream),
    )
    .await;
    // Five of the client's timeouts with nothing to say.
    let ctx = alive_after(Duration::from_millis(1000), connection, hub).await;
    let beats = heartbeats(&ctx.written);
    assert!(beats >= 4, "only {beats} heartbeats in a second of silence");
}

#[tokio::test]
async fn a_client_heartbeating_at_the_hub_idle_timeout_is_not_closed() {
    let (hub, stream) = Hub::start(
        Config {
            idle_timeout_ms: 300,
            ..config()
        },
        obliging(4),
    );
    let connection = connect(stream).await;
    let ctx = alive_after(Duration::from_millis(1200), connection, hub).await;
    assert!(
        !ctx.seen.iter().any(|s| matches!(s, Seen::Failed(_))),
        "{:?}",
        ctx.seen
    );
}

// ---------------------------------------------------------------------------------------
// 10. Drain.

#[tokio::test]
async fn a_draining_receiver_gets_its_credit_back_when_the_hub_has_nothing() {
    let outbox = (0..3)
        .map(|i| (text_message(&format!("d{i}")), false))
        .collect();
    let (mut hub, connection, mut session) = session_on(Hub::start_sending(outbox)).await;
    let mut receiver = attach_receiver_with(&mut session, "drainer", |b| {
        b.credit_mode(CreditMode::Manual)
    })
    .await;
    step("credit", receiver.set_credit(10)).await;
    for i in 0..3 {
        recv_accept(&mut receiver, &format!("d{i}")).await;
    }
    let link = hub.next_credit().await;
    // Drain: nothing more to send, so the seven credits left come back at once.
    step("drain", receiver.drain()).await;
    hub.next_credit().await;
    // The credit is read after the loop wrote the answer (the flush gave it back).
    let credit_after = hub.ask("credit", move |ctx| ctx.engine.credit(link)).await;
    assert_eq!(credit_after, 0);

    // New credit after the drain works as before.
    hub.act(|ctx| ctx.outbox.push_back((text_message("after"), true)));
    step("credit", receiver.set_credit(2)).await;
    recv_text(&mut receiver, "after").await;

    let ctx = close_and_finish(connection, hub).await;
    let handle = hub_handle(&ctx.written, "drainer");
    let drained = pick!(link_flows(&ctx.written, handle), f if f.drain => f);
    assert_eq!(drained.len(), 1, "one drain answer");
    assert_eq!(drained[0].link_credit, Some(0));
    assert_eq!(drained[0].delivery_count, Some(10), "3 sent + 7 given back");
    assert_eq!(drained[0].available, Some(0));
    assert_eq!(ctx.sent.len(), 4);
}

// ---------------------------------------------------------------------------------------
// Hand-made frames.

const AMQP: &[u8] = b"AMQP\x00\x01\x00\x00";
const SASL: &[u8] = b"AMQP\x03\x01\x00\x00";

struct Raw {
    engine: Engine,
    input: BytesMut,
    now: i64,
}

impl Raw {
    fn new(config: Config) -> Self {
        Self {
            engine: Engine::new(config, 0),
            input: BytesMut::new(),
            now: 0,
        }
    }

    /// Past the header and the open (the output is left to read).
    fn opened(config: Config) -> Self {
        let mut raw = Self::new(config);
        raw.open();
        raw
    }

    /// `opened`, with a session begun on channel 0.
    fn with_session(config: Config) -> Self {
        let mut raw = Self::opened(config);
        raw.feed(&begin_frame(0));
        raw
    }

    /// `with_session`, with a link `name` the client sends on (handle 0) accepted with
    /// `window`.
    fn with_link(config: Config, name: &str, window: u32) -> (Self, LinkId) {
        let mut raw = Self::with_session(config);
        let link = raw.attach_accepted(0, 0, name, window);
        (raw, link)
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.input.extend_from_slice(bytes);
        self.engine.receive(&mut self.input, self.now);
        std::iter::from_fn(|| self.engine.next_event()).collect()
    }

    /// `feed`, one byte at a time.
    fn feed_bytewise(&mut self, bytes: &[u8]) -> Vec<Event> {
        bytes
            .iter()
            .flat_map(|b| self.feed(std::slice::from_ref(b)))
            .collect()
    }

    /// Feeds `input`, which fails the connection saying `words`: closed with a close of
    /// `condition` that says them too. Gives back what was written.
    fn fails_with_close(
        &mut self,
        input: &[u8],
        condition: ErrorCondition,
        words: &str,
    ) -> Vec<Written> {
        assert_failed(&self.feed(input), words);
        assert!(self.engine.is_closed());
        let out = self.output();
        assert_one_close(&out, condition, words);
        out
    }

    fn output(&mut self) -> Vec<Written> {
        self.engine
            .take_output(self.now)
            .map(|b| parse_output(&b))
            .unwrap_or_default()
    }

    /// Header and open (the output is left to read).
    fn open(&mut self) {
        assert!(self.feed(AMQP).is_empty());
        let events = self.feed(&open_frame(None, 64 * 1024));
        assert!(
            matches!(events.as_slice(), [Event::Opened { .. }]),
            "{events:?}"
        );
    }

    /// Attaches a link, gives the hub's request for it (the only event).
    fn attach(
        &mut self,
        (channel, handle): (u16, u32),
        name: &str,
        role: Role,
        address: &str,
    ) -> Box<AttachRequest> {
        let mut events = self.feed(&attach_frame(channel, handle, name, role, address));
        let Some(Event::Attach(request)) = events.pop() else {
            panic!("an attach event: {events:?}")
        };
        assert!(events.is_empty(), "{events:?}");
        request
    }

    /// Attaches a link the client sends on and accepts it with `window`.
    fn attach_accepted(&mut self, channel: u16, handle: u32, name: &str, window: u32) -> LinkId {
        let request = self.attach((channel, handle), name, Role::Sender, "q");
        self.engine.accept(&request, window);
        request.link
    }
}

fn sized(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 4);
    f.put_u32(u32::try_from(body.len() + 4).expect("a small frame"));
    f.extend_from_slice(body);
    f
}

fn frame(channel: u16, performative: &impl Serialize, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_u8(2);
    body.put_u8(0);
    body.put_u16(channel);
    body.extend(serde_amqp::to_vec(performative).expect("a performative encodes"));
    body.extend_from_slice(payload);
    sized(&body)
}

fn sasl_init(mechanism: &str, response: Option<&[u8]>) -> Vec<u8> {
    let mut body = BytesMut::new();
    (sasl::FrameCodec {})
        .encode(
            sasl::Frame::Init(SaslInit {
                mechanism: Symbol::from(mechanism),
                initial_response: response.map(|r| Binary::from(r.to_vec())),
                hostname: None,
            }),
            &mut body,
        )
        .expect("encode");
    sized(&body)
}

fn open_performative(idle: Option<u32>, max_frame: u32) -> Open {
    Open {
        container_id: "raw-client".into(),
        hostname: Some("hub.example".into()),
        max_frame_size: MaxFrameSize(max_frame),
        channel_max: ChannelMax(255),
        idle_time_out: idle,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn open_frame(idle: Option<u32>, max_frame: u32) -> Vec<u8> {
    frame(0, &open_performative(idle, max_frame), &[])
}

fn begin_performative() -> Begin {
    Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 1000,
        outgoing_window: 1000,
        handle_max: Handle(u32::MAX),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

fn begin_frame(channel: u16) -> Vec<u8> {
    frame(channel, &begin_performative(), &[])
}

fn end_frame(channel: u16) -> Vec<u8> {
    frame(channel, &End { error: None }, &[])
}

fn attach_frame(channel: u16, handle: u32, name: &str, role: Role, address: &str) -> Vec<u8> {
    let client_sends = role == Role::Sender;
    frame(
        channel,
        &Attach {
            name: name.into(),
            handle: Handle(handle),
            role,
            snd_settle_mode: SenderSettleMode::Mixed,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(
                Source::builder()
                    .address(if client_sends { "client" } else { address })
                    .build(),
            )),
            target: Some(Box::new(TargetArchetype::Target(
                Target::builder()
                    .address(if client_sends { address } else { "client" })
                    .build(),
            ))),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: client_sends.then_some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        },
        &[],
    )
}

fn transfer_performative(
    handle: u32,
    delivery: Option<u32>,
    settled: bool,
    more: bool,
) -> Transfer {
    Transfer {
        handle: Handle(handle),
        delivery_id: delivery,
        delivery_tag: delivery.map(|d| d.to_be_bytes().to_vec().into()),
        message_format: delivery.map(|_| 0),
        settled: delivery.map(|_| settled),
        more,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}

fn transfer_frame(
    channel: u16,
    handle: u32,
    delivery: Option<u32>,
    settled: bool,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    frame(
        channel,
        &transfer_performative(handle, delivery, settled, more),
        payload,
    )
}

fn detach(handle: u32, error: Option<definitions::Error>) -> Detach {
    Detach {
        handle: Handle(handle),
        closed: true,
        error,
    }
}

fn flow_frame(
    channel: u16,
    next_incoming_id: u32,
    incoming_window: u32,
    link: Option<(u32, u32, u32, bool)>,
) -> Vec<u8> {
    frame(
        channel,
        &Flow {
            next_incoming_id: Some(next_incoming_id),
            incoming_window,
            next_outgoing_id: 0,
            outgoing_window: 1000,
            handle: link.map(|(h, _, _, _)| Handle(h)),
            delivery_count: link.map(|(_, c, _, _)| c),
            link_credit: link.map(|(_, _, k, _)| k),
            available: None,
            drain: link.is_some_and(|(_, _, _, d)| d),
            echo: false,
            properties: None,
        },
        &[],
    )
}

// ---------------------------------------------------------------------------------------
// Sessions' windows, SASL pipelining, settlement after the hub ended a session.

#[test]
fn a_stale_session_flow_never_opens_the_window_beyond_what_the_client_gave() {
    let mut raw = Raw::new(config());
    assert!(raw.feed(AMQP).is_empty());
    // The client reads frames of 512 bytes and takes 2 transfers at a time.
    raw.feed(&open_frame(None, 512));
    let mut begin = begin_performative();
    begin.incoming_window = 2;
    raw.feed(&frame(0, &begin, &[]));
    let request = raw.attach((0, 0), "r", Role::Receiver, "out");
    assert!(!request.client_sends);
    raw.engine.accept(&request, 0);
    let link = request.link;
    raw.output();
    let events = raw.feed(&flow_frame(0, 0, 2, Some((0, 0, 10, false))));
    assert!(
        matches!(events.as_slice(), [Event::Credit { .. }]),
        "{events:?}"
    );
    assert_eq!(
        raw.engine.credit(link),
        2,
        "the session window bounds the credit"
    );
    // One message in three frames.
    let id = raw
        .engine
        .send(link, Some(b"tag-1"), &[0x55; 1200], false)
        .expect("fits")
        .expect("sent");
    let out = raw.output();
    let frames = transfer_frames(&out);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].delivery_id, Some(id));
    assert_eq!(
        frames[0].delivery_tag.as_deref().map(|t| &t[..]),
        Some(&b"tag-1"[..])
    );
    assert_eq!(
        frames.iter().map(|t| t.more).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(raw.engine.credit(link), 0);
    // A flow the client wrote after the first frame: 1 + 1 - 3 leaves no room at all.
    raw.feed(&flow_frame(0, 1, 1, Some((0, 0, 10, false))));
    assert_eq!(raw.engine.credit(link), 0, "a wrapped window is no window");
    // Once it has read all three and opened its window again.
    raw.feed(&flow_frame(0, 3, 2, Some((0, 1, 9, false))));
    assert_eq!(raw.engine.credit(link), 2);
}

/// The hub ends every session, which it writes (one end).
fn end_all_sessions(raw: &mut Raw) {
    raw.engine.end_all(error(
        AmqpError::ResourceLimitExceeded,
        "shutting the device out",
    ));
    assert_eq!(ends(&raw.output()).len(), 1);
}

/// Nothing is left to write.
fn assert_silent(raw: &mut Raw, after: &str) {
    let out = raw.output();
    assert!(out.is_empty(), "written after {after}: {out:?}");
}

#[test]
fn no_disposition_follows_the_hub_end_of_a_session() {
    let (mut raw, link) = Raw::with_link(config(), "s", 4);
    let events = raw.feed(&transfer_frame(0, 0, Some(0), false, false, b"x"));
    assert!(matches!(events.as_slice(), [Event::Transfer { .. }]));
    raw.output();
    end_all_sessions(&mut raw);
    // The store answers late: the session is gone, nothing more may be written on it.
    raw.engine.settle(link, 0, accepted());
    assert_silent(&mut raw, "the end");
    // The client's end: no answer, no event; the channel begins anew.
    assert!(raw.feed(&end_frame(0)).is_empty());
    assert!(raw.output().is_empty());
    raw.feed(&begin_frame(0));
    assert!(!begins(&raw.output()).is_empty());
    assert!(raw.engine.is_open());
}

#[test]
fn the_session_window_is_renewed_at_half_without_a_link_flow() {
    // A window so large the link itself needs no new credit.
    let (mut raw, _) = Raw::with_link(config(), "s", 100_000);
    raw.output();
    let mut input = Vec::new();
    for id in 0..32_769u32 {
        input.extend(transfer_frame(0, 0, Some(id), true, false, b""));
    }
    let events = raw.feed(&input);
    assert_eq!(events.len(), 32_769);
    let out = raw.output();
    let flows = all_flows(&out);
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0].handle, None);
    assert_eq!(flows[0].next_incoming_id, Some(32_769));
    assert_eq!(flows[0].incoming_window, 1 << 16);
    assert!(raw.engine.is_open());
}

#[test]
fn a_pipelined_sasl_exchange_is_read_after_the_outcome() {
    let mut raw = Raw::new(config());
    let mut all = Vec::new();
    all.extend_from_slice(SASL);
    all.extend(sasl_init("PLAIN", Some(b"\0u\0p")));
    all.extend_from_slice(AMQP);
    all.extend(open_frame(None, 4096));
    let events = raw.feed(&all);
    assert!(
        matches!(events.as_slice(), [Event::SaslInit { mechanism, response: Some(r), .. }] if mechanism == "PLAIN" && r == b"\0u\0p"),
        "{events:?}"
    );
    // Nothing past the init is read before the hub decides.
    assert!(!raw.input.is_empty());
    raw.engine.sasl_outcome(true);
    let events = raw.feed(&[]);
    assert!(
        matches!(events.as_slice(), [Event::Opened { .. }]),
        "{events:?}"
    );
    let out = raw.output();
    let kinds: Vec<&str> = out
        .iter()
        .map(|w| match w {
            Written::Header(h) if h[4] == 3 => "sasl-header",
            Written::Header(_) => "amqp-header",
            Written::Sasl(sasl::Frame::Mechanisms(_)) => "mechanisms",
            Written::Sasl(sasl::Frame::Outcome(_)) => "outcome",
            Written::Amqp {
                body: FrameBody::Open(_),
                ..
            } => "open",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "sasl-header",
            "mechanisms",
            "outcome",
            "amqp-header",
            "open"
        ]
    );
}

#[test]
fn an_attach_answered_after_the_hub_ended_its_session_or_connection_writes_nothing() {
    // The session ended while the hub was deciding.
    let mut raw = Raw::with_session(config());
    let request = raw.attach((0, 0), "late", Role::Sender, "q");
    raw.output();
    end_all_sessions(&mut raw);
    raw.engine.accept(&request, 4);
    assert_silent(&mut raw, "the end");

    // The connection closed while the hub was deciding.
    let mut raw = Raw::with_session(config());
    let a = raw.attach((0, 0), "a", Role::Sender, "q");
    let b = raw.attach((0, 1), "b", Role::Receiver, "out");
    raw.output();
    raw.engine.close(None);
    assert_eq!(closes(&raw.output()).len(), 1);
    raw.engine.accept(&a, 4);
    raw.engine
        .refuse(*b, error(AmqpError::UnauthorizedAccess, "too late anyway"));
    assert_silent(&mut raw, "the close");
    // The client's close completes it, with no event (the hub closed first).
    assert!(raw.feed(&frame(0, &Close { error: None }, &[])).is_empty());
    assert!(raw.engine.is_closed());
    assert!(raw.output().is_empty());
}

// ---------------------------------------------------------------------------------------
// Settle modes the client chooses.

#[tokio::test]
async fn a_receiver_taking_only_settled_sends_gets_every_send_settled() {
    let (mut hub, connection, mut session) = session_on(Hub::start_sending(vec![
        (text_message("one"), false),
        (text_message("two"), false),
    ]))
    .await;
    let mut receiver = attach_receiver_with(&mut session, "settled-only", |b| {
        b.sender_settle_mode(SenderSettleMode::Settled)
    })
    .await;
    for expected in ["one", "two"] {
        recv_accept(&mut receiver, expected).await;
    }
    let link = hub.next_attach().await;
    let modes = hub
        .ask("modes", move |ctx| {
            (
                ctx.engine.settled_only(link),
                ctx.engine.may_send_settled(link),
            )
        })
        .await;
    assert_eq!(modes, (true, true));
    let ctx = close_and_finish(connection, hub).await;
    assert_eq!(outcomes(&ctx.seen), 0);
    let settled: Vec<Option<bool>> = transfer_frames(&ctx.written)
        .iter()
        .map(|t| t.settled)
        .collect();
    assert_eq!(settled, [Some(true), Some(true)]);
    let reply = bodies(&ctx.written)
        .find_map(|(_, b)| match b {
            FrameBody::Attach(a) => Some(a),
            _ => None,
        })
        .expect("the reply attach");
    assert_eq!(reply.snd_settle_mode, SenderSettleMode::Settled);
    assert_eq!(reply.role, Role::Sender);
    assert_eq!(reply.initial_delivery_count, Some(0));
}

#[tokio::test]
async fn a_receiver_settling_second_gets_the_hub_settlement() {
    let (mut hub, connection, mut session) =
        session_on(Hub::start_sending(vec![(text_message("twice"), false)])).await;
    let mut receiver = attach_receiver_with(&mut session, "second", |b| {
        b.receiver_settle_mode(ReceiverSettleMode::Second)
    })
    .await;
    recv_accept(&mut receiver, "twice").await;
    let outcome = hub.next_outcome().await;
    assert!(
        matches!(
            &outcome,
            Seen::Outcome {
                delivery: 0,
                state: Some(DeliveryState::Accepted(_)),
                ..
            }
        ),
        "{outcome:?}"
    );
    let ctx = close_and_finish(connection, hub).await;
    // The client's unsettled disposition is answered settled, by the sender.
    let answers =
        pick!(bodies(&ctx.written), (_, FrameBody::Disposition(d)) => (d.role.clone(), d.settled));
    assert_eq!(answers, [(Role::Sender, true)]);
}
