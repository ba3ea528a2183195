//! The cloud-to-device queue: messages waiting for a device, in the order they were sent.
//! A message leaves the queue when the device acknowledges it (PUBACK), when it expires, when
//! it was delivered too often, or when the queue is purged. If the sender asked for feedback
//! (`ack`), the same transaction that removes the message writes a feedback record (Azure's
//! `Success`, `Expired`, `DeliveryCountExceeded`, `Purged`), which the service side receives
//! under a lock, then completes or abandons.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store};

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dRecord {
    /// Assigned by the store, increasing.
    pub id: i64,
    pub device_id: String,
    pub message_id: String,
    /// JSON: `{"system": {...}, "application": {...}}`.
    pub properties: String,
    pub body: Vec<u8>,
    pub enqueued_ms: i64,
    pub expiry_ms: i64,
    /// How often it was sent to the device without an acknowledgement.
    pub delivery_count: i64,
    /// Feedback asked for: `none`, `positive` (on success), `negative` (on failure) or `full`.
    pub ack: String,
}

/// Why a message left the queue, as the feedback's `statusCode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum C2dOutcome {
    /// The device acknowledged it.
    Success,
    /// Its time to live ran out.
    Expired,
    /// Delivered the maximum number of times without an acknowledgement.
    DeliveryCountExceeded,
    /// The queue was purged.
    Purged,
    /// The device rejected it (HTTPS `DELETE ...?reject`).
    Rejected,
}

impl C2dOutcome {
    /// The Azure status code.
    pub fn as_str(self) -> &'static str {
        match self {
            C2dOutcome::Success => "Success",
            C2dOutcome::Expired => "Expired",
            C2dOutcome::DeliveryCountExceeded => "DeliveryCountExceeded",
            C2dOutcome::Purged => "Purged",
            C2dOutcome::Rejected => "Rejected",
        }
    }

    /// The `ack` values that ask for feedback on this outcome, as SQL.
    fn acks(self) -> &'static str {
        match self {
            C2dOutcome::Success => "('positive', 'full')",
            _ => "('negative', 'full')",
        }
    }
}

/// One feedback record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackRecord {
    /// The id of the message it is about.
    pub id: i64,
    pub device_id: String,
    /// The device's generation id when the message left the queue.
    pub generation_id: String,
    /// The original message's messageId.
    pub message_id: String,
    /// The [`C2dOutcome`] status code.
    pub status: String,
    pub created_ms: i64,
}

/// What became of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored under this id.
    Stored(i64),
    /// The device already has `cap` messages pending.
    QueueFull,
    /// The device does not exist.
    NoDevice,
}

/// Which queued messages leave the queue.
#[derive(Debug, Clone, Copy)]
enum Leaving<'a> {
    /// One message of a device.
    One(&'a str, i64),
    /// Every message of a device.
    All(&'a str),
    /// A device's messages expired at the instant.
    ExpiredOf(&'a str, i64),
    /// Every device's messages expired at the instant.
    Expired(i64),
}

type AnyQuery = sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>;

impl Leaving<'_> {
    /// The condition over `c2d` columns named with `prefix`, its parameters numbered from
    /// `first` (bound by [`Leaving::bind`], after any the statement binds first).
    fn condition(&self, prefix: &str, first: usize) -> String {
        let (p, q) = (first, first + 1);
        match self {
            Leaving::One(..) => format!("{prefix}device_id = ${p} AND {prefix}id = ${q}"),
            Leaving::All(_) => format!("{prefix}device_id = ${p}"),
            Leaving::ExpiredOf(..) => {
                format!("{prefix}device_id = ${p} AND {prefix}expiry_ms <= ${q}")
            }
            Leaving::Expired(_) => format!("{prefix}expiry_ms <= ${p}"),
        }
    }

    fn bind(&self, query: AnyQuery) -> AnyQuery {
        match *self {
            Leaving::One(device, id) => query.bind(device.to_string()).bind(id),
            Leaving::All(device) => query.bind(device.to_string()),
            Leaving::ExpiredOf(device, now) => query.bind(device.to_string()).bind(now),
            Leaving::Expired(now) => query.bind(now),
        }
    }
}

fn record(r: &AnyRow) -> Result<C2dRecord> {
    Ok(C2dRecord {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        message_id: r.try_get("message_id")?,
        properties: r.try_get("properties")?,
        body: r.try_get("body")?,
        enqueued_ms: r.try_get("enqueued_ms")?,
        expiry_ms: r.try_get("expiry_ms")?,
        delivery_count: r.try_get("delivery_count")?,
        ack: r.try_get("ack")?,
    })
}

fn feedback(r: &AnyRow) -> Result<FeedbackRecord> {
    Ok(FeedbackRecord {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        generation_id: r.try_get("generation_id")?,
        message_id: r.try_get("message_id")?,
        status: r.try_get("status")?,
        created_ms: r.try_get("created_ms")?,
    })
}

impl Store {
    /// Keeps `devices.c2d_count` (Azure's `cloudToDeviceMessageCount`) equal to the queue.
    async fn recount(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, device: &str) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET c2d_count = (SELECT COUNT(*) FROM c2d WHERE device_id = $1)
             WHERE device_id = $1",
        )
        .bind(device.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Removes the messages `leaving` names, writing feedback first for those whose sender
    /// asked for it on `outcome`, in the caller's transaction; returns how many left.
    async fn leave(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        leaving: Leaving<'_>,
        outcome: C2dOutcome,
        now_ms: i64,
    ) -> Result<u64> {
        let sql = format!(
            "INSERT INTO c2d_feedback (id, device_id, generation_id, message_id, status,
                created_ms, lock_token, lock_until_ms)
             SELECT c.id, c.device_id, d.generation_id, c.message_id, $1, $2, NULL, 0
             FROM c2d c JOIN devices d ON d.device_id = c.device_id
             WHERE {} AND c.ack IN {}",
            leaving.condition("c.", 3),
            outcome.acks()
        );
        let insert = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(outcome.as_str().to_string())
            .bind(now_ms);
        leaving.bind(insert).execute(&mut **tx).await?;
        let sql = format!("DELETE FROM c2d WHERE {}", leaving.condition("", 1));
        let delete = sqlx::query(sqlx::AssertSqlSafe(sql));
        Ok(leaving
            .bind(delete)
            .execute(&mut **tx)
            .await?
            .rows_affected())
    }

    /// Queues a message for its device unless the device has `cap` unexpired messages
    /// pending (expired ones are dropped first). `id` and `delivery_count` of `m` are ignored.
    pub async fn enqueue_c2d(&self, m: &C2dRecord, cap: i64, now_ms: i64) -> Result<Enqueued> {
        let mut tx = self.pool().begin().await?;
        // Taking the next id first locks the counter row: concurrent enqueues (PostgreSQL)
        // run one after another, so the cap holds; ids never repeat, even when the queue
        // empties.
        sqlx::query("UPDATE c2d_counter SET n = n + 1")
            .execute(&mut *tx)
            .await?;
        let id: i64 = sqlx::query("SELECT n FROM c2d_counter")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let exists = sqlx::query("SELECT 1 AS one FROM devices WHERE device_id = $1")
            .bind(m.device_id.clone())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            tx.rollback().await?;
            return Ok(Enqueued::NoDevice);
        }
        let expired = Leaving::ExpiredOf(&m.device_id, now_ms);
        self.leave(&mut tx, expired, C2dOutcome::Expired, now_ms)
            .await?;
        let pending: i64 = sqlx::query("SELECT COUNT(*) AS n FROM c2d WHERE device_id = $1")
            .bind(m.device_id.clone())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if pending >= cap {
            tx.rollback().await?;
            return Ok(Enqueued::QueueFull);
        }
        sqlx::query(
            "INSERT INTO c2d (id, device_id, message_id, properties, body, enqueued_ms, expiry_ms,
                delivery_count, ack) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)",
        )
        .bind(id)
        .bind(m.device_id.clone())
        .bind(m.message_id.clone())
        .bind(m.properties.clone())
        .bind(m.body.clone())
        .bind(m.enqueued_ms)
        .bind(m.expiry_ms)
        .bind(m.ack.clone())
        .execute(&mut *tx)
        .await?;
        self.recount(&mut tx, &m.device_id).await?;
        tx.commit().await?;
        Ok(Enqueued::Stored(id))
    }

    /// Unexpired messages of a device with an id above `after`, oldest first.
    pub async fn pending_c2d(
        &self,
        device: &str,
        after: i64,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<C2dRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM c2d WHERE device_id = $1 AND id > $2 AND expiry_ms > $3
                AND locked_until_ms <= $3
             ORDER BY id LIMIT $4",
        )
        .bind(device.to_string())
        .bind(after)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(record).collect()
    }

    /// Counts a delivery attempt; returns the new count (0 if the message is gone).
    pub async fn c2d_delivered(&self, id: i64) -> Result<i64> {
        sqlx::query("UPDATE c2d SET delivery_count = delivery_count + 1 WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        let row = sqlx::query("SELECT delivery_count FROM c2d WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => r.try_get("delivery_count")?,
            None => 0,
        })
    }

    /// Removes a message, acknowledged by the device ([`C2dOutcome::Success`]) or
    /// dead-lettered ([`C2dOutcome::DeliveryCountExceeded`]), with its feedback; true if it
    /// was there.
    pub async fn remove_c2d(
        &self,
        device: &str,
        id: i64,
        outcome: C2dOutcome,
        now_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let done = self
            .leave(&mut tx, Leaving::One(device, id), outcome, now_ms)
            .await?;
        self.recount(&mut tx, device).await?;
        tx.commit().await?;
        Ok(done == 1)
    }

    /// Locks the oldest unexpired, unlocked message of `device` under `token` until
    /// `now_ms + lock_ms` and counts the delivery (HTTPS receive); `None` when there is none.
    /// A lock that ran out frees its message for the next receiver (HTTPS or MQTT).
    pub async fn lock_c2d(
        &self,
        device: &str,
        token: &str,
        now_ms: i64,
        lock_ms: i64,
    ) -> Result<Option<C2dRecord>> {
        // Two receivers may pick the same message: the update is guarded by the lock's state,
        // so only one of them takes it; the other looks again.
        for _ in 0..8 {
            let Some(row) = sqlx::query(
                "SELECT * FROM c2d WHERE device_id = $1 AND expiry_ms > $2 AND locked_until_ms <= $2
                 ORDER BY id LIMIT 1",
            )
            .bind(device.to_string())
            .bind(now_ms)
            .fetch_optional(self.pool())
            .await?
            else {
                return Ok(None);
            };
            let mut m = record(&row)?;
            let taken = sqlx::query(
                "UPDATE c2d SET lock_token = $1, locked_until_ms = $2,
                    delivery_count = delivery_count + 1
                 WHERE id = $3 AND locked_until_ms <= $4",
            )
            .bind(token.to_string())
            .bind(now_ms.saturating_add(lock_ms))
            .bind(m.id)
            .bind(now_ms)
            .execute(self.pool())
            .await?
            .rows_affected();
            if taken == 1 {
                m.delivery_count += 1;
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// The message of `device` locked under `token`, if the lock still holds.
    pub async fn locked_c2d(&self, device: &str, token: &str, now_ms: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT id FROM c2d WHERE device_id = $1 AND lock_token = $2 AND locked_until_ms > $3",
        )
        .bind(device.to_string())
        .bind(token.to_string())
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("id")?),
            None => None,
        })
    }

    /// Unlocks the message of `device` locked under `token` (HTTPS abandon): it is delivered
    /// again. False when the token is unknown, another device's or its lock ran out.
    pub async fn abandon_c2d(&self, device: &str, token: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE c2d SET lock_token = NULL, locked_until_ms = 0
             WHERE device_id = $1 AND lock_token = $2 AND locked_until_ms > $3",
        )
        .bind(device.to_string())
        .bind(token.to_string())
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Removes every message queued for a device; returns how many.
    pub async fn purge_c2d(&self, device: &str, now_ms: i64) -> Result<u64> {
        let mut tx = self.pool().begin().await?;
        let done = self
            .leave(&mut tx, Leaving::All(device), C2dOutcome::Purged, now_ms)
            .await?;
        self.recount(&mut tx, device).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Drops expired messages of every device; returns how many.
    pub async fn expire_c2d(&self, now_ms: i64) -> Result<u64> {
        let mut tx = self.pool().begin().await?;
        let devices: Vec<String> =
            sqlx::query("SELECT DISTINCT device_id FROM c2d WHERE expiry_ms <= $1")
                .bind(now_ms)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("device_id"))
                .collect::<std::result::Result<_, _>>()?;
        let done = self
            .leave(
                &mut tx,
                Leaving::Expired(now_ms),
                C2dOutcome::Expired,
                now_ms,
            )
            .await?;
        for d in &devices {
            self.recount(&mut tx, d).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Locks up to `limit` unlocked feedback records, oldest first, under `token` until
    /// `lock_until_ms`, and returns them (empty when there are none). A lock that ran out
    /// frees its records for the next receiver.
    pub async fn receive_feedback(
        &self,
        token: &str,
        now_ms: i64,
        lock_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<FeedbackRecord>> {
        // The outer condition repeats the inner one: on PostgreSQL a concurrent receiver that
        // locked a row first wins it, and this one skips it.
        sqlx::query(
            "UPDATE c2d_feedback SET lock_token = $1, lock_until_ms = $2
             WHERE lock_until_ms <= $3 AND id IN (
                SELECT id FROM c2d_feedback WHERE lock_until_ms <= $3 ORDER BY id LIMIT $4)",
        )
        .bind(token.to_string())
        .bind(lock_until_ms)
        .bind(now_ms)
        .bind(limit)
        .execute(self.pool())
        .await?;
        let rows = sqlx::query("SELECT * FROM c2d_feedback WHERE lock_token = $1 ORDER BY id")
            .bind(token.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(feedback).collect()
    }
}
