//! `certhub hub ...`: local commands on the hub's own machine, reading its data directory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// Print a connection string for a shared access policy (default iothubowner).
    ConnectionString(ConnectionStringArgs),
    /// Print the server CA certificate (PEM) that clients must trust.
    ServerCa(DataDirArg),
    /// Show the hub's settings (authentication switches, minimum TLS version, file upload).
    Show(ShowArgs),
    /// Change hub settings, e.g. `--disable-device-sas true`.
    Set(SetArgs),
    /// Show the server certificate the hub presents now.
    ServerCert(ShowArgs),
    /// Replace the hub's server certificate with a new one (a new key) from its server CA:
    /// presented from the next handshake on; connected devices stay connected, and clients
    /// keep trusting the same server-ca.pem. --new-ca starts a server CA rollover instead;
    /// --switch-ca ends it.
    RotateServerCert(RotateArgs),
    /// The twin paths queries answer from an index: `list`, `add PATH`, `remove PATH`.
    /// deviceId and status are always indexed; index the tags and properties your queries
    /// filter on (a query answers `x-certhub-query-plan: scanned` when it read every twin).
    #[command(subcommand)]
    TwinIndex(TwinIndexCommand),
}

#[derive(Debug, Subcommand)]
pub enum TwinIndexCommand {
    /// List the indexed paths.
    List(ShowArgs),
    /// Index a path, e.g. `tags.site` or `properties.reported.firmware`. Building it reads
    /// every twin once (on SQLite, twin writes wait meanwhile).
    Add(TwinIndexArgs),
    /// Stop indexing a path.
    Remove(TwinIndexArgs),
}

#[derive(Debug, Args)]
pub struct TwinIndexArgs {
    #[command(flatten)]
    hub: crate::client::HubArgs,
    /// tags.NAME, properties.desired.NAME or properties.reported.NAME (nested: more .NAME)
    path: String,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    hub: crate::client::HubArgs,
    /// Start a server CA rollover: a new server CA waits beside the current one, which still
    /// issues the certificate the hub presents; give clients both (`certhub hub server-ca`
    /// prints both) at their own pace.
    #[arg(long, conflicts_with = "switch_ca")]
    new_ca: bool,
    /// End the rollover: the new CA issues the certificate the hub presents from the next
    /// handshake on; clients that trust only the previous CA can no longer connect.
    #[arg(long)]
    switch_ca: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    hub: crate::client::HubArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    hub: crate::client::HubArgs,
    /// Refuse device-scoped SAS tokens (modules excluded).
    #[arg(long)]
    disable_device_sas: Option<bool>,
    /// Refuse module-scoped SAS tokens.
    #[arg(long)]
    disable_module_sas: Option<bool>,
    /// Refuse tokens signed with shared access policy keys (including the API's own).
    #[arg(long)]
    disable_local_auth: Option<bool>,
    /// Lowest TLS version devices and service clients may use: 1.2 or 1.3.
    #[arg(long)]
    min_tls_version: Option<String>,
    /// Devices authenticate with X.509 certificates only: turns on --disable-device-sas,
    /// --disable-module-sas and --disable-local-auth at once. Shared access policy tokens
    /// (this CLI's included) are refused afterwards; the way back is `certhub hub set --local
    /// --disable-local-auth false` on the hub's machine.
    #[arg(long)]
    x509_only: bool,
    /// Tell services of every upload a device reports as successful (file notifications).
    #[arg(long)]
    file_upload_notifications: Option<bool>,
    /// How long a blob URI given to a device for an upload stays valid (1 to 86400 s).
    #[arg(long)]
    file_upload_sas_ttl_seconds: Option<i64>,
    /// Uploads a device may have open at once (1 to 1000).
    #[arg(long)]
    file_upload_max_concurrent: Option<i64>,
    /// The largest file a device may upload, in bytes.
    #[arg(long)]
    file_upload_max_bytes: Option<i64>,
    /// Let the hub index a tag or property path on its own after queries filtering on it
    /// read every twin of a large registry a few times (on by default).
    #[arg(long)]
    twin_auto_index: Option<bool>,
    /// On the hub's machine: write the settings into its data directory directly instead of
    /// through the API (the way back after `--disable-local-auth true`). A running hub picks
    /// them up within a second. Audited as "local".
    #[arg(long)]
    local: bool,
}

#[derive(Debug, Args)]
pub struct DataDirArg {
    /// The hub's data directory.
    #[arg(long, env = "CERTHUB_DATA_DIR", default_value = "certhub-data")]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConnectionStringArgs {
    #[command(flatten)]
    dir: DataDirArg,
    /// The shared access policy: iothubowner, service, device, registryRead, registryReadWrite.
    #[arg(long, default_value = "iothubowner")]
    policy: String,
    /// Print the Event Hubs-compatible endpoint's connection string instead
    /// (`Endpoint=sb://{host}/;...;EntityPath={entity}`), for telemetry readers written with
    /// the Event Hubs SDKs (they dial AMQP on port 5671 of the host).
    #[arg(long)]
    event_hub: bool,
}

pub fn run(cmd: HubCommand) -> Result<Outcome> {
    match cmd {
        HubCommand::TwinIndex(c) => twin_index(c),
        HubCommand::ConnectionString(a) => connection_string(a),
        HubCommand::ServerCa(a) => server_ca(a),
        HubCommand::Show(a) => {
            let client = crate::client::Client::connect(&a.hub)?;
            crate::client::print_json(&client.expect(
                "GET",
                &crate::client::ApiPath::fixed("settings"),
                None,
                None,
            )?);
            Ok(Outcome::Ok)
        }
        HubCommand::ServerCert(a) => {
            let client = crate::client::Client::connect(&a.hub)?;
            crate::client::print_json(&client.expect(
                "GET",
                &crate::client::ApiPath::fixed("serverCertificate"),
                None,
                None,
            )?);
            Ok(Outcome::Ok)
        }
        HubCommand::RotateServerCert(a) => {
            let client = crate::client::Client::connect(&a.hub)?;
            let path = match (a.new_ca, a.switch_ca) {
                (true, _) => "serverCertificate/newCa",
                (_, true) => "serverCertificate/switchCa",
                _ => "serverCertificate/rotate",
            };
            crate::client::print_json(&client.expect(
                "POST",
                &crate::client::ApiPath::fixed(path),
                None,
                None,
            )?);
            Ok(Outcome::Ok)
        }
        HubCommand::Set(a) => {
            let mut patch = serde_json::Map::new();
            if let Some(v) = a.disable_device_sas {
                patch.insert("disableDeviceSAS".into(), v.into());
            }
            if let Some(v) = a.disable_module_sas {
                patch.insert("disableModuleSAS".into(), v.into());
            }
            if let Some(v) = a.disable_local_auth {
                patch.insert("disableLocalAuth".into(), v.into());
            }
            if let Some(v) = a.min_tls_version {
                patch.insert("minTlsVersion".into(), v.into());
            }
            if a.x509_only {
                patch.insert("x509Only".into(), true.into());
            }
            if let Some(v) = a.file_upload_notifications {
                patch.insert("enableFileUploadNotifications".into(), v.into());
            }
            if let Some(v) = a.twin_auto_index {
                patch.insert("twinAutoIndex".into(), v.into());
            }
            for (name, value) in [
                ("fileUploadSasTtlSeconds", a.file_upload_sas_ttl_seconds),
                ("fileUploadMaxConcurrent", a.file_upload_max_concurrent),
                ("fileUploadMaxBytes", a.file_upload_max_bytes),
            ] {
                if let Some(v) = value {
                    patch.insert(name.into(), v.into());
                }
            }
            if patch.is_empty() {
                bail!(
                    "nothing to set: give at least one of --x509-only, --disable-device-sas, --disable-module-sas, --disable-local-auth, --min-tls-version, --file-upload-notifications, --file-upload-sas-ttl-seconds, --file-upload-max-concurrent, --file-upload-max-bytes, --twin-auto-index"
                );
            }
            if a.x509_only {
                eprintln!(
                    "note: with --x509-only, tokens signed with shared access policy keys are refused, this CLI's included; on the hub's machine, `certhub hub set --local --disable-local-auth false` turns them back on"
                );
            }
            if a.local {
                return set_local(&a.hub, patch);
            }
            let client = crate::client::Client::connect(&a.hub)?;
            let v = client.expect(
                "PATCH",
                &crate::client::ApiPath::fixed("settings"),
                None,
                Some(&patch.into()),
            )?;
            crate::client::print_json(&v);
            Ok(Outcome::Ok)
        }
    }
}

fn require_data_dir(dir: &std::path::Path) -> Result<()> {
    if !dir.join("certhub.db").exists() && crate::serve::recorded_database_url(dir).is_none() {
        bail!(
            "{}: no hub data here; start the hub first (`certhub serve --data-dir {}`) or pass --data-dir",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The connection string of `policy`, read from a local hub's data directory.
pub fn local_connection_string(dir: &std::path::Path, policy: &str) -> Result<String> {
    require_data_dir(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (policies, endpoint) = runtime.block_on(async {
        let store =
            crate::serve::open_store(dir, crate::serve::recorded_database_url(dir).as_deref())
                .await?;
        let policies = store.policies().await?;
        let endpoint = store.endpoint().await?;
        store.close().await;
        anyhow::Ok((policies, endpoint))
    })?;
    let Some(host) = endpoint else {
        bail!(
            "the hub in {} has never run; start it once with `certhub serve`",
            dir.display()
        );
    };
    let Some(p) = policies.iter().find(|p| p.name == policy) else {
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no shared access policy {policy:?}; the hub has {}",
            names.join(", ")
        );
    };
    Ok(p.connection_string(&host))
}

fn connection_string(a: ConnectionStringArgs) -> Result<Outcome> {
    let cs = local_connection_string(&a.dir.data_dir, &a.policy)?;
    if !a.event_hub {
        out!("{cs}");
        return Ok(Outcome::Ok);
    }
    out!("{}", event_hub_connection_string(&cs)?);
    Ok(Outcome::Ok)
}

/// The Event Hubs form of an IoT Hub connection string: the same policy and key, the host
/// without its port (Event Hubs clients dial AMQP on 5671), the hub's entity.
fn event_hub_connection_string(cs: &str) -> Result<String> {
    let part = |name: &str| {
        cs.split(';')
            .find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
            .with_context(|| format!("the connection string has no {name}"))
    };
    let host = part("HostName")?;
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host.clone(),
    };
    Ok(format!(
        "Endpoint=sb://{bare}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath={}",
        part("SharedAccessKeyName")?,
        part("SharedAccessKey")?,
        certhub_server::amqp::eventhub::entity_name(&host)
    ))
}

fn server_ca(a: DataDirArg) -> Result<Outcome> {
    let path = a.data_dir.join("tls").join("server-ca.pem");
    // During a server CA rollover, the previous CA too.
    let pem = certhub_server::tls::ServerIdentity::trust_bundle(&a.data_dir.join("tls"))
        .with_context(|| {
            format!(
                "{}: start the hub once (`certhub serve`) to create it",
                path.display()
            )
        })?;
    print!("{pem}");
    Ok(Outcome::Ok)
}

fn set_local(
    hub: &crate::client::HubArgs,
    patch: serde_json::Map<String, serde_json::Value>,
) -> Result<Outcome> {
    let dir = hub.data_dir();
    require_data_dir(dir)?;
    let patch: certhub_core::SettingsPatch = serde_json::from_value(patch.into())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let after = runtime.block_on(async {
        let store =
            crate::serve::open_store(dir, crate::serve::recorded_database_url(dir).as_deref())
                .await?;
        let before = store.settings().await?;
        let after = patch.apply(&before).map_err(|e| anyhow::anyhow!(e))?;
        store.put_settings(&after).await?;
        let detail = serde_json::to_string(&after)?;
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        store
            .append_audit(&certhub_store::AuditRecord::new(
                now,
                "local",
                "settings.update",
                "settings",
                "ok",
                &detail,
            ))
            .await?;
        store.close().await;
        anyhow::Ok(after)
    })?;
    crate::client::print_json(&serde_json::to_value(after)?);
    Ok(Outcome::Ok)
}

fn twin_index(cmd: TwinIndexCommand) -> Result<Outcome> {
    use crate::client::{ApiPath, Client, Names};
    match cmd {
        TwinIndexCommand::List(a) => {
            let client = Client::connect(&a.hub)?;
            let list = client.expect("GET", &ApiPath::fixed("twinIndexes"), None, None)?;
            for i in list["value"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    i["path"].as_str().unwrap_or_default(),
                    i["created"].as_str().unwrap_or_default(),
                    i["origin"].as_str().unwrap_or_default()
                );
            }
        }
        TwinIndexCommand::Add(a) => {
            let client = Client::connect(&a.hub)?;
            let path = ApiPath::fixed("twinIndexes").name(Names::TwinPath, "PATH", &a.path)?;
            let answer = client.expect_answer("PUT", &path, None, None)?;
            if answer.status == 201 {
                println!("indexed {}", a.path);
            } else {
                println!("{} was indexed already", a.path);
            }
        }
        TwinIndexCommand::Remove(a) => {
            let client = Client::connect(&a.hub)?;
            let path = ApiPath::fixed("twinIndexes").name(Names::TwinPath, "PATH", &a.path)?;
            client.expect("DELETE", &path, None, None)?;
            println!(
                "no longer indexed: {} (nor will the hub index it on its own, until it is added again)",
                a.path
            );
        }
    }
    Ok(Outcome::Ok)
}
