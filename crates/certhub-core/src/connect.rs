//! Who is connecting: the decision at MQTT CONNECT (azure-protocol 1.2, 1.12, 6.1), as a pure
//! function of the CONNECT fields, the certificate chain the TLS handshake recorded (its
//! CertificateVerify already proved possession of the leaf's key), the identity from the
//! registry, the trust snapshot and the hub settings, at `now`.
//!
//! Only [`authenticate`] builds an [`AuthenticatedDevice`]; every refusal is a [`Refusal`]
//! with a stable reason, the same names `certhub pki verify` prints for chain failures.

use std::fmt;

use certhub_pki::{CertificateDer, Thumbprints, TrustStore, UnixTime, verify_device_chain};

use crate::{
    AuthType, Device, DeviceId, HubSettings, Module, ModuleId, Policy, Rights, SasToken, Status,
};

/// A refused CONNECT: the device gets CONNACK 5; the operator gets the reason and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// The identity a client id names: a device, or a module of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    pub device: DeviceId,
    pub module: Option<ModuleId>,
}

impl ClientId {
    /// `deviceId` or `deviceId/moduleId`.
    pub fn parse(client_id: &str) -> Result<Self, Refusal> {
        let (d, m) = match client_id.split_once('/') {
            Some((d, m)) => (d, Some(m)),
            None => (client_id, None),
        };
        let device = DeviceId::new(d)
            .map_err(|e| refuse("device-not-found", format!("client id {client_id:?}: {e}")))?;
        let module = m
            .map(ModuleId::new)
            .transpose()
            .map_err(|e| refuse("device-not-found", format!("client id {client_id:?}: {e}")))?;
        Ok(Self { device, module })
    }

    /// The certificate CN and the SAS resource path of this identity.
    pub fn cn(&self) -> String {
        match &self.module {
            Some(m) => format!("{}/{m}", self.device),
            None => self.device.to_string(),
        }
    }
}

/// The registry's view of the identity, as the adapter found it: the device, and the module
/// when the client id names one (a disabled device disables its modules).
#[derive(Debug, Clone)]
pub struct Registered {
    pub device: Device,
    pub module: Option<Module>,
}

/// The CAs a chain may end at, split by state so a refusal can say "registered but not
/// verified". `names[i]` is the registered name of `verified`'s anchor `i`.
#[derive(Debug, Clone, Default)]
pub struct TrustSnapshot {
    pub verified: TrustStore,
    pub verified_names: Vec<String>,
    pub unverified: TrustStore,
    pub unverified_names: Vec<String>,
    /// The CAs it was built from (`name:sha256:verified`), to tell whether a new snapshot
    /// changes the anchors or only the revocation index.
    pub anchors: Vec<String>,
}

/// What the decision needs besides the request.
#[derive(Debug)]
pub struct Context<'a> {
    pub trust: &'a TrustSnapshot,
    pub settings: &'a HubSettings,
    pub policies: &'a [Policy],
    pub hostnames: &'a [String],
    pub now: UnixTime,
}

/// The MQTT CONNECT fields that matter.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFields<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// A device or module that proved who it is. Only [`authenticate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedDevice {
    id: ClientId,
    method: AuthType,
    /// The registered CA the chain reached (certificateAuthority), else empty.
    ca: String,
    /// The shared access policy that signed the SAS token, for policy-signed tokens.
    policy: Option<String>,
    /// When the SAS token expires (unix seconds): the session ends then.
    expires: Option<i64>,
    /// The leaf and intermediates of a CA-signed chain (empty otherwise).
    chain: std::sync::Arc<[certhub_pki::ChainCert]>,
}

impl AuthenticatedDevice {
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    pub fn method(&self) -> AuthType {
        self.method
    }

    pub fn ca(&self) -> &str {
        &self.ca
    }

    /// The certificates of the chain it authenticated with, leaf first, below its CA (a
    /// CA-signed X.509 identity; empty for others).
    pub fn chain(&self) -> &std::sync::Arc<[certhub_pki::ChainCert]> {
        &self.chain
    }

    /// When the SAS token the device connected with expires (unix seconds): Azure closes the
    /// session then, and so does certhub (the SDKs renew their token and reconnect).
    pub fn expires(&self) -> Option<i64> {
        self.expires
    }

    /// How the identity proved itself, for the audit trail: `x509-ca`, `x509-thumbprint`,
    /// `device-sas`, `module-sas`, or `policy-sas` (a token signed with a shared access policy
    /// that has DeviceConnect, which Azure lets connect as any device).
    pub fn auth_method(&self) -> &'static str {
        match (self.method, &self.policy, &self.id.module) {
            (AuthType::Sas, Some(_), _) => "policy-sas",
            (AuthType::Sas, None, Some(_)) => "module-sas",
            (AuthType::Sas, None, None) => "device-sas",
            (AuthType::SelfSigned, _, _) => "x509-thumbprint",
            (AuthType::CertificateAuthority, _, _) => "x509-ca",
            (AuthType::None, _, _) => "none",
        }
    }

    /// The policy that signed the token (policy-signed SAS only).
    pub fn policy(&self) -> Option<&str> {
        self.policy.as_deref()
    }

    /// Which hub switch can shut this session out: `disableLocalAuth` for policy-signed
    /// tokens, `disableModuleSAS` / `disableDeviceSAS` for identity-scoped tokens.
    pub fn switch(&self) -> Option<&'static str> {
        match (self.method, &self.policy, &self.id.module) {
            (AuthType::Sas, Some(_), _) => Some("disableLocalAuth"),
            (AuthType::Sas, None, Some(_)) => Some("disableModuleSAS"),
            (AuthType::Sas, None, None) => Some("disableDeviceSAS"),
            _ => None,
        }
    }
}

/// `{host}/{clientId}/?...`: the host must be one of the hub's names (a port is allowed) and the
/// path the client id.
fn check_username(
    username: Option<&str>,
    client_id: &str,
    hostnames: &[String],
) -> Result<(), Refusal> {
    let Some(u) = username else {
        return Err(refuse(
            "username-mismatch",
            format!("no username; expected {{host}}/{client_id}/?api-version=..."),
        ));
    };
    // The host ends at the first '/'; the client id follows and may itself hold '?' (an
    // allowed id character), so it is matched as the expected text rather than cut at '?'.
    let (host, rest) = u
        .split_once('/')
        .unwrap_or((u.split('?').next().unwrap_or(u), ""));
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    if !hostnames.iter().any(|h| h.eq_ignore_ascii_case(bare)) {
        return Err(refuse(
            "username-mismatch",
            format!(
                "the username names host {host:?}, not this hub ({})",
                hostnames.join(", ")
            ),
        ));
    }
    let names_client = rest.strip_prefix(client_id).is_some_and(|after| {
        after.is_empty() || after == "/" || after.starts_with("/?") || after.starts_with('?')
    });
    if !names_client {
        let named = rest.split("/?").next().unwrap_or(rest);
        let named = named.strip_suffix('/').unwrap_or(named);
        return Err(refuse(
            "username-mismatch",
            format!("the username names {named:?} but the client id is {client_id:?}"),
        ));
    }
    Ok(())
}

/// Decides a CONNECT. `registered` is `None` when the registry has no such identity.
pub fn authenticate(
    fields: ConnectFields<'_>,
    chain: &[CertificateDer<'_>],
    registered: Option<&Registered>,
    ctx: &Context<'_>,
) -> Result<AuthenticatedDevice, Refusal> {
    let id = ClientId::parse(fields.client_id)?;
    check_username(fields.username, fields.client_id, ctx.hostnames)?;
    let Some(reg) = registered else {
        return Err(refuse(
            "device-not-found",
            format!("{} is not registered", id.cn()),
        ));
    };
    let d = &reg.device;
    let (auth, status) = match (&id.module, &reg.module) {
        (None, _) => (&d.authentication, d.status),
        (Some(_), Some(m)) => {
            if d.status == Status::Disabled {
                return Err(refuse(
                    "device-disabled",
                    format!("device {} (the module's device) is disabled", d.device_id),
                ));
            }
            (&m.authentication, Status::Enabled)
        }
        (Some(_), None) => {
            return Err(refuse(
                "device-not-found",
                format!("{} is not registered", id.cn()),
            ));
        }
    };
    let keys = &auth.symmetric_key;
    if status == Status::Disabled {
        return Err(refuse(
            "device-disabled",
            format!("{} is disabled", id.cn()),
        ));
    }
    let password = fields.password.filter(|p| !p.is_empty());
    // A SAS token in the password decides, whatever certificate came along.
    if let Some(pw) = password {
        return sas(&id, pw, auth.kind, keys, ctx);
    }
    match auth.kind {
        AuthType::CertificateAuthority => ca_chain(&id, chain, ctx),
        AuthType::SelfSigned => thumbprint(&id, chain, auth, ctx),
        AuthType::Sas => Err(refuse(
            "auth-method-mismatch",
            format!(
                "{} authenticates with SAS tokens but sent no password",
                id.cn()
            ),
        )),
        AuthType::None => Err(refuse(
            "auth-method-mismatch",
            format!("{} has authentication type none", id.cn()),
        )),
    }
}

/// Judges a certificate chain for `client_id` as a CONNECT of an identity with `auth` would
/// be judged (certificateAuthority: the chain to a verified CA of `ctx.trust`, CN = the id;
/// selfSigned: the leaf's thumbprint and validity), with the same named reasons. The
/// provisioning service judges devices by it before they exist in the registry.
pub fn authenticate_certificate(
    client_id: &str,
    chain: &[CertificateDer<'_>],
    auth: &crate::Authentication,
    ctx: &Context<'_>,
) -> Result<AuthenticatedDevice, Refusal> {
    let id = ClientId::parse(client_id)?;
    match auth.kind {
        AuthType::CertificateAuthority => ca_chain(&id, chain, ctx),
        AuthType::SelfSigned => thumbprint(&id, chain, auth, ctx),
        other => Err(refuse(
            "auth-method-mismatch",
            format!("{} is not a certificate authentication", other.as_str()),
        )),
    }
}

fn ca_chain(
    id: &ClientId,
    chain: &[CertificateDer<'_>],
    ctx: &Context<'_>,
) -> Result<AuthenticatedDevice, Refusal> {
    if chain.is_empty() {
        return Err(refuse(
            "auth-method-mismatch",
            format!(
                "{} authenticates with a CA-signed certificate but presented none",
                id.cn()
            ),
        ));
    }
    let cn = id.cn();
    match verify_device_chain(chain, &ctx.trust.verified, Some(&cn), ctx.now) {
        Ok(v) => Ok(AuthenticatedDevice {
            id: id.clone(),
            method: AuthType::CertificateAuthority,
            ca: ctx
                .trust
                .verified_names
                .get(v.anchor_index)
                .cloned()
                .unwrap_or_default(),
            policy: None,
            expires: None,
            chain: v.certs.into(),
        }),
        Err(r) => {
            let reason = r.reason.as_str();
            // A chain that would reach a registered but unverified CA gets the name that says
            // what to do.
            if matches!(
                reason,
                "unknown-issuer" | "missing-intermediate" | "bad-signature"
            ) && let Ok(v) =
                verify_device_chain(chain, &ctx.trust.unverified, Some(&cn), ctx.now)
            {
                let name = ctx
                    .trust
                    .unverified_names
                    .get(v.anchor_index)
                    .cloned()
                    .unwrap_or_default();
                return Err(refuse(
                    "ca-not-verified",
                    format!(
                        "the chain reaches CA {name:?} ({}), which is registered but not verified: prove possession of its key",
                        v.anchor_subject
                    ),
                ));
            }
            // Every other chain reason keeps the name `certhub pki verify` prints
            // (`missing-intermediate`, `issuer-not-ca`, `chain-too-long`, ...): only the
            // untrusted issuer is named for the hub's registry of CAs.
            let reason = match reason {
                "unknown-issuer" => "unknown-ca",
                other => other,
            };
            Err(Refusal {
                reason,
                detail: r.detail,
            })
        }
    }
}

fn thumbprint(
    id: &ClientId,
    chain: &[CertificateDer<'_>],
    auth: &crate::Authentication,
    ctx: &Context<'_>,
) -> Result<AuthenticatedDevice, Refusal> {
    let Some(leaf) = chain.first() else {
        return Err(refuse(
            "auth-method-mismatch",
            format!(
                "{} authenticates with a certificate thumbprint but presented no certificate",
                id.cn()
            ),
        ));
    };
    let info = certhub_pki::describe_certificate(leaf)
        .map_err(|e| refuse("malformed-certificate", format!("the certificate: {e}")))?;
    let now = i64::try_from(ctx.now.as_secs()).unwrap_or(i64::MAX);
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .unwrap_or(0)
    };
    if now < parse(&info.not_before) {
        return Err(refuse(
            "not-yet-valid",
            format!("the certificate is valid from {} only", info.not_before),
        ));
    }
    if now > parse(&info.not_after) {
        return Err(refuse(
            "certificate-expired",
            format!("the certificate expired at {}", info.not_after),
        ));
    }
    let t = Thumbprints::of(leaf);
    let wanted = [
        auth.x509_thumbprint.primary_thumbprint.as_deref(),
        auth.x509_thumbprint.secondary_thumbprint.as_deref(),
    ];
    if wanted.iter().flatten().any(|w| t.matches(w)) {
        Ok(AuthenticatedDevice {
            id: id.clone(),
            method: AuthType::SelfSigned,
            ca: String::new(),
            policy: None,
            expires: None,
            chain: Vec::new().into(),
        })
    } else {
        Err(refuse(
            "thumbprint-mismatch",
            format!(
                "the certificate's thumbprints (SHA-1 {}, SHA-256 {}) match neither registered thumbprint of {}",
                t.sha1,
                t.sha256,
                id.cn()
            ),
        ))
    }
}

fn sas(
    id: &ClientId,
    password: &[u8],
    kind: AuthType,
    keys: &crate::SymmetricKey,
    ctx: &Context<'_>,
) -> Result<AuthenticatedDevice, Refusal> {
    let text = std::str::from_utf8(password)
        .map_err(|_| refuse("sas-invalid", "the password is not a SAS token (not UTF-8)"))?;
    let token = SasToken::parse(text).map_err(|e| refuse("sas-invalid", e.to_string()))?;
    // sr = {host}[:port]/devices/{d}[/modules/{m}], or a prefix of it ending at a '/'.
    let (host, path) = token
        .resource
        .split_once('/')
        .unwrap_or((&token.resource, ""));
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let want = match &id.module {
        Some(m) => format!("devices/{}/modules/{m}", id.device),
        None => format!("devices/{}", id.device),
    }
    .to_ascii_lowercase();
    let path = path.trim_end_matches('/').to_ascii_lowercase();
    let covered = ctx.hostnames.iter().any(|h| h.eq_ignore_ascii_case(bare))
        && (path.is_empty()
            || path == want
            || (want.starts_with(&path) && want.as_bytes().get(path.len()) == Some(&b'/')));
    if !covered {
        return Err(refuse(
            "sas-invalid",
            format!(
                "the token is for {:?}, which does not cover {}",
                token.resource,
                id.cn()
            ),
        ));
    }
    let now = i64::try_from(ctx.now.as_secs()).unwrap_or(i64::MAX);
    if token.expiry < now {
        return Err(refuse(
            "sas-expired",
            format!("the token expired at {} (unix seconds)", token.expiry),
        ));
    }
    match &token.key_name {
        Some(policy_name) => {
            if ctx.settings.disable_local_auth {
                return Err(refuse(
                    "sas-disabled",
                    "tokens signed with shared access policy keys are disabled (disableLocalAuth)",
                ));
            }
            let Some(policy) = ctx.policies.iter().find(|p| &p.name == policy_name) else {
                return Err(refuse(
                    "sas-invalid",
                    format!("unknown shared access policy {policy_name:?}"),
                ));
            };
            if !policy.rights.contains(Rights::DEVICE_CONNECT) {
                return Err(refuse(
                    "sas-invalid",
                    format!("the policy {policy_name:?} lacks DeviceConnect"),
                ));
            }
            token
                .verify(
                    &[&policy.primary_key, &policy.secondary_key],
                    now,
                    policy_name,
                )
                .map_err(|e| refuse("sas-invalid", e.to_string()))?;
        }
        None => {
            let disabled = match id.module {
                Some(_) => ctx.settings.disable_module_sas,
                None => ctx.settings.disable_device_sas,
            };
            if disabled {
                return Err(refuse(
                    "sas-disabled",
                    if id.module.is_some() {
                        "module SAS keys are disabled on this hub (disableModuleSAS)"
                    } else {
                        "device SAS keys are disabled on this hub (disableDeviceSAS)"
                    },
                ));
            }
            if kind != AuthType::Sas {
                return Err(refuse(
                    "auth-method-mismatch",
                    format!(
                        "{} authenticates with {}, not SAS keys",
                        id.cn(),
                        kind.as_str()
                    ),
                ));
            }
            let keys: Vec<&str> = [keys.primary_key.as_deref(), keys.secondary_key.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            token
                .verify(&keys, now, &id.cn())
                .map_err(|e| refuse("sas-invalid", e.to_string()))?;
        }
    }
    Ok(AuthenticatedDevice {
        id: id.clone(),
        method: AuthType::Sas,
        ca: String::new(),
        policy: token.key_name.clone(),
        expires: Some(token.expiry),
        chain: Vec::new().into(),
    })
}

impl Registered {
    /// A device on its own (the client id names no module).
    pub fn of(device: Device) -> Self {
        Self {
            device,
            module: None,
        }
    }
}

#[cfg(test)]
mod username_tests {
    use super::check_username;

    #[test]
    fn the_client_id_is_matched_whole_even_with_a_question_mark() {
        let hosts = vec!["hub.example".to_string()];
        let ok = |u: &str, id: &str| check_username(Some(u), id, &hosts).is_ok();
        assert!(ok(
            "hub.example/probe?x=1/?api-version=2021-04-12",
            "probe?x=1"
        ));
        assert!(ok("hub.example:8883/w1/?api-version=2021-04-12", "w1"));
        assert!(ok("hub.example/w1/", "w1"));
        assert!(ok("hub.example/w1", "w1"));
        assert!(ok("hub.example/d/m/?api-version=1", "d/m"));
        assert!(!ok("hub.example/w1x/?api-version=1", "w1"));
        assert!(!ok("hub.example/probe/?x=1", "probe?x=1"));
        assert!(!ok("other.example/w1/?api-version=1", "w1"));
        assert!(!ok("hub.example", "w1"));
    }
}
