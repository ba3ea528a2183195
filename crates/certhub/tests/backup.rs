//! `certhub backup` and `certhub restore` against a real `certhub serve` under load: a widget
//! publishes telemetry at QoS 1 with mosquitto_pub while the backup is taken; the backup is
//! restored into a new data directory and a hub started on it. Every message the hub
//! acknowledged (PUBACK) before the backup began is in the restored hub, nothing the widget
//! never sent is, the registry and the server CA are the same, and the widget connects to the
//! restored hub. Bad input: an existing archive, a data directory that is not empty, a file
//! that is not a backup, an archive with a path no backup holds.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_error, certhub, certhub_at, enroll_widget, publishes, s, start_hub, tmp};

const WIDGET: &str = "smart-x-widget-0001";

/// The bodies of the widget's messages a hub holds, read through its service API.
fn stored(d: &Path, data: &Path) -> Vec<String> {
    let run = certhub_at(
        d,
        data,
        &["messages", "tail", "--device", WIDGET, "--idle-exit", "1"],
    )
    .ok();
    run.stdout
        .lines()
        .filter_map(|l| l.rsplit(' ').next().map(str::to_string))
        .filter(|b| b.starts_with("msg-"))
        .collect()
}

#[test]
fn a_backup_taken_under_load_restores_everything_acknowledged_before_it() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let mut hub = start_hub(&data);
    enroll_widget(d, &data);
    certhub_at(d, &data, &["device", "create", "--id", "sas-1"]).ok();
    let ca = data.join("tls/server-ca.pem");

    // The load: mosquitto_pub reads one message a line (-l) and publishes each at QoS 1; with
    // -d it prints each PUBACK (its message id is the line's number, from 1). A reader thread
    // notes when each PUBACK was seen: the hub acknowledged it before then.
    let widget = format!("pki/devices/{WIDGET}");
    let mut publisher = Command::new("mosquitto_pub")
        .current_dir(d)
        .args(["-h", "localhost", "-p", &hub.mqtt_port.to_string()])
        .args(["-V", "mqttv311", "--cafile", s(&ca)])
        .args(["--cert", &format!("{widget}/chain.pem")])
        .args(["--key", &format!("{widget}/key.pem")])
        .args(["-i", WIDGET])
        .args(["-u", &format!("localhost/{WIDGET}/?api-version=2021-04-12")])
        .args(["-t", &format!("devices/{WIDGET}/messages/events/")])
        .args(["-q", "1", "-l", "-d"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients) runs");
    let acked: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let reader = {
        let acked = acked.clone();
        let stdout = publisher.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "Client smart-x-widget-0001 received PUBACK (Mid: 17, RC:0)"
                if let Some(rest) = line.split("received PUBACK (Mid: ").nth(1)
                    && let Some(mid) = rest.split(',').next().and_then(|m| m.parse().ok())
                {
                    acked.lock().expect("lock").push((mid, Instant::now()));
                }
            }
        })
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut stdin = publisher.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 60_000 {
                n += 1;
                if writeln!(stdin, "msg-{n}").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    common::wait_until(20, "the load is under way", || {
        acked.lock().expect("lock").len() >= 500
    });

    // The backup, while the widget goes on publishing.
    let began = Instant::now();
    let backup = certhub(d, &["backup", "--data-dir", s(&data), "--out", "hub.tar"]).ok();
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = writer.join().expect("writer");
    common::wait_until(20, "mosquitto_pub finishes", || {
        publisher.try_wait().expect("state").is_some()
    });
    reader.join().expect("reader");
    let acked = acked.lock().expect("lock").clone();
    let before: BTreeSet<u32> = acked
        .iter()
        .filter(|(_, seen)| *seen < began)
        .map(|(mid, _)| *mid)
        .collect();
    let during = acked
        .iter()
        .filter(|(_, seen)| *seen >= began && *seen <= began + took)
        .count();
    eprintln!(
        "{} PUBACKs before the backup, {during} while it ran ({took:?}), {} in all of {sent} sent: {}",
        before.len(),
        acked.len(),
        backup.stdout.trim()
    );
    assert!(before.len() >= 500, "{}", before.len());
    let mode = std::fs::metadata(d.join("hub.tar"))
        .expect("the archive")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "the archive holds every key: owner-only"
    );
    let live = stored(d, &data);
    hub.kill();

    // Restored into a new data directory, and a hub started on it.
    let restored = d.join("restored");
    let run = certhub(
        d,
        &["restore", "--from", "hub.tar", "--data-dir", s(&restored)],
    )
    .ok();
    assert!(run.stdout.contains("restored hub.tar"), "{run}");
    assert_eq!(
        std::fs::read(restored.join("tls/server-ca.pem")).expect("CA"),
        std::fs::read(&ca).expect("CA"),
        "the same server CA"
    );
    let hub2 = start_hub(&restored);
    let back: BTreeSet<u32> = stored(d, &restored)
        .iter()
        .filter_map(|b| b.strip_prefix("msg-").and_then(|n| n.parse().ok()))
        .collect();
    let missing: Vec<&u32> = before.difference(&back).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup but not restored: {missing:?}"
    );
    let live: BTreeSet<u32> = live
        .iter()
        .filter_map(|b| b.strip_prefix("msg-").and_then(|n| n.parse().ok()))
        .collect();
    assert!(
        back.is_subset(&live),
        "the restored hub holds only what the hub had stored"
    );
    eprintln!(
        "restored {} messages (the hub held {} when stopped)",
        back.len(),
        live.len()
    );
    for id in [WIDGET, "sas-1"] {
        certhub_at(d, &restored, &["device", "show", "--id", id]).ok();
    }
    assert!(
        publishes(
            d,
            hub2.mqtt_port,
            &restored.join("tls/server-ca.pem"),
            WIDGET
        ),
        "the widget connects to the restored hub"
    );
}

#[test]
fn backup_and_restore_refuse_what_they_cannot_do_safely() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = start_hub(&data);
    drop(hub);
    // No hub data.
    assert_error(
        &certhub(d, &["backup", "--data-dir", "nowhere", "--out", "x.tar"]),
        &["holds no hub data", "--data-dir"],
    );
    certhub(d, &["backup", "--data-dir", s(&data), "--out", "b.tar"]).ok();
    // Never over an existing archive.
    assert_error(
        &certhub(d, &["backup", "--data-dir", s(&data), "--out", "b.tar"]),
        &["b.tar exists", "new file name"],
    );
    // Never over a data directory that holds something.
    assert_error(
        &certhub(d, &["restore", "--from", "b.tar", "--data-dir", s(&data)]),
        &["not empty", "never writes over"],
    );
    // Not a backup.
    std::fs::write(d.join("notes.txt"), "not an archive").expect("write");
    assert_error(
        &certhub(d, &["restore", "--from", "notes.txt", "--data-dir", "r1"]),
        &["not a certhub backup"],
    );
    assert!(!d.join("r1").exists(), "nothing made");
    // An archive with a path no backup holds (here, one that climbs out).
    let mut evil = tar::Builder::new(std::fs::File::create(d.join("evil.tar")).expect("create"));
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o600);
    header.set_cksum();
    evil.append_data(&mut header, "tls/x.pem", &b"ok"[..])
        .expect("append");
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o600);
    header.set_cksum();
    evil.append_data(&mut header, "cron.d/job", &b"no"[..])
        .expect("append");
    evil.finish().expect("finish");
    assert_error(
        &certhub(d, &["restore", "--from", "evil.tar", "--data-dir", "r2"]),
        &["cron.d/job", "no certhub backup holds"],
    );
    assert!(!d.join("r2").exists(), "nothing made");
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no scratch folder left: {leftovers:?}"
    );
    // The backup restores into an empty folder.
    std::fs::create_dir(d.join("empty")).expect("mkdir");
    certhub(d, &["restore", "--from", "b.tar", "--data-dir", "empty"]).ok();
    assert!(d.join("empty/certhub.db").is_file());
}

/// Runs SQL on a SQLite database with Python's sqlite3 module (the hub is stopped).
fn sql(db: &Path, statements: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
            s(db),
            statements,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An upgrade copies the database before it changes the schema; a certhub older than the
/// database refuses to open it and says which version wrote it.
#[test]
fn an_upgrade_keeps_a_copy_first_and_a_downgrade_says_which_version_it_needs() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let mut hub = start_hub(&data);
    certhub_at(d, &data, &["device", "create", "--id", "kept"]).ok();
    hub.kill();
    let db = data.join("certhub.db");
    // As a certhub of schema step 14 left it (steps 15 to 21 undone; 19 and 20 are PostgreSQL's
    // only).
    sql(
        &db,
        "DELETE FROM schema_version WHERE version >= 15; ALTER TABLE schema_version DROP COLUMN written_by; DROP INDEX devices_status; DROP TABLE twin_indexes; DROP TABLE twin_index_declined; ALTER TABLE telemetry_seg_0 RENAME TO telemetry; DROP TABLE telemetry_segments; ALTER TABLE telemetry DROP COLUMN prev_seq; DROP TABLE telemetry_heads; DROP TABLE telemetry_chain;",
    );
    let mut hub = start_hub(&data);
    certhub_at(d, &data, &["device", "show", "--id", "kept"]).ok();
    hub.kill();
    let copies: Vec<_> = std::fs::read_dir(data.join("backups"))
        .expect("a backups folder")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        matches!(copies.as_slice(), [name] if name.starts_with("certhub-schema-14-") && name.ends_with(".db")),
        "{copies:?}"
    );

    // Written by a newer certhub.
    sql(
        &db,
        "INSERT INTO schema_version VALUES (99, 'certhub 9.9.9');",
    );
    let run = certhub(
        d,
        &[
            "serve",
            "--data-dir",
            s(&data),
            "--https-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--amqp-addr",
            "127.0.0.1:0",
        ],
    );
    assert_error(
        &run,
        &[
            "schema step 99",
            "written by certhub 9.9.9",
            "knows steps up to 21",
        ],
    );
}
