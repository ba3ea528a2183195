//! `/expiry`: when the certificates devices last authenticated with expire, and the
//! registered CAs (certhub's): counts by horizon, a histogram by week, the soonest ones.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use certhub_core::Rights;
use serde::Serialize;
use utoipa::ToSchema;

use super::doc::ErrorResponse;
use super::{ApiError, AppState, Caller, now_ms};

/// The horizons counted, in days.
const HORIZONS: [i64; 3] = [7, 30, 90];

/// Identities whose certificate expires within a horizon.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Horizon {
    days: i64,
    /// not yet expired, expiring within `days`
    devices: i64,
}

/// One week of the histogram.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Week {
    /// weeks from now (0: the next 7 days)
    week: i64,
    /// the week's first day
    from: String,
    devices: i64,
}

/// An identity and when its certificate expires.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Expiring {
    device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    module_id: Option<String>,
    expires_at: String,
}

/// A registered CA's expiry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaExpiry {
    name: String,
    expires_at: String,
    /// whole days left (negative once expired)
    days_left: i64,
}

/// An intermediate CA certificate that devices' chains presented, and its expiry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntermediateExpiry {
    subject: String,
    issuer: String,
    /// the registered CA the chains reached
    ca: String,
    /// SHA-256 of the certificate, hex
    sha256_thumbprint: String,
    expires_at: String,
    /// whole days left (negative once expired)
    days_left: i64,
}

/// The fleet's certificate expiry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryView {
    /// devices and modules whose expiry is known (they authenticated with a CA-signed
    /// certificate since this was recorded)
    devices: i64,
    expired: i64,
    within: Vec<Horizon>,
    weeks: Vec<Week>,
    /// the soonest, expired ones first (at most 20)
    soonest: Vec<Expiring>,
    cas: Vec<CaExpiry>,
    /// the intermediates devices' chains presented, soonest first (at most 100)
    intermediates: Vec<IntermediateExpiry>,
}

#[utoipa::path(get, path = "/expiry", operation_id = "certificate_expiry",
    summary = "When device certificates, the intermediates their chains present and registered CAs expire: counts within 7, 30 and 90 days, a histogram by week, the soonest (certhub's)",
    description = "Needs the RegistryRead right. A device counts by the certificate it last authenticated with.",
    responses((status = 200, description = "success", body = ExpiryView), (status = 401, response = ErrorResponse)))]
pub async fn expiry(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Rights::REGISTRY_READ, "reading certificate expiry")?;
    let now = now_ms();
    let r = state.store().certificate_expiry(now, &HORIZONS).await?;
    let day = |ms: i64| certhub_core::azure_time(ms);
    let cas = state
        .store()
        .cas()
        .await?
        .into_iter()
        .map(|c| CaExpiry {
            days_left: (c.not_after_ms - now).div_euclid(86_400_000),
            expires_at: day(c.not_after_ms),
            name: c.name,
        })
        .collect();
    let intermediates = state
        .store()
        .intermediates()
        .await?
        .into_iter()
        .take(100)
        .map(|r| IntermediateExpiry {
            days_left: (r.not_after_ms - now).div_euclid(86_400_000),
            expires_at: day(r.not_after_ms),
            subject: r.subject,
            issuer: r.issuer,
            ca: r.ca,
            sha256_thumbprint: r.sha256,
        })
        .collect();
    Ok(Json(ExpiryView {
        devices: r.total,
        expired: r.expired,
        within: r
            .within
            .into_iter()
            .map(|(days, devices)| Horizon { days, devices })
            .collect(),
        weeks: r
            .weeks
            .into_iter()
            .map(|(week, devices)| Week {
                from: day(now + week * 7 * 86_400_000),
                week,
                devices,
            })
            .collect(),
        soonest: r
            .soonest
            .into_iter()
            .map(|(d, m, e)| Expiring {
                device_id: d,
                module_id: (!m.is_empty()).then_some(m),
                expires_at: day(e),
            })
            .collect(),
        cas,
        intermediates,
    })
    .into_response())
}
