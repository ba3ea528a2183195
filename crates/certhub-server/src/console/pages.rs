//! The console's pages: the hub at a glance, the devices (with enable and disable), and the
//! refused connections with what to do about each.

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use certhub_core::Rights;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::{SignedIn, document, page_error};
use crate::api::body::JsonObject;
use crate::api::devices::{get_device, put_device};
use crate::api::doc::DevicePath;
use crate::api::error::Path;
use crate::state::AppState;

/// The JSON body of a service API answer.
pub(super) async fn json_of(response: Response) -> Value {
    match axum::body::to_bytes(response.into_body(), 16 << 20).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// A service API request body, as its handler's extractor would have read it.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    v: Value,
) -> Result<JsonObject<T>, crate::api::ApiError> {
    serde_json::from_value(v).map(JsonObject).map_err(|e| {
        crate::api::ApiError::bad_request("ArgumentInvalid", format!("invalid body: {e}"))
    })
}

/// A rights refusal as a page.
pub(super) fn lacks(who: &SignedIn, rights: Rights, what: &str) -> Option<Response> {
    who.caller
        .require(rights, what)
        .err()
        .map(|e| super::page_denied(who, e.status, &e.message))
}

/// One bar chart: a bar per minute, the last one the minute so far. A `gauge` (devices
/// connected) is a level at each minute's end, not a count per minute.
fn chart(id: &str, title: &str, class: &str, bars: &[(String, u64)], gauge: bool) -> maud::Markup {
    const W: f64 = 600.0;
    const H: f64 = 90.0;
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let slot = W / crate::metrics::HISTORY as f64;
    let total: u64 = bars.iter().map(|b| b.1).sum();
    let last = bars.last().map_or(0, |b| b.1);
    html! {
        figure class="chart" {
            figcaption id={ (id) "-h" } {
                @if gauge {
                    (title) ": " strong { (last) } " now (peak " (max) " in the last " (bars.len()) " min)"
                } @else {
                    (title) ": " strong { (last) } " this minute, " (total) " in the last " (bars.len()) " min (peak " (max) ")"
                }
            }
            svg id=(id) viewBox={ "0 0 " (W) " " (H + 2.0) } preserveAspectRatio="none" role="img" aria-labelledby={ (id) "-h" } {
                line x1="0" y1=(H + 1.0) x2=(W) y2=(H + 1.0) class="axis" {}
                @for (i, (label, n)) in bars.iter().enumerate() {
                    @let h = (*n as f64 / max as f64 * H).max(if *n > 0 { 1.0 } else { 0.0 });
                    @let x = W - (bars.len() - i) as f64 * slot;
                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", H - h)) width=(format!("{:.1}", slot * 0.8)) height=(format!("{h:.1}")) class=(class) {
                        title { (label) ": " (n) }
                    }
                }
            }
        }
    }
}

/// Per-minute bars of the kept samples and the minute so far: (label, value) for each of
/// admitted, refused and telemetry, and the devices connected at each minute's end.
type Series = (
    Vec<(String, u64)>,
    Vec<(String, u64)>,
    Vec<(String, u64)>,
    Vec<(String, u64)>,
);

fn series(state: &AppState) -> Series {
    let mut samples = state.metrics().history();
    samples.push(
        state
            .metrics()
            .sample(crate::state::now_ms(), state.connected_count() as u64),
    );
    let mut out: Series = Default::default();
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let label = certhub_core::azure_time(b.at_ms);
        let label = label.get(11..16).unwrap_or(&label).to_string() + " UTC";
        out.0
            .push((label.clone(), b.admitted.saturating_sub(a.admitted)));
        out.1
            .push((label.clone(), b.refused.saturating_sub(a.refused)));
        out.2
            .push((label.clone(), b.telemetry.saturating_sub(a.telemetry)));
        out.3.push((label, b.connected));
    }
    out
}

#[derive(Debug, Deserialize)]
pub(super) struct OverviewQuery {
    #[serde(default)]
    paused: bool,
}

pub(super) async fn overview(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<OverviewQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "the overview") {
        return r;
    }
    let stats = match state.store().device_stats().await {
        Ok(s) => s,
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let connects = state.metrics().connects();
    let admitted = connects.get("ok").copied().unwrap_or(0);
    let mut refused: Vec<(&String, &u64)> = connects.iter().filter(|(k, _)| *k != "ok").collect();
    refused.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let cas = state.store().cas().await.unwrap_or_default();
    let verified = cas.iter().filter(|c| c.is_verified).count();
    let expiry = state.metrics().expiry();
    let (admitted_bars, refused_bars, ingest, connected) = series(&state);
    let body = html! {
        main {
            h1 { "Overview" }
            section class="cards" aria-label="The hub now" {
                div class="card" { p class="figure" id="connected" { (state.connected_count()) } p { "devices connected now" } }
                div class="card" { p class="figure" id="registered" { (stats.total) } p { "devices registered (" (stats.disabled) " disabled)" } }
                div class="card" { p class="figure" { (admitted) } p { "connections admitted since the hub started" } }
                div class="card" { p class="figure" { (state.metrics().telemetry_count()) } p { "device-to-cloud messages taken since the hub started" } }
                div class="card" { p class="figure" { (verified) " / " (cas.len()) } p { "CA certificates verified / registered" } }
            }
            section aria-labelledby="charts-h" class="charts" {
                h2 id="charts-h" { "The last hour, per minute" }
                p {
                    @if query.paused {
                        "Paused. " a href="/console/overview" { "Follow live" }
                    } @else {
                        "The page reloads every 10 s. " a href="/console/overview?paused=true" { "Pause" }
                    }
                }
                (chart("chart-connected", "Devices connected", "connected", &connected, true))
                (chart("chart-admitted", "Connections admitted", "ok", &admitted_bars, false))
                (chart("chart-refused", "Connections refused", "bad", &refused_bars, false))
                (chart("chart-telemetry", "Device-to-cloud messages", "ingest", &ingest, false))
            }
            section aria-labelledby="refused-h" {
                h2 id="refused-h" { "Refused connections since the hub started, by reason" }
                @if refused.is_empty() {
                    p { "None." }
                } @else {
                    table {
                        thead { tr { th scope="col" { "reason" } th scope="col" class="num" { "count" } } }
                        tbody {
                            @for (reason, n) in &refused {
                                tr { td { code { (reason) } } td class="num" { (n) } }
                            }
                        }
                    }
                    p { a href="/console/refusals" { "Who was refused, and what to do" } }
                }
            }
            section aria-labelledby="expiry-h" {
                h2 id="expiry-h" { "Device certificates by expiry" }
                @match &expiry {
                    Some((expired, within)) => {
                        table {
                            thead { tr { th scope="col" { "horizon" } th scope="col" class="num" { "devices" } } }
                            tbody {
                                tr { td { "expired" } td class="num" { (expired) } }
                                @for (days, n) in within {
                                    tr { td { "within " (days) " days" } td class="num" { (n) } }
                                }
                            }
                        }
                    }
                    None => p { "Not counted yet (the hub counts every minute)." },
                }
            }
        }
    };
    let mut response = document("Overview", Some(&who), body).into_response();
    if !query.paused {
        response
            .headers_mut()
            .insert("Refresh", HeaderValue::from_static("10"));
    }
    response
}

#[derive(Debug, Deserialize)]
pub(super) struct DevicesQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    done: String,
    #[serde(default)]
    error: String,
    /// Whether the create form starts open (after a refused create).
    #[serde(default)]
    create: bool,
}

/// How many devices a page lists, and how many it reads looking for matches.
const PAGE: usize = 100;
const SCAN: i64 = 10_000;

pub(super) async fn devices(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<DevicesQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "listing devices") {
        return r;
    }
    let q = query.q.trim().to_lowercase();
    let mut rows: Vec<Value> = Vec::new();
    let mut after = String::new();
    let mut read = 0i64;
    let mut more = false;
    while read < SCAN {
        let page = match state.store().devices_after(&after, 1000).await {
            Ok(p) => p,
            Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let Some(last) = page.last() else { break };
        after = last.device_id.as_str().to_string();
        read += page.len() as i64;
        for d in &page {
            if q.is_empty() || d.device_id.as_str().to_lowercase().contains(&q) {
                if rows.len() == PAGE {
                    more = true;
                    break;
                }
                rows.push(d.to_json(state.sessions().state(d.device_id.as_str())));
            }
        }
        if more || page.len() < 1000 {
            break;
        }
    }
    let writable = who.may(Rights::REGISTRY_WRITE);
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let body = html! {
        main {
            h1 { "Devices" }
            @if !query.done.is_empty() {
                p class="done" role="status" { (query.done) }
            }
            form method="get" action="/console/devices" class="search" role="search" {
                label for="q" { "Device id contains" }
                input id="q" name="q" value=(query.q);
                button type="submit" { "Search" }
            }
            @if writable {
                details id="create" open[query.create] {
                    summary { "Create a device" }
                    form method="post" action="/console/devices/create" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        label for="new-id" { "New device id (with a CA-signed certificate, its CN)" }
                        input id="new-id" name="id" required autocomplete="off" spellcheck="false";
                        fieldset {
                            legend { "How it authenticates" }
                            label class="check" { input type="radio" name="auth" value="ca" checked; "A certificate signed by a verified CA (CN = device id)" }
                            label class="check" { input type="radio" name="auth" value="thumbprint"; "A certificate registered by its thumbprint" }
                            label class="check" { input type="radio" name="auth" value="sas"; "SAS keys, generated by the hub" }
                        }
                        label for="new-thumb" { "Primary thumbprint (SHA-1 or SHA-256 hex; for a thumbprint device)" }
                        input id="new-thumb" name="primary" autocomplete="off" spellcheck="false";
                        label for="new-thumb2" { "Secondary thumbprint (optional)" }
                        input id="new-thumb2" name="secondary" autocomplete="off" spellcheck="false";
                        button type="submit" { "Create" }
                    }
                }
            }
            @if !query.error.is_empty() {
                p class="error" role="alert" { (query.error) }
            }
            @if rows.is_empty() {
                p { "No device matches." }
            } @else {
                table id="devices" {
                    caption { (rows.len()) @if rows.len() == 1 { " device" } @else { " devices" } @if more { " shown; narrow the search for the rest" } }
                    thead { tr {
                        th scope="col" { "device id" }
                        th scope="col" { "status" }
                        th scope="col" { "authentication" }
                        th scope="col" { "connection" }
                        th scope="col" { "last activity" }
                        @if writable { th scope="col" { span class="visually-hidden" { "action" } } }
                    } }
                    tbody {
                        @for d in &rows {
                            @let id = text(d, "deviceId");
                            @let status = text(d, "status");
                            tr data-device=(id) {
                                td { a href={ "/console/device?id=" (url_encode(&id)) } { code { (id) } } }
                                td class=(status) { (status) }
                                td { (d["authentication"]["type"].as_str().unwrap_or("")) }
                                td class="connection" { (text(d, "connectionState")) }
                                td { (text(d, "lastActivityTime")) }
                                @if writable {
                                    td {
                                        form method="post" action="/console/devices/status" {
                                            input type="hidden" name="csrf" value=(who.csrf);
                                            input type="hidden" name="id" value=(id);
                                            @if status == "enabled" {
                                                input type="hidden" name="status" value="disabled";
                                                button type="submit" aria-label={ "Disable " (id) } { "Disable" }
                                            } @else {
                                                input type="hidden" name="status" value="enabled";
                                                button type="submit" aria-label={ "Enable " (id) } { "Enable" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !writable {
                p class="note" { "Read-only: the policy " strong { (who.policy()) } " lacks RegistryWrite." }
            }
        }
    };
    document("Devices", Some(&who), body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct StatusForm {
    #[serde(default)]
    csrf: String,
    id: String,
    status: String,
}

/// Enables or disables a device through the service API's own handlers (the rights check,
/// the ETag, the audit record, and for a disable the live session closed at once).
pub(super) async fn set_status(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<StatusForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return super::stale_form();
    }
    if !matches!(form.status.as_str(), "enabled" | "disabled") {
        return page_error(
            StatusCode::BAD_REQUEST,
            "status must be enabled or disabled",
        );
    }
    let path = || {
        Path(DevicePath {
            id: form.id.clone(),
        })
    };
    let current = match get_device(State(state.clone()), who.caller.clone(), path()).await {
        Ok(r) => r,
        Err(e) => return page_error(e.status, &e.message),
    };
    let etag = current.headers().get(header::ETAG).cloned();
    let mut device = json_of(current).await;
    device["status"] = Value::String(form.status.clone());
    let input = match serde_json::from_value(device) {
        Ok(i) => i,
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut headers = HeaderMap::new();
    if let Some(etag) = etag {
        headers.insert(header::IF_MATCH, etag);
    }
    match put_device(
        State(state),
        who.caller.clone(),
        path(),
        headers,
        JsonObject(input),
    )
    .await
    {
        Ok(_) => {
            let done = format!(
                "{} is {}{}",
                form.id,
                form.status,
                if form.status == "disabled" {
                    ": its connections were closed and new ones are refused"
                } else {
                    ""
                }
            );
            redirect("/console/devices", &[("done", &done)])
        }
        Err(e) => page_error(e.status, &e.message),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    primary: String,
    #[serde(default)]
    secondary: String,
}

/// Creates a device through the service API's handler (its id and thumbprint checks, the
/// audit record), enabled.
pub(super) async fn create_device(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<CreateForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return super::stale_form();
    }
    let id = form.id.trim().to_string();
    let refused = |why: &str| {
        redirect(
            "/console/devices",
            &[("error", why), ("create", "true"), ("q", &id)],
        )
    };
    if id.is_empty() {
        return refused("Give the new device an id.");
    }
    let authentication = match form.auth.as_str() {
        "ca" | "" => serde_json::json!({"type": "certificateAuthority"}),
        "thumbprint" => {
            let (primary, secondary) = (form.primary.trim(), form.secondary.trim());
            if primary.is_empty() {
                return refused(
                    "A thumbprint device needs its certificate's thumbprint: certhub pki thumbprint cert.pem (or openssl x509 -fingerprint -sha256 -noout -in cert.pem) prints it.",
                );
            }
            serde_json::json!({"type": "selfSigned", "x509Thumbprint": {
                "primaryThumbprint": primary,
                "secondaryThumbprint": (!secondary.is_empty()).then_some(secondary),
            }})
        }
        "sas" => serde_json::json!({"type": "sas"}),
        other => return refused(&format!("{other:?} is not a way to authenticate here.")),
    };
    let input = match json_body(serde_json::json!({
        "deviceId": id,
        "status": "enabled",
        "authentication": authentication,
    })) {
        Ok(i) => i,
        Err(e) => return refused(&e.message),
    };
    let path = Path(DevicePath { id: id.clone() });
    match put_device(
        State(state),
        who.caller.clone(),
        path,
        HeaderMap::new(),
        input,
    )
    .await
    {
        Ok(_) => redirect(
            "/console/device",
            &[
                ("id", &id),
                ("done", &format!("{id} was created, enabled.")),
            ],
        ),
        Err(e) => refused(&e.message),
    }
}

/// A redirect (303 after a form) to a console page with its query parameters encoded.
pub(super) fn redirect(path: &str, params: &[(&str, &str)]) -> Response {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect();
    Redirect::to(&format!("{path}?{}", query.join("&"))).into_response()
}

/// Percent-encodes a query value.
pub(super) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What to do about a refusal, by its reason.
fn fix(reason: &str) -> &'static str {
    match reason {
        "device-not-found" => {
            "Register the device (Devices, or certhub device create), or check the id the device uses."
        }
        "device-disabled" => "Enable the device if it should connect.",
        "unknown-issuer" => {
            "The chain reaches no CA registered here: upload its root or intermediate (certhub ca upload) and verify it."
        }
        "ca-not-verified" => {
            "Prove possession of the CA's key: certhub ca verification-code, then certhub pki verification-cert and certhub ca verify."
        }
        "missing-intermediate" => {
            "The device must send its intermediates with its leaf (chain.pem, not cert.pem)."
        }
        "cn-mismatch" => {
            "The leaf's CN must equal the device id (deviceId/moduleId for a module): reissue the certificate or use the id it names."
        }
        "certificate-expired" | "certificate-not-yet-valid" => {
            "Issue the device a current certificate, or check the device's clock."
        }
        "certificate-revoked" => {
            "Its issuer revoked it (a CRL or OCSP): issue a new certificate if the device is trusted again."
        }
        "certificate-blocked" => {
            "An operator blocked a certificate of its chain (certhub ca unblock lifts it)."
        }
        "crl-expired" | "revocation-unknown" => {
            "The issuer's CRL or OCSP answer is out of date: publish a new one, or make the CA's policy fail-open (certhub ca crl policy)."
        }
        "thumbprint-mismatch" => {
            "The certificate is not one of the device's registered thumbprints: update the device's primary or secondary thumbprint."
        }
        "sas-invalid" | "sas-expired" | "sas-token-expired" => {
            "The SAS token is wrong or old: check the device's key, and the device's clock."
        }
        "sas-disabled" => {
            "SAS is switched off for devices on this hub (disableDeviceSAS): use a certificate, or switch it back on."
        }
        "auth-method-mismatch" => {
            "The device connects with another kind of credential than it is registered with."
        }
        "tls-version" => {
            "The hub requires TLS 1.3 (minTlsVersion): update the device's TLS stack or lower the setting."
        }
        _ => "The README's table of refusal reasons says what it means.",
    }
}

pub(super) async fn refusals(State(state): State<AppState>, who: SignedIn) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "reading refusals") {
        return r;
    }
    let filter = certhub_store::AuditFilter {
        operation: "device.connect".into(),
        target: String::new(),
        outcome: String::new(),
    };
    let records = match state.store().audit_filtered(&filter, 500).await {
        Ok(r) => r,
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.outcome != "ok")
        .take(100)
        .collect();
    let body = html! {
        main {
            h1 { "Refusals" }
            p { "The latest refused connections, newest first, with the reason the hub named and what to do about it. Repeats within a minute are counted in one row." }
            @if refused.is_empty() {
                p { "No refused connection is on record." }
            } @else {
                table id="refusals" {
                    thead { tr {
                        th scope="col" { "when" }
                        th scope="col" { "who" }
                        th scope="col" { "reason" }
                        th scope="col" { "what to do" }
                        th scope="col" { "detail" }
                    } }
                    tbody {
                        @for r in &refused {
                            tr data-target=(r.target) {
                                td { (certhub_core::azure_time(r.at_ms)) @if r.count > 1 { " (×" (r.count) ")" } }
                                td { code { (r.target.trim_start_matches("devices/")) } }
                                td { code class="reason" { (r.outcome) } }
                                td { (fix(&r.outcome)) }
                                td class="detail" { (r.detail) }
                            }
                        }
                    }
                }
            }
        }
    };
    let mut response = document("Refusals", Some(&who), body).into_response();
    // A page to leave open: it reloads itself every 5 s.
    response
        .headers_mut()
        .insert("Refresh", HeaderValue::from_static("5"));
    response
}
