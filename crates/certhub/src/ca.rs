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
    /// Certificate revocation lists: devices whose chains they revoke are refused
    /// (`certificate-revoked`) and their live sessions close (certhub's; Azure checks none).
    #[command(subcommand)]
    Crl(CrlCommand),
    /// The blast radius of a certificate (an intermediate, say): the registered devices whose
    /// last authenticated chain holds it, and which are connected now.
    Impact(CertArgs),
    /// Block a certificate of device chains without a CRL: every device whose chain holds it
    /// is refused (`certificate-blocked`) and its live sessions close. See `ca impact` first.
    Block(BlockArgs),
    /// Lift a block.
    Unblock(CertArgs),
    /// List the blocked certificates.
    Blocks(HubOnly),
    /// When device certificates and registered CAs expire: counts within 7, 30 and 90 days,
    /// a histogram by week, the soonest (a device counts by the certificate it last
    /// authenticated with).
    Expiry(HubOnly),
}

#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The certificate (PEM or DER).
    #[arg(long, conflicts_with_all = ["thumbprint", "issuer", "serial"])]
    cert: Option<PathBuf>,
    /// Its SHA-256 thumbprint (`certhub pki thumbprint` prints it).
    #[arg(long, conflicts_with_all = ["issuer", "serial"])]
    thumbprint: Option<String>,
    /// Its issuer's name as `certhub pki inspect` prints it (with --serial; `ca block` and
    /// `ca unblock` only).
    #[arg(long, requires = "serial")]
    issuer: Option<String>,
    /// Its serial number in hex (with --issuer).
    #[arg(long, requires = "issuer")]
    serial: Option<String>,
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    #[command(flatten)]
    which: CertArgs,
    /// Why, for the audit trail and the refusals.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Hold a CRL for a CA: of the CA itself, or of an intermediate below it (give that
    /// intermediate's certificate with --issuer-chain). A newer CRL of the same issuer replaces
    /// the older one.
    Upload(CrlUploadArgs),
    /// List the CRLs held for a CA.
    List(NameArgs),
    /// Stop holding a CRL (its issuer key as listed): what it revoked is accepted again.
    Delete(CrlDeleteArgs),
    /// Show or set what the hub does once a CA's CRL is past its nextUpdate: fail-closed after
    /// a grace period (the default, 24 h: the certificates it covers are refused as
    /// crl-expired), or fail-open (the last CRL keeps counting); and whether it fetches CRLs
    /// from the distribution points its devices' certificates name (the default), and whether
    /// it asks OCSP responders (off by default).
    Policy(CrlPolicyArgs),
    /// List the CRL distribution points the chains of a CA's devices named, with when each is
    /// fetched next and how the last fetch went.
    Sources(NameArgs),
}

#[derive(Debug, Args)]
pub struct CrlPolicyArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The CA's name in the hub.
    #[arg(long)]
    name: String,
    /// fail-closed or fail-open (without it, the policy is shown).
    #[arg(long, value_parser = ["fail-closed", "fail-open"])]
    stale: Option<String>,
    /// Hours after nextUpdate before fail-closed refuses (default 24).
    #[arg(long, requires = "stale")]
    grace_hours: Option<i64>,
    /// Whether the hub fetches CRLs from the distribution points the CA's devices'
    /// certificates name: on (the default) or off.
    #[arg(long, value_parser = ["on", "off"])]
    fetch: Option<String>,
    /// Whether the hub asks the OCSP responder each device's leaf names at connect (answers
    /// cached until their nextUpdate; without one, the stale policy decides): on or off (the
    /// default).
    #[arg(long, value_parser = ["on", "off"])]
    ocsp: Option<String>,
}

#[derive(Debug, Args)]
pub struct CrlUploadArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The CA's name in the hub.
    #[arg(long)]
    name: String,
    /// The CRL (PEM or DER), e.g. from `certhub pki crl` or `openssl ca -gencrl`.
    #[arg(long)]
    file: PathBuf,
    /// The CRL issuer's certificate, followed by any between it and the CA (PEM), when an
    /// intermediate below the CA issued the CRL; a `certhub pki` CA folder's cert.pem is it.
    #[arg(long)]
    issuer_chain: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CrlDeleteArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The CA's name in the hub.
    #[arg(long)]
    name: String,
    /// The CRL's issuer key (64 hex digits, `certhub ca crl list` shows it).
    #[arg(long)]
    issuer_key: String,
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
        CaCommand::Crl(c) => crl(c)?,
        CaCommand::Impact(a) => {
            let t = a.sha256()?.ok_or_else(|| {
                anyhow::anyhow!(
                    "give --cert FILE or --thumbprint SHA256: the impact is found by thumbprint"
                )
            })?;
            let client = Client::connect(&a.hub)?;
            let path = ApiPath::fixed("impact").query("thumbprint", &t);
            print_json(&client.expect("GET", &path, None, None)?);
        }
        CaCommand::Block(a) => {
            let mut body = a.which.body()?;
            if let Some(n) = &a.note {
                body["note"] = json!(n);
            }
            let client = Client::connect(&a.which.hub)?;
            let v = client.expect("PUT", &ApiPath::fixed("blocks"), None, Some(&body))?;
            print_json(&v);
        }
        CaCommand::Unblock(a) => {
            let client = Client::connect(&a.hub)?;
            let id = match a.sha256()? {
                Some(t) => t,
                None => {
                    // By issuer and serial: the hub lists the block's id.
                    let (issuer, serial) = (
                        a.issuer.clone().unwrap_or_default(),
                        a.serial.clone().unwrap_or_default(),
                    );
                    let norm = |s: &str| {
                        s.trim_start_matches("0x")
                            .replace(':', "")
                            .trim_start_matches('0')
                            .to_ascii_lowercase()
                    };
                    let list = client.expect("GET", &ApiPath::fixed("blocks"), None, None)?;
                    list["value"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|b| b["issuer"] == issuer.as_str() && b["thumbprint"] == "" && norm(b["serial"].as_str().unwrap_or("")) == norm(&serial))
                        .and_then(|b| b["id"].as_str().map(String::from))
                        .ok_or_else(|| anyhow::anyhow!("no block of issuer {issuer:?} serial {serial} is held (`certhub ca blocks` lists them)"))?
                }
            };
            let path = ApiPath::fixed("blocks").name(Names::Block, "--thumbprint", &id)?;
            client.expect("DELETE", &path, None, None)?;
            out!("unblocked {id}");
        }
        CaCommand::Expiry(a) => {
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &ApiPath::fixed("expiry"), None, None)?);
        }
        CaCommand::Blocks(a) => {
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &ApiPath::fixed("blocks"), None, None)?);
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

fn crl(cmd: CrlCommand) -> Result<()> {
    match cmd {
        CrlCommand::Upload(a) => {
            let path = ca_path(&a.name)?.then("crls");
            let bytes = crate::files::read_required(&a.file, "the CRL to upload")?;
            let crl = if bytes.starts_with(b"-----BEGIN") {
                String::from_utf8(bytes)
                    .with_context(|| format!("{}: the PEM is not text", a.file.display()))?
            } else {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            };
            let chain = match &a.issuer_chain {
                Some(p) => read_pem(p)?,
                None => String::new(),
            };
            let client = Client::connect(&a.hub)?;
            let mut body = json!({ "crl": crl });
            if !chain.is_empty() {
                body["issuerChain"] = json!(chain);
            }
            let v = client.expect("POST", &path, None, Some(&body))?;
            print_json(&v);
        }
        CrlCommand::Sources(a) => {
            let path = ca_path(&a.name)?.then("crlSources");
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &path, None, None)?);
        }
        CrlCommand::List(a) => {
            let path = ca_path(&a.name)?.then("crls");
            let client = Client::connect(&a.hub)?;
            print_json(&client.expect("GET", &path, None, None)?);
        }
        CrlCommand::Policy(a) => {
            let path = ca_path(&a.name)?.then("crlPolicy");
            let client = Client::connect(&a.hub)?;
            let v = match (&a.stale, &a.fetch, &a.ocsp) {
                (None, None, None) => client.expect("GET", &path, None, None)?,
                (stale, fetch, ocsp) => {
                    let mut body = match stale {
                        Some(stale) => {
                            let mut body = json!({ "staleCrl": stale });
                            if let Some(h) = a.grace_hours {
                                body["graceHours"] = json!(h);
                            }
                            body
                        }
                        // Only --fetch or --ocsp: the stale policy stays as it is.
                        None => {
                            let mut now = client.expect("GET", &path, None, None)?;
                            if let Some(o) = now.as_object_mut() {
                                o.remove("fetchDistributionPoints");
                                o.remove("ocsp");
                            }
                            now
                        }
                    };
                    if let Some(f) = fetch {
                        body["fetchDistributionPoints"] = json!(f == "on");
                    }
                    if let Some(o) = ocsp {
                        body["ocsp"] = json!(o == "on");
                    }
                    client.expect("PUT", &path, None, Some(&body))?
                }
            };
            print_json(&v);
        }
        CrlCommand::Delete(a) => {
            let path =
                ca_path(&a.name)?
                    .then("crls")
                    .name(Names::Crl, "--issuer-key", &a.issuer_key)?;
            let client = Client::connect(&a.hub)?;
            client.expect("DELETE", &path, None, None)?;
            out!(
                "CA {} no longer holds the CRL of issuer key {}",
                a.name,
                a.issuer_key
            );
        }
    }
    Ok(())
}

impl CertArgs {
    /// The SHA-256 thumbprint given (`--thumbprint`) or of the certificate (`--cert`).
    fn sha256(&self) -> Result<Option<String>> {
        if let Some(t) = &self.thumbprint {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.cert else {
            return Ok(None);
        };
        let bytes = crate::files::read_required(path, "the certificate")?;
        let cert = certhub_pki::read_certificates(&bytes)
            .with_context(|| format!("{}", path.display()))?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("{}: no certificate in it", path.display()))?;
        Ok(Some(certhub_pki::Thumbprints::of(&cert).sha256))
    }

    /// The block request body.
    fn body(&self) -> Result<serde_json::Value> {
        if let Some(path) = &self.cert {
            return Ok(json!({ "certificate": read_pem(path)? }));
        }
        if let Some(t) = &self.thumbprint {
            return Ok(json!({ "thumbprint": t }));
        }
        match (&self.issuer, &self.serial) {
            (Some(i), Some(s)) => Ok(json!({ "issuer": i, "serial": s })),
            _ => anyhow::bail!(
                "give --cert FILE, --thumbprint SHA256, or --issuer NAME --serial HEX"
            ),
        }
    }
}
