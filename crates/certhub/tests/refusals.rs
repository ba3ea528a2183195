//! The refusal matrix with a real client: mosquitto_pub presents crafted chains to a running
//! hub; each is answered with CONNACK 5 (mosquitto fails) and the right reason in the audit
//! trail. A wrong private key fails the TLS handshake itself and reaches no CONNECT.

mod common;

use std::path::Path;

use certhub_testkit::{Ca, Leaf, NOT_AFTER, NOT_BEFORE, validity};
use common::{Pub, certhub_at, mosquitto_pub, s, start_hub, tmp};
use rcgen::{BasicConstraints, IsCa};

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

/// Company-X's root CA, uploaded to the hub as verified under the name `company-x`.
fn trusted_root(d: &Path, data: &Path) -> Ca {
    let root = Ca::root("Company-X Root CA");
    std::fs::write(d.join("root.pem"), root.pem()).expect("root");
    certhub_at(
        d,
        data,
        &[
            "ca",
            "upload",
            "--name",
            "company-x",
            "--file",
            "root.pem",
            "--verified",
        ],
    )
    .ok();
    root
}

/// The audit trail's newest connection record of `id`, as JSON (outcome, detail, ...).
fn last_connection(d: &Path, data: &Path, id: &str) -> serde_json::Value {
    let run = certhub_at(d, data, &["audit", "connections", "--device", id, "--json"]).ok();
    let log: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    log[0].clone()
}

#[test]
fn refused_chains_are_named_in_the_audit_trail() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);

    let root = trusted_root(d, &data);
    let factory = root.intermediate("Factory-Y CA");
    let pending = Ca::root("Pending Root CA");
    std::fs::write(d.join("pending.pem"), pending.pem()).expect("pending");
    hub(&["ca", "upload", "--name", "pending", "--file", "pending.pem"]).ok();
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

    let f = factory.pem();
    let expired = factory.leaf_with("w-expired", |p| validity(p, NOT_BEFORE, now() - 86_400));
    let early = factory.leaf_with("w-early", |p| validity(p, now() + 86_400, NOT_AFTER));
    let alone = factory.device("w-alone");
    let forger = Ca::root("Company-X Root CA").intermediate("Factory-Y CA");
    let forged = forger.device("w-forged");
    let not_ca = root.intermediate_with("Not A CA", |p| p.is_ca = IsCa::ExplicitNoCa);
    let via_not_ca = not_ca.device("w-notca");
    let short = root.intermediate_with("Short CA", |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0))
    });
    let too_deep_ca = short.intermediate("Too Deep CA");
    let too_deep = too_deep_ca.device("w-deep");
    let unverified = pending.device("w-pending");
    let doomed_sub = doomed.intermediate("Doomed Sub CA");
    let deleted = doomed_sub.device("w-doomed");
    let good = factory.device("w-good");
    let mut cases = vec![
        (
            "w-expired",
            write_leaf(d, "expired", &expired, &[&f]),
            "certificate-expired",
        ),
        (
            "w-early",
            write_leaf(d, "early", &early, &[&f]),
            "not-yet-valid",
        ),
        (
            "w-alone",
            write_leaf(d, "alone", &alone, &[]),
            "missing-intermediate",
        ),
        (
            "w-forged",
            write_leaf(d, "forged", &forged, &[&forger.pem()]),
            "bad-signature",
        ),
        (
            "w-notca",
            write_leaf(d, "notca", &via_not_ca, &[&not_ca.pem()]),
            "issuer-not-ca",
        ),
        (
            "w-deep",
            write_leaf(d, "deep", &too_deep, &[&too_deep_ca.pem(), &short.pem()]),
            "path-length-exceeded",
        ),
        (
            "w-pending",
            write_leaf(d, "pending", &unverified, &[]),
            "ca-not-verified",
        ),
        (
            "w-doomed",
            write_leaf(d, "doomed", &deleted, &[&doomed_sub.pem()]),
            "unknown-ca",
        ),
        (
            "w-other",
            write_leaf(d, "good", &good, &[&f]),
            "cn-mismatch",
        ),
    ];
    let ca = data.join("tls/server-ca.pem");
    for (id, _, _) in &cases {
        hub(&["device", "create", "--id", id, "--auth-method", "x509-ca"]).ok();
    }
    // Disabled and unknown devices, with a good chain of their own.
    let disabled = factory.device("w-disabled");
    cases.push((
        "w-disabled",
        write_leaf(d, "disabled", &disabled, &[&f]),
        "device-disabled",
    ));
    hub(&[
        "device",
        "create",
        "--id",
        "w-disabled",
        "--auth-method",
        "x509-ca",
    ])
    .ok();
    hub(&[
        "device",
        "update",
        "--id",
        "w-disabled",
        "--status",
        "disabled",
    ])
    .ok();
    let unknown = factory.device("w-unknown");
    cases.push((
        "w-unknown",
        write_leaf(d, "unknown", &unknown, &[&f]),
        "device-not-found",
    ));

    for (id, folder, reason) in &cases {
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
        assert!(!out.status.success(), "{id} must be refused");
        let last = last_connection(d, &data, id);
        assert_eq!(last["outcome"], *reason, "{id}: {last}");
    }

    // The good chain, for its own id, is admitted.
    hub(&[
        "device",
        "create",
        "--id",
        "w-good",
        "--auth-method",
        "x509-ca",
    ])
    .ok();
    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&ca),
            widget: "good",
            client_id: "w-good",
            topic: "devices/w-good/messages/events/",
            message: "x",
            extra: &[],
        },
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong private key: the handshake itself fails, no CONNECT is ever decided.
    let impostor = factory.device("w-good");
    let folder = d.join("impostor");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(folder.join("chain.pem"), format!("{}{f}", good.pem())).expect("chain");
    std::fs::write(folder.join("key.pem"), impostor.key.serialize_pem()).expect("key");
    let before = hub(&["audit", "connections", "--device", "w-good", "--json"])
        .ok()
        .stdout;
    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&ca),
            widget: "impostor",
            client_id: "w-good",
            topic: "devices/w-good/messages/events/",
            message: "x",
            extra: &[],
        },
    );
    assert!(
        !out.status.success(),
        "a key that does not match the certificate must fail"
    );
    let after = hub(&["audit", "connections", "--device", "w-good", "--json"])
        .ok()
        .stdout;
    assert_eq!(before, after, "no CONNECT was decided for the impostor");
}

/// SAS refusals with mosquitto_pub and tokens from `certhub device token`: a token of another
/// device, an expired token.
#[test]
fn refused_sas_tokens_are_named() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);
    hub(&["device", "create", "--id", "sas-a"]).ok();
    hub(&["device", "create", "--id", "sas-b"]).ok();
    let token_a = hub(&["device", "token", "--id", "sas-a"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let short_b = hub(&["device", "token", "--id", "sas-b", "--duration", "1"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let ca = data.join("tls/server-ca.pem");
    let publish = |id: &str, token: &str| {
        std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "localhost",
                "-p",
                &hub_process.mqtt_port.to_string(),
                "-V",
                "mqttv311",
                "--cafile",
                s(&ca),
                "-i",
                id,
                "-u",
                &format!("localhost/{id}/?api-version=2021-04-12"),
                "-P",
                token,
                "-t",
                &format!("devices/{id}/messages/events/"),
                "-q",
                "1",
                "-m",
                "x",
            ])
            .output()
            .expect("mosquitto_pub")
    };
    assert!(
        publish("sas-a", &token_a).status.success(),
        "its own token admits sas-a"
    );
    assert!(!publish("sas-b", &token_a).status.success());
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(!publish("sas-b", &short_b).status.success());
    let run = hub(&["audit", "connections", "--device", "sas-b", "--json"]).ok();
    let log: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(log[0]["outcome"], "sas-expired", "{log}");
    assert_eq!(log[1]["outcome"], "sas-invalid", "{log}");
}

/// Beyond the session limit a device gets CONNACK 3 (server unavailable, which the SDKs
/// retry), audited as `overloaded`; when a session ends, the next device gets in.
#[test]
fn the_session_limit_answers_connack_3() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = common::start_hub_with(
        &data,
        &[
            "--https-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--hostname",
            "localhost",
            "--max-device-sessions",
            "1",
        ],
    );
    let hub = |args: &[&str]| certhub_at(d, &data, args);
    let root = trusted_root(d, &data);
    for id in ["first", "second"] {
        write_leaf(d, id, &root.device(id), &[]);
        hub(&["device", "create", "--id", id, "--auth-method", "x509-ca"]).ok();
    }
    let ca = data.join("tls/server-ca.pem");
    // "first" holds the only session: mosquitto_sub waits for a message that never comes.
    let mut holder = std::process::Command::new("mosquitto_sub")
        .current_dir(d)
        .args([
            "-h",
            "localhost",
            "-p",
            &hub_process.mqtt_port.to_string(),
            "-V",
            "mqttv311",
            "--cafile",
            s(&ca),
            "--cert",
            "first/chain.pem",
            "--key",
            "first/key.pem",
            "-i",
            "first",
            "-u",
            "localhost/first/?api-version=2021-04-12",
            "-t",
            "devices/first/messages/devicebound/#",
            "-q",
            "1",
        ])
        .spawn()
        .expect("mosquitto_sub");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let run = hub(&["audit", "connections", "--device", "first", "--json"]).ok();
        if run.stdout.contains("\"ok\"") || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let second = |message: &str| {
        mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&ca),
                widget: "second",
                client_id: "second",
                topic: "devices/second/messages/events/",
                message,
                extra: &[],
            },
        )
    };
    let refused = second("x");
    assert!(
        !refused.status.success(),
        "the second session is over the limit"
    );
    let last = last_connection(d, &data, "second");
    assert_eq!(last["outcome"], "overloaded", "{last}");
    let _ = holder.kill();
    let _ = holder.wait();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(second("y").status.success(), "a slot is free again");
}

/// minTlsVersion 1.3 refuses a TLS 1.2 device (paho pinned to TLS 1.2, as the Azure Python
/// SDK is) with its own reason, and admits TLS 1.3 (mosquitto_pub negotiates it).
#[test]
fn min_tls_version_is_enforced_on_devices() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);
    let root = trusted_root(d, &data);
    write_leaf(d, "w", &root.device("w-tls"), &[]);
    hub(&[
        "device",
        "create",
        "--id",
        "w-tls",
        "--auth-method",
        "x509-ca",
    ])
    .ok();
    let ca = data.join("tls/server-ca.pem");
    let tls12 = |expect: i32| {
        let script = format!(
            r#"
import ssl, sys, time
import paho.mqtt.client as mqtt
rc = []
c = mqtt.Client(client_id="w-tls", protocol=mqtt.MQTTv311)
c.username_pw_set("localhost/w-tls/?api-version=2021-04-12")
c.tls_set(ca_certs="{ca}", certfile="w/chain.pem", keyfile="w/key.pem", tls_version=ssl.PROTOCOL_TLSv1_2)
c.on_connect = lambda client, userdata, flags, code: rc.append(code)
c.connect("localhost", {port})
c.loop_start()
for _ in range(100):
    if rc:
        break
    time.sleep(0.05)
c.loop_stop()
sys.exit(0 if rc == [{expect}] else 1)
"#,
            ca = s(&ca),
            port = hub_process.mqtt_port
        );
        std::process::Command::new(common::python())
            .args(["-c", &script])
            .current_dir(d)
            .status()
            .expect("python")
            .success()
    };
    assert!(tls12(0), "TLS 1.2 is admitted by default");
    hub(&["hub", "set", "--min-tls-version", "1.3"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(tls12(5), "with minTlsVersion 1.3, TLS 1.2 gets CONNACK 5");
    let last = last_connection(d, &data, "w-tls");
    assert_eq!(last["outcome"], "tls-version", "{last}");
    let out = mosquitto_pub(
        d,
        &Pub {
            port: hub_process.mqtt_port,
            ca: s(&ca),
            widget: "w",
            client_id: "w-tls",
            topic: "devices/w-tls/messages/events/",
            message: "x",
            extra: &["--tls-version", "tlsv1.3"],
        },
    );
    assert!(out.status.success(), "TLS 1.3 is admitted");
}

/// The hub keeps the identities devices connect with in memory: every registry change must be
/// seen by the very next connection. A device is admitted, disabled, enabled again, given a
/// SAS-only identity and deleted; each time mosquitto_pub connects once more with the same
/// chain, and the audit trail names the outcome.
#[test]
fn registry_changes_apply_to_the_next_connection() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);
    let root = trusted_root(d, &data);
    let factory = root.intermediate("Factory-Y CA");
    let widget = factory.device("w-cached");
    write_leaf(d, "cached", &widget, &[&factory.pem()]);
    let ca = data.join("tls/server-ca.pem");
    let connect = || {
        mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&ca),
                widget: "cached",
                client_id: "w-cached",
                topic: "devices/w-cached/messages/events/",
                message: "x",
                extra: &[],
            },
        )
        .status
        .success()
    };
    let last_outcome = || last_connection(d, &data, "w-cached")["outcome"].clone();
    hub(&[
        "device",
        "create",
        "--id",
        "w-cached",
        "--auth-method",
        "x509-ca",
    ])
    .ok();
    // Twice: the second connection is answered from what the first one read.
    assert!(connect(), "admitted");
    assert!(connect(), "admitted again");
    hub(&[
        "device", "update", "--id", "w-cached", "--status", "disabled",
    ])
    .ok();
    assert!(!connect(), "disabled: refused");
    assert_eq!(last_outcome(), "device-disabled");
    hub(&[
        "device", "update", "--id", "w-cached", "--status", "enabled",
    ])
    .ok();
    assert!(connect(), "enabled again: admitted");
    assert_eq!(last_outcome(), "ok");
    hub(&["device", "delete", "--id", "w-cached"]).ok();
    assert!(!connect(), "deleted: refused");
    assert_eq!(last_outcome(), "device-not-found");
    hub(&[
        "device",
        "create",
        "--id",
        "w-cached",
        "--auth-method",
        "shared-private-key",
    ])
    .ok();
    assert!(
        !connect(),
        "now a SAS identity: the certificate is not enough"
    );
    assert_eq!(last_outcome(), "auth-method-mismatch");
}
