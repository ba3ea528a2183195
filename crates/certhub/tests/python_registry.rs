//! The Python `azure-iot-hub` SDK (from PyPI, installed into `.venv` by scripts/test) drives
//! the identity registry of a real `certhub serve` over HTTPS: tests/interop/registry.py.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{certhub, python, s, start_hub, tmp};

#[test]
fn azure_iot_hub_sdk_manages_the_registry() {
    let t = tmp();
    let data = t.path().join("data");
    let hub = start_hub(&data);
    let cs = |policy: &str| {
        let run = certhub(
            t.path(),
            &[
                "hub",
                "connection-string",
                "--data-dir",
                s(&data),
                "--policy",
                policy,
            ],
        )
        .ok();
        let cs = run.stdout.trim().to_string();
        assert!(cs.starts_with(&format!("HostName={};", hub.host)), "{cs}");
        cs
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/registry.py");
    let out = Command::new(python())
        .arg(&script)
        .env("CERTHUB_CONNECTION_STRING", cs("iothubowner"))
        .env("CERTHUB_SERVICE_CONNECTION_STRING", cs("service"))
        .env("REQUESTS_CA_BUNDLE", data.join("tls/server-ca.pem"))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "registry.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("all registry checks passed"), "{stdout}");
}
