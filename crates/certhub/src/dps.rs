//! `certhub dps ...`: the device provisioning service: the ID scope devices register under,
//! enrollment groups and individual enrollments, registration states. Through the DPS service
//! API with the `provisioningserviceowner` policy (its connection string from the data
//! directory, or `--connection-string`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::Outcome;
use crate::client::{ApiPath, Client, HubArgs, Names, print_json};

const POLICY: &str = "provisioningserviceowner";

#[derive(Debug, Subcommand)]
pub enum DpsCommand {
    /// Print the ID scope devices register under (`id_scope` of the provisioning SDKs).
    IdScope(HubOnly),
    /// Enrollment groups: many devices admitted by one CA or one symmetric key.
    #[command(subcommand)]
    EnrollmentGroup(GroupCommand),
    /// Individual enrollments: one device, by its certificate or a symmetric key.
    #[command(subcommand)]
    Enrollment(EnrollmentCommand),
    /// List registration states (all, or those of one enrollment group).
    Registrations(RegistrationsArgs),
    /// Show one device's registration state.
    Registration(RegistrationArgs),
    /// The hubs registrations are assigned to: this one and linked certhub hubs.
    #[command(subcommand)]
    Hub(LinkCommand),
}

#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Link another certhub hub (its service API is checked first).
    Add(Box<LinkArgs>),
    /// List the hubs, their weights and how many registrations each holds.
    List(HubOnly),
    /// Unlink a hub (its devices stay there).
    Remove(UnlinkArgs),
}

#[derive(Debug, Args)]
pub struct LinkArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The other hub's connection string: a policy with RegistryRead, RegistryWrite and
    /// ServiceConnect there (its `certhub hub connection-string`, iothubowner).
    #[arg(long)]
    hub_connection_string: String,
    /// The other hub's server CA (PEM; its `certhub hub server-ca`).
    #[arg(long)]
    hub_ca_file: PathBuf,
    /// The name devices reach it by (default: the connection string's host name).
    #[arg(long)]
    name: Option<String>,
    /// Its share of hashed and evenly weighted allocations (default 1).
    #[arg(long)]
    weight: Option<i64>,
    /// Allocation policies do not choose it; only enrollments that name it (--hub) do.
    #[arg(long)]
    no_allocation: bool,
}

#[derive(Debug, Args)]
pub struct UnlinkArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The linked hub's name (`certhub dps hub list`).
    #[arg(long)]
    name: String,
}

#[derive(Debug, Args)]
pub struct HubOnly {
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create or replace an enrollment group.
    Create(Box<GroupCreateArgs>),
    /// List enrollment groups.
    List(HubOnly),
    /// Show an enrollment group.
    Show(GroupId),
    /// Delete an enrollment group (the devices it registered stay on their hubs).
    Delete(GroupId),
}

#[derive(Debug, Subcommand)]
pub enum EnrollmentCommand {
    /// Create or replace an individual enrollment.
    Create(Box<EnrollmentCreateArgs>),
    /// List individual enrollments.
    List(HubOnly),
    /// Show an individual enrollment.
    Show(RegistrationId),
    /// Delete an individual enrollment.
    Delete(RegistrationId),
}

#[derive(Debug, Args)]
pub struct GroupId {
    #[command(flatten)]
    hub: HubArgs,
    /// The enrollment group's id.
    #[arg(long)]
    id: String,
}

#[derive(Debug, Args)]
pub struct RegistrationId {
    #[command(flatten)]
    hub: HubArgs,
    /// The registration id (the device certificate's CN).
    #[arg(long = "registration-id")]
    id: String,
}

/// What every enrollment can say besides its attestation.
#[derive(Debug, Args)]
pub struct EnrollmentOptions {
    /// Register nobody through it until enabled again.
    #[arg(long)]
    disabled: bool,
    /// hashed (the default: a stable spread weighted by the hubs' weights), evenlyWeighted
    /// (the emptiest hub first) or static (the one hub of --hub).
    #[arg(long)]
    allocation: Option<String>,
    /// A hub it may assign to (repeat; none: every hub of this service).
    #[arg(long = "hub")]
    hubs: Vec<String>,
    /// Initial twin tags, a JSON object.
    #[arg(long)]
    tags: Option<String>,
    /// Initial desired properties, a JSON object.
    #[arg(long)]
    desired: Option<String>,
    /// The devices are IoT Edge devices.
    #[arg(long)]
    iot_edge: bool,
    /// On re-registration keep the device on its hub (no new assignment).
    #[arg(long)]
    keep_hub: bool,
    /// On re-registration reset the device's twin to the initial one.
    #[arg(long)]
    reset_device_data: bool,
}

#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The enrollment group's id.
    #[arg(long)]
    id: String,
    /// X.509: admit devices whose chain reaches this CA registered on the hub (`certhub ca
    /// list`), root or intermediate; it admits no one until its possession is proved.
    #[arg(long, conflicts_with_all = ["signing_cert", "symmetric_key"])]
    ca: Option<String>,
    /// X.509: the group's own signing certificate (PEM); the hub registers it as a CA named
    /// dps-{id}, which admits no one until its possession is proved.
    #[arg(long, conflicts_with = "symmetric_key")]
    signing_cert: Option<PathBuf>,
    /// Symmetric key: devices sign with keys derived from the group's (generated unless
    /// --primary-key is given).
    #[arg(long)]
    symmetric_key: bool,
    /// The group's primary key (base64), with --symmetric-key.
    #[arg(long, requires = "symmetric_key")]
    primary_key: Option<String>,
    #[command(flatten)]
    options: EnrollmentOptions,
}

#[derive(Debug, Args)]
pub struct EnrollmentCreateArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The registration id (the CN of the device's certificate).
    #[arg(long = "registration-id")]
    id: String,
    /// The device id on its hub (default: the registration id).
    #[arg(long)]
    device_id: Option<String>,
    /// X.509: the device's certificate (PEM).
    #[arg(long, conflicts_with_all = ["thumbprint", "symmetric_key"])]
    cert: Option<PathBuf>,
    /// X.509: the SHA-256 (or SHA-1) thumbprint of the device's certificate.
    #[arg(long, conflicts_with = "symmetric_key")]
    thumbprint: Option<String>,
    /// Symmetric key: generated unless --primary-key is given.
    #[arg(long)]
    symmetric_key: bool,
    /// The device's primary key (base64), with --symmetric-key.
    #[arg(long, requires = "symmetric_key")]
    primary_key: Option<String>,
    #[command(flatten)]
    options: EnrollmentOptions,
}

#[derive(Debug, Args)]
pub struct RegistrationsArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Only the registrations made through this enrollment group.
    #[arg(long)]
    group: Option<String>,
}

#[derive(Debug, Args)]
pub struct RegistrationArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The registration id.
    #[arg(long = "registration-id")]
    id: String,
    /// Delete the registration state (the device stays on its hub).
    #[arg(long)]
    delete: bool,
}

pub fn run(cmd: DpsCommand) -> Result<Outcome> {
    match cmd {
        DpsCommand::IdScope(a) => {
            let c = Client::connect_as(&a.hub, POLICY)?;
            let v = c.expect("GET", &ApiPath::fixed("provisioning"), None, None)?;
            out!("{}", v["idScope"].as_str().unwrap_or_default());
        }
        DpsCommand::EnrollmentGroup(g) => match g {
            GroupCommand::Create(a) => {
                let c = Client::connect_as(&a.hub, POLICY)?;
                let attestation = if let Some(ca) = &a.ca {
                    json!({"type": "x509", "x509": {"caReferences": {"primary": ca}}})
                } else if let Some(file) = &a.signing_cert {
                    let pem = std::fs::read_to_string(file)
                        .with_context(|| format!("{}", file.display()))?;
                    json!({"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pem}}}})
                } else if a.symmetric_key {
                    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": a.primary_key}})
                } else {
                    bail!(
                        "say how devices prove themselves: --ca NAME, --signing-cert FILE or --symmetric-key"
                    );
                };
                let body = enrollment_body("enrollmentGroupId", &a.id, attestation, &a.options)?;
                let path = group_path(&a.id)?;
                print_json(&c.expect("PUT", &path, None, Some(&body))?);
            }
            GroupCommand::List(a) => list(&a.hub, "enrollmentGroups")?,
            GroupCommand::Show(a) => show(&a.hub, &group_path(&a.id)?)?,
            GroupCommand::Delete(a) => {
                delete(&a.hub, &group_path(&a.id)?)?;
                out!("deleted enrollment group {}", a.id);
            }
        },
        DpsCommand::Enrollment(e) => match e {
            EnrollmentCommand::Create(a) => {
                let c = Client::connect_as(&a.hub, POLICY)?;
                let attestation = if let Some(file) = &a.cert {
                    let pem = std::fs::read_to_string(file)
                        .with_context(|| format!("{}", file.display()))?;
                    json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}})
                } else if let Some(t) = &a.thumbprint {
                    json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"info": {"sha256Thumbprint": t}}}}})
                } else if a.symmetric_key {
                    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": a.primary_key}})
                } else {
                    bail!(
                        "say how the device proves itself: --cert FILE, --thumbprint HEX or --symmetric-key"
                    );
                };
                let mut body = enrollment_body("registrationId", &a.id, attestation, &a.options)?;
                if let Some(d) = &a.device_id {
                    body["deviceId"] = json!(d);
                }
                let path = enrollment_path(&a.id)?;
                print_json(&c.expect("PUT", &path, None, Some(&body))?);
            }
            EnrollmentCommand::List(a) => list(&a.hub, "enrollments")?,
            EnrollmentCommand::Show(a) => show(&a.hub, &enrollment_path(&a.id)?)?,
            EnrollmentCommand::Delete(a) => {
                delete(&a.hub, &enrollment_path(&a.id)?)?;
                out!("deleted individual enrollment {}", a.id);
            }
        },
        DpsCommand::Registrations(a) => {
            let c = Client::connect_as(&a.hub, POLICY)?;
            // The registrations of a group, or of individual enrollments ('' is their group).
            let groups: Vec<String> = match &a.group {
                Some(g) => vec![g.clone()],
                None => {
                    let mut all = pages(&c, &ApiPath::fixed("enrollmentGroups/query"))?
                        .iter()
                        .filter_map(|g| g["enrollmentGroupId"].as_str().map(str::to_string))
                        .collect::<Vec<_>>();
                    all.push(String::new());
                    all
                }
            };
            for g in groups {
                let path = if g.is_empty() {
                    // Individual enrollments' registrations, one by one.
                    for e in pages(&c, &ApiPath::fixed("enrollments/query"))? {
                        let id = e["registrationId"].as_str().unwrap_or_default();
                        let path = ApiPath::fixed("registrations").name(
                            Names::Registration,
                            "registrationId",
                            id,
                        )?;
                        let answer = c.send("GET", &path, None, None)?;
                        if answer.status == 200 {
                            registration_line(&answer.body);
                        }
                    }
                    continue;
                } else {
                    ApiPath::fixed("registrations")
                        .name(Names::EnrollmentGroup, "--group", &g)?
                        .then("query")
                };
                for r in pages(&c, &path)? {
                    registration_line(&r);
                }
            }
        }
        DpsCommand::Hub(LinkCommand::Add(a)) => {
            let c = Client::connect_as(&a.hub, POLICY)?;
            let ca = std::fs::read_to_string(&a.hub_ca_file)
                .with_context(|| format!("{}", a.hub_ca_file.display()))?;
            let name = match &a.name {
                Some(n) => n.clone(),
                None => certhub_core::ServiceConnectionString::parse(&a.hub_connection_string)
                    .map_err(|e| anyhow::anyhow!("--hub-connection-string: {e}"))?
                    .host
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            let mut body = json!({
                "connectionString": a.hub_connection_string,
                "serverCa": ca,
                "applyAllocationPolicy": !a.no_allocation,
            });
            if let Some(w) = a.weight {
                body["allocationWeight"] = json!(w);
            }
            let path = ApiPath::fixed("provisioning/linkedHubs").name(
                Names::LinkedHub,
                "--name",
                &name,
            )?;
            print_json(&c.expect("PUT", &path, None, Some(&body))?);
        }
        DpsCommand::Hub(LinkCommand::List(a)) => {
            let c = Client::connect_as(&a.hub, POLICY)?;
            let v = c.expect("GET", &ApiPath::fixed("provisioning"), None, None)?;
            for h in v["iotHubs"].as_array().into_iter().flatten() {
                out!(
                    "{}\tweight {}\t{}\t{} registrations",
                    h["name"].as_str().unwrap_or_default(),
                    h["allocationWeight"],
                    if h["linked"] == true {
                        "linked"
                    } else {
                        "this hub"
                    },
                    h["registrations"],
                );
            }
        }
        DpsCommand::Hub(LinkCommand::Remove(a)) => {
            let path = ApiPath::fixed("provisioning/linkedHubs").name(
                Names::LinkedHub,
                "--name",
                &a.name,
            )?;
            delete(&a.hub, &path)?;
            out!("unlinked {}", a.name);
        }
        DpsCommand::Registration(a) => {
            let c = Client::connect_as(&a.hub, POLICY)?;
            let path = ApiPath::fixed("registrations").name(
                Names::Registration,
                "--registration-id",
                &a.id,
            )?;
            if a.delete {
                c.expect("DELETE", &path, None, None)?;
                out!("deleted the registration state of {}", a.id);
            } else {
                print_json(&c.expect("GET", &path, None, None)?);
            }
        }
    }
    Ok(Outcome::Ok)
}

fn group_path(id: &str) -> Result<ApiPath> {
    ApiPath::fixed("enrollmentGroups").name(Names::EnrollmentGroup, "--id", id)
}

fn enrollment_path(id: &str) -> Result<ApiPath> {
    ApiPath::fixed("enrollments").name(Names::Registration, "--registration-id", id)
}

fn show(hub: &HubArgs, path: &ApiPath) -> Result<()> {
    let c = Client::connect_as(hub, POLICY)?;
    print_json(&c.expect("GET", path, None, None)?);
    Ok(())
}

fn delete(hub: &HubArgs, path: &ApiPath) -> Result<()> {
    let c = Client::connect_as(hub, POLICY)?;
    c.expect("DELETE", path, None, None)?;
    Ok(())
}

fn registration_line(r: &Value) {
    out!(
        "{}\t{}\t{}\t{}\t{}",
        r["registrationId"].as_str().unwrap_or_default(),
        r["status"].as_str().unwrap_or_default(),
        r["assignedHub"].as_str().unwrap_or_default(),
        r["deviceId"].as_str().unwrap_or_default(),
        r["lastUpdatedDateTimeUtc"].as_str().unwrap_or_default(),
    );
}

fn enrollment_body(
    id_field: &str,
    id: &str,
    attestation: Value,
    o: &EnrollmentOptions,
) -> Result<Value> {
    let object = |flag: &str, text: &Option<String>| -> Result<Value> {
        match text {
            None => Ok(json!({})),
            Some(t) => {
                let v: Value = serde_json::from_str(t).with_context(|| {
                    format!("{flag} must be a JSON object, e.g. '{{\"line\": 3}}'")
                })?;
                if !v.is_object() {
                    bail!("{flag} must be a JSON object, e.g. '{{\"line\": 3}}'");
                }
                Ok(v)
            }
        }
    };
    let mut body = json!({
        id_field: id,
        "attestation": attestation,
        "provisioningStatus": if o.disabled { "disabled" } else { "enabled" },
        "capabilities": {"iotEdge": o.iot_edge},
        "reprovisionPolicy": {"updateHubAssignment": !o.keep_hub, "migrateDeviceData": !o.reset_device_data},
        "initialTwin": {"tags": object("--tags", &o.tags)?, "properties": {"desired": object("--desired", &o.desired)?}},
    });
    if let Some(p) = &o.allocation {
        body["allocationPolicy"] = json!(p);
    }
    if !o.hubs.is_empty() {
        body["iotHubs"] = json!(o.hubs);
    }
    Ok(body)
}

/// Every item of a paged query.
fn pages(c: &Client, path: &ApiPath) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let answer = c.send_paged(path, continuation.as_deref(), &json!({"query": "*"}))?;
        if let Some(items) = answer.body.as_array() {
            out.extend(items.iter().cloned());
        }
        match answer.continuation {
            Some(next) if !next.is_empty() => continuation = Some(next),
            _ => return Ok(out),
        }
    }
}

fn list(hub: &HubArgs, what: &'static str) -> Result<()> {
    let c = Client::connect_as(hub, POLICY)?;
    let path = match what {
        "enrollmentGroups" => ApiPath::fixed("enrollmentGroups/query"),
        _ => ApiPath::fixed("enrollments/query"),
    };
    for e in pages(&c, &path)? {
        let id = e["enrollmentGroupId"]
            .as_str()
            .or(e["registrationId"].as_str())
            .unwrap_or_default();
        let attestation = e["attestation"]["type"].as_str().unwrap_or_default();
        let ca = e["attestation"]["x509"]["caReferences"]["primary"]
            .as_str()
            .unwrap_or_default();
        out!(
            "{id}\t{}\t{attestation}{}\t{}",
            e["provisioningStatus"].as_str().unwrap_or_default(),
            if ca.is_empty() {
                String::new()
            } else {
                format!(" ({ca})")
            },
            e["allocationPolicy"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}
