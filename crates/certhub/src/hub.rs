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
}

pub fn run(cmd: HubCommand) -> Result<Outcome> {
    match cmd {
        HubCommand::ConnectionString(a) => connection_string(a),
        HubCommand::ServerCa(a) => server_ca(a),
    }
}

fn require_data_dir(dir: &std::path::Path) -> Result<()> {
    if !dir.join("certhub.db").exists() {
        bail!(
            "{}: no hub data here; start the hub first (`certhub serve --data-dir {}`) or pass --data-dir",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn connection_string(a: ConnectionStringArgs) -> Result<Outcome> {
    let dir = &a.dir.data_dir;
    require_data_dir(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (policies, endpoint) = runtime.block_on(async {
        let store = crate::serve::open_store(dir, None).await?;
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
    let Some(policy) = policies.iter().find(|p| p.name == a.policy) else {
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no shared access policy {:?}; the hub has {}",
            a.policy,
            names.join(", ")
        );
    };
    out!("{}", policy.connection_string(&host));
    Ok(Outcome::Ok)
}

fn server_ca(a: DataDirArg) -> Result<Outcome> {
    let path = a.data_dir.join("tls").join("server-ca.pem");
    let pem = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: start the hub once (`certhub serve`) to create it",
            path.display()
        )
    })?;
    print!("{pem}");
    Ok(Outcome::Ok)
}
