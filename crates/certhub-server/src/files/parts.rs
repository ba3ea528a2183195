//! Bytes written in contiguous parts of a fixed size with at most [`IN_FLIGHT`] parts being
//! written at once: the memory one write holds is bounded by their product, whatever its size.

use futures_util::future::BoxFuture;

use super::IN_FLIGHT;

/// Where parts go: each part is started as a future of its own, in order; a target that is
/// done with a part's buffer hands it back for the next part.
pub(super) trait PartTarget {
    fn start(&mut self, part: bytes::Bytes) -> BoxFuture<'static, std::io::Result<Spare>>;
}

/// A part's buffer, handed back once written (none when the target kept it).
pub(super) type Spare = Option<bytes::BytesMut>;

/// A multipart upload of the object store: parts are its parts (it keeps their buffers).
impl PartTarget for Box<dyn object_store::MultipartUpload> {
    fn start(&mut self, part: bytes::Bytes) -> BoxFuture<'static, std::io::Result<Spare>> {
        let upload = self.put_part(object_store::PutPayload::from(part));
        Box::pin(async move { upload.await.map(|()| None).map_err(std::io::Error::other) })
    }
}

/// Part buffers written and free for another part, shared by the hub's uploads: a stream of
/// uploads reuses a few buffers instead of allocating one per part (the allocator keeps freed
/// large buffers of each thread for a while, which showed as resident memory).
#[derive(Debug, Default)]
pub(super) struct BufferPool {
    free: std::sync::Mutex<Vec<bytes::BytesMut>>,
}

/// Buffers the pool keeps at most.
const POOLED: usize = 2 * IN_FLIGHT + 2;

impl BufferPool {
    fn take(&self, size: usize) -> bytes::BytesMut {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        match free.pop() {
            Some(mut b) if b.capacity() >= size => {
                b.clear();
                b
            }
            _ => bytes::BytesMut::with_capacity(size),
        }
    }

    fn give(&self, buffer: bytes::BytesMut) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < POOLED {
            free.push(buffer);
        }
    }
}

pub(super) struct Parts<T> {
    pub(super) target: T,
    part: usize,
    pool: std::sync::Arc<BufferPool>,
    buffer: bytes::BytesMut,
    writing: tokio::task::JoinSet<std::io::Result<Spare>>,
    /// Bytes started so far.
    started: u64,
}

impl<T: PartTarget> Parts<T> {
    pub(super) fn new(target: T, part: usize, pool: std::sync::Arc<BufferPool>) -> Self {
        Self {
            target,
            part,
            buffer: pool.take(part),
            pool,
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
        let part = std::mem::replace(&mut self.buffer, self.pool.take(self.part));
        self.started += part.len() as u64;
        let started = self.target.start(part.freeze());
        self.writing.spawn(started);
        Ok(())
    }

    async fn settle_one(&mut self) -> std::io::Result<()> {
        match self.writing.join_next().await {
            None | Some(Ok(Ok(None))) => Ok(()),
            Some(Ok(Ok(Some(spare)))) => {
                self.pool.give(spare);
                Ok(())
            }
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
