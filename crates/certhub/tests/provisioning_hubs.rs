//! Two certhub hubs on loopback behind one provisioning endpoint: hub A provisions, hub B is
//! linked to it (`certhub dps hub add`). 100 widgets of the four-level chain that were never
//! registered by hand provision with the Python SDK's ProvisioningDeviceClient through A; the
//! allocation policy (hashed, evenly weighted) spreads them over both hubs, each is created on
//! its hub with the group's initial twin and connects there and sends a message. Hub B does
//! not hold the group's CA in the hashed run (its widgets authenticate there by thumbprint)
//! and does in the evenly weighted run (by their CA there too).
//!
//! Reprovisioning: one widget registers again and again with the SDK while its group's
//! allocation and reprovisioning policy change between registrations: moved to hub B with its
//! twin migrated, moved back with its twin reset to the initial one, kept where it is.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{HubProcess, certhub_at, enroll_company_x, python_to_hub, s, start_hub_on, tmp};

const WIDGETS: usize = 100;

#[test]
fn hashed_allocation_spreads_widgets_over_two_hubs() {
    spreads("127.0.0.45", "127.0.0.46", "hashed", false);
}

#[test]
fn evenly_weighted_allocation_spreads_widgets_over_two_hubs() {
    spreads("127.0.0.51", "127.0.0.52", "evenlyWeighted", true);
}

fn spreads(host_a: &'static str, host_b: &'static str, policy: &str, b_trusts_the_ca: bool) {
    let t = tmp();
    let d = t.path();
    let hubs = TwoHubs::start(d, host_a, host_b, WIDGETS, b_trusts_the_ca);
    let (data_a, data_b) = (&hubs.data_a, &hubs.data_b);
    let a = |args: &[&str]| certhub_at(d, data_a, args).ok();
    a(&[
        "dps",
        "enrollment-group",
        "create",
        "--id",
        "widgets",
        "--ca",
        "company-x",
        "--allocation",
        policy,
        "--tags",
        r#"{"line": 3}"#,
        "--desired",
        r#"{"rate": 5}"#,
    ]);
    let out = hubs
        .python(d, "provisioning_hubs.py")
        .env("CERTHUB_WIDGETS", WIDGETS.to_string())
        .env("CERTHUB_PARALLEL", "10")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stdout.contains(&format!(
                "provisioning_hubs: {WIDGETS} widgets provisioned and connected"
            )),
        "provisioning_hubs.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // Where each widget went, as the script saw it.
    let placed: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("widget "))
        .filter_map(|l| l.split_once(' '))
        .map(|(w, h)| (w.to_string(), h.to_string()))
        .collect();
    assert_eq!(placed.len(), WIDGETS, "{stdout}");
    let on = |host: &str| placed.values().filter(|h| *h == host).count();
    let (on_a, on_b) = (on(host_a), on(host_b));
    assert_eq!(on_a + on_b, WIDGETS, "{placed:?}");
    // Equal weights: hashed puts each half about evenly (a binomial spread; 30..70 holds with
    // a probability beyond 1 - 1e-4), evenly weighted within a few (registrations race).
    let band = if policy == "hashed" { 30..=70 } else { 40..=60 };
    assert!(
        band.contains(&on_a),
        "{policy}: {on_a} widgets on A, {on_b} on B"
    );

    // Each hub holds exactly its widgets, with the group's initial twin, and their telemetry.
    for (host, data) in [(host_a, data_a), (host_b, data_b)] {
        let listed = certhub_at(d, data, &["device", "list"]).ok().stdout;
        for (widget, hub) in &placed {
            assert_eq!(
                listed.contains(widget.as_str()),
                hub == host,
                "{widget} (assigned {hub}) on {host}: {listed}"
            );
        }
        let sample = placed
            .iter()
            .find(|(_, h)| *h == host)
            .map(|(w, _)| w.clone())
            .expect("a widget on each hub");
        let twin = certhub_at(d, data, &["twin", "show", "--device", &sample])
            .ok()
            .stdout;
        assert!(
            twin.contains("\"line\": 3") && twin.contains("\"rate\": 5"),
            "{twin}"
        );
        let messages = certhub_at(
            d,
            data,
            &[
                "messages",
                "tail",
                "--device",
                &sample,
                "--count",
                "1",
                "--idle-exit",
                "2",
            ],
        )
        .ok()
        .stdout;
        assert!(
            messages.contains(&format!("hello from {sample}")),
            "{messages}"
        );
        let identity = certhub_at(d, data, &["device", "show", "--id", &sample])
            .ok()
            .stdout;
        let expected = if host == host_a || b_trusts_the_ca {
            "certificateAuthority"
        } else {
            "selfSigned"
        };
        assert!(identity.contains(expected), "{host}: {identity}");
    }
    // The provisioning service counts them the same way.
    let listed = a(&["dps", "hub", "list"]).stdout;
    assert!(
        listed.contains(&format!(
            "{host_a}\tweight 1\tthis hub\t{on_a} registrations"
        )) && listed.contains(&format!("{host_b}\tweight 1\tlinked\t{on_b} registrations")),
        "{listed}"
    );
}

/// A widget's registrations as the enrollment group's policy changes: the SDK reports the
/// hub, the device id and the substatus, and the twin on the assigned hub shows what moved.
#[test]
fn reprovisioning_migrates_resets_or_keeps_the_device() {
    let t = tmp();
    let d = t.path();
    let hubs = TwoHubs::start(d, "127.0.0.53", "127.0.0.54", 1, true);
    let (host_a, host_b) = (hubs.host_a, hubs.host_b);
    let (data_a, data_b) = (&hubs.data_a, &hubs.data_b);
    let a = |args: &[&str]| certhub_at(d, data_a, args).ok();
    let widget = "smart-x-widget-0001";
    // The group (created or replaced): static to `hub`, with these reprovisioning options.
    let group = |hub: &str, options: &[&str]| {
        let mut args = vec![
            "dps",
            "enrollment-group",
            "create",
            "--id",
            "widgets",
            "--ca",
            "company-x",
            "--allocation",
            "static",
            "--hub",
            hub,
            "--desired",
            r#"{"rate": 5}"#,
        ];
        args.extend_from_slice(options);
        a(&args);
    };
    // One registration and connection: (hub, substatus, desired rate on that hub).
    let register = |step: &str| {
        let out = hubs
            .python(d, "reprovision.py")
            .env("CERTHUB_WIDGET", widget)
            .output()
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let field = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_string)
        };
        let (Some(registered), Some(rate)) = (field("registered "), field("desired rate ")) else {
            panic!("{step}: reprovision.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        };
        let parts: Vec<&str> = registered.split(' ').collect();
        assert_eq!(
            (parts[0], parts.get(2).copied()),
            ("assigned", Some(widget)),
            "{step}: {stdout}"
        );
        (parts[1].to_string(), parts[3].to_string(), rate)
    };
    let twin_rate = |data: &Path| {
        certhub_at(d, data, &["twin", "show", "--device", widget])
            .ok()
            .stdout
    };

    // First boot: on A with the initial twin.
    group(host_a, &[]);
    let first = register("first registration");
    assert_eq!(
        first,
        (host_a.into(), "initialAssignment".into(), "5".into()),
        "first registration"
    );
    // The operator changes the twin on A; the group now sends widgets to B (migrating their
    // data, the default): the device is made on B with A's twin.
    a(&[
        "twin",
        "update",
        "--device",
        widget,
        "--desired",
        r#"{"rate": 7}"#,
    ]);
    group(host_b, &[]);
    let moved = register("moved to B");
    assert_eq!(
        moved,
        (host_b.into(), "deviceDataMigrated".into(), "7".into()),
        "moved to B with its data"
    );
    assert!(
        twin_rate(data_b).contains("\"rate\": 7"),
        "{}",
        twin_rate(data_b)
    );
    // Back to A, resetting the data: A's copy (rate 7) is replaced by the initial twin.
    group(host_a, &["--reset-device-data"]);
    let reset = register("moved back to A, reset");
    assert_eq!(
        reset,
        (host_a.into(), "deviceDataReset".into(), "5".into()),
        "moved back with the initial twin"
    );
    // The group points at B again but keeps devices on their hub: the widget stays on A, its
    // twin as it is.
    a(&[
        "twin",
        "update",
        "--device",
        widget,
        "--desired",
        r#"{"rate": 9}"#,
    ]);
    group(host_b, &["--keep-hub"]);
    let (hub, _, rate) = register("kept on A");
    assert_eq!((hub.as_str(), rate.as_str()), (host_a, "9"), "kept on A");
    // The registration record says where it is.
    let state = a(&["dps", "registration", "--registration-id", widget]).stdout;
    assert!(state.contains(host_a), "{state}");
}

/// Hub A (the provisioning endpoint, holding Company-X's verified CA and `widgets` widgets'
/// chains under `pki/`) and hub B linked to it, on their own loopback addresses.
struct TwoHubs {
    host_a: &'static str,
    host_b: &'static str,
    a: HubProcess,
    b: HubProcess,
    data_a: PathBuf,
    data_b: PathBuf,
    /// B's server CA.
    b_ca: PathBuf,
    scope: String,
}

impl TwoHubs {
    fn start(
        d: &Path,
        host_a: &'static str,
        host_b: &'static str,
        widgets: usize,
        b_trusts_the_ca: bool,
    ) -> Self {
        let data_a = d.join("a");
        let data_b = d.join("b");
        let a = start_hub_on(&data_a, host_a, &[]);
        let b = start_hub_on(&data_b, host_b, &[]);
        enroll_company_x(d, &data_a, widgets);
        if b_trusts_the_ca {
            certhub_at(
                d,
                &data_b,
                &[
                    "ca",
                    "upload",
                    "--name",
                    "company-x",
                    "--file",
                    "pki/company-x/cert.pem",
                    "--verified",
                ],
            )
            .ok();
        }
        let b_cs = certhub_at(d, &data_b, &["hub", "connection-string"])
            .ok()
            .stdout
            .trim()
            .to_string();
        let b_ca = data_b.join("tls/server-ca.pem");
        certhub_at(
            d,
            &data_a,
            &[
                "dps",
                "hub",
                "add",
                "--hub-connection-string",
                &b_cs,
                "--hub-ca-file",
                s(&b_ca),
            ],
        )
        .ok();
        let scope = certhub_at(d, &data_a, &["dps", "id-scope"])
            .ok()
            .stdout
            .trim()
            .to_string();
        Self {
            host_a,
            host_b,
            a,
            b,
            data_a,
            data_b,
            b_ca,
            scope,
        }
    }

    /// A script of tests/interop run with the Python SDK against both hubs: the SDK dials
    /// 8883 on whichever hub it was given, A's port for A's address, B's for B's.
    fn python(&self, d: &Path, script: &str) -> Command {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/interop")
            .join(script);
        let mut cmd = python_to_hub(&self.a);
        cmd.arg(script)
            .current_dir(d)
            .env(
                "CERTHUB_TEST_PORT_MAP",
                format!(
                    "8883={},{}:8883={}",
                    self.a.mqtt_port, self.host_b, self.b.mqtt_port
                ),
            )
            .env("CERTHUB_HOST", self.host_a)
            .env("CERTHUB_HOST_B", self.host_b)
            .env("CERTHUB_CA", self.data_a.join("tls/server-ca.pem"))
            .env("CERTHUB_CA_B", &self.b_ca)
            .env("CERTHUB_DIR", d.join("pki"))
            .env("CERTHUB_ID_SCOPE", &self.scope);
        cmd
    }
}
