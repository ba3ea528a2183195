//! Every refusal name the path builder (rustls-webpki) can lead to, one at a time: a real chain,
//! built in memory, refused with exactly that name, and a detail that names the certificate at
//! fault. Where a refusal needs a certificate rcgen will not make (a v1 certificate, two
//! signature algorithms that disagree), a certificate rcgen made is edited and signed again by
//! its issuer's key, so only the property under test is wrong.
//!
//! `chain-invalid` has no test: it is left for webpki errors no presented chain can provoke
//! under the device policy (revocation errors: certhub passes no CRLs; server-name errors: it
//! checks no server name). The names certhub decides before webpki runs (no-certificate, the
//! leaf's CA flag, keyCertSign, key and signature algorithms, validity, cn-mismatch) and the
//! unknown-issuer / missing-intermediate split are tested in policy.rs.

use std::net::{IpAddr, Ipv4Addr};

use certhub_pki::{CertificateDer, Reason, TrustStore, verify_device_chain};
use certhub_testkit::{Ca, NOT_AFTER, NOT_BEFORE, NOW, now, validity};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, NameConstraints, PublicKeyData,
    SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};

fn trust(cas: &[&Ca]) -> TrustStore {
    TrustStore::new(cas.iter().map(|c| c.cert.clone())).expect("trust store")
}

#[track_caller]
fn refused(chain: &[CertificateDer<'static>], store: &TrustStore) -> (Reason, String) {
    let r = verify_device_chain(chain, store, None, now()).expect_err("must be refused");
    (r.reason, r.detail)
}

#[track_caller]
fn admitted(chain: &[CertificateDer<'static>], store: &TrustStore) {
    if let Err(r) = verify_device_chain(chain, store, None, now()) {
        panic!("must be admitted: {r}");
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("IA5"))
}

/// `leaf` followed by `cas` (DER), as a device presents it.
fn chain(leaf: CertificateDer<'static>, cas: &[&Ca]) -> Vec<CertificateDer<'static>> {
    std::iter::once(leaf)
        .chain(cas.iter().map(|c| c.cert.clone()))
        .collect()
}

/// Minimal DER surgery: enough to take a certificate apart and put it back together.
mod der {
    fn header(b: &[u8]) -> (usize, usize) {
        match b[1] {
            l if l < 0x80 => (2, 2 + usize::from(l)),
            0x81 => (3, 3 + usize::from(b[2])),
            0x82 => (4, 4 + (usize::from(b[2]) << 8 | usize::from(b[3]))),
            other => panic!("unsupported DER length form {other:#x}"),
        }
    }

    /// The TLVs inside the constructed TLV `tlv`.
    pub fn children(tlv: &[u8]) -> Vec<Vec<u8>> {
        let (start, end) = header(tlv);
        let mut body = &tlv[start..end];
        let mut out = Vec::new();
        while !body.is_empty() {
            let (_, len) = header(body);
            out.push(body[..len].to_vec());
            body = &body[len..];
        }
        out
    }

    pub fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n <= 0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }

    pub fn sequence(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }
}

/// `cert` with its TBSCertificate fields edited by `edit`, signed again with `key` (the key of
/// its issuer, with the same algorithm).
fn resigned(
    cert: &CertificateDer<'_>,
    key: &KeyPair,
    edit: impl FnOnce(&mut Vec<Vec<u8>>),
) -> CertificateDer<'static> {
    let [tbs, alg, _] = <[Vec<u8>; 3]>::try_from(der::children(cert)).expect("3 parts");
    let mut fields = der::children(&tbs);
    edit(&mut fields);
    let tbs = der::sequence(&fields);
    let signature = key.sign(&tbs).expect("sign");
    let bits = der::tlv(0x03, &[&[0u8][..], &signature].concat());
    CertificateDer::from(der::sequence(&[tbs, alg, bits]))
}

/// A version 1 certificate: no version field (v1 is the default) and no extensions.
fn as_v1(fields: &mut Vec<Vec<u8>>) {
    fields.retain(|f| f[0] != 0xa0 && f[0] != 0xa3);
}

fn critical(oid: &[u64], content: Vec<u8>) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(oid, content);
    ext.set_criticality(true);
    ext
}

/// An OID under a private arc, that no verifier knows.
const UNKNOWN_OID: [u64; 9] = [1, 3, 6, 1, 4, 1, 55738, 666, 1];

#[test]
fn issuer_not_ca_names_the_certificate() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let store = trust(&[&root]);
    // basicConstraints CA:FALSE, in the middle of a four-level chain.
    let technician = factory.intermediate_with("Technician-Z CA", |p| p.is_ca = IsCa::ExplicitNoCa);
    let leaf = technician.device("widget-1");
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::IssuerNotCa, "{detail}");
    assert!(
        detail.contains("\"CN=Technician-Z CA\"")
            && detail.contains("CA:FALSE")
            && detail.contains("CN=widget-1"),
        "{detail}"
    );
    // No basicConstraints at all.
    let bare = factory.intermediate_with("Technician-W CA", |p| p.is_ca = IsCa::NoCa);
    let (r, detail) = refused(&bare.device("widget-2").chain, &store);
    assert_eq!(r, Reason::IssuerNotCa, "{detail}");
    assert!(
        detail.contains("\"CN=Technician-W CA\"") && detail.contains("no basicConstraints"),
        "{detail}"
    );
    // The same place with a CA admits.
    admitted(
        &factory.intermediate("Technician-Z CA").device("w").chain,
        &store,
    );
}

#[test]
fn more_than_six_intermediates_is_chain_too_long() {
    let root = Ca::root("Company-X Root CA");
    let store = trust(&[&root]);
    let mut cas = vec![root.intermediate("Level 1 CA")];
    for n in 2..=7 {
        let next = cas[cas.len() - 1].intermediate(&format!("Level {n} CA"));
        cas.push(next);
    }
    // Six intermediates are the most the path builder follows...
    admitted(&cas[5].device("w").chain, &store);
    // ...and seven are one too many.
    let (r, detail) = refused(&cas[6].device("w").chain, &store);
    assert_eq!(r, Reason::ChainTooLong, "{detail}");
    assert!(detail.contains("6 intermediates"), "{detail}");
}

#[test]
fn chains_built_to_exhaust_the_verifier_are_chain_too_complex() {
    let root = Ca::root("Company-X Root CA");
    let store = trust(&[&root]);

    // 11 x 10 forged paths that each reach the trusted CA's name: one signature check each.
    let factories: Vec<Ca> = (0..10)
        .map(|_| Ca::root("Company-X Root CA").intermediate("Factory-Y CA"))
        .collect();
    let technicians: Vec<Ca> = (0..11)
        .map(|i| factories[i % 10].intermediate("Technician-Z CA"))
        .collect();
    let leaf = technicians[0].device("w");
    let mut presented = vec![leaf.cert.clone()];
    presented.extend(technicians.iter().map(|c| c.cert.clone()));
    presented.extend(factories.iter().map(|c| c.cert.clone()));
    let (r, detail) = refused(&presented, &store);
    assert_eq!(r, Reason::ChainTooComplex, "{detail}");
    assert!(detail.contains("signature checks"), "{detail}");

    // 12 self-issued certificates with one name: every order is a candidate path.
    let loops: Vec<Ca> = (0..12).map(|_| Ca::root("Loop CA")).collect();
    let leaf = loops[0].device("w");
    let presented = chain(leaf.cert, &loops.iter().collect::<Vec<_>>());
    let (r, detail) = refused(&presented, &store);
    assert_eq!(r, Reason::ChainTooComplex, "{detail}");
    assert!(detail.contains("path-building steps"), "{detail}");

    // 600 names against 600 name constraints.
    let wide = root.intermediate_with("Factory-Y CA", |p| {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: (0..600)
                .map(|i| GeneralSubtree::DnsName(format!("zone{i}.example")))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
    });
    let leaf = wide.leaf_with("w", |p| {
        p.subject_alt_names = (0..600)
            .map(|i| dns(&format!("w.zone{i}.example")))
            .collect();
    });
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::ChainTooComplex, "{detail}");
    assert!(detail.contains("name-constraint comparisons"), "{detail}");
}

#[test]
fn a_name_outside_a_cas_constraints_is_name_constraints_violated() {
    let root = Ca::root("Company-X Root CA");
    let store = trust(&[&root]);
    let factory = root.intermediate_with("Factory-Y CA", |p| {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("devices.example.com".into())],
            excluded_subtrees: Vec::new(),
        });
    });
    admitted(
        &factory
            .leaf_with("w", |p| {
                p.subject_alt_names = vec![dns("w.devices.example.com")]
            })
            .chain,
        &store,
    );
    let outside = factory.leaf_with("w", |p| p.subject_alt_names = vec![dns("w.example.org")]);
    let (r, detail) = refused(&outside.chain, &store);
    assert_eq!(r, Reason::NameConstraintsViolated, "{detail}");
    assert!(
        detail.contains("\"CN=Factory-Y CA\"")
            && detail.contains("permits DNS devices.example.com"),
        "{detail}"
    );

    // A trusted root's own constraints are named too; a directoryName constraint cannot be
    // evaluated and admits nothing.
    let constrained = Ca::root_with("Company-X Root CA", |p| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Company-X");
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DirectoryName(dn)],
            excluded_subtrees: Vec::new(),
        });
    });
    let (r, detail) = refused(
        &constrained.intermediate("Factory-Y CA").device("w").chain,
        &trust(&[&constrained]),
    );
    assert_eq!(r, Reason::NameConstraintsViolated, "{detail}");
    assert!(
        detail.contains("the trusted CA \"CN=Company-X Root CA\"")
            && detail.contains("directoryName"),
        "{detail}"
    );
}

#[test]
fn constraints_that_cannot_be_evaluated_are_malformed_name_constraints() {
    let root = Ca::root("Company-X Root CA");
    let store = trust(&[&root]);
    // A wildcard is not allowed in a dNSName constraint.
    let wildcard = root.intermediate_with("Factory-Y CA", |p| {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("*.example.com".into())],
            excluded_subtrees: Vec::new(),
        });
    });
    let leaf = wildcard.leaf_with("w", |p| p.subject_alt_names = vec![dns("w.example.com")]);
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::MalformedNameConstraints, "{detail}");
    assert!(
        detail.contains("\"CN=Factory-Y CA\"") && detail.contains("dNSName"),
        "{detail}"
    );
    // 255.0.255.0 is not a CIDR prefix.
    let sparse = root.intermediate_with("Factory-Y CA", |p| {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::IpAddress(CidrSubnet::V4(
                [10, 0, 0, 0],
                [255, 0, 255, 0],
            ))],
            excluded_subtrees: Vec::new(),
        });
    });
    let leaf = sparse.leaf_with("w", |p| {
        p.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 3)))];
    });
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::MalformedNameConstraints, "{detail}");
    assert!(
        detail.contains("IP 10.0.0.0/255.0.255.0") && detail.contains("CIDR"),
        "{detail}"
    );
}

#[test]
fn a_dns_name_that_is_no_dns_name_is_a_malformed_certificate() {
    // Only checked where a name constraint applies to it.
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate_with("Factory-Y CA", |p| {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("example.com".into())],
            excluded_subtrees: Vec::new(),
        });
    });
    let leaf = factory.leaf_with("w", |p| p.subject_alt_names = vec![dns("w..example.com")]);
    let (r, detail) = refused(&leaf.chain, &trust(&[&root]));
    assert_eq!(r, Reason::MalformedCertificate, "{detail}");
    assert!(
        detail.contains("the leaf \"CN=w\"") && detail.contains("w..example.com"),
        "{detail}"
    );
}

#[test]
fn an_unknown_critical_extension_is_unsupported_critical_extension() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let store = trust(&[&root]);
    let ext = || critical(&UNKNOWN_OID, vec![0x05, 0x00]);
    // In the leaf.
    let leaf = factory.leaf_with("w", |p| p.custom_extensions = vec![ext()]);
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::UnsupportedCriticalExtension, "{detail}");
    assert!(
        detail.contains("the leaf") && detail.contains("1.3.6.1.4.1.55738.666.1"),
        "{detail}"
    );
    // In an intermediate.
    let technician = factory.intermediate_with("Technician-Z CA", |p| {
        p.custom_extensions = vec![ext()];
    });
    let (r, detail) = refused(&technician.device("w").chain, &store);
    assert_eq!(r, Reason::UnsupportedCriticalExtension, "{detail}");
    assert!(
        detail.contains("\"CN=Technician-Z CA\"") && detail.contains("1.3.6.1.4.1.55738.666.1"),
        "{detail}"
    );
    // The same extension, not critical, is ignored.
    let fine = factory.leaf_with("w", |p| {
        p.custom_extensions = vec![CustomExtension::from_oid_content(&UNKNOWN_OID, vec![5, 0])];
    });
    admitted(&fine.chain, &store);
}

#[test]
fn a_version_1_certificate_is_unsupported_certificate_version() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let store = trust(&[&root]);
    // A v1 leaf, properly signed by its issuer.
    let leaf = factory.device("w");
    let v1 = resigned(&leaf.cert, &factory.key, as_v1);
    let (r, detail) = refused(&chain(v1, &[&factory]), &store);
    assert_eq!(r, Reason::UnsupportedCertificateVersion, "{detail}");
    assert!(
        detail.contains("the leaf \"CN=w\"") && detail.contains("version 1"),
        "{detail}"
    );
    // A v1 intermediate (as old `openssl x509 -req` made them), properly signed by the root.
    let technician = factory.intermediate("Technician-Z CA");
    let v1 = resigned(&technician.cert, &factory.key, as_v1);
    let leaf = technician.device("w");
    let presented = vec![leaf.cert.clone(), v1, factory.cert.clone()];
    let (r, detail) = refused(&presented, &store);
    assert_eq!(r, Reason::UnsupportedCertificateVersion, "{detail}");
    assert!(
        detail.contains("intermediate 1 \"CN=Technician-Z CA\""),
        "{detail}"
    );
}

#[test]
fn a_broken_certificate_beside_the_chain_does_not_hide_the_reason() {
    // webpki parses every presented certificate it considers and ranks a parse error above
    // "unknown issuer"; a v1 certificate the chain does not need must not take the blame.
    let root = Ca::root("Company-X Root CA");
    let store = trust(&[&root]);
    let junk_issuer = Ca::root("Junk Root");
    let junk = resigned(
        &junk_issuer.intermediate("Junk CA").cert,
        &junk_issuer.key,
        as_v1,
    );
    let other = Ca::root("Other Root").intermediate("Other CA");
    let mut presented = other.device("w").chain;
    presented.push(junk.clone());
    let (r, detail) = refused(&presented, &store);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    // And a good chain with the same junk is admitted.
    let mut good = root.intermediate("Factory-Y CA").device("w").chain;
    good.push(junk);
    admitted(&good, &store);
}

#[test]
fn an_extension_met_twice_is_duplicate_extension() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let store = trust(&[&root]);
    // A second extendedKeyUsage (clientAuth) beside the one rcgen writes.
    let eku = || {
        CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            vec![
                0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
            ],
        )
    };
    let leaf = factory.leaf_with("w", |p| p.custom_extensions = vec![eku()]);
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::DuplicateExtension, "{detail}");
    assert!(
        detail.contains("the leaf \"CN=w\"") && detail.contains("2.5.29.37"),
        "{detail}"
    );
    let technician = factory.intermediate_with("Technician-Z CA", |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.custom_extensions = vec![eku()];
    });
    let (r, detail) = refused(&technician.device("w").chain, &store);
    assert_eq!(r, Reason::DuplicateExtension, "{detail}");
    assert!(detail.contains("\"CN=Technician-Z CA\""), "{detail}");
}

#[test]
fn two_signature_algorithms_that_disagree_are_signature_algorithm_mismatch() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let leaf = factory.device("w");
    // The TBSCertificate says ecdsa-with-SHA256 (what rcgen signed with); the outer field is
    // changed to ecdsa-with-SHA384.
    let [tbs, _, sig] = <[Vec<u8>; 3]>::try_from(der::children(&leaf.cert)).expect("3 parts");
    let sha384 = vec![
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
    ];
    let edited = CertificateDer::from(der::sequence(&[tbs, sha384, sig]));
    let (r, detail) = refused(&chain(edited, &[&factory]), &trust(&[&root]));
    assert_eq!(r, Reason::SignatureAlgorithmMismatch, "{detail}");
    assert!(
        detail.contains("the leaf \"CN=w\"") && detail.contains("ecdsa-with-SHA384"),
        "{detail}"
    );
}

#[test]
fn a_validity_that_ends_before_it_starts_is_invalid_validity_period() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let store = trust(&[&root]);
    let leaf = factory.leaf_with("w", |p| validity(p, NOW + 10, NOW - 10));
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::InvalidValidityPeriod, "{detail}");
    assert!(detail.contains("the leaf \"CN=w\""), "{detail}");
    let backwards = root.intermediate_with("Factory-Y CA", |p| validity(p, NOT_AFTER, NOT_BEFORE));
    let (r, detail) = refused(&backwards.device("w").chain, &store);
    assert_eq!(r, Reason::InvalidValidityPeriod, "{detail}");
    assert!(
        detail.contains("intermediate 1 \"CN=Factory-Y CA\""),
        "{detail}"
    );
}

/// A P-384 public key whose private key we do not have: the subjectPublicKey bits (the EC
/// point).
struct ForeignKey(Vec<u8>);

impl PublicKeyData for ForeignKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

#[test]
fn a_distrusted_ca_key_is_distrusted_key() {
    // One of the public keys rustls-webpki 0.103 distrusts (a CA key removed from public trust;
    // the file is its SubjectPublicKeyInfo without the outer SEQUENCE header, as webpki keeps it).
    let spki = der::tlv(0x30, include_bytes!("data/distrusted-spki-contents.der"));
    let [algorithm, bits] = <[Vec<u8>; 2]>::try_from(der::children(&spki)).expect("SPKI");
    assert_eq!(
        algorithm,
        [
            0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
            0x81, 0x04, 0x00, 0x22
        ],
        "an EC P-384 key"
    );
    // BIT STRING: tag, length, no unused bits, then the point.
    let key = ForeignKey(bits[3..].to_vec());
    let params = |cn: &str, serial: u8, ca: bool| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from_slice(&[1, serial]));
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        validity(&mut p, NOT_BEFORE, NOT_AFTER);
        p
    };
    let root_key = KeyPair::generate().expect("key");
    let root_params = params("Company-X Root CA", 1, true);
    let root = root_params.self_signed(&root_key).expect("root");
    let ca_params = params("Distrusted CA", 2, true);
    let ca = ca_params
        .signed_by(&key, &Issuer::from_params(&root_params, &root_key))
        .expect("intermediate");
    // The leaf cannot be signed by that key (we do not have it): another key signs it in the
    // CA's name. The distrust check comes before any signature is looked at.
    let stand_in = KeyPair::generate().expect("key");
    let leaf = params("w", 3, false)
        .signed_by(
            &KeyPair::generate().expect("key"),
            &Issuer::from_params(&ca_params, &stand_in),
        )
        .expect("leaf");
    let store = TrustStore::new([root.der().clone()]).expect("trust");
    let (r, detail) = refused(&[leaf.der().clone(), ca.der().clone()], &store);
    assert_eq!(r, Reason::DistrustedKey, "{detail}");
    assert!(
        detail.contains("intermediate 1 \"CN=Distrusted CA\""),
        "{detail}"
    );
}

#[test]
fn an_empty_or_wrong_extended_key_usage_is_wrong_key_usage() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let store = trust(&[&root]);
    // An extendedKeyUsage extension with no purpose allows none.
    let empty = factory.leaf_with("w", |p| {
        p.extended_key_usages.clear();
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            vec![0x30, 0x00],
        )];
    });
    let (r, detail) = refused(&empty.chain, &store);
    assert_eq!(r, Reason::WrongKeyUsage, "{detail}");
    assert!(
        detail.contains("the leaf \"CN=w\"") && detail.contains("no purpose"),
        "{detail}"
    );
    // The extendedKeyUsage of an intermediate binds the chain below it too.
    let servers = factory.intermediate_with("Technician-Z CA", |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let (r, detail) = refused(&servers.device("w").chain, &store);
    assert_eq!(r, Reason::WrongKeyUsage, "{detail}");
    assert!(
        detail.contains("\"CN=Technician-Z CA\"") && detail.contains("clientAuth"),
        "{detail}"
    );
}

#[test]
fn a_path_length_violation_names_the_ca() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate_with("Factory-Y CA", |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    });
    let technician = factory.intermediate("Technician-Z CA");
    let (r, detail) = refused(&technician.device("w").chain, &trust(&[&root]));
    assert_eq!(r, Reason::PathLengthExceeded, "{detail}");
    assert!(
        detail.contains("\"CN=Factory-Y CA\"") && detail.contains("pathLenConstraint 0"),
        "{detail}"
    );
}

#[test]
fn bytes_only_the_path_builder_cannot_read_are_a_malformed_certificate() {
    // x509-parser reads these certificates; rustls-webpki does not (BadDer, BadDerTime).
    // Each detail names the certificate.
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let store = trust(&[&root]);
    // A subjectAltName whose value is not a SEQUENCE.
    let leaf = factory.leaf_with("w", |p| {
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            vec![0x05, 0x00],
        )];
    });
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::MalformedCertificate, "{detail}");
    assert!(
        detail.contains("the leaf \"CN=w\"") && detail.contains("BadDer"),
        "{detail}"
    );
    // An iPAddress of 8 bytes in the subjectAltName, read because a name constraint applies.
    let constrained = root.intermediate_with("Factory-Y CA", |p| {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::IpAddress(CidrSubnet::V4(
                [10, 0, 0, 0],
                [255, 0, 0, 0],
            ))],
            excluded_subtrees: Vec::new(),
        });
    });
    let leaf = constrained.leaf_with("w", |p| {
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            vec![0x30, 0x0a, 0x87, 0x08, 10, 0, 0, 1, 255, 255, 255, 0],
        )];
    });
    let (r, detail) = refused(&leaf.chain, &store);
    assert_eq!(r, Reason::MalformedCertificate, "{detail}");
    assert!(
        detail.contains("the leaf \"CN=w\"") && detail.contains("iPAddress of 8 bytes"),
        "{detail}"
    );
    // An intermediate whose notAfter is a UTCTime without seconds (DER requires them).
    let technician = factory.intermediate("Technician-Z CA");
    let no_seconds = resigned(&technician.cert, &factory.key, |fields| {
        let utc = |t: &str| der::tlv(0x17, t.as_bytes());
        fields[4] = der::sequence(&[utc("250101000000Z"), utc("3401010000Z")]);
    });
    let presented = vec![
        technician.device("w").cert,
        no_seconds,
        factory.cert.clone(),
    ];
    let (r, detail) = refused(&presented, &store);
    assert_eq!(r, Reason::MalformedCertificate, "{detail}");
    assert!(
        detail.contains("intermediate 1 \"CN=Technician-Z CA\"")
            && detail.contains("validity time"),
        "{detail}"
    );
}

/// webpki takes a trust anchor as a name and a key: a registered CA's own pathLenConstraint
/// is applied by certhub (a root made for leaves only admits no intermediate).
#[test]
fn a_registered_cas_path_length_is_applied() {
    let root = Ca::root_with("Leaves-Only Root CA", |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    });
    let store = trust(&[&root]);
    admitted(&root.device("w").chain, &store);
    let factory = root.intermediate("Factory-Y CA");
    let (r, detail) = refused(&factory.device("w").chain, &store);
    assert_eq!(r, Reason::PathLengthExceeded, "{detail}");
    assert!(
        detail.contains("Leaves-Only Root CA") && detail.contains("allows 0"),
        "{detail}"
    );
    // The same check when the path is remembered: a second time is refused the same way.
    assert_eq!(
        refused(&factory.device("w2").chain, &store).0,
        Reason::PathLengthExceeded
    );
}

/// An intermediate whose keyUsage does not include keyCertSign may not sign certificates.
#[test]
fn an_intermediate_without_key_cert_sign_is_wrong_key_usage() {
    let root = Ca::root("Company-X Root CA");
    let store = trust(&[&root]);
    let signer = root.intermediate_with("Factory-Y CA", |p| {
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    });
    let (r, detail) = refused(&signer.device("w").chain, &store);
    assert_eq!(r, Reason::WrongKeyUsage, "{detail}");
    assert!(
        detail.contains("Factory-Y CA") && detail.contains("keyCertSign"),
        "{detail}"
    );
}
