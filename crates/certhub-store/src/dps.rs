//! Device provisioning: enrollment groups and individual enrollments (JSON documents in the
//! service API's shape under an ETag), the registration state of every device that
//! registered, the hubs registrations may be assigned to besides this one, and the
//! installation's ID scope. Keys are lower-cased ids: DPS compares ids without case.

use certhub_core::Etag;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{DeleteOutcome, Result, Store, StoreError, WriteOutcome};

/// Which kind of enrollment a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentKind {
    Group,
    Individual,
}

impl EnrollmentKind {
    fn table(self) -> &'static str {
        match self {
            Self::Group => "dps_enrollment_groups",
            Self::Individual => "dps_enrollments",
        }
    }
}

/// A stored enrollment (group or individual): its document as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRecord {
    /// The lower-cased id.
    pub id: String,
    pub doc: String,
    pub etag: Etag,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn enrollment(row: &AnyRow) -> Result<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        id: row.try_get("id")?,
        doc: row.try_get("doc")?,
        etag: Etag(row.try_get("etag")?),
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

/// The registration state of one registration id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRecord {
    /// The lower-cased registration id.
    pub id: String,
    /// The enrollment group it registered through (lower-cased), or '' for an individual
    /// enrollment.
    pub group_id: String,
    /// The hub it was assigned to ('' when not assigned).
    pub assigned_hub: String,
    /// The operation that last registered it (what a device polls).
    pub operation_id: String,
    /// The `DeviceRegistrationState` document.
    pub doc: String,
    pub etag: Etag,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn registration(row: &AnyRow) -> Result<RegistrationRecord> {
    Ok(RegistrationRecord {
        id: row.try_get("id")?,
        group_id: row.try_get("group_id")?,
        assigned_hub: row.try_get("assigned_hub")?,
        operation_id: row.try_get("operation_id")?,
        doc: row.try_get("doc")?,
        etag: Etag(row.try_get("etag")?),
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

/// Another hub registrations may be assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedHubRecord {
    /// Its host name, as devices reach it (lower-cased).
    pub name: String,
    /// A connection string of a policy with RegistryWrite on it.
    pub connection_string: String,
    /// The hub's server CA (PEM): what its service API is trusted by.
    pub server_ca: String,
    pub weight: i64,
    /// Whether allocation policies may choose it (else only a static assignment does).
    pub apply_allocation: bool,
    pub created_ms: i64,
}

impl Store {
    pub async fn enrollment(
        &self,
        kind: EnrollmentKind,
        id: &str,
    ) -> Result<Option<EnrollmentRecord>> {
        let sql = format!("SELECT * FROM {} WHERE id = $1", kind.table());
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(enrollment).transpose()
    }

    /// Enrollments in id order after `after` ('' for the first page), at most `limit`.
    pub async fn enrollments(
        &self,
        kind: EnrollmentKind,
        after: &str,
        limit: i64,
    ) -> Result<Vec<EnrollmentRecord>> {
        let sql = format!(
            "SELECT * FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
            kind.table()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.to_string())
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(enrollment).collect()
    }

    /// Stores a new enrollment unless its id is taken (`Exists`).
    pub async fn create_enrollment(
        &self,
        kind: EnrollmentKind,
        r: &EnrollmentRecord,
    ) -> Result<WriteOutcome> {
        let sql = format!(
            "INSERT INTO {} (id, doc, etag, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            kind.table()
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(r.id.clone())
            .bind(r.doc.clone())
            .bind(r.etag.0.clone())
            .bind(r.created_ms)
            .bind(r.updated_ms)
            .execute(self.pool())
            .await?;
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else {
            WriteOutcome::Exists
        })
    }

    /// Replaces an enrollment if its ETag is still `expected` (`Stale` otherwise, or when it
    /// is gone).
    pub async fn replace_enrollment(
        &self,
        kind: EnrollmentKind,
        r: &EnrollmentRecord,
        expected: &Etag,
    ) -> Result<WriteOutcome> {
        let sql = format!(
            "UPDATE {} SET doc = $1, etag = $2, updated_ms = $3 WHERE id = $4 AND etag = $5",
            kind.table()
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(r.doc.clone())
            .bind(r.etag.0.clone())
            .bind(r.updated_ms)
            .bind(r.id.clone())
            .bind(expected.0.clone())
            .execute(self.pool())
            .await?;
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else {
            WriteOutcome::Stale
        })
    }

    /// Deletes an enrollment; with `expected`, only if its ETag still matches.
    pub async fn delete_enrollment(
        &self,
        kind: EnrollmentKind,
        id: &str,
        expected: Option<&Etag>,
    ) -> Result<DeleteOutcome> {
        let table = kind.table();
        let done = match expected {
            Some(e) => {
                let sql = format!("DELETE FROM {table} WHERE id = $1 AND etag = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id.to_string())
                    .bind(e.0.clone())
                    .execute(self.pool())
                    .await?
            }
            None => {
                let sql = format!("DELETE FROM {table} WHERE id = $1");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id.to_string())
                    .execute(self.pool())
                    .await?
            }
        };
        if done.rows_affected() == 1 {
            return Ok(DeleteOutcome::Deleted);
        }
        Ok(match self.enrollment(kind, id).await? {
            Some(_) => DeleteOutcome::Stale,
            None => DeleteOutcome::NotFound,
        })
    }

    pub async fn registration(&self, id: &str) -> Result<Option<RegistrationRecord>> {
        let row = sqlx::query("SELECT * FROM dps_registrations WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(registration).transpose()
    }

    /// Writes a registration state: a new one, or over the stored one if that still has
    /// `expected`'s ETag. `Stale` when another registration of the id came first.
    pub async fn put_registration(
        &self,
        r: &RegistrationRecord,
        expected: Option<&Etag>,
    ) -> Result<WriteOutcome> {
        let done = match expected {
            None => {
                sqlx::query(
                    "INSERT INTO dps_registrations (id, group_id, assigned_hub, operation_id,
                        doc, etag, created_ms, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(r.id.clone())
                .bind(r.group_id.clone())
                .bind(r.assigned_hub.clone())
                .bind(r.operation_id.clone())
                .bind(r.doc.clone())
                .bind(r.etag.0.clone())
                .bind(r.created_ms)
                .bind(r.updated_ms)
                .execute(self.pool())
                .await?
            }
            Some(e) => {
                sqlx::query(
                    "UPDATE dps_registrations SET group_id = $1, assigned_hub = $2,
                        operation_id = $3, doc = $4, etag = $5, updated_ms = $6
                     WHERE id = $7 AND etag = $8",
                )
                .bind(r.group_id.clone())
                .bind(r.assigned_hub.clone())
                .bind(r.operation_id.clone())
                .bind(r.doc.clone())
                .bind(r.etag.0.clone())
                .bind(r.updated_ms)
                .bind(r.id.clone())
                .bind(e.0.clone())
                .execute(self.pool())
                .await?
            }
        };
        Ok(if done.rows_affected() == 1 {
            WriteOutcome::Written
        } else if expected.is_none() {
            WriteOutcome::Exists
        } else {
            WriteOutcome::Stale
        })
    }

    /// Deletes a registration state; with `expected`, only if its ETag still matches.
    pub async fn delete_registration(
        &self,
        id: &str,
        expected: Option<&Etag>,
    ) -> Result<DeleteOutcome> {
        let done = match expected {
            Some(e) => {
                sqlx::query("DELETE FROM dps_registrations WHERE id = $1 AND etag = $2")
                    .bind(id.to_string())
                    .bind(e.0.clone())
                    .execute(self.pool())
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM dps_registrations WHERE id = $1")
                    .bind(id.to_string())
                    .execute(self.pool())
                    .await?
            }
        };
        if done.rows_affected() == 1 {
            return Ok(DeleteOutcome::Deleted);
        }
        Ok(match self.registration(id).await? {
            Some(_) => DeleteOutcome::Stale,
            None => DeleteOutcome::NotFound,
        })
    }

    /// The registrations made through a group (`group` lower-cased; '' for individual
    /// enrollments), in id order after `after`, at most `limit`.
    pub async fn registrations_of(
        &self,
        group: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<RegistrationRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM dps_registrations WHERE group_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(group.to_string())
        .bind(after.to_string())
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(registration).collect()
    }

    /// Every registration in id order after `after`, at most `limit`.
    pub async fn registrations(&self, after: &str, limit: i64) -> Result<Vec<RegistrationRecord>> {
        let rows =
            sqlx::query("SELECT * FROM dps_registrations WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after.to_string())
                .bind(limit)
                .fetch_all(self.reader())
                .await?;
        rows.iter().map(registration).collect()
    }

    /// How many registrations each hub holds.
    pub async fn registrations_per_hub(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT assigned_hub, COUNT(*) AS n FROM dps_registrations
             WHERE assigned_hub <> '' GROUP BY assigned_hub",
        )
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("assigned_hub")?, r.try_get("n")?)))
            .collect()
    }

    pub async fn linked_hubs(&self) -> Result<Vec<LinkedHubRecord>> {
        let rows = sqlx::query("SELECT * FROM dps_linked_hubs ORDER BY name")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LinkedHubRecord {
                    name: r.try_get("name")?,
                    connection_string: r.try_get("connection_string")?,
                    server_ca: r.try_get("server_ca")?,
                    weight: r.try_get("weight")?,
                    apply_allocation: r.try_get::<i64, _>("apply_allocation")? != 0,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Links a hub, or replaces the link of the same name.
    pub async fn put_linked_hub(&self, h: &LinkedHubRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO dps_linked_hubs (name, connection_string, server_ca, weight,
                apply_allocation, created_ms) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET connection_string = excluded.connection_string,
                server_ca = excluded.server_ca, weight = excluded.weight,
                apply_allocation = excluded.apply_allocation",
        )
        .bind(h.name.clone())
        .bind(h.connection_string.clone())
        .bind(h.server_ca.clone())
        .bind(h.weight)
        .bind(i64::from(h.apply_allocation))
        .bind(h.created_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Unlinks a hub; false when no hub of that name was linked.
    pub async fn delete_linked_hub(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM dps_linked_hubs WHERE name = $1")
            .bind(name.to_string())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The installation's ID scope: `candidate` the first time this is asked, the same ever
    /// after.
    pub async fn id_scope(&self, candidate: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('dps_id_scope', $1)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(candidate.to_string())
        .execute(self.pool())
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = 'dps_id_scope'")
            .fetch_one(self.pool())
            .await?;
        let scope: String = row.try_get("value")?;
        if scope.is_empty() {
            return Err(StoreError::Corrupt("the stored ID scope is empty".into()));
        }
        Ok(scope)
    }
}
