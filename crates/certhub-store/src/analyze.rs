//! PostgreSQL without autovacuum: nothing analyzes the tables, so the planner's statistics,
//! and the generic plans of prepared statements that each pooled connection keeps, stay as they
//! were while the tables were small (a sequential scan kept for the connection's life: stop 31
//! met it in a bulk import toward a million devices, seconds a statement). The hub then
//! analyzes the registry's tables itself whenever the devices it created since the last
//! analysis reach the number the table held then (at least [`FLOOR`]): about log2(N) times on
//! the way to N devices, each reading a sample of the rows. An analysis also makes PostgreSQL
//! plan every prepared statement on those tables again. With autovacuum on (PostgreSQL's
//! default), and on SQLite, nothing of this runs.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::{Backend, Result, Store};

/// The fewest new devices that make an analysis due.
pub(crate) const FLOOR: i64 = 1_000;

#[derive(Debug, Default)]
pub(crate) struct Growth {
    /// Autovacuum is off on this PostgreSQL (set at open).
    watching: AtomicBool,
    /// Devices at the last analysis (PostgreSQL's estimate at open), and created since.
    at_last: AtomicI64,
    added: AtomicI64,
    running: AtomicBool,
}

impl Growth {
    /// Counts `n` new devices; true when an analysis is due and none runs (the caller runs
    /// it, then calls [`Growth::analyzed`]).
    fn added(&self, n: i64) -> bool {
        if !self.watching.load(Ordering::Relaxed) || n <= 0 {
            return false;
        }
        let added = self.added.fetch_add(n, Ordering::SeqCst) + n;
        added >= self.at_last.load(Ordering::SeqCst).max(FLOOR)
            && !self.running.swap(true, Ordering::SeqCst)
    }

    /// The analysis ran (`ok`) or failed, `counted` being the new devices it was for.
    fn analyzed(&self, counted: i64, ok: bool) {
        if ok {
            self.at_last.fetch_add(counted, Ordering::SeqCst);
        } else {
            self.added.fetch_add(counted, Ordering::SeqCst);
        }
        self.running.store(false, Ordering::SeqCst);
    }
}

impl Store {
    /// At open: on PostgreSQL with autovacuum off, start counting the devices created.
    pub(crate) async fn watch_growth(&self) -> Result<()> {
        if self.backend != Backend::Postgres || !self.autovacuum_off().await? {
            return Ok(());
        }
        // PostgreSQL's estimate (-1 or 0 for a table never analyzed): no count of the rows.
        let rows: i64 = sqlx::query_scalar(
            "SELECT CAST(GREATEST(reltuples, 0) AS BIGINT) FROM pg_class \
             WHERE oid = CAST('devices' AS regclass)",
        )
        .fetch_one(self.pool())
        .await?;
        self.growth.at_last.store(rows, Ordering::SeqCst);
        self.growth.watching.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// `n` devices were created: analyzes the registry's tables, in a task of its own, when
    /// that is due (see the module's comment).
    pub(crate) fn grew(&self, n: u64) {
        if !self.growth.added(i64::try_from(n).unwrap_or(i64::MAX)) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let counted = store.growth.added.swap(0, Ordering::SeqCst);
            let done = sqlx::query("ANALYZE devices, modules, twins")
                .execute(store.pool())
                .await;
            match &done {
                Ok(_) => tracing::info!(
                    new_devices = counted,
                    "analyzed the registry's tables (autovacuum is off on this PostgreSQL)"
                ),
                Err(e) => tracing::warn!(error = %e, "analyzing the registry's tables failed"),
            }
            store.growth.analyzed(counted, done.is_ok());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a PostgreSQL whose autovacuum is off (as on CI), creating devices gets the registry
    /// analyzed; `pg_stat_user_tables` says when each table last was.
    #[tokio::test]
    async fn postgres_without_autovacuum_analyzes_the_registry_as_it_grows() {
        let Some(scratch) = crate::scratch::postgres("certhub_growth")
            .await
            .expect("scratch database")
        else {
            return;
        };
        let store = scratch.store.clone();
        if !store.autovacuum_off().await.expect("autovacuum") {
            // Autovacuum analyzes on its own schedule: nothing of the hub's to see.
            scratch.drop_database().await.expect("drop database");
            return;
        }
        let analyzed = || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_user_tables \
                 WHERE relname IN ('devices', 'twins', 'modules') AND last_analyze IS NOT NULL",
            )
            .fetch_one(store.pool())
            .await
            .expect("pg_stat_user_tables");
            n
        };
        let devices = |from: usize, n: usize| {
            (from..from + n)
                .map(|i| crate::tests::new_device(&format!("g{i:05}")))
                .collect::<Vec<_>>()
        };
        store
            .insert_devices(&devices(0, 999))
            .await
            .expect("insert");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(analyzed().await, 0, "999 new devices: not yet");
        store
            .insert_devices(&devices(999, 1))
            .await
            .expect("insert");
        let mut seen = 0;
        for _ in 0..100 {
            seen = analyzed().await;
            if seen == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(seen, 3, "devices, modules and twins analyzed");
        scratch.drop_database().await.expect("drop database");
    }

    #[test]
    fn an_analysis_is_due_when_the_new_devices_reach_those_at_the_last_one() {
        let g = Growth::default();
        assert!(!g.added(5_000), "not watching (autovacuum on, or SQLite)");
        g.watching.store(true, Ordering::SeqCst);
        g.added.store(0, Ordering::SeqCst);
        assert!(!g.added(999));
        assert!(g.added(1), "the floor reached");
        assert!(!g.added(10_000), "one at a time");
        let counted = g.added.swap(0, Ordering::SeqCst);
        g.analyzed(counted, true);
        assert_eq!(g.at_last.load(Ordering::SeqCst), 11_000);
        assert!(!g.added(10_999));
        assert!(g.added(1), "as many again as at the last");
        // A failed analysis counts its devices again.
        let counted = g.added.swap(0, Ordering::SeqCst);
        g.analyzed(counted, false);
        assert_eq!(g.added.load(Ordering::SeqCst), 11_000);
        assert!(g.added(1), "due again at once");
    }
}
