//! Files devices uploaded, for services: the file-upload notification queue (Azure's
//! `/messages/serviceBound/filenotifications`, locked, completed and abandoned as C2D feedback
//! is), and certhub's own listing and download of uploads (`/files`), which Azure leaves to
//! the storage account.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certhub_core::{Rights, azure_time};
use certhub_store::ServiceQueue;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::doc::{ErrorResponse, LockTokenPath};
use super::error::{Path, Query};
use super::{ApiError, AppState, Caller, now_ms};

/// How often a notification is received before it is dropped (Azure's maxDeliveryCount).
const NOTIFICATION_MAX_DELIVERIES: i64 = 10;
/// How long a notification waits to be received before it is dropped (Azure's default
/// `fileNotifications.ttlAsIso8601`, PT1H).
pub const FILE_NOTIFICATION_TTL_MS: i64 = 3_600_000;
/// Uploads listed at most per request.
const MAX_LIST: i64 = 1000;

/// A finished upload, as services are told of it (Azure's `FileNotification`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileNotification {
    device_id: String,
    /// `https://{hub}/fileupload/{blobName}`
    blob_uri: String,
    /// `{deviceId}/{name the device gave}`
    blob_name: String,
    last_updated_time: String,
    blob_size_in_bytes: i64,
    enqueued_time_utc: String,
}

/// `GET /messages/serviceBound/filenotifications`: the oldest notification, locked to this
/// caller for a minute under the lock token in `ETag`; 204 when there is none.
#[utoipa::path(get, path = "/messages/serviceBound/filenotifications",
    summary = "Receive a file upload notification, locked for 60 s under the lock token in ETag",
    description = "Needs the ServiceConnect right. A notification received 10 times without being completed is dropped; one nobody receives goes after an hour.",
    responses((status = 200, description = "one notification", content_type = "application/vnd.microsoft.iothub.filenotification.json",
        body = FileNotification,
        headers(("ETag" = String, description = "the quoted lock token"),
            ("iothub-lockuntilutc" = String, description = "when the lock runs out"),
            ("iothub-deliverycount" = String, description = "how often it was received, this time included"))),
        (status = 204, description = "no notification waiting"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn receive_notification(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(
        Rights::SERVICE_CONNECT,
        "receiving file upload notifications",
    )?;
    let token = crate::random::hex_id();
    let now = now_ms();
    let Some(n) = state
        .store()
        .receive_file_notification(
            &token,
            now,
            now + super::c2d::SERVICE_LOCK_MS,
            NOTIFICATION_MAX_DELIVERIES,
        )
        .await?
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/vnd.microsoft.iothub.filenotification.json; charset=utf-8".to_string(),
            ),
            (axum::http::header::ETAG, format!("\"{token}\"")),
            (
                axum::http::HeaderName::from_static("iothub-lockuntilutc"),
                azure_time(now + super::c2d::SERVICE_LOCK_MS),
            ),
            (
                axum::http::HeaderName::from_static("iothub-deliverycount"),
                n.delivery_count.to_string(),
            ),
        ],
        n.body,
    )
        .into_response())
}

/// `DELETE /messages/serviceBound/filenotifications/{lockToken}`: handled; 204.
#[utoipa::path(delete, path = "/messages/serviceBound/filenotifications/{lockToken}",
    summary = "Complete a file upload notification",
    description = "Needs the ServiceConnect right.", params(LockTokenPath),
    responses((status = 204, description = "completed"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn complete_notification(
    state: State<AppState>,
    caller: Caller,
    token: Path<LockTokenPath>,
) -> Result<Response, ApiError> {
    super::c2d::settle_locked(state, caller, token, ServiceQueue::FileNotifications, false).await
}

/// `POST /messages/serviceBound/filenotifications/{lockToken}/abandon`: back for the next
/// receiver; 204.
#[utoipa::path(post, path = "/messages/serviceBound/filenotifications/{lockToken}/abandon",
    summary = "Abandon a file upload notification for the next receiver",
    description = "Needs the ServiceConnect right.", params(LockTokenPath),
    responses((status = 204, description = "abandoned"), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 412, response = ErrorResponse)))]
pub async fn abandon_notification(
    state: State<AppState>,
    caller: Caller,
    token: Path<LockTokenPath>,
) -> Result<Response, ApiError> {
    super::c2d::settle_locked(state, caller, token, ServiceQueue::FileNotifications, true).await
}

/// One upload a device began.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    correlation_id: String,
    device_id: String,
    blob_name: String,
    /// pending (the device may write until expiryTimeUtc), succeeded or failed, as the device
    /// reported
    #[schema(pattern = "^(pending|succeeded|failed)$")]
    state: String,
    created_time_utc: String,
    expiry_time_utc: String,
    /// the blob's size when the device reported success
    #[schema(required = true)]
    size_in_bytes: Option<i64>,
    #[schema(required = true)]
    finished_time_utc: Option<String>,
    /// the statusCode the device reported
    #[schema(required = true)]
    status_code: Option<i64>,
    #[schema(required = true)]
    status_description: Option<String>,
}

impl From<certhub_store::UploadRecord> for Upload {
    fn from(u: certhub_store::UploadRecord) -> Self {
        Self {
            correlation_id: u.correlation_id,
            device_id: u.device_id,
            blob_name: u.blob_name,
            state: u.state.as_str().to_string(),
            created_time_utc: azure_time(u.created_ms),
            expiry_time_utc: azure_time(u.expires_ms),
            size_in_bytes: u.size_bytes,
            finished_time_utc: u.finished_ms.map(azure_time),
            status_code: u.status_code,
            status_description: u.status_description,
        }
    }
}

/// Which uploads to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// only this device's uploads
    device_id: Option<String>,
    /// at most this many, newest first (default 100)
    #[param(minimum = 1, maximum = 1000)]
    top: Option<i64>,
}

/// `GET /files`: uploads, newest first.
#[utoipa::path(get, path = "/files", summary = "List file uploads, newest first",
    description = "Needs the ServiceConnect right.", params(ListQuery),
    responses((status = 200, description = "the uploads", body = Vec<Upload>), (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "listing file uploads")?;
    let top = q.top.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&top) {
        return Err(ApiError::bad_request(
            "ArgumentInvalid",
            format!("top is 1 to {MAX_LIST}, not {top}"),
        ));
    }
    let uploads = state.store().uploads(q.device_id.as_deref(), top).await?;
    let body: Vec<Upload> = uploads.into_iter().map(Upload::from).collect();
    Ok(axum::Json(body).into_response())
}

/// The correlation id of an upload, as a path parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UploadPath {
    /// as POST /devices/{id}/files answered it
    #[serde(rename = "correlationId")]
    correlation_id: String,
}

/// `GET /files/{correlationId}/content`: the bytes of a file a device reported as uploaded.
#[utoipa::path(get, path = "/files/{correlationId}/content", summary = "Download an uploaded file",
    description = "Needs the ServiceConnect right. 404 when the upload is unknown, was not reported as successful, or its file is gone.",
    params(UploadPath),
    responses((status = 200, description = "the file", content_type = "application/octet-stream", body = Vec<u8>,
        headers(("x-certhub-blob-name" = String, description = "the blob's name, deviceId/name"))),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 404, response = ErrorResponse)))]
pub async fn content(
    State(state): State<AppState>,
    caller: Caller,
    Path(UploadPath { correlation_id }): Path<UploadPath>,
) -> Result<Response, ApiError> {
    caller.require(Rights::SERVICE_CONNECT, "reading uploaded files")?;
    let not_found = |why: String| ApiError::not_found("FileUploadNotFound", why);
    let Some(upload) = state.store().upload(&correlation_id).await? else {
        return Err(not_found(format!(
            "no upload has correlation id {correlation_id:?}"
        )));
    };
    if upload.state != certhub_store::UploadState::Succeeded {
        return Err(not_found(format!(
            "the upload {correlation_id:?} of {} is {}, not succeeded: only files a device reported as uploaded are served",
            upload.blob_name,
            upload.state.as_str()
        )));
    }
    let Some(files) = state.files() else {
        return Err(not_found("file upload is not offered by this hub".into()));
    };
    let (size, parts) = files
        .read(&upload.blob_name)
        .await
        .map_err(|e| not_found(format!("the file {} is gone: {e}", upload.blob_name)))?;
    let body = axum::body::Body::from_stream(parts);
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(axum::http::header::CONTENT_LENGTH, size.into());
    if let Ok(v) = axum::http::HeaderValue::from_str(&upload.blob_name) {
        h.insert("x-certhub-blob-name", v);
    }
    Ok(r)
}
