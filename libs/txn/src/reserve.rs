//! Numbers for new micro-partition files, covered by the journal in blocks.
//!
//! Every file a transaction writes must be removable if it does not commit, after a crash
//! too (DESIGN.md §7). Journaling each file's path before it is written costs a metadata
//! transaction (an fsync) per statement, before its commit's own — a third of a small
//! insert's metadata round trips. Instead a block of [`BLOCK`] numbers of the deployment's
//! `short_name` sequence is reserved for one table in one metadata transaction
//! (`txn/r/<first>`, a [`ReservedFilesDpo`] naming the table and its micro-partition
//! prefix), and the files named by those numbers are covered by it: the next [`BLOCK`]
//! statements writing that table store nothing before their commits.
//!
//! A number is *settled* when its transaction commits (or is prepared: recovery rolls it
//! forward, so its files are referenced) or when its file is removed by a roll-back. A
//! block whose numbers are all handed out and settled has its row deleted (with the next
//! reservation). What a crash leaves — and a block whose roll-back could not remove a file
//! — is swept by [`TxnManager::recover`](crate::TxnManager::recover): each number of the
//! block that no micro-partition row of the table names has its file removed, then the row.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tern_meta::{Dpo, Key};
use tern_storage::Path;
use tern_storage::layout::{self, TableId};

/// Numbers reserved at once for one table.
pub(crate) const BLOCK: u64 = 64;

/// A block of micro-partition numbers reserved for one table (`txn/r/<first>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedFilesDpo {
    /// The instance that reserved it.
    pub instance: u64,
    /// The table the files belong to.
    pub table: TableId,
    /// The table's micro-partition prefix: number `n` names
    /// `layout::volume::mp_in(prefix, &numbered_mp(n))`.
    pub prefix: String,
    /// The first number of the block.
    pub first: u64,
    /// One past its last number.
    pub end: u64,
}

impl Dpo for ReservedFilesDpo {
    const WHAT: &'static str = "reserved file numbers";
    const VERSION: u32 = 1;
}

impl ReservedFilesDpo {
    /// The file number `n` names.
    pub(crate) fn path(&self, n: u64) -> Path {
        layout::volume::mp_in(
            &Path::from(self.prefix.as_str()),
            &layout::volume::numbered_mp(n),
        )
    }
}

pub(crate) fn reserved_key(first: u64) -> Key {
    all_reserved().u64(first)
}

pub(crate) fn all_reserved() -> Key {
    Key::root("txn").str("r")
}

/// One block in use by this instance.
#[derive(Debug)]
struct Block {
    row: ReservedFilesDpo,
    /// The next number to hand out.
    next: u64,
    /// Numbers handed out and not settled yet.
    unsettled: u64,
    /// A roll-back could not remove one of its files: the block is left to recovery's
    /// sweep instead of having its row deleted.
    dirty: bool,
}

/// This instance's blocks (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    blocks: HashMap<u64, Block>,
    /// Per table, its blocks with numbers left, oldest first.
    open: HashMap<TableId, Vec<u64>>,
    /// Per running transaction, the numbers it was handed: (block, file).
    held: HashMap<u64, Vec<(u64, Path)>>,
    /// Blocks all settled cleanly: their rows are deleted with the next reservation.
    done: Vec<u64>,
    /// Blocks given up to recovery's sweep (settled, one of their files not removed).
    abandoned: Vec<u64>,
}

impl Reservations {
    /// The next number of one of `table`'s blocks for transaction `handle`, if one has
    /// numbers left.
    pub(crate) fn take(&mut self, handle: u64, table: &TableId) -> Option<u64> {
        let open = self.open.get_mut(table)?;
        while let Some(&first) = open.first() {
            if let Some(block) = self.blocks.get_mut(&first)
                && block.next < block.row.end
            {
                let n = block.next;
                block.next += 1;
                block.unsettled += 1;
                self.held
                    .entry(handle)
                    .or_default()
                    .push((first, block.row.path(n)));
                return Some(n);
            }
            open.remove(0);
        }
        self.open.remove(table);
        None
    }

    /// A block just stored.
    pub(crate) fn add(&mut self, row: ReservedFilesDpo) {
        let first = row.first;
        self.open.entry(row.table.clone()).or_default().push(first);
        self.blocks.insert(
            first,
            Block {
                next: row.first,
                row,
                unsettled: 0,
                dirty: false,
            },
        );
    }

    /// The files of the numbers `handle` holds.
    pub(crate) fn held(&self, handle: u64) -> Vec<Path> {
        self.held
            .get(&handle)
            .map(|h| h.iter().map(|(_, p)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// `handle` is done with its numbers: committed (or prepared), or rolled back with
    /// its files removed (`clean`) or not.
    pub(crate) fn settle(&mut self, handle: u64, clean: bool) {
        for (first, _) in self.held.remove(&handle).unwrap_or_default() {
            let Some(block) = self.blocks.get_mut(&first) else {
                continue;
            };
            block.unsettled -= 1;
            block.dirty |= !clean;
            if block.next == block.row.end && block.unsettled == 0 {
                let dirty = block.dirty;
                self.blocks.remove(&first);
                if dirty {
                    self.abandoned.push(first);
                } else {
                    self.done.push(first);
                }
            }
        }
    }

    /// The blocks whose rows can go, taken.
    pub(crate) fn take_done(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.done)
    }

    /// Rows taken by [`take_done`](Self::take_done) whose deletion failed: kept for the
    /// next.
    pub(crate) fn give_back_done(&mut self, firsts: Vec<u64>) {
        self.done.extend(firsts);
    }

    /// Close every block no running transaction holds a number of (a stop): none of its
    /// numbers is handed out again, and its row can go, since each number handed out is
    /// settled — committed, or its file removed.
    pub(crate) fn close_idle(&mut self) {
        let idle: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.unsettled == 0)
            .map(|(first, _)| *first)
            .collect();
        for first in idle {
            if let Some(b) = self.blocks.remove(&first) {
                if let Some(open) = self.open.get_mut(&b.row.table) {
                    open.retain(|f| *f != first);
                }
                if b.dirty {
                    self.abandoned.push(first);
                } else {
                    self.done.push(first);
                }
            }
        }
        self.open.retain(|_, v| !v.is_empty());
    }

    /// Whether block `first` is this instance's and settled cleanly: its row can go
    /// without a look at its files.
    pub(crate) fn is_done(&self, first: u64) -> bool {
        self.done.contains(&first)
    }

    /// Whether recovery may sweep the row of block `first` of instance `instance`, from
    /// this instance (`me`): another instance's always (recovery runs with one live
    /// instance); one of its own only once it was given up or is done.
    pub(crate) fn sweepable(&self, me: u64, instance: u64, first: u64) -> bool {
        instance != me || self.abandoned.contains(&first) || self.done.contains(&first)
    }

    /// Block `first` was swept: forget it.
    pub(crate) fn swept(&mut self, first: u64) {
        self.abandoned.retain(|f| *f != first);
        self.done.retain(|f| *f != first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(first: u64, n: u64) -> ReservedFilesDpo {
        ReservedFilesDpo {
            instance: 1,
            table: TableId::new("t1").unwrap(),
            prefix: "acct/a/db/d/tbl/t1/mp".into(),
            first,
            end: first + n,
        }
    }

    /// A stored block keeps its bytes and key layout (recovery of a store written by an
    /// older build reads them): a change is a format change (bump `VERSION`).
    #[test]
    fn a_block_row_is_golden() {
        let meta = tern_meta::MetaStore::in_memory();
        let key = reserved_key(10);
        let raw = meta
            .write(|tx| {
                tx.put(&key, &row(10, 64))?;
                Ok(tx.raw().get(key.as_bytes())?.unwrap_or_default())
            })
            .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&raw),
            r#"{"v":1,"d":{"instance":1,"table":"t1","prefix":"acct/a/db/d/tbl/t1/mp","first":10,"end":74}}"#
        );
        assert_eq!(key.to_string(), "txn/r/10");
        assert_eq!(
            row(10, 64).path(12).to_string(),
            "acct/a/db/d/tbl/t1/mp/fdn12.mp"
        );
    }

    #[test]
    fn numbers_are_handed_out_once_and_a_settled_block_is_done() {
        let t = TableId::new("t1").unwrap();
        let mut r = Reservations::default();
        assert_eq!(r.take(1, &t), None, "nothing reserved yet");
        r.add(row(10, 2));
        assert_eq!(r.take(1, &t), Some(10));
        assert_eq!(r.take(2, &t), Some(11));
        assert_eq!(r.take(3, &t), None, "the block is used up");
        assert_eq!(
            r.held(1),
            [Path::from("acct/a/db/d/tbl/t1/mp/fdn10.mp")],
            "the file number 10 names"
        );
        r.settle(1, true);
        assert!(r.take_done().is_empty(), "number 11 is still out");
        assert!(!r.sweepable(1, 1, 10), "a live block of this instance");
        assert!(r.sweepable(2, 1, 10), "another instance's");
        r.settle(2, true);
        assert_eq!(r.take_done(), [10]);
    }

    #[test]
    fn a_block_with_a_file_left_behind_goes_to_the_sweep() {
        let t = TableId::new("t1").unwrap();
        let mut r = Reservations::default();
        r.add(row(10, 1));
        assert_eq!(r.take(7, &t), Some(10));
        r.settle(7, false);
        assert!(r.take_done().is_empty(), "its row must stay");
        assert!(r.sweepable(1, 1, 10));
        r.swept(10);
        assert!(!r.sweepable(1, 1, 10));
    }

    #[test]
    fn closing_idle_blocks_spares_the_ones_in_use() {
        let t = TableId::new("t1").unwrap();
        let mut r = Reservations::default();
        r.add(row(10, 4));
        r.add(row(20, 4));
        assert_eq!(r.take(1, &t), Some(10));
        r.settle(1, true);
        assert_eq!(r.take(2, &t), Some(11), "block 10 is open still");
        r.close_idle();
        assert_eq!(r.take_done(), [20], "block 10 has number 11 out");
        assert_eq!(r.take(3, &t), Some(12), "a block in use stays open");
        r.settle(2, true);
        r.settle(3, true);
        r.close_idle();
        assert_eq!(r.take_done(), [10]);
        assert_eq!(r.take(4, &t), None, "closed blocks hand out nothing");
    }

    #[test]
    fn a_later_block_serves_once_the_first_is_used_up() {
        let t = TableId::new("t1").unwrap();
        let mut r = Reservations::default();
        r.add(row(10, 1));
        r.add(row(20, 2));
        assert_eq!(r.take(1, &t), Some(10));
        assert_eq!(r.take(1, &t), Some(20));
        assert_eq!(r.take(1, &t), Some(21));
        assert_eq!(r.take(1, &t), None);
        assert_eq!(r.held(1).len(), 3);
    }
}
