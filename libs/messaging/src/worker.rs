//! The shape of every background loop: do one unit of work, wait for more, report status.
//!
//! The sender, receiver, processor and cleaner each implement [`Worker`]; a daemon starts
//! them all the same way with [`run`] and stops them through one [`tokio::sync::watch`]
//! channel. A unit of work is small and restartable: stopping a worker between units (or a
//! crash inside one) leaves nothing that the next instance cannot continue.
//!
//! ```text
//!   ┌────────────┐ Busy  ┌────────────┐
//!   │   work()   │──────▶│   work()   │ …
//!   └────────────┘       └────────────┘
//!         │ Idle               │ Err(transient): log, back off, wait
//!         ▼                    ▼
//!   wait_for_work() (poll interval, or woken by a Notify)
//! ```

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// What a unit of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// It did something; call `work` again at once.
    Busy,
    /// Nothing to do now; wait for work.
    Idle,
}

/// A worker's status for `show` commands and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Units of work that did something.
    pub busy_units: u64,
    /// Units that failed.
    pub errors: u64,
    /// The last error, if the last unit failed.
    pub last_error: Option<String>,
    /// Worker-specific figures (queue depth, files, rejections), as `(name, value)`.
    pub figures: Vec<(&'static str, u64)>,
}

impl WorkerStatus {
    /// Account for one unit of work that handled `result` items (or failed): busy when it
    /// handled some, idle when none.
    pub fn record(&mut self, result: Result<usize>) -> Result<WorkerState> {
        match &result {
            Ok(0) => self.last_error = None,
            Ok(_) => self.busy_units += 1,
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e.to_string());
            }
        }
        result.map(|n| {
            if n > 0 {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            }
        })
    }
}

/// A background loop.
#[async_trait]
pub trait Worker: Send {
    /// The worker's name (`sender d1->d2`).
    fn name(&self) -> String;

    /// Do one unit of work.
    async fn work(&mut self) -> Result<WorkerState>;

    /// Wait until there may be work (a poll interval, or a wake-up).
    async fn wait_for_work(&mut self);

    /// Current status.
    fn status(&self) -> WorkerStatus;
}

/// Runs `worker` until `stop` turns true or a crash point fires (returned as the error).
/// Transient errors are logged and retried after `error_backoff`.
pub async fn run<W: Worker + ?Sized>(
    worker: &mut W,
    mut stop: watch::Receiver<bool>,
    error_backoff: Duration,
) -> Result<()> {
    let name = worker.name();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match worker.work().await {
            Ok(WorkerState::Busy) => continue,
            Ok(WorkerState::Idle) => {
                tokio::select! {
                    () = worker.wait_for_work() => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) if e.is_crash() => return Err(e),
            Err(e) => {
                tracing::warn!(worker = %name, error = %e, "unit of work failed");
                tokio::select! {
                    () = tokio::time::sleep(error_backoff) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Runs units of work until one reports [`WorkerState::Idle`] (tests and tools drive
/// workers by hand with it). Returns how many units were busy.
pub async fn drain<W: Worker + ?Sized>(worker: &mut W) -> Result<u64> {
    let mut busy = 0u64;
    loop {
        match worker.work().await? {
            WorkerState::Busy => busy += 1,
            WorkerState::Idle => return Ok(busy),
        }
        if busy > 1_000_000 {
            return Err(Error::Invalid {
                what: "worker",
                reason: format!("{} never became idle", worker.name()),
            });
        }
    }
}
