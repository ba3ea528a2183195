//! The hub's own TLS identity, kept in `<data-dir>/tls/`: a server CA made on first start
//! (`server-ca.pem`, key `server-ca.key`), and a server certificate it signs (`server.pem`,
//! `server.key`) with a SAN for every host name. Clients trust `server-ca.pem`. The server
//! certificate is re-issued by the same CA when the host names change or it nears expiry, so
//! clients never need a new trust file. Nodes of one hub on a shared database use one CA,
//! agreed through the database ([`share_ca`]).

use std::fs::{self, OpenOptions};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certhub_pki::{
    CaFiles, Issuer, KeyAlgorithm, create_root, describe_certificate, parse_subject,
    read_certificates, server_certificate,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// During a server CA rollover: the next CA, which clients are given beside the current one
/// until the hub switches to it.
const NEXT: &str = "server-ca-next.pem";
const NEXT_KEY: &str = "server-ca-next.key";

/// Why the hub's TLS identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pki {
        path: PathBuf,
        #[source]
        source: certhub_pki::PkiError,
    },
    #[error("{path}: not a usable private key")]
    Key { path: PathBuf },
    #[error("the TLS configuration was refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the hub's server CA in the database: {0}")]
    Shared(String),
    #[error("{0}")]
    Rollover(String),
}

/// The server certificate every listener presents, replaceable while they run: a new one is
/// presented from the next handshake on, and connections already made keep going (TLS uses
/// the certificate only in the handshake).
#[derive(Debug)]
pub struct ServerCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServerCert {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            current: std::sync::RwLock::new(Arc::new(certified(chain, key)?)),
        })
    }

    fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let next = Arc::new(certified(chain, key)?);
        if let Ok(mut c) = self.current.write() {
            *c = next;
        }
        Ok(())
    }

    /// The chain presented now.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .map(|c| c.cert.clone())
            .unwrap_or_default()
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    Ok(rustls::sign::CertifiedKey::from_der(
        chain,
        key,
        &crate::device_tls::device_provider(),
    )?)
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// Where the identity lives and what it is.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    key_path: PathBuf,
    /// What the listeners present ([`ServerIdentity::rotate`] replaces it).
    pub cert: Arc<ServerCert>,
    /// Whether this start made the CA or re-issued the certificate.
    pub created_ca: bool,
    pub issued_certificate: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file atomically (temporary name, then rename), owner-only like everything in the
/// data directory.
fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    let tmp = path.with_extension("partial");
    let _ = fs::remove_file(&tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io(path))
}

/// The SANs a certificate must carry for `names`, in `inspect`'s notation.
fn wanted_sans(names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => format!("IP:{ip}"),
            Err(_) => format!("DNS:{n}"),
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn make_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))
}

/// A new server CA: (certificate PEM, key PEM).
fn new_ca(ca_path: &Path, now: OffsetDateTime) -> Result<(String, String), TlsError> {
    let pki = |source| TlsError::Pki {
        path: ca_path.to_path_buf(),
        source,
    };
    let subject = parse_subject("CN=certhub server CA, O=certhub").map_err(pki)?;
    let made = create_root(&subject, KeyAlgorithm::EcdsaP256, 3650, Some(0), now).map_err(pki)?;
    Ok((made.pem, made.key_pem))
}

/// The server CA shared by every node of a hub whose state is in a database they share (a
/// cluster on PostgreSQL), so that clients trust every node by one file. The first node to
/// start decides (the CA already in its data directory, so a single hub that becomes a
/// cluster keeps the CA its clients trust, or a new one); every node writes it into `dir`,
/// where [`load_or_create`] issues that node's server certificate from it. Returns whether
/// this node's files were replaced. The CA's key is kept in the database, as the hub's
/// policy keys are.
pub async fn share_ca(
    store: &certhub_store::Store,
    dir: &Path,
    now: OffsetDateTime,
) -> Result<bool, TlsError> {
    make_dir(dir)?;
    let ca_path = dir.join("server-ca.pem");
    let ca_key_path = dir.join("server-ca.key");
    let local = match (read_text(&ca_path), read_text(&ca_key_path)) {
        (Ok(cert), Ok(key)) => (cert, key),
        _ => new_ca(&ca_path, now)?,
    };
    let candidate = serde_json::json!({"cert": local.0, "key": local.1}).to_string();
    let agreed = store
        .secret("server-ca", &candidate)
        .await
        .map_err(|e| TlsError::Shared(e.to_string()))?;
    let agreed: serde_json::Value = serde_json::from_str(&agreed)
        .map_err(|e| TlsError::Shared(format!("not readable: {e}")))?;
    let (Some(cert), Some(key)) = (agreed["cert"].as_str(), agreed["key"].as_str()) else {
        return Err(TlsError::Shared("no cert or key in it".into()));
    };
    if read_text(&ca_path).ok().as_deref() == Some(cert)
        && read_text(&ca_key_path).ok().as_deref() == Some(key)
    {
        return Ok(false);
    }
    write(&ca_key_path, key)?;
    write(&ca_path, cert)?;
    // Issued by another CA: made again from this one.
    for stale in ["server.pem", "server.key"] {
        let _ = fs::remove_file(dir.join(stale));
    }
    Ok(true)
}

/// Loads the identity from `dir`, making the CA and (re-)issuing the server certificate as
/// needed.
pub fn load_or_create(
    dir: &Path,
    hostnames: &[String],
    now: OffsetDateTime,
) -> Result<ServerIdentity, TlsError> {
    make_dir(dir)?;
    let ca_path = dir.join("server-ca.pem");
    let ca_key_path = dir.join("server-ca.key");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");

    let mut created_ca = false;
    if !ca_path.exists() || !ca_key_path.exists() {
        let (cert, key) = new_ca(&ca_path, now)?;
        write(&ca_key_path, &key)?;
        write(&ca_path, &cert)?;
        let _ = fs::remove_file(&cert_path);
        created_ca = true;
    }
    let ca_pem = read_text(&ca_path)?;
    let ca_key = read_text(&ca_key_path)?;
    let pki = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Pki { path, source }
    };

    let current = if cert_path.exists() && key_path.exists() {
        let chain =
            read_certificates(read_text(&cert_path)?.as_bytes()).map_err(pki(&cert_path))?;
        let leaf = chain.first().cloned();
        leaf.map(|l| describe_certificate(&l).map(|info| (chain, info)))
            .transpose()
            .map_err(pki(&cert_path))?
    } else {
        None
    };
    let fresh = current.as_ref().is_some_and(|(_, info)| {
        let mut have = info.subject_alt_names.clone();
        have.sort();
        let renew_by = now + Duration::days(30);
        let not_after = OffsetDateTime::parse(
            &info.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or(now);
        have == wanted_sans(hostnames) && not_after > renew_by
    });
    let mut issued_certificate = false;
    let chain = match current {
        Some((chain, _)) if fresh => chain,
        _ => {
            let issuer = Issuer::load(CaFiles {
                cert: ca_pem.as_bytes(),
                key: &ca_key,
                chain: None,
            })
            .map_err(pki(&ca_path))?;
            let (key_pem, cert) =
                server_certificate(&issuer, hostnames, 397, now).map_err(pki(&cert_path))?;
            write(&key_path, &key_pem)?;
            write(&cert_path, &cert.pem)?;
            issued_certificate = true;
            vec![cert.der]
        }
    };
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| TlsError::Key {
        path: key_path.clone(),
    })?;
    let cert = Arc::new(ServerCert::new(chain, key)?);
    Ok(ServerIdentity {
        ca_path,
        cert_path,
        key_path,
        cert,
        created_ca,
        issued_certificate,
    })
}

impl ServerIdentity {
    /// Issues a new server certificate from the hub's server CA for `hostnames` (a new key,
    /// 397 days), writes it over `server.pem` and `server.key`, and has every listener present
    /// it from the next handshake on. Connected devices stay connected. Returns the new
    /// certificate's description.
    pub fn rotate(
        &self,
        hostnames: &[String],
        now: OffsetDateTime,
    ) -> Result<certhub_pki::CertificateInfo, TlsError> {
        let ca_key_path = self.ca_path.with_file_name("server-ca.key");
        let pki = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Pki { path, source }
        };
        let ca_pem = read_text(&self.ca_path)?;
        let issuer = Issuer::load(CaFiles {
            cert: ca_pem.as_bytes(),
            key: &read_text(&ca_key_path)?,
            chain: None,
        })
        .map_err(pki(&self.ca_path))?;
        let (key_pem, cert) =
            server_certificate(&issuer, hostnames, 397, now).map_err(pki(&self.cert_path))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::Key {
            path: self.key_path.clone(),
        })?;
        // Presented first, then written: a failure to write leaves the old files, which the
        // next start replaces anyway when they near expiry.
        self.cert.replace(vec![cert.der.clone()], key)?;
        write(&self.key_path, &key_pem)?;
        write(&self.cert_path, &cert.pem)?;
        describe_certificate(&cert.der).map_err(pki(&self.cert_path))
    }

    /// Starts a server CA rollover: a new server CA (a subject of its own, dated) waits beside
    /// the current one, which still issues the certificate the hub presents. Clients are given
    /// both (`certhub hub server-ca` prints both) at their own pace; then
    /// [`ServerIdentity::switch_ca`] has the hub present a certificate from the new one.
    /// (The current CA has pathLenConstraint 0, so it cannot vouch for a successor by
    /// cross-signing: OpenSSL clients would refuse the path.) Returns the new CA's description.
    pub fn introduce_ca(
        &self,
        now: OffsetDateTime,
    ) -> Result<certhub_pki::CertificateInfo, TlsError> {
        let dir = self.ca_path.parent().unwrap_or(Path::new("."));
        if dir.join(NEXT).exists() {
            return Err(TlsError::Rollover(
                "a new server CA is already waiting: switch to it first (certhub hub rotate-server-cert --switch-ca)".into(),
            ));
        }
        let pki = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Pki { path, source }
        };
        let stamp = now
            .replace_nanosecond(0)
            .unwrap_or(now)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let subject = parse_subject(&format!("CN=certhub server CA {stamp}, O=certhub"))
            .map_err(pki(&self.ca_path))?;
        let made = create_root(&subject, KeyAlgorithm::EcdsaP256, 3650, Some(0), now)
            .map_err(pki(&self.ca_path))?;
        write(&dir.join(NEXT_KEY), &made.key_pem)?;
        write(&dir.join(NEXT), &made.pem)?;
        let der = read_certificates(made.pem.as_bytes()).map_err(pki(&self.ca_path))?;
        let first = der.first().ok_or(TlsError::Key {
            path: dir.join(NEXT),
        })?;
        describe_certificate(first).map_err(pki(&self.ca_path))
    }

    /// Ends a server CA rollover: the waiting CA becomes the hub's server CA and issues the
    /// certificate the listeners present from the next handshake on (connected devices stay
    /// connected); the previous CA is forgotten, so clients that trust only it can no longer
    /// connect. `Ok(None)` when no new CA was waiting.
    pub fn switch_ca(
        &self,
        hostnames: &[String],
        now: OffsetDateTime,
    ) -> Result<Option<certhub_pki::CertificateInfo>, TlsError> {
        let dir = self.ca_path.parent().unwrap_or(Path::new("."));
        let (next, next_key) = (dir.join(NEXT), dir.join(NEXT_KEY));
        if !next.exists() {
            return Ok(None);
        }
        let (pem, key) = (read_text(&next)?, read_text(&next_key)?);
        write(&self.ca_path.with_file_name("server-ca.key"), &key)?;
        write(&self.ca_path, &pem)?;
        fs::remove_file(&next).map_err(io(&next))?;
        let _ = fs::remove_file(&next_key);
        self.rotate(hostnames, now).map(Some)
    }

    /// The CA certificates clients should trust, PEM: the hub's server CA, and during a
    /// rollover the one waiting to replace it.
    pub fn trust_bundle(dir: &Path) -> Result<String, TlsError> {
        let mut pem = read_text(&dir.join("server-ca.pem"))?;
        let next = dir.join(NEXT);
        if next.exists() {
            pem.push_str(&read_text(&next)?);
        }
        Ok(pem)
    }

    /// The rustls configuration for device listeners (client certificates requested, no
    /// resumption); see `device_tls`.
    pub fn device_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        Ok(crate::device_tls::device_config_with(self.cert.clone())?)
    }

    /// The HTTPS listener's configurations: TLS 1.2 and 1.3, and TLS 1.3 only (for
    /// minTlsVersion 1.3).
    pub fn https_config(&self) -> Result<crate::listener::HttpsTls, TlsError> {
        // The device listener's suite order: devices connect here too.
        let provider = Arc::new(crate::device_tls::device_provider());
        let make = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            // A client certificate is asked for, never required: service callers present
            // none, devices (MQTT over WebSockets, the HTTPS device API) are judged by theirs
            // as on the device listener, and without resumption, which would skip that.
            let verifier = Arc::new(crate::device_tls::DeviceCertVerifier::new(
                provider.signature_verification_algorithms,
            ));
            let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(self.cert.clone());
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config.ignore_client_order = true;
            Ok::<_, TlsError>(Arc::new(config))
        };
        Ok(crate::listener::HttpsTls {
            tls12_and_13: make(&[&rustls::version::TLS13, &rustls::version::TLS12])?,
            tls13_only: make(&[&rustls::version::TLS13])?,
        })
    }
}
