//! Hub-wide resources: statistics, settings, the audit trail.

use axum::Json;
use axum::extract::State;

use super::error::Query;
use axum::response::{IntoResponse, Response};
use certhub_core::{Rights, SettingsPatch};
use serde::Deserialize;

use super::body::JsonObject;
use super::{ApiError, AppState, Caller, OWNER};

pub async fn device_statistics(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading device statistics")?;
    let s = state.store().device_stats().await?;
    Ok(Json(serde_json::json!({
        "totalDeviceCount": s.total,
        "enabledDeviceCount": s.enabled,
        "disabledDeviceCount": s.disabled,
    }))
    .into_response())
}

pub async fn service_statistics(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "reading service statistics")?;
    Ok(
        Json(serde_json::json!({ "connectedDeviceCount": state.sessions().count() }))
            .into_response(),
    )
}

pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading hub settings")?;
    Ok(Json(state.settings().await?).into_response())
}

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
    let detail = serde_json::to_string(&after).unwrap_or_default();
    state
        .audit(&caller, "settings.update", "settings", "ok", &detail)
        .await;
    Ok(Json(after).into_response())
}

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    top: Option<i64>,
    operation: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
}

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
