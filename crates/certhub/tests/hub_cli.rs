//! The "done means", with the certhub CLI against a real `certhub serve`: register
//! Company-X's root, prove possession with `certhub pki verification-cert`, create devices of
//! each kind, disable device SAS, and read it all back in the audit trail. Plus the serve
//! configuration contract (exit 64 before binding) and the CLI's refusals.

mod common;

use common::{assert_error, certhub, certhub_at, s, start_hub, tmp};

#[test]
fn register_a_ca_prove_possession_create_devices_and_audit() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let _hub = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);

    certhub(
        d,
        &[
            "pki",
            "root",
            "--subject",
            "CN=Company-X Root CA, O=Company-X",
            "--out",
            "company-x",
        ],
    )
    .ok();
    let up = hub(&[
        "ca",
        "upload",
        "--name",
        "company-x",
        "--file",
        "company-x/cert.pem",
    ])
    .ok();
    let v: serde_json::Value = serde_json::from_str(&up.stdout).expect("json");
    assert_eq!(v["properties"]["isVerified"], false, "{up}");

    // A private key is refused before anything is sent.
    let run = hub(&["ca", "upload", "--name", "k", "--file", "company-x/key.pem"]).code(2);
    assert!(
        run.stderr.contains("private key never leaves its owner"),
        "{run}"
    );

    // Proof of possession: code, certificate made where the key lives, verify.
    let code = hub(&["ca", "verification-code", "--name", "company-x"]).ok();
    let code = code.stdout.trim().to_string();
    assert_eq!(code.len(), 48, "{code}");
    // A certificate for a wrong code is refused with the reason.
    certhub(
        d,
        &[
            "pki",
            "verification-cert",
            "--issuer",
            "company-x",
            "--code",
            "WRONG",
            "--out",
            "wrong.pem",
        ],
    )
    .ok();
    let run = hub(&["ca", "verify", "--name", "company-x", "--file", "wrong.pem"]).code(2);
    assert!(run.stderr.contains("400 ProofOfPossessionFailed"), "{run}");
    certhub(
        d,
        &[
            "pki",
            "verification-cert",
            "--issuer",
            "company-x",
            "--code",
            &code,
            "--out",
            "pop.pem",
        ],
    )
    .ok();
    let run = hub(&["ca", "verify", "--name", "company-x", "--file", "pop.pem"]).ok();
    assert!(run.stdout.contains("\"isVerified\": true"), "{run}");
    let run = hub(&["ca", "list"]).ok();
    assert!(run.stdout.contains("\"company-x\""), "{run}");

    // Devices of each kind.
    hub(&[
        "device",
        "create",
        "--id",
        "smart-x-widget-0001",
        "--auth-method",
        "x509-ca",
    ])
    .ok();
    let tp = certhub(d, &["pki", "thumbprint", "company-x/cert.pem"]).ok();
    let sha1 = tp
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("sha1")
        .to_string();
    let run = hub(&[
        "device",
        "create",
        "--id",
        "widget-thumb",
        "--auth-method",
        "x509-thumbprint",
        "--primary-thumbprint",
        &sha1,
    ])
    .ok();
    assert!(run.stdout.contains(&sha1), "{run}");
    let run = hub(&["device", "create", "--id", "widget-sas"]).ok();
    assert!(run.stdout.contains("\"primaryKey\""), "{run}");
    hub(&[
        "device",
        "create",
        "--id",
        "smart-x-widget-0001",
        "--module",
        "telemetry",
        "--auth-method",
        "x509-ca",
    ])
    .ok();
    let run = hub(&["device", "create", "--id", "widget-sas"]).code(2);
    assert!(run.stderr.contains("409 DeviceAlreadyExists"), "{run}");
    let run = hub(&["device", "create", "--id", "bad/id"]).code(2);
    assert!(run.stderr.contains("400"), "{run}");

    // Disable device SAS; disable a device.
    let run = hub(&["hub", "set", "--disable-device-sas", "true"]).ok();
    assert!(run.stdout.contains("\"disableDeviceSAS\": true"), "{run}");
    let run = hub(&[
        "device",
        "update",
        "--id",
        "widget-sas",
        "--status",
        "disabled",
    ])
    .ok();
    assert!(run.stdout.contains("\"status\": \"disabled\""), "{run}");
    let run = hub(&["device", "list"]).ok();
    let list: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(3));

    // The audit trail, newest first.
    let run = hub(&["audit", "list", "--json"]).ok();
    let log: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let ops: Vec<String> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["operation"].as_str().unwrap_or(""),
                r["target"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or("")
            )
        })
        .collect();
    let expected_in_order = [
        "device.update devices/widget-sas ok",
        "settings.update settings ok",
        "device.put devices/widget-sas DeviceAlreadyExists",
        "module.create devices/smart-x-widget-0001/modules/telemetry ok",
        "device.create devices/widget-sas ok",
        "device.create devices/widget-thumb ok",
        "device.create devices/smart-x-widget-0001 ok",
        "ca.verify certificates/company-x ok",
        "ca.verify certificates/company-x ProofOfPossessionFailed",
        "ca.verification-code certificates/company-x ok",
        "ca.upload certificates/company-x ok",
    ];
    assert_eq!(ops, expected_in_order, "{run}");
    assert!(
        log.as_array()
            .expect("array")
            .iter()
            .all(|r| r["actor"] == "iothubowner")
    );
    let human = hub(&["audit", "list"]).ok();
    assert!(
        human.stdout.lines().count() == expected_in_order.len(),
        "{human}"
    );

    // disableLocalAuth shuts the API to every policy token, the CLI's included...
    hub(&["hub", "set", "--disable-local-auth", "true"]).ok();
    let run = hub(&["device", "list"]).code(2);
    assert!(run.stderr.contains("disableLocalAuth"), "{run}");
    // ...and the operator on the hub's machine opens it again, without a restart.
    let run = hub(&["hub", "set", "--local", "--disable-local-auth", "false"]).ok();
    assert!(run.stdout.contains("\"disableLocalAuth\": false"), "{run}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    hub(&["device", "list"]).ok();
    let run = hub(&["audit", "list", "--top", "1", "--json"]).ok();
    let last: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(last[0]["actor"], "local", "{run}");
}

#[test]
fn invalid_configuration_exits_64_before_binding() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    for args in [
        vec!["serve", "--https-addr", "nowhere", "--data-dir", s(&data)],
        vec!["serve", "--mqtt-addr", "1.2.3.4", "--data-dir", s(&data)],
        vec!["serve", "--hostname", "bad host", "--data-dir", s(&data)],
        vec![
            "serve",
            "--verification-code-ttl",
            "0",
            "--data-dir",
            s(&data),
        ],
        vec!["serve", "--audit-max-records", "0", "--data-dir", s(&data)],
        vec!["serve", "--log-format", "xml", "--data-dir", s(&data)],
    ] {
        let run = certhub(d, &args).code(64);
        assert!(
            run.stderr.starts_with("error: invalid configuration: "),
            "{run}"
        );
    }
    std::fs::write(d.join("certhub.toml"), "https_adr = \"0.0.0.0:8443\"\n").expect("write");
    let run = certhub(d, &["serve", "--config", "certhub.toml"]).code(64);
    assert!(run.stderr.contains("unknown field `https_adr`"), "{run}");
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn clients_without_a_hub_say_how_to_find_one() {
    let t = tmp();
    let d = t.path();
    let run = certhub(d, &["device", "list", "--data-dir", "nowhere"]).code(2);
    assert!(run.stderr.contains("certhub serve"), "{run}");
    let run = certhub(d, &["device", "list", "--connection-string", "HostName=x"]).code(2);
    assert!(run.stderr.contains("SharedAccessKey"), "{run}");
}

#[test]
fn a_port_that_cannot_be_bound_is_explained() {
    let t = tmp();
    let d = t.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let run = certhub(
        d,
        &[
            "serve",
            "--https-addr",
            &addr,
            // Never the default 0.0.0.0:8883, where a user's own hub listens.
            "--mqtt-addr",
            "127.0.0.1:0",
            "--data-dir",
            s(&d.join("data")),
        ],
    )
    .code(2);
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "{run}"
    );
    assert!(run.stderr.contains("--https-addr"), "{run}");
    assert!(!run.stderr.contains("--mqtt-addr"), "{run}");

    // The device listener's address names its own flag, variable and configuration key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let run = certhub(
        d,
        &[
            "serve",
            "--https-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            &addr,
            "--data-dir",
            s(&d.join("data")),
        ],
    );
    assert_error(
        &run,
        &[
            &format!("cannot listen on {addr} for devices (MQTT)"),
            "in use",
            "choose another with --mqtt-addr (or CERTHUB_MQTT_ADDR, or mqtt_addr in the configuration file)",
        ],
    );
    assert!(!run.stderr.contains("https"), "{run}");

    // So does the AMQP listener's.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let run = certhub(
        d,
        &[
            "serve",
            "--https-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--amqp-addr",
            &addr,
            "--data-dir",
            s(&d.join("data")),
        ],
    );
    assert_error(
        &run,
        &[
            &format!("cannot listen on {addr} for devices and services (AMQP)"),
            "in use",
            "choose another with --amqp-addr (or CERTHUB_AMQP_ADDR, or amqp_addr in the configuration file)",
        ],
    );
}

#[test]
fn a_second_hub_on_the_same_data_directory_is_refused() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let mut first = start_hub(&data);
    let run = certhub(
        d,
        &[
            "serve",
            "--https-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--data-dir",
            s(&data),
        ],
    )
    .code(2);
    assert!(
        run.stderr
            .contains("another `certhub serve` is running on this data directory"),
        "{run}"
    );
    // The lock goes with the process, however it ends.
    first.kill();
    let _second = start_hub(&data);
}

/// `device create` of a registered identity says how to change it with the CLI, not with the
/// API's If-Match.
#[test]
fn creating_a_registered_device_points_to_device_update() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let _hub = start_hub(&data);
    let hub = |args: &[&str]| certhub_at(d, &data, args);
    for id in ["widget", "sensor#2"] {
        hub(&["device", "create", "--id", id]).ok();
        hub(&["device", "create", "--id", id, "--module", "m#1"]).ok();
    }
    let again = hub(&["device", "create", "--id", "widget"]);
    assert_error(
        &again,
        &[
            "device widget is already registered",
            "change it with `certhub device update --id widget`",
            "`certhub device delete --id widget`",
        ],
    );
    assert!(!again.stderr.contains("If-Match"), "{again}");
    // The commands are given as the shell needs them.
    let again = hub(&[
        "device",
        "create",
        "--id",
        "sensor#2",
        "--auth-method",
        "x509-ca",
    ]);
    assert_error(&again, &["`certhub device update --id 'sensor#2'`"]);
    let again = hub(&["device", "create", "--id", "widget", "--module", "m#1"]);
    assert_error(
        &again,
        &[
            "module m#1 of device widget is already registered",
            "`certhub device show --id widget --module 'm#1'`",
            "`certhub device delete --id widget --module 'm#1'`",
        ],
    );
    assert!(!again.stderr.contains("If-Match"), "{again}");
    // Nothing changed.
    let shown = hub(&["device", "show", "--id", "sensor#2"]).ok();
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).expect("json");
    assert_eq!(shown["authentication"]["type"], "sas", "{shown}");
}

/// A hub that does not answer is named as such, with its address and how to start one.
#[test]
fn a_hub_that_is_not_running_is_named() {
    let t = tmp();
    let d = t.path();
    let data = d.join("data");
    let mut hub = start_hub(&data);
    let cs = certhub_at(d, &data, &["hub", "connection-string"]).ok();
    let cs = cs.stdout.trim().to_string();
    let ca = s(&data.join("tls/server-ca.pem")).to_string();
    certhub_at(d, &data, &["device", "list"]).ok();
    hub.kill();
    let expected = format!(
        "could not reach the hub at https://{}: connection refused",
        hub.host
    );
    for args in [
        vec!["device", "list", "--data-dir", s(&data)],
        vec![
            "twin",
            "show",
            "--device",
            "w",
            "--connection-string",
            &cs,
            "--ca-file",
            &ca,
        ],
        // Queries take a path of their own through the client.
        vec![
            "twin",
            "query",
            "SELECT * FROM devices",
            "--connection-string",
            &cs,
            "--ca-file",
            &ca,
        ],
    ] {
        let run = certhub(d, &args);
        assert_error(&run, &[&expected, "is the hub running (`certhub serve`)"]);
    }
}

/// The hub's log lines on standard error (a pipe here, not a terminal): `--log-format json`
/// writes one JSON object a line, with its level and message; the default text has no colour
/// codes when standard error is not a terminal.
#[test]
fn log_lines_are_json_on_request_and_plain_off_a_terminal() {
    use std::io::BufRead;
    let t = tmp();
    let d = t.path();
    for format in ["json", "text"] {
        let data = d.join(format);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&data), "--log-format", format])
            .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .args(["--amqp-addr", "127.0.0.1:0"])
            .env("CERTHUB_LOG", "info")
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("certhub serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The start ends with the info line `certhub is running`.
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
            let last = line.contains("certhub is running");
            lines.push(line);
            if last {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            lines
                .last()
                .is_some_and(|l| l.contains("certhub is running")),
            "{format}: the hub wrote no start line: {lines:?}"
        );
        for line in &lines {
            assert!(
                !line.contains('\u{1b}'),
                "{format}: a colour code off a terminal: {line:?}"
            );
            if format == "json" {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(
                    v["level"].is_string()
                        && v["message"].is_string()
                        && v["timestamp"].is_string(),
                    "{line}"
                );
            } else {
                assert!(line.contains(" INFO ") || line.contains(" WARN "), "{line}");
            }
        }
    }
}
