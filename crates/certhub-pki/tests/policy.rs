//! The device chain policy, one named reason at a time, on PKIs built in memory.

use certhub_pki::{CertificateDer, Reason, TrustStore, Usage, verify_chain, verify_device_chain};
use certhub_testkit::{Ca, NOT_AFTER, NOT_BEFORE, NOW, at, now, validity};
use rcgen::{BasicConstraints, DnType, ExtendedKeyUsagePurpose, IsCa};

fn trust(cas: &[&Ca]) -> TrustStore {
    TrustStore::new(cas.iter().map(|c| c.cert.clone())).expect("trust store")
}

fn reason(
    chain: &[CertificateDer<'static>],
    store: &TrustStore,
    id: Option<&str>,
) -> (Reason, String) {
    let r = verify_device_chain(chain, store, id, now()).expect_err("must be rejected");
    (r.reason, r.detail)
}

struct SupplyChain {
    root: Ca,
    factory: Ca,
    technician: Ca,
}

fn supply_chain() -> SupplyChain {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let technician = factory.intermediate("Technician-Z CA");
    SupplyChain {
        root,
        factory,
        technician,
    }
}

#[test]
fn four_levels_verify_and_name_the_anchor() {
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    let v = verify_device_chain(&widget.chain, &trust(&[&sc.root]), Some("widget-1"), now())
        .expect("trusted");
    assert_eq!(v.anchor_subject, "CN=Company-X Root CA");
    assert_eq!(
        v.path,
        [
            "CN=widget-1",
            "CN=Technician-Z CA",
            "CN=Factory-Y CA",
            "CN=Company-X Root CA"
        ]
    );
}

#[test]
fn intermediates_in_any_order_with_junk() {
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    let junk = Ca::root("Junk");
    let chain = vec![
        widget.cert.clone(),
        junk.cert.clone(),
        sc.factory.cert.clone(),
        sc.technician.cert.clone(),
    ];
    verify_device_chain(&chain, &trust(&[&sc.root]), Some("widget-1"), now()).expect("trusted");
}

#[test]
fn a_registered_intermediate_is_an_anchor_by_itself() {
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    let v = verify_device_chain(&widget.chain[..1], &trust(&[&sc.technician]), None, now())
        .expect("trusted by the intermediate");
    assert_eq!(v.anchor_subject, "CN=Technician-Z CA");
}

/// The same supply chain with the organization in every name, as `certhub pki demo` and the
/// README write it: `CN=..., O=Company-X`.
fn organized_supply_chain(org: &str) -> SupplyChain {
    let with_org = |p: &mut rcgen::CertificateParams| {
        p.distinguished_name.push(DnType::OrganizationName, org);
    };
    let root = Ca::root_with(&format!("{org} Root CA"), with_org);
    let factory = root.intermediate_with("Factory-Y CA", with_org);
    let technician = factory.intermediate_with("Technician-Z CA", with_org);
    SupplyChain {
        root,
        factory,
        technician,
    }
}

#[test]
fn leaf_alone_is_a_missing_intermediate() {
    // Names without an organization: no evidence either way. A leaf alone is most often a
    // device sending its certificate without chain.pem; the detail names both causes.
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    let (r, detail) = reason(&widget.chain[..1], &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
    assert!(
        detail.contains("only the leaf")
            && detail.contains("Technician-Z CA")
            && detail.contains("register that CA"),
        "{detail}"
    );
    // With the organization in the names, it is one cause.
    let sc = organized_supply_chain("Company-X");
    let widget = sc.technician.device("widget-1");
    let (r, detail) = reason(&widget.chain[..1], &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
    assert!(
        detail.contains("O=Company-X") && !detail.contains("register that CA"),
        "{detail}"
    );
}

#[test]
fn a_missing_middle_intermediate_of_a_trusted_organization_is_named() {
    // Company-X Root -> Factory-Y -> Technician-Z -> widget; the widget sends Technician-Z but
    // not Factory-Y.
    let sc = organized_supply_chain("Company-X");
    let widget = sc.technician.device("widget-1");
    let chain = vec![widget.cert.clone(), sc.technician.cert.clone()];
    let (r, detail) = reason(&chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
    assert!(
        detail.contains("issued by \"CN=Factory-Y CA, O=Company-X\"")
            && detail.contains("Company-X Root CA"),
        "{detail}"
    );
    // The organization is compared ignoring case.
    let sc = organized_supply_chain("COMPANY-X");
    let widget = sc.technician.device("widget-1");
    let chain = vec![widget.cert.clone(), sc.technician.cert.clone()];
    let root = organized_supply_chain("Company-X").root;
    let (r, detail) = reason(&chain, &trust(&[&root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
    // Domain components (an Active Directory CA's names) count as an organization too.
    let contoso = |p: &mut rcgen::CertificateParams| {
        let dc = DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 25]);
        let ia5 = rcgen::DnValue::Ia5String("contoso".try_into().expect("IA5"));
        p.distinguished_name.push(dc, ia5);
    };
    let root = Ca::root_with("Contoso Root CA", contoso);
    let issuing = root
        .intermediate_with("Contoso Policy CA", contoso)
        .intermediate_with("Contoso Issuing CA", contoso);
    let w = issuing.device("w");
    let (r, detail) = reason(&w.chain[..2], &trust(&[&root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
    assert!(detail.contains("DC=contoso"), "{detail}");
}

#[test]
fn a_missing_middle_intermediate_without_evidence_stays_an_unknown_issuer() {
    // The limit of the rule: with names that carry no organization, the chain above cannot be
    // told from another company's chain sent without its root. The detail says both.
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    let chain = vec![widget.cert.clone(), sc.technician.cert.clone()];
    let (r, detail) = reason(&chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(
        detail.contains("issued by \"CN=Factory-Y CA\"") && detail.contains("must present it too"),
        "{detail}"
    );
}

#[test]
fn a_gap_in_the_chain_is_a_missing_intermediate() {
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    // Factory-Y sent, Technician-Z forgotten: Factory-Y leads to the trusted root.
    let chain = vec![widget.cert.clone(), sc.factory.cert.clone()];
    let (r, detail) = reason(&chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
    assert!(
        detail.contains("issued by \"CN=Technician-Z CA\"")
            && detail.contains("the presented \"CN=Factory-Y CA\" leads to the trusted CA"),
        "{detail}"
    );
    // A presented certificate that leads nowhere trusted is no evidence.
    let other = Ca::root("Other Root").intermediate("Other CA");
    let junk = Ca::root("Junk Root").intermediate("Junk CA");
    let mut chain = other.device("widget-1").chain;
    chain.push(junk.cert.clone());
    let (r, detail) = reason(&chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
}

#[test]
fn another_organizations_chain_is_an_unknown_issuer() {
    let sc = organized_supply_chain("Company-X");
    let store = trust(&[&sc.root]);
    let other = organized_supply_chain("Other-Corp");
    let widget = other.technician.device("widget-1");
    // All intermediates, no root (what devices send).
    let (r, detail) = reason(&widget.chain, &store, None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(detail.contains("Other-Corp Root CA"), "{detail}");
    // A gap in it, or its leaf alone: still not this hub's CA.
    let gap = vec![widget.cert.clone(), other.technician.cert.clone()];
    assert_eq!(reason(&gap, &store, None).0, Reason::UnknownIssuer);
    let (r, detail) = reason(&widget.chain[..1], &store, None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(detail.contains("only the leaf"), "{detail}");
}

#[test]
fn an_issuer_name_encoded_unlike_the_trusted_ca_is_named() {
    // The trusted root's CN is a UTF8String; a CA signed by the same key names it with a
    // PrintableString. The path builder compares names byte for byte.
    let root = Ca::root("Company-X Root CA");
    let mut printable = rcgen::CertificateParams::default();
    printable.distinguished_name.push(
        DnType::CommonName,
        rcgen::DnValue::PrintableString("Company-X Root CA".try_into().expect("printable")),
    );
    printable.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut factory = rcgen::CertificateParams::default();
    factory
        .distinguished_name
        .push(DnType::CommonName, "Factory-Y CA");
    factory.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    factory.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, 1]));
    factory.use_authority_key_identifier_extension = true;
    validity(&mut factory, NOT_BEFORE, NOT_AFTER);
    let factory_key = rcgen::KeyPair::generate().expect("key");
    let factory_cert = factory
        .signed_by(
            &factory_key,
            &rcgen::Issuer::from_params(&printable, &root.key),
        )
        .expect("sign");
    let mut leaf = rcgen::CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "w");
    leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, 2]));
    validity(&mut leaf, NOT_BEFORE, NOT_AFTER);
    let leaf_cert = leaf
        .signed_by(
            &rcgen::KeyPair::generate().expect("key"),
            &rcgen::Issuer::from_params(&factory, &factory_key),
        )
        .expect("sign");
    let chain = vec![leaf_cert.der().clone(), factory_cert.der().clone()];
    let (r, detail) = reason(&chain, &trust(&[&root]), None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(
        detail.contains("encoded differently") && detail.contains("byte for byte"),
        "{detail}"
    );
}

#[test]
fn with_no_trusted_ca_nothing_is_missing() {
    let sc = supply_chain();
    let empty = TrustStore::new([]).expect("empty store");
    let (r, detail) = reason(&sc.technician.device("w").chain[..1], &empty, None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(detail.contains("no CA is trusted"), "{detail}");
}

#[test]
fn an_empty_issuer_name_is_malformed() {
    let sc = supply_chain();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "w");
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, 3]));
    validity(&mut p, NOT_BEFORE, NOT_AFTER);
    let mut nobody = rcgen::CertificateParams::default();
    nobody.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = p
        .signed_by(&key, &rcgen::Issuer::from_params(&nobody, &sc.root.key))
        .expect("sign");
    let (r, detail) = reason(&[leaf.der().clone()], &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::MalformedCertificate, "{detail}");
    assert!(detail.contains("issuer name is empty"), "{detail}");
}

#[test]
fn another_companys_chain_is_an_unknown_issuer() {
    let sc = supply_chain();
    let other = Ca::root("Other Root").intermediate("Other CA");
    let (r, detail) = reason(&other.device("widget-1").chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(detail.contains("Other"), "{detail}");
    // An untrusted root sent along is named as such.
    let lonely = Ca::root("Lonely Root");
    let mut chain = lonely.device("widget-3").chain;
    chain.push(lonely.cert.clone());
    let (r, detail) = reason(&chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(detail.contains("Lonely Root"), "{detail}");
}

#[test]
fn cn_must_equal_the_device_id_and_modules_use_a_slash() {
    let sc = supply_chain();
    let store = trust(&[&sc.root]);
    let (r, detail) = reason(
        &sc.technician.device("widget-1").chain,
        &store,
        Some("widget-2"),
    );
    assert_eq!(r, Reason::CnMismatch);
    assert!(
        detail.contains("widget-1") && detail.contains("widget-2"),
        "{detail}"
    );
    let module = sc.technician.device("widget-1/telemetry");
    verify_device_chain(&module.chain, &store, Some("widget-1/telemetry"), now()).expect("module");
    let (r, _) = reason(&module.chain, &store, Some("widget-1"));
    assert_eq!(r, Reason::CnMismatch);
}

#[test]
fn leaf_validity_is_named_both_ways() {
    let sc = supply_chain();
    let store = trust(&[&sc.root]);
    let expired = sc
        .technician
        .leaf_with("old", |p| validity(p, NOT_BEFORE, NOW - 1));
    let (r, detail) = reason(&expired.chain, &store, None);
    assert_eq!(r, Reason::CertificateExpired, "{detail}");
    let future = sc
        .technician
        .leaf_with("early", |p| validity(p, NOW + 3600, NOT_AFTER));
    assert_eq!(reason(&future.chain, &store, None).0, Reason::NotYetValid);
    // The same chain is fine at a time inside its window.
    verify_device_chain(&future.chain, &store, None, at(NOW + 7200)).expect("valid later");
}

#[test]
fn an_expired_intermediate_is_named() {
    let root = Ca::root("Company-X Root CA");
    let old = root.intermediate_with("Old Factory CA", |p| validity(p, NOT_BEFORE, NOW - 10));
    let (r, detail) = reason(&old.device("w").chain, &trust(&[&root]), None);
    assert_eq!(r, Reason::CertificateExpired, "{detail}");
    assert!(detail.contains("Old Factory CA"), "{detail}");
}

#[test]
fn an_expired_trust_anchor_is_refused() {
    // webpki never checks an anchor's validity; certhub must.
    let root = Ca::root_with("Expired Root", |p| validity(p, NOT_BEFORE, NOW - 10));
    let widget = root.intermediate("Factory-Y CA").device("w");
    let (r, detail) = reason(&widget.chain, &trust(&[&root]), None);
    assert_eq!(r, Reason::CertificateExpired, "{detail}");
    assert!(
        detail.contains("trust anchor") && detail.contains("Expired Root"),
        "{detail}"
    );
    let early = Ca::root_with("Future Root", |p| validity(p, NOW + 10, NOT_AFTER));
    let (r, _) = reason(&early.device("w").chain, &trust(&[&early]), None);
    assert_eq!(r, Reason::NotYetValid);
}

#[test]
fn a_renewed_anchor_with_the_same_key_still_admits() {
    // Two anchors, same name and key, one expired: the valid one is used.
    let root = Ca::root_with("Company-X Root CA", |p| validity(p, NOT_BEFORE, NOW - 10));
    let mut renewed_params = rcgen::CertificateParams::default();
    renewed_params.distinguished_name = {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(DnType::CommonName, "Company-X Root CA");
        dn
    };
    renewed_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    validity(&mut renewed_params, NOT_BEFORE, NOT_AFTER);
    let renewed = renewed_params
        .self_signed(&root.key)
        .expect("renew")
        .der()
        .clone();
    let widget = root.device("w");
    let store = TrustStore::new([root.cert.clone(), renewed]).expect("store");
    let v = verify_device_chain(&widget.chain, &store, None, now()).expect("renewed root admits");
    assert_eq!(v.anchor_index, 1);
}

#[test]
fn a_ca_certificate_never_authenticates_a_device() {
    let sc = supply_chain();
    let chain = sc.technician.chain.clone();
    let (r, _) = reason(&chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::CaUsedAsLeaf);
}

#[test]
fn path_length_constraints_hold() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate_with("Factory-Y CA", |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    });
    let technician = factory.intermediate("Technician-Z CA");
    let (r, detail) = reason(&technician.device("w").chain, &trust(&[&root]), None);
    assert_eq!(r, Reason::PathLengthExceeded, "{detail}");
    // Directly under the constrained CA a device is fine.
    verify_device_chain(&factory.device("w").chain, &trust(&[&root]), None, now()).expect("ok");
}

#[test]
fn a_forged_intermediate_with_the_right_name_is_a_bad_signature() {
    let sc = supply_chain();
    // An attacker's own "Factory-Y CA" (same name, another key) signs a Technician-Z.
    let forger = Ca::root("Factory-Y CA");
    let fake = forger.intermediate("Technician-Z CA");
    let chain = vec![fake.device("w").cert, fake.cert.clone()];
    let (r, detail) = reason(&chain, &trust(&[&sc.root, &sc.factory]), None);
    assert_eq!(r, Reason::BadSignature, "{detail}");
}

#[test]
fn a_server_only_leaf_cannot_authenticate_a_device() {
    let sc = supply_chain();
    let server = sc.technician.leaf_with("w", |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let (r, _) = reason(&server.chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::WrongKeyUsage);
    // The same leaf passes for server usage, which the conformance suite needs.
    verify_chain(
        &server.cert,
        &server.chain[1..],
        &trust(&[&sc.root]),
        now(),
        Usage::ServerAuth,
    )
    .expect("server usage");
    // No EKU at all is accepted for devices, as Azure does.
    let plain = sc
        .technician
        .leaf_with("w", |p| p.extended_key_usages.clear());
    verify_device_chain(&plain.chain, &trust(&[&sc.root]), None, now()).expect("no EKU");
}

#[test]
fn garbage_and_nothing_are_named() {
    let sc = supply_chain();
    let store = trust(&[&sc.root]);
    assert_eq!(reason(&[], &store, None).0, Reason::NoCertificate);
    let junk = vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
    assert_eq!(reason(&junk, &store, None).0, Reason::MalformedCertificate);
}

#[test]
fn only_cas_can_be_trust_anchors() {
    let sc = supply_chain();
    let widget = sc.technician.device("w");
    let e = TrustStore::new([widget.cert.clone()]).expect_err("a leaf is no anchor");
    assert!(e.to_string().contains("not a CA"), "{e}");
}

#[test]
fn every_reason_has_a_stable_distinct_name() {
    use std::collections::HashSet;
    let all = Reason::ALL;
    let names: HashSet<&str> = all.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), all.len());
    assert!(names.contains("issuer-not-ca") && names.contains("missing-intermediate"));
    assert!(
        names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
    );
}

#[test]
fn two_cas_that_issue_each_other_are_an_unknown_issuer() {
    let params = |cn: &str, serial: u8| {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, serial]));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        validity(&mut p, NOT_BEFORE, NOT_AFTER);
        p
    };
    let (a, b) = (params("Loop A CA", 1), params("Loop B CA", 2));
    let (ka, kb) = (
        rcgen::KeyPair::generate().expect("key"),
        rcgen::KeyPair::generate().expect("key"),
    );
    let a_cert = a
        .signed_by(&ka, &rcgen::Issuer::from_params(&b, &kb))
        .expect("a");
    let b_cert = b
        .signed_by(&kb, &rcgen::Issuer::from_params(&a, &ka))
        .expect("b");
    let mut leaf = params("w", 3);
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf
        .signed_by(
            &rcgen::KeyPair::generate().expect("key"),
            &rcgen::Issuer::from_params(&a, &ka),
        )
        .expect("leaf");
    let chain = [
        leaf.der().clone(),
        a_cert.der().clone(),
        b_cert.der().clone(),
    ];
    let (r, detail) = reason(&chain, &trust(&[&supply_chain().root]), None);
    assert_eq!(r, Reason::UnknownIssuer, "{detail}");
    assert!(detail.contains("circle"), "{detail}");
}
