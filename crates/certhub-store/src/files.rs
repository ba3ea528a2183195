//! File uploads: the record of each upload a device began (under its correlation id), and the
//! notifications of finished uploads that wait for a service to receive them (locked under a
//! token, completed or abandoned, as C2D feedback is). The bytes themselves are not here: the
//! hub keeps them in its object store.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store};

/// One upload, from the device's request for a blob URI to its notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub correlation_id: String,
    pub device_id: String,
    /// `{deviceId}/{name the device asked for}`.
    pub blob_name: String,
    pub created_ms: i64,
    /// When the blob token given with it runs out.
    pub expires_ms: i64,
    pub state: UploadState,
    /// The blob's size when the device reported success.
    pub size_bytes: Option<i64>,
    pub finished_ms: Option<i64>,
    /// What the device reported (`statusCode`, `statusDescription`).
    pub status_code: Option<i64>,
    pub status_description: Option<String>,
}

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Begun; the device may write its blob until the token runs out.
    Pending,
    /// The device reported success.
    Succeeded,
    /// The device reported failure.
    Failed,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Pending => "pending",
            UploadState::Succeeded => "succeeded",
            UploadState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => UploadState::Pending,
            "succeeded" => UploadState::Succeeded,
            "failed" => UploadState::Failed,
            _ => return None,
        })
    }
}

/// How a device's report on an upload was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishOutcome {
    /// Recorded (and its notification queued, if one was given).
    Finished(UploadRecord),
    /// No upload of this device has that correlation id.
    Unknown,
    /// The upload was already reported on.
    AlreadyFinished(UploadRecord),
}

/// What a device reports when its upload ends.
#[derive(Debug, Clone)]
pub struct UploadReport<'a> {
    pub success: bool,
    pub status_code: Option<i64>,
    pub status_description: Option<&'a str>,
    pub size_bytes: Option<i64>,
}

/// A notification of a finished upload, as a service receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNotificationRecord {
    pub id: String,
    pub device_id: String,
    /// The notification's JSON (Azure's `FileNotification`).
    pub body: String,
    pub created_ms: i64,
    /// How often it was received (this time included).
    pub delivery_count: i64,
}

fn upload(r: &AnyRow) -> Result<UploadRecord> {
    let state: String = r.try_get("state")?;
    Ok(UploadRecord {
        correlation_id: r.try_get("correlation_id")?,
        device_id: r.try_get("device_id")?,
        blob_name: r.try_get("blob_name")?,
        created_ms: r.try_get("created_ms")?,
        expires_ms: r.try_get("expires_ms")?,
        state: UploadState::parse(&state)
            .ok_or_else(|| crate::StoreError::Corrupt(format!("upload state {state:?}")))?,
        size_bytes: r.try_get("size_bytes")?,
        finished_ms: r.try_get("finished_ms")?,
        status_code: r.try_get("status_code")?,
        status_description: r.try_get("status_description")?,
    })
}

fn notification(r: &AnyRow) -> Result<FileNotificationRecord> {
    Ok(FileNotificationRecord {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        body: r.try_get("body")?,
        created_ms: r.try_get("created_ms")?,
        delivery_count: r.try_get("delivery_count")?,
    })
}

impl Store {
    /// Records a new upload unless its device already has `max_active` uploads whose tokens
    /// have not run out and that it has not reported on; false if it has.
    pub async fn begin_upload(&self, record: &UploadRecord, max_active: i64) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM file_uploads
             WHERE device_id = $1 AND state = 'pending' AND expires_ms > $2",
        )
        .bind(record.device_id.clone())
        .bind(record.created_ms)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if active >= max_active {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO file_uploads (correlation_id, device_id, blob_name, created_ms,
                expires_ms, state, size_bytes, finished_ms, status_code, status_description)
             VALUES ($1, $2, $3, $4, $5, 'pending', NULL, NULL, NULL, NULL)",
        )
        .bind(record.correlation_id.clone())
        .bind(record.device_id.clone())
        .bind(record.blob_name.clone())
        .bind(record.created_ms)
        .bind(record.expires_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The newest upload of `blob_name` that is still open for writing at `now_ms`.
    pub async fn open_upload(&self, blob_name: &str, now_ms: i64) -> Result<Option<UploadRecord>> {
        let row = sqlx::query(
            "SELECT * FROM file_uploads
             WHERE blob_name = $1 AND state = 'pending' AND expires_ms > $2
             ORDER BY created_ms DESC LIMIT 1",
        )
        .bind(blob_name.to_string())
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(upload).transpose()
    }

    /// One upload by its correlation id.
    pub async fn upload(&self, correlation_id: &str) -> Result<Option<UploadRecord>> {
        let row = sqlx::query("SELECT * FROM file_uploads WHERE correlation_id = $1")
            .bind(correlation_id.to_string())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(upload).transpose()
    }

    /// The blob names of every upload open at `now_ms` (begun, not reported, token valid).
    pub async fn open_blob_names(&self, now_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT blob_name FROM file_uploads WHERE state = 'pending' AND expires_ms > $1",
        )
        .bind(now_ms)
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("blob_name")?))
            .collect()
    }

    /// Uploads, newest first, of one device or of all.
    pub async fn uploads(&self, device_id: Option<&str>, limit: i64) -> Result<Vec<UploadRecord>> {
        let rows =
            match device_id {
                Some(d) => {
                    sqlx::query(
                        "SELECT * FROM file_uploads WHERE device_id = $1
                 ORDER BY created_ms DESC, correlation_id LIMIT $2",
                    )
                    .bind(d.to_string())
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?
                }
                None => sqlx::query(
                    "SELECT * FROM file_uploads ORDER BY created_ms DESC, correlation_id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(self.reader())
                .await?,
            };
        rows.iter().map(upload).collect()
    }

    /// Takes a device's report on its upload `correlation_id`, and queues `notification` (a
    /// JSON text) in the same transaction when one is given.
    pub async fn finish_upload(
        &self,
        device_id: &str,
        correlation_id: &str,
        report: &UploadReport<'_>,
        now_ms: i64,
        notification: Option<(&str, &str)>,
    ) -> Result<FinishOutcome> {
        let mut tx = self.pool().begin().await?;
        let state = if report.success {
            UploadState::Succeeded
        } else {
            UploadState::Failed
        };
        let done = sqlx::query(
            "UPDATE file_uploads SET state = $1, size_bytes = $2, finished_ms = $3,
                status_code = $4, status_description = $5
             WHERE correlation_id = $6 AND device_id = $7 AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(report.size_bytes)
        .bind(now_ms)
        .bind(report.status_code)
        .bind(report.status_description.map(str::to_string))
        .bind(correlation_id.to_string())
        .bind(device_id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row =
            sqlx::query("SELECT * FROM file_uploads WHERE correlation_id = $1 AND device_id = $2")
                .bind(correlation_id.to_string())
                .bind(device_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(record) = row.as_ref().map(upload).transpose()? else {
            return Ok(FinishOutcome::Unknown);
        };
        if done == 0 {
            return Ok(FinishOutcome::AlreadyFinished(record));
        }
        if let Some((id, body)) = notification {
            sqlx::query(
                "INSERT INTO file_notifications (id, device_id, body, created_ms,
                    delivery_count, lock_token, lock_until_ms)
                 VALUES ($1, $2, $3, $4, 0, NULL, 0)",
            )
            .bind(id.to_string())
            .bind(device_id.to_string())
            .bind(body.to_string())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(FinishOutcome::Finished(record))
    }

    /// Locks the oldest file notification that nobody holds under `token` until
    /// `lock_until_ms` and returns it; one received more than `max_deliveries` times is
    /// dropped instead.
    pub async fn receive_file_notification(
        &self,
        token: &str,
        now_ms: i64,
        lock_until_ms: i64,
        max_deliveries: i64,
    ) -> Result<Option<FileNotificationRecord>> {
        sqlx::query(
            "DELETE FROM file_notifications WHERE delivery_count >= $1 AND lock_until_ms <= $2",
        )
        .bind(max_deliveries)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        // The outer condition repeats the inner one: on PostgreSQL a concurrent receiver that
        // locked the row first wins it, and this one finds nothing under its token.
        sqlx::query(
            "UPDATE file_notifications
             SET lock_token = $1, lock_until_ms = $2, delivery_count = delivery_count + 1
             WHERE lock_until_ms <= $3 AND id IN (
                SELECT id FROM file_notifications WHERE lock_until_ms <= $3
                ORDER BY created_ms, id LIMIT 1)",
        )
        .bind(token.to_string())
        .bind(lock_until_ms)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        let row = sqlx::query("SELECT * FROM file_notifications WHERE lock_token = $1")
            .bind(token.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(notification).transpose()
    }

    /// Notifications waiting, oldest first, without locking them (for operators).
    pub async fn file_notifications(&self, limit: i64) -> Result<Vec<FileNotificationRecord>> {
        let rows = sqlx::query("SELECT * FROM file_notifications ORDER BY created_ms, id LIMIT $1")
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(notification).collect()
    }

    /// The hub-wide secret named `name`: `candidate` becomes it if there is none yet (the
    /// first writer wins, so every node of a cluster agrees).
    pub async fn secret(&self, name: &str, candidate: &str) -> Result<String> {
        let key = format!("secret:{name}");
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(key.clone())
        .bind(candidate.to_string())
        .execute(self.pool())
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(key)
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("value")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceQueue;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("hub.db"))
            .await
            .expect("store");
        (dir, store)
    }

    fn record(id: &str, device: &str, blob: &str, now: i64) -> UploadRecord {
        UploadRecord {
            correlation_id: id.into(),
            device_id: device.into(),
            blob_name: format!("{device}/{blob}"),
            created_ms: now,
            expires_ms: now + 1000,
            state: UploadState::Pending,
            size_bytes: None,
            finished_ms: None,
            status_code: None,
            status_description: None,
        }
    }

    #[tokio::test]
    async fn active_uploads_are_capped_per_device_until_reported_or_expired() {
        let (_d, s) = store().await;
        assert!(s.begin_upload(&record("a", "d1", "x", 0), 2).await.unwrap());
        assert!(s.begin_upload(&record("b", "d1", "y", 0), 2).await.unwrap());
        assert!(!s.begin_upload(&record("c", "d1", "z", 0), 2).await.unwrap());
        // Another device has its own count.
        assert!(s.begin_upload(&record("e", "d2", "z", 0), 2).await.unwrap());
        let ok = UploadReport {
            success: true,
            status_code: Some(200),
            status_description: None,
            size_bytes: Some(5),
        };
        let out = s.finish_upload("d1", "a", &ok, 10, None).await.unwrap();
        assert!(matches!(out, FinishOutcome::Finished(_)));
        assert!(
            s.begin_upload(&record("c", "d1", "z", 10), 2)
                .await
                .unwrap()
        );
        // Once the tokens ran out, the uploads no longer count.
        assert!(
            s.begin_upload(&record("f", "d1", "w", 5000), 2)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_report_is_taken_once_and_only_from_its_device() {
        let (_d, s) = store().await;
        s.begin_upload(&record("a", "d1", "x", 0), 10)
            .await
            .unwrap();
        let ok = UploadReport {
            success: true,
            status_code: Some(201),
            status_description: Some("fine"),
            size_bytes: Some(7),
        };
        assert_eq!(
            s.finish_upload("d2", "a", &ok, 5, None).await.unwrap(),
            FinishOutcome::Unknown
        );
        assert_eq!(
            s.finish_upload("d1", "zz", &ok, 5, None).await.unwrap(),
            FinishOutcome::Unknown
        );
        let FinishOutcome::Finished(r) = s
            .finish_upload("d1", "a", &ok, 5, Some(("n1", "{}")))
            .await
            .unwrap()
        else {
            panic!("not finished")
        };
        assert_eq!(r.state, UploadState::Succeeded);
        assert_eq!(r.size_bytes, Some(7));
        assert!(matches!(
            s.finish_upload("d1", "a", &ok, 6, Some(("n2", "{}")))
                .await
                .unwrap(),
            FinishOutcome::AlreadyFinished(_)
        ));
        // One notification, not two.
        assert_eq!(s.file_notifications(10).await.unwrap().len(), 1);
        assert_eq!(s.open_upload("d1/x", 6).await.unwrap(), None);
    }

    #[tokio::test]
    async fn notifications_lock_complete_abandon_and_drop_after_max_deliveries() {
        let (_d, s) = store().await;
        s.begin_upload(&record("a", "d1", "x", 0), 10)
            .await
            .unwrap();
        let ok = UploadReport {
            success: true,
            status_code: None,
            status_description: None,
            size_bytes: None,
        };
        s.finish_upload("d1", "a", &ok, 1, Some(("n1", "{\"a\":1}")))
            .await
            .unwrap();
        let n = s
            .receive_file_notification("t1", 2, 100, 3)
            .await
            .unwrap()
            .expect("one");
        assert_eq!((n.id.as_str(), n.delivery_count), ("n1", 1));
        // Locked: nobody else gets it.
        assert!(
            s.receive_file_notification("t2", 3, 100, 3)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            s.abandon_locked(ServiceQueue::FileNotifications, "t1", 4)
                .await
                .unwrap(),
            1
        );
        let n = s
            .receive_file_notification("t3", 5, 100, 3)
            .await
            .unwrap()
            .expect("again");
        assert_eq!(n.delivery_count, 2);
        // A lock that ran out cannot complete.
        assert_eq!(
            s.complete_locked(ServiceQueue::FileNotifications, "t3", 200)
                .await
                .unwrap(),
            0
        );
        let n = s
            .receive_file_notification("t4", 201, 300, 3)
            .await
            .unwrap()
            .expect("third");
        assert_eq!(n.delivery_count, 3);
        // Received three times: dropped rather than given a fourth time.
        assert!(
            s.receive_file_notification("t5", 301, 400, 3)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.file_notifications(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_first_secret_written_stays() {
        let (_d, s) = store().await;
        assert_eq!(s.secret("blob", "one").await.unwrap(), "one");
        assert_eq!(s.secret("blob", "two").await.unwrap(), "one");
    }
}
