//! TLS for the HTTP API (`[api.tls]`): rustls with the ring provider (the one already in
//! the tree for the object-store clients), PEM files, optional client certificates.
//!
//! Bearer tokens travel in every request: between regions (and on any network that is
//! not the host's loopback) serve the API over TLS, never plain HTTP.
//!
//! [`TlsListener`] is an `axum::serve` listener: a task accepts TCP connections and runs
//! each handshake in its own task (bounded by [`HANDSHAKE_TIMEOUT`], so a client that
//! stalls mid-handshake holds up no one), and hands finished connections to the server.
//! A failed handshake (wrong CA, no client certificate under mTLS, plain HTTP on the TLS
//! port) is logged at debug level and the connection closed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn bad(field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(field, format!("cannot read {}: {e}", path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            bad(
                field,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The acceptor `tls` describes; a file that cannot be read or used is an error naming
/// its field (`api.tls.cert`, `api.tls.key`, `api.tls.client_ca`).
pub fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor> {
    let mut config = server_config(tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The acceptor of the PostgreSQL listener: the API's certificate, key and client CA
/// (`[api.tls]`), with PostgreSQL's ALPN name (which PostgreSQL 17 clients' direct TLS
/// requires; earlier clients negotiate with an `SSLRequest` and send none).
pub fn pg_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor> {
    let mut config = server_config(tls)?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("api.tls.cert", &tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        bad(
            "api.tls.key",
            format!(
                "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                tls.key.display()
            ),
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("api.tls", e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("api.tls.client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| bad("api.tls.client_ca", e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("api.tls.client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| bad("api.tls.key", format!("does not go with api.tls.cert: {e}")))
}

/// Aborts the accept task when the listener is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP listener whose connections are TLS sessions (see the module docs).
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accepting: AbortOnDrop,
}

impl TlsListener {
    /// Serves TLS with `acceptor` on `tcp`.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, as axum does.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            _accepting: AbortOnDrop(task),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task is gone (it only ends when aborted): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
