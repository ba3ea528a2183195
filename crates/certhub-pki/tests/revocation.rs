//! Revocation: CRLs checked against the registered CA (directly or through the CRL issuer's
//! chain), filed by issuer key and serial, and enforced on both verification paths (the full
//! path build and the remembered link a second connect takes).

use std::sync::Arc;

use certhub_pki::{
    CertificateDer, Reason, Revocations, TrustStore, key_id, read_crl_for, verify_device_chain,
};
use certhub_testkit::{Ca, NOW, now};

fn serial(cert: &CertificateDer<'_>) -> Vec<u8> {
    x509_parser::parse_x509_certificate(cert)
        .expect("parse")
        .1
        .raw_serial()
        .to_vec()
}

struct Pki {
    root: Ca,
    factory: Ca,
    technician: Ca,
    other_technician: Ca,
}

fn pki() -> Pki {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let technician = factory.intermediate("Technician-Z CA");
    let other_technician = factory.intermediate("Technician-W CA");
    Pki {
        root,
        factory,
        technician,
        other_technician,
    }
}

/// The index of one CRL by `issuer`, checked under the registered `root`.
fn index(root: &Ca, issuer: &Ca, crl: &[u8]) -> Arc<Revocations> {
    let checked = read_crl_for(crl, &root.cert, &issuer.chain).expect("the CRL checks");
    let mut index = Revocations::default();
    index.add_crl(checked.issuer_key, &checked.facts, "test CRL");
    Arc::new(index)
}

#[test]
fn a_revoked_leaf_is_refused_on_the_remembered_path_too() {
    let p = pki();
    let store = TrustStore::new([p.root.cert.clone()]).expect("store");
    let (w1, w2) = (p.technician.device("w1"), p.technician.device("w2"));
    // The first connect proves the link above the leaves, the next ones remember each leaf.
    for w in [&w1, &w1, &w2] {
        verify_device_chain(&w.chain, &store, None, now()).expect("trusted");
    }
    assert!(store.remembered_leaves() >= 2, "both leaves are remembered");

    let crl = p.technician.crl(&[serial(&w1.cert)], 1, NOW - 3600);
    let revoking = store.with_revocations(index(&p.root, &p.technician, &crl));
    assert!(
        revoking.remembered_leaves() >= 2,
        "the links stay: revocation does not undo a signature check"
    );
    let e = verify_device_chain(&w1.chain, &revoking, Some("w1"), now()).expect_err("revoked");
    assert_eq!(e.reason, Reason::CertificateRevoked);
    let hex: String = serial(&w1.cert)
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    for part in [
        "the leaf \"CN=w1\"",
        &hex,
        "issued by \"CN=Technician-Z CA\"",
        "reason key-compromise",
        "test CRL",
    ] {
        assert!(e.detail.contains(part), "{part:?} not in {}", e.detail);
    }
    verify_device_chain(&w2.chain, &revoking, Some("w2"), now()).expect("w2 is not on the CRL");
    // The store without the index still accepts w1: the index is a value, swapped whole.
    verify_device_chain(&w1.chain, &store, Some("w1"), now()).expect("old store");
    // A fresh store (no remembered links) refuses it the same way on the full path.
    let fresh = TrustStore::new([p.root.cert.clone()])
        .expect("store")
        .with_revocations(revoking.revocations().clone());
    let e = verify_device_chain(&w1.chain, &fresh, None, now()).expect_err("revoked");
    assert_eq!(e.reason, Reason::CertificateRevoked);
}

#[test]
fn a_revoked_intermediate_takes_every_device_below_it_and_no_other() {
    let p = pki();
    let crl = p.factory.crl(&[serial(&p.technician.cert)], 7, NOW - 60);
    let store = TrustStore::new([p.root.cert.clone()])
        .expect("store")
        .with_revocations(index(&p.root, &p.factory, &crl));
    for id in ["w1", "w2"] {
        let w = p.technician.device(id);
        let e = verify_device_chain(&w.chain, &store, Some(id), now()).expect_err("revoked");
        assert_eq!(e.reason, Reason::CertificateRevoked);
        assert!(
            e.detail.contains("the intermediate \"CN=Technician-Z CA\"")
                && e.detail.contains("issued by \"CN=Factory-Y CA\""),
            "{}",
            e.detail
        );
    }
    let other = p.other_technician.device("w3");
    verify_device_chain(&other.chain, &store, Some("w3"), now())
        .expect("Technician-W's branch is untouched");
}

#[test]
fn a_verified_chain_names_each_certificate_under_its_issuers_key() {
    let p = pki();
    let w = p.technician.device("w1");
    let store = TrustStore::new([p.root.cert.clone()]).expect("store");
    for attempt in ["full path", "remembered link"] {
        let v = verify_device_chain(&w.chain, &store, None, now()).expect("trusted");
        let keys: Vec<_> = v.certs.iter().map(|c| c.issuer_key).collect();
        assert_eq!(
            keys,
            [
                key_id(&p.technician.cert).expect("key"),
                key_id(&p.factory.cert).expect("key"),
                key_id(&p.root.cert).expect("key"),
            ],
            "{attempt}"
        );
        assert_eq!(v.certs[0].subject, "CN=w1", "{attempt}");
        assert_eq!(v.certs[2].subject, "CN=Factory-Y CA", "{attempt}");
    }
}

#[test]
fn a_serial_under_another_key_revokes_nothing() {
    let p = pki();
    let w = p.technician.device("w1");
    // Another hierarchy, same names: its Technician-Z CA lists w1's serial.
    let impostor = Ca::root("Company-X Root CA")
        .intermediate("Factory-Y CA")
        .intermediate("Technician-Z CA");
    let crl = impostor.crl(&[serial(&w.cert)], 9, NOW - 60);
    let e = read_crl_for(&crl, &p.root.cert, &p.technician.chain).expect_err("wrong key");
    assert!(e.to_string().contains("does not verify"), "{e}");
    // Even filed by hand under the impostor's key, the entry does not touch w1.
    let facts = certhub_pki::read_crl(&crl, &impostor.cert).expect("its own CRL");
    let mut index = Revocations::default();
    index.add_crl(key_id(&impostor.cert).expect("key"), &facts, "impostor");
    let store = TrustStore::new([p.root.cert.clone()])
        .expect("store")
        .with_revocations(Arc::new(index));
    verify_device_chain(&w.chain, &store, Some("w1"), now()).expect("not revoked");
}

#[test]
fn a_crl_issuer_chain_must_reach_the_registered_ca() {
    let p = pki();
    let crl = p.technician.crl(&[], 1, NOW);
    // Without the chain the CRL's issuer is not the CA.
    let e = read_crl_for(&crl, &p.root.cert, &[]).expect_err("no chain");
    assert!(e.to_string().contains("not by the CA"), "{e}");
    // The chain in another order is fine; one missing a link is not.
    let reversed: Vec<_> = vec![p.technician.cert.clone(), p.factory.cert.clone()];
    read_crl_for(&crl, &p.root.cert, &reversed).expect("issuer first, then up");
    let e = read_crl_for(&crl, &p.root.cert, std::slice::from_ref(&p.technician.cert))
        .expect_err("gap");
    assert!(e.to_string().contains("does not reach the CA"), "{e}");
    // A leaf cannot sign a CRL the hub takes.
    let w = p.technician.device("w1");
    let e = read_crl_for(&crl, &p.root.cert, &w.chain).expect_err("a leaf");
    assert!(e.to_string().contains("not a CA"), "{e}");
    // The CA's own CRL needs no chain.
    let own = p.root.crl(&[serial(&p.factory.cert)], 2, NOW);
    let checked = read_crl_for(&own, &p.root.cert, &[]).expect("the CA's own");
    assert_eq!(checked.issuer_subject, "CN=Company-X Root CA");
    assert_eq!(checked.facts.revoked.len(), 1);
}

#[test]
fn a_block_by_thumbprint_or_issuer_and_serial_refuses_by_name() {
    use certhub_pki::Block;
    let p = pki();
    let (w1, w3) = (p.technician.device("w1"), p.other_technician.device("w3"));
    let sha256 = |c: &CertificateDer<'_>| -> [u8; 32] {
        let t = certhub_pki::Thumbprints::of(c).sha256;
        let bytes: Vec<u8> = (0..t.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&t[i..i + 2], 16).expect("hex"))
            .collect();
        bytes.try_into().expect("32 bytes")
    };
    let mut index = Revocations::default();
    index.add_block(
        Block::Thumbprint(sha256(&p.technician.cert)),
        NOW - 10,
        "block 1: leaked",
    );
    let store = TrustStore::new([p.root.cert.clone()])
        .expect("store")
        .with_revocations(Arc::new(index));
    let e = verify_device_chain(&w1.chain, &store, Some("w1"), now()).expect_err("blocked");
    assert_eq!(e.reason, Reason::CertificateBlocked);
    assert!(
        e.detail.contains("the intermediate \"CN=Technician-Z CA\"") && e.detail.contains("leaked"),
        "{}",
        e.detail
    );
    verify_device_chain(&w3.chain, &store, Some("w3"), now()).expect("another branch");

    // By issuer name and serial: the leaf w3 alone.
    let mut index = Revocations::default();
    index.add_block(
        Block::IssuerSerial {
            issuer: "CN=Technician-W CA".into(),
            serial: serial(&w3.cert),
        },
        NOW - 10,
        "block 2",
    );
    let store = store.with_revocations(Arc::new(index));
    let e = verify_device_chain(&w3.chain, &store, Some("w3"), now()).expect_err("blocked");
    assert_eq!(e.reason, Reason::CertificateBlocked);
    assert!(e.detail.contains("the leaf \"CN=w3\""), "{}", e.detail);
    verify_device_chain(&w1.chain, &store, Some("w1"), now()).expect("not blocked");
}

/// A chain verified before is not parsed again, but everything that is not a property of its
/// bytes is checked again: its CN against the id, its dates, revocation. Each refusal is the one
/// a store that never saw the chain gives.
#[test]
fn a_chain_seen_before_is_checked_again_for_its_cn_dates_and_revocation() {
    use certhub_pki::Block;
    let p = pki();
    let w1 = p.technician.device("w1");
    let fresh = || TrustStore::new([p.root.cert.clone()]).expect("store");
    let store = fresh();
    verify_device_chain(&w1.chain, &store, Some("w1"), now()).expect("first");
    assert_eq!(store.remembered_chains(), 1);
    verify_device_chain(&w1.chain, &store, Some("w1"), now()).expect("again");
    assert_eq!(store.remembered_chains(), 1);

    let again = verify_device_chain(&w1.chain, &store, Some("w2"), now()).expect_err("cn");
    let first = verify_device_chain(&w1.chain, &fresh(), Some("w2"), now()).expect_err("cn");
    assert_eq!(again.reason, Reason::CnMismatch);
    assert_eq!((again.reason, again.detail), (first.reason, first.detail));

    let later = certhub_testkit::at(NOW + 100 * 365 * 86_400);
    let again = verify_device_chain(&w1.chain, &store, Some("w1"), later).expect_err("expired");
    let first = verify_device_chain(&w1.chain, &fresh(), Some("w1"), later).expect_err("expired");
    assert_eq!((again.reason, again.detail), (first.reason, first.detail));

    let mut index = Revocations::default();
    index.add_block(
        Block::IssuerSerial {
            issuer: "CN=Technician-Z CA".into(),
            serial: serial(&w1.cert),
        },
        NOW - 10,
        "block 3",
    );
    let e = verify_device_chain(
        &w1.chain,
        &store.with_revocations(Arc::new(index)),
        Some("w1"),
        now(),
    )
    .expect_err("blocked");
    assert_eq!(e.reason, Reason::CertificateBlocked);
}
