//! The HTTPS accept loop: TLS with a handshake deadline, then HTTP/1.1 or HTTP/2 through hyper,
//! one task per connection.
//!
//! What a client that never finishes costs is bounded: a ClientHello within 3 s and the
//! handshake within 10 s of the accept (pending handshakes go through the same [`Gate`] as the
//! device listener's, so stalled ones are closed oldest first to make room), HTTP/1.1 request
//! headers within 10 s of the connection starting to wait for them (which also closes a
//! keep-alive connection idle that long), HTTP/2 connections pinged and closed when the peer
//! stops answering, and at most `per_source` connections from one address at once.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::gate::{Gate, GateLimits, Pending};
use crate::state::AppState;

const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// A handshake that takes longer than this is dropped (slow or idle clients hold no task).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive this soon after the connection waits for them: a client that
/// sends a header line every few seconds is closed, and so is a keep-alive connection idle for
/// this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most an HTTP/1.1 connection buffers of what it reads (hyper grows it up to this as a
/// body streams; each body chunk is cut from it and a new buffer is taken while the chunk is
/// held). hyper's default is about 400 KiB.
pub const HTTP1_READ_BUFFER: usize = 64 << 10;
/// HTTP/2 connections are pinged this often, and closed when a ping goes unanswered this long.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The two TLS configurations of the HTTPS listener: which one a client gets depends on the
/// hub's minTlsVersion when its ClientHello arrives, so a change applies to the next
/// handshake.
#[derive(Debug, Clone)]
pub struct HttpsTls {
    pub tls12_and_13: Arc<rustls::ServerConfig>,
    pub tls13_only: Arc<rustls::ServerConfig>,
}

/// Limits of the HTTPS listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpsOptions {
    /// Connections from one source address at once (for their whole life); more are closed at
    /// accept.
    pub per_source: usize,
    /// Connections still in their TLS handshake.
    pub pending: GateLimits,
}

impl Default for HttpsOptions {
    fn default() -> Self {
        Self {
            per_source: 256,
            pending: GateLimits::default(),
        }
    }
}

/// Live connections per source address.
#[derive(Debug, Default)]
struct PerSource {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.table.counts.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut m = self.counts.lock().ok()?;
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            ip,
        })
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes.
pub async fn serve_https(
    listener: TcpListener,
    tls: HttpsTls,
    app: axum::Router,
    state: AppState,
    options: HttpsOptions,
    shutdown: impl Future<Output = ()>,
) {
    let gate = Gate::new(options.pending);
    let sources = Arc::new(PerSource::default());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = sources.take(peer.ip(), options.per_source) else {
            state.metrics().dropped("https", "connections-per-source");
            drop(tcp);
            continue;
        };
        let pending = gate.admit(peer.ip());
        tokio::spawn(connection(
            tcp,
            peer,
            slot,
            pending,
            tls.clone(),
            app.clone(),
            state.clone(),
        ));
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: SourceSlot,
    mut pending: Pending,
    tls: HttpsTls,
    app: axum::Router,
    state: AppState,
) {
    let accepted = tokio::time::Instant::now();
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let deadline = accepted + CLIENT_HELLO_TIMEOUT;
    let Some(Ok(start)) = crate::gate::owed(&mut pending, deadline, lazy, &state, "https").await
    else {
        tracing::debug!(%peer, "no valid ClientHello in time");
        return;
    };
    // minTlsVersion as it is now: a TLS 1.2 client of a 1.3-only hub gets a protocol_version
    // alert from the handshake, as Azure answers.
    let tls13_only = state
        .settings()
        .await
        .map(|s| s.min_tls_version == "1.3")
        .unwrap_or(true);
    let config = if tls13_only {
        tls.tls13_only
    } else {
        tls.tls12_and_13
    };
    let deadline = accepted + HANDSHAKE_TIMEOUT;
    let handshake = start.into_stream(config);
    let tls = match crate::gate::owed(&mut pending, deadline, handshake, &state, "https").await {
        Some(Ok(tls)) => tls,
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        None => {
            tracing::debug!(%peer, "TLS handshake timed out or was evicted");
            return;
        }
    };
    drop(pending);
    // Every request on the connection learns who is at the other end: devices on 443 are
    // judged by the chain they presented in this handshake.
    let (_, session) = tls.get_ref();
    let peer_info = crate::devices_https::TlsPeer {
        peer,
        chain: Arc::new(
            session
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        ),
        tls13: session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
    };
    let app = tower::ServiceExt::map_request(
        app,
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer_info.clone());
            request
        },
    );
    let service = TowerToHyperService::new(app);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(HTTP1_READ_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(100)
        .max_header_list_size(64 * 1024);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
