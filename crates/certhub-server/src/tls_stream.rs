//! TLS on a device connection (8883, 5671) over rustls's unbuffered API, so that the hub owns
//! every buffer and an idle connection holds none.
//!
//! rustls's buffered `ServerConnection` (what tokio-rustls drives) keeps a 4 KiB receive buffer
//! for the connection's whole life: at 19 000 idle devices that was 4 of the 13.8 KiB each
//! session cost. Here, bytes are read from the socket into a buffer on the reading task's stack
//! and processed at once; only what is left over (the start of a record whose end has not yet
//! arrived), decrypted bytes the session has not yet read, and encrypted bytes the socket has
//! not yet taken are kept on the heap, each freed as soon as it is empty.
//!
//! Semantics follow tokio-rustls's server stream: a `close_notify` reads as end of stream, a
//! TCP end without one as `UnexpectedEof`; a write is encrypted at once and sent as far as the
//! socket takes it, `poll_flush` sends the rest; `poll_shutdown` sends `close_notify` and shuts
//! the socket's write side.

use std::fmt;
use std::io;
use std::mem::{self, MaybeUninit};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time (on the stack): a whole TLS record and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;
/// Unsent bytes above which a write waits for the socket before taking more.
const WRITE_HIGH: usize = 64 * 1024;

/// What a pass over the received bytes was asked to do once the connection may send
/// application data.
enum Then<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// A server-side TLS connection over `io`.
pub(crate) struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received bytes not yet processed: at most the start of one record between reads.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader has not taken, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken, from `out_at`.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer sent `close_notify` (reads end cleanly) or the socket ended (they fail).
    peer_closed: bool,
    socket_ended: bool,
    /// `close_notify` was queued (no more writes).
    closing: bool,
    /// The first TLS error: every later read and write fails with it.
    failed: Option<rustls::Error>,
}

impl<IO> fmt::Debug for TlsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.conn.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("plain", &(self.plain.len() - self.plain_at))
            .field("outgoing", &(self.outgoing.len() - self.out_at))
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.clone())
}

/// Appends what `fill` writes to `out`, growing it to the size `fill` asks for.
fn append(
    out: &mut Vec<u8>,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Option<InsufficientSizeError>>,
) -> Result<(), ()> {
    let start = out.len();
    let mut room = 0;
    loop {
        out.resize(start + room, 0);
        match fill(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size;
            }
            Err(_) => {
                out.truncate(start);
                return Err(());
            }
        }
    }
}

/// Appends a handshake record (or alert) rustls hands out to `out`.
fn encode<Data>(data: &mut rustls::unbuffered::EncodeTlsData<'_, Data>, out: &mut Vec<u8>) {
    let _ = append(out, |out| match data.encode(out) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(e)) => Err(Some(e)),
        Err(_) => Err(None),
    });
}

/// An encryption's result as [`append`] takes it.
fn sized(r: Result<usize, EncryptError>) -> Result<usize, Option<InsufficientSizeError>> {
    match r {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

impl<IO> TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(io: IO, config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            io,
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            outgoing: Vec::new(),
            out_at: 0,
            peer_closed: false,
            socket_ended: false,
            closing: false,
            failed: None,
        })
    }

    /// The connection's TLS state: the client's chain, the version.
    pub fn connection(&self) -> &rustls::CommonState {
        &self.conn
    }

    /// Runs the handshake until the client's first flight (its ClientHello) is answered, or
    /// the handshake is over.
    pub async fn client_hello(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx, true)).await
    }

    /// Runs the handshake to its end.
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx, false)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>, hello: bool) -> Poll<io::Result<()>> {
        loop {
            if let Some(e) = &self.failed {
                let e = tls_error(e);
                // The alert rustls queued (a handshake failure, a bad certificate), if the
                // socket takes it now; the connection ends either way.
                let _ = self.poll_send(cx);
                return Poll::Ready(Err(e));
            }
            let answered = !self.outgoing.is_empty();
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() || (hello && answered) {
                return Poll::Ready(Ok(()));
            }
            if self.socket_ended {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // A failure is kept in `failed` and reported above, after its alert.
            let _ = ready!(self.poll_receive(cx));
        }
    }

    /// Processes the received bytes in `buf`, then does `then` once the connection may send
    /// application data. Returns how many bytes of `buf` were used and whether `then` was done.
    fn process(&mut self, buf: &mut [u8], then: Then<'_>) -> (usize, bool) {
        let mut at = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut buf[at..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.failed.get_or_insert(e);
                    self.queue_alerts();
                    return (at + discard, false);
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                self.plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                self.failed.get_or_insert(e);
                                return (at + discard, false);
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut data, &mut self.outgoing);
                }
                // Kept in `outgoing`, in order, until the socket takes it.
                ConnectionState::TransmitTlsData(sent) => sent.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    return (at + discard, false);
                }
                ConnectionState::BlockedHandshake => return (at + discard, false),
                ConnectionState::WriteTraffic(mut traffic) => {
                    let done = match then {
                        Then::Nothing => false,
                        Then::Encrypt(data) => {
                            append(&mut self.outgoing, |out| sized(traffic.encrypt(data, out)))
                                .is_ok()
                        }
                        Then::CloseNotify => append(&mut self.outgoing, |out| {
                            sized(traffic.queue_close_notify(out))
                        })
                        .is_ok(),
                    };
                    return (at + discard, done);
                }
                // Early data is never accepted (`max_early_data_size` is 0); a state added by a
                // later rustls is a failure, not a silent hang.
                _ => {
                    self.failed
                        .get_or_insert(rustls::Error::General("unexpected TLS state".into()));
                    return (at + discard, false);
                }
            }
            at += discard;
        }
    }

    /// After a failure: encodes the alert rustls queued, for a last send. rustls is asked only
    /// while it has something queued, so that it hands that out and parses nothing more (a
    /// second parse would fail again and queue a second fatal alert).
    fn queue_alerts(&mut self) {
        for _ in 0..8 {
            if !self.conn.wants_write() {
                return;
            }
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                // Data decrypted before the failing record comes out first.
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(Ok(record)) = records.next_record() {
                        self.plain.extend_from_slice(record.payload);
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, &mut self.outgoing);
                }
                _ => return,
            }
        }
    }

    /// Processes what is kept in `incoming` (never a whole record: only when asked to do
    /// something with the connection).
    fn process_kept(&mut self, then: Then<'_>) -> bool {
        let mut kept = mem::take(&mut self.incoming);
        let (used, done) = self.process(&mut kept, then);
        kept.drain(..used);
        if !kept.is_empty() {
            self.incoming = kept;
        }
        done
    }

    /// Reads once from the socket and processes what came. Ready(Ok(false)) when the socket
    /// ended; failures are kept in `failed`.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        if read.filled().is_empty() {
            self.socket_ended = true;
            return Poll::Ready(Ok(false));
        }
        if self.incoming.is_empty() {
            // The common case: whole records, processed where they were read.
            let (used, _) = self.process(read.filled_mut(), Then::Nothing);
            self.incoming.extend_from_slice(&read.filled()[used..]);
        } else {
            self.incoming.extend_from_slice(read.filled());
            self.process_kept(Then::Nothing);
        }
        Poll::Ready(Ok(true))
    }

    /// Sends the encrypted bytes waiting in `outgoing`, then frees it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.outgoing = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO> AsyncRead for TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    // Not kept by an idle session.
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(tls_error(e)));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.socket_ended {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // What processing queued to send (a key update's answer) goes out when the socket
            // takes it; a read does not wait for it.
            if this.out_at < this.outgoing.len()
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl<IO> AsyncWrite for TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(tls_error(e)));
        }
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.outgoing.len() - this.out_at >= WRITE_HIGH {
            ready!(this.poll_send(cx))?;
        }
        if !this.process_kept(Then::Encrypt(data)) {
            return Poll::Ready(Err(match &this.failed {
                Some(e) => tls_error(e),
                None => io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS connection cannot send application data",
                ),
            }));
        }
        // Sent as far as the socket takes it now; `poll_flush` sends the rest.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            if this.failed.is_none() {
                this.process_kept(Then::CloseNotify);
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Against tokio-rustls's client (rustls's buffered API) over an in-memory duplex pipe.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ca = rcgen::generate_simple_self_signed(vec!["hub.test".into()]).unwrap();
        let cert = ca.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ca.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    async fn pair(
        pipe: usize,
    ) -> (
        TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    ) {
        let (server_config, client_config) = configs();
        let (a, b) = tokio::io::duplex(pipe);
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = rustls_pki_types::ServerName::try_from("hub.test").unwrap();
        let client = tokio::spawn(async move { connector.connect(name, b).await.unwrap() });
        let mut server = TlsStream::new(a, server_config).unwrap();
        server.client_hello().await.unwrap();
        server.handshake().await.unwrap();
        assert!(!server.connection().is_handshaking());
        (server, client.await.unwrap())
    }

    #[tokio::test]
    async fn carries_both_ways_through_a_small_pipe_and_keeps_no_buffers_when_idle() {
        // A 1 KiB pipe: records arrive in pieces, writes wait for the reader.
        let (mut server, mut client) = pair(1024).await;
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0; 100_000];
            client.read_exact(&mut back).await.unwrap();
            (client, back)
        });
        let mut got = vec![0; big.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        server.write_all(&big[..100_000]).await.unwrap();
        server.flush().await.unwrap();
        let (mut client, back) = writer.await.unwrap();
        assert_eq!(back, big[..100_000]);
        assert!(server.incoming.capacity() == 0 && server.plain.capacity() == 0);
        assert!(server.outgoing.capacity() == 0);

        // close_notify from the client reads as a clean end.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_socket_end_without_close_notify_is_unexpected() {
        let (mut server, client) = pair(4096).await;
        let (io, _) = client.into_inner();
        drop(io);
        let mut buf = [0u8; 16];
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn shutdown_sends_close_notify() {
        let (mut server, mut client) = pair(4096).await;
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert!(server.write_all(b"more").await.is_err());
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_fails_the_handshake() {
        let (server_config, _) = configs();
        let (a, mut b) = tokio::io::duplex(4096);
        let mut server = TlsStream::new(a, server_config).unwrap();
        // A handshake record holding a message that does not parse, then more of the same in
        // the same read: one alert, no second parse.
        let bad = [22u8, 3, 1, 0, 5, 1, 0, 0, 1, 9];
        b.write_all(&[bad, bad, bad].concat()).await.unwrap();
        let e = server.client_hello().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // The hub answered with an alert before giving up.
        let mut alert = [0u8; 7];
        b.read_exact(&mut alert).await.unwrap();
        assert_eq!(alert[0], 21, "an alert record");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let (mut server, mut client) = pair(4096).await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after the update").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 16];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after the update");
        server.write_all(b"answer").await.unwrap();
        server.flush().await.unwrap();
        let mut back = [0u8; 6];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"answer");
    }
}
