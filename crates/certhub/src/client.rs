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

impl HubArgs {
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }
}

impl Client {
    pub fn connect(args: &HubArgs) -> Result<Self> {
        let cs = match &args.connection_string {
            Some(cs) => cs.clone(),
            None => crate::hub::local_connection_string(&args.data_dir, "iothubowner").with_context(|| {
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

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("https://{}{path}{sep}api-version=2021-04-12", self.host)
    }

    /// Sends a request; `if_match` is quoted as the Azure SDKs do.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let url = self.url(path);
        let token = self.token();
        let quoted = if_match.map(|t| format!("\"{t}\""));
        let result = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                req = req.header("Authorization", &token);
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
        let mut resp = result.with_context(|| format!("{method} https://{}{path}", self.host))?;
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

    /// Like [`Client::send`], turning any status >= 300 into an error that quotes the hub.
    pub fn expect(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        Ok(self.expect_answer(method, path, if_match, body)?.body)
    }

    /// Like [`Client::expect`], with the whole answer (headers included).
    pub fn expect_answer(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let a = self.send(method, path, if_match, body)?;
        if a.status >= 300 {
            return Err(hub_error(a.status, &a.body));
        }
        Ok(a)
    }
}

impl Client {
    /// One page of `POST /devices/query` (up to 1000 items) and the continuation token.
    pub fn query(
        &self,
        query: &str,
        continuation: Option<&str>,
    ) -> Result<(Value, Option<String>)> {
        let url = self.url("/devices/query");
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
            .with_context(|| format!("POST https://{}/devices/query", self.host))?;
        let status = resp.status().as_u16();
        let next = resp
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 300 {
            return Err(hub_error(status, &body));
        }
        Ok((body, next))
    }
}

/// An error answer, quoting the hub's Azure-shaped message.
fn hub_error(status: u16, body: &Value) -> anyhow::Error {
    let message = body["Message"].as_str().unwrap_or("(no message)");
    let message = message.strip_prefix("ErrorCode:").unwrap_or(message);
    let (code, text) = message.split_once(';').unwrap_or(("", message));
    anyhow::anyhow!("the hub answered {status} {code}: {text}")
}

pub fn print_json(v: &Value) {
    out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
