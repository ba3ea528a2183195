//! certhub's service API, as far as the revocation scenario needs it: read a device, write it
//! back with another status. Authenticated with an Azure SAS token signed by the connection
//! string's key, over TLS that trusts the hub's server CA.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// A client of one hub's service API.
#[derive(Debug)]
pub struct Api {
    /// `host[:port]`, as in `HostName=`.
    host: String,
    policy: String,
    key: String,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(connection_string: &str, ca: &Path) -> Result<Self> {
        let certhub_core::ServiceConnectionString { host, policy, key } =
            certhub_core::ServiceConnectionString::parse(connection_string)
                .map_err(anyhow::Error::msg)?;
        let roots: Vec<Certificate<'static>> = CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("{}", ca.display()))?
            .map(|c| c.map(|c| Certificate::from_der(c.as_ref()).to_owned()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}", ca.display()))?;
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
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

    fn token(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expiry = i64::try_from(now).unwrap_or(i64::MAX - 3600) + 3600;
        certhub_core::sign_token(&self.host, &self.key, Some(&self.policy), expiry)
    }

    fn url(&self, id: &str) -> String {
        // The id is one path segment whatever it holds ('#', '?', '%' are valid in ids).
        let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
        format!("https://{}/devices/{id}?api-version=2021-04-12", self.host)
    }

    fn answer(
        what: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut resp = result.with_context(|| what.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            bail!("{what}: the hub answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: the answer is not JSON"))
    }

    fn service_url(&self, path: &str) -> String {
        format!("https://{}{path}?api-version=2021-04-12", self.host)
    }

    /// Runs a twin query: its first page of at most `max` items, whether more pages follow (a
    /// continuation token came back), and the hub's `x-certhub-query-plan` (indexed or
    /// scanned).
    pub fn query(&self, query: &str, max: u32) -> Result<(Vec<Value>, bool, String)> {
        let r = self
            .agent
            .post(&self.service_url("/devices/query"))
            .header("Authorization", &self.token())
            .header("x-ms-max-item-count", &max.to_string())
            .send_json(serde_json::json!({ "query": query }));
        let mut resp = r.context("POST /devices/query")?;
        let status = resp.status().as_u16();
        let more = resp.headers().contains_key("x-ms-continuation");
        let plan = resp
            .headers()
            .get("x-certhub-query-plan")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            bail!("POST /devices/query: the hub answered {status}: {text}");
        }
        let items: Vec<Value> = serde_json::from_str(&text)
            .context("POST /devices/query: the answer is not a JSON array")?;
        Ok((items, more, plan))
    }

    /// One device's telemetry after message `from` (`GET /messages/events`): the page (at
    /// most `top` messages) and where the next page starts (`x-ms-continuation`).
    pub fn device_events(&self, device: &str, from: i64, top: u32) -> Result<(Vec<Value>, i64)> {
        let seg = percent_encoding::utf8_percent_encode(device, percent_encoding::NON_ALPHANUMERIC);
        let url = format!(
            "https://{}/messages/events?device={seg}&from={from}&top={top}",
            self.host
        );
        let r = self
            .agent
            .get(&url)
            .header("Authorization", &self.token())
            .call();
        let mut resp = r.context("GET /messages/events")?;
        let status = resp.status().as_u16();
        let next = resp
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(from);
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            bail!("GET /messages/events: the hub answered {status}: {text}");
        }
        let items: Vec<Value> = serde_json::from_str(&text)
            .context("GET /messages/events: the answer is not a JSON array")?;
        Ok((items, next))
    }

    /// Declares a twin index (`PUT /twinIndexes/{path}`); true when it was new.
    pub fn add_twin_index(&self, path: &str) -> Result<bool> {
        let r = self
            .agent
            .put(&self.service_url(&format!("/twinIndexes/{path}")))
            .header("Authorization", &self.token())
            .send_empty();
        let mut resp = r.with_context(|| format!("PUT /twinIndexes/{path}"))?;
        let status = resp.status().as_u16();
        if status >= 300 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            bail!("PUT /twinIndexes/{path}: the hub answered {status}: {text}");
        }
        Ok(status == 201)
    }

    /// Creates devices with a bulk registry request (`POST /devices`, up to 100 entries);
    /// devices that exist already are left as they are. Fails on any other refusal.
    pub fn bulk_create(&self, entries: &[Value]) -> Result<()> {
        let r = self
            .agent
            .post(&self.service_url("/devices"))
            .header("Authorization", &self.token())
            .send_json(entries);
        let mut resp = r.context("POST /devices")?;
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let answer: Value = serde_json::from_str(&text)
            .with_context(|| format!("POST /devices: the answer is not JSON: {text}"))?;
        let refused: Vec<&Value> = answer["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|e| e["errorCode"] != "DeviceAlreadyExists")
                    .collect()
            })
            .unwrap_or_default();
        if let Some(first) = refused.first() {
            bail!(
                "POST /devices: {} of {} entries refused, the first: {first}",
                refused.len(),
                entries.len()
            );
        }
        Ok(())
    }

    /// Replaces the twin's tags named in `tags` (a twin patch), whatever its version.
    pub fn patch_tags(&self, id: &str, tags: &Value) -> Result<()> {
        let seg = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
        let r = self
            .agent
            .patch(&self.service_url(&format!("/twins/{seg}")))
            .header("Authorization", &self.token())
            .header("If-Match", "\"*\"")
            .send_json(serde_json::json!({ "tags": tags }));
        Self::answer(&format!("PATCH /twins/{id}"), r).map(|_| ())
    }

    /// The hub's settings (`GET /settings`).
    pub fn settings(&self) -> Result<Value> {
        let r = self
            .agent
            .get(&self.service_url("/settings"))
            .header("Authorization", &self.token())
            .call();
        Self::answer("GET /settings", r)
    }

    /// Changes hub settings (`PATCH /settings`); the settings after.
    pub fn patch_settings(&self, patch: &Value) -> Result<Value> {
        let r = self
            .agent
            .patch(&self.service_url("/settings"))
            .header("Authorization", &self.token())
            .send_json(patch);
        Self::answer("PATCH /settings", r)
    }

    /// The device's registry entry.
    pub fn get_device(&self, id: &str) -> Result<Value> {
        let r = self
            .agent
            .get(&self.url(id))
            .header("Authorization", &self.token())
            .call();
        Self::answer(&format!("GET /devices/{id}"), r)
    }

    /// Writes the device with `status` (`enabled`, `disabled`), unconditionally
    /// (`If-Match: "*"`); returns once the hub answered 200.
    pub fn set_status(&self, device: &Value, id: &str, status: &str) -> Result<()> {
        let mut body = device.clone();
        body["status"] = Value::String(status.to_string());
        let r = self
            .agent
            .put(&self.url(id))
            .header("Authorization", &self.token())
            .header("If-Match", "\"*\"")
            .send_json(&body);
        Self::answer(&format!("PUT /devices/{id}"), r).map(|_| ())
    }
}
