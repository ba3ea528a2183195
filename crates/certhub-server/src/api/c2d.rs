//! Cloud-to-device messages: `POST /devices/{id}/messages/deviceBound` queues one (a REST
//! path of certhub's own: the Azure service SDKs send C2D over AMQP, which certhub serves
//! too, on the same queue through `c2d_send`), `DELETE /devices/{id}/commands` purges the
//! queue, and the feedback queue (azure-protocol 1.7, 4.2).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;

use super::error::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certhub_core::{Rights, azure_time};
use certhub_store::ServiceQueue;
use serde::{Deserialize, Serialize};
use utoipa::openapi::{RefOr, schema::Schema};
use utoipa::{PartialSchema, ToSchema};

use super::body::JsonObject;
use super::devices::{device_id, device_not_found};
use super::doc::{DevicePath, ErrorResponse, LockTokenPath};
use super::{ApiError, AppState, Caller, now_ms};
use crate::c2d_send::{self, Outgoing, Refused};

/// A cloud-to-device message to queue: body or bodyBase64, not both; null is the same as
/// absent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendBody {
    /// The body as text...
    body: Option<String>,
    /// ...or as base64 for binary bodies.
    body_base64: Option<String>,
    /// default: random
    message_id: Option<String>,
    correlation_id: Option<String>,
    user_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    /// Time to live, 1 s to two days (default one hour).
    #[schema(minimum = 1, maximum = 172_800, default = 3600)]
    ttl_seconds: Option<i64>,
    /// Feedback requested: none (default), positive, negative or full.
    // Text, checked by the handler, so that a bad value is refused in the hub's own words.
    #[schema(value_type = Option<AckMode>, default = "none")]
    ack: Option<String>,
    /// Application properties; a null value is sent as a bare key.
    #[serde(default)]
    properties: BTreeMap<String, Option<String>>,
}

/// Which feedback the sender wants for a message.
// Only described: `SendBody` keeps the text.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    None,
    Positive,
    Negative,
    Full,
}

/// `SendBody`'s schema plus what its fields cannot say: body and bodyBase64 are not both
/// given (the handler refuses that with a 400). Only described; the handler reads `SendBody`.
#[derive(Debug)]
pub struct C2dMessage;

impl PartialSchema for C2dMessage {
    fn schema() -> RefOr<Schema> {
        let mut schema = SendBody::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.extensions.get_or_insert_with(Default::default).insert(
                "not".to_string(),
                serde_json::json!({
                    "required": ["body", "bodyBase64"],
                    "properties": {"body": {"type": "string"}, "bodyBase64": {"type": "string"}},
                }),
            );
        }
        schema
    }
}

impl ToSchema for C2dMessage {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((AckMode::name().into_owned(), AckMode::schema()));
    }
}

/// A queued message, as the send answers it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct C2dQueued {
    device_id: String,
    message_id: String,
    sequence_number: i64,
    enqueued_time_utc: String,
    expiry_time_utc: String,
}

/// What a purge removed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PurgeResult {
    total_messages_purged: u64,
    device_id: String,
    /// always null: module queues are not purged this way
    #[schema(required = true)]
    module_id: Option<String>,
}

/// One feedback record (Azure's `FeedbackRecord`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Feedback {
    original_message_id: String,
    description: String,
    device_generation_id: String,
    device_id: String,
    enqueued_time_utc: String,
    #[schema(value_type = FeedbackStatus)]
    status_code: String,
}

/// How a message's delivery ended.
// Only described: the store keeps the text.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[allow(dead_code)]
pub enum FeedbackStatus {
    Success,
    Expired,
    DeliveryCountExceeded,
    Purged,
    Rejected,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ArgumentInvalid", message)
}

#[utoipa::path(post, path = "/devices/{id}/messages/deviceBound", summary = "Queue a cloud-to-device message",
    description = "Needs the ServiceConnect right. 403 DeviceMaximumQueueDepthExceeded when the device has c2d_max_pending messages waiting, 403 DeviceDisabled, 404 for an unknown device, 413 above 64 KB with properties.",
    params(DevicePath), request_body = C2dMessage,
    responses((status = 200, description = "success", body = C2dQueued), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
    JsonObject(m): JsonObject<SendBody>,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "sending a cloud-to-device message")?;
    let device = device_id(&id)?;
    let body = match (&m.body, &m.body_base64) {
        (Some(_), Some(_)) => return Err(invalid("give body or bodyBase64, not both")),
        (Some(t), None) => t.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| invalid(format!("bodyBase64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
    };
    let outgoing = Outgoing {
        body,
        message_id: m.message_id,
        correlation_id: m.correlation_id,
        user_id: m.user_id,
        content_type: m.content_type,
        content_encoding: m.content_encoding,
        ttl_seconds: m.ttl_seconds,
        ack: m.ack,
        properties: m.properties,
    };
    let queued = c2d_send::queue(&state, &caller, &device, outgoing)
        .await
        .map_err(|e| match e {
            Refused::Invalid(why) => invalid(why),
            e @ Refused::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageTooLarge",
                e.to_string(),
            ),
            Refused::NoDevice(d) => device_not_found(&d),
            e @ Refused::Disabled(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "DeviceDisabled", e.to_string())
            }
            e @ Refused::QueueFull { .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "DeviceMaximumQueueDepthExceeded",
                e.to_string(),
            ),
            Refused::Store(e) => e.into(),
        })?;
    Ok(Json(C2dQueued {
        device_id: device.to_string(),
        message_id: queued.message_id,
        sequence_number: queued.sequence_number,
        enqueued_time_utc: azure_time(queued.enqueued_ms),
        expiry_time_utc: azure_time(queued.expiry_ms),
    })
    .into_response())
}

#[utoipa::path(delete, path = "/devices/{id}/commands", summary = "Purge a device's cloud-to-device queue",
    description = "Needs the ServiceConnect right.", params(DevicePath),
    responses((status = 200, description = "success", body = PurgeResult), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn purge(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "purging cloud-to-device messages")?;
    let device = device_id(&id)?;
    if state.store().device(&device).await?.is_none() {
        return Err(device_not_found(device.as_str()));
    }
    let n = state.store().purge_c2d(device.as_str(), now_ms()).await?;
    state
        .audit(
            &caller,
            "c2d.purge",
            &format!("devices/{device}"),
            "ok",
            &format!("{n} messages"),
        )
        .await;
    Ok(Json(PurgeResult {
        total_messages_purged: n,
        device_id: device.to_string(),
        module_id: None,
    })
    .into_response())
}

/// How long a received feedback batch stays locked to its receiver (Azure's lock timeout).
/// How long a service holds what it received from feedback or file notifications (Azure's
/// default lock duration of both, PT1M).
pub(super) const SERVICE_LOCK_MS: i64 = 60_000;
/// Records per feedback batch at most (Azure batches up to 64).
const FEEDBACK_BATCH: i64 = 64;
/// How long feedback waits to be received before it is dropped (Azure's default
/// `feedback.ttlAsIso8601`, PT1H).
pub const FEEDBACK_TTL_MS: i64 = 3_600_000;

fn feedback_description(status: &str) -> &'static str {
    match status {
        "Success" => "Success",
        "Expired" => "Message expired before the device received it",
        "DeliveryCountExceeded" => "Message delivered the maximum number of times without PUBACK",
        "Purged" => "Message purged from the device's queue",
        "Rejected" => "Message rejected by the device",
        _ => "Unknown",
    }
}

/// `GET /messages/serviceBound/feedback`: a batch of feedback records, locked to this caller
/// for a minute under the lock token in `ETag`; 204 when there is none.
#[utoipa::path(get, path = "/messages/serviceBound/feedback",
    summary = "Receive a batch of C2D feedback, locked for 60 s under the lock token in ETag",
    description = "Needs the ServiceConnect right.",
    responses((status = 200, description = "up to 64 records", content_type = "application/vnd.microsoft.iothub.feedback.json",
        body = Vec<Feedback>,
        headers(("ETag" = String, description = "the quoted lock token"),
            ("iothub-lockuntilutc" = String, description = "when the lock runs out"))),
        (status = 204, description = "no feedback waiting"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn receive_feedback(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(
        Rights::SERVICE_CONNECT,
        "receiving cloud-to-device feedback",
    )?;
    let token = crate::random::hex_id();
    let now = now_ms();
    let records = state
        .store()
        .receive_feedback(&token, now, now + SERVICE_LOCK_MS, FEEDBACK_BATCH)
        .await?;
    if records.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let body: Vec<Feedback> = records
        .iter()
        .map(|f| Feedback {
            original_message_id: f.message_id.clone(),
            description: feedback_description(&f.status).to_string(),
            device_generation_id: f.generation_id.clone(),
            device_id: f.device_id.clone(),
            enqueued_time_utc: azure_time(f.created_ms),
            status_code: f.status.clone(),
        })
        .collect();
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/vnd.microsoft.iothub.feedback.json; charset=utf-8".to_string(),
            ),
            (axum::http::header::ETAG, format!("\"{token}\"")),
            (
                axum::http::HeaderName::from_static("iothub-lockuntilutc"),
                azure_time(now + SERVICE_LOCK_MS),
            ),
        ],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response())
}

/// `DELETE /messages/serviceBound/feedback/{lockToken}`: the batch was handled; 204.
#[utoipa::path(delete, path = "/messages/serviceBound/feedback/{lockToken}", summary = "Complete a feedback batch",
    description = "Needs the ServiceConnect right.", params(LockTokenPath),
    responses((status = 204, description = "completed"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn complete_feedback(
    state: State<AppState>,
    caller: Caller,
    token: Path<LockTokenPath>,
) -> Result<Response, ApiError> {
    settle_locked(state, caller, token, ServiceQueue::Feedback, false).await
}

/// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: the batch goes back for the
/// next receiver; 204.
#[utoipa::path(post, path = "/messages/serviceBound/feedback/{lockToken}/abandon",
    summary = "Abandon a feedback batch for the next receiver",
    description = "Needs the ServiceConnect right.", params(LockTokenPath),
    responses((status = 204, description = "abandoned"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn abandon_feedback(
    state: State<AppState>,
    caller: Caller,
    token: Path<LockTokenPath>,
) -> Result<Response, ApiError> {
    settle_locked(state, caller, token, ServiceQueue::Feedback, true).await
}

/// Completes or abandons what a service received from `queue` under a lock token (the
/// ETag of the receive, quoted or not); 412 when nothing is locked under it.
pub(super) async fn settle_locked(
    State(state): State<AppState>,
    caller: Caller,
    Path(LockTokenPath { lock_token: token }): Path<LockTokenPath>,
    queue: ServiceQueue,
    abandon: bool,
) -> Result<Response, ApiError> {
    let verb = if abandon { "abandoning" } else { "completing" };
    let what = queue.what();
    caller.require(Rights::SERVICE_CONNECT, &format!("{verb} {what}"))?;
    let token = token.trim_matches('"');
    let store = state.store();
    let settled = if abandon {
        store.abandon_locked(queue, token, now_ms()).await?
    } else {
        store.complete_locked(queue, token, now_ms()).await?
    };
    match settled {
        0 => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            format!(
                "no {what} is locked under {token:?}: the token is unknown, already completed or abandoned, or its lock ran out ({} s); receive it again",
                SERVICE_LOCK_MS / 1000
            ),
        )),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
