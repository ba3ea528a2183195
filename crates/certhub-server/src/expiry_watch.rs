//! Certificate expiry, watched: every check (`expiry_check`, a minute by default) counts the
//! identities whose certificate (the leaf each last authenticated with) is within 7, 30 and
//! 90 days or expired, and the intermediates their chains presented, for `/metrics`, and
//! announces each identity and intermediate entering a horizon once,
//! over all the nodes sharing the store: an audit record (`certificate.expiring`, actor
//! `hub`) and, when configured, a webhook POST signed with HMAC-SHA256. Webhook deliveries
//! run in a task of their own, retried a bounded number of times; a receiver that is down
//! never slows the hub, and past the retries the event is dropped with a log line (the audit
//! record stays).

use std::time::Duration;

use certhub_store::ExpiryEvent;
use serde_json::json;

use crate::state::{AppState, now_ms};

/// The horizons, in days.
pub const HORIZONS: [i64; 3] = [7, 30, 90];
/// Attempts per webhook event, and the first wait between them (doubled each time).
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Events waiting for delivery at most; past it new ones are dropped with a log line.
const QUEUE: usize = 10_000;

/// Where expiry events are POSTed, and the key that signs them.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

use crate::state::System as Hub;

/// The `X-Certhub-Signature` value of `body`: `sha256=` and the hex HMAC-SHA256 under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    format!(
        "sha256={}",
        certhub_pki::hex(aws_lc_rs::hmac::sign(&key, body).as_ref())
    )
}

/// Starts the watch.
pub fn spawn(
    state: AppState,
    every: Duration,
    webhook: Option<Webhook>,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<serde_json::Value>(QUEUE);
    let deliveries = webhook.map(|w| tokio::spawn(deliver(w, rx)));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = check(&state, &tx, deliveries.is_some()).await {
                tracing::warn!(error = %e, "the certificate expiry check failed");
            }
        }
    })
}

async fn check(
    state: &AppState,
    tx: &tokio::sync::mpsc::Sender<serde_json::Value>,
    webhook: bool,
) -> Result<(), certhub_store::StoreError> {
    let now = now_ms();
    let report = state.store().certificate_expiry(now, &HORIZONS).await?;
    state.metrics().set_expiry(report.expired, report.within);
    for event in state.store().announce_expiry(now, &HORIZONS).await? {
        let (target, body) = describe(&event);
        let outcome = match event.horizon_days {
            0 => "expired".to_string(),
            d => format!("{d}d"),
        };
        let detail = body["message"].as_str().unwrap_or_default().to_string();
        state
            .audit(&Hub, "certificate.expiring", &target, &outcome, &detail)
            .await;
        if webhook && tx.try_send(body).is_err() {
            tracing::warn!(
                target,
                "the expiry webhook queue is full; this event is not delivered"
            );
        }
    }
    // The intermediates devices' chains presented.
    let intermediates = state.store().intermediates().await?;
    let expired = intermediates
        .iter()
        .filter(|r| r.not_after_ms <= now)
        .count();
    let within = HORIZONS
        .iter()
        .map(|d| {
            let n = intermediates
                .iter()
                .filter(|r| r.not_after_ms > now && r.not_after_ms <= now + d * 86_400_000)
                .count();
            (*d, i64::try_from(n).unwrap_or(i64::MAX))
        })
        .collect();
    state
        .metrics()
        .set_intermediate_expiry(i64::try_from(expired).unwrap_or(i64::MAX), within);
    for (r, horizon) in state
        .store()
        .announce_intermediate_expiry(now, &HORIZONS)
        .await?
    {
        let target = format!("intermediates/{}", r.sha256);
        let at = certhub_core::azure_time(r.not_after_ms);
        let (kind, outcome, message) = match horizon {
            0 => (
                "intermediate.expired",
                "expired".to_string(),
                format!(
                    "the intermediate {:?} (issued by {:?}, under CA {:?}) that devices' chains presented expired at {at}",
                    r.subject, r.issuer, r.ca
                ),
            ),
            d => (
                "intermediate.expiring",
                format!("{d}d"),
                format!(
                    "the intermediate {:?} (issued by {:?}, under CA {:?}) that devices' chains present expires at {at}, within {d} days",
                    r.subject, r.issuer, r.ca
                ),
            ),
        };
        state
            .audit(&Hub, "certificate.expiring", &target, &outcome, &message)
            .await;
        let body = json!({
            "id": format!("{target}:{}:{horizon}", r.not_after_ms),
            "type": kind,
            "sha256Thumbprint": r.sha256,
            "subject": r.subject,
            "issuer": r.issuer,
            "ca": r.ca,
            "expiresAt": at,
            "withinDays": horizon,
            "message": message,
        });
        if webhook && tx.try_send(body).is_err() {
            tracing::warn!(
                target,
                "the expiry webhook queue is full; this event is not delivered"
            );
        }
    }
    Ok(())
}

/// The audit target and the webhook body of an event.
fn describe(e: &ExpiryEvent) -> (String, serde_json::Value) {
    let target = if e.module_id.is_empty() {
        format!("devices/{}", e.device_id)
    } else {
        format!("devices/{}/modules/{}", e.device_id, e.module_id)
    };
    let at = certhub_core::azure_time(e.expires_ms);
    let message = match e.horizon_days {
        0 => format!("the certificate {target} last authenticated with expired at {at}"),
        d => format!(
            "the certificate {target} last authenticated with expires at {at}, within {d} days"
        ),
    };
    let kind = if e.horizon_days == 0 {
        "certificate.expired"
    } else {
        "certificate.expiring"
    };
    let body = json!({
        "id": format!("{target}:{}:{}", e.expires_ms, e.horizon_days),
        "type": kind,
        "deviceId": e.device_id,
        "moduleId": (!e.module_id.is_empty()).then_some(&e.module_id),
        "expiresAt": at,
        "withinDays": e.horizon_days,
        "message": message,
    });
    (target, body)
}

/// Delivers events one at a time, each retried up to [`ATTEMPTS`] times.
async fn deliver(w: Webhook, mut rx: tokio::sync::mpsc::Receiver<serde_json::Value>) {
    let agent = crate::crl_fetch::http_agent(DELIVERY_TIMEOUT, 0);
    while let Some(event) = rx.recv().await {
        let body = event.to_string();
        let signed = signature(&w.secret, body.as_bytes());
        let mut wait = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            let (agent, url, body, signed) =
                (agent.clone(), w.url.clone(), body.clone(), signed.clone());
            let sent = tokio::task::spawn_blocking(move || {
                agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("X-Certhub-Signature", &signed)
                    .send(body.as_bytes())
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match sent {
                Ok(s) if (200..300).contains(&s) => break,
                outcome => {
                    if attempt == ATTEMPTS {
                        tracing::warn!(url = %w.url, id = %event["id"], ?outcome,
                            "the expiry webhook did not take the event; dropped after {ATTEMPTS} attempts");
                    } else {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
