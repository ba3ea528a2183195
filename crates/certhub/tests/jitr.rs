//! Just-in-time registration, as AWS IoT does it, without a provisioning round trip:
//! `certhub ca jitr --name company-x --allow PATTERN` lets a widget that was never registered
//! connect with mosquitto_pub (Eclipse Mosquitto's client, from Debian) on its first try: the
//! hub creates it (certificateAuthority) before judging the CONNECT, and audits the creation.
//! A widget whose id the pattern does not admit, and any widget once JITR is off, is refused
//! as an unknown device.

mod common;

use common::{Pub, certhub_at, enroll_company_x, mosquitto_pub, s, start_hub, tmp};

#[test]
fn a_ca_with_jitr_on_admits_its_unknown_widgets_on_their_first_connection() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);
    enroll_company_x(d, &data, 3);
    let ca = data.join("tls/server-ca.pem");
    let publish = |n: u32| {
        let widget = format!("pki/devices/smart-x-widget-000{n}");
        let id = format!("smart-x-widget-000{n}");
        let topic = format!("devices/{id}/messages/events/");
        mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&ca),
                widget: &widget,
                client_id: &id,
                topic: &topic,
                message: "first boot",
                extra: &[],
            },
        )
    };

    // Off (the default): an unknown widget is refused.
    assert!(!publish(1).status.success(), "refused while JITR is off");
    // A pattern that admits widgets 0001 and 0002 only; a CA without proof of possession
    // cannot have it.
    hub(&[
        "ca",
        "jitr",
        "--name",
        "company-x",
        "--allow",
        "smart-x-widget-000?",
    ])
    .ok();
    let out = publish(1);
    assert!(
        out.status.success(),
        "the widget is created and connects on its first try: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = hub(&["device", "show", "--id", "smart-x-widget-0001"]).ok();
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
    assert_eq!(shown["authentication"]["type"], "certificateAuthority");
    let messages = hub(&[
        "messages",
        "tail",
        "--device",
        "smart-x-widget-0001",
        "--count",
        "1",
        "--idle-exit",
        "2",
    ])
    .ok();
    assert!(
        messages.stdout.contains("first boot"),
        "{}",
        messages.stdout
    );

    hub(&[
        "ca",
        "jitr",
        "--name",
        "company-x",
        "--allow",
        "smart-x-widget-0002",
    ])
    .ok();
    assert!(publish(2).status.success(), "0002 matches the new pattern");
    assert!(!publish(3).status.success(), "0003 does not");
    hub(&["ca", "jitr", "--name", "company-x", "--off"]).ok();
    assert!(!publish(3).status.success(), "off again: refused");
    // The devices it created stay.
    assert!(publish(1).status.success(), "0001 exists now");

    let log = hub(&["audit", "list", "--json", "--top", "200"]).ok();
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    let records = log.as_array().expect("array");
    let created: Vec<&str> = records
        .iter()
        .filter(|r| r["operation"] == "device.create" && r["actor"] == "jitr:company-x")
        .filter_map(|r| r["target"].as_str())
        .collect();
    assert_eq!(
        {
            let mut c = created.clone();
            c.sort_unstable();
            c
        },
        ["devices/smart-x-widget-0001", "devices/smart-x-widget-0002"],
        "{log}"
    );
    assert!(
        records.iter().any(|r| r["operation"] == "device.connect"
            && r["target"] == "devices/smart-x-widget-0003"
            && r["outcome"] == "device-not-found"),
        "{log}"
    );
    // An unverified CA cannot have JITR.
    hub(&[
        "ca",
        "upload",
        "--name",
        "factory-y",
        "--file",
        "pki/factory-y/cert.pem",
    ])
    .ok();
    let refused = hub(&["ca", "jitr", "--name", "factory-y"]);
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("not verified"),
        "{}",
        refused.stderr
    );
}
