//! `scripts/cluster`, run as a user would: `start` brings up three NATS servers (JetStream),
//! three nodes on one PostgreSQL database and HAProxy in front of them; a widget enrolled
//! through node 1's data directory publishes one QoS 1 message with mosquitto_pub through the
//! balancer, acknowledged, and node 2's data directory reads it back; `status` lists the three
//! nodes; `stop --clean` ends every process and drops the database (also when the test fails:
//! a guard runs it).
//!
//! Every address, port, directory and the database are the test's own (127.0.3.x, ports that
//! are not a hub's defaults), so neither a user's hub nor a `scripts/cluster` of their own is
//! touched. PostgreSQL: `CERTHUB_TEST_POSTGRES`'s server (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a database named for this test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{certhub_at, enroll_widget, s, tmp};

const LB: &str = "127.0.3.10";
const LB_HTTPS: u16 = 23443;
const LB_MQTT: u16 = 23883;
const LB_AMQP: u16 = 23671;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

/// The test's database, on the server of `CERTHUB_TEST_POSTGRES`.
fn database_url() -> String {
    let admin = std::env::var("CERTHUB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let base = admin
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/certhub_cluster_script_{}", std::process::id())
}

/// `scripts/cluster ARGS` with the test's settings.
fn cluster(run: &Path, db: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("CERTHUB_BIN", env!("CARGO_BIN_EXE_certhub"))
        .env("CERTHUB_CLUSTER_DIR", run)
        .env("CERTHUB_CLUSTER_POSTGRES", db)
        .env("CERTHUB_CLUSTER_LB_ADDR", LB)
        .env("CERTHUB_CLUSTER_HTTPS_PORT", LB_HTTPS.to_string())
        .env("CERTHUB_CLUSTER_MQTT_PORT", LB_MQTT.to_string())
        .env("CERTHUB_CLUSTER_AMQP_PORT", LB_AMQP.to_string())
        .env(
            "CERTHUB_CLUSTER_NODE_ADDRS",
            "127.0.3.11 127.0.3.12 127.0.3.13",
        )
        .env("CERTHUB_CLUSTER_NODE_HTTPS_PORT", "24443")
        .env("CERTHUB_CLUSTER_NODE_MQTT_PORT", "24883")
        .env("CERTHUB_CLUSTER_NODE_AMQP_PORT", "24671")
        .env("CERTHUB_CLUSTER_NATS_PORT", "24222")
        .env("CERTHUB_CLUSTER_NATS_ROUTE_PORT", "26222")
        .env("CERTHUB_LOG", "warn")
        .output()
        .expect("bash runs scripts/cluster")
}

fn said(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `scripts/cluster stop --clean` when dropped, whatever happened before.
struct Stop<'a> {
    run: &'a Path,
    db: &'a str,
}

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What each process said, for a failure seen only in CI.
            for name in [
                "haproxy", "node-1", "node-2", "node-3", "nats-1", "nats-2", "nats-3",
            ] {
                let log = std::fs::read_to_string(self.run.join(format!("{name}.log")))
                    .unwrap_or_else(|e| format!("(unreadable: {e})"));
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- the end of {name}.log ---\n{tail}");
            }
        }
        let out = cluster(self.run, self.db, &["stop", "--clean"]);
        if !out.status.success() {
            eprintln!("scripts/cluster stop --clean failed: {}", said(&out));
        }
    }
}

#[test]
fn scripts_cluster_starts_a_hub_behind_haproxy_and_stops_it() {
    let since = Instant::now();
    let t = tmp();
    let d = t.path();
    let run = d.join("run");
    let db = database_url();
    let stop = Stop { run: &run, db: &db };

    let started = cluster(&run, &db, &["start"]);
    let started_said = said(&started);
    assert!(started.status.success(), "start: {started_said}");
    let stdout = String::from_utf8_lossy(&started.stdout);
    assert!(
        stdout.contains(&format!(
            "HostName={LB}:{LB_HTTPS};SharedAccessKeyName=iothubowner"
        )),
        "start names the balancer in the owner's connection string: {started_said}"
    );
    eprintln!("scripts/cluster start took {:?}", since.elapsed());

    let status = cluster(&run, &db, &["status"]);
    let status_said = said(&status);
    assert!(status.status.success(), "status: {status_said}");
    for name in [
        "nats-1", "nats-2", "nats-3", "node-1", "node-2", "node-3", "haproxy",
    ] {
        assert!(
            String::from_utf8_lossy(&status.stdout)
                .lines()
                .any(|l| l.trim_start().starts_with(name) && l.contains("running (pid")),
            "{name} runs: {status_said}"
        );
    }

    // Enrolled through node 1's data directory (the CLI reaches the hub through the
    // balancer, the endpoint the nodes recorded).
    let node_1 = run.join("node-1");
    enroll_widget(d, &node_1);
    let ca = node_1.join("tls/server-ca.pem");
    let w = "smart-x-widget-0001";
    let publish = || {
        Command::new("mosquitto_pub")
            .current_dir(d)
            .args([
                "-h",
                LB,
                "-p",
                &LB_MQTT.to_string(),
                "-V",
                "mqttv311",
                "--cafile",
                s(&ca),
                "--cert",
                &format!("pki/devices/{w}/chain.pem"),
                "--key",
                &format!("pki/devices/{w}/key.pem"),
                "-i",
                w,
                "-u",
                &format!("{LB}/{w}/?api-version=2021-04-12"),
                "-t",
                &format!("devices/{w}/messages/events/"),
                "-q",
                "1",
                "-m",
                "through the balancer",
            ])
            .output()
            .expect("mosquitto_pub (Debian package mosquitto-clients) is required")
    };
    // Every node trusts the CA within half a second of its upload.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = publish();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mosquitto_pub through {LB}:{LB_MQTT} was not acknowledged: {}",
            said(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Read back through node 2's data directory.
    let tail = certhub_at(
        d,
        &run.join("node-2"),
        &["messages", "tail", "--count", "1", "--idle-exit", "5"],
    )
    .ok();
    assert!(
        tail.stdout.contains(w) && tail.stdout.contains("through the balancer"),
        "the message read back: {tail}"
    );

    // `status` lists the three nodes (`certhub cluster status`: their heartbeats, every 2 s).
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let status = cluster(&run, &db, &["status"]);
        if String::from_utf8_lossy(&status.stdout).contains("3 nodes, ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status lists three nodes: {}",
            said(&status)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    drop(stop);
    assert!(!run.exists(), "stop --clean removes the run directory");
    for (addr, port) in [(LB, LB_MQTT), ("127.0.3.11", 24883), ("127.0.3.12", 24222)] {
        assert!(
            std::net::TcpStream::connect((addr, port)).is_err(),
            "nothing listens on {addr}:{port} after stop"
        );
    }
    eprintln!("the whole test took {:?}", since.elapsed());
}
