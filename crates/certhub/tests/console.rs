//! The operator's console in a real browser (tests/interop/console.py: Playwright driving
//! Debian's Chromium, headless) against a real `certhub serve`: a wrong key is refused,
//! Company-X's root is registered and verified through the CA pages (the verification
//! certificate made with the command the page shows), the overview shows a connected widget
//! and a refusal, the refusals page names the reason and
//! the fix, disabling the widget from the devices page closes its mosquitto_sub session at
//! once, a form without the CSRF token is refused, the refused widget registered from the
//! console connects with the Azure IoT Python device SDK and the console reads its telemetry,
//! sends it a C2D message and invokes a direct method it answers, Technician-Z's blast radius
//! is shown before its block drops exactly the connected widget, a read-only policy sees no
//! actions, and the pages fit a narrow window. Set CERTHUB_SCREENSHOTS=DIR to keep screenshots of each page
//! (scripts/console-screenshots writes them into docs/).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{certhub, certhub_at, openssl, s, start_hub, subscribe, tmp};

const WIDGET: &str = "console-widget-0001";

/// The README's shell block between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn readme_block(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let begin = readme
        .find(&format!("<!-- {marker}:begin -->"))
        .expect("the begin marker");
    let end = readme
        .find(&format!("<!-- {marker}:end -->"))
        .expect("the end marker");
    readme[begin..end]
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_console_in_chromium_registers_a_ca_shows_refusals_and_disables_a_connected_widget() {
    let t = tmp();
    let d = t.path();
    // The README's layout: the hub's data in ./certhub-data, the PKI in ./console-pki.
    let data = d.join("certhub-data");
    let hub = start_hub(&data);
    certhub(
        d,
        &[
            "pki",
            "demo",
            "supply-chain",
            "--out",
            "console-pki",
            "--devices",
            "2",
            "--prefix",
            "console-widget",
        ],
    )
    .ok();
    let ca = data.join("tls/server-ca.pem");
    // An enrollment group for the provisioning page to list.
    certhub_at(
        d,
        &data,
        &[
            "dps",
            "enrollment-group",
            "create",
            "--id",
            "console-sensors",
            "--symmetric-key",
        ],
    )
    .ok();
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
    let mut cmd = common::python_to_hub(&hub);
    cmd.arg(&script)
        .env("CERTHUB_HOST", "localhost")
        .env("CERTHUB_CA", &ca)
        .current_dir(d)
        .env("CERTHUB_CONSOLE", format!("https://{}/console", hub.host))
        .env("CERTHUB_SPKI", spki.trim())
        .env("CERTHUB_CONNECTION_STRING", cs("iothubowner"))
        .env("CERTHUB_READ_ONLY", cs("registryRead"))
        .env("CERTHUB_PROVISIONING", cs("provisioningserviceowner"))
        .env("CERTHUB_DIR", d.join("console-pki"))
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
            // Company-X's root is verified and the widget registered (through the console): the
            // README's step 6 connects it and its unregistered sibling, which is refused.
            let step = readme_block("console-devices")
                .replace("-p 8883", &format!("-p {}", hub.mqtt_port));
            let out = std::process::Command::new("bash")
                .args(["-uo", "pipefail", "-c", &step])
                .current_dir(d)
                .output()
                .expect("bash runs");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                said.matches("not authorised").count(),
                1,
                "the README's step 6: the registered widget is taken, its sibling refused: {said}"
            );
            sub = Some(subscribe(
                d,
                hub.mqtt_port,
                &ca,
                &format!("console-pki/devices/{WIDGET}"),
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
    assert!(has("device.create", "iothubowner", "ok"), "{log:#}");
    assert!(has("ca.block", "iothubowner", "ok"), "{log:#}");
    assert!(has("ca.unblock", "iothubowner", "ok"), "{log:#}");
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
