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
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Refuses with 401 unless the policy has `rights`; `action` says what was attempted.
    pub fn require(&self, rights: Rights, action: &str) -> Result<(), ApiError> {
        if self.rights.contains(rights) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(format!(
                "the shared access policy {:?} ({}) lacks {rights}, which {action} needs",
                self.policy, self.rights
            )))
        }
    }
}

/// Whether the token's resource names this hub: its first segment is one of the host names,
/// with or without a port.
fn names_this_hub(resource: &str, hostnames: &[String]) -> bool {
    let host = resource.split('/').next().unwrap_or_default();
    let bare = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    hostnames.iter().any(|h| h.eq_ignore_ascii_case(bare))
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
        let token = SasToken::parse(header).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let Some(name) = token.key_name.clone() else {
            return Err(ApiError::unauthorized(
                "a device-scoped token (no skn) cannot use the service API; sign with a shared access policy key",
            ));
        };
        if state.settings().await?.disable_local_auth {
            return Err(ApiError::unauthorized(
                "local authentication is disabled on this hub (disableLocalAuth): shared access policy tokens are refused",
            ));
        }
        let policies = state.policies();
        let Some(policy) = policies.iter().find(|p| p.name == name) else {
            return Err(ApiError::unauthorized(format!(
                "unknown shared access policy {name:?}"
            )));
        };
        token
            .verify(
                &[&policy.primary_key, &policy.secondary_key],
                now_ms() / 1000,
                &format!("the shared access policy {name:?}"),
            )
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        if !names_this_hub(&token.resource, state.hostnames()) {
            return Err(ApiError::unauthorized(format!(
                "the token is for {:?}, not for this hub ({})",
                token.resource,
                state.hostnames().join(", ")
            )));
        }
        Ok(Caller {
            policy: policy.name.clone(),
            rights: policy.rights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::names_this_hub;

    #[test]
    fn host_with_or_without_port() {
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        assert!(names_this_hub("localhost", &hosts));
        assert!(names_this_hub("LocalHost:8443", &hosts));
        assert!(names_this_hub("127.0.0.1:443/devices/d1", &hosts));
        assert!(!names_this_hub("evil.example.com", &hosts));
        assert!(!names_this_hub("localhost.evil", &hosts));
    }
}
