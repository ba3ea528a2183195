//! The telemetry log of a cluster (issue 15): a NATS JetStream stream every node writes and
//! reads, so that a message acknowledged to a device is in the stream (replicated when the
//! stream is) whichever node took it, and every reader on every node sees one log in one order.
//!
//! - One stream per hub, `CERTHUB_{hub}_TELEMETRY`, kept by JetStream's own limits: the hub's
//!   telemetry retention as `max_age`, its message cap as `max_msgs` (stream messages, each
//!   holding one or more device messages), the oldest discarded first.
//! - A stream message is a **batch** of device messages (header `Certhub-Batch: 1`, subject
//!   `certhub.{hub}.telemetry.batch`): a frame of records, each the device, the module, the
//!   properties (`{"system": .., "application": ..}`) and the body. What NATS and JetStream
//!   cost per stream message (three copies on a replicated stream) is thus shared by every
//!   device message of the batch (docs/research/cluster/telemetry-batching.md).
//! - Batches form under load, not by a timer: the writer keeps at most [`IN_FLIGHT`] batches
//!   unacknowledged, and the next batch takes everything that queued meanwhile (up to
//!   [`PER_BATCH`] messages or [`BATCH_BYTES`]). An idle hub sends every message as a batch of
//!   one, as fast as before; a busy one sends bigger batches as its acks take longer.
//! - A device message's number is `stream sequence * 1024 + its index in the batch`: rising,
//!   with gaps. It is the number everywhere (REST `from`, Server-Sent Events ids, Event Hubs
//!   offsets and sequence numbers); the time JetStream stored the batch is the enqueued time of
//!   all its messages. A message of the older one-record form (device in headers, body as the
//!   payload) reads as a batch of one.
//! - The writer answers a session (PUBACK, AMQP disposition, HTTPS 204) only when JetStream's
//!   ack for the batch holding its message comes back: the ack is the commit.
//! - Readers follow new messages through a watch of the highest number known to be stored
//!   (`seq * 1024 + 1023` once batch `seq` is: everything in it): this node's acks at once, other nodes' through a tick on `certhub.{hub}.telemetry-tick` (core
//!   NATS, coalesced), and the stream's state once a second as a net. JetStream numbers
//!   messages in the order it stores them, so once a number is acknowledged every lower one is
//!   stored too: a reader that has read up to it misses nothing later.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use certhub_store::TelemetryRecord;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::telemetry::{Page, Pending, ReadError};

const DEVICE: &str = "Certhub-Device";
const MODULE: &str = "Certhub-Module";
const PROPERTIES: &str = "Certhub-Properties";
const BATCH: &str = "Certhub-Batch";

/// Device messages a batch holds at most; numbers are `stream sequence * PER_BATCH + index`.
pub(crate) const PER_BATCH: i64 = 1024;
/// A batch stops growing at this many bytes (NATS's default largest message is 1 MiB; one
/// device message is at most 256 KiB), or short of the server's own largest message when that
/// is smaller.
pub(crate) const BATCH_BYTES: usize = 512 * 1024;
/// Batches sent and not yet acknowledged, at most.
pub(crate) const IN_FLIGHT: usize = 4;
/// A read of one device's messages examines at most this many batches (the stream has no
/// index by device); the page says how far it got. (`messages tail --device` asks every
/// half second: this is far more than a busy hub writes in that time.)
const DEVICE_SCAN: u64 = 4096;

/// The number of message `index` of batch `seq`.
fn number(seq: u64, index: usize) -> i64 {
    seq as i64 * PER_BATCH + index as i64
}

/// The highest number batch `seq` may hold: "everything in batch `seq`".
fn whole(seq: u64) -> i64 {
    number(seq, PER_BATCH as usize - 1)
}

/// The batch that holds number `n`.
fn batch_of(n: i64) -> u64 {
    (n.max(0) / PER_BATCH) as u64
}

/// How the stream is kept.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Messages older than this go.
    pub max_age: Duration,
    /// At most this many messages are kept (the oldest go first).
    pub max_messages: i64,
    /// Copies of the stream on NATS servers; `None`: 3 when the server is in a cluster, else 1.
    pub replicas: Option<usize>,
}

/// The stream and how to reach it.
#[derive(Debug)]
pub(crate) struct JetStreamLog {
    js: jetstream::Context,
    stream: stream::Stream,
    name: String,
    /// Where batches are published.
    subject: String,
    /// Batches this node had acknowledged.
    batches: std::sync::atomic::AtomicU64,
    /// Where a batch stops growing: [`BATCH_BYTES`], or less on a server whose largest
    /// message (`max_payload`) is smaller.
    batch_bytes: usize,
}

impl JetStreamLog {
    /// Creates the stream, or brings its limits in line with `limits`.
    pub(crate) async fn open(
        client: async_nats::Client,
        hub: &str,
        limits: &StreamLimits,
    ) -> Result<Self, String> {
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .build(client.clone());
        let name = format!(
            "CERTHUB_{}_TELEMETRY",
            hub.replace(['.', '*', '>', ' '], "_")
        );
        let subject_prefix = format!("certhub.{hub}.telemetry");
        let replicas = limits.replicas.unwrap_or_else(|| {
            if client.server_info().cluster.is_some() {
                3
            } else {
                1
            }
        });
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("certhub hub {hub}: device telemetry")),
            subjects: vec![format!("{subject_prefix}.*")],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: limits.max_age,
            max_messages: limits.max_messages,
            allow_direct: true,
            ..Default::default()
        };
        // A NATS cluster that is starting has no JetStream leader for a few seconds: wait for
        // it (up to 30 s), saying why.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, stream = name, "the telemetry stream is not ready; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "the telemetry stream {name} ({replicas} replicas): {e} (is JetStream on: nats-server -js, and for {replicas} replicas a cluster of at least {replicas} servers?)"
                    ));
                }
            }
        };
        let have = stream.cached_info().config.clone();
        if have.max_age != config.max_age || have.max_messages != config.max_messages {
            let update = stream::Config {
                max_age: config.max_age,
                max_messages: config.max_messages,
                ..have
            };
            // As above: a forming cluster may time a request out; tried again until the
            // deadline.
            stream = loop {
                let updated = match js.update_stream(update.clone()).await {
                    Ok(_) => js.get_stream(&name).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match updated {
                    Ok(s) => break s,
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, stream = name, "the telemetry stream's limits are not updated yet; trying again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        return Err(format!(
                            "updating the limits of the telemetry stream {name}: {e}"
                        ));
                    }
                }
            };
        }
        Ok(Self {
            js,
            stream,
            name,
            subject: format!("{subject_prefix}.batch"),
            batches: Default::default(),
            batch_bytes: (client.server_info().max_payload / 2).clamp(4096, BATCH_BYTES),
        })
    }

    /// Batches this node had acknowledged (its telemetry messages over this: the mean batch).
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A bound on the numbers stored: every message is numbered at most this.
    pub(crate) async fn last_seq(&self) -> Result<i64, ReadError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| ReadError(format!("the telemetry stream {}: {e}", self.name)))?;
        Ok(whole(info.state.last_sequence))
    }

    /// Starts the writer (taking messages from `rx`), the tick it sends other nodes and the
    /// ticks it takes from them; `committed` is the readers' watch.
    pub(crate) async fn start(
        self: &Arc<Self>,
        client: async_nats::Client,
        hub: &str,
        mut rx: mpsc::Receiver<Pending>,
        committed: watch::Sender<i64>,
    ) -> Result<(), String> {
        let tick_subject = format!("certhub.{hub}.telemetry-tick");
        let mut ticks = client
            .subscribe(tick_subject.clone())
            .await
            .map_err(|e| format!("subscribing to {tick_subject}: {e}"))?;
        let advance = |committed: &watch::Sender<i64>, seq: i64| {
            committed.send_if_modified(|v| {
                if seq > *v {
                    *v = seq;
                    true
                } else {
                    false
                }
            });
        };
        // Other nodes' messages.
        {
            let committed = committed.clone();
            tokio::spawn(async move {
                while let Some(m) = ticks.next().await {
                    if let Some(seq) = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                    {
                        advance(&committed, seq);
                    }
                }
            });
        }
        // The net under the ticks (lost while NATS reconnected, say).
        {
            let committed = committed.clone();
            let log = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if committed.is_closed() {
                        break;
                    }
                    if let Ok(seq) = log.last_seq().await {
                        advance(&committed, seq);
                    }
                }
            });
        }
        // This node's acks, told to the others at most every few milliseconds.
        let (acked_tx, mut acked) = watch::channel(0i64);
        {
            let client = client.clone();
            tokio::spawn(async move {
                while acked.changed().await.is_ok() {
                    let seq = *acked.borrow_and_update();
                    let _ = client
                        .publish(tick_subject.clone(), seq.to_string().into())
                        .await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
        let log = self.clone();
        tokio::spawn(async move {
            let mut acks = futures_util::stream::FuturesUnordered::new();
            // The first message of the next batch, when it did not fit in the last one.
            let mut held: Option<Pending> = None;
            let mut open = true;
            loop {
                // A batch goes when one may and something waits: everything queued, up to the
                // limits.
                if acks.len() < IN_FLIGHT {
                    let first = held.take().or_else(|| rx.try_recv().ok());
                    if let Some(first) = first {
                        let mut bytes = frame_len(&first.record);
                        let mut batch = vec![first];
                        while batch.len() < PER_BATCH as usize {
                            let Ok(p) = rx.try_recv() else { break };
                            let len = frame_len(&p.record);
                            if bytes + len > log.batch_bytes {
                                held = Some(p);
                                break;
                            }
                            bytes += len;
                            batch.push(p);
                        }
                        let sent = log.publish(&batch).await;
                        let waiting: Vec<_> = batch.into_iter().map(|p| p.done).collect();
                        match sent {
                            Ok(ack) => acks.push(async move {
                                let result = ack.await.map(|a| a.sequence).map_err(|e| {
                                    format!("the telemetry stream did not acknowledge: {e}")
                                });
                                (waiting, result)
                            }),
                            Err(e) => {
                                for done in waiting {
                                    let _ = done.send(Err(e.clone()));
                                }
                            }
                        }
                        continue;
                    }
                }
                tokio::select! {
                    p = rx.recv(), if open && acks.len() < IN_FLIGHT => match p {
                        Some(p) => held = Some(p),
                        None => open = false,
                    },
                    Some((waiting, result)) = acks.next(), if !acks.is_empty() => {
                        match result {
                            Ok(seq) => {
                                log.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                advance(&committed, whole(seq));
                                acked_tx.send_if_modified(|v| {
                                    if whole(seq) > *v { *v = whole(seq); true } else { false }
                                });
                                for (index, done) in waiting.into_iter().enumerate() {
                                    let _ = done.send(Ok(number(seq, index)));
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, messages = waiting.len(), "telemetry not stored");
                                for done in waiting {
                                    let _ = done.send(Err(e.clone()));
                                }
                            }
                        }
                    }
                    else => break,
                }
            }
        });
        Ok(())
    }

    /// Sends one batch to the stream; the future answers when JetStream has it.
    async fn publish(
        &self,
        batch: &[Pending],
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(BATCH, "1");
        let records: Vec<&TelemetryRecord> = batch.iter().map(|p| &p.record).collect();
        self.js
            .publish_with_headers(self.subject.clone(), headers, encode(&records).into())
            .await
            .map_err(|e| format!("telemetry not sent to the stream: {e}"))
    }

    fn failed(&self, e: &dyn std::fmt::Display) -> ReadError {
        ReadError(format!("reading the telemetry stream {}: {e}", self.name))
    }

    /// The messages of stream message `seq`, from the stream's leader (which has every
    /// acknowledged message); `None` when there is none (removed by the limits, or not yet
    /// written).
    async fn get(&self, seq: u64) -> Result<Option<Stored>, ReadError> {
        use jetstream::stream::RawMessageErrorKind;
        if seq == 0 {
            return Ok(None);
        }
        match self.stream.get_raw_message(seq).await {
            Ok(m) => decode(&m).map(Some).map_err(|e| self.failed(&e)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// Messages numbered above `after` and at most `upto` (known to be stored), oldest first,
    /// at most `limit` of them and (beyond the first) at most `max_bytes` of bodies; of one
    /// device (and its modules) when `device` is given, up to the stream's last message
    /// (beyond `upto`), examining at most [`DEVICE_SCAN`] batches.
    ///
    /// Read from the stream's leader, batch by batch (no consumer: creating one is a write to
    /// the NATS cluster's metadata, too costly for every page of every reader), a few at once:
    /// as many as the page still needs at the batch size seen so far.
    pub(crate) async fn after(
        &self,
        after: i64,
        upto: i64,
        device: Option<&str>,
        limit: i64,
        max_bytes: i64,
    ) -> Result<Page, ReadError> {
        let limit = limit.clamp(1, 10_000) as usize;
        let mut page = Page {
            records: Vec::new(),
            examined: after,
        };
        if upto <= after && device.is_none() {
            return Ok(page);
        }
        let mut bytes = 0i64;
        let mut next = batch_of(after.max(0).saturating_add(1));
        let end = match device {
            // What the stream's leader holds now, not only what this node has heard of: a
            // device's message acknowledged through another node a moment ago is read back
            // (`upto` follows other nodes' acks through ticks a few milliseconds late).
            Some(_) => {
                let info = self.stream.get_info().await.map_err(|e| self.failed(&e))?;
                batch_of(upto)
                    .max(info.state.last_sequence)
                    .min(next + DEVICE_SCAN - 1)
            }
            None => batch_of(upto),
        };
        let mut window = 1u64;
        let mut read = 0u64;
        let mut checked_start = false;
        'pages: while next <= end {
            let count = window.min(end - next + 1);
            let batches =
                futures_util::future::join_all((next..next + count).map(|s| self.get(s))).await;
            for (seq, batch) in (next..next + count).zip(batches) {
                let Some(batch) = batch? else {
                    // Before the oldest batch kept: start at it.
                    if !checked_start {
                        checked_start = true;
                        let info = self.stream.get_info().await.map_err(|e| self.failed(&e))?;
                        if info.state.first_sequence > seq {
                            next = info.state.first_sequence;
                            page.examined = page.examined.max(whole(next - 1));
                            continue 'pages;
                        }
                    }
                    // Removed by the limits meanwhile: skipped.
                    page.examined = page.examined.max(whole(seq));
                    continue;
                };
                checked_start = true;
                read += 1;
                for r in batch.records {
                    if r.seq <= after || device.is_some_and(|d| d != r.device_id) {
                        continue;
                    }
                    bytes += r.body.len() as i64;
                    page.examined = r.seq;
                    page.records.push(r);
                    if page.records.len() >= limit || bytes >= max_bytes {
                        return Ok(page);
                    }
                }
                page.examined = page.examined.max(whole(seq));
            }
            next += count;
            window = match device {
                Some(_) => 32,
                None => {
                    let per_batch = (page.records.len() as u64 / read.max(1)).max(1);
                    ((limit - page.records.len()) as u64 / per_batch + 1).clamp(1, 32)
                }
            };
        }
        Ok(page)
    }

    /// The number just before the first message stored at or after `ms` (after it unless
    /// `inclusive`): where a reader that starts from that time begins. A binary search by the
    /// time JetStream stored each batch (it rises with the numbers); all messages of a batch
    /// share its time.
    pub(crate) async fn seq_before_time(&self, ms: i64, inclusive: bool) -> Result<i64, ReadError> {
        let info = self.stream.get_info().await.map_err(|e| self.failed(&e))?;
        let (mut lo, mut hi) = (info.state.first_sequence, info.state.last_sequence + 1);
        if info.state.messages == 0 {
            return Ok(whole(info.state.last_sequence));
        }
        // The first batch in [lo, hi) whose time is late enough; hi when none is.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let late = match self.get(mid).await? {
                Some(b) => {
                    if inclusive {
                        b.enqueued_ms >= ms
                    } else {
                        b.enqueued_ms > ms
                    }
                }
                // Removed by the limits meanwhile: older than anything kept.
                None => false,
            };
            if late {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(whole(lo - 1))
    }

    /// The oldest and newest messages kept.
    pub(crate) async fn bounds(&self) -> Result<certhub_store::TelemetryBounds, ReadError> {
        let info = self.stream.get_info().await.map_err(|e| self.failed(&e))?;
        let s = &info.state;
        if s.messages == 0 {
            return Ok(certhub_store::TelemetryBounds::default());
        }
        // The newest message's number: the last batch's last index.
        let last = match self.get(s.last_sequence).await? {
            Some(b) => b.records.last().map_or(whole(s.last_sequence), |r| r.seq),
            None => whole(s.last_sequence),
        };
        Ok(certhub_store::TelemetryBounds {
            first_seq: Some(number(s.first_sequence, 0)),
            last: Some((last, unix_ms(s.last_timestamp))),
        })
    }
}

fn unix_ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A stream message read back: its device messages, numbered.
#[derive(Debug)]
struct Stored {
    enqueued_ms: i64,
    records: Vec<TelemetryRecord>,
}

/// The bytes `record` takes in a batch's frame.
fn frame_len(r: &TelemetryRecord) -> usize {
    1 + 4 * 3
        + r.device_id.len()
        + r.module_id.as_ref().map_or(0, |m| 4 + m.len())
        + r.properties.len()
        + r.body.len()
}

/// A batch's frame: the count (u32, big-endian), then per message a flag byte (1: a module
/// follows), then the device id, the module id (when flagged), the properties and the body,
/// each as a u32 length and its bytes.
fn encode(records: &[&TelemetryRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + records.iter().map(|r| frame_len(r)).sum::<usize>());
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        out.push(u8::from(r.module_id.is_some()));
        put(&mut out, r.device_id.as_bytes());
        if let Some(m) = &r.module_id {
            put(&mut out, m.as_bytes());
        }
        put(&mut out, r.properties.as_bytes());
        put(&mut out, &r.body);
    }
    out
}

/// A batch's messages (device, module, properties, body), or what is wrong with its frame.
type Fields = (String, Option<String>, String, Vec<u8>);

fn decode_frame(mut b: &[u8]) -> Result<Vec<Fields>, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err(format!("the frame ends {} bytes early", n - b.len()));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn length(b: &mut &[u8]) -> Result<usize, String> {
        let n = take(b, 4)?;
        Ok(u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
    }
    fn text(b: &mut &[u8]) -> Result<String, String> {
        let n = length(b)?;
        String::from_utf8(take(b, n)?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
    let count = length(&mut b)?;
    if count == 0 || count > PER_BATCH as usize {
        return Err(format!("the frame says it holds {count} messages"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = take(&mut b, 1)?[0];
        let device = text(&mut b)?;
        let module = if flags & 1 == 1 {
            Some(text(&mut b)?)
        } else {
            None
        };
        let properties = text(&mut b)?;
        let n = length(&mut b)?;
        let body = take(&mut b, n)?.to_vec();
        out.push((device, module, properties, body));
    }
    if !b.is_empty() {
        return Err(format!(
            "{} bytes after the last message of the frame",
            b.len()
        ));
    }
    Ok(out)
}

/// A stored stream message as the hub's records: a batch, or one message of the older
/// one-record form (a batch of one).
fn decode(m: &jetstream::message::StreamMessage) -> Result<Stored, String> {
    let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
    let enqueued_ms = unix_ms(m.time);
    let fields = if header(BATCH).is_some() {
        decode_frame(&m.payload).map_err(|e| format!("batch {}: {e}", m.sequence))?
    } else {
        let device_id = header(DEVICE).ok_or_else(|| {
            format!(
                "message {} has no {DEVICE} header (not written by certhub?)",
                m.sequence
            )
        })?;
        vec![(
            device_id,
            header(MODULE),
            header(PROPERTIES).unwrap_or_else(|| "{}".into()),
            m.payload.to_vec(),
        )]
    };
    let records = fields
        .into_iter()
        .enumerate()
        .map(
            |(index, (device_id, module_id, properties, body))| TelemetryRecord {
                seq: number(m.sequence, index),
                device_id,
                module_id,
                enqueued_ms,
                properties,
                body,
            },
        )
        .collect();
    Ok(Stored {
        enqueued_ms,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(device: &str, module: Option<&str>, body: &[u8]) -> TelemetryRecord {
        TelemetryRecord {
            seq: 0,
            device_id: device.into(),
            module_id: module.map(str::to_string),
            enqueued_ms: 0,
            properties: r#"{"system":{},"application":{"a":"b"}}"#.into(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_frame_reads_back_what_was_written() {
        let a = record("widget-ü", None, b"");
        let b = record("widget/x", Some("mod"), &[0, 1, 2, 255]);
        let frame = encode(&[&a, &b]);
        assert_eq!(frame.len(), 4 + frame_len(&a) + frame_len(&b));
        let back = decode_frame(&frame).expect("decodes");
        assert_eq!(
            back,
            vec![
                (a.device_id, None, a.properties, a.body),
                (b.device_id, b.module_id, b.properties, b.body),
            ]
        );
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic() {
        let frame = encode(&[&record("w", Some("m"), b"hello")]);
        for cut in 0..frame.len() {
            assert!(decode_frame(&frame[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = frame.clone();
        longer.push(0);
        assert!(decode_frame(&longer).is_err());
        assert!(decode_frame(&[0, 0, 0, 0]).is_err(), "no messages");
        assert!(decode_frame(&[0xff, 0xff, 0xff, 0xff]).is_err(), "too many");
    }

    fn stored(sequence: u64, headers: &[(&str, &str)], payload: Vec<u8>) -> Stored {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        let m = jetstream::message::StreamMessage {
            subject: "certhub.hub.telemetry.batch".into(),
            sequence,
            headers: map,
            payload: payload.into(),
            time: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a time"),
        };
        decode(&m).expect("decodes")
    }

    #[test]
    fn a_batch_and_an_older_one_record_message_read_back_numbered() {
        let a = record("w1", None, b"one");
        let b = record("w2", Some("m"), b"two");
        let batch = stored(3, &[(BATCH, "1")], encode(&[&a, &b]));
        assert_eq!(batch.enqueued_ms, 1_700_000_000_000);
        let got: Vec<_> = batch
            .records
            .iter()
            .map(|r| {
                (
                    r.seq,
                    r.device_id.as_str(),
                    r.module_id.as_deref(),
                    r.enqueued_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (3072, "w1", None, 1_700_000_000_000),
                (3073, "w2", Some("m"), 1_700_000_000_000)
            ]
        );
        // Written before batches: the device in headers, the body as the payload.
        let old = stored(
            2,
            &[(DEVICE, "w3"), (MODULE, "x"), (PROPERTIES, "{}")],
            b"old".to_vec(),
        );
        assert_eq!(old.records.len(), 1);
        let r = &old.records[0];
        assert_eq!(
            (
                r.seq,
                r.device_id.as_str(),
                r.module_id.as_deref(),
                &r.body[..]
            ),
            (2048, "w3", Some("x"), &b"old"[..])
        );
    }

    #[test]
    fn numbers_rise_through_batches() {
        assert_eq!(number(1, 0), 1024);
        assert_eq!(whole(1), 2047);
        assert!(whole(1) < number(2, 0));
        assert_eq!(batch_of(number(7, 1023)), 7);
        assert_eq!(batch_of(whole(6) + 1), 7);
        assert_eq!(batch_of(-5), 0);
    }
}
