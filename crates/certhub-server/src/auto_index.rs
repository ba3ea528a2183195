//! Twin indexes the hub builds on its own (certhub's; IoT Hub indexes every path and says
//! nothing). A tag or property path that queries filter on while no index finds their rows
//! (each such query reads every twin, `x-certhub-query-plan: scanned`) is indexed once
//! [`AFTER_SCANS`] such queries named it within [`WINDOW_MS`], on a registry of at least
//! [`MIN_DEVICES`] devices (below that, reading every twin is quick and an index would only
//! slow the writes). The hub builds at most [`MOST_AUTO`] of them, within the 32 indexes there
//! may be in all, one at a time; it never indexes a path whose index an operator removed
//! (until the operator declares it again); the hub setting `twinAutoIndex` turns it off. Each
//! build is in the audit trail (`twin.index.auto`), with the way to undo it.
//!
//! The counts are this process's own: each node of a cluster counts the queries it answers,
//! and the indexes it builds are the cluster's (they live in the shared database).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use certhub_store::{JsonPath, MAX_TWIN_INDEXES, TwinPred};

use crate::state::{AppState, System as Hub};

/// Queries that read every twin and named a path before the hub indexes it.
pub const AFTER_SCANS: u32 = 5;
/// Within this long of the first of them (ms).
pub const WINDOW_MS: i64 = 10 * 60 * 1000;
/// The fewest registered devices at which the hub indexes on its own.
pub const MIN_DEVICES: u64 = 10_000;
/// The most indexes the hub builds on its own.
pub const MOST_AUTO: usize = 8;
/// The most paths counted at once (a flood of distinct paths costs no more memory).
const MOST_COUNTED: usize = 1024;

/// The counts of paths queried without an index, and whether a build is under way.
#[derive(Debug, Default)]
pub(crate) struct AutoIndex {
    counted: Mutex<HashMap<JsonPath, Counted>>,
    building: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Counted {
    scans: u32,
    since_ms: i64,
}

impl AutoIndex {
    /// Counts a query that read every twin and named these paths (none of them indexed).
    /// Returns a path that is due, if no build is under way (the caller then builds it and
    /// calls [`AutoIndex::built`]); its count starts again.
    fn count(&self, paths: &[&JsonPath], now_ms: i64) -> Option<JsonPath> {
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = None;
        for &path in paths {
            if !counted.contains_key(path) && counted.len() >= MOST_COUNTED {
                counted.retain(|_, c| now_ms - c.since_ms < WINDOW_MS);
                if counted.len() >= MOST_COUNTED {
                    continue;
                }
            }
            let c = counted.entry(path.clone()).or_insert(Counted {
                scans: 0,
                since_ms: now_ms,
            });
            if now_ms - c.since_ms >= WINDOW_MS {
                *c = Counted {
                    scans: 0,
                    since_ms: now_ms,
                };
            }
            c.scans += 1;
            if due.is_none() && c.scans >= AFTER_SCANS {
                due = Some(path.clone());
            }
        }
        let path = due?;
        if self.building.swap(true, Ordering::SeqCst) {
            return None;
        }
        counted.remove(&path);
        Some(path)
    }

    fn built(&self) {
        self.building.store(false, Ordering::SeqCst);
    }
}

/// Notes a twin query whose rows no index found: `pred` is the database's part of its WHERE,
/// `indexed` says which paths have an index. May start building an index (in a task of its
/// own: the query does not wait).
pub(crate) fn scanned(state: &AppState, pred: &TwinPred, indexed: &dyn Fn(&JsonPath) -> bool) {
    let paths: Vec<&JsonPath> = pred
        .json_paths()
        .into_iter()
        .filter(|p| !indexed(p))
        .collect();
    if paths.is_empty() {
        return;
    }
    let Some(path) = state.auto_index().count(&paths, crate::state::now_ms()) else {
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        let shown = crate::query_plan::query_path(&path);
        match build(&state, &path, &shown).await {
            Ok(Some(detail)) => {
                tracing::info!(path = shown, detail, "twin path indexed by the hub");
                state
                    .audit(
                        &Hub,
                        "twin.index.auto",
                        &format!("twinIndexes/{shown}"),
                        "ok",
                        &detail,
                    )
                    .await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = shown, error = %e, "indexing a twin path failed");
                state
                    .audit(
                        &Hub,
                        "twin.index.auto",
                        &format!("twinIndexes/{shown}"),
                        "error",
                        &format!("building the index failed: {e}"),
                    )
                    .await;
            }
        }
        state.auto_index().built();
    });
}

/// Builds the index of `path` if nothing holds the hub back; the audit record's detail when
/// it did.
async fn build(
    state: &AppState,
    path: &JsonPath,
    shown: &str,
) -> Result<Option<String>, certhub_store::StoreError> {
    let Ok(settings) = state.settings().await else {
        return Ok(None);
    };
    if !settings.twin_auto_index {
        return Ok(None);
    }
    let store = state.store();
    let indexes = store.twin_indexes().await?;
    if indexes.iter().any(|i| &i.path == path)
        || indexes.len() >= MAX_TWIN_INDEXES
        || indexes.iter().filter(|i| i.auto).count() >= MOST_AUTO
    {
        tracing::debug!(
            path = shown,
            "not indexed on its own: indexed already, or no room"
        );
        return Ok(None);
    }
    if store.twin_index_declined(path).await? {
        tracing::debug!(
            path = shown,
            "not indexed on its own: an operator removed it"
        );
        return Ok(None);
    }
    let devices = store.count_devices_where(None).await?;
    if devices < MIN_DEVICES {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    if !store
        .add_twin_index(path, crate::state::now_ms(), true)
        .await?
    {
        return Ok(None);
    }
    Ok(Some(format!(
        "{AFTER_SCANS} queries filtering on {shown} within {} min found no index and read the \
         twins one by one ({devices} devices registered); built in {} ms. `certhub hub twin-index remove {shown}` drops it and keeps \
         the hub from indexing {shown} again; `certhub hub set --twin-auto-index false` stops the \
         hub indexing on its own",
        WINDOW_MS / 60_000,
        started.elapsed().as_millis()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> JsonPath {
        JsonPath::new(p.split('.').map(str::to_string).collect()).expect("path")
    }

    #[test]
    fn a_path_is_due_after_enough_scans_within_the_window_and_one_build_at_a_time() {
        let auto = AutoIndex::default();
        let (site, floor) = (path("tags.site"), path("tags.floor"));
        for i in 0..AFTER_SCANS - 1 {
            assert_eq!(auto.count(&[&site], i64::from(i)), None);
        }
        // The fifth names both: site is due; floor has one.
        assert_eq!(auto.count(&[&site, &floor], 10), Some(site.clone()));
        // While it builds, nothing else is due, however often it is named.
        for i in 0..2 * AFTER_SCANS {
            assert_eq!(auto.count(&[&floor], 20 + i64::from(i)), None);
        }
        auto.built();
        assert_eq!(auto.count(&[&floor], 40), Some(floor.clone()));
        auto.built();
        // site counts from nothing again.
        assert_eq!(auto.count(&[&site], 50), None);
    }

    #[test]
    fn scans_further_apart_than_the_window_start_the_count_again() {
        let auto = AutoIndex::default();
        let site = path("tags.site");
        for i in 0..AFTER_SCANS - 1 {
            assert_eq!(auto.count(&[&site], i64::from(i)), None);
        }
        let later = WINDOW_MS + 1;
        for i in 0..AFTER_SCANS - 1 {
            assert_eq!(auto.count(&[&site], later + i64::from(i)), None);
        }
        assert_eq!(auto.count(&[&site], later + 100), Some(site));
    }

    #[test]
    fn the_counted_paths_are_bounded() {
        let auto = AutoIndex::default();
        for i in 0..2 * MOST_COUNTED {
            let p = path(&format!("tags.t{i}"));
            auto.count(&[&p], 0);
        }
        assert_eq!(auto.counted.lock().expect("lock").len(), MOST_COUNTED);
        // Once the window has passed, new paths are counted again.
        let p = path("tags.fresh");
        auto.count(&[&p], WINDOW_MS);
        assert!(auto.counted.lock().expect("lock").contains_key(&p));
    }
}
