//! Reads of one device's telemetry follow that device's chain (each message points to its
//! device's previous one) instead of scanning the log. They must give exactly the messages a
//! scan gives, in the same order and pages: for chatty, sparse and quiet devices, a device's
//! modules, a device that sent nothing, from any starting point; after a restart that saved
//! the writer's map of newest messages and after one that did not; after retention deleted
//! the front of the log; over a log written before the chains (schema step 17) and after; and
//! with the chains off. On SQLite and (when reachable, as on CI) PostgreSQL.

use certhub_server::TelemetryLog;
use certhub_store::{Store, TelemetryRecord};

/// Messages in the log, as a scan would see them: (number, device).
#[derive(Default)]
struct Written(Vec<(i64, String)>);

impl Written {
    fn of(&self, device: &str, after: i64) -> Vec<i64> {
        self.0
            .iter()
            .filter(|(seq, d)| d == device && *seq > after)
            .map(|(seq, _)| *seq)
            .collect()
    }

    fn last(&self) -> i64 {
        self.0.last().map_or(0, |w| w.0)
    }
}

/// Which device sends message `i` of a round, and from which module.
fn sender(i: usize, round: usize) -> (String, Option<String>) {
    match i {
        _ if i.is_multiple_of(2) => ("chatty".into(), None),
        _ if i % 50 == 1 => ("sparse".into(), None),
        // One in 250: a first walk of 64 messages spans more than 64 x 200 of the log, so
        // the read walks on.
        _ if i % 250 == 9 => ("rare".into(), None),
        3 if round == 0 => ("quiet".into(), None),
        5_003 if round == 1 => ("quiet".into(), None),
        7 if round == 3 => ("late".into(), None),
        _ if i % 7 == 3 => (
            "modular".into(),
            i.is_multiple_of(3).then(|| format!("m{}", i % 2)),
        ),
        _ => (format!("other-{}", i % 40), None),
    }
}

fn record(i: usize, round: usize) -> TelemetryRecord {
    let (device_id, module_id) = sender(i, round);
    TelemetryRecord {
        seq: 0,
        device_id,
        module_id,
        enqueued_ms: 1_000 + i as i64,
        properties: "{}".into(),
        body: format!("{round}:{i}").into_bytes(),
    }
}

/// Writes `n` messages through the log (submitted together, so the writer batches them).
async fn write(log: &TelemetryLog, written: &mut Written, n: usize, round: usize) {
    let mut waits = Vec::new();
    for i in 0..n {
        let r = record(i, round);
        let device = r.device_id.clone();
        waits.push((log.submit(r).await.expect("submit"), device));
    }
    for (wait, device) in waits {
        let seq = wait.await.expect("stored");
        written.0.push((seq, device));
    }
    written.0.sort();
}

/// Every device's messages, paged from several starting points with two page sizes, are
/// exactly the scan's.
async fn check(log: &TelemetryLog, written: &Written, chained: bool, what: &str) {
    let last = written.last();
    let starts = [0, 1, last / 3, last / 2, last - 40, last];
    for device in [
        "chatty", "sparse", "rare", "quiet", "late", "modular", "other-3", "other-39", "nobody",
    ] {
        // The newest 25 (the console's tail), where the chains give them.
        let all = written.of(device, 0);
        match log.latest(device, 25).await.expect("latest") {
            Some(newest) => {
                let seqs: Vec<i64> = newest.iter().map(|r| r.seq).collect();
                assert_eq!(
                    seqs,
                    all[all.len().saturating_sub(25)..],
                    "{what}: the newest of {device}"
                );
            }
            None => assert!(
                !chained || all.len() < 25,
                "{what}: the chains give {device}'s newest"
            ),
        }
        for after in starts {
            let want = written.of(device, after);
            // A chatty device's 7-message pages would be a thousand reads from each start.
            let limits: &[i64] = if device == "chatty" {
                &[500]
            } else {
                &[7, 100]
            };
            for &limit in limits {
                let mut got = Vec::new();
                let mut at = after;
                let mut pages = 0;
                loop {
                    let page = log.after(at, Some(device), limit).await.expect("read");
                    pages += 1;
                    assert!(pages < 5_000, "{what}: {device} after {after} does not end");
                    assert!(page.records.len() as i64 <= limit);
                    for r in &page.records {
                        assert_eq!(r.device_id, device, "{what}: another device's message");
                        got.push(r.seq);
                    }
                    if pages == 1 {
                        let first: Vec<i64> = want.iter().copied().take(limit as usize).collect();
                        let seqs: Vec<i64> = page.records.iter().map(|r| r.seq).collect();
                        assert_eq!(
                            seqs, first,
                            "{what}: the first page of {device} after {after} (top {limit})"
                        );
                    }
                    assert!(page.examined >= at, "{what}: the read went backwards");
                    if page.records.is_empty() && page.examined >= last {
                        break;
                    }
                    at = page.examined;
                }
                assert_eq!(
                    got, want,
                    "{what}: every page of {device} after {after} (top {limit})"
                );
            }
        }
    }
}

async fn run(store: Store) {
    let mut written = Written::default();

    // A log written before the chains: no links, and the chain state a migration leaves.
    let old: Vec<TelemetryRecord> = (0..600)
        .map(|i| {
            let mut r = record(i, 0);
            r.seq = i as i64 + 1;
            r
        })
        .collect();
    store.append_telemetry(&old).await.expect("old log");
    for r in &old {
        written.0.push((r.seq, r.device_id.clone()));
    }
    store
        .set_telemetry_chain_state(600, 600)
        .await
        .expect("as a migration leaves it");

    let log = TelemetryLog::start(store.clone()).await.expect("log");
    // More than the walk's limit of 4 096 hops for the chatty device, and more than a first
    // walk's 64 for the rare one.
    write(&log, &mut written, 20_000, 1).await;
    assert!(
        store.telemetry_links().await.expect("links") > 19_000,
        "the writer links messages"
    );
    check(
        &log,
        &written,
        true,
        "a log older than its chains, then chained",
    )
    .await;

    // A restart after the writer's map was saved, then one right after writing (what the
    // last save missed is read back from the log).
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    write(&log, &mut written, 300, 2).await;
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let log = TelemetryLog::start(store.clone()).await.expect("log");
    check(
        &log,
        &written,
        true,
        "restarted with the last writes unsaved",
    )
    .await;
    write(&log, &mut written, 300, 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    write(&log, &mut written, 300, 4).await;
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let log = TelemetryLog::start(store.clone()).await.expect("log");
    write(&log, &mut written, 100, 5).await;
    check(&log, &written, true, "restarted twice").await;

    // Retention deletes the front of the log, the old log and the quiet device's first
    // message with it.
    let keep = 6_000;
    store.prune_telemetry(0, keep).await.expect("prune");
    let cut = written.last() - keep;
    written.0.retain(|(seq, _)| *seq > cut);
    check(&log, &written, true, "after retention").await;

    // Chains off (another hub wrote this database's log): reads scan.
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    store
        .set_telemetry_known_from(i64::MAX)
        .await
        .expect("chains off");
    let log = TelemetryLog::start(store.clone()).await.expect("log");
    write(&log, &mut written, 200, 6).await;
    check(&log, &written, false, "chains off").await;
}

#[tokio::test]
async fn reads_of_one_device_follow_its_chain_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("certhub.db"))
        .await
        .expect("store");
    run(store).await;
}

#[tokio::test]
async fn reads_of_one_device_follow_its_chain_on_postgres() {
    certhub_store::scratch::on_postgres("certhub_chains", run).await;
}
