//! Two certhub hubs on loopback behind one provisioning endpoint: hub A provisions, hub B is
//! linked to it (`certhub dps hub add`). 100 widgets of the four-level chain that were never
//! registered by hand provision with the Python SDK's ProvisioningDeviceClient through A; the
//! allocation policy (hashed, evenly weighted) spreads them over both hubs, each is created on
//! its hub with the group's initial twin and connects there and sends a message. Hub B does
//! not hold the group's CA in the hashed run (its widgets authenticate there by thumbprint)
//! and does in the evenly weighted run (by their CA there too).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{certhub_at, enroll_company_x, python_to_hub, s, start_hub_on, tmp};

const WIDGETS: usize = 100;

#[test]
fn hashed_allocation_spreads_widgets_over_two_hubs() {
    spreads("127.0.0.45", "127.0.0.46", "hashed", false);
}

#[test]
fn evenly_weighted_allocation_spreads_widgets_over_two_hubs() {
    spreads("127.0.0.51", "127.0.0.52", "evenlyWeighted", true);
}

fn spreads(host_a: &str, host_b: &str, policy: &str, b_trusts_the_ca: bool) {
    let t = tmp();
    let d = t.path();
    let data_a = d.join("a");
    let data_b = d.join("b");
    let hub_a = start_hub_on(&data_a, host_a, &[]);
    let hub_b = start_hub_on(&data_b, host_b, &[]);
    let a = |args: &[&str]| certhub_at(d, &data_a, args).ok();
    let b = |args: &[&str]| certhub_at(d, &data_b, args).ok();

    enroll_company_x(d, &data_a, WIDGETS);
    if b_trusts_the_ca {
        b(&[
            "ca",
            "upload",
            "--name",
            "company-x",
            "--file",
            "pki/company-x/cert.pem",
            "--verified",
        ]);
    }
    let b_cs = b(&["hub", "connection-string"]).stdout.trim().to_string();
    let b_ca = data_b.join("tls/server-ca.pem");
    a(&[
        "dps",
        "hub",
        "add",
        "--hub-connection-string",
        &b_cs,
        "--hub-ca-file",
        s(&b_ca),
    ]);
    a(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
        "--allocation",
        policy,
        "--tags",
        r#"{"line": 3}"#,
        "--desired",
        r#"{"rate": 5}"#,
    ]);
    let scope = a(&["dps", "id-scope"]).stdout.trim().to_string();

    // The SDK dials 8883 on whichever hub it was given: A's port for A's address, B's for B's.
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/provisioning_hubs.py");
    let out = python_to_hub(&hub_a)
        .arg(&script)
        .current_dir(d)
        .env(
            "CERTHUB_TEST_PORT_MAP",
            format!("8883={},{host_b}:8883={}", hub_a.mqtt_port, hub_b.mqtt_port),
        )
        .env("CERTHUB_HOST", host_a)
        .env("CERTHUB_HOST_B", host_b)
        .env("CERTHUB_CA", data_a.join("tls/server-ca.pem"))
        .env("CERTHUB_CA_B", &b_ca)
        .env("CERTHUB_DIR", d.join("pki"))
        .env("CERTHUB_ID_SCOPE", &scope)
        .env("CERTHUB_WIDGETS", WIDGETS.to_string())
        .env("CERTHUB_PARALLEL", "10")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stdout.contains(&format!(
                "provisioning_hubs: {WIDGETS} widgets provisioned and connected"
            )),
        "provisioning_hubs.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // Where each widget went, as the script saw it.
    let placed: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("widget "))
        .filter_map(|l| l.split_once(' '))
        .map(|(w, h)| (w.to_string(), h.to_string()))
        .collect();
    assert_eq!(placed.len(), WIDGETS, "{stdout}");
    let on = |host: &str| placed.values().filter(|h| *h == host).count();
    let (on_a, on_b) = (on(host_a), on(host_b));
    assert_eq!(on_a + on_b, WIDGETS, "{placed:?}");
    // Equal weights: hashed puts each half about evenly (a binomial spread; 30..70 holds with
    // a probability beyond 1 - 1e-4), evenly weighted within a few (registrations race).
    let band = if policy == "hashed" { 30..=70 } else { 40..=60 };
    assert!(
        band.contains(&on_a),
        "{policy}: {on_a} widgets on A, {on_b} on B"
    );

    // Each hub holds exactly its widgets, with the group's initial twin, and their telemetry.
    for (host, data) in [(host_a, &data_a), (host_b, &data_b)] {
        let listed = certhub_at(d, data, &["device", "list"]).ok().stdout;
        for (widget, hub) in &placed {
            assert_eq!(
                listed.contains(widget.as_str()),
                hub == host,
                "{widget} (assigned {hub}) on {host}: {listed}"
            );
        }
        let sample = placed
            .iter()
            .find(|(_, h)| *h == host)
            .map(|(w, _)| w.clone())
            .expect("a widget on each hub");
        let twin = certhub_at(d, data, &["twin", "show", "--device", &sample])
            .ok()
            .stdout;
        assert!(
            twin.contains("\"line\": 3") && twin.contains("\"rate\": 5"),
            "{twin}"
        );
        let messages = certhub_at(
            d,
            data,
            &[
                "messages",
                "tail",
                "--device",
                &sample,
                "--count",
                "1",
                "--idle-exit",
                "2",
            ],
        )
        .ok()
        .stdout;
        assert!(
            messages.contains(&format!("hello from {sample}")),
            "{messages}"
        );
        let identity = certhub_at(d, data, &["device", "show", "--id", &sample])
            .ok()
            .stdout;
        let expected = if host == host_a || b_trusts_the_ca {
            "certificateAuthority"
        } else {
            "selfSigned"
        };
        assert!(identity.contains(expected), "{host}: {identity}");
    }
    // The provisioning service counts them the same way.
    let hubs = a(&["dps", "hub", "list"]).stdout;
    assert!(
        hubs.contains(&format!(
            "{host_a}\tweight 1\tthis hub\t{on_a} registrations"
        )) && hubs.contains(&format!("{host_b}\tweight 1\tlinked\t{on_b} registrations")),
        "{hubs}"
    );
    drop(hub_b);
}
