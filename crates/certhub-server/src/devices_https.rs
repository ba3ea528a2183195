//! The device side of the 443 listener: MQTT over WebSockets (`GET /$iothub/websocket`,
//! subprotocol `mqtt`, binary frames) on the same session driver as 8883. The device's TLS
//! client chain comes from the connection (the HTTPS listener requests a client certificate,
//! as the device listener does, and records it per connection); SAS devices present none and
//! sign their CONNECT password.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use certhub_pki::CertificateDer;

use crate::device::DeviceCore;
use crate::gate::Gate;
use crate::mqtt::MqttOptions;
use crate::mqtt::session::{Connection, MAX_PACKET};
use crate::state::AppState;

/// What the HTTPS listener learnt of a connection, handed to every request on it.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub peer: SocketAddr,
    /// The client chain, leaf first (empty: none presented).
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    pub tls13: bool,
}

/// The device transports of the 443 listener and what they share.
#[derive(Debug)]
struct Devices {
    core: Arc<DeviceCore>,
    /// Upgraded connections that have not sent CONNECT yet.
    gate: Arc<Gate>,
    /// Writes collapsed refusals; stopped with the router.
    flusher: tokio::task::JoinHandle<()>,
}

impl Drop for Devices {
    fn drop(&mut self) {
        self.flusher.abort();
    }
}

/// The WebSocket subprotocol of MQTT (azure-protocol 1.1).
const MQTT_SUBPROTOCOL: &str = "mqtt";

/// The device routes of the 443 listener. Must be called within a Tokio runtime (a task
/// writes the collapsed refusals of these transports).
pub fn device_router(state: AppState, options: MqttOptions) -> axum::Router {
    let core = Arc::new(DeviceCore::new(
        state,
        "mqtt-ws",
        options.max_sessions,
        options.refusals,
    ));
    let devices = Arc::new(Devices {
        flusher: core.spawn_refusal_flusher(),
        gate: Gate::new(options.pending),
        core,
    });
    axum::Router::new()
        .route("/$iothub/websocket", get(mqtt_over_websocket))
        .layer(Extension(devices))
}

/// `GET /$iothub/websocket`: the upgrade to MQTT over WebSockets.
async fn mqtt_over_websocket(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(Extension(peer)) = peer else {
        return crate::api::ApiError::bad_request(
            "ArgumentInvalid",
            "MQTT over WebSockets is served on the hub's TLS listener only",
        )
        .into_response();
    };
    let offered = upgrade.requested_protocols().any(|p| {
        p.as_bytes()
            .eq_ignore_ascii_case(MQTT_SUBPROTOCOL.as_bytes())
    });
    if !offered {
        return crate::api::ApiError::bad_request(
            "ArgumentInvalid",
            "the WebSocket upgrade must ask for the subprotocol \"mqtt\" (Sec-WebSocket-Protocol: mqtt): this endpoint carries MQTT 3.1.1 in binary frames",
        )
        .into_response();
    }
    if devices.core.source_blocked(peer.peer) {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many refused connections from this address; retry later",
        )
            .into_response();
    }
    let pending = devices.gate.admit(peer.peer.ip());
    let core = devices.core.clone();
    let mut upgrade = upgrade
        // A frame or message larger than the largest MQTT packet is refused by the WebSocket
        // layer (the connection closes) before the codec sees it.
        .max_frame_size(MAX_PACKET as usize)
        .max_message_size(MAX_PACKET as usize)
        // Small buffers: an idle session keeps them.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    upgrade.set_selected_protocol(HeaderValue::from_static(MQTT_SUBPROTOCOL));
    upgrade.on_upgrade(move |ws| async move {
        let conn = Connection {
            peer: peer.peer,
            chain: peer.chain.to_vec(),
            tls13: peer.tls13,
            pending,
        };
        crate::mqtt::session::run(crate::ws_stream::WsStream::new(ws), conn, core).await;
    })
}
