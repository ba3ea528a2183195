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
use certhub_amqp::{Config, Engine, Event, LinkId, error};
use fe2o3_amqp::frames::amqp::{FrameBody, FrameDecoder};
use fe2o3_amqp::frames::sasl;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
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

fn bodies(written: &[Written]) -> impl Iterator<Item = (u16, &FrameBody)> {
    written.iter().filter_map(|w| match w {
        Written::Amqp { channel, body, .. } => Some((*channel, body)),
        _ => None,
    })
}

fn closes(written: &[Written]) -> Vec<&Close> {
    bodies(written)
        .filter_map(|(_, b)| match b {
            FrameBody::Close(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn detaches(written: &[Written]) -> Vec<&Detach> {
    bodies(written)
        .filter_map(|(_, b)| match b {
            FrameBody::Detach(d) => Some(d),
            _ => None,
        })
        .collect()
}

fn ends(written: &[Written]) -> Vec<(u16, &End)> {
    bodies(written)
        .filter_map(|(c, b)| match b {
            FrameBody::End(e) => Some((c, e)),
            _ => None,
        })
        .collect()
}

fn link_flows(written: &[Written], handle: u32) -> Vec<&Flow> {
    bodies(written)
        .filter_map(|(_, b)| match b {
            FrameBody::Flow(f) if f.handle.as_ref().map(|h| h.0) == Some(handle) => Some(f),
            _ => None,
        })
        .collect()
}

fn opens(written: &[Written]) -> Vec<&Open> {
    bodies(written)
        .filter_map(|(_, b)| match b {
            FrameBody::Open(o) => Some(o),
            _ => None,
        })
        .collect()
}

fn heartbeats(written: &[Written]) -> usize {
    bodies(written)
        .filter(|(_, b)| matches!(b, FrameBody::Empty))
        .count()
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

    /// Runs `f` on the hub's side, between two reads.
    fn act(&self, f: impl FnOnce(&mut Ctx) + Send + 'static) {
        self.actions
            .send(Box::new(f))
            .expect("the hub loop is running");
    }

    /// Waits for the next event that `pred` matches.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        within(what, async {
            loop {
                match self.live.recv().await {
                    Some(s) if pred(&s) => return s,
                    Some(_) => {}
                    None => panic!("the hub loop ended before: {what}"),
                }
            }
        })
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

async fn connect(stream: DuplexStream) -> fe2o3_amqp::connection::ConnectionHandle<()> {
    within(
        "the client's open",
        Connection::builder()
            .container_id("test-client")
            .open_with_stream(stream),
    )
    .await
    .expect("the connection opens")
}

async fn begin(
    connection: &mut fe2o3_amqp::connection::ConnectionHandle<()>,
) -> fe2o3_amqp::session::SessionHandle<()> {
    within("begin", Session::begin(connection))
        .await
        .expect("the session begins")
}

fn transfers(seen: &[Seen]) -> Vec<(LinkId, u32, bool, Bytes)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Transfer {
                link,
                delivery,
                settled,
                payload,
            } => Some((*link, *delivery, *settled, payload.clone())),
            _ => None,
        })
        .collect()
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
// 1. Plain AMQP, a client sender, credit and settlement.

#[tokio::test]
async fn plain_header_sender_gets_credit_in_windows_and_every_send_accepted() {
    let (hub, stream) = Hub::start(config(), obliging(4));
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut sender = within("attach", Sender::attach(&mut session, "sender-1", "q"))
        .await
        .expect("the sender attaches");

    // Twenty unsettled sends in flight at once: five times the window, so the client has to
    // wait for the hub's settlements and the credit they give back.
    let mut pending = Vec::new();
    for i in 0..20 {
        let message = Message::builder().value(format!("m{i}")).build();
        let fut = within("send", sender.send_batchable(message))
            .await
            .expect("the send starts");
        pending.push(fut);
    }
    for (i, fut) in pending.into_iter().enumerate() {
        let outcome = within("outcome", fut).await.expect("an outcome");
        assert!(
            matches!(outcome, Outcome::Accepted(_)),
            "send {i}: {outcome:?}"
        );
    }

    within("sender close", sender.close())
        .await
        .expect("the sender closes");
    within("session end", session.end())
        .await
        .expect("the session ends");
    within("connection close", connection.close())
        .await
        .expect("the connection closes");
    let ctx = hub.finish().await;

    assert!(
        matches!(ctx.written.first(), Some(Written::Header(h)) if h == b"AMQP\x00\x01\x00\x00")
    );
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
    for (_, body) in bodies(&ctx.written) {
        if let FrameBody::Disposition(d) = body {
            assert_eq!(d.role, Role::Receiver);
            assert!(d.settled);
            assert_eq!(d.state, Some(accepted()));
            for id in d.first..=d.last.unwrap_or(d.first) {
                assert!(!settled[id as usize], "delivery {id} settled twice");
                settled[id as usize] = true;
            }
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
    Result<fe2o3_amqp::connection::ConnectionHandle<()>, fe2o3_amqp::connection::OpenError>,
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

fn assert_sasl_preamble(written: &[Written]) {
    assert!(
        matches!(written.first(), Some(Written::Header(h)) if h == b"AMQP\x03\x01\x00\x00"),
        "{:?}",
        written.first()
    );
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
    let (result, hub) = sasl_open(
        SaslProfile::Plain {
            username: "device-1".into(),
            password: "s3cret".into(),
        },
        true,
    )
    .await;
    let mut connection = result.expect("the connection opens after SASL");
    let mut session = begin(&mut connection).await;
    let mut sender = within("attach", Sender::attach(&mut session, "s", "q"))
        .await
        .expect("attach");
    let outcome = within("send", sender.send(Message::builder().value("hi").build()))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;

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
    assert!(matches!(ctx.written.get(3), Some(Written::Header(h)) if h == b"AMQP\x00\x01\x00\x00"));
    assert_eq!(opens(&ctx.written).len(), 1);
}

#[tokio::test]
async fn sasl_anonymous_opens_without_a_response() {
    let (result, hub) = sasl_open(SaslProfile::Anonymous, true).await;
    let mut connection = result.expect("the connection opens after SASL");
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
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
    for profile in [
        SaslProfile::Plain {
            username: "device-1".into(),
            password: "wrong".into(),
        },
        SaslProfile::Anonymous,
    ] {
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
    let mut cfg = config();
    cfg.max_frame_size = 4096;
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

    let mut connection = within(
        "open",
        Connection::builder()
            .container_id("small-frames")
            .max_frame_size(512)
            .open_with_stream(stream),
    )
    .await
    .expect("open");
    let mut session = begin(&mut connection).await;
    let mut receiver = within(
        "attach",
        Receiver::attach(&mut session, "receiver-1", "out"),
    )
    .await
    .expect("the receiver attaches");
    for (i, (expected, _)) in plan.iter().enumerate() {
        let delivery = within("recv", receiver.recv::<Body<Value>>())
            .await
            .expect("a message");
        match delivery.body() {
            Body::Value(v) => assert_eq!(&v.0, &Value::String(expected.clone()), "message {i}"),
            other => panic!("message {i}: {other:?}"),
        }
        within("accept", receiver.accept(&delivery))
            .await
            .expect("accepted");
    }
    // Every unsettled one comes back accepted.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(
            hub.wait_for("an outcome", |s| matches!(s, Seen::Outcome { .. }))
                .await,
        );
    }

    // The other way: 100 kB from the client in frames of at most 4096 bytes.
    let mut sender = within("attach", Sender::attach(&mut session, "sender-1", "in"))
        .await
        .expect("the sender attaches");
    let big_in: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let outcome = within(
        "send",
        sender.send(
            Message::builder()
                .data(Binary::from(big_in.clone()))
                .build(),
        ),
    )
    .await
    .expect("the large send");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");

    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    assert!(ctx.send_errors.is_empty(), "{:?}", ctx.send_errors);

    let out_link = attach_link(&ctx.seen, "receiver-1");
    assert_eq!(ctx.sent.len(), 5);
    let unsettled: Vec<u32> = ctx
        .sent
        .iter()
        .filter(|(_, _, settled)| !settled)
        .map(|(_, d, _)| *d)
        .collect();
    let got: Vec<Seen> = unsettled
        .iter()
        .map(|d| Seen::Outcome {
            link: out_link,
            delivery: *d,
            state: Some(accepted()),
        })
        .collect();
    assert_eq!(outcomes, got);
    // Only the unsettled ones: no outcome for the settled.
    assert_eq!(
        ctx.seen
            .iter()
            .filter(|s| matches!(s, Seen::Outcome { .. }))
            .count(),
        3
    );

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
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    hub.act(|ctx| {
        ctx.outbox.push_back((vec![0x40; 2000], false));
        ctx.outbox.push_back((text_message("fits"), true));
    });
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut receiver = within(
        "attach",
        Receiver::builder()
            .name("small")
            .source("out")
            .max_message_size(1000u64)
            .attach(&mut session),
    )
    .await
    .expect("attach");
    let delivery = within("recv", receiver.recv::<Body<Value>>())
        .await
        .expect("the message that fits");
    assert_eq!(delivery.body(), &string_body("fits"));
    hub.wait_for("credit", |s| matches!(s, Seen::Credit { .. }))
        .await;
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    assert_eq!(ctx.send_errors.len(), 1, "{:?}", ctx.send_errors);
    assert!(ctx.send_errors[0].contains("2000"), "{:?}", ctx.send_errors);
    assert_eq!(ctx.sent.len(), 1);
}

// ---------------------------------------------------------------------------------------
// 4. Refusal.

#[tokio::test]
async fn refused_attach_reaches_the_client_with_the_condition() {
    let (hub, stream) = Hub::start(config(), |ctx: &mut Ctx, event| match event {
        Event::Attach(request) if request.address.starts_with("forbidden") => {
            let why = error(
                AmqpError::UnauthorizedAccess,
                "no access to forbidden things",
            );
            ctx.engine.refuse(*request, why)
        }
        other => obliging(4)(ctx, other),
    });
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;

    // A sender: attached, then detached at once with the hub's error.
    match within(
        "attach",
        Sender::attach(&mut session, "s-forbidden", "forbidden/q"),
    )
    .await
    {
        Ok(mut sender) => {
            let e = within("detach", sender.on_detach()).await;
            match e {
                fe2o3_amqp::link::DetachError::RemoteClosedWithError(e) => assert_error(
                    Some(&e),
                    AmqpError::UnauthorizedAccess.into(),
                    "no access to forbidden things",
                ),
                other => panic!("the hub's error was expected, not {other:?}"),
            }
        }
        Err(e) => {
            let s = format!("{e:?}");
            assert!(
                s.contains("UnauthorizedAccess") && s.contains("no access"),
                "{s}"
            );
        }
    }
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
            let s = format!("{e:?}");
            assert!(
                s.contains("UnauthorizedAccess") && s.contains("no access"),
                "{s}"
            );
        }
        Err(e) => {
            let s = format!("{e:?}");
            assert!(
                s.contains("UnauthorizedAccess") && s.contains("no access"),
                "{s}"
            );
        }
    }
    // The session goes on.
    let mut sender = within("attach", Sender::attach(&mut session, "s-ok", "q"))
        .await
        .expect("attach");
    let outcome = within("send", sender.send(Message::builder().value("x").build()))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)));
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;

    // The refused links end without a Detached event (the hub ended them).
    for name in ["s-forbidden", "r-forbidden"] {
        let link = attach_link(&ctx.seen, name);
        assert!(
            !ctx.seen
                .iter()
                .any(|s| matches!(s, Seen::Detached { link: l, .. } if *l == link)),
            "{name}: {:?}",
            ctx.seen
        );
    }
    let refused: Vec<&Detach> = detaches(&ctx.written)
        .into_iter()
        .filter(|d| d.error.is_some())
        .collect();
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
    let mut cfg = config();
    cfg.max_links = 2;
    let (hub, stream) = Hub::start(cfg, obliging(4));
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut s1 = within("attach 1", Sender::attach(&mut session, "s1", "q"))
        .await
        .expect("the first link");
    let mut s2 = within("attach 2", Sender::attach(&mut session, "s2", "q"))
        .await
        .expect("the second link");
    match within("attach 3", Sender::attach(&mut session, "s3", "q")).await {
        Ok(mut s3) => match within("detach", s3.on_detach()).await {
            fe2o3_amqp::link::DetachError::RemoteClosedWithError(e) => {
                assert_error(Some(&e), AmqpError::ResourceLimitExceeded.into(), "2 links")
            }
            other => panic!("resource-limit-exceeded was expected, not {other:?}"),
        },
        Err(e) => {
            let s = format!("{e:?}");
            assert!(s.contains("ResourceLimitExceeded"), "{s}");
        }
    }
    // The two work; once one is gone another may come.
    for s in [&mut s1, &mut s2] {
        let outcome = within("send", s.send(Message::builder().value("x").build()))
            .await
            .expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)));
    }
    within("close s1", s1.close()).await.expect("s1 closes");
    let mut s4 = within("attach 4", Sender::attach(&mut session, "s4", "q"))
        .await
        .expect("a link in the freed place");
    let outcome = within("send", s4.send(Message::builder().value("y").build()))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)));
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;

    let attached: Vec<&str> = ctx
        .seen
        .iter()
        .filter_map(|s| match s {
            Seen::Attach { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(attached, ["s1", "s2", "s4"], "s3 never reaches the hub");
    let begins: Vec<&Begin> = bodies(&ctx.written)
        .filter_map(|(_, b)| match b {
            FrameBody::Begin(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(begins[0].handle_max, Handle(1));
}

#[tokio::test]
async fn sessions_beyond_max_sessions_are_ended_with_resource_limit_exceeded() {
    // Raw frames: fe2o3's client keeps to the channel-max the hub announces (checked below).
    let mut cfg = config();
    cfg.max_sessions = 2;
    let mut raw = Raw::new(cfg);
    raw.open();
    let out = raw.output();
    assert_eq!(opens(&out)[0].channel_max, ChannelMax(1));
    for channel in 0..3 {
        raw.feed(&begin_frame(channel));
    }
    let out = raw.output();
    let begun: Vec<(u16, Option<u16>)> = bodies(&out)
        .filter_map(|(c, b)| match b {
            FrameBody::Begin(b) => Some((c, b.remote_channel)),
            _ => None,
        })
        .collect();
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
    let events = raw.feed(&frame(2, &End { error: None }, &[]));
    assert!(events.is_empty(), "{events:?}");
    assert!(ends(&raw.output()).is_empty());
    // One of the two live sessions ends: a new one may begin.
    raw.feed(&frame(1, &End { error: None }, &[]));
    let out = raw.output();
    assert_eq!(ends(&out).len(), 1, "the client's end is answered");
    raw.feed(&begin_frame(5));
    let out = raw.output();
    assert!(ends(&out).is_empty(), "{out:?}");
    assert!(
        bodies(&out).any(|(_, b)| matches!(b, FrameBody::Begin(b) if b.remote_channel == Some(5)))
    );
    assert!(raw.engine.is_open());
}

#[tokio::test]
async fn client_keeps_to_the_announced_channel_max() {
    let mut cfg = config();
    cfg.max_sessions = 2;
    let (hub, stream) = Hub::start(cfg, obliging(4));
    let mut connection = connect(stream).await;
    let _s1 = begin(&mut connection).await;
    let _s2 = begin(&mut connection).await;
    let third = within("third begin", Session::begin(&mut connection)).await;
    assert!(
        matches!(
            third,
            Err(fe2o3_amqp::session::BeginError::LocalChannelMaxReached)
        ),
        "{third:?}"
    );
    within("close", connection.close()).await.expect("close");
    hub.finish().await;
}

// ---------------------------------------------------------------------------------------
// 6. Message size.

#[tokio::test]
async fn message_larger_than_max_message_size_detaches_the_link() {
    let mut cfg = config();
    cfg.max_message_size = 1000;
    // In one frame.
    let mut raw = Raw::new(cfg.clone());
    raw.open();
    raw.feed(&begin_frame(0));
    let link = raw.attach_accepted(0, 0, "big", 10);
    let out = raw.output();
    assert!(
        bodies(&out)
            .any(|(_, b)| matches!(b, FrameBody::Attach(a) if a.max_message_size == Some(1000)))
    );
    let events = raw.feed(&transfer_frame(0, 0, Some(0), false, false, &[7; 1001]));
    assert!(events.is_empty(), "{events:?}");
    let out = raw.output();
    let d = detaches(&out);
    assert_eq!(d.len(), 1);
    assert!(d[0].closed);
    assert_error(
        d[0].error.as_ref(),
        LinkError::MessageSizeExceeded.into(),
        "1000 bytes",
    );
    // The client's answering detach raises nothing.
    let events = raw.feed(&frame(0, &detach(0, None), &[]));
    assert!(events.is_empty(), "{events:?}");
    assert!(raw.engine.is_open());
    assert_eq!(raw.engine.credit(link), 0);

    // Over several frames, each small: the sum counts.
    let mut raw = Raw::new(cfg);
    raw.open();
    raw.feed(&begin_frame(0));
    raw.attach_accepted(0, 0, "big", 10);
    raw.output();
    let mut events = raw.feed(&transfer_frame(0, 0, Some(0), false, true, &[1; 400]));
    events.extend(raw.feed(&transfer_frame(0, 0, None, false, true, &[2; 400])));
    assert!(events.is_empty(), "{events:?}");
    assert!(detaches(&raw.output()).is_empty());
    let events = raw.feed(&transfer_frame(0, 0, None, false, false, &[3; 400]));
    assert!(events.is_empty(), "{events:?}");
    let d = raw.output();
    let d = detaches(&d);
    assert_eq!(d.len(), 1);
    assert_error(
        d[0].error.as_ref(),
        LinkError::MessageSizeExceeded.into(),
        "1000",
    );
}

#[tokio::test]
async fn client_learns_the_max_message_size_from_the_attach() {
    let mut cfg = config();
    cfg.max_message_size = 1000;
    let (hub, stream) = Hub::start(cfg, obliging(4));
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut sender = within("attach", Sender::attach(&mut session, "s", "q"))
        .await
        .expect("attach");
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
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    assert!(transfers(&ctx.seen).is_empty());
}

// ---------------------------------------------------------------------------------------
// 7. Detach, end and close, either side.

#[tokio::test]
async fn client_detach_and_close_are_raised_and_answered() {
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let sender = within("attach", Sender::attach(&mut session, "plain", "q"))
        .await
        .expect("attach");
    let with_error = within("attach", Sender::attach(&mut session, "with-error", "q"))
        .await
        .expect("attach");
    let _receiver = within("attach", Receiver::attach(&mut session, "left-open", "out"))
        .await
        .expect("attach");

    within("close", sender.close())
        .await
        .expect("the detach is answered");
    let Seen::Detached { link, error } = hub
        .wait_for("detached", |s| matches!(s, Seen::Detached { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(error.is_none());

    let why = definitions::Error::new(AmqpError::InternalError, "client trouble".to_string(), None);
    within("close with error", with_error.close_with_error(why.clone()))
        .await
        .expect("the detach is answered");
    let Seen::Detached {
        link: link2,
        error: error2,
    } = hub
        .wait_for("detached", |s| matches!(s, Seen::Detached { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(error2, Some(why));

    // The connection closes with the receiver still attached: it ends with it.
    within("connection close", connection.close())
        .await
        .expect("the close is answered");
    let ctx = hub.finish().await;
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
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let _sender = within("attach", Sender::attach(&mut session, "s", "q"))
        .await
        .expect("attach");
    hub.wait_for("attach", |s| matches!(s, Seen::Attach { .. }))
        .await;
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
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    let mut connection = connect(stream).await;
    let mut session1 = begin(&mut connection).await;
    let mut session2 = begin(&mut connection).await;
    let mut sender1 = within("attach", Sender::attach(&mut session1, "s1", "q"))
        .await
        .expect("attach");
    let _receiver2 = within("attach", Receiver::attach(&mut session2, "r2", "out"))
        .await
        .expect("attach");
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
    let mut sender3 = within("attach", Sender::attach(&mut session3, "s3", "q"))
        .await
        .expect("attach");
    let outcome = within("send", sender3.send(Message::builder().value("x").build()))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)));
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;

    let e = ends(&ctx.written);
    let with_error: Vec<u16> = e
        .iter()
        .filter(|(_, e)| e.error.is_some())
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(with_error, [0, 1]);
    // The links of the ended sessions end without events; s3 ends with the close.
    let detached: Vec<LinkId> = ctx
        .seen
        .iter()
        .filter_map(|s| match s {
            Seen::Detached { link, .. } => Some(*link),
            _ => None,
        })
        .collect();
    assert_eq!(detached, [attach_link(&ctx.seen, "s3")]);
    assert!(
        transfers(&ctx.seen)
            .iter()
            .all(|t| t.0 == attach_link(&ctx.seen, "s3"))
    );
}

#[tokio::test]
async fn hub_detach_ends_the_link_and_the_session_goes_on() {
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut sender = within("attach", Sender::attach(&mut session, "s", "q"))
        .await
        .expect("attach");
    let Seen::Attach { link, .. } = hub
        .wait_for("attach", |s| matches!(s, Seen::Attach { .. }))
        .await
    else {
        unreachable!()
    };
    hub.act(move |ctx| {
        ctx.engine.detach(
            link,
            Some(error(LinkError::Stolen, "another connection took the link")),
        )
    });
    match within("on detach", sender.on_detach()).await {
        fe2o3_amqp::link::DetachError::RemoteClosedWithError(e) => {
            assert_error(Some(&e), LinkError::Stolen.into(), "another connection")
        }
        other => panic!("the hub's error was expected, not {other:?}"),
    }
    let mut again = within("attach", Sender::attach(&mut session, "s", "q"))
        .await
        .expect("the same name attaches again");
    let outcome = within("send", again.send(Message::builder().value("x").build()))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)));
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    assert!(
        !ctx.seen
            .iter()
            .any(|s| matches!(s, Seen::Detached { link: l, .. } if *l == link))
    );
}

// ---------------------------------------------------------------------------------------
// 8. Malformed input (raw bytes).

#[test]
fn garbage_instead_of_a_header_fails() {
    let mut raw = Raw::new(config());
    let events = raw.feed(b"GET / HTTP/1.1\r\n");
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("protocol header")));
    assert!(raw.engine.is_closed());
    let out = raw.output();
    // The header the hub speaks, then nothing.
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(matches!(out[0], Written::Header(h) if &h == b"AMQP\x03\x01\x00\x00"));
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
    let events = raw.feed(SASL);
    assert!(
        matches!(events.as_slice(), [Event::Failed(_)]),
        "{events:?}"
    );
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
    let events = raw.feed(&sized(&body));
    assert!(
        matches!(events.as_slice(), [Event::Failed(_)]),
        "{events:?}"
    );
    assert!(raw.engine.is_closed());
}

#[test]
fn a_frame_smaller_than_its_header_fails_with_a_close() {
    let mut raw = Raw::new(config());
    raw.feed(AMQP);
    let events = raw.feed(&[0, 0, 0, 4, 2, 0, 0, 0]);
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("4 bytes")));
    assert!(raw.engine.is_closed());
    let out = raw.output();
    // Before the open: an open first, then the close (AMQP 2.4.5).
    assert_eq!(opens(&out).len(), 1);
    let c = closes(&out);
    assert_eq!(c.len(), 1);
    assert_error(
        c[0].error.as_ref(),
        ConnectionError::FramingError.into(),
        "4 bytes",
    );
}

#[test]
fn a_frame_larger_than_max_frame_size_fails_with_a_close() {
    let mut cfg = config();
    cfg.max_frame_size = 4096;
    let mut raw = Raw::new(cfg);
    raw.open();
    raw.output();
    // Only the size is needed to refuse it.
    let events = raw.feed(&[0, 0, 0x10, 0x01, 2, 0, 0, 0]);
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("4097")));
    let out = raw.output();
    assert!(opens(&out).is_empty(), "the open was sent already");
    let c = closes(&out);
    assert_eq!(c.len(), 1);
    assert_error(
        c[0].error.as_ref(),
        ConnectionError::FramingError.into(),
        "4097",
    );
    assert!(raw.engine.is_closed());
}

#[test]
fn before_the_open_frames_up_to_512_bytes_are_read_whatever_the_limit() {
    let mut cfg = config();
    cfg.max_frame_size = 256;
    let mut raw = Raw::new(cfg);
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
    let mut raw = Raw::new(config());
    raw.open();
    raw.output();
    let events = raw.feed(&[0, 0, 0, 12, 2, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
    assert!(
        matches!(events.as_slice(), [Event::Failed(why)] if why.contains("does not decode")),
        "{events:?}"
    );
    let out = raw.output();
    let c = closes(&out);
    assert_eq!(c.len(), 1);
    assert_error(
        c[0].error.as_ref(),
        AmqpError::DecodeError.into(),
        "does not decode",
    );
    assert!(raw.engine.is_closed());
}

#[test]
fn a_sasl_frame_where_amqp_frames_are_expected_fails() {
    let mut raw = Raw::new(config());
    raw.open();
    raw.output();
    let events = raw.feed(&[0, 0, 0, 8, 2, 1, 0, 0]);
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("type 1")));
    let out = raw.output();
    assert_error(
        closes(&out)[0].error.as_ref(),
        ConnectionError::FramingError.into(),
        "type 1",
    );
}

#[test]
fn frames_out_of_place_fail() {
    // A begin before the open.
    let mut raw = Raw::new(config());
    raw.feed(AMQP);
    let events = raw.feed(&begin_frame(0));
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("before the open")));
    let out = raw.output();
    assert_error(
        closes(&out)[0].error.as_ref(),
        AmqpError::IllegalState.into(),
        "before the open",
    );

    // A second open.
    let mut raw = Raw::new(config());
    raw.open();
    let events = raw.feed(&open_frame(None, 4096));
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("second open")));

    // An attach on a channel with no session.
    let mut raw = Raw::new(config());
    raw.open();
    let events = raw.feed(&attach_frame(3, 0, "x", Role::Sender, "q"));
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("channel 3")));
    let out = raw.output();
    assert_error(
        closes(&out)[0].error.as_ref(),
        ConnectionError::FramingError.into(),
        "channel 3",
    );

    // A second begin on a channel.
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    let events = raw.feed(&begin_frame(0));
    assert!(
        matches!(events.as_slice(), [Event::Failed(_)]),
        "{events:?}"
    );

    // A handle attached twice.
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    raw.attach_accepted(0, 0, "a", 4);
    let events = raw.feed(&attach_frame(0, 0, "b", Role::Sender, "q"));
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("handle 0")));
    let out = raw.output();
    assert_error(
        closes(&out)[0].error.as_ref(),
        SessionError::HandleInUse.into(),
        "handle 0",
    );

    // A transfer on a handle never attached.
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    let events = raw.feed(&transfer_frame(0, 7, Some(0), true, false, b"x"));
    assert!(matches!(events.as_slice(), [Event::Failed(why)] if why.contains("handle 7")));
    let out = raw.output();
    assert_error(
        closes(&out)[0].error.as_ref(),
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
    let mut events = Vec::new();
    for b in &all {
        events.extend(raw.feed(std::slice::from_ref(b)));
    }
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
    let transfer = transfer_frame(0, 0, Some(0), false, false, &message);
    let mut events = Vec::new();
    for b in &transfer {
        events.extend(raw.feed(std::slice::from_ref(b)));
    }
    assert!(
        matches!(events.as_slice(), [Event::Transfer { payload, settled: false, delivery: 0, .. }] if payload[..] == message[..]),
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Flow control edge cases (raw).

#[test]
fn a_transfer_beyond_credit_detaches_with_transfer_limit_exceeded() {
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    raw.attach_accepted(0, 0, "s", 2);
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
    let out = raw.output();
    assert_error(
        detaches(&out)[0].error.as_ref(),
        LinkError::TransferLimitExceeded.into(),
        "credit",
    );
}

#[test]
fn settling_gives_the_credit_back_in_one_flow_and_merges_dispositions() {
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    let link = raw.attach_accepted(0, 0, "s", 4);
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
    let ranges: Vec<(u32, Option<u32>, bool)> = bodies(&out)
        .filter_map(|(_, b)| match b {
            FrameBody::Disposition(d) => Some((
                d.first,
                d.last,
                matches!(d.state, Some(DeliveryState::Accepted(_))),
            )),
            _ => None,
        })
        .collect();
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
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    raw.attach_accepted(0, 0, "s", 1);
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
    let mut cfg = config();
    cfg.idle_timeout_ms = 1000;
    let mut raw = Raw::new(cfg);
    raw.open();
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
    let out = raw.output();
    assert_error(
        closes(&out)[0].error.as_ref(),
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
    let mut connection = within(
        "open",
        Connection::builder()
            .container_id("idle-client")
            .idle_time_out(200u32)
            .open_with_stream(stream),
    )
    .await
    .expect("open");
    // Five of the client's timeouts with nothing to say.
    sleep(Duration::from_millis(1000)).await;
    let mut session = begin(&mut connection).await;
    let mut sender = within("attach", Sender::attach(&mut session, "s", "q"))
        .await
        .expect("the connection is alive");
    let outcome = within("send", sender.send(Message::builder().value("x").build()))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)));
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    let beats = heartbeats(&ctx.written);
    assert!(beats >= 4, "only {beats} heartbeats in a second of silence");
}

#[tokio::test]
async fn a_client_heartbeating_at_the_hub_idle_timeout_is_not_closed() {
    let mut cfg = config();
    cfg.idle_timeout_ms = 300;
    let (hub, stream) = Hub::start(cfg, obliging(4));
    let mut connection = connect(stream).await;
    sleep(Duration::from_millis(1200)).await;
    let mut session = begin(&mut connection).await;
    let mut sender = within("attach", Sender::attach(&mut session, "s", "q"))
        .await
        .expect("the connection is alive");
    let outcome = within("send", sender.send(Message::builder().value("x").build()))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)));
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
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
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    hub.act(|ctx| {
        for i in 0..3 {
            ctx.outbox
                .push_back((text_message(&format!("d{i}")), false));
        }
    });
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut receiver = within(
        "attach",
        Receiver::builder()
            .name("drainer")
            .source("out")
            .credit_mode(CreditMode::Manual)
            .attach(&mut session),
    )
    .await
    .expect("attach");
    within("credit", receiver.set_credit(10))
        .await
        .expect("credit");
    for i in 0..3 {
        let d = within("recv", receiver.recv::<Body<Value>>())
            .await
            .expect("recv");
        assert_eq!(d.body(), &string_body(&format!("d{i}")));
        within("accept", receiver.accept(&d)).await.expect("accept");
    }
    let Seen::Credit { link } = hub
        .wait_for("credit", |s| matches!(s, Seen::Credit { .. }))
        .await
    else {
        unreachable!()
    };
    // Drain: nothing more to send, so the seven credits left come back at once.
    within("drain", receiver.drain()).await.expect("drain");
    hub.wait_for("drain credit", |s| matches!(s, Seen::Credit { .. }))
        .await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    hub.act(move |ctx| {
        let _ = tx.send(ctx.engine.credit(link));
    });
    // The credit is read after the loop wrote the answer (the flush gave it back).
    let credit_after = within("credit", rx).await.expect("the hub answers");
    assert_eq!(credit_after, 0);

    // New credit after the drain works as before.
    hub.act(|ctx| ctx.outbox.push_back((text_message("after"), true)));
    within("credit", receiver.set_credit(2))
        .await
        .expect("credit");
    let d = within("recv", receiver.recv::<Body<Value>>())
        .await
        .expect("recv after drain");
    assert_eq!(d.body(), &string_body("after"));

    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    let handle = hub_handle(&ctx.written, "drainer");
    let drained: Vec<&Flow> = link_flows(&ctx.written, handle)
        .into_iter()
        .filter(|f| f.drain)
        .collect();
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

    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.input.extend_from_slice(bytes);
        self.engine.receive(&mut self.input, self.now);
        std::iter::from_fn(|| self.engine.next_event()).collect()
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

    /// Attaches a link the client sends on and accepts it with `window`.
    fn attach_accepted(&mut self, channel: u16, handle: u32, name: &str, window: u32) -> LinkId {
        let mut events = self.feed(&attach_frame(channel, handle, name, Role::Sender, "q"));
        let Some(Event::Attach(request)) = events.pop() else {
            panic!("an attach event: {events:?}")
        };
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

fn begin_frame(channel: u16) -> Vec<u8> {
    frame(
        channel,
        &Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 1000,
            outgoing_window: 1000,
            handle_max: Handle(u32::MAX),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        },
        &[],
    )
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
    let mut events = raw.feed(&attach_frame(0, 0, "r", Role::Receiver, "out"));
    let Some(Event::Attach(request)) = events.pop() else {
        panic!("{events:?}")
    };
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
    let frames: Vec<&Transfer> = bodies(&out)
        .filter_map(|(_, b)| match b {
            FrameBody::Transfer { performative, .. } => Some(performative),
            _ => None,
        })
        .collect();
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

#[test]
fn no_disposition_follows_the_hub_end_of_a_session() {
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    let link = raw.attach_accepted(0, 0, "s", 4);
    let events = raw.feed(&transfer_frame(0, 0, Some(0), false, false, b"x"));
    assert!(matches!(events.as_slice(), [Event::Transfer { .. }]));
    raw.output();
    raw.engine.end_all(error(
        AmqpError::ResourceLimitExceeded,
        "shutting the device out",
    ));
    let out = raw.output();
    assert_eq!(ends(&out).len(), 1);
    // The store answers late: the session is gone, nothing more may be written on it.
    raw.engine.settle(link, 0, accepted());
    let out = raw.output();
    assert!(out.is_empty(), "written after the end: {out:?}");
    // The client's end: no answer, no event; the channel begins anew.
    assert!(raw.feed(&frame(0, &End { error: None }, &[])).is_empty());
    assert!(raw.output().is_empty());
    raw.feed(&begin_frame(0));
    let out = raw.output();
    assert!(bodies(&out).any(|(_, b)| matches!(b, FrameBody::Begin(_))));
    assert!(raw.engine.is_open());
}

#[test]
fn the_session_window_is_renewed_at_half_without_a_link_flow() {
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    // A window so large the link itself needs no new credit.
    raw.attach_accepted(0, 0, "s", 100_000);
    raw.output();
    let mut input = Vec::new();
    for id in 0..32_769u32 {
        input.extend(transfer_frame(0, 0, Some(id), true, false, b""));
    }
    let events = raw.feed(&input);
    assert_eq!(events.len(), 32_769);
    let out = raw.output();
    let flows: Vec<&Flow> = bodies(&out)
        .filter_map(|(_, b)| match b {
            FrameBody::Flow(f) => Some(f),
            _ => None,
        })
        .collect();
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

#[test]
fn an_attach_answered_after_the_hub_ended_its_session_or_connection_writes_nothing() {
    // The session ended while the hub was deciding.
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    let mut events = raw.feed(&attach_frame(0, 0, "late", Role::Sender, "q"));
    let Some(Event::Attach(request)) = events.pop() else {
        panic!("{events:?}")
    };
    raw.output();
    raw.engine.end_all(error(
        AmqpError::ResourceLimitExceeded,
        "shutting the device out",
    ));
    assert_eq!(ends(&raw.output()).len(), 1);
    raw.engine.accept(&request, 4);
    let out = raw.output();
    assert!(out.is_empty(), "written after the end: {out:?}");

    // The connection closed while the hub was deciding.
    let mut raw = Raw::new(config());
    raw.open();
    raw.feed(&begin_frame(0));
    let mut events = raw.feed(&attach_frame(0, 0, "a", Role::Sender, "q"));
    events.extend(raw.feed(&attach_frame(0, 1, "b", Role::Receiver, "out")));
    let Some(Event::Attach(b)) = events.pop() else {
        panic!("{events:?}")
    };
    let Some(Event::Attach(a)) = events.pop() else {
        panic!("{events:?}")
    };
    raw.output();
    raw.engine.close(None);
    assert_eq!(closes(&raw.output()).len(), 1);
    raw.engine.accept(&a, 4);
    raw.engine
        .refuse(*b, error(AmqpError::UnauthorizedAccess, "too late anyway"));
    let out = raw.output();
    assert!(out.is_empty(), "written after the close: {out:?}");
    // The client's close completes it, with no event (the hub closed first).
    assert!(raw.feed(&frame(0, &Close { error: None }, &[])).is_empty());
    assert!(raw.engine.is_closed());
    assert!(raw.output().is_empty());
}

// ---------------------------------------------------------------------------------------
// Settle modes the client chooses.

#[tokio::test]
async fn a_receiver_taking_only_settled_sends_gets_every_send_settled() {
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    hub.act(|ctx| {
        ctx.outbox.push_back((text_message("one"), false));
        ctx.outbox.push_back((text_message("two"), false));
    });
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut receiver = within(
        "attach",
        Receiver::builder()
            .name("settled-only")
            .source("out")
            .sender_settle_mode(SenderSettleMode::Settled)
            .attach(&mut session),
    )
    .await
    .expect("the hub agrees to send settled");
    for expected in ["one", "two"] {
        let d = within("recv", receiver.recv::<Body<Value>>())
            .await
            .expect("recv");
        assert_eq!(d.body(), &string_body(expected));
        within("accept", receiver.accept(&d)).await.expect("accept");
    }
    let Seen::Attach { link, .. } = hub
        .wait_for("attach", |s| matches!(s, Seen::Attach { .. }))
        .await
    else {
        unreachable!()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    hub.act(move |ctx| {
        let _ = tx.send((
            ctx.engine.settled_only(link),
            ctx.engine.may_send_settled(link),
        ));
    });
    assert_eq!(within("modes", rx).await.expect("answer"), (true, true));
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    assert!(!ctx.seen.iter().any(|s| matches!(s, Seen::Outcome { .. })));
    let settled: Vec<Option<bool>> = bodies(&ctx.written)
        .filter_map(|(_, b)| match b {
            FrameBody::Transfer { performative, .. } => Some(performative.settled),
            _ => None,
        })
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
    let (mut hub, stream) = Hub::start(config(), obliging(4));
    hub.act(|ctx| ctx.outbox.push_back((text_message("twice"), false)));
    let mut connection = connect(stream).await;
    let mut session = begin(&mut connection).await;
    let mut receiver = within(
        "attach",
        Receiver::builder()
            .name("second")
            .source("out")
            .receiver_settle_mode(ReceiverSettleMode::Second)
            .attach(&mut session),
    )
    .await
    .expect("attach");
    let d = within("recv", receiver.recv::<Body<Value>>())
        .await
        .expect("recv");
    assert_eq!(d.body(), &string_body("twice"));
    within("accept", receiver.accept(&d)).await.expect("accept");
    let outcome = hub
        .wait_for("outcome", |s| matches!(s, Seen::Outcome { .. }))
        .await;
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
    within("close", connection.close()).await.expect("close");
    let ctx = hub.finish().await;
    // The client's unsettled disposition is answered settled, by the sender.
    let answers: Vec<(Role, bool)> = bodies(&ctx.written)
        .filter_map(|(_, b)| match b {
            FrameBody::Disposition(d) => Some((d.role.clone(), d.settled)),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(Role::Sender, true)]);
}
