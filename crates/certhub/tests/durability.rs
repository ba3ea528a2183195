//! Killing the hub with SIGKILL in the middle of a bulk import leaves the store consistent:
//! after a restart every device whose batch was acknowledged is there, and no batch is there
//! in part.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pub, certhub, certhub_at, enroll_widget, mosquitto_pub, s, start_hub, tmp};

#[test]
fn sigkill_during_a_bulk_import_loses_nothing_acknowledged() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let total = 300_000;
    let mut lines = String::new();
    for i in 0..total {
        lines.push_str(&format!("{{\"deviceId\":\"dev-{i:07}\"}}\n"));
    }
    std::fs::write(d.join("devices.jsonl"), lines).expect("write");

    let mut hub = start_hub(&data);
    let import = Command::new(env!("CARGO_BIN_EXE_certhub"))
        .args(["device", "import", "devices.jsonl", "--data-dir", s(&data)])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("import starts");
    // Let some batches land, then kill the hub without warning.
    let started = Instant::now();
    let db = data.join("certhub.db-wal");
    while started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        if std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) > 2_000_000 {
            break;
        }
    }
    hub.kill();
    let out = import.wait_with_output().expect("import ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the import must fail\n{stdout}\n{stderr}"
    );
    let acked: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("imported count in {stdout:?}"));
    assert!(
        acked > 0 && acked < total,
        "the kill must land mid-import: {stdout}"
    );
    assert!(stderr.contains("acknowledged"), "{stderr}");

    // Restart on the same data and read everything back.
    drop(hub);
    let _hub = start_hub(&data);
    let run = certhub(d, &["device", "export", "--data-dir", s(&data)]).ok();
    let mut ids = Vec::new();
    for line in run.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("every device is whole");
        assert_eq!(v["authentication"]["type"], "sas");
        assert_eq!(
            v["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .map(str::len),
            Some(44)
        );
        ids.push(v["deviceId"].as_str().expect("id").to_string());
    }
    assert!(
        ids.len() >= acked,
        "{} stored < {acked} acknowledged",
        ids.len()
    );
    assert_eq!(
        ids.len() % 100,
        0,
        "only whole batches: {} stored",
        ids.len()
    );
    // Running the import again completes it; what is there is skipped, not duplicated.
    let run = certhub(
        d,
        &["device", "import", "devices.jsonl", "--data-dir", s(&data)],
    )
    .ok();
    assert!(
        run.stdout
            .contains(&format!("{} already registered", ids.len())),
        "{run}"
    );
}

#[test]
fn acknowledged_telemetry_survives_sigkill() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let mut hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    // 300 QoS 1 messages: mosquitto_pub succeeds only once every one was acknowledged.
    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&data.join("tls/server-ca.pem")),
            widget: "pki/devices/smart-x-widget-0001",
            client_id: "smart-x-widget-0001",
            topic: "devices/smart-x-widget-0001/messages/events/n=1",
            message: "reading",
            extra: &["--repeat", "300"],
        },
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No warning, no shutdown: SIGKILL right after the last PUBACK.
    hub_process.kill();
    drop(hub_process);
    let _hub = start_hub(&data);
    let run = hub(&[
        "messages",
        "tail",
        "--device",
        "smart-x-widget-0001",
        "--count",
        "1000",
        "--idle-exit",
        "1",
    ]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 300, "{run}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("#{} ", i + 1)),
            "in order, no gaps: {line}"
        );
        assert!(line.ends_with(" reading"), "{line}");
        assert!(line.contains(r#"{"n":"1"}"#), "{line}");
    }
}

/// Telemetry older than the retention is deleted while the hub runs.
#[test]
fn telemetry_retention_deletes_old_messages() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = common::start_hub_with(
        &data,
        &[
            "--https-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--hostname",
            "localhost",
            "--telemetry-retention",
            "2",
        ],
    );
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    let publish = |message: &str| {
        let out = mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&data.join("tls/server-ca.pem")),
                widget: "pki/devices/smart-x-widget-0001",
                client_id: "smart-x-widget-0001",
                topic: "devices/smart-x-widget-0001/messages/events/",
                message,
                extra: &[],
            },
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish("old");
    std::thread::sleep(Duration::from_secs(4));
    publish("new");
    let run = hub(&["messages", "tail", "--count", "10", "--idle-exit", "1"]);
    assert!(
        !run.stdout.contains(" old"),
        "the old message is gone: {run}"
    );
    assert!(run.stdout.contains(" new"), "{run}");
}
