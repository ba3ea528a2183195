//! The trust snapshot: the registered CAs as an immutable value, rebuilt from the store on
//! every CA or CRL change and swapped in whole, so a CONNECT never waits on the database for
//! it. The CRLs of the CAs become the snapshot's revocation index.

use std::sync::Arc;

use certhub_core::TrustSnapshot;
use certhub_pki::{CertificateDer, Revocations, TrustStore};
use certhub_store::{CrlRecord, Store};

/// Builds the snapshot from the registered CAs and their CRLs. A stored CA that cannot be an
/// anchor (it does not parse, or the anchor rules changed since it was registered) is left
/// out with a log line. An expired CA stays in: the chain check then refuses its devices by
/// name (`certificate-expired`, naming the CA) rather than as an unknown issuer.
///
/// When the CAs are those of `previous` (only CRLs changed), its stores are kept with the new
/// revocation index: the chain links they remember stay proven.
pub async fn load(
    store: &Store,
    previous: Option<&TrustSnapshot>,
    cache: &Arc<CrlCache>,
) -> Result<TrustSnapshot, certhub_store::StoreError> {
    let mut snapshot = TrustSnapshot::default();
    let (mut verified, mut unverified) = (Vec::new(), Vec::new());
    let mut ders = std::collections::HashMap::new();
    for ca in store.cas().await? {
        let Ok(certs) = certhub_pki::read_upload(&ca.pem) else {
            tracing::error!(ca = %ca.name, "a registered CA does not parse; skipped");
            continue;
        };
        let Some(cert) = certs.into_iter().next() else {
            continue;
        };
        if TrustStore::new([cert.clone()]).is_err() {
            tracing::warn!(ca = %ca.name, "a registered CA cannot be a trust anchor; skipped");
            continue;
        }
        snapshot
            .anchors
            .push(format!("{}:{}:{}", ca.name, ca.sha256, ca.is_verified));
        ders.insert(ca.name.clone(), cert.clone());
        if ca.is_verified {
            verified.push(cert);
            snapshot.verified_names.push(ca.name);
        } else {
            unverified.push(cert);
            snapshot.unverified_names.push(ca.name);
        }
    }
    // Parsing and checking CRLs (a 100 000-entry one is megabytes) runs off the async
    // workers, so handshakes in flight never wait behind it.
    let crls = store.crls().await?;
    let policies: std::collections::HashMap<String, String> =
        store.crl_policies().await?.into_iter().collect();
    let cache = cache.clone();
    let mut index = tokio::task::spawn_blocking(move || {
        let mut index = Revocations::default();
        let mut used = std::collections::HashSet::new();
        for crl in crls {
            let Some(ca) = ders.get(&crl.ca) else {
                continue;
            };
            match file(&mut index, &crl, ca, &cache, &mut used) {
                Ok((issuer_key, source)) => {
                    let policy = StalePolicy::parse(policies.get(&crl.ca).map(String::as_str));
                    if let (StalePolicy::FailClosed { grace_s }, true) =
                        (policy, crl.next_update_ms != 0)
                    {
                        index.add_deadline(issuer_key, crl.next_update_ms / 1000, grace_s, &source);
                    }
                }
                Err(e) => tracing::error!(ca = %crl.ca, issuer = %crl.issuer, error = %e,
                    "a stored CRL no longer checks against its CA; its entries are not used"),
            }
        }
        cache.keep_only(&used);
        index
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "filing the CRLs failed; no CRL is in force");
        Revocations::default()
    });
    for r in store.ocsp_revocations().await? {
        let key: Option<certhub_pki::KeyId> =
            certhub_pki::unhex(&r.issuer_key).and_then(|k| k.try_into().ok());
        let (Some(key), Some(serial)) = (key, certhub_pki::unhex(&r.serial)) else {
            tracing::error!(ca = %r.ca, "a stored OCSP revocation does not parse; skipped");
            continue;
        };
        index.add_revoked(
            key,
            &serial,
            r.revoked_ms / 1000,
            certhub_pki::RevocationReasonCode::from_code(u8::try_from(r.reason).unwrap_or(0)),
            &format!("the OCSP responder {} (asked for CA {:?})", r.url, r.ca),
        );
    }
    for block in store.blocks().await? {
        let Some(b) = as_block(&block) else {
            tracing::error!(id = %block.id, "a stored block does not parse; skipped");
            continue;
        };
        let note = if block.note.is_empty() {
            String::new()
        } else {
            format!(": {}", block.note)
        };
        index.add_block(
            b,
            block.created_ms / 1000,
            &format!("block {}{note}", block.id),
        );
    }
    let index = Arc::new(index);
    match previous.filter(|p| p.anchors == snapshot.anchors) {
        Some(p) => {
            snapshot.verified = p.verified.with_revocations(index.clone());
            snapshot.unverified = p.unverified.clone();
        }
        None => {
            snapshot.verified = TrustStore::new(verified)
                .unwrap_or_default()
                .with_revocations(index.clone());
            snapshot.unverified = TrustStore::new(unverified).unwrap_or_default();
        }
    }
    Ok(snapshot)
}

/// What the hub does once a CA's CRL is past its nextUpdate (and no newer one came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StalePolicy {
    /// The certificates the CRL covers are refused (`crl-expired`) once the grace period
    /// after nextUpdate has passed. The default, with a day's grace.
    FailClosed { grace_s: i64 },
    /// The last CRL keeps counting, however old.
    FailOpen,
}

/// The default grace after a CRL's nextUpdate: a day.
pub const DEFAULT_GRACE_S: i64 = 86_400;

impl StalePolicy {
    /// From its stored form (`fail-open`, `fail-closed:<grace s>`); none is the default.
    pub fn parse(stored: Option<&str>) -> Self {
        match stored {
            Some("fail-open") => Self::FailOpen,
            Some(s) => Self::FailClosed {
                grace_s: s
                    .strip_prefix("fail-closed:")
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(DEFAULT_GRACE_S),
            },
            None => Self::FailClosed {
                grace_s: DEFAULT_GRACE_S,
            },
        }
    }

    /// Its stored form.
    pub fn stored(self) -> String {
        match self {
            Self::FailOpen => "fail-open".into(),
            Self::FailClosed { grace_s } => format!("fail-closed:{grace_s}"),
        }
    }
}

/// Files a stored CRL's entries: its issuer's key and how it is named. A CRL checked before
/// against the same CA (at its upload or fetch, or at an earlier reload) is taken from `cache`;
/// any other is checked against its CA again.
fn file(
    index: &mut Revocations,
    crl: &CrlRecord,
    ca: &CertificateDer<'static>,
    cache: &CrlCache,
    used: &mut std::collections::HashSet<[u8; 32]>,
) -> Result<(certhub_pki::KeyId, String), certhub_pki::PkiError> {
    let key = CrlCache::key(ca, crl);
    let checked = match cache.get(&key) {
        Some(c) => c,
        None => {
            let chain = if crl.issuer_chain.is_empty() {
                Vec::new()
            } else {
                certhub_pki::read_certificates(crl.issuer_chain.as_bytes())?
            };
            let c = Arc::new(Filed::from(certhub_pki::read_crl_for(
                &crl.der, ca, &chain,
            )?));
            cache.put(key, c.clone());
            c
        }
    };
    used.insert(key);
    let source = format!(
        "CRL number {} of {:?} (held for CA {:?})",
        checked.facts.number, checked.issuer_subject, crl.ca
    );
    index.add_crl(checked.issuer_key, &checked.facts, &source);
    Ok((checked.issuer_key, source))
}

/// A CRL checked against its CA, as the index files it.
#[derive(Debug)]
pub struct Filed {
    issuer_key: certhub_pki::KeyId,
    issuer_subject: String,
    facts: certhub_pki::CrlFacts,
}

impl From<certhub_pki::CheckedCrl> for Filed {
    fn from(c: certhub_pki::CheckedCrl) -> Self {
        Self {
            issuer_key: c.issuer_key,
            issuer_subject: c.issuer_subject,
            facts: c.facts,
        }
    }
}

/// The CRLs already checked against their CAs, so that a trust reload (after any CA, CRL,
/// block or OCSP change) parses and checks only the CRLs it has not seen: a 100 000-entry CRL
/// is checked once, when it is uploaded or fetched, not again on every reload. Keyed by the
/// SHA-256 of the CA's certificate, the CRL and its issuer chain; a reload keeps only the CRLs
/// still held.
#[derive(Debug, Default)]
pub struct CrlCache(std::sync::Mutex<std::collections::HashMap<[u8; 32], Arc<Filed>>>);

impl CrlCache {
    /// The key of `crl` held for the CA whose certificate is `ca`.
    pub fn key(ca: &[u8], crl: &CrlRecord) -> [u8; 32] {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [ca, &crl.der, crl.issuer_chain.as_bytes()] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(h.finish().as_ref());
        key
    }

    /// Remembers a CRL checked against `ca` at its upload or fetch, as `record` will be stored.
    pub fn checked(&self, ca: &[u8], record: &CrlRecord, checked: certhub_pki::CheckedCrl) {
        self.put(Self::key(ca, record), Arc::new(Filed::from(checked)));
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<Filed>> {
        self.0.lock().ok()?.get(key).cloned()
    }

    fn put(&self, key: [u8; 32], filed: Arc<Filed>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, filed);
        }
    }

    /// Forgets the CRLs a reload did not file (replaced or deleted).
    fn keep_only(&self, used: &std::collections::HashSet<[u8; 32]>) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|k, _| used.contains(k));
        }
    }
}

/// A stored block as the index takes it.
pub(crate) fn as_block(b: &certhub_store::BlockRecord) -> Option<certhub_pki::Block> {
    if !b.sha256.is_empty() {
        let t: [u8; 32] = certhub_pki::unhex(&b.sha256)?.try_into().ok()?;
        return Some(certhub_pki::Block::Thumbprint(t));
    }
    Some(certhub_pki::Block::IssuerSerial {
        issuer: b.issuer.clone(),
        serial: certhub_pki::unhex(&b.serial)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(der: &[u8]) -> CrlRecord {
        CrlRecord {
            ca: "company-x".into(),
            issuer_key: String::new(),
            issuer: "CN=Technician-Z CA".into(),
            issuer_chain: String::new(),
            der: der.to_vec(),
            number: "7".into(),
            this_update_ms: 0,
            next_update_ms: 0,
            entries: 1,
            source: "upload".into(),
            stored_ms: 0,
        }
    }

    fn filed() -> Arc<Filed> {
        Arc::new(Filed {
            issuer_key: [7; 32],
            issuer_subject: "CN=Technician-Z CA".into(),
            facts: certhub_pki::CrlFacts {
                issuer: "CN=Technician-Z CA".into(),
                number: "7".into(),
                this_update: time::OffsetDateTime::UNIX_EPOCH,
                next_update: None,
                revoked: vec![certhub_pki::RevokedEntry {
                    serial: vec![0x42],
                    revoked_at: time::OffsetDateTime::UNIX_EPOCH,
                    reason: certhub_pki::RevocationReasonCode::KeyCompromise,
                }],
            },
        })
    }

    /// A CRL checked at its upload is filed from the cache: the reload does not parse it (these
    /// bytes would not parse). Under another CA, or once forgotten, it is checked again.
    #[test]
    fn a_reload_files_a_checked_crl_without_parsing_it_again() {
        let cache = CrlCache::default();
        let crl = record(b"not a CRL at all");
        let ca = CertificateDer::from(b"the CA's certificate".to_vec());
        cache.put(CrlCache::key(&ca, &crl), filed());
        let mut index = Revocations::default();
        let mut used = std::collections::HashSet::new();
        let (key, source) = file(&mut index, &crl, &ca, &cache, &mut used).expect("from the cache");
        assert_eq!(key, [7; 32]);
        assert!(source.contains("CRL number 7"), "{source}");
        assert_eq!(index.len(), 1);
        assert_eq!(used.len(), 1);

        let other_ca = CertificateDer::from(b"another CA".to_vec());
        assert!(file(&mut index, &crl, &other_ca, &cache, &mut used).is_err());

        cache.keep_only(&std::collections::HashSet::new());
        assert!(
            file(&mut index, &crl, &ca, &cache, &mut used).is_err(),
            "forgotten"
        );
    }
}
