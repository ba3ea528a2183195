//! `certhub audit list`: who changed what, and how it ended.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::Outcome;
use crate::client::{Client, HubArgs, print_json};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest audit records first.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long, default_value_t = 100)]
    top: u32,
    /// Print JSON instead of one line per record.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: AuditCommand) -> Result<Outcome> {
    match cmd {
        AuditCommand::List(a) => {
            let client = Client::connect(&a.hub)?;
            let v = client.expect("GET", &format!("/audit?top={}", a.top), None, None)?;
            if a.json {
                print_json(&v);
            } else {
                for r in v.as_array().into_iter().flatten() {
                    let at = certhub_core::azure_time(r["atMs"].as_i64().unwrap_or(0));
                    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                    let detail = s("detail");
                    out!(
                        "{at}  {:<12} {:<22} {:<36} {}{}",
                        s("actor"),
                        s("operation"),
                        s("target"),
                        s("outcome"),
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!("  {detail}")
                        }
                    );
                }
            }
        }
    }
    Ok(Outcome::Ok)
}
