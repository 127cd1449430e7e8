//! What the protocol keeps in the metadata store (namespace `txn`).
//!
//! | key | value |
//! |---|---|
//! | `txn/t/<handle>` | [`TxnDpo`]: one transaction's state, files, locks and log record |
//! | `txn/lock/<name>` | [`LockDpo`]: who holds a table or dictionary lock |
//! | `txn/lamport/<account>` | [`LamportDpo`]: the last transaction id issued |
//! | `txn/logkey/<account>` | [`LogKeyDpo`]: the account's log key, wrapped |

use serde::{Deserialize, Serialize};
use tern_meta::{Dpo, Key};
use tern_storage::layout::AccountId;

use crate::log::LogRecord;

/// A transaction's state (DESIGN.md §7).
///
/// ```text
///  Active ──▶ PreCommitting ──▶ Prepared ──▶ Committing ──▶ Committed
///    │              │          (log record   (versions
///    └──────────────┴──▶ Aborted  stored)     visible)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    /// Writing files; nothing locked.
    Active,
    /// Locks held; versions fixed and metadata files written.
    PreCommitting,
    /// Id issued and log record persisted here; never rolled back from here on.
    Prepared,
    /// Log record stored and versions visible; locks not yet released.
    Committing,
    /// Done.
    Committed,
    /// Rolled back: files removed, locks released.
    Aborted,
}

impl TxnState {
    /// Committed or Aborted.
    pub fn is_final(self) -> bool {
        matches!(self, TxnState::Committed | TxnState::Aborted)
    }
}

/// One transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnDpo {
    /// Local handle (not the transaction id, which is issued at prepare).
    pub handle: u64,
    /// The account.
    pub account: AccountId,
    /// The manager instance that runs it.
    pub instance: u64,
    /// Where it is.
    pub state: TxnState,
    /// When it began.
    pub started_at_ms: i64,
    /// When its state last changed.
    pub updated_at_ms: i64,
    /// Every file it wrote or is writing (volume paths), removed if it aborts.
    pub files: Vec<String>,
    /// The locks it holds.
    pub locks: Vec<String>,
    /// The transaction id, from Prepared on.
    pub txn_id: Option<u64>,
    /// The log record, while Prepared or Committing.
    pub record: Option<LogRecord>,
}

impl Dpo for TxnDpo {
    const WHAT: &'static str = "transaction";
    const VERSION: u32 = 1;
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockDpo {
    /// The holder's handle.
    pub handle: u64,
    /// Since when.
    pub since_ms: i64,
}

impl Dpo for LockDpo {
    const WHAT: &'static str = "lock";
    const VERSION: u32 = 1;
}

/// An account's Lamport clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LamportDpo {
    /// The last id issued or observed.
    pub last: u64,
}

impl Dpo for LamportDpo {
    const WHAT: &'static str = "lamport clock";
    const VERSION: u32 = 1;
}

/// An account's log key, wrapped by the deployment's key provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogKeyDpo {
    /// Hex of the wrapped key.
    pub wrapped: String,
}

impl Dpo for LogKeyDpo {
    const WHAT: &'static str = "log key";
    const VERSION: u32 = 1;
}

pub(crate) fn txn_key(handle: u64) -> Key {
    Key::root("txn").str("t").u64(handle)
}

pub(crate) fn txns() -> Key {
    Key::root("txn").str("t")
}

pub(crate) fn lock_key(name: &str) -> Key {
    Key::root("txn").str("lock").str(name)
}

pub(crate) fn lamport_key(account: &AccountId) -> Key {
    Key::root("txn").str("lamport").str(account.as_str())
}

/// The per-database transaction counter (a [`LamportDpo`]): the last sequence number
/// stamped on a transaction that changed the database.
pub(crate) fn db_seq_key(database: &tern_storage::layout::DatabaseId) -> Key {
    Key::root("txn").str("dbseq").str(database.as_str())
}

pub(crate) fn log_key_key(account: &AccountId) -> Key {
    Key::root("txn").str("logkey").str(account.as_str())
}
