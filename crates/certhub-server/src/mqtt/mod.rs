//! MQTT 3.1.1 for devices (azure-protocol 1), an adapter on the device session core: the 8883
//! listener (TLS with a recorded client chain), and the driver in [`session`] that runs the
//! pure state machine of `certhub-mqtt` over any byte stream (TLS here, WebSocket frames on
//! 443), executing its actions with [`crate::device::DeviceCore`].

pub(crate) mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certhub_pki::CertificateDer;
use tokio::net::{TcpListener, TcpStream};

use crate::device::DeviceCore;
use crate::gate::{Gate, GateLimits, Pending, owed};
use crate::refusals::RefusalLimits;
use crate::state::AppState;
use crate::tls_stream::TlsStream;

/// A connection must send its ClientHello this soon after TCP accepts it (it is the first
/// thing a TLS client sends), and finish its handshake within `HANDSHAKE_TIMEOUT` of the
/// accept.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What runs on a device connection once its TLS handshake is done (MQTT or AMQP).
pub(crate) type Start = fn(
    TlsStream<TcpStream>,
    session::Connection,
    Arc<DeviceCore>,
) -> futures_util::future::BoxFuture<'static, ()>;

/// What a device connection needs of its listener.
struct Listener {
    tls: Arc<rustls::ServerConfig>,
    gate: Arc<Gate>,
    core: Arc<DeviceCore>,
    start: Start,
}

/// Serves devices on `listener` until `shutdown` completes.
pub async fn serve_mqtt(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    options: MqttOptions,
    shutdown: impl Future<Output = ()>,
) {
    serve_devices(
        listener,
        tls,
        state,
        options,
        "mqtt",
        shutdown,
        |tls, conn, core| Box::pin(session::run(tls, conn, core)),
    )
    .await;
}

/// The accept loop of a device listener named `name` (in metrics and audit): refused sources
/// closed at accept, handshakes through the gate, then `start` on each established
/// connection, until `shutdown` completes.
pub(crate) async fn serve_devices(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    options: MqttOptions,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
    start: Start,
) {
    let core = Arc::new(DeviceCore::new(
        state,
        name,
        options.max_sessions,
        options.refusals,
    ));
    let listener_state = Arc::new(Listener {
        tls,
        gate: Gate::new(options.pending),
        core: core.clone(),
        start,
    });
    // Repeated refusals are written as one record with their count when their window ends.
    let flusher = core.spawn_refusal_flusher();
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
        if core.source_blocked(peer) {
            // Closed before any TLS work: this source's recent connections were all refused.
            drop(tcp);
            continue;
        }
        if name == "amqp" {
            // The AMQP connection writes once per turn of its loop, everything it owes in one
            // go: Nagle's algorithm would only hold a second write back until the client's
            // delayed acknowledgement of the first (about 40 ms).
            let _ = tcp.set_nodelay(true);
        }
        let pending = listener_state.gate.admit(peer.ip());
        tokio::spawn(handshake(tcp, peer, pending, listener_state.clone()));
    }
    flusher.abort();
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
    let state = listener.core.state();
    let Ok(mut tls) = TlsStream::new(tcp, listener.tls.clone()) else {
        return;
    };
    match owed(
        &mut pending,
        accepted + CLIENT_HELLO_TIMEOUT,
        tls.client_hello(),
        state,
        listener.core.listener(),
    )
    .await
    {
        Some(Ok(())) => {}
        _ => {
            tracing::debug!(%peer, "no valid ClientHello in time");
            return;
        }
    }
    match owed(
        &mut pending,
        accepted + HANDSHAKE_TIMEOUT,
        tls.handshake(),
        state,
        listener.core.listener(),
    )
    .await
    {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "device TLS handshake failed");
            return;
        }
        None => {
            tracing::debug!(%peer, "device TLS handshake timed out or was evicted");
            return;
        }
    }
    let chain: Vec<CertificateDer<'static>> = tls
        .connection()
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let tls13 = tls.connection().protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let conn = session::Connection {
        peer,
        chain,
        tls13,
        pending,
    };
    // A task of its own: this one's memory (sized for the handshake's state) is freed, and
    // the session's is sized for the session alone.
    tokio::spawn((listener.start)(tls, conn, listener.core.clone()));
}
