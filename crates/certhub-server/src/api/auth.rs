//! Who is calling: a SAS token signed with a shared access policy key (azure-protocol 1.12,
//! 4.1, 4.7). Each handler then asks for the rights it needs.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use certhub_core::{Rights, SasToken};

use super::{ApiError, AppState, now_ms};

/// An authenticated caller of the service API: the policy whose key signed its token.
#[derive(Debug, Clone)]
pub struct Caller {
    policy: String,
    rights: Rights,
}

impl Caller {
    /// A caller signed in to the console with a policy's key: the policy's rights, checked by
    /// the same handlers as a token's.
    pub(crate) fn console(policy: &str, rights: Rights) -> Self {
        Self {
            policy: policy.to_string(),
            rights,
        }
    }

    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Refuses with 401 unless the policy has `rights`; `action` says what was attempted.
    /// Whether the caller's policy grants `rights`.
    pub(crate) fn has(&self, rights: Rights) -> bool {
        self.rights.contains(rights)
    }

    pub fn require(&self, rights: Rights, action: &str) -> Result<(), ApiError> {
        if self.rights.contains(rights) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(format!(
                "the shared access policy {:?} lacks {}, which {action} needs",
                self.policy,
                rights.without(self.rights)
            )))
        }
    }
}

impl crate::state::Actor for Caller {
    fn actor(&self) -> &str {
        &self.policy
    }
}

/// What a token's `sr` may reach, as Azure scopes it: `host` (or `host/`) is the whole hub;
/// `host/devices/d1` only what lies under that device (`/devices/d1/...`, and its twin and
/// methods under `/twins/d1/...`). The host must be one of the hub's names, and a port, when
/// the token names one, a port clients use (`ports`: the public one, and this node's own
/// behind a load balancer; 443 may be left out; none given: any).
pub(crate) fn scope_allows(
    resource: &str,
    hostnames: &[String],
    ports: &[u16],
    path: &str,
) -> Result<(), String> {
    let (host, scope) = resource.split_once('/').unwrap_or((resource, ""));
    let (bare, port) = match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            (h, p.parse::<u16>().ok().or(Some(0)))
        }
        _ => (host, None),
    };
    if !hostnames.iter().any(|h| h.eq_ignore_ascii_case(bare)) {
        return Err(format!(
            "the token is for {resource:?}, not for this hub ({})",
            hostnames.join(", ")
        ));
    }
    if let Some(port) = port
        && !ports.is_empty()
        && !ports.contains(&port)
    {
        let on: Vec<String> = ports.iter().map(u16::to_string).collect();
        return Err(format!(
            "the token is for port {port}; this hub's service API is on port {}",
            on.join(" and ")
        ));
    }
    let scope: Vec<String> = scope
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if scope.is_empty() {
        return Ok(());
    }
    // Compared segment by segment, each decoded on its own: `a%2Fb` is one id, not two.
    let mut wanted: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .to_ascii_lowercase()
        })
        .collect();
    // A device's twin and methods live under /twins/{id} in the REST API and under
    // /devices/{id} in the token's terms.
    if wanted.first().is_some_and(|s| s == "twins") {
        wanted[0] = "devices".into();
    }
    if wanted.len() >= scope.len() && wanted[..scope.len()] == scope[..] {
        Ok(())
    } else {
        Err(format!(
            "the token is scoped to {resource:?}, which does not cover {path}"
        ))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "no Authorization header: send a SharedAccessSignature token signed with a shared access policy key (certhub hub connection-string prints one)",
                )
            })?
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
        let grant = judge_service_token(state, header)?;
        if state.settings().await?.disable_local_auth {
            return Err(ApiError::unauthorized(LOCAL_AUTH_DISABLED));
        }
        scope_allows(
            &grant.resource,
            state.hostnames(),
            &state.service_ports(),
            parts.uri.path(),
        )
        .map_err(ApiError::unauthorized)?;
        Ok(grant.caller)
    }
}

/// Why a policy-signed token is refused when `disableLocalAuth` is on.
pub(crate) const LOCAL_AUTH_DISABLED: &str = "local authentication is disabled on this hub (disableLocalAuth): shared access policy tokens are refused";

/// A service's SAS token that verified against a shared access policy's key.
#[derive(Debug, Clone)]
pub(crate) struct ServiceGrant {
    pub caller: Caller,
    /// The token's resource (`sr`, decoded): what it may reach (see [`scope_allows`]).
    pub resource: String,
    /// When the token runs out (seconds since the epoch).
    pub expiry: i64,
}

/// Judges a service's SAS token (`SharedAccessSignature sr=...&sig=...&se=...&skn=...`): the
/// policy it names must exist and have signed it, and it must not have expired. Its scope and
/// the hub's `disableLocalAuth` are for the caller to check (the scope against the path it
/// reaches). The error says what was wrong.
pub(crate) fn judge_service_token(state: &AppState, token: &str) -> Result<ServiceGrant, ApiError> {
    let token = SasToken::parse(token).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let Some(name) = token.key_name.clone() else {
        return Err(ApiError::unauthorized(
            "a device-scoped token (no skn) cannot act as a service; sign with a shared access policy key",
        ));
    };
    let policies = state.policies();
    let Some(policy) = policies.iter().find(|p| p.name == name) else {
        return Err(ApiError::unauthorized(format!(
            "unknown shared access policy {name:?}"
        )));
    };
    let keys = [policy.primary_key.as_str(), policy.secondary_key.as_str()];
    let signer = format!("the shared access policy {name:?}");
    let now = now_ms() / 1000;
    // Event Hubs clients sign `sb://` audiences as Service Bus does (the key's text as the
    // HMAC key); everyone else as IoT Hub does.
    if token.resource.starts_with("sb://") {
        token.verify_text_key(&keys, now, &signer)
    } else {
        token.verify(&keys, now, &signer)
    }
    .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    Ok(ServiceGrant {
        caller: Caller {
            policy: policy.name.clone(),
            rights: policy.rights,
        },
        resource: token.resource,
        expiry: token.expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::scope_allows;

    fn hosts() -> Vec<String> {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    }

    #[test]
    fn a_hub_wide_token_names_one_of_the_hosts_and_its_port() {
        let h = hosts();
        assert!(scope_allows("localhost", &h, &[8443], "/devices").is_ok());
        assert!(scope_allows("LocalHost:8443/", &h, &[8443], "/devices/d1").is_ok());
        assert!(scope_allows("127.0.0.1", &h, &[], "/certificates").is_ok());
        assert!(scope_allows("localhost:9999", &h, &[8443], "/devices").is_err());
        // Behind a load balancer: its port and the node's own.
        assert!(scope_allows("localhost:8443", &h, &[443, 8443], "/devices").is_ok());
        assert!(scope_allows("localhost:443", &h, &[443, 8443], "/devices").is_ok());
        assert!(scope_allows("localhost:9999", &h, &[443, 8443], "/devices").is_err());
        assert!(scope_allows("evil.example.com", &h, &[], "/devices").is_err());
        assert!(scope_allows("localhost.evil", &h, &[], "/devices").is_err());
    }

    #[test]
    fn a_device_scoped_token_reaches_that_device_only() {
        let h = hosts();
        let sr = "localhost/devices/xyz";
        for ok in [
            "/devices/xyz",
            "/devices/XYZ/modules/m1",
            "/devices/xyz/messages/deviceBound",
            "/twins/xyz",
            "/twins/xyz/methods",
        ] {
            assert!(scope_allows(sr, &h, &[], ok).is_ok(), "{ok}");
        }
        for refused in [
            "/devices",
            "/devices/xyz2",
            "/devices/query",
            "/twins/abc",
            "/certificates",
            "/audit",
            "/statistics/devices",
        ] {
            assert!(scope_allows(sr, &h, &[], refused).is_err(), "{refused}");
        }
        // Percent-encoded ids are compared as ids.
        assert!(scope_allows("localhost/devices/a#b", &h, &[], "/devices/a%23b").is_ok());
        assert!(scope_allows("localhost/devices/a", &h, &[], "/devices/a%2Fb").is_err());
    }
}
