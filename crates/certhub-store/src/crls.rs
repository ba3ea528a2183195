//! Certificate revocation lists held for registered CAs: one per (CA, CRL issuer key), the
//! newest by CRL number. The hub builds its revocation index from them.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store};

/// A CRL as stored: checked against its CA when it was taken, checked again on every load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// The registered CA it was uploaded for.
    pub ca: String,
    /// SHA-256 of the CRL issuer's SubjectPublicKeyInfo, hex.
    pub issuer_key: String,
    /// The CRL issuer's subject, as text.
    pub issuer: String,
    /// PEM of the CRL issuer's certificate and any between it and the CA (empty when the CA
    /// issued the CRL itself).
    pub issuer_chain: String,
    /// The CRL, DER.
    pub der: Vec<u8>,
    /// Its CRL number, decimal.
    pub number: String,
    pub this_update_ms: i64,
    /// Its nextUpdate, or 0 when it has none.
    pub next_update_ms: i64,
    /// How many certificates it revokes.
    pub entries: i64,
    /// Where it came from: `upload` (or, later, a distribution point's URL).
    pub source: String,
    pub stored_ms: i64,
}

fn from_row(row: &AnyRow) -> Result<CrlRecord> {
    Ok(CrlRecord {
        ca: row.try_get("ca")?,
        issuer_key: row.try_get("issuer_key")?,
        issuer: row.try_get("issuer")?,
        issuer_chain: row.try_get("issuer_chain")?,
        der: row.try_get("der")?,
        number: row.try_get("number")?,
        this_update_ms: row.try_get("this_update_ms")?,
        next_update_ms: row.try_get("next_update_ms")?,
        entries: row.try_get("entries")?,
        source: row.try_get("source")?,
        stored_ms: row.try_get("stored_ms")?,
    })
}

impl Store {
    /// Every stored CRL, by CA and issuer.
    pub async fn crls(&self) -> Result<Vec<CrlRecord>> {
        let rows = sqlx::query("SELECT * FROM crls ORDER BY ca, issuer, issuer_key")
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The CRLs stored for one CA.
    pub async fn crls_of(&self, ca: &str) -> Result<Vec<CrlRecord>> {
        let rows = sqlx::query("SELECT * FROM crls WHERE ca = $1 ORDER BY issuer, issuer_key")
            .bind(ca.to_string())
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Stores a CRL, replacing the one of the same CA and issuer key.
    pub async fn put_crl(&self, r: &CrlRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO crls (ca, issuer_key, issuer, issuer_chain, der, number,
                this_update_ms, next_update_ms, entries, source, stored_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (ca, issuer_key) DO UPDATE SET issuer = excluded.issuer,
                issuer_chain = excluded.issuer_chain, der = excluded.der,
                number = excluded.number, this_update_ms = excluded.this_update_ms,
                next_update_ms = excluded.next_update_ms, entries = excluded.entries,
                source = excluded.source, stored_ms = excluded.stored_ms",
        )
        .bind(r.ca.clone())
        .bind(r.issuer_key.clone())
        .bind(r.issuer.clone())
        .bind(r.issuer_chain.clone())
        .bind(r.der.clone())
        .bind(r.number.clone())
        .bind(r.this_update_ms)
        .bind(r.next_update_ms)
        .bind(r.entries)
        .bind(r.source.clone())
        .bind(r.stored_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes the CRL of a CA and issuer key; false when there was none.
    pub async fn delete_crl(&self, ca: &str, issuer_key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM crls WHERE ca = $1 AND issuer_key = $2")
            .bind(ca.to_string())
            .bind(issuer_key.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Each CA's policy for its stale CRLs, as set (`fail-open`, or `fail-closed:<grace s>`);
    /// a CA without one is not listed.
    pub async fn crl_policies(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT name, crl_policy FROM ca_certificates WHERE crl_policy IS NOT NULL",
        )
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("crl_policy")?)))
            .collect()
    }

    /// Sets a CA's policy for stale CRLs; false when no CA has the name.
    pub async fn set_crl_policy(&self, ca: &str, policy: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE ca_certificates SET crl_policy = $1 WHERE name = $2")
            .bind(policy.to_string())
            .bind(ca.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes every CRL of a CA (the CA is being deleted).
    pub async fn delete_crls_of(&self, ca: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM crls WHERE ca = $1")
            .bind(ca.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
