//! Device provisioning with the Node.js Azure provisioning SDKs against a real `certhub serve`
//! (tests/interop/node/provisioning.js).
//!
//! The service SDK (`azure-iot-provisioning-service`, with the connection string of `certhub
//! hub connection-string --policy provisioningserviceowner`) creates, reads, updates with
//! the etag, queries page by page, bulk-creates and bulk-deletes and deletes enrollment
//! groups and individual enrollments (an X.509 group on the verified CA company-x, symmetric-
//! key individual enrollments, a group with a signing certificate), reads their attestation
//! mechanisms, and is refused with 412 for a stale etag.
//!
//! The device SDK (`azure-iot-provisioning-device`) over Mqtt and MqttWs
//! (`azure-iot-provisioning-device-mqtt`), Http (`azure-iot-provisioning-device-http`), Amqp
//! and AmqpWs (`azure-iot-provisioning-device-amqp`: AMQP on 5671 and AMQP over WebSockets on
//! 443, SASL PLAIN with the SAS token for a symmetric key, the TLS client certificate for
//! X.509): a widget of Company-X's four-level chain per transport (`X509Security`) registers through
//! the group, a symmetric-key device per transport (`SymmetricKeySecurityClient`) through its
//! individual enrollment, and the CLI's sensor over Http; each then connects to the hub it was
//! assigned with `azure-iot-device` + `azure-iot-device-mqtt` and sends one message. The
//! service reads their registration states. Wrong keys, a CN that is not the registration id
//! and a device whose enrollment was deleted are refused; the audit trail names each.
//!
//! The pinned packages are in tests/interop/node (scripts/test installs them). The SDKs dial
//! 8883 (MQTT), 5671 (AMQP) and 443 (HTTPS, WebSockets) of the host name; the Node port map
//! (tests/interop/node/portmap.js) sends them to the free ports this hub listens on.

mod common;

use std::path::Path;

use common::{certhub_at, node_to_hub, start_hub_on, tmp};

/// This test's own loopback address.
const HOST: &str = "127.0.0.43";

/// The audit records of `operation` (`dps.register`, `device.connect`): (target, outcome,
/// detail).
fn audited(d: &Path, data: &Path, operation: &str) -> Vec<(String, String, String)> {
    let log = certhub_at(d, data, &["audit", "list", "--json", "--top", "1000"]).ok();
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    log.as_array()
        .expect("array")
        .iter()
        .filter(|r| r["operation"] == operation)
        .map(|r| {
            (
                r["target"].as_str().unwrap_or("").to_string(),
                r["outcome"].as_str().unwrap_or("").to_string(),
                r["detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn node_provisioning_sdks() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub_on(&data, HOST, &[]);
    let hub = |args: &[&str]| certhub_at(d, &data, args).ok();
    let stdout = common::run_provisioning_script(
        d,
        &data,
        HOST,
        node_to_hub(&hub_process, common::NODE_PROVISIONING_PACKAGES),
    );
    for line in [
        "ok: createOrUpdateEnrollmentGroup updates widgets with its etag (If-Match)",
        "ok: an update with the stale etag is refused",
        "ok: every individual enrollment comes back exactly once",
        "ok: every group comes back exactly once",
        "ok: the bulk create succeeds",
        "ok: the bulk delete succeeds",
        "ok: smart-x-widget-0001 registers over Mqtt through the group",
        "ok: smart-x-widget-0002 registers over MqttWs through the group",
        "ok: smart-x-widget-0003 registers over Http through the group",
        "ok: smart-x-widget-0004 registers over Amqp through the group",
        "ok: smart-x-widget-0005 registers over AmqpWs through the group",
        "ok: sdk-sensor-mqtt registers over Mqtt with its key",
        "ok: sdk-sensor-ws registers over MqttWs with its key",
        "ok: sdk-sensor-http registers over Http with its key",
        "ok: sdk-sensor-amqp registers over Amqp with its key",
        "ok: sdk-sensor-amqpws registers over AmqpWs with its key",
        "ok: sdk-sensor-amqp with a wrong key is refused over Amqp",
        "ok: sdk-sensor-amqpws with a wrong key is refused over AmqpWs",
        "ok: cli-sensor registers over Http",
        "ok: the hub's service API reads sensor-node-http's message",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "`{line}` expected:\n{stdout}"
        );
    }

    // The audit trail: every registration accepted over the transport it came by, and each
    // refusal by its reason.
    let records = audited(d, &data, "dps.register");
    for (id, transport) in [
        ("smart-x-widget-0001", "mqtt"),
        ("smart-x-widget-0002", "mqtt-ws"),
        ("smart-x-widget-0003", "https"),
        ("smart-x-widget-0004", "amqp"),
        ("smart-x-widget-0005", "amqp-ws"),
        ("sdk-sensor-mqtt", "mqtt"),
        ("sdk-sensor-ws", "mqtt-ws"),
        ("sdk-sensor-http", "https"),
        ("sdk-sensor-amqp", "amqp"),
        ("sdk-sensor-amqpws", "amqp-ws"),
        ("cli-sensor", "https"),
    ] {
        let target = format!("registrations/{id}");
        assert!(
            records.iter().any(|(t, o, detail)| t == &target
                && o == "ok"
                && detail.ends_with(&format!("over {transport}"))),
            "{target} accepted over {transport}: {records:#?}"
        );
    }
    for (id, outcome, transport) in [
        ("sdk-sensor-mqtt", "bad-token", "mqtt"),
        ("sdk-sensor-ws", "bad-token", "mqtt-ws"),
        ("sdk-sensor-http", "bad-token", "https"),
        ("sdk-sensor-amqp", "bad-token", "amqp"),
        ("sdk-sensor-amqpws", "bad-token", "amqp-ws"),
        ("someone-else", "cn-mismatch", "https"),
        ("sdk-sensor-ws", "no-enrollment", "mqtt-ws"),
    ] {
        let target = format!("registrations/{id}");
        assert!(
            records.iter().any(|(t, o, detail)| t == &target
                && o == outcome
                && detail.ends_with(&format!("over {transport}"))),
            "{target} {outcome} over {transport} expected: {records:#?}"
        );
    }
    // Each device connected to the hub it was assigned, over MQTT (azure-iot-device-mqtt), by
    // the credential its enrollment gave it.
    let connects = audited(d, &data, "device.connect");
    for (device, how) in [
        ("smart-x-widget-0001", "via x509-ca (CA company-x)"),
        ("smart-x-widget-0002", "via x509-ca (CA company-x)"),
        ("smart-x-widget-0003", "via x509-ca (CA company-x)"),
        ("smart-x-widget-0004", "via x509-ca (CA company-x)"),
        ("smart-x-widget-0005", "via x509-ca (CA company-x)"),
        ("sensor-node-mqtt", "via device-sas"),
        ("sensor-node-ws", "via device-sas"),
        ("sensor-node-http", "via device-sas"),
        ("sensor-node-amqp", "via device-sas"),
        ("sensor-node-amqpws", "via device-sas"),
        ("cli-sensor-device", "via device-sas"),
    ] {
        let target = format!("devices/{device}");
        let how = format!("{device} {how} over mqtt;");
        assert!(
            connects
                .iter()
                .any(|(t, o, detail)| t == &target && o == "ok" && detail.starts_with(&how)),
            "{target}: `{how}` expected: {connects:#?}"
        );
    }
    // The registrations as the operator lists them: the CLI's sensor, assigned; the one whose
    // state the script deleted (sdk-sensor-http) is gone.
    let listed = hub(&["dps", "registrations"]).stdout;
    assert!(
        listed.contains(&format!(
            "cli-sensor\tassigned\t{HOST}\tcli-sensor-device\t"
        )),
        "{listed}"
    );
    assert!(!listed.contains("sdk-sensor-http\t"), "{listed}");
}
