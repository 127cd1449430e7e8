//! Named crash points, for tests of recovery.
//!
//! A [`CrashPoints`] registry belongs to one [`TxnManager`](crate::TxnManager) (no global
//! state, so tests run in parallel). When an armed point is reached the manager behaves as
//! a killed process would: the operation stops there with [`Error::Crashed`], no clean-up
//! runs, and every later call of that manager fails the same way. A test then opens a new
//! manager over the same metadata store and volume and runs recovery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Every crash point, in the order a commit passes them.
pub const POINTS: &[&str] = &[
    // Active: the transaction row exists, no file yet.
    "begin",
    // Active: a file is journaled (its path, or its number in a reserved block), not yet
    // (or partly) written.
    "journaled",
    // The statement's files are written; nothing of its commit is stored (a transaction
    // whose files are all covered by reserved blocks has no row at all).
    "written",
    // Prepared: locks taken, id, log record and sealed metadata files persisted in one
    // metadata transaction; neither the metadata files nor the log record written.
    "prepared",
    // Prepared: metadata files and log record written, versions not visible.
    "logged",
    // Committed: versions visible and locks released, in one metadata transaction.
    "committed",
];

/// What a fired point does besides failing the manager: the daemon's is to kill its own
/// process (`TERN_CRASH_AT`), so a test of real processes dies exactly there.
pub type OnFire = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The crash points of one manager.
#[derive(Clone, Default)]
pub struct CrashPoints {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    armed: Mutex<HashMap<&'static str, u64>>,
    crashed: AtomicBool,
    on_fire: Mutex<Option<OnFire>>,
}

impl std::fmt::Debug for CrashPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashPoints")
            .field("armed", &*self.lock())
            .field("crashed", &self.crashed())
            .finish()
    }
}

impl CrashPoints {
    /// No point armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Crash the `nth` time (1-based) `point` is reached.
    pub fn arm(&self, point: &'static str, nth: u64) {
        self.lock().insert(point, nth.max(1));
    }

    /// Run `f` when a point fires, before the error is returned.
    pub fn on_fire(&self, f: OnFire) {
        *self.inner.on_fire.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// Whether a point fired.
    pub fn crashed(&self) -> bool {
        self.inner.crashed.load(Ordering::SeqCst)
    }

    /// Fail if this manager crashed, or if `point` is armed and due.
    pub(crate) fn check(&self, point: &'static str) -> Result<()> {
        self.alive(point)?;
        let mut armed = self.lock();
        if let Some(left) = armed.get_mut(point) {
            *left -= 1;
            if *left == 0 {
                armed.remove(point);
                self.inner.crashed.store(true, Ordering::SeqCst);
                tracing::warn!(point, "crash point fired");
                drop(armed);
                let on_fire = self
                    .inner
                    .on_fire
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(f) = on_fire {
                    f(point);
                }
                return Err(Error::Crashed { point });
            }
        }
        Ok(())
    }

    /// Fail if this manager crashed earlier (a dead process does nothing more).
    pub(crate) fn alive(&self, point: &'static str) -> Result<()> {
        if self.crashed() {
            return Err(Error::Crashed { point });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, u64>> {
        self.inner.armed.lock().unwrap_or_else(|p| p.into_inner())
    }
}
