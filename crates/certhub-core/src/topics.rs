//! The Azure topic map for one identity (azure-protocol 1.5, 1.6): which topics a device may
//! publish to and subscribe to, and the telemetry property bag. A device never writes as
//! another: every topic carries the identity's own ids.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use crate::ClientId;

/// A telemetry message's properties, decoded from the topic's property bag.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MessageProperties {
    /// `$.mid` -> `messageId`, `$.ct` -> `contentType`, ...
    pub system: BTreeMap<String, String>,
    /// Everything else: application properties.
    pub application: BTreeMap<String, String>,
}

fn system_name(key: &str) -> Option<&'static str> {
    Some(match key {
        "mid" => "messageId",
        "cid" => "correlationId",
        "uid" => "userId",
        "ct" => "contentType",
        "ce" => "contentEncoding",
        "exp" => "expiryTimeUtc",
        "to" => "to",
        "ifid" => "interfaceId",
        "on" => "outputName",
        "sub" => "componentName",
        _ => return None,
    })
}

fn decode(s: &str) -> String {
    // Percent-decoding only: '+' stays '+' (never a space), as the SDKs encode it as %2B.
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Decodes `k1=v1&k2=v2` (RFC 3986 percent-encoding; `$.` and `%24.` both mark system
/// properties).
pub fn decode_property_bag(bag: &str) -> MessageProperties {
    let mut props = MessageProperties::default();
    for pair in bag.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), decode(v));
        match k.strip_prefix("$.") {
            Some(short) => {
                let name = system_name(short).map_or_else(|| k.clone(), str::to_string);
                props.system.insert(name, v);
            }
            None => {
                props.application.insert(k, v);
            }
        }
    }
    props
}

/// Why a topic is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRefusal(pub String);

/// The telemetry topic prefix of an identity: `devices/{d}/messages/events/` or
/// `devices/{d}/modules/{m}/messages/events/`.
fn events_prefix(id: &ClientId) -> String {
    match &id.module {
        Some(m) => format!("devices/{}/modules/{m}/messages/events/", id.device),
        None => format!("devices/{}/messages/events/", id.device),
    }
}

/// Parses a PUBLISH topic from `id`: only its own telemetry topic is allowed. Returns the
/// decoded property bag.
pub fn telemetry_topic(id: &ClientId, topic: &str) -> Result<MessageProperties, TopicRefusal> {
    let prefix = events_prefix(id);
    let bare = prefix.trim_end_matches('/');
    if topic == bare {
        return Ok(MessageProperties::default());
    }
    match topic.strip_prefix(&prefix) {
        Some(bag) => Ok(decode_property_bag(bag)),
        None => Err(TopicRefusal(format!(
            "{} may publish telemetry only to {prefix}..., not to {topic:?}",
            id.cn()
        ))),
    }
}

/// Whether `id` may subscribe to `filter`: its own C2D (devices), module inputs (modules),
/// twin responses, desired-property patches and direct methods.
pub fn subscription_allowed(id: &ClientId, filter: &str) -> Result<(), TopicRefusal> {
    let own = match &id.module {
        None => format!("devices/{}/messages/devicebound/#", id.device),
        Some(m) => format!("devices/{}/modules/{m}/inputs/#", id.device),
    };
    let shared = [
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/methods/POST/#",
    ];
    if filter == own || shared.contains(&filter) {
        Ok(())
    } else {
        Err(TopicRefusal(format!(
            "{} may not subscribe to {filter:?}; it may subscribe to {own} and the $iothub twin and method topics",
            id.cn()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::parse(s).expect("id")
    }

    #[test]
    fn python_and_node_bags() {
        let p = telemetry_topic(
            &id("dev1"),
            "devices/dev1/messages/events/%24.mid=42&%24.ct=application%2Fjson&%24.ce=utf-8&a%20b=x%2Fy&plus=1+1",
        )
        .expect("own topic");
        assert_eq!(p.system["messageId"], "42");
        assert_eq!(p.system["contentType"], "application/json");
        assert_eq!(p.application["a b"], "x/y");
        assert_eq!(p.application["plus"], "1+1");
        let p = telemetry_topic(
            &id("dev1"),
            "devices/dev1/messages/events/$.ct=text%2Fplain",
        )
        .expect("own topic");
        assert_eq!(p.system["contentType"], "text/plain");
        assert!(telemetry_topic(&id("dev1"), "devices/dev1/messages/events").is_ok());
        assert!(telemetry_topic(&id("dev1"), "devices/dev1/messages/events/").is_ok());
    }

    #[test]
    fn a_device_never_writes_as_another() {
        assert!(telemetry_topic(&id("dev1"), "devices/dev2/messages/events/").is_err());
        assert!(telemetry_topic(&id("dev1"), "devices/dev1/messages/eventsX").is_err());
        assert!(telemetry_topic(&id("dev1/m1"), "devices/dev1/messages/events/").is_err());
        assert!(
            telemetry_topic(&id("dev1/m1"), "devices/dev1/modules/m1/messages/events/").is_ok()
        );
        assert!(subscription_allowed(&id("dev1"), "devices/dev1/messages/devicebound/#").is_ok());
        assert!(subscription_allowed(&id("dev1"), "devices/dev2/messages/devicebound/#").is_err());
        assert!(subscription_allowed(&id("dev1"), "#").is_err());
        assert!(subscription_allowed(&id("dev1"), "$iothub/methods/POST/#").is_ok());
    }
}
