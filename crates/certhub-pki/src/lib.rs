//! Pure X.509 for certhub.
//!
//! This crate reads certificates, CSRs and PEM/DER files, computes thumbprints in the Azure
//! format, decides whether a presented device chain is trusted under certhub's device policy
//! (with a stable, named reason when it is not), and issues certificates for the `certhub pki`
//! toolkit. It does no I/O, never reads the clock (every decision takes `now`) and knows nothing
//! of devices beyond a certificate chain and an expected id: the hub and the CLI both call it,
//! so `certhub pki verify` runs the very code the hub runs at CONNECT.
#![forbid(unsafe_code)]

mod algorithm;
mod chain;
mod crl;
mod describe;
mod distribution;
mod error;
mod explain;
mod input;
mod issue;
mod name;
mod ocsp;
mod revocation;
mod thumbprint;
mod upload;

pub use algorithm::KeyAlgorithm;
pub use chain::{
    Reason, Rejection, TrustStore, Usage, VerifiedChain, verify_chain, verify_device_chain,
};
pub use crl::{
    CrlFacts, MAX_CRL_BYTES, MAX_CRL_DAYS, RevocationReasonCode, RevokedEntry, read_crl,
};
pub use describe::{
    CertificateInfo, CsrInfo, KeyInfo, describe_certificate, describe_csr, subject_public_key_info,
};
pub use distribution::{CrlPoint, crl_urls};
pub use error::PkiError;
pub use input::{Document, read_certificates, read_csr, read_document};
pub use issue::{
    CaFiles, IssuedCertificate, Issuer, NewKey, Profile, SignOptions, create_request, create_root,
    server_certificate, sign_request, verification_certificate,
};
pub use name::{certificate_common_name, parse_subject};
pub use ocsp::{OcspAnswer, OcspQuery, OcspStatus, ocsp_url};
pub use revocation::{
    Block, ChainCert, CheckedCrl, KeyId, Revocations, Revoked, hex, key_id, read_crl_for, unhex,
};

/// PEM-encodes a certificate (LF line endings).
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    issue::to_pem(der)
}
pub use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, UnixTime};
pub use thumbprint::{Thumbprints, normalize_thumbprint};
pub use upload::{CaFacts, ca_facts, check_ca_upload, read_upload, verify_possession};
