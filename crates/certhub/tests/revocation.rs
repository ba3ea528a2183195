//! Revocation by CRL against a real `certhub serve` (issue 16): the four-level chain made by
//! `certhub pki`, Python azure-iot-device SDK widgets connected over MQTT/TLS, a widget revoked
//! in Technician-Z's CRL (`certhub pki crl`, uploaded through the service API) and then
//! Technician-Z itself in Factory-Y's CRL (`openssl ca -gencrl`, uploaded with
//! `certhub ca crl upload`). The revoked devices' live sessions close within a second, they
//! are refused afterwards with `certificate-revoked` in the audit trail, and Technician-W's
//! branch under Factory-Y keeps working. Bad CRL uploads are refused with what is wrong.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::{
    Pub, certhub, certhub_at, enroll_company_x, is_connected, mosquitto_pub, openssl, publishes,
    python_to_hub, s, start_hub_on, subscribe, tmp, wait_until,
};

const HOST: &str = "127.0.0.112";

/// `certhub pki` words, for command lines without spaces inside an argument.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn azure_sdk_widgets_are_dropped_and_refused_when_a_crl_revokes_them() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub_on(&data, HOST, &[]);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    let pki = |line: &str| certhub(d, &words(line)).ok();

    fleet(d, &data);

    // Technician-Z revokes widget-0001 (certhub pki crl).
    pki(
        "pki revoke --issuer pki/technician-z --cert pki/devices/smart-x-widget-0001/cert.pem --reason key-compromise",
    );
    pki("pki crl --issuer pki/technician-z");
    // Factory-Y revokes Technician-Z with openssl's own CA tool.
    factory_y_openssl_ca(d, "1000");
    openssl(
        d,
        &words(
            "ca -config factory-y.cnf -revoke pki/technician-z/cert.pem -crl_reason keyCompromise",
        ),
    )
    .ok();
    openssl(
        d,
        &words("ca -config factory-y.cnf -gencrl -out factory-y.crl"),
    )
    .ok();

    drive(
        &hub_process,
        d,
        &data,
        "revocation.py",
        &[
            ("CERTHUB_CRL", &d.join("pki/technician-z/crl.pem")),
            (
                "CERTHUB_ISSUER_CHAIN",
                &d.join("pki/technician-z/chain.pem"),
            ),
        ],
        "all revocation checks passed",
        |line, stdin| {
            (line == "READY-FOR-FACTORY-CRL").then(|| {
                writeln!(stdin, "go").expect("write");
                let up = hub(
                    "ca crl upload --name company-x --file factory-y.crl --issuer-chain pki/factory-y/chain.pem",
                )
                .ok();
                writeln!(stdin, "done").expect("write");
                up.stdout
            })
        },
    );

    // Both CRLs are held, by issuer.
    let list: serde_json::Value =
        serde_json::from_str(&hub("ca crl list --name company-x").ok().stdout).expect("json");
    let held: Vec<(String, String)> = list["value"]
        .as_array()
        .expect("array")
        .iter()
        .map(|c| {
            (
                c["issuer"].as_str().unwrap_or("").to_string(),
                c["number"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(held.len(), 2, "{list:#}");
    assert!(
        held.iter()
            .any(|(i, n)| i.starts_with("CN=Factory-Y") && n == "4096"),
        "openssl's crlnumber 1000 (hex) is 4096: {held:?}"
    );

    // The operator sees each refusal and each closed session with its reason.
    let records = audit(d, &data);
    for (target, detail) in [
        (
            "devices/smart-x-widget-0001",
            "the leaf \"CN=smart-x-widget-0001\"",
        ),
        (
            "devices/smart-x-widget-0002",
            "the intermediate \"CN=Technician-Z CA, O=Company-X\"",
        ),
        (
            "devices/smart-x-widget-0003",
            "the intermediate \"CN=Technician-Z CA, O=Company-X\"",
        ),
    ] {
        assert!(
            has(
                &records,
                "device.connect",
                target,
                "certificate-revoked",
                detail
            ),
            "{target}: no certificate-revoked refusal naming {detail}: {records:#?}"
        );
        assert!(
            has(
                &records,
                "device.disconnect",
                target,
                "closed",
                "certificate-revoked"
            ),
            "{target}: its session was not closed as revoked: {records:#?}"
        );
    }
    assert!(
        has(
            &records,
            "device.connect",
            "devices/smart-x-widget-0001",
            "certificate-revoked",
            "reason key-compromise"
        ),
        "the reason code is in the audit detail: {records:#?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["target"] == "devices/widget-w1" && r["outcome"] == "certificate-revoked"),
        "Technician-W's widget was never refused: {records:#?}"
    );
}

/// Blocking Technician-Z without a CRL: `ca impact` first shows exactly the widgets that last
/// authenticated through it (and which are connected), then `ca block` drops exactly those
/// connected, refuses the others, and leaves Technician-W's branch alone; `ca unblock` lets
/// them back.
#[test]
fn ca_impact_shows_the_blast_radius_then_a_block_drops_exactly_those() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub_on(&data, HOST, &[]);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    fleet(d, &data);
    let technician = "--cert pki/technician-z/cert.pem";
    let mut impact_before = serde_json::Value::Null;
    let mut blocked = serde_json::Value::Null;
    drive(
        &hub_process,
        d,
        &data,
        "blocking.py",
        &[],
        "all blocking checks passed",
        |line, stdin| match line {
            "READY-FOR-BLOCK" => {
                let out = hub(&format!("ca impact {technician}")).ok().stdout;
                impact_before = serde_json::from_str(&out).expect("json");
                writeln!(stdin, "go").expect("write");
                let out = hub(&format!("ca block {technician} --note leaked-key"))
                    .ok()
                    .stdout;
                writeln!(stdin, "done").expect("write");
                blocked = serde_json::from_str(&out).expect("json");
                None
            }
            "READY-FOR-UNBLOCK" => {
                hub(&format!("ca unblock {technician}")).ok();
                writeln!(stdin, "go").expect("write");
                None
            }
            _ => None,
        },
    );
    // The blast radius named exactly Technician-Z's widgets, two of them connected.
    let who: Vec<(String, bool)> = impact_before["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .map(|i| {
            (
                i["deviceId"].as_str().unwrap_or("").to_string(),
                i["connected"] == true,
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("smart-x-widget-0001".to_string(), true),
            ("smart-x-widget-0002".to_string(), true),
            ("smart-x-widget-0003".to_string(), false),
        ],
        "{impact_before:#}"
    );
    assert_eq!(impact_before["devices"], 3, "{impact_before:#}");
    assert_eq!(impact_before["connected"], 2, "{impact_before:#}");
    assert_eq!(impact_before["blocked"], false, "{impact_before:#}");
    assert_eq!(blocked["devices"], 3, "{blocked:#}");
    assert_eq!(blocked["closed"], 2, "{blocked:#}");

    let records = audit(d, &data);
    for target in ["devices/smart-x-widget-0001", "devices/smart-x-widget-0002"] {
        assert!(
            has(
                &records,
                "device.disconnect",
                target,
                "closed",
                "certificate-blocked"
            ),
            "{target}: {records:#?}"
        );
    }
    assert!(
        has(
            &records,
            "device.connect",
            "devices/smart-x-widget-0003",
            "certificate-blocked",
            "leaked-key"
        ),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["operation"] == "ca.block" && r["outcome"] == "ok"),
        "{records:#?}"
    );
    // Lifted: nothing is blocked; a block nobody presented is allowed, with a note.
    let list: serde_json::Value =
        serde_json::from_str(&hub("ca blocks").ok().stdout).expect("json");
    assert_eq!(list["value"].as_array().map(Vec::len), Some(0), "{list:#}");
    let fresh = hub(&format!("ca block --thumbprint {}", "ab".repeat(32))).ok();
    assert!(
        fresh.stdout.contains("no registered device"),
        "{}",
        fresh.stdout
    );
    let e = hub(&format!("ca unblock --thumbprint {}", "cd".repeat(32))).code(2);
    assert!(e.stderr.contains("is not blocked"), "{}", e.stderr);
    let e = hub("ca block --thumbprint 0123").code(2);
    assert!(e.stderr.contains("64 hex digits"), "{}", e.stderr);
}

/// Bad CRL uploads are refused with what is wrong, and nothing held is lost.
#[test]
fn bad_crl_uploads_are_refused_and_what_is_held_stays() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let _hub_process = start_hub_on(&data, "127.0.0.113", &[]);
    enroll_company_x(d, &data, 1);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    let pki = |line: &str| certhub(d, &words(line)).ok();
    pki("pki revoke --issuer pki/technician-z --cert pki/devices/smart-x-widget-0001/cert.pem");
    pki("pki crl --issuer pki/technician-z");
    std::fs::copy(d.join("pki/technician-z/crl.pem"), d.join("first.pem")).expect("copy");

    // Without the issuer chain, a CRL of an intermediate cannot be checked.
    let e = hub("ca crl upload --name company-x --file first.pem").code(2);
    assert!(
        e.stderr.contains("not by the CA") && e.stderr.contains("issuerChain"),
        "{}",
        e.stderr
    );
    hub(
        "ca crl upload --name company-x --file first.pem --issuer-chain pki/technician-z/chain.pem",
    )
    .ok();
    // The same CRL again changes nothing.
    hub(
        "ca crl upload --name company-x --file first.pem --issuer-chain pki/technician-z/chain.pem",
    )
    .ok();

    // Another hierarchy's CA with the same names signs a CRL: refused by its signature.
    pki("pki demo supply-chain --out other --devices 1");
    pki("pki crl --issuer other/technician-z");
    let e = hub(
        "ca crl upload --name company-x --file other/technician-z/crl.pem --issuer-chain other/technician-z/chain.pem",
    )
    .code(2);
    assert!(e.stderr.contains("does not verify"), "{}", e.stderr);

    // An older CRL after a newer one; a CRL for an unregistered CA; not a CRL at all.
    pki("pki crl --issuer pki/technician-z");
    hub("ca crl upload --name company-x --file pki/technician-z/crl.pem --issuer-chain pki/technician-z/chain.pem")
        .ok();
    let e = hub(
        "ca crl upload --name company-x --file first.pem --issuer-chain pki/technician-z/chain.pem",
    )
    .code(2);
    assert!(e.stderr.contains("older than number"), "{}", e.stderr);
    let e = hub("ca crl upload --name nobody --file first.pem").code(2);
    assert!(e.stderr.contains("no CA certificate named"), "{}", e.stderr);
    let e = hub("ca crl upload --name company-x --file pki/company-x/cert.pem").code(2);
    assert!(e.stderr.contains("CRL"), "{}", e.stderr);
    std::fs::write(d.join("truncated.pem"), {
        let pem = std::fs::read_to_string(d.join("first.pem")).expect("read");
        pem[..pem.len() / 2].to_string()
    })
    .expect("write");
    let e = hub("ca crl upload --name company-x --file truncated.pem").code(2);
    assert!(
        e.stderr.contains("PEM") || e.stderr.contains("malformed"),
        "{}",
        e.stderr
    );

    // The newest CRL is still held; deleting it, then deleting it again.
    let list: serde_json::Value =
        serde_json::from_str(&hub("ca crl list --name company-x").ok().stdout).expect("json");
    let held = list["value"].as_array().expect("array");
    assert_eq!(held.len(), 1, "{list:#}");
    assert_eq!(held[0]["number"], "2", "{list:#}");
    let key = held[0]["issuerKey"].as_str().expect("key").to_string();
    hub(&format!(
        "ca crl delete --name company-x --issuer-key {key}"
    ))
    .ok();
    let e = hub(&format!(
        "ca crl delete --name company-x --issuer-key {key}"
    ))
    .code(2);
    assert!(e.stderr.contains("no CRL of issuer key"), "{}", e.stderr);
    let e = hub("ca crl delete --name company-x --issuer-key nothex").code(2);
    assert!(e.stderr.contains("64 hex digits"), "{}", e.stderr);
}

/// The demo supply chain with widgets 0001-0003 under Technician-Z, and Technician-W (another
/// branch under Factory-Y) with widget-w1; Company-X registered as verified and every widget
/// registered as a CA-authenticated device.
fn fleet(d: &Path, data: &Path) {
    let hub = |line: &str| certhub_at(d, data, &words(line));
    let pki = |line: &str| certhub(d, &words(line)).ok();
    enroll_company_x(d, data, 3);
    // Technician-W: another branch under Factory-Y, with its own widget.
    pki("pki request --subject CN=Technician-W --out pki/technician-w");
    pki(
        "pki sign --issuer pki/factory-y --csr pki/technician-w/request.csr --profile intermediate --out pki/technician-w",
    );
    pki("pki request --subject CN=widget-w1 --out pki/devices/widget-w1");
    pki(
        "pki sign --issuer pki/technician-w --csr pki/devices/widget-w1/request.csr --profile device --out pki/devices/widget-w1",
    );
    for id in [
        "smart-x-widget-0001",
        "smart-x-widget-0002",
        "smart-x-widget-0003",
        "widget-w1",
    ] {
        hub(&format!("device create --id {id} --auth-method x509-ca")).ok();
    }
}

/// Factory-Y as an `openssl ca` (config `factory-y.cnf` in `d`), its next CRL number `first`
/// (hex, as openssl keeps it).
fn factory_y_openssl_ca(d: &Path, first: &str) {
    std::fs::write(
        d.join("factory-y.cnf"),
        "[ca]\ndefault_ca = fy\n[fy]\ndatabase = fy-index.txt\ncrlnumber = fy-crlnumber\n\
         certificate = pki/factory-y/cert.pem\nprivate_key = pki/factory-y/key.pem\n\
         default_md = sha256\ndefault_crl_days = 7\n",
    )
    .expect("write");
    std::fs::write(d.join("fy-index.txt"), "").expect("write");
    std::fs::write(d.join("fy-crlnumber"), format!("{first}\n")).expect("write");
}

/// Runs a Python script against the hub; `on_line` answers the lines it prints (the driver's
/// side of each step) and may write to its stdin. Returns the transcript; the script must end
/// with `done_line`.
fn drive(
    hub_process: &common::HubProcess,
    d: &Path,
    data: &Path,
    script: &str,
    env: &[(&str, &Path)],
    done_line: &str,
    mut on_line: impl FnMut(&str, &mut dyn Write) -> Option<String>,
) -> String {
    let cs = certhub_at(d, data, &["hub", "connection-string"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop")
        .join(script);
    let mut cmd = python_to_hub(hub_process);
    cmd.arg(&script)
        .current_dir(d)
        .env("CERTHUB_HOST", HOST)
        .env("CERTHUB_CA", data.join("tls/server-ca.pem"))
        .env("REQUESTS_CA_BUNDLE", data.join("tls/server-ca.pem"))
        .env("CERTHUB_CONNECTION_STRING", &cs)
        .env("CERTHUB_DIR", d.join("pki"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut transcript = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(more) = on_line(&line, &mut stdin) {
            transcript.push_str(&more);
        }
    }
    let out = child.wait_with_output().expect("python ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && transcript.contains(done_line),
        "{} failed\n--- stdout\n{transcript}\n--- stderr\n{stderr}",
        script.display()
    );
    transcript
}

/// The audit records, as JSON.
fn audit(d: &Path, data: &Path) -> Vec<serde_json::Value> {
    let log = certhub_at(d, data, &["audit", "list", "--json", "--top", "400"]).ok();
    let log: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
    log.as_array().expect("array").clone()
}

fn has(records: &[serde_json::Value], op: &str, target: &str, outcome: &str, detail: &str) -> bool {
    records.iter().any(|r| {
        r["operation"] == op
            && r["target"] == target
            && r["outcome"] == outcome
            && r["detail"].as_str().unwrap_or("").contains(detail)
    })
}

/// A CRL past its nextUpdate: kept counting within the grace period (a day by default), then,
/// under the default fail-closed policy, the certificates it covers are refused as
/// `crl-expired` until a newer CRL comes; `fail-open` keeps admitting them. mosquitto_pub is
/// the device.
#[test]
fn a_stale_crl_fails_closed_after_its_grace_or_open_when_told() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = common::start_hub(&data);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    enroll_company_x(d, &data, 1);
    hub("device create --id smart-x-widget-0001 --auth-method x509-ca").ok();
    // Technician-Z's CRL, revoking nothing, due an hour ago (openssl sets the dates).
    let stamp = |offset: i64| {
        let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset);
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    };
    std::fs::write(
        d.join("tz.cnf"),
        "[ca]\ndefault_ca = tz\n[tz]\ndatabase = tz-index.txt\ncrlnumber = tz-crlnumber\n\
         certificate = pki/technician-z/cert.pem\nprivate_key = pki/technician-z/key.pem\n\
         default_md = sha256\n",
    )
    .expect("write");
    std::fs::write(d.join("tz-index.txt"), "").expect("write");
    std::fs::write(d.join("tz-crlnumber"), "01\n").expect("write");
    openssl(
        d,
        &[
            "ca",
            "-config",
            "tz.cnf",
            "-gencrl",
            "-crl_lastupdate",
            &stamp(-7200),
            "-crl_nextupdate",
            &stamp(-3600),
            "-out",
            "stale.crl",
        ],
    )
    .ok();
    let held = hub(
        "ca crl upload --name company-x --file stale.crl --issuer-chain pki/technician-z/chain.pem",
    )
    .ok();
    assert!(held.stdout.contains("\"stale\": true"), "{}", held.stdout);
    let ca = data.join("tls/server-ca.pem");
    let publish = || {
        mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&ca),
                widget: "pki/devices/smart-x-widget-0001",
                client_id: "smart-x-widget-0001",
                topic: "devices/smart-x-widget-0001/messages/events/",
                message: "t",
                extra: &[],
            },
        )
        .status
        .success()
    };
    let policy = hub("ca crl policy --name company-x").ok();
    assert!(
        policy.stdout.contains("\"staleCrl\": \"fail-closed\"")
            && policy.stdout.contains("\"graceHours\": 24"),
        "{}",
        policy.stdout
    );
    assert!(
        publish(),
        "within the day's grace the stale CRL still admits"
    );
    hub("ca crl policy --name company-x --stale fail-closed --grace-hours 0").ok();
    assert!(!publish(), "past the grace, fail-closed refuses");
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "device.connect",
            "devices/smart-x-widget-0001",
            "crl-expired",
            "fail-closed"
        ),
        "{records:#?}"
    );
    hub("ca crl policy --name company-x --stale fail-open").ok();
    assert!(publish(), "fail-open admits");
    let e = hub("ca crl policy --name company-x --stale fail-open --grace-hours 5").code(2);
    assert!(e.stderr.contains("fail-closed only"), "{}", e.stderr);
    let e = hub("ca crl policy --name company-x --stale fail-closed --grace-hours 9000").code(2);
    assert!(e.stderr.contains("0 to 8760"), "{}", e.stderr);

    // On the clock: a newer CRL due in 8 s, no grace; a connected widget is closed once it is
    // overdue, with no new CRL or policy change to trigger it.
    openssl(
        d,
        &[
            "ca",
            "-config",
            "tz.cnf",
            "-gencrl",
            "-crl_lastupdate",
            &stamp(-60),
            "-crl_nextupdate",
            &stamp(8),
            "-out",
            "due-soon.crl",
        ],
    )
    .ok();
    hub("ca crl upload --name company-x --file due-soon.crl --issuer-chain pki/technician-z/chain.pem")
        .ok();
    hub("ca crl policy --name company-x --stale fail-closed --grace-hours 0").ok();
    let mut sub = subscribe(
        d,
        hub_process.mqtt_port,
        &ca,
        "pki/devices/smart-x-widget-0001",
        "smart-x-widget-0001",
    );
    wait_until(20, "the widget connects", || {
        is_connected(d, &data, "smart-x-widget-0001")
    });
    wait_until(30, "the session closes once the CRL is overdue", || {
        sub.try_wait().expect("state").is_some()
    });
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "device.disconnect",
            "devices/smart-x-widget-0001",
            "closed",
            "crl-expired"
        ),
        "{records:#?}"
    );
}

/// A loopback webhook receiver: records each POST's X-Certhub-Signature and body; answers
/// 503 to the first request (so the hub must retry) and 204 to the rest.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = got.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let (mut line, mut length, mut signature) = (String::new(), 0usize, String::new());
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-certhub-signature:") {
                        signature = line["x-certhub-signature:".len()..].trim().to_string();
                    }
                    line.clear();
                }
                let mut body = vec![0u8; length];
                if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                    continue;
                }
                let answer: &[u8] = if n == 0 {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    kept.lock()
                        .expect("lock")
                        .push((signature, String::from_utf8_lossy(&body).into_owned()));
                    b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                };
                let _ = conn.write_all(answer);
            }
        });
        Self { port, got }
    }
}

/// Expiry: widgets issued for 3, 20 and 60 days connect (mosquitto_pub); `ca expiry` counts
/// them within 7, 30 and 90 days, lists the soonest first, and the registry shows each one's
/// `x509ExpiresAt`; `/metrics` has the counts; each widget is announced once at the horizon it
/// is in, to the audit trail and to a webhook (refused once, so retried) whose bodies carry an
/// HMAC-SHA256 that `openssl dgst -hmac` agrees with.
#[test]
fn ca_expiry_counts_widgets_by_horizon() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let receiver = Receiver::start();
    let secret = "expiry-webhook-secret-0123";
    std::fs::write(
        d.join("hub.toml"),
        format!("expiry_webhook_secret = \"{secret}\"\n"),
    )
    .expect("write");
    let hook = format!("http://127.0.0.1:{}/certhub", receiver.port);
    let config = d.join("hub.toml");
    let hub_process = common::start_hub_plus(
        &data,
        &[
            "--config",
            s(&config),
            "--expiry-check",
            "1",
            "--expiry-webhook-url",
            &hook,
        ],
    );
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    let pki = |line: &str| certhub(d, &words(line)).ok();
    enroll_company_x(d, &data, 1);
    let ca = data.join("tls/server-ca.pem");
    for (id, days) in [("widget-a", 3), ("widget-b", 20), ("widget-c", 60)] {
        pki(&format!(
            "pki request --subject CN={id} --out pki/devices/{id}"
        ));
        pki(&format!(
            "pki sign --issuer pki/technician-z --csr pki/devices/{id}/request.csr --profile device --days {days} --out pki/devices/{id}"
        ));
        hub(&format!("device create --id {id} --auth-method x509-ca")).ok();
        let widget = format!("pki/devices/{id}");
        let topic = format!("devices/{id}/messages/events/");
        let out = mosquitto_pub(
            d,
            &Pub {
                port: hub_process.mqtt_port,
                ca: s(&ca),
                widget: &widget,
                client_id: id,
                topic: &topic,
                message: "t",
                extra: &[],
            },
        );
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&hub("ca expiry").ok().stdout).expect("json");
    assert_eq!(report["devices"], 3, "{report:#}");
    assert_eq!(report["expired"], 0, "{report:#}");
    let within: Vec<(i64, i64)> = report["within"]
        .as_array()
        .expect("within")
        .iter()
        .map(|h| {
            (
                h["days"].as_i64().unwrap_or(0),
                h["devices"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(within, [(7, 1), (30, 2), (90, 3)], "{report:#}");
    let soonest: Vec<&str> = report["soonest"]
        .as_array()
        .expect("soonest")
        .iter()
        .map(|e| e["deviceId"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(soonest, ["widget-a", "widget-b", "widget-c"], "{report:#}");
    let weeks: i64 = report["weeks"]
        .as_array()
        .expect("weeks")
        .iter()
        .map(|w| w["devices"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(weeks, 3, "{report:#}");
    assert!(
        report["cas"][0]["name"] == "company-x"
            && report["cas"][0]["daysLeft"].as_i64() > Some(300),
        "{report:#}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&hub("device show --id widget-a").ok().stdout).expect("json");
    let expires = shown["x509ExpiresAt"].as_str().unwrap_or("");
    assert!(!expires.is_empty(), "{shown:#}");
    assert_eq!(expires, report["soonest"][0]["expiresAt"], "{shown:#}");

    // /metrics counts them by horizon.
    let metrics = || {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--cacert", s(&ca)])
            .arg(format!("https://{}/metrics", hub_process.host))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // (Counted every check: the one after the last widget's connection was recorded.)
    let lines = [
        "certhub_certificates_expiring{within_days=\"7\"} 1",
        "certhub_certificates_expiring{within_days=\"30\"} 2",
        "certhub_certificates_expiring{within_days=\"90\"} 3",
        "certhub_certificates_expired 0",
    ];
    wait_until(15, "the expiry gauges", || {
        let text = metrics();
        lines.iter().all(|l| text.contains(l))
    });
    // Each widget is announced once, at its horizon; the webhook got each event once.
    let delivered = || receiver.got.lock().expect("lock").clone();
    wait_until(30, "three webhook deliveries", || delivered().len() >= 3);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let got = delivered();
    let mut seen: Vec<(String, i64)> = got
        .iter()
        .map(|(_, body)| {
            let v: serde_json::Value = serde_json::from_str(body).expect("json");
            (
                v["deviceId"].as_str().unwrap_or("").to_string(),
                v["withinDays"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("widget-a".to_string(), 7),
            ("widget-b".to_string(), 30),
            ("widget-c".to_string(), 90)
        ],
        "{got:#?}"
    );
    for (signature, body) in &got {
        std::fs::write(d.join("body.json"), body).expect("write");
        let mac = openssl(d, &["dgst", "-sha256", "-hmac", secret, "-r", "body.json"])
            .ok()
            .stdout;
        let mac = mac.split_whitespace().next().unwrap_or("");
        assert_eq!(signature, &format!("sha256={mac}"), "{body}");
    }
    let records = audit(d, &data);
    for (target, outcome) in [
        ("devices/widget-a", "7d"),
        ("devices/widget-b", "30d"),
        ("devices/widget-c", "90d"),
    ] {
        let n = records
            .iter()
            .filter(|r| r["operation"] == "certificate.expiring" && r["target"] == target)
            .count();
        assert_eq!(n, 1, "{target}: {records:#?}");
        assert!(
            has(
                &records,
                "certificate.expiring",
                target,
                outcome,
                "expires at"
            ),
            "{records:#?}"
        );
    }

    // An intermediate of 25 days (Technician-S, under Factory-Y) presented by a widget: in the
    // report, the gauges, the audit trail and the webhook, once.
    pki("pki request --subject CN=Technician-S --out pki/technician-s");
    pki(
        "pki sign --issuer pki/factory-y --csr pki/technician-s/request.csr --profile intermediate --days 25 --out pki/technician-s",
    );
    pki("pki request --subject CN=widget-s --out pki/devices/widget-s");
    pki(
        "pki sign --issuer pki/technician-s --csr pki/devices/widget-s/request.csr --profile device --days 10 --out pki/devices/widget-s",
    );
    hub("device create --id widget-s --auth-method x509-ca").ok();
    assert!(publishes(d, hub_process.mqtt_port, &ca, "widget-s"));
    wait_until(30, "the intermediate's webhook delivery", || {
        delivered()
            .iter()
            .any(|(_, b)| b.contains("\"intermediate.expiring\""))
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let got = delivered();
    let intermediate: Vec<serde_json::Value> = got
        .iter()
        .filter_map(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter(|v| v["type"] == "intermediate.expiring")
        .collect();
    assert_eq!(intermediate.len(), 1, "{got:#?}");
    assert_eq!(intermediate[0]["subject"], "CN=Technician-S", "{got:#?}");
    assert_eq!(intermediate[0]["withinDays"], 30, "{got:#?}");
    let report: serde_json::Value =
        serde_json::from_str(&hub("ca expiry").ok().stdout).expect("json");
    let soonest = &report["intermediates"][0];
    assert!(
        soonest["subject"] == "CN=Technician-S" && soonest["daysLeft"].as_i64() == Some(24),
        "{report:#}"
    );
    wait_until(15, "the intermediate gauge", || {
        metrics().contains("certhub_intermediates_expiring{within_days=\"30\"} 1")
    });
}

/// A loopback HTTP server for CRL distribution points: `GET /<name>` answers the file
/// `www/<name>` (404 when there is none); counts the requests.
struct CrlServer {
    port: u16,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl CrlServer {
    fn start(www: PathBuf) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = request
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/');
                let answer = match std::fs::read(www.join(name)) {
                    Ok(body) => {
                        let mut a = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        a.extend(body);
                        a
                    }
                    Err(_) => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&answer);
            }
        });
        Self { port, hits }
    }
}

/// CRLs fetched from the distribution points the certificates name (`certhub pki sign
/// --crl-url`), served over HTTP on loopback: Technician-Z's from `certhub pki crl` (DER), and
/// Factory-Y's from `openssl ca -gencrl`. A widget revoked in the next CRL the issuer
/// publishes is dropped and refused (mosquitto_sub and mosquitto_pub are the devices), a whole
/// branch with it when Factory-Y revokes its technician; a broken publication keeps the last
/// good CRL and says what is wrong; fetching can be switched off per CA.
#[test]
fn crls_are_fetched_from_distribution_points_and_drop_what_they_revoke() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let www = d.join("www");
    std::fs::create_dir(&www).expect("www");
    let server = CrlServer::start(www.clone());
    let base = format!("http://127.0.0.1:{}", server.port);
    let hub_process = common::start_hub_plus(&data, &["--crl-refresh", "1"]);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    let pki = |line: &str| certhub(d, &words(line)).ok();
    enroll_company_x(d, &data, 1);
    // Technician-V under Factory-Y names Factory-Y's CRL; widgets under Technician-Z name
    // Technician-Z's.
    pki("pki request --subject CN=Technician-V --out pki/technician-v");
    pki(&format!(
        "pki sign --issuer pki/factory-y --csr pki/technician-v/request.csr --profile intermediate --crl-url {base}/factory-y.crl --out pki/technician-v"
    ));
    let widgets = [
        ("widget-f1", "technician-z"),
        ("widget-f2", "technician-z"),
        ("widget-v1", "technician-v"),
    ];
    for (id, issuer) in widgets {
        pki(&format!(
            "pki request --subject CN={id} --out pki/devices/{id}"
        ));
        let url = if issuer == "technician-z" {
            format!(" --crl-url {base}/technician-z.crl")
        } else {
            String::new()
        };
        pki(&format!(
            "pki sign --issuer pki/{issuer} --csr pki/devices/{id}/request.csr --profile device{url} --out pki/devices/{id}"
        ));
        hub(&format!("device create --id {id} --auth-method x509-ca")).ok();
    }
    // The first CRLs: empty.
    let publish_tz = || {
        pki("pki crl --issuer pki/technician-z");
        openssl(
            d,
            &words("crl -in pki/technician-z/crl.pem -outform DER -out www/technician-z.crl"),
        )
        .ok();
    };
    publish_tz();
    factory_y_openssl_ca(d, "01");
    let publish_fy = || {
        openssl(d, &words("ca -config factory-y.cnf -gencrl -out fy.pem")).ok();
        openssl(
            d,
            &words("crl -in fy.pem -outform DER -out www/factory-y.crl"),
        )
        .ok();
    };
    publish_fy();

    let ca = data.join("tls/server-ca.pem");
    let port = hub_process.mqtt_port;
    let connected = |id: &str| is_connected(d, &data, id);
    let mut subs: Vec<std::process::Child> = widgets
        .iter()
        .map(|(id, _)| subscribe(d, port, &ca, &format!("pki/devices/{id}"), id))
        .collect();
    for (id, _) in widgets {
        wait_until(20, &format!("{id} connects"), || connected(id));
    }
    // The hub learnt both distribution points from the chains and fetched them.
    let sources = || -> serde_json::Value {
        serde_json::from_str(&hub("ca crl sources --name company-x").ok().stdout).expect("json")
    };
    let fetched = |url: &str, v: &serde_json::Value| {
        v["value"].as_array().is_some_and(|a| {
            a.iter()
                .any(|s| s["url"] == url && s["lastSuccess"].is_string())
        })
    };
    let (tz_url, fy_url) = (
        format!("{base}/technician-z.crl"),
        format!("{base}/factory-y.crl"),
    );
    wait_until(20, "both distribution points fetched", || {
        let v = sources();
        fetched(&tz_url, &v) && fetched(&fy_url, &v)
    });
    let v = sources();
    let tz = v["value"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["url"] == tz_url.as_str()))
        .expect("Technician-Z's point");
    assert_eq!(tz["issuer"], "CN=Technician-Z CA, O=Company-X", "{v:#}");
    let list = hub("ca crl list --name company-x").ok().stdout;
    assert!(
        list.contains(&format!("\"source\": \"{tz_url}\""))
            && list.contains(&format!("\"source\": \"{fy_url}\"")),
        "{list}"
    );

    // Technician-Z revokes widget-f1 and publishes: the hub fetches it and drops the widget.
    pki(
        "pki revoke --issuer pki/technician-z --cert pki/devices/widget-f1/cert.pem --reason key-compromise",
    );
    let start = std::time::Instant::now();
    publish_tz();
    let took = wait_until(10, "widget-f1's session closes", || {
        subs[0].try_wait().expect("state").is_some()
    });
    eprintln!("widget-f1 dropped {took:?} after Technician-Z published its CRL");
    let pub_as = |id: &str| publishes(d, port, &ca, id);
    assert!(
        subs[1].try_wait().expect("state").is_none()
            && subs[2].try_wait().expect("state").is_none(),
        "only widget-f1 was dropped"
    );
    assert!(!pub_as("widget-f1"), "a revoked widget is refused");
    // (Its sibling's publish takes over the sibling's identity from its subscriber.)
    assert!(pub_as("widget-f2"), "its sibling keeps working");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));

    // Factory-Y revokes Technician-V (openssl): widget-v1 goes with it.
    openssl(
        d,
        &words(
            "ca -config factory-y.cnf -revoke pki/technician-v/cert.pem -crl_reason keyCompromise",
        ),
    )
    .ok();
    publish_fy();
    let took = wait_until(10, "widget-v1's session closes", || {
        subs[2].try_wait().expect("state").is_some()
    });
    eprintln!("widget-v1 dropped {took:?} after Factory-Y published its CRL");
    assert!(!pub_as("widget-v1"));
    let records = audit(d, &data);
    for (target, detail) in [
        ("devices/widget-f1", "the leaf \"CN=widget-f1\""),
        ("devices/widget-v1", "the intermediate \"CN=Technician-V\""),
    ] {
        let closed = format!("certificate-revoked: {detail}");
        assert!(
            has(&records, "device.disconnect", target, "closed", &closed)
                && has(
                    &records,
                    "device.connect",
                    target,
                    "certificate-revoked",
                    detail
                ),
            "{target}: {records:#?}"
        );
    }
    assert!(
        has(
            &records,
            "ca.crl.fetch",
            "certificates/company-x",
            "ok",
            &tz_url
        ),
        "{records:#?}"
    );

    // A broken publication: the last good CRL stays, the point says what is wrong.
    let hits = server.hits.load(std::sync::atomic::Ordering::Relaxed);
    std::fs::write(www.join("technician-z.crl"), b"<html>maintenance</html>").expect("write");
    wait_until(10, "the broken CRL is noticed", || {
        let v = sources();
        v["value"].as_array().is_some_and(|a| {
            a.iter().any(|s| {
                s["url"] == tz_url.as_str()
                    && s["failures"].as_i64().unwrap_or(0) >= 1
                    && s["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("is not taken for CA \"company-x\""))
            })
        })
    });
    assert!(server.hits.load(std::sync::atomic::Ordering::Relaxed) > hits);
    assert!(!pub_as("widget-f1"), "the last good CRL still revokes");
    assert!(pub_as("widget-f2"));
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "ca.crl.fetch",
            "certificates/company-x",
            "CrlFetchFailed",
            &tz_url
        ),
        "{records:#?}"
    );

    // Switched off, the points are not fetched; the stale policy stays as it was.
    let policy = hub("ca crl policy --name company-x --fetch off")
        .ok()
        .stdout;
    assert!(
        policy.contains("\"fetchDistributionPoints\": false")
            && policy.contains("\"staleCrl\": \"fail-closed\""),
        "{policy}"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let hits = server.hits.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::Relaxed),
        hits,
        "nothing fetched while off"
    );
    for mut sub in subs.drain(..) {
        let _ = sub.kill();
        let _ = sub.wait();
    }
}

/// `openssl ocsp` as Technician-Z's responder on loopback (port 0), answering from an
/// `openssl ca`-style index; returns the process and its URL.
fn ocsp_responder(d: &Path, port: u16) -> (std::process::Child, String) {
    ocsp_responder_signing_as(d, port, "pki/technician-z")
}

/// [`ocsp_responder`] with the answers signed by the CA in `signer` (cert.pem, key.pem).
fn ocsp_responder_signing_as(d: &Path, port: u16, signer: &str) -> (std::process::Child, String) {
    let mut child = std::process::Command::new("openssl")
        .current_dir(d)
        .args(["ocsp", "-index", "tz-index.txt", "-port", &port.to_string()])
        .args(["-rsigner", &format!("{signer}/cert.pem")])
        .args(["-rkey", &format!("{signer}/key.pem")])
        .args([
            "-CA",
            "pki/technician-z/cert.pem",
            "-ndays",
            "1",
            "-ignore_err",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("openssl ocsp says where it listens");
    // "ACCEPT [::]:41235 PID=1234"
    let port = first
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("openssl ocsp said {first:?}"));
    (child, format!("http://127.0.0.1:{port}"))
}

/// A loopback HTTP server answering every request with the bytes in `answer` (an OCSP
/// response recorded from `openssl ocsp`); returns its URL.
fn replay_server(answer: Arc<Mutex<Vec<u8>>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                // The request: headers, then Content-Length bytes of body.
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                let _ = std::io::Read::read_exact(&mut reader, &mut body);
                let bytes = answer.lock().expect("lock").clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = stream.write_all(&bytes);
            });
        }
    });
    url
}

/// A loopback server that accepts connections and never answers; returns its URL.
fn hanging_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.extend(stream.ok());
        }
    });
    url
}

/// Stops the responder at `url` and starts it again on its port: openssl reads the index only
/// when it starts.
fn restart_responder(
    d: &Path,
    responder: &mut std::process::Child,
    url: &str,
) -> std::process::Child {
    restart_responder_signing_as(d, responder, url, "pki/technician-z")
}

fn restart_responder_signing_as(
    d: &Path,
    responder: &mut std::process::Child,
    url: &str,
    signer: &str,
) -> std::process::Child {
    let _ = responder.kill();
    let _ = responder.wait();
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    ocsp_responder_signing_as(d, port, signer).0
}

/// An `openssl ca` index line for a certificate: valid, or revoked for key compromise.
fn index_line(d: &Path, cert: &str, revoked: bool) -> String {
    let serial = openssl(d, &["x509", "-in", cert, "-noout", "-serial"])
        .ok()
        .stdout
        .trim()
        .trim_start_matches("serial=")
        .to_string();
    let subject = openssl(
        d,
        &[
            "x509", "-in", cert, "-noout", "-subject", "-nameopt", "compat",
        ],
    )
    .ok()
    .stdout
    .trim()
    .trim_start_matches("subject=")
    .to_string();
    if revoked {
        format!("R\t491231235959Z\t261201000000Z,keyCompromise\t{serial}\tunknown\t{subject}\n")
    } else {
        format!("V\t491231235959Z\t\t{serial}\tunknown\t{subject}\n")
    }
}

/// OCSP with `openssl ocsp` as the responder: a widget it answers good for connects, a
/// revoked one is refused with `certificate-revoked`, one it does not know is refused with
/// `revocation-unknown` (fail-closed), and so are a forged good answer, a good answer for
/// another certificate (replayed) and a responder that never answers (after the 5 s bound); a
/// connected widget revoked at the responder is dropped
/// within seconds; with the responder down, a widget whose last good answer is current still
/// connects and one never answered is refused until the policy is fail-open. mosquitto_pub
/// and mosquitto_sub are the devices.
#[test]
fn ocsp_answers_admit_refuse_and_drop_with_openssl_as_the_responder() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = common::start_hub_plus(&data, &["--crl-refresh", "1"]);
    let hub = |line: &str| certhub_at(d, &data, &words(line));
    let pki = |line: &str| certhub(d, &words(line)).ok();
    enroll_company_x(d, &data, 1);
    std::fs::write(d.join("tz-index.txt"), "").expect("write");
    let (mut responder, url) = ocsp_responder(d, 0);
    // A forger: answers good for everything, signed by Factory-Y, which Technician-Z never
    // delegated OCSP signing to.
    let (mut forger, forged_url) = ocsp_responder_signing_as(d, 0, "pki/factory-y");
    // A responder that replays o-good's answer whatever it is asked, and one that accepts
    // and never answers.
    let replayed: Arc<Mutex<Vec<u8>>> = Arc::default();
    let replay_url = replay_server(replayed.clone());
    let hang_url = hanging_server();
    let ids = [
        "o-good",
        "o-revoked",
        "o-unknown",
        "o-later",
        "o-new",
        "o-forged",
        "o-replay",
        "o-hang",
    ];
    for id in ids {
        let at = match id {
            "o-forged" => &forged_url,
            "o-replay" => &replay_url,
            "o-hang" => &hang_url,
            _ => &url,
        };
        pki(&format!(
            "pki request --subject CN={id} --out pki/devices/{id}"
        ));
        pki(&format!(
            "pki sign --issuer pki/technician-z --csr pki/devices/{id}/request.csr --profile device --ocsp-url {at} --out pki/devices/{id}"
        ));
        hub(&format!("device create --id {id} --auth-method x509-ca")).ok();
    }
    let cert = |id: &str| format!("pki/devices/{id}/cert.pem");
    let write_index = |revoked_later: bool| {
        let mut index = String::new();
        index.push_str(&index_line(d, &cert("o-good"), false));
        index.push_str(&index_line(d, &cert("o-revoked"), true));
        index.push_str(&index_line(d, &cert("o-later"), revoked_later));
        index.push_str(&index_line(d, &cert("o-new"), false));
        index.push_str(&index_line(d, &cert("o-forged"), false));
        std::fs::write(d.join("tz-index.txt"), index).expect("write");
    };
    write_index(false);
    let restart = |responder: &mut std::process::Child| restart_responder(d, responder, &url);
    responder = restart(&mut responder);
    let good_answer = d.join("o-good.ocsp");
    openssl(
        d,
        &[
            "ocsp",
            "-issuer",
            "pki/technician-z/cert.pem",
            "-cert",
            &cert("o-good"),
            "-url",
            &url,
            "-respout",
            s(&good_answer),
            "-noverify",
        ],
    )
    .ok();
    *replayed.lock().expect("lock") = std::fs::read(&good_answer).expect("the answer");
    let policy = hub("ca crl policy --name company-x --ocsp on").ok().stdout;
    assert!(
        policy.contains("\"ocsp\": true") && policy.contains("\"staleCrl\": \"fail-closed\""),
        "{policy}"
    );

    let ca = data.join("tls/server-ca.pem");
    let port = hub_process.mqtt_port;
    let pub_as = |id: &str| publishes(d, port, &ca, id);
    assert!(pub_as("o-good"), "good at the responder: admitted");
    assert!(!pub_as("o-revoked"), "revoked at the responder: refused");
    assert!(
        !pub_as("o-unknown"),
        "unknown to the responder: refused (fail-closed)"
    );
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "device.connect",
            "devices/o-revoked",
            "certificate-revoked",
            &url
        ) && has(
            &records,
            "device.connect",
            "devices/o-unknown",
            "revocation-unknown",
            "status unknown"
        ),
        "{records:#?}"
    );
    // Refused afterwards by the index, without asking again.
    assert!(!pub_as("o-revoked"));
    // A good answer signed by a key Technician-Z never delegated counts for nothing.
    forger = restart_responder_signing_as(d, &mut forger, &forged_url, "pki/factory-y");
    assert!(!pub_as("o-forged"), "a forged good answer: refused");
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "device.connect",
            "devices/o-forged",
            "revocation-unknown",
            "not signed by the certificate's issuer"
        ),
        "{records:#?}"
    );
    let _ = forger.kill();
    let _ = forger.wait();
    // A good answer, but for another certificate (o-good's, replayed).
    assert!(
        !pub_as("o-replay"),
        "an answer for another certificate: refused"
    );
    // A responder that never answers: the connect waits at most 5 s, then the policy decides.
    let start = std::time::Instant::now();
    assert!(
        !pub_as("o-hang"),
        "a responder that hangs: refused (fail-closed)"
    );
    let waited = start.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(4500)
            && waited < std::time::Duration::from_secs(15),
        "the request to a hanging responder is bounded by its 5 s timeout: {waited:?}"
    );
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "device.connect",
            "devices/o-replay",
            "revocation-unknown",
            "for another certificate"
        ) && has(
            &records,
            "device.connect",
            "devices/o-hang",
            "revocation-unknown",
            &format!("the OCSP responder {hang_url} gave no usable answer")
        ),
        "{records:#?}"
    );

    // A connected widget revoked at the responder is dropped.
    let mut sub = subscribe(d, port, &ca, "pki/devices/o-later", "o-later");
    wait_until(20, "o-later connects", || is_connected(d, &data, "o-later"));
    write_index(true);
    let start = std::time::Instant::now();
    responder = restart(&mut responder);
    let took = wait_until(15, "o-later's session closes", || {
        sub.try_wait().expect("state").is_some()
    });
    eprintln!(
        "o-later dropped {took:?} after its revocation reached the responder ({:?} with the restart)",
        start.elapsed()
    );
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "device.disconnect",
            "devices/o-later",
            "closed",
            "certificate-revoked"
        ),
        "{records:#?}"
    );

    // The responder goes down.
    let _ = responder.kill();
    let _ = responder.wait();
    assert!(
        pub_as("o-good"),
        "fail-closed: the last good answer is current (nextUpdate in a day), so it still counts"
    );
    assert!(!pub_as("o-new"), "fail-closed: never answered, refused");
    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "device.connect",
            "devices/o-new",
            "revocation-unknown",
            "gave no usable answer"
        ),
        "{records:#?}"
    );
    hub("ca crl policy --name company-x --stale fail-open").ok();
    assert!(pub_as("o-new"), "fail-open: admitted without an answer");
    assert!(!pub_as("o-later"), "a revocation learnt stays");
}

/// Revocation at device provisioning, with the Python SDK's ProvisioningDeviceClient and an
/// X.509 enrollment group on company-x: a widget Technician-Z's CRL revokes and one that
/// `openssl ocsp` answers revoked are refused with `certificate-revoked`; a widget the responder
/// answers good and one without an OCSP URL are assigned.
#[test]
fn dps_registrations_are_refused_when_a_crl_or_ocsp_revokes_the_widget() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub_process = start_hub_on(&data, HOST, &[]);
    let hub = |line: &str| certhub_at(d, &data, &words(line)).ok();
    let pki = |line: &str| certhub(d, &words(line)).ok();
    enroll_company_x(d, &data, 2);
    hub("dps enrollment-group create --id widgets --ca company-x");
    pki(
        "pki revoke --issuer pki/technician-z --cert pki/devices/smart-x-widget-0001/cert.pem --reason key-compromise",
    );
    pki("pki crl --issuer pki/technician-z");
    hub(
        "ca crl upload --name company-x --file pki/technician-z/crl.pem --issuer-chain pki/technician-z/chain.pem",
    );
    std::fs::write(d.join("tz-index.txt"), "").expect("write");
    let (mut responder, url) = ocsp_responder(d, 0);
    for id in ["d-good", "d-revoked"] {
        pki(&format!(
            "pki request --subject CN={id} --out pki/devices/{id}"
        ));
        pki(&format!(
            "pki sign --issuer pki/technician-z --csr pki/devices/{id}/request.csr --profile device --ocsp-url {url} --out pki/devices/{id}"
        ));
    }
    let index = index_line(d, "pki/devices/d-good/cert.pem", false)
        + &index_line(d, "pki/devices/d-revoked/cert.pem", true);
    std::fs::write(d.join("tz-index.txt"), index).expect("write");
    let mut responder = restart_responder(d, &mut responder, &url);
    hub("ca crl policy --name company-x --ocsp on");
    let scope = hub("dps id-scope").stdout.trim().to_string();

    drive(
        &hub_process,
        d,
        &data,
        "provisioning_revocation.py",
        &[
            ("CERTHUB_ID_SCOPE", Path::new(&scope)),
            (
                "CERTHUB_EXPECT",
                Path::new(
                    "smart-x-widget-0001=refused,smart-x-widget-0002=assigned,d-good=assigned,d-revoked=refused",
                ),
            ),
        ],
        "provisioning revocation: all checks passed",
        |_, _| None,
    );
    let _ = responder.kill();
    let _ = responder.wait();

    let records = audit(d, &data);
    assert!(
        has(
            &records,
            "dps.register",
            "registrations/smart-x-widget-0001",
            "certificate-revoked",
            "Technician-Z"
        ) && has(
            &records,
            "dps.register",
            "registrations/d-revoked",
            "certificate-revoked",
            &format!("said the OCSP responder {url}")
        ),
        "{records:#?}"
    );
    for id in ["smart-x-widget-0002", "d-good"] {
        assert!(
            has(
                &records,
                "dps.register",
                &format!("registrations/{id}"),
                "ok",
                ""
            ),
            "{id} registered: {records:#?}"
        );
    }
}

/// The expiry webhook's configuration is refused with what is wrong before the hub starts.
#[test]
fn a_bad_expiry_webhook_configuration_is_refused() {
    let t = tmp();
    let d = t.path();
    let cases = [
        (
            "expiry_webhook_url = \"http://127.0.0.1:9/x\"\n",
            "needs expiry_webhook_secret",
        ),
        (
            "expiry_webhook_url = \"http://127.0.0.1:9/x\"\nexpiry_webhook_secret = \"short\"\n",
            "at least 16 characters",
        ),
        (
            "expiry_webhook_url = \"ftp://x\"\nexpiry_webhook_secret = \"0123456789abcdef\"\n",
            "must be an http:// URL with a host",
        ),
        (
            "expiry_webhook_secret = \"0123456789abcdef\"\n",
            "expiry_webhook_url is not",
        ),
        ("expiry_check = 0\n", "expiry_check"),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        let config = d.join(format!("c{i}.toml"));
        std::fs::write(&config, toml).expect("config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--config", s(&config), "--data-dir"])
            .arg(d.join(format!("data{i}")))
            .args(["--https-addr", &format!("{HOST}:0")])
            .args(["--mqtt-addr", &format!("{HOST}:0")])
            .args(["--amqp-addr", &format!("{HOST}:0")])
            .output()
            .expect("certhub runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(want), "{toml}: no {want:?} in {stderr}");
    }
}
