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

use std::collections::VecDeque;

use certhub_amqp::message::{AnyMessage, encode};
use certhub_amqp::types::definitions::{AmqpError, Error};
use certhub_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Properties,
};
use certhub_amqp::types::primitives::{Array, OrderedMap, Symbol, Timestamp, Value};
use certhub_amqp::{AttachRequest, LinkId, error};
use certhub_core::MessageProperties;
use certhub_store::TelemetryRecord;

use super::connection::{Done, Work, property};
use super::service::{ServiceSlot, authorize, put_token, renew};
use crate::state::{AppState, PartitionClaim, now_ms};

/// The only partition.
const PARTITION: &str = "0";
/// Messages read from the log per query.
const READ_BATCH: i64 = 1024;

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
fn selector(source: Option<&certhub_amqp::types::messaging::Source>) -> Option<String> {
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
fn event(r: &TelemetryRecord) -> AnyMessage {
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
pub(super) struct Asked {
    pub entity: String,
    pub group: String,
    pub partition: String,
}

/// Silence on the log this long makes a waiting reader look again anyway.
const POLL_MS: i64 = 1_000;

/// A partition receiver, as the connection keeps it.
pub(super) struct Partition {
    path: String,
    /// Its place among the partition's readers (dropped: released).
    _claim: PartitionClaim,
    /// Ends the watch on the claim when the link ends.
    _watch: tokio_util::sync::DropGuard,
    /// Events read and not yet sent: sequence number and encoded message.
    pub(super) ready: VecDeque<(i64, Vec<u8>)>,
    /// The last sequence number read from the log.
    read_to: i64,
    /// A read is under way.
    reading: bool,
    /// Nothing new in the log: waiting for the writer (or the poll).
    pub(super) waiting: bool,
    poll_at: i64,
    /// When the token it reads under runs out (ms): looked at again then.
    token_expiry_ms: i64,
}

/// Judges a receiver's attach on `{entity}/ConsumerGroups/{group}/Partitions/{partition}`:
/// the entity and partition, the right to read, the owner level, the selector.
pub(super) async fn attach(
    state: &AppState,
    slot: &ServiceSlot,
    request: &AttachRequest,
    asked: Asked,
    on_claim: impl FnOnce(&PartitionClaim) -> tokio_util::sync::DropGuard,
) -> Result<Box<Partition>, Error> {
    let Asked {
        entity: entity_asked,
        group,
        partition,
    } = asked;
    let ours = entity(state);
    if !entity_asked.eq_ignore_ascii_case(&ours) {
        let why = format!(
            "this hub's Event Hubs-compatible entity is {ours:?}, not {entity_asked:?} (EntityPath in `certhub hub connection-string --event-hub`)"
        );
        return Err(error(AmqpError::NotFound, &why));
    }
    if partition != PARTITION || group.is_empty() {
        let why = format!(
            "{entity_asked} has one partition, {PARTITION:?}, in any consumer group; not partition {partition:?} of group {group:?}"
        );
        return Err(error(AmqpError::NotFound, &why));
    }
    let path = format!("/{ours}/ConsumerGroups/{group}/Partitions/{partition}");
    let grant = authorize(state, slot, &path, "reading device telemetry")
        .await
        .map_err(|why| error(AmqpError::UnauthorizedAccess, &why))?;
    if request.client_sends {
        let why = format!("{path} is read, not written: attach a receiver");
        return Err(error(AmqpError::NotAllowed, &why));
    }
    // An Event Hubs reader's owner level (epoch), if it asks for one.
    let owner_level = request.attach.properties.as_ref().and_then(|p| {
        match p.get(&Symbol::from("com.microsoft:epoch")) {
            Some(Value::Long(n)) => Some(*n),
            Some(Value::Int(n)) => Some(i64::from(*n)),
            _ => None,
        }
    });
    let start = match selector(request.attach.source.as_deref()).map(|s| parse_selector(&s)) {
        None => Start::After(0),
        Some(parsed) => parsed.map_err(|why| error(AmqpError::InvalidField, &why))?,
    };
    let read_to = match start {
        Start::After(n) => n,
        Start::Latest => *state.telemetry().follow().borrow(),
        Start::Time(ms, inclusive) => state
            .telemetry()
            .seq_before_time(ms, inclusive)
            .await
            .map_err(|e| error(AmqpError::InternalError, &e.to_string()))?,
    };
    let key = format!("{}/{partition}", group.to_ascii_lowercase());
    let claim = state
        .partition_readers()
        .claim(&key, owner_level)
        .map_err(|why| error(certhub_amqp::types::definitions::LinkError::Stolen, &why))?;
    let watch = on_claim(&claim);
    Ok(Box::new(Partition {
        path,
        _claim: claim,
        _watch: watch,
        ready: VecDeque::new(),
        read_to,
        reading: false,
        waiting: false,
        poll_at: 0,
        token_expiry_ms: grant.expiry.saturating_mul(1000),
    }))
}

impl Partition {
    pub(super) fn deadline(&self) -> i64 {
        if self.waiting {
            self.poll_at.min(self.token_expiry_ms)
        } else {
            self.token_expiry_ms
        }
    }

    /// The token (renewed, or the link ends) and the poll.
    pub(super) fn timer(
        &mut self,
        state: &AppState,
        slot: &ServiceSlot,
        now: i64,
    ) -> Result<(), Error> {
        renew(
            &mut self.token_expiry_ms,
            state,
            slot,
            &self.path,
            "reading device telemetry",
            now,
        )?;
        if self.waiting && self.poll_at <= now {
            self.waiting = false;
        }
        Ok(())
    }

    /// Reads the next events of the log when few are left to send.
    pub(super) fn read_more(&mut self, state: &AppState, link: LinkId) -> Option<Work> {
        if self.reading || self.waiting || self.ready.len() >= (READ_BATCH / 2) as usize {
            return None;
        }
        self.reading = true;
        let after = self.read_to;
        let state = state.clone();
        Some(Box::pin(async move {
            let result = state
                .telemetry()
                .after(after, None, READ_BATCH)
                .await
                .map(|page| {
                    page.records
                        .iter()
                        .map(|r| (r.seq, encode(&event(r))))
                        .collect()
                })
                .map_err(|e| e.to_string());
            Done::Events { link, result }
        }))
    }

    pub(super) fn read_done(&mut self, result: Result<Vec<(i64, Vec<u8>)>, String>) {
        self.reading = false;
        let batch = match result {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "telemetry not read for an Event Hubs reader");
                Vec::new()
            }
        };
        if batch.is_empty() {
            self.waiting = true;
            self.poll_at = now_ms() + POLL_MS;
            return;
        }
        if let Some((seq, _)) = batch.last() {
            self.read_to = *seq;
        }
        self.ready.extend(batch);
    }
}

/// `$management` requests: the answer's status, description and map body.
pub(super) async fn management(
    request: &AnyMessage,
    state: &AppState,
    slot: &ServiceSlot,
) -> (i32, String, Value) {
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
    if let Err(why) = authorize(
        state,
        slot,
        &path,
        "reading the Event Hubs runtime information",
    )
    .await
    {
        // The request may carry its own token (the Node SDK's security_token).
        let own = property(request, "security_token").map(str::to_string);
        let granted = match own {
            Some(token) => {
                put_token(state, slot, &token).await.0 == 200
                    && authorize(
                        state,
                        slot,
                        &path,
                        "reading the Event Hubs runtime information",
                    )
                    .await
                    .is_ok()
            }
            None => false,
        };
        if !granted {
            return (401, why, Value::Null);
        }
    }
    let bounds = match state.telemetry().bounds().await {
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
