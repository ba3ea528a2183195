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

use super::pages::{json_body, json_of, lacks, redirect};
use super::{SignedIn, document, page_error, stale_form};
use crate::api::body::JsonBody;
use crate::api::c2d::send as send_c2d;
use crate::api::devices::{get_device, list_modules};
use crate::api::doc::DevicePath;
use crate::api::error::Path;
use crate::api::twins::{get_device_twin, invoke_device_method, patch_device_twin};
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
    /// A direct method's answer, as the device gave it (set by [`invoke_method`] only).
    #[serde(skip)]
    answer: String,
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
    let modules = match list_modules(State(state.clone()), who.caller.clone(), path(id)).await {
        Ok(r) => json_of(r).await.as_array().cloned().unwrap_or_default(),
        Err(e) => return page_error(e.status, &e.message),
    };
    // The chain it last presented: the leaf's expiry is the device's; the intermediates are
    // those the hub recorded.
    let chain = state.store().last_chain(id).await.unwrap_or_default();
    let mut known = Vec::with_capacity(chain.len());
    for (i, sha) in chain.iter().enumerate() {
        // A lookup per intermediate; the leaf (first) is never among them.
        let found = if i == 0 {
            None
        } else {
            state.store().intermediate(sha).await.ok().flatten()
        };
        known.push(found);
    }
    let leaf_expiry = device["x509ExpiresAt"].as_str().unwrap_or("").to_string();
    let rows: Vec<(String, String, String, String)> = chain
        .iter()
        .zip(&known)
        .enumerate()
        .map(|(i, (sha, known))| {
            let upper = sha.to_ascii_uppercase();
            match known {
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
            section aria-labelledby="modules-h" {
                h2 id="modules-h" { "Modules" }
                @if modules.is_empty() {
                    p { "None." }
                } @else {
                    table id="modules" {
                        thead { tr {
                            th scope="col" { "module id" }
                            th scope="col" { "authentication" }
                            th scope="col" { "connection" }
                            th scope="col" { "last activity" }
                        } }
                        tbody {
                            @for m in &modules {
                                tr {
                                    td { code { (m["moduleId"].as_str().unwrap_or("")) } }
                                    td { (m["authentication"]["type"].as_str().unwrap_or("")) }
                                    td { (m["connectionState"].as_str().unwrap_or("")) }
                                    td { (m["lastActivityTime"].as_str().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            @if who.may(Rights::SERVICE_CONNECT) {
                section aria-labelledby="telemetry-h" {
                    h2 id="telemetry-h" { "Telemetry" }
                    p { a href={ "/console/telemetry?id=" (super::pages::url_encode(id)) } { "The messages " (id) " sent lately, live" } }
                }
                section aria-labelledby="c2d-h" {
                    h2 id="c2d-h" { "Send a cloud-to-device message" }
                    p { "Queued for the device (kept an hour); delivered when it connects, on any transport." }
                    form method="post" action="/console/device/c2d" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        input type="hidden" name="id" value=(id);
                        label for="c2d-body" { "Message body (text)" }
                        textarea id="c2d-body" name="body" rows="2" spellcheck="false" {}
                        label for="c2d-props" { "Application properties (one key=value a line; optional)" }
                        textarea id="c2d-props" name="properties" rows="2" spellcheck="false" placeholder="priority=high" {}
                        label for="c2d-ack" { "Delivery feedback" }
                        select id="c2d-ack" name="ack" {
                            option value="none" selected { "none" }
                            option value="positive" { "positive" }
                            option value="negative" { "negative" }
                            option value="full" { "full" }
                        }
                        button type="submit" { "Send" }
                    }
                }
                section aria-labelledby="method-h" {
                    h2 id="method-h" { "Invoke a direct method" }
                    p { "The device must be connected and subscribed to methods; the page waits for its answer." }
                    form method="post" action="/console/device/method" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        input type="hidden" name="id" value=(id);
                        label for="method-name" { "Method name" }
                        input id="method-name" name="name" required autocomplete="off" spellcheck="false";
                        label for="method-payload" { "Payload (JSON)" }
                        textarea id="method-payload" name="payload" rows="2" spellcheck="false" placeholder="{\"seconds\": 5}" {}
                        label for="method-timeout" { "Seconds to wait for the answer (5 to 300)" }
                        input id="method-timeout" name="timeout" type="number" min="5" max="300" value="30";
                        button type="submit" { "Invoke" }
                    }
                    @if !query.answer.is_empty() {
                        h3 { "The device answered" }
                        pre id="method-answer" { (query.answer) }
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

#[derive(Debug, Deserialize)]
pub(super) struct C2dForm {
    #[serde(default)]
    csrf: String,
    id: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    properties: String,
    #[serde(default)]
    ack: String,
}

/// Queues a cloud-to-device message through the service API's handler (its rights check,
/// size and queue limits, audit record).
pub(super) async fn send_message(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<C2dForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    let mut properties = serde_json::Map::new();
    for line in form
        .properties
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                properties.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
            }
            _ => {
                return back_to(
                    &form.id,
                    "error",
                    &format!(
                        "{line:?} is not key=value: write one application property a line, e.g. priority=high."
                    ),
                );
            }
        }
    }
    let ack = if form.ack.is_empty() {
        "none"
    } else {
        form.ack.as_str()
    };
    let body = match json_body(json!({"body": form.body, "ack": ack, "properties": properties})) {
        Ok(b) => b,
        Err(e) => return back_to(&form.id, "error", &e.message),
    };
    match send_c2d(State(state), who.caller.clone(), path(&form.id), body).await {
        Ok(r) => {
            let queued = json_of(r).await;
            let done = format!(
                "Queued message {} for {} (it expires at {}); the device gets it on its next connection or at once if connected.",
                queued["messageId"].as_str().unwrap_or(""),
                form.id,
                queued["expiryTimeUtc"].as_str().unwrap_or(""),
            );
            back_to(&form.id, "done", &done)
        }
        Err(e) => back_to(&form.id, "error", &e.message),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct MethodForm {
    #[serde(default)]
    csrf: String,
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    timeout: String,
}

/// Invokes a direct method through the service API's handler and shows the device's answer.
pub(super) async fn invoke_method(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<MethodForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    let payload: Value = if form.payload.trim().is_empty() {
        Value::Null
    } else {
        match serde_json::from_str(&form.payload) {
            Ok(v) => v,
            Err(e) => {
                return back_to(
                    &form.id,
                    "error",
                    &format!(
                        "The payload is not JSON ({e}); a text payload goes in quotes: \"on\"."
                    ),
                );
            }
        }
    };
    let timeout: u64 = match form.timeout.trim() {
        "" => 30,
        t => match t.parse() {
            Ok(n) => n,
            Err(_) => {
                return back_to(
                    &form.id,
                    "error",
                    "The wait must be a number of seconds, 5 to 300.",
                );
            }
        },
    };
    let call = match json_body(json!({
        "methodName": form.name.trim(),
        "payload": payload,
        "responseTimeoutInSeconds": timeout,
    })) {
        Ok(c) => c,
        Err(e) => return back_to(&form.id, "error", &e.message),
    };
    match invoke_device_method(
        State(state.clone()),
        who.caller.clone(),
        path(&form.id),
        call,
    )
    .await
    {
        Ok(r) => {
            let result = json_of(r).await;
            let answer = format!(
                "status {}\n{}",
                result["status"],
                serde_json::to_string_pretty(&result["payload"]).unwrap_or_default()
            );
            // The page itself, not a redirect: a device's answer may be up to 128 KB, more
            // than a URL should carry.
            let query = DeviceQuery {
                done: format!("{} answered {}.", form.id, form.name.trim()),
                id: form.id,
                error: String::new(),
                answer,
            };
            show(State(state), who, Query(query)).await
        }
        Err(e) => back_to(&form.id, "error", &e.message),
    }
}
