//! Issuance for the `certhub pki` toolkit: roots, CSRs, signing a CSR under a profile, and the
//! proof-of-possession certificate for registering a CA.
//!
//! The issuer decides every extension. A CSR contributes its subject and its public key, nothing
//! else: a device CSR that asks for CA:TRUE gets CA:FALSE, and the caller is told what was
//! ignored. Serials are random; validity never exceeds the issuer's; every issued certificate
//! is re-checked against its issuer before it is handed out.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::describe::{key_info, parse, requested_extensions, weak_signature};
use crate::name::{MAX_CN_LEN, common_name, dn_from_x509};
use crate::{KeyAlgorithm, PkiError};

/// Certificates are valid from a few minutes before they are made, so a device whose clock is
/// slightly behind the issuer's still accepts them.
const BACKDATE: Duration = Duration::minutes(5);

/// What a certificate is for; decides every extension of the issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A CA below the issuer: CA:TRUE, keyCertSign + cRLSign + digitalSignature, no EKU.
    Intermediate,
    /// A device: CA:FALSE, digitalSignature, EKU clientAuth, CN required (the device id).
    Device,
}

impl Profile {
    pub fn default_days(self) -> u32 {
        match self {
            Self::Intermediate => 1825,
            Self::Device => 365,
        }
    }
}

/// Options for signing a CSR.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// Validity in days from now (clamped to the issuer's notAfter). Default per profile.
    pub days: Option<u32>,
    /// pathLenConstraint for an intermediate. Default: one less than the issuer's, or none.
    pub path_len: Option<u8>,
    /// `http://` URLs where the issuer publishes its CRL: the certificate's
    /// cRLDistributionPoints, from which the hub fetches the CRL that covers it.
    pub crl_urls: Vec<String>,
    /// The `http://` URL of the issuer's OCSP responder: the certificate's authorityInfoAccess,
    /// which the hub asks when the CA has OCSP on.
    pub ocsp_url: Option<String>,
}

/// A freshly generated key pair with a certificate or CSR, as PEM.
#[derive(Debug)]
pub struct NewKey {
    /// PKCS#8 private key PEM. Write it with mode 0600 and never send it anywhere.
    pub key_pem: String,
    /// The self-signed certificate (root) or the CSR (request), PEM.
    pub pem: String,
}

/// A certificate the issuer signed.
#[derive(Debug)]
pub struct IssuedCertificate {
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// The certificate followed by the issuer's chain without the root: what a device presents.
    pub chain_pem: String,
    /// Things the caller should know: requested extensions that were not granted, a validity
    /// shortened to the issuer's.
    pub notes: Vec<String>,
}

/// A CA that signs: its certificate, its private key, and the chain above it.
#[derive(Debug)]
pub struct Issuer {
    cert: CertificateDer<'static>,
    key: KeyPair,
    /// The issuer's certificate and its intermediates, without the root.
    chain: Vec<CertificateDer<'static>>,
    subject: String,
    dn: DistinguishedName,
    key_id: KeyIdMethod,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: Option<u32>,
}

/// The files of a CA folder, already read.
#[derive(Debug)]
pub struct CaFiles<'a> {
    /// `cert.pem`: the CA certificate.
    pub cert: &'a [u8],
    /// `key.pem`: its private key.
    pub key: &'a str,
    /// `chain.pem`, when present: the CA certificate followed by its intermediates.
    pub chain: Option<&'a [u8]>,
}

impl Issuer {
    /// Loads a CA from its files and checks that it can sign: a CA certificate, allowed to sign
    /// certificates, not SHA-1 signed, and the key is the certificate's key.
    pub fn load(files: CaFiles<'_>) -> Result<Self, PkiError> {
        let certs = crate::read_certificates(files.cert)?;
        let cert = certs.into_iter().next().ok_or(PkiError::Empty)?;
        let parsed = parse(&cert)?;
        let subject = parsed.subject().to_string();
        let policy = |why: &str| PkiError::Policy(format!("the issuer {subject:?} {why}"));
        if !parsed.is_ca() {
            return Err(policy(
                "is not a CA certificate (basicConstraints CA:TRUE missing); only a CA signs certificates",
            ));
        }
        if let Ok(Some(ku)) = parsed.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(policy("has a keyUsage without keyCertSign"));
        }
        if let Some(w) = weak_signature(&parsed.signature_algorithm) {
            return Err(policy(&format!("is {w}")));
        }
        if let Some(p) = key_info(parsed.public_key()).problem() {
            return Err(policy(&format!("has a refused key: {p}")));
        }
        let key = KeyPair::from_pem(files.key).map_err(|e| PkiError::Key {
            detail: format!("{e}; expected an unencrypted PKCS#8, SEC1 or PKCS#1 PEM key"),
        })?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(PkiError::KeyMismatch { subject });
        }
        let self_signed = parsed.subject().as_raw() == parsed.issuer().as_raw();
        let chain = match files.chain {
            Some(bytes) => {
                let chain = crate::read_certificates(bytes)?;
                if chain.first() != Some(&cert) {
                    return Err(policy(
                        "has a chain.pem that does not start with its cert.pem; rebuild chain.pem as cert.pem followed by the issuers' certificates",
                    ));
                }
                chain
            }
            None if self_signed => Vec::new(),
            None => vec![cert.clone()],
        };
        let key_id = match parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            }) {
            Some(id) => KeyIdMethod::PreSpecified(id),
            None => KeyIdMethod::Sha256,
        };
        let validity = parsed.validity();
        let path_len = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|bc| bc.value.path_len_constraint);
        Ok(Self {
            dn: dn_from_x509(parsed.subject(), "the issuer")?,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            subject,
            key_id,
            path_len,
            chain,
            key,
            cert: cert.clone(),
        })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(crate) fn key_id(&self) -> &KeyIdMethod {
        &self.key_id
    }

    pub(crate) fn rcgen_issuer(&self) -> rcgen::Issuer<'_, &KeyPair> {
        let mut params = CertificateParams::default();
        params.distinguished_name = self.dn.clone();
        params.key_identifier_method = self.key_id.clone();
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        rcgen::Issuer::new(params, &self.key)
    }

    /// Signs `params` for `public_key`, checks the result, and wraps it with the chain.
    fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
        notes: Vec<String>,
    ) -> Result<IssuedCertificate, PkiError> {
        let cert = params.signed_by(public_key, &self.rcgen_issuer())?;
        let der = cert.der().clone();
        // Never hand out a certificate that does not chain to its issuer byte for byte.
        let issued = parse(&der)?;
        let issuer = parse(&self.cert)?;
        if issued.issuer().as_raw() != issuer.subject().as_raw()
            || issued.verify_signature(Some(issuer.public_key())).is_err()
        {
            return Err(PkiError::Policy(format!(
                "internal check failed: the certificate signed by {:?} does not verify against it",
                self.subject
            )));
        }
        let pem = cert.pem();
        let mut chain_pem = pem.clone();
        for c in &self.chain {
            chain_pem.push_str(&to_pem(c));
        }
        Ok(IssuedCertificate {
            der,
            pem,
            chain_pem,
            notes,
        })
    }

    /// The validity window of a new certificate: from a few minutes ago (never before the
    /// issuer's notBefore) for `days`, never past the issuer's notAfter.
    fn window(
        &self,
        now: OffsetDateTime,
        days: u32,
        notes: &mut Vec<String>,
    ) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
        if now > self.not_after {
            return Err(PkiError::Policy(format!(
                "the issuer {:?} expired at {}; renew it before signing",
                self.subject, self.not_after
            )));
        }
        let not_before = (now - BACKDATE).max(self.not_before);
        // A date past the year 9999 (which `time` cannot represent) is past the issuer's
        // notAfter too.
        let not_after = match now.checked_add(Duration::days(i64::from(days))) {
            Some(wanted) if wanted <= self.not_after => wanted,
            _ => {
                notes.push(format!(
                    "validity shortened to the issuer's expiry ({}): a certificate never outlives its issuer",
                    self.not_after.date()
                ));
                self.not_after
            }
        };
        Ok((not_before, not_after))
    }
}

pub(crate) fn to_pem(der: &CertificateDer<'_>) -> String {
    lf_pem("CERTIFICATE", der.as_ref().to_vec())
}

/// PEM with `\n` line endings, like rcgen's own output (pem's default is `\r\n`).
fn lf_pem(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The PKCS#8 PEM of a new private key. aws-lc-rs writes Ed25519 keys as PKCS#8 v2 (RFC 5958,
/// with the public key), which OpenSSL before 3.5 cannot read; write those as PKCS#8 v1
/// (RFC 8410), which every tool reads, rcgen included.
fn private_key_pem(key: &KeyPair) -> String {
    const V2: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const V1: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = key.serialize_der();
    if der.len() == 83 && der.starts_with(&V2) {
        let mut v1 = V1.to_vec();
        v1.extend_from_slice(&der[16..48]);
        return lf_pem("PRIVATE KEY", v1);
    }
    key.serialize_pem()
}

/// A random, positive, 16-byte serial (RFC 5280 allows up to 20 octets).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| PkiError::Policy("the system random source failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never zero, never shortened by DER's minimal encoding rules
    Ok(SerialNumber::from_slice(&bytes))
}

fn base_params(
    dn: DistinguishedName,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The extensions of every CA certhub issues: CA:TRUE with an optional path length,
/// keyCertSign, cRLSign, digitalSignature.
fn ca_extensions(p: &mut CertificateParams, path_len: Option<u8>) {
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
}

/// A new self-signed root CA: CA:TRUE (with `path_len` if given), keyCertSign + cRLSign.
pub fn create_root(
    subject: &DistinguishedName,
    algorithm: KeyAlgorithm,
    days: u32,
    path_len: Option<u8>,
    now: OffsetDateTime,
) -> Result<NewKey, PkiError> {
    require_cn(subject, "a root CA")?;
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| {
            PkiError::Policy(format!(
                "a validity of {days} days ends after the year 9999, the last date X.509 can write; choose fewer days"
            ))
        })?;
    let key = algorithm.generate()?;
    let mut p = base_params(subject.clone(), now - BACKDATE, not_after)?;
    ca_extensions(&mut p, path_len);
    // A root's AKI would only repeat its own SKI.
    p.use_authority_key_identifier_extension = false;
    let cert = p.self_signed(&key)?;
    Ok(NewKey {
        key_pem: private_key_pem(&key),
        pem: cert.pem(),
    })
}

/// A new key pair and a CSR for `subject`, made by the future holder of the key.
pub fn create_request(
    subject: &DistinguishedName,
    algorithm: KeyAlgorithm,
) -> Result<NewKey, PkiError> {
    require_cn(subject, "a certificate request")?;
    let key = algorithm.generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = subject.clone();
    let csr = p.serialize_request(&key)?;
    Ok(NewKey {
        key_pem: private_key_pem(&key),
        pem: csr.pem()?,
    })
}

fn require_cn(dn: &DistinguishedName, what: &str) -> Result<(), PkiError> {
    if dn.get(&DnType::CommonName).is_none() {
        return Err(PkiError::Policy(format!(
            "{what} needs a CN in its subject, e.g. \"CN=Company-X Root CA\""
        )));
    }
    Ok(())
}

/// The issuer signs a CSR under `profile`. Only the CSR's subject and public key are used.
pub fn sign_request(
    issuer: &Issuer,
    csr_der: &[u8],
    profile: Profile,
    options: &SignOptions,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, PkiError> {
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::malformed("the CSR", e))?;
    if let Some(w) = weak_signature(&csr.signature_algorithm) {
        return Err(PkiError::Unsupported(format!("the CSR is {w}")));
    }
    // The key first: aws-lc-rs cannot verify signatures by keys certhub refuses (RSA under
    // 2048 bits), which would otherwise be reported as a bad signature.
    let info = &csr.certification_request_info;
    if let Some(p) = key_info(&info.subject_pki).problem() {
        return Err(PkiError::Unsupported(format!(
            "the CSR's key is refused: {p}"
        )));
    }
    csr.verify_signature()
        .map_err(|_| PkiError::CsrBadSignature)?;
    let subject = info.subject.to_string();
    let dn = dn_from_x509(&info.subject, "the CSR")?;
    let cn = common_name(&info.subject);

    let mut notes = Vec::new();
    let days = options.days.unwrap_or(profile.default_days());
    let (not_before, not_after) = issuer.window(now, days, &mut notes)?;
    let mut p = base_params(dn, not_before, not_after)?;
    match profile {
        Profile::Intermediate => {
            if cn.is_none() {
                return Err(PkiError::Policy(format!(
                    "the CSR's subject {subject:?} has no CN; a CA needs a name"
                )));
            }
            let max = match issuer.path_len {
                Some(0) => {
                    return Err(PkiError::Policy(format!(
                        "the issuer {:?} has pathLenConstraint 0: it may sign devices but no further CA",
                        issuer.subject
                    )));
                }
                Some(n) => Some(n - 1),
                None => None,
            };
            let path_len = match (options.path_len, max) {
                (Some(want), Some(max)) if u32::from(want) > max => {
                    return Err(PkiError::Policy(format!(
                        "--path-len {want} is more than the issuer {:?} allows below it ({max})",
                        issuer.subject
                    )));
                }
                (Some(want), _) => Some(want),
                (None, max) => max.map(|m| u8::try_from(m).unwrap_or(u8::MAX)),
            };
            ca_extensions(&mut p, path_len);
        }
        Profile::Device => {
            if options.path_len.is_some() {
                return Err(PkiError::Policy(
                    "--path-len applies to the intermediate profile only; a device certificate is never a CA".into(),
                ));
            }
            let Some(cn) = cn else {
                return Err(PkiError::Policy(format!(
                    "the CSR's subject {subject:?} has no CN; a device certificate's CN is its device id"
                )));
            };
            check_device_id(&cn)?;
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    if !options.crl_urls.is_empty() {
        for url in &options.crl_urls {
            check_http_url(url, "--crl-url", "http://pki.example.com/technician-z.crl")?;
        }
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: options.crl_urls.clone(),
        }];
    }
    if let Some(url) = &options.ocsp_url {
        check_http_url(url, "--ocsp-url", "http://ocsp.example.com")?;
        p.custom_extensions.push(crate::ocsp::aia_extension(url)?);
    }
    for ext in requested_extensions(&csr) {
        notes.push(format!(
            "not granted from the CSR: {ext} (the issuer decides every extension)"
        ));
    }
    let public_key = SubjectPublicKeyInfo::from_der(info.subject_pki.raw)?;
    issuer.sign(&p, &public_key, notes)
}

/// A CRL distribution point or OCSP responder certhub writes into a certificate: an `http://`
/// URL with a host, as RFC 5280 4.2.1.13 and RFC 6960 describe (CRLs and OCSP answers are
/// signed, so they need no TLS), which the hub fetches.
fn check_http_url(url: &str, flag: &str, example: &str) -> Result<(), PkiError> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..]);
    let ok = rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && url.len() <= 2048 && url.bytes().all(|b| b.is_ascii_graphic())
    });
    if ok {
        Ok(())
    } else {
        Err(PkiError::Policy(format!(
            "{flag} {url:?}: give an http:// URL with a host, e.g. {example} (certhub fetches over plain HTTP: what it fetches is signed)"
        )))
    }
}

/// A TLS server certificate for the hub itself: CA:FALSE, digitalSignature, EKU serverAuth, a
/// SAN for each name (IP addresses as IP SANs), CN = the first name. Returns the new key (PEM)
/// and the certificate with its chain.
pub fn server_certificate(
    issuer: &Issuer,
    names: &[String],
    days: u32,
    now: OffsetDateTime,
) -> Result<(String, IssuedCertificate), PkiError> {
    let Some(first) = names.first() else {
        return Err(PkiError::Policy(
            "a server certificate needs at least one host name".into(),
        ));
    };
    let mut notes = Vec::new();
    let (not_before, not_after) = issuer.window(now, days, &mut notes)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, DnValue::Utf8String(first.clone()));
    let mut p = base_params(dn, not_before, not_after)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.clone().try_into().map_err(|_| {
                PkiError::Policy(format!("{name:?} is not a valid DNS name or IP address"))
            })?),
        };
        p.subject_alt_names.push(san);
    }
    let key = KeyAlgorithm::EcdsaP256.generate()?;
    let cert = issuer.sign(&p, &key, notes)?;
    Ok((private_key_pem(&key), cert))
}

/// The proof-of-possession certificate for registering `issuer` with a hub: CN = `code`,
/// CA:FALSE, signed by the CA's key. Its own key pair is thrown away: only the signature by
/// the CA matters.
pub fn verification_certificate(
    issuer: &Issuer,
    code: &str,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, PkiError> {
    let code = code.trim();
    if code.is_empty() || code.chars().count() > MAX_CN_LEN {
        return Err(PkiError::Policy(format!(
            "the verification code must be 1 to {MAX_CN_LEN} characters; copy it from the hub's generateVerificationCode answer"
        )));
    }
    let mut notes = Vec::new();
    let (not_before, not_after) = issuer.window(now, 30, &mut notes)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, DnValue::Utf8String(code.to_string()));
    let mut p = base_params(dn, not_before, not_after)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyAlgorithm::EcdsaP256.generate()?;
    issuer.sign(&p, &key, notes)
}

/// Azure's device id character set; a module certificate's CN is `deviceId/moduleId`.
fn check_device_id(cn: &str) -> Result<(), PkiError> {
    const SPECIAL: &str = "-.+%_#*?!(),:=@$'";
    let parts: Vec<&str> = cn.split('/').collect();
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || SPECIAL.contains(c))
    };
    if parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
        return Err(PkiError::Policy(format!(
            "the CN {cn:?} is not a device id: use letters, digits and {SPECIAL} (and one '/' between device and module id)"
        )));
    }
    if cn.chars().count() > MAX_CN_LEN {
        return Err(PkiError::Policy(format!(
            "the CN {cn:?} is longer than {MAX_CN_LEN} characters, the X.509 limit for a CN"
        )));
    }
    Ok(())
}
