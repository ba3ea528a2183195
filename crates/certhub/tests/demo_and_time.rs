//! `pki demo supply-chain` output, and `pki verify --at` moving time both ways.

mod common;

use common::{certhub, s, tmp};

#[test]
fn demo_builds_the_four_levels_and_verify_at_moves_time() {
    let t = tmp();
    let d = t.path();
    let out = d.join("sc");
    let run = certhub(
        d,
        &[
            "pki",
            "demo",
            "supply-chain",
            "--out",
            s(&out),
            "--devices",
            "3",
        ],
    )
    .ok();
    assert!(run.stdout.contains("3 device certificates"), "{run}");
    for folder in ["company-x", "factory-y", "technician-z"] {
        assert!(out.join(folder).join("cert.pem").is_file(), "{folder}");
        assert!(out.join(folder).join("key.pem").is_file(), "{folder}");
    }
    let trust = out.join("company-x/cert.pem");
    for i in 1..=3 {
        let id = format!("smart-x-widget-{i:04}");
        let chain = out.join("devices").join(&id).join("chain.pem");
        let run = certhub(
            d,
            &[
                "pki",
                "verify",
                "--trust",
                s(&trust),
                "--chain",
                s(&chain),
                "--device-id",
                &id,
            ],
        )
        .ok();
        assert!(run.stdout.starts_with("ok: trusted by"), "{run}");
    }
    let chain = out.join("devices/smart-x-widget-0001/chain.pem");
    // Devices are valid for 365 days, their CAs longer: in ten years the leaf has expired...
    let run = certhub(
        d,
        &[
            "pki",
            "verify",
            "--trust",
            s(&trust),
            "--chain",
            s(&chain),
            "--at",
            "2036-01-01T00:00:00Z",
        ],
    )
    .code(1);
    assert!(
        run.stdout
            .starts_with("rejected: certificate-expired: the leaf"),
        "{run}"
    );
    // ...and before any of it was made nothing is valid yet.
    let run = certhub(
        d,
        &[
            "pki",
            "verify",
            "--trust",
            s(&trust),
            "--chain",
            s(&chain),
            "--at",
            "2001-01-01T00:00:00Z",
        ],
    )
    .code(1);
    assert!(run.stdout.starts_with("rejected: not-yet-valid:"), "{run}");
    // The chain has the leaf and both intermediates, never the root.
    let run = certhub(d, &["pki", "inspect", "--json", s(&chain)]).ok();
    let infos: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let subjects: Vec<&str> = infos
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["subject"].as_str().expect("subject"))
        .collect();
    assert_eq!(
        subjects,
        [
            "CN=smart-x-widget-0001",
            "CN=Technician-Z CA, O=Company-X",
            "CN=Factory-Y CA, O=Company-X"
        ]
    );
    assert_eq!(infos[0]["basic_constraints"]["ca"], false);
    assert_eq!(infos[1]["basic_constraints"]["path_len"], 0);
    assert_eq!(infos[2]["basic_constraints"]["path_len"], 1);
}
