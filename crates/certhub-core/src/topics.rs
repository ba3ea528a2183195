//! The Azure topic map for one identity (azure-protocol 1.5, 1.6): which topics a device may
//! publish to and subscribe to, and the telemetry property bag. A device never writes as
//! another: every topic carries the identity's own ids.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use crate::ClientId;

/// A telemetry message's properties, decoded from the topic's property bag.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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

/// What a device's PUBLISH asks for (azure-protocol 1.5, 1.8, 1.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePublish {
    /// Telemetry on the identity's own events topic.
    Telemetry(MessageProperties),
    /// `$iothub/twin/GET/?$rid={rid}`.
    TwinGet { rid: String },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
    TwinReported { rid: String },
    /// `$iothub/methods/res/{status}/?$rid={rid}`.
    MethodResponse { status: i64, rid: String },
}

/// The `$rid` parameter of a `$iothub/...` topic's query string.
fn request_id(topic: &str, query: &str) -> Result<String, TopicRefusal> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "$rid" || *k == "%24rid")
        .map(|(_, v)| decode(v))
        // The id is echoed in the answer's topic name, where '#', '+' and control characters
        // are not allowed (MQTT 3.1.1 4.7.1, 1.5.3).
        .filter(|rid| {
            !rid.is_empty()
                && rid.len() <= 128
                && !rid.contains(['#', '+'])
                && !rid.chars().any(char::is_control)
        })
        .ok_or_else(|| {
            TopicRefusal(format!(
                "{topic:?} carries no usable request id: add ?$rid=<id> (at most 128 bytes, without '#', '+' or control characters)"
            ))
        })
}

/// Classifies a PUBLISH from `id`: its own telemetry topic, or a twin or method topic (the
/// identity comes from the connection, so those carry no ids). Anything else is refused.
pub fn classify_publish(id: &ClientId, topic: &str) -> Result<DevicePublish, TopicRefusal> {
    let Some(rest) = topic.strip_prefix("$iothub/") else {
        return telemetry_topic(id, topic).map(DevicePublish::Telemetry);
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    match path {
        "twin/GET/" => Ok(DevicePublish::TwinGet {
            rid: request_id(topic, query)?,
        }),
        "twin/PATCH/properties/reported/" => Ok(DevicePublish::TwinReported {
            rid: request_id(topic, query)?,
        }),
        _ => {
            let status = path
                .strip_prefix("methods/res/")
                .and_then(|s| s.strip_suffix('/'))
                .and_then(|s| s.parse::<i64>().ok());
            match status {
                Some(status) => Ok(DevicePublish::MethodResponse {
                    status,
                    rid: request_id(topic, query)?,
                }),
                None => Err(TopicRefusal(format!(
                    "{} may publish to its telemetry topic, $iothub/twin/GET/, \
                     $iothub/twin/PATCH/properties/reported/ and $iothub/methods/res/{{status}}/, \
                     not to {topic:?}",
                    id.cn()
                ))),
            }
        }
    }
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (as the Python
/// SDK's `quote(..., safe="")`), so a bag never holds a raw `/`, `&` or `=`.
const BAG: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, BAG).to_string()
}

/// The system property keys of a C2D delivery, in Azure's order (azure-protocol 1.7).
const C2D_SYSTEM: &[(&str, &str)] = &[
    ("messageId", "$.mid"),
    ("correlationId", "$.cid"),
    ("userId", "$.uid"),
    ("contentType", "$.ct"),
    ("contentEncoding", "$.ce"),
    ("expiryTimeUtc", "$.exp"),
];

/// The delivery topic of a cloud-to-device message:
/// `devices/{d}/messages/devicebound/{bag}` with `$.to`, the system properties, `iothub-ack`
/// and the application properties. An application property whose value is None is sent as a
/// bare key.
pub fn c2d_topic(
    device: &crate::DeviceId,
    system: &BTreeMap<String, String>,
    ack: &str,
    application: &BTreeMap<String, Option<String>>,
) -> String {
    let mut bag = vec![format!(
        "%24.to={}",
        encode(&format!("/devices/{device}/messages/deviceBound"))
    )];
    for (name, key) in C2D_SYSTEM {
        if let Some(v) = system.get(*name) {
            bag.push(format!("{}={}", encode(key), encode(v)));
        }
    }
    bag.push(format!("iothub-ack={}", encode(ack)));
    for (k, v) in application {
        match v {
            Some(v) => bag.push(format!("{}={}", encode(k), encode(v))),
            None => bag.push(encode(k)),
        }
    }
    format!("devices/{device}/messages/devicebound/{}", bag.join("&"))
}

/// Whether the subscription `filter` receives messages on `topic` (MQTT wildcard matching;
/// the filters a device may hold end in `#`).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
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

    #[test]
    fn twin_and_method_topics() {
        let d = id("dev1");
        assert_eq!(
            classify_publish(&d, "$iothub/twin/GET/?$rid=7f3a"),
            Ok(DevicePublish::TwinGet { rid: "7f3a".into() })
        );
        assert_eq!(
            classify_publish(
                &d,
                "$iothub/twin/PATCH/properties/reported/?$rid=1&$version=3"
            ),
            Ok(DevicePublish::TwinReported { rid: "1".into() })
        );
        assert_eq!(
            classify_publish(&d, "$iothub/methods/res/200/?$rid=ab"),
            Ok(DevicePublish::MethodResponse {
                status: 200,
                rid: "ab".into()
            })
        );
        assert!(matches!(
            classify_publish(&d, "devices/dev1/messages/events/a=1"),
            Ok(DevicePublish::Telemetry(_))
        ));
        for bad in [
            "$iothub/twin/GET/",
            "$iothub/twin/GET/?$rid=",
            "$iothub/twin/GET/?$rid=%23",
            "$iothub/twin/GET/?$rid=a%2Bb",
            "$iothub/twin/GET/?$rid=%00",
            "$iothub/methods/res/200/?$rid=%0A",
            "$iothub/methods/res/abc/?$rid=1",
            "$iothub/twin/PATCH/properties/desired/?$rid=1",
            "$iothub/anything",
            "devices/dev2/messages/events/",
        ] {
            assert!(classify_publish(&d, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn c2d_bags_parse_like_the_python_sdk() {
        let d = crate::DeviceId::new("dev+1").expect("id");
        let system = BTreeMap::from([
            ("messageId".to_string(), "m/1".to_string()),
            ("contentType".to_string(), "application/json".to_string()),
        ]);
        let app = BTreeMap::from([
            ("a b".to_string(), Some("x&y=z+1".to_string())),
            ("flag".to_string(), None),
        ]);
        let topic = c2d_topic(&d, &system, "full", &app);
        assert_eq!(
            topic,
            "devices/dev+1/messages/devicebound/%24.to=%2Fdevices%2Fdev%2B1%2Fmessages%2FdeviceBound&%24.mid=m%2F1&%24.ct=application%2Fjson&iothub-ack=full&a%20b=x%26y%3Dz%2B1&flag"
        );
        // Python takes split("/")[4] as the bag.
        assert_eq!(topic.split('/').count(), 5);
        assert!(filter_matches(
            "devices/dev+1/messages/devicebound/#",
            &topic
        ));
        assert!(!filter_matches(
            "devices/dev/messages/devicebound/#",
            &topic
        ));
        assert!(filter_matches(
            "$iothub/methods/POST/#",
            "$iothub/methods/POST/reboot/?$rid=1"
        ));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
    }
}
