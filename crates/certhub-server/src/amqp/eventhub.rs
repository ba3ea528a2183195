//! The Event Hubs-compatible endpoint for device telemetry (azure-more-protocols 3): what the
//! Azure Event Hubs SDKs (`azure-eventhub`, `@azure/event-hubs`) read with the connection
//! string `certhub hub connection-string --event-hub` prints
//! (`Endpoint=sb://{host}/;...;EntityPath={entity}`), on the same AMQP listeners.
//!
//! One entity (named by [`entity_name`]) with one partition, `0`: the hub's telemetry log in
//! the order the writer committed it. A message's sequence number is its number in the log and
//! its offset is the same number as text, so a checkpoint of either resumes at the same place.
//! Consumer groups are names only: every reader keeps its own position (as Event Hubs readers
//! do, in their checkpoints), so any number of groups read independently.
//!
//! Nodes:
//! - `$management` (a request link and a reply link): `READ` of `com.microsoft:eventhub`
//!   (name, creation time, partition ids) and of `com.microsoft:partition` (first and last
//!   sequence numbers, last offset and enqueued time, emptiness).
//! - `{entity}/ConsumerGroups/{group}/Partitions/0` (the client receives): the log from the
//!   position its `apache.org:selector-filter:string` filter names (`amqp.annotation.` +
//!   `x-opt-offset`, `x-opt-sequence-number` or `x-opt-enqueued-time`, `>` or `>=`, a quoted
//!   value; `-1` is the start, `@latest` the end; no filter: the start), each message sent
//!   settled with the annotations IoT Hub adds.
//!
//! Both need a service token (a policy with ServiceConnect) whose scope covers the node, put
//! on `$cbs` as the Event Hubs clients do.

use std::sync::Arc;
use std::time::Duration;

use certhub_core::MessageProperties;
use certhub_store::TelemetryRecord;
use fe2o3_amqp::Sendable;
use fe2o3_amqp::acceptor::LinkEndpoint;
use fe2o3_amqp::types::definitions::{self, AmqpError, LinkError};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, Symbol, Timestamp, Value};

use super::connection::{Replies, Shared, next_delivery, property, refuse, reply_to, send_replies};
use super::service::{authorize, token_runs_out};
use crate::state::AppState;

/// The only partition.
const PARTITION: &str = "0";
/// Messages read from the log per query.
const READ_BATCH: i64 = 256;

/// The Event Hubs-compatible entity's name: the hub's name (the first label of its host
/// name), or `certhub` when the host is an IP address.
pub fn entity_name(host: &str) -> String {
    let host = host.split(':').next().unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_ok() || host.is_empty() {
        return "certhub".into();
    }
    host.split('.').next().unwrap_or(host).to_string()
}

/// This hub's entity name.
fn entity(state: &AppState) -> String {
    entity_name(state.hostnames().first().map_or("", String::as_str))
}

/// Where a reader starts: after this sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    After(i64),
    /// At or after this enqueued time (ms); strictly after when false.
    Time(i64, bool),
    Latest,
}

/// Parses the selector of an Event Hubs receiver (azure-more-protocols 3.3).
fn parse_selector(selector: &str) -> Result<Start, String> {
    let bad = || {
        format!(
            "the selector {selector:?} is not amqp.annotation.x-opt-offset | x-opt-sequence-number | x-opt-enqueued-time, then > or >=, then a quoted value"
        )
    };
    let rest = selector
        .trim()
        .strip_prefix("amqp.annotation.")
        .ok_or_else(bad)?;
    let (field, rest) = rest
        .split_once(|c: char| c.is_whitespace() || c == '>')
        .ok_or_else(bad)?;
    let rest = rest.trim_start().strip_prefix('>').ok_or_else(bad)?;
    let (inclusive, rest) = match rest.strip_prefix('=') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let value = rest
        .trim()
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(bad)?;
    if value == "@latest" {
        return Ok(Start::Latest);
    }
    let n: i64 = value.parse().map_err(|_| {
        format!("the selector's value {value:?} is not a number (nor -1 or @latest)")
    })?;
    match field {
        "x-opt-offset" | "x-opt-sequence-number" => {
            if n < 0 {
                Ok(Start::After(0))
            } else if inclusive {
                Ok(Start::After(n - 1))
            } else {
                Ok(Start::After(n))
            }
        }
        "x-opt-enqueued-time" => Ok(Start::Time(n, inclusive)),
        _ => Err(bad()),
    }
}

/// The selector in a receiver's filter set, if any.
fn selector(source: Option<&fe2o3_amqp::types::messaging::Source>) -> Option<String> {
    let filters = source?.filter.as_ref()?;
    filters.iter().find_map(|(key, value)| {
        if key.as_str() != "apache.org:selector-filter:string" {
            return None;
        }
        match value {
            Value::Described(d) => match &d.value {
                Value::String(s) => Some(s.clone()),
                _ => None,
            },
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    })
}

/// A telemetry message as IoT Hub writes it into its Event Hub: the device's system properties
/// in the properties section, its application properties, the body as one data section, and
/// the annotations IoT Hub adds.
fn event(r: &TelemetryRecord) -> Message<Body<Value>> {
    let props: MessageProperties = serde_json::from_str(&r.properties).unwrap_or_default();
    let text = |k: &str| props.system.get(k).cloned();
    let properties = Properties {
        message_id: text("messageId").map(MessageId::String),
        correlation_id: text("correlationId").map(MessageId::String),
        user_id: text("userId").map(|u| u.into_bytes().into()),
        content_type: text("contentType").map(Symbol::from),
        content_encoding: text("contentEncoding").map(Symbol::from),
        ..Default::default()
    };
    let mut application = ApplicationProperties::builder();
    for (k, v) in &props.application {
        application = application.insert(k.as_str(), v.as_str());
    }
    let enqueued = Value::Timestamp(Timestamp::from_milliseconds(r.enqueued_ms));
    let mut annotations = MessageAnnotations::builder()
        .insert(
            "iothub-connection-device-id",
            Value::String(r.device_id.clone()),
        )
        .insert("iothub-enqueuedtime", enqueued.clone())
        .insert("iothub-message-source", Value::String("Telemetry".into()))
        .insert("x-opt-sequence-number", Value::Long(r.seq))
        .insert("x-opt-offset", Value::String(r.seq.to_string()))
        .insert("x-opt-enqueued-time", enqueued);
    if let Some(m) = &r.module_id {
        annotations = annotations.insert("iothub-connection-module-id", Value::String(m.clone()));
    }
    if let Some(c) = text("componentName") {
        annotations = annotations.insert("dt-subject", Value::String(c));
    }
    Message::builder()
        .properties(properties)
        .application_properties(application.build())
        .message_annotations(annotations.build())
        .body(Body::Data(vec![Data(r.body.clone().into())].into()))
        .build()
}

/// What a partition receiver asked for.
pub(super) struct Reader {
    pub entity: String,
    pub group: String,
    pub partition: String,
    /// `com.microsoft:epoch`: the reader takes the partition from readers of lower levels.
    pub owner_level: Option<i64>,
}

/// A receiver on `{entity}/ConsumerGroups/{group}/Partitions/{partition}`.
pub(super) async fn partition_link(reader: Reader, link: LinkEndpoint, shared: Arc<Shared>) {
    let Reader {
        entity: entity_asked,
        group,
        partition,
        owner_level,
    } = reader;
    let state = shared.core.state().clone();
    let ours = entity(&state);
    let not_found = |why: String| definitions::Error::new(AmqpError::NotFound, why, None);
    if !entity_asked.eq_ignore_ascii_case(&ours) {
        let why = format!(
            "this hub's Event Hubs-compatible entity is {ours:?}, not {entity_asked:?} (EntityPath in `certhub hub connection-string --event-hub`)"
        );
        return refuse(link, not_found(why)).await;
    }
    if partition != PARTITION || group.is_empty() {
        let why = format!(
            "{entity_asked} has one partition, {PARTITION:?}, in any consumer group; not partition {partition:?} of group {group:?}"
        );
        return refuse(link, not_found(why)).await;
    }
    let path = format!("/{ours}/ConsumerGroups/{group}/Partitions/{partition}");
    if let Err(why) = authorize(&shared, &path, "reading device telemetry").await {
        let error = definitions::Error::new(AmqpError::UnauthorizedAccess, why, None);
        return refuse(link, error).await;
    }
    let LinkEndpoint::Sender(mut tx) = link else {
        let why = format!("{path} is read, not written: attach a receiver");
        let error = definitions::Error::new(AmqpError::NotAllowed, why, None);
        return refuse(link, error).await;
    };
    let key = format!("{}/{partition}", group.to_ascii_lowercase());
    let claim = match state.partition_readers().claim(&key, owner_level) {
        Ok(c) => c,
        Err(why) => {
            let error = definitions::Error::new(LinkError::Stolen, why, None);
            let _ = tx.close_with_error(error).await;
            return;
        }
    };
    let taken = || {
        definitions::Error::new(
            LinkError::Stolen,
            "a reader with an equal or higher owner level took this partition of the consumer group"
                .to_string(),
            None,
        )
    };
    let start = match selector(tx.source().as_ref()).map(|s| parse_selector(&s)) {
        None => Ok(Start::After(0)),
        Some(parsed) => parsed,
    };
    let start = match start {
        Ok(s) => s,
        Err(why) => {
            let error = definitions::Error::new(AmqpError::InvalidField, why, None);
            let _ = tx.close_with_error(error).await;
            return;
        }
    };
    let mut follow = state.telemetry().follow();
    let mut after = match start {
        Start::After(n) => n,
        Start::Latest => *follow.borrow_and_update(),
        Start::Time(ms, inclusive) => {
            match state.store().telemetry_seq_before_time(ms, inclusive).await {
                Ok(n) => n,
                Err(e) => {
                    let error =
                        definitions::Error::new(AmqpError::InternalError, e.to_string(), None);
                    let _ = tx.close_with_error(error).await;
                    return;
                }
            }
        }
    };
    loop {
        let batch = match state.store().telemetry_after(after, None, READ_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "telemetry not read for an Event Hubs reader");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = follow.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = token_runs_out(&shared, &path) => {
                    let error = definitions::Error::new(
                        AmqpError::UnauthorizedAccess,
                        "the service's SAS token expired; put a fresh one on $cbs before it runs out".to_string(),
                        None,
                    );
                    let _ = tx.close_with_error(error).await;
                    return;
                }
                () = claim.taken.cancelled() => {
                    let _ = tx.close_with_error(taken()).await;
                    return;
                }
                () = shared.ended.cancelled() => return,
            }
            continue;
        }
        for r in &batch {
            let sendable = Sendable::builder().message(event(r)).settled(true).build();
            let sent = tokio::select! {
                s = tx.send(sendable) => s,
                () = claim.taken.cancelled() => {
                    let _ = tx.close_with_error(taken()).await;
                    return;
                }
                () = shared.ended.cancelled() => return,
            };
            if sent.is_err() {
                return;
            }
            after = r.seq;
        }
    }
}

/// `$management` requests: each answered on the session's `$management` reply link with the
/// request's message id as correlation id (same type), `status-code` (int) and a map body.
pub(super) async fn management_requests(
    mut rx: fe2o3_amqp::Receiver,
    shared: Arc<Shared>,
    replies: Arc<Replies>,
) {
    let answers = replies.with("$management", |r| r.0.clone());
    loop {
        let Some(delivery) = next_delivery(&mut rx, &shared.ended).await else {
            return;
        };
        let _ = rx.accept(&delivery).await;
        let request = delivery.message();
        let (status, description, body) = Box::pin(management(request, &shared)).await;
        let reply = reply_to(request, status, &description, body);
        let _ = answers.send(Box::new(reply));
    }
}

async fn management(request: &Message<Body<Value>>, shared: &Arc<Shared>) -> (i32, String, Value) {
    let state = shared.core.state();
    let ours = entity(state);
    if property(request, "operation") != Some("READ") {
        return (
            400,
            "$management takes operation READ of com.microsoft:eventhub or com.microsoft:partition"
                .into(),
            Value::Null,
        );
    }
    let name = property(request, "name").unwrap_or_default();
    if !name.eq_ignore_ascii_case(&ours) {
        return (
            404,
            format!("this hub's Event Hubs-compatible entity is {ours:?}, not {name:?}"),
            Value::Null,
        );
    }
    let path = format!("/{ours}/$management");
    if let Err(why) = authorize(shared, &path, "reading the Event Hubs runtime information").await {
        // The request may carry its own token (the Node SDK's security_token).
        let own = property(request, "security_token").map(str::to_string);
        let granted = match own {
            Some(token) => {
                super::service::put_token(shared, &token).await.0 == 200
                    && authorize(shared, &path, "reading the Event Hubs runtime information")
                        .await
                        .is_ok()
            }
            None => false,
        };
        if !granted {
            return (401, why, Value::Null);
        }
    }
    let bounds = match state.store().telemetry_bounds().await {
        Ok(b) => b,
        Err(e) => {
            return (
                500,
                format!("the telemetry log could not be read: {e}"),
                Value::Null,
            );
        }
    };
    let mut map = OrderedMap::new();
    let mut put = |k: &str, v: Value| {
        map.insert(Value::String(k.to_string()), v);
    };
    match property(request, "type") {
        Some("com.microsoft:eventhub") => {
            put("name", Value::String(ours.clone()));
            put(
                "created_at",
                Value::Timestamp(Timestamp::from_milliseconds(state.created_ms())),
            );
            put(
                "partition_ids",
                Value::Array(Array::from(vec![Value::String(PARTITION.into())])),
            );
        }
        Some("com.microsoft:partition") => {
            let partition = property(request, "partition").unwrap_or_default();
            if partition != PARTITION {
                return (
                    404,
                    format!("{ours} has one partition, {PARTITION:?}, not {partition:?}"),
                    Value::Null,
                );
            }
            let (last_seq, last_ms) = bounds.last.unwrap_or((0, 0));
            put("name", Value::String(ours.clone()));
            put("partition", Value::String(PARTITION.into()));
            put(
                "begin_sequence_number",
                Value::Long(bounds.first_seq.unwrap_or(last_seq + 1)),
            );
            put("last_enqueued_sequence_number", Value::Long(last_seq));
            put("last_enqueued_offset", Value::String(last_seq.to_string()));
            put(
                "last_enqueued_time_utc",
                Value::Timestamp(Timestamp::from_milliseconds(last_ms)),
            );
            put("is_partition_empty", Value::Bool(bounds.last.is_none()));
        }
        other => {
            return (
                400,
                format!(
                    "$management READ of type {other:?}: com.microsoft:eventhub or com.microsoft:partition"
                ),
                Value::Null,
            );
        }
    }
    (200, "OK".into(), Value::Map(map))
}

/// A client's receiver on `$management`: the replies.
pub(super) async fn management_replies(
    tx: fe2o3_amqp::Sender,
    replies: Arc<Replies>,
    shared: Arc<Shared>,
) {
    send_replies(tx, replies, "$management", shared.ended.clone()).await;
}

#[cfg(test)]
mod tests {
    use super::{Start, entity_name, parse_selector};

    #[test]
    fn selectors_as_the_event_hubs_sdks_write_them() {
        let p = |s: &str| parse_selector(s).expect(s);
        assert_eq!(p("amqp.annotation.x-opt-offset > '-1'"), Start::After(0));
        assert_eq!(p("amqp.annotation.x-opt-offset > '@latest'"), Start::Latest);
        assert_eq!(p("amqp.annotation.x-opt-offset >= '12'"), Start::After(11));
        assert_eq!(
            p("amqp.annotation.x-opt-sequence-number > '7'"),
            Start::After(7)
        );
        assert_eq!(
            p("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            Start::Time(1_700_000_000_000, false)
        );
        assert_eq!(
            p("amqp.annotation.x-opt-enqueued-time >= '5'"),
            Start::Time(5, true)
        );
        for bad in [
            "",
            "x-opt-offset > '1'",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-offset > 1",
            "amqp.annotation.x-opt-other > '1'",
            "amqp.annotation.x-opt-offset > 'abc'",
            "amqp.annotation.x-opt-offset '1'",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_entity_is_named_after_the_hub() {
        assert_eq!(entity_name("myhub.example.com"), "myhub");
        assert_eq!(entity_name("localhost:8443"), "localhost");
        assert_eq!(entity_name("127.0.0.1"), "certhub");
        assert_eq!(entity_name(""), "certhub");
    }
}
