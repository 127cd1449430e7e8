//! Readers' pins on table versions, so that vacuum never deletes what a reader still needs.
//!
//! A reader (a scan, a replay of metadata files, or any caller of
//! [`Tables::pin`](crate::Tables::pin)) holds a [`PinnedVersion`] while it reads; vacuum
//! keeps every version from the oldest pinned one on, so the micro-partitions active at a
//! pinned version are never unreferenced while the pin lives.
//!
//! ```text
//!   reader:  lock ─ v ≥ floor(T) and v retained? ─ pins[T][v] += 1 ─ unlock ─ read … ─ drop: -= 1
//!   vacuum:  lock ─ keep_from = min(by retention, oldest pin of T) ─ floor(T) = max(floor, keep_from)
//!            ─ unlock ─ drop versions < keep_from ─ delete what they alone referenced
//! ```
//!
//! The two critical sections are ordered by the lock: either the pin came first (vacuum
//! sees it and keeps its version) or vacuum came first (its floor refuses pins below what
//! it is about to drop, with [`Error::VersionNotRetained`]). Readers of metadata files also
//! register as such: while one is reading, vacuum deletes no metadata file of the table (it
//! listed them before vacuum could release some).
//!
//! The registry is in-process: it protects the readers of one [`Tables`](crate::Tables).
//! Several processes sharing one metadata store would need the pins in that store (with a
//! lease, so that a crashed reader cannot pin forever); today one `ternd` serves a
//! deployment's reads and vacuum.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tern_storage::layout::TableId;

use crate::error::{Error, Result};

#[derive(Debug, Default)]
struct TablePins {
    /// Pinned versions and how many readers hold each.
    readers: BTreeMap<u64, usize>,
    /// Readers of the table's metadata files.
    ep_readers: usize,
    /// No pin below this: a vacuum has claimed the versions under it.
    floor: u64,
}

/// The pins of one [`Tables`](crate::Tables).
#[derive(Debug, Default, Clone)]
pub(crate) struct Pins {
    inner: Arc<Mutex<HashMap<TableId, TablePins>>>,
}

/// What vacuum may do to a table, decided under the pins' lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VacuumClaim {
    /// Drop the versions before this one.
    pub keep_from: u64,
    /// Whether metadata files may be deleted (no reader of them is registered).
    pub release_metadata_files: bool,
}

impl Pins {
    fn lock(&self) -> MutexGuard<'_, HashMap<TableId, TablePins>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a reader of `version` of `table`. `check` runs under the lock and returns
    /// the retained version to pin (the table's oldest retained and current versions are
    /// read there, so no vacuum can claim in between); a version below a vacuum's floor is
    /// refused.
    pub(crate) fn pin(
        &self,
        table: &TableId,
        reads_metadata_files: bool,
        check: impl FnOnce() -> Result<(u64, u64)>,
    ) -> Result<PinnedVersion> {
        let mut all = self.lock();
        let (version, current) = check()?;
        let entry = all.entry(table.clone()).or_default();
        if version < entry.floor {
            return Err(Error::VersionNotRetained {
                table: table.clone(),
                version,
                current,
                oldest: entry.floor,
            });
        }
        *entry.readers.entry(version).or_default() += 1;
        if reads_metadata_files {
            entry.ep_readers += 1;
        }
        Ok(PinnedVersion {
            pins: self.clone(),
            table: table.clone(),
            version,
            reads_metadata_files,
        })
    }

    /// Claim `table`'s versions before `by_retention` for vacuum, less whatever a reader
    /// pins.
    pub(crate) fn claim(&self, table: &TableId, by_retention: u64) -> VacuumClaim {
        let mut all = self.lock();
        let entry = all.entry(table.clone()).or_default();
        let oldest_pin = entry.readers.keys().next().copied();
        let keep_from = oldest_pin.map_or(by_retention, |p| p.min(by_retention));
        entry.floor = entry.floor.max(keep_from);
        VacuumClaim {
            keep_from,
            release_metadata_files: entry.ep_readers == 0,
        }
    }

    fn unpin(&self, table: &TableId, version: u64, reads_metadata_files: bool) {
        let mut all = self.lock();
        if let Some(entry) = all.get_mut(table) {
            if let Some(n) = entry.readers.get_mut(&version) {
                *n -= 1;
                if *n == 0 {
                    entry.readers.remove(&version);
                }
            }
            if reads_metadata_files {
                entry.ep_readers -= 1;
            }
        }
    }
}

/// A reader's hold on a table version: while it lives, vacuum keeps the version and every
/// file it needs. Dropping it lets the next vacuum reclaim them.
#[derive(Debug)]
#[must_use = "the version is only protected while the pin lives"]
pub struct PinnedVersion {
    pins: Pins,
    table: TableId,
    version: u64,
    reads_metadata_files: bool,
}

impl PinnedVersion {
    /// The pinned version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The table.
    pub fn table(&self) -> &TableId {
        &self.table
    }
}

impl Drop for PinnedVersion {
    fn drop(&mut self) {
        self.pins
            .unpin(&self.table, self.version, self.reads_metadata_files);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TableId {
        TableId::new("t1").expect("id")
    }

    #[test]
    fn vacuum_keeps_the_oldest_pin_and_refuses_pins_below_its_claim() {
        let pins = Pins::default();
        let a = pins.pin(&t(), false, || Ok((3, 9))).expect("pin 3");
        let b = pins.pin(&t(), true, || Ok((5, 9))).expect("pin 5");
        assert_eq!(
            pins.claim(&t(), 8),
            VacuumClaim {
                keep_from: 3,
                release_metadata_files: false
            }
        );
        drop(a);
        assert_eq!(pins.claim(&t(), 8).keep_from, 5);
        // The claim raised the floor: a reader arriving now cannot pin below it.
        let err = pins.pin(&t(), false, || Ok((4, 9))).unwrap_err();
        assert!(
            matches!(
                err,
                Error::VersionNotRetained {
                    version: 4,
                    oldest: 5,
                    ..
                }
            ),
            "{err}"
        );
        drop(b);
        assert_eq!(
            pins.claim(&t(), 8),
            VacuumClaim {
                keep_from: 8,
                release_metadata_files: true
            }
        );
        assert!(pins.pin(&t(), false, || Ok((8, 9))).is_ok());
    }
}
