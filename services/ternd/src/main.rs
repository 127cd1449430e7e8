//! `ternd --config deployment.toml`: runs one deployment until SIGTERM/SIGINT.
//!
//! Exit status: 0 after a clean stop; 2 when the configuration is invalid (the message
//! names the field); 1 when something it names cannot be opened or serving fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ternd::config::LogFormat;
use ternd::{Config, Daemon, Error};

/// The Tern deployment daemon.
#[derive(Debug, Parser)]
#[command(name = "ternd", version, about)]
struct Args {
    /// The configuration file (TOML). Every field can also be set by TERN_* variables.
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Write the address the API listens on to this file once serving (for scripts that
    /// start ternd with port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[allow(clippy::print_stderr)] // before logging is set up, stderr is the only channel
fn fail(e: &Error) -> ExitCode {
    eprintln!("ternd: {e}");
    match e {
        Error::Config { .. } => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // The certificate and keys are read now, so `--check` and a start find a bad file
    // before anything is opened.
    if let Some(tls) = &config.api.tls
        && let Err(e) = ternd::tls::acceptor(tls)
    {
        return fail(&e);
    }
    if args.check {
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&Error::Internal {
                what: "start the async runtime",
                reason: e.to_string(),
            });
        }
    };
    match runtime.block_on(run(config, args.ready_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ternd failed");
            fail(&e)
        }
    }
}

async fn run(config: Config, ready_file: Option<PathBuf>) -> ternd::Result<()> {
    let listen = config.listen;
    let pg_listen = config.sql.pg_listen;
    let pg_tls = config.api.tls.clone();
    let daemon = Daemon::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Open {
            field: "listen",
            source: Box::new(e),
        })?;
    let addr = listener.local_addr().map_err(|e| Error::Open {
        field: "listen",
        source: Box::new(e),
    })?;
    if let Some(pg) = pg_listen {
        let open = |e: std::io::Error| Error::Open {
            field: "sql.pg_listen",
            source: Box::new(e),
        };
        let pg_listener = tokio::net::TcpListener::bind(pg).await.map_err(open)?;
        let pg_addr = pg_listener.local_addr().map_err(open)?;
        tracing::info!(%pg_addr, "PostgreSQL protocol listening");
        // Beside the ready file, written before it: whoever sees the API ready finds it.
        if let Some(path) = &ready_file {
            std::fs::write(path.with_extension("pg"), pg_addr.to_string()).map_err(|e| {
                Error::Open {
                    field: "--ready-file",
                    source: Box::new(e),
                }
            })?;
        }
        let pg_tls = pg_tls.as_ref().map(ternd::tls::pg_acceptor).transpose()?;
        tokio::spawn(ternd::pg::serve(
            std::sync::Arc::clone(&daemon),
            pg_listener,
            pg_tls,
        ));
    }
    if let Some(path) = ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Open {
                field: "--ready-file",
                source: Box::new(e),
            })?;
    }
    let left = ternd::serve(daemon, listener, signal()).await?;
    if left.is_empty() {
        tracing::info!("clean stop: no unfinished transactions");
    } else {
        tracing::warn!(
            ?left,
            "stopped with unfinished transactions (recovery completes them at the next start)"
        );
    }
    Ok(())
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            // No signal handlers: Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
