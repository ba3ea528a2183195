//! MQTT topics a device sends: the telemetry topic with its property bag
//! (`devices/{id}/messages/events/{property_bag}`), the `$iothub` twin and method topics, and
//! subscription filters; and the C2D delivery topic the hub writes.
//!
//! An input is a client id, a newline, and a topic (without a newline, the whole input is the
//! topic for fixed device and module ids). A device never writes as another: an accepted
//! telemetry topic is the identity's own. A C2D topic built from any properties is matched by
//! the device's subscription and its bag decodes back to those properties.
#![no_main]

use std::collections::BTreeMap;

use certhub_core::{
    ClientId, DevicePublish, c2d_topic, classify_publish, decode_property_bag, filter_matches,
    subscription_allowed, telemetry_topic,
};
use libfuzzer_sys::fuzz_target;

fn own_prefix(id: &ClientId) -> String {
    match &id.module {
        Some(m) => format!("devices/{}/modules/{m}/messages/events", id.device),
        None => format!("devices/{}/messages/events", id.device),
    }
}

fn check(id: &ClientId, topic: &str) {
    let own = own_prefix(id);
    let is_own = |t: &str| t == own || t.starts_with(&format!("{own}/"));
    if telemetry_topic(id, topic).is_ok() {
        assert!(is_own(topic), "{} wrote telemetry to {topic:?}", id.cn());
    }
    match classify_publish(id, topic) {
        Ok(DevicePublish::Telemetry(props)) => {
            assert!(is_own(topic), "{} wrote telemetry to {topic:?}", id.cn());
            assert_eq!(Ok(props), telemetry_topic(id, topic));
        }
        Ok(
            DevicePublish::TwinGet { rid }
            | DevicePublish::TwinReported { rid }
            | DevicePublish::MethodResponse { rid, .. },
        ) => {
            assert!(topic.starts_with("$iothub/"));
            assert!(!rid.is_empty() && rid.len() <= 128);
        }
        Err(refusal) => assert!(!refusal.0.is_empty()),
    }
    if subscription_allowed(id, topic).is_ok() {
        assert!(
            topic.starts_with(&format!("devices/{}/", id.device)) || topic.starts_with("$iothub/")
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (client, topic) = match text.split_once('\n') {
        Some((client, topic)) => (Some(client), topic),
        None => (None, text.as_ref()),
    };
    let mut ids = vec![
        ClientId::parse("fuzz-device").expect("id"),
        ClientId::parse("fuzz-device/fuzz-module").expect("id"),
    ];
    if let Some(id) = client.and_then(|c| ClientId::parse(c).ok()) {
        ids.push(id);
    }
    for id in &ids {
        check(id, topic);
    }
    let bag = decode_property_bag(topic);
    for filter in [
        "devices/fuzz-device/messages/devicebound/#",
        "$iothub/methods/POST/#",
    ] {
        let _ = filter_matches(filter, topic);
        let _ = filter_matches(topic, filter);
    }

    // The hub's C2D topic for properties taken from the decoded bag.
    let device = &ids[ids.len() - 1].device;
    let application: BTreeMap<String, Option<String>> = bag
        .application
        .iter()
        .filter(|(k, _)| !k.starts_with("$.") && k.as_str() != "iothub-ack")
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let system: BTreeMap<String, String> = bag
        .application
        .values()
        .take(1)
        .map(|v| ("messageId".to_string(), v.clone()))
        .collect();
    let c2d = c2d_topic(device, &system, "full", &application);
    let subscription = format!("devices/{device}/messages/devicebound/#");
    assert!(
        filter_matches(&subscription, &c2d),
        "{c2d:?} escapes {subscription:?}"
    );
    let prefix = format!("devices/{device}/messages/devicebound/");
    let decoded = decode_property_bag(c2d.strip_prefix(&prefix).expect("the C2D prefix"));
    let mut expected: BTreeMap<String, String> = application
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    expected.insert("iothub-ack".into(), "full".into());
    assert_eq!(decoded.application, expected);
    if let Some(mid) = system.get("messageId") {
        assert_eq!(decoded.system.get("messageId"), Some(mid));
    }
});
