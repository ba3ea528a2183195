//! CRL distribution points the hub learnt from the chains devices presented: per (CA, CRL
//! issuer key, URL), the issuer's chain to check a fetched CRL with, when to fetch next and
//! how the last fetch went. Every node of a cluster reads the same rows and claims a due
//! fetch before making it, so one node fetches each time.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store};

/// A distribution point and its fetch schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSource {
    /// The registered CA the chain reached.
    pub ca: String,
    /// SHA-256 of the CRL issuer's SubjectPublicKeyInfo, hex.
    pub issuer_key: String,
    /// The `http://` URL named in the certificate's cRLDistributionPoints.
    pub url: String,
    /// The CRL issuer's subject, as text.
    pub issuer: String,
    /// PEM of the CRL issuer's certificate and any between it and the CA (empty when the CA
    /// issues the CRL itself).
    pub issuer_chain: String,
    /// When a chain first named it.
    pub found_ms: i64,
    /// When it is due to be fetched.
    pub next_fetch_ms: i64,
    /// The last attempt, 0 before the first.
    pub fetched_ms: i64,
    /// The last success, 0 before the first.
    pub ok_ms: i64,
    /// Failed attempts since the last success.
    pub failures: i64,
    /// What went wrong the last time, empty after a success.
    pub error: String,
}

fn from_row(row: &AnyRow) -> Result<CrlSource> {
    Ok(CrlSource {
        ca: row.try_get("ca")?,
        issuer_key: row.try_get("issuer_key")?,
        url: row.try_get("url")?,
        issuer: row.try_get("issuer")?,
        issuer_chain: row.try_get("issuer_chain")?,
        found_ms: row.try_get("found_ms")?,
        next_fetch_ms: row.try_get("next_fetch_ms")?,
        fetched_ms: row.try_get("fetched_ms")?,
        ok_ms: row.try_get("ok_ms")?,
        failures: row.try_get("failures")?,
        error: row.try_get("error")?,
    })
}

impl Store {
    /// Records a distribution point unless it is known; true when it was new.
    pub async fn add_crl_source(&self, s: &CrlSource) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO crl_sources (ca, issuer_key, url, issuer, issuer_chain, found_ms,
                next_fetch_ms, fetched_ms, ok_ms, failures, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (ca, issuer_key, url) DO NOTHING",
        )
        .bind(s.ca.clone())
        .bind(s.issuer_key.clone())
        .bind(s.url.clone())
        .bind(s.issuer.clone())
        .bind(s.issuer_chain.clone())
        .bind(s.found_ms)
        .bind(s.next_fetch_ms)
        .bind(s.fetched_ms)
        .bind(s.ok_ms)
        .bind(s.failures)
        .bind(s.error.clone())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every distribution point, by CA, issuer and URL.
    pub async fn crl_sources(&self) -> Result<Vec<CrlSource>> {
        let rows = sqlx::query("SELECT * FROM crl_sources ORDER BY ca, issuer, url")
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The distribution points of one CA.
    pub async fn crl_sources_of(&self, ca: &str) -> Result<Vec<CrlSource>> {
        let rows = sqlx::query("SELECT * FROM crl_sources WHERE ca = $1 ORDER BY issuer, url")
            .bind(ca.to_string())
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The distribution points due at `now_ms`, soonest first, of CAs that fetch them.
    pub async fn due_crl_sources(&self, now_ms: i64) -> Result<Vec<CrlSource>> {
        let rows = sqlx::query(
            "SELECT s.* FROM crl_sources s JOIN ca_certificates c ON c.name = s.ca
             WHERE s.next_fetch_ms <= $1 AND (c.crl_fetch IS NULL OR c.crl_fetch <> 0)
             ORDER BY s.next_fetch_ms",
        )
        .bind(now_ms)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Claims a due fetch for this node: moves its next fetch from `due_ms` (as read) to
    /// `lease_ms`. False when another node claimed it first.
    pub async fn claim_crl_source(
        &self,
        s: &CrlSource,
        due_ms: i64,
        lease_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE crl_sources SET next_fetch_ms = $1
             WHERE ca = $2 AND issuer_key = $3 AND url = $4 AND next_fetch_ms = $5",
        )
        .bind(lease_ms)
        .bind(s.ca.clone())
        .bind(s.issuer_key.clone())
        .bind(s.url.clone())
        .bind(due_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how a fetch went: `error` empty for a success. A failure counts towards
    /// `failures`; a success clears it.
    pub async fn record_crl_fetch(
        &self,
        s: &CrlSource,
        fetched_ms: i64,
        error: &str,
        next_fetch_ms: i64,
    ) -> Result<()> {
        let ok = error.is_empty();
        sqlx::query(
            "UPDATE crl_sources SET fetched_ms = $1, next_fetch_ms = $2, error = $3,
                ok_ms = CASE WHEN $4 = 1 THEN $5 ELSE ok_ms END,
                failures = CASE WHEN $6 = 1 THEN 0 ELSE failures + 1 END
             WHERE ca = $7 AND issuer_key = $8 AND url = $9",
        )
        .bind(fetched_ms)
        .bind(next_fetch_ms)
        .bind(error.to_string())
        .bind(i64::from(ok))
        .bind(fetched_ms)
        .bind(i64::from(ok))
        .bind(s.ca.clone())
        .bind(s.issuer_key.clone())
        .bind(s.url.clone())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Makes every distribution point of a CA due now (its fetching was switched on).
    pub async fn crl_sources_due_now(&self, ca: &str, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE crl_sources SET next_fetch_ms = $1 WHERE ca = $2")
            .bind(now_ms)
            .bind(ca.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets every distribution point of a CA (the CA is being deleted).
    pub async fn delete_crl_sources_of(&self, ca: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM crl_sources WHERE ca = $1")
            .bind(ca.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Whether the hub fetches a CA's CRLs from their distribution points (the default), by
    /// CA; a CA left at the default is not listed.
    pub async fn crl_fetch_settings(&self) -> Result<Vec<(String, bool)>> {
        let rows =
            sqlx::query("SELECT name, crl_fetch FROM ca_certificates WHERE crl_fetch IS NOT NULL")
                .fetch_all(self.reader())
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get::<i64, _>("crl_fetch")? != 0)))
            .collect()
    }

    /// Sets whether the hub fetches a CA's CRLs; false when no CA has the name.
    pub async fn set_crl_fetch(&self, ca: &str, fetch: bool) -> Result<bool> {
        let done = sqlx::query("UPDATE ca_certificates SET crl_fetch = $1 WHERE name = $2")
            .bind(i64::from(fetch))
            .bind(ca.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a leaf an OCSP responder answered revoked (kept: a revocation is final).
    pub async fn put_ocsp_revocation(&self, r: &OcspRevocation) -> Result<()> {
        sqlx::query(
            "INSERT INTO ocsp_revocations (ca, issuer_key, serial, revoked_ms, reason, url, learnt_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (ca, issuer_key, serial) DO NOTHING",
        )
        .bind(r.ca.clone())
        .bind(r.issuer_key.clone())
        .bind(r.serial.clone())
        .bind(r.revoked_ms)
        .bind(r.reason)
        .bind(r.url.clone())
        .bind(r.learnt_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every leaf OCSP responders answered revoked.
    pub async fn ocsp_revocations(&self) -> Result<Vec<OcspRevocation>> {
        let rows = sqlx::query("SELECT * FROM ocsp_revocations ORDER BY ca, issuer_key, serial")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OcspRevocation {
                    ca: r.try_get("ca")?,
                    issuer_key: r.try_get("issuer_key")?,
                    serial: r.try_get("serial")?,
                    revoked_ms: r.try_get("revoked_ms")?,
                    reason: r.try_get("reason")?,
                    url: r.try_get("url")?,
                    learnt_ms: r.try_get("learnt_ms")?,
                })
            })
            .collect()
    }

    /// Forgets the OCSP revocations of a CA (the CA is being deleted).
    pub async fn delete_ocsp_revocations_of(&self, ca: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM ocsp_revocations WHERE ca = $1")
            .bind(ca.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// The CAs whose devices' leaves the hub checks with their OCSP responders.
    pub async fn ocsp_cas(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM ca_certificates WHERE ocsp = 1 ORDER BY name")
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
    }

    /// Sets whether the hub asks OCSP responders for a CA's devices; false when no CA has
    /// the name.
    pub async fn set_ocsp(&self, ca: &str, on: bool) -> Result<bool> {
        let done = sqlx::query("UPDATE ca_certificates SET ocsp = $1 WHERE name = $2")
            .bind(i64::from(on))
            .bind(ca.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A leaf an OCSP responder answered revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspRevocation {
    pub ca: String,
    /// SHA-256 of the issuer's SubjectPublicKeyInfo, hex.
    pub issuer_key: String,
    /// The leaf's serial, hex.
    pub serial: String,
    pub revoked_ms: i64,
    /// The RFC 5280 reason code.
    pub reason: i64,
    /// The responder that said so.
    pub url: String,
    pub learnt_ms: i64,
}
