//! mosquitto_pub (Eclipse Mosquitto's client, from Debian) publishes telemetry to the hub over
//! MQTT/TLS with a widget's certificate chain; with a wrong identity it is refused.

mod common;

use std::process::Command;

use common::{Pub, certhub_at, enroll_widget, mosquitto_pub, s, start_hub, tmp};

#[test]
fn mosquitto_pub_sends_telemetry_with_a_widget_certificate() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    let ca = data.join("tls/server-ca.pem");
    let widget = "pki/devices/smart-x-widget-0001";

    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&ca),
            widget,
            client_id: "smart-x-widget-0001",
            topic: "devices/smart-x-widget-0001/messages/events/source=mosquitto",
            message: "hello from mosquitto",
            extra: &[],
        },
    );
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = hub(&[
        "audit",
        "connections",
        "--device",
        "smart-x-widget-0001",
        "--json",
    ]);
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    assert_eq!(log[0]["outcome"], "ok", "{log}");

    let shown = hub(&["device", "show", "--id", "smart-x-widget-0001"]);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
    assert_ne!(
        shown["lastActivityTime"], "0001-01-01T00:00:00Z",
        "lastActivityTime is kept"
    );

    // The same certificate under another client id is refused: mosquitto reports it.
    hub(&[
        "device",
        "create",
        "--id",
        "someone-else",
        "--auth-method",
        "x509-ca",
    ]);
    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&ca),
            widget,
            client_id: "someone-else",
            topic: "devices/someone-else/messages/events/",
            message: "hello from mosquitto",
            extra: &[],
        },
    );
    assert!(
        !out.status.success(),
        "a borrowed certificate must be refused"
    );
    let run = hub(&[
        "audit",
        "connections",
        "--device",
        "someone-else",
        "--reason",
        "cn-mismatch",
    ]);
    assert!(run.stdout.contains("cn-mismatch"), "{run}");
    assert!(
        run.stdout.contains("CN=smart-x-widget-0001"),
        "the presented subject is shown: {run}"
    );

    // And the counters say the same.
    let metrics = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            s(&ca),
            &format!("https://{}/metrics", hub_process.host),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("certhub_device_connects_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("certhub_device_connects_total{outcome=\"cn-mismatch\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("certhub_telemetry_messages_total 1"),
        "{text}"
    );
}

/// A device whose link drops without DISCONNECT has its will forwarded as telemetry, marked
/// `iothub-MessageType=Will` (paho, the MQTT client inside the Azure Python SDK, sets the will
/// and then drops its socket).
#[test]
fn a_will_message_is_forwarded_as_telemetry() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    let script = format!(
        r#"
import socket, ssl, time
import paho.mqtt.client as mqtt
c = mqtt.Client(client_id="smart-x-widget-0001", clean_session=False, protocol=mqtt.MQTTv311)
c.username_pw_set("localhost/smart-x-widget-0001/?api-version=2021-04-12")
c.tls_set(ca_certs="{ca}", certfile="pki/devices/smart-x-widget-0001/chain.pem",
          keyfile="pki/devices/smart-x-widget-0001/key.pem", tls_version=ssl.PROTOCOL_TLSv1_2)
c.will_set("devices/smart-x-widget-0001/messages/events/state=gone", "lost power", qos=1)
c.connect("localhost", {port}, keepalive=60)
c.loop_start()
time.sleep(1.0)
c.loop_stop()
c.socket().shutdown(socket.SHUT_RDWR)  # no DISCONNECT
c.socket().close()
"#,
        ca = s(&data.join("tls/server-ca.pem")),
        port = hub_process.mqtt_port
    );
    let out = Command::new(common::python())
        .args(["-c", &script])
        .current_dir(d)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = hub(&[
        "messages",
        "tail",
        "--device",
        "smart-x-widget-0001",
        "--count",
        "1",
        "--idle-exit",
        "5",
    ]);
    assert!(run.stdout.contains("lost power"), "{run}");
    assert!(
        run.stdout.contains(r#""iothub-MessageType":"Will""#),
        "{run}"
    );
    assert!(run.stdout.contains(r#""state":"gone""#), "{run}");
}

/// The telemetry stream (Server-Sent Events) delivers messages as they are committed and
/// resumes after the Last-Event-ID a client sends.
#[test]
fn the_event_stream_is_live_and_resumes() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    enroll_widget(d, &data);
    let cs = hub(&["hub", "connection-string", "--policy", "service"]).stdout;
    let key = cs
        .trim()
        .rsplit("SharedAccessKey=")
        .next()
        .expect("key")
        .to_string();
    let token = certhub_core::sign_token(
        &hub_process.host,
        &key,
        Some("service"),
        time::OffsetDateTime::now_utc().unix_timestamp() + 600,
    );
    let ca = data.join("tls/server-ca.pem");
    let url = format!("https://{}/messages/events/stream", hub_process.host);
    // Start listening before anything is sent: the stream must deliver live.
    let listener = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "4",
            "--cacert",
            s(&ca),
            "-H",
            &format!("Authorization: {token}"),
            &url,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let send = |message: &str| {
        let out = mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&ca),
                widget: "pki/devices/smart-x-widget-0001",
                client_id: "smart-x-widget-0001",
                topic: "devices/smart-x-widget-0001/messages/events/",
                message,
                extra: &[],
            },
        );
        assert!(out.status.success());
    };
    for m in ["first", "second"] {
        send(m);
    }
    let live =
        String::from_utf8_lossy(&listener.wait_with_output().expect("curl").stdout).into_owned();
    assert!(live.contains("id: 1") && live.contains("id: 2"), "{live}");
    assert!(live.contains("first") && live.contains("second"), "{live}");
    // A reconnect with Last-Event-ID: 1 gets only what came after.
    let resumed = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "2",
            "--cacert",
            s(&ca),
            "-H",
            &format!("Authorization: {token}"),
            "-H",
            "Last-Event-ID: 1",
            &url,
        ])
        .output()
        .expect("curl");
    let resumed = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.contains("id: 2") && !resumed.contains("id: 1\n"),
        "{resumed}"
    );
    // Pages: x-ms-continuation is the next page's `from`. A full page continues after its last
    // message; a read for a device with no messages moves past the ones it scanned.
    let page = |query: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-i",
                "--cacert",
                s(&ca),
                "-H",
                &format!("Authorization: {token}"),
                &format!("https://{}/messages/events?{query}", hub_process.host),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let full = page("from=0&top=1&device=smart-x-widget-0001");
    assert!(full.contains("x-ms-continuation: 1\r\n"), "{full}");
    assert!(full.contains("\"sequencenumber\":1"), "{full}");
    let other = page("from=0&device=someone-else");
    assert!(other.contains("x-ms-continuation: 2\r\n"), "{other}");
    assert!(other.trim_end().ends_with("[]"), "{other}");
    // A page also stops at 4 MiB of bodies: then it continues after its last message, not
    // after the end of the log (36 messages of 120 000 bytes: 35 fit).
    let big = "b".repeat(120_000);
    for _ in 0..36 {
        send(&big);
    }
    let head = |page: &str| {
        page.split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let cut = page("from=2&top=1000");
    assert!(
        cut.contains("x-ms-continuation: 37\r\n")
            && cut.matches("\"sequencenumber\"").count() == 35,
        "{}",
        head(&cut)
    );
    let rest = page("from=37&top=1000");
    assert!(rest.contains("\"sequencenumber\":38"), "{}", head(&rest));
}

/// CleanSession=0 keeps the session (the Azure SDKs never subscribe again after a reconnect):
/// the next persistent CONNECT is answered with session present; a clean one starts afresh.
/// Persistent sessions outlive the hub: subscriptions made before a SIGKILL are resumed after
/// the restart (session present, and a C2D message arrives without a new SUBSCRIBE); a clean
/// session discards the saved one for good.
#[test]
fn persistent_sessions_are_resumed_across_restarts() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    enroll_widget(d, &data);
    let script = format!(
        r#"
import ssl, sys, time
import paho.mqtt.client as mqtt
port, clean, subscribe, wait_message = int(sys.argv[1]), sys.argv[2] == "clean", sys.argv[3] == "subscribe", sys.argv[4] == "message"
seen, messages = [], []
{client}
c.on_connect = lambda client, userdata, flags, rc: seen.append((rc, flags["session present"]))
c.on_subscribe = lambda client, userdata, mid, granted: seen.append("subscribed")
c.on_message = lambda client, userdata, m: messages.append(m.payload.decode())
c.connect("localhost", port)
c.loop_start()
deadline = time.time() + 10
while not seen and time.time() < deadline:
    time.sleep(0.02)
if subscribe:
    c.subscribe("devices/smart-x-widget-0001/messages/devicebound/#", qos=1)
    while "subscribed" not in seen and time.time() < deadline:
        time.sleep(0.02)
while wait_message and not messages and time.time() < deadline:
    time.sleep(0.02)
c.disconnect()
c.loop_stop()
print(seen[0][1], messages)
"#,
        client = paho_widget(&data, "clean"),
    );
    let run = |port: u16, args: [&str; 3]| {
        let out = Command::new(common::python())
            .args(["-c", &script, &port.to_string()])
            .args(args)
            .current_dir(d)
            .output()
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let port = hub_process.mqtt_port;
    assert_eq!(run(port, ["persistent", "subscribe", "-"]), "0 []");
    assert_eq!(run(port, ["persistent", "-", "-"]), "1 []");
    assert_eq!(run(port, ["clean", "-", "-"]), "0 []");
    assert_eq!(run(port, ["persistent", "subscribe", "-"]), "0 []");
    drop(hub_process); // SIGKILL

    let hub_process = start_hub(&data);
    certhub_at(
        d,
        &data,
        &[
            "c2d",
            "send",
            "--device",
            "smart-x-widget-0001",
            "--body",
            "after the restart",
        ],
    )
    .ok();
    assert_eq!(
        run(hub_process.mqtt_port, ["persistent", "-", "message"]),
        "1 ['after the restart']"
    );
    // A clean session ends the saved one, in the store too.
    assert_eq!(run(hub_process.mqtt_port, ["clean", "-", "-"]), "0 []");
    drop(hub_process);
    let hub_process = start_hub(&data);
    assert_eq!(run(hub_process.mqtt_port, ["persistent", "-", "-"]), "0 []");
}

/// A switch turned on behind the hub's back (`certhub hub set --local`, which writes the data
/// directory, not the API) still closes the live sessions it shuts out: a SAS device held by
/// mosquitto_sub is disconnected, refused on its reconnect, and the audit trail says why.
/// mosquitto_sub as the SAS identity `cn` (`device` or `device/module`) with `token`,
/// subscribed to direct method calls (devices and modules both may), until the hub closes its
/// session.
fn sas_subscriber(port: u16, ca: &std::path::Path, cn: &str, token: &str) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-V",
            "mqttv311",
            "--cafile",
            s(ca),
            "-i",
            cn,
            "-u",
            &format!("localhost/{cn}/?api-version=2021-04-12"),
            "-P",
            token,
            "-t",
            "$iothub/methods/POST/#",
            "-q",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs")
}

/// Waits until `show` (a `device show` run) says Connected.
fn until_connected(show: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !show().contains("\"Connected\"") {
        assert!(std::time::Instant::now() < deadline, "never connected");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits for mosquitto_sub to give up (it does when its session is closed); its stderr.
fn until_closed(mut sub: std::process::Child, what: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = sub.try_wait().expect("state") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = sub.kill();
            panic!("the session was not closed after {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut sub.stderr.take().expect("stderr"), &mut stderr)
        .expect("read");
    assert!(!status.success(), "{what}: {stderr}");
    stderr
}

#[test]
fn a_local_settings_change_closes_the_sessions_it_shuts_out() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    hub(&["device", "create", "--id", "widget-sas"]);
    let token = hub(&["device", "token", "--id", "widget-sas"]);
    let ca = data.join("tls/server-ca.pem");
    let sub = sas_subscriber(
        hub_process.mqtt_port,
        &ca,
        "widget-sas",
        token.stdout.trim(),
    );
    until_connected(|| hub(&["device", "show", "--id", "widget-sas"]).stdout);
    hub(&["hub", "set", "--local", "--disable-device-sas", "true"]);
    let stderr = until_closed(sub, "disableDeviceSAS was set locally");
    let log = hub(&["audit", "list", "--top", "20"]);
    assert!(
        log.stdout.contains("disableDeviceSAS was turned on"),
        "{log}\n{stderr}"
    );
}

/// Deleting a module shuts it out at once, as deleting a device does: its live session is
/// closed.
#[test]
fn deleting_a_module_closes_its_session() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    hub(&["device", "create", "--id", "gateway"]);
    hub(&["device", "create", "--id", "gateway", "--module", "sensor"]);
    let token = hub(&["device", "token", "--id", "gateway", "--module", "sensor"]);
    let ca = data.join("tls/server-ca.pem");
    let sub = sas_subscriber(
        hub_process.mqtt_port,
        &ca,
        "gateway/sensor",
        token.stdout.trim(),
    );
    until_connected(|| hub(&["device", "show", "--id", "gateway", "--module", "sensor"]).stdout);
    hub(&["device", "delete", "--id", "gateway", "--module", "sensor"]);
    until_closed(sub, "the module was deleted");
}

/// The keep-alive counts from the device's last packet (1.5 times what it asked for): a device
/// that falls silent is closed even while the hub keeps sending it C2D messages.
#[test]
fn a_silent_device_is_closed_at_its_keep_alive() {
    use std::io::{BufRead, BufReader};
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    enroll_widget(d, &data);
    let script = format!(
        r#"
import sys, time
import paho.mqtt.client as mqtt
state = []
{client}
c.on_connect = lambda client, userdata, flags, rc: state.append("connected")
c.on_subscribe = lambda client, userdata, mid, granted: state.append("subscribed")
c.connect("localhost", {port}, keepalive=1)
deadline = time.time() + 10
c.subscribe("devices/smart-x-widget-0001/messages/devicebound/#", qos=1)
while "subscribed" not in state and time.time() < deadline:
    c.loop(0.05)
print("silent", flush=True)
time.sleep(4)  # no loop: no PINGREQ, no PUBACK, nothing read
"#,
        client = paho_widget(&data, "True"),
        port = hub_process.mqtt_port
    );
    let mut child = Command::new(common::python())
        .args(["-c", &script])
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("silent"));
    // Traffic to the device for longer than its keep-alive.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        certhub_at(
            d,
            &data,
            &[
                "c2d",
                "send",
                "--device",
                "smart-x-widget-0001",
                "--body",
                "ping",
            ],
        )
        .ok();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.wait();
    let log = certhub_at(d, &data, &["audit", "list", "--top", "50"]).ok();
    assert!(log.stdout.contains("keep-alive expired"), "{log}");
}

/// Python lines making `c`, a paho client for the enrolled widget of `data`'s hub (Azure's
/// user name, the widget's chain and key, the hub's server CA); `clean` is a Python expression.
fn paho_widget(data: &std::path::Path, clean: &str) -> String {
    format!(
        r#"c = mqtt.Client(client_id="smart-x-widget-0001", clean_session={clean}, protocol=mqtt.MQTTv311)
c.username_pw_set("localhost/smart-x-widget-0001/?api-version=2021-04-12")
c.tls_set(ca_certs="{ca}", certfile="pki/devices/smart-x-widget-0001/chain.pem",
          keyfile="pki/devices/smart-x-widget-0001/key.pem")"#,
        ca = s(&data.join("tls/server-ca.pem")),
    )
}
