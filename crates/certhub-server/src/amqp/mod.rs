//! AMQP 1.0 (issue 13), on certhub-amqp's engine and fe2o3-amqp's types (docs/research/amqp): the device
//! listener on 5671 ([`serve_amqp`]: the same TLS, gate and session core as MQTT on 8883),
//! one connection's protocol header, SASL, CBS and links ([`connection`]), and the grammar of
//! the link addresses the Azure device, service and Event Hubs SDKs attach to ([`address`]).
//! Served: devices' telemetry, C2D, twin and methods (X.509 by the TLS client chain, SAS by
//! CBS put-token), services' C2D sends, feedback and file notifications (`service`), and the
//! Event Hubs-compatible telemetry reader ([`eventhub`]).

pub mod address;
mod connection;
pub mod eventhub;
mod service;

pub(crate) use connection::run as run_connection;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::mqtt::{MqttOptions, serve_devices};
use crate::state::AppState;

/// Serves AMQP devices on `listener` until `shutdown` completes (the device listener's limits:
/// sessions, pending handshakes, refusals).
pub async fn serve_amqp(
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
        "amqp",
        shutdown,
        |tls, conn, core| Box::pin(connection::run(tls, conn, core)),
    )
    .await;
}
