//! Bad input on the AMQP listener, spoken by fe2o3-amqp's own client over rustls (with the
//! four-level widget's chain): an unknown address, another device's link, a CBS token for
//! another audience and a wrong one, an audience that names no device, a message past 256 KB,
//! a connection that never puts a token, a connection lost without a close (audited with
//! the reason); and a token that runs out closes its session. For
//! services: a malformed frame, bad SASL PLAIN credentials, a token that runs out, C2D sends the hub cannot deliver, service links
//! without a token or the right, and an attach storm (more than 64 links on a session).
//! Each is refused with an AMQP error condition or CBS status that says why, and the
//! refusals are audited with their named reasons.

mod common;

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};

const HOST: &str = "127.0.0.31";
const WIDGET: &str = "smart-x-widget-0001";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The condition a link was closed with, from the error of a send on it.
fn condition(e: &impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// An AMQP connection to `port` over TLS with the widget's chain (`tls`), no SASL.
async fn widget_connection(
    tls: &tokio_rustls::TlsConnector,
    port: u16,
    container: &str,
) -> fe2o3_amqp::connection::ConnectionHandle<()> {
    let tcp = tokio::net::TcpStream::connect((HOST, port))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(HOST).expect("name");
    let stream = tls.connect(name, tcp).await.expect("TLS handshake");
    Connection::builder()
        .container_id(container)
        .hostname(HOST)
        .scheme("amqp")
        .open_with_stream(stream)
        .await
        .expect("AMQP open")
}

/// The pair of links a CBS client attaches: requests out, replies in.
async fn cbs_links(session: &mut fe2o3_amqp::session::SessionHandle<()>) -> (Sender, Receiver) {
    let cbs = Sender::attach(session, "cbs-out", "$cbs")
        .await
        .expect("cbs");
    let replies = Receiver::attach(session, "cbs-in", "$cbs")
        .await
        .expect("cbs");
    (cbs, replies)
}

/// One CBS put-token on `cbs`, its answer read from `replies`: (status-code, description).
async fn put_token(
    cbs: &mut Sender,
    replies: &mut Receiver,
    audience: &str,
    token: &str,
    id: &str,
) -> (i32, String) {
    let request = Message::builder()
        .properties(Properties {
            message_id: Some(id.to_string().into()),
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("operation", "put-token")
                .insert("type", "servicebus.windows.net:sastoken")
                .insert("name", audience)
                .build(),
        )
        .body(Body::Value(AmqpValue(Value::String(token.to_string()))))
        .build();
    cbs.send(request).await.expect("put-token sent");
    let reply = replies.recv::<Body<Value>>().await.expect("a reply");
    replies.accept(&reply).await.expect("accept");
    let props = reply
        .message()
        .application_properties
        .clone()
        .expect("props");
    let status = match props.0.get("status-code") {
        Some(SimpleValue::Int(n)) => *n,
        other => panic!("status-code: {other:?}"),
    };
    let description = match props.0.get("status-description") {
        Some(SimpleValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    (status, description)
}

#[test]
fn bad_input_on_the_amqp_listener_is_refused_with_a_reason() {
    let t = common::tmp();
    let dir = t.path();
    let data = dir.join("data");
    let hub = common::start_hub_on(&data, HOST, &[]);
    common::enroll_widget(dir, &data);
    common::certhub_at(dir, &data, &["device", "create", "--id", "other-sas"]).ok();
    let token = common::certhub_at(
        dir,
        &data,
        &["device", "token", "--id", "other-sas", "--duration", "600"],
    )
    .ok()
    .stdout
    .lines()
    .last()
    .expect("a token")
    .to_string();
    // A token of other-sas that runs out 5 s from now.
    let short = common::certhub_at(
        dir,
        &data,
        &["device", "token", "--id", "other-sas", "--duration", "5"],
    )
    .ok()
    .stdout
    .lines()
    .last()
    .expect("a token")
    .to_string();
    let tls = common::device_tls(&data, &dir.join("pki/devices").join(WIDGET));
    let port = hub.amqp_port;
    let server_ca = data.join("tls/server-ca.pem");
    let (cli_dir, cli_data) = (dir.to_path_buf(), data.clone());
    let owner = certhub_core::sign_token(
        HOST,
        &policy_key(dir, &data, "iothubowner"),
        Some("iothubowner"),
        time::OffsetDateTime::now_utc().unix_timestamp() + 600,
    );
    runtime().block_on(async move {
        // A connection that is lost (no AMQP close, no TLS close_notify: the relay between
        // client and hub goes away) ends the widget's session with that reason in the audit.
        let relay = tokio::net::TcpListener::bind((HOST, 0))
            .await
            .expect("bind");
        let relay_port = relay.local_addr().expect("addr").port();
        let relaying = tokio::spawn(async move {
            let (mut client, _) = relay.accept().await.expect("accept");
            let mut hub = tokio::net::TcpStream::connect((HOST, port))
                .await
                .expect("connect");
            let _ = tokio::io::copy_bidirectional(&mut client, &mut hub).await;
        });
        let mut lost = widget_connection(&tls, relay_port, "lost").await;
        let mut lost_session = Session::begin(&mut lost).await.expect("begin");
        let mut events = Sender::attach(
            &mut lost_session,
            "events",
            format!("/devices/{WIDGET}/messages/events"),
        )
        .await
        .expect("attach");
        events
            .send(Message::from("before the cut"))
            .await
            .expect("accepted");
        relaying.abort();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        drop((events, lost_session, lost));

        let mut connection = widget_connection(&tls, port, "bad-input").await;
        let mut session = Session::begin(&mut connection).await.expect("begin");

        // An address that names no node of the hub: detached with amqp:not-found, naming the
        // nodes there are.
        let mut nowhere = Sender::attach(&mut session, "nowhere", "/nowhere/at/all")
            .await
            .expect("attach");
        let sent = nowhere.send(Message::from("x")).await;
        let why = condition(&sent.expect_err("refused"));
        assert!(
            why.contains("NotFound") && why.contains("/devices/{id}/messages/events"),
            "{why}"
        );

        // Another device's link, without its token: judged as that device connecting with the
        // widget's chain, and refused (it authenticates with SAS keys).
        let mut other = Sender::attach(&mut session, "other", "/devices/other-sas/messages/events")
            .await
            .expect("attach");
        let why = condition(&other.send(Message::from("x")).await.expect_err("refused"));
        assert!(
            why.contains("UnauthorizedAccess") && why.contains("other-sas"),
            "{why}"
        );

        // CBS: a token for another audience, then a tampered one, then none at all.
        let (mut cbs, mut replies) = cbs_links(&mut session).await;
        let mut put = async |audience: &str, token: &str, id: &str| {
            put_token(&mut cbs, &mut replies, audience, token, id).await
        };
        let (status, _) = put(&format!("{HOST}/devices/{WIDGET}"), &token, "1").await;
        assert_eq!(
            status, 401,
            "a token of other-sas does not admit the widget"
        );
        let tampered = token.replacen("sig=", "sig=AAAA", 1);
        let (status, _) = put(&format!("{HOST}/devices/other-sas"), &tampered, "2").await;
        assert_eq!(status, 401, "a tampered token is refused");
        let (status, why) = put(&format!("{HOST}/messages/devicebound"), &token, "3").await;
        assert_eq!(status, 404, "{why}");
        // The right token admits other-sas on this connection.
        let (status, _) = put(&format!("{HOST}/devices/other-sas"), &token, "4").await;
        assert_eq!(status, 200);
        let mut events =
            Sender::attach(&mut session, "events", "/devices/other-sas/messages/events")
                .await
                .expect("attach");
        events.send(Message::from("fine")).await.expect("accepted");

        // Its C2D messages come with a 16-byte delivery tag, as IoT Hub's (the C# SDKs read a
        // message's lock token from it as a Guid).
        common::certhub_at(
            &cli_dir,
            &cli_data,
            &["c2d", "send", "--device", "other-sas", "--body", "hello"],
        )
        .ok();
        let mut c2d = Receiver::attach(
            &mut session,
            "c2d",
            "/devices/other-sas/messages/devicebound",
        )
        .await
        .expect("attach");
        let delivery =
            tokio::time::timeout(std::time::Duration::from_secs(5), c2d.recv::<Body<Value>>())
                .await
                .expect("a C2D message within 5 s")
                .expect("a C2D message");
        assert_eq!(delivery.delivery_tag().len(), 16);
        c2d.accept(&delivery).await.expect("settled");

        // A message past 256 KB: the hub's attach gave the link a max-message-size of 256 KiB,
        // so a compliant client (this one) refuses it before sending a byte of it.
        let big = Message::from("x".repeat(300 * 1024));
        let why = condition(&events.send(big).await.expect_err("too large"));
        assert!(
            why.contains("MessageSizeExceeded") || why.contains("message-size-exceeded"),
            "{why}"
        );

        // An Event Hubs reader that takes messages of 10 bytes at most: the first event is
        // larger, so its link ends with amqp:link:message-size-exceeded naming the event (it
        // is not skipped).
        let mut service = plain_owner(&server_ca, port, &owner).await;
        let mut service_session = Session::begin(&mut service).await.expect("begin");
        let mut small = Receiver::builder()
            .name("small")
            .source("certhub/ConsumerGroups/$default/Partitions/0")
            .max_message_size(10u64)
            .attach(&mut service_session)
            .await
            .expect("attach");
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            small.recv::<Body<Value>>(),
        )
        .await
        .expect("an answer within 5 s");
        let why = condition(&read.expect_err("detached"));
        assert!(
            why.contains("MessageSizeExceeded") && why.contains("event 1"),
            "{why}"
        );
        drop((small, service_session));
        let _ = service.close().await;

        // A renewed token (a new put for the same identity) moves the session's end to its
        // expiry: this one runs out within seconds, and the hub closes the connection then.
        let (status, _) = put(&format!("{HOST}/devices/other-sas"), &short, "5").await;
        assert_eq!(status, 200);
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(10), connection.on_close())
                .await
                .expect("closed by the hub when the token ran out");
        let why = condition(&closed.expect_err("closed with an error"));
        assert!(
            why.contains("UnauthorizedAccess") && why.contains("SAS token expired"),
            "{why}"
        );

        // A connection without a client certificate that puts no token is closed after 10 s,
        // with the reason.
        let stream = service_stream(&server_ca, port).await;
        let mut idle = Connection::builder()
            .container_id("idle")
            .hostname(HOST)
            .scheme("amqp")
            .open_with_stream(stream)
            .await
            .expect("AMQP open");
        let _session = Session::begin(&mut idle).await.expect("begin");
        let closed = tokio::time::timeout(std::time::Duration::from_secs(20), idle.on_close())
            .await
            .expect("closed by the hub within 20 s");
        let why = condition(&closed.expect_err("closed with an error"));
        assert!(
            why.contains("UnauthorizedAccess") && why.contains("no identity was admitted"),
            "{why}"
        );
    });

    // The refusals are audited with their named reasons, the lost connection with its own.
    let audit = common::certhub_at(dir, &data, &["audit", "list", "--top", "50"])
        .ok()
        .stdout;
    assert!(
        audit.lines().any(|l| l.contains("device.disconnect")
            && l.contains(&format!("devices/{WIDGET}"))
            && l.contains("without a close")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("devices/other-sas") && l.contains("auth-method-mismatch")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("devices/other-sas") && l.contains("sas-invalid")),
        "{audit}"
    );
}

/// A shared access policy's key, read from its connection string.
fn policy_key(dir: &std::path::Path, data: &std::path::Path, policy: &str) -> String {
    let cs = common::certhub_at(dir, data, &["hub", "connection-string", "--policy", policy])
        .ok()
        .stdout;
    cs.trim()
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .expect("a key")
        .to_string()
}

/// A TLS connection to the hub without a client certificate, as services connect.
async fn service_stream(
    server_ca: &std::path::Path,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(server_ca).expect("ca") {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((HOST, port))
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from(HOST).expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// A connection with SASL PLAIN as iothubowner (`owner` is its token).
async fn plain_owner(
    server_ca: &std::path::Path,
    port: u16,
    owner: &str,
) -> fe2o3_amqp::connection::ConnectionHandle<()> {
    Connection::builder()
        .container_id("plain-owner")
        .hostname(HOST)
        .scheme("amqp")
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain {
            username: format!("iothubowner@sas.root.{HOST}"),
            password: owner.to_string(),
        })
        .open_with_stream(service_stream(server_ca, port).await)
        .await
        .expect("SASL PLAIN as iothubowner opens")
}

/// A C2D message for `to` (none: no `to` at all).
fn c2d(to: Option<&str>) -> Message<Body<Value>> {
    Message::builder()
        .properties(Properties {
            to: to.map(str::to_string),
            ..Default::default()
        })
        .body(Body::Value(AmqpValue(Value::String("hi".into()))))
        .build()
}

#[test]
fn bad_service_input_on_the_amqp_listener_is_refused_with_a_reason() {
    let t = common::tmp();
    let dir = t.path();
    let data = dir.join("data");
    let hub = common::start_hub_on(&data, HOST, &[]);
    common::certhub_at(dir, &data, &["device", "create", "--id", "target"]).ok();
    let expiry = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    let owner_key = policy_key(dir, &data, "iothubowner");
    let owner = certhub_core::sign_token(HOST, &owner_key, Some("iothubowner"), expiry);
    let reader = certhub_core::sign_token(
        HOST,
        &policy_key(dir, &data, "registryRead"),
        Some("registryRead"),
        expiry,
    );
    let port = hub.amqp_port;
    let server_ca = data.join("tls/server-ca.pem");
    runtime().block_on(async move {
        use fe2o3_amqp::sasl_profile::SaslProfile;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A malformed frame after the protocol header (a frame that says it is 4 GiB long,
        // past the hub's 64 KiB max-frame-size): the hub answers with its protocol header and
        // closes the connection at once (well before its 10 s open timeout); the connections
        // below are served as usual.
        let mut raw = service_stream(&server_ca, port).await;
        raw.write_all(b"AMQP\x00\x01\x00\x00")
            .await
            .expect("header");
        raw.write_all(&[0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0])
            .await
            .expect("frame");
        raw.flush().await.expect("flush");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            raw.read_to_end(&mut answer),
        )
        .await
        .expect("the hub closes a connection that sent a malformed frame");
        assert!(
            answer.starts_with(b"AMQP\x00\x01\x00\x00") && (read.is_ok() || !answer.is_empty()),
            "{answer:?} {read:?}"
        );

        // SASL PLAIN with a user that is not {policy}@sas.root.{hub}, and with a token the
        // policy it names did not sign: the SASL outcome is auth, the connection not opened.
        for (username, password) in [
            ("someone".to_string(), owner.clone()),
            (format!("iothubowner@sas.root.{HOST}"), reader.clone()),
        ] {
            let opened = Connection::builder()
                .container_id("plain-bad")
                .hostname(HOST)
                .scheme("amqp")
                .sasl_profile(SaslProfile::Plain { username, password })
                .open_with_stream(service_stream(&server_ca, port).await)
                .await;
            assert!(
                opened.is_err(),
                "SASL PLAIN with bad credentials is refused"
            );
        }

        // SASL PLAIN as iothubowner: C2D sends, each refused for what is wrong with it.
        let mut connection = plain_owner(&server_ca, port, &owner).await;
        let mut session = Session::begin(&mut connection).await.expect("begin");
        let mut c2d_link = Sender::attach(
            &mut session,
            "c2d",
            format!("amqps://{HOST}/messages/deviceBound"),
        )
        .await
        .expect("attach");
        let outcome = c2d_link
            .send(c2d(Some("/devices/target/messages/devicebound")))
            .await
            .expect("sent");
        assert!(outcome.is_accepted(), "{outcome:?}");
        for (to, wanted, says) in [
            (
                Some("/devices/nobody/messages/devicebound"),
                "NotFound",
                "nobody not registered",
            ),
            (None, "InvalidField", "has no `to`"),
            (
                Some("/devices/target/modules/m1/messages/devicebound"),
                "InvalidField",
                "modules do not receive",
            ),
            (
                Some("/devices/target/twin"),
                "InvalidField",
                "must be /devices/{id}/messages/devicebound",
            ),
        ] {
            let outcome = c2d_link.send(c2d(to)).await.expect("sent");
            let why = format!("{outcome:?}");
            assert!(
                outcome.is_rejected() && why.contains(wanted) && why.contains(says),
                "{to:?}: {why}"
            );
        }
        drop(c2d_link);
        let _ = connection.close().await;

        // No SASL, a registryRead token on $cbs: accepted as a service's token, but the policy
        // lacks ServiceConnect, so the service links are detached with the reason.
        let mut connection = Connection::builder()
            .container_id("cbs-reader")
            .hostname(HOST)
            .scheme("amqp")
            .open_with_stream(service_stream(&server_ca, port).await)
            .await
            .expect("open");
        let mut session = Session::begin(&mut connection).await.expect("begin");
        // Before any token: the service links are for services.
        let mut feedback = Receiver::attach(&mut session, "fb", "/messages/serviceBound/feedback")
            .await
            .expect("attach");
        let why = condition(&feedback.recv::<Body<Value>>().await.expect_err("detached"));
        assert!(
            why.contains("UnauthorizedAccess") && why.contains("is for services"),
            "{why}"
        );
        let (mut cbs, mut replies) = cbs_links(&mut session).await;
        let tampered = owner.replacen("sig=", "sig=AAAA", 1);
        let (status, why) = put_token(&mut cbs, &mut replies, HOST, &tampered, "1").await;
        assert!(status == 401 && why.contains("signature"), "{status} {why}");
        let (status, why) = put_token(&mut cbs, &mut replies, HOST, &reader, "2").await;
        assert_eq!(status, 200, "{why}");
        let mut sends = Sender::attach(&mut session, "c2d", "/messages/devicebound")
            .await
            .expect("attach");
        let why = condition(
            &sends
                .send(c2d(Some("/devices/target/messages/devicebound")))
                .await
                .expect_err("detached"),
        );
        assert!(
            why.contains("UnauthorizedAccess") && why.contains("lacks ServiceConnect"),
            "{why}"
        );

        let _ = connection.close().await;

        // A service's token that runs out: its connection is closed with the reason.
        let short = certhub_core::sign_token(
            HOST,
            &owner_key,
            Some("iothubowner"),
            time::OffsetDateTime::now_utc().unix_timestamp() + 3,
        );
        let mut connection = Connection::builder()
            .container_id("cbs-short")
            .hostname(HOST)
            .scheme("amqp")
            .open_with_stream(service_stream(&server_ca, port).await)
            .await
            .expect("open");
        let mut session = Session::begin(&mut connection).await.expect("begin");
        let (mut cbs, mut replies) = cbs_links(&mut session).await;
        let (status, why) = put_token(&mut cbs, &mut replies, HOST, &short, "3").await;
        assert_eq!(status, 200, "{why}");
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(20), connection.on_close())
                .await
                .expect("closed by the hub once the service's token ran out");
        let why = condition(&closed.expect_err("closed with an error"));
        assert!(
            why.contains("UnauthorizedAccess") && why.contains("service's SAS token expired"),
            "{why}"
        );

        let mut connection = plain_owner(&server_ca, port, &owner).await;

        // An attach storm: a session holds 64 links at most; the 65th is refused with
        // amqp:resource-limit-exceeded and the limit named.
        let mut storm = Session::begin(&mut connection).await.expect("begin");
        let mut held = Vec::new();
        for n in 0..64 {
            held.push(
                Sender::attach(&mut storm, format!("cbs-{n}"), "$cbs")
                    .await
                    .expect("attach"),
            );
        }
        let mut extra = Sender::attach(&mut storm, "one-too-many", "$cbs")
            .await
            .expect("attach");
        let why = condition(&extra.send(Message::from("x")).await.expect_err("refused"));
        assert!(
            why.contains("ResourceLimitExceeded") && why.contains("64 links"),
            "{why}"
        );
        let _ = connection.close().await;
    });

    // One message reached the queue; the refusals are audited with their reasons.
    let audit = common::certhub_at(dir, &data, &["audit", "list", "--json", "--top", "50"])
        .ok()
        .stdout;
    let log: serde_json::Value = serde_json::from_str(&audit).expect("json");
    let log = log.as_array().expect("array");
    let has = |op: &str, outcome: &str, text: &str| {
        log.iter().any(|r| {
            r["operation"] == op
                && r["outcome"] == outcome
                && r["detail"].as_str().is_some_and(|d| d.contains(text))
        })
    };
    assert!(has("c2d.send", "ok", "messageId"), "{audit}");
    assert!(
        has("c2d.send", "refused", "nobody not registered"),
        "{audit}"
    );
    assert!(
        has(
            "amqp.service.refused",
            "refused",
            "not {policy}@sas.root.{hub}"
        ),
        "{audit}"
    );
    assert!(
        has("amqp.service.refused", "refused", "lacks ServiceConnect"),
        "{audit}"
    );
}

/// A client that sends its SASL init, the AMQP header and its open in one write, without
/// waiting for the SASL outcome (pipelining, as AMQP 5.3.3.1 allows): the hub answers all of
/// it, its open included. Hand-written bytes: no client at hand pipelines.
#[test]
fn sasl_pipelined_with_the_amqp_header_and_open_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = common::tmp();
    let data = t.path().join("data");
    let hub = common::start_hub_on(&data, HOST, &[]);
    let server_ca = data.join("tls/server-ca.pem");
    let port = hub.amqp_port;
    runtime().block_on(async move {
        let mut stream = service_stream(&server_ca, port).await;
        let mut out = b"AMQP\x03\x01\x00\x00".to_vec();
        // sasl-init (0x41): a list of one field, the mechanism ANONYMOUS.
        let init = [&[0x00, 0x53, 0x41, 0xc0, 12, 1, 0xa3, 9][..], b"ANONYMOUS"].concat();
        out.extend_from_slice(&(8 + init.len() as u32).to_be_bytes());
        out.extend_from_slice(&[2, 1, 0, 0]);
        out.extend_from_slice(&init);
        out.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        // open (0x10): a list of one field, the container id "t".
        let open = [0x00, 0x53, 0x10, 0xc0, 4, 1, 0xa1, 1, b't'];
        out.extend_from_slice(&(8 + open.len() as u32).to_be_bytes());
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(&open);
        stream.write_all(&out).await.expect("write");
        let mut got = Vec::new();
        let answered = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "the hub closed the connection: {got:02x?}");
                got.extend_from_slice(&buf[..n]);
                let header = got.windows(8).position(|w| w == b"AMQP\x00\x01\x00\x00");
                // The hub's open: its frame's performative right after the AMQP header.
                if let Some(at) = header
                    && got.len() >= at + 19
                {
                    return (at, got[at + 16..at + 19].to_vec());
                }
            }
        })
        .await;
        let (at, performative) = answered.expect("the hub's open within 5 s");
        assert!(got.starts_with(b"AMQP\x03\x01\x00\x00"), "{got:02x?}");
        // A sasl-outcome (0x44) with code ok (ubyte 0) before the AMQP header.
        let outcome = got[..at]
            .windows(8)
            .any(|w| w[..3] == [0x00, 0x53, 0x44] && w[6..8] == [0x50, 0x00]);
        assert!(outcome, "{got:02x?}");
        assert_eq!(performative, [0x00, 0x53, 0x10], "{got:02x?}");
    });
}
