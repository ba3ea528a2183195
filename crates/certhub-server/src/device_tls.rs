//! TLS for device listeners. The verifier asks for a client certificate but does not decide
//! who the device is: the device id is known only at CONNECT, and the Azure SDKs retry a failed
//! handshake forever while they treat CONNACK 5 as final (azure-protocol 1.3). It records the
//! chain (rustls keeps it for `peer_certificates()`) and checks CertificateVerify, which proves
//! the device holds the leaf's key; for X.509 v1 certificates (which webpki will not parse)
//! the signature is checked against the raw public key. SAS devices may connect without a
//! certificate. Session resumption is off: a resumed session would skip every check.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};

#[derive(Debug)]
pub struct DeviceCertVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl DeviceCertVerifier {
    pub fn new(algs: WebPkiSupportedAlgorithms) -> Self {
        Self { algs }
    }

    /// TLS 1.2 and 1.3 signature check against the leaf's raw key (v1 certificates).
    fn verify_raw(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let spki = certhub_pki::subject_public_key_info(cert)
            .map_err(|_| Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let spki = SubjectPublicKeyInfoDer::from(spki);
        let key = webpki::RawPublicKeyEntity::try_from(&spki)
            .map_err(|_| Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let algs = self
            .algs
            .mapping
            .iter()
            .find(|(s, _)| *s == dss.scheme)
            .map(|(_, a)| *a)
            .ok_or(Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ))?;
        for alg in algs {
            if key.verify_signature(*alg, message, dss.signature()).is_ok() {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(Error::InvalidCertificate(
            rustls::CertificateError::BadSignature,
        ))
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // SAS devices send no certificate; CONNECT decides.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: "send any certificate you have", and a small CertificateRequest.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // Only refuse what cannot be a certificate at all; everything else is judged at CONNECT
        // with the device's id and registry entry in hand. webpki's parse first (it reads only
        // what it needs: this runs on every connection); the full one for what it does not
        // take (version 1 certificates).
        if webpki::EndEntityCert::try_from(end_entity).is_ok() {
            return Ok(ClientCertVerified::assertion());
        }
        certhub_pki::subject_public_key_info(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
            .or_else(|_| self.verify_raw(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
            .or_else(|_| self.verify_raw(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The rustls configuration of a device listener: TLS 1.2 and 1.3, client certificates
/// requested, no session resumption, ALPN `mqtt` offered.
pub fn device_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &device_provider())?;
    device_config_with(Arc::new(rustls::sign::SingleCertAndKey::from(certified)))
}

/// [`device_config`] with the server certificate from `certs` (which the hub can replace while
/// it runs: `tls::ServerCert`).
pub fn device_config_with(
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(device_provider());
    let verifier = Arc::new(DeviceCertVerifier::new(
        provider.signature_verification_algorithms,
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    // The hub's order decides (see `device_provider`).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// aws-lc-rs with the AES-128-GCM suites first, TLS 1.3's mandatory suite
/// (TLS_AES_128_GCM_SHA256) at the head, as BoringSSL and Go order them. Many clients (OpenSSL,
/// rustls) list AES-256-GCM-SHA384 first, whose handshake hashes with SHA-384: in a profile of
/// the connect path, SHA-512 blocks were 8 % of the hub's CPU. Every suite stays available.
/// The 443 listener uses it too (devices connect there over WebSockets and HTTPS).
pub(crate) fn device_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let preferred = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let rank = |s: &rustls::SupportedCipherSuite| {
        preferred
            .iter()
            .position(|p| p.suite() == s.suite())
            .unwrap_or(preferred.len())
    };
    provider.cipher_suites.sort_by_key(rank);
    provider
}
