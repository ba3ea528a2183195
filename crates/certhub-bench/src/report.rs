//! What a run found: counts, rates, latency percentiles, errors by kind, the server's and the
//! generator's CPU and memory; printed as a table or as one JSON object.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::conn::Failure;

/// Nearest-rank percentile `p` (0..=100) of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarizes microseconds (sorts them).
    pub fn of(mut us: Vec<u32>) -> Self {
        us.sort_unstable();
        Self {
            count: us.len(),
            p50: percentile_ms(&us, 50.0),
            p90: percentile_ms(&us, 90.0),
            p99: percentile_ms(&us, 99.0),
            max: us.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        }
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "max": round3(self.max),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Errors by kind, with the first message of each kind; shared by all tasks.
#[derive(Debug, Default)]
pub struct Errors {
    by_kind: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Errors {
    pub fn record(&self, f: &Failure) {
        self.record_kind(f.kind(), f.message());
    }

    pub fn record_kind(&self, kind: String, message: String) {
        if let Ok(mut m) = self.by_kind.lock() {
            m.entry(kind).or_insert((0, message)).0 += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, (u64, String)> {
        self.by_kind.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().map(|(n, _)| n).sum()
    }
}

/// One of the server's processes over the measured phase.
#[derive(Debug, Clone, Default)]
pub struct ProcessUsage {
    pub pid: u32,
    /// Its command name (certhub, nats-server, postgres, ...).
    pub name: Option<String>,
    /// None when /proc could not be read at both ends (the process exited, or never was).
    pub cpu_s: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

/// The server's CPU and memory over the measured phase: with several processes (`--server-pid`
/// given more than once), CPU times and memory are their sums.
#[derive(Debug, Clone, Default)]
pub struct ServerUsage {
    /// The first process's id.
    pub pid: u32,
    /// The CPU time of the processes that could be read; None when none could.
    pub cpu_s: Option<f64>,
    /// Operations of the scenario per second of server CPU.
    pub ops_per_cpu_s: Option<f64>,
    pub ops_name: &'static str,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_max_kib: Option<u64>,
    /// (rss_after - rss_before) / connections, for scenarios that hold connections.
    pub rss_per_connection_kib: Option<f64>,
    /// Each process, in the order given.
    pub processes: Vec<ProcessUsage>,
}

/// One run's results.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: &'static str,
    pub target: Vec<(&'static str, Value)>,
    pub parameters: Vec<(&'static str, Value)>,
    pub elapsed_s: f64,
    pub counts: Vec<(&'static str, u64)>,
    pub rates: Vec<(&'static str, f64)>,
    /// Durations of the scenario's phases, in seconds.
    pub seconds: Vec<(&'static str, f64)>,
    pub latencies: Vec<(&'static str, Summary)>,
    /// Errors of the measured phase.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Errors while getting ready (connecting before the measured phase, the service API).
    pub setup_errors: BTreeMap<String, (u64, String)>,
    pub server: Option<ServerUsage>,
    pub generator_cpu_s: Option<f64>,
    pub notes: Vec<String>,
}

fn object<T>(items: &[(&'static str, T)], f: impl Fn(&T) -> Value) -> Value {
    let mut m = Map::new();
    for (k, v) in items {
        m.insert((*k).to_string(), f(v));
    }
    Value::Object(m)
}

fn errors_json(e: &BTreeMap<String, (u64, String)>) -> (Value, Value) {
    let mut counts = Map::new();
    let mut samples = Map::new();
    for (k, (n, msg)) in e {
        counts.insert(k.clone(), json!(n));
        samples.insert(k.clone(), json!(msg));
    }
    (Value::Object(counts), Value::Object(samples))
}

impl Report {
    pub fn json(&self) -> Value {
        let (errors, samples) = errors_json(&self.errors);
        let (setup_errors, setup_samples) = errors_json(&self.setup_errors);
        let server = self.server.as_ref().map_or(Value::Null, |s| {
            let processes: Vec<Value> = s
                .processes
                .iter()
                .map(|p| {
                    json!({
                        "pid": p.pid,
                        "name": p.name,
                        "cpu_s": p.cpu_s.map(round3),
                        "rss_before_kib": p.rss_before_kib,
                        "rss_after_kib": p.rss_after_kib,
                    })
                })
                .collect();
            json!({
                "pid": s.pid,
                "processes": processes,
                "cpu_s": s.cpu_s.map(round3),
                "ops": s.ops_name,
                "ops_per_cpu_s": s.ops_per_cpu_s.map(|x| (x * 10.0).round() / 10.0),
                "rss_before_kib": s.rss_before_kib,
                "rss_after_kib": s.rss_after_kib,
                "rss_max_kib": s.rss_max_kib,
                "rss_per_connection_kib": s.rss_per_connection_kib.map(|x| (x * 100.0).round() / 100.0),
            })
        });
        json!({
            "scenario": self.scenario,
            "target": object(&self.target, Clone::clone),
            "parameters": object(&self.parameters, Clone::clone),
            "elapsed_s": round3(self.elapsed_s),
            "counts": object(&self.counts, |n| json!(n)),
            "rates": object(&self.rates, |r| json!((r * 10.0).round() / 10.0)),
            "seconds": object(&self.seconds, |r| json!(round3(*r))),
            "latency_ms": object(&self.latencies, Summary::json),
            "errors": errors,
            "error_samples": samples,
            "setup_errors": setup_errors,
            "setup_error_samples": setup_samples,
            "server": server,
            "generator": { "cpu_s": self.generator_cpu_s.map(round3) },
            "notes": self.notes,
        })
    }

    /// The human-readable table.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let show = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let target: Vec<String> = self
            .target
            .iter()
            .map(|(k, v)| format!("{k} {}", show(v)))
            .collect();
        let params: Vec<String> = self
            .parameters
            .iter()
            .map(|(k, v)| format!("{k} {}", show(v)))
            .collect();
        let _ = writeln!(o, "{}: {}", self.scenario, target.join(", "));
        let _ = writeln!(o, "  {}", params.join(", "));
        let _ = writeln!(o, "  measured for {:.2} s", self.elapsed_s);
        for (k, n) in &self.counts {
            let _ = writeln!(o, "  {k:<28}{n:>12}");
        }
        for (k, r) in &self.rates {
            let _ = writeln!(o, "  {k:<28}{r:>12.1}");
        }
        for (k, r) in &self.seconds {
            let _ = writeln!(o, "  {k:<28}{r:>12.3} s");
        }
        if !self.latencies.is_empty() {
            let _ = writeln!(
                o,
                "  {:<20}{:>8}{:>10}{:>10}{:>10}{:>10}",
                "latency (ms)", "count", "p50", "p90", "p99", "max"
            );
            for (k, s) in &self.latencies {
                let _ = writeln!(
                    o,
                    "    {k:<18}{:>8}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                    s.count, s.p50, s.p90, s.p99, s.max
                );
            }
        }
        for (title, errors) in [
            ("errors", &self.errors),
            ("errors while getting ready", &self.setup_errors),
        ] {
            if errors.is_empty() {
                continue;
            }
            let _ = writeln!(o, "  {title}");
            for (k, (n, msg)) in errors {
                let _ = writeln!(o, "    {k:<24}{n:>8}  e.g. {msg}");
            }
        }
        if self.errors.is_empty() && !self.counts.iter().any(|(k, _)| *k == "errors") {
            let _ = writeln!(o, "  {:<28}{:>12}", "errors", 0);
        }
        if let Some(s) = &self.server {
            let who = if s.processes.len() > 1 {
                format!("{} processes", s.processes.len())
            } else {
                format!("pid {}", s.pid)
            };
            match s.cpu_s {
                Some(c) => {
                    let _ = write!(o, "  server ({who}): {c:.2} s CPU");
                }
                None => {
                    let _ = write!(o, "  server ({who}): CPU time unknown");
                }
            }
            if let Some(x) = s.ops_per_cpu_s {
                let _ = write!(o, ", {x:.1} {} per CPU-second", s.ops_name);
            }
            let _ = writeln!(o);
            if s.processes.len() > 1 {
                for p in &s.processes {
                    let name = p.name.as_deref().unwrap_or("?");
                    match p.cpu_s {
                        Some(c) => {
                            let _ = writeln!(o, "    pid {} {name}: {c:.2} s CPU", p.pid);
                        }
                        None => {
                            let _ = writeln!(
                                o,
                                "    pid {} {name}: CPU time unknown (not counted)",
                                p.pid
                            );
                        }
                    }
                }
            }
            if let (Some(b), Some(a)) = (s.rss_before_kib, s.rss_after_kib) {
                let _ = write!(
                    o,
                    "  server RSS: {:.1} MiB before, {:.1} MiB after",
                    b as f64 / 1024.0,
                    a as f64 / 1024.0
                );
                if let Some(m) = s.rss_max_kib {
                    let _ = write!(o, ", {:.1} MiB at most", m as f64 / 1024.0);
                }
                if let Some(p) = s.rss_per_connection_kib {
                    let _ = write!(o, " ({p:.1} KiB per connection)");
                }
                let _ = writeln!(o);
            }
        }
        match self.generator_cpu_s {
            Some(c) => {
                let _ = writeln!(o, "  generator: {c:.2} s CPU");
            }
            None => {
                let _ = writeln!(o, "  generator: CPU time unknown");
            }
        }
        for n in &self.notes {
            let _ = writeln!(o, "  note: {n}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 50.0), 50.0);
        assert_eq!(percentile_ms(&us, 90.0), 90.0);
        assert_eq!(percentile_ms(&us, 99.0), 99.0);
        assert_eq!(percentile_ms(&us, 100.0), 100.0);
        assert_eq!(percentile_ms(&us, 0.0), 1.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
        assert_eq!(percentile_ms(&[7000], 99.0), 7.0);
    }

    #[test]
    fn summary_sorts_and_merges() {
        let mut a = vec![5000, 1000, 3000];
        let b = vec![2000, 4000];
        a.extend(b);
        let s = Summary::of(a);
        assert_eq!(s.count, 5);
        assert_eq!(s.p50, 3.0);
        assert_eq!(s.p90, 5.0);
        assert_eq!(s.max, 5.0);
        let empty = Summary::of(Vec::new());
        assert_eq!(empty.count, 0);
        assert_eq!(empty.max, 0.0);
    }

    fn usage(processes: Vec<ProcessUsage>) -> Report {
        Report {
            scenario: "telemetry",
            server: Some(ServerUsage {
                pid: processes[0].pid,
                cpu_s: Some(2.0),
                ops_per_cpu_s: Some(50.0),
                ops_name: "messages",
                processes,
                ..ServerUsage::default()
            }),
            ..Report::default()
        }
    }

    #[test]
    fn one_server_process_prints_as_before_several_are_listed() {
        let one = usage(vec![ProcessUsage {
            pid: 7,
            name: Some("certhub".into()),
            cpu_s: Some(2.0),
            ..ProcessUsage::default()
        }]);
        let text = one.text();
        assert!(
            text.contains("  server (pid 7): 2.00 s CPU, 50.0 messages per CPU-second\n"),
            "{text}"
        );
        assert!(!text.contains("    pid 7"), "{text}");
        assert_eq!(one.json()["server"]["pid"], 7);

        let several = usage(vec![
            ProcessUsage {
                pid: 7,
                name: Some("certhub".into()),
                cpu_s: Some(1.5),
                ..ProcessUsage::default()
            },
            ProcessUsage {
                pid: 8,
                name: Some("nats-server".into()),
                cpu_s: Some(0.5),
                ..ProcessUsage::default()
            },
            ProcessUsage {
                pid: 9,
                name: None,
                cpu_s: None,
                ..ProcessUsage::default()
            },
        ]);
        let text = several.text();
        assert!(
            text.contains("  server (3 processes): 2.00 s CPU, 50.0 messages per CPU-second\n"),
            "{text}"
        );
        assert!(
            text.contains("    pid 8 nats-server: 0.50 s CPU\n"),
            "{text}"
        );
        assert!(
            text.contains("    pid 9 ?: CPU time unknown (not counted)\n"),
            "{text}"
        );
        let v = several.json();
        assert_eq!(v["server"]["processes"][1]["name"], "nats-server");
        assert_eq!(v["server"]["processes"][1]["cpu_s"], 0.5);
        assert!(v["server"]["processes"][2]["cpu_s"].is_null());
    }

    #[test]
    fn errors_count_by_kind_and_keep_the_first_message() {
        let e = Errors::default();
        e.record(&Failure::Connack(5));
        e.record(&Failure::Connack(5));
        e.record(&Failure::Timeout("CONNACK"));
        let snap = e.snapshot();
        assert_eq!(snap["connack 5"].0, 2);
        assert!(snap["connack 5"].1.contains("not authorized"));
        assert_eq!(snap["timeout"].0, 1);
        assert_eq!(e.total(), 3);
        let emfile = Failure::Tcp(std::io::Error::from_raw_os_error(24));
        assert_eq!(emfile.kind(), "too many open files");
        assert!(emfile.message().contains("ulimit -n"));
        assert!(!emfile.retryable());
        assert!(Failure::Connack(3).retryable());
        assert!(!Failure::Connack(5).retryable());
    }
}
