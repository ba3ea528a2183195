//! The `certhub` binary: wires the crates together and speaks to people. It holds no policy of
//! its own: certificate decisions live in `certhub-pki`.
#![forbid(unsafe_code)]

mod files;
mod pki;

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
}

/// What a command tells the process: success, a refusal the user asked us to decide (exit 1),
/// or an error (exit 2, printed as one line).
#[derive(Debug)]
pub enum Outcome {
    Ok,
    Rejected,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pki(cmd) => pki::run(cmd),
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
