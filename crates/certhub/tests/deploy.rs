//! The service files in deploy/: the systemd unit passes `systemd-analyze verify` with nothing
//! to say (and a broken copy of it does not, so the check can fail), and the example
//! configuration is one `certhub serve` accepts (its keys are checked: an unknown key exits 64).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{start_hub_with, tmp};

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name)
}

/// What `systemd-analyze verify` says of a unit file: its complaints (empty when none).
fn verify(unit: &std::path::Path) -> String {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd) is required");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_systemd_unit_verifies() {
    let t = tmp();
    let text = std::fs::read_to_string(deploy("certhub.service")).expect("the unit");
    assert!(
        text.contains("ExecStart=/usr/local/bin/certhub serve --config /etc/certhub/certhub.toml")
            && text.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE")
            && text.contains("StateDirectoryMode=0700"),
        "{text}"
    );
    // With ExecStart on this build's binary (the unit names the installed path).
    let unit = t.path().join("certhub.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/certhub", env!("CARGO_BIN_EXE_certhub")),
    )
    .expect("write");
    let said = verify(&unit);
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    let broken = t.path().join("broken.service");
    std::fs::write(&broken, text.replace("DynamicUser=yes", "DynamicUsr=yes")).expect("write");
    assert!(
        verify(&broken).contains("Unknown key"),
        "the check can fail"
    );
}

#[test]
fn the_example_configuration_is_accepted() {
    let t = tmp();
    let data = t.path().join("data");
    let config = deploy("certhub.toml");
    // Its addresses are the real ports; the flags put this hub on free ports of loopback.
    let mut hub = start_hub_with(
        &data,
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--hostname",
            "127.0.0.81",
            "--https-addr",
            "127.0.0.81:0",
            "--mqtt-addr",
            "127.0.0.81:0",
            "--amqp-addr",
            "127.0.0.81:0",
        ],
    );
    assert!(hub.mqtt_port > 0);
    hub.kill();
}
