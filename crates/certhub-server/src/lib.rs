//! certhub's adapters: everything that touches sockets, TLS and files for the hub. The HTTPS
//! listener serves the service REST API (the Azure IoT Hub shape, authorised by shared access
//! policies); `tls` makes and keeps the hub's own server CA and certificate in the data
//! directory. Decisions are taken by `certhub-core` and `certhub-pki`; state lives in
//! `certhub-store`.
//!
//! Built from values so tests can run a hub on `127.0.0.1:0` with their own shutdown signal:
//! `certhub_server::serve_https(listener, tls, router, state, options, shutdown)`.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod api;
pub mod auto_index;
mod bookkeeper;
pub mod c2d_send;
mod cluster;
mod console;
pub mod crl_fetch;
pub mod data_dir;
mod device;
pub mod device_tls;
pub mod devices_https;
mod dps;
pub mod expiry_watch;
pub mod files;
pub mod gate;
mod listener;
pub mod metrics;
mod mqtt;
mod ocsp;
pub mod query_plan;
mod random;
pub mod refusals;
pub mod sessions;
mod state;
mod telemetry;
pub mod telemetry_stream;
pub mod tls;
mod tls_stream;
mod trust;
mod twins;
mod ws_stream;

pub use amqp::serve_amqp;
pub use api::{C2D_FEEDBACK_TTL_MS, FILE_NOTIFICATION_TTL_MS, router};
pub use cluster::NatsServers;
pub use listener::{HttpsOptions, HttpsTls, serve_https};
pub use mqtt::{MqttOptions, serve_mqtt};

/// Everything the 443 listener serves: the service REST API and the device transports (MQTT
/// over WebSockets). Must be called within a Tokio runtime.
pub fn hub_router(state: AppState, devices: MqttOptions) -> axum::Router {
    router(state.clone())
        .merge(devices_https::device_router(state.clone(), devices))
        .merge(dps::https::router(state.clone()))
        .merge(console::router(state))
}
pub use state::{AppState, C2dLimits};
pub use telemetry::enforce_size_cap as enforce_telemetry_size_cap;
pub use telemetry::{Page as TelemetryPage, TelemetryLog};
