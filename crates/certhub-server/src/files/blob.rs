//! The hub's blob endpoint (`PUT /fileupload/{blobName}`): Put Blob, Put Block and Put Block
//! List of the Azure Blob service for the blob a hub-signed token names, streamed into the
//! file store; errors in Azure Storage's shape.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStoreExt};

use super::parts::{BufferPool, Parts};
use super::staging::{self, Staged};
use super::{CONTAINER, FileStore, check_blob_name, parse_expiry, string_to_sign};
use crate::devices_https::Devices;
use crate::random::hex;
use crate::state::{AppState, now_ms};

/// A block id decodes to at most 64 bytes (Azure).
const MAX_BLOCK_ID: usize = 64;
/// Blocks in one blob at most (Azure: 50,000), and the largest block list body.
const MAX_BLOCKS: usize = 50_000;
const MAX_BLOCK_LIST: usize = 8 << 20;

/// An error of the blob endpoint, in Azure Storage's shape (an XML body and
/// `x-ms-error-code`), which the storage SDKs turn into their exceptions.
fn storage_error(status: StatusCode, code: &'static str, message: impl AsRef<str>) -> Response {
    let message = message
        .as_ref()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    h.insert("x-ms-error-code", HeaderValue::from_static(code));
    r
}

/// The query of a blob request, percent-decoded (`+` stays `+`: base64 block ids carry it).
pub(super) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

pub(super) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `PUT /fileupload/{blobName}?{token}[&comp=block&blockid=...|&comp=blocklist]`: Put Blob,
/// Put Block and Put Block List of the Azure Blob service, for the blob the token names.
pub(crate) async fn blob_put(
    Extension(devices): Extension<Arc<Devices>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = Some(body);
    let response = blob_write(&devices, &uri, &headers, &mut body).await;
    // Refused before its body was read: a small body is read and dropped first, so that the
    // client (still sending) gets the answer rather than a reset stream.
    if let Some(unread) = body {
        let drain = axum::body::to_bytes(unread, DRAIN_LIMIT);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    }
    response
}

/// The most of a refused request's body the hub reads before answering: a whole block as the
/// SDKs send them (4 MiB).
const DRAIN_LIMIT: usize = 8 << 20;

async fn blob_write(
    devices: &Devices,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Response {
    let state = devices.core.state().clone();
    let Some(files) = state.files() else {
        return storage_error(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            "file upload is not offered by this hub",
        );
    };
    let raw_path = uri.path();
    let Some(raw_name) = raw_path.strip_prefix(&format!("/{CONTAINER}/")) else {
        return storage_error(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            format!("this hub's blobs are under /{CONTAINER}/"),
        );
    };
    // An escaped separator would put a '/' or '\' inside a segment after decoding.
    let lower = raw_name.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return storage_error(
            StatusCode::BAD_REQUEST,
            "InvalidUri",
            "the blob path holds an escaped separator (%2F or %5C); use '/' between folders",
        );
    }
    let blob_name = match percent_encoding::percent_decode_str(raw_name).decode_utf8() {
        Ok(n) => n.into_owned(),
        Err(_) => {
            return storage_error(
                StatusCode::BAD_REQUEST,
                "InvalidUri",
                "the blob path is not UTF-8 once decoded",
            );
        }
    };
    if let Err(e) = check_blob_name(&blob_name) {
        return storage_error(StatusCode::BAD_REQUEST, "InvalidUri", e);
    }
    let query = query_pairs(uri.query());
    // The token: the hub's signature over this path, its permissions and expiry.
    let (Some(sig), Some(se), Some(sp)) = (
        param(&query, "sig"),
        param(&query, "se"),
        param(&query, "sp"),
    ) else {
        return storage_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "no blob token: the URI must carry the sasToken POST /devices/{id}/files answered (sig, se, sp)",
        );
    };
    let key = match files.key(&state).await {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = e, "no blob signing key");
            return storage_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServerBusy",
                "the hub cannot check blob tokens now; retry",
            );
        }
    };
    let signed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig.trim_end_matches('='))
        .ok()
        .is_some_and(|sig| {
            aws_lc_rs::hmac::verify(key, string_to_sign(sp, se, &blob_name).as_bytes(), &sig)
                .is_ok()
        });
    if !signed {
        return storage_error(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            format!(
                "the blob token does not match /{CONTAINER}/{blob_name}: it was given for another blob or altered; ask the hub for a new one (POST /devices/{{id}}/files)"
            ),
        );
    }
    let now = now_ms();
    match parse_expiry(se) {
        Some(expiry) if expiry > now => {}
        _ => {
            return storage_error(
                StatusCode::FORBIDDEN,
                "AuthenticationFailed",
                format!(
                    "the blob token expired at {se}; ask the hub for a new one (POST /devices/{{id}}/files)"
                ),
            );
        }
    }
    if !sp.contains('w') {
        return storage_error(
            StatusCode::FORBIDDEN,
            "AuthorizationPermissionMismatch",
            "the blob token does not allow writing",
        );
    }
    // The upload must still be open and its device enabled: checked on every request, and
    // again before a write is published.
    if let Err(refused) = still_allowed(&state, &blob_name, now).await {
        return refused;
    }
    // On a cluster node, from the database: another node may have changed the size limit a
    // moment ago (an upload is worth the read).
    let settings = if state.in_cluster() {
        state.reload_settings().await
    } else {
        state.settings().await
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "settings unreadable");
            return storage_error(StatusCode::SERVICE_UNAVAILABLE, "ServerBusy", "retry");
        }
    };
    let limit = u64::try_from(settings.file_upload_max_bytes).unwrap_or(0);
    if let Some(length) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit
    {
        return too_large(limit);
    }
    // If-None-Match: * (the SDKs' overwrite=False) on Put Blob and Put Block List.
    let create_only = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*");
    let commits = !matches!(param(&query, "comp"), Some("block"));
    if create_only && commits && files.head(&blob_name).await.is_some() {
        return exists(&blob_name);
    }
    let upload = Upload {
        files,
        state: &state,
        blob_name: &blob_name,
        limit,
        create_only,
    };
    let result = match param(&query, "comp") {
        None => {
            let block_blob = headers
                .get("x-ms-blob-type")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"BlockBlob"));
            if !block_blob {
                return storage_error(
                    StatusCode::BAD_REQUEST,
                    "MissingRequiredHeader",
                    "Put Blob needs x-ms-blob-type: BlockBlob (the only blob type this hub stores)",
                );
            }
            upload.put_blob(body.take().unwrap_or_default()).await
        }
        Some("block") => {
            let Some(id) = param(&query, "blockid").and_then(block_id) else {
                return storage_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidQueryParameterValue",
                    format!("Put Block needs blockid: base64 of at most {MAX_BLOCK_ID} bytes"),
                );
            };
            upload.put_block(&id, body.take().unwrap_or_default()).await
        }
        Some("blocklist") => upload.put_block_list(body.take().unwrap_or_default()).await,
        Some(other) => {
            return storage_error(
                StatusCode::BAD_REQUEST,
                "InvalidQueryParameterValue",
                format!(
                    "comp={other} is not served: this endpoint takes Put Blob, Put Block (comp=block) and Put Block List (comp=blocklist)"
                ),
            );
        }
    };
    match result {
        Ok(etag) => {
            let mut r = StatusCode::CREATED.into_response();
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                h.insert(axum::http::header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&http_date(time::OffsetDateTime::now_utc())) {
                h.insert(axum::http::header::LAST_MODIFIED, v);
            }
            h.insert(
                "x-ms-request-server-encrypted",
                HeaderValue::from_static("false"),
            );
            if let Some(v) = headers.get("x-ms-version") {
                h.insert("x-ms-version", v.clone());
            }
            if let Some(v) = headers.get("x-ms-client-request-id") {
                h.insert("x-ms-client-request-id", v.clone());
            }
            r
        }
        Err(refused) => refused,
    }
}

fn exists(blob_name: &str) -> Response {
    storage_error(
        StatusCode::CONFLICT,
        "BlobAlreadyExists",
        format!("{blob_name} exists (If-None-Match: *); upload with overwrite"),
    )
}

fn too_large(limit: u64) -> Response {
    storage_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestBodyTooLarge",
        format!("files on this hub are at most {limit} bytes (fileUploadMaxBytes)"),
    )
}

fn http_date(t: time::OffsetDateTime) -> String {
    t.format(time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    ))
    .unwrap_or_default()
}

/// A block id as the staging area names it (hex of its bytes), if it is base64 of at most 64
/// bytes.
fn block_id(text: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    (!bytes.is_empty() && bytes.len() <= MAX_BLOCK_ID).then(|| hex(&bytes))
}

/// Refused unless an upload of `blob_name` is open at `now` and its device exists and is
/// enabled.
async fn still_allowed(state: &AppState, blob_name: &str, now: i64) -> Result<(), Response> {
    let upload = match state.store().open_upload(blob_name, now).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "upload unreadable");
            return Err(storage_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServerBusy",
                "retry",
            ));
        }
    };
    let Some(upload) = upload else {
        return Err(storage_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailure",
            format!(
                "no upload of {blob_name} is open: it was reported on or its token expired; ask the hub for a new one (POST /devices/{{id}}/files)"
            ),
        ));
    };
    let enabled = match certhub_core::DeviceId::new(upload.device_id.clone()) {
        Ok(id) => match state.store().device(&id).await {
            Ok(d) => d.map(|d| d.status == certhub_core::Status::Enabled),
            Err(e) => {
                tracing::error!(error = %e, "device unreadable");
                return Err(storage_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServerBusy",
                    "retry",
                ));
            }
        },
        Err(_) => None,
    };
    match enabled {
        Some(true) => Ok(()),
        Some(false) => Err(storage_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailure",
            format!(
                "the device {} is disabled: its uploads are refused",
                upload.device_id
            ),
        )),
        None => Err(storage_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailure",
            format!("the device {} no longer exists", upload.device_id),
        )),
    }
}

/// One write to a blob whose token was checked.
struct Upload<'a> {
    files: &'a FileStore,
    state: &'a AppState,
    blob_name: &'a str,
    limit: u64,
    /// Refuse to replace an existing blob (If-None-Match: *).
    create_only: bool,
}

impl Upload<'_> {
    /// Put Blob: the body becomes the blob, published only once whole.
    async fn put_blob(&self, body: Body) -> Result<String, Response> {
        let path = FileStore::blob_path(self.blob_name);
        if let Some(local) = &self.files.local {
            return self.put_blob_local(local, &path, body).await;
        }
        let writer = self.stream(&path, body).await?;
        self.publish(writer).await
    }

    /// Put Blob on the local store: the body goes to a file of its own in the blob's staging
    /// folder, in the hub's pooled parts, synced, then renamed into place (object_store's
    /// multipart writer keeps every part's buffer until it is written, and leaves its part
    /// files beside the blob when an upload is cut short; the staging folder is swept).
    async fn put_blob_local(
        &self,
        local: &object_store::local::LocalFileSystem,
        path: &ObjectPath,
        body: Body,
    ) -> Result<String, Response> {
        let mut nonce = [0u8; 8];
        if aws_lc_rs::rand::fill(&mut nonce).is_err() {
            return Err(self.store_failed("no randomness for a file name"));
        }
        let name = format!("{}{}", staging::PUT_PREFIX, hex(&nonce));
        let staged = FileStore::staging_path(self.blob_name).join(name.as_str());
        let Ok(file) = local.path_to_filesystem(&staged) else {
            return Err(self.store_failed("no filesystem path for the staging folder"));
        };
        let (file, _) = self.blocking(move || staging::open_log(&file)).await?;
        let mut writer =
            staging::LogWriter::new(file, 0, self.files.part, self.files.buffers.clone());
        let published = async {
            self.fill(&mut writer, body).await?;
            self.rename_into_place(&staged, path).await
        }
        .await;
        if published.is_err() {
            writer.roll_back().await;
            let _ = self.files.objects.delete(&staged).await;
        }
        published
    }

    /// Publishes a synced staging file as the blob, unless its upload closed or its device was
    /// disabled meanwhile (or, under If-None-Match: *, the blob exists).
    async fn rename_into_place(
        &self,
        staged: &ObjectPath,
        path: &ObjectPath,
    ) -> Result<String, Response> {
        still_allowed(self.state, self.blob_name, now_ms()).await?;
        let renamed = if self.create_only {
            self.files.objects.rename_if_not_exists(staged, path).await
        } else {
            self.files.objects.rename(staged, path).await
        };
        match renamed {
            Ok(()) => Ok(format!("{:x}", now_ms())),
            Err(object_store::Error::AlreadyExists { .. }) => Err(exists(self.blob_name)),
            Err(e) => Err(self.store_failed(&e.to_string())),
        }
    }

    /// Put Block: the body is kept apart until a block list names it: on the local store
    /// appended to the blob's log when no other block of it is being appended, else (and on
    /// remote stores) as an object of its own.
    async fn put_block(&self, id: &str, body: Body) -> Result<String, Response> {
        let digest = FileStore::staging_digest(self.blob_name);
        if let Some(local) = &self.files.local
            && let Ok(claim) = self.files.claims.of(&digest).try_lock_owned()
        {
            let etag = self.append_block(local, id, body).await;
            drop(claim);
            return etag;
        }
        let path = FileStore::staging_path(self.blob_name).join(id);
        let writer = self.stream(&path, body).await?;
        let etag = self.finish(writer).await?;
        if let Some(index) = self.local_staging("index") {
            let line = staging::index_line(id, Staged::Object);
            self.blocking(move || staging::record(&index, &line))
                .await?;
        }
        Ok(etag)
    }

    /// The filesystem path of `name` in this blob's staging folder, on the local store.
    fn local_staging(&self, name: &str) -> Option<std::path::PathBuf> {
        let path = FileStore::staging_path(self.blob_name).join(name);
        self.files.local.as_ref()?.path_to_filesystem(&path).ok()
    }

    /// Runs file work on a blocking thread; a failure is the store's.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Response> {
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.store_failed(&e.to_string())),
            Err(e) => Err(self.store_failed(&e.to_string())),
        }
    }

    /// Appends a block's body to the blob's log (the caller holds the log's claim): synced,
    /// then indexed. A body that fails leaves the log as it was.
    async fn append_block(
        &self,
        local: &object_store::local::LocalFileSystem,
        id: &str,
        body: Body,
    ) -> Result<String, Response> {
        let staging = FileStore::staging_path(self.blob_name);
        let (Ok(log), Ok(index)) = (
            local.path_to_filesystem(&staging.clone().join("log")),
            local.path_to_filesystem(&staging.join("index")),
        ) else {
            return Err(self.store_failed("no filesystem path for the staging folder"));
        };
        let (file, start) = self.blocking(move || staging::open_log(&log)).await?;
        let mut log =
            staging::LogWriter::new(file, start, self.files.part, self.files.buffers.clone());
        if let Err(refused) = self.fill(&mut log, body).await {
            log.roll_back().await;
            return Err(refused);
        }
        let line = staging::index_line(
            id,
            Staged::Log {
                offset: start,
                len: log.written(),
            },
        );
        self.blocking(move || staging::record(&index, &line))
            .await?;
        Ok(format!("{:x}", now_ms()))
    }

    /// Writes `body` to a staging file within the size cap and syncs it; on failure the
    /// caller rolls the file back.
    async fn fill(&self, log: &mut staging::LogWriter, body: Body) -> Result<(), Response> {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                return Err(storage_error(
                    StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    "the request body ended early",
                ));
            };
            if log.written() + chunk.len() as u64 > self.limit {
                return Err(too_large(self.limit));
            }
            log.write(&chunk)
                .await
                .map_err(|e| self.store_failed(&e.to_string()))?;
        }
        log.sync()
            .await
            .map_err(|e| self.store_failed(&e.to_string()))
    }

    /// Streams `body` into a new object at `path`, within the size cap; the caller publishes
    /// or finishes it.
    async fn stream(&self, path: &ObjectPath, body: Body) -> Result<Sink, Response> {
        let mut writer = self.writer(path).await?;
        let mut stream = body.into_data_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                writer.abort().await;
                return Err(storage_error(
                    StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    "the request body ended early",
                ));
            };
            written += chunk.len() as u64;
            if written > self.limit {
                writer.abort().await;
                return Err(too_large(self.limit));
            }
            self.write(&mut writer, chunk).await?;
        }
        Ok(writer)
    }

    /// Put Block List: the blob becomes the named blocks in order.
    async fn put_block_list(&self, body: Body) -> Result<String, Response> {
        let Ok(xml) = axum::body::to_bytes(body, MAX_BLOCK_LIST).await else {
            return Err(storage_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestBodyTooLarge",
                format!("a block list is at most {MAX_BLOCK_LIST} bytes"),
            ));
        };
        let ids = match parse_block_list(&String::from_utf8_lossy(&xml)) {
            Ok(ids) => ids,
            Err(e) => {
                return Err(storage_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidXmlDocument",
                    e,
                ));
            }
        };
        // The log is not appended to while its blocks are composed.
        let digest = FileStore::staging_digest(self.blob_name);
        let claim = self.files.claims.of(&digest);
        let _claim = match self.files.local {
            Some(_) => Some(claim.lock().await),
            None => None,
        };
        let staging = FileStore::staging_path(self.blob_name);
        let log = staging.clone().join("log");
        let indexed = match self.local_staging("index") {
            Some(index) => {
                let text = self
                    .blocking(move || match std::fs::read_to_string(index) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                        read => read,
                    })
                    .await?;
                staging::parse_index(&text)
            }
            None => Default::default(),
        };
        // Each block of the list: where its bytes are and how many.
        let mut blocks = Vec::with_capacity(ids.len());
        let mut total = 0u64;
        for (n, text) in ids.iter().enumerate() {
            let Some(id) = block_id(text) else {
                return Err(storage_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidBlockId",
                    format!(
                        "block {n} of the list, {text:?}, is not base64 of at most {MAX_BLOCK_ID} bytes"
                    ),
                ));
            };
            let (staged, size) = match indexed.get(&id) {
                Some(&Staged::Log { offset, len }) => (Staged::Log { offset, len }, len),
                _ => match self
                    .files
                    .objects
                    .head(&staging.clone().join(id.as_str()))
                    .await
                {
                    Ok(meta) => (Staged::Object, meta.size),
                    Err(_) => {
                        return Err(storage_error(
                            StatusCode::BAD_REQUEST,
                            "InvalidBlockList",
                            format!(
                                "block {n} of the list, {text:?}, was never put (Put Block) for this blob"
                            ),
                        ));
                    }
                },
            };
            total += size;
            if total > self.limit {
                return Err(too_large(self.limit));
            }
            blocks.push((id, staged, size));
        }
        let path = FileStore::blob_path(self.blob_name);
        // The log in the list's order, whole: it becomes the blob by a rename.
        if self.files.local.is_some() {
            let log_len = self.files.objects.head(&log).await.map(|m| m.size).ok();
            let order: Vec<Staged> = blocks.iter().map(|b| b.1).collect();
            if let Some(log_len) = log_len
                && staging::log_is_blob(&order, log_len)
            {
                let etag = self.rename_into_place(&log, &path).await?;
                self.files.drop_staged(self.blob_name).await;
                return Ok(etag);
            }
        }
        let mut writer = self.writer(&path).await?;
        for (id, staged, size) in blocks {
            let (source, base) = match staged {
                Staged::Log { offset, .. } => (log.clone(), offset),
                Staged::Object => (staging.clone().join(id.as_str()), 0),
            };
            // Read in parts of the write size (the store's own stream reads 8 KiB at a time,
            // each on a blocking thread).
            let mut at = 0;
            while at < size {
                let end = (at + self.files.part as u64).min(size);
                let part = match self
                    .files
                    .objects
                    .get_range(&source, base + at..base + end)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        writer.abort().await;
                        return Err(self.store_failed(&e.to_string()));
                    }
                };
                self.write(&mut writer, part).await?;
                at = end;
            }
        }
        let etag = self.publish(writer).await?;
        self.files.drop_staged(self.blob_name).await;
        Ok(etag)
    }

    async fn writer(&self, path: &ObjectPath) -> Result<Sink, Response> {
        match self.files.objects.put_multipart(path).await {
            Ok(upload) => Ok(Sink::new(
                upload,
                self.files.part,
                self.files.buffers.clone(),
            )),
            Err(e) => Err(self.store_failed(&e.to_string())),
        }
    }

    async fn write(&self, writer: &mut Sink, chunk: bytes::Bytes) -> Result<(), Response> {
        writer
            .write(&chunk)
            .await
            .map_err(|e| self.store_failed(&e))
    }

    /// Publishes a blob, unless its upload closed or its device was disabled meanwhile.
    async fn publish(&self, writer: Sink) -> Result<String, Response> {
        if let Err(refused) = still_allowed(self.state, self.blob_name, now_ms()).await {
            writer.abort().await;
            return Err(refused);
        }
        self.finish(writer).await
    }

    async fn finish(&self, writer: Sink) -> Result<String, Response> {
        match writer.finish().await {
            Ok(put) => Ok(put.e_tag.unwrap_or_else(|| format!("{:x}", now_ms()))),
            Err(e) => Err(self.store_failed(&e)),
        }
    }

    fn store_failed(&self, e: &str) -> Response {
        tracing::error!(error = e, blob = self.blob_name, "file store write failed");
        storage_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "the hub could not store the file; retry the upload",
        )
    }
}

/// Writes an object of the store in parts (see [`Parts`]).
struct Sink(Parts<Box<dyn MultipartUpload>>);

impl Sink {
    fn new(upload: Box<dyn MultipartUpload>, part: usize, pool: Arc<BufferPool>) -> Self {
        Self(Parts::new(upload, part, pool))
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.0.write(data).await.map_err(|e| e.to_string())
    }

    async fn finish(mut self) -> Result<object_store::PutResult, String> {
        self.0.flush().await.map_err(|e| e.to_string())?;
        self.0.target.complete().await.map_err(|e| e.to_string())
    }

    async fn abort(mut self) {
        self.0.stop().await;
        let _ = self.0.target.abort().await;
    }
}

/// The block ids of a block list, in order:
/// `<BlockList><Latest>id</Latest><Committed>id</Committed>...</BlockList>`.
fn parse_block_list(xml: &str) -> Result<Vec<String>, String> {
    let shape =
        "a block list is <BlockList> holding <Latest>, <Committed> or <Uncommitted> block ids";
    let start = xml
        .find("<BlockList>")
        .ok_or_else(|| format!("no <BlockList>: {shape}"))?;
    let mut rest = &xml[start + "<BlockList>".len()..];
    let mut ids = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.starts_with("</BlockList>") {
            break;
        }
        let tag = ["Latest", "Committed", "Uncommitted"]
            .into_iter()
            .find(|t| rest.starts_with(&format!("<{t}>")))
            .ok_or_else(|| format!("unexpected content in the block list: {shape}"))?;
        rest = &rest[tag.len() + 2..];
        let close = format!("</{tag}>");
        let end = rest
            .find(&close)
            .ok_or_else(|| format!("<{tag}> is not closed: {shape}"))?;
        ids.push(rest[..end].trim().to_string());
        rest = &rest[end + close.len()..];
        if ids.len() > MAX_BLOCKS {
            return Err(format!("a blob has at most {MAX_BLOCKS} blocks"));
        }
    }
    if ids.is_empty() {
        return Err(format!("the block list is empty: {shape}"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_lists_the_sdks_send_parse() {
        let node = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?><BlockList><Latest>QUJD</Latest><Latest>REVG</Latest></BlockList>";
        assert_eq!(parse_block_list(node).unwrap(), ["QUJD", "REVG"]);
        let c = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<BlockList>\r\n<Latest>QUJD</Latest>\r\n<Committed>REVG</Committed></BlockList>";
        assert_eq!(parse_block_list(c).unwrap(), ["QUJD", "REVG"]);
        for bad in [
            "",
            "<BlockList></BlockList>",
            "<BlockList><Latest>x",
            "<BlockList><Other>x</Other></BlockList>",
        ] {
            assert!(parse_block_list(bad).is_err(), "{bad}");
        }
    }
}
