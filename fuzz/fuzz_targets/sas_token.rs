//! SAS tokens as the hub reads them: in the MQTT CONNECT password (`authenticate`, for a SAS
//! device and a SAS module with fixed keys, and the fixed default policies) and in the REST
//! API's Authorization header (`SasToken::parse`, `verify`, `covers`).
//!
//! An input is a token, optionally followed by a newline and the CONNECT username (else the
//! right one). Only a token signed with a registered key may be admitted. The input is also a
//! resource and policy name for `sign_token`, whose token must parse back to exactly them.
#![no_main]

use certhub_core::{
    AuthType, ConnectFields, Context, DeviceId, DeviceInput, HubSettings, ModuleId, ModuleInput,
    Policy, Registered, Rights, SasToken, TrustSnapshot, authenticate, sign_token,
};
use certhub_fuzz::{NOW, unix};
use libfuzzer_sys::fuzz_target;

const HOST: &str = "hub.example.com";
/// base64 of the bytes 0..32 and 32..64.
const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
/// base64 of the bytes 64..96 and 96..128.
const POLICY_KEY1: &str = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";
const POLICY_KEY2: &str = "YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8=";

fn sas_keys() -> serde_json::Value {
    serde_json::json!({"authentication": {"type": "sas", "symmetricKey": {
        "primaryKey": KEY1, "secondaryKey": KEY2}}})
}

fn registered(client_id: &str) -> Registered {
    let (device, module) = client_id.split_once('/').unwrap_or((client_id, ""));
    let device_id = DeviceId::new(device).expect("device id");
    let device = serde_json::from_value::<DeviceInput>(sas_keys())
        .expect("device input")
        .into_device(&device_id, None, 0)
        .expect("device");
    let module = (!module.is_empty()).then(|| {
        serde_json::from_value::<ModuleInput>(sas_keys())
            .expect("module input")
            .into_module(
                &device_id,
                &ModuleId::new(module).expect("module id"),
                None,
                0,
            )
            .expect("module")
    });
    Registered { device, module }
}

fn policies() -> Vec<Policy> {
    Policy::defaults()
        .into_iter()
        .map(|p| Policy {
            primary_key: POLICY_KEY1.into(),
            secondary_key: POLICY_KEY2.into(),
            ..p
        })
        .collect()
}

fn signed_by_a_registered_key(password: &[u8], policies: &[Policy]) -> bool {
    let Some(token) = std::str::from_utf8(password)
        .ok()
        .and_then(|t| SasToken::parse(t).ok())
    else {
        return false;
    };
    let keys: Vec<&str> = match &token.key_name {
        None => vec![KEY1, KEY2],
        Some(name) => policies
            .iter()
            .filter(|p| &p.name == name && p.rights.contains(Rights::DEVICE_CONNECT))
            .flat_map(|p| [p.primary_key.as_str(), p.secondary_key.as_str()])
            .collect(),
    };
    token.verify(&keys, NOW, "fuzz").is_ok()
}

fuzz_target!(|data: &[u8]| {
    let (password, username) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            &data[..i],
            Some(String::from_utf8_lossy(&data[i + 1..]).into_owned()),
        ),
        None => (data, None),
    };
    let text = String::from_utf8_lossy(password);

    if let Ok(token) = SasToken::parse(&text) {
        token
            .covers(&token.resource)
            .expect("a token covers its own resource");
        let _ = token.covers(&format!("{HOST}/devices/fuzz-device"));
        let _ = token.verify(&[KEY1, "not base64!", KEY2], NOW, "fuzz");
    }

    let policies = policies();
    let trust = TrustSnapshot::default();
    let settings = HubSettings::default();
    let hostnames = [HOST.to_string(), "127.0.0.1".to_string()];
    let ctx = Context {
        trust: &trust,
        settings: &settings,
        policies: &policies,
        hostnames: &hostnames,
        now: unix(NOW),
    };
    for client_id in ["fuzz-device", "fuzz-device/fuzz-module"] {
        let username = username
            .clone()
            .unwrap_or_else(|| format!("{HOST}/{client_id}/?api-version=2021-04-12"));
        let fields = ConnectFields {
            client_id,
            username: Some(&username),
            password: Some(password),
        };
        let reg = registered(client_id);
        if let Ok(device) = authenticate(fields, &[], Some(&reg), &ctx) {
            assert_eq!(device.method(), AuthType::Sas);
            assert!(
                signed_by_a_registered_key(password, &policies),
                "admitted without a registered key's signature"
            );
        }
    }

    // Whatever the resource and policy name, a signed token parses back to them and verifies.
    let expiry = NOW + 3600;
    for name in [None, Some(text.as_ref())] {
        let token = sign_token(&text, KEY1, name, expiry);
        let parsed = SasToken::parse(&token).expect("a signed token parses");
        assert_eq!(parsed.resource, text);
        assert_eq!(parsed.key_name.as_deref(), name);
        assert_eq!(parsed.expiry, expiry);
        parsed
            .verify(&[KEY1], NOW, "fuzz")
            .expect("a signed token verifies");
        parsed
            .covers(&text)
            .expect("a signed token covers its resource");
    }
});
