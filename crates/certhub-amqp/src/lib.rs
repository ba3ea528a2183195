//! certhub's AMQP 1.0 connection engine: one connection's protocol headers, SASL exchange,
//! sessions, links, flow control and settlement as plain state, driven by the bytes read and
//! the hub's decisions, with no I/O, no tasks and no clock of its own (`now` is passed in).
//!
//! The AMQP type system and codec are fe2o3-amqp's (its performatives, messages and frame
//! decoders, serde_amqp's encoder); what is here is the part a server needs to be fast and
//! small: everything a connection does happens in the one task that owns its socket, so a
//! transfer read is an [`Event`] the caller acts on at once, and the dispositions and flows
//! it causes leave in the same write as everything else pending ([`Engine::take_output`]).
//!
//! How the hub uses it (`certhub-server`'s `amqp` module): feed what the socket gave to
//! [`Engine::receive`], take [`Event`]s with [`Engine::next_event`] and answer them (accept or
//! refuse an attach, settle a transfer, send on a link that has credit), then write
//! [`Engine::take_output`]. Flow control is the engine's: a link the hub receives on is given
//! credit up to the window chosen when it was accepted, less the deliveries the hub has not
//! yet settled, so a slow store slows the client instead of filling memory.

use std::collections::{HashMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fe2o3_amqp::frames::amqp::FrameBody;
use fe2o3_amqp::frames::sasl;
use fe2o3_amqp::types::definitions::{
    AmqpError, ConnectionError, Error, Handle, LinkError, ReceiverSettleMode, Role,
    SenderSettleMode, SessionError,
};
use fe2o3_amqp::types::messaging::{Accepted, DeliveryState, TargetArchetype};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, Disposition, End, Flow, MaxFrameSize, Open, Transfer,
};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use serde::Serialize;
use tokio_util::codec::Encoder;

pub use fe2o3_amqp::types;

pub mod frame;
pub mod message;
mod query;

/// The AMQP protocol header (protocol id 0).
const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// The SASL protocol header (protocol id 3).
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// Frames before the open may be this large whatever the hub's own limit (AMQP 2.4.1).
const MIN_MAX_FRAME: u32 = 512;
/// The session window the hub offers: transfers a client may send before the hub's next flow
/// (renewed at half).
const INCOMING_WINDOW: u32 = 1 << 16;
/// The window the hub announces for its own sends (it never holds transfers back by it).
const OUTGOING_WINDOW: u32 = u32::MAX >> 1;

/// How a connection is to be offered.
#[derive(Debug, Clone)]
pub struct Config {
    /// The hub's container id in its open.
    pub container_id: String,
    /// The largest frame the hub reads (and announces).
    pub max_frame_size: u32,
    /// Sessions one connection may hold at once; a begin beyond is ended with
    /// `amqp:resource-limit-exceeded`.
    pub max_sessions: u16,
    /// Links one session may hold at once; an attach beyond is refused with
    /// `amqp:resource-limit-exceeded` (never reaching the caller).
    pub max_links: usize,
    /// The largest message the hub takes on a link it receives on.
    pub max_message_size: u64,
    /// The idle timeout the hub announces (ms; 0 for none): a client silent for twice as long
    /// is closed (AMQP 2.4.5: the announced value is half the actual threshold, so a client
    /// sending a frame once per announced period is never closed on a timer's jitter).
    pub idle_timeout_ms: u32,
    /// SASL mechanisms offered after a SASL header.
    pub mechanisms: Vec<&'static str>,
    /// Properties of the hub's open.
    pub properties: Option<types::definitions::Fields>,
}

/// A link of this connection. Ids are never reused within a connection, so an id kept by the
/// caller after its link ended names nothing rather than another link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u32);

/// What the client did that the hub has to act on.
#[derive(Debug)]
pub enum Event {
    /// A SASL init: answer with [`Engine::sasl_outcome`].
    SaslInit {
        mechanism: String,
        response: Option<Vec<u8>>,
        hostname: Option<String>,
    },
    /// The client's open was answered.
    Opened { hostname: Option<String> },
    /// A link to accept ([`Engine::accept`]) or refuse ([`Engine::refuse`]).
    Attach(Box<AttachRequest>),
    /// A whole message on a link the hub receives on. Unless `settled`, the hub settles it
    /// with [`Engine::settle`] (until then it counts against the link's credit window).
    Transfer {
        link: LinkId,
        delivery: u32,
        settled: bool,
        payload: Bytes,
    },
    /// The client's disposition of a message the hub sent unsettled (now settled).
    Outcome {
        link: LinkId,
        delivery: u32,
        state: Option<DeliveryState>,
    },
    /// The client gave credit on a link the hub sends on.
    Credit { link: LinkId },
    /// The link ended by the client's detach, its session's end or the connection's close
    /// (the engine has answered). Not raised for links the hub detached itself.
    Detached { link: LinkId, error: Option<Error> },
    /// The client closed the connection (answered); nothing more will come.
    Closed { error: Option<Error> },
    /// The connection broke a rule (or was idle too long): the engine has closed it with a
    /// condition and this says why.
    Failed(String),
}

/// A link the client wants attached.
#[derive(Debug)]
pub struct AttachRequest {
    pub link: LinkId,
    /// The client is the sender (the hub receives on the link).
    pub client_sends: bool,
    /// The target's address when the client sends, else the source's.
    pub address: String,
    /// The client's attach, whole (properties, filters).
    pub attach: Attach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a protocol header.
    Header {
        sasl_done: bool,
    },
    /// The SASL mechanisms were sent: waiting for the init.
    SaslInit,
    /// The init was raised: waiting for the hub's outcome.
    SaslOutcome,
    /// Waiting for the client's open.
    AwaitOpen,
    Open,
    /// The hub sent its close: waiting for the client's.
    CloseSent,
    Closed,
}

#[derive(Debug)]
struct Session {
    remote_channel: u16,
    /// The next transfer id expected from the client.
    next_incoming_id: u32,
    /// Transfers the client may still send before the hub's next flow.
    incoming_window: u32,
    /// The next transfer id of the hub's own.
    next_outgoing_id: u32,
    /// The next delivery id of the hub's own.
    next_delivery_id: u32,
    /// Transfers the client lets the hub send.
    remote_incoming_window: u32,
    /// The client's handle -> the link.
    handles: Vec<(u32, LinkId)>,
    /// Deliveries the hub sent unsettled -> their link.
    unsettled_out: HashMap<u32, LinkId>,
    /// The hub sent an end: waiting for the client's.
    ending: bool,
    /// A flow of the session alone is owed (its window ran low).
    flow_due: bool,
}

#[derive(Debug)]
struct Link {
    channel: u16,
    /// The hub's handle.
    handle: u32,
    /// The hub receives on it.
    receiving: bool,
    /// Accepted by the hub (until then no transfer may come).
    accepted: bool,
    /// Detached by the hub: waiting for the client's detach.
    detaching: bool,
    delivery_count: u32,
    /// Receiving: credit the client still has; sending: credit the hub may still use.
    credit: u32,
    /// Receiving: the credit window; deliveries held unsettled by the hub count against it.
    window: u32,
    /// Receiving: deliveries the hub has not settled.
    unsettled: u32,
    /// Receiving: a message arriving in several frames.
    partial: Option<Partial>,
    /// Sending: the client asked for its credit to be used up or given back.
    drain: bool,
    /// Sending: the settle mode agreed (settled: every send goes settled).
    settled_only: bool,
    /// The largest message the client takes (sending) or the hub takes (receiving).
    max_message_size: u64,
    /// A flow of this link is owed.
    flow_due: bool,
    /// Receiving: the hub settled deliveries of it since the last write (their dispositions
    /// go out in the next one; renewed credit goes with them).
    settled_now: bool,
}

#[derive(Debug)]
struct Partial {
    delivery: u32,
    settled: bool,
    buf: BytesMut,
}

/// One AMQP connection's protocol state.
#[derive(Debug)]
pub struct Engine {
    config: std::sync::Arc<Config>,
    phase: Phase,
    out: BytesMut,
    events: VecDeque<Event>,
    /// The largest frame the client reads.
    remote_max_frame: u32,
    /// The client's idle timeout (ms; 0: none): the hub sends something at least twice in it.
    remote_idle_ms: u32,
    sessions: Vec<Option<Session>>,
    links: HashMap<u32, Link>,
    next_link: u32,
    /// Incoming deliveries settled by the hub and not yet written: (channel, id, state).
    settled: Vec<(u16, u32, DeliveryState)>,
    last_read_ms: i64,
    last_write_ms: i64,
}

/// An error with a condition and a description.
pub fn error(condition: impl Into<types::definitions::ErrorCondition>, why: &str) -> Error {
    Error::new(condition, why.to_string(), None)
}

impl Engine {
    /// A connection offered as `config` says (one `Arc` for a listener's connections).
    pub fn new(config: impl Into<std::sync::Arc<Config>>, now_ms: i64) -> Self {
        Self {
            config: config.into(),
            phase: Phase::Header { sasl_done: false },
            out: BytesMut::new(),
            events: VecDeque::new(),
            remote_max_frame: MIN_MAX_FRAME,
            remote_idle_ms: 0,
            sessions: Vec::new(),
            links: HashMap::new(),
            next_link: 0,
            settled: Vec::new(),
            last_read_ms: now_ms,
            last_write_ms: now_ms,
        }
    }

    /// The connection is open (the open exchange is done, no close yet).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Both sides have closed (or the engine gave up): write what is left and end.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The next event to act on.
    pub fn next_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 {
            // A quiet connection keeps no queue.
            self.events = VecDeque::new();
        }
        event
    }

    /// Reads every whole header and frame at the front of `input` (what is left is an
    /// incomplete frame). Stops while a SASL outcome is awaited.
    pub fn receive(&mut self, input: &mut BytesMut, now_ms: i64) {
        if !input.is_empty() {
            self.last_read_ms = now_ms;
        }
        loop {
            match self.phase {
                Phase::Closed | Phase::SaslOutcome => return,
                Phase::Header { sasl_done } => {
                    if input.len() < 8 {
                        return;
                    }
                    let header = input.split_to(8);
                    if header[..] == AMQP_HEADER {
                        self.out.put_slice(&AMQP_HEADER);
                        self.phase = Phase::AwaitOpen;
                    } else if header[..] == SASL_HEADER && !sasl_done {
                        self.out.put_slice(&SASL_HEADER);
                        let mechanisms = SaslMechanisms {
                            sasl_server_mechanisms: Array::from(
                                self.config
                                    .mechanisms
                                    .iter()
                                    .map(|m| Symbol::from(*m))
                                    .collect::<Vec<_>>(),
                            ),
                        };
                        self.sasl_frame(sasl::Frame::Mechanisms(mechanisms));
                        self.phase = Phase::SaslInit;
                    } else {
                        self.out.put_slice(if sasl_done {
                            &AMQP_HEADER
                        } else {
                            &SASL_HEADER
                        });
                        self.fail_quietly(format!(
                            "not an AMQP 1.0 protocol header: {:02x?}",
                            &header[..]
                        ));
                        return;
                    }
                }
                _ => {
                    if input.len() < 4 {
                        return;
                    }
                    let size = u32::from_be_bytes([input[0], input[1], input[2], input[3]]);
                    let limit = if self.phase == Phase::Open {
                        self.config.max_frame_size
                    } else {
                        self.config.max_frame_size.max(MIN_MAX_FRAME)
                    };
                    if size < 8 || size > limit {
                        self.fail(
                            ConnectionError::FramingError.into(),
                            format!("a frame of {size} bytes: this hub reads frames of 8 to {limit} bytes"),
                        );
                        return;
                    }
                    let size = size as usize;
                    if input.len() < size {
                        input.reserve(size - input.len());
                        return;
                    }
                    let mut frame = input.split_to(size);
                    frame.advance(4);
                    if matches!(self.phase, Phase::SaslInit) {
                        self.sasl_received(&mut frame);
                    } else {
                        self.frame_received(&mut frame);
                    }
                }
            }
        }
    }

    /// Answers the SASL init: `ok` lets the client go on to AMQP.
    pub fn sasl_outcome(&mut self, ok: bool) {
        if self.phase != Phase::SaslOutcome {
            return;
        }
        let code = if ok { SaslCode::Ok } else { SaslCode::Auth };
        self.sasl_frame(sasl::Frame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }));
        self.phase = if ok {
            Phase::Header { sasl_done: true }
        } else {
            Phase::Closed
        };
    }

    fn sasl_received(&mut self, frame: &mut BytesMut) {
        match frame::decode_sasl(frame) {
            Ok(sasl::Frame::Init(init)) => {
                self.phase = Phase::SaslOutcome;
                self.events.push_back(Event::SaslInit {
                    mechanism: init.mechanism.0,
                    response: init.initial_response.map(|r| r.into_vec()),
                    hostname: init.hostname,
                });
            }
            Ok(_) => self.fail_quietly("a SASL frame other than the init".into()),
            Err(e) => self.fail_quietly(format!("a SASL frame that does not decode: {e}")),
        }
    }

    fn frame_received(&mut self, frame: &mut BytesMut) {
        if frame.len() >= 2 && frame[1] != 0 {
            self.fail(
                ConnectionError::FramingError.into(),
                format!(
                    "a frame of type {} where AMQP frames were expected",
                    frame[1]
                ),
            );
            return;
        }
        let decoded = match frame::decode(frame) {
            Ok(f) => f,
            Err(e) => {
                self.fail(
                    AmqpError::DecodeError.into(),
                    format!("a frame that does not decode: {e}"),
                );
                return;
            }
        };
        let channel = decoded.channel;
        match decoded.body {
            FrameBody::Empty => {}
            FrameBody::Open(open) => self.on_open(open),
            FrameBody::Close(close) => self.on_close(close),
            _ if self.phase == Phase::CloseSent => {}
            _ if self.phase != Phase::Open => self.fail(
                AmqpError::IllegalState.into(),
                "a frame before the open".into(),
            ),
            FrameBody::Begin(begin) => self.on_begin(channel, begin),
            body => {
                let Some(local) = self.local_channel(channel) else {
                    self.fail(
                        ConnectionError::FramingError.into(),
                        format!("a frame on channel {channel}, where no session was begun"),
                    );
                    return;
                };
                match body {
                    FrameBody::End(end) => self.on_end(local, end),
                    FrameBody::Attach(attach) => self.on_attach(local, attach),
                    FrameBody::Flow(flow) => self.on_flow(local, flow),
                    FrameBody::Transfer {
                        performative,
                        payload,
                    } => self.on_transfer(local, performative, payload),
                    FrameBody::Disposition(d) => self.on_disposition(local, d),
                    FrameBody::Detach(detach) => self.on_detach(local, detach),
                    _ => {}
                }
            }
        }
    }

    fn local_channel(&self, remote: u16) -> Option<u16> {
        self.sessions.iter().enumerate().find_map(|(i, s)| {
            s.as_ref()
                .filter(|s| s.remote_channel == remote)
                .map(|_| i as u16)
        })
    }

    fn on_open(&mut self, open: Open) {
        if self.phase != Phase::AwaitOpen {
            if self.phase != Phase::CloseSent {
                self.fail(AmqpError::IllegalState.into(), "a second open".into());
            }
            return;
        }
        self.remote_max_frame = open.max_frame_size.0.max(MIN_MAX_FRAME);
        self.remote_idle_ms = open.idle_time_out.unwrap_or(0);
        let reply = Open {
            container_id: self.config.container_id.clone(),
            hostname: None,
            max_frame_size: MaxFrameSize(self.config.max_frame_size),
            channel_max: ChannelMax(self.config.max_sessions.saturating_sub(1)),
            idle_time_out: (self.config.idle_timeout_ms > 0).then_some(self.config.idle_timeout_ms),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: self.config.properties.clone(),
        };
        self.frame(0, &reply, &[]);
        self.phase = Phase::Open;
        self.events.push_back(Event::Opened {
            hostname: open.hostname,
        });
    }

    fn on_close(&mut self, close: Close) {
        let answered = self.phase == Phase::CloseSent;
        self.end_all_links();
        if !answered && self.phase != Phase::Closed {
            self.frame(0, &Close { error: None }, &[]);
            self.events.push_back(Event::Closed { error: close.error });
        }
        self.phase = Phase::Closed;
    }

    fn end_all_links(&mut self) {
        let mut ids: Vec<u32> = self.links.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(link) = self.links.remove(&id)
                && !link.detaching
            {
                self.events.push_back(Event::Detached {
                    link: LinkId(id),
                    error: None,
                });
            }
        }
        self.sessions.clear();
    }

    fn on_begin(&mut self, channel: u16, begin: Begin) {
        if self.local_channel(channel).is_some() {
            self.fail(
                ConnectionError::FramingError.into(),
                format!("a second begin on channel {channel}"),
            );
            return;
        }
        let free = self.sessions.iter().position(Option::is_none);
        let local = match free {
            Some(i) => i,
            None => {
                self.sessions.push(None);
                self.sessions.len() - 1
            }
        };
        let session = Session {
            remote_channel: channel,
            next_incoming_id: begin.next_outgoing_id,
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: 0,
            next_delivery_id: 0,
            remote_incoming_window: begin.incoming_window,
            handles: Vec::new(),
            unsettled_out: HashMap::new(),
            ending: false,
            flow_due: false,
        };
        let reply = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: OUTGOING_WINDOW,
            handle_max: Handle(u32::try_from(self.config.max_links.saturating_sub(1)).unwrap_or(0)),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.sessions[local] = Some(session);
        let local = local as u16;
        self.frame(local, &reply, &[]);
        let live = self.sessions.iter().filter(|s| s.is_some()).count();
        if live > usize::from(self.config.max_sessions) {
            let why = format!(
                "this connection already has {} sessions: end some first",
                self.config.max_sessions
            );
            self.end_session(local, Some(error(AmqpError::ResourceLimitExceeded, &why)));
        }
    }

    fn on_end(&mut self, local: u16, _end: End) {
        let Some(session) = self
            .sessions
            .get_mut(usize::from(local))
            .and_then(Option::take)
        else {
            return;
        };
        for (_, link) in &session.handles {
            if let Some(l) = self.links.remove(&link.0)
                && !l.detaching
            {
                self.events.push_back(Event::Detached {
                    link: *link,
                    error: None,
                });
            }
        }
        if !session.ending {
            self.frame(local, &End { error: None }, &[]);
        }
    }

    /// Ends a session of the hub's choosing (its links end without events).
    fn end_session(&mut self, local: u16, error: Option<Error>) {
        let Some(session) = session_mut(&mut self.sessions, local) else {
            return;
        };
        if session.ending {
            return;
        }
        session.ending = true;
        for (_, link) in &session.handles {
            if let Some(l) = self.links.get_mut(&link.0) {
                l.detaching = true;
            }
        }
        self.frame(local, &End { error }, &[]);
    }

    /// Ends every session with `error` (the Azure SDKs let go of their links at once, then
    /// close the connection): the gentle way to shut a connection out.
    pub fn end_all(&mut self, error: Error) {
        if self.phase != Phase::Open {
            return;
        }
        for local in 0..self.sessions.len() {
            self.end_session(local as u16, Some(error.clone()));
        }
    }

    fn on_attach(&mut self, local: u16, attach: Attach) {
        let Some(session) = session_mut(&mut self.sessions, local) else {
            return;
        };
        if session.ending {
            return;
        }
        let remote_handle = attach.handle.0;
        if session.handles.iter().any(|(h, _)| *h == remote_handle) {
            self.fail(
                SessionError::HandleInUse.into(),
                format!("handle {remote_handle} is already attached"),
            );
            return;
        }
        let mut used: Vec<u32> = session
            .handles
            .iter()
            .filter_map(|(_, id)| self.links.get(&id.0).map(|l| l.handle))
            .collect();
        used.sort_unstable();
        let handle = used
            .iter()
            .enumerate()
            .find(|(i, h)| **h != *i as u32)
            .map_or(used.len() as u32, |(i, _)| i as u32);
        let id = self.next_link;
        self.next_link = self.next_link.wrapping_add(1);
        session.handles.push((remote_handle, LinkId(id)));
        let too_many = session.handles.len() > self.config.max_links;
        let client_sends = attach.role == Role::Sender;
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
        let link = Link {
            channel: local,
            handle,
            receiving: client_sends,
            accepted: false,
            detaching: false,
            delivery_count: attach.initial_delivery_count.unwrap_or(0),
            credit: 0,
            window: 0,
            unsettled: 0,
            partial: None,
            drain: false,
            settled_only: attach.snd_settle_mode == SenderSettleMode::Settled,
            max_message_size: if client_sends {
                self.config.max_message_size
            } else {
                attach
                    .max_message_size
                    .filter(|m| *m > 0)
                    .unwrap_or(u64::MAX)
            },
            flow_due: false,
            settled_now: false,
        };
        self.links.insert(id, link);
        let request = AttachRequest {
            link: LinkId(id),
            client_sends,
            address,
            attach,
        };
        if too_many {
            let why = format!(
                "this session already has {} links: detach some, or begin another session",
                self.config.max_links
            );
            self.refuse(
                *Box::new(request),
                error(AmqpError::ResourceLimitExceeded, &why),
            );
            return;
        }
        self.events.push_back(Event::Attach(Box::new(request)));
    }

    /// The reply attach: the client's terminus echoed, the hub's role and handle.
    fn reply_attach(&mut self, request: &AttachRequest) {
        let Some(link) = self.links.get(&request.link.0) else {
            return;
        };
        if link.detaching {
            // Its session or the connection was ended by the hub meanwhile: nothing more
            // may be written for it.
            return;
        }
        let (channel, handle, receiving) = (link.channel, link.handle, link.receiving);
        let a = &request.attach;
        let reply = Attach {
            name: a.name.clone(),
            handle: Handle(handle),
            role: if receiving {
                Role::Receiver
            } else {
                Role::Sender
            },
            snd_settle_mode: if receiving || a.snd_settle_mode == SenderSettleMode::Settled {
                a.snd_settle_mode.clone()
            } else {
                SenderSettleMode::Mixed
            },
            rcv_settle_mode: ReceiverSettleMode::First,
            source: a.source.clone(),
            target: a.target.clone(),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: if receiving { None } else { Some(0) },
            max_message_size: receiving.then_some(self.config.max_message_size),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.frame(channel, &reply, &[]);
    }

    /// Accepts a link. One the hub receives on gets `window` credit (messages the client may
    /// have in flight, settled or not by the hub); one it sends on starts with the client's.
    pub fn accept(&mut self, request: &AttachRequest, window: u32) {
        self.reply_attach(request);
        let Some(link) = self.links.get_mut(&request.link.0) else {
            return;
        };
        link.accepted = true;
        if link.receiving {
            link.window = window.max(1);
            link.credit = link.window;
            link.flow_due = true;
        }
    }

    /// Refuses a link: attached and at once detached with `error`, which says why.
    pub fn refuse(&mut self, request: AttachRequest, error: Error) {
        self.reply_attach(&request);
        self.detach(request.link, Some(error));
    }

    /// Detaches a link of the hub's choosing (closed), with the condition that says why.
    pub fn detach(&mut self, link: LinkId, error: Option<Error>) {
        let Some(l) = self.links.get_mut(&link.0) else {
            return;
        };
        if l.detaching {
            return;
        }
        l.detaching = true;
        let (channel, handle) = (l.channel, l.handle);
        let detach = Detach {
            handle: Handle(handle),
            closed: true,
            error,
        };
        self.frame(channel, &detach, &[]);
    }

    fn link_of(&self, local: u16, remote_handle: u32) -> Option<LinkId> {
        let session = self.sessions.get(usize::from(local))?.as_ref()?;
        session
            .handles
            .iter()
            .find(|(h, _)| *h == remote_handle)
            .map(|(_, id)| *id)
    }

    fn on_detach(&mut self, local: u16, detach: Detach) {
        let Some(id) = self.link_of(local, detach.handle.0) else {
            return;
        };
        if let Some(session) = session_mut(&mut self.sessions, local) {
            session.handles.retain(|(_, l)| *l != id);
            session.unsettled_out.retain(|_, l| *l != id);
        }
        let Some(link) = self.links.remove(&id.0) else {
            return;
        };
        if !link.detaching {
            let reply = Detach {
                handle: Handle(link.handle),
                closed: detach.closed,
                error: None,
            };
            self.frame(local, &reply, &[]);
            self.events.push_back(Event::Detached {
                link: id,
                error: detach.error,
            });
        }
    }

    fn on_transfer(&mut self, local: u16, transfer: Transfer, payload: Bytes) {
        let Some(session) = session_mut(&mut self.sessions, local) else {
            return;
        };
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        session.incoming_window = session.incoming_window.saturating_sub(1);
        if session.incoming_window < INCOMING_WINDOW / 2 {
            session.flow_due = true;
        }
        if session.ending {
            return;
        }
        let Some(id) = self.link_of(local, transfer.handle.0) else {
            self.fail(
                SessionError::UnattachedHandle.into(),
                format!(
                    "a transfer on handle {}, which is not attached",
                    transfer.handle.0
                ),
            );
            return;
        };
        let Some(link) = self.links.get_mut(&id.0) else {
            return;
        };
        if link.detaching {
            return;
        }
        if !link.receiving || !link.accepted {
            self.detach(
                id,
                Some(error(
                    AmqpError::NotAllowed,
                    "a transfer on a link the hub sends on, or before the hub's attach",
                )),
            );
            return;
        }
        let max = link.max_message_size;
        let mut partial = match link.partial.take() {
            Some(p) => p,
            None => {
                if link.credit == 0 {
                    self.detach(
                        id,
                        Some(error(
                            LinkError::TransferLimitExceeded,
                            "a transfer beyond the link's credit",
                        )),
                    );
                    return;
                }
                link.credit -= 1;
                link.delivery_count = link.delivery_count.wrapping_add(1);
                let Some(delivery) = transfer.delivery_id else {
                    self.fail(
                        AmqpError::DecodeError.into(),
                        "the first transfer of a delivery carries no delivery id".into(),
                    );
                    return;
                };
                let settled = transfer.settled.unwrap_or(false);
                if !settled {
                    link.unsettled += 1;
                }
                Partial {
                    delivery,
                    settled,
                    buf: BytesMut::new(),
                }
            }
        };
        if transfer.aborted {
            if !partial.settled {
                link.unsettled = link.unsettled.saturating_sub(1);
            }
            return;
        }
        if (partial.buf.len() + payload.len()) as u64 > max {
            let why = format!(
                "a message larger than the {max} bytes this link takes (Azure's limit is 256 KB)"
            );
            self.detach(id, Some(error(LinkError::MessageSizeExceeded, &why)));
            return;
        }
        if transfer.more {
            partial.buf.extend_from_slice(&payload);
            link.partial = Some(partial);
            return;
        }
        let payload = if partial.buf.is_empty() {
            payload
        } else {
            partial.buf.extend_from_slice(&payload);
            partial.buf.freeze()
        };
        self.events.push_back(Event::Transfer {
            link: id,
            delivery: partial.delivery,
            settled: partial.settled,
            payload,
        });
    }

    /// Settles a delivery the hub received unsettled, with its outcome (written settled, in
    /// ranges where delivery ids follow each other with the same outcome).
    pub fn settle(&mut self, link: LinkId, delivery: u32, state: DeliveryState) {
        let Some(l) = self.links.get_mut(&link.0) else {
            return;
        };
        l.unsettled = l.unsettled.saturating_sub(1);
        l.settled_now = true;
        let ending = self
            .sessions
            .get(usize::from(l.channel))
            .and_then(Option::as_ref)
            .is_none_or(|s| s.ending);
        if ending {
            // The hub ended the session: nothing more may be written on it.
            return;
        }
        self.settled.push((l.channel, delivery, state));
    }

    fn on_flow(&mut self, local: u16, flow: Flow) {
        let Some(session) = session_mut(&mut self.sessions, local) else {
            return;
        };
        session.remote_incoming_window = frame::sendable_window(&flow, session.next_outgoing_id);
        let Some(handle) = flow.handle.clone() else {
            if flow.echo {
                session.flow_due = true;
            }
            return;
        };
        let Some(id) = self.link_of(local, handle.0) else {
            return;
        };
        let Some(link) = self.links.get_mut(&id.0) else {
            return;
        };
        if link.receiving {
            if flow.echo {
                link.flow_due = true;
            }
            return;
        }
        link.credit = frame::sendable_credit(&flow, link.delivery_count).unwrap_or(0);
        link.drain = flow.drain;
        if flow.echo || flow.drain {
            link.flow_due = true;
        }
        if link.credit > 0 && !link.detaching {
            self.events.push_back(Event::Credit { link: id });
        }
    }

    fn on_disposition(&mut self, local: u16, d: Disposition) {
        if d.role != Role::Receiver {
            // About the client's own sends: the hub settles those itself (mode first).
            return;
        }
        let Some(session) = session_mut(&mut self.sessions, local) else {
            return;
        };
        let last = d.last.unwrap_or(d.first);
        let mut answered = false;
        let mut id = d.first;
        loop {
            if let Some(link) = session.unsettled_out.remove(&id) {
                answered = true;
                self.events.push_back(Event::Outcome {
                    link,
                    delivery: id,
                    state: d.state.clone(),
                });
            }
            if id == last || last.wrapping_sub(id) > 1 << 20 {
                break;
            }
            id = id.wrapping_add(1);
        }
        if answered && !d.settled {
            // The client waits for the hub to settle (rcv-settle-mode second): settled and
            // accepted, whatever it sent (Microsoft.Azure.Amqp clients expect exactly that).
            let reply = Disposition {
                role: Role::Sender,
                first: d.first,
                last: d.last,
                settled: true,
                state: Some(DeliveryState::Accepted(Accepted {})),
                batchable: false,
            };
            self.frame(local, &reply, &[]);
        }
    }

    /// Deliveries the hub may send on `link` now (0 when it has no credit or has ended).
    pub fn credit(&self, link: LinkId) -> u32 {
        let Some(l) = self.links.get(&link.0) else {
            return 0;
        };
        if l.receiving || !l.accepted || l.detaching || self.phase != Phase::Open {
            return 0;
        }
        let window = self
            .sessions
            .get(usize::from(l.channel))
            .and_then(Option::as_ref)
            .map_or(0, |s| s.remote_incoming_window);
        l.credit.min(window)
    }

    /// The agreed settle mode of a link the hub sends on lets it send settled.
    pub fn may_send_settled(&self, link: LinkId) -> bool {
        self.links.get(&link.0).is_some_and(|l| !l.receiving)
    }

    /// The link takes only settled sends (the client asked for snd-settle-mode settled).
    pub fn settled_only(&self, link: LinkId) -> bool {
        self.links.get(&link.0).is_some_and(|l| l.settled_only)
    }

    /// Sends one message (its encoded sections) on a link the hub sends on; `tag` is the
    /// delivery tag (a counter when none). Returns the delivery id, or none without credit
    /// (or when the message is larger than the client takes: `Err`).
    pub fn send(
        &mut self,
        link: LinkId,
        tag: Option<&[u8]>,
        payload: &[u8],
        settled: bool,
    ) -> Result<Option<u32>, String> {
        if self.credit(link) == 0 {
            return Ok(None);
        }
        let Some(l) = self.links.get_mut(&link.0) else {
            return Ok(None);
        };
        if payload.len() as u64 > l.max_message_size {
            return Err(format!(
                "a message of {} bytes, larger than the {} the client takes",
                payload.len(),
                l.max_message_size
            ));
        }
        let settled = settled || l.settled_only;
        let (channel, handle) = (l.channel, l.handle);
        let count = l.delivery_count;
        l.delivery_count = l.delivery_count.wrapping_add(1);
        l.credit -= 1;
        let Some(session) = session_mut(&mut self.sessions, channel) else {
            return Ok(None);
        };
        let delivery = session.next_delivery_id;
        session.next_delivery_id = session.next_delivery_id.wrapping_add(1);
        if !settled {
            session.unsettled_out.insert(delivery, link);
        }
        let tag = tag.map_or_else(|| count.to_be_bytes().to_vec(), <[u8]>::to_vec);
        let transfer = Transfer {
            handle: Handle(handle),
            delivery_id: Some(delivery),
            delivery_tag: Some(tag.into()),
            message_format: Some(0),
            settled: Some(settled),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let frames = frame::put_transfer(
            &mut self.out,
            channel,
            transfer,
            payload,
            self.remote_max_frame as usize,
        )
        .unwrap_or(0);
        if let Some(session) = session_mut(&mut self.sessions, channel) {
            session.next_outgoing_id = session.next_outgoing_id.wrapping_add(frames);
            session.remote_incoming_window = session.remote_incoming_window.saturating_sub(frames);
        }
        Ok(Some(delivery))
    }

    /// Closes the connection with `error` (the client's close is then awaited).
    pub fn close(&mut self, error: Option<Error>) {
        match self.phase {
            Phase::Open | Phase::AwaitOpen => {
                if self.phase == Phase::AwaitOpen {
                    // An open must come first (AMQP 2.4.5): a minimal one.
                    let open = Open {
                        container_id: self.config.container_id.clone(),
                        hostname: None,
                        max_frame_size: MaxFrameSize(self.config.max_frame_size),
                        channel_max: ChannelMax(0),
                        idle_time_out: None,
                        outgoing_locales: None,
                        incoming_locales: None,
                        offered_capabilities: None,
                        desired_capabilities: None,
                        properties: None,
                    };
                    self.frame(0, &open, &[]);
                }
                self.frame(0, &Close { error }, &[]);
                self.phase = Phase::CloseSent;
                for link in self.links.values_mut() {
                    link.detaching = true;
                }
            }
            Phase::CloseSent | Phase::Closed => {}
            _ => self.phase = Phase::Closed,
        }
    }

    /// A protocol error: closed with the condition, raised as [`Event::Failed`].
    fn fail(&mut self, condition: types::definitions::ErrorCondition, why: String) {
        let error = Error::new(condition, why.clone(), None);
        self.close(Some(error));
        self.phase = Phase::Closed;
        self.events.push_back(Event::Failed(why));
    }

    /// A failure before AMQP frames can carry a close (headers, SASL).
    fn fail_quietly(&mut self, why: String) {
        self.phase = Phase::Closed;
        self.events.push_back(Event::Failed(why));
    }

    /// When [`Engine::tick`] is next due (ms): a heartbeat owed to the client or the end of
    /// the hub's idle timeout.
    pub fn deadline(&self) -> Option<i64> {
        if self.phase != Phase::Open {
            return None;
        }
        let beat = (self.remote_idle_ms > 0)
            .then(|| self.last_write_ms + i64::from(self.remote_idle_ms / 2));
        let idle = (self.config.idle_timeout_ms > 0)
            .then(|| self.last_read_ms + 2 * i64::from(self.config.idle_timeout_ms));
        match (beat, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Heartbeats and the idle timeout.
    pub fn tick(&mut self, now_ms: i64) {
        if self.phase != Phase::Open {
            return;
        }
        // Twice the announced timeout (AMQP 2.4.5).
        let idle = 2 * i64::from(self.config.idle_timeout_ms);
        if idle > 0 && now_ms - self.last_read_ms >= idle {
            let why = format!(
                "nothing received for {} s (twice the idle timeout this hub announced)",
                idle / 1000
            );
            self.fail(AmqpError::ResourceLimitExceeded.into(), why);
            return;
        }
        if self.remote_idle_ms > 0
            && now_ms - self.last_write_ms >= i64::from(self.remote_idle_ms / 2)
            && self.out.is_empty()
        {
            self.out.put_slice(&[0, 0, 0, 8, 2, 0, 0, 0]);
        }
    }

    /// Everything to write now (dispositions and flows owed included), or none.
    pub fn take_output(&mut self, now_ms: i64) -> Option<BytesMut> {
        self.flush();
        if self.out.is_empty() {
            return None;
        }
        self.last_write_ms = now_ms;
        // The whole buffer goes (a quiet connection keeps none; the next frame starts anew).
        Some(std::mem::take(&mut self.out))
    }

    /// Writes the dispositions and flows owed.
    fn flush(&mut self) {
        if !self.settled.is_empty() && matches!(self.phase, Phase::Open) {
            let settled = std::mem::take(&mut self.settled);
            let mut run: Option<(u16, u32, u32, DeliveryState)> = None;
            for (channel, id, state) in settled {
                if let Some((c, _, last, s)) = &mut run
                    && *c == channel
                    && id == last.wrapping_add(1)
                    && same_outcome(s, &state)
                {
                    *last = id;
                    continue;
                }
                if let Some(r) = run.take() {
                    self.disposition(r);
                }
                run = Some((channel, id, id, state));
            }
            if let Some(r) = run {
                self.disposition(r);
            }
        }
        self.settled.clear();
        if self.phase != Phase::Open {
            return;
        }
        let mut due: Vec<(u16, Option<(u32, bool)>)> = Vec::new();
        for (id, link) in &mut self.links {
            let mut must = std::mem::take(&mut link.flow_due);
            if link.detaching || !link.accepted {
                continue;
            }
            let mut drained = false;
            if link.receiving {
                // Credit is renewed when it is half used, in the write that carries the
                // dispositions of the deliveries that held it (a flow written on its own
                // before them would leave the client's TCP to delay the second write by its
                // delayed acknowledgement), or at once when the hub holds none of them.
                let target = link.window.saturating_sub(link.unsettled);
                let settled_now = std::mem::take(&mut link.settled_now);
                if target > link.credit
                    && link.credit <= link.window / 2
                    && (settled_now || link.unsettled == 0)
                {
                    link.credit = target;
                    must = true;
                }
            } else if must && link.drain {
                // Nothing more to send now: the rest of the credit is given back.
                link.delivery_count = link.delivery_count.wrapping_add(link.credit);
                link.credit = 0;
                link.drain = false;
                drained = true;
            }
            if must {
                due.push((link.channel, Some((*id, drained))));
            }
        }
        for (local, session) in self.sessions.iter().enumerate() {
            if let Some(s) = session
                && s.flow_due
                && !s.ending
                && !due.iter().any(|(c, _)| usize::from(*c) == local)
            {
                due.push((local as u16, None));
            }
        }
        due.sort_unstable();
        for (channel, link) in due {
            self.flow(channel, link);
        }
    }

    fn disposition(&mut self, (channel, first, last, state): (u16, u32, u32, DeliveryState)) {
        let d = Disposition {
            role: Role::Receiver,
            first,
            last: (last != first).then_some(last),
            settled: true,
            state: Some(state),
            batchable: false,
        };
        self.frame(channel, &d, &[]);
    }

    fn flow(&mut self, channel: u16, link: Option<(u32, bool)>) {
        let Some(session) = session_mut(&mut self.sessions, channel) else {
            return;
        };
        session.incoming_window = INCOMING_WINDOW;
        session.flow_due = false;
        let mut flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        if let Some((l, drained)) = link.and_then(|(id, d)| Some((self.links.get(&id)?, d))) {
            flow.handle = Some(Handle(l.handle));
            flow.delivery_count = Some(l.delivery_count);
            flow.link_credit = Some(l.credit);
            if !l.receiving {
                flow.available = Some(0);
                flow.drain = drained;
            }
        }
        self.frame(channel, &flow, &[]);
    }

    fn frame<P: Serialize>(&mut self, channel: u16, performative: &P, payload: &[u8]) {
        // Encoding the library's own performatives into memory does not fail.
        let _ = frame::put_frame(&mut self.out, channel, performative, payload);
    }

    fn sasl_frame(&mut self, frame: sasl::Frame) {
        let start = self.out.len();
        self.out.put_u32(0);
        let mut body = BytesMut::new();
        if (sasl::FrameCodec {}).encode(frame, &mut body).is_err() {
            self.out.truncate(start);
            return;
        }
        self.out.put_slice(&body);
        let size = u32::try_from(self.out.len() - start).unwrap_or(u32::MAX);
        self.out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    }
}

/// The session on the hub's channel `local`, if begun.
fn session_mut(sessions: &mut [Option<Session>], local: u16) -> Option<&mut Session> {
    sessions
        .get_mut(usize::from(local))
        .and_then(Option::as_mut)
}

fn same_outcome(a: &DeliveryState, b: &DeliveryState) -> bool {
    matches!(
        (a, b),
        (DeliveryState::Accepted(_), DeliveryState::Accepted(_))
            | (DeliveryState::Released(_), DeliveryState::Released(_))
    )
}
