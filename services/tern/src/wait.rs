//! `--wait`: follow a long operation through the daemon's status endpoint until it is
//! done, it failed, or the wait ran out, printing a progress line (on stderr, so that
//! `--json` output stays one document) whenever the figures change.
//!
//! The status read is `GET /v1/accounts/{a}/databases/{db}/replication`: one database's
//! place in its group as the deployment sees it, open to the account's own token (the one
//! the command needs), read-only ones included.
//!
//! * A refresh (`database refresh`, and the first refresh of `database create-replica`)
//!   is done when the replica's `refreshes` count passed the count before it was asked
//!   for and no refresh is pending; it failed when the replica reports an error it did
//!   not report before.
//! * A failover or a switchover (`database failover`, `database switchover`) is done when
//!   this deployment holds the primary at the epoch the command claimed, takes commits
//!   (`writable`: in a group of three or more a majority confirmed its lease) and every
//!   member not judged down follows it (its heartbeat at that epoch arrived); it failed
//!   when a newer epoch went to another deployment.

use std::time::{Duration, Instant};

use tern_api as api;

use crate::client::{self, Client, ClientError};
use crate::output;

/// How often the status is read.
const EVERY: Duration = Duration::from_millis(500);

/// `--wait` and its limit.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Wait until it is done, printing its progress on stderr (it reads
    /// `GET …/databases/{db}/replication`, which the account's own token may read); exit 1
    /// when it failed or the wait ran out (the operation itself goes on).
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

/// The database `account.database` in its group, as this deployment sees it now.
pub async fn status(
    c: &Client,
    account: &str,
    database: &str,
) -> Result<api::DatabaseReplication, ClientError> {
    c.get_as(&format!(
        "/v1/accounts/{}/databases/{}/replication",
        client::seg(account)?,
        client::seg(database)?
    ))
    .await
}

/// The replica `account.database` of this deployment, as the status shows it now.
pub async fn replica(
    c: &Client,
    account: &str,
    database: &str,
) -> Result<api::ReplicaStatus, ClientError> {
    status(c, account, database).await?.replica.ok_or_else(|| {
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

/// One progress line of a database that was just promoted here (`s`: its status).
pub fn promotion_line(s: &api::DatabaseReplication) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(",")
        }
    };
    let (waiting, _) = pending_members(s);
    format!(
        "{}.{}: {} at epoch {} (group epoch {}, primary {}); {}; following: {}; waiting for: {}; down: {}",
        s.account,
        s.database,
        s.role,
        s.epoch,
        s.group_epoch,
        s.primary.as_deref().unwrap_or("unknown"),
        if s.writable {
            "takes writes"
        } else {
            "not writable yet"
        },
        list(&s.following),
        list(&waiting),
        list(&s.down),
    )
}

/// The members of `s`'s group that neither follow its primary nor are down (they should
/// follow), and whether the primary is this deployment at all.
fn pending_members(s: &api::DatabaseReplication) -> (Vec<String>, bool) {
    let here = s.primary.as_deref() == Some(s.deployment.as_str());
    let waiting = s
        .members
        .iter()
        .filter(|m| **m != s.deployment && !s.following.contains(m) && !s.down.contains(m))
        .cloned()
        .collect();
    (waiting, here)
}

/// Where a promotion to `epoch` stands, by the status `s` of its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// The new primary takes writes and every member not down follows it.
    Done,
    /// A newer epoch went to another deployment (the message says which).
    Overtaken(String),
    /// Not yet: what it waits for.
    Waiting(String),
}

/// Judges `s` for a promotion of this deployment to `epoch`.
pub fn judge(s: &api::DatabaseReplication, epoch: u64) -> Promotion {
    let (waiting, here) = pending_members(s);
    if s.group_epoch > epoch && !here {
        return Promotion::Overtaken(format!(
            "epoch {} went to {}, which holds the primary now",
            s.group_epoch,
            s.primary.as_deref().unwrap_or("another deployment")
        ));
    }
    if !(s.role == "primary" && here && s.epoch >= epoch) {
        return Promotion::Waiting(format!(
            "this deployment is {} at epoch {} and does not hold the primary yet",
            s.role, s.epoch
        ));
    }
    if !s.writable {
        return Promotion::Waiting(
            "the new primary does not take writes yet (a majority has not confirmed its \
             lease, or a switchover pauses it)"
                .to_string(),
        );
    }
    if !waiting.is_empty() {
        return Promotion::Waiting(format!("{} does not follow it yet", waiting.join(",")));
    }
    Promotion::Done
}

/// Waits until this deployment, having claimed the primary of `account.database` at
/// `epoch` (a failover or a switchover), takes its writes and every member not down
/// follows it (see the module docs). `what` names the operation in messages.
pub async fn promoted(
    c: &Client,
    account: &str,
    database: &str,
    epoch: u64,
    what: &str,
    limit: Duration,
) -> Result<api::DatabaseReplication, ClientError> {
    let start = Instant::now();
    let mut last_line = String::new();
    loop {
        let s = status(c, account, database).await?;
        let line = promotion_line(&s);
        if line != last_line {
            output::note(&line);
            last_line = line;
        }
        match judge(&s, epoch) {
            Promotion::Done => return Ok(s),
            Promotion::Overtaken(why) => {
                return Err(ClientError::Wait(format!(
                    "the {what} of {account}.{database} was overtaken: {why}"
                )));
            }
            Promotion::Waiting(why) if start.elapsed() >= limit => {
                return Err(ClientError::Wait(format!(
                    "the {what} of {account}.{database} was not settled after {} s: {why} (it \
                     goes on; see `tern database status {account} {database}`)",
                    limit.as_secs()
                )));
            }
            Promotion::Waiting(_) => tokio::time::sleep(EVERY).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary_here() -> api::DatabaseReplication {
        api::DatabaseReplication {
            deployment: "d2".into(),
            account: "a2".into(),
            database: "copy".into(),
            role: "primary".into(),
            group: Some("g".into()),
            epoch: 2,
            group_epoch: 2,
            primary: Some("d2".into()),
            primary_state: None,
            writable: true,
            members: vec!["d1".into(), "d2".into(), "d3".into()],
            following: vec!["d3".into()],
            down: vec!["d1".into()],
            replica: None,
        }
    }

    #[test]
    fn a_promotion_is_done_once_writable_and_every_member_up_follows() {
        let s = primary_here();
        assert_eq!(judge(&s, 2), Promotion::Done, "d1 is down: not waited for");
        let mut up = s.clone();
        up.down.clear();
        assert_eq!(
            judge(&up, 2),
            Promotion::Waiting("d1 does not follow it yet".into())
        );
        let mut paused = s.clone();
        paused.writable = false;
        assert!(matches!(judge(&paused, 2), Promotion::Waiting(w) if w.contains("lease")));
        let mut not_yet = s;
        not_yet.role = "secondary".into();
        not_yet.primary = Some("d1".into());
        not_yet.epoch = 1;
        not_yet.group_epoch = 1;
        assert!(matches!(judge(&not_yet, 2), Promotion::Waiting(_)));
    }

    #[test]
    fn a_promotion_overtaken_by_a_newer_epoch_elsewhere_failed() {
        let mut s = primary_here();
        s.role = "secondary".into();
        s.group_epoch = 3;
        s.primary = Some("d3".into());
        assert_eq!(
            judge(&s, 2),
            Promotion::Overtaken("epoch 3 went to d3, which holds the primary now".into())
        );
    }
}
