//! The telemetry log: every device-to-cloud message, numbered, in arrival order.

use sqlx::Row;

use crate::{Result, Store};

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryRecord {
    /// Assigned by the writer, increasing.
    pub seq: i64,
    pub device_id: String,
    pub module_id: Option<String>,
    pub enqueued_ms: i64,
    /// JSON: `{"system": {...}, "application": {...}}`.
    pub properties: String,
    pub body: Vec<u8>,
}

/// Columns per row of the multi-row insert.
const FIELDS: usize = 6;
/// Rows one telemetry insert takes at most (6 x 512 parameters, under the limits of SQLite and
/// PostgreSQL).
pub const TELEMETRY_ROWS: usize = 512;

impl Store {
    /// The highest sequence number stored (0 when empty).
    pub async fn last_telemetry_seq(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM telemetry")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("s")?)
    }

    /// Appends messages in one transaction: all of them are durable when this returns, or
    /// none. A power-of-two count up to [`TELEMETRY_ROWS`] is one statement, committed on its
    /// own (one round trip to the database's thread); the telemetry writer sends such batches.
    pub async fn append_telemetry(&self, records: &[TelemetryRecord]) -> Result<()> {
        if records.len().is_power_of_two() && records.len() <= TELEMETRY_ROWS {
            return self.insert_telemetry(records, self.pool()).await;
        }
        let mut tx = self.pool().begin().await?;
        for chunk in crate::pow2_chunks(records, TELEMETRY_ROWS) {
            self.insert_telemetry(chunk, &mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_telemetry<'e, E>(&self, chunk: &[TelemetryRecord], on: E) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let rows = chunk.len();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.insert_telemetry_sql(rows)));
        for r in chunk {
            q = q
                .bind(r.seq)
                .bind(r.device_id.as_str())
                .bind(r.module_id.as_deref())
                .bind(r.enqueued_ms)
                .bind(r.properties.as_str())
                .bind(r.body.as_slice());
        }
        let written = q.execute(on).await?.rows_affected();
        if written != rows as u64 {
            // Only a duplicate sequence number could be skipped (see the SQL); it would mean a
            // second writer, and a message acknowledged but not stored.
            return Err(crate::StoreError::Corrupt(format!(
                "telemetry insert wrote {written} of {rows} rows (a sequence number was taken twice?)"
            )));
        }
        Ok(())
    }

    /// `INSERT ... VALUES (...), (...)` for `rows` rows.
    fn insert_telemetry_sql(&self, rows: usize) -> String {
        // On SQLite, OR IGNORE means no row of the statement can abort it, so SQLite keeps no
        // statement journal (a copy of every page the statement changes, spilled to a
        // temporary file for large inserts); the caller checks that every row was written.
        let mut sql = String::from(match self.backend {
            crate::Backend::Sqlite => "INSERT OR IGNORE",
            crate::Backend::Postgres => "INSERT",
        });
        sql.push_str(
            " INTO telemetry (seq, device_id, module_id, enqueued_ms, properties, body) VALUES ",
        );
        self.push_values(&mut sql, rows, FIELDS);
        sql
    }

    /// Messages with a sequence number above `after`, oldest first, optionally of one device.
    /// The log has no index by device: a read for one device scans from `after` until it has
    /// `limit` messages or reaches the end. Reads run on the read-only connections (SQLite), so
    /// a long scan never holds up the writers.
    pub async fn telemetry_after(
        &self,
        after: i64,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TelemetryRecord>> {
        let rows = match device {
            Some(d) => sqlx::query(
                "SELECT * FROM telemetry WHERE seq > $1 AND device_id = $2 ORDER BY seq LIMIT $3",
            )
            .bind(after)
            .bind(d.to_string())
            .bind(limit)
            .fetch_all(self.reader())
            .await?,
            None => {
                sqlx::query("SELECT * FROM telemetry WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(TelemetryRecord {
                    seq: r.try_get("seq")?,
                    device_id: r.try_get("device_id")?,
                    module_id: r.try_get("module_id")?,
                    enqueued_ms: r.try_get("enqueued_ms")?,
                    properties: r.try_get("properties")?,
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }
}

/// What the log holds, for the Event Hubs-compatible endpoint's partition information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TelemetryBounds {
    /// The oldest message kept (retention deletes from the front).
    pub first_seq: Option<i64>,
    /// The newest message and when it was enqueued (ms).
    pub last: Option<(i64, i64)>,
}

impl Store {
    /// The oldest and newest messages kept.
    pub async fn telemetry_bounds(&self) -> Result<TelemetryBounds> {
        let row = sqlx::query("SELECT MIN(seq) AS lo, MAX(seq) AS hi FROM telemetry")
            .fetch_one(self.reader())
            .await?;
        let first_seq: Option<i64> = row.try_get("lo")?;
        let hi: Option<i64> = row.try_get("hi")?;
        let last = match hi {
            Some(seq) => {
                let row = sqlx::query("SELECT enqueued_ms FROM telemetry WHERE seq = $1")
                    .bind(seq)
                    .fetch_optional(self.reader())
                    .await?;
                match row {
                    Some(r) => Some((seq, r.try_get("enqueued_ms")?)),
                    None => None,
                }
            }
            None => None,
        };
        Ok(TelemetryBounds { first_seq, last })
    }

    /// The sequence number just before the first message enqueued after `ms` (at or after it
    /// when `inclusive`): where a reader that starts from that time begins. Messages are
    /// numbered in the order the writer commits them, so their enqueued times rise with their
    /// numbers (within the writer's batching).
    pub async fn telemetry_seq_before_time(&self, ms: i64, inclusive: bool) -> Result<i64> {
        let sql = if inclusive {
            "SELECT MIN(seq) AS s FROM telemetry WHERE enqueued_ms >= $1"
        } else {
            "SELECT MIN(seq) AS s FROM telemetry WHERE enqueued_ms > $1"
        };
        let row = sqlx::query(sql).bind(ms).fetch_one(self.reader()).await?;
        let first: Option<i64> = row.try_get("s")?;
        match first {
            Some(s) => Ok(s - 1),
            // Nothing that late: the reader starts after the newest message.
            None => self.last_telemetry_seq().await,
        }
    }
}

impl Store {
    /// Retention: deletes messages enqueued before `before_ms`, then the oldest beyond the
    /// newest `keep`. Returns how many were deleted.
    pub async fn prune_telemetry(&self, before_ms: i64, keep: i64) -> Result<u64> {
        let old = sqlx::query("DELETE FROM telemetry WHERE enqueued_ms < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?
            .rows_affected();
        let over = sqlx::query(
            "DELETE FROM telemetry WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM telemetry) - $1",
        )
        .bind(keep)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(old + over)
    }
}
