//! Bad input to the device provisioning service of a real `certhub serve`, spoken by hand: raw
//! HTTPS requests to `PUT /{idScope}/registrations/{id}/register` (the TLS client certificate
//! of a widget for X.509, `Authorization: SharedAccessSignature ...` for symmetric keys) and
//! raw MQTT (hand-made packets over TLS) where the transport matters.
//!
//! Each of these must get a clear answer (a DPS error body whose message says what is wrong),
//! never a panic or a hang, leave nothing half-created (no device on a hub, no registration
//! state) and leave a named reason in the audit trail (operation `dps.register`):
//! - malformed register bodies: not JSON, a JSON array, a registrationId other than the URL's,
//!   a `tpm` section (400);
//! - registration ids against the rules: a `/`, a space, a trailing `.`, 129 characters (400);
//! - symmetric-key tokens that are expired, for another registration id or signed with a
//!   wrong key, for an individual enrollment and for a group (401, errorCode 401002);
//! - an X.509 enrollment group whose CA is deleted, one whose CA was never proved, and a
//!   disabled group: the widget is refused from then on; a widget whose device exists on the
//!   hub disabled is refused and the device left as it is;
//! - a linked hub that is down: a retryable answer with retry-after, nothing left behind;
//! - ten registrations of one id at once: one device, one registration state, one answer;
//! - the DPS service API refuses the hub's iothubowner (no provisioning rights) and takes
//!   provisioningserviceowner.
//!
//! Each test ends by registering correctly what was refused (where that applies), so that a
//! refusal for the wrong reason (a broken credential, a typo in the test) cannot pass.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::wire::{packet, string};
use common::{certhub_at, enroll_company_x, start_hub_on, tmp};
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Hub A's address (and host name) in these tests.
const HOST: &str = "127.0.0.47";
/// Hub B's, the linked hub.
const HOST_B: &str = "127.0.0.48";
/// No answer within this long is a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
const API: &str = "api-version=2019-03-31";

// ------------------------------------------------------------------------------------------
// Helpers

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
}

/// Failed expectations, gathered so that one run names every one of them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            eprintln!("PROBLEM: {what}");
            self.0.push(what);
        }
    }

    #[track_caller]
    fn none(self) {
        assert!(
            self.0.is_empty(),
            "{} problem(s):\n- {}",
            self.0.len(),
            self.0.join("\n- ")
        );
    }
}

/// The hub's server CA as trust roots.
fn roots(data: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(data.join("tls/server-ca.pem"))
        .expect("server CA")
    {
        roots.add(c.expect("pem")).expect("root");
    }
    roots
}

/// A TLS client that trusts the hub and presents no certificate (symmetric-key devices).
fn anonymous_tls(data: &Path) -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots(data))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_to(
    connector: &tokio_rustls::TlsConnector,
    host: &str,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .expect("tcp connect");
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// An HTTP answer as it came.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn message(&self) -> String {
        self.json()["message"].as_str().unwrap_or("").to_string()
    }

    fn error_code(&self) -> i64 {
        self.json()["errorCode"].as_i64().unwrap_or(0)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)?;
        if let Some(r) = self.header("retry-after") {
            write!(f, " (retry-after: {r})")?;
        }
        Ok(())
    }
}

fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut body = Vec::new();
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..end])
                    .split(';')
                    .next()
                    .unwrap_or("0")
                    .trim(),
                16,
            )
            .map_err(|e| format!("bad chunk size: {e}"))?;
            if size == 0 {
                break;
            }
            let start = end + 2;
            body.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
            rest = rest[(start + size + 2).min(rest.len())..].to_vec();
        }
        rest = body;
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&rest).into_owned(),
    })
}

/// One HTTP/1.1 request over its own TLS connection (`Connection: close`); the answer read to
/// the end. Panics when there is none within [`ANSWER_WITHIN`]: a hang.
async fn https(
    connector: tokio_rustls::TlsConnector,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let what = format!("{method} {path}");
    let exchange = async {
        let mut tls = tls_to(&connector, host, port).await;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        tls.write_all(request.as_bytes()).await.expect("write");
        tls.write_all(body).await.expect("write body");
        tls.flush().await.expect("flush");
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A close without close_notify after the answer.
                Err(_) if !raw.is_empty() => break,
                Err(e) => panic!("{what}: the connection failed before an answer: {e}"),
            }
        }
        raw
    };
    let raw = tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_WITHIN:?} (a hang)"));
    parse_reply(&raw).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The register path of `id` (percent-encoded as given).
fn register_path(scope: &str, encoded_id: &str) -> String {
    format!("/{scope}/registrations/{encoded_id}/register?{API}")
}

/// A registration's SAS token as the Node SDK makes one (`sr` not encoded, skn=registration)
/// for `resource_id`, signed with `key`, valid until `expiry`.
fn registration_token(scope: &str, resource_id: &str, key: &str, expiry: i64) -> String {
    certhub_core::sign_token(
        &format!("{scope}/registrations/{resource_id}"),
        key,
        Some("registration"),
        expiry,
    )
}

/// A group member's key.
fn derived(group_key: &str, id: &str) -> String {
    certhub_core::dps::derive_device_key(group_key, id).expect("a base64 group key")
}

/// The hub under test, as the tests call it.
struct Hub {
    dir: PathBuf,
    data: PathBuf,
    host: &'static str,
    process: common::HubProcess,
    scope: String,
}

impl Hub {
    fn start(dir: &Path, name: &str, host: &'static str) -> Self {
        let data = dir.join(name);
        let process = start_hub_on(&data, host, &[]);
        let scope = certhub_at(dir, &data, &["dps", "id-scope"])
            .ok()
            .stdout
            .trim()
            .to_string();
        assert!(scope.starts_with("0ne"), "{scope}");
        Self {
            dir: dir.to_path_buf(),
            data,
            host,
            process,
            scope,
        }
    }

    fn cli(&self, args: &[&str]) -> common::Run {
        certhub_at(&self.dir, &self.data, args)
    }

    fn ok(&self, args: &[&str]) -> common::Run {
        self.cli(args).ok()
    }

    fn widget(&self, n: u32) -> PathBuf {
        self.dir.join(format!("pki/devices/smart-x-widget-{n:04}"))
    }

    /// `PUT .../register` with `headers`, over a connection presenting `client` (a widget's
    /// folder) or no certificate.
    async fn register_async(
        &self,
        encoded_id: &str,
        client: Option<&Path>,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Reply {
        let connector = match client {
            Some(w) => common::device_tls(&self.data, w),
            None => anonymous_tls(&self.data),
        };
        https(
            connector,
            self.host,
            self.process.https_port(),
            "PUT",
            &register_path(&self.scope, encoded_id),
            headers,
            body,
        )
        .await
    }

    fn register(
        &self,
        rt: &tokio::runtime::Runtime,
        encoded_id: &str,
        client: Option<&Path>,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Reply {
        rt.block_on(self.register_async(encoded_id, client, headers, body))
    }

    /// A symmetric-key registration of `id` with `token`, the body naming `id`.
    fn register_sas(&self, rt: &tokio::runtime::Runtime, id: &str, token: String) -> Reply {
        let body = json!({ "registrationId": id }).to_string();
        self.register(rt, id, None, &[("Authorization", token)], body.as_bytes())
    }

    /// An X.509 registration of widget `n` (its CN is the registration id).
    fn register_widget(&self, rt: &tokio::runtime::Runtime, n: u32) -> Reply {
        let id = format!("smart-x-widget-{n:04}");
        let body = json!({ "registrationId": id }).to_string();
        self.register(rt, &id, Some(&self.widget(n)), &[], body.as_bytes())
    }

    /// The ids of the devices on this hub.
    fn devices(&self) -> Vec<String> {
        let run = self.ok(&["device", "list"]);
        let v: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
        v.as_array()
            .expect("an array")
            .iter()
            .filter_map(|d| d["deviceId"].as_str().map(str::to_string))
            .collect()
    }

    /// Whether the provisioning service holds a registration state of `id`.
    fn has_registration(&self, id: &str) -> bool {
        let run = self.cli(&["dps", "registration", "--registration-id", id]);
        assert!(!run.stderr.contains("panicked"), "{run}");
        run.code == Some(0)
    }

    /// The registration lines (`certhub dps registrations`) of `id`.
    fn registration_lines(&self, id: &str) -> usize {
        self.ok(&["dps", "registrations"])
            .stdout
            .lines()
            .filter(|l| l.split('\t').next() == Some(id))
            .count()
    }

    /// The `dps.register` audit records of `registrations/{id}`, newest first: (outcome,
    /// detail).
    fn audit(&self, id: &str) -> Vec<(String, String)> {
        let run = self.ok(&["audit", "list", "--json", "--top", "2000"]);
        let v: Value = serde_json::from_str(&run.stdout).expect("json");
        let target = format!("registrations/{id}");
        v.as_array()
            .expect("array")
            .iter()
            .filter(|r| r["operation"] == "dps.register" && r["target"] == target.as_str())
            .map(|r| {
                (
                    r["outcome"].as_str().unwrap_or("").to_string(),
                    r["detail"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Checks that nothing of `id` was left: no device `device` here, no registration state.
    fn nothing_left(&self, p: &mut Problems, id: &str, device: &str, after: &str) {
        p.check(
            !self.devices().iter().any(|d| d == device),
            format!(
                "after {after}: device {device} was created on {}",
                self.host
            ),
        );
        p.check(
            !self.has_registration(id),
            format!("after {after}: a registration state of {id:?} was written"),
        );
    }
}

/// Checks a refusal: status, errorCode, a message holding every needle (case-insensitive),
/// the JSON content type.
fn expect_error(p: &mut Problems, what: &str, r: &Reply, status: u16, code: i64, needles: &[&str]) {
    eprintln!("{what}: {r}");
    p.check(
        r.status == status,
        format!("{what}: HTTP {status} expected, got {r}"),
    );
    p.check(
        r.error_code() == code,
        format!("{what}: errorCode {code} expected, got {r}"),
    );
    p.check(
        r.header("content-type")
            .is_some_and(|c| c.contains("application/json")),
        format!("{what}: a JSON answer expected: {:?}", r.headers),
    );
    let message = r.message().to_lowercase();
    for n in needles {
        p.check(
            message.contains(&n.to_lowercase()),
            format!("{what}: the message should say {n:?}: {r}"),
        );
    }
}

/// Checks that the newest `dps.register` record of `id` is a refusal named `outcome` (any
/// named refusal when None) whose detail holds every needle.
fn expect_audit(
    p: &mut Problems,
    hub: &Hub,
    what: &str,
    id: &str,
    outcome: Option<&str>,
    needles: &[&str],
) {
    let records = hub.audit(id);
    if let Some((o, detail)) = records.first() {
        eprintln!("{what}: audited {o}: {detail}");
    }
    let Some((o, detail)) = records.first() else {
        p.check(
            false,
            format!("{what}: no dps.register audit record of registrations/{id}"),
        );
        return;
    };
    match outcome {
        Some(want) => p.check(
            o == want,
            format!("{what}: audit outcome {want:?} expected, got {o:?} ({detail})"),
        ),
        None => p.check(
            o != "ok" && !o.is_empty(),
            format!("{what}: a named refusal expected in the audit, got {o:?} ({detail})"),
        ),
    }
    let lower = detail.to_lowercase();
    for n in needles {
        p.check(
            lower.contains(&n.to_lowercase()),
            format!("{what}: the audit detail should say {n:?}: {o} {detail}"),
        );
    }
}

// ------------------------------------------------------------------------------------------
// Raw MQTT (3.1.1) for provisioning clients

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One MQTT packet read: its first byte and body; None when the hub closed the connection.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut first = [0u8; 1];
        s.read_exact(&mut first).await.ok()?;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        Some((first[0], body))
    };
    tokio::time::timeout(ANSWER_WITHIN, read)
        .await
        .unwrap_or_else(|_| panic!("no MQTT packet nor close within {ANSWER_WITHIN:?} (a hang)"))
}

/// A provisioning client's CONNECT; the CONNACK's return code (None: closed).
async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    scope: &str,
    id: &str,
    token: Option<&str>,
) -> Option<u8> {
    let mut body = string("MQTT");
    body.extend([4, if token.is_some() { 0xC2 } else { 0x82 }, 0, 60]);
    body.extend(string(id));
    body.extend(string(&format!(
        "{scope}/registrations/{id}/{API}&ClientVersion=dps-bad-input"
    )));
    if let Some(t) = token {
        body.extend(string(t));
    }
    s.write_all(&packet(0x10, body)).await.expect("connect");
    let (first, body) = read_packet(s).await?;
    assert_eq!(first, 0x20, "a CONNACK expected: {first:#x} {body:?}");
    body.get(1).copied()
}

/// SUBSCRIBE to the responses, PUBLISH a register request with `payload`; the answer's topic
/// and body.
async fn mqtt_register<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    payload: &[u8],
) -> Option<(String, String)> {
    let mut body = vec![0, 1];
    body.extend(string("$dps/registrations/res/#"));
    body.push(1);
    s.write_all(&packet(0x82, body)).await.expect("subscribe");
    let (first, _) = read_packet(s).await?;
    assert_eq!(first, 0x90, "a SUBACK expected");
    let mut body = string("$dps/registrations/PUT/iotdps-register/?$rid=42");
    body.extend([0, 2]);
    body.extend(payload);
    s.write_all(&packet(0x32, body)).await.expect("publish");
    loop {
        let (first, body) = read_packet(s).await?;
        if first & 0xf0 == 0x30 {
            let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
            let at = 2 + len + if first & 0x06 != 0 { 2 } else { 0 };
            return Some((topic, String::from_utf8_lossy(&body[at..]).into_owned()));
        }
    }
}

/// A whole MQTT registration of `id`: (CONNACK code, the answer's topic and body).
async fn mqtt_provision(
    hub: &Hub,
    client: Option<&Path>,
    id: &str,
    token: Option<&str>,
    payload: &[u8],
) -> (Option<u8>, Option<(String, String)>) {
    let connector = match client {
        Some(w) => common::device_tls(&hub.data, w),
        None => anonymous_tls(&hub.data),
    };
    let mut s: Stream = tls_to(&connector, hub.host, hub.process.mqtt_port).await;
    let code = mqtt_connect(&mut s, &hub.scope, id, token).await;
    if code != Some(0) {
        eprintln!("MQTT register of {id}: CONNACK {code:?}");
        return (code, None);
    }
    let answer = mqtt_register(&mut s, payload).await;
    eprintln!("MQTT register of {id}: CONNACK {code:?}, answer {answer:?}");
    (code, answer)
}

// ------------------------------------------------------------------------------------------
// Tests

/// Bodies that are not a register request, and registration ids against the rules, over
/// HTTPS and MQTT: 400 saying what is wrong, nothing created, the refusal audited.
#[test]
fn malformed_register_requests_are_400_and_audited() {
    let started = Instant::now();
    let t = tmp();
    let d = t.path();
    let hub = Hub::start(d, "data", HOST);
    let rt = runtime();
    let mut p = Problems::default();
    enroll_company_x(d, &hub.data, 1);
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
    ]);
    // Any registration id has a valid key: the group derives it.
    let group_key = certhub_core::generate_key();
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "sensors",
        "--symmetric-key",
        "--primary-key",
        &group_key,
    ]);
    let token =
        |id: &str| registration_token(&hub.scope, id, &derived(&group_key, id), now() + 600);

    // Bodies, each with a valid credential of its own id.
    let cases: [(&str, &[u8], &[&str]); 5] = [
        ("body-not-json", b"{not json", &["not JSON"]),
        ("body-array", br#"[{"registrationId":"body-array"}]"#, &["JSON object"]),
        ("body-number", b"42", &["JSON object"]),
        (
            "body-other-id",
            br#"{"registrationId":"someone-else"}"#,
            &["registrationId", "someone-else", "body-other-id"],
        ),
        (
            "body-tpm",
            br#"{"registrationId":"body-tpm","tpm":{"endorsementKey":"AAAA","storageRootKey":"AAAA"}}"#,
            &["TPM"],
        ),
    ];
    for (id, body, needles) in cases {
        let what = format!(
            "PUT register of {id} with body {:?}",
            String::from_utf8_lossy(body)
        );
        let r = hub.register(&rt, id, None, &[("Authorization", token(id))], body);
        expect_error(&mut p, &what, &r, 400, 400_004, needles);
        hub.nothing_left(&mut p, id, id, &what);
        expect_audit(&mut p, &hub, &what, id, Some("bad-request"), needles);
    }
    // The widget with its certificate and an array for a body.
    let widget = "smart-x-widget-0001";
    let what = "PUT register of the X.509 widget with body []";
    let r = hub.register(&rt, widget, Some(&hub.widget(1)), &[], b"[]");
    expect_error(&mut p, what, &r, 400, 400_004, &["JSON object"]);
    hub.nothing_left(&mut p, widget, widget, what);
    expect_audit(
        &mut p,
        &hub,
        what,
        widget,
        Some("bad-request"),
        &["JSON object"],
    );

    // Registration ids against the rules: (as in the URL, as decoded, what the message says).
    let long = "a".repeat(129);
    let ids: [(&str, &str, &[&str]); 4] = [
        ("a%2Fb", "a/b", &["'/'", "only letters, digits and - . _ :"]),
        ("a%20b", "a b", &["' '", "only letters, digits and - . _ :"]),
        (
            "ends.",
            "ends.",
            &["must end with a letter, a digit or '-'"],
        ),
        (&long, &long, &["129 characters", "at most 128"]),
    ];
    for (encoded, id, needles) in ids {
        let what = format!("PUT register of the registration id {id:?}");
        let body = json!({ "registrationId": id }).to_string();
        let r = hub.register(
            &rt,
            encoded,
            None,
            &[("Authorization", token(id))],
            body.as_bytes(),
        );
        expect_error(&mut p, &what, &r, 400, 400_004, needles);
        p.check(
            !hub.devices().iter().any(|d| d == id),
            format!("{what}: a device was created"),
        );
        expect_audit(
            &mut p,
            &hub,
            &what,
            id,
            Some("bad-registration-id"),
            needles,
        );
    }

    // Over MQTT: a register request that is not JSON, and a client id against the rules.
    let (code, answer) = rt.block_on(mqtt_provision(
        &hub,
        None,
        "mqtt-not-json",
        Some(&token("mqtt-not-json")),
        b"{not json",
    ));
    let what = "MQTT register of mqtt-not-json with the payload {not json";
    p.check(
        code == Some(0),
        format!("{what}: CONNACK 0 expected, got {code:?}"),
    );
    match &answer {
        Some((topic, body)) => {
            p.check(
                topic.starts_with("$dps/registrations/res/400/?$rid=42"),
                format!("{what}: an answer on res/400 expected, got {topic} {body}"),
            );
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            p.check(
                v["errorCode"] == 400_004
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.to_lowercase().contains("json")),
                format!("{what}: a message about JSON expected: {body}"),
            );
        }
        None => p.check(false, format!("{what}: the hub closed without an answer")),
    }
    hub.nothing_left(&mut p, "mqtt-not-json", "mqtt-not-json", what);
    expect_audit(
        &mut p,
        &hub,
        what,
        "mqtt-not-json",
        Some("bad-request"),
        &["not JSON"],
    );

    let what = "MQTT register of the registration id \"a b\"";
    let (code, answer) = rt.block_on(mqtt_provision(
        &hub,
        None,
        "a b",
        Some(&token("a b")),
        br#"{"registrationId":"a b"}"#,
    ));
    match (code, &answer) {
        (Some(0), Some((topic, body))) => {
            p.check(
                topic.starts_with("$dps/registrations/res/400/?$rid=42"),
                format!("{what}: an answer on res/400 expected, got {topic} {body}"),
            );
            p.check(
                body.contains("only letters, digits and - . _ :"),
                format!("{what}: the rule expected in the answer: {body}"),
            );
        }
        // A refusal at CONNECT is an answer too; the audit must then name it.
        (Some(c), None) if c != 0 => {}
        other => p.check(false, format!("{what}: no answer: {other:?}")),
    }
    p.check(
        !hub.devices().iter().any(|d| d == "a b"),
        format!("{what}: a device was created"),
    );
    expect_audit(&mut p, &hub, what, "a b", Some("bad-registration-id"), &[]);

    // What was refused for its body registers with a good one: the credentials were good.
    for id in ["body-not-json", "body-tpm", "mqtt-not-json"] {
        let r = hub.register_sas(&rt, id, token(id));
        p.check(
            r.status == 200 && r.json()["registrationState"]["deviceId"] == id,
            format!("{id} with a good body: 200 assigned expected, got {r}"),
        );
    }
    let r = hub.register_widget(&rt, 1);
    p.check(
        r.status == 200 && r.json()["status"] == "assigned",
        format!("the widget with a good body: 200 assigned expected, got {r}"),
    );
    drop(hub);
    eprintln!("malformed_register_requests: {:?}", started.elapsed());
    p.none();
}

/// Symmetric-key tokens that are expired, for another registration id or signed with a
/// wrong key: 401 with errorCode 401002, the reason audited, over HTTPS and MQTT, for an
/// individual enrollment and for a group.
#[test]
fn bad_symmetric_key_tokens_are_401_with_the_reason_audited() {
    let started = Instant::now();
    let t = tmp();
    let d = t.path();
    let hub = Hub::start(d, "data", HOST);
    let rt = runtime();
    let mut p = Problems::default();
    let key = certhub_core::generate_key();
    hub.ok(&[
        "dps",
        "enrollment",
        "create",
        "--registration-id",
        "sensor-1",
        "--symmetric-key",
        "--primary-key",
        &key,
    ]);
    let group_key = certhub_core::generate_key();
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "sensors",
        "--symmetric-key",
        "--primary-key",
        &group_key,
    ]);
    let scope = hub.scope.clone();
    let member = "member-1";
    let member_key = derived(&group_key, member);
    let wrong = certhub_core::generate_key();

    // (registration id, token, audit outcome, what the audit detail says)
    let cases = [
        (
            "sensor-1",
            "an expired token",
            registration_token(&scope, "sensor-1", &key, now() - 60),
            "bad-token",
            "expired",
        ),
        (
            "sensor-1",
            "a token for sensor-2",
            registration_token(&scope, "sensor-2", &key, now() + 600),
            "bad-token",
            "sensor-2",
        ),
        (
            "sensor-1",
            "a token signed with a wrong key",
            registration_token(&scope, "sensor-1", &wrong, now() + 600),
            "bad-token",
            "signature",
        ),
        (
            member,
            "an expired token",
            registration_token(&scope, member, &member_key, now() - 60),
            "no-enrollment",
            "expired",
        ),
        (
            member,
            "a token for member-2",
            registration_token(&scope, "member-2", &member_key, now() + 600),
            "no-enrollment",
            "member-2",
        ),
        (
            member,
            "a token signed with a wrong key",
            registration_token(&scope, member, &wrong, now() + 600),
            "no-enrollment",
            "not signed",
        ),
        (
            member,
            "a token signed with the group's own key (not the derived one)",
            registration_token(&scope, member, &group_key, now() + 600),
            "no-enrollment",
            "not signed",
        ),
    ];
    for (id, how, token, outcome, says) in &cases {
        let what = format!("PUT register of {id} with {how}");
        let r = hub.register_sas(&rt, id, token.clone());
        expect_error(&mut p, &what, &r, 401, 401_002, &["not authorized"]);
        p.check(
            r.header("x-ms-error-code") == Some("401002"),
            format!("{what}: x-ms-error-code 401002 expected: {:?}", r.headers),
        );
        hub.nothing_left(&mut p, id, id, &what);
        expect_audit(
            &mut p,
            &hub,
            &what,
            id,
            Some(outcome),
            &[says, "over https"],
        );
    }

    // Over MQTT the token is the CONNECT's password: an expired one is refused at the
    // register request with 401 on the response topic.
    for (id, token, outcome) in [
        (
            "sensor-1",
            registration_token(&scope, "sensor-1", &key, now() - 60),
            "bad-token",
        ),
        (
            member,
            registration_token(&scope, member, &member_key, now() - 60),
            "no-enrollment",
        ),
    ] {
        let what = format!("MQTT register of {id} with an expired token");
        let body = json!({ "registrationId": id, "payload": null }).to_string();
        let (code, answer) = rt.block_on(mqtt_provision(
            &hub,
            None,
            id,
            Some(&token),
            body.as_bytes(),
        ));
        match (code, &answer) {
            (Some(0), Some((topic, body))) => {
                p.check(
                    topic.starts_with("$dps/registrations/res/401/?$rid=42"),
                    format!("{what}: an answer on res/401 expected, got {topic} {body}"),
                );
                let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                p.check(
                    v["errorCode"] == 401_002,
                    format!("{what}: errorCode 401002 expected: {body}"),
                );
            }
            (Some(c), None) if c != 0 => {}
            other => p.check(false, format!("{what}: no answer: {other:?}")),
        }
        hub.nothing_left(&mut p, id, id, &what);
        expect_audit(
            &mut p,
            &hub,
            &what,
            id,
            Some(outcome),
            &["expired", "over mqtt"],
        );
    }

    // The same ids with good tokens register: the enrollments were usable all along.
    for (id, k) in [("sensor-1", &key), (member, &member_key)] {
        let r = hub.register_sas(&rt, id, registration_token(&scope, id, k, now() + 600));
        p.check(
            r.status == 200 && r.json()["registrationState"]["assignedHub"] == HOST,
            format!("{id} with a good token: 200 assigned expected, got {r}"),
        );
    }
    drop(hub);
    eprintln!("bad_symmetric_key_tokens: {:?}", started.elapsed());
    p.none();
}

/// An X.509 enrollment group whose CA is deleted admits no one from then on; a group on a CA
/// registered without proof of possession admits no one; a disabled group admits no one.
#[test]
fn x509_groups_without_a_usable_ca_or_disabled_refuse_the_widget() {
    let started = Instant::now();
    let t = tmp();
    let d = t.path();
    let hub = Hub::start(d, "data", HOST);
    let rt = runtime();
    let mut p = Problems::default();
    enroll_company_x(d, &hub.data, 3);
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
    ]);
    let r = hub.register_widget(&rt, 1);
    assert_eq!(
        r.status, 200,
        "the widget registers through the group at first: {r}"
    );

    // The CA deleted: the group admits no one, neither a new widget nor the one registered.
    hub.ok(&["ca", "delete", "--name", "company-x"]);
    for n in [2, 1] {
        let id = format!("smart-x-widget-{n:04}");
        let what = format!("{id} after company-x was deleted");
        let r = hub.register_widget(&rt, n);
        expect_error(&mut p, &what, &r, 401, 401_002, &[]);
        expect_audit(
            &mut p,
            &hub,
            &what,
            &id,
            Some("no-enrollment"),
            &["over https"],
        );
    }
    hub.nothing_left(
        &mut p,
        "smart-x-widget-0002",
        "smart-x-widget-0002",
        "company-x deleted",
    );

    // A group on Factory-Y (the widgets' chain passes it) registered without proof of
    // possession: named as such.
    hub.ok(&[
        "ca",
        "upload",
        "--name",
        "factory-y",
        "--file",
        common::s(&d.join("pki/factory-y/cert.pem")),
    ]);
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "factory",
        "--ca",
        "factory-y",
    ]);
    let what = "smart-x-widget-0002 through a group on an unverified CA";
    let r = hub.register_widget(&rt, 2);
    expect_error(&mut p, what, &r, 401, 401_002, &[]);
    expect_audit(
        &mut p,
        &hub,
        what,
        "smart-x-widget-0002",
        Some("ca-not-verified"),
        &["factory-y"],
    );
    hub.nothing_left(&mut p, "smart-x-widget-0002", "smart-x-widget-0002", what);

    // company-x back, verified; the group replaced by a disabled one.
    hub.ok(&[
        "ca",
        "upload",
        "--name",
        "company-x",
        "--file",
        common::s(&d.join("pki/company-x/cert.pem")),
        "--verified",
    ]);
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
        "--disabled",
    ]);
    let what = "smart-x-widget-0003 through the disabled group";
    let r = hub.register_widget(&rt, 3);
    expect_error(&mut p, what, &r, 401, 401_002, &[]);
    expect_audit(
        &mut p,
        &hub,
        what,
        "smart-x-widget-0003",
        Some("enrollment-disabled"),
        &["widgets"],
    );
    hub.nothing_left(&mut p, "smart-x-widget-0003", "smart-x-widget-0003", what);
    // Over MQTT too.
    let what = "smart-x-widget-0003 over MQTT through the disabled group";
    let (code, answer) = rt.block_on(mqtt_provision(
        &hub,
        Some(&hub.widget(3)),
        "smart-x-widget-0003",
        None,
        br#"{"registrationId":"smart-x-widget-0003"}"#,
    ));
    p.check(
        code == Some(0)
            && answer
                .as_ref()
                .is_some_and(|(topic, _)| topic.starts_with("$dps/registrations/res/401/")),
        format!("{what}: an answer on res/401 expected: {code:?} {answer:?}"),
    );
    expect_audit(
        &mut p,
        &hub,
        what,
        "smart-x-widget-0003",
        Some("enrollment-disabled"),
        &["over mqtt"],
    );

    // Enabled again: it registers (the refusals were the group's, not the widget's).
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
    ]);
    let r = hub.register_widget(&rt, 3);
    p.check(
        r.status == 200 && r.json()["registrationState"]["x509"]["enrollmentGroupId"] == "widgets",
        format!("smart-x-widget-0003 through the enabled group: 200 expected, got {r}"),
    );

    // A widget whose device an operator made by hand (SAS) and disabled: refused, the device
    // left as it is; enabled, it registers and the device takes the group's authentication.
    let id = "smart-x-widget-0002";
    hub.ok(&["device", "create", "--id", id, "--status", "disabled"]);
    let what = "smart-x-widget-0002 whose device is disabled";
    let r = hub.register_widget(&rt, 2);
    expect_error(&mut p, what, &r, 401, 401_002, &[]);
    expect_audit(
        &mut p,
        &hub,
        what,
        id,
        Some("device-disabled"),
        &["is disabled", "enable it"],
    );
    let device = hub.ok(&["device", "show", "--id", id]).stdout;
    p.check(
        device.contains("\"sas\"") && !hub.has_registration(id),
        format!("{what}: the device should be left as it was, with no registration: {device}"),
    );
    hub.ok(&["device", "update", "--id", id, "--status", "enabled"]);
    let r = hub.register_widget(&rt, 2);
    let device = hub.ok(&["device", "show", "--id", id]).stdout;
    p.check(
        r.status == 200 && device.contains("certificateAuthority"),
        format!("{id} enabled: 200 and a CA-authenticated device expected, got {r}; {device}"),
    );
    drop(hub);
    eprintln!("x509_groups: {:?}", started.elapsed());
    p.none();
}

/// A static group on a linked hub that is down: a retryable answer with retry-after, the
/// audit says hub-unavailable, and nothing is left behind on either hub nor in the
/// registration states.
#[test]
fn a_linked_hub_that_is_down_gets_a_retryable_answer_and_leaves_nothing() {
    let started = Instant::now();
    let t = tmp();
    let d = t.path();
    let hub = Hub::start(d, "a", HOST);
    let mut hub_b = Hub::start(d, "b", HOST_B);
    let rt = runtime();
    let mut p = Problems::default();
    let b_cs = hub_b
        .ok(&["hub", "connection-string"])
        .stdout
        .trim()
        .to_string();
    hub.ok(&[
        "dps",
        "hub",
        "add",
        "--hub-connection-string",
        &b_cs,
        "--hub-ca-file",
        common::s(&hub_b.data.join("tls/server-ca.pem")),
    ]);
    let listed = hub.ok(&["dps", "hub", "list"]).stdout;
    assert!(listed.contains(&format!("{HOST_B}\t")), "{listed}");
    let group_key = certhub_core::generate_key();
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "far",
        "--symmetric-key",
        "--primary-key",
        &group_key,
        "--allocation",
        "static",
        "--hub",
        HOST_B,
    ]);
    let token =
        |id: &str| registration_token(&hub.scope, id, &derived(&group_key, id), now() + 600);

    // While B is up, its devices go there.
    let r = hub.register_sas(&rt, "far-1", token("far-1"));
    assert!(
        r.status == 200 && r.json()["registrationState"]["assignedHub"] == HOST_B,
        "far-1 is assigned to hub B while it is up: {r}"
    );
    assert!(
        hub_b.devices().iter().any(|d| d == "far-1"),
        "far-1 is on hub B"
    );

    hub_b.process.kill();
    let what = "PUT register of far-2 with hub B down";
    let began = Instant::now();
    let r = hub.register_sas(&rt, "far-2", token("far-2"));
    let took = began.elapsed();
    eprintln!("{what}: {r} in {took:?}");
    p.check(
        r.status >= 429 && r.status != 501,
        format!("{what}: a retryable status (429, 503) expected, got {r}"),
    );
    p.check(
        r.header("retry-after")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|s| s > 0),
        format!(
            "{what}: a retry-after header in seconds expected: {:?}",
            r.headers
        ),
    );
    p.check(
        r.error_code() / 1000 == i64::from(r.status),
        format!("{what}: an errorCode of its status expected: {r}"),
    );
    p.check(
        took < Duration::from_secs(15),
        format!("{what}: the answer took {took:?}"),
    );
    expect_audit(
        &mut p,
        &hub,
        what,
        "far-2",
        Some("hub-unavailable"),
        &[HOST_B, "over https"],
    );
    hub.nothing_left(&mut p, "far-2", "far-2", what);

    // Over MQTT the retry-after is in the response topic.
    let what = "MQTT register of far-3 with hub B down";
    let t3 = token("far-3");
    let (code, answer) = rt.block_on(mqtt_provision(
        &hub,
        None,
        "far-3",
        Some(&t3),
        br#"{"registrationId":"far-3"}"#,
    ));
    p.check(
        code == Some(0)
            && answer.as_ref().is_some_and(|(topic, _)| {
                topic
                    .strip_prefix("$dps/registrations/res/")
                    .and_then(|t| t.split('/').next())
                    .and_then(|s| s.parse::<u16>().ok())
                    .is_some_and(|s| s >= 429)
                    && topic.contains("retry-after=")
            }),
        format!(
            "{what}: a retryable status with retry-after in the topic expected: {code:?} {answer:?}"
        ),
    );
    expect_audit(
        &mut p,
        &hub,
        what,
        "far-3",
        Some("hub-unavailable"),
        &["over mqtt"],
    );
    hub.nothing_left(&mut p, "far-3", "far-3", what);

    // B back (on new ports, its data as it was): far-1 is there, far-2 and far-3 are not.
    let hub_b = Hub::start(d, "b", HOST_B);
    let on_b = hub_b.devices();
    p.check(
        on_b.iter().any(|d| d == "far-1") && !on_b.iter().any(|d| d == "far-2" || d == "far-3"),
        format!("hub B holds far-1 and neither far-2 nor far-3: {on_b:?}"),
    );
    p.check(
        hub.has_registration("far-1"),
        "far-1's registration state stays",
    );
    drop(hub_b);
    drop(hub);
    eprintln!("a_linked_hub_that_is_down: {:?}", started.elapsed());
    p.none();
}

/// Ten registrations of one id at once, over HTTPS, for a symmetric-key enrollment and for a
/// widget through an X.509 group: every one answered, all with the same device and hub, one
/// device and one registration state.
#[test]
fn concurrent_registrations_of_one_id_make_one_device() {
    let started = Instant::now();
    let t = tmp();
    let d = t.path();
    let hub = Arc::new(Hub::start(d, "data", HOST));
    let rt = runtime();
    let mut p = Problems::default();
    enroll_company_x(d, &hub.data, 1);
    hub.ok(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
    ]);
    let key = certhub_core::generate_key();
    hub.ok(&[
        "dps",
        "enrollment",
        "create",
        "--registration-id",
        "burst-1",
        "--device-id",
        "burst-device",
        "--symmetric-key",
        "--primary-key",
        &key,
    ]);
    let token = registration_token(&hub.scope, "burst-1", &key, now() + 600);

    for (id, device, x509) in [
        ("burst-1", "burst-device", false),
        ("smart-x-widget-0001", "smart-x-widget-0001", true),
    ] {
        let replies: Vec<Reply> = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let hub = hub.clone();
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    let body = json!({ "registrationId": id }).to_string();
                    if x509 {
                        let w = hub.widget(1);
                        hub.register_async(id, Some(&w), &[], body.as_bytes()).await
                    } else {
                        hub.register_async(id, None, &[("Authorization", token)], body.as_bytes())
                            .await
                    }
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("a request task"));
            }
            out
        });
        let what = format!("ten registrations of {id} at once");
        for r in &replies {
            let state = &r.json()["registrationState"];
            p.check(
                r.status == 200
                    && state["deviceId"] == device
                    && state["assignedHub"] == HOST
                    && state["registrationId"] == id,
                format!("{what}: each answer 200 naming {device} on {HOST}, got {r}"),
            );
        }
        let devices = hub.devices();
        p.check(
            devices.iter().filter(|d| *d == device).count() == 1,
            format!("{what}: one device {device} expected: {devices:?}"),
        );
        let lines = hub.registration_lines(id);
        p.check(
            lines == 1,
            format!("{what}: one registration state expected, {lines} listed"),
        );
        let ok = hub.audit(id).iter().filter(|(o, _)| o == "ok").count();
        p.check(
            ok == 10,
            format!("{what}: ten `ok` audit records expected, {ok} found"),
        );
    }
    let devices = hub.devices();
    p.check(
        devices.len() == 2,
        format!("two devices on the hub expected, none half-made: {devices:?}"),
    );
    drop(hub);
    eprintln!("concurrent_registrations: {:?}", started.elapsed());
    p.none();
}

/// The DPS service API refuses the hub's iothubowner (it has none of the provisioning
/// rights) naming the missing right, writes nothing for it, and takes
/// provisioningserviceowner.
#[test]
fn the_dps_service_api_needs_the_provisioning_rights() {
    let started = Instant::now();
    let t = tmp();
    let d = t.path();
    let hub = Hub::start(d, "data", HOST);
    let rt = runtime();
    let mut p = Problems::default();
    let call = |policy: &str, method: &str, path: &str, body: &Value| -> Reply {
        let mut args = vec!["hub", "connection-string"];
        if !policy.is_empty() {
            args.extend(["--policy", policy]);
        }
        let cs = hub.ok(&args).stdout.trim().to_string();
        let cs = certhub_core::ServiceConnectionString::parse(&cs).expect("a connection string");
        let token = certhub_core::sign_token(&cs.host, &cs.key, Some(&cs.policy), now() + 600);
        let body = body.to_string();
        rt.block_on(https(
            anonymous_tls(&hub.data),
            HOST,
            hub.process.https_port(),
            method,
            &format!("{path}?api-version=2021-10-01"),
            &[("Authorization", token)],
            body.as_bytes(),
        ))
    };
    let group = json!({
        "enrollmentGroupId": "g1",
        "attestation": {"type": "symmetricKey", "symmetricKey": {}},
    });
    let enrollment = json!({
        "registrationId": "r1",
        "attestation": {"type": "symmetricKey", "symmetricKey": {}},
    });
    // (method, path, body, the right it needs)
    let requests = [
        ("PUT", "/enrollmentGroups/g1", &group, "EnrollmentWrite"),
        ("PUT", "/enrollments/r1", &enrollment, "EnrollmentWrite"),
        (
            "POST",
            "/enrollmentGroups/query",
            &json!({"query": "*"}),
            "EnrollmentRead",
        ),
        (
            "POST",
            "/enrollments/query",
            &json!({"query": "*"}),
            "EnrollmentRead",
        ),
        (
            "GET",
            "/registrations/r1",
            &Value::Null,
            "RegistrationStatusRead",
        ),
    ];
    for (method, path, body, right) in requests {
        let what = format!("{method} {path} as iothubowner");
        let body = if body.is_null() {
            json!({})
        } else {
            body.clone()
        };
        let r = call("", method, path, &body);
        p.check(r.status == 401, format!("{what}: 401 expected, got {r}"));
        p.check(
            r.message().contains(right) && r.message().contains("iothubowner"),
            format!("{what}: the message should name iothubowner and {right}: {r}"),
        );
    }
    // Nothing was written for it.
    let r = call(
        "provisioningserviceowner",
        "POST",
        "/enrollmentGroups/query",
        &json!({"query": "*"}),
    );
    p.check(
        r.status == 200 && r.json() == json!([]),
        format!("no group after iothubowner's refused writes: {r}"),
    );
    let r = call(
        "provisioningserviceowner",
        "POST",
        "/enrollments/query",
        &json!({"query": "*"}),
    );
    p.check(
        r.status == 200 && r.json() == json!([]),
        format!("no enrollment after iothubowner's refused writes: {r}"),
    );
    // provisioningserviceowner may.
    let r = call(
        "provisioningserviceowner",
        "PUT",
        "/enrollmentGroups/g1",
        &group,
    );
    p.check(
        r.status == 200 && r.json()["enrollmentGroupId"] == "g1",
        format!("PUT /enrollmentGroups/g1 as provisioningserviceowner: 200 expected, got {r}"),
    );
    let r = call(
        "provisioningserviceowner",
        "PUT",
        "/enrollments/r1",
        &enrollment,
    );
    p.check(
        r.status == 200 && r.json()["registrationId"] == "r1",
        format!("PUT /enrollments/r1 as provisioningserviceowner: 200 expected, got {r}"),
    );
    let r = call(
        "provisioningserviceowner",
        "GET",
        "/registrations/r1",
        &json!({}),
    );
    p.check(
        r.status == 404,
        format!("GET /registrations/r1 (never registered) as provisioningserviceowner: 404 expected, got {r}"),
    );
    // And the other way round: provisioningserviceowner cannot manage the hub's registry.
    let r = call("provisioningserviceowner", "GET", "/devices", &json!({}));
    p.check(
        r.status == 401,
        format!("GET /devices as provisioningserviceowner: 401 expected, got {r}"),
    );
    drop(hub);
    eprintln!("the_dps_service_api: {:?}", started.elapsed());
    p.none();
}
