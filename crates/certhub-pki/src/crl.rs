//! Certificate revocation lists that a CA of the supply chain issues (`certhub pki revoke`,
//! `certhub pki crl`): RFC 5280 v2 CRLs signed with the CA's own key (by rcgen), so that an
//! operator can revoke a device, or a whole intermediate, offline and hand the hub (or openssl)
//! the list.

use rcgen::{CertificateRevocationListParams, RevocationReason, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::describe::parse;
use crate::{Issuer, PkiError};

/// Why a certificate was revoked: RFC 5280's reason codes, by the names the CLI takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReasonCode {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
}

const NAMES: [(&str, RevocationReasonCode); 8] = [
    ("unspecified", RevocationReasonCode::Unspecified),
    ("key-compromise", RevocationReasonCode::KeyCompromise),
    ("ca-compromise", RevocationReasonCode::CaCompromise),
    (
        "affiliation-changed",
        RevocationReasonCode::AffiliationChanged,
    ),
    ("superseded", RevocationReasonCode::Superseded),
    (
        "cessation-of-operation",
        RevocationReasonCode::CessationOfOperation,
    ),
    ("certificate-hold", RevocationReasonCode::CertificateHold),
    (
        "privilege-withdrawn",
        RevocationReasonCode::PrivilegeWithdrawn,
    ),
];

impl RevocationReasonCode {
    /// Its name (`key-compromise`, ...).
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("unspecified", |(n, _)| n)
    }

    /// The reason called `name`; the error lists the names there are.
    pub fn from_name(name: &str) -> Result<Self, PkiError> {
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                PkiError::Policy(format!(
                    "{name:?} is not a revocation reason: one of {}",
                    names.join(", ")
                ))
            })
    }

    fn rcgen(self) -> Option<RevocationReason> {
        Some(match self {
            // RFC 5280 5.3.1: "unspecified" should be left out rather than written.
            Self::Unspecified => return None,
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::CaCompromise => RevocationReason::CaCompromise,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
            Self::CertificateHold => RevocationReason::CertificateHold,
            Self::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        })
    }
}

/// One certificate a CA revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Its serial number, as encoded in the certificate (big-endian bytes).
    pub serial: Vec<u8>,
    /// When the CA revoked it.
    pub revoked_at: OffsetDateTime,
    pub reason: RevocationReasonCode,
}

/// Longest validity of a CRL this toolkit signs (its nextUpdate, from now).
pub const MAX_CRL_DAYS: u32 = 366;

impl Issuer {
    /// The serial number of `cert`, once it is checked to be this CA's own: issued under this
    /// CA's name and signed with its key. Only its issuer may revoke a certificate.
    pub fn serial_of_issued(&self, cert: &CertificateDer<'_>) -> Result<Vec<u8>, PkiError> {
        let issued = parse(cert)?;
        let me = parse(self.certificate())?;
        if issued.issuer().as_raw() != me.subject().as_raw() {
            return Err(PkiError::Policy(format!(
                "{:?} was issued by {:?}, not by {:?}: revoke it with its own issuer's folder",
                issued.subject().to_string(),
                issued.issuer().to_string(),
                self.subject()
            )));
        }
        issued
            .verify_signature(Some(me.public_key()))
            .map_err(|_| {
                PkiError::Policy(format!(
                    "{:?} names {:?} as its issuer but is not signed with that CA's key: it is not this CA's to revoke",
                    issued.subject().to_string(),
                    self.subject()
                ))
            })?;
        Ok(issued.raw_serial().to_vec())
    }

    /// A CRL of `revoked`, numbered `number`, valid from `now` for `days` (its nextUpdate),
    /// signed with this CA's key, as PEM. Refused when the CA's certificate may not sign CRLs
    /// (a keyUsage without cRLSign).
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        number: u64,
        now: OffsetDateTime,
        days: u32,
    ) -> Result<String, PkiError> {
        let me = parse(self.certificate())?;
        if let Ok(Some(ku)) = me.key_usage()
            && !ku.value.crl_sign()
        {
            return Err(PkiError::Policy(format!(
                "the issuer {:?} has a keyUsage without cRLSign: verifiers refuse CRLs it signs; revoke through a CA whose certificate allows cRLSign",
                self.subject()
            )));
        }
        if days == 0 || days > MAX_CRL_DAYS {
            return Err(PkiError::Policy(format!(
                "a CRL's validity of {days} days: give 1 to {MAX_CRL_DAYS} (verifiers treat a CRL past its nextUpdate as stale)"
            )));
        }
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(i64::from(days)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: r.revoked_at,
                    reason_code: r.reason.rcgen(),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.key_id().clone(),
        };
        Ok(params.signed_by(&self.rcgen_issuer())?.pem()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CaFiles, KeyAlgorithm, Profile, SignOptions, create_request, create_root, sign_request,
    };
    use x509_parser::prelude::FromDer;

    fn issuer_of(cert: &str, key: &str) -> Issuer {
        Issuer::load(CaFiles {
            cert: cert.as_bytes(),
            key,
            chain: None,
        })
        .expect("a CA")
    }

    #[test]
    fn a_crl_lists_what_its_ca_revoked_and_verifies_with_its_key() {
        let now = OffsetDateTime::now_utc();
        let root = create_root(
            &crate::parse_subject("CN=Root").unwrap(),
            KeyAlgorithm::EcdsaP256,
            3650,
            None,
            now,
        )
        .expect("root");
        let ca = issuer_of(&root.pem, &root.key_pem);
        let device = create_request(
            &crate::parse_subject("CN=widget").unwrap(),
            KeyAlgorithm::EcdsaP256,
        )
        .expect("csr");
        let csr = crate::read_csr(device.pem.as_bytes()).expect("csr");
        let issued =
            sign_request(&ca, &csr, Profile::Device, &SignOptions::default(), now).expect("signed");
        let serial = ca.serial_of_issued(&issued.der).expect("its own");
        let entry = RevokedEntry {
            serial: serial.clone(),
            revoked_at: now,
            reason: RevocationReasonCode::KeyCompromise,
        };
        let pem = ca.crl(&[entry], 7, now, 7).expect("a CRL");
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
        assert_eq!(block.label, "X509 CRL");
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&block.contents)
                .expect("DER");
        let root_der = crate::read_certificates(root.pem.as_bytes()).expect("root")[0].clone();
        let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der).expect("root");
        crl.verify_signature(root_cert.public_key())
            .expect("signed by the root's key");
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("7".into()));
        let listed: Vec<_> = crl.iter_revoked_certificates().collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].raw_serial(), &serial[..]);
        assert!(crl.next_update().is_some());
    }

    #[test]
    fn only_the_issuer_revokes_and_bad_values_are_refused() {
        let now = OffsetDateTime::now_utc();
        let mk = |cn: &str| {
            let r = create_root(
                &crate::parse_subject(&format!("CN={cn}")).unwrap(),
                KeyAlgorithm::EcdsaP256,
                3650,
                None,
                now,
            )
            .expect("root");
            (issuer_of(&r.pem, &r.key_pem), r)
        };
        let (a, _) = mk("A");
        let (b, b_files) = mk("B");
        let b_cert = crate::read_certificates(b_files.pem.as_bytes()).expect("cert")[0].clone();
        let e = a.serial_of_issued(&b_cert).expect_err("not A's");
        assert!(
            e.to_string()
                .contains("revoke it with its own issuer's folder"),
            "{e}"
        );
        assert!(b.serial_of_issued(&b_cert).is_ok(), "a root issued itself");
        for days in [0, MAX_CRL_DAYS + 1] {
            let e = a.crl(&[], 1, now, days).expect_err("days");
            assert!(e.to_string().contains("give 1 to"), "{e}");
        }
        assert_eq!(
            RevocationReasonCode::from_name("key-compromise").expect("a name"),
            RevocationReasonCode::KeyCompromise
        );
        let e = RevocationReasonCode::from_name("lost").expect_err("no such reason");
        assert!(e.to_string().contains("key-compromise"), "{e}");
    }
}
