//! Registered CA certificates and their proof-of-possession state.

use certhub_core::Etag;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, WriteOutcome};

/// A registered CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    pub name: String,
    pub pem: String,
    pub subject: String,
    pub issuer: String,
    pub sha1: String,
    pub sha256: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub is_verified: bool,
    pub etag: Etag,
    /// The current verification code and when it stops being accepted.
    pub verification_code: Option<String>,
    pub code_expires_ms: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn from_row(row: &AnyRow) -> Result<CaRecord> {
    Ok(CaRecord {
        name: row.try_get("name")?,
        pem: row.try_get("pem")?,
        subject: row.try_get("subject")?,
        issuer: row.try_get("issuer")?,
        sha1: row.try_get("sha1")?,
        sha256: row.try_get("sha256")?,
        not_before_ms: row.try_get("not_before_ms")?,
        not_after_ms: row.try_get("not_after_ms")?,
        is_verified: row.try_get::<i64, _>("is_verified")? != 0,
        etag: Etag(row.try_get("etag")?),
        verification_code: row.try_get("verification_code")?,
        code_expires_ms: row.try_get("code_expires_ms")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

impl Store {
    pub async fn ca(&self, name: &str) -> Result<Option<CaRecord>> {
        let row = sqlx::query("SELECT * FROM ca_certificates WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The CA registered with this SHA-256 thumbprint, under whatever name.
    pub async fn ca_by_sha256(&self, sha256: &str) -> Result<Option<CaRecord>> {
        let row = sqlx::query("SELECT * FROM ca_certificates WHERE sha256 = $1")
            .bind(sha256.to_string())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn cas(&self) -> Result<Vec<CaRecord>> {
        let rows = sqlx::query("SELECT * FROM ca_certificates ORDER BY name")
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Registers a CA unless the name or the certificate is taken (`Exists`).
    pub async fn create_ca(&self, r: &CaRecord) -> Result<WriteOutcome> {
        let done = sqlx::query(
            "INSERT INTO ca_certificates (name, pem, subject, issuer, sha1, sha256,
                not_before_ms, not_after_ms, is_verified, etag, verification_code,
                code_expires_ms, created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT DO NOTHING",
        )
        .bind(r.name.clone())
        .bind(r.pem.clone())
        .bind(r.subject.clone())
        .bind(r.issuer.clone())
        .bind(r.sha1.clone())
        .bind(r.sha256.clone())
        .bind(r.not_before_ms)
        .bind(r.not_after_ms)
        .bind(i64::from(r.is_verified))
        .bind(r.etag.0.clone())
        .bind(r.verification_code.clone())
        .bind(r.code_expires_ms)
        .bind(r.created_ms)
        .bind(r.updated_ms)
        .execute(self.pool())
        .await?;
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else {
            WriteOutcome::Exists
        })
    }

    /// Replaces the mutable state of a CA (verification, code, ETag) if its ETag is still
    /// `expected`.
    pub async fn update_ca_state(&self, r: &CaRecord, expected: &Etag) -> Result<WriteOutcome> {
        let done = sqlx::query(
            "UPDATE ca_certificates SET is_verified = $1, etag = $2, verification_code = $3,
                code_expires_ms = $4, updated_ms = $5
             WHERE name = $6 AND etag = $7",
        )
        .bind(i64::from(r.is_verified))
        .bind(r.etag.0.clone())
        .bind(r.verification_code.clone())
        .bind(r.code_expires_ms)
        .bind(r.updated_ms)
        .bind(r.name.clone())
        .bind(expected.0.clone())
        .execute(self.pool())
        .await?;
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else {
            WriteOutcome::Stale
        })
    }

    /// Deletes a CA; with `expected`, only if its ETag still matches.
    pub async fn delete_ca(
        &self,
        name: &str,
        expected: Option<&Etag>,
    ) -> Result<crate::DeleteOutcome> {
        let done = match expected {
            Some(e) => {
                sqlx::query("DELETE FROM ca_certificates WHERE name = $1 AND etag = $2")
                    .bind(name.to_string())
                    .bind(e.0.clone())
                    .execute(self.pool())
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM ca_certificates WHERE name = $1")
                    .bind(name.to_string())
                    .execute(self.pool())
                    .await?
            }
        };
        if done.rows_affected() == 1 {
            return Ok(crate::DeleteOutcome::Deleted);
        }
        Ok(match self.ca(name).await? {
            Some(_) => crate::DeleteOutcome::Stale,
            None => crate::DeleteOutcome::NotFound,
        })
    }
}

impl Store {
    /// The CAs with just-in-time registration on: (name, device id pattern).
    pub async fn jitr(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, pattern FROM ca_jitr ORDER BY name")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("pattern")?)))
            .collect()
    }

    /// Turns just-in-time registration on for a CA (`Some(pattern)`) or off (`None`).
    pub async fn set_jitr(&self, name: &str, pattern: Option<&str>, now_ms: i64) -> Result<()> {
        match pattern {
            Some(p) => {
                sqlx::query(
                    "INSERT INTO ca_jitr (name, pattern, created_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET pattern = excluded.pattern",
                )
                .bind(name.to_string())
                .bind(p.to_string())
                .bind(now_ms)
                .execute(self.pool())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM ca_jitr WHERE name = $1")
                    .bind(name.to_string())
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(())
    }
}
