//! OCSP (RFC 6960) for device certificates: the request for a leaf under its issuer, and the
//! check of an answer (a responder's basic response, signed by the issuer or by a responder
//! the issuer delegated with id-kp-OCSPSigning, for exactly that certificate, current). The
//! formats are RustCrypto's `x509-ocsp`; signatures are checked with rustls-webpki's
//! algorithms. No I/O: the hub sends the request and hands the answer back.

use der::asn1::{Null, OctetString};
use der::{Any, Decode, Encode};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_cert::ext::pkix::name::GeneralName as CertGeneralName;
use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest, Version,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

use crate::crl::reason_of;
use crate::describe::parse;
use crate::{PkiError, RevocationReasonCode};

/// id-ad-ocsp.
const ID_AD_OCSP: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
/// id-pkix-ocsp-basic.
const ID_PKIX_OCSP_BASIC: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// SHA-1, the CertID hash every responder answers (RFC 6960 B.1 uses it; RFC 5019 requires it).
const SHA1: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// id-kp-OCSPSigning (1.3.6.1.5.5.7.3.9), DER contents.
const OCSP_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09];
/// The authorityInfoAccess extension's OID arcs.
const AIA: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 1, 1];
/// Clock skew allowed between the responder and the hub.
const SKEW_S: i64 = 300;

/// The `http://` OCSP responder URL of a certificate's authorityInfoAccess, if it has one.
pub fn ocsp_url<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a str> {
    cert.extensions().iter().find_map(|ext| {
        let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() else {
            return None;
        };
        aia.accessdescs.iter().find_map(|d| {
            if d.access_method.to_id_string() != "1.3.6.1.5.5.7.48.1" {
                return None;
            }
            match d.access_location {
                GeneralName::URI(u)
                    if u.get(..7)
                        .is_some_and(|s| s.eq_ignore_ascii_case("http://")) =>
                {
                    Some(u)
                }
                _ => None,
            }
        })
    })
}

/// The authorityInfoAccess extension naming `url` as the OCSP responder, for rcgen.
pub(crate) fn aia_extension(url: &str) -> Result<rcgen::CustomExtension, PkiError> {
    let location = der::asn1::Ia5String::new(url)
        .map_err(|e| PkiError::Policy(format!("--ocsp-url {url:?}: {e}")))?;
    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: ID_AD_OCSP,
        access_location: CertGeneralName::UniformResourceIdentifier(location),
    }]);
    let der = aia
        .to_der()
        .map_err(|e| PkiError::Policy(format!("--ocsp-url {url:?}: {e}")))?;
    Ok(rcgen::CustomExtension::from_oid_content(&AIA, der))
}

/// What a responder said of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked {
        /// Unix seconds.
        at: i64,
        reason: RevocationReasonCode,
    },
    /// The responder does not know the certificate.
    Unknown,
}

/// A checked answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcspAnswer {
    pub status: OcspStatus,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds; none when the responder always has newer information.
    pub next_update: Option<i64>,
}

/// The question for one certificate: where to ask and what to send, and what the answer must
/// match.
#[derive(Debug, Clone)]
pub struct OcspQuery {
    /// The responder, from the leaf's authorityInfoAccess.
    pub url: String,
    /// The DER OCSPRequest (no nonce: answers may be cached, RFC 5019).
    pub request: Vec<u8>,
    issuer: CertificateDer<'static>,
    cert_id: CertId,
}

fn malformed(what: &str, e: impl std::fmt::Display) -> PkiError {
    PkiError::Policy(format!("{what}: {e}"))
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .to_vec()
}

impl OcspQuery {
    /// The query for `leaf` issued by `issuer`; none when the leaf names no HTTP responder.
    pub fn new(
        leaf: &CertificateDer<'_>,
        issuer: &CertificateDer<'_>,
    ) -> Result<Option<Self>, PkiError> {
        let leaf_cert = parse(leaf)?;
        let Some(url) = ocsp_url(&leaf_cert) else {
            return Ok(None);
        };
        let issuer_cert = parse(issuer)?;
        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: SHA1,
                parameters: Some(Any::from(Null)),
            },
            issuer_name_hash: OctetString::new(sha1(issuer_cert.subject().as_raw()))
                .map_err(|e| malformed("the issuer's name", e))?,
            issuer_key_hash: OctetString::new(sha1(
                &issuer_cert.public_key().subject_public_key.data,
            ))
            .map_err(|e| malformed("the issuer's key", e))?,
            serial_number: SerialNumber::new(leaf_cert.raw_serial())
                .map_err(|e| malformed("the leaf's serial", e))?,
        };
        let request = OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                request_extensions: None,
            },
            optional_signature: None,
        }
        .to_der()
        .map_err(|e| malformed("the OCSP request", e))?;
        Ok(Some(Self {
            url: url.to_string(),
            request,
            issuer: issuer.clone().into_owned(),
            cert_id,
        }))
    }

    /// Checks an answer at `now` (unix seconds): a successful basic response, signed by the
    /// issuer or a responder it delegated, with a response for this certificate that is
    /// current. The error says what is wrong.
    pub fn read_response(&self, bytes: &[u8], now: i64) -> Result<OcspAnswer, PkiError> {
        let answer = OcspResponse::from_der(bytes)
            .map_err(|e| malformed("the OCSP answer is malformed", e))?;
        if answer.response_status != OcspResponseStatus::Successful {
            return Err(PkiError::Policy(format!(
                "the responder answered {:?} rather than a status",
                answer.response_status
            )));
        }
        let bytes = answer
            .response_bytes
            .ok_or_else(|| PkiError::Policy("the OCSP answer carries no response".into()))?;
        if bytes.response_type != ID_PKIX_OCSP_BASIC {
            return Err(PkiError::Policy(format!(
                "the OCSP answer is of type {}, not a basic response",
                bytes.response_type
            )));
        }
        let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
            .map_err(|e| malformed("the basic OCSP response is malformed", e))?;
        self.check_signature(&basic, now)?;
        let single = basic
            .tbs_response_data
            .responses
            .iter()
            .find(|r| r.cert_id == self.cert_id)
            .ok_or_else(|| {
                PkiError::Policy(
                    "the OCSP answer is for another certificate (no response for this issuer and serial)"
                        .into(),
                )
            })?;
        let secs = |t: &x509_ocsp::OcspGeneralizedTime| {
            i64::try_from(t.0.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
        };
        let this_update = secs(&single.this_update);
        let next_update = single.next_update.as_ref().map(secs);
        if this_update > now + SKEW_S {
            return Err(PkiError::Policy(format!(
                "the OCSP answer's thisUpdate is {} s in the future",
                this_update - now
            )));
        }
        if let Some(next) = next_update
            && next < now - SKEW_S
        {
            return Err(PkiError::Policy(format!(
                "the OCSP answer is stale: its nextUpdate passed {} s ago",
                now - next
            )));
        }
        let status = match &single.cert_status {
            CertStatus::Good(_) => OcspStatus::Good,
            CertStatus::Unknown(_) => OcspStatus::Unknown,
            CertStatus::Revoked(info) => OcspStatus::Revoked {
                at: secs(&info.revocation_time),
                reason: info
                    .revocation_reason
                    .map_or(RevocationReasonCode::Unspecified, |r| {
                        reason_of(u8::try_from(r as u32).unwrap_or(0))
                    }),
            },
        };
        Ok(OcspAnswer {
            status,
            this_update,
            next_update,
        })
    }

    /// The answer is signed by the issuer, or by a certificate in it that the issuer signed
    /// for OCSP signing (id-kp-OCSPSigning), valid now.
    fn check_signature(&self, basic: &BasicOcspResponse, now: i64) -> Result<(), PkiError> {
        let tbs = basic
            .tbs_response_data
            .to_der()
            .map_err(|e| malformed("the OCSP response data", e))?;
        let signature = basic
            .signature
            .as_bytes()
            .ok_or_else(|| PkiError::Policy("the OCSP signature is not whole bytes".into()))?;
        let mut alg_id = basic
            .signature_algorithm
            .oid
            .to_der()
            .map_err(|e| malformed("the OCSP signature algorithm", e))?;
        if let Some(p) = &basic.signature_algorithm.parameters {
            alg_id.extend(p.to_der().map_err(|e| malformed("its parameters", e))?);
        }
        let algs: Vec<&dyn SignatureVerificationAlgorithm> = webpki::ALL_VERIFICATION_ALGS
            .iter()
            .copied()
            .filter(|a| a.signature_alg_id().as_ref() == alg_id.as_slice())
            .collect();
        if algs.is_empty() {
            return Err(PkiError::Policy(
                "the OCSP answer is signed with an algorithm certhub does not accept".into(),
            ));
        }
        let signed_by = |der: &CertificateDer<'_>| -> bool {
            EndEntityCert::try_from(der).is_ok_and(|ee| {
                algs.iter()
                    .any(|a| ee.verify_signature(*a, &tbs, signature).is_ok())
            })
        };
        if signed_by(&self.issuer) {
            return Ok(());
        }
        let anchor = webpki::anchor_from_trusted_cert(&self.issuer)
            .map_err(|e| malformed("the issuer as a signer", e))?;
        let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).unwrap_or(0),
        ));
        for cert in basic.certs.iter().flatten() {
            let Ok(der) = cert.to_der() else { continue };
            let der = CertificateDer::from(der);
            let delegated = EndEntityCert::try_from(&der).is_ok_and(|ee| {
                ee.verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    std::slice::from_ref(&anchor),
                    &[],
                    when,
                    KeyUsage::required(OCSP_SIGNING),
                    None,
                    None,
                )
                .is_ok()
            });
            if delegated && signed_by(&der) {
                return Ok(());
            }
        }
        Err(PkiError::Policy(
            "the OCSP answer is not signed by the certificate's issuer nor by a responder it delegated (id-kp-OCSPSigning)".into(),
        ))
    }
}
