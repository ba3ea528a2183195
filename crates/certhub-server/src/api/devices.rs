//! `/devices` and `/devices/{id}/modules`: the identity registry (azure-protocol 4.2-4.4).

use axum::Json;
use axum::extract::State;

use super::error::{Path, Query};
use axum::http::header::{ETAG, IF_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use certhub_core::{
    DeviceId, DeviceInput, DeviceView, IfMatch, ModuleId, ModuleInput, ModuleView, Rights,
};
use certhub_store::{DeleteOutcome, WriteOutcome};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::{JsonBody, JsonObject};
use super::doc::{DevicePath, ErrorBody, ErrorResponse, IfMatchHeader, ModulePath};
use super::{ApiError, AppState, Caller, now_ms};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// devices at most (default 1000); outside 1-1000 is a 400
    // Text, read by the handler, so that a bad value is refused in the hub's own words.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    top: Option<String>,
    /// certhub extension: only ids sorting after this one (paging through the registry).
    after: Option<String>,
}

pub(super) fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(raw).map_err(|e| ApiError::bad_request("ArgumentInvalid", e.to_string()))
}

pub(super) fn module_id(raw: &str) -> Result<ModuleId, ApiError> {
    ModuleId::new(raw).map_err(|e| ApiError::bad_request("ArgumentInvalid", e.to_string()))
}

pub(super) fn if_match(headers: &HeaderMap) -> IfMatch {
    IfMatch::parse(headers.get(IF_MATCH).and_then(|v| v.to_str().ok()))
}

pub(super) fn with_etag(json: serde_json::Value, etag: &certhub_core::Etag) -> Response {
    let mut r = Json(json).into_response();
    if let Ok(v) = etag.header_value().parse() {
        r.headers_mut().insert(ETAG, v);
    }
    r
}

pub(super) fn device_not_found(id: &str) -> ApiError {
    ApiError::not_found("DeviceNotFound", format!("Device {id} not registered"))
}

pub(super) fn module_not_found(id: &str, mid: &str) -> ApiError {
    ApiError::not_found(
        "ModuleNotFound",
        format!("Module {mid} of device {id} not registered"),
    )
}

#[utoipa::path(get, path = "/devices", operation_id = "list_devices", summary = "List devices in id order",
    description = "Needs the RegistryRead right.", params(ListParams),
    responses((status = 200, description = "success", body = Vec<DeviceView>), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "listing devices")?;
    let top = match params.top.as_deref() {
        None => 1000,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "ArgumentInvalid",
                    format!("top={t:?} must be a number from 1 to 1000"),
                ));
            }
        },
    };
    let after = params.after.unwrap_or_default();
    let devices = state.store().devices_after(&after, top).await?;
    let json: Vec<_> = devices
        .iter()
        .map(|d| d.to_json(state.sessions().state(d.device_id.as_str())))
        .collect();
    Ok(Json(json).into_response())
}

#[utoipa::path(get, path = "/devices/{id}", summary = "Read a device",
    description = "Needs the RegistryRead right.", params(DevicePath),
    responses((status = 200, description = "success", body = DeviceView, headers(("ETag" = String, description = "the quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading a device")?;
    let id = device_id(&id)?;
    let d = state
        .store()
        .device(&id)
        .await?
        .ok_or_else(|| device_not_found(id.as_str()))?;
    Ok(with_etag(
        d.to_json(state.sessions().state(id.as_str())),
        &d.etag,
    ))
}

#[utoipa::path(put, path = "/devices/{id}",
    summary = "Create (no If-Match) or update (If-Match) a device",
    description = "Needs the RegistryWrite right.", params(DevicePath, IfMatchHeader),
    request_body = DeviceInput,
    responses((status = 200, description = "success", body = DeviceView, headers(("ETag" = String, description = "the quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 412, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn put_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
    headers: HeaderMap,
    JsonObject(input): JsonObject<DeviceInput>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "creating or updating a device")?;
    let id = device_id(&id)?;
    let target = format!("devices/{id}");
    let result = put_device_inner(&state, &id, if_match(&headers), input).await;
    match &result {
        Ok((op, _)) => {
            if *op == "device.update" {
                // Status or credentials may have changed: live sessions must authenticate
                // again against the new identity.
                state
                    .kick_device(id.as_str(), "the device's identity was updated")
                    .await;
            }
            state.audit(&caller, op, &target, "ok", "").await
        }
        Err(e) => {
            state
                .audit(&caller, "device.put", &target, e.code, &e.message)
                .await
        }
    }
    result.map(|(_, r)| r)
}

async fn put_device_inner(
    state: &AppState,
    id: &DeviceId,
    condition: IfMatch,
    input: DeviceInput,
) -> Result<(&'static str, Response), ApiError> {
    let existing = state.store().device(id).await?;
    let now = now_ms();
    let bad = |e: certhub_core::IdentityError| ApiError::bad_request(e.code, e.message);
    match (condition, existing) {
        (IfMatch::Absent, Some(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "DeviceAlreadyExists",
            format!("A device with ID '{id}' is already registered; send If-Match to update it"),
        )),
        (IfMatch::Absent, None) => {
            let d = input.into_device(id, None, now).map_err(bad)?;
            match state.store().create_device(&d).await? {
                WriteOutcome::Written => Ok((
                    "device.create",
                    with_etag(d.to_json(state.sessions().state(id.as_str())), &d.etag),
                )),
                _ => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "DeviceAlreadyExists",
                    format!("A device with ID '{id}' is already registered"),
                )),
            }
        }
        (_, None) => Err(device_not_found(id.as_str())),
        (condition, Some(current)) => {
            if !condition.allows(&current.etag) {
                return Err(ApiError::precondition_failed(format!(
                    "the ETag given does not match device {id}'s current one; read it again"
                )));
            }
            let d = input.into_device(id, Some(&current), now).map_err(bad)?;
            match state.store().replace_device(&d, &current.etag).await? {
                WriteOutcome::Written => Ok((
                    "device.update",
                    with_etag(d.to_json(state.sessions().state(id.as_str())), &d.etag),
                )),
                _ => Err(ApiError::precondition_failed(format!(
                    "device {id} changed while it was being updated; read it again"
                ))),
            }
        }
    }
}

#[utoipa::path(delete, path = "/devices/{id}", summary = "Delete a device and its modules",
    description = "Needs the RegistryWrite right.", params(DevicePath, IfMatchHeader),
    responses((status = 204, description = "success"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "deleting a device")?;
    let id = device_id(&id)?;
    let condition = if_match(&headers);
    let current = match condition.is_list() {
        true => state.store().device(&id).await?.map(|d| d.etag),
        false => None,
    };
    let expected = condition.expected(current.as_ref());
    let target = format!("devices/{id}");
    let result = match state.store().delete_device(&id, expected.as_ref()).await? {
        DeleteOutcome::Deleted => {
            state
                .kick_device(id.as_str(), "the device was deleted")
                .await;
            state.forget_deleted(id.as_str(), None).await;
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteOutcome::NotFound => Err(device_not_found(id.as_str())),
        DeleteOutcome::Stale => Err(ApiError::precondition_failed(format!(
            "the ETag given does not match device {id}'s current one; read it again"
        ))),
    };
    let (outcome, detail) = match &result {
        Ok(_) => ("ok", String::new()),
        Err(e) => (e.code, e.message.clone()),
    };
    state
        .audit(&caller, "device.delete", &target, outcome, &detail)
        .await;
    result
}

#[utoipa::path(get, path = "/devices/{id}/modules", summary = "List a device's modules",
    description = "Needs the RegistryRead right.", params(DevicePath),
    responses((status = 200, description = "success", body = Vec<ModuleView>), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn list_modules(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "listing modules")?;
    let id = device_id(&id)?;
    if state.store().device(&id).await?.is_none() {
        return Err(device_not_found(id.as_str()));
    }
    let modules = state.store().modules(&id).await?;
    let json: Vec<_> = modules
        .iter()
        .map(|m| m.to_json(state.sessions().state(&format!("{id}/{}", m.module_id))))
        .collect();
    Ok(Json(json).into_response())
}

#[utoipa::path(get, path = "/devices/{id}/modules/{mid}", summary = "Read a module",
    description = "Needs the RegistryRead right.", params(ModulePath),
    responses((status = 200, description = "success", body = ModuleView, headers(("ETag" = String, description = "the quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn get_module(
    State(state): State<AppState>,
    caller: Caller,
    Path(ModulePath { id, mid }): Path<ModulePath>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading a module")?;
    let (id, mid) = (device_id(&id)?, module_id(&mid)?);
    let m = state
        .store()
        .module(&id, &mid)
        .await?
        .ok_or_else(|| module_not_found(id.as_str(), mid.as_str()))?;
    Ok(with_etag(
        m.to_json(state.sessions().state(&format!("{id}/{mid}"))),
        &m.etag,
    ))
}

#[utoipa::path(put, path = "/devices/{id}/modules/{mid}",
    summary = "Create (no If-Match) or update (If-Match) a module",
    description = "Needs the RegistryWrite right.", params(ModulePath, IfMatchHeader),
    request_body = ModuleInput,
    responses((status = 200, description = "success", body = ModuleView, headers(("ETag" = String, description = "the quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 412, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn put_module(
    State(state): State<AppState>,
    caller: Caller,
    Path(ModulePath { id, mid }): Path<ModulePath>,
    headers: HeaderMap,
    JsonObject(input): JsonObject<ModuleInput>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "creating or updating a module")?;
    let (id, mid) = (device_id(&id)?, module_id(&mid)?);
    let target = format!("devices/{id}/modules/{mid}");
    let result = put_module_inner(&state, &id, &mid, if_match(&headers), input).await;
    match &result {
        Ok((op, _)) => {
            if *op == "module.update" {
                state
                    .kick_module(
                        id.as_str(),
                        mid.as_str(),
                        "the module's identity was updated",
                    )
                    .await;
            }
            state.audit(&caller, op, &target, "ok", "").await
        }
        Err(e) => {
            state
                .audit(&caller, "module.put", &target, e.code, &e.message)
                .await
        }
    }
    result.map(|(_, r)| r)
}

async fn put_module_inner(
    state: &AppState,
    id: &DeviceId,
    mid: &ModuleId,
    condition: IfMatch,
    input: ModuleInput,
) -> Result<(&'static str, Response), ApiError> {
    if state.store().device(id).await?.is_none() {
        return Err(device_not_found(id.as_str()));
    }
    let existing = state.store().module(id, mid).await?;
    let now = now_ms();
    let bad = |e: certhub_core::IdentityError| ApiError::bad_request(e.code, e.message);
    match (condition, existing) {
        (IfMatch::Absent, Some(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ModuleAlreadyExistsOnDevice",
            format!("Module '{mid}' already exists on device '{id}'; send If-Match to update it"),
        )),
        (IfMatch::Absent, None) => {
            let m = input.into_module(id, mid, None, now).map_err(bad)?;
            match state.store().create_module(&m).await? {
                WriteOutcome::Written => Ok((
                    "module.create",
                    with_etag(
                        m.to_json(state.sessions().state(&format!("{id}/{mid}"))),
                        &m.etag,
                    ),
                )),
                _ => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "ModuleAlreadyExistsOnDevice",
                    format!("Module '{mid}' already exists on device '{id}'"),
                )),
            }
        }
        (_, None) => Err(module_not_found(id.as_str(), mid.as_str())),
        (condition, Some(current)) => {
            if !condition.allows(&current.etag) {
                return Err(ApiError::precondition_failed(format!(
                    "the ETag given does not match module {id}/{mid}'s current one; read it again"
                )));
            }
            let m = input
                .into_module(id, mid, Some(&current), now)
                .map_err(bad)?;
            match state.store().replace_module(&m, &current.etag).await? {
                WriteOutcome::Written => Ok((
                    "module.update",
                    with_etag(
                        m.to_json(state.sessions().state(&format!("{id}/{mid}"))),
                        &m.etag,
                    ),
                )),
                _ => Err(ApiError::precondition_failed(format!(
                    "module {id}/{mid} changed while it was being updated; read it again"
                ))),
            }
        }
    }
}

#[utoipa::path(delete, path = "/devices/{id}/modules/{mid}", summary = "Delete a module",
    description = "Needs the RegistryWrite right.", params(ModulePath, IfMatchHeader),
    responses((status = 204, description = "success"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn delete_module(
    State(state): State<AppState>,
    caller: Caller,
    Path(ModulePath { id, mid }): Path<ModulePath>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "deleting a module")?;
    let (id, mid) = (device_id(&id)?, module_id(&mid)?);
    let condition = if_match(&headers);
    let current = match condition.is_list() {
        true => state.store().module(&id, &mid).await?.map(|m| m.etag),
        false => None,
    };
    let expected = condition.expected(current.as_ref());
    let target = format!("devices/{id}/modules/{mid}");
    let result = match state
        .store()
        .delete_module(&id, &mid, expected.as_ref())
        .await?
    {
        DeleteOutcome::Deleted => {
            // Shut out at once, as a deleted device is.
            state
                .kick_module(id.as_str(), mid.as_str(), "the module was deleted")
                .await;
            state.forget_deleted(id.as_str(), Some(mid.as_str())).await;
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteOutcome::NotFound => Err(module_not_found(id.as_str(), mid.as_str())),
        DeleteOutcome::Stale => Err(ApiError::precondition_failed(format!(
            "the ETag given does not match module {id}/{mid}'s current one; read it again"
        ))),
    };
    let (outcome, detail) = match &result {
        Ok(_) => ("ok", String::new()),
        Err(e) => (e.code, e.message.clone()),
    };
    state
        .audit(&caller, "module.delete", &target, outcome, &detail)
        .await;
    result
}

/// The answer to a bulk request: Azure's `BulkRegistryOperationResult`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkResult {
    is_successful: bool,
    errors: Vec<BulkError>,
    warnings: Vec<String>,
}

/// A refused bulk entry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkError {
    device_id: String,
    error_code: String,
    error_status: String,
}

/// What a 400 to a bulk request carries: the result, when entries were refused, or the error
/// that refused the request itself.
// Only described, never built: the handler returns the two.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BulkRefusal {
    Partial(BulkResult),
    Refused(ErrorBody),
}

/// Most entries one bulk request may carry (Azure's limit).
const MAX_BULK: usize = 100;

/// `POST /devices`: bulk create or delete (Azure's `ExportImportDevice` entries, `importMode`
/// `create` by default, or `delete`). Valid entries are applied in one transaction; every
/// refused entry is reported by id; the answer is 200 when none was refused, else 400.
#[utoipa::path(post, path = "/devices", operation_id = "bulk_devices", summary = "Bulk create or delete (at most 100 entries)",
    description = "Needs the RegistryWrite right.", request_body = Vec<certhub_core::BulkEntry>,
    responses((status = 200, description = "success", body = BulkResult),
        (status = 400, description = "an entry was refused (the others were applied), or the request itself", body = BulkRefusal),
        (status = 401, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn bulk(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(entries): JsonBody<Vec<certhub_core::BulkEntry>>,
) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_WRITE, "bulk registry operations")?;
    if entries.len() > MAX_BULK {
        return Err(ApiError::bad_request(
            "TooManyDevices",
            format!(
                "{} entries; a bulk request carries at most {MAX_BULK}",
                entries.len()
            ),
        ));
    }
    let now = now_ms();
    let mut errors = Vec::new();
    let mut refuse = |id: &str, code: &str, msg: String| {
        errors.push(BulkError {
            device_id: id.to_string(),
            error_code: code.to_string(),
            error_status: msg,
        });
    };
    let mut creates = Vec::new();
    let mut deletes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in &entries {
        let id = match DeviceId::new(e.id.clone()) {
            Ok(id) => id,
            Err(err) => {
                refuse(&e.id, "ArgumentInvalid", err.to_string());
                continue;
            }
        };
        if !seen.insert(e.id.clone()) {
            refuse(
                &e.id,
                "ArgumentInvalid",
                "the id appears twice in this request".into(),
            );
            continue;
        }
        if e.module_id.is_some() {
            refuse(
                &e.id,
                "ArgumentInvalid",
                "modules are not supported in bulk requests; use PUT /devices/{id}/modules/{mid}"
                    .into(),
            );
            continue;
        }
        match e.import_mode.as_deref().unwrap_or("create") {
            "create" => match e.device_input().into_device(&id, None, now) {
                Ok(d) => creates.push(d),
                Err(err) => refuse(&e.id, err.code, err.message),
            },
            "delete" => deletes.push(id),
            other => refuse(
                &e.id,
                "ArgumentInvalid",
                format!("importMode {other:?} is not supported; use create or delete"),
            ),
        }
    }
    let ids: Vec<String> = creates.iter().map(|d| d.device_id.to_string()).collect();
    let existing = state.store().existing_device_ids(&ids).await?;
    creates.retain(|d| {
        let taken = existing.contains(d.device_id.as_str());
        if taken {
            refuse(
                d.device_id.as_str(),
                "DeviceAlreadyExists",
                format!("A device with ID '{}' is already registered", d.device_id),
            );
        }
        !taken
    });
    let created = state.store().insert_devices(&creates).await?;
    let mut deleted = 0;
    for id in &deletes {
        match state.store().delete_device(id, None).await? {
            DeleteOutcome::Deleted => {
                state
                    .kick_device(id.as_str(), "the device was deleted")
                    .await;
                state.forget_deleted(id.as_str(), None).await;
                deleted += 1;
            }
            _ => refuse(
                id.as_str(),
                "DeviceNotFound",
                format!("Device {id} not registered"),
            ),
        }
    }
    let ok = errors.is_empty();
    let detail = format!(
        "created {created}, deleted {deleted}, refused {}",
        errors.len()
    );
    state
        .audit(
            &caller,
            "device.bulk",
            "devices",
            if ok { "ok" } else { "partial" },
            &detail,
        )
        .await;
    let body = BulkResult {
        is_successful: ok,
        errors,
        warnings: Vec::new(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, Json(body)).into_response())
}
