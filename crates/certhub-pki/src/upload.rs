//! CA registration: reading an uploaded CA certificate in every form tools send it, and the
//! proof-of-possession check of a verification certificate (azure-protocol 5).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls_pki_types::CertificateDer;

use crate::describe::{parse, rfc3339};
use crate::name::common_name;
use crate::{PkiError, Thumbprints, read_certificates};

/// Reads an upload: raw PEM, base64 of DER (`.cer`), or base64 of PEM (what `az` sends). A
/// private key anywhere in it, encrypted or not, is refused.
pub fn read_upload(text: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(PkiError::Empty);
    }
    if trimmed.contains("-----BEGIN") {
        return read_certificates(trimmed.as_bytes());
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = B64
        .decode(compact.as_bytes())
        .map_err(|_| PkiError::WrongKind {
            expected: "a PEM certificate, or base64 of a DER or PEM certificate",
            found: "neither PEM nor base64".into(),
        })?;
    read_certificates(&bytes)
}

/// Why a CA certificate cannot be registered.
pub fn check_ca_upload(
    certs: &[CertificateDer<'static>],
    now_secs: i64,
) -> Result<CertificateDer<'static>, PkiError> {
    let [cert] = certs else {
        return Err(PkiError::Policy(format!(
            "the upload holds {} certificates; register one CA certificate at a time",
            certs.len()
        )));
    };
    let parsed = parse(cert)?;
    let subject = parsed.subject().to_string();
    if !parsed.is_ca() {
        return Err(PkiError::Policy(format!(
            "{subject:?} is not a CA certificate (basicConstraints CA:TRUE is missing): register the root or intermediate CA that signs your devices, not a device certificate"
        )));
    }
    let validity = parsed.validity();
    if now_secs > validity.not_after.timestamp() {
        return Err(PkiError::Policy(format!(
            "{subject:?} expired at {}; renew the CA first",
            rfc3339(&validity.not_after)
        )));
    }
    // The same checks a trust anchor gets: a CA the device policy would refuse must not
    // register.
    crate::TrustStore::new([cert.clone()])?;
    Ok(cert.clone())
}

/// Checks a verification certificate against the CA being registered and the code the hub
/// issued. Each failure names the check; a wrong issuer names the expected and the found one.
pub fn verify_possession(
    ca: &CertificateDer<'_>,
    verification: &CertificateDer<'_>,
    code: &str,
    now_secs: i64,
) -> Result<(), PkiError> {
    let ca_cert = parse(ca)?;
    let pop = parse(verification)?;
    let fail = |m: String| PkiError::Policy(format!("proof of possession failed: {m}"));
    let cn = common_name(pop.subject()).unwrap_or_default();
    if cn != code {
        return Err(fail(format!(
            "the verification certificate's CN is {cn:?} but the current verification code is {code:?}; make a certificate with CN = the code"
        )));
    }
    if pop.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(fail(format!(
            "the verification certificate was issued by {:?}, expected {:?}: sign it with this CA's key",
            pop.issuer().to_string(),
            ca_cert.subject().to_string()
        )));
    }
    if pop.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Err(fail(format!(
            "the verification certificate names {:?} as issuer but its signature does not verify with that CA's public key: it was signed by another key",
            ca_cert.subject().to_string()
        )));
    }
    let v = pop.validity();
    if now_secs < v.not_before.timestamp() || now_secs > v.not_after.timestamp() {
        return Err(fail(format!(
            "the verification certificate is valid from {} to {}, not now",
            rfc3339(&v.not_before),
            rfc3339(&v.not_after)
        )));
    }
    if pop.is_ca() {
        return Err(fail(
            "the verification certificate is a CA certificate; it must be a leaf (CA:FALSE)".into(),
        ));
    }
    Ok(())
}

/// What the hub shows about a registered CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFacts {
    pub subject: String,
    pub issuer: String,
    pub thumbprints: Thumbprints,
    pub not_before_secs: i64,
    pub not_after_secs: i64,
}

pub fn ca_facts(cert: &CertificateDer<'_>) -> Result<CaFacts, PkiError> {
    let c = parse(cert)?;
    Ok(CaFacts {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        thumbprints: Thumbprints::of(cert),
        not_before_secs: c.validity().not_before.timestamp(),
        not_after_secs: c.validity().not_after.timestamp(),
    })
}
