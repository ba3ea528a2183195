//! The console's telemetry tail: the latest messages one device (and its modules) sent, newest
//! first, reloading itself every few seconds while left open.
//!
//! On one node the tail walks back the device's own chain of messages (see
//! `TelemetryLog::latest`), however long ago it last spoke. Where there are no chains (a
//! cluster's stream, a log older than them) it looks only at the newest [`WINDOW`] messages of
//! the whole log: bounded work per reload whatever the log's size, at the price of showing
//! nothing for a device that has been quiet while many others talked.

use std::collections::VecDeque;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certhub_core::Rights;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::pages::lacks;
use super::{SignedIn, document, page_error};
use crate::state::AppState;

/// How many of the log's newest messages a reload looks through.
const WINDOW: i64 = 10_000;
/// How many of the device's messages the page shows.
const SHOWN: usize = 25;

#[derive(Debug, Deserialize)]
pub(super) struct TailQuery {
    id: String,
    /// Whether the page reloads itself (default on).
    #[serde(default)]
    paused: bool,
}

pub(super) async fn tail(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<TailQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::SERVICE_CONNECT, "reading telemetry") {
        return r;
    }
    let id = query.id.trim();
    if id.is_empty() {
        return page_error(
            StatusCode::BAD_REQUEST,
            "Name a device: /console/telemetry?id=DEVICE.",
        );
    }
    let log = state.telemetry();
    let upto = *log.follow().borrow();
    let mut after = (upto - WINDOW).max(0);
    let mut latest: VecDeque<certhub_store::TelemetryRecord> = VecDeque::new();
    let chained = match log.latest(id, SHOWN).await {
        Ok(Some(newest)) => {
            latest.extend(newest);
            after = upto;
            true
        }
        Ok(None) => false,
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    while after < upto {
        let page = match log.after(after, Some(id), 500).await {
            Ok(p) => p,
            Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let examined = page.examined;
        for r in page.records {
            if latest.len() == SHOWN {
                latest.pop_front();
            }
            latest.push_back(r);
        }
        if examined <= after {
            break;
        }
        after = examined;
    }
    let encoded = super::pages::url_encode(id);
    let body = html! {
        main {
            h1 { "Telemetry of " code { (id) } }
            p {
                "The latest " (SHOWN) " messages the device and its modules sent, newest first"
                @if chained { ". " } @else { ", among the newest " (WINDOW) " in the hub's log. " }
                @if query.paused {
                    "Paused. " a href={ "/console/telemetry?id=" (encoded) } { "Follow live" }
                } @else {
                    "The page reloads every 2 s. " a href={ "/console/telemetry?id=" (encoded) "&paused=true" } { "Pause" }
                }
            }
            @if latest.is_empty() {
                p id="no-telemetry" { "No message from " (id) @if chained { " in the hub's log." } @else { " among them." } }
            } @else {
                table id="telemetry" {
                    thead { tr {
                        th scope="col" class="num" { "sequence" }
                        th scope="col" { "enqueued" }
                        th scope="col" { "from" }
                        th scope="col" { "body" }
                        th scope="col" { "properties" }
                    } }
                    tbody {
                        @for r in latest.iter().rev() {
                            tr {
                                td class="num" { (r.seq) }
                                td { (certhub_core::azure_time(r.enqueued_ms)) }
                                td { code { (r.device_id) @if let Some(m) = &r.module_id { "/" (m) } } }
                                td class="body" { (shown_body(&r.body)) }
                                td class="detail" { (properties(&r.properties)) }
                            }
                        }
                    }
                }
            }
            p { a href={ "/console/device?id=" (encoded) } { "Back to " (id) } }
        }
    };
    let mut response = document("Devices", Some(&who), body).into_response();
    if !query.paused {
        response
            .headers_mut()
            .insert("Refresh", HeaderValue::from_static("2"));
    }
    response
}

/// A body as text when it is UTF-8, else as base64 (said so).
fn shown_body(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => text.to_string(),
        Err(_) => format!(
            "(binary, base64) {}",
            base64::engine::general_purpose::STANDARD.encode(body)
        ),
    }
}

/// The application properties of a record, `key=value` joined by spaces.
fn properties(json: &str) -> String {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    match v["application"].as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                Value::Null => k.clone(),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}
