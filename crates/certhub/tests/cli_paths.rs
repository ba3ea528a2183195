//! The CLI acts on exactly the resource it is given, whatever its name holds. Every command that
//! puts a name into a request (`device`, `ca`, `twin`, `c2d`, `method`, `messages tail`, `audit
//! connections`) runs against a real hub with names that mean something in a URL (`#`, `?`, `%`,
//! `/`, spaces, dots), beside decoys: the resources a truncated or mis-decoded path would reach.
//! Each command must act on the named resource, or refuse with an error that says why, and leave
//! every decoy as it was. Empty names are refused before anything is sent.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Run, assert_error, certhub, certhub_at, s, start_hub, tmp};
use serde_json::Value;

/// Valid device ids (Azure's character set) that a URL would misread if sent as they are.
const TRICKY: &[&str] = &[
    "sensor#2",   // '#' starts a fragment: `sensor` would be all the hub sees
    "probe?x=1",  // '?' starts the query: `probe`
    "x%41",       // `%41` is an escaped `A`: `xA`
    "sensor%232", // `%23` is an escaped `#`: `sensor#2`, another device of this test
    "100%",       // a bare `%` is not a valid URL
    "a+b",        // `+` is a space in a query
    "..",         // a dot segment: `/devices/..` is `/`
    ".",
];

/// What the tricky ids turn into when a path is built without encoding them.
const DECOYS: &[&str] = &["sensor", "probe", "xA"];

/// Names that are not valid device ids; the hub must refuse them, not act on something else.
/// `sensor/modules/m` would otherwise be module `m` of device `sensor`, which exists.
const REFUSED: &[&str] = &["sensor/modules/m", "a b", "a/b"];

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"))
}

/// The hub's view of a device: `device show --id ID`.
fn device(d: &Path, data: &Path, id: &str) -> Value {
    json(&certhub_at(d, data, &["device", "show", "--id", id]).ok())
}

/// Every registered device id, sorted.
fn registered(d: &Path, data: &Path) -> Vec<String> {
    let list = json(&certhub_at(d, data, &["device", "list"]).ok());
    let mut ids: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| d["deviceId"].as_str().expect("deviceId").to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn device_twin_c2d_and_method_commands_act_on_exactly_the_named_device() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let hub = start_hub(&data);
    let run = |args: &[&str]| certhub_at(d, &data, args);
    let ok = |args: &[&str]| json(&run(args).ok());

    for id in DECOYS.iter().chain(TRICKY) {
        let created = ok(&["device", "create", "--id", id]);
        assert_eq!(created["deviceId"], *id, "{created}");
    }
    // Module `m` of `sensor`: what `sensor/modules/m` would reach.
    ok(&["device", "create", "--id", "sensor", "--module", "m"]);
    let mut all: Vec<String> = DECOYS.iter().chain(TRICKY).map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(registered(d, &data), all);

    for id in TRICKY {
        assert_eq!(device(d, &data, id)["deviceId"], *id);
        // Modules, named with the same characters.
        let module = ok(&["device", "create", "--id", id, "--module", "m#1"]);
        assert_eq!(
            (&module["deviceId"], &module["moduleId"]),
            (&(*id).into(), &"m#1".into())
        );
        let shown = ok(&["device", "show", "--id", id, "--module", "m#1"]);
        assert_eq!(shown["deviceId"], *id, "{shown}");
        let modules = ok(&["device", "list", "--id", id]);
        assert_eq!(modules.as_array().map(Vec::len), Some(1), "{modules}");
        assert_eq!(modules[0]["moduleId"], "m#1", "{modules}");

        // Twins: each tricky device's twin gets its own id as a tag.
        let twin = ok(&[
            "twin",
            "update",
            "--device",
            id,
            "--tags",
            &serde_json::json!({ "name": id }).to_string(),
        ]);
        assert_eq!(twin["deviceId"], *id, "{twin}");
        let twin = ok(&[
            "twin",
            "update",
            "--device",
            id,
            "--module",
            "m#1",
            "--tags",
            &serde_json::json!({ "name": format!("{id} m#1") }).to_string(),
        ]);
        assert_eq!(
            (&twin["deviceId"], &twin["moduleId"]),
            (&(*id).into(), &"m#1".into())
        );

        // A cloud-to-device message is queued for this device only.
        ok(&["c2d", "send", "--device", id, "--body", id]);
        assert_eq!(device(d, &data, id)["cloudToDeviceMessageCount"], 1);

        // Direct methods reach the hub for this device (which is offline).
        for module in [None, Some("m#1")] {
            let mut args = vec!["method", "invoke", "--device", id, "--name", "reboot"];
            args.extend(module.map(|m| ["--module", m]).into_iter().flatten());
            let offline = run(&args);
            let who = match module {
                Some(m) => format!("{id}/{m} is not connected"),
                None => format!("{id} is not connected"),
            };
            assert_error(&offline, &["DeviceNotOnline", &who]);
        }
    }
    for decoy in DECOYS {
        let twin = ok(&["twin", "show", "--device", decoy]);
        assert_eq!(
            twin["tags"],
            serde_json::json!({}),
            "{decoy}'s twin was changed: {twin}"
        );
        let dev = device(d, &data, decoy);
        assert_eq!(dev["cloudToDeviceMessageCount"], 0, "{dev}");
        let modules = ok(&["device", "list", "--id", decoy]);
        let expected = usize::from(*decoy == "sensor");
        assert_eq!(
            modules.as_array().map(Vec::len),
            Some(expected),
            "{modules}"
        );
    }
    for id in TRICKY {
        let twin = ok(&["twin", "show", "--device", id]);
        assert_eq!(twin["tags"]["name"], *id, "{twin}");
        let twin = ok(&["twin", "show", "--device", id, "--module", "m#1"]);
        assert_eq!(twin["tags"]["name"], format!("{id} m#1"), "{twin}");
    }
    // Purging one queue leaves the decoys' queues alone.
    for decoy in DECOYS {
        ok(&["c2d", "send", "--device", decoy, "--body", decoy]);
    }
    for id in TRICKY {
        ok(&["c2d", "purge", "--device", id]);
        assert_eq!(device(d, &data, id)["cloudToDeviceMessageCount"], 0);
    }
    for decoy in DECOYS {
        assert_eq!(device(d, &data, decoy)["cloudToDeviceMessageCount"], 1);
    }

    // Telemetry and connection records of one device, not of its decoy. (Ids with `#` or `+`
    // cannot publish over MQTT: they are wildcards in topic names; the hub reads a `?` in the
    // MQTT username as the start of its query, so `probe?x=1` cannot connect.)
    let ca = data.join("tls/server-ca.pem");
    for id in ["x%41", "xA", "100%"] {
        let token = run(&["device", "token", "--id", id]).ok();
        let out = Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &hub.mqtt_port.to_string()])
            .args(["-V", "mqttv311", "--cafile", s(&ca), "-i", id])
            .args(["-u", &format!("localhost/{id}/?api-version=2021-04-12")])
            .args(["-P", token.stdout.trim()])
            .args(["-t", &format!("devices/{id}/messages/events/")])
            .args(["-q", "1", "-m", &format!("from {id}")])
            .output()
            .expect("mosquitto_pub (Debian package mosquitto-clients) runs");
        assert!(out.status.success(), "{id}: {out:?}");
    }
    for id in ["x%41", "100%"] {
        let tail = run(&["messages", "tail", "--device", id, "--idle-exit", "1"]).ok();
        let lines: Vec<&str> = tail.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{tail}");
        assert!(lines[0].contains(&format!(" {id} ")), "{tail}");
        assert!(lines[0].ends_with(&format!("from {id}")), "{tail}");
        let log = run(&["audit", "connections", "--device", id, "--json"]).ok();
        let log = json(&log);
        let targets: Vec<&str> = log
            .as_array()
            .expect("a list")
            .iter()
            .map(|r| r["target"].as_str().expect("target"))
            .collect();
        assert_eq!(targets, [format!("devices/{id}")], "{log}");
    }

    // Names that are not ids are refused by the hub, and nothing else is touched.
    let sensor_module = ok(&["device", "show", "--id", "sensor", "--module", "m"]);
    // What a change to a twin changes (an unwritten twin's `$lastUpdated` is the time read).
    let twin_state = || {
        let twin = ok(&["twin", "show", "--device", "sensor", "--module", "m"]);
        (
            twin["etag"].clone(),
            twin["tags"].clone(),
            twin["version"].clone(),
        )
    };
    let sensor_twin = twin_state();
    for bad in REFUSED {
        let tags = r#"{"name": "wrong"}"#;
        for args in [
            vec!["device", "create", "--id", bad],
            vec!["device", "show", "--id", bad],
            vec!["device", "update", "--id", bad, "--status", "disabled"],
            vec!["device", "delete", "--id", bad],
            vec!["device", "list", "--id", bad],
            vec!["device", "token", "--id", bad],
            vec!["twin", "show", "--device", bad],
            vec!["twin", "update", "--device", bad, "--tags", tags],
            vec!["c2d", "send", "--device", bad, "--body", "x"],
            vec!["c2d", "purge", "--device", bad],
            vec!["method", "invoke", "--device", bad, "--name", "reboot"],
        ] {
            let refused = run(&args);
            assert_error(&refused, &["the hub answered 400", &format!("{bad:?}")]);
            assert!(
                refused.stderr.contains("ids use ASCII letters"),
                "the refusal says why: {refused}"
            );
        }
    }
    assert_eq!(
        ok(&["device", "show", "--id", "sensor", "--module", "m"]),
        sensor_module
    );
    assert_eq!(twin_state(), sensor_twin);

    // Updates and deletes, last.
    for id in TRICKY {
        let updated = ok(&["device", "update", "--id", id, "--status", "disabled"]);
        assert_eq!(
            (&updated["deviceId"], &updated["status"]),
            (&(*id).into(), &"disabled".into())
        );
    }
    for decoy in DECOYS {
        assert_eq!(device(d, &data, decoy)["status"], "enabled", "{decoy}");
    }
    for id in TRICKY {
        run(&["device", "delete", "--id", id, "--module", "m#1"]).ok();
        assert_eq!(ok(&["device", "list", "--id", id]), serde_json::json!([]));
        let deleted = run(&["device", "delete", "--id", id]).ok();
        assert_eq!(deleted.stdout.trim(), format!("deleted device {id}"));
    }
    let mut decoys: Vec<String> = DECOYS.iter().map(|s| s.to_string()).collect();
    decoys.sort();
    assert_eq!(registered(d, &data), decoys);
    assert_eq!(
        ok(&["device", "show", "--id", "sensor", "--module", "m"]),
        sensor_module
    );
}

#[test]
fn ca_commands_act_on_exactly_the_named_ca() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let _hub = start_hub(&data);
    let run = |args: &[&str]| certhub_at(d, &data, args);
    let ok = |args: &[&str]| json(&run(args).ok());
    // `.` and `..` are valid CA names (A-Z a-z 0-9 - . _), and dot segments in a URL.
    for (name, folder) in [("x", "x"), (".", "dot"), ("..", "dotdot")] {
        let root = common::root(d, folder, &format!("CN=CA {folder}"), "ecdsa-p256");
        let up = ok(&[
            "ca",
            "upload",
            "--name",
            name,
            "--file",
            s(&root.join("cert.pem")),
        ]);
        assert_eq!(up["name"], name, "{up}");
        assert_eq!(ok(&["ca", "show", "--name", name])["name"], name);
    }
    let cert = s(&d.join("x/cert.pem")).to_string();
    let pop = d.join("x/cert.pem");
    let before = ok(&["ca", "show", "--name", "x"]);

    for bad in [
        "x#does-not-exist",
        "x?y=1",
        "x/..",
        "x y",
        "x%2F",
        "x/verify",
    ] {
        for args in [
            vec!["ca", "show", "--name", bad],
            vec!["ca", "delete", "--name", bad],
            vec!["ca", "verification-code", "--name", bad],
            vec!["ca", "verify", "--name", bad, "--file", s(&pop)],
            vec!["ca", "upload", "--name", bad, "--file", &cert],
        ] {
            let refused = run(&args);
            assert_error(
                &refused,
                &[
                    "the hub answered 400",
                    &format!("certificate name {bad:?}"),
                    "use 1 to 64 of A-Z a-z 0-9 - . _",
                ],
            );
        }
    }
    // CA x is untouched: same ETag (a verification code would have changed it), still there.
    assert_eq!(ok(&["ca", "show", "--name", "x"]), before);

    for name in [".", ".."] {
        let deleted = run(&["ca", "delete", "--name", name]).ok();
        assert_eq!(deleted.stdout.trim(), format!("deleted CA {name}"));
    }
    let list = ok(&["ca", "list"]);
    let names: Vec<&str> = list["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["x"], "{list}");
}

/// An empty name would address the collection (`/devices/`, `/certificates/`) or another
/// route; every command refuses it before connecting, saying which flag is empty.
#[test]
fn empty_names_are_refused_before_anything_is_sent() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let _hub = start_hub(&data);
    let run = |args: &[&str]| certhub_at(d, &data, args);
    run(&["device", "create", "--id", "widget"]).ok();
    run(&["device", "create", "--id", "widget", "--module", "m"]).ok();
    let root = common::root(d, "root", "CN=Root", "ecdsa-p256");
    let cert = root.join("cert.pem");
    run(&["ca", "upload", "--name", "x", "--file", s(&cert)]).ok();
    let audit_before = run(&["audit", "list", "--json"]).ok().stdout;

    let device_hint = "`certhub device list` shows the registered ones";
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["device", "create", "--id", ""], "--id", device_hint),
        (vec!["device", "show", "--id", ""], "--id", device_hint),
        (vec!["device", "list", "--id", ""], "--id", device_hint),
        (
            vec!["device", "update", "--id", "", "--status", "disabled"],
            "--id",
            device_hint,
        ),
        (vec!["device", "delete", "--id", ""], "--id", device_hint),
        (vec!["device", "token", "--id", ""], "--id", device_hint),
        (
            vec!["device", "delete", "--id", "widget", "--module", ""],
            "--module",
            "`certhub device list --id DEVICE` shows a device's modules",
        ),
        (
            vec!["twin", "show", "--device", ""],
            "--device",
            device_hint,
        ),
        (
            vec!["twin", "update", "--device", "", "--tags", "{}"],
            "--device",
            device_hint,
        ),
        (
            vec!["twin", "show", "--device", "widget", "--module", ""],
            "--module",
            "shows a device's modules",
        ),
        (vec!["c2d", "send", "--device", ""], "--device", device_hint),
        (
            vec!["c2d", "purge", "--device", ""],
            "--device",
            device_hint,
        ),
        (
            vec!["method", "invoke", "--device", "", "--name", "m"],
            "--device",
            device_hint,
        ),
        (
            vec!["messages", "tail", "--device", ""],
            "--device",
            device_hint,
        ),
        (
            vec!["audit", "connections", "--device", ""],
            "--device",
            device_hint,
        ),
        (
            vec!["ca", "show", "--name", ""],
            "--name",
            "`certhub ca list`",
        ),
        (
            vec!["ca", "delete", "--name", ""],
            "--name",
            "`certhub ca list`",
        ),
        (
            vec!["ca", "verification-code", "--name", ""],
            "--name",
            "`certhub ca list`",
        ),
        (
            vec!["ca", "verify", "--name", "", "--file", s(&cert)],
            "--name",
            "`certhub ca list`",
        ),
        (
            vec!["ca", "upload", "--name", "", "--file", s(&cert)],
            "--name",
            "`certhub ca list`",
        ),
    ];
    for (args, flag, hint) in cases {
        let refused = run(&args);
        assert_error(&refused, &[&format!("{flag} is empty"), hint]);
        // Refused locally: it says so without a hub to ask, too.
        let mut args = args.clone();
        args.extend(["--data-dir", "no-hub-here"]);
        assert_error(&certhub(d, &args), &[&format!("{flag} is empty")]);
    }
    // Nothing reached the hub: no audit record, nothing deleted.
    assert_eq!(run(&["audit", "list", "--json"]).ok().stdout, audit_before);
    run(&["device", "show", "--id", "widget", "--module", "m"]).ok();
    run(&["ca", "show", "--name", "x"]).ok();
}
