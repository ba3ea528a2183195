//! The telemetry log on a small disk: the size cap drops the oldest messages (metric, audit
//! record) and keeps the log within `telemetry_max_bytes`; a full disk refuses devices'
//! messages clearly (mosquitto_pub gets no PUBACK and the connection closes; the metric and
//! the hub's log say why) without a crash, and the hub takes messages again once space is
//! freed. The data directory lives on a tmpfs of 24 MiB mounted for the test (root only, as
//! on CI; elsewhere the test says so and passes without running).

mod common;

use common::{enroll_widget, s, start_hub_plus, tmp, wait_until};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A mounted tmpfs, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
    std::fs::create_dir_all(at).expect("mount point");
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .output()
        .expect("mount runs");
    if !out.status.success() {
        eprintln!(
            "SKIPPED: mounting a tmpfs needs root (CI runs this as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(Tmpfs(at.to_path_buf()))
}

/// Publishes `count` messages of `size` bytes as the widget with one mosquitto_pub (`-l`: a
/// message per line of its input, QoS 1; one message with `-m` for a count of 1), given 20 s.
/// Returns whether every message was acknowledged (mosquitto_pub's `-d` lines count the
/// PUBACKs: its exit status is 0 even when the connection closed before one came).
fn publish(d: &Path, port: u16, ca: &Path, count: usize, size: usize) -> bool {
    let id = "smart-x-widget-0001";
    let body = "x".repeat(size - 1);
    let mut child = Command::new("timeout")
        .arg("20")
        .arg("mosquitto_pub")
        .current_dir(d)
        .args(["-h", "localhost", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["--cafile", s(ca)])
        .args(["--cert", "pki/devices/smart-x-widget-0001/chain.pem"])
        .args(["--key", "pki/devices/smart-x-widget-0001/key.pem"])
        .args([
            "-i",
            id,
            "-u",
            &format!("localhost/{id}/?api-version=2021-04-12"),
        ])
        .args(["-t", &format!("devices/{id}/messages/events/")])
        .args(["-q", "1", "-d"])
        .args(if count == 1 {
            vec!["-m", body.as_str()]
        } else {
            vec!["-l"]
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients) runs");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let line = format!("{body}\n");
        // With -m (one message) the input is not read.
        let lines = if count == 1 { 0 } else { count };
        for _ in 0..lines {
            if stdin.write_all(line.as_bytes()).is_err() {
                break; // it quit: the connection closed
            }
        }
    }
    let out = child.wait_with_output().expect("mosquitto_pub ends");
    let acks = String::from_utf8_lossy(&out.stdout)
        .matches("received PUBACK")
        .count();
    eprintln!(
        "mosquitto_pub: {}, {acks} of {count} acknowledged {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out.status.success() && acks == count
}

fn metric(host: &str, ca: &Path, name: &str) -> i64 {
    let out = Command::new("curl")
        .args(["-sf", "--cacert", s(ca), &format!("https://{host}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[test]
fn a_size_cap_bounds_the_log_and_a_full_disk_refuses_messages_without_a_crash() {
    let dir = tmp();
    let d = dir.path();
    let Some(_disk) = mount(&d.join("disk"), "24m") else {
        return;
    };
    let data = d.join("disk/certhub-data");
    let cap: i64 = 1 << 20;
    let mut hub = start_hub_plus(&data, &["--telemetry-max-bytes", &cap.to_string()]);
    enroll_widget(d, &data);
    let ca = data.join("tls/server-ca.pem");

    // 3 MiB of messages into a log capped at 1 MiB: every one is acknowledged, and the oldest
    // go.
    assert!(
        publish(d, hub.mqtt_port, &ca, 750, 4096),
        "every message acknowledged"
    );
    wait_until(10, "the size cap dropped messages", || {
        metric(&hub.host, &ca, "certhub_telemetry_dropped_total") > 0
    });
    wait_until(10, "the log is back within its cap", || {
        metric(&hub.host, &ca, "certhub_telemetry_log_bytes") <= cap
    });
    // The log is in segments of a sixteenth of the cap, and the cap dropped the oldest whole.
    assert!(metric(&hub.host, &ca, "certhub_telemetry_segments_started_total") >= 16);
    assert!(metric(&hub.host, &ca, "certhub_telemetry_segments_dropped_total") > 0);
    let audit = common::certhub_at(d, &data, &["audit", "list", "--top", "50"]).ok();
    assert!(
        audit.stdout.contains("telemetry.dropped")
            && audit.stdout.contains("over telemetry_max_bytes"),
        "{audit}"
    );

    // The disk fills up (another program's file) under a hub whose cap is above what the disk
    // holds: messages are refused, not lost silently.
    hub.terminate(std::time::Duration::from_secs(10));
    let mut hub = start_hub_plus(&data, &["--telemetry-max-bytes", "1073741824"]);
    let filler = d.join("disk/filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=65536"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    let before = metric(
        &hub.host,
        &ca,
        "certhub_telemetry_refused_total{reason=\"disk-full\"}",
    );
    assert_eq!(before, 0);
    // The database's write-ahead log reuses the room it has: enough messages to outgrow it.
    let mut refused = false;
    for _ in 0..10 {
        if !publish(d, hub.mqtt_port, &ca, 500, 16_384) {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "a device publishing onto a full disk is told (no PUBACK, closed)"
    );
    assert!(
        metric(
            &hub.host,
            &ca,
            "certhub_telemetry_refused_total{reason=\"disk-full\"}"
        ) > 0,
        "the refusal is counted as disk-full"
    );
    assert!(hub.running(), "the hub is running");

    // Space freed: messages are taken again.
    std::fs::remove_file(&filler).expect("free the space");
    wait_until(20, "messages are acknowledged again", || {
        publish(d, hub.mqtt_port, &ca, 5, 100)
    });
    hub.terminate(std::time::Duration::from_secs(10));
}
