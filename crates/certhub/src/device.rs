//! `certhub device ...`: the identity registry through the service API, in az's words.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs, Names, print_json};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device (add --module to register a module of it).
    Create(CreateArgs),
    /// Show a device (or one of its modules).
    Show(IdArgs),
    /// List devices (or a device's modules with --id).
    List(ListArgs),
    /// Change a device's status, thumbprints or authentication method.
    Update(UpdateArgs),
    /// Delete a device (with its modules) or a module.
    Delete(IdArgs),
    /// Register many devices from a JSON-lines file, 100 per request, with a progress bar.
    Import(ImportArgs),
    /// Write every device as JSON lines (the import format).
    Export(ExportArgs),
    /// Print a SAS token for a SAS device or module, signed with its primary key.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    id: String,
    #[arg(long)]
    module: Option<String>,
    /// Seconds the token is valid.
    #[arg(long, default_value_t = 3600)]
    duration: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuthMethod {
    /// Certificate signed by a registered, verified CA; CN = device id.
    X509Ca,
    /// Certificate matched by SHA-1 or SHA-256 thumbprint.
    X509Thumbprint,
    /// SAS tokens from symmetric keys (generated).
    SharedPrivateKey,
}

impl AuthMethod {
    fn azure(self) -> &'static str {
        match self {
            Self::X509Ca => "certificateAuthority",
            Self::X509Thumbprint => "selfSigned",
            Self::SharedPrivateKey => "sas",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    Enabled,
    Disabled,
}

impl StatusArg {
    fn azure(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The device id.
    #[arg(long)]
    id: String,
    /// A module id: create a module of the device instead.
    #[arg(long)]
    module: Option<String>,
    #[arg(long, value_enum, default_value = "shared-private-key")]
    auth_method: AuthMethod,
    /// For x509-thumbprint: SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint.
    #[arg(long)]
    primary_thumbprint: Option<String>,
    #[arg(long)]
    secondary_thumbprint: Option<String>,
    #[arg(long, value_enum, default_value = "enabled")]
    status: StatusArg,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    id: String,
    #[arg(long)]
    module: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// List this device's modules.
    #[arg(long)]
    id: Option<String>,
    /// At most this many devices (1..1000).
    #[arg(long, default_value_t = 1000)]
    top: u32,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    id: String,
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    #[arg(long)]
    status_reason: Option<String>,
    #[arg(long, value_enum)]
    auth_method: Option<AuthMethod>,
    #[arg(long)]
    primary_thumbprint: Option<String>,
    #[arg(long)]
    secondary_thumbprint: Option<String>,
}

/// `/devices/{id}`, or `/devices/{id}/modules/{module}`.
fn path(id: &str, module: Option<&str>) -> Result<ApiPath> {
    let device = ApiPath::fixed("devices").name(Names::Device, "--id", id)?;
    match module {
        Some(m) => device.then("modules").name(Names::Module, "--module", m),
        None => Ok(device),
    }
}

/// `s` as one shell word, for commands the user may copy.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._+:,=@%/".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn authentication(
    method: AuthMethod,
    primary: Option<String>,
    secondary: Option<String>,
) -> Result<Value> {
    match method {
        AuthMethod::X509Thumbprint => {
            if primary.is_none() {
                bail!("--auth-method x509-thumbprint needs --primary-thumbprint");
            }
            Ok(json!({"type": "selfSigned", "x509Thumbprint": {
                "primaryThumbprint": primary, "secondaryThumbprint": secondary}}))
        }
        _ if primary.is_some() || secondary.is_some() => {
            bail!("thumbprints only go with --auth-method x509-thumbprint")
        }
        m => Ok(json!({"type": m.azure()})),
    }
}

pub fn run(cmd: DeviceCommand) -> Result<Outcome> {
    match cmd {
        DeviceCommand::Create(a) => {
            let p = path(&a.id, a.module.as_deref())?;
            let auth = authentication(a.auth_method, a.primary_thumbprint, a.secondary_thumbprint)?;
            let mut body = json!({"deviceId": a.id, "authentication": auth});
            match &a.module {
                Some(m) => body["moduleId"] = json!(m),
                None => body["status"] = json!(a.status.azure()),
            }
            let client = Client::connect(&a.hub)?;
            let answer = client.send("PUT", &p, None, Some(&body))?;
            if answer.status == 409 {
                let id = shell_word(&a.id);
                match &a.module {
                    None => bail!(
                        "device {} is already registered (the hub answered 409 DeviceAlreadyExists): change it with `certhub device update --id {id}` (--status, --auth-method, thumbprints), or delete it first with `certhub device delete --id {id}`",
                        a.id
                    ),
                    Some(m) => bail!(
                        "module {m} of device {} is already registered (the hub answered 409 ModuleAlreadyExistsOnDevice): `certhub device show --id {id} --module {module}` shows it; to register it anew, delete it first with `certhub device delete --id {id} --module {module}`",
                        a.id,
                        module = shell_word(m)
                    ),
                }
            }
            print_json(&answer.checked()?.body);
        }
        DeviceCommand::Show(a) => {
            let p = path(&a.id, a.module.as_deref())?;
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &p, None, None)?);
        }
        DeviceCommand::List(a) => {
            let p = match &a.id {
                Some(id) => path(id, None)?.then("modules"),
                None => ApiPath::fixed("devices").query("top", a.top),
            };
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &p, None, None)?);
        }
        DeviceCommand::Update(a) => {
            let p = path(&a.id, None)?;
            let client = Client::connect(&a.hub)?;
            let mut current = client.expect("GET", &p, None, None)?;
            let etag = current["etag"].as_str().unwrap_or("*").to_string();
            if let Some(s) = a.status {
                current["status"] = json!(s.azure());
            }
            if let Some(r) = a.status_reason {
                current["statusReason"] = json!(r);
            }
            if let Some(m) = a.auth_method {
                current["authentication"] = authentication(
                    m,
                    a.primary_thumbprint.clone(),
                    a.secondary_thumbprint.clone(),
                )?;
            } else if a.primary_thumbprint.is_some() || a.secondary_thumbprint.is_some() {
                let t = &mut current["authentication"]["x509Thumbprint"];
                if let Some(p) = a.primary_thumbprint {
                    t["primaryThumbprint"] = json!(p);
                }
                if let Some(s) = a.secondary_thumbprint {
                    t["secondaryThumbprint"] = json!(s);
                }
            }
            print_json(&client.expect("PUT", &p, Some(&etag), Some(&current))?);
        }
        DeviceCommand::Import(a) => return import(a),
        DeviceCommand::Export(a) => return export(a),
        DeviceCommand::Token(a) => {
            let p = path(&a.id, a.module.as_deref())?;
            let client = Client::connect(&a.hub)?;
            let v = client.expect("GET", &p, None, None)?;
            let Some(key) = v["authentication"]["symmetricKey"]["primaryKey"].as_str() else {
                bail!(
                    "{} has no SAS keys (authentication type {})",
                    a.id,
                    v["authentication"]["type"]
                );
            };
            let resource = match &a.module {
                Some(m) => format!("{}/devices/{}/modules/{m}", client.hostname(), a.id),
                None => format!("{}/devices/{}", client.hostname(), a.id),
            };
            let expiry = time::OffsetDateTime::now_utc().unix_timestamp() + i64::from(a.duration);
            out!("{}", certhub_core::sign_token(&resource, key, None, expiry));
        }
        DeviceCommand::Delete(a) => {
            let p = path(&a.id, a.module.as_deref())?;
            let client = Client::connect(&a.hub)?;
            client.expect("DELETE", &p, Some("*"), None)?;
            match &a.module {
                Some(m) => out!("deleted module {m} of device {}", a.id),
                None => out!("deleted device {}", a.id),
            }
        }
    }
    Ok(Outcome::Ok)
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// JSON lines: one device per line, in the registry's JSON shape (what `device export`
    /// writes); only deviceId is required.
    file: PathBuf,
    /// Parallel requests (each carries up to 100 devices).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Write here instead of standard output (refuses to overwrite).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Devices per bulk request (the API's limit).
const BATCH: usize = 100;

/// One line of an import file as a bulk entry (`importMode: create`).
fn import_entry(line: &str) -> std::result::Result<Value, String> {
    let d = serde_json::from_str::<certhub_core::DeviceInput>(line).map_err(|e| e.to_string())?;
    let id = d.device_id.clone().ok_or("deviceId is missing")?;
    certhub_core::DeviceId::new(id.clone()).map_err(|e| e.to_string())?;
    let mut e = json!({"id": id, "importMode": "create"});
    if let Some(s) = d.status {
        e["status"] = json!(s);
    }
    if let Some(r) = d.status_reason {
        e["statusReason"] = json!(r);
    }
    if let Some(a) = d.authentication {
        e["authentication"] = json!({
            "type": a.kind,
            "symmetricKey": a.symmetric_key,
            "x509Thumbprint": a.x509_thumbprint,
        });
    }
    if let Some(c) = d.capabilities {
        e["capabilities"] = json!(c);
    }
    Ok(e)
}

/// Checks every line first, so a bad line stops the import before anything is sent. Returns
/// the non-empty lines; they are turned into requests batch by batch, which keeps memory near
/// the file's size.
fn check_import<'t>(path: &std::path::Path, text: &'t str) -> Result<Vec<&'t str>> {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match import_entry(line) {
            Ok(_) => lines.push(line),
            Err(e) => problems.push(format!("{}:{}: {e}", path.display(), i + 1)),
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
        bail!(
            "{} bad line(s), nothing imported:\n  {}{}",
            problems.len(),
            shown.join("\n  "),
            if problems.len() > 5 { "\n  ..." } else { "" }
        );
    }
    Ok(lines)
}

fn import(a: ImportArgs) -> Result<Outcome> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("{}", a.file.display()))?;
    let lines = check_import(&a.file, &text)?;
    let client = Client::connect(&a.hub)?;
    let total = lines.len();
    let batches: Vec<&[&str]> = lines.chunks(BATCH).collect();
    let next = AtomicUsize::new(0);
    let created = AtomicUsize::new(0);
    let existing = AtomicUsize::new(0);
    let refused = std::sync::Mutex::new(Vec::<String>::new());
    let failure = std::sync::Mutex::new(None::<anyhow::Error>);
    let bar = crate::progress::bar("importing", total as u64);
    std::thread::scope(|s| {
        for _ in 0..a.parallel.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = batches.get(i) else { break };
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        break;
                    }
                    let body =
                        Value::Array(batch.iter().filter_map(|l| import_entry(l).ok()).collect());
                    match client.send("POST", &ApiPath::fixed("devices"), None, Some(&body)) {
                        Ok(ans) if ans.status == 200 || ans.status == 400 => {
                            let errors = ans.body["errors"].as_array().cloned().unwrap_or_default();
                            if ans.status == 400 && errors.is_empty() {
                                let m = ans.body["Message"].as_str().unwrap_or("bad request");
                                if let Ok(mut f) = failure.lock() {
                                    f.get_or_insert(anyhow::anyhow!(
                                        "the hub refused a batch: {m}"
                                    ));
                                }
                                break;
                            }
                            let mut exist = 0;
                            for e in &errors {
                                if e["errorCode"] == "DeviceAlreadyExists" {
                                    exist += 1;
                                } else if let Ok(mut r) = refused.lock() {
                                    r.push(format!(
                                        "{}: {}",
                                        e["deviceId"].as_str().unwrap_or("?"),
                                        e["errorStatus"].as_str().unwrap_or("?")
                                    ));
                                }
                            }
                            existing.fetch_add(exist, Ordering::Relaxed);
                            created.fetch_add(batch.len() - errors.len(), Ordering::Relaxed);
                            bar.inc(batch.len() as u64);
                        }
                        Ok(ans) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(anyhow::anyhow!(
                                    "the hub answered {}: {}",
                                    ans.status,
                                    ans.body["Message"].as_str().unwrap_or("")
                                ));
                            }
                            break;
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    let (created, existing) = (created.into_inner(), existing.into_inner());
    let refused = refused.into_inner().unwrap_or_default();
    out!(
        "imported {created} of {total} devices ({existing} already registered, {} refused)",
        refused.len()
    );
    for r in refused.iter().take(10) {
        out!("  refused {r}");
    }
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e.context(format!(
            "import stopped after {created} devices were acknowledged; run it again to import the rest (registered ones are skipped)"
        )));
    }
    if !refused.is_empty() {
        bail!("{} device(s) were refused", refused.len());
    }
    Ok(Outcome::Ok)
}

fn export(a: ExportArgs) -> Result<Outcome> {
    let client = Client::connect(&a.hub)?;
    let mut text = String::new();
    let mut after = String::new();
    let mut count = 0usize;
    loop {
        let page = ApiPath::fixed("devices")
            .query("top", 1000)
            .query("after", &after);
        let page = client.expect("GET", &page, None, None)?;
        let devices = page.as_array().cloned().unwrap_or_default();
        for d in &devices {
            text.push_str(&serde_json::to_string(d).unwrap_or_default());
            text.push('\n');
        }
        count += devices.len();
        match devices.last().and_then(|d| d["deviceId"].as_str()) {
            Some(last) if devices.len() == 1000 => after = last.to_string(),
            _ => break,
        }
    }
    match a.out {
        Some(path) => {
            crate::files::write_new_file(&path, text.as_bytes(), crate::files::Mode::Secret)?;
            eprintln!(
                "exported {count} devices to {} (mode 0600: it holds SAS keys)",
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(Outcome::Ok)
}
