//! `certhub bench provision`: a first-boot storm through a device provisioning service in
//! Azure DPS's MQTT shape (certhub's provisioning endpoint is its MQTT listener). Every widget:
//!
//! 1. TCP and a full TLS handshake with its chain (leaf and intermediates) to the provisioning
//!    endpoint; CONNECT with client id = registration id = the leaf's CN and user name
//!    `{idScope}/registrations/{registrationId}/api-version=2019-03-31&ClientVersion=...`,
//!    no password, clean session; CONNACK 0;
//! 2. SUBSCRIBE `$dps/registrations/res/#` (QoS 1), SUBACK;
//! 3. PUBLISH (QoS 1) `$dps/registrations/PUT/iotdps-register/?$rid={rid}` with
//!    `{"registrationId": ..., "payload": null}`; PUBACK and the answer, a PUBLISH on
//!    `$dps/registrations/res/{status}/?$rid={rid}[&retry-after=N]`: 200 `assigned` ends it,
//!    202 `assigning` is polled with `$dps/registrations/GET/iotdps-get-operationstatus/
//!    ?$rid={rid}&operationId={op}`, 429 and 5xx are asked again after `retry-after`;
//! 4. DISCONNECT; then TLS to the hub it was assigned, CONNECT as the device (the usual
//!    `{hub}/{deviceId}/?api-version=...`), CONNACK 0, DISCONNECT.
//!
//! Failures of a whole attempt (TCP, TLS, an overloaded endpoint, a timeout) are retried as
//! the other scenarios retry connections; a refusal (CONNACK 5, a 401 answer) is not. Every
//! failure is counted by kind, `dps ...` for the provisioning endpoint, `hub ...` for the
//! assigned hub.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::{Packet, SubscribeReturnCode};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::ProvisionArgs;
use crate::conn::{Conn, Failure, Target, disconnect, micros, open, packet_name};
use crate::devices::Device;
use crate::report::{Errors, Summary};
use crate::scenarios::{Env, Meter, backoff};

/// The DPS API version the SDKs name in the user name.
const API_VERSION: &str = "2019-03-31";
/// The topic filter the answers come on.
const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
/// How long to wait before polling when a 202 names no retry-after (the SDKs wait 2 s; a
/// benchmark polls sooner).
const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// How long to wait before asking again after a 429 or 5xx without retry-after.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// The longest retry-after obeyed.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The DPS user name of a registration.
pub fn dps_username(id_scope: &str, registration_id: &str) -> String {
    format!(
        "{id_scope}/registrations/{registration_id}/api-version={API_VERSION}&ClientVersion=certhub-bench"
    )
}

/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after=N]`: status, rid, retry-after.
fn parse_response(topic: &str) -> Option<(u16, String, Option<u64>)> {
    let rest = topic.strip_prefix("$dps/registrations/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let status: u16 = status.parse().ok()?;
    let mut rid = None;
    let mut retry_after = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "$rid" => rid = Some(v.to_string()),
            "retry-after" => retry_after = v.parse().ok(),
            _ => {}
        }
    }
    Some((status, rid?, retry_after))
}

/// Why a registration attempt failed.
#[derive(Debug)]
enum RegFailure {
    /// Before or at CONNACK.
    Conn(Failure),
    /// No answer in time; what was awaited.
    Timeout(&'static str),
    /// The endpoint closed the connection after CONNACK.
    Closed(String),
    Protocol(String),
    /// An answer with this status: neither 200, 202 nor one to ask again after.
    Status(u16, String),
    /// 200 with a status other than assigned (failed, disabled).
    NotAssigned(String),
    /// Not assigned after this many answers.
    GaveUp(u32),
}

/// `kind` of a connection failure with the phase in front (not the open-file limit, which
/// the caller reports as it is).
fn phase_kind(phase: &str, f: &Failure) -> String {
    let kind = f.kind();
    if kind == "too many open files" {
        kind
    } else {
        format!("{phase} {kind}")
    }
}

impl RegFailure {
    fn kind(&self) -> String {
        match self {
            Self::Conn(f) => phase_kind("dps", f),
            Self::Timeout(_) => "dps timeout".into(),
            Self::Closed(_) => "dps closed".into(),
            Self::Protocol(_) => "dps protocol".into(),
            Self::Status(s, _) => format!("dps status {s}"),
            Self::NotAssigned(_) => "dps not assigned".into(),
            Self::GaveUp(_) => "dps gave up".into(),
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Conn(f) => f.message(),
            Self::Timeout(what) => format!("timed out waiting for {what}"),
            Self::Closed(what) => format!("the provisioning endpoint closed the connection {what}"),
            Self::Protocol(what) => format!("protocol: {what}"),
            Self::Status(s, what) => format!("answer {s}: {what}"),
            Self::NotAssigned(what) => format!("answer 200 but not assigned: {what}"),
            Self::GaveUp(n) => format!("still not assigned after {n} answers"),
        }
    }

    /// Worth another attempt from a new connection.
    fn retryable(&self) -> bool {
        match self {
            Self::Conn(f) => f.retryable(),
            Self::Timeout(_) | Self::Closed(_) => true,
            Self::Protocol(_) | Self::Status(..) | Self::NotAssigned(_) | Self::GaveUp(_) => false,
        }
    }
}

/// A registration that ended in `assigned`.
#[derive(Debug)]
struct Registered {
    hub: String,
    device_id: String,
    handshake_us: u32,
    /// From the register PUBLISH to the 200 `assigned` (polls included).
    answer_us: u32,
    polls: u32,
    throttled: u32,
}

/// One answer: its status, retry-after and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// Text of a DPS error body, or of a failed registration state.
fn answer_text(body: &Value) -> String {
    let state = &body["registrationState"];
    for v in [
        &body["message"],
        &state["errorMessage"],
        &body["errorCode"],
        &body["status"],
    ] {
        if let Some(s) = v.as_str() {
            return s.to_string();
        }
        if v.is_number() {
            return v.to_string();
        }
    }
    body.to_string().chars().take(300).collect()
}

/// Waits for the next packet by `deadline`.
async fn next_packet(
    conn: &mut Conn,
    deadline: Instant,
    awaited: &'static str,
) -> Result<Packet, RegFailure> {
    match tokio::time::timeout_at(deadline, conn.next()).await {
        Err(_) => Err(RegFailure::Timeout(awaited)),
        Ok(None) => Err(RegFailure::Closed(format!("while waiting for {awaited}"))),
        Ok(Some(Err(e))) => Err(RegFailure::Closed(format!(
            "while waiting for {awaited} ({e})"
        ))),
        Ok(Some(Ok((p, _)))) => Ok(p),
    }
}

async fn send(conn: &mut Conn, packet: Packet, deadline: Instant) -> Result<(), RegFailure> {
    let what = packet_name(&packet);
    match tokio::time::timeout_at(deadline, conn.send(packet)).await {
        Err(_) => Err(RegFailure::Timeout("a packet to be sent")),
        Ok(Err(e)) => Err(RegFailure::Closed(format!("while {what} was sent ({e})"))),
        Ok(Ok(())) => Ok(()),
    }
}

/// One request, PUBLISH QoS 1 on `topic` with packet id and `$rid` `id`: waits for its
/// PUBACK and its answer.
async fn request(
    conn: &mut Conn,
    id: NonZeroU16,
    topic: String,
    body: &str,
    timeout: Duration,
) -> Result<Answer, RegFailure> {
    let deadline = Instant::now() + timeout;
    let rid = id.to_string();
    let publish = Publish {
        dup: false,
        retain: false,
        qos: QoS::AtLeastOnce,
        topic: topic.into(),
        packet_id: Some(id),
        payload: body.as_bytes().to_vec().into(),
        properties: None,
    };
    send(conn, Packet::Publish(Box::new(publish)), deadline).await?;
    let mut acked = false;
    let mut answer = None;
    loop {
        if acked && let Some(a) = answer {
            return Ok(a);
        }
        let awaited = if acked { "the answer" } else { "PUBACK" };
        match next_packet(conn, deadline, awaited).await? {
            Packet::PublishAck { packet_id } if packet_id == id => acked = true,
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce
                    && let Some(packet_id) = p.packet_id
                {
                    send(conn, Packet::PublishAck { packet_id }, deadline).await?;
                }
                let Some((status, their_rid, retry_after)) = parse_response(&p.topic) else {
                    return Err(RegFailure::Protocol(format!(
                        "a PUBLISH on {:?}, not a $dps/registrations/res/ answer",
                        &*p.topic
                    )));
                };
                // An answer to an earlier request (one that timed out) is of no interest.
                if their_rid == rid {
                    answer = Some(Answer {
                        status,
                        retry_after,
                        body: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                    });
                }
            }
            Packet::PingResponse | Packet::PublishAck { .. } => {}
            other => {
                return Err(RegFailure::Protocol(format!(
                    "{} while waiting for {awaited}",
                    packet_name(&other)
                )));
            }
        }
    }
}

/// What the endpoint's answers added up to, for the report.
#[derive(Debug, Default)]
struct Tally {
    polls: u32,
    throttled: u32,
}

/// The assigned hub, the device id and the microseconds from the register PUBLISH to the answer.
type Assigned = (String, String, u32);

/// After CONNACK: subscribe, register, poll until assigned.
async fn session(
    conn: &mut Conn,
    registration_id: &str,
    timeout: Duration,
    max_answers: u32,
    errors: &Errors,
    tally: &mut Tally,
) -> Result<Assigned, RegFailure> {
    let deadline = Instant::now() + timeout;
    let sub_id = NonZeroU16::MIN;
    send(
        conn,
        Packet::Subscribe {
            packet_id: sub_id,
            topic_filters: vec![(RESPONSE_FILTER.to_string().into(), QoS::AtLeastOnce)],
        },
        deadline,
    )
    .await?;
    loop {
        match next_packet(conn, deadline, "SUBACK").await? {
            Packet::SubscribeAck { packet_id, status } if packet_id == sub_id => {
                if !matches!(status.first(), Some(SubscribeReturnCode::Success(_))) {
                    return Err(RegFailure::Protocol(format!(
                        "SUBACK refused {RESPONSE_FILTER}: {status:?}"
                    )));
                }
                break;
            }
            Packet::PingResponse => {}
            other => {
                return Err(RegFailure::Protocol(format!(
                    "{} instead of SUBACK",
                    packet_name(&other)
                )));
            }
        }
    }
    let register_body = json!({"registrationId": registration_id, "payload": null}).to_string();
    let mut operation: Option<String> = None;
    let mut next_id: u16 = 2;
    let mut answers = 0;
    let asked = Instant::now();
    loop {
        let id = NonZeroU16::new(next_id).unwrap_or(NonZeroU16::MIN);
        next_id = next_id.checked_add(1).unwrap_or(2);
        let (topic, body) = match &operation {
            None => (
                format!("$dps/registrations/PUT/iotdps-register/?$rid={id}"),
                register_body.as_str(),
            ),
            Some(op) => (
                format!(
                    "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={id}&operationId={op}"
                ),
                "",
            ),
        };
        let a = request(conn, id, topic, body, timeout).await?;
        answers += 1;
        let state = a.body["status"].as_str().unwrap_or("");
        let wait = match a.status {
            200 if state == "assigned" => {
                let reg = &a.body["registrationState"];
                let (Some(hub), Some(device)) =
                    (reg["assignedHub"].as_str(), reg["deviceId"].as_str())
                else {
                    return Err(RegFailure::Protocol(format!(
                        "200 assigned without registrationState.assignedHub and deviceId: {}",
                        a.body
                    )));
                };
                return Ok((hub.to_string(), device.to_string(), micros(asked.elapsed())));
            }
            200 | 202 if matches!(state, "assigning" | "unassigned") => {
                if let Some(op) = a.body["operationId"].as_str() {
                    operation = Some(op.to_string());
                } else if operation.is_none() {
                    return Err(RegFailure::Protocol(format!(
                        "{} {state} without an operationId: {}",
                        a.status, a.body
                    )));
                }
                tally.polls += 1;
                a.retry_after
                    .map_or(DEFAULT_POLL, Duration::from_secs)
                    .min(MAX_WAIT)
            }
            200 | 202 => return Err(RegFailure::NotAssigned(answer_text(&a.body))),
            s if s == 429 || s >= 500 => {
                tally.throttled += 1;
                let wait = a
                    .retry_after
                    .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
                    .min(MAX_WAIT);
                errors.record_kind(
                    format!("dps status {s} (asked again)"),
                    format!(
                        "answer {s}: {}; asked again after {} s",
                        answer_text(&a.body),
                        wait.as_secs_f64()
                    ),
                );
                wait
            }
            s => return Err(RegFailure::Status(s, answer_text(&a.body))),
        };
        if answers >= max_answers {
            return Err(RegFailure::GaveUp(answers));
        }
        tokio::time::sleep(wait).await;
    }
}

/// One registration attempt on a new connection.
async fn register_once(
    target: &Target,
    device: &Device,
    timeout: Duration,
    max_answers: u32,
    errors: &Errors,
    tally: &mut Tally,
) -> Result<Registered, RegFailure> {
    let opened = open(target, device, 60).await.map_err(RegFailure::Conn)?;
    let mut conn = opened.conn;
    let (hub, device_id, answer_us) =
        session(&mut conn, &device.id, timeout, max_answers, errors, tally).await?;
    disconnect(conn).await;
    Ok(Registered {
        hub,
        device_id,
        handshake_us: opened.handshake_us,
        answer_us,
        polls: tally.polls,
        throttled: tally.throttled,
    })
}

/// What the widgets share.
struct Ctx {
    dps: Arc<Target>,
    timeout: Duration,
    retries: u32,
    errors: Errors,
    username_template: String,
    hub_port: u16,
    hub_address: Option<String>,
    register_only: bool,
    /// The assigned hubs' targets, by name.
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Target>>>,
}

impl Ctx {
    /// The target of an assigned hub, resolved once.
    async fn hub(&self, name: &str) -> Result<Arc<Target>, String> {
        let mut hubs = self.hubs.lock().await;
        if let Some(t) = hubs.get(name) {
            return Ok(t.clone());
        }
        let host = self.hub_address.as_deref().unwrap_or(name);
        let addr = tokio::net::lookup_host((host, self.hub_port))
            .await
            .map_err(|e| format!("the assigned hub {name:?}: {host}: {e}"))?
            .min_by_key(std::net::SocketAddr::is_ipv6)
            .ok_or_else(|| format!("the assigned hub {name:?}: {host} has no address"))?;
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            format!("the assigned hub {name:?} is neither a DNS name nor an IP address")
        })?;
        let target = Arc::new(
            Target::new(
                addr,
                server_name,
                self.dps.sources.clone(),
                self.dps.timeout,
            )
            .over_websocket(self.dps.websocket),
        );
        hubs.insert(name.to_string(), target.clone());
        Ok(target)
    }
}

/// How one widget's first boot went.
#[derive(Debug, Default)]
struct Boot {
    registered: Option<Registered>,
    /// From the widget's start (its turn) to its 200 assigned, retries included.
    register_us: u32,
    registered_at: Option<Instant>,
    dps_attempts: u32,
    /// From the end of the registration to the hub's CONNACK 0, retries included.
    connect_us: Option<u32>,
    connected_at: Option<Instant>,
    hub_attempts: u32,
    settled_at: Option<Instant>,
}

/// One widget's first boot; `device` carries the registration id and the DPS user name.
async fn boot(ctx: &Ctx, device: &Device) -> Boot {
    let mut b = Boot::default();
    let start = Instant::now();
    let max_answers = ctx.retries.saturating_add(1).max(2);
    // Polls and throttled answers of every attempt, not only the last.
    let mut tally = Tally::default();
    let registered = loop {
        b.dps_attempts += 1;
        match register_once(
            &ctx.dps,
            device,
            ctx.timeout,
            max_answers,
            &ctx.errors,
            &mut tally,
        )
        .await
        {
            Ok(r) => break r,
            Err(f) => {
                ctx.errors.record_kind(f.kind(), f.message());
                if !f.retryable() || b.dps_attempts > ctx.retries {
                    b.settled_at = Some(Instant::now());
                    return b;
                }
                tokio::time::sleep(backoff(b.dps_attempts)).await;
            }
        }
    };
    let now = Instant::now();
    b.register_us = micros(now - start);
    b.registered_at = Some(now);
    let hub = registered.hub.clone();
    let hub_device = Device {
        username: ctx
            .username_template
            .replace("{host}", &hub)
            .replace("{id}", &registered.device_id),
        id: registered.device_id.clone(),
        config: device.config.clone(),
        leaf: device.leaf.clone(),
    };
    b.registered = Some(registered);
    if ctx.register_only {
        b.settled_at = Some(now);
        return b;
    }
    let target = match ctx.hub(&hub).await {
        Ok(t) => t,
        Err(e) => {
            ctx.errors.record_kind("hub unknown".into(), e);
            b.settled_at = Some(Instant::now());
            return b;
        }
    };
    let from = Instant::now();
    loop {
        b.hub_attempts += 1;
        match open(&target, &hub_device, 60).await {
            Ok(o) => {
                let at = Instant::now();
                b.connect_us = Some(micros(at - from));
                b.connected_at = Some(at);
                disconnect(o.conn).await;
                break;
            }
            Err(f) => {
                ctx.errors.record_kind(phase_kind("hub", &f), f.message());
                if !f.retryable() || b.hub_attempts > ctx.retries {
                    break;
                }
                tokio::time::sleep(backoff(b.hub_attempts)).await;
            }
        }
    }
    b.settled_at = Some(Instant::now());
    b
}

pub async fn run(a: ProvisionArgs) -> Result<crate::report::Report> {
    let hub_port = a.hub_port.unwrap_or(a.common.port);
    let env = Env::new(a.common).await?;
    let n = a.widgets as usize;
    let mut report = env.report("provision");
    report.parameters = vec![
        ("widgets", json!(n)),
        ("parallel", json!(a.parallel)),
        ("id_scope", json!(a.id_scope)),
        ("hub_port", json!(hub_port)),
        ("register_only", json!(a.register_only)),
    ];
    env.files_for(a.parallel as usize * 2, &mut report.notes);
    let devices = env.devices(Some(n))?;
    // Registration id = the leaf's CN (the folder's name when the leaf has none).
    let widgets: Vec<Arc<Device>> = devices
        .into_iter()
        .map(|d| {
            let id = certhub_pki::certificate_common_name(d.leaf.as_ref())
                .unwrap_or_else(|| d.id.clone());
            Arc::new(Device {
                username: dps_username(&a.id_scope, &id),
                id,
                config: d.config.clone(),
                leaf: d.leaf.clone(),
            })
        })
        .collect();
    let ctx = Arc::new(Ctx {
        dps: env.target.clone(),
        timeout: Duration::from_secs_f64(env.common.timeout),
        retries: env.common.retries,
        errors: Errors::default(),
        username_template: env.common.username_template.clone(),
        hub_port,
        hub_address: a.hub_address.clone(),
        register_only: a.register_only,
        hubs: tokio::sync::Mutex::default(),
    });
    let slots = Arc::new(Semaphore::new(a.parallel as usize));
    let mut meter = Meter::start(&env.common.server_pid);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for device in &widgets {
        let (ctx, slots, device) = (ctx.clone(), slots.clone(), device.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.ok()?;
            Some(boot(&ctx, &device).await)
        }));
    }
    let mut boots = Vec::with_capacity(n);
    for t in tasks {
        if let Some(b) = t.await.context("a widget's task failed")? {
            boots.push(b);
        }
    }
    let registered = boots.iter().filter(|b| b.registered.is_some()).count() as u64;
    let m = meter.finish(registered, "registrations");
    env.suite(&mut report);

    let connected = boots.iter().filter(|b| b.connected_at.is_some()).count() as u64;
    let since = |at: Option<Instant>| at.map(|t| (t - start).as_secs_f64());
    let last = |f: &dyn Fn(&Boot) -> Option<Instant>| {
        boots
            .iter()
            .filter_map(|b| since(f(b)))
            .fold(0.0_f64, f64::max)
    };
    let until_registered = last(&|b| b.registered_at);
    let until_connected = last(&|b| b.connected_at);
    let until_settled = last(&|b| b.settled_at);
    let mut hubs: BTreeMap<String, u64> = BTreeMap::new();
    let (mut polls, mut throttled, mut dps_retries, mut hub_retries) = (0u64, 0u64, 0u64, 0u64);
    let (mut register_us, mut answer_us, mut handshake_us, mut connect_us, mut since_us) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in &boots {
        dps_retries += u64::from(b.dps_attempts.saturating_sub(1));
        hub_retries += u64::from(b.hub_attempts.saturating_sub(1));
        if let Some(r) = &b.registered {
            *hubs.entry(r.hub.clone()).or_default() += 1;
            polls += u64::from(r.polls);
            throttled += u64::from(r.throttled);
            register_us.push(b.register_us);
            answer_us.push(r.answer_us);
            handshake_us.push(r.handshake_us);
        }
        if let (Some(c), Some(at)) = (b.connect_us, b.connected_at) {
            connect_us.push(c);
            since_us.push(micros(at - start));
        }
    }
    report.target.push(("assigned_hubs", json!(hubs)));
    report.elapsed_s = until_settled;
    report.generator_cpu_s = m.generator_cpu_s;
    report.server = m.server;
    report.errors = ctx.errors.snapshot();
    let done = if a.register_only {
        registered
    } else {
        connected
    };
    report.counts = vec![
        ("widgets", n as u64),
        ("registered", registered),
        ("connected", connected),
        ("failed", n as u64 - done),
        ("polls", polls),
        ("throttled", throttled),
        ("dps_retries", dps_retries),
        ("hub_retries", hub_retries),
        ("errors", ctx.errors.total()),
    ];
    report.rates = vec![(
        "registrations_per_s",
        registered as f64 / until_registered.max(1e-9),
    )];
    if !a.register_only {
        report.rates.push((
            "connected_per_s",
            connected as f64 / until_connected.max(1e-9),
        ));
    }
    report.seconds = vec![("until_all_registered", until_registered)];
    if !a.register_only {
        report
            .seconds
            .push(("until_all_connected", until_connected));
    }
    report.seconds.push(("until_all_settled", until_settled));
    report.latencies = vec![
        ("register", Summary::of(register_us)),
        ("register_answer", Summary::of(answer_us)),
        ("dps_handshake", Summary::of(handshake_us)),
    ];
    if !a.register_only {
        report.latencies.push(("connect", Summary::of(connect_us)));
        report
            .latencies
            .push(("since_start", Summary::of(since_us)));
    }
    if done < n as u64 {
        report.notes.push(format!(
            "{} of {n} widgets did not {}; the times until all are to the last that did",
            n as u64 - done,
            if a.register_only {
                "register"
            } else {
                "get connected"
            }
        ));
    }
    report.notes.push(
        "register: from a widget's turn to its 200 assigned (retries included); register_answer: from the register PUBLISH to that answer; connect: from then to the assigned hub's CONNACK 0".into(),
    );
    if !a.register_only {
        report.notes.push(
            "the server's CPU covers both connections of every widget (provisioning endpoint and hub); --register-only measures the endpoint alone".into(),
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmqtt_codec::v3::Codec;
    use tokio_util::codec::Framed;

    #[test]
    fn answers_and_user_names_read_as_the_sdks_have_them() {
        assert_eq!(
            parse_response("$dps/registrations/res/200/?$rid=7"),
            Some((200, "7".into(), None))
        );
        assert_eq!(
            parse_response("$dps/registrations/res/429/?$rid=12&retry-after=3"),
            Some((429, "12".into(), Some(3)))
        );
        assert_eq!(parse_response("$dps/registrations/res/abc/?$rid=1"), None);
        assert_eq!(parse_response("$dps/registrations/res/200/?x=1"), None);
        assert_eq!(parse_response("devices/x/messages/devicebound/"), None);
        assert_eq!(
            dps_username("0ne00ABCDEF", "smart-x-widget-0001"),
            "0ne00ABCDEF/registrations/smart-x-widget-0001/api-version=2019-03-31&ClientVersion=certhub-bench"
        );
        assert_eq!(
            answer_text(&json!({"errorCode": 401002, "message": "not authorized"})),
            "not authorized"
        );
        assert_eq!(
            answer_text(
                &json!({"status": "failed", "registrationState": {"errorMessage": "no hub"}})
            ),
            "no hub"
        );
    }

    /// A provisioning endpoint in memory: SUBACK, then for each request the answers of
    /// `script` in turn (status, retry-after, body), each after a PUBACK; returns the topics
    /// it was asked on.
    async fn endpoint(
        io: tokio::io::DuplexStream,
        script: Vec<(u16, Option<u64>, Value)>,
    ) -> Vec<String> {
        let mut server = Framed::new(io, Codec::new(1 << 20));
        let mut topics = Vec::new();
        let mut script = script.into_iter();
        while let Some(Ok((packet, _))) = server.next().await {
            match packet {
                Packet::Subscribe { packet_id, .. } => {
                    let status = vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)];
                    let _ = server
                        .send(Packet::SubscribeAck { packet_id, status })
                        .await;
                }
                Packet::Publish(p) => {
                    let Some(packet_id) = p.packet_id else { break };
                    topics.push(p.topic.to_string());
                    let rid = p
                        .topic
                        .split("$rid=")
                        .nth(1)
                        .and_then(|r| r.split('&').next())
                        .unwrap_or_default()
                        .to_string();
                    let _ = server.send(Packet::PublishAck { packet_id }).await;
                    let Some((status, retry, body)) = script.next() else {
                        break;
                    };
                    let mut topic = format!("$dps/registrations/res/{status}/?$rid={rid}");
                    if let Some(r) = retry {
                        topic.push_str(&format!("&retry-after={r}"));
                    }
                    // An answer to another request first: it must be ignored.
                    let stale = qos0("$dps/registrations/res/500/?$rid=999".into(), "{}".into());
                    let _ = server.send(stale).await;
                    let _ = server.send(qos0(topic, body.to_string())).await;
                }
                _ => break,
            }
        }
        topics
    }

    fn qos0(topic: String, body: String) -> Packet {
        Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos: QoS::AtMostOnce,
            topic: topic.into(),
            packet_id: None,
            payload: body.into_bytes().into(),
            properties: None,
        }))
    }

    fn run_session(
        script: Vec<(u16, Option<u64>, Value)>,
    ) -> (Result<Assigned, RegFailure>, Tally, Vec<String>, Errors) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let served = tokio::spawn(endpoint(server, script));
            let io: Box<dyn crate::conn::Io> = Box::new(client);
            let mut conn: Conn = Framed::new(io, Codec::new(1 << 20));
            let errors = Errors::default();
            let mut tally = Tally::default();
            let r = session(
                &mut conn,
                "w1",
                Duration::from_secs(5),
                10,
                &errors,
                &mut tally,
            )
            .await;
            drop(conn);
            let topics = served.await.expect("the endpoint task");
            (r, tally, topics, errors)
        })
    }

    #[test]
    fn a_registration_is_polled_and_asked_again_until_assigned() {
        let assigning = json!({"operationId": "4.abc", "status": "assigning"});
        let assigned = json!({"operationId": "4.abc", "status": "assigned",
            "registrationState": {"assignedHub": "hub.example", "deviceId": "w1"}});
        let (r, tally, topics, errors) = run_session(vec![
            (
                429,
                Some(0),
                json!({"errorCode": 429001, "message": "slow down"}),
            ),
            (202, Some(0), assigning.clone()),
            (503, Some(0), json!({"message": "busy"})),
            (200, None, assigned),
        ]);
        let (hub, device, _) = r.expect("assigned");
        assert_eq!((hub.as_str(), device.as_str()), ("hub.example", "w1"));
        assert_eq!((tally.polls, tally.throttled), (1, 2));
        assert_eq!(
            topics,
            [
                "$dps/registrations/PUT/iotdps-register/?$rid=2",
                "$dps/registrations/PUT/iotdps-register/?$rid=3",
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=4&operationId=4.abc",
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=5&operationId=4.abc",
            ]
        );
        let e = errors.snapshot();
        assert_eq!(e["dps status 429 (asked again)"].0, 1);
        assert!(e["dps status 429 (asked again)"].1.contains("slow down"));
        assert_eq!(e["dps status 503 (asked again)"].0, 1);
    }

    #[test]
    fn a_refusal_is_final_and_named_by_its_status() {
        let (r, _, topics, _) = run_session(vec![(
            401,
            None,
            json!({"errorCode": 401002, "message": "not authorized"}),
        )]);
        let f = r.expect_err("refused");
        assert_eq!(f.kind(), "dps status 401");
        assert!(f.message().contains("not authorized"));
        assert!(!f.retryable());
        assert_eq!(topics.len(), 1);
        let (r, _, _, _) = run_session(vec![(
            200,
            None,
            json!({"operationId": "4.x", "status": "failed",
                "registrationState": {"errorMessage": "no hub takes devices"}}),
        )]);
        let f = r.expect_err("failed");
        assert_eq!(f.kind(), "dps not assigned");
        assert!(f.message().contains("no hub takes devices"));
    }
}
