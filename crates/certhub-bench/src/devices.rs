//! Device credentials: one folder per device (`<id>/chain.pem`, `<id>/key.pem`), turned into
//! one rustls client configuration each. The client id is the folder's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Kx, TlsVersion};

/// One device: its client id, MQTT user name and TLS client configuration.
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub username: String,
    pub config: Arc<ClientConfig>,
    /// The leaf certificate (the first of `chain.pem`).
    pub leaf: CertificateDer<'static>,
}

/// The device folders under `dir` (those holding a `chain.pem`), sorted by name.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("{}", dir.display()))?.path();
        if path.join("chain.pem").is_file() {
            found.push(path);
        }
    }
    found.sort();
    if found.is_empty() {
        bail!(
            "{}: no device folders (<id>/chain.pem and <id>/key.pem); `certhub pki demo supply-chain --out X --devices N` writes them under X/devices",
            dir.display()
        );
    }
    Ok(found)
}

/// What every connection shares: the CA to trust, the TLS version and key exchange group.
#[derive(Debug)]
pub struct TlsSettings {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    version: &'static rustls::SupportedProtocolVersion,
    server_name: String,
    username_template: String,
}

impl TlsSettings {
    pub fn new(
        ca: &Path,
        tls: TlsVersion,
        kx: Kx,
        server_name: &str,
        username_template: &str,
    ) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("{}", ca.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}", ca.display()))?;
        if certs.is_empty() {
            bail!("{}: no PEM certificate", ca.display());
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
        }
        let group = match kx {
            Kx::X25519 => kx_group::X25519,
            Kx::P256 => kx_group::SECP256R1,
        };
        let provider = Arc::new(CryptoProvider {
            kx_groups: vec![group],
            ..aws_lc_rs::default_provider()
        });
        let version = match tls {
            TlsVersion::V12 => &rustls::version::TLS12,
            TlsVersion::V13 => &rustls::version::TLS13,
        };
        Ok(Self {
            roots: Arc::new(roots),
            provider,
            version,
            server_name: server_name.to_string(),
            username_template: username_template.to_string(),
        })
    }

    /// Loads one device folder.
    pub fn load(&self, folder: &Path) -> Result<Device> {
        let id = folder
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: the folder name is not UTF-8", folder.display()))?
            .to_string();
        let chain_path = folder.join("chain.pem");
        let key_path = folder.join("key.pem");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&chain_path)
            .with_context(|| format!("{}", chain_path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}", chain_path.display()))?;
        if chain.is_empty() {
            bail!("{}: no PEM certificate", chain_path.display());
        }
        let leaf = chain[0].clone();
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("{}", key_path.display()))?;
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[self.version])
            .context("the TLS version and key exchange group")?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(chain, key)
            .with_context(|| format!("{}: the key does not fit the chain", folder.display()))?;
        config.resumption = Resumption::disabled();
        let username = self
            .username_template
            .replace("{host}", &self.server_name)
            .replace("{id}", &id);
        Ok(Device {
            id,
            username,
            config: Arc::new(config),
            leaf,
        })
    }
}

/// Loads the first `n` device folders under `dir` (all of them when `n` is None).
pub fn load(dir: &Path, n: Option<usize>, settings: &TlsSettings) -> Result<Vec<Arc<Device>>> {
    let folders = list(dir)?;
    let want = n.unwrap_or(folders.len());
    if want > folders.len() {
        bail!(
            "{} devices needed, {} has only {}: make more with `certhub pki demo supply-chain --devices {want}` (and register them)",
            want,
            dir.display(),
            folders.len()
        );
    }
    folders[..want]
        .iter()
        .map(|f| settings.load(f).map(Arc::new))
        .collect()
}
