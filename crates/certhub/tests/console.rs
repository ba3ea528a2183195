//! The operator's console in a real browser (tests/interop/console.py: Playwright driving
//! Debian's Chromium, headless) against a real `certhub serve`: a wrong key is refused,
//! Company-X's root is registered and verified through the CA pages (the verification
//! certificate made with the command the page shows), the overview shows a connected widget
//! and a refusal, the refusals page names the reason and
//! the fix, disabling the widget from the devices page closes its mosquitto_sub session at
//! once, a form without the CSRF token is refused, a read-only policy sees no actions, and the
//! pages fit a narrow window. Set CERTHUB_SCREENSHOTS=DIR to keep screenshots of each page
//! (scripts/console-screenshots writes them into docs/).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{certhub, certhub_at, openssl, publishes, s, start_hub, subscribe, tmp};

const WIDGET: &str = "smart-x-widget-0001";

#[test]
fn the_console_in_chromium_registers_a_ca_shows_refusals_and_disables_a_connected_widget() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = start_hub(&data);
    certhub(
        d,
        &[
            "pki",
            "demo",
            "supply-chain",
            "--out",
            "pki",
            "--devices",
            "2",
        ],
    )
    .ok();
    let ca = data.join("tls/server-ca.pem");
    let mut sub = None;

    // The browser trusts exactly the hub's server key.
    let spki = {
        let key = openssl(
            d,
            &[
                "x509",
                "-in",
                s(&data.join("tls/server.pem")),
                "-pubkey",
                "-noout",
            ],
        )
        .ok()
        .stdout;
        std::fs::write(d.join("server-key.pem"), key).expect("write");
        let der = d.join("server-key.der");
        openssl(
            d,
            &[
                "pkey",
                "-pubin",
                "-in",
                "server-key.pem",
                "-outform",
                "DER",
                "-out",
                s(&der),
            ],
        )
        .ok();
        openssl(
            d,
            &["dgst", "-sha256", "-binary", "-out", "spki.bin", s(&der)],
        )
        .ok();
        openssl(d, &["base64", "-A", "-in", "spki.bin"]).ok().stdout
    };
    let cs = |policy: &str| {
        certhub_at(d, &data, &["hub", "connection-string", "--policy", policy])
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/console.py");
    let mut cmd = std::process::Command::new(common::python());
    cmd.arg(&script)
        .current_dir(d)
        .env("CERTHUB_CONSOLE", format!("https://{}/console", hub.host))
        .env("CERTHUB_SPKI", spki.trim())
        .env("CERTHUB_CONNECTION_STRING", cs("iothubowner"))
        .env("CERTHUB_READ_ONLY", cs("registryRead"))
        .env("CERTHUB_DIR", d.join("pki"))
        .env("CERTHUB_BIN", env!("CARGO_BIN_EXE_certhub"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(dir) = std::env::var("CERTHUB_SCREENSHOTS") {
        cmd.env("CERTHUB_SCREENSHOTS", dir);
    }
    let mut child = cmd.spawn().expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut transcript = String::new();
    let mut dropped_after = None;
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("line");
        transcript.push_str(&line);
        transcript.push('\n');
        if line == "CA-VERIFIED" {
            // Company-X's root is verified (through the console): a registered widget connects,
            // an unregistered one is refused as device-not-found.
            certhub_at(
                d,
                &data,
                &[
                    "device",
                    "create",
                    "--id",
                    WIDGET,
                    "--auth-method",
                    "x509-ca",
                ],
            )
            .ok();
            assert!(!publishes(d, hub.mqtt_port, &ca, "smart-x-widget-0002"));
            sub = Some(subscribe(
                d,
                hub.mqtt_port,
                &ca,
                &format!("pki/devices/{WIDGET}"),
                WIDGET,
            ));
            common::wait_until(20, "the widget connects", || {
                common::is_connected(d, &data, WIDGET)
            });
            writeln!(stdin, "go").expect("write");
        }
        if line == "WAITING-FOR-DROP" {
            let sub = sub.as_mut().expect("the widget's session");
            // The console answered "disabled": the session must be closed already, or within
            // a second.
            let start = Instant::now();
            while sub.try_wait().expect("state").is_none()
                && start.elapsed() < Duration::from_secs(1)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            dropped_after = sub.try_wait().expect("state").map(|_| start.elapsed());
            writeln!(stdin, "go").expect("write");
        }
    }
    let out = child.wait_with_output().expect("python ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && transcript.contains("all console checks passed"),
        "console.py failed\n--- stdout\n{transcript}\n--- stderr\n{stderr}"
    );
    if let Some(mut sub) = sub {
        let _ = sub.kill();
        let _ = sub.wait();
    }
    let dropped_after = dropped_after
        .expect("the widget's session was still open a second after the console disabled it");
    // Shown with --nocapture.
    println!("{transcript}");
    eprintln!("the widget's session was closed {dropped_after:?} after the console's answer");

    // The audit trail names the console's sign-ins and the policy that disabled the widget.
    let log = certhub_at(d, &data, &["audit", "list", "--json", "--top", "200"]).ok();
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    let records = log.as_array().expect("array");
    let has = |op: &str, actor: &str, outcome: &str| {
        records
            .iter()
            .any(|r| r["operation"] == op && r["actor"] == actor && r["outcome"] == outcome)
    };
    assert!(has("console.sign-in", "console", "refused"), "{log:#}");
    assert!(has("console.sign-in", "iothubowner", "ok"), "{log:#}");
    assert!(has("console.sign-in", "registryRead", "ok"), "{log:#}");
    assert!(has("ca.upload", "iothubowner", "ok"), "{log:#}");
    assert!(has("ca.verify", "iothubowner", "ok"), "{log:#}");
    assert!(has("settings.update", "iothubowner", "ok"), "{log:#}");
    let settings = certhub_at(d, &data, &["hub", "show"]).ok().stdout;
    assert!(
        settings.contains("\"disableDeviceSAS\": true"),
        "the console's change is the hub's: {settings}"
    );
    assert!(
        records.iter().any(|r| r["operation"] == "device.update"
            && r["actor"] == "iothubowner"
            && r["target"] == format!("devices/{WIDGET}")),
        "{log:#}"
    );
}
