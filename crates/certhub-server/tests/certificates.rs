//! CA registration and proof of possession through the API, with certificates made by
//! certhub's own toolkit and by rcgen directly for the broken ones.

mod common;

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use certhub_pki::{
    CaFiles, Issuer, KeyAlgorithm, create_root, parse_subject, verification_certificate,
};
use common::{Hub, hub, hub_with_code_ttl, message};
use serde_json::{Value, json};
use time::OffsetDateTime;

struct Ca {
    pem: String,
    issuer: Issuer,
}

fn ca(cn: &str) -> Ca {
    let made = create_root(
        &parse_subject(&format!("CN={cn}")).expect("subject"),
        KeyAlgorithm::EcdsaP256,
        365,
        None,
        OffsetDateTime::now_utc(),
    )
    .expect("root");
    let issuer = Issuer::load(CaFiles {
        cert: made.pem.as_bytes(),
        key: &made.key_pem,
        chain: None,
    })
    .expect("issuer");
    Ca {
        pem: made.pem,
        issuer,
    }
}

fn pop(ca: &Ca, code: &str) -> String {
    verification_certificate(&ca.issuer, code, OffsetDateTime::now_utc())
        .expect("pop")
        .pem
}

fn upload_body(certificate: &str, verified: bool) -> String {
    json!({"properties": {"certificate": certificate, "isVerified": verified}}).to_string()
}

async fn upload(h: &Hub, name: &str, certificate: &str) -> (StatusCode, Value) {
    h.owner(
        "PUT",
        &format!("/certificates/{name}"),
        Some(&upload_body(certificate, false)),
    )
    .await
}

async fn generate(h: &Hub, name: &str, etag: &str) -> (StatusCode, Value) {
    let t = h.token("iothubowner");
    h.call(
        "POST",
        &format!("/certificates/{name}/generateVerificationCode"),
        Some(&t),
        Some(&format!("\"{etag}\"")),
        None,
    )
    .await
}

async fn verify(h: &Hub, name: &str, etag: &str, certificate: &str) -> (StatusCode, Value) {
    let t = h.token("iothubowner");
    h.call(
        "POST",
        &format!("/certificates/{name}/verify"),
        Some(&t),
        Some(&format!("\"{etag}\"")),
        Some(&json!({"certificate": certificate}).to_string()),
    )
    .await
}

#[tokio::test]
async fn upload_forms_and_duplicates() {
    let h = hub().await;
    let (a, b, c) = (ca("Company-X Root CA"), ca("Other A"), ca("Other B"));
    let (s, v) = upload(&h, "company-x", &a.pem).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["properties"]["isVerified"], false);
    assert_eq!(v["properties"]["subject"], "CN=Company-X Root CA");
    assert_eq!(
        v["properties"]["thumbprint"].as_str().map(str::len),
        Some(40)
    );
    assert!(
        v["properties"]["expiry"]
            .as_str()
            .is_some_and(|e| e.ends_with("GMT"))
    );
    // base64 of DER (.cer) and base64 of PEM (what az sends).
    let der = certhub_pki::read_certificates(b.pem.as_bytes()).expect("der");
    let (s, v) = upload(&h, "b", &B64.encode(der[0].as_ref())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = upload(&h, "c", &B64.encode(c.pem.as_bytes())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The same name, or the same certificate under another name, is refused.
    let (s, v) = upload(&h, "company-x", &b.pem).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = upload(&h, "company-x-again", &a.pem).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(message(&v).contains("\"company-x\""), "{v}");
    let (s, list) = h.owner("GET", "/certificates", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["value"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn uploads_that_must_be_refused() {
    let h = hub().await;
    let a = ca("Company-X Root CA");
    let key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let leaf = certhub_testkit::Ca::root("Some Root")
        .device("widget-1")
        .pem();
    let expired = certhub_testkit::Ca::root_with("Old Root", |p| {
        certhub_testkit::validity(p, 0, 86_400);
    })
    .pem();
    let cases = [
        (
            format!("{}{key}", a.pem),
            "private key never leaves its owner",
        ),
        (format!("{}{enc}", a.pem), "ENCRYPTED PRIVATE KEY"),
        (B64.encode(format!("{}{key}", a.pem)), "private key"),
        (leaf, "not a CA certificate"),
        (expired, "expired"),
        ("not a certificate".to_string(), "neither PEM nor base64"),
        (B64.encode("garbage"), "nor DER"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let (s, v) = upload(&h, &format!("bad-{i}"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{needle}: {v}");
        assert!(message(&v).contains(needle), "{needle}: {v}");
        assert!(
            message(&v).starts_with("ErrorCode:CertificateInvalid;"),
            "{v}"
        );
    }
    let (s, v) = h
        .owner("PUT", "/certificates/x", Some(r#"{"properties":{}}"#))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = upload(&h, "bad!name", &a.pem).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, list) = h.owner("GET", "/certificates", None).await;
    assert_eq!(
        list["value"].as_array().map(Vec::len),
        Some(0),
        "nothing stored"
    );
}

#[tokio::test]
async fn proof_of_possession() {
    let h = hub().await;
    let a = ca("Company-X Root CA");
    let (_, v) = upload(&h, "company-x", &a.pem).await;
    let etag0 = v["etag"].as_str().expect("etag").to_string();

    // No code yet.
    let (s, v) = verify(&h, "company-x", &etag0, &pop(&a, "x")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        message(&v).contains("generateVerificationCode first"),
        "{v}"
    );

    let (s, v) = generate(&h, "company-x", &etag0).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let code = v["properties"]["verificationCode"]
        .as_str()
        .expect("code")
        .to_string();
    assert_eq!(code.len(), 48);
    assert!(
        code.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    );
    let etag1 = v["etag"].as_str().expect("etag").to_string();
    assert_ne!(etag1, etag0, "a new code bumps the ETag");

    // The old ETag no longer works.
    let (s, _) = verify(&h, "company-x", &etag0, &pop(&a, &code)).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    // Wrong CN.
    let (s, v) = verify(&h, "company-x", &etag1, &pop(&a, "WRONG")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&v).contains("CN is \"WRONG\""), "{v}");
    // Signed by another CA: both issuers named.
    let other = ca("Mallory CA");
    let (s, v) = verify(&h, "company-x", &etag1, &pop(&other, &code)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let m = message(&v);
    assert!(
        m.contains("Mallory CA") && m.contains("Company-X Root CA"),
        "{m}"
    );
    // Same name as the CA but another key.
    let twin = ca("Company-X Root CA");
    let (s, v) = verify(&h, "company-x", &etag1, &pop(&twin, &code)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&v).contains("signed by another key"), "{v}");
    // A CA certificate is no verification certificate.
    let (s, _) = verify(&h, "company-x", &etag1, &a.pem).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The right one.
    let (s, v) = verify(&h, "company-x", &etag1, &pop(&a, &code)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["properties"]["isVerified"], true);
    let etag2 = v["etag"].as_str().expect("etag").to_string();
    assert_ne!(etag2, etag1);
    // The code is consumed.
    let (s, v) = verify(&h, "company-x", &etag2, &pop(&a, &code)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Every step is in the audit trail.
    let (_, log) = h.owner("GET", "/audit", None).await;
    let ops: Vec<String> = log
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["target"] == "certificates/company-x")
        .map(|r| {
            format!(
                "{}:{}",
                r["operation"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        ops.first().map(String::as_str),
        Some("ca.verify:VerificationCodeMissing")
    );
    assert!(ops.contains(&"ca.verify:ok".to_string()), "{ops:?}");
    assert!(
        ops.contains(&"ca.verification-code:ok".to_string()),
        "{ops:?}"
    );
    assert_eq!(ops.last().map(String::as_str), Some("ca.upload:ok"));
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let h = hub_with_code_ttl(std::time::Duration::ZERO).await;
    let a = ca("Company-X Root CA");
    let (_, v) = upload(&h, "company-x", &a.pem).await;
    let (_, v) = generate(&h, "company-x", v["etag"].as_str().expect("etag")).await;
    let code = v["properties"]["verificationCode"]
        .as_str()
        .expect("code")
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (s, v) = verify(
        &h,
        "company-x",
        v["etag"].as_str().expect("etag"),
        &pop(&a, &code),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&v).contains("expired"), "{v}");
}

#[tokio::test]
async fn verified_at_upload_is_for_owners_and_audited() {
    let h = hub().await;
    let a = ca("Company-X Root CA");
    let rw = h.token("registryReadWrite");
    let (s, v) = h
        .call(
            "PUT",
            "/certificates/x",
            Some(&rw),
            None,
            Some(&upload_body(&a.pem, true)),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = h
        .owner("PUT", "/certificates/x", Some(&upload_body(&a.pem, true)))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["properties"]["isVerified"], true);
    let (_, log) = h.owner("GET", "/audit", None).await;
    assert!(
        log[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("proof of possession skipped")),
        "{log}"
    );
    let t = h.token("iothubowner");
    let (s, _) = h
        .call("DELETE", "/certificates/x", Some(&t), Some("\"*\""), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h.owner("GET", "/certificates/x", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
