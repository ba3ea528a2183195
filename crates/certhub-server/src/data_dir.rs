//! The data directory holds every shared access policy key, every device SAS key and the
//! server CA's private key: it and everything in it are for the hub's own user only.
//!
//! [`secure`] runs before the hub opens anything in it: it creates the directory 0700, refuses
//! a directory that other users can write or that another user owns (whoever could write it
//! could have replaced the database or the CA key), and takes group and other permissions off
//! every file and folder inside (an installation made before this rule, or by hand), saying
//! which.

use std::fs;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: other users can write this data directory (mode {mode:o}), so its database and keys may have been changed by someone else; check its contents, then `chmod 700 {path}` and start again"
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error(
        "{path}: the data directory belongs to user id {owner}, not to the user running certhub ({me}); run the hub as its owner, or `chown -R` it to this user"
    )]
    OwnedByOther { path: PathBuf, owner: u32, me: u32 },
    #[error("{path}: not a directory; give --data-dir a directory (it is created if missing)")]
    NotADirectory { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`secure`] did: the paths whose group or other permissions it removed, with the modes
/// they had.
#[derive(Debug, Default)]
pub struct Tightened {
    pub created: bool,
    pub paths: Vec<(PathBuf, u32)>,
}

/// Makes every file and directory this process creates from now on owner-only (umask 077):
/// what the hub writes into its data directory (uploaded files, staged blocks, keys) then
/// needs no tightening at the next start.
#[cfg(unix)]
pub fn create_owner_only() {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
}

#[cfg(not(unix))]
pub fn create_owner_only() {}

/// Creates `dir` owner-only if it is missing, refuses it if others can write it or another
/// user owns it, and makes everything in it owner-only.
#[cfg(unix)]
pub fn secure(dir: &Path) -> Result<Tightened, DataDirError> {
    let mut done = Tightened::default();
    match fs::metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => done.created = true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(dir)(e)),
            }
        }
        Err(e) => return Err(io(dir)(e)),
    }
    let meta = fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(DataDirError::OwnedByOther {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(DataDirError::WritableByOthers {
            path: dir.to_path_buf(),
            mode,
        });
    }
    tighten(dir, &mut done)?;
    Ok(done)
}

#[cfg(not(unix))]
pub fn secure(dir: &Path) -> Result<Tightened, DataDirError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    Ok(Tightened::default())
}

/// Removes group and other permissions from `path` and, for a directory, from everything in
/// it. Symbolic links are left alone (their modes mean nothing; what they point to is not
/// ours to change).
#[cfg(unix)]
fn tighten(path: &Path, done: &mut Tightened) -> Result<(), DataDirError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700)).map_err(io(path))?;
        done.paths.push((path.to_path_buf(), mode));
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            tighten(&entry.path(), done)?;
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_directory_is_owner_only() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("a/b/data");
        let done = secure(&dir).expect("secured");
        assert!(done.created);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn an_open_installation_is_tightened_and_reported() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("data");
        fs::create_dir_all(dir.join("tls")).expect("mkdir");
        fs::write(dir.join("certhub.db"), b"x").expect("write");
        fs::write(dir.join("tls/server.pem"), b"x").expect("write");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(dir.join("tls"), fs::Permissions::from_mode(0o775)).expect("chmod");
        fs::set_permissions(dir.join("certhub.db"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        fs::set_permissions(
            dir.join("tls/server.pem"),
            fs::Permissions::from_mode(0o664),
        )
        .expect("chmod");
        let done = secure(&dir).expect("secured");
        assert!(!done.created);
        assert_eq!(done.paths.len(), 4, "{:?}", done.paths);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tls")), 0o700);
        assert_eq!(mode(&dir.join("certhub.db")), 0o600);
        assert_eq!(mode(&dir.join("tls/server.pem")), 0o600);
        // Already tight: nothing to say the second time.
        assert!(secure(&dir).expect("secured").paths.is_empty());
    }

    #[test]
    fn a_directory_others_can_write_is_refused_untouched() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("data");
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join("certhub.db"), b"x").expect("write");
        fs::set_permissions(dir.join("certhub.db"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = secure(&dir).expect_err("refused");
        assert!(matches!(e, DataDirError::WritableByOthers { .. }), "{e}");
        assert!(e.to_string().contains("chmod 700"), "{e}");
        assert_eq!(mode(&dir), 0o777, "a refused directory is left as it was");
        assert_eq!(mode(&dir.join("certhub.db")), 0o644);
    }

    #[test]
    fn a_file_is_not_a_data_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let file = t.path().join("data");
        fs::write(&file, b"x").expect("write");
        let e = secure(&file).expect_err("refused");
        assert!(matches!(e, DataDirError::NotADirectory { .. }), "{e}");
    }
}
