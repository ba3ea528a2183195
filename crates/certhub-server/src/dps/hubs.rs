//! The hubs a registration can be assigned to: this hub (its registry in the store) and other
//! certhub hubs linked by a connection string and their server CA, reached through their
//! service REST API, the one the Azure service SDKs use (`PUT /devices/{id}`, `PATCH
//! /twins/{id}`). Both are driven through [`Hub`], so assignment does not care which it is.

use std::sync::Arc;
use std::time::Duration;

use certhub_core::dps::DpsError;
use certhub_core::{AuthenticationInput, DeviceId, DeviceInput, ServiceConnectionString, Status};
use certhub_store::{LinkedHubRecord, WriteOutcome};
use serde_json::{Value, json};

use crate::state::{AppState, now_ms};

/// How long a linked hub may take to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A hub a device can be made on.
#[derive(Debug, Clone)]
pub(crate) enum Hub {
    /// This hub.
    Local,
    Linked(Arc<Linked>),
}

/// A linked hub, ready to be called.
#[derive(Debug)]
pub(crate) struct Linked {
    pub name: String,
    /// `host[:port]` of its service API.
    api: String,
    policy: String,
    key: String,
    agent: ureq::Agent,
}

/// A device as a hub holds it, in the service API's terms.
#[derive(Debug, Clone)]
pub(crate) struct Existing {
    pub status: Status,
    pub authentication: Value,
    pub capabilities: Value,
    /// The stored device, on this hub.
    pub local: Option<Box<certhub_core::Device>>,
}

fn unavailable(hub: &str, why: impl std::fmt::Display) -> DpsError {
    DpsError::new(
        503,
        503_000,
        format!("the hub {hub} could not be reached or failed ({why}); register again later"),
    )
}

impl Linked {
    /// A linked hub from its stored record; the error says what is wrong with it.
    pub(crate) fn new(rec: &LinkedHubRecord) -> Result<Self, String> {
        let cs = ServiceConnectionString::parse(&rec.connection_string)?;
        let roots: Vec<ureq::tls::Certificate<'static>> =
            certhub_pki::read_certificates(rec.server_ca.as_bytes())
                .map_err(|e| format!("the server CA of {}: {e}", rec.name))?
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .tls_config(tls)
            .build()
            .into();
        Ok(Self {
            name: rec.name.clone(),
            api: cs.host,
            policy: cs.policy,
            key: cs.key,
            agent,
        })
    }

    /// Whether the hub answers its service API with these credentials (a link is checked
    /// before it is stored); the error says what failed.
    pub(crate) async fn check(self: &Arc<Self>) -> Result<(), String> {
        // Each call needs one right and names a device that does not exist: 404 says the right
        // is there, 401 that it is not. Nothing is changed.
        let probe = format!("certhub-link-check-{}", crate::random::uuid_v4_text());
        for (method, path, right) in [
            ("GET", "/statistics/devices".to_string(), "RegistryRead"),
            ("DELETE", format!("/devices/{probe}"), "RegistryWrite"),
            ("PATCH", format!("/twins/{probe}"), "ServiceConnect"),
        ] {
            let body = (method == "PATCH").then(|| json!({"tags": {}}));
            let if_match = (method != "GET").then_some("*");
            let (status, answer) = self
                .call(method, path, if_match, body)
                .await
                .map_err(|e| e.message)?;
            if !matches!(status, 200 | 404) {
                return Err(format!(
                    "the hub {} answered {status} ({}): the connection string's policy needs RegistryRead, RegistryWrite and ServiceConnect ({right} is what this call needed; iothubowner has all three)",
                    self.name,
                    message(&answer)
                ));
            }
        }
        Ok(())
    }

    /// Whether the hub holds a verified CA with this SHA-256 thumbprint (devices under it can
    /// authenticate by their CA there). This hub needs no asking: the CA that admitted a device
    /// is one it trusts.
    pub(crate) async fn trusts_ca(self: &Arc<Self>, sha256: &str) -> Result<bool, DpsError> {
        let (status, body) = self.call("GET", "/certificates".into(), None, None).await?;
        if status != 200 {
            return Err(unavailable(
                &self.name,
                format!("{status}: {}", message(&body)),
            ));
        }
        Ok(body["value"].as_array().is_some_and(|cas| {
            cas.iter().any(|c| {
                c["properties"]["isVerified"] == true
                    && c["properties"]["thumbprintSha256"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(sha256))
            })
        }))
    }

    /// One request to the hub's service API: (status, JSON body).
    async fn call(
        self: &Arc<Self>,
        method: &'static str,
        path: String,
        if_match: Option<&'static str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), DpsError> {
        let hub = self.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let host = hub.api.split(':').next().unwrap_or(&hub.api).to_string();
            let token =
                certhub_core::sign_token(&host, &hub.key, Some(&hub.policy), now_ms() / 1000 + 300);
            let url = format!("https://{}{path}?api-version=2021-04-12", hub.api);
            let result = match method {
                "GET" | "DELETE" => {
                    let mut req = if method == "GET" {
                        hub.agent.get(&url)
                    } else {
                        hub.agent.delete(&url)
                    };
                    req = req.header("Authorization", &token);
                    if let Some(m) = if_match {
                        req = req.header("If-Match", m);
                    }
                    req.call()
                }
                _ => {
                    let mut req = if method == "PUT" {
                        hub.agent.put(&url)
                    } else {
                        hub.agent.patch(&url)
                    };
                    req = req.header("Authorization", &token);
                    if let Some(m) = if_match {
                        req = req.header("If-Match", m);
                    }
                    req.send_json(body.unwrap_or(Value::Null))
                }
            };
            let mut resp = result.map_err(|e| unavailable(&hub.name, e))?;
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
        })
        .await
        .map_err(|e| unavailable(&name, e))?
    }
}

/// The message of a certhub (Azure-shaped) error body.
fn message(body: &Value) -> String {
    body["Message"]
        .as_str()
        .unwrap_or("(no message)")
        .to_string()
}

fn path_id(id: &DeviceId) -> String {
    percent_encoding::utf8_percent_encode(id.as_str(), percent_encoding::NON_ALPHANUMERIC)
        .to_string()
}

impl Hub {
    /// The device of that id, if the hub has one.
    pub(crate) async fn device(
        &self,
        state: &AppState,
        id: &DeviceId,
    ) -> Result<Option<Existing>, DpsError> {
        match self {
            Self::Local => {
                let d = state
                    .store()
                    .device(id)
                    .await
                    .map_err(|e| unavailable("(this hub)", e))?;
                Ok(d.map(|d| {
                    let view = d.to_json(Default::default());
                    Existing {
                        status: d.status,
                        authentication: view["authentication"].clone(),
                        capabilities: view["capabilities"].clone(),
                        local: Some(Box::new(d)),
                    }
                }))
            }
            Self::Linked(l) => {
                let (status, body) = l
                    .call("GET", format!("/devices/{}", path_id(id)), None, None)
                    .await?;
                match status {
                    200 => Ok(Some(Existing {
                        status: if body["status"] == "disabled" {
                            Status::Disabled
                        } else {
                            Status::Enabled
                        },
                        authentication: body["authentication"].clone(),
                        capabilities: body["capabilities"].clone(),
                        local: None,
                    })),
                    404 => Ok(None),
                    s => Err(unavailable(&l.name, format!("{s}: {}", message(&body)))),
                }
            }
        }
    }

    /// Creates the device, or (`existing`) replaces its identity, keeping its status.
    pub(crate) async fn put_device(
        &self,
        state: &AppState,
        id: &DeviceId,
        auth: &AuthenticationInput,
        capabilities: &Value,
        existing: Option<&Existing>,
    ) -> Result<(), DpsError> {
        match self {
            Self::Local => {
                let store = state.store();
                let input = DeviceInput {
                    authentication: Some(auth.clone()),
                    capabilities: serde_json::from_value(capabilities.clone()).ok(),
                    ..DeviceInput::default()
                };
                // Written only if the device is still as `existing` saw it (or still absent).
                let current = existing.and_then(|e| e.local.as_deref());
                let conflict = || {
                    DpsError::new(
                        409,
                        409_000,
                        "the device changed on its hub while it registered; register again",
                    )
                };
                match (existing, current) {
                    (None, _) => {
                        if self.create_local(state, id, auth, capabilities).await? {
                            Ok(())
                        } else {
                            Err(conflict())
                        }
                    }
                    (Some(_), Some(d)) => {
                        let input = DeviceInput {
                            status: Some(d.status),
                            status_reason: d.status_reason.clone(),
                            ..input
                        };
                        let next = input
                            .into_device(id, Some(d), now_ms())
                            .map_err(|e| DpsError::bad_request(e.message))?;
                        if next.authentication == d.authentication
                            && next.capabilities == d.capabilities
                        {
                            return Ok(());
                        }
                        match store
                            .replace_device(&next, &d.etag)
                            .await
                            .map_err(|e| unavailable("(this hub)", e))?
                        {
                            WriteOutcome::Written => {
                                state
                                    .kick_device(
                                        id.as_str(),
                                        "the device registered again with another credential",
                                    )
                                    .await;
                                Ok(())
                            }
                            _ => Err(conflict()),
                        }
                    }
                    _ => Err(conflict()),
                }
            }
            Self::Linked(l) => {
                let mut body = json!({
                    "deviceId": id.as_str(),
                    "authentication": auth_json(auth),
                    "capabilities": capabilities,
                });
                if let Some(e) = existing {
                    body["status"] = json!(e.status.as_str());
                    if e.authentication == body["authentication"]
                        && e.capabilities == body["capabilities"]
                    {
                        return Ok(());
                    }
                }
                let (status, answer) = l
                    .call(
                        "PUT",
                        format!("/devices/{}", path_id(id)),
                        existing.map(|_| "*"),
                        Some(body),
                    )
                    .await?;
                match status {
                    200..=299 => Ok(()),
                    409 | 412 => Err(DpsError::new(
                        409,
                        409_000,
                        format!(
                            "the device changed on {} while it registered ({}); register again",
                            l.name,
                            message(&answer)
                        ),
                    )),
                    500.. => Err(unavailable(&l.name, message(&answer))),
                    s => Err(DpsError::new(
                        400,
                        400_004,
                        format!(
                            "the hub {} refused the device ({s}: {})",
                            l.name,
                            message(&answer)
                        ),
                    )),
                }
            }
        }
    }

    /// Makes the device on this hub unless its id is taken (false).
    pub(crate) async fn create_local(
        &self,
        state: &AppState,
        id: &DeviceId,
        auth: &AuthenticationInput,
        capabilities: &Value,
    ) -> Result<bool, DpsError> {
        let input = DeviceInput {
            authentication: Some(auth.clone()),
            capabilities: serde_json::from_value(capabilities.clone()).ok(),
            ..DeviceInput::default()
        };
        let d = input
            .into_device(id, None, now_ms())
            .map_err(|e| DpsError::bad_request(e.message))?;
        Ok(state
            .store()
            .create_device(&d)
            .await
            .map_err(|e| unavailable("(this hub)", e))?
            == WriteOutcome::Written)
    }

    /// The twin's tags and desired properties (what moves with a device to another hub).
    pub(crate) async fn twin_data(
        &self,
        state: &AppState,
        id: &DeviceId,
    ) -> Result<(Value, Value), DpsError> {
        match self {
            Self::Local => {
                let twin = crate::twins::read(state, id, None)
                    .await
                    .map_err(|e| unavailable("(this hub)", e))?;
                Ok((
                    Value::Object(twin.tags().clone()),
                    Value::Object(strip_meta(twin.desired())),
                ))
            }
            Self::Linked(l) => {
                let (status, body) = l
                    .call("GET", format!("/twins/{}", path_id(id)), None, None)
                    .await?;
                match status {
                    200 => Ok((
                        body["tags"].clone(),
                        Value::Object(strip_meta(
                            body["properties"]["desired"]
                                .as_object()
                                .unwrap_or(&serde_json::Map::new()),
                        )),
                    )),
                    s => Err(unavailable(&l.name, format!("{s}: {}", message(&body)))),
                }
            }
        }
    }

    /// Writes tags and desired properties onto the device's twin (`reset`: from an empty twin).
    pub(crate) async fn write_twin(
        &self,
        state: &AppState,
        id: &DeviceId,
        tags: &Value,
        desired: &Value,
        reset: bool,
    ) -> Result<(), DpsError> {
        let has = |v: &Value| v.as_object().is_some_and(|o| !o.is_empty());
        if !has(tags) && !has(desired) && !reset {
            return Ok(());
        }
        match self {
            Self::Local => {
                let now = crate::twins::now_iso();
                crate::twins::update(state, id, None, |t| {
                    if reset {
                        *t = certhub_twin::TwinState::new(&now);
                    }
                    if has(tags) {
                        t.patch_tags(tags)?;
                    }
                    if has(desired) {
                        t.patch_desired(desired, &now)?;
                    }
                    Ok(())
                })
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    crate::twins::TwinOpError::Invalid(e) => DpsError::bad_request(format!(
                        "the enrollment's initial twin cannot be applied: {e}"
                    )),
                    other => unavailable("(this hub)", other),
                })
            }
            Self::Linked(l) => {
                // A replacement (PUT) resets; a patch merges.
                let (method, body) = if reset {
                    (
                        "PUT",
                        json!({"tags": tags, "properties": {"desired": desired}}),
                    )
                } else {
                    (
                        "PATCH",
                        json!({"tags": tags, "properties": {"desired": desired}}),
                    )
                };
                let (status, answer) = l
                    .call(
                        method,
                        format!("/twins/{}", path_id(id)),
                        Some("*"),
                        Some(body),
                    )
                    .await?;
                match status {
                    200..=299 => Ok(()),
                    400 => Err(DpsError::bad_request(format!(
                        "the hub {} refused the initial twin: {}",
                        l.name,
                        message(&answer)
                    ))),
                    s => Err(unavailable(&l.name, format!("{s}: {}", message(&answer)))),
                }
            }
        }
    }

    /// Deletes a device this registration created, when what followed failed (best effort:
    /// a failure is logged).
    pub(crate) async fn undo_create(&self, state: &AppState, id: &DeviceId) {
        let result = match self {
            Self::Local => state
                .store()
                .delete_device(id, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Self::Linked(l) => l
                .call(
                    "DELETE",
                    format!("/devices/{}", path_id(id)),
                    Some("*"),
                    None,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.message),
        };
        if let Err(e) = result {
            tracing::warn!(device = %id, error = %e, "a device made by a failed registration was not removed");
        }
    }
}

/// A twin collection without its `$metadata` and `$version`.
fn strip_meta(m: &serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// An identity's authentication as the service API takes it.
fn auth_json(auth: &AuthenticationInput) -> Value {
    let mut v = json!({"type": auth.kind.map_or("sas", certhub_core::AuthType::as_str)});
    if let Some(k) = &auth.symmetric_key {
        v["symmetricKey"] = json!({"primaryKey": k.primary_key, "secondaryKey": k.secondary_key});
    }
    if let Some(t) = &auth.x509_thumbprint {
        v["x509Thumbprint"] = json!({
            "primaryThumbprint": t.primary_thumbprint,
            "secondaryThumbprint": t.secondary_thumbprint,
        });
    }
    v
}
