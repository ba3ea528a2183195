//! The telemetry log of a cluster (issue 15): a NATS JetStream stream every node writes and
//! reads, so that a message acknowledged to a device is in the stream (replicated when the
//! stream is) whichever node took it, and every reader on every node sees one log in one order.
//!
//! - One stream per hub, `CERTHUB_{hub}_TELEMETRY`, on the subjects
//!   `certhub.{hub}.telemetry.{hex(device id)}` (hex: ids may hold characters subjects may
//!   not), kept by JetStream's own limits: the hub's telemetry retention as `max_age`, its
//!   message cap as `max_msgs`, the oldest discarded first.
//! - A message is the device's body as the payload, with the device, the module and the
//!   properties (`{"system": .., "application": ..}`) as headers. The stream's sequence number
//!   is the message's number everywhere (REST `from`, Server-Sent Events ids, Event Hubs
//!   offsets and sequence numbers), and the time JetStream stored it is its enqueued time.
//! - The writer publishes without waiting for each ack before the next, and answers the
//!   session (PUBACK, AMQP disposition, HTTPS 204) only when JetStream's ack for that message
//!   comes back: the ack is the commit.
//! - Readers follow new messages through a watch of the highest number known to be stored: this
//!   node's acks at once, other nodes' through a tick on `certhub.{hub}.telemetry-tick` (core
//!   NATS, coalesced), and the stream's state once a second as a net. JetStream numbers
//!   messages in the order it stores them, so once a number is acknowledged every lower one is
//!   stored too: a reader that has read up to it misses nothing later.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use certhub_store::TelemetryRecord;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::telemetry::{Pending, ReadError};

const DEVICE: &str = "Certhub-Device";
const MODULE: &str = "Certhub-Module";
const PROPERTIES: &str = "Certhub-Properties";

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
    subject_prefix: String,
}

impl JetStreamLog {
    /// The subject of `device`'s messages.
    fn subject(&self, device: &str) -> String {
        format!(
            "{}.{}",
            self.subject_prefix,
            crate::random::hex(device.as_bytes())
        )
    }

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
            js.update_stream(update)
                .await
                .map_err(|e| format!("updating the limits of the telemetry stream {name}: {e}"))?;
            stream = js
                .get_stream(&name)
                .await
                .map_err(|e| format!("the telemetry stream {name}: {e}"))?;
        }
        Ok(Self {
            js,
            stream,
            name,
            subject_prefix,
        })
    }

    /// The highest number stored.
    pub(crate) async fn last_seq(&self) -> Result<i64, ReadError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| ReadError(format!("the telemetry stream {}: {e}", self.name)))?;
        Ok(info.state.last_sequence as i64)
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
            loop {
                tokio::select! {
                    p = rx.recv() => {
                        let Some(p) = p else { break };
                        match log.publish(&p.record).await {
                            Ok(ack) => acks.push(async move {
                                let result = ack
                                    .await
                                    .map(|a| a.sequence as i64)
                                    .map_err(|e| format!("the telemetry stream did not acknowledge: {e}"));
                                (p.done, result)
                            }),
                            Err(e) => {
                                let _ = p.done.send(Err(e));
                            }
                        }
                    }
                    Some((done, result)) = acks.next(), if !acks.is_empty() => {
                        if let Ok(seq) = &result {
                            advance(&committed, *seq);
                            acked_tx.send_if_modified(|v| {
                                if *seq > *v { *v = *seq; true } else { false }
                            });
                        } else if let Err(e) = &result {
                            tracing::error!(error = %e, "telemetry not stored");
                        }
                        let _: Result<(), _> = done.send(result);
                    }
                }
            }
        });
        Ok(())
    }

    /// Sends one message to the stream; the future answers when JetStream has it.
    async fn publish(
        &self,
        record: &TelemetryRecord,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(DEVICE, record.device_id.as_str());
        if let Some(m) = &record.module_id {
            headers.insert(MODULE, m.as_str());
        }
        headers.insert(PROPERTIES, record.properties.as_str());
        self.js
            .publish_with_headers(
                self.subject(&record.device_id),
                headers,
                bytes::Bytes::copy_from_slice(&record.body),
            )
            .await
            .map_err(|e| format!("telemetry not sent to the stream: {e}"))
    }

    fn failed(&self, e: &dyn std::fmt::Display) -> ReadError {
        ReadError(format!("reading the telemetry stream {}: {e}", self.name))
    }

    /// Message `seq` from the stream's leader (which has every acknowledged message); `None`
    /// when there is none (removed by the limits, or not yet written).
    async fn get(&self, seq: u64) -> Result<Option<TelemetryRecord>, ReadError> {
        use jetstream::stream::RawMessageErrorKind;
        match self.stream.get_raw_message(seq).await {
            Ok(m) => decode(&m).map(Some).map_err(|e| self.failed(&e)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// The first message of `device` numbered `seq` or above.
    async fn next_of(&self, device: &str, seq: u64) -> Result<Option<TelemetryRecord>, ReadError> {
        use jetstream::stream::RawMessageErrorKind;
        match self
            .stream
            .get_first_raw_message_by_subject(self.subject(device), seq)
            .await
        {
            Ok(m) => decode(&m).map(Some).map_err(|e| self.failed(&e)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// Messages numbered above `after` and at most `upto` (known to be stored), oldest first,
    /// at most `limit` of them and (beyond the first) at most `max_bytes` of bodies; of one
    /// device, messages above `upto` too.
    ///
    /// Read from the stream's leader, message by message (no consumer: creating one is a
    /// write to the NATS cluster's metadata, too costly for every page of every reader); the
    /// whole log's pages ask for 64 messages at a time.
    pub(crate) async fn after(
        &self,
        after: i64,
        upto: i64,
        device: Option<&str>,
        limit: i64,
        max_bytes: i64,
    ) -> Result<Vec<TelemetryRecord>, ReadError> {
        let limit = limit.clamp(1, 10_000) as usize;
        let mut out = Vec::new();
        let mut bytes = 0i64;
        let mut next = after.max(0) as u64 + 1;
        if let Some(device) = device {
            while out.len() < limit && bytes < max_bytes {
                let Some(r) = self.next_of(device, next).await? else {
                    break;
                };
                next = r.seq as u64 + 1;
                bytes += r.body.len() as i64;
                out.push(r);
            }
            return Ok(out);
        }
        if upto < next as i64 {
            return Ok(out);
        }
        // Before the oldest message kept: start at it. (The first message, when there, is
        // the page's first: not read again below.)
        let first = self.get(next).await?;
        if first.is_none() {
            let info = self.stream.get_info().await.map_err(|e| self.failed(&e))?;
            next = next.max(info.state.first_sequence);
        }
        let end = (upto as u64).min(next + limit as u64 - 1);
        let from = match first {
            Some(r) => {
                bytes += r.body.len() as i64;
                out.push(r);
                if bytes >= max_bytes {
                    return Ok(out);
                }
                next + 1
            }
            None => next,
        };
        let mut pages = futures_util::stream::iter(from..=end)
            .map(|seq| self.get(seq))
            .buffered(64);
        while let Some(r) = pages.next().await {
            // A number the limits removed meanwhile: skipped.
            let Some(r) = r? else { continue };
            bytes += r.body.len() as i64;
            out.push(r);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The number just before the first message stored at or after `ms` (after it unless
    /// `inclusive`): where a reader that starts from that time begins. A binary search by the
    /// time JetStream stored each message (it rises with the numbers).
    pub(crate) async fn seq_before_time(&self, ms: i64, inclusive: bool) -> Result<i64, ReadError> {
        let info = self.stream.get_info().await.map_err(|e| self.failed(&e))?;
        let (mut lo, mut hi) = (info.state.first_sequence, info.state.last_sequence + 1);
        if info.state.messages == 0 {
            return Ok(info.state.last_sequence as i64);
        }
        // The first number in [lo, hi) whose time is late enough; hi when none is.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let late = match self.get(mid).await? {
                Some(r) => {
                    if inclusive {
                        r.enqueued_ms >= ms
                    } else {
                        r.enqueued_ms > ms
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
        Ok(lo as i64 - 1)
    }

    /// The oldest and newest messages kept.
    pub(crate) async fn bounds(&self) -> Result<certhub_store::TelemetryBounds, ReadError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| ReadError(format!("the telemetry stream {}: {e}", self.name)))?;
        let s = &info.state;
        if s.messages == 0 {
            return Ok(certhub_store::TelemetryBounds::default());
        }
        Ok(certhub_store::TelemetryBounds {
            first_seq: Some(s.first_sequence as i64),
            last: Some((s.last_sequence as i64, unix_ms(s.last_timestamp))),
        })
    }
}

fn unix_ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A stored message as the hub's record.
fn decode(m: &jetstream::message::StreamMessage) -> Result<TelemetryRecord, String> {
    let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
    let device_id = header(DEVICE).ok_or_else(|| {
        format!(
            "message {} has no {DEVICE} header (not written by certhub?)",
            m.sequence
        )
    })?;
    Ok(TelemetryRecord {
        seq: m.sequence as i64,
        device_id,
        module_id: header(MODULE),
        enqueued_ms: unix_ms(m.time),
        properties: header(PROPERTIES).unwrap_or_else(|| "{}".into()),
        body: m.payload.to_vec(),
    })
}
