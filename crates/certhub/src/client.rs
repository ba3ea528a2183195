//! The CLI's way to the hub's service API: a connection string (`--connection-string`,
//! `CERTHUB_CONNECTION_STRING`) and the hub's server CA (`--ca-file`, `CERTHUB_CA_FILE`), or,
//! on the hub's own machine, its data directory (`--data-dir`), which holds both.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use certhub_core::sign_token;
use clap::Args;
use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// How to reach the hub.
#[derive(Debug, Args, Clone)]
pub struct HubArgs {
    /// HostName=...;SharedAccessKeyName=...;SharedAccessKey=... (`certhub hub connection-string`).
    #[arg(long, env = "CERTHUB_CONNECTION_STRING", hide_env_values = true)]
    connection_string: Option<String>,
    /// The hub's server CA (PEM) to trust (`certhub hub server-ca`).
    #[arg(long, env = "CERTHUB_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// On the hub's machine: its data directory, for the connection string and the CA.
    #[arg(long, env = "CERTHUB_DATA_DIR", default_value = "certhub-data")]
    data_dir: PathBuf,
}

/// A connected client: base URL, policy, key, and a TLS agent that trusts the hub's CA.
#[derive(Debug)]
pub struct Client {
    host: String,
    policy: String,
    key: String,
    agent: ureq::Agent,
}

/// An answer from the hub: status and JSON body (null when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// The `ETag` header, unquoted.
    pub etag: Option<String>,
    /// The `x-ms-continuation` header: where the next page starts.
    pub continuation: Option<String>,
}

/// What a name in a request path names: the error for an empty one says which flag to fill and
/// where to find the names there are.
#[derive(Debug, Clone, Copy)]
pub enum Names {
    Device,
    Module,
    Ca,
    /// A feedback lock token, from the hub's `ETag`.
    LockToken,
    /// A file upload's correlation id.
    Upload,
    /// An enrollment group's id.
    EnrollmentGroup,
    /// A registration id.
    Registration,
    /// A linked hub's name.
    LinkedHub,
    /// A CRL's issuer key under a CA.
    Crl,
    /// A block's id.
    Block,
    /// A twin path to index.
    TwinPath,
}

impl Names {
    fn empty(self, flag: &str) -> anyhow::Error {
        match self {
            Self::Device => anyhow::anyhow!(
                "{flag} is empty: give the device's id (`certhub device list` shows the registered ones)"
            ),
            Self::Module => anyhow::anyhow!(
                "{flag} is empty: give the module's id (`certhub device list --id DEVICE` shows a device's modules)"
            ),
            Self::Ca => anyhow::anyhow!(
                "{flag} is empty: give the CA's name (`certhub ca list` shows the registered ones)"
            ),
            Self::LockToken => anyhow::anyhow!("the hub sent an empty lock token ({flag})"),
            Self::Upload => anyhow::anyhow!(
                "{flag} is empty: give an upload's correlation id (`certhub files list` shows them)"
            ),
            Self::EnrollmentGroup => anyhow::anyhow!(
                "{flag} is empty: give the enrollment group's id (`certhub dps enrollment-group list` shows them)"
            ),
            Self::LinkedHub => anyhow::anyhow!(
                "{flag} is empty: give the linked hub's name (`certhub dps hub list` shows them)"
            ),
            Self::Registration => anyhow::anyhow!(
                "{flag} is empty: give a registration id (`certhub dps registrations` shows them)"
            ),
            Self::Block => anyhow::anyhow!(
                "{flag} is empty: give the certificate's SHA-256 thumbprint (`certhub ca blocks` lists the blocks)"
            ),
            Self::TwinPath => anyhow::anyhow!(
                "{flag} is empty: give a twin path such as tags.site (`certhub hub twin-index list` shows the indexed ones)"
            ),
            Self::Crl => anyhow::anyhow!(
                "{flag} is empty: give the CRL's issuer key (`certhub ca crl list --name CA` shows them)"
            ),
        }
    }
}

/// `value`, a name given through `flag`, unless it is empty: an empty name would address the
/// collection (or all of it) instead of one member.
pub fn given<'a>(names: Names, flag: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(names.empty(flag));
    }
    Ok(value)
}

/// A request path of the service API and its query, built from fixed parts and the names a user
/// gave. The only way a name gets into a request: each one is a single segment (or query
/// value), percent-encoded except for RFC 3986's unreserved characters, so a `#`, `?`, `%`,
/// `/` or space in it can never reach a different resource: the hub decodes exactly the name
/// that was typed, and acts on it or refuses it.
#[derive(Debug, Clone)]
pub struct ApiPath {
    path: String,
    query: Vec<(&'static str, String)>,
}

impl ApiPath {
    /// Fixed parts of the API, e.g. `"messages/serviceBound/feedback"` (never user input:
    /// only string literals live for `'static`).
    pub fn fixed(parts: &'static str) -> Self {
        Self {
            path: String::new(),
            query: Vec::new(),
        }
        .then(parts)
    }

    /// Appends fixed parts.
    pub fn then(mut self, parts: &'static str) -> Self {
        self.path.push('/');
        self.path.push_str(parts.trim_matches('/'));
        self
    }

    /// Appends one segment: a name given through `flag` (see [`given`]).
    pub fn name(mut self, names: Names, flag: &str, value: &str) -> Result<Self> {
        let value = given(names, flag, value)?;
        self.path.push('/');
        // `.` and `..` are valid ids; encoded, no URL normalisation can take them for dot
        // segments.
        if value.bytes().all(|b| b == b'.') {
            self.path.push_str(&"%2E".repeat(value.len()));
        } else {
            self.path.push_str(&encode(value));
        }
        Ok(self)
    }

    /// Adds `key=value` to the query.
    pub fn query(mut self, key: &'static str, value: impl std::fmt::Display) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    /// Adds `key=name` to the query: a name given through `flag` (see [`given`]).
    pub fn query_name(
        self,
        key: &'static str,
        names: Names,
        flag: &str,
        value: &str,
    ) -> Result<Self> {
        Ok(self.query(key, given(names, flag, value)?))
    }

    /// The path and query as sent, with the API version.
    fn render(&self) -> String {
        let mut s = self.path.clone();
        for (i, (k, v)) in self
            .query
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain([("api-version", API_VERSION)])
            .enumerate()
        {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            s.push('=');
            s.push_str(&encode(v));
        }
        s
    }
}

impl std::fmt::Display for ApiPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

const API_VERSION: &str = "2021-04-12";

/// Percent-encodes everything but RFC 3986's unreserved characters (A-Z a-z 0-9 - . _ ~),
/// byte by byte of the UTF-8.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Answer {
    /// The answer, or an error that quotes the hub when its status is 300 or above.
    pub fn checked(self) -> Result<Self> {
        if self.status >= 300 {
            return Err(hub_error(self.status, &self.body));
        }
        Ok(self)
    }
}

impl HubArgs {
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }
}

impl Client {
    pub fn connect(args: &HubArgs) -> Result<Self> {
        Self::connect_as(args, "iothubowner")
    }

    /// [`Client::connect`], with `policy`'s connection string when it is read from the data
    /// directory.
    pub fn connect_as(args: &HubArgs, policy: &str) -> Result<Self> {
        let cs = match &args.connection_string {
            Some(cs) => cs.clone(),
            None => crate::hub::local_connection_string(&args.data_dir, policy).with_context(|| {
                "no --connection-string (or CERTHUB_CONNECTION_STRING), and no hub data directory to read one from"
            })?,
        };
        let certhub_core::ServiceConnectionString { host, policy, key } =
            certhub_core::ServiceConnectionString::parse(&cs).map_err(anyhow::Error::msg)?;
        let ca_path = match &args.ca_file {
            Some(p) => p.clone(),
            None => {
                let local = args.data_dir.join("tls").join("server-ca.pem");
                if !local.exists() {
                    bail!(
                        "no --ca-file (or CERTHUB_CA_FILE): pass the hub's server CA, which `certhub hub server-ca` prints on the hub's machine"
                    );
                }
                local
            }
        };
        let pem = std::fs::read(&ca_path).with_context(|| format!("{}", ca_path.display()))?;
        let roots: Vec<Certificate<'static>> = certhub_pki::read_certificates(&pem)
            .with_context(|| format!("{}", ca_path.display()))?
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A hub whose address drops packets is reported after 10 s, not minutes.
            .timeout_connect(Some(std::time::Duration::from_secs(10)))
            .tls_config(tls)
            .build()
            .into();
        Ok(Self {
            host,
            policy,
            key,
            agent,
        })
    }

    /// The hub's host name, without the service port (what device tokens name).
    pub fn hostname(&self) -> &str {
        self.host.split(':').next().unwrap_or(&self.host)
    }

    fn token(&self) -> String {
        let expiry = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        sign_token(&self.host, &self.key, Some(&self.policy), expiry)
    }

    fn url(&self, path: &ApiPath) -> String {
        format!("https://{}{path}", self.host)
    }

    /// Why a request got no answer: a hub that is not there is said so, with what to check.
    fn unreachable(&self, method: &str, path: &ApiPath, e: ureq::Error) -> anyhow::Error {
        use std::io::ErrorKind as K;
        let reason = match &e {
            ureq::Error::Io(io) => match io.kind() {
                K::ConnectionRefused => Some("connection refused".to_string()),
                K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::AddrNotAvailable
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::NetworkDown
                | K::TimedOut => Some(io.to_string()),
                _ => None,
            },
            ureq::Error::HostNotFound => Some("host not found".to_string()),
            ureq::Error::ConnectionFailed => Some("connection failed".to_string()),
            ureq::Error::Timeout(t) => Some(format!("timed out ({t})")),
            _ => None,
        };
        match reason {
            Some(reason) => anyhow::anyhow!(
                "could not reach the hub at https://{}: {reason}. Is the hub running (`certhub serve`), and is this its address (HostName= of the connection string, or the endpoint recorded in --data-dir)?",
                self.host
            ),
            None => anyhow::Error::new(e).context(format!("{method} https://{}{path}", self.host)),
        }
    }

    /// Sends a request; `if_match` is quoted as the Azure SDKs do.
    pub fn send(
        &self,
        method: &str,
        path: &ApiPath,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let url = self.url(path);
        let token = self.token();
        let quoted = if_match.map(|t| format!("\"{t}\""));
        let result = match method {
            "GET" => retry_read(|| {
                let mut req = self.agent.get(&url).header("Authorization", &token);
                if let Some(m) = &quoted {
                    req = req.header("If-Match", m);
                }
                req.call()
            }),
            "DELETE" => {
                let mut req = self.agent.delete(&url).header("Authorization", &token);
                if let Some(m) = &quoted {
                    req = req.header("If-Match", m);
                }
                req.call()
            }
            _ => {
                let mut req = match method {
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                req = req.header("Authorization", &token);
                if let Some(m) = &quoted {
                    req = req.header("If-Match", m);
                }
                match body {
                    Some(b) => req.send_json(b),
                    None => req.send_empty(),
                }
            }
        };
        let mut resp = result.map_err(|e| self.unreachable(method, path, e))?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_string());
        let continuation = resp
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            etag,
            continuation,
        })
    }

    /// `POST path` of a paged query, from `continuation` (the previous page's
    /// `x-ms-continuation`); an answer of 300 or above is an error that quotes the hub.
    pub fn send_paged(
        &self,
        path: &ApiPath,
        continuation: Option<&str>,
        body: &Value,
    ) -> Result<Answer> {
        let send = || {
            let mut req = self
                .agent
                .post(self.url(path))
                .header("Authorization", &self.token());
            if let Some(c) = continuation {
                req = req.header("x-ms-continuation", c);
            }
            req.send_json(body)
        };
        let mut resp = retry_read(send).map_err(|e| self.unreachable("POST", path, e))?;
        let status = resp.status().as_u16();
        let continuation = resp
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            etag: None,
            continuation,
        }
        .checked()
    }

    /// Like [`Client::send`], turning any status >= 300 into an error that quotes the hub.
    pub fn expect(
        &self,
        method: &str,
        path: &ApiPath,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        Ok(self.expect_answer(method, path, if_match, body)?.body)
    }

    /// Like [`Client::expect`], with the whole answer (headers included).
    pub fn expect_answer(
        &self,
        method: &str,
        path: &ApiPath,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer> {
        self.send(method, path, if_match, body)?.checked()
    }
}

impl Client {
    /// `GET path`, its body copied into `out` as it arrives (any size); returns the bytes
    /// written and the response's headers.
    pub fn download(
        &self,
        path: &ApiPath,
        out: &mut dyn std::io::Write,
    ) -> Result<(u64, ureq::http::HeaderMap)> {
        let url = self.url(path);
        let mut resp = self
            .agent
            .get(&url)
            .header("Authorization", &self.token())
            .call()
            .map_err(|e| self.unreachable("GET", path, e))?;
        let status = resp.status().as_u16();
        if status >= 300 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(hub_error(status, &body));
        }
        let headers = resp.headers().clone();
        let mut reader = resp.body_mut().as_reader();
        let n = std::io::copy(&mut reader, out).context("reading the file from the hub")?;
        Ok((n, headers))
    }

    /// One page of `POST /devices/query` (up to 1000 items), the continuation token, and
    /// whether the hub read every twin for it (`x-certhub-query-plan: scanned`).
    pub fn query(
        &self,
        query: &str,
        continuation: Option<&str>,
    ) -> Result<(Value, Option<String>, bool)> {
        let path = ApiPath::fixed("devices/query");
        let url = self.url(&path);
        let mut req = self
            .agent
            .post(&url)
            .header("Authorization", &self.token())
            .header("x-ms-max-item-count", "1000");
        if let Some(c) = continuation {
            req = req.header("x-ms-continuation", c);
        }
        let mut resp = req
            .send_json(serde_json::json!({ "query": query }))
            .map_err(|e| self.unreachable("POST", &path, e))?;
        let status = resp.status().as_u16();
        let next = resp
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let scanned = resp
            .headers()
            .get("x-certhub-query-plan")
            .is_some_and(|v| v == "scanned");
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 300 {
            return Err(hub_error(status, &body));
        }
        Ok((body, next, scanned))
    }
}

/// An error answer, quoting the hub's Azure-shaped message.
fn hub_error(status: u16, body: &Value) -> anyhow::Error {
    // The provisioning service's errors are DPS's: errorCode and message.
    if let (Some(code), Some(text)) = (body["errorCode"].as_i64(), body["message"].as_str()) {
        return anyhow::anyhow!("the hub answered {status} {code}: {text}");
    }
    let message = body["Message"].as_str().unwrap_or("(no message)");
    let message = message.strip_prefix("ErrorCode:").unwrap_or(message);
    let (code, text) = message.split_once(';').unwrap_or(("", message));
    anyhow::anyhow!("the hub answered {status} {code}: {text}")
}

pub fn print_json(v: &Value) {
    out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Sends a read (a GET, or a query's POST) and, when the connection failed under it before an
/// answer came (a kept-alive connection the hub closed as the request went out: it closes
/// connections idle for 10 s), sends it once more on a new connection. Writes are never
/// retried.
fn retry_read<T>(
    send: impl Fn() -> std::result::Result<T, ureq::Error>,
) -> std::result::Result<T, ureq::Error> {
    match send() {
        Err(ureq::Error::Io(_)) => send(),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_segments_and_query_values() {
        let p = ApiPath::fixed("twins")
            .name(Names::Device, "--device", "a b#c?d%2F/é")
            .and_then(|p| p.then("modules").name(Names::Module, "--module", ".."))
            .expect("names")
            .then("methods");
        assert_eq!(
            p.to_string(),
            "/twins/a%20b%23c%3Fd%252F%2F%C3%A9/modules/%2E%2E/methods?api-version=2021-04-12"
        );
        let q = ApiPath::fixed("messages/events")
            .query("from", 7)
            .query_name("device", Names::Device, "--device", "x+y&top=1")
            .expect("a name");
        assert_eq!(
            q.to_string(),
            "/messages/events?from=7&device=x%2By%26top%3D1&api-version=2021-04-12"
        );
        let empty = ApiPath::fixed("certificates").name(Names::Ca, "--name", "");
        let e = empty.expect_err("an empty name is refused").to_string();
        assert!(e.starts_with("--name is empty: "), "{e}");
    }
}
