//! The console's CA pages: the registered CAs, a CA's upload, and the proof of possession
//! (a verification code, the command that signs the verification certificate, and its
//! upload), all through the service API's certificate handlers.

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

use super::pages::{json_body, json_of, lacks, redirect};
use super::{SignedIn, document, page_error, stale_form};
use crate::api::certificates;
use crate::api::doc::CertificatePath;
use crate::api::error::Path;
use crate::state::AppState;

fn path(name: &str) -> Path<CertificatePath> {
    Path(CertificatePath {
        name: name.to_string(),
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    error: String,
}

pub(super) async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "listing CA certificates") {
        return r;
    }
    let all = match certificates::list(State(state), who.caller.clone()).await {
        Ok(r) => json_of(r).await,
        Err(e) => return page_error(e.status, &e.message),
    };
    let cas = all["value"].as_array().cloned().unwrap_or_default();
    let writable = who.may(Rights::REGISTRY_WRITE);
    let body = html! {
        main {
            h1 { "CA certificates" }
            p { "Devices whose chains reach a verified CA authenticate with their certificates. A CA is verified when its owner proves possession of its private key." }
            @if !query.error.is_empty() {
                p class="error" role="alert" { (query.error) }
            }
            @if cas.is_empty() {
                p { "No CA is registered yet." }
            } @else {
                table id="cas" {
                    thead { tr {
                        th scope="col" { "name" }
                        th scope="col" { "subject" }
                        th scope="col" { "status" }
                        th scope="col" { "expires" }
                        th scope="col" class="num" { "devices" }
                    } }
                    tbody {
                        @for ca in &cas {
                            @let name = ca["name"].as_str().unwrap_or("");
                            @let p = &ca["properties"];
                            tr data-ca=(name) {
                                td { a href={ "/console/ca?name=" (name) } { (name) } }
                                td { (p["subject"].as_str().unwrap_or("")) }
                                td class="status" { @if p["isVerified"] == true { "verified" } @else { "not verified" } }
                                td { (p["expiry"].as_str().unwrap_or("")) }
                                td class="num" { (p["deviceCount"]) }
                            }
                        }
                    }
                }
            }
            @if writable {
                section aria-labelledby="upload-h" {
                    h2 id="upload-h" { "Register a CA" }
                    p { "Its certificate only (PEM): never its private key. Then prove possession on its page." }
                    form method="post" action="/console/cas/upload" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        label for="ca-name" { "Name" }
                        input id="ca-name" name="name" required pattern="[A-Za-z0-9._\\-]{1,64}" placeholder="company-x";
                        label for="ca-pem" { "Certificate (PEM)" }
                        textarea id="ca-pem" name="certificate" rows="6" required spellcheck="false"
                            placeholder="-----BEGIN CERTIFICATE-----" {}
                        button type="submit" { "Register" }
                    }
                }
            }
        }
    };
    document("CAs", Some(&who), body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct UploadForm {
    #[serde(default)]
    csrf: String,
    name: String,
    certificate: String,
}

pub(super) async fn upload(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<UploadForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    let name = form.name.trim().to_string();
    let body = json_body(json!({"properties": {"certificate": form.certificate}}));
    match certificates::upload(State(state), who.caller.clone(), path(&name), body).await {
        Ok(_) => redirect("/console/ca", &[("name", &name)]),
        Err(e) => redirect("/console/cas", &[("error", &e.message)]),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct CaQuery {
    name: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    error: String,
}

pub(super) async fn show(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<CaQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "reading a CA certificate") {
        return r;
    }
    let ca: Value = match certificates::get(
        State(state.clone()),
        who.caller.clone(),
        path(&query.name),
    )
    .await
    {
        Ok(r) => json_of(r).await,
        Err(e) => return page_error(e.status, &e.message),
    };
    let p = &ca["properties"];
    let name = query.name.as_str();
    let verified = p["isVerified"] == true;
    let writable = who.may(Rights::REGISTRY_WRITE);
    let code = query.code.as_str();
    let crls = super::trust::crls_of(&state, &who, name).await;
    let body = html! {
        main {
            h1 { "CA " (name) }
            @if !query.error.is_empty() {
                p class="error" role="alert" { (query.error) }
            }
            @if verified {
                p class="done" role="status" id="ca-status" { "Verified: devices whose chains reach this CA can authenticate." }
            } @else {
                p class="error" id="ca-status" { "Not verified: its devices are refused (ca-not-verified) until its owner proves possession of its key." }
            }
            dl {
                dt { "Subject" } dd { (p["subject"].as_str().unwrap_or("")) }
                dt { "Issuer" } dd { (p["issuer"].as_str().unwrap_or("")) }
                dt { "Valid" } dd { (p["notBefore"].as_str().unwrap_or("")) " to " (p["expiry"].as_str().unwrap_or("")) }
                dt { "SHA-256 thumbprint" } dd { code { (p["thumbprintSha256"].as_str().unwrap_or("")) } }
                dt { "Devices that authenticated through it" } dd { (p["deviceCount"]) }
            }
            @if !verified && writable {
                section aria-labelledby="pop-h" {
                    h2 id="pop-h" { "Prove possession of its private key" }
                    @if code.is_empty() {
                        p { "Step 1: get a verification code. The hub keeps it for an hour; a new one replaces it." }
                        form method="post" action="/console/cas/code" {
                            input type="hidden" name="csrf" value=(who.csrf);
                            input type="hidden" name="name" value=(name);
                            button type="submit" { "Get a verification code" }
                        }
                    } @else {
                        p { "Step 1: the verification code is " code id="code" { (code) } "." }
                        p { "Step 2: where the CA's private key is, sign a certificate whose CN is that code with it. With certhub's toolkit (the CA's folder holds key.pem and cert.pem):" }
                        pre { code id="command" { "certhub pki verification-cert --issuer <the CA's folder> --code " (code) " --out verification.pem" } }
                        p { "Or with OpenSSL:" }
                        pre { code { "openssl req -new -key ca-key.pem -subj /CN=" (code) " -out verification.csr\nopenssl x509 -req -in verification.csr -CA ca-cert.pem -CAkey ca-key.pem -days 1 -sha256 -out verification.pem" } }
                        p { "Step 3: give the hub that certificate (the key never leaves your machine)." }
                        form method="post" action="/console/cas/verify" {
                            input type="hidden" name="csrf" value=(who.csrf);
                            input type="hidden" name="name" value=(name);
                            input type="hidden" name="code" value=(code);
                            label for="verification" { "Verification certificate (PEM)" }
                            textarea id="verification" name="certificate" rows="6" required spellcheck="false"
                                placeholder="-----BEGIN CERTIFICATE-----" {}
                            button type="submit" { "Verify" }
                        }
                    }
                }
            }
            (crls)
            p { a href="/console/cas" { "All CAs" } }
        }
    };
    document("CAs", Some(&who), body).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct CodeForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    certificate: String,
    /// The verification code the page showed (a failed verification keeps it).
    #[serde(default)]
    code: String,
}

fn back_to(name: &str, what: &str, value: &str) -> Response {
    redirect("/console/ca", &[("name", name), (what, value)])
}

pub(super) async fn code(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<CodeForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    match certificates::generate_code(
        State(state),
        who.caller.clone(),
        path(&form.name),
        HeaderMap::new(),
    )
    .await
    {
        Ok(r) => {
            let v = json_of(r).await;
            let code = v["properties"]["verificationCode"].as_str().unwrap_or("");
            back_to(&form.name, "code", code)
        }
        Err(e) => back_to(&form.name, "error", &e.message),
    }
}

pub(super) async fn verify(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<CodeForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    let body = json_body(json!({"certificate": form.certificate}));
    match certificates::verify(
        State(state),
        who.caller.clone(),
        path(&form.name),
        HeaderMap::new(),
        body,
    )
    .await
    {
        Ok(_) => redirect("/console/ca", &[("name", &form.name)]),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => page_error(e.status, &e.message),
        // The code stays valid after a failed proof: the page stays at step 2 with it, unless
        // the code itself is what failed (expired, or replaced by a newer one).
        Err(e) if !form.code.is_empty() && !e.code.starts_with("VerificationCode") => redirect(
            "/console/ca",
            &[
                ("name", &form.name),
                ("code", &form.code),
                ("error", &e.message),
            ],
        ),
        Err(e) => back_to(&form.name, "error", &e.message),
    }
}
