//! `/certificates`: CA registration with proof of possession, in the ARM resource shape
//! (azure-protocol 5). A new CA is unverified and authenticates no one until its owner proves
//! possession of its key with a certificate whose CN is the hub's verification code.

use axum::Json;
use axum::extract::State;

use super::error::Path;
use axum::http::header::IF_MATCH;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use certhub_core::{Etag, IfMatch, Rights};
use certhub_store::{CaRecord, DeleteOutcome, WriteOutcome};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use super::body::JsonObject;
use super::{ApiError, AppState, Caller, OWNER, now_ms};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UploadBody {
    #[serde(deserialize_with = "certhub_core::json_object::object")]
    properties: UploadProperties,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UploadProperties {
    certificate: String,
    #[serde(default)]
    is_verified: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyBody {
    certificate: String,
}

/// RFC 1123, as ARM writes certificate dates: `Sat, 31 Dec 2039 23:59:59 GMT`.
fn rfc1123(ms: i64) -> String {
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// The description with the CA's device count.
async fn described(state: &AppState, r: &CaRecord, code: bool) -> Result<Response, ApiError> {
    let n = state.store().devices_of_ca(&r.name).await?;
    Ok(Json(description(r, code, n)).into_response())
}

fn description(r: &CaRecord, code: bool, devices: i64) -> Value {
    let mut props = json!({
        "subject": r.subject,
        "issuer": r.issuer,
        "notBefore": rfc1123(r.not_before_ms),
        "expiry": rfc1123(r.not_after_ms),
        "thumbprint": r.sha1,
        "thumbprintSha256": r.sha256,
        "isVerified": r.is_verified,
        "created": rfc1123(r.created_ms),
        "updated": rfc1123(r.updated_ms),
        "certificate": r.pem,
        "deviceCount": devices,
    });
    if code {
        props["verificationCode"] = json!(r.verification_code);
        props["verificationCodeExpiry"] = json!(rfc1123(r.code_expires_ms));
    }
    json!({
        "properties": props,
        "id": format!("/certificates/{}", r.name),
        "name": r.name,
        "type": "Microsoft.Devices/IotHubs/Certificates",
        "etag": r.etag.0,
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "ArgumentInvalid",
            format!("certificate name {name:?}: use 1 to 64 of A-Z a-z 0-9 - . _"),
        ))
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "CertificateNotFound",
        format!("no CA certificate named {name:?} is registered"),
    )
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("CertificateInvalid", e.to_string())
}

/// Reads a CA and checks an `If-Match` against it.
async fn current(state: &AppState, name: &str, headers: &HeaderMap) -> Result<CaRecord, ApiError> {
    check_name(name)?;
    let r = state
        .store()
        .ca(name)
        .await?
        .ok_or_else(|| not_found(name))?;
    let condition = IfMatch::parse(headers.get(IF_MATCH).and_then(|v| v.to_str().ok()));
    if !condition.allows(&r.etag) {
        return Err(ApiError::precondition_failed(format!(
            "the ETag given does not match certificate {name:?}'s current one ({}); read it again (each verification-code request changes it)",
            r.etag
        )));
    }
    Ok(r)
}

/// Writes the new state of a CA guarded by the ETag that was read.
async fn save(state: &AppState, new: &CaRecord, old: &Etag) -> Result<(), ApiError> {
    match state.store().update_ca_state(new, old).await? {
        WriteOutcome::Written => Ok(()),
        _ => Err(ApiError::precondition_failed(format!(
            "certificate {:?} changed meanwhile; read it again",
            new.name
        ))),
    }
}

async fn audited<T>(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    name: &str,
    result: Result<T, ApiError>,
    detail: &str,
) -> Result<T, ApiError> {
    let target = format!("certificates/{name}");
    match &result {
        Ok(_) => state.audit(caller, operation, &target, "ok", detail).await,
        Err(e) => {
            state
                .audit(caller, operation, &target, e.code, &e.message)
                .await
        }
    }
    result
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "listing CA certificates")?;
    let mut all = Vec::new();
    for r in state.store().cas().await? {
        let n = state.store().devices_of_ca(&r.name).await?;
        all.push(description(&r, false, n));
    }
    Ok(Json(json!({ "value": all })).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading a CA certificate")?;
    check_name(&name)?;
    let r = state
        .store()
        .ca(&name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    described(&state, &r, false).await
}

pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<JsonObject<UploadBody>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "registering a CA certificate")?;
    let result = upload_inner(&state, &caller, &name, body).await;
    let detail = match &result {
        Ok(r) if r.is_verified => "isVerified at upload: proof of possession skipped",
        _ => "",
    };
    let result = audited(&state, &caller, "ca.upload", &name, result, detail).await;
    if result.is_ok() {
        state.reload_trust().await?;
    }
    described(&state, &result?, false).await
}

async fn upload_inner(
    state: &AppState,
    caller: &Caller,
    name: &str,
    body: Result<JsonObject<UploadBody>, ApiError>,
) -> Result<CaRecord, ApiError> {
    check_name(name)?;
    let JsonObject(body) = body?;
    if body.properties.is_verified {
        caller.require(
            OWNER,
            "registering a CA as already verified (isVerified: true)",
        )?;
    }
    let now = now_ms();
    let certs = certhub_pki::read_upload(&body.properties.certificate).map_err(invalid)?;
    let cert = certhub_pki::check_ca_upload(&certs, now / 1000).map_err(invalid)?;
    let facts = certhub_pki::ca_facts(&cert).map_err(invalid)?;
    if let Some(existing) = state.store().ca(name).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CertificateAlreadyExists",
            format!(
                "a CA certificate named {name:?} is already registered ({}); delete it first to replace it",
                existing.subject
            ),
        ));
    }
    if let Some(other) = state
        .store()
        .ca_by_sha256(&facts.thumbprints.sha256)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CertificateAlreadyExists",
            format!(
                "this certificate is already registered under the name {:?}",
                other.name
            ),
        ));
    }
    let record = CaRecord {
        name: name.to_string(),
        pem: certhub_pki::to_pem(&cert),
        subject: facts.subject,
        issuer: facts.issuer,
        sha1: facts.thumbprints.sha1,
        sha256: facts.thumbprints.sha256,
        not_before_ms: facts.not_before_secs * 1000,
        not_after_ms: facts.not_after_secs * 1000,
        is_verified: body.properties.is_verified,
        etag: Etag::random(),
        verification_code: None,
        code_expires_ms: 0,
        created_ms: now,
        updated_ms: now,
    };
    match state.store().create_ca(&record).await? {
        WriteOutcome::Written => Ok(record),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "CertificateAlreadyExists",
            format!(
                "a CA certificate named {name:?}, or this certificate, was registered meanwhile"
            ),
        )),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "deleting a CA certificate")?;
    let result = async {
        check_name(&name)?;
        let condition = IfMatch::parse(headers.get(IF_MATCH).and_then(|v| v.to_str().ok()));
        let current = match condition.is_list() {
            true => state.store().ca(&name).await?.map(|c| c.etag),
            false => None,
        };
        let expected = condition.expected(current.as_ref());
        match state.store().delete_ca(&name, expected.as_ref()).await? {
            DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
            DeleteOutcome::NotFound => Err(not_found(&name)),
            DeleteOutcome::Stale => Err(ApiError::precondition_failed(format!(
                "the ETag given does not match certificate {name:?}'s current one; read it again"
            ))),
        }
    }
    .await;
    let result = audited(&state, &caller, "ca.delete", &name, result, "").await;
    if result.is_ok() {
        // Trust first, then the sessions: a kicked device that reconnects at once finds the
        // CA gone.
        state.reload_trust().await?;
        state
            .sessions()
            .kick_ca(&name, &format!("CA {name:?} was deleted"));
    }
    result
}

pub async fn generate_code(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "generating a verification code")?;
    let result = async {
        let old = current(&state, &name, &headers).await?;
        let mut bytes = [0u8; 24];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
            ApiError::from(certhub_store::StoreError::Corrupt(
                "random source failed".into(),
            ))
        })?;
        let code: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        let now = now_ms();
        let mut new = old.clone();
        new.verification_code = Some(code);
        new.code_expires_ms = now + state.code_ttl_ms();
        new.etag = Etag::random();
        new.updated_ms = now;
        save(&state, &new, &old.etag).await?;
        Ok(new)
    }
    .await;
    let r = audited(&state, &caller, "ca.verification-code", &name, result, "").await?;
    described(&state, &r, true).await
}

pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<JsonObject<VerifyBody>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "verifying a CA certificate")?;
    let result = async {
        let old = current(&state, &name, &headers).await?;
        let JsonObject(body) = body?;
        let now = now_ms();
        let Some(code) = old.verification_code.clone() else {
            return Err(ApiError::bad_request(
                "VerificationCodeMissing",
                format!("certificate {name:?} has no verification code: call generateVerificationCode first"),
            ));
        };
        if now > old.code_expires_ms {
            return Err(ApiError::bad_request(
                "VerificationCodeExpired",
                format!(
                    "the verification code expired at {}; generate a new one",
                    rfc1123(old.code_expires_ms)
                ),
            ));
        }
        let certs = certhub_pki::read_upload(&body.certificate).map_err(invalid)?;
        let [pop] = certs.as_slice() else {
            return Err(ApiError::bad_request(
                "CertificateInvalid",
                "send exactly one verification certificate",
            ));
        };
        let ca = certhub_pki::read_upload(&old.pem)
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| ApiError::from(certhub_store::StoreError::Corrupt(format!("CA {name}"))))?;
        certhub_pki::verify_possession(&ca, pop, &code, now / 1000)
            .map_err(|e| ApiError::bad_request("ProofOfPossessionFailed", e.to_string()))?;
        let mut new = old.clone();
        new.is_verified = true;
        new.verification_code = None;
        new.code_expires_ms = 0;
        new.etag = Etag::random();
        new.updated_ms = now;
        save(&state, &new, &old.etag).await?;
        Ok(new)
    }
    .await;
    let result = audited(&state, &caller, "ca.verify", &name, result, "").await;
    if result.is_ok() {
        state.reload_trust().await?;
    }
    described(&state, &result?, false).await
}
