//! `certhub bench`: a load generator that speaks MQTT 3.1.1 over mutual TLS to any broker
//! (certhub, Mosquitto, ...) with the device credentials of a supply chain, and measures
//! connect rate, held connections, telemetry throughput, a reconnect storm and, on certhub,
//! how fast a revoked device loses its connection and how fast a fleet provisions itself
//! through the device provisioning service (a first-boot storm).
//!
//! Every connection makes a full TLS handshake (no session resumption), as a fleet of devices
//! coming online does.
#![forbid(unsafe_code)]

mod amqp;
mod api;
mod conn;
mod devices;
mod provision;
mod query;
mod reads;
mod report;
mod sample;
mod scenarios;
mod ws;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

/// Measure a broker; see the scenarios.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Connect, handshake, CONNECT, CONNACK, DISCONNECT, close, in loops: connects per second.
    ConnectRate(ConnectRateArgs),
    /// Open N authenticated connections and hold them: time to establish, server memory.
    Hold(HoldArgs),
    /// C connected clients publish telemetry with up to W QoS 1 messages in flight each.
    Telemetry(TelemetryArgs),
    /// Hold N connections, drop them all at once, reconnect them all: time until all are back.
    Storm(StormArgs),
    /// certhub only: hold N connections, disable K devices through the service API, measure
    /// how soon the hub closes their connections; then enable them again.
    Revoke(RevokeArgs),
    /// Azure DPS (certhub's provisioning endpoint): N widgets register at once over MQTT over
    /// mutual TLS, then connect to the hub they were assigned: registrations per second and
    /// per server-CPU-second, time until all are connected.
    ///
    /// --devices, --host and --port name the widgets and the provisioning endpoint (certhub's
    /// is its MQTT port); the registration id is the leaf's CN. Each widget connects with user
    /// name `{idScope}/registrations/{id}/api-version=2019-03-31&ClientVersion=certhub-bench`,
    /// subscribes to `$dps/registrations/res/#`, publishes its register request, polls while
    /// the answer is 202 and asks again after retry-after on 429 and 5xx; then it connects to
    /// the hub it was assigned (the answer's assignedHub, on --hub-port) as the device, with
    /// --username-template ({host}: the assigned hub). The hub needs an enrollment that admits
    /// the widgets, e.g. `certhub dps enrollment-group create --id widgets --ca company-x`.
    Provision(ProvisionArgs),
    /// Twin queries against a registry of many devices (Azure's `POST /devices/query`): the
    /// first page's latency per query shape (deviceId, tag and status filters) and COUNT()s;
    /// --populate N creates and tags the devices first.
    Query(query::QueryArgs),
    /// One device's telemetry read back through the service API (`GET /messages/events?device=`):
    /// each named device's first page, R times, timed; run it against a log that `bench
    /// telemetry` filled.
    Reads(reads::ReadsArgs),
}

/// TLS protocol version.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TlsVersion {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

/// How MQTT reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// MQTT over TLS (8883).
    Tls,
    /// MQTT over WebSockets over TLS: `wss://host:port/$iothub/websocket`, subprotocol `mqtt`
    /// (Azure's, on 443); give --port the broker's HTTPS port.
    Ws,
    /// AMQP 1.0 over TLS (Azure's, on 5671), telemetry only: each device opens a sender on
    /// `/devices/{id}/messages/events` and a message counts once the hub accepts it (certhub
    /// accepts once it is durable); give --port the AMQP port.
    Amqp,
}

/// Key exchange group.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kx {
    X25519,
    P256,
}

/// Seconds, as a non-negative finite number.
fn seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=1e7).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

/// A positive rate.
fn rate(s: &str) -> std::result::Result<f64, String> {
    match s.trim_end_matches("/s").parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a positive rate (per second)")),
    }
}

/// `A-B` (an IPv4 range, both ends included) or `A,B,C`.
fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().with_context(|| format!("{a:?}"))?;
        let b: Ipv4Addr = b.trim().parse().with_context(|| format!("{b:?}"))?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a >= 65536 {
            bail!("--source-addrs {s}: the range must go up and hold at most 65536 addresses");
        }
        return Ok((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))).collect());
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<IpAddr>()
                .with_context(|| format!("--source-addrs: {p:?} is not an IP address"))
        })
        .collect()
}

/// Where to connect and as whom; shared by all scenarios.
#[derive(Debug, Args, Clone)]
struct Common {
    /// A folder of device folders, each `<device-id>/chain.pem` (leaf and intermediates) and
    /// `<device-id>/key.pem`, as `certhub pki demo supply-chain --out X --devices N` writes
    /// under X/devices. The client id is the folder's name; scenarios use them in name order.
    /// The broker must know them: for certhub, register X/company-x with proof of possession
    /// and import the ids as CA-authenticated devices (`certhub device import` of one
    /// `{"deviceId": ID, "authentication": {"type": "certificateAuthority"}}` line per folder;
    /// the README's "Measuring" section gives the commands).
    #[arg(long)]
    devices: PathBuf,
    /// The broker's host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The broker's MQTT-over-TLS port.
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// The server CA (PEM) to trust.
    #[arg(long)]
    ca: PathBuf,
    /// TLS server name (SNI, and the name the certificate must carry) [default: --host].
    #[arg(long)]
    server_name: Option<String>,
    /// MQTT user name; {host} is the server name, {id} the client id (Azure's form; Mosquitto
    /// ignores it).
    #[arg(long, default_value = "{host}/{id}/?api-version=2021-04-12")]
    username_template: String,
    /// MQTT over TLS, or over WebSockets, or AMQP (telemetry only).
    #[arg(long, value_enum, default_value = "tls")]
    transport: Transport,
    /// TLS version.
    #[arg(long, value_enum, default_value = "1.3")]
    tls: TlsVersion,
    /// Key exchange group.
    #[arg(long, value_enum, default_value = "x25519")]
    kx: Kx,
    /// Local addresses to connect from, round-robin: `127.0.0.1-127.0.0.50` or `A,B,C` (more
    /// ephemeral ports than one address has).
    #[arg(long)]
    source_addrs: Option<String>,
    /// The broker's process id: report its CPU time and resident memory (Linux /proc).
    /// Repeat it or give a comma-separated list for a server made of several processes (cluster
    /// nodes, NATS servers, database backends): their CPU times and resident memory are summed,
    /// and each process's CPU time is listed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Seconds one connection attempt may take (TCP, TLS, CONNACK).
    #[arg(long, default_value = "10", value_parser = seconds)]
    timeout: f64,
    /// Attempts per connection after the first, when the broker is overloaded or unreachable
    /// (CONNACK 3, TCP, TLS, timeouts); not in connect-rate, which counts every failure.
    #[arg(long, default_value_t = 20)]
    retries: u32,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConnectRateArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds to run.
    #[arg(long, default_value = "10", value_parser = seconds)]
    duration: f64,
    /// Connect loops running at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
}

#[derive(Debug, Args)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open and hold (one device each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Open at most this many connections per second (`500` or `500/s`) [default: as fast as
    /// --parallel allows].
    #[arg(long, value_parser = rate)]
    ramp: Option<f64>,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value = "5", value_parser = seconds)]
    hold: f64,
    /// Connection attempts in progress at most.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// MQTT keep-alive in seconds (a PINGREQ goes out at half of it).
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
}

#[derive(Debug, Args)]
struct TelemetryArgs {
    #[command(flatten)]
    common: Common,
    /// Connected clients publishing (one device each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Seconds to publish.
    #[arg(long, default_value = "10", value_parser = seconds)]
    duration: f64,
    /// QoS 1 publishes in flight per client at most (QoS 0: sent per batch).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    window: u16,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// QoS of the publishes: 1 counts PUBACKs; 0 counts what the broker took, confirmed by a
    /// final PINGREQ/PINGRESP.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Connection attempts in progress at most while connecting the clients.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// Publish at most this many messages a second in all (`150000` or `150000/s`), shared
    /// evenly by the clients [default: as fast as the window allows]; MQTT QoS 1 only.
    #[arg(long, value_parser = rate)]
    rate: Option<f64>,
}

#[derive(Debug, Args)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open, drop and reopen (one device each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Connection attempts in progress at most.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// Close with DISCONNECT before reconnecting [default: drop the connections, as a network
    /// outage does].
    #[arg(long)]
    graceful: bool,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to hold (one device each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Devices to disable, one after the other (the first K of the connections).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    revoke: u32,
    /// The hub's service connection string (HostName=...;SharedAccessKeyName=...;
    /// SharedAccessKey=...), a policy with registry write rights.
    #[arg(long, env = "CERTHUB_CONNECTION_STRING", hide_env_values = true)]
    connection_string: String,
    /// The service API's CA (PEM) to trust [default: --ca].
    #[arg(long)]
    api_ca: Option<PathBuf>,
    /// Connection attempts in progress at most.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
}

#[derive(Debug, Args)]
struct ProvisionArgs {
    #[command(flatten)]
    common: Common,
    /// The provisioning service's ID scope (`certhub dps id-scope`).
    #[arg(long)]
    id_scope: String,
    /// Widgets that boot at once (the first N device folders).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    widgets: u32,
    /// Widgets in flight at most (registering or connecting to their hub).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// The assigned hub's port [default: --port; certhub's provisioning endpoint and hub share
    /// the MQTT listener].
    #[arg(long)]
    hub_port: Option<u16>,
    /// Connect to this host for every assigned hub instead of the name the answer gives (that
    /// name stays the TLS server name and the user name's host).
    #[arg(long)]
    hub_address: Option<String>,
    /// Register only: no connection to the assigned hub (the provisioning endpoint alone).
    #[arg(long)]
    register_only: bool,
}

/// Runs one scenario and prints its result.
pub fn run(args: BenchArgs) -> Result<()> {
    if let Scenario::Query(a) = &args.scenario {
        return query::run(a);
    }
    if let Scenario::Reads(a) = &args.scenario {
        return reads::run(a);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let json = match &args.scenario {
        Scenario::ConnectRate(a) => a.common.json,
        Scenario::Hold(a) => a.common.json,
        Scenario::Telemetry(a) => a.common.json,
        Scenario::Storm(a) => a.common.json,
        Scenario::Revoke(a) => a.common.json,
        Scenario::Provision(a) => a.common.json,
        Scenario::Query(a) => a.json,
        Scenario::Reads(a) => a.json,
    };
    let result = runtime.block_on(scenarios::run(args.scenario));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    let report = result?;
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    let all_errors = report.errors.keys().chain(report.setup_errors.keys());
    if all_errors.into_iter().any(|k| k == "too many open files") {
        eprintln!(
            "certhub bench: ran out of file descriptors; raise the limit with `ulimit -n` (the broker's too)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_ranges() {
        let r = parse_sources("127.0.0.1-127.0.0.3").expect("a range");
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], "127.0.0.3".parse::<IpAddr>().expect("ip"));
        let l = parse_sources("10.0.0.1, ::1").expect("a list");
        assert_eq!(l.len(), 2);
        assert!(parse_sources("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_sources("127.0.0.1-nope").is_err());
        assert!(parse_sources("nope").is_err());
    }

    #[test]
    fn server_pids_repeat_or_come_as_a_list() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: Common,
        }
        let parse = |extra: &[&str]| {
            let mut args = vec!["bench", "--devices", "d", "--ca", "c"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|c| c.common.server_pid)
        };
        assert_eq!(parse(&[]).ok(), Some(vec![]));
        assert_eq!(parse(&["--server-pid", "7"]).ok(), Some(vec![7]));
        assert_eq!(
            parse(&["--server-pid", "7,8", "--server-pid", "9"]).ok(),
            Some(vec![7, 8, 9])
        );
        assert!(parse(&["--server-pid", "7,x"]).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(seconds("2.5"), Ok(2.5));
        assert!(seconds("-1").is_err());
        assert!(seconds("NaN").is_err());
        assert_eq!(rate("500/s"), Ok(500.0));
        assert!(rate("0").is_err());
    }
}
