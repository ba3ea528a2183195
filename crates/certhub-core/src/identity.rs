//! Devices and modules in the JSON shape of Azure IoT Hub's identity registry (azure-protocol
//! 4.3), and the rules for turning a PUT body into a stored identity.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::ids::MAX_CN_LEN;
use crate::time_fmt::{azure_time, azure_time_opt};
use crate::{DeviceId, Etag, ModuleId, generate_key};

/// How an identity authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuthType {
    Sas,
    SelfSigned,
    CertificateAuthority,
    None,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sas => "sas",
            Self::SelfSigned => "selfSigned",
            Self::CertificateAuthority => "certificateAuthority",
            Self::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sas" => Some(Self::Sas),
            "selfSigned" => Some(Self::SelfSigned),
            "certificateAuthority" => Some(Self::CertificateAuthority),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Enabled,
    Disabled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(Self::Enabled),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// SAS keys: null when the identity does not use SAS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SymmetricKey {
    /// base64 of 16 to 64 bytes; generated when absent
    #[serde(default)]
    pub primary_key: Option<String>,
    /// base64 of 16 to 64 bytes; generated when absent
    #[serde(default)]
    pub secondary_key: Option<String>,
}

/// Certificate thumbprints: null unless the identity is selfSigned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct X509Thumbprint {
    /// SHA-1 or SHA-256 of the certificate, hex
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    /// SHA-1 or SHA-256 of the certificate, hex
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    #[serde(rename = "type")]
    pub kind: AuthType,
    pub symmetric_key: SymmetricKey,
    pub x509_thumbprint: X509Thumbprint,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub iot_edge: bool,
}

/// Why a PUT body cannot become an identity. `code` is the Azure error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IdentityError {
    pub code: &'static str,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> IdentityError {
    IdentityError {
        code: "ArgumentInvalid",
        message: message.into(),
    }
}

/// A stored device identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: DeviceId,
    pub generation_id: String,
    pub etag: Etag,
    pub status: Status,
    pub status_reason: Option<String>,
    pub status_updated_ms: i64,
    pub authentication: Authentication,
    pub capabilities: Capabilities,
    pub c2d_count: i64,
    pub last_activity_ms: i64,
    /// When the leaf of the CA-signed chain it last authenticated with expires (unix ms); 0
    /// when it never did.
    pub x509_expires_ms: i64,
}

/// A stored module identity (no status, no capabilities: Azure's model has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub device_id: DeviceId,
    pub module_id: ModuleId,
    pub generation_id: String,
    pub etag: Etag,
    pub managed_by: Option<String>,
    pub authentication: Authentication,
    pub c2d_count: i64,
    pub last_activity_ms: i64,
    /// As [`Device::x509_expires_ms`].
    pub x509_expires_ms: i64,
}

/// The authentication object as a PUT body carries it: every part optional; null is the same
/// as absent.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthenticationInput {
    #[serde(rename = "type", default)]
    pub kind: Option<AuthType>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub symmetric_key: Option<SymmetricKey>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

/// A device as `PUT /devices/{id}` or a bulk entry carries it. Read-only fields the SDKs echo
/// back (connection state, times, counters) are accepted and ignored; null is the same as
/// absent; unknown fields are an error.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceInput {
    /// when present, the id in the URL
    #[serde(default)]
    pub device_id: Option<String>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub generation_id: Option<String>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub status_reason: Option<String>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub status_updated_time: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub connection_state: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub connection_state_updated_time: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub last_activity_time: Option<Value>,
    /// read-only (certhub's): accepted (a GET-modify-PUT echoes it) and ignored
    #[serde(default, rename = "x509ExpiresAt")]
    pub x509_expires_at: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub cloud_to_device_message_count: Option<Value>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub authentication: Option<AuthenticationInput>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub capabilities: Option<Capabilities>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub device_scope: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub parent_scopes: Option<Value>,
}

/// A module as `PUT /devices/{id}/modules/{mid}` carries it; null is the same as absent,
/// unknown fields are refused.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleInput {
    /// when present, the id in the URL
    #[serde(default)]
    pub module_id: Option<String>,
    /// when present, the id in the URL
    #[serde(default)]
    pub device_id: Option<String>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub generation_id: Option<String>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub etag: Option<String>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub connection_state: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub connection_state_updated_time: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub last_activity_time: Option<Value>,
    /// read-only (certhub's): accepted (a GET-modify-PUT echoes it) and ignored
    #[serde(default, rename = "x509ExpiresAt")]
    pub x509_expires_at: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub cloud_to_device_message_count: Option<Value>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub authentication: Option<AuthenticationInput>,
    #[serde(default)]
    pub managed_by: Option<String>,
}

fn new_generation_id(now_ms: i64) -> String {
    // Azure's are 18-digit decimal numbers that differ for a re-created id.
    let mut r = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut r);
    format!("{}{:05}", now_ms.max(0), u32::from_be_bytes(r) % 100_000)
}

/// Checks a SAS key: base64 of 16 to 64 bytes, as Azure requires.
fn check_key(which: &str, key: &str) -> Result<(), IdentityError> {
    match B64.decode(key) {
        Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(()),
        Ok(bytes) => Err(invalid(format!(
            "the {which} key decodes to {} bytes; a key is base64 of 16 to 64 bytes",
            bytes.len()
        ))),
        Err(_) => Err(invalid(format!(
            "the {which} key is not valid base64; a key is base64 of 16 to 64 bytes"
        ))),
    }
}

fn empty(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(|s| s.trim().is_empty())
}

/// Turns the authentication part of a body into the stored form: SAS keys generated when
/// missing, thumbprints normalised (uppercase hex, no colons) and checked, CA ids checked
/// against the CN limit.
fn authentication(
    input: Option<AuthenticationInput>,
    cn: &str,
) -> Result<Authentication, IdentityError> {
    let input = input.unwrap_or_default();
    let has_thumbprints = input
        .x509_thumbprint
        .as_ref()
        .is_some_and(|t| !empty(&t.primary_thumbprint) || !empty(&t.secondary_thumbprint));
    // Like the Node SDK: no type but thumbprints means selfSigned; no type at all means sas.
    let kind = input.kind.unwrap_or(if has_thumbprints {
        AuthType::SelfSigned
    } else {
        AuthType::Sas
    });
    let mut auth = Authentication {
        kind,
        symmetric_key: SymmetricKey::default(),
        x509_thumbprint: X509Thumbprint::default(),
    };
    match kind {
        AuthType::Sas => {
            let keys = input.symmetric_key.unwrap_or_default();
            let primary = if empty(&keys.primary_key) {
                generate_key()
            } else {
                keys.primary_key.unwrap_or_default()
            };
            let secondary = if empty(&keys.secondary_key) {
                generate_key()
            } else {
                keys.secondary_key.unwrap_or_default()
            };
            check_key("primary", &primary)?;
            check_key("secondary", &secondary)?;
            auth.symmetric_key = SymmetricKey {
                primary_key: Some(primary),
                secondary_key: Some(secondary),
            };
        }
        AuthType::SelfSigned => {
            let t = input.x509_thumbprint.unwrap_or_default();
            let norm = |which: &str, v: &Option<String>| -> Result<Option<String>, IdentityError> {
                if empty(v) {
                    return Ok(None);
                }
                let raw = v.as_deref().unwrap_or_default();
                certhub_pki::normalize_thumbprint(raw).map(Some).ok_or_else(|| {
                    invalid(format!(
                        "the {which} thumbprint {raw:?} is not 40 (SHA-1) or 64 (SHA-256) hex characters"
                    ))
                })
            };
            let primary = norm("primary", &t.primary_thumbprint)?;
            let secondary = norm("secondary", &t.secondary_thumbprint)?;
            if primary.is_none() {
                return Err(invalid(
                    "selfSigned authentication needs x509Thumbprint.primaryThumbprint (the SHA-1 or SHA-256 thumbprint of the device certificate)",
                ));
            }
            if let (Some(p), Some(s)) = (&primary, &secondary)
                && p.len() != s.len()
            {
                return Err(invalid(
                    "the primary and secondary thumbprints must both be SHA-1 (40 hex) or both SHA-256 (64 hex)",
                ));
            }
            auth.x509_thumbprint = X509Thumbprint {
                primary_thumbprint: primary,
                secondary_thumbprint: secondary,
            };
        }
        AuthType::CertificateAuthority => {
            if cn.len() > MAX_CN_LEN {
                return Err(invalid(format!(
                    "{cn:?} is {} characters; with certificateAuthority authentication the id is the certificate CN, at most {MAX_CN_LEN}",
                    cn.len()
                )));
            }
        }
        AuthType::None => {}
    }
    Ok(auth)
}

fn check_body_id(what: &str, body: &Option<String>, path: &str) -> Result<(), IdentityError> {
    match body.as_deref() {
        Some(b) if !b.is_empty() && b != path => Err(IdentityError {
            code: "ArgumentInvalid",
            message: format!("the body's {what} {b:?} differs from the {what} in the URL {path:?}"),
        }),
        _ => Ok(()),
    }
}

impl DeviceInput {
    /// The identity to store for `PUT /devices/{id}`: `existing` is the current one on update.
    pub fn into_device(
        self,
        id: &DeviceId,
        existing: Option<&Device>,
        now_ms: i64,
    ) -> Result<Device, IdentityError> {
        check_body_id("deviceId", &self.device_id, id.as_str())?;
        if let Some(r) = &self.status_reason
            && r.len() > 128
        {
            return Err(invalid("statusReason is longer than 128 characters"));
        }
        let authentication = authentication(self.authentication, id.as_str())?;
        let status = self.status.unwrap_or_default();
        let status_updated_ms = match existing {
            Some(e) if e.status == status => e.status_updated_ms,
            _ => now_ms,
        };
        Ok(Device {
            device_id: id.clone(),
            generation_id: existing
                .map(|e| e.generation_id.clone())
                .unwrap_or_else(|| new_generation_id(now_ms)),
            etag: Etag::random(),
            status,
            status_reason: self.status_reason,
            status_updated_ms,
            authentication,
            capabilities: self.capabilities.unwrap_or_default(),
            c2d_count: existing.map_or(0, |e| e.c2d_count),
            last_activity_ms: existing.map_or(0, |e| e.last_activity_ms),
            x509_expires_ms: existing.map_or(0, |e| e.x509_expires_ms),
        })
    }
}

impl ModuleInput {
    pub fn into_module(
        self,
        device: &DeviceId,
        id: &ModuleId,
        existing: Option<&Module>,
        now_ms: i64,
    ) -> Result<Module, IdentityError> {
        check_body_id("deviceId", &self.device_id, device.as_str())?;
        check_body_id("moduleId", &self.module_id, id.as_str())?;
        let cn = format!("{device}/{id}");
        Ok(Module {
            device_id: device.clone(),
            module_id: id.clone(),
            generation_id: existing
                .map(|e| e.generation_id.clone())
                .unwrap_or_else(|| new_generation_id(now_ms)),
            etag: Etag::random(),
            managed_by: self.managed_by,
            authentication: authentication(self.authentication, &cn)?,
            c2d_count: existing.map_or(0, |e| e.c2d_count),
            last_activity_ms: existing.map_or(0, |e| e.last_activity_ms),
            x509_expires_ms: existing.map_or(0, |e| e.x509_expires_ms),
        })
    }
}

/// Whether an identity has a live session, and since when (from the hub's sessions, not the
/// registry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionState {
    pub connected: bool,
    /// When it last connected or disconnected, ms since the epoch (0: never).
    pub updated_ms: i64,
}

impl ConnectionState {
    fn name(self) -> Connection {
        if self.connected {
            Connection::Connected
        } else {
            Connection::Disconnected
        }
    }
}

/// An identity's connection state as the registry reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum Connection {
    Connected,
    Disconnected,
}

/// A device as the registry returns it.
// The JSON of `Device::to_json` and the API description's `Device` schema: one type, so the
// two cannot differ.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Device)]
pub struct DeviceView {
    pub device_id: String,
    pub generation_id: String,
    pub etag: String,
    pub status: Status,
    #[schema(required = true)]
    pub status_reason: Option<String>,
    pub status_updated_time: String,
    pub connection_state: Connection,
    pub connection_state_updated_time: String,
    pub last_activity_time: String,
    pub cloud_to_device_message_count: i64,
    pub authentication: Authentication,
    /// when the certificate it last authenticated with (CA-signed) expires; absent before
    /// (certhub's)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub x509_expires_at: Option<String>,
    pub capabilities: Capabilities,
    /// always null: certhub has no IoT Edge scopes
    #[schema(required = true)]
    pub device_scope: Option<String>,
    pub parent_scopes: Vec<String>,
}

/// A module as the registry returns it.
// As `DeviceView`: the JSON and the schema are this one type.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Module)]
pub struct ModuleView {
    pub module_id: String,
    pub device_id: String,
    #[schema(required = true)]
    pub managed_by: Option<String>,
    pub generation_id: String,
    pub etag: String,
    pub connection_state: Connection,
    pub connection_state_updated_time: String,
    pub last_activity_time: String,
    pub cloud_to_device_message_count: i64,
    pub authentication: Authentication,
    /// when the certificate it last authenticated with (CA-signed) expires; absent before
    /// (certhub's)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub x509_expires_at: Option<String>,
}

impl Device {
    /// This device as the registry returns it, with its connection state.
    pub fn view(&self, connection: ConnectionState) -> DeviceView {
        DeviceView {
            device_id: self.device_id.to_string(),
            generation_id: self.generation_id.clone(),
            etag: self.etag.0.clone(),
            status: self.status,
            status_reason: self.status_reason.clone(),
            status_updated_time: azure_time_opt(self.status_updated_ms),
            connection_state: connection.name(),
            connection_state_updated_time: azure_time_opt(connection.updated_ms),
            last_activity_time: azure_time_opt(self.last_activity_ms),
            cloud_to_device_message_count: self.c2d_count,
            authentication: self.authentication.clone(),
            x509_expires_at: (self.x509_expires_ms > 0).then(|| azure_time(self.x509_expires_ms)),
            capabilities: self.capabilities.clone(),
            device_scope: None,
            parent_scopes: Vec::new(),
        }
    }

    /// The Azure JSON of this device, with its connection state.
    pub fn to_json(&self, connection: ConnectionState) -> Value {
        // Serializing plain strings, numbers and enums cannot fail.
        serde_json::to_value(self.view(connection)).unwrap_or(Value::Null)
    }
}

impl Module {
    /// This module as the registry returns it, with its connection state.
    pub fn view(&self, connection: ConnectionState) -> ModuleView {
        ModuleView {
            module_id: self.module_id.to_string(),
            device_id: self.device_id.to_string(),
            managed_by: self.managed_by.clone(),
            generation_id: self.generation_id.clone(),
            etag: self.etag.0.clone(),
            connection_state: connection.name(),
            connection_state_updated_time: azure_time_opt(connection.updated_ms),
            last_activity_time: azure_time_opt(self.last_activity_ms),
            cloud_to_device_message_count: self.c2d_count,
            authentication: self.authentication.clone(),
            x509_expires_at: (self.x509_expires_ms > 0).then(|| azure_time(self.x509_expires_ms)),
        }
    }

    /// The Azure JSON of this module, with its connection state.
    pub fn to_json(&self, connection: ConnectionState) -> Value {
        // Serializing plain strings, numbers and enums cannot fail.
        serde_json::to_value(self.view(connection)).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).expect("id")
    }

    fn input(json: Value) -> Result<DeviceInput, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn sas_keys_are_generated_when_missing() {
        let d = input(serde_json::json!({"deviceId": "d1"}))
            .expect("parse")
            .into_device(&id("d1"), None, 1)
            .expect("device");
        assert_eq!(d.authentication.kind, AuthType::Sas);
        let k = d.authentication.symmetric_key.primary_key.expect("key");
        assert_eq!(B64.decode(k).expect("b64").len(), 32);
    }

    #[test]
    fn thumbprints_are_normalised_and_checked() {
        let tp = "a9:99:3e:36:47:06:81:6a:ba:3e:25:71:78:50:c2:6c:9c:d0:d8:9d";
        let d = input(serde_json::json!({
            "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": tp}}
        }))
        .expect("parse")
        .into_device(&id("d1"), None, 1)
        .expect("device");
        assert_eq!(
            d.authentication
                .x509_thumbprint
                .primary_thumbprint
                .as_deref(),
            Some("A9993E364706816ABA3E25717850C26C9CD0D89D")
        );
        let mixed = input(serde_json::json!({
            "authentication": {"type": "selfSigned", "x509Thumbprint": {
                "primaryThumbprint": "A9993E364706816ABA3E25717850C26C9CD0D89D",
                "secondaryThumbprint": "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"}}
        }))
        .expect("parse")
        .into_device(&id("d1"), None, 1);
        assert!(mixed.is_err());
        let none = input(serde_json::json!({"authentication": {"type": "selfSigned"}}))
            .expect("parse")
            .into_device(&id("d1"), None, 1);
        assert!(none.is_err());
    }

    #[test]
    fn unknown_fields_and_mismatched_ids_are_refused() {
        assert!(input(serde_json::json!({"deviceId": "d1", "colour": "red"})).is_err());
        let e = input(serde_json::json!({"deviceId": "d2"}))
            .expect("parse")
            .into_device(&id("d1"), None, 1)
            .expect_err("mismatch");
        assert!(e.message.contains("d2"));
    }

    #[test]
    fn ca_ids_must_fit_a_cn() {
        let long = id(&"x".repeat(65));
        let e = input(serde_json::json!({"authentication": {"type": "certificateAuthority"}}))
            .expect("parse")
            .into_device(&long, None, 1)
            .expect_err("too long");
        assert!(e.message.contains("64"));
    }
}

/// What a bulk entry does. The entry keeps it as text so that an unknown mode is reported
/// for that entry alone, not as a refusal of the whole request.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    Create,
    Delete,
}

/// One entry of a bulk registry operation (`POST /devices`), Azure's `ExportImportDevice`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkEntry {
    /// 1 to 128 characters: ASCII letters, digits and - . + % _ # * ? ! ( ) , = @ $ ' :
    /// (case-sensitive)
    #[schema(pattern = "^[A-Za-z0-9\\-.+%_#*?!(),=@$':]{1,128}$")]
    pub id: String,
    /// refused when present: modules are not supported in bulk requests
    #[serde(default)]
    pub module_id: Option<String>,
    #[serde(default, rename = "eTag")]
    pub etag: Option<String>,
    /// create (the default) or delete
    #[serde(default)]
    #[schema(value_type = Option<ImportMode>, default = "create")]
    pub import_mode: Option<String>,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub authentication: Option<AuthenticationInput>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub capabilities: Option<Capabilities>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    // Azure's name is twinETag (as eTag above); twinEtag, which this field was once read
    // as, is still taken.
    #[serde(default, rename = "twinETag", alias = "twinEtag")]
    pub twin_etag: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub tags: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub properties: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub device_scope: Option<Value>,
    /// read-only: accepted (as the SDKs echo it) and ignored
    #[serde(default)]
    pub parent_scopes: Option<Value>,
}

impl BulkEntry {
    /// The device this entry describes, as a PUT body would.
    pub fn device_input(&self) -> DeviceInput {
        DeviceInput {
            device_id: Some(self.id.clone()),
            status: self.status,
            status_reason: self.status_reason.clone(),
            authentication: self.authentication.clone(),
            capabilities: self.capabilities.clone(),
            ..DeviceInput::default()
        }
    }
}

#[cfg(test)]
mod bulk_entry_tests {
    use super::*;

    /// Azure's SDKs write twinETag (the hub once refused it as an unknown field, while its
    /// API description named it).
    #[test]
    fn bulk_entries_take_azures_twin_etag() {
        for name in ["twinETag", "twinEtag"] {
            let e: BulkEntry = serde_json::from_value(serde_json::json!({"id": "d1", name: "x"}))
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(e.twin_etag, Some(Value::from("x")), "{name}");
        }
        let unknown =
            serde_json::from_value::<BulkEntry>(serde_json::json!({"id": "d1", "colour": 1}));
        assert!(unknown.is_err(), "unknown fields are still refused");
    }

    /// serde reads a struct from an array (its fields in order): the nested objects of a body
    /// must be JSON objects all the same (schemathesis found `"x509Thumbprint": []` accepted).
    #[test]
    fn nested_objects_must_be_objects() {
        for bad in [
            serde_json::json!({"authentication": []}),
            serde_json::json!({"authentication": {"x509Thumbprint": []}}),
            serde_json::json!({"authentication": {"x509Thumbprint": [null, null]}}),
            serde_json::json!({"authentication": {"symmetricKey": [null]}}),
            serde_json::json!({"capabilities": [true]}),
        ] {
            let e = serde_json::from_value::<DeviceInput>(bad.clone())
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(e.to_string().contains("expected a map"), "{bad}: {e}");
            let mut entry = bad.clone();
            entry["id"] = Value::from("d1");
            assert!(
                serde_json::from_value::<BulkEntry>(entry).is_err(),
                "bulk {bad}"
            );
        }
        let module =
            serde_json::from_value::<ModuleInput>(serde_json::json!({"authentication": []}));
        assert!(module.is_err());
        let ok = serde_json::from_value::<DeviceInput>(serde_json::json!({
            "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": null}, "symmetricKey": null},
            "capabilities": {"iotEdge": false},
        }))
        .expect("objects and nulls are read");
        assert!(ok.capabilities.is_some());
        let inner = serde_json::from_value::<DeviceInput>(
            serde_json::json!({"authentication": {"x509Thumbprint": {"colour": 1}}}),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(inner.contains("unknown field `colour`"), "{inner}");
    }
}
