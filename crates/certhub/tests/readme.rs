//! Runs the README's walkthroughs verbatim, so the README cannot drift from the tool: the shell
//! blocks between `<!-- NAME:begin -->` and `<!-- NAME:end -->` run under `bash -euo pipefail`
//! in an empty folder, with this build's `certhub` first on PATH.

use std::path::Path;
use std::process::Command;

mod common;

fn walkthrough_script(marker: &str) -> String {
    block(marker, "```sh")
}

/// The fenced block (opened by `fence`) between the README's `marker` comments.
fn block(marker: &str, fence: &str) -> String {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let begin = readme
        .find(&format!("<!-- {marker}:begin -->"))
        .expect("README has the begin marker");
    let end = readme
        .find(&format!("<!-- {marker}:end -->"))
        .expect("README has the end marker");
    let mut script = String::new();
    let mut inside = false;
    for line in readme[begin..end].lines() {
        let trimmed = line.trim_start();
        if !inside && trimmed.starts_with(fence) {
            inside = true;
            continue;
        }
        if inside && trimmed.starts_with("```") {
            inside = false;
            continue;
        }
        if inside {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(!script.is_empty(), "the walkthrough has no shell block");
    script
}

/// Runs the README block `marker` in `dir`; returns its standard output.
fn run_walkthrough(marker: &str, dir: &Path) -> String {
    let script = walkthrough_script(marker);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_certhub"))
        .parent()
        .expect("binary folder")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("CERTHUB_DATA_DIR")
        .env_remove("CERTHUB_CONNECTION_STRING")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{marker} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = run_walkthrough("walkthrough", dir.path());
    assert!(
        stdout.contains("ok: trusted by \"CN=Company-X Root CA, O=Company-X\""),
        "{stdout}"
    );
    assert!(stdout.contains("widget-0001/cert.pem: OK"), "{stdout}");
    assert!(
        stdout.contains("rejected: missing-intermediate:"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("1000"), "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("company-x/key.pem");
        let mode = std::fs::metadata(&key)
            .expect("key.pem")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key.pem must be private");
    }
}

/// The README's hub section, in a folder where a hub runs on its default data directory
/// (`./certhub-data`), then its Python device example, then its listening widget with the
/// back end's C2D send over AMQP and the C2D, twin and method walkthrough. The examples dial localhost:8883, as written; the test port map
/// sends them to the port this hub listens on.
#[test]
fn the_readme_hub_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("certhub-data");
    let hub = common::start_hub_with(
        &data,
        &["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"],
    );
    let stdout = run_walkthrough("hub-walkthrough", dir.path());
    assert!(stdout.contains("\"isVerified\": true"), "{stdout}");
    assert!(stdout.contains("\"disableDeviceSAS\": true"), "{stdout}");
    let audit: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("iothubowner"))
        .collect();
    assert_eq!(audit.len(), 8, "{stdout}");
    assert!(audit[0].contains("device.update"), "{stdout}");

    // The device example on 8883, then the same widget over MQTT over WebSockets on 443: each
    // runs as written, and the audit trail says which transport carried it.
    for (marker, transport) in [("device-example", "mqtt"), ("device-ws-example", "mqtt-ws")] {
        let example = block(marker, "```python");
        let out = common::python_to_hub(&hub)
            .args(["-c", &example])
            .current_dir(dir.path())
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "the README's {marker} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = common::certhub(
            dir.path(),
            &["audit", "list", "--json", "--data-dir", common::s(&data)],
        )
        .ok();
        let want = format!("smart-x-widget-0001 via x509-ca (CA company-x) over {transport};");
        assert!(log.stdout.contains(&want), "{want} not in {log}");
    }

    // The Event Hubs reader prints what the widget sent, with the device-id annotation.
    let eh = common::certhub(
        dir.path(),
        &[
            "hub",
            "connection-string",
            "--event-hub",
            "--data-dir",
            common::s(&data),
        ],
    )
    .ok()
    .stdout
    .trim()
    .to_string();
    assert!(eh.ends_with(";EntityPath=localhost"), "{eh}");
    let example = block("eventhub-example", "```python");
    let out = common::python_to_hub(&hub)
        .args(["-c", &example, &eh])
        .current_dir(dir.path())
        .output()
        .expect("python runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && printed
                .lines()
                .any(|l| l.starts_with("smart-x-widget-0001 ") && l.contains(" 21.5 {")),
        "the README's eventhub-example failed:\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The file upload example, then the operator's commands that list and read the file.
    let example = block("upload-example", "```python");
    let out = common::python_to_hub(&hub)
        .args(["-c", &example])
        .current_dir(dir.path())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the README's upload-example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = run_walkthrough("files-walkthrough", dir.path());
    for want in [
        "succeeded",
        "smart-x-widget-0001/logs/boot.txt",
        "booted in 1.2 s",
        "\"blobSizeInBytes\":16",
    ] {
        assert!(stdout.contains(want), "no {want} in\n{stdout}");
    }

    // The listening widget, then the walkthrough that messages, updates and calls it.
    let widget = block("widget-features", "```python");
    let mut child = common::python_to_hub(&hub)
        .args(["-u", "-c", &widget])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let lines = {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let mut printed = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !printed.iter().any(|l: &String| l == "widget ready") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("python output");
                panic!(
                    "the widget never got ready: {printed:?}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    // The back end's C2D send over AMQP (uamqp), with iothubowner's connection string.
    let cs = common::certhub(
        dir.path(),
        &["hub", "connection-string", "--data-dir", common::s(&data)],
    )
    .ok()
    .stdout
    .trim()
    .to_string();
    let example = block("service-example", "```python");
    let out = common::python_to_hub(&hub)
        .args(["-c", &example, &cs])
        .env("REQUESTS_CA_BUNDLE", data.join("tls/server-ca.pem"))
        .current_dir(dir.path())
        .output()
        .expect("python runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sent backend-1"),
        "the README's service-example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = run_walkthrough("features-walkthrough", dir.path());
    for want in [
        "\"interval\": 30",
        "\"firmware\": \"1.0.3\"",
        "\"rebooting\": true",
        "\"statusCode\": \"Success\"",
        "\"originalMessageId\"",
    ] {
        assert!(stdout.contains(want), "no {want} in\n{stdout}");
    }
    // The widget exits once its method was called; it printed what it received.
    while let Ok(line) = lines.recv_timeout(std::time::Duration::from_secs(30)) {
        printed.push(line);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("python state").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("python output");
    let printed = printed.join("\n");
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "message: hello widget {'priority': 'high'}",
        "message: hello from the back end {'priority': 'low'}",
        "method: reboot {'delay': 5}",
    ] {
        assert!(printed.contains(want), "no {want:?} in\n{printed}");
    }
    assert!(
        printed
            .lines()
            .any(|l| l.starts_with("desired: {") && l.contains("'interval': 30")),
        "no desired patch in\n{printed}"
    );
}

/// The README's provisioning walkthrough (Azure's "Provision multiple X.509 devices using
/// enrollment groups"): the enrollment group on Technician-Z, then the Python provisioning
/// example, which registers a widget nobody created, connects it and reads its first twin, then
/// the operator's commands. The example dials localhost:8883 as written; the test port map
/// sends it to this hub.
#[test]
fn the_readme_provisioning_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("certhub-data");
    let hub = common::start_hub_with(
        &data,
        &["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"],
    );
    let stdout = run_walkthrough("dps-walkthrough", dir.path());
    assert!(stdout.contains("\"isVerified\": true"), "{stdout}");
    assert!(
        stdout.contains("\"enrollmentGroupId\": \"technician-z-widgets\""),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with(
            &std::fs::read_to_string(dir.path().join("id-scope.txt"))
                .expect("scope")
                .trim()
                .to_string()
        )
    );

    let example = block("dps-example", "```python");
    let out = common::python_to_hub(&hub)
        .args(["-c", &example])
        .current_dir(dir.path())
        .output()
        .expect("python runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && printed.contains("assigned localhost dps-widget-0001")
            && printed.contains("telemetryInterval 30"),
        "the README's dps-example failed:\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stdout = run_walkthrough("dps-after", dir.path());
    for want in [
        "dps-widget-0001\tassigned\tlocalhost\tdps-widget-0001",
        "\"type\": \"certificateAuthority\"",
        "dps.register",
        "assigned to localhost as device dps-widget-0001 (created) through enrollment group technician-z-widgets",
    ] {
        assert!(stdout.contains(want), "no {want} in\n{stdout}");
    }
}

/// The README's revocation story ("The whole story: Technician-Z's key leaked"): the fleet
/// made by its setup block, its `fleet.py` connected with the Python SDK (to localhost:8883 as
/// written; the test port map sends it to this hub), then the operator's block run while the
/// widgets are connected. Technician-Z's three widgets are closed within a second of the
/// operator's first command, Technician-W's stays, and the audit trail names the block.
#[test]
fn the_readme_leak_story_runs_as_written() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("certhub-data");
    let hub = common::start_hub_with(
        &data,
        &["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"],
    );
    run_walkthrough("leak-setup", dir.path());
    let fleet = block("leak-fleet", "```python");
    let mut child = common::python_to_hub(&hub)
        .args(["-c", &fleet])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        first.starts_with("connected: leak-widget-0001"),
        "fleet.py did not connect: {first:?}"
    );
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let story = run_walkthrough("leak-story", dir.path());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().expect("fleet ends");
    assert!(
        out.status.success(),
        "fleet.py failed: {rest:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["leak-widget-0001", "leak-widget-0002", "leak-widget-0003"] {
        let at: f64 = rest
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{id} closed by the hub at ")))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{id} was not closed: {rest:?}"));
        assert!(
            at - start < 1.0,
            "{id} closed {:.3} s after the operator's first command",
            at - start
        );
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("still connected: widget-w1"),
        "{rest:?}"
    );
    assert!(story.contains("\"devices\": 3"), "{story}");
    assert!(story.contains("\"connected\": 3"), "{story}");
    assert!(story.contains("certificate-blocked"), "{story}");
}

/// The README's walkthroughs that change a hub, one after another in one folder against one
/// hub, as a reader following the README from the top would run them: none collides with
/// another (folders, file names, CA names, device ids). The leak story's own commands need its
/// Python fleet connected (its last step greps their refusals), so its setup stands for it;
/// the PKI walkthrough touches no hub and its folders (company-x/, factory-y/, technician-z/,
/// widget-0001/, widgets/) are no other walkthrough's.
#[test]
fn the_readme_walkthroughs_share_one_folder_and_one_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("certhub-data");
    let _hub = common::start_hub_with(
        &data,
        &["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"],
    );
    for marker in ["hub-walkthrough", "dps-walkthrough", "leak-setup"] {
        run_walkthrough(marker, dir.path());
    }
}
