//! Cloud-to-device messages, twins and direct methods with the Azure IoT Python SDKs against a
//! real `certhub serve`: tests/interop/features.py drives a widget of the four-level supply
//! chain and its module (azure-iot-device) and the service side (azure-iot-hub). The SDK
//! always dials 8883; the test port map (`common::python_to_hub`) sends it to the free port this
//! hub listens on.

mod common;

use std::path::PathBuf;

use common::{
    certhub, certhub_at, enroll_widget, python_to_hub, s, start_hub_on, technician_signed, tmp,
};

const HOST: &str = "127.0.0.3";

#[test]
fn c2d_twins_and_methods_with_the_python_sdks() {
    c2d_twins_and_methods(false);
}

/// The same, with the SDK's `websockets=True`: MQTT over WebSockets on the 443 listener, the
/// device's X.509 chain taken from that TLS connection.
#[test]
fn c2d_twins_and_methods_with_the_python_sdks_over_websockets() {
    c2d_twins_and_methods(true);
}

fn c2d_twins_and_methods(websockets: bool) {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub_on(&data, HOST, &["--c2d-max-pending", "5"]);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    // The module's certificate, CN=deviceId/moduleId, signed by Technician-Z from a CSR.
    technician_signed(d, "smart-x-widget-0001/sensor", "pki/module");
    hub(&[
        "device",
        "create",
        "--id",
        "smart-x-widget-0001",
        "--module",
        "sensor",
        "--auth-method",
        "x509-ca",
    ]);
    hub(&["device", "create", "--id", "widget-offline"]);
    let cs = hub(&["hub", "connection-string"]).stdout.trim().to_string();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/features.py");
    let out = python_to_hub(&hub_process)
        .arg(&script)
        .current_dir(d)
        .env("CERTHUB_HOST", HOST)
        .env("CERTHUB_WEBSOCKETS", if websockets { "1" } else { "0" })
        .env("CERTHUB_CA", data.join("tls/server-ca.pem"))
        .env("REQUESTS_CA_BUNDLE", data.join("tls/server-ca.pem"))
        .env("CERTHUB_CONNECTION_STRING", &cs)
        .env("CERTHUB_DIR", d.join("pki"))
        .output()
        .expect("python runs");
    common::script_passed(&out, "features.py", "all feature checks passed");

    // The CLI sees the same twin and can call the same method paths.
    let twin = hub(&["twin", "show", "--device", "smart-x-widget-0001"]);
    let twin: serde_json::Value = serde_json::from_str(&twin.stdout).expect("json");
    assert_eq!(
        twin["properties"]["reported"]["firmware"], "1.2.3",
        "{twin}"
    );
    assert_eq!(twin["properties"]["desired"]["interval"], 5, "{twin}");
    let offline = certhub(
        d,
        &[
            "method",
            "invoke",
            "--device",
            "widget-offline",
            "--name",
            "reboot",
            "--data-dir",
            s(&data),
        ],
    )
    .code(2);
    assert!(
        offline.stderr.contains("DeviceNotOnline"),
        "{}",
        offline.stderr
    );
    // Every service operation is in the audit trail.
    let log = hub(&["audit", "list", "--json", "--top", "500"]);
    for op in ["c2d.send", "c2d.purge", "twin.patch", "method.invoke"] {
        assert!(log.stdout.contains(op), "{op} not audited");
    }
}
