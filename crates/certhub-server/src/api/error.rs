//! Errors in Azure's shape (azure-protocol 4.5):
//! `{"Message":"ErrorCode:<Code>;<text>","ExceptionMessage":"..."}`. A 5xx says only "internal
//! error" to the caller; the cause goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certhub_store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "IotHubUnauthorizedAccess",
            message,
        )
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            message,
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the database cannot be reached");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!(
                    "the hub's database cannot be reached now ({e}); the hub reconnects on its own: try again shortly"
                ),
            );
        }
        tracing::error!(error = %e, "store failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServerError",
            "internal error",
        )
    }
}

impl From<crate::telemetry::ReadError> for ApiError {
    fn from(e: crate::telemetry::ReadError) -> Self {
        tracing::error!(error = %e, "telemetry not read");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("the telemetry log cannot be read now ({e}); try again shortly"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = super::doc::ErrorBody {
            message: format!("ErrorCode:{};{}", self.code, self.message),
            exception_message: format!("certhub: {}", self.message),
        };
        (self.status, Json(body)).into_response()
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("NotFound", format!("no such resource {}", uri.path()))
}

/// A method the route does not have: 405 in Azure's shape, naming the method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{} does not take {method}", uri.path()),
    )
}

/// `axum::extract::Path`, with its refusals (an id that is not UTF-8 once decoded, say) in
/// Azure's error shape.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request(
                "ArgumentInvalid",
                format!("the request path {}: {}", parts.uri.path(), e.body_text()),
            )),
        }
    }
}

/// `axum::extract::Query`, with its refusals (`top=abc`, an unknown parameter type) in Azure's
/// error shape, naming the parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            // axum's text names the parameter: "Failed to deserialize query string: top:
            // invalid digit found in string".
            Err(e) => Err(ApiError::bad_request(
                "ArgumentInvalid",
                format!("{}; see /openapi.json for the parameters", e.body_text()),
            )),
        }
    }
}

/// A `top` query parameter: `default` when absent, refused (not clamped) outside 1..=max.
pub fn top(value: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(t) if (1..=max).contains(&t) => Ok(t),
        Some(t) => Err(ApiError::bad_request(
            "ArgumentInvalid",
            format!("top={t} must be a number from 1 to {max}"),
        )),
    }
}
