//! What the hub protects and how (issue 11): keys at rest, floods, tokens.

mod common;

#[cfg(unix)]
mod at_rest {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::common::{self, s};

    fn mode(p: &Path) -> u32 {
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
    }

    /// Every file the hub keeps: the database with its WAL files, the lock, the TLS identity.
    fn kept(data: &Path) -> Vec<std::path::PathBuf> {
        let mut files = vec![
            data.join("certhub.db"),
            data.join("certhub.db-wal"),
            data.join("certhub.db-shm"),
            data.join("hub.lock"),
            data.join("tls"),
        ];
        for e in fs::read_dir(data.join("tls")).expect("tls/") {
            files.push(e.expect("entry").path());
        }
        files
    }

    fn assert_owner_only(data: &Path) {
        assert_eq!(mode(data), 0o700, "{}", data.display());
        for f in kept(data) {
            let want = if f.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&f), want, "{}", f.display());
        }
    }

    #[test]
    fn the_data_directory_is_owner_only_whatever_the_umask() {
        let t = common::tmp();
        let data = t.path().join("data");
        // A umask that would leave every new file open to everyone.
        let child = Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&data)])
            .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .env("CERTHUB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certhub serve starts");
        let stderr = wait_for_banner_then_kill(child, || assert_owner_only(&data));
        assert!(
            !stderr.contains("now owner-only"),
            "nothing to tighten: {stderr}"
        );

        // An installation made before the rule (or loosened by hand) is tightened at start,
        // with a line naming each path.
        chmod(&data, 0o755);
        for f in kept(&data) {
            chmod(&f, if f.is_dir() { 0o755 } else { 0o644 });
        }
        let child = Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&data)])
            .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .env("CERTHUB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certhub serve starts");
        let stderr = wait_for_banner_then_kill(child, || ());
        assert!(
            stderr.contains("certhub.db") && stderr.contains("now owner-only"),
            "{stderr}"
        );
        assert!(stderr.contains("mode 644"), "{stderr}");
        assert_owner_only(&data);

        // A directory other users can write is refused before anything in it is read or
        // changed.
        chmod(&data, 0o777);
        chmod(&data.join("certhub.db"), 0o644);
        let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&data)])
            .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .output()
            .expect("certhub runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("other users can write") && stderr.contains("chmod 700"),
            "{stderr}"
        );
        assert_eq!(mode(&data), 0o777, "left as it was");
        assert_eq!(mode(&data.join("certhub.db")), 0o644, "left as it was");
    }

    /// Waits until the hub is up, runs `meanwhile`, then kills the hub and returns its stderr.
    fn wait_for_banner_then_kill(
        mut child: std::process::Child,
        meanwhile: impl FnOnce(),
    ) -> String {
        use std::io::{BufRead, BufReader, Read};
        let stdout = child.stdout.take().expect("stdout");
        for line in BufReader::new(stdout).lines() {
            if line.expect("line").contains("devices (MQTT)") {
                break;
            }
        }
        meanwhile();
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        stderr
    }
}
