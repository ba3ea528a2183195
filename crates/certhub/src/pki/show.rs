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
    println!("SHA1   {}", t.sha1);
    println!("SHA256 {}", t.sha256);
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
                println!("{}", serde_json::to_string_pretty(&infos)?);
            } else {
                for (i, info) in infos.iter().enumerate() {
                    if infos.len() > 1 {
                        println!("certificate {} of {}", i + 1, infos.len());
                    }
                    print_certificate(info);
                }
            }
        }
        Document::Csr(csr) => {
            let info = describe_csr(&csr).with_context(|| format!("{}", path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_csr(&info);
            }
        }
    }
    Ok(Outcome::Ok)
}

fn print_certificate(c: &CertificateInfo) {
    println!("  subject:             {}", c.subject);
    println!("  issuer:              {}", c.issuer);
    println!("  serial:              {}", c.serial);
    println!("  valid:               {} .. {}", c.not_before, c.not_after);
    println!("  version:             v{}", c.version);
    println!("  key:                 {}", c.key);
    println!("  signature:           {}", c.signature_algorithm);
    match &c.basic_constraints {
        Some(bc) if bc.ca => println!(
            "  basic constraints:   CA:TRUE{}{}",
            bc.path_len
                .map(|n| format!(", pathlen:{n}"))
                .unwrap_or_default(),
            if bc.critical { " (critical)" } else { "" }
        ),
        Some(_) => println!("  basic constraints:   CA:FALSE"),
        None => println!("  basic constraints:   (none)"),
    }
    println!("  key usage:           {}", list(&c.key_usage));
    println!("  extended key usage:  {}", list(&c.extended_key_usage));
    println!("  subject alt names:   {}", list(&c.subject_alt_names));
    if c.self_signed {
        println!("  self-signed:         yes");
    }
    println!("  SHA-1 thumbprint:    {}", c.thumbprints.sha1);
    println!("  SHA-256 thumbprint:  {}", c.thumbprints.sha256);
}

fn print_csr(c: &CsrInfo) {
    println!("certificate signing request");
    println!("  subject:             {}", c.subject);
    println!("  key:                 {}", c.key);
    println!(
        "  signature:           {} ({})",
        c.signature_algorithm,
        if c.signature_valid {
            "verifies"
        } else {
            "DOES NOT VERIFY"
        }
    );
    println!("  requested:           {}", list(&c.requested_extensions));
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}
