//! The console's trust pages beyond the CAs: blocked certificates, each block preceded by its
//! blast radius (who it would shut out, who is connected now), and the CRLs held for a CA.

use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pages::{json_body, json_of, lacks, redirect};
use super::{SignedIn, document, page_error, stale_form};
use crate::api::blocks::{BlockPath, ImpactQuery};
use crate::api::error::Path;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct BlocksQuery {
    #[serde(default)]
    done: String,
    #[serde(default)]
    error: String,
}

/// The block form's fields: a certificate (PEM) or its SHA-256 thumbprint, and a note.
#[derive(Debug, Deserialize)]
pub(super) struct BlockForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    certificate: String,
    #[serde(default)]
    thumbprint: String,
    #[serde(default)]
    note: String,
}

impl BlockForm {
    /// The service API's block request for these fields.
    fn request(&self) -> Value {
        let mut body = serde_json::Map::new();
        if !self.certificate.trim().is_empty() {
            body.insert("certificate".into(), json!(self.certificate.trim()));
        } else {
            body.insert("thumbprint".into(), json!(self.thumbprint.trim()));
        }
        if !self.note.trim().is_empty() {
            body.insert("note".into(), json!(self.note.trim()));
        }
        Value::Object(body)
    }
}

fn back(what: &str, message: &str) -> Response {
    redirect("/console/blocks", &[(what, message)])
}

pub(super) async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    Query(query): Query<BlocksQuery>,
) -> Response {
    if let Some(r) = lacks(&who, Rights::REGISTRY_READ, "listing blocked certificates") {
        return r;
    }
    let blocks = match crate::api::blocks::list(State(state), who.caller.clone()).await {
        Ok(r) => json_of(r).await["value"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(e) => return page_error(e.status, &e.message),
    };
    let writable = who.may(Rights::REGISTRY_WRITE);
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let body = html! {
        main {
            h1 { "Blocked certificates" }
            p { "A block shuts out every device whose presented chain holds the certificate (an intermediate blocks everything it signed), at once and on every transport, without a CRL. The refusal reason is " code { "certificate-blocked" } "." }
            @if !query.done.is_empty() { p class="done" role="status" { (query.done) } }
            @if !query.error.is_empty() { p class="error" role="alert" { (query.error) } }
            @if blocks.is_empty() {
                p { "Nothing is blocked." }
            } @else {
                table id="blocks" {
                    thead { tr {
                        th scope="col" { "certificate" }
                        th scope="col" { "SHA-256 or issuer and serial" }
                        th scope="col" { "note" }
                        th scope="col" { "since" }
                        @if writable { th scope="col" { span class="visually-hidden" { "action" } } }
                    } }
                    tbody {
                        @for b in &blocks {
                            @let id = text(b, "id");
                            tr {
                                td { (text(b, "subject")) }
                                td class="detail" {
                                    @if text(b, "thumbprint").is_empty() {
                                        (text(b, "issuer")) " · serial " (text(b, "serial"))
                                    } @else {
                                        code { (text(b, "thumbprint")) }
                                    }
                                }
                                td { (text(b, "note")) }
                                td { (text(b, "created")) }
                                @if writable {
                                    td {
                                        form method="post" action="/console/blocks/unblock" {
                                            input type="hidden" name="csrf" value=(who.csrf);
                                            input type="hidden" name="id" value=(id);
                                            button type="submit" aria-label={ "Unblock " (text(b, "subject")) } { "Unblock" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if writable {
                section aria-labelledby="block-h" {
                    h2 id="block-h" { "Block a certificate" }
                    p { "First the hub shows who the block would shut out; nothing changes until you confirm." }
                    form method="post" action="/console/blocks/impact" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        label for="block-pem" { "The certificate (PEM), e.g. Technician-Z's cert.pem" }
                        textarea id="block-pem" name="certificate" rows="5" spellcheck="false" placeholder="-----BEGIN CERTIFICATE-----" {}
                        p class="or" { "or" }
                        label for="block-thumb" { "Its SHA-256 thumbprint" }
                        input id="block-thumb" name="thumbprint" autocomplete="off" spellcheck="false";
                        label for="block-note" { "Why (kept in the audit trail)" }
                        input id="block-note" name="note" autocomplete="off";
                        button type="submit" { "Show who it shuts out" }
                    }
                }
            }
        }
    };
    document("Blocks", Some(&who), body).into_response()
}

/// The blast radius of a block asked for, with the form that confirms it.
pub(super) async fn impact(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<BlockForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    // The certificate's thumbprint, read by the block handler's own parsing.
    let record = match json_body(form.request()).and_then(|b| crate::api::blocks::requested(b.0)) {
        Ok(r) => r,
        Err(e) => return back("error", &e.message),
    };
    if record.sha256.is_empty() {
        return back(
            "error",
            "Give the certificate or its SHA-256 thumbprint (the console blocks by thumbprint; `certhub ca block --issuer --serial` blocks by issuer and serial).",
        );
    }
    let impact = match crate::api::blocks::impact(
        State(state),
        who.caller.clone(),
        Ok(Query(ImpactQuery::of(&record.sha256))),
    )
    .await
    {
        Ok(r) => json_of(r).await,
        Err(e) => return back("error", &e.message),
    };
    let identities = impact["identities"].as_array().cloned().unwrap_or_default();
    let body = html! {
        main {
            h1 { "Block " @if record.subject.is_empty() { "a certificate" } @else { (record.subject) } "?" }
            p id="impact" {
                strong { (impact["devices"]) } " registered devices last authenticated through it; "
                strong { (impact["connected"]) } " of them are connected now and would be dropped at once."
                @if impact["blocked"].as_bool() == Some(true) { " It is already blocked." }
            }
            p class="detail" { "SHA-256 " code { (record.sha256) } }
            @if !identities.is_empty() {
                (affected(&identities))
            }
            form method="post" action="/console/blocks/block" {
                input type="hidden" name="csrf" value=(who.csrf);
                input type="hidden" name="certificate" value=(form.certificate.trim());
                input type="hidden" name="thumbprint" value=(form.thumbprint.trim());
                input type="hidden" name="note" value=(form.note.trim());
                button type="submit" { "Block it" }
            }
            p { a href="/console/blocks" { "Cancel" } }
        }
    };
    document("Blocks", Some(&who), body).into_response()
}

fn affected(identities: &[Value]) -> Markup {
    html! {
        table id="affected" {
            thead { tr {
                th scope="col" { "device" }
                th scope="col" { "connected now" }
                th scope="col" { "last activity" }
            } }
            tbody {
                @for i in identities {
                    tr {
                        td { code { (i["deviceId"].as_str().unwrap_or("")) @if let Some(m) = i["moduleId"].as_str() { "/" (m) } } }
                        td { @if i["connected"].as_bool() == Some(true) { "yes" } @else { "no" } }
                        td { (i["lastActivityTime"].as_str().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

pub(super) async fn block(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<BlockForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    let body = json_body(form.request());
    match crate::api::blocks::block(State(state), who.caller.clone(), body).await {
        Ok(r) => {
            let answer = json_of(r).await;
            let mut done = format!(
                "Blocked {}: {} device(s) last authenticated through it; {} live session(s) closed.",
                answer["block"]["subject"]
                    .as_str()
                    .unwrap_or("the certificate"),
                answer["devices"],
                answer["closed"],
            );
            if let Some(note) = answer["note"].as_str() {
                done.push(' ');
                done.push_str(note);
            }
            back("done", &done)
        }
        Err(e) => back("error", &e.message),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct UnblockForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

pub(super) async fn unblock(
    State(state): State<AppState>,
    who: SignedIn,
    Form(form): Form<UnblockForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    match crate::api::blocks::unblock(
        State(state),
        who.caller.clone(),
        Path(BlockPath::of(&form.id)),
    )
    .await
    {
        Ok(_) => back(
            "done",
            "The block is lifted: devices whose chains hold the certificate are accepted again.",
        ),
        Err(e) => back("error", &e.message),
    }
}

/// The CRLs held for a CA, as a section of its page.
pub(super) async fn crls_of(state: &AppState, who: &SignedIn, name: &str) -> Markup {
    let path = Path(crate::api::doc::CertificatePath {
        name: name.to_string(),
    });
    let crls = match crate::api::crls::list(State(state.clone()), who.caller.clone(), path).await {
        Ok(r) => json_of(r).await["value"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        // The CA's page needs RegistryRead too, so this is a store error or a CA deleted
        // meanwhile.
        Err(e) => return html! { p class="error" { (e.message) } },
    };
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    html! {
        section aria-labelledby="crls-h" {
            h2 id="crls-h" { "Revocation lists held" }
            @if crls.is_empty() {
                p { "None. " code { "certhub ca crl upload --name " (name) " --file F.crl" } " adds one (of this CA, or of an intermediate below it with " code { "--issuer-chain" } "); the hub also fetches those named by devices' certificates." }
            } @else {
                table id="crls" {
                    thead { tr {
                        th scope="col" { "issuer" }
                        th scope="col" class="num" { "number" }
                        th scope="col" class="num" { "revoked" }
                        th scope="col" { "this update" }
                        th scope="col" { "next update" }
                        th scope="col" { "from" }
                    } }
                    tbody {
                        @for c in &crls {
                            tr {
                                td { (text(c, "issuer")) }
                                td class="num" { (text(c, "number")) }
                                td class="num" { (c["revokedCount"]) }
                                td { (text(c, "thisUpdate")) }
                                td { (text(c, "nextUpdate")) @if c["stale"].as_bool() == Some(true) { " " strong class="error" { "(stale)" } } }
                                td class="detail" { (text(c, "source")) }
                            }
                        }
                    }
                }
            }
        }
    }
}
