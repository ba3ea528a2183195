//! Twin updates: reported patches from devices (MQTT), desired and tag patches and whole-twin
//! replacements from the service (REST), applied in sequence to one twin.
//!
//! An input is a stream of JSON values. `{"desired": p}`, `{"tags": p}` and `{"reported": p}`
//! patch that section with `p`; `{"replace": body}` is a twin PUT body and `{"service": body}`
//! a twin PATCH body (split by `service_patch_parts`); any other value is a reported patch.
//! After each operation: a refusal leaves the twin as it was, an accepted one keeps every
//! section within its size limit and moves the version, and the twin survives the store's JSON
//! round trip unchanged.
#![no_main]

use certhub_twin::{Section, TwinState, service_patch_parts};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const NOW: &str = "2030-01-01T00:00:00.0000000Z";

fn size(members: &Map<String, Value>) -> usize {
    serde_json::to_vec(members).expect("JSON").len()
}

fn apply(twin: &mut TwinState, op: &Value) -> Result<(), String> {
    let single = op
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next());
    let e = |e: certhub_twin::TwinError| e.to_string();
    match single {
        Some((k, p)) if k == "desired" => {
            let notification = twin.patch_desired(p, NOW).map_err(e)?;
            assert_eq!(notification["$version"], twin.desired_version());
        }
        Some((k, p)) if k == "tags" => twin.patch_tags(p).map_err(e)?,
        Some((k, p)) if k == "reported" => {
            assert_eq!(
                twin.patch_reported(p, NOW).map_err(e)?,
                twin.reported_version()
            );
        }
        Some((k, body)) if k == "replace" || k == "service" => {
            let (tags, desired) = service_patch_parts(body).map_err(e)?;
            if k == "replace" {
                twin.replace(tags, desired, NOW).map_err(e)?;
            } else {
                if let Some(tags) = tags {
                    twin.patch_tags(tags).map_err(e)?;
                }
                if let Some(desired) = desired {
                    twin.patch_desired(desired, NOW).map_err(e)?;
                }
            }
        }
        _ => {
            twin.patch_reported(op, NOW).map_err(e)?;
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut twin = TwinState::new(NOW);
    for op in serde_json::Deserializer::from_slice(data).into_iter::<Value>() {
        let Ok(op) = op else { break };
        let before = twin.clone();
        match apply(&mut twin, &op) {
            // A PATCH body with tags and desired properties applies the tags first; only a
            // refusal of the very first write must leave the twin untouched.
            Err(message) => {
                assert!(!message.is_empty());
                let service = op.get("service").is_some();
                if !service {
                    assert_eq!(twin, before, "a refused update changed the twin");
                }
            }
            Ok(()) => assert!(twin.version() >= before.version()),
        }
        assert!(size(twin.tags()) <= Section::Tags.size_limit());
        assert!(size(twin.desired()) <= Section::Desired.size_limit());
        assert!(size(twin.reported()) <= Section::Reported.size_limit());
        let stored = serde_json::to_string(&twin).expect("the twin serialises");
        let loaded: TwinState = serde_json::from_str(&stored).expect("the stored twin loads");
        assert_eq!(loaded, twin, "the store's JSON round trip changed the twin");
        let _ = twin.device_view();
        let _ = twin.service_view();
    }
});
