//! Nodes of one hub on a shared PostgreSQL database (issue 15, the part that needs no NATS):
//! two `certhub serve --store postgres://...` processes started at the same moment on a fresh
//! database both come up (one brings the schema up to date while the other waits for it),
//! agree on one server CA, so clients trust either node by one file, and are one registry: a
//! widget enrolled through node A's data directory (its CLI) publishes QoS 1 telemetry with
//! mosquitto_pub to node B and then to node A, each acknowledged (both messages stored, with
//! distinct numbers, although each node numbered its own from the same log). A persistent
//! session (paho-mqtt, CleanSession=0) subscribed on node A is resumed on node B, where a C2D
//! message queued meanwhile arrives without a new SUBSCRIBE. Trust follows
//! across nodes through the database's change counter: the CA deleted through node A's API
//! closes the widget's live session (mosquitto_sub) on node B.
//!
//! PostgreSQL: `CERTHUB_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`, as
//! on the CI machine); each run makes a database of its own and drops it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{certhub_at, enroll_widget, read_text, s, start_hub_on, tmp};

fn admin_url() -> String {
    std::env::var("CERTHUB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .output()
        .expect("psql (Debian package postgresql-client) is required");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database of its own, dropped when this is.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn new() -> Self {
        let admin = admin_url();
        let name = format!(
            "certhub_cluster_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let made = Command::new("psql")
            .args([
                &admin,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .output()
            .expect("psql (Debian package postgresql-client) is required");
        assert!(
            made.status.success(),
            "the cluster tests need a PostgreSQL server at {admin} (set CERTHUB_TEST_POSTGRES to \
             one where this user may create databases): {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &admin_url(),
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// `tool` (mosquitto_pub or mosquitto_sub) as the enrolled widget, to the node at
/// `host:port`, trusting `ca`, at QoS 1 on `topic`.
fn widget(d: &Path, tool: &str, host: &str, port: u16, ca: &Path, topic: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.current_dir(d).args([
        "-h",
        host,
        "-p",
        &port.to_string(),
        "-V",
        "mqttv311",
        "--cafile",
        s(ca),
        "--cert",
        "pki/devices/smart-x-widget-0001/chain.pem",
        "--key",
        "pki/devices/smart-x-widget-0001/key.pem",
        "-i",
        "smart-x-widget-0001",
        "-u",
        &format!("{host}/smart-x-widget-0001/?api-version=2021-04-12"),
        "-t",
        topic,
        "-q",
        "1",
    ]);
    cmd
}

/// The owner's connection string naming `node`'s service API (the one in the store names
/// whichever node started last).
fn connection_string_at(d: &Path, data: &Path, node: &common::HubProcess) -> String {
    let owner = certhub_at(d, data, &["hub", "connection-string"])
        .ok()
        .stdout;
    let rest = owner.trim().split_once(';').map_or("", |(_, rest)| rest);
    format!("HostName={};{rest}", node.host)
}

/// How long after `since` the mosquitto client `sub` gave up (its session was closed); panics
/// after 5 s.
fn closed_within(sub: &mut std::process::Child, since: Instant, what: &str) -> Duration {
    loop {
        if sub.try_wait().expect("state").is_some() {
            return since.elapsed();
        }
        if since.elapsed() > Duration::from_secs(5) {
            let _ = sub.kill();
            panic!("a session outlived {what} by 5 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The CLI against one node's API.
fn cli_at(d: &Path, cs: &str, ca: &Path, args: &[&str]) -> String {
    let mut v = args.to_vec();
    v.extend_from_slice(&["--connection-string", cs, "--ca-file", s(ca)]);
    common::certhub(d, &v).ok().stdout
}

/// Queues a C2D message for `device` through the node whose API `cs` names.
fn c2d_send(d: &Path, cs: &str, ca: &Path, device: &str, body: &str) {
    cli_at(
        d,
        cs,
        ca,
        &["c2d", "send", "--device", device, "--body", body],
    );
}

/// Waits until the node whose API `cs` names says the device is connected to it.
fn until_connected(d: &Path, cs: &str, ca: &Path, device: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli_at(d, cs, ca, &["device", "show", "--id", device]).contains("\"Connected\"") {
        assert!(Instant::now() < deadline, "{device} never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A NATS server of the test's own on `host` (a free port) with JetStream (its store in a
/// folder of its own), stopped when this is dropped.
struct Nats {
    child: std::process::Child,
    url: String,
    host: String,
    args: Vec<String>,
    _store: tempfile::TempDir,
}

impl Nats {
    fn start(host: &str) -> Self {
        Self::start_on(host, "-1", tmp(), Vec::new())
    }

    /// Three servers clustered on `hosts` (routes on port 6222 of each address), JetStream on
    /// each (the nodes wait for its JetStream leader when they start).
    fn cluster(hosts: [&str; 3]) -> [Self; 3] {
        let route = |h: &str| format!("nats://{h}:6222");
        hosts.map(|h| {
            let routes: Vec<String> = hosts
                .iter()
                .filter(|o| **o != h)
                .map(|o| route(o))
                .collect();
            Self::start_on(
                h,
                "-1",
                tmp(),
                vec![
                    "--server_name".into(),
                    format!("n{}", h.rsplit('.').next().unwrap_or(h)),
                    "--cluster_name".into(),
                    "certhub-test".into(),
                    "--cluster".into(),
                    route(h),
                    "--routes".into(),
                    routes.join(","),
                ],
            )
        })
    }

    /// All the servers' client URLs, comma-separated (as `--nats` takes them).
    fn urls(servers: &[Self]) -> String {
        servers
            .iter()
            .map(|n| n.url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Stops it (as a crash would: SIGKILL).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address, port and store.
    fn restart(&mut self) {
        let port = self.url.rsplit(':').next().unwrap_or_default().to_string();
        self.stop();
        let store = std::mem::replace(&mut self._store, tmp());
        let (host, args) = (self.host.clone(), std::mem::take(&mut self.args));
        *self = Self::start_on(&host, &port, store, args);
    }

    /// `port` "-1": a free one.
    fn start_on(host: &str, port: &str, store: tempfile::TempDir, args: Vec<String>) -> Self {
        use std::io::{BufRead, BufReader};
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut child = Command::new(program)
            .args(["-a", host, "-p", port, "-js", "-sd", s(store.path())])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server (Debian package nats-server) is required");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines
                .next()
                .and_then(Result::ok)
                .expect("nats-server said where it listens");
            if let Some(rest) = line.split("client connections on ").nth(1) {
                break rest
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
            }
        };
        // Keep reading its log so it never blocks on a full pipe (CERTHUB_TEST_NATS_LOG=1
        // prints it).
        let tag = host.to_string();
        let show = std::env::var("CERTHUB_TEST_NATS_LOG").is_ok();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if show {
                    eprintln!("nats-server {tag}: {line}");
                }
            }
        });
        Self {
            child,
            url: format!("nats://{host}:{port}"),
            host: host.to_string(),
            args,
            _store: store,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes joined through NATS close each other's sessions at once: a widget disabled through
/// node A loses its session on node B, and a widget that connects to node A while connected
/// to node B keeps only the newer connection; a C2D message and a desired-property patch sent
/// through node B reach its session on node A, and so does a direct method, whose answer comes
/// back through node B (and a method to a device connected nowhere is 404 at once). With its
/// NATS server stopped, node A admits no device (CONNACK 3, audited `cluster-bus-down`), and
/// admits again once NATS is back.
#[test]
fn nodes_joined_by_nats_act_for_each_other() {
    let db = Database::new();
    let mut nats = Nats::start("127.0.0.63");
    let t = tmp();
    let d = t.path();
    let (data_a, data_b) = (d.join("node-a"), d.join("node-b"));
    let (host_a, host_b) = ("127.0.0.64", "127.0.0.65");
    let cluster = ["--store", db.url.as_str(), "--nats", nats.url.as_str()];
    let node_a = start_hub_on(&data_a, host_a, &cluster);
    let node_b = start_hub_on(&data_b, host_b, &cluster);
    let ca = data_a.join("tls/server-ca.pem");
    let (cs_a, cs_b) = (
        connection_string_at(d, &data_a, &node_a),
        connection_string_at(d, &data_b, &node_b),
    );
    // The widget of Company-X's chain, enrolled through node A's data directory; node B
    // follows the CA within half a second.
    enroll_widget(d, &data_a);
    std::thread::sleep(Duration::from_millis(1200));
    let w = "smart-x-widget-0001";
    let subscriber = |host: &str, port: u16| {
        widget(
            d,
            "mosquitto_sub",
            host,
            port,
            &ca,
            "$iothub/methods/POST/#",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub runs")
    };

    // Disabled through node A: its session on node B closes.
    let mut on_b = subscriber(host_b, node_b.mqtt_port);
    until_connected(d, &cs_b, &ca, w);
    let asked = Instant::now();
    cli_at(
        d,
        &cs_a,
        &ca,
        &["device", "update", "--id", w, "--status", "disabled"],
    );
    let disabled = closed_within(&mut on_b, asked, "the widget disabled through node A");
    eprintln!(
        "disabled through node A: the session on node B closed {disabled:?} after the request was sent"
    );
    // Node B, which kept the widget's identity in memory from its connection, forgot it: the
    // widget is refused there now.
    let refused = widget(
        d,
        "mosquitto_pub",
        host_b,
        node_b.mqtt_port,
        &ca,
        "devices/smart-x-widget-0001/messages/events/",
    )
    .args(["-m", "while disabled"])
    .output()
    .expect("mosquitto_pub runs");
    assert!(
        !refused.status.success(),
        "a disabled widget is refused by node B: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Enabled again, connected to B, then to A: B's older session closes.
    cli_at(
        d,
        &cs_a,
        &ca,
        &["device", "update", "--id", w, "--status", "enabled"],
    );
    let mut on_b = subscriber(host_b, node_b.mqtt_port);
    until_connected(d, &cs_b, &ca, w);
    let connected = Instant::now();
    // This one takes C2D messages and desired-property patches, and prints them.
    let mut on_a = widget(
        d,
        "mosquitto_sub",
        host_a,
        node_a.mqtt_port,
        &ca,
        "devices/smart-x-widget-0001/messages/devicebound/#",
    )
    .args(["-t", "$iothub/twin/PATCH/properties/desired/#", "-v"])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("mosquitto_sub runs");
    let replaced = closed_within(&mut on_b, connected, "a newer connection on node A");
    eprintln!("connected to node A: the older session on node B closed {replaced:?} after");
    until_connected(d, &cs_a, &ca, w);
    assert!(
        on_a.try_wait().expect("state").is_none(),
        "the newer connection, on node A, stays"
    );

    // A C2D message and a desired patch sent through node B reach the session on node A.
    let lines = {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        let out = std::io::BufReader::new(on_a.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let sent = Instant::now();
    c2d_send(d, &cs_b, &ca, w, "sent through node B");
    cli_at(
        d,
        &cs_b,
        &ca,
        &[
            "twin",
            "update",
            "--device",
            w,
            "--desired",
            r#"{"mode": "eco"}"#,
        ],
    );
    let mut seen = Vec::new();
    while !(seen
        .iter()
        .any(|l: &String| l.contains("sent through node B"))
        && seen.iter().any(|l| l.contains("\"mode\":\"eco\"")))
    {
        match lines.recv_timeout(Duration::from_secs(10).saturating_sub(sent.elapsed())) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("not received on node A within 10 s: {seen:?}"),
        }
    }
    eprintln!(
        "C2D and desired patch through node B received on node A after {:?}",
        sent.elapsed()
    );
    let _ = on_a.kill();
    let _ = on_a.wait();

    // A direct method invoked through node B on the widget's session on node A: the device's
    // answer comes back through node B.
    let mut responder = Command::new(common::python())
        .current_dir(d)
        .args([
            "-c",
            RESPONDER,
            host_a,
            &node_a.mqtt_port.to_string(),
            s(&ca),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs");
    let ready = {
        use std::io::BufRead;
        let mut first = String::new();
        std::io::BufReader::new(responder.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read");
        first
    };
    assert!(
        ready.contains("ready"),
        "the responder on node A: {ready:?}"
    );
    let invoked = Instant::now();
    let answer = cli_at(
        d,
        &cs_b,
        &ca,
        &[
            "method",
            "invoke",
            "--device",
            w,
            "--name",
            "reboot",
            "--payload",
            "{}",
            "--timeout",
            "10",
        ],
    );
    eprintln!(
        "method through node B answered from node A after {:?}: {answer}",
        invoked.elapsed()
    );
    assert!(
        answer.contains("200") && answer.contains(&format!("\"answeredOn\": \"{host_a}\"")),
        "{answer}"
    );
    let _ = responder.kill();
    let _ = responder.wait();
    // Gone from every node: 404 DeviceNotOnline at once, not a wait for the response timeout.
    std::thread::sleep(Duration::from_millis(1000));
    let invoked = Instant::now();
    let gone = common::certhub(
        d,
        &[
            "method",
            "invoke",
            "--device",
            w,
            "--name",
            "reboot",
            "--timeout",
            "10",
            "--connection-string",
            &cs_b,
            "--ca-file",
            s(&ca),
        ],
    );
    assert!(
        gone.code != Some(0)
            && gone.stderr.contains("DeviceNotOnline")
            && invoked.elapsed() < Duration::from_secs(5),
        "{gone} after {:?}",
        invoked.elapsed()
    );

    // A persistent session (CleanSession=0) subscribed on node A is resumed on node B, which
    // keeps persistent sessions in memory as the others' notices tell it (it reads no
    // database at a connect); a clean session on node B discards it on node A too.
    let first = paho(d, &ca, host_a, node_a.mqtt_port, "subscribe");
    assert!(first.contains("subscribed"), "{first}");
    c2d_send(d, &cs_a, &ca, w, "queued while away");
    let second = paho(d, &ca, host_b, node_b.mqtt_port, "receive");
    assert!(
        second.contains("present 1") && second.contains("queued while away"),
        "the session subscribed on node A, resumed on node B: {second}"
    );
    let clean = widget(
        d,
        "mosquitto_pub",
        host_b,
        node_b.mqtt_port,
        &ca,
        "devices/smart-x-widget-0001/messages/events/",
    )
    .args(["-m", "a clean session"])
    .output()
    .expect("mosquitto_pub runs");
    assert!(clean.status.success(), "{clean:?}");
    let third = paho(d, &ca, host_a, node_a.mqtt_port, "connect");
    assert!(
        third.contains("present 0"),
        "the clean session on node B discarded the persistent one on node A too: {third}"
    );

    // NATS gone: a node that could not be told of a revocation admits no one (CONNACK 3,
    // audited cluster-bus-down); NATS back, it admits again.
    let publish = |message: &str| {
        widget(
            d,
            "mosquitto_pub",
            host_a,
            node_a.mqtt_port,
            &ca,
            "devices/smart-x-widget-0001/messages/events/",
        )
        .args(["-m", message])
        .output()
        .expect("mosquitto_pub runs")
    };
    nats.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let out = publish("while NATS is down");
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "node A kept admitting without NATS"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refused.to_lowercase().contains("unavailable"), "{refused}");
    let log = certhub_at(d, &data_a, &["audit", "list", "--top", "50"])
        .ok()
        .stdout;
    assert!(log.contains("cluster-bus-down"), "{log}");
    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !publish("NATS is back").status.success() {
        assert!(
            Instant::now() < deadline,
            "node A did not admit again after NATS came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((node_a, node_b));
}

/// The widget over paho-mqtt answering every direct method with status 200 and
/// `{"answeredOn": HOST}`; prints `ready` once subscribed, and runs 30 s at most.
const RESPONDER: &str = r#"
import json, sys, time
import paho.mqtt.client as mqtt
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = mqtt.Client(client_id="smart-x-widget-0001", clean_session=True, protocol=mqtt.MQTTv311)
c.username_pw_set(f"{host}/smart-x-widget-0001/?api-version=2021-04-12")
c.tls_set(ca_certs=ca, certfile="pki/devices/smart-x-widget-0001/chain.pem",
          keyfile="pki/devices/smart-x-widget-0001/key.pem")
def answer(client, userdata, message):
    rid = message.topic.split("$rid=")[1]
    client.publish(f"$iothub/methods/res/200/?$rid={rid}", json.dumps({"answeredOn": host}))
c.on_message = answer
c.on_subscribe = lambda client, userdata, mid, granted: print("ready", flush=True)
c.on_connect = lambda client, userdata, flags, rc: client.subscribe("$iothub/methods/POST/#", qos=0)
c.connect(host, port)
end = time.time() + 30
while time.time() < end:
    c.loop(0.05)
"#;

/// The widget over paho-mqtt with CleanSession=0: `subscribe` subscribes to its C2D topic and
/// leaves; `receive` waits for a message without subscribing. Prints the CONNACK's session
/// present flag (`present 1`) and what it received.
const PAHO: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
host, port, ca, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
got, connack = [], {}
c = mqtt.Client(client_id="smart-x-widget-0001", clean_session=False, protocol=mqtt.MQTTv311)
c.username_pw_set(f"{host}/smart-x-widget-0001/?api-version=2021-04-12")
c.tls_set(ca_certs=ca, certfile="pki/devices/smart-x-widget-0001/chain.pem",
          keyfile="pki/devices/smart-x-widget-0001/key.pem")
c.on_connect = lambda cl, u, flags, rc: connack.update(flags, rc=rc)
c.on_subscribe = lambda cl, u, mid, granted: got.append("subscribed")
c.on_message = lambda cl, u, m: got.append(m.payload.decode())
c.connect(host, port)
deadline = time.time() + 10
while "rc" not in connack and time.time() < deadline:
    c.loop(0.05)
print("connected", connack.get("rc"), "present", connack.get("session present"), flush=True)
if phase == "subscribe":
    c.subscribe("devices/smart-x-widget-0001/messages/devicebound/#", qos=1)
while not got and phase != "connect" and time.time() < deadline:
    c.loop(0.05)
print(phase, got, flush=True)
c.disconnect()
"#;

/// Runs [`PAHO`] in `phase` against `host:port`: what it printed.
fn paho(d: &Path, ca: &Path, host: &str, port: u16, phase: &str) -> String {
    let out = Command::new(common::python())
        .current_dir(d)
        .args(["-c", PAHO, host, &port.to_string(), s(ca), phase])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "paho {phase} on {host}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn two_nodes_on_one_postgresql_are_one_hub() {
    let db = Database::new();
    let t = tmp();
    let d = t.path();
    let (data_a, data_b) = (d.join("node-a"), d.join("node-b"));
    let (host_a, host_b) = ("127.0.0.61", "127.0.0.62");
    // Both at once on the fresh database: the schema is made once, by whichever comes first.
    let (node_a, node_b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| start_hub_on(&data_a, host_a, &["--store", &db.url]));
        let b = scope.spawn(|| start_hub_on(&data_b, host_b, &["--store", &db.url]));
        (
            a.join().expect("node A starts"),
            b.join().expect("node B starts"),
        )
    });
    let versions = psql(
        &db.url,
        "SELECT COUNT(*) || ' ' || COUNT(DISTINCT version) FROM schema_version",
    );
    let (all, distinct) = versions.split_once(' ').expect("two counts");
    assert_eq!(all, distinct, "each schema step applied once: {versions}");

    // One server CA: node B's file is node A's.
    let ca_a = data_a.join("tls/server-ca.pem");
    assert_eq!(
        read_text(&ca_a),
        read_text(&data_b.join("tls/server-ca.pem")),
        "both nodes present certificates of one CA"
    );

    // The widget enrolled through node A's CLI (its data directory records the database).
    enroll_widget(d, &data_a);
    // Node B learns of the CA uploaded through whichever node the CLI reached within half a
    // second (it polls the database's change counter).
    for (host, port, message) in [
        (host_b, node_b.mqtt_port, "to node B"),
        (host_a, node_a.mqtt_port, "to node A"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = widget(
                d,
                "mosquitto_pub",
                host,
                port,
                &ca_a,
                "devices/smart-x-widget-0001/messages/events/",
            )
            .args(["-m", message])
            .output()
            .expect("mosquitto_pub (Debian package mosquitto-clients) is required");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_pub {message}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let stored = psql(
        &db.url,
        // A log this small is one segment.
        "SELECT COUNT(DISTINCT seq) FROM telemetry_seg_0 WHERE device_id = 'smart-x-widget-0001'",
    );
    assert_eq!(stored, "2", "both messages stored under their own numbers");
    // Node B's CLI reaches the same hub.
    let shown = certhub_at(
        d,
        &data_b,
        &["device", "show", "--id", "smart-x-widget-0001"],
    )
    .ok()
    .stdout;
    assert!(shown.contains("certificateAuthority"), "{shown}");

    let (cs_a, cs_b) = (
        connection_string_at(d, &data_a, &node_a),
        connection_string_at(d, &data_b, &node_b),
    );

    // A persistent session (CleanSession=0) subscribed on node A is resumed on node B: a C2D
    // message queued meanwhile arrives there without a new SUBSCRIBE, as the Azure SDKs expect.
    let paho = |host: &str, port: u16, phase: &str| paho(d, &ca_a, host, port, phase);
    let first = paho(host_a, node_a.mqtt_port, "subscribe");
    assert!(first.contains("subscribed"), "{first}");
    common::certhub(
        d,
        &[
            "c2d",
            "send",
            "--device",
            "smart-x-widget-0001",
            "--body",
            "queued while away",
            "--connection-string",
            &cs_b,
            "--ca-file",
            s(&ca_a),
        ],
    )
    .ok();
    let second = paho(host_b, node_b.mqtt_port, "receive");
    assert!(
        second.contains("present 1") && second.contains("queued while away"),
        "the session subscribed on node A, resumed on node B: {second}"
    );

    // The widget live on node B; its CA deleted through node A's API.
    let mut sub = widget(
        d,
        "mosquitto_sub",
        host_b,
        node_b.mqtt_port,
        &ca_a,
        "devices/smart-x-widget-0001/messages/devicebound/#",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("mosquitto_sub runs");
    let on_b = |args: &[&str]| {
        let mut v = args.to_vec();
        v.extend_from_slice(&["--connection-string", &cs_b, "--ca-file", s(&ca_a)]);
        common::certhub(d, &v).ok().stdout
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !on_b(&["device", "show", "--id", "smart-x-widget-0001"]).contains("\"Connected\"") {
        assert!(
            Instant::now() < deadline,
            "the widget never connected to node B"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    common::certhub(
        d,
        &[
            "ca",
            "delete",
            "--name",
            "company-x",
            "--connection-string",
            &cs_a,
            "--ca-file",
            s(&ca_a),
        ],
    )
    .ok();
    let closed_after = closed_within(&mut sub, Instant::now(), "its CA deleted through node A");
    eprintln!("CA deleted through node A: the session on node B closed after {closed_after:?}");
    drop((node_a, node_b));
}

/// Telemetry of a cluster is one JetStream stream, replicated over three NATS servers: eight
/// widgets (paho-mqtt, `tests/interop/cluster_telemetry.py`) send numbered QoS 1 messages,
/// each only after the last was acknowledged, half of them to node A and half to node B. While
/// they send, one NATS server is killed (SIGKILL), then node A: its widgets move to node B and
/// send again what was not acknowledged. Read back through node B with `certhub messages
/// tail` (the REST read), every acknowledged message of every widget is there, in the order
/// it was sent (a message sent again may be there twice: QoS 1 is at least once).
#[test]
fn acknowledged_telemetry_survives_a_killed_node_and_nats_server() {
    const WIDGETS: usize = 8;
    const COUNT: usize = 500;
    let db = Database::new();
    let mut nats = Nats::cluster(["127.0.0.71", "127.0.0.72", "127.0.0.73"]);
    let urls = Nats::urls(&nats);
    let t = tmp();
    let d = t.path();
    let (data_a, data_b) = (d.join("node-a"), d.join("node-b"));
    let (host_a, host_b) = ("127.0.0.74", "127.0.0.75");
    let cluster = ["--store", db.url.as_str(), "--nats", urls.as_str()];
    let mut node_a = start_hub_on(&data_a, host_a, &cluster);
    let node_b = start_hub_on(&data_b, host_b, &cluster);
    let ca = data_a.join("tls/server-ca.pem");
    let cs_b = connection_string_at(d, &data_b, &node_b);
    let names = enroll_widgets(d, &data_a, WIDGETS);
    // Node B follows the CA within half a second.
    std::thread::sleep(Duration::from_millis(1200));
    let at_a = format!(
        "{host_a}:{},{host_b}:{}",
        node_a.mqtt_port, node_b.mqtt_port
    );
    let at_b = format!(
        "{host_b}:{},{host_a}:{}",
        node_b.mqtt_port, node_a.mqtt_port
    );
    let senders: Vec<std::process::Child> = names
        .iter()
        .enumerate()
        .map(|(i, w)| {
            telemetry_sender(
                d,
                w,
                if i % 2 == 0 { &at_a } else { &at_b },
                &ca,
                COUNT,
                "0.01",
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    nats[1].stop();
    eprintln!("NATS server {} killed", nats[1].url);
    std::thread::sleep(Duration::from_millis(1500));
    node_a.kill();
    eprintln!("node A killed");
    for (w, sender) in names.iter().zip(senders) {
        let out = sender.wait_with_output().expect("sender ends");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("acked {COUNT}")),
            "{w}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if names
            .iter()
            .position(|n| n == w)
            .is_some_and(|i| i % 2 == 0)
        {
            assert!(
                text.contains(&format!("connected {host_b}")),
                "{w} moved to node B: {text}"
            );
        }
    }
    // Everything, read through node B.
    let tail = cli_at(d, &cs_b, &ca, &["messages", "tail", "--idle-exit", "1"]);
    let mut seen: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    let mut last_seq = 0i64;
    for (seq, w, n) in tail_lines(&tail) {
        assert!(seq > last_seq, "numbers rise: {seq} after {last_seq}");
        last_seq = seq;
        let w = names
            .iter()
            .find(|x| **x == w)
            .unwrap_or_else(|| panic!("a message of an unknown widget: #{seq} {w}"));
        seen.entry(w.as_str()).or_default().push(n);
    }
    let mut again = 0;
    for w in &names {
        let got = seen.get(w.as_str()).cloned().unwrap_or_default();
        // Sent again after a lost ack: only the first of each counts for the order.
        let mut first: Vec<usize> = Vec::new();
        for n in got {
            if first.contains(&n) {
                again += 1;
                continue;
            }
            first.push(n);
        }
        assert_eq!(
            first,
            (0..COUNT).collect::<Vec<_>>(),
            "{w}: every acknowledged message, in the order sent"
        );
    }
    eprintln!(
        "{} messages of {WIDGETS} widgets in the stream, {again} sent twice",
        WIDGETS * COUNT
    );
    drop(node_b);
}

/// The Event Hubs-compatible endpoint of a node reads the cluster's JetStream stream: the same
/// checks as eventhub.rs with the Python Event Hubs SDK (from the start, from a checkpointed
/// offset and sequence number, another consumer group, `@latest`), on a node with --store and
/// --nats.
#[test]
fn the_python_event_hubs_sdk_reads_the_cluster_stream() {
    let one = OneNode::start("127.0.0.76", "127.0.0.77");
    let (d, data, node, cs, host) = (one.dir(), &one.data, &one.node, &one.cs, one.host);
    let eh = certhub_at(d, data, &["hub", "connection-string", "--event-hub"])
        .ok()
        .stdout
        .trim()
        .to_string();
    common::event_hubs_checks(node, d, data, host, cs, &eh);
}

/// The cluster's options refuse bad values at start (exit 64), saying what is wrong and what
/// to do, before touching any database or NATS server.
#[test]
fn cluster_options_refuse_bad_values() {
    let t = tmp();
    let d = t.path();
    let pg = "postgres://nobody@127.0.0.1:1/none";
    let cases: [(&[&str], &str); 6] = [
        (
            &["--nats", "nats://127.0.0.1:4"],
            "give --store postgres://",
        ),
        (
            &["--store", pg, "--nats", "nats://a:1,http://b:2"],
            "\"http://b:2\" is not a nats:// URL",
        ),
        (&["--telemetry-replicas", "3"], "give --nats"),
        (
            &[
                "--store",
                pg,
                "--nats",
                "nats://a:1",
                "--telemetry-replicas",
                "9",
            ],
            "telemetry_replicas",
        ),
        (
            &["--public-endpoint", "lb.example:8443"],
            "add --hostname lb.example",
        ),
        (
            &[
                "--hostname",
                "lb.example",
                "--public-endpoint",
                "lb.example:x",
            ],
            "no port number",
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&d.join(format!("data{i}")))])
            .args(["--hostname", "127.0.0.78"])
            .args([
                "--https-addr",
                "127.0.0.78:0",
                "--mqtt-addr",
                "127.0.0.78:0",
            ])
            .args(["--amqp-addr", "127.0.0.78:0"])
            .args(*args)
            .output()
            .expect("certhub runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?} should say {want:?}: {stderr}"
        );
    }
}

/// A PostgreSQL server that is not there, a database that does not exist and a user the
/// server does not know are each said in one line, at once, with the address and what to do,
/// and never with the password.
#[test]
fn an_unreachable_or_missing_database_is_said_once_with_its_address() {
    let t = tmp();
    let d = t.path();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let admin = admin_url();
    let server = admin
        .rsplit_once('@')
        .map_or("127.0.0.1:5432/test", |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .to_string();
    let cases = [
        (
            format!("postgres://postgres:s3cret-pw@127.0.0.1:{closed}/test"),
            vec![
                format!("cannot reach PostgreSQL at 127.0.0.1:{closed}"),
                "is the server running".into(),
            ],
        ),
        (
            format!("postgres://postgres:s3cret-pw@{server}/certhub_no_such_db"),
            vec![
                "has no database \"certhub_no_such_db\"".into(),
                "createdb".into(),
            ],
        ),
        (
            format!("postgres://certhub_no_such_user:s3cret-pw@{server}/test"),
            vec![
                "refused user \"certhub_no_such_user\"".into(),
                "pg_hba.conf".into(),
            ],
        ),
    ];
    for (i, (url, wants)) in cases.iter().enumerate() {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&d.join(format!("data{i}")))])
            .args([
                "--https-addr",
                "127.0.0.79:0",
                "--mqtt-addr",
                "127.0.0.79:0",
            ])
            .args(["--amqp-addr", "127.0.0.79:0", "--store", url])
            .output()
            .expect("certhub runs");
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        for want in wants {
            assert!(
                stderr.contains(want.as_str()),
                "{url} should say {want:?}: {stderr}"
            );
        }
        assert!(
            !stderr.contains("s3cret-pw"),
            "the password is never printed: {stderr}"
        );
        assert!(took < Duration::from_secs(3), "{url}: said after {took:?}");
    }
}

/// The lines of `messages tail` of messages "WIDGET N": (number, widget, N).
fn tail_lines(tail: &str) -> Vec<(i64, String, usize)> {
    tail.lines()
        .map(|line| {
            let seq = line
                .split_whitespace()
                .next()
                .and_then(|t| t.trim_start_matches('#').parse().ok())
                .unwrap_or_else(|| panic!("a line of messages tail: {line}"));
            let mut words = line.rsplit(' ');
            let (Some(n), Some(w)) = (words.next(), words.next()) else {
                panic!("a line of messages tail: {line}");
            };
            (seq, w.to_string(), n.parse().expect("a number"))
        })
        .collect()
}

/// Company-X's chain with `count` widgets, its root verified on `data`'s hub and the widgets
/// registered (CA-signed): their names.
fn enroll_widgets(d: &Path, data: &Path, count: usize) -> Vec<String> {
    common::enroll_company_x(d, data, count);
    let names: Vec<String> = (1..=count)
        .map(|n| format!("smart-x-widget-{n:04}"))
        .collect();
    for w in &names {
        certhub_at(
            d,
            data,
            &["device", "create", "--id", w, "--auth-method", "x509-ca"],
        )
        .ok();
    }
    names
}

/// tests/interop/cluster_telemetry.py: `device` sends `count` numbered QoS 1 messages, one
/// at a time, `pause` seconds apart, to the first of `hosts` (`host:port,...`) that takes it.
fn telemetry_sender(
    d: &Path,
    device: &str,
    hosts: &str,
    ca: &Path,
    count: usize,
    pause: &str,
) -> std::process::Child {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/cluster_telemetry.py");
    Command::new(common::python())
        .current_dir(d)
        .arg(&script)
        .args([device, hosts, s(ca), &count.to_string(), pause])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs")
}

/// Panics unless the log read through the node of `cs` (`certhub messages tail`) holds
/// `device`'s messages "DEVICE 0" to "DEVICE count-1" sent by [`telemetry_sender`].
fn all_in_the_log(d: &Path, cs: &str, ca: &Path, device: &str, count: usize) {
    let tail = cli_at(
        d,
        cs,
        ca,
        &["messages", "tail", "--device", device, "--idle-exit", "1"],
    );
    for n in 0..count {
        assert!(
            tail.contains(&format!("{device} {n}\n")),
            "message {n} is in the log"
        );
    }
}

/// One node of a cluster (a database and a NATS server of its own) with the widget of
/// Company-X's chain enrolled.
struct OneNode {
    node: common::HubProcess,
    data: std::path::PathBuf,
    cs: String,
    host: &'static str,
    db: Database,
    _nats: Nats,
    t: tempfile::TempDir,
}

impl OneNode {
    /// NATS on `nats_host`, the node on `host`.
    fn start(nats_host: &str, host: &'static str) -> Self {
        let db = Database::new();
        let nats = Nats::start(nats_host);
        let t = tmp();
        let data = t.path().join("node");
        let node = start_hub_on(
            &data,
            host,
            &["--store", db.url.as_str(), "--nats", nats.url.as_str()],
        );
        enroll_widget(t.path(), &data);
        let cs = connection_string_at(t.path(), &data, &node);
        Self {
            node,
            data,
            cs,
            host,
            db,
            _nats: nats,
            t,
        }
    }

    fn dir(&self) -> &Path {
        self.t.path()
    }
}

/// HAProxy (Debian's, TCP mode: mutual TLS passes through untouched) in front of nodes.
struct Haproxy {
    child: std::process::Child,
}

impl Haproxy {
    /// Listens on `host` at each `(port, backends)`, spreading connections round robin.
    fn start(d: &Path, host: &str, routes: &[(u16, Vec<String>)]) -> Self {
        let mut config = String::from(
            "global\n    maxconn 5000\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
             timeout client 10m\n    timeout server 10m\n    option redispatch\n    retries 2\n",
        );
        for (i, (port, backends)) in routes.iter().enumerate() {
            config.push_str(&format!(
                "frontend f{i}\n    bind {host}:{port}\n    default_backend b{i}\nbackend b{i}\n    balance roundrobin\n"
            ));
            for (j, b) in backends.iter().enumerate() {
                config.push_str(&format!("    server s{j} {b}\n"));
            }
        }
        let file = d.join(format!("haproxy-{host}.cfg"));
        std::fs::write(&file, config).expect("haproxy.cfg");
        let program = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("haproxy");
        let child = Command::new(program)
            .args(["-db", "-f", s(&file)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy) is required");
        // Listening once a connection is taken.
        let (first_port, _) = &routes[0];
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((host, *first_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy never listened on {host}:{first_port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live device sessions on one node (its /metrics).
fn sessions_on(node: &common::HubProcess, ca: &Path) -> u64 {
    metric_on(node, ca, "certhub_device_sessions")
        .unwrap_or_else(|| panic!("no session count in {}/metrics", node.host))
}

/// The value of the sample `name` (with its labels, as printed) in one node's /metrics.
fn metric_on(node: &common::HubProcess, ca: &Path, name: &str) -> Option<u64> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            s(ca),
            &format!("https://{}/metrics", node.host),
        ])
        .output()
        .expect("curl (Debian package curl) is required");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
}

/// Three nodes on `hosts` (data directories `node-0`..`node-2` under `d`), one hub on `db`
/// and the NATS servers `nats`, each also named `balancers` (their certificates carry them),
/// with `public` (a balancer's `host:port`) as the hub's endpoint.
fn start_nodes<'a>(
    d: &Path,
    hosts: [&str; 3],
    balancers: &[&'a str],
    public: &'a str,
    db: &'a str,
    nats: &'a str,
    extra: &[&'a str],
) -> (Vec<std::path::PathBuf>, Vec<common::HubProcess>) {
    let data: Vec<std::path::PathBuf> = (0..3).map(|i| d.join(format!("node-{i}"))).collect();
    let mut args: Vec<&str> = extra.to_vec();
    for b in balancers {
        args.extend(["--hostname", b]);
    }
    args.extend(["--public-endpoint", public, "--store", db, "--nats", nats]);
    let nodes = hosts
        .iter()
        .zip(&data)
        .map(|(h, data)| start_hub_on(data, h, &args))
        .collect();
    (data, nodes)
}

/// A balancer's routes to `nodes`: (its port, the nodes' addresses) for MQTT, HTTPS and AMQP.
fn routes_to(
    nodes: &[&common::HubProcess],
    (mqtt, https, amqp): (u16, u16, u16),
) -> Vec<(u16, Vec<String>)> {
    vec![
        (
            mqtt,
            nodes
                .iter()
                .map(|n| format!("{}:{}", hosts_of(n), n.mqtt_port))
                .collect(),
        ),
        (https, nodes.iter().map(|n| n.host.clone()).collect()),
        (
            amqp,
            nodes
                .iter()
                .map(|n| format!("{}:{}", hosts_of(n), n.amqp_port))
                .collect(),
        ),
    ]
}

/// Three nodes behind HAProxy, one hub: three widgets with the Azure IoT Python device SDK
/// (tests/interop/cluster_devices.py) dial the load balancer and land one on each node. A C2D
/// message sent through node B reaches each of them, a direct method invoked through node A is
/// answered by each, a desired patch through node C reaches each; the first widget disabled
/// through node A loses its session within a second wherever it is, and Company-X's CA
/// deleted through node B closes the other two. The nodes name the load balancer as their
/// public endpoint: the connection string names it and the CLI works through it.
#[test]
fn three_nodes_behind_haproxy_act_as_one_hub() {
    let db = Database::new();
    let nats = Nats::cluster(["127.0.0.81", "127.0.0.82", "127.0.0.83"]);
    let urls = Nats::urls(&nats);
    let t = tmp();
    let d = t.path();
    let lb = "127.0.0.80";
    let (lb_mqtt, lb_https, lb_amqp) = (18883u16, 10443u16, 15671u16);
    let public = format!("{lb}:{lb_https}");
    let hosts = ["127.0.0.84", "127.0.0.85", "127.0.0.86"];
    let (data, nodes) = start_nodes(d, hosts, &[lb], &public, &db.url, &urls, &[]);
    let ca = data[0].join("tls/server-ca.pem");
    let routes = routes_to(
        &nodes.iter().collect::<Vec<_>>(),
        (lb_mqtt, lb_https, lb_amqp),
    );
    let _haproxy = Haproxy::start(d, lb, &routes);
    // The hub's connection string names the load balancer, and works through it.
    let cs = certhub_at(d, &data[2], &["hub", "connection-string"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(cs.starts_with(&format!("HostName={public};")), "{cs}");
    let [cs_a, cs_b, cs_c] = [0, 1, 2].map(|i| connection_string_at(d, &data[i], &nodes[i]));
    common::enroll_company_x(d, &data[0], 3);
    let widgets: Vec<String> = (1..=3).map(|n| format!("smart-x-widget-{n:04}")).collect();
    for w in &widgets {
        cli_at(
            d,
            &cs,
            &ca,
            &["device", "create", "--id", w, "--auth-method", "x509-ca"],
        );
    }
    // Every node follows the CA within half a second.
    std::thread::sleep(Duration::from_millis(1200));
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/cluster_devices.py");
    let mut devices = common::python_to_ports(lb_mqtt, lb_https, lb_amqp)
        .arg(&script)
        .args(&widgets)
        .current_dir(d)
        .env("CERTHUB_HOST", lb)
        .env("CERTHUB_CA", &ca)
        .env("CERTHUB_DIR", d.join("pki"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs");
    let lines = {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let out = std::io::BufReader::new(devices.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let mut seen: Vec<String> = Vec::new();
    let mut wait_for = |want: &dyn Fn(&[String]) -> bool, within: Duration, what: &str| {
        let since = Instant::now();
        while !want(&seen) {
            match lines.recv_timeout(within.saturating_sub(since.elapsed())) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("{what}: not within {within:?}; the widgets said {seen:?}"),
            }
        }
        since.elapsed()
    };
    wait_for(
        &|seen| seen.iter().any(|l| l == "ready"),
        Duration::from_secs(60),
        "the widgets connected through the load balancer",
    );
    let spread: Vec<u64> = nodes.iter().map(|n| sessions_on(n, &ca)).collect();
    assert_eq!(
        spread,
        vec![1, 1, 1],
        "one widget on each node (round robin)"
    );
    // Every node knows every node, and where each widget is connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cli_at(d, &cs_a, &ca, &["cluster", "status"]);
        if status.contains("3 nodes, 3 device sessions") {
            for h in hosts {
                assert!(status.contains(h), "{h} in: {status}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "cluster status: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for cs_node in [&cs_a, &cs_b, &cs_c] {
        for w in &widgets {
            let shown = cli_at(d, cs_node, &ca, &["device", "show", "--id", w]);
            assert!(
                shown.contains("\"connectionState\": \"Connected\""),
                "{w} through {cs_node}: {shown}"
            );
        }
    }

    // C2D through node B reaches every widget, two of them on other nodes.
    for w in &widgets {
        c2d_send(d, &cs_b, &ca, w, &format!("for {w} via B"));
    }
    let took = wait_for(
        &|seen| {
            widgets
                .iter()
                .all(|w| seen.contains(&format!("{w} c2d for {w} via B")))
        },
        Duration::from_secs(10),
        "C2D through node B",
    );
    eprintln!("C2D through node B: all three received {took:?} after the last send");

    // A direct method through node A, answered by each widget.
    for w in &widgets {
        let answer = cli_at(
            d,
            &cs_a,
            &ca,
            &[
                "method",
                "invoke",
                "--device",
                w,
                "--name",
                "ping",
                "--timeout",
                "10",
            ],
        );
        assert!(
            answer.contains("200") && answer.contains(&format!("\"device\": \"{w}\"")),
            "{w}: {answer}"
        );
    }

    // A desired patch through node C, to each.
    for w in &widgets {
        cli_at(
            d,
            &cs_c,
            &ca,
            &[
                "twin",
                "update",
                "--device",
                w,
                "--desired",
                r#"{"round": 1}"#,
            ],
        );
    }
    wait_for(
        &|seen| {
            widgets.iter().all(|w| {
                seen.iter()
                    .any(|l| l.starts_with(&format!("{w} desired")) && l.contains("\"round\": 1"))
            })
        },
        Duration::from_secs(10),
        "the desired patch through node C",
    );

    // Disabled through node A: its session closes, wherever it is.
    let first = &widgets[0];
    let asked = Instant::now();
    cli_at(
        d,
        &cs_a,
        &ca,
        &["device", "update", "--id", first, "--status", "disabled"],
    );
    wait_for(
        &|seen| seen.contains(&format!("{first} disconnected")),
        Duration::from_secs(1),
        "the disabled widget's session closed",
    );
    eprintln!(
        "disabled through node A: its session closed {:?} after the CLI was started",
        asked.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    for cs_node in [&cs_a, &cs_b, &cs_c] {
        while !cli_at(d, cs_node, &ca, &["device", "show", "--id", first])
            .contains("\"connectionState\": \"Disconnected\"")
        {
            assert!(
                Instant::now() < deadline,
                "{first} still shown connected through {cs_node}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Company-X's CA deleted through node B: the other two close, on their nodes.
    let asked = Instant::now();
    cli_at(d, &cs_b, &ca, &["ca", "delete", "--name", "company-x"]);
    wait_for(
        &|seen| {
            widgets[1..]
                .iter()
                .all(|w| seen.contains(&format!("{w} disconnected")))
        },
        Duration::from_secs(2),
        "the CA's widgets' sessions closed",
    );
    eprintln!(
        "CA deleted through node B: both sessions closed {:?} after the CLI was started",
        asked.elapsed()
    );
    drop(devices.stdin.take());
    let _ = devices.wait();
    let total: u64 = nodes.iter().map(|n| sessions_on(n, &ca)).sum();
    assert_eq!(total, 0, "no session left on any node");
}

/// A node's address (its service API's host).
fn hosts_of(node: &common::HubProcess) -> String {
    node.host
        .rsplit_once(':')
        .map_or(node.host.clone(), |(h, _)| h.to_string())
}

/// PostgreSQL unreachable under load: a node's database refuses connections and its open ones
/// are cut (`ALLOW_CONNECTIONS false` and `pg_terminate_backend`, as a restart looks from the
/// node) while a widget sends QoS 1 telemetry. The API answers 503 saying the database cannot
/// be reached; the widget's session stays and its telemetry is acknowledged all along (the
/// stream is in JetStream); once the database takes connections again the API answers
/// without a restart, and every message is in the log.
#[test]
fn a_database_outage_answers_503_and_the_node_recovers() {
    const COUNT: usize = 400;
    let one = OneNode::start("127.0.0.87", "127.0.0.88");
    let (d, data, node, cs, host, db) =
        (one.dir(), &one.data, &one.node, &one.cs, one.host, &one.db);
    let ca = data.join("tls/server-ca.pem");
    let w = "smart-x-widget-0001";
    let sender = telemetry_sender(
        d,
        w,
        &format!("{host}:{}", node.mqtt_port),
        &ca,
        COUNT,
        "0.02",
    );
    let show = || {
        common::certhub(
            d,
            &[
                "device",
                "show",
                "--id",
                w,
                "--connection-string",
                cs,
                "--ca-file",
                s(&ca),
            ],
        )
    };
    assert_eq!(show().code, Some(0), "the API answers before the outage");
    std::thread::sleep(Duration::from_millis(1000));
    let admin = admin_url();
    psql(
        &admin,
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name),
    );
    psql(
        &admin,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
            db.name
        ),
    );
    let cut = Instant::now();
    let during = show();
    assert!(
        during.code != Some(0)
            && during.stderr.contains("503")
            && during.stderr.contains("database cannot be reached"),
        "during the outage: {during}"
    );
    eprintln!("the API answered 503 {:?} into the outage", cut.elapsed());
    std::thread::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed()));
    psql(
        &admin,
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name),
    );
    let back = Instant::now();
    while show().code != Some(0) {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the API did not recover within 15 s of the database's return"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the API answered again {:?} after the database took connections",
        back.elapsed()
    );
    let out = sender.wait_with_output().expect("sender ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("acked {COUNT}")),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("connected ").count(),
        1,
        "the widget kept its one session through the outage: {text}"
    );
    all_in_the_log(d, cs, &ca, w, COUNT);
}

/// A node stopped as a service manager stops it (SIGTERM) drains: it takes no new connection,
/// closes its device sessions and exits cleanly, and its widget, sending QoS 1 telemetry, goes
/// on through the other node with nothing acknowledged lost. A third node started meanwhile
/// learns from the others' rosters that the widget is connected.
#[test]
fn a_node_stopped_with_sigterm_hands_its_devices_over() {
    const COUNT: usize = 300;
    let db = Database::new();
    let mut nats = Nats::start("127.0.0.89");
    let url = nats.url.clone();
    let t = tmp();
    let d = t.path();
    let (data_a, data_b) = (d.join("node-a"), d.join("node-b"));
    let (host_a, host_b) = ("127.0.0.90", "127.0.0.91");
    let cluster = ["--store", db.url.as_str(), "--nats", url.as_str()];
    let mut node_a = start_hub_on(&data_a, host_a, &cluster);
    let mut node_b = start_hub_on(&data_b, host_b, &cluster);
    let ca = data_a.join("tls/server-ca.pem");
    enroll_widget(d, &data_a);
    std::thread::sleep(Duration::from_millis(1200));
    let w = "smart-x-widget-0001";
    let hosts = format!(
        "{host_a}:{},{host_b}:{}",
        node_a.mqtt_port, node_b.mqtt_port
    );
    let sender = telemetry_sender(d, w, &hosts, &ca, COUNT, "0.02");
    // A node that joins later learns where the widget is (the others' rosters).
    let data_c = d.join("node-c");
    let node_c = start_hub_on(&data_c, "127.0.0.92", &cluster);
    let cs_c = connection_string_at(d, &data_c, &node_c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli_at(d, &cs_c, &ca, &["device", "show", "--id", w])
        .contains("\"connectionState\": \"Connected\"")
    {
        assert!(
            Instant::now() < deadline,
            "node C never learned the widget's session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = Instant::now();
    let code = node_a.terminate(Duration::from_secs(15));
    eprintln!(
        "node A drained and exited {:?} after SIGTERM",
        asked.elapsed()
    );
    assert_eq!(code, Some(0), "node A exits cleanly on SIGTERM");
    let out = sender.wait_with_output().expect("sender ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(&format!("acked {COUNT}"))
            && text.contains(&format!("connected {host_a}\nconnected {host_b}")),
        "the widget moved from node A to node B: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cs_b = connection_string_at(d, &data_b, &node_b);
    all_in_the_log(d, &cs_b, &ca, w, COUNT);
    // With NATS gone, a node still stops promptly (it cannot say goodbye; the others would
    // notice its silence).
    nats.stop();
    let asked = Instant::now();
    assert_eq!(
        node_b.terminate(Duration::from_secs(10)),
        Some(0),
        "node B exits cleanly on SIGTERM with NATS gone"
    );
    eprintln!(
        "node B, NATS gone, exited {:?} after SIGTERM",
        asked.elapsed()
    );
}

/// The Azure IoT Node.js SDKs' scripts of node_device.rs (tests/interop/node: AMQP and AMQP
/// over WebSockets, HTTPS, MQTT over WebSockets, file upload), unchanged, against three nodes where the
/// devices and the service never meet on one node: the devices dial one balancer, which
/// spreads them over nodes B and C; the service (its AMQP links for C2D, feedback and the
/// Event Hubs-compatible reader, and its REST calls) dials another, which reaches node A only.
/// So every C2D message, feedback record, method call, desired patch, registry change,
/// telemetry read, setting and file-upload notification crosses nodes, and a disable made on
/// node A drops the device within a second on B or C. Uploaded files are in a directory all
/// three share (`file_store = "file:///..."`): a blob's blocks may be put through B and C and
/// read back through A.
#[test]
fn node_sdks_over_every_transport_act_across_nodes() {
    // Each script expects a hub of its own (it counts what it stored, and ends with the
    // widget disabled): a fresh cluster for each, one after the other.
    for script in ["amqp.js", "http.js", "mqttws.js", "upload.js"] {
        node_script_across_nodes(script);
    }
}

/// Runs tests/interop/node/`script` against a fresh cluster set up as
/// [`node_sdks_over_every_transport_act_across_nodes`] says.
fn node_script_across_nodes(script: &str) {
    const PACKAGES: &[&str] = &[
        "azure-iot-device-mqtt",
        "azure-iot-device-http",
        "azure-iot-device-amqp",
        "azure-iothub",
        "@azure/event-hubs",
    ];
    let db = Database::new();
    let nats = Nats::cluster(["127.0.0.97", "127.0.0.98", "127.0.0.99"]);
    let urls = Nats::urls(&nats);
    let t = tmp();
    let d = t.path();
    let (lb_devices, lb_service) = ("127.0.0.93", "127.0.0.100");
    let (lb_mqtt, lb_https, lb_amqp) = (19883u16, 11443u16, 16671u16);
    let public = format!("{lb_devices}:{lb_https}");
    let hosts = ["127.0.0.94", "127.0.0.95", "127.0.0.96"];
    // Uploaded files in a directory every node reaches (as a shared volume would be).
    let config = d.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "file_store = \"file://{}\"\n",
            d.join("shared-files").display()
        ),
    )
    .expect("node.toml");
    let (data, nodes) = start_nodes(
        d,
        hosts,
        &[lb_devices, lb_service],
        &public,
        &db.url,
        &urls,
        &["--config", s(&config)],
    );
    let ports = (lb_mqtt, lb_https, lb_amqp);
    let _devices_lb = Haproxy::start(d, lb_devices, &routes_to(&[&nodes[1], &nodes[2]], ports));
    let _service_lb = Haproxy::start(d, lb_service, &routes_to(&[&nodes[0]], ports));
    let ca = data[0].join("tls/server-ca.pem");
    enroll_widget(d, &data[0]);
    let sas = certhub_at(d, &data[0], &["device", "create", "--id", "widget-sas"])
        .ok()
        .stdout;
    let sas: serde_json::Value = serde_json::from_str(&sas).expect("json");
    let sas_key = sas["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("key")
        .to_string();
    let cs = certhub_at(d, &data[0], &["hub", "connection-string"])
        .ok()
        .stdout
        .trim()
        .replace(&public, &format!("{lb_service}:{lb_https}"));
    assert!(cs.starts_with(&format!("HostName={lb_service}:")), "{cs}");
    // Every node follows the CA within half a second.
    std::thread::sleep(Duration::from_millis(1200));
    let out = common::node_to_ports(lb_mqtt, lb_https, lb_amqp, PACKAGES)
        .arg(common::node_dir().join(script))
        .current_dir(d)
        .env("CERTHUB_HOST", lb_devices)
        .env("CERTHUB_CA", &ca)
        .env("CERTHUB_CONNECTION_STRING", &cs)
        .env("CERTHUB_DIR", d.join("pki"))
        .env("CERTHUB_SAS_KEY", &sas_key)
        // upload.js: @azure/storage-blob trusts only Node's store, which this extends.
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().last() == Some("all node checks passed"),
        "{script} across nodes failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    println!("{script} across nodes:\n{stdout}");
    // The devices' sessions were on nodes B and C only: node A admitted none, so every
    // device-side act the script checked happened on another node than the service's. (HTTPS
    // devices hold no sessions: for http.js and upload.js the balancers' routes alone say so.)
    let admitted: Vec<u64> = nodes
        .iter()
        .map(|n| metric_on(n, &ca, "certhub_device_connects_total{outcome=\"ok\"}").unwrap_or(0))
        .collect();
    assert_eq!(
        admitted[0], 0,
        "{script}: node A admitted no device: {admitted:?}"
    );
    if !matches!(script, "http.js" | "upload.js") {
        assert!(
            admitted[1] + admitted[2] > 0,
            "{script}: nodes B and C admitted the devices: {admitted:?}"
        );
    }
}

/// Device provisioning across nodes: the Azure IoT Node.js provisioning SDKs' script of
/// node_provisioning.rs (tests/interop/node/provisioning.js: enrollments and groups through
/// the provisioning service SDK, registrations over MQTT, MQTT over WebSockets, HTTPS, AMQP
/// and AMQP over WebSockets, X.509 through a group and symmetric keys, each device then
/// sending telemetry to its assigned hub), unchanged, through a balancer over three nodes: the
/// enrollments are written through whichever node the balancer picks and the registrations
/// and device connections land on the others in turn (round robin), so the provisioning
/// configuration must reach every node, and the assigned hub is the balancer.
#[test]
fn node_provisioning_across_nodes() {
    let db = Database::new();
    let nats = Nats::cluster(["127.0.0.105", "127.0.0.106", "127.0.0.107"]);
    let urls = Nats::urls(&nats);
    let t = tmp();
    let d = t.path();
    let lb = "127.0.0.101";
    let ports = (20883u16, 12443u16, 17671u16);
    let public = format!("{lb}:{}", ports.1);
    let hosts = ["127.0.0.102", "127.0.0.103", "127.0.0.104"];
    let (data, nodes) = start_nodes(d, hosts, &[lb], &public, &db.url, &urls, &[]);
    let _lb = Haproxy::start(d, lb, &routes_to(&nodes.iter().collect::<Vec<_>>(), ports));
    common::run_provisioning_script(
        d,
        &data[0],
        lb,
        common::node_to_ports(
            ports.0,
            ports.1,
            ports.2,
            common::NODE_PROVISIONING_PACKAGES,
        ),
    );
    let ca = data[0].join("tls/server-ca.pem");
    // The provisioned devices' sessions were spread over the nodes.
    let admitted: Vec<u64> = nodes
        .iter()
        .map(|n| metric_on(n, &ca, "certhub_device_connects_total{outcome=\"ok\"}").unwrap_or(0))
        .collect();
    assert!(
        admitted.iter().filter(|n| **n > 0).count() >= 2,
        "devices admitted on at least two nodes: {admitted:?}"
    );
}

/// Under load the writer puts many device messages in one JetStream message (a batch): four
/// widgets each publish 2 000 numbered QoS 1 messages of 1 KiB as fast as mosquitto_pub sends
/// them (100 in flight each), to a NATS server whose largest message is 64 KiB (batches stop
/// short of it; checked: without that limit this test loses a widget's messages). The whole
/// log read back (`messages tail`) holds every message of every widget in the order sent,
/// under rising numbers, and some numbers are consecutive (two messages of one batch: batches
/// formed); a read of one device (`--device`, which scans the batches for it) holds exactly
/// that widget's messages.
#[test]
fn telemetry_batches_under_load_and_reads_back_whole_and_by_device() {
    const WIDGETS: usize = 4;
    const COUNT: usize = 2000;
    let db = Database::new();
    let t = tmp();
    let d = t.path();
    // NATS's largest message at 64 KiB (default 1 MiB): batches of these 1 KiB messages stop
    // short of it (a batch over it would be refused, and its devices' sessions closed).
    let conf = d.join("nats.conf");
    std::fs::write(&conf, "max_payload: 65536\n").expect("nats.conf written");
    let nats = Nats::start_on(
        "127.0.0.108",
        "-1",
        tmp(),
        vec!["-c".into(), s(&conf).into()],
    );
    let data = d.join("node");
    let host = "127.0.0.109";
    let node = start_hub_on(
        &data,
        host,
        &["--store", db.url.as_str(), "--nats", nats.url.as_str()],
    );
    let ca = data.join("tls/server-ca.pem");
    let cs = connection_string_at(d, &data, &node);
    let names = enroll_widgets(d, &data, WIDGETS);
    let senders: Vec<std::process::Child> = names
        .iter()
        .map(|w| {
            let mut child = Command::new("mosquitto_pub")
                .current_dir(d)
                .args(["-h", host, "-p", &node.mqtt_port.to_string()])
                .args(["-V", "mqttv311", "--cafile", s(&ca)])
                .args(["--cert", &format!("pki/devices/{w}/chain.pem")])
                .args(["--key", &format!("pki/devices/{w}/key.pem")])
                .args([
                    "-i",
                    w,
                    "-u",
                    &format!("{host}/{w}/?api-version=2021-04-12"),
                ])
                .args(["-t", &format!("devices/{w}/messages/events/")])
                .args(["-q", "1", "-M", "100", "-l"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto_pub runs");
            let pad = "x".repeat(1000);
            let lines: String = (0..COUNT).map(|n| format!("{pad} {w} {n}\n")).collect();
            let mut stdin = child.stdin.take().expect("stdin");
            std::thread::spawn(move || {
                use std::io::Write;
                stdin.write_all(lines.as_bytes()).expect("lines written");
            });
            child
        })
        .collect();
    for (w, sender) in names.iter().zip(senders) {
        let out = sender.wait_with_output().expect("mosquitto_pub ends");
        assert!(
            out.status.success(),
            "{w}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tail = cli_at(d, &cs, &ca, &["messages", "tail", "--idle-exit", "1"]);
    let mut seen: std::collections::HashMap<String, Vec<usize>> = Default::default();
    let (mut last_seq, mut consecutive) = (0i64, 0usize);
    for (seq, w, n) in tail_lines(&tail) {
        assert!(seq > last_seq, "numbers rise: {seq} after {last_seq}");
        if seq == last_seq + 1 {
            consecutive += 1;
        }
        last_seq = seq;
        seen.entry(w).or_default().push(n);
    }
    for w in &names {
        let got = seen.get(w.as_str()).cloned().unwrap_or_default();
        let wrong = (0..COUNT).find(|n| got.get(*n) != Some(n));
        assert!(
            wrong.is_none() && got.len() == COUNT,
            "{w}: every message once, in the order sent: {} read, the first out of place at {wrong:?}",
            got.len()
        );
    }
    assert!(
        consecutive > 0,
        "some messages shared a batch ({} lines read)",
        tail.lines().count()
    );
    eprintln!(
        "{} messages, {consecutive} of them numbered right after the one before (same batch)",
        WIDGETS * COUNT
    );
    let one = &names[2];
    let tail = cli_at(
        d,
        &cs,
        &ca,
        &["messages", "tail", "--device", one, "--idle-exit", "1"],
    );
    let mine: Vec<usize> = tail_lines(&tail)
        .into_iter()
        .map(|(_, w, n)| {
            assert_eq!(&w, one, "only {one}'s messages");
            n
        })
        .collect();
    assert_eq!(
        mine,
        (0..COUNT).collect::<Vec<_>>(),
        "{one}'s messages, in order"
    );
    drop(node);
}

/// A NATS server that asks for a user and password: the node takes them from its --nats URL
/// (`nats://user:password@host:port`; async-nats itself ignores credentials in a URL) and
/// joins, telemetry stream and all. With a wrong password it stops at start, saying NATS
/// refused it, and never shows the password.
#[test]
fn nats_credentials_in_the_url_are_used_and_never_shown() {
    let db = Database::new();
    let nats = Nats::start_on(
        "127.0.0.110",
        "-1",
        tmp(),
        ["--user", "certhub", "--pass", "s3cret-w0rd"]
            .map(String::from)
            .to_vec(),
    );
    let t = tmp();
    let d = t.path();
    let with = |secret: &str| {
        nats.url
            .replacen("nats://", &format!("nats://certhub:{secret}@"), 1)
    };
    let good = with("s3cret-w0rd");
    let node = start_hub_on(
        &d.join("node"),
        "127.0.0.111",
        &["--store", db.url.as_str(), "--nats", good.as_str()],
    );
    let widgets = enroll_widgets(d, &d.join("node"), 1);
    let ca = d.join("node/tls/server-ca.pem");
    let sent = widget(
        d,
        "mosquitto_pub",
        "127.0.0.111",
        node.mqtt_port,
        &ca,
        "devices/smart-x-widget-0001/messages/events/",
    )
    .args(["-m", "through an authenticated NATS"])
    .output()
    .expect("mosquitto_pub runs");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let cs = connection_string_at(d, &d.join("node"), &node);
    let tail = cli_at(d, &cs, &ca, &["messages", "tail", "--idle-exit", "1"]);
    assert!(
        tail.lines()
            .any(|l| l.contains(&widgets[0]) && l.ends_with(" through an authenticated NATS")),
        "the message is in the stream: {tail}"
    );
    drop(node);
    let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
        .args(["serve", "--data-dir", s(&d.join("other"))])
        .args(["--hostname", "127.0.0.111"])
        .args([
            "--https-addr",
            "127.0.0.111:0",
            "--mqtt-addr",
            "127.0.0.111:0",
        ])
        .args(["--amqp-addr", "127.0.0.111:0"])
        .args([
            "--store",
            db.url.as_str(),
            "--nats",
            &with("not-the-password"),
        ])
        .output()
        .expect("certhub runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a wrong password stops the node: {stderr}"
    );
    assert!(
        stderr.contains("authorization violation") && stderr.contains(&nats.url),
        "says NATS at its URL refused the node: {stderr}"
    );
    assert!(
        !stderr.contains("not-the-password") && !stderr.contains("s3cret"),
        "never shows a password: {stderr}"
    );
}
