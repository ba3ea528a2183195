//! Devices and modules.

use certhub_core::{
    AuthType, Authentication, Capabilities, Device, DeviceId, Etag, Module, ModuleId, Status,
    SymmetricKey, X509Thumbprint,
};
use std::collections::HashSet;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError};

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Create refused: the id exists.
    Exists,
    /// Update refused: the stored ETag is no longer the one expected (or the row is gone).
    Stale,
}

/// What a conditional delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    Stale,
}

/// Registry counts for `/statistics/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    pub total: i64,
    pub enabled: i64,
    pub disabled: i64,
}

const DEVICE_COLUMNS: &str = "device_id, generation_id, etag, status, status_reason, \
    status_updated_ms, auth_type, primary_key, secondary_key, primary_thumbprint, \
    secondary_thumbprint, iot_edge, c2d_count, last_activity_ms";

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn authentication(row: &AnyRow) -> Result<Authentication> {
    let kind: String = row.try_get("auth_type")?;
    Ok(Authentication {
        kind: AuthType::parse(&kind).ok_or_else(|| corrupt(format!("auth type {kind:?}")))?,
        symmetric_key: SymmetricKey {
            primary_key: row.try_get("primary_key")?,
            secondary_key: row.try_get("secondary_key")?,
        },
        x509_thumbprint: X509Thumbprint {
            primary_thumbprint: row.try_get("primary_thumbprint")?,
            secondary_thumbprint: row.try_get("secondary_thumbprint")?,
        },
    })
}

pub(crate) fn device_from_row(row: &AnyRow) -> Result<Device> {
    let id: String = row.try_get("device_id")?;
    let status: String = row.try_get("status")?;
    Ok(Device {
        device_id: DeviceId::new(id.clone()).map_err(|e| corrupt(e.to_string()))?,
        generation_id: row.try_get("generation_id")?,
        etag: Etag(row.try_get("etag")?),
        status: Status::parse(&status).ok_or_else(|| corrupt(format!("status {status:?}")))?,
        status_reason: row.try_get("status_reason")?,
        status_updated_ms: row.try_get("status_updated_ms")?,
        authentication: authentication(row)?,
        capabilities: Capabilities {
            iot_edge: row.try_get::<i64, _>("iot_edge")? != 0,
        },
        c2d_count: row.try_get("c2d_count")?,
        last_activity_ms: row.try_get("last_activity_ms")?,
        x509_expires_ms: row
            .try_get::<Option<i64>, _>("x509_expires_ms")?
            .unwrap_or(0),
    })
}

fn module_from_row(row: &AnyRow) -> Result<Module> {
    let device: String = row.try_get("device_id")?;
    let module: String = row.try_get("module_id")?;
    Ok(Module {
        device_id: DeviceId::new(device).map_err(|e| corrupt(e.to_string()))?,
        module_id: ModuleId::new(module).map_err(|e| corrupt(e.to_string()))?,
        generation_id: row.try_get("generation_id")?,
        etag: Etag(row.try_get("etag")?),
        managed_by: row.try_get("managed_by")?,
        authentication: authentication(row)?,
        c2d_count: row.try_get("c2d_count")?,
        last_activity_ms: row.try_get("last_activity_ms")?,
        x509_expires_ms: row
            .try_get::<Option<i64>, _>("x509_expires_ms")?
            .unwrap_or(0),
    })
}

/// Rows per multi-row INSERT: 14 parameters each, well under SQLite's 32 766 limit.
const BATCH: usize = 500;
/// Columns in `DEVICE_COLUMNS`.
const DEVICE_FIELDS: usize = 14;

/// What an identity write may change, for the connect path's cache.
#[derive(Debug, Clone)]
enum Touched {
    /// New identities only.
    Added,
    Device(String),
    Module(String, String),
}

impl Store {
    /// Runs a write of identities to its end in a task of its own, then tells the cache: a
    /// caller that stops waiting (a client that hung up) cannot leave a changed identity
    /// remembered as it was.
    async fn identity_write<T, F>(&self, touched: Touched, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let cache = self.identities.get().cloned();
        let written = self.on_identity_write.get().cloned();
        if cache.is_none() && written.is_none() {
            return write.await;
        }
        tokio::spawn(async move {
            let out = write.await;
            if let Some(cache) = cache {
                match &touched {
                    Touched::Added => cache.bump(),
                    Touched::Device(d) => cache.forget(d, None),
                    Touched::Module(d, m) => cache.forget(d, Some(m)),
                }
            }
            if let Some(written) = written {
                match &touched {
                    Touched::Added => {}
                    Touched::Device(d) => (written.0)(d, None),
                    Touched::Module(d, m) => (written.0)(d, Some(m)),
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::WriteLost(e.to_string()))?
    }

    /// A device for the CONNECT decision: from memory when it was read before and not
    /// written since (SQLite), else from the database. Its counters may be old; the API reads
    /// with [`Store::device`].
    pub async fn device_for_connect(&self, id: &DeviceId) -> Result<Option<Device>> {
        let Some(cache) = self.identities.get() else {
            return self.device(id).await;
        };
        let ticket = match cache.device(id) {
            Ok(d) => return Ok(Some(d)),
            Err(ticket) => ticket,
        };
        let found = self.device(id).await?;
        if let Some(d) = &found {
            cache.keep_device(ticket, d);
        }
        Ok(found)
    }

    /// Reads the registry into the identities kept in memory (see `identity_cache`), a page
    /// at a time in device id order, until it is read or the memory holds its most (250 000);
    /// nothing when identities are not kept (PostgreSQL outside a cluster). After a start, the
    /// first connection of each device then costs no database read: a hub restart is when a
    /// whole fleet reconnects at once. A page that raced a registry write is not kept (its
    /// devices are read when they connect). Returns how many were kept.
    pub async fn warm_identities(&self) -> Result<usize> {
        const PAGE: i64 = 500;
        let Some(cache) = self.identities.get() else {
            return Ok(0);
        };
        // Counted no further than the cache keeps: a larger registry is not read to the end.
        let count: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM devices LIMIT {}) AS d",
            crate::identity_cache::MAX_ENTRIES
        )))
        .fetch_one(self.reader())
        .await?
        .try_get("n")?;
        cache.reserve_devices(usize::try_from(count).unwrap_or(0));
        let mut after = String::new();
        let mut kept = 0;
        loop {
            let ticket = cache.ticket();
            let page = self.devices_after(&after, PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.device_id.as_str().to_string();
            let (n, full) = cache.keep_devices(ticket, &page);
            kept += n;
            if full || page.len() < PAGE as usize {
                break;
            }
        }
        Ok(kept)
    }

    /// A module for the CONNECT decision, as [`Store::device_for_connect`].
    pub async fn module_for_connect(
        &self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<Option<Module>> {
        let Some(cache) = self.identities.get() else {
            return self.module(device, module).await;
        };
        let ticket = match cache.module(device, module) {
            Ok(m) => return Ok(Some(m)),
            Err(ticket) => ticket,
        };
        let found = self.module(device, module).await?;
        if let Some(m) = &found {
            cache.keep_module(ticket, m);
        }
        Ok(found)
    }

    pub async fn device(&self, id: &DeviceId) -> Result<Option<Device>> {
        let row = sqlx::query("SELECT * FROM devices WHERE device_id = $1")
            .bind(id.as_str().to_string())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Lists devices in id order, at most `limit`.
    pub async fn devices(&self, limit: i64) -> Result<Vec<Device>> {
        self.devices_after("", limit).await
    }

    /// Lists devices whose id sorts after `after`, in id order, at most `limit`: pages through
    /// the whole registry.
    pub async fn devices_after(&self, after: &str, limit: i64) -> Result<Vec<Device>> {
        let rows =
            sqlx::query("SELECT * FROM devices WHERE device_id > $1 ORDER BY device_id LIMIT $2")
                .bind(after.to_string())
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Creates a device unless its id exists.
    pub async fn create_device(&self, d: &Device) -> Result<WriteOutcome> {
        Ok(match self.insert_devices(std::slice::from_ref(d)).await? {
            0 => WriteOutcome::Exists,
            _ => WriteOutcome::Written,
        })
    }

    /// Inserts devices whose ids are free, in one transaction; returns how many were inserted
    /// (the others already existed and are left as they were).
    pub async fn insert_devices(&self, devices: &[Device]) -> Result<u64> {
        let (store, devices) = (self.clone(), devices.to_vec());
        let inserted = self
            .identity_write(Touched::Added, async move {
                store.insert_devices_now(&devices).await
            })
            .await?;
        self.grew(inserted);
        Ok(inserted)
    }

    async fn insert_devices_now(&self, devices: &[Device]) -> Result<u64> {
        if devices.is_empty() {
            return Ok(0);
        }
        if devices.len() <= BATCH {
            // One statement is atomic on its own: no transaction's BEGIN and COMMIT trips.
            return self.insert_devices_in(self.pool(), devices).await;
        }
        let mut tx = self.pool().begin().await?;
        let mut inserted = 0;
        for chunk in devices.chunks(BATCH) {
            inserted += self.insert_devices_in(&mut *tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// One multi-row insert of at most [`BATCH`] devices.
    async fn insert_devices_in<'e, E>(&self, executor: E, chunk: &[Device]) -> Result<u64>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        // Long statements: placeholders per backend (see `Store::placeholder`).
        let mut sql = format!("INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ");
        self.push_values(&mut sql, chunk.len(), DEVICE_FIELDS);
        sql.push_str(" ON CONFLICT (device_id) DO NOTHING");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in chunk {
            let a = &d.authentication;
            q = q
                .bind(d.device_id.as_str().to_string())
                .bind(d.generation_id.clone())
                .bind(d.etag.0.clone())
                .bind(d.status.as_str())
                .bind(d.status_reason.clone())
                .bind(d.status_updated_ms)
                .bind(a.kind.as_str())
                .bind(a.symmetric_key.primary_key.clone())
                .bind(a.symmetric_key.secondary_key.clone())
                .bind(a.x509_thumbprint.primary_thumbprint.clone())
                .bind(a.x509_thumbprint.secondary_thumbprint.clone())
                .bind(i64::from(d.capabilities.iot_edge))
                .bind(d.c2d_count)
                .bind(d.last_activity_ms);
        }
        Ok(q.execute(executor).await?.rows_affected())
    }

    /// Which of `ids` are registered.
    pub async fn existing_device_ids(&self, ids: &[String]) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(BATCH) {
            let placeholders: Vec<String> =
                (1..=chunk.len()).map(|i| self.placeholder(i)).collect();
            let sql = format!(
                "SELECT device_id FROM devices WHERE device_id IN ({})",
                placeholders.join(",")
            );
            // Not kept prepared: PostgreSQL settles on one plan for a prepared statement whose
            // plans for the values given cost more on average than its generic plan, and
            // that plan, made while the table was small (a sequential scan), stays until the
            // table is analyzed, which never happens with autovacuum off (seen: a second a
            // statement a minute into a populate, 6 s by 780 000 devices; docs/performance.md).
            // Unprepared, each run is planned for its values.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
            for id in chunk {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(self.pool()).await? {
                found.insert(row.try_get::<String, _>("device_id")?);
            }
        }
        Ok(found)
    }

    /// Replaces a device if its stored ETag is still `expected`. The hub's own counters
    /// (`c2d_count`, `last_activity_ms`) are not overwritten.
    pub async fn replace_device(&self, d: &Device, expected: &Etag) -> Result<WriteOutcome> {
        let (store, d, expected) = (self.clone(), d.clone(), expected.clone());
        let touched = Touched::Device(d.device_id.as_str().to_string());
        self.identity_write(touched, async move {
            store.replace_device_now(&d, &expected).await
        })
        .await
    }

    async fn replace_device_now(&self, d: &Device, expected: &Etag) -> Result<WriteOutcome> {
        let a = &d.authentication;
        let done = sqlx::query(
            "UPDATE devices SET generation_id = $1, etag = $2, status = $3, status_reason = $4,
                status_updated_ms = $5, auth_type = $6, primary_key = $7, secondary_key = $8,
                primary_thumbprint = $9, secondary_thumbprint = $10, iot_edge = $11
             WHERE device_id = $12 AND etag = $13",
        )
        .bind(d.generation_id.clone())
        .bind(d.etag.0.clone())
        .bind(d.status.as_str())
        .bind(d.status_reason.clone())
        .bind(d.status_updated_ms)
        .bind(a.kind.as_str())
        .bind(a.symmetric_key.primary_key.clone())
        .bind(a.symmetric_key.secondary_key.clone())
        .bind(a.x509_thumbprint.primary_thumbprint.clone())
        .bind(a.x509_thumbprint.secondary_thumbprint.clone())
        .bind(i64::from(d.capabilities.iot_edge))
        .bind(d.device_id.as_str().to_string())
        .bind(expected.0.clone())
        .execute(self.pool())
        .await?;
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else {
            WriteOutcome::Stale
        })
    }

    /// Deletes a device and its modules; with `expected`, only if its ETag still matches.
    pub async fn delete_device(
        &self,
        id: &DeviceId,
        expected: Option<&Etag>,
    ) -> Result<DeleteOutcome> {
        let (store, id, expected) = (self.clone(), id.clone(), expected.cloned());
        let touched = Touched::Device(id.as_str().to_string());
        self.identity_write(touched, async move {
            store.delete_device_now(&id, expected.as_ref()).await
        })
        .await
    }

    async fn delete_device_now(
        &self,
        id: &DeviceId,
        expected: Option<&Etag>,
    ) -> Result<DeleteOutcome> {
        let mut tx = self.pool().begin().await?;
        let done = match expected {
            Some(e) => {
                sqlx::query("DELETE FROM devices WHERE device_id = $1 AND etag = $2")
                    .bind(id.as_str().to_string())
                    .bind(e.0.clone())
                    .execute(&mut *tx)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM devices WHERE device_id = $1")
                    .bind(id.as_str().to_string())
                    .execute(&mut *tx)
                    .await?
            }
        };
        if done.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 AS one FROM devices WHERE device_id = $1")
                .bind(id.as_str().to_string())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            tx.rollback().await?;
            return Ok(if exists {
                DeleteOutcome::Stale
            } else {
                DeleteOutcome::NotFound
            });
        }
        // The device's modules, twins, queued cloud-to-device messages and persistent MQTT
        // sessions go with it.
        for table in ["modules", "twins", "c2d", "mqtt_sessions"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE device_id = $1"
            )))
            .bind(id.as_str().to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    /// How many registered devices and modules have authenticated through the CA `name`.
    pub async fn devices_of_ca(&self, name: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM devices WHERE last_ca = $1)
                  + (SELECT COUNT(*) FROM modules WHERE last_ca = $1) AS n",
        )
        .bind(name.to_string())
        .fetch_one(self.reader())
        .await?;
        Ok(row.try_get("n")?)
    }

    pub async fn device_stats(&self) -> Result<DeviceStats> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total,
                    COALESCE(SUM(CASE WHEN status = 'enabled' THEN 1 ELSE 0 END), 0) AS enabled
             FROM devices",
        )
        .fetch_one(self.reader())
        .await?;
        let total: i64 = row.try_get("total")?;
        let enabled: i64 = row.try_get("enabled")?;
        Ok(DeviceStats {
            total,
            enabled,
            disabled: total - enabled,
        })
    }

    pub async fn module(&self, device: &DeviceId, module: &ModuleId) -> Result<Option<Module>> {
        let row = sqlx::query("SELECT * FROM modules WHERE device_id = $1 AND module_id = $2")
            .bind(device.as_str().to_string())
            .bind(module.as_str().to_string())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(module_from_row).transpose()
    }

    pub async fn modules(&self, device: &DeviceId) -> Result<Vec<Module>> {
        let rows = sqlx::query("SELECT * FROM modules WHERE device_id = $1 ORDER BY module_id")
            .bind(device.as_str().to_string())
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(module_from_row).collect()
    }

    /// Creates a module unless it exists. The caller checks that the device exists.
    pub async fn create_module(&self, m: &Module) -> Result<WriteOutcome> {
        let (store, m) = (self.clone(), m.clone());
        self.identity_write(
            Touched::Added,
            async move { store.create_module_now(&m).await },
        )
        .await
    }

    async fn create_module_now(&self, m: &Module) -> Result<WriteOutcome> {
        let a = &m.authentication;
        let done = sqlx::query(
            "INSERT INTO modules (device_id, module_id, generation_id, etag, managed_by,
                auth_type, primary_key, secondary_key, primary_thumbprint, secondary_thumbprint,
                c2d_count, last_activity_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (device_id, module_id) DO NOTHING",
        )
        .bind(m.device_id.as_str().to_string())
        .bind(m.module_id.as_str().to_string())
        .bind(m.generation_id.clone())
        .bind(m.etag.0.clone())
        .bind(m.managed_by.clone())
        .bind(a.kind.as_str())
        .bind(a.symmetric_key.primary_key.clone())
        .bind(a.symmetric_key.secondary_key.clone())
        .bind(a.x509_thumbprint.primary_thumbprint.clone())
        .bind(a.x509_thumbprint.secondary_thumbprint.clone())
        .bind(m.c2d_count)
        .bind(m.last_activity_ms)
        .execute(self.pool())
        .await?;
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else {
            WriteOutcome::Exists
        })
    }

    pub async fn replace_module(&self, m: &Module, expected: &Etag) -> Result<WriteOutcome> {
        let (store, m, expected) = (self.clone(), m.clone(), expected.clone());
        let touched = Touched::Module(
            m.device_id.as_str().to_string(),
            m.module_id.as_str().to_string(),
        );
        self.identity_write(touched, async move {
            store.replace_module_now(&m, &expected).await
        })
        .await
    }

    async fn replace_module_now(&self, m: &Module, expected: &Etag) -> Result<WriteOutcome> {
        let a = &m.authentication;
        let done = sqlx::query(
            "UPDATE modules SET etag = $1, managed_by = $2, auth_type = $3, primary_key = $4,
                secondary_key = $5, primary_thumbprint = $6, secondary_thumbprint = $7
             WHERE device_id = $8 AND module_id = $9 AND etag = $10",
        )
        .bind(m.etag.0.clone())
        .bind(m.managed_by.clone())
        .bind(a.kind.as_str())
        .bind(a.symmetric_key.primary_key.clone())
        .bind(a.symmetric_key.secondary_key.clone())
        .bind(a.x509_thumbprint.primary_thumbprint.clone())
        .bind(a.x509_thumbprint.secondary_thumbprint.clone())
        .bind(m.device_id.as_str().to_string())
        .bind(m.module_id.as_str().to_string())
        .bind(expected.0.clone())
        .execute(self.pool())
        .await?;
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else {
            WriteOutcome::Stale
        })
    }

    /// Deletes a module and its twin; with `expected`, only if its ETag still matches.
    pub async fn delete_module(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        expected: Option<&Etag>,
    ) -> Result<DeleteOutcome> {
        let (store, device, module, expected) = (
            self.clone(),
            device.clone(),
            module.clone(),
            expected.cloned(),
        );
        let touched = Touched::Module(device.as_str().to_string(), module.as_str().to_string());
        self.identity_write(touched, async move {
            store
                .delete_module_now(&device, &module, expected.as_ref())
                .await
        })
        .await
    }

    async fn delete_module_now(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        expected: Option<&Etag>,
    ) -> Result<DeleteOutcome> {
        let mut tx = self.pool().begin().await?;
        let done = match expected {
            Some(e) => {
                sqlx::query(
                    "DELETE FROM modules WHERE device_id = $1 AND module_id = $2 AND etag = $3",
                )
                .bind(device.as_str().to_string())
                .bind(module.as_str().to_string())
                .bind(e.0.clone())
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM modules WHERE device_id = $1 AND module_id = $2")
                    .bind(device.as_str().to_string())
                    .bind(module.as_str().to_string())
                    .execute(&mut *tx)
                    .await?
            }
        };
        if done.rows_affected() == 1 {
            for table in ["twins", "mqtt_sessions"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE device_id = $1 AND module_id = $2"
                )))
                .bind(device.as_str().to_string())
                .bind(module.as_str().to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            return Ok(DeleteOutcome::Deleted);
        }
        tx.rollback().await?;
        Ok(match self.module(device, module).await? {
            Some(_) => DeleteOutcome::Stale,
            None => DeleteOutcome::NotFound,
        })
    }
}
