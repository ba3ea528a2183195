//! The HTTPS device API on the 443 listener with curl as the device: telemetry from an X.509
//! widget (its chain in the TLS handshake, no Authorization header) and from a SAS device
//! (`Authorization: SharedAccessSignature ...`), single and batch; refusals answered 401 with
//! the reason in the audit trail, as on 8883; an oversize body answered 413, storing nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::{certhub_at, s};

const ID: &str = "smart-x-widget-0001";

/// `curl` to the hub's 443 listener; returns (HTTP status, body).
fn curl(hub: &common::HubProcess, data: &Path, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("https://localhost:{}{path}", hub.https_port());
    let ca = data.join("tls/server-ca.pem");
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", s(&ca)])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The telemetry of `device`, read back with `certhub messages tail` (one line a message:
/// `#SEQ TIME WHO PROPERTIES SYSTEM-PROPERTIES BODY`), as JSON.
fn events(dir: &Path, data: &Path, device: &str) -> Vec<serde_json::Value> {
    let run = certhub_at(
        dir,
        data,
        &["messages", "tail", "--device", device, "--idle-exit", "1"],
    );
    run.ok()
        .stdout
        .lines()
        .map(|l| {
            let parts: Vec<&str> = l.splitn(6, ' ').collect();
            assert_eq!(parts.len(), 6, "{l}");
            let who = parts[2].split_once('/');
            serde_json::json!({
                "deviceId": who.map_or(parts[2], |w| w.0),
                "moduleId": who.map(|w| w.1),
                "properties": serde_json::from_str::<serde_json::Value>(parts[3]).expect("properties"),
                "systemProperties": serde_json::from_str::<serde_json::Value>(parts[4]).expect("system"),
                "body": parts[5],
            })
        })
        .collect()
}

fn last_connection(dir: &Path, data: &Path, id: &str) -> serde_json::Value {
    let run = certhub_at(
        dir,
        data,
        &["audit", "connections", "--device", id, "--json"],
    )
    .ok();
    let log: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    log[0].clone()
}

#[test]
fn devices_send_telemetry_over_https() {
    let t = common::tmp();
    let dir = t.path();
    let data = dir.join("data");
    let hub = common::start_hub(&data);
    common::enroll_widget(dir, &data);
    let widget = dir.join("pki/devices").join(ID);
    let (chain, key) = (widget.join("chain.pem"), widget.join("key.pem"));
    let x509 = ["--cert", s(&chain), "--key", s(&key)];
    let events_path = format!("/devices/{ID}/messages/events?api-version=2021-04-12");

    // One message, its properties in headers, the body chunked without a Content-Type (as
    // the Node SDK sends it).
    let mut args = x509.to_vec();
    args.extend([
        "-X",
        "POST",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "iothub-app-temperature: 21.5",
        "-H",
        "IoTHub-MessageId: m-1",
        "-H",
        "iothub-contenttype: text/plain",
        "--data-binary",
        "hello over https",
    ]);
    let (code, body) = curl(&hub, &data, &events_path, &args);
    assert_eq!(code, 204, "{body}");

    // A batch of two.
    let batch = r#"[{"body": "b25l", "properties": {"iothub-app-n": "1"}}, {"body": "dHdv", "properties": {"iothub-app-n": "2", "iothub-messageid": "m-3"}}]"#;
    let mut args = x509.to_vec();
    args.extend([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/vnd.microsoft.iothub.json",
        "--data-binary",
        batch,
    ]);
    let (code, body) = curl(&hub, &data, &events_path, &args);
    assert_eq!(code, 204, "{body}");

    let got = events(dir, &data, ID);
    let bodies: Vec<&str> = got.iter().filter_map(|e| e["body"].as_str()).collect();
    assert_eq!(bodies, ["hello over https", "one", "two"], "{got:#?}");
    assert_eq!(got[0]["properties"]["temperature"], "21.5", "{got:#?}");
    assert_eq!(got[0]["systemProperties"]["messageId"], "m-1", "{got:#?}");
    assert_eq!(
        got[0]["systemProperties"]["contentType"], "text/plain",
        "{got:#?}"
    );
    assert_eq!(got[2]["properties"]["n"], "2", "{got:#?}");
    assert_eq!(got[2]["systemProperties"]["messageId"], "m-3", "{got:#?}");
    // The requests count as the device's activity (written by the bookkeeper, batched).
    let mut last = serde_json::Value::Null;
    for _ in 0..50 {
        let shown = certhub_at(dir, &data, &["device", "show", "--id", ID]).ok();
        let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
        last = shown["lastActivityTime"].clone();
        if last != "0001-01-01T00:00:00Z" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_ne!(
        last, "0001-01-01T00:00:00Z",
        "lastActivityTime after HTTPS requests"
    );

    // The widget's certificate for another device's path: refused as on 8883, named.
    certhub_at(
        dir,
        &data,
        &[
            "device",
            "create",
            "--id",
            "widget-other",
            "--auth-method",
            "x509-ca",
        ],
    )
    .ok();
    let mut args = x509.to_vec();
    args.extend(["-X", "POST", "--data-binary", "not mine"]);
    let (code, body) = curl(
        &hub,
        &data,
        "/devices/widget-other/messages/events?api-version=2021-04-12",
        &args,
    );
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("IotHubUnauthorizedAccess") || body.contains("Unauthorized"),
        "{body}"
    );
    assert_eq!(
        last_connection(dir, &data, "widget-other")["outcome"],
        "cn-mismatch"
    );
    // No certificate and no token: refused too.
    let (code, _) = curl(
        &hub,
        &data,
        &events_path,
        &["-X", "POST", "--data-binary", "x"],
    );
    assert_eq!(code, 401);

    // Over 256 KB: 413, nothing stored.
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![b'x'; 300 * 1024]).expect("write");
    let at_big = format!("@{}", s(&big));
    let mut args = x509.to_vec();
    args.extend(["-X", "POST", "--data-binary", &at_big]);
    let (code, body) = curl(&hub, &data, &events_path, &args);
    assert_eq!(code, 413, "{body}");
    assert_eq!(events(dir, &data, ID).len(), 3);

    // A SAS device with a token in the Authorization header, and a module of it.
    let sas = certhub_at(dir, &data, &["device", "create", "--id", "widget-sas"]).ok();
    assert!(sas.stdout.contains("primaryKey"), "{sas}");
    certhub_at(
        dir,
        &data,
        &["device", "create", "--id", "widget-sas", "--module", "m1"],
    )
    .ok();
    let token = certhub_at(dir, &data, &["device", "token", "--id", "widget-sas"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let auth = format!("Authorization: {token}");
    let (code, body) = curl(
        &hub,
        &data,
        "/devices/widget-sas/messages/events?api-version=2021-04-12",
        &["-X", "POST", "-H", &auth, "--data-binary", "by SAS"],
    );
    assert_eq!(code, 204, "{body}");
    assert_eq!(events(dir, &data, "widget-sas")[0]["body"], "by SAS");
    let module_token = certhub_at(
        dir,
        &data,
        &["device", "token", "--id", "widget-sas", "--module", "m1"],
    )
    .ok()
    .stdout
    .trim()
    .to_string();
    let module_auth = format!("Authorization: {module_token}");
    let (code, body) = curl(
        &hub,
        &data,
        "/devices/widget-sas/modules/m1/messages/events?api-version=2021-04-12",
        &[
            "-X",
            "POST",
            "-H",
            &module_auth,
            "--data-binary",
            "by the module",
        ],
    );
    assert_eq!(code, 204, "{body}");
    let got = events(dir, &data, "widget-sas");
    assert_eq!(got[1]["moduleId"], "m1", "{got:#?}");
    // The device's token does not open its module's path.
    let (code, _) = curl(
        &hub,
        &data,
        "/devices/widget-sas/modules/m1/messages/events?api-version=2021-04-12",
        &["-X", "POST", "-H", &auth, "--data-binary", "x"],
    );
    assert_eq!(code, 401);
    // Once device SAS is switched off, the same token is refused, named.
    certhub_at(dir, &data, &["hub", "set", "--disable-device-sas", "true"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, _) = curl(
        &hub,
        &data,
        "/devices/widget-sas/messages/events?api-version=2021-04-12",
        &["-X", "POST", "-H", &auth, "--data-binary", "x"],
    );
    assert_eq!(code, 401);
    assert_eq!(
        last_connection(dir, &data, "widget-sas")["outcome"],
        "sas-disabled"
    );
}

/// `curl -i`: (status, headers lower-cased, body).
fn curl_i(
    hub: &common::HubProcess,
    data: &Path,
    path: &str,
    extra: &[&str],
) -> (u16, std::collections::HashMap<String, String>, String) {
    let mut args = vec!["-i"];
    args.extend_from_slice(extra);
    let (code, text) = curl(hub, data, path, &args);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (code, headers, body.to_string())
}

#[test]
fn devices_receive_c2d_over_https_under_a_lock() {
    let t = common::tmp();
    let dir = t.path();
    let data = dir.join("data");
    let hub = common::start_hub(&data);
    common::enroll_widget(dir, &data);
    let widget = dir.join("pki/devices").join(ID);
    let (chain, key) = (widget.join("chain.pem"), widget.join("key.pem"));
    let x509 = ["--cert", s(&chain), "--key", s(&key)];
    let send = |body: &str, id: &str| {
        certhub_at(
            dir,
            &data,
            &[
                "c2d",
                "send",
                "--device",
                ID,
                "--body",
                body,
                "--message-id",
                id,
                "--property",
                "colour=blue",
                "--ack",
                "full",
            ],
        )
        .ok();
    };
    // Node spells the path in lower case; both spellings answer.
    let receive = format!("/devices/{ID}/messages/devicebound?api-version=2021-04-12");
    let (code, _, _) = curl_i(&hub, &data, &receive, &x509);
    assert_eq!(code, 204, "an empty queue answers 204");

    send("first", "c2d-1");
    send("second", "c2d-2");
    let (code, h, body) = curl_i(&hub, &data, &receive, &x509);
    assert_eq!(code, 200, "{h:?}");
    assert_eq!(body, "first");
    assert_eq!(h["iothub-messageid"], "c2d-1", "{h:?}");
    assert_eq!(h["iothub-app-colour"], "blue", "{h:?}");
    assert_eq!(h["iothub-deliverycount"], "1", "{h:?}");
    assert_eq!(h["iothub-ack"], "full", "{h:?}");
    let etag = h["etag"].clone();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a quoted ETag: {etag}"
    );
    let token = etag.trim_matches('"').to_string();

    // Locked: the next receive gets the second message, not the first again.
    let (code, h2, body) = curl_i(&hub, &data, &receive, &x509);
    assert_eq!((code, body.as_str()), (200, "second"), "{h2:?}");
    let token2 = h2["etag"].trim_matches('"').to_string();

    // Abandon the first: it comes again, delivered twice now.
    let abandon =
        format!("/devices/{ID}/messages/deviceBound/{token}/abandon?api-version=2021-04-12");
    let mut args = x509.to_vec();
    args.extend(["-X", "POST"]);
    let (code, _, body) = curl_i(&hub, &data, &abandon, &args);
    assert_eq!(code, 204, "{body}");
    let (code, h, body) = curl_i(&hub, &data, &receive, &x509);
    assert_eq!((code, body.as_str()), (200, "first"));
    assert_eq!(h["iothub-deliverycount"], "2", "{h:?}");
    let token = h["etag"].trim_matches('"').to_string();

    // The old token is stale: 412, the message stays locked to the new one.
    let stale = format!("/devices/{ID}/messages/deviceBound/{token2}x?api-version=2021-04-12");
    let mut args = x509.to_vec();
    args.extend(["-X", "DELETE"]);
    let (code, _, body) = curl_i(&hub, &data, &stale, &args);
    assert_eq!(code, 412, "{body}");
    assert!(body.contains("DeviceMessageLockLost"), "{body}");

    // Complete the first, reject the second (its token, with ?reject).
    let complete = format!("/devices/{ID}/messages/deviceBound/{token}?api-version=2021-04-12");
    let (code, _, body) = curl_i(&hub, &data, &complete, &args);
    assert_eq!(code, 204, "{body}");
    let reject =
        format!("/devices/{ID}/messages/deviceBound/{token2}?api-version=2021-04-12&reject");
    let (code, _, body) = curl_i(&hub, &data, &reject, &args);
    assert_eq!(code, 204, "{body}");
    let (code, _, _) = curl_i(&hub, &data, &receive, &x509);
    assert_eq!(code, 204, "both left the queue");
    // Completing again: the lock is gone.
    let (code, _, _) = curl_i(&hub, &data, &complete, &args);
    assert_eq!(code, 412);

    // The service receives the feedback: Success for the first, Rejected for the second.
    let feedback = certhub_at(dir, &data, &["c2d", "feedback"]).ok();
    assert!(feedback.stdout.contains("Success"), "{feedback}");
    assert!(feedback.stdout.contains("Rejected"), "{feedback}");

    // Another device's certificate cannot settle the widget's messages.
    send("third", "c2d-3");
    let (code, h, _) = curl_i(&hub, &data, &receive, &x509);
    assert_eq!(code, 200);
    let token = h["etag"].trim_matches('"').to_string();
    certhub_at(dir, &data, &["device", "create", "--id", "widget-sas"]).ok();
    let other = certhub_at(dir, &data, &["device", "token", "--id", "widget-sas"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let auth = format!("Authorization: {other}");
    let theirs = format!("/devices/widget-sas/messages/deviceBound/{token}?api-version=2021-04-12");
    let (code, _, body) = curl_i(&hub, &data, &theirs, &["-X", "DELETE", "-H", &auth]);
    assert_eq!(code, 412, "{body}");
    let (code, _, _) = curl_i(
        &hub,
        &data,
        &complete.replace(
            &complete,
            &format!("/devices/{ID}/messages/deviceBound/{token}?api-version=2021-04-12"),
        ),
        &args,
    );
    assert_eq!(code, 204, "the widget's own token still settles it");
}
