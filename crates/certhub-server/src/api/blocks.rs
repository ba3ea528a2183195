//! `/blocks` and `/impact`: blocking a certificate of device chains without a CRL (by
//! thumbprint, or by issuer and serial; an intermediate blocks every device below it), and the
//! blast radius first: which registered devices last authenticated through a certificate, and
//! which of them are connected now. certhub's; Azure has neither.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use certhub_store::BlockRecord;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::JsonObject;
use super::doc::ErrorResponse;
use super::error::Path;
use super::{ApiError, AppState, Caller, now_ms};

/// A certificate to block: give `certificate` (PEM), or `thumbprint` (SHA-256), or `issuer`
/// and `serial`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = BlockRequest)]
pub struct BlockBody {
    /// the certificate, PEM (its thumbprint, subject, issuer and serial are taken from it)
    #[serde(default)]
    certificate: Option<String>,
    /// its SHA-256 thumbprint, 64 hex digits (colons allowed)
    #[serde(default)]
    thumbprint: Option<String>,
    /// its issuer's name as `certhub pki inspect` prints it, e.g. `CN=Factory-Y CA, O=Company-X`
    #[serde(default)]
    issuer: Option<String>,
    /// its serial number, hex (with `issuer`)
    #[serde(default)]
    serial: Option<String>,
    /// why, for the audit trail and refusals
    #[serde(default)]
    note: Option<String>,
}

/// A block the hub holds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Block)]
pub struct BlockView {
    /// the block's id (the SHA-256 thumbprint for a block by thumbprint)
    id: String,
    /// SHA-256 thumbprint (lowercase hex), empty for a block by issuer and serial
    thumbprint: String,
    issuer: String,
    serial: String,
    subject: String,
    note: String,
    created: String,
}

/// The blocks.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlockList {
    value: Vec<BlockView>,
}

/// One identity a certificate's blast radius holds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AffectedIdentity {
    device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    module_id: Option<String>,
    connected: bool,
    last_activity_time: String,
}

/// Who a certificate's block (or revocation) would shut out.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Impact {
    /// SHA-256 thumbprint of the certificate (lowercase hex)
    thumbprint: String,
    /// registered devices and modules whose last authenticated chain holds it
    devices: usize,
    /// of those, connected now
    connected: usize,
    /// whether it is blocked now
    blocked: bool,
    /// the registered CA this certificate is, when it is one (an old root beside its renewal,
    /// say): its devices are those that last authenticated through it
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    registered_ca: Option<String>,
    /// each of them
    identities: Vec<AffectedIdentity>,
}

/// The answer to a block.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Blocked {
    block: BlockView,
    /// false when the same block was already there
    created: bool,
    /// who it shuts out (by thumbprint; a block by issuer and serial counts the live sessions)
    devices: usize,
    /// live sessions it closed
    closed: usize,
    /// e.g. that no registered device has presented the certificate
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    note: Option<String>,
}

/// `?thumbprint=`: a certificate's SHA-256 thumbprint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImpactQuery {
    /// SHA-256 thumbprint, 64 hex digits (colons allowed)
    #[param(pattern = "^[0-9A-Fa-f:]{64,95}$")]
    thumbprint: String,
}

/// `{id}`: a block's id, as listed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BlockPath {
    /// 64 hex digits
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    id: String,
}

impl ImpactQuery {
    /// The query for one thumbprint (the console's).
    pub(crate) fn of(thumbprint: &str) -> Self {
        Self {
            thumbprint: thumbprint.to_string(),
        }
    }
}

impl BlockPath {
    /// The path of one block (the console's).
    pub(crate) fn of(id: &str) -> Self {
        Self { id: id.to_string() }
    }
}

fn view(r: &BlockRecord) -> BlockView {
    BlockView {
        id: r.id.clone(),
        thumbprint: r.sha256.clone(),
        issuer: r.issuer.clone(),
        serial: r.serial.clone(),
        subject: r.subject.clone(),
        note: r.note.clone(),
        created: certhub_core::azure_time(r.created_ms),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ArgumentInvalid", message)
}

/// A SHA-256 thumbprint in lowercase hex, from hex with or without colons.
fn thumbprint(text: &str) -> Result<String, ApiError> {
    let t: String = text
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(t)
    } else if t.len() == 40 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        Err(invalid(
            "that is a SHA-1 thumbprint: give the SHA-256 one (`certhub pki thumbprint FILE` prints both)",
        ))
    } else {
        Err(invalid(format!(
            "thumbprint {text:?}: give the certificate's SHA-256 thumbprint, 64 hex digits"
        )))
    }
}

/// A serial in lowercase hex without leading zeros, an even number of digits.
fn serial(text: &str) -> Result<String, ApiError> {
    let t: String = text
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let t = t.strip_prefix("0x").unwrap_or(&t);
    if t.is_empty() || t.len() > 42 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "serial {text:?}: give the serial number in hex, as `certhub pki inspect` or `openssl x509 -serial` prints it"
        )));
    }
    let mut t = t.trim_start_matches("00").to_string();
    if t.is_empty() {
        t = "00".into();
    }
    if !t.len().is_multiple_of(2) {
        t.insert(0, '0');
    }
    Ok(t)
}

fn sha256_hex(bytes: &[u8]) -> String {
    certhub_pki::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// The block a request asks for.
pub(crate) fn requested(body: BlockBody) -> Result<BlockRecord, ApiError> {
    let note = body.note.unwrap_or_default();
    if note.len() > 512 {
        return Err(invalid("note: at most 512 characters"));
    }
    let record = |sha256: String, issuer: String, serial: String, subject: String| {
        let id = if sha256.is_empty() {
            sha256_hex(format!("serial\n{issuer}\n{serial}").as_bytes())
        } else {
            sha256.clone()
        };
        BlockRecord {
            id,
            sha256,
            issuer,
            serial,
            subject,
            note: note.clone(),
            created_ms: now_ms(),
        }
    };
    match (body.certificate, body.thumbprint, body.issuer, body.serial) {
        (Some(pem), None, None, None) => {
            let cert = certhub_pki::read_certificates(pem.as_bytes())
                .map_err(|e| invalid(format!("certificate: {e}")))?
                .into_iter()
                .next()
                .ok_or_else(|| invalid("certificate: no certificate in it"))?;
            let info = certhub_pki::describe_certificate(&cert)
                .map_err(|e| invalid(format!("certificate: {e}")))?;
            Ok(record(
                sha256_hex(cert.as_ref()),
                info.issuer,
                serial(&info.serial)?,
                info.subject,
            ))
        }
        (None, Some(t), None, None) => Ok(record(
            thumbprint(&t)?,
            String::new(),
            String::new(),
            String::new(),
        )),
        (None, None, Some(issuer), Some(s)) if !issuer.trim().is_empty() => Ok(record(
            String::new(),
            issuer.trim().to_string(),
            serial(&s)?,
            String::new(),
        )),
        _ => Err(invalid(
            "give exactly one of: certificate (PEM), thumbprint (SHA-256), or issuer and serial",
        )),
    }
}

/// The identities a certificate reaches: (cn, device, module, last activity) from the
/// registry's bookkeeping of the chain each last authenticated with.
async fn reach(
    state: &AppState,
    sha256: &str,
) -> Result<Vec<(String, String, Option<String>, i64)>, ApiError> {
    state.bookkeeper().flush().await;
    let found: Vec<(String, String, Option<String>, i64)> = state
        .store()
        .identities_with_chain_cert(sha256)
        .await?
        .into_iter()
        .map(|(d, m, at)| {
            if m.is_empty() {
                (d.clone(), d, None, at)
            } else {
                (format!("{d}/{m}"), d, Some(m), at)
            }
        })
        .collect();
    Ok(found)
}

#[utoipa::path(get, path = "/impact", operation_id = "certificate_impact",
    summary = "The blast radius of a certificate: the registered devices and modules whose last authenticated chain holds it, and which are connected now (certhub's)",
    description = "Needs the RegistryRead right.", params(ImpactQuery),
    responses((status = 200, description = "success", body = Impact), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn impact(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ImpactQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading a certificate's impact")?;
    let Query(q) = query.map_err(|e| invalid(format!("{e}: give ?thumbprint=<SHA-256>")))?;
    let sha256 = thumbprint(&q.thumbprint)?;
    let mut found = reach(&state, &sha256).await?;
    // A registered CA is the anchor, not in the chains: who went through it is recorded apart.
    // (Registered CAs are filed by their Azure-style, upper-case thumbprint.)
    let registered_ca = state
        .store()
        .ca_by_sha256(&sha256.to_ascii_uppercase())
        .await?
        .map(|c| c.name);
    if let Some(ca) = &registered_ca {
        for (d, m, at) in state.store().identities_last_through(ca).await? {
            let cn = if m.is_empty() {
                d.clone()
            } else {
                format!("{d}/{m}")
            };
            if !found.iter().any(|(c, ..)| *c == cn) {
                found.push((cn, d, (!m.is_empty()).then_some(m), at));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let identities: Vec<AffectedIdentity> = found
        .into_iter()
        .map(|(cn, device, module, at)| AffectedIdentity {
            connected: state.sessions().state(&cn).connected,
            device_id: device,
            module_id: module,
            last_activity_time: certhub_core::azure_time(at),
        })
        .collect();
    let blocked = state
        .store()
        .blocks()
        .await?
        .iter()
        .any(|b| b.sha256 == sha256);
    Ok(Json(Impact {
        devices: identities.len(),
        connected: identities.iter().filter(|i| i.connected).count(),
        thumbprint: sha256,
        blocked,
        registered_ca,
        identities,
    })
    .into_response())
}

#[utoipa::path(get, path = "/blocks", operation_id = "list_blocks",
    summary = "List the blocked certificates (certhub's)",
    description = "Needs the RegistryRead right.",
    responses((status = 200, description = "success", body = BlockList), (status = 401, response = ErrorResponse)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "listing blocked certificates")?;
    let value = state.store().blocks().await?.iter().map(view).collect();
    Ok(Json(BlockList { value }).into_response())
}

#[utoipa::path(put, path = "/blocks", operation_id = "block_certificate",
    summary = "Block a certificate of device chains without a CRL (certhub's): every device whose chain holds it is refused (certificate-blocked) and its live sessions close. A certificate no device has presented may be blocked too (the answer says so).",
    description = "Needs the RegistryWrite right.", request_body = BlockBody,
    responses((status = 200, description = "blocked", body = Blocked), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn block(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<JsonObject<BlockBody>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "blocking a certificate")?;
    let result = async {
        let JsonObject(body) = body?;
        let record = requested(body)?;
        if let Some(ca) = state
            .store()
            .ca_by_sha256(&record.sha256.to_ascii_uppercase())
            .await?
            && !record.sha256.is_empty()
        {
            return Err(invalid(format!(
                "this is the registered CA {:?}: a block covers the certificates below a CA; to stop trusting the CA itself, delete it (certhub ca delete --name {})",
                ca.name, ca.name
            )));
        }
        let created = state.store().put_block(&record).await?;
        Ok::<_, ApiError>((record, created))
    }
    .await;
    let target = match &result {
        Ok((r, _)) => format!("blocks/{}", r.id),
        Err(_) => "blocks".to_string(),
    };
    let (record, created) = match result {
        Ok(v) => v,
        Err(e) => {
            state
                .audit(&caller, "ca.block", &target, e.code, &e.message)
                .await;
            return Err(e);
        }
    };
    let closed = state.reload_trust().await?;
    let devices = if record.sha256.is_empty() {
        0
    } else {
        reach(&state, &record.sha256).await?.len()
    };
    let note = (devices == 0 && !record.sha256.is_empty())
        .then(|| "no registered device has authenticated with this certificate (yet): the block applies when one presents it".to_string());
    let detail = format!(
        "{} {}{}; {devices} device(s) last authenticated through it, {closed} live session(s) closed",
        if record.subject.is_empty() {
            "certificate"
        } else {
            record.subject.as_str()
        },
        if record.sha256.is_empty() {
            format!("issuer {:?} serial {}", record.issuer, record.serial)
        } else {
            format!("SHA-256 {}", record.sha256)
        },
        if record.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", record.note)
        },
    );
    state
        .audit(&caller, "ca.block", &target, "ok", &detail)
        .await;
    Ok(Json(Blocked {
        block: view(&record),
        created,
        devices,
        closed,
        note,
    })
    .into_response())
}

#[utoipa::path(delete, path = "/blocks/{id}", operation_id = "unblock_certificate",
    summary = "Lift a block (certhub's): the certificate is accepted again",
    description = "Needs the RegistryWrite right.", params(BlockPath),
    responses((status = 204, description = "lifted"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn unblock(
    State(state): State<AppState>,
    caller: Caller,
    Path(BlockPath { id }): Path<BlockPath>,
) -> Result<StatusCode, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "lifting a block")?;
    let id = id.to_ascii_lowercase();
    let result = async {
        if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "block id {id:?}: give the 64 hex digits that the block list shows as id"
            )));
        }
        if state.store().delete_block(&id).await? {
            Ok(())
        } else {
            Err(ApiError::not_found(
                "BlockNotFound",
                format!("{id} is not blocked; `certhub ca blocks` lists what is"),
            ))
        }
    }
    .await;
    let target = format!("blocks/{id}");
    match &result {
        Ok(()) => state.audit(&caller, "ca.unblock", &target, "ok", "").await,
        Err(e) => {
            state
                .audit(&caller, "ca.unblock", &target, e.code, &e.message)
                .await
        }
    }
    result?;
    state.reload_trust().await?;
    Ok(StatusCode::NO_CONTENT)
}
