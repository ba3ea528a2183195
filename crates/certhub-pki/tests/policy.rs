//! The device chain policy, one named reason at a time, on PKIs built in memory.

use certhub_pki::{CertificateDer, Reason, TrustStore, Usage, verify_chain, verify_device_chain};
use certhub_testkit::{Ca, NOT_AFTER, NOT_BEFORE, NOW, at, now, validity};
use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa};

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

#[test]
fn leaf_alone_is_a_missing_intermediate() {
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    let (r, detail) = reason(&widget.chain[..1], &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
    assert!(detail.contains("Technician-Z CA"), "{detail}");
}

#[test]
fn a_gap_in_the_chain_is_a_missing_intermediate() {
    let sc = supply_chain();
    let widget = sc.technician.device("widget-1");
    // Factory-Y sent, Technician-Z forgotten.
    let chain = vec![widget.cert.clone(), sc.factory.cert.clone()];
    let (r, detail) = reason(&chain, &trust(&[&sc.root]), None);
    assert_eq!(r, Reason::MissingIntermediate, "{detail}");
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
        dn.push(rcgen::DnType::CommonName, "Company-X Root CA");
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
    assert!(names.contains("issuer-not-ca") && names.contains("chain-too-long"));
    assert!(
        names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
    );
}
