//! The API's description (OpenAPI 3.1), generated from the handlers' `#[utoipa::path]`
//! annotations and the types they read and write: `router()` registers each route together
//! with its description, so a route cannot be served undocumented, and a field cannot be
//! written without being in its schema.

use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToResponse, ToSchema};

/// The document's frame: what the paths cannot say themselves.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "certhub service API",
        description = "Azure IoT Hub's service REST API shape (api-version accepted and ignored) plus CA registration in the ARM certificate shape.",
    ),
    components(responses(ErrorResponse, super::dps::DpsErrorResponse)),
    modifiers(&SharedAccessSignature),
    security(("sas" = [])),
)]
pub(super) struct ApiDoc;

/// Declares the one security scheme: a SharedAccessSignature token in the Authorization header.
struct SharedAccessSignature;

impl Modify for SharedAccessSignature {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        components.add_security_scheme(
            "sas",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "SharedAccessSignature sr=<host>&sig=<sig>&se=<expiry>&skn=<policy>",
            ))),
        );
    }
}

/// Azure's error shape.
// azure-protocol 4.5; written by `ApiError`'s `IntoResponse`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// ErrorCode:<Code>;<text>
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "ExceptionMessage")]
    pub exception_message: String,
}

/// Azure-shaped error: 400 a request the hub refuses, 401 no or a bad token or missing rights,
/// 403 a device that cannot take the message, 404 no such resource, 405 a method the path does
/// not take, 409 a conflict (the resource exists), 412 a stale If-Match or lock token, 413 a
/// body over 256 KiB, 503 a device with too many calls outstanding, 504 a device that did not answer in time.
#[derive(Debug, ToResponse)]
#[response(
    description = "Azure-shaped error: 400 a request the hub refuses, 401 no or a bad token or missing rights, 403 a device that cannot take the message, 404 no such resource, 405 a method the path does not take, 409 a conflict (the resource exists), 412 a stale If-Match or lock token, 413 a body over 256 KiB, 503 a device with too many calls outstanding, 504 a device that did not answer in time"
)]
pub struct ErrorResponse(#[allow(dead_code)] ErrorBody);

/// `{id}`: a device id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DevicePath {
    /// device id: 1 to 128 characters: ASCII letters, digits and - . + % _ # * ? ! ( ) , = @ $ ' : (case-sensitive)
    #[param(pattern = "^[A-Za-z0-9\\-.+%_#*?!(),=@$':]{1,128}$")]
    pub id: String,
}

/// `{id}/{mid}`: a device id and a module id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ModulePath {
    /// device id: 1 to 128 characters: ASCII letters, digits and - . + % _ # * ? ! ( ) , = @ $ ' : (case-sensitive)
    #[param(pattern = "^[A-Za-z0-9\\-.+%_#*?!(),=@$':]{1,128}$")]
    pub id: String,
    /// module id: 1 to 128 characters: ASCII letters, digits and - . + % _ # * ? ! ( ) , = @ $ ' : (case-sensitive)
    #[param(pattern = "^[A-Za-z0-9\\-.+%_#*?!(),=@$':]{1,128}$")]
    pub mid: String,
}

/// `{name}/crls/{issuerKey}`: a CRL held for a CA, by its issuer's key.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[serde(rename_all = "camelCase")]
#[into_params(rename_all = "camelCase")]
pub struct CrlPath {
    /// 1 to 64 of A-Z a-z 0-9 - . _
    #[param(pattern = "^[A-Za-z0-9-._]{1,64}$")]
    pub name: String,
    /// SHA-256 of the CRL issuer's SubjectPublicKeyInfo, 64 hex digits (as listed)
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    pub issuer_key: String,
}

/// `{name}`: a CA certificate's name.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CertificatePath {
    /// 1 to 64 of A-Z a-z 0-9 - . _
    #[param(pattern = "^[A-Za-z0-9-._]{1,64}$")]
    pub name: String,
}

/// `{lockToken}`: a feedback batch's lock token, from the ETag of its receipt.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LockTokenPath {
    /// the lock token, from the ETag the batch came with (quotes optional)
    #[serde(rename = "lockToken")]
    pub lock_token: String,
}

/// The `If-Match` precondition of writes to a resource with an ETag.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatchHeader {
    /// "*" or the quoted ETag (412 when it is not the current one); on PUT, absent means create (409 if it exists)
    #[param(rename = "If-Match", nullable = false)]
    #[allow(dead_code)]
    if_match: Option<String>,
}
