//! OCSP for the leaves of CAs that opt in (`ocsp` in the CA's revocation policy). At CONNECT,
//! after the chain checks out: a fresh cached answer decides at once (a hash lookup); without
//! one, the hub asks the responder the leaf names (authorityInfoAccess), waiting at most
//! [`ASK_TIMEOUT`]. A revoked answer is stored (a revocation is final), so the revocation
//! index refuses the leaf from then on, on every node and transport, and closes its live
//! sessions. Without an answer (the responder down, answering garbage or for another
//! certificate, or `unknown`), the CA's stale policy decides: fail-closed admits only within
//! the grace after the last good answer's nextUpdate and refuses as `revocation-unknown`
//! otherwise; fail-open admits. Each round of the fetch task asks again, before a connect
//! needs it, for the leaves of live sessions whose answers are due.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use certhub_core::{AuthType, AuthenticatedDevice};
use certhub_pki::{CertificateDer, KeyId, OcspAnswer, OcspQuery, OcspStatus};

use crate::state::{AppState, now_ms};
use crate::trust::StalePolicy;

/// How long a connect waits for a responder.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer taken.
const MAX_ANSWER: u64 = 1 << 20;

/// The cache key: the leaf's issuer key and serial.
type Key = (KeyId, Vec<u8>);

#[derive(Debug, Clone)]
struct Entry {
    ca: String,
    /// None: the leaf names no responder.
    query: Option<Arc<OcspQuery>>,
    /// The last good (checked) answer.
    answer: Option<OcspAnswer>,
    /// When (unix s) to ask again.
    due: i64,
}

/// The per-node OCSP state: which CAs use it, with their stale policies, and the answers.
#[derive(Debug, Default)]
pub struct Ocsp {
    cas: RwLock<HashMap<String, StalePolicy>>,
    cache: Mutex<HashMap<Key, Entry>>,
    /// The longest an answer without nextUpdate is used (`crl_refresh`), seconds.
    refresh_s: std::sync::atomic::AtomicI64,
}

/// A refusal: the reason's name and its detail.
pub type Refusal = (&'static str, String);

fn now_s() -> i64 {
    now_ms() / 1000
}

impl Ocsp {
    /// The CAs with OCSP on and their stale policies (from the trust reload).
    pub(crate) fn configure(&self, cas: HashMap<String, StalePolicy>) {
        if let Ok(mut c) = self.cas.write() {
            *c = cas;
        }
    }

    pub(crate) fn set_refresh(&self, refresh: Duration) {
        self.refresh_s.store(
            i64::try_from(refresh.as_secs()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn refresh_s(&self) -> i64 {
        match self.refresh_s.load(std::sync::atomic::Ordering::Relaxed) {
            0 => 3600,
            s => s,
        }
    }

    fn policy(&self, ca: &str) -> Option<StalePolicy> {
        self.cas.read().ok()?.get(ca).copied()
    }

    /// When to ask again after `answer`: at its nextUpdate, or after the refresh.
    fn due_after(&self, answer: &OcspAnswer, now: i64) -> i64 {
        let refresh = now + self.refresh_s();
        answer
            .next_update
            .map_or(refresh, |n| n.clamp(now + 1, refresh))
    }
}

/// Judges an admitted device's leaf by OCSP when its CA has it on.
pub(crate) async fn check(
    state: &AppState,
    device: &AuthenticatedDevice,
    chain: &[CertificateDer<'_>],
) -> Result<(), Refusal> {
    if device.method() != AuthType::CertificateAuthority {
        return Ok(());
    }
    let Some(leaf) = device.chain().first() else {
        return Ok(());
    };
    check_leaf(state, device.ca(), leaf, chain).await
}

/// Judges `leaf` (verified under the registered CA `ca`, presented in `chain`) by OCSP when
/// that CA has it on: at CONNECT and at DPS registrations.
pub(crate) async fn check_leaf(
    state: &AppState,
    ca: &str,
    leaf: &certhub_pki::ChainCert,
    chain: &[CertificateDer<'_>],
) -> Result<(), Refusal> {
    let ocsp = state.ocsp();
    let Some(policy) = ocsp.policy(ca) else {
        return Ok(());
    };
    let key: Key = (leaf.issuer_key, leaf.serial.clone());
    let now = now_s();
    let cached = ocsp.cache.lock().ok().and_then(|c| c.get(&key).cloned());
    if let Some(e) = &cached
        && e.due > now
    {
        return match (&e.query, &e.answer) {
            (None, _) => Ok(()),
            (Some(q), Some(a)) => judge(state, ca, &key, q, Ok(*a), None, policy).await,
            (Some(q), None) => {
                judge(
                    state,
                    ca,
                    &key,
                    q,
                    Err("no answer yet".into()),
                    None,
                    policy,
                )
                .await
            }
        };
    }
    let query = match cached.as_ref().map(|e| e.query.clone()) {
        Some(q) => q,
        None => match query_for(state, ca, leaf, chain).await {
            Ok(q) => q.map(Arc::new),
            Err(e) => {
                tracing::warn!(ca = %ca, error = %e, "an OCSP request could not be made");
                None
            }
        },
    };
    let Some(query) = query else {
        // The leaf names no responder: nothing to ask, until the refresh.
        remember(ocsp, key, ca, None, None, now + ocsp.refresh_s());
        return Ok(());
    };
    let previous = cached.and_then(|e| e.answer);
    let asked = ask(&query, now).await;
    judge(state, ca, &key, &query, asked, previous, policy).await
}

fn remember(
    ocsp: &Ocsp,
    key: Key,
    ca: &str,
    query: Option<Arc<OcspQuery>>,
    answer: Option<OcspAnswer>,
    due: i64,
) {
    if let Ok(mut c) = ocsp.cache.lock() {
        c.insert(
            key,
            Entry {
                ca: ca.to_string(),
                query,
                answer,
                due,
            },
        );
    }
}

/// Decides on an answer (or the failure to get one), remembering it.
async fn judge(
    state: &AppState,
    ca: &str,
    key: &Key,
    query: &Arc<OcspQuery>,
    asked: Result<OcspAnswer, String>,
    previous: Option<OcspAnswer>,
    policy: StalePolicy,
) -> Result<(), Refusal> {
    let ocsp = state.ocsp();
    let now = now_s();
    let url = &query.url;
    match asked {
        Ok(answer) => {
            let due = ocsp.due_after(&answer, now);
            remember(
                ocsp,
                key.clone(),
                ca,
                Some(query.clone()),
                Some(answer),
                due,
            );
            match answer.status {
                OcspStatus::Good => Ok(()),
                OcspStatus::Revoked { at, reason } => {
                    learnt_revoked(state, ca, key, url, at, reason).await;
                    Err((
                        "certificate-revoked",
                        format!(
                            "the leaf (serial {}) was revoked at {}, reason {}, said the OCSP responder {url}",
                            certhub_pki::hex(&key.1),
                            certhub_core::azure_time(at * 1000),
                            reason.name()
                        ),
                    ))
                }
                OcspStatus::Unknown => unanswered(
                    policy,
                    None,
                    now,
                    format!(
                        "the OCSP responder {url} does not know the leaf (serial {}): status unknown",
                        certhub_pki::hex(&key.1)
                    ),
                ),
            }
        }
        Err(e) => {
            let retry = now + ocsp.refresh_s().min(60);
            remember(ocsp, key.clone(), ca, Some(query.clone()), previous, retry);
            unanswered(
                policy,
                previous,
                now,
                format!("the OCSP responder {url} gave no usable answer: {e}"),
            )
        }
    }
}

/// No answer to go by: the stale policy decides, with the last good answer if any.
fn unanswered(
    policy: StalePolicy,
    previous: Option<OcspAnswer>,
    now: i64,
    why: String,
) -> Result<(), Refusal> {
    match policy {
        StalePolicy::FailOpen => Ok(()),
        StalePolicy::FailClosed { grace_s } => {
            let good_until = previous
                .filter(|a| a.status == OcspStatus::Good)
                .and_then(|a| a.next_update)
                .map(|n| n.saturating_add(grace_s));
            match good_until {
                Some(until) if now <= until => Ok(()),
                _ => Err((
                    "revocation-unknown",
                    format!(
                        "{why}; the CA's policy is fail-closed (certhub ca crl policy), so the leaf is refused until a responder answers good"
                    ),
                )),
            }
        }
    }
}

/// Stores a revoked answer and reloads the trust: the index refuses the leaf from now on and
/// closes its live sessions, on every node.
async fn learnt_revoked(
    state: &AppState,
    ca: &str,
    key: &Key,
    url: &str,
    at: i64,
    reason: certhub_pki::RevocationReasonCode,
) {
    let record = certhub_store::OcspRevocation {
        ca: ca.to_string(),
        issuer_key: certhub_pki::hex(&key.0),
        serial: certhub_pki::hex(&key.1),
        revoked_ms: at.saturating_mul(1000),
        reason: i64::from(reason.code()),
        url: url.to_string(),
        learnt_ms: now_ms(),
    };
    if let Err(e) = state.store().put_ocsp_revocation(&record).await {
        tracing::error!(error = %e, "storing an OCSP revocation failed");
        return;
    }
    match state.reload_trust().await {
        Ok(closed) => tracing::info!(
            ca,
            url,
            closed,
            "an OCSP responder answered revoked; the leaf is refused from now on"
        ),
        Err(e) => {
            tracing::error!(error = %e, "reloading the trust after an OCSP revocation failed")
        }
    }
}

/// The query for `leaf`: its issuer is the next certificate presented, or the registered CA.
async fn query_for(
    state: &AppState,
    ca: &str,
    leaf: &certhub_pki::ChainCert,
    chain: &[CertificateDer<'_>],
) -> Result<Option<OcspQuery>, String> {
    let Some(leaf_der) = chain.first() else {
        return Ok(None);
    };
    let issuer = chain
        .iter()
        .skip(1)
        .find(|c| certhub_pki::key_id(c).is_ok_and(|k| k == leaf.issuer_key))
        .map(|c| c.clone().into_owned());
    let issuer = match issuer {
        Some(i) => i,
        None => {
            let record = state
                .store()
                .ca(ca)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the CA is no longer registered")?;
            certhub_pki::read_upload(&record.pem)
                .ok()
                .and_then(|c| c.into_iter().next())
                .ok_or("the registered CA does not parse")?
        }
    };
    OcspQuery::new(leaf_der, &issuer).map_err(|e| e.to_string())
}

/// POSTs the request and checks the answer.
async fn ask(query: &Arc<OcspQuery>, now: i64) -> Result<OcspAnswer, String> {
    let q = query.clone();
    tokio::task::spawn_blocking(move || {
        let mut answer = crate::crl_fetch::http_agent(ASK_TIMEOUT, 0)
            .post(&q.url)
            .header("Content-Type", "application/ocsp-request")
            .send(&q.request[..])
            .map_err(|e| format!("POST {}: {e}", q.url))?;
        let status = answer.status();
        if status != 200 {
            return Err(format!("HTTP {status}"));
        }
        let bytes = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| format!("reading the answer: {e}"))?;
        q.read_response(&bytes, now).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Asks again, ahead of any connect, for the leaves of live sessions whose answers are due;
/// a revoked answer closes the session (through the stored revocation).
pub(crate) async fn refresh_live(state: &AppState) {
    let ocsp = state.ocsp();
    let cas: HashSet<String> = ocsp
        .cas
        .read()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    if cas.is_empty() {
        return;
    }
    let live: HashSet<Key> = state.sessions().leaves_of(&cas).into_iter().collect();
    let now = now_s();
    let due: Vec<(Key, Entry)> = ocsp
        .cache
        .lock()
        .map(|c| {
            c.iter()
                .filter(|(k, e)| e.due <= now && e.query.is_some() && live.contains(*k))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (key, entry) in due {
        let (Some(query), Some(policy)) = (entry.query.clone(), ocsp.policy(&entry.ca)) else {
            continue;
        };
        let asked = ask(&query, now).await;
        if let Err((reason, detail)) =
            judge(state, &entry.ca, &key, &query, asked, entry.answer, policy).await
            && reason == "revocation-unknown"
        {
            // No revocation to store: the session closes here.
            let closed = state
                .sessions()
                .kick_leaf(&key.0, &key.1, &format!("{reason}: {detail}"));
            if closed > 0 {
                tracing::info!(closed, "closed sessions whose OCSP status is unknown");
            }
        }
    }
}
