//! The audit trail: every change to the registry, CAs and settings, who made it, and how it
//! ended.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Row;

use crate::{Result, Store};

/// One audited operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: String,
    pub at_ms: i64,
    /// The policy (or local operator) that acted.
    pub actor: String,
    /// e.g. `device.create`, `ca.verify`, `settings.update`.
    pub operation: String,
    /// e.g. `devices/widget-1`.
    pub target: String,
    /// `ok`, or the refusal.
    pub outcome: String,
    pub detail: String,
    /// How many identical events this record stands for: 1, or more for refused connections
    /// that repeated within a window (the detail says when).
    #[schema(minimum = 1)]
    pub count: i64,
}

/// Which audit records to list; empty fields match everything. `target` also matches what
/// lies below it (`devices/widget-1` matches `devices/widget-1/sensor`).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub operation: String,
    pub target: String,
    pub outcome: String,
}

impl AuditRecord {
    pub fn new(
        at_ms: i64,
        actor: &str,
        operation: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Self {
        // Ordered by time, then by this process's sequence (records of one millisecond keep
        // their order); the random part keeps ids of different processes apart.
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        Self {
            id: format!("{at_ms:013}-{seq:012}-{}", certhub_core::Etag::random()),
            at_ms,
            actor: actor.into(),
            operation: operation.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: detail.into(),
            count: 1,
        }
    }

    /// The same record standing for `count` identical events.
    pub fn with_count(mut self, count: i64) -> Self {
        self.count = count;
        self
    }
}

/// The statement that stores one record, for a pool or a transaction.
pub(crate) fn insert_audit(
    r: &AuditRecord,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO audit (id, at_ms, actor, operation, target, outcome, detail, count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.id.clone())
    .bind(r.at_ms)
    .bind(r.actor.clone())
    .bind(r.operation.clone())
    .bind(r.target.clone())
    .bind(r.outcome.clone())
    .bind(r.detail.clone())
    .bind(r.count)
}

impl Store {
    pub async fn append_audit(&self, r: &AuditRecord) -> Result<()> {
        insert_audit(r).execute(self.pool()).await?;
        Ok(())
    }

    /// The newest `limit` records, newest first.
    pub async fn audit(&self, limit: i64) -> Result<Vec<AuditRecord>> {
        self.audit_filtered(&AuditFilter::default(), limit).await
    }

    /// The newest `limit` records matching `filter`, newest first.
    pub async fn audit_filtered(
        &self,
        filter: &AuditFilter,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        // Empty filters match everything (`'' = ''`), so one statement serves every query.
        let rows = sqlx::query(
            "SELECT * FROM audit
             WHERE ($1 = '' OR operation = $1)
               AND ($2 = '' OR target = $2 OR substr(target, 1, length($3)) = $3)
               AND ($4 = '' OR outcome = $4)
             ORDER BY at_ms DESC, id DESC LIMIT $5",
        )
        .bind(filter.operation.clone())
        .bind(filter.target.clone())
        // A prefix compared as text, not a LIKE pattern: ids may contain '_' and '%'.
        .bind(format!("{}/", filter.target))
        .bind(filter.outcome.clone())
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at_ms: row.try_get("at_ms")?,
                    actor: row.try_get("actor")?,
                    operation: row.try_get("operation")?,
                    target: row.try_get("target")?,
                    outcome: row.try_get("outcome")?,
                    detail: row.try_get("detail")?,
                    count: row.try_get("count")?,
                })
            })
            .collect()
    }

    /// Drops audit records older than `before_ms`, and the oldest beyond the newest `keep`;
    /// returns how many. Refused connections write a record each, so the trail must not grow
    /// without bound.
    pub async fn prune_audit(&self, before_ms: i64, keep: i64) -> Result<u64> {
        let old = sqlx::query("DELETE FROM audit WHERE at_ms < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?
            .rows_affected();
        // The time of the keep-th newest record; nothing when there are fewer (NULL).
        let over = sqlx::query(
            "DELETE FROM audit WHERE at_ms < (
                SELECT at_ms FROM audit ORDER BY at_ms DESC LIMIT 1 OFFSET $1)",
        )
        .bind(keep - 1)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(old + over)
    }
}
