//! The cloud-to-device queue: messages waiting for a device, in the order they were sent.
//! A message leaves the queue when the device acknowledges it (PUBACK), when it expires, when
//! it was delivered too often, or when the queue is purged.

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
        sqlx::query("DELETE FROM c2d WHERE device_id = $1 AND expiry_ms <= $2")
            .bind(m.device_id.clone())
            .bind(now_ms)
            .execute(&mut *tx)
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
                delivery_count) VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .bind(id)
        .bind(m.device_id.clone())
        .bind(m.message_id.clone())
        .bind(m.properties.clone())
        .bind(m.body.clone())
        .bind(m.enqueued_ms)
        .bind(m.expiry_ms)
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

    /// Removes a message (acknowledged by the device, or dead-lettered); true if it was
    /// there.
    pub async fn remove_c2d(&self, device: &str, id: i64) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM c2d WHERE id = $1 AND device_id = $2")
            .bind(id)
            .bind(device.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.recount(&mut tx, device).await?;
        tx.commit().await?;
        Ok(done == 1)
    }

    /// Removes every message queued for a device; returns how many.
    pub async fn purge_c2d(&self, device: &str) -> Result<u64> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM c2d WHERE device_id = $1")
            .bind(device.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
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
        let done = sqlx::query("DELETE FROM c2d WHERE expiry_ms <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for d in &devices {
            self.recount(&mut tx, d).await?;
        }
        tx.commit().await?;
        Ok(done)
    }
}
