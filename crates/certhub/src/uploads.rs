//! `certhub files ...`: the files devices uploaded, through the service API (`GET /files`,
//! `GET /files/{correlationId}/content`, the file notification queue).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs, Names, print_json};

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List uploads, newest first: state, size, when, correlation id, blob name.
    List(ListArgs),
    /// Download a file a device uploaded, by correlation id or by blob name
    /// (`deviceId/name`, the newest successful upload of it).
    Get(GetArgs),
    /// Receive file upload notifications waiting for services (printed as JSON lines). They
    /// go back to the queue unless --complete.
    Notifications(NotificationsArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Only this device's uploads.
    #[arg(long)]
    device: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 100)]
    top: u32,
    /// Print the hub's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// A correlation id (as `certhub files list` shows it) or a blob name `deviceId/name`.
    /// Correlation ids are random base64url and may begin with `-`: taken as they are.
    #[arg(allow_hyphen_values = true)]
    upload: String,
    /// Write the file here (default: standard output).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NotificationsArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Remove each notification received from the queue (a back end that also receives them
    /// will not see them).
    #[arg(long)]
    complete: bool,
    /// Receive at most this many.
    #[arg(long, default_value_t = 100)]
    max: u32,
}

pub fn run(cmd: FilesCommand) -> Result<Outcome> {
    match cmd {
        FilesCommand::List(a) => list(a),
        FilesCommand::Get(a) => get(a),
        FilesCommand::Notifications(a) => notifications(a),
    }
}

fn uploads(client: &Client, device: Option<&str>, top: u32) -> Result<Vec<Value>> {
    let mut path = ApiPath::fixed("files").query("top", top);
    if let Some(d) = device {
        path = path.query_name("deviceId", Names::Device, "--device", d)?;
    }
    let v = client.expect("GET", &path, None, None)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn list(a: ListArgs) -> Result<Outcome> {
    if !(1..=1000).contains(&a.top) {
        bail!("--top is 1 to 1000, not {}", a.top);
    }
    let client = Client::connect(&a.hub)?;
    let uploads = uploads(&client, a.device.as_deref(), a.top)?;
    if a.json {
        print_json(&Value::Array(uploads));
        return Ok(Outcome::Ok);
    }
    for u in &uploads {
        let size = u["sizeInBytes"]
            .as_i64()
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        println!(
            "{:<9} {:>12} {} {} {}",
            u["state"].as_str().unwrap_or("?"),
            size,
            u["createdTimeUtc"].as_str().unwrap_or("?"),
            u["correlationId"].as_str().unwrap_or("?"),
            u["blobName"].as_str().unwrap_or("?"),
        );
    }
    if uploads.is_empty() {
        eprintln!("no uploads");
    }
    Ok(Outcome::Ok)
}

fn get(a: GetArgs) -> Result<Outcome> {
    let client = Client::connect(&a.hub)?;
    // Correlation ids never hold '/'; blob names always do.
    let correlation_id = match a.upload.split_once('/') {
        None => a.upload.clone(),
        Some((device, _)) => {
            let found = uploads(&client, Some(device), 1000)?
                .into_iter()
                .find(|u| u["blobName"] == a.upload.as_str() && u["state"] == "succeeded");
            match found.and_then(|u| u["correlationId"].as_str().map(str::to_string)) {
                Some(c) => c,
                None => bail!(
                    "no successful upload of {} (see `certhub files list --device {device}`)",
                    a.upload
                ),
            }
        }
    };
    let path = ApiPath::fixed("files")
        .name(Names::Upload, "UPLOAD", &correlation_id)
        .context("the correlation id")?
        .then("content");
    match &a.out {
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            client.download(&path, &mut lock)?;
            lock.flush()?;
        }
        Some(out) => {
            // Written beside the target and renamed into place: never half a file.
            let mut part = out.clone().into_os_string();
            part.push(".part");
            let part = PathBuf::from(part);
            let mut file = std::fs::File::create(&part)
                .with_context(|| format!("{}: cannot write here", part.display()))?;
            let written = client.download(&path, &mut file).and_then(|(n, _)| {
                file.sync_all()?;
                Ok(n)
            });
            let n = match written {
                Ok(n) => n,
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e);
                }
            };
            std::fs::rename(&part, out)
                .with_context(|| format!("{}: cannot write the file", out.display()))?;
            eprintln!("{n} bytes written to {}", out.display());
        }
    }
    Ok(Outcome::Ok)
}

fn notifications(a: NotificationsArgs) -> Result<Outcome> {
    let client = Client::connect(&a.hub)?;
    let queue = ApiPath::fixed("messages/serviceBound/filenotifications");
    let mut received = 0;
    let mut held = Vec::new();
    while received < a.max {
        let answer = client.send("GET", &queue, None, None)?.checked()?;
        if answer.status == 204 {
            break;
        }
        received += 1;
        println!("{}", answer.body);
        let Some(lock) = answer.etag else {
            bail!("the hub answered a notification without a lock token (ETag)");
        };
        held.push(lock);
    }
    // Settled after the loop: an abandoned notification would otherwise come straight back.
    for lock in held {
        let path = queue
            .clone()
            .name(Names::LockToken, "ETag", &lock)
            .context("the lock token")?;
        if a.complete {
            client.expect("DELETE", &path, None, None)?;
        } else {
            client.expect("POST", &path.then("abandon"), None, None)?;
        }
    }
    if received == 0 {
        eprintln!("no file notifications waiting");
    }
    Ok(Outcome::Ok)
}
