//! What the protocol keeps in the metadata store (namespace `txn`).
//!
//! | key | value |
//! |---|---|
//! | `txn/t/<handle>` | [`TxnDpo`]: one transaction's state, files, locks and log record |
//! | `txn/lock/<name>` | [`LockDpo`]: who holds a table or dictionary lock |
//! | `txn/lamport/<account>` | [`LamportDpo`]: the last transaction id issued |
//! | `txn/logkey/<account>` | [`LogKeyDpo`]: the account's log key, wrapped |
//! | `txn/idem/<account>/<key>` | [`IdempotencyDpo`]: a statement's idempotency key, with its request hash, transaction and answer |
//! | `txn/idem-at/<created ms>/<account>/<key>` | [`IdempotencyAtDpo`]: the same key by age, the range pruning walks |
//! | `txn/logpruned/<account>` | [`LogPrunedDpo`]: how far the account's log records may have been deleted |
//! | `txn/logmark/<account>/<at ms>` | [`LogMarkDpo`]: the account's stable log id at a time (how old records are, without reading them) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_meta::{Dpo, Key};
use tern_storage::layout::{AccountId, DatabaseId};
use tern_table::Stamp;

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
///
/// Format versions: 2 (written) keeps a Prepared transaction's log record beside the row
/// (`txn/rec/<handle>`; zstd-packed when large), and its stamps in the row; 1 (still
/// read, and recovered) held the record in the row itself, so that every read and write
/// of the row of a large commit carried its whole file list as JSON.
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
    /// The log record, while Prepared or Committing, in rows of format version 1 only:
    /// version 2 keeps it beside the row (`txn/rec/<handle>`).
    pub record: Option<LogRecord>,
    /// The stamps of the log record, while Prepared or Committing (version 2; a version 1
    /// row has them in its record).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stamps: BTreeMap<DatabaseId, Stamp>,
}

impl Dpo for TxnDpo {
    const WHAT: &'static str = "transaction";
    const VERSION: u32 = 2;
    const OLDEST_READ: u32 = 1;
}

impl TxnDpo {
    /// The stamps of its log record, wherever the row's format keeps them.
    pub fn record_stamps(&self) -> &BTreeMap<DatabaseId, Stamp> {
        match &self.record {
            Some(r) => &r.stamps,
            None => &self.stamps,
        }
    }
}

/// A [`TxnDpo`] read without its log record: the record's bytes are skipped, never
/// decoded. What a state change that ends the record's life reads (finishing and
/// releasing set `record` to `None`): the record of a large commit (one change listing
/// every file of a 100 000-file table) would otherwise be decoded again — a second copy
/// of the whole list, in serde's buffered form for the tagged changes — only to be
/// dropped. The same row as [`TxnDpo`] (same name and version); never written itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct TxnHead {
    /// As in [`TxnDpo`].
    pub handle: u64,
    /// As in [`TxnDpo`].
    pub account: AccountId,
    /// As in [`TxnDpo`].
    pub instance: u64,
    /// As in [`TxnDpo`].
    pub state: TxnState,
    /// As in [`TxnDpo`].
    pub started_at_ms: i64,
    /// As in [`TxnDpo`].
    pub updated_at_ms: i64,
    /// As in [`TxnDpo`].
    pub files: Vec<String>,
    /// As in [`TxnDpo`].
    pub locks: Vec<String>,
    /// As in [`TxnDpo`].
    pub txn_id: Option<u64>,
    /// Whether the row holds a log record (skipped unread).
    #[serde(default, skip_serializing)]
    record: Option<serde::de::IgnoredAny>,
    /// As in [`TxnDpo`].
    #[serde(default)]
    pub stamps: BTreeMap<DatabaseId, Stamp>,
}

impl Dpo for TxnHead {
    const WHAT: &'static str = TxnDpo::WHAT;
    const VERSION: u32 = TxnDpo::VERSION;
    const OLDEST_READ: u32 = TxnDpo::OLDEST_READ;
}

impl TxnHead {
    /// Whether the row holds a log record.
    pub fn has_record(&self) -> bool {
        self.record.is_some()
    }

    /// The row without its log record (what finishing or releasing writes back).
    pub fn without_record(self) -> TxnDpo {
        TxnDpo {
            handle: self.handle,
            account: self.account,
            instance: self.instance,
            state: self.state,
            started_at_ms: self.started_at_ms,
            updated_at_ms: self.updated_at_ms,
            files: self.files,
            locks: self.locks,
            txn_id: self.txn_id,
            record: None,
            stamps: self.stamps,
        }
    }
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

/// A statement's idempotency key, stored in the same metadata write that makes its
/// transaction Prepared (so it exists exactly when the transaction is, or will be,
/// committed), or after the statement for one that changed nothing (no transaction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyDpo {
    /// The key as the client sent it.
    pub key: String,
    /// The digest of the request it came with (hex).
    pub request_hash: String,
    /// The transaction that carries the statement; `None` when the statement changed
    /// nothing and committed no transaction.
    pub txn_id: Option<u64>,
    /// When it was stored (pruned after the retention).
    pub created_at_ms: i64,
    /// What the statement answered, as far as the commit decides it.
    pub outcome: Option<IdempotentOutcome>,
}

impl Dpo for IdempotencyDpo {
    const WHAT: &'static str = "idempotency key";
    const VERSION: u32 = 1;
}

/// A statement's answer kept with its idempotency key: a table change's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentOutcome {
    /// The table's version after the statement.
    pub version: u64,
    /// Whether it made a new version.
    pub committed: bool,
    /// Micro-partitions written.
    pub files_added: u64,
    /// Micro-partitions replaced or dropped.
    pub files_removed: u64,
    /// Rows inserted, deleted or updated.
    pub rows: u64,
}

impl From<&tern_table::CommitInfo> for IdempotentOutcome {
    fn from(i: &tern_table::CommitInfo) -> Self {
        Self {
            version: i.version,
            committed: i.committed,
            files_added: i.files_added as u64,
            files_removed: i.files_removed as u64,
            rows: i.rows_affected,
        }
    }
}

impl IdempotentOutcome {
    /// The statement's answer again, with the transaction that made it.
    pub fn commit_info(&self, txn_id: Option<u64>) -> tern_table::CommitInfo {
        tern_table::CommitInfo {
            version: self.version,
            committed: self.committed,
            files_added: usize::try_from(self.files_added).unwrap_or(usize::MAX),
            files_removed: usize::try_from(self.files_removed).unwrap_or(usize::MAX),
            rows_affected: self.rows,
            txn_id,
        }
    }
}

/// An idempotency key by age: `txn/idem-at/<created ms>/<account>/<key>`, so that pruning
/// reads the expired keys as one range from the start instead of every key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyAtDpo {
    /// The key's account.
    pub account: AccountId,
    /// The key.
    pub key: String,
    /// When it was stored.
    pub created_at_ms: i64,
}

impl Dpo for IdempotencyAtDpo {
    const WHAT: &'static str = "idempotency key age";
    const VERSION: u32 = 1;
}

/// How far an account's log has been pruned (`txn/logpruned/<account>`).
///
/// `up_to` is raised *before* any record is deleted, so a record at or below it may be
/// gone and a reader that misses one there knows it was pruned, not lost; `cleared` follows
/// once every record at or below it is gone (the next pass lists from there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPrunedDpo {
    /// Records with an id at or below this may have been deleted.
    pub up_to: u64,
    /// Every record with an id at or below this has been deleted.
    pub cleared: u64,
    /// Records deleted so far.
    pub deleted: u64,
    /// When `up_to` last moved.
    pub pruned_at_ms: i64,
}

impl Dpo for LogPrunedDpo {
    const WHAT: &'static str = "log pruning watermark";
    const VERSION: u32 = 1;
}

/// The account's stable log id at a moment (`txn/logmark/<account>/<at ms>`): every record
/// at or below `stable` was stored before `at_ms`. Pruning by age reads these marks instead
/// of every record's commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMarkDpo {
    /// When it was taken.
    pub at_ms: i64,
    /// The stable log id then.
    pub stable: u64,
}

impl Dpo for LogMarkDpo {
    const WHAT: &'static str = "log age mark";
    const VERSION: u32 = 1;
}

pub(crate) fn log_pruned_key(account: &AccountId) -> Key {
    Key::root("txn").str("logpruned").str(account.as_str())
}

pub(crate) fn log_marks(account: &AccountId) -> Key {
    Key::root("txn").str("logmark").str(account.as_str())
}

pub(crate) fn log_mark_key(account: &AccountId, at_ms: i64) -> Key {
    log_marks(account).u64(u64::try_from(at_ms).unwrap_or(0))
}

pub(crate) fn idempotency_key(account: &AccountId, key: &str) -> Key {
    Key::root("txn").str("idem").str(account.as_str()).str(key)
}

pub(crate) fn idempotency_at_key(created_at_ms: i64, account: &AccountId, key: &str) -> Key {
    idempotency_ages()
        .u64(u64::try_from(created_at_ms).unwrap_or(0))
        .str(account.as_str())
        .str(key)
}

pub(crate) fn idempotency_ages() -> Key {
    Key::root("txn").str("idem-at")
}

/// Store `row` as `account`'s key (and its age index) unless the key is stored already;
/// the row stored under the key either way.
pub(crate) fn put_idempotency(
    tx: &mut tern_meta::MetaTxn<'_>,
    account: &AccountId,
    row: &IdempotencyDpo,
) -> tern_meta::Result<IdempotencyDpo> {
    let key = idempotency_key(account, &row.key);
    if let Some(existing) = tx.get::<IdempotencyDpo>(&key)? {
        return Ok(existing);
    }
    tx.put(&key, row)?;
    tx.put(
        &idempotency_at_key(row.created_at_ms, account, &row.key),
        &IdempotencyAtDpo {
            account: account.clone(),
            key: row.key.clone(),
            created_at_ms: row.created_at_ms,
        },
    )?;
    Ok(row.clone())
}

pub(crate) fn txn_key(handle: u64) -> Key {
    Key::root("txn").str("t").u64(handle)
}

pub(crate) fn txns() -> Key {
    Key::root("txn").str("t")
}

/// A file journaled by transaction `handle` (one row per file: journaling k files is O(k)
/// metadata work, not a growing list rewritten per file).
pub(crate) fn txn_file_key(handle: u64, path: &str) -> Key {
    txn_files(handle).str(path)
}

pub(crate) fn txn_files(handle: u64) -> Key {
    Key::root("txn").str("f").u64(handle)
}

/// A Prepared transaction's sealed metadata file as a [`StagedFileDpo`] (hex in JSON;
/// `txn/s/<handle>/<path>`): how stores written before [`staged_bytes_key`] hold them.
/// Still read (recovery) and deleted, never written.
pub(crate) fn staged_files(handle: u64) -> Key {
    Key::root("txn").str("s").u64(handle)
}

/// A Prepared transaction's sealed metadata file, stored as the file's own bytes
/// (`txn/sb/<handle>/<path>`; the value is the encrypted file exactly as it is to be
/// written, whose header carries its format version): no hex, no JSON around it, so a
/// metadata file of 100 000 entries is held once while it is stored, not in three
/// growing encodings.
pub(crate) fn staged_bytes_key(handle: u64, path: &str) -> Key {
    staged_bytes(handle).str(path)
}

pub(crate) fn staged_bytes(handle: u64) -> Key {
    Key::root("txn").str("sb").u64(handle)
}

/// A Prepared transaction's log record (`txn/rec/<handle>`): the record's plaintext
/// exactly as [`LogRecord::to_bytes`] gives it (a versioned document of its own,
/// `{"format":"tern-txlog","v":…}`), stored as it is when under 64 KiB, else as one zstd
/// frame of it (told apart by zstd's magic; a record starts with `{`): encoded at prepare
/// straight into the compressor, never as a JSON string inside the row; recovery unpacks
/// it and writes those bytes.
pub(crate) fn record_key(handle: u64) -> Key {
    Key::root("txn").str("rec").u64(handle)
}

/// `account`'s transactions that have an id and may not be visible yet (Prepared,
/// Committing), by id: the stable log id is the first of them.
pub(crate) fn pending_key(account: &AccountId, txn_id: u64) -> Key {
    pending(account).u64(txn_id)
}

pub(crate) fn pending(account: &AccountId) -> Key {
    Key::root("txn").str("pending").str(account.as_str())
}

pub(crate) fn all_pending() -> Key {
    Key::root("txn").str("pending")
}

/// The transaction that got id `txn_id` of `account`, while its row is kept.
pub(crate) fn by_id_key(account: &AccountId, txn_id: u64) -> Key {
    Key::root("txn").str("id").str(account.as_str()).u64(txn_id)
}

/// Finished transactions by the time they finished (pruning walks it oldest first).
pub(crate) fn done_key(finished_at_ms: i64, handle: u64) -> Key {
    done()
        .u64(u64::try_from(finished_at_ms).unwrap_or(0))
        .u64(handle)
}

pub(crate) fn done() -> Key {
    Key::root("txn").str("done")
}

/// Which indexes of the transaction rows a store has (written by the one-time backfill).
pub(crate) fn indexes_key() -> Key {
    Key::root("txn").str("indexes")
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

/// A journaled file of a transaction (`txn/f/<handle>/<path>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnFileDpo {
    /// The file's path in the volume.
    pub path: String,
}

impl Dpo for TxnFileDpo {
    const WHAT: &'static str = "journaled file";
    const VERSION: u32 = 1;
}

/// A metadata file of a Prepared transaction as it is to be stored (sealed), kept from
/// the metadata transaction that prepares it until it is committed: the file is written
/// beside the log record, after that transaction, so recovery writes it from here. The
/// form stores written before [`staged_bytes_key`] hold; read, never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFileDpo {
    /// The file's path in the volume.
    pub path: String,
    /// The sealed file, hex.
    pub sealed: String,
}

impl Dpo for StagedFileDpo {
    const WHAT: &'static str = "staged metadata file";
    const VERSION: u32 = 1;
}

/// An index entry naming a transaction row (`txn/pending/…`, `txn/id/…`, `txn/done/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRefDpo {
    /// The transaction's handle (its row is `txn/t/<handle>`).
    pub handle: u64,
}

impl Dpo for TxnRefDpo {
    const WHAT: &'static str = "transaction index entry";
    const VERSION: u32 = 1;
}

/// The indexes of the transaction rows a store has (see [`TXN_INDEXES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnIndexesDpo {
    /// The version of the index set.
    pub version: u32,
}

impl Dpo for TxnIndexesDpo {
    const WHAT: &'static str = "transaction indexes";
    const VERSION: u32 = 1;
}

/// Version of the transaction-row indexes: 1 = pending by id, by id, finished by time, and
/// journaled files as rows of their own.
pub(crate) const TXN_INDEXES: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use tern_meta::MetaStore;

    /// A row read as a [`TxnHead`] never decodes its log record: a record this build
    /// cannot read (here not a record at all) still gives the row's state, while the full
    /// read refuses it — so finishing a commit does not decode its file list again.
    #[test]
    fn the_head_of_a_transaction_row_skips_its_record_unread() {
        let meta = MetaStore::in_memory();
        let key = txn_key(7);
        let row = br#"{"v":1,"d":{"handle":7,"account":"acme","instance":1,"state":"prepared","started_at_ms":1,"updated_at_ms":2,"files":["a"],"locks":["t"],"txn_id":5,"record":{"not":"a log record","changes":[{"kind":"no_such_kind"}]}}}"#;
        let (head, full) = meta
            .write(|tx| {
                tx.raw().put(key.as_bytes(), row)?;
                let full = tx.get::<TxnDpo>(&key).is_err();
                Ok((tx.get::<TxnHead>(&key)?, full))
            })
            .expect("read");
        assert!(full, "the full row reads its record (which is not one)");
        let head = head.expect("row");
        assert!(head.has_record());
        let t = head.without_record();
        assert_eq!(
            (t.handle, t.state, t.txn_id, t.locks, t.record),
            (7, TxnState::Prepared, Some(5), vec!["t".to_string()], None)
        );
    }

    /// A transaction row of format 2 and the keys of what a Prepared transaction keeps
    /// beside it are pinned; a row of format 1 (its record inside) still reads.
    #[test]
    fn transaction_rows_are_golden() {
        let meta = MetaStore::in_memory();
        let db = DatabaseId::new("db1").expect("db");
        let row = TxnDpo {
            handle: 7,
            account: AccountId::new("acme").expect("account"),
            instance: 1,
            state: TxnState::Prepared,
            started_at_ms: 1,
            updated_at_ms: 2,
            files: Vec::new(),
            locks: vec!["table/t1".into()],
            txn_id: Some(5),
            record: None,
            stamps: BTreeMap::from([(db.clone(), Stamp { epoch: 2, seq: 9 })]),
        };
        let key = txn_key(7);
        let raw = meta
            .write(|tx| {
                tx.put(&key, &row)?;
                Ok(tx.raw().get(key.as_bytes())?.unwrap_or_default())
            })
            .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&raw),
            r#"{"v":2,"d":{"handle":7,"account":"acme","instance":1,"state":"prepared","started_at_ms":1,"updated_at_ms":2,"files":[],"locks":["table/t1"],"txn_id":5,"record":null,"stamps":{"db1":{"epoch":2,"seq":9}}}}"#
        );
        assert_eq!(record_key(7).to_string(), "txn/rec/7");
        assert_eq!(
            staged_bytes_key(7, "acct/a/db/d/tbl/t/ep/3.ep").to_string(),
            "txn/sb/7/acct/a/db/d/tbl/t/ep/3.ep"
        );
        assert_eq!(
            staged_files(7).str("acct/a/db/d/tbl/t/ep/3.ep").to_string(),
            "txn/s/7/acct/a/db/d/tbl/t/ep/3.ep"
        );
        // Format 1: the record in the row, its stamps in the record.
        let v1 = br#"{"v":1,"d":{"handle":7,"account":"acme","instance":1,"state":"prepared","started_at_ms":1,"updated_at_ms":2,"files":[],"locks":["table/t1"],"txn_id":5,"record":{"format":"tern-txlog","v":1,"txn_id":5,"origin":"d1","account":"acme","committed_at_ms":3,"changes":[],"stamps":{"db1":{"epoch":2,"seq":9}}}}}"#;
        let read = meta
            .write(|tx| {
                tx.raw().put(key.as_bytes(), v1)?;
                tx.get::<TxnDpo>(&key)
            })
            .expect("read")
            .expect("row");
        assert_eq!(read.record.as_ref().map(|r| r.txn_id), Some(5));
        assert_eq!(read.record_stamps(), &row.stamps);
        assert_eq!(
            meta.read(|tx| tx.get::<TxnHead>(&key))
                .expect("read")
                .expect("head")
                .without_record()
                .record_stamps(),
            &BTreeMap::new(),
            "a head skips the record, and with it a format 1 row's stamps"
        );
        // A newer format is refused, not misread.
        let v3 = String::from_utf8_lossy(&raw).replace(r#""v":2"#, r#""v":3"#);
        let e = meta
            .write(|tx| {
                tx.raw().put(key.as_bytes(), v3.as_bytes())?;
                Ok(tx.get::<TxnDpo>(&key).is_err())
            })
            .expect("write");
        assert!(e);
    }

    /// Stored idempotency keys keep their bytes and their key layout: a change is a format
    /// change (bump `VERSION`, convert old rows).
    /// The pruning watermark and age marks keep their bytes and key layout.
    #[test]
    fn log_pruning_rows_are_golden() {
        let meta = MetaStore::in_memory();
        let account = AccountId::new("acme").expect("account");
        let w = LogPrunedDpo {
            up_to: 42,
            cleared: 40,
            deleted: 17,
            pruned_at_ms: 1_700_000_000_000,
        };
        let m = LogMarkDpo {
            at_ms: 1_700_000_000_000,
            stable: 42,
        };
        let (wk, mk) = (log_pruned_key(&account), log_mark_key(&account, m.at_ms));
        let raw = meta
            .write(|tx| {
                tx.put(&wk, &w)?;
                tx.put(&mk, &m)?;
                let a = tx.raw().get(wk.as_bytes())?.unwrap_or_default();
                let b = tx.raw().get(mk.as_bytes())?.unwrap_or_default();
                Ok((a, b))
            })
            .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&raw.0),
            r#"{"v":1,"d":{"up_to":42,"cleared":40,"deleted":17,"pruned_at_ms":1700000000000}}"#
        );
        assert_eq!(
            String::from_utf8_lossy(&raw.1),
            r#"{"v":1,"d":{"at_ms":1700000000000,"stable":42}}"#
        );
        assert_eq!(wk.to_string(), "txn/logpruned/acme");
        assert_eq!(mk.to_string(), "txn/logmark/acme/1700000000000");
    }

    #[test]
    fn idempotency_rows_are_golden() {
        let meta = MetaStore::in_memory();
        let account = AccountId::new("acme").expect("account");
        let row = IdempotencyDpo {
            key: "k-1".into(),
            request_hash: "ab12".into(),
            txn_id: Some(7),
            created_at_ms: 1_700_000_000_000,
            outcome: Some(IdempotentOutcome {
                version: 3,
                committed: true,
                files_added: 1,
                files_removed: 0,
                rows: 2,
            }),
        };
        let (k, at) = (
            idempotency_key(&account, "k-1"),
            idempotency_at_key(row.created_at_ms, &account, "k-1"),
        );
        let raw = meta
            .write(|tx| {
                assert_eq!(put_idempotency(tx, &account, &row)?, row);
                let a = tx.raw().get(k.as_bytes())?.unwrap_or_default();
                let b = tx.raw().get(at.as_bytes())?.unwrap_or_default();
                Ok((a, b))
            })
            .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&raw.0),
            r#"{"v":1,"d":{"key":"k-1","request_hash":"ab12","txn_id":7,"created_at_ms":1700000000000,"outcome":{"version":3,"committed":true,"files_added":1,"files_removed":0,"rows":2}}}"#
        );
        assert_eq!(
            String::from_utf8_lossy(&raw.1),
            r#"{"v":1,"d":{"account":"acme","key":"k-1","created_at_ms":1700000000000}}"#
        );
        assert_eq!(k.to_string(), "txn/idem/acme/k-1");
        assert_eq!(at.to_string(), "txn/idem-at/1700000000000/acme/k-1");
        // A second put of the same key keeps the first row.
        let other = IdempotencyDpo {
            request_hash: "cd34".into(),
            ..row.clone()
        };
        let kept = meta
            .write(|tx| put_idempotency(tx, &account, &other))
            .expect("write");
        assert_eq!(kept, row);
    }
}
