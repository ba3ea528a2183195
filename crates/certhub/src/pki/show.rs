//! `thumbprint` and `inspect`: read-only views of certificate and CSR files.

use std::path::Path;

use anyhow::{Context, Result};
use certhub_pki::{
    CertificateInfo, CsrInfo, Document, Thumbprints, describe_certificate, describe_csr,
    read_certificates, read_document,
};

use crate::Outcome;
use crate::files;

pub fn thumbprint(path: &Path) -> Result<Outcome> {
    let bytes = files::read(path)?;
    let certs = read_certificates(&bytes).with_context(|| format!("{}", path.display()))?;
    let Some(first) = certs.first() else {
        anyhow::bail!("{}: no certificate", path.display());
    };
    let t = Thumbprints::of(first);
    out!("SHA1   {}", t.sha1);
    out!("SHA256 {}", t.sha256);
    Ok(Outcome::Ok)
}

pub fn inspect(path: &Path, json: bool) -> Result<Outcome> {
    let bytes = files::read(path)?;
    let doc = read_document(&bytes).with_context(|| format!("{}", path.display()))?;
    match doc {
        Document::Certificates(certs) => {
            let infos = certs
                .iter()
                .map(|c| describe_certificate(c))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}", path.display()))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&infos)?);
            } else {
                for (i, info) in infos.iter().enumerate() {
                    if infos.len() > 1 {
                        out!("certificate {} of {}", i + 1, infos.len());
                    }
                    print_certificate(info);
                }
            }
        }
        Document::Csr(csr) => {
            let info = describe_csr(&csr).with_context(|| format!("{}", path.display()))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_csr(&info);
            }
        }
    }
    Ok(Outcome::Ok)
}

fn print_certificate(c: &CertificateInfo) {
    out!("  subject:             {}", c.subject);
    out!("  issuer:              {}", c.issuer);
    out!("  serial:              {}", c.serial);
    out!("  valid:               {} .. {}", c.not_before, c.not_after);
    out!("  version:             v{}", c.version);
    out!("  key:                 {}", c.key);
    out!("  signature:           {}", c.signature_algorithm);
    match &c.basic_constraints {
        Some(bc) if bc.ca => out!(
            "  basic constraints:   CA:TRUE{}{}",
            bc.path_len
                .map(|n| format!(", pathlen:{n}"))
                .unwrap_or_default(),
            if bc.critical { " (critical)" } else { "" }
        ),
        Some(_) => out!("  basic constraints:   CA:FALSE"),
        None => out!("  basic constraints:   (none)"),
    }
    out!("  key usage:           {}", list(&c.key_usage));
    out!("  extended key usage:  {}", list(&c.extended_key_usage));
    out!("  subject alt names:   {}", list(&c.subject_alt_names));
    if c.self_signed {
        out!("  self-signed:         yes");
    }
    out!("  SHA-1 thumbprint:    {}", c.thumbprints.sha1);
    out!("  SHA-256 thumbprint:  {}", c.thumbprints.sha256);
}

fn print_csr(c: &CsrInfo) {
    out!("certificate signing request");
    out!("  subject:             {}", c.subject);
    out!("  key:                 {}", c.key);
    out!(
        "  signature:           {} ({})",
        c.signature_algorithm,
        if c.signature_valid {
            "verifies"
        } else {
            "DOES NOT VERIFY"
        }
    );
    out!("  requested:           {}", list(&c.requested_extensions));
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}
