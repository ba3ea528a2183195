//! Prototype: AMQP 1.0 server for Azure IoT SDKs on ntex-amqp 6.0.0, embedded in a tokio app.
//!
//! Layout: the tokio runtime (the "certhub" side) owns `Arc<Shared>` with Send async services.
//! The ntex server runs on its own OS thread(s) (`ntex_rt::System`), every connection is !Send/Rc;
//! it reaches the tokio side via `tokio::runtime::Handle::spawn(..).await` and is closed from the
//! tokio side via a `tokio::sync::oneshot` per connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};


use ntex_amqp::codec::protocol::{
    Accepted, DeliveryState, MessageId, SaslCode, TransferBody,
};
use ntex_amqp::codec::types::{List, Symbol, Variant, VariantMap};
use ntex_amqp::codec::{Decode, Message};
use ntex_amqp::error::LinkError;
use ntex_amqp::server::{self, Handshake, HandshakeAck, HandshakeAmqpOpened};
use ntex_amqp::types::Message as LinkMsg;
use ntex_amqp::{ControlFrame, ControlFrameKind, ReceiverLink, SenderLink, State};
use ntex_bytes::{ByteString, Bytes};
use ntex_service::cfg::SharedCfg;
use ntex_service::{Ctx, Service, ServiceFactory};

// ---------------------------------------------------------------- tokio side (Send)

#[derive(Default)]
pub struct Shared {
    pub events: tokio::sync::Mutex<Vec<String>>,
    pub closers: std::sync::Mutex<HashMap<u64, tokio::sync::oneshot::Sender<String>>>,
}

impl Shared {
    /// Stands for a certhub async service (Send future, Arc state, tokio Mutex).
    pub async fn record(self: Arc<Self>, conn: u64, what: String) -> usize {
        let mut ev = self.events.lock().await;
        ev.push(format!("conn{conn}: {what}"));
        tokio::task::yield_now().await;
        ev.len()
    }
}

// ---------------------------------------------------------------- ntex side (!Send)

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

pub struct Conn {
    id: u64,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    /// (session local channel, source address) -> server sender link (client receiver)
    senders: RefCell<HashMap<(u16, String), SenderLink>>,
}

impl Conn {
    async fn call_tokio(&self, what: String) -> usize {
        let sh = self.shared.clone();
        let id = self.id;
        // run a Send future on the app's tokio runtime and await its JoinHandle from ntex
        self.rt.spawn(sh.record(id, what)).await.unwrap_or(0)
    }
    fn sender(&self, ch: u16, addr: &str) -> Option<SenderLink> {
        self.senders.borrow().get(&(ch, addr.to_string())).cloned()
    }
}

fn norm_addr(a: &str) -> String {
    // strip amqps://host
    if let Some(rest) = a.strip_prefix("amqps://").or_else(|| a.strip_prefix("amqp://")) {
        match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".into(),
        }
    } else {
        a.to_string()
    }
}

fn vstr(v: Option<&Variant>) -> String {
    match v {
        Some(Variant::String(s)) => s.as_str().to_string(),
        Some(Variant::Symbol(s)) => s.as_str().to_string(),
        Some(other) => format!("{other:?}"),
        None => "<none>".into(),
    }
}

fn decode_msg(tr: &ntex_amqp::codec::protocol::Transfer) -> Option<Message> {
    match tr.body()? {
        TransferBody::Data(b) => Message::decode(&mut b.clone()).ok(),
        TransferBody::Message(m) => Some(m.clone()),
        TransferBody::Pages(p) => Message::decode(&mut p.clone().freeze()).ok(),
    }
}

fn describe(m: &Message) -> String {
    let props = m.properties();
    let body = if let Some(d) = m.body().data() {
        format!("data {:?}", String::from_utf8_lossy(d))
    } else if let Some(v) = m.body().value() {
        format!("value {v:?}")
    } else {
        "<no body>".into()
    };
    format!(
        "body={body} message-id={:?} to={:?} correlation-id={:?} app-props={:?} annotations={:?}",
        props.and_then(|p| p.message_id.clone()),
        props.and_then(|p| p.to.clone()),
        props.and_then(|p| p.correlation_id.clone()),
        m.app_properties().map(|a| a.0.iter().map(|(k, v)| format!("{}={:?}", k.as_str(), v)).collect::<Vec<_>>()),
        m.message_annotations().map(|a| a.0.iter().map(|(k, v)| format!("{}={:?}", k.as_str(), v)).collect::<Vec<_>>()),
    )
}

/// reply on the management-style receiver: correlation-id = request message-id (same AMQP type)
fn reply(req: &Message, status: i32, desc: &'static str) -> Message {
    let mut r = Message::default();
    let mid: Option<MessageId> = req.properties().and_then(|p| p.message_id.clone());
    r.set_properties(|p| {
        p.correlation_id = mid;
    });
    r.set_app_property("status-code", Variant::Int(status));
    r.set_app_property("status-description", desc);
    r
}

// ---- publish service: gets attaches of *client senders* and their transfers

struct Publish;
struct PublishSvc;

impl ServiceFactory<State<Conn>, LinkMsg> for Publish {
    type Res = ();
    type Error = LinkError;
    type InitError = Infallible;
    type Service = PublishSvc;
    async fn create(&self, _: &State<Conn>) -> Result<PublishSvc, Infallible> {
        Ok(PublishSvc)
    }
}

impl Service<State<Conn>, LinkMsg> for PublishSvc {
    type Res = ();
    type Error = LinkError;

    async fn call(&self, msg: LinkMsg, ctx: Ctx<'_, Self, State<Conn>>) -> Result<(), LinkError> {
        let conn: &Conn = ctx.st().get_ref();
        match msg {
            LinkMsg::Attached(frm, link) => {
                let addr = frm.target().and_then(|t| t.address.clone()).map(|a| a.to_string()).unwrap_or_default();
                let n = norm_addr(&addr);
                println!("[conn{}] attach client-sender name={} target={addr} snd-settle={:?} rcv-settle={:?}", conn.id, frm.name(), frm.0.snd_settle_mode, frm.0.rcv_settle_mode);
                let ok = n == "$cbs" || n == "$management" || n.ends_with("/messages/events") || n.eq_ignore_ascii_case("/messages/devicebound");
                if ok {
                    let _ = link;
                    Ok(())
                } else {
                    Err(LinkError::force_detach().description(format!("unsupported target {addr}")))
                }
            }
            LinkMsg::Transfer(link) => {
                while let Some((mut delivery, tr)) = link.get_delivery() {
                    handle_transfer(conn, &link, &mut delivery, &tr).await;
                }
                Ok(())
            }
            LinkMsg::Detached(link) => {
                println!("[conn{}] client sender detached {}", conn.id, link.name());
                Ok(())
            }
            LinkMsg::DetachedAll(_) => Ok(()),
        }
    }
}

async fn handle_transfer(
    conn: &Conn,
    link: &ReceiverLink,
    delivery: &mut ntex_amqp::Delivery,
    tr: &ntex_amqp::codec::protocol::Transfer,
) {
    let ch = link.session().local_channel_id();
    // find the address this receiver link was attached with
    let addr = link_target(link);
    let Some(m) = decode_msg(tr) else {
        println!("[conn{}] undecodable transfer on {addr}", conn.id);
        delivery.settle(DeliveryState::Accepted(Accepted {}));
        return;
    };
    println!("[conn{}] TRANSFER on {addr} settled={:?}: {}", conn.id, tr.settled(), describe(&m));
    // settle=true + accepted (requirement c)
    delivery.settle(DeliveryState::Accepted(Accepted {}));

    if addr == "$cbs" {
        let op = vstr(m.app_property("operation"));
        let name = vstr(m.app_property("name"));
        let ty = vstr(m.app_property("type"));
        println!("[conn{}] CBS {op} name={name} type={ty} token={:?}", conn.id, m.body().value());
        let n = conn.call_tokio(format!("cbs put-token {name}")).await;
        println!("[conn{}] tokio service answered (events so far: {n})", conn.id);
        let r = reply(&m, 200, "OK");
        match conn.sender(ch, "$cbs") {
            Some(s) => match s.transfer(r).settled().format(0).send().await {
                Ok(_) => println!("[conn{}] CBS reply sent", conn.id),
                Err(e) => println!("[conn{}] CBS reply failed {e:?}", conn.id),
            },
            None => println!("[conn{}] no $cbs receiver link on channel {ch}", conn.id),
        }
    } else if addr == "$management" {
        let op = vstr(m.app_property("operation"));
        let ty = vstr(m.app_property("type"));
        let name = vstr(m.app_property("name"));
        println!("[conn{}] MGMT {op} type={ty} name={name}", conn.id);
        let mut r = reply(&m, 200, "OK");
        let mut map = ntex_amqp::codec::protocol::Map::default();
        if ty == "com.microsoft:partition" {
            map.insert(Variant::from("name"), Variant::String(name.clone().into()));
            map.insert(Variant::from("partition"), Variant::from(vstr(m.app_property("partition"))));
            map.insert(Variant::from("begin_sequence_number"), Variant::Long(0));
            map.insert(Variant::from("last_enqueued_sequence_number"), Variant::Long(1));
            map.insert(Variant::from("last_enqueued_offset"), Variant::from("1"));
            map.insert(Variant::from("last_enqueued_time_utc"), Variant::Timestamp(chrono::Utc::now()));
            map.insert(Variant::from("is_partition_empty"), Variant::Boolean(false));
        } else {
            map.insert(Variant::from("name"), Variant::String(name.clone().into()));
            map.insert(Variant::from("created_at"), Variant::Timestamp(chrono::Utc::now()));
            map.insert(Variant::from("partition_ids"), Variant::List(List(vec![Variant::from("0")])));
        }
        r.set_value(Variant::Map(VariantMap::new(map)));
        match conn.sender(ch, "$management") {
            Some(s) => match s.transfer(r).settled().format(0).send().await {
                Ok(_) => println!("[conn{}] MGMT reply sent", conn.id),
                Err(e) => println!("[conn{}] MGMT reply failed {e:?}", conn.id),
            },
            None => println!("[conn{}] no $management receiver link", conn.id),
        }
    } else {
        let n = conn.call_tokio(format!("message on {addr}: {}", describe(&m))).await;
        println!("[conn{}] stored via tokio service (events: {n})", conn.id);
    }
}

thread_local! {
    static RCV_ADDR: RefCell<HashMap<(u16, u32), String>> = RefCell::new(HashMap::new());
}

fn link_target(link: &ReceiverLink) -> String {
    let key = (link.session().local_channel_id(), link.handle());
    RCV_ADDR.with(|m| m.borrow().get(&key).cloned().unwrap_or_default())
}

// ---- control service: attaches of client receivers (server senders), flow, detach

struct Control;
struct ControlSvc;

impl ServiceFactory<State<Conn>, ControlFrame> for Control {
    type Res = ();
    type Error = LinkError;
    type InitError = Infallible;
    type Service = ControlSvc;
    async fn create(&self, _: &State<Conn>) -> Result<ControlSvc, Infallible> {
        Ok(ControlSvc)
    }
}

impl Service<State<Conn>, ControlFrame> for ControlSvc {
    type Res = ();
    type Error = LinkError;

    async fn call(&self, frame: ControlFrame, ctx: Ctx<'_, Self, State<Conn>>) -> Result<(), LinkError> {
        let conn: &Conn = ctx.st().get_ref();
        match frame.kind() {
            ControlFrameKind::AttachReceiver(frm, _resp, link) => {
                let addr = frm.target().and_then(|t| t.address.clone()).map(|a| a.to_string()).unwrap_or_default();
                let key = (link.session().local_channel_id(), link.handle());
                RCV_ADDR.with(|m| m.borrow_mut().insert(key, norm_addr(&addr)));
            }
            ControlFrameKind::AttachSender(frm, _resp, link) => {
                let src = frm.source().and_then(|s| s.address.clone()).map(|a| a.to_string()).unwrap_or_default();
                let n = norm_addr(&src);
                println!(
                    "[conn{}] attach client-receiver name={} source={src} filter={:?} rcv-settle={:?}",
                    conn.id,
                    frm.name(),
                    frm.source().and_then(|s| s.filter.clone()),
                    frm.0.rcv_settle_mode
                );
                let ch = link.session().local_channel_id();
                // ntex-amqp treats the peer's max-message-size 0 (= unlimited per spec, sent by uamqp-c) as a 0-byte limit
                if link.max_message_size() == Some(0) {
                    println!("[conn{}] peer max-message-size=0 -> treating as unlimited", conn.id);
                    link.set_max_message_size(u32::MAX);
                }
                conn.senders.borrow_mut().insert((ch, n.clone()), link.clone());
                if n.contains("/Partitions/") || n.contains("/partitions/") {
                    let link = link.clone();
                    let id = conn.id;
                    ntex_rt::spawn(async move { send_events(id, link).await });
                }
            }
            ControlFrameKind::Flow(flow, link) => {
                log::debug!("[conn{}] flow on {} credit={:?}", conn.id, link.name(), flow.link_credit());
            }
            ControlFrameKind::RemoteDetachSender(_, l) => println!("[conn{}] client receiver detached {}", conn.id, l.name()),
            ControlFrameKind::Closed => println!("[conn{}] connection closed by peer", conn.id),
            ControlFrameKind::Disconnected(e) => println!("[conn{}] disconnected {e:?} at {}", conn.id, chrono::Utc::now().format("%T%.3f")),
            other => log::debug!("[conn{}] control {other:?}", conn.id),
        }
        Ok(())
    }
}

async fn send_events(id: u64, link: SenderLink) {
    for i in 0..2u64 {
        if !link.ready().await {
            println!("[conn{id}] eventhub link closed before credit");
            return;
        }
        let mut m = Message::with_body(Bytes::from(format!("{{\"temp\":{}}}", 20 + i)));
        m.set_properties(|p| {
            p.message_id = Some(MessageId::String(ByteString::from(format!("m{i}"))));
        });
        m.set_app_property("a", "1");
        m.add_message_annotation(Symbol::from("x-opt-sequence-number"), Variant::Long(i as i64));
        m.add_message_annotation(Symbol::from("x-opt-offset"), Variant::from(format!("{}", i * 100)));
        m.add_message_annotation(Symbol::from("x-opt-enqueued-time"), Variant::Timestamp(chrono::Utc::now()));
        m.add_message_annotation(Symbol::from("iothub-connection-device-id"), Variant::from("d1"));
        match link.transfer(m).settled().format(0).send().await {
            Ok(_) => println!("[conn{id}] sent event {i} to {}", link.name()),
            Err(e) => println!("[conn{id}] send event failed {e:?}"),
        }
    }
}

// ---- handshake: plain AMQP and SASL (MSSBCBS, PLAIN, ANONYMOUS)

async fn handshake(
    hs: Handshake,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
) -> Result<HandshakeAck<Conn>, String> {
    let id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    // TLS peer certificate chain is reachable here through the io query API
    let chain = hs.io().query::<ntex_tls::rustls::PeerCertChain<'static>>();
    let sni = hs.io().query::<ntex_tls::Servername>();
    println!(
        "[conn{id}] handshake kind={} peer-cert-chain-len={:?} sni={:?}",
        match &hs { Handshake::Amqp(_) => "plain-amqp", Handshake::Sasl(_) => "sasl" },
        chain.as_ref().map(|c| c.0.len()),
        sni.as_ref().map(|s| s.0.clone()),
    );
    let opened: HandshakeAmqpOpened<()> = match hs {
        Handshake::Amqp(h) => h.open().await.map_err(|e| format!("{e:?}"))?,
        Handshake::Sasl(s) => {
            let init = s
                .mechanism("MSSBCBS")
                .mechanism("PLAIN")
                .mechanism("ANONYMOUS")
                .init()
                .await
                .map_err(|e| format!("{e:?}"))?;
            println!(
                "[conn{id}] SASL mechanism={} hostname={:?} initial-response={:?}",
                init.mechanism(),
                init.hostname(),
                init.initial_response().map(|r| String::from_utf8_lossy(r).replace('\0', "\\0"))
            );
            let ok = init.outcome(SaslCode::Ok).await.map_err(|e| format!("{e:?}"))?;
            ok.open().await.map_err(|e| format!("{e:?}"))?
        }
    };
    println!("[conn{id}] OPEN from client: container-id={} hostname={:?} idle={:?}", opened.frame().container_id(), opened.frame().hostname(), opened.frame().idle_time_out());

    // external close: tokio side sends on the oneshot, an ntex-local task closes the connection
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    shared.closers.lock().unwrap().insert(id, tx);
    let cref = opened.sink().get_ref();
    ntex_rt::spawn(async move {
        if let Ok(reason) = rx.await {
            println!("[conn{id}] closing on request from tokio side: {reason} at {}", chrono::Utc::now().format("%T%.3f"));
            let _ = cref
                .close_with_error(LinkError::force_detach().description(reason))
                .await;
            cref.force_close();
        }
    });

    Ok(opened.ack(Conn { id, shared, rt, senders: RefCell::new(HashMap::new()) }))
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let dir = std::env::var("CERT_DIR").unwrap_or_else(|_| "/work/proto-ntex/certs".into());
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(format!("{dir}/server.pem")).unwrap()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(format!("{dir}/server.key")).unwrap()))
        .unwrap()
        .unwrap();
    let ca = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(format!("{dir}/ca.pem")).unwrap()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // optional client certs (X.509 devices) – chain visible to the handshake handler
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(cfg)
}

fn run_ntex(lst: std::net::TcpListener, uds: std::os::unix::net::UnixListener, shared: Arc<Shared>, rt: tokio::runtime::Handle) {
    let tls = tls_config();
    let (shared2, rt2) = (shared.clone(), rt.clone());
    let sys = ntex_rt::System::new("amqp", ntex_net::DefaultRuntime);
    sys.block_on(async move {
        ntex_server::net::ServerBuilder::default()
            .disable_signals()
            .workers(1)
            .listen("amqps", lst, SharedCfg::new("AMQP"), async move |_| {
                let shared = shared.clone();
                let rt = rt.clone();
                let tls = tls.clone();
                ntex_service::service(ntex_tls::rustls::TlsAcceptor::new(tls))
                    .map_err(|e| println!("tls error {e:?}"))
                    .and_then(
                        server::Server::builder(async move |hs: Handshake| {
                            handshake(hs, shared.clone(), rt.clone()).await
                        })
                        .control(Control)
                        .build(Publish)
                        .map_err(|e| println!("amqp server error {e:?}")),
                    )
            })
            .unwrap()
            // AMQP over WebSocket: tokio terminates TLS+WS and pipes the byte stream into this UDS
            .listen_uds("amqp-ws-bridge", uds, SharedCfg::new("AMQPWS"), async move |_| {
                let shared = shared2.clone();
                let rt = rt2.clone();
                server::Server::builder(async move |hs: Handshake| handshake(hs, shared.clone(), rt.clone()).await)
                    .control(Control)
                    .build(Publish)
                    .map_err(|e| println!("amqp(ws) server error {e:?}"))
            })
            .unwrap()
            .run()
            .await
    })
    .unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    env_logger::init();
    let shared = Arc::new(Shared::default());
    let addr = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
    let lst = std::net::TcpListener::bind(&addr).unwrap();
    println!("LISTENING {}", lst.local_addr().unwrap());
    let rt = tokio::runtime::Handle::current();
    let sh = shared.clone();
    let uds_path = format!("/tmp/proto-ntex-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&uds_path);
    let uds = std::os::unix::net::UnixListener::bind(&uds_path).unwrap();
    std::thread::spawn(move || run_ntex(lst, uds, sh, rt));
    tokio::spawn(ws_listener(tls_config(), uds_path));

    // tokio-side "admin": close connection N after CLOSE_AFTER secs (revocation test)
    if let Ok(spec) = std::env::var("CLOSE_CONN") {
        // format: id:secs
        let (id, secs) = spec.split_once(':').unwrap();
        let (id, secs): (u64, u64) = (id.parse().unwrap(), secs.parse().unwrap());
        let sh = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
            let tx = sh.closers.lock().unwrap().remove(&id);
            match tx {
                Some(tx) => {
                    println!("[tokio] revoking conn{id} at {}", chrono::Utc::now().format("%T%.3f"));
                    let _ = tx.send("revoked".into());
                }
                None => println!("[tokio] conn{id} not found"),
            }
        });
    }
    tokio::signal::ctrl_c().await.ok();
}

// ---------------------------------------------------------------- tokio-side WebSocket front (AMQPWSB10)

async fn ws_listener(tls: Arc<rustls::ServerConfig>, uds_path: String) {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message as WsMsg;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    let addr = std::env::var("WS_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
    let lst = tokio::net::TcpListener::bind(&addr).await.unwrap();
    println!("WS LISTENING {}", lst.local_addr().unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, peer)) = lst.accept().await else { continue };
        let acceptor = acceptor.clone();
        let uds_path = uds_path.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => return println!("[ws] tls error {e}"),
            };
            let certs = tls.get_ref().1.peer_certificates().map(|c| c.len());
            let cb = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                let proto = req.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
                println!("[ws] upgrade from {peer} path={} subprotocols={proto:?} peer-certs={certs:?}", req.uri().path());
                if proto.split(',').any(|p| p.trim() == "AMQPWSB10") {
                    resp.headers_mut().insert("Sec-WebSocket-Protocol", "AMQPWSB10".parse().unwrap());
                }
                Ok(resp)
            };
            let ws = match tokio_tungstenite::accept_hdr_async(tls, cb).await {
                Ok(ws) => ws,
                Err(e) => return println!("[ws] upgrade error {e}"),
            };
            let uds = match tokio::net::UnixStream::connect(&uds_path).await {
                Ok(u) => u,
                Err(e) => return println!("[ws] uds connect error {e}"),
            };
            let (mut wsink, mut wstream) = ws.split();
            let (mut ur, mut uw) = uds.into_split();
            let up = async move {
                while let Some(Ok(msg)) = wstream.next().await {
                    match msg {
                        WsMsg::Binary(b) => {
                            if uw.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        WsMsg::Close(_) => break,
                        _ => {}
                    }
                }
                let _ = uw.shutdown().await;
            };
            let down = async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if wsink.send(WsMsg::Binary(buf[..n].to_vec().into())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = wsink.close().await;
            };
            tokio::join!(up, down);
            println!("[ws] bridge for {peer} finished");
        });
    }
}
