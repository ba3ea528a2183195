//! `/twins/{id}` and `/twins/{id}/modules/{mid}` (get, replace, patch), `/devices/query`, and
//! direct methods `/twins/{id}/methods` (azure-protocol 4.2, 1.8, 1.9).

use std::time::Duration;

use axum::Json;
use axum::extract::State;

use super::error::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use certhub_core::{Etag, IfMatch, Rights};
use certhub_twin::TwinState;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::body::{JsonBody, JsonObject};
use super::devices::{
    device_id, device_not_found, if_match, module_id, module_not_found, with_etag,
};
use super::doc::{DevicePath, ErrorResponse, IfMatchHeader, ModulePath};
use super::{ApiError, AppState, Caller};
use crate::sessions::{MethodReply, Undeliverable};
use crate::twins::{self, TwinOpError};

/// Reading twins: Azure grants it to RegistryRead and to ServiceConnect.
fn require_read(caller: &Caller, action: &str) -> Result<(), ApiError> {
    caller
        .require(Rights::REGISTRY_READ, action)
        .or_else(|_| caller.require(Rights::SERVICE_CONNECT, action))
}

impl From<TwinOpError> for ApiError {
    fn from(e: TwinOpError) -> Self {
        match e {
            TwinOpError::Invalid(e) => ApiError::bad_request("ArgumentInvalid", e.to_string()),
            TwinOpError::Stale { .. } => ApiError::precondition_failed(e.to_string()),
            TwinOpError::Gone => ApiError::not_found("DeviceNotFound", "the identity was deleted"),
            TwinOpError::Contended(_) => {
                ApiError::new(StatusCode::CONFLICT, "PreconditionFailed", e.to_string())
            }
            TwinOpError::Store(e) => e.into(),
        }
    }
}

/// The identity whose twin a route names.
struct Target {
    device: certhub_core::DeviceId,
    module: Option<certhub_core::ModuleId>,
}

impl Target {
    fn cn(&self) -> String {
        match &self.module {
            Some(m) => format!("{}/{m}", self.device),
            None => self.device.to_string(),
        }
    }

    /// The twin JSON with the identity's current fields; 404 when the identity is gone.
    async fn json(&self, state: &AppState, twin: &TwinState) -> Result<Value, ApiError> {
        match &self.module {
            None => {
                let d = state
                    .store()
                    .device(&self.device)
                    .await?
                    .ok_or_else(|| device_not_found(self.device.as_str()))?;
                Ok(twins::device_twin_json(state, &d, twin))
            }
            Some(m) => {
                let module = state
                    .store()
                    .module(&self.device, m)
                    .await?
                    .ok_or_else(|| module_not_found(self.device.as_str(), m.as_str()))?;
                Ok(twins::module_twin_json(state, &module, twin))
            }
        }
    }

    async fn exists(&self, state: &AppState) -> Result<(), ApiError> {
        match &self.module {
            None => state
                .store()
                .device(&self.device)
                .await?
                .map(|_| ())
                .ok_or_else(|| device_not_found(self.device.as_str())),
            Some(m) => state
                .store()
                .module(&self.device, m)
                .await?
                .map(|_| ())
                .ok_or_else(|| module_not_found(self.device.as_str(), m.as_str())),
        }
    }
}

fn target(id: &str, mid: Option<&str>) -> Result<Target, ApiError> {
    Ok(Target {
        device: device_id(id)?,
        module: mid.map(module_id).transpose()?,
    })
}

async fn get_twin(state: &AppState, caller: &Caller, t: Target) -> Result<Response, ApiError> {
    require_read(caller, "reading a twin")?;
    t.exists(state).await?;
    let twin = twins::read(state, &t.device, t.module.as_ref()).await?;
    let json = t.json(state, &twin).await?;
    Ok(with_etag(json, &Etag(twin.etag())))
}

#[utoipa::path(get, path = "/twins/{id}", summary = "The device twin",
    description = "Needs the RegistryRead or the ServiceConnect right.", params(DevicePath),
    responses((status = 200, description = "success", body = TwinDoc, headers(("ETag" = String, description = "the twin's quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn get_device_twin(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
) -> Result<Response, ApiError> {
    get_twin(&state, &caller, target(&id, None)?).await
}

#[utoipa::path(get, path = "/twins/{id}/modules/{mid}", summary = "The module twin",
    description = "Needs the RegistryRead or the ServiceConnect right.", params(ModulePath),
    responses((status = 200, description = "success", body = TwinDoc, headers(("ETag" = String, description = "the twin's quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn get_module_twin(
    State(state): State<AppState>,
    caller: Caller,
    Path(ModulePath { id, mid }): Path<ModulePath>,
) -> Result<Response, ApiError> {
    get_twin(&state, &caller, target(&id, Some(&mid))?).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Replace,
    Patch,
}

async fn write_twin(
    state: &AppState,
    caller: &Caller,
    t: Target,
    condition: IfMatch,
    body: &Value,
    how: Write,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "updating a twin")?;
    t.exists(state).await?;
    let (tags, desired) = certhub_twin::service_patch_parts(body).map_err(TwinOpError::Invalid)?;
    let now = twins::now_iso();
    let (notification, twin) = twins::update(state, &t.device, t.module.as_ref(), |twin| {
        if !condition.allows(&Etag(twin.etag())) {
            return Err(TwinOpError::Stale {
                current: twin.etag(),
                expected: match &condition {
                    IfMatch::Tag(t) => t.0.clone(),
                    IfMatch::AnyOf(ts) => ts
                        .iter()
                        .map(|t| t.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    IfMatch::Absent | IfMatch::Any => String::new(),
                },
            });
        }
        Ok(match how {
            Write::Replace => twin.replace(tags, desired, &now)?,
            Write::Patch => {
                if let Some(tags) = tags {
                    twin.patch_tags(tags)?;
                }
                desired.map(|d| twin.patch_desired(d, &now)).transpose()?
            }
        })
    })
    .await?;
    let cn = t.cn();
    if let Some(patch) = notification {
        // Pushed to a connected device that subscribed; one that is offline or not subscribed
        // reads the desired properties with its next twin GET (the Python SDK does so on
        // every reconnect).
        match state.push_desired(&cn, patch.to_string()).await {
            Ok(()) | Err(Undeliverable::NotOnline) => {}
            Err(Undeliverable::Busy) => {
                tracing::warn!(
                    client_id = cn,
                    "desired patch not pushed: the session is busy"
                )
            }
        }
    }
    state
        .audit(
            caller,
            if how == Write::Replace {
                "twin.replace"
            } else {
                "twin.patch"
            },
            &format!("twins/{cn}"),
            "ok",
            &format!("version {}", twin.version()),
        )
        .await;
    let json = t.json(state, &twin).await?;
    Ok(with_etag(json, &Etag(twin.etag())))
}

#[utoipa::path(put, path = "/twins/{id}", summary = "Replace the device twin's tags and desired properties",
    description = "Needs the ServiceConnect right.", params(DevicePath, IfMatchHeader), request_body = TwinInput,
    responses((status = 200, description = "success", body = TwinDoc, headers(("ETag" = String, description = "the twin's quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 412, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn put_device_twin(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(DevicePath { id }): Path<DevicePath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let t = target(&id, None)?;
    write_twin(
        &state,
        &caller,
        t,
        if_match(&headers),
        &body,
        Write::Replace,
    )
    .await
}

#[utoipa::path(patch, path = "/twins/{id}", summary = "Merge tags and desired properties into the device twin (null deletes)",
    description = "Needs the ServiceConnect right.", params(DevicePath, IfMatchHeader), request_body = TwinInput,
    responses((status = 200, description = "success", body = TwinDoc, headers(("ETag" = String, description = "the twin's quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 412, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn patch_device_twin(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(DevicePath { id }): Path<DevicePath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let t = target(&id, None)?;
    write_twin(&state, &caller, t, if_match(&headers), &body, Write::Patch).await
}

#[utoipa::path(put, path = "/twins/{id}/modules/{mid}", summary = "Replace the module twin's tags and desired properties",
    description = "Needs the ServiceConnect right.", params(ModulePath, IfMatchHeader), request_body = TwinInput,
    responses((status = 200, description = "success", body = TwinDoc, headers(("ETag" = String, description = "the twin's quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 412, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn put_module_twin(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ModulePath { id, mid }): Path<ModulePath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let t = target(&id, Some(&mid))?;
    write_twin(
        &state,
        &caller,
        t,
        if_match(&headers),
        &body,
        Write::Replace,
    )
    .await
}

#[utoipa::path(patch, path = "/twins/{id}/modules/{mid}", summary = "Merge tags and desired properties into the module twin (null deletes)",
    description = "Needs the ServiceConnect right.", params(ModulePath, IfMatchHeader), request_body = TwinInput,
    responses((status = 200, description = "success", body = TwinDoc, headers(("ETag" = String, description = "the twin's quoted ETag, for If-Match"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 409, response = ErrorResponse), (status = 412, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn patch_module_twin(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(ModulePath { id, mid }): Path<ModulePath>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let t = target(&id, Some(&mid))?;
    write_twin(&state, &caller, t, if_match(&headers), &body, Write::Patch).await
}

// ---- direct methods ----

/// Largest method payload, each way (azure-protocol 1.9).
const MAX_METHOD_PAYLOAD: usize = 128 * 1024;

/// A direct method call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MethodCall {
    /// 1 to 128 characters without / ? # + or control characters
    #[schema(pattern = "^[^/?#+\\x00-\\x1f\\x7f]{1,128}$")]
    method_name: String,
    /// any JSON, passed to the device as it is
    #[serde(default)]
    payload: Value,
    /// how long the device has to answer, in seconds
    #[schema(minimum = 5, maximum = 300, default = 30)]
    response_timeout_in_seconds: Option<u64>,
    /// how long to wait for the device to connect, in seconds
    #[schema(minimum = 0, maximum = 300, default = 0)]
    connect_timeout_in_seconds: Option<u64>,
}

/// A device's answer to a direct method.
#[derive(Debug, Serialize, ToSchema)]
pub struct MethodResult {
    status: i64,
    /// the device's payload: JSON, or a string when it was not JSON
    payload: Value,
}

/// A twin as the service reads it: the identity's fields (deviceId, moduleId, status,
/// connectionState, authenticationType, ...) with version, tags and the desired and reported
/// properties, each with `$version` and `$metadata`.
// Only described: the JSON is built from the stored twin (`crate::twins`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Twin)]
#[allow(dead_code)]
pub struct TwinDoc {
    device_id: String,
    /// module twins only
    #[schema(nullable = false)]
    module_id: Option<String>,
    etag: String,
    version: i64,
    #[schema(value_type = Object)]
    tags: Value,
    #[schema(inline)]
    properties: TwinProperties,
}

#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
struct TwinProperties {
    #[schema(value_type = Object)]
    desired: Value,
    #[schema(value_type = Object)]
    reported: Value,
}

/// A twin as PUT and PATCH take it: tags and desired properties; deviceId, moduleId, etag and
/// version are accepted and ignored; null is the same as absent.
// Only described: the handler reads the body as JSON and `certhub_twin` checks it, with the
// rules said here.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct TwinInput {
    /// accepted and ignored (the SDKs echo it)
    #[serde(default)]
    device_id: Option<Value>,
    /// accepted and ignored (the SDKs echo it)
    #[serde(default)]
    module_id: Option<Value>,
    /// accepted and ignored (the SDKs echo it)
    #[serde(default)]
    etag: Option<Value>,
    /// accepted and ignored (the SDKs echo it)
    #[serde(default)]
    version: Option<Value>,
    /// property names: 1 to 1024 bytes without . $ or space; at most 10 levels deep
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    tags: Option<Value>,
    #[serde(default)]
    #[schema(inline)]
    properties: Option<TwinInputProperties>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TwinInputProperties {
    /// the same rules as tags
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    desired: Option<Value>,
    /// the device's own: accepted only empty or echoing $version and $metadata, and ignored
    #[serde(default)]
    #[schema(inline)]
    reported: Option<ReportedEcho>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ReportedEcho {
    #[serde(rename = "$version", default)]
    version: Option<Value>,
    #[serde(rename = "$metadata", default)]
    metadata: Option<Value>,
}

fn timeout(
    value: Option<u64>,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<Duration, ApiError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(Duration::from_secs(v))
    } else {
        Err(ApiError::bad_request(
            "ArgumentInvalid",
            format!(
                "{name} is {v}; it must be from {} to {} seconds",
                range.start(),
                range.end()
            ),
        ))
    }
}

async fn invoke(
    state: &AppState,
    caller: &Caller,
    t: Target,
    call: MethodCall,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "invoking a direct method")?;
    t.exists(state).await?;
    let name = call.method_name.trim();
    if name.is_empty()
        || name.len() > 128
        || name.contains(['/', '?', '#', '+'])
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "ArgumentInvalid",
            format!(
                "methodName {:?} is not usable: give 1 to 128 characters without '/', '?', '#', '+' or control characters",
                call.method_name
            ),
        ));
    }
    let response_timeout = timeout(
        call.response_timeout_in_seconds,
        "responseTimeoutInSeconds",
        5..=300,
        30,
    )?;
    let connect_timeout = timeout(
        call.connect_timeout_in_seconds,
        "connectTimeoutInSeconds",
        0..=300,
        0,
    )?;
    // The Python service SDK sends "" for no payload; the device gets JSON either way.
    let payload = serde_json::to_vec(&call.payload).unwrap_or_default();
    if payload.len() > MAX_METHOD_PAYLOAD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageTooLarge",
            format!(
                "the method payload is {} bytes; the limit is {MAX_METHOD_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    let cn = t.cn();
    // Wait up to connectTimeoutInSeconds for the device to come online and subscribe.
    let deadline = tokio::time::Instant::now() + connect_timeout;
    // The session is here, on another node of the cluster, or not connected (yet).
    enum Sent {
        Here(String, tokio::sync::oneshot::Receiver<MethodReply>),
        Answered(MethodReply),
        NoAnswer,
    }
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("{cn} is not keeping up with the requests sent to it; try again later"),
        )
    };
    let sent = loop {
        match state.sessions().start_method(&cn, name, payload.clone()) {
            Ok((rid, reply)) => break Sent::Here(rid, reply),
            Err(Undeliverable::Busy) => return Err(busy()),
            Err(Undeliverable::NotOnline) => {}
        }
        match state
            .call_method_elsewhere(&cn, name, &payload, response_timeout)
            .await
        {
            Some(Ok((status, payload))) => break Sent::Answered(MethodReply { status, payload }),
            Some(Err(crate::cluster::RemoteMethod::Busy)) => return Err(busy()),
            Some(Err(crate::cluster::RemoteMethod::TimedOut)) => break Sent::NoAnswer,
            Some(Err(crate::cluster::RemoteMethod::NotOnline)) | None => {}
        }
        if tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        return Err(ApiError::not_found(
            "DeviceNotOnline",
            format!(
                "{cn} is not connected, or has not subscribed to $iothub/methods/POST/#{}",
                if connect_timeout.is_zero() {
                    "; set connectTimeoutInSeconds to wait for it".to_string()
                } else {
                    format!(" within {}s", connect_timeout.as_secs())
                }
            ),
        ));
    };
    let answer = match sent {
        Sent::Here(rid, reply) => {
            let answer = tokio::time::timeout(response_timeout, reply).await;
            state.sessions().forget_method(&cn, &rid);
            answer.ok().and_then(Result::ok)
        }
        Sent::Answered(reply) => Some(reply),
        Sent::NoAnswer => None,
    };
    let MethodReply { status, payload } = match answer {
        Some(reply) => reply,
        None => {
            state
                .audit(
                    caller,
                    "method.invoke",
                    &format!("twins/{cn}"),
                    "timeout",
                    name,
                )
                .await;
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "GatewayTimeout",
                format!(
                    "{cn} did not answer method {name:?} within {}s",
                    response_timeout.as_secs()
                ),
            ));
        }
    };
    // A payload that is not JSON is returned as a string rather than lost.
    let payload: Value = if payload.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).into_owned()))
    };
    state
        .audit(
            caller,
            "method.invoke",
            &format!("twins/{cn}"),
            "ok",
            &format!("{name}: status {status}"),
        )
        .await;
    Ok(Json(MethodResult { status, payload }).into_response())
}

#[utoipa::path(post, path = "/twins/{id}/methods", summary = "Invoke a direct method on a device",
    description = "Needs the ServiceConnect right. 404 DeviceNotOnline when the device is not connected and subscribed to methods, 503 ServiceUnavailable when it has too many calls outstanding, 504 GatewayTimeout when it does not answer in time.",
    params(DevicePath), request_body = MethodCall,
    responses((status = 200, description = "success", body = MethodResult), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 413, response = ErrorResponse), (status = 503, response = ErrorResponse), (status = 504, response = ErrorResponse)))]
pub async fn invoke_device_method(
    State(state): State<AppState>,
    caller: Caller,
    Path(DevicePath { id }): Path<DevicePath>,
    JsonObject(call): JsonObject<MethodCall>,
) -> Result<Response, ApiError> {
    invoke(&state, &caller, target(&id, None)?, call).await
}

#[utoipa::path(post, path = "/twins/{id}/modules/{mid}/methods", summary = "Invoke a direct method on a module",
    description = "Needs the ServiceConnect right. 404 DeviceNotOnline when the module is not connected and subscribed to methods, 503 ServiceUnavailable when it has too many calls outstanding, 504 GatewayTimeout when it does not answer in time.",
    params(ModulePath), request_body = MethodCall,
    responses((status = 200, description = "success", body = MethodResult), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse), (status = 413, response = ErrorResponse), (status = 503, response = ErrorResponse), (status = 504, response = ErrorResponse)))]
pub async fn invoke_module_method(
    State(state): State<AppState>,
    caller: Caller,
    Path(ModulePath { id, mid }): Path<ModulePath>,
    JsonObject(call): JsonObject<MethodCall>,
) -> Result<Response, ApiError> {
    invoke(&state, &caller, target(&id, Some(&mid))?, call).await
}

// ---- query ----

/// A twin query.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Query)]
pub struct QueryBody {
    /// SELECT ... FROM devices | devices.modules [WHERE ...]
    query: String,
}

/// The paging headers of a query. Only described: the handler reads them from the request's
/// headers, refusing a bad `x-ms-max-item-count` in its own words.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct QueryHeaders {
    /// rows at most in a page (default 100)
    #[param(
        rename = "x-ms-max-item-count",
        nullable = false,
        minimum = 1,
        maximum = 1000
    )]
    max_item_count: Option<i64>,
    /// where the page starts: the previous page's x-ms-continuation
    #[param(rename = "x-ms-continuation", nullable = false)]
    continuation: Option<String>,
}

/// Devices read from the store per round while scanning.
const SCAN: i64 = 500;

/// The most devices a page that no index finds reads (see the query's loop).
const SCAN_WINDOW: i64 = 10_000;

/// The devices a page of an unordered index's matches first looks for them among, walking the
/// primary key (see the query).
const KEY_WALK: i64 = 2_000;

/// The most connected devices that a query requiring `connectionState = 'Connected'` reads in
/// preference to an index that could find its rows too.
const CONNECTED_FIRST: usize = 100_000;

/// Whether `pred` is an OR of conditions whose matches an index gives in device id order (an
/// `IN` on an indexed path): a page is then the merge of each one's first rows, with no sort of
/// all the matches.
fn merges(
    pred: &certhub_store::TwinPred,
    indexed: &dyn Fn(&certhub_store::JsonPath) -> bool,
) -> bool {
    matches!(pred, certhub_store::TwinPred::Or(terms)
        if terms.len() > 1 && terms.len() <= 16 && terms.iter().all(|t| t.index_ordered(indexed)))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `POST /devices/query`: the IoT Hub query language subset of `certhub_twin::query`, over
/// device twins (`FROM devices`) or module twins (`FROM devices.modules`). Pages with
/// `x-ms-max-item-count` (1 to 1000, default 100) and `x-ms-continuation`.
#[utoipa::path(post, path = "/devices/query",
    summary = "Query twins: SELECT [TOP n] * | COUNT() | paths FROM devices | devices.modules [WHERE ...]",
    description = "Needs the RegistryRead or the ServiceConnect right.", params(QueryHeaders), request_body = QueryBody,
    responses((status = 200, description = "twins or projected rows", body = Vec<Object>,
        headers(("x-ms-continuation" = String, description = "present when more pages follow"),
            ("x-ms-item-type" = String, description = "twin, or raw for projections and COUNT()"),
            ("x-certhub-query-plan" = String, description = "indexed (an index found the rows) or scanned (every twin in a window of at most 10 000 devices was read); see certhub hub twin-index"))), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 413, response = ErrorResponse)))]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonObject(body): JsonObject<QueryBody>,
) -> Result<Response, ApiError> {
    require_read(&caller, "querying twins")?;
    let q = certhub_twin::query::parse(&body.query)
        .map_err(|e| ApiError::bad_request("BadRequest", e.to_string()))?;
    let max_items = match header(&headers, "x-ms-max-item-count") {
        None => 100,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "ArgumentInvalid",
                    format!("x-ms-max-item-count {v:?} must be a number from 1 to 1000"),
                ));
            }
        },
    };
    let limit = q.top.map_or(max_items, |top| top.min(max_items));
    let mut cursor = header(&headers, "x-ms-continuation").unwrap_or_default();
    let modules = q.collection == certhub_twin::query::Collection::Modules;
    // The database's part of the WHERE (device twins only): exact, so COUNT() of a WHERE
    // that went down whole is the database's count; rows are checked again all the same.
    let pushed = match (&q.filter, modules) {
        (Some(filter), false) => {
            crate::query_plan::push_down(filter, state.store().text_orders_bytewise())
        }
        _ => None,
    };
    let declared: Vec<_> = match &pushed {
        Some(_) => state
            .store()
            .twin_indexes()
            .await?
            .into_iter()
            .map(|i| i.path)
            .collect(),
        None => Vec::new(),
    };
    let is_declared = |path: &certhub_store::JsonPath| declared.contains(path);
    let indexed = pushed
        .as_ref()
        .is_some_and(|p| p.pred.indexed(&is_declared));
    // `connectionState = 'Connected'`: the hub knows which devices are connected, so it reads
    // their twins and no others (Some(true): that is the whole WHERE). Where an index could
    // find the rows too, the connected devices go first unless there are very many of them
    // (an index on, say, the status finds nearly every device). That bound is checked on a
    // count that needs no walk of the sessions (modules counted too: above it, the index).
    let connected = match (&q.filter, modules) {
        (Some(f), false) => crate::query_plan::connected_only(f)
            .filter(|_| !indexed || state.sessions().connected_at_most() <= CONNECTED_FIRST),
        _ => None,
    };
    // A query no index serves reads the twins one by one (a window of them a page): its first
    // page counts toward the hub indexing the paths it filters on (`auto_index`).
    if let Some(p) = &pushed
        && !indexed
        && connected.is_none()
        && cursor.is_empty()
    {
        crate::auto_index::scanned(&state, &p.pred, &is_declared);
    }
    let mut items = Vec::new();
    let mut count = 0u64;
    let mut more = false;
    let counted = match (&pushed, &q.filter) {
        _ if !q.is_count() || modules => None,
        (_, None) => Some(state.store().count_devices_where(None).await?),
        _ if connected == Some(true) => Some(state.sessions().connected_device_count() as u64),
        (Some(p), _) if p.exact => Some(state.store().count_devices_where(Some(&p.pred)).await?),
        _ => None,
    };
    // Rows read per round: a page and one more when the database decides the whole WHERE.
    let batch = match &pushed {
        Some(p) if p.exact && !q.is_count() => (limit as i64 + 1).min(SCAN),
        _ => SCAN,
    };
    // A page that no index finds reads at most SCAN_WINDOW devices: it may come back short,
    // even empty, with a continuation token where the next one goes on (as IoT Hub's pages
    // may), so no request holds the database for the whole registry. COUNT() and TOP read on.
    let windowed = !indexed && connected.is_none() && !q.is_count() && q.top.is_none();
    let mut read = 0i64;
    let upto = match (&pushed, windowed, counted) {
        (Some(_), true, None) => state.store().nth_device_after(&cursor, SCAN_WINDOW).await?,
        _ => None,
    };
    // An index whose matches do not come in device id order (a range, IN, OR) makes the
    // database sort all of them for a page. Where they are dense, a short walk of the primary
    // key fills the page sooner, so that is tried first (on SQLite told to walk the key; on
    // PostgreSQL the bound on the device id makes its planner choose it).
    let mut walked = false;
    if let Some(p) = &pushed
        && indexed
        && connected.is_none()
        && counted.is_none()
        && !q.is_count()
        && !p.pred.index_ordered(&is_declared)
        && !merges(&p.pred, &is_declared)
        && let Some(end) = state.store().nth_device_after(&cursor, KEY_WALK).await?
    {
        let rows = state
            .store()
            .devices_where(&p.pred, &cursor, Some(&end), limit as i64 + 1, true)
            .await?;
        let mut found = Vec::new();
        let mut at = cursor.clone();
        for (d, stored) in &rows {
            let twin = twins::from_record(&d.device_id, stored.as_ref())?;
            let t = twins::device_twin_json(&state, d, &twin);
            if q.matches(&t) {
                found.push(q.project(&t));
            }
            at = d.device_id.to_string();
            if found.len() >= limit {
                break;
            }
        }
        if found.len() >= limit {
            (items, cursor, more, walked) = (found, at, q.top.is_none(), true);
        }
    }
    if connected.is_some() && counted.is_none() {
        // Each batch walks every session once: a COUNT() that reads them all takes larger ones.
        let batch = if q.is_count() { 5_000 } else { SCAN as usize };
        'connected: loop {
            let ids = state.sessions().connected_devices_after(&cursor, batch);
            let Some(end) = ids.last().cloned() else {
                break;
            };
            let rows = state.store().devices_with_twins(&ids).await?;
            for (i, (d, stored)) in rows.iter().enumerate() {
                let twin = twins::from_record(&d.device_id, stored.as_ref())?;
                let t = twins::device_twin_json(&state, d, &twin);
                if q.matches(&t) {
                    if q.is_count() {
                        count += 1;
                    } else {
                        items.push(q.project(&t));
                    }
                }
                cursor = d.device_id.to_string();
                if !q.is_count() && items.len() >= limit {
                    more = q.top.is_none() && (i + 1 < rows.len() || ids.len() == batch);
                    break 'connected;
                }
            }
            // Past the batch's devices that the registry no longer holds, too.
            cursor = end;
            if ids.len() < batch {
                break;
            }
        }
    }
    'scan: loop {
        if counted.is_some() || walked || connected.is_some() {
            break;
        }
        let page: Vec<(certhub_core::Device, Option<certhub_store::TwinRecord>)> = match &pushed {
            // An OR of equalities an index orders (an IN): each from its index, merged.
            Some(p) if indexed && merges(&p.pred, &is_declared) => {
                let certhub_store::TwinPred::Or(terms) = &p.pred else {
                    unreachable!("merges() holds for an OR only")
                };
                let mut merged = std::collections::BTreeMap::new();
                for term in terms {
                    for row in state
                        .store()
                        .devices_where(term, &cursor, None, batch, false)
                        .await?
                    {
                        merged.entry(row.0.device_id.to_string()).or_insert(row);
                    }
                }
                merged.into_values().take(batch as usize).collect()
            }
            Some(p) => {
                let upto = upto.as_deref();
                state
                    .store()
                    .devices_where(&p.pred, &cursor, upto, batch, false)
                    .await?
            }
            None => {
                let page = state.store().devices_after(&cursor, batch).await?;
                // The page's device twins in one read (devices without one have none yet).
                let mut stored = match (page.last(), modules) {
                    (Some(last), false) => {
                        let last = last.device_id.as_str();
                        state.store().device_twins_in(&cursor, last).await?
                    }
                    _ => Default::default(),
                };
                page.into_iter()
                    .map(|d| {
                        let twin = stored.remove(d.device_id.as_str());
                        (d, twin)
                    })
                    .collect()
            }
        };
        let rows = page.len() as i64;
        read += rows;
        let last = page.last().map(|l| l.0.device_id.to_string());
        for (d, stored) in &page {
            let mut twins_here = Vec::new();
            if modules {
                for m in state.store().modules(&d.device_id).await? {
                    let twin = twins::read(&state, &d.device_id, Some(&m.module_id)).await?;
                    twins_here.push(twins::module_twin_json(&state, &m, &twin));
                }
            } else {
                let twin = twins::from_record(&d.device_id, stored.as_ref())?;
                twins_here.push(twins::device_twin_json(&state, d, &twin));
            }
            for t in twins_here.iter().filter(|t| q.matches(t)) {
                if q.is_count() {
                    count += 1;
                } else {
                    items.push(q.project(t));
                }
            }
            cursor = d.device_id.to_string();
            if !q.is_count() && items.len() >= limit {
                // A page ends after a whole device (its modules stay together).
                more = q.top.is_none()
                    && (Some(&cursor) != last.as_ref() || rows == batch || upto.is_some());
                break 'scan;
            }
        }
        if rows == batch {
            // The database may hold more at once: on, unless this page's window is read.
            if windowed && pushed.is_none() && read >= SCAN_WINDOW {
                more = true;
                break;
            }
            continue;
        }
        // Fewer than asked: the end of the registry, or of the window the rows came from.
        if let Some(upto) = &upto {
            cursor = upto.clone();
            more = true;
        }
        break;
    }
    if q.is_count() {
        let n = counted.unwrap_or(count);
        items = vec![serde_json::json!({ q.count_alias().unwrap_or("$1"): n })];
    }
    let kind = if matches!(q.projection, certhub_twin::query::Projection::All) {
        "twin"
    } else {
        "raw"
    };
    let mut r = Json(items).into_response();
    r.headers_mut().insert(
        HeaderName::from_static("x-ms-item-type"),
        HeaderValue::from_static(kind),
    );
    // Whether an index found the rows, or every twin was read (docs/operations.md, "Twin
    // queries at scale").
    let plan = match (&q.filter, indexed) {
        // An index, or the connected devices known in memory.
        _ if connected.is_some() => "indexed",
        (_, true) => "indexed",
        // No WHERE: pages of the primary key (COUNT() counts it).
        (None, _) if !modules => "indexed",
        _ => "scanned",
    };
    r.headers_mut().insert(
        HeaderName::from_static("x-certhub-query-plan"),
        HeaderValue::from_static(plan),
    );
    if more && let Ok(v) = HeaderValue::from_str(&cursor) {
        r.headers_mut()
            .insert(HeaderName::from_static("x-ms-continuation"), v);
    }
    Ok(r)
}
