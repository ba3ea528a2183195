//! Prototype: Azure-IoT-Hub-like AMQP 1.0 listener on fe2o3-amqp's acceptor API.
//!
//! usage: proto [tls|ws] [bind-addr]     (default: tls 127.0.0.1:0)
//!   REVOKE_AFTER_SECS=n : close every connection n seconds after it opened (revocation test)

mod wsio;

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fe2o3_amqp::{
    acceptor::{
        sasl_acceptor::{SaslAcceptor, SaslServerFrame},
        ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
        ListenerSessionHandle, SessionAcceptor, SupportedReceiverSettleModes,
    },
    types::{
        definitions::{self, ReceiverSettleMode, Role},
        messaging::{
            AmqpValue, ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId,
            Properties,
        },
        primitives::{Array, Binary, OrderedMap, Symbol, Timestamp, Value},
        sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse},
    },
    Sendable,
};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{mpsc, Notify},
};

// ---------------------------------------------------------------- SASL

/// Advertises MSSBCBS, PLAIN, ANONYMOUS and accepts everything (logs what it got).
#[derive(Debug, Clone)]
struct AzureSasl;

impl SaslAcceptor for AzureSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("MSSBCBS"),
            Symbol::from("PLAIN"),
            Symbol::from("ANONYMOUS"),
        ])
    }
    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let resp = init
            .initial_response
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).replace('\0', "|"))
            .unwrap_or_default();
        println!(
            "[sasl] init mechanism={} hostname={:?} initial-response={:?}",
            init.mechanism.0, init.hostname, resp
        );
        SaslServerFrame::Outcome(SaslOutcome { code: SaslCode::Ok, additional_data: None })
    }
    fn on_response(&mut self, _r: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome { code: SaslCode::Ok, additional_data: None })
    }
}

// ---------------------------------------------------------------- header sniffing

/// Re-plays bytes already read (the 8-byte protocol header) before the inner stream.
#[derive(Debug)]
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = std::cmp::min(buf.remaining(), self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept an AMQP connection on any byte stream, with or without a SASL layer.
async fn accept_amqp<S>(mut stream: S) -> anyhow_like::Result<ListenerConnectionHandle>
where
    S: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let mut hdr = [0u8; 8];
    stream.read_exact(&mut hdr).await?;
    println!("[conn] protocol header {:?}", hdr);
    let stream = Prefixed { prefix: hdr.to_vec(), pos: 0, inner: stream };
    // Complete OPEN field list: put a non-null value in the last field (properties).
    let mut props = OrderedMap::new();
    props.insert(Symbol::from("product"), Value::String("proto-fe2o3".into()));
    let builder = ConnectionAcceptor::builder()
        .container_id("proto-hub")
        .max_frame_size(65536)
        .properties(props);
    let conn = if hdr[4] == 3 {
        builder.sasl_acceptor(AzureSasl).build().accept(stream).await?
    } else {
        builder.build().accept(stream).await?
    };
    Ok(conn)
}

mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

// ---------------------------------------------------------------- request/response pairing

/// Per-session mailbox: replies for $cbs / $management are queued here and drained by the
/// server-side sender link attached to the same node.
#[derive(Default)]
struct Mailboxes {
    map: Mutex<HashMap<String, (mpsc::UnboundedSender<Message<Body<Value>>>, Option<mpsc::UnboundedReceiver<Message<Body<Value>>>>)>>,
}
impl Mailboxes {
    fn tx(&self, node: &str) -> mpsc::UnboundedSender<Message<Body<Value>>> {
        let mut m = self.map.lock().unwrap();
        m.entry(node.to_string()).or_insert_with(|| { let (t, r) = mpsc::unbounded_channel(); (t, Some(r)) }).0.clone()
    }
    fn rx(&self, node: &str) -> Option<mpsc::UnboundedReceiver<Message<Body<Value>>>> {
        let mut m = self.map.lock().unwrap();
        m.entry(node.to_string()).or_insert_with(|| { let (t, r) = mpsc::unbounded_channel(); (t, Some(r)) }).1.take()
    }
}

fn addr_of(attach: &definitions::Fields) -> String { format!("{:?}", attach) }

fn normalize(addr: &str) -> String {
    // strip amqps://host
    let a = if let Some(rest) = addr.strip_prefix("amqps://").or_else(|| addr.strip_prefix("amqp://")) {
        match rest.find('/') { Some(i) => &rest[i..], None => "/" }
    } else { addr };
    a.to_string()
}

fn app_prop(msg: &Message<Body<Value>>, key: &str) -> Option<String> {
    msg.application_properties.as_ref().and_then(|ap| ap.0.get(key)).map(|v| format!("{:?}", v))
}

fn reply_to(req: &Message<Body<Value>>, code: i32, desc: &str, body: Body<Value>) -> Message<Body<Value>> {
    let corr = req.properties.as_ref().and_then(|p| p.message_id.clone());
    let props = Properties { correlation_id: corr, ..Default::default() };
    let ap = ApplicationProperties::builder()
        .insert("status-code", code) // i32 -> AMQP int
        .insert("status-description", desc)
        .build();
    Message::builder().properties(props).application_properties(ap).body(body).build()
}

fn now_ms() -> i64 { SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 }

// ---------------------------------------------------------------- handlers

async fn handle_connection(mut conn: ListenerConnectionHandle, peer: String, revoke: Arc<Notify>) {
    let session_acceptor = SessionAcceptor::builder()
        .properties({ let mut m = OrderedMap::new(); m.insert(Symbol::from("x"), Value::Bool(true)); m })
        .build();
    loop {
        tokio::select! {
            s = conn.next_incoming_session() => {
                let Some(incoming) = s else { break };
                match session_acceptor.accept_incoming_session(incoming, &mut conn).await {
                    Ok(session) => { tokio::spawn(handle_session(session)); }
                    Err(e) => { println!("[conn {peer}] session accept error {e:?}"); break; }
                }
            }
            _ = revoke.notified() => {
                let t0 = std::time::Instant::now();
                let err = definitions::Error::new(definitions::AmqpError::UnauthorizedAccess, "revoked".to_string(), None);
                let r = tokio::time::timeout(Duration::from_secs(1), conn.close_with_error(err)).await;
                println!("[conn {peer}] REVOKED: close_with_error -> {:?} after {:?}", r.map(|x| x.map_err(|e| format!("{e:?}"))), t0.elapsed());
                return; // dropping the handle + the stream task ends the TCP connection
            }
        }
    }
    let r = conn.on_close().await;
    println!("[conn {peer}] closed: {r:?}");
}

async fn handle_session(mut session: ListenerSessionHandle) {
    let mb = Arc::new(Mailboxes::default());
    // rcv-settle-mode forced to `first` so our dispositions always go out settled=true
    let link_acceptor = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .properties({ let mut m = OrderedMap::new(); m.insert(Symbol::from("com.microsoft:tracking-id"), Value::String("proto".into())); m })
        .build();
    // For links where WE send: answer snd-settle-mode `mixed` even if the peer asked for
    // `unsettled`, otherwise fe2o3 ignores Sendable::settled(true) and every send waits for
    // the peer's disposition (pyamqp/Event Hubs receivers never send one for mgmt/cbs replies).
    let sender_link_acceptor = link_acceptor.clone().into_builder()
        .supported_sender_settle_modes(fe2o3_amqp::acceptor::SupportedSenderSettleModes::SettledAndMixed)
        .fallback_sender_settle_mode(fe2o3_amqp::types::definitions::SenderSettleMode::Mixed)
        .build();
    while let Some(attach) = session.next_incoming_attach().await {
        let src = attach.source.as_ref().and_then(|s| s.address.clone()).unwrap_or_default();
        let tgt = attach.target.as_ref().and_then(|t| match t.as_ref() {
            fe2o3_amqp::types::messaging::TargetArchetype::Target(t) => t.address.clone(),
            #[allow(unreachable_patterns)] _ => None,
        }).unwrap_or_default();
        println!("[attach] name={} peer-role={:?} source={:?} target={:?} snd={:?} rcv={:?} props={:?} filter={:?}",
            attach.name, attach.role, src, tgt, attach.snd_settle_mode, attach.rcv_settle_mode,
            attach.properties.as_ref().map(addr_of), attach.source.as_ref().and_then(|s| s.filter.clone()));
        let role = attach.role.clone();
        let acc = if role == Role::Receiver { &sender_link_acceptor } else { &link_acceptor };
        let link = match acc.accept_incoming_attach(attach, &mut session).await {
            Ok(l) => l,
            Err(e) => { println!("[attach] error {e:?}"); continue; }
        };
        let mb = mb.clone();
        match (role, link) {
            (Role::Sender, LinkEndpoint::Receiver(rx)) => { tokio::spawn(run_receiver(rx, normalize(&tgt), mb)); }
            (Role::Receiver, LinkEndpoint::Sender(tx)) => { tokio::spawn(run_sender(tx, normalize(&src), mb)); }
            _ => unreachable!(),
        }
    }
    println!("[session] ended");
}

/// Server-side receiver: the client sends to `node`.
async fn run_receiver(mut rx: fe2o3_amqp::Receiver, node: String, mb: Arc<Mailboxes>) {
    loop {
        let d = match rx.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(e) => { println!("[recv {node}] ended: {e:?}"); return; }
        };
        let msg = d.message().clone();
        let mid = msg.properties.as_ref().and_then(|p| p.message_id.clone());
        match node.as_str() {
            "$cbs" => {
                println!("[cbs] put-token message-id={mid:?} operation={:?} type={:?} name={:?} token={:?}",
                    app_prop(&msg, "operation"), app_prop(&msg, "type"), app_prop(&msg, "name"), msg.body);
                rx.accept(&d).await.ok();
                mb.tx("$cbs").send(reply_to(&msg, 200, "OK", Body::Value(AmqpValue(Value::Null)))).ok();
            }
            "$management" => {
                println!("[mgmt] message-id={mid:?} app-props={:?} body={:?}", msg.application_properties, msg.body);
                rx.accept(&d).await.ok();
                let ty = app_prop(&msg, "type").unwrap_or_default();
                let name = msg.application_properties.as_ref().and_then(|a| a.0.get("name")).map(|v| match v { fe2o3_amqp::types::primitives::SimpleValue::String(s) => s.clone(), _ => String::new() }).unwrap_or_default();
                let mut m = OrderedMap::new();
                let s = |x: &str| Value::String(x.into());
                if ty.contains("partition") {
                    m.insert(s("name"), s(&name));
                    m.insert(s("partition"), s("0"));
                    m.insert(s("begin_sequence_number"), Value::Long(0));
                    m.insert(s("last_enqueued_sequence_number"), Value::Long(1));
                    m.insert(s("last_enqueued_offset"), s("1"));
                    m.insert(s("last_enqueued_time_utc"), Value::Timestamp(Timestamp::from_milliseconds(now_ms())));
                    m.insert(s("is_partition_empty"), Value::Bool(false));
                } else {
                    m.insert(s("name"), s(&name));
                    m.insert(s("created_at"), Value::Timestamp(Timestamp::from_milliseconds(now_ms())));
                    m.insert(s("partition_ids"), Value::Array(Array::from(vec![s("0")])));
                }
                mb.tx("$management").send(reply_to(&msg, 200, "OK", Body::Value(AmqpValue(Value::Map(m))))).ok();
            }
            _ => {
                let body = match &msg.body {
                    Body::Data(b) => b.iter().map(|d| String::from_utf8_lossy(&d.0).to_string()).collect::<Vec<_>>().join(""),
                    other => format!("{other:?}"),
                };
                println!("[telemetry {node}] delivery-id={} body={body:?}\n   properties={:?}\n   application-properties={:?}\n   message-annotations={:?}",
                    d.delivery_id(), msg.properties, msg.application_properties, msg.message_annotations);
                let r = rx.accept(&d).await;
                println!("[telemetry {node}] accepted (settled disposition) -> {r:?}");
            }
        }
    }
}

/// Server-side sender: the client receives from `node`.
async fn run_sender(mut tx: fe2o3_amqp::Sender, node: String, mb: Arc<Mailboxes>) {
    if node == "$cbs" || node == "$management" {
        let Some(mut q) = mb.rx(&node) else { println!("[send {node}] second receiver on same node; ignored"); return };
        while let Some(m) = q.recv().await {
            let s = Sendable::builder().message(m).settled(true).build();
            let r = tx.send(s).await;
            println!("[send {node}] reply sent -> {r:?}");
        }
        return;
    }
    if node.to_ascii_lowercase().contains("/consumergroups/") {
        for i in 0..2i64 {
            let ann = MessageAnnotations::builder()
                .insert(OwnedKey::Symbol(Symbol::from("x-opt-sequence-number")), Value::Long(i))
                .insert(OwnedKey::Symbol(Symbol::from("x-opt-offset")), Value::String(format!("{}", i * 100)))
                .insert(OwnedKey::Symbol(Symbol::from("x-opt-enqueued-time")), Value::Timestamp(Timestamp::from_milliseconds(now_ms())))
                .insert(OwnedKey::Symbol(Symbol::from("iothub-connection-device-id")), Value::String("d1".into()))
                .build();
            let props = Properties { message_id: Some(MessageId::String(format!("m{i}"))), ..Default::default() };
            let ap = ApplicationProperties::builder().insert("a", "1").build();
            let m: Message<Body<Value>> = Message::builder()
                .message_annotations(ann).properties(props).application_properties(ap)
                .body(Body::Data(vec![Data(Binary::from(format!("hello {i}").into_bytes()))].into()))
                .build();
            let r = tx.send(Sendable::builder().message(m).settled(true).build()).await;
            println!("[eventhub {node}] sent event {i} -> {r:?}");
        }
        if std::env::var("DETACH_EH_AFTER_SEND").is_ok() {
            // test: server-initiated detach without error (Detach field list = [handle, closed])
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = tx.close().await;
            println!("[eventhub {node}] server closed link -> {r:?}");
            return;
        }
        // keep link open
        std::future::pending::<()>().await;
    }
    println!("[send {node}] nothing to send on this node; holding link");
    std::future::pending::<()>().await;
}

// ---------------------------------------------------------------- TLS / main

fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/certs");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(format!("{dir}/server.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.pk8.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(format!("{dir}/ca.pem")).unwrap() { roots.add(c.unwrap()).unwrap(); }
    // optional client certificates (X.509 devices); SAS clients send none
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated().build().unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions().unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key).unwrap();
    Arc::new(cfg)
}

#[tokio::main]
async fn main() {
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_else(|| "tls".into());
    let bind = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1:0".into());
    let revoke_after: Option<u64> = std::env::var("REVOKE_AFTER_SECS").ok().and_then(|v| v.parse().ok());
    let listener = TcpListener::bind(&bind).await.unwrap();
    println!("LISTENING mode={mode} port={}", listener.local_addr().unwrap().port());
    let tls = tokio_rustls::TlsAcceptor::from(tls_config());
    loop {
        let (tcp, peer) = listener.accept().await.unwrap();
        let tls = tls.clone();
        let mode = mode.clone();
        tokio::spawn(async move {
            let peer = peer.to_string();
            let tls_stream = match tls.accept(tcp).await { Ok(s) => s, Err(e) => { println!("[tls {peer}] {e}"); return } };
            // (goal 5) the client certificate chain is available here, before AMQP starts
            let chain = tls_stream.get_ref().1.peer_certificates().map(|c| c.iter().map(|d| d.len()).collect::<Vec<_>>());
            println!("[tls {peer}] handshake ok, SNI={:?}, client cert chain (DER sizes)={:?}", tls_stream.get_ref().1.server_name(), chain);
            let conn = if mode == "ws" {
                match wsio::accept_ws(tls_stream).await {
                    Ok(ws) => accept_amqp(ws).await,
                    Err(e) => { println!("[ws {peer}] {e}"); return }
                }
            } else {
                accept_amqp(tls_stream).await
            };
            let conn = match conn { Ok(c) => c, Err(e) => { println!("[amqp {peer}] open failed: {e:?}"); return } };
            println!("[amqp {peer}] connection open");
            let revoke = Arc::new(Notify::new());
            if let Some(secs) = revoke_after {
                let r = revoke.clone();
                tokio::spawn(async move { tokio::time::sleep(Duration::from_secs(secs)).await; r.notify_one(); });
            }
            handle_connection(conn, peer, revoke).await;
        });
    }
}
