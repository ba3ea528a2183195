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
