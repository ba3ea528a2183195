//! Online backups of the embedded store: a consistent copy of the SQLite database taken while a
//! hub may be writing it, and the check a restore runs on a copy before putting it in place.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::{Result, StoreError};

/// What a database copy holds, as its check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteFacts {
    /// The schema step it is at.
    pub schema: i64,
    /// Registered devices.
    pub devices: i64,
    /// Messages in the telemetry log.
    pub messages: i64,
}

fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
}

/// Copies the SQLite database at `src` to `dest` (which must not exist) with `VACUUM INTO`:
/// one read transaction, so the copy holds every transaction committed before it began and
/// none after, whatever a running hub writes meanwhile (SQLite's WAL lets it go on writing).
/// The copy is compacted and has no WAL of its own. Returns what it holds.
pub async fn snapshot_sqlite(src: &Path, dest: &Path) -> Result<SqliteFacts> {
    if !src.exists() {
        return Err(StoreError::Corrupt(format!(
            "{} does not exist: this is not a certhub data directory with an embedded store",
            src.display()
        )));
    }
    let dest_text = dest
        .to_str()
        .ok_or_else(|| StoreError::Corrupt(format!("{}: the path is not UTF-8", dest.display())))?;
    // The copy holds every key: made owner-only before SQLite writes into it (VACUUM INTO
    // takes an empty file), and never over an existing one.
    private_file(dest).map_err(|e| StoreError::Corrupt(format!("{}: {e}", dest.display())))?;
    let copied = async {
        let mut conn = connect_options(src).connect().await?;
        sqlx::query("VACUUM INTO ?")
            .bind(dest_text)
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        check_sqlite(dest).await
    }
    .await;
    if copied.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    copied
}

/// Checks a database copy before a restore puts it in place: SQLite's integrity check, and the
/// schema step, which this version must know. Returns what it holds.
pub async fn check_sqlite(path: &Path) -> Result<SqliteFacts> {
    let mut conn = connect_options(path).read_only(true).connect().await?;
    let verdict: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await?
        .try_get(0)?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt(format!(
            "{}: SQLite's integrity check failed: {verdict}",
            path.display()
        )));
    }
    let schema: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut conn)
        .await
        .map_err(|_| {
            StoreError::Corrupt(format!(
                "{}: no schema_version table: not a certhub database",
                path.display()
            ))
        })?
        .try_get(0)?;
    let known = crate::schema::known_steps();
    if schema > known {
        let written_by = sqlx::query_scalar::<_, Option<String>>(crate::schema::WRITTEN_BY)
            .fetch_one(&mut conn)
            .await;
        return Err(StoreError::SchemaTooNew {
            found: schema,
            known,
            written_by: crate::schema::version_named(written_by.ok().flatten()),
        });
    }
    let count = |table: &str| {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
    };
    let devices = count("devices").fetch_one(&mut conn).await.unwrap_or(0);
    // The log is in segments from schema step 18, one table before.
    let messages = match sqlx::query_scalar::<_, i64>("SELECT id FROM telemetry_segments")
        .fetch_all(&mut conn)
        .await
    {
        Ok(ids) => {
            let mut n = 0;
            for id in ids {
                let table = crate::telemetry_segments::table(id);
                n += count(&table).fetch_one(&mut conn).await.unwrap_or(0);
            }
            n
        }
        Err(_) => count("telemetry").fetch_one(&mut conn).await.unwrap_or(0),
    };
    conn.close().await?;
    Ok(SqliteFacts {
        schema,
        devices,
        messages,
    })
}

/// The copy taken before a schema upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeBackup {
    /// The schema step the database was at.
    pub from: i64,
    /// The step this version brings it to.
    pub to: i64,
    /// Where the copy is.
    pub path: std::path::PathBuf,
}

/// Before this version changes the schema of the existing database at `path` (an upgrade),
/// copies it to `backups/certhub-schema-<from>-<unix time>.db` beside it. Nothing for a new
/// database, one already up to date, or one too new (the open refuses that).
pub async fn before_upgrade(path: &Path) -> Result<Option<UpgradeBackup>> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(None);
    }
    let mut conn = connect_options(path).connect().await?;
    let from: i64 = match sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        .fetch_one(&mut conn)
        .await
    {
        Ok(row) => row.try_get(0)?,
        // No schema yet: nothing of value to keep.
        Err(_) => 0,
    };
    conn.close().await?;
    let to = crate::schema::known_steps();
    if from == 0 || from >= to {
        return Ok(None);
    }
    let dir = path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("backups");
    private_dir(&dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dest = dir.join(format!("certhub-schema-{from}-{unix}.db"));
    snapshot_sqlite(path, &dest).await?;
    Ok(Some(UpgradeBackup {
        from,
        to,
        path: dest,
    }))
}

/// Creates a folder (and its parents) only its owner may open: backups hold every key.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates a new file (never over an existing one) only its owner may read.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
