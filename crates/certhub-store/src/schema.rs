//! The schema, as numbered steps applied in order and recorded in `schema_version`. The same
//! SQL runs on SQLite and PostgreSQL: BIGINT milliseconds, TEXT, BIGINT 0/1 flags; `{BLOB}` is
//! BLOB on SQLite and BYTEA on PostgreSQL; `{SEQ_KEY}` is a 64-bit primary key that is the row
//! id on SQLite.

use sqlx::Row;

use crate::{Result, Store, StoreError};

const STEPS: &[&str] = &[
    // 1: identities, policies, settings, audit.
    "CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        generation_id TEXT NOT NULL,
        etag TEXT NOT NULL,
        status TEXT NOT NULL,
        status_reason TEXT,
        status_updated_ms BIGINT NOT NULL,
        auth_type TEXT NOT NULL,
        primary_key TEXT,
        secondary_key TEXT,
        primary_thumbprint TEXT,
        secondary_thumbprint TEXT,
        iot_edge BIGINT NOT NULL,
        c2d_count BIGINT NOT NULL,
        last_activity_ms BIGINT NOT NULL
    );
    CREATE TABLE modules (
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL,
        generation_id TEXT NOT NULL,
        etag TEXT NOT NULL,
        managed_by TEXT,
        auth_type TEXT NOT NULL,
        primary_key TEXT,
        secondary_key TEXT,
        primary_thumbprint TEXT,
        secondary_thumbprint TEXT,
        c2d_count BIGINT NOT NULL,
        last_activity_ms BIGINT NOT NULL,
        PRIMARY KEY (device_id, module_id)
    );
    CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        rights TEXT NOT NULL,
        primary_key TEXT NOT NULL,
        secondary_key TEXT NOT NULL
    );
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE audit (
        id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        operation TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_at ON audit (at_ms)",
    // 2: registered CA certificates.
    "CREATE TABLE ca_certificates (
        name TEXT PRIMARY KEY,
        pem TEXT NOT NULL,
        subject TEXT NOT NULL,
        issuer TEXT NOT NULL,
        sha1 TEXT NOT NULL UNIQUE,
        sha256 TEXT NOT NULL UNIQUE,
        not_before_ms BIGINT NOT NULL,
        not_after_ms BIGINT NOT NULL,
        is_verified BIGINT NOT NULL,
        etag TEXT NOT NULL,
        verification_code TEXT,
        code_expires_ms BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    )",
    // 3: the telemetry log.
    "CREATE TABLE telemetry (
        seq BIGINT PRIMARY KEY,
        device_id TEXT NOT NULL,
        module_id TEXT,
        enqueued_ms BIGINT NOT NULL,
        properties TEXT NOT NULL,
        body {BLOB} NOT NULL
    );
    CREATE INDEX telemetry_device ON telemetry (device_id, seq)",
    // 4: the CA a certificateAuthority device last authenticated through.
    "ALTER TABLE devices ADD COLUMN last_ca TEXT;
    ALTER TABLE modules ADD COLUMN last_ca TEXT",
    // 5: twins (module_id '' is the device's own twin), the cloud-to-device queue and its
    // feedback (one record per message at most, under the message's id), and the
    // subscriptions of persistent MQTT sessions (module_id '' for a device's own).
    "CREATE TABLE twins (
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (device_id, module_id)
    );
    CREATE TABLE c2d (
        id BIGINT PRIMARY KEY,
        device_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        properties TEXT NOT NULL,
        body {BLOB} NOT NULL,
        enqueued_ms BIGINT NOT NULL,
        expiry_ms BIGINT NOT NULL,
        delivery_count BIGINT NOT NULL,
        ack TEXT NOT NULL
    );
    CREATE INDEX c2d_device ON c2d (device_id, id);
    CREATE INDEX c2d_expiry ON c2d (expiry_ms);
    CREATE TABLE c2d_counter (n BIGINT NOT NULL);
    INSERT INTO c2d_counter (n) VALUES (0);
    CREATE TABLE c2d_feedback (
        id BIGINT PRIMARY KEY,
        device_id TEXT NOT NULL,
        generation_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        lock_token TEXT,
        lock_until_ms BIGINT NOT NULL
    );
    CREATE INDEX c2d_feedback_created ON c2d_feedback (created_ms);
    CREATE INDEX c2d_feedback_lock ON c2d_feedback (lock_token);
    CREATE TABLE mqtt_sessions (
        device_id TEXT NOT NULL,
        module_id TEXT NOT NULL,
        subscriptions TEXT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (device_id, module_id)
    )",
    // 6: on SQLite, the telemetry sequence number becomes the row id (INTEGER PRIMARY KEY),
    // and the log has no per-device index: one B-tree written per message instead of three.
    // Keeping an index by device cost 40 % of the telemetry writer's throughput (every commit
    // rewrote one index page per active device); a read for one device scans the log from its
    // starting point instead.
    "CREATE TABLE telemetry_v6 (
        seq {SEQ_KEY},
        device_id TEXT NOT NULL,
        module_id TEXT,
        enqueued_ms BIGINT NOT NULL,
        properties TEXT NOT NULL,
        body {BLOB} NOT NULL
    );
    INSERT INTO telemetry_v6 (seq, device_id, module_id, enqueued_ms, properties, body)
        SELECT seq, device_id, module_id, enqueued_ms, properties, body FROM telemetry;
    DROP TABLE telemetry;
    ALTER TABLE telemetry_v6 RENAME TO telemetry",
    // 7: an audit record may stand for identical refused connections that repeated.
    "ALTER TABLE audit ADD COLUMN count BIGINT NOT NULL DEFAULT 1",
    // 8: C2D messages received over HTTPS are locked under a token until completed, rejected,
    // abandoned or the lock runs out.
    "ALTER TABLE c2d ADD COLUMN lock_token TEXT;
     ALTER TABLE c2d ADD COLUMN locked_until_ms BIGINT NOT NULL DEFAULT 0",
    // 9: file uploads (one row per upload a device began, under its correlation id), the
    // notifications of finished uploads waiting for a service, and hub-wide secrets (the key
    // that signs blob tokens).
    "CREATE TABLE file_uploads (
        correlation_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        blob_name TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        size_bytes BIGINT,
        finished_ms BIGINT,
        status_code BIGINT,
        status_description TEXT
    );
    CREATE INDEX file_uploads_device ON file_uploads (device_id, state);
    CREATE INDEX file_uploads_blob ON file_uploads (blob_name, state);
    CREATE TABLE file_notifications (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        delivery_count BIGINT NOT NULL,
        lock_token TEXT,
        lock_until_ms BIGINT NOT NULL
    );
    CREATE INDEX file_notifications_created ON file_notifications (created_ms);
    CREATE INDEX file_notifications_lock ON file_notifications (lock_token)",
    // 10: device provisioning: enrollment groups, individual enrollments and registration
    // states as JSON documents under an ETag (the service API's shapes), and the hubs a
    // registration may be assigned to besides this one.
    "CREATE TABLE dps_enrollment_groups (
        id TEXT PRIMARY KEY,
        doc TEXT NOT NULL,
        etag TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE TABLE dps_enrollments (
        id TEXT PRIMARY KEY,
        doc TEXT NOT NULL,
        etag TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE TABLE dps_registrations (
        id TEXT PRIMARY KEY,
        group_id TEXT NOT NULL,
        assigned_hub TEXT NOT NULL,
        operation_id TEXT NOT NULL,
        doc TEXT NOT NULL,
        etag TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE INDEX dps_registrations_group ON dps_registrations (group_id, id);
    CREATE INDEX dps_registrations_hub ON dps_registrations (assigned_hub);
    CREATE TABLE dps_linked_hubs (
        name TEXT PRIMARY KEY,
        connection_string TEXT NOT NULL,
        server_ca TEXT NOT NULL,
        weight BIGINT NOT NULL,
        apply_allocation BIGINT NOT NULL,
        created_ms BIGINT NOT NULL
    )",
    // 11: just-in-time registration: the verified CAs whose unknown devices are created on
    // their first connection, with the pattern their ids must match.
    "CREATE TABLE ca_jitr (
        name TEXT PRIMARY KEY,
        pattern TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    )",
    // 12: certificate revocation lists of registered CAs (of the CA itself or of an
    // intermediate below it), one per issuer key.
    "CREATE TABLE crls (
        ca TEXT NOT NULL,
        issuer_key TEXT NOT NULL,
        issuer TEXT NOT NULL,
        issuer_chain TEXT NOT NULL,
        der {BLOB} NOT NULL,
        number TEXT NOT NULL,
        this_update_ms BIGINT NOT NULL,
        next_update_ms BIGINT NOT NULL,
        entries BIGINT NOT NULL,
        source TEXT NOT NULL,
        stored_ms BIGINT NOT NULL,
        PRIMARY KEY (ca, issuer_key)
    )",
    // 13: certificates the operator blocks without a CRL, and per device the chain it last
    // authenticated with (the SHA-256 of each certificate below the CA, space-separated) and
    // when its certificate expires, for the blast radius of a block and for expiry.
    "CREATE TABLE certificate_blocks (
        id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        issuer TEXT NOT NULL,
        serial TEXT NOT NULL,
        subject TEXT NOT NULL,
        note TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    ALTER TABLE devices ADD COLUMN last_chain TEXT;
    ALTER TABLE devices ADD COLUMN x509_expires_ms BIGINT;
    ALTER TABLE modules ADD COLUMN last_chain TEXT;
    ALTER TABLE modules ADD COLUMN x509_expires_ms BIGINT;
    ALTER TABLE ca_certificates ADD COLUMN crl_policy TEXT",
    // 14: CRL distribution points learnt from the chains devices present (where to fetch
    // each issuer's CRL), with their fetch schedule and last outcome; per CA, whether the hub
    // fetches them (NULL: the default, yes). The leaves OCSP responders answered revoked, and
    // per CA whether the hub asks OCSP responders (NULL: the default, no). Per identity, the
    // expiry horizon last announced for its certificate (`<expiry ms>:<days>`). The
    // intermediates devices' chains have presented, for their expiry.
    "CREATE TABLE crl_sources (
        ca TEXT NOT NULL,
        issuer_key TEXT NOT NULL,
        url TEXT NOT NULL,
        issuer TEXT NOT NULL,
        issuer_chain TEXT NOT NULL,
        found_ms BIGINT NOT NULL,
        next_fetch_ms BIGINT NOT NULL,
        fetched_ms BIGINT NOT NULL,
        ok_ms BIGINT NOT NULL,
        failures BIGINT NOT NULL,
        error TEXT NOT NULL,
        PRIMARY KEY (ca, issuer_key, url)
    );
    ALTER TABLE ca_certificates ADD COLUMN crl_fetch BIGINT;
    CREATE TABLE ocsp_revocations (
        ca TEXT NOT NULL,
        issuer_key TEXT NOT NULL,
        serial TEXT NOT NULL,
        revoked_ms BIGINT NOT NULL,
        reason BIGINT NOT NULL,
        url TEXT NOT NULL,
        learnt_ms BIGINT NOT NULL,
        PRIMARY KEY (ca, issuer_key, serial)
    );
    ALTER TABLE ca_certificates ADD COLUMN ocsp BIGINT;
    ALTER TABLE devices ADD COLUMN x509_announced TEXT;
    ALTER TABLE modules ADD COLUMN x509_announced TEXT;
    CREATE TABLE intermediates (
        sha256 TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        issuer TEXT NOT NULL,
        not_after_ms BIGINT NOT NULL,
        ca TEXT NOT NULL,
        first_seen_ms BIGINT NOT NULL,
        announced TEXT
    )",
    // 15: which certhub version applied each step, so an older certhub can say which version
    // it needs.
    "ALTER TABLE schema_version ADD COLUMN written_by TEXT",
    // 16: twin queries answered in SQL: the status with the device id (a page of one status
    // in id order), and the twin paths an operator declared indexed (each has an index of its
    // own, named after the path).
    "CREATE INDEX devices_status ON devices (status, device_id);
    CREATE TABLE twin_indexes (
        path TEXT PRIMARY KEY,
        created_ms BIGINT NOT NULL
    )",
    // 17: per-device telemetry reads without an index by device: each message points to the
    // same device's previous one (`prev_seq`, NULL for none), so a read for one device walks
    // its own messages back from the newest. The writer keeps each device's newest message in
    // memory and saves that map now and then (`telemetry_heads`, under a 64-bit hash of the
    // device id, complete up to `telemetry_chain.heads_upto`); chains are complete above
    // `known_from` (messages stored before this step have none, and are scanned).
    "ALTER TABLE telemetry ADD COLUMN prev_seq BIGINT;
    CREATE TABLE telemetry_heads (
        device_hash BIGINT PRIMARY KEY,
        seq BIGINT NOT NULL
    );
    CREATE TABLE telemetry_chain (
        known_from BIGINT NOT NULL,
        heads_upto BIGINT NOT NULL
    );
    INSERT INTO telemetry_chain (known_from, heads_upto)
        SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(seq), 0) FROM telemetry",
    // 18: the telemetry log in segments, each a table of its own (`telemetry_seg_N`, from
    // `first_seq` up to the next segment's), so that the size cap drops the oldest whole; the
    // log so far becomes segment 0. `messages` and `bytes` are counted once a segment is sealed.
    "CREATE TABLE telemetry_segments (
        id BIGINT PRIMARY KEY,
        first_seq BIGINT NOT NULL,
        messages BIGINT,
        bytes BIGINT
    );
    INSERT INTO telemetry_segments (id, first_seq) VALUES (0, 0);
    ALTER TABLE telemetry RENAME TO telemetry_seg_0",
    // 19 (PostgreSQL only): every change of an identity that a connection is checked against
    // is announced on the channel `certhub_identity` (the device id, or device and module
    // ids on two lines), whichever process or statement made it, so that a hub can keep
    // identities in memory and forget each one written (`Store::keep_identities_listening`).
    // The counters the hub writes (last activity, C2D count, certificate bookkeeping) are not
    // announced.
    "--postgres only
    CREATE FUNCTION certhub_identity_written() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_TABLE_NAME = 'modules' THEN
            PERFORM pg_notify('certhub_identity', OLD.device_id || chr(10) || OLD.module_id);
        ELSE
            PERFORM pg_notify('certhub_identity', OLD.device_id);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER devices_identity_written
        AFTER UPDATE OF device_id, generation_id, etag, status, auth_type, primary_key,
            secondary_key, primary_thumbprint, secondary_thumbprint OR DELETE ON devices
        FOR EACH ROW EXECUTE FUNCTION certhub_identity_written();
    CREATE TRIGGER modules_identity_written
        AFTER UPDATE OF device_id, module_id, generation_id, etag, managed_by, auth_type,
            primary_key, secondary_key, primary_thumbprint, secondary_thumbprint OR DELETE
            ON modules
        FOR EACH ROW EXECUTE FUNCTION certhub_identity_written();",
    // 20 (PostgreSQL only): every write of a persistent MQTT session is announced on the
    // channel `certhub_mqtt_session` (the client id: the device id, or device/module), so that
    // a hub without NATS keeps sessions in memory and reads one from the database only when
    // another process may have written it (`Store::keep_identities_listening`).
    "--postgres only
    CREATE FUNCTION certhub_mqtt_session_written() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        r mqtt_sessions;
    BEGIN
        IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
        IF r.module_id = '' THEN
            PERFORM pg_notify('certhub_mqtt_session', r.device_id);
        ELSE
            PERFORM pg_notify('certhub_mqtt_session', r.device_id || '/' || r.module_id);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER mqtt_sessions_written AFTER INSERT OR UPDATE OR DELETE ON mqtt_sessions
        FOR EACH ROW EXECUTE FUNCTION certhub_mqtt_session_written();",
    // 21: twin indexes the hub built on its own, after queries filtering on the path read
    // every twin (`origin` 'auto'; an operator's are 'declared'), and the paths an operator
    // removed an index of, which the hub then never indexes on its own.
    "ALTER TABLE twin_indexes ADD COLUMN origin TEXT NOT NULL DEFAULT 'declared';
    CREATE TABLE twin_index_declined (
        path TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL
    )",
];

/// The first line of a step that runs on PostgreSQL only, whole (SQLite records it as done).
const POSTGRES_ONLY: &str = "--postgres only\n";

/// The schema steps this version knows.
pub(crate) fn known_steps() -> i64 {
    STEPS.len() as i64
}

/// The step that added `schema_version.written_by`.
const WRITTEN_BY_STEP: i64 = 15;

/// Which certhub applied the newest step (fails before step 15).
pub(crate) const WRITTEN_BY: &str = "SELECT written_by FROM schema_version WHERE version = (SELECT MAX(version) FROM schema_version)";

/// The version that wrote a database, as a refusal names it.
pub(crate) fn version_named(written_by: Option<String>) -> String {
    written_by.unwrap_or_else(|| "a newer certhub".into())
}

/// Key of the PostgreSQL advisory lock held while the schema is brought up to date.
const MIGRATION_LOCK: i64 = 0x0063_6572_7468_7562; // "certhub" in ASCII

/// Brings the schema up to date. On PostgreSQL the nodes of a cluster may start together:
/// each takes an advisory lock first, so one migrates and the others wait, then find nothing
/// left to do (without it, two `CREATE TABLE`s of one step race and a node fails to start).
pub(crate) async fn migrate(store: &Store) -> Result<()> {
    let mut conn = store.pool().acquire().await?;
    let postgres = store.backend() == crate::Backend::Postgres;
    if postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    let result = migrate_on(store, &mut conn).await;
    if postgres {
        // Ends with the session anyway; unlocking returns the connection to the pool clean.
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            conn.close_on_drop();
        }
    }
    result
}

async fn migrate_on(store: &Store, conn: &mut sqlx::AnyConnection) -> Result<()> {
    let postgres = store.backend() == crate::Backend::Postgres;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .execute(&mut *conn)
        .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        .fetch_one(&mut *conn)
        .await?
        .try_get("v")?;
    let known = STEPS.len() as i64;
    if current > known {
        let written_by = sqlx::query_scalar::<_, Option<String>>(WRITTEN_BY)
            .fetch_one(&mut *conn)
            .await;
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
            written_by: version_named(written_by.ok().flatten()),
        });
    }
    for (i, step) in STEPS.iter().enumerate().skip(current as usize) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // A PostgreSQL-only step runs whole (its function bodies hold semicolons).
        let step = match step.strip_prefix(POSTGRES_ONLY) {
            Some(body) => {
                if postgres {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(body.to_string()))
                        .execute(&mut *tx)
                        .await?;
                }
                ""
            }
            None => *step,
        };
        for statement in step.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (blob, seq_key) = match store.backend() {
                crate::Backend::Sqlite => ("BLOB", "INTEGER PRIMARY KEY"),
                crate::Backend::Postgres => ("BYTEA", "BIGINT PRIMARY KEY"),
            };
            let statement = statement
                .replace("{BLOB}", blob)
                .replace("{SEQ_KEY}", seq_key);
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    if known >= WRITTEN_BY_STEP && current < known {
        sqlx::query("UPDATE schema_version SET written_by = $1 WHERE written_by IS NULL")
            .bind(concat!("certhub ", env!("CARGO_PKG_VERSION")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
