//! `--wait`: follow a long operation through the daemon's status endpoint until it is
//! done, it failed, or the wait ran out, printing a progress line (on stderr, so that
//! `--json` output stays one document) whenever the figures change.
//!
//! A refresh (`database refresh`, and the first refresh of `database create-replica`) is
//! done when the replica's `refreshes` count passed the count before it was asked for and
//! no refresh is pending (`GET /v1/replication/status`, which needs the operator token).
//! It failed when the replica reports an error it did not report before.

use std::time::{Duration, Instant};

use tern_api as api;

use crate::client::{Client, ClientError};
use crate::output;

/// How often the status is read.
const EVERY: Duration = Duration::from_millis(500);

/// `--wait` and its limit.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Wait until it is done, printing its progress (needs the operator token: it reads
    /// `GET /v1/replication/status`); exit 1 when it failed or the wait ran out.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (`30s`, `10m`).
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub wait_timeout: String,
}

impl WaitArgs {
    /// The limit, when waiting.
    pub fn limit(&self) -> Result<Option<Duration>, ClientError> {
        if !self.wait {
            return Ok(None);
        }
        humantime_serde::re::humantime::parse_duration(&self.wait_timeout)
            .map(Some)
            .map_err(|e| {
                ClientError::Input(format!(
                    "--wait-timeout {:?}: {e} (e.g. 30s, 10m)",
                    self.wait_timeout
                ))
            })
    }
}

/// The replica `account.database` of this deployment, as the status shows it now.
pub async fn replica(
    c: &Client,
    account: &str,
    database: &str,
) -> Result<api::ReplicaStatus, ClientError> {
    let s: api::ReplicationStatus = c.get_as("/v1/replication/status").await?;
    s.replicas
        .into_iter()
        .find(|r| r.account == account && r.database == database)
        .ok_or_else(|| {
            ClientError::Input(format!(
                "{account}.{database} is not a secondary replica of the deployment at {}",
                c.base()
            ))
        })
}

/// One progress line of `r`.
pub fn progress_line(r: &api::ReplicaStatus) -> String {
    let state = match &r.refresh_pending {
        Some(reason) => format!("refresh pending ({reason})"),
        None => "up to date".to_string(),
    };
    format!(
        "{}.{}: {state}; {} refreshes, {} records applied, {} bytes copied, {} versions behind, lag {} ms",
        r.account,
        r.database,
        r.refreshes,
        r.records_applied,
        r.bytes_copied,
        r.versions_behind,
        r.lag_ms
    )
}

/// Waits until a refresh of `account.database` after `before` (the replica as it was
/// before the refresh was asked for; `None` for a new replica) is imported.
pub async fn refreshed(
    c: &Client,
    account: &str,
    database: &str,
    before: Option<&api::ReplicaStatus>,
    limit: Duration,
) -> Result<api::ReplicaStatus, ClientError> {
    let start = Instant::now();
    let (count_before, error_before) =
        before.map_or((0, None), |b| (b.refreshes, b.last_error.clone()));
    let mut last_line = String::new();
    loop {
        let r = replica(c, account, database).await?;
        let line = progress_line(&r);
        if line != last_line {
            output::note(&line);
            last_line = line;
        }
        if r.refresh_pending.is_none() && r.refreshes > count_before {
            return Ok(r);
        }
        if let Some(e) = r
            .last_error
            .as_ref()
            .filter(|e| Some(*e) != error_before.as_ref())
        {
            return Err(ClientError::Wait(format!(
                "the refresh of {account}.{database} failed: {e}"
            )));
        }
        if start.elapsed() >= limit {
            return Err(ClientError::Wait(format!(
                "the refresh of {account}.{database} was not done after {} s (it goes on; \
                 see `tern show replication-status`)",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(EVERY).await;
    }
}
