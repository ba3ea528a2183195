//! The bookkeeping writer: the audit records, last-activity times and CA names that device
//! connections produce go through one task that writes them in batches, so a connection waits
//! on none of them. Readers that must see everything written so far (the audit API, registry
//! reads) call [`Bookkeeper::flush`] first.

use std::collections::HashMap;
use std::sync::Arc;

use certhub_store::{AuditRecord, Bookkeeping, Store};
use tokio::sync::{Notify, mpsc, oneshot};

#[derive(Debug)]
enum Entry {
    Audit(AuditRecord),
    Activity(String, String, i64),
    Ca(String, String, String),
    Chain(String, String, String, i64),
    Flush(oneshot::Sender<()>),
}

/// A handle to the writer task.
#[derive(Debug, Clone)]
pub struct Bookkeeper {
    tx: mpsc::Sender<Entry>,
    /// Ends a batch's gathering early: a reader waits for it.
    flush_asked: Arc<Notify>,
}

/// A batch as it gathers.
#[derive(Default)]
struct Gathering {
    taken: usize,
    audit: Vec<AuditRecord>,
    /// The latest value per identity: (device, module) -> value.
    activity: HashMap<(String, String), i64>,
    cas: HashMap<(String, String), String>,
    chains: HashMap<(String, String), (String, i64)>,
    waiting: Vec<oneshot::Sender<()>>,
}

impl Gathering {
    fn take(&mut self, entry: Entry) {
        self.taken += 1;
        match entry {
            Entry::Audit(r) => self.audit.push(r),
            Entry::Activity(d, m, at) => {
                let t = self.activity.entry((d, m)).or_insert(at);
                *t = (*t).max(at);
            }
            Entry::Ca(d, m, ca) => {
                self.cas.insert((d, m), ca);
            }
            Entry::Chain(d, m, chain, expires) => {
                self.chains.insert((d, m), (chain, expires));
            }
            Entry::Flush(done) => self.waiting.push(done),
        }
    }
}

/// Most entries one transaction takes.
const MAX_BATCH: usize = 1024;
/// How long a batch gathers entries after its first (unless a reader waits for it): a
/// transaction's own cost (its statements, its commit) is then shared by the connections of
/// a few milliseconds, not by the few that arrived while the last one was written. Measured on
/// the connect path, where each connection hands over an audit record, its last activity, CA
/// and chain: see docs/performance.md.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

impl Bookkeeper {
    pub fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<Entry>(16 * 1024);
        let flush_asked = Arc::new(Notify::new());
        let asked = flush_asked.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut gathering = Gathering::default();
                gathering.take(first);
                let until = tokio::time::Instant::now() + GATHER;
                let mut gathered = false;
                loop {
                    while gathering.taken < MAX_BATCH {
                        let Ok(entry) = rx.try_recv() else { break };
                        gathering.take(entry);
                    }
                    // A full batch, the gathering time over, or a reader waiting: write now.
                    if gathered || gathering.taken >= MAX_BATCH || !gathering.waiting.is_empty() {
                        break;
                    }
                    // Asleep while the batch gathers, not woken by each entry (a wake, a poll
                    // and a timer per entry before): the entries of the next few milliseconds
                    // are taken together when it ends, or when a reader asks for a flush.
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = flush_asked.notified() => {}
                    }
                    gathered = true;
                }
                let Gathering {
                    audit,
                    activity,
                    cas,
                    chains,
                    waiting,
                    ..
                } = gathering;
                let batch = Bookkeeping {
                    audit,
                    activity: activity.into_iter().map(|((d, m), t)| (d, m, t)).collect(),
                    cas: cas.into_iter().map(|((d, m), c)| (d, m, c)).collect(),
                    chains: chains
                        .into_iter()
                        .map(|((d, m), (c, e))| (d, m, c, e))
                        .collect(),
                };
                if !batch.is_empty()
                    && let Err(e) = store.write_bookkeeping(&batch).await
                {
                    tracing::error!(error = %e, entries = batch.len(), "device bookkeeping (audit, last activity) not written");
                }
                for done in waiting {
                    let _ = done.send(());
                }
            }
        });
        Self {
            tx,
            flush_asked: asked,
        }
    }

    async fn send(&self, entry: Entry) {
        if self.tx.send(entry).await.is_err() {
            tracing::error!("the bookkeeping writer stopped");
        }
    }

    pub async fn audit(&self, record: AuditRecord) {
        self.send(Entry::Audit(record)).await;
    }

    /// Last activity of a device (`module` "") or module.
    pub async fn activity(&self, device: &str, module: &str, at_ms: i64) {
        self.send(Entry::Activity(device.into(), module.into(), at_ms))
            .await;
    }

    /// The CA a device (`module` "") or module authenticated through.
    pub async fn ca(&self, device: &str, module: &str, ca: &str) {
        self.send(Entry::Ca(device.into(), module.into(), ca.into()))
            .await;
    }

    /// The chain a device (`module` "") or module last authenticated with: the SHA-256s of
    /// its certificates below the CA, space-separated, and when its leaf expires (unix ms).
    pub async fn chain(&self, device: &str, module: &str, chain: String, expires_ms: i64) {
        self.send(Entry::Chain(
            device.into(),
            module.into(),
            chain,
            expires_ms,
        ))
        .await;
    }

    /// Returns once everything handed over before the call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.send(Entry::Flush(done)).await;
        self.flush_asked.notify_one();
        let _ = wait.await;
    }
}
