//! A WebSocket as a byte stream: the binary frames' payloads in order, for protocols that run
//! over WebSockets as they run over TLS (MQTT, `Sec-WebSocket-Protocol: mqtt`). Frame
//! boundaries mean nothing (an MQTT packet may span frames, a frame may hold several packets).
//! A text frame is a protocol error; pings are answered by the WebSocket layer; a close frame
//! ends the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub(crate) struct WsStream {
    ws: WebSocket,
    /// What is left of the last binary frame read.
    read: Bytes,
}

impl WsStream {
    pub fn new(ws: WebSocket) -> Self {
        Self {
            ws,
            read: Bytes::new(),
        }
    }
}

fn broken(e: axum::Error) -> io::Error {
    io::Error::other(e)
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read.is_empty() {
                let n = buf.remaining().min(this.read.len());
                buf.put_slice(&this.read.split_to(n));
                if this.read.is_empty() {
                    // The frame's allocation is not kept by an idle session.
                    this.read = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                Some(Ok(Message::Binary(data))) => this.read = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT over WebSockets is carried in binary frames",
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(broken)?;
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(broken)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(broken)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(broken)
    }
}
