//! `tern-selfcheck` (run as `tern selfcheck`): storage, encryption, tables, the commit
//! protocol and the message service exercised in one process on local folders, step by
//! step, with a report. It links the whole engine, which is why it is not part of the
//! `tern` CLI (a thin HTTP client).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod selfcheck;

/// Exercise storage, encryption and tables on local folders (no cloud needed) and report.
#[derive(Debug, Parser)]
#[command(name = "tern-selfcheck", version)]
struct Args {
    /// Folder for the group's buckets (default: a temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rows loaded into the sample table (at least 1000).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[allow(clippy::print_stderr)] // the command's own error channel
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tern_storage::config::install_tls_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(selfcheck::run(args.dir, args.rows, args.json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
