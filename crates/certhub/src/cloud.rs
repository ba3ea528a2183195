//! The service side of device traffic: `certhub c2d`, `certhub twin`, `certhub method`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs, Names, print_json};

#[derive(Debug, Subcommand)]
pub enum C2dCommand {
    /// Queue a cloud-to-device message; the device gets it on
    /// devices/{id}/messages/devicebound/... while subscribed (now, or when it next connects).
    Send(SendArgs),
    /// Drop every message queued for a device.
    Purge {
        #[command(flatten)]
        hub: HubArgs,
        #[arg(long)]
        device: String,
    },
    /// Receive one batch of delivery feedback (for messages sent with --ack), print it and
    /// complete it, so the next call gets the next batch.
    Feedback {
        #[command(flatten)]
        hub: HubArgs,
        /// Print the batch but leave it for the next receiver (abandon its lock).
        #[arg(long)]
        keep: bool,
        /// Wait up to this many seconds for feedback to arrive (0: answer at once).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    device: String,
    /// The message body (text).
    #[arg(long, default_value = "")]
    body: String,
    /// An application property; repeatable.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long)]
    correlation_id: Option<String>,
    #[arg(long)]
    content_type: Option<String>,
    #[arg(long)]
    content_encoding: Option<String>,
    /// Seconds the message waits for the device at most (1 to 172800) [default: 3600].
    #[arg(long)]
    ttl: Option<i64>,
    /// Feedback requested: none, positive, negative or full [default: none].
    #[arg(long)]
    ack: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TwinCommand {
    /// Print a device's (or module's) twin.
    Show(TwinTarget),
    /// Merge desired properties and/or tags into a twin (JSON objects; null deletes).
    Update {
        #[command(flatten)]
        target: TwinTarget,
        /// Desired properties to merge, e.g. '{"interval": 5}'.
        #[arg(long)]
        desired: Option<String>,
        /// Tags to merge, e.g. '{"site": "plant-1"}'.
        #[arg(long)]
        tags: Option<String>,
    },
    /// Run a query, e.g. "SELECT * FROM devices WHERE tags.site = 'plant-1'".
    Query {
        #[command(flatten)]
        hub: HubArgs,
        query: String,
    },
}

#[derive(Debug, Args)]
pub struct TwinTarget {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    device: String,
    #[arg(long)]
    module: Option<String>,
}

impl TwinTarget {
    /// `/twins/{device}`, or `/twins/{device}/modules/{module}`.
    fn path(&self) -> Result<ApiPath> {
        let twin = ApiPath::fixed("twins").name(Names::Device, "--device", &self.device)?;
        match &self.module {
            Some(m) => twin.then("modules").name(Names::Module, "--module", m),
            None => Ok(twin),
        }
    }
}

/// `/devices/{device}`, the device given with `--device`.
fn device_path(device: &str) -> Result<ApiPath> {
    ApiPath::fixed("devices").name(Names::Device, "--device", device)
}

const FEEDBACK: &str = "messages/serviceBound/feedback";

#[derive(Debug, Subcommand)]
pub enum MethodCommand {
    /// Call a direct method on a connected device and print its status and payload.
    Invoke {
        #[command(flatten)]
        target: TwinTarget,
        /// The method name.
        #[arg(long)]
        name: String,
        /// The JSON payload.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Seconds to wait for the answer (5 to 300).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Seconds to wait for the device to come online (0 to 300).
        #[arg(long, default_value_t = 0)]
        connect_timeout: u64,
    },
}

fn json_arg(flag: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{flag} is not JSON: {text:?}"))
}

pub fn c2d(cmd: C2dCommand) -> Result<Outcome> {
    match cmd {
        C2dCommand::Send(a) => {
            let path = device_path(&a.device)?.then("messages/deviceBound");
            let mut props = Map::new();
            for p in &a.properties {
                let Some((k, v)) = p.split_once('=') else {
                    bail!("--property {p:?} is not KEY=VALUE");
                };
                props.insert(k.to_string(), Value::String(v.to_string()));
            }
            let mut body = json!({"body": a.body, "properties": props});
            for (k, v) in [
                ("messageId", &a.message_id),
                ("correlationId", &a.correlation_id),
                ("contentType", &a.content_type),
                ("contentEncoding", &a.content_encoding),
                ("ack", &a.ack),
            ] {
                if let Some(v) = v {
                    body[k] = Value::String(v.clone());
                }
            }
            if let Some(t) = a.ttl {
                body["ttlSeconds"] = json!(t);
            }
            let client = Client::connect(&a.hub)?;
            let r = client.expect("POST", &path, None, Some(&body))?;
            print_json(&r);
        }
        C2dCommand::Purge { hub, device } => {
            let path = device_path(&device)?.then("commands");
            let client = Client::connect(&hub)?;
            let r = client.expect("DELETE", &path, None, None)?;
            print_json(&r);
        }
        C2dCommand::Feedback { hub, keep, wait } => {
            let client = Client::connect(&hub)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            let a = loop {
                let a = client.send("GET", &ApiPath::fixed(FEEDBACK), None, None)?;
                if a.status != 204 || std::time::Instant::now() >= deadline {
                    break a;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            };
            if a.status == 204 {
                // Nothing waiting: an empty batch.
                print_json(&json!([]));
                return Ok(Outcome::Ok);
            }
            let a = a.checked()?;
            let Some(token) = a.etag else {
                bail!("the hub sent feedback without a lock token (ETag)");
            };
            let locked = ApiPath::fixed(FEEDBACK).name(Names::LockToken, "ETag", &token)?;
            print_json(&a.body);
            let (method, path) = if keep {
                ("POST", locked.then("abandon"))
            } else {
                ("DELETE", locked)
            };
            client.expect(method, &path, None, None)?;
        }
    }
    Ok(Outcome::Ok)
}

pub fn twin(cmd: TwinCommand) -> Result<Outcome> {
    match cmd {
        TwinCommand::Show(t) => {
            let path = t.path()?;
            let client = Client::connect(&t.hub)?;
            print_json(&client.expect("GET", &path, None, None)?);
        }
        TwinCommand::Update {
            target,
            desired,
            tags,
        } => {
            let path = target.path()?;
            if desired.is_none() && tags.is_none() {
                bail!("give --desired and/or --tags");
            }
            let mut body = json!({});
            if let Some(d) = desired {
                body["properties"] = json!({"desired": json_arg("--desired", &d)?});
            }
            if let Some(t) = tags {
                body["tags"] = json_arg("--tags", &t)?;
            }
            let client = Client::connect(&target.hub)?;
            print_json(&client.expect("PATCH", &path, Some("*"), Some(&body))?);
        }
        TwinCommand::Query { hub, query } => {
            let client = Client::connect(&hub)?;
            let mut continuation: Option<String> = None;
            loop {
                let (items, next, scanned) = client.query(&query, continuation.as_deref())?;
                if scanned && continuation.is_none() {
                    eprintln!(
                        "note: the hub read every twin for this query; index the tags or properties it filters on (certhub hub twin-index add tags.NAME) to have it found by index (on a registry of {} devices or more, the hub indexes a path on its own after {} such queries within {} minutes)",
                        certhub_server::auto_index::MIN_DEVICES,
                        certhub_server::auto_index::AFTER_SCANS,
                        certhub_server::auto_index::WINDOW_MS / 60_000
                    );
                }
                for item in items.as_array().into_iter().flatten() {
                    out!("{item}");
                }
                match next {
                    Some(n) => continuation = Some(n),
                    None => break,
                }
            }
        }
    }
    Ok(Outcome::Ok)
}

pub fn method(cmd: MethodCommand) -> Result<Outcome> {
    let MethodCommand::Invoke {
        target,
        name,
        payload,
        timeout,
        connect_timeout,
    } = cmd;
    let path = target.path()?.then("methods");
    let body = json!({
        "methodName": name,
        "payload": json_arg("--payload", &payload)?,
        "responseTimeoutInSeconds": timeout,
        "connectTimeoutInSeconds": connect_timeout,
    });
    let client = Client::connect(&target.hub)?;
    let r = client.expect("POST", &path, None, Some(&body))?;
    print_json(&r);
    Ok(Outcome::Ok)
}
