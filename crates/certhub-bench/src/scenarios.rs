//! The scenarios: connect-rate, hold, telemetry, storm, revoke (provision is in
//! `provision.rs`, with what this module shares).

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::Packet;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::conn::{Conn, HoldEnd, Opened, Target, disconnect, hold, micros, open};
use crate::devices::{self, Device, TlsSettings};
use crate::report::{Errors, ProcessUsage, Report, ServerUsage, Summary};
use crate::sample::{Probe, Sample, ensure_open_files};
use crate::{
    Common, ConnectRateArgs, HoldArgs, ProvisionArgs, RevokeArgs, Scenario, StormArgs,
    TelemetryArgs, parse_sources,
};

pub async fn run(s: Scenario) -> Result<Report> {
    let amqp = |c: &Common| c.transport == crate::Transport::Amqp;
    match &s {
        Scenario::Telemetry(_) => {}
        Scenario::ConnectRate(ConnectRateArgs { common, .. })
        | Scenario::Hold(HoldArgs { common, .. })
        | Scenario::Storm(StormArgs { common, .. })
        | Scenario::Revoke(RevokeArgs { common, .. })
        | Scenario::Provision(ProvisionArgs { common, .. })
            if amqp(common) =>
        {
            bail!("--transport amqp is measured by the telemetry scenario only");
        }
        _ => {}
    }
    match s {
        Scenario::ConnectRate(a) => connect_rate(a).await,
        Scenario::Hold(a) => hold_scenario(a).await,
        Scenario::Telemetry(a) => telemetry(a).await,
        Scenario::Storm(a) => storm(a).await,
        Scenario::Revoke(a) => revoke(a).await,
        Scenario::Provision(a) => crate::provision::run(a).await,
        // Synchronous, with a report of its own: `crate::run` runs it before the runtime.
        Scenario::Query(_) => bail!("the query scenario does not make a connection report"),
        Scenario::Reads(_) => bail!("the reads scenario does not make a connection report"),
    }
}

/// What every scenario starts from: the target, the TLS settings, the options.
pub(crate) struct Env {
    pub(crate) target: Arc<Target>,
    pub(crate) settings: TlsSettings,
    pub(crate) common: Common,
    pub(crate) server_name: String,
}

impl Env {
    /// How to open connections to this target: `parallel` attempts at once, at most `ramp`
    /// per second, each retried as `--retries` says.
    fn plan(&self, keep_alive: u16, parallel: u32, ramp: Option<f64>) -> Plan<'_> {
        Plan {
            target: &self.target,
            keep_alive,
            parallel: parallel as usize,
            ramp,
            retries: self.common.retries,
        }
    }

    pub(crate) async fn new(common: Common) -> Result<Self> {
        let server_name = common
            .server_name
            .clone()
            .unwrap_or_else(|| common.host.clone());
        let addr = tokio::net::lookup_host((common.host.as_str(), common.port))
            .await
            .with_context(|| format!("--host {}", common.host))?
            .min_by_key(|a| a.is_ipv6())
            .with_context(|| format!("--host {}: no address", common.host))?;
        let name = ServerName::try_from(server_name.clone()).with_context(|| {
            format!("server name {server_name:?} is neither a DNS name nor an IP address")
        })?;
        let sources = match &common.source_addrs {
            Some(s) => parse_sources(s)?,
            None => Vec::new(),
        };
        let settings = TlsSettings::new(
            &common.ca,
            common.tls,
            common.kx,
            &server_name,
            &common.username_template,
        )?;
        let target = Arc::new(
            Target::new(addr, name, sources, Duration::from_secs_f64(common.timeout))
                .over_websocket(common.transport == crate::Transport::Ws),
        );
        Ok(Self {
            target,
            settings,
            common,
            server_name,
        })
    }

    pub(crate) fn devices(&self, n: Option<usize>) -> Result<Vec<Arc<Device>>> {
        devices::load(&self.common.devices, n, &self.settings)
    }

    pub(crate) fn report(&self, scenario: &'static str) -> Report {
        let c = &self.common;
        Report {
            scenario,
            target: vec![
                ("address", json!(self.target.addr.to_string())),
                ("server_name", json!(self.server_name)),
                (
                    "transport",
                    json!(match c.transport {
                        crate::Transport::Tls => "tls",
                        crate::Transport::Ws => "ws",
                        crate::Transport::Amqp => "amqp",
                    }),
                ),
                (
                    "tls",
                    json!(match c.tls {
                        crate::TlsVersion::V12 => "1.2",
                        crate::TlsVersion::V13 => "1.3",
                    }),
                ),
                (
                    "kx",
                    json!(match c.kx {
                        crate::Kx::X25519 => "x25519",
                        crate::Kx::P256 => "p256",
                    }),
                ),
                ("source_addrs", json!(self.target.sources.len())),
            ],
            ..Report::default()
        }
    }

    /// Adds the cipher suite the server chose to the report's target (once a connection was
    /// made).
    pub(crate) fn suite(&self, report: &mut Report) {
        if let Some(suite) = self.target.suite.get() {
            report.target.push(("suite", json!(suite)));
        }
    }

    /// Raises the open-file limit if `connections` need it; a note when it stays too low.
    pub(crate) fn files_for(&self, connections: usize, report_notes: &mut Vec<String>) {
        if let Some(note) = ensure_open_files(connections as u64 + 64) {
            report_notes.push(note);
        }
    }
}

/// CPU and memory at the start of a measured phase.
pub(crate) struct Meter {
    /// The server's processes: pid, its probe, and its look at the start.
    servers: Vec<(u32, Probe, Sample)>,
    me_probe: Probe,
    me: Sample,
    at: Instant,
}

/// What a measured phase cost.
pub(crate) struct Measured {
    pub(crate) elapsed_s: f64,
    pub(crate) generator_cpu_s: Option<f64>,
    pub(crate) server: Option<ServerUsage>,
}

fn used(after: Option<f64>, before: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

impl Meter {
    /// `pids`: the server's processes (none: the server is not measured).
    pub(crate) fn start(pids: &[u32]) -> Self {
        let servers = pids
            .iter()
            .map(|&pid| {
                let mut probe = Probe::open(Some(pid));
                let at_start = probe.sample();
                (pid, probe, at_start)
            })
            .collect();
        let mut me_probe = Probe::open(None);
        Self {
            servers,
            me: me_probe.sample(),
            me_probe,
            at: Instant::now(),
        }
    }

    /// The server's memory now, summed over its processes (for sampling during a phase);
    /// `None` when one of them cannot be read.
    fn server_rss(&mut self) -> Option<u64> {
        if self.servers.is_empty() {
            return None;
        }
        self.servers
            .iter_mut()
            .map(|(_, probe, _)| probe.sample().rss_kib)
            .sum()
    }

    pub(crate) fn finish(&mut self, ops: u64, ops_name: &'static str) -> Measured {
        let elapsed_s = self.at.elapsed().as_secs_f64();
        let me = self.me_probe.sample();
        let generator_cpu_s = used(me.cpu_s, self.me.cpu_s);
        let processes: Vec<ProcessUsage> = self
            .servers
            .iter_mut()
            .map(|(pid, probe, before)| {
                let now = probe.sample();
                ProcessUsage {
                    pid: *pid,
                    name: probe.name().map(str::to_string),
                    cpu_s: used(now.cpu_s, before.cpu_s),
                    rss_before_kib: before.rss_kib,
                    rss_after_kib: now.rss_kib,
                }
            })
            .collect();
        let server = (!processes.is_empty()).then(|| {
            // The processes that could be read at both ends; one that exited meanwhile is
            // listed with its CPU time unknown and left out of the sum.
            let known: Vec<f64> = processes.iter().filter_map(|p| p.cpu_s).collect();
            let cpu_s = (!known.is_empty()).then(|| known.iter().sum::<f64>());
            let rss = |f: fn(&ProcessUsage) -> Option<u64>| processes.iter().map(f).sum();
            ServerUsage {
                pid: processes[0].pid,
                cpu_s,
                ops_per_cpu_s: cpu_s.filter(|c| *c > 0.0).map(|c| ops as f64 / c),
                ops_name,
                rss_before_kib: rss(|p| p.rss_before_kib),
                rss_after_kib: rss(|p| p.rss_after_kib),
                processes,
                ..ServerUsage::default()
            }
        });
        Measured {
            elapsed_s,
            generator_cpu_s,
            server,
        }
    }
}

/// A short wait before another attempt: 50 ms doubling to 2 s, plus up to half again.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base =
        Duration::from_millis(50 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(2));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter_ms = u64::from(nanos) % (base.as_millis() as u64 / 2 + 1);
    base + Duration::from_millis(jitter_ms)
}

/// Connects, retrying what is worth retrying; every failure is counted.
async fn open_retry(
    target: &Target,
    device: &Device,
    keep_alive: u16,
    retries: u32,
    errors: &Errors,
) -> (Option<Opened>, u32) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match open(target, device, keep_alive).await {
            Ok(o) => return (Some(o), attempts),
            Err(f) => {
                errors.record(&f);
                if !f.retryable() || attempts > retries {
                    return (None, attempts);
                }
                tokio::time::sleep(backoff(attempts)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// connect-rate

async fn connect_rate(a: ConnectRateArgs) -> Result<Report> {
    let env = Env::new(a.common).await?;
    let devices = Arc::new(env.devices(None)?);
    let workers = a.workers as usize;
    let mut report = env.report("connect-rate");
    report.parameters = vec![
        ("duration_s", json!(a.duration)),
        ("workers", json!(workers)),
        ("devices", json!(devices.len())),
    ];
    env.files_for(workers, &mut report.notes);
    if devices.len() < workers {
        report.notes.push(format!(
            "{} devices for {workers} workers: the same client id may connect twice at once, and a broker then closes the older connection",
            devices.len()
        ));
    }
    let errors = Arc::new(Errors::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut meter = Meter::start(&env.common.server_pid);
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (target, devices, errors, next) = (
            env.target.clone(),
            devices.clone(),
            errors.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = CycleLatencies::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) % devices.len();
                let t0 = Instant::now();
                match open(&target, &devices[i], 60).await {
                    Ok(o) => {
                        disconnect(o.conn).await;
                        lat.cycle.push(micros(t0.elapsed()));
                        lat.tcp.push(o.tcp_us);
                        lat.handshake.push(o.handshake_us);
                        lat.connack.push(o.connack_us);
                    }
                    Err(f) => {
                        errors.record(&f);
                        // A refusing or absent broker must not turn this into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    let mut all = CycleLatencies::default();
    for t in tasks {
        let l = t.await.context("a connect worker failed")?;
        all.cycle.extend(l.cycle);
        all.tcp.extend(l.tcp);
        all.handshake.extend(l.handshake);
        all.connack.extend(l.connack);
    }
    let connects = all.cycle.len() as u64;
    let m = meter.finish(connects, "connects");
    env.suite(&mut report);
    report.elapsed_s = m.elapsed_s;
    report.generator_cpu_s = m.generator_cpu_s;
    report.server = m.server;
    report.errors = errors.snapshot();
    report.counts = vec![("connects", connects), ("errors", errors.total())];
    report.rates = vec![("connects_per_s", connects as f64 / m.elapsed_s.max(1e-9))];
    report.latencies = vec![
        ("cycle", Summary::of(all.cycle)),
        ("tcp", Summary::of(all.tcp)),
        ("handshake", Summary::of(all.handshake)),
        ("connack", Summary::of(all.connack)),
    ];
    Ok(report)
}

#[derive(Debug, Default)]
struct CycleLatencies {
    cycle: Vec<u32>,
    tcp: Vec<u32>,
    handshake: Vec<u32>,
    connack: Vec<u32>,
}

// ---------------------------------------------------------------------------------------
// Held connections (hold, storm, revoke)

/// A connection got its CONNACK, or gave up.
enum Ready {
    Up {
        total_us: u32,
        attempts: u32,
        at: Instant,
    },
    Failed {
        attempts: u32,
    },
}

/// Connections being opened and then held, one task each.
struct Fleet {
    stop: CancellationToken,
    graceful: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Option<HoldEnd>>>,
    /// Which connection the server closed, when, and how it looked.
    closed: mpsc::UnboundedReceiver<(usize, Instant, String)>,
    ready: mpsc::UnboundedReceiver<(usize, Ready)>,
}

/// How the opening went.
#[derive(Debug, Default)]
struct Opening {
    up: Vec<usize>,
    failed: usize,
    /// The successful attempt's duration, per connection.
    attempt_us: Vec<u32>,
    /// From the start to each connection's CONNACK.
    since_start_us: Vec<u32>,
    retries: u64,
    /// From the start to the last connection's outcome.
    all_s: f64,
    /// From the start to the last connection's CONNACK.
    last_up_s: f64,
}

struct Plan<'a> {
    target: &'a Arc<Target>,
    keep_alive: u16,
    parallel: usize,
    ramp: Option<f64>,
    retries: u32,
}

fn launch(plan: &Plan<'_>, devices: &[(usize, Arc<Device>)], errors: &Arc<Errors>) -> Fleet {
    let stop = CancellationToken::new();
    let graceful = Arc::new(AtomicBool::new(true));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let (ready_tx, ready) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(plan.parallel));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(devices.len());
    for (n, (index, device)) in devices.iter().enumerate() {
        let (index, device) = (*index, device.clone());
        let (target, errors, slots) = (plan.target.clone(), errors.clone(), slots.clone());
        let (stop, graceful, closed_tx, ready_tx) = (
            stop.clone(),
            graceful.clone(),
            closed_tx.clone(),
            ready_tx.clone(),
        );
        let (keep_alive, retries, ramp) = (plan.keep_alive, plan.retries, plan.ramp);
        tasks.push(tokio::spawn(async move {
            if let Some(r) = ramp {
                tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / r)).await;
            }
            let opened = {
                let _slot = slots.acquire_owned().await.ok()?;
                tokio::select! {
                    () = stop.cancelled() => return None,
                    o = open_retry(&target, &device, keep_alive, retries, &errors) => o,
                }
            };
            let o = match opened {
                (Some(o), attempts) => {
                    let _ = ready_tx.send((
                        index,
                        Ready::Up {
                            total_us: o.total_us,
                            attempts,
                            at: Instant::now(),
                        },
                    ));
                    o
                }
                (None, attempts) => {
                    let _ = ready_tx.send((index, Ready::Failed { attempts }));
                    return None;
                }
            };
            drop(ready_tx);
            let end = hold(o.conn, keep_alive, stop, graceful).await;
            if let HoldEnd::ServerClosed(at, why) = &end {
                let _ = closed_tx.send((index, *at, why.clone()));
            }
            Some(end)
        }));
    }
    Fleet {
        stop,
        graceful,
        tasks,
        closed,
        ready,
    }
}

impl Fleet {
    /// Waits until every connection is up or has given up.
    async fn opened(&mut self, start: Instant) -> Opening {
        let mut o = Opening::default();
        let mut last = start;
        let mut last_up = start;
        for _ in 0..self.tasks.len() {
            let Some((index, ready)) = self.ready.recv().await else {
                break;
            };
            match ready {
                Ready::Up {
                    total_us,
                    attempts,
                    at,
                } => {
                    o.up.push(index);
                    o.attempt_us.push(total_us);
                    o.since_start_us.push(micros(at - start));
                    o.retries += u64::from(attempts - 1);
                    last = last.max(at);
                    last_up = last_up.max(at);
                }
                Ready::Failed { attempts } => {
                    o.failed += 1;
                    o.retries += u64::from(attempts.saturating_sub(1));
                    last = last.max(Instant::now());
                }
            }
        }
        o.all_s = (last - start).as_secs_f64();
        o.last_up_s = (last_up - start).as_secs_f64();
        o
    }

    /// The connections the server closed so far: (index, when, how).
    fn server_closed(&mut self) -> Vec<(usize, Instant, String)> {
        let mut v = Vec::new();
        while let Ok(c) = self.closed.try_recv() {
            v.push(c);
        }
        v
    }

    /// Ends every connection, with DISCONNECT or by dropping it, and waits for that.
    async fn stop(self, graceful: bool) {
        self.graceful.store(graceful, Ordering::Relaxed);
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The first `n` devices with their indices.
fn indexed(devices: &[Arc<Device>]) -> Vec<(usize, Arc<Device>)> {
    devices.iter().cloned().enumerate().collect()
}

// ---------------------------------------------------------------------------------------
// hold

async fn hold_scenario(a: HoldArgs) -> Result<Report> {
    let env = Env::new(a.common).await?;
    let n = a.connections as usize;
    let mut report = env.report("hold");
    report.parameters = vec![
        ("connections", json!(n)),
        ("ramp_per_s", json!(a.ramp)),
        ("hold_s", json!(a.hold)),
        ("parallel", json!(a.parallel)),
        ("keep_alive", json!(a.keep_alive)),
    ];
    env.files_for(n, &mut report.notes);
    let devices = env.devices(Some(n))?;
    let errors = Arc::new(Errors::default());
    let plan = env.plan(a.keep_alive, a.parallel, a.ramp);
    let mut meter = Meter::start(&env.common.server_pid);
    let start = Instant::now();
    let mut fleet = launch(&plan, &indexed(&devices), &errors);
    let opening = fleet.opened(start).await;
    let up = opening.up.len() as u64;
    let m = meter.finish(up, "connections");
    env.suite(&mut report);
    // Hold, sampling the server's memory once a second.
    let until = Instant::now() + Duration::from_secs_f64(a.hold);
    let mut rss_max = m.server.as_ref().and_then(|s| s.rss_after_kib);
    while Instant::now() < until {
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(until)).await;
        rss_max = rss_max.max(meter.server_rss());
    }
    let rss_after = meter.server_rss();
    let closed = fleet.server_closed();
    fleet.stop(true).await;

    report.elapsed_s = opening.all_s;
    report.generator_cpu_s = m.generator_cpu_s;
    report.server = m.server.map(|mut s| {
        s.rss_after_kib = rss_after;
        s.rss_max_kib = rss_max;
        if let (Some(b), Some(a)) = (s.rss_before_kib, rss_after)
            && up > 0
        {
            s.rss_per_connection_kib = Some((a as f64 - b as f64) / up as f64);
        }
        s
    });
    report.errors = errors.snapshot();
    report.counts = vec![
        ("connections", n as u64),
        ("established", up),
        ("failed", opening.failed as u64),
        ("retries", opening.retries),
        ("closed_by_server_while_held", closed.len() as u64),
    ];
    report.rates = vec![("connections_per_s", up as f64 / opening.last_up_s.max(1e-9))];
    report.seconds = vec![
        ("until_last_established", opening.last_up_s),
        ("until_all_settled", opening.all_s),
    ];
    report.latencies = vec![
        ("connect", Summary::of(opening.attempt_us)),
        ("since_start", Summary::of(opening.since_start_us)),
    ];
    if let Some((_, _, why)) = closed.first() {
        report.notes.push(format!(
            "the server closed {} connection(s) while they were held, e.g.: {why}",
            closed.len()
        ));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// telemetry

#[derive(Debug, Default)]
struct Published {
    sent: u64,
    acked: u64,
    acked_in_time: u64,
    latencies: Vec<u32>,
    /// QoS 0: when the broker answered the final PINGREQ (it has processed everything).
    confirmed_at: Option<Instant>,
    failure: Option<(String, String)>,
}

impl Published {
    fn fail(mut self, kind: &str, message: String) -> Self {
        self.failure = Some((kind.to_string(), message));
        self
    }
}

/// Sends at most `per_second` messages a second from `start` on: how many may have gone by
/// `now`, and when the next may go.
#[derive(Debug, Clone, Copy)]
struct Pace {
    start: Instant,
    per_second: f64,
}

impl Pace {
    fn allowed(&self, now: Instant) -> u64 {
        ((now - self.start).as_secs_f64() * self.per_second) as u64 + 1
    }

    fn due(&self, sent: u64) -> Instant {
        self.start + Duration::from_secs_f64(sent as f64 / self.per_second)
    }
}

async fn publish_qos1(
    mut conn: Conn,
    template: Publish,
    window: usize,
    deadline: Instant,
    drain: Duration,
    pace: Option<Pace>,
) -> Published {
    let mut r = Published::default();
    let mut inflight: HashMap<u16, Instant> = HashMap::with_capacity(window);
    let mut next_id: u16 = 0;
    let drain_deadline = deadline + drain;
    loop {
        let may_send = |sent: u64| pace.is_none_or(|p| sent < p.allowed(Instant::now()));
        if Instant::now() < deadline && inflight.len() < window && may_send(r.sent) {
            while inflight.len() < window && may_send(r.sent) {
                next_id = next_id.wrapping_add(1).max(1);
                if inflight.contains_key(&next_id) {
                    continue;
                }
                let mut p = template.clone();
                p.packet_id = NonZeroU16::new(next_id);
                if let Err(e) = conn.feed(Packet::Publish(Box::new(p))).await {
                    return r.fail("closed", format!("PUBLISH failed: {e}"));
                }
                inflight.insert(next_id, Instant::now());
                r.sent += 1;
            }
            if let Err(e) = conn.flush().await {
                return r.fail("closed", format!("PUBLISH failed: {e}"));
            }
        }
        let now = Instant::now();
        if inflight.is_empty() && now >= deadline {
            break;
        }
        let wait_until = if now < deadline {
            match pace {
                Some(p) if inflight.len() < window => p.due(r.sent).clamp(now, deadline),
                _ => deadline,
            }
        } else {
            drain_deadline
        };
        let first = match tokio::time::timeout_at(wait_until, conn.next()).await {
            Err(_) if Instant::now() >= drain_deadline => {
                return r.fail(
                    "timeout",
                    format!("{} PUBACKs missing after the run", inflight.len()),
                );
            }
            Err(_) => continue,
            Ok(p) => p,
        };
        // Take every packet already received before sending more.
        let mut next = Some(first);
        while let Some(p) = next {
            match p {
                None => return r.fail("closed", "the server closed the connection".into()),
                Some(Err(e)) => return r.fail("closed", format!("reading: {e}")),
                Some(Ok((Packet::PublishAck { packet_id }, _))) => {
                    if let Some(t) = inflight.remove(&packet_id.get()) {
                        let at = Instant::now();
                        r.latencies.push(micros(at - t));
                        r.acked += 1;
                        if at <= deadline {
                            r.acked_in_time += 1;
                        }
                    }
                }
                Some(Ok(_)) => {}
            }
            next = conn.next().now_or_never();
        }
    }
    disconnect(conn).await;
    r
}

async fn publish_qos0(
    mut conn: Conn,
    template: Publish,
    batch: usize,
    deadline: Instant,
    drain: Duration,
) -> Published {
    let mut r = Published::default();
    while Instant::now() < deadline {
        for _ in 0..batch {
            if let Err(e) = conn.feed(Packet::Publish(Box::new(template.clone()))).await {
                return r.fail("closed", format!("PUBLISH failed: {e}"));
            }
            r.sent += 1;
        }
        if let Err(e) = conn.flush().await {
            return r.fail("closed", format!("PUBLISH failed: {e}"));
        }
    }
    // The broker handles a connection's packets in order: its PINGRESP says it has taken
    // every PUBLISH before.
    if let Err(e) = conn.send(Packet::PingRequest).await {
        return r.fail("closed", format!("PINGREQ failed: {e}"));
    }
    let confirmed = tokio::time::timeout(drain, async {
        loop {
            match conn.next().await {
                Some(Ok((Packet::PingResponse, _))) => return Ok(Instant::now()),
                Some(Ok(_)) => {}
                None => return Err("the server closed the connection".to_string()),
                Some(Err(e)) => return Err(format!("reading: {e}")),
            }
        }
    })
    .await;
    match confirmed {
        Ok(Ok(at)) => {
            r.confirmed_at = Some(at);
            r.acked = r.sent;
            r.acked_in_time = r.sent;
        }
        Ok(Err(e)) => return r.fail("closed", e),
        Err(_) => return r.fail("timeout", "no PINGRESP after the run".into()),
    }
    disconnect(conn).await;
    r
}

/// The deliveries of an AMQP sender not yet settled, by delivery id (ids follow each other
/// from `base`; a settled one is `None` until those before it are settled too).
#[derive(Debug, Default)]
struct Unsettled {
    base: u32,
    sent_at: VecDeque<Option<Instant>>,
    count: usize,
}

impl Unsettled {
    fn push(&mut self, id: u32, at: Instant) {
        if self.sent_at.is_empty() {
            self.base = id;
        }
        self.sent_at.push_back(Some(at));
        self.count += 1;
    }

    /// Settles the unsettled deliveries among `first..=last`, each with when it was sent.
    fn settle(&mut self, first: u32, last: u32, mut each: impl FnMut(Instant)) {
        let len = self.sent_at.len();
        if len == 0 {
            return;
        }
        // Offsets from `base`, in serial-number arithmetic (an id before `base`: below zero).
        let from = first.wrapping_sub(self.base) as i32;
        let to = last.wrapping_sub(self.base) as i32;
        if to < 0 || from as i64 >= len as i64 || to < from {
            return;
        }
        let from = from.max(0) as usize;
        let to = (to as usize).min(len - 1);
        for slot in self.sent_at.range_mut(from..=to) {
            if let Some(at) = slot.take() {
                self.count -= 1;
                each(at);
            }
        }
        while let Some(None) = self.sent_at.front() {
            self.sent_at.pop_front();
            self.base = self.base.wrapping_add(1);
        }
    }
}

/// One AMQP device's telemetry: up to `window` transfers unsettled at once (and never more
/// than the link's credit), queued together and written in one write, each counted when the
/// hub's disposition accepts it.
async fn publish_amqp(
    mut conn: crate::amqp::AmqpConn,
    payload: Vec<u8>,
    window: usize,
    deadline: Instant,
    drain: Duration,
) -> Published {
    use fe2o3_amqp::frames::amqp::FrameBody;
    use fe2o3_amqp::types::definitions::Role;
    use fe2o3_amqp::types::messaging::DeliveryState;
    let message = crate::amqp::message(&payload);
    let mut r = Published::default();
    let mut unsettled = Unsettled::default();
    let drain_deadline = deadline + drain;
    loop {
        let now = Instant::now();
        if now < deadline && unsettled.count < window && conn.may_send() {
            while unsettled.count < window {
                match conn.put_transfer(&message) {
                    Ok(Some(id)) => {
                        unsettled.push(id, now);
                        r.sent += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return r.fail("closed", format!("transfer failed: {e}")),
                }
            }
            if let Err(e) = conn.write().await {
                return r.fail("closed", format!("transfer failed: {e}"));
            }
        }
        if unsettled.count == 0 && Instant::now() >= deadline {
            break;
        }
        let wait_until = if Instant::now() < deadline {
            deadline
        } else {
            drain_deadline
        };
        match tokio::time::timeout_at(wait_until, conn.read()).await {
            Err(_) if Instant::now() >= drain_deadline => {
                return r.fail(
                    "timeout",
                    format!("{} dispositions missing after the run", unsettled.count),
                );
            }
            Err(_) => continue,
            Ok(Ok(0)) => return r.fail("closed", "the hub closed the connection".into()),
            Ok(Err(e)) => return r.fail("closed", format!("reading: {e}")),
            Ok(Ok(_)) => {}
        }
        // Take every frame read before sending more.
        loop {
            let frame = match conn.frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return r.fail("closed", e),
            };
            match frame {
                // The hub settles (receiver settle mode first) with the outcome.
                FrameBody::Disposition(d) if d.role == Role::Receiver => {
                    let last = d.last.unwrap_or(d.first);
                    match &d.state {
                        Some(DeliveryState::Accepted(_)) => {
                            let at = Instant::now();
                            unsettled.settle(d.first, last, |t| {
                                r.latencies.push(micros(at - t));
                                r.acked += 1;
                                if at <= deadline {
                                    r.acked_in_time += 1;
                                }
                            });
                        }
                        // Not yet an outcome.
                        None | Some(DeliveryState::Received(_)) if !d.settled => {}
                        other => {
                            return r.fail("refused", format!("the hub did not accept: {other:?}"));
                        }
                    }
                }
                FrameBody::Flow(f) => conn.on_flow(&f),
                FrameBody::Detach(d) => {
                    return r.fail(
                        "closed",
                        format!(
                            "the hub detached the link ({})",
                            crate::amqp::describe(d.error.as_ref())
                        ),
                    );
                }
                FrameBody::End(e) => {
                    return r.fail(
                        "closed",
                        format!(
                            "the hub ended the session ({})",
                            crate::amqp::describe(e.error.as_ref())
                        ),
                    );
                }
                FrameBody::Close(c) => {
                    return r.fail(
                        "closed",
                        format!(
                            "the hub closed the connection ({})",
                            crate::amqp::describe(c.error.as_ref())
                        ),
                    );
                }
                _ => {}
            }
        }
    }
    conn.close().await;
    r
}

/// A telemetry client's open connection.
enum Link {
    Mqtt(Conn),
    Amqp(Box<crate::amqp::AmqpConn>),
}

async fn telemetry(a: TelemetryArgs) -> Result<Report> {
    let amqp = a.common.transport == crate::Transport::Amqp;
    if a.rate.is_some() && (amqp || a.qos == 0) {
        bail!("--rate paces MQTT QoS 1 publishes only: leave it out with --qos 0 or AMQP");
    }
    let env = Env::new(a.common).await?;
    let c = a.clients as usize;
    let mut report = env.report("telemetry");
    report.parameters = vec![
        ("clients", json!(c)),
        ("duration_s", json!(a.duration)),
        ("window", json!(a.window)),
        ("payload", json!(a.payload)),
        ("qos", json!(a.qos)),
    ];
    if let Some(rate) = a.rate {
        report.parameters.push(("rate", json!(rate)));
    }
    env.files_for(c, &mut report.notes);
    let devices = env.devices(Some(c))?;
    let setup = Arc::new(Errors::default());
    let slots = Arc::new(Semaphore::new(a.parallel as usize));
    let mut connecting = Vec::with_capacity(c);
    for d in &devices {
        let (target, d, setup, slots) =
            (env.target.clone(), d.clone(), setup.clone(), slots.clone());
        let retries = env.common.retries;
        connecting.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.ok()?;
            if amqp {
                return match crate::amqp::open(&target, &d).await {
                    Ok(c) => Some((d, Link::Amqp(Box::new(c)))),
                    Err(f) => {
                        setup.record(&f);
                        None
                    }
                };
            }
            open_retry(&target, &d, 60, retries, &setup)
                .await
                .0
                .map(|o| (d, Link::Mqtt(o.conn)))
        }));
    }
    let mut conns = Vec::with_capacity(c);
    for t in connecting {
        if let Some(x) = t.await.context("a connecting task failed")? {
            conns.push(x);
        }
    }
    let connected = conns.len() as u64;
    let payload = vec![b'x'; a.payload];
    let qos = if a.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let drain = Duration::from_secs_f64(env.common.timeout);
    let mut meter = Meter::start(&env.common.server_pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let pace = a.rate.map(|total| Pace {
        start,
        per_second: total / conns.len().max(1) as f64,
    });
    let mut tasks = Vec::with_capacity(conns.len());
    for (d, conn) in conns {
        let template = Publish {
            dup: false,
            retain: false,
            qos,
            topic: format!("devices/{}/messages/events/", d.id).into(),
            packet_id: None,
            payload: payload.clone().into(),
            properties: None,
        };
        let window = usize::from(a.window);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            match conn {
                Link::Amqp(conn) => publish_amqp(*conn, payload, window, deadline, drain).await,
                Link::Mqtt(conn) if qos == QoS::AtMostOnce => {
                    publish_qos0(conn, template, window, deadline, drain).await
                }
                Link::Mqtt(conn) => {
                    publish_qos1(conn, template, window, deadline, drain, pace).await
                }
            }
        }));
    }
    let errors = Errors::default();
    let (mut sent, mut acked, mut acked_in_time) = (0, 0, 0);
    let mut latencies = Vec::new();
    let mut confirmed = start;
    for t in tasks {
        let p = t.await.context("a publishing task failed")?;
        sent += p.sent;
        acked += p.acked;
        acked_in_time += p.acked_in_time;
        latencies.extend(p.latencies);
        if let Some(at) = p.confirmed_at {
            confirmed = confirmed.max(at);
        }
        if let Some((kind, message)) = p.failure {
            errors.record_kind(kind, message);
        }
    }
    let m = meter.finish(acked, "messages");
    env.suite(&mut report);
    report.elapsed_s = m.elapsed_s;
    report.generator_cpu_s = m.generator_cpu_s;
    report.server = m.server;
    report.errors = errors.snapshot();
    report.setup_errors = setup.snapshot();
    report.counts = vec![
        ("clients", c as u64),
        ("connected", connected),
        ("sent", sent),
        ("acked", acked),
        ("acked_in_time", acked_in_time),
    ];
    if qos == QoS::AtMostOnce {
        // Everything the broker took, over the time until it confirmed the last of it.
        let secs = (confirmed - start).as_secs_f64().max(a.duration).max(1e-9);
        report.rates = vec![("messages_per_s", acked as f64 / secs)];
        report.seconds = vec![("until_confirmed", secs)];
    } else {
        report.rates = vec![(
            "messages_per_s",
            acked_in_time as f64 / a.duration.max(1e-9),
        )];
        report.latencies = vec![("ack", Summary::of(latencies))];
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// storm

async fn storm(a: StormArgs) -> Result<Report> {
    let env = Env::new(a.common).await?;
    let n = a.connections as usize;
    let mut report = env.report("storm");
    report.parameters = vec![
        ("connections", json!(n)),
        ("parallel", json!(a.parallel)),
        ("graceful", json!(a.graceful)),
    ];
    env.files_for(n, &mut report.notes);
    let devices = env.devices(Some(n))?;
    let plan = env.plan(600, a.parallel, None);
    let setup = Arc::new(Errors::default());
    let start = Instant::now();
    let mut before = launch(&plan, &indexed(&devices), &setup);
    let first = before.opened(start).await;
    let up: Vec<(usize, Arc<Device>)> =
        first.up.iter().map(|i| (*i, devices[*i].clone())).collect();
    if up.len() < n {
        report.notes.push(format!(
            "only {} of {n} connections were up before the storm; the storm reconnects those",
            up.len()
        ));
    }
    before.stop(a.graceful).await;

    let errors = Arc::new(Errors::default());
    let mut meter = Meter::start(&env.common.server_pid);
    let start = Instant::now();
    let mut after = launch(&plan, &up, &errors);
    let back = after.opened(start).await;
    let m = meter.finish(back.up.len() as u64, "reconnects");
    env.suite(&mut report);
    after.stop(true).await;

    report.elapsed_s = back.all_s;
    report.generator_cpu_s = m.generator_cpu_s;
    report.server = m.server;
    report.errors = errors.snapshot();
    report.setup_errors = setup.snapshot();
    report.counts = vec![
        ("connections", n as u64),
        ("connected_before", up.len() as u64),
        ("reconnected", back.up.len() as u64),
        ("failed", back.failed as u64),
        ("retries", back.retries),
        ("errors", errors.total()),
    ];
    report.rates = vec![(
        "reconnects_per_s",
        back.up.len() as f64 / back.last_up_s.max(1e-9),
    )];
    report.seconds = vec![
        ("first_connect_all", first.all_s),
        ("until_last_back", back.last_up_s),
        ("until_all_settled", back.all_s),
    ];
    report.latencies = vec![
        ("back_after", Summary::of(back.since_start_us)),
        ("attempt", Summary::of(back.attempt_us)),
    ];
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// revoke

/// One revocation: which connection, when the PUT went out and when the 200 came back.
struct Revocation {
    index: usize,
    sent: Instant,
    answered: Instant,
}

async fn revoke(a: RevokeArgs) -> Result<Report> {
    let api_ca = a.api_ca.clone().unwrap_or_else(|| a.common.ca.clone());
    let env = Env::new(a.common).await?;
    let n = a.connections as usize;
    let k = a.revoke as usize;
    if k > n {
        bail!("--revoke {k} is more than --connections {n}");
    }
    let api = Arc::new(Api::new(&a.connection_string, &api_ca)?);
    let mut report = env.report("revoke");
    report.parameters = vec![
        ("connections", json!(n)),
        ("revoke", json!(k)),
        ("parallel", json!(a.parallel)),
    ];
    env.files_for(n, &mut report.notes);
    let devices = env.devices(Some(n))?;
    let plan = env.plan(600, a.parallel, None);
    let setup = Arc::new(Errors::default());
    let start = Instant::now();
    let mut fleet = launch(&plan, &indexed(&devices), &setup);
    let opening = fleet.opened(start).await;
    let mut up = opening.up.clone();
    up.sort_unstable();
    let chosen: Vec<usize> = up.iter().copied().take(k).collect();
    if chosen.len() < k {
        report.notes.push(format!(
            "only {} connections were up; {} revoked",
            up.len(),
            chosen.len()
        ));
    }
    let targets: Vec<(usize, String)> = chosen
        .iter()
        .map(|i| (*i, devices[*i].id.clone()))
        .collect();
    // Read the devices first: only the PUTs are measured.
    let bodies: Vec<(usize, String, Value)> = {
        let (api, targets) = (api.clone(), targets.clone());
        tokio::task::spawn_blocking(move || -> Result<Vec<(usize, String, Value)>> {
            targets
                .into_iter()
                .map(|(i, id)| api.get_device(&id).map(|v| (i, id, v)))
                .collect()
        })
        .await
        .context("the service API task failed")??
    };
    let mut meter = Meter::start(&env.common.server_pid);
    let put_errors = Arc::new(Errors::default());
    let revocations: Vec<Revocation> = {
        let (api, bodies, put_errors) = (api.clone(), bodies.clone(), put_errors.clone());
        tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            for (index, id, body) in &bodies {
                let sent = Instant::now();
                match api.set_status(body, id, "disabled") {
                    Ok(()) => done.push(Revocation {
                        index: *index,
                        sent,
                        answered: Instant::now(),
                    }),
                    Err(e) => put_errors.record_kind("api".into(), format!("{e:#}")),
                }
            }
            done
        })
        .await
        .context("the service API task failed")?
    };
    // Wait for the server to close the revoked connections.
    let revoked: HashSet<usize> = revocations.iter().map(|r| r.index).collect();
    let mut closes: HashMap<usize, (Instant, String)> = HashMap::new();
    let mut others: Vec<(usize, String)> = Vec::new();
    let wait_until = Instant::now() + Duration::from_secs_f64(env.common.timeout);
    while closes.len() < revoked.len() {
        match tokio::time::timeout_at(wait_until, fleet.closed.recv()).await {
            Ok(Some((i, at, why))) if revoked.contains(&i) => {
                closes.insert(i, (at, why));
            }
            Ok(Some((i, _, why))) => others.push((i, why)),
            Ok(None) | Err(_) => break,
        }
    }
    let m = meter.finish(revocations.len() as u64, "revocations");
    env.suite(&mut report);
    for (i, _, why) in fleet.server_closed() {
        if !revoked.contains(&i) {
            others.push((i, why));
        }
    }
    let mut after_request = Vec::new();
    let mut after_answer = Vec::new();
    let mut api_us = Vec::new();
    let mut before_answer = 0u64;
    for r in &revocations {
        api_us.push(micros(r.answered - r.sent));
        if let Some((at, _)) = closes.get(&r.index) {
            after_request.push(micros(at.saturating_duration_since(r.sent)));
            after_answer.push(micros(at.saturating_duration_since(r.answered)));
            if *at < r.answered {
                before_answer += 1;
            }
        }
    }
    let not_closed = revocations.len() - closes.len();
    let errors = put_errors.snapshot();
    // Enable them again, so the run can be repeated.
    let reenabled = {
        let (api, setup2) = (api.clone(), setup.clone());
        tokio::task::spawn_blocking(move || {
            let mut ok = 0u64;
            for (_, id, body) in &bodies {
                match api.set_status(body, id, "enabled") {
                    Ok(()) => ok += 1,
                    Err(e) => setup2.record_kind("api".into(), format!("enabling again: {e:#}")),
                }
            }
            ok
        })
        .await
        .context("the service API task failed")?
    };
    fleet.stop(true).await;

    report.elapsed_s = m.elapsed_s;
    report.generator_cpu_s = m.generator_cpu_s;
    report.server = m.server;
    report.errors = errors;
    if not_closed > 0 {
        report.errors.insert(
            "not closed".into(),
            (
                not_closed as u64,
                format!(
                    "revoked and still connected {} s after the last revocation",
                    env.common.timeout
                ),
            ),
        );
    }
    report.setup_errors = setup.snapshot();
    report.counts = vec![
        ("connections", n as u64),
        ("established", opening.up.len() as u64),
        ("revoked", revocations.len() as u64),
        ("closed", closes.len() as u64),
        ("closed_before_answer", before_answer),
        ("other_connections_closed", others.len() as u64),
        ("reenabled", reenabled),
    ];
    report.latencies = vec![
        ("close_after_answer", Summary::of(after_answer)),
        ("close_after_request", Summary::of(after_request)),
        ("api_put", Summary::of(api_us)),
    ];
    if before_answer > 0 {
        report.notes.push(format!(
            "{before_answer} connection(s) were closed before the API's answer arrived (counted as 0 ms after it)"
        ));
    }
    if let Some((i, why)) = others.first() {
        report.notes.push(format!(
            "{} connection(s) not revoked were closed too, e.g. {}: {why}",
            others.len(),
            devices[*i].id
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_settled_once_in_any_order() {
        let t0 = Instant::now();
        let mut u = Unsettled::default();
        for id in 5..13 {
            u.push(id, t0 + Duration::from_millis(u64::from(id)));
        }
        let mut seen = Vec::new();
        let mut take = |u: &mut Unsettled, first, last| {
            u.settle(first, last, |t| seen.push((t - t0).as_millis()));
        };
        // Out of order, partly before the first unsettled, partly twice.
        take(&mut u, 8, 9);
        take(&mut u, 0, 5);
        take(&mut u, 9, 10);
        assert_eq!(u.count, 4);
        // The settled front is dropped; the hole at 6..=7 keeps the rest.
        assert_eq!((u.base, u.sent_at.len()), (6, 7));
        take(&mut u, 6, 7);
        assert_eq!((u.base, u.sent_at.len()), (11, 2));
        // Beyond the last sent: only what was sent.
        take(&mut u, 11, 1000);
        assert_eq!(u.count, 0);
        assert!(u.sent_at.is_empty());
        take(&mut u, 3, 4);
        assert_eq!(seen, vec![8, 9, 5, 10, 6, 7, 11, 12]);
        // Ids that wrap around.
        let mut u = Unsettled::default();
        u.push(u32::MAX, t0);
        u.push(0, t0);
        let mut n = 0;
        u.settle(u32::MAX - 3, 0, |_| n += 1);
        assert_eq!((n, u.count), (2, 0));
    }
}
