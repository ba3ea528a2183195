//! The hub's bookkeeping about device connections, written in batches: audit records, last
//! activity and the CA each device authenticated through. One transaction per batch instead of
//! several per connection keeps the store off the connection path.

use sqlx::Row;

use crate::{AuditRecord, Result, Store};

/// What a batch writes. Activity and CA entries are (device id, module id or "", value);
/// chain entries are (device id, module id or "", the SHA-256s of the chain below the CA
/// space-separated, when the leaf expires in unix ms).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bookkeeping {
    pub audit: Vec<AuditRecord>,
    pub activity: Vec<(String, String, i64)>,
    pub cas: Vec<(String, String, String)>,
    pub chains: Vec<(String, String, String, i64)>,
}

impl Bookkeeping {
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty()
            && self.activity.is_empty()
            && self.cas.is_empty()
            && self.chains.is_empty()
    }

    pub fn len(&self) -> usize {
        self.audit.len() + self.activity.len() + self.cas.len() + self.chains.len()
    }
}

impl Store {
    /// Writes a batch in one transaction, a few multi-row statements per kind of entry (each
    /// statement is a round trip to the database's thread). Entries for identities that no
    /// longer exist change nothing. An identity should appear once per kind in a batch.
    pub async fn write_bookkeeping(&self, b: &Bookkeeping) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for chunk in crate::pow2_chunks(&b.audit, crate::MAX_ROWS) {
            let mut sql = String::from(
                "INSERT INTO audit (id, at_ms, actor, operation, target, outcome, detail, count) VALUES ",
            );
            self.push_values(&mut sql, chunk.len(), 8);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.id.as_str())
                    .bind(r.at_ms)
                    .bind(r.actor.as_str())
                    .bind(r.operation.as_str())
                    .bind(r.target.as_str())
                    .bind(r.outcome.as_str())
                    .bind(r.detail.as_str())
                    .bind(r.count);
            }
            q.execute(&mut *tx).await?;
        }
        let (device_activity, module_activity): (Vec<_>, Vec<_>) =
            b.activity.iter().partition(|(_, m, _)| m.is_empty());
        let (device_cas, module_cas): (Vec<_>, Vec<_>) =
            b.cas.iter().partition(|(_, m, _)| m.is_empty());
        // UPDATE ... FROM (VALUES ...): SQLite names the columns column1, column2, ... as
        // PostgreSQL does.
        for chunk in crate::pow2_chunks(&device_activity, crate::MAX_ROWS) {
            let mut sql =
                String::from("UPDATE devices SET last_activity_ms = v.column2 FROM (VALUES ");
            self.push_values(&mut sql, chunk.len(), 2);
            sql.push_str(") AS v WHERE devices.device_id = v.column1");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, _, at_ms) in chunk {
                q = q.bind(device.as_str()).bind(*at_ms);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in crate::pow2_chunks(&module_activity, crate::MAX_ROWS) {
            let mut sql =
                String::from("UPDATE modules SET last_activity_ms = v.column3 FROM (VALUES ");
            self.push_values(&mut sql, chunk.len(), 3);
            sql.push_str(
                ") AS v WHERE modules.device_id = v.column1 AND modules.module_id = v.column2",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, module, at_ms) in chunk {
                q = q.bind(device.as_str()).bind(module.as_str()).bind(*at_ms);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in crate::pow2_chunks(&device_cas, crate::MAX_ROWS) {
            let mut sql = String::from("UPDATE devices SET last_ca = v.column2 FROM (VALUES ");
            self.push_values(&mut sql, chunk.len(), 2);
            sql.push_str(") AS v WHERE devices.device_id = v.column1");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, _, ca) in chunk {
                q = q.bind(device.as_str()).bind(ca.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in crate::pow2_chunks(&module_cas, crate::MAX_ROWS) {
            let mut sql = String::from("UPDATE modules SET last_ca = v.column3 FROM (VALUES ");
            self.push_values(&mut sql, chunk.len(), 3);
            sql.push_str(
                ") AS v WHERE modules.device_id = v.column1 AND modules.module_id = v.column2",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, module, ca) in chunk {
                q = q
                    .bind(device.as_str())
                    .bind(module.as_str())
                    .bind(ca.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        let (device_chains, module_chains): (Vec<_>, Vec<_>) =
            b.chains.iter().partition(|(_, m, _, _)| m.is_empty());
        for chunk in crate::pow2_chunks(&device_chains, crate::MAX_ROWS) {
            let mut sql = String::from(
                "UPDATE devices SET last_chain = v.column2, x509_expires_ms = v.column3 FROM (VALUES ",
            );
            self.push_values(&mut sql, chunk.len(), 3);
            sql.push_str(") AS v WHERE devices.device_id = v.column1");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, _, chain, expires) in chunk {
                q = q.bind(device.as_str()).bind(chain.as_str()).bind(*expires);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in crate::pow2_chunks(&module_chains, crate::MAX_ROWS) {
            let mut sql = String::from(
                "UPDATE modules SET last_chain = v.column3, x509_expires_ms = v.column4 FROM (VALUES ",
            );
            self.push_values(&mut sql, chunk.len(), 4);
            sql.push_str(
                ") AS v WHERE modules.device_id = v.column1 AND modules.module_id = v.column2",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, module, chain, expires) in chunk {
                q = q
                    .bind(device.as_str())
                    .bind(module.as_str())
                    .bind(chain.as_str())
                    .bind(*expires);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The devices and modules whose last authenticated chain holds the certificate with this
    /// SHA-256 (lowercase hex): (device id, module id or "", last activity in ms).
    pub async fn identities_with_chain_cert(
        &self,
        sha256: &str,
    ) -> Result<Vec<(String, String, i64)>> {
        let pattern = format!("%{}%", sha256.to_ascii_lowercase());
        let rows = sqlx::query(
            "SELECT device_id, '' AS module_id, last_activity_ms FROM devices WHERE last_chain LIKE $1
             UNION ALL
             SELECT device_id, module_id, last_activity_ms FROM modules WHERE last_chain LIKE $1
             ORDER BY device_id, module_id",
        )
        .bind(pattern)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("device_id")?,
                    r.try_get("module_id")?,
                    r.try_get("last_activity_ms")?,
                ))
            })
            .collect()
    }
}
