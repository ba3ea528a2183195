//! Certificate signing requests as `certhub pki inspect` and `certhub pki sign` take them: read
//! (PEM or DER), described (with the self-signature check), and signed under both profiles by a
//! CA made once per process. What is signed must be a well-formed certificate for the CSR's
//! own subject and key, and only a CSR whose signature verifies is ever signed.
#![no_main]

use std::sync::OnceLock;

use certhub_fuzz::NOW;
use certhub_pki::{
    CaFiles, Issuer, KeyAlgorithm, Profile, SignOptions, create_root, describe_certificate,
    describe_csr, parse_subject, read_csr, sign_request,
};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

fn issuer() -> &'static Issuer {
    static ISSUER: OnceLock<Issuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let made = OffsetDateTime::from_unix_timestamp(NOW - 86_400 * 365).expect("time");
        let subject = parse_subject("CN=Fuzz Issuing CA, O=certhub").expect("subject");
        let root =
            create_root(&subject, KeyAlgorithm::EcdsaP256, 3650, Some(2), made).expect("a root");
        Issuer::load(CaFiles {
            cert: root.pem.as_bytes(),
            key: &root.key_pem,
            chain: None,
        })
        .expect("the root signs")
    })
}

fuzz_target!(|data: &[u8]| {
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("time");
    // `certhub pki sign` reads the file first; sign_request also takes DER straight away.
    let der = match read_csr(data) {
        Ok(csr) => {
            describe_csr(csr.as_ref()).expect("a CSR that was read parses");
            csr.as_ref().to_vec()
        }
        Err(_) => data.to_vec(),
    };
    let described = describe_csr(&der);
    let options = [
        SignOptions::default(),
        SignOptions {
            days: Some(u32::MAX),
            path_len: Some(1),
            ..SignOptions::default()
        },
    ];
    for profile in [Profile::Device, Profile::Intermediate] {
        for options in &options {
            let Ok(issued) = sign_request(issuer(), &der, profile, options, now) else {
                continue;
            };
            let csr = described.as_ref().expect("a signed CSR parses");
            assert!(
                csr.signature_valid,
                "a CSR whose signature fails was signed"
            );
            let cert = describe_certificate(&issued.der).expect("the issued certificate parses");
            assert_eq!(cert.subject, csr.subject);
            assert_eq!(cert.key, csr.key);
            assert_eq!(cert.issuer, issuer().subject());
            let ca = cert.basic_constraints.as_ref().is_some_and(|bc| bc.ca);
            assert_eq!(ca, profile == Profile::Intermediate);
        }
    }
});
