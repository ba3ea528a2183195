//! Twin queries answered in SQL give exactly the answers of evaluating the query on every twin:
//! the same rows, in the same pages, and the same counts, on SQLite and (when it is reachable,
//! as on CI) PostgreSQL, with and without declared indexes. The twins hold each JSON type at
//! the queried paths (strings, integers, decimals, booleans, null, objects, arrays, nothing),
//! so a condition that forgot a type would show here.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use certhub_core::{DeviceId, DeviceInput, sign_token};
use certhub_server::{AppState, router};
use certhub_store::{Store, TwinRecord};
use certhub_twin::TwinState;
use serde_json::{Value, json};
use tower::ServiceExt;

const DEVICES: usize = 90;

/// The tag `site` of device `i`: every JSON type, some sites shared.
fn site(i: usize) -> Option<Value> {
    Some(match i % 12 {
        0..=3 => json!(format!("plant-{}", i % 4)),
        4 => json!(4),
        5 => json!(true),
        6 => Value::Null,
        7 => json!({"name": "plant-1"}),
        8 => json!(["plant-1"]),
        9 => json!("plant-10"),
        10 => json!("Plant-1"),
        _ => return None,
    })
}

fn floor(i: usize) -> Option<Value> {
    Some(match i % 9 {
        0..=4 => json!(i % 10),
        5 => json!(7.5),
        6 => json!("7"),
        7 => json!(false),
        _ => return None,
    })
}

struct Hub {
    state: AppState,
    owner: String,
}

impl Hub {
    async fn new(store: Store) -> Self {
        let state = AppState::new(store, vec!["localhost".into()])
            .await
            .expect("state");
        let p = state
            .policies()
            .into_iter()
            .find(|p| p.name == "iothubowner")
            .expect("owner");
        let owner = sign_token(
            "localhost",
            &p.primary_key,
            Some("iothubowner"),
            time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
        );
        Self { state, owner }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", &self.owner)
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let resp = router(self.state.clone())
            .oneshot(req.body(Body::from(body)).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The first page of a query (which must succeed) and its headers.
    async fn one_page(&self, query: &str) -> (Value, axum::http::HeaderMap) {
        let (status, headers, body) = self
            .call(
                "POST",
                "/devices/query",
                &[],
                Some(json!({ "query": query })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        (body, headers)
    }

    /// Every row of a query, page by page (7 at a time); and the plan header of the first.
    async fn all_pages(&self, query: &str) -> (Vec<Value>, String) {
        let (rows, plans) = self.pages_of(query, 7).await;
        (rows, plans.into_iter().next().unwrap_or_default())
    }

    /// Every row of a query, `size` rows a page at most; and each page's plan header.
    async fn pages_of(&self, query: &str, size: usize) -> (Vec<Value>, Vec<String>) {
        let mut rows = Vec::new();
        let mut continuation: Option<String> = None;
        let mut plans = Vec::new();
        let size_header = size.to_string();
        for _ in 0..100 {
            let mut headers = vec![("x-ms-max-item-count", size_header.as_str())];
            if let Some(c) = &continuation {
                headers.push(("x-ms-continuation", c.as_str()));
            }
            let (status, h, body) = self
                .call(
                    "POST",
                    "/devices/query",
                    &headers,
                    Some(json!({ "query": query })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            plans.push(
                h["x-certhub-query-plan"]
                    .to_str()
                    .expect("plan")
                    .to_string(),
            );
            let page = body.as_array().expect("rows").clone();
            assert!(page.len() <= size, "{query}: a page of {}", page.len());
            rows.extend(page);
            match h.get("x-ms-continuation") {
                Some(c) => continuation = Some(c.to_str().expect("token").to_string()),
                None => return (rows, plans),
            }
        }
        panic!("{query}: more than 100 pages");
    }
}

async fn populate(hub: &Hub) {
    let store = hub.state.store();
    let now = "2026-12-06T00:00:00Z";
    for i in 0..DEVICES {
        let id = DeviceId::new(format!("q{i:03}")).expect("id");
        let status = if i % 7 == 0 { "disabled" } else { "enabled" };
        let device = serde_json::from_value::<DeviceInput>(json!({ "status": status }))
            .expect("input")
            .into_device(&id, None, 1_000)
            .expect("device");
        store.create_device(&device).await.expect("create");
        if i % 10 == 9 {
            continue; // no twin stored
        }
        let mut tags = serde_json::Map::new();
        if let Some(s) = site(i) {
            tags.insert("site".into(), s);
        }
        if let Some(f) = floor(i) {
            tags.insert("floor".into(), f);
        }
        tags.insert("loc".into(), json!({ "region": format!("r{}", i % 3) }));
        let mut twin = TwinState::new(now);
        twin.patch_tags(&Value::Object(tags)).expect("tags");
        twin.patch_desired(
            &json!({ "mode": if i % 2 == 0 { "eco" } else { "fast" } }),
            now,
        )
        .expect("desired");
        twin.patch_reported(
            &json!({ "temp": (i as f64) / 4.0, "fw": format!("1.{}", i % 5) }),
            now,
        )
        .expect("reported");
        let record = TwinRecord {
            version: twin.version(),
            state: serde_json::to_string(&twin).expect("json"),
        };
        assert!(
            store
                .write_twin(id.as_str(), None, None, &record)
                .await
                .expect("twin")
        );
    }
}

const QUERIES: &[&str] = &[
    "SELECT * FROM devices",
    "SELECT * FROM devices WHERE deviceId = 'q042'",
    "SELECT * FROM devices WHERE deviceId IN ['q001', 'q050', 'nope']",
    "SELECT * FROM devices WHERE deviceId >= 'q080'",
    "SELECT * FROM devices WHERE deviceId < 'q010' OR deviceId > 'q085'",
    "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'q03')",
    "SELECT * FROM devices WHERE deviceId = 5",
    "SELECT * FROM devices WHERE status = 'disabled'",
    "SELECT * FROM devices WHERE status = 'disabled' AND tags.site = 'plant-0'",
    "SELECT * FROM devices WHERE status = 'disabled' OR tags.site = 'plant-1'",
    "SELECT * FROM devices WHERE tags.site = 'plant-1'",
    "SELECT * FROM devices WHERE tags.site = \"plant-1\" AND tags.floor >= 2",
    "SELECT * FROM devices WHERE tags.site = 4",
    "SELECT * FROM devices WHERE tags.site = 4.0",
    "SELECT * FROM devices WHERE tags.site = true",
    "SELECT * FROM devices WHERE tags.site = null",
    "SELECT * FROM devices WHERE tags.site IN ['plant-1', 4, true, null]",
    "SELECT * FROM devices WHERE tags.site > 'plant-1'",
    "SELECT * FROM devices WHERE tags.site < 'plant-2'",
    "SELECT * FROM devices WHERE STARTSWITH(tags.site, 'plant-1')",
    "SELECT * FROM devices WHERE STARTSWITH(tags.site, '')",
    "SELECT * FROM devices WHERE tags.floor = 7",
    "SELECT * FROM devices WHERE tags.floor = 7.5 OR tags.floor = '7'",
    "SELECT * FROM devices WHERE tags.floor >= 3 AND tags.floor < 7.5",
    "SELECT * FROM devices WHERE tags.floor > 4",
    "SELECT * FROM devices WHERE 4 < tags.floor",
    "SELECT * FROM devices WHERE tags.floor = false",
    "SELECT * FROM devices WHERE tags.floor < true",
    "SELECT * FROM devices WHERE tags.loc.region = 'r2'",
    "SELECT * FROM devices WHERE tags.loc = 'r2'",
    "SELECT * FROM devices WHERE IS_DEFINED(tags.site)",
    "SELECT * FROM devices WHERE IS_NULL(tags.site)",
    "SELECT * FROM devices WHERE IS_STRING(tags.floor)",
    "SELECT * FROM devices WHERE IS_NUMBER(tags.floor)",
    "SELECT * FROM devices WHERE IS_BOOL(tags.site)",
    "SELECT * FROM devices WHERE IS_OBJECT(tags.site)",
    "SELECT * FROM devices WHERE IS_DEFINED(deviceId) AND NOT IS_STRING(status)",
    "SELECT * FROM devices WHERE properties.desired.mode = 'eco'",
    "SELECT * FROM devices WHERE properties.reported.temp >= 10.25",
    "SELECT * FROM devices WHERE properties.reported.fw = '1.3' AND status = 'enabled'",
    "SELECT * FROM devices WHERE tags.site = 'plant-1' AND NOT tags.floor = 1",
    "SELECT * FROM devices WHERE tags.site != 'plant-1'",
    "SELECT * FROM devices WHERE ENDSWITH(tags.site, '-1') AND tags.floor IN [1, 5, 7.5]",
    "SELECT * FROM devices WHERE connectionState = 'Disconnected' AND tags.site = 'plant-2'",
    "SELECT * FROM devices WHERE connectionState = 'Connected'",
    "SELECT * FROM devices WHERE connectionState = 'Connected' AND tags.site = 'plant-1'",
    "SELECT * FROM devices WHERE tags.floor > 4 AND connectionState IN ['Connected']",
    "SELECT * FROM devices WHERE status = 'disabled' AND 'Connected' = connectionState",
    "SELECT * FROM devices WHERE connectionState = 'Connected' OR tags.site = 'plant-1'",
    "SELECT * FROM devices WHERE (tags.site = 'plant-3' OR tags.floor = 0) AND status = 'enabled'",
    "SELECT * FROM devices WHERE tags.site = 'plant-3' OR NOT tags.floor = 0",
];

/// What evaluating `query` on every twin gives: the twins as the API shows them.
fn expected(query: &str, twins: &[Value]) -> Vec<Value> {
    let q = certhub_twin::query::parse(query).expect("parse");
    twins.iter().filter(|t| q.matches(t)).cloned().collect()
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["deviceId"].as_str().expect("deviceId").to_string())
        .collect()
}

async fn check(hub: &Hub, indexed_paths: &[&str]) {
    let (_, _, all) = hub
        .call(
            "POST",
            "/devices/query",
            &[("x-ms-max-item-count", "1000")],
            Some(json!({"query": "SELECT * FROM devices"})),
        )
        .await;
    let all = all.as_array().expect("all").clone();
    assert_eq!(all.len(), DEVICES);
    // A twin's JSON as the query sees it, for the expected answers: lastActivityTime and
    // connectionState do not move here (the sessions stay as `run` made them).
    for query in QUERIES {
        let want = ids(&expected(query, &all));
        let (rows, plan) = hub.all_pages(query).await;
        assert_eq!(ids(&rows), want, "{query}");
        // The same condition counted.
        let count = query.replacen("SELECT *", "SELECT COUNT() AS n", 1);
        let (body, _) = hub.one_page(&count).await;
        assert_eq!(body, json!([{ "n": want.len() }]), "{count}");
        // The plan says whether an index found the rows.
        let indexes_it = query.contains("deviceId =")
            || query.contains("deviceId IN")
            || query.contains("WHERE status")
            || query.contains("connectionState = 'Connected'")
            || query.contains("connectionState IN ['Connected']")
            || indexed_paths.iter().any(|p| {
                query.contains(&format!("WHERE {p} =")) || query.contains(&format!("WHERE {p} IN"))
            });
        if indexes_it && !query.contains(" OR ") {
            assert_eq!(plan, "indexed", "{query}");
        }
        if query.contains("!=") || query.contains("WHERE tags.site = 'plant-3' OR NOT") {
            assert_eq!(plan, "scanned", "{query}");
        }
    }
    // A projection, and TOP, over the database's rows.
    let (body, _) = hub
        .one_page("SELECT TOP 2 deviceId, tags.floor AS f FROM devices WHERE tags.site = 'plant-2'")
        .await;
    assert_eq!(
        body,
        json!([{"deviceId": "q002", "f": 2}, {"deviceId": "q014", "f": 7.5}])
    );
}

async fn run(store: Store) {
    let hub = Hub::new(store).await;
    populate(&hub).await;
    // A third of the devices connected here, one on another node of a cluster, and a module
    // (whose device is not connected by it).
    let sessions = hub.state.sessions();
    let tickets: Vec<_> = (0..DEVICES)
        .filter(|i| i % 3 == 1)
        .map(|i| sessions.register(&format!("q{i:03}"), "ca", Vec::new().into(), None))
        .chain([sessions.register("q002/m1", "ca", Vec::new().into(), None)])
        .collect();
    sessions.remote_connected("q005", "node-b", 1);
    assert_eq!(sessions.connected_device_count(), DEVICES / 3 + 1);
    check(&hub, &[]).await;

    // Declared indexes: the same answers, now found by index.
    for path in ["tags.site", "tags.floor", "properties.desired.mode"] {
        let (status, _, body) = hub
            .call("PUT", &format!("/twinIndexes/{path}"), &[], None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
    }
    let (status, _, _) = hub.call("PUT", "/twinIndexes/tags.site", &[], None).await;
    assert_eq!(status, StatusCode::OK, "declared twice");
    let (_, _, list) = hub.call("GET", "/twinIndexes", &[], None).await;
    let paths: Vec<&str> = list["value"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        paths,
        [
            "deviceId",
            "status",
            "properties.desired.mode",
            "tags.floor",
            "tags.site"
        ]
    );
    check(
        &hub,
        &["tags.site", "tags.floor", "properties.desired.mode"],
    )
    .await;
    // Twin writes keep the indexes current.
    let (status, _, body) = hub
        .call(
            "PATCH",
            "/twins/q001",
            &[],
            Some(json!({"tags": {"site": "plant-99"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (rows, plan) = hub
        .all_pages("SELECT * FROM devices WHERE tags.site = 'plant-99'")
        .await;
    assert_eq!(
        (ids(&rows), plan.as_str()),
        (vec!["q001".to_string()], "indexed")
    );

    // The database uses the index (SQLite's plan is checked; PostgreSQL's planner may prefer
    // reading 90 rows whole, so its plan is only asked for).
    let q = certhub_twin::query::parse("SELECT * FROM devices WHERE tags.site = 'plant-1'")
        .expect("parse");
    let pushed =
        certhub_server::query_plan::push_down(q.filter.as_ref().expect("f"), true).expect("pushed");
    let plan = hub
        .state
        .store()
        .explain_devices_where(&pushed.pred)
        .await
        .expect("explain");
    if hub.state.store().backend() == certhub_store::Backend::Sqlite {
        assert!(
            plan.iter().any(|l| l.contains("INDEX twin_ix_")),
            "{plan:?}"
        );
    }

    // Refusals say what to do.
    for (path, want) in [
        ("deviceId", "always indexed"),
        ("tags.a-b", "not a path certhub can index"),
        (
            "properties.reported.$version",
            "not a path certhub can index",
        ),
        ("connectionState", "not a path certhub can index"),
    ] {
        let (status, _, body) = hub
            .call("PUT", &format!("/twinIndexes/{path}"), &[], None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            body["Message"].as_str().expect("m").contains(want),
            "{body}"
        );
    }
    let (status, _, _) = hub
        .call("DELETE", "/twinIndexes/tags.site", &[], None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = hub
        .call("DELETE", "/twinIndexes/tags.site", &[], None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, plan) = hub
        .all_pages("SELECT * FROM devices WHERE tags.site = 'plant-99'")
        .await;
    assert_eq!(plan, "scanned");
    drop(tickets);
}

#[tokio::test]
async fn sql_answers_match_evaluating_every_twin_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("certhub.db"))
        .await
        .expect("store");
    run(store).await;
}

#[tokio::test]
async fn sql_answers_match_evaluating_every_twin_on_postgres() {
    certhub_store::scratch::on_postgres("certhub_queries", run).await;
}

/// A hub on SQLite in `dir` with `n` devices `{prefix}00000`... and no twins.
async fn sqlite_hub_with(
    dir: &std::path::Path,
    prefix: &str,
    n: usize,
) -> (Hub, Vec<certhub_core::Device>) {
    let store = Store::open_sqlite(&dir.join("certhub.db"))
        .await
        .expect("store");
    let hub = Hub::new(store).await;
    let devices: Vec<_> = (0..n)
        .map(|i| {
            let id = DeviceId::new(format!("{prefix}{i:05}")).expect("id");
            serde_json::from_value::<DeviceInput>(json!({}))
                .expect("input")
                .into_device(&id, None, 1_000)
                .expect("device")
        })
        .collect();
    hub.state
        .store()
        .insert_devices(&devices)
        .await
        .expect("insert");
    (hub, devices)
}

/// A page no index finds reads at most 10 000 devices: it comes back short (here empty) with a
/// continuation token, and the pages together still hold every match.
#[tokio::test]
async fn unindexed_pages_read_a_window_of_the_registry_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, _) = sqlite_hub_with(dir.path(), "w", 10_050).await;
    let (status, _, body) = hub
        .call(
            "PATCH",
            "/twins/w10049",
            &[],
            Some(json!({"tags": {"site": "far"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for query in [
        // Decided by the database without an index.
        "SELECT deviceId FROM devices WHERE tags.site = 'far'",
        // Decided in Rust on every twin.
        "SELECT deviceId FROM devices WHERE ENDSWITH(tags.site, 'ar')",
    ] {
        let (body, h) = hub.one_page(query).await;
        assert_eq!(body, json!([]), "{query}: the first window holds no match");
        assert_eq!(h["x-certhub-query-plan"], "scanned");
        let token = h["x-ms-continuation"].to_str().expect("token").to_string();
        assert_eq!(token, "w09999", "{query}");
        let (rows, _) = hub.all_pages(query).await;
        assert_eq!(ids(&rows), ["w10049"], "{query}");
        // COUNT() reads on to the end.
        let count = query.replacen("SELECT deviceId", "SELECT COUNT() AS n", 1);
        let (body, h) = hub.one_page(&count).await;
        assert_eq!(body, json!([{"n": 1}]), "{count}");
        assert!(h.get("x-ms-continuation").is_none());
    }
}

/// An index whose matches are not in device id order (a range, IN): a page comes from a short
/// walk of the primary key where matches are dense, from the index where they are sparse; the
/// pages hold every match once, in device id order, either way.
#[tokio::test]
async fn unordered_index_pages_hold_every_match_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, devices) = sqlite_hub_with(dir.path(), "u", 5_000).await;
    let store = hub.state.store();
    let now = "2026-12-06T00:00:00Z";
    for (i, d) in devices.iter().enumerate() {
        let mut twin = TwinState::new(now);
        // Every 1 000th has n = 1000 + i: sparse; the rest repeat 0..50: dense.
        let n = if i % 1000 == 999 { 1000 + i } else { i % 50 };
        twin.patch_tags(&json!({ "n": n })).expect("tags");
        let record = TwinRecord {
            version: twin.version(),
            state: serde_json::to_string(&twin).expect("json"),
        };
        assert!(
            store
                .write_twin(d.device_id.as_str(), None, None, &record)
                .await
                .expect("twin")
        );
    }
    let (status, _, _) = hub.call("PUT", "/twinIndexes/tags.n", &[], None).await;
    assert_eq!(status, StatusCode::CREATED);
    let n = |i: usize| if i % 1000 == 999 { 1000 + i } else { i % 50 };
    for (query, holds) in [
        (
            "SELECT deviceId FROM devices WHERE tags.n >= 10 AND tags.n < 30",
            &(|v: usize| (10..30).contains(&v)) as &dyn Fn(usize) -> bool,
        ),
        (
            "SELECT deviceId FROM devices WHERE tags.n IN [3, 7]",
            &|v| v == 3 || v == 7,
        ),
        ("SELECT deviceId FROM devices WHERE tags.n = 3", &|v| v == 3),
        ("SELECT deviceId FROM devices WHERE tags.n > 1000", &|v| {
            v > 1000
        }),
    ] {
        let want: Vec<String> = (0..5_000)
            .filter(|i| holds(n(*i)))
            .map(|i| format!("u{i:05}"))
            .collect();
        let (rows, plans) = hub.pages_of(query, 100).await;
        assert!(plans.iter().all(|p| p == "indexed"), "{query}: {plans:?}");
        assert_eq!(ids(&rows), want, "{query}");
    }
}

/// The origin the hub lists for an indexed path, if it is indexed.
async fn index_origin(hub: &Hub, path: &str) -> Option<String> {
    let (status, _, list) = hub.call("GET", "/twinIndexes", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["value"]
        .as_array()
        .expect("value")
        .iter()
        .find(|i| i["path"] == path)
        .map(|i| i["origin"].as_str().expect("origin").to_string())
}

/// Waits up to 10 s for the hub to index `path` on its own (it builds in a task of its own).
async fn indexed_by_the_hub(hub: &Hub, path: &str) -> bool {
    for _ in 0..200 {
        if index_origin(hub, path).await.as_deref() == Some("auto") {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Asks `times` first pages of a query on `path` that no index serves.
async fn scan(hub: &Hub, path: &str, times: u32) {
    let query = format!("SELECT deviceId FROM devices WHERE {path} = 'nowhere'");
    for _ in 0..times {
        let (_, h) = hub.one_page(&query).await;
        assert_eq!(h["x-certhub-query-plan"], "scanned", "{query}");
    }
}

/// A path that queries keep filtering on while every twin is read is indexed by the hub on its
/// own, on a registry of 10 000 devices or more: after the fifth such query within ten
/// minutes, audited; not after fewer, not on a small registry, not once an operator removed
/// its index, not while the setting is off; an operator's declaration makes it theirs.
#[tokio::test]
async fn a_path_queried_without_an_index_is_indexed_by_the_hub_on_its_own() {
    use certhub_server::auto_index::{AFTER_SCANS, MIN_DEVICES};
    let quiet = std::time::Duration::from_millis(500);

    // A small registry: scans are cheap, nothing is indexed.
    let small_dir = tempfile::tempdir().expect("tempdir");
    let (small, _) = sqlite_hub_with(small_dir.path(), "s", 100).await;
    scan(&small, "tags.site", 2 * AFTER_SCANS).await;
    tokio::time::sleep(quiet).await;
    assert_eq!(index_origin(&small, "tags.site").await, None);

    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, _) = sqlite_hub_with(dir.path(), "a", MIN_DEVICES as usize).await;
    scan(&hub, "tags.site", AFTER_SCANS - 1).await;
    tokio::time::sleep(quiet).await;
    assert_eq!(
        index_origin(&hub, "tags.site").await,
        None,
        "too few queries yet"
    );
    scan(&hub, "tags.site", 1).await;
    assert!(indexed_by_the_hub(&hub, "tags.site").await);
    let (_, h) = hub
        .one_page("SELECT deviceId FROM devices WHERE tags.site = 'nowhere'")
        .await;
    assert_eq!(h["x-certhub-query-plan"], "indexed");
    let (status, _, audit) = hub
        .call("GET", "/audit?operation=twin.index.auto", &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let record = &audit.as_array().expect("records")[0];
    assert_eq!(record["target"], "twinIndexes/tags.site", "{audit}");
    assert_eq!(record["outcome"], "ok", "{audit}");
    assert_eq!(record["actor"], "hub", "{audit}");
    assert!(
        record["detail"]
            .as_str()
            .expect("detail")
            .contains("certhub hub twin-index remove tags.site"),
        "{audit}"
    );

    // An operator removes it: the hub leaves the path alone however often it is queried.
    let (status, _, _) = hub
        .call("DELETE", "/twinIndexes/tags.site", &[], None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    scan(&hub, "tags.site", 2 * AFTER_SCANS).await;
    tokio::time::sleep(quiet).await;
    assert_eq!(index_origin(&hub, "tags.site").await, None, "declined");
    // Declared by the operator, it is theirs.
    let (status, _, _) = hub.call("PUT", "/twinIndexes/tags.site", &[], None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        index_origin(&hub, "tags.site").await.as_deref(),
        Some("declared")
    );

    // Off: nothing; on again: the next due path is indexed.
    let (status, _, body) = hub
        .call(
            "PATCH",
            "/settings",
            &[],
            Some(json!({"twinAutoIndex": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["twinAutoIndex"], false);
    scan(&hub, "properties.reported.firmware", AFTER_SCANS).await;
    tokio::time::sleep(quiet).await;
    assert_eq!(
        index_origin(&hub, "properties.reported.firmware").await,
        None,
        "turned off"
    );
    let (status, _, _) = hub
        .call(
            "PATCH",
            "/settings",
            &[],
            Some(json!({"twinAutoIndex": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    scan(&hub, "properties.reported.firmware", AFTER_SCANS).await;
    assert!(indexed_by_the_hub(&hub, "properties.reported.firmware").await);
}
