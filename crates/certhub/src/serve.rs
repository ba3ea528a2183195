//! `certhub serve`: configuration (flags > `CERTHUB_*` environment > TOML file > defaults),
//! the data directory, the hub's TLS identity, the store, and the listeners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

use crate::Outcome;

/// Exit code for invalid configuration (EX_USAGE), given before any port is bound.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file (keys: data_dir, hostnames, https_addr, mqtt_addr, amqp_addr,
    /// database_url, nats_url, telemetry_replicas, public_endpoint,
    /// verification_code_ttl, max_device_sessions, telemetry_retention, telemetry_max_messages,
    /// telemetry_max_bytes, c2d_max_pending, c2d_max_deliveries, audit_retention,
    /// audit_max_records,
    /// refusals_per_source, refusals_per_client_id, pending_per_source, pending_total,
    /// https_connections_per_source, refusal_audit_window, crl_refresh, expiry_check,
    /// expiry_webhook_url, expiry_webhook_secret, file_store, file_store_options,
    /// dangerous_file_store_allow_http, log_format).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory: SQLite database, the hub's TLS files [default: ./certhub-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A host name clients use to reach the hub; repeatable [default: localhost, 127.0.0.1].
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// Address for devices: MQTT 3.1.1 over mutual TLS [default: 0.0.0.0:8883].
    #[arg(long)]
    mqtt_addr: Option<String>,
    /// Address for AMQP 1.0 over TLS: devices and services [default: 0.0.0.0:5671].
    #[arg(long)]
    amqp_addr: Option<String>,
    /// Address for HTTPS: the service API [default: 0.0.0.0:443].
    #[arg(long)]
    https_addr: Option<String>,
    /// Seconds a CA verification code stays valid [default: 3600].
    #[arg(long)]
    verification_code_ttl: Option<String>,
    /// Live device sessions at most; more are answered CONNACK 3 [default: 100000].
    #[arg(long)]
    max_device_sessions: Option<String>,
    /// Seconds telemetry is kept [default: 604800, seven days].
    #[arg(long)]
    telemetry_retention: Option<String>,
    /// Most telemetry messages kept; the oldest go first [default: 10000000].
    #[arg(long)]
    telemetry_max_messages: Option<String>,
    /// Most bytes the telemetry log holds (bodies, properties and ids); beyond, the oldest
    /// messages go, with an audit record and the metric certhub_telemetry_dropped_total
    /// [default: 8589934592, 8 GiB].
    #[arg(long)]
    telemetry_max_bytes: Option<String>,
    /// Cloud-to-device messages waiting per device at most [default: 50].
    #[arg(long)]
    c2d_max_pending: Option<String>,
    /// Deliveries of a cloud-to-device message without acknowledgement before it is dropped
    /// [default: 10].
    #[arg(long)]
    c2d_max_deliveries: Option<String>,
    /// Seconds audit records are kept [default: 7776000, 90 days].
    #[arg(long)]
    audit_retention: Option<String>,
    /// Most audit records kept; the oldest go first [default: 1000000].
    #[arg(long)]
    audit_max_records: Option<String>,
    /// Longest wait, in seconds, between two fetches of a CRL distribution point: a CRL is
    /// fetched again at its nextUpdate or after this, whichever comes first [default: 3600]
    /// (TOML key crl_refresh, environment CERTHUB_CRL_REFRESH).
    #[arg(long)]
    crl_refresh: Option<String>,
    /// Seconds between two checks of the devices' certificate expiry (the /metrics gauges and
    /// the announcements) [default: 60] (TOML key expiry_check, environment
    /// CERTHUB_EXPIRY_CHECK).
    #[arg(long)]
    expiry_check: Option<String>,
    /// How log lines are written to standard error: `text` (for people; coloured only on a
    /// terminal, and never with NO_COLOR set) or `json` (one JSON object a line, for log
    /// collectors). Which lines: the CERTHUB_LOG filter, e.g. `info` or
    /// `warn,certhub_server=debug` [default: text] (TOML key log_format, environment
    /// CERTHUB_LOG_FORMAT).
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
    /// An http:// URL that each certificate entering an expiry horizon (90, 30, 7 days,
    /// expired) is POSTed to as JSON, signed in X-Certhub-Signature (HMAC-SHA256 with
    /// expiry_webhook_secret, which it needs) (TOML key expiry_webhook_url, environment
    /// CERTHUB_EXPIRY_WEBHOOK_URL).
    #[arg(long)]
    expiry_webhook_url: Option<String>,
    /// Refused device connections a minute from one source address; past them its new
    /// connections are closed at accept until the budget refills; 0 turns it off [default: 60].
    #[arg(long)]
    refusals_per_source: Option<String>,
    /// Refused CONNECTs a minute of one client id; past them the credential refused last
    /// time gets the same answer from memory (any other credential is judged); 0 turns it off
    /// [default: 6].
    #[arg(long)]
    refusals_per_client_id: Option<String>,
    /// Device connections that have not sent CONNECT yet from one source address; another
    /// closes that source's oldest [default: an eighth of pending_total].
    #[arg(long)]
    pending_per_source: Option<String>,
    /// Device connections that have not sent CONNECT yet in all; another closes the oldest
    /// [default: a quarter of the file limit, 256 to 16384].
    #[arg(long)]
    pending_total: Option<String>,
    /// HTTPS connections from one source address at once; more are closed at accept
    /// [default: 256].
    #[arg(long)]
    https_connections_per_source: Option<String>,
    /// Seconds in which identical refused CONNECTs (client id, reason, source address) make
    /// one audit record, with their count; 0 writes every one [default: 60].
    #[arg(long)]
    refusal_audit_window: Option<String>,
    /// The hub's state in PostgreSQL (`postgres://...`) instead of the data directory's SQLite;
    /// every node given the same database is a node of one hub (TOML key database_url,
    /// environment CERTHUB_DATABASE_URL).
    #[arg(long = "store", value_name = "URL")]
    store: Option<String>,
    /// A node of a cluster: the NATS server (`nats://host:4222`, or several of a NATS cluster,
    /// comma-separated; a user and password as `nats://user:password@host:4222`, a token as
    /// `nats://token@host:4222`) through which the hub's nodes close each other's sessions at
    /// once (a disabled device, the newest connection of an identity) and which keeps the
    /// telemetry stream (JetStream); needs --store (TOML key nats_url, environment
    /// CERTHUB_NATS_URL).
    #[arg(long = "nats", value_name = "URL")]
    nats: Option<String>,
    /// With --nats: copies of the telemetry stream on the NATS servers (1 to 5) [default: 3
    /// when the NATS server is in a cluster, else 1] (TOML key telemetry_replicas, environment
    /// CERTHUB_TELEMETRY_REPLICAS).
    #[arg(long)]
    telemetry_replicas: Option<String>,
    /// Where clients reach the hub, `HOST[:PORT]` (443 when left out): in a cluster, the load
    /// balancer's. The connection strings the hub prints name it, and service tokens may name
    /// its port; HOST must be one of the --hostname names [default: the first --hostname, with
    /// the HTTPS listener's port] (TOML key public_endpoint, environment
    /// CERTHUB_PUBLIC_ENDPOINT).
    #[arg(long)]
    public_endpoint: Option<String>,
}

/// The TOML file's keys; anything else is an error that names the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    hostnames: Option<Vec<String>>,
    https_addr: Option<String>,
    mqtt_addr: Option<String>,
    amqp_addr: Option<String>,
    database_url: Option<String>,
    nats_url: Option<String>,
    telemetry_replicas: Option<u64>,
    public_endpoint: Option<String>,
    verification_code_ttl: Option<u64>,
    max_device_sessions: Option<u64>,
    telemetry_retention: Option<u64>,
    telemetry_max_messages: Option<u64>,
    telemetry_max_bytes: Option<u64>,
    c2d_max_pending: Option<u64>,
    c2d_max_deliveries: Option<u64>,
    audit_retention: Option<u64>,
    audit_max_records: Option<u64>,
    crl_refresh: Option<u64>,
    expiry_check: Option<u64>,
    expiry_webhook_url: Option<String>,
    expiry_webhook_secret: Option<String>,
    log_format: Option<String>,
    refusals_per_source: Option<u64>,
    refusals_per_client_id: Option<u64>,
    pending_per_source: Option<u64>,
    pending_total: Option<u64>,
    https_connections_per_source: Option<u64>,
    refusal_audit_window: Option<u64>,
    file_store: Option<String>,
    file_store_options: Option<std::collections::BTreeMap<String, String>>,
    dangerous_file_store_allow_http: Option<bool>,
}

/// The configuration the hub runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub hostnames: Vec<String>,
    pub https_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    pub amqp_addr: SocketAddr,
    pub database_url: Option<String>,
    /// The cluster's NATS servers (with `database_url` only), credentials apart.
    pub nats: Option<certhub_server::NatsServers>,
    /// Copies of the cluster's telemetry stream; `None`: 3 on a NATS cluster, else 1.
    pub telemetry_replicas: Option<usize>,
    /// Where clients reach the hub (host, port), when not this process's first host name and
    /// HTTPS port.
    pub public_endpoint: Option<(String, u16)>,
    /// Where uploaded files go when not in the data directory: a remote object store's URL
    /// and its options.
    pub file_store: Option<RemoteFileStore>,
    pub verification_code_ttl: Duration,
    pub max_device_sessions: usize,
    pub telemetry_retention: Duration,
    pub telemetry_max_messages: i64,
    pub telemetry_max_bytes: i64,
    pub c2d: certhub_server::api::C2dLimits,
    pub audit_retention: Duration,
    pub audit_max_records: i64,
    /// Longest wait between two fetches of a CRL distribution point.
    pub crl_refresh: Duration,
    /// Time between two expiry checks.
    pub expiry_check: Duration,
    /// Where expiry events go, if anywhere.
    pub expiry_webhook: Option<certhub_server::expiry_watch::Webhook>,
    /// How log lines are written.
    pub log_format: LogFormat,
    pub refusals: certhub_server::refusals::RefusalLimits,
    /// 0: from the file limit at start.
    pub pending_per_source: usize,
    pub pending_total: usize,
    pub https_connections_per_source: usize,
}

/// How the hub writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: coloured on a terminal only.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        match value {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(ConfigError(format!(
                "log_format: {other:?} is not a log format: use text (for people) or json (one JSON object a line)"
            ))),
        }
    }
}

/// A configuration problem: the key and what is wrong with it.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A whole-number setting: flag > environment > file > default, within `range`.
fn number(
    key: &str,
    flag: &Option<String>,
    env_name: &str,
    file: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let text = flag
        .clone()
        .or_else(|| env(env_name))
        .or_else(|| file.map(|n| n.to_string()))
        .unwrap_or_else(|| default.to_string());
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError(format!(
            "{key}: {text:?} must be a whole number from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

/// The expiry webhook: an http:// URL with a host, and a secret of at least 16 characters
/// (the receiver checks each body's HMAC with it).
fn expiry_webhook(
    url: Option<String>,
    secret: Option<String>,
) -> Result<Option<certhub_server::expiry_watch::Webhook>, ConfigError> {
    match (url, secret) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ConfigError(
            "expiry_webhook_secret is set but expiry_webhook_url is not: give the URL the events go to".into(),
        )),
        (Some(url), secret) => {
            let host = url
                .strip_prefix("http://")
                .and_then(|r| r.split(['/', '?', '#']).next())
                .unwrap_or("");
            if host.is_empty() {
                return Err(ConfigError(format!(
                    "expiry_webhook_url: {url:?} must be an http:// URL with a host, e.g. http://alerts.internal:8080/certhub (events are signed, not encrypted: keep the receiver on a network you trust)"
                )));
            }
            match secret {
                Some(s) if s.len() >= 16 => Ok(Some(certhub_server::expiry_watch::Webhook {
                    url,
                    secret: s,
                })),
                _ => Err(ConfigError(
                    "expiry_webhook_url needs expiry_webhook_secret (TOML key, or CERTHUB_EXPIRY_WEBHOOK_SECRET), at least 16 characters: the receiver checks each event's X-Certhub-Signature with it".into(),
                )),
            }
        }
    }
}

fn addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError(format!(
            "{key}: {value:?} is not an address; write IP:PORT, e.g. 0.0.0.0:8443"
        ))
    })
}

fn check_hostname(h: &str) -> Result<(), ConfigError> {
    let ok = h.parse::<std::net::IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }));
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "hostname: {h:?} is not a DNS name or an IP address"
        )))
    }
}

impl Config {
    /// Resolves flags, environment, file and defaults, validating every key.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file_path = args
            .config
            .clone()
            .or_else(|| env("CERTHUB_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("config: {}: {e}", p.display())))?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError(format!("config: {}: {}", p.display(), e.message())))?
            }
        };
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| env("CERTHUB_DATA_DIR").map(PathBuf::from))
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("certhub-data"));
        let hostnames = if !args.hostnames.is_empty() {
            args.hostnames.clone()
        } else if let Some(h) = env("CERTHUB_HOSTNAMES") {
            h.split(',').map(|s| s.trim().to_string()).collect()
        } else {
            file.hostnames
                .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()])
        };
        if hostnames.is_empty() {
            return Err(ConfigError("hostname: at least one is needed".into()));
        }
        for h in &hostnames {
            check_hostname(h)?;
        }
        let https = args
            .https_addr
            .clone()
            .or_else(|| env("CERTHUB_HTTPS_ADDR"))
            .or(file.https_addr)
            .unwrap_or_else(|| "0.0.0.0:443".into());
        let mqtt = args
            .mqtt_addr
            .clone()
            .or_else(|| env("CERTHUB_MQTT_ADDR"))
            .or(file.mqtt_addr)
            .unwrap_or_else(|| "0.0.0.0:8883".into());
        let amqp = args
            .amqp_addr
            .clone()
            .or_else(|| env("CERTHUB_AMQP_ADDR"))
            .or(file.amqp_addr)
            .unwrap_or_else(|| "0.0.0.0:5671".into());
        let database_url = args
            .store
            .clone()
            .or_else(|| env("CERTHUB_DATABASE_URL"))
            .or(file.database_url);
        if let Some(url) = &database_url
            && !url.starts_with("postgres://")
            && !url.starts_with("postgresql://")
        {
            return Err(ConfigError(format!(
                "--store / database_url: {url:?} is not a postgres:// URL (leave it out for the embedded SQLite)"
            )));
        }
        let nats_url = args
            .nats
            .clone()
            .or_else(|| env("CERTHUB_NATS_URL"))
            .or(file.nats_url);
        let nats_servers = nats_url
            .as_deref()
            .map(certhub_server::NatsServers::parse)
            .transpose()
            .map_err(ConfigError)?;
        if nats_servers.is_some() && database_url.is_none() {
            return Err(ConfigError(
                "--nats / nats_url makes this hub a node of a cluster, whose nodes share one database: give --store postgres://... too".into(),
            ));
        }
        let telemetry_replicas = if args.telemetry_replicas.is_some()
            || env("CERTHUB_TELEMETRY_REPLICAS").is_some()
            || file.telemetry_replicas.is_some()
        {
            if nats_url.is_none() {
                return Err(ConfigError(
                    "telemetry_replicas is for the telemetry stream of a cluster: give --nats nats://... too".into(),
                ));
            }
            Some(number(
                "telemetry_replicas",
                &args.telemetry_replicas,
                "CERTHUB_TELEMETRY_REPLICAS",
                file.telemetry_replicas,
                1,
                1..=5,
            )? as usize)
        } else {
            None
        };
        let public_endpoint = match args
            .public_endpoint
            .clone()
            .or_else(|| env("CERTHUB_PUBLIC_ENDPOINT"))
            .or(file.public_endpoint)
        {
            None => None,
            Some(text) => Some(public_endpoint(&text, &hostnames)?),
        };
        let file_store = file_store(
            env("CERTHUB_FILE_STORE").or(file.file_store),
            env("CERTHUB_FILE_STORE_OPTIONS"),
            file.file_store_options,
            env("CERTHUB_DANGEROUS_FILE_STORE_ALLOW_HTTP")
                .map(|v| v == "true" || v == "1")
                .or(file.dangerous_file_store_allow_http)
                .unwrap_or(false),
        )?;
        let ttl = number(
            "verification_code_ttl",
            &args.verification_code_ttl,
            "CERTHUB_VERIFICATION_CODE_TTL",
            file.verification_code_ttl,
            3600,
            1..=604_800,
        )?;
        let max_device_sessions = number(
            "max_device_sessions",
            &args.max_device_sessions,
            "CERTHUB_MAX_DEVICE_SESSIONS",
            file.max_device_sessions,
            100_000,
            1..=10_000_000,
        )? as usize;
        let telemetry_retention = number(
            "telemetry_retention",
            &args.telemetry_retention,
            "CERTHUB_TELEMETRY_RETENTION",
            file.telemetry_retention,
            7 * 86_400,
            1..=3650 * 86_400,
        )?;
        let telemetry_max_messages = number(
            "telemetry_max_messages",
            &args.telemetry_max_messages,
            "CERTHUB_TELEMETRY_MAX_MESSAGES",
            file.telemetry_max_messages,
            10_000_000,
            1..=i64::MAX as u64,
        )?;
        let telemetry_max_bytes = number(
            "telemetry_max_bytes",
            &args.telemetry_max_bytes,
            "CERTHUB_TELEMETRY_MAX_BYTES",
            file.telemetry_max_bytes,
            8 << 30,
            (1 << 20)..=i64::MAX as u64,
        )?;
        let c2d_max_pending = number(
            "c2d_max_pending",
            &args.c2d_max_pending,
            "CERTHUB_C2D_MAX_PENDING",
            file.c2d_max_pending,
            50,
            1..=5000,
        )?;
        let c2d_max_deliveries = number(
            "c2d_max_deliveries",
            &args.c2d_max_deliveries,
            "CERTHUB_C2D_MAX_DELIVERIES",
            file.c2d_max_deliveries,
            10,
            1..=100,
        )?;
        let audit_retention = number(
            "audit_retention",
            &args.audit_retention,
            "CERTHUB_AUDIT_RETENTION",
            file.audit_retention,
            90 * 86_400,
            1..=3650 * 86_400,
        )?;
        let audit_max_records = number(
            "audit_max_records",
            &args.audit_max_records,
            "CERTHUB_AUDIT_MAX_RECORDS",
            file.audit_max_records,
            1_000_000,
            1..=i64::MAX as u64,
        )?;
        let crl_refresh = number(
            "crl_refresh",
            &args.crl_refresh,
            "CERTHUB_CRL_REFRESH",
            file.crl_refresh,
            3600,
            1..=7 * 86_400,
        )?;
        let expiry_check = number(
            "expiry_check",
            &args.expiry_check,
            "CERTHUB_EXPIRY_CHECK",
            file.expiry_check,
            60,
            1..=86_400,
        )?;
        let expiry_webhook = expiry_webhook(
            args.expiry_webhook_url
                .clone()
                .or_else(|| env("CERTHUB_EXPIRY_WEBHOOK_URL"))
                .or(file.expiry_webhook_url.clone()),
            env("CERTHUB_EXPIRY_WEBHOOK_SECRET").or(file.expiry_webhook_secret.clone()),
        )?;
        let log_format = match args
            .log_format
            .clone()
            .or_else(|| env("CERTHUB_LOG_FORMAT"))
            .or(file.log_format.clone())
        {
            Some(f) => LogFormat::parse(&f)?,
            None => LogFormat::Text,
        };
        let refusals_per_source = number(
            "refusals_per_source",
            &args.refusals_per_source,
            "CERTHUB_REFUSALS_PER_SOURCE",
            file.refusals_per_source,
            60,
            0..=1_000_000,
        )?;
        let refusals_per_client_id = number(
            "refusals_per_client_id",
            &args.refusals_per_client_id,
            "CERTHUB_REFUSALS_PER_CLIENT_ID",
            file.refusals_per_client_id,
            6,
            0..=1_000_000,
        )?;
        let pending_per_source = number(
            "pending_per_source",
            &args.pending_per_source,
            "CERTHUB_PENDING_PER_SOURCE",
            file.pending_per_source,
            0,
            0..=1_000_000,
        )?;
        let pending_total = number(
            "pending_total",
            &args.pending_total,
            "CERTHUB_PENDING_TOTAL",
            file.pending_total,
            0,
            0..=1_000_000,
        )?;
        let https_connections_per_source = number(
            "https_connections_per_source",
            &args.https_connections_per_source,
            "CERTHUB_HTTPS_CONNECTIONS_PER_SOURCE",
            file.https_connections_per_source,
            256,
            1..=1_000_000,
        )?;
        let refusal_audit_window = number(
            "refusal_audit_window",
            &args.refusal_audit_window,
            "CERTHUB_REFUSAL_AUDIT_WINDOW",
            file.refusal_audit_window,
            60,
            0..=86_400,
        )?;
        Ok(Self {
            https_connections_per_source: https_connections_per_source as usize,
            refusals: certhub_server::refusals::RefusalLimits {
                per_source: certhub_server::refusals::Rate::per_minute(refusals_per_source as u32),
                per_client_id: certhub_server::refusals::Rate::per_minute(
                    refusals_per_client_id as u32,
                ),
                collapse_ms: refusal_audit_window * 1000,
            },
            pending_per_source: pending_per_source as usize,
            pending_total: pending_total as usize,
            audit_retention: Duration::from_secs(audit_retention),
            audit_max_records: audit_max_records as i64,
            crl_refresh: Duration::from_secs(crl_refresh),
            expiry_check: Duration::from_secs(expiry_check),
            expiry_webhook,
            log_format,
            c2d: certhub_server::api::C2dLimits {
                max_pending: c2d_max_pending as i64,
                max_deliveries: c2d_max_deliveries as i64,
            },
            telemetry_retention: Duration::from_secs(telemetry_retention),
            telemetry_max_messages: telemetry_max_messages as i64,
            telemetry_max_bytes: telemetry_max_bytes as i64,
            max_device_sessions,
            verification_code_ttl: Duration::from_secs(ttl),
            data_dir,
            hostnames,
            https_addr: addr("https_addr", &https)?,
            mqtt_addr: addr("mqtt_addr", &mqtt)?,
            amqp_addr: addr("amqp_addr", &amqp)?,
            database_url,
            nats: nats_servers,
            telemetry_replicas,
            public_endpoint,
            file_store,
        })
    }
}

/// A remote object store's URL and its options (object_store's keys).
pub type RemoteFileStore = (String, Vec<(String, String)>);

/// The remote store for uploaded files, if one is configured: its URL checked, its options
/// (from the file's `[file_store_options]` table, then `CERTHUB_FILE_STORE_OPTIONS` as
/// `key=value,...`, then the store's own environment variables) each a key the store knows.
/// Plain HTTP to the store needs `dangerous_file_store_allow_http`.
fn file_store(
    url: Option<String>,
    env_options: Option<String>,
    file_options: Option<std::collections::BTreeMap<String, String>>,
    allow_http: bool,
) -> Result<Option<RemoteFileStore>, ConfigError> {
    use certhub_server::files::RemoteKind;
    let Some(url) = url else {
        if file_options.is_some() || env_options.is_some() {
            return Err(ConfigError(
                "file_store_options: given without file_store (the store's URL, e.g. s3://bucket/prefix)".into(),
            ));
        }
        return Ok(None);
    };
    if url.starts_with("file:") {
        // A directory every node reaches (NFS, a shared volume): the local store, elsewhere.
        certhub_server::files::shared_dir(&url).map_err(ConfigError)?;
        if file_options.is_some() || env_options.is_some() {
            return Err(ConfigError(format!(
                "file_store_options: a directory ({url}) takes no options; leave them out"
            )));
        }
        return Ok(Some((url, Vec::new())));
    }
    let Some(kind) = RemoteKind::of(&url) else {
        return Err(ConfigError(format!(
            "file_store: {url:?} is not a store certhub can use: s3://bucket[/prefix] (S3 and S3-compatible stores), az://container[/prefix] (Azure Blob Storage) or file:///absolute/path (a directory every node of a cluster reaches); leave it out to keep files in the data directory"
        )));
    };
    let mut options: Vec<(String, String)> = file_options.unwrap_or_default().into_iter().collect();
    for pair in env_options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|p| !p.trim().is_empty())
    {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(ConfigError(format!(
                "CERTHUB_FILE_STORE_OPTIONS: {pair:?} is not key=value"
            )));
        };
        options.push((k.trim().to_string(), v.trim().to_string()));
    }
    for (k, _) in &options {
        if k.to_ascii_lowercase().contains("allow_http") {
            return Err(ConfigError(format!(
                "file_store_options: {k} is not taken here; plain HTTP to the file store sends devices' files unencrypted: set dangerous_file_store_allow_http = true (or CERTHUB_DANGEROUS_FILE_STORE_ALLOW_HTTP=true) if you mean it"
            )));
        }
        kind.check_option(k)
            .map_err(|e| ConfigError(format!("file_store_options: {e}")))?;
    }
    for (name, value) in std::env::vars() {
        if let Some(rest) = name.strip_prefix(kind.env_prefix()) {
            let key = format!("{}{}", kind.env_prefix(), rest).to_ascii_lowercase();
            if !options.iter().any(|(k, _)| k == &key)
                && kind.check_option(&key).is_ok()
                && !key.contains("allow_http")
            {
                options.push((key, value));
            }
        }
    }
    if allow_http {
        options.push(("allow_http".into(), "true".into()));
    }
    certhub_server::files::FileStore::remote(&url, &options).map_err(ConfigError)?;
    Ok(Some((url, options)))
}

/// Opens the hub's store: PostgreSQL when configured, else SQLite in the data directory.
/// Takes the data directory for this hub (released when the process ends, however it ends).
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("{}: cannot create the data directory", data_dir.display()))?;
    let path = data_dir.join("hub.lock");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{}: another `certhub serve` is running on this data directory; stop it first, or give this one its own --data-dir",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock the data directory", path.display()))
        }
    }
}

/// Where a node on PostgreSQL records its database's URL in its data directory, so that the
/// CLI on that machine (`--data-dir`) reaches the same hub (owner-only, like the TLS keys: the
/// URL may hold a password).
pub const DATABASE_URL_FILE: &str = "database-url";

/// The database a data directory's hub uses: the URL its node recorded, else its SQLite file.
pub fn recorded_database_url(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(DATABASE_URL_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Records (or, for SQLite, forgets) the database URL in the data directory.
fn record_database_url(data_dir: &Path, database_url: Option<&str>) -> Result<()> {
    let path = data_dir.join(DATABASE_URL_FILE);
    match database_url {
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("{}: cannot remove it", path.display()))
            }
            _ => Ok(()),
        },
        Some(url) => {
            std::fs::create_dir_all(data_dir).with_context(|| {
                format!("{}: cannot create the data directory", data_dir.display())
            })?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            std::io::Write::write_all(&mut opts.open(&path)?, format!("{url}\n").as_bytes())
                .with_context(|| format!("{}: cannot write it", path.display()))
        }
    }
}

pub async fn open_store(
    data_dir: &Path,
    database_url: Option<&str>,
) -> Result<certhub_store::Store> {
    match database_url {
        Some(url) => certhub_store::Store::open(url)
            .await
            .context("opening the PostgreSQL database"),
        None => {
            std::fs::create_dir_all(data_dir).with_context(|| {
                format!("{}: cannot create the data directory", data_dir.display())
            })?;
            let path = data_dir.join("certhub.db");
            let store = certhub_store::Store::open_sqlite(&path)
                .await
                .with_context(|| format!("{}: opening the database", path.display()))?;
            if let Some(b) = store.upgrade_backup() {
                eprintln!(
                    "certhub: upgraded the database from schema step {} to {}; the copy taken before is {} (to go back to the older certhub: stop this one, put the copy in place of certhub.db and remove certhub.db-wal and certhub.db-shm)",
                    b.from,
                    b.to,
                    b.path.display()
                );
            }
            Ok(store)
        }
    }
}

/// The host (and port, unless 443) clients put in `HostName=`.
/// Closes every device session, again for those that finish their handshake meanwhile,
/// for at most 5 s.
async fn drain(state: &certhub_server::AppState) {
    const WHY: &str = "this node is stopping (drain): connect again, to another node";
    let mut closed = state.sessions().kick_all(WHY);
    let say = |line: String| {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    say(format!(
        "certhub is stopping: no new connections; closing {closed} device sessions"
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut quiet = 0;
    while quiet < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match state.sessions().kick_all(WHY) {
            0 => quiet += 1,
            n => {
                closed += n;
                quiet = 0;
            }
        }
    }
    state.leave_cluster().await;
    say(format!("drained: {closed} device sessions closed"));
}

/// `HOST[:PORT]` of `public_endpoint`, HOST one of `hostnames` (so the server certificate and
/// the tokens' scope cover it).
fn public_endpoint(text: &str, hostnames: &[String]) -> Result<(String, u16), ConfigError> {
    let bad = |why: String| {
        ConfigError(format!(
            "public_endpoint: {text:?} {why} (HOST or HOST:PORT, where clients reach the hub)"
        ))
    };
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !h.is_empty() => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(format!("has no port number 1-65535 after the colon: {p:?}")))?,
        ),
        _ => (text, 443),
    };
    if !hostnames.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(bad(format!(
            "names {host}, which is not one of this hub's host names ({}): add --hostname {host}",
            hostnames.join(", ")
        )));
    }
    Ok((host.to_string(), port))
}

pub fn public_host(hostname: &str, port: u16) -> String {
    if port == 443 {
        hostname.to_string()
    } else {
        format!("{hostname}:{port}")
    }
}

/// A listener of the hub, named after its setting (`https_addr`, `mqtt_addr`) so that an error
/// says which flag, variable or configuration key to change.
#[derive(Debug, Clone, Copy)]
enum Listener {
    Https,
    Mqtt,
    Amqp,
}

impl Listener {
    /// The flag, the environment variable and the configuration file key.
    fn setting(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Https => ("--https-addr", "CERTHUB_HTTPS_ADDR", "https_addr"),
            Self::Mqtt => ("--mqtt-addr", "CERTHUB_MQTT_ADDR", "mqtt_addr"),
            Self::Amqp => ("--amqp-addr", "CERTHUB_AMQP_ADDR", "amqp_addr"),
        }
    }

    /// What listens there, for people.
    fn what(self) -> &'static str {
        match self {
            Self::Https => "the service API (HTTPS)",
            Self::Mqtt => "devices (MQTT)",
            Self::Amqp => "devices and services (AMQP)",
        }
    }

    /// A port to suggest instead of a privileged one.
    fn example(self) -> &'static str {
        match self {
            Self::Https => "0.0.0.0:8443",
            Self::Mqtt => "0.0.0.0:8884",
            Self::Amqp => "0.0.0.0:5672",
        }
    }
}

fn bind_error(listener: Listener, addr: SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let (flag, env, key) = listener.setting();
    let what = listener.what();
    if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        let clients = match listener {
            Listener::Https => {
                "clients then use HostName=<host>:8443; the Azure SDKs' HTTPS and WebSocket transports dial 443 unless told otherwise"
            }
            Listener::Mqtt => "the Azure device SDKs dial 8883 for MQTT",
            Listener::Amqp => "the Azure SDKs dial 5671 for AMQP",
        };
        anyhow::anyhow!(
            "cannot listen on {addr} for {what}: permission denied. Ports below 1024 need root or \
             the CAP_NET_BIND_SERVICE capability. Either choose another port with {flag} (or \
             {env}, or {key} in the configuration file), e.g. `{flag} {example}` ({clients}), \
             or let certhub bind low ports: `sudo setcap cap_net_bind_service=+ep $(command -v certhub)`",
            example = listener.example()
        )
    } else if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot listen on {addr} for {what}: the address is in use by another program (another hub?); choose another with {flag} (or {env}, or {key} in the configuration file)"
        )
    } else {
        anyhow::anyhow!("cannot listen on {addr} for {what} ({flag}): {e}")
    }
}

/// Prints a line of the start-up banner. Unlike `out!`, a closed stdout (a supervisor that
/// stopped reading) must not stop the hub, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn run(args: ServeArgs) -> Result<Outcome> {
    let config = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

/// Connections the kernel queues for a listener before the hub accepts them (capped by
/// `net.core.somaxconn`). tokio's `TcpListener::bind` asks for 128, which a fleet booting at
/// once overflows: each SYN dropped costs its device a second before it is sent again.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
fn bind_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted hub binds again while old connections linger in
    // TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Log lines to standard error, filtered by CERTHUB_LOG (default `info`): text for people,
/// with colour only when standard error is a terminal and NO_COLOR is not set, or JSON lines.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("CERTHUB_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,rustls::msgs::handshake=error")
        })
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
    };
}

async fn serve(config: Config) -> Result<Outcome> {
    init_logging(config.log_format);

    // The data directory holds every key: owner-only, and refused if others can write it.
    certhub_server::data_dir::create_owner_only();
    let secured = certhub_server::data_dir::secure(&config.data_dir)?;
    for (path, mode) in &secured.paths {
        tracing::warn!(
            path = %path.display(),
            "was readable or writable by other users (mode {mode:o}); now owner-only"
        );
    }
    // The hub keeps the identities devices connect with in memory: the embedded database
    // must have no second hub writing to it.
    let _data_dir_lock = match config.database_url {
        None => Some(lock_data_dir(&config.data_dir)?),
        Some(_) => None,
    };
    let store = open_store(&config.data_dir, config.database_url.as_deref()).await?;
    record_database_url(&config.data_dir, config.database_url.as_deref())?;
    if config.database_url.is_some() {
        let replaced = certhub_server::tls::share_ca(
            &store,
            &config.data_dir.join("tls"),
            time::OffsetDateTime::now_utc(),
        )
        .await
        .context("the hub's server CA, shared by its nodes")?;
        if replaced {
            tracing::info!(
                "took the hub's server CA from the database: this node's server certificate is issued by it"
            );
        }
    }
    let identity = certhub_server::tls::load_or_create(
        &config.data_dir.join("tls"),
        &config.hostnames,
        time::OffsetDateTime::now_utc(),
    )
    .context("the hub's TLS identity")?;
    let tls = identity.https_config()?;
    let device_tls = identity.device_config()?;
    let state = certhub_server::AppState::with_code_ttl(
        store.clone(),
        config.hostnames.clone(),
        config.verification_code_ttl,
    )
    .await?;
    state.set_c2d_limits(config.c2d);
    state.set_server_identity(identity.clone());
    // This node's own name: its first host name that is not the public endpoint's (a
    // cluster's nodes list the balancer's name too, in any order).
    let node_name = config
        .hostnames
        .iter()
        .find(|h| Some(h.as_str()) != config.public_endpoint.as_ref().map(|(p, _)| p.as_str()))
        .unwrap_or(&config.hostnames[0])
        .clone();
    if let Some(servers) = &config.nats {
        let limits = certhub_server::telemetry_stream::StreamLimits {
            max_age: config.telemetry_retention,
            max_messages: config.telemetry_max_messages,
            replicas: config.telemetry_replicas,
        };
        state.join_cluster(servers, &limits).await.map_err(|e| {
            anyhow::anyhow!("{e}: is NATS running there (nats-server -a HOST -p PORT)?")
        })?;
    }
    // Uploaded files live in the data directory (`files/`), also when the database is
    // PostgreSQL, unless a remote store is configured.
    let files = match &config.file_store {
        None => certhub_server::files::FileStore::local(&config.data_dir.join("files")),
        Some((url, _)) if url.starts_with("file:") => certhub_server::files::shared_dir(url)
            .and_then(|dir| certhub_server::files::FileStore::shared(&dir)),
        Some((url, options)) => certhub_server::files::FileStore::remote(url, options),
    };
    let files = files.map_err(anyhow::Error::msg)?;
    if config.nats.is_some() && config.file_store.is_none() {
        tracing::warn!(
            "uploaded files are kept in this node's data directory, where the other nodes of the cluster cannot read them: set file_store (s3://, az://, or file:///a/shared/directory)"
        );
    }
    // A remote store that cannot be reached (wrong endpoint, bucket or credentials) stops the
    // start here, not at a device's first upload.
    files
        .check()
        .await
        .map_err(|e| anyhow::anyhow!("the file store cannot be used: {e}"))?;
    state.set_file_store(files);
    if store.autovacuum_off().await.unwrap_or(false) {
        tracing::warn!(
            "autovacuum is off on this PostgreSQL: its statistics and visibility map are never brought up to date, so twin queries and registry reads slow down as the registry grows; turn it on (autovacuum = on in postgresql.conf) or run VACUUM ANALYZE after large imports"
        );
    }
    // On PostgreSQL, identities are kept in memory too: the database announces every change
    // of one (whichever process made it), and this hub forgets what it is told.
    if let Err(e) = store.keep_identities_listening().await {
        tracing::warn!(error = %e, "cannot listen for identity changes on PostgreSQL: each connection reads its device from the database");
    }
    // Persistent MQTT sessions likewise (PostgreSQL without NATS): each time the hub begins to
    // hear their writes, it reads them all again; from then on a connection reads its saved
    // session only when one was announced as written.
    if store.backend() == certhub_store::Backend::Postgres && !state.in_cluster() {
        let mut listening = store.mqtt_session_listening();
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let generation = *listening.borrow_and_update();
                // Until the copy is read, every connection reads its own session: try again
                // each second (unless the hub began listening anew meanwhile).
                if generation > 0 {
                    loop {
                        if state.reload_persistent_sessions().await {
                            state.store().mqtt_sessions_read_again(generation);
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if listening.has_changed().unwrap_or(true) {
                            break;
                        }
                    }
                }
                if listening.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    // The registry into memory, beside the listeners (a device that connects first is read
    // from the database as before): after a restart the whole fleet reconnects at once, and
    // each first connection then costs no database read.
    let warm_store = store.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match warm_store.warm_identities().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                identities = n,
                ms = started.elapsed().as_millis() as u64,
                "registry read into memory for the connect path"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "reading the registry into memory failed; devices are read as they connect")
            }
        }
    });
    // The listeners last, once the node can serve: a connection accepted now is answered (a
    // socket bound earlier would take connections into its backlog while the node still
    // waits for NATS, and a load balancer's TCP check would count the node as up).
    let listener = bind_listener(config.https_addr)
        .map_err(|e| bind_error(Listener::Https, config.https_addr, &e))?;
    let bound = listener.local_addr()?;
    let mqtt_listener = bind_listener(config.mqtt_addr)
        .map_err(|e| bind_error(Listener::Mqtt, config.mqtt_addr, &e))?;
    let mqtt_bound = mqtt_listener.local_addr()?;
    let amqp_listener = bind_listener(config.amqp_addr)
        .map_err(|e| bind_error(Listener::Amqp, config.amqp_addr, &e))?;
    let amqp_bound = amqp_listener.local_addr()?;
    let (public_name, public_port) = config
        .public_endpoint
        .clone()
        .unwrap_or_else(|| (config.hostnames[0].clone(), bound.port()));
    let host = public_host(&public_name, public_port);
    store
        .put_endpoint(&host)
        .await
        .context("recording the service endpoint")?;
    state.set_node_address(&public_host(&node_name, bound.port()));
    state.set_public_host(&public_name);
    state.set_public_port(public_port);
    state.set_listen_port(bound.port());
    // In a cluster: the other nodes hear of this one from now on.
    state.start_heartbeat();
    // Staged blocks no open upload can use are removed every minute (and once at start).
    let staging_sweep = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                if let Some(files) = state.files() {
                    let now_ms =
                        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
                    match files.sweep_staging(&state, now_ms).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(folders = n, "staged blocks of closed uploads removed")
                        }
                        Err(e) => tracing::warn!(error = %e, "staged blocks not swept"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
    };
    // Settings written by another process (`certhub hub set --local`, another node) take
    // effect, and close the sessions a switch shuts out, within half a second; so do CA
    // changes made through another node (the sessions of a CA deleted there are closed here).
    let settings_watch = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Err(e) = state.reload_settings().await {
                    tracing::warn!(error = %e, "hub settings not re-read");
                }
                // Trust and provisioning changes made through another node.
                if let Err(e) = state.follow_changes().await {
                    tracing::warn!(error = %e, "changes made by other nodes not followed");
                }
            }
        })
    };

    let dir = config.data_dir.display();
    say!("certhub {} is running", env!("CARGO_PKG_VERSION"));
    let own = public_host(&node_name, bound.port());
    if own == host {
        say!("  service API      https://{host}  (listening on {bound})");
    } else {
        say!(
            "  service API      https://{own}  (listening on {bound}; clients reach the hub at https://{host})"
        );
    }
    say!(
        "  data directory   {dir}  ({})",
        match &config.database_url {
            Some(_) => "PostgreSQL".to_string(),
            None => format!("SQLite: {dir}/certhub.db"),
        }
    );
    say!(
        "  server CA        {}  (clients trust this; `certhub hub server-ca` prints it){}",
        identity.ca_path.display(),
        if identity.created_ca { " [new]" } else { "" }
    );
    say!("  host names       {}", config.hostnames.join(", "));
    say!("  connect          certhub hub connection-string --data-dir {dir}");
    say!(
        "  devices (AMQP)   {}:{}  (listening on {amqp_bound}; AMQP 1.0 over TLS, client certificates or SAS via CBS)",
        node_name,
        amqp_bound.port()
    );
    say!(
        "  devices (MQTT)   {}:{}  (listening on {mqtt_bound}; TLS 1.2/1.3, client certificates or SAS)",
        node_name,
        mqtt_bound.port()
    );
    // The same in the log, for journald and log collectors (the lines above go to stdout).
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        https = %bound,
        mqtt = %mqtt_bound,
        amqp = %amqp_bound,
        data_dir = %dir,
        store = if config.database_url.is_some() { "postgres" } else { "sqlite" },
        "certhub is running"
    );

    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    // The telemetry log's size cap, checked every second.
    let size_cap = tokio::spawn(certhub_server::enforce_telemetry_size_cap(
        state.clone(),
        config.telemetry_max_bytes,
    ));
    // Telemetry retention: by age and by count, checked twice per retention period (at most
    // every minute); expired cloud-to-device messages leave their queues at the same pace.
    let pruning = {
        let store = store.clone();
        let telemetry = state.telemetry().clone();
        let retention = config.telemetry_retention;
        let keep = config.telemetry_max_messages;
        let (audit_retention, audit_keep) = (config.audit_retention, config.audit_max_records);
        let every = (retention.min(audit_retention) / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let cutoff = time::OffsetDateTime::now_utc() - retention;
                let before_ms = (cutoff.unix_timestamp_nanos() / 1_000_000) as i64;
                // A cluster's stream keeps its own limits.
                let pruned = if telemetry.is_stream() {
                    Ok((0, 0))
                } else {
                    store.prune_telemetry(before_ms, keep).await
                };
                match pruned {
                    Ok((0, _)) => {}
                    Ok((n, bytes)) => {
                        telemetry.forget_bytes(bytes);
                        tracing::info!(deleted = n, "telemetry retention");
                    }
                    Err(e) => tracing::warn!(error = %e, "telemetry retention failed"),
                }
                let cutoff = time::OffsetDateTime::now_utc() - audit_retention;
                let before_ms = (cutoff.unix_timestamp_nanos() / 1_000_000) as i64;
                match store.prune_audit(before_ms, audit_keep).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "audit retention"),
                    Err(e) => tracing::warn!(error = %e, "audit retention failed"),
                }
            }
        })
    };
    // Expired cloud-to-device messages leave their queues (with feedback where asked for)
    // within seconds; unreceived feedback goes after its time to live.
    let c2d_expiry = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let now_ms =
                    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
                match store.expire_c2d(now_ms).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "cloud-to-device messages expired"),
                    Err(e) => tracing::warn!(error = %e, "cloud-to-device expiry failed"),
                }
                let before = now_ms - certhub_server::C2D_FEEDBACK_TTL_MS;
                match store
                    .prune_queue(certhub_store::ServiceQueue::Feedback, before)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(dropped = n, "unreceived C2D feedback expired"),
                    Err(e) => tracing::warn!(error = %e, "C2D feedback expiry failed"),
                }
                let before = now_ms - certhub_server::FILE_NOTIFICATION_TTL_MS;
                match store
                    .prune_queue(certhub_store::ServiceQueue::FileNotifications, before)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(dropped = n, "unreceived file notifications expired"),
                    Err(e) => tracing::warn!(error = %e, "file notification expiry failed"),
                }
            }
        })
    };
    // CRLs from the distribution points the devices' certificates name.
    let crl_fetch = certhub_server::crl_fetch::spawn(state.clone(), config.crl_refresh);
    // Certificate expiry: the /metrics gauges and the announcements.
    let expiry_watch = certhub_server::expiry_watch::spawn(
        state.clone(),
        config.expiry_check,
        config.expiry_webhook.clone(),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Connections that sit still before CONNECT are bounded by the file limit, raised to its
    // hard limit first.
    let nofile = certhub_server::gate::raise_file_limit();
    let mut pending = certhub_server::gate::GateLimits::for_file_limit(nofile);
    if config.pending_total > 0 {
        pending.total = config.pending_total;
        pending.per_source = (config.pending_total / 8).max(1);
    }
    if config.pending_per_source > 0 {
        pending.per_source = config.pending_per_source;
    }
    let devices = certhub_server::MqttOptions {
        max_sessions: config.max_device_sessions,
        pending,
        refusals: config.refusals,
    };
    let https = certhub_server::serve_https(
        listener,
        tls,
        certhub_server::hub_router(state.clone(), devices),
        state.clone(),
        certhub_server::HttpsOptions {
            per_source: config.https_connections_per_source,
            pending,
        },
        stopped(stop_rx.clone()),
    );
    let amqp = certhub_server::serve_amqp(
        amqp_listener,
        device_tls.clone(),
        state.clone(),
        devices,
        stopped(stop_rx.clone()),
    );
    let draining = state.clone();
    let mqtt =
        certhub_server::serve_mqtt(mqtt_listener, device_tls, state, devices, stopped(stop_rx));
    let signal = async {
        shutdown.await;
        // Drain: no new connections, then every device session closed, so that devices
        // reconnect at once (through a load balancer, to another node) rather than wait for
        // their keep-alive to notice a node that vanished.
        let _ = stop_tx.send(true);
        drain(&draining).await;
    };
    // The accept loops run as tasks on the runtime's workers. Run inside `block_on`, they ran
    // on the main thread: each readable listener woke that thread from a worker, and each
    // accepted connection went back to a worker through the runtime's shared queue, with a
    // wake-up across threads both ways (docs/performance.md, stop 34).
    // A listener that panics still ends the hub at once, as it did on the main thread.
    let listener = |task: tokio::task::JoinHandle<()>| async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    };
    tokio::join!(
        listener(tokio::spawn(https)),
        listener(tokio::spawn(mqtt)),
        listener(tokio::spawn(amqp)),
        signal
    );
    pruning.abort();
    size_cap.abort();
    c2d_expiry.abort();
    crl_fetch.abort();
    expiry_watch.abort();
    settings_watch.abort();
    staging_sweep.abort();
    store.close().await;
    say!("certhub stopped");
    Ok(Outcome::Ok)
}
