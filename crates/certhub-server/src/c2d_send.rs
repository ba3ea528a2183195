//! Queueing a cloud-to-device message for a service, however it arrives: the REST API's
//! `POST /devices/{id}/messages/deviceBound`, or a transfer on the AMQP node
//! `/messages/devicebound` (the way the Azure service SDKs send). One set of checks, the
//! device's one queue (the one MQTT, HTTPS and AMQP devices receive from), the wake-up of its
//! session and the audit record.

use std::collections::BTreeMap;

use certhub_core::{DeviceId, Status, azure_time};
use certhub_store::{C2dRecord, Enqueued, StoreError};
use serde::{Deserialize, Serialize};

use crate::state::{Actor, AppState, now_ms};

/// Largest message, body and properties together (Azure's C2D limit).
pub const MAX_C2D_BODY: usize = 64 * 1024;
/// Longest time to live: two days.
pub const MAX_TTL_SECONDS: i64 = 2 * 24 * 3600;
/// Time to live when the sender names none.
pub const DEFAULT_TTL_SECONDS: i64 = 3600;

/// A message a service wants delivered.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub body: Vec<u8>,
    /// Default: a random id.
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub user_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Default: an hour.
    pub ttl_seconds: Option<i64>,
    /// none (default), positive, negative or full.
    pub ack: Option<String>,
    /// Application properties; a null value is sent as a bare key.
    pub properties: BTreeMap<String, Option<String>>,
}

/// What the store keeps beside the body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredProperties {
    pub system: BTreeMap<String, String>,
    pub ack: String,
    pub application: BTreeMap<String, Option<String>>,
}

/// A queued message.
#[derive(Debug, Clone)]
pub struct Queued {
    pub message_id: String,
    pub sequence_number: i64,
    pub enqueued_ms: i64,
    pub expiry_ms: i64,
}

/// Why a message was not queued; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("the message is {size} bytes with its properties; the limit is {MAX_C2D_BODY}")]
    TooLarge { size: usize },
    #[error("Device {0} not registered")]
    NoDevice(String),
    #[error("device {0} is disabled and cannot receive messages; enable it first")]
    Disabled(String),
    #[error(
        "device {device} already has {cap} messages waiting; it must receive some first, or purge its queue (DELETE /devices/{device}/commands)"
    )]
    QueueFull { device: String, cap: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `m`, queues it for `device` and wakes the device's session if it is connected (an
/// offline device gets it when it next connects). `actor` is who the audit record names.
pub async fn queue(
    state: &AppState,
    actor: &impl Actor,
    device: &DeviceId,
    m: Outgoing,
) -> Result<Queued, Refused> {
    let ttl = m.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(Refused::Invalid(format!(
            "the time to live (ttlSeconds; over AMQP the header ttl or absolute-expiry-time) is {ttl} s; it must be from 1 s to {MAX_TTL_SECONDS} s (two days)"
        )));
    }
    let ack = m.ack.clone().unwrap_or_else(|| "none".into());
    if !["none", "positive", "negative", "full"].contains(&ack.as_str()) {
        return Err(Refused::Invalid(format!(
            "ack is {ack:?}; it must be none, positive, negative or full"
        )));
    }
    for k in m.properties.keys() {
        if k.is_empty() || k.starts_with("$.") || k.starts_with("iothub-") {
            return Err(Refused::Invalid(format!(
                "property name {k:?} is empty or reserved ($. and iothub- belong to the hub)"
            )));
        }
    }
    let message_id = m.message_id.clone().unwrap_or_else(crate::random::hex_id);
    let now = now_ms();
    let expiry_ms = now + ttl * 1000;
    let mut system = BTreeMap::new();
    system.insert("messageId".to_string(), message_id.clone());
    for (name, v) in [
        ("correlationId", &m.correlation_id),
        ("userId", &m.user_id),
        ("contentType", &m.content_type),
        ("contentEncoding", &m.content_encoding),
    ] {
        if let Some(v) = v {
            system.insert(name.to_string(), v.clone());
        }
    }
    system.insert("expiryTimeUtc".to_string(), azure_time(expiry_ms));
    let props = StoredProperties {
        system,
        ack: ack.clone(),
        application: m.properties,
    };
    let properties = serde_json::to_string(&props).unwrap_or_default();
    // The limit covers body and properties, as the device receives both.
    let size = m.body.len() + properties.len();
    if size > MAX_C2D_BODY {
        return Err(Refused::TooLarge { size });
    }
    let d = state
        .store()
        .device(device)
        .await?
        .ok_or_else(|| Refused::NoDevice(device.to_string()))?;
    if d.status == Status::Disabled {
        return Err(Refused::Disabled(device.to_string()));
    }
    let record = C2dRecord {
        id: 0,
        device_id: device.to_string(),
        message_id: message_id.clone(),
        properties,
        body: m.body,
        enqueued_ms: now,
        expiry_ms,
        delivery_count: 0,
        ack,
    };
    let cap = state.c2d_limits().max_pending;
    let seq = match state.store().enqueue_c2d(&record, cap, now).await? {
        Enqueued::Stored(seq) => seq,
        Enqueued::NoDevice => return Err(Refused::NoDevice(device.to_string())),
        Enqueued::QueueFull => {
            return Err(Refused::QueueFull {
                device: device.to_string(),
                cap,
            });
        }
    };
    state.wake_c2d(device.as_str()).await;
    state
        .audit(
            actor,
            "c2d.send",
            &format!("devices/{device}"),
            "ok",
            &format!("messageId {message_id}"),
        )
        .await;
    Ok(Queued {
        message_id,
        sequence_number: seq,
        enqueued_ms: now,
        expiry_ms,
    })
}
