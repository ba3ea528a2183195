//! Counters for the operator, in Prometheus's text format at `GET /metrics`: connection
//! attempts by outcome (the refusal reasons of the audit trail), telemetry messages, live
//! sessions.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    connects: Mutex<BTreeMap<String, u64>>,
    telemetry: AtomicU64,
}

impl Metrics {
    /// Counts a CONNECT decision: `ok` or the refusal reason.
    pub fn connect(&self, outcome: &str) {
        if let Ok(mut m) = self.connects.lock() {
            *m.entry(outcome.to_string()).or_default() += 1;
        }
    }

    pub fn telemetry(&self) {
        self.telemetry.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self, sessions: usize) -> String {
        let mut out = String::new();
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
        out.push_str("# HELP certhub_telemetry_messages_total Device-to-cloud messages stored.\n");
        out.push_str("# TYPE certhub_telemetry_messages_total counter\n");
        let _ = writeln!(
            out,
            "certhub_telemetry_messages_total {}",
            self.telemetry.load(Ordering::Relaxed)
        );
        out.push_str("# HELP certhub_device_sessions Live device sessions.\n");
        out.push_str("# TYPE certhub_device_sessions gauge\n");
        let _ = writeln!(out, "certhub_device_sessions {sessions}");
        out
    }
}
