//! Writing results so that a failure never leaves half a result behind: a new folder is built
//! under a temporary name and renamed into place; single files are written to a temporary name
//! and renamed. Private keys are created with mode 0600 from the first byte.

use std::fs::{self, OpenOptions};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Who may read a file we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Public,
    Secret,
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("{}", path.display()))
}

/// Reads a file with a one-line reason when it is missing, naming what it should be.
pub fn read_required(path: &Path, what: &str) -> Result<Vec<u8>> {
    if !path.exists() {
        bail!("{}: not found ({what})", path.display());
    }
    read(path)
}

fn write_file(path: &Path, contents: &[u8], mode: Mode, sync: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(if mode == Mode::Secret { 0o600 } else { 0o644 });
    let mut f = opts
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(contents)
        .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// A folder that appears, complete, only when [`NewDir::commit`] is called. Dropped without
/// commit, it is removed.
#[derive(Debug)]
pub struct NewDir {
    staging: PathBuf,
    target: PathBuf,
    committed: bool,
    sync: bool,
}

impl NewDir {
    /// A new folder whose files are each flushed to disk before the folder appears.
    pub fn create(target: &Path) -> Result<Self> {
        Self::create_with(target, true)
    }

    /// A new folder for bulk output (thousands of files): files are not flushed one by one,
    /// which would dominate the run time; the folder still appears only when complete.
    pub fn create_bulk(target: &Path) -> Result<Self> {
        Self::create_with(target, false)
    }

    fn create_with(target: &Path, sync: bool) -> Result<Self> {
        if target.exists() {
            bail!(
                "{}: already exists; choose another --out or remove it (certhub never overwrites keys or certificates)",
                target.display()
            );
        }
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a folder name", target.display()))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            bail!("{}: no such folder", parent.display());
        }
        let staging = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        fs::create_dir(&staging)
            .with_context(|| format!("{}: cannot create", staging.display()))?;
        Ok(Self {
            staging,
            target: target.to_path_buf(),
            committed: false,
            sync,
        })
    }

    /// Where files are written before the folder is committed.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Creates a subfolder (and its parents) inside the new folder.
    pub fn mkdir(&self, name: &str) -> Result<()> {
        let path = self.staging.join(name);
        fs::create_dir_all(&path).with_context(|| format!("{}: cannot create", path.display()))
    }

    /// Writes a file; its folder must exist (see [`NewDir::mkdir`]).
    pub fn write(&self, name: &str, contents: &[u8], mode: Mode) -> Result<()> {
        write_file(&self.staging.join(name), contents, mode, self.sync)
    }

    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            bail!(
                "{}: appeared while certhub was writing; nothing was changed",
                self.target.display()
            );
        }
        fs::rename(&self.staging, &self.target)
            .with_context(|| format!("{}: cannot move into place", self.target.display()))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for NewDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Writes new files into `dir` (created if missing), all or none: refuses before writing if
/// any exists, writes each under a temporary name, then renames them into place.
pub fn write_new_files(dir: &Path, files: &[(&str, &[u8], Mode)]) -> Result<Vec<PathBuf>> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: exists and is not a folder", dir.display());
    }
    for (name, _, _) in files {
        let p = dir.join(name);
        if p.exists() {
            bail!(
                "{}: already exists; certhub never overwrites a certificate (choose another --out or move it away)",
                p.display()
            );
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut temps = Vec::new();
    for (name, contents, mode) in files {
        let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
        if let Err(e) = write_file(&tmp, contents, *mode, true) {
            for t in &temps {
                let _ = fs::remove_file(t);
            }
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        temps.push(tmp);
    }
    let mut done = Vec::new();
    for ((name, _, _), tmp) in files.iter().zip(&temps) {
        let target = dir.join(name);
        fs::rename(tmp, &target)
            .with_context(|| format!("{}: cannot move into place", target.display()))?;
        done.push(target);
    }
    Ok(done)
}

/// Writes one new file, refusing to overwrite.
pub fn write_new_file(path: &Path, contents: &[u8], mode: Mode) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?
        .to_string_lossy()
        .to_string();
    write_new_files(dir, &[(&name, contents, mode)]).map(|_| ())
}
