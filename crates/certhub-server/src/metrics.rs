//! Counters for the operator, in Prometheus's text format at `GET /metrics`: connection
//! attempts by outcome (the refusal reasons of the audit trail), telemetry messages, live
//! sessions.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Identities expired, and (horizon days, expiring within it).
type ExpiryCount = (i64, Vec<(i64, i64)>);

#[derive(Debug, Default)]
pub struct Metrics {
    connects: Mutex<BTreeMap<String, u64>>,
    dropped: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    telemetry: AtomicU64,
    /// The last expiry count: of identities, and of the intermediates their chains presented.
    expiry: Mutex<Option<ExpiryCount>>,
    intermediates: Mutex<Option<ExpiryCount>>,
    /// The counters at the end of each of the last [`HISTORY`] minutes, oldest first.
    history: Mutex<std::collections::VecDeque<Sample>>,
}

/// How many minutes of counters the console's charts keep.
pub const HISTORY: usize = 60;

/// The counters as they stood at one moment (cumulative since the hub started).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Unix ms when taken.
    pub at_ms: i64,
    pub admitted: u64,
    pub refused: u64,
    pub telemetry: u64,
    /// Devices connected at that moment.
    pub connected: u64,
}

impl Metrics {
    /// Counts a CONNECT decision: `ok` or the refusal reason.
    pub fn connect(&self, outcome: &str) {
        if let Ok(mut m) = self.connects.lock() {
            *m.entry(outcome.to_string()).or_default() += 1;
        }
    }

    /// Counts a connection the hub closed before it proved anything: evicted to make room for
    /// a newer one, or from a source that used up its refusals, or answered from memory.
    pub fn dropped(&self, listener: &'static str, reason: &'static str) {
        if let Ok(mut m) = self.dropped.lock() {
            *m.entry((listener, reason)).or_default() += 1;
        }
    }

    /// The devices' certificates by expiry horizon, as last counted.
    pub fn set_expiry(&self, expired: i64, within: Vec<(i64, i64)>) {
        if let Ok(mut e) = self.expiry.lock() {
            *e = Some((expired, within));
        }
    }

    /// The intermediates devices' chains presented, by expiry horizon, as last counted.
    pub fn set_intermediate_expiry(&self, expired: i64, within: Vec<(i64, i64)>) {
        if let Ok(mut e) = self.intermediates.lock() {
            *e = Some((expired, within));
        }
    }

    /// The counters now, with `connected` devices connected.
    pub fn sample(&self, at_ms: i64, connected: u64) -> Sample {
        let connects = self.connects();
        let admitted = connects.get("ok").copied().unwrap_or(0);
        Sample {
            at_ms,
            admitted,
            refused: connects.values().sum::<u64>() - admitted,
            telemetry: self.telemetry_count(),
            connected,
        }
    }

    /// Keeps `sample` as the end of a minute (the sampler calls this once a minute).
    pub fn remember(&self, sample: Sample) {
        if let Ok(mut h) = self.history.lock() {
            if h.len() == HISTORY + 1 {
                h.pop_front();
            }
            h.push_back(sample);
        }
    }

    /// The kept samples, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The CONNECT decisions so far, by outcome (`ok` or the refusal reason).
    pub fn connects(&self) -> BTreeMap<String, u64> {
        self.connects.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Device-to-cloud messages taken so far.
    pub fn telemetry_count(&self) -> u64 {
        self.telemetry.load(Ordering::Relaxed)
    }

    /// The devices' certificates by expiry horizon, as last counted: expired, and (days,
    /// expiring within them).
    pub fn expiry(&self) -> Option<ExpiryCount> {
        self.expiry.lock().ok().and_then(|e| e.clone())
    }

    pub fn telemetry(&self) {
        self.telemetry.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(
        &self,
        sessions: usize,
        stream_batches: Option<u64>,
        log: &crate::telemetry::LogStats,
    ) -> String {
        let mut out = String::new();
        let bytes = log.bytes.load(Ordering::Relaxed);
        if bytes >= 0 {
            let _ = writeln!(
                out,
                "# HELP certhub_telemetry_log_bytes The telemetry log's size as telemetry_max_bytes counts it.\n# TYPE certhub_telemetry_log_bytes gauge\ncerthub_telemetry_log_bytes {bytes}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP certhub_telemetry_dropped_total Messages the telemetry size cap dropped from the front of the log.\n# TYPE certhub_telemetry_dropped_total counter\ncerthub_telemetry_dropped_total {}",
            log.dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP certhub_telemetry_dropped_bytes_total Bytes the telemetry size cap dropped.\n# TYPE certhub_telemetry_dropped_bytes_total counter\ncerthub_telemetry_dropped_bytes_total {}",
            log.dropped_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP certhub_telemetry_segments_started_total Segments of the telemetry log the writer started.\n# TYPE certhub_telemetry_segments_started_total counter\ncerthub_telemetry_segments_started_total {}",
            log.segments_started.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP certhub_telemetry_segments_dropped_total Segments of the telemetry log the size cap dropped whole.\n# TYPE certhub_telemetry_segments_dropped_total counter\ncerthub_telemetry_segments_dropped_total {}",
            log.segments_dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP certhub_telemetry_refused_total Messages refused because the disk was full.\n# TYPE certhub_telemetry_refused_total counter\ncerthub_telemetry_refused_total{{reason=\"disk-full\"}} {}",
            log.refused_disk_full.load(Ordering::Relaxed)
        );
        out.push_str("# HELP certhub_device_connects_total MQTT CONNECT decisions by outcome (ok or the refusal reason).\n");
        out.push_str("# TYPE certhub_device_connects_total counter\n");
        if let Ok(m) = self.connects.lock() {
            for (outcome, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "certhub_device_connects_total{{outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP certhub_connections_dropped_total Connections closed before they proved anything, by listener and reason: pending-per-source and pending-total (the oldest unauthenticated connection closed to make room), refusal-rate-source (the source used up its refused connections; closed at accept), refusal-rate-client-id (a client id that used up its refusals presented the credential refused last time; refused from memory).\n");
        out.push_str("# TYPE certhub_connections_dropped_total counter\n");
        if let Ok(m) = self.dropped.lock() {
            for ((listener, reason), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "certhub_connections_dropped_total{{listener=\"{listener}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP certhub_telemetry_messages_total Device-to-cloud messages stored.\n");
        out.push_str("# TYPE certhub_telemetry_messages_total counter\n");
        let _ = writeln!(
            out,
            "certhub_telemetry_messages_total {}",
            self.telemetry.load(Ordering::Relaxed)
        );
        if let Some(n) = stream_batches {
            out.push_str("# HELP certhub_telemetry_stream_batches_total JetStream messages this node wrote to the telemetry stream, each a batch of device-to-cloud messages (certhub_telemetry_messages_total over this is the mean batch).\n");
            out.push_str("# TYPE certhub_telemetry_stream_batches_total counter\n");
            let _ = writeln!(out, "certhub_telemetry_stream_batches_total {n}");
        }
        if let Ok(e) = self.expiry.lock()
            && let Some(count) = &*e
        {
            expiry_gauges(
                &mut out,
                "certificates",
                "Identities whose certificate (the leaf each last authenticated with)",
                count,
            );
        }
        if let Ok(e) = self.intermediates.lock()
            && let Some(count) = &*e
        {
            expiry_gauges(
                &mut out,
                "intermediates",
                "Intermediate CA certificates that devices' chains presented",
                count,
            );
        }
        out.push_str("# HELP certhub_device_sessions Live device sessions.\n");
        out.push_str("# TYPE certhub_device_sessions gauge\n");
        let _ = writeln!(out, "certhub_device_sessions {sessions}");
        out
    }
}

/// `certhub_<what>_expiring{within_days}` and `certhub_<what>_expired`, for `who`.
fn expiry_gauges(out: &mut String, what: &str, who: &str, (expired, within): &ExpiryCount) {
    let _ = writeln!(
        out,
        "# HELP certhub_{what}_expiring {who} expiring within the horizon, not yet expired; counted every expiry check."
    );
    let _ = writeln!(out, "# TYPE certhub_{what}_expiring gauge");
    for (days, n) in within {
        let _ = writeln!(out, "certhub_{what}_expiring{{within_days=\"{days}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP certhub_{what}_expired {who} that have expired."
    );
    let _ = writeln!(out, "# TYPE certhub_{what}_expired gauge");
    let _ = writeln!(out, "certhub_{what}_expired {expired}");
}
