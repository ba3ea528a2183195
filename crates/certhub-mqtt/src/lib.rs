//! certhub's MQTT 3.1.1 device session (azure-protocol 1) as a state machine: packets and hub
//! events in, [`Action`]s out, the time passed in. No I/O, no clock, no tokio: a driver owns the
//! byte stream (TLS on 8883, WebSocket frames on 443), decodes packets, feeds them to
//! [`Machine::handle`] with the hub's answers and events, and carries out the actions in order.
//!
//! The rules are those of the transport-bound session it replaces: the first packet is CONNECT,
//! decided by the driver ([`Action::Admit`]); a device publishes only to its own telemetry topic
//! and the `$iothub` twin and method topics; QoS 1 telemetry is acknowledged once it is durable
//! ([`Input::Stored`]), and PUBACKs go out in the order their PUBLISHes came (MQTT 3.1.1 4.6);
//! at most [`Limits::c2d_window`] cloud-to-device messages are in flight; the keep-alive counts
//! from the device's last packet; a SAS session ends with its token; the will is forwarded as
//! telemetry when the session ends without DISCONNECT.
//!
//! # Driving it
//!
//! - Feed every decoded packet as [`Input::Packet`] while [`Machine::reading`] is true; stop
//!   reading while it is false (PUBACKs are owed up to [`Limits::unacked_in`], or the CONNECT
//!   decision is pending) and resume when it turns true again.
//! - Feed [`Input::Tick`] when `now_ms` reaches [`Machine::deadline_ms`] (earlier is harmless).
//! - Carry out the actions of one `handle` call in order; write the [`Action::Send`] packets and
//!   flush once after the batch. [`Action::Close`] is always the last action of a machine; then
//!   the driver closes the stream and the machine ignores every input.
//! - Answer [`Action::Admit`] with [`Input::Admitted`] or [`Input::Refused`], every
//!   [`Action::FetchC2d`] with exactly one [`Input::C2d`] (empty on a store error: the machine
//!   asks again on its next occasion), every acknowledged [`Action::Telemetry`] with
//!   [`Input::Stored`] or [`Input::StoreFailed`] in submission order, [`Action::ReadTwin`] with
//!   [`Input::TwinRead`] and [`Action::PatchReported`] with [`Input::TwinReported`].
//!
//! # Deviations from the interface first agreed
//!
//! - [`Action::Telemetry`] and [`Action::Will`] carry their body as [`bytes::Bytes`] (the
//!   packet's own buffer, no copy); [`Connect::password`] is `Option<Vec<u8>>` as agreed.
//! - At most one [`Action::FetchC2d`] is outstanding: an occasion to fetch (SUBSCRIBE, PUBACK,
//!   [`Input::C2dQueued`]) while one is unanswered is remembered and the fetch is made when the
//!   [`Input::C2d`] answer comes (if the window still has room). Two fetches from the same cursor
//!   would deliver the same messages twice when a driver answers them concurrently. An answer
//!   with more messages than the window has room for is cut at the room (the cursor stays before
//!   the first message left out, so it comes with a later fetch). An answer that comes when the
//!   device no longer wants C2D (it unsubscribed meanwhile) is dropped, cursor unchanged.
//! - [`Input::Refused`] with `ConnectionAccepted` (not a refusal) is sent as CONNACK 3
//!   (server unavailable).
//! - A telemetry message the hub could not even accept for storing (no `ack` to wait for) is
//!   reported by the driver as [`Input::Closed`]`("telemetry not stored: {e}")`, the text of the
//!   transport-bound session.
//! - [`End::TokenExpired`] carries `token_expiry_ms` divided by 1000 (rounded down): the token's
//!   `se` when the driver passes `se * 1000`, as it should.
//! - While the driver decides a CONNECT ([`Action::Admit`] unanswered), [`Machine::reading`] is
//!   false (as before: nothing was read during the decision) and [`Machine::deadline_ms`] is
//!   `i64::MAX` (the CONNECT deadline covers waiting for the packet, not the hub's decision).
//! - Before admission there is no session: [`Input::Closed`], [`Input::Kick`], a packet that is
//!   not CONNECT (or any packet fed during the decision) end with [`End::Refused`] and no
//!   CONNACK, no will; hub inputs (C2D, twin, methods, stores) are ignored.
//! - Additions: [`Machine::owed_pubacks`], [`Machine::c2d_in_flight`], [`Machine::is_live`],
//!   [`error_body`], the text constants [`KEEP_ALIVE_EXPIRED`] and [`DEVICE_CLOSED`];
//!   [`Input`] and [`Action`] are `Clone + PartialEq + Eq`; [`Limits::c2d_window`] is clamped
//!   to 65,535 (the packet ids there are).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU16;

use bytes::Bytes;
use certhub_core::{
    C2dMessage, ClientId, DevicePublish, MessageProperties, c2d_topic, classify_publish,
    subscription_allowed, telemetry_topic,
};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::{ConnectAck, ConnectAckReason, Packet, SubscribeReturnCode};

/// The close reason of a session whose keep-alive passed without a packet from the device.
pub const KEEP_ALIVE_EXPIRED: &str = "keep-alive expired";
/// The close reason a driver gives for a stream that ended (EOF).
pub const DEVICE_CLOSED: &str = "the device closed the connection";

/// A session's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cloud-to-device messages sent and not yet acknowledged, at most (at most 65,535: there
    /// are no more packet ids).
    pub c2d_window: usize,
    /// QoS 1 publishes from the device whose PUBACK is owed, at most: past it
    /// [`Machine::reading`] is false until the oldest is acknowledged.
    pub unacked_in: usize,
    /// Azure's server-side keep-alive cap; also the keep-alive of a CONNECT that asks for none.
    pub max_keep_alive_ms: i64,
    /// The device must send CONNECT this soon after the machine is made.
    pub connect_timeout_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            c2d_window: 16,
            unacked_in: 128,
            max_keep_alive_ms: 1_767_000,
            connect_timeout_ms: 10_000,
        }
    }
}

/// What the machine is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A packet decoded from the device.
    Packet(Packet),
    /// The stream ended; the driver says why ([`DEVICE_CLOSED`] at EOF,
    /// `"protocol error: {e}"` for a packet that does not decode, `"write failed or timed out"`).
    Closed(String),
    /// [`Machine::deadline_ms`] was reached (or is near: an early tick does nothing).
    Tick,
    /// The answer to [`Action::Admit`]: the device is who it says and has a session.
    Admitted {
        id: ClientId,
        /// The subscriptions of a resumed persistent session (empty for a new or clean one).
        subs: BTreeMap<String, u8>,
        /// CONNACK's session-present flag.
        session_present: bool,
        /// When the SAS token the device connected with expires, `se * 1000`.
        token_expiry_ms: Option<i64>,
    },
    /// The answer to [`Action::Admit`]: the device is refused with this CONNACK code.
    Refused(ConnectAckReason),
    /// The oldest telemetry whose [`Action::Telemetry`] had `ack` is durable.
    Stored,
    /// The oldest telemetry whose [`Action::Telemetry`] had `ack` could not be stored.
    StoreFailed(String),
    /// The answer to [`Action::FetchC2d`], in queue order (possibly empty).
    C2d(Vec<C2dMessage>),
    /// New cloud-to-device messages were queued for the device.
    C2dQueued,
    /// A desired-properties patch, JSON with its `$version`.
    Desired(Vec<u8>),
    /// A direct method call (the name is checked by the API: no '/', '?', '#' or '+').
    Method {
        name: String,
        rid: String,
        payload: Vec<u8>,
    },
    /// The answer to [`Action::ReadTwin`]: the twin JSON (device view), or status and message.
    TwinRead {
        rid: String,
        result: Result<Vec<u8>, (u16, String)>,
    },
    /// The answer to [`Action::PatchReported`]: the twin's new version, or status and message.
    TwinReported {
        rid: String,
        result: Result<i64, (u16, String)>,
    },
    /// The hub ends the session (revocation, a newer connection, a settings switch).
    Kick(String),
}

/// What a CONNECT asks, for the driver's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub clean_session: bool,
    /// Seconds, as the device sent it.
    pub keep_alive: u16,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this packet (flush after the batch of one [`Machine::handle`] call).
    Send(Packet),
    /// Decide this CONNECT (certificate chain, SAS, registry, audit); answer
    /// [`Input::Admitted`] or [`Input::Refused`].
    Admit(Connect),
    /// Store this telemetry; when `ack`, answer [`Input::Stored`] or [`Input::StoreFailed`] once
    /// it is durable, in submission order.
    Telemetry {
        props: MessageProperties,
        body: Bytes,
        ack: bool,
    },
    /// Read the identity's twin; answer [`Input::TwinRead`].
    ReadTwin { rid: String },
    /// Apply this reported-properties patch (the raw payload: a payload that is not JSON is a
    /// 400); answer [`Input::TwinReported`].
    PatchReported { rid: String, patch: Vec<u8> },
    /// The device answered the direct method call `rid`.
    MethodResponse {
        rid: String,
        status: i64,
        payload: Vec<u8>,
    },
    /// Record these granted subscriptions (a persistent session saves them) before the SUBACK
    /// that follows.
    Subscribed(Vec<(String, u8)>),
    /// Forget these subscriptions before the UNSUBACK that follows.
    Unsubscribed(Vec<String>),
    /// Read at most `room` pending cloud-to-device messages with a queue id above `after`;
    /// answer [`Input::C2d`].
    FetchC2d { after: i64, room: usize },
    /// The device acknowledged this cloud-to-device message: complete it.
    C2dComplete { queue_id: i64 },
    /// Store the will as telemetry (`iothub-MessageType=Will` is among its properties); just
    /// before [`Action::Close`] when the session ends without DISCONNECT and the will names the
    /// identity's own telemetry topic.
    Will {
        props: MessageProperties,
        body: Bytes,
    },
    /// The session is over; always the last action.
    Close(End),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The device sent DISCONNECT.
    Clean,
    /// The session was closed for this reason (audited).
    Closed(String),
    /// The SAS token expired (its `se`, unix seconds).
    TokenExpired(i64),
    /// No session: the CONNECT was refused, invalid, missing or late.
    Refused,
}

/// A PUBACK owed to the device, oldest first.
#[derive(Debug, Clone, Copy)]
struct Owed {
    packet_id: NonZeroU16,
    /// Telemetry whose [`Input::Stored`] has not come yet.
    unstored: bool,
}

/// The will of a CONNECT, kept until the session ends.
#[derive(Debug)]
struct PendingWill {
    topic: String,
    message: Bytes,
}

#[derive(Debug)]
struct Live {
    id: ClientId,
    will: Option<Box<PendingWill>>,
    /// PUBACKs owed, oldest first (freed when empty: an idle session holds no buffer).
    owed: VecDeque<Owed>,
    /// C2D messages sent and not acknowledged: packet id, queue id (freed when empty).
    inflight: Vec<(NonZeroU16, i64)>,
    /// The highest queue id sent in this session.
    c2d_cursor: i64,
    last_packet_ms: i64,
    keep_alive_ms: i64,
    token_expiry_ms: Option<i64>,
    next_packet_id: u16,
    /// Subscribed to its own C2D topic (a device, not a module).
    c2d: bool,
    /// A FetchC2d is unanswered.
    fetching: bool,
    /// Another occasion to fetch came while one was unanswered.
    refetch: bool,
}

#[derive(Debug)]
enum Phase {
    Connecting {
        deadline_ms: i64,
    },
    /// The driver decides the CONNECT.
    Admitting {
        keep_alive: u16,
        will: Option<Box<PendingWill>>,
    },
    Live(Box<Live>),
    Ended,
}

/// One device connection's MQTT session.
#[derive(Debug)]
pub struct Machine {
    limits: Limits,
    phase: Phase,
}

/// Which topic of a packet holds U+0000, if one does: the receiver must close the connection
/// (MQTT 3.1.1 1.5.3).
fn nul_in(packet: &Packet) -> Option<&'static str> {
    let nul = |t: &str| t.contains('\0');
    match packet {
        Packet::Publish(p) if nul(&p.topic) => Some("the PUBLISH topic"),
        Packet::Subscribe { topic_filters, .. } if topic_filters.iter().any(|(f, _)| nul(f)) => {
            Some("a SUBSCRIBE topic filter")
        }
        Packet::Unsubscribe { topic_filters, .. } if topic_filters.iter().any(|f| nul(f)) => {
            Some("an UNSUBSCRIBE topic filter")
        }
        _ => None,
    }
}

/// The body of an error answer on a `$iothub/twin/res` topic.
pub fn error_body(status: u16, message: &str) -> String {
    serde_json::json!({"errorCode": status, "message": message}).to_string()
}

/// A QoS 0 PUBLISH from the hub.
fn publish0(topic: String, payload: Bytes) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos: QoS::AtMostOnce,
        topic: topic.into(),
        packet_id: None,
        payload,
        properties: None,
    }))
}

/// The C2D subscription filter of a device.
fn c2d_filter(id: &ClientId) -> String {
    format!("devices/{}/messages/devicebound/#", id.device)
}

/// What an input does to the phase.
enum Next {
    Stay,
    To(Phase),
    Ended,
}

impl Machine {
    /// A connection accepted at `now_ms`, waiting for its CONNECT.
    pub fn new(limits: Limits, now_ms: i64) -> Self {
        Self {
            limits: Limits {
                // Beyond it there would be no free packet id for the next message.
                c2d_window: limits.c2d_window.min(usize::from(u16::MAX)),
                ..limits
            },
            phase: Phase::Connecting {
                deadline_ms: now_ms.saturating_add(limits.connect_timeout_ms),
            },
        }
    }

    /// Feeds one input; appends what the driver must do, in order, to `out`.
    pub fn handle(&mut self, input: Input, now_ms: i64, out: &mut Vec<Action>) {
        let limits = self.limits;
        let next = match &mut self.phase {
            Phase::Ended => Next::Stay,
            Phase::Connecting { deadline_ms } => connecting(input, *deadline_ms, now_ms, out),
            Phase::Admitting { keep_alive, will } => {
                admitting(input, *keep_alive, will, &limits, now_ms, out)
            }
            Phase::Live(live) => match live.handle(input, &limits, now_ms, out) {
                Ok(()) => Next::Stay,
                Err(end) => {
                    live.end(end, out);
                    Next::Ended
                }
            },
        };
        match next {
            Next::Stay => {}
            Next::To(phase) => self.phase = phase,
            Next::Ended => self.phase = Phase::Ended,
        }
    }

    /// When the driver must feed [`Input::Tick`] at the latest: the CONNECT deadline while
    /// connecting; then the earlier of the keep-alive's end (the device's last packet plus the
    /// keep-alive) and the SAS token's expiry. `i64::MAX` while the CONNECT decision is pending
    /// and once the session has ended.
    pub fn deadline_ms(&self) -> i64 {
        match &self.phase {
            Phase::Connecting { deadline_ms } => *deadline_ms,
            Phase::Admitting { .. } | Phase::Ended => i64::MAX,
            Phase::Live(live) => {
                let keep_alive = live.last_packet_ms.saturating_add(live.keep_alive_ms);
                live.token_expiry_ms
                    .map_or(keep_alive, |t| t.min(keep_alive))
            }
        }
    }

    /// Whether the driver should read more packets: false while the CONNECT decision is
    /// pending, while [`Limits::unacked_in`] PUBACKs are owed, and once the session has ended.
    pub fn reading(&self) -> bool {
        match &self.phase {
            Phase::Connecting { .. } => true,
            Phase::Admitting { .. } | Phase::Ended => false,
            Phase::Live(live) => live.owed.len() < self.limits.unacked_in,
        }
    }

    /// Whether [`Action::Close`] was emitted.
    pub fn ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// Whether the session was admitted and has not ended.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live(_))
    }

    /// PUBACKs owed to the device (waiting for [`Input::Stored`] or for an older one).
    pub fn owed_pubacks(&self) -> usize {
        match &self.phase {
            Phase::Live(live) => live.owed.len(),
            _ => 0,
        }
    }

    /// Cloud-to-device messages sent and not yet acknowledged.
    pub fn c2d_in_flight(&self) -> usize {
        match &self.phase {
            Phase::Live(live) => live.inflight.len(),
            _ => 0,
        }
    }
}

/// Before CONNECT.
fn connecting(input: Input, deadline_ms: i64, now_ms: i64, out: &mut Vec<Action>) -> Next {
    match input {
        Input::Packet(Packet::Connect(connect)) => {
            let connect = *connect;
            if [
                Some(&*connect.client_id),
                connect.username.as_deref(),
                connect.last_will.as_ref().map(|w| &*w.topic),
            ]
            .into_iter()
            .flatten()
            .any(|s: &str| s.contains('\0'))
            {
                // MQTT 3.1.1 1.5.3: the connection is closed, no CONNACK.
                out.push(Action::Close(End::Refused));
                return Next::Ended;
            }
            let will = connect.last_will.map(|w| {
                Box::new(PendingWill {
                    topic: w.topic.to_string(),
                    message: w.message,
                })
            });
            out.push(Action::Admit(Connect {
                client_id: connect.client_id.to_string(),
                username: connect.username.map(|u| u.to_string()),
                password: connect.password.map(|p| p.to_vec()),
                clean_session: connect.clean_session,
                keep_alive: connect.keep_alive,
            }));
            Next::To(Phase::Admitting {
                keep_alive: connect.keep_alive,
                will,
            })
        }
        // The first packet must be CONNECT (MQTT 3.1.1 3.1): closed, no CONNACK.
        Input::Packet(_) | Input::Closed(_) | Input::Kick(_) => {
            out.push(Action::Close(End::Refused));
            Next::Ended
        }
        Input::Tick if now_ms >= deadline_ms => {
            out.push(Action::Close(End::Refused));
            Next::Ended
        }
        _ => Next::Stay,
    }
}

/// While the driver decides the CONNECT.
fn admitting(
    input: Input,
    keep_alive: u16,
    will: &mut Option<Box<PendingWill>>,
    limits: &Limits,
    now_ms: i64,
    out: &mut Vec<Action>,
) -> Next {
    match input {
        Input::Admitted {
            id,
            subs,
            session_present,
            token_expiry_ms,
        } => {
            // Azure's rule: the server waits 1.5 times the keep-alive, at most its cap; none
            // asked is the cap.
            let keep_alive_ms = if keep_alive == 0 {
                limits.max_keep_alive_ms
            } else {
                (i64::from(keep_alive) * 1500).min(limits.max_keep_alive_ms)
            };
            // Modules receive no C2D (azure-protocol 1.10).
            let c2d = id.module.is_none() && subs.contains_key(&c2d_filter(&id));
            let mut live = Box::new(Live {
                id,
                will: will.take(),
                owed: VecDeque::new(),
                inflight: Vec::new(),
                c2d_cursor: 0,
                last_packet_ms: now_ms,
                keep_alive_ms,
                token_expiry_ms,
                next_packet_id: 0,
                c2d,
                fetching: false,
                refetch: false,
            });
            out.push(Action::Send(Packet::ConnectAck(ConnectAck {
                return_code: ConnectAckReason::ConnectionAccepted,
                session_present,
            })));
            // A resumed persistent session gets what was queued while it was away.
            live.fetch(limits, out);
            Next::To(Phase::Live(live))
        }
        Input::Refused(code) => {
            let return_code = match code {
                ConnectAckReason::ConnectionAccepted => ConnectAckReason::ServiceUnavailable,
                other => other,
            };
            out.push(Action::Send(Packet::ConnectAck(ConnectAck {
                return_code,
                session_present: false,
            })));
            out.push(Action::Close(End::Refused));
            Next::Ended
        }
        // No session yet: the stream ended, or a packet came that the driver was not to read
        // before the decision.
        Input::Closed(_) | Input::Kick(_) | Input::Packet(_) => {
            out.push(Action::Close(End::Refused));
            Next::Ended
        }
        _ => Next::Stay,
    }
}

impl Live {
    fn handle(
        &mut self,
        input: Input,
        limits: &Limits,
        now_ms: i64,
        out: &mut Vec<Action>,
    ) -> Result<(), End> {
        match input {
            Input::Packet(packet) => {
                if let Some(what) = nul_in(&packet) {
                    return Err(End::Closed(format!(
                        "protocol error: {what} contains U+0000, which MQTT 3.1.1 forbids (1.5.3)"
                    )));
                }
                // The keep-alive counts from the device's last packet: traffic to the device
                // does not extend it.
                self.last_packet_ms = now_ms;
                self.packet(packet, limits, out)
            }
            Input::Closed(reason) | Input::Kick(reason) => Err(End::Closed(reason)),
            Input::Tick => {
                // A SAS session ends when its token does (Azure's rule).
                if let Some(expiry) = self.token_expiry_ms
                    && now_ms >= expiry
                {
                    return Err(End::TokenExpired(expiry.div_euclid(1000)));
                }
                if now_ms >= self.last_packet_ms.saturating_add(self.keep_alive_ms) {
                    return Err(End::Closed(KEEP_ALIVE_EXPIRED.into()));
                }
                Ok(())
            }
            Input::Admitted { .. } | Input::Refused(_) => Ok(()),
            Input::Stored => {
                if let Some(owed) = self.owed.iter_mut().find(|o| o.unstored) {
                    owed.unstored = false;
                }
                self.acks(out);
                Ok(())
            }
            // Not durable: no PUBACK; the device sends it again.
            Input::StoreFailed(e) => Err(End::Closed(format!("telemetry not stored: {e}"))),
            Input::C2d(messages) => {
                self.deliver(messages, limits, out);
                Ok(())
            }
            Input::C2dQueued => {
                self.fetch(limits, out);
                Ok(())
            }
            Input::Desired(body) => {
                let version = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("$version").and_then(serde_json::Value::as_i64))
                    .unwrap_or_default();
                let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
                out.push(Action::Send(publish0(topic, body.into())));
                Ok(())
            }
            Input::Method { name, rid, payload } => {
                let topic = format!("$iothub/methods/POST/{name}/?$rid={rid}");
                out.push(Action::Send(publish0(topic, payload.into())));
                Ok(())
            }
            Input::TwinRead { rid, result } => {
                let (status, body) = match result {
                    Ok(twin) => (200, twin),
                    Err((status, message)) => (status, error_body(status, &message).into_bytes()),
                };
                let topic = format!("$iothub/twin/res/{status}/?$rid={rid}");
                out.push(Action::Send(publish0(topic, body.into())));
                Ok(())
            }
            Input::TwinReported { rid, result } => {
                let (topic, body) = match result {
                    Ok(version) => (
                        format!("$iothub/twin/res/204/?$rid={rid}&$version={version}"),
                        Bytes::new(),
                    ),
                    Err((status, message)) => (
                        format!("$iothub/twin/res/{status}/?$rid={rid}"),
                        error_body(status, &message).into_bytes().into(),
                    ),
                };
                out.push(Action::Send(publish0(topic, body)));
                Ok(())
            }
        }
    }

    fn packet(
        &mut self,
        packet: Packet,
        limits: &Limits,
        out: &mut Vec<Action>,
    ) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.publish(*p, out),
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => {
                let mut status = Vec::with_capacity(topic_filters.len());
                let mut granted = Vec::with_capacity(topic_filters.len());
                for (filter, qos) in &topic_filters {
                    if let Err(r) = subscription_allowed(&self.id, filter) {
                        return Err(End::Closed(format!("topic-not-allowed: {}", r.0)));
                    }
                    // QoS 2 is granted as 1 (azure-protocol 1.4).
                    let (q, qos) = if *qos == QoS::AtMostOnce {
                        (0, QoS::AtMostOnce)
                    } else {
                        (1, QoS::AtLeastOnce)
                    };
                    status.push(SubscribeReturnCode::Success(qos));
                    granted.push((filter.to_string(), q));
                }
                if self.id.module.is_none() {
                    let own = c2d_filter(&self.id);
                    if granted.iter().any(|(f, _)| *f == own) {
                        self.c2d = true;
                    }
                }
                out.push(Action::Subscribed(granted));
                out.push(Action::Send(Packet::SubscribeAck { packet_id, status }));
                self.fetch(limits, out);
                Ok(())
            }
            Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => {
                let filters: Vec<String> = topic_filters.iter().map(|f| f.to_string()).collect();
                let own = c2d_filter(&self.id);
                if filters.contains(&own) {
                    self.c2d = false;
                }
                out.push(Action::Unsubscribed(filters));
                out.push(Action::Send(Packet::UnsubscribeAck { packet_id }));
                Ok(())
            }
            Packet::PingRequest => {
                out.push(Action::Send(Packet::PingResponse));
                Ok(())
            }
            Packet::PublishAck { packet_id } => {
                if let Some(at) = self.inflight.iter().position(|(p, _)| *p == packet_id) {
                    let (_, queue_id) = self.inflight.swap_remove(at);
                    if self.inflight.is_empty() {
                        self.inflight = Vec::new();
                    }
                    // PUBACK completes the message (MQTT cannot reject or abandon).
                    out.push(Action::C2dComplete { queue_id });
                    self.fetch(limits, out);
                }
                Ok(())
            }
            Packet::Disconnect => Err(End::Clean),
            other => Err(End::Closed(format!("unexpected packet {other:?}"))),
        }
    }

    fn publish(&mut self, p: Publish, out: &mut Vec<Action>) -> Result<(), End> {
        if p.qos == QoS::ExactlyOnce {
            return Err(End::Closed(
                "QoS 2 publish (IoT Hub closes the connection)".into(),
            ));
        }
        let kind = classify_publish(&self.id, &p.topic)
            .map_err(|r| End::Closed(format!("topic-not-allowed: {}", r.0)))?;
        let owed = match p.qos {
            QoS::AtLeastOnce => p.packet_id,
            _ => None,
        };
        match kind {
            DevicePublish::Telemetry(mut props) => {
                if p.retain {
                    props
                        .application
                        .insert("mqtt-retain".into(), "true".into());
                }
                out.push(Action::Telemetry {
                    props,
                    body: p.payload,
                    ack: owed.is_some(),
                });
                if let Some(packet_id) = owed {
                    // The PUBACK waits for the commit, without holding up the next packets.
                    self.owed.push_back(Owed {
                        packet_id,
                        unstored: true,
                    });
                }
                return Ok(());
            }
            DevicePublish::TwinGet { rid } => out.push(Action::ReadTwin { rid }),
            DevicePublish::TwinReported { rid } => out.push(Action::PatchReported {
                rid,
                patch: p.payload.to_vec(),
            }),
            DevicePublish::MethodResponse { status, rid } => out.push(Action::MethodResponse {
                rid,
                status,
                payload: p.payload.to_vec(),
            }),
        }
        if let Some(packet_id) = owed {
            // After any telemetry still waiting for its commit.
            self.owed.push_back(Owed {
                packet_id,
                unstored: false,
            });
            self.acks(out);
        }
        Ok(())
    }

    /// Sends every owed PUBACK that is due, oldest first, up to the first telemetry that is not
    /// yet durable.
    fn acks(&mut self, out: &mut Vec<Action>) {
        while let Some(front) = self.owed.front()
            && !front.unstored
        {
            out.push(Action::Send(Packet::PublishAck {
                packet_id: front.packet_id,
            }));
            self.owed.pop_front();
        }
        if self.owed.is_empty() && self.owed.capacity() > 0 {
            self.owed = VecDeque::new();
        }
    }

    /// Asks for queued C2D messages while the device is subscribed and the window has room.
    fn fetch(&mut self, limits: &Limits, out: &mut Vec<Action>) {
        if !self.c2d {
            return;
        }
        let room = limits.c2d_window.saturating_sub(self.inflight.len());
        if room == 0 {
            return;
        }
        if self.fetching {
            self.refetch = true;
            return;
        }
        self.fetching = true;
        out.push(Action::FetchC2d {
            after: self.c2d_cursor,
            room,
        });
    }

    /// Sends the messages of a fetch, as many as the window has room for.
    fn deliver(&mut self, messages: Vec<C2dMessage>, limits: &Limits, out: &mut Vec<Action>) {
        self.fetching = false;
        let refetch = std::mem::take(&mut self.refetch);
        if !self.c2d {
            return;
        }
        for m in messages {
            if self.inflight.len() >= limits.c2d_window {
                break;
            }
            let Some(packet_id) = self.packet_id() else {
                break;
            };
            let topic = c2d_topic(&self.id.device, &m.system, &m.ack, &m.application);
            self.inflight.push((packet_id, m.queue_id));
            self.c2d_cursor = m.queue_id;
            out.push(Action::Send(Packet::Publish(Box::new(Publish {
                dup: false,
                retain: false,
                qos: QoS::AtLeastOnce,
                topic: topic.into(),
                packet_id: Some(packet_id),
                payload: m.body.into(),
                properties: None,
            }))));
        }
        if refetch {
            self.fetch(limits, out);
        }
    }

    /// The next packet id that is not in flight (wrapping, never 0).
    fn packet_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            let id = NonZeroU16::new(self.next_packet_id)?;
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return Some(id);
            }
        }
        None
    }

    /// The end of the session: the will (when the link dropped without DISCONNECT), then Close.
    fn end(&mut self, end: End, out: &mut Vec<Action>) {
        if matches!(end, End::Closed(_) | End::TokenExpired(_))
            && let Some(will) = self.will.take()
        {
            // The will is forwarded as telemetry, marked iothub-MessageType=Will
            // (azure-protocol 1.2), if it names the identity's own telemetry topic.
            if let Ok(mut props) = telemetry_topic(&self.id, &will.topic) {
                props
                    .application
                    .insert("iothub-MessageType".into(), "Will".into());
                out.push(Action::Will {
                    props,
                    body: will.message,
                });
            }
        }
        out.push(Action::Close(end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle session's memory: the machine, and its live state on the heap.
    #[test]
    fn sizes() {
        println!(
            "size_of::<Machine>() = {}, size_of::<Live>() = {}, size_of::<PendingWill>() = {}",
            size_of::<Machine>(),
            size_of::<Live>(),
            size_of::<PendingWill>()
        );
        assert!(size_of::<Machine>() <= 64);
        assert!(size_of::<Live>() <= 192);
    }
}
