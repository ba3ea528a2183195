//! Certificates the operator blocks without a CRL (by SHA-256 thumbprint, or by issuer and
//! serial). The hub files them into its revocation index.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store};

/// A block as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    /// `sha256:<hex>` or `serial:<hex>:<issuer>`.
    pub id: String,
    /// The certificate's SHA-256 (lowercase hex), or "" for a block by issuer and serial.
    pub sha256: String,
    /// The issuer's name, as `certhub pki inspect` prints it ("" when only the thumbprint is
    /// known).
    pub issuer: String,
    /// The serial (lowercase hex, no leading zeros), or "".
    pub serial: String,
    /// The certificate's subject, when known.
    pub subject: String,
    /// The operator's note.
    pub note: String,
    pub created_ms: i64,
}

fn from_row(row: &AnyRow) -> Result<BlockRecord> {
    Ok(BlockRecord {
        id: row.try_get("id")?,
        sha256: row.try_get("sha256")?,
        issuer: row.try_get("issuer")?,
        serial: row.try_get("serial")?,
        subject: row.try_get("subject")?,
        note: row.try_get("note")?,
        created_ms: row.try_get("created_ms")?,
    })
}

impl Store {
    pub async fn blocks(&self) -> Result<Vec<BlockRecord>> {
        let rows = sqlx::query("SELECT * FROM certificate_blocks ORDER BY created_ms, id")
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Adds a block; false when the same block exists (it is left as it was).
    pub async fn put_block(&self, r: &BlockRecord) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO certificate_blocks (id, sha256, issuer, serial, subject, note, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(r.id.clone())
        .bind(r.sha256.clone())
        .bind(r.issuer.clone())
        .bind(r.serial.clone())
        .bind(r.subject.clone())
        .bind(r.note.clone())
        .bind(r.created_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a block; false when there was none.
    pub async fn delete_block(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM certificate_blocks WHERE id = $1")
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
