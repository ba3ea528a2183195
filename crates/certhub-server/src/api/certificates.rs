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
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;
use utoipa::ToSchema;

use super::body::JsonObject;
use super::doc::{CertificatePath, ErrorResponse, IfMatchHeader};
use super::{ApiError, AppState, Caller, OWNER, now_ms};

/// A CA certificate to register: what `PUT /certificates/{name}` takes (the answer's other
/// fields are the hub's).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CertificateUpload)]
pub struct UploadBody {
    #[schema(inline)]
    #[serde(deserialize_with = "certhub_core::json_object::object")]
    properties: UploadProperties,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UploadProperties {
    /// the CA certificate, PEM
    certificate: String,
    /// true skips the proof of possession (an owner-class policy only)
    #[serde(default)]
    is_verified: bool,
}

/// The proof of possession.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CertificateVerification)]
pub struct VerifyBody {
    /// the verification certificate, PEM
    certificate: String,
}

/// A registered CA in ARM's certificate shape.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Certificate)]
pub struct CertificateView {
    properties: CertificateProperties,
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    etag: String,
}

/// A registered CA's details.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateProperties {
    subject: String,
    issuer: String,
    not_before: String,
    expiry: String,
    thumbprint: String,
    thumbprint_sha256: String,
    is_verified: bool,
    created: String,
    updated: String,
    certificate: String,
    /// registered devices and modules that authenticated through this CA
    device_count: i64,
    /// only in the answer to generateVerificationCode
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    verification_code: Option<String>,
    /// only in the answer to generateVerificationCode
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    verification_code_expiry: Option<String>,
}

/// The registered CAs.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateList {
    value: Vec<CertificateView>,
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

fn description(r: &CaRecord, code: bool, devices: i64) -> CertificateView {
    let (verification_code, verification_code_expiry) = match (code, &r.verification_code) {
        (true, Some(c)) => (Some(c.clone()), Some(rfc1123(r.code_expires_ms))),
        _ => (None, None),
    };
    CertificateView {
        properties: CertificateProperties {
            subject: r.subject.clone(),
            issuer: r.issuer.clone(),
            not_before: rfc1123(r.not_before_ms),
            expiry: rfc1123(r.not_after_ms),
            thumbprint: r.sha1.clone(),
            thumbprint_sha256: r.sha256.clone(),
            is_verified: r.is_verified,
            created: rfc1123(r.created_ms),
            updated: rfc1123(r.updated_ms),
            certificate: r.pem.clone(),
            device_count: devices,
            verification_code,
            verification_code_expiry,
        },
        id: format!("/certificates/{}", r.name),
        name: r.name.clone(),
        kind: "Microsoft.Devices/IotHubs/Certificates".to_string(),
        etag: r.etag.0.clone(),
    }
}

pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
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

pub(super) fn not_found(name: &str) -> ApiError {
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

pub(super) async fn audited<T>(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    name: &str,
    result: Result<T, ApiError>,
    detail: &str,
) -> Result<T, ApiError> {
    let target = format!("certificates/{name}");
    audited_at(state, caller, operation, &target, result, detail).await
}

/// Records `result` of `operation` on `target` in the audit trail (`detail` when it
/// succeeded, the error's code and message when not) and hands it back.
pub(super) async fn audited_at<T>(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    target: &str,
    result: Result<T, ApiError>,
    detail: &str,
) -> Result<T, ApiError> {
    match &result {
        Ok(_) => state.audit(caller, operation, target, "ok", detail).await,
        Err(e) => {
            state
                .audit(caller, operation, target, e.code, &e.message)
                .await
        }
    }
    result
}

#[utoipa::path(get, path = "/certificates", operation_id = "list_certificates", summary = "List registered CA certificates",
    description = "Needs the RegistryRead right.",
    responses((status = 200, description = "success", body = CertificateList), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "listing CA certificates")?;
    let mut all = Vec::new();
    for r in state.store().cas().await? {
        let n = state.store().devices_of_ca(&r.name).await?;
        all.push(description(&r, false, n));
    }
    Ok(Json(CertificateList { value: all }).into_response())
}

#[utoipa::path(get, path = "/certificates/{name}", operation_id = "get_certificate", summary = "Read a registered CA",
    description = "Needs the RegistryRead right.", params(CertificatePath),
    responses((status = 200, description = "success", body = CertificateView), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
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

#[utoipa::path(put, path = "/certificates/{name}", operation_id = "upload_certificate",
    summary = "Register a CA certificate (raw PEM, base64 DER or base64 PEM; never a key). isVerified true needs an owner-class policy.",
    description = "Needs the RegistryWrite right.", params(CertificatePath), request_body = UploadBody,
    responses((status = 200, description = "success", body = CertificateView), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
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

/// A CA to register: `cert` with its facts, verified or not, at `now`.
pub(super) fn ca_record(
    name: &str,
    cert: &certhub_pki::CertificateDer<'_>,
    facts: certhub_pki::CaFacts,
    is_verified: bool,
    now: i64,
) -> CaRecord {
    CaRecord {
        name: name.to_string(),
        pem: certhub_pki::to_pem(cert),
        subject: facts.subject,
        issuer: facts.issuer,
        sha1: facts.thumbprints.sha1,
        sha256: facts.thumbprints.sha256,
        not_before_ms: facts.not_before_secs * 1000,
        not_after_ms: facts.not_after_secs * 1000,
        is_verified,
        etag: Etag::random(),
        verification_code: None,
        code_expires_ms: 0,
        created_ms: now,
        updated_ms: now,
    }
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
    let record = ca_record(name, &cert, facts, body.properties.is_verified, now);
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

#[utoipa::path(delete, path = "/certificates/{name}", operation_id = "delete_certificate", summary = "Delete a registered CA",
    description = "Needs the RegistryWrite right.", params(CertificatePath, IfMatchHeader),
    responses((status = 204, description = "success"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
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
        // Its just-in-time registration goes with it (a CA registered later under the name
        // starts without).
        state.store().set_jitr(&name, None, now_ms()).await?;
        // So do the CRLs held for it.
        state.store().delete_crls_of(&name).await?;
        state.store().delete_crl_sources_of(&name).await?;
        state.store().delete_ocsp_revocations_of(&name).await?;
        // Trust first, then the sessions: a kicked device that reconnects at once finds the
        // CA gone.
        state.reload_trust().await?;
        state
            .sessions()
            .kick_ca(&name, &format!("CA {name:?} was deleted"));
    }
    result
}

#[utoipa::path(post, path = "/certificates/{name}/generateVerificationCode",
    operation_id = "generate_verification_code",
    summary = "Issue a verification code (replaces any earlier one; bumps the ETag)",
    description = "Needs the RegistryWrite right.", params(CertificatePath, IfMatchHeader),
    responses((status = 200, description = "success", body = CertificateView), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn generate_code(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
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

#[utoipa::path(post, path = "/certificates/{name}/verify", operation_id = "verify_certificate",
    summary = "Prove possession: a certificate with CN = the code, signed by the CA's key",
    description = "Needs the RegistryWrite right.", params(CertificatePath, IfMatchHeader), request_body = VerifyBody,
    responses((status = 200, description = "success", body = CertificateView), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 412, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
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

/// Just-in-time registration of a CA's devices.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = JitrSettings)]
pub struct JitrBody {
    /// the device ids it may create: `*` any run of characters, `?` one (default `*`)
    #[serde(default)]
    device_id_pattern: Option<String>,
}

#[utoipa::path(put, path = "/certificates/{name}/jitr", operation_id = "enable_jitr",
    summary = "Turn on just-in-time registration: an unknown device whose chain reaches this verified CA is created on its first connection (certhub's; AWS IoT's JITR)",
    description = "Needs the RegistryWrite right. The CA must be verified. Each creation is audited as device.create by jitr:{name}.",
    params(CertificatePath), request_body = JitrBody,
    responses((status = 200, description = "on", body = Object), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn enable_jitr(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
    body: Result<JsonObject<JitrBody>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(
        Rights::REGISTRY_WRITE,
        "turning on just-in-time registration",
    )?;
    let result = async {
        check_name(&name)?;
        let JsonObject(body) = body?;
        let pattern = body.device_id_pattern.unwrap_or_else(|| "*".into());
        if pattern.is_empty() || pattern.len() > 128 {
            return Err(ApiError::bad_request(
                "ArgumentInvalid",
                "deviceIdPattern must be 1 to 128 characters (`*` any run, `?` one character)",
            ));
        }
        let ca = state.store().ca(&name).await?.ok_or_else(|| not_found(&name))?;
        if !ca.is_verified {
            return Err(ApiError::bad_request(
                "CertificateNotVerified",
                format!("CA {name:?} is not verified: prove possession of its key first (certhub ca verification-code --name {name})"),
            ));
        }
        state.store().set_jitr(&name, Some(&pattern), now_ms()).await?;
        Ok(pattern)
    }
    .await;
    let detail = result
        .as_ref()
        .map(|p| format!("device id pattern {p:?}"))
        .unwrap_or_default();
    let pattern = audited(&state, &caller, "ca.jitr.on", &name, result, &detail).await?;
    state.reload_trust().await?;
    Ok(
        Json(serde_json::json!({"name": name, "jitr": {"deviceIdPattern": pattern}}))
            .into_response(),
    )
}

#[utoipa::path(delete, path = "/certificates/{name}/jitr", operation_id = "disable_jitr",
    summary = "Turn off just-in-time registration for a CA (devices it created stay)",
    description = "Needs the RegistryWrite right.", params(CertificatePath),
    responses((status = 204, description = "off"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn disable_jitr(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
) -> Result<StatusCode, ApiError> {
    caller.require(
        Rights::REGISTRY_WRITE,
        "turning off just-in-time registration",
    )?;
    let result = async {
        check_name(&name)?;
        state
            .store()
            .ca(&name)
            .await?
            .ok_or_else(|| not_found(&name))?;
        state.store().set_jitr(&name, None, now_ms()).await?;
        Ok(())
    }
    .await;
    audited(&state, &caller, "ca.jitr.off", &name, result, "").await?;
    state.reload_trust().await?;
    Ok(StatusCode::NO_CONTENT)
}
