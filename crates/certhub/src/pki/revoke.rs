//! `certhub pki revoke` and `certhub pki crl`: a CA of the supply chain revokes certificates
//! it issued and signs the list, offline, where its key lives. The CA's folder keeps what it
//! revoked in `revoked.txt` (a line per certificate: serial in hex, revocation time, reason)
//! and the last CRL number in `crlnumber`; `crl.pem` is the list to hand out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use certhub_pki::{MAX_CRL_DAYS, RevocationReasonCode, RevokedEntry, read_certificates};
use clap::Args;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::load_issuer;
use crate::Outcome;
use crate::files;

const REVOKED: &str = "revoked.txt";
const NUMBER: &str = "crlnumber";
const HEADER: &str = "# certhub pki revoke: serial (hex), revoked at (RFC 3339), reason\n";

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The issuer's folder (cert.pem, key.pem): only the CA that issued a certificate revokes it.
    #[arg(long)]
    issuer: PathBuf,
    /// The certificate to revoke (PEM or DER; the first of the file), e.g. a device's cert.pem
    /// or an intermediate's.
    #[arg(long)]
    cert: PathBuf,
    /// Why: unspecified, key-compromise, ca-compromise, affiliation-changed, superseded,
    /// cessation-of-operation, certificate-hold, privilege-withdrawn.
    #[arg(long, default_value = "unspecified")]
    reason: String,
}

#[derive(Debug, Args)]
pub struct CrlArgs {
    /// The issuer's folder (cert.pem, key.pem, and revoked.txt from `pki revoke`).
    #[arg(long)]
    issuer: PathBuf,
    /// Days until the CRL's nextUpdate (1 to 366): sign a new one before then.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Where to write the CRL (PEM) [default: ISSUER/crl.pem].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What `dir/revoked.txt` lists (nothing when there is no such file).
fn read_revoked(dir: &Path) -> Result<Vec<RevokedEntry>> {
    let path = dir.join(REVOKED);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = String::from_utf8(files::read(&path)?)
        .map_err(|_| anyhow::anyhow!("{}: not text", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            anyhow::anyhow!(
                "{} line {}: {why} (expected: SERIAL-HEX RFC3339-TIME REASON); fix or remove the line",
                path.display(),
                n + 1
            )
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let [serial, at, reason] = words[..] else {
            return Err(bad("not three fields"));
        };
        let serial = hex_bytes(serial).ok_or_else(|| bad("the serial is not hex"))?;
        let revoked_at =
            OffsetDateTime::parse(at, &Rfc3339).map_err(|_| bad("the time is not RFC 3339"))?;
        let reason = RevocationReasonCode::from_name(reason).map_err(|e| bad(&e.to_string()))?;
        out.push(RevokedEntry {
            serial,
            revoked_at,
            reason,
        });
    }
    Ok(out)
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.replace(':', "");
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaces `path` with `contents` whole or not at all (a temporary file renamed over it).
fn replace(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

pub fn revoke(a: RevokeArgs) -> Result<Outcome> {
    let issuer = load_issuer(&a.issuer)?;
    let reason = RevocationReasonCode::from_name(&a.reason)?;
    let bytes = files::read_required(&a.cert, "the certificate to revoke")?;
    let cert = read_certificates(&bytes)
        .with_context(|| format!("{}", a.cert.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate in it", a.cert.display()))?;
    let serial = issuer
        .serial_of_issued(&cert)
        .with_context(|| format!("{}", a.cert.display()))?;
    let subject = certhub_pki::describe_certificate(&cert)?.subject;
    let mut revoked = read_revoked(&a.issuer)?;
    if let Some(known) = revoked.iter().find(|r| r.serial == serial) {
        out!(
            "{subject:?} (serial {}) was already revoked at {} ({}); nothing changed",
            hex(&serial),
            known.revoked_at.format(&Rfc3339).unwrap_or_default(),
            known.reason.name()
        );
        return Ok(Outcome::Ok);
    }
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::now_utc());
    revoked.push(RevokedEntry {
        serial: serial.clone(),
        revoked_at: now,
        reason,
    });
    let mut text = String::from(HEADER);
    for r in &revoked {
        text.push_str(&format!(
            "{} {} {}\n",
            hex(&r.serial),
            r.revoked_at.format(&Rfc3339).unwrap_or_default(),
            r.reason.name()
        ));
    }
    replace(&a.issuer.join(REVOKED), text.as_bytes())?;
    out!(
        "{} revoked {subject:?} (serial {}, {}); {} revoked in all",
        issuer.subject(),
        hex(&serial),
        reason.name(),
        revoked.len()
    );
    out!(
        "  sign the list for the hub and other verifiers: certhub pki crl --issuer {}",
        a.issuer.display()
    );
    Ok(Outcome::Ok)
}

pub fn crl(a: CrlArgs) -> Result<Outcome> {
    if a.days == 0 || a.days > MAX_CRL_DAYS {
        bail!("--days {}: give 1 to {MAX_CRL_DAYS}", a.days);
    }
    let issuer = load_issuer(&a.issuer)?;
    let revoked = read_revoked(&a.issuer)?;
    let number_path = a.issuer.join(NUMBER);
    let last: u64 = if number_path.exists() {
        let text = String::from_utf8(files::read(&number_path)?).unwrap_or_default();
        text.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: {:?} is not a number (the last CRL number this CA signed); fix it to at least that number",
                number_path.display(),
                text.trim()
            )
        })?
    } else {
        0
    };
    let number = last + 1;
    let now = OffsetDateTime::now_utc();
    let pem = issuer.crl(&revoked, number, now, a.days)?;
    let out = a.out.unwrap_or_else(|| a.issuer.join("crl.pem"));
    // The number first: a CRL number may be skipped, never given to two different lists.
    replace(&number_path, format!("{number}\n").as_bytes())?;
    replace(&out, pem.as_bytes())?;
    out!(
        "{} signed CRL number {number}: {} revoked, next update {}",
        issuer.subject(),
        revoked.len(),
        (now + time::Duration::days(i64::from(a.days)))
            .format(&Rfc3339)
            .unwrap_or_default()
    );
    out!("  {}", out.display());
    Ok(Outcome::Ok)
}
