//! Reading JSON bodies with errors in Azure's shape: empty, oversize, malformed, unknown
//! fields and wrong types each say what is wrong (serde's message names the field and place).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::{ApiError, MAX_BODY};

/// A JSON body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// A JSON object body of type `T`. serde reads a struct from a JSON array too (its fields in
/// order), so `[null, null]` would pass for `{}`: an object body must be a JSON object.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read(req, state, false).await.map(JsonBody)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonObject<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read(req, state, true).await.map(JsonObject)
    }
}

async fn read<S: Send + Sync, T: DeserializeOwned>(
    req: Request,
    state: &S,
    object_only: bool,
) -> Result<T, ApiError> {
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageTooLarge",
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad_request("ArgumentInvalid", format!("reading the body: {e}"))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "ArgumentNull",
            "the request needs a JSON body",
        ));
    }
    if object_only && bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "ArgumentInvalid",
            "invalid JSON body: the request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        ApiError::bad_request(
            "ArgumentInvalid",
            format!("invalid JSON body{at}: {}", e.inner()),
        )
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("ArgumentInvalid", format!("invalid JSON body: {e}")))?;
    Ok(value)
}
