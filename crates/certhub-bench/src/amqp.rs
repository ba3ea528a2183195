//! A lean AMQP 1.0 telemetry sender, as lean as the MQTT generator: the protocol spoken on the
//! TLS stream directly, one connection, one session, one sender link, with fe2o3-amqp's
//! performative types encoded by serde_amqp and its frame decoder. No tasks, no channels: the
//! caller queues transfers ([`AmqpConn::put_transfer`]), writes them in one go
//! ([`AmqpConn::write`]) and reads the hub's frames ([`AmqpConn::read`], [`AmqpConn::frame`]).
//! Link credit and the session window are kept here ([`AmqpConn::on_flow`]).

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fe2o3_amqp::frames::amqp::FrameBody;
use fe2o3_amqp::types::definitions::{Error, Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, Data, Message, Source, Target as Terminus};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, End, Flow, MaxFrameSize, Open, Transfer,
};
use fe2o3_amqp::types::primitives::Value;
use rustls_pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::conn::{Failure, Target, tls_connect};
use crate::devices::Device;

/// The AMQP protocol header (protocol id 0, version 1.0.0).
const HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// The largest frame this client reads (and announces).
const MAX_FRAME: u32 = 64 * 1024;
/// The smallest max-frame-size a peer may announce (AMQP 2.7.1).
const MIN_MAX_FRAME: u32 = 512;
/// The session windows this client announces (it receives no transfers; its own sends are
/// bounded by the hub's window and the link credit).
const WINDOW: u32 = 1 << 16;
/// The channel of the one session, and the handle of the one link.
const CHANNEL: u16 = 0;
const HANDLE: u32 = 0;
/// Read in chunks of this much at least.
const READ_CHUNK: usize = 16 * 1024;

/// An X.509 device's AMQP connection with its telemetry sender attached (over TLS; any byte
/// stream in the tests).
#[derive(Debug)]
pub struct AmqpConn<S = TlsStream<TcpStream>> {
    io: S,
    /// Read and not yet decoded.
    input: BytesMut,
    /// Encoded and not yet written.
    out: Vec<u8>,
    /// The largest frame the hub reads.
    max_frame: usize,
    /// The hub's handle of the link (its flows and detach name it).
    hub_handle: u32,
    /// The next transfer id of this session.
    next_outgoing_id: u32,
    /// Transfers the hub's session still takes.
    window: u32,
    /// Deliveries sent on the link.
    delivery_count: u32,
    /// Deliveries the link's credit still allows.
    credit: u32,
    /// The next delivery id (a counter from 0; the delivery tag is its 4 bytes).
    next_delivery: u32,
}

/// One AMQP frame into `out`: size, doff 2, type 0 (AMQP), channel, the performative, the
/// payload.
/// Appends one frame (certhub-amqp's framing).
fn put_frame<P: Serialize>(
    out: &mut Vec<u8>,
    channel: u16,
    performative: &P,
    payload: &[u8],
) -> io::Result<()> {
    certhub_amqp::frame::put_frame(out, channel, performative, payload)
        .map_err(|e| io::Error::other(format!("encoding a frame: {e}")))
}

/// An error's condition and description, for a message.
pub fn describe(error: Option<&Error>) -> String {
    match error {
        None => "no error given".into(),
        Some(e) => match &e.description {
            Some(d) => format!("{:?}: {d}", e.condition),
            None => format!("{:?}", e.condition),
        },
    }
}

/// The encoded message every transfer carries: one data section with `payload`.
pub fn message(payload: &[u8]) -> Vec<u8> {
    let message = Message::builder()
        .body(Body::<Value>::Data(
            vec![Data(payload.to_vec().into())].into(),
        ))
        .build();
    certhub_amqp::message::encode(&message)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AmqpConn<S> {
    /// Reads from the hub (what came is decoded by [`AmqpConn::frame`]); 0 at EOF.
    pub async fn read(&mut self) -> io::Result<usize> {
        self.input.reserve(READ_CHUNK);
        self.io.read_buf(&mut self.input).await
    }

    /// The next whole frame read, if any.
    pub fn frame(&mut self) -> Result<Option<FrameBody>, String> {
        if self.input.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([self.input[0], self.input[1], self.input[2], self.input[3]]);
        if !(8..=MAX_FRAME).contains(&size) {
            return Err(format!(
                "a frame of {size} bytes from the hub (this client reads 8 to {MAX_FRAME})"
            ));
        }
        let size = size as usize;
        if self.input.len() < size {
            return Ok(None);
        }
        let mut frame = self.input.split_to(size);
        frame.advance(4);
        match certhub_amqp::frame::decode(&mut frame) {
            Ok(f) => Ok(Some(f.body)),
            Err(e) => Err(format!("a frame from the hub that does not decode: {e}")),
        }
    }

    /// Writes everything queued, in one write.
    pub async fn write(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.io.write_all(&self.out).await;
        self.out.clear();
        r?;
        self.io.flush().await
    }

    /// Another transfer may be queued now: the link has credit and the session has room.
    pub fn may_send(&self) -> bool {
        self.credit > 0 && self.window > 0
    }

    /// Queues one unsettled delivery of `message` (encoded sections), split to the hub's frame
    /// size; returns its delivery id, or none when the link's credit or the session's window
    /// does not allow it now.
    pub fn put_transfer(&mut self, message: &[u8]) -> io::Result<Option<u32>> {
        if self.credit == 0 || self.window == 0 {
            return Ok(None);
        }
        let id = self.next_delivery;
        let transfer = Transfer {
            handle: Handle(HANDLE),
            delivery_id: Some(id),
            delivery_tag: Some(id.to_be_bytes().to_vec().into()),
            message_format: Some(0),
            settled: Some(false),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let needed = certhub_amqp::frame::frames_needed(&transfer, message.len(), self.max_frame);
        if needed > self.window {
            return Ok(None);
        }
        let frames = certhub_amqp::frame::put_transfer(
            &mut self.out,
            CHANNEL,
            transfer,
            message,
            self.max_frame,
        )
        .map_err(|e| io::Error::other(format!("encoding a transfer: {e}")))?;
        self.next_delivery = self.next_delivery.wrapping_add(1);
        self.delivery_count = self.delivery_count.wrapping_add(1);
        self.credit -= 1;
        self.next_outgoing_id = self.next_outgoing_id.wrapping_add(frames);
        self.window = self.window.saturating_sub(frames);
        Ok(Some(id))
    }

    /// Takes the hub's flow: the session's window and, for this link, the credit.
    pub fn on_flow(&mut self, flow: &Flow) {
        self.window = certhub_amqp::frame::sendable_window(flow, self.next_outgoing_id);
        if flow.handle.as_ref().map(|h| h.0) != Some(self.hub_handle) {
            return;
        }
        if let Some(credit) = certhub_amqp::frame::sendable_credit(flow, self.delivery_count) {
            self.credit = credit;
        }
    }

    /// Reads until the next whole frame.
    async fn next_frame(&mut self) -> Result<FrameBody, Failure> {
        loop {
            if let Some(f) = self.frame().map_err(Failure::Protocol)? {
                return Ok(f);
            }
            match self.read().await {
                Ok(0) => return Err(Failure::Closed("during the AMQP open".into())),
                Ok(_) => {}
                Err(e) => return Err(Failure::Closed(format!("during the AMQP open ({e})"))),
            }
        }
    }
}

/// Connects `device` over AMQP 1.0: TCP, TLS with its chain, the AMQP header and open (no SASL:
/// the TLS client certificate is the credential, as the Azure SDKs connect X.509 devices), a
/// session and a sender on `/devices/{id}/messages/events` (the hub admits the device at this
/// attach), until the hub's flow gives the link credit.
pub async fn open(target: &Target, device: &Device) -> Result<AmqpConn, Failure> {
    let deadline = Instant::now() + target.timeout;
    let (tls, _) = tls_connect(target, device, deadline).await?;
    let host = match &target.server_name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        _ => target.addr.ip().to_string(),
    };
    let address = format!("/devices/{}/messages/events", device.id);
    match tokio::time::timeout_at(deadline, AmqpConn::start(tls, &device.id, host, address)).await {
        Err(_) => Err(Failure::Timeout("the AMQP open and attach")),
        Ok(r) => r,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AmqpConn<S> {
    /// The AMQP header and open as `container_id` to `hostname`, the hub's header and open,
    /// a session and a sender to `address`, until the hub's flow gives the link credit.
    pub async fn start(
        io: S,
        container_id: &str,
        hostname: String,
        address: String,
    ) -> Result<Self, Failure> {
        let mut conn = AmqpConn {
            io,
            input: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(READ_CHUNK),
            max_frame: MIN_MAX_FRAME as usize,
            hub_handle: 0,
            next_outgoing_id: 0,
            window: 0,
            delivery_count: 0,
            credit: 0,
            next_delivery: 0,
        };
        conn.handshake(container_id, hostname, address).await?;
        Ok(conn)
    }

    async fn handshake(
        &mut self,
        container_id: &str,
        hostname: String,
        address: String,
    ) -> Result<(), Failure> {
        let sent = |e: io::Error| Failure::Closed(format!("during the AMQP open ({e})"));
        let open = Open {
            container_id: container_id.to_string(),
            hostname: Some(hostname),
            max_frame_size: MaxFrameSize(MAX_FRAME),
            channel_max: ChannelMax(0),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.out.extend_from_slice(&HEADER);
        put_frame(&mut self.out, 0, &open, &[]).map_err(sent)?;
        self.write().await.map_err(sent)?;
        while self.input.len() < HEADER.len() {
            match self.read().await {
                Ok(0) => return Err(Failure::Closed("before the AMQP header".into())),
                Ok(_) => {}
                Err(e) => return Err(Failure::Closed(format!("before the AMQP header ({e})"))),
            }
        }
        let header = self.input.split_to(HEADER.len());
        if header[..] != HEADER {
            return Err(Failure::Protocol(format!(
                "{:02x?} instead of the AMQP header",
                &header[..]
            )));
        }
        loop {
            match self.next_frame().await? {
                FrameBody::Open(o) => {
                    self.max_frame = o.max_frame_size.0.clamp(MIN_MAX_FRAME, MAX_FRAME) as usize;
                    break;
                }
                FrameBody::Close(c) => {
                    return Err(Failure::Closed(format!(
                        "at the AMQP open ({})",
                        describe(c.error.as_ref())
                    )));
                }
                FrameBody::Empty => {}
                other => {
                    return Err(Failure::Protocol(format!(
                        "{other:?} before the hub's open"
                    )));
                }
            }
        }
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: WINDOW,
            outgoing_window: WINDOW,
            handle_max: Handle(0),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let attach = Attach {
            name: "telemetry".into(),
            handle: Handle(HANDLE),
            role: Role::Sender,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(
                Source::builder().address(container_id.to_string()).build(),
            )),
            target: Some(Box::new(Terminus::from(address).into())),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        put_frame(&mut self.out, CHANNEL, &begin, &[]).map_err(sent)?;
        put_frame(&mut self.out, CHANNEL, &attach, &[]).map_err(sent)?;
        self.write().await.map_err(sent)?;
        let mut attached = false;
        loop {
            match self.next_frame().await? {
                FrameBody::Begin(b) => {
                    // The hub's window for this session's transfers.
                    self.window = b.incoming_window;
                }
                FrameBody::Attach(a) => {
                    self.hub_handle = a.handle.0;
                    attached = true;
                }
                FrameBody::Flow(f) if attached => {
                    self.on_flow(&f);
                    if self.credit > 0 {
                        return Ok(());
                    }
                }
                FrameBody::Flow(f) => self.on_flow(&f),
                FrameBody::Detach(d) => {
                    return Err(Failure::Protocol(format!(
                        "the telemetry link was refused ({})",
                        describe(d.error.as_ref())
                    )));
                }
                FrameBody::End(e) => {
                    return Err(Failure::Closed(format!(
                        "by ending the session ({})",
                        describe(e.error.as_ref())
                    )));
                }
                FrameBody::Close(c) => {
                    return Err(Failure::Closed(format!(
                        "during the attach ({})",
                        describe(c.error.as_ref())
                    )));
                }
                _ => {}
            }
        }
    }

    /// Detaches (closed), ends and closes, waits for the hub's close, then TLS close_notify and
    /// TCP FIN; errors are of no interest any more.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let detach = Detach {
                handle: Handle(HANDLE),
                closed: true,
                error: None,
            };
            put_frame(&mut self.out, CHANNEL, &detach, &[])?;
            put_frame(&mut self.out, CHANNEL, &End { error: None }, &[])?;
            put_frame(&mut self.out, 0, &Close { error: None }, &[])?;
            self.write().await?;
            loop {
                match self.frame() {
                    Ok(Some(FrameBody::Close(_))) | Err(_) => break,
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        if self.read().await? == 0 {
                            break;
                        }
                    }
                }
            }
            self.io.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use certhub_amqp::types::messaging::{Accepted, DeliveryState};
    use certhub_amqp::{Config, Engine, Event};
    use tokio::io::DuplexStream;

    const ADDRESS: &str = "/devices/dev-1/messages/events";

    /// The hub's own engine on the other end: accepts the telemetry link with `window` credit
    /// (or refuses it), accepts every transfer; returns the payloads received.
    async fn hub(mut io: DuplexStream, window: u32, max_frame: u32, refuse: bool) -> Vec<Bytes> {
        let config = Config {
            container_id: "hub".into(),
            max_frame_size: max_frame,
            max_sessions: 4,
            max_links: 4,
            max_message_size: 256 * 1024,
            idle_timeout_ms: 0,
            mechanisms: Vec::new(),
            properties: None,
        };
        let mut engine = Engine::new(config, 0);
        let mut input = BytesMut::new();
        let mut received = Vec::new();
        loop {
            // Everything written so far in one read, as a busy hub reads.
            input.reserve(1 << 16);
            match io.read_buf(&mut input).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            engine.receive(&mut input, 0);
            while let Some(event) = engine.next_event() {
                match event {
                    Event::Attach(request) => {
                        assert!(request.client_sends);
                        assert_eq!(request.address, ADDRESS);
                        if refuse {
                            let why = certhub_amqp::error(
                                certhub_amqp::types::definitions::AmqpError::UnauthorizedAccess,
                                "no",
                            );
                            engine.refuse(*request, why);
                        } else {
                            engine.accept(&request, window);
                        }
                    }
                    Event::Transfer {
                        link,
                        delivery,
                        settled,
                        payload,
                    } => {
                        assert!(!settled);
                        received.push(payload);
                        engine.settle(link, delivery, DeliveryState::Accepted(Accepted {}));
                    }
                    Event::Failed(why) => panic!("the engine failed: {why}"),
                    _ => {}
                }
            }
            if let Some(out) = engine.take_output(0)
                && io.write_all(&out).await.is_err()
            {
                break;
            }
            if engine.is_closed() {
                break;
            }
        }
        received
    }

    async fn start(
        window: u32,
        max_frame: u32,
        refuse: bool,
    ) -> (AmqpConn<DuplexStream>, tokio::task::JoinHandle<Vec<Bytes>>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let hub = tokio::spawn(hub(server, window, max_frame, refuse));
        let conn = AmqpConn::start(client, "dev-1", "hub.example".into(), ADDRESS.into())
            .await
            .expect("the telemetry link opens");
        (conn, hub)
    }

    /// Settles what the hub's dispositions accept; returns the ids.
    async fn settled(conn: &mut AmqpConn<DuplexStream>, n: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        while ids.len() < n {
            match conn.frame().expect("frames decode") {
                Some(FrameBody::Disposition(d)) => {
                    assert_eq!(d.role, Role::Receiver);
                    assert!(d.settled);
                    assert!(matches!(d.state, Some(DeliveryState::Accepted(_))));
                    ids.extend(d.first..=d.last.unwrap_or(d.first));
                }
                Some(FrameBody::Flow(f)) => conn.on_flow(&f),
                Some(other) => panic!("unexpected {other:?}"),
                None => assert!(conn.read().await.expect("reads") > 0, "EOF"),
            }
        }
        ids
    }

    #[tokio::test]
    async fn sends_within_the_credit_and_is_settled_by_the_hub_engine() {
        let (mut conn, hub) = start(8, MAX_FRAME, false).await;
        assert_eq!(conn.credit, 8);
        assert_eq!(conn.max_frame, MAX_FRAME as usize);
        let body = message(b"hello");
        let mut sent = Vec::new();
        while let Some(id) = conn.put_transfer(&body).expect("encodes") {
            sent.push(id);
        }
        // No more than the credit, ids from 0.
        assert_eq!(sent, (0..8).collect::<Vec<_>>());
        assert!(!conn.may_send());
        conn.write().await.expect("writes");
        let mut ids = settled(&mut conn, 8).await;
        // The hub renews the credit once its deliveries are settled.
        while !conn.may_send() {
            match conn.frame().expect("frames decode") {
                Some(FrameBody::Flow(f)) => conn.on_flow(&f),
                Some(other) => panic!("unexpected {other:?}"),
                None => assert!(conn.read().await.expect("reads") > 0, "EOF"),
            }
        }
        assert_eq!(conn.credit, 8);
        for _ in 0..3 {
            conn.put_transfer(&body).expect("encodes");
        }
        conn.write().await.expect("writes");
        ids.extend(settled(&mut conn, 3).await);
        assert_eq!(ids, (0..11).collect::<Vec<_>>());
        conn.close().await;
        let received = hub.await.expect("the hub's task ends");
        assert_eq!(received.len(), 11);
        assert_eq!(received[0][..], body[..]);
        let decoded = certhub_amqp::message::decode(&received[10]).expect("decodes");
        assert!(matches!(decoded.body, Body::Data(d) if d.len() == 1 && &d[0].0[..] == b"hello"));
    }

    #[tokio::test]
    async fn a_message_larger_than_the_hubs_frames_goes_in_several() {
        let (mut conn, hub) = start(4, MIN_MAX_FRAME, false).await;
        assert_eq!(conn.max_frame, MIN_MAX_FRAME as usize);
        let body = message(&[b'x'; 2000]);
        let window = conn.window;
        conn.put_transfer(&body).expect("encodes").expect("credit");
        // Every frame within the hub's limit, the first with the delivery id.
        let mut frames = 0;
        let mut at = 0;
        while at < conn.out.len() {
            let size = u32::from_be_bytes([
                conn.out[at],
                conn.out[at + 1],
                conn.out[at + 2],
                conn.out[at + 3],
            ]) as usize;
            assert!(size <= MIN_MAX_FRAME as usize);
            at += size;
            frames += 1;
        }
        assert!(frames >= 4);
        assert_eq!(conn.window, window - frames);
        conn.write().await.expect("writes");
        assert_eq!(settled(&mut conn, 1).await, vec![0]);
        conn.close().await;
        let received = hub.await.expect("the hub's task ends");
        assert_eq!(received.len(), 1);
        assert_eq!(received[0][..], body[..]);
    }

    #[tokio::test]
    async fn a_refused_link_is_reported() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let _hub = tokio::spawn(hub(server, 8, MAX_FRAME, true));
        match AmqpConn::start(client, "dev-1", "hub.example".into(), ADDRESS.into()).await {
            Err(Failure::Protocol(why)) => {
                assert!(why.contains("refused"), "{why}");
                assert!(why.contains("no"), "{why}");
            }
            Err(other) => panic!("a refusal expected, got {}", other.message()),
            Ok(_) => panic!("a refusal expected"),
        }
    }

    #[test]
    fn credit_follows_the_hubs_flow() {
        let flow = |count: Option<u32>, credit: u32| Flow {
            next_incoming_id: Some(10),
            incoming_window: 100,
            next_outgoing_id: 0,
            outgoing_window: 100,
            handle: Some(Handle(3)),
            delivery_count: count,
            link_credit: Some(credit),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        let (io, _other) = tokio::io::duplex(64);
        let mut conn = AmqpConn {
            io,
            input: BytesMut::new(),
            out: Vec::new(),
            max_frame: 512,
            hub_handle: 3,
            next_outgoing_id: 12,
            window: 0,
            delivery_count: 12,
            credit: 0,
            next_delivery: 12,
        };
        // 12 sent; the hub has counted 10 and gives 20 from there: 18 left.
        conn.on_flow(&flow(Some(10), 20));
        assert_eq!(conn.credit, 18);
        // Its next expected transfer is 10, 100 from there: 98 left.
        assert_eq!(conn.window, 98);
        // A count ahead of ours cannot give more than the credit given.
        conn.on_flow(&flow(Some(20), 5));
        assert_eq!(conn.credit, 5);
        // Credit lowered under what is already sent: none.
        conn.on_flow(&flow(Some(8), 2));
        assert_eq!(conn.credit, 0);
        conn.on_flow(&flow(Some(12), 5));
        assert_eq!(conn.credit, 5);
        // Another link's flow changes no credit.
        let mut other = flow(Some(12), 50);
        other.handle = Some(Handle(4));
        conn.on_flow(&other);
        assert_eq!(conn.credit, 5);
    }
}
