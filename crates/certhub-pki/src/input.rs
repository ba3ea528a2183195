//! Reading what people hand us: PEM (one or many blocks) or raw DER, with a clear word when the
//! file holds something else than what was asked for (a key, a CSR, garbage, a truncated block).

use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::PkiError;

/// What a file holds.
#[derive(Debug)]
pub enum Document {
    /// One or more certificates, in file order (a chain file is leaf first).
    Certificates(Vec<CertificateDer<'static>>),
    /// A certificate signing request.
    Csr(CertificateSigningRequestDer<'static>),
}

const CERT_LABELS: &[&str] = &["CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE"];
const CSR_LABELS: &[&str] = &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// Reads a certificate file or a CSR file, PEM or DER.
pub fn read_document(bytes: &[u8]) -> Result<Document, PkiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(PkiError::Empty);
    }
    if looks_like_pem(bytes) {
        return read_pem(bytes);
    }
    read_der(bytes)
}

/// Reads one or more certificates (PEM blocks or a single DER certificate).
pub fn read_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    match read_document(bytes)? {
        Document::Certificates(c) => Ok(c),
        Document::Csr(_) => Err(PkiError::WrongKind {
            expected: "a certificate",
            found: "a certificate signing request (CSR); sign it first with `certhub pki sign`"
                .into(),
        }),
    }
}

/// Reads one CSR (PEM or DER). Its signature is checked when it is described or signed.
pub fn read_csr(bytes: &[u8]) -> Result<CertificateSigningRequestDer<'static>, PkiError> {
    match read_document(bytes)? {
        Document::Csr(c) => Ok(c),
        Document::Certificates(_) => Err(PkiError::WrongKind {
            expected: "a certificate signing request (CSR)",
            found: "a certificate".into(),
        }),
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn read_pem(bytes: &[u8]) -> Result<Document, PkiError> {
    let blocks = pem::parse_many(bytes).map_err(|e| PkiError::Pem {
        detail: pem_error(&e),
    })?;
    // A file cut in the middle of a block leaves a BEGIN line without its END line; the pem
    // crate then simply returns fewer blocks, so count the markers ourselves.
    let begins = count(bytes, b"-----BEGIN ");
    if begins != blocks.len() {
        return Err(PkiError::Pem {
            detail: format!(
                "{begins} BEGIN line(s) but {} complete block(s): the file is truncated or a block is damaged",
                blocks.len()
            ),
        });
    }
    if let Some(key) = blocks.iter().find(|b| b.tag().contains("PRIVATE KEY")) {
        return Err(PkiError::PrivateKeyFound {
            label: key.tag().to_string(),
        });
    }
    let mut certs = Vec::new();
    let mut csrs = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let tag = block.tag();
        if CERT_LABELS.contains(&tag) {
            check_certificate(block.contents(), i + 1)?;
            certs.push(CertificateDer::from(block.contents().to_vec()));
        } else if CSR_LABELS.contains(&tag) {
            check_csr(block.contents())?;
            csrs.push(CertificateSigningRequestDer::from(
                block.contents().to_vec(),
            ));
        }
    }
    match (certs.is_empty(), csrs.len()) {
        (false, 0) => Ok(Document::Certificates(certs)),
        (true, 1) => Ok(Document::Csr(csrs.remove(0))),
        (true, 0) => {
            let labels: Vec<&str> = blocks.iter().map(|b| b.tag()).collect();
            Err(PkiError::WrongKind {
                expected: "a certificate or a CSR",
                found: format!("PEM block(s) labelled {}", labels.join(", ")),
            })
        }
        _ => Err(PkiError::WrongKind {
            expected: "certificates or a single CSR",
            found: "a mix of certificates and CSRs, or several CSRs".into(),
        }),
    }
}

fn read_der(bytes: &[u8]) -> Result<Document, PkiError> {
    if let Ok((rest, _)) = x509_parser::parse_x509_certificate(bytes)
        && rest.is_empty()
    {
        return Ok(Document::Certificates(vec![CertificateDer::from(
            bytes.to_vec(),
        )]));
    }
    if let Ok((rest, _)) = X509CertificationRequest::from_der(bytes)
        && rest.is_empty()
    {
        return Ok(Document::Csr(CertificateSigningRequestDer::from(
            bytes.to_vec(),
        )));
    }
    if rustls_pki_types::PrivateKeyDer::try_from(bytes).is_ok() {
        return Err(PkiError::PrivateKeyFound {
            label: "DER private key".into(),
        });
    }
    if bytes.first() == Some(&0x30) {
        // DER SEQUENCE: a certificate that does not parse.
        if let Err(e) = x509_parser::parse_x509_certificate(bytes) {
            return Err(PkiError::malformed("the DER certificate", e));
        }
        return Err(PkiError::malformed(
            "the DER data",
            "bytes follow the certificate",
        ));
    }
    Err(PkiError::WrongKind {
        expected: "a PEM or DER certificate or CSR",
        found: "neither PEM (no -----BEGIN line) nor DER".into(),
    })
}

fn check_certificate(der: &[u8], index: usize) -> Result<(), PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err(PkiError::malformed(
            format!("certificate {index}"),
            "bytes follow the certificate",
        )),
        Err(e) => Err(PkiError::malformed(format!("certificate {index}"), e)),
    }
}

fn check_csr(der: &[u8]) -> Result<(), PkiError> {
    match X509CertificationRequest::from_der(der) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err(PkiError::malformed("the CSR", "bytes follow the request")),
        Err(e) => Err(PkiError::malformed("the CSR", e)),
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn pem_error(e: &pem::PemError) -> String {
    match e {
        pem::PemError::MismatchedTags(a, b) => {
            format!("BEGIN {a} is closed by END {b}: the file is damaged")
        }
        pem::PemError::MissingEndTag | pem::PemError::MalformedFraming => {
            "a block has no END line: the file is truncated".into()
        }
        pem::PemError::InvalidData(_) | pem::PemError::InvalidHeader(_) => {
            "a block's base64 body is damaged".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_keys_and_garbage() {
        let key =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            read_document(key.as_bytes()),
            Err(PkiError::PrivateKeyFound { .. })
        ));
        assert!(matches!(read_document(b"  \n"), Err(PkiError::Empty)));
        assert!(matches!(
            read_document(b"hello"),
            Err(PkiError::WrongKind { .. })
        ));
        let truncated = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(
            read_document(truncated.as_bytes()),
            Err(PkiError::Pem { .. })
        ));
    }
}
