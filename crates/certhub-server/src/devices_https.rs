//! The device side of the 443 listener: MQTT over WebSockets (`GET /$iothub/websocket`,
//! subprotocol `mqtt`, binary frames) on the same session driver as 8883, and the HTTPS device
//! API (azure-protocol 3: telemetry, single and batch). The device's TLS client chain comes
//! from the connection (the HTTPS listener requests a client certificate, as the device
//! listener does, and records it per connection); SAS devices present none and sign their
//! CONNECT password, or send `Authorization: SharedAccessSignature ...` over HTTPS. Every
//! HTTPS request is judged afresh by the device session core, with the same named reasons and
//! audit records as a CONNECT.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
pub(crate) struct Devices {
    /// MQTT over WebSockets (`mqtt-ws` in metrics and audit records).
    pub(crate) core: Arc<DeviceCore>,
    /// The HTTPS device API and file upload (`https`): its own refusal memory.
    pub(crate) https: Arc<DeviceCore>,
    /// AMQP over WebSockets (`amqp-ws`).
    amqp: Arc<DeviceCore>,
    /// Upgraded connections that have not sent CONNECT yet.
    gate: Arc<Gate>,
    /// Write collapsed refusals; stopped with the router.
    flushers: [tokio::task::JoinHandle<()>; 3],
}

impl Drop for Devices {
    fn drop(&mut self) {
        for flusher in &self.flushers {
            flusher.abort();
        }
    }
}

/// The WebSocket subprotocol of MQTT (azure-protocol 1.1).
const MQTT_SUBPROTOCOL: &str = "mqtt";
/// The WebSocket subprotocol of AMQP (azure-more-protocols 1.1).
const AMQP_SUBPROTOCOL: &str = "AMQPWSB10";

/// The device routes of the 443 listener. Must be called within a Tokio runtime (a task
/// writes the collapsed refusals of these transports).
pub fn device_router(state: AppState, options: MqttOptions) -> axum::Router {
    let core = Arc::new(DeviceCore::new(
        state.clone(),
        "mqtt-ws",
        options.max_sessions,
        options.refusals,
    ));
    // HTTPS requests hold no session: the limit on sessions does not apply to them.
    let https = Arc::new(DeviceCore::new(
        state.clone(),
        "https",
        options.max_sessions,
        options.refusals,
    ));
    let amqp = Arc::new(DeviceCore::new(
        state,
        "amqp-ws",
        options.max_sessions,
        options.refusals,
    ));
    let devices = Arc::new(Devices {
        flushers: [
            core.spawn_refusal_flusher(),
            https.spawn_refusal_flusher(),
            amqp.spawn_refusal_flusher(),
        ],
        gate: Gate::new(options.pending),
        core,
        https,
        amqp,
    });
    axum::Router::new()
        .route("/$iothub/websocket", get(over_websocket))
        // The Event Hubs SDKs' and uamqp's AMQP over WebSockets (with and without the slash).
        .route("/$servicebus/websocket", get(over_websocket))
        .route("/$servicebus/websocket/", get(over_websocket))
        .route("/devices/{id}/messages/events", post(device_events))
        .route(
            "/devices/{id}/modules/{mid}/messages/events",
            post(module_events),
        )
        // C2D: the SDKs spell it deviceBound (C#, REST docs) and devicebound (Node). Receive
        // is served under Node's spelling only for now: `deviceBound` is also the service
        // API's send path, whose OpenAPI description (and Allow header) must stay exact.
        .route("/devices/{id}/messages/devicebound", get(c2d_receive))
        .route(
            "/devices/{id}/messages/deviceBound/{token}",
            axum::routing::delete(c2d_complete_or_reject),
        )
        .route(
            "/devices/{id}/messages/devicebound/{token}",
            axum::routing::delete(c2d_complete_or_reject),
        )
        .route(
            "/devices/{id}/messages/deviceBound/{token}/abandon",
            post(c2d_abandon),
        )
        .route(
            "/devices/{id}/messages/devicebound/{token}/abandon",
            post(c2d_abandon),
        )
        // File upload (azure-more-protocols 5); the C SDK puts a '/' before the query.
        .route("/devices/{id}/files", post(crate::files::begin))
        .route("/devices/{id}/files/", post(crate::files::begin))
        .route(
            "/devices/{id}/files/notifications",
            post(crate::files::notify),
        )
        .route(
            "/devices/{id}/files/notifications/",
            post(crate::files::notify),
        )
        .route(
            "/devices/{id}/files/notifications/{correlation_id}",
            post(crate::files::notify_with_id),
        )
        .route(
            &format!("/{}/{{*blob}}", crate::files::CONTAINER),
            axum::routing::put(crate::files::blob_put),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(Extension(devices))
}

/// `GET /$iothub/websocket` (and `/$servicebus/websocket`): the upgrade to MQTT over
/// WebSockets (subprotocol `mqtt`) or AMQP over WebSockets (`AMQPWSB10`).
async fn over_websocket(
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
    let offered = |name: &str| {
        upgrade
            .requested_protocols()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(name.as_bytes()))
    };
    let (protocol, core) = if offered(MQTT_SUBPROTOCOL) {
        (MQTT_SUBPROTOCOL, devices.core.clone())
    } else if offered(AMQP_SUBPROTOCOL) {
        (AMQP_SUBPROTOCOL, devices.amqp.clone())
    } else {
        return crate::api::ApiError::bad_request(
            "ArgumentInvalid",
            "the WebSocket upgrade must ask for the subprotocol \"mqtt\" (MQTT 3.1.1) or \"AMQPWSB10\" (AMQP 1.0) in Sec-WebSocket-Protocol: this endpoint carries them in binary frames",
        )
        .into_response();
    };
    if core.source_blocked(peer.peer) {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many refused connections from this address; retry later",
        )
            .into_response();
    }
    let pending = devices.gate.admit(peer.peer.ip());
    let mut upgrade = upgrade
        // A frame or message larger than the largest MQTT packet is refused by the WebSocket
        // layer (the connection closes) before the codec sees it.
        .max_frame_size(MAX_PACKET as usize)
        .max_message_size(MAX_PACKET as usize)
        // Small buffers: an idle session keeps them (tungstenite allocates the read buffer
        // up front; it is the size of one read from TLS, not a limit on messages).
        .read_buffer_size(2 * 1024)
        .write_buffer_size(0);
    upgrade.set_selected_protocol(HeaderValue::from_static(protocol));
    upgrade.on_upgrade(move |ws| async move {
        let conn = Connection {
            peer: peer.peer,
            chain: peer.chain.to_vec(),
            tls13: peer.tls13,
            pending,
        };
        let stream = crate::ws_stream::WsStream::new(ws);
        if protocol == AMQP_SUBPROTOCOL {
            crate::amqp::run_connection(stream, conn, core).await;
        } else {
            crate::mqtt::session::run(stream, conn, core).await;
        }
    })
}

/// Telemetry over HTTPS is refused past Azure's 256 KB per request (a batch included).
const MAX_TELEMETRY: usize = 256 * 1024;
/// Messages in one batch at most (Azure: 500).
const MAX_BATCH: usize = 500;
/// The content type of a batch of messages.
const BATCH: &str = "application/vnd.microsoft.iothub.json";

/// Who sent an HTTPS device request: the SAS token of its `Authorization` header, else the TLS
/// client chain of its connection, judged by the core as a CONNECT of `client_id` would be.
pub(crate) async fn device_caller(
    devices: &Devices,
    peer: Option<&TlsPeer>,
    headers: &axum::http::HeaderMap,
    client_id: &str,
) -> Result<certhub_core::AuthenticatedDevice, Response> {
    let Some(peer) = peer else {
        return Err(crate::api::ApiError::unauthorized(
            "the HTTPS device API is served on the hub's TLS listener only",
        )
        .into_response());
    };
    // The C SDK sends an empty Authorization header for X.509 requests: treated as absent.
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty());
    let state = devices.https.state();
    // MQTT's username names the hub and the client; over HTTPS the path names the client and
    // the TLS connection the hub, so the core is given the username it expects.
    let host = state.hostnames().first().cloned().unwrap_or_default();
    let username = format!("{host}/{client_id}/?api-version=https");
    let attempt = crate::device::Attempt {
        peer: peer.peer,
        chain: if token.is_some() { &[] } else { &peer.chain },
        tls13: peer.tls13,
        client_id,
        username: Some(&username),
        password: token,
    };
    match devices.https.authenticate(attempt).await {
        Ok(device) => {
            devices.https.active(&device).await;
            Ok(device)
        }
        Err(crate::device::Refused::NotAuthorized) => Err(crate::api::ApiError::unauthorized(
            format!(
                "{client_id} is not authorized: the hub's audit trail names the reason (`certhub audit connections --device {client_id}`)"
            ),
        )
        .into_response()),
        Err(crate::device::Refused::Unavailable) => Err(crate::api::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the hub cannot judge the device now; retry",
        )
        .into_response()),
    }
}

/// `POST /devices/{id}/messages/events`: telemetry of a device.
async fn device_events(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    events(&devices, peer.as_ref().map(|p| &p.0), &id, &headers, body).await
}

/// `POST /devices/{id}/modules/{mid}/messages/events`: telemetry of a module.
async fn module_events(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path((id, mid)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let client_id = format!("{id}/{mid}");
    events(
        &devices,
        peer.as_ref().map(|p| &p.0),
        &client_id,
        &headers,
        body,
    )
    .await
}

async fn events(
    devices: &Devices,
    peer: Option<&TlsPeer>,
    client_id: &str,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let device = match device_caller(devices, peer, headers, client_id).await {
        Ok(d) => d,
        Err(refused) => return refused,
    };
    // Node sends the body chunked, without a length: the limit is checked as it is read.
    let body = match axum::body::to_bytes(body, MAX_TELEMETRY).await {
        Ok(b) => b,
        Err(_) => {
            return crate::api::ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "MessageTooLarge",
                format!("telemetry over HTTPS is at most {MAX_TELEMETRY} bytes per request (a batch included)"),
            )
            .into_response();
        }
    };
    let batch = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with(BATCH));
    let messages = if batch {
        match batch_messages(&body) {
            Ok(m) => m,
            Err(e) => {
                return crate::api::ApiError::bad_request("ArgumentInvalid", e).into_response();
            }
        }
    } else {
        let pairs = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())));
        vec![(message_properties(pairs), body.to_vec())]
    };
    let mut waits = Vec::with_capacity(messages.len());
    for (props, body) in messages {
        let record = devices.https.telemetry(&device, &props, body);
        match devices.https.state().telemetry().submit(record).await {
            Ok(w) => waits.push(w),
            Err(e) => return stored_failed(&e),
        }
    }
    // 204 only once every message is durable, as a PUBACK.
    for wait in waits {
        if let Err(e) = wait.await {
            return stored_failed(&e);
        }
        devices.https.telemetry_counted();
    }
    axum::http::StatusCode::NO_CONTENT.into_response()
}

fn stored_failed(e: &str) -> Response {
    tracing::error!(error = e, "HTTPS telemetry not stored");
    let why = if e == crate::telemetry::DISK_FULL {
        e
    } else {
        "the message could not be stored; send it again"
    };
    crate::api::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        why,
    )
    .into_response()
}

/// A message's properties from HTTP header names (azure-more-protocols 4.3): `iothub-app-{k}`
/// is the application property `k`, the `iothub-*` system headers are system properties under
/// the names MQTT's property bag gives them; the HTTP `Content-Type` is not the message's.
fn message_properties(
    pairs: impl IntoIterator<Item = (String, String)>,
) -> certhub_core::MessageProperties {
    let mut props = certhub_core::MessageProperties::default();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        if let Some(app) = lower.strip_prefix("iothub-app-") {
            // The key as sent, prefix removed (header names arrive in lower case over HTTP/1.1
            // parsers; a batch keeps the case it was given).
            let key = &name[name.len() - app.len()..];
            props.application.insert(key.to_string(), value);
            continue;
        }
        let system = match lower.as_str() {
            "iothub-messageid" => "messageId",
            "iothub-correlationid" => "correlationId",
            "iothub-userid" => "userId",
            "iothub-contenttype" => "contentType",
            "iothub-contentencoding" => "contentEncoding",
            "iothub-expiry" => "expiryTimeUtc",
            "iothub-interface-id" => "interfaceId",
            "dt-subject" => "componentName",
            _ => continue,
        };
        props.system.insert(system.to_string(), value);
    }
    props
}

/// The messages of a batch: `[{"body": "<base64>", "properties": {...}, "base64Encoded": bool}]`.
fn batch_messages(body: &[u8]) -> Result<Vec<(certhub_core::MessageProperties, Vec<u8>)>, String> {
    use base64::Engine;
    let items: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
        format!("a batch ({BATCH}) is a JSON array of {{\"body\": base64, \"properties\": {{...}}}}: {e}")
    })?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(format!(
            "a batch holds 1 to {MAX_BATCH} messages, not {}",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = item
                .get("body")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("message {i} of the batch has no \"body\" string"))?;
            let encoded = item
                .get("base64Encoded")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true);
            let body = if encoded {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("message {i} of the batch: \"body\" is not base64: {e}"))?
            } else {
                text.as_bytes().to_vec()
            };
            let pairs = item
                .get("properties")
                .and_then(serde_json::Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())));
            Ok((message_properties(pairs), body))
        })
        .collect()
}

/// How long a C2D message received over HTTPS stays locked to its receiver (Azure: a minute).
const C2D_LOCK_MS: i64 = 60_000;

/// `GET /devices/{id}/messages/deviceBound`: the oldest C2D message, locked under the lock
/// token in `ETag`, its properties in `iothub-*` headers; 204 when the queue has none.
async fn c2d_receive(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let device = match device_caller(&devices, peer.as_ref().map(|p| &p.0), &headers, &id).await {
        Ok(d) => d,
        Err(refused) => return refused,
    };
    let (token, message, record) = match devices.https.lock_c2d(&device, C2D_LOCK_MS).await {
        Ok(Some(m)) => m,
        Ok(None) => return axum::http::StatusCode::NO_CONTENT.into_response(),
        Err(e) => return crate::api::ApiError::from(e).into_response(),
    };
    let mut out = axum::http::HeaderMap::new();
    let mut put = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.insert(n, v);
        }
    };
    // Quoted: the Node SDK strips the first and last character of the ETag.
    put("etag", &format!("\"{token}\""));
    put("iothub-sequencenumber", &message.queue_id.to_string());
    put(
        "iothub-to",
        &format!("/devices/{}/messages/deviceBound", device.id().device),
    );
    put(
        "iothub-enqueuedtime",
        &certhub_core::azure_time(record.enqueued_ms),
    );
    put("iothub-deliverycount", &record.delivery_count.to_string());
    if !message.ack.is_empty() && message.ack != "none" {
        put("iothub-ack", &message.ack);
    }
    for (name, header) in [
        ("messageId", "iothub-messageid"),
        ("correlationId", "iothub-correlationid"),
        ("userId", "iothub-userid"),
        ("contentType", "iothub-contenttype"),
        ("contentEncoding", "iothub-contentencoding"),
        ("expiryTimeUtc", "iothub-expiry"),
    ] {
        if let Some(v) = message.system.get(name) {
            put(header, v);
        }
    }
    for (k, v) in &message.application {
        put(&format!("iothub-app-{k}"), v.as_deref().unwrap_or(""));
    }
    (axum::http::StatusCode::OK, out, message.body).into_response()
}

/// `DELETE /devices/{id}/messages/deviceBound/{lockToken}[?reject]`: complete (or reject)
/// the message locked under the token.
async fn c2d_complete_or_reject(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path((id, token)): axum::extract::Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
) -> Response {
    let reject = query
        .unwrap_or_default()
        .split('&')
        .any(|p| p == "reject" || p.starts_with("reject="));
    let settle = if reject {
        crate::device::Settle::Reject
    } else {
        crate::device::Settle::Complete
    };
    settle_c2d(
        &devices,
        peer.as_ref().map(|p| &p.0),
        &id,
        &token,
        &headers,
        settle,
    )
    .await
}

/// `POST /devices/{id}/messages/deviceBound/{lockToken}/abandon`.
async fn c2d_abandon(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path((id, token)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let settle = crate::device::Settle::Abandon;
    settle_c2d(
        &devices,
        peer.as_ref().map(|p| &p.0),
        &id,
        &token,
        &headers,
        settle,
    )
    .await
}

async fn settle_c2d(
    devices: &Devices,
    peer: Option<&TlsPeer>,
    id: &str,
    token: &str,
    headers: &axum::http::HeaderMap,
    settle: crate::device::Settle,
) -> Response {
    let device = match device_caller(devices, peer, headers, id).await {
        Ok(d) => d,
        Err(refused) => return refused,
    };
    // The token in the path decides; If-Match (sent quoted or not) is not needed.
    let token = token.trim_matches('"');
    match devices.https.settle_c2d(&device, token, settle).await {
        Ok(true) => axum::http::StatusCode::NO_CONTENT.into_response(),
        Ok(false) => crate::api::ApiError::new(
            axum::http::StatusCode::PRECONDITION_FAILED,
            "DeviceMessageLockLost",
            format!(
                "no message of {id} is locked under {token:?}: the lock ran out (after {} s) or the token is not this device's; receive the message again",
                C2D_LOCK_MS / 1000
            ),
        )
        .into_response(),
        Err(e) => crate::api::ApiError::from(e).into_response(),
    }
}
