//! `certhub pki demo supply-chain`: the whole Company-X -> Factory-Y -> Technician-Z -> widgets
//! flow, each party generating its own key and sending only a CSR to the one above, exactly as
//! the separate commands do it by hand.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use certhub_pki::{
    CaFiles, Issuer, KeyAlgorithm, Profile, SignOptions, create_request, create_root,
    parse_subject, sign_request,
};
use clap::{Args, Subcommand};
use time::OffsetDateTime;

use super::parse_algorithm;
use crate::Outcome;
use crate::files::{Mode, NewDir};

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Build Company-X (root) -> Factory-Y -> Technician-Z -> N device certificates via CSRs.
    SupplyChain(SupplyChainArgs),
}

#[derive(Debug, Args)]
pub struct SupplyChainArgs {
    /// The folder to create.
    #[arg(long)]
    out: PathBuf,
    /// How many device certificates to issue.
    #[arg(long, default_value_t = 10)]
    devices: u32,
    /// Device ids are PREFIX-0001, PREFIX-0002, ...
    #[arg(long, default_value = "smart-x-widget")]
    prefix: String,
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_algorithm)]
    algorithm: KeyAlgorithm,
}

pub fn run(cmd: DemoCommand) -> Result<Outcome> {
    match cmd {
        DemoCommand::SupplyChain(a) => supply_chain(a),
    }
}

fn supply_chain(a: SupplyChainArgs) -> Result<Outcome> {
    if a.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let started = Instant::now();
    let dir = NewDir::create_bulk(&a.out)?;
    let now = OffsetDateTime::now_utc();

    // Company-X makes its root.
    let root = create_root(
        &parse_subject("CN=Company-X Root CA, O=Company-X")?,
        a.algorithm,
        3650,
        None,
        now,
    )?;
    dir.mkdir("company-x")?;
    dir.mkdir("devices")?;
    dir.write("company-x/key.pem", root.key_pem.as_bytes(), Mode::Secret)?;
    dir.write("company-x/cert.pem", root.pem.as_bytes(), Mode::Public)?;
    out!("Company-X     created its root CA             company-x/");

    // Factory-Y asks Company-X; Technician-Z asks Factory-Y.
    let company_x = load(dir.path(), "company-x")?;
    intermediate(
        &dir,
        &company_x,
        "factory-y",
        "CN=Factory-Y CA, O=Company-X",
        1,
        a.algorithm,
        now,
    )?;
    out!("Factory-Y     sent a CSR, Company-X signed it  factory-y/");
    let factory_y = load(dir.path(), "factory-y")?;
    intermediate(
        &dir,
        &factory_y,
        "technician-z",
        "CN=Technician-Z CA, O=Company-X",
        0,
        a.algorithm,
        now,
    )?;
    out!("Technician-Z  sent a CSR, Factory-Y signed it  technician-z/");
    let technician_z = load(dir.path(), "technician-z")?;

    // Each widget makes its key and CSR; Technician-Z signs it. Spread over the cores.
    let width = a.devices.to_string().len().max(4);
    let ids: Vec<String> = (1..=a.devices)
        .map(|i| format!("{}-{i:0width$}", a.prefix))
        .collect();
    let bar = crate::progress::bar("widgets", u64::from(a.devices));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = ids.len().div_ceil(threads);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                let (dir, issuer, bar, failed) = (&dir, &technician_z, &bar, &failed);
                s.spawn(move || -> Result<()> {
                    for id in part {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let r = device(dir, issuer, id, a.algorithm, now);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                            return r;
                        }
                        bar.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread panicked")))
            })
            .collect()
    });
    bar.finish_and_clear();
    for r in results {
        r?;
    }
    out!(
        "widgets       {} device certificates, each signed from its own CSR  devices/",
        a.devices
    );
    let out = dir.commit()?;
    let first = &ids[0];
    out!(
        "done in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    out!("next:");
    out!(
        "  certhub pki verify --trust {0}/company-x/cert.pem --chain {0}/devices/{first}/chain.pem --device-id {first}",
        out.display()
    );
    Ok(Outcome::Ok)
}

fn load(base: &Path, name: &str) -> Result<Issuer> {
    let folder = base.join(name);
    let read = |f: &str| std::fs::read(folder.join(f)).with_context(|| format!("{name}/{f}"));
    let cert = read("cert.pem")?;
    let key = String::from_utf8(read("key.pem")?).context("key.pem is not text")?;
    let chain = read("chain.pem").ok();
    Ok(Issuer::load(CaFiles {
        cert: &cert,
        key: &key,
        chain: chain.as_deref(),
    })?)
}

fn intermediate(
    dir: &NewDir,
    issuer: &Issuer,
    name: &str,
    subject: &str,
    path_len: u8,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
) -> Result<()> {
    let req = create_request(&parse_subject(subject)?, algorithm)?;
    dir.mkdir(name)?;
    dir.write(
        &format!("{name}/key.pem"),
        req.key_pem.as_bytes(),
        Mode::Secret,
    )?;
    dir.write(
        &format!("{name}/request.csr"),
        req.pem.as_bytes(),
        Mode::Public,
    )?;
    let csr = certhub_pki::read_csr(req.pem.as_bytes())?;
    let options = SignOptions {
        days: None,
        path_len: Some(path_len),
        ..Default::default()
    };
    let cert = sign_request(issuer, &csr, Profile::Intermediate, &options, now)?;
    dir.write(
        &format!("{name}/cert.pem"),
        cert.pem.as_bytes(),
        Mode::Public,
    )?;
    dir.write(
        &format!("{name}/chain.pem"),
        cert.chain_pem.as_bytes(),
        Mode::Public,
    )?;
    Ok(())
}

fn device(
    dir: &NewDir,
    issuer: &Issuer,
    id: &str,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
) -> Result<()> {
    let req = create_request(&parse_subject(&format!("CN={id}"))?, algorithm)?;
    let base = format!("devices/{id}");
    dir.mkdir(&base)?;
    dir.write(
        &format!("{base}/key.pem"),
        req.key_pem.as_bytes(),
        Mode::Secret,
    )?;
    dir.write(
        &format!("{base}/request.csr"),
        req.pem.as_bytes(),
        Mode::Public,
    )?;
    let csr = certhub_pki::read_csr(req.pem.as_bytes())?;
    let cert = sign_request(issuer, &csr, Profile::Device, &SignOptions::default(), now)?;
    dir.write(
        &format!("{base}/cert.pem"),
        cert.pem.as_bytes(),
        Mode::Public,
    )?;
    dir.write(
        &format!("{base}/chain.pem"),
        cert.chain_pem.as_bytes(),
        Mode::Public,
    )?;
    Ok(())
}
