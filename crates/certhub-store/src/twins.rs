//! Twins, one row per identity (`module_id` '' is the device's own twin), kept as the JSON of
//! `certhub_twin::TwinState` with its version beside it. Writes are guarded by the version
//! that was read, so concurrent writers never lose each other's changes: the loser reads
//! again and retries.

use sqlx::Row;

use crate::{Result, Store};

/// A stored twin: its version and its state as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinRecord {
    pub version: i64,
    pub state: String,
}

fn module_key(module: Option<&str>) -> String {
    module.unwrap_or_default().to_string()
}

impl Store {
    /// The twin of a device (`module` None) or module, if one was ever written. Read on the
    /// reader pool: a device's twin GET does not wait behind the writer (a twin write checks
    /// the version it read, so a read a moment old is safe).
    pub async fn twin(&self, device: &str, module: Option<&str>) -> Result<Option<TwinRecord>> {
        let row =
            sqlx::query("SELECT version, state FROM twins WHERE device_id = $1 AND module_id = $2")
                .bind(device.to_string())
                .bind(module_key(module))
                .fetch_optional(self.reader())
                .await?;
        row.map(|r| {
            Ok(TwinRecord {
                version: r.try_get("version")?,
                state: r.try_get("state")?,
            })
        })
        .transpose()
    }

    /// The device twins (not the modules') of the devices whose ids are above `after` and at
    /// most `last`, by device id: one range read of the primary key for a page of devices,
    /// instead of a read per device.
    pub async fn device_twins_in(
        &self,
        after: &str,
        last: &str,
    ) -> Result<std::collections::HashMap<String, TwinRecord>> {
        let rows = sqlx::query(
            "SELECT device_id, version, state FROM twins \
             WHERE device_id > $1 AND device_id <= $2 AND module_id = ''",
        )
        .bind(after.to_string())
        .bind(last.to_string())
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("device_id")?,
                    TwinRecord {
                        version: r.try_get("version")?,
                        state: r.try_get("state")?,
                    },
                ))
            })
            .collect()
    }

    /// Writes a twin if the stored one is still at version `expected` (None: no twin stored
    /// yet). Returns false when another writer came first (the caller reads again) or the
    /// identity no longer exists.
    pub async fn write_twin(
        &self,
        device: &str,
        module: Option<&str>,
        expected: Option<i64>,
        twin: &TwinRecord,
    ) -> Result<bool> {
        let done = match expected {
            Some(v) => {
                sqlx::query(
                    "UPDATE twins SET version = $1, state = $2
                     WHERE device_id = $3 AND module_id = $4 AND version = $5",
                )
                .bind(twin.version)
                .bind(twin.state.clone())
                .bind(device.to_string())
                .bind(module_key(module))
                .bind(v)
                .execute(self.pool())
                .await?
            }
            None => {
                // Only for an identity that exists (a twin never outlives its identity), and ON
                // CONFLICT DO NOTHING: a concurrent first write makes this one lose, not fail.
                sqlx::query(
                    "INSERT INTO twins (device_id, module_id, version, state)
                     SELECT $1, $2, $3, $4
                     WHERE EXISTS (SELECT 1 FROM devices WHERE device_id = $1)
                       AND ($2 = '' OR EXISTS
                            (SELECT 1 FROM modules WHERE device_id = $1 AND module_id = $2))
                     ON CONFLICT (device_id, module_id) DO NOTHING",
                )
                .bind(device.to_string())
                .bind(module_key(module))
                .bind(twin.version)
                .bind(twin.state.clone())
                .execute(self.pool())
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }
}
