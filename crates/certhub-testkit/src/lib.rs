//! Test helpers for certhub: whole PKIs built in memory with rcgen, with fixed dates so tests
//! never depend on the clock.
//!
//! ```
//! use certhub_testkit::{Ca, NOW};
//! let root = Ca::root("Company-X Root CA");
//! let factory = root.intermediate("Factory-Y CA");
//! let widget = factory.intermediate("Technician-Z CA").device("widget-1");
//! assert_eq!(widget.chain.len(), 3); // leaf + Technician-Z + Factory-Y, no root
//! # let _ = NOW;
//! ```
//!
//! It is not a PKI for production: keys are generated without care for storage, and the
//! helpers deliberately allow broken certificates (expired, CA leaves, wrong EKU).
#![forbid(unsafe_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;

/// Every certificate is valid from this instant...
pub const NOT_BEFORE: i64 = 1_735_689_600; // 2025-01-01T00:00:00Z
/// ...until this one.
pub const NOT_AFTER: i64 = 2_051_222_400; // 2035-01-01T00:00:00Z
/// The instant tests verify at, unless they move time themselves.
pub const NOW: i64 = 1_798_761_600; // 2027-01-01T00:00:00Z

/// `secs` since the epoch as the `UnixTime` the verifier takes.
pub fn at(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs.max(0) as u64))
}

/// [`NOW`] as a `UnixTime`.
pub fn now() -> UnixTime {
    at(NOW)
}

fn time(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn serial() -> SerialNumber {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    SerialNumber::from_slice(&[&[0x01], &n.to_be_bytes()[..]].concat())
}

fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = time(NOT_BEFORE);
    p.not_after = time(NOT_AFTER);
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    p
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = params(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn device_params(id: &str) -> CertificateParams {
    let mut p = params(id);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

fn key() -> KeyPair {
    KeyPair::generate().expect("P-256 key generation")
}

/// A CA: its certificate, its key, and the chain a device below it presents above its leaf.
#[derive(Debug)]
pub struct Ca {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
    params: CertificateParams,
    /// This CA followed by the intermediates above it, without the root.
    pub chain: Vec<CertificateDer<'static>>,
}

/// An end-entity certificate with its key and the chain it presents (leaf first).
#[derive(Debug)]
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
    /// The leaf followed by the intermediates, without the root: what a device sends in TLS.
    pub chain: Vec<CertificateDer<'static>>,
}

impl Ca {
    /// A self-signed root CA named `CN=cn`.
    pub fn root(cn: &str) -> Self {
        Self::root_with(cn, |_| {})
    }

    /// A root whose parameters `edit` may change (validity, constraints...).
    pub fn root_with(cn: &str, edit: impl FnOnce(&mut CertificateParams)) -> Self {
        let mut p = ca_params(cn);
        p.use_authority_key_identifier_extension = false;
        edit(&mut p);
        let key = key();
        let cert = p.self_signed(&key).expect("self-sign").der().clone();
        Self {
            cert,
            key,
            params: p,
            chain: Vec::new(),
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A CA below this one.
    pub fn intermediate(&self, cn: &str) -> Ca {
        self.intermediate_with(cn, |_| {})
    }

    pub fn intermediate_with(&self, cn: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
        let mut p = ca_params(cn);
        edit(&mut p);
        let key = key();
        let cert = p
            .signed_by(&key, &self.issuer())
            .expect("sign")
            .der()
            .clone();
        let mut chain = vec![cert.clone()];
        chain.extend(self.chain.iter().cloned());
        Ca {
            cert,
            key,
            params: p,
            chain,
        }
    }

    /// A device certificate (CN = `id`, CA:FALSE, clientAuth) issued by this CA.
    pub fn device(&self, id: &str) -> Leaf {
        self.leaf_with(id, |_| {})
    }

    /// A leaf whose device-profile parameters `edit` may change.
    pub fn leaf_with(&self, cn: &str, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut p = device_params(cn);
        edit(&mut p);
        let key = key();
        let cert = p
            .signed_by(&key, &self.issuer())
            .expect("sign")
            .der()
            .clone();
        let mut chain = vec![cert.clone()];
        chain.extend(self.chain.iter().cloned());
        Leaf { cert, key, chain }
    }

    /// The certificate as PEM.
    pub fn pem(&self) -> String {
        to_pem(&self.cert)
    }

    /// A CRL (DER) this CA signs, numbered `number`, revoking the serials (big-endian octets)
    /// at `revoked_at` (unix seconds), valid from [`NOW`] for a week.
    pub fn crl(&self, serials: &[Vec<u8>], number: u64, revoked_at: i64) -> Vec<u8> {
        let at = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).expect("time");
        rcgen::CertificateRevocationListParams {
            this_update: at(NOW - 60),
            next_update: at(NOW + 7 * 86_400),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: at(revoked_at),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer())
        .expect("sign the CRL")
        .der()
        .to_vec()
    }
}

impl Leaf {
    pub fn pem(&self) -> String {
        to_pem(&self.cert)
    }

    /// Leaf and intermediates as one PEM file.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(to_pem).collect()
    }
}

/// A self-signed device certificate (for thumbprint authentication).
pub fn self_signed_device(id: &str) -> Leaf {
    let p = device_params(id);
    let key = key();
    let cert = p.self_signed(&key).expect("self-sign").der().clone();
    Leaf {
        chain: vec![cert.clone()],
        cert,
        key,
    }
}

/// Sets the validity of certificate parameters (seconds since the epoch).
pub fn validity(p: &mut CertificateParams, not_before: i64, not_after: i64) {
    p.not_before = time(not_before);
    p.not_after = time(not_after);
}

/// PEM-encodes a certificate.
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
}
