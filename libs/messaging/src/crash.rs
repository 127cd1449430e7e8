//! Named crash points, per instance.
//!
//! Every step of the sender, receiver, processor and cleaner that sits between two durable
//! effects (an object written, a metadata transaction committed) calls
//! [`CrashPoints::hit`] with the point's name. When a test has armed that point, `hit`
//! returns [`Error::Crashed`], the worker returns it at once without undoing anything, and
//! the test drops the instance — exactly what a killed process leaves behind. A new
//! instance over the same metadata store and buckets must then continue with no message
//! lost and none applied twice.
//!
//! The registry is a value owned by each instance (not a process-wide global), so tests
//! running in parallel never trip each other's points.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// Every crash point, in the order a message meets them.
pub mod points {
    /// Sender: a message row was created (Preparing), before any body upload.
    pub const CREATED: &str = "sender.created";
    /// Sender: a body file was uploaded, before the row records it.
    pub const BODY_UPLOADED: &str = "sender.body_uploaded";
    /// Sender: a batch was claimed (Sending, pending file recorded), before the PUT.
    pub const BATCH_CLAIMED: &str = "sender.batch_claimed";
    /// Sender: the message file was written, before the rows are marked Sent.
    pub const FILE_WRITTEN: &str = "sender.file_written";
    /// Sender: rows marked Sent and the chain advanced.
    pub const MARKED_SENT: &str = "sender.marked_sent";
    /// Receiver: the expected file was read and verified, before it is persisted.
    pub const FILE_READ: &str = "receiver.file_read";
    /// Receiver: the file's messages were persisted and the chain advanced.
    pub const PERSISTED: &str = "receiver.persisted";
    /// Processor: a batch moved to ReadyForProcessing.
    pub const BATCH_FORMED: &str = "processor.batch_formed";
    /// Processor: messages claimed (Processing), before the handlers run.
    pub const CLAIMED: &str = "processor.claimed";
    /// Processor: a handler returned, before its commit.
    pub const HANDLED: &str = "processor.handled";
    /// Processor: the handler's effect and ReadyForCleanup committed.
    pub const COMMITTED: &str = "processor.committed";
    /// Cleaner: body files deleted, before the rows are removed.
    pub const BODIES_DELETED: &str = "cleaner.bodies_deleted";
    /// Cleaner: message rows removed, before the message file is deleted.
    pub const ROWS_REMOVED: &str = "cleaner.rows_removed";
    /// Cleaner: the message file was deleted, before its record is removed.
    pub const FILE_DELETED: &str = "cleaner.file_deleted";

    /// All of them.
    pub const ALL: &[&str] = &[
        CREATED,
        BODY_UPLOADED,
        BATCH_CLAIMED,
        FILE_WRITTEN,
        MARKED_SENT,
        FILE_READ,
        PERSISTED,
        BATCH_FORMED,
        CLAIMED,
        HANDLED,
        COMMITTED,
        BODIES_DELETED,
        ROWS_REMOVED,
        FILE_DELETED,
    ];
}

/// What a fired point does besides returning [`Error::Crashed`]: the daemon's is to kill
/// its own process (`TERN_CRASH_AT`), so a test of real processes dies exactly there.
pub type OnFire = Arc<dyn Fn(&'static str) + Send + Sync>;

#[derive(Default)]
struct Armed {
    /// point → hits to let pass before firing.
    skip: HashMap<&'static str, u64>,
    fired: Vec<&'static str>,
    on_fire: Option<OnFire>,
}

/// A per-instance set of armed crash points. Cheap to clone; clones share state.
///
/// Besides messaging's own ([`points`]), replication arms and hits its points
/// (`rewind.*`, `import.*`) in the same registry.
#[derive(Clone, Default)]
pub struct CrashPoints {
    inner: Arc<Mutex<Armed>>,
}

impl std::fmt::Debug for CrashPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = self.lock();
        f.debug_struct("CrashPoints")
            .field("armed", &a.skip)
            .field("fired", &a.fired)
            .field("on_fire", &a.on_fire.is_some())
            .finish()
    }
}

impl CrashPoints {
    /// No point armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fire at the next hit of `point`.
    pub fn arm(&self, point: &'static str) {
        self.arm_after(point, 0);
    }

    /// Fire at hit number `skip + 1` of `point`.
    pub fn arm_after(&self, point: &'static str, skip: u64) {
        self.lock().skip.insert(point, skip);
    }

    /// Run `f` when a point fires, before the error is returned.
    pub fn on_fire(&self, f: OnFire) {
        self.lock().on_fire = Some(f);
    }

    /// Disarm everything.
    pub fn clear(&self) {
        self.lock().skip.clear();
    }

    /// The points that fired so far, in order.
    pub fn fired(&self) -> Vec<&'static str> {
        self.lock().fired.clone()
    }

    /// Called by the code at `point`: [`Error::Crashed`] when armed (it fires once).
    pub fn hit(&self, point: &'static str) -> Result<()> {
        let mut armed = self.lock();
        match armed.skip.get_mut(point) {
            None => Ok(()),
            Some(0) => {
                armed.skip.remove(point);
                armed.fired.push(point);
                tracing::warn!(point, "crash point fired");
                let on_fire = armed.on_fire.clone();
                drop(armed);
                if let Some(f) = on_fire {
                    f(point);
                }
                Err(Error::Crashed { point })
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Armed> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_after_skips() {
        let c = CrashPoints::new();
        c.hit(points::CLAIMED).unwrap();
        c.arm_after(points::CLAIMED, 1);
        c.hit(points::CLAIMED).unwrap();
        assert!(c.hit(points::CLAIMED).unwrap_err().is_crash());
        c.hit(points::CLAIMED).unwrap();
        assert_eq!(c.fired(), [points::CLAIMED]);
        let other = CrashPoints::new();
        other.hit(points::CLAIMED).unwrap();
    }
}
