//! `certhub pki ...`: the supply-chain toolkit. Every key is generated where it will live;
//! only CSRs and certificates travel between folders.

mod demo;
mod revoke;
mod show;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use certhub_pki::{
    CaFiles, Issuer, KeyAlgorithm, PkiError, Profile, SignOptions, TrustStore, UnixTime,
    create_request, create_root, parse_subject, read_certificates, read_csr, sign_request,
    verification_certificate, verify_device_chain,
};
use clap::{Args, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Outcome;
use crate::files::{self, Mode, NewDir};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a self-signed root CA in a new folder (key.pem mode 0600, cert.pem).
    Root(RootArgs),
    /// Generate a key pair and a CSR in a new folder (key.pem, request.csr), as the key's holder.
    Request(RequestArgs),
    /// As an issuer, sign a CSR under a profile; writes cert.pem and chain.pem.
    Sign(SignArgs),
    /// Make the proof-of-possession certificate for registering a CA with a hub (CN = code).
    VerificationCert(VerificationArgs),
    /// Print the SHA-1 and SHA-256 thumbprints of the first certificate in FILE (Azure format).
    Thumbprint(FileArg),
    /// Describe every certificate of a file (or a CSR).
    Inspect(InspectArgs),
    /// Check a device chain offline with the hub's own policy; exit 0 (ok) or 1 (rejected).
    Verify(VerifyArgs),
    /// As an issuer, revoke a certificate it issued (kept in its folder's revoked.txt).
    Revoke(revoke::RevokeArgs),
    /// As an issuer, sign a CRL of what it revoked (its folder's crl.pem), for the hub and openssl.
    Crl(revoke::CrlArgs),
    /// Build whole hierarchies in one go.
    #[command(subcommand)]
    Demo(demo::DemoCommand),
}

#[derive(Debug, Args)]
pub struct RootArgs {
    /// Subject, e.g. "CN=Company-X Root CA, O=Company-X".
    #[arg(long)]
    subject: String,
    /// The folder to create.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_algorithm)]
    algorithm: KeyAlgorithm,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// pathLenConstraint: how many CA levels may follow below this root (default: unlimited).
    #[arg(long)]
    path_len: Option<u8>,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Subject, e.g. "CN=Factory-Y CA" or, for a device, "CN=<device id>".
    #[arg(long)]
    subject: String,
    /// The folder to create.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_algorithm)]
    algorithm: KeyAlgorithm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    Intermediate,
    Device,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The issuer's folder: cert.pem, key.pem and, for an intermediate, chain.pem.
    #[arg(long)]
    issuer: PathBuf,
    /// The CSR to sign (PEM or DER).
    #[arg(long)]
    csr: PathBuf,
    #[arg(long, value_enum)]
    profile: ProfileArg,
    /// Folder for cert.pem and chain.pem (usually the requester's folder).
    #[arg(long)]
    out: PathBuf,
    /// pathLenConstraint of a new intermediate (default: one less than the issuer's).
    #[arg(long)]
    path_len: Option<u8>,
    /// Validity in days (default 1825 for an intermediate, 365 for a device); never past the
    /// issuer's expiry.
    #[arg(long)]
    days: Option<u32>,
    /// An http:// URL where the issuer publishes its CRL, written into the certificate as its
    /// CRL distribution point; the hub fetches the CRL from it (repeat for several).
    #[arg(long = "crl-url", value_name = "URL")]
    crl_urls: Vec<String>,
    /// The http:// URL of the issuer's OCSP responder, written into the certificate's
    /// authorityInfoAccess; the hub asks it when the CA has OCSP on.
    #[arg(long = "ocsp-url", value_name = "URL")]
    ocsp_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerificationArgs {
    /// The CA's folder (cert.pem, key.pem).
    #[arg(long)]
    issuer: PathBuf,
    /// The verification code the hub issued.
    #[arg(long)]
    code: String,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct FileArg {
    file: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Trusted CA certificate(s): a file with one or more PEM certificates. Repeatable.
    #[arg(long, required = true)]
    trust: Vec<PathBuf>,
    /// The chain the device presents: leaf first, then intermediates (chain.pem).
    #[arg(long)]
    chain: PathBuf,
    /// The device id the leaf's CN must equal (deviceId or deviceId/moduleId).
    #[arg(long)]
    device_id: Option<String>,
    /// Check at this instant instead of now (RFC 3339, e.g. 2030-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    at: Option<OffsetDateTime>,
}

fn parse_algorithm(s: &str) -> Result<KeyAlgorithm, String> {
    s.parse().map_err(|e: PkiError| e.to_string())
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{e}; expected RFC 3339 such as 2030-01-01T00:00:00Z"))
}

pub fn run(cmd: PkiCommand) -> Result<Outcome> {
    match cmd {
        PkiCommand::Root(a) => root(a),
        PkiCommand::Request(a) => request(a),
        PkiCommand::Sign(a) => sign(a),
        PkiCommand::VerificationCert(a) => verification(a),
        PkiCommand::Thumbprint(a) => show::thumbprint(&a.file),
        PkiCommand::Inspect(a) => show::inspect(&a.file, a.json),
        PkiCommand::Verify(a) => verify(a),
        PkiCommand::Revoke(a) => revoke::revoke(a),
        PkiCommand::Crl(a) => revoke::crl(a),
        PkiCommand::Demo(d) => demo::run(d),
    }
}

fn root(a: RootArgs) -> Result<Outcome> {
    let subject = parse_subject(&a.subject)?;
    let dir = NewDir::create(&a.out)?;
    let made = create_root(
        &subject,
        a.algorithm,
        a.days,
        a.path_len,
        OffsetDateTime::now_utc(),
    )?;
    dir.write("key.pem", made.key_pem.as_bytes(), Mode::Secret)?;
    dir.write("cert.pem", made.pem.as_bytes(), Mode::Public)?;
    let out = dir.commit()?;
    out!(
        "created root CA {:?} ({}) in {}",
        a.subject.trim(),
        a.algorithm,
        out.display()
    );
    out!(
        "  {}/cert.pem  the CA certificate: share it, register it with the hub",
        out.display()
    );
    out!(
        "  {}/key.pem   its private key (mode 0600): it never leaves this folder",
        out.display()
    );
    Ok(Outcome::Ok)
}

fn request(a: RequestArgs) -> Result<Outcome> {
    let subject = parse_subject(&a.subject)?;
    let dir = NewDir::create(&a.out)?;
    let made = create_request(&subject, a.algorithm)?;
    dir.write("key.pem", made.key_pem.as_bytes(), Mode::Secret)?;
    dir.write("request.csr", made.pem.as_bytes(), Mode::Public)?;
    let out = dir.commit()?;
    out!(
        "created a key pair and a CSR for {:?} ({}) in {}",
        a.subject.trim(),
        a.algorithm,
        out.display()
    );
    out!("  {}/request.csr  send this to your issuer", out.display());
    out!(
        "  {}/key.pem      your private key (mode 0600): keep it here",
        out.display()
    );
    Ok(Outcome::Ok)
}

/// Loads an issuer folder with errors that name the folder and the missing piece.
pub(crate) fn load_issuer(dir: &Path) -> Result<Issuer> {
    if !dir.is_dir() {
        bail!(
            "{}: no such issuer folder (it holds cert.pem and key.pem)",
            dir.display()
        );
    }
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let chain_path = dir.join("chain.pem");
    let cert = files::read_required(&cert_path, "the issuer's certificate")?;
    let key = files::read_required(
        &key_path,
        "the issuer's private key: only the CA's holder can sign, run this where the key lives",
    )?;
    let key = String::from_utf8(key)
        .map_err(|_| anyhow::anyhow!("{}: not a PEM private key", key_path.display()))?;
    let chain = if chain_path.exists() {
        Some(files::read(&chain_path)?)
    } else {
        None
    };
    // Read each certificate file on its own first, so an error names the file to fix.
    read_certificates(&cert).with_context(|| format!("{}", cert_path.display()))?;
    if let Some(c) = &chain {
        read_certificates(c).with_context(|| format!("{}", chain_path.display()))?;
    }
    Issuer::load(CaFiles {
        cert: &cert,
        key: &key,
        chain: chain.as_deref(),
    })
    .map_err(|e| {
        let at = match e {
            PkiError::Key { .. } | PkiError::KeyMismatch { .. } => key_path.display(),
            _ => dir.display(),
        };
        anyhow::Error::new(e).context(at.to_string())
    })
}

fn sign(a: SignArgs) -> Result<Outcome> {
    let issuer = load_issuer(&a.issuer)?;
    let csr_bytes = files::read_required(&a.csr, "the CSR to sign")?;
    let csr = read_csr(&csr_bytes).with_context(|| format!("{}", a.csr.display()))?;
    let profile = match a.profile {
        ProfileArg::Intermediate => Profile::Intermediate,
        ProfileArg::Device => Profile::Device,
    };
    let options = SignOptions {
        days: a.days,
        path_len: a.path_len,
        crl_urls: a.crl_urls,
        ocsp_url: a.ocsp_url,
    };
    let issued = sign_request(&issuer, &csr, profile, &options, OffsetDateTime::now_utc())
        .with_context(|| format!("{}", a.csr.display()))?;
    let written = files::write_new_files(
        &a.out,
        &[
            ("cert.pem", issued.pem.as_bytes(), Mode::Public),
            ("chain.pem", issued.chain_pem.as_bytes(), Mode::Public),
        ],
    )?;
    let info = certhub_pki::describe_certificate(&issued.der)?;
    out!(
        "{} signed {:?} as {} (serial {}, valid until {})",
        issuer.subject(),
        info.subject,
        match profile {
            Profile::Intermediate => "an intermediate CA",
            Profile::Device => "a device",
        },
        info.serial,
        info.not_after
    );
    for note in &issued.notes {
        out!("  note: {note}");
    }
    for p in written {
        out!("  {}", p.display());
    }
    Ok(Outcome::Ok)
}

fn verification(a: VerificationArgs) -> Result<Outcome> {
    let issuer = load_issuer(&a.issuer)?;
    let issued = verification_certificate(&issuer, &a.code, OffsetDateTime::now_utc())?;
    files::write_new_file(&a.out, issued.pem.as_bytes(), Mode::Public)?;
    out!(
        "wrote {}: CN={} signed by {}; next: certhub ca verify --name <name> --file {}",
        a.out.display(),
        a.code.trim(),
        issuer.subject(),
        a.out.display()
    );
    Ok(Outcome::Ok)
}

fn verify(a: VerifyArgs) -> Result<Outcome> {
    let mut anchors = Vec::new();
    for path in &a.trust {
        let bytes = files::read_required(path, "a trusted CA certificate")?;
        anchors.extend(read_certificates(&bytes).with_context(|| format!("{}", path.display()))?);
    }
    let trust = TrustStore::new(anchors).context("--trust")?;
    let bytes = files::read_required(&a.chain, "the device's chain")?;
    let chain = read_certificates(&bytes).with_context(|| format!("{}", a.chain.display()))?;
    let at = a.at.unwrap_or_else(OffsetDateTime::now_utc);
    let Ok(secs) = u64::try_from(at.unix_timestamp()) else {
        bail!("--at: must be after 1970");
    };
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    match verify_device_chain(&chain, &trust, a.device_id.as_deref(), now) {
        Ok(v) => {
            out!("ok: trusted by {:?}", v.anchor_subject);
            out!("  path: {}", v.path.join(" -> "));
            Ok(Outcome::Ok)
        }
        Err(r) => {
            out!("rejected: {}: {}", r.reason, r.detail);
            Ok(Outcome::Rejected)
        }
    }
}
