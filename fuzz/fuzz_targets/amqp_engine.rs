//! certhub-amqp's connection engine fed arbitrary bytes from a client, with a simulated hub
//! answering its events.
//!
//! An input is one flags byte (the hub's behaviour, below) and then the bytes the client sends,
//! fed to the engine in pieces of 1 to 64 bytes (the flags byte's low bits pick the first size;
//! each next one grows), with the clock moving on between pieces. Flags: bit 0 refuses the SASL
//! outcome; bit 1 refuses every third attach; bit 2 rejects (instead of accepting) what it
//! settles; bit 3 settles late (on the next piece); bit 4 closes the connection from the hub
//! after the input; bit 5 ends every session from the hub half way through.
//!
//! Invariants: no panic; every byte the engine writes is a protocol header or a whole frame
//! of 8 bytes at least that fe2o3-amqp's decoders read back; nothing is raised or written for
//! a link before its attach was raised; once closed the engine raises nothing more.
#![no_main]

use bytes::BytesMut;
use certhub_amqp::types::definitions::{AmqpError, Error};
use certhub_amqp::types::messaging::{Accepted, DeliveryState, Rejected};
use certhub_amqp::{Config, Engine, Event, LinkId};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use tokio_util::codec::Decoder;

fn config() -> Config {
    Config {
        container_id: "fuzz".into(),
        max_frame_size: 4096,
        max_sessions: 4,
        max_links: 4,
        max_message_size: 8192,
        idle_timeout_ms: 1000,
        mechanisms: vec!["PLAIN", "ANONYMOUS"],
        properties: None,
    }
}

/// Checks what the engine wrote: headers and whole, decodable frames.
fn check_output(out: &[u8]) {
    let mut at = 0;
    while at < out.len() {
        if out[at..].starts_with(b"AMQP") {
            assert!(out.len() >= at + 8, "a cut header");
            at += 8;
            continue;
        }
        assert!(out.len() >= at + 4, "a cut frame size");
        let size = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        assert!(
            size >= 8 && out.len() >= at + size,
            "a frame of {size} bytes"
        );
        let mut frame = BytesMut::from(&out[at + 4..at + size]);
        if frame[1] == 1 {
            let decoded = (fe2o3_amqp::frames::sasl::FrameCodec {}).decode(&mut frame);
            assert!(
                matches!(decoded, Ok(Some(_))),
                "a SASL frame that does not decode"
            );
        } else {
            let decoded = (fe2o3_amqp::frames::amqp::FrameDecoder {}).decode(&mut frame);
            assert!(
                matches!(decoded, Ok(Some(_))),
                "a frame that does not decode"
            );
        }
        at += size;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut now = 1_000_000i64;
    let mut engine = Engine::new(config(), now);
    let mut input = BytesMut::new();
    let mut attached: BTreeSet<LinkId> = BTreeSet::new();
    let mut owed: Vec<(LinkId, u32)> = Vec::new();
    let mut attaches = 0u32;
    let mut piece = usize::from(flags & 7) + 1;
    let half = rest.len() / 2;
    let mut fed = 0usize;
    let mut ended = false;
    loop {
        let n = piece.min(rest.len());
        input.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        fed += n;
        piece = (piece * 2 + 1) % 64 + 1;
        now += 7;
        if flags & 8 != 0 {
            for (link, delivery) in owed.drain(..) {
                engine.settle(link, delivery, outcome(flags));
            }
        }
        let closed_before = engine.is_closed();
        engine.receive(&mut input, now);
        while let Some(event) = engine.next_event() {
            assert!(
                !closed_before,
                "an event after the engine closed: {event:?}"
            );
            match event {
                Event::SaslInit { .. } => engine.sasl_outcome(flags & 1 == 0),
                Event::Attach(request) => {
                    attaches += 1;
                    attached.insert(request.link);
                    if flags & 2 != 0 && attaches % 3 == 0 {
                        let error = Error::new(AmqpError::NotFound, "refused".to_string(), None);
                        engine.refuse(*request, error);
                    } else {
                        engine.accept(&request, u32::from(flags >> 5) + 1);
                    }
                }
                Event::Transfer {
                    link,
                    delivery,
                    settled,
                    ..
                } => {
                    assert!(
                        attached.contains(&link),
                        "a transfer on a link never raised"
                    );
                    if !settled {
                        if flags & 8 != 0 {
                            owed.push((link, delivery));
                        } else {
                            engine.settle(link, delivery, outcome(flags));
                        }
                    }
                }
                Event::Credit { link } => {
                    assert!(attached.contains(&link), "credit on a link never raised");
                    // As the hub's links do: what it has, never more than the credit (a
                    // client may give 2^32 - 1).
                    for _ in 0..16 {
                        if engine.credit(link) == 0 {
                            break;
                        }
                        let sent =
                            engine.send(link, None, b"\x00\x53\x75\xa0\x01x", flags & 4 == 0);
                        if !matches!(sent, Ok(Some(_))) {
                            break;
                        }
                    }
                }
                Event::Outcome { link, .. } | Event::Detached { link, .. } => {
                    assert!(attached.contains(&link), "news of a link never raised");
                }
                Event::Opened { .. } | Event::Closed { .. } | Event::Failed(_) => {}
            }
        }
        if flags & 32 != 0 && !ended && fed >= half {
            ended = true;
            engine.end_all(Error::new(
                AmqpError::UnauthorizedAccess,
                "ended".to_string(),
                None,
            ));
        }
        engine.tick(now);
        if let Some(out) = engine.take_output(now) {
            check_output(&out);
        }
        if rest.is_empty() {
            break;
        }
    }
    if flags & 16 != 0 {
        engine.close(Some(Error::new(
            AmqpError::InternalError,
            "bye".to_string(),
            None,
        )));
        if let Some(out) = engine.take_output(now) {
            check_output(&out);
        }
    }
});

fn outcome(flags: u8) -> DeliveryState {
    if flags & 4 != 0 {
        DeliveryState::Rejected(Rejected { error: None })
    } else {
        DeliveryState::Accepted(Accepted {})
    }
}
