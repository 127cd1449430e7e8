//! `ternd`: one Tern deployment as a process (DESIGN.md §3, §13).
//!
//! [`Config`] is read from TOML and `TERN_*` variables and validated once;
//! [`Daemon::open`] opens the metadata store, buckets and keys and runs recovery before
//! anything is served; [`Daemon::start_workers`] starts every background loop under one
//! [`Supervisor`]; [`api::router`] is the HTTP JSON API; [`serve`] ties them together
//! with graceful shutdown.
//!
//! # Guarantees
//!
//! * Nothing is served before `TxnManager::recover` finished: a commit left Prepared by a
//!   crash is visible, one left earlier is rolled back, before the first request.
//! * On SIGTERM/SIGINT the API stops taking requests (new ones get 503 `unavailable`),
//!   in-flight requests finish (their commits complete, or are abandoned after
//!   `workers.shutdown_grace` and completed by the next start's recovery), workers stop
//!   after their current unit, in-doubt commits are rolled forward, and the process exits
//!   0 with no unfinished transaction of its own left.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod error;
pub mod ingest;
pub mod input;
pub mod monitor;
pub mod ops;
pub mod pg;
pub mod rows;
pub mod sql;
mod sql_admin;
pub mod supervisor;
pub mod tls;
pub mod tokens;
pub mod ui;

use std::sync::Arc;

pub use config::Config;
pub use daemon::Daemon;
pub use error::{Error, Kind, Result};
pub use supervisor::Supervisor;

/// Serves `daemon` on `listener` (over TLS when `[api.tls]` is set) until `shutdown`
/// resolves, then stops cleanly: `/healthz` and `/readyz` answer 503 for
/// `api.drain_period` while requests are still served (load balancers drain), then new
/// requests are refused and in-flight ones finish. Returns the unfinished transactions
/// left (empty after a clean stop).
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<std::collections::BTreeMap<String, usize>> {
    // A certificate that cannot be used is found before any worker starts.
    let tls = daemon
        .config
        .api
        .tls
        .as_ref()
        .map(tls::acceptor)
        .transpose()?;
    daemon.start_workers().await?;
    daemon.mark_ready();
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal("listen")(e.to_string()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(deployment = %daemon.id, %addr, %scheme, "serving");
    // Clients redirected here (connections, 409s) use this unless a URL was configured.
    daemon
        .replication
        .default_public_url(format!("{scheme}://{addr}"));
    let app = api::router(Arc::clone(&daemon));
    let d = Arc::clone(&daemon);
    let grace = daemon.config.workers.shutdown_grace;
    let drain = daemon.config.api.drain_period;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        shutdown.await;
        d.drain_now();
        if !drain.is_zero() {
            tracing::info!(
                ?drain,
                "shutdown requested: /healthz answers 503 while load balancers drain"
            );
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutdown requested: no new requests; finishing in-flight ones");
        d.stopping_now();
        let _ = done_tx.send(());
    };
    type Served = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;
    let server: Served = match tls {
        Some(acceptor) => {
            let listener = tls::TlsListener::new(listener, acceptor)
                .map_err(|e| Error::internal("listen")(e.to_string()))?;
            Box::pin(
                axum::serve(listener, app)
                    .with_graceful_shutdown(graceful)
                    .into_future(),
            )
        }
        None => Box::pin(
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .into_future(),
        ),
    };
    let server = tokio::spawn(server);
    // In-flight requests get `grace` after the signal; then they are abandoned (their
    // transactions are completed or rolled back by recovery at the next start).
    let mut server = server;
    tokio::select! {
        r = &mut server => {
            r.map_err(|e| Error::internal("server task")(e.to_string()))?
                .map_err(|e| Error::internal("server")(e.to_string()))?;
        }
        () = async {
            let _ = done_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("in-flight requests did not finish within the grace period; abandoning them");
            server.abort();
        }
    }
    daemon.shutdown().await
}
