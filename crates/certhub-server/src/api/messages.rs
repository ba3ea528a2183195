//! `/messages/events`: the telemetry log, paged by sequence number.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certhub_core::Rights;
use serde::Deserialize;

use super::{ApiError, AppState, Caller};

#[derive(Debug, Deserialize)]
pub struct EventsParams {
    /// Only messages with a sequence number above this one.
    from: Option<i64>,
    top: Option<i64>,
    device: Option<String>,
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<EventsParams>,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "reading telemetry")?;
    let top = p.top.unwrap_or(100).clamp(1, 1000);
    let records = state
        .store()
        .telemetry_after(p.from.unwrap_or(0), p.device.as_deref(), top)
        .await?;
    let out: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let props: serde_json::Value =
                serde_json::from_str(&r.properties).unwrap_or(serde_json::Value::Null);
            serde_json::json!({
                "sequenceNumber": r.seq,
                "deviceId": r.device_id,
                "moduleId": r.module_id,
                "enqueuedTime": certhub_core::azure_time(r.enqueued_ms),
                "systemProperties": props["system"],
                "properties": props["application"],
                "body": String::from_utf8(r.body.clone()).ok(),
                "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&r.body),
            })
        })
        .collect();
    Ok(Json(out).into_response())
}
