//! The queues services receive from under a lock token: C2D delivery feedback and file upload
//! notifications. A receiver locks records under a fresh token for a while; completing the
//! token deletes them, abandoning it frees them for the next receiver, and a lock that runs out
//! frees them too. Receiving differs per queue (feedback comes in batches, a notification one
//! at a time with a delivery count); settling and pruning are the same and live here.

use crate::{Result, Store};

/// A queue of records for services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceQueue {
    /// `/messages/serviceBound/feedback`: what devices did with C2D messages.
    Feedback,
    /// `/messages/serviceBound/filenotifications`: finished file uploads.
    FileNotifications,
}

impl ServiceQueue {
    /// The table: one of two fixed names, never input, so the SQL built with it is safe.
    fn table(self) -> &'static str {
        match self {
            Self::Feedback => "c2d_feedback",
            Self::FileNotifications => "file_notifications",
        }
    }

    /// What the queue holds, for messages ("cloud-to-device feedback").
    pub fn what(self) -> &'static str {
        match self {
            Self::Feedback => "cloud-to-device feedback",
            Self::FileNotifications => "file upload notification",
        }
    }
}

impl Store {
    /// Deletes the records of `queue` locked under `token` (the receiver has them); returns
    /// how many: 0 means the token is unknown or its lock ran out.
    pub async fn complete_locked(
        &self,
        queue: ServiceQueue,
        token: &str,
        now_ms: i64,
    ) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE lock_token = $1 AND lock_until_ms > $2",
            queue.table()
        );
        self.under_lock(sql, token, now_ms).await
    }

    /// Unlocks the records of `queue` locked under `token` for the next receiver; returns how
    /// many.
    pub async fn abandon_locked(
        &self,
        queue: ServiceQueue,
        token: &str,
        now_ms: i64,
    ) -> Result<u64> {
        let sql = format!(
            "UPDATE {} SET lock_token = NULL, lock_until_ms = 0
             WHERE lock_token = $1 AND lock_until_ms > $2",
            queue.table()
        );
        self.under_lock(sql, token, now_ms).await
    }

    /// Runs `sql` (built from a [`ServiceQueue`]'s table) for the records locked under
    /// `token` ($1) whose lock holds at `now_ms` ($2); returns how many it touched.
    async fn under_lock(&self, sql: String, token: &str, now_ms: i64) -> Result<u64> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token.to_string())
            .bind(now_ms)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// Drops the records of `queue` written before `before_ms` that nobody completed; returns
    /// how many.
    pub async fn prune_queue(&self, queue: ServiceQueue, before_ms: i64) -> Result<u64> {
        let sql = format!("DELETE FROM {} WHERE created_ms < $1", queue.table());
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before_ms)
            .execute(self.pool())
            .await?
            .rows_affected())
    }
}
