//! `/certificates/{name}/crls`: certificate revocation lists held for a registered CA, of the
//! CA itself or of an intermediate below it (with that intermediate's certificate). Every
//! connect checks the chain's certificates against them; a new CRL closes the live sessions
//! it revokes.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certhub_core::Rights;
use certhub_store::CrlRecord;

use crate::crl_fetch::{Held, NotHeld};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::certificates::{audited, check_name, not_found};
use super::doc::{CertificatePath, CrlPath, ErrorResponse};
use super::error::Path;
use super::{ApiError, AppState, Caller, now_ms};

/// The largest upload: a CRL of [`certhub_pki::MAX_CRL_BYTES`] in base64, with room for the
/// issuer chain.
const MAX_UPLOAD: usize = certhub_pki::MAX_CRL_BYTES / 3 * 4 + (1 << 20);

/// A CRL to hold for a CA.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CrlUpload)]
pub struct CrlBody {
    /// the CRL: PEM (`X509 CRL`) or base64 of its DER
    crl: String,
    /// PEM of the CRL issuer's certificate, then any between it and the CA, when an
    /// intermediate below the CA issued the CRL (omit it for a CRL the CA issued itself)
    #[serde(default)]
    issuer_chain: Option<String>,
}

/// A CRL the hub holds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Crl)]
pub struct CrlView {
    /// the registered CA it is held for
    ca: String,
    /// the CRL issuer's subject
    issuer: String,
    /// SHA-256 of the CRL issuer's SubjectPublicKeyInfo, hex: the CRL's key under the CA
    issuer_key: String,
    /// the CRL number, decimal
    number: String,
    /// RFC 3339
    this_update: String,
    /// RFC 3339; absent when the CRL has no nextUpdate
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next_update: Option<String>,
    /// past its nextUpdate: the issuer should have published a newer one (its entries still
    /// count)
    stale: bool,
    /// how many certificates it revokes
    revoked_count: i64,
    /// where it came from: `upload`, or the distribution point's URL it was fetched from
    source: String,
    /// when the hub took it, RFC 3339
    stored: String,
}

/// The CRLs held for a CA.
#[derive(Debug, Serialize, ToSchema)]
pub struct CrlList {
    value: Vec<CrlView>,
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn view(r: &CrlRecord, now: i64) -> CrlView {
    CrlView {
        ca: r.ca.clone(),
        issuer: r.issuer.clone(),
        issuer_key: r.issuer_key.clone(),
        number: r.number.clone(),
        this_update: rfc3339(r.this_update_ms),
        next_update: (r.next_update_ms != 0).then(|| rfc3339(r.next_update_ms)),
        stale: r.next_update_ms != 0 && now > r.next_update_ms,
        revoked_count: r.entries,
        source: r.source.clone(),
        stored: rfc3339(r.stored_ms),
    }
}

/// The CA registered as `name` (a valid name), or the error that says it is not.
async fn registered(state: &AppState, name: &str) -> Result<certhub_store::CaRecord, ApiError> {
    check_name(name)?;
    state.store().ca(name).await?.ok_or_else(|| not_found(name))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("CrlInvalid", message)
}

#[utoipa::path(get, path = "/certificates/{name}/crls", operation_id = "list_crls",
    summary = "List the certificate revocation lists held for a CA (certhub's; Azure checks none)",
    description = "Needs the RegistryRead right.", params(CertificatePath),
    responses((status = 200, description = "success", body = CrlList), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "listing a CA's CRLs")?;
    registered(&state, &name).await?;
    let now = now_ms();
    let value = state
        .store()
        .crls_of(&name)
        .await?
        .iter()
        .map(|r| view(r, now))
        .collect();
    Ok(Json(CrlList { value }).into_response())
}

/// A CRL distribution point the hub learnt from a device's chain under the CA, and how
/// fetching it goes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CrlSource)]
pub struct SourceView {
    /// the URL named in the certificates' cRLDistributionPoints
    url: String,
    /// the CRL issuer's subject
    issuer: String,
    /// SHA-256 of the CRL issuer's SubjectPublicKeyInfo, hex
    issuer_key: String,
    /// when a device's chain first named it, RFC 3339
    found: String,
    /// when the hub fetches it next, RFC 3339
    next_fetch: String,
    /// the last attempt, RFC 3339; absent before the first
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_fetch: Option<String>,
    /// the last success, RFC 3339; absent before the first
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_success: Option<String>,
    /// failed attempts since the last success
    failures: i64,
    /// what went wrong the last time; absent after a success
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_error: Option<String>,
}

/// The distribution points of a CA's devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct CrlSourceList {
    value: Vec<SourceView>,
}

#[utoipa::path(get, path = "/certificates/{name}/crlSources", operation_id = "list_crl_sources",
    summary = "List the CRL distribution points that the chains of a CA's devices name, with when each is fetched and how the last fetch went (certhub's)",
    description = "Needs the RegistryRead right.", params(CertificatePath),
    responses((status = 200, description = "success", body = CrlSourceList), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn list_sources(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
) -> Result<Response, ApiError> {
    caller.require(
        Rights::REGISTRY_READ,
        "listing a CA's CRL distribution points",
    )?;
    registered(&state, &name).await?;
    let when = |ms: i64| (ms != 0).then(|| rfc3339(ms));
    let value = state
        .store()
        .crl_sources_of(&name)
        .await?
        .into_iter()
        .map(|s| SourceView {
            url: s.url,
            issuer: s.issuer,
            issuer_key: s.issuer_key,
            found: rfc3339(s.found_ms),
            next_fetch: rfc3339(s.next_fetch_ms),
            last_fetch: when(s.fetched_ms),
            last_success: when(s.ok_ms),
            failures: s.failures,
            last_error: (!s.error.is_empty()).then_some(s.error),
        })
        .collect();
    Ok(Json(CrlSourceList { value }).into_response())
}

#[utoipa::path(post, path = "/certificates/{name}/crls", operation_id = "upload_crl",
    summary = "Hold a certificate revocation list for a CA: of the CA itself, or of an intermediate below it (give that intermediate's certificate in issuerChain). It replaces the CRL held for the same issuer when its number is higher; devices whose chains it revokes are refused (certificate-revoked) and their live sessions close.",
    description = "Needs the RegistryWrite right. At most 64 MiB of CRL.", params(CertificatePath), request_body = CrlBody,
    responses((status = 200, description = "held", body = CrlView), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "uploading a CRL")?;
    let result = upload_inner(&state, &name, body).await;
    let detail = match &result {
        Ok((r, changed)) => format!(
            "CRL number {} of {:?}: {} revoked{}",
            r.number,
            r.issuer,
            r.entries,
            if *changed { "" } else { " (already held)" }
        ),
        Err(_) => String::new(),
    };
    let (record, changed) =
        audited(&state, &caller, "ca.crl.upload", &name, result, &detail).await?;
    if changed {
        state.reload_trust().await?;
    }
    Ok(Json(view(&record, now_ms())).into_response())
}

async fn upload_inner(
    state: &AppState,
    name: &str,
    body: Body,
) -> Result<(CrlRecord, bool), ApiError> {
    check_name(name)?;
    let bytes = axum::body::to_bytes(body, MAX_UPLOAD).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageTooLarge",
            format!(
                "the upload is larger than {MAX_UPLOAD} bytes: a CRL may be at most {} bytes",
                certhub_pki::MAX_CRL_BYTES
            ),
        )
    })?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "ArgumentInvalid",
            "the request needs a JSON object body: {\"crl\": \"<PEM or base64 DER>\", \"issuerChain\": \"<PEM>\"}",
        ));
    }
    let body: CrlBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("ArgumentInvalid", format!("invalid JSON body: {e}")))?;
    let ca = registered(state, name).await?;
    let crl = body.crl.trim();
    let der_or_pem: Vec<u8> = if crl.starts_with("-----BEGIN") {
        crl.as_bytes().to_vec()
    } else {
        let compact: String = crl.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| {
                invalid(format!(
                    "crl is neither PEM (-----BEGIN X509 CRL-----) nor base64 of a DER CRL: {e}"
                ))
            })?
    };
    let chain_pem = body.issuer_chain.unwrap_or_default();
    let chain = if chain_pem.trim().is_empty() {
        Vec::new()
    } else {
        certhub_pki::read_certificates(chain_pem.as_bytes())
            .map_err(|e| invalid(format!("issuerChain: {e}")))?
    };
    let ca_der = certhub_pki::read_upload(&ca.pem)
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| invalid(format!("the registered CA {name:?} does not parse")))?;
    // A large CRL takes a while to parse and check: off the async workers.
    let ca_kept = ca_der.clone();
    let (checked, chain_kept) = tokio::task::spawn_blocking(move || {
        let checked = certhub_pki::read_crl_for(&der_or_pem, &ca_der, &chain);
        (checked, chain)
    })
    .await
    .map_err(|e| invalid(format!("checking the CRL failed: {e}")))?;
    let chain_pem_given = !chain_kept.is_empty();
    let checked = checked.map_err(|e| {
        let hint = if !chain_pem_given && e.to_string().contains("not by the CA") {
            ": a CRL of an intermediate below the CA needs that intermediate's certificate (and any between it and the CA) in issuerChain"
        } else {
            ""
        };
        invalid(format!("the CRL is not taken for CA {name:?}: {e}{hint}"))
    })?;
    let record = crate::crl_fetch::record(name, &checked, &chain_kept, "upload");
    // The trust reload that files it takes it from here rather than checking it again.
    state.crl_cache().checked(&ca_kept, &record, checked);
    match crate::crl_fetch::hold(state.store(), &record).await {
        Ok(Held::New) => Ok((record, true)),
        Ok(Held::Already(old)) => Ok((old, false)),
        Err(NotHeld::Outdated(number, held)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "CrlOutdated",
            format!(
                "this is CRL number {number} of {:?}, older than number {held} held for CA {name:?}: upload the newest CRL",
                record.issuer
            ),
        )),
        Err(NotHeld::NumberReused(number)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "CrlNumberReused",
            format!(
                "a different CRL with number {number} of {:?} is already held for CA {name:?}: a CA gives each new CRL a higher number",
                record.issuer
            ),
        )),
        Err(NotHeld::Store(e)) => Err(e.into()),
    }
}

#[utoipa::path(delete, path = "/certificates/{name}/crls/{issuerKey}", operation_id = "delete_crl",
    summary = "Stop holding a CA's CRL (by its issuer key, as listed): the certificates it revoked are accepted again",
    description = "Needs the RegistryWrite right.", params(CrlPath),
    responses((status = 204, description = "deleted"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(CrlPath { name, issuer_key }): Path<CrlPath>,
) -> Result<StatusCode, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "deleting a CRL")?;
    let result = async {
        check_name(&name)?;
        let key = issuer_key.to_ascii_lowercase();
        if key.len() != 64 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "ArgumentInvalid",
                format!("issuer key {issuer_key:?}: give the 64 hex digits that the CRL list shows as issuerKey"),
            ));
        }
        state
            .store()
            .ca(&name)
            .await?
            .ok_or_else(|| not_found(&name))?;
        if state.store().delete_crl(&name, &key).await? {
            Ok(key)
        } else {
            Err(ApiError::not_found(
                "CrlNotFound",
                format!("no CRL of issuer key {key} is held for CA {name:?}; list them with GET /certificates/{name}/crls"),
            ))
        }
    }
    .await;
    let detail = result
        .as_ref()
        .map(|k| format!("issuer key {k}"))
        .unwrap_or_default();
    audited(&state, &caller, "ca.crl.delete", &name, result, &detail).await?;
    state.reload_trust().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the hub does once a CA's CRL is past its nextUpdate and no newer one came.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CrlPolicy)]
pub struct PolicyBody {
    /// `fail-closed` (the default): once nextUpdate plus the grace has passed, the
    /// certificates the CRL covers are refused (crl-expired) until a newer CRL is uploaded;
    /// `fail-open`: the last CRL keeps counting, however old
    #[schema(pattern = "^fail-(open|closed)$")]
    stale_crl: String,
    /// hours after nextUpdate before fail-closed refuses (0 to 8760; default 24)
    #[serde(default)]
    #[schema(minimum = 0, maximum = 8760)]
    grace_hours: Option<i64>,
    /// whether the hub fetches the CRLs that the certificates of this CA's devices name in
    /// their CRL distribution points (default true); omitted in a PUT, it stays as it is
    #[serde(default)]
    fetch_distribution_points: Option<bool>,
    /// whether the hub asks the OCSP responder a device's leaf names (authorityInfoAccess) at
    /// connect, caching answers until their nextUpdate (default false); without an answer the
    /// stale policy decides (fail-closed refuses as revocation-unknown once the grace after
    /// the last good answer has passed); omitted in a PUT, it stays as it is
    #[serde(default)]
    ocsp: Option<bool>,
}

fn policy_view(p: crate::trust::StalePolicy, fetch: bool, ocsp: bool) -> PolicyBody {
    let (stale_crl, grace_hours) = match p {
        crate::trust::StalePolicy::FailOpen => ("fail-open", None),
        crate::trust::StalePolicy::FailClosed { grace_s } => ("fail-closed", Some(grace_s / 3600)),
    };
    PolicyBody {
        stale_crl: stale_crl.into(),
        grace_hours,
        fetch_distribution_points: Some(fetch),
        ocsp: Some(ocsp),
    }
}

/// Whether the hub asks OCSP responders for a CA's devices.
async fn asks_ocsp(state: &AppState, name: &str) -> Result<bool, ApiError> {
    Ok(state.store().ocsp_cas().await?.iter().any(|c| c == name))
}

/// Whether the hub fetches a CA's CRLs from their distribution points.
async fn fetches(state: &AppState, name: &str) -> Result<bool, ApiError> {
    Ok(state
        .store()
        .crl_fetch_settings()
        .await?
        .into_iter()
        .find(|(n, _)| n == name)
        .is_none_or(|(_, f)| f))
}

async fn current_policy(
    state: &AppState,
    name: &str,
) -> Result<crate::trust::StalePolicy, ApiError> {
    let stored = state
        .store()
        .crl_policies()
        .await?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p);
    Ok(crate::trust::StalePolicy::parse(stored.as_deref()))
}

#[utoipa::path(get, path = "/certificates/{name}/crlPolicy", operation_id = "get_crl_policy",
    summary = "What the hub does with a CA's CRLs once they are past their nextUpdate, and whether it fetches them from their distribution points (certhub's)",
    description = "Needs the RegistryRead right.", params(CertificatePath),
    responses((status = 200, description = "success", body = PolicyBody), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading a CA's CRL policy")?;
    registered(&state, &name).await?;
    let policy = current_policy(&state, &name).await?;
    let (fetch, ocsp) = (
        fetches(&state, &name).await?,
        asks_ocsp(&state, &name).await?,
    );
    Ok(Json(policy_view(policy, fetch, ocsp)).into_response())
}

#[utoipa::path(put, path = "/certificates/{name}/crlPolicy", operation_id = "set_crl_policy",
    summary = "Set what the hub does with a CA's CRLs once they are past their nextUpdate: fail-closed after a grace period (the default, 24 h) or fail-open; and whether it fetches them from their distribution points (certhub's)",
    description = "Needs the RegistryWrite right.", params(CertificatePath), request_body = PolicyBody,
    responses((status = 200, description = "set", body = PolicyBody), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn set_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(CertificatePath { name }): Path<CertificatePath>,
    body: Result<super::body::JsonObject<PolicyBody>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "setting a CA's CRL policy")?;
    let result = async {
        check_name(&name)?;
        let super::body::JsonObject(body) = body?;
        let policy = match (body.stale_crl.as_str(), body.grace_hours) {
            ("fail-open", None) => crate::trust::StalePolicy::FailOpen,
            ("fail-open", Some(_)) => {
                return Err(ApiError::bad_request(
                    "ArgumentInvalid",
                    "graceHours applies to fail-closed only: a fail-open CRL counts however old",
                ));
            }
            ("fail-closed", hours) => {
                let hours = hours.unwrap_or(crate::trust::DEFAULT_GRACE_S / 3600);
                if !(0..=8760).contains(&hours) {
                    return Err(ApiError::bad_request(
                        "ArgumentInvalid",
                        format!("graceHours {hours}: give 0 to 8760 (a year)"),
                    ));
                }
                crate::trust::StalePolicy::FailClosed {
                    grace_s: hours * 3600,
                }
            }
            (other, _) => {
                return Err(ApiError::bad_request(
                    "ArgumentInvalid",
                    format!("staleCrl {other:?}: give fail-closed or fail-open"),
                ));
            }
        };
        if !state
            .store()
            .set_crl_policy(&name, &policy.stored())
            .await?
        {
            return Err(not_found(&name));
        }
        let was = fetches(&state, &name).await?;
        let fetch = body.fetch_distribution_points.unwrap_or(was);
        if fetch != was {
            state.store().set_crl_fetch(&name, fetch).await?;
            if fetch {
                state.store().crl_sources_due_now(&name, now_ms()).await?;
            }
        }
        let ocsp = match body.ocsp {
            Some(on) => {
                state.store().set_ocsp(&name, on).await?;
                on
            }
            None => asks_ocsp(&state, &name).await?,
        };
        Ok((policy, fetch, ocsp))
    }
    .await;
    let detail = match &result {
        Ok((p, fetch, ocsp)) => format!(
            "{}; distribution points {}; OCSP {}",
            p.stored(),
            if *fetch { "fetched" } else { "not fetched" },
            if *ocsp { "on" } else { "off" }
        ),
        Err(_) => String::new(),
    };
    let (policy, fetch, ocsp) =
        audited(&state, &caller, "ca.crl.policy", &name, result, &detail).await?;
    state.reload_trust().await?;
    Ok(Json(policy_view(policy, fetch, ocsp)).into_response())
}
