//! The refusal matrix, shortened, repeated on the 443 listener: MQTT over WebSockets
//! (`GET /$iothub/websocket`) with Python paho-mqtt (from the repository's .venv, installed with
//! the Azure SDK), the device's chain presented on the TLS connection under the WebSocket. An
//! expired leaf, an unknown CA, a CN that is not the client id and a disabled device are each
//! answered with CONNACK 5 and audited with the same reason as on the MQTT/TLS listener, where
//! mosquitto_pub presents the same chain in the same test; a good chain is admitted over
//! mqtt-ws.

mod common;

use std::path::Path;

use certhub_testkit::{Ca, Leaf, NOT_BEFORE, validity};
use common::{HubProcess, Pub, certhub_at, mosquitto_pub, s, start_hub, tmp};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn write_leaf(dir: &Path, name: &str, leaf: &Leaf, chain: &[&str]) -> String {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    let pem: String = chain.iter().copied().collect::<String>();
    std::fs::write(folder.join("chain.pem"), format!("{}{pem}", leaf.pem())).expect("chain");
    std::fs::write(folder.join("key.pem"), leaf.key.serialize_pem()).expect("key");
    name.to_string()
}

/// One MQTT CONNECT over WebSockets with paho-mqtt: TLS to `localhost:https_port` trusting the
/// hub's server CA and presenting `folder/chain.pem` with `folder/key.pem`, then the WebSocket
/// upgrade on `/$iothub/websocket` (subprotocol `mqtt`), then CONNECT as `client_id` with the
/// IoT Hub user name. Returns the CONNACK return code, or None when there was none (with what
/// paho said).
const PAHO_WS: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
ca, folder, cid, port = sys.argv[1:5]
rc = []
c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv311, transport="websockets")
c.ws_set_options(path="/$iothub/websocket")
c.username_pw_set(f"localhost/{cid}/?api-version=2021-04-12")
c.tls_set(ca_certs=ca, certfile=f"{folder}/chain.pem", keyfile=f"{folder}/key.pem")
c.on_connect = lambda client, userdata, flags, code: rc.append(code)
try:
    c.connect("localhost", int(port))
except Exception as e:
    print("no connection:", repr(e))
    sys.exit(3)
c.loop_start()
deadline = time.monotonic() + 10
while not rc and time.monotonic() < deadline:
    time.sleep(0.02)
c.loop_stop()
print("connack", rc[0] if rc else "none")
"#;

fn paho_ws(d: &Path, data: &Path, hub: &HubProcess, folder: &str, client_id: &str) -> Option<i32> {
    let out = std::process::Command::new(common::python())
        .args([
            "-c",
            PAHO_WS,
            s(&data.join("tls/server-ca.pem")),
            folder,
            client_id,
            &hub.https_port().to_string(),
        ])
        .current_dir(d)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("connack "))
        .and_then(|rc| rc.trim().parse().ok())
        .or_else(|| {
            eprintln!(
                "paho over WebSockets for {client_id}: no CONNACK\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        })
}

/// The audit trail's newest connection record of `id`, as JSON (outcome, detail, ...).
fn last_connection(d: &Path, data: &Path, id: &str) -> serde_json::Value {
    let run = certhub_at(d, data, &["audit", "connections", "--device", id, "--json"]).ok();
    let log: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    log[0].clone()
}

#[test]
fn refusals_on_443_have_the_reasons_of_8883() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);

    // Company-X's root, verified; Factory-Y under it signs the devices.
    let root = Ca::root("Company-X Root CA");
    std::fs::write(d.join("root.pem"), root.pem()).expect("root");
    hub(&[
        "ca",
        "upload",
        "--name",
        "company-x",
        "--file",
        "root.pem",
        "--verified",
    ])
    .ok();
    let factory = root.intermediate("Factory-Y CA");
    let f = factory.pem();
    // A root that was verified once and then deleted: its devices chain to nothing known.
    let doomed = Ca::root("Doomed Root CA");
    std::fs::write(d.join("doomed.pem"), doomed.pem()).expect("doomed");
    hub(&[
        "ca",
        "upload",
        "--name",
        "doomed",
        "--file",
        "doomed.pem",
        "--verified",
    ])
    .ok();
    hub(&["ca", "delete", "--name", "doomed"]).ok();
    let doomed_sub = doomed.intermediate("Doomed Sub CA");

    let expired = factory.leaf_with("w-expired", |p| validity(p, NOT_BEFORE, now() - 86_400));
    let unknown = doomed_sub.device("w-doomed");
    let good = factory.device("w-good");
    let disabled = factory.device("w-disabled");
    let cases = [
        (
            "w-expired",
            write_leaf(d, "expired", &expired, &[&f]),
            "certificate-expired",
        ),
        (
            "w-doomed",
            write_leaf(d, "doomed", &unknown, &[&doomed_sub.pem()]),
            "unknown-ca",
        ),
        (
            "w-other",
            write_leaf(d, "good", &good, &[&f]),
            "cn-mismatch",
        ),
        (
            "w-disabled",
            write_leaf(d, "disabled", &disabled, &[&f]),
            "device-disabled",
        ),
    ];
    for id in ["w-expired", "w-doomed", "w-other", "w-disabled", "w-good"] {
        hub(&["device", "create", "--id", id, "--auth-method", "x509-ca"]).ok();
    }
    hub(&[
        "device",
        "update",
        "--id",
        "w-disabled",
        "--status",
        "disabled",
    ])
    .ok();

    let ca = data.join("tls/server-ca.pem");
    for (id, folder, reason) in &cases {
        // 8883, MQTT over TLS.
        let out = mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&ca),
                widget: folder,
                client_id: id,
                topic: &format!("devices/{id}/messages/events/"),
                message: "x",
                extra: &[],
            },
        );
        assert!(!out.status.success(), "{id} must be refused on 8883");
        let on_8883 = last_connection(d, &data, id);
        assert_eq!(on_8883["outcome"], *reason, "{id} on 8883: {on_8883}");

        // 443, MQTT over WebSockets, the same chain.
        assert_eq!(
            paho_ws(d, &data, &hub_process, folder, id),
            Some(5),
            "{id} must get CONNACK 5 (not authorized) on 443"
        );
        let on_443 = last_connection(d, &data, id);
        assert_ne!(on_443, on_8883, "{id}: a new record for the 443 attempt");
        assert_eq!(
            on_443["outcome"], on_8883["outcome"],
            "{id}: the same reason on 443 as on 8883: {on_443}"
        );
        // The same explanation, naming the same presented chain (taken on 443 from the TLS
        // connection under the WebSocket); only the transport each names and the peer's port
        // differ.
        let detail =
            |record: &serde_json::Value| record["detail"].as_str().unwrap_or_default().to_string();
        let explanation = |record: &serde_json::Value| {
            let detail = detail(record);
            detail
                .split_once("; over ")
                .map(|(before, _)| before.to_string())
                .unwrap_or(detail)
        };
        assert!(
            explanation(&on_443).contains("presented: CN="),
            "{id}: the refusal names the presented chain: {on_443}"
        );
        assert!(
            detail(&on_443).contains("; over mqtt-ws; peer ")
                && detail(&on_8883).contains("; over mqtt; peer "),
            "{id}: each refusal names its transport: {on_443} {on_8883}"
        );
        assert_eq!(
            explanation(&on_443),
            explanation(&on_8883),
            "{id}: the same explanation on 443 as on 8883"
        );
    }

    // The good chain, for its own id, is admitted on 443, over mqtt-ws.
    assert_eq!(
        paho_ws(d, &data, &hub_process, "good", "w-good"),
        Some(0),
        "the good chain is admitted on 443"
    );
    let admitted = last_connection(d, &data, "w-good");
    assert_eq!(admitted["outcome"], "ok", "{admitted}");
    assert!(
        admitted["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains(" over mqtt-ws;")),
        "{admitted}"
    );
}
