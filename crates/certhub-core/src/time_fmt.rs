use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Azure's "never" timestamp.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// Milliseconds since the epoch as Azure writes times (RFC 3339, UTC).
pub fn azure_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| NEVER.to_string())
}

/// Like [`azure_time`], with 0 meaning "never".
pub fn azure_time_opt(ms: i64) -> String {
    if ms == 0 {
        NEVER.to_string()
    } else {
        azure_time(ms)
    }
}
