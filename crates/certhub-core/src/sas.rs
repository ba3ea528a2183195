//! Shared access signature tokens (azure-protocol 1.12 and 4.1):
//! `SharedAccessSignature sr={resource}&sig={signature}&se={expiry}[&skn={policy}]`, where the
//! signature is base64(HMAC-SHA256(base64decode(key), sr + "\n" + se)) over `sr` exactly as
//! sent (SDKs differ in how they percent-encode it, and each signs what it sends).

use aws_lc_rs::{constant_time, hmac};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What Python's `quote(s, safe="")` escapes: everything but letters, digits and `-._~`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a token was refused; the message is for the operator and the API caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("malformed SAS token: {0}")]
    Malformed(String),
    #[error("the SAS token expired at {expiry} (unix seconds); sign a new one")]
    Expired { expiry: i64 },
    #[error("the SAS token's signature does not match the key of {signer}")]
    BadSignature { signer: String },
    #[error("the SAS token is for {token_resource:?}, which does not cover {wanted:?}")]
    WrongResource {
        token_resource: String,
        wanted: String,
    },
}

/// A parsed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as sent (what was signed).
    pub sr_raw: String,
    /// `sr` percent-decoded: the resource URI.
    pub resource: String,
    /// `se` exactly as sent.
    pub se_raw: String,
    pub expiry: i64,
    pub signature: Vec<u8>,
    /// The policy name, for policy-signed tokens.
    pub key_name: Option<String>,
}

impl SasToken {
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let bad = |m: &str| SasError::Malformed(m.to_string());
        let body = token
            .trim()
            .strip_prefix("SharedAccessSignature ")
            .ok_or_else(|| bad("it must start with \"SharedAccessSignature \""))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in body.split('&') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("a field is not key=value"))?;
            let slot = match k {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.replace(v.to_string()).is_some() {
                return Err(bad(&format!("{k} appears twice")));
            }
        }
        let sr_raw = sr.ok_or_else(|| bad("sr (the resource) is missing"))?;
        let sig = sig.ok_or_else(|| bad("sig (the signature) is missing"))?;
        let se_raw = se.ok_or_else(|| bad("se (the expiry) is missing"))?;
        let expiry = se_raw
            .parse::<i64>()
            .map_err(|_| bad("se is not a number of seconds since 1970"))?;
        let resource = percent_decode_str(&sr_raw)
            .decode_utf8()
            .map_err(|_| bad("sr is not UTF-8"))?
            .into_owned();
        let sig_text = percent_decode_str(&sig)
            .decode_utf8()
            .map_err(|_| bad("sig is not UTF-8"))?;
        let signature = B64
            .decode(sig_text.as_bytes())
            .map_err(|_| bad("sig is not base64"))?;
        let key_name = match skn {
            Some(k) => Some(
                percent_decode_str(&k)
                    .decode_utf8()
                    .map_err(|_| bad("skn is not UTF-8"))?
                    .into_owned(),
            ),
            None => None,
        };
        Ok(Self {
            sr_raw,
            resource,
            se_raw,
            expiry,
            signature,
            key_name,
        })
    }

    /// Checks expiry against `now` (unix seconds), then the signature against each key (base64)
    /// in turn; `signer` names the key holder in the error.
    pub fn verify(&self, keys: &[&str], now: i64, signer: &str) -> Result<(), SasError> {
        self.verify_with(keys, now, signer, false)
    }

    /// [`SasToken::verify`] as Service Bus and Event Hubs sign: the HMAC key is the key's
    /// base64 text itself, not the bytes it encodes (the Event Hubs SDKs sign `sb://` audiences
    /// this way).
    pub fn verify_text_key(&self, keys: &[&str], now: i64, signer: &str) -> Result<(), SasError> {
        self.verify_with(keys, now, signer, true)
    }

    fn verify_with(
        &self,
        keys: &[&str],
        now: i64,
        signer: &str,
        text_key: bool,
    ) -> Result<(), SasError> {
        if self.expiry < now {
            return Err(SasError::Expired {
                expiry: self.expiry,
            });
        }
        let message = format!("{}\n{}", self.sr_raw, self.se_raw);
        for key in keys {
            let key = if text_key {
                key.as_bytes().to_vec()
            } else {
                let Ok(key) = B64.decode(key) else { continue };
                key
            };
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), message.as_bytes());
            if constant_time::verify_slices_are_equal(tag.as_ref(), &self.signature).is_ok() {
                return Ok(());
            }
        }
        Err(SasError::BadSignature {
            signer: signer.to_string(),
        })
    }

    /// Whether the token's resource covers `wanted` (e.g. `host/devices/d1`): the same URI or a
    /// prefix ending at a `/`, compared case-insensitively, as Azure does.
    pub fn covers(&self, wanted: &str) -> Result<(), SasError> {
        let have = self.resource.trim_end_matches('/').to_ascii_lowercase();
        let want = wanted.trim_end_matches('/').to_ascii_lowercase();
        let ok = want == have
            || (want.starts_with(&have) && want.as_bytes().get(have.len()) == Some(&b'/'));
        if ok {
            Ok(())
        } else {
            Err(SasError::WrongResource {
                token_resource: self.resource.clone(),
                wanted: wanted.to_string(),
            })
        }
    }
}

/// Makes a token for `resource` (unencoded, e.g. `localhost/devices/d1`) signed with `key`
/// (base64), valid until `expiry` (unix seconds), as the Python SDK does.
pub fn sign_token(resource: &str, key: &str, key_name: Option<&str>, expiry: i64) -> String {
    let sr = utf8_percent_encode(resource, URI_COMPONENT).to_string();
    let key = B64.decode(key).unwrap_or_default();
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        format!("{sr}\n{expiry}").as_bytes(),
    );
    let sig = utf8_percent_encode(&B64.encode(tag.as_ref()), URI_COMPONENT).to_string();
    let mut t = format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}");
    if let Some(n) = key_name {
        t.push_str("&skn=");
        t.push_str(&utf8_percent_encode(n, URI_COMPONENT).to_string());
    }
    t
}

/// A new random 32-byte key, base64, as Azure generates them.
pub fn generate_key() -> String {
    let mut b = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut b);
    B64.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_parse_verify_round_trip() {
        let key = generate_key();
        let t = sign_token("myhub.example.com/devices/dev1", &key, None, 2_000_000_000);
        assert!(t.contains("sr=myhub.example.com%2Fdevices%2Fdev1"), "{t}");
        let p = SasToken::parse(&t).expect("parse");
        assert_eq!(p.resource, "myhub.example.com/devices/dev1");
        p.verify(&[&key], 1_900_000_000, "dev1").expect("valid");
        let other = generate_key();
        assert!(matches!(
            p.verify(&[&other], 1_900_000_000, "dev1"),
            Err(SasError::BadSignature { .. })
        ));
        p.verify(&[&other, &key], 1_900_000_000, "dev1")
            .expect("secondary key");
        assert!(matches!(
            p.verify(&[&key], 2_000_000_001, "dev1"),
            Err(SasError::Expired { .. })
        ));
    }

    #[test]
    fn python_style_token_verifies() {
        // Python signs quote(uri, safe="") with upper-case escapes and a '/'-keeping quote() of
        // the signature; the signature is over sr exactly as sent.
        let key = generate_key();
        let sr = "myhub.example.com%2Fdevices%2Fdev1";
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &B64.decode(&key).expect("key")),
            format!("{sr}\n1999999999").as_bytes(),
        );
        let sig = B64
            .encode(tag.as_ref())
            .replace('+', "%2B")
            .replace('=', "%3D");
        let token = format!("SharedAccessSignature sr={sr}&sig={sig}&se=1999999999");
        SasToken::parse(&token)
            .expect("parse")
            .verify(&[&key], 1, "dev1")
            .expect("valid");
    }

    #[test]
    fn resources_cover_by_segment() {
        let key = generate_key();
        let t = SasToken::parse(&sign_token(
            "Hub.Example.com/devices",
            &key,
            Some("device"),
            9,
        ))
        .expect("parse");
        assert_eq!(t.key_name.as_deref(), Some("device"));
        t.covers("hub.example.com/devices/d1").expect("prefix");
        assert!(t.covers("hub.example.com/devicesX").is_err());
        let host =
            SasToken::parse(&sign_token("localhost", &key, Some("iothubowner"), 9)).expect("parse");
        host.covers("localhost").expect("host");
        assert!(SasToken::parse("Bearer x").is_err());
        assert!(SasToken::parse("SharedAccessSignature sr=a&se=1").is_err());
    }
}

/// A service connection string, `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`
/// (other parts are ignored), as `certhub hub connection-string` prints one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConnectionString {
    /// `host[:port]` of the service API.
    pub host: String,
    /// The shared access policy's name.
    pub policy: String,
    /// Its key (base64).
    pub key: String,
}

impl ServiceConnectionString {
    /// Parses one; the error says what is missing or malformed.
    pub fn parse(cs: &str) -> Result<Self, String> {
        let (mut host, mut policy, mut key) = (None, None, None);
        for part in cs.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("connection string: {part:?} is not Key=Value"));
            };
            match k {
                "HostName" => host = Some(v.to_string()),
                "SharedAccessKeyName" => policy = Some(v.to_string()),
                "SharedAccessKey" => key = Some(v.to_string()),
                _ => {}
            }
        }
        match (host, policy, key) {
            (Some(host), Some(policy), Some(key)) => Ok(Self { host, policy, key }),
            _ => Err("connection string: needs HostName, SharedAccessKeyName and SharedAccessKey (a device connection string cannot manage the hub; `certhub hub connection-string` prints a service one)".into()),
        }
    }
}

#[cfg(test)]
mod connection_string_tests {
    use super::ServiceConnectionString;

    #[test]
    fn service_connection_strings() {
        let cs = ServiceConnectionString::parse(
            "HostName=127.0.0.4:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
        )
        .expect("parses");
        assert_eq!(
            (cs.host.as_str(), cs.policy.as_str(), cs.key.as_str()),
            ("127.0.0.4:8443", "iothubowner", "a2V5")
        );
        for bad in ["HostName=h;DeviceId=d;SharedAccessKey=k", "nonsense", ""] {
            assert!(ServiceConnectionString::parse(bad).is_err(), "{bad}");
        }
    }
}
