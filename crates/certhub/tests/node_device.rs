//! The Node.js `azure-iot-device` SDK with its MqttWs transport (`azure-iot-device-mqtt`) against
//! a real `certhub serve`: MQTT over WebSockets on the 443 listener. A widget of the four-level
//! supply chain sends telemetry (sendEvent; sendEventBatch, which the MQTT transports refuse),
//! receives cloud-to-device messages (complete; reject and abandon, which the SDK refuses over
//! MQTT), reads and reports its twin and answers a direct method; a SAS device sends too, and
//! one with a wrong key is refused. The script is tests/interop/node/mqttws.js, its pinned
//! packages in tests/interop/node (scripts/test installs them). The SDK always dials port 443
//! of the host name; the Node port map (tests/interop/node/portmap.js) sends it to the free port
//! this hub listens on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{HubProcess, certhub_at, enroll_widget, start_hub_with, tmp};

const HOST: &str = "127.0.0.5";

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/node")
}

/// `node` with the test port map loaded (`--require portmap.js`), the pinned packages of
/// tests/interop/node on its module path. Checks first that the map is in effect, so the SDK
/// can never reach a hub this test did not start.
fn node_to_hub(hub: &HubProcess) -> Command {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/azure-iot-device-mqtt").is_dir(),
        "{} has no node_modules: run scripts/test, which installs the pinned Node.js packages \
         (npm ci in tests/interop/node)",
        dir.display()
    );
    let portmap = dir.join("portmap.js");
    let mqtt_port = hub.mqtt_port;
    let https_port = hub.https_port();
    let map = format!("8883={mqtt_port},443={https_port}");
    let command = || {
        let mut c = Command::new("node");
        c.env(
            "NODE_OPTIONS",
            format!("--require {}", portmap.to_str().expect("a UTF-8 path")),
        )
        .env("CERTHUB_TEST_PORT_MAP", &map)
        .env("NODE_PATH", dir.join("node_modules"));
        c
    };
    let check = command()
        .args([
            "-e",
            "const p = require('./portmap.js'); console.log(JSON.stringify(p.PORT_MAP), \
             require('net').connect.name, require('net').createConnection.name, \
             require('tls').connect.name)",
        ])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("node (Node.js 20) is required by this test: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!(
            "{{\"443\":{https_port},\"8883\":{mqtt_port}}} _mappedNetConnect \
             _mappedNetCreateConnection _mappedTlsConnect"
        ),
        "the Node test port map is not in effect: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    command()
}

fn audit(d: &Path, data: &Path) -> Vec<serde_json::Value> {
    let log = certhub_at(d, data, &["audit", "list", "--json", "--top", "200"]).ok();
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    log.as_array().expect("array").clone()
}

#[test]
fn node_sdk_over_mqtt_ws() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub_with(
        &data,
        &[
            "--hostname",
            HOST,
            "--https-addr",
            &format!("{HOST}:0"),
            "--mqtt-addr",
            &format!("{HOST}:0"),
        ],
    );
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    let sas = hub(&["device", "create", "--id", "widget-sas"]);
    let sas: serde_json::Value = serde_json::from_str(&sas.stdout).expect("json");
    let key = sas["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("key")
        .to_string();
    let cs = hub(&["hub", "connection-string"]).stdout.trim().to_string();

    let out = node_to_hub(&hub_process)
        .arg(node_dir().join("mqttws.js"))
        .current_dir(d)
        .env("CERTHUB_HOST", HOST)
        .env("CERTHUB_CA", data.join("tls/server-ca.pem"))
        .env("CERTHUB_CONNECTION_STRING", &cs)
        .env("CERTHUB_DIR", d.join("pki"))
        .env("CERTHUB_SAS_KEY", &key)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mqttws.js failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("all node checks passed"),
        "{stdout}\n--- stderr\n{stderr}"
    );

    // The sessions came over MQTT over WebSockets: the widget (its chain from the 443
    // listener's TLS connection) and the SAS device; the wrong key was refused.
    let log = audit(d, &data);
    let connects: Vec<(String, String, String)> = log
        .iter()
        .filter(|r| r["operation"] == "device.connect")
        .map(|r| {
            (
                r["target"].as_str().unwrap_or("").to_string(),
                r["outcome"].as_str().unwrap_or("").to_string(),
                r["detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    // The widget by the chain it presented on the 443 listener's TLS connection, the SAS
    // device by its CONNECT password.
    for (device, how) in [
        (
            "devices/smart-x-widget-0001",
            "smart-x-widget-0001 via x509-ca (CA company-x) over mqtt-ws;",
        ),
        (
            "devices/widget-sas",
            "widget-sas via device-sas over mqtt-ws;",
        ),
    ] {
        let accepted: Vec<&String> = connects
            .iter()
            .filter(|(target, outcome, _)| target == device && outcome == "ok")
            .map(|(_, _, detail)| detail)
            .collect();
        assert!(!accepted.is_empty(), "{device} connected: {connects:#?}");
        for detail in accepted {
            assert!(
                detail.starts_with(how),
                "{device}: `{how}` expected: {detail}"
            );
        }
    }
    assert!(
        connects
            .iter()
            .any(|(target, outcome, _)| target == "devices/widget-sas" && outcome == "sas-invalid"),
        "the wrong key is audited as sas-invalid: {connects:#?}"
    );
    // No session used the MQTT/TLS listener.
    assert!(
        !connects
            .iter()
            .any(|(_, _, detail)| detail.contains(" over mqtt;")),
        "{connects:#?}"
    );
}
