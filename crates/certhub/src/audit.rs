//! `certhub audit list`: who changed what, and how it ended.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs, Names, given, print_json};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest audit records first.
    List(ListArgs),
    /// Why can't my device connect? Connection attempts and closes, newest first, with reasons.
    Connections(ConnectionsArgs),
    /// Why was my device not provisioned? Registration attempts, newest first, with reasons.
    Registrations(RegistrationsArgs),
}

#[derive(Debug, Args)]
pub struct RegistrationsArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Only this registration id.
    #[arg(long)]
    registration_id: Option<String>,
    /// Only this outcome, e.g. `no-enrollment`, `enrollment-disabled`, `ok`.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long, default_value_t = 50)]
    top: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Only this device (and its modules), or `deviceId/moduleId`.
    #[arg(long)]
    device: Option<String>,
    /// Only this outcome, e.g. `unknown-ca`, `device-disabled`, `ok`.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long, default_value_t = 50)]
    top: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Only this operation, e.g. `device.create`, `twin.index.auto` (exact).
    #[arg(long)]
    operation: Option<String>,
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
            let mut path = ApiPath::fixed("audit").query("top", a.top);
            if let Some(op) = &a.operation {
                path = path.query("operation", op);
            }
            let v = client.expect("GET", &path, None, None)?;
            print_records(&v, a.json);
        }
        AuditCommand::Connections(a) => {
            let mut path = ApiPath::fixed("audit")
                .query("top", a.top)
                .query("operation", "device.connect");
            if let Some(d) = &a.device {
                // The audit target of a connection: `devices/ID` or `devices/ID/MODULE`.
                let d = given(Names::Device, "--device", d)?;
                path = path.query("target", format!("devices/{d}"));
            }
            if let Some(r) = &a.reason {
                path = path.query("outcome", r);
            }
            let client = Client::connect(&a.hub)?;
            let v = client.expect("GET", &path, None, None)?;
            if !a.json && v.as_array().is_none_or(Vec::is_empty) {
                out!(
                    "no connection attempts recorded{}",
                    a.device
                        .as_deref()
                        .map(|d| format!(" for {d}"))
                        .unwrap_or_default()
                );
            }
            print_records(&v, a.json);
        }
        AuditCommand::Registrations(a) => {
            let mut path = ApiPath::fixed("audit")
                .query("top", a.top)
                .query("operation", "dps.register");
            if let Some(r) = &a.registration_id {
                let r = given(Names::Registration, "--registration-id", r)?;
                path = path.query("target", format!("registrations/{r}"));
            }
            if let Some(r) = &a.reason {
                path = path.query("outcome", r);
            }
            let client = Client::connect(&a.hub)?;
            let v = client.expect("GET", &path, None, None)?;
            if !a.json && v.as_array().is_none_or(Vec::is_empty) {
                out!("no registration attempts recorded");
            }
            print_records(&v, a.json);
        }
    }
    Ok(Outcome::Ok)
}

fn print_records(v: &serde_json::Value, json: bool) {
    if json {
        print_json(v);
    } else {
        for r in v.as_array().into_iter().flatten() {
            let at = certhub_core::azure_time(r["atMs"].as_i64().unwrap_or(0));
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            let detail = s("detail");
            let count = r["count"].as_i64().unwrap_or(1);
            out!(
                "{at}  {:<12} {:<22} {:<36} {}{}{}",
                s("actor"),
                s("operation"),
                s("target"),
                s("outcome"),
                if count > 1 {
                    format!(" (x{count})")
                } else {
                    String::new()
                },
                if detail.is_empty() {
                    String::new()
                } else {
                    format!("  {detail}")
                }
            );
        }
    }
}
