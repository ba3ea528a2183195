//! The console's page of one device: its identity, the chain it last authenticated with (each
//! certificate with its expiry), and its twin, whose desired properties it edits with the
//! twin's ETag (a change made meanwhile is shown as a conflict, not overwritten).

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

use super::pages::{json_of, lacks, redirect};
use super::{SignedIn, document, page_error, stale_form};
use crate::api::body::JsonBody;
use crate::api::devices::get_device;
use crate::api::doc::DevicePath;
use crate::api::error::Path;
use crate::api::twins::{get_device_twin, patch_device_twin};
use crate::state::{AppState, now_ms};

fn path(id: &str) -> Path<DevicePath> {
    Path(DevicePath { id: id.to_string() })
}

fn back_to(id: &str, what: &str, value: &str) -> Response {
    redirect("/console/device", &[("id", id), (what, value)])
}

#[derive(Debug, Deserialize)]
pub(super) struct DeviceQuery {
    id: String,
    #[serde(default)]
    done: String,
    #[serde(default)]
    error: String,
}

/// How long until `ms` (unix ms), in days, as a cell's text.
fn days_left(ms: i64) -> String {
    let days = (ms - now_ms()).div_euclid(86_400_000);
    if days < 0 {
        format!("expired {} days ago", -days)
    } else {
        format!("{days} days left")
    }
}

pub(super) async fn show(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<DeviceQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "reading a device") {
        return r;
    }
    let id = query.id.as_str();
    let device = match get_device(State(state.clone()), who.caller.clone(), path(id)).await {
        Ok(r) => json_of(r).await,
        Err(e) => return page_error(e.status, &e.message),
    };
    let twin = match get_device_twin(State(state.clone()), who.caller.clone(), path(id)).await {
        Ok(r) => json_of(r).await,
        Err(e) => return page_error(e.status, &e.message),
    };
    // The chain it last presented: the leaf's expiry is the device's; the intermediates are
    // those the hub recorded.
    let chain = state.store().last_chain(id).await.unwrap_or_default();
    let known = state.store().intermediates().await.unwrap_or_default();
    let leaf_expiry = device["x509ExpiresAt"].as_str().unwrap_or("").to_string();
    let rows: Vec<(String, String, String, String)> = chain
        .iter()
        .enumerate()
        .map(|(i, sha)| {
            let upper = sha.to_ascii_uppercase();
            match known.iter().find(|r| r.sha256.eq_ignore_ascii_case(sha)) {
                Some(r) => (
                    r.subject.clone(),
                    upper,
                    certhub_core::azure_time(r.not_after_ms),
                    days_left(r.not_after_ms),
                ),
                None if i == 0 => (
                    format!("{id} (the leaf)"),
                    upper,
                    leaf_expiry.clone(),
                    String::new(),
                ),
                None => ("(not recorded)".into(), upper, String::new(), String::new()),
            }
        })
        .collect();
    let text = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let etag = twin["etag"].as_str().unwrap_or("").to_string();
    let writable = who.may(Rights::SERVICE_CONNECT);
    let body = html! {
        main {
            h1 { "Device " code { (id) } }
            @if !query.done.is_empty() { p class="done" role="status" { (query.done) } }
            @if !query.error.is_empty() { p class="error" role="alert" { (query.error) } }
            dl {
                dt { "Status" } dd id="status" { (device["status"].as_str().unwrap_or("")) }
                dt { "Authentication" } dd { (device["authentication"]["type"].as_str().unwrap_or("")) }
                dt { "Connection" } dd id="connection" { (device["connectionState"].as_str().unwrap_or("")) }
                dt { "Last activity" } dd { (device["lastActivityTime"].as_str().unwrap_or("")) }
                @if !leaf_expiry.is_empty() {
                    dt { "Certificate expires" } dd { (leaf_expiry) }
                }
            }
            section aria-labelledby="chain-h" {
                h2 id="chain-h" { "The chain it last authenticated with" }
                @if rows.is_empty() {
                    p { "None recorded: the device has not authenticated with a CA-signed chain since this was recorded." }
                } @else {
                    table id="chain" {
                        thead { tr {
                            th scope="col" { "certificate" }
                            th scope="col" { "SHA-256" }
                            th scope="col" { "expires" }
                            th scope="col" { "" }
                        } }
                        tbody {
                            @for (subject, sha, expires, left) in &rows {
                                tr { td { (subject) } td class="detail" { code { (sha) } } td { (expires) } td { (left) } }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="twin-h" {
                h2 id="twin-h" { "Twin" }
                p { "Tags, desired and reported properties, version " (twin["version"]) "." }
                h3 { "Reported by the device" }
                pre id="reported" { (text(&twin["properties"]["reported"])) }
                h3 { "Desired" }
                pre id="desired" { (text(&twin["properties"]["desired"])) }
                @if writable {
                    form method="post" action="/console/device/twin" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        input type="hidden" name="id" value=(id);
                        input type="hidden" name="etag" value=(etag);
                        label for="patch" { "Change desired properties (a JSON patch: null removes a property)" }
                        textarea id="patch" name="patch" rows="4" spellcheck="false" placeholder="{\"rate\": 5}" {}
                        button type="submit" { "Apply" }
                    }
                }
            }
            p { a href="/console/devices" { "All devices" } }
        }
    };
    document("Devices", Some(&who), body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct TwinForm {
    #[serde(default)]
    csrf: String,
    id: String,
    #[serde(default)]
    etag: String,
    patch: String,
}

/// Applies a desired-properties patch with the ETag the page was rendered with.
pub(super) async fn patch_twin(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<TwinForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    let desired: Value = match serde_json::from_str(&form.patch) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return back_to(
                &form.id,
                "error",
                "The patch must be a JSON object, e.g. {\"rate\": 5}.",
            );
        }
        Err(e) => return back_to(&form.id, "error", &format!("The patch is not JSON: {e}")),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", form.etag)) {
        headers.insert(header::IF_MATCH, v);
    }
    let body = JsonBody(json!({"properties": {"desired": desired}}));
    match patch_device_twin(
        State(state),
        who.caller.clone(),
        headers,
        path(&form.id),
        body,
    )
    .await
    {
        Ok(_) => back_to(
            &form.id,
            "done",
            "The desired properties were changed; a connected device is told at once.",
        ),
        Err(e) if e.status == StatusCode::PRECONDITION_FAILED => back_to(
            &form.id,
            "error",
            "The twin changed since this page read it (ETag conflict): nothing was applied. Read it again below and apply your change to what it is now.",
        ),
        Err(e) => back_to(&form.id, "error", &e.message),
    }
}
