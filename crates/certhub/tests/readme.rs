//! Runs the README's walkthrough verbatim, so the README cannot drift from the tool: the shell
//! blocks between `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->` run under
//! `bash -euo pipefail` in an empty folder, with this build's `certhub` first on PATH.

use std::path::Path;
use std::process::Command;

fn walkthrough_script(readme: &str) -> String {
    let begin = readme
        .find("<!-- walkthrough:begin -->")
        .expect("README has a walkthrough:begin marker");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("README has a walkthrough:end marker");
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
    let script = walkthrough_script(&readme);
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
