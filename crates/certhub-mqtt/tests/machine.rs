//! The session state machine driven directly: packets and hub events in, the exact actions out.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::num::NonZeroU16;

use bytes::Bytes;
use certhub_core::{C2dMessage, ClientId, MessageProperties, c2d_topic};
use certhub_mqtt::{Action, Connect, End, Input, Limits, Machine, error_body};
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::v3::{ConnectAck, ConnectAckReason, LastWill, Packet, SubscribeReturnCode};

const C2D: &str = "devices/dev1/messages/devicebound/#";
const EVENTS: &str = "devices/dev1/messages/events/";

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn connect_packet(client_id: &str, keep_alive: u16, will: Option<(&str, &[u8])>) -> Packet {
    Packet::Connect(Box::new(rmqtt_codec::v3::Connect {
        protocol: Protocol(4),
        clean_session: true,
        keep_alive,
        last_will: will.map(|(topic, message)| LastWill {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            message: Bytes::copy_from_slice(message),
        }),
        client_id: client_id.into(),
        username: Some("hub/dev1/?api-version=2021-04-12".into()),
        password: None,
        cert: None,
    }))
}

fn step(m: &mut Machine, input: Input, now: i64) -> Vec<Action> {
    let mut out = Vec::new();
    m.handle(input, now, &mut out);
    out
}

fn admitted(client_id: &str, subs: &[&str], present: bool, token: Option<i64>) -> Input {
    Input::Admitted {
        id: ClientId::parse(client_id).unwrap(),
        subs: subs.iter().map(|s| (s.to_string(), 1)).collect(),
        session_present: present,
        token_expiry_ms: token,
    }
}

fn connack(code: ConnectAckReason, session_present: bool) -> Action {
    Action::Send(Packet::ConnectAck(ConnectAck {
        return_code: code,
        session_present,
    }))
}

/// A session of `client_id` admitted at 0, with its CONNACK checked.
fn live_with(
    limits: Limits,
    client_id: &str,
    keep_alive: u16,
    will: Option<(&str, &[u8])>,
    token: Option<i64>,
) -> Machine {
    let mut m = Machine::new(limits, 0);
    let out = step(
        &mut m,
        Input::Packet(connect_packet(client_id, keep_alive, will)),
        0,
    );
    assert!(matches!(out.as_slice(), [Action::Admit(_)]), "{out:?}");
    let out = step(&mut m, admitted(client_id, &[], false, token), 0);
    assert_eq!(
        out,
        vec![connack(ConnectAckReason::ConnectionAccepted, false)]
    );
    m
}

fn live(client_id: &str) -> Machine {
    live_with(Limits::default(), client_id, 60, None, None)
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, payload: &[u8]) -> Input {
    Input::Packet(Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos,
        topic: topic.into(),
        packet_id: packet_id.map(pid),
        payload: Bytes::copy_from_slice(payload),
        properties: None,
    })))
}

fn publish0(topic: &str, payload: &[u8]) -> Action {
    Action::Send(Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos: QoS::AtMostOnce,
        topic: topic.into(),
        packet_id: None,
        payload: Bytes::copy_from_slice(payload),
        properties: None,
    })))
}

fn puback(n: u16) -> Action {
    Action::Send(Packet::PublishAck { packet_id: pid(n) })
}

fn telemetry(body: &[u8], ack: bool) -> Action {
    Action::Telemetry {
        props: MessageProperties::default(),
        body: Bytes::copy_from_slice(body),
        ack,
    }
}

fn subscribe(n: u16, filters: &[(&str, QoS)]) -> Input {
    Input::Packet(Packet::Subscribe {
        packet_id: pid(n),
        topic_filters: filters.iter().map(|(f, q)| ((*f).into(), *q)).collect(),
    })
}

fn closed(reason: &str) -> Action {
    Action::Close(End::Closed(reason.into()))
}

fn message(queue_id: i64) -> C2dMessage {
    C2dMessage {
        queue_id,
        system: BTreeMap::from([("messageId".to_string(), format!("m{queue_id}"))]),
        ack: "none".into(),
        application: BTreeMap::from([("k".to_string(), Some("v".to_string()))]),
        body: format!("body {queue_id}").into_bytes(),
    }
}

fn c2d_publish(packet_id: u16, m: &C2dMessage) -> Action {
    let device = ClientId::parse("dev1").unwrap().device;
    Action::Send(Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos: QoS::AtLeastOnce,
        topic: c2d_topic(&device, &m.system, &m.ack, &m.application).into(),
        packet_id: Some(pid(packet_id)),
        payload: Bytes::from(m.body.clone()),
        properties: None,
    })))
}

/// A device subscribed to its C2D topic, with the first fetch asked.
fn subscribed_to_c2d() -> Machine {
    let mut m = live("dev1");
    let out = step(&mut m, subscribe(1, &[(C2D, QoS::AtLeastOnce)]), 1);
    assert_eq!(
        out,
        vec![
            Action::Subscribed(vec![(C2D.into(), 1)]),
            Action::Send(Packet::SubscribeAck {
                packet_id: pid(1),
                status: vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)],
            }),
            Action::FetchC2d { after: 0, room: 16 },
        ]
    );
    m
}

// --- CONNECT ---

#[test]
fn connect_is_admitted_by_the_driver() {
    let mut m = Machine::new(Limits::default(), 1_000);
    assert!(m.reading());
    assert_eq!(m.deadline_ms(), 11_000);
    let out = step(
        &mut m,
        Input::Packet(connect_packet("dev1", 30, None)),
        1_500,
    );
    assert_eq!(
        out,
        vec![Action::Admit(Connect {
            client_id: "dev1".into(),
            username: Some("hub/dev1/?api-version=2021-04-12".into()),
            password: None,
            clean_session: true,
            keep_alive: 30,
        })]
    );
    // No more packets and no deadline while the driver decides.
    assert!(!m.reading());
    assert_eq!(m.deadline_ms(), i64::MAX);
    let out = step(&mut m, admitted("dev1", &[], false, None), 2_000);
    assert_eq!(
        out,
        vec![connack(ConnectAckReason::ConnectionAccepted, false)]
    );
    assert!(m.is_live() && m.reading());
    // 30 s asked: 45 s from the admission.
    assert_eq!(m.deadline_ms(), 47_000);
}

#[test]
fn a_refused_connect_gets_its_connack_and_ends() {
    let mut m = Machine::new(Limits::default(), 0);
    step(&mut m, Input::Packet(connect_packet("dev1", 30, None)), 0);
    let out = step(&mut m, Input::Refused(ConnectAckReason::NotAuthorized), 10);
    assert_eq!(
        out,
        vec![
            connack(ConnectAckReason::NotAuthorized, false),
            Action::Close(End::Refused)
        ]
    );
    assert!(m.ended() && !m.reading());
    // Everything after Close is ignored.
    assert!(step(&mut m, Input::Packet(Packet::PingRequest), 20).is_empty());
    assert!(step(&mut m, admitted("dev1", &[], false, None), 20).is_empty());
    assert!(step(&mut m, Input::Tick, i64::MAX).is_empty());
}

#[test]
fn a_refusal_code_of_zero_is_sent_as_server_unavailable() {
    let mut m = Machine::new(Limits::default(), 0);
    step(&mut m, Input::Packet(connect_packet("dev1", 30, None)), 0);
    let out = step(
        &mut m,
        Input::Refused(ConnectAckReason::ConnectionAccepted),
        0,
    );
    assert_eq!(
        out,
        vec![
            connack(ConnectAckReason::ServiceUnavailable, false),
            Action::Close(End::Refused)
        ]
    );
}

#[test]
fn nul_in_a_connect_string_closes_without_connack() {
    for packet in [
        connect_packet("dev\0", 30, None),
        connect_packet("dev1", 30, Some(("devices/dev1/messages/events/\0", b"x"))),
        {
            let mut p = connect_packet("dev1", 30, None);
            if let Packet::Connect(c) = &mut p {
                c.username = Some("hub/\0".into());
            }
            p
        },
    ] {
        let mut m = Machine::new(Limits::default(), 0);
        let out = step(&mut m, Input::Packet(packet), 0);
        assert_eq!(out, vec![Action::Close(End::Refused)]);
        assert!(m.ended());
    }
}

#[test]
fn the_first_packet_must_be_connect() {
    let mut m = Machine::new(Limits::default(), 0);
    let out = step(&mut m, Input::Packet(Packet::PingRequest), 0);
    assert_eq!(out, vec![Action::Close(End::Refused)]);
    let mut m = Machine::new(Limits::default(), 0);
    let out = step(&mut m, publish(EVENTS, QoS::AtMostOnce, None, b"x"), 0);
    assert_eq!(out, vec![Action::Close(End::Refused)]);
}

#[test]
fn connect_timeout() {
    let mut m = Machine::new(Limits::default(), 0);
    assert!(step(&mut m, Input::Tick, 9_999).is_empty());
    assert!(!m.ended());
    let out = step(&mut m, Input::Tick, 10_000);
    assert_eq!(out, vec![Action::Close(End::Refused)]);
    assert!(m.ended());
}

#[test]
fn a_stream_that_ends_before_the_decision_has_no_session() {
    let mut m = Machine::new(Limits::default(), 0);
    step(&mut m, Input::Packet(connect_packet("dev1", 30, None)), 0);
    let out = step(
        &mut m,
        Input::Closed("the device closed the connection".into()),
        1,
    );
    assert_eq!(out, vec![Action::Close(End::Refused)]);
}

// --- keep-alive and token expiry ---

#[test]
fn keep_alive_expires_at_one_and_a_half_times() {
    let mut m = live("dev1");
    assert_eq!(m.deadline_ms(), 90_000);
    assert!(step(&mut m, Input::Tick, 89_999).is_empty());
    assert_eq!(
        step(&mut m, Input::Tick, 90_000),
        vec![closed("keep-alive expired")]
    );
    assert!(m.ended());
}

#[test]
fn keep_alive_is_extended_by_device_packets_only() {
    let mut m = live("dev1");
    assert_eq!(
        step(&mut m, Input::Packet(Packet::PingRequest), 50_000),
        vec![Action::Send(Packet::PingResponse)]
    );
    assert_eq!(m.deadline_ms(), 140_000);
    // Traffic to the device does not extend it.
    let out = step(
        &mut m,
        Input::Desired(br#"{"$version":2}"#.to_vec()),
        100_000,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(m.deadline_ms(), 140_000);
    assert!(step(&mut m, Input::Tick, 139_999).is_empty());
    assert_eq!(
        step(&mut m, Input::Tick, 140_000),
        vec![closed("keep-alive expired")]
    );
}

#[test]
fn keep_alive_zero_and_large_are_the_cap() {
    let m = live_with(Limits::default(), "dev1", 0, None, None);
    assert_eq!(m.deadline_ms(), 1_767_000);
    let m = live_with(Limits::default(), "dev1", 2_000, None, None);
    assert_eq!(m.deadline_ms(), 1_767_000);
    let m = live_with(Limits::default(), "dev1", 1_000, None, None);
    assert_eq!(m.deadline_ms(), 1_500_000);
}

#[test]
fn a_sas_session_ends_with_its_token() {
    let will = Some((EVENTS, &b"gone"[..]));
    let mut m = live_with(Limits::default(), "dev1", 60, will, Some(30_000));
    assert_eq!(m.deadline_ms(), 30_000);
    // Packets do not extend a token.
    step(&mut m, Input::Packet(Packet::PingRequest), 29_000);
    assert_eq!(m.deadline_ms(), 30_000);
    assert!(step(&mut m, Input::Tick, 29_999).is_empty());
    let mut props = MessageProperties::default();
    props
        .application
        .insert("iothub-MessageType".into(), "Will".into());
    assert_eq!(
        step(&mut m, Input::Tick, 30_000),
        vec![
            Action::Will {
                props,
                body: Bytes::from_static(b"gone")
            },
            Action::Close(End::TokenExpired(30)),
        ]
    );
}

// --- persistent sessions ---

#[test]
fn a_resumed_session_fetches_c2d_at_once() {
    let mut m = Machine::new(Limits::default(), 0);
    step(&mut m, Input::Packet(connect_packet("dev1", 60, None)), 0);
    let out = step(
        &mut m,
        admitted("dev1", &[C2D, "$iothub/methods/POST/#"], true, None),
        0,
    );
    assert_eq!(
        out,
        vec![
            connack(ConnectAckReason::ConnectionAccepted, true),
            Action::FetchC2d { after: 0, room: 16 }
        ]
    );
}

#[test]
fn a_resumed_session_without_c2d_does_not_fetch() {
    let mut m = Machine::new(Limits::default(), 0);
    step(&mut m, Input::Packet(connect_packet("dev1", 60, None)), 0);
    let out = step(
        &mut m,
        admitted("dev1", &["$iothub/methods/POST/#"], true, None),
        0,
    );
    assert_eq!(
        out,
        vec![connack(ConnectAckReason::ConnectionAccepted, true)]
    );
    assert!(step(&mut m, Input::C2dQueued, 1).is_empty());
}

// --- C2D ---

#[test]
fn the_c2d_window_holds_sixteen() {
    let mut m = subscribed_to_c2d();
    let messages: Vec<C2dMessage> = (1..=16).map(message).collect();
    let out = step(&mut m, Input::C2d(messages.clone()), 2);
    let expected: Vec<Action> = messages
        .iter()
        .enumerate()
        .map(|(i, msg)| c2d_publish(i as u16 + 1, msg))
        .collect();
    assert_eq!(out, expected);
    assert_eq!(m.c2d_in_flight(), 16);
    // The 17th waits: no fetch while the window is full.
    assert!(step(&mut m, Input::C2dQueued, 3).is_empty());
    // An unknown packet id is ignored.
    let ack = |n| Input::Packet(Packet::PublishAck { packet_id: pid(n) });
    assert!(step(&mut m, ack(99), 4).is_empty());
    assert_eq!(
        step(&mut m, ack(3), 5),
        vec![
            Action::C2dComplete { queue_id: 3 },
            Action::FetchC2d { after: 16, room: 1 }
        ]
    );
    let out = step(&mut m, Input::C2d(vec![message(17)]), 6);
    assert_eq!(out, vec![c2d_publish(17, &message(17))]);
    assert_eq!(m.c2d_in_flight(), 16);
}

#[test]
fn one_fetch_at_a_time() {
    let mut m = subscribed_to_c2d();
    // Asked while the first fetch is unanswered: made once it is answered.
    assert!(step(&mut m, Input::C2dQueued, 2).is_empty());
    let out = step(&mut m, Input::C2d(vec![message(5)]), 3);
    assert_eq!(
        out,
        vec![
            c2d_publish(1, &message(5)),
            Action::FetchC2d { after: 5, room: 15 }
        ]
    );
    // An empty answer, nothing more to ask.
    assert!(step(&mut m, Input::C2d(Vec::new()), 4).is_empty());
    assert_eq!(
        step(&mut m, Input::C2dQueued, 5),
        vec![Action::FetchC2d { after: 5, room: 15 }]
    );
}

#[test]
fn an_answer_beyond_the_window_is_cut() {
    let limits = Limits {
        c2d_window: 2,
        ..Limits::default()
    };
    let mut m = live_with(limits, "dev1", 60, None, None);
    let out = step(&mut m, subscribe(1, &[(C2D, QoS::AtLeastOnce)]), 1);
    assert_eq!(out.last(), Some(&Action::FetchC2d { after: 0, room: 2 }));
    let out = step(
        &mut m,
        Input::C2d(vec![message(1), message(2), message(3)]),
        2,
    );
    assert_eq!(
        out,
        vec![c2d_publish(1, &message(1)), c2d_publish(2, &message(2))]
    );
    let out = step(
        &mut m,
        Input::Packet(Packet::PublishAck { packet_id: pid(1) }),
        3,
    );
    // The cursor is that of the last message sent: the third comes again.
    assert_eq!(
        out,
        vec![
            Action::C2dComplete { queue_id: 1 },
            Action::FetchC2d { after: 2, room: 1 }
        ]
    );
    // Packet ids skip those in flight (2) and wrap past none.
    let out = step(&mut m, Input::C2d(vec![message(3)]), 4);
    assert_eq!(out, vec![c2d_publish(3, &message(3))]);
}

#[test]
fn unsubscribing_stops_c2d() {
    let mut m = subscribed_to_c2d();
    let out = step(
        &mut m,
        Input::Packet(Packet::Unsubscribe {
            packet_id: pid(2),
            topic_filters: vec![C2D.into()],
        }),
        2,
    );
    assert_eq!(
        out,
        vec![
            Action::Unsubscribed(vec![C2D.into()]),
            Action::Send(Packet::UnsubscribeAck { packet_id: pid(2) })
        ]
    );
    // The pending answer is dropped.
    assert!(step(&mut m, Input::C2d(vec![message(1)]), 3).is_empty());
    assert!(step(&mut m, Input::C2dQueued, 4).is_empty());
}

#[test]
fn modules_get_no_c2d() {
    let mut m = live("dev1/mod1");
    let out = step(&mut m, subscribe(1, &[(C2D, QoS::AtLeastOnce)]), 1);
    assert_eq!(
        out,
        vec![closed(
            "topic-not-allowed: dev1/mod1 may not subscribe to \"devices/dev1/messages/devicebound/#\"; \
             it may subscribe to devices/dev1/modules/mod1/inputs/# and the $iothub twin and method topics"
        )]
    );
    // Even a resumed session naming the device's C2D filter fetches nothing.
    let mut m = Machine::new(Limits::default(), 0);
    step(
        &mut m,
        Input::Packet(connect_packet("dev1/mod1", 60, None)),
        0,
    );
    let out = step(&mut m, admitted("dev1/mod1", &[C2D], true, None), 0);
    assert_eq!(
        out,
        vec![connack(ConnectAckReason::ConnectionAccepted, true)]
    );
}

// --- PUBACK ordering ---

#[test]
fn pubacks_follow_publish_order() {
    let mut m = live("dev1");
    assert_eq!(
        step(&mut m, publish(EVENTS, QoS::AtLeastOnce, Some(1), b"a"), 1),
        vec![telemetry(b"a", true)]
    );
    // A twin GET at QoS 1 waits for the telemetry before it.
    assert_eq!(
        step(
            &mut m,
            publish("$iothub/twin/GET/?$rid=7", QoS::AtLeastOnce, Some(2), b""),
            2
        ),
        vec![Action::ReadTwin { rid: "7".into() }]
    );
    assert_eq!(
        step(&mut m, publish(EVENTS, QoS::AtLeastOnce, Some(3), b"c"), 3),
        vec![telemetry(b"c", true)]
    );
    assert_eq!(
        step(&mut m, publish(EVENTS, QoS::AtMostOnce, None, b"d"), 4),
        vec![telemetry(b"d", false)]
    );
    assert_eq!(m.owed_pubacks(), 3);
    assert_eq!(step(&mut m, Input::Stored, 5), vec![puback(1), puback(2)]);
    assert_eq!(step(&mut m, Input::Stored, 6), vec![puback(3)]);
    assert_eq!(m.owed_pubacks(), 0);
    // Nothing owed: a QoS 1 method response is acknowledged at once.
    assert_eq!(
        step(
            &mut m,
            publish(
                "$iothub/methods/res/200/?$rid=9",
                QoS::AtLeastOnce,
                Some(4),
                b"{}"
            ),
            7
        ),
        vec![
            Action::MethodResponse {
                rid: "9".into(),
                status: 200,
                payload: b"{}".to_vec()
            },
            puback(4)
        ]
    );
}

#[test]
fn reading_stops_at_unacked_in() {
    let limits = Limits {
        unacked_in: 2,
        ..Limits::default()
    };
    let mut m = live_with(limits, "dev1", 60, None, None);
    step(&mut m, publish(EVENTS, QoS::AtLeastOnce, Some(1), b"a"), 1);
    assert!(m.reading());
    step(&mut m, publish(EVENTS, QoS::AtLeastOnce, Some(2), b"b"), 2);
    assert!(!m.reading());
    assert_eq!(step(&mut m, Input::Stored, 3), vec![puback(1)]);
    assert!(m.reading());
}

#[test]
fn a_failed_store_closes_without_puback() {
    let will = Some((EVENTS, &b"w"[..]));
    let mut m = live_with(Limits::default(), "dev1", 60, will, None);
    step(&mut m, publish(EVENTS, QoS::AtLeastOnce, Some(1), b"a"), 1);
    let out = step(&mut m, Input::StoreFailed("disk full".into()), 2);
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Action::Will { .. }));
    assert_eq!(out[1], closed("telemetry not stored: disk full"));
}

#[test]
fn retain_is_an_application_property() {
    let mut m = live("dev1");
    let mut p = Publish {
        dup: false,
        retain: true,
        qos: QoS::AtMostOnce,
        topic: "devices/dev1/messages/events/%24.mid=1&a=b".into(),
        packet_id: None,
        payload: Bytes::from_static(b"x"),
        properties: None,
    };
    let out = step(
        &mut m,
        Input::Packet(Packet::Publish(Box::new(p.clone()))),
        1,
    );
    let mut props = MessageProperties::default();
    props.system.insert("messageId".into(), "1".into());
    props.application.insert("a".into(), "b".into());
    props
        .application
        .insert("mqtt-retain".into(), "true".into());
    assert_eq!(
        out,
        vec![Action::Telemetry {
            props,
            body: Bytes::from_static(b"x"),
            ack: false
        }]
    );
    p.retain = false;
    let out = step(&mut m, Input::Packet(Packet::Publish(Box::new(p))), 2);
    let Action::Telemetry { props, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(!props.application.contains_key("mqtt-retain"));
}

// --- refusals ---

#[test]
fn another_devices_topic_closes_the_session() {
    let mut m = live("dev1");
    let out = step(
        &mut m,
        publish(
            "devices/dev2/messages/events/",
            QoS::AtLeastOnce,
            Some(1),
            b"x",
        ),
        1,
    );
    assert_eq!(
        out,
        vec![closed(
            "topic-not-allowed: dev1 may publish telemetry only to devices/dev1/messages/events/..., \
             not to \"devices/dev2/messages/events/\""
        )]
    );
    let mut m = live("dev1");
    let out = step(
        &mut m,
        subscribe(
            1,
            &[
                ("$iothub/methods/POST/#", QoS::AtMostOnce),
                ("devices/dev2/messages/devicebound/#", QoS::AtLeastOnce),
            ],
        ),
        1,
    );
    // No SUBACK and nothing recorded: the whole SUBSCRIBE is refused.
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0], Action::Close(End::Closed(r)) if r.starts_with("topic-not-allowed: dev1 may not subscribe to \"devices/dev2/"))
    );
}

#[test]
fn qos2_publish_closes() {
    let mut m = live("dev1");
    let out = step(&mut m, publish(EVENTS, QoS::ExactlyOnce, Some(1), b"x"), 1);
    assert_eq!(
        out,
        vec![closed("QoS 2 publish (IoT Hub closes the connection)")]
    );
}

#[test]
fn qos2_subscription_is_granted_as_1() {
    let mut m = live("dev1");
    let out = step(
        &mut m,
        subscribe(
            5,
            &[
                ("$iothub/twin/res/#", QoS::ExactlyOnce),
                ("$iothub/methods/POST/#", QoS::AtMostOnce),
            ],
        ),
        1,
    );
    assert_eq!(
        out,
        vec![
            Action::Subscribed(vec![
                ("$iothub/twin/res/#".into(), 1),
                ("$iothub/methods/POST/#".into(), 0)
            ]),
            Action::Send(Packet::SubscribeAck {
                packet_id: pid(5),
                status: vec![
                    SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    SubscribeReturnCode::Success(QoS::AtMostOnce)
                ],
            }),
        ]
    );
}

#[test]
fn nul_in_a_topic_closes_the_session() {
    let mut m = live("dev1");
    let out = step(
        &mut m,
        publish(
            "devices/dev1/messages/events/\0",
            QoS::AtMostOnce,
            None,
            b"",
        ),
        1,
    );
    assert_eq!(
        out,
        vec![closed(
            "protocol error: the PUBLISH topic contains U+0000, which MQTT 3.1.1 forbids (1.5.3)"
        )]
    );
    let mut m = live("dev1");
    let out = step(&mut m, subscribe(1, &[("a\0", QoS::AtMostOnce)]), 1);
    assert_eq!(
        out,
        vec![closed(
            "protocol error: a SUBSCRIBE topic filter contains U+0000, which MQTT 3.1.1 forbids (1.5.3)"
        )]
    );
}

#[test]
fn unexpected_packets_close() {
    let mut m = live("dev1");
    let out = step(
        &mut m,
        Input::Packet(Packet::PublishRelease { packet_id: pid(1) }),
        1,
    );
    assert_eq!(
        out,
        vec![closed("unexpected packet PublishRelease { packet_id: 1 }")]
    );
    let mut m = live("dev1");
    let out = step(&mut m, Input::Packet(connect_packet("dev1", 60, None)), 1);
    assert!(
        matches!(&out[..], [Action::Close(End::Closed(r))] if r.starts_with("unexpected packet Connect("))
    );
}

// --- ends and wills ---

fn will_action(body: &'static [u8]) -> Action {
    let mut props = MessageProperties::default();
    props
        .application
        .insert("iothub-MessageType".into(), "Will".into());
    Action::Will {
        props,
        body: Bytes::from_static(body),
    }
}

#[test]
fn a_kick_ends_with_the_will() {
    let mut m = live_with(Limits::default(), "dev1", 60, Some((EVENTS, b"bye")), None);
    assert_eq!(
        step(&mut m, Input::Kick("a newer connection".into()), 1),
        vec![will_action(b"bye"), closed("a newer connection")]
    );
    assert!(m.ended());
    assert!(step(&mut m, Input::Kick("again".into()), 2).is_empty());
}

#[test]
fn a_dropped_stream_ends_with_the_will() {
    let mut m = live_with(Limits::default(), "dev1", 60, Some((EVENTS, b"bye")), None);
    assert_eq!(
        step(
            &mut m,
            Input::Closed("the device closed the connection".into()),
            1
        ),
        vec![
            will_action(b"bye"),
            closed("the device closed the connection")
        ]
    );
    let mut m = live_with(Limits::default(), "dev1", 60, Some((EVENTS, b"bye")), None);
    assert_eq!(
        step(&mut m, Input::Tick, 90_000),
        vec![will_action(b"bye"), closed("keep-alive expired")]
    );
}

#[test]
fn disconnect_ends_cleanly_without_the_will() {
    let mut m = live_with(Limits::default(), "dev1", 60, Some((EVENTS, b"bye")), None);
    assert_eq!(
        step(&mut m, Input::Packet(Packet::Disconnect), 1),
        vec![Action::Close(End::Clean)]
    );
}

#[test]
fn a_will_on_another_topic_is_ignored() {
    let will = Some(("devices/dev2/messages/events/", &b"bye"[..]));
    let mut m = live_with(Limits::default(), "dev1", 60, will, None);
    assert_eq!(
        step(&mut m, Input::Kick("revoked".into()), 1),
        vec![closed("revoked")]
    );
}

// --- twin and methods ---

#[test]
fn twin_get_and_reported() {
    let mut m = live("dev1");
    assert_eq!(
        step(
            &mut m,
            publish("$iothub/twin/GET/?$rid=1", QoS::AtMostOnce, None, b""),
            1
        ),
        vec![Action::ReadTwin { rid: "1".into() }]
    );
    assert_eq!(
        step(
            &mut m,
            Input::TwinRead {
                rid: "1".into(),
                result: Ok(br#"{"desired":{}}"#.to_vec())
            },
            2
        ),
        vec![publish0(
            "$iothub/twin/res/200/?$rid=1",
            br#"{"desired":{}}"#
        )]
    );
    assert_eq!(
        step(
            &mut m,
            Input::TwinRead {
                rid: "2".into(),
                result: Err((500, "the twin could not be read".into()))
            },
            3
        ),
        vec![publish0(
            "$iothub/twin/res/500/?$rid=2",
            br#"{"errorCode":500,"message":"the twin could not be read"}"#
        )]
    );
    assert_eq!(
        step(
            &mut m,
            publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=3",
                QoS::AtMostOnce,
                None,
                br#"{"a":1}"#
            ),
            4
        ),
        vec![Action::PatchReported {
            rid: "3".into(),
            patch: br#"{"a":1}"#.to_vec()
        }]
    );
    assert_eq!(
        step(
            &mut m,
            Input::TwinReported {
                rid: "3".into(),
                result: Ok(7)
            },
            5
        ),
        vec![publish0("$iothub/twin/res/204/?$rid=3&$version=7", b"")]
    );
    assert_eq!(
        step(
            &mut m,
            Input::TwinReported {
                rid: "4".into(),
                result: Err((400, "the reported patch is not JSON".into()))
            },
            6
        ),
        vec![publish0(
            "$iothub/twin/res/400/?$rid=4",
            error_body(400, "the reported patch is not JSON").as_bytes()
        )]
    );
}

#[test]
fn desired_patches_and_method_calls() {
    let mut m = live("dev1");
    let body = br#"{"x":1,"$version":5}"#;
    assert_eq!(
        step(&mut m, Input::Desired(body.to_vec()), 1),
        vec![publish0(
            "$iothub/twin/PATCH/properties/desired/?$version=5",
            body
        )]
    );
    assert_eq!(
        step(&mut m, Input::Desired(b"not json".to_vec()), 2),
        vec![publish0(
            "$iothub/twin/PATCH/properties/desired/?$version=0",
            b"not json"
        )]
    );
    assert_eq!(
        step(
            &mut m,
            Input::Method {
                name: "reboot".into(),
                rid: "42".into(),
                payload: b"{}".to_vec()
            },
            3
        ),
        vec![publish0("$iothub/methods/POST/reboot/?$rid=42", b"{}")]
    );
    assert_eq!(
        step(
            &mut m,
            publish(
                "$iothub/methods/res/404/?$rid=42",
                QoS::AtMostOnce,
                None,
                b"null"
            ),
            4
        ),
        vec![Action::MethodResponse {
            rid: "42".into(),
            status: 404,
            payload: b"null".to_vec()
        }]
    );
}

#[test]
fn machine_size() {
    let size = size_of::<Machine>();
    println!("size_of::<Machine>() = {size}");
    assert!(size <= 64, "{size}");
}

#[test]
fn c2d_packet_ids_wrap_past_zero_and_skip_those_in_flight() {
    let limits = Limits {
        c2d_window: 2,
        ..Limits::default()
    };
    let mut m = live_with(limits, "dev1", 60, None, None);
    step(&mut m, subscribe(1, &[(C2D, QoS::AtLeastOnce)]), 1);
    // Message 1 stays in flight under packet id 1 for the whole test.
    assert_eq!(
        step(&mut m, Input::C2d(vec![message(1)]), 2),
        vec![c2d_publish(1, &message(1))]
    );
    let mut expected = 2u16;
    for q in 2..=70_000i64 {
        let out = step(&mut m, Input::C2d(vec![message(q)]), 3);
        assert_eq!(out, vec![c2d_publish(expected, &message(q))], "message {q}");
        let ack = Input::Packet(Packet::PublishAck {
            packet_id: pid(expected),
        });
        assert_eq!(
            step(&mut m, ack, 4),
            vec![
                Action::C2dComplete { queue_id: q },
                Action::FetchC2d { after: q, room: 1 }
            ]
        );
        // After 65,535 comes 1 (never 0), which is in flight: then 2.
        expected = if expected == u16::MAX {
            2
        } else {
            expected + 1
        };
    }
}
