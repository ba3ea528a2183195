//! The Python `azure-iot-hub` SDK (from PyPI, installed into `.venv` by scripts/test) drives
//! the identity registry of a real `certhub serve` over HTTPS: tests/interop/registry.py.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{certhub, s, tmp};

/// A hub subprocess, killed when dropped.
struct HubProcess {
    child: Child,
    host: String,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_hub(data_dir: &std::path::Path) -> HubProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_certhub"))
        .args([
            "serve",
            "--data-dir",
            s(data_dir),
            "--https-addr",
            "127.0.0.1:0",
            "--hostname",
            "localhost",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("certhub serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut host = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        if let Some(rest) = line.trim().strip_prefix("service API") {
            let url = rest.split_whitespace().next().expect("url");
            host = url.strip_prefix("https://").map(str::to_string);
            break;
        }
    }
    HubProcess {
        child,
        host: host.expect("the hub printed its service API address"),
    }
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CERTHUB_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test, which installs the Azure IoT Python SDKs into .venv",
        venv.display()
    );
    venv
}

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
