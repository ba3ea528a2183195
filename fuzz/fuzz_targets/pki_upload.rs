//! A CA registration as the hub's REST API receives it (`PUT /certificates/{name}`): raw PEM,
//! base64 of DER or base64 of PEM, the CA checks, the facts the hub stores, and the proof of
//! possession check of a verification certificate, both ways round against a fixed root.
#![no_main]

use certhub_fuzz::{NOW, POP, POP_CODE, ROOT, certificate};
use certhub_pki::{
    Thumbprints, ca_facts, check_ca_upload, describe_certificate, read_upload, verify_possession,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(certs) = read_upload(&text) else {
        return;
    };
    assert!(!certs.is_empty());
    if let Ok(ca) = check_ca_upload(&certs, NOW) {
        assert_eq!(certs.as_slice(), std::slice::from_ref(&ca));
        let facts = ca_facts(&ca).expect("an accepted CA has facts");
        assert_eq!(facts.thumbprints, Thumbprints::of(&ca));
        assert!(
            facts.not_after_secs >= NOW,
            "an accepted CA has not expired"
        );
    }
    let root = certificate(ROOT);
    let pop = certificate(POP);
    for cert in &certs {
        let _ = ca_facts(cert);
        let _ = describe_certificate(cert);
        // The uploaded certificate as a verification certificate for the fixed root...
        if verify_possession(&root, cert, POP_CODE, NOW).is_ok() {
            let info = describe_certificate(cert).expect("a verified certificate parses");
            assert!(info.basic_constraints.is_none_or(|bc| !bc.ca));
        }
        let _ = verify_possession(&root, cert, "another code", NOW);
        // ...and as the CA the fixed verification certificate was made for.
        let _ = verify_possession(cert, &pop, POP_CODE, NOW);
    }
});
