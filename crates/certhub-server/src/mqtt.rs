//! The MQTT device listener (azure-protocol 1): TLS with a recorded client chain, the CONNECT
//! decision of `certhub_core::authenticate`, then the session: telemetry written durably
//! before PUBACK, subscriptions to the identity's own topics, keep-alive, and kicks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certhub_core::{
    AuthenticatedDevice, ClientId, ConnectFields, Context, ModuleId, Registered, authenticate,
    subscription_allowed, telemetry_topic,
};
use certhub_pki::{CertificateDer, Thumbprints, UnixTime};
use certhub_store::{AuditRecord, TelemetryRecord};
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{Codec, ConnectAck, ConnectAckReason, Packet, SubscribeReturnCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::codec::Framed;

use crate::api::AppState;

/// Telemetry larger than Azure's 256 KB is refused; the packet may carry a topic besides.
const MAX_PACKET: u32 = 256 * 1024 + 4096;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Azure's server-side keep-alive cap.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(1767);
/// At most this many TLS handshakes past their ClientHello at once; more wait (a flood of
/// handshakes cannot starve CONNECT handling of CPU).
const MAX_HANDSHAKES: usize = 256;

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
}

impl Default for MqttOptions {
    fn default() -> Self {
        Self {
            max_sessions: 100_000,
        }
    }
}

/// Serves devices on `listener` until `shutdown` completes.
pub async fn serve_mqtt(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    options: MqttOptions,
    shutdown: impl Future<Output = ()>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let slots = Arc::new(Semaphore::new(options.max_sessions));
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
        let (tls_config, state, handshakes, slots) = (
            tls.clone(),
            state.clone(),
            handshakes.clone(),
            slots.clone(),
        );
        tokio::spawn(async move {
            // Waiting for a ClientHello costs nothing but a socket: idle or slow connections
            // hold no handshake slot. The slot is taken for the expensive part only.
            let started = tokio::time::Instant::now();
            let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
            let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, lazy).await {
                Ok(Ok(start)) => start,
                _ => {
                    tracing::debug!(%peer, "no valid ClientHello in time");
                    return;
                }
            };
            let tls = {
                let Ok(_permit) = handshakes.acquire().await else {
                    return;
                };
                let left = HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, start.into_stream(tls_config)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "device TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "device TLS handshake timed out");
                        return;
                    }
                }
            };
            let chain: Vec<CertificateDer<'static>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.to_vec())
                .unwrap_or_default();
            let tls13 =
                tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
            let conn = Framed::new(tls, Codec::new(MAX_PACKET));
            session(conn, chain, peer, state, slots, tls13).await;
        });
    }
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
    if let Err(e) = state.store().append_audit(&record).await {
        tracing::error!(error = %e, "could not write the audit record");
    }
}

async fn lookup(
    state: &AppState,
    id: &ClientId,
) -> Result<Option<Registered>, certhub_store::StoreError> {
    let Some(device) = state.store().device(&id.device).await? else {
        return Ok(None);
    };
    let module = match &id.module {
        Some(m) => match state.store().module(&id.device, m).await? {
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
    if let Err(e) = state
        .store()
        .touch(&id.device, id.module.as_ref(), now_ms())
        .await
    {
        tracing::warn!(error = %e, "could not record device activity");
    }
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

async fn session(
    mut conn: Conn,
    chain: Vec<CertificateDer<'static>>,
    peer: SocketAddr,
    state: AppState,
    slots: Arc<Semaphore>,
    tls13: bool,
) {
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, conn.next()).await {
        Ok(Some(Ok((Packet::Connect(c), _)))) => c,
        _ => return,
    };
    let Ok(_slot) = slots.try_acquire_owned() else {
        let client_id = connect.client_id.to_string();
        tracing::warn!(client_id, %peer, "device session limit reached");
        state.metrics().connect("overloaded");
        audit(
            &state,
            "device.connect",
            &client_id,
            "overloaded",
            format!("the hub's device session limit is reached; CONNACK 3 (the device retries); peer {peer}"),
        )
        .await;
        connack(&mut conn, ConnectAckReason::ServiceUnavailable).await;
        return;
    };
    let client_id = connect.client_id.to_string();
    let username = connect.username.as_ref().map(|u| u.to_string());
    let registered = match ClientId::parse(&client_id) {
        Ok(id) => match lookup(&state, &id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "registry lookup failed");
                connack(&mut conn, ConnectAckReason::ServiceUnavailable).await;
                return;
            }
        },
        Err(_) => None,
    };
    let trust = state.trust();
    let settings = match state.settings().await {
        Ok(s) => s,
        Err(_) => {
            connack(&mut conn, ConnectAckReason::ServiceUnavailable).await;
            return;
        }
    };
    if settings.min_tls_version == "1.3" && !tls13 {
        // The setting changes at run time, so it is applied here rather than in the TLS
        // configuration; the device learns nothing but CONNACK 5.
        let detail = format!(
            "the hub requires TLS 1.3 (minTlsVersion) and the device used TLS 1.2; peer {peer}"
        );
        state.metrics().connect("tls-version");
        audit(&state, "device.connect", &client_id, "tls-version", detail).await;
        connack(&mut conn, ConnectAckReason::NotAuthorized).await;
        return;
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
            audit(&state, "device.connect", &client_id, refusal.reason, detail).await;
            connack(&mut conn, ConnectAckReason::NotAuthorized).await;
            return;
        }
    };
    let cn = device.id().cn();
    let ticket = state.sessions().register(&cn, device.ca(), device.switch());
    state.metrics().connect("ok");
    let present = state.sessions().resume(&cn, connect.clean_session);
    let _ = send(
        &mut conn,
        Packet::ConnectAck(ConnectAck {
            return_code: ConnectAckReason::ConnectionAccepted,
            session_present: present,
        }),
    )
    .await;
    tracing::info!(client_id = cn, method = device.method().as_str(), %peer, "device connected");
    audit(
        &state,
        "device.connect",
        &cn,
        "ok",
        format!(
            "{} via {}{}; peer {peer}",
            cn,
            device.method().as_str(),
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
    touch(&state, device.id()).await;
    if !device.ca().is_empty()
        && let Err(e) = state
            .store()
            .record_ca(
                &device.id().device,
                device.id().module.as_ref(),
                device.ca(),
            )
            .await
    {
        tracing::warn!(error = %e, "could not record the device's CA");
    }
    let end = run(&mut conn, &device, &state, keep_alive, ticket.kicked).await;
    state.sessions().unregister(&cn, ticket.conn);
    if let (End::Closed(_), Some(will)) = (&end, &connect.last_will) {
        // The link dropped without DISCONNECT: the will is forwarded as telemetry, marked
        // iothub-MessageType=Will (azure-protocol 1.2), if it names the device's own topic.
        match telemetry_topic(device.id(), &will.topic) {
            Ok(mut props) => {
                props
                    .application
                    .insert("iothub-MessageType".into(), "Will".into());
                let record = TelemetryRecord {
                    seq: 0,
                    device_id: device.id().device.to_string(),
                    module_id: device.id().module.as_ref().map(ModuleId::to_string),
                    enqueued_ms: now_ms(),
                    properties: serde_json::to_string(&props).unwrap_or_default(),
                    body: will.message.to_vec(),
                };
                if let Err(e) = state.telemetry().append(record).await {
                    tracing::warn!(client_id = cn, error = %e, "will message not stored");
                }
            }
            Err(r) => tracing::info!(client_id = cn, reason = r.0, "will message ignored"),
        }
    }
    touch(&state, device.id()).await;
    match end {
        End::Clean => {}
        End::Closed(reason) => {
            tracing::info!(client_id = cn, reason, "device session closed");
            audit(&state, "device.disconnect", &cn, "closed", reason).await;
        }
    }
}

enum End {
    Clean,
    Closed(String),
}

async fn run(
    conn: &mut Conn,
    device: &AuthenticatedDevice,
    state: &AppState,
    keep_alive: Duration,
    mut kicked: tokio::sync::oneshot::Receiver<String>,
) -> End {
    let id = device.id();
    loop {
        let packet = tokio::select! {
            reason = &mut kicked => {
                return End::Closed(reason.unwrap_or_else(|_| "closed by the hub".into()));
            }
            p = tokio::time::timeout(keep_alive, conn.next()) => p,
        };
        let packet = match packet {
            Err(_) => return End::Closed("keep-alive expired".into()),
            Ok(None) => return End::Closed("the device closed the connection".into()),
            Ok(Some(Err(e))) => return End::Closed(format!("protocol error: {e}")),
            Ok(Some(Ok((p, _)))) => p,
        };
        match packet {
            Packet::Publish(p) => {
                if p.qos == QoS::ExactlyOnce {
                    return End::Closed("QoS 2 publish (IoT Hub closes the connection)".into());
                }
                let mut props = match telemetry_topic(id, &p.topic) {
                    Ok(props) => props,
                    Err(r) => return End::Closed(format!("topic-not-allowed: {}", r.0)),
                };
                if p.retain {
                    props
                        .application
                        .insert("mqtt-retain".into(), "true".into());
                }
                let record = TelemetryRecord {
                    seq: 0,
                    device_id: id.device.to_string(),
                    module_id: id.module.as_ref().map(ModuleId::to_string),
                    enqueued_ms: now_ms(),
                    properties: serde_json::to_string(&props).unwrap_or_default(),
                    body: p.payload.to_vec(),
                };
                if let Err(e) = state.telemetry().append(record).await {
                    // Not durable: no PUBACK; the device will send it again.
                    return End::Closed(format!("telemetry not stored: {e}"));
                }
                state.metrics().telemetry();
                if let (QoS::AtLeastOnce, Some(packet_id)) = (p.qos, p.packet_id)
                    && conn.send(Packet::PublishAck { packet_id }).await.is_err()
                {
                    return End::Closed("write failed".into());
                }
            }
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => {
                let mut status = Vec::new();
                for (filter, qos) in &topic_filters {
                    if let Err(r) = subscription_allowed(id, filter) {
                        return End::Closed(format!("topic-not-allowed: {}", r.0));
                    }
                    status.push(SubscribeReturnCode::Success(if *qos == QoS::AtMostOnce {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    }));
                }
                let granted: Vec<(String, u8)> = topic_filters
                    .iter()
                    .map(|(f, q)| (f.to_string(), if *q == QoS::AtMostOnce { 0 } else { 1 }))
                    .collect();
                state.sessions().subscribed(&id.cn(), &granted);
                if !send(conn, Packet::SubscribeAck { packet_id, status }).await {
                    return End::Closed("write failed".into());
                }
            }
            Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => {
                let filters: Vec<String> = topic_filters.iter().map(|f| f.to_string()).collect();
                state.sessions().unsubscribed(&id.cn(), &filters);
                if !send(conn, Packet::UnsubscribeAck { packet_id }).await {
                    return End::Closed("write failed".into());
                }
            }
            Packet::PingRequest => {
                if !send(conn, Packet::PingResponse).await {
                    return End::Closed("write failed".into());
                }
            }
            Packet::PublishAck { .. } => {}
            Packet::Disconnect => return End::Clean,
            other => return End::Closed(format!("unexpected packet {other:?}")),
        }
    }
}
