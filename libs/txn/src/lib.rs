//! Tern's commit protocol (DESIGN.md §7; seed FIG. 6–8).
//!
//! Every change to a deployment's tables — DML and DDL — commits through a
//! [`TxnManager`], the [`Committer`](tern_table::Committer) the deployment's
//! [`Tables`](tern_table::Tables) are built with:
//!
//! ```text
//!  Active ──(statement writes files; each journaled before it is written)
//!    ─▶ planned, outside the locks: versions fixed on the current state (appends land on
//!         the current version; a change computed from what it read must find that
//!         version), metadata files made and sealed
//!    ─▶ Prepared, in ONE metadata transaction: every table/dictionary lock taken at once
//!         (waits, with a timeout); the plan checked to still hold (else planned again);
//!         the change checked by the code that will publish it; transaction id from the
//!         account's Lamport clock; log record and sealed metadata files persisted in the
//!         metadata store (the files journaled)              ── soft point of no return
//!    ─▶ metadata files and log record (acct/<account>/txlog/<id>.log) written at once
//!         (create-once, idempotent, retried; recovery writes both from what Prepared kept)
//!    ─▶ Committed, in ONE metadata transaction: the new versions visible, atomically, and
//!         the locks released                              ── hard point of no return
//! ```
//!
//! Three durable metadata commits per insert (journal the data file, prepare, commit) and
//! two file writes on its critical path (the data file; then the metadata file beside the
//! log record). Stores written by earlier versions may hold a transaction in PreCommitting
//! (rolled back) or Committing (its locks released) — recovery finishes both.
//!
//! # Guarantees
//!
//! 1. **No version without its log record**: a version becomes visible only after its
//!    transaction's log record is stored.
//! 2. **Reads order records**: if a transaction read a version made by another, that
//!    other's record was stored before this one's (it was visible, so stored, before it
//!    was read).
//! 3. **Conflicting writes in id order**: ids are issued with every lock held, so two
//!    transactions on one table get ids in the order their versions follow each other.
//! 4. **Nothing acknowledged is lost** and **nothing uncommitted stays**: every file is
//!    journaled before it is written; a transaction that stops before Prepared is rolled
//!    back (files removed, locks released) by itself or by [`TxnManager::recover`]; one
//!    that reached Prepared is never rolled back — recovery rewrites its log record
//!    (idempotently: an inconclusive write that did land is found and accepted) and makes
//!    it visible.
//! 5. **No lock outlives its writer**: a failed commit releases its locks; a commit runs on
//!    its own task so a cancelled caller cannot leave it half-way; a crashed process's
//!    locks are released by recovery. Lock waits time out with an error naming the lock
//!    and its holder.
//!
//! # Assumptions
//!
//! The volume supports `PutMode::Create` (folders and S3 do). Locks and transaction rows
//! live in the metadata store, so several managers in one process or several processes on
//! one store serialize correctly; but [`TxnManager::recover`] treats every unfinished
//! transaction of another instance as abandoned, so it must run while no other instance
//! is live on the same store (at start-up, as `ternd` does).
//!
//! Unrelated transactions' records may be stored out of id order; appliers only need the
//! order between conflicting transactions, which each table's version chain gives.

#![forbid(unsafe_code)]

pub mod crash;
pub mod error;
pub mod log;
mod manager;
mod reserve;
pub mod state;

pub use crash::CrashPoints;
pub use error::{Error, Result};
pub use log::LogRecord;
pub use manager::{
    PhaseStats, RecoveryFailure, RecoveryReport, TxnManager, TxnOptions, TxnOutcome, database_seq,
    last_txn_id, settled_database_seq, stable_log_id,
};
pub use reserve::ReservedFilesDpo;
pub use state::{IdempotencyDpo, IdempotentOutcome, LogMarkDpo, LogPrunedDpo, TxnDpo, TxnState};
