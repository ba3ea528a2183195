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

    /// The reason with RFC 5280 code `code` (5.3.1); an unknown code is unspecified.
    pub fn from_code(code: u8) -> Self {
        reason_of(code)
    }

    /// Its RFC 5280 code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::CertificateHold => 6,
            Self::PrivilegeWithdrawn => 9,
        }
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

/// A CRL larger than this is refused (a CRL of 100 000 entries is about 4 MB).
pub const MAX_CRL_BYTES: usize = 64 << 20;

/// A CRL read and checked against the CA it says it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFacts {
    /// The issuer's distinguished name, as text.
    pub issuer: String,
    /// The CRL number, in decimal (every CRL the hub takes has one).
    pub number: String,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    pub revoked: Vec<RevokedEntry>,
}

impl CrlFacts {
    /// Orders two CRL numbers (decimal, at most 20 octets by RFC 5280): the newer CRL of an
    /// issuer has the greater one.
    pub fn compare_numbers(a: &str, b: &str) -> std::cmp::Ordering {
        let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

pub(crate) fn reason_of(code: u8) -> RevocationReasonCode {
    match code {
        1 => RevocationReasonCode::KeyCompromise,
        2 => RevocationReasonCode::CaCompromise,
        3 => RevocationReasonCode::AffiliationChanged,
        4 => RevocationReasonCode::Superseded,
        5 => RevocationReasonCode::CessationOfOperation,
        6 => RevocationReasonCode::CertificateHold,
        9 => RevocationReasonCode::PrivilegeWithdrawn,
        _ => RevocationReasonCode::Unspecified,
    }
}

/// The DER of a CRL given as PEM (`X509 CRL`) or DER.
pub(crate) fn crl_der(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, PkiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PkiError::Empty);
    }
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let pem = x509_parser::pem::parse_x509_pem(bytes)
        .map_err(|e| PkiError::Pem {
            detail: e.to_string(),
        })?
        .1;
    if pem.label != "X509 CRL" {
        return Err(PkiError::WrongKind {
            expected: "a CRL (PEM label X509 CRL)",
            found: format!("PEM label {}", pem.label),
        });
    }
    Ok(std::borrow::Cow::Owned(pem.contents))
}

/// Reads a CRL (PEM `X509 CRL` or DER) and checks it against `ca`, the CA it must come from:
/// issued under the CA's name, signed with its key, by a CA allowed to sign CRLs (cRLSign when
/// it has a keyUsage), at most [`MAX_CRL_BYTES`]. A complete CRL only: a delta CRL, a
/// partitioned one (issuingDistributionPoint) or an indirect one (entries naming another
/// issuer) is refused, as is any critical extension this does not understand. The dates are
/// returned, not judged: whether a CRL past its nextUpdate still counts is the hub's policy.
pub fn read_crl(bytes: &[u8], ca: &CertificateDer<'_>) -> Result<CrlFacts, PkiError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    if bytes.len() > MAX_CRL_BYTES {
        return Err(PkiError::Policy(format!(
            "the CRL is {} bytes, more than the {} allowed",
            bytes.len(),
            MAX_CRL_BYTES
        )));
    }
    let der = crl_der(bytes)?;
    let der = der.as_ref();
    let (_, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| PkiError::malformed("the CRL", e))?;
    let me = parse(ca)?;
    let issuer = crl.issuer().to_string();
    if crl.issuer().as_raw() != me.subject().as_raw() {
        return Err(PkiError::Policy(format!(
            "the CRL was issued by {issuer:?}, not by the CA {:?}: give each CA its own CRL",
            me.subject().to_string()
        )));
    }
    if let Ok(Some(ku)) = me.key_usage()
        && !ku.value.crl_sign()
    {
        return Err(PkiError::Policy(format!(
            "the CA {issuer:?} has a keyUsage without cRLSign: it may not sign CRLs"
        )));
    }
    crl.verify_signature(me.public_key()).map_err(|_| {
        PkiError::Policy(format!(
            "the CRL's signature does not verify with the key of the CA {issuer:?}: it was altered, or signed by another key under the same name"
        ))
    })?;
    if crl.crl_number().is_none() {
        return Err(PkiError::Policy(
            "the CRL has no CRL number (RFC 5280 5.2.3: a CA must number its CRLs, so a newer one can be told from an older one); with openssl ca, name a crlnumber file in the CA's section".into(),
        ));
    }
    for ext in crl.extensions() {
        let oid = ext.oid.to_id_string();
        match oid.as_str() {
            "2.5.29.20" if ext.critical => {
                return Err(PkiError::Policy(
                    "the CRL's number extension is marked critical; RFC 5280 5.2.3 requires it non-critical".into(),
                ));
            }
            "2.5.29.27" => {
                return Err(PkiError::Unsupported(
                    "a delta CRL: give the complete CRL".into(),
                ));
            }
            "2.5.29.28" => {
                return Err(PkiError::Unsupported(
                    "a partitioned CRL (issuingDistributionPoint): give a complete CRL of every certificate the CA issued".into(),
                ));
            }
            _ if ext.critical => {
                return Err(PkiError::Unsupported(format!(
                    "the CRL has a critical extension {oid} that certhub does not understand"
                )));
            }
            _ => {}
        }
    }
    let mut revoked = Vec::new();
    for entry in crl.iter_revoked_certificates() {
        if let Some(ext) = entry.extensions().iter().find(|e| e.critical) {
            return Err(PkiError::Unsupported(format!(
                "the entry for serial {} has a critical extension {} (an indirect CRL?): give a CRL of the CA's own certificates",
                entry.raw_serial_as_string(),
                ext.oid.to_id_string()
            )));
        }
        revoked.push(RevokedEntry {
            serial: entry.raw_serial().to_vec(),
            revoked_at: entry.revocation_date.to_datetime(),
            reason: entry
                .reason_code()
                .map_or(RevocationReasonCode::Unspecified, |(_, c)| reason_of(c.0)),
        });
    }
    Ok(CrlFacts {
        issuer,
        number: crl
            .crl_number()
            .map(ToString::to_string)
            .unwrap_or_default(),
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        revoked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CaFiles, KeyAlgorithm, Profile, SignOptions, create_request, create_root, sign_request,
    };
    use x509_parser::prelude::FromDer;

    /// A new root CA named `cn`: as an issuer, and its certificate.
    fn root(cn: &str, now: OffsetDateTime) -> (Issuer, CertificateDer<'static>) {
        let r = create_root(
            &crate::parse_subject(&format!("CN={cn}")).unwrap(),
            KeyAlgorithm::EcdsaP256,
            3650,
            None,
            now,
        )
        .expect("root");
        let der = crate::read_certificates(r.pem.as_bytes()).expect("cert")[0].clone();
        (issuer_of(&r.pem, &r.key_pem), der)
    }

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
        let (a, _) = root("A", now);
        let (b, b_cert) = root("B", now);
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

    #[test]
    fn a_crl_is_read_back_only_from_its_own_ca() {
        let now = OffsetDateTime::now_utc();
        let (ca, ca_der) = root("Company-X", now);
        let entry = RevokedEntry {
            serial: vec![0x1f, 0x02],
            revoked_at: now.replace_nanosecond(0).unwrap(),
            reason: RevocationReasonCode::CaCompromise,
        };
        let pem = ca
            .crl(std::slice::from_ref(&entry), 3, now, 7)
            .expect("a CRL");
        let facts = read_crl(pem.as_bytes(), &ca_der).expect("its own CA's");
        assert_eq!(facts.revoked, vec![entry]);
        assert_eq!(facts.number, "3");
        assert!(facts.next_update.is_some_and(|n| n > facts.this_update));
        assert_eq!(facts.issuer, "CN=Company-X");
        // DER too.
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
        assert_eq!(read_crl(&block.contents, &ca_der).expect("DER"), facts);

        let (_, other_der) = root("Factory-Y", now);
        let e = read_crl(pem.as_bytes(), &other_der).expect_err("another CA");
        assert!(e.to_string().contains("not by the CA"), "{e}");
        let (_, twin_der) = root("Company-X", now);
        let e = read_crl(pem.as_bytes(), &twin_der).expect_err("same name, another key");
        assert!(e.to_string().contains("signature does not verify"), "{e}");
        let cut = &block.contents[..block.contents.len() / 2];
        assert!(matches!(
            read_crl(cut, &ca_der),
            Err(PkiError::Malformed { .. })
        ));
        assert!(read_crl(b"not a CRL at all", &ca_der).is_err());
        assert!(matches!(read_crl(b"  \n", &ca_der), Err(PkiError::Empty)));
        let cert_pem = pem_of_cert(&ca_der);
        let e = read_crl(cert_pem.as_bytes(), &ca_der).expect_err("a certificate");
        assert!(e.to_string().contains("X509 CRL"), "{e}");
        let huge = vec![0x30u8; MAX_CRL_BYTES + 1];
        let e = read_crl(&huge, &ca_der).expect_err("too big");
        assert!(e.to_string().contains("bytes, more than"), "{e}");
    }

    fn pem_of_cert(der: &CertificateDer<'_>) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
    }
}
