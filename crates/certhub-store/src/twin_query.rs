//! Twin queries answered in SQL: the part of a query's `WHERE` that the database can decide
//! (device ids, status, and typed values at paths inside the stored twin) becomes SQL, with
//! indexes on the device id, the status and the twin paths an operator declared
//! ([`Store::add_twin_index`]).
//!
//! Every condition here is exact under IoT Hub's semantics, type included: `tags.site = 'a'`
//! holds only for the JSON string `"a"`, `tags.floor < 8` only for numbers, and a missing path
//! satisfies nothing. Each JSON condition is written as the value's JSON type and the value
//! (`json_type` and `json_extract` on SQLite, `jsonb_typeof` and `#>` on PostgreSQL), which is
//! what a declared index holds, followed by the module id and the device id, so an equality's
//! matches come out of the index in device id order, a page at a time.

use sqlx::Row;
use sqlx::any::AnyRow;

use certhub_core::Device;

use crate::devices::device_from_row;
use crate::{Backend, Result, Store, StoreError, TwinRecord};

/// A twin path under the stored state (`TwinState`'s JSON): `["tags", "site"]`,
/// `["reported", "values", "temp"]`. Segments are ASCII letters, digits and `_`, and do not
/// start with a digit (checked by [`JsonPath::new`]), so they are written into SQL as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    /// The path, if every segment is a plain identifier and there are at most 16.
    pub fn new(segments: Vec<String>) -> Option<Self> {
        let plain = |s: &String| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        (!segments.is_empty() && segments.len() <= 16 && segments.iter().all(plain))
            .then_some(Self(segments))
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The JSON value's type, or NULL where the path is missing (or the twin is).
    fn type_sql(&self, backend: Backend, table: &str) -> String {
        match backend {
            Backend::Sqlite => format!("json_type({table}state, '$.{}')", self.0.join(".")),
            Backend::Postgres => format!("jsonb_typeof({})", self.value_sql(backend, table)),
        }
    }

    /// The value: an SQL scalar on SQLite (booleans as 1 and 0, so conditions check the type
    /// too), a jsonb on PostgreSQL.
    fn value_sql(&self, backend: Backend, table: &str) -> String {
        match backend {
            Backend::Sqlite => format!("json_extract({table}state, '$.{}')", self.0.join(".")),
            Backend::Postgres => {
                format!(
                    "(CAST({table}state AS jsonb) #> '{{{}}}')",
                    self.0.join(",")
                )
            }
        }
    }
}

/// What a condition reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// `deviceId` (the primary key).
    DeviceId,
    /// `status` (`enabled` or `disabled`).
    Status,
    /// A value inside the stored twin.
    Json(JsonPath),
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    /// A number whose magnitude is below 2^53 (so SQL's exact comparisons agree with
    /// IoT Hub's floating-point ones).
    Number(serde_json::Number),
    Bool(bool),
    Null,
}

impl Scalar {
    /// A JSON scalar that compares the same in SQL as in IoT Hub: strings, booleans, null,
    /// and numbers of magnitude below 2^53.
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        const LIMIT: f64 = 9_007_199_254_740_992.0;
        match value {
            serde_json::Value::String(s) => Some(Self::Str(s.clone())),
            serde_json::Value::Bool(b) => Some(Self::Bool(*b)),
            serde_json::Value::Null => Some(Self::Null),
            serde_json::Value::Number(n) => n
                .as_f64()
                .is_some_and(|f| f.abs() < LIMIT)
                .then(|| Self::Number(n.clone())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// A JSON type, for `IS_DEFINED`, `IS_NULL`, `IS_STRING`...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Defined,
    Null,
    String,
    Number,
    Bool,
    Object,
}

/// A condition the database decides exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Compare(Field, Op, Scalar),
    /// The field holds a string starting with this.
    Prefix(Field, String),
    Is(Field, Kind),
}

impl Pred {
    /// Whether every row it holds for has a twin stored (so the twins table can lead).
    fn needs_twin(&self) -> bool {
        match self {
            Self::And(terms) => terms.iter().any(Self::needs_twin),
            Self::Or(terms) => !terms.is_empty() && terms.iter().all(Self::needs_twin),
            Self::Compare(f, ..) | Self::Prefix(f, _) | Self::Is(f, _) => {
                matches!(f, Field::Json(_))
            }
        }
    }

    fn reads_twin(&self) -> bool {
        match self {
            Self::And(terms) | Self::Or(terms) => terms.iter().any(Self::reads_twin),
            Self::Compare(f, ..) | Self::Prefix(f, _) | Self::Is(f, _) => {
                matches!(f, Field::Json(_))
            }
        }
    }

    fn reads_device(&self) -> bool {
        match self {
            Self::And(terms) | Self::Or(terms) => terms.iter().any(Self::reads_device),
            Self::Compare(f, ..) | Self::Prefix(f, _) | Self::Is(f, _) => {
                !matches!(f, Field::Json(_))
            }
        }
    }

    /// The twin paths it reads, each once, in the order they first appear.
    pub fn json_paths(&self) -> Vec<&JsonPath> {
        let mut out: Vec<&JsonPath> = Vec::new();
        self.collect_paths(&mut out);
        out
    }

    fn collect_paths<'a>(&'a self, out: &mut Vec<&'a JsonPath>) {
        match self {
            Self::And(terms) | Self::Or(terms) => {
                for t in terms {
                    t.collect_paths(out);
                }
            }
            Self::Compare(Field::Json(p), ..)
            | Self::Prefix(Field::Json(p), _)
            | Self::Is(Field::Json(p), _) => {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            Self::Compare(..) | Self::Prefix(..) | Self::Is(..) => {}
        }
    }

    /// Whether an index serves it: the device id and status always, a twin path when
    /// `indexed` says so; an `AND` when one of its terms is, an `OR` when all are.
    pub fn indexed(&self, indexed: &dyn Fn(&JsonPath) -> bool) -> bool {
        self.served(indexed, false)
    }

    /// Whether an index gives its matches in device id order: an equality (on the device id,
    /// the status or an indexed path, to anything but a number), alone or in an `AND`. A range,
    /// `IN`, `OR` or number makes the database sort the matches for a page.
    pub fn index_ordered(&self, indexed: &dyn Fn(&JsonPath) -> bool) -> bool {
        self.served(indexed, true)
    }

    fn served(&self, indexed: &dyn Fn(&JsonPath) -> bool, ordered: bool) -> bool {
        if ordered {
            return match self {
                Self::And(terms) => terms.iter().any(|t| t.served(indexed, true)),
                Self::Compare(f, Op::Eq, value) => match f {
                    Field::DeviceId | Field::Status => true,
                    // A number is two index ranges on SQLite (integer and real): sorted.
                    Field::Json(p) => indexed(p) && !matches!(value, Scalar::Number(_)),
                },
                _ => false,
            };
        }
        match self {
            Self::And(terms) => terms.iter().any(|t| t.served(indexed, false)),
            Self::Or(terms) => !terms.is_empty() && terms.iter().all(|t| t.served(indexed, false)),
            Self::Compare(f, ..) | Self::Prefix(f, _) | Self::Is(f, _) => match f {
                Field::DeviceId | Field::Status => !matches!(self, Self::Is(..)),
                Field::Json(p) => indexed(p),
            },
        }
    }
}

/// A bound value.
enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

/// SQL text with its binds, built for one backend.
struct Sql<'s> {
    store: &'s Store,
    text: String,
    binds: Vec<Bind>,
}

impl<'s> Sql<'s> {
    fn new(store: &'s Store) -> Self {
        Self {
            store,
            text: String::new(),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn bind(&mut self, b: Bind) {
        self.binds.push(b);
        let p = self.store.placeholder(self.binds.len());
        self.text.push_str(&p);
    }

    /// A bound JSON value: a jsonb on PostgreSQL, an SQL scalar on SQLite.
    fn bind_json(&mut self, value: &Scalar) {
        match (self.store.backend(), value) {
            (Backend::Postgres, v) => {
                let json = match v {
                    Scalar::Str(s) => serde_json::Value::String(s.clone()),
                    Scalar::Number(n) => serde_json::Value::Number(n.clone()),
                    Scalar::Bool(b) => serde_json::Value::Bool(*b),
                    Scalar::Null => serde_json::Value::Null,
                };
                self.push("CAST(");
                self.bind(Bind::Text(json.to_string()));
                self.push(" AS jsonb)");
            }
            (Backend::Sqlite, Scalar::Str(s)) => self.bind(Bind::Text(s.clone())),
            (Backend::Sqlite, Scalar::Number(n)) => match n.as_i64() {
                Some(i) => self.bind(Bind::Int(i)),
                None => self.bind(Bind::Float(n.as_f64().unwrap_or(f64::NAN))),
            },
            (Backend::Sqlite, Scalar::Bool(b)) => self.bind(Bind::Int(i64::from(*b))),
            (Backend::Sqlite, Scalar::Null) => self.push("NULL"),
        }
    }

    /// Segments are plain identifiers ([`JsonPath::new`]), type names are constants and every
    /// value is bound.
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.text.clone()));
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.clone()),
                Bind::Int(i) => q.bind(*i),
                Bind::Float(f) => q.bind(*f),
            };
        }
        q
    }

    /// The condition, exact for IoT Hub's semantics.
    fn pred(&mut self, p: &Pred) {
        match p {
            Pred::And(terms) | Pred::Or(terms) if terms.is_empty() => {
                self.push(if matches!(p, Pred::And(_)) {
                    "1 = 1"
                } else {
                    "1 = 0"
                })
            }
            Pred::And(terms) | Pred::Or(terms) => {
                let joiner = if matches!(p, Pred::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                self.push("(");
                for (i, t) in terms.iter().enumerate() {
                    if i > 0 {
                        self.push(joiner);
                    }
                    self.pred(t);
                }
                self.push(")");
            }
            Pred::Compare(Field::DeviceId, op, value) => self.column("d.device_id", *op, value),
            Pred::Compare(Field::Status, op, value) => self.column("d.status", *op, value),
            Pred::Compare(Field::Json(path), op, value) => self.json(path, *op, value),
            Pred::Prefix(field, prefix) => self.prefix(field, prefix),
            Pred::Is(field, kind) => self.is(field, *kind),
        }
    }

    /// A text column: only strings compare with it.
    fn column(&mut self, column: &str, op: Op, value: &Scalar) {
        match value {
            Scalar::Str(s) => {
                self.push(&format!("{column} {} ", op.sql()));
                self.bind(Bind::Text(s.clone()));
            }
            // A string equals no number, boolean or null, and orders against none.
            _ => self.push("1 = 0"),
        }
    }

    /// The names the database's JSON type function gives values of `kind`.
    fn kind_types(&self, kind: Kind) -> &'static [&'static str] {
        let sqlite = self.store.backend() == Backend::Sqlite;
        match kind {
            Kind::Defined => &[],
            Kind::Null => &["null"],
            Kind::String if sqlite => &["text"],
            Kind::String => &["string"],
            Kind::Number if sqlite => &["integer", "real"],
            Kind::Number => &["number"],
            Kind::Bool if sqlite => &["true", "false"],
            Kind::Bool => &["boolean"],
            Kind::Object => &["object"],
        }
    }

    /// The type names a JSON scalar can have here (SQLite tells true from false by type).
    fn types(&self, value: &Scalar) -> &'static [&'static str] {
        match (self.store.backend(), value) {
            (_, Scalar::Str(_)) => self.kind_types(Kind::String),
            (_, Scalar::Number(_)) => self.kind_types(Kind::Number),
            (Backend::Sqlite, Scalar::Bool(true)) => &["true"],
            (Backend::Sqlite, Scalar::Bool(false)) => &["false"],
            (Backend::Postgres, Scalar::Bool(_)) => self.kind_types(Kind::Bool),
            (_, Scalar::Null) => self.kind_types(Kind::Null),
        }
    }

    fn type_in(&mut self, path: &JsonPath, types: &[&str]) {
        let t = path.type_sql(self.store.backend(), "t.");
        match types {
            [one] => self.push(&format!("{t} = '{one}'")),
            _ => {
                let list: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
                self.push(&format!("{t} IN ({})", list.join(", ")));
            }
        }
    }

    fn json(&mut self, path: &JsonPath, op: Op, value: &Scalar) {
        let backend = self.store.backend();
        let orders = matches!(value, Scalar::Str(_) | Scalar::Number(_));
        if op != Op::Eq && !orders {
            // Booleans and null have no order.
            self.push("1 = 0");
            return;
        }
        self.push("(");
        self.type_in(path, self.types(value));
        let by_type_alone = backend == Backend::Sqlite && matches!(value, Scalar::Bool(_))
            || matches!(value, Scalar::Null);
        if !by_type_alone {
            self.push(&format!(
                " AND {} {} ",
                path.value_sql(backend, "t."),
                op.sql()
            ));
            self.bind_json(value);
        }
        self.push(")");
    }

    fn prefix(&mut self, field: &Field, prefix: &str) {
        // Strings starting with `prefix` are exactly those from `prefix` up to (not including)
        // the prefix with its last character raised by one: UTF-8 bytes order as code points.
        let mut upper: Vec<char> = prefix.chars().collect();
        let raised = upper
            .pop()
            .and_then(|c| char::from_u32(u32::from(c) + 1))
            .map(|c| {
                upper.push(c);
                upper.into_iter().collect::<String>()
            });
        let Some(upper) = raised else {
            // An empty prefix: any string.
            match field {
                Field::Json(path) => self.type_in(path, self.types(&Scalar::Str(String::new()))),
                _ => self.push("1 = 1"),
            }
            return;
        };
        let lower = Scalar::Str(prefix.to_string());
        let upper = Scalar::Str(upper);
        let terms = vec![
            Pred::Compare(field.clone(), Op::Ge, lower),
            Pred::Compare(field.clone(), Op::Lt, upper),
        ];
        self.pred(&Pred::And(terms));
    }

    fn is(&mut self, field: &Field, kind: Kind) {
        let path = match field {
            Field::Json(path) => path,
            // The device id and status are always defined strings.
            _ => {
                let holds = matches!(kind, Kind::Defined | Kind::String);
                self.push(if holds { "1 = 1" } else { "1 = 0" });
                return;
            }
        };
        match kind {
            Kind::Defined => {
                let t = path.type_sql(self.store.backend(), "t.");
                self.push(&format!("{t} IS NOT NULL"));
            }
            _ => self.type_in(path, self.kind_types(kind)),
        }
    }
}

/// A device found by a query, with its stored twin (None: never written).
pub type DeviceWithTwin = (Device, Option<TwinRecord>);

/// A declared twin index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinIndex {
    /// The path under the stored twin (`tags.site`, `reported.values.temp`).
    pub path: JsonPath,
    /// The database index's name.
    pub name: String,
    pub created_ms: i64,
    /// Built by the hub on its own (queries on the path kept reading every twin), not
    /// declared by an operator.
    pub auto: bool,
}

/// At most this many declared twin indexes: each one costs every twin write.
pub const MAX_TWIN_INDEXES: usize = 32;

/// The database index of a path: a name that no path's punctuation can make collide (FNV-1a of
/// the dotted path; stable across versions, as databases keep it).
fn index_name(path: &JsonPath) -> String {
    let hash = crate::fnv1a(path.0.join(".").as_bytes());
    format!("twin_ix_{hash:016x}")
}

impl Store {
    /// Whether the database orders text by its UTF-8 bytes (IoT Hub's string order), so string
    /// ranges can be answered in SQL. SQLite's default collation does; PostgreSQL's does under
    /// the C, POSIX and C.UTF-8 collations. Learnt when the store opens.
    pub fn text_orders_bytewise(&self) -> bool {
        self.bytewise_text
    }

    /// Asks PostgreSQL for the database's collation (SQLite always orders by bytes).
    pub(crate) async fn learn_text_order(&mut self) -> Result<()> {
        if self.backend() == Backend::Postgres {
            let row = sqlx::query(
                "SELECT datcollate FROM pg_database WHERE datname = current_database()",
            )
            .fetch_one(self.reader())
            .await?;
            let collate: String = row.try_get("datcollate")?;
            self.bytewise_text = matches!(
                collate.as_str(),
                "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "ucs_basic"
            );
        }
        Ok(())
    }

    /// The id of the `n`th device (1-based) after `after`, in id order, if there are that
    /// many: where a scan that reads at most `n` devices ends.
    pub async fn nth_device_after(&self, after: &str, n: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT device_id FROM devices WHERE device_id > $1 \
             ORDER BY device_id LIMIT 1 OFFSET $2",
        )
        .bind(after.to_string())
        .bind(n.saturating_sub(1).max(0))
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|r| r.try_get("device_id")).transpose()?)
    }

    /// Devices matching `pred` whose ids sort after `after` (and not after `upto`, if given),
    /// in id order, at most `limit`, each with its stored twin. With `by_key`, SQLite walks
    /// the primary key in order rather than whatever index the planner prefers (for a page of
    /// dense matches that an unordered index would make it sort).
    pub async fn devices_where(
        &self,
        pred: &Pred,
        after: &str,
        upto: Option<&str>,
        limit: i64,
        by_key: bool,
    ) -> Result<Vec<DeviceWithTwin>> {
        let sql = self.page_sql(pred, after, upto, limit, by_key, "");
        let rows = sql.query().fetch_all(self.reader()).await?;
        rows.iter().map(device_with_twin).collect()
    }

    /// The statement [`Store::devices_where`] runs, after `prefix` (e.g. `EXPLAIN `).
    fn page_sql(
        &self,
        pred: &Pred,
        after: &str,
        upto: Option<&str>,
        limit: i64,
        by_key: bool,
        prefix: &str,
    ) -> Sql<'_> {
        let sqlite = self.backend() == Backend::Sqlite;
        let mut sql = Sql::new(self);
        sql.push(prefix);
        let key = if pred.needs_twin() { "t" } else { "d" };
        if pred.needs_twin() {
            // The twins lead (on SQLite, CROSS JOIN fixes the order): their index, or their
            // key in device id order; led by the devices' status index instead, SQLite would
            // sort every enabled device for a page.
            sql.push(&format!(
                "SELECT d.*, t.version AS twin_version, t.state AS twin_state \
                 FROM twins t{} {} devices d ON d.device_id = t.device_id \
                 WHERE t.module_id = '' AND t.device_id > ",
                if sqlite && by_key {
                    " INDEXED BY sqlite_autoindex_twins_1"
                } else {
                    ""
                },
                if sqlite { "CROSS JOIN" } else { "JOIN" },
            ));
        } else {
            sql.push(&format!(
                "SELECT d.*, t.version AS twin_version, t.state AS twin_state \
                 FROM devices d{} LEFT JOIN twins t \
                 ON t.device_id = d.device_id AND t.module_id = '' \
                 WHERE d.device_id > ",
                if sqlite && by_key {
                    " INDEXED BY sqlite_autoindex_devices_1"
                } else {
                    ""
                },
            ));
        }
        sql.bind(Bind::Text(after.to_string()));
        if let Some(upto) = upto {
            sql.push(&format!(" AND {key}.device_id <= "));
            sql.bind(Bind::Text(upto.to_string()));
        }
        sql.push(" AND ");
        sql.pred(pred);
        sql.push(&format!(" ORDER BY {key}.device_id LIMIT "));
        sql.bind(Bind::Int(limit));
        sql
    }

    /// The devices of `ids` that exist, in id order, each with its stored twin (for a query
    /// that knows its candidates, as `connectionState = 'Connected'` does).
    pub async fn devices_with_twins(&self, ids: &[String]) -> Result<Vec<DeviceWithTwin>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(self);
        sql.push(
            "SELECT d.*, t.version AS twin_version, t.state AS twin_state \
             FROM devices d LEFT JOIN twins t \
             ON t.device_id = d.device_id AND t.module_id = '' \
             WHERE d.device_id IN (",
        );
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(Bind::Text(id.clone()));
        }
        sql.push(") ORDER BY d.device_id");
        // Not kept prepared: each length of the list would be a statement of its own in the
        // connection's cache.
        let rows = sql
            .query()
            .persistent(false)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(device_with_twin).collect()
    }

    /// How many devices match `pred` (all of them for None).
    pub async fn count_devices_where(&self, pred: Option<&Pred>) -> Result<u64> {
        let mut sql = Sql::new(self);
        match pred {
            None => sql.push("SELECT COUNT(*) AS n FROM devices d"),
            Some(p) if p.needs_twin() && !p.reads_device() => {
                sql.push("SELECT COUNT(*) AS n FROM twins t WHERE t.module_id = '' AND ");
                sql.pred(p);
            }
            Some(p) if p.needs_twin() => {
                sql.push(
                    "SELECT COUNT(*) AS n FROM twins t JOIN devices d \
                     ON d.device_id = t.device_id WHERE t.module_id = '' AND ",
                );
                sql.pred(p);
            }
            Some(p) if p.reads_twin() => {
                sql.push(
                    "SELECT COUNT(*) AS n FROM devices d LEFT JOIN twins t \
                     ON t.device_id = d.device_id AND t.module_id = '' WHERE ",
                );
                sql.pred(p);
            }
            Some(p) => {
                sql.push("SELECT COUNT(*) AS n FROM devices d WHERE ");
                sql.pred(p);
            }
        }
        let row = sql.query().fetch_one(self.reader()).await?;
        let n: i64 = row.try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The declared twin indexes.
    pub async fn twin_indexes(&self) -> Result<Vec<TwinIndex>> {
        let rows = sqlx::query("SELECT path, created_ms, origin FROM twin_indexes ORDER BY path")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| {
                let path: String = r.try_get("path")?;
                let path = JsonPath::new(path.split('.').map(str::to_string).collect())
                    .ok_or_else(|| StoreError::Corrupt(format!("twin index path {path:?}")))?;
                Ok(TwinIndex {
                    name: index_name(&path),
                    path,
                    created_ms: r.try_get("created_ms")?,
                    auto: r.try_get::<String, _>("origin")? == "auto",
                })
            })
            .collect()
    }

    /// Declares an index on a twin path and builds it (which reads every twin once). Returns
    /// false when it was declared already (it is built again if a crash came between the
    /// index and its record). The caller keeps to [`MAX_TWIN_INDEXES`]. `auto`: the hub
    /// builds it on its own; an operator's declaration (`auto` false) makes one the hub built
    /// the operator's, and lets the hub index the path on its own again after a removal.
    pub async fn add_twin_index(&self, path: &JsonPath, now_ms: i64, auto: bool) -> Result<bool> {
        self.build_twin_index(path).await?;
        let dotted = path.0.join(".");
        let created = sqlx::query(
            "INSERT INTO twin_indexes (path, created_ms, origin) VALUES ($1, $2, $3) \
             ON CONFLICT (path) DO NOTHING",
        )
        .bind(dotted.as_str())
        .bind(now_ms)
        .bind(if auto { "auto" } else { "declared" })
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        if !auto {
            sqlx::query("UPDATE twin_indexes SET origin = 'declared' WHERE path = $1")
                .bind(dotted.as_str())
                .execute(self.pool())
                .await?;
            sqlx::query("DELETE FROM twin_index_declined WHERE path = $1")
                .bind(dotted.as_str())
                .execute(self.pool())
                .await?;
        }
        Ok(created)
    }

    /// Whether an operator removed an index of this path (and did not declare it since): the
    /// hub does not index it on its own.
    pub async fn twin_index_declined(&self, path: &JsonPath) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM twin_index_declined WHERE path = $1")
            .bind(path.0.join("."))
            .fetch_one(self.reader())
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    async fn build_twin_index(&self, path: &JsonPath) -> Result<()> {
        let backend = self.backend();
        // PostgreSQL builds it beside the writes (CONCURRENTLY); SQLite holds its one writer
        // until it is built.
        let sql = format!(
            "CREATE INDEX {}IF NOT EXISTS {} ON twins ({}, {}, module_id, device_id)",
            if backend == Backend::Postgres {
                "CONCURRENTLY "
            } else {
                ""
            },
            index_name(path),
            path.type_sql(backend, ""),
            path.value_sql(backend, ""),
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(self.pool())
            .await?;
        if backend == Backend::Postgres {
            // PostgreSQL keeps statistics of an index's expressions only once the table is
            // analyzed, and building an index does not analyze it (nor does autovacuum until
            // a tenth of the twins change): until then the planner guesses how many twins a
            // condition on the new path matches. At 1 000 000 twins a range page took 32 ms
            // at the median before and 7 ms after (docs/performance.md).
            sqlx::query("ANALYZE twins").execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Drops a declared twin index; false if there was none. A path whose index an operator
    /// removed is one the hub does not index on its own afterwards (until it is declared
    /// again).
    pub async fn remove_twin_index(&self, path: &JsonPath, now_ms: i64) -> Result<bool> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP INDEX IF EXISTS {}",
            index_name(path)
        )))
        .execute(self.pool())
        .await?;
        let dotted = path.0.join(".");
        let done = sqlx::query("DELETE FROM twin_indexes WHERE path = $1")
            .bind(dotted.as_str())
            .execute(self.pool())
            .await?;
        let removed = done.rows_affected() > 0;
        if removed {
            sqlx::query(
                "INSERT INTO twin_index_declined (path, at_ms) VALUES ($1, $2) \
                 ON CONFLICT (path) DO UPDATE SET at_ms = excluded.at_ms",
            )
            .bind(dotted.as_str())
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        }
        Ok(removed)
    }

    /// The plan the database chose for a page of `pred` (SQLite's `EXPLAIN QUERY PLAN`,
    /// PostgreSQL's `EXPLAIN`), one line per step: for tests and for operators asking why.
    pub async fn explain_devices_where(&self, pred: &Pred) -> Result<Vec<String>> {
        let explain = match self.backend() {
            Backend::Sqlite => "EXPLAIN QUERY PLAN ",
            Backend::Postgres => "EXPLAIN ",
        };
        let sql = self.page_sql(pred, "", None, 100, false, explain);
        let rows = sql.query().fetch_all(self.reader()).await?;
        rows.iter()
            .map(|r| {
                let col = match self.backend() {
                    Backend::Sqlite => "detail",
                    Backend::Postgres => "QUERY PLAN",
                };
                Ok(r.try_get::<String, _>(col)?)
            })
            .collect()
    }
}

fn device_with_twin(row: &AnyRow) -> Result<DeviceWithTwin> {
    let device = device_from_row(row)?;
    let version: Option<i64> = row.try_get("twin_version")?;
    let state: Option<String> = row.try_get("twin_state")?;
    let twin = match (version, state) {
        (Some(version), Some(state)) => Some(TwinRecord { version, state }),
        _ => None,
    };
    Ok((device, twin))
}
