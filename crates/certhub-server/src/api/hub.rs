//! Hub-wide resources: statistics, settings, the audit trail.

use axum::Json;
use axum::extract::State;

use super::error::Query;
use axum::response::{IntoResponse, Response};
use certhub_core::{HubSettings, Rights, SettingsPatch};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::JsonObject;
use super::doc::ErrorResponse;
use super::{ApiError, AppState, Caller, OWNER};

/// Registry counts (Azure's `RegistryStatistics`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatistics {
    total_device_count: i64,
    enabled_device_count: i64,
    disabled_device_count: i64,
}

/// Live connections (Azure's `ServiceStatistics`), on every node of the hub.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatistics {
    connected_device_count: usize,
}

#[utoipa::path(get, path = "/statistics/devices", summary = "Registry counts",
    description = "Needs the RegistryRead right.",
    responses((status = 200, description = "success", body = DeviceStatistics), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn device_statistics(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading device statistics")?;
    let s = state.store().device_stats().await?;
    Ok(Json(DeviceStatistics {
        total_device_count: s.total,
        enabled_device_count: s.enabled,
        disabled_device_count: s.disabled,
    })
    .into_response())
}

#[utoipa::path(get, path = "/statistics/service", summary = "Connected devices",
    description = "Needs the ServiceConnect right.",
    responses((status = 200, description = "success", body = ServiceStatistics), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn service_statistics(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "reading service statistics")?;
    Ok(Json(ServiceStatistics {
        connected_device_count: state.connected_count(),
    })
    .into_response())
}

#[utoipa::path(get, path = "/settings", summary = "Hub settings",
    description = "Needs the RegistryRead right.",
    responses((status = 200, description = "success", body = HubSettings), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading hub settings")?;
    Ok(Json(state.settings().await?).into_response())
}

#[utoipa::path(patch, path = "/settings", summary = "Change hub settings",
    description = "Needs every (owner-class) right.", request_body = SettingsPatch,
    responses((status = 200, description = "success", body = HubSettings), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn patch_settings(
    State(state): State<AppState>,
    caller: Caller,
    JsonObject(patch): JsonObject<SettingsPatch>,
) -> Result<Response, ApiError> {
    caller.require(OWNER, "changing hub settings")?;
    let before = state.settings().await?;
    let after = match patch.apply(&before) {
        Ok(s) => s,
        Err(msg) => {
            state
                .audit(
                    &caller,
                    "settings.update",
                    "settings",
                    "ArgumentInvalid",
                    &msg,
                )
                .await;
            return Err(ApiError::bad_request("ArgumentInvalid", msg));
        }
    };
    state.store().put_settings(&after).await?;
    // Sessions the new settings shut out close now, not at their next connection.
    state.set_settings(after.clone());
    state.tell_changed().await;
    let detail = serde_json::to_string(&after).unwrap_or_default();
    state
        .audit(&caller, "settings.update", "settings", "ok", &detail)
        .await;
    Ok(Json(after).into_response())
}

/// The server certificate the hub presents (certhub's).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerCertificate {
    subject: String,
    issuer: String,
    /// hex
    serial: String,
    /// RFC 3339
    not_before: String,
    /// RFC 3339
    not_after: String,
    /// SHA-256 of the DER, hex
    sha256_thumbprint: String,
    subject_alt_names: Vec<String>,
}

fn server_certificate_view(info: certhub_pki::CertificateInfo) -> ServerCertificate {
    ServerCertificate {
        sha256_thumbprint: info.thumbprints.sha256,
        subject: info.subject,
        issuer: info.issuer,
        serial: info.serial,
        not_before: info.not_before,
        not_after: info.not_after,
        subject_alt_names: info.subject_alt_names,
    }
}

/// Runs a change of the TLS identity (key generation, file writes) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::tls::TlsError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

fn no_identity() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "ServerCertificateUnavailable",
        "this process serves no TLS identity of its own to show or rotate",
    )
}

#[utoipa::path(get, path = "/serverCertificate", summary = "The server certificate this node presents (certhub's)",
    description = "Needs the RegistryRead right.",
    responses((status = 200, description = "success", body = ServerCertificate), (status = 401, response = ErrorResponse), (status = 409, response = ErrorResponse)))]
pub async fn get_server_certificate(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading the server certificate")?;
    let identity = state.server_identity().ok_or_else(no_identity)?;
    let chain = identity.cert.chain();
    let leaf = chain.first().ok_or_else(no_identity)?;
    let info = certhub_pki::describe_certificate(leaf).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "ServerError",
            format!("the hub's server certificate does not parse: {e}"),
        )
    })?;
    Ok(Json(server_certificate_view(info)).into_response())
}

#[utoipa::path(post, path = "/serverCertificate/newCa", summary = "Start a server CA rollover on this node: a new server CA waits beside the current one, which still issues the certificate presented; give clients both (certhub hub server-ca), then switch (certhub's)",
    description = "Needs every (owner-class) right. Not on a hub whose nodes share a database (their server CA is shared). Answers the new CA.",
    responses((status = 200, description = "the new CA", body = ServerCertificate), (status = 401, response = ErrorResponse), (status = 409, response = ErrorResponse)))]
pub async fn new_server_ca(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(OWNER, "introducing a new server CA")?;
    if state.store().backend() == certhub_store::Backend::Postgres {
        let e = "this hub keeps its state in a shared database, whose nodes share one server CA: a server CA rollover is not available there yet; rotate each node's server certificate instead";
        return answered(&state, &caller, "hub.server-ca.new", Err(e.into())).await;
    }
    let identity = state.server_identity().ok_or_else(no_identity)?.clone();
    let done = blocking(move || identity.introduce_ca(time::OffsetDateTime::now_utc())).await;
    answered(&state, &caller, "hub.server-ca.new", done).await
}

#[utoipa::path(post, path = "/serverCertificate/switchCa", summary = "End a server CA rollover on this node: the new server CA becomes the hub's and issues the certificate presented from the next handshake on (connected devices stay connected); clients that trust only the previous CA can no longer connect (certhub's)",
    description = "Needs every (owner-class) right.",
    responses((status = 200, description = "the certificate presented now", body = ServerCertificate), (status = 401, response = ErrorResponse), (status = 409, response = ErrorResponse)))]
pub async fn switch_server_ca(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(OWNER, "switching to the new server CA")?;
    let identity = state.server_identity().ok_or_else(no_identity)?.clone();
    let hostnames = state.hostnames().to_vec();
    let done =
        blocking(move || identity.switch_ca(&hostnames, time::OffsetDateTime::now_utc())).await;
    let done = match done {
        Ok(None) => {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "Conflict",
                "no server CA rollover is under way: start one with certhub hub rotate-server-cert --new-ca",
            ));
        }
        Ok(Some(info)) => Ok(info),
        Err(e) => Err(e),
    };
    answered(&state, &caller, "hub.server-ca.switch", done).await
}

/// Audits a change's outcome and answers with the certificate it made (409 when it was not
/// made: what was there stays).
async fn answered(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    done: Result<certhub_pki::CertificateInfo, String>,
) -> Result<Response, ApiError> {
    match done {
        Ok(info) => {
            let detail = format!(
                "serial {}, issued by {:?}, valid until {}",
                info.serial, info.issuer, info.not_after
            );
            state
                .audit(caller, operation, "serverCertificate", "ok", &detail)
                .await;
            Ok(Json(server_certificate_view(info)).into_response())
        }
        Err(e) => {
            state
                .audit(caller, operation, "serverCertificate", "Conflict", &e)
                .await;
            Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "Conflict",
                format!("not done: {e}; what the hub presents stays as it was"),
            ))
        }
    }
}

#[utoipa::path(post, path = "/serverCertificate/rotate", summary = "Replace this node's server certificate with a new one from the hub's server CA (a new key): presented from the next handshake on, while connected devices stay connected (certhub's)",
    description = "Needs every (owner-class) right.",
    responses((status = 200, description = "the new certificate", body = ServerCertificate), (status = 401, response = ErrorResponse), (status = 409, response = ErrorResponse)))]
pub async fn rotate_server_certificate(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(OWNER, "rotating the server certificate")?;
    let identity = state.server_identity().ok_or_else(no_identity)?.clone();
    let hostnames = state.hostnames().to_vec();
    let rotated =
        blocking(move || identity.rotate(&hostnames, time::OffsetDateTime::now_utc())).await;
    answered(&state, &caller, "hub.server-certificate.rotate", rotated).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// records at most, newest first (default 100); outside 1-10000 is a 400
    #[param(minimum = 1, maximum = 10_000)]
    top: Option<i64>,
    /// only this operation, e.g. device.create (exact); empty matches everything
    operation: Option<String>,
    /// only this target and what lies below it (devices/widget-1 matches devices/widget-1/sensor); empty matches everything
    target: Option<String>,
    /// only this outcome: ok, or a refusal's code (exact); empty matches everything
    outcome: Option<String>,
}

#[utoipa::path(get, path = "/audit", summary = "The audit trail, newest first",
    description = "Needs the RegistryRead right.", params(AuditParams),
    responses((status = 200, description = "success", body = Vec<certhub_store::AuditRecord>), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<AuditParams>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading the audit trail")?;
    let top = super::error::top(params.top, 100, 10_000)?;
    let filter = certhub_store::AuditFilter {
        operation: params.operation.unwrap_or_default(),
        target: params.target.unwrap_or_default(),
        outcome: params.outcome.unwrap_or_default(),
    };
    Ok(Json(state.store().audit_filtered(&filter, top).await?).into_response())
}

/// A node of the hub, as `GET /cluster/nodes` describes it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    /// The node's id (new at every start).
    id: String,
    /// Its own service API address (`host:port`).
    address: String,
    version: String,
    started_time: String,
    /// When its last heartbeat arrived (this node: now).
    last_heard_time: String,
    /// Whether this is the node that answered.
    this_node: bool,
    /// Device sessions it holds.
    device_sessions: usize,
    /// The highest telemetry sequence number it knows to be stored.
    telemetry_sequence_number: i64,
    /// How far behind the highest such number of any node it is (0: up to date).
    telemetry_lag: i64,
}

#[utoipa::path(get, path = "/cluster/nodes", summary = "The hub's nodes: this one, and those it hears",
    description = "Needs the RegistryRead right. A single node lists itself; a node of a cluster (with NATS) also the others whose heartbeat (every 2 s) it heard in the last 6 s.",
    responses((status = 200, description = "success", body = Vec<ClusterNode>), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn cluster_nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading the hub's nodes")?;
    let nodes = state.cluster_nodes();
    let newest = nodes
        .iter()
        .map(|(_, info, _, _)| info.telemetry_seq)
        .max()
        .unwrap_or(0);
    let out: Vec<ClusterNode> = nodes
        .into_iter()
        .map(|(id, info, heard, this_node)| ClusterNode {
            id,
            address: info.address,
            version: info.version,
            started_time: certhub_core::azure_time(info.started_ms),
            last_heard_time: certhub_core::azure_time(heard),
            this_node,
            device_sessions: info.sessions,
            telemetry_sequence_number: info.telemetry_seq,
            telemetry_lag: newest - info.telemetry_seq,
        })
        .collect();
    Ok(Json(out).into_response())
}
