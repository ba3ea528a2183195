//! The MQTT session driver: the pure state machine of `certhub-mqtt` over any byte stream. It
//! reads packets, feeds them (and the hub's work, kicks, commits and timers) to the machine,
//! and carries out the machine's actions with the device session core. It holds no rule of
//! its own: what a packet means and what the hub answers is decided by the machine and the
//! core. TLS on 8883 and WebSocket frames on 443 run the same code.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certhub_mqtt::{Action, End, Input, Limits, Machine};
use certhub_pki::CertificateDer;
use futures_util::{FutureExt, SinkExt, StreamExt};
use rmqtt_codec::v3::{Codec, ConnectAckReason, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::device::{Attempt, DeviceCore, Ended, Live, Refused};
use crate::gate::Pending;
use crate::sessions::{Mail, Outbound};
use crate::state::now_ms;
use crate::telemetry::Committed;

/// Telemetry larger than Azure's 256 KB is refused; the packet may carry a topic besides.
pub(crate) const MAX_PACKET: u32 = 256 * 1024 + 4096;
/// Initial read and write buffer of a session's codec.
const IDLE_BUFFER: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that the device does not read within this time closes its session (a slow or
/// stalled reader holds no buffers forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the transport learnt of a connection before its first MQTT packet.
#[derive(Debug)]
pub(crate) struct Connection {
    pub peer: SocketAddr,
    /// The TLS client chain, leaf first (empty: none presented).
    pub chain: Vec<CertificateDer<'static>>,
    pub tls13: bool,
    /// Its place among the connections that have not yet sent CONNECT.
    pub pending: Pending,
}

pub(crate) type Conn<S> = Framed<S, Codec>;

/// A device's connection from its first byte of MQTT to its end.
///
/// Not an `async fn`: an async fn's future keeps its arguments for its whole life, and the
/// stream (TLS state included, about 1.3 KB) would be held twice, once moved into the codec and
/// once as a dead argument. The codec and its stream go on the heap here, before the future
/// exists, and the future holds a pointer.
pub(crate) fn run<S>(
    io: S,
    conn: Connection,
    core: Arc<DeviceCore>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Small buffers for CONNECT (the read buffer grows for a large packet; the session drops
    // both once admitted): Framed's default 8 KiB read and write buffers were a third of an
    // idle session's heap.
    let framed = Box::new(Framed::with_capacity(
        io,
        Codec::new(MAX_PACKET),
        IDLE_BUFFER,
    ));
    run_framed(framed, conn, core)
}

async fn run_framed<S>(mut framed: Box<Conn<S>>, conn: Connection, core: Arc<DeviceCore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut machine = Machine::new(Limits::default(), now_ms());
    // The connection phase runs in its own allocation, freed when it ends.
    let Some((live, first)) = Box::pin(admit(&mut framed, &mut machine, conn, &core)).await else {
        return;
    };
    // The CONNECT packet's buffer is no longer needed: an idle session holds none (it grows
    // again with the next packet).
    if framed.read_buffer().is_empty() {
        drop(std::mem::take(framed.read_buffer_mut()));
    }
    if framed.write_buffer().is_empty() {
        drop(std::mem::take(framed.write_buffer_mut()));
    }
    let (end, will) = session(&mut framed, &mut machine, &core, &live, first).await;
    drop(framed);
    // Boxed: the epilogue's futures would otherwise take room in every session's task.
    Box::pin(core.close(live, end, will)).await;
}

/// Reads CONNECT and has the core decide; on success the session is registered and the device
/// has its CONNACK.
async fn admit<S>(
    framed: &mut Conn<S>,
    machine: &mut Machine,
    conn: Connection,
    core: &DeviceCore,
) -> Option<(Live, Vec<Action>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Connection {
        peer,
        chain,
        tls13,
        mut pending,
    } = conn;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let packet = match crate::gate::owed(
        &mut pending,
        deadline,
        framed.next(),
        core.state(),
        core.listener(),
    )
    .await
    {
        Some(Some(Ok((packet, _)))) => packet,
        _ => return None,
    };
    // The device has said who it claims to be; what follows is the hub's work.
    drop(pending);
    let mut out = Vec::new();
    machine.handle(Input::Packet(packet), now_ms(), &mut out);
    let mut queue: VecDeque<Action> = out.drain(..).collect();
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Send(packet) => {
                if !write(framed, packet).await {
                    return None;
                }
            }
            Action::Admit(connect) => {
                if crate::dps::mqtt::is_provisioning(connect.username.as_deref()).is_some() {
                    // A provisioning client: served here, never a device session.
                    Box::pin(crate::dps::mqtt::serve(
                        framed,
                        core.state(),
                        &connect,
                        peer,
                        &chain,
                        core.listener(),
                    ))
                    .await;
                    return None;
                }
                let answer = match decide(core, &connect, peer, &chain, tls13).await {
                    Ok(opened) => {
                        let input = Input::Admitted {
                            id: opened.live.device.id().clone(),
                            subs: opened.subs,
                            session_present: opened.session_present,
                            token_expiry_ms: opened
                                .live
                                .device
                                .expires()
                                .map(|se| se.saturating_mul(1000)),
                        };
                        // CONNACK goes out first; the bookkeeping of the new session
                        // follows, so the device never waits for it. What else the session
                        // starts with (the C2D of a resumed session) is the session's.
                        machine.handle(input, now_ms(), &mut out);
                        let mut rest = Vec::new();
                        for action in out.drain(..) {
                            match action {
                                Action::Send(packet) => {
                                    if !write(framed, packet).await {
                                        core.close(
                                            opened.live,
                                            Ended::Closed("write failed or timed out".into()),
                                            None,
                                        )
                                        .await;
                                        return None;
                                    }
                                }
                                other => rest.push(other),
                            }
                        }
                        core.announce(&opened.live, peer).await;
                        return Some((opened.live, rest));
                    }
                    Err(Refused::NotAuthorized) => Input::Refused(ConnectAckReason::NotAuthorized),
                    Err(Refused::Unavailable) => {
                        Input::Refused(ConnectAckReason::ServiceUnavailable)
                    }
                };
                machine.handle(answer, now_ms(), &mut out);
                queue.extend(out.drain(..));
            }
            // Refused, or not a valid CONNECT: nothing else is asked before a session.
            _ => return None,
        }
    }
    None
}

/// The CONNECT decision by the core; on success the session is registered. The chain was
/// for this decision: a session lives long, so it keeps no copy.
async fn decide(
    core: &DeviceCore,
    connect: &certhub_mqtt::Connect,
    peer: SocketAddr,
    chain: &[CertificateDer<'static>],
    tls13: bool,
) -> Result<crate::device::Opened, Refused> {
    let client_id = connect.client_id.as_str();
    let slot = core.slot(client_id, peer).await?;
    let attempt = Attempt {
        peer,
        chain,
        tls13,
        client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
    };
    let device = core.authenticate(attempt).await?;
    Ok(core.open(device, slot, connect.clean_session).await)
}

/// The oldest awaited commit, once it completes. Cancel-safe: nothing is removed until it
/// completes.
async fn next_commit(owed: &mut VecDeque<Committed>) -> Result<(), String> {
    let Some(front) = owed.front_mut() else {
        return std::future::pending().await;
    };
    let result = front.await.map(|_| ());
    owed.pop_front();
    result
}

/// The live session, until it ends: how it ended and the will it leaves.
async fn session<S>(
    framed: &mut Conn<S>,
    machine: &mut Machine,
    core: &DeviceCore,
    live: &Live,
    first: Vec<Action>,
) -> (Ended, Option<(certhub_core::MessageProperties, Bytes)>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mailbox = &live.ticket.mailbox;
    // QoS 1 telemetry handed to the writer, oldest first: its PUBACK waits for the commit.
    let mut owed: VecDeque<Committed> = VecDeque::new();
    // CONNACK, and what a resumed persistent session missed while it was away.
    if let Some(done) = Box::pin(execute(first, framed, machine, core, live, &mut owed)).await {
        return done;
    }
    // One timer for the session, moved on only when it fires (a packet just notes the time
    // in the machine: no timer work per message).
    let expiry = tokio::time::sleep_until(instant_of(machine.deadline_ms()));
    tokio::pin!(expiry);
    loop {
        let input = tokio::select! {
            mail = mailbox.next() => match mail {
                Mail::Kicked(reason) => Input::Kick(reason),
                Mail::Work(Outbound::C2d) => Input::C2dQueued,
                Mail::Work(Outbound::Desired(body)) => Input::Desired(body),
                Mail::Work(Outbound::Method(m)) => Input::Method {
                    name: m.name,
                    rid: m.rid,
                    payload: m.payload,
                },
            },
            result = next_commit(&mut owed), if !owed.is_empty() => {
                // A commit usually completes many of a session's messages: every PUBACK that
                // is due goes into one TLS record and one write.
                let mut out = Vec::new();
                machine.handle(stored(core, result), now_ms(), &mut out);
                while !machine.ended() && let Some(more) = next_commit(&mut owed).now_or_never() {
                    machine.handle(stored(core, more), now_ms(), &mut out);
                }
                if let Some(done) = Box::pin(execute(out, framed, machine, core, live, &mut owed)).await {
                    return done;
                }
                continue;
            }
            () = &mut expiry => {
                if let Some(done) = Box::pin(step(Input::Tick, framed, machine, core, live, &mut owed)).await {
                    return done;
                }
                expiry.as_mut().reset(instant_of(machine.deadline_ms()));
                continue;
            }
            p = framed.next(), if machine.reading() => match p {
                None => Input::Closed(certhub_mqtt::DEVICE_CLOSED.into()),
                Some(Err(e)) => Input::Closed(format!("protocol error: {e}")),
                Some(Ok((packet, _))) => {
                    // The common case without an allocation for its handling: telemetry
                    // handed to the writer at once, its PUBACK owed.
                    let mut out = Vec::new();
                    machine.handle(Input::Packet(packet), now_ms(), &mut out);
                    if let [Action::Telemetry { .. }] = out.as_slice()
                        && let Some(Action::Telemetry { props, body, ack }) = out.pop()
                    {
                        let record = core.telemetry(&live.device, &props, body.into());
                        match core.state().telemetry().try_submit(record) {
                            Ok(committed) => {
                                owe(core, &mut owed, committed, ack);
                                continue;
                            }
                            Err(record) => out.push(Action::Telemetry {
                                props,
                                body: record.body.into(),
                                ack,
                            }),
                        }
                    }
                    // Boxed: a packet's handling is short-lived, and inline its future would
                    // take room in every idle session.
                    if let Some(done) = Box::pin(execute(out, framed, machine, core, live, &mut owed)).await {
                        return done;
                    }
                    continue;
                }
            },
        };
        if let Some(done) = Box::pin(step(input, framed, machine, core, live, &mut owed)).await {
            return done;
        }
    }
}

/// The machine's input for a commit; a durable message is counted.
fn stored(core: &DeviceCore, result: Result<(), String>) -> Input {
    match result {
        Ok(()) => {
            core.telemetry_counted();
            Input::Stored
        }
        Err(e) => Input::StoreFailed(e),
    }
}

/// A QoS 1 message's commit is awaited for its PUBACK; QoS 0 is counted now.
fn owe(core: &DeviceCore, owed: &mut VecDeque<Committed>, committed: Committed, ack: bool) {
    if ack {
        owed.push_back(committed);
    } else {
        core.telemetry_counted();
    }
}

/// The wall-clock deadline `ms` as a timer instant.
fn instant_of(ms: i64) -> tokio::time::Instant {
    let left = ms.saturating_sub(now_ms()).max(0);
    tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

/// Feeds one input and carries out what the machine asks; `Some` when the session ended.
async fn step<S>(
    input: Input,
    framed: &mut Conn<S>,
    machine: &mut Machine,
    core: &DeviceCore,
    live: &Live,
    owed: &mut VecDeque<Committed>,
) -> Option<(Ended, Option<(certhub_core::MessageProperties, Bytes)>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut out = Vec::new();
    machine.handle(input, now_ms(), &mut out);
    execute(out, framed, machine, core, live, owed).await
}

/// Carries out the machine's actions in order (answers it asks for are fed back, and their
/// actions follow), then writes out what was queued for the device.
async fn execute<S>(
    out: Vec<Action>,
    framed: &mut Conn<S>,
    machine: &mut Machine,
    core: &DeviceCore,
    live: &Live,
    owed: &mut VecDeque<Committed>,
) -> Option<(Ended, Option<(certhub_core::MessageProperties, Bytes)>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut queue: VecDeque<Action> = out.into();
    let mut out = Vec::new();
    let mut will = None;
    let device = &live.device;
    while let Some(action) = queue.pop_front() {
        let answer = match action {
            Action::Send(packet) => {
                if feed(framed, packet).await {
                    continue;
                }
                // Nothing more reaches this device: what was still to do is dropped (no
                // acknowledgement is sent, so the device sends again).
                queue.clear();
                Input::Closed("write failed or timed out".into())
            }
            Action::Telemetry { props, body, ack } => {
                let record = core.telemetry(device, &props, body.into());
                let submitted = match core.state().telemetry().try_submit(record) {
                    Ok(c) => Ok(c),
                    Err(record) => core.state().telemetry().submit(record).await,
                };
                match submitted {
                    Ok(committed) => {
                        owe(core, owed, committed, ack);
                        continue;
                    }
                    Err(e) => {
                        queue.clear();
                        Input::Closed(format!("telemetry not stored: {e}"))
                    }
                }
            }
            Action::ReadTwin { rid } => Input::TwinRead {
                rid,
                result: core.read_twin(device).await,
            },
            Action::PatchReported { rid, patch } => Input::TwinReported {
                rid,
                result: core.patch_reported(device, &patch).await,
            },
            Action::MethodResponse {
                rid,
                status,
                payload,
            } => {
                core.method_response(live, &rid, status, payload);
                continue;
            }
            Action::Subscribed(granted) => {
                core.subscribed(live, &granted).await;
                continue;
            }
            Action::Unsubscribed(filters) => {
                core.unsubscribed(live, &filters).await;
                continue;
            }
            Action::FetchC2d { after, room } => {
                Input::C2d(core.fetch_c2d(device, after, room).await)
            }
            Action::C2dComplete { queue_id } => {
                core.complete_c2d(device, queue_id).await;
                continue;
            }
            Action::Will { props, body } => {
                will = Some((props, body));
                continue;
            }
            Action::Close(end) => {
                let _ = flush(framed).await;
                let ended = match end {
                    End::Clean => Ended::Clean,
                    End::Closed(reason) => Ended::Closed(reason),
                    End::TokenExpired(se) => Ended::TokenExpired(se),
                    End::Refused => Ended::Closed("refused".into()),
                };
                return Some((ended, will));
            }
            // Admission happened before the session; the machine asks only once.
            Action::Admit(_) => continue,
        };
        machine.handle(answer, now_ms(), &mut out);
        queue.extend(out.drain(..));
    }
    if flush(framed).await {
        None
    } else {
        let mut out = Vec::new();
        machine.handle(
            Input::Closed("write failed or timed out".into()),
            now_ms(),
            &mut out,
        );
        Box::pin(execute(out, framed, machine, core, live, owed)).await
    }
}

/// Adds a packet to the write buffer (written out when the buffer fills or at `flush`).
async fn feed<S>(framed: &mut Conn<S>, packet: Packet) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, framed.feed(packet)).await,
        Ok(Ok(()))
    )
}

/// Writes out what `feed` buffered.
async fn flush<S>(framed: &mut Conn<S>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, SinkExt::<Packet>::flush(framed)).await,
        Ok(Ok(()))
    )
}

/// Writes a packet now.
pub(crate) async fn write<S>(framed: &mut Conn<S>, packet: Packet) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    feed(framed, packet).await && flush(framed).await
}
