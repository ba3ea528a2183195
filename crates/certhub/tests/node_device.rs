//! The Node.js `azure-iot-device` SDK against a real `certhub serve`, on the 443 listener.
//!
//! With its MqttWs transport (`azure-iot-device-mqtt`): MQTT over WebSockets. A widget of the
//! four-level supply chain sends telemetry (sendEvent; sendEventBatch, which the MQTT
//! transports refuse), receives cloud-to-device messages (complete; reject and abandon, which
//! the SDK refuses over MQTT), reads and reports its twin and answers a direct method; a SAS
//! device sends too, and one with a wrong key is refused. The script is
//! tests/interop/node/mqttws.js.
//!
//! With its Http transport (`azure-iot-device-http`): the HTTPS device API. The widget (its
//! chain in each connection's TLS handshake) and a SAS device (a token in each request's
//! Authorization header) send telemetry (sendEvent and sendEventBatch), receive three
//! cloud-to-device messages by polling and settle them with complete, reject and abandon (the
//! abandoned one comes again and is completed), checked through the service API's queue and
//! feedback; a wrong key is refused as unauthorized. The script is tests/interop/node/http.js.
//!
//! File upload (`client.uploadToBlob`): the widget uploads a small file and one of about 9 MiB,
//! a SAS device a small one; the SDK's @azure/storage-blob writes them to the hub's blob
//! endpoint (Put Block, Put Block List), and the service reads each back, finds it succeeded
//! with its size and receives and completes its notification; one past the hub's size limit
//! is refused, reported failed and notifies nobody. The script is
//! tests/interop/node/upload.js.
//!
//! With its Amqp transport (`azure-iot-device-amqp`): AMQP 1.0 over TLS on the AMQP listener.
//! The widget (its chain in the connection's TLS handshake) sends two telemetry messages, one
//! with an application property, a message id, a content type and encoding, one plain; a SAS
//! device (its token put on `$cbs` by the SDK) sends one; the service API reads each back as
//! soon as sendEvent has succeeded (the hub stores a message before it settles the delivery).
//! The SAS device receives three C2D messages on its receiver link, one at a time, and settles
//! them with complete, reject and abandon (delivered again, then completed): the service's
//! feedback says Success, Rejected, Success. It reads its twin, reports properties and gets a
//! desired patch of the service pushed, over the twin links, and answers a direct method the
//! service invokes, over the method links. A wrong key is refused. With `AmqpWs` the SAS
//! device sends over AMQP over WebSockets on the 443 listener. A module of it (`ModuleClient`,
//! its own token) sends telemetry and reports on its module twin. The hub audits both
//! sessions as `over amqp`. Then the widget
//! connects and sends again and the service disables it: the hub ends its AMQP session with
//! `amqp:unauthorized-access`, the SDK reports the disconnect within a second, and what it
//! sends after is neither taken nor stored. The script is tests/interop/node/amqp.js.
//!
//! The service SDK (`azure-iothub`, its default Amqp transport) with only its connection
//! string changed: it sends C2D messages to a device connected over AMQP, reads their
//! feedback (Success, Rejected) and a file upload's notification on its receivers, is told
//! DeviceNotFoundError for an unknown device, and cannot send with a wrong key. The script is
//! tests/interop/node/service.js.
//!
//! The Event Hubs SDK (`@azure/event-hubs`) with the connection string `certhub hub
//! connection-string --event-hub` prints reads what a SAS device sent over AMQP and over
//! HTTPS, with properties and the device-id annotation, and resumes after a checkpointed
//! sequence number; a reader with owner level 2 takes the partition from those with level 1
//! (tests/interop/node/eventhub.js).
//!
//! Revocation over AMQP and HTTPS: two widgets connected with the Amqp transport, Technician-Z's
//! CRL (`certhub pki crl`) uploaded through the service API revokes one; its session ends
//! within a second, it is refused over Amqp and Http from then on (`certificate-revoked`,
//! audited with the transport), the other goes on (tests/interop/node/revocation.js).
//!
//! The pinned packages are in tests/interop/node (scripts/test installs them). The SDK always
//! dials port 443 of the host name (8883 for MQTT, 5671 for AMQP); the Node port map
//! (tests/interop/node/portmap.js) sends it to the free port this hub listens on.

mod common;

use std::path::{Path, PathBuf};

use common::{
    HubProcess, certhub, certhub_at, enroll_company_x, node_dir, node_to_hub, start_hub_on, tmp,
};

const HOST: &str = "127.0.0.5";

/// The packages this test's scripts need.
const NODE_PACKAGES: &[&str] = &[
    "azure-iot-device-mqtt",
    "azure-iot-device-http",
    "azure-iot-device-amqp",
    "azure-iothub",
    "@azure/event-hubs",
];

fn audit(d: &Path, data: &Path) -> Vec<serde_json::Value> {
    let log = certhub_at(d, data, &["audit", "list", "--json", "--top", "200"]).ok();
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    log.as_array().expect("array").clone()
}

/// A hub on [`HOST`] for a Node script: the widget of the four-level chain enrolled, a SAS
/// device `widget-sas`. The temporary folder lives as long as this.
struct NodeHub {
    t: tempfile::TempDir,
    data: PathBuf,
    hub: HubProcess,
    /// The SAS device's primary key.
    sas_key: String,
    /// iothubowner's connection string, for the script's service calls.
    cs: String,
}

impl NodeHub {
    fn start() -> Self {
        Self::start_with_widgets(1)
    }

    /// [`NodeHub::start`] with `widgets` widgets (smart-x-widget-0001...) registered.
    fn start_with_widgets(widgets: usize) -> Self {
        let t = tmp();
        let d = t.path();
        let data = d.join("data");
        let hub = start_hub_on(&data, HOST, &[]);
        let cli = |args: &[&str]| certhub_at(d, &data, args).ok();
        enroll_company_x(d, &data, widgets);
        for n in 1..=widgets {
            let id = format!("smart-x-widget-{n:04}");
            cli(&["device", "create", "--id", &id, "--auth-method", "x509-ca"]);
        }
        let sas = cli(&["device", "create", "--id", "widget-sas"]);
        let sas: serde_json::Value = serde_json::from_str(&sas.stdout).expect("json");
        let sas_key = sas["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .expect("key")
            .to_string();
        let cs = cli(&["hub", "connection-string"]).stdout.trim().to_string();
        Self {
            t,
            data,
            hub,
            sas_key,
            cs,
        }
    }

    fn dir(&self) -> &Path {
        self.t.path()
    }

    /// Runs tests/interop/node/`script` against this hub; asserts that it succeeded and ended
    /// with its last line, `all node checks passed`. Returns what it printed.
    fn run(&self, script: &str) -> String {
        self.run_with(script, &[])
    }

    /// [`NodeHub::run`] with more environment variables.
    fn run_with(&self, script: &str, env: &[(&str, &Path)]) -> String {
        let d = self.dir();
        let out = node_to_hub(&self.hub, NODE_PACKAGES)
            .envs(env.iter().copied())
            .arg(node_dir().join(script))
            .current_dir(d)
            .env("CERTHUB_HOST", HOST)
            .env("CERTHUB_CA", self.data.join("tls/server-ca.pem"))
            .env("CERTHUB_CONNECTION_STRING", &self.cs)
            .env("CERTHUB_DIR", d.join("pki"))
            .env("CERTHUB_SAS_KEY", &self.sas_key)
            .output()
            .expect("node runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{script} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        assert_eq!(
            stdout.lines().last(),
            Some("all node checks passed"),
            "{stdout}\n--- stderr\n{stderr}"
        );
        // Shown with --nocapture.
        println!("{stdout}");
        stdout.into_owned()
    }

    /// The `device.connect` audit records: (target, outcome, detail).
    fn connects(&self) -> Vec<(String, String, String)> {
        audit(self.dir(), &self.data)
            .iter()
            .filter(|r| r["operation"] == "device.connect")
            .map(|r| {
                (
                    r["target"].as_str().unwrap_or("").to_string(),
                    r["outcome"].as_str().unwrap_or("").to_string(),
                    r["detail"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

#[test]
fn node_sdk_over_mqtt_ws() {
    let hub = NodeHub::start();
    hub.run("mqttws.js");

    // The sessions came over MQTT over WebSockets: the widget (its chain from the 443
    // listener's TLS connection) and the SAS device; the wrong key was refused.
    let connects = hub.connects();
    // The widget by the chain it presented on the 443 listener's TLS connection, the SAS
    // device by its CONNECT password.
    for (device, how) in [
        (
            "devices/smart-x-widget-0001",
            "smart-x-widget-0001 via x509-ca (CA company-x) over mqtt-ws;",
        ),
        (
            "devices/widget-sas",
            "widget-sas via device-sas over mqtt-ws;",
        ),
    ] {
        let accepted: Vec<&String> = connects
            .iter()
            .filter(|(target, outcome, _)| target == device && outcome == "ok")
            .map(|(_, _, detail)| detail)
            .collect();
        assert!(!accepted.is_empty(), "{device} connected: {connects:#?}");
        for detail in accepted {
            assert!(
                detail.starts_with(how),
                "{device}: `{how}` expected: {detail}"
            );
        }
    }
    assert!(
        connects
            .iter()
            .any(|(target, outcome, _)| target == "devices/widget-sas" && outcome == "sas-invalid"),
        "the wrong key is audited as sas-invalid: {connects:#?}"
    );
    // No session used the MQTT/TLS listener.
    assert!(
        !connects
            .iter()
            .any(|(_, _, detail)| detail.contains(" over mqtt;")),
        "{connects:#?}"
    );
}

#[test]
fn node_sdk_over_https() {
    let hub = NodeHub::start();
    let stdout = hub.run("http.js");
    // Both devices went the whole way: telemetry, the batch, the three settlements and the
    // feedback, then the wrong key.
    for who in ["widget", "sas"] {
        for line in [
            "sendEvent over Http succeeds",
            "the batch arrives whole and in order",
            "C2D bodies",
            "complete succeeds",
            "reject succeeds",
            "abandon succeeds",
            "the message delivered again is the abandoned one",
            "the message delivered again is completed",
            "the feedback names each outcome",
        ] {
            let line = format!("ok: {who}: {line}");
            assert!(
                stdout.lines().any(|l| l.starts_with(&line)),
                "`{line}` expected:\n{stdout}"
            );
        }
    }
    for line in [
        "ok: a wrong SAS key is refused as unauthorized",
        "ok: a message past 256 KB is refused as too large",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "`{line}` expected:\n{stdout}"
        );
    }

    // Every request was judged afresh, none opened a session: the hub audits the refusal of
    // the wrong key by name, and no device connected over MQTT (a successful HTTPS request
    // leaves no connect record).
    let connects = hub.connects();
    assert!(
        connects
            .iter()
            .any(|(target, outcome, detail)| target == "devices/widget-sas"
                && outcome == "sas-invalid"
                && detail.contains("signature does not match")),
        "the wrong key is audited as sas-invalid: {connects:#?}"
    );
    assert!(
        !connects.iter().any(|(_, outcome, _)| outcome == "ok"),
        "no MQTT session: {connects:#?}"
    );
    assert!(
        !connects
            .iter()
            .any(|(target, _, _)| target == "devices/smart-x-widget-0001"),
        "the widget's chain was never refused: {connects:#?}"
    );
}

#[test]
fn node_sdk_upload_to_blob() {
    let hub = NodeHub::start();
    // The hub's server CA for the storage client too: azure-iot-device hands its `ca` option
    // only to its own requests to the hub (the SAS URI, the notification), while
    // @azure/storage-blob, which writes the blob, takes no TLS options and trusts only Node's
    // default store, which NODE_EXTRA_CA_CERTS extends.
    let ca = hub.data.join("tls/server-ca.pem");
    let stdout = hub.run_with("upload.js", &[("NODE_EXTRA_CA_CERTS", &ca)]);
    for (who, name, size) in [
        ("widget", "reports/small.txt", 15),
        ("widget", "logs/big.bin", 9 * 1024 * 1024 + 12345),
        ("sas", "notes/day 1.txt", 7),
    ] {
        for line in [
            format!("uploadToBlob of {name} ({size} bytes) succeeds"),
            format!("{name} is succeeded with {size} bytes"),
            format!("the bytes of {name} read back are identical"),
            "the notification names".to_string(),
            format!("the notification of {name} is completed"),
        ] {
            let line = format!("ok: {who}: {line}");
            assert!(
                stdout.lines().any(|l| l.starts_with(&line)),
                "`{line}` expected:\n{stdout}"
            );
        }
    }
    // The failed upload: refused by the blob endpoint, reported as failed, kept as such.
    for line in [
        "ok: sas: uploadToBlob of a file past the limit fails, its failure reported",
        "ok: sas: the hub keeps the upload as failed with the storage status 413",
        "ok: sas: a failed upload sends no notification",
        "ok: the hub lists the four uploads",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "`{line}` expected:\n{stdout}"
        );
    }

    // The blobs are in the data directory's file store, whole; no staged block is left.
    let files = hub.data.join("files");
    for (blob, size) in [
        ("smart-x-widget-0001/reports/small.txt", 15),
        ("smart-x-widget-0001/logs/big.bin", 9 * 1024 * 1024 + 12345),
        ("widget-sas/notes/day 1.txt", 7),
    ] {
        let path = files.join("blobs").join(blob);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(meta.len(), size, "{}", path.display());
    }
    assert!(
        !files.join("blobs/widget-sas/notes/too-big.txt").exists(),
        "the refused file was not stored"
    );
    fn regular_files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .flat_map(|e| {
                let path = e.path();
                if path.is_dir() {
                    regular_files(&path)
                } else {
                    vec![path]
                }
            })
            .collect()
    }
    let staged = regular_files(&files.join("staging"));
    assert!(staged.is_empty(), "blocks left staged: {staged:#?}");
}

#[test]
fn node_sdk_over_amqp() {
    let hub = NodeHub::start();
    let stdout = hub.run("amqp.js");
    for line in [
        "ok: the CA-signed widget connected over Amqp",
        "ok: the SAS device connected over Amqp",
        "ok: widget: sendEvent over Amqp succeeds",
        "ok: sas: sendEvent over Amqp succeeds",
        "ok: the service reads the widget's two messages in order",
        "ok: the application property k=v arrives",
        "ok: the message id arrives",
        "ok: the service reads the SAS device's message",
        "ok: a wrong SAS key is refused",
        "ok: the first C2D message arrives whole",
        "ok: its application properties arrive",
        "ok: the abandoned message is delivered again",
        "ok: the feedback names each disposition's outcome",
        "ok: settled messages are not delivered again: 4",
        "ok: getTwin over Amqp succeeds",
        "ok: the reported properties reach the service",
        "ok: the push carries its $version",
        "ok: the method's status comes from the device over Amqp",
        "ok: the method's payload comes back",
        "ok: the service reads the message sent over AmqpWs",
        "ok: the message is the module's",
        "ok: the module twin has it",
        "ok: the widget is dropped within a second of being disabled",
        "ok: a message sent after the disable is not taken",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "`{line}` expected:\n{stdout}"
        );
    }

    // Both sessions came over the AMQP listener: the widget by the chain of its TLS
    // connection, the SAS device by the token it put on $cbs; the wrong key was refused.
    let connects = hub.connects();
    for (device, id) in [
        ("devices/smart-x-widget-0001", "smart-x-widget-0001"),
        ("devices/widget-sas", "widget-sas"),
    ] {
        let accepted: Vec<&String> = connects
            .iter()
            .filter(|(target, outcome, _)| target == device && outcome == "ok")
            .map(|(_, _, detail)| detail)
            .collect();
        assert!(!accepted.is_empty(), "{device} connected: {connects:#?}");
        for detail in accepted {
            assert!(
                detail.starts_with(&format!("{id} via "))
                    && (detail.contains(" over amqp;") || detail.contains(" over amqp-ws;")),
                "{device}: a session over amqp expected: {detail}"
            );
        }
    }
    // The one refusal: the wrong key's token, judged by its signature.
    let refusals: Vec<_> = connects
        .iter()
        .filter(|(target, outcome, _)| target == "devices/widget-sas" && outcome != "ok")
        .collect();
    assert!(
        matches!(
            refusals.as_slice(),
            [(_, outcome, detail)] if outcome == "sas-invalid"
                && detail.contains("signature does not match")
        ),
        "the wrong key is audited once as sas-invalid: {connects:#?}"
    );
    // The widget's chain was never refused; once disabled, the SDK's reconnects are refused
    // as such, and its session's end is audited with the reason.
    assert!(
        connects.iter().all(
            |(target, outcome, _)| target != "devices/smart-x-widget-0001"
                || outcome == "ok"
                || outcome == "device-disabled"
        ),
        "the widget is refused only once disabled: {connects:#?}"
    );
    let dropped = audit(hub.dir(), &hub.data).into_iter().any(|r| {
        r["operation"] == "device.disconnect"
            && r["target"] == "devices/smart-x-widget-0001"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("identity was updated"))
    });
    assert!(dropped, "the widget's session ended when it was disabled");
    // One session came over AMQP over WebSockets (AmqpWs on the 443 listener); none used
    // another listener.
    assert!(
        connects
            .iter()
            .any(|(target, outcome, detail)| target == "devices/widget-sas"
                && outcome == "ok"
                && detail.contains(" over amqp-ws;")),
        "{connects:#?}"
    );
    assert!(
        !connects.iter().any(|(_, outcome, detail)| outcome == "ok"
            && !detail.contains(" over amqp;")
            && !detail.contains(" over amqp-ws;")),
        "{connects:#?}"
    );
}

#[test]
fn node_service_sdk_over_amqp() {
    let hub = NodeHub::start();
    // The service SDK's AMQP connection takes no CA option; uploadToBlob's storage client
    // neither: both trust Node's default store, which NODE_EXTRA_CA_CERTS extends.
    let ca = hub.data.join("tls/server-ca.pem");
    let stdout = hub.run_with("service.js", &[("NODE_EXTRA_CA_CERTS", &ca)]);
    for line in [
        "ok: the service client opens its AMQP connection",
        "ok: Client.send queues a message for widget-sas",
        "ok: Client.send answers MessageEnqueued",
        "ok: the device gets the body as sent",
        "ok: the device gets the message id",
        "ok: the device gets the application property colour=blue",
        "ok: the feedback receiver gets Success for svc-amqp-1 from widget-sas",
        "ok: the feedback receiver gets Rejected for svc-amqp-2",
        "ok: Client.send to a device that does not exist fails with DeviceNotFoundError",
        "ok: the file notification receiver gets the upload of widget-sas/readings/today.txt",
        "ok: the accepted notification is no longer in the queue",
        "ok: the device receives the message the service sent over AmqpWs",
        "ok: a service with a wrong key cannot send",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "`{line}` expected:\n{stdout}"
        );
    }
    // The sends are audited under the policy, the refusals with their reasons.
    let log = audit(hub.dir(), &hub.data);
    let sends: Vec<_> = log
        .iter()
        .filter(|r| r["operation"] == "c2d.send" && r["actor"] == "iothubowner")
        .collect();
    assert!(
        sends.iter().any(|r| r["outcome"] == "ok"
            && r["target"] == "devices/widget-sas"
            && r["detail"] == "messageId svc-amqp-1"),
        "the send is audited: {sends:#?}"
    );
    assert!(
        sends.iter().any(|r| r["outcome"] == "refused"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("no-such-device"))),
        "the send to an unknown device is audited with the reason: {sends:#?}"
    );
    assert!(
        log.iter().any(|r| r["operation"] == "amqp.service.refused"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("signature"))),
        "the wrong key is audited: {log:#?}"
    );
}

#[test]
fn node_event_hubs_sdk_reads_device_telemetry() {
    let hub = NodeHub::start();
    let eh = certhub_at(
        hub.dir(),
        &hub.data,
        &["hub", "connection-string", "--event-hub"],
    )
    .ok()
    .stdout
    .trim()
    .to_string();
    // The Event Hubs client takes no CA option: Node's default store, extended.
    let ca = hub.data.join("tls/server-ca.pem");
    let out = node_to_hub(&hub.hub, NODE_PACKAGES)
        .arg(node_dir().join("eventhub.js"))
        .current_dir(hub.dir())
        .env("CERTHUB_HOST", HOST)
        .env("CERTHUB_CA", &ca)
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("CERTHUB_CONNECTION_STRING", &hub.cs)
        .env("CERTHUB_EVENT_HUB", &eh)
        .env("CERTHUB_DIR", hub.dir().join("pki"))
        .env("CERTHUB_SAS_KEY", &hub.sas_key)
        .output()
        .expect("node runs");
    let stdout = common::script_passed(&out, "eventhub.js", "all node checks passed");
    for line in [
        "ok: the SAS device sends a message over amqp",
        "ok: the SAS device sends a message over https",
        "ok: getEventHubProperties names partition 0",
        "ok: the reader gets both messages from the earliest position: 2",
        "ok: the application property arrives",
        "ok: each carries the iothub-connection-device-id annotation",
        "ok: a reader over WebSockets on 443 gets both messages: 2",
        "ok: a reader resuming after the first message's sequence number gets only the second",
        "ok: a reader with owner level 2 takes the partition from level 1",
        "ok: the level 2 reader keeps it",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "`{line}` expected:\n{stdout}"
        );
    }
}

/// A CRL over AMQP and HTTPS with the Node SDK: Technician-Z's CRL (`certhub pki revoke`,
/// `certhub pki crl`) revokes widget-0001; the service uploads it while both widgets are
/// connected over Amqp. widget-0001's session ends within a second, it is refused over Amqp
/// and Http from then on with `certificate-revoked`, and widget-0002 goes on over both. The
/// script is tests/interop/node/revocation.js.
#[test]
fn node_sdk_widgets_are_dropped_and_refused_over_amqp_and_https_when_a_crl_revokes_one() {
    let hub = NodeHub::start_with_widgets(2);
    let d = hub.dir();
    for line in [
        "pki revoke --issuer pki/technician-z --cert pki/devices/smart-x-widget-0001/cert.pem --reason key-compromise",
        "pki crl --issuer pki/technician-z",
    ] {
        certhub(d, &line.split(' ').collect::<Vec<_>>()).ok();
    }
    let stdout = hub.run_with(
        "revocation.js",
        &[
            ("CERTHUB_CRL", &d.join("pki/technician-z/crl.pem")),
            (
                "CERTHUB_ISSUER_CHAIN",
                &d.join("pki/technician-z/chain.pem"),
            ),
        ],
    );
    for line in [
        "ok: the revoked widget is dropped within a second of the upload",
        "ok: a new Amqp connection of the revoked widget is refused",
        "ok: the revoked widget's Http sendEvent is refused as unauthorized",
        "ok: the other widget still sends over Amqp",
        "ok: the other widget still sends over Http",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "`{line}` expected:\n{stdout}"
        );
    }
    // The refusals are named, over both transports; the session's end says why.
    let connects = hub.connects();
    let revoked: Vec<&String> = connects
        .iter()
        .filter(|(target, outcome, _)| {
            target == "devices/smart-x-widget-0001" && outcome == "certificate-revoked"
        })
        .map(|(_, _, detail)| detail)
        .collect();
    for transport in ["amqp", "https"] {
        assert!(
            revoked
                .iter()
                .any(|detail| detail.contains(&format!("over {transport}"))
                    && detail.contains("CN=Technician-Z CA")),
            "a certificate-revoked refusal over {transport} expected: {connects:#?}"
        );
    }
    assert!(
        connects
            .iter()
            .all(|(target, outcome, _)| target != "devices/smart-x-widget-0002" || outcome == "ok"),
        "widget-0002 is never refused: {connects:#?}"
    );
    let closed = audit(d, &hub.data).into_iter().any(|r| {
        r["operation"] == "device.disconnect"
            && r["target"] == "devices/smart-x-widget-0001"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("certificate-revoked"))
    });
    assert!(
        closed,
        "the widget's AMQP session's end names the revocation"
    );
}
