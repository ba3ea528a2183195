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
    let mut index = tokio::task::spawn_blocking(move || {
        let mut index = Revocations::default();
        for crl in crls {
            let Some(ca) = ders.get(&crl.ca) else {
                continue;
            };
            match file(&mut index, &crl, ca) {
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

/// Checks a stored CRL against its CA again and files its entries: its issuer's key and how it
/// is named.
fn file(
    index: &mut Revocations,
    crl: &CrlRecord,
    ca: &CertificateDer<'static>,
) -> Result<(certhub_pki::KeyId, String), certhub_pki::PkiError> {
    let chain = if crl.issuer_chain.is_empty() {
        Vec::new()
    } else {
        certhub_pki::read_certificates(crl.issuer_chain.as_bytes())?
    };
    let checked = certhub_pki::read_crl_for(&crl.der, ca, &chain)?;
    let source = format!(
        "CRL number {} of {:?} (held for CA {:?})",
        checked.facts.number, checked.issuer_subject, crl.ca
    );
    index.add_crl(checked.issuer_key, &checked.facts, &source);
    Ok((checked.issuer_key, source))
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
