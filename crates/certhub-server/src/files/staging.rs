//! Staged blocks on the local filesystem store: one append-only log per blob.
//!
//! Put Block appends its body to the blob's log (`staging/{digest}/log`) and, once the bytes are
//! synced, records where they lie in the blob's index (`staging/{digest}/index`, a line per
//! block). When the block list names the log's blocks in the order they were appended, and
//! nothing else lies in the log, Put Block List publishes the log itself by a rename: every byte
//! is written once, as with Put Blob. Any other list (blocks put concurrently arrive out of
//! order; a block put twice leaves its older bytes behind) is composed by copying the ranges.
//!
//! One Put Block of a blob appends at a time; a concurrent one for the same blob is staged as an
//! object of its own (`staging/{digest}/{block id in hex}`, as on remote stores) and recorded in
//! the index too, so the newest put of a block id wins whichever way it was staged.
//!
//! Put Blob writes its body the same way (pooled parts, synced) to a file of its own in the
//! staging folder and renames it to the blob once whole.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::parts::{BufferPool, PartTarget, Parts, Spare};

/// The start of the name of a Put Blob's file in the blob's staging folder (`put-{random}`),
/// written whole there, then renamed to the blob.
pub(super) const PUT_PREFIX: &str = "put-";

/// Where one staged block's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Staged {
    /// `len` bytes at `offset` of the blob's log.
    Log { offset: u64, len: u64 },
    /// An object of its own beside the log.
    Object,
}

/// The blobs whose log is being appended to or published, by staging digest.
#[derive(Debug, Default)]
pub(super) struct Claims {
    claims: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Claims {
    /// The lock of one blob's log.
    pub(super) fn of(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.entry(digest.to_string()).or_default().clone()
    }

    /// Forgets a blob whose staging area was removed.
    pub(super) fn forget(&self, digest: &str) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.remove(digest);
    }
}

/// One index line: `L {id} {offset} {len}` for a block in the log, `O {id}` for a block staged
/// as an object.
pub(super) fn index_line(id: &str, staged: Staged) -> String {
    match staged {
        Staged::Log { offset, len } => format!("L {id} {offset} {len}\n"),
        Staged::Object => format!("O {id}\n"),
    }
}

/// The newest staging of each block id in an index (a line cut short by a crash is skipped).
pub(super) fn parse_index(text: &str) -> HashMap<String, Staged> {
    let mut staged = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["L", id, offset, len] => {
                if let (Ok(offset), Ok(len)) = (offset.parse(), len.parse()) {
                    staged.insert((*id).to_string(), Staged::Log { offset, len });
                }
            }
            ["O", id] => {
                staged.insert((*id).to_string(), Staged::Object);
            }
            _ => {}
        }
    }
    staged
}

/// Appends one line to the index, synced (`O_APPEND`: a line is written whole, even beside a
/// concurrent append of another block).
pub(super) fn record(index: &std::path::Path, line: &str) -> std::io::Result<()> {
    let new = !index.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(index)?;
    file.write_all(line.as_bytes())?;
    file.sync_data()?;
    if new { sync_folder_of(index) } else { Ok(()) }
}

/// Makes a new file's name in its folder durable.
fn sync_folder_of(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The log, opened for writing at its end (created, with its folder, if new).
pub(super) fn open_log(log: &std::path::Path) -> std::io::Result<(std::fs::File, u64)> {
    // Another blob's staging folder removed as the last one in `staging/` can race with
    // creating this one: try again.
    let mut tries = 0;
    let file = loop {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(log);
        match opened {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
            opened => break opened?,
        }
    };
    let end = file.metadata()?.len();
    if end == 0 {
        sync_folder_of(log)?;
    }
    Ok((file, end))
}

/// Parts of a block at their offsets of the log, each written on a blocking thread.
pub(super) struct LogParts {
    file: Arc<std::fs::File>,
    /// Where the next part goes.
    at: u64,
}

impl PartTarget for LogParts {
    fn start(&mut self, part: bytes::Bytes) -> BoxFuture<'static, std::io::Result<Spare>> {
        let (file, offset) = (self.file.clone(), self.at);
        self.at += part.len() as u64;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                file.write_all_at(&part, offset)?;
                Ok(part.try_into_mut().ok())
            })
            .await
            .map_err(std::io::Error::other)?
        })
    }
}

/// Appends one block to a log from `start` on, in parts (see [`Parts`]).
pub(super) struct LogWriter {
    parts: Parts<LogParts>,
    start: u64,
}

impl LogWriter {
    pub(super) fn new(file: std::fs::File, start: u64, part: usize, pool: Arc<BufferPool>) -> Self {
        let target = LogParts {
            file: Arc::new(file),
            at: start,
        };
        Self {
            parts: Parts::new(target, part, pool),
            start,
        }
    }

    /// The block's bytes taken so far.
    pub(super) fn written(&self) -> u64 {
        self.parts.taken()
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.parts.write(data).await
    }

    /// Writes what is left and syncs the log's data.
    pub(super) async fn sync(&mut self) -> std::io::Result<()> {
        self.parts.flush().await?;
        let file = self.parts.target.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Cuts the log back to where this block began.
    pub(super) async fn roll_back(mut self) {
        self.parts.stop().await;
        let (file, start) = (self.parts.target.file, self.start);
        let cut = tokio::task::spawn_blocking(move || file.set_len(start)).await;
        if !matches!(cut, Ok(Ok(()))) {
            tracing::warn!("a staging log could not be cut back; its block list will be copied");
        }
    }
}

/// Whether `blocks` (in list order) are the whole log of `log_len` bytes in the order they were
/// appended: then the log is the blob.
pub(super) fn log_is_blob(blocks: &[Staged], log_len: u64) -> bool {
    let mut at = 0;
    for block in blocks {
        match *block {
            Staged::Log { offset, len } if offset == at => at += len,
            _ => return false,
        }
    }
    at == log_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_staging_of_a_block_wins_and_torn_lines_are_skipped() {
        let text = "L a 0 4\nL b 4 4\nO a\nL c 8 2\nL b 10 4\nL d 1";
        let staged = parse_index(text);
        assert_eq!(staged["a"], Staged::Object);
        assert_eq!(staged["b"], Staged::Log { offset: 10, len: 4 });
        assert_eq!(staged["c"], Staged::Log { offset: 8, len: 2 });
        assert!(!staged.contains_key("d"));
        let line = index_line("ab", Staged::Log { offset: 3, len: 9 });
        assert_eq!(parse_index(&line)["ab"], Staged::Log { offset: 3, len: 9 });
    }

    #[test]
    fn only_the_whole_log_in_append_order_is_published_as_is() {
        let a = Staged::Log { offset: 0, len: 4 };
        let b = Staged::Log { offset: 4, len: 6 };
        assert!(log_is_blob(&[a, b], 10));
        assert!(!log_is_blob(&[b, a], 10), "out of order");
        assert!(!log_is_blob(&[a], 10), "a block left out");
        assert!(!log_is_blob(&[a, b], 12), "bytes past the last block");
        assert!(!log_is_blob(&[a, a], 8), "a block twice");
        assert!(!log_is_blob(&[a, Staged::Object], 4));
    }
}
