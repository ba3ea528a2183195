//! `certhub device ...`: the identity registry through the service API, in az's words.

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::Outcome;
use crate::client::{Client, HubArgs, print_json};

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

fn seg(s: &str) -> String {
    // Ids use a restricted ASCII set; escape the few characters that mean something in a URL.
    s.chars()
        .map(|c| match c {
            '%' | '#' | '?' | '/' | ' ' | '+' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn path(id: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("/devices/{}/modules/{}", seg(id), seg(m)),
        None => format!("/devices/{}", seg(id)),
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
            let client = Client::connect(&a.hub)?;
            let auth = authentication(a.auth_method, a.primary_thumbprint, a.secondary_thumbprint)?;
            let mut body = json!({"deviceId": a.id, "authentication": auth});
            match &a.module {
                Some(m) => body["moduleId"] = json!(m),
                None => body["status"] = json!(a.status.azure()),
            }
            print_json(&client.expect(
                "PUT",
                &path(&a.id, a.module.as_deref()),
                None,
                Some(&body),
            )?);
        }
        DeviceCommand::Show(a) => {
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &path(&a.id, a.module.as_deref()), None, None)?);
        }
        DeviceCommand::List(a) => {
            let client = Client::connect(&a.hub)?;
            let p = match &a.id {
                Some(id) => format!("{}/modules", path(id, None)),
                None => format!("/devices?top={}", a.top),
            };
            print_json(&client.expect("GET", &p, None, None)?);
        }
        DeviceCommand::Update(a) => {
            let client = Client::connect(&a.hub)?;
            let p = path(&a.id, None);
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
        DeviceCommand::Delete(a) => {
            let client = Client::connect(&a.hub)?;
            client.expect("DELETE", &path(&a.id, a.module.as_deref()), Some("*"), None)?;
            match &a.module {
                Some(m) => out!("deleted module {m} of device {}", a.id),
                None => out!("deleted device {}", a.id),
            }
        }
    }
    Ok(Outcome::Ok)
}
