//! One supervisor for every background loop of the daemon.
//!
//! Every loop has the [`Worker`] shape of `tern-messaging` (do one unit of work, wait for
//! more, report status). The message service's workers implement that trait with the
//! message service's error type; the daemon's own loops implement this module's
//! [`Worker`], which is the same shape with the daemon's error, and
//! [`MessagingWorker`] adapts the former to the latter. The supervisor runs each on its
//! own task, keeps a status snapshot per worker (refreshed after every unit, readable
//! without touching the worker), and stops them all through one watch channel.
//!
//! ```text
//!   spawn ─▶ Running ─unit ok─▶ Running/Idle ─stop─▶ Stopped
//!               │ unit failed: Backoff (error kept), then Running again
//!               └ crash point fired (tests): Failed
//! ```
//!
//! Guarantee: [`Supervisor::shutdown`] returns once every worker finished its current unit
//! (units are small and restartable), or after the grace period, when the rest are
//! abandoned; an abandoned unit leaves nothing that recovery at the next start cannot
//! continue (that is the `Worker` contract).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Result;
pub use tern_messaging::{WorkerState, WorkerStatus};

/// A background loop of the daemon (the shape of [`tern_messaging::Worker`]).
#[async_trait]
pub trait Worker: Send {
    /// The worker's name.
    fn name(&self) -> String;
    /// Do one unit of work.
    async fn work(&mut self) -> Result<WorkerState>;
    /// Wait until there may be work.
    async fn wait_for_work(&mut self);
    /// Current status.
    fn status(&self) -> WorkerStatus;
    /// True when the error ends the worker (a test crash point), not a retry.
    fn is_fatal(&self, _error: &crate::error::Error) -> bool {
        false
    }
}

/// A message-service worker under the daemon's supervisor.
pub struct MessagingWorker<W>(pub W);

#[async_trait]
impl<W: tern_messaging::Worker> Worker for MessagingWorker<W> {
    fn name(&self) -> String {
        self.0.name()
    }
    async fn work(&mut self) -> Result<WorkerState> {
        Ok(self.0.work().await?)
    }
    async fn wait_for_work(&mut self) {
        self.0.wait_for_work().await;
    }
    fn status(&self) -> WorkerStatus {
        self.0.status()
    }
    fn is_fatal(&self, error: &crate::error::Error) -> bool {
        matches!(error, crate::error::Error::Messaging(e) if e.is_crash())
    }
}

/// A replication worker (`tern-replication`) under the daemon's supervisor.
pub struct ReplicationTask {
    worker: tern_replication::ReplicationWorker,
    status: WorkerStatus,
    items: u64,
}

impl ReplicationTask {
    /// Adapts `worker`.
    pub fn new(worker: tern_replication::ReplicationWorker) -> Self {
        Self {
            worker,
            status: WorkerStatus::default(),
            items: 0,
        }
    }
}

#[async_trait]
impl Worker for ReplicationTask {
    fn name(&self) -> String {
        self.worker.name()
    }
    async fn work(&mut self) -> Result<WorkerState> {
        let n = self.worker.work().await?;
        if n == 0 {
            return Ok(WorkerState::Idle);
        }
        self.status.busy_units += 1;
        self.items += n as u64;
        self.status.figures = vec![("items", self.items)];
        Ok(WorkerState::Busy)
    }
    async fn wait_for_work(&mut self) {
        self.worker.wait_for_work().await;
    }
    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
    fn is_fatal(&self, error: &crate::error::Error) -> bool {
        match error {
            crate::error::Error::Replication(e) => {
                matches!(&**e, tern_replication::Error::Messaging(m) if m.is_crash())
            }
            _ => false,
        }
    }
}

/// Where a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Doing a unit of work.
    Running,
    /// Waiting for work.
    Idle,
    /// Waiting after a failed unit.
    Backoff,
    /// Stopped by shutdown.
    Stopped,
    /// Ended by a fatal error.
    Failed,
}

/// A worker's status as the supervisor last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub state: RunState,
    /// Units that did something.
    pub busy_units: u64,
    /// Units that failed.
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Worker-specific figures.
    pub figures: Vec<(String, u64)>,
    /// Seconds since its last unit ended.
    pub last_unit_secs_ago: Option<f64>,
}

enum Next {
    Again,
    Wait,
    Backoff,
    End,
}

struct Shared {
    name: String,
    state: RunState,
    status: WorkerStatus,
    errors: u64,
    last_error: Option<String>,
    last_unit: Option<Instant>,
}

struct Entry {
    shared: Arc<Mutex<Shared>>,
    handle: JoinHandle<()>,
}

/// Runs, reports and stops the daemon's workers.
pub struct Supervisor {
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    backoff: Duration,
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor whose workers pause `backoff` after a failed unit.
    pub fn new(backoff: Duration) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        Self {
            stop_tx,
            stop_rx,
            backoff,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Whether shutdown began.
    pub fn stopping(&self) -> bool {
        *self.stop_rx.borrow()
    }

    /// Starts `worker` on its own task (refused once shutdown began).
    pub fn spawn(&self, mut worker: Box<dyn Worker>) {
        if self.stopping() {
            return;
        }
        let name = worker.name();
        let shared = Arc::new(Mutex::new(Shared {
            name: name.clone(),
            state: RunState::Running,
            status: worker.status(),
            errors: 0,
            last_error: None,
            last_unit: None,
        }));
        let mut stop = self.stop_rx.clone();
        let backoff = self.backoff;
        let s = Arc::clone(&shared);
        let handle = tokio::spawn(async move {
            tracing::info!(worker = %name, "worker started");
            loop {
                if *stop.borrow() {
                    break;
                }
                lock(&s).state = RunState::Running;
                let outcome = worker.work().await;
                let status = worker.status();
                let next = {
                    let mut g = lock(&s);
                    g.status = status;
                    g.last_unit = Some(Instant::now());
                    match outcome {
                        Ok(WorkerState::Busy) => Next::Again,
                        Ok(WorkerState::Idle) => {
                            g.state = RunState::Idle;
                            Next::Wait
                        }
                        Err(e) => {
                            g.errors += 1;
                            g.last_error = Some(e.to_string());
                            if worker.is_fatal(&e) {
                                tracing::error!(worker = %name, error = %e, "worker ended");
                                g.state = RunState::Failed;
                                Next::End
                            } else {
                                tracing::warn!(worker = %name, error = %e, "unit of work failed");
                                g.state = RunState::Backoff;
                                Next::Backoff
                            }
                        }
                    }
                };
                match next {
                    Next::Again => {}
                    Next::Wait => {
                        tokio::select! {
                            () = worker.wait_for_work() => {}
                            _ = stop.changed() => {}
                        }
                    }
                    Next::Backoff => {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => {}
                        }
                    }
                    Next::End => return,
                }
            }
            lock(&s).state = RunState::Stopped;
            tracing::info!(worker = %name, "worker stopped");
        });
        lock(&self.entries).push(Entry { shared, handle });
    }

    /// Every worker's last status, in start order.
    pub fn reports(&self) -> Vec<WorkerReport> {
        lock(&self.entries)
            .iter()
            .map(|e| {
                let g = lock(&e.shared);
                WorkerReport {
                    name: g.name.clone(),
                    state: g.state,
                    busy_units: g.status.busy_units,
                    errors: g.errors.max(g.status.errors),
                    last_error: g.last_error.clone().or_else(|| g.status.last_error.clone()),
                    figures: g
                        .status
                        .figures
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), *v))
                        .collect(),
                    last_unit_secs_ago: g.last_unit.map(|t| t.elapsed().as_secs_f64()),
                }
            })
            .collect()
    }

    /// Stops every worker after its current unit; waits at most `grace`. Returns how many
    /// were abandoned (still running when the grace period ended).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let _ = self.stop_tx.send(true);
        let entries: Vec<Entry> = std::mem::take(&mut *lock(&self.entries));
        let deadline = tokio::time::Instant::now() + grace;
        let mut abandoned = 0;
        let mut kept = Vec::with_capacity(entries.len());
        for mut e in entries {
            match tokio::time::timeout_at(deadline, &mut e.handle).await {
                Ok(_) => {}
                Err(_) => {
                    abandoned += 1;
                    tracing::warn!(worker = %lock(&e.shared).name, "worker abandoned at shutdown");
                    e.handle.abort();
                }
            }
            kept.push(e);
        }
        // Keep the entries so that status after shutdown still lists them.
        *lock(&self.entries) = kept;
        abandoned
    }
}
