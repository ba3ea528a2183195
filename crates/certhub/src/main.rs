//! The `certhub` binary: wires the crates together and speaks to people. It holds no policy of
//! its own: certificate decisions live in `certhub-pki`.
#![forbid(unsafe_code)]

/// `println!` that survives a closed pipe; see [`out_line`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::out_line(format_args!($($arg)*)) };
}

mod audit;
mod backup;
mod ca;
mod client;
mod cloud;
mod cluster;
mod device;
mod dps;
mod files;
mod hub;
mod messages;
mod pki;
mod progress;
mod serve;
mod uploads;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// certhub: a self-hosted IoT hub built around X.509 device authentication.
#[derive(Debug, Parser)]
#[command(name = "certhub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The PKI toolkit: roots, CSRs, signing, proof-of-possession, inspection, offline checks.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Run the hub: the service API over HTTPS, with its data in a local directory.
    Serve(Box<serve::ServeArgs>),
    /// Hub administration: connection strings, the server CA, settings.
    #[command(subcommand)]
    Hub(hub::HubCommand),
    /// Devices and modules in the identity registry.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// CA certificates: upload, prove possession, list, delete.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// The audit trail of registry, CA and settings changes.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Device-to-cloud messages in the hub's telemetry log.
    #[command(subcommand)]
    Messages(messages::MessagesCommand),
    /// Cloud-to-device messages: send, purge.
    #[command(subcommand)]
    C2d(cloud::C2dCommand),
    /// Device and module twins: show, update desired properties and tags, query.
    #[command(subcommand)]
    Twin(cloud::TwinCommand),
    /// Direct methods: invoke one on a connected device.
    #[command(subcommand)]
    Method(cloud::MethodCommand),
    /// Device provisioning: the ID scope, enrollment groups and enrollments, registrations.
    #[command(subcommand)]
    Dps(dps::DpsCommand),
    /// Files devices uploaded: list, download, notifications.
    #[command(subcommand)]
    Files(uploads::FilesCommand),
    /// The nodes of a hub that runs as a cluster: their status.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Back up a hub's data directory into one file, while the hub runs: a consistent copy of
    /// its database, its server CA and the uploaded files (every key is in it).
    Backup(backup::BackupArgs),
    /// Make a new data directory from a backup.
    Restore(backup::RestoreArgs),
    /// Measure a broker: connect rate, held connections, telemetry, reconnect storm, revocation
    Bench(certhub_bench::BenchArgs),
}

/// What a command tells the process: success, a refusal the user asked us to decide (exit 1),
/// or an error (exit 2, printed as one line).
#[derive(Debug)]
pub enum Outcome {
    Ok,
    Rejected,
}

/// mimalloc instead of glibc's allocator: after 19 000 sessions came and went, glibc's malloc
/// spent 11 % of the hub's CPU walking its fragmented free lists (`_int_malloc` in a connect
/// profile); see docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pki(cmd) => pki::run(cmd),
        Command::Serve(args) => serve::run(*args),
        Command::Hub(cmd) => hub::run(cmd),
        Command::Device(cmd) => device::run(cmd),
        Command::Ca(cmd) => ca::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Messages(cmd) => messages::run(cmd),
        Command::C2d(cmd) => cloud::c2d(cmd),
        Command::Twin(cmd) => cloud::twin(cmd),
        Command::Method(cmd) => cloud::method(cmd),
        Command::Files(cmd) => uploads::run(cmd),
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Dps(cmd) => dps::run(cmd),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Bench(args) => certhub_bench::run(args).map(|()| Outcome::Ok),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Rejected) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints a line on stdout. A closed pipe (`certhub pki inspect f | head -1`) ends the process
/// quietly instead of panicking as `println!` would.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_id_that_begins_with_a_hyphen_is_taken_as_the_id() {
        let cli = Cli::try_parse_from(["certhub", "files", "get", "-MuyScuwQWBWUhlV7DGkteJa"])
            .expect("parsed");
        let text = format!("{cli:?}");
        assert!(text.contains("\"-MuyScuwQWBWUhlV7DGkteJa\""), "{text}");
    }
}
