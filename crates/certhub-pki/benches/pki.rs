//! Throughput of the device chain policy and of issuance, measured with a plain harness
//! (`cargo bench -p certhub-pki`). Figures go to docs/performance.md with this command.

use std::hint::black_box;
use std::time::{Duration, Instant};

use certhub_pki::{
    CaFiles, Issuer, KeyAlgorithm, Profile, SignOptions, TrustStore, create_request, create_root,
    parse_subject, read_csr, sign_request, verify_device_chain,
};
use certhub_testkit::{Ca, now};
use time::OffsetDateTime;

/// Runs `f` repeatedly for about `budget` and prints operations per second and time per op.
fn measure(name: &str, budget: Duration, mut f: impl FnMut()) {
    for _ in 0..10 {
        f(); // warm up
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    let elapsed = start.elapsed();
    let per_op = elapsed / u32::try_from(n).unwrap_or(u32::MAX);
    println!(
        "{name:<48} {:>10.0} ops/s  {:>9.1} us/op  ({n} ops)",
        n as f64 / elapsed.as_secs_f64(),
        per_op.as_secs_f64() * 1e6
    );
}

fn main() {
    let budget = Duration::from_secs(3);

    // verify_device_chain: leaf + 2 intermediates to a root, P-256 everywhere.
    let root = Ca::root("Company-X Root CA");
    let technician = root
        .intermediate("Factory-Y CA")
        .intermediate("Technician-Z CA");
    let widget = technician.device("widget-1");
    // A fresh store each time: the full check, every signature (the store's construction is
    // part of the figure; it is small next to three signature checks).
    measure(
        "verify_device_chain 4 levels, 1 anchor, fresh store",
        budget,
        || {
            let trust = TrustStore::new([root.cert.clone()]).expect("trust");
            black_box(verify_device_chain(&widget.chain, &trust, Some("widget-1"), now()).is_ok());
        },
    );
    // One store, as the hub keeps between trust changes: the issuer's link is remembered, and
    // each check is of a leaf the store has not seen, so only the leaf's signature is checked.
    // 12 000 distinct leaves, and a budget too short to use any twice.
    let trust = TrustStore::new([root.cert.clone()]).expect("trust");
    assert!(verify_device_chain(&widget.chain, &trust, Some("widget-1"), now()).is_ok());
    let fleet: Vec<_> = (0..12_000)
        .map(|i| {
            let id = format!("widget-n{i}");
            let leaf = technician.device(&id);
            (id, leaf.chain)
        })
        .collect();
    let mut next = 0;
    measure(
        "verify_device_chain 4 levels, link remembered, new leaf",
        Duration::from_millis(500),
        || {
            let (id, chain) = &fleet[next % fleet.len()];
            next += 1;
            black_box(verify_device_chain(chain, &trust, Some(id), now()).is_ok());
        },
    );
    assert!(
        next < fleet.len(),
        "a leaf was checked twice: lower the budget"
    );
    // The same leaf again (a device reconnecting): no signature is checked.
    measure(
        "verify_device_chain 4 levels, link and leaf remembered",
        budget,
        || {
            black_box(verify_device_chain(&widget.chain, &trust, Some("widget-1"), now()).is_ok());
        },
    );

    // The same among 1000 registered anchors (other companies' roots), link and leaf remembered.
    let mut anchors: Vec<_> = (0..999)
        .map(|i| Ca::root(&format!("Other Root {i}")).cert)
        .collect();
    anchors.push(root.cert.clone());
    let many = TrustStore::new(anchors).expect("trust");
    measure(
        "verify_device_chain 4 levels, 1000 anchors, leaf remembered",
        budget,
        || {
            black_box(verify_device_chain(&widget.chain, &many, Some("widget-1"), now()).is_ok());
        },
    );

    // A refusal that needs no signature check (leaf without intermediates).
    measure(
        "verify_device_chain refusal (missing-intermediate)",
        budget,
        || {
            black_box(verify_device_chain(&widget.chain[..1], &trust, None, now()).is_err());
        },
    );

    // Issuance: key pair + CSR (as the device does), then signing (as the issuer does).
    let t = OffsetDateTime::now_utc();
    let made = create_root(
        &parse_subject("CN=Bench Root").expect("subject"),
        KeyAlgorithm::EcdsaP256,
        3650,
        None,
        t,
    )
    .expect("root");
    let issuer = Issuer::load(CaFiles {
        cert: made.pem.as_bytes(),
        key: &made.key_pem,
        chain: None,
    })
    .expect("issuer");
    let subject = parse_subject("CN=widget-1").expect("subject");
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
        measure(&format!("create_request {alg}"), budget, || {
            black_box(create_request(&subject, alg).expect("request"));
        });
    }
    let req = create_request(&subject, KeyAlgorithm::EcdsaP256).expect("request");
    let csr = read_csr(req.pem.as_bytes()).expect("csr");
    measure("sign_request device profile (P-256 issuer)", budget, || {
        black_box(
            sign_request(&issuer, &csr, Profile::Device, &SignOptions::default(), t).expect("sign"),
        );
    });
}
