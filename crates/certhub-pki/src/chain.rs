//! The device chain policy: does a presented chain (leaf + intermediates, in any order) reach a
//! trusted CA at a given instant, and if not, why not, named.
//!
//! Path building and signature checks are rustls-webpki's. This layer adds what webpki leaves
//! out and what certhub promises on top: trust anchors must be CAs and within their validity
//! (webpki never looks at an anchor's dates), weak keys and SHA-1 are refused by name, and
//! every refusal carries a stable [`Reason`] that the hub logs, counts and shows in its audit
//! trail, the same one `certhub pki verify` prints.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::describe::{key_info, parse, rfc3339, weak_signature};
use crate::distribution::{CrlPoint, CrlPoints};
use crate::explain::{Organization, Presented, Rerun, explain, subject_key_id, unusable};
use crate::name::common_name;
use crate::revocation::{ChainCert, KeyId, Revocations, hex, key_id_of, serial_key};
use crate::{PkiError, Thumbprints};

/// Why a chain was refused. The names are stable: logs, metrics, the audit trail and the CLI
/// all use [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No certificate was presented.
    NoCertificate,
    /// A certificate could not be parsed, or breaks a basic encoding rule (its serial, an empty
    /// issuer, a dNSName that is no DNS name).
    MalformedCertificate,
    /// A certificate in the chain, or the trust anchor, is past its notAfter.
    CertificateExpired,
    /// A certificate in the chain, or the trust anchor, is before its notBefore.
    NotYetValid,
    /// A certificate's notBefore is after its notAfter: it is never valid.
    InvalidValidityPeriod,
    /// The chain ends at a certificate whose issuer is not trusted.
    UnknownIssuer,
    /// The leaf (or an intermediate) names an issuer that was not presented, and that issuer
    /// could be below a trusted CA; the device most likely sends its leaf without (all of) its
    /// intermediates.
    MissingIntermediate,
    /// The leaf's CN is not the expected device id.
    CnMismatch,
    /// The leaf is a CA certificate; a CA never authenticates a device.
    CaUsedAsLeaf,
    /// A certificate that issued another one of the chain is not a CA (basicConstraints CA:FALSE,
    /// or no basicConstraints at all); the detail names it.
    IssuerNotCa,
    /// A CA's pathLenConstraint is exceeded.
    PathLengthExceeded,
    /// More than 6 intermediates stand between the leaf and a trusted CA (the path builder's
    /// limit).
    ChainTooLong,
    /// Checking the presented certificates needs more work than the path builder allows (too
    /// many candidate paths, signature checks or name-constraint comparisons).
    ChainTooComplex,
    /// A name in the chain is outside a CA's nameConstraints (a directoryName or URI constraint,
    /// which cannot be evaluated, admits no name at all).
    NameConstraintsViolated,
    /// A CA's nameConstraints cannot be evaluated: a dNSName that is no DNS name, or an iPAddress
    /// whose mask is not a CIDR prefix.
    MalformedNameConstraints,
    /// A certificate has a critical extension the path builder does not process.
    UnsupportedCriticalExtension,
    /// A certificate is not X.509 version 3.
    UnsupportedCertificateVersion,
    /// A certificate carries the same extension twice.
    DuplicateExtension,
    /// A certificate's signature algorithm differs from the one named inside its signed part.
    SignatureAlgorithmMismatch,
    /// A key type or size, or a signature algorithm (SHA-1, MD5), that certhub refuses.
    UnsupportedAlgorithm,
    /// A certificate carries a public key that rustls-webpki distrusts (CAs removed from public
    /// trust).
    DistrustedKey,
    /// A signature in the chain does not verify.
    BadSignature,
    /// keyUsage or extendedKeyUsage forbid this use (e.g. a serverAuth-only leaf, an empty
    /// extendedKeyUsage).
    WrongKeyUsage,
    /// The chain verifies, but a certificate of it (the leaf or an intermediate) is on a
    /// certificate revocation list the hub holds; the detail names it, its serial, issuer,
    /// revocation time, reason code and the list.
    CertificateRevoked,
    /// The chain verifies, but the operator blocked a certificate of it (by thumbprint, or by
    /// issuer and serial); the detail names it and the block.
    CertificateBlocked,
    /// A CRL the hub holds for a certificate of the chain is past its nextUpdate and the grace
    /// period, and the CA's policy for stale CRLs is fail-closed; the detail names the CRL.
    CrlExpired,
    /// A validation failure certhub has no name for; the detail carries the validator's words.
    /// No certificate a device can present leads here today: it is left for what the validator
    /// reports only when asked for checks the device policy never asks for (revocation, server
    /// names), and for errors a future validator adds.
    ChainInvalid,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCertificate => "no-certificate",
            Self::MalformedCertificate => "malformed-certificate",
            Self::CertificateExpired => "certificate-expired",
            Self::NotYetValid => "not-yet-valid",
            Self::InvalidValidityPeriod => "invalid-validity-period",
            Self::UnknownIssuer => "unknown-issuer",
            Self::MissingIntermediate => "missing-intermediate",
            Self::CnMismatch => "cn-mismatch",
            Self::CaUsedAsLeaf => "ca-used-as-leaf",
            Self::IssuerNotCa => "issuer-not-ca",
            Self::PathLengthExceeded => "path-length-exceeded",
            Self::ChainTooLong => "chain-too-long",
            Self::ChainTooComplex => "chain-too-complex",
            Self::NameConstraintsViolated => "name-constraints-violated",
            Self::MalformedNameConstraints => "malformed-name-constraints",
            Self::UnsupportedCriticalExtension => "unsupported-critical-extension",
            Self::UnsupportedCertificateVersion => "unsupported-certificate-version",
            Self::DuplicateExtension => "duplicate-extension",
            Self::SignatureAlgorithmMismatch => "signature-algorithm-mismatch",
            Self::UnsupportedAlgorithm => "unsupported-algorithm",
            Self::DistrustedKey => "distrusted-key",
            Self::BadSignature => "bad-signature",
            Self::WrongKeyUsage => "wrong-key-usage",
            Self::CertificateRevoked => "certificate-revoked",
            Self::CertificateBlocked => "certificate-blocked",
            Self::CrlExpired => "crl-expired",
            Self::ChainInvalid => "chain-invalid",
        }
    }

    /// Every reason, in the order of the enum: for tests and documentation that list them.
    pub const ALL: [Reason; 27] = [
        Self::NoCertificate,
        Self::MalformedCertificate,
        Self::CertificateExpired,
        Self::NotYetValid,
        Self::InvalidValidityPeriod,
        Self::UnknownIssuer,
        Self::MissingIntermediate,
        Self::CnMismatch,
        Self::CaUsedAsLeaf,
        Self::IssuerNotCa,
        Self::PathLengthExceeded,
        Self::ChainTooLong,
        Self::ChainTooComplex,
        Self::NameConstraintsViolated,
        Self::MalformedNameConstraints,
        Self::UnsupportedCriticalExtension,
        Self::UnsupportedCertificateVersion,
        Self::DuplicateExtension,
        Self::SignatureAlgorithmMismatch,
        Self::UnsupportedAlgorithm,
        Self::DistrustedKey,
        Self::BadSignature,
        Self::WrongKeyUsage,
        Self::CertificateRevoked,
        Self::CertificateBlocked,
        Self::CrlExpired,
        Self::ChainInvalid,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused chain: the stable reason and a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What the certificate is used for. Devices authenticate as TLS clients; the server usage
/// exists so the conformance suite (x509-limbo, mostly server cases) can run through the same
/// code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    ClientAuth,
    ServerAuth,
}

/// A chain that reached a trust anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Subject of the trust anchor the chain reached.
    pub anchor_subject: String,
    /// Thumbprints of the trust anchor certificate (how the hub finds the registered CA).
    pub anchor_thumbprints: Thumbprints,
    /// Index of the anchor in the [`TrustStore`].
    pub anchor_index: usize,
    /// Subjects from the leaf up to and including the anchor.
    pub path: Vec<String>,
    /// The leaf and the intermediates of the path, leaf first (not the anchor): their serials,
    /// issuer keys and thumbprints, for revocation and the hub's bookkeeping.
    pub certs: Vec<ChainCert>,
}

#[derive(Debug, Clone)]
pub(crate) struct Anchor {
    pub(crate) subject: String,
    pub(crate) subject_raw: Vec<u8>,
    /// The subjectKeyIdentifier, when the certificate has one.
    pub(crate) key_id: Option<Vec<u8>>,
    /// The organization the subject names (O and DC attributes).
    pub(crate) organization: Organization,
    not_before: i64,
    not_after: i64,
    not_before_text: String,
    not_after_text: String,
    thumbprints: Thumbprints,
    /// The [`KeyId`] of its public key: the certificates directly below it are filed under it.
    spki: KeyId,
    /// The anchor certificate's pathLenConstraint: intermediates below it, at most. webpki
    /// takes an anchor as a name and key only, so certhub applies it (RFC 5280 6.1.1 lets a
    /// relying party enforce a trust anchor's constraints; OpenSSL does).
    path_len: Option<u32>,
}

/// The CA certificates a chain may end at, as an immutable value: the hub swaps a whole new
/// store when its registry changes, so a check never waits on anything.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
    pub(crate) meta: Vec<Anchor>,
    /// Chain links verified under this store; a new store starts empty.
    links: Arc<LinkCache>,
    /// Certificates refused although their chains verify.
    revocations: Arc<Revocations>,
    /// CRL distribution points met in the chains this store verified (kept with the links).
    points: Arc<CrlPoints>,
}

/// Most issuers [`LinkCache`] remembers.
const MAX_LINKS: usize = 4096;
/// Most leaves a store remembers as verified, over all its links (32 bytes each, plus the
/// sets' overhead: about 50 MB at most).
const MAX_LEAVES: usize = 1 << 20;

/// What a successful verification proved about the part of a chain above the leaf: the leaf's
/// issuer, with the certificates above it, reaches an anchor of this store for a usage. A later
/// chain that presents exactly those certificates needs only its leaf checked against the
/// issuer (its signature, validity, key usage) and the dates of the rest: the signatures above
/// the leaf are the same bytes, already verified under the same anchors. Validity is checked
/// on every use; a chain the cache cannot fully vouch for takes the full path.
///
/// A link also remembers the leaves whose signature it verified (by SHA-256 of their DER): a
/// device that connects again with the same certificate needs no signature check at all. Its
/// dates, and everything else that is not a property of the bytes, are checked on every use.
#[derive(Debug, Default)]
struct LinkCache {
    /// By the DER of the leaf's issuer.
    by_issuer: RwLock<HashMap<Vec<u8>, Link>>,
    /// Leaves remembered, over all links.
    leaves: std::sync::atomic::AtomicUsize,
    /// Device chains that verified, by [`presented_digest`]: see [`Seen`].
    seen: RwLock<HashMap<[u8; 32], Arc<Seen>>>,
}

/// Most device chains a store remembers as parsed (about 250 bytes each, an estimate: 64 MB at most).
const MAX_SEEN: usize = 1 << 18;

/// What the certificates of a device chain that verified (for client authentication: only
/// [`verify_device_chain`] keeps and reads these) said of themselves, kept by the SHA-256 of all
/// of them as presented ([`presented_digest`]): the same bytes again are not parsed again. The checks that are properties of the bytes (encodings, the leaf's CA flag,
/// key usage, key and signature algorithms) passed when it was kept; what depends on the time
/// (the leaf's dates, the link's and the anchor's), on revocation and on the trust (the link
/// itself, which a trust change drops with this memory) is checked on every use.
#[derive(Debug)]
struct Seen {
    subject: String,
    issuer: String,
    serial: Vec<u8>,
    not_before: i64,
    not_after: i64,
    /// The leaf's CN.
    cn: Option<String>,
    /// The leaf's CRL distribution points.
    crl_urls: Vec<String>,
}

/// A remembered device chain that still holds: the chain, the leaf's CN and subject.
type SeenChain = (VerifiedChain, Option<String>, String);

/// SHA-256 over a presented chain: each certificate's length, then its bytes.
fn presented_digest(leaf: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in std::iter::once(leaf).chain(intermediates) {
        ctx.update(&(c.len() as u64).to_be_bytes());
        ctx.update(c.as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[derive(Debug)]
struct Link {
    usage: Usage,
    /// The issuer as a trust anchor: webpki checks a new leaf against it alone. Only links
    /// without name constraints anywhere above the leaf are kept, so it loses nothing.
    issuer: TrustAnchor<'static>,
    /// DER of the certificates between the issuer and the anchor, which a chain must present
    /// too for the link to apply (the cache never completes a chain a device left incomplete).
    above: Vec<Vec<u8>>,
    anchor_index: usize,
    /// The tightest validity window of the issuer, the certificates above it and the anchor.
    not_before: i64,
    not_after: i64,
    /// Subjects from the issuer up, without the anchor.
    subjects: Vec<String>,
    /// The [`KeyId`] of `issuer`, under which its leaves are filed.
    issuer_key: KeyId,
    /// The issuer and the certificates above it, without the anchor.
    certs: Vec<ChainCert>,
    /// SHA-256 of the DER of leaves whose signature, key usage and extended key usage were
    /// verified against `issuer` for `usage`.
    leaves: RwLock<HashSet<[u8; 32]>>,
}

impl TrustStore {
    /// Builds a store from CA certificates (roots or intermediates). Refuses a certificate that
    /// is not a CA, cannot sign certificates, carries a refused key or an unknown critical
    /// extension: such a certificate must never be a trust anchor.
    pub fn new(certs: impl IntoIterator<Item = CertificateDer<'static>>) -> Result<Self, PkiError> {
        let mut store = Self::default();
        for der in certs {
            store.add(&der)?;
        }
        Ok(store)
    }

    fn add(&mut self, der: &CertificateDer<'_>) -> Result<(), PkiError> {
        let cert = parse(der)?;
        let subject = cert.subject().to_string();
        let refuse =
            |why: &str| PkiError::Policy(format!("{subject:?} cannot be a trust anchor: {why}"));
        if !cert.is_ca() {
            return Err(refuse(
                "it is not a CA certificate (basicConstraints CA:TRUE is missing)",
            ));
        }
        if cert.subject().iter().next().is_none() {
            return Err(refuse(
                "its subject is empty; a CA must have a distinguished name (RFC 5280 4.1.2.6)",
            ));
        }
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::KeyUsage(ku) if !ku.key_cert_sign() => {
                    return Err(refuse("its keyUsage does not allow keyCertSign"));
                }
                ParsedExtension::UnsupportedExtension { oid } if ext.critical => {
                    return Err(refuse(&format!(
                        "it has an unknown critical extension {oid}"
                    )));
                }
                _ => {}
            }
        }
        if let Some(p) = key_info(cert.public_key()).problem() {
            return Err(refuse(&p));
        }
        let anchor = webpki::anchor_from_trusted_cert(der)
            .map_err(|e| PkiError::malformed(format!("trust anchor {subject:?}"), e))?
            .to_owned();
        let validity = cert.validity();
        self.meta.push(Anchor {
            subject,
            subject_raw: cert.subject().as_raw().to_vec(),
            key_id: subject_key_id(&cert),
            organization: Organization::of(cert.subject()),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            not_before_text: rfc3339(&validity.not_before),
            not_after_text: rfc3339(&validity.not_after),
            thumbprints: Thumbprints::of(der),
            spki: key_id_of(&cert),
            path_len: cert
                .basic_constraints()
                .ok()
                .flatten()
                .and_then(|b| b.value.path_len_constraint),
        });
        self.anchors.push(anchor);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// The CRL distribution points met since the last call (each (issuer key, URL) once per
    /// store): where to fetch the CRLs that cover the chains this store verified.
    pub fn take_crl_points(&self) -> Vec<CrlPoint> {
        self.points.take()
    }

    /// Puts back points [`TrustStore::take_crl_points`] gave that could not be recorded.
    pub fn requeue_crl_points(&self, points: Vec<CrlPoint>) {
        self.points.requeue(points);
    }

    /// Notes the distribution points of a verified chain: the leaf's on every verification
    /// (a hash lookup when known), the intermediates' when `path` (their DER, from the leaf's
    /// issuer up) was just verified in full. A link the cache remembers was noted then.
    fn note_crl_points(
        &self,
        verified: &VerifiedChain,
        leaf_urls: Vec<&str>,
        intermediates: &[CertificateDer<'_>],
        path: Option<&[Vec<u8>]>,
    ) {
        let certs = &verified.certs;
        let mut wanted: Vec<(usize, String)> = Vec::new();
        let mut want = |k: usize, urls: Vec<&str>| {
            for url in urls {
                if let Some(c) = certs.get(k)
                    && !self.points.is_known(&c.issuer_key, url)
                {
                    wanted.push((k, url.to_string()));
                }
            }
        };
        want(0, leaf_urls);
        for (j, der) in path.unwrap_or_default().iter().enumerate() {
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(der) {
                want(j + 1, crate::distribution::crl_urls(&c));
            }
        }
        if wanted.is_empty() {
            return;
        }
        // The DER of each certificate above the leaf, as presented.
        let above: Vec<Option<CertificateDer<'static>>> = certs
            .iter()
            .skip(1)
            .map(|c| {
                intermediates
                    .iter()
                    .find(|i| crate::revocation::sha256(i) == c.sha256)
                    .map(|i| i.clone().into_owned())
            })
            .collect();
        for (k, url) in wanted {
            // The issuer of certs[k] is certs[k + 1], that is above[k], and so on up.
            let Some(issuer_chain) = above.get(k..).unwrap_or_default().iter().cloned().collect()
            else {
                continue;
            };
            self.points.note(CrlPoint {
                anchor_index: verified.anchor_index,
                url,
                issuer_key: certs[k].issuer_key,
                issuer_subject: certs[k].issuer.clone(),
                issuer_chain,
            });
        }
    }

    /// The same anchors (and the links already verified under them, which revocation does not
    /// change) with another revocation index.
    pub fn with_revocations(&self, revocations: Arc<Revocations>) -> Self {
        Self {
            revocations,
            ..self.clone()
        }
    }

    /// The revocation index this store checks verified chains against.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The certificate of a verified path that the index revokes or blocks at `now` (unix
    /// seconds), if any, as a refusal; or the one whose issuer's fail-closed CRL is overdue.
    pub fn revoked(&self, certs: &[ChainCert], now: i64) -> Option<Rejection> {
        let Some((cert, why)) = self.revocations.find(certs) else {
            let (cert, due) = self.revocations.overdue(certs, now)?;
            let time = |t: i64| {
                time::OffsetDateTime::from_unix_timestamp(t)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| t.to_string())
            };
            return Some(Rejection::new(
                Reason::CrlExpired,
                format!(
                    "{:?} (issued by {:?}) is covered by {}, whose nextUpdate {} and grace of {} s have passed; the CA's policy for stale CRLs is fail-closed: upload a newer CRL (certhub ca crl upload), or set the policy to fail-open",
                    cert.subject,
                    cert.issuer,
                    due.source,
                    time(due.next_update),
                    due.grace
                ),
            ));
        };
        let what = if std::ptr::eq(cert, &certs[0]) {
            "the leaf"
        } else {
            "the intermediate"
        };
        let at = time::OffsetDateTime::from_unix_timestamp(why.revoked_at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| why.revoked_at.to_string());
        if why.blocked {
            return Some(Rejection::new(
                Reason::CertificateBlocked,
                format!(
                    "{what} {:?} (serial {}, issued by {:?}, SHA-256 {}) is blocked by the operator since {at} ({})",
                    cert.subject,
                    cert.serial_hex(),
                    cert.issuer,
                    hex(&cert.sha256),
                    why.source
                ),
            ));
        }
        Some(Rejection::new(
            Reason::CertificateRevoked,
            format!(
                "{what} {:?} (serial {}, issued by {:?}) was revoked at {at}, reason {}, by {}",
                cert.subject,
                cert.serial_hex(),
                cert.issuer,
                why.reason.name(),
                why.source
            ),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// How many chain links this store remembers as verified (see [`verify_chain`]); a new
    /// store remembers none.
    pub fn remembered_links(&self) -> usize {
        self.links.by_issuer.read().map_or(0, |l| l.len())
    }

    /// How many leaves this store remembers as verified under its links.
    pub fn remembered_leaves(&self) -> usize {
        self.links.by_issuer.read().map_or(0, |links| {
            links
                .values()
                .map(|l| l.leaves.read().map_or(0, |s| s.len()))
                .sum()
        })
    }

    /// How many device chains this store remembers as parsed and verified (see [`Seen`]).
    pub fn remembered_chains(&self) -> usize {
        self.links.seen.read().map_or(0, |s| s.len())
    }

    /// Subjects of the anchors, in insertion order.
    pub fn subjects(&self) -> impl Iterator<Item = &str> {
        self.meta.iter().map(|a| a.subject.as_str())
    }

    fn anchor_valid_at(&self, i: usize, now: i64) -> bool {
        let a = &self.meta[i];
        a.not_before <= now && now <= a.not_after
    }

    /// A device chain verified before, byte for byte (`digest`, [`presented_digest`]), checked
    /// again for what is not a property of its bytes: the leaf's dates, its link (and that
    /// link's dates and anchor), revocation. `None` when it is not remembered or any of that
    /// does not hold: the full path then decides, and names the reason. Otherwise the chain,
    /// or its revocation, with the leaf's CN and subject.
    fn seen_before(
        &self,
        digest: &[u8; 32],
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<Result<SeenChain, Rejection>> {
        let seen = self.links.seen.read().ok()?.get(digest).cloned()?;
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now_secs < seen.not_before || now_secs > seen.not_after {
            return None;
        }
        let verified = self.via_link(
            leaf,
            &seen.subject,
            (seen.issuer.clone(), &seen.serial, seen.not_after),
            intermediates,
            now,
            now_secs,
            Usage::ClientAuth,
        )?;
        if let Some(refused) = self.revoked(&verified.certs, now_secs) {
            return Some(Err(refused));
        }
        self.note_crl_points(
            &verified,
            seen.crl_urls.iter().map(String::as_str).collect(),
            intermediates,
            None,
        );
        Some(Ok((verified, seen.cn.clone(), seen.subject.clone())))
    }

    /// Remembers a device chain that verified (see [`Seen`]), unless the store holds its most.
    fn keep_seen(&self, digest: [u8; 32], seen: Seen) {
        if let Ok(mut memo) = self.links.seen.write()
            && memo.len() < MAX_SEEN
        {
            memo.insert(digest, Arc::new(seen));
        }
    }

    /// The chain through a remembered link, if one applies and the leaf checks out against it.
    #[allow(clippy::too_many_arguments)]
    fn via_link(
        &self,
        leaf: &CertificateDer<'_>,
        leaf_subject: &str,
        (leaf_issuer, leaf_serial, leaf_not_after): (String, &[u8], i64),
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        now_secs: i64,
        usage: Usage,
    ) -> Option<VerifiedChain> {
        let links = self.links.by_issuer.read().ok()?;
        let link = intermediates
            .iter()
            .find_map(|c| links.get(c.as_ref()))
            .filter(|l| l.usage == usage)?;
        let presented = |der: &Vec<u8>| intermediates.iter().any(|c| c.as_ref() == der.as_slice());
        if !link.above.iter().all(presented)
            || now_secs < link.not_before
            || now_secs > link.not_after
            || !self.anchor_valid_at(link.anchor_index, now_secs)
        {
            return None;
        }
        let digest: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf)
            .as_ref()
            .try_into()
            .ok()?;
        if !link.leaves.read().ok()?.contains(&digest) {
            let ee = EndEntityCert::try_from(leaf).ok()?;
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&link.issuer),
                &[],
                now,
                key_usage(usage),
                None,
                None,
            )
            .ok()?;
            let remembered = &self.links.leaves;
            if remembered.load(std::sync::atomic::Ordering::Relaxed) < MAX_LEAVES
                && let Ok(mut leaves) = link.leaves.write()
                && leaves.insert(digest)
            {
                remembered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let anchor = &self.meta[link.anchor_index];
        let mut path = vec![leaf_subject.to_string()];
        path.extend(link.subjects.iter().cloned());
        path.push(anchor.subject.clone());
        let mut certs = Vec::with_capacity(link.certs.len() + 1);
        certs.push(ChainCert {
            subject: leaf_subject.to_string(),
            issuer: leaf_issuer,
            serial: serial_key(leaf_serial),
            issuer_key: link.issuer_key,
            sha256: digest,
            not_after: leaf_not_after,
        });
        certs.extend(link.certs.iter().cloned());
        Some(VerifiedChain {
            anchor_subject: anchor.subject.clone(),
            anchor_thumbprints: anchor.thumbprints.clone(),
            anchor_index: link.anchor_index,
            path,
            certs,
        })
    }

    /// Remembers the link a full verification proved: `path` is the DER of the intermediates
    /// it used, from the leaf's issuer up. Links with name constraints anywhere are not kept.
    fn remember(&self, path: &[Vec<u8>], anchor_index: usize, usage: Usage) {
        let Some((issuer_der, above)) = path.split_first() else {
            return; // the leaf hangs directly under the anchor: nothing to save
        };
        if self.anchors[anchor_index].name_constraints.is_some() {
            return;
        }
        let anchor = &self.meta[anchor_index];
        let (mut not_before, mut not_after) = (anchor.not_before, anchor.not_after);
        let mut subjects = Vec::new();
        let Some(certs) = path_certs(path, anchor.spki) else {
            return;
        };
        let Ok((_, issuer_cert)) = x509_parser::parse_x509_certificate(issuer_der) else {
            return;
        };
        let issuer_key = key_id_of(&issuer_cert);
        for der in path {
            let Ok((_, c)) = x509_parser::parse_x509_certificate(der) else {
                return;
            };
            let constrained = c
                .extensions()
                .iter()
                .any(|e| matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_)));
            if constrained {
                return;
            }
            not_before = not_before.max(c.validity().not_before.timestamp());
            not_after = not_after.min(c.validity().not_after.timestamp());
            subjects.push(c.subject().to_string());
        }
        let Ok(issuer) =
            webpki::anchor_from_trusted_cert(&CertificateDer::from(issuer_der.as_slice()))
                .map(|a| a.to_owned())
        else {
            return;
        };
        if let Ok(mut links) = self.links.by_issuer.write()
            && links.len() < MAX_LINKS
        {
            links.insert(
                issuer_der.clone(),
                Link {
                    usage,
                    issuer,
                    above: above.to_vec(),
                    anchor_index,
                    not_before,
                    not_after,
                    subjects,
                    issuer_key,
                    certs,
                    leaves: RwLock::default(),
                },
            );
        }
    }
}

/// The intermediates of a path (DER, from the leaf's issuer up) as [`ChainCert`]s, each filed
/// under the key of the one above it, the last under the anchor's.
fn path_certs(ders: &[Vec<u8>], anchor_key: KeyId) -> Option<Vec<ChainCert>> {
    let parsed: Vec<X509Certificate<'_>> = ders
        .iter()
        .map(|d| x509_parser::parse_x509_certificate(d).ok().map(|(_, c)| c))
        .collect::<Option<_>>()?;
    Some(
        parsed
            .iter()
            .zip(ders)
            .enumerate()
            .map(|(i, (c, der))| {
                let issuer_key = parsed.get(i + 1).map_or(anchor_key, key_id_of);
                ChainCert::of(c, der, issuer_key)
            })
            .collect(),
    )
}

pub(crate) fn key_usage(usage: Usage) -> KeyUsage {
    match usage {
        Usage::ClientAuth => KeyUsage::client_auth(),
        Usage::ServerAuth => KeyUsage::server_auth(),
    }
}

/// The device policy: `chain[0]` is the leaf, the rest are intermediates in any order. When
/// `device_id` is given, the leaf's CN must equal it (`deviceId` or `deviceId/moduleId`).
pub fn verify_device_chain(
    chain: &[CertificateDer<'_>],
    trust: &TrustStore,
    device_id: Option<&str>,
    now: UnixTime,
) -> Result<VerifiedChain, Rejection> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(Rejection::new(
            Reason::NoCertificate,
            "no client certificate was presented",
        ));
    };
    // This runs on every device connection: the same chain again is not parsed again.
    let digest = presented_digest(leaf, intermediates);
    let (verified, cn, subject) = match trust.seen_before(&digest, leaf, intermediates, now) {
        Some(found) => found?,
        None => {
            let cert = parse_presented(leaf, "the leaf")?;
            let verified =
                verify_parsed(leaf, &cert, intermediates, trust, now, Usage::ClientAuth)?;
            let seen = Seen {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                serial: cert.raw_serial().to_vec(),
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
                cn: common_name(cert.subject()),
                crl_urls: crate::distribution::crl_urls(&cert)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            };
            let (cn, subject) = (seen.cn.clone(), seen.subject.clone());
            trust.keep_seen(digest, seen);
            (verified, cn, subject)
        }
    };
    if let Some(expected) = device_id {
        match cn {
            Some(cn) if cn == expected => {}
            Some(cn) => {
                return Err(Rejection::new(
                    Reason::CnMismatch,
                    format!("the leaf's CN is {cn:?} but the device id is {expected:?}"),
                ));
            }
            None => {
                return Err(Rejection::new(
                    Reason::CnMismatch,
                    format!(
                        "the leaf {subject:?} has no CN; it must be the device id {expected:?}"
                    ),
                ));
            }
        }
    }
    Ok(verified)
}

/// Validates `leaf` through `intermediates` to an anchor of `trust` at `now` for `usage`.
///
/// The store remembers what a success proved above the leaf (the leaf's issuer and the
/// certificates above it reach an anchor, for this usage). A later chain presenting the same
/// certificates (byte for byte, all of them) has only its leaf's signature, validity and key
/// usage checked against that issuer, and the dates of the rest, skipping the signature checks
/// that were already done on the same bytes under the same anchors. A link with name
/// constraints is never remembered, and a store built after a trust change starts empty. Any
/// chain the remembered link does not accept goes through the full check, which names the
/// reason.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustStore,
    now: UnixTime,
    usage: Usage,
) -> Result<VerifiedChain, Rejection> {
    let leaf_cert = parse_presented(leaf, "the leaf")?;
    verify_parsed(leaf, &leaf_cert, intermediates, trust, now, usage)
}

/// [`verify_chain`] with the leaf already parsed (`leaf_cert` is `leaf`).
fn verify_parsed(
    leaf: &CertificateDer<'_>,
    leaf_cert: &X509Certificate<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &TrustStore,
    now: UnixTime,
    usage: Usage,
) -> Result<VerifiedChain, Rejection> {
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let parsed: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .enumerate()
        .map(|(i, c)| parse_presented(c, &format!("intermediate {}", i + 1)))
        .collect::<Result<_, _>>()?;
    check_leaf(leaf_cert, now_secs)?;
    for c in &parsed {
        check_encoding(c)?;
    }

    let leaf_subject = leaf_cert.subject().to_string();
    let leaf_facts = (
        leaf_cert.issuer().to_string(),
        leaf_cert.raw_serial(),
        leaf_cert.validity().not_after.timestamp(),
    );
    if let Some(verified) = trust.via_link(
        leaf,
        &leaf_subject,
        leaf_facts,
        intermediates,
        now,
        now_secs,
        usage,
    ) {
        return match trust.revoked(&verified.certs, now_secs) {
            Some(refused) => Err(refused),
            None => {
                trust.note_crl_points(
                    &verified,
                    crate::distribution::crl_urls(leaf_cert),
                    intermediates,
                    None,
                );
                Ok(verified)
            }
        };
    }
    let ee = EndEntityCert::try_from(leaf)
        .map_err(|e| unusable(&e, Presented::new(leaf, leaf_cert, &[], &[]).leaf()))?;
    let eku = key_usage(usage);
    let algs = webpki::ALL_VERIFICATION_ALGS;
    // The path webpki built, as (anchor index, subjects from the leaf, DER of the
    // intermediates from the leaf's issuer up) plus the first policy problem met on the way
    // that webpki does not check: a refused key (webpki checks signatures, not key sizes), an
    // intermediate whose keyUsage does not allow signing certificates, an anchor's
    // pathLenConstraint.
    type Built = (usize, Vec<String>, Vec<Vec<u8>>, Option<(Reason, String)>);
    let attempt = |anchors: &[TrustAnchor<'_>]| -> Result<Built, webpki::Error> {
        let path = ee.verify_for_usage(algs, anchors, intermediates, now, eku, None, None)?;
        let index = anchors
            .iter()
            .position(|a| std::ptr::eq(a, path.anchor()))
            .unwrap_or_default();
        let mut subjects = vec![leaf_subject.clone()];
        let mut ders = Vec::new();
        let mut problem = None;
        for der in path.intermediate_certificates() {
            ders.push(der.der().as_ref().to_vec());
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(der.der().as_ref()) {
                let subject = c.subject().to_string();
                if let Some(p) = key_info(c.public_key()).problem() {
                    problem
                        .get_or_insert((Reason::UnsupportedAlgorithm, format!("{subject:?}: {p}")));
                }
                if let Ok(Some(ku)) = c.key_usage()
                    && !ku.value.key_cert_sign()
                {
                    problem.get_or_insert((
                        Reason::WrongKeyUsage,
                        format!(
                            "intermediate {subject:?} signed the certificate below it, but its keyUsage does not include keyCertSign"
                        ),
                    ));
                }
                subjects.push(subject);
            }
        }
        // `anchors` may be a subset of the store's: find this anchor among all of them.
        let global = trust.anchors.iter().position(|a| {
            a.subject == path.anchor().subject
                && a.subject_public_key_info == path.anchor().subject_public_key_info
        });
        if let Some(g) = global
            && let Some(max) = trust.meta[g].path_len
            && ders.len() > max as usize
        {
            let anchor = &trust.meta[g].subject;
            problem.get_or_insert((
                Reason::PathLengthExceeded,
                format!(
                    "the registered CA {anchor:?} allows {max} intermediate(s) below it (pathLenConstraint) and the chain has {}",
                    ders.len()
                ),
            ));
        }
        Ok((index, subjects, ders, problem))
    };

    let (index, mut path, ders, problem) = match attempt(&trust.anchors) {
        Ok((i, path, ders, problem)) if trust.anchor_valid_at(i, now_secs) => {
            if problem.is_none() {
                trust.remember(&ders, i, usage);
            }
            (i, path, ders, problem)
        }
        Ok((i, _, _, _)) => {
            // The chain reached an anchor outside its validity. Another, valid anchor may still
            // be reachable (a re-issued root with the same key); otherwise refuse by name.
            let valid: Vec<usize> = (0..trust.len())
                .filter(|j| trust.anchor_valid_at(*j, now_secs))
                .collect();
            let anchors: Vec<TrustAnchor<'_>> =
                valid.iter().map(|j| trust.anchors[*j].clone()).collect();
            match attempt(&anchors) {
                Ok((k, path, ders, problem)) => (valid[k], path, ders, problem),
                Err(_) => return Err(anchor_out_of_validity(&trust.meta[i], now_secs)),
            }
        }
        Err(e) => {
            let presented = Presented::new(leaf, leaf_cert, intermediates, &parsed);
            let rerun = Rerun {
                ee: &ee,
                trust,
                now,
                usage,
            };
            return Err(explain(e, &presented, &rerun));
        }
    };
    if let Some((reason, detail)) = problem {
        return Err(Rejection::new(reason, detail));
    }
    let anchor = &trust.meta[index];
    path.push(anchor.subject.clone());
    let above = path_certs(&ders, anchor.spki).ok_or_else(|| {
        Rejection::new(
            Reason::MalformedCertificate,
            "an intermediate of the path does not parse",
        )
    })?;
    let leaf_issuer_key = above.first().map_or(anchor.spki, |_| {
        x509_parser::parse_x509_certificate(&ders[0]).map_or([0; 32], |(_, c)| key_id_of(&c))
    });
    let mut certs = Vec::with_capacity(above.len() + 1);
    certs.push(ChainCert::of(leaf_cert, leaf, leaf_issuer_key));
    certs.extend(above);
    if let Some(refused) = trust.revoked(&certs, now_secs) {
        return Err(refused);
    }
    let verified = VerifiedChain {
        anchor_subject: anchor.subject.clone(),
        anchor_thumbprints: anchor.thumbprints.clone(),
        anchor_index: index,
        path,
        certs,
    };
    trust.note_crl_points(
        &verified,
        crate::distribution::crl_urls(leaf_cert),
        intermediates,
        Some(&ders),
    );
    Ok(verified)
}

fn parse_presented<'a>(
    der: &'a CertificateDer<'_>,
    what: &str,
) -> Result<X509Certificate<'a>, Rejection> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(Rejection::new(
            Reason::MalformedCertificate,
            format!("{what}: bytes follow the certificate"),
        )),
        Err(e) => Err(Rejection::new(
            Reason::MalformedCertificate,
            format!("{what}: {e}"),
        )),
    }
}

/// Checks on the leaf that give a more precise reason than the path builder would.
fn check_leaf(leaf: &X509Certificate<'_>, now: i64) -> Result<(), Rejection> {
    let subject = leaf.subject().to_string();
    check_encoding(leaf)?;
    if leaf.is_ca() {
        return Err(Rejection::new(
            Reason::CaUsedAsLeaf,
            format!(
                "the leaf {subject:?} is a CA certificate (CA:TRUE); a device presents its own, non-CA certificate first"
            ),
        ));
    }
    if let Ok(Some(ku)) = leaf.key_usage()
        && ku.value.key_cert_sign()
    {
        return Err(Rejection::new(
            Reason::WrongKeyUsage,
            format!("the leaf {subject:?} is not a CA but its keyUsage allows keyCertSign"),
        ));
    }
    if let Some(p) = key_info(leaf.public_key()).problem() {
        return Err(Rejection::new(
            Reason::UnsupportedAlgorithm,
            format!("the leaf {subject:?}: {p}"),
        ));
    }
    if let Some(p) = weak_signature(&leaf.signature_algorithm) {
        return Err(Rejection::new(
            Reason::UnsupportedAlgorithm,
            format!("the leaf {subject:?} is {p}"),
        ));
    }
    check_validity(leaf, "the leaf", now)
}

pub(crate) fn check_validity(
    cert: &X509Certificate<'_>,
    what: &str,
    now: i64,
) -> Result<(), Rejection> {
    let v = cert.validity();
    let subject = cert.subject().to_string();
    if v.not_before.timestamp() > v.not_after.timestamp() {
        return Err(Rejection::new(
            Reason::InvalidValidityPeriod,
            format!(
                "{what} {subject:?} is never valid: its notBefore {} is after its notAfter {}",
                rfc3339(&v.not_before),
                rfc3339(&v.not_after)
            ),
        ));
    }
    if now < v.not_before.timestamp() {
        return Err(Rejection::new(
            Reason::NotYetValid,
            format!(
                "{what} {subject:?} is valid from {} only",
                rfc3339(&v.not_before)
            ),
        ));
    }
    if now > v.not_after.timestamp() {
        return Err(Rejection::new(
            Reason::CertificateExpired,
            format!("{what} {subject:?} expired at {}", rfc3339(&v.not_after)),
        ));
    }
    Ok(())
}

/// RFC 5280 4.1.2.2: a serial is a positive integer of at most 20 octets; 4.1.2.4: the issuer
/// is a non-empty name.
fn check_encoding(cert: &X509Certificate<'_>) -> Result<(), Rejection> {
    let serial = cert.raw_serial();
    let significant = serial.iter().skip_while(|b| **b == 0).count();
    let malformed = |why: &str| {
        Rejection::new(
            Reason::MalformedCertificate,
            format!("{:?}: {why}", cert.subject().to_string()),
        )
    };
    if significant == 0 {
        return Err(malformed("its serial number is zero"));
    }
    if serial.len() > 20 {
        return Err(malformed("its serial number is longer than 20 octets"));
    }
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(malformed("its serial number is negative"));
    }
    if cert.issuer().iter().next().is_none() {
        return Err(malformed(
            "its issuer name is empty; an issuer must have a distinguished name (RFC 5280 4.1.2.4)",
        ));
    }
    Ok(())
}

fn anchor_out_of_validity(anchor: &Anchor, now: i64) -> Rejection {
    if now < anchor.not_before {
        Rejection::new(
            Reason::NotYetValid,
            format!(
                "the trust anchor {:?} is valid from {} only",
                anchor.subject, anchor.not_before_text
            ),
        )
    } else {
        Rejection::new(
            Reason::CertificateExpired,
            format!(
                "the trust anchor {:?} expired at {}; renew the CA and register the new certificate",
                anchor.subject, anchor.not_after_text
            ),
        )
    }
}
