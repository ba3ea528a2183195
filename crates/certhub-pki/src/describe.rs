//! Human and JSON descriptions of certificates and CSRs (`certhub pki inspect`), and the small
//! facts other modules need: key type and size, signature algorithm names, weak-crypto checks.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::objects::{oid_registry, oid2sn};
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::thumbprint::upper_hex;
use crate::{PkiError, Thumbprints};

/// A public key's type and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// `RSA`, `EC`, `Ed25519`, `Ed448`, `DSA`, or the OID of anything else.
    pub algorithm: String,
    /// Size in bits (the modulus for RSA, the field for EC).
    pub bits: u32,
    /// Named curve for EC keys (`P-256`, `P-384`, `P-521`, or the OID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
}

impl fmt::Display for KeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.curve, self.algorithm.as_str()) {
            (Some(c), _) => write!(f, "EC {c}"),
            (None, "Ed25519" | "Ed448") => f.write_str(&self.algorithm),
            _ => write!(f, "{} {}", self.algorithm, self.bits),
        }
    }
}

impl KeyInfo {
    /// Why this key cannot take part in device authentication, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        match (self.algorithm.as_str(), self.curve.as_deref()) {
            ("RSA", _) if self.bits < 2048 => Some(format!(
                "RSA {} bit key: RSA keys under 2048 bits are refused",
                self.bits
            )),
            ("RSA", _) if !self.bits.is_multiple_of(8) => Some(format!(
                "RSA {} bit key: the modulus size is not a multiple of 8",
                self.bits
            )),
            ("RSA", _) if self.bits > 8192 => {
                Some(format!("RSA {} bit key: larger than 8192 bits", self.bits))
            }
            ("RSA" | "Ed25519", _) | ("EC", Some("P-256" | "P-384" | "P-521")) => None,
            ("EC", curve) => Some(format!(
                "EC key on curve {}: only P-256, P-384 and P-521 are supported",
                curve.unwrap_or("?")
            )),
            (other, _) => Some(format!("{other} keys are not supported")),
        }
    }
}

pub(crate) fn key_info(spki: &SubjectPublicKeyInfo<'_>) -> KeyInfo {
    let oid = spki.algorithm.algorithm.to_id_string();
    let (algorithm, bits, curve) = match oid.as_str() {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => {
            let bits = match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => integer_bits(rsa.modulus),
                _ => 0,
            };
            ("RSA".to_string(), bits, None)
        }
        "1.2.840.10045.2.1" => {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let (name, bits) = match curve_oid.as_str() {
                "1.2.840.10045.3.1.7" => ("P-256".to_string(), 256),
                "1.3.132.0.34" => ("P-384".to_string(), 384),
                "1.3.132.0.35" => ("P-521".to_string(), 521),
                "1.2.840.10045.3.1.1" => ("P-192".to_string(), 192),
                "1.3.132.0.33" => ("P-224".to_string(), 224),
                other => (other.to_string(), 0),
            };
            ("EC".to_string(), bits, Some(name))
        }
        "1.3.101.112" => ("Ed25519".to_string(), 256, None),
        "1.3.101.113" => ("Ed448".to_string(), 456, None),
        "1.2.840.10040.4.1" => {
            let bits = match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::DSA(y)) => integer_bits(y),
                _ => 0,
            };
            ("DSA".to_string(), bits, None)
        }
        other => (other.to_string(), 0, None),
    };
    KeyInfo {
        algorithm,
        bits,
        curve,
    }
}

/// Exact bit length of a big-endian unsigned integer (leading zero bytes and bits ignored).
fn integer_bits(bytes: &[u8]) -> u32 {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => return 0,
    };
    let top = u32::from(trimmed[0]);
    (trimmed.len() as u32 - 1) * 8 + (32 - top.leading_zeros())
}

pub(crate) fn signature_algorithm_name(alg: &AlgorithmIdentifier<'_>) -> String {
    let oid = &alg.algorithm;
    match oid.to_id_string().as_str() {
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
        "1.3.101.112" => "Ed25519".into(),
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1".into(),
        _ => name_of(oid),
    }
}

/// Why a signature algorithm is refused outright, if it is (SHA-1 and MD5 signatures).
pub(crate) fn weak_signature(alg: &AlgorithmIdentifier<'_>) -> Option<String> {
    let weak = matches!(
        alg.algorithm.to_id_string().as_str(),
        "1.2.840.113549.1.1.5"   // sha1WithRSAEncryption
            | "1.2.840.113549.1.1.4" // md5WithRSAEncryption
            | "1.2.840.10045.4.1"    // ecdsa-with-SHA1
            | "1.2.840.10040.4.3"    // dsa-with-sha1
            | "1.3.14.3.2.29" // sha1WithRSA (OIW)
    );
    weak.then(|| {
        format!(
            "signed with {}: SHA-1 and MD5 signatures are refused; re-issue it with SHA-256 or better",
            signature_algorithm_name(alg)
        )
    })
}

fn name_of(oid: &Oid<'_>) -> String {
    oid2sn(oid, oid_registry())
        .map(str::to_string)
        .unwrap_or_else(|_| oid.to_id_string())
}

/// Basic constraints as found in a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BasicConstraintsInfo {
    pub ca: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_len: Option<u32>,
    pub critical: bool,
}

/// Everything `certhub pki inspect` shows about one certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertificateInfo {
    pub version: u32,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub self_signed: bool,
    pub signature_algorithm: String,
    pub key: KeyInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_constraints: Option<BasicConstraintsInfo>,
    pub key_usage: Vec<String>,
    pub extended_key_usage: Vec<String>,
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_key_id: Option<String>,
    pub thumbprints: Thumbprints,
}

/// Everything `certhub pki inspect` shows about a CSR.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CsrInfo {
    pub subject: String,
    pub signature_algorithm: String,
    pub signature_valid: bool,
    pub key: KeyInfo,
    /// The extensions the requester asked for; the issuer decides which, if any, it grants.
    pub requested_extensions: Vec<String>,
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::malformed("the certificate", e))
}

pub(crate) fn rfc3339(t: &x509_parser::time::ASN1Time) -> String {
    t.to_datetime()
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Describes one DER certificate.
pub fn describe_certificate(der: &[u8]) -> Result<CertificateInfo, PkiError> {
    let cert = parse(der)?;
    let mut info = CertificateInfo {
        version: cert.version().0 + 1,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: upper_hex(cert.raw_serial()),
        not_before: rfc3339(&cert.validity().not_before),
        not_after: rfc3339(&cert.validity().not_after),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw()
            && cert.verify_signature(None).is_ok(),
        signature_algorithm: signature_algorithm_name(&cert.signature_algorithm),
        key: key_info(cert.public_key()),
        basic_constraints: None,
        key_usage: Vec::new(),
        extended_key_usage: Vec::new(),
        subject_alt_names: Vec::new(),
        subject_key_id: None,
        authority_key_id: None,
        thumbprints: Thumbprints::of(der),
    };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                info.basic_constraints = Some(BasicConstraintsInfo {
                    ca: bc.ca,
                    path_len: bc.path_len_constraint,
                    critical: ext.critical,
                });
            }
            ParsedExtension::KeyUsage(ku) => info.key_usage = key_usage_names(ku),
            ParsedExtension::ExtendedKeyUsage(eku) => info.extended_key_usage = eku_names(eku),
            ParsedExtension::SubjectAlternativeName(san) => {
                info.subject_alt_names = san.general_names.iter().map(general_name).collect();
            }
            ParsedExtension::SubjectKeyIdentifier(k) => info.subject_key_id = Some(upper_hex(k.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                info.authority_key_id = a.key_identifier.as_ref().map(|k| upper_hex(k.0));
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Describes a DER CSR, including whether its self-signature verifies.
pub fn describe_csr(der: &[u8]) -> Result<CsrInfo, PkiError> {
    let (_, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| PkiError::malformed("the CSR", e))?;
    let info = &csr.certification_request_info;
    let requested = csr
        .requested_extensions()
        .map(|exts| exts.map(describe_requested).collect())
        .unwrap_or_default();
    Ok(CsrInfo {
        subject: info.subject.to_string(),
        signature_algorithm: signature_algorithm_name(&csr.signature_algorithm),
        signature_valid: csr.verify_signature().is_ok(),
        key: key_info(&info.subject_pki),
        requested_extensions: requested,
    })
}

fn describe_requested(ext: &ParsedExtension<'_>) -> String {
    match ext {
        ParsedExtension::BasicConstraints(bc) => match (bc.ca, bc.path_len_constraint) {
            (true, Some(n)) => format!("basicConstraints: CA:TRUE, pathlen:{n}"),
            (true, None) => "basicConstraints: CA:TRUE".into(),
            (false, _) => "basicConstraints: CA:FALSE".into(),
        },
        ParsedExtension::KeyUsage(ku) => format!("keyUsage: {}", key_usage_names(ku).join(", ")),
        ParsedExtension::ExtendedKeyUsage(eku) => {
            format!("extendedKeyUsage: {}", eku_names(eku).join(", "))
        }
        ParsedExtension::SubjectAlternativeName(san) => {
            let names: Vec<String> = san.general_names.iter().map(general_name).collect();
            format!("subjectAltName: {}", names.join(", "))
        }
        ParsedExtension::SubjectKeyIdentifier(_) => "subjectKeyIdentifier".into(),
        ParsedExtension::UnsupportedExtension { oid } => format!("unknown extension {oid}"),
        other => format!("{other:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("extension")
            .to_string(),
    }
}

/// The CSR's extensions, described, for telling the user what the issuer did not grant.
pub(crate) fn requested_extensions(csr: &X509CertificationRequest<'_>) -> Vec<String> {
    csr.requested_extensions()
        .map(|exts| exts.map(describe_requested).collect())
        .unwrap_or_default()
}

fn key_usage_names(ku: &x509_parser::extensions::KeyUsage) -> Vec<String> {
    const NAMES: [&str; 9] = [
        "digitalSignature",
        "nonRepudiation",
        "keyEncipherment",
        "dataEncipherment",
        "keyAgreement",
        "keyCertSign",
        "cRLSign",
        "encipherOnly",
        "decipherOnly",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| (ku.flags >> i) & 1 != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn eku_names(eku: &x509_parser::extensions::ExtendedKeyUsage<'_>) -> Vec<String> {
    let mut v = Vec::new();
    for (on, name) in [
        (eku.any, "anyExtendedKeyUsage"),
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ] {
        if on {
            v.push(name.to_string());
        }
    }
    v.extend(eku.other.iter().map(|o| o.to_id_string()));
    v
}

fn general_name(n: &GeneralName<'_>) -> String {
    match n {
        GeneralName::DNSName(s) => format!("DNS:{s}"),
        GeneralName::RFC822Name(s) => format!("email:{s}"),
        GeneralName::URI(s) => format!("URI:{s}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                format!("IP:{}", std::net::Ipv6Addr::from(a))
            }
            _ => format!("IP:{}", upper_hex(b)),
        },
        GeneralName::DirectoryName(dn) => format!("DirName:{dn}"),
        other => other.to_string(),
    }
}

/// The SubjectPublicKeyInfo (DER) of a certificate, v1 certificates included (webpki refuses
/// to parse those; the TLS layer needs their key to check CertificateVerify).
pub fn subject_public_key_info(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    Ok(parse(der)?.public_key().raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_bits_is_exact() {
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01, 0xff]), 9);
        assert_eq!(integer_bits(&[0, 0]), 0);
    }
}
