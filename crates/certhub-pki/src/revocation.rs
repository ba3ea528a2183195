//! The revocation index: which certificates of a chain the hub must refuse although the chain
//! verifies. It is built off the hot path (from CRLs the hub holds) and consulted on every
//! connect with one hash lookup per certificate of the verified path, so a list of 100 000
//! entries costs a connect no more than an empty one.
//!
//! A certificate is named by its issuer's key and its serial: the SHA-256 of the issuer's
//! SubjectPublicKeyInfo (DER) and the serial's octets. A CRL is checked against its issuer's
//! key when it is loaded, so its entries are filed under that key; the chain check files each
//! certificate of a verified path under the key of the certificate above it. Names are not
//! used: two CAs with one subject and different keys (a renewed root) never share entries.

use std::collections::HashMap;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use crate::crl::crl_der;
use crate::describe::parse;
use crate::{CrlFacts, PkiError, RevocationReasonCode, read_crl};

/// SHA-256 of a SubjectPublicKeyInfo's DER.
pub type KeyId = [u8; 32];

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: the [`KeyId`] its CRLs and the
/// certificates it issued are filed under.
pub fn key_id(cert: &CertificateDer<'_>) -> Result<KeyId, PkiError> {
    Ok(key_id_of(&parse(cert)?))
}

pub(crate) fn key_id_of(cert: &X509Certificate<'_>) -> KeyId {
    sha256(cert.public_key().raw)
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A serial's octets without leading zero octets (DER adds one to keep a serial positive):
/// the form the index keys on.
pub(crate) fn serial_key(raw: &[u8]) -> Vec<u8> {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].to_vec()
}

/// The bytes of [`hex`] text (either case); none when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lower-case hex, as serials and keys are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One certificate of a verified path below its trust anchor: what revocation, blocking and
/// the hub's bookkeeping need to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCert {
    /// The certificate's subject, as text.
    pub subject: String,
    /// Its issuer's subject, as text.
    pub issuer: String,
    /// Its serial ([`serial_key`] form).
    pub serial: Vec<u8>,
    /// The [`KeyId`] of the certificate above it in the path.
    pub issuer_key: KeyId,
    /// SHA-256 of its DER (its SHA-256 thumbprint).
    pub sha256: [u8; 32],
    /// Its notAfter (unix seconds).
    pub not_after: i64,
}

impl ChainCert {
    pub(crate) fn of(cert: &X509Certificate<'_>, der: &[u8], issuer_key: KeyId) -> Self {
        Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: serial_key(cert.raw_serial()),
            issuer_key,
            sha256: sha256(der),
            not_after: cert.validity().not_after.timestamp(),
        }
    }

    /// The serial in hex, as openssl prints it.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }
}

/// Why a certificate is on the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The revocationDate of its CRL entry, or when the operator blocked it (unix seconds).
    pub revoked_at: i64,
    pub reason: RevocationReasonCode,
    /// Where the hub learned it, for the operator: e.g. `CRL number 4 of "CN=Technician-Z"`.
    pub source: Arc<str>,
    /// Blocked by the operator rather than revoked by its issuer.
    pub blocked: bool,
}

/// A certificate the operator blocks without a CRL: by its SHA-256 thumbprint, or by its
/// issuer's name (as `certhub pki inspect` prints it) and serial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Block {
    Thumbprint([u8; 32]),
    IssuerSerial { issuer: String, serial: Vec<u8> },
}

/// The certificates the hub refuses although their chains verify, by (issuer key, serial).
/// Immutable once built: the hub builds a new one when a CRL changes and swaps it in whole.
/// When a fail-closed CRL stops vouching for the certificates of its issuer: its nextUpdate
/// plus the CA's grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// nextUpdate plus the grace (unix seconds).
    pub at: i64,
    /// The CRL's nextUpdate (unix seconds).
    pub next_update: i64,
    /// The grace period, seconds.
    pub grace: i64,
    /// The CRL, for the operator.
    pub source: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Revocations {
    entries: HashMap<(KeyId, Vec<u8>), Revoked>,
    /// CRLs held under a fail-closed policy, by issuer key.
    deadlines: HashMap<KeyId, Deadline>,
    by_thumbprint: HashMap<[u8; 32], Revoked>,
    by_issuer_serial: HashMap<(String, Vec<u8>), Revoked>,
}

impl Revocations {
    /// Files the entries of a CRL that was checked against the key `issuer_key` (the CRL's
    /// issuer's). `source` names the CRL in refusals.
    pub fn add_crl(&mut self, issuer_key: KeyId, crl: &CrlFacts, source: &str) {
        let source: Arc<str> = Arc::from(source);
        self.entries.reserve(crl.revoked.len());
        for entry in &crl.revoked {
            self.entries.insert(
                (issuer_key, serial_key(&entry.serial)),
                Revoked {
                    revoked_at: entry.revoked_at.unix_timestamp(),
                    reason: entry.reason,
                    source: source.clone(),
                    blocked: false,
                },
            );
        }
    }

    /// Adds one certificate revoked by other means than a CRL the hub holds (an OCSP
    /// responder's answer): its issuer's key and serial, when and why.
    pub fn add_revoked(
        &mut self,
        issuer_key: KeyId,
        serial: &[u8],
        revoked_at: i64,
        reason: RevocationReasonCode,
        source: &str,
    ) {
        self.entries.insert(
            (issuer_key, serial_key(serial)),
            Revoked {
                revoked_at,
                reason,
                source: Arc::from(source),
                blocked: false,
            },
        );
    }

    /// Adds a block the operator made at `at` (unix seconds); `source` names it in refusals.
    pub fn add_block(&mut self, block: Block, at: i64, source: &str) {
        let why = Revoked {
            revoked_at: at,
            reason: RevocationReasonCode::Unspecified,
            source: Arc::from(source),
            blocked: true,
        };
        match block {
            Block::Thumbprint(t) => {
                self.by_thumbprint.insert(t, why);
            }
            Block::IssuerSerial { issuer, serial } => {
                self.by_issuer_serial
                    .insert((issuer, serial_key(&serial)), why);
            }
        }
    }

    /// The CRL of `issuer_key` is held fail-closed: past `next_update + grace` (unix seconds)
    /// the certificates it covers are refused until a newer one comes.
    pub fn add_deadline(&mut self, issuer_key: KeyId, next_update: i64, grace: i64, source: &str) {
        self.deadlines.insert(
            issuer_key,
            Deadline {
                at: next_update.saturating_add(grace),
                next_update,
                grace,
                source: Arc::from(source),
            },
        );
    }

    /// The certificate of a path (the one nearest the anchor) whose issuer's fail-closed CRL
    /// is past its deadline at `now`.
    pub fn overdue<'a>(
        &'a self,
        path: &'a [ChainCert],
        now: i64,
    ) -> Option<(&'a ChainCert, &'a Deadline)> {
        if self.deadlines.is_empty() {
            return None;
        }
        path.iter().rev().find_map(|c| {
            self.deadlines
                .get(&c.issuer_key)
                .filter(|d| now > d.at)
                .map(|d| (c, d))
        })
    }

    /// Whether a fail-closed deadline fell in `[since, now)` (unix seconds): the certificates
    /// its CRL covers became refused on the clock, with no new index.
    pub fn deadline_passed(&self, since: i64, now: i64) -> bool {
        self.deadlines.values().any(|d| d.at >= since && d.at < now)
    }

    /// How many certificates are revoked or blocked.
    pub fn len(&self) -> usize {
        self.entries.len() + self.by_thumbprint.len() + self.by_issuer_serial.len()
    }

    /// Nothing revoked, blocked or held fail-closed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.by_thumbprint.is_empty()
            && self.by_issuer_serial.is_empty()
            && self.deadlines.is_empty()
    }

    /// The revoked or blocked certificate of a path (leaf first), the one nearest the anchor
    /// when several are: it explains the most (a revoked intermediate takes every device below
    /// it). A block is named before a revocation of the same certificate.
    pub fn find<'a>(&'a self, path: &'a [ChainCert]) -> Option<(&'a ChainCert, &'a Revoked)> {
        if self.is_empty() {
            return None;
        }
        path.iter().rev().find_map(|c| {
            let blocked = || {
                self.by_thumbprint.get(&c.sha256).or_else(|| {
                    if self.by_issuer_serial.is_empty() {
                        return None;
                    }
                    self.by_issuer_serial
                        .get(&(c.issuer.clone(), c.serial.clone()))
                })
            };
            blocked()
                .or_else(|| self.entries.get(&(c.issuer_key, c.serial.clone())))
                .map(|r| (c, r))
        })
    }
}

/// A CRL checked against the registered CA it was uploaded for, as the hub files it.
#[derive(Debug, Clone)]
pub struct CheckedCrl {
    pub facts: CrlFacts,
    /// The [`KeyId`] of the CRL's issuer.
    pub issuer_key: KeyId,
    /// The subject of the CRL's issuer (the CA itself, or an intermediate below it).
    pub issuer_subject: String,
    /// The CRL's DER.
    pub der: Vec<u8>,
}

/// Reads a CRL for the registered CA `ca`. A CRL the CA signed itself needs nothing else. A
/// CRL of an intermediate below the CA (Technician-Z's, under Company-X) needs that
/// intermediate's certificate first in `issuer_chain`, followed by any certificates between
/// it and the CA (in any order): each must be a CA certificate signed by the next one up, the
/// last one by `ca`. The CRL is then checked against the intermediate (see [`read_crl`]).
pub fn read_crl_for(
    bytes: &[u8],
    ca: &CertificateDer<'_>,
    issuer_chain: &[CertificateDer<'_>],
) -> Result<CheckedCrl, PkiError> {
    let ca_cert = parse(ca)?;
    let Some(first) = issuer_chain.first() else {
        let facts = read_crl(bytes, ca)?;
        return Ok(CheckedCrl {
            facts,
            issuer_key: key_id_of(&ca_cert),
            issuer_subject: ca_cert.subject().to_string(),
            der: crl_der(bytes)?.into_owned(),
        });
    };
    let certs: Vec<X509Certificate<'_>> = issuer_chain
        .iter()
        .map(|c| parse(c))
        .collect::<Result<_, _>>()?;
    // Walk up from the CRL's issuer to the CA, each step to a certificate named as the issuer.
    let mut current = &certs[0];
    let mut used = vec![false; certs.len()];
    used[0] = true;
    for _ in 0..=certs.len() {
        let subject = current.subject().to_string();
        if !current.is_ca() {
            return Err(PkiError::Policy(format!(
                "{subject:?} in the issuer chain is not a CA certificate: only a CA (or the registered CA itself) signs a CRL the hub takes"
            )));
        }
        let parent = if current.issuer().as_raw() == ca_cert.subject().as_raw() {
            Some(&ca_cert)
        } else {
            certs.iter().enumerate().find_map(|(i, c)| {
                (!used[i] && c.subject().as_raw() == current.issuer().as_raw()).then(|| {
                    used[i] = true;
                    c
                })
            })
        };
        let Some(parent) = parent else {
            return Err(PkiError::Policy(format!(
                "the issuer chain does not reach the CA {:?}: {subject:?} was issued by {:?}, which is neither the CA nor in the chain given",
                ca_cert.subject().to_string(),
                current.issuer().to_string()
            )));
        };
        current
            .verify_signature(Some(parent.public_key()))
            .map_err(|_| {
                PkiError::Policy(format!(
                    "the signature of {subject:?} in the issuer chain does not verify with the key of {:?}",
                    parent.subject().to_string()
                ))
            })?;
        if std::ptr::eq(parent, &ca_cert) {
            let facts = read_crl(bytes, first)?;
            return Ok(CheckedCrl {
                facts,
                issuer_key: key_id_of(&certs[0]),
                issuer_subject: certs[0].subject().to_string(),
                der: crl_der(bytes)?.into_owned(),
            });
        }
        current = parent;
    }
    Err(PkiError::Policy(
        "the issuer chain loops without reaching the CA".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_keyed_without_leading_zeros() {
        assert_eq!(serial_key(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(serial_key(&[0x12]), vec![0x12]);
        assert_eq!(serial_key(&[0]), vec![0]);
        assert_eq!(serial_key(&[]), Vec::<u8>::new());
    }
}
