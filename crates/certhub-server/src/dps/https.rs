//! Provisioning over HTTPS on 443 (azure-more-protocols 6.1): `PUT
//! /{idScope}/registrations/{registrationId}/register` and `GET
//! /{idScope}/registrations/{registrationId}/operations/{operationId}`, authenticated by the
//! TLS client certificate of the connection or `Authorization: SharedAccessSignature ...`.
//! Answers are JSON (`Content-Type: application/json`: the Node SDK parses nothing else).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{Answer, Request};
use crate::devices_https::TlsPeer;
use crate::state::AppState;

/// The provisioning device routes of the 443 listener.
pub(crate) fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/{scope}/registrations/{id}/register",
            axum::routing::put(register),
        )
        .route(
            "/{scope}/registrations/{id}/operations/{operation}",
            axum::routing::get(operation),
        )
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct RegisterQuery {
    #[serde(rename = "forceRegistration", default)]
    force: Option<String>,
}

fn answer(a: &Answer) -> Response {
    let mut r = (
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        a.body.to_string(),
    )
        .into_response();
    if let Some(s) = a.retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(s));
    }
    if a.status >= 300
        && let Some(code) = a.body.get("errorCode").and_then(Value::as_i64)
    {
        r.headers_mut()
            .insert("x-ms-error-code", HeaderValue::from(code));
    }
    r
}

fn scope_error(state: &AppState, scope: &str) -> Option<Response> {
    (!scope.eq_ignore_ascii_case(state.id_scope())).then(|| {
        answer(&Answer::error(&certhub_core::dps::DpsError::new(
            404,
            404_000,
            format!(
                "no ID scope {scope:?} here; this hub's is {} (certhub dps id-scope)",
                state.id_scope()
            ),
        )))
    })
}

fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn register(
    State(state): State<AppState>,
    Extension(peer): Extension<TlsPeer>,
    Path((scope, id)): Path<(String, String)>,
    Query(q): Query<RegisterQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = scope_error(&state, &scope) {
        return r;
    }
    let token = token(&headers);
    let a = super::register_request(
        &state,
        Request {
            registration_id: &id,
            peer: peer.peer,
            chain: &peer.chain,
            token: token.as_deref(),
            payload: None,
            force: q.force.is_some_and(|f| f.eq_ignore_ascii_case("true")),
            transport: "https",
        },
        &body,
    )
    .await;
    answer(&a)
}

async fn operation(
    State(state): State<AppState>,
    Extension(peer): Extension<TlsPeer>,
    Path((scope, id, operation)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = scope_error(&state, &scope) {
        return r;
    }
    // A poll proves the same credential as the register request it follows.
    let token = token(&headers);
    let proof = super::prove_again(&state, &id, &peer.chain, token.as_deref()).await;
    if !proof {
        return answer(&Answer::error(&super::unauthorized()));
    }
    answer(&super::operation_status(&state, &id, &operation).await)
}
