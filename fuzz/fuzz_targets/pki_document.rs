//! Certificate and CSR files as `certhub pki inspect`, `verify`, `sign` and the hub's TLS setup
//! read them: PEM (one or many blocks) or DER, then described, hashed and turned into an anchor.
#![no_main]

use certhub_pki::{
    Document, Thumbprints, TrustStore, describe_certificate, describe_csr, read_certificates,
    read_csr, read_document, subject_public_key_info, to_pem,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let certificates = read_certificates(data);
    let csr = read_csr(data);
    match read_document(data) {
        Ok(Document::Certificates(certs)) => {
            assert!(
                !certs.is_empty(),
                "a certificate document holds certificates"
            );
            assert_eq!(certificates.as_ref().ok(), Some(&certs));
            assert!(csr.is_err(), "certificates are not a CSR");
            for cert in &certs {
                // Every certificate read here was parsed once: describing it cannot fail.
                let info = describe_certificate(cert).expect("a certificate that was read");
                assert_eq!(info.thumbprints, Thumbprints::of(cert));
                subject_public_key_info(cert).expect("a certificate that was read has a key");
                let _ = TrustStore::new([cert.clone()]);
                // Written back as PEM, it reads back byte for byte.
                let again = read_certificates(to_pem(cert).as_bytes()).expect("own PEM");
                assert_eq!(again.as_slice(), std::slice::from_ref(cert));
            }
        }
        Ok(Document::Csr(request)) => {
            assert!(certificates.is_err(), "a CSR is not a certificate");
            assert_eq!(csr.as_ref().ok(), Some(&request));
            describe_csr(request.as_ref()).expect("a CSR that was read");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(certificates.is_err() && csr.is_err());
        }
    }
});
