//! Bytes written in contiguous parts of a fixed size with at most [`IN_FLIGHT`] parts being
//! written at once: the memory one write holds is bounded by their product, whatever its size.

use futures_util::future::BoxFuture;

use super::IN_FLIGHT;

/// Where parts go: each part is started as a future of its own, in order.
pub(super) trait PartTarget {
    fn start(&mut self, part: bytes::Bytes) -> BoxFuture<'static, std::io::Result<()>>;
}

/// A multipart upload of the object store: parts are its parts.
impl PartTarget for Box<dyn object_store::MultipartUpload> {
    fn start(&mut self, part: bytes::Bytes) -> BoxFuture<'static, std::io::Result<()>> {
        let upload = self.put_part(object_store::PutPayload::from(part));
        Box::pin(async move { upload.await.map_err(std::io::Error::other) })
    }
}

pub(super) struct Parts<T> {
    pub(super) target: T,
    part: usize,
    buffer: bytes::BytesMut,
    writing: tokio::task::JoinSet<std::io::Result<()>>,
    /// Bytes started so far.
    started: u64,
}

impl<T: PartTarget> Parts<T> {
    pub(super) fn new(target: T, part: usize) -> Self {
        Self {
            target,
            part,
            buffer: bytes::BytesMut::with_capacity(part),
            writing: tokio::task::JoinSet::new(),
            started: 0,
        }
    }

    /// Bytes taken so far.
    pub(super) fn taken(&self) -> u64 {
        self.started + self.buffer.len() as u64
    }

    pub(super) async fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = (self.part - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buffer.len() == self.part {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> std::io::Result<()> {
        while self.writing.len() >= IN_FLIGHT {
            self.settle_one().await?;
        }
        let part = std::mem::replace(&mut self.buffer, bytes::BytesMut::with_capacity(self.part));
        self.started += part.len() as u64;
        let started = self.target.start(part.freeze());
        self.writing.spawn(started);
        Ok(())
    }

    async fn settle_one(&mut self) -> std::io::Result<()> {
        match self.writing.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(std::io::Error::other(e)),
        }
    }

    /// Starts what is buffered and waits for every part to be written.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        while !self.writing.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Drops what is buffered and waits for the parts being written (at most [`IN_FLIGHT`]),
    /// so that nothing writes after this returns (a blocking write cannot be cancelled).
    pub(super) async fn stop(&mut self) {
        self.buffer.clear();
        while self.writing.join_next().await.is_some() {}
    }
}
