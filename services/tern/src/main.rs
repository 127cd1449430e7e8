//! `tern`: the Tern command-line interface.
//!
//! Until the daemon exists, the CLI's main job is `tern selfcheck`: it lays out a
//! two-deployment group on local folders and exercises the storage and encryption layers
//! the way replication will use them, printing each step and failing loudly on any error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod selfcheck;

/// Tern: database replication and failover between regions through object storage.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exercise storage, encryption and tables on local folders (no cloud needed) and report.
    Selfcheck {
        /// Folder for the group's buckets (default: a temporary folder, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rows loaded into the sample table (at least 1000).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            report_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Selfcheck { dir, rows, json } => {
            match runtime.block_on(selfcheck::run(dir, rows, json)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report_error(&e.to_string());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[allow(clippy::print_stderr)] // the CLI's own error channel
fn report_error(msg: &str) {
    eprintln!("error: {msg}");
}
