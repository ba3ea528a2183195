//! Runs the README's walkthrough verbatim, so the README cannot drift from the tool: the shell
//! blocks between `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->` run under
//! `bash -euo pipefail` in an empty folder, with this build's `certhub` first on PATH.

use std::path::Path;
use std::process::Command;

mod common;

fn walkthrough_script(readme: &str, marker: &str) -> String {
    let begin = readme
        .find(&format!("<!-- {marker}:begin -->"))
        .expect("README has the begin marker");
    let end = readme
        .find(&format!("<!-- {marker}:end -->"))
        .expect("README has the end marker");
    let section = &readme[begin..end];
    let mut script = String::new();
    let mut inside = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
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

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let script = walkthrough_script(&readme, "walkthrough");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_certhub"))
        .parent()
        .expect("binary folder")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
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
    let key = dir.path().join("company-x/key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key)
            .expect("key.pem")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key.pem must be private");
    }
}

/// The README's hub section, run verbatim in a folder where a hub runs on its default data
/// directory (`./certhub-data`), with this build's `certhub` on PATH.
#[test]
fn the_readme_hub_walkthrough_runs_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let script = walkthrough_script(&readme, "hub-walkthrough");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_certhub"))
        .parent()
        .expect("binary folder")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let _hub = common::start_hub(&dir.path().join("certhub-data"));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("CERTHUB_DATA_DIR")
        .env_remove("CERTHUB_CONNECTION_STRING")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hub walkthrough failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("\"isVerified\": true"), "{stdout}");
    assert!(stdout.contains("\"disableDeviceSAS\": true"), "{stdout}");
    let audit: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("iothubowner"))
        .collect();
    assert_eq!(audit.len(), 8, "{stdout}");
    assert!(audit[0].contains("device.update"), "{stdout}");
}
