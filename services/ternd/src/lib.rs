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
pub mod monitor;
pub mod pg;
pub mod rows;
pub mod sql;
mod sql_admin;
pub mod supervisor;
pub mod ui;

use std::sync::Arc;

pub use config::Config;
pub use daemon::Daemon;
pub use error::{Error, Kind, Result};
pub use supervisor::Supervisor;

/// Serves `daemon` on `listener` until `shutdown` resolves, then stops cleanly. Returns
/// the unfinished transactions left (empty after a clean stop).
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<std::collections::BTreeMap<String, usize>> {
    daemon.start_workers().await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal("listen")(e.to_string()))?;
    tracing::info!(deployment = %daemon.id, %addr, "serving");
    // Clients redirected here (connections, 409s) use this unless a URL was configured.
    daemon
        .replication
        .default_public_url(format!("http://{addr}"));
    let app = api::router(Arc::clone(&daemon));
    let d = Arc::clone(&daemon);
    let grace = daemon.config.workers.shutdown_grace;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new requests; finishing in-flight ones");
        d.stopping_now();
        let _ = done_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
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
