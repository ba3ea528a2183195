//! Chain links verified once are not verified again under the same trust store. The proof that
//! this is safe: a store that has remembered links answers every chain, accepted or refused,
//! exactly as a fresh store does, and a new store (a trust change) remembers nothing.

use certhub_pki::{CertificateDer, TrustStore, UnixTime, verify_device_chain};
use certhub_testkit::{Ca, NOT_AFTER, NOT_BEFORE, NOW, at, now, validity};
use rcgen::ExtendedKeyUsagePurpose;

type Answer = Result<certhub_pki::VerifiedChain, (certhub_pki::Reason, String)>;

fn answer(
    store: &TrustStore,
    chain: &[CertificateDer<'static>],
    id: &str,
    when: UnixTime,
) -> Answer {
    verify_device_chain(chain, store, Some(id), when).map_err(|r| (r.reason, r.detail))
}

/// The warm store's answer, after checking it equals a fresh store's.
#[track_caller]
fn same(
    warm: &TrustStore,
    roots: &[&Ca],
    chain: &[CertificateDer<'static>],
    id: &str,
    when: UnixTime,
) -> Answer {
    let fresh = TrustStore::new(roots.iter().map(|c| c.cert.clone())).expect("trust");
    let expected = answer(&fresh, chain, id, when);
    let got = answer(warm, chain, id, when);
    assert_eq!(got, expected, "a warm store answered {id} differently");
    got
}

#[test]
fn a_warm_store_answers_every_chain_as_a_fresh_one() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    // Valid until a year after NOW, so a later check finds it expired.
    let technician = factory.intermediate_with("Technician-Z CA", |p| {
        validity(p, NOT_BEFORE, NOW + 365 * 86_400)
    });
    let sibling = factory.intermediate("Technician-W CA");
    let warm = TrustStore::new([root.cert.clone()]).expect("trust");
    assert_eq!(warm.remembered_links(), 0);

    // The first widget takes the full path and teaches the store its issuer's link.
    let w1 = technician.device("widget-1");
    assert!(same(&warm, &[&root], &w1.chain, "widget-1", now()).is_ok());
    assert_eq!(warm.remembered_links(), 1);

    // A second widget of the same technician goes through the link: same answer.
    let w2 = technician.device("widget-2");
    let v = same(&warm, &[&root], &w2.chain, "widget-2", now()).expect("trusted");
    assert_eq!(
        v.path,
        [
            "CN=widget-2",
            "CN=Technician-Z CA",
            "CN=Factory-Y CA",
            "CN=Company-X Root CA"
        ]
    );
    assert_eq!(warm.remembered_links(), 1);

    // Refusals are unchanged with the link remembered.
    let missing_factory = vec![w2.cert.clone(), technician.cert.clone()];
    assert!(same(&warm, &[&root], &missing_factory, "widget-2", now()).is_err());
    assert!(same(&warm, &[&root], &w2.chain[..1], "widget-2", now()).is_err());
    assert!(same(&warm, &[&root], &w2.chain, "widget-3", now()).is_err()); // CN
    let expired = technician.leaf_with("widget-old", |p| validity(p, NOT_BEFORE, NOW - 86_400));
    assert!(same(&warm, &[&root], &expired.chain, "widget-old", now()).is_err());
    let server_only = technician.leaf_with("widget-tls", |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert!(same(&warm, &[&root], &server_only.chain, "widget-tls", now()).is_err());
    // The technician's certificate presented, but the leaf signed by another key with the
    // technician's name: a forged leaf.
    let forger = Ca::root("Company-X Root CA").intermediate("Technician-Z CA");
    let forged = forger.device("widget-9");
    let mut chain = vec![forged.cert.clone()];
    chain.extend(w1.chain[1..].iter().cloned());
    assert!(same(&warm, &[&root], &chain, "widget-9", now()).is_err());
    // A leaf of the sibling technician presented with the remembered technician's chain.
    let cousin = sibling.device("widget-c");
    let mut chain = vec![cousin.cert.clone()];
    chain.extend(w1.chain[1..].iter().cloned());
    assert!(same(&warm, &[&root], &chain, "widget-c", now()).is_err());
    // Later, the technician has expired: the link does not outlive its dates.
    let later = at(NOW + 2 * 365 * 86_400);
    assert!(same(&warm, &[&root], &w2.chain, "widget-2", later).is_err());
    // Before the anchor's notBefore, nothing is trusted either.
    assert!(
        same(
            &warm,
            &[&root],
            &w2.chain,
            "widget-2",
            at(NOT_BEFORE - 86_400)
        )
        .is_err()
    );
    // The sibling's own widgets learn a second link.
    let w3 = sibling.device("widget-3");
    assert!(same(&warm, &[&root], &w3.chain, "widget-3", now()).is_ok());
    assert_eq!(warm.remembered_links(), 2);
    let _ = NOT_AFTER;
}

#[test]
fn a_remembered_leaf_is_still_checked_for_everything_but_its_signature() {
    let root = Ca::root("Company-X Root CA");
    let factory = root.intermediate("Factory-Y CA");
    let technician = factory.intermediate("Technician-Z CA");
    let sibling = factory.intermediate("Technician-W CA");
    let warm = TrustStore::new([root.cert.clone()]).expect("trust");
    // Valid for two more days only.
    let short = technician.leaf_with("widget-1", |p| {
        validity(p, NOT_BEFORE, NOW + 2 * 86_400);
    });
    // The first connection verifies every signature; the second the leaf's (the link is
    // new); from the third on, none.
    for _ in 0..3 {
        assert!(same(&warm, &[&root], &short.chain, "widget-1", now()).is_ok());
    }
    assert_eq!(warm.remembered_links(), 1);
    assert_eq!(warm.remembered_leaves(), 1);
    // Remembered, and expired three days later: refused for its dates, as a fresh store does.
    let later = at(NOW + 3 * 86_400);
    let (reason, _) = same(&warm, &[&root], &short.chain, "widget-1", later).expect_err("expired");
    assert_eq!(reason, certhub_pki::Reason::CertificateExpired);
    // The same leaf bytes under another name are still refused (CN), and with the sibling
    // technician's chain (whose link never saw this leaf) they do not verify.
    assert!(same(&warm, &[&root], &short.chain, "widget-2", now()).is_err());
    let w = sibling.device("widget-w");
    assert!(same(&warm, &[&root], &w.chain, "widget-w", now()).is_ok());
    let mut crossed = vec![short.cert.clone()];
    crossed.extend(w.chain[1..].iter().cloned());
    assert!(same(&warm, &[&root], &crossed, "widget-1", now()).is_err());
    // A new store (any trust change) remembers no leaf.
    let after = TrustStore::new([root.cert.clone()]).expect("trust");
    assert_eq!(after.remembered_leaves(), 0);
}

#[test]
fn a_new_store_after_a_trust_change_remembers_nothing() {
    let root = Ca::root("Company-X Root CA");
    let technician = root
        .intermediate("Factory-Y CA")
        .intermediate("Technician-Z CA");
    let widget = technician.device("widget-1");
    let before = TrustStore::new([root.cert.clone()]).expect("trust");
    assert!(answer(&before, &widget.chain, "widget-1", now()).is_ok());
    assert_eq!(before.remembered_links(), 1);
    // The CA is deleted: the hub builds a new store from what is left.
    let other = Ca::root("Unrelated Root CA");
    let after = TrustStore::new([other.cert.clone()]).expect("trust");
    assert_eq!(after.remembered_links(), 0);
    assert!(answer(&after, &widget.chain, "widget-1", now()).is_err());
    // A clone shares what the original learned (same anchors), a new store does not.
    assert_eq!(before.clone().remembered_links(), 1);
}

#[test]
fn links_with_name_constraints_are_not_remembered() {
    let root = Ca::root("Company-X Root CA");
    let constrained = root.intermediate_with("Factory-Y CA", |p| {
        p.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("example.com".into())],
            excluded_subtrees: Vec::new(),
        });
    });
    let technician = constrained.intermediate("Technician-Z CA");
    let warm = TrustStore::new([root.cert.clone()]).expect("trust");
    for id in ["widget-1", "widget-2"] {
        let w = technician.device(id);
        assert!(
            same(&warm, &[&root], &w.chain, id, now()).is_ok(),
            "{id} is trusted"
        );
    }
    assert_eq!(warm.remembered_links(), 0);
}
