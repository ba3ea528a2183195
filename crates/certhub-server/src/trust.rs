//! The trust snapshot: the registered CAs as an immutable value, rebuilt from the store on
//! every CA change and swapped in whole, so a CONNECT never waits on the database for it.

use certhub_core::TrustSnapshot;
use certhub_pki::TrustStore;
use certhub_store::Store;

/// Builds the snapshot from the registered CAs. A stored CA that cannot be an anchor (it does
/// not parse, or the anchor rules changed since it was registered) is left out with a log line.
/// An expired CA stays in: the chain check then refuses its devices by name
/// (`certificate-expired`, naming the CA) rather than as an unknown issuer.
pub async fn load(store: &Store) -> Result<TrustSnapshot, certhub_store::StoreError> {
    let mut snapshot = TrustSnapshot::default();
    let (mut verified, mut unverified) = (Vec::new(), Vec::new());
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
        if ca.is_verified {
            verified.push(cert);
            snapshot.verified_names.push(ca.name);
        } else {
            unverified.push(cert);
            snapshot.unverified_names.push(ca.name);
        }
    }
    snapshot.verified = TrustStore::new(verified).unwrap_or_default();
    snapshot.unverified = TrustStore::new(unverified).unwrap_or_default();
    Ok(snapshot)
}
