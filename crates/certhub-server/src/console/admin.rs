//! The console's hub pages: the settings (the SAS switches and the minimum TLS version) and the
//! audit trail, through the service API's settings and audit handlers.

use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::pages::{json_body, json_of, lacks, redirect};
use super::{SignedIn, document, page_error, stale_form};
use crate::api::hub;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct SettingsQuery {
    #[serde(default)]
    done: String,
    #[serde(default)]
    error: String,
}

pub(super) async fn settings(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<SettingsQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "reading hub settings") {
        return r;
    }
    let s = match hub::get_settings(State(state), who.caller.clone()).await {
        Ok(r) => json_of(r).await,
        Err(e) => return page_error(e.status, &e.message),
    };
    // Changing settings needs every right, as the API's PATCH /settings does.
    let owner = who.may(crate::api::OWNER);
    let on = |k: &str| s[k] == true;
    let body = html! {
        main {
            h1 { "Settings" }
            @if !query.done.is_empty() { p class="done" role="status" { (query.done) } }
            @if !query.error.is_empty() { p class="error" role="alert" { (query.error) } }
            form method="post" action="/console/settings" {
                input type="hidden" name="csrf" value=(who.csrf);
                fieldset disabled[!owner] {
                    legend { "How devices may authenticate" }
                    label class="check" {
                        input type="checkbox" name="disableDeviceSAS" value="true" checked[on("disableDeviceSAS")];
                        " Refuse device SAS tokens (disableDeviceSAS): devices use X.509 certificates"
                    }
                    label class="check" {
                        input type="checkbox" name="disableModuleSAS" value="true" checked[on("disableModuleSAS")];
                        " Refuse module SAS tokens (disableModuleSAS)"
                    }
                    label for="tls" { "Lowest TLS version devices may use" }
                    select id="tls" name="minTlsVersion" {
                        option value="1.2" selected[s["minTlsVersion"] == "1.2"] { "1.2" }
                        option value="1.3" selected[s["minTlsVersion"] == "1.3"] { "1.3" }
                    }
                    @if owner { button type="submit" { "Save" } }
                }
            }
            @if !owner {
                p class="note" { "Read-only: changing settings needs an owner policy (iothubowner)." }
            }
            p class="note" {
                "Local authentication (disableLocalAuth) is " strong { @if on("disableLocalAuth") { "off" } @else { "on" } }
                ". It is not changed here: switching it off signs this console out too. "
                code { "certhub hub set --disable-local-auth true" } " does it."
            }
        }
    };
    document("Settings", Some(&who), body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct SettingsForm {
    #[serde(default)]
    csrf: String,
    #[serde(rename = "disableDeviceSAS", default)]
    disable_device_sas: Option<String>,
    #[serde(rename = "disableModuleSAS", default)]
    disable_module_sas: Option<String>,
    #[serde(rename = "minTlsVersion", default)]
    min_tls_version: String,
}

pub(super) async fn save_settings(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<SettingsForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    // An unticked box is absent from the form: off.
    let patch = json_body(json!({
        "disableDeviceSAS": form.disable_device_sas.is_some(),
        "disableModuleSAS": form.disable_module_sas.is_some(),
        "minTlsVersion": form.min_tls_version,
    }));
    let patch = match patch {
        Ok(p) => p,
        Err(e) => return page_error(e.status, &e.message),
    };
    match hub::patch_settings(State(state), who.caller.clone(), patch).await {
        Ok(_) => redirect(
            "/console/settings",
            &[(
                "done",
                "Saved: devices are judged by the new settings from now on, and sessions they shut out were closed.",
            )],
        ),
        Err(e) => redirect("/console/settings", &[("error", &e.message)]),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    operation: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    outcome: String,
}

pub(super) async fn audit(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<AuditQuery>,
) -> Response {
    let params = serde_json::from_value(json!({
        "top": 200,
        "operation": query.operation.trim(),
        "target": query.target.trim(),
        "outcome": query.outcome.trim(),
    }));
    let Ok(params) = params else {
        return page_error(axum::http::StatusCode::BAD_REQUEST, "bad filter");
    };
    let records = match hub::audit(
        State(state),
        who.caller.clone(),
        crate::api::error::Query(params),
    )
    .await
    {
        Ok(r) => json_of(r).await,
        Err(e) => return page_error(e.status, &e.message),
    };
    let records = records.as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let body = html! {
        main {
            h1 { "Audit trail" }
            form method="get" action="/console/audit" class="search" role="search" {
                label for="op" { "Operation" }
                input id="op" name="operation" value=(query.operation) placeholder="device.update";
                label for="target" { "Target" }
                input id="target" name="target" value=(query.target) placeholder="devices/widget-1";
                label for="outcome" { "Outcome" }
                input id="outcome" name="outcome" value=(query.outcome) placeholder="ok";
                button type="submit" { "Filter" }
            }
            @if records.is_empty() {
                p { "No record matches." }
            } @else {
                table id="audit" {
                    caption { (records.len()) @if records.len() == 1 { " record" } @else { " records (at most 200)" } ", newest first" }
                    thead { tr {
                        th scope="col" { "when" }
                        th scope="col" { "who" }
                        th scope="col" { "operation" }
                        th scope="col" { "target" }
                        th scope="col" { "outcome" }
                        th scope="col" { "detail" }
                    } }
                    tbody {
                        @for r in &records {
                            tr {
                                td { (certhub_core::azure_time(r["atMs"].as_i64().unwrap_or(0))) }
                                td { (text(r, "actor")) }
                                td { code { (text(r, "operation")) } }
                                td { code { (text(r, "target")) } }
                                td class="outcome" { (text(r, "outcome")) }
                                td class="detail" { (text(r, "detail")) }
                            }
                        }
                    }
                }
            }
        }
    };
    document("Audit", Some(&who), body).into_response()
}
