//! certhub's storage. One code path (sqlx's `Any` driver) serves the embedded default, a SQLite
//! file in the data directory, and PostgreSQL. Times are stored as milliseconds since the epoch,
//! structured values as text; ids are the application's own.
//!
//! Every conditional write is a single statement guarded by the ETag that was read (`UPDATE ...
//! WHERE etag = $old`), so two writers never both win and a crash never leaves half an update:
//! a statement, or a transaction, is either committed or not there.
#![forbid(unsafe_code)]

mod analyze;
mod audit;
pub mod backup;
mod blocks;
mod bookkeeping;
mod c2d;
mod cas;
mod crl_sources;
mod crls;
mod devices;
mod dps;
mod files;
mod hub;
mod identity_cache;
mod identity_notify;
mod mqtt_sessions;
mod schema;
pub mod scratch;
mod service_queues;
mod telemetry;
mod telemetry_segments;
mod twin_query;
mod twins;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use audit::{AuditFilter, AuditRecord};
pub use blocks::BlockRecord;
pub use bookkeeping::{Bookkeeping, ExpiryEvent, ExpiryReport, IntermediateRecord};
pub use c2d::{C2dOutcome, C2dRecord, Enqueued, FeedbackRecord};
pub use cas::CaRecord;
pub use crl_sources::{CrlSource, OcspRevocation};
pub use crls::CrlRecord;
pub use devices::{DeleteOutcome, DeviceStats, WriteOutcome};
pub use dps::{EnrollmentKind, EnrollmentRecord, LinkedHubRecord, RegistrationRecord};
pub use files::{FileNotificationRecord, FinishOutcome, UploadRecord, UploadReport, UploadState};
pub use service_queues::ServiceQueue;
pub use telemetry::{
    ChainState, ChainWalk, PAGE_BYTES, TELEMETRY_ROWS, TelemetryBounds, TelemetryRecord,
    device_hash, telemetry_bytes,
};
pub use telemetry_segments::Segment as TelemetrySegment;
pub use twin_query::{
    DeviceWithTwin, Field as TwinField, JsonPath, Kind as TwinKind, MAX_TWIN_INDEXES, Op as TwinOp,
    Pred as TwinPred, Scalar as TwinScalar, TwinIndex,
};
pub use twins::TwinRecord;

/// A storage failure. Messages name what failed; the server logs them and answers 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error(
        "the database is at schema step {found}, written by {written_by}; this certhub ({}) knows steps up to {known} and cannot open it: run that version or a newer one, or go back to the copy the upgrade took first (the data directory's backups folder: put it in place of certhub.db)",
        concat!("certhub ", env!("CARGO_PKG_VERSION"))
    )]
    SchemaTooNew {
        found: i64,
        known: i64,
        written_by: String,
    },
    #[error("a database write did not finish: {0}")]
    WriteLost(String),
    /// Telemetry numbers another writer of the same log (a cluster node) has gone past.
    #[error("these telemetry sequence numbers belong to a segment another writer has closed")]
    NumbersTaken,
    /// The database could not be reached or opened; the text says where and what to do.
    #[error("{0}")]
    Unreachable(String),
}

impl StoreError {
    /// Whether a write failed because the disk (or the database's quota) is full: SQLite's
    /// SQLITE_FULL, PostgreSQL's disk_full (53100), or ENOSPC.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("13" | "53100"))
                    || e.message().contains("disk is full")
            }
            Self::Db(sqlx::Error::Io(e)) => e.raw_os_error() == Some(28),
            _ => false,
        }
    }

    /// Whether a write failed because a row with its key exists (another writer came first).
    pub fn is_duplicate_key(&self) -> bool {
        matches!(self, Self::NumbersTaken)
            || matches!(self, Self::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }

    /// Whether the database could not be reached (down, restarting, refusing connections),
    /// rather than refusing the statement: worth trying again once it is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Db(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // PostgreSQL's connection exceptions (08...), a termination by an administrator or
            // a shutdown (57P01-57P03), a database not accepting connections now (55000).
            Self::Db(sqlx::Error::Database(e)) => e.code().is_some_and(|c| {
                c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "55000")
            }),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A PostgreSQL connection idle this long is pinged before it is used again.
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store: a connection pool and the backend it talks to.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// For reads that must not queue behind writes: a device's connection path, twins, and
    /// what the service API and the console list and count (CAs, devices, audit, CRLs,
    /// expiries). On SQLite, a few read-only connections beside the single writer (WAL lets
    /// readers run while it writes, and they see every committed write); on PostgreSQL, the
    /// same pool. Reads that decide a write (a C2D message taken, a lock) stay on the writer.
    reader: AnyPool,
    backend: Backend,
    /// The identities the connect path reads (see `identity_cache`): on SQLite from the start;
    /// on PostgreSQL once a cluster node can hear the others' writes
    /// ([`Store::cache_identities_with`]).
    identities: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<identity_cache::IdentityCache>>>,
    /// Told of every identity write (device, module) once it is over: a cluster node tells
    /// the others, which forget what they kept.
    on_identity_write: std::sync::Arc<std::sync::OnceLock<IdentityWritten>>,
    /// Persistent MQTT sessions written by other processes (PostgreSQL; `identity_notify`).
    sessions_heard: std::sync::Arc<identity_notify::SessionsHeard>,
    /// The copy of the database taken before this start brought its schema up to date.
    upgrade_backup: Option<std::sync::Arc<backup::UpgradeBackup>>,
    /// Whether text orders by its UTF-8 bytes (see [`Store::text_orders_bytewise`]).
    bytewise_text: bool,
    /// The telemetry log's segments, as this process last read them.
    segments: std::sync::Arc<telemetry_segments::SegmentCache>,
    /// PostgreSQL's URL (for the connection that hears identity changes).
    url: Option<std::sync::Arc<str>>,
    /// Devices created, toward analyzing the tables where autovacuum is off (`analyze`).
    growth: std::sync::Arc<analyze::Growth>,
}

/// Called with a written identity: its device id, and its module id for a module.
type OnIdentityWrite = dyn Fn(&str, Option<&str>) + Send + Sync;

/// One connection to PostgreSQL before the pool is made, so that a server that is down, a
/// database that does not exist or a refused user is said once, at once, with the address
/// (never the password) and what to do, rather than as a pool timeout.
async fn postgres_reachable(url: &str) -> Result<()> {
    use sqlx::ConnectOptions;
    let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| {
        StoreError::Unreachable(format!(
            "the PostgreSQL URL does not parse ({e}): write it postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        ))
    })?;
    let at = format!("{}:{}", options.get_host(), options.get_port());
    let database = options
        .get_database()
        .unwrap_or("(the user's name)")
        .to_string();
    let user = options.get_username().to_string();
    let wait = Duration::from_secs(5);
    let unreachable = |why: String| Err(StoreError::Unreachable(why));
    match tokio::time::timeout(wait, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            Ok(())
        }
        Err(_) => unreachable(format!(
            "PostgreSQL at {at} did not answer within {} s: check the address, and that a firewall lets the hub through",
            wait.as_secs()
        )),
        Ok(Err(sqlx::Error::Io(e))) => unreachable(format!(
            "cannot reach PostgreSQL at {at}: {e}; is the server running and listening there (listen_addresses, port)?"
        )),
        Ok(Err(sqlx::Error::Database(e))) => {
            let code = e.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                "3D000" => unreachable(format!(
                    "PostgreSQL at {at} has no database {database:?}: create it (createdb -h {} -p {} -U {user} {database}, or CREATE DATABASE in psql) or name another in the URL",
                    options.get_host(),
                    options.get_port()
                )),
                "28P01" | "28000" => unreachable(format!(
                    "PostgreSQL at {at} refused user {user:?}: {}; check the user and password in the URL and pg_hba.conf",
                    e.message()
                )),
                _ => unreachable(format!("PostgreSQL at {at}: {}", e.message())),
            }
        }
        Ok(Err(e)) => unreachable(format!("PostgreSQL at {at}: {e}")),
    }
}

/// What a cluster node does after an identity write: tell the other nodes.
#[derive(Clone)]
pub struct IdentityWritten(std::sync::Arc<OnIdentityWrite>);

impl std::fmt::Debug for IdentityWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityWritten")
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode.
    /// A new database file is created readable by its owner only (it holds every key): SQLite
    /// gives its `-wal` and `-shm` files the database's mode.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::Db(sqlx::Error::Io(e))),
            }
        }
        // A database an older certhub wrote is copied before its schema changes.
        let upgrade = backup::before_upgrade(path).await?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut store = Self::open(&url).await?;
        store.upgrade_backup = upgrade.map(std::sync::Arc::new);
        Ok(store)
    }

    /// The copy of the database this start took before bringing its schema up to date, if it
    /// did.
    pub fn upgrade_backup(&self) -> Option<&backup::UpgradeBackup> {
        self.upgrade_backup.as_deref()
    }

    /// Opens a database by URL (`sqlite://...` or `postgres://...`) and brings its schema up to
    /// date.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        if backend == Backend::Postgres {
            postgres_reachable(url).await?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        let mut pool = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        let mut reader = None;
        if backend == Backend::Sqlite {
            // One writer at a time is all SQLite allows; a single connection also makes every
            // statement see the previous one's result without busy retries.
            // The connection is in this process: there is nothing a ping before each use
            // could find, and it cost a round trip through the pool's worker per statement.
            pool = pool
                .max_connections(1)
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        // Copy the WAL back into the database every 32 MiB rather than every 4:
                        // pages written again and again (the telemetry log's last pages, the
                        // per-device index) are copied once per checkpoint, and each checkpoint
                        // costs an fsync.
                        conn.execute("PRAGMA wal_autocheckpoint = 8192").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        Ok(())
                    })
                });
        } else {
            // A database that is down answers no request: say so within seconds (the API's
            // 503) rather than holding callers for half a minute.
            // A connection is pinged before use only when it has been idle a while: a ping is
            // a round trip of its own, and the pool already pings every connection it takes
            // back, so under load a ping before each statement only doubled the round trips
            // (three per statement with the one on release). One used within the last few
            // seconds that the server has since dropped fails its statement as "unavailable"
            // (the API's 503) and is closed.
            pool = pool
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_AFTER_IDLE {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                });
        }
        let pool = pool.connect_with(options.clone()).await?;
        if backend == Backend::Sqlite {
            // Opened after the writer, which made the file and put it in WAL mode.
            reader = Some(
                AnyPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(30))
                    .max_connections(4)
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA query_only = ON").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?,
            );
        }
        let reader = reader.unwrap_or_else(|| pool.clone());
        let mut store = Self {
            pool,
            reader,
            backend,
            identities: Default::default(),
            on_identity_write: Default::default(),
            sessions_heard: Default::default(),
            upgrade_backup: None,
            bytewise_text: true,
            segments: Default::default(),
            url: (backend == Backend::Postgres).then(|| url.into()),
            growth: Default::default(),
        };
        if backend == Backend::Sqlite {
            let _ = store.identities.set(Default::default());
        }
        schema::migrate(&store).await?;
        store.learn_text_order().await?;
        store.watch_growth().await?;
        Ok(store)
    }

    /// Keeps identities in memory on PostgreSQL too (a cluster node): `written` runs after
    /// every identity write of this process, to tell the other nodes, which call
    /// [`Store::forget_identity`]. Writes of other processes (the CLI on the database) are
    /// heard only through [`Store::keep_identities_listening`], which `certhub serve` calls on
    /// every PostgreSQL hub.
    pub fn cache_identities_with(
        &self,
        written: impl Fn(&str, Option<&str>) + Send + Sync + 'static,
    ) {
        let _ = self
            .on_identity_write
            .set(IdentityWritten(std::sync::Arc::new(written)));
        let _ = self.identities.set(Default::default());
    }

    /// Whether PostgreSQL's autovacuum is off (false on SQLite). Without it the planner keeps
    /// no statistics and no visibility map: queries over the registry and twins slow down as
    /// they grow, and plans cached while the tables were small stay.
    pub async fn autovacuum_off(&self) -> Result<bool> {
        if self.backend != Backend::Postgres {
            return Ok(false);
        }
        let on: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
            .fetch_one(self.pool())
            .await?;
        Ok(on != "on")
    }

    /// Another node wrote this identity: what is kept of it goes.
    pub fn forget_identity(&self, device: &str, module: Option<&str>) {
        if let Some(cache) = self.identities.get() {
            cache.forget(device, module);
        }
    }

    /// Forgets every identity kept (a cluster node that may have missed other nodes' writes).
    pub fn forget_all_identities(&self) {
        if let Some(cache) = self.identities.get() {
            cache.clear();
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `a` differs from `b`, a NULL from any value included: SQLite's `IS NOT`, PostgreSQL's
    /// `IS DISTINCT FROM`.
    pub(crate) fn differs(&self, a: &str, b: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("{a} IS NOT {b}"),
            Backend::Postgres => format!("{a} IS DISTINCT FROM {b}"),
        }
    }

    /// The `n`th (1-based) bind placeholder for statements built at run time. PostgreSQL
    /// needs `$n`; SQLite takes `$n` too, but then looks each one up by name, which made a
    /// 7 000-parameter bulk insert spend most of its time in `sqlite3_bind_parameter_name`:
    /// plain `?` binds by position.
    pub(crate) fn placeholder(&self, n: usize) -> String {
        match self.backend {
            Backend::Sqlite => "?".to_string(),
            Backend::Postgres => format!("${n}"),
        }
    }

    /// Appends `(p, p, ...), (p, p, ...)`: `rows` tuples of `fields` placeholders each, for a
    /// multi-row `INSERT ... VALUES`.
    pub(crate) fn push_values(&self, sql: &mut String, rows: usize, fields: usize) {
        for row in 0..rows {
            if row > 0 {
                sql.push(',');
            }
            sql.push('(');
            for col in 0..fields {
                if col > 0 {
                    sql.push(',');
                }
                sql.push_str(&self.placeholder(row * fields + col + 1));
            }
            sql.push(')');
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool for reads that must not wait behind writes (see [`Store`]); they see every
    /// committed write.
    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// Closes the pools, waiting for statements in flight.
    pub async fn close(&self) {
        self.reader.close().await;
        self.pool.close().await;
    }
}

/// Most rows one multi-row bookkeeping statement takes.
pub(crate) const MAX_ROWS: usize = 128;

/// Splits `items` into chunks of power-of-two lengths (the largest that fits, at most `max`, a
/// power of two): statements of a few fixed shapes, which stay prepared in the connection's
/// statement cache.
/// FNV-1a, 64 bits: a hash that stays the same across versions, for names and keys the
/// database keeps (twin index names, the telemetry log's device heads).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn pow2_chunks<T>(mut items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let rows = max.min(1 << items.len().ilog2());
        let (chunk, rest) = items.split_at(rows);
        items = rest;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::MAX_ROWS;

    /// A device as `PUT /devices/{id}` with an empty body makes it (SAS, enabled).
    pub(crate) fn new_device(id: &str) -> certhub_core::Device {
        let id = certhub_core::DeviceId::new(id).expect("id");
        serde_json::from_value::<certhub_core::DeviceInput>(serde_json::json!({}))
            .expect("input")
            .into_device(&id, None, 1_000)
            .expect("device")
    }

    /// A SQLite store in a folder of its own (kept while the folder lives).
    async fn sqlite_store() -> (tempfile::TempDir, super::Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::Store::open_sqlite(&dir.path().join("certhub.db"))
            .await
            .expect("store");
        (dir, store)
    }

    /// [`sqlite_store`] with one device, `id`, registered.
    async fn sqlite_store_with(id: &str) -> (tempfile::TempDir, super::Store) {
        let (dir, store) = sqlite_store().await;
        store.create_device(&new_device(id)).await.expect("create");
        (dir, store)
    }

    /// On SQLite the writer is one connection: the settings, which every device connection
    /// may read, are read beside it, not behind a long write.
    #[tokio::test]
    async fn settings_are_read_while_the_writer_is_busy() {
        let (_dir, store) = sqlite_store().await;
        let mut s = store.settings().await.expect("settings");
        s.disable_device_sas = true;
        store.put_settings(&s).await.expect("put");
        let held = store.pool().acquire().await.expect("the writer");
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), store.settings())
            .await
            .expect("the settings are read without waiting for the writer")
            .expect("settings");
        assert!(read.disable_device_sas);
        drop(held);
    }

    #[tokio::test]
    async fn twins_are_read_while_the_writer_is_busy() {
        let (_dir, store) = sqlite_store_with("tw1").await;
        let twin = super::TwinRecord {
            version: 2,
            state: "{}".into(),
        };
        assert!(
            store
                .write_twin("tw1", None, None, &twin)
                .await
                .expect("write")
        );
        let held = store.pool().acquire().await.expect("the writer");
        let five = std::time::Duration::from_secs(5);
        let read = tokio::time::timeout(five, store.twin("tw1", None))
            .await
            .expect("the twin is read without waiting for the writer")
            .expect("twin");
        assert_eq!(read.map(|t| t.version), Some(2));
        let page = tokio::time::timeout(five, store.device_twins_in("", "tw9"))
            .await
            .expect("a page of twins is read without waiting for the writer")
            .expect("twins");
        assert_eq!(page.len(), 1);
        drop(held);
    }

    /// What the service API and the console list and count is read beside a busy writer too.
    #[tokio::test]
    async fn registry_lists_are_read_while_the_writer_is_busy() {
        let (_dir, store) = sqlite_store_with("rl1").await;
        let held = store.pool().acquire().await.expect("the writer");
        let five = std::time::Duration::from_secs(5);
        let devices = tokio::time::timeout(five, store.devices_after("", 10))
            .await
            .expect("devices are listed without waiting for the writer")
            .expect("devices");
        assert_eq!(devices.len(), 1);
        let stats = tokio::time::timeout(five, store.device_stats())
            .await
            .expect("devices are counted without waiting for the writer")
            .expect("stats");
        assert_eq!(stats.total, 1);
        tokio::time::timeout(five, store.cas())
            .await
            .expect("CAs are listed without waiting for the writer")
            .expect("cas");
        drop(held);
    }

    #[test]
    fn chunks_are_powers_of_two_and_cover_everything() {
        let items: Vec<usize> = (0..300).collect();
        let sizes: Vec<usize> = super::pow2_chunks(&items, MAX_ROWS)
            .map(<[usize]>::len)
            .collect();
        assert_eq!(sizes, [128, 128, 32, 8, 4]);
        let again: Vec<usize> = super::pow2_chunks(&items, MAX_ROWS)
            .flatten()
            .copied()
            .collect();
        assert_eq!(again, items);
        assert_eq!(super::pow2_chunks::<u8>(&[], MAX_ROWS).count(), 0);
    }
}
