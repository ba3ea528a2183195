//! The telemetry log: where every device-to-cloud message goes, numbered, and where every
//! reader (the REST read, the event stream, `messages tail`, the Event Hubs-compatible
//! endpoint) reads it. On one node it is the database's `telemetry` table, written by one task
//! that commits messages in batches, so a QoS 1 PUBACK means "on disk" without one transaction
//! per message. In a cluster it is a JetStream stream ([`crate::telemetry_stream`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use certhub_store::{Store, TelemetryBounds, TelemetryRecord};
use tokio::sync::{mpsc, oneshot, watch};

/// A message waiting to be written, and who to tell.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) record: TelemetryRecord,
    pub(crate) done: oneshot::Sender<Result<i64, String>>,
}

/// The log could not be read (the database or the stream failed).
#[derive(Debug, Clone)]
pub struct ReadError(pub String);

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<certhub_store::StoreError> for ReadError {
    fn from(e: certhub_store::StoreError) -> Self {
        Self(e.to_string())
    }
}

/// Where the log lives.
#[derive(Debug, Clone)]
enum Source {
    Table(Store),
    Stream(Arc<crate::telemetry_stream::JetStreamLog>),
}

/// A page of the log: the messages found, and how far the read examined the log (every
/// message numbered above the read's `after` and at most `examined` that the read asked for
/// is in `records`).
#[derive(Debug, Default)]
pub struct Page {
    /// Oldest first.
    pub records: Vec<TelemetryRecord>,
    /// The next page starts after this.
    pub examined: i64,
}

/// What the log holds and what it turned away, for `/metrics` and the size cap.
#[derive(Debug, Default)]
pub struct LogStats {
    /// The log's size as the cap counts it (`certhub_store::telemetry_bytes`); -1 until the
    /// start's count is in.
    pub bytes: AtomicI64,
    /// Messages (and their bytes) the size cap dropped from the front.
    pub dropped: AtomicU64,
    pub dropped_bytes: AtomicU64,
    /// Messages refused because the disk was full.
    pub refused_disk_full: AtomicU64,
    /// Whether the last write found the disk full.
    pub disk_full: AtomicBool,
    /// Bytes the writer puts into a segment of the log before it starts the next (0 until
    /// the size cap sets it: [`DEFAULT_SEGMENT_BYTES`]).
    pub segment_bytes: AtomicI64,
    /// Segments the writer started, and the size cap dropped whole.
    pub segments_started: AtomicU64,
    pub segments_dropped: AtomicU64,
}

/// A segment's size when no size cap sets one.
pub const DEFAULT_SEGMENT_BYTES: i64 = 64 << 20;

/// A segment's size under a size cap of `max_bytes`: a sixteenth of it, so that the disk holds
/// at most about a sixteenth more than the cap and a cut drops a sixteenth at a time, within
/// 64 KiB and 256 MiB.
pub fn segment_bytes_for(max_bytes: i64) -> i64 {
    (max_bytes / 16).clamp(64 << 10, 256 << 20)
}

/// What a device is told when its message could not be stored because the disk is full.
pub const DISK_FULL: &str = "the hub's disk is full: the message was not stored; the hub takes messages again once space is freed";

/// Each device's newest message, so that a read of one device walks back its own messages
/// (each points to the device's previous one, `prev_seq`) instead of scanning the log. The
/// writer links each message it writes from this map and updates it once the message is
/// committed; every [`SAVE_HEADS`] the changes are saved (`telemetry_heads`), and a start
/// loads them and adds what the log gained after the last save. See schema step 17.
#[derive(Debug)]
struct Chains {
    map: std::sync::Mutex<ChainMap>,
    /// Chains are complete for messages numbered above this; `i64::MAX`: chains are off (a
    /// second writer shares the table, so this one's map misses messages).
    known_from: AtomicI64,
}

#[derive(Debug, Default)]
struct ChainMap {
    /// Device hash (`certhub_store::device_hash`) to its newest committed message.
    heads: std::collections::HashMap<i64, i64>,
    /// Heads changed since the last save.
    dirty: std::collections::HashMap<i64, i64>,
    /// The map holds every message committed up to here.
    upto: i64,
}

/// How often the writer's map of each device's newest message is saved; a start reads what
/// the log gained since the last save.
const SAVE_HEADS: std::time::Duration = std::time::Duration::from_secs(2);

/// Most messages a read of one device walks back along its chain; a device with more than
/// that many since where the read starts is read by scanning from there (its messages are
/// then dense enough for a scan to find a page soon).
const HOPS: i64 = 4096;

/// The hops of a read's first, short walk (see [`TelemetryLog::after`]).
const FIRST_HOPS: i64 = 64;

/// A device with at least one message in this many of the log's, at its newest end, is read
/// by a scan rather than a walk.
const DENSE: i64 = 200;

impl Chains {
    /// The map as saved, plus each device's newest message above the saved point.
    async fn load(store: &Store, last: i64) -> Result<Self, certhub_store::StoreError> {
        let state = store.telemetry_chain_state().await?;
        let mut map = ChainMap {
            upto: last,
            ..ChainMap::default()
        };
        if state.known_from != i64::MAX {
            map.heads = store.telemetry_heads().await?.into_iter().collect();
            for (device, seq) in store.telemetry_newest_after(state.heads_upto).await? {
                let hash = certhub_store::device_hash(&device);
                let head = map.heads.entry(hash).or_insert(seq);
                *head = (*head).max(seq);
                map.dirty.insert(hash, *head);
            }
        }
        Ok(Self {
            map: std::sync::Mutex::new(map),
            known_from: AtomicI64::new(state.known_from),
        })
    }

    fn on(&self) -> bool {
        self.known_from.load(Ordering::Acquire) != i64::MAX
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChainMap> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Each record's device hash and the number of its device's previous message (within the
    /// batch, or committed before).
    fn link(&self, records: &[TelemetryRecord]) -> (Vec<i64>, Vec<Option<i64>>) {
        if !self.on() {
            return (Vec::new(), Vec::new());
        }
        let hashes: Vec<i64> = records
            .iter()
            .map(|r| certhub_store::device_hash(&r.device_id))
            .collect();
        let mut batch = std::collections::HashMap::with_capacity(records.len());
        let map = self.lock();
        let prev = hashes
            .iter()
            .zip(records)
            .map(|(h, r)| {
                batch
                    .insert(*h, r.seq)
                    .or_else(|| map.heads.get(h).copied())
            })
            .collect();
        (hashes, prev)
    }

    /// The batch is committed: its messages are their devices' newest.
    fn committed(&self, hashes: &[i64], records: &[TelemetryRecord], upto: i64) {
        let mut map = self.lock();
        for (h, r) in hashes.iter().zip(records) {
            map.heads.insert(*h, r.seq);
            map.dirty.insert(*h, r.seq);
        }
        map.upto = upto;
    }

    fn head(&self, device: &str) -> Option<i64> {
        self.lock()
            .heads
            .get(&certhub_store::device_hash(device))
            .copied()
    }

    /// Saves the heads changed since the last save, every [`SAVE_HEADS`], while chains are on
    /// and the writer runs (`committed` open). Also hears when another hub turned chains off.
    async fn save_now_and_then(self: Arc<Self>, store: Store, committed: watch::Receiver<i64>) {
        let mut saved = i64::MIN;
        while self.on() {
            tokio::time::sleep(SAVE_HEADS).await;
            if committed.has_changed().is_err() {
                // The writer stopped; the next start reads what this one did not save.
                return;
            }
            match store.telemetry_chain_state().await {
                Ok(state) if state.known_from == i64::MAX => {
                    self.known_from.store(i64::MAX, Ordering::Release);
                    return;
                }
                _ => {}
            }
            let (dirty, upto) = {
                let mut map = self.lock();
                (std::mem::take(&mut map.dirty), map.upto)
            };
            if dirty.is_empty() && upto == saved {
                continue;
            }
            let heads: Vec<(i64, i64)> = dirty.iter().map(|(h, s)| (*h, *s)).collect();
            match store.save_telemetry_heads(&heads, upto).await {
                Ok(()) => saved = upto,
                Err(e) => {
                    tracing::warn!(error = %e, "the telemetry log's device heads could not be saved; trying again");
                    // Back for the next try, unless a newer head came in meanwhile.
                    let mut map = self.lock();
                    for (h, s) in dirty {
                        map.dirty.entry(h).or_insert(s);
                    }
                }
            }
        }
    }

    /// Another writer numbers messages in the same table: this map misses its messages, so
    /// chains are off from here on, for every hub on this database.
    async fn off(&self, store: &Store) {
        if self.known_from.swap(i64::MAX, Ordering::AcqRel) != i64::MAX {
            tracing::warn!(
                "another hub writes this database's telemetry log: reads of one device scan the log from now on"
            );
            if let Err(e) = store.set_telemetry_known_from(i64::MAX).await {
                tracing::warn!(error = %e, "could not record that per-device chains are off");
            }
        }
    }
}

/// A handle to the log: its writer task and its readers.
#[derive(Debug, Clone)]
pub struct TelemetryLog {
    stats: Arc<LogStats>,
    /// Per-device chains (the table only).
    chains: Option<Arc<Chains>>,
    tx: mpsc::Sender<Pending>,
    /// The highest committed sequence number, for readers that follow the log.
    committed: watch::Receiver<i64>,
    source: Source,
}

/// Most messages one transaction takes.
const MAX_BATCH: usize = certhub_store::TELEMETRY_ROWS;

impl TelemetryLog {
    /// Starts the writer; sequence numbers continue after the highest stored one.
    pub async fn start(store: Store) -> Result<Self, certhub_store::StoreError> {
        let source = Source::Table(store.clone());
        store.own_telemetry_segments();
        let mut seq = store.last_telemetry_seq().await?;
        let chains = Arc::new(Chains::load(&store, seq).await?);
        let (tx, mut rx) = mpsc::channel::<Pending>(4096);
        let (committed_tx, committed) = watch::channel(seq);
        tokio::spawn(
            chains
                .clone()
                .save_now_and_then(store.clone(), committed.clone()),
        );
        let stats = Arc::new(LogStats {
            bytes: AtomicI64::new(-1),
            ..LogStats::default()
        });
        // The log's size: counted once, in the background (it reads the whole log), then kept
        // by the writer and the pruners. What is written meanwhile is added as it commits.
        {
            let (store, stats) = (store.clone(), stats.clone());
            tokio::spawn(async move {
                match store.telemetry_size().await {
                    Ok(n) => {
                        let _ =
                            stats
                                .bytes
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                                    Some(n + b + 1)
                                });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the telemetry log's size could not be counted; its size cap waits")
                    }
                }
            });
        }
        let writer_stats = stats.clone();
        let writer_chains = chains.clone();
        tokio::spawn(async move {
            let stats = writer_stats;
            let chains = writer_chains;
            let mut pending: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
            // Messages and bytes written into the newest segment since this writer started or
            // began it, and whether it began it (then that is all the segment holds).
            let mut in_segment = (0i64, 0i64);
            let mut whole_segment = false;
            loop {
                if pending.is_empty() {
                    if rx.recv_many(&mut pending, MAX_BATCH).await == 0 {
                        break;
                    }
                } else {
                    // Leftovers of the last round: top up without waiting.
                    while pending.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(p) => pending.push(p),
                            Err(_) => break,
                        }
                    }
                }
                // A power of two of them: one statement, committed on its own (see
                // `Store::append_telemetry`); the rest go first in the next round.
                let take = 1 << pending.len().ilog2();
                let mut first = seq + 1;
                let mut records = Vec::with_capacity(take);
                let mut waiting = Vec::with_capacity(take);
                for p in pending.drain(..take) {
                    seq += 1;
                    let mut record = p.record;
                    record.seq = seq;
                    records.push(record);
                    waiting.push(p.done);
                }
                let (hashes, prev) = chains.link(&records);
                let mut result = store.append_telemetry_linked(&records, &prev).await;
                // Nodes of a cluster on one PostgreSQL number messages from the same log:
                // when another node took these numbers, number the batch after the highest
                // stored one and write it again (a few times at most), rather than lose it.
                let mut tries = 1;
                while tries < 5
                    && result
                        .as_ref()
                        .is_err_and(certhub_store::StoreError::is_duplicate_key)
                {
                    tries += 1;
                    chains.off(&store).await;
                    match store.last_telemetry_seq().await {
                        Ok(last) => {
                            seq = last;
                            first = seq + 1;
                            for record in &mut records {
                                seq += 1;
                                record.seq = seq;
                            }
                            result = store.append_telemetry(&records).await;
                        }
                        Err(e) => result = Err(e),
                    }
                }
                let size: i64 = records.iter().map(certhub_store::telemetry_bytes).sum();
                if result.is_ok() {
                    if chains.on() {
                        chains.committed(&hashes, &records, seq);
                    }
                    stats.bytes.fetch_add(size, Ordering::AcqRel);
                    stats.disk_full.store(false, Ordering::Release);
                    let _ = committed_tx.send(seq);
                    in_segment.0 += records.len() as i64;
                    in_segment.1 += size;
                    let limit = match stats.segment_bytes.load(Ordering::Relaxed) {
                        0 => DEFAULT_SEGMENT_BYTES,
                        n => n,
                    };
                    if in_segment.1 >= limit {
                        // The next segment starts above every number stored (on a cluster's
                        // shared log another node may have gone further).
                        let counted = whole_segment.then_some(in_segment);
                        // Counts are kept for a segment only when this writer wrote all of it.
                        whole_segment = match store.roll_telemetry_segment(counted).await {
                            Ok(Some(next)) => {
                                seq = seq.max(next - 1);
                                stats.segments_started.fetch_add(1, Ordering::Relaxed);
                                true
                            }
                            Ok(None) => false,
                            Err(e) => {
                                tracing::warn!(error = %e, "telemetry: a new segment of the log could not be started; the writer goes on in the current one");
                                false
                            }
                        };
                        in_segment = (0, 0);
                    }
                }
                let disk_full = result
                    .as_ref()
                    .is_err_and(certhub_store::StoreError::is_disk_full);
                if let Err(e) = &result {
                    if disk_full {
                        if !stats.disk_full.swap(true, Ordering::AcqRel) {
                            tracing::error!(error = %e, "the disk is full: telemetry is refused until space is freed (lower telemetry_max_bytes, or free space)");
                        }
                        stats
                            .refused_disk_full
                            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
                    } else {
                        tracing::error!(error = %e, "telemetry could not be written");
                    }
                    // Numbers of a failed batch are not reused: the log may have gaps, never
                    // duplicates.
                }
                for (n, done) in (first..).zip(waiting) {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(n),
                        Err(_) if disk_full => Err(DISK_FULL.to_string()),
                        Err(e) => Err(e.to_string()),
                    });
                }
            }
        });
        Ok(Self {
            stats,
            chains: Some(chains),
            tx,
            committed,
            source,
        })
    }

    /// What the log holds and turned away.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Takes bytes the retention deleted off the log's size.
    pub fn forget_bytes(&self, bytes: i64) {
        let _ = self
            .stats
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(if b < 0 { b } else { (b - bytes).max(0) })
            });
    }

    /// The log of a cluster: the hub's JetStream stream (created, or its limits updated),
    /// through `client`'s NATS connection.
    pub async fn start_stream(
        client: async_nats::Client,
        hub: &str,
        limits: &crate::telemetry_stream::StreamLimits,
    ) -> Result<Self, String> {
        let log = Arc::new(
            crate::telemetry_stream::JetStreamLog::open(client.clone(), hub, limits).await?,
        );
        // A NATS cluster that is still forming may time the first requests out (seen in CI
        // with three servers starting together): tried again for up to 30 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let last = loop {
            match log.last_seq().await {
                Ok(last) => break last,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e.0, "the telemetry stream does not answer yet; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.0),
            }
        };
        let (tx, rx) = mpsc::channel::<Pending>(4096);
        let (committed_tx, committed) = watch::channel(last);
        log.start(client, hub, rx, committed_tx).await?;
        Ok(Self {
            stats: Default::default(),
            chains: None,
            tx,
            committed,
            source: Source::Stream(log),
        })
    }

    /// In a cluster, the stream messages (batches) this node wrote.
    pub fn stream_batches(&self) -> Option<u64> {
        match &self.source {
            Source::Table(_) => None,
            Source::Stream(log) => Some(log.batches()),
        }
    }

    /// Whether the log is a JetStream stream (which keeps its own limits) rather than a table.
    pub fn is_stream(&self) -> bool {
        matches!(self.source, Source::Stream(_))
    }

    /// Messages numbered above `after`, oldest first, optionally of one device (and its
    /// modules): at most `limit`, and beyond the first at most [`certhub_store::PAGE_BYTES`]
    /// of bodies. The page says how far it examined the log: a read of one device may stop
    /// before the end of a cluster's log (which has no index by device), and the next read
    /// goes on from there.
    pub async fn after(
        &self,
        after: i64,
        device: Option<&str>,
        limit: i64,
    ) -> Result<Page, ReadError> {
        // Everything up to here is committed and visible to the read below (and the chains'
        // heads, updated before the number is published, cover it).
        let upto = *self.committed.borrow();
        match &self.source {
            Source::Table(store) => {
                let records = match (device, &self.chains) {
                    (Some(device), Some(chains)) if chains.on() => {
                        self.by_chain(store, chains, after, device, limit).await?
                    }
                    _ => store.telemetry_after(after, device, limit).await?,
                };
                let bytes: i64 = records.iter().map(|r| r.body.len() as i64).sum();
                let last = records.last().map_or(after, |r| r.seq);
                // A page cut short by its count or its bytes ends at its last message; else
                // the read saw everything committed when it began.
                let examined =
                    if records.len() as i64 >= limit || bytes >= certhub_store::PAGE_BYTES {
                        last
                    } else {
                        last.max(upto).max(after)
                    };
                Ok(Page { records, examined })
            }
            Source::Stream(log) => {
                log.after(after, upto, device, limit, certhub_store::PAGE_BYTES)
                    .await
            }
        }
    }

    /// The newest `n` messages of one device (and its modules), oldest first, found by walking
    /// back its chain; None where there are no chains (a cluster's stream, chains off) or the
    /// walk reached messages stored before them (a log older than schema step 17) with fewer
    /// than `n`: the caller then looks through the log instead.
    pub async fn latest(
        &self,
        device: &str,
        n: usize,
    ) -> Result<Option<Vec<TelemetryRecord>>, ReadError> {
        let (Source::Table(store), Some(chains)) = (&self.source, &self.chains) else {
            return Ok(None);
        };
        let known_from = chains.known_from.load(Ordering::Acquire);
        if known_from == i64::MAX {
            return Ok(None);
        }
        let Some(head) = chains.head(device) else {
            return Ok((known_from == 0).then(Vec::new));
        };
        let hops = i64::try_from(n)
            .unwrap_or(i64::MAX)
            .saturating_mul(2)
            .max(64);
        let walk = store
            .telemetry_chain(head, device, known_from, hops)
            .await?;
        if walk.mine.len() < n && walk.ended && known_from > 0 {
            return Ok(None);
        }
        let newest = &walk.mine[walk.mine.len().saturating_sub(n)..];
        Ok(Some(store.telemetry_at(newest, Some(device)).await?))
    }

    /// One device's messages above `after` from its chain: a scan of what came before the
    /// chains (a log older than schema step 17), then the oldest of the messages found by
    /// walking back from the device's newest; a device with more than [`HOPS`] messages since
    /// `after`, or whose newest [`FIRST_HOPS`] are dense in the log, is scanned for instead.
    async fn by_chain(
        &self,
        store: &Store,
        chains: &Chains,
        after: i64,
        device: &str,
        limit: i64,
    ) -> Result<Vec<TelemetryRecord>, ReadError> {
        let known_from = chains.known_from.load(Ordering::Acquire);
        let mut records = Vec::new();
        if after < known_from {
            records = store
                .telemetry_between(after, known_from, Some(device), limit)
                .await?;
            let bytes: i64 = records.iter().map(|r| r.body.len() as i64).sum();
            if records.len() as i64 >= limit || bytes >= certhub_store::PAGE_BYTES {
                return Ok(records);
            }
        }
        let from = after.max(known_from);
        let Some(head) = chains.head(device) else {
            return Ok(records);
        };
        let want = limit - records.len() as i64;
        // A short walk first: a device whose newest messages are dense in the log (one in
        // [`DENSE`] or more) is read faster by a scan, which fills a page soon; any other walks
        // on.
        let mut walk = store
            .telemetry_chain(head, device, from, FIRST_HOPS)
            .await?;
        if !walk.ended {
            let oldest = walk.oldest.unwrap_or(head);
            if head - oldest > FIRST_HOPS * DENSE {
                let rest = store.telemetry_chain(oldest, device, from, HOPS).await?;
                walk.mine.extend(rest.mine);
                walk.mine.sort_unstable();
                walk.mine.dedup();
                walk.ended = rest.ended;
            }
        }
        let more = if walk.ended {
            let take = walk.mine.len().min(usize::try_from(want).unwrap_or(0));
            store.telemetry_at(&walk.mine[..take], Some(device)).await?
        } else {
            store.telemetry_after(from, Some(device), want).await?
        };
        records.extend(more);
        Ok(records)
    }

    /// The number just before the first message enqueued at (`inclusive`) or after `ms`.
    pub async fn seq_before_time(&self, ms: i64, inclusive: bool) -> Result<i64, ReadError> {
        match &self.source {
            Source::Table(store) => Ok(store.telemetry_seq_before_time(ms, inclusive).await?),
            Source::Stream(log) => log.seq_before_time(ms, inclusive).await,
        }
    }

    /// The oldest and newest messages kept.
    pub async fn bounds(&self) -> Result<TelemetryBounds, ReadError> {
        match &self.source {
            Source::Table(store) => Ok(store.telemetry_bounds().await?),
            Source::Stream(log) => log.bounds().await,
        }
    }

    /// A receiver that changes whenever messages are committed.
    pub fn follow(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// Writes a message; returns its sequence number once it is durable.
    pub async fn append(&self, record: TelemetryRecord) -> Result<i64, String> {
        let wait = self.submit(record).await?;
        wait.await
    }

    /// Hands a message to the writer if its queue has room now; else gives it back.
    pub fn try_submit(&self, record: TelemetryRecord) -> Result<Committed, TelemetryRecord> {
        let (done, wait) = oneshot::channel();
        match self.tx.try_send(Pending { record, done }) {
            Ok(()) => Ok(Committed(wait)),
            Err(mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) => {
                Err(p.record)
            }
        }
    }

    /// Hands a message to the writer (waiting only for room in its queue); the answer says
    /// when it is durable. Messages are committed in the order they are submitted.
    pub async fn submit(&self, record: TelemetryRecord) -> Result<Committed, String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { record, done })
            .await
            .map_err(|_| "the telemetry writer stopped".to_string())?;
        Ok(Committed(wait))
    }
}

/// The writer's answer for one submitted message: its sequence number once durable. Awaiting
/// it is cancel-safe (a `select!` may poll it again).
#[derive(Debug)]
pub struct Committed(oneshot::Receiver<Result<i64, String>>);

impl Future for Committed {
    type Output = Result<i64, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(answer) => answer,
            Err(_) => Err("the telemetry writer stopped".to_string()),
        })
    }
}

/// The size cap: whenever the log holds more than `max_bytes`, the oldest messages go until it
/// holds 90 % of it, with an audit record (`telemetry.dropped`) and the metrics
/// `certhub_telemetry_dropped_total` and `certhub_telemetry_dropped_bytes_total`. Checked
/// every second; a cluster's stream keeps its own limits.
///
/// The log is in segments of a sixteenth of the cap ([`segment_bytes_for`]): the oldest are
/// dropped whole. Rows are deleted from the front only where a segment is too large to drop
/// whole (a log kept from before segments, or one grown across restarts).
pub async fn enforce_size_cap(state: crate::AppState, max_bytes: i64) {
    let log = state.telemetry().clone();
    let Source::Table(store) = &log.source else {
        return;
    };
    log.stats
        .segment_bytes
        .store(segment_bytes_for(max_bytes), Ordering::Relaxed);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let bytes = log.stats.bytes.load(Ordering::Acquire);
        if bytes <= max_bytes {
            continue;
        }
        let target = max_bytes / 10 * 9;
        let (mut n, mut freed, mut end) = (0u64, 0i64, None);
        let mut failed = None;
        match store.telemetry_segments(false).await {
            Ok(list) => {
                let mut left = bytes;
                for (segment, next) in list.iter().zip(list.iter().skip(1)) {
                    let Some((messages, size)) = segment.counted else {
                        break;
                    };
                    // Half the cap stays: a segment larger than that is cut row by row below.
                    if left <= target || left - size < max_bytes / 2 {
                        break;
                    }
                    match store.drop_telemetry_segment(segment.id).await {
                        Ok(_) => {
                            log.stats.segments_dropped.fetch_add(1, Ordering::Relaxed);
                            n += messages as u64;
                            freed += size;
                            left -= size;
                            end = Some(next.first_seq);
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                if failed.is_none() && left > target {
                    match cut_rows(store, left - target).await {
                        Ok(Some((rows, row_bytes, cut_end))) => {
                            n += rows;
                            freed += row_bytes;
                            end = Some(cut_end);
                        }
                        Ok(None) => {}
                        Err(e) => failed = Some(e.to_string()),
                    }
                }
            }
            Err(e) => failed = Some(e.to_string()),
        }
        if let Some(e) = failed {
            tracing::warn!(error = %e, "telemetry size cap: messages could not be dropped");
        }
        let Some(end) = end else {
            continue;
        };
        log.forget_bytes(freed);
        log.stats.dropped.fetch_add(n, Ordering::Relaxed);
        log.stats
            .dropped_bytes
            .fetch_add(u64::try_from(freed).unwrap_or(0), Ordering::Relaxed);
        let detail = format!(
            "the log held {bytes} bytes, over telemetry_max_bytes {max_bytes}: the oldest {n} messages ({freed} bytes, numbered below {end}) were dropped"
        );
        tracing::warn!(dropped = n, bytes = freed, "telemetry size cap");
        state
            .audit(
                &crate::state::System,
                "telemetry.dropped",
                "telemetry",
                "ok",
                &detail,
            )
            .await;
    }
}

/// Deletes rows from the front of the log to free `excess` bytes: (messages, bytes, the first
/// number kept).
async fn cut_rows(
    store: &Store,
    excess: i64,
) -> Result<Option<(u64, i64, i64)>, certhub_store::StoreError> {
    let Some((end, freed)) = store.telemetry_cut(excess).await? else {
        return Ok(None);
    };
    let n = store.drop_telemetry_before(end).await?;
    Ok(Some((n, freed, end)))
}
