//! `certhub bench query`: twin queries against a registry of many devices, through the service
//! API (Azure's `POST /devices/query`), as the dashboards, jobs and back ends that run them all
//! day do. Optionally fills the registry first: N devices `{prefix}-000001`... created in bulk
//! requests, each then tagged with a twin patch (`site`: one of 100 plants, `floor`: 0-9), and
//! every 100th disabled. Then each query shape runs R times; the first page (100 items) of each
//! run is timed, and COUNT()s whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::api::Api;
use crate::report::Summary;

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The hub's service connection string (HostName=...;SharedAccessKeyName=...;
    /// SharedAccessKey=...): RegistryRead to query, RegistryWrite with --populate.
    #[arg(long, env = "CERTHUB_CONNECTION_STRING", hide_env_values = true)]
    connection_string: String,
    /// The service API's CA (PEM), e.g. certhub-data/tls/server-ca.pem.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Create this many devices first (ids PREFIX-000001...), tagged and every 100th disabled;
    /// devices that exist already are kept (their status too) and tagged again.
    #[arg(long, default_value_t = 0)]
    populate: u32,
    /// The ids' prefix (with --populate, and for the deviceId query).
    #[arg(long, default_value = "bench-q")]
    prefix: String,
    /// How many devices the registry holds under PREFIX (names the deviceId query's target)
    /// [default: --populate].
    #[arg(long)]
    registered: Option<u32>,
    /// Runs of each query shape.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Parallel requests while populating.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// Declare these twin paths indexed before measuring (the hub builds each index once).
    #[arg(long = "index", default_values = ["tags.site", "tags.floor"])]
    indexes: Vec<String>,
    /// Declare no index: measure the scans (the hub's own indexing, twinAutoIndex, is turned
    /// off while measuring, and back on afterwards if it was on).
    #[arg(long, conflicts_with = "indexes")]
    no_index: bool,
    /// First measure the hub indexing this path on its own: query `WHERE PATH = 'bench-auto'`
    /// until the answer says `indexed` (the path must not be indexed, nor removed by an
    /// operator before; on a registry of at least 10 000 devices). Reports the queries and
    /// the time it took, and the query's time before and after. No index is declared.
    #[arg(long, value_name = "PATH", conflicts_with = "no_index")]
    auto_index: Option<String>,
    /// Only the shapes whose name contains one of these words (e.g. `--only connected`).
    #[arg(long)]
    only: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The query shapes measured: a name and the query. `{mid}` is the id of the middle device.
const SHAPES: &[(&str, &str)] = &[
    (
        "deviceId equality",
        "SELECT * FROM devices WHERE deviceId = '{mid}'",
    ),
    (
        "tag equality, first page",
        "SELECT deviceId FROM devices WHERE tags.site = 'plant-1'",
    ),
    (
        "tag range, first page",
        "SELECT deviceId FROM devices WHERE tags.floor >= 7 AND tags.floor < 8",
    ),
    (
        "status equality, first page",
        "SELECT deviceId FROM devices WHERE status = 'disabled'",
    ),
    (
        "tag and status, first page",
        "SELECT * FROM devices WHERE tags.site = 'plant-7' AND status = 'enabled'",
    ),
    (
        "tag IN, first page",
        "SELECT deviceId FROM devices WHERE tags.site IN ['plant-3', 'plant-4']",
    ),
    ("COUNT() of all", "SELECT COUNT() AS n FROM devices"),
    (
        "COUNT() with a tag filter",
        "SELECT COUNT() AS n FROM devices WHERE tags.site = 'plant-1'",
    ),
    (
        "COUNT() with a status filter",
        "SELECT COUNT() AS n FROM devices WHERE status = 'disabled'",
    ),
    (
        "unindexed filter, first page",
        "SELECT deviceId FROM devices WHERE ENDSWITH(tags.site, '-42')",
    ),
    // Answered from the devices connected at the time (none, unless something holds
    // connections meanwhile, e.g. `certhub bench hold`; bench/connected-query.sh does).
    (
        "connected, first page",
        "SELECT deviceId FROM devices WHERE connectionState = 'Connected'",
    ),
    (
        "connected and enabled, first page",
        "SELECT deviceId FROM devices WHERE connectionState = 'Connected' AND status = 'enabled'",
    ),
    (
        "COUNT() of connected",
        "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'",
    ),
];

fn id(prefix: &str, i: u32) -> String {
    format!("{prefix}-{i:06}")
}

pub fn run(a: &QueryArgs) -> Result<()> {
    let api = Arc::new(Api::new(&a.connection_string, &a.ca)?);
    let mut populated = None;
    if a.populate > 0 {
        populated = Some(populate(&api, a)?);
    }
    let registered = a.registered.unwrap_or(a.populate);
    if registered == 0 {
        bail!(
            "name the registry's size: --populate N (creates the devices) or --registered N (they exist)"
        );
    }
    let mid = id(&a.prefix, registered.div_ceil(2));
    let auto = match &a.auto_index {
        Some(path) => Some(auto_index(&api, path, a.runs)?),
        None => None,
    };
    // Measuring scans: the hub must not index the paths on its own meanwhile.
    let restore = if a.no_index {
        let on = api.settings()?["twinAutoIndex"].as_bool() != Some(false);
        if on {
            api.patch_settings(&json!({"twinAutoIndex": false}))?;
        }
        on
    } else {
        false
    };
    let measured = measure(&api, a, &mid);
    if restore {
        api.patch_settings(&json!({"twinAutoIndex": true}))?;
    }
    let (built, rows) = measured?;
    if a.json {
        let value = json!({
            "registered": registered,
            "populate": populated.map(|(secs, rate)| json!({"seconds": secs, "devicesPerSecond": rate})),
            "autoIndex": auto.as_ref().map(AutoIndexed::to_json),
            "indexes": built.iter().map(|(path, new, secs)| json!({
                "path": path, "built": new, "seconds": secs,
            })).collect::<Vec<_>>(),
            "queries": rows.iter().map(|(name, query, s, items, more, plan)| json!({
                "shape": name, "query": query, "items": items, "morePages": more,
                "plan": plan, "p50": s.p50, "p99": s.p99, "max": s.max, "runs": s.count,
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(());
    }
    if let Some((secs, rate)) = populated {
        println!(
            "populated {} devices in {secs:.1} s ({rate:.0} devices/s, created and tagged)",
            a.populate
        );
    }
    if let Some(auto) = &auto {
        auto.print();
    }
    print_table(a, registered, &built, &rows);
    Ok(())
}

/// A measured query shape: name, query, times, items, whether more pages follow, plan.
type Row = (String, String, Summary, usize, bool, String);
/// An index declared before measuring: path, whether it was new, seconds to build.
type Built = (String, bool, f64);

/// What `--auto-index` saw.
struct AutoIndexed {
    path: String,
    /// Queries answered `scanned` before the first `indexed`.
    scanned: Vec<u32>,
    /// From the first query to the first `indexed` answer, seconds.
    seconds: f64,
    /// The same query afterwards, `runs` times.
    indexed: Summary,
}

impl AutoIndexed {
    fn to_json(&self) -> Value {
        json!({
            "path": self.path,
            "scannedQueries": self.scanned.len(),
            "secondsUntilIndexed": self.seconds,
            "scannedMs": self.scanned.iter().map(|us| f64::from(*us) / 1000.0).collect::<Vec<_>>(),
            "indexedP50": self.indexed.p50, "indexedP99": self.indexed.p99,
        })
    }

    fn print(&self) {
        let scanned: Vec<String> = self
            .scanned
            .iter()
            .map(|us| format!("{:.1}", f64::from(*us) / 1000.0))
            .collect();
        println!(
            "indexed by the hub on its own: {} after {} scanning queries ({} ms) and {:.2} s; then p50 {:.1} ms, p99 {:.1} ms",
            self.path,
            self.scanned.len(),
            scanned.join(", "),
            self.seconds,
            self.indexed.p50,
            self.indexed.p99
        );
    }
}

/// Queries `WHERE path = 'bench-auto'` until the hub indexed the path on its own (after
/// the fifth, the build runs beside the queries: they go on 20 times a second).
fn auto_index(api: &Api, path: &str, runs: u32) -> Result<AutoIndexed> {
    let query = format!("SELECT deviceId FROM devices WHERE {path} = 'bench-auto'");
    let start = Instant::now();
    let mut scanned = Vec::new();
    loop {
        let t = Instant::now();
        let (_, _, plan) = api
            .query(&query, 100)
            .with_context(|| format!("the query {query:?}"))?;
        let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
        if plan == "indexed" {
            break;
        }
        scanned.push(us);
        if start.elapsed() > std::time::Duration::from_secs(600) {
            bail!(
                "{path}: the hub had not indexed it after {} queries in 10 minutes: is twinAutoIndex off, the registry under 10 000 devices, or the path removed by an operator before (certhub hub twin-index add then remove)?",
                scanned.len()
            );
        }
        if scanned.len() >= 5 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut us = Vec::with_capacity(runs as usize);
    for _ in 0..runs {
        let t = Instant::now();
        api.query(&query, 100)?;
        us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    Ok(AutoIndexed {
        path: path.to_string(),
        scanned,
        seconds,
        indexed: Summary::of(us),
    })
}

/// Declares the indexes (unless --no-index or --auto-index), then times each chosen shape.
fn measure(api: &Api, a: &QueryArgs, mid: &str) -> Result<(Vec<Built>, Vec<Row>)> {
    let mut built = Vec::new();
    if !a.no_index && a.auto_index.is_none() {
        for path in &a.indexes {
            let start = Instant::now();
            let new = api.add_twin_index(path)?;
            built.push((path.clone(), new, start.elapsed().as_secs_f64()));
        }
    }
    let mut rows = Vec::new();
    let chosen = SHAPES
        .iter()
        .filter(|(name, _)| a.only.is_empty() || a.only.iter().any(|w| name.contains(w.as_str())));
    for (name, shape) in chosen {
        let query = shape.replace("{mid}", mid);
        let mut us = Vec::with_capacity(a.runs as usize);
        let mut items = 0;
        let mut pages = false;
        let mut plan = String::new();
        for _ in 0..a.runs {
            let start = Instant::now();
            let (page, more, how) = api
                .query(&query, 100)
                .with_context(|| format!("the query {query:?}"))?;
            us.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
            items = page.len();
            pages = more;
            plan = how;
            if let Some(n) = page.first().and_then(|v| v["n"].as_u64()) {
                items = usize::try_from(n).unwrap_or(usize::MAX);
            }
        }
        rows.push((name.to_string(), query, Summary::of(us), items, pages, plan));
    }
    Ok((built, rows))
}

fn print_table(a: &QueryArgs, registered: u32, built: &[Built], rows: &[Row]) {
    for (path, new, secs) in built {
        if *new {
            println!("indexed {path} in {secs:.1} s");
        } else {
            println!("{path} was indexed already");
        }
    }
    println!(
        "registry: {registered} devices under {:?}; {} runs per shape; first page of 100 timed",
        a.prefix, a.runs
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>8} {:>8}  query",
        "shape", "p50 ms", "p99 ms", "max ms", "items", "plan"
    );
    for (name, query, s, items, more, plan) in rows {
        println!(
            "{name:<30} {:>9.1} {:>9.1} {:>9.1} {:>8} {plan:>8}  {query}",
            s.p50,
            s.p99,
            s.max,
            format!("{items}{}", if *more { "+" } else { "" })
        );
    }
}

/// Creates and tags the devices; returns (seconds, devices per second).
fn populate(api: &Arc<Api>, a: &QueryArgs) -> Result<(f64, f64)> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicU64::new(0));
    let total = u64::from(a.populate);
    const BATCH: u64 = 100;
    let workers: Vec<_> = (0..a.parallel)
        .map(|_| {
            let api = api.clone();
            let next = next.clone();
            let done = done.clone();
            let prefix = a.prefix.clone();
            std::thread::spawn(move || -> Result<()> {
                loop {
                    let first = next.fetch_add(BATCH, Ordering::Relaxed);
                    if first > total {
                        return Ok(());
                    }
                    let last = (first + BATCH - 1).min(total);
                    let ids: Vec<String> = (first..=last)
                        .map(|i| id(&prefix, u32::try_from(i).unwrap_or(u32::MAX)))
                        .collect();
                    let entries: Vec<Value> = ids
                        .iter()
                        .zip(first..)
                        .map(|(d, i)| {
                            json!({"id": d, "importMode": "create",
                                   "status": if i % 100 == 0 { "disabled" } else { "enabled" }})
                        })
                        .collect();
                    api.bulk_create(&entries)?;
                    for (d, i) in ids.iter().zip(first..) {
                        api.patch_tags(
                            d,
                            &json!({"site": format!("plant-{}", i % 100), "floor": i % 10}),
                        )?;
                    }
                    let n = done.fetch_add(last + 1 - first, Ordering::Relaxed) + last + 1 - first;
                    if n % 10_000 < BATCH {
                        eprintln!("populated {n} of {total}");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a populating thread panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    Ok((secs, total as f64 / secs))
}
