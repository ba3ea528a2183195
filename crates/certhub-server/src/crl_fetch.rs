//! CRLs fetched from their distribution points. The trust store notes each (issuer, URL) that
//! the certificates of a verified chain name in cRLDistributionPoints; this task records them
//! in the store, fetches each when due (over HTTP, bounded in time and size), checks the CRL
//! against the issuer's chain up to the registered CA exactly as an upload is checked, and
//! holds it when it is newer than the one held. The revocation index is then rebuilt and the
//! sessions it now refuses close.
//!
//! When a CRL is due: at its nextUpdate, or sooner after `refresh` (an issuer may publish
//! before nextUpdate); after a failure, again after a minute (or `refresh` when shorter). The
//! last good CRL stays held whatever a fetch returns; once it is past its nextUpdate, the
//! CA's stale policy decides. On a cluster every node runs the task and one claims each due
//! fetch in the store.

use std::time::Duration;

use certhub_pki::CertificateDer;
use certhub_store::{CrlRecord, CrlSource, Store, StoreError};

use crate::state::{AppState, now_ms};

/// How long one fetch may take, connection and body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node holds a claimed fetch before another may take it over.
const LEASE: Duration = Duration::from_secs(60);
/// The wait after a failed fetch (or `refresh`, when shorter).
const RETRY: Duration = Duration::from_secs(60);

use crate::state::System as Hub;

/// Why a CRL is not held.
#[derive(Debug)]
pub(crate) enum NotHeld {
    /// Older than the CRL held for the same issuer: (its number, the held number).
    Outdated(String, String),
    /// The held CRL's number with different content.
    NumberReused(String),
    Store(StoreError),
}

impl From<StoreError> for NotHeld {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// What [`hold`] did.
#[derive(Debug)]
pub(crate) enum Held {
    /// The CRL is held now: the trust must be reloaded.
    New,
    /// The same CRL was held already (as recorded then).
    Already(CrlRecord),
}

/// Holds a checked CRL for its CA unless the one held for its issuer is as new.
pub(crate) async fn hold(store: &Store, record: &CrlRecord) -> Result<Held, NotHeld> {
    let held = store
        .crls_of(&record.ca)
        .await?
        .into_iter()
        .find(|r| r.issuer_key == record.issuer_key);
    if let Some(old) = held {
        match certhub_pki::CrlFacts::compare_numbers(&record.number, &old.number) {
            std::cmp::Ordering::Less => {
                return Err(NotHeld::Outdated(record.number.clone(), old.number));
            }
            std::cmp::Ordering::Equal if old.der == record.der => return Ok(Held::Already(old)),
            std::cmp::Ordering::Equal => return Err(NotHeld::NumberReused(old.number)),
            std::cmp::Ordering::Greater => {}
        }
    }
    store.put_crl(record).await?;
    Ok(Held::New)
}

/// The record of a checked CRL, as held for `ca`.
pub(crate) fn record(
    ca: &str,
    checked: &certhub_pki::CheckedCrl,
    issuer_chain: &[CertificateDer<'_>],
    source: &str,
) -> CrlRecord {
    let facts = &checked.facts;
    CrlRecord {
        ca: ca.to_string(),
        issuer_key: certhub_pki::hex(&checked.issuer_key),
        issuer: checked.issuer_subject.clone(),
        issuer_chain: issuer_chain.iter().map(certhub_pki::to_pem).collect(),
        der: checked.der.clone(),
        number: facts.number.clone(),
        this_update_ms: facts.this_update.unix_timestamp() * 1000,
        next_update_ms: facts.next_update.map_or(0, |t| t.unix_timestamp() * 1000),
        entries: i64::try_from(facts.revoked.len()).unwrap_or(i64::MAX),
        source: source.to_string(),
        stored_ms: now_ms(),
    }
}

/// Starts the task: every `refresh` (at most every 5 s) it records the distribution points
/// met since and fetches those due, then asks OCSP responders again for the live sessions'
/// leaves whose answers are due, and closes the sessions of a fail-closed CRL whose grace has
/// just run out.
pub fn spawn(state: AppState, refresh: Duration) -> tokio::task::JoinHandle<()> {
    let tick = refresh.min(Duration::from_secs(5));
    state.ocsp().set_refresh(refresh);
    tokio::spawn(async move {
        let mut since = now_ms() / 1000;
        loop {
            tokio::time::sleep(tick).await;
            if let Err(e) = round(&state, refresh).await {
                tracing::warn!(error = %e, "fetching CRLs from their distribution points failed");
            }
            // A fail-closed CRL whose grace ran out since the last round refuses the
            // certificates it covers from now on: their live sessions close too.
            let now = now_ms() / 1000;
            let trust = state.trust();
            if trust.verified.revocations().deadline_passed(since, now) {
                let closed = state.sessions().kick_revoked(&trust.verified);
                tracing::info!(
                    closed,
                    "a fail-closed CRL is past its grace: closed the sessions it covers"
                );
            }
            since = now;
        }
    })
}

async fn round(state: &AppState, refresh: Duration) -> Result<(), StoreError> {
    let trust = state.trust();
    let now = now_ms();
    let mut points = trust.verified.take_crl_points().into_iter();
    while let Some(point) = points.next() {
        let Some(ca) = trust.verified_names.get(point.anchor_index) else {
            continue;
        };
        let source = CrlSource {
            ca: ca.clone(),
            issuer_key: certhub_pki::hex(&point.issuer_key),
            url: point.url.clone(),
            issuer: point.issuer_subject.clone(),
            issuer_chain: point.issuer_chain.iter().map(certhub_pki::to_pem).collect(),
            found_ms: now,
            next_fetch_ms: now,
            fetched_ms: 0,
            ok_ms: 0,
            failures: 0,
            error: String::new(),
        };
        match state.store().add_crl_source(&source).await {
            Ok(true) => tracing::info!(ca = %ca, issuer = %point.issuer_subject, url = %point.url,
                "a new CRL distribution point"),
            Ok(false) => {}
            Err(e) => {
                // Not lost: taken again next round.
                trust
                    .verified
                    .requeue_crl_points(std::iter::once(point).chain(points).collect());
                return Err(e);
            }
        }
    }
    let mut changed = false;
    for source in state.store().due_crl_sources(now).await? {
        let lease = now + LEASE.as_millis() as i64;
        if !state
            .store()
            .claim_crl_source(&source, source.next_fetch_ms, lease)
            .await?
        {
            continue; // another node fetches it
        }
        changed |= fetch_one(state, &source, refresh).await?;
    }
    if changed {
        state.reload_trust().await?;
    }
    crate::ocsp::refresh_live(state).await;
    Ok(())
}

/// Fetches one distribution point and records the outcome; true when a newer CRL is held.
async fn fetch_one(
    state: &AppState,
    source: &CrlSource,
    refresh: Duration,
) -> Result<bool, StoreError> {
    let ca = state.store().ca(&source.ca).await?;
    let outcome = match ca {
        None => Err("the CA is no longer registered".to_string()),
        Some(ca) => fetch_and_check(source, &ca.pem, state.crl_cache()).await,
    };
    let now = now_ms();
    let target = format!("certificates/{}", source.ca);
    match outcome {
        Ok(record) => {
            let next = next_fetch(now, record.next_update_ms, refresh);
            let held = hold(state.store(), &record).await;
            let (error, changed) = match held {
                Ok(held) => (String::new(), matches!(held, Held::New)),
                // A newer CRL was uploaded meanwhile: the fetch worked, the upload stays.
                Err(NotHeld::Outdated(_, _)) => (String::new(), false),
                Err(NotHeld::NumberReused(n)) => (
                    format!(
                        "CRL number {n} at {} differs from the one held under the same number: the issuer reused a CRL number; the held one stays",
                        source.url
                    ),
                    false,
                ),
                Err(NotHeld::Store(e)) => return Err(e),
            };
            if changed {
                tracing::info!(ca = %source.ca, url = %source.url, number = %record.number,
                    revoked = record.entries, "a newer CRL from its distribution point");
                let detail = format!(
                    "CRL number {} of {:?} from {}: {} revoked",
                    record.number, record.issuer, source.url, record.entries
                );
                state
                    .audit(&Hub, "ca.crl.fetch", &target, "ok", &detail)
                    .await;
            }
            if !error.is_empty() && source.failures == 0 {
                state
                    .audit(&Hub, "ca.crl.fetch", &target, "CrlNumberReused", &error)
                    .await;
            }
            let next = if error.is_empty() {
                next
            } else {
                now + retry(refresh)
            };
            state
                .store()
                .record_crl_fetch(source, now, &error, next)
                .await?;
            Ok(changed)
        }
        Err(error) => {
            tracing::warn!(ca = %source.ca, url = %source.url, error = %error,
                "fetching a CRL failed; the last good one stays");
            // The first failure after a success goes to the audit trail; the retries do not.
            if source.failures == 0 {
                state
                    .audit(&Hub, "ca.crl.fetch", &target, "CrlFetchFailed", &error)
                    .await;
            }
            state
                .store()
                .record_crl_fetch(source, now, &error, now + retry(refresh))
                .await?;
            Ok(false)
        }
    }
}

fn retry(refresh: Duration) -> i64 {
    RETRY.min(refresh).as_millis() as i64
}

/// When to fetch again after a success: at the CRL's nextUpdate, or after `refresh` when that
/// comes first; a CRL already past its nextUpdate (its issuer is late) is tried again as after
/// a failure.
fn next_fetch(now: i64, next_update_ms: i64, refresh: Duration) -> i64 {
    let refresh = refresh.as_millis() as i64;
    if next_update_ms == 0 {
        return now + refresh;
    }
    if next_update_ms <= now {
        return now + RETRY.as_millis().min(refresh as u128) as i64;
    }
    now + (next_update_ms - now).min(refresh)
}

/// GETs the CRL and checks it against the CA `ca_pem` through the source's issuer chain.
async fn fetch_and_check(
    source: &CrlSource,
    ca_pem: &str,
    cache: &std::sync::Arc<crate::trust::CrlCache>,
) -> Result<CrlRecord, String> {
    let cache = cache.clone();
    let url = source.url.clone();
    let chain_pem = source.issuer_chain.clone();
    let ca_pem = ca_pem.to_string();
    let ca_name = source.ca.clone();
    tokio::task::spawn_blocking(move || {
        let bytes = get(&url, FETCH_TIMEOUT, certhub_pki::MAX_CRL_BYTES as u64)?;
        let ca = certhub_pki::read_upload(&ca_pem)
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or("the registered CA does not parse")?;
        let chain = if chain_pem.trim().is_empty() {
            Vec::new()
        } else {
            certhub_pki::read_certificates(chain_pem.as_bytes())
                .map_err(|e| format!("the issuer chain held for {url}: {e}"))?
        };
        let checked = certhub_pki::read_crl_for(&bytes, &ca, &chain)
            .map_err(|e| format!("the CRL at {url} is not taken for CA {ca_name:?}: {e}"))?;
        let record = record(&ca_name, &checked, &chain, &url);
        // The trust reload that files it takes it from here rather than checking it again.
        cache.checked(&ca, &record, checked);
        Ok(record)
    })
    .await
    .map_err(|e| format!("checking the CRL failed: {e}"))?
}

/// A plain-HTTP client for what the hub fetches or sends by itself (CRLs, OCSP, webhooks):
/// every request within `timeout`, at most `max_redirects` redirects, any status returned.
pub(crate) fn http_agent(timeout: Duration, max_redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(max_redirects)
        .user_agent(concat!("certhub/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// One HTTP GET of at most `limit` bytes, within `timeout`.
fn get(url: &str, timeout: Duration, limit: u64) -> Result<Vec<u8>, String> {
    let mut answer = http_agent(timeout, 3)
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = answer.status();
    if status != 200 {
        return Err(format!("GET {url}: HTTP {status}, not 200 with a CRL"));
    }
    let bytes = answer
        .body_mut()
        .with_config()
        .limit(limit + 1)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                format!("GET {url}: the answer is larger than a CRL may be ({limit} bytes)")
            }
            e => format!("GET {url}: reading the answer: {e}"),
        })?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "GET {url}: the answer is larger than a CRL may be ({limit} bytes)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A loopback server that answers each connection with `answer` (None: never answers).
    fn serve(answer: Option<Vec<u8>>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                match &answer {
                    Some(a) => {
                        let _ = conn.write_all(a);
                    }
                    None => std::thread::sleep(Duration::from_secs(30)),
                }
            }
        });
        format!("http://127.0.0.1:{port}/x.crl")
    }

    #[test]
    fn a_hanging_publisher_is_given_up_on_in_time() {
        let url = serve(None);
        let start = std::time::Instant::now();
        let e = get(&url, Duration::from_millis(300), 1000).expect_err("no answer");
        assert!(start.elapsed() < Duration::from_secs(5), "{e}");
        assert!(e.starts_with(&format!("GET {url}: ")), "{e}");
    }

    #[test]
    fn an_answer_larger_than_a_crl_may_be_is_refused() {
        let mut a =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n".to_vec();
        a.extend([0x30; 5000]);
        let url = serve(Some(a));
        let e = get(&url, Duration::from_secs(5), 1000).expect_err("too large");
        assert!(e.contains("larger than a CRL may be (1000 bytes)"), "{e}");
        let url = serve(Some(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ));
        let e = get(&url, Duration::from_secs(5), 1000).expect_err("503");
        assert!(
            e.contains("HTTP 503 Service Unavailable, not 200 with a CRL"),
            "{e}"
        );
    }

    #[test]
    fn the_next_fetch_honours_next_update_within_refresh() {
        let hour = Duration::from_secs(3600);
        let now = 1_000_000;
        // nextUpdate in 10 minutes: then.
        assert_eq!(next_fetch(now, now + 600_000, hour), now + 600_000);
        // nextUpdate in a week: after the refresh.
        assert_eq!(next_fetch(now, now + 604_800_000, hour), now + 3_600_000);
        // No nextUpdate: after the refresh.
        assert_eq!(next_fetch(now, 0, hour), now + 3_600_000);
        // Past its nextUpdate: again in a minute, or the refresh when shorter.
        assert_eq!(next_fetch(now, now - 1, hour), now + 60_000);
        assert_eq!(
            next_fetch(now, now - 1, Duration::from_secs(2)),
            now + 2_000
        );
    }
}
