//! `certhub bench` against a real hub: every scenario runs briefly and its JSON says the work
//! happened; a device the hub does not know is counted as CONNACK 5, not a crash. No timing
//! assertions: this is a smoke test of the load generator, not a measurement.

mod common;

use std::path::Path;

use common::{certhub, certhub_at, enroll_company_x, s, start_hub_with, tmp, write};
use serde_json::Value;

/// `certhub bench SCENARIO ARGS... --json`, parsed; exit 0 expected.
fn bench(d: &Path, scenario: &str, common: &[&str], args: &[&str]) -> Value {
    let mut v = vec!["bench", scenario];
    v.extend_from_slice(common);
    v.extend_from_slice(args);
    v.push("--json");
    let run = certhub(d, &v).ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"))
}

fn count(v: &Value, name: &str) -> u64 {
    v["counts"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counts.{name} in {v:#}"))
}

#[track_caller]
fn no_errors(v: &Value) {
    assert_eq!(v["errors"], serde_json::json!({}), "errors in {v:#}");
}

#[test]
fn every_scenario_runs_against_the_hub() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = start_hub_with(
        &data,
        &[
            "--https-addr",
            "127.0.0.4:0",
            "--mqtt-addr",
            "127.0.0.4:0",
            "--hostname",
            "127.0.0.4",
        ],
    );
    enroll_company_x(d, &data, 20);
    // 19 devices are registered; the 20th moves to a folder of its own and stays unknown.
    let lines: String = (1..=19)
        .map(|i| {
            format!(
                "{{\"deviceId\":\"smart-x-widget-{i:04}\",\"authentication\":{{\"type\":\"certificateAuthority\"}}}}\n"
            )
        })
        .collect();
    write(&d.join("devices.jsonl"), lines);
    certhub(
        d,
        &["device", "import", "devices.jsonl", "--data-dir", s(&data)],
    )
    .ok();
    std::fs::create_dir(d.join("unknown")).expect("a folder");
    std::fs::rename(
        d.join("pki/devices/smart-x-widget-0020"),
        d.join("unknown/smart-x-widget-0020"),
    )
    .expect("moving the unregistered device");
    let connection_string = certhub(d, &["hub", "connection-string", "--data-dir", s(&data)])
        .ok()
        .stdout
        .trim()
        .to_string();
    let ca = data.join("tls/server-ca.pem");
    // The test process stands in for the server: its /proc entries are sampled all the same.
    let pid = std::process::id().to_string();
    let port = hub.mqtt_port.to_string();
    let target = [
        "--devices",
        "pki/devices",
        "--host",
        "127.0.0.4",
        "--port",
        &port,
        "--ca",
        s(&ca),
        "--server-pid",
        &pid,
    ];

    let v = bench(
        d,
        "connect-rate",
        &target,
        &["--duration", "1", "--workers", "4"],
    );
    assert!(count(&v, "connects") > 0, "{v:#}");
    assert_eq!(count(&v, "errors"), 0, "{v:#}");
    no_errors(&v);
    assert!(
        v["latency_ms"]["handshake"]["count"].as_u64() > Some(0),
        "{v:#}"
    );
    assert!(v["server"]["cpu_s"].is_number(), "{v:#}");

    // TLS 1.2 with P-256 from a range of source addresses.
    let v = bench(
        d,
        "connect-rate",
        &target,
        &[
            "--duration",
            "0.5",
            "--workers",
            "2",
            "--tls",
            "1.2",
            "--kx",
            "p256",
            "--source-addrs",
            "127.0.0.1-127.0.0.3",
        ],
    );
    assert!(count(&v, "connects") > 0, "{v:#}");
    no_errors(&v);

    // MQTT over WebSockets on the 443 listener: connects, and telemetry acknowledged.
    let https_port = hub.https_port().to_string();
    let mut ws_target = target.to_vec();
    ws_target[5] = &https_port;
    ws_target.extend(["--transport", "ws"]);
    let v = bench(
        d,
        "connect-rate",
        &ws_target,
        &["--duration", "0.5", "--workers", "2"],
    );
    assert!(count(&v, "connects") > 0, "{v:#}");
    assert_eq!(count(&v, "errors"), 0, "{v:#}");
    assert_eq!(v["target"]["transport"], "ws", "{v:#}");
    no_errors(&v);
    let v = bench(
        d,
        "telemetry",
        &ws_target,
        &["--clients", "2", "--duration", "0.5", "--window", "4"],
    );
    assert!(count(&v, "acked") > 0, "{v:#}");
    assert_eq!(count(&v, "acked"), count(&v, "sent"), "{v:#}");
    no_errors(&v);

    let v = bench(
        d,
        "hold",
        &target,
        &["--connections", "19", "--hold", "0.5", "--ramp", "200"],
    );
    assert_eq!(count(&v, "established"), 19, "{v:#}");
    assert_eq!(count(&v, "closed_by_server_while_held"), 0, "{v:#}");
    no_errors(&v);
    assert!(v["server"]["rss_after_kib"].is_number(), "{v:#}");

    let v = bench(
        d,
        "telemetry",
        &target,
        &[
            "--clients",
            "4",
            "--duration",
            "1",
            "--window",
            "8",
            "--payload",
            "64",
        ],
    );
    assert_eq!(count(&v, "connected"), 4, "{v:#}");
    assert!(count(&v, "acked") > 0, "{v:#}");
    assert_eq!(count(&v, "acked"), count(&v, "sent"), "{v:#}");
    no_errors(&v);

    let v = bench(
        d,
        "telemetry",
        &target,
        &["--clients", "2", "--duration", "0.5", "--qos", "0"],
    );
    assert!(count(&v, "acked") > 0, "{v:#}");
    no_errors(&v);

    // Paced: 40 messages a second for 1 s, shared by 2 clients (one more each at the start).
    let v = bench(
        d,
        "telemetry",
        &target,
        &["--clients", "2", "--duration", "1", "--rate", "40"],
    );
    let sent = count(&v, "sent");
    assert!(
        (30..=44).contains(&sent),
        "{sent} sent at 40/s for 1 s: {v:#}"
    );
    assert_eq!(count(&v, "acked"), sent, "{v:#}");
    no_errors(&v);

    // One device's messages read back; a device that sent none has an empty page.
    let run = certhub(
        d,
        &[
            "bench",
            "reads",
            "--connection-string",
            &connection_string,
            "--ca",
            s(&ca),
            "--device",
            "smart-x-widget-0001",
            "--device",
            "nobody",
            "--runs",
            "2",
            "--json",
        ],
    )
    .ok();
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
    assert_eq!(v["devices"][0]["messages"], 100, "{v:#}");
    assert_eq!(v["devices"][1]["messages"], 0, "{v:#}");
    assert!(v["devices"][1]["continuation"].as_i64() > Some(0), "{v:#}");

    let v = bench(d, "storm", &target, &["--connections", "19"]);
    assert_eq!(count(&v, "connected_before"), 19, "{v:#}");
    assert_eq!(count(&v, "reconnected"), 19, "{v:#}");
    no_errors(&v);

    let v = bench(
        d,
        "revoke",
        &target,
        &[
            "--connections",
            "19",
            "--revoke",
            "3",
            "--connection-string",
            &connection_string,
        ],
    );
    assert_eq!(count(&v, "revoked"), 3, "{v:#}");
    assert_eq!(count(&v, "closed"), 3, "{v:#}");
    assert_eq!(count(&v, "other_connections_closed"), 0, "{v:#}");
    assert_eq!(count(&v, "reenabled"), 3, "{v:#}");
    assert_eq!(v["latency_ms"]["close_after_request"]["count"], 3, "{v:#}");
    no_errors(&v);
    // Enabled again: the revoked devices connect as before.
    let v = bench(d, "hold", &target, &["--connections", "3", "--hold", "0"]);
    assert_eq!(count(&v, "established"), 3, "{v:#}");

    // A device the hub does not know: CONNACK 5, counted, not retried, no crash.
    let unknown = [
        "--devices",
        "unknown",
        "--host",
        "127.0.0.4",
        "--port",
        &port,
        "--ca",
        s(&ca),
    ];
    let v = bench(
        d,
        "connect-rate",
        &unknown,
        &["--duration", "0.3", "--workers", "1"],
    );
    assert_eq!(count(&v, "connects"), 0, "{v:#}");
    assert!(v["errors"]["connack 5"].as_u64() > Some(0), "{v:#}");
    let v = bench(d, "hold", &unknown, &["--connections", "1", "--hold", "0"]);
    assert_eq!(count(&v, "established"), 0, "{v:#}");
    assert_eq!(count(&v, "failed"), 1, "{v:#}");
    assert_eq!(v["errors"]["connack 5"], 1, "{v:#}");
}

/// `certhub bench provision`: a few widgets that were never registered register through an
/// X.509 enrollment group on the verified root and connect to the hub they were assigned; a
/// second storm registers them again; a wrong ID scope is counted as the endpoint's CONNACK 5
/// and not retried.
#[test]
fn provision_registers_widgets_and_connects_them() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = start_hub_with(
        &data,
        &[
            "--https-addr",
            "127.0.0.4:0",
            "--mqtt-addr",
            "127.0.0.4:0",
            "--hostname",
            "127.0.0.4",
        ],
    );
    enroll_company_x(d, &data, 6);
    certhub_at(
        d,
        &data,
        &[
            "dps",
            "enrollment-group",
            "create",
            "--id",
            "widgets",
            "--ca",
            "company-x",
        ],
    )
    .ok();
    let scope = certhub_at(d, &data, &["dps", "id-scope"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let ca = data.join("tls/server-ca.pem");
    let pid = std::process::id().to_string();
    let port = hub.mqtt_port.to_string();
    let target = [
        "--devices",
        "pki/devices",
        "--host",
        "127.0.0.4",
        "--port",
        &port,
        "--ca",
        s(&ca),
        "--server-pid",
        &pid,
    ];
    let storm = ["--id-scope", &scope, "--widgets", "6", "--parallel", "3"];
    for round in ["first boot", "registered again"] {
        let v = bench(d, "provision", &target, &storm);
        assert_eq!(count(&v, "registered"), 6, "{round}: {v:#}");
        assert_eq!(count(&v, "connected"), 6, "{round}: {v:#}");
        assert_eq!(count(&v, "failed"), 0, "{round}: {v:#}");
        assert_eq!(count(&v, "errors"), 0, "{round}: {v:#}");
        no_errors(&v);
        assert_eq!(v["target"]["assigned_hubs"]["127.0.0.4"], 6, "{v:#}");
        assert_eq!(v["latency_ms"]["register"]["count"], 6, "{v:#}");
        assert_eq!(v["latency_ms"]["connect"]["count"], 6, "{v:#}");
        assert_eq!(v["server"]["ops"], "registrations", "{v:#}");
    }
    let listed = certhub_at(d, &data, &["dps", "registrations"]).ok().stdout;
    assert!(
        listed.contains("smart-x-widget-0006\tassigned\t"),
        "{listed}"
    );
    let v = bench(
        d,
        "provision",
        &target,
        &["--id-scope", &scope, "--widgets", "2", "--register-only"],
    );
    assert_eq!(count(&v, "registered"), 2, "{v:#}");
    assert_eq!(count(&v, "connected"), 0, "{v:#}");
    assert_eq!(count(&v, "failed"), 0, "{v:#}");
    no_errors(&v);

    // An ID scope the hub does not have: CONNACK 5 from the endpoint, counted, not retried.
    let v = bench(
        d,
        "provision",
        &target,
        &["--id-scope", "0ne00000000", "--widgets", "2"],
    );
    assert_eq!(count(&v, "registered"), 0, "{v:#}");
    assert_eq!(count(&v, "failed"), 2, "{v:#}");
    assert_eq!(count(&v, "dps_retries"), 0, "{v:#}");
    assert_eq!(v["errors"]["dps connack 5"], 2, "{v:#}");
}

#[test]
fn query_populates_a_registry_and_times_each_query_shape() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let _hub = start_hub_with(
        &data,
        &["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"],
    );
    let connection_string = certhub(d, &["hub", "connection-string", "--data-dir", s(&data)])
        .ok()
        .stdout
        .trim()
        .to_string();
    let ca = data.join("tls/server-ca.pem");
    let run = certhub(
        d,
        &[
            "bench",
            "query",
            "--connection-string",
            &connection_string,
            "--ca",
            s(&ca),
            "--populate",
            "250",
            "--runs",
            "2",
            "--json",
        ],
    )
    .ok();
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
    let items = |shape: &str| {
        v["queries"]
            .as_array()
            .and_then(|q| q.iter().find(|r| r["shape"] == shape))
            .and_then(|r| r["items"].as_u64())
            .unwrap_or_else(|| panic!("no {shape} in {v:#}"))
    };
    // 250 devices: one has the middle id, plant-1 holds i % 100 == 1 (3 of them), floor 7
    // holds 25, every 100th is disabled (2), and the counts are whole.
    assert_eq!(items("deviceId equality"), 1, "{v:#}");
    assert_eq!(items("tag equality, first page"), 3, "{v:#}");
    assert_eq!(items("tag range, first page"), 25, "{v:#}");
    assert_eq!(items("status equality, first page"), 2, "{v:#}");
    assert_eq!(items("COUNT() of all"), 250, "{v:#}");
    assert_eq!(items("COUNT() with a tag filter"), 3, "{v:#}");
    // The registry holds exactly what the bench made.
    let shown = certhub_at(d, &data, &["device", "show", "--id", "bench-q-000100"])
        .ok()
        .stdout;
    assert!(shown.contains("\"status\": \"disabled\""), "{shown}");
}
