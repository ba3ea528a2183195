//! Rollovers without downtime (issue 16): the hub's server certificate rotated while devices
//! stay connected (`certhub hub rotate-server-cert`), and a renewed root with the same subject
//! verified beside the old one, devices moving at their own pace while `ca impact` on the old
//! root shows who still uses it. mosquitto_pub, mosquitto_sub and openssl s_client are the
//! clients.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    certhub, certhub_at, is_connected, openssl, publishes, publishes_from, s, subscribe, tmp,
    wait_until,
};

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The serial of the certificate the hub presents on `port`, as openssl s_client sees it
/// after verifying it against the hub's server CA (panics unless it verifies).
fn presented_serial(d: &Path, data: &Path, port: u16) -> String {
    let (verified, serial, text) = presented(d, &data.join("tls/server-ca.pem"), port);
    assert!(verified, "s_client: {text}");
    serial
}

/// What openssl s_client sees on `port` trusting only `ca`: whether it verifies, the leaf's
/// serial, and its whole output.
fn presented(d: &Path, ca: &Path, port: u16) -> (bool, String, String) {
    let out = Command::new("openssl")
        .current_dir(d)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-CAfile", s(ca)])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verified = text.contains("Verify return code: 0 (ok)");
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").expect("its end") + 25;
    std::fs::write(d.join("presented.pem"), &text[start..end]).expect("write");
    let serial = openssl(d, &words("x509 -in presented.pem -noout -serial"))
        .ok()
        .stdout
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    (verified, serial, text)
}

#[test]
fn the_server_certificate_rotates_while_devices_stay_connected() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = common::start_hub(&data);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    common::enroll_widget(d, &data);
    let ca = data.join("tls/server-ca.pem");
    let id = "smart-x-widget-0001";
    let widget = "pki/devices/smart-x-widget-0001";
    let mut sub = subscribe(d, hub_process.mqtt_port, &ca, widget, id);
    let connected = || is_connected(d, &data, id);
    wait_until(20, "the widget connects", connected);

    let shown: serde_json::Value =
        serde_json::from_str(&hub("hub server-cert").ok().stdout).expect("json");
    let before = shown["serial"]
        .as_str()
        .expect("serial")
        .to_ascii_lowercase();
    let https_port: u16 = hub_process
        .host
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the API's port");
    assert_eq!(presented_serial(d, &data, hub_process.mqtt_port), before);

    let rotated: serde_json::Value =
        serde_json::from_str(&hub("hub rotate-server-cert").ok().stdout).expect("json");
    let after = rotated["serial"]
        .as_str()
        .expect("serial")
        .to_ascii_lowercase();
    assert_ne!(after, before, "{rotated:#}");
    // Both listeners present the new one, under the same server CA.
    assert_eq!(presented_serial(d, &data, hub_process.mqtt_port), after);
    assert_eq!(presented_serial(d, &data, https_port), after);
    // The session made before is still there, and new ones work with the same trust file.
    assert!(
        sub.try_wait().expect("state").is_none(),
        "the subscriber was dropped"
    );
    assert!(connected());
    assert!(
        publishes(d, hub_process.mqtt_port, &ca, id),
        "a new connection after the rotation"
    );
    // The new certificate is the one on disk: a restart keeps it.
    let on_disk = openssl(
        d,
        &[
            "x509",
            "-in",
            s(&data.join("tls/server.pem")),
            "-noout",
            "-serial",
        ],
    )
    .ok()
    .stdout
    .trim()
    .trim_start_matches("serial=")
    .to_ascii_lowercase();
    assert_eq!(on_disk, after);
    let audit = hub("audit list --json --top 50").ok().stdout;
    assert!(audit.contains("hub.server-certificate.rotate"), "{audit}");
    let _ = sub.kill();
    let _ = sub.wait();
}

/// A renewed Company-X root (same subject, new key) registered beside the old one: devices of
/// both connect; `ca impact` on the old root lists who still authenticates through it, and
/// shrinks as devices move to certificates under the new one; the old root is then deleted and
/// what is left under it is refused. A block cannot take a registered CA (deleting it does).
#[test]
fn a_renewed_root_works_beside_the_old_one_while_devices_move() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = common::start_hub(&data);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    let pki = |args: &[&str]| certhub(d, args).ok();
    for root in ["root-2025", "root-2026"] {
        pki(&[
            "pki",
            "root",
            "--subject",
            "CN=Company-X Root CA, O=Company-X",
            "--out",
            root,
        ]);
    }
    let issue = |root: &str, id: &str, out: &str| {
        pki(&[
            "pki",
            "request",
            "--subject",
            &format!("CN={id}"),
            "--out",
            out,
        ]);
        pki(&[
            "pki",
            "sign",
            "--issuer",
            root,
            "--csr",
            &format!("{out}/request.csr"),
            "--profile",
            "device",
            "--out",
            out,
        ]);
    };
    issue("root-2025", "widget-1", "widget-1-2025");
    issue("root-2025", "widget-2", "widget-2-2025");
    issue("root-2026", "widget-3", "widget-3-2026");
    for (name, root) in [
        ("company-x-2025", "root-2025"),
        ("company-x-2026", "root-2026"),
    ] {
        hub(&format!(
            "ca upload --name {name} --file {root}/cert.pem --verified"
        ))
        .ok();
    }
    for id in ["widget-1", "widget-2", "widget-3"] {
        hub(&format!("device create --id {id} --auth-method x509-ca")).ok();
    }
    let ca = data.join("tls/server-ca.pem");
    let publish =
        |id: &str, folder: &str| publishes_from(d, hub_process.mqtt_port, &ca, folder, id);
    assert!(publish("widget-1", "widget-1-2025"));
    assert!(publish("widget-2", "widget-2-2025"));
    assert!(publish("widget-3", "widget-3-2026"));
    let impact = |root: &str| -> (String, Vec<String>) {
        let v: serde_json::Value = serde_json::from_str(
            &hub(&format!("ca impact --cert {root}/cert.pem"))
                .ok()
                .stdout,
        )
        .expect("json");
        let ids = v["identities"]
            .as_array()
            .expect("identities")
            .iter()
            .map(|i| i["deviceId"].as_str().unwrap_or("").to_string())
            .collect();
        (v["registeredCa"].as_str().unwrap_or("").to_string(), ids)
    };
    assert_eq!(
        impact("root-2025"),
        (
            "company-x-2025".into(),
            vec!["widget-1".into(), "widget-2".into()]
        )
    );
    assert_eq!(
        impact("root-2026"),
        ("company-x-2026".into(), vec!["widget-3".into()])
    );
    // widget-1 moves to a certificate under the renewed root.
    issue("root-2026", "widget-1", "widget-1-2026");
    assert!(publish("widget-1", "widget-1-2026"));
    assert_eq!(impact("root-2025").1, vec!["widget-2".to_string()]);
    assert_eq!(
        impact("root-2026").1,
        vec!["widget-1".to_string(), "widget-3".to_string()]
    );
    // A block cannot take a registered CA: deleting it does.
    let e = hub("ca block --cert root-2025/cert.pem").code(2);
    assert!(
        e.stderr
            .contains("this is the registered CA \"company-x-2025\""),
        "{}",
        e.stderr
    );
    hub("ca delete --name company-x-2025").ok();
    assert!(!publish("widget-2", "widget-2-2025"), "its root is gone");
    assert!(publish("widget-1", "widget-1-2026"));
    assert!(publish("widget-3", "widget-3-2026"));
}

/// A server CA rollover in two steps: a new server CA is introduced while the hub still
/// presents a certificate from the old one (a device that trusts only the old CA connects, and
/// one given both CAs does too); at the switch the hub presents a certificate from the new CA,
/// the connected device stays, and from then on only the new CA verifies the hub.
#[test]
fn a_new_server_ca_is_introduced_while_devices_still_trust_the_old_one() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = common::start_hub(&data);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    common::enroll_widget(d, &data);
    let old_ca = d.join("old-ca.pem");
    std::fs::copy(data.join("tls/server-ca.pem"), &old_ca).expect("copy");
    let id = "smart-x-widget-0001";
    let port = hub_process.mqtt_port;
    let sub = subscribe(d, port, &old_ca, "pki/devices/smart-x-widget-0001", id);
    wait_until(20, "the widget connects", || is_connected(d, &data, id));
    let before = presented(d, &old_ca, port);
    assert!(before.0, "{}", before.2);

    // Introduced: nothing changes for devices, and the trust bundle has both CAs.
    let next: serde_json::Value =
        serde_json::from_str(&hub("hub rotate-server-cert --new-ca").ok().stdout).expect("json");
    assert!(
        next["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("CN=certhub server CA 20")),
        "{next:#}"
    );
    let both = d.join("both.pem");
    std::fs::write(&both, hub("hub server-ca").ok().stdout).expect("write");
    let bundle = std::fs::read_to_string(&both).expect("read");
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    assert_eq!(
        presented(d, &old_ca, port).1,
        before.1,
        "the same certificate"
    );
    assert!(presented(d, &both, port).0);
    assert!(publishes(d, port, &both, id), "a device given both CAs");
    let e = hub("hub rotate-server-cert --new-ca").code(2);
    assert!(e.stderr.contains("already waiting"), "{}", e.stderr);
    let mut sub2 = subscribe(d, port, &both, "pki/devices/smart-x-widget-0001", id);
    wait_until(20, "the widget connects again", || {
        is_connected(d, &data, id)
    });

    // Switched: a certificate from the new CA; the session stays; the old CA no longer verifies.
    let now: serde_json::Value =
        serde_json::from_str(&hub("hub rotate-server-cert --switch-ca").ok().stdout).expect("json");
    assert_eq!(now["issuer"], next["subject"], "{now:#}");
    let after = presented(d, &both, port);
    assert!(after.0, "{}", after.2);
    assert_ne!(after.1, before.1);
    assert!(
        !presented(d, &old_ca, port).0,
        "the old CA no longer verifies the hub"
    );
    assert!(
        sub2.try_wait().expect("state").is_none(),
        "the session made before stays"
    );
    assert!(!publishes(d, port, &old_ca, id));
    assert!(publishes(d, port, &both, id));
    let bundle = hub("hub server-ca").ok().stdout;
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1, "{bundle}");
    let e = hub("hub rotate-server-cert --switch-ca").code(2);
    assert!(
        e.stderr.contains("no server CA rollover is under way"),
        "{}",
        e.stderr
    );
    for mut s in [sub, sub2] {
        let _ = s.kill();
        let _ = s.wait();
    }
}
