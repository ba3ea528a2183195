//! Device provisioning (azure-more-protocols 6, azure-protocol 7): a device that knows only
//! this hub's provisioning endpoint and its own credential registers, is judged against the
//! enrollments, created on a hub and told which one. The provisioning endpoint is the hub's
//! own listeners: MQTT CONNECTs whose username starts with `{idScope}/registrations/` on
//! 8883 and over WebSockets on 443 ([`mqtt`]), `PUT /{idScope}/registrations/{id}/register`
//! on 443 ([`https`]); the DPS service API (`/enrollmentGroups`, `/enrollments`,
//! `/registrations`) sits beside the hub's service API (`api/dps.rs`).
//!
//! [`register`] is the whole decision and its effects, shared by the transports: who the
//! device is (its X.509 chain judged as a CONNECT would be, or its SAS token), which
//! enrollment admits it, which hub it goes to, the device created there with the initial twin,
//! the registration state written. Every refusal is audited (`dps.register`) with a named
//! reason; the device learns only that it was not authorised.

pub(crate) mod https;
pub(crate) mod hubs;
pub(crate) mod mqtt;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certhub_core::dps::{Attestation, Candidate, DpsError, Kind, attestation_of, check_dps_id};

use certhub_core::{
    AuthType, Authentication, AuthenticationInput, Context, DeviceId, Etag, SymmetricKey,
    TrustSnapshot, X509Thumbprint, azure_time,
};
use certhub_pki::{CertificateDer, ChainCert, Thumbprints, TrustStore, UnixTime};
use certhub_store::{AuditRecord, EnrollmentKind, RegistrationRecord, WriteOutcome};
use hubs::Hub;
use serde_json::{Value, json};

use crate::device::{bounded, presented};
use crate::state::{AppState, now_ms};

/// Provisioning sessions over MQTT at once; one more is answered CONNACK 3 (server
/// unavailable), which the SDKs retry.
const MAX_MQTT_SESSIONS: usize = 10_000;

/// The provisioning service's state in the hub.
#[derive(Debug)]
pub(crate) struct DpsState {
    id_scope: String,
    /// Registration ids being registered now: a second registration of the same id waits for
    /// the first and then sees its result.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One-CA trust snapshots of the CAs enrollment groups name, for the trust snapshot they
    /// were made from (a CA change makes a new one).
    group_cas: Mutex<GroupCas>,
    /// Places for provisioning sessions over MQTT (they hold no device session slot).
    pub(crate) mqtt_sessions: Arc<tokio::sync::Semaphore>,
    /// Linked hubs ready to call, by name, with the record they were made from.
    linked: Mutex<HashMap<String, (certhub_store::LinkedHubRecord, Arc<hubs::Linked>)>>,
    /// Bumped after every write of the provisioning configuration through the API (enrollments,
    /// linked hubs): the copy in `config` is read again.
    generation: AtomicU64,
    /// The enrollment groups and linked hubs as of a generation: every registration needs
    /// them, and they change only through this hub's API.
    config: Mutex<Option<(u64, Arc<Config>)>>,
}

/// What every registration consults: the enrollment groups and the linked hubs.
#[derive(Debug)]
struct Config {
    groups: Vec<Group>,
    linked: Vec<certhub_store::LinkedHubRecord>,
    /// Whether any individual enrollment exists (if none, a registration does not look for
    /// its own).
    individuals: bool,
}

/// An enrollment group as stored, its attestation read once.
#[derive(Debug)]
struct Group {
    id: String,
    doc: Value,
    attestation: Result<Attestation, String>,
}

#[derive(Debug, Default)]
struct GroupCas {
    of: Option<Arc<TrustSnapshot>>,
    cas: HashMap<String, Arc<GroupCa>>,
}

/// A CA an enrollment group names, as the hub holds it now.
#[derive(Debug)]
enum GroupCa {
    Verified {
        trust: TrustSnapshot,
        /// Azure's `X509CertificateInfo` of the CA (`signingCertificateInfo`).
        info: Value,
        /// Its SHA-256 thumbprint, by which a linked hub is asked whether it trusts it.
        sha256: String,
    },
    /// Registered but without proof of possession: it admits no one.
    Unverified(TrustSnapshot),
    Missing,
}

impl DpsState {
    pub(crate) fn new(id_scope: String) -> Self {
        Self {
            id_scope,
            inflight: Mutex::default(),
            group_cas: Mutex::default(),
            linked: Mutex::default(),
            generation: AtomicU64::new(0),
            config: Mutex::default(),
            mqtt_sessions: Arc::new(tokio::sync::Semaphore::new(MAX_MQTT_SESSIONS)),
        }
    }

    pub(crate) fn id_scope(&self) -> &str {
        &self.id_scope
    }

    /// A linked hub ready to call (made again when its record changed).
    fn linked(&self, rec: &certhub_store::LinkedHubRecord) -> Result<Arc<hubs::Linked>, String> {
        let mut linked = self.linked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made_from, hub)) = linked.get(&rec.name)
            && made_from == rec
        {
            return Ok(hub.clone());
        }
        let hub = Arc::new(hubs::Linked::new(rec)?);
        linked.insert(rec.name.clone(), (rec.clone(), hub.clone()));
        Ok(hub)
    }

    /// Forgets the cached enrollment groups and linked hubs (call after writing them).
    pub(crate) fn forget_config(&self) {
        let mut config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        *config = None;
    }

    fn group_cas(&self) -> std::sync::MutexGuard<'_, GroupCas> {
        self.group_cas.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A registration request, whatever its transport.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub registration_id: &'a str,
    pub peer: SocketAddr,
    /// The TLS client chain, leaf first.
    pub chain: &'a [CertificateDer<'static>],
    /// The SAS token (symmetric-key attestation).
    pub token: Option<&'a str>,
    /// The device's `payload`, passed back in the registration state.
    pub payload: Option<Value>,
    /// `forceRegistration`: register again even if nothing changed.
    pub force: bool,
    /// `mqtt`, `mqtt-ws`, `https`, `amqp` (audit records say which).
    pub transport: &'static str,
}

/// What the device is told: an HTTP-like status and the body (the registration operation
/// status, or a DPS error).
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
    /// Seconds the device should wait before it asks again (429 and 503 answers).
    pub retry_after: Option<u32>,
}

impl Answer {
    pub(crate) fn error(e: &DpsError) -> Self {
        Self {
            status: e.status,
            body: error_body(e),
            retry_after: (e.status == 429 || e.status >= 500).then_some(2),
        }
    }
}

/// DPS's error body (azure-more-protocols 6.1).
pub(crate) fn error_body(e: &DpsError) -> Value {
    json!({
        "errorCode": e.code,
        "trackingId": crate::random::uuid_v4_text(),
        "message": e.message,
        "timestampUtc": azure_time(now_ms()),
    })
}

/// What the device learns of a refusal; the operator reads the named reason in the audit
/// trail.
pub(crate) fn unauthorized() -> DpsError {
    DpsError::new(
        401,
        401_002,
        "not authorized: the hub's audit trail names the reason (certhub audit registrations --registration-id ID)",
    )
}

/// A refusal with its name (for the audit trail and metrics) and detail.
#[derive(Debug)]
struct Refusal {
    reason: &'static str,
    detail: String,
}

fn refusal(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// The enrollment that admitted a device, and how the device proved itself.
#[derive(Debug)]
struct Admitted {
    kind: Kind,
    /// The enrollment's id (group id or registration id) as stored (lower-cased).
    enrollment_id: String,
    doc: Value,
    attestation: Attestation,
    /// The key the device signed with (symmetric key), for its identity on the hub.
    device_key: Option<(String, String)>,
    /// Azure's `x509` section of the registration state.
    x509: Option<Value>,
    /// The CA of the X.509 group that admitted the device.
    group_ca: Option<Arc<GroupCa>>,
}

/// A register request as its transport read it: the body's bytes (JSON, `{"registrationId":
/// ..., "payload": ...}`; empty is `{}`) are checked first, a bad one answered 400 and audited
/// as `bad-request`, then the device is registered. `req.payload` is filled from the body.
pub(crate) async fn register_request(
    state: &AppState,
    mut req: Request<'_>,
    body: &[u8],
) -> Answer {
    let checked = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(None)
    } else {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| {
                DpsError::bad_request(format!("the register request's body is not JSON: {e}"))
            })
            .and_then(|v| mqtt::check_body(&v, req.registration_id))
    };
    match checked {
        Ok(payload) => {
            req.payload = payload;
            register(state, req).await
        }
        Err(e) => {
            let detail = format!(
                "{}; presented: {}; peer {} over {}",
                e.message,
                presented(req.chain),
                req.peer,
                req.transport
            );
            audit_refusal(state, &req, "bad-request", &detail).await;
            Answer::error(&e)
        }
    }
}

/// Registers a device: judges it, assigns it, creates it on its hub, records the state. The
/// answer is the operation status as the SDKs poll it (the assignment is done before it is
/// sent: `assigned` or `failed`, never `assigning`).
pub(crate) async fn register(state: &AppState, req: Request<'_>) -> Answer {
    let id = req.registration_id;
    if let Err(e) = check_dps_id("registration id", id) {
        let detail = format!(
            "{}; presented: {}; peer {} over {}",
            e.message,
            presented(req.chain),
            req.peer,
            req.transport
        );
        audit_refusal(state, &req, "bad-registration-id", &detail).await;
        return Answer::error(&e);
    }
    let key = id.to_ascii_lowercase();
    // One registration of an id at a time in this process; across processes the store's
    // conditional writes decide.
    let lock = {
        let mut inflight = state.dps().inflight();
        inflight.entry(key.clone()).or_default().clone()
    };
    let answer = {
        let _turn = lock.lock().await;
        Box::pin(register_locked(state, &req, &key)).await
    };
    {
        let mut inflight = state.dps().inflight();
        // Two references: the map's and ours. Anyone else waiting keeps it in the map.
        if Arc::strong_count(&lock) <= 2 {
            inflight.remove(&key);
        }
    }
    answer
}

async fn register_locked(state: &AppState, req: &Request<'_>, key: &str) -> Answer {
    let admitted = match Box::pin(judge(state, req, key)).await {
        Ok(a) => a,
        Err(Err(e)) => {
            tracing::error!(error = %e, "provisioning store read failed");
            return Answer::error(&DpsError::new(
                503,
                503_000,
                "the provisioning service could not read its store; try again",
            ));
        }
        Err(Ok(r)) => {
            tracing::info!(reason = r.reason, registration_id = req.registration_id, peer = %req.peer, "registration refused");
            let detail = format!(
                "{}; presented: {}; peer {} over {}",
                r.detail,
                presented(req.chain),
                req.peer,
                req.transport
            );
            audit_refusal(state, req, r.reason, &detail).await;
            return Answer::error(&unauthorized());
        }
    };
    let through = format!("{} {}", admitted.kind.noun(), admitted.enrollment_id);
    match Box::pin(assign(state, req, key, admitted)).await {
        Ok(answer) => answer,
        Err(e) => {
            // Refusals made during assignment (a disabled device) are audited where they are
            // made; failures are audited here, with what the device is told.
            if e.status != 401 {
                let reason = match e.status {
                    503 => "hub-unavailable",
                    409 => "conflict",
                    _ => "assignment-failed",
                };
                let detail = format!(
                    "through {through}: {}; the device is told {} (retry: {}); peer {} over {}",
                    e.message,
                    e.status,
                    e.status == 429 || e.status >= 500,
                    req.peer,
                    req.transport
                );
                audit_refusal(state, req, reason, &detail).await;
            }
            Answer::error(&e)
        }
    }
}

async fn audit_refusal(state: &AppState, req: &Request<'_>, reason: &str, detail: &str) {
    state.metrics().connect(reason);
    let record = AuditRecord::new(
        now_ms(),
        "device",
        "dps.register",
        &format!("registrations/{}", bounded(req.registration_id, 256)),
        reason,
        &bounded(detail, 4096),
    );
    state.bookkeeper().audit(record).await;
}

type Judged = Result<Admitted, Result<Refusal, certhub_store::StoreError>>;

/// Which enrollment admits the device, and by which proof. Lookup as Azure's: an individual
/// enrollment of the registration id first (a disabled one blocks), then the groups.
async fn judge(state: &AppState, req: &Request<'_>, key: &str) -> Judged {
    let store = state.store();
    let config = config(state).await.map_err(Err)?;
    let individual = if config.individuals {
        store
            .enrollment(EnrollmentKind::Individual, key)
            .await
            .map_err(Err)?
    } else {
        None
    };
    let now = now_ms();
    if let Some(rec) = individual {
        let doc: Value = serde_json::from_str(&rec.doc).map_err(|e| {
            Err(certhub_store::StoreError::Corrupt(format!(
                "enrollment {key}: {e}"
            )))
        })?;
        let attestation = attestation_of(Kind::Individual, &doc)
            .map_err(|e| Ok(refusal("enrollment-unusable", e)))?;
        let x509 = prove(state, req, &attestation, now)?;
        if doc["provisioningStatus"] == "disabled" {
            return Err(Ok(refusal(
                "enrollment-disabled",
                format!("the individual enrollment {key} is disabled"),
            )));
        }
        return Ok(Admitted {
            kind: Kind::Individual,
            enrollment_id: rec.id,
            device_key: match &attestation {
                Attestation::SymmetricKey { primary, secondary } => {
                    Some((primary.clone(), secondary.clone()))
                }
                _ => None,
            },
            doc,
            attestation,
            x509,
            group_ca: None,
        });
    }
    // The groups, nearest CA first for X.509 (the group of the leaf's issuer before the group
    // of its root), the first whose key derives the device's for symmetric keys.
    let groups = &config.groups;
    if req.token.is_some() {
        for Group {
            id: gid,
            doc,
            attestation,
        } in groups
        {
            let Ok(Attestation::SymmetricKey { primary, secondary }) = attestation else {
                continue;
            };
            let derived: Vec<String> = [&primary, &secondary]
                .iter()
                .filter_map(|k| certhub_core::dps::derive_device_key(k, req.registration_id))
                .collect();
            let keys: Vec<&str> = derived.iter().map(String::as_str).collect();
            let token = req.token.unwrap_or_default();
            if certhub_core::dps::verify_registration_token(
                token,
                state.dps().id_scope(),
                req.registration_id,
                &keys,
                now / 1000,
            )
            .is_ok()
            {
                if doc["provisioningStatus"] == "disabled" {
                    return Err(Ok(refusal(
                        "enrollment-disabled",
                        format!("the enrollment group {gid} is disabled"),
                    )));
                }
                let device_key = Some((
                    derived[0].clone(),
                    derived.get(1).cloned().unwrap_or_default(),
                ));
                return Ok(Admitted {
                    kind: Kind::Group,
                    enrollment_id: gid.clone(),
                    doc: doc.clone(),
                    attestation: Attestation::SymmetricKey {
                        primary: primary.clone(),
                        secondary: secondary.clone(),
                    },
                    device_key,
                    x509: None,
                    group_ca: None,
                });
            }
        }
        let why = certhub_core::dps::verify_registration_token(
            req.token.unwrap_or_default(),
            state.dps().id_scope(),
            req.registration_id,
            &[],
            now / 1000,
        )
        .err()
        .filter(|e| !e.contains("signature"))
        .unwrap_or_else(|| {
            "the token is not signed by the key of an individual enrollment of this id nor derived from the key of any symmetric-key enrollment group".into()
        });
        return Err(Ok(refusal("no-enrollment", why)));
    }
    if req.chain.is_empty() {
        return Err(Ok(refusal(
            "no-credential",
            "the device presented neither a client certificate nor a SAS token",
        )));
    }
    // X.509 groups: the chain judged against each group's CA alone; the nearest CA wins.
    // The nearest group: its depth, id, document, CA, the CA's trust and the leaf as
    // verified under it.
    type Best<'a> = (
        usize,
        &'a String,
        &'a Value,
        &'a String,
        Arc<GroupCa>,
        Option<ChainCert>,
    );
    let mut best: Option<Best<'_>> = None;
    let mut nearest_failure: Option<Refusal> = None;
    // Groups whose CA is no longer registered (deleted after the group was made).
    let mut missing: Vec<String> = Vec::new();
    for Group {
        id: gid,
        doc,
        attestation,
    } in groups
    {
        let Ok(Attestation::X509Group { ca }) = attestation else {
            continue;
        };
        let group_ca = group_ca(state, ca).await.map_err(Err)?;
        match &*group_ca {
            GroupCa::Verified { trust, .. } => {
                match certhub_pki::verify_device_chain(
                    req.chain,
                    &trust.verified,
                    Some(req.registration_id),
                    unix(now),
                ) {
                    Ok(v) => {
                        let depth = v.path.len();
                        if best.as_ref().is_none_or(|b| depth < b.0) {
                            let leaf = v.certs.into_iter().next();
                            best = Some((depth, gid, doc, ca, group_ca.clone(), leaf));
                        }
                    }
                    Err(r) => {
                        let reason = r.reason.as_str();
                        // A chain that reaches the CA and fails there (an expired leaf, a CN
                        // that is not the registration id) says more than "no group".
                        if !matches!(reason, "unknown-issuer" | "missing-intermediate")
                            && nearest_failure.is_none()
                        {
                            nearest_failure = Some(refusal(
                                r.reason.as_str(),
                                format!("enrollment group {gid} (CA {ca}): {}", r.detail),
                            ));
                        }
                    }
                }
            }
            GroupCa::Unverified(trust) => {
                if certhub_pki::verify_device_chain(
                    req.chain,
                    &trust.verified,
                    Some(req.registration_id),
                    unix(now),
                )
                .is_ok()
                    && nearest_failure.is_none()
                {
                    nearest_failure = Some(refusal(
                        "ca-not-verified",
                        format!(
                            "the chain reaches CA {ca:?} of enrollment group {gid}, which is registered but not verified: prove possession of its key (certhub ca verification-code --name {ca})"
                        ),
                    ));
                }
            }
            GroupCa::Missing => missing.push(format!("{gid} (CA {ca})")),
        }
    }
    if let Some((_, gid, doc, ca, group_ca, leaf_cert)) = best {
        if doc["provisioningStatus"] == "disabled" {
            return Err(Ok(refusal(
                "enrollment-disabled",
                format!("the enrollment group {gid} (CA {ca}) is disabled"),
            )));
        }
        // OCSP, when the group's CA has it on: as at CONNECT.
        if let Some(leaf_cert) = &leaf_cert
            && let Err((reason, detail)) =
                Box::pin(crate::ocsp::check_leaf(state, ca, leaf_cert, req.chain)).await
        {
            return Err(Ok(refusal(
                reason,
                format!("enrollment group {gid} (CA {ca}): {detail}"),
            )));
        }
        let leaf = &req.chain[0];
        let signing = match &*group_ca {
            GroupCa::Verified { info, .. } => info.clone(),
            _ => Value::Null,
        };
        return Ok(Admitted {
            kind: Kind::Group,
            enrollment_id: gid.clone(),
            doc: doc.clone(),
            attestation: Attestation::X509Group { ca: ca.clone() },
            device_key: None,
            x509: Some(json!({
                "enrollmentGroupId": gid,
                "certificateInfo": certificate_info(leaf.as_ref()),
                "signingCertificateInfo": signing,
            })),
            group_ca: Some(group_ca),
        });
    }
    Err(Ok(nearest_failure.unwrap_or_else(|| {
        refusal(
            "no-enrollment",
            format!(
                "no individual enrollment of {:?}, and the chain reaches the CA of no X.509 enrollment group{}",
                req.registration_id,
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (these groups name a CA that is no longer registered: {})",
                        missing.join(", ")
                    )
                }
            ),
        )
    })))
}

/// Checks an individual enrollment's attestation against what the device presented; returns
/// the registration state's `x509` section for certificates.
fn prove(
    state: &AppState,
    req: &Request<'_>,
    attestation: &Attestation,
    now: i64,
) -> Result<Option<Value>, Result<Refusal, certhub_store::StoreError>> {
    match attestation {
        Attestation::SymmetricKey { primary, secondary } => {
            let Some(token) = req.token else {
                return Err(Ok(refusal(
                    "auth-method-mismatch",
                    format!(
                        "the individual enrollment {} uses symmetric keys but the device sent no SAS token",
                        req.registration_id
                    ),
                )));
            };
            certhub_core::dps::verify_registration_token(
                token,
                state.dps().id_scope(),
                req.registration_id,
                &[primary, secondary],
                now / 1000,
            )
            .map_err(|e| Ok(refusal("bad-token", e)))?;
            Ok(None)
        }
        Attestation::X509Leaf { thumbprints } => {
            let leaf = req.chain.first().ok_or_else(|| {
                Ok(refusal(
                    "auth-method-mismatch",
                    format!(
                        "the individual enrollment {} uses an X.509 certificate but the device presented none",
                        req.registration_id
                    ),
                ))
            })?;
            let t = Thumbprints::of(leaf.as_ref());
            if !thumbprints.iter().any(|w| t.matches(w)) {
                return Err(Ok(refusal(
                    "thumbprint-mismatch",
                    format!(
                        "the certificate's thumbprint (SHA-256 {}) is not the individual enrollment's",
                        t.sha256
                    ),
                )));
            }
            // Validity and the CN, as the hub judges a thumbprint device.
            let cn = certhub_pki::certificate_common_name(leaf.as_ref());
            if cn.as_deref() != Some(req.registration_id) {
                return Err(Ok(refusal(
                    "cn-mismatch",
                    format!(
                        "the certificate's CN is {} but the registration id is {:?}",
                        cn.map_or_else(|| "missing".to_string(), |cn| format!("{cn:?}")),
                        req.registration_id
                    ),
                )));
            }
            let trust = TrustSnapshot::default();
            let settings = certhub_core::HubSettings::default();
            let ctx = Context {
                trust: &trust,
                settings: &settings,
                policies: &[],
                hostnames: &[],
                now: unix(now),
            };
            let auth = Authentication {
                kind: AuthType::SelfSigned,
                symmetric_key: SymmetricKey::default(),
                x509_thumbprint: X509Thumbprint {
                    primary_thumbprint: Some(t.sha256.clone()),
                    secondary_thumbprint: None,
                },
            };
            certhub_core::authenticate_certificate(req.registration_id, req.chain, &auth, &ctx)
                .map_err(|r| {
                    Ok(Refusal {
                        reason: r.reason,
                        detail: r.detail,
                    })
                })?;
            Ok(Some(json!({
                "enrollmentGroupId": null,
                "certificateInfo": certificate_info(leaf.as_ref()),
            })))
        }
        Attestation::X509Group { .. } => Ok(None),
    }
}

fn unix(ms: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_millis(ms.max(0) as u64))
}

/// Azure's `X509CertificateInfo` of a certificate (null when it does not parse).
fn certificate_info(der: &[u8]) -> Value {
    certhub_core::dps::certificate_info(der).unwrap_or(Value::Null)
}

/// The enrollment groups and linked hubs, read again after the API wrote them.
async fn config(state: &AppState) -> Result<Arc<Config>, certhub_store::StoreError> {
    const PAGE: i64 = 500;
    let dps = state.dps();
    let generation = dps.generation.load(Ordering::SeqCst);
    if let Some((of, config)) = &*dps.config.lock().unwrap_or_else(|p| p.into_inner())
        && *of == generation
    {
        return Ok(config.clone());
    }
    let store = state.store();
    let mut groups = Vec::new();
    let mut after = String::new();
    loop {
        let page = store
            .enrollments(EnrollmentKind::Group, &after, PAGE)
            .await?;
        let full = page.len() as i64 == PAGE;
        for rec in page {
            let doc: Value = serde_json::from_str(&rec.doc).map_err(|e| {
                certhub_store::StoreError::Corrupt(format!("enrollment group {}: {e}", rec.id))
            })?;
            after.clone_from(&rec.id);
            groups.push(Group {
                attestation: attestation_of(Kind::Group, &doc),
                id: rec.id,
                doc,
            });
        }
        if !full {
            break;
        }
    }
    let linked = store.linked_hubs().await?;
    let individuals = !store
        .enrollments(EnrollmentKind::Individual, "", 1)
        .await?
        .is_empty();
    let made = Arc::new(Config {
        groups,
        linked,
        individuals,
    });
    let mut slot = dps.config.lock().unwrap_or_else(|p| p.into_inner());
    // Not if the API wrote meanwhile: what was read may be from before that write.
    if dps.generation.load(Ordering::SeqCst) == generation {
        *slot = Some((generation, made.clone()));
    }
    Ok(made)
}

/// The one-CA trust snapshot of a CA a group names, made once per trust snapshot.
async fn group_ca(state: &AppState, name: &str) -> Result<Arc<GroupCa>, certhub_store::StoreError> {
    let current = state.trust();
    {
        let mut cache = state.dps().group_cas();
        if cache
            .of
            .as_ref()
            .is_none_or(|of| !Arc::ptr_eq(of, &current))
        {
            cache.of = Some(current.clone());
            cache.cas.clear();
        }
        if let Some(ca) = cache.cas.get(name) {
            return Ok(ca.clone());
        }
    }
    let made = match state.store().ca(name).await? {
        None => GroupCa::Missing,
        Some(ca) => {
            let cert = certhub_pki::read_upload(&ca.pem)
                .ok()
                .and_then(|c| c.into_iter().next());
            match cert.and_then(|c| {
                let info = certificate_info(c.as_ref());
                // The hub's CRLs count here too.
                TrustStore::new([c]).ok().map(|s| {
                    (
                        s.with_revocations(current.verified.revocations().clone()),
                        info,
                    )
                })
            }) {
                None => GroupCa::Missing,
                Some((store, info)) => {
                    let snapshot = TrustSnapshot {
                        verified: store,
                        verified_names: vec![ca.name.clone()],
                        ..TrustSnapshot::default()
                    };
                    if ca.is_verified {
                        GroupCa::Verified {
                            trust: snapshot,
                            info,
                            sha256: ca.sha256.clone(),
                        }
                    } else {
                        GroupCa::Unverified(snapshot)
                    }
                }
            }
        }
    };
    let made = Arc::new(made);
    let mut cache = state.dps().group_cas();
    if cache
        .of
        .as_ref()
        .is_some_and(|of| Arc::ptr_eq(of, &current))
    {
        cache.cas.insert(name.to_string(), made.clone());
    }
    Ok(made)
}

/// Where a registration goes: the hub an enrollment's allocation policy picks among the hubs
/// it may use (its `iotHubs`, else this hub and every linked hub that takes allocations).
async fn choose(
    state: &AppState,
    doc: &Value,
    registration_id: &str,
    linked: &[certhub_store::LinkedHubRecord],
) -> Result<(Hub, String), DpsError> {
    let unavailable = |e: certhub_store::StoreError| {
        DpsError::new(
            503,
            503_000,
            format!("the provisioning store failed ({e}); register again"),
        )
    };
    let here = this_hub(state);
    let named: Vec<String> = doc["iotHubs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let policy = certhub_core::dps::AllocationPolicy::parse(
        doc["allocationPolicy"].as_str().unwrap_or("hashed"),
    )
    .unwrap_or_default();
    let mut candidates: Vec<Candidate> = Vec::new();
    let weight_of = |name: &str| {
        linked
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map_or(1, |h| h.weight)
    };
    if policy == certhub_core::dps::AllocationPolicy::Static {
        let one = doc["iotHubHostName"]
            .as_str()
            .map(str::to_string)
            .or_else(|| named.first().cloned())
            .unwrap_or_else(|| here.clone());
        candidates.push(Candidate {
            weight: 1,
            assigned: 0,
            name: one,
        });
    } else if named.is_empty() {
        candidates.push(Candidate {
            name: here.clone(),
            weight: 1,
            assigned: 0,
        });
        for h in linked.iter().filter(|h| h.apply_allocation) {
            candidates.push(Candidate {
                name: h.name.clone(),
                weight: h.weight,
                assigned: 0,
            });
        }
    } else {
        for n in &named {
            candidates.push(Candidate {
                name: n.clone(),
                weight: weight_of(n),
                assigned: 0,
            });
        }
    }
    if policy == certhub_core::dps::AllocationPolicy::EvenlyWeighted {
        let counts = state
            .store()
            .registrations_per_hub()
            .await
            .map_err(unavailable)?;
        for c in &mut candidates {
            c.assigned = counts
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(&c.name))
                .map_or(0, |(_, n)| *n);
        }
    }
    let chosen = certhub_core::dps::choose_hub(policy, registration_id, &candidates)
        .map(|c| c.name.clone())
        .ok_or_else(|| {
            DpsError::new(
                503,
                503_000,
                "the enrollment's hubs all have allocation weight 0: no hub takes devices",
            )
        })?;
    let hub = hub_named(state, &chosen, linked)?;
    Ok((hub, chosen))
}

/// The hub of that name: this one or a linked one.
fn hub_named(
    state: &AppState,
    name: &str,
    linked: &[certhub_store::LinkedHubRecord],
) -> Result<Hub, DpsError> {
    if name.eq_ignore_ascii_case(&this_hub(state)) {
        return Ok(Hub::Local);
    }
    let Some(rec) = linked.iter().find(|h| h.name.eq_ignore_ascii_case(name)) else {
        return Err(DpsError::new(
            503,
            503_000,
            format!(
                "the enrollment names hub {name:?}, which is no longer linked (certhub dps hub list)"
            ),
        ));
    };
    state
        .dps()
        .linked(rec)
        .map(Hub::Linked)
        .map_err(|e| DpsError::new(503, 503_000, format!("the linked hub {name}: {e}")))
}

/// The hub a registration goes to, the device made there, the state recorded.
async fn assign(
    state: &AppState,
    req: &Request<'_>,
    key: &str,
    admitted: Admitted,
) -> Result<Answer, DpsError> {
    let store = state.store();
    let unavailable = |e: certhub_store::StoreError| {
        tracing::error!(error = %e, "provisioning store failed");
        DpsError::new(
            503,
            503_000,
            "the provisioning service could not use its store; try again",
        )
    };
    let previous = store.registration(key).await.map_err(unavailable)?;
    let doc = &admitted.doc;
    let device_id = doc
        .get("deviceId")
        .and_then(Value::as_str)
        .unwrap_or(req.registration_id)
        .to_string();
    let id = DeviceId::new(&device_id)
        .map_err(|e| DpsError::bad_request(format!("device id {device_id:?}: {e}")))?;
    let config = config(state).await.map_err(unavailable)?;
    let linked = &config.linked;
    // A device that may not change hubs stays where it was (if that hub is still there).
    let stay = doc["reprovisionPolicy"]["updateHubAssignment"] == false;
    let (hub, hub_name) = match previous.as_ref().filter(|_| stay) {
        Some(p) => match hub_named(state, &p.assigned_hub, linked) {
            Ok(h) => (h, p.assigned_hub.clone()),
            Err(_) => choose(state, doc, req.registration_id, linked).await?,
        },
        None => choose(state, doc, req.registration_id, linked).await?,
    };
    let moved_from = previous
        .as_ref()
        .filter(|p| !p.assigned_hub.is_empty() && !p.assigned_hub.eq_ignore_ascii_case(&hub_name))
        .map(|p| p.assigned_hub.clone());
    let migrate = doc["reprovisionPolicy"]["migrateDeviceData"] != false;
    let mut auth = device_authentication(&admitted);
    let mut auth_note = "";
    if let (Hub::Linked(linked), Some(leaf), Some(group_ca)) =
        (&hub, req.chain.first(), admitted.group_ca.as_deref())
    {
        // This hub trusts the group's CA (it admitted the device); a linked hub may not.
        let sha256 = match group_ca {
            GroupCa::Verified { sha256, .. } => sha256.as_str(),
            _ => "",
        };
        if !linked.trusts_ca(sha256).await? {
            // The hub cannot judge the chain: the device authenticates by its certificate's
            // thumbprint there.
            let t = Thumbprints::of(leaf.as_ref());
            auth = AuthenticationInput {
                kind: Some(AuthType::SelfSigned),
                x509_thumbprint: Some(X509Thumbprint {
                    primary_thumbprint: Some(t.sha256),
                    secondary_thumbprint: None,
                }),
                ..AuthenticationInput::default()
            };
            auth_note = "; by thumbprint: that hub has no verified CA of the group";
        }
    }
    let capabilities = doc
        .get("capabilities")
        .cloned()
        .unwrap_or(json!({"iotEdge": false}));
    // A first registration on this hub usually makes a device that is not there yet: try
    // that first and read the device only if it was (a storm of first boots saves a read).
    let made_first = previous.is_none()
        && matches!(hub, Hub::Local)
        && hub.create_local(state, &id, &auth, &capabilities).await?;
    let existing = if made_first {
        None
    } else {
        hub.device(state, &id).await?
    };
    if existing
        .as_ref()
        .is_some_and(|d| d.status == certhub_core::Status::Disabled)
    {
        let detail = format!(
            "device {id} exists on {hub_name} and is disabled; enable it there, or delete it, before it registers again"
        );
        audit_refusal(state, req, "device-disabled", &detail).await;
        return Err(unauthorized());
    }
    let initial_tags = doc
        .pointer("/initialTwin/tags")
        .cloned()
        .unwrap_or(json!({}));
    let initial_desired = doc
        .pointer("/initialTwin/properties/desired")
        .cloned()
        .unwrap_or(json!({}));
    // What the twin becomes: the initial one for a new device or a reset, the old hub's for a
    // migration, unchanged otherwise.
    // A hub that is no longer linked has nothing to migrate from: the device starts afresh.
    let old_hub = moved_from
        .as_deref()
        .and_then(|old| hub_named(state, old, linked).ok());
    let (twin, substatus) = match (&moved_from, previous.is_some(), migrate) {
        (Some(_), _, true) if old_hub.is_some() => {
            let data = match &old_hub {
                Some(h) => h.twin_data(state, &id).await?,
                None => (json!({}), json!({})),
            };
            (Some((data.0, data.1, false)), "deviceDataMigrated")
        }
        (Some(_), _, true) => (
            Some((initial_tags.clone(), initial_desired.clone(), true)),
            "deviceDataReset",
        ),
        (Some(_), _, false) => (
            Some((initial_tags.clone(), initial_desired.clone(), true)),
            "deviceDataReset",
        ),
        (None, true, false) => (
            Some((initial_tags.clone(), initial_desired.clone(), true)),
            "deviceDataReset",
        ),
        (None, true, true) => (None, "initialAssignment"),
        (None, false, _) => (
            Some((initial_tags.clone(), initial_desired.clone(), false)),
            "initialAssignment",
        ),
    };
    if !made_first {
        hub.put_device(state, &id, &auth, &capabilities, existing.as_ref())
            .await?;
    }
    let created = existing.is_none();
    // A device that existed keeps its twin unless it is reset or migrated; one made anew (it
    // was deleted from its hub meanwhile) gets the initial twin.
    let twin = match twin {
        Some(t) if created || t.2 || moved_from.is_some() => Some(t),
        None if created => Some((initial_tags.clone(), initial_desired.clone(), false)),
        _ => None,
    };
    if let Some((tags, desired, reset)) = twin
        && let Err(e) = hub.write_twin(state, &id, &tags, &desired, reset).await
    {
        if created {
            hub.undo_create(state, &id).await;
        }
        return Err(e);
    }
    let now = now_ms();
    let operation_id = format!("4.{}", crate::random::uuid_v4_text());
    let created_ms = previous.as_ref().map_or(now, |p| p.created_ms);
    let etag = Etag::random();
    let mut registration = json!({
        "registrationId": req.registration_id,
        "createdDateTimeUtc": azure_time(created_ms),
        "assignedHub": hub_name,
        "deviceId": device_id,
        "status": "assigned",
        "substatus": substatus,
        "lastUpdatedDateTimeUtc": azure_time(now),
        "etag": etag.0,
    });
    match (&admitted.attestation, admitted.kind) {
        (Attestation::SymmetricKey { .. }, Kind::Group) => {
            registration["symmetricKey"] = json!({"enrollmentGroupId": admitted.enrollment_id});
        }
        (Attestation::SymmetricKey { .. }, Kind::Individual) => {
            registration["symmetricKey"] = json!({"enrollmentGroupId": null});
        }
        _ => {
            registration["x509"] = admitted.x509.clone().unwrap_or(Value::Null);
        }
    }
    if let Some(p) = &req.payload {
        registration["payload"] = p.clone();
    }
    let record = RegistrationRecord {
        id: key.to_string(),
        group_id: match admitted.kind {
            Kind::Group => admitted.enrollment_id.clone(),
            Kind::Individual => String::new(),
        },
        assigned_hub: hub_name.clone(),
        operation_id: operation_id.clone(),
        doc: registration.to_string(),
        etag: etag.clone(),
        created_ms,
        updated_ms: now,
    };
    let written = store
        .put_registration(&record, previous.as_ref().map(|p| &p.etag))
        .await
        .map_err(unavailable)?;
    if written != WriteOutcome::Written {
        return Err(DpsError::new(
            409,
            409_000,
            "another registration of this id finished first; register again",
        ));
    }
    let detail = format!(
        "assigned to {hub_name} as device {device_id} ({}{auth_note}) through {} {}; {substatus}{}{}; peer {} over {}",
        if created { "created" } else { "existing" },
        admitted.kind.noun(),
        admitted.enrollment_id,
        moved_from.map(|h| format!(" from {h}")).unwrap_or_default(),
        if req.force { "; forceRegistration" } else { "" },
        req.peer,
        req.transport
    );
    let audit = AuditRecord::new(
        now,
        "device",
        "dps.register",
        &format!("registrations/{}", bounded(req.registration_id, 256)),
        "ok",
        &detail,
    );
    state.bookkeeper().audit(audit).await;
    state.metrics().connect("dps-assigned");
    Ok(Answer {
        status: 200,
        body: json!({
            "operationId": operation_id,
            "status": "assigned",
            "registrationState": registration,
        }),
        retry_after: None,
    })
}

/// The identity the device gets on its hub, matching its attestation.
fn device_authentication(a: &Admitted) -> AuthenticationInput {
    match (&a.attestation, &a.device_key) {
        (Attestation::X509Group { .. }, _) => AuthenticationInput {
            kind: Some(AuthType::CertificateAuthority),
            ..AuthenticationInput::default()
        },
        (Attestation::X509Leaf { thumbprints }, _) => AuthenticationInput {
            kind: Some(AuthType::SelfSigned),
            x509_thumbprint: Some(X509Thumbprint {
                primary_thumbprint: thumbprints.first().cloned(),
                // Each slot lists SHA-256 first; the secondary is the next of the same kind.
                secondary_thumbprint: thumbprints
                    .iter()
                    .skip(1)
                    .find(|t| t.len() == thumbprints[0].len())
                    .cloned(),
            }),
            ..AuthenticationInput::default()
        },
        (Attestation::SymmetricKey { .. }, Some((primary, secondary))) => AuthenticationInput {
            kind: Some(AuthType::Sas),
            symmetric_key: Some(SymmetricKey {
                primary_key: Some(primary.clone()),
                secondary_key: Some(if secondary.is_empty() {
                    primary.clone()
                } else {
                    secondary.clone()
                }),
            }),
            ..AuthenticationInput::default()
        },
        (Attestation::SymmetricKey { .. }, None) => AuthenticationInput {
            kind: Some(AuthType::Sas),
            ..AuthenticationInput::default()
        },
    }
}

/// The name devices reach this hub by: its public endpoint's host (a cluster's load
/// balancer), else its first host name.
pub(crate) fn this_hub(state: &AppState) -> String {
    state.public_host()
}

/// The status of an operation a device polls: the registration state it produced, if the
/// operation is the registration's latest.
pub(crate) async fn operation_status(
    state: &AppState,
    registration_id: &str,
    operation_id: &str,
) -> Answer {
    let key = registration_id.to_ascii_lowercase();
    match state.store().registration(&key).await {
        Ok(Some(r)) if r.operation_id == operation_id => {
            let doc: Value = serde_json::from_str(&r.doc).unwrap_or(Value::Null);
            let status = doc["status"].as_str().unwrap_or("failed").to_string();
            Answer {
                status: 200,
                body: json!({"operationId": operation_id, "status": status, "registrationState": doc}),
                retry_after: None,
            }
        }
        Ok(_) => Answer::error(&DpsError::new(
            404,
            404_000,
            format!(
                "no operation {operation_id:?} of registration {registration_id:?}: register first"
            ),
        )),
        Err(e) => {
            tracing::error!(error = %e, "provisioning store read failed");
            Answer::error(&DpsError::new(
                503,
                503_000,
                "the provisioning service could not read its store; try again",
            ))
        }
    }
}

/// Whether a poll's credential would be admitted by a register request of `registration_id`
/// now (the poll carries the same proof; a refusal here is not audited again).
pub(crate) async fn prove_again(
    state: &AppState,
    registration_id: &str,
    chain: &[CertificateDer<'static>],
    token: Option<&str>,
) -> bool {
    if check_dps_id("registration id", registration_id).is_err() {
        return false;
    }
    let req = Request {
        registration_id,
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        chain,
        token,
        payload: None,
        force: false,
        transport: "https",
    };
    Box::pin(judge(state, &req, &registration_id.to_ascii_lowercase()))
        .await
        .is_ok()
}

/// The hubs registrations may go to: this one, then the linked ones.
pub(crate) async fn known_hubs(state: &AppState) -> Result<Vec<String>, certhub_store::StoreError> {
    let mut hubs = vec![this_hub(state)];
    hubs.extend(
        state
            .store()
            .linked_hubs()
            .await?
            .into_iter()
            .map(|h| h.name),
    );
    Ok(hubs)
}

/// Just-in-time registration (AWS IoT's JITR, without a provisioning round trip): a device
/// that is not in the registry, presents a chain reaching a verified CA with JITR on, whose
/// leaf CN is its client id and matches that CA's pattern, is created (certificateAuthority)
/// before its CONNECT is judged. Audited `device.create` by `jitr:{ca}`. Returns the identity
/// as the registry now holds it, or None (the CONNECT is then refused as any unknown device).
pub(crate) async fn jitr(
    state: &AppState,
    client_id: &str,
    chain: &[CertificateDer<'_>],
    peer: SocketAddr,
) -> Option<certhub_core::Registered> {
    // Devices only (a module's client id holds a '/'), ids the registry accepts.
    let id = DeviceId::new(client_id)
        .ok()
        .filter(|_| !client_id.contains('/'))?;
    let now = now_ms();
    for (ca, pattern) in state.jitr().iter() {
        if !glob_matches(pattern, client_id) {
            continue;
        }
        let Ok(group_ca) = group_ca(state, ca).await else {
            return None;
        };
        let GroupCa::Verified { trust, .. } = &*group_ca else {
            continue;
        };
        if certhub_pki::verify_device_chain(chain, &trust.verified, Some(client_id), unix(now))
            .is_err()
        {
            continue;
        }
        let input = certhub_core::DeviceInput {
            authentication: Some(AuthenticationInput {
                kind: Some(AuthType::CertificateAuthority),
                ..AuthenticationInput::default()
            }),
            ..certhub_core::DeviceInput::default()
        };
        let device = input.into_device(&id, None, now).ok()?;
        match state.store().create_device(&device).await {
            Ok(WriteOutcome::Written) => {
                let record = AuditRecord::new(
                    now,
                    &format!("jitr:{ca}"),
                    "device.create",
                    &format!("devices/{id}"),
                    "ok",
                    &format!(
                        "just-in-time registration: the chain reaches CA {ca}, whose pattern {pattern:?} admits {id}; peer {peer}"
                    ),
                );
                state.bookkeeper().audit(record).await;
            }
            // Another connection of the same device created it first.
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, device = %id, "just-in-time registration not written");
                return None;
            }
        }
        let device = state.store().device_for_connect(&id).await.ok()??;
        return Some(certhub_core::Registered {
            device,
            module: None,
        });
    }
    None
}

/// `*` any run of characters, `?` one; everything else itself.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn patterns_match_as_globs() {
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("smart-x-widget-*", "smart-x-widget-0001"));
        assert!(!glob_matches("smart-x-widget-*", "smart-y-widget-0001"));
        assert!(glob_matches("w-??", "w-01"));
        assert!(!glob_matches("w-??", "w-001"));
        assert!(glob_matches("*-0001", "smart-x-widget-0001"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }
}
