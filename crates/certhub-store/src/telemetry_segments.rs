//! The telemetry log in segments: each segment is a table of its own (`telemetry_seg_N`)
//! holding the messages numbered from its `first_seq` up to the next segment's. The writer
//! fills the newest segment and starts another once it has written a set size into it; the size
//! cap drops the oldest segments whole (one `DROP TABLE`, no row deleted one by one), so the
//! space on disk is bounded by the cap plus about one segment and the cuts cost the writer
//! almost nothing. The list is the `telemetry_segments` table.

use std::sync::{Arc, RwLock};

use sqlx::Row;

use crate::{Result, Store};

/// One segment of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub id: i64,
    /// The lowest number it may hold; the next segment starts above its last.
    pub first_seq: i64,
    /// Its messages and their bytes ([`crate::telemetry_bytes`]), counted once it is sealed
    /// (a newer segment exists) and first asked for; None until then.
    pub counted: Option<(i64, i64)>,
}

/// The columns of a segment (`{SEQ_KEY}` and `{BLOB}` as in the schema).
const COLUMNS: &str = "(
    seq {SEQ_KEY},
    device_id TEXT NOT NULL,
    module_id TEXT,
    enqueued_ms BIGINT NOT NULL,
    properties TEXT NOT NULL,
    body {BLOB} NOT NULL,
    prev_seq BIGINT
)";

/// The table of segment `id`.
pub(crate) fn table(id: i64) -> String {
    format!("telemetry_seg_{id}")
}

/// What this process knows of the segments.
#[derive(Debug, Default)]
pub(crate) struct SegmentCache {
    /// The list, and the ticket of the read it came from.
    list: RwLock<(u64, Option<Arc<Vec<Segment>>>)>,
    /// Reads of the list are numbered as they start: a read that started later saw the
    /// database at least as late, so only a later read replaces the list (two reads racing
    /// a roll cannot leave the older list behind).
    tickets: std::sync::atomic::AtomicU64,
    /// Set by the process that writes the log on SQLite (one process per data directory):
    /// every change to the list goes through it, so its copy is always current. Elsewhere
    /// (another process, a PostgreSQL node) the list is read for every read of the log.
    owned: std::sync::atomic::AtomicBool,
}

impl Store {
    /// The segments, oldest first (never empty once the schema is migrated).
    pub(crate) async fn segments(&self) -> Result<Arc<Vec<Segment>>> {
        let cache = &self.segments;
        if cache.owned.load(std::sync::atomic::Ordering::Acquire)
            && let Some(list) = cache
                .list
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .clone()
        {
            return Ok(list);
        }
        self.reload_segments().await
    }

    /// Reads the segment list again.
    pub(crate) async fn reload_segments(&self) -> Result<Arc<Vec<Segment>>> {
        let ticket = self
            .segments
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let rows = sqlx::query(
            "SELECT id, first_seq, messages, bytes FROM telemetry_segments ORDER BY id",
        )
        .fetch_all(self.reader())
        .await?;
        let list = rows
            .iter()
            .map(|r| {
                let messages: Option<i64> = r.try_get("messages")?;
                let bytes: Option<i64> = r.try_get("bytes")?;
                Ok(Segment {
                    id: r.try_get("id")?,
                    first_seq: r.try_get("first_seq")?,
                    counted: messages.zip(bytes),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if list.is_empty() {
            return Err(crate::StoreError::Corrupt(
                "the telemetry log has no segment (telemetry_segments is empty)".into(),
            ));
        }
        let list = Arc::new(list);
        let mut kept = self
            .segments
            .list
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if ticket > kept.0 {
            *kept = (ticket, Some(list.clone()));
        }
        Ok(list)
    }

    /// This process is the log's only writer (the hub on SQLite): its copy of the segment
    /// list is kept current by its own changes and is not read again for each read.
    pub fn own_telemetry_segments(&self) {
        if self.backend == crate::Backend::Sqlite {
            self.segments
                .owned
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether this process's copy of the segment list is kept current by its own changes.
    pub(crate) fn segments_owned(&self) -> bool {
        self.segments
            .owned
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// `CREATE TABLE` of segment `id`.
    pub(crate) fn create_segment_sql(&self, id: i64) -> String {
        let (blob, seq_key) = match self.backend {
            crate::Backend::Sqlite => ("BLOB", "INTEGER PRIMARY KEY"),
            crate::Backend::Postgres => ("BYTEA", "BIGINT PRIMARY KEY"),
        };
        format!(
            "CREATE TABLE {} {}",
            table(id),
            COLUMNS
                .replace("{BLOB}", blob)
                .replace("{SEQ_KEY}", seq_key)
        )
    }

    /// Starts a new segment after the newest, unless the newest holds nothing. Returns the
    /// first number the new segment takes (every message stored so far is below it; the writer
    /// numbers on from there), or None when nothing was started. `counted`: the messages and
    /// bytes of the segment being sealed, when the caller wrote all of it (kept on SQLite,
    /// whose log has one writer; counted later otherwise).
    ///
    /// On PostgreSQL, nodes of a cluster without NATS write the same log: the newest segment
    /// is locked against inserts while its highest number is read, and a check then keeps
    /// any later insert into it below the new segment's first number (a node that has not
    /// seen the new segment yet gets a check violation, reads the list again and writes into
    /// the new one).
    pub async fn roll_telemetry_segment(&self, counted: Option<(i64, i64)>) -> Result<Option<i64>> {
        let mut tx = self.pool().begin().await?;
        let newest =
            sqlx::query("SELECT id, first_seq FROM telemetry_segments ORDER BY id DESC LIMIT 1")
                .fetch_one(&mut *tx)
                .await?;
        let (id, first): (i64, i64) = (newest.try_get("id")?, newest.try_get("first_seq")?);
        let name = table(id);
        if self.backend == crate::Backend::Postgres {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE"
            )))
            .execute(&mut *tx)
            .await?;
        }
        let last: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT MAX(seq) AS s FROM {name}"
        )))
        .fetch_one(&mut *tx)
        .await?
        .try_get("s")?;
        let Some(last) = last.filter(|l| *l >= first) else {
            return Ok(None);
        };
        let next = last + 1;
        if self.backend == crate::Backend::Postgres {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {name} ADD CONSTRAINT {name}_end CHECK (seq < {next}) NOT VALID"
            )))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(self.create_segment_sql(id + 1)))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO telemetry_segments (id, first_seq) VALUES ($1, $2)")
            .bind(id + 1)
            .bind(next)
            .execute(&mut *tx)
            .await?;
        if let Some((messages, bytes)) = counted.filter(|_| self.backend == crate::Backend::Sqlite)
        {
            sqlx::query("UPDATE telemetry_segments SET messages = $1, bytes = $2 WHERE id = $3")
                .bind(messages)
                .bind(bytes)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.reload_segments().await?;
        Ok(Some(next))
    }

    /// Drops segment `id` whole (never the newest). Returns whether it was there to drop.
    pub async fn drop_telemetry_segment(&self, id: i64) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let newest: i64 = sqlx::query("SELECT MAX(id) AS id FROM telemetry_segments")
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
        if id >= newest {
            return Err(crate::StoreError::Corrupt(format!(
                "telemetry segment {id} is the newest: it is written to and cannot be dropped"
            )));
        }
        let gone = sqlx::query("DELETE FROM telemetry_segments WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 1 {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {}", table(id))))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.reload_segments().await?;
        Ok(gone == 1)
    }

    /// The segments with what each holds: sealed segments are counted once (on the read-only
    /// connections) and the count kept; the newest, still written to, is counted only when
    /// `newest_too` (it is read whole).
    pub async fn telemetry_segments(&self, newest_too: bool) -> Result<Vec<Segment>> {
        let mut list = self.segments().await?.as_ref().clone();
        let newest = list.len() - 1;
        let mut recorded = false;
        for (i, segment) in list.iter_mut().enumerate() {
            if (i < newest && segment.counted.is_some()) || (i == newest && !newest_too) {
                continue;
            }
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) AS n, CAST(COALESCE(SUM({}), 0) AS BIGINT) AS b FROM {}",
                crate::telemetry::ROW_BYTES,
                table(segment.id)
            )))
            .fetch_one(self.reader())
            .await?;
            let counted = (row.try_get("n")?, row.try_get("b")?);
            segment.counted = Some(counted);
            if i < newest {
                sqlx::query(
                    "UPDATE telemetry_segments SET messages = $1, bytes = $2 WHERE id = $3",
                )
                .bind(counted.0)
                .bind(counted.1)
                .bind(segment.id)
                .execute(self.pool())
                .await?;
                recorded = true;
            }
        }
        if recorded {
            self.reload_segments().await?;
        }
        Ok(list)
    }

    /// Runs `read` against the segment list, and once more against a fresh copy if a segment
    /// it read was dropped meanwhile (by the size cap or retention).
    pub(crate) async fn with_segments<T, F, Fut>(&self, read: F) -> Result<T>
    where
        F: Fn(Arc<Vec<Segment>>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let list = self.segments().await?;
        match read(list).await {
            Err(e) if is_missing_table(&e) => read(self.reload_segments().await?).await,
            other => other,
        }
    }
}

/// Whether an error says a table does not exist (a segment dropped under a read).
pub(crate) fn is_missing_table(e: &crate::StoreError) -> bool {
    match e {
        crate::StoreError::Db(sqlx::Error::Database(d)) => {
            d.code().as_deref() == Some("42P01") || d.message().contains("no such table")
        }
        _ => false,
    }
}

/// Whether an insert into a segment was refused by its end check (PostgreSQL).
pub(crate) fn is_past_segment_end(e: &crate::StoreError) -> bool {
    matches!(e, crate::StoreError::Db(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23514"))
}

/// The last number segment `i` of `list` may hold (`i64::MAX` for the newest).
pub(crate) fn segment_end(list: &[Segment], i: usize) -> i64 {
    list.get(i + 1).map_or(i64::MAX, |next| next.first_seq - 1)
}

/// The index of the segment that holds number `seq` (the oldest when it is below them all).
pub(crate) fn segment_of(list: &[Segment], seq: i64) -> usize {
    list.partition_point(|s| s.first_seq <= seq)
        .saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: i64, first_seq: i64) -> Segment {
        Segment {
            id,
            first_seq,
            counted: None,
        }
    }

    #[test]
    fn a_number_belongs_to_the_segment_that_starts_at_or_below_it() {
        let list = [seg(3, 0), seg(4, 100), seg(5, 250)];
        assert_eq!(segment_of(&list, 1), 0);
        assert_eq!(segment_of(&list, 99), 0);
        assert_eq!(segment_of(&list, 100), 1);
        assert_eq!(segment_of(&list, 249), 1);
        assert_eq!(segment_of(&list, 250), 2);
        assert_eq!(segment_of(&list, i64::MAX), 2);
        assert_eq!(segment_of(&list[1..], 5), 0, "below them all: the oldest");
        assert_eq!(segment_end(&list, 0), 99);
        assert_eq!(segment_end(&list, 1), 249);
        assert_eq!(segment_end(&list, 2), i64::MAX);
    }
}
