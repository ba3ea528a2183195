//! The MQTT device listener (azure-protocol 1): TLS with a recorded client chain, the CONNECT
//! decision of `certhub_core::authenticate`, then the session: telemetry written durably
//! before PUBACK, subscriptions to the identity's own topics, keep-alive, and kicks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeMap, HashMap};

use certhub_core::{
    AuthenticatedDevice, ClientId, ConnectFields, Context, DevicePublish, ModuleId, Registered,
    authenticate, c2d_topic, classify_publish, subscription_allowed, telemetry_topic,
};
use certhub_pki::{CertificateDer, Thumbprints, UnixTime};
use certhub_store::{AuditRecord, C2dOutcome, TelemetryRecord};
use futures_util::{FutureExt, SinkExt, StreamExt};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{Codec, ConnectAck, ConnectAckReason, Packet, SubscribeReturnCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::gate::{Eviction, Gate, GateLimits, Pending};
use crate::refusals::{Record, RefusalLimits, Refusals};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::codec::Framed;

use crate::sessions::{Mail, MethodReply, Outbound};
use crate::state::AppState;

/// Telemetry larger than Azure's 256 KB is refused; the packet may carry a topic besides.
const MAX_PACKET: u32 = 256 * 1024 + 4096;
/// Initial read and write buffer of a session's codec.
const IDLE_BUFFER: usize = 1024;
/// A connection must send its ClientHello this soon after TCP accepts it (it is the first
/// thing a TLS client sends), and finish its handshake within `HANDSHAKE_TIMEOUT` of the
/// accept.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Azure's server-side keep-alive cap.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(1767);

type Conn = Framed<tokio_rustls::server::TlsStream<TcpStream>, Codec>;

/// A write that the device does not read within this time closes its session (a slow or
/// stalled reader holds no buffers forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits of a device listener.
#[derive(Debug, Clone, Copy)]
pub struct MqttOptions {
    /// Live sessions at most; a CONNECT beyond it is answered CONNACK 3 (server unavailable),
    /// which the Azure SDKs retry.
    pub max_sessions: usize,
    /// Connections that have not yet sent CONNECT, per source address and in all.
    pub pending: GateLimits,
    /// Refused CONNECTs per source address and per client id, and their audit records.
    pub refusals: RefusalLimits,
}

impl Default for MqttOptions {
    fn default() -> Self {
        Self {
            max_sessions: 100_000,
            pending: GateLimits::default(),
            refusals: RefusalLimits::default(),
        }
    }
}

/// What a device connection needs of its listener.
struct Listener {
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    slots: Arc<Semaphore>,
    gate: Arc<Gate>,
    refusals: Arc<Refusals>,
}

/// Serves devices on `listener` until `shutdown` completes.
pub async fn serve_mqtt(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    options: MqttOptions,
    shutdown: impl Future<Output = ()>,
) {
    let listener_state = Arc::new(Listener {
        tls,
        state: state.clone(),
        slots: Arc::new(Semaphore::new(options.max_sessions)),
        gate: Gate::new(options.pending),
        refusals: Arc::new(Refusals::new(options.refusals)),
    });
    // Repeated refusals are written as one record with their count when their window ends.
    let flusher = {
        let (refusals, state) = (listener_state.refusals.clone(), state.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for r in refusals.flush(now_ms()) {
                    let detail = format!(
                        "{} identical refusals from {} between {} and {}; the last: {}",
                        r.count,
                        r.source,
                        certhub_core::azure_time(r.first_ms),
                        certhub_core::azure_time(r.last_ms),
                        r.detail
                    );
                    let record = AuditRecord::new(
                        r.last_ms,
                        "device",
                        "device.connect",
                        &format!("devices/{}", bounded(&r.client_id, 256)),
                        r.reason,
                        &bounded(&detail, 4096),
                    )
                    .with_count(i64::try_from(r.count).unwrap_or(i64::MAX));
                    state.bookkeeper().audit(record).await;
                }
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if listener_state.refusals.source_blocked(peer.ip(), now_ms()) {
            // Closed before any TLS work: this source's recent connections were all refused.
            state.metrics().dropped("mqtt", "refusal-rate-source");
            drop(tcp);
            continue;
        }
        let pending = listener_state.gate.admit(peer.ip());
        tokio::spawn(handshake(tcp, peer, pending, listener_state.clone()));
    }
    flusher.abort();
}

/// Waits for what `pending`'s client owes (`what`), unless the gate closes the connection
/// first to make room or the deadline passes.
async fn owed<T>(
    pending: &mut Pending,
    deadline: tokio::time::Instant,
    what: impl Future<Output = T>,
    state: &AppState,
) -> Option<T> {
    tokio::select! {
        evicted = &mut pending.evicted => {
            if let Ok(why) = evicted {
                state.metrics().dropped("mqtt", Eviction::as_str(why));
            }
            None
        }
        r = tokio::time::timeout_at(deadline, what) => r.ok(),
    }
}

/// TLS up to an established connection. Waiting for the device costs a socket and a place at
/// the gate, nothing a legitimate device waits for: there is no handshake slot to hold.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    mut pending: Pending,
    listener: Arc<Listener>,
) {
    let accepted = tokio::time::Instant::now();
    let state = &listener.state;
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let Some(Ok(start)) = owed(&mut pending, accepted + CLIENT_HELLO_TIMEOUT, lazy, state).await
    else {
        tracing::debug!(%peer, "no valid ClientHello in time");
        return;
    };
    let tls = match owed(
        &mut pending,
        accepted + HANDSHAKE_TIMEOUT,
        start.into_stream(listener.tls.clone()),
        state,
    )
    .await
    {
        Some(Ok(tls)) => tls,
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "device TLS handshake failed");
            return;
        }
        None => {
            tracing::debug!(%peer, "device TLS handshake timed out or was evicted");
            return;
        }
    };
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let tls13 = tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    // Small buffers for CONNECT (the read buffer grows for a large packet; the session
    // drops both once admitted): Framed's default 8 KiB read and write buffers were a
    // third of an idle session's heap.
    // On the heap once: the futures that own it hold a pointer (an async fn keeps its
    // arguments for its whole life, so a connection passed by value through two of
    // them would take its 1.3 KB twice).
    let conn = Box::new(Framed::with_capacity(
        tls,
        Codec::new(MAX_PACKET),
        IDLE_BUFFER,
    ));
    // A task of its own: this one's memory (sized for the handshake's state) is freed,
    // and the session's is sized for the session alone.
    tokio::spawn(session(conn, chain, peer, pending, listener, tls13));
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// What the operator sees of a refused certificate: subjects and thumbprints, leaf first.
fn presented(chain: &[CertificateDer<'_>]) -> String {
    if chain.is_empty() {
        return "no certificate".into();
    }
    chain
        .iter()
        .map(|c| {
            let subject = certhub_pki::describe_certificate(c)
                .map(|i| i.subject)
                .unwrap_or_else(|_| "(unparsable)".into());
            format!("{subject} [SHA-1 {}]", Thumbprints::of(c).sha1)
        })
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// Cuts text a client controls (client ids can be as long as a packet) to a size fit for a
/// log record.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

async fn audit(state: &AppState, op: &str, cn: &str, outcome: &str, detail: String) {
    let record = AuditRecord::new(
        now_ms(),
        "device",
        op,
        &format!("devices/{}", bounded(cn, 256)),
        outcome,
        &bounded(&detail, 4096),
    );
    state.bookkeeper().audit(record).await;
}

async fn lookup(
    state: &AppState,
    id: &ClientId,
) -> Result<Option<Registered>, certhub_store::StoreError> {
    let Some(device) = state.store().device_for_connect(&id.device).await? else {
        return Ok(None);
    };
    let module = match &id.module {
        Some(m) => match state.store().module_for_connect(&id.device, m).await? {
            Some(m) => Some(m),
            None => return Ok(None),
        },
        None => None,
    };
    Ok(Some(Registered { device, module }))
}

/// Keeps `lastActivityTime` (connect and disconnect; not per message, which would cost a
/// write per publish).
async fn touch(state: &AppState, id: &ClientId) {
    let module = id.module.as_ref().map_or("", ModuleId::as_str);
    state
        .bookkeeper()
        .activity(id.device.as_str(), module, now_ms())
        .await;
}

/// Sends a packet; false when the device did not take it within `WRITE_TIMEOUT` or the
/// connection failed.
async fn send(conn: &mut Conn, packet: Packet) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, conn.send(packet)).await,
        Ok(Ok(()))
    )
}

async fn connack(conn: &mut Conn, code: ConnectAckReason) {
    let _ = send(
        conn,
        Packet::ConnectAck(ConnectAck {
            return_code: code,
            session_present: false,
        }),
    )
    .await;
}

/// Which topic of a packet holds U+0000, if one does: the receiver must close the connection
/// (MQTT 3.1.1 1.5.3).
fn nul_in(packet: &Packet) -> Option<&'static str> {
    let nul = |t: &str| t.contains('\0');
    match packet {
        Packet::Publish(p) if nul(&p.topic) => Some("the PUBLISH topic"),
        Packet::Subscribe { topic_filters, .. } if topic_filters.iter().any(|(f, _)| nul(f)) => {
            Some("a SUBSCRIBE topic filter")
        }
        Packet::Unsubscribe { topic_filters, .. } if topic_filters.iter().any(|f| nul(f)) => {
            Some("an UNSUBSCRIBE topic filter")
        }
        _ => None,
    }
}

/// What identifies the credential a device presented, for telling a repeat of a refused
/// attempt from a different one: the SHA-256 of the leaf, else of the SAS password.
fn credential(chain: &[CertificateDer<'_>], password: Option<&[u8]>) -> [u8; 32] {
    let bytes: &[u8] = match (chain.first(), password) {
        (Some(leaf), _) => leaf.as_ref(),
        (None, Some(p)) => p,
        (None, None) => b"",
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Audits a refused CONNECT, unless it repeats one written within the collapse window (it is
/// counted into that record's summary).
async fn refused(
    listener: &Listener,
    peer: SocketAddr,
    client_id: &str,
    credential: &[u8; 32],
    reason: &'static str,
    detail: String,
) {
    let record =
        listener
            .refusals
            .refused(peer.ip(), client_id, credential, reason, &detail, now_ms());
    if record == Record::Write {
        audit(&listener.state, "device.connect", client_id, reason, detail).await;
    }
}

/// What the CONNECT decision hands to the live session: only what the session needs, so that
/// nothing of the connection phase (the presented chain, the registry row, settings and
/// policies, the CONNECT packet and its buffer) stays in memory for the session's lifetime.
struct Admitted {
    device: AuthenticatedDevice,
    ticket: crate::sessions::Ticket,
    subs: BTreeMap<String, u8>,
    keep_alive: Duration,
    /// The will's topic and message, copied out of the CONNECT packet.
    will: Option<(String, Vec<u8>)>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// A device's connection after its TLS handshake: the CONNECT decision, then the session.
async fn session(
    mut conn: Box<Conn>,
    chain: Vec<CertificateDer<'static>>,
    peer: SocketAddr,
    pending: Pending,
    listener: Arc<Listener>,
    tls13: bool,
) {
    let state = listener.state.clone();
    // The connection phase runs in its own allocation, freed when it ends.
    let Some(admitted) = Box::pin(admit(&mut conn, chain, peer, pending, &listener, tls13)).await
    else {
        return;
    };
    // The CONNECT packet's buffer is no longer needed: an idle session holds none (it grows
    // again with the next packet).
    if conn.read_buffer().is_empty() {
        drop(std::mem::take(conn.read_buffer_mut()));
    }
    if conn.write_buffer().is_empty() {
        drop(std::mem::take(conn.write_buffer_mut()));
    }
    live(conn, admitted, state).await;
}

/// Reads CONNECT and decides; on success the device is registered and has its CONNACK.
async fn admit(
    conn: &mut Conn,
    chain: Vec<CertificateDer<'static>>,
    peer: SocketAddr,
    mut pending: Pending,
    listener: &Listener,
    tls13: bool,
) -> Option<Admitted> {
    let state = &listener.state;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let connect = match owed(&mut pending, deadline, conn.next(), state).await {
        Some(Some(Ok((Packet::Connect(c), _)))) => c,
        _ => return None,
    };
    if [
        Some(connect.client_id.as_ref()),
        connect.username.as_deref(),
        connect.last_will.as_ref().map(|w| w.topic.as_ref()),
    ]
    .into_iter()
    .flatten()
    .any(|s: &str| s.contains('\0'))
    {
        // MQTT 3.1.1 1.5.3: the connection is closed, no CONNACK.
        tracing::debug!(%peer, "CONNECT with U+0000 in a string");
        return None;
    }
    // The device has said who it claims to be; what follows is the hub's work.
    drop(pending);
    let Ok(slot) = listener.slots.clone().try_acquire_owned() else {
        let client_id = connect.client_id.to_string();
        tracing::warn!(client_id, %peer, "device session limit reached");
        state.metrics().connect("overloaded");
        audit(
            state,
            "device.connect",
            &client_id,
            "overloaded",
            format!("the hub's device session limit is reached; CONNACK 3 (the device retries); peer {peer}"),
        )
        .await;
        connack(conn, ConnectAckReason::ServiceUnavailable).await;
        return None;
    };
    let client_id = connect.client_id.to_string();
    let username = connect.username.as_ref().map(|u| u.to_string());
    let credential = credential(&chain, connect.password.as_deref());
    if let Some(r) = listener
        .refusals
        .remembered(&client_id, &credential, now_ms())
    {
        // This client id used up its refusals and presents what was refused last time: the
        // same answer, without a registry read or a chain check.
        state.metrics().dropped("mqtt", "refusal-rate-client-id");
        state.metrics().connect(r.reason);
        refused(listener, peer, &client_id, &credential, r.reason, r.detail).await;
        connack(conn, ConnectAckReason::NotAuthorized).await;
        return None;
    }
    let registered = match ClientId::parse(&client_id) {
        Ok(id) => match Box::pin(lookup(state, &id)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "registry lookup failed");
                connack(conn, ConnectAckReason::ServiceUnavailable).await;
                return None;
            }
        },
        Err(_) => None,
    };
    let trust = state.trust();
    let settings = match Box::pin(state.settings()).await {
        Ok(s) => s,
        Err(_) => {
            connack(conn, ConnectAckReason::ServiceUnavailable).await;
            return None;
        }
    };
    if settings.min_tls_version == "1.3" && !tls13 {
        // The setting changes at run time, so it is applied here rather than in the TLS
        // configuration; the device learns nothing but CONNACK 5.
        let detail = format!(
            "the hub requires TLS 1.3 (minTlsVersion) and the device used TLS 1.2; peer {peer}"
        );
        state.metrics().connect("tls-version");
        audit(state, "device.connect", &client_id, "tls-version", detail).await;
        connack(conn, ConnectAckReason::NotAuthorized).await;
        return None;
    }
    let policies = state.policies();
    let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms().max(0) as u64));
    let ctx = Context {
        trust: &trust,
        settings: &settings,
        policies: &policies,
        hostnames: state.hostnames(),
        now,
    };
    let fields = ConnectFields {
        client_id: &client_id,
        username: username.as_deref(),
        password: connect.password.as_deref(),
    };
    let device = match authenticate(fields, &chain, registered.as_ref(), &ctx) {
        Ok(d) => d,
        Err(refusal) => {
            tracing::info!(reason = refusal.reason, client_id, %peer, "device refused");
            let detail = format!(
                "{}; presented: {}; peer {peer}",
                refusal.detail,
                presented(&chain)
            );
            state.metrics().connect(refusal.reason);
            refused(
                listener,
                peer,
                &client_id,
                &credential,
                refusal.reason,
                detail,
            )
            .await;
            connack(conn, ConnectAckReason::NotAuthorized).await;
            return None;
        }
    };
    // The chain was for this decision; a session lives long, so it does not keep a copy.
    drop(chain);
    let cn = device.id().cn();
    let ticket = state.sessions().register(&cn, device.ca(), device.switch());
    state.metrics().connect("ok");
    let resumed = state
        .sessions()
        .resume(&cn, ticket.conn, connect.clean_session);
    if resumed.discarded
        && let Err(e) = Box::pin(state.store().delete_mqtt_session(&cn)).await
    {
        tracing::warn!(client_id = cn, error = %e, "persistent session not forgotten in the store");
    }
    let _ = send(
        conn,
        Packet::ConnectAck(ConnectAck {
            return_code: ConnectAckReason::ConnectionAccepted,
            session_present: resumed.present,
        }),
    )
    .await;
    tracing::info!(client_id = cn, method = device.auth_method(), %peer, "device connected");
    audit(
        state,
        "device.connect",
        &cn,
        "ok",
        format!(
            "{} via {}{}{}; peer {peer}",
            cn,
            device.auth_method(),
            device
                .policy()
                .map(|p| format!(" (policy {p})"))
                .unwrap_or_default(),
            if device.ca().is_empty() {
                String::new()
            } else {
                format!(" (CA {})", device.ca())
            }
        ),
    )
    .await;
    let keep_alive = if connect.keep_alive == 0 {
        MAX_KEEP_ALIVE
    } else {
        Duration::from_millis(u64::from(connect.keep_alive) * 1500).min(MAX_KEEP_ALIVE)
    };
    touch(state, device.id()).await;
    if !device.ca().is_empty() {
        let module = device.id().module.as_ref().map_or("", ModuleId::as_str);
        state
            .bookkeeper()
            .ca(device.id().device.as_str(), module, device.ca())
            .await;
    }
    let will = connect
        .last_will
        .as_ref()
        .map(|w| (w.topic.to_string(), w.message.to_vec()));
    Some(Admitted {
        device,
        ticket,
        subs: resumed.subs,
        keep_alive,
        will,
        _slot: slot,
    })
}

/// The live session, until it ends; then the will, the bookkeeping and the audit record.
async fn live(mut conn: Box<Conn>, admitted: Admitted, state: AppState) {
    let Admitted {
        device,
        ticket,
        subs,
        keep_alive,
        will,
        _slot,
    } = admitted;
    let cn = device.id().cn();
    let end = Session::new(&device, &state, ticket.conn, subs)
        .run(&mut conn, keep_alive, &ticket.mailbox)
        .await;
    state.sessions().unregister(&cn, ticket.conn);
    // Boxed: the epilogue's futures would otherwise take room in every session's task.
    Box::pin(ended(&state, &device, &cn, end, will)).await;
}

/// A message of `id` for the telemetry log, enqueued now.
fn telemetry_record(
    id: &ClientId,
    props: &certhub_core::MessageProperties,
    body: Vec<u8>,
) -> TelemetryRecord {
    TelemetryRecord {
        seq: 0,
        device_id: id.device.to_string(),
        module_id: id.module.as_ref().map(ModuleId::to_string),
        enqueued_ms: now_ms(),
        properties: serde_json::to_string(props).unwrap_or_default(),
        body,
    }
}

/// After a session: the will, last activity and the audit record.
async fn ended(
    state: &AppState,
    device: &AuthenticatedDevice,
    cn: &str,
    end: End,
    will: Option<(String, Vec<u8>)>,
) {
    if let (End::Closed(_) | End::TokenExpired(_), Some((will_topic, will_message))) = (&end, will)
    {
        // The link dropped without DISCONNECT: the will is forwarded as telemetry, marked
        // iothub-MessageType=Will (azure-protocol 1.2), if it names the device's own topic.
        match telemetry_topic(device.id(), &will_topic) {
            Ok(mut props) => {
                props
                    .application
                    .insert("iothub-MessageType".into(), "Will".into());
                let record = telemetry_record(device.id(), &props, will_message);
                if let Err(e) = state.telemetry().append(record).await {
                    tracing::warn!(client_id = cn, error = %e, "will message not stored");
                }
            }
            Err(r) => tracing::info!(client_id = cn, reason = r.0, "will message ignored"),
        }
    }
    touch(state, device.id()).await;
    match end {
        End::Clean => {}
        End::Closed(reason) => {
            tracing::info!(client_id = cn, reason, "device session closed");
            audit(state, "device.disconnect", cn, "closed", reason).await;
        }
        End::TokenExpired(se) => {
            tracing::info!(
                client_id = cn,
                "device session closed: its SAS token expired"
            );
            let detail = format!(
                "the {} token the session was opened with expired at {}; the device must connect again with a new token",
                device.auth_method(),
                certhub_core::azure_time(se.saturating_mul(1000))
            );
            audit(state, "device.disconnect", cn, "sas-token-expired", detail).await;
        }
    }
}

enum End {
    Clean,
    Closed(String),
    /// The SAS token's expiry (unix seconds) passed.
    TokenExpired(i64),
}

/// Cloud-to-device messages sent and not yet acknowledged, per session at most.
const C2D_WINDOW: usize = 16;
/// QoS 1 publishes from a device whose PUBACK waits (for the telemetry commit), at most; past
/// it the session reads no more until the oldest is acknowledged.
const UNACKED_IN: usize = 128;

/// A PUBACK owed to the device: at once, or when its telemetry is durable.
struct Owed {
    packet_id: std::num::NonZeroU16,
    committed: Option<crate::telemetry::Committed>,
}

/// The oldest owed PUBACK, once it may be sent (PUBACKs go out in the order the PUBLISHes came,
/// MQTT 3.1.1 4.6). Cancel-safe: nothing is removed until it completes.
async fn next_ack(
    owed: &mut std::collections::VecDeque<Owed>,
) -> (std::num::NonZeroU16, Result<bool, String>) {
    let Some(front) = owed.front_mut() else {
        return std::future::pending().await;
    };
    let result = match front.committed.as_mut() {
        Some(c) => c.await.map(|_| true),
        None => Ok(false),
    };
    let packet_id = front.packet_id;
    owed.pop_front();
    (packet_id, result)
}

/// A live session's own state.
struct Session<'a> {
    device: &'a AuthenticatedDevice,
    state: &'a AppState,
    conn_no: u64,
    cn: String,
    /// Its subscriptions, as granted.
    subs: BTreeMap<String, u8>,
    /// C2D messages sent and not acknowledged: packet id -> queue id.
    inflight: HashMap<u16, i64>,
    /// The highest queue id sent in this session.
    c2d_cursor: i64,
    next_packet_id: u16,
    /// PUBACKs owed, oldest first.
    owed: std::collections::VecDeque<Owed>,
}

impl<'a> Session<'a> {
    fn new(
        device: &'a AuthenticatedDevice,
        state: &'a AppState,
        conn_no: u64,
        subs: BTreeMap<String, u8>,
    ) -> Self {
        Self {
            device,
            state,
            conn_no,
            cn: device.id().cn(),
            subs,
            inflight: HashMap::new(),
            c2d_cursor: 0,
            next_packet_id: 0,
            owed: std::collections::VecDeque::new(),
        }
    }

    fn id(&self) -> &ClientId {
        self.device.id()
    }

    /// The C2D subscription of a device; modules receive no C2D (azure-protocol 1.10).
    fn wants_c2d(&self) -> bool {
        self.id().module.is_none()
            && self.subs.contains_key(&format!(
                "devices/{}/messages/devicebound/#",
                self.id().device
            ))
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    async fn run(
        mut self,
        conn: &mut Conn,
        keep_alive: Duration,
        mailbox: &crate::sessions::Mailbox,
    ) -> End {
        // A resumed persistent session gets what was queued while it was away.
        if let Err(end) = Box::pin(self.deliver_c2d(conn)).await {
            return end;
        }
        // The keep-alive counts from the device's last packet: traffic to the device does not
        // extend it. One timer for the session, moved on only when it fires (a packet just
        // notes the time: no timer work per message).
        let mut last_packet = tokio::time::Instant::now();
        // A SAS session ends when its token does (Azure's rule); the same timer serves both.
        let token_end = self.device.expires().map(|se| {
            let left_ms = se.saturating_mul(1000).saturating_sub(now_ms()).max(0);
            last_packet + Duration::from_millis(left_ms as u64)
        });
        let next_due = |due: tokio::time::Instant| token_end.map_or(due, |t| t.min(due));
        let expiry = tokio::time::sleep_until(next_due(last_packet + keep_alive));
        tokio::pin!(expiry);
        loop {
            let packet = tokio::select! {
                mail = mailbox.next() => match mail {
                    Mail::Kicked(reason) => return End::Closed(reason),
                    Mail::Work(work) => {
                        if let Err(end) = Box::pin(self.outbound(conn, work)).await {
                            return end;
                        }
                        continue;
                    }
                },
                (packet_id, result) = next_ack(&mut self.owed), if !self.owed.is_empty() => {
                    if let Err(end) = self.acks(conn, packet_id, result).await {
                        return end;
                    }
                    continue;
                }
                () = &mut expiry => {
                    let now = tokio::time::Instant::now();
                    if token_end.is_some_and(|t| now >= t) {
                        return End::TokenExpired(self.device.expires().unwrap_or_default());
                    }
                    let due = last_packet + keep_alive;
                    if now >= due {
                        return End::Closed("keep-alive expired".into());
                    }
                    expiry.as_mut().reset(next_due(due));
                    continue;
                }
                p = conn.next(), if self.owed.len() < UNACKED_IN => p,
            };
            let packet = match packet {
                None => return End::Closed("the device closed the connection".into()),
                Some(Err(e)) => return End::Closed(format!("protocol error: {e}")),
                Some(Ok((p, _))) => p,
            };
            if let Some(what) = nul_in(&packet) {
                return End::Closed(format!(
                    "protocol error: {what} contains U+0000, which MQTT 3.1.1 forbids (1.5.3)"
                ));
            }
            last_packet = tokio::time::Instant::now();
            let packet = match packet {
                Packet::Publish(p) => match self.try_telemetry(p) {
                    None => continue,
                    Some(p) => Packet::Publish(p),
                },
                other => other,
            };
            // Boxed: a packet's handling is short-lived, and inline its future would take room
            // in every idle session.
            if let Err(end) = Box::pin(self.packet(conn, packet)).await {
                return end;
            }
        }
    }

    /// Sends the PUBACK that is due and every later one already due, then flushes once: a
    /// commit usually completes many of a session's messages, and one TLS record and one write
    /// carry all their PUBACKs.
    async fn acks(
        &mut self,
        conn: &mut Conn,
        packet_id: std::num::NonZeroU16,
        result: Result<bool, String>,
    ) -> Result<(), End> {
        let mut due = Some((packet_id, result));
        while let Some((packet_id, result)) = due.take() {
            match result {
                Ok(telemetry) => {
                    if telemetry {
                        self.state.metrics().telemetry();
                    }
                    queue(conn, Packet::PublishAck { packet_id }).await?;
                }
                // Not durable: no PUBACK; the device sends it again.
                Err(e) => return Err(End::Closed(format!("telemetry not stored: {e}"))),
            }
            due = next_ack(&mut self.owed).now_or_never();
        }
        flush(conn).await
    }

    async fn packet(&mut self, conn: &mut Conn, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => self.publish(conn, p).await,
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => {
                let mut status = Vec::new();
                let mut granted = Vec::new();
                for (filter, qos) in &topic_filters {
                    if let Err(r) = subscription_allowed(self.id(), filter) {
                        return Err(End::Closed(format!("topic-not-allowed: {}", r.0)));
                    }
                    // QoS 2 is granted as 1 (azure-protocol 1.4).
                    let q = if *qos == QoS::AtMostOnce { 0 } else { 1 };
                    status.push(SubscribeReturnCode::Success(if q == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    }));
                    granted.push((filter.to_string(), q));
                }
                for (f, q) in &granted {
                    self.subs.insert(f.clone(), *q);
                }
                let kept = self
                    .state
                    .sessions()
                    .subscribed(&self.cn, self.conn_no, &granted);
                Box::pin(save_session(self.state, &self.cn, kept)).await;
                write(conn, Packet::SubscribeAck { packet_id, status }).await?;
                Box::pin(self.deliver_c2d(conn)).await
            }
            Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => {
                let filters: Vec<String> = topic_filters.iter().map(|f| f.to_string()).collect();
                for f in &filters {
                    self.subs.remove(f);
                }
                let kept = self
                    .state
                    .sessions()
                    .unsubscribed(&self.cn, self.conn_no, &filters);
                Box::pin(save_session(self.state, &self.cn, kept)).await;
                write(conn, Packet::UnsubscribeAck { packet_id }).await
            }
            Packet::PingRequest => write(conn, Packet::PingResponse).await,
            Packet::PublishAck { packet_id } => {
                if let Some(queued) = self.inflight.remove(&packet_id.get()) {
                    // PUBACK completes the message (MQTT cannot reject or abandon).
                    let done = self.state.store().remove_c2d(
                        self.id().device.as_str(),
                        queued,
                        C2dOutcome::Success,
                        now_ms(),
                    );
                    if let Err(e) = Box::pin(done).await {
                        tracing::warn!(client_id = self.cn, error = %e, "C2D completion not stored; it will be delivered again");
                    }
                    Box::pin(self.deliver_c2d(conn)).await?;
                }
                Ok(())
            }
            Packet::Disconnect => Err(End::Clean),
            other => Err(End::Closed(format!("unexpected packet {other:?}"))),
        }
    }

    async fn publish(
        &mut self,
        conn: &mut Conn,
        p: Box<rmqtt_codec::types::Publish>,
    ) -> Result<(), End> {
        if p.qos == QoS::ExactlyOnce {
            return Err(End::Closed(
                "QoS 2 publish (IoT Hub closes the connection)".into(),
            ));
        }
        let kind = classify_publish(self.id(), &p.topic)
            .map_err(|r| End::Closed(format!("topic-not-allowed: {}", r.0)))?;
        match kind {
            DevicePublish::Telemetry(props) => {
                let record = self.publish_record(&p, props);
                // The PUBACK waits for the commit, without holding up the next packets.
                let committed = self
                    .state
                    .telemetry()
                    .submit(record)
                    .await
                    .map_err(|e| End::Closed(format!("telemetry not stored: {e}")))?;
                self.owe_telemetry(&p, committed);
                return Ok(());
            }
            DevicePublish::TwinGet { rid } => {
                let id = self.id();
                let (status, body) = match Box::pin(crate::twins::read(
                    self.state,
                    &id.device,
                    id.module.as_ref(),
                ))
                .await
                {
                    Ok(twin) => (200, twin.device_view().to_string()),
                    Err(e) => {
                        tracing::error!(client_id = self.cn, error = %e, "twin not read");
                        (500, error_body(500, "the twin could not be read"))
                    }
                };
                let topic = format!("$iothub/twin/res/{status}/?$rid={rid}");
                write(conn, publish0(topic, body.into_bytes())).await?;
            }
            DevicePublish::TwinReported { rid } => {
                let (topic, body) = Box::pin(self.reported(&rid, &p.payload)).await;
                write(conn, publish0(topic, body.into_bytes())).await?;
            }
            DevicePublish::MethodResponse { status, rid } => {
                let reply = MethodReply {
                    status,
                    payload: p.payload.to_vec(),
                };
                if !self.state.sessions().finish_method(&self.cn, &rid, reply) {
                    tracing::info!(
                        client_id = self.cn,
                        rid,
                        "method response for no waiting call (timed out?)"
                    );
                }
            }
        }
        if let (QoS::AtLeastOnce, Some(packet_id)) = (p.qos, p.packet_id) {
            // After any telemetry still waiting for its commit.
            self.owed.push_back(Owed {
                packet_id,
                committed: None,
            });
        }
        Ok(())
    }

    /// The common case, without an allocation for the packet's handling: a telemetry PUBLISH
    /// (QoS 0 or 1) handed to the writer at once. Anything else, or a writer whose queue is
    /// full, goes back for the general path.
    fn try_telemetry(
        &mut self,
        p: Box<rmqtt_codec::types::Publish>,
    ) -> Option<Box<rmqtt_codec::types::Publish>> {
        if p.qos == QoS::ExactlyOnce {
            return Some(p);
        }
        let Ok(DevicePublish::Telemetry(props)) = classify_publish(self.id(), &p.topic) else {
            return Some(p);
        };
        let record = self.publish_record(&p, props);
        match self.state.telemetry().try_submit(record) {
            Ok(committed) => {
                self.owe_telemetry(&p, committed);
                None
            }
            Err(_) => Some(p),
        }
    }

    fn publish_record(
        &self,
        p: &rmqtt_codec::types::Publish,
        mut props: certhub_core::MessageProperties,
    ) -> TelemetryRecord {
        if p.retain {
            props
                .application
                .insert("mqtt-retain".into(), "true".into());
        }
        telemetry_record(self.id(), &props, p.payload.to_vec())
    }

    /// The PUBACK a QoS 1 message is owed once `committed`; QoS 0 is counted now.
    fn owe_telemetry(
        &mut self,
        p: &rmqtt_codec::types::Publish,
        committed: crate::telemetry::Committed,
    ) {
        if let (QoS::AtLeastOnce, Some(packet_id)) = (p.qos, p.packet_id) {
            self.owed.push_back(Owed {
                packet_id,
                committed: Some(committed),
            });
        } else {
            self.state.metrics().telemetry();
        }
    }

    /// A reported-properties patch: the response topic and body (azure-protocol 1.8).
    async fn reported(&self, rid: &str, payload: &[u8]) -> (String, String) {
        let patch: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return (
                    format!("$iothub/twin/res/400/?$rid={rid}"),
                    error_body(400, &format!("the reported patch is not JSON: {e}")),
                );
            }
        };
        let id = self.id();
        let now = crate::twins::now_iso();
        let result = crate::twins::update(self.state, &id.device, id.module.as_ref(), |twin| {
            Ok(twin.patch_reported(&patch, &now)?)
        })
        .await;
        match result {
            Ok((version, _)) => (
                format!("$iothub/twin/res/204/?$rid={rid}&$version={version}"),
                String::new(),
            ),
            Err(crate::twins::TwinOpError::Invalid(e)) => (
                format!("$iothub/twin/res/400/?$rid={rid}"),
                error_body(400, &e.to_string()),
            ),
            Err(e) => {
                tracing::error!(client_id = self.cn, error = %e, "reported properties not stored");
                (
                    format!("$iothub/twin/res/500/?$rid={rid}"),
                    error_body(500, "the reported properties could not be stored; retry"),
                )
            }
        }
    }

    async fn outbound(&mut self, conn: &mut Conn, work: Outbound) -> Result<(), End> {
        match work {
            Outbound::C2d => self.deliver_c2d(conn).await,
            Outbound::Desired(body) => {
                let version = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("$version").and_then(serde_json::Value::as_i64))
                    .unwrap_or_default();
                let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
                write(conn, publish0(topic, body)).await
            }
            Outbound::Method(m) => {
                // Method names are checked by the API: no '/', '?', '#' or '+'.
                let topic = format!("$iothub/methods/POST/{}/?$rid={}", m.name, m.rid);
                write(conn, publish0(topic, m.payload)).await
            }
        }
    }

    /// Sends queued C2D messages while the device is subscribed and the window has room.
    async fn deliver_c2d(&mut self, conn: &mut Conn) -> Result<(), End> {
        if !self.wants_c2d() {
            return Ok(());
        }
        let room = C2D_WINDOW.saturating_sub(self.inflight.len());
        if room == 0 {
            return Ok(());
        }
        let device = self.id().device.clone();
        let pending = match self
            .state
            .store()
            .pending_c2d(device.as_str(), self.c2d_cursor, now_ms(), room as i64)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(client_id = self.cn, error = %e, "C2D queue not read");
                return Ok(());
            }
        };
        let max = self.state.c2d_limits().max_deliveries;
        for m in pending {
            self.c2d_cursor = m.id;
            if m.delivery_count >= max {
                // Dead-lettered: delivered max times without an acknowledgement.
                let _ = self
                    .state
                    .store()
                    .remove_c2d(
                        device.as_str(),
                        m.id,
                        C2dOutcome::DeliveryCountExceeded,
                        now_ms(),
                    )
                    .await;
                audit(
                    self.state,
                    "c2d.dead-letter",
                    &self.cn,
                    "delivery-count-exceeded",
                    format!(
                        "message {} delivered {} times without PUBACK",
                        m.message_id, m.delivery_count
                    ),
                )
                .await;
                continue;
            }
            let props: crate::api::StoredC2dProperties =
                serde_json::from_str(&m.properties).unwrap_or_default();
            let topic = c2d_topic(&device, &props.system, &props.ack, &props.application);
            if let Err(e) = self.state.store().c2d_delivered(m.id).await {
                tracing::warn!(client_id = self.cn, error = %e, "C2D delivery count not stored");
            }
            let packet_id = self.packet_id();
            self.inflight.insert(packet_id, m.id);
            let publish = rmqtt_codec::types::Publish {
                dup: false,
                retain: false,
                qos: QoS::AtLeastOnce,
                topic: topic.into(),
                packet_id: std::num::NonZeroU16::new(packet_id),
                payload: m.body.into(),
                properties: None,
            };
            write(conn, Packet::Publish(Box::new(publish))).await?;
        }
        Ok(())
    }
}

/// Writes a persistent session's subscriptions through to the store before they are
/// acknowledged, so a restart of the hub keeps them; `None` (a clean session) writes nothing.
async fn save_session(state: &AppState, cn: &str, kept: Option<BTreeMap<String, u8>>) {
    let Some(subs) = kept else { return };
    let json = serde_json::to_string(&subs).unwrap_or_default();
    if let Err(e) = state.store().save_mqtt_session(cn, &json, now_ms()).await {
        tracing::warn!(client_id = cn, error = %e, "persistent session not saved; a restart of the hub would lose its subscriptions");
    }
}

/// The body of an error answer on a `$iothub/twin/res` topic.
fn error_body(status: u16, message: &str) -> String {
    serde_json::json!({"errorCode": status, "message": message}).to_string()
}

/// A QoS 0 PUBLISH from the hub.
fn publish0(topic: String, payload: Vec<u8>) -> Packet {
    Packet::Publish(Box::new(rmqtt_codec::types::Publish {
        dup: false,
        retain: false,
        qos: QoS::AtMostOnce,
        topic: topic.into(),
        packet_id: None,
        payload: payload.into(),
        properties: None,
    }))
}

/// Adds a packet to the write buffer (written out when the buffer fills or at `flush`).
async fn queue(conn: &mut Conn, packet: Packet) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, conn.feed(packet)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::Closed("write failed or timed out".into())),
    }
}

/// Writes out what `queue` buffered.
async fn flush(conn: &mut Conn) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, SinkExt::<Packet>::flush(conn)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::Closed("write failed or timed out".into())),
    }
}

/// Writes a packet; a device that does not take it within `WRITE_TIMEOUT` ends the session.
async fn write(conn: &mut Conn, packet: Packet) -> Result<(), End> {
    if send(conn, packet).await {
        Ok(())
    } else {
        Err(End::Closed("write failed or timed out".into()))
    }
}
