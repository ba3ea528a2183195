//! `/messages/events`: the telemetry log, paged by sequence number.

use axum::Json;
use axum::extract::State;

use super::error::Query;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certhub_core::Rights;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::doc::ErrorResponse;
use super::{ApiError, AppState, Caller};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// the sequence number to start from: only messages with a sequence number above this one
    #[param(minimum = -9_223_372_036_854_775_808_i64, maximum = 9_223_372_036_854_775_807_i64)]
    from: Option<i64>,
    /// messages at most (default 100); outside 1-1000 is a 400
    #[param(minimum = 1, maximum = 1000)]
    top: Option<i64>,
    /// only this device's messages
    device: Option<String>,
}

/// The parameters of `/messages/events/stream`: those of `/messages/events` but `top` (the
/// stream has no end). Only described: the stream reads [`EventsParams`], which takes the
/// same names.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StreamParams {
    /// the sequence number to start from: only messages with a sequence number above this one
    #[param(minimum = -9_223_372_036_854_775_808_i64, maximum = 9_223_372_036_854_775_807_i64)]
    from: Option<i64>,
    /// only this device's messages
    device: Option<String>,
}

/// One telemetry message as `/messages/events` returns it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryEvent {
    sequence_number: i64,
    device_id: String,
    #[schema(required = true)]
    module_id: Option<String>,
    enqueued_time: String,
    /// the message's system properties (messageId, contentType, ...)
    #[schema(value_type = Object)]
    system_properties: serde_json::Value,
    /// the message's application properties
    #[schema(value_type = Object)]
    properties: serde_json::Value,
    /// the body as text, null when it is not UTF-8
    #[schema(required = true)]
    body: Option<String>,
    /// the body as base64
    body_base64: String,
}

fn record_json(r: &certhub_store::TelemetryRecord) -> TelemetryEvent {
    let props: serde_json::Value =
        serde_json::from_str(&r.properties).unwrap_or(serde_json::Value::Null);
    TelemetryEvent {
        sequence_number: r.seq,
        device_id: r.device_id.clone(),
        module_id: r.module_id.clone(),
        enqueued_time: certhub_core::azure_time(r.enqueued_ms),
        system_properties: props["system"].clone(),
        properties: props["application"].clone(),
        body: String::from_utf8(r.body.clone()).ok(),
        body_base64: base64::engine::general_purpose::STANDARD.encode(&r.body),
    }
}

/// `GET /messages/events/stream`: Server-Sent Events, one per message (`id` = sequence
/// number, `data` = the record), live as messages are committed. Resumes after `from`, or
/// after the `Last-Event-ID` a reconnecting client sends.
#[utoipa::path(get, path = "/messages/events/stream",
    summary = "Telemetry as Server-Sent Events (id = sequence number), live; resumes after `from` or Last-Event-ID",
    description = "Needs the ServiceConnect right. Each event's data is a TelemetryEvent.",
    params(StreamParams),
    responses((status = 200, description = "an endless stream of events", content_type = "text/event-stream", body = String), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
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
    let log = state.telemetry().clone();
    let events = futures_util::stream::unfold(
        (after, follow, std::collections::VecDeque::new()),
        move |(mut after, mut follow, mut queue)| {
            let log = log.clone();
            let device = device.clone();
            async move {
                loop {
                    if let Some(r) = queue.pop_front() {
                        let r: certhub_store::TelemetryRecord = r;
                        after = r.seq;
                        let event = Event::default()
                            .id(r.seq.to_string())
                            .data(serde_json::to_string(&record_json(&r)).unwrap_or_default());
                        return Some((
                            Ok::<Event, std::convert::Infallible>(event),
                            (after, follow, queue),
                        ));
                    }
                    let upto = *follow.borrow_and_update();
                    match log.after(after, device.as_deref(), 500).await {
                        Ok(page) if !page.records.is_empty() => queue.extend(page.records),
                        Ok(page) => {
                            // Nothing (for this device) up to where the read looked: the next
                            // read starts there rather than scanning the same messages again;
                            // when that is everything committed, wait for the next commit.
                            after = after.max(page.examined);
                            if after < upto {
                                continue;
                            }
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

#[utoipa::path(get, path = "/messages/events", summary = "Telemetry, oldest first, after a sequence number",
    description = "Needs the ServiceConnect right. With `device`, one node's hub walks back that device's own messages (each points to the device's previous one) and a cluster's scans its stream from `from`; the `x-ms-continuation` header gives the sequence number the next page starts after, past the other devices' messages a scan examined.",
    params(EventsParams),
    responses((status = 200, description = "success", body = Vec<TelemetryEvent>,
        headers(("x-ms-continuation" = i64, description = "the `from` of the next page"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<EventsParams>,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "reading telemetry")?;
    let top = super::error::top(p.top, 100, 1000)?;
    let from = p.from.unwrap_or(0);
    let page = state
        .telemetry()
        .after(from, p.device.as_deref(), top)
        .await?;
    // Where the next page starts: after the last message returned when the page is full, else
    // after everything this read examined (a device filter may have skipped much of it).
    let records = page.records;
    let next = page.examined;
    let out: Vec<TelemetryEvent> = records.iter().map(record_json).collect();
    let mut response = Json(out).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&next.to_string()) {
        response.headers_mut().insert("x-ms-continuation", v);
    }
    Ok(response)
}
