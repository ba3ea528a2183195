//! x509-limbo conformance for certhub's device chain policy.
//!
//! Runs the x509-limbo suite (`tests/data/x509-limbo/limbo-no-bettertls.json.gz`, see the README
//! there) through the very code the hub runs at CONNECT: `TrustStore::new` over the trusted
//! certificates, then `verify_chain` of the peer certificate through the untrusted
//! intermediates. When the chain verifies and the case names an expected peer (DNS or IP), the
//! name is also checked with rustls-webpki's `verify_is_valid_for_subject_name`, as a TLS server
//! check would (certhub itself matches devices by CN, not by SAN).
//!
//! Outcome of a case:
//! - FAILURE if a PEM block does not decode (`read_certificates`), if `TrustStore::new` refuses
//!   an anchor (certhub never trusts such a certificate, so nothing can chain to it), if
//!   `verify_chain` rejects the chain, or if a name check fails (including a name that is not a
//!   valid `ServerName`);
//! - SUCCESS otherwise.
//!
//! Inputs: `now` is the case's `validation_time` (RFC 3339) or, when absent, the current time
//! (the test may read the clock; the library never does). The usage is `Usage::ClientAuth` when
//! `extended_key_usage` contains `clientAuth`, else `Usage::ServerAuth` (limbo's empty EKU list
//! means a TLS server).
//!
//! CRLs (`crls`) are filed as the hub files an uploaded one: each is checked with
//! `certhub_pki::read_crl` against the certificate (trusted or intermediate) whose subject is the
//! CRL's issuer, and its entries go into the store's revocation index under that certificate's
//! key. A CRL whose issuer is none of them is not used (the hub refuses to store it); one that
//! its issuer's certificate does not accept (a bad signature, an issuer without cRLSign, a
//! missing or critical CRL number) makes the case FAILURE, as the hub refuses such a CRL and a
//! revocation check that cannot be done fails closed.
//!
//! Skip rules, applied in this order; each skipped case is counted under its rule:
//! 1. (none: CRL cases run since the hub checks revocation)
//! 2. `max_chain_depth` is set (or the `max-chain-depth` feature is set): certhub's depth limit
//!    is webpki's fixed one and cannot be configured per call.
//! 3. `signature_algorithms` is non-empty: certhub's algorithm set is fixed.
//! 4. `key_usage` is non-empty: certhub asks only for an extended key usage.
//! 5. `extended_key_usage` names anything but a single `serverAuth` or `clientAuth`: `Usage`
//!    has exactly those two.
//! 6. an expected peer name (`expected_peer_name` or `expected_peer_names`) is not of kind DNS
//!    or IP (RFC822): rustls-webpki has no e-mail name check. All CLIENT cases of the suite fall
//!    here today; a CLIENT case with DNS/IP names or none would run.
//! 7. `validation_kind` is neither SERVER nor CLIENT.
//!
//! Every refusal by `verify_chain` must have a specific name: a run case refused as
//! `chain-invalid` (the name left for validator errors certhub has no name for) is a problem.
//!
//! Every run case whose outcome differs from `expected_result` must be listed, with a reason, in
//! `tests/data/x509-limbo/deviations.txt` (`<id> | <expected> | <reason>`, `#` starts a
//! comment). The test fails when a deviation is not listed, when a listed case no longer
//! deviates (or is no longer run), or when a listed id is not in the suite: the list only
//! shrinks.
//!
//! `LIMBO_VERBOSE=1 cargo test -p certhub-pki --test limbo -- --nocapture` prints the outcome of
//! every case, run or skipped.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use certhub_pki::{
    CertificateDer, Reason, Revocations, TrustStore, UnixTime, Usage, key_id, read_certificates,
    read_crl, verify_chain,
};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Deserializer};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/x509-limbo/limbo-no-bettertls.json.gz"
);
const DEVIATIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/x509-limbo/deviations.txt"
);

#[derive(Deserialize)]
struct Limbo {
    version: u32,
    testcases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    features: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
    validation_kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    trusted_certs: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    untrusted_intermediates: Vec<String>,
    peer_certificate: String,
    #[serde(default)]
    validation_time: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    signature_algorithms: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    key_usage: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    extended_key_usage: Vec<String>,
    expected_result: Expected,
    #[serde(default)]
    expected_peer_name: Option<PeerName>,
    #[serde(default, deserialize_with = "null_as_default")]
    expected_peer_names: Vec<PeerName>,
    #[serde(default)]
    max_chain_depth: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    crls: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum Expected {
    Success,
    Failure,
}

impl Expected {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "SUCCESS" => Some(Self::Success),
            "FAILURE" => Some(Self::Failure),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct PeerName {
    kind: String,
    value: String,
}

/// The raw issuer name of a PEM CRL.
fn crl_issuer(pem: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::FromDer;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| e.to_string())?;
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&block.contents)
            .map_err(|e| e.to_string())?;
    Ok(crl.issuer().as_raw().to_vec())
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Why a case is not run (the skip rules of the module documentation, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Skip {
    MaxChainDepth,
    SignatureAlgorithms,
    KeyUsage,
    ExtendedKeyUsage,
    PeerNameKind,
    ValidationKind,
}

impl Skip {
    fn describe(self) -> &'static str {
        match self {
            Self::MaxChainDepth => "sets max_chain_depth",
            Self::SignatureAlgorithms => "constrains signature_algorithms",
            Self::KeyUsage => "requires a key_usage",
            Self::ExtendedKeyUsage => "requires an EKU other than one serverAuth/clientAuth",
            Self::PeerNameKind => "expects an RFC822 (or other non-DNS/IP) peer name",
            Self::ValidationKind => "has a validation_kind other than SERVER/CLIENT",
        }
    }
}

impl Case {
    fn peer_names(&self) -> impl Iterator<Item = &PeerName> {
        self.expected_peer_name
            .iter()
            .chain(&self.expected_peer_names)
    }

    fn skip(&self) -> Option<Skip> {
        let feature = |f: &str| self.features.iter().any(|x| x == f);
        if self.max_chain_depth.is_some() || feature("max-chain-depth") {
            return Some(Skip::MaxChainDepth);
        }
        if !self.signature_algorithms.is_empty() {
            return Some(Skip::SignatureAlgorithms);
        }
        if !self.key_usage.is_empty() {
            return Some(Skip::KeyUsage);
        }
        match self.extended_key_usage.as_slice() {
            [] => {}
            [one] if one == "serverAuth" || one == "clientAuth" => {}
            _ => return Some(Skip::ExtendedKeyUsage),
        }
        if self.peer_names().any(|n| n.kind != "DNS" && n.kind != "IP") {
            return Some(Skip::PeerNameKind);
        }
        if self.validation_kind != "SERVER" && self.validation_kind != "CLIENT" {
            return Some(Skip::ValidationKind);
        }
        None
    }

    fn usage(&self) -> Usage {
        if self.extended_key_usage.iter().any(|e| e == "clientAuth") {
            Usage::ClientAuth
        } else {
            Usage::ServerAuth
        }
    }

    fn now(&self) -> UnixTime {
        let secs = match &self.validation_time {
            Some(t) => {
                let at =
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .unwrap_or_else(|e| panic!("{}: validation_time {t:?}: {e}", self.id));
                u64::try_from(at.unix_timestamp())
                    .unwrap_or_else(|_| panic!("{}: validation_time {t:?} is before 1970", self.id))
            }
            None => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("the clock is after 1970")
                .as_secs(),
        };
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    /// Runs the case through certhub's policy: `Ok(())` is SUCCESS, `Err(why)` is FAILURE.
    fn run(&self) -> Result<(), Failure> {
        let decode = |what: &str, pem: &str| {
            read_certificates(pem.as_bytes()).map_err(|e| format!("decoding {what}: {e}"))
        };
        let mut trusted = Vec::new();
        for pem in &self.trusted_certs {
            trusted.extend(decode("a trusted certificate", pem)?);
        }
        let store =
            TrustStore::new(trusted.clone()).map_err(|e| format!("TrustStore::new: {e}"))?;
        let mut intermediates: Vec<CertificateDer<'static>> = Vec::new();
        for pem in &self.untrusted_intermediates {
            intermediates.extend(decode("an intermediate", pem)?);
        }
        let store = if self.crls.is_empty() {
            store
        } else {
            let mut index = Revocations::default();
            for (i, pem) in self.crls.iter().enumerate() {
                let issuer = crl_issuer(pem.as_bytes()).map_err(|e| format!("CRL {i}: {e}"))?;
                let Some(cert) = trusted.iter().chain(&intermediates).find(|c| {
                    x509_parser::parse_x509_certificate(c)
                        .is_ok_and(|(_, c)| c.subject().as_raw() == issuer.as_slice())
                }) else {
                    continue;
                };
                let facts =
                    read_crl(pem.as_bytes(), cert).map_err(|e| format!("read_crl {i}: {e}"))?;
                let key = key_id(cert).map_err(|e| format!("key_id: {e}"))?;
                index.add_crl(key, &facts, &format!("CRL {i}"));
            }
            store.with_revocations(Arc::new(index))
        };
        let leaf = match decode("the peer certificate", &self.peer_certificate)?.as_slice() {
            [one] => one.clone(),
            more => return Err(format!("the peer PEM holds {} certificates", more.len()).into()),
        };
        verify_chain(&leaf, &intermediates, &store, self.now(), self.usage()).map_err(|r| {
            Failure {
                reason: Some(r.reason),
                why: format!("Rejection {{ reason: {}, detail: {} }}", r.reason, r.detail),
            }
        })?;
        for name in self.peer_names() {
            let server_name = ServerName::try_from(name.value.as_str())
                .map_err(|e| format!("expected peer name {:?}: {e}", name.value))?;
            let ee = webpki::EndEntityCert::try_from(&leaf)
                .map_err(|e| format!("webpki::EndEntityCert: {e:?}"))?;
            ee.verify_is_valid_for_subject_name(&server_name)
                .map_err(|e| format!("name check for {} {:?}: {e:?}", name.kind, name.value))?;
        }
        Ok(())
    }
}

/// Why a case failed: the policy's reason when `verify_chain` refused it, and the words.
struct Failure {
    reason: Option<Reason>,
    why: String,
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Self { reason: None, why }
    }
}

struct Listed {
    expected: Expected,
    line: usize,
}

fn read_deviations(problems: &mut Vec<String>) -> BTreeMap<String, Listed> {
    let text =
        std::fs::read_to_string(DEVIATIONS).unwrap_or_else(|e| panic!("reading {DEVIATIONS}: {e}"));
    let mut listed = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.splitn(3, '|').map(str::trim).collect();
        let [id, expected, reason] = fields.as_slice() else {
            problems.push(format!(
                "deviations.txt:{n}: expected `<id> | <expected> | <reason>`, got {line:?}"
            ));
            continue;
        };
        let Some(expected) = Expected::parse(expected) else {
            problems.push(format!(
                "deviations.txt:{n}: {id}: expected result must be SUCCESS or FAILURE, got {expected:?}"
            ));
            continue;
        };
        if reason.is_empty() {
            problems.push(format!("deviations.txt:{n}: {id}: the reason is empty"));
        }
        match listed.entry(id.to_string()) {
            Entry::Vacant(v) => {
                v.insert(Listed { expected, line: n });
            }
            Entry::Occupied(o) => problems.push(format!(
                "deviations.txt:{n}: {id} is already listed on line {}",
                o.get().line
            )),
        }
    }
    listed
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

#[test]
fn x509_limbo() {
    let mut json = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(DATA).unwrap_or_else(|e| panic!("opening {DATA}: {e}")),
    )
    .read_to_string(&mut json)
    .unwrap_or_else(|e| panic!("decompressing {DATA}: {e}"));
    let limbo: Limbo = serde_json::from_str(&json).expect("the limbo JSON matches the schema");
    assert_eq!(limbo.version, 1, "limbo schema version");

    let mut problems = Vec::new();
    let listed = read_deviations(&mut problems);
    let ids: BTreeSet<&str> = limbo.testcases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), limbo.testcases.len(), "limbo ids are unique");
    for (id, l) in &listed {
        if !ids.contains(id.as_str()) {
            problems.push(format!(
                "deviations.txt:{}: {id} is not a case of the suite; remove it from deviations.txt",
                l.line
            ));
        }
    }

    let verbose = std::env::var_os("LIMBO_VERBOSE").is_some();
    let mut skipped: BTreeMap<Skip, usize> = BTreeMap::new();
    let (mut run, mut as_expected, mut deviating) = (0, 0, 0);
    for case in &limbo.testcases {
        let entry = listed.get(&case.id);
        if let Some(rule) = case.skip() {
            *skipped.entry(rule).or_default() += 1;
            if verbose {
                println!("skip {}: it {}", case.id, rule.describe());
            }
            if let Some(l) = entry {
                problems.push(format!(
                    "deviations.txt:{}: {} is skipped (it {}), so it cannot deviate; remove it from deviations.txt",
                    l.line,
                    case.id,
                    rule.describe()
                ));
            }
            continue;
        }
        run += 1;
        let outcome = case.run();
        if let Err(Failure {
            reason: Some(Reason::ChainInvalid),
            why,
        }) = &outcome
        {
            problems.push(format!(
                "{} is refused without a specific name: {why}\n    (give its validator error a name in explain.rs)",
                case.id
            ));
        }
        let actual = if outcome.is_ok() {
            Expected::Success
        } else {
            Expected::Failure
        };
        let why = outcome.err().map_or_else(|| "(accepted)".into(), |f| f.why);
        if verbose {
            println!(
                "run  {}: expected {}, got {}: {why}",
                case.id,
                case.expected_result.as_str(),
                actual.as_str()
            );
        }
        if let Some(l) = entry
            && l.expected != case.expected_result
        {
            problems.push(format!(
                "deviations.txt:{}: {} expects {} in the suite, not {}",
                l.line,
                case.id,
                case.expected_result.as_str(),
                l.expected.as_str()
            ));
        }
        match (actual == case.expected_result, entry) {
            (true, None) => as_expected += 1,
            (false, Some(_)) => deviating += 1,
            (true, Some(l)) => problems.push(format!(
                "deviations.txt:{}: {} now gives {} as expected; remove it from deviations.txt",
                l.line,
                case.id,
                actual.as_str()
            )),
            (false, None) => problems.push(format!(
                "unlisted deviation {}: expected {}, got {}: {}\n    ({})",
                case.id,
                case.expected_result.as_str(),
                actual.as_str(),
                why,
                first_line(&case.description)
            )),
        }
    }

    let skipped_total: usize = skipped.values().sum();
    println!("x509-limbo against certhub's chain policy");
    println!("  total cases:          {}", limbo.testcases.len());
    println!("  run:                  {run}");
    println!("  skipped by rule:      {skipped_total}");
    for (rule, n) in &skipped {
        println!("    {n:4}  {}", rule.describe());
    }
    println!("  as expected:          {as_expected}");
    println!("  listed deviations:    {deviating} (deviations.txt)");
    assert!(
        problems.is_empty(),
        "x509-limbo: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
