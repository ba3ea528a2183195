//! Naming a refused chain: rustls-webpki says what failed but rarely where. This module turns
//! its error into a [`Reason`] and a sentence that names the certificate at fault, by looking at
//! the presented certificates and the trust store. It runs only on refusals.
//!
//! Every `webpki::Error` variant `verify_for_usage` can return for a device chain has its own
//! name here (see the table in docs/architecture.md, "The device chain policy"); `chain-invalid`
//! is left for the variants the device policy cannot meet (revocation and server-name errors:
//! certhub asks for neither) and for variants a later webpki adds.

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::EndEntityCert;
use webpki::Error as E;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, NameConstraints, ParsedExtension};
use x509_parser::oid_registry::{OID_DOMAIN_COMPONENT, OID_X509_EXT_EXTENDED_KEY_USAGE};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::chain::{Reason, Rejection, TrustStore, Usage, check_validity, key_usage};
use crate::describe::{key_info, signature_algorithm_name, weak_signature};

/// A presented certificate: its DER, parsed, and its place in the chain (0 = the leaf).
#[derive(Clone, Copy)]
pub(crate) struct Cert<'a> {
    position: usize,
    der: &'a CertificateDer<'a>,
    x509: &'a X509Certificate<'a>,
}

impl<'a> Cert<'a> {
    fn label(&self) -> String {
        match self.position {
            0 => "the leaf".into(),
            n => format!("intermediate {n}"),
        }
    }

    fn subject(&self) -> String {
        self.x509.subject().to_string()
    }

    /// `the leaf "CN=..."` / `intermediate 2 "CN=..."`.
    fn named(&self) -> String {
        format!("{} {:?}", self.label(), self.subject())
    }

    fn issued(&self, child: &Cert<'_>) -> bool {
        self.x509.subject().as_raw() == child.x509.issuer().as_raw()
    }
}

/// The chain as presented: the leaf and the intermediates, in the order they came.
pub(crate) struct Presented<'a> {
    leaf: Cert<'a>,
    intermediates: Vec<Cert<'a>>,
}

impl<'a> Presented<'a> {
    pub(crate) fn new(
        leaf: &'a CertificateDer<'a>,
        leaf_x509: &'a X509Certificate<'a>,
        ders: &'a [CertificateDer<'a>],
        x509s: &'a [X509Certificate<'a>],
    ) -> Self {
        Self {
            leaf: Cert {
                position: 0,
                der: leaf,
                x509: leaf_x509,
            },
            intermediates: ders
                .iter()
                .zip(x509s)
                .enumerate()
                .map(|(i, (der, x509))| Cert {
                    position: i + 1,
                    der,
                    x509,
                })
                .collect(),
        }
    }

    /// The intermediates the leaf can reach by issuer name, nearest first, with their distance
    /// from the leaf (1 = the leaf's issuer). These are the only ones a path can use.
    fn reachable(&self) -> Vec<(Cert<'a>, usize)> {
        let mut seen = vec![false; self.intermediates.len()];
        let mut out: Vec<(Cert<'a>, usize)> = Vec::new();
        let mut frontier = vec![self.leaf];
        let mut depth = 0;
        while !frontier.is_empty() {
            depth += 1;
            let mut next = Vec::new();
            for child in &frontier {
                for (i, c) in self.intermediates.iter().enumerate() {
                    if !seen[i] && c.issued(child) {
                        seen[i] = true;
                        out.push((*c, depth));
                        next.push(*c);
                    }
                }
            }
            frontier = next;
        }
        out
    }

    /// The leaf, then the reachable intermediates nearest first.
    fn path_candidates(&self) -> Vec<Cert<'a>> {
        std::iter::once(self.leaf)
            .chain(self.reachable().into_iter().map(|(c, _)| c))
            .collect()
    }

    pub(crate) fn leaf(&self) -> &Cert<'a> {
        &self.leaf
    }

    /// A certificate of the chain (the leaf or a reachable intermediate) that `issuer` issued.
    fn child_of(&self, issuer: &Cert<'_>) -> Option<Cert<'a>> {
        self.path_candidates()
            .into_iter()
            .find(|c| issuer.issued(c) && c.position != issuer.position)
    }
}

/// What a second run of the path builder needs, to see past certificates it cannot parse.
pub(crate) struct Rerun<'a> {
    pub(crate) ee: &'a EndEntityCert<'a>,
    pub(crate) trust: &'a TrustStore,
    pub(crate) now: UnixTime,
    pub(crate) usage: Usage,
}

impl Rerun<'_> {
    fn run(&self, intermediates: &[CertificateDer<'_>]) -> Result<(), E> {
        self.ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.trust.anchors,
                intermediates,
                self.now,
                key_usage(self.usage),
                None,
                None,
            )
            .map(|_| ())
    }
}

/// The organization a name belongs to: its O values and its DC components, compared
/// ignoring case. Two names share an organization when they have an O in common, or the same
/// (non-empty) sequence of DCs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Organization {
    o: Vec<String>,
    dc: Vec<String>,
}

impl Organization {
    pub(crate) fn of(name: &X509Name<'_>) -> Self {
        let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            a.as_str().ok().map(|s| s.trim().to_string())
        };
        Self {
            o: name.iter_organization().filter_map(text).collect(),
            dc: name
                .iter_by_oid(&OID_DOMAIN_COMPONENT)
                .filter_map(text)
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.o.is_empty() && self.dc.is_empty()
    }

    fn shared_with(&self, other: &Self) -> Option<String> {
        let same = |a: &String, b: &String| a.to_lowercase() == b.to_lowercase();
        if let Some(o) = self.o.iter().find(|o| other.o.iter().any(|x| same(o, x))) {
            return Some(format!("O={o}"));
        }
        let same_dc = self.dc.len() == other.dc.len()
            && self.dc.iter().zip(&other.dc).all(|(a, b)| same(a, b));
        (!self.dc.is_empty() && same_dc).then(|| {
            self.dc
                .iter()
                .map(|d| format!("DC={d}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

/// The subjectKeyIdentifier of a certificate.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

/// The keyIdentifier of a certificate's authorityKeyIdentifier: the key of its issuer.
fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// The certificate extensions rustls-webpki processes; any other one marked critical makes it
/// refuse the certificate (RFC 5280 4.2).
const WEBPKI_EXTENSIONS: [&str; 7] = [
    "2.5.29.15",               // keyUsage
    "2.5.29.17",               // subjectAltName
    "2.5.29.19",               // basicConstraints
    "2.5.29.30",               // nameConstraints
    "2.5.29.31",               // cRLDistributionPoints
    "2.5.29.37",               // extKeyUsage
    "1.3.6.1.4.1.11129.2.4.2", // the certificate transparency SCT list
];

/// The reason for a certificate the path builder cannot parse at all.
fn parse_reason(e: &E) -> Reason {
    match e {
        E::UnsupportedCertVersion => Reason::UnsupportedCertificateVersion,
        E::UnsupportedCriticalExtension => Reason::UnsupportedCriticalExtension,
        // Raised while parsing a certificate only by an extension met twice.
        E::ExtensionValueInvalid => Reason::DuplicateExtension,
        E::SignatureAlgorithmMismatch => Reason::SignatureAlgorithmMismatch,
        _ => Reason::MalformedCertificate,
    }
}

/// A certificate rustls-webpki refused to parse (`EndEntityCert::try_from` failed with `e`),
/// named. The leaf and the intermediates are parsed the same way.
pub(crate) fn unusable(e: &E, cert: &Cert<'_>) -> Rejection {
    let x = cert.x509;
    let who = cert.named();
    let detail = match e {
        E::UnsupportedCertVersion => format!(
            "{who} is an X.509 version {} certificate; only version 3 certificates (the ones with extensions such as basicConstraints) are accepted",
            x.version().0 + 1
        ),
        E::UnsupportedCriticalExtension => {
            let oids: Vec<String> = x
                .extensions()
                .iter()
                .filter(|ext| ext.critical)
                .map(|ext| ext.oid.to_id_string())
                .filter(|oid| !WEBPKI_EXTENSIONS.contains(&oid.as_str()))
                .collect();
            format!(
                "{who} has a critical extension the verifier does not process ({}); a certificate user must refuse it (RFC 5280 4.2)",
                oids.join(", ")
            )
        }
        E::ExtensionValueInvalid => {
            let mut seen = Vec::new();
            let mut twice = Vec::new();
            for ext in x.extensions() {
                let oid = ext.oid.to_id_string();
                if seen.contains(&oid) && !twice.contains(&oid) {
                    twice.push(oid);
                } else {
                    seen.push(oid);
                }
            }
            format!(
                "{who} carries the extension {} more than once (RFC 5280 4.2)",
                twice.join(", ")
            )
        }
        E::SignatureAlgorithmMismatch => {
            let inner = signature_algorithm_name(&x.tbs_certificate.signature);
            let outer = signature_algorithm_name(&x.signature_algorithm);
            if inner == outer {
                format!(
                    "{who}: the parameters of its signature algorithm ({outer}) differ from the ones inside its signed part (RFC 5280 4.1.1.2)"
                )
            } else {
                format!(
                    "{who} is signed with {outer} but its signed part names {inner} (RFC 5280 4.1.1.2)"
                )
            }
        }
        E::BadDerTime => format!(
            "{who} has a validity time the verifier cannot read (DER requires UTCTime or GeneralizedTime with seconds, in Z)"
        ),
        other => format!("{who} cannot be read by the verifier ({other:?})"),
    };
    Rejection::new(parse_reason(e), detail)
}

/// Turns webpki's error for a chain into a named reason with a sentence that points at the
/// certificate at fault.
pub(crate) fn explain(e: E, presented: &Presented<'_>, rerun: &Rerun<'_>) -> Rejection {
    // webpki parses every presented intermediate it considers and ranks a parse error above
    // "unknown issuer", so one it cannot parse (even junk beside a chain) can hide the real
    // reason. Such a certificate never takes part in a path: run again without them, and blame
    // one only if the chain needs it (the leaf reaches it by name and nothing else is found).
    let broken: Vec<(Cert<'_>, E)> = presented
        .intermediates
        .iter()
        .filter_map(|c| EndEntityCert::try_from(c.der).err().map(|e| (*c, e)))
        .collect();
    if broken.is_empty() {
        return name(e, presented, rerun);
    }
    let usable = Presented {
        leaf: presented.leaf,
        intermediates: presented
            .intermediates
            .iter()
            .filter(|c| !broken.iter().any(|(b, _)| b.position == c.position))
            .copied()
            .collect(),
    };
    let ders: Vec<CertificateDer<'_>> = usable
        .intermediates
        .iter()
        .map(|c| (*c.der).clone())
        .collect();
    let e = match rerun.run(&ders) {
        Ok(()) => e, // cannot happen: the broken ones never took part in a path
        Err(again) => again,
    };
    if e == E::UnknownIssuer {
        let needed = presented.reachable().into_iter().find_map(|(c, _)| {
            broken
                .iter()
                .find(|(b, _)| b.position == c.position)
                .map(|(b, err)| (*b, err.clone()))
        });
        if let Some((cert, err)) = needed {
            return unusable(&err, &cert);
        }
    }
    name(e, &usable, rerun)
}

fn name(e: E, p: &Presented<'_>, rerun: &Rerun<'_>) -> Rejection {
    let now = i64::try_from(rerun.now.as_secs()).unwrap_or(i64::MAX);
    match e {
        E::CertExpired { .. } | E::CertNotValidYet { .. } | E::InvalidCertValidity => {
            for c in p.path_candidates() {
                if let Err(r) = check_validity(c.x509, &c.label(), now) {
                    return r;
                }
            }
            let reason = match e {
                E::CertExpired { .. } => Reason::CertificateExpired,
                E::CertNotValidYet { .. } => Reason::NotYetValid,
                _ => Reason::InvalidValidityPeriod,
            };
            Rejection::new(
                reason,
                format!("a certificate in the chain is outside its validity ({e:?})"),
            )
        }
        E::UnknownIssuer => unknown_issuer(p, rerun.trust),
        E::CaUsedAsEndEntity => Rejection::new(
            Reason::CaUsedAsLeaf,
            format!(
                "the leaf {:?} is a CA certificate; a device presents its own, non-CA certificate first",
                p.leaf.subject()
            ),
        ),
        E::EndEntityUsedAsCa => issuer_not_ca(p),
        E::PathLenConstraintViolated => path_length(p),
        E::MaximumPathDepthExceeded => Rejection::new(
            Reason::ChainTooLong,
            "the chain is more than 6 intermediates deep below the leaf, the most the verifier follows: a device presents its leaf and at most 6 intermediates up to a registered CA",
        ),
        E::MaximumSignatureChecksExceeded
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumNameConstraintComparisonsExceeded => too_complex(&e, p),
        E::NameConstraintViolation => Rejection::new(
            Reason::NameConstraintsViolated,
            format!(
                "a name of {:?} or of a certificate above it is outside the name constraints of {}",
                p.leaf.subject(),
                constrainers(p, rerun.trust)
            ),
        ),
        E::MalformedNameConstraint | E::InvalidNetworkMaskConstraint => Rejection::new(
            Reason::MalformedNameConstraints,
            format!(
                "the name constraints of {} cannot be evaluated: {}",
                constrainers(p, rerun.trust),
                if e == E::MalformedNameConstraint {
                    "a dNSName constraint is not a DNS name (no wildcards, no empty labels)"
                } else {
                    "an iPAddress constraint's mask is not a CIDR prefix"
                }
            ),
        ),
        E::MalformedDnsIdentifier => malformed_dns_name(p, rerun.trust),
        E::InvalidSignatureForPublicKey => Rejection::new(
            Reason::BadSignature,
            "a signature in the chain does not verify with its issuer's key",
        ),
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => unsupported_algorithm(p),
        #[allow(deprecated)]
        E::UnsupportedSignatureAlgorithm | E::UnsupportedSignatureAlgorithmForPublicKey => {
            unsupported_algorithm(p)
        }
        E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => wrong_eku(&e, p, rerun.usage),
        #[allow(deprecated)]
        E::RequiredEkuNotFound => wrong_eku(&e, p, rerun.usage),
        E::CertDistrusted => distrusted(p, rerun),
        E::UnsupportedCertVersion
        | E::UnsupportedCriticalExtension
        | E::ExtensionValueInvalid
        | E::SignatureAlgorithmMismatch
        | E::BadDer
        | E::BadDerTime
        | E::TrailingData(_)
        | E::MalformedExtensions
        | E::InvalidSerialNumber => match p
            .path_candidates()
            .into_iter()
            .find(|c| alone(c, rerun).as_ref() == Some(&e))
        {
            Some(c) => unusable(&e, &c),
            None => bad_ip_name(p).unwrap_or_else(|| {
                Rejection::new(
                    parse_reason(&e),
                    format!("a certificate in the chain is malformed ({e:?})"),
                )
            }),
        },
        // Revocation errors (certhub passes no CRLs), server-name errors (it never checks a
        // server name) and whatever a later webpki adds.
        other => Rejection::new(Reason::ChainInvalid, format!("{other:?}")),
    }
}

/// basicConstraints as webpki reads it: `Some(true)` for CA:TRUE, `Some(false)` for CA:FALSE,
/// `None` when the extension is absent.
fn ca_flag(c: &X509Certificate<'_>) -> Option<bool> {
    c.basic_constraints().ok().flatten().map(|bc| bc.value.ca)
}

fn issuer_not_ca(p: &Presented<'_>) -> Rejection {
    let culprit = p
        .reachable()
        .into_iter()
        .map(|(c, _)| c)
        .find(|c| ca_flag(c.x509) != Some(true));
    let Some(c) = culprit else {
        return Rejection::new(
            Reason::IssuerNotCa,
            "a certificate that issued another one of the chain is not a CA (basicConstraints CA:TRUE is missing)",
        );
    };
    let why = match ca_flag(c.x509) {
        Some(_) => "its basicConstraints say CA:FALSE",
        None => "it has no basicConstraints extension",
    };
    let child = p
        .child_of(&c)
        .map(|child| format!(", the issuer of {:?},", child.subject()))
        .unwrap_or_default();
    Rejection::new(
        Reason::IssuerNotCa,
        format!(
            "{}{child} is not a CA certificate ({why}); only a CA (basicConstraints CA:TRUE) may issue certificates: re-issue it as a CA",
            c.named()
        ),
    )
}

fn path_length(p: &Presented<'_>) -> Rejection {
    for (c, depth) in p.reachable() {
        let below = depth - 1;
        if let Some(bc) = c.x509.basic_constraints().ok().flatten()
            && let Some(len) = bc.value.path_len_constraint
            && below > len as usize
        {
            return Rejection::new(
                Reason::PathLengthExceeded,
                format!(
                    "{} allows {len} intermediate CA(s) below it (pathLenConstraint {len}), but the chain has {below}",
                    c.named()
                ),
            );
        }
    }
    Rejection::new(
        Reason::PathLengthExceeded,
        "the chain is longer than a CA's pathLenConstraint allows",
    )
}

fn too_complex(e: &E, p: &Presented<'_>) -> Rejection {
    let what = match e {
        E::MaximumSignatureChecksExceeded => "more than 100 signature checks",
        E::MaximumPathBuildCallsExceeded => {
            "more than 200 000 path-building steps (many certificates with the same name)"
        }
        _ => "more than 250 000 name-constraint comparisons",
    };
    Rejection::new(
        Reason::ChainTooComplex,
        format!(
            "checking the {} presented certificates needs {what}, more than the verifier allows; a device presents its leaf and only the intermediates above it",
            p.intermediates.len() + 1
        ),
    )
}

/// The certificates whose name constraints apply to the chain: reachable intermediates and the
/// trust anchors that issued one of the chain, each with its constraints.
fn constrainers(p: &Presented<'_>, trust: &TrustStore) -> String {
    let mut out = Vec::new();
    for (c, _) in p.reachable() {
        if let Ok(Some(nc)) = c.x509.name_constraints() {
            out.push(format!(
                "{} ({})",
                c.named(),
                describe_constraints(nc.value)
            ));
        }
    }
    let issuers: Vec<&[u8]> = p
        .path_candidates()
        .iter()
        .map(|c| c.x509.issuer().as_raw())
        .collect();
    for (a, meta) in trust.anchors.iter().zip(&trust.meta) {
        let Some(der) = &a.name_constraints else {
            continue;
        };
        if !issuers.contains(&meta.subject_raw.as_slice()) {
            continue;
        }
        // The anchor keeps the extension's value without its SEQUENCE header.
        let mut seq = vec![0x30];
        let len = der.as_ref().len();
        match u16::try_from(len) {
            Ok(l) if l < 0x80 => seq.push(l as u8),
            Ok(l) if l <= 0xff => seq.extend([0x81, l as u8]),
            Ok(l) => seq.extend([0x82, (l >> 8) as u8, l as u8]),
            Err(_) => {}
        }
        seq.extend_from_slice(der.as_ref());
        match NameConstraints::from_der(&seq) {
            Ok((_, nc)) => out.push(format!(
                "the trusted CA {:?} ({})",
                meta.subject,
                describe_constraints(&nc)
            )),
            Err(_) => out.push(format!("the trusted CA {:?}", meta.subject)),
        }
    }
    if out.is_empty() {
        "a CA of the chain".into()
    } else {
        out.join(" and ")
    }
}

fn describe_constraints(nc: &NameConstraints<'_>) -> String {
    let mut parts = Vec::new();
    for (word, trees) in [
        ("permits", &nc.permitted_subtrees),
        ("excludes", &nc.excluded_subtrees),
    ] {
        if let Some(trees) = trees {
            let names: Vec<String> = trees.iter().map(|t| general_name(&t.base)).collect();
            parts.push(format!("{word} {}", names.join(", ")));
        }
    }
    parts.join("; ")
}

fn general_name(n: &GeneralName<'_>) -> String {
    match n {
        GeneralName::DNSName(d) => format!("DNS {d}"),
        GeneralName::IPAddress(ip) => match ip.len() {
            8 => format!(
                "IP {}/{}",
                std::net::Ipv4Addr::from([ip[0], ip[1], ip[2], ip[3]]),
                std::net::Ipv4Addr::from([ip[4], ip[5], ip[6], ip[7]])
            ),
            32 => {
                let mut addr = [0u8; 16];
                let mut mask = [0u8; 16];
                addr.copy_from_slice(&ip[..16]);
                mask.copy_from_slice(&ip[16..]);
                format!(
                    "IP {}/{}",
                    std::net::Ipv6Addr::from(addr),
                    std::net::Ipv6Addr::from(mask)
                )
            }
            _ => format!("IP ({} bytes)", ip.len()),
        },
        GeneralName::DirectoryName(dn) => {
            format!("directoryName {dn} (not evaluated: it admits no name)")
        }
        GeneralName::URI(u) => format!("URI {u} (not evaluated: it admits no name)"),
        GeneralName::RFC822Name(m) => format!("email {m}"),
        other => format!("{other:?}"),
    }
}

fn malformed_dns_name(p: &Presented<'_>, trust: &TrustStore) -> Rejection {
    let valid = |name: &str| {
        let bare = name.strip_prefix("*.").unwrap_or(name);
        rustls_pki_types::DnsName::try_from(bare).is_ok()
    };
    for c in p.path_candidates() {
        if let Ok(Some(san)) = c.x509.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n
                    && !valid(d)
                {
                    return Rejection::new(
                        Reason::MalformedCertificate,
                        format!(
                            "{} has the dNSName {d:?} in its subjectAltName, which is not a DNS name (checked against the name constraints of {})",
                            c.named(),
                            constrainers(p, trust)
                        ),
                    );
                }
            }
        }
    }
    Rejection::new(
        Reason::MalformedCertificate,
        format!(
            "a dNSName in the chain is not a DNS name (checked against the name constraints of {})",
            constrainers(p, trust)
        ),
    )
}

/// A subjectAltName iPAddress that is neither 4 nor 16 bytes: webpki reads it (`BadDer`) only
/// when a name constraint applies.
fn bad_ip_name(p: &Presented<'_>) -> Option<Rejection> {
    p.path_candidates().into_iter().find_map(|c| {
        let san = c.x509.subject_alternative_name().ok().flatten()?;
        san.value.general_names.iter().find_map(|n| match n {
            GeneralName::IPAddress(ip) if ip.len() != 4 && ip.len() != 16 => Some(Rejection::new(
                Reason::MalformedCertificate,
                format!(
                    "{} has an iPAddress of {} bytes in its subjectAltName (4 or 16 expected)",
                    c.named(),
                    ip.len()
                ),
            )),
            _ => None,
        })
    })
}

fn unsupported_algorithm(p: &Presented<'_>) -> Rejection {
    let reachable: Vec<Cert<'_>> = p.reachable().into_iter().map(|(c, _)| c).collect();
    let weak = reachable
        .iter()
        .find_map(|c| weak_signature(&c.x509.signature_algorithm).map(|w| (c, w)))
        .map(|(c, w)| format!("{:?} is {w}", c.subject()))
        .or_else(|| {
            reachable.iter().find_map(|c| {
                key_info(c.x509.public_key())
                    .problem()
                    .map(|p| format!("{:?}: {p}", c.subject()))
            })
        });
    Rejection::new(
        Reason::UnsupportedAlgorithm,
        weak.unwrap_or_else(|| {
            "a certificate in the chain uses a signature algorithm or key certhub refuses (SHA-1, MD5, RSA under 2048 bits, DSA, or an unsupported curve)".into()
        }),
    )
}

fn wrong_eku(e: &E, p: &Presented<'_>, usage: Usage) -> Rejection {
    let purpose = match usage {
        Usage::ClientAuth => "clientAuth",
        Usage::ServerAuth => "serverAuth",
    };
    for c in p.path_candidates() {
        let Some(ext) = c
            .x509
            .extensions()
            .iter()
            .find(|x| x.oid == OID_X509_EXT_EXTENDED_KEY_USAGE)
        else {
            continue;
        };
        let why = match ext.parsed_extension() {
            _ if ext.value == [0x30, 0x00] => {
                "its extendedKeyUsage extension lists no purpose at all, so it allows none"
                    .to_string()
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let allowed = match usage {
                    Usage::ClientAuth => eku.client_auth,
                    Usage::ServerAuth => eku.server_auth,
                };
                if allowed {
                    continue;
                }
                format!("its extendedKeyUsage does not include {purpose}")
            }
            _ => continue,
        };
        return Rejection::new(
            Reason::WrongKeyUsage,
            format!(
                "{} cannot authenticate a {}: {why} (a certificate of a device chain has {purpose} in its extendedKeyUsage, or no extendedKeyUsage at all)",
                c.named(),
                match usage {
                    Usage::ClientAuth => "device",
                    Usage::ServerAuth => "server",
                }
            ),
        );
    }
    Rejection::new(
        Reason::WrongKeyUsage,
        if *e == E::EmptyEkuExtension {
            "a certificate's extendedKeyUsage lists no purpose at all, so it allows none"
                .to_string()
        } else {
            format!(
                "a certificate's extendedKeyUsage does not allow this use (a device certificate needs {purpose}, or no EKU at all)"
            )
        },
    )
}

/// What webpki says of a certificate on its own, as a leaf with no issuer to find: its parse
/// error, or the first of its own properties it refuses. It checks the distrusted keys first,
/// then the validity (`BadDerTime`), basicConstraints and extendedKeyUsage encodings (`BadDer`),
/// and only then looks for an issuer.
fn alone(c: &Cert<'_>, rerun: &Rerun<'_>) -> Option<E> {
    match EndEntityCert::try_from(c.der) {
        Err(e) => Some(e),
        Ok(ee) => ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[] as &[TrustAnchor<'_>],
                &[],
                rerun.now,
                key_usage(rerun.usage),
                None,
                None,
            )
            .err(),
    }
}

fn distrusted(p: &Presented<'_>, rerun: &Rerun<'_>) -> Rejection {
    // webpki's list of distrusted keys is private: ask it about each certificate alone.
    let culprit = p
        .path_candidates()
        .into_iter()
        .find(|c| alone(c, rerun) == Some(E::CertDistrusted));
    Rejection::new(
        Reason::DistrustedKey,
        match culprit {
            Some(c) => format!(
                "{} carries a public key the verifier distrusts: a CA key removed from public trust; re-issue the chain under another CA",
                c.named()
            ),
            None => "a certificate of the chain carries a public key the verifier distrusts".into(),
        },
    )
}

/// webpki says only "unknown issuer". Walk the presented names to say where the chain stops,
/// and decide whether the missing issuer is most likely an intermediate the device left out
/// (`missing-intermediate`) or a CA this hub does not trust (`unknown-issuer`). The rule, and
/// its limits, are in docs/architecture.md ("Missing intermediate or unknown CA").
fn unknown_issuer(p: &Presented<'_>, trust: &TrustStore) -> Rejection {
    // From the leaf up by issuer name, through presented certificates, each used once.
    let mut top = p.leaf;
    let mut used = vec![false; p.intermediates.len()];
    for _ in 0..=p.intermediates.len() {
        if top.issued(&top) {
            break;
        }
        match p
            .intermediates
            .iter()
            .enumerate()
            .find(|(i, c)| !used[*i] && c.issued(&top))
        {
            Some((i, c)) => {
                used[i] = true;
                top = *c;
            }
            None => break,
        }
    }
    let top_subject = top.subject();
    let missing = top.x509.issuer();
    let missing_text = missing.to_string();
    if trust.meta.iter().any(|a| a.subject_raw == missing.as_raw()) {
        return Rejection::new(
            Reason::BadSignature,
            format!(
                "{top_subject:?} names the trusted CA {missing_text:?} as issuer, but its signature does not verify with that CA's key: it was signed by another key with the same name"
            ),
        );
    }
    if top.issued(&top) {
        return Rejection::new(
            Reason::UnknownIssuer,
            format!("the chain ends at the root {top_subject:?}, which is not a trusted CA"),
        );
    }
    if let Some(c) = p
        .intermediates
        .iter()
        .enumerate()
        .find(|(i, c)| used[*i] && c.issued(&top))
        .map(|(_, c)| c)
    {
        return Rejection::new(
            Reason::UnknownIssuer,
            format!(
                "the chain goes round in a circle: {top_subject:?} was issued by {:?}, which is below it in the chain, and none of them was issued by a trusted CA",
                c.subject()
            ),
        );
    }
    if trust.is_empty() {
        return Rejection::new(
            Reason::UnknownIssuer,
            format!("{top_subject:?} was issued by {missing_text:?}, and no CA is trusted at all"),
        );
    }

    // The missing issuer is a trusted CA under another encoding of its name: the same key (the
    // authority key identifier is the CA's subject key identifier) or the same name as text.
    let aki = authority_key_id(top.x509);
    if let Some(a) = trust
        .meta
        .iter()
        .find(|a| (aki.is_some() && a.key_id == aki) || a.subject == missing_text)
    {
        let how = if a.subject == missing_text {
            "reads like the subject of the trusted CA"
        } else {
            "names, by its authority key identifier, the key of the trusted CA"
        };
        return Rejection::new(
            Reason::UnknownIssuer,
            format!(
                "{top_subject:?} was issued by {missing_text:?}, which {how} {:?}, but that CA's subject is encoded differently: issuer and subject must be equal byte for byte (attributes, order, string types); register the CA certificate whose subject is exactly this issuer",
                a.subject
            ),
        );
    }

    // Evidence that the missing issuer is below a trusted CA, strongest first.
    // 1. A presented certificate that does not connect to the chain leads to a trusted CA: the
    //    device sent part of a trusted tree, with a gap.
    let stray = p
        .intermediates
        .iter()
        .enumerate()
        .filter(|(i, _)| !used[*i])
        .find_map(|(_, c)| leads_to_anchor(c, p, trust).map(|a| (*c, a)));
    if let Some((c, anchor)) = stray {
        return Rejection::new(
            Reason::MissingIntermediate,
            format!(
                "{top_subject:?} was issued by {missing_text:?}, which was not presented: the presented {:?} leads to the trusted CA {anchor:?} but does not connect to {top_subject:?}; present the leaf and every intermediate (chain.pem)",
                c.subject()
            ),
        );
    }
    // 2. The missing issuer's name shares an organization with a trusted CA's subject.
    let org = Organization::of(missing);
    if let Some((a, shared)) = trust
        .meta
        .iter()
        .find_map(|a| org.shared_with(&a.organization).map(|s| (a, s)))
    {
        return Rejection::new(
            Reason::MissingIntermediate,
            format!(
                "{top_subject:?} was issued by {missing_text:?}, which was not presented; it shares {shared} with the trusted CA {:?}, so it is most likely an intermediate below it: present the leaf and every intermediate (chain.pem)",
                a.subject
            ),
        );
    }
    // 3. Evidence against: both sides name organizations, and none is shared.
    let foreign = !org.is_empty() && trust.meta.iter().all(|a| !a.organization.is_empty());
    let what = if top.position == 0 {
        if p.intermediates.is_empty() {
            "only the leaf was presented: "
        } else {
            "no presented intermediate connects to the leaf: "
        }
    } else {
        ""
    };
    if foreign {
        return Rejection::new(
            Reason::UnknownIssuer,
            format!(
                "{what}{top_subject:?} was issued by {missing_text:?}, which is not a trusted CA, and whose organization is none of the trusted CAs'"
            ),
        );
    }
    // 4. No evidence either way. A device that presents nothing above its leaf most often
    //    sends its certificate without its chain; one that presents intermediates ending at an
    //    unknown name most often comes from a CA this hub does not trust.
    if top.position == 0 {
        return Rejection::new(
            Reason::MissingIntermediate,
            format!(
                "{what}{top_subject:?} was issued by {missing_text:?}, which is neither presented nor trusted; if it is an intermediate below a registered CA, present the leaf and its intermediates (chain.pem); otherwise register that CA"
            ),
        );
    }
    Rejection::new(
        Reason::UnknownIssuer,
        format!(
            "the chain ends at {top_subject:?}, issued by {missing_text:?}, which is neither presented nor a trusted CA (if {missing_text:?} is an intermediate below a registered CA, the device must present it too)"
        ),
    )
}

/// The trusted CA a presented certificate leads to by issuer names through the presented
/// certificates, if any.
fn leads_to_anchor(start: &Cert<'_>, p: &Presented<'_>, trust: &TrustStore) -> Option<String> {
    let mut current = *start;
    let mut seen = vec![current.position];
    for _ in 0..=p.intermediates.len() {
        let issuer = current.x509.issuer().as_raw();
        if let Some(a) = trust.meta.iter().find(|a| a.subject_raw == issuer) {
            return Some(a.subject.clone());
        }
        let next = p
            .intermediates
            .iter()
            .find(|c| !seen.contains(&c.position) && c.issued(&current))?;
        seen.push(next.position);
        current = *next;
    }
    None
}
