//! mosquitto_pub (Eclipse Mosquitto's client, from Debian) publishes telemetry to the hub over
//! MQTT/TLS with a widget's certificate chain; with a wrong identity it is refused.

mod common;

use std::process::Command;

use common::{Pub, certhub, mosquitto_pub, s, start_hub, tmp};

#[test]
fn mosquitto_pub_sends_telemetry_with_a_widget_certificate() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend_from_slice(&["--data-dir", s(&data)]);
        certhub(d, &v).ok()
    };
    certhub(
        d,
        &[
            "pki",
            "demo",
            "supply-chain",
            "--out",
            "pki",
            "--devices",
            "1",
        ],
    )
    .ok();
    hub(&[
        "ca",
        "upload",
        "--name",
        "company-x",
        "--file",
        "pki/company-x/cert.pem",
        "--verified",
    ]);
    hub(&[
        "device",
        "create",
        "--id",
        "smart-x-widget-0001",
        "--auth-method",
        "x509-ca",
    ]);
    let ca = data.join("tls/server-ca.pem");
    let widget = "pki/devices/smart-x-widget-0001";

    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&ca),
            widget,
            client_id: "smart-x-widget-0001",
            topic: "devices/smart-x-widget-0001/messages/events/source=mosquitto",
            message: "hello from mosquitto",
            extra: &[],
        },
    );
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = hub(&[
        "audit",
        "connections",
        "--device",
        "smart-x-widget-0001",
        "--json",
    ]);
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    assert_eq!(log[0]["outcome"], "ok", "{log}");

    let shown = hub(&["device", "show", "--id", "smart-x-widget-0001"]);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
    assert_ne!(
        shown["lastActivityTime"], "0001-01-01T00:00:00Z",
        "lastActivityTime is kept"
    );

    // The same certificate under another client id is refused: mosquitto reports it.
    hub(&[
        "device",
        "create",
        "--id",
        "someone-else",
        "--auth-method",
        "x509-ca",
    ]);
    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&ca),
            widget,
            client_id: "someone-else",
            topic: "devices/someone-else/messages/events/",
            message: "hello from mosquitto",
            extra: &[],
        },
    );
    assert!(
        !out.status.success(),
        "a borrowed certificate must be refused"
    );
    let run = hub(&[
        "audit",
        "connections",
        "--device",
        "someone-else",
        "--reason",
        "cn-mismatch",
    ]);
    assert!(run.stdout.contains("cn-mismatch"), "{run}");
    assert!(
        run.stdout.contains("CN=smart-x-widget-0001"),
        "the presented subject is shown: {run}"
    );

    // And the counters say the same.
    let metrics = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            s(&ca),
            &format!("https://{}/metrics", hub_process.host),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("certhub_device_connects_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("certhub_device_connects_total{outcome=\"cn-mismatch\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("certhub_telemetry_messages_total 1"),
        "{text}"
    );
}
