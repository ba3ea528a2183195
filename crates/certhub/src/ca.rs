//! `certhub ca ...`: register CA certificates and prove possession of their keys.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs, Names, print_json};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Register a CA certificate (root or intermediate; PEM or DER). It starts unverified.
    Upload(UploadArgs),
    /// Get a verification code to prove possession of the CA's private key.
    VerificationCode(NameArgs),
    /// Send the verification certificate (CN = code, signed by the CA's key).
    Verify(VerifyArgs),
    /// List registered CAs.
    List(HubOnly),
    /// Show a registered CA.
    Show(NameArgs),
    /// Delete a registered CA.
    Delete(NameArgs),
    /// Just-in-time registration: an unknown device whose chain reaches this verified CA is
    /// created on its first connection (certhub's, like AWS IoT's JITR; audited).
    Jitr(JitrArgs),
}

#[derive(Debug, Args)]
pub struct JitrArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The CA's name in the hub.
    #[arg(long)]
    name: String,
    /// The device ids it may create (`*` any run of characters, `?` one; default `*`).
    #[arg(long, conflicts_with = "off")]
    allow: Option<String>,
    /// Turn it off (devices it created stay).
    #[arg(long)]
    off: bool,
}

#[derive(Debug, Args)]
pub struct HubOnly {
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The CA's name in the hub (A-Z a-z 0-9 - . _, up to 64).
    #[arg(long)]
    name: String,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    name: String,
    /// The CA certificate file. Never a private key.
    #[arg(long)]
    file: PathBuf,
    /// Register it as verified, skipping proof of possession (owner policy only; audited).
    #[arg(long)]
    verified: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    name: String,
    /// The verification certificate (`certhub pki verification-cert` makes it).
    #[arg(long)]
    file: PathBuf,
}

/// `/certificates/{name}`, the name given with `--name`.
fn ca_path(name: &str) -> Result<ApiPath> {
    ApiPath::fixed("certificates").name(Names::Ca, "--name", name)
}

fn read_pem(path: &std::path::Path) -> Result<String> {
    let bytes = crate::files::read(path)?;
    // Reading it here too gives a local, file-named error before anything is sent.
    let certs =
        certhub_pki::read_certificates(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(certs.iter().map(|c| certhub_pki::to_pem(c)).collect())
}

pub fn run(cmd: CaCommand) -> Result<Outcome> {
    match cmd {
        CaCommand::Upload(a) => {
            let path = ca_path(&a.name)?;
            let pem = read_pem(&a.file)?;
            let client = Client::connect(&a.hub)?;
            let body = json!({"properties": {"certificate": pem, "isVerified": a.verified}});
            let v = client.expect("PUT", &path, None, Some(&body))?;
            print_json(&v);
            if !a.verified {
                eprintln!(
                    "next: certhub ca verification-code --name {}  (then prove possession of the CA's key)",
                    a.name
                );
            }
        }
        CaCommand::VerificationCode(a) => {
            let path = ca_path(&a.name)?.then("generateVerificationCode");
            let client = Client::connect(&a.hub)?;
            let v = client.expect("POST", &path, Some("*"), None)?;
            let code = v["properties"]["verificationCode"]
                .as_str()
                .unwrap_or_default();
            out!("{code}");
            eprintln!(
                "valid until {}. Where the CA's key lives:\n  certhub pki verification-cert --issuer <ca-folder> --code {code} --out pop.pem\n  certhub ca verify --name {} --file pop.pem",
                v["properties"]["verificationCodeExpiry"]
                    .as_str()
                    .unwrap_or("?"),
                a.name
            );
        }
        CaCommand::Verify(a) => {
            let path = ca_path(&a.name)?.then("verify");
            let pem = read_pem(&a.file)?;
            let client = Client::connect(&a.hub)?;
            let v = client.expect("POST", &path, Some("*"), Some(&json!({"certificate": pem})))?;
            print_json(&v);
        }
        CaCommand::List(a) => {
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &ApiPath::fixed("certificates"), None, None)?);
        }
        CaCommand::Show(a) => {
            let path = ca_path(&a.name)?;
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &path, None, None)?);
        }
        CaCommand::Delete(a) => {
            let path = ca_path(&a.name)?;
            let client = Client::connect(&a.hub)?;
            client.expect("DELETE", &path, Some("*"), None)?;
            out!("deleted CA {}", a.name);
        }
        CaCommand::Jitr(a) => {
            let path = ca_path(&a.name)?.then("jitr");
            let client = Client::connect(&a.hub)?;
            if a.off {
                client.expect("DELETE", &path, None, None)?;
                out!("just-in-time registration is off for CA {}", a.name);
            } else {
                let pattern = a.allow.clone().unwrap_or_else(|| "*".into());
                client.expect(
                    "PUT",
                    &path,
                    None,
                    Some(&json!({"deviceIdPattern": pattern})),
                )?;
                out!(
                    "just-in-time registration is on for CA {}: unknown devices whose chain reaches it and whose id matches {pattern:?} are created on their first connection",
                    a.name
                );
            }
        }
    }
    Ok(Outcome::Ok)
}
