//! Bad input to `certhub pki`: every refusal is one line on stderr, `error: ` first, naming the
//! file and the problem; the exit code is 2; nothing panics; and nothing is left half-written.

mod common;

use std::path::{Path, PathBuf};

use common::{
    Run, assert_error, assert_no_partial, certhub, hierarchy, issue, openssl, read, read_text,
    request, root, s, sign_run, snapshot, tmp, to_der, write,
};

/// The read-only commands that take a certificate file, and `sign --csr`, each given `file`.
fn every_reader(dir: &Path, root: &Path, issuer: &Path, file: &Path) -> Vec<Run> {
    let out = dir.join("never-written");
    let runs = vec![
        certhub(dir, &["pki", "thumbprint", s(file)]),
        certhub(dir, &["pki", "inspect", s(file)]),
        certhub(dir, &["pki", "inspect", "--json", s(file)]),
        certhub(
            dir,
            &[
                "pki",
                "verify",
                "--trust",
                s(&root.join("cert.pem")),
                "--chain",
                s(file),
            ],
        ),
        certhub(
            dir,
            &[
                "pki",
                "verify",
                "--trust",
                s(file),
                "--chain",
                s(&root.join("cert.pem")),
            ],
        ),
        sign_run(dir, issuer, file, "device", &out),
    ];
    assert!(!out.exists(), "{} was written", out.display());
    runs
}

/// `pki sign` must fail with one error line naming `csr` (and the needles), writing nothing.
#[track_caller]
fn sign_fails(dir: &Path, issuer: &Path, csr: &Path, profile: &str, needles: &[&str]) -> Run {
    let out = dir.join("sign-out");
    let run = sign_run(dir, issuer, csr, profile, &out);
    assert_error(&run, needles);
    assert!(!out.exists(), "{} was written: {run}", out.display());
    assert_no_partial(dir);
    run
}

/// The first half of a file, as a new file.
fn cut_in_half(src: &Path, dst: &Path) -> PathBuf {
    let bytes = read(src);
    write(dst, &bytes[..bytes.len() / 2]);
    dst.to_path_buf()
}

#[test]
fn truncated_pem_is_refused_everywhere() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let cert = cut_in_half(&h.dev.join("cert.pem"), &d.join("truncated.pem"));
    for run in every_reader(d, &h.root, &h.int, &cert) {
        assert_error(&run, &[s(&cert), "truncated"]);
    }
    // A chain whose second certificate is cut in its middle.
    let bytes = read(&h.dev.join("chain.pem"));
    let second = read_text(&h.dev.join("chain.pem"))
        .rfind("-----BEGIN CERTIFICATE-----")
        .expect("two certificates");
    assert!(second > 0, "two certificates");
    let chain = d.join("truncated-chain.pem");
    write(&chain, &bytes[..second + (bytes.len() - second) / 2]);
    let run = certhub(
        d,
        &[
            "pki",
            "verify",
            "--trust",
            s(&h.root.join("cert.pem")),
            "--chain",
            s(&chain),
        ],
    );
    assert_error(&run, &[s(&chain), "truncated"]);
    // A truncated CSR.
    let csr = cut_in_half(&h.dev.join("request.csr"), &d.join("truncated.csr"));
    sign_fails(d, &h.int, &csr, "device", &[s(&csr), "truncated"]);
    let run = certhub(d, &["pki", "inspect", s(&csr)]);
    assert_error(&run, &[s(&csr), "truncated"]);
    assert_no_partial(d);
}

#[test]
fn der_where_pem_is_expected_is_accepted() {
    let t = tmp();
    let d = t.path();
    let root = root(d, "root", "CN=DER Root", "ecdsa-p256");
    let dev = issue(d, &root, "dev", "CN=der-device", "device", "ecdsa-p256");
    let root_der = to_der(d, &root.join("cert.pem"), &d.join("root.der"));
    let dev_der = to_der(d, &dev.join("cert.pem"), &d.join("dev.der"));
    assert_ne!(read(&dev_der).first(), Some(&b'-'), "DER, not PEM");

    let pem = certhub(d, &["pki", "thumbprint", s(&dev.join("cert.pem"))]).ok();
    let der = certhub(d, &["pki", "thumbprint", s(&dev_der)]).ok();
    assert_eq!(pem.stdout, der.stdout, "same certificate, same thumbprints");

    let text = certhub(d, &["pki", "inspect", s(&dev_der)]).ok().stdout;
    assert!(
        text.contains("subject:             CN=der-device"),
        "{text}"
    );
    let json = certhub(d, &["pki", "inspect", "--json", s(&dev_der)])
        .ok()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v[0]["subject"], "CN=der-device");
    assert_eq!(v[0]["issuer"], "CN=DER Root");

    let run = certhub(
        d,
        &[
            "pki",
            "verify",
            "--trust",
            s(&root_der),
            "--chain",
            s(&dev_der),
            "--device-id",
            "der-device",
        ],
    )
    .ok();
    assert!(run.stdout.starts_with("ok"), "{run}");

    // A DER CSR signs too.
    let req = request(d, "req", "CN=der-csr", "ecdsa-p256");
    let csr_der = d.join("req.der");
    openssl(
        d,
        &[
            "req",
            "-in",
            s(&req.join("request.csr")),
            "-outform",
            "DER",
            "-out",
            s(&csr_der),
        ],
    )
    .ok();
    let out = d.join("der-signed");
    sign_run(d, &root, &csr_der, "device", &out).ok();
    assert!(out.join("cert.pem").exists());
}

#[test]
fn private_key_where_a_certificate_is_expected() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let key = h.dev.join("key.pem");
    for run in every_reader(d, &h.root, &h.int, &key) {
        assert_error(&run, &[s(&key), "private key"]);
    }
    // The same key in DER.
    let key_der = d.join("key.der");
    openssl(
        d,
        &[
            "pkey",
            "-in",
            s(&key),
            "-outform",
            "DER",
            "-out",
            s(&key_der),
        ],
    )
    .ok();
    let run = certhub(d, &["pki", "thumbprint", s(&key_der)]);
    assert_error(&run, &[s(&key_der), "private key"]);
    let run = certhub(
        d,
        &[
            "pki",
            "verify",
            "--trust",
            s(&key_der),
            "--chain",
            s(&h.dev.join("chain.pem")),
        ],
    );
    assert_error(&run, &[s(&key_der), "private key"]);
}

#[test]
fn csr_with_a_bad_signature() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let req = request(d, "req", "CN=tampered-1", "ecdsa-p256");
    let good = d.join("good.der");
    openssl(
        d,
        &[
            "req",
            "-in",
            s(&req.join("request.csr")),
            "-outform",
            "DER",
            "-out",
            s(&good),
        ],
    )
    .ok();
    // The last byte of the DER is the last byte of the ECDSA signature's `s`: flipping it keeps
    // every length and tag intact, so the CSR still parses but no longer verifies.
    let mut bytes = read(&good);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let bad_der = d.join("bad.der");
    write(&bad_der, &bytes);
    // The same, as PEM.
    let b64 = openssl(d, &["base64", "-in", s(&bad_der)]).ok().stdout;
    let bad_pem = d.join("bad.csr");
    write(
        &bad_pem,
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"),
    );
    // openssl agrees: it parses the request but the signature fails (OpenSSL 3.0 says so on
    // stderr and still exits 0).
    let run = openssl(d, &["req", "-in", s(&bad_pem), "-noout", "-verify"]);
    assert!(
        run.code != Some(0) || run.stderr.contains("verify failure"),
        "openssl verified the tampered CSR: {run}"
    );

    let ok = certhub(d, &["pki", "inspect", s(&good)]).ok().stdout;
    assert!(ok.contains("(verifies)"), "{ok}");
    for bad in [&bad_der, &bad_pem] {
        let text = certhub(d, &["pki", "inspect", s(bad)]).ok().stdout;
        assert!(
            text.contains("subject:             CN=tampered-1"),
            "it parses: {text}"
        );
        assert!(text.contains("DOES NOT VERIFY"), "{text}");
        let json = certhub(d, &["pki", "inspect", "--json", s(bad)])
            .ok()
            .stdout;
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["signature_valid"], false, "{json}");
        sign_fails(d, &h.int, bad, "device", &[s(bad), "signature"]);
    }
}

#[test]
fn issuer_folder_without_key_pem() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let nokey = d.join("nokey");
    std::fs::create_dir(&nokey).expect("a folder");
    write(&nokey.join("cert.pem"), read(&h.root.join("cert.pem")));
    let csr = h.dev.join("request.csr");
    sign_fails(d, &nokey, &csr, "device", &[s(&nokey.join("key.pem"))]);
    let pop = d.join("pop.pem");
    let run = certhub(
        d,
        &[
            "pki",
            "verification-cert",
            "--issuer",
            s(&nokey),
            "--code",
            "ABC123",
            "--out",
            s(&pop),
        ],
    );
    assert_error(&run, &[s(&nokey.join("key.pem"))]);
    assert!(!pop.exists());
}

#[test]
fn issuer_folder_that_does_not_exist() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let nowhere = d.join("nowhere");
    let csr = h.dev.join("request.csr");
    sign_fails(
        d,
        &nowhere,
        &csr,
        "device",
        &[s(&nowhere), "no such issuer folder"],
    );
    // A file is not an issuer folder either.
    let file = h.root.join("cert.pem");
    sign_fails(
        d,
        &file,
        &csr,
        "device",
        &[s(&file), "no such issuer folder"],
    );
    assert!(!nowhere.exists());
}

#[test]
fn damaged_issuer_folder_is_refused() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let csr = h.dev.join("request.csr");
    let damaged = d.join("damaged");
    std::fs::create_dir(&damaged).expect("a folder");
    write(&damaged.join("key.pem"), read(&h.int.join("key.pem")));
    cut_in_half(&h.int.join("cert.pem"), &damaged.join("cert.pem"));
    sign_fails(d, &damaged, &csr, "device", &[s(&damaged), "truncated"]);
    // Whole cert.pem, cut chain.pem.
    write(&damaged.join("cert.pem"), read(&h.int.join("cert.pem")));
    cut_in_half(&h.int.join("chain.pem"), &damaged.join("chain.pem"));
    sign_fails(d, &damaged, &csr, "device", &[s(&damaged), "truncated"]);
    // Another key than the certificate's.
    std::fs::remove_file(damaged.join("chain.pem")).expect("removed");
    std::fs::remove_file(damaged.join("key.pem")).expect("removed");
    write(&damaged.join("key.pem"), read(&h.root.join("key.pem")));
    sign_fails(
        d,
        &damaged,
        &csr,
        "device",
        &[s(&damaged), "does not belong"],
    );
    // Not a key at all.
    std::fs::remove_file(damaged.join("key.pem")).expect("removed");
    write(&damaged.join("key.pem"), "not a key\n");
    sign_fails(d, &damaged, &csr, "device", &[s(&damaged), "private key"]);
}

/// When a file inside the issuer folder is damaged, the error names that file, not only the
/// folder. Today it says `<folder>: malformed PEM: ...` for a cut cert.pem and a cut chain.pem
/// alike, so the user cannot tell which one to fix. See the report.
#[test]
fn damaged_issuer_file_is_named() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let csr = h.dev.join("request.csr");
    let damaged = d.join("damaged");
    std::fs::create_dir(&damaged).expect("a folder");
    write(&damaged.join("key.pem"), read(&h.int.join("key.pem")));
    write(&damaged.join("cert.pem"), read(&h.int.join("cert.pem")));
    cut_in_half(&h.int.join("chain.pem"), &damaged.join("chain.pem"));
    sign_fails(
        d,
        &damaged,
        &csr,
        "device",
        &[s(&damaged.join("chain.pem"))],
    );
    cut_in_half(&h.int.join("cert.pem"), &damaged.join("cut-cert.pem"));
    std::fs::rename(damaged.join("cut-cert.pem"), damaged.join("cert.pem")).expect("renamed");
    std::fs::remove_file(damaged.join("chain.pem")).expect("removed");
    sign_fails(d, &damaged, &csr, "device", &[s(&damaged.join("cert.pem"))]);
    write(&damaged.join("cert.pem"), read(&h.int.join("cert.pem")));
    write(&damaged.join("key.pem"), "not a key\n");
    sign_fails(d, &damaged, &csr, "device", &[s(&damaged.join("key.pem"))]);
}

#[test]
fn unknown_and_weak_algorithm_names_are_refused_by_clap() {
    let t = tmp();
    let d = t.path();
    let out = d.join("never");
    let choices = [
        "ecdsa-p256",
        "ecdsa-p384",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "ed25519",
    ];
    for command in ["root", "request"] {
        let run = certhub(
            d,
            &[
                "pki",
                command,
                "--subject",
                "CN=x",
                "--out",
                s(&out),
                "--algorithm",
                "dsa",
            ],
        )
        .code(2);
        assert!(run.stderr.starts_with("error: "), "{run}");
        assert!(run.stderr.contains("'dsa'"), "{run}");
        for c in choices {
            assert!(run.stderr.contains(c), "valid choice {c} not named: {run}");
        }
        let run = certhub(
            d,
            &[
                "pki",
                command,
                "--subject",
                "CN=x",
                "--out",
                s(&out),
                "--algorithm",
                "rsa-1024",
            ],
        )
        .code(2);
        assert!(run.stderr.starts_with("error: "), "{run}");
        assert!(run.stderr.contains("rsa-1024"), "{run}");
        assert!(run.stderr.contains("2048"), "{run}");
        assert!(run.stdout.is_empty(), "{run}");
    }
    let run = certhub(
        d,
        &[
            "pki",
            "demo",
            "supply-chain",
            "--out",
            s(&out),
            "--algorithm",
            "dsa",
        ],
    )
    .code(2);
    assert!(run.stderr.contains("ecdsa-p256"), "{run}");
    assert!(!out.exists());
    assert_no_partial(d);
}

#[test]
fn existing_output_folder_is_left_untouched() {
    let t = tmp();
    let d = t.path();
    let existing = d.join("existing");
    std::fs::create_dir_all(existing.join("sub")).expect("folders");
    write(&existing.join("key.pem"), "precious key\n");
    write(&existing.join("sub/cert.pem"), "precious cert\n");
    let before = snapshot(d);
    let runs = [
        certhub(
            d,
            &["pki", "root", "--subject", "CN=x", "--out", s(&existing)],
        ),
        certhub(
            d,
            &["pki", "request", "--subject", "CN=x", "--out", s(&existing)],
        ),
        certhub(
            d,
            &[
                "pki",
                "demo",
                "supply-chain",
                "--devices",
                "2",
                "--out",
                s(&existing),
            ],
        ),
    ];
    for run in &runs {
        assert_error(run, &[s(&existing), "already exists"]);
        assert_eq!(snapshot(d), before, "something changed after {run}");
    }
    assert_no_partial(d);
}

#[test]
fn sign_never_overwrites_a_certificate() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let before = snapshot(&h.dev);
    let other = request(d, "other", "CN=other-1", "ecdsa-p256");
    // dev/ already holds cert.pem and chain.pem.
    let run = sign_run(d, &h.int, &other.join("request.csr"), "device", &h.dev);
    assert_error(&run, &[s(&h.dev.join("cert.pem")), "already exists"]);
    assert_eq!(snapshot(&h.dev), before, "dev/ changed");
    // Only chain.pem exists: nothing is written, not even cert.pem (all or nothing).
    let half = d.join("half");
    std::fs::create_dir(&half).expect("a folder");
    write(&half.join("chain.pem"), "old chain\n");
    let run = sign_run(d, &h.int, &other.join("request.csr"), "device", &half);
    assert_error(&run, &[s(&half.join("chain.pem")), "already exists"]);
    assert!(!half.join("cert.pem").exists());
    assert_eq!(read_text(&half.join("chain.pem")), "old chain\n");
    // verification-cert never overwrites its --out either.
    let pop = d.join("pop.pem");
    write(&pop, "old pop\n");
    let run = certhub(
        d,
        &[
            "pki",
            "verification-cert",
            "--issuer",
            s(&h.root),
            "--code",
            "ABC123",
            "--out",
            s(&pop),
        ],
    );
    assert_error(&run, &[s(&pop), "already exists"]);
    assert_eq!(read_text(&pop), "old pop\n");
    assert_no_partial(d);
}

#[test]
fn empty_file() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    for (name, contents) in [("empty.pem", ""), ("blank.pem", "\n  \n\t\n")] {
        let file = d.join(name);
        write(&file, contents);
        for run in every_reader(d, &h.root, &h.int, &file) {
            assert_error(&run, &[s(&file), "empty"]);
        }
    }
    assert_no_partial(d);
}

/// Deterministic noise (xorshift64*), so a failure can be reproduced.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[test]
fn random_bytes() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let mut plain = noise(0x5eed, 1024);
    plain[0] = 0x42; // not a DER SEQUENCE
    let mut der_like = noise(0xd5e1, 1024);
    der_like[..4].copy_from_slice(&[0x30, 0x82, 0x03, 0xfc]); // claims a 1020-byte SEQUENCE
    for (name, bytes) in [("random.bin", plain), ("random.der", der_like)] {
        let file = d.join(name);
        write(&file, &bytes);
        for run in every_reader(d, &h.root, &h.int, &file) {
            assert_error(&run, &[s(&file)]);
        }
    }
    assert_no_partial(d);
}

#[test]
fn non_ca_certificate_as_issuer() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let other = request(d, "other", "CN=other-2", "ecdsa-p256");
    let csr = other.join("request.csr");
    let run = sign_fails(d, &h.dev, &csr, "device", &[s(&h.dev), "not a CA"]);
    assert!(run.stderr.contains("CN=device-1"), "{run}");
    sign_fails(d, &h.dev, &csr, "intermediate", &[s(&h.dev), "not a CA"]);
    let pop = d.join("pop.pem");
    let run = certhub(
        d,
        &[
            "pki",
            "verification-cert",
            "--issuer",
            s(&h.dev),
            "--code",
            "ABC123",
            "--out",
            s(&pop),
        ],
    );
    assert_error(&run, &[s(&h.dev), "not a CA"]);
    assert!(!pop.exists());
}

#[test]
fn intermediate_under_a_path_len_zero_ca_is_refused() {
    let t = tmp();
    let d = t.path();
    // A root with pathLenConstraint 0.
    let root0 = d.join("root0");
    certhub(
        d,
        &[
            "pki",
            "root",
            "--subject",
            "CN=Flat Root",
            "--path-len",
            "0",
            "--out",
            s(&root0),
        ],
    )
    .ok();
    let sub = request(d, "sub", "CN=Sub CA", "ecdsa-p256");
    let csr = sub.join("request.csr");
    sign_fails(
        d,
        &root0,
        &csr,
        "intermediate",
        &[s(&csr), "pathLenConstraint"],
    );
    // An intermediate given --path-len 0 by an unconstrained root: same refusal one level down.
    let root = root(d, "root", "CN=Open Root", "ecdsa-p256");
    let int = request(d, "int", "CN=Last CA", "ecdsa-p256");
    certhub(
        d,
        &[
            "pki",
            "sign",
            "--issuer",
            s(&root),
            "--csr",
            s(&int.join("request.csr")),
            "--profile",
            "intermediate",
            "--path-len",
            "0",
            "--out",
            s(&int),
        ],
    )
    .ok();
    sign_fails(
        d,
        &int,
        &csr,
        "intermediate",
        &[s(&csr), "pathLenConstraint"],
    );
    // Devices are still fine under both.
    let dev = request(d, "dev", "CN=flat-device", "ecdsa-p256");
    sign_run(
        d,
        &root0,
        &dev.join("request.csr"),
        "device",
        &d.join("dev-out"),
    )
    .ok();
}

#[test]
fn device_csr_without_cn() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let csr = d.join("nocn.csr");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&d.join("nocn.key")),
            "-out",
            s(&csr),
            "-subj",
            "/O=Acme",
        ],
    )
    .ok();
    sign_fails(d, &h.int, &csr, "device", &[s(&csr), "no CN"]);
    sign_fails(d, &h.int, &csr, "intermediate", &[s(&csr), "no CN"]);
}

#[test]
fn verify_at_not_a_date() {
    let t = tmp();
    let d = t.path();
    let h = hierarchy(d);
    let run = certhub(
        d,
        &[
            "pki",
            "verify",
            "--trust",
            s(&h.root.join("cert.pem")),
            "--chain",
            s(&h.dev.join("chain.pem")),
            "--at",
            "not-a-date",
        ],
    )
    .code(2);
    assert!(run.stderr.starts_with("error: "), "{run}");
    assert!(run.stderr.contains("not-a-date"), "{run}");
    assert!(run.stderr.contains("RFC 3339"), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    // A good --at works, and one after the device's expiry is a refusal, not an error.
    certhub(
        d,
        &[
            "pki",
            "verify",
            "--trust",
            s(&h.root.join("cert.pem")),
            "--chain",
            s(&h.dev.join("chain.pem")),
            "--at",
            "2200-01-01T00:00:00Z",
        ],
    )
    .code(1);
}
