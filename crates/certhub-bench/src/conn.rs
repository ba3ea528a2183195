//! One device connection: TCP (optionally from a chosen local address), a full TLS handshake
//! with the device's chain, MQTT CONNECT and CONNACK; what can go wrong, by kind; holding an
//! open connection until told to stop or until the server closes it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::devices::Device;

/// Largest packet accepted from the broker.
const MAX_PACKET: u32 = 1024 * 1024;

/// A byte stream MQTT runs over: TLS, or a WebSocket over TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

/// An MQTT connection over TLS (or over a WebSocket over TLS).
pub type Conn = Framed<Box<dyn Io>, Codec>;

/// Where and how to connect.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    /// Local addresses to bind, round-robin; empty: let the kernel choose.
    pub sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    /// The whole of one connection attempt at most.
    pub timeout: Duration,
    /// The cipher suite the server chose, as seen on the first connection.
    pub suite: std::sync::OnceLock<String>,
    /// MQTT over WebSockets (`wss://host:port/$iothub/websocket`, subprotocol `mqtt`) instead
    /// of MQTT over TLS.
    pub websocket: bool,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        server_name: ServerName<'static>,
        sources: Vec<IpAddr>,
        timeout: Duration,
    ) -> Self {
        Self {
            addr,
            server_name,
            sources,
            next_source: AtomicUsize::new(0),
            timeout,
            suite: std::sync::OnceLock::new(),
            websocket: false,
        }
    }

    /// Connects with MQTT over WebSockets instead of MQTT over TLS.
    pub fn over_websocket(mut self, websocket: bool) -> Self {
        self.websocket = websocket;
        self
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum Failure {
    Tcp(io::Error),
    Tls(io::Error),
    /// A CONNACK with this (non-zero) return code.
    Connack(u8),
    /// No progress in time; the stage it was in.
    Timeout(&'static str),
    /// The server closed the connection before CONNACK.
    Closed(String),
    Protocol(String),
}

fn too_many_files(e: &io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's).
    matches!(e.raw_os_error(), Some(24 | 23))
}

impl Failure {
    /// The kind errors are counted by.
    pub fn kind(&self) -> String {
        match self {
            Self::Tcp(e) | Self::Tls(e) if too_many_files(e) => "too many open files".into(),
            Self::Tcp(_) => "tcp".into(),
            Self::Tls(_) => "tls".into(),
            Self::Connack(code) => format!("connack {code}"),
            Self::Timeout(_) => "timeout".into(),
            Self::Closed(_) => "closed".into(),
            Self::Protocol(_) => "protocol".into(),
        }
    }

    /// One line about it.
    pub fn message(&self) -> String {
        match self {
            Self::Tcp(e) if too_many_files(e) => {
                format!("{e}: raise the open-file limit (`ulimit -n`) before running the benchmark")
            }
            Self::Tcp(e) => format!("TCP connect: {e}"),
            Self::Tls(e) => format!("TLS handshake: {e}"),
            Self::Connack(code) => {
                let text = ConnectAckReason::try_from(*code)
                    .map(ConnectAckReason::reason)
                    .unwrap_or("Connection Refused");
                format!("CONNACK {code}: {text}")
            }
            Self::Timeout(stage) => format!("timed out waiting for {stage}"),
            Self::Closed(what) => format!("the server closed the connection {what}"),
            Self::Protocol(what) => format!("protocol: {what}"),
        }
    }

    /// Worth another attempt: an overloaded or briefly unreachable broker. A refusal of the
    /// identity (CONNACK 1, 2, 4, 5) or a local resource limit is not.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Tcp(e) | Self::Tls(e) => !too_many_files(e),
            Self::Connack(code) => *code == 3,
            Self::Timeout(_) | Self::Closed(_) => true,
            Self::Protocol(_) => false,
        }
    }
}

/// A connection that got its CONNACK, and how long the parts took (microseconds).
#[derive(Debug)]
pub struct Opened {
    pub conn: Conn,
    pub tcp_us: u32,
    pub handshake_us: u32,
    pub connack_us: u32,
    pub total_us: u32,
}

pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn tcp(target: &Target) -> io::Result<TcpStream> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !target.sources.is_empty() {
        let i = target.next_source.fetch_add(1, Ordering::Relaxed) % target.sources.len();
        socket.bind(SocketAddr::new(target.sources[i], 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP, then the TLS handshake with `device`'s chain, by `deadline`; notes the cipher suite
/// the server chose. Returns the stream and when TCP was connected.
pub(crate) async fn tls_connect(
    target: &Target,
    device: &Device,
    deadline: Instant,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Instant), Failure> {
    let stream = match tokio::time::timeout_at(deadline, tcp(target)).await {
        Err(_) => return Err(Failure::Timeout("the TCP connection")),
        Ok(r) => r.map_err(Failure::Tcp)?,
    };
    let tcp_done = Instant::now();
    let connector = TlsConnector::from(device.config.clone());
    let tls = match tokio::time::timeout_at(
        deadline,
        connector.connect(target.server_name.clone(), stream),
    )
    .await
    {
        Err(_) => return Err(Failure::Timeout("the TLS handshake")),
        Ok(r) => r.map_err(Failure::Tls)?,
    };
    if target.suite.get().is_none()
        && let Some(suite) = tls.get_ref().1.negotiated_cipher_suite()
    {
        let _ = target.suite.set(format!("{:?}", suite.suite()));
    }
    Ok((tls, tcp_done))
}

/// Connects `device`: TCP, TLS, CONNECT (clean session), CONNACK 0.
pub async fn open(target: &Target, device: &Device, keep_alive: u16) -> Result<Opened, Failure> {
    let start = Instant::now();
    let deadline = start + target.timeout;
    let (tls, tcp_done) = tls_connect(target, device, deadline).await?;
    let io: Box<dyn Io> = if target.websocket {
        match tokio::time::timeout_at(deadline, upgrade(target, tls)).await {
            Err(_) => return Err(Failure::Timeout("the WebSocket upgrade")),
            Ok(r) => Box::new(r?),
        }
    } else {
        Box::new(tls)
    };
    // With WebSockets, the handshake's time includes the upgrade.
    let tls_done = Instant::now();
    let mut conn = Framed::new(io, Codec::new(MAX_PACKET));
    let connect = Connect {
        clean_session: true,
        keep_alive,
        client_id: device.id.clone().into(),
        username: Some(device.username.clone().into()),
        ..Connect::default()
    };
    let answer = tokio::time::timeout_at(deadline, async {
        conn.send(Packet::Connect(Box::new(connect)))
            .await
            .map_err(|e| Failure::Closed(format!("while CONNECT was sent ({e})")))?;
        match conn.next().await {
            None => Err(Failure::Closed("before CONNACK".into())),
            Some(Err(e)) => Err(Failure::Closed(format!("before CONNACK ({e})"))),
            Some(Ok((Packet::ConnectAck(ack), _))) => Ok(ack),
            Some(Ok((other, _))) => Err(Failure::Protocol(format!(
                "{} instead of CONNACK",
                packet_name(&other)
            ))),
        }
    })
    .await;
    let ack = match answer {
        Err(_) => return Err(Failure::Timeout("CONNACK")),
        Ok(r) => r?,
    };
    let code = u8::from(ack.return_code);
    if code != 0 {
        return Err(Failure::Connack(code));
    }
    let done = Instant::now();
    Ok(Opened {
        conn,
        tcp_us: micros(tcp_done - start),
        handshake_us: micros(tls_done - tcp_done),
        connack_us: micros(done - tls_done),
        total_us: micros(done - start),
    })
}

/// The WebSocket upgrade to MQTT (`Sec-WebSocket-Protocol: mqtt`) over an established TLS
/// connection.
async fn upgrade(
    target: &Target,
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> Result<crate::ws::WsIo<tokio_rustls::client::TlsStream<TcpStream>>, Failure> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let host = match &target.server_name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        _ => target.addr.ip().to_string(),
    };
    let mut request = format!("wss://{host}:{}{}", target.addr.port(), crate::ws::PATH)
        .into_client_request()
        .map_err(|e| Failure::Protocol(format!("WebSocket request: {e}")))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .map_err(|e| Failure::Closed(format!("during the WebSocket upgrade ({e})")))?;
    Ok(crate::ws::WsIo::new(ws))
}

pub(crate) fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnectAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PublishAck { .. } => "PUBACK",
        Packet::PublishReceived { .. } => "PUBREC",
        Packet::PublishRelease { .. } => "PUBREL",
        Packet::PublishComplete { .. } => "PUBCOMP",
        Packet::Subscribe { .. } => "SUBSCRIBE",
        Packet::SubscribeAck { .. } => "SUBACK",
        Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
        Packet::UnsubscribeAck { .. } => "UNSUBACK",
        Packet::PingRequest => "PINGREQ",
        Packet::PingResponse => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// DISCONNECT, then TLS close_notify and TCP FIN; errors are of no interest any more.
pub async fn disconnect(mut conn: Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = conn.send(Packet::Disconnect).await;
        let _ = conn.close().await;
    })
    .await;
}

/// How a held connection ended.
#[derive(Debug)]
pub enum HoldEnd {
    /// Told to stop.
    Stopped,
    /// The server closed it (EOF or error) at this moment.
    ServerClosed(Instant, String),
}

/// Keeps a connection open: answers the broker's QoS 1 PUBLISHes, sends PINGREQ when the
/// keep-alive needs it, notices when the server closes the connection. On `stop` it ends
/// with DISCONNECT (when `graceful` is set by then) or just drops the connection.
pub async fn hold(
    mut conn: Conn,
    keep_alive: u16,
    stop: CancellationToken,
    graceful: Arc<AtomicBool>,
) -> HoldEnd {
    // A PINGREQ at half the keep-alive keeps the broker from timing the connection out;
    // keep-alive 0 needs none.
    let every = if keep_alive == 0 {
        Duration::from_secs(86400 * 365)
    } else {
        (Duration::from_secs(u64::from(keep_alive)) / 2).max(Duration::from_secs(1))
    };
    let mut next_ping = Instant::now() + every;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                if graceful.load(Ordering::Relaxed) {
                    disconnect(conn).await;
                }
                return HoldEnd::Stopped;
            }
            () = tokio::time::sleep_until(next_ping) => {
                if let Err(e) = conn.send(Packet::PingRequest).await {
                    return HoldEnd::ServerClosed(Instant::now(), format!("PINGREQ failed: {e}"));
                }
                next_ping += every;
            }
            packet = conn.next() => match packet {
                None => return HoldEnd::ServerClosed(Instant::now(), "EOF".into()),
                Some(Err(e)) => return HoldEnd::ServerClosed(Instant::now(), e.to_string()),
                Some(Ok((Packet::Publish(p), _))) => {
                    if p.qos == QoS::AtLeastOnce
                        && let Some(packet_id) = p.packet_id
                        && let Err(e) = conn.send(Packet::PublishAck { packet_id }).await
                    {
                        return HoldEnd::ServerClosed(Instant::now(), format!("PUBACK failed: {e}"));
                    }
                }
                Some(Ok((Packet::Disconnect, _))) => {
                    return HoldEnd::ServerClosed(Instant::now(), "DISCONNECT".into());
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    /// rmqtt-codec serves a client too: it writes CONNECT and PUBLISH and reads CONNACK and
    /// PUBACK as MQTT 3.1.1 has them.
    #[test]
    fn the_codec_speaks_the_client_side() {
        let mut codec = Codec::new(MAX_PACKET);
        let mut buf = BytesMut::new();
        let connect = Connect {
            clean_session: true,
            keep_alive: 60,
            client_id: "dev-1".to_string().into(),
            username: Some("hub/dev-1/?api-version=2021-04-12".to_string().into()),
            ..Connect::default()
        };
        codec
            .encode(Packet::Connect(Box::new(connect)), &mut buf)
            .expect("CONNECT encodes");
        // Fixed header CONNECT, protocol "MQTT" level 4, flags: user name + clean session.
        assert_eq!(buf[0], 0x10);
        assert_eq!(&buf[2..10], b"\x00\x04MQTT\x04\x82");
        assert_eq!(&buf[10..12], &[0, 60]);

        let mut publish = BytesMut::new();
        let p = rmqtt_codec::types::Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: "devices/dev-1/messages/events/".to_string().into(),
            packet_id: std::num::NonZeroU16::new(7),
            payload: b"hi".to_vec().into(),
            properties: None,
        };
        codec
            .encode(Packet::Publish(Box::new(p)), &mut publish)
            .expect("PUBLISH encodes");
        assert_eq!(publish[0], 0x32);
        assert_eq!(&publish[publish.len() - 4..], &[0, 7, b'h', b'i']);

        let mut answer = BytesMut::from(&[0x20, 0x02, 0x00, 0x05, 0x40, 0x02, 0x00, 0x07][..]);
        match codec.decode(&mut answer) {
            Ok(Some((Packet::ConnectAck(ack), _))) => assert_eq!(u8::from(ack.return_code), 5),
            other => panic!("CONNACK expected, got {other:?}"),
        }
        match codec.decode(&mut answer) {
            Ok(Some((Packet::PublishAck { packet_id }, _))) => assert_eq!(packet_id.get(), 7),
            other => panic!("PUBACK expected, got {other:?}"),
        }
        assert_eq!(Failure::Connack(5).kind(), "connack 5");
        assert!(Failure::Connack(5).message().contains("not authorized"));
    }
}
