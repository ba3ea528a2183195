//! The service REST API in Azure IoT Hub's shape (azure-protocol 4), authorised by shared
//! access policies. One file per resource.

// The handler modules allow unused_qualifications: `#[utoipa::path]` expands the types it
// names (params, bodies) to qualified paths, which the lint reports at the attribute.
pub(crate) mod auth;
#[allow(unused_qualifications)]
pub(crate) mod blocks;
pub(crate) mod body;
#[allow(unused_qualifications)]
pub(crate) mod c2d;
pub(crate) mod certificates;
pub(crate) mod crls;
#[allow(unused_qualifications)]
pub(crate) mod devices;
pub(crate) mod doc;
#[allow(unused_qualifications)]
mod dps;
pub(crate) mod error;
mod expiry;
#[allow(unused_qualifications)]
pub(crate) mod files;
#[allow(unused_qualifications)]
pub(crate) mod hub;
#[allow(unused_qualifications)]
mod messages;
#[allow(unused_qualifications)]
mod twin_indexes;
#[allow(unused_qualifications)]
pub(crate) mod twins;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::c2d_send::StoredProperties as StoredC2dProperties;
pub(crate) use crate::state::now_ms;
pub use crate::state::{AppState, C2dLimits};
pub use auth::Caller;
pub use c2d::FEEDBACK_TTL_MS as C2D_FEEDBACK_TTL_MS;
pub use error::ApiError;
pub use files::FILE_NOTIFICATION_TTL_MS;

/// Largest request body the API reads (a bulk request of 100 devices fits easily).
pub const MAX_BODY: usize = 256 * 1024;

/// Rights of an owner-class policy (iothubowner): needed for settings and for registering a CA
/// without proof of possession.
pub(crate) const OWNER: certhub_core::Rights = certhub_core::Rights::REGISTRY_READ
    .union(certhub_core::Rights::REGISTRY_WRITE)
    .union(certhub_core::Rights::SERVICE_CONNECT)
    .union(certhub_core::Rights::DEVICE_CONNECT);

/// The API's description (OpenAPI 3.1), generated once from the routes `api()` registers.
static OPENAPI: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    openapi_document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!(r#"{{"error": "the description did not serialize: {e}"}}"#))
});

/// The API's description, as `GET /openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

#[utoipa::path(get, path = "/openapi.json", summary = "This document (no authentication)",
    security(()),
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI.as_str(),
    )
}

/// Prometheus counters, served without authentication (counts only, no identities).
#[utoipa::path(get, path = "/metrics",
    summary = "Prometheus counters: connection outcomes by reason, telemetry messages, live sessions (no authentication)",
    security(()),
    responses((status = 200, description = "text/plain exposition format", content_type = "text/plain", body = String)))]
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics().render(
            state.sessions().count(),
            state.telemetry().stream_batches(),
            state.telemetry().stats(),
        ),
    )
}

/// Every route with its description. Routes are added only through `routes!`, which
/// registers a handler together with its `#[utoipa::path]`: a route added any other way
/// (`.route(...)`) would be served undocumented, and the `every_route_is_documented` test
/// refuses it.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(devices::list, devices::bulk))
        .routes(routes!(
            devices::get_device,
            devices::put_device,
            devices::delete_device
        ))
        .routes(routes!(twins::query))
        .routes(routes!(twin_indexes::list))
        .routes(routes!(twin_indexes::add, twin_indexes::remove))
        .routes(routes!(c2d::send))
        .routes(routes!(c2d::purge))
        .routes(routes!(c2d::receive_feedback))
        .routes(routes!(c2d::complete_feedback))
        .routes(routes!(c2d::abandon_feedback))
        .routes(routes!(files::receive_notification))
        .routes(routes!(files::complete_notification))
        .routes(routes!(files::abandon_notification))
        .routes(routes!(files::list))
        .routes(routes!(files::content))
        .routes(routes!(
            twins::get_device_twin,
            twins::put_device_twin,
            twins::patch_device_twin
        ))
        .routes(routes!(twins::invoke_device_method))
        .routes(routes!(
            twins::get_module_twin,
            twins::put_module_twin,
            twins::patch_module_twin
        ))
        .routes(routes!(twins::invoke_module_method))
        .routes(routes!(devices::list_modules))
        .routes(routes!(
            devices::get_module,
            devices::put_module,
            devices::delete_module
        ))
        .routes(routes!(certificates::list))
        .routes(routes!(
            certificates::get,
            certificates::upload,
            certificates::delete
        ))
        .routes(routes!(crls::list, crls::upload))
        .routes(routes!(blocks::list, blocks::block))
        .routes(routes!(blocks::unblock))
        .routes(routes!(blocks::impact))
        .routes(routes!(expiry::expiry))
        .routes(routes!(crls::delete))
        .routes(routes!(crls::get_policy, crls::set_policy))
        .routes(routes!(crls::list_sources))
        .routes(routes!(certificates::generate_code))
        .routes(routes!(certificates::verify))
        .routes(routes!(
            certificates::enable_jitr,
            certificates::disable_jitr
        ))
        .routes(routes!(hub::device_statistics))
        .routes(routes!(hub::service_statistics))
        .routes(routes!(hub::cluster_nodes))
        .routes(routes!(hub::get_settings, hub::patch_settings))
        .routes(routes!(hub::audit))
        .routes(routes!(hub::get_server_certificate))
        .routes(routes!(hub::rotate_server_certificate))
        .routes(routes!(hub::new_server_ca))
        .routes(routes!(hub::switch_server_ca))
        .routes(routes!(messages::events))
        .routes(routes!(messages::stream))
        .routes(routes!(dps::get_group, dps::put_group, dps::delete_group))
        .routes(routes!(dps::query_groups))
        .routes(routes!(dps::bulk_groups))
        .routes(routes!(dps::bulk_groups_slash))
        .routes(routes!(dps::group_attestation))
        .routes(routes!(dps::group_attestation_lower))
        .routes(routes!(
            dps::get_enrollment,
            dps::put_enrollment,
            dps::delete_enrollment
        ))
        .routes(routes!(dps::query_enrollments))
        .routes(routes!(dps::bulk_enrollments))
        .routes(routes!(dps::bulk_enrollments_slash))
        .routes(routes!(dps::enrollment_attestation))
        .routes(routes!(dps::get_registration, dps::delete_registration))
        .routes(routes!(dps::query_registrations))
        .routes(routes!(dps::provisioning))
        .routes(routes!(dps::put_linked_hub, dps::delete_linked_hub))
        .routes(routes!(openapi))
        .routes(routes!(metrics))
}

/// The whole API. The fallbacks and layers are not routes: they answer unknown paths and
/// methods, and wrap the routes above.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api().split_for_parts();
    routes
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
