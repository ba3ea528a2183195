//! Issuance: the issuer decides every extension, serials are random, validity stays inside the
//! issuer's, and what comes out verifies under the device policy.

use certhub_pki::{
    CaFiles, Issuer, KeyAlgorithm, Profile, SignOptions, TrustStore, create_request, create_root,
    describe_certificate, parse_subject, read_csr, sign_request, verification_certificate,
    verify_device_chain,
};
use certhub_testkit::at;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use time::{Duration, OffsetDateTime};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(certhub_testkit::NOW).expect("time")
}

fn root(alg: KeyAlgorithm, days: u32, path_len: Option<u8>) -> Issuer {
    let made = create_root(
        &parse_subject("CN=Company-X Root CA, O=Company-X").expect("subject"),
        alg,
        days,
        path_len,
        now(),
    )
    .expect("root");
    Issuer::load(CaFiles {
        cert: made.pem.as_bytes(),
        key: &made.key_pem,
        chain: None,
    })
    .expect("load root")
}

/// Signs a new intermediate below `issuer` and loads it as an issuer in turn.
fn intermediate(issuer: &Issuer, subject: &str, opts: SignOptions) -> (Issuer, String) {
    let req = create_request(
        &parse_subject(subject).expect("subject"),
        KeyAlgorithm::EcdsaP256,
    )
    .expect("request");
    let csr = read_csr(req.pem.as_bytes()).expect("csr");
    let cert = sign_request(issuer, &csr, Profile::Intermediate, &opts, now()).expect("sign");
    let loaded = Issuer::load(CaFiles {
        cert: cert.pem.as_bytes(),
        key: &req.key_pem,
        chain: Some(cert.chain_pem.as_bytes()),
    })
    .expect("load intermediate");
    (loaded, cert.chain_pem)
}

#[test]
fn every_algorithm_builds_a_chain_the_policy_accepts() {
    for alg in KeyAlgorithm::ALL {
        let company = root(alg, 3650, None);
        let trust = TrustStore::new([company.certificate().clone()]).expect("trust");
        let req = create_request(&parse_subject("CN=widget-1").expect("s"), alg).expect("req");
        let csr = read_csr(req.pem.as_bytes()).expect("csr");
        let cert = sign_request(
            &company,
            &csr,
            Profile::Device,
            &SignOptions::default(),
            now(),
        )
        .unwrap_or_else(|e| panic!("{alg}: {e}"));
        let chain = certhub_pki::read_certificates(cert.chain_pem.as_bytes()).expect("chain");
        verify_device_chain(&chain, &trust, Some("widget-1"), at(certhub_testkit::NOW))
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
    }
}

#[test]
fn a_device_csr_asking_for_ca_gets_ca_false_and_a_note() {
    let company = root(KeyAlgorithm::EcdsaP256, 3650, None);
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "sneaky-widget");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = p.serialize_request(&key).expect("csr");
    let cert = sign_request(
        &company,
        csr.der(),
        Profile::Device,
        &SignOptions::default(),
        now(),
    )
    .expect("sign");
    let info = describe_certificate(&cert.der).expect("describe");
    assert!(!info.basic_constraints.expect("bc present").ca);
    assert_eq!(info.extended_key_usage, ["clientAuth"]);
    assert_eq!(info.key_usage, ["digitalSignature"]);
    assert!(
        cert.notes.iter().any(|n| n.contains("CA:TRUE")),
        "{:?}",
        cert.notes
    );
}

#[test]
fn serials_are_random_for_the_same_key() {
    let company = root(KeyAlgorithm::EcdsaP256, 3650, None);
    let req =
        create_request(&parse_subject("CN=w").expect("s"), KeyAlgorithm::EcdsaP256).expect("req");
    let csr = read_csr(req.pem.as_bytes()).expect("csr");
    let a = sign_request(
        &company,
        &csr,
        Profile::Device,
        &SignOptions::default(),
        now(),
    )
    .expect("a");
    let b = sign_request(
        &company,
        &csr,
        Profile::Device,
        &SignOptions::default(),
        now(),
    )
    .expect("b");
    let (a, b) = (
        describe_certificate(&a.der).expect("a"),
        describe_certificate(&b.der).expect("b"),
    );
    assert_ne!(a.serial, b.serial);
    assert!(a.serial.len() >= 32, "{}", a.serial);
}

#[test]
fn validity_never_outlives_the_issuer() {
    let company = root(KeyAlgorithm::EcdsaP256, 30, None);
    let (_, chain) = intermediate(
        &company,
        "CN=Factory-Y CA",
        SignOptions {
            days: Some(3650),
            path_len: None,
            ..Default::default()
        },
    );
    let certs = certhub_pki::read_certificates(chain.as_bytes()).expect("chain");
    let child = describe_certificate(&certs[0]).expect("child");
    let parent = describe_certificate(company.certificate()).expect("parent");
    assert_eq!(child.not_after, parent.not_after);
}

#[test]
fn path_len_follows_the_issuer() {
    let company = root(KeyAlgorithm::EcdsaP256, 3650, Some(1));
    let (factory, chain) = intermediate(&company, "CN=Factory-Y CA", SignOptions::default());
    let certs = certhub_pki::read_certificates(chain.as_bytes()).expect("chain");
    let bc = describe_certificate(&certs[0])
        .expect("d")
        .basic_constraints
        .expect("bc");
    assert_eq!(bc.path_len, Some(0), "one less than the issuer's 1");
    // Factory-Y (pathlen 0) may not sign a CA...
    let req = create_request(
        &parse_subject("CN=Technician-Z CA").expect("s"),
        KeyAlgorithm::EcdsaP256,
    )
    .expect("req");
    let csr = read_csr(req.pem.as_bytes()).expect("csr");
    let e = sign_request(
        &factory,
        &csr,
        Profile::Intermediate,
        &SignOptions::default(),
        now(),
    )
    .expect_err("pathlen 0");
    assert!(e.to_string().contains("pathLenConstraint 0"), "{e}");
    // ...and Company-X refuses to give more than it has.
    let e = sign_request(
        &company,
        &csr,
        Profile::Intermediate,
        &SignOptions {
            days: None,
            path_len: Some(5),
            ..Default::default()
        },
        now(),
    )
    .expect_err("too long");
    assert!(e.to_string().contains("--path-len 5"), "{e}");
}

#[test]
fn the_verification_certificate_is_cn_code_not_ca_signed_by_the_ca() {
    let company = root(KeyAlgorithm::EcdsaP256, 3650, None);
    let pop = verification_certificate(&company, "6A1F0C2B9E", now()).expect("pop");
    let info = describe_certificate(&pop.der).expect("describe");
    assert_eq!(info.subject, "CN=6A1F0C2B9E");
    assert_eq!(info.issuer, "CN=Company-X Root CA, O=Company-X");
    assert!(!info.basic_constraints.expect("bc").ca);
    // The signature is the CA's: it chains to the CA as the only anchor.
    let trust = TrustStore::new([company.certificate().clone()]).expect("trust");
    certhub_pki::verify_chain(
        &pop.der,
        &[],
        &trust,
        at(certhub_testkit::NOW),
        certhub_pki::Usage::ClientAuth,
    )
    .expect("signed by the CA");
    assert!(verification_certificate(&company, "  ", now()).is_err());
}

#[test]
fn an_issuer_with_someone_elses_key_is_refused() {
    let a = create_root(
        &parse_subject("CN=A").expect("s"),
        KeyAlgorithm::EcdsaP256,
        10,
        None,
        now(),
    )
    .expect("a");
    let b = create_root(
        &parse_subject("CN=B").expect("s"),
        KeyAlgorithm::EcdsaP256,
        10,
        None,
        now(),
    )
    .expect("b");
    let e = Issuer::load(CaFiles {
        cert: a.pem.as_bytes(),
        key: &b.key_pem,
        chain: None,
    })
    .expect_err("mismatch");
    assert!(e.to_string().contains("does not belong"), "{e}");
}

#[test]
fn an_expired_issuer_does_not_sign() {
    let company = root(KeyAlgorithm::EcdsaP256, 1, None);
    let req =
        create_request(&parse_subject("CN=w").expect("s"), KeyAlgorithm::EcdsaP256).expect("req");
    let csr = read_csr(req.pem.as_bytes()).expect("csr");
    let later = now() + Duration::days(3);
    let e = sign_request(
        &company,
        &csr,
        Profile::Device,
        &SignOptions::default(),
        later,
    )
    .expect_err("expired issuer");
    assert!(e.to_string().contains("expired"), "{e}");
}

#[test]
fn a_validity_past_the_year_9999_is_clamped_to_the_issuer_not_a_panic() {
    // Found by fuzzing (pki_csr): `now + days` overflowed the time crate's range and panicked.
    let company = root(KeyAlgorithm::EcdsaP256, 3650, None);
    let req = create_request(
        &parse_subject("CN=widget-1").expect("s"),
        KeyAlgorithm::EcdsaP256,
    )
    .expect("req");
    let csr = read_csr(req.pem.as_bytes()).expect("csr");
    let parent = describe_certificate(company.certificate()).expect("parent");
    for days in [u32::MAX, 3_000_000] {
        let opts = SignOptions {
            days: Some(days),
            path_len: None,
            ..Default::default()
        };
        let cert = sign_request(&company, &csr, Profile::Device, &opts, now()).expect("signed");
        let child = describe_certificate(&cert.der).expect("child");
        assert_eq!(child.not_after, parent.not_after, "{days} days");
        assert!(
            cert.notes.iter().any(|n| n.contains("shortened")),
            "{:?}",
            cert.notes
        );
    }
}

#[test]
fn a_root_valid_past_the_year_9999_is_refused() {
    let subject = parse_subject("CN=Company-X Root CA").expect("subject");
    // From 2027-01-01, 2_500_000 days end in 8871 and 2_913_000 in 10002.
    let fits = create_root(&subject, KeyAlgorithm::EcdsaP256, 2_500_000, None, now());
    let cert = certhub_pki::read_certificates(fits.expect("root").pem.as_bytes()).expect("pem");
    assert!(
        describe_certificate(&cert[0])
            .expect("root")
            .not_after
            .starts_with("8871-")
    );
    for days in [2_913_000, u32::MAX] {
        match create_root(&subject, KeyAlgorithm::EcdsaP256, days, None, now()) {
            Err(certhub_pki::PkiError::Policy(m)) => assert!(m.contains("9999"), "{m}"),
            other => panic!("{days} days: {other:?}"),
        }
    }
}

/// `--crl-url` writes the CRL distribution point; a trust store notes each (issuer, URL) of
/// the chains it verifies once, the intermediate's when its link is first proven and each
/// leaf's on either path, with the issuer's certificates to check the CRL against.
#[test]
fn crl_urls_become_distribution_points_the_trust_store_notes_once() {
    let company = root(KeyAlgorithm::EcdsaP256, 3650, None);
    let trust = TrustStore::new([company.certificate().clone()]).expect("trust");
    let (factory, factory_chain) = intermediate(
        &company,
        "CN=Factory-Y CA",
        SignOptions {
            crl_urls: vec!["http://pki.example/company-x.crl".into()],
            ..Default::default()
        },
    );
    let factory_cert = certhub_pki::read_certificates(factory_chain.as_bytes()).expect("chain");
    let device = |id: &str, url: &str| {
        let req = create_request(
            &parse_subject(&format!("CN={id}")).expect("s"),
            KeyAlgorithm::EcdsaP256,
        )
        .expect("req");
        let csr = read_csr(req.pem.as_bytes()).expect("csr");
        let opts = SignOptions {
            crl_urls: vec![url.into()],
            ..Default::default()
        };
        let cert = sign_request(&factory, &csr, Profile::Device, &opts, now()).expect("signed");
        certhub_pki::read_certificates(cert.chain_pem.as_bytes()).expect("chain")
    };
    let w1 = device("w1", "http://pki.example/factory-y.crl");
    let leaf = x509_parser::parse_x509_certificate(&w1[0])
        .expect("parse")
        .1;
    assert_eq!(
        certhub_pki::crl_urls(&leaf),
        vec!["http://pki.example/factory-y.crl"]
    );
    verify_device_chain(&w1, &trust, Some("w1"), at(certhub_testkit::NOW)).expect("trusted");
    let mut points = trust.take_crl_points();
    // Points the hub could not record are put back, and taken again.
    trust.requeue_crl_points(points.clone());
    assert_eq!(trust.take_crl_points(), points);
    assert!(trust.take_crl_points().is_empty());
    points.sort_by(|a, b| a.url.cmp(&b.url));
    assert_eq!(points.len(), 2, "{points:#?}");
    // Factory-Y's certificate names Company-X's CRL: the anchor issues it.
    assert_eq!(points[0].url, "http://pki.example/company-x.crl");
    assert_eq!(
        points[0].issuer_subject,
        "CN=Company-X Root CA, O=Company-X"
    );
    assert!(points[0].issuer_chain.is_empty());
    // The widget's names Factory-Y's, checked through Factory-Y's certificate.
    assert_eq!(points[1].url, "http://pki.example/factory-y.crl");
    assert_eq!(points[1].issuer_subject, "CN=Factory-Y CA");
    assert_eq!(points[1].issuer_chain, vec![factory_cert[0].clone()]);
    assert_eq!(
        points[1].issuer_key,
        certhub_pki::key_id(&factory_cert[0]).expect("key")
    );

    // Known points are not noted again, on the remembered link either.
    let w2 = device("w2", "http://pki.example/factory-y.crl");
    for chain in [&w1, &w2] {
        verify_device_chain(chain, &trust, None, at(certhub_testkit::NOW)).expect("trusted");
    }
    assert!(trust.take_crl_points().is_empty());
    // A new URL is, on the remembered link too.
    let w3 = device("w3", "http://pki.example/factory-y-2.crl");
    verify_device_chain(&w3, &trust, None, at(certhub_testkit::NOW)).expect("trusted");
    let points = trust.take_crl_points();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].url, "http://pki.example/factory-y-2.crl");
    assert_eq!(points[0].issuer_chain, vec![factory_cert[0].clone()]);
}

#[test]
fn a_crl_url_that_is_not_plain_http_is_refused_with_an_example() {
    let company = root(KeyAlgorithm::EcdsaP256, 3650, None);
    let req =
        create_request(&parse_subject("CN=w1").expect("s"), KeyAlgorithm::EcdsaP256).expect("req");
    let csr = read_csr(req.pem.as_bytes()).expect("csr");
    for url in [
        "https://pki.example/x.crl",
        "ldap://pki.example/x",
        "http://",
        "http://a b/",
    ] {
        let opts = SignOptions {
            crl_urls: vec![url.into()],
            ..Default::default()
        };
        let e = sign_request(&company, &csr, Profile::Device, &opts, now())
            .expect_err(url)
            .to_string();
        assert!(e.contains("give an http:// URL with a host"), "{url}: {e}");
    }
}

/// `--ocsp-url` writes the responder into authorityInfoAccess; the query is made only for a
/// leaf that names one, and an answer that is not a successful OCSP response is refused with
/// what is wrong (real responders' answers are checked end to end with `openssl ocsp` in the
/// certhub crate's tests).
#[test]
fn an_ocsp_query_follows_the_leaf_and_refuses_what_is_not_an_answer() {
    let company = root(KeyAlgorithm::EcdsaP256, 3650, None);
    let sign = |ocsp_url: Option<&str>| {
        let req = create_request(&parse_subject("CN=w1").expect("s"), KeyAlgorithm::EcdsaP256)
            .expect("req");
        let csr = read_csr(req.pem.as_bytes()).expect("csr");
        let opts = SignOptions {
            ocsp_url: ocsp_url.map(String::from),
            ..Default::default()
        };
        sign_request(&company, &csr, Profile::Device, &opts, now())
    };
    let plain = sign(None).expect("signed");
    assert!(
        certhub_pki::OcspQuery::new(&plain.der, company.certificate())
            .expect("query")
            .is_none()
    );
    let with = sign(Some("http://ocsp.example:8080")).expect("signed");
    let query = certhub_pki::OcspQuery::new(&with.der, company.certificate())
        .expect("query")
        .expect("a responder is named");
    assert_eq!(query.url, "http://ocsp.example:8080");
    let now = certhub_testkit::NOW;
    let e = query.read_response(b"<html>", now).expect_err("garbage");
    assert!(
        e.to_string().contains("the OCSP answer is malformed"),
        "{e}"
    );
    // OCSPResponse { responseStatus tryLater }
    let e = query
        .read_response(&[0x30, 0x03, 0x0a, 0x01, 0x03], now)
        .expect_err("try later");
    assert!(e.to_string().contains("answered TryLater"), "{e}");
    let e = sign(Some("https://ocsp.example")).expect_err("https");
    assert!(e.to_string().contains("--ocsp-url"), "{e}");
}
