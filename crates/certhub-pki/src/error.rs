use std::fmt;

/// Everything that can go wrong while reading, checking or issuing certificates.
///
/// Messages say what is wrong and, where it helps, what to do; the CLI prefixes the file name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("the file is empty")]
    Empty,
    #[error("malformed PEM: {detail}")]
    Pem { detail: String },
    #[error(
        "contains a private key ({label}) where a certificate was expected; a private key never leaves its owner, pass the certificate instead"
    )]
    PrivateKeyFound { label: String },
    #[error("expected {expected} but found {found}")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
    #[error("{what} is malformed: {detail}")]
    Malformed { what: String, detail: String },
    #[error(
        "the CSR's signature does not verify: it was altered or not signed by the key it carries"
    )]
    CsrBadSignature,
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid subject {subject:?}: {detail}")]
    InvalidSubject { subject: String, detail: String },
    #[error("{0}")]
    Policy(String),
    #[error("the private key does not belong to the certificate {subject:?}")]
    KeyMismatch { subject: String },
    #[error("reading the private key: {detail}")]
    Key { detail: String },
    #[error("issuing the certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

impl PkiError {
    pub(crate) fn malformed(what: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Malformed {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}
