//! Shared helpers for the `certhub` CLI integration tests: run the real binary and the real
//! `openssl` command line in a per-test temporary folder, and check what they print.
//!
//! Every path handed to a command is absolute, so a message that names a file can be checked
//! for the exact path.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use tempfile::TempDir;

/// What a finished command left behind.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(what: String, out: Output) -> Self {
        Self {
            what,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts exit 0 and returns self for chaining.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "expected success from {self}");
        assert!(!self.stderr.contains("panicked"), "panic in {self}");
        self
    }

    /// Asserts the exit code.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "expected exit {code} from {self}");
        assert!(!self.stderr.contains("panicked"), "panic in {self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (exit {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

fn describe(program: &str, args: &[&OsStr]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs the certhub binary under test in `cwd`.
pub fn certhub<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Run {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
        .args(&args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the certhub binary runs");
    Run::from(describe("certhub", &args), out)
}

/// Runs `certhub ARGS --data-dir DATA` in `cwd`: the CLI against the hub whose data directory
/// is `data`.
pub fn certhub_at(cwd: &Path, data: &Path, args: &[&str]) -> Run {
    let mut v: Vec<&str> = args.to_vec();
    v.extend_from_slice(&["--data-dir", s(data)]);
    certhub(cwd, &v)
}

/// Runs the `openssl` command line in `cwd`. Panics with a clear message if it is missing: these
/// tests are about interoperability with the real thing.
pub fn openssl<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Run {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let out = match Command::new("openssl")
        .args(&args)
        .current_dir(cwd)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the `openssl` command line (OpenSSL 3) is required by these tests but is not on PATH"
        ),
        Err(e) => panic!("cannot run openssl: {e}"),
    };
    Run::from(describe("openssl", &args), out)
}

/// A fresh temporary folder for one test.
pub fn tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("certhub-test-")
        .tempdir()
        .expect("a temporary folder")
}

/// The path as text (temporary folders are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

pub fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub fn read_text(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub fn write(p: &Path, contents: impl AsRef<[u8]>) {
    fs::write(p, contents).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

/// `certhub pki root` into `dir/name`.
pub fn root(dir: &Path, name: &str, subject: &str, algorithm: &str) -> PathBuf {
    let out = dir.join(name);
    certhub(
        dir,
        &[
            "pki",
            "root",
            "--subject",
            subject,
            "--algorithm",
            algorithm,
            "--out",
            s(&out),
        ],
    )
    .ok();
    out
}

/// `certhub pki request` into `dir/name`.
pub fn request(dir: &Path, name: &str, subject: &str, algorithm: &str) -> PathBuf {
    let out = dir.join(name);
    certhub(
        dir,
        &[
            "pki",
            "request",
            "--subject",
            subject,
            "--algorithm",
            algorithm,
            "--out",
            s(&out),
        ],
    )
    .ok();
    out
}

/// `certhub pki sign` of `csr` by the issuer folder into `out`, whatever the outcome.
pub fn sign_run(dir: &Path, issuer: &Path, csr: &Path, profile: &str, out: &Path) -> Run {
    certhub(
        dir,
        &[
            "pki",
            "sign",
            "--issuer",
            s(issuer),
            "--csr",
            s(csr),
            "--profile",
            profile,
            "--out",
            s(out),
        ],
    )
}

/// `certhub pki sign` of `csr` by the issuer folder into `out`; returns the run (exit 0).
pub fn sign(dir: &Path, issuer: &Path, csr: &Path, profile: &str, out: &Path) -> Run {
    sign_run(dir, issuer, csr, profile, out).ok()
}

/// Request + sign in one go: a folder `name` with key.pem, request.csr, cert.pem, chain.pem.
pub fn issue(
    dir: &Path,
    issuer: &Path,
    name: &str,
    subject: &str,
    profile: &str,
    algorithm: &str,
) -> PathBuf {
    let folder = request(dir, name, subject, algorithm);
    sign(dir, issuer, &folder.join("request.csr"), profile, &folder);
    folder
}

/// A small P-256 hierarchy made with certhub: `root` -> `int` (intermediate) -> `dev`
/// (device, CN = `device-1`).
pub struct Hierarchy {
    pub root: PathBuf,
    pub int: PathBuf,
    pub dev: PathBuf,
}

pub fn hierarchy(dir: &Path) -> Hierarchy {
    let root = root(dir, "root", "CN=Test Root CA, O=Acme", "ecdsa-p256");
    let int = issue(
        dir,
        &root,
        "int",
        "CN=Test Intermediate CA, O=Acme",
        "intermediate",
        "ecdsa-p256",
    );
    let dev = issue(dir, &int, "dev", "CN=device-1", "device", "ecdsa-p256");
    Hierarchy { root, int, dev }
}

/// `openssl x509 -noout -fingerprint -<digest>` as uppercase hex without colons.
pub fn openssl_fingerprint(dir: &Path, cert: &Path, der: bool, digest: &str) -> String {
    let mut args = vec!["x509", "-in", s(cert), "-noout", "-fingerprint", digest];
    if der {
        args.extend(["-inform", "DER"]);
    }
    let run = openssl(dir, &args).ok();
    let line = run.stdout.trim();
    let (_, hex) = line
        .split_once('=')
        .unwrap_or_else(|| panic!("no fingerprint in {run}"));
    hex.replace(':', "").to_ascii_uppercase()
}

/// `certhub pki thumbprint` as (SHA1, SHA256), checking the output format.
pub fn certhub_thumbprints(dir: &Path, file: &Path) -> (String, String) {
    let run = certhub(dir, &["pki", "thumbprint", s(file)]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "two lines expected from {run}");
    let sha1 = lines[0]
        .strip_prefix("SHA1   ")
        .unwrap_or_else(|| panic!("`SHA1   <hex>` expected in {run}"));
    let sha256 = lines[1]
        .strip_prefix("SHA256 ")
        .unwrap_or_else(|| panic!("`SHA256 <hex>` expected in {run}"));
    assert_eq!(sha1.len(), 40, "{run}");
    assert_eq!(sha256.len(), 64, "{run}");
    (sha1.to_string(), sha256.to_string())
}

/// Asserts that certhub's thumbprints of `cert` equal openssl's fingerprints.
#[track_caller]
pub fn assert_thumbprints_match(dir: &Path, cert: &Path, der: bool) {
    let (sha1, sha256) = certhub_thumbprints(dir, cert);
    assert_eq!(
        sha1,
        openssl_fingerprint(dir, cert, der, "-sha1"),
        "SHA-1 of {}",
        cert.display()
    );
    assert_eq!(
        sha256,
        openssl_fingerprint(dir, cert, der, "-sha256"),
        "SHA-256 of {}",
        cert.display()
    );
}

/// Converts a PEM certificate to DER with openssl; returns the DER file's path.
pub fn to_der(dir: &Path, pem: &Path, out: &Path) -> PathBuf {
    openssl(
        dir,
        &["x509", "-in", s(pem), "-outform", "DER", "-out", s(out)],
    )
    .ok();
    out.to_path_buf()
}

/// `certhub pki inspect --json` of a certificate file, parsed.
pub fn inspect_json(dir: &Path, file: &Path) -> serde_json::Value {
    let run = certhub(dir, &["pki", "inspect", "--json", s(file)]).ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"))
}

/// Asserts a certhub error as the CLI promises it: exit 2, exactly one line on stderr that
/// starts with `error: ` and contains every needle (case-insensitive), no panic.
#[track_caller]
pub fn assert_error(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, Some(2), "expected exit 2 from {run}");
    assert!(!run.stderr.contains("panicked"), "panic in {run}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line on stderr expected from {run}"
    );
    assert!(
        lines[0].starts_with("error: "),
        "stderr must start with `error: ` in {run}"
    );
    let lower = lines[0].to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "stderr should mention {n:?} in {run}"
        );
    }
}

/// Every entry under `dir`, recursively, with its contents (None for folders), sorted.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {}: {e}", d.display())) {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                all.push((path.clone(), None));
                stack.push(path);
            } else {
                let contents = read(&path);
                all.push((path, Some(contents)));
            }
        }
    }
    all.sort();
    all
}

/// Asserts that nothing named `*.partial*` was left anywhere under `dir`.
#[track_caller]
pub fn assert_no_partial(dir: &Path) {
    for (path, _) in snapshot(dir) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            !name.unwrap_or_default().contains(".partial"),
            "leftover {}",
            path.display()
        );
    }
}

/// A hub subprocess, killed when dropped.
pub struct HubProcess {
    child: Child,
    /// `host:port` of the service API, as clients put it in `HostName=`.
    pub host: String,
    /// The port devices connect to (MQTT over TLS).
    pub mqtt_port: u16,
    /// The port of the AMQP listener (devices and services, AMQP 1.0 over TLS).
    pub amqp_port: u16,
}

impl HubProcess {
    /// The port of the 443 listener (service API, MQTT over WebSockets, HTTPS devices).
    pub fn https_port(&self) -> u16 {
        self.host
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the hub's host:port")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|status| status.is_none())
    }

    /// SIGKILL: the hub gets no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it as a service manager does (SIGTERM) and waits up to `within` for it to exit;
    /// its exit code, or `None` if it had to be killed.
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill();
        None
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_hub(data_dir: &Path) -> HubProcess {
    start_hub_plus(data_dir, &[])
}

/// [`start_hub`] with more `certhub serve` flags.
pub fn start_hub_plus(data_dir: &Path, extra: &[&str]) -> HubProcess {
    let mut args = vec![
        "--https-addr",
        "127.0.0.1:0",
        "--mqtt-addr",
        "127.0.0.1:0",
        "--hostname",
        "localhost",
    ];
    args.extend_from_slice(extra);
    start_hub_with(data_dir, &args)
}

/// [`start_hub_with`] with every listener on a free port of `host`, which is also the hub's
/// host name, and `extra` flags.
pub fn start_hub_on(data_dir: &Path, host: &str, extra: &[&str]) -> HubProcess {
    let any_port = format!("{host}:0");
    let mut args = vec![
        "--hostname",
        host,
        "--https-addr",
        &any_port,
        "--mqtt-addr",
        &any_port,
    ];
    args.extend_from_slice(extra);
    start_hub_with(data_dir, &args)
}

/// Panics unless `args` give both listeners an address of their own: never the defaults
/// (0.0.0.0:443 and 0.0.0.0:8883, where a user's own hub listens), no unspecified address and
/// no port 443 or 8883 (on Linux, 127.0.0.x:8883 cannot be bound while a hub holds
/// 0.0.0.0:8883). Port 0 takes a free port.
fn assert_test_addresses(args: &[&str]) {
    for flag in ["--https-addr", "--mqtt-addr"] {
        let given = args
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("a test hub needs {flag}: the default is a user's hub's"));
        let addr: std::net::SocketAddr = given
            .parse()
            .unwrap_or_else(|_| panic!("{flag} {given}: IP:PORT expected"));
        assert!(
            !addr.ip().is_unspecified() && ![443, 8883].contains(&addr.port()),
            "{flag} {given}: tests must not use the addresses or ports of a user's own hub; use port 0"
        );
    }
}

/// Starts `certhub serve --data-dir DATA_DIR ARGS...`. Without `--amqp-addr` in ARGS, the AMQP
/// listener takes a free port of the MQTT listener's address.
pub fn start_hub_with(data_dir: &Path, args: &[&str]) -> HubProcess {
    assert_test_addresses(args);
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if !args.iter().any(|a| a == "--amqp-addr") {
        let mqtt = args
            .windows(2)
            .find(|w| w[0] == "--mqtt-addr")
            .map(|w| w[1].clone())
            .expect("--mqtt-addr");
        let ip = mqtt.rsplit_once(':').map_or(mqtt.as_str(), |(ip, _)| ip);
        args.extend(["--amqp-addr".to_string(), format!("{ip}:0")]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_certhub"))
        .args(["serve", "--data-dir", s(data_dir)])
        .args(&args)
        .env("CERTHUB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("certhub serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut host = None;
    let mut mqtt_port = None;
    let mut amqp_port = None;
    for line in lines.by_ref() {
        let line = line.expect("a line");
        if let Some(rest) = line.trim().strip_prefix("service API") {
            let url = rest.split_whitespace().next().expect("url");
            host = url.strip_prefix("https://").map(str::to_string);
        }
        if let Some(rest) = line.trim().strip_prefix("devices (AMQP)") {
            let addr = rest.split_whitespace().next().expect("address");
            amqp_port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if let Some(rest) = line.trim().strip_prefix("devices (MQTT)") {
            let addr = rest.split_whitespace().next().expect("address");
            mqtt_port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            break;
        }
    }
    // Keep reading, so the hub never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    HubProcess {
        child,
        host: host.expect("the hub printed its service API address"),
        mqtt_port: mqtt_port.expect("the hub printed its MQTT address"),
        amqp_port: amqp_port.expect("the hub printed its AMQP address"),
    }
}

/// The Python of the repository's virtualenv (scripts/test makes it), or `CERTHUB_PYTHON`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CERTHUB_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test, which installs the Azure IoT Python SDKs into .venv",
        venv.display()
    );
    venv
}

/// The virtualenv's Python ([`python`]) with the test port map, tests/interop/portmap: the Azure
/// device SDK always dials MQTT on port 8883, and with the map its connections (and any other
/// made with `socket.create_connection`) to port 8883 go to `mqtt_port` instead, where the hub
/// under test listens. The SDK and the scripts stay as they are. Checks first that the map is in
/// effect, so a test can never reach a hub it did not start.
pub fn python_to_hub(hub: &HubProcess) -> Command {
    python_to_ports(hub.mqtt_port, hub.https_port(), hub.amqp_port)
}

/// [`python_to_hub`] for a hub (or a load balancer) whose MQTT, HTTPS and AMQP listeners are
/// on these ports.
pub fn python_to_ports(mqtt_port: u16, https_port: u16, amqp_port: u16) -> Command {
    let portmap = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/portmap");
    // MQTT on 8883, 443 for MQTT over WebSockets and the HTTPS device API, 5671 for AMQP
    // (uamqp under the service SDK's send_c2d_message).
    let map = format!("8883={mqtt_port},443={https_port},5671={amqp_port}");
    let command = || {
        let mut c = Command::new(python());
        c.env("PYTHONPATH", &portmap)
            .env("CERTHUB_TEST_PORT_MAP", &map);
        c
    };
    let check = command()
        .args([
            "-c",
            "import socket, sitecustomize; print(sitecustomize.PORT_MAP, socket.create_connection.__name__, \
             getattr(getattr(sitecustomize, '_uamqp_common', None), 'AMQPAuth', None) and \
             sitecustomize._uamqp_common.AMQPAuth.set_tlsio.__name__)",
        ])
        .output()
        .expect("python runs");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!(
            "{{8883: {mqtt_port}, 443: {https_port}, 5671: {amqp_port}}} _mapped_create_connection \
             _mapped_set_tlsio"
        ),
        "the test port map is not in effect: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    command()
}

/// One `mosquitto_pub` run (Debian package mosquitto-clients): a QoS 1 publish to the hub on
/// `localhost:port`, presenting `widget/chain.pem` with `widget/key.pem`.
#[derive(Debug)]
pub struct Pub<'a> {
    pub port: u16,
    pub ca: &'a str,
    pub widget: &'a str,
    pub client_id: &'a str,
    pub topic: &'a str,
    pub message: &'a str,
    pub extra: &'a [&'a str],
}

pub fn mosquitto_pub(dir: &Path, p: &Pub<'_>) -> Output {
    Command::new("mosquitto_pub")
        .current_dir(dir)
        .args([
            "-h",
            "localhost",
            "-p",
            &p.port.to_string(),
            "-V",
            "mqttv311",
            "--cafile",
            p.ca,
            "--cert",
            &format!("{}/chain.pem", p.widget),
            "--key",
            &format!("{}/key.pem", p.widget),
            "-i",
            p.client_id,
            "-u",
            &format!("localhost/{}/?api-version=2021-04-12", p.client_id),
            "-t",
            p.topic,
            "-q",
            "1",
            "-m",
            p.message,
        ])
        .args(p.extra)
        .output()
        .unwrap_or_else(|e| {
            panic!("mosquitto_pub (Debian package mosquitto-clients) is required: {e}")
        })
}

/// A device certificate with subject `CN=cn`, requested in `dir/out` (the key stays there) and
/// signed by the demo supply chain's Technician-Z (`dir/pki/technician-z`) from the CSR.
pub fn technician_signed(dir: &Path, cn: &str, out: &str) {
    certhub(
        dir,
        &[
            "pki",
            "request",
            "--subject",
            &format!("CN={cn}"),
            "--out",
            out,
        ],
    )
    .ok();
    certhub(
        dir,
        &[
            "pki",
            "sign",
            "--issuer",
            "pki/technician-z",
            "--csr",
            &format!("{out}/request.csr"),
            "--profile",
            "device",
            "--out",
            out,
        ],
    )
    .ok();
}

/// The demo supply chain with `devices` widgets (in `dir/pki`), its root registered as verified
/// on the hub whose data directory is `data`; no device is registered.
pub fn enroll_company_x(dir: &Path, data: &Path, devices: usize) {
    certhub(
        dir,
        &[
            "pki",
            "demo",
            "supply-chain",
            "--out",
            "pki",
            "--devices",
            &devices.to_string(),
        ],
    )
    .ok();
    certhub(
        dir,
        &[
            "ca",
            "upload",
            "--name",
            "company-x",
            "--file",
            "pki/company-x/cert.pem",
            "--verified",
            "--data-dir",
            s(data),
        ],
    )
    .ok();
}

/// [`enroll_company_x`] with one widget, `smart-x-widget-0001`, registered as a
/// CA-authenticated device.
pub fn enroll_widget(dir: &Path, data: &Path) {
    enroll_company_x(dir, data, 1);
    let data = s(data);
    certhub(
        dir,
        &[
            "device",
            "create",
            "--id",
            "smart-x-widget-0001",
            "--auth-method",
            "x509-ca",
            "--data-dir",
            data,
        ],
    )
    .ok();
}

/// Hand-made MQTT 3.1.1 packets, for what no client library would send.
pub mod wire {
    /// A UTF-8 string with its two-byte length.
    pub fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    /// A packet: its first byte, the remaining length (variable-length integer) and `body`.
    pub fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
        let mut out = vec![first];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend(body);
        out
    }
}

/// A TLS client that trusts the hub of `data` and presents the chain and key in `device`
/// (`chain.pem`, `key.pem`), as a device does.
pub fn device_tls(data: &Path, device: &Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(data.join("tls/server-ca.pem")).expect("ca") {
        roots.add(c.expect("pem")).expect("root");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(device.join("chain.pem"))
            .expect("chain")
            .map(|c| c.expect("pem"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(device.join("key.pem")).expect("key");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Starts a hub in `dir/data` on `host` (with `extra` serve flags), enrolls the four-level
/// widget and a SAS device `uploader-sas`, and runs tests/interop/upload.py against it (the
/// Python SDK's file upload with azure-storage-blob, every file read back through the hub);
/// returns the hub, still running.
pub fn hub_after_python_uploads(dir: &Path, host: &str, extra: &[&str]) -> HubProcess {
    let data = dir.join("data");
    let https = format!("{host}:0");
    let mut args = vec![
        "--hostname",
        host,
        "--https-addr",
        &https,
        "--mqtt-addr",
        &https,
    ];
    args.extend_from_slice(extra);
    let hub_process = start_hub_with(&data, &args);
    let hub = |args: &[&str]| certhub_at(dir, &data, args).ok();
    enroll_widget(dir, &data);
    let sas = hub(&["device", "create", "--id", "uploader-sas"]);
    let sas: serde_json::Value = serde_json::from_str(&sas.stdout).expect("json");
    let key = sas["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("key")
        .to_string();
    let cs = hub(&["hub", "connection-string"]).stdout.trim().to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/upload.py");
    let out = python_to_hub(&hub_process)
        .arg(&script)
        .current_dir(dir)
        .env("CERTHUB_HOST", host)
        .env("CERTHUB_CA", data.join("tls/server-ca.pem"))
        .env("CERTHUB_CONNECTION_STRING", &cs)
        .env("CERTHUB_DIR", dir.join("pki"))
        .env("CERTHUB_SAS_DEVICE", "uploader-sas")
        .env("CERTHUB_SAS_KEY", &key)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all upload checks passed"),
        "upload.py against the hub ({extra:?}) failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hub_process
}

/// Asserts that an interop script succeeded and printed `last` (its closing line); prints and
/// returns its output.
pub fn script_passed(out: &Output, script: &str, last: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(last),
        "{script} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout.into_owned()
}

/// tests/interop/node: the Node.js scripts and their pinned packages.
pub fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/node")
}

/// `node` with the test port map loaded (`--require portmap.js`), the pinned packages of
/// tests/interop/node on its module path (`packages` must be installed there). Checks first that the map is in effect, so the SDK
/// can never reach a hub this test did not start.
pub fn node_to_hub(hub: &HubProcess, packages: &[&str]) -> Command {
    node_to_ports(hub.mqtt_port, hub.https_port(), hub.amqp_port, packages)
}

/// [`node_to_hub`] with the ports that 8883, 443 and 5671 go to given (a load balancer's).
pub fn node_to_ports(
    mqtt_port: u16,
    https_port: u16,
    amqp_port: u16,
    packages: &[&str],
) -> Command {
    let dir = node_dir();
    for package in packages {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "{} has no node_modules/{package}: run scripts/test, which installs the pinned \
             Node.js packages (npm ci in tests/interop/node)",
            dir.display()
        );
    }
    let portmap = dir.join("portmap.js");
    let map = format!("8883={mqtt_port},443={https_port},5671={amqp_port}");
    let command = || {
        let mut c = Command::new("node");
        c.env(
            "NODE_OPTIONS",
            format!("--require {}", portmap.to_str().expect("a UTF-8 path")),
        )
        .env("CERTHUB_TEST_PORT_MAP", &map)
        .env("NODE_PATH", dir.join("node_modules"));
        c
    };
    let check = command()
        .args([
            "-e",
            "const p = require('./portmap.js'); console.log(JSON.stringify(p.PORT_MAP), \
             require('net').connect.name, require('net').createConnection.name, \
             require('tls').connect.name)",
        ])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("node (Node.js 20) is required by this test: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!(
            "{{\"443\":{https_port},\"5671\":{amqp_port},\"8883\":{mqtt_port}}} \
             _mappedNetConnect \
             _mappedNetCreateConnection _mappedTlsConnect"
        ),
        "the Node test port map is not in effect: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    command()
}

/// Runs tests/interop/eventhub.py (the Python Event Hubs SDK's checks) against `hub` at
/// `host`, whose data directory is `data`, with the PKI in `dir/pki`; panics unless it passes.
pub fn event_hubs_checks(
    hub: &HubProcess,
    dir: &Path,
    data: &Path,
    host: &str,
    cs: &str,
    eh: &str,
) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/eventhub.py");
    let out = python_to_hub(hub)
        .arg(&script)
        .current_dir(dir)
        .env("CERTHUB_HOST", host)
        .env("CERTHUB_CA", data.join("tls/server-ca.pem"))
        .env("CERTHUB_CONNECTION_STRING", cs)
        .env("CERTHUB_EVENT_HUB", eh)
        .env("CERTHUB_DIR", dir.join("pki"))
        .output()
        .expect("python runs");
    script_passed(&out, "eventhub.py", "all event hub checks passed");
}

/// The packages tests/interop/node/provisioning.js needs.
pub const NODE_PROVISIONING_PACKAGES: &[&str] = &[
    "azure-iot-provisioning-device",
    "azure-iot-provisioning-device-mqtt",
    "azure-iot-provisioning-device-http",
    "azure-iot-provisioning-device-amqp",
    "azure-iot-provisioning-service",
    "azure-iot-security-x509",
    "azure-iot-security-symmetric-key",
    "azure-iot-device",
    "azure-iot-device-mqtt",
];

/// The primary key the CLI gives the individual enrollment `cli-sensor` for provisioning.js.
pub const PROVISIONING_CLI_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// What tests/interop/node/provisioning.js expects, made through the CLI with `data`'s hub:
/// Company-X's chain with five widgets (one per device transport), none registered on the
/// hub, the root verified; the individual enrollment `cli-sensor` and the group `cli-group`.
/// Then runs the script with `node` (the port map in place) against `host`: its output, once
/// it has succeeded and said so last.
pub fn run_provisioning_script(d: &Path, data: &Path, host: &str, node: Command) -> String {
    let hub = |args: &[&str]| certhub_at(d, data, args).ok();
    enroll_company_x(d, data, 5);
    hub(&[
        "dps",
        "enrollment",
        "create",
        "--registration-id",
        "cli-sensor",
        "--device-id",
        "cli-sensor-device",
        "--symmetric-key",
        "--primary-key",
        PROVISIONING_CLI_KEY,
    ]);
    hub(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "cli-group",
        "--symmetric-key",
    ]);
    let scope = hub(&["dps", "id-scope"]).stdout.trim().to_string();
    assert!(scope.starts_with("0ne") && scope.len() == 11, "{scope}");
    let cs = hub(&["hub", "connection-string"]).stdout.trim().to_string();
    let dps_cs = hub(&[
        "hub",
        "connection-string",
        "--policy",
        "provisioningserviceowner",
    ])
    .stdout
    .trim()
    .to_string();
    assert!(
        dps_cs.contains("SharedAccessKeyName=provisioningserviceowner;"),
        "{dps_cs}"
    );
    // Every node of a cluster follows the CA within half a second (one node: at once).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let ca = data.join("tls/server-ca.pem");
    let mut node = node;
    let out = node
        .arg(node_dir().join("provisioning.js"))
        .current_dir(d)
        .env("CERTHUB_HOST", host)
        .env("CERTHUB_CA", &ca)
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("CERTHUB_CONNECTION_STRING", &cs)
        .env("CERTHUB_DPS_CONNECTION_STRING", &dps_cs)
        .env("CERTHUB_DIR", d.join("pki"))
        .env("CERTHUB_ID_SCOPE", &scope)
        .env("CERTHUB_CLI_KEY", PROVISIONING_CLI_KEY)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "provisioning.js failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("provisioning: all node checks passed"),
        "{stdout}\n--- stderr\n{stderr}"
    );
    stdout.into_owned()
}

/// Whether `pki/devices/<id>` publishes as `id` (one `mosquitto_pub`).
pub fn publishes(d: &Path, port: u16, ca: &Path, id: &str) -> bool {
    publishes_from(d, port, ca, &format!("pki/devices/{id}"), id)
}

/// Whether the widget in the folder `widget` (chain.pem, key.pem) publishes as `id`.
pub fn publishes_from(d: &Path, port: u16, ca: &Path, widget: &str, id: &str) -> bool {
    mosquitto_pub(
        d,
        &Pub {
            port,
            ca: s(ca),
            widget,
            client_id: id,
            topic: &format!("devices/{id}/messages/events/"),
            message: "t",
            extra: &[],
        },
    )
    .status
    .success()
}

/// `mosquitto_sub` as a certificate-authenticated widget, kept connected.
pub fn subscribe(d: &Path, port: u16, ca: &Path, widget: &str, id: &str) -> Child {
    Command::new("mosquitto_sub")
        .current_dir(d)
        .args(["-h", "localhost", "-p", &port.to_string(), "-V", "mqttv311"])
        .args(["--cafile", s(ca)])
        .args(["--cert", &format!("{widget}/chain.pem")])
        .args(["--key", &format!("{widget}/key.pem")])
        .args([
            "-i",
            id,
            "-u",
            &format!("localhost/{id}/?api-version=2021-04-12"),
        ])
        .args([
            "-t",
            &format!("devices/{id}/messages/devicebound/#"),
            "-q",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients) runs")
}

/// Polls `check` every 100 ms for up to `secs`; panics with `what` when it never holds.
pub fn wait_until(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    start.elapsed()
}

/// Whether the registry shows `id` connected now (`certhub device show` against `data`).
pub fn is_connected(d: &Path, data: &Path, id: &str) -> bool {
    certhub_at(d, data, &["device", "show", "--id", id])
        .ok()
        .stdout
        .contains("\"connectionState\": \"Connected\"")
}
