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
    /// longer exist change nothing. An identity should appear once per kind in a batch. A CA or
    /// chain equal to the one stored is not written again: a device reconnecting with the
    /// same certificates (most connections) rewrites no row for them.
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
            sql.push_str(") AS v WHERE devices.device_id = v.column1 AND ");
            sql.push_str(&self.differs("devices.last_ca", "v.column2"));
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
                ") AS v WHERE modules.device_id = v.column1 AND modules.module_id = v.column2 AND ",
            );
            sql.push_str(&self.differs("modules.last_ca", "v.column3"));
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
            sql.push_str(") AS v WHERE devices.device_id = v.column1 AND (");
            sql.push_str(&self.differs("devices.last_chain", "v.column2"));
            sql.push_str(" OR ");
            sql.push_str(&self.differs("devices.x509_expires_ms", "v.column3"));
            sql.push(')');
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
                ") AS v WHERE modules.device_id = v.column1 AND modules.module_id = v.column2 AND (",
            );
            sql.push_str(&self.differs("modules.last_chain", "v.column3"));
            sql.push_str(" OR ");
            sql.push_str(&self.differs("modules.x509_expires_ms", "v.column4"));
            sql.push(')');
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
    /// The identities that last authenticated through the registered CA `ca`: (device id,
    /// module id or "", last activity ms).
    pub async fn identities_last_through(&self, ca: &str) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT device_id, '' AS module_id, last_activity_ms FROM devices WHERE last_ca = $1
             UNION ALL
             SELECT device_id, module_id, last_activity_ms FROM modules WHERE last_ca = $1
             ORDER BY device_id, module_id",
        )
        .bind(ca.to_string())
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(identity_row).collect()
    }

    /// The SHA-256 thumbprints (lower-case hex, leaf first) of the chain a device last
    /// authenticated with; empty when it never did with a CA-signed chain.
    pub async fn last_chain(&self, device: &str) -> Result<Vec<String>> {
        let row = sqlx::query("SELECT last_chain FROM devices WHERE device_id = $1")
            .bind(device.to_string())
            .fetch_optional(self.reader())
            .await?;
        let chain: Option<String> = match row {
            Some(r) => r.try_get("last_chain")?,
            None => None,
        };
        Ok(chain
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

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
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(identity_row).collect()
    }
}

/// When the certificates devices and modules last authenticated with expire (their leaves).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    /// Identities with a known expiry.
    pub total: i64,
    /// Of those, already expired.
    pub expired: i64,
    /// Not expired but expiring within each horizon (days), cumulative.
    pub within: Vec<(i64, i64)>,
    /// Not expired, by week from now (0: within 7 days): (week, identities), at most 52.
    pub weeks: Vec<(i64, i64)>,
    /// The soonest (expired ones first): (device id, module id or "", expiry ms), at most 20.
    pub soonest: Vec<(String, String, i64)>,
}

/// The identities with a known expiry, as a common table expression `x (device_id, module_id,
/// e)`.
const EXPIRIES: &str = "WITH x AS (
    SELECT device_id, '' AS module_id, x509_expires_ms AS e FROM devices WHERE x509_expires_ms > 0
    UNION ALL
    SELECT device_id, module_id, x509_expires_ms AS e FROM modules WHERE x509_expires_ms > 0)";

impl Store {
    /// The expiry of the certificates identities last authenticated with, at `now_ms`, with
    /// counts within each of `horizons` (days).
    pub async fn certificate_expiry(&self, now_ms: i64, horizons: &[i64]) -> Result<ExpiryReport> {
        const DAY: i64 = 86_400_000;
        let mut report = ExpiryReport::default();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{EXPIRIES} SELECT COUNT(*) AS total,
                COALESCE(SUM(CASE WHEN e <= $1 THEN 1 ELSE 0 END), 0) AS expired FROM x"
        )))
        .bind(now_ms)
        .fetch_one(self.reader())
        .await?;
        report.total = row.try_get("total")?;
        report.expired = row.try_get("expired")?;
        for days in horizons {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{EXPIRIES} SELECT COUNT(*) AS n FROM x WHERE e > $1 AND e <= $2"
            )))
            .bind(now_ms)
            .bind(now_ms.saturating_add(days.saturating_mul(DAY)))
            .fetch_one(self.reader())
            .await?;
            report.within.push((*days, row.try_get("n")?));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{EXPIRIES} SELECT (e - $1) / $2 AS week, COUNT(*) AS n FROM x WHERE e > $1
             GROUP BY (e - $1) / $2 ORDER BY 1 LIMIT 52"
        )))
        .bind(now_ms)
        .bind(7 * DAY)
        .fetch_all(self.reader())
        .await?;
        for r in &rows {
            report.weeks.push((r.try_get("week")?, r.try_get("n")?));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{EXPIRIES} SELECT device_id, module_id, e FROM x ORDER BY e, device_id, module_id LIMIT 20"
        )))
        .fetch_all(self.reader())
        .await?;
        for r in &rows {
            report.soonest.push((
                r.try_get("device_id")?,
                r.try_get("module_id")?,
                r.try_get("e")?,
            ));
        }
        Ok(report)
    }

    /// Announces expiry: every identity whose certificate is within the widest of `horizons`
    /// (days, any order) at `now_ms`, and has not been announced at the horizon it is in now
    /// (0 for expired) for this expiry, is marked announced and returned, once over all the
    /// nodes sharing the store (each mark is a conditional update).
    pub async fn announce_expiry(&self, now_ms: i64, horizons: &[i64]) -> Result<Vec<ExpiryEvent>> {
        const DAY: i64 = 86_400_000;
        let widest = horizons.iter().copied().max().unwrap_or(0);
        let mut events = Vec::new();
        for (table, module) in [("devices", "''"), ("modules", "module_id")] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT device_id, {module} AS module_id, x509_expires_ms AS e, x509_announced AS a
                 FROM {table} WHERE x509_expires_ms > 0 AND x509_expires_ms <= $1"
            )))
            .bind(now_ms.saturating_add(widest.saturating_mul(DAY)))
            .fetch_all(self.reader())
            .await?;
            for row in rows {
                let (device_id, module_id): (String, String) =
                    (row.try_get("device_id")?, row.try_get("module_id")?);
                let e: i64 = row.try_get("e")?;
                let announced: Option<String> = row.try_get("a")?;
                let Some(horizon) = horizon_of(e, now_ms, horizons) else {
                    continue;
                };
                // Already announced for this expiry at this horizon or a tighter one?
                let before = announced.as_deref().and_then(|a| {
                    let (ms, days) = a.split_once(':')?;
                    (ms.parse::<i64>().ok()? == e).then(|| days.parse::<i64>().ok())?
                });
                if before.is_some_and(|b| b <= horizon) {
                    continue;
                }
                let mark = format!("{e}:{horizon}");
                let was = announced.clone().unwrap_or_default();
                let guard =
                    "x509_expires_ms = $2 AND (x509_announced IS NULL OR x509_announced = $3)";
                let done = if table == "devices" {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE devices SET x509_announced = $1 WHERE {guard} AND device_id = $4"
                    )))
                    .bind(mark)
                    .bind(e)
                    .bind(was)
                    .bind(device_id.clone())
                    .execute(self.pool())
                    .await?
                } else {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE modules SET x509_announced = $1 WHERE {guard} AND device_id = $4 AND module_id = $5"
                    )))
                    .bind(mark)
                    .bind(e)
                    .bind(was)
                    .bind(device_id.clone())
                    .bind(module_id.clone())
                    .execute(self.pool())
                    .await?
                };
                if done.rows_affected() == 1 {
                    events.push(ExpiryEvent {
                        device_id,
                        module_id,
                        expires_ms: e,
                        horizon_days: horizon,
                    });
                }
            }
        }
        Ok(events)
    }
}

/// An intermediate CA certificate a device's chain presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateRecord {
    /// SHA-256 of its DER, lower-case hex.
    pub sha256: String,
    pub subject: String,
    pub issuer: String,
    pub not_after_ms: i64,
    /// The registered CA the chain reached.
    pub ca: String,
    pub first_seen_ms: i64,
}

impl Store {
    /// Records an intermediate unless it is known; true when it was new.
    pub async fn add_intermediate(&self, r: &IntermediateRecord) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO intermediates (sha256, subject, issuer, not_after_ms, ca, first_seen_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(r.sha256.clone())
        .bind(r.subject.clone())
        .bind(r.issuer.clone())
        .bind(r.not_after_ms)
        .bind(r.ca.clone())
        .bind(r.first_seen_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The intermediates seen, soonest expiry first.
    pub async fn intermediates(&self) -> Result<Vec<IntermediateRecord>> {
        Ok(self
            .intermediates_announced()
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// The recorded intermediate of this SHA-256 thumbprint (lower-case hex), if any: a
    /// primary-key lookup.
    pub async fn intermediate(&self, sha256: &str) -> Result<Option<IntermediateRecord>> {
        let row = sqlx::query("SELECT * FROM intermediates WHERE sha256 = $1")
            .bind(sha256.to_ascii_lowercase())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(intermediate_row).transpose()
    }

    /// The intermediates with the horizon last announced for each.
    async fn intermediates_announced(&self) -> Result<Vec<(IntermediateRecord, Option<String>)>> {
        let rows = sqlx::query("SELECT * FROM intermediates ORDER BY not_after_ms, sha256")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| Ok((intermediate_row(r)?, r.try_get("announced")?)))
            .collect()
    }

    /// Announces intermediates entering a horizon, as [`Store::announce_expiry`] does
    /// identities: each once per horizon over all nodes. Returns (record, horizon days; 0 for
    /// expired).
    pub async fn announce_intermediate_expiry(
        &self,
        now_ms: i64,
        horizons: &[i64],
    ) -> Result<Vec<(IntermediateRecord, i64)>> {
        let mut out = Vec::new();
        for (r, announced) in self.intermediates_announced().await? {
            let Some(horizon) = horizon_of(r.not_after_ms, now_ms, horizons) else {
                continue;
            };
            let before = announced.as_deref().and_then(|a| a.parse::<i64>().ok());
            if before.is_some_and(|b| b <= horizon) {
                continue;
            }
            let done = sqlx::query(
                "UPDATE intermediates SET announced = $1 WHERE sha256 = $2
                 AND (announced IS NULL OR announced = $3)",
            )
            .bind(horizon.to_string())
            .bind(r.sha256.clone())
            .bind(announced.unwrap_or_default())
            .execute(self.pool())
            .await?;
            if done.rows_affected() == 1 {
                out.push((r, horizon));
            }
        }
        Ok(out)
    }
}

/// The tightest of `horizons` (days) that `expires_ms` is within at `now_ms`, 0 when already
/// expired, none when beyond them all.
fn horizon_of(expires_ms: i64, now_ms: i64, horizons: &[i64]) -> Option<i64> {
    const DAY: i64 = 86_400_000;
    if expires_ms <= now_ms {
        return Some(0);
    }
    horizons
        .iter()
        .copied()
        .filter(|h| expires_ms <= now_ms.saturating_add(h.saturating_mul(DAY)))
        .min()
}

/// (device id, module id or "", last activity ms) of a row.
fn identity_row(r: &sqlx::any::AnyRow) -> Result<(String, String, i64)> {
    Ok((
        r.try_get("device_id")?,
        r.try_get("module_id")?,
        r.try_get("last_activity_ms")?,
    ))
}

/// An identity's certificate entering an expiry horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryEvent {
    pub device_id: String,
    /// Empty for a device.
    pub module_id: String,
    pub expires_ms: i64,
    /// The horizon it is within now, in days; 0: expired.
    pub horizon_days: i64,
}

fn intermediate_row(r: &sqlx::any::AnyRow) -> Result<IntermediateRecord> {
    Ok(IntermediateRecord {
        sha256: r.try_get("sha256")?,
        subject: r.try_get("subject")?,
        issuer: r.try_get("issuer")?,
        not_after_ms: r.try_get("not_after_ms")?,
        ca: r.try_get("ca")?,
        first_seen_ms: r.try_get("first_seen_ms")?,
    })
}
