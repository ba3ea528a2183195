//! The service REST API in Azure IoT Hub's shape (azure-protocol 4), authorised by shared
//! access policies. One file per resource.

mod auth;
mod body;
mod c2d;
mod certificates;
mod devices;
mod error;
mod hub;
mod messages;
mod twins;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub(crate) use crate::state::now_ms;
pub use crate::state::{AppState, C2dLimits};
pub use auth::Caller;
pub use c2d::{FEEDBACK_TTL_MS as C2D_FEEDBACK_TTL_MS, StoredProperties as StoredC2dProperties};
pub use error::ApiError;

/// Largest request body the API reads (a bulk request of 100 devices fits easily).
pub const MAX_BODY: usize = 256 * 1024;

/// Rights of an owner-class policy (iothubowner): needed for settings and for registering a CA
/// without proof of possession.
pub(crate) const OWNER: certhub_core::Rights = certhub_core::Rights::REGISTRY_READ
    .union(certhub_core::Rights::REGISTRY_WRITE)
    .union(certhub_core::Rights::SERVICE_CONNECT)
    .union(certhub_core::Rights::DEVICE_CONNECT);

/// The API's description (OpenAPI 3), served without authentication.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// Prometheus counters, served without authentication (counts only, no identities).
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics().render(state.sessions().count()),
    )
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/devices", get(devices::list).post(devices::bulk))
        .route(
            "/devices/{id}",
            get(devices::get_device)
                .put(devices::put_device)
                .delete(devices::delete_device),
        )
        .route("/devices/query", post(twins::query))
        .route("/devices/{id}/messages/deviceBound", post(c2d::send))
        .route("/devices/{id}/commands", axum::routing::delete(c2d::purge))
        .route(
            "/messages/serviceBound/feedback",
            get(c2d::receive_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{token}",
            axum::routing::delete(c2d::complete_feedback),
        )
        .route(
            "/messages/serviceBound/feedback/{token}/abandon",
            post(c2d::abandon_feedback),
        )
        .route(
            "/twins/{id}",
            get(twins::get_device_twin)
                .put(twins::put_device_twin)
                .patch(twins::patch_device_twin),
        )
        .route("/twins/{id}/methods", post(twins::invoke_device_method))
        .route(
            "/twins/{id}/modules/{mid}",
            get(twins::get_module_twin)
                .put(twins::put_module_twin)
                .patch(twins::patch_module_twin),
        )
        .route(
            "/twins/{id}/modules/{mid}/methods",
            post(twins::invoke_module_method),
        )
        .route("/devices/{id}/modules", get(devices::list_modules))
        .route(
            "/devices/{id}/modules/{mid}",
            get(devices::get_module)
                .put(devices::put_module)
                .delete(devices::delete_module),
        )
        .route("/certificates", get(certificates::list))
        .route(
            "/certificates/{name}",
            get(certificates::get)
                .put(certificates::upload)
                .delete(certificates::delete),
        )
        .route(
            "/certificates/{name}/generateVerificationCode",
            post(certificates::generate_code),
        )
        .route("/certificates/{name}/verify", post(certificates::verify))
        .route("/statistics/devices", get(hub::device_statistics))
        .route("/statistics/service", get(hub::service_statistics))
        .route(
            "/settings",
            get(hub::get_settings).patch(hub::patch_settings),
        )
        .route("/audit", get(hub::audit))
        .route("/messages/events", get(messages::events))
        .route("/messages/events/stream", get(messages::stream))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_your_bookkeeping,
        ))
        .with_state(state)
}

/// Reads see the bookkeeping of every connection that came before them: device connections
/// hand their audit records, last activity and CA to a batch writer, and a read (any GET, and
/// the query) first waits until what was handed over is written.
async fn read_your_bookkeeping(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let reads =
        request.method() == axum::http::Method::GET || request.uri().path() == "/devices/query";
    if reads && request.uri().path() != "/metrics" {
        state.flush_bookkeeping().await;
    }
    next.run(request).await
}
