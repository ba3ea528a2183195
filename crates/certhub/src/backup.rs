//! `certhub backup` and `certhub restore`: an online snapshot of a hub's embedded data
//! directory in one file, and that file put back as a new data directory.
//!
//! The archive is a tar file: `certhub-backup.json` (what it holds), `certhub.db` (a
//! consistent copy of the SQLite database, taken with `VACUUM INTO` while the hub runs),
//! `tls/` (the server CA and the server certificate, with their keys) and `files/` (the files
//! devices uploaded to the local file store). It holds every key of the hub.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::Outcome;

/// The name of the manifest in the archive.
const MANIFEST: &str = "certhub-backup.json";

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The hub's data directory; the hub may be running.
    #[arg(long, env = "CERTHUB_DATA_DIR", default_value = "certhub-data")]
    data_dir: PathBuf,
    /// The archive to write (a tar file, owner-only); it must not exist.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive `certhub backup` wrote.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The data directory to make from it: it must not exist, or be empty.
    #[arg(long, env = "CERTHUB_DATA_DIR", default_value = "certhub-data")]
    data_dir: PathBuf,
}

/// A folder or file only its owner may read: the archive and what it unpacks hold every key.
fn private_dir(dir: &Path) -> Result<()> {
    certhub_store::backup::private_dir(dir).with_context(|| format!("creating {}", dir.display()))
}

fn private_file(path: &Path) -> Result<std::fs::File> {
    certhub_store::backup::private_file(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// A scratch folder beside `near` (same filesystem, so the last step is a rename), removed
/// when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn beside(near: &Path, what: &str) -> Result<Self> {
        let parent = match near.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = near
            .file_name()
            .map_or_else(|| "certhub".into(), |n| n.to_string_lossy().into_owned());
        let dir = parent.join(format!(".{name}.{what}-{}", std::process::id()));
        private_dir(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn backup(a: BackupArgs) -> Result<Outcome> {
    let dir = &a.data_dir;
    if dir.join(crate::serve::DATABASE_URL_FILE).exists() {
        bail!(
            "{} belongs to a hub that keeps its state in PostgreSQL: back the database up with pg_dump (pg_dump --format=custom --file certhub.dump DATABASE_URL) and copy this directory's tls folder (the server CA and its key); docs/operations.md says how",
            dir.display()
        );
    }
    let db = dir.join("certhub.db");
    if !db.is_file() {
        bail!(
            "{} holds no hub data (no certhub.db): give the data directory of a hub with --data-dir",
            dir.display()
        );
    }
    if a.out.exists() {
        bail!(
            "{} exists: give --out a new file name (a backup never overwrites one)",
            a.out.display()
        );
    }
    let scratch = Scratch::beside(&a.out, "backup")?;
    let copy = scratch.0.join("certhub.db");
    let runtime = tokio::runtime::Runtime::new()?;
    let facts = runtime
        .block_on(certhub_store::backup::snapshot_sqlite(&db, &copy))
        .with_context(|| format!("copying {}", db.display()))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let created = certhub_core::azure_time(now_ms);
    let manifest = json!({
        "format": 1,
        "certhubVersion": env!("CARGO_PKG_VERSION"),
        "created": created,
        "dataDirectory": std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        "schemaStep": facts.schema,
        "devices": facts.devices,
        "messages": facts.messages,
    });

    let partial = scratch.0.join("archive.tar");
    let mut builder = tar::Builder::new(private_file(&partial)?);
    builder.mode(tar::HeaderMode::Complete);
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    builder.append_data(&mut header, MANIFEST, bytes.as_slice())?;
    builder.append_path_with_name(&copy, "certhub.db")?;
    let mut files = 0usize;
    for folder in ["tls", "files"] {
        let from = dir.join(folder);
        if from.is_dir() {
            files += append_tree(&mut builder, &from, Path::new(folder))?;
        }
    }
    builder.into_inner()?.sync_all()?;
    std::fs::rename(&partial, &a.out)
        .with_context(|| format!("moving the archive to {}", a.out.display()))?;
    out!(
        "backed up {} to {}: schema step {}, {} devices, {} messages, {} files of tls/ and files/",
        dir.display(),
        a.out.display(),
        facts.schema,
        facts.devices,
        facts.messages,
        files
    );
    out!(
        "it holds every key of the hub (the server CA's, the policies', the devices'): keep it as a secret"
    );
    Ok(Outcome::Ok)
}

/// Adds the files below `from` as `name/...`; returns how many.
fn append_tree(
    builder: &mut tar::Builder<std::fs::File>,
    from: &Path,
    name: &Path,
) -> Result<usize> {
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let inner = name.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            n += append_tree(builder, &path, &inner)?;
        } else if kind.is_file() {
            match std::fs::File::open(&path) {
                Ok(mut f) => {
                    builder.append_file(&inner, &mut f)?;
                    n += 1;
                }
                // An upload's staged block, removed by the hub meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
    }
    Ok(n)
}

/// Whether an archive entry is one a backup writes: the manifest, the database, or a plain
/// relative path under tls/ or files/.
fn expected(path: &Path) -> bool {
    if path == Path::new(MANIFEST) || path == Path::new("certhub.db") {
        return true;
    }
    let mut parts = path.components();
    matches!(parts.next(), Some(Component::Normal(first)) if first == "tls" || first == "files")
        && parts.clone().next().is_some()
        && parts.all(|c| matches!(c, Component::Normal(_)))
}

pub fn restore(a: RestoreArgs) -> Result<Outcome> {
    let dir = &a.data_dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} is not empty: a restore never writes over a data directory. Restore into a new one (--data-dir), or stop its hub and move it aside first",
                dir.display()
            );
        }
    }
    let archive =
        std::fs::File::open(&a.from).with_context(|| format!("opening {}", a.from.display()))?;
    let scratch = Scratch::beside(dir, "restore")?;
    let mut tar = tar::Archive::new(archive);
    tar.set_preserve_permissions(false);
    let mut manifest = None;
    let mut count = 0usize;
    let entries = tar.entries().with_context(|| {
        format!(
            "{} is not a certhub backup (not a tar file)",
            a.from.display()
        )
    })?;
    for entry in entries {
        let mut entry = entry
            .with_context(|| format!("{} is damaged or not a certhub backup", a.from.display()))?;
        let path = entry.path()?.into_owned();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if !expected(&path) {
            bail!(
                "{} holds {}, which no certhub backup holds: not restored",
                a.from.display(),
                path.display()
            );
        }
        if path == Path::new(MANIFEST) {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)?;
            manifest = Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .with_context(|| format!("{MANIFEST} in {}", a.from.display()))?,
            );
            continue;
        }
        let target = scratch.0.join(&path);
        if let Some(parent) = target.parent() {
            private_dir(parent)?;
        }
        let mut file = private_file(&target)?;
        std::io::copy(&mut entry, &mut file)
            .with_context(|| format!("unpacking {}", path.display()))?;
        if path != Path::new("certhub.db") {
            count += 1;
        }
    }
    let Some(manifest) = manifest else {
        bail!(
            "{} has no {MANIFEST}: not a certhub backup",
            a.from.display()
        );
    };
    let db = scratch.0.join("certhub.db");
    if !db.is_file() {
        bail!("{} has no certhub.db: not restored", a.from.display());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let facts = runtime
        .block_on(certhub_store::backup::check_sqlite(&db))
        .with_context(|| format!("the database in {}", a.from.display()))?;
    // The empty folder (if any) gives way to the restored one.
    if dir.exists() {
        std::fs::remove_dir(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&scratch.0, dir).with_context(|| format!("creating {}", dir.display()))?;
    out!(
        "restored {} into {}: taken {} by certhub {}, schema step {}, {} devices, {} messages, {} files of tls/ and files/",
        a.from.display(),
        dir.display(),
        manifest["created"].as_str().unwrap_or("?"),
        manifest["certhubVersion"].as_str().unwrap_or("?"),
        facts.schema,
        facts.devices,
        facts.messages,
        count
    );
    out!(
        "start it: certhub serve --data-dir {} (the same host names and ports as before: the server certificate is the backed-up one)",
        dir.display()
    );
    Ok(Outcome::Ok)
}
