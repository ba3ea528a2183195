//! File upload (azure-more-protocols 5): a device asks for a blob URI
//! (`POST /devices/{id}/files`), writes the blob to the hub's own blob endpoint on the 443
//! listener with the Azure Blob operations the SDKs use (Put Blob; Put Block and Put Block
//! List), and reports the outcome (`POST /devices/{id}/files/notifications`), which queues a
//! notification for services.
//!
//! The URI's token is the hub's own: an HMAC over the blob's path, its permissions and its
//! expiry, under a hub-wide key kept in the store; it is good for that one blob until it
//! expires, and only while the upload it was given for is open and its device enabled. Bytes
//! stream from the request into the object store (the data directory's filesystem by default),
//! a chunk at a time: an upload of any size holds a few MiB in the hub.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;

use crate::devices_https::{Devices, TlsPeer, device_caller};
use crate::state::{AppState, now_ms};

mod blob;
mod parts;
mod staging;
pub(crate) use blob::blob_put;

/// The container every upload goes to: blob URIs are `https://{host}/fileupload/{deviceId}/{name}`.
pub const CONTAINER: &str = "fileupload";
/// The version the token names (Azure's `sv`; nothing depends on it).
const SAS_VERSION: &str = "2018-03-28";
/// Bytes handed to the store per write, and writes in flight at most: the memory an upload
/// holds is about their product.
const CHUNK: usize = 512 << 10;
const IN_FLIGHT: usize = 2;
/// The part size for remote stores: S3's smallest part but the last.
const REMOTE_PART: usize = 5 << 20;
/// Blob names: at most 1,024 characters and 254 segments (Azure).
const MAX_NAME: usize = 1024;
const MAX_SEGMENTS: usize = 254;

/// Where the hub keeps uploaded files, and the key that signs their tokens.
#[derive(Debug, Clone)]
pub struct FileStore {
    objects: Arc<dyn ObjectStore>,
    key: Arc<tokio::sync::OnceCell<aws_lc_rs::hmac::Key>>,
    /// Bytes per part written (S3 takes no part under 5 MiB but the last).
    part: usize,
    /// The local filesystem store, when that is the store: its staged blocks go to one log per
    /// blob (see [`staging`]).
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    claims: Arc<staging::Claims>,
    /// Part buffers free for the next part of any upload.
    buffers: Arc<parts::BufferPool>,
}

/// The object stores files may go to besides the local filesystem, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    /// `s3://bucket/prefix`: Amazon S3 and S3-compatible stores.
    S3,
    /// `az://container/prefix` (or `azure://`): Azure Blob Storage.
    Azure,
}

impl RemoteKind {
    /// The kind a URL names, if it is a remote store certhub can use.
    pub fn of(url: &str) -> Option<Self> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "s3" | "s3a" => Some(Self::S3),
            "az" | "azure" | "abfs" | "abfss" => Some(Self::Azure),
            _ => None,
        }
    }

    /// Refuses an option this store does not know (object_store would ignore it silently).
    pub fn check_option(self, key: &str) -> Result<(), String> {
        let known = match self {
            Self::S3 => key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
            Self::Azure => key.parse::<object_store::azure::AzureConfigKey>().is_ok(),
        };
        if known {
            Ok(())
        } else {
            let example = match self {
                Self::S3 => "aws_endpoint, aws_region, aws_access_key_id, aws_secret_access_key",
                Self::Azure => {
                    "azure_storage_account_name, azure_storage_account_key, azure_storage_endpoint"
                }
            };
            Err(format!(
                "{key:?} is not an option of this store (e.g. {example}; object_store's configuration keys)"
            ))
        }
    }

    /// The environment variables this store reads its credentials from, when the
    /// configuration does not give them (AWS_* for S3, AZURE_* for Azure).
    pub fn env_prefix(self) -> &'static str {
        match self {
            Self::S3 => "AWS_",
            Self::Azure => "AZURE_",
        }
    }
}

/// `dir` (created if missing) as an object store, written durably.
fn directory(dir: &std::path::Path) -> Result<Arc<object_store::local::LocalFileSystem>, String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the file upload folder {}: {e}",
            dir.display()
        )
    })?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| format!("cannot use {} for uploaded files: {e}", dir.display()))?
        .with_fsync(true)
        // A staging folder goes once its blob is published.
        .with_automatic_cleanup(true);
    Ok(Arc::new(fs))
}

/// The directory of a `file:///absolute/path` file store (a directory every node of a cluster
/// reaches: NFS, a shared volume).
pub fn shared_dir(url: &str) -> Result<std::path::PathBuf, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("file_store {url:?}: {e}"))?;
    if parsed.scheme() != "file" || parsed.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(format!(
            "file_store {url:?}: a directory is file:///absolute/path (no host)"
        ));
    }
    let dir = parsed
        .to_file_path()
        .map_err(|()| format!("file_store {url:?}: not an absolute path"))?;
    if dir.parent().is_none() {
        return Err(format!(
            "file_store {url:?}: the root directory is not a place for uploaded files; name a directory"
        ));
    }
    Ok(dir)
}

impl FileStore {
    /// Files under `dir` on the local filesystem (created if missing), written durably (each
    /// file is synced before it is published under its name).
    pub fn local(dir: &std::path::Path) -> Result<Self, String> {
        let fs = directory(dir)?;
        Ok(Self {
            local: Some(fs.clone()),
            ..Self::new(fs, CHUNK)
        })
    }

    /// Files in a directory several processes write at once (the nodes of a cluster on a
    /// shared volume, `file:///path`): as in a remote store, each staged block is a file of
    /// its own (the append-only log of [`FileStore::local`] is one process's).
    pub fn shared(dir: &std::path::Path) -> Result<Self, String> {
        Ok(Self::new(directory(dir)?, CHUNK))
    }

    /// Files in a remote object store (see [`RemoteKind`]), under the URL's path; `options`
    /// are object_store's configuration keys (`aws_endpoint`, `azure_storage_account_key`...).
    pub fn remote(url: &str, options: &[(String, String)]) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("file_store {url:?}: {e}"))?;
        let (store, prefix) = object_store::parse_url_opts(&parsed, options.iter().cloned())
            .map_err(|e| format!("file_store {url:?}: {e}"))?;
        let objects: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(Self::new(objects, REMOTE_PART))
    }

    /// Lists the store's top level once (within 15 s): an error names what is wrong with the
    /// store's address or credentials.
    pub async fn check(&self) -> Result<(), String> {
        let listed = self.objects.list_with_delimiter(None);
        match tokio::time::timeout(std::time::Duration::from_secs(15), listed).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 15 s".into()),
        }
    }

    /// Files in any object store, written in parts of `part` bytes.
    pub fn new(objects: Arc<dyn ObjectStore>, part: usize) -> Self {
        Self {
            objects,
            key: Arc::new(tokio::sync::OnceCell::new()),
            part,
            local: None,
            claims: Arc::default(),
            buffers: Arc::default(),
        }
    }

    /// Where the blob `{deviceId}/{name}` is kept.
    pub fn blob_path(blob_name: &str) -> ObjectPath {
        std::iter::once("blobs")
            .chain(blob_name.split('/'))
            .collect()
    }

    /// Where the uncommitted blocks of a blob wait for their block list.
    fn staging_path(blob_name: &str) -> ObjectPath {
        ObjectPath::from_iter(["staging".to_string(), Self::staging_digest(blob_name)])
    }

    /// The name of a blob's staging folder: its name's SHA-256, in hex.
    fn staging_digest(blob_name: &str) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, blob_name.as_bytes());
        crate::random::hex(digest.as_ref())
    }

    /// The blob's size and time of last change, if it was written.
    pub async fn head(&self, blob_name: &str) -> Option<object_store::ObjectMeta> {
        self.objects.head(&Self::blob_path(blob_name)).await.ok()
    }

    /// The blob's size and its bytes as a stream, read in parts of the write size (the local
    /// store's own stream reads 8 KiB per blocking task).
    pub async fn read(
        &self,
        blob_name: &str,
    ) -> Result<
        (
            u64,
            impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + use<>,
        ),
        String,
    > {
        let path = Self::blob_path(blob_name);
        let size = self
            .objects
            .head(&path)
            .await
            .map_err(|e| e.to_string())?
            .size;
        let objects = self.objects.clone();
        let step = self.part as u64;
        let parts = futures_util::stream::unfold(0u64, move |at| {
            let (objects, path) = (objects.clone(), path.clone());
            async move {
                if at >= size {
                    return None;
                }
                let end = (at + step).min(size);
                let part = objects
                    .get_range(&path, at..end)
                    .await
                    .map_err(std::io::Error::other);
                // After an error the stream ends: the body is cut short and the client sees it.
                let next = if part.is_ok() { end } else { size };
                Some((part, next))
            }
        });
        Ok((size, parts))
    }

    /// Removes the staging folders no open upload can use any more (tokens that ran out,
    /// uploads reported without a block list, a hub that stopped mid-write); returns how many.
    /// The folders are listed before the open uploads are read, so a folder made meanwhile
    /// belongs to an upload that is read as open.
    pub async fn sweep_staging(&self, state: &AppState, now_ms: i64) -> Result<usize, String> {
        let listed = self
            .objects
            .list_with_delimiter(Some(&ObjectPath::from("staging")))
            .await
            .map_err(|e| e.to_string())?;
        if listed.common_prefixes.is_empty() {
            return Ok(0);
        }
        let open: std::collections::HashSet<String> = state
            .store()
            .open_blob_names(now_ms)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|name| Self::staging_digest(name))
            .collect();
        let mut swept = 0;
        for folder in listed.common_prefixes {
            let Some(digest) = folder.filename() else {
                continue;
            };
            if open.contains(digest) {
                continue;
            }
            self.remove_staging(digest, true).await;
            swept += 1;
        }
        Ok(swept)
    }

    /// Removes the blocks of a blob that no block list committed (not the files of Put Blobs
    /// being written: each removes its own).
    async fn drop_staged(&self, blob_name: &str) {
        self.remove_staging(&Self::staging_digest(blob_name), false)
            .await;
    }

    /// Removes what a blob's staging folder holds (`puts`: Put Blob's files too).
    async fn remove_staging(&self, digest: &str, puts: bool) {
        let prefix = ObjectPath::from_iter(["staging", digest]);
        let mut listed = self.objects.list(Some(&prefix));
        while let Some(Ok(meta)) = listed.next().await {
            let put = meta
                .location
                .filename()
                .is_some_and(|name| name.starts_with(staging::PUT_PREFIX));
            if puts || !put {
                let _ = self.objects.delete(&meta.location).await;
            }
        }
        self.claims.forget(digest);
    }

    async fn key(&self, state: &AppState) -> Result<&aws_lc_rs::hmac::Key, String> {
        self.key
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                aws_lc_rs::rand::fill(&mut candidate).map_err(|_| "no randomness".to_string())?;
                let candidate = base64::engine::general_purpose::STANDARD.encode(candidate);
                let key = state
                    .store()
                    .secret("blob-signing-key", &candidate)
                    .await
                    .map_err(|e| e.to_string())?;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .map_err(|e| format!("the stored blob signing key is not base64: {e}"))?;
                Ok(aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    &key,
                ))
            })
            .await
    }
}

/// What a blob token signs: its permissions, its expiry and the blob's path.
fn string_to_sign(permissions: &str, expiry: &str, blob_name: &str) -> String {
    format!("certhub-blob\n{permissions}\n{expiry}\n/{CONTAINER}/{blob_name}")
}

/// The token of an upload (Azure's blob SAS shape, starting with `?`); the signature is
/// base64url, so it needs no escaping in a query.
fn sas_token(key: &aws_lc_rs::hmac::Key, blob_name: &str, expires_ms: i64) -> String {
    let se = expiry_text(expires_ms);
    let sig = aws_lc_rs::hmac::sign(key, string_to_sign("rw", &se, blob_name).as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref());
    format!(
        "?sv={SAS_VERSION}&sr=b&sig={sig}&se={}&sp=rw",
        se.replace(':', "%3A")
    )
}

/// An expiry as a token names it: `2026-12-03T15:00:00Z`.
fn expiry_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn parse_expiry(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp() * 1000)
}

/// A name a device may give its file: `dir/file.bin`, nothing that climbs or hides a
/// separator.
pub fn check_blob_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the blob name is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the blob name is {} bytes long; at most {MAX_NAME}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!(
            "the blob name {name:?} contains {c:?}; use '/' between folders and no control characters"
        ));
    }
    let segments: Vec<&str> = name.split('/').collect();
    if segments.len() > MAX_SEGMENTS {
        return Err(format!(
            "the blob name {name:?} has {} segments; at most {MAX_SEGMENTS}",
            segments.len()
        ));
    }
    if let Some(bad) = segments
        .iter()
        .find(|s| s.is_empty() || **s == "." || **s == "..")
    {
        return Err(format!(
            "the blob name {name:?} has the segment {bad:?}; names are relative paths without empty, '.' or '..' segments"
        ));
    }
    Ok(())
}

/// The host (and port) a device reached the hub at, for the URIs it is given: the request's
/// `Host`, else the hub's first host name.
fn reached_host(state: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    // HTTP/2 names it in the URI (`:authority`), HTTP/1.1 in `Host`.
    let given = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        });
    match given {
        Some(h) => h.to_string(),
        None => {
            let host = state.hostnames().first().cloned().unwrap_or_default();
            match state.public_port() {
                Some(port) if port != 443 => format!("{host}:{port}"),
                _ => host,
            }
        }
    }
}

/// The blob's URI as services are told it.
fn blob_uri(host: &str, blob_name: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let path: Vec<String> = blob_name
        .split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect();
    format!("https://{host}/{CONTAINER}/{}", path.join("/"))
}

fn hub_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    crate::api::ApiError::new(status, code, message).into_response()
}

fn unavailable() -> Response {
    hub_error(
        StatusCode::NOT_FOUND,
        "FileUploadNotConfigured",
        "file upload is not offered by this hub (no file store is configured)",
    )
}

/// The JSON body of a device's file request, at most 64 KiB.
async fn small_body(body: Body) -> Result<axum::body::Bytes, Response> {
    const MAX: usize = 64 * 1024;
    axum::body::to_bytes(body, MAX).await.map_err(|_| {
        hub_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageTooLarge",
            format!("a file upload request is at most {MAX} bytes of JSON"),
        )
    })
}

/// The caller of a device file request (judged as every HTTPS device request is), the hub's
/// state, and its JSON body (`shape` names what was expected when it does not parse).
async fn device_json<T: serde::de::DeserializeOwned>(
    devices: &Devices,
    peer: Option<&TlsPeer>,
    id: &str,
    headers: &HeaderMap,
    body: Body,
    shape: &str,
) -> Result<(certhub_core::AuthenticatedDevice, AppState, T), Response> {
    let device = device_caller(devices, peer, headers, id).await?;
    let state = devices.core.state().clone();
    let body = small_body(body).await?;
    let parsed = serde_json::from_slice(&body).map_err(|e| {
        hub_error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            format!("the body must be {shape}: {e}"),
        )
    })?;
    Ok((device, state, parsed))
}

/// `{"blobName": "..."}`, the request for a blob URI.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlobRequest {
    blob_name: String,
}

/// `POST /devices/{id}/files`: a blob URI for the device's file, and the correlation id it
/// reports the upload under.
pub(crate) async fn begin(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (device, state, request) = match device_json::<BlobRequest>(
        &devices,
        peer.as_ref().map(|p| &p.0),
        &id,
        &headers,
        body,
        "{\"blobName\": \"folder/file.ext\"}",
    )
    .await
    {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let Some(files) = state.files() else {
        return unavailable();
    };
    if let Err(e) = check_blob_name(&request.blob_name) {
        return hub_error(StatusCode::BAD_REQUEST, "ArgumentInvalid", e);
    }
    let settings = match state.settings().await {
        Ok(s) => s,
        Err(e) => return crate::api::ApiError::from(e).into_response(),
    };
    let key = match files.key(&state).await {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = e, "no blob signing key");
            return hub_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the hub cannot sign blob tokens now; retry",
            );
        }
    };
    let device_id = device.id().device.to_string();
    let blob_name = format!("{device_id}/{}", request.blob_name);
    let now = now_ms();
    let mut raw = [0u8; 18];
    let _ = aws_lc_rs::rand::fill(&mut raw);
    let correlation_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let record = certhub_store::UploadRecord {
        correlation_id: correlation_id.clone(),
        device_id: device_id.clone(),
        blob_name: blob_name.clone(),
        created_ms: now,
        expires_ms: now + settings.file_upload_sas_ttl_seconds * 1000,
        state: certhub_store::UploadState::Pending,
        size_bytes: None,
        finished_ms: None,
        status_code: None,
        status_description: None,
    };
    match state
        .store()
        .begin_upload(&record, settings.file_upload_max_concurrent)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return hub_error(
                StatusCode::FORBIDDEN,
                "DeviceMaximumActiveFileUploadLimitExceeded",
                format!(
                    "{device_id} has {} uploads open, the most a device may have (fileUploadMaxConcurrent); report on one (POST /devices/{device_id}/files/notifications) or wait until its token expires",
                    settings.file_upload_max_concurrent
                ),
            );
        }
        Err(e) => return crate::api::ApiError::from(e).into_response(),
    }
    let answer = serde_json::json!({
        "correlationId": correlation_id,
        "hostName": reached_host(&state, &uri, &headers),
        "containerName": CONTAINER,
        "blobName": blob_name,
        "sasToken": sas_token(key, &blob_name, record.expires_ms),
    });
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// A device's report on its upload; `correlationId` may come from the path instead (Node).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadResult {
    correlation_id: Option<String>,
    is_success: bool,
    status_code: Option<serde_json::Value>,
    status_description: Option<serde_json::Value>,
}

/// `POST /devices/{id}/files/notifications`: the device reports on its upload.
pub(crate) async fn notify(
    devices: Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    report(devices, peer, id, None, uri, headers, body).await
}

/// `POST /devices/{id}/files/notifications/{correlationId}` (Node's form).
pub(crate) async fn notify_with_id(
    devices: Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    axum::extract::Path((id, correlation_id)): axum::extract::Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    report(devices, peer, id, Some(correlation_id), uri, headers, body).await
}

async fn report(
    Extension(devices): Extension<Arc<Devices>>,
    peer: Option<Extension<TlsPeer>>,
    id: String,
    in_path: Option<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (device, state, result) = match device_json::<UploadResult>(
        &devices,
        peer.as_ref().map(|p| &p.0),
        &id,
        &headers,
        body,
        "{\"correlationId\": \"...\", \"isSuccess\": true, \"statusCode\": 200, \"statusDescription\": \"...\"}",
    )
    .await
    {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let Some(files) = state.files() else {
        return unavailable();
    };
    let correlation_id = match (in_path, result.correlation_id) {
        (Some(p), Some(b)) if p != b => {
            return hub_error(
                StatusCode::BAD_REQUEST,
                "ArgumentInvalid",
                format!("the path names correlation id {p:?} and the body {b:?}; give one"),
            );
        }
        (Some(p), _) => p,
        (None, Some(b)) => b,
        (None, None) => {
            return hub_error(
                StatusCode::BAD_REQUEST,
                "ArgumentInvalid",
                "which upload? give \"correlationId\" (as POST /devices/{id}/files answered it)",
            );
        }
    };
    let device_id = device.id().device.to_string();
    let Some(upload) = state
        .store()
        .upload(&correlation_id)
        .await
        .ok()
        .flatten()
        .filter(|u| u.device_id == device_id)
    else {
        return hub_error(
            StatusCode::NOT_FOUND,
            "FileUploadNotFound",
            format!("{device_id} has no upload with correlation id {correlation_id:?}"),
        );
    };
    let size = if result.is_success && upload.state == certhub_store::UploadState::Pending {
        match files.head(&upload.blob_name).await {
            Some(meta) => Some(meta),
            None => {
                return hub_error(
                    StatusCode::BAD_REQUEST,
                    "BlobNotFound",
                    format!(
                        "the upload {correlation_id:?} reports success, but its blob {} was never written; write it, then report again",
                        upload.blob_name
                    ),
                );
            }
        }
    } else {
        None
    };
    let status_code = result
        .status_code
        .as_ref()
        .and_then(serde_json::Value::as_i64);
    let description = match &result.status_description {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let settings = match state.settings().await {
        Ok(s) => s,
        Err(e) => return crate::api::ApiError::from(e).into_response(),
    };
    let now = now_ms();
    let notification = size
        .as_ref()
        .filter(|_| settings.enable_file_upload_notifications)
        .map(|meta| {
            let last = meta.last_modified.timestamp_millis();
            serde_json::json!({
                "deviceId": device_id,
                "blobUri": blob_uri(&reached_host(&state, &uri, &headers), &upload.blob_name),
                "blobName": upload.blob_name,
                "lastUpdatedTime": certhub_core::azure_time(last),
                "blobSizeInBytes": meta.size,
                "enqueuedTimeUtc": certhub_core::azure_time(now),
            })
            .to_string()
        });
    let notification_id = crate::random::hex_id();
    let outcome = state
        .store()
        .finish_upload(
            &device_id,
            &correlation_id,
            &certhub_store::UploadReport {
                success: result.is_success,
                status_code,
                status_description: description.as_deref(),
                size_bytes: size.as_ref().and_then(|m| i64::try_from(m.size).ok()),
            },
            now,
            notification
                .as_deref()
                .map(|n| (notification_id.as_str(), n)),
        )
        .await;
    if notification.is_some() {
        state.service_queues_bump();
    }
    match outcome {
        Ok(certhub_store::FinishOutcome::Finished(u)) => {
            files.drop_staged(&u.blob_name).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(certhub_store::FinishOutcome::AlreadyFinished(u)) => hub_error(
            StatusCode::CONFLICT,
            "FileUploadAlreadyReported",
            format!(
                "the upload {correlation_id:?} of {} was already reported ({}); begin a new upload to write the file again",
                u.blob_name,
                u.state.as_str()
            ),
        ),
        Ok(certhub_store::FinishOutcome::Unknown) => hub_error(
            StatusCode::NOT_FOUND,
            "FileUploadNotFound",
            format!("{device_id} has no upload with correlation id {correlation_id:?}"),
        ),
        Err(e) => crate::api::ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::blob::{param, query_pairs};
    use super::*;

    #[test]
    fn a_shared_directory_is_an_absolute_file_url() {
        assert_eq!(
            shared_dir("file:///srv/certhub/files").expect("ok"),
            std::path::PathBuf::from("/srv/certhub/files")
        );
        for bad in ["file://nas/files", "file:///", "s3://bucket"] {
            assert!(shared_dir(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blob_names_that_climb_or_hide_separators_are_refused() {
        for good in ["a.txt", "dir/file.bin", "a/b/c/d.e", "x..y", ".hidden"] {
            assert!(check_blob_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "../x", "a/../b", "a/./b", "/abs", "a//b", "a/", "a\\b", "a\u{0}b", "..",
        ] {
            assert!(check_blob_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_blob_name(&"a/".repeat(300)).is_err());
    }

    #[test]
    fn a_token_is_bound_to_its_blob_permissions_and_expiry() {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"k");
        let token = sas_token(&key, "dev/a.txt", 1_800_000_000_000);
        let pairs = query_pairs(Some(token.trim_start_matches('?')));
        let (sig, se, sp) = (
            param(&pairs, "sig").unwrap(),
            param(&pairs, "se").unwrap(),
            param(&pairs, "sp").unwrap(),
        );
        assert_eq!(se, "2027-01-15T08:00:00Z");
        assert_eq!(parse_expiry(se), Some(1_800_000_000_000));
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        let ok = |sp: &str, se: &str, blob: &str| {
            aws_lc_rs::hmac::verify(&key, string_to_sign(sp, se, blob).as_bytes(), &sig).is_ok()
        };
        assert!(ok(sp, se, "dev/a.txt"));
        assert!(!ok(sp, se, "dev/b.txt"));
        assert!(!ok(sp, se, "other/a.txt"));
        assert!(!ok("rwd", se, "dev/a.txt"));
        assert!(!ok(sp, "2099-01-01T00:00:00Z", "dev/a.txt"));
    }

    #[test]
    fn blob_uris_escape_each_segment() {
        assert_eq!(
            blob_uri("hub:8443", "dev$1/a b/c.txt"),
            "https://hub:8443/fileupload/dev%241/a%20b/c.txt"
        );
    }
}
