//! What the hub protects and how (issue 11): keys at rest, floods, tokens.

mod common;

#[cfg(unix)]
mod at_rest {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::common::{self, s};

    fn mode(p: &Path) -> u32 {
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
    }

    /// Every file the hub keeps: the database with its WAL files, the lock, the TLS identity.
    fn kept(data: &Path) -> Vec<std::path::PathBuf> {
        let mut files = vec![
            data.join("certhub.db"),
            data.join("certhub.db-wal"),
            data.join("certhub.db-shm"),
            data.join("hub.lock"),
            data.join("tls"),
        ];
        for e in fs::read_dir(data.join("tls")).expect("tls/") {
            files.push(e.expect("entry").path());
        }
        files
    }

    fn assert_owner_only(data: &Path) {
        assert_eq!(mode(data), 0o700, "{}", data.display());
        for f in kept(data) {
            let want = if f.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&f), want, "{}", f.display());
        }
    }

    #[test]
    fn the_data_directory_is_owner_only_whatever_the_umask() {
        let t = common::tmp();
        let data = t.path().join("data");
        // A umask that would leave every new file open to everyone.
        let child = Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&data)])
            .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .args(["--amqp-addr", "127.0.0.1:0"])
            .env("CERTHUB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certhub serve starts");
        let stderr = wait_for_banner_then_kill(child, || assert_owner_only(&data));
        assert!(
            !stderr.contains("now owner-only"),
            "nothing to tighten: {stderr}"
        );

        // An installation made before the rule (or loosened by hand) is tightened at start,
        // with a line naming each path.
        chmod(&data, 0o755);
        for f in kept(&data) {
            chmod(&f, if f.is_dir() { 0o755 } else { 0o644 });
        }
        let child = Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&data)])
            .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .args(["--amqp-addr", "127.0.0.1:0"])
            .env("CERTHUB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("certhub serve starts");
        let stderr = wait_for_banner_then_kill(child, || ());
        assert!(
            stderr.contains("certhub.db") && stderr.contains("now owner-only"),
            "{stderr}"
        );
        assert!(stderr.contains("mode 644"), "{stderr}");
        assert_owner_only(&data);

        // A directory other users can write is refused before anything in it is read or
        // changed.
        chmod(&data, 0o777);
        chmod(&data.join("certhub.db"), 0o644);
        let out = Command::new(env!("CARGO_BIN_EXE_certhub"))
            .args(["serve", "--data-dir", s(&data)])
            .args(["--https-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .args(["--amqp-addr", "127.0.0.1:0"])
            .output()
            .expect("certhub runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("other users can write") && stderr.contains("chmod 700"),
            "{stderr}"
        );
        assert_eq!(mode(&data), 0o777, "left as it was");
        assert_eq!(mode(&data.join("certhub.db")), 0o644, "left as it was");
    }

    /// Waits until the hub is up, runs `meanwhile`, then kills the hub and returns its stderr.
    fn wait_for_banner_then_kill(
        mut child: std::process::Child,
        meanwhile: impl FnOnce(),
    ) -> String {
        use std::io::{BufRead, BufReader, Read};
        let stdout = child.stdout.take().expect("stdout");
        for line in BufReader::new(stdout).lines() {
            if line.expect("line").contains("devices (MQTT)") {
                break;
            }
        }
        meanwhile();
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        stderr
    }
}

/// Unauthenticated connections that stall or trickle cost the hub a socket each, and nothing a
/// legitimate device waits for.
mod floods {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::common::{self, Pub, s};

    /// The first flight of a real TLS client (rustls): a ClientHello for `localhost`.
    pub fn client_hello() -> Vec<u8> {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello).expect("write");
        }
        hello
    }

    /// Connects to `to` from the loopback address `127.0.<net>.<host>`.
    pub async fn connect_from(net: u8, host: u8, to: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, net, host)),
                0,
            ))
            .expect("bind");
        socket.connect(to).await.expect("connect")
    }

    #[test]
    fn a_device_connects_at_once_beside_a_thousand_stalled_and_a_thousand_trickling_handshakes() {
        let t = common::tmp();
        let dir = t.path();
        let data = dir.join("data");
        let hub = common::start_hub(&data);
        common::enroll_widget(dir, &data);
        let to = SocketAddr::from(([127, 0, 0, 1], hub.mqtt_port));
        let hello = client_hello();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");

        // A thousand ClientHellos from a hundred addresses, then silence: the hub answers each
        // (its ServerHello) and waits for the rest of the handshake that never comes.
        let (stalled, answered) = runtime.block_on(async {
            let mut stalled = Vec::new();
            for i in 0..1000u32 {
                let mut c = connect_from(1, (i % 100 + 1) as u8, to).await;
                c.write_all(&hello).await.expect("hello");
                stalled.push(c);
            }
            let mut answered = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            for c in &mut stalled {
                let mut b = [0u8; 1];
                if let Ok(Ok(1)) = tokio::time::timeout_at(deadline, c.read(&mut b)).await {
                    answered += 1;
                }
            }
            (stalled, answered)
        });
        // A thousand more that trickle a ClientHello a byte at a time.
        let trickle = {
            let hello = hello.clone();
            runtime.spawn(async move {
                let mut trickling = Vec::new();
                for i in 0..1000u32 {
                    trickling.push(connect_from(2, (i % 100 + 1) as u8, to).await);
                }
                for byte in hello.iter().cycle() {
                    for c in &mut trickling {
                        let _ = c.write_all(&[*byte]).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(500));

        let ca = data.join("tls/server-ca.pem");
        let started = Instant::now();
        let out = common::mosquitto_pub(
            dir,
            &Pub {
                port: hub.mqtt_port,
                ca: s(&ca),
                widget: "pki/devices/smart-x-widget-0001",
                client_id: "smart-x-widget-0001",
                topic: "devices/smart-x-widget-0001/messages/events/",
                message: "through the flood",
                extra: &[],
            },
        );
        let took = started.elapsed();
        trickle.abort();
        drop(stalled);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            took < Duration::from_secs(1),
            "the device took {took:?} to connect and publish beside the flood ({answered} of 1000 stalled handshakes had their ServerHello)"
        );
    }
}

/// The HTTPS listener: slow headers, idle keep-alive connections and too many connections
/// from one address are closed; the API answers meanwhile.
mod https_floods {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::common::{self, s};
    use super::floods::{client_hello, connect_from};

    fn tls_client(data: &std::path::Path) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(data.join("tls/server-ca.pem")).expect("server CA");
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.expect("pem")).expect("root");
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    use rustls_pki_types::pem::PemObject;

    #[test]
    fn slow_headers_are_closed_and_the_api_answers_meanwhile() {
        let t = common::tmp();
        let dir = t.path();
        let data = dir.join("data");
        let hub = common::start_hub_plus(&data, &["--https-connections-per-source", "16"]);
        let port: u16 = hub
            .host
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let connector = tls_client(&data);
        let hello = client_hello();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");

        // 500 stalled ClientHellos, and 1 000 TLS connections (ten per address) that send a
        // request header line every two seconds and never finish it.
        let (mut slow, _stalled) = runtime.block_on(async {
            let mut stalled = Vec::new();
            for i in 0..500u32 {
                let mut c = connect_from(3, (i % 100 + 1) as u8, to).await;
                c.write_all(&hello).await.expect("hello");
                stalled.push(c);
            }
            let mut slow = Vec::new();
            for i in 0..1000u32 {
                let tcp = connect_from(4, (i % 100 + 1) as u8, to).await;
                let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
                let mut tls = connector.connect(name, tcp).await.expect("handshake");
                tls.write_all(b"GET /devices HTTP/1.1\r\nHost: localhost\r\n")
                    .await
                    .expect("first line");
                slow.push(tls);
            }
            (slow, stalled)
        });
        let opened = Instant::now();
        let trickle = runtime.spawn(async move {
            let mut closed = 0;
            for round in 0.. {
                tokio::time::sleep(Duration::from_secs(2)).await;
                closed = 0;
                for c in &mut slow {
                    let line = format!("X-Slow-{round}: 1\r\n");
                    if c.write_all(line.as_bytes()).await.is_err() || c.flush().await.is_err() {
                        closed += 1;
                    }
                }
                if closed == slow.len() || round >= 10 {
                    break;
                }
            }
            // What the hub did with them: a closed connection reads its end (or an error).
            let mut ended = 0;
            for c in &mut slow {
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => ended += 1,
                    Ok(Ok(_)) => {
                        // A 408 or 400 first, then the end.
                        if matches!(
                            tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await,
                            Ok(Ok(0)) | Ok(Err(_))
                        ) {
                            ended += 1;
                        }
                    }
                    Err(_) => {}
                }
            }
            (closed.max(ended), slow.len())
        });

        // The API answers at once meanwhile.
        let started = Instant::now();
        common::certhub_at(dir, &data, &["device", "list"]).ok();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "the API took {took:?} beside the flood"
        );

        // One address holds 16 connections at most; the 17th is closed at accept.
        runtime.block_on(async {
            let mut held = Vec::new();
            for _ in 0..16 {
                let tcp = connect_from(5, 1, to).await;
                let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
                held.push(connector.connect(name, tcp).await.expect("handshake"));
            }
            let mut extra = connect_from(5, 1, to).await;
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "the 17th connection from one address is closed: {read:?}"
            );
            let tcp = connect_from(5, 2, to).await;
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            connector
                .connect(name, tcp)
                .await
                .expect("another address is served");
        });

        let (closed, total) = runtime.block_on(trickle).expect("trickle");
        assert_eq!(
            closed,
            total,
            "every slow-header connection is closed within {:?} (header timeout 10 s)",
            opened.elapsed()
        );
    }

    /// curl over TLS 1.2 at most: the HTTP status, or None when the handshake failed.
    fn curl_tls12(data: &std::path::Path, host: &str) -> Option<String> {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--tls-max",
                "1.2",
            ])
            .args(["--cacert", s(&data.join("tls/server-ca.pem"))])
            .arg(format!("https://{host}/devices"))
            .output()
            .expect("curl runs");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn min_tls_version_applies_to_the_https_listener() {
        let t = common::tmp();
        let dir = t.path();
        let data = dir.join("data");
        let hub = common::start_hub(&data);
        assert_eq!(curl_tls12(&data, &hub.host).as_deref(), Some("401"));
        common::certhub_at(dir, &data, &["hub", "set", "--min-tls-version", "1.3"]).ok();
        assert_eq!(
            curl_tls12(&data, &hub.host),
            None,
            "a TLS 1.2 client of a 1.3-only hub fails its handshake"
        );
        // The CLI (TLS 1.3) still reaches the API, and can set it back.
        common::certhub_at(dir, &data, &["hub", "set", "--min-tls-version", "1.2"]).ok();
        assert_eq!(curl_tls12(&data, &hub.host).as_deref(), Some("401"));
    }
}

/// Refused CONNECTs are rate-limited per source address and per client id, repeats collapse
/// into one audit record with a count, and the drops are counted.
mod refusal_limits {
    use std::path::Path;
    use std::time::Duration;

    use super::common::{self, s};

    /// A paho CONNECT as `client_id` with `widget`'s certificate, from the loopback address
    /// `source`: the CONNACK code, or None when the hub closed the connection first.
    fn connect(
        dir: &Path,
        data: &Path,
        port: u16,
        client_id: &str,
        widget: &str,
        source: &str,
    ) -> Option<i64> {
        let script = format!(
            r#"
import sys, time
import paho.mqtt.client as mqtt
rc = []
c = mqtt.Client(client_id="{client_id}", protocol=mqtt.MQTTv311)
c.username_pw_set("localhost/{client_id}/?api-version=2021-04-12")
c.tls_set(ca_certs="{ca}", certfile="{widget}/chain.pem", keyfile="{widget}/key.pem")
c.on_connect = lambda client, userdata, flags, code: rc.append(code)
try:
    c.connect("localhost", {port}, bind_address="{source}")
except Exception:
    print("closed"); sys.exit(0)
c.loop_start()
for _ in range(60):
    if rc:
        break
    time.sleep(0.05)
c.loop_stop()
print(rc[0] if rc else "closed")
"#,
            ca = s(&data.join("tls/server-ca.pem")),
        );
        let out = std::process::Command::new(common::python())
            .args(["-c", &script])
            .current_dir(dir)
            .output()
            .expect("python");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.parse().ok()
    }

    #[test]
    fn refusals_are_limited_per_source_and_client_id_without_locking_the_device_out() {
        let t = common::tmp();
        let dir = t.path();
        let data = dir.join("data");
        let hub = common::start_hub_plus(
            &data,
            &[
                "--refusals-per-source",
                "3",
                "--refusals-per-client-id",
                "2",
                "--refusal-audit-window",
                "6",
            ],
        );
        common::enroll_company_x(dir, &data, 2);
        common::certhub_at(
            dir,
            &data,
            &[
                "device",
                "create",
                "--id",
                "smart-x-widget-0001",
                "--auth-method",
                "x509-ca",
            ],
        )
        .ok();
        let port = hub.mqtt_port;
        let real = "pki/devices/smart-x-widget-0001";
        let other = "pki/devices/smart-x-widget-0002";
        let id = "smart-x-widget-0001";

        // Someone presents another widget's certificate under this device's client id.
        assert_eq!(connect(dir, &data, port, id, other, "127.0.0.2"), Some(5));
        assert_eq!(connect(dir, &data, port, id, other, "127.0.0.2"), Some(5));
        // The client id's refusals are used up: the same credential is refused from memory.
        assert_eq!(connect(dir, &data, port, id, other, "127.0.0.2"), Some(5));
        // The source's are used up too: its connections are closed at accept.
        assert_eq!(connect(dir, &data, port, id, other, "127.0.0.2"), None);
        // The device itself, with its own certificate, is not locked out.
        assert_eq!(connect(dir, &data, port, id, real, "127.0.0.3"), Some(0));

        let metrics = std::process::Command::new("curl")
            .args(["-sf", "--cacert", s(&data.join("tls/server-ca.pem"))])
            .arg(format!("https://{}/metrics", hub.host))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&metrics.stdout);
        assert!(
            text.contains(
                "certhub_connections_dropped_total{listener=\"mqtt\",reason=\"refusal-rate-client-id\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "certhub_connections_dropped_total{listener=\"mqtt\",reason=\"refusal-rate-source\"} 1"
            ),
            "{text}"
        );

        // Three identical refusals: the first written at once, the two repeats as one record
        // with their count when the window (6 s) closes.
        let mut records = serde_json::Value::Null;
        for _ in 0..40 {
            let run = common::certhub_at(
                dir,
                &data,
                &[
                    "audit",
                    "connections",
                    "--device",
                    id,
                    "--reason",
                    "cn-mismatch",
                    "--json",
                ],
            )
            .ok();
            records = serde_json::from_str(&run.stdout).expect("json");
            if records.as_array().is_some_and(|r| r.len() >= 2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let counts: Vec<i64> = records
            .as_array()
            .expect("records")
            .iter()
            .map(|r| r["count"].as_i64().expect("count"))
            .collect();
        assert_eq!(counts, vec![2, 1], "newest first: {records:#}");
        let summary = records[0]["detail"].as_str().expect("detail");
        assert!(
            summary.starts_with("2 identical refusals from 127.0.0.2"),
            "{summary}"
        );
    }
}

/// SAS sessions end with their token; the audit trail tells policy tokens from device tokens.
mod tokens {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::common::{self, s};

    fn sub(port: u16, data: &std::path::Path, id: &str, token: &str) -> std::process::Child {
        Command::new("mosquitto_sub")
            .args(["-h", "localhost", "-p", &port.to_string(), "-V", "mqttv311"])
            .args(["--cafile", s(&data.join("tls/server-ca.pem"))])
            .args([
                "-i",
                id,
                "-u",
                &format!("localhost/{id}/?api-version=2021-04-12"),
            ])
            .args(["-P", token])
            .args([
                "-t",
                &format!("devices/{id}/messages/devicebound/#"),
                "-q",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs")
    }

    #[test]
    fn a_sas_session_is_closed_when_its_token_expires() {
        let t = common::tmp();
        let d = t.path();
        let data = d.join("data");
        let hub = common::start_hub(&data);
        let cli = |args: &[&str]| common::certhub_at(d, &data, args).ok();
        cli(&["device", "create", "--id", "widget-sas"]);
        let token = cli(&["device", "token", "--id", "widget-sas", "--duration", "3"]);
        let started = Instant::now();
        let mut child = sub(hub.mqtt_port, &data, "widget-sas", token.stdout.trim());
        let deadline = started + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("state") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the session outlived its token by more than 7 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500),
            "closed at {took:?}, before its token expired"
        );
        let log = cli(&["audit", "connections", "--device", "widget-sas", "--json"]);
        let records: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
        let records = records.as_array().expect("records");
        assert!(
            records.iter().any(|r| r["outcome"] == "ok"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("via device-sas"))),
            "{records:#?}"
        );
        let log = cli(&["audit", "list", "--json", "--top", "50"]);
        let records: serde_json::Value = serde_json::from_str(&log.stdout).expect("json");
        let closed = records
            .as_array()
            .expect("records")
            .iter()
            .find(|r| r["operation"] == "device.disconnect")
            .expect("a disconnect record");
        assert_eq!(closed["outcome"], "sas-token-expired", "{closed:#}");
    }

    /// A token signed with a policy that has DeviceConnect connects as any device (Azure's
    /// semantics, kept); the audit trail names it `policy-sas`, and `--x509-only` shuts it out
    /// together with device and module keys.
    #[test]
    fn policy_tokens_are_named_and_x509_only_shuts_them_out() {
        let t = common::tmp();
        let d = t.path();
        let data = d.join("data");
        let hub = common::start_hub(&data);
        let cli = |args: &[&str]| common::certhub_at(d, &data, args);
        cli(&["device", "create", "--id", "widget-p"]).ok();
        let cs = cli(&["hub", "connection-string", "--policy", "device"]).ok();
        let key = cs
            .stdout
            .trim()
            .split(';')
            .find_map(|p| p.strip_prefix("SharedAccessKey="))
            .expect("key")
            .to_string();
        let se = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
        let token = certhub_core::sign_token(
            &format!("localhost:{}/devices/widget-p", hub.mqtt_port),
            &key,
            Some("device"),
            se,
        );
        let mut child = sub(hub.mqtt_port, &data, "widget-p", &token);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = cli(&["audit", "connections", "--device", "widget-p", "--json"]).ok();
            if log.stdout.contains("via policy-sas (policy device)") {
                break;
            }
            assert!(Instant::now() < deadline, "{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let set = cli(&["hub", "set", "--x509-only"]).ok();
        for switch in ["disableDeviceSAS", "disableModuleSAS", "disableLocalAuth"] {
            assert!(
                set.stdout.contains(&format!("\"{switch}\": true")),
                "{switch}: {set}"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().expect("state").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the policy-token session outlived --x509-only");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// MQTT 3.1.1 1.5.3: a topic holding U+0000 closes the connection; nothing is stored.
mod mqtt_details {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::common;
    use super::common::wire::{packet, string};

    #[test]
    fn a_topic_holding_nul_closes_the_connection() {
        let t = common::tmp();
        let dir = t.path();
        let data = dir.join("data");
        let hub = common::start_hub(&data);
        common::enroll_widget(dir, &data);
        let id = "smart-x-widget-0001";
        let widget = dir.join("pki/devices").join(id);
        let connector = common::device_tls(&data, &widget);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let port = hub.mqtt_port;
        let after_publish = runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("tcp");
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("handshake");
            let mut body = string("MQTT");
            body.extend([4, 0x82, 0, 60]);
            body.extend(string(id));
            body.extend(string(&format!("localhost/{id}/?api-version=2021-04-12")));
            tls.write_all(&packet(0x10, body)).await.expect("connect");
            let mut connack = [0u8; 4];
            tls.read_exact(&mut connack).await.expect("connack");
            assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
            let mut body = string(&format!("devices/{id}/messages/events/a\u{0}b"));
            body.extend([0, 1]);
            body.extend(b"nul");
            tls.write_all(&packet(0x32, body)).await.expect("publish");
            let mut buf = [0u8; 16];
            tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .expect("the hub answers or closes within 5 s")
                .map(|n| buf[..n].to_vec())
        });
        assert!(
            matches!(&after_publish, Ok(b) if b.is_empty()) || after_publish.is_err(),
            "the connection is closed without a PUBACK: {after_publish:?}"
        );
        let log = common::certhub_at(dir, &data, &["audit", "list", "--json", "--top", "20"]).ok();
        assert!(log.stdout.contains("U+0000"), "{log}");
    }
}
