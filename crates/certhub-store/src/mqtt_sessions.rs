//! Persistent MQTT sessions (CleanSession=0): the subscriptions of each identity, so that a
//! device that never subscribes again (the Azure SDKs) keeps receiving cloud-to-device
//! messages, desired-property patches and method calls after the hub restarts. Unacknowledged
//! QoS 1 messages need no record here: they are the C2D queue itself.

use sqlx::Row;

use crate::{Result, Store};

/// `deviceId` or `deviceId/moduleId` as the (device, module) key; '' for no module.
fn key(client_id: &str) -> (String, String) {
    match client_id.split_once('/') {
        Some((d, m)) => (d.to_string(), m.to_string()),
        None => (client_id.to_string(), String::new()),
    }
}

impl Store {
    /// Writes (or replaces) the subscriptions of a persistent session, as the caller encodes
    /// them (JSON).
    pub async fn save_mqtt_session(
        &self,
        client_id: &str,
        subscriptions: &str,
        now_ms: i64,
    ) -> Result<()> {
        let (device, module) = key(client_id);
        sqlx::query(
            "INSERT INTO mqtt_sessions (device_id, module_id, subscriptions, updated_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (device_id, module_id)
             DO UPDATE SET subscriptions = excluded.subscriptions, updated_ms = excluded.updated_ms",
        )
        .bind(device)
        .bind(module)
        .bind(subscriptions.to_string())
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Forgets a persistent session (a clean session started for that identity).
    pub async fn delete_mqtt_session(&self, client_id: &str) -> Result<()> {
        let (device, module) = key(client_id);
        sqlx::query("DELETE FROM mqtt_sessions WHERE device_id = $1 AND module_id = $2")
            .bind(device)
            .bind(module)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The persistent session of one identity, if it has one (its subscriptions).
    pub async fn mqtt_session(&self, client_id: &str) -> Result<Option<String>> {
        let (device, module) = key(client_id);
        let row = sqlx::query(
            "SELECT subscriptions FROM mqtt_sessions WHERE device_id = $1 AND module_id = $2",
        )
        .bind(device)
        .bind(module)
        .fetch_optional(self.reader())
        .await?;
        row.map(|r| r.try_get("subscriptions").map_err(crate::StoreError::from))
            .transpose()
    }

    /// Every persistent session: (client id, subscriptions).
    pub async fn mqtt_sessions(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT device_id, module_id, subscriptions FROM mqtt_sessions")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let device: String = r.try_get("device_id")?;
                let module: String = r.try_get("module_id")?;
                let id = if module.is_empty() {
                    device
                } else {
                    format!("{device}/{module}")
                };
                Ok((id, r.try_get("subscriptions")?))
            })
            .collect()
    }
}
