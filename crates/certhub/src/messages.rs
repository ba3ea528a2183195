//! `certhub messages tail`: telemetry as it arrives, from the hub's telemetry log.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs, Names};

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// Print telemetry, oldest first, then keep printing as it arrives (Ctrl-C to stop).
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Only this device's messages.
    #[arg(long)]
    device: Option<String>,
    /// Start after this sequence number (default: from the beginning).
    #[arg(long, default_value_t = 0)]
    from: i64,
    /// Stop after printing this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Stop when no new message arrived for this many seconds.
    #[arg(long)]
    idle_exit: Option<u64>,
}

pub fn run(cmd: MessagesCommand) -> Result<Outcome> {
    let MessagesCommand::Tail(a) = cmd;
    let events = |after: i64| {
        let path = ApiPath::fixed("messages/events")
            .query("from", after)
            .query("top", 1000);
        match &a.device {
            Some(d) => path.query_name("device", Names::Device, "--device", d),
            None => Ok(path),
        }
    };
    events(a.from)?;
    let client = Client::connect(&a.hub)?;
    let mut after = a.from;
    let mut printed = 0usize;
    let mut idle = Duration::ZERO;
    let poll = Duration::from_millis(500);
    loop {
        let answer = client.expect_answer("GET", &events(after)?, None, None)?;
        let records = answer.body.as_array().cloned().unwrap_or_default();
        for r in &records {
            after = r["sequenceNumber"].as_i64().unwrap_or(after);
            let who = match r["moduleId"].as_str() {
                Some(m) => format!("{}/{m}", r["deviceId"].as_str().unwrap_or("?")),
                None => r["deviceId"].as_str().unwrap_or("?").to_string(),
            };
            let body = r["body"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("base64:{}", r["bodyBase64"].as_str().unwrap_or("")));
            out!(
                "#{after} {} {who} {} {} {body}",
                r["enqueuedTime"].as_str().unwrap_or(""),
                r["properties"],
                r["systemProperties"]
            );
            printed += 1;
            if a.count.is_some_and(|c| printed >= c) {
                return Ok(Outcome::Ok);
            }
        }
        // The hub says where the next page starts: past messages of other devices it skipped.
        if let Some(next) = answer.continuation.and_then(|c| c.parse::<i64>().ok()) {
            after = after.max(next);
        }
        if records.is_empty() {
            idle += poll;
            if a.idle_exit.is_some_and(|s| idle >= Duration::from_secs(s)) {
                return Ok(Outcome::Ok);
            }
            std::thread::sleep(poll);
        } else {
            idle = Duration::ZERO;
        }
    }
}
