//! The provisioning service API in Azure DPS's shape (azure-more-protocols 6.5, api-version
//! 2021-10-01): enrollment groups, individual enrollments, registration states, their
//! queries and bulk operations, under shared access policies with the provisioning rights
//! (`provisioningserviceowner`). Errors are DPS's (`errorCode`, `trackingId`, `message`,
//! `timestampUtc`, and `x-ms-error-code`); every answer is `application/json`, which the Node
//! SDK needs to read it. A group's signing certificate is registered as a CA of the hub and
//! admits devices only once its possession is proved, as any CA.

use axum::extract::State;
use axum::http::header::{ETAG, IF_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use certhub_core::dps::{DpsError, Kind, normalize_enrollment, reference_ca};
use certhub_core::{Etag, IfMatch, Rights, azure_time};
use certhub_store::{DeleteOutcome, EnrollmentKind, EnrollmentRecord, StoreError, WriteOutcome};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

use super::body::JsonBody;
use super::{AppState, Caller, now_ms};

/// Most entries of a bulk request (Azure's limit).
const MAX_BULK: usize = 10;
/// Page size of a query when the caller names none, and the most it may name.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

/// A refusal in DPS's error shape.
#[derive(Debug)]
pub struct DpsApiError(DpsError);

impl From<DpsError> for DpsApiError {
    fn from(e: DpsError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for DpsApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        Self(DpsError::new(500, 500_000, "internal error"))
    }
}

impl From<super::ApiError> for DpsApiError {
    fn from(e: super::ApiError) -> Self {
        let status = e.status.as_u16();
        Self(DpsError::new(status, i64::from(status) * 1000, e.message))
    }
}

impl IntoResponse for DpsApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &crate::dps::error_body(&self.0),
        );
        r.headers_mut()
            .insert("x-ms-error-code", HeaderValue::from(self.0.code));
        r
    }
}

type Result<T> = std::result::Result<T, DpsApiError>;

/// DPS's error shape (`x-ms-error-code` carries the code too).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ProvisioningError)]
pub struct DpsErrorBody {
    /// DPS's numeric code: the HTTP status and three digits, e.g. 401002
    error_code: i64,
    tracking_id: String,
    /// what is wrong and what to do
    message: String,
    timestamp_utc: String,
}

/// DPS-shaped error: 400 a request the service refuses, 401 no or a bad token or missing
/// provisioning rights, 404 no such enrollment or registration, 409 a conflict, 412 a stale
/// If-Match, 413 a body over 256 KiB.
#[derive(Debug, utoipa::ToResponse)]
#[response(
    description = "DPS-shaped error: 400 a request the service refuses, 401 no or a bad token or missing provisioning rights, 404 no such enrollment or registration, 409 a conflict, 412 a stale If-Match, 413 a body over 256 KiB"
)]
pub struct DpsErrorResponse(#[allow(dead_code)] DpsErrorBody);

/// The caller of the provisioning API, its refusals in DPS's shape.
#[derive(Debug)]
pub struct DpsCaller(Caller);

impl axum::extract::FromRequestParts<AppState> for DpsCaller {
    type Rejection = DpsApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self> {
        Caller::from_request_parts(parts, state)
            .await
            .map(DpsCaller)
            .map_err(Into::into)
    }
}

/// A path of the provisioning API, its refusals in DPS's shape.
#[derive(Debug)]
pub struct DpsPath<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for DpsPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = DpsApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        super::error::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|super::error::Path(t)| DpsPath(t))
            .map_err(Into::into)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )],
        body.to_string(),
    )
        .into_response()
}

fn require(caller: &Caller, rights: Rights, action: &str) -> Result<()> {
    caller.require(rights, action).map_err(Into::into)
}

fn not_found(kind: Kind, id: &str) -> DpsApiError {
    DpsApiError(DpsError::new(
        404,
        404_201,
        format!("no {} {id:?}", kind.noun()),
    ))
}

fn stale(kind: Kind, id: &str) -> DpsApiError {
    DpsApiError(DpsError::new(
        412,
        412_002,
        format!(
            "the ETag given does not match the {} {id:?}'s current one; read it again",
            kind.noun()
        ),
    ))
}

fn store_kind(kind: Kind) -> EnrollmentKind {
    match kind {
        Kind::Group => EnrollmentKind::Group,
        Kind::Individual => EnrollmentKind::Individual,
    }
}

/// A stored document as the API shows it: the document with its ETag and times.
fn view(rec: &EnrollmentRecord) -> Result<Value> {
    let mut doc: Map<String, Value> = serde_json::from_str(&rec.doc)
        .map_err(|e| StoreError::Corrupt(format!("enrollment {}: {e}", rec.id)))?;
    doc.insert("etag".into(), Value::String(rec.etag.0.clone()));
    doc.insert(
        "createdDateTimeUtc".into(),
        azure_time(rec.created_ms).into(),
    );
    doc.insert(
        "lastUpdatedDateTimeUtc".into(),
        azure_time(rec.updated_ms).into(),
    );
    Ok(Value::Object(doc))
}

fn with_etag(body: &Value, etag: &Etag) -> Response {
    let mut r = json_response(StatusCode::OK, body);
    if let Ok(v) = etag.header_value().parse() {
        r.headers_mut().insert(ETAG, v);
    }
    r
}

fn if_match(headers: &HeaderMap) -> IfMatch {
    IfMatch::parse(headers.get(IF_MATCH).and_then(|v| v.to_str().ok()))
}

/// `{id}`: an enrollment group id or a registration id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DpsIdPath {
    /// 1 to 128 of letters, digits and - . _ : (compared without case)
    #[param(pattern = "^[A-Za-z0-9\\-._:]{1,128}$")]
    pub id: String,
}

/// Reads, creates or replaces, and deletes one enrollment.
async fn get_one(state: &AppState, kind: Kind, id: &str) -> Result<Response> {
    let key = id.to_ascii_lowercase();
    let rec = state
        .store()
        .enrollment(store_kind(kind), &key)
        .await?
        .ok_or_else(|| not_found(kind, id))?;
    Ok(with_etag(&view(&rec)?, &rec.etag))
}

async fn put_one(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    id: &str,
    condition: IfMatch,
    body: &Value,
) -> Result<(Value, Etag, &'static str)> {
    let key = id.to_ascii_lowercase();
    let (mut doc, signing) = normalize_enrollment(kind, id, body)?;
    if let Some(signing) = signing {
        let ca = register_signing_ca(state, caller, id, &signing).await?;
        reference_ca(&mut doc, &ca);
    } else if kind == Kind::Group
        && let Some(ca) = doc
            .get("attestation")
            .and_then(|a| a.pointer("/x509/caReferences/primary"))
            .and_then(Value::as_str)
        && state.store().ca(ca).await?.is_none()
    {
        return Err(DpsError::bad_request(format!(
            "caReferences.primary names {ca:?}, which is not a CA registered on this hub (certhub ca list; certhub ca upload registers one)"
        ))
        .into());
    }
    // The enrollment's hubs must be hubs this service can assign to.
    let known = crate::dps::known_hubs(state).await?;
    let named: Vec<String> = doc
        .get("iotHubs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let host = doc.get("iotHubHostName").and_then(Value::as_str);
    if let Some(h) = named
        .iter()
        .map(String::as_str)
        .chain(host)
        .find(|h| !known.iter().any(|k| k.eq_ignore_ascii_case(h)))
    {
        return Err(DpsError::bad_request(format!(
            "{h:?} is not a hub this provisioning service can assign to (this hub, {}, or a linked one: certhub dps hub list)",
            crate::dps::this_hub(state)
        ))
        .into());
    }
    let now = now_ms();
    let store = state.store();
    let existing = store.enrollment(store_kind(kind), &key).await?;
    let text = Value::Object(doc).to_string();
    let (rec, op) = match existing {
        None => {
            if matches!(condition, IfMatch::Tag(_) | IfMatch::AnyOf(_)) {
                return Err(not_found(kind, id));
            }
            let rec = EnrollmentRecord {
                id: key,
                doc: text,
                etag: Etag::random(),
                created_ms: now,
                updated_ms: now,
            };
            match store.create_enrollment(store_kind(kind), &rec).await? {
                WriteOutcome::Written => (rec, "create"),
                _ => {
                    return Err(DpsError::new(
                        409,
                        409_201,
                        format!("the {} {id:?} was created meanwhile; read it and update it with its ETag", kind.noun()),
                    )
                    .into());
                }
            }
        }
        Some(current) => {
            if !condition.allows(&current.etag) {
                return Err(stale(kind, id));
            }
            let rec = EnrollmentRecord {
                id: key,
                doc: text,
                etag: Etag::random(),
                created_ms: current.created_ms,
                updated_ms: now,
            };
            match store
                .replace_enrollment(store_kind(kind), &rec, &current.etag)
                .await?
            {
                WriteOutcome::Written => (rec, "update"),
                _ => return Err(stale(kind, id)),
            }
        }
    };
    Ok((view(&rec)?, rec.etag, op))
}

/// Registers a group's signing certificate as a CA of the hub (unverified), or finds the CA it
/// already is; returns the CA's name.
async fn register_signing_ca(
    state: &AppState,
    caller: &Caller,
    group: &str,
    signing: &certhub_core::dps::SigningCertificate,
) -> Result<String> {
    let now = now_ms();
    let certs = certhub_pki::read_upload(&signing.pem)
        .map_err(|e| DpsError::bad_request(format!("the signing certificate: {e}")))?;
    let cert = certhub_pki::check_ca_upload(&certs, now / 1000)
        .map_err(|e| DpsError::bad_request(format!("the signing certificate: {e}")))?;
    let facts = certhub_pki::ca_facts(&cert)
        .map_err(|e| DpsError::bad_request(format!("the signing certificate: {e}")))?;
    if let Some(existing) = state
        .store()
        .ca_by_sha256(&facts.thumbprints.sha256)
        .await?
    {
        return Ok(existing.name);
    }
    let name: String = format!("dps-{}", group.to_ascii_lowercase())
        .chars()
        .map(|c| if c == ':' { '-' } else { c })
        .take(64)
        .collect();
    let record = super::certificates::ca_record(&name, &cert, facts, false, now);
    match state.store().create_ca(&record).await? {
        WriteOutcome::Written => {
            state
                .audit(
                    caller,
                    "ca.upload",
                    &format!("certificates/{name}"),
                    "ok",
                    &format!(
                        "the signing certificate of enrollment group {group}; it admits devices once its possession is proved"
                    ),
                )
                .await;
            state.reload_trust().await?;
            Ok(name)
        }
        _ => Err(DpsError::new(
            409,
            409_000,
            format!("a CA named {name:?} is registered with another certificate; delete it or reference a CA by caReferences"),
        )
        .into()),
    }
}

async fn delete_one(state: &AppState, kind: Kind, id: &str, condition: &IfMatch) -> Result<()> {
    let key = id.to_ascii_lowercase();
    let current = match condition.is_list() {
        true => state
            .store()
            .enrollment(store_kind(kind), &key)
            .await?
            .map(|r| r.etag),
        false => None,
    };
    let expected = condition.expected(current.as_ref());
    match state
        .store()
        .delete_enrollment(store_kind(kind), &key, expected.as_ref())
        .await?
    {
        DeleteOutcome::Deleted => Ok(()),
        DeleteOutcome::NotFound => Err(not_found(kind, id)),
        DeleteOutcome::Stale => Err(stale(kind, id)),
    }
}

async fn audited<T>(
    state: &AppState,
    caller: &Caller,
    op: &str,
    target: String,
    result: Result<T>,
) -> Result<T> {
    // Every write of enrollments or linked hubs comes through here: registrations read them
    // again.
    state.dps_config_changed().await;
    match &result {
        Ok(_) => state.audit(caller, op, &target, "ok", "").await,
        Err(e) => {
            state
                .audit(caller, op, &target, &e.0.code.to_string(), &e.0.message)
                .await
        }
    }
    result
}

macro_rules! enrollment_routes {
    ($kind:expr, $noun:literal, $prefix:literal, $get:ident, $put:ident, $delete:ident, $query:ident, $bulk:ident, $bulk_slash:ident, $attestation:ident, $list_field:literal, $item_type:literal) => {
        #[utoipa::path(get, path = concat!("/", $prefix, "/{id}"), summary = concat!("Read an ", $noun),
            description = "Needs the EnrollmentRead right (provisioningserviceowner).", params(DpsIdPath),
            responses((status = 200, description = "the enrollment", body = Object), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse)))]
        pub async fn $get(
            State(state): State<AppState>,
            DpsCaller(caller): DpsCaller,
            DpsPath(DpsIdPath { id }): DpsPath<DpsIdPath>,
        ) -> Result<Response> {
            require(&caller, Rights::ENROLLMENT_READ, concat!("reading an ", $noun))?;
            get_one(&state, $kind, &id).await
        }

        #[utoipa::path(put, path = concat!("/", $prefix, "/{id}"), summary = concat!("Create or replace an ", $noun),
            description = "Needs the EnrollmentWrite right. With If-Match, only if the ETag is current.", params(DpsIdPath, super::doc::IfMatchHeader),
            request_body = Object,
            responses((status = 200, description = "the enrollment as stored", body = Object), (status = 400, response = DpsErrorResponse), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse), (status = 409, response = DpsErrorResponse), (status = 412, response = DpsErrorResponse)))]
        pub async fn $put(
            State(state): State<AppState>,
            DpsCaller(caller): DpsCaller,
            DpsPath(DpsIdPath { id }): DpsPath<DpsIdPath>,
            headers: HeaderMap,
            body: std::result::Result<JsonBody<Value>, super::ApiError>,
        ) -> Result<Response> {
            require(&caller, Rights::ENROLLMENT_WRITE, concat!("writing an ", $noun))?;
            let target = format!("{}/{id}", $prefix);
            let result = async {
                let JsonBody(body) = body?;
                put_one(&state, &caller, $kind, &id, if_match(&headers), &body).await
            }
            .await;
            let op = match &result {
                Ok((_, _, op)) => format!("dps.{}.{op}", $prefix),
                Err(_) => format!("dps.{}.put", $prefix),
            };
            let (body, etag, _) = audited(&state, &caller, &op, target, result).await?;
            Ok(with_etag(&body, &etag))
        }

        #[utoipa::path(delete, path = concat!("/", $prefix, "/{id}"), summary = concat!("Delete an ", $noun),
            description = "Needs the EnrollmentWrite right. Devices it registered stay on their hubs.", params(DpsIdPath, super::doc::IfMatchHeader),
            responses((status = 204, description = "deleted"), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse), (status = 412, response = DpsErrorResponse)))]
        pub async fn $delete(
            State(state): State<AppState>,
            DpsCaller(caller): DpsCaller,
            DpsPath(DpsIdPath { id }): DpsPath<DpsIdPath>,
            headers: HeaderMap,
        ) -> Result<StatusCode> {
            require(&caller, Rights::ENROLLMENT_WRITE, concat!("deleting an ", $noun))?;
            let result = delete_one(&state, $kind, &id, &if_match(&headers)).await;
            audited(&state, &caller, &format!("dps.{}.delete", $prefix), format!("{}/{id}", $prefix), result).await?;
            Ok(StatusCode::NO_CONTENT)
        }

        #[utoipa::path(post, path = concat!("/", $prefix, "/query"), summary = concat!("List ", $noun, "s a page at a time"),
            description = "Needs the EnrollmentRead right. Body {\"query\": \"*\"}; x-ms-max-item-count sets the page size, x-ms-continuation (from the previous page, absent on the last) where it starts.",
            request_body = Object,
            responses((status = 200, description = "a page", body = [Object]), (status = 400, response = DpsErrorResponse), (status = 401, response = DpsErrorResponse)))]
        pub async fn $query(
            State(state): State<AppState>,
            DpsCaller(caller): DpsCaller,
            headers: HeaderMap,
            body: std::result::Result<JsonBody<Value>, super::ApiError>,
        ) -> Result<Response> {
            require(&caller, Rights::ENROLLMENT_READ, concat!("listing ", $noun, "s"))?;
            let JsonBody(body) = body?;
            check_query(&body)?;
            let (limit, after) = page_of(&headers)?;
            let mut recs = state.store().enrollments(store_kind($kind), &after, limit + 1).await?;
            let more = recs.len() as i64 > limit;
            recs.truncate(limit as usize);
            let items = recs.iter().map(view).collect::<Result<Vec<_>>>()?;
            Ok(page(items, more.then(|| recs.last().map(|r| r.id.clone())).flatten(), limit, $item_type))
        }

        #[utoipa::path(post, path = concat!("/", $prefix), summary = concat!("Create, update or delete up to 10 ", $noun, "s"),
            description = concat!("Needs the EnrollmentWrite right. Body {\"mode\": \"create|update|updateIfMatchETag|delete\", \"", $list_field, "\": [...]}."),
            request_body = Object,
            responses((status = 200, description = "{isSuccessful, errors}", body = Object), (status = 400, response = DpsErrorResponse), (status = 401, response = DpsErrorResponse)))]
        pub async fn $bulk(
            State(state): State<AppState>,
            DpsCaller(caller): DpsCaller,
            body: std::result::Result<JsonBody<Value>, super::ApiError>,
        ) -> Result<Response> {
            require(&caller, Rights::ENROLLMENT_WRITE, concat!("writing ", $noun, "s"))?;
            let JsonBody(body) = body?;
            bulk(&state, &caller, $kind, $prefix, $list_field, &body).await
        }

        /// The bulk operation under the path the Node SDK sends (`/enrollments/`).
        #[utoipa::path(post, path = concat!("/", $prefix, "/"), summary = concat!("Create, update or delete up to 10 ", $noun, "s (the Node SDK's path)"),
            description = "The same as without the trailing slash.",
            request_body = Object,
            responses((status = 200, description = "{isSuccessful, errors}", body = Object), (status = 400, response = DpsErrorResponse), (status = 401, response = DpsErrorResponse)))]
        pub async fn $bulk_slash(
            state: State<AppState>,
            caller: DpsCaller,
            body: std::result::Result<JsonBody<Value>, super::ApiError>,
        ) -> Result<Response> {
            $bulk(state, caller, body).await
        }

        #[utoipa::path(post, path = concat!("/", $prefix, "/{id}/attestationmechanism"), summary = concat!("Read an ", $noun, "'s attestation with its keys"),
            description = "Needs the EnrollmentWrite right (the answer holds symmetric keys).", params(DpsIdPath),
            responses((status = 200, description = "the attestation mechanism", body = Object), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse)))]
        pub async fn $attestation(
            State(state): State<AppState>,
            DpsCaller(caller): DpsCaller,
            DpsPath(DpsIdPath { id }): DpsPath<DpsIdPath>,
        ) -> Result<Response> {
            require(&caller, Rights::ENROLLMENT_WRITE, concat!("reading an ", $noun, "'s keys"))?;
            let rec = state
                .store()
                .enrollment(store_kind($kind), &id.to_ascii_lowercase())
                .await?
                .ok_or_else(|| not_found($kind, &id))?;
            let doc = view(&rec)?;
            Ok(json_response(StatusCode::OK, &doc["attestation"]))
        }
    };
}

enrollment_routes!(
    Kind::Group,
    "enrollment group",
    "enrollmentGroups",
    get_group,
    put_group,
    delete_group,
    query_groups,
    bulk_groups,
    bulk_groups_slash,
    group_attestation,
    "enrollmentGroups",
    "enrollmentGroup"
);
enrollment_routes!(
    Kind::Individual,
    "individual enrollment",
    "enrollments",
    get_enrollment,
    put_enrollment,
    delete_enrollment,
    query_enrollments,
    bulk_enrollments,
    bulk_enrollments_slash,
    enrollment_attestation,
    "enrollments",
    "enrollment"
);

/// The Node SDK's spelling of a group's attestation path.
#[utoipa::path(post, path = "/enrollmentgroups/{id}/attestationmechanism", summary = "Read an enrollment group's attestation (the Node SDK's spelling)",
    description = "Needs the EnrollmentWrite right.", params(DpsIdPath),
    responses((status = 200, description = "the attestation mechanism", body = Object), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse)))]
pub async fn group_attestation_lower(
    state: State<AppState>,
    caller: DpsCaller,
    path: DpsPath<DpsIdPath>,
) -> Result<Response> {
    group_attestation(state, caller, path).await
}

/// Only `*` (every entry) is a query the provisioning service answers.
fn check_query(body: &Value) -> Result<()> {
    match body.get("query").and_then(Value::as_str).map(str::trim) {
        None | Some("*") | Some("") => Ok(()),
        Some(q) => Err(DpsError::bad_request(format!(
            "the query {q:?} is not supported: certhub's provisioning queries take \"*\" (everything, a page at a time)"
        ))
        .into()),
    }
}

/// The page size and where the page starts, from `x-ms-max-item-count` and
/// `x-ms-continuation`.
fn page_of(headers: &HeaderMap) -> Result<(i64, String)> {
    let limit = match headers
        .get("x-ms-max-item-count")
        .and_then(|v| v.to_str().ok())
    {
        None => DEFAULT_PAGE,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(DpsError::bad_request(format!(
                    "x-ms-max-item-count {v:?} must be a number from 1 to {MAX_PAGE}"
                ))
                .into());
            }
        },
    };
    let after = match headers
        .get("x-ms-continuation")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("") => String::new(),
        Some(c) => {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    DpsError::bad_request(
                        "x-ms-continuation is not one this service gave; start the query again",
                    )
                })?
        }
    };
    Ok((limit, after))
}

/// A page of a query; the continuation header only when there is more (the Node SDK loops
/// while the header is there).
fn page(items: Vec<Value>, next: Option<String>, limit: i64, item_type: &str) -> Response {
    let mut r = json_response(StatusCode::OK, &Value::Array(items));
    let h = r.headers_mut();
    h.insert("x-ms-max-item-count", HeaderValue::from(limit));
    if let Ok(v) = HeaderValue::from_str(item_type) {
        h.insert("x-ms-item-type", v);
    }
    if let Some(after) = next {
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after);
        if let Ok(v) = HeaderValue::from_str(&token) {
            h.insert("x-ms-continuation", v);
        }
    }
    r
}

async fn bulk(
    state: &AppState,
    caller: &Caller,
    kind: Kind,
    prefix: &str,
    list_field: &str,
    body: &Value,
) -> Result<Response> {
    let mode = body
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !["create", "update", "updateifmatchetag", "delete"].contains(&mode.as_str()) {
        return Err(DpsError::bad_request(
            "mode must be create, update, updateIfMatchETag or delete",
        )
        .into());
    }
    let Some(entries) = body.get(list_field).and_then(Value::as_array) else {
        return Err(DpsError::bad_request(format!("{list_field} must be a list")).into());
    };
    if entries.is_empty() || entries.len() > MAX_BULK {
        return Err(DpsError::bad_request(format!(
            "{list_field} holds {}; a bulk operation takes 1 to {MAX_BULK}",
            entries.len()
        ))
        .into());
    }
    let mut errors = Vec::new();
    for entry in entries {
        let id = entry
            .get(kind.id_field())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let etag = entry
            .get("etag")
            .and_then(Value::as_str)
            .map(|e| Etag(e.trim_matches('"').to_string()));
        let result: Result<()> = async {
            let key = id.to_ascii_lowercase();
            let exists = state
                .store()
                .enrollment(store_kind(kind), &key)
                .await?
                .is_some();
            match mode.as_str() {
                "create" if exists => {
                    Err(DpsError::new(409, 409_201, format!("{id:?} exists")).into())
                }
                "update" | "updateifmatchetag" if !exists => Err(not_found(kind, &id)),
                "delete" => {
                    let condition = match &etag {
                        Some(e) => IfMatch::Tag(e.clone()),
                        None => IfMatch::Absent,
                    };
                    delete_one(state, kind, &id, &condition).await
                }
                _ => {
                    let condition = match (&etag, mode.as_str()) {
                        (Some(e), "updateifmatchetag") => IfMatch::Tag(e.clone()),
                        _ => IfMatch::Absent,
                    };
                    put_one(state, caller, kind, &id, condition, entry)
                        .await
                        .map(|_| ())
                }
            }
        }
        .await;
        let target = format!("{prefix}/{id}");
        match result {
            Ok(()) => {
                state
                    .audit(
                        caller,
                        &format!("dps.{prefix}.bulk-{mode}"),
                        &target,
                        "ok",
                        "",
                    )
                    .await;
            }
            Err(e) => {
                state
                    .audit(
                        caller,
                        &format!("dps.{prefix}.bulk-{mode}"),
                        &target,
                        &e.0.code.to_string(),
                        &e.0.message,
                    )
                    .await;
                errors.push(json!({
                    kind.id_field(): id,
                    "errorCode": e.0.code,
                    "errorStatus": e.0.message,
                }));
            }
        }
    }
    state.dps_config_changed().await;
    Ok(json_response(
        StatusCode::OK,
        &json!({"isSuccessful": errors.is_empty(), "errors": errors}),
    ))
}

#[utoipa::path(get, path = "/registrations/{id}", summary = "Read a device's registration state",
    description = "Needs the RegistrationStatusRead right.", params(DpsIdPath),
    responses((status = 200, description = "the registration state", body = Object), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse)))]
pub async fn get_registration(
    State(state): State<AppState>,
    DpsCaller(caller): DpsCaller,
    DpsPath(DpsIdPath { id }): DpsPath<DpsIdPath>,
) -> Result<Response> {
    require(
        &caller,
        Rights::REGISTRATION_STATUS_READ,
        "reading a registration state",
    )?;
    let rec = state
        .store()
        .registration(&id.to_ascii_lowercase())
        .await?
        .ok_or_else(|| DpsError::new(404, 404_202, format!("no registration of {id:?}")))?;
    let doc: Value = serde_json::from_str(&rec.doc)
        .map_err(|e| StoreError::Corrupt(format!("registration {}: {e}", rec.id)))?;
    Ok(with_etag(&doc, &rec.etag))
}

#[utoipa::path(delete, path = "/registrations/{id}", summary = "Delete a device's registration state",
    description = "Needs the RegistrationStatusWrite right. The device stays on its hub; its next registration is a first one.", params(DpsIdPath, super::doc::IfMatchHeader),
    responses((status = 204, description = "deleted"), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse), (status = 412, response = DpsErrorResponse)))]
pub async fn delete_registration(
    State(state): State<AppState>,
    DpsCaller(caller): DpsCaller,
    DpsPath(DpsIdPath { id }): DpsPath<DpsIdPath>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    require(
        &caller,
        Rights::REGISTRATION_STATUS_WRITE,
        "deleting a registration state",
    )?;
    let key = id.to_ascii_lowercase();
    let condition = if_match(&headers);
    let current = match condition.is_list() {
        true => state.store().registration(&key).await?.map(|r| r.etag),
        false => None,
    };
    let expected = condition.expected(current.as_ref());
    let result = match state
        .store()
        .delete_registration(&key, expected.as_ref())
        .await?
    {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => {
            Err(DpsError::new(404, 404_202, format!("no registration of {id:?}")).into())
        }
        DeleteOutcome::Stale => Err(DpsError::new(
            412,
            412_002,
            "the ETag given is not the registration's current one",
        )
        .into()),
    };
    audited(
        &state,
        &caller,
        "dps.registrations.delete",
        format!("registrations/{id}"),
        result,
    )
    .await
}

#[utoipa::path(post, path = "/registrations/{id}/query", summary = "List the registrations made through an enrollment group",
    description = "Needs the RegistrationStatusRead right. Paged as the enrollment queries.", params(DpsIdPath),
    responses((status = 200, description = "a page of registration states", body = [Object]), (status = 400, response = DpsErrorResponse), (status = 401, response = DpsErrorResponse)))]
pub async fn query_registrations(
    State(state): State<AppState>,
    DpsCaller(caller): DpsCaller,
    DpsPath(DpsIdPath { id }): DpsPath<DpsIdPath>,
    headers: HeaderMap,
) -> Result<Response> {
    require(
        &caller,
        Rights::REGISTRATION_STATUS_READ,
        "listing registrations",
    )?;
    let (limit, after) = page_of(&headers)?;
    let mut recs = state
        .store()
        .registrations_of(&id.to_ascii_lowercase(), &after, limit + 1)
        .await?;
    let more = recs.len() as i64 > limit;
    recs.truncate(limit as usize);
    let items = recs
        .iter()
        .map(|r| {
            let mut doc: Value = serde_json::from_str(&r.doc)
                .map_err(|e| StoreError::Corrupt(format!("registration {}: {e}", r.id)))?;
            doc["etag"] = Value::String(r.etag.0.clone());
            Ok(doc)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(page(
        items,
        more.then(|| recs.last().map(|r| r.id.clone())).flatten(),
        limit,
        "deviceRegistration",
    ))
}

#[utoipa::path(get, path = "/provisioning", summary = "The provisioning service of this hub: its ID scope and hubs",
    description = "Needs the EnrollmentRead right. certhub's own (Azure reads these from ARM).",
    responses((status = 200, description = "idScope, deviceProvisioningHostName, iotHubs", body = Object), (status = 401, response = DpsErrorResponse)))]
pub async fn provisioning(
    State(state): State<AppState>,
    DpsCaller(caller): DpsCaller,
) -> Result<Response> {
    require(
        &caller,
        Rights::ENROLLMENT_READ,
        "reading the provisioning service",
    )?;
    let mut hubs = vec![
        json!({"name": crate::dps::this_hub(&state), "allocationWeight": 1, "applyAllocationPolicy": true, "linked": false}),
    ];
    for h in state.store().linked_hubs().await? {
        hubs.push(json!({"name": h.name, "allocationWeight": h.weight, "applyAllocationPolicy": h.apply_allocation, "linked": true}));
    }
    let counts = state.store().registrations_per_hub().await?;
    for h in &mut hubs {
        let n = counts
            .iter()
            .find(|(name, _)| {
                h["name"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(name))
            })
            .map_or(0, |(_, n)| *n);
        h["registrations"] = json!(n);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "idScope": state.id_scope(),
            "deviceProvisioningHostName": crate::dps::this_hub(&state),
            "iotHubs": hubs,
        }),
    ))
}

/// `{name}`: a linked hub's host name.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LinkedHubPath {
    /// the host name devices reach the hub by
    #[param(pattern = "^[A-Za-z0-9\\-.]{1,253}$")]
    pub name: String,
}

/// A hub to link: how to reach its service API.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkedHubInput {
    /// HostName=...;SharedAccessKeyName=...;SharedAccessKey=... of a policy with RegistryRead,
    /// RegistryWrite and ServiceConnect on that hub (iothubowner)
    connection_string: String,
    /// that hub's server CA (PEM), which its service API is trusted by
    server_ca: String,
    /// its share of hashed and evenly weighted allocations (default 1; 0: none)
    #[serde(default)]
    allocation_weight: Option<i64>,
    /// whether allocation policies may choose it (default true; false: only enrollments that
    /// name it)
    #[serde(default)]
    apply_allocation_policy: Option<bool>,
}

#[utoipa::path(put, path = "/provisioning/linkedHubs/{name}", summary = "Link another certhub hub to this provisioning service",
    description = "Needs every provisioning right (provisioningserviceowner). The hub is called once to check the link before it is stored.",
    params(LinkedHubPath), request_body = LinkedHubInput,
    responses((status = 200, description = "linked", body = Object), (status = 400, response = DpsErrorResponse), (status = 401, response = DpsErrorResponse)))]
pub async fn put_linked_hub(
    State(state): State<AppState>,
    DpsCaller(caller): DpsCaller,
    DpsPath(LinkedHubPath { name }): DpsPath<LinkedHubPath>,
    body: std::result::Result<JsonBody<LinkedHubInput>, super::ApiError>,
) -> Result<Response> {
    require(&caller, Rights::PROVISIONING_OWNER, "linking a hub")?;
    let result = async {
        let JsonBody(input) = body?;
        let name = name.to_ascii_lowercase();
        if name == crate::dps::this_hub(&state) {
            return Err(DpsError::bad_request(format!(
                "{name} is this hub; it is always linked"
            ))
            .into());
        }
        let weight = input.allocation_weight.unwrap_or(1);
        if !(0..=1000).contains(&weight) {
            return Err(DpsError::bad_request("allocationWeight must be from 0 to 1000").into());
        }
        let rec = certhub_store::LinkedHubRecord {
            name: name.clone(),
            connection_string: input.connection_string,
            server_ca: input.server_ca,
            weight,
            apply_allocation: input.apply_allocation_policy.unwrap_or(true),
            created_ms: now_ms(),
        };
        let hub = crate::dps::hubs::Linked::new(&rec)
            .map_err(|e| DpsError::bad_request(format!("the link is not usable: {e}")))?;
        std::sync::Arc::new(hub)
            .check()
            .await
            .map_err(|e| DpsError::bad_request(format!("the hub did not answer as it should: {e}")))?;
        state.store().put_linked_hub(&rec).await?;
        Ok(json!({"name": name, "allocationWeight": rec.weight, "applyAllocationPolicy": rec.apply_allocation}))
    }
    .await;
    let body = audited(
        &state,
        &caller,
        "dps.linkedhubs.put",
        format!("provisioning/linkedHubs/{name}"),
        result,
    )
    .await?;
    Ok(json_response(StatusCode::OK, &body))
}

#[utoipa::path(delete, path = "/provisioning/linkedHubs/{name}", summary = "Unlink a hub",
    description = "Needs every provisioning right. Devices already assigned to it stay there.",
    params(LinkedHubPath),
    responses((status = 204, description = "unlinked"), (status = 401, response = DpsErrorResponse), (status = 404, response = DpsErrorResponse)))]
pub async fn delete_linked_hub(
    State(state): State<AppState>,
    DpsCaller(caller): DpsCaller,
    DpsPath(LinkedHubPath { name }): DpsPath<LinkedHubPath>,
) -> Result<StatusCode> {
    require(&caller, Rights::PROVISIONING_OWNER, "unlinking a hub")?;
    let result = match state
        .store()
        .delete_linked_hub(&name.to_ascii_lowercase())
        .await?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(DpsError::new(404, 404_000, format!("no linked hub {name:?}")).into()),
    };
    audited(
        &state,
        &caller,
        "dps.linkedhubs.delete",
        format!("provisioning/linkedHubs/{name}"),
        result,
    )
    .await
}
