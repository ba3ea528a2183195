//! The CONNECT decision, one reason at a time, with PKIs built in memory and a hand-set clock.

use certhub_core::{
    AuthType, ConnectFields, Context, DeviceId, DeviceInput, HubSettings, ModuleId, ModuleInput,
    Policy, Registered, TrustSnapshot, authenticate, sign_token,
};
use certhub_pki::{CertificateDer, Thumbprints, TrustStore};
use certhub_testkit::{Ca, NOT_AFTER, NOT_BEFORE, NOW, now, self_signed_device, validity};

const HOST: &str = "hub.example.com";

fn device(id: &str, json: serde_json::Value) -> certhub_core::Device {
    serde_json::from_value::<DeviceInput>(json)
        .expect("input")
        .into_device(&DeviceId::new(id).expect("id"), None, 0)
        .expect("device")
}

struct World {
    root: Ca,
    technician: Ca,
    trust: TrustSnapshot,
    settings: HubSettings,
    policies: Vec<Policy>,
    hosts: Vec<String>,
}

fn world() -> World {
    let root = Ca::root("Company-X Root CA");
    let technician = root
        .intermediate("Factory-Y CA")
        .intermediate("Technician-Z CA");
    let trust = TrustSnapshot {
        verified: TrustStore::new([root.cert.clone()]).expect("trust"),
        verified_names: vec!["company-x".into()],
        ..TrustSnapshot::default()
    };
    World {
        root,
        technician,
        trust,
        settings: HubSettings::default(),
        policies: Policy::defaults(),
        hosts: vec![HOST.to_string()],
    }
}

impl World {
    fn ctx(&self) -> Context<'_> {
        Context {
            trust: &self.trust,
            settings: &self.settings,
            policies: &self.policies,
            hostnames: &self.hosts,
            now: now(),
        }
    }

    fn check(
        &self,
        client_id: &str,
        password: Option<&str>,
        chain: &[CertificateDer<'_>],
        registered: Option<&Registered>,
    ) -> Result<certhub_core::AuthenticatedDevice, &'static str> {
        let username = format!("{HOST}/{client_id}/?api-version=2021-04-12");
        authenticate(
            ConnectFields {
                client_id,
                username: Some(&username),
                password: password.map(str::as_bytes),
            },
            chain,
            registered,
            &self.ctx(),
        )
        .map_err(|r| {
            assert!(!r.detail.is_empty());
            r.reason
        })
    }
}

fn ca_device(id: &str) -> Registered {
    Registered::of(device(
        id,
        serde_json::json!({"authentication": {"type": "certificateAuthority"}}),
    ))
}

#[test]
fn ca_devices() {
    let w = world();
    let widget = w.technician.device("widget-1");
    let reg = ca_device("widget-1");
    let ok = w
        .check("widget-1", None, &widget.chain, Some(&reg))
        .expect("admitted");
    assert_eq!(ok.method(), AuthType::CertificateAuthority);
    assert_eq!(ok.ca(), "company-x");
    // The same certificate for another id, another company's chain, a leaf alone.
    assert_eq!(
        w.check(
            "widget-2",
            None,
            &widget.chain,
            Some(&ca_device("widget-2"))
        ),
        Err("cn-mismatch")
    );
    let other = Ca::root("Other")
        .intermediate("Other CA")
        .device("widget-1");
    assert_eq!(
        w.check("widget-1", None, &other.chain, Some(&reg)),
        Err("unknown-ca")
    );
    assert_eq!(
        w.check("widget-1", None, &widget.chain[..1], Some(&reg)),
        Err("missing-intermediate")
    );
    // A forged root with the real one's name.
    let forged = Ca::root("Company-X Root CA")
        .intermediate("Technician-Z CA")
        .device("widget-1");
    assert!(
        w.check("widget-1", None, &forged.chain, Some(&reg))
            .is_err()
    );
    // Expired and not yet valid leaves.
    let old = w
        .technician
        .leaf_with("widget-1", |p| validity(p, NOT_BEFORE, NOW - 1));
    assert_eq!(
        w.check("widget-1", None, &old.chain, Some(&reg)),
        Err("certificate-expired")
    );
    let early = w
        .technician
        .leaf_with("widget-1", |p| validity(p, NOW + 10, NOT_AFTER));
    assert_eq!(
        w.check("widget-1", None, &early.chain, Some(&reg)),
        Err("not-yet-valid")
    );
    // No certificate at all.
    assert_eq!(
        w.check("widget-1", None, &[], Some(&reg)),
        Err("auth-method-mismatch")
    );
}

#[test]
fn chain_refusals_keep_the_policy_names() {
    let w = world();
    let reg = ca_device("widget-1");
    // A CA:FALSE certificate in the issuer's place.
    let not_ca = w
        .root
        .intermediate_with("Not A CA", |p| p.is_ca = rcgen::IsCa::ExplicitNoCa)
        .device("widget-1");
    assert_eq!(
        w.check("widget-1", None, &not_ca.chain, Some(&reg)),
        Err("issuer-not-ca")
    );
    // Leaf + Technician-Z without Factory-Y, in a PKI whose names carry the organization (as
    // `certhub pki demo` writes them): the missing Factory-Y is named, not an unknown CA.
    let org = |p: &mut rcgen::CertificateParams| {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Company-X");
    };
    let root = Ca::root_with("Company-X Root CA", org);
    let technician = root
        .intermediate_with("Factory-Y CA", org)
        .intermediate_with("Technician-Z CA", org);
    let mut trusted = world();
    trusted.trust = TrustSnapshot {
        verified: TrustStore::new([root.cert.clone()]).expect("trust"),
        verified_names: vec!["company-x".into()],
        ..TrustSnapshot::default()
    };
    let widget = technician.device("widget-1");
    let gap = [widget.cert.clone(), technician.cert.clone()];
    assert_eq!(
        trusted.check("widget-1", None, &gap, Some(&reg)),
        Err("missing-intermediate")
    );
    // Another organization's chain, intermediates sent, root not: an unknown CA.
    let other = Ca::root_with("Other Root CA", |p| {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Other-Corp");
    })
    .intermediate_with("Other CA", |p| {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Other-Corp");
    })
    .device("widget-1");
    assert_eq!(
        trusted.check("widget-1", None, &other.chain, Some(&reg)),
        Err("unknown-ca")
    );
    // A chain that ends at an unknown name, with no organization to go by: an unknown CA.
    let cn_only = w.technician.device("widget-1");
    assert_eq!(
        w.check(
            "widget-1",
            None,
            &[cn_only.cert.clone(), w.technician.cert.clone()],
            Some(&reg)
        ),
        Err("unknown-ca")
    );
}

#[test]
fn a_registered_but_unverified_ca_is_named() {
    let mut w = world();
    let pending = Ca::root("Pending Root");
    w.trust.unverified = TrustStore::new([pending.cert.clone()]).expect("trust");
    w.trust.unverified_names = vec!["pending".into()];
    let d = pending.device("widget-9");
    assert_eq!(
        w.check("widget-9", None, &d.chain, Some(&ca_device("widget-9"))),
        Err("ca-not-verified")
    );
}

#[test]
fn registry_state_decides_first() {
    let w = world();
    let widget = w.technician.device("widget-1");
    assert_eq!(
        w.check("widget-1", None, &widget.chain, None),
        Err("device-not-found")
    );
    let disabled = Registered::of(device(
        "widget-1",
        serde_json::json!({"status": "disabled", "authentication": {"type": "certificateAuthority"}}),
    ));
    assert_eq!(
        w.check("widget-1", None, &widget.chain, Some(&disabled)),
        Err("device-disabled")
    );
    // A module of a disabled device is refused too; of an enabled one, admitted.
    let module = serde_json::from_value::<ModuleInput>(
        serde_json::json!({"authentication": {"type": "certificateAuthority"}}),
    )
    .expect("input")
    .into_module(
        &DeviceId::new("widget-1").expect("id"),
        &ModuleId::new("sensor").expect("mid"),
        None,
        0,
    )
    .expect("module");
    let leaf = w.technician.device("widget-1/sensor");
    let parent = disabled.device;
    let reg = Registered {
        device: parent.clone(),
        module: Some(module.clone()),
    };
    assert_eq!(
        w.check("widget-1/sensor", None, &leaf.chain, Some(&reg)),
        Err("device-disabled")
    );
    let mut enabled = parent;
    enabled.status = certhub_core::Status::Enabled;
    let reg = Registered {
        device: enabled,
        module: Some(module),
    };
    w.check("widget-1/sensor", None, &leaf.chain, Some(&reg))
        .expect("module admitted");
}

#[test]
fn thumbprint_devices() {
    let w = world();
    let cert = self_signed_device("widget-t");
    let tp = Thumbprints::of(&cert.cert);
    for (primary, secondary) in [
        (tp.sha1.clone(), None),
        ("0".repeat(64), Some(tp.sha256.clone())),
    ] {
        let reg = Registered::of(device(
            "widget-t",
            serde_json::json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {
                "primaryThumbprint": primary, "secondaryThumbprint": secondary}}}),
        ));
        let ok = w
            .check("widget-t", None, &cert.chain, Some(&reg))
            .expect("admitted");
        assert_eq!(ok.method(), AuthType::SelfSigned);
    }
    let reg = Registered::of(device(
        "widget-t",
        serde_json::json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "1".repeat(40)}}}),
    ));
    assert_eq!(
        w.check("widget-t", None, &cert.chain, Some(&reg)),
        Err("thumbprint-mismatch")
    );
    // A CA-signed certificate registered by thumbprint: no chain check, just the thumbprint.
    let signed = w.technician.device("anything");
    let reg = Registered::of(device(
        "widget-t",
        serde_json::json!({"authentication": {"type": "selfSigned", "x509Thumbprint": {
            "primaryThumbprint": Thumbprints::of(&signed.cert).sha256}}}),
    ));
    w.check("widget-t", None, &signed.chain, Some(&reg))
        .expect("thumbprint decides");
    // Bytes that are no certificate.
    let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
    assert_eq!(
        w.check("widget-t", None, &garbage, Some(&reg)),
        Err("malformed-certificate")
    );
}

#[test]
fn sas_devices_and_switches() {
    let mut w = world();
    let d = device("widget-s", serde_json::json!({}));
    let key = d
        .authentication
        .symmetric_key
        .primary_key
        .clone()
        .expect("key");
    let reg = Registered::of(d);
    let token = |resource: &str, key: &str, expiry: i64| sign_token(resource, key, None, expiry);
    let good = token(&format!("{HOST}/devices/widget-s"), &key, NOW + 60);
    let ok = w
        .check("widget-s", Some(&good), &[], Some(&reg))
        .expect("admitted");
    assert_eq!(ok.method(), AuthType::Sas);
    let with_port = token(&format!("{HOST}:8883/devices/widget-s"), &key, NOW + 60);
    w.check("widget-s", Some(&with_port), &[], Some(&reg))
        .expect("a port in sr is fine");
    assert_eq!(
        w.check(
            "widget-s",
            Some(&token(&format!("{HOST}/devices/widget-s"), &key, NOW - 1)),
            &[],
            Some(&reg)
        ),
        Err("sas-expired")
    );
    assert_eq!(
        w.check(
            "widget-s",
            Some(&token(&format!("{HOST}/devices/other"), &key, NOW + 60)),
            &[],
            Some(&reg)
        ),
        Err("sas-invalid")
    );
    let other_key = certhub_core::generate_key();
    assert_eq!(
        w.check(
            "widget-s",
            Some(&token(
                &format!("{HOST}/devices/widget-s"),
                &other_key,
                NOW + 60
            )),
            &[],
            Some(&reg)
        ),
        Err("sas-invalid")
    );
    assert_eq!(
        w.check("widget-s", Some("not a token"), &[], Some(&reg)),
        Err("sas-invalid")
    );
    assert_eq!(
        w.check("widget-s", None, &[], Some(&reg)),
        Err("auth-method-mismatch")
    );
    // A policy with DeviceConnect may sign for any device, unless local auth is off.
    let device_policy = w
        .policies
        .iter()
        .find(|p| p.name == "device")
        .expect("policy")
        .clone();
    let policy_token = sign_token(
        &format!("{HOST}/devices"),
        &device_policy.primary_key,
        Some("device"),
        NOW + 60,
    );
    w.check("widget-s", Some(&policy_token), &[], Some(&reg))
        .expect("policy token");
    let service = w
        .policies
        .iter()
        .find(|p| p.name == "service")
        .expect("policy")
        .clone();
    let weak = sign_token(
        &format!("{HOST}/devices"),
        &service.primary_key,
        Some("service"),
        NOW + 60,
    );
    assert_eq!(
        w.check("widget-s", Some(&weak), &[], Some(&reg)),
        Err("sas-invalid")
    );
    w.settings.disable_local_auth = true;
    assert_eq!(
        w.check("widget-s", Some(&policy_token), &[], Some(&reg)),
        Err("sas-disabled")
    );
    w.settings.disable_local_auth = false;
    w.settings.disable_device_sas = true;
    assert_eq!(
        w.check("widget-s", Some(&good), &[], Some(&reg)),
        Err("sas-disabled")
    );
}

#[test]
fn the_username_must_agree() {
    let w = world();
    let widget = w.technician.device("widget-1");
    let reg = ca_device("widget-1");
    for username in [
        None,
        Some("other.example.com/widget-1/?api-version=2021-04-12".to_string()),
        Some(format!("{HOST}/widget-2/?api-version=2021-04-12")),
    ] {
        let r = authenticate(
            ConnectFields {
                client_id: "widget-1",
                username: username.as_deref(),
                password: None,
            },
            &widget.chain,
            Some(&reg),
            &w.ctx(),
        );
        assert_eq!(
            r.map_err(|r| r.reason),
            Err("username-mismatch"),
            "{username:?}"
        );
    }
    let _ = &w.root;
}
