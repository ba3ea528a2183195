//! Device provisioning with the Python `azure-iot-device` SDK's `ProvisioningDeviceClient`
//! against a real `certhub serve`: widgets of Company-X's four-level chain that were never
//! registered by hand register through an X.509 enrollment group on the verified root, are
//! created on the hub with the group's initial twin and connect there at once; a symmetric-key
//! group's device registers with its derived key; refusals (a disabled individual enrollment,
//! a CN that is not the registration id, an unknown ID scope, a key no enrollment derives)
//! reach the device as "not authorized" and the operator as named reasons in the audit trail.
//! Over MQTT on 8883 and over MQTT over WebSockets on 443.

mod common;

use std::path::PathBuf;

use common::{certhub_at, enroll_company_x, python_to_hub, start_hub_on, tmp};

#[test]
fn python_provisioning_client_registers_over_mqtt() {
    provisions("127.0.0.41", false);
}

#[test]
fn python_provisioning_client_registers_over_websockets() {
    provisions("127.0.0.42", true);
}

fn provisions(host: &str, websockets: bool) {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub_on(&data, host, &[]);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();

    // Company-X's chain with three widgets, none of them registered; the root verified.
    enroll_company_x(d, &data, 3);
    hub(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
        "--tags",
        r#"{"line": 3}"#,
        "--desired",
        r#"{"rate": 5}"#,
    ]);
    let group_key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
    hub(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "sensors",
        "--symmetric-key",
        "--primary-key",
        group_key,
    ]);
    hub(&[
        "dps",
        "enrollment",
        "create",
        "--registration-id",
        "smart-x-widget-0003",
        "--cert",
        "pki/devices/smart-x-widget-0003/cert.pem",
        "--disabled",
    ]);
    let scope = hub(&["dps", "id-scope"]).stdout.trim().to_string();
    assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");
    let cs = hub(&["hub", "connection-string"]).stdout.trim().to_string();

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/provisioning.py");
    let out = python_to_hub(&hub_process)
        .arg(&script)
        .current_dir(d)
        .env("CERTHUB_HOST", host)
        .env("CERTHUB_WEBSOCKETS", if websockets { "1" } else { "0" })
        .env("CERTHUB_CA", data.join("tls/server-ca.pem"))
        .env("CERTHUB_CONNECTION_STRING", &cs)
        .env("CERTHUB_DIR", d.join("pki"))
        .env("CERTHUB_ID_SCOPE", &scope)
        .env("CERTHUB_GROUP_KEY", group_key)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("provisioning: all checks passed"),
        "provisioning.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // The registrations as the operator lists them.
    let listed = hub(&["dps", "registrations"]).stdout;
    assert!(
        listed.contains("smart-x-widget-0001\tassigned\t") && listed.contains("sensor"),
        "{listed}"
    );

    // Every refusal has its named reason for the operator.
    let log = hub(&["audit", "list", "--json", "--top", "200"]);
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    let outcomes: Vec<String> = log
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["operation"] == "dps.register")
        .map(|r| {
            format!(
                "{} {}",
                r["target"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or("")
            )
        })
        .collect();
    let sensor = if websockets {
        "sensor-ws-001"
    } else {
        "sensor-001"
    };
    for expected in [
        "registrations/smart-x-widget-0001 ok".to_string(),
        format!("registrations/{sensor} ok"),
        "registrations/smart-x-widget-0003 enrollment-disabled".into(),
        "registrations/someone-else cn-mismatch".into(),
        "registrations/smart-x-widget-0002 unknown-id-scope".into(),
        "registrations/sensor-002 no-enrollment".into(),
    ] {
        assert!(
            outcomes.contains(&expected),
            "{expected} not in {outcomes:#?}"
        );
    }
    let transport = if websockets { "mqtt-ws" } else { "mqtt" };
    let ok = log
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["operation"] == "dps.register" && r["outcome"] == "ok")
        .expect("an ok record");
    assert!(
        ok["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with(&format!("over {transport}"))),
        "{ok}"
    );
}
