//! The telemetry log: every device-to-cloud message, numbered, in arrival order.

use sqlx::Row;

use crate::telemetry_segments::{self as segments, Segment};
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
const FIELDS: usize = 7;
/// Rows one telemetry insert takes at most (7 x 512 parameters, under the limits of SQLite and
/// PostgreSQL).
pub const TELEMETRY_ROWS: usize = 512;

/// The key a device's newest message is kept under in `telemetry_heads` (and in the writer's
/// memory): FNV-1a of its id, 64 bits. Two devices that share a hash share a chain; a read
/// keeps only its own device's messages, so that costs time, never a wrong answer.
pub fn device_hash(device_id: &str) -> i64 {
    crate::fnv1a(device_id.as_bytes()) as i64
}

/// A walk back along one device's chain ([`Store::telemetry_chain`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainWalk {
    /// The device's messages found, oldest first.
    pub mine: Vec<i64>,
    /// Whether the walk reached the end: a message with no earlier one, one at or below the
    /// walk's `after`, or one retention deleted. When false it stopped at its limit of hops.
    pub ended: bool,
    /// The oldest message the walk reached.
    pub oldest: Option<i64>,
}

/// Where the per-device chains stand ([`Store::telemetry_chain_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    /// Chains are complete for messages numbered above this; below it a device's messages
    /// are found by scanning (`i64::MAX`: chains are off).
    pub known_from: i64,
    /// `telemetry_heads` holds every device's newest message numbered at most this.
    pub heads_upto: i64,
}

impl Store {
    /// The highest sequence number stored, or taken by a message since dropped (0 for a log
    /// that never held one): numbering goes on above it.
    pub async fn last_telemetry_seq(&self) -> Result<i64> {
        self.with_segments(|list| async move {
            let newest = list.last().expect("segments");
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT MAX(seq) AS s FROM {}",
                segments::table(newest.id)
            )))
            .fetch_one(self.pool())
            .await?;
            let last: Option<i64> = row.try_get("s")?;
            // A new segment starts just above the last number of the one before it.
            Ok(last.unwrap_or(newest.first_seq - 1).max(0))
        })
        .await
    }

    /// Appends messages in one transaction: all of them are durable when this returns, or
    /// none. A power-of-two count up to [`TELEMETRY_ROWS`] is one statement, committed on its
    /// own (one round trip to the database's thread); the telemetry writer sends such batches.
    pub async fn append_telemetry(&self, records: &[TelemetryRecord]) -> Result<()> {
        self.append_telemetry_linked(records, &[]).await
    }

    /// [`Store::append_telemetry`], each message with the number of its device's previous one
    /// (`prev[i]` for `records[i]`; missing or None: none known). The messages go into the
    /// newest segment.
    pub async fn append_telemetry_linked(
        &self,
        records: &[TelemetryRecord],
        prev: &[Option<i64>],
    ) -> Result<()> {
        let list = self.segments().await?;
        let newest = *list.last().expect("segments");
        match self.append_into(newest.id, records, prev).await {
            // Another node started a newer segment (PostgreSQL without NATS), or this copy of
            // the list is out of date: write into the newest there is, when the numbers
            // belong there; otherwise the writer numbers the batch again, as for numbers
            // another node took.
            Err(e) if segments::is_past_segment_end(&e) || segments::is_missing_table(&e) => {
                let list = self.reload_segments().await?;
                let newest = *list.last().expect("segments");
                if records.first().is_some_and(|r| r.seq < newest.first_seq) {
                    return Err(crate::StoreError::NumbersTaken);
                }
                self.append_into(newest.id, records, prev).await
            }
            other => other,
        }
    }

    async fn append_into(
        &self,
        segment: i64,
        records: &[TelemetryRecord],
        prev: &[Option<i64>],
    ) -> Result<()> {
        if records.len().is_power_of_two() && records.len() <= TELEMETRY_ROWS {
            return self
                .insert_telemetry(segment, records, prev, self.pool())
                .await;
        }
        let mut tx = self.pool().begin().await?;
        let mut at = 0;
        for chunk in crate::pow2_chunks(records, TELEMETRY_ROWS) {
            let links = prev.get(at..).unwrap_or_default();
            self.insert_telemetry(segment, chunk, links, &mut *tx)
                .await?;
            at += chunk.len();
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_telemetry<'e, E>(
        &self,
        segment: i64,
        chunk: &[TelemetryRecord],
        prev: &[Option<i64>],
        on: E,
    ) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let rows = chunk.len();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(
            self.insert_telemetry_sql(segment, rows),
        ));
        for (i, r) in chunk.iter().enumerate() {
            q = q
                .bind(r.seq)
                .bind(r.device_id.as_str())
                .bind(r.module_id.as_deref())
                .bind(r.enqueued_ms)
                .bind(r.properties.as_str())
                .bind(r.body.as_slice())
                .bind(prev.get(i).copied().flatten());
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
    fn insert_telemetry_sql(&self, segment: i64, rows: usize) -> String {
        // On SQLite, OR IGNORE means no row of the statement can abort it, so SQLite keeps no
        // statement journal (a copy of every page the statement changes, spilled to a
        // temporary file for large inserts); the caller checks that every row was written.
        let mut sql = String::from(match self.backend {
            crate::Backend::Sqlite => "INSERT OR IGNORE",
            crate::Backend::Postgres => "INSERT",
        });
        sql.push_str(" INTO ");
        sql.push_str(&segments::table(segment));
        sql.push_str(
            " (seq, device_id, module_id, enqueued_ms, properties, body, prev_seq) VALUES ",
        );
        self.push_values(&mut sql, rows, FIELDS);
        sql
    }

    /// Messages with a sequence number above `after`, oldest first, optionally of one device.
    /// The log has no index by device: a read for one device scans from `after` until it has
    /// `limit` messages or reaches the end. Reads run on the read-only connections (SQLite), so
    /// a long scan never holds up the writers.
    ///
    /// The page comes back as one row, a JSON array the database builds (bodies in hex), and
    /// stops early once it holds [`PAGE_BYTES`] of bodies: sqlx hands every row of a result
    /// from the database's thread to the caller's task on its own, which cost more than
    /// everything else an Event Hubs reader does with a message.
    pub async fn telemetry_after(
        &self,
        after: i64,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TelemetryRecord>> {
        self.telemetry_page(Rows::After { after, upto: None }, device, limit)
            .await
    }

    /// [`Store::telemetry_after`] that stops at `upto` (the last number it looks at).
    pub async fn telemetry_between(
        &self,
        after: i64,
        upto: i64,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TelemetryRecord>> {
        self.telemetry_page(
            Rows::After {
                after,
                upto: Some(upto),
            },
            device,
            limit,
        )
        .await
    }

    /// The messages numbered `seqs` (of `device`, when given), oldest first, with the page's
    /// byte limit of [`Store::telemetry_after`].
    pub async fn telemetry_at(
        &self,
        seqs: &[i64],
        device: Option<&str>,
    ) -> Result<Vec<TelemetryRecord>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        self.telemetry_page(Rows::At(seqs), device, seqs.len() as i64)
            .await
    }

    async fn telemetry_page(
        &self,
        rows: Rows<'_>,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TelemetryRecord>> {
        self.with_segments(|list| self.page_in(list, rows, device, limit))
            .await
    }

    /// A page read segment by segment, oldest first, until it holds `limit` messages or
    /// [`PAGE_BYTES`] of bodies.
    async fn page_in(
        &self,
        mut list: std::sync::Arc<Vec<Segment>>,
        rows: Rows<'_>,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TelemetryRecord>> {
        let (low, high) = match rows {
            Rows::After { after, upto } => (after.saturating_add(1), upto.unwrap_or(i64::MAX)),
            Rows::At(seqs) => (
                seqs.iter().copied().min().unwrap_or(0),
                seqs.iter().copied().max().unwrap_or(0),
            ),
        };
        let mut records: Vec<TelemetryRecord> = Vec::new();
        let mut bytes = 0i64;
        let mut i = segments::segment_of(&list, low);
        loop {
            if let Some(segment) = list.get(i) {
                if segment.first_seq > high {
                    break;
                }
                if segments::segment_end(&list, i) >= low {
                    // Reads after a number go on from the last message found: a segment read
                    // again (see below) gives only what it gained.
                    let part = match rows {
                        Rows::After { after, upto } => Rows::After {
                            after: records.last().map_or(after, |r| r.seq.max(after)),
                            upto,
                        },
                        at => at,
                    };
                    let want = limit - records.len() as i64;
                    let found = self
                        .segment_page(segment.id, part, device, want, PAGE_BYTES - bytes)
                        .await?;
                    bytes += found.iter().map(|r| r.body.len() as i64).sum::<i64>();
                    records.extend(found);
                    if records.len() as i64 >= limit || bytes >= PAGE_BYTES {
                        break;
                    }
                }
                i += 1;
                continue;
            }
            // The end of the list: when the writer has started a segment since it was read, the
            // newest segment read took messages after it was read and the new one holds the
            // rest. Read both.
            if matches!(rows, Rows::At(_)) {
                break;
            }
            let fresh = if self.segments_owned() {
                self.segments().await?
            } else {
                self.reload_segments().await?
            };
            let seen = list.last().map_or(i64::MIN, |s| s.id);
            if fresh.last().map(|s| s.id) == Some(seen) {
                break;
            }
            let Some(at) = fresh.iter().position(|s| s.id >= seen) else {
                break;
            };
            i = at;
            list = fresh;
        }
        Ok(records)
    }

    /// One segment's part of a page: at most `limit` messages, and no more once `budget`
    /// bytes of bodies are in (at least one message).
    async fn segment_page(
        &self,
        segment: i64,
        rows: Rows<'_>,
        device: Option<&str>,
        limit: i64,
        budget: i64,
    ) -> Result<Vec<TelemetryRecord>> {
        let (aggregate, row, hex) = match self.backend {
            crate::Backend::Sqlite => ("json_group_array", "json_array", "hex(body)"),
            crate::Backend::Postgres => ("json_agg", "json_build_array", "encode(body, 'hex')"),
        };
        let mut n = 0;
        let mut next = || {
            n += 1;
            self.placeholder(n)
        };
        let which = match rows {
            Rows::After { upto: None, .. } => format!("seq > {}", next()),
            Rows::After { upto: Some(_), .. } => format!("seq > {} AND seq <= {}", next(), next()),
            // Numbers the log gave: integers, written out.
            Rows::At(seqs) => format!(
                "seq IN ({})",
                seqs.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let by_device = if device.is_some() {
            format!(" AND device_id = {}", next())
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT CAST({aggregate}({row}(seq, device_id, module_id, enqueued_ms, properties, {hex})) AS TEXT) AS page \
             FROM (SELECT *, SUM(length(body)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS upto \
                   FROM (SELECT seq, device_id, module_id, enqueued_ms, properties, body FROM {table} \
                         WHERE {which}{by_device} ORDER BY seq LIMIT {limit}) AS page_rows) AS sized \
             WHERE upto - length(body) < {bytes}",
            table = segments::table(segment),
            limit = next(),
            bytes = next(),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Rows::After { after, upto } = rows {
            q = q.bind(after);
            if let Some(upto) = upto {
                q = q.bind(upto);
            }
        }
        if let Some(d) = device {
            q = q.bind(d.to_string());
        }
        let row = q
            .bind(limit)
            .bind(budget.max(1))
            .fetch_one(self.reader())
            .await?;
        let page: Option<String> = row.try_get("page")?;
        let Some(page) = page else {
            return Ok(Vec::new());
        };
        type Row = (i64, String, Option<String>, i64, String, String);
        let rows: Vec<Row> = serde_json::from_str(&page)
            .map_err(|e| crate::StoreError::Corrupt(format!("a telemetry page: {e}")))?;
        let mut records = rows
            .into_iter()
            .map(
                |(seq, device_id, module_id, enqueued_ms, properties, body)| {
                    Ok(TelemetryRecord {
                        seq,
                        device_id,
                        module_id,
                        enqueued_ms,
                        properties,
                        body: from_hex(&body).ok_or_else(|| {
                            crate::StoreError::Corrupt(format!("the body of telemetry {seq}"))
                        })?,
                    })
                },
            )
            .collect::<Result<Vec<_>>>()?;
        // The aggregate's order is the database's; the log's is by number.
        records.sort_unstable_by_key(|r| r.seq);
        Ok(records)
    }
}

/// Which messages a page of the log is read from.
#[derive(Debug, Clone, Copy)]
enum Rows<'a> {
    /// Numbered above `after` (and at most `upto`).
    After { after: i64, upto: Option<i64> },
    /// These numbers.
    At(&'a [i64]),
}

impl Store {
    /// Walks one device's chain back from `head` (its newest message, or a later one of
    /// another device sharing its hash): at most `hops` messages, down to the first one
    /// numbered at or below `after`. One statement per segment the chain crosses: a recursive
    /// walk of primary-key lookups.
    pub async fn telemetry_chain(
        &self,
        head: i64,
        device: &str,
        after: i64,
        hops: i64,
    ) -> Result<ChainWalk> {
        self.with_segments(|list| self.chain_in(list, head, device, after, hops))
            .await
    }

    async fn chain_in(
        &self,
        list: std::sync::Arc<Vec<Segment>>,
        head: i64,
        device: &str,
        after: i64,
        hops: i64,
    ) -> Result<ChainWalk> {
        let mut walk = ChainWalk::default();
        let (mut from, mut left) = (head, hops);
        loop {
            let i = segments::segment_of(&list, from);
            // A number below the oldest segment was dropped with its segment.
            if from <= after || list.get(i).is_none_or(|s| s.first_seq > from) {
                walk.ended = true;
                break;
            }
            let (links, last) = self
                .segment_chain(list[i].id, from, device, after, left)
                .await?;
            walk.mine.extend(links);
            let Some((oldest, prev, n)) = last else {
                // `from` is not there (retention deleted it): the walk ends.
                walk.ended = true;
                break;
            };
            walk.oldest = Some(oldest);
            left -= n;
            match prev {
                // The chain goes on in an older segment.
                Some(p) if p > after && p < list[i].first_seq && left > 0 => from = p,
                // Stopped at its limit of hops.
                Some(p) if p > after && left == 0 => break,
                // At or below `after`, none, or the step below was deleted from its segment.
                _ => {
                    walk.ended = true;
                    break;
                }
            }
        }
        walk.mine.sort_unstable();
        Ok(walk)
    }

    /// The walk within one segment: the device's messages found, and the oldest step (its
    /// number, the number it points to, the steps taken).
    async fn segment_chain(
        &self,
        segment: i64,
        head: i64,
        device: &str,
        after: i64,
        hops: i64,
    ) -> Result<(Vec<i64>, Option<(i64, Option<i64>, i64)>)> {
        let (aggregate, row) = match self.backend {
            crate::Backend::Sqlite => ("json_group_array", "json_array"),
            crate::Backend::Postgres => ("json_agg", "json_build_array"),
        };
        let p = |n| self.placeholder(n);
        let sql = format!(
            "WITH RECURSIVE chain(seq, prev, mine, n) AS ( \
                 SELECT seq, prev_seq, CASE WHEN device_id = {p1} THEN 1 ELSE 0 END, 1 \
                 FROM {table} WHERE seq = {p2} AND seq > {p3} \
                 UNION ALL \
                 SELECT t.seq, t.prev_seq, CASE WHEN t.device_id = {p4} THEN 1 ELSE 0 END, c.n + 1 \
                 FROM chain c JOIN {table} t ON t.seq = c.prev \
                 WHERE c.prev > {p5} AND c.n < {p6}) \
             SELECT CAST({aggregate}({row}(seq, prev, mine, n)) AS TEXT) AS walk FROM chain",
            table = segments::table(segment),
            p1 = p(1),
            p2 = p(2),
            p3 = p(3),
            p4 = p(4),
            p5 = p(5),
            p6 = p(6),
        );
        let walk: Option<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device.to_string())
            .bind(head)
            .bind(after)
            .bind(device.to_string())
            .bind(after)
            .bind(hops)
            .fetch_one(self.reader())
            .await?
            .try_get("walk")?;
        let Some(walk) = walk else {
            return Ok((Vec::new(), None));
        };
        let links: Vec<(i64, Option<i64>, i64, i64)> = serde_json::from_str(&walk)
            .map_err(|e| crate::StoreError::Corrupt(format!("a telemetry chain: {e}")))?;
        // The last step of the walk is the oldest message it reached.
        let last = links.iter().max_by_key(|l| l.3).map(|l| (l.0, l.1, l.3));
        let mine = links.iter().filter(|l| l.2 == 1).map(|l| l.0).collect();
        Ok((mine, last))
    }

    /// Where the chains stand.
    pub async fn telemetry_chain_state(&self) -> Result<ChainState> {
        let row = sqlx::query("SELECT known_from, heads_upto FROM telemetry_chain")
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => ChainState {
                known_from: r.try_get("known_from")?,
                heads_upto: r.try_get("heads_upto")?,
            },
            None => ChainState {
                known_from: i64::MAX,
                heads_upto: 0,
            },
        })
    }

    /// Every device's newest message as last saved: (device hash, number).
    pub async fn telemetry_heads(&self) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query("SELECT device_hash, seq FROM telemetry_heads")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("device_hash")?, r.try_get("seq")?)))
            .collect()
    }

    /// Each device's newest message numbered above `after` (what the log gained since the
    /// heads were last saved): (device id, number).
    pub async fn telemetry_newest_after(&self, after: i64) -> Result<Vec<(String, i64)>> {
        self.with_segments(|list| async move {
            let mut newest = std::collections::HashMap::<String, i64>::new();
            for (i, segment) in list.iter().enumerate() {
                if segments::segment_end(&list, i) <= after {
                    continue;
                }
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT device_id, MAX(seq) AS seq FROM {} WHERE seq > $1 GROUP BY device_id",
                    segments::table(segment.id)
                )))
                .bind(after)
                .fetch_all(self.pool())
                .await?;
                for r in &rows {
                    let (device, seq): (String, i64) = (r.try_get("device_id")?, r.try_get("seq")?);
                    let kept = newest.entry(device).or_insert(seq);
                    *kept = (*kept).max(seq);
                }
            }
            Ok(newest.into_iter().collect())
        })
        .await
    }

    /// Saves devices' newest messages, and that the saved map is complete up to `upto`.
    pub async fn save_telemetry_heads(&self, heads: &[(i64, i64)], upto: i64) -> Result<()> {
        const ROWS: usize = 1000;
        let mut tx = self.pool().begin().await?;
        for chunk in heads.chunks(ROWS) {
            let mut sql = String::from("INSERT INTO telemetry_heads (device_hash, seq) VALUES ");
            self.push_values(&mut sql, chunk.len(), 2);
            sql.push_str(" ON CONFLICT (device_hash) DO UPDATE SET seq = excluded.seq");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (hash, seq) in chunk {
                q = q.bind(*hash).bind(*seq);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE telemetry_chain SET heads_upto = $1")
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets where the chains stand (a migration's state, for tests and repairs).
    pub async fn set_telemetry_chain_state(&self, known_from: i64, heads_upto: i64) -> Result<()> {
        sqlx::query("UPDATE telemetry_chain SET known_from = $1, heads_upto = $2")
            .bind(known_from)
            .bind(heads_upto)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// How many stored messages point to an earlier message of their device.
    pub async fn telemetry_links(&self) -> Result<i64> {
        self.with_segments(|list| async move {
            let mut links = 0;
            for segment in list.iter() {
                let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE prev_seq IS NOT NULL",
                    segments::table(segment.id)
                )))
                .fetch_one(self.reader())
                .await?
                .try_get("n")?;
                links += n;
            }
            Ok(links)
        })
        .await
    }

    /// Chains are complete only above `known_from` from now on (`i64::MAX`: off).
    pub async fn set_telemetry_known_from(&self, known_from: i64) -> Result<()> {
        sqlx::query("UPDATE telemetry_chain SET known_from = $1")
            .bind(known_from)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

/// Bodies one page of [`Store::telemetry_after`] holds at most (it holds at least one
/// message, whatever its size).
pub const PAGE_BYTES: i64 = 4 << 20;

/// Bytes from hex text (either case).
fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
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
        self.with_segments(|list| async move {
            let mut first_seq = None;
            for segment in list.iter() {
                let lo: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT MIN(seq) AS lo FROM {}",
                    segments::table(segment.id)
                )))
                .fetch_one(self.reader())
                .await?
                .try_get("lo")?;
                if lo.is_some() {
                    first_seq = lo;
                    break;
                }
            }
            let mut last = None;
            for segment in list.iter().rev() {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT seq, enqueued_ms FROM {} ORDER BY seq DESC LIMIT 1",
                    segments::table(segment.id)
                )))
                .fetch_optional(self.reader())
                .await?;
                if let Some(r) = row {
                    last = Some((r.try_get("seq")?, r.try_get("enqueued_ms")?));
                    break;
                }
            }
            Ok(TelemetryBounds { first_seq, last })
        })
        .await
    }

    /// The sequence number just before the first message enqueued after `ms` (at or after it
    /// when `inclusive`): where a reader that starts from that time begins. Messages are
    /// numbered in the order the writer commits them, so their enqueued times rise with their
    /// numbers (within the writer's batching).
    pub async fn telemetry_seq_before_time(&self, ms: i64, inclusive: bool) -> Result<i64> {
        let first = self
            .with_segments(|list| async move {
                let op = if inclusive { ">=" } else { ">" };
                for segment in list.iter() {
                    let table = segments::table(segment.id);
                    // A segment whose newest message is older is passed over without a scan.
                    let newest: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT enqueued_ms FROM {table} ORDER BY seq DESC LIMIT 1"
                    )))
                    .fetch_optional(self.reader())
                    .await?
                    .map(|r| r.try_get("enqueued_ms"))
                    .transpose()?;
                    let late = newest.is_some_and(|t| if inclusive { t >= ms } else { t > ms });
                    if !late {
                        continue;
                    }
                    let first: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT MIN(seq) AS s FROM {table} WHERE enqueued_ms {op} $1"
                    )))
                    .bind(ms)
                    .fetch_one(self.reader())
                    .await?
                    .try_get("s")?;
                    if first.is_some() {
                        return Ok(first);
                    }
                }
                Ok(None)
            })
            .await?;
        match first {
            Some(s) => Ok(s - 1),
            // Nothing that late: the reader starts after the newest message.
            None => self.last_telemetry_seq().await,
        }
    }
}

/// What one stored message counts for against the log's size cap: its body, its properties,
/// its device id and 24 bytes for the rest of its row (see [`Store::telemetry_size`]).
pub fn telemetry_bytes(record: &TelemetryRecord) -> i64 {
    (record.body.len()
        + record.properties.len()
        + record.device_id.len()
        + record.module_id.as_ref().map_or(0, String::len)
        + 24) as i64
}

/// [`telemetry_bytes`] in SQL.
pub(crate) const ROW_BYTES: &str = "(LENGTH(body) + LENGTH(properties) + LENGTH(device_id) \
    + COALESCE(LENGTH(module_id), 0) + 24)";

impl Store {
    /// The log's size as the cap counts it ([`telemetry_bytes`] of every message). Reads the
    /// newest segment whole and the sealed ones once (their counts are kept): once at start,
    /// then the writer keeps count.
    pub async fn telemetry_size(&self) -> Result<i64> {
        Ok(self
            .telemetry_segments(true)
            .await?
            .iter()
            .filter_map(|s| s.counted)
            .map(|(_, bytes)| bytes)
            .sum())
    }

    /// Where to cut the front of the log to free at least `excess` bytes: the first sequence
    /// number to keep and the bytes before it; None for an empty log. Walks the messages from
    /// the front (for a segment larger than the cut: see [`Store::drop_telemetry_before`]).
    pub async fn telemetry_cut(&self, excess: i64) -> Result<Option<(i64, i64)>> {
        const CHUNK: i64 = 4096;
        self.with_segments(|list| async move {
            let (mut after, mut freed) = (i64::MIN, 0i64);
            for segment in list.iter() {
                loop {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT seq, {ROW_BYTES} AS n FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
                        segments::table(segment.id)
                    )))
                    .bind(after)
                    .bind(CHUNK)
                    .fetch_all(self.reader())
                    .await?;
                    for r in &rows {
                        let seq: i64 = r.try_get("seq")?;
                        let n: i64 = r.try_get("n")?;
                        freed += n;
                        after = seq;
                        if freed >= excess {
                            return Ok(Some((seq + 1, freed)));
                        }
                    }
                    if (rows.len() as i64) < CHUNK {
                        break;
                    }
                }
            }
            Ok((after != i64::MIN).then_some((after + 1, freed)))
        })
        .await
    }

    /// Deletes the messages numbered below `end` (the size cap's cut); returns how many.
    pub async fn drop_telemetry_before(&self, end: i64) -> Result<u64> {
        self.delete_telemetry_before(end).await
    }

    /// Retention: deletes messages enqueued before `before_ms`, then the oldest beyond the
    /// newest `keep`. Returns how many were deleted, and their bytes ([`telemetry_bytes`]).
    pub async fn prune_telemetry(&self, before_ms: i64, keep: i64) -> Result<(u64, i64)> {
        // The log is in arrival order: the old messages are the run before the first one
        // enqueued at or after `before_ms` (a filter on the enqueued time alone would scan
        // the whole log, holding up the writer for seconds on a large one).
        let young = self.telemetry_seq_before_time(before_ms, true).await? + 1;
        let kept = self.last_telemetry_seq().await? - keep + 1;
        let end = young.max(kept);
        let bytes = self.telemetry_bytes_before(end).await?;
        Ok((self.delete_telemetry_before(end).await?, bytes))
    }

    /// The bytes ([`telemetry_bytes`]) of the messages numbered below `end`.
    async fn telemetry_bytes_before(&self, end: i64) -> Result<i64> {
        let list = self.telemetry_segments(false).await?;
        let mut bytes = 0;
        for (i, segment) in list.iter().enumerate() {
            if segment.first_seq >= end {
                break;
            }
            match segment.counted {
                Some((_, b)) if segments::segment_end(&list, i) < end => bytes += b,
                _ => {
                    let b: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT CAST(COALESCE(SUM({ROW_BYTES}), 0) AS BIGINT) AS b FROM {} WHERE seq < $1",
                        segments::table(segment.id)
                    )))
                    .bind(end)
                    .fetch_one(self.reader())
                    .await?
                    .try_get("b")?;
                    bytes += b;
                }
            }
        }
        Ok(bytes)
    }

    /// Deletes the messages numbered below `end`: segments that end below it are dropped
    /// whole; in the one it falls in, rows are deleted a slice at a time, so that the writer
    /// waits for no more than one slice.
    async fn delete_telemetry_before(&self, end: i64) -> Result<u64> {
        const SLICE: i64 = 20_000;
        let list = self.telemetry_segments(false).await?;
        let mut deleted = 0;
        for (i, segment) in list.iter().enumerate() {
            if segment.first_seq >= end {
                break;
            }
            let newest = i + 1 == list.len();
            if let Some((messages, _)) = segment.counted
                && !newest
                && segments::segment_end(&list, i) < end
            {
                if self.drop_telemetry_segment(segment.id).await? {
                    deleted += messages as u64;
                }
                continue;
            }
            let table = segments::table(segment.id);
            loop {
                let first: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT MIN(seq) AS first FROM {table}"
                )))
                .fetch_one(self.pool())
                .await?
                .try_get("first")?;
                let Some(first) = first.filter(|f| *f < end) else {
                    break;
                };
                deleted += sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE seq < $1"
                )))
                .bind(end.min(first.saturating_add(SLICE)))
                .execute(self.pool())
                .await?
                .rows_affected();
            }
        }
        Ok(deleted)
    }
}
