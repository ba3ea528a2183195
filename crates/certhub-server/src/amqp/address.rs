//! AMQP link addresses as the Azure SDKs spell them (azure-more-protocols 1.4, 2.2-2.4, 3.3):
//! relative (`/devices/d1/messages/events`), absolute (`amqps://{host}/devices/...`, uamqp and the
//! C SDK; `sb://{host}/...` for Event Hubs) and in either case of the fixed words
//! (`deviceBound`, `devicebound`; `ConsumerGroups`, `consumergroups`). Ids are percent-decoded and
//! checked as the registry checks them; the fixed words compare case-insensitively. Which node
//! an address names decides which link handler serves it; the link's role (who sends) is
//! checked by the handler.

use certhub_core::{DeviceId, IdError, ModuleId};

/// The device, or the module of a device, a link address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub device: DeviceId,
    pub module: Option<ModuleId>,
}

impl Owner {
    /// `deviceId` or `deviceId/moduleId`: the form the session core admits (MQTT's client id).
    pub fn client_id(&self) -> String {
        match &self.module {
            Some(m) => format!("{}/{m}", self.device),
            None => self.device.to_string(),
        }
    }
}

/// What a link address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// `$cbs`: token put requests and their replies.
    Cbs,
    /// `$management`: the Event Hubs-compatible entity's runtime information.
    Management,
    /// `/devices/{d}[/modules/{m}]/messages/events`: telemetry from the device (a module's
    /// input messages to it, the other way).
    Events(Owner),
    /// `/devices/{d}[/modules/{m}]/messages/devicebound`: C2D messages to the device.
    DeviceBound(Owner),
    /// `/devices/{d}[/modules/{m}]/twin`: twin requests and responses.
    Twin(Owner),
    /// `/devices/{d}[/modules/{m}]/methods/devicebound`: direct method calls and answers.
    Methods(Owner),
    /// `/messages/devicebound`: services sending C2D messages (the device is in each
    /// message's `to`).
    ServiceDeviceBound,
    /// `/messages/serviceBound/feedback`: delivery feedback for services.
    Feedback,
    /// `/messages/serviceBound/filenotifications`: file upload notifications for services.
    FileNotifications,
    /// `{idScope}/registrations/{registrationId}`: a provisioning client's requests (it
    /// sends) and their answers (it receives).
    Registration { scope: String, id: String },
    /// `{entity}/ConsumerGroups/{group}/Partitions/{partition}`: an Event Hubs-compatible
    /// reader of device telemetry.
    Partition {
        entity: String,
        consumer_group: String,
        partition: String,
    },
}

/// Why an address names no node of this hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "the link has no address; attach to one of this hub's nodes (e.g. /devices/{{id}}/messages/events)"
    )]
    Missing,
    #[error(
        "{0:?} is not a node of this hub (devices: /devices/{{id}}/messages/events, /messages/devicebound, /twin, /methods/devicebound; services: /messages/devicebound, /messages/serviceBound/feedback, /messages/serviceBound/filenotifications; $cbs; provisioning: {{idScope}}/registrations/{{id}}; Event Hubs: {{entity}}/ConsumerGroups/{{group}}/Partitions/{{n}})"
    )]
    Unknown(String),
    #[error("{address:?}: {reason}")]
    BadId { address: String, reason: IdError },
    #[error("{0:?} holds a segment that is not UTF-8 once percent-decoded")]
    NotUtf8(String),
}

/// The node `address` names.
pub fn parse(address: &str) -> Result<Node, AddressError> {
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(AddressError::Missing);
    }
    let path = strip_scheme_and_host(trimmed);
    if path.eq_ignore_ascii_case("$cbs") || path.eq_ignore_ascii_case("/$cbs") {
        return Ok(Node::Cbs);
    }
    if path.eq_ignore_ascii_case("$management") || path.eq_ignore_ascii_case("/$management") {
        return Ok(Node::Management);
    }
    let raw: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut segments = Vec::with_capacity(raw.len());
    for s in &raw {
        let decoded = percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map_err(|_| AddressError::NotUtf8(address.to_string()))?;
        segments.push(decoded.into_owned());
    }
    let word = |i: usize, w: &str| segments.get(i).is_some_and(|s| s.eq_ignore_ascii_case(w));
    let unknown = || AddressError::Unknown(address.to_string());
    let bad_id = |reason| AddressError::BadId {
        address: address.to_string(),
        reason,
    };
    match segments.len() {
        2 if word(0, "messages") && word(1, "devicebound") => return Ok(Node::ServiceDeviceBound),
        3 if word(0, "messages") && word(1, "servicebound") && word(2, "feedback") => {
            return Ok(Node::Feedback);
        }
        3 if word(0, "messages") && word(1, "servicebound") && word(2, "filenotifications") => {
            return Ok(Node::FileNotifications);
        }
        3 if word(1, "registrations") && !segments[0].is_empty() && !segments[2].is_empty() => {
            return Ok(Node::Registration {
                scope: segments[0].clone(),
                id: segments[2].clone(),
            });
        }
        5 if word(1, "consumergroups") && word(3, "partitions") => {
            return Ok(Node::Partition {
                entity: segments[0].clone(),
                consumer_group: segments[2].clone(),
                partition: segments[4].clone(),
            });
        }
        _ => {}
    }
    if !word(0, "devices") || segments.len() < 3 {
        return Err(unknown());
    }
    let device = DeviceId::new(segments[1].clone()).map_err(bad_id)?;
    // `/devices/{d}/modules/{m}/...` or `/devices/{d}/...`
    let (module, rest) = if word(2, "modules") && segments.len() >= 5 {
        let module = ModuleId::new(segments[3].clone()).map_err(bad_id)?;
        (Some(module), &segments[4..])
    } else {
        (None, &segments[2..])
    };
    let owner = Owner { device, module };
    let is = |words: &[&str]| {
        rest.len() == words.len()
            && rest
                .iter()
                .zip(words)
                .all(|(s, w)| s.eq_ignore_ascii_case(w))
    };
    if is(&["messages", "events"]) {
        Ok(Node::Events(owner))
    } else if is(&["messages", "devicebound"]) {
        Ok(Node::DeviceBound(owner))
    } else if is(&["twin"]) {
        Ok(Node::Twin(owner))
    } else if is(&["methods", "devicebound"]) {
        Ok(Node::Methods(owner))
    } else {
        Err(unknown())
    }
}

/// The path of an absolute address (`amqps://host[:port]/path`, `sb://...`); a relative one as
/// it is.
fn strip_scheme_and_host(address: &str) -> &str {
    match address.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(slash) => &rest[slash..],
            None => "",
        },
        None => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(device: &str, module: Option<&str>) -> Owner {
        Owner {
            device: DeviceId::new(device).unwrap(),
            module: module.map(|m| ModuleId::new(m).unwrap()),
        }
    }

    #[test]
    fn device_addresses_in_every_spelling_the_sdks_use() {
        let d1 = owner("d1", None);
        for a in [
            "/devices/d1/messages/events",
            "amqps://hub.example.com/devices/d1/messages/events",
            "amqps://hub.example.com:5671/devices/d1/messages/events/",
            "devices/d1/Messages/Events",
        ] {
            assert_eq!(parse(a), Ok(Node::Events(d1.clone())), "{a}");
        }
        for a in [
            "/devices/d1/messages/devicebound",
            "amqps://hub/devices/d1/messages/deviceBound",
        ] {
            assert_eq!(parse(a), Ok(Node::DeviceBound(d1.clone())), "{a}");
        }
        assert_eq!(parse("/devices/d1/twin"), Ok(Node::Twin(d1.clone())));
        assert_eq!(
            parse("/devices/d1/methods/deviceBound"),
            Ok(Node::Methods(d1.clone()))
        );
        let m = owner("d1", Some("m1"));
        assert_eq!(
            parse("/devices/d1/modules/m1/messages/events"),
            Ok(Node::Events(m.clone()))
        );
        assert_eq!(
            parse("/devices/d1/modules/m1/twin"),
            Ok(Node::Twin(m.clone()))
        );
        assert_eq!(
            parse("/devices/d1/modules/m1/methods/devicebound"),
            Ok(Node::Methods(m.clone()))
        );
        assert_eq!(m.client_id(), "d1/m1");
        assert_eq!(d1.client_id(), "d1");
        // Ids are percent-decoded (Node sends them raw, the C# SDK encodes them).
        assert_eq!(
            parse("/devices/a%3Ab/messages/events"),
            Ok(Node::Events(owner("a:b", None)))
        );
    }

    #[test]
    fn service_and_event_hubs_addresses() {
        assert_eq!(parse("$cbs"), Ok(Node::Cbs));
        assert_eq!(parse("/$cbs"), Ok(Node::Cbs));
        assert_eq!(parse("$management"), Ok(Node::Management));
        assert_eq!(parse("/messages/devicebound"), Ok(Node::ServiceDeviceBound));
        assert_eq!(
            parse("amqps://hub.example.com/messages/deviceBound"),
            Ok(Node::ServiceDeviceBound)
        );
        assert_eq!(parse("/messages/serviceBound/feedback"), Ok(Node::Feedback));
        assert_eq!(
            parse("/messages/servicebound/filenotifications"),
            Ok(Node::FileNotifications)
        );
        let partition = Node::Partition {
            entity: "hub".into(),
            consumer_group: "$Default".into(),
            partition: "0".into(),
        };
        assert_eq!(
            parse("hub/ConsumerGroups/$Default/Partitions/0"),
            Ok(partition.clone())
        );
        assert_eq!(
            parse("amqps://localhost:5671/hub/consumergroups/$Default/partitions/0"),
            Ok(partition)
        );
        assert_eq!(
            parse("0ne000A1B2C/registrations/smart-x-widget-0001"),
            Ok(Node::Registration {
                scope: "0ne000A1B2C".into(),
                id: "smart-x-widget-0001".into()
            })
        );
    }

    #[test]
    fn addresses_that_name_nothing_are_refused_with_the_reason() {
        assert_eq!(parse(""), Err(AddressError::Missing));
        for a in [
            "/devices/d1",
            "/devices/d1/messages",
            "/devices/d1/messages/events/extra",
            "/devices/d1/modules/m1",
            "/queues/q",
            "amqps://hub",
            "/messages/serviceBound/other",
        ] {
            assert!(matches!(parse(a), Err(AddressError::Unknown(_))), "{a}");
        }
        assert!(matches!(
            parse("/devices/a%2Fb/messages/events"),
            Err(AddressError::BadId { .. })
        ));
        assert!(matches!(
            parse("/devices/%FF/messages/events"),
            Err(AddressError::NotUtf8(_))
        ));
        let message = parse("/queues/q").unwrap_err().to_string();
        assert!(
            message.contains("/devices/{id}/messages/events"),
            "{message}"
        );
    }
}
