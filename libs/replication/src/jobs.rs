//! Copy (snapshot) and import jobs that fail are never a poison item: each failed
//! attempt backs the job off (`job_backoff`, doubling, at most five minutes) and lets the
//! jobs behind it go first; after `job_attempts` attempts it is marked failed — shown by
//! `show replication-status` and `/metrics`, skipped by the workers — until an operator
//! retries it or abandons it (`tern replication retry|abandon <id>`). Abandoning an import
//! deletes its inbound folder and the files it copied into the volume without committing
//! them, and asks for a new refresh; abandoning a copy job drops the
//! request (the replica asks again).

use serde::{Deserialize, Serialize};
use tern_storage::layout::DeploymentId;

use crate::error::{Error, Result};
use crate::service::{Counters, Replication, ReplicationConfig};
use crate::state::{ImportJobDpo, SnapshotJobDpo, keys};

/// A job's failed attempts (kept in its row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRetry {
    /// No attempt before this (local clock).
    #[serde(default)]
    pub next_at_ms: i64,
    /// The last attempt's error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Given up: waits for an operator.
    #[serde(default)]
    pub failed: bool,
}

impl JobRetry {
    /// Never failed.
    pub fn is_fresh(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a worker may take it up at `now`.
    pub fn due(&self, now: i64) -> bool {
        !self.failed && now >= self.next_at_ms
    }

    /// Records that attempt number `attempts` failed with `error`; true when the job is
    /// given up now.
    pub fn failed_attempt(
        &mut self,
        attempts: u32,
        error: &str,
        config: &ReplicationConfig,
        now: i64,
    ) -> bool {
        self.last_error = Some(error.to_string());
        if attempts >= config.job_attempts {
            self.failed = true;
            return true;
        }
        let base = i64::try_from(config.job_backoff.as_millis()).unwrap_or(i64::MAX);
        let wait = base
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(300_000);
        self.next_at_ms = now.saturating_add(wait);
        false
    }
}

/// Which worker a job belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A refresh request this deployment answers (copy workers).
    Snapshot,
    /// A snapshot response this deployment imports.
    Import,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Waiting,
    /// Failed; tried again at `next_attempt_at_ms`.
    BackingOff,
    /// Given up: `retry` or `abandon` it.
    Failed,
}

/// One job, as `show replication-status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Snapshot (copy) or import.
    pub kind: JobKind,
    /// Its id (the request id of a snapshot job, the response id of an import).
    pub id: String,
    /// The peer that asked (snapshot) or answered (import).
    pub peer: DeploymentId,
    /// The database group.
    pub group: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Where it stands.
    pub state: JobState,
    /// When it is tried again (backing off).
    pub next_attempt_at_ms: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

fn status(
    kind: JobKind,
    id: &str,
    peer: &DeploymentId,
    group: &str,
    attempts: u32,
    r: &JobRetry,
    now: i64,
) -> JobStatus {
    let state = if r.failed {
        JobState::Failed
    } else if now < r.next_at_ms {
        JobState::BackingOff
    } else {
        JobState::Waiting
    };
    JobStatus {
        kind,
        id: id.to_string(),
        peer: peer.clone(),
        group: group.to_string(),
        attempts,
        state,
        next_attempt_at_ms: (state == JobState::BackingOff).then_some(r.next_at_ms),
        last_error: r.last_error.clone(),
    }
}

fn of_snapshot(j: &SnapshotJobDpo, now: i64) -> JobStatus {
    let r = &j.request;
    status(
        JobKind::Snapshot,
        &r.request_id,
        &j.peer,
        &r.group,
        j.attempts,
        &j.retry,
        now,
    )
}

fn of_import(j: &ImportJobDpo, now: i64) -> JobStatus {
    let r = &j.response;
    let id = r.response_id.as_str();
    status(
        JobKind::Import,
        id,
        &j.peer,
        &r.group,
        j.attempts,
        &j.retry,
        now,
    )
}

/// A job found by id, with its row's key.
enum Found {
    Snapshot(tern_meta::Key, SnapshotJobDpo),
    Import(tern_meta::Key, ImportJobDpo),
}

impl Replication {
    /// Every copy and import job here.
    pub fn jobs(&self) -> Result<Vec<JobStatus>> {
        let now = self.now();
        let (snaps, imports) = self.meta().read(|tx| {
            Ok((
                tx.scan_prefix::<SnapshotJobDpo>(&keys::snapshot_jobs())?,
                tx.scan_prefix::<ImportJobDpo>(&keys::import_jobs())?,
            ))
        })?;
        let mut out: Vec<JobStatus> = snaps.iter().map(|(_, j)| of_snapshot(j, now)).collect();
        out.extend(imports.iter().map(|(_, j)| of_import(j, now)));
        Ok(out)
    }

    fn find_job(&self, id: &str) -> Result<Found> {
        let (snaps, imports) = self.meta().read(|tx| {
            Ok((
                tx.scan_prefix::<SnapshotJobDpo>(&keys::snapshot_jobs())?,
                tx.scan_prefix::<ImportJobDpo>(&keys::import_jobs())?,
            ))
        })?;
        if let Some((k, j)) = snaps.into_iter().find(|(_, j)| j.request.request_id == id) {
            return Ok(Found::Snapshot(k, j));
        }
        if let Some((k, j)) = imports
            .into_iter()
            .find(|(_, j)| j.response.response_id.as_str() == id)
        {
            return Ok(Found::Import(k, j));
        }
        Err(Error::NotFound {
            what: "replication job",
            name: id.to_string(),
        })
    }

    /// Takes a job up again at once with fresh attempts (a failed one, or one backing
    /// off).
    pub fn retry_job(&self, id: &str) -> Result<JobStatus> {
        let now = self.now();
        let st = match self.find_job(id)? {
            Found::Snapshot(k, mut j) => {
                (j.attempts, j.retry) = (0, JobRetry::default());
                self.meta().write(|tx| tx.put(&k, &j))?;
                of_snapshot(&j, now)
            }
            Found::Import(k, mut j) => {
                (j.attempts, j.retry) = (0, JobRetry::default());
                self.meta().write(|tx| tx.put(&k, &j))?;
                of_import(&j, now)
            }
        };
        tracing::warn!(job = id, "replication job retried by the operator");
        self.committed();
        Ok(st)
    }

    /// Gives a job up: an import's inbound folder is deleted and a new refresh asked; a
    /// copy job's request is dropped (its replica asks again).
    pub async fn abandon_job(&self, id: &str) -> Result<JobStatus> {
        let now = self.now();
        let st = match self.find_job(id)? {
            Found::Snapshot(k, j) => {
                self.meta().write(|tx| tx.delete(&k))?;
                of_snapshot(&j, now)
            }
            Found::Import(k, j) => {
                self.drop_batch_files(&j).await;
                self.finish_refresh(&j, None)?;
                self.meta().write(|tx| tx.delete(&k))?;
                self.remove_inbound(&j.peer, &j.response.response_id).await;
                if let Some(r) = self.replica_of(&j.response.group)? {
                    self.ask_refresh(&r.database, "import abandoned", false)?;
                }
                of_import(&j, now)
            }
        };
        tracing::warn!(job = id, "replication job abandoned by the operator");
        Ok(st)
    }

    /// A failed attempt of the job at `key` (its row holds the attempts): backed off, or
    /// given up (logged, counted).
    pub(crate) fn job_attempt_failed<T>(
        &self,
        key: &tern_meta::Key,
        error: &Error,
        retry: impl Fn(&mut T) -> (u32, &mut JobRetry),
    ) -> Result<()>
    where
        T: tern_meta::Dpo,
    {
        if error.is_crash() {
            // A crash point fired: the process is taken as dead and records nothing more
            // (a write here could land over what a restart or an operator wrote since).
            return Ok(());
        }
        let now = self.now();
        let msg = error.to_string();
        let config = self.config().clone();
        let gave_up = self.meta().write(|tx| {
            let Some(mut j) = tx.get::<T>(key)? else {
                return Ok(false);
            };
            let (attempts, r) = retry(&mut j);
            let gave_up = r.failed_attempt(attempts, &msg, &config, now);
            tx.put(key, &j)?;
            Ok(gave_up)
        })?;
        if gave_up {
            Counters::add(&self.inner.counters.jobs_failed, 1);
            tracing::error!(job = ?key, error = %msg, attempts = config.job_attempts, "replication job failed: given up until an operator retries or abandons it");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn attempts_back_off_doubling_then_give_up() {
        let config = ReplicationConfig {
            job_attempts: 3,
            job_backoff: Duration::from_millis(100),
            ..ReplicationConfig::default()
        };
        let mut r = JobRetry::default();
        assert!(r.is_fresh() && r.due(0));
        assert!(!r.failed_attempt(1, "boom", &config, 1_000));
        assert_eq!(r.next_at_ms, 1_100);
        assert!(!r.due(1_050) && r.due(1_100));
        assert!(!r.failed_attempt(2, "boom", &config, 2_000));
        assert_eq!(r.next_at_ms, 2_200);
        assert!(r.failed_attempt(3, "boom again", &config, 3_000));
        assert!(r.failed && !r.due(i64::MAX));
        assert_eq!(r.last_error.as_deref(), Some("boom again"));
        let s = status(
            JobKind::Import,
            "rs-1",
            &DeploymentId::new("d1").unwrap(),
            "g",
            3,
            &r,
            0,
        );
        assert_eq!(s.state, JobState::Failed);
    }
}
