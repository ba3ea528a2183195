//! The console's read-only pages of how devices join and what they upload: the provisioning
//! service (its ID scope, enrollments and registrations) and file uploads.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use certhub_store::EnrollmentKind;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::pages::lacks;
use super::{SignedIn, document, page_error};
use crate::state::AppState;

/// How many rows each table shows.
const ROWS: i64 = 200;

fn doc(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

pub(super) async fn provisioning(State(state): State<AppState>, who: SignedIn) -> Response {
    let host = crate::dps::this_hub(&state);
    let endpoint = html! {
        dl {
            dt { "ID scope" } dd { code id="id-scope" { (state.id_scope()) } }
            dt { "Global endpoint for devices" } dd { code { (host) } " (the device SDKs' provisioning host; MQTT 8883, HTTPS and AMQP)" }
        }
    };
    if !who.may(Rights::ENROLLMENT_READ) {
        // Azure keeps the provisioning service's rights apart from the hub's: so does certhub.
        let body = html! {
            main {
                h1 { "Provisioning" }
                (endpoint)
                p id="enrollment-rights" {
                    "The enrollments and registrations need EnrollmentRead, which the policy " strong { (who.policy()) }
                    " lacks: sign in with the provisioning service's policy, whose connection string "
                    code { "certhub hub connection-string --policy provisioningserviceowner" } " prints."
                }
            }
        };
        return document("Provisioning", Some(&who), body).into_response();
    }
    let store = state.store();
    let read = async {
        Ok::<_, certhub_store::StoreError>((
            store.enrollments(EnrollmentKind::Group, "", ROWS).await?,
            store
                .enrollments(EnrollmentKind::Individual, "", ROWS)
                .await?,
            store.registrations("", ROWS).await?,
        ))
    };
    let (groups, individuals, registrations) = match read.await {
        Ok(v) => v,
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let body = html! {
        main {
            h1 { "Provisioning" }
            (endpoint)
            p { "Enrollments are made with " code { "certhub dps" } " or the Azure provisioning service SDKs; this page lists them (the first " (ROWS) " of each)." }
            section aria-labelledby="groups-h" {
                h2 id="groups-h" { "Enrollment groups" }
                @if groups.is_empty() { p { "None." } } @else {
                    table id="groups" {
                        thead { tr { th scope="col" { "group" } th scope="col" { "attestation" } th scope="col" { "status" } th scope="col" { "updated" } } }
                        tbody {
                            @for g in &groups {
                                @let d = doc(&g.doc);
                                tr {
                                    td { code { (text(&d["enrollmentGroupId"])) } }
                                    td { (text(&d["attestation"]["type"])) }
                                    td { (text(&d["provisioningStatus"])) }
                                    td { (certhub_core::azure_time(g.updated_ms)) }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="individual-h" {
                h2 id="individual-h" { "Individual enrollments" }
                @if individuals.is_empty() { p { "None." } } @else {
                    table id="individuals" {
                        thead { tr { th scope="col" { "registration id" } th scope="col" { "attestation" } th scope="col" { "device id" } th scope="col" { "status" } } }
                        tbody {
                            @for e in &individuals {
                                @let d = doc(&e.doc);
                                tr {
                                    td { code { (text(&d["registrationId"])) } }
                                    td { (text(&d["attestation"]["type"])) }
                                    td { (text(&d["deviceId"])) }
                                    td { (text(&d["provisioningStatus"])) }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="registrations-h" {
                h2 id="registrations-h" { "Registrations" }
                @if registrations.is_empty() { p { "None yet." } } @else {
                    table id="registrations" {
                        thead { tr { th scope="col" { "registration id" } th scope="col" { "through" } th scope="col" { "hub" } th scope="col" { "device id" } th scope="col" { "status" } th scope="col" { "last" } } }
                        tbody {
                            @for r in &registrations {
                                @let d = doc(&r.doc);
                                tr {
                                    td { code { (r.id) } }
                                    td { @if r.group_id.is_empty() { "individual enrollment" } @else { "group " code { (r.group_id) } } }
                                    td { (r.assigned_hub) }
                                    td { (text(&d["deviceId"])) }
                                    td { (text(&d["status"])) @if let Some(m) = d["errorMessage"].as_str() { " (" (m) ")" } }
                                    td { (certhub_core::azure_time(r.updated_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    document("Provisioning", Some(&who), body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct FilesQuery {
    #[serde(default)]
    device: String,
}

pub(super) async fn files(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<FilesQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::SERVICE_CONNECT, "listing file uploads") {
        return r;
    }
    let device = query.device.trim();
    let uploads = match state
        .store()
        .uploads((!device.is_empty()).then_some(device), ROWS)
        .await
    {
        Ok(u) => u,
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let body = html! {
        main {
            h1 { "File uploads" }
            p { "What devices uploaded through the hub (the Azure SDKs' upload_blob_async / uploadToBlob), newest first; " code { "certhub files download" } " fetches one." }
            form method="get" action="/console/files" class="search" role="search" {
                label for="device" { "Device id" }
                input id="device" name="device" value=(device);
                button type="submit" { "Filter" }
            }
            @if uploads.is_empty() { p { "No upload." } } @else {
                table id="uploads" {
                    thead { tr {
                        th scope="col" { "device" }
                        th scope="col" { "blob" }
                        th scope="col" { "state" }
                        th scope="col" class="num" { "bytes" }
                        th scope="col" { "started" }
                        th scope="col" { "device's report" }
                    } }
                    tbody {
                        @for u in &uploads {
                            tr {
                                td { code { (u.device_id) } }
                                td class="detail" { (u.blob_name) }
                                td { (u.state.as_str()) }
                                td class="num" { @if let Some(n) = u.size_bytes { (n) } }
                                td { (certhub_core::azure_time(u.created_ms)) }
                                td { @if let Some(c) = u.status_code { (c) " " } (u.status_description.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    };
    document("Files", Some(&who), body).into_response()
}
