//! `/twinIndexes`: the twin paths the query answers from an index (certhub's; IoT Hub indexes
//! on its own and says nothing). `deviceId` and `status` are always indexed; a tag or a
//! desired or reported property is once an operator declares it. A query whose rows an index
//! found answers `x-certhub-query-plan: indexed`, one that read every twin `scanned`. The hub
//! also indexes a path on its own once scanning queries keep filtering on it (`auto_index`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use certhub_store::{JsonPath, MAX_TWIN_INDEXES};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::certificates::audited_at;
use super::doc::ErrorResponse;
use super::error::Path;
use super::{ApiError, AppState, Caller, now_ms};
use crate::query_plan::{index_path, query_path};

/// A twin path the query answers from an index.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TwinIndexView {
    /// the path as queries name it, e.g. `tags.site` or `properties.reported.firmware`
    path: String,
    /// when it was declared (`always` for deviceId and status)
    created: String,
    /// `always` (deviceId and status), `declared` (by an operator) or `auto` (built by the
    /// hub on its own after queries on the path read every twin; see twinAutoIndex)
    origin: &'static str,
}

/// The indexed twin paths.
#[derive(Debug, Serialize, ToSchema)]
pub struct TwinIndexList {
    value: Vec<TwinIndexView>,
}

/// `{path}`: a twin path as queries name it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TwinIndexPath {
    /// `tags.…`, `properties.desired.…` or `properties.reported.…`, segments of ASCII letters,
    /// digits and `_`
    path: String,
}

fn parse(path: &str) -> Result<JsonPath, ApiError> {
    index_path(path).ok_or_else(|| {
        let why = if matches!(path, "deviceId" | "status") {
            format!("{path} is always indexed")
        } else {
            format!(
                "{path:?} is not a path certhub can index: give tags.NAME, properties.desired.NAME \
                 or properties.reported.NAME (more .NAME segments for nested values, each of \
                 ASCII letters, digits and _, at most 16 in all)"
            )
        };
        ApiError::bad_request("ArgumentInvalid", why)
    })
}

#[utoipa::path(get, path = "/twinIndexes", operation_id = "list_twin_indexes",
    summary = "The twin paths queries answer from an index (certhub's): deviceId and status always, and the declared tags and properties",
    description = "Needs the RegistryRead right.",
    responses((status = 200, description = "success", body = TwinIndexList), (status = 401, response = ErrorResponse)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "listing the twin indexes")?;
    let always = ["deviceId", "status"].map(|p| TwinIndexView {
        path: p.to_string(),
        created: "always".to_string(),
        origin: "always",
    });
    let declared = state.store().twin_indexes().await?;
    let value = always
        .into_iter()
        .chain(declared.iter().map(|i| TwinIndexView {
            path: query_path(&i.path),
            created: certhub_core::azure_time(i.created_ms),
            origin: if i.auto { "auto" } else { "declared" },
        }))
        .collect();
    Ok(Json(TwinIndexList { value }).into_response())
}

#[utoipa::path(put, path = "/twinIndexes/{path}", operation_id = "add_twin_index",
    summary = "Index a tag or a desired or reported property for queries (certhub's). Building it reads every twin once; on SQLite, twin writes wait until it is built. Each index makes every twin write a little slower: at most 32.",
    description = "Needs the RegistryWrite right.", params(TwinIndexPath),
    responses((status = 201, description = "indexed"), (status = 200, description = "it was indexed already"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Path(TwinIndexPath { path }): Path<TwinIndexPath>,
) -> Result<StatusCode, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "indexing a twin path")?;
    let target = format!("twinIndexes/{path}");
    let result = async {
        let parsed = parse(&path)?;
        let declared = state.store().twin_indexes().await?;
        if !declared.iter().any(|i| i.path == parsed) && declared.len() >= MAX_TWIN_INDEXES {
            return Err(ApiError::bad_request(
                "ArgumentInvalid",
                format!(
                    "{MAX_TWIN_INDEXES} twin paths are indexed already, the most there may be (each \
                     one slows every twin write): remove one first (certhub hub twin-index remove)"
                ),
            ));
        }
        let started = std::time::Instant::now();
        let created = state.store().add_twin_index(&parsed, now_ms(), false).await?;
        Ok::<_, ApiError>((created, started.elapsed()))
    }
    .await;
    let detail = match &result {
        Ok((_, took)) => format!("built in {} ms", took.as_millis()),
        Err(_) => String::new(),
    };
    let (created, _) =
        audited_at(&state, &caller, "twin.index.add", &target, result, &detail).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

#[utoipa::path(delete, path = "/twinIndexes/{path}", operation_id = "remove_twin_index",
    summary = "Stop indexing a twin path (certhub's): queries on it read every twin again, and the hub does not index it on its own until it is declared again",
    description = "Needs the RegistryWrite right.", params(TwinIndexPath),
    responses((status = 204, description = "removed"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(TwinIndexPath { path }): Path<TwinIndexPath>,
) -> Result<StatusCode, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "removing a twin index")?;
    let target = format!("twinIndexes/{path}");
    let result = async {
        let parsed = parse(&path)?;
        if state.store().remove_twin_index(&parsed, now_ms()).await? {
            Ok(())
        } else {
            Err(ApiError::not_found(
                "TwinIndexNotFound",
                format!("{path} is not indexed; `certhub hub twin-index list` shows what is"),
            ))
        }
    }
    .await;
    audited_at(&state, &caller, "twin.index.remove", &target, result, "").await?;
    Ok(StatusCode::NO_CONTENT)
}
