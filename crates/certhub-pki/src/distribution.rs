//! CRL distribution points: where the certificates of the chains devices present say their
//! issuers publish CRLs. A [`TrustStore`](crate::TrustStore) notes each new (issuer key, URL)
//! it meets in a verified chain, with the issuer's certificates up to the anchor, so the hub
//! can fetch that CRL and check it against the same chain. Known points cost a hash lookup per
//! connect.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

use crate::revocation::KeyId;

/// Most distinct points a trust store notes: the certificates were signed by a verified CA,
/// but a CA that names a new URL in every certificate must not grow the hub without bound.
const MAX_POINTS: usize = 10_000;

/// The longest URL taken.
const MAX_URL: usize = 2048;

/// The `http://` URLs in a certificate's cRLDistributionPoints that name a complete CRL of its
/// issuer: full names only, without a subset of reasons (a partitioned CRL) or a CRL issuer of
/// its own (an indirect CRL), which certhub does not take. LDAP and HTTPS URLs are left out
/// (RFC 5280 4.2.1.13 names HTTP; a CRL is signed, so it needs no TLS).
pub fn crl_urls<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() else {
            continue;
        };
        for point in points.iter() {
            if point.reasons.is_some() || point.crl_issuer.is_some() {
                continue;
            }
            let Some(DistributionPointName::FullName(names)) = &point.distribution_point else {
                continue;
            };
            for name in names {
                if let GeneralName::URI(uri) = name
                    && uri.len() <= MAX_URL
                    && uri
                        .get(..7)
                        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
                    && uri.is_ascii()
                {
                    urls.push(*uri);
                }
            }
        }
    }
    urls
}

/// A distribution point met in a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlPoint {
    /// The trust anchor the chain reached (its index in the store).
    pub anchor_index: usize,
    /// Where the CRL is published.
    pub url: String,
    /// The CRL issuer: the [`KeyId`] and subject of the certificate above the one that named
    /// the URL.
    pub issuer_key: KeyId,
    pub issuer_subject: String,
    /// The CRL issuer's certificate and those above it, without the anchor (empty when the
    /// anchor itself issues the CRL): what [`read_crl_for`](crate::read_crl_for) checks the
    /// fetched CRL against.
    pub issuer_chain: Vec<CertificateDer<'static>>,
}

/// The points a store has met; the new ones wait for the hub to take them.
#[derive(Debug, Default)]
pub(crate) struct CrlPoints {
    seen: RwLock<HashMap<KeyId, Vec<String>>>,
    fresh: Mutex<Vec<CrlPoint>>,
}

impl CrlPoints {
    pub(crate) fn is_known(&self, issuer_key: &KeyId, url: &str) -> bool {
        self.seen.read().is_ok_and(|seen| {
            seen.get(issuer_key)
                .is_some_and(|urls| urls.iter().any(|u| u == url))
        })
    }

    /// Notes a point unless it is known or the store holds its most.
    pub(crate) fn note(&self, point: CrlPoint) {
        let Ok(mut seen) = self.seen.write() else {
            return;
        };
        if seen.values().map(Vec::len).sum::<usize>() >= MAX_POINTS {
            return;
        }
        let urls = seen.entry(point.issuer_key).or_default();
        if urls.contains(&point.url) {
            return;
        }
        urls.push(point.url.clone());
        if let Ok(mut fresh) = self.fresh.lock() {
            fresh.push(point);
        }
    }

    /// Puts back points taken but not recorded (the hub's store failed): taken again next time.
    pub(crate) fn requeue(&self, points: Vec<CrlPoint>) {
        if let Ok(mut fresh) = self.fresh.lock() {
            fresh.extend(points);
        }
    }

    pub(crate) fn take(&self) -> Vec<CrlPoint> {
        self.fresh
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }
}
