//! `certhub cluster status`: the hub's nodes as the node the CLI reaches sees them.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The hub's nodes: address, version, device sessions, telemetry lag, last heartbeat
    /// (a single hub lists itself). --json prints the API's answer as it is.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Print the JSON the API answers instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ClusterCommand) -> Result<Outcome> {
    let ClusterCommand::Status(a) = cmd;
    let client = Client::connect(&a.hub)?;
    let nodes = client.expect("GET", &ApiPath::fixed("cluster/nodes"), None, None)?;
    if a.json {
        crate::client::print_json(&nodes);
        return Ok(Outcome::Ok);
    }
    let rows = nodes.as_array().cloned().unwrap_or_default();
    out!(
        "{:<24} {:<10} {:>9} {:>13} {:<28} node",
        "address",
        "version",
        "sessions",
        "telemetry lag",
        "last heard"
    );
    let mut sessions = 0;
    for n in &rows {
        let count = n["deviceSessions"].as_u64().unwrap_or(0);
        sessions += count;
        out!(
            "{:<24} {:<10} {:>9} {:>13} {:<28} {}{}",
            n["address"].as_str().unwrap_or("?"),
            n["version"].as_str().unwrap_or("?"),
            count,
            n["telemetryLag"].as_i64().unwrap_or(0),
            n["lastHeardTime"].as_str().unwrap_or("?"),
            n["id"].as_str().unwrap_or("?"),
            if n["thisNode"].as_bool() == Some(true) {
                " (answered)"
            } else {
                ""
            }
        );
    }
    out!("{} nodes, {sessions} device sessions", rows.len());
    Ok(Outcome::Ok)
}
