//! `certhub bench reads`: one device's telemetry read back from the hub's log through the
//! service API (`GET /messages/events?device=...`), as a dashboard or a support tool opening
//! one device's history does: each device's first page from `--from`, R times, timed. Run it
//! against a log that `certhub bench telemetry` filled, naming a device that sent nothing
//! (the worst case of a scan), one that sent a few messages, and one of the bench's own. The
//! "first" column is each device's first read (the database's pages for it may be cold).

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::api::Api;
use crate::report::Summary;

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct ReadsArgs {
    /// The hub's service connection string (a policy with ServiceConnect).
    #[arg(long, env = "CERTHUB_CONNECTION_STRING", hide_env_values = true)]
    connection_string: String,
    /// The service API's CA (PEM), e.g. certhub-data/tls/server-ca.pem.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// A device whose messages to read (repeat for several); it need not exist.
    #[arg(long = "device", required = true)]
    devices: Vec<String>,
    /// Read the messages numbered after this (0: the whole log).
    #[arg(long, default_value_t = 0)]
    from: i64,
    /// Messages per page (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    top: u32,
    /// Reads of each device's first page.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

pub fn run(a: &ReadsArgs) -> Result<()> {
    let api = Api::new(&a.connection_string, &a.ca)?;
    // One read first, untimed, so that no timed read includes the TLS handshake: the newest
    // page of a device id no device has.
    api.device_events("certhub-bench-warm-up", i64::MAX - 1, 1)
        .context("the first read")?;
    let mut rows = Vec::new();
    for device in &a.devices {
        let mut us = Vec::with_capacity(a.runs as usize);
        let mut first = None;
        let mut messages = 0;
        let mut next = 0;
        for _ in 0..a.runs {
            let start = Instant::now();
            let (page, continuation) = api
                .device_events(device, a.from, a.top)
                .with_context(|| format!("reading {device}'s telemetry"))?;
            let elapsed = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
            first.get_or_insert(elapsed);
            us.push(elapsed);
            messages = page.len();
            next = continuation;
        }
        rows.push((
            device.clone(),
            f64::from(first.unwrap_or(0)) / 1000.0,
            Summary::of(us),
            messages,
            next,
        ));
    }
    if a.json {
        let value = json!({
            "from": a.from, "top": a.top,
            "devices": rows.iter().map(|(device, first, s, messages, next)| json!({
                "device": device, "firstMs": first, "p50": s.p50, "p99": s.p99, "max": s.max,
                "runs": s.count, "messages": messages, "continuation": next,
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        println!(
            "{} runs per device; the first page (top {}) after message {} timed",
            a.runs, a.top, a.from
        );
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
            "device", "first ms", "p50 ms", "p99 ms", "max ms", "messages", "next from"
        );
        for (device, first, s, messages, next) in &rows {
            println!(
                "{device:<24} {first:>9.1} {:>9.1} {:>9.1} {:>9.1} {messages:>9} {next:>12}",
                s.p50, s.p99, s.max
            );
        }
    }
    Ok(())
}
