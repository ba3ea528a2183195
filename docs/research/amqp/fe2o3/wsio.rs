//! WebSocket (binary frames) <-> AsyncRead/AsyncWrite adapter for AMQP over WebSockets.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::{
    tungstenite::{
        handshake::server::{ErrorResponse, Request, Response},
        http::HeaderValue,
        Message,
    },
    WebSocketStream,
};

pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    buf: Vec<u8>,
    pos: usize,
}

impl<S> std::fmt::Debug for WsIo<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsIo")
    }
}

pub async fn accept_ws<S>(s: S) -> Result<WsIo<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cb = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let protos = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        println!("[ws] upgrade path={} subprotocols={:?}", req.uri(), protos);
        if protos.split(',').any(|p| p.trim().eq_ignore_ascii_case("AMQPWSB10")) {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("AMQPWSB10"));
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(s, cb).await?;
    Ok(WsIo { ws, buf: Vec::new(), pos: 0 })
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.buf.len() {
                let n = std::cmp::min(out.remaining(), self.buf.len() - self.pos);
                let p = self.pos;
                out.put_slice(&self.buf[p..p + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())), // EOF
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(to_io(e))),
                Poll::Ready(Some(Ok(Message::Binary(b)))) => {
                    self.buf = b.to_vec();
                    self.pos = 0;
                }
                Poll::Ready(Some(Ok(Message::Close(_)))) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(_))) => {} // ping/pong/text ignored (pongs are automatic)
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.ws).poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(to_io(e))),
            Poll::Ready(Ok(())) => {}
        }
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(data.to_vec().into()))
            .map_err(to_io)?;
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}
