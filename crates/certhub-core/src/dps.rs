//! Device provisioning (azure-more-protocols 6, azure-protocol 7), the pure part: registration
//! ids and ID scopes, enrollment documents in the DPS service API's shape and their rules,
//! symmetric-key attestation (tokens and group-derived keys), and how an allocation policy
//! picks a hub.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::SasToken;

/// A refusal of the provisioning service: the HTTP status, DPS's numeric error code
/// (`errorCode`, e.g. 400004) and a message that says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsError {
    pub status: u16,
    pub code: i64,
    pub message: String,
}

impl DpsError {
    pub fn new(status: u16, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, 400_004, message)
    }
}

impl std::fmt::Display for DpsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

/// Longest registration id (Azure: 128 characters).
pub const MAX_REGISTRATION_ID: usize = 128;

/// A registration id or enrollment group id: 1 to 128 characters of letters, digits and
/// `- . _ :`, ending with a letter, a digit or `-` (Azure's rule). `what` names it in the
/// message.
pub fn check_dps_id(what: &str, id: &str) -> Result<(), DpsError> {
    if id.is_empty() {
        return Err(DpsError::bad_request(format!("the {what} is empty")));
    }
    if id.chars().count() > MAX_REGISTRATION_ID {
        return Err(DpsError::bad_request(format!(
            "the {what} is {} characters long; at most {MAX_REGISTRATION_ID} are allowed",
            id.chars().count()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(DpsError::bad_request(format!(
            "the {what} {id:?} holds {c:?}; only letters, digits and - . _ : are allowed"
        )));
    }
    if id.ends_with(['.', '_', ':']) {
        return Err(DpsError::bad_request(format!(
            "the {what} {id:?} must end with a letter, a digit or '-'"
        )));
    }
    Ok(())
}

/// A new ID scope: `0ne` and eight hex digits, as Azure's look.
pub fn new_id_scope() -> String {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    format!("0ne{:08X}", u32::from_be_bytes(b))
}

/// The key a device of a symmetric-key enrollment group signs with:
/// base64(HMAC-SHA256(base64decode(group key), registration id)).
pub fn derive_device_key(group_key: &str, registration_id: &str) -> Option<String> {
    let key = B64.decode(group_key).ok()?;
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        registration_id.as_bytes(),
    );
    Some(B64.encode(tag.as_ref()))
}

/// Judges a registration's SAS token (`sr={idScope}/registrations/{registrationId}`, percent-
/// encoded (Python) or not (Node); `skn` absent or `registration`) against the keys, at `now`
/// (unix seconds). The signature is checked over `sr` as sent.
pub fn verify_registration_token(
    token: &str,
    id_scope: &str,
    registration_id: &str,
    keys: &[&str],
    now: i64,
) -> Result<(), String> {
    let token = SasToken::parse(token).map_err(|e| e.to_string())?;
    if let Some(n) = &token.key_name
        && !n.eq_ignore_ascii_case("registration")
    {
        return Err(format!(
            "the token names key {n:?}; a registration token has skn=registration or none"
        ));
    }
    let wanted = format!("{id_scope}/registrations/{registration_id}");
    if !token.resource.eq_ignore_ascii_case(&wanted) {
        return Err(format!(
            "the token is for {:?}, not {wanted:?}",
            token.resource
        ));
    }
    token
        .verify(keys, now, "the enrollment")
        .map_err(|e| e.to_string())
}

/// What an enrollment decides about assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AllocationPolicy {
    /// A stable hash of the registration id over the hubs, weighted by their allocation
    /// weights (Azure's "evenly weighted distribution"): a device lands on the same hub
    /// every time while the hubs stay the same.
    #[default]
    #[serde(rename = "hashed")]
    Hashed,
    /// The one hub the enrollment names.
    #[serde(rename = "static")]
    Static,
    /// The hub with the fewest registrations for its weight (certhub's; Azure has no such
    /// policy): new devices fill the emptiest hub first.
    #[serde(rename = "evenlyWeighted")]
    EvenlyWeighted,
}

impl AllocationPolicy {
    pub fn parse(s: &str) -> Result<Self, DpsError> {
        match s.to_ascii_lowercase().as_str() {
            "hashed" => Ok(Self::Hashed),
            "static" => Ok(Self::Static),
            "evenlyweighted" => Ok(Self::EvenlyWeighted),
            "geolatency" => Err(DpsError::bad_request(
                "allocationPolicy geoLatency is not supported: certhub's hubs have no regions; use hashed, evenlyWeighted or static",
            )),
            "custom" => Err(DpsError::bad_request(
                "allocationPolicy custom (a webhook) is not supported yet; use hashed, evenlyWeighted or static",
            )),
            other => Err(DpsError::bad_request(format!(
                "allocationPolicy {other:?} is unknown; use hashed, evenlyWeighted or static"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hashed => "hashed",
            Self::Static => "static",
            Self::EvenlyWeighted => "evenlyWeighted",
        }
    }
}

/// A hub an allocation may choose: its name, allocation weight and how many registrations it
/// holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub weight: i64,
    pub assigned: i64,
}

/// The hub `policy` assigns `registration_id` to among `candidates` (never empty for static:
/// the caller passes the one hub). Hashed: rendezvous hashing weighted by the weights, so
/// adding a hub moves only the devices that now belong to it. Evenly weighted: the least
/// `assigned / weight`, ties to the first.
pub fn choose_hub<'a>(
    policy: AllocationPolicy,
    registration_id: &str,
    candidates: &'a [Candidate],
) -> Option<&'a Candidate> {
    let usable = candidates.iter().filter(|c| c.weight > 0);
    match policy {
        AllocationPolicy::Static => candidates.first(),
        AllocationPolicy::EvenlyWeighted => usable.min_by(|a, b| {
            // a.assigned / a.weight < b.assigned / b.weight, without division.
            (i128::from(a.assigned) * i128::from(b.weight))
                .cmp(&(i128::from(b.assigned) * i128::from(a.weight)))
        }),
        AllocationPolicy::Hashed => {
            let id = registration_id.to_ascii_lowercase();
            usable
                .map(|c| (rendezvous_score(&id, c), c))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, c)| c)
        }
    }
}

/// Weighted rendezvous hashing: -weight / ln(u), u uniform in (0, 1) from a hash of the id and
/// the hub's name.
fn rendezvous_score(id: &str, c: &Candidate) -> f64 {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{id}\n{}", c.name.to_ascii_lowercase()).as_bytes(),
    );
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.as_ref()[..8]);
    // 53 bits into (0, 1).
    let u = ((u64::from_be_bytes(b) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(c.weight as f64) / u.ln()
}

/// Which kind of enrollment a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Group,
    Individual,
}

impl Kind {
    /// The id field of the document.
    pub fn id_field(self) -> &'static str {
        match self {
            Self::Group => "enrollmentGroupId",
            Self::Individual => "registrationId",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Self::Group => "enrollment group",
            Self::Individual => "individual enrollment",
        }
    }
}

/// How an enrollment's devices prove who they are, as certhub judges it (read from the
/// document's `attestation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attestation {
    /// A group whose devices' chains reach this certificate (DER): a CA registered on the hub
    /// (`caReferences`, by name) or the group's own signing certificate (registered on the
    /// hub under `ca` when the group was stored).
    X509Group { ca: String },
    /// An individual enrollment's leaf: its thumbprints (upper-case hex), primary and
    /// secondary.
    X509Leaf { thumbprints: Vec<String> },
    /// Symmetric keys (base64): a group's derive each device's key; an individual's are the
    /// device's.
    SymmetricKey { primary: String, secondary: String },
}

/// Reads the attestation of a stored (normalised) enrollment document.
pub fn attestation_of(kind: Kind, doc: &Value) -> Result<Attestation, String> {
    let a = &doc["attestation"];
    match a["type"].as_str() {
        Some("x509") => match kind {
            Kind::Group => a["x509"]["caReferences"]["primary"]
                .as_str()
                .map(|ca| Attestation::X509Group { ca: ca.to_string() })
                .ok_or_else(|| "the group names no CA".to_string()),
            Kind::Individual => {
                let mut thumbprints = Vec::new();
                for slot in ["primary", "secondary"] {
                    let info = &a["x509"]["clientCertificates"][slot]["info"];
                    for field in ["sha256Thumbprint", "sha1Thumbprint"] {
                        if let Some(t) = info[field].as_str() {
                            thumbprints.push(t.to_ascii_uppercase());
                        }
                    }
                }
                Ok(Attestation::X509Leaf { thumbprints })
            }
        },
        Some("symmetricKey") => Ok(Attestation::SymmetricKey {
            primary: a["symmetricKey"]["primaryKey"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            secondary: a["symmetricKey"]["secondaryKey"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }),
        other => Err(format!("attestation type {other:?} is not supported")),
    }
}

/// A certificate given in an enrollment (`certificate`: PEM text or base64 DER), read: its
/// DER and Azure's `X509CertificateInfo`.
#[derive(Debug, Clone)]
pub struct GivenCertificate {
    pub der: Vec<u8>,
    pub info: Value,
    pub is_ca: bool,
}

/// Reads a certificate as the DPS service API carries it.
pub fn read_given_certificate(text: &str) -> Result<GivenCertificate, DpsError> {
    let trimmed = text.trim();
    let der = if trimmed.starts_with("-----BEGIN") {
        let certs = certhub_pki::read_certificates(trimmed.as_bytes())
            .map_err(|e| DpsError::bad_request(format!("the certificate is not readable: {e}")))?;
        match certs.as_slice() {
            [one] => one.as_ref().to_vec(),
            _ => {
                return Err(DpsError::bad_request(format!(
                    "the certificate field holds {} certificates; give exactly one",
                    certs.len()
                )));
            }
        }
    } else {
        let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
        B64.decode(compact).map_err(|_| {
            DpsError::bad_request(
                "the certificate is neither PEM nor base64 DER; give the PEM text of the certificate",
            )
        })?
    };
    let d = certhub_pki::describe_certificate(&der)
        .map_err(|e| DpsError::bad_request(format!("the certificate is not readable: {e}")))?;
    let info = info_of(&d);
    let is_ca = d.basic_constraints.as_ref().is_some_and(|b| b.ca);
    Ok(GivenCertificate { der, info, is_ca })
}

/// Azure's `X509CertificateInfo` of a certificate (DER), or None when it does not parse.
pub fn certificate_info(der: &[u8]) -> Option<Value> {
    certhub_pki::describe_certificate(der)
        .ok()
        .map(|d| info_of(&d))
}

fn info_of(d: &certhub_pki::CertificateInfo) -> Value {
    serde_json::json!({
        "subjectName": d.subject,
        "sha1Thumbprint": d.thumbprints.sha1,
        "sha256Thumbprint": d.thumbprints.sha256,
        "issuerName": d.issuer,
        "notBeforeUtc": d.not_before,
        "notAfterUtc": d.not_after,
        "serialNumber": d.serial,
        "version": d.version,
    })
}

/// What the hub must do with a signing certificate an enrollment group carries: make sure it
/// is registered as a CA (it then needs proof of possession like any CA) and reference it.
#[derive(Debug, Clone)]
pub struct SigningCertificate {
    pub certificate: GivenCertificate,
    /// The PEM text to register.
    pub pem: String,
}

/// An enrollment document, checked and normalised: defaults filled in, read-only fields
/// dropped (the caller adds etag and times), keys generated where the symmetric key is
/// empty. Returns the document and, for a group with `signingCertificates`, the certificate
/// to register as a CA (the caller then sets `caReferences` with [`reference_ca`]).
pub fn normalize_enrollment(
    kind: Kind,
    path_id: &str,
    body: &Value,
) -> Result<(Map<String, Value>, Option<SigningCertificate>), DpsError> {
    let Some(obj) = body.as_object() else {
        return Err(DpsError::bad_request(format!(
            "the body must be a JSON object (an {})",
            kind.noun()
        )));
    };
    check_dps_id(kind.id_field(), path_id)?;
    if let Some(given) = obj.get(kind.id_field()).filter(|v| !v.is_null()) {
        let given = given.as_str().unwrap_or_default();
        if !given.eq_ignore_ascii_case(path_id) {
            return Err(DpsError::bad_request(format!(
                "the body's {} {given:?} differs from the id in the URL {path_id:?}",
                kind.id_field()
            )));
        }
    }
    let mut out = Map::new();
    out.insert(kind.id_field().into(), Value::String(path_id.to_string()));
    if kind == Kind::Individual
        && let Some(d) = obj.get("deviceId").filter(|v| !v.is_null())
    {
        let d = d
            .as_str()
            .ok_or_else(|| DpsError::bad_request("deviceId must be a string"))?;
        crate::DeviceId::new(d)
            .map_err(|e| DpsError::bad_request(format!("deviceId {d:?}: {e}")))?;
        out.insert("deviceId".into(), Value::String(d.to_string()));
    }
    let (attestation, signing) = normalize_attestation(kind, obj.get("attestation"))?;
    out.insert("attestation".into(), attestation);
    let capabilities = match obj.get("capabilities").filter(|v| !v.is_null()) {
        None => serde_json::json!({"iotEdge": false}),
        Some(c) => {
            let edge = c.get("iotEdge").unwrap_or(&Value::Bool(false));
            let Some(edge) = edge.as_bool() else {
                return Err(DpsError::bad_request(
                    "capabilities.iotEdge must be true or false",
                ));
            };
            serde_json::json!({"iotEdge": edge})
        }
    };
    out.insert("capabilities".into(), capabilities);
    let hubs = match obj.get("iotHubs").filter(|v| !v.is_null()) {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|h| {
                h.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| {
                        DpsError::bad_request("iotHubs must be a list of hub host names")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(DpsError::bad_request(
                "iotHubs must be a list of hub host names",
            ));
        }
    };
    let host_name = obj
        .get("iotHubHostName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase);
    let policy = match obj.get("allocationPolicy").and_then(Value::as_str) {
        Some(p) => AllocationPolicy::parse(p)?,
        None => AllocationPolicy::Hashed,
    };
    if policy == AllocationPolicy::Static && hubs.len() > 1 {
        return Err(DpsError::bad_request(
            "a static allocation names one hub; iotHubs lists more",
        ));
    }
    out.insert(
        "iotHubs".into(),
        Value::Array(hubs.iter().cloned().map(Value::String).collect()),
    );
    if let Some(h) = host_name {
        out.insert("iotHubHostName".into(), Value::String(h));
    }
    out.insert("allocationPolicy".into(), policy.as_str().into());
    let twin = match obj.get("initialTwin").filter(|v| !v.is_null()) {
        None => None,
        Some(t) => Some(normalize_twin(t)?),
    };
    if let Some(t) = twin {
        out.insert("initialTwin".into(), t);
    }
    let reprovision = match obj.get("reprovisionPolicy").filter(|v| !v.is_null()) {
        None => serde_json::json!({"updateHubAssignment": true, "migrateDeviceData": true}),
        Some(r) => {
            let flag = |name: &str| -> Result<bool, DpsError> {
                match r.get(name) {
                    None | Some(Value::Null) => Ok(true),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(_) => Err(DpsError::bad_request(format!(
                        "reprovisionPolicy.{name} must be true or false"
                    ))),
                }
            };
            serde_json::json!({
                "updateHubAssignment": flag("updateHubAssignment")?,
                "migrateDeviceData": flag("migrateDeviceData")?,
            })
        }
    };
    out.insert("reprovisionPolicy".into(), reprovision);
    let status = match obj.get("provisioningStatus").and_then(Value::as_str) {
        None => "enabled",
        Some(s) if s.eq_ignore_ascii_case("enabled") => "enabled",
        Some(s) if s.eq_ignore_ascii_case("disabled") => "disabled",
        Some(s) => {
            return Err(DpsError::bad_request(format!(
                "provisioningStatus {s:?} is unknown; use enabled or disabled"
            )));
        }
    };
    out.insert("provisioningStatus".into(), status.into());
    if let Some(info) = obj
        .get("optionalDeviceInformation")
        .filter(|v| !v.is_null())
    {
        out.insert(
            "optionalDeviceInformation".into(),
            normalize_twin_part(info)?,
        );
    }
    Ok((out, signing))
}

/// Points a group's attestation at the CA registered for its signing certificate.
pub fn reference_ca(doc: &mut Map<String, Value>, ca: &str) {
    if let Some(x509) = doc
        .get_mut("attestation")
        .and_then(|a| a.get_mut("x509"))
        .and_then(Value::as_object_mut)
    {
        x509.insert(
            "caReferences".into(),
            serde_json::json!({"primary": ca, "secondary": null}),
        );
    }
}

fn normalize_twin_part(v: &Value) -> Result<Value, DpsError> {
    match v {
        Value::Object(_) => Ok(v.clone()),
        _ => Err(DpsError::bad_request(
            "a twin collection must be a JSON object",
        )),
    }
}

/// `{"tags": {...}, "properties": {"desired": {...}}}`; Azure's metadata fields in a
/// collection (`$metadata`, `$version`, `count`, ...) are dropped.
fn normalize_twin(t: &Value) -> Result<Value, DpsError> {
    let Some(obj) = t.as_object() else {
        return Err(DpsError::bad_request("initialTwin must be a JSON object"));
    };
    let clean = |v: Option<&Value>| -> Result<Value, DpsError> {
        match v.filter(|v| !v.is_null()) {
            None => Ok(Value::Object(Map::new())),
            Some(Value::Object(m)) => Ok(Value::Object(
                m.iter()
                    .filter(|(k, _)| !k.starts_with('$') && k.as_str() != "count")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )),
            Some(_) => Err(DpsError::bad_request(
                "initialTwin.tags and initialTwin.properties.desired must be JSON objects",
            )),
        }
    };
    let tags = clean(obj.get("tags"))?;
    let desired = clean(obj.get("properties").and_then(|p| p.get("desired")))?;
    Ok(serde_json::json!({"tags": tags, "properties": {"desired": desired}}))
}

fn normalize_attestation(
    kind: Kind,
    a: Option<&Value>,
) -> Result<(Value, Option<SigningCertificate>), DpsError> {
    let Some(a) = a.filter(|v| v.is_object()) else {
        return Err(DpsError::bad_request(
            "attestation is missing: give {\"type\": \"x509\", ...} or {\"type\": \"symmetricKey\", ...}",
        ));
    };
    match a.get("type").and_then(Value::as_str).unwrap_or_default() {
        "x509" => {
            let x = a.get("x509").filter(|v| v.is_object()).ok_or_else(|| {
                DpsError::bad_request("attestation type x509 needs an x509 object")
            })?;
            let present = |name: &str| {
                x.get(name).filter(|v| {
                    v.as_object()
                        .is_some_and(|o| o.values().any(|v| !v.is_null()))
                })
            };
            match kind {
                Kind::Group => match (present("caReferences"), present("signingCertificates")) {
                    (Some(r), None) => {
                        let primary = r
                            .get("primary")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty());
                        let Some(primary) = primary else {
                            return Err(DpsError::bad_request(
                                "caReferences.primary must name a CA registered on this hub (certhub ca list)",
                            ));
                        };
                        if r.get("secondary").is_some_and(|s| !s.is_null()) {
                            return Err(DpsError::bad_request(
                                "caReferences.secondary is not supported; make a second group for a second CA",
                            ));
                        }
                        Ok((
                            serde_json::json!({"type": "x509", "x509": {
                                "caReferences": {"primary": primary, "secondary": null}}}),
                            None,
                        ))
                    }
                    (None, Some(s)) => {
                        if s.get("secondary").is_some_and(|v| !v.is_null()) {
                            return Err(DpsError::bad_request(
                                "signingCertificates.secondary is not supported; make a second group for a second CA",
                            ));
                        }
                        let text = s["primary"]["certificate"].as_str().ok_or_else(|| {
                            DpsError::bad_request(
                                "signingCertificates.primary.certificate must hold the CA certificate (PEM)",
                            )
                        })?;
                        let certificate = read_given_certificate(text)?;
                        if !certificate.is_ca {
                            return Err(DpsError::bad_request(
                                "the signing certificate is not a CA certificate (basicConstraints CA:TRUE): an enrollment group is for the root or intermediate that signed its devices",
                            ));
                        }
                        let pem = certhub_pki::to_pem(&certhub_pki::CertificateDer::from(
                            certificate.der.clone(),
                        ));
                        Ok((
                            serde_json::json!({"type": "x509", "x509": {
                                "signingCertificates": {"primary": {"info": certificate.info}, "secondary": null}}}),
                            Some(SigningCertificate { certificate, pem }),
                        ))
                    }
                    (Some(_), Some(_)) => Err(DpsError::bad_request(
                        "give either caReferences or signingCertificates, not both",
                    )),
                    (None, None) => Err(DpsError::bad_request(
                        "an X.509 enrollment group needs caReferences.primary (a CA verified on this hub) or signingCertificates.primary.certificate",
                    )),
                },
                Kind::Individual => {
                    let Some(c) = present("clientCertificates") else {
                        return Err(DpsError::bad_request(
                            "an X.509 individual enrollment needs clientCertificates.primary: the device's certificate (PEM) or its thumbprint in info.sha256Thumbprint",
                        ));
                    };
                    let mut slots = Map::new();
                    for slot in ["primary", "secondary"] {
                        let v = c.get(slot).filter(|v| !v.is_null());
                        slots.insert(
                            slot.into(),
                            match v {
                                None => Value::Null,
                                Some(v) => {
                                    serde_json::json!({"info": client_certificate(slot, v)?})
                                }
                            },
                        );
                    }
                    if slots["primary"].is_null() {
                        return Err(DpsError::bad_request(
                            "clientCertificates.primary is missing",
                        ));
                    }
                    Ok((
                        serde_json::json!({"type": "x509", "x509": {"clientCertificates": slots}}),
                        None,
                    ))
                }
            }
        }
        "symmetricKey" => {
            let s = a.get("symmetricKey").filter(|v| !v.is_null());
            let key = |name: &str| -> Result<String, DpsError> {
                match s.and_then(|s| s.get(name)).and_then(Value::as_str) {
                    None | Some("") => Ok(crate::generate_key()),
                    Some(k) => match B64.decode(k) {
                        Ok(b) if (16..=64).contains(&b.len()) => Ok(k.to_string()),
                        _ => Err(DpsError::bad_request(format!(
                            "symmetricKey.{name} must be base64 of 16 to 64 bytes (or empty: certhub makes one)"
                        ))),
                    },
                }
            };
            Ok((
                serde_json::json!({"type": "symmetricKey", "symmetricKey": {
                    "primaryKey": key("primaryKey")?, "secondaryKey": key("secondaryKey")?}}),
                None,
            ))
        }
        "tpm" => Err(DpsError::bad_request(
            "TPM attestation is not supported by certhub; use x509 or symmetricKey",
        )),
        other => Err(DpsError::bad_request(format!(
            "attestation type {other:?} is unknown; use x509 or symmetricKey"
        ))),
    }
}

/// An individual enrollment's certificate slot: the certificate (its info is computed) or a
/// thumbprint given in `info`.
fn client_certificate(slot: &str, v: &Value) -> Result<Value, DpsError> {
    if let Some(text) = v.get("certificate").and_then(Value::as_str) {
        return Ok(read_given_certificate(text)?.info);
    }
    let info = v.get("info");
    let mut out = Map::new();
    for field in ["sha256Thumbprint", "sha1Thumbprint"] {
        if let Some(t) = info.and_then(|i| i.get(field)).and_then(Value::as_str) {
            let n = certhub_pki::normalize_thumbprint(t).ok_or_else(|| {
                DpsError::bad_request(format!(
                    "clientCertificates.{slot}.info.{field} {t:?} is not a thumbprint (40 or 64 hex digits)"
                ))
            })?;
            out.insert(field.into(), Value::String(n));
        }
    }
    if out.is_empty() {
        return Err(DpsError::bad_request(format!(
            "clientCertificates.{slot} needs the certificate (PEM) or info.sha256Thumbprint"
        )));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_azures_rule() {
        assert!(check_dps_id("registration id", "smart-x-widget-0001").is_ok());
        assert!(check_dps_id("registration id", "a.b_c:d-").is_ok());
        assert!(check_dps_id("registration id", "").is_err());
        assert!(check_dps_id("registration id", "bad/slash").is_err());
        assert!(check_dps_id("registration id", "ends.").is_err());
        assert!(check_dps_id("registration id", &"a".repeat(129)).is_err());
        assert!(check_dps_id("registration id", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn group_keys_derive_as_azure_documents() {
        // A group key of Azure's sample ("How to provision devices using symmetric key
        // enrollment groups"); the expected device key was computed with openssl:
        // printf sensor-thl-001 | openssl dgst -sha256 -mac HMAC -macopt hexkey:<the key
        // decoded, in hex> -binary | base64
        let group = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
        let k = derive_device_key(group, "sensor-thl-001").expect("derives");
        assert_eq!(k, "fNDUwqjQhOlAK9i3M0Rv68jUb/Nb8tx7lJK/HVP4hZM=");
    }

    #[test]
    fn tokens_of_python_and_node_are_judged_alike() {
        let key = crate::generate_key();
        let python = crate::sign_token("0ne0001/registrations/dev1", &key, None, 2_000_000_000);
        assert!(verify_registration_token(&python, "0ne0001", "dev1", &[&key], 1).is_ok());
        let node = crate::sign_token(
            "0ne0001/registrations/dev1",
            &key,
            Some("registration"),
            2_000_000_000,
        );
        assert!(verify_registration_token(&node, "0ne0001", "dev1", &[&key], 1).is_ok());
        assert!(verify_registration_token(&python, "0ne0001", "dev2", &[&key], 1).is_err());
        assert!(
            verify_registration_token(&python, "0ne0001", "dev1", &[&key], 2_000_000_001).is_err()
        );
        let other = crate::generate_key();
        assert!(verify_registration_token(&python, "0ne0001", "dev1", &[&other], 1).is_err());
    }

    #[test]
    fn hashed_allocation_is_stable_and_follows_weights() {
        let hubs = |w2: i64| {
            vec![
                Candidate {
                    name: "a".into(),
                    weight: 1,
                    assigned: 0,
                },
                Candidate {
                    name: "b".into(),
                    weight: w2,
                    assigned: 0,
                },
            ]
        };
        let even = hubs(1);
        let mut on_b = 0;
        for i in 0..1000 {
            let id = format!("widget-{i}");
            let first = choose_hub(AllocationPolicy::Hashed, &id, &even).expect("a hub");
            let again =
                choose_hub(AllocationPolicy::Hashed, &id.to_uppercase(), &even).expect("a hub");
            assert_eq!(first.name, again.name);
            on_b += usize::from(first.name == "b");
        }
        assert!((400..600).contains(&on_b), "{on_b} of 1000 on b");
        let heavy = hubs(3);
        let on_b = (0..1000)
            .filter(|i| {
                choose_hub(AllocationPolicy::Hashed, &format!("widget-{i}"), &heavy)
                    .is_some_and(|c| c.name == "b")
            })
            .count();
        assert!(
            (680..820).contains(&on_b),
            "{on_b} of 1000 on b at weight 3"
        );
    }

    #[test]
    fn evenly_weighted_fills_the_emptiest_hub() {
        let hubs = vec![
            Candidate {
                name: "a".into(),
                weight: 1,
                assigned: 10,
            },
            Candidate {
                name: "b".into(),
                weight: 2,
                assigned: 10,
            },
            Candidate {
                name: "c".into(),
                weight: 0,
                assigned: 0,
            },
        ];
        let c = choose_hub(AllocationPolicy::EvenlyWeighted, "x", &hubs).expect("a hub");
        assert_eq!(c.name, "b");
    }

    #[test]
    fn enrollments_are_checked_and_defaulted() {
        let body = serde_json::json!({
            "enrollmentGroupId": "grp1",
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "company-x"}}},
            "initialTwin": {"tags": {"line": 3, "$metadata": {}}, "properties": {"desired": {"rate": 5}}},
        });
        let (doc, signing) = normalize_enrollment(Kind::Group, "grp1", &body).expect("valid");
        assert!(signing.is_none());
        assert_eq!(doc["provisioningStatus"], "enabled");
        assert_eq!(doc["allocationPolicy"], "hashed");
        assert_eq!(doc["initialTwin"]["tags"], serde_json::json!({"line": 3}));
        assert_eq!(doc["reprovisionPolicy"]["migrateDeviceData"], true);
        let att = attestation_of(Kind::Group, &Value::Object(doc)).expect("attestation");
        assert_eq!(
            att,
            Attestation::X509Group {
                ca: "company-x".into()
            }
        );

        let wrong_id =
            serde_json::json!({"enrollmentGroupId": "other", "attestation": body["attestation"]});
        assert!(normalize_enrollment(Kind::Group, "grp1", &wrong_id).is_err());
        let tpm = serde_json::json!({"attestation": {"type": "tpm", "tpm": {}}});
        let e = normalize_enrollment(Kind::Individual, "dev1", &tpm).expect_err("no TPM");
        assert!(e.message.contains("TPM"), "{e}");
        let sym = serde_json::json!({"attestation": {"type": "symmetricKey"}});
        let (doc, _) = normalize_enrollment(Kind::Individual, "dev1", &sym).expect("keys made");
        match attestation_of(Kind::Individual, &Value::Object(doc)).expect("attestation") {
            Attestation::SymmetricKey { primary, secondary } => {
                assert_eq!(B64.decode(primary).expect("b64").len(), 32);
                assert_eq!(B64.decode(secondary).expect("b64").len(), 32);
            }
            other => panic!("{other:?}"),
        }
    }
}
