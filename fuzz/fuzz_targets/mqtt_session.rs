//! The MQTT session state machine fed arbitrary bytes from a device, with a simulated hub
//! answering its actions.
//!
//! An input is one flags byte (the hub's behaviour, below) and then the bytes the device sends,
//! decoded with rmqtt-codec's `Codec` as a driver would, packet by packet while the machine is
//! reading. Between packets the hub queues C2D messages, pushes desired patches and method
//! calls, and ticks whenever the machine's deadline has passed; the device's clock moves on.
//! Flags: bit 0 stores telemetry late (every other packet), bit 1 fails every fifth store, bits
//! 2-3 how many C2D messages a fetch returns (3: one more than the room), bit 4 connects as a
//! module, bit 5 gives the session a SAS token expiry, bit 6 resumes a persistent session
//! subscribed to C2D, bit 7 kicks at the end (else the stream ends); bits 6 and 7 together
//! refuse the CONNECT.
//!
//! Invariants: no panic; `Close` is the last action and nothing follows it; the machine reads
//! no more than `unacked_in` owed PUBACKs; in-flight C2D never exceeds the window, with unique
//! non-zero packet ids; the PUBACKs sent are exactly the packet ids of the device's QoS 1
//! PUBLISHes, in order; a device PUBACK for an in-flight message completes exactly it.
#![no_main]

use std::collections::{BTreeMap, VecDeque};

use bytes::BytesMut;
use certhub_core::{C2dMessage, ClientId};
use certhub_mqtt::{Action, End, Input, Limits, Machine};
use libfuzzer_sys::fuzz_target;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{Codec, ConnectAckReason, Packet};
use tokio_util::codec::Decoder;

const MAX_PACKET: u32 = 256 * 1024 + 4096;
const C2D: &str = "devices/dev1/messages/devicebound/#";

struct Sim {
    m: Machine,
    limits: Limits,
    flags: u8,
    now: i64,
    /// Hub answers not yet fed.
    answers: VecDeque<Input>,
    /// Acknowledged telemetry submitted and not yet answered.
    stores: usize,
    stores_answered: usize,
    /// Packet ids of the device's QoS 1 PUBLISHes whose PUBACK has not been sent, and whether
    /// each is telemetry not yet stored.
    expected_acks: VecDeque<(u16, bool)>,
    /// C2D messages in flight: packet id -> queue id.
    inflight: BTreeMap<u16, i64>,
    admitted: bool,
}

impl Sim {
    fn feed(&mut self, input: Input) {
        let was_ended = self.m.ended();
        // What this input should produce, to check against the actions.
        let mut completes = None;
        // The queue ids of the C2D messages this input delivers, in order.
        let mut delivered: VecDeque<i64> = match &input {
            Input::C2d(messages) => messages.iter().map(|m| m.queue_id).collect(),
            _ => VecDeque::new(),
        };
        if matches!(input, Input::Stored) {
            // The oldest acknowledged telemetry is durable.
            if let Some(e) = self.expected_acks.iter_mut().find(|e| e.1) {
                e.1 = false;
            }
        }
        if let Input::Packet(p) = &input {
            match p {
                Packet::Publish(p) if p.qos == QoS::AtLeastOnce && self.m.is_live() => {
                    if let Some(id) = p.packet_id {
                        self.expected_acks.push_back((id.get(), false));
                    }
                }
                Packet::PublishAck { packet_id } if self.m.is_live() => {
                    completes = self.inflight.remove(&packet_id.get());
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        self.m.handle(input, self.now, &mut out);
        if was_ended {
            assert!(out.is_empty(), "actions after Close: {out:?}");
            return;
        }
        let mut completed = None;
        for (i, action) in out.iter().enumerate() {
            let last = i + 1 == out.len();
            match action {
                Action::Close(end) => {
                    assert!(last, "Close is not the last action: {out:?}");
                    assert!(self.m.ended());
                    if !self.admitted {
                        assert_eq!(*end, End::Refused);
                    }
                }
                Action::Will { .. } => {
                    assert!(
                        matches!(
                            out.last(),
                            Some(Action::Close(End::Closed(_) | End::TokenExpired(_)))
                        ),
                        "a will without an abnormal end: {out:?}"
                    );
                }
                Action::Send(Packet::PublishAck { packet_id }) => {
                    assert_eq!(
                        self.expected_acks.pop_front(),
                        Some((packet_id.get(), false)),
                        "PUBACK out of order, or before its telemetry was stored"
                    );
                }
                Action::Send(Packet::Publish(p)) if p.qos == QoS::AtLeastOnce => {
                    let id = p.packet_id.expect("a QoS 1 PUBLISH has a packet id").get();
                    let queue_id = delivered
                        .pop_front()
                        .expect("a C2D PUBLISH answers a fetch");
                    assert!(id != 0);
                    assert!(
                        self.inflight.insert(id, queue_id).is_none(),
                        "packet id {id} reused"
                    );
                    assert!(self.inflight.len() <= self.limits.c2d_window);
                    assert!(p.topic.starts_with("devices/dev1/messages/devicebound/"));
                }
                Action::Send(Packet::Publish(p)) => {
                    assert_eq!(p.qos, QoS::AtMostOnce);
                    assert!(p.topic.starts_with("$iothub/"));
                }
                Action::Send(Packet::ConnectAck(_)) => assert!(i == 0),
                Action::Send(_) => {}
                Action::Admit(_) => {
                    let id = if self.flags & 0x10 != 0 {
                        "dev1/mod1"
                    } else {
                        "dev1"
                    };
                    let answer = if self.flags & 0xC0 == 0xC0 {
                        Input::Refused(ConnectAckReason::NotAuthorized)
                    } else {
                        self.admitted = true;
                        let mut subs = BTreeMap::new();
                        if self.flags & 0x40 != 0 {
                            subs.insert(C2D.to_string(), 1);
                        }
                        Input::Admitted {
                            id: ClientId::parse(id).expect("a valid client id"),
                            subs,
                            session_present: self.flags & 0x40 != 0,
                            token_expiry_ms: (self.flags & 0x20 != 0).then_some(self.now + 600_000),
                        }
                    };
                    self.answers.push_back(answer);
                }
                Action::Telemetry { ack, .. } => {
                    if *ack {
                        self.stores += 1;
                        // The PUBLISH just fed: its PUBACK now waits for the store.
                        let back = self.expected_acks.back_mut().expect("a QoS 1 PUBLISH");
                        assert!(!back.1);
                        back.1 = true;
                    }
                }
                Action::ReadTwin { rid } => self.answers.push_back(Input::TwinRead {
                    rid: rid.clone(),
                    result: if rid.len() % 2 == 0 {
                        Ok(b"{\"desired\":{}}".to_vec())
                    } else {
                        Err((500, "the twin could not be read".into()))
                    },
                }),
                Action::PatchReported { rid, patch } => {
                    self.answers.push_back(Input::TwinReported {
                        rid: rid.clone(),
                        result: if serde_json::from_slice::<serde_json::Value>(patch).is_ok() {
                            Ok(2)
                        } else {
                            Err((400, "the reported patch is not JSON".into()))
                        },
                    })
                }
                Action::FetchC2d { after, room } => {
                    assert!(*room > 0);
                    assert!(self.inflight.len() + room <= self.limits.c2d_window);
                    let count = match (self.flags >> 2) & 3 {
                        3 => room + 1,
                        n => usize::from(n).min(*room),
                    };
                    let messages = (1..=count as i64)
                        .map(|k| C2dMessage {
                            queue_id: after + k,
                            system: BTreeMap::from([("messageId".into(), format!("m{k}"))]),
                            ack: "full".into(),
                            application: BTreeMap::from([("a b".into(), None)]),
                            body: vec![b'x'; k as usize],
                        })
                        .collect();
                    self.answers.push_back(Input::C2d(messages));
                }
                Action::C2dComplete { queue_id } => {
                    assert!(completed.is_none());
                    completed = Some(*queue_id);
                }
                Action::MethodResponse { .. } | Action::Subscribed(_) | Action::Unsubscribed(_) => {
                }
            }
        }
        // A device PUBACK completes the message in flight under its id, and only that.
        assert_eq!(completes, completed);
        if self.m.is_live() {
            assert_eq!(self.m.c2d_in_flight(), self.inflight.len());
            assert!(self.m.c2d_in_flight() <= self.limits.c2d_window);
            assert_eq!(self.m.owed_pubacks(), self.expected_acks.len());
            assert!(self.m.owed_pubacks() <= self.limits.unacked_in);
        }
        if !self.m.ended() {
            assert!(!matches!(out.last(), Some(Action::Close(_))));
        }
    }

    /// Feeds the hub's pending answers (telemetry stores too, unless `late`).
    fn settle(&mut self, late: bool) {
        for _ in 0..1_000 {
            if self.m.ended() {
                return;
            }
            if let Some(answer) = self.answers.pop_front() {
                self.feed(answer);
            } else if !late && self.stores > 0 {
                self.stores -= 1;
                self.stores_answered += 1;
                let input = if self.flags & 2 != 0 && self.stores_answered % 5 == 0 {
                    Input::StoreFailed("disk full".into())
                } else {
                    Input::Stored
                };
                self.feed(input);
            } else {
                return;
            }
        }
    }

    fn tick_if_due(&mut self) {
        if !self.m.ended() && self.now >= self.m.deadline_ms() {
            self.feed(Input::Tick);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        unacked_in: 8,
        c2d_window: 4,
        ..Limits::default()
    };
    let now = 1_800_000_000_000;
    let mut sim = Sim {
        m: Machine::new(limits, now),
        limits,
        flags,
        now,
        answers: VecDeque::new(),
        stores: 0,
        stores_answered: 0,
        expected_acks: VecDeque::new(),
        inflight: BTreeMap::new(),
        admitted: false,
    };
    let mut codec = Codec::new(MAX_PACKET);
    let mut buf = BytesMut::from(wire);
    let mut i: usize = 0;
    while !sim.m.ended() {
        if !sim.m.reading() {
            // Reading waits for the hub: the CONNECT decision, or owed PUBACKs.
            sim.settle(false);
            if !sim.m.reading() {
                break;
            }
        }
        sim.tick_if_due();
        if sim.m.ended() {
            break;
        }
        let input = match codec.decode(&mut buf) {
            Ok(Some((packet, _))) => Input::Packet(packet),
            Ok(None) => break,
            Err(e) => Input::Closed(format!("protocol error: {e}")),
        };
        sim.feed(input);
        i += 1;
        sim.now += [0, 1_000, 45_000, 200_000][(i * 7 + usize::from(flags)) % 4];
        if sim.m.is_live() {
            if i % 4 == 1 {
                sim.feed(Input::C2dQueued);
            }
            if i % 5 == 2 {
                sim.feed(Input::Desired(br#"{"$version":3}"#.to_vec()));
            }
            if i % 7 == 3 {
                sim.feed(Input::Method {
                    name: "reboot".into(),
                    rid: i.to_string(),
                    payload: b"{}".to_vec(),
                });
            }
            if i % 11 == 5 {
                sim.feed(Input::Tick);
            }
        }
        sim.settle(flags & 1 != 0 && i % 2 == 1);
    }
    sim.settle(false);
    if !sim.m.ended() {
        let end = if flags & 0x80 != 0 {
            Input::Kick("revoked".into())
        } else {
            Input::Closed("the device closed the connection".into())
        };
        sim.feed(end);
    }
    assert!(sim.m.ended());
    // Nothing follows Close.
    sim.feed(Input::Tick);
    sim.feed(Input::Packet(Packet::PingRequest));
});
