//! The hub's bookkeeping about device connections, written in batches: audit records, last
//! activity and the CA each device authenticated through. One transaction per batch instead of
//! several per connection keeps the store off the connection path.

use crate::{AuditRecord, Result, Store};

/// What a batch writes. Activity and CA entries are (device id, module id or "", value).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bookkeeping {
    pub audit: Vec<AuditRecord>,
    pub activity: Vec<(String, String, i64)>,
    pub cas: Vec<(String, String, String)>,
}

impl Bookkeeping {
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty() && self.activity.is_empty() && self.cas.is_empty()
    }

    pub fn len(&self) -> usize {
        self.audit.len() + self.activity.len() + self.cas.len()
    }
}

impl Store {
    /// Writes a batch in one transaction. Entries for identities that no longer exist change
    /// nothing.
    pub async fn write_bookkeeping(&self, b: &Bookkeeping) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for r in &b.audit {
            crate::audit::insert_audit(r).execute(&mut *tx).await?;
        }
        for (device, module, at_ms) in &b.activity {
            let q = sqlx::query(if module.is_empty() {
                "UPDATE devices SET last_activity_ms = $1 WHERE device_id = $2"
            } else {
                "UPDATE modules SET last_activity_ms = $1 WHERE device_id = $2 AND module_id = $3"
            })
            .bind(*at_ms)
            .bind(device.clone());
            with_module(q, module).execute(&mut *tx).await?;
        }
        for (device, module, ca) in &b.cas {
            let q = sqlx::query(if module.is_empty() {
                "UPDATE devices SET last_ca = $1 WHERE device_id = $2"
            } else {
                "UPDATE modules SET last_ca = $1 WHERE device_id = $2 AND module_id = $3"
            })
            .bind(ca.clone())
            .bind(device.clone());
            with_module(q, module).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Binds the module id (`$3`) of a module's update; a device's has none.
fn with_module<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    module: &str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    if module.is_empty() {
        q
    } else {
        q.bind(module.to_string())
    }
}
