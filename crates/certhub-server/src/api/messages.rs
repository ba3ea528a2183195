//! `/messages/events`: the telemetry log, paged by sequence number.

use axum::Json;
use axum::extract::State;

use super::error::Query;
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

fn record_json(r: &certhub_store::TelemetryRecord) -> serde_json::Value {
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
}

/// `GET /messages/events/stream`: Server-Sent Events, one per message (`id` = sequence
/// number, `data` = the record), live as messages are committed. Resumes after `from`, or
/// after the `Last-Event-ID` a reconnecting client sends.
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Query(p): Query<EventsParams>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    caller.require(Rights::SERVICE_CONNECT, "reading telemetry")?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resume.or(p.from).unwrap_or(0);
    let device = p.device;
    let follow = state.telemetry().follow();
    let store = state.store().clone();
    let events = futures_util::stream::unfold(
        (after, follow, std::collections::VecDeque::new()),
        move |(mut after, mut follow, mut queue)| {
            let store = store.clone();
            let device = device.clone();
            async move {
                loop {
                    if let Some(r) = queue.pop_front() {
                        let r: certhub_store::TelemetryRecord = r;
                        after = r.seq;
                        let event = Event::default()
                            .id(r.seq.to_string())
                            .data(record_json(&r).to_string());
                        return Some((
                            Ok::<Event, std::convert::Infallible>(event),
                            (after, follow, queue),
                        ));
                    }
                    // Everything up to here is committed and visible to the read below.
                    let upto = *follow.borrow_and_update();
                    match store.telemetry_after(after, device.as_deref(), 500).await {
                        Ok(batch) if !batch.is_empty() => queue.extend(batch),
                        Ok(_) => {
                            // Nothing (for this device) up to `upto`: the next read starts
                            // there rather than scanning the same messages again; then wait
                            // for the next commit.
                            after = after.max(upto);
                            if follow.changed().await.is_err() {
                                return None;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "telemetry stream read failed");
                            return None;
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<EventsParams>,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "reading telemetry")?;
    let top = super::error::top(p.top, 100, 1000)?;
    let from = p.from.unwrap_or(0);
    // Everything up to here is committed and visible to the read below.
    let upto = *state.telemetry().follow().borrow();
    let records = state
        .store()
        .telemetry_after(from, p.device.as_deref(), top)
        .await?;
    // Where the next page starts: after the last message returned when the page is full, else
    // after everything this read examined (a device filter may have skipped much of it).
    let last = records.last().map_or(from, |r| r.seq);
    let next = if records.len() as i64 == top {
        last
    } else {
        last.max(upto)
    };
    let out: Vec<serde_json::Value> = records.iter().map(record_json).collect();
    let mut response = Json(out).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&next.to_string()) {
        response.headers_mut().insert("x-ms-continuation", v);
    }
    Ok(response)
}
