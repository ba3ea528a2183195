//! Hub-wide state: shared access policies and settings.

use certhub_core::{HubSettings, Policy, Rights};
use sqlx::Row;

use crate::{Result, Store, StoreError};

impl Store {
    /// The policies; on first use, Azure's five defaults with fresh keys are created.
    pub async fn policies(&self) -> Result<Vec<Policy>> {
        let rows = sqlx::query("SELECT * FROM policies ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        if rows.is_empty() {
            for p in Policy::defaults() {
                self.insert_policy(&p).await?;
            }
            return Box::pin(self.policies()).await;
        }
        // A hub made before the provisioning service had five policies: its owner policy is
        // added once (a policy an operator deleted later stays deleted).
        let made = sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('dps_policy_made', '1')
             ON CONFLICT (name) DO NOTHING",
        )
        .execute(self.pool())
        .await?;
        let has = |name: &str| {
            rows.iter()
                .any(|r| r.try_get::<String, _>("name").is_ok_and(|n| n == name))
        };
        if made.rows_affected() == 1
            && !has(certhub_core::PROVISIONING_OWNER_POLICY)
            && let Some(p) = Policy::defaults()
                .into_iter()
                .find(|p| p.name == certhub_core::PROVISIONING_OWNER_POLICY)
        {
            self.insert_policy(&p).await?;
            return Box::pin(self.policies()).await;
        }
        rows.iter()
            .map(|row| {
                let rights: String = row.try_get("rights")?;
                Ok(Policy {
                    name: row.try_get("name")?,
                    rights: Rights::parse(&rights)
                        .ok_or_else(|| StoreError::Corrupt(format!("rights {rights:?}")))?,
                    primary_key: row.try_get("primary_key")?,
                    secondary_key: row.try_get("secondary_key")?,
                })
            })
            .collect()
    }

    /// Adds a policy unless one of its name exists.
    async fn insert_policy(&self, p: &Policy) -> Result<()> {
        sqlx::query(
            "INSERT INTO policies (name, rights, primary_key, secondary_key)
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(p.name.clone())
        .bind(p.rights.to_string())
        .bind(p.primary_key.clone())
        .bind(p.secondary_key.clone())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The hub settings. Read beside the writes (on SQLite, not behind the one writer): every
    /// connection and API request may read them, and a long write (a twin index built, a large
    /// import) must not hold them up.
    pub async fn settings(&self) -> Result<HubSettings> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = 'hub'")
            .fetch_optional(self.reader())
            .await?;
        match row {
            None => Ok(HubSettings::default()),
            Some(row) => {
                let text: String = row.try_get("value")?;
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("hub settings: {e}")))
            }
        }
    }

    pub async fn put_settings(&self, settings: &HubSettings) -> Result<()> {
        let text = serde_json::to_string(settings)
            .map_err(|e| StoreError::Corrupt(format!("hub settings: {e}")))?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('hub', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(text)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl Store {
    /// Records where the hub's service API is reachable (`host[:port]`), so local tools can
    /// build connection strings.
    pub async fn put_endpoint(&self, host: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('endpoint', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(host.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// When the hub was created (ms since the epoch): recorded as `now_ms` the first time this
    /// is asked, the same ever after.
    pub async fn created_ms(&self, now_ms: i64) -> Result<i64> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('created_ms', $1)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(now_ms.to_string())
        .execute(self.pool())
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = 'created_ms'")
            .fetch_one(self.pool())
            .await?;
        let text: String = row.try_get("value")?;
        text.parse()
            .map_err(|_| StoreError::Corrupt(format!("created_ms is {text:?}, not a number")))
    }

    /// Counts one more change of `name` (`trust`, `dps`): what processes sharing this database
    /// poll ([`Store::generations`]) to learn that another one changed it.
    pub async fn bump_generation(&self, name: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, '1')
             ON CONFLICT (name) DO UPDATE
             SET value = CAST(CAST(settings.value AS BIGINT) + 1 AS TEXT)",
        )
        .bind(format!("generation:{name}"))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The change counters (name without its `generation:` prefix, count).
    pub async fn generations(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT name, value FROM settings WHERE name LIKE 'generation:%'")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("name")?;
                let value: String = r.try_get("value")?;
                let n = value.parse().map_err(|_| {
                    StoreError::Corrupt(format!("{name} is {value:?}, not a number"))
                })?;
                Ok((name.trim_start_matches("generation:").to_string(), n))
            })
            .collect()
    }

    /// Where the hub last said its service API is reachable.
    pub async fn endpoint(&self) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = 'endpoint'")
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| r.try_get("value").map_err(StoreError::from))
            .transpose()
    }
}
