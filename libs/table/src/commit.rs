//! The seam between statements and the commit protocol.
//!
//! A statement ([`Tables::insert`](crate::Tables::insert), `delete`, `create_table`, …)
//! writes its new files and describes what it changed as [`Change`]s; a [`Committer`]
//! decides when and how they become visible. A deployment commits through `tern-txn`
//! (transaction ids, table locks, the prepare phase and the transaction log record,
//! DESIGN.md §7); [`LocalCommitter`] commits in one metadata-store transaction and writes no
//! log, for the table format's own tests and benchmarks.
//!
//! ```text
//!  statement ──begin──▶ Transaction ──will_write(path)──▶ (file written)
//!            ──commit(changes)──▶ per change, under its locks:
//!                 Change::prepare  → fix the version (appends rebase), write the metadata
//!                                     file → ChangeRecord (what the log record holds)
//!                 publish(records) → one metadata transaction: versions visible
//! ```
//!
//! Every file a transaction writes is announced with [`FileJournal::will_write`] *before*
//! it is written, so that a transaction that never commits (an error, a crash) can have
//! all of its files removed. [`publish`] is deterministic: applied to the same metadata
//! state it succeeds or fails the same way, which lets a committer check a change under
//! its locks before the point of no return.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::{ObjectStore, PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use tern_clock::SharedClock;
use tern_crypto::{EncryptOptions, TableFileKeys};
use tern_meta::{
    ColumnDef, DictionaryChange, EpFileRef, MetaStore, MetaTxn, MicroPartitionDpo, SchemaDpo,
    TableDpo, TableVersionDpo,
};
use tern_storage::layout::{
    self, AccountId, DatabaseId, DeploymentId, GlobalFileRef, ShortName, TableId,
};
use tern_storage::{Path, StoreExt};

use crate::error::{Error, Result};

/// Records every file a transaction is about to write.
#[async_trait]
pub trait FileJournal: Send {
    /// `path` is about to be written by this transaction: if the transaction does not
    /// commit, the file must be removed. Called before the write starts.
    async fn will_write(&mut self, path: &Path) -> Result<()>;

    /// [`will_write`](Self::will_write) for every path of `paths`, at once: a committer
    /// may store them in one record (tern-txn: one metadata transaction), so a change
    /// copying in 100 000 files does not store 100 000 times. By default one at a time.
    async fn will_write_all(&mut self, paths: &[Path]) -> Result<()> {
        for path in paths {
            self.will_write(path).await?;
        }
        Ok(())
    }

    /// A number `n` for a new micro-partition of `table`, whose file
    /// (`layout::volume::mp_in(prefix, &numbered_mp(n))`, `prefix` the table's mp prefix)
    /// is covered as [`will_write`](Self::will_write) covers a path: if the transaction
    /// does not commit, the file is removed, crash or not. A committer may cover many
    /// numbers with one stored record (tern-txn reserves them in blocks per table), so
    /// that a statement writing one file stores nothing before its commit.
    async fn new_mp(&mut self, table: &TableId, prefix: &Path) -> Result<u64>;
}

/// Starts transactions.
#[async_trait]
pub trait Committer: Send + Sync + fmt::Debug {
    /// A new transaction of `account`.
    async fn begin(&self, account: &AccountId) -> Result<Box<dyn Transaction>>;
}

/// One open transaction.
#[async_trait]
pub trait Transaction: FileJournal {
    /// Take locks now rather than at commit (a statement that changes what it reads locks
    /// its table before reading, so that nothing commits on the table in between). Waits,
    /// up to the committer's lock timeout.
    async fn lock(&mut self, names: &[String]) -> Result<()>;
    /// Make `changes` visible, all or nothing. On an error nothing is visible and the
    /// transaction's files are gone — unless the error says the outcome is in doubt
    /// ([`Error::is_in_doubt`]): then the transaction will be completed by recovery.
    async fn commit(self: Box<Self>, changes: Vec<Change>) -> Result<Committed>;
    /// Give up: remove every file written.
    async fn abort(self: Box<Self>);
    /// This transaction applies a change replicated from `database`'s upstream, made there
    /// under `stamp`: it is not a statement, so the [`WriteFence`] does not apply, and its
    /// log record carries the upstream's stamp (a chain forwards it unchanged). Committers
    /// without log records ignore it.
    fn replicated(&mut self, database: &DatabaseId, stamp: Stamp) {
        let _ = (database, stamp);
    }
    /// The statement carries an idempotency key: the committer stores it with the
    /// transaction at its point of no return, in the same metadata write (so the key is
    /// found exactly when the transaction is, or will be, committed), and refuses the
    /// commit with [`Error::IdempotencyKeyTaken`] when another transaction holds the key.
    /// Committers that keep no such record refuse the key rather than ignore it.
    fn idempotency(&mut self, key: IdempotencyKey) -> Result<()> {
        Err(Error::IdempotencyUnsupported { key: key.key })
    }
}

/// A statement's idempotency key (the API's `Idempotency-Key` header, per account) and
/// the hash of the request it came with: a retry of the same request with the same key is
/// applied once; the same key with another request is refused by whoever compares hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as the client sent it.
    pub key: String,
    /// A digest of what the key was sent with (method, path, body), hex.
    pub request_hash: String,
}

/// The key a statement runs with; its request hash may be known only once the request's
/// body has been read (a streamed load), which is before the statement commits.
#[derive(Debug, Clone)]
struct StatementKey {
    key: String,
    request_hash: Arc<std::sync::OnceLock<String>>,
}

tokio::task_local! {
    static STATEMENT_KEY: StatementKey;
}

/// Run `statement` with `key` as its idempotency key: the table change it commits
/// ([`Tables::insert`](crate::Tables::insert), `delete`, `update`, `merge`, `add_column`)
/// hands it to its transaction ([`Transaction::idempotency`]). A task-local rather than a
/// parameter of every statement: it is set once, at the API, and read at one place, the
/// commit of a table change; dictionary changes made inside `statement` do not take it.
pub async fn with_idempotency_key<F: std::future::Future>(
    key: IdempotencyKey,
    statement: F,
) -> F::Output {
    let hash = Arc::new(std::sync::OnceLock::from(key.request_hash));
    with_pending_idempotency_key(key.key, hash, statement).await
}

/// [`with_idempotency_key`] for a statement whose request is still being read when it
/// starts (a streamed load): `request_hash` must be set once the whole request has been
/// read, which is before the statement commits (its rows end with the request). Were it
/// still unset at the commit, the key is stored with an empty hash, which no request
/// matches: a retry is then refused as a reuse of the key, never applied twice.
pub async fn with_pending_idempotency_key<F: std::future::Future>(
    key: String,
    request_hash: Arc<std::sync::OnceLock<String>>,
    statement: F,
) -> F::Output {
    STATEMENT_KEY
        .scope(StatementKey { key, request_hash }, statement)
        .await
}

/// The idempotency key of the statement running on this task, if it has one.
pub(crate) fn statement_idempotency_key() -> Option<IdempotencyKey> {
    STATEMENT_KEY
        .try_with(|k| IdempotencyKey {
            key: k.key.clone(),
            request_hash: k.request_hash.get().cloned().unwrap_or_default(),
        })
        .ok()
}

/// Where a committed change of a replicated database stands in its group: the role epoch
/// it was made under and its number among the database's transactions (per database, from
/// 1). Log records carry one per database they change, so replicas can refuse a stale
/// epoch's changes and count the transactions they lack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    /// The epoch of the primary that made it.
    pub epoch: u64,
    /// Its sequence number among the database's committed transactions.
    pub seq: u64,
}

/// Decides whether statements may change a database now: replication installs one that
/// knows roles, epochs, leases and pauses. A committer asks it in the same metadata
/// transaction that prepares a statement's commit (the soft point of no return), so a
/// database fenced before that point never takes the commit.
pub trait WriteFence: Send + Sync + fmt::Debug {
    /// `Ok(Ok(epoch))`: statements may change `database`; their changes are made under
    /// `epoch`. `Ok(Err(e))`: refused ([`Error::NotWritable`] or [`Error::ReadOnlyReplica`]).
    fn check(
        &self,
        tx: &mut MetaTxn<'_>,
        database: &DatabaseId,
    ) -> tern_meta::Result<std::result::Result<u64, Error>>;
}

/// What a commit made visible.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The transaction id (Lamport), when the committer issues them.
    pub txn_id: Option<u64>,
    /// The changes as made, in the order given.
    pub records: Vec<ChangeRecord>,
}

/// A change of one statement, staged: its files are written, nothing is visible.
#[derive(Debug)]
pub enum Change {
    /// A new version of a table.
    Table(TableChange),
    /// A dictionary change that makes no table version.
    Dictionary {
        /// The database's account.
        account: AccountId,
        /// The database.
        database: DatabaseId,
        /// What changes.
        op: DictionaryOp,
    },
    /// A replica's drift repair: the table's files at its current version are set right
    /// (missing ones put back, stray ones ended) without making a version, so that a
    /// replica's versions keep mirroring its upstream's. Committed like any change so that
    /// its log record reaches the replicas downstream of this one.
    Repair(RepairChange),
}

/// A drift repair of one table at its current version ([`Change::Repair`]).
pub struct RepairChange {
    /// The table's account.
    pub account: AccountId,
    /// The table's database.
    pub database: DatabaseId,
    /// The table.
    pub table: TableId,
    /// The version the table must be at (the repair lands there or not at all).
    pub version: u64,
    /// Micro-partitions put back (written already; `added_version` as the upstream has it,
    /// at most `version`; `key_ref` set from `keys`).
    pub added: Vec<MicroPartitionDpo>,
    /// Active micro-partitions that should not be there.
    pub removed: Vec<MicroPartitionDpo>,
    /// The table's file keys (names the key the added files are sealed with).
    pub keys: Arc<TableFileKeys>,
}

impl fmt::Debug for RepairChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepairChange")
            .field("table", &self.table)
            .field("version", &self.version)
            .field("added", &self.added.len())
            .field("removed", &self.removed.len())
            .finish_non_exhaustive()
    }
}

/// A new version of one table, before its version number is fixed.
pub struct TableChange {
    /// The table's account.
    pub account: AccountId,
    /// The table's database.
    pub database: DatabaseId,
    /// The table.
    pub table: TableId,
    /// The version the statement read.
    pub base_version: u64,
    /// Whether the change may land on a later version than `base_version`: true for
    /// changes that depend on nothing they read but the files they remove — pure appends
    /// (inserts, which remove none) and compaction (which removes files it rewrote row for
    /// row) — false for changes computed from what they read. A rebased change whose
    /// removed files are no longer all active is a [`Error::Conflict`].
    pub rebase: bool,
    /// The version to make, when it is not `base_version + 1`: a replicated change takes
    /// its primary's version number (a refresh may skip versions). Never with `rebase`.
    pub version: Option<u64>,
    /// Micro-partitions written (their `added_version` is set when the version is fixed,
    /// and their `key_ref` from `keys`).
    pub added: Vec<MicroPartitionDpo>,
    /// Active micro-partitions replaced or dropped.
    pub removed: Vec<MicroPartitionDpo>,
    /// The table's columns after the change.
    pub columns: Vec<ColumnDef>,
    /// A column this change adds (DDL recorded with the version).
    pub add_column: Option<ColumnDef>,
    /// Rows affected, as the statement counts them.
    pub rows: u64,
    /// The table's file keys (to seal the metadata file).
    pub keys: Arc<TableFileKeys>,
}

impl fmt::Debug for TableChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableChange")
            .field("table", &self.table)
            .field("base_version", &self.base_version)
            .field("rebase", &self.rebase)
            .field("added", &self.added.len())
            .field("removed", &self.removed.len())
            .finish_non_exhaustive()
    }
}

/// A dictionary change without a table version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DictionaryOp {
    /// `create schema`.
    CreateSchema(SchemaDpo),
    /// `drop schema`.
    DropSchema {
        /// The schema.
        name: String,
    },
    /// `create table` (version 0, no files).
    CreateTable(TableDpo),
    /// `drop table`.
    DropTable {
        /// The table.
        table: TableId,
    },
}

/// A removed micro-partition, by local and global name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedFile {
    /// Its short name here.
    pub short: ShortName,
    /// Its name across the group.
    pub global_ref: GlobalFileRef,
}

/// A change as committed: everything needed to make it visible here, or to reproduce it
/// on another deployment. Transaction log records hold a list of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeRecord {
    /// Table version `version` on top of `base_version`.
    TableVersion {
        /// The table's database.
        database: DatabaseId,
        /// The table.
        table: TableId,
        /// The version it was made on.
        base_version: u64,
        /// The version it makes (`base_version + 1`, or later for a replicated change).
        version: u64,
        /// Its metadata file.
        ep_file: EpFileRef,
        /// The table's columns at `version`.
        columns: Vec<ColumnDef>,
        /// Micro-partitions added (with statistics and global references).
        added: Vec<MicroPartitionDpo>,
        /// Micro-partitions removed.
        removed: Vec<RemovedFile>,
        /// DDL made with this version (add column).
        ddl: Option<DictionaryChange>,
        /// Rows affected.
        rows: u64,
    },
    /// A dictionary change.
    Dictionary {
        /// The database.
        database: DatabaseId,
        /// What changed.
        op: DictionaryOp,
    },
    /// A drift repair ([`Change::Repair`]): at table version `version` (no new version),
    /// `added` were put back and `removed` ended. A replica downstream applies it to its
    /// own copy at that version or later (see `tern-replication`). Log records written
    /// before repairs were logged hold none; a reader older than this kind cannot read a
    /// record holding one (the log's format version is unchanged: every older record
    /// reads as before).
    Repair {
        /// The table's database.
        database: DatabaseId,
        /// The table.
        table: TableId,
        /// The version the table was at (and stays at).
        version: u64,
        /// Micro-partitions put back (with statistics and global references).
        added: Vec<MicroPartitionDpo>,
        /// Micro-partitions ended.
        removed: Vec<RemovedFile>,
    },
}

impl ChangeRecord {
    /// Where this change lands (as [`Change::landing_in`] found it when it was planned);
    /// `None` for a dictionary change.
    pub fn landing(&self) -> Option<Landing> {
        match self {
            ChangeRecord::TableVersion {
                table,
                base_version,
                version,
                columns,
                ..
            } => Some(Landing {
                table: table.clone(),
                base_version: *base_version,
                version: *version,
                columns: columns.clone(),
            }),
            ChangeRecord::Repair { table, version, .. } => Some(Landing {
                table: table.clone(),
                base_version: *version,
                version: *version,
                columns: Vec::new(),
            }),
            ChangeRecord::Dictionary { .. } => None,
        }
    }

    /// The micro-partitions this change adds, taken out of the record (a plan that no
    /// longer holds gives its files to the next one: [`Change::plan_landed`]).
    pub fn take_added(&mut self) -> Vec<MicroPartitionDpo> {
        match self {
            ChangeRecord::TableVersion { added, .. } | ChangeRecord::Repair { added, .. } => {
                std::mem::take(added)
            }
            ChangeRecord::Dictionary { .. } => Vec::new(),
        }
    }

    /// The table version this record makes, if any (a repair makes none).
    pub fn table_version(&self) -> Option<(&TableId, u64)> {
        match self {
            ChangeRecord::TableVersion { table, version, .. } => Some((table, *version)),
            ChangeRecord::Dictionary { .. } | ChangeRecord::Repair { .. } => None,
        }
    }

    /// The database the change belongs to.
    pub fn database(&self) -> &DatabaseId {
        match self {
            ChangeRecord::TableVersion { database, .. }
            | ChangeRecord::Dictionary { database, .. }
            | ChangeRecord::Repair { database, .. } => database,
        }
    }
}

/// The lock name of a table.
pub fn table_lock(table: &TableId) -> String {
    format!("table/{table}")
}

/// The lock name of a database's dictionary.
pub fn dictionary_lock(database: &DatabaseId) -> String {
    format!("dict/{database}")
}

impl Change {
    /// The account whose transaction this change belongs to.
    pub fn account(&self) -> &AccountId {
        match self {
            Change::Table(t) => &t.account,
            Change::Dictionary { account, .. } => account,
            Change::Repair(r) => &r.account,
        }
    }

    /// The locks a committer must hold from [`Change::prepare`] until the change is
    /// visible.
    pub fn lock_names(&self) -> Vec<String> {
        match self {
            Change::Table(t) => vec![table_lock(&t.table)],
            Change::Repair(r) => vec![table_lock(&r.table)],
            Change::Dictionary { database, op, .. } => match op {
                DictionaryOp::DropTable { table } => {
                    vec![dictionary_lock(database), table_lock(table)]
                }
                _ => vec![dictionary_lock(database)],
            },
        }
    }

    /// Under this change's locks: fix the table version (a rebasing change lands on the
    /// current version when every file it removes is still active there; any other change
    /// must find the version it read; else [`Error::Conflict`]) and write the metadata
    /// file. Returns the record to publish.
    pub async fn prepare(
        self,
        meta: &MetaStore,
        volume: &dyn ObjectStore,
        journal: &mut dyn FileJournal,
    ) -> Result<ChangeRecord> {
        self.prepare_at(meta, volume, journal, None).await
    }

    /// The metadata file this change would write as number `seq` (of the `"ep"` unique
    /// sequence); `None` for a change that writes none (dictionary changes).
    pub fn metadata_path(&self, seq: u64) -> Option<Path> {
        match self {
            Change::Table(t) => Some(layout::volume::ep(&t.account, &t.database, &t.table, seq)),
            Change::Dictionary { .. } | Change::Repair(_) => None,
        }
    }

    /// [`Change::prepare`], writing the metadata file as number `ep_seq` when given: the
    /// caller took it from the `"ep"` sequence and journaled [`Change::metadata_path`]
    /// already. Without it the number is taken and the path journaled here.
    pub async fn prepare_at(
        self,
        meta: &MetaStore,
        volume: &dyn ObjectStore,
        journal: &mut dyn FileJournal,
        ep_seq: Option<u64>,
    ) -> Result<ChangeRecord> {
        let seq = match (&self, ep_seq) {
            (_, Some(seq)) => seq,
            (Change::Table(_), None) => meta.next_unique("ep")?,
            (Change::Dictionary { .. } | Change::Repair(_), None) => 0,
        };
        let change = Arc::new(self);
        let planned = {
            let change = Arc::clone(&change);
            meta.read_async(move |tx| Ok(change.plan_in(tx, seq)))
                .await??
        };
        if let (Some(file), Some(plain)) = (&planned.metadata_file, planned.metadata_plain()?) {
            if ep_seq.is_none() {
                journal.will_write(&file.path).await?;
            }
            tern_crypto::put_encrypted(
                volume,
                &file.path,
                file.keys.as_ref(),
                &plain,
                &EncryptOptions::default(),
                PutOptions::from(PutMode::Create),
            )
            .await?;
        }
        Ok(planned.record)
    }

    /// Plan this change on the metadata state `tx` reads: fix the table version (a
    /// rebasing change lands on the current version when every file it removes is still
    /// active there; any other change must find the version it read; else
    /// [`Error::Conflict`]) and make the metadata file, as number `ep_seq`, to write.
    /// Reads only, so a committer may plan outside its locks and plan again under them:
    /// the same state gives the same plan. ([`Change::landing_in`] then
    /// [`Change::plan_landed`] with a copy of the change's added files.)
    pub fn plan_in(&self, tx: &mut MetaTxn<'_>, ep_seq: u64) -> Result<Planned> {
        let landing = self.landing_in(tx)?;
        let added = match self {
            Change::Table(t) => t.added.clone(),
            Change::Repair(r) => r.added.clone(),
            Change::Dictionary { .. } => Vec::new(),
        };
        self.plan_landed(landing.as_ref(), added, ep_seq)
    }

    /// Where this change lands on the metadata state `tx` reads (`None` for a dictionary
    /// change, which lands anywhere), with every check of [`Change::plan_in`]: the table
    /// is there, the version it read is current (or, for a rebasing change, every file it
    /// removes is still active), the columns compose. Reads a row per removed file at
    /// most, never the added ones: a committer checks under its locks that a change still
    /// lands where it was planned without planning it again. Two equal landings of one
    /// change give the same plan.
    pub fn landing_in(&self, tx: &mut MetaTxn<'_>) -> Result<Option<Landing>> {
        match self {
            Change::Dictionary { .. } => Ok(None),
            Change::Repair(r) => r.landing_in(tx).map(Some),
            Change::Table(t) => t.landing_in(tx).map(Some),
        }
    }

    /// The added files of this change, taken out (it is left without them): a committer
    /// that owns the change hands them to [`Change::plan_landed`] instead of copying them
    /// — for a change of 100 000 files, one copy of the list less while it commits.
    pub fn take_added(&mut self) -> Vec<MicroPartitionDpo> {
        match self {
            Change::Table(t) => std::mem::take(&mut t.added),
            Change::Repair(r) => std::mem::take(&mut r.added),
            Change::Dictionary { .. } => Vec::new(),
        }
    }

    /// The plan of this change at `landing` (from [`Change::landing_in`] on the state it
    /// lands on), its added files being `added` — the change's own list, or the list of an
    /// earlier plan's record ([`ChangeRecord::take_added`]): planning sets every field it
    /// depends on, so a plan made from an earlier plan's files is the same plan. Reads no
    /// metadata.
    pub fn plan_landed(
        &self,
        landing: Option<&Landing>,
        added: Vec<MicroPartitionDpo>,
        ep_seq: u64,
    ) -> Result<Planned> {
        match (self, landing) {
            (Change::Dictionary { database, op, .. }, _) => Ok(Planned {
                record: ChangeRecord::Dictionary {
                    database: database.clone(),
                    op: op.clone(),
                },
                metadata_file: None,
            }),
            (Change::Repair(r), _) => Ok(Planned {
                record: r.record(added),
                metadata_file: None,
            }),
            (Change::Table(t), Some(landing)) => t.plan_landed(landing, added, ep_seq),
            (Change::Table(t), None) => Err(Error::Meta(tern_meta::Error::Invalid {
                what: "plan",
                reason: format!("a change of {} planned without its landing", t.table),
            })),
        }
    }
}

/// Where a change of a table lands ([`Change::landing_in`]): its table, the version it
/// rests on and the one it makes, and the table's columns at that version. A repair rests
/// on and makes its version, with no columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    /// The table.
    pub table: TableId,
    /// The version it is made on (the table's current version).
    pub base_version: u64,
    /// The version it makes.
    pub version: u64,
    /// The table's columns at `version`.
    pub columns: Vec<ColumnDef>,
}

impl TableChange {
    fn landing_in(&self, tx: &mut MetaTxn<'_>) -> Result<Landing> {
        let t = self;
        let table = tx
            .get_table(&t.table)?
            .filter(|d| !d.dropped)
            .ok_or_else(|| Error::UnknownTable {
                name: t.table.to_string(),
            })?;
        let current = table.current_version;
        if current != t.base_version && (!t.rebase || t.version.is_some()) {
            return Err(Error::Conflict {
                table: t.table.clone(),
                read: t.base_version,
                found: current,
            });
        }
        if current != t.base_version && !t.removed.is_empty() {
            // A rebased change removes files it read at `base_version`: a writer in between
            // that removed one of them (a delete, an update, another compaction) changed
            // those rows, so landing here would undo or duplicate its change.
            for m in &t.removed {
                let active = tx
                    .get_micro_partition(&t.table, &m.short)?
                    .is_some_and(|m| m.removed_version.is_none());
                if !active {
                    tracing::debug!(table = %t.table, short = %m.short, read = t.base_version, found = current, "a file this change removes was removed meanwhile");
                    return Err(Error::Conflict {
                        table: t.table.clone(),
                        read: t.base_version,
                        found: current,
                    });
                }
            }
        }
        let version = match t.version {
            Some(v) if v <= current => {
                return Err(Error::Conflict {
                    table: t.table.clone(),
                    read: v,
                    found: current,
                });
            }
            Some(v) => v,
            None => current + 1,
        };
        // An append rebased onto a later version takes that version's columns: a column
        // added meanwhile stays (the append's files lack it and read as nulls, which an
        // added column allows). Anything else is a conflict, never a silent undo.
        let columns = if current != t.base_version {
            rebased_columns(
                &t.table,
                t.base_version,
                current,
                t.columns.clone(),
                table.columns,
            )?
        } else {
            t.columns.clone()
        };
        Ok(Landing {
            table: t.table.clone(),
            base_version: current,
            version,
            columns,
        })
    }

    fn plan_landed(
        &self,
        landing: &Landing,
        mut added: Vec<MicroPartitionDpo>,
        ep_seq: u64,
    ) -> Result<Planned> {
        let t = self;
        let Landing {
            base_version: current,
            version,
            ..
        } = *landing;
        let columns = landing.columns.clone();
        let key_ref = crate::mp::key_ref(&t.keys);
        for m in &mut added {
            m.added_version = version;
            // The key this deployment sealed it with (a replicated file was re-encrypted
            // here: the reference it came with names the source's key).
            m.key_ref.clone_from(&key_ref);
        }
        let ep_path = layout::volume::ep(&t.account, &t.database, &t.table, ep_seq);
        let record = ChangeRecord::TableVersion {
            database: t.database.clone(),
            table: t.table.clone(),
            base_version: current,
            version,
            ep_file: EpFileRef {
                seq: ep_seq,
                path: ep_path.to_string(),
            },
            columns,
            added,
            removed: t
                .removed
                .iter()
                .map(|m| RemovedFile {
                    short: m.short.clone(),
                    global_ref: m.global_ref.clone(),
                })
                .collect(),
            ddl: t
                .add_column
                .clone()
                .map(|column| DictionaryChange::AddColumn {
                    table: t.table.clone(),
                    column,
                    version,
                }),
            rows: t.rows,
        };
        Ok(Planned {
            record,
            metadata_file: Some(PlannedFile {
                path: ep_path,
                keys: Arc::clone(&t.keys),
            }),
        })
    }
}

impl RepairChange {
    /// Where this repair lands: at its version, when the table is still there (else
    /// [`Error::Conflict`]). No metadata file is written: the version's file list in the
    /// index is what the repair sets right (as repairs always did).
    fn landing_in(&self, tx: &mut MetaTxn<'_>) -> Result<Landing> {
        let table = tx
            .get_table(&self.table)?
            .filter(|d| !d.dropped)
            .ok_or_else(|| Error::UnknownTable {
                name: self.table.to_string(),
            })?;
        if table.current_version != self.version {
            return Err(Error::Conflict {
                table: self.table.clone(),
                read: self.version,
                found: table.current_version,
            });
        }
        Ok(Landing {
            table: self.table.clone(),
            base_version: self.version,
            version: self.version,
            columns: Vec::new(),
        })
    }

    /// The record of this repair, putting back `added`.
    fn record(&self, mut added: Vec<MicroPartitionDpo>) -> ChangeRecord {
        let key_ref = crate::mp::key_ref(&self.keys);
        for m in &mut added {
            m.added_version = m.added_version.min(self.version);
            m.removed_version = None;
            m.key_ref.clone_from(&key_ref);
        }
        ChangeRecord::Repair {
            database: self.database.clone(),
            table: self.table.clone(),
            version: self.version,
            added,
            removed: self
                .removed
                .iter()
                .map(|m| RemovedFile {
                    short: m.short.clone(),
                    global_ref: m.global_ref.clone(),
                })
                .collect(),
        }
    }
}

/// A change planned by [`Change::plan_in`]: the record to publish and the metadata file
/// to write before it is.
#[derive(Debug)]
pub struct Planned {
    /// What the log record holds of the change.
    pub record: ChangeRecord,
    /// The table version's metadata file (none for dictionary changes).
    pub metadata_file: Option<PlannedFile>,
}

/// A metadata file to write: where, and the keys that seal it. Its content is the
/// record's ([`Planned::metadata_plain`], [`Planned::seal_metadata_file`]): encoded when
/// it is sealed, never held beside the record as plaintext.
pub struct PlannedFile {
    /// Its path in the volume.
    pub path: Path,
    /// The table's file keys.
    pub keys: Arc<TableFileKeys>,
}

impl fmt::Debug for PlannedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Planned {
    /// Encodes the metadata file (of a table version's record) into `out`.
    fn write_metadata_file<W: std::io::Write>(&self, out: W) -> Result<()> {
        match &self.record {
            ChangeRecord::TableVersion {
                table,
                version,
                columns,
                added,
                removed,
                ..
            } => crate::ep::write_metadata_file(
                out,
                table,
                *version,
                columns,
                added,
                removed,
                |r: &RemovedFile| &r.short,
            ),
            ChangeRecord::Dictionary { .. } | ChangeRecord::Repair { .. } => Ok(()),
        }
    }

    /// The metadata file's plaintext, if the change writes one.
    pub fn metadata_plain(&self) -> Result<Option<Vec<u8>>> {
        if self.metadata_file.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.write_metadata_file(&mut out)?;
        Ok(Some(out))
    }

    /// The metadata file as stored, if the change writes one: sealed with the table's keys
    /// as it is encoded (a fresh nonce each call), as the sealed file's chunks in order.
    pub async fn seal_metadata_file(&self) -> Result<Option<Vec<bytes::Bytes>>> {
        let Some(file) = &self.metadata_file else {
            return Ok(None);
        };
        let mut sealing = tern_crypto::stream::sealing_writer(
            file.path.as_ref(),
            file.keys.as_ref(),
            &EncryptOptions::default(),
        )
        .await?;
        self.write_metadata_file(&mut sealing)?;
        Ok(Some(sealing.finish()?))
    }
}

/// The columns of an append read at `base` and landing on `current`: `current_columns` when
/// they only add nullable columns to `read`, else [`Error::SchemaConflict`].
fn rebased_columns(
    table: &TableId,
    base: u64,
    current: u64,
    read: Vec<ColumnDef>,
    current_columns: Vec<ColumnDef>,
) -> Result<Vec<ColumnDef>> {
    if read == current_columns {
        return Ok(read);
    }
    let composes = current_columns.len() > read.len()
        && current_columns[..read.len()] == read[..]
        && current_columns[read.len()..].iter().all(|c| c.nullable);
    if composes {
        Ok(current_columns)
    } else {
        Err(Error::SchemaConflict {
            table: table.clone(),
            read: base,
            found: current,
        })
    }
}

/// Make `record` visible in the metadata transaction `tx`: the table version (compare-and-
/// swap on its base version) or the dictionary change, with the dictionary log entry.
/// Writes nothing when it fails.
pub fn publish(
    tx: &mut MetaTxn<'_>,
    record: &ChangeRecord,
    txn_id: Option<u64>,
    origin: &DeploymentId,
    committed_at_ms: i64,
) -> tern_meta::Result<()> {
    match record {
        ChangeRecord::TableVersion {
            database,
            table,
            base_version,
            version,
            ep_file,
            columns,
            added,
            removed,
            ddl,
            ..
        } => {
            let row = TableVersionDpo {
                table: table.clone(),
                version: *version,
                ep_files: vec![ep_file.clone()],
                committed_at_ms,
                txn_id,
                origin: Some(origin.clone()),
                columns: columns.clone(),
                added: Vec::new(),
                removed: Vec::new(),
            };
            let removed: Vec<ShortName> = removed.iter().map(|r| r.short.clone()).collect();
            tx.commit_table_version(table, *base_version, row, added, &removed)?;
            if let Some(change) = ddl {
                tx.record_dictionary_change(database, committed_at_ms, change.clone())?;
            }
            Ok(())
        }
        ChangeRecord::Repair {
            table,
            version,
            added,
            removed,
            ..
        } => {
            let current = tx.get_table(table)?.map(|t| t.current_version);
            if current != Some(*version) {
                return Err(tern_meta::Error::Invalid {
                    what: "repair",
                    reason: format!(
                        "{table} is at version {current:?}, the repair is of version {version}"
                    ),
                });
            }
            let removed: Vec<ShortName> = removed.iter().map(|r| r.short.clone()).collect();
            tx.repair_micro_partitions(table, added, &removed)
        }
        ChangeRecord::Dictionary { database, op } => {
            let change = match op {
                DictionaryOp::CreateSchema(s) => {
                    tx.create_schema(s)?;
                    DictionaryChange::CreateSchema {
                        name: s.name.clone(),
                    }
                }
                DictionaryOp::DropSchema { name } => {
                    if !tx.remove_schema(database, name)? {
                        return Err(tern_meta::Error::NotFound {
                            what: "schema",
                            name: format!("{database}/{name}"),
                        });
                    }
                    DictionaryChange::DropSchema { name: name.clone() }
                }
                DictionaryOp::CreateTable(t) => {
                    let account =
                        tx.get_database(database)?
                            .map(|d| d.account)
                            .ok_or_else(|| tern_meta::Error::NotFound {
                                what: "database",
                                name: database.to_string(),
                            })?;
                    crate::account_key::check_publishable(tx, &account, t)?;
                    tx.create_table(t)?;
                    DictionaryChange::CreateTable {
                        table: t.id.clone(),
                        schema: t.schema.clone(),
                        name: t.name.clone(),
                        columns: t.columns.clone(),
                    }
                }
                DictionaryOp::DropTable { table } => {
                    tx.drop_table(table)?;
                    DictionaryChange::DropTable {
                        table: table.clone(),
                    }
                }
            };
            tx.record_dictionary_change(database, committed_at_ms, change)
                .map(|_| ())
        }
    }
}

/// Best-effort removal of files a transaction wrote and will not commit (what is left is
/// logged; vacuum and recovery retry).
pub async fn remove_files(volume: &dyn ObjectStore, paths: &[Path]) {
    for path in paths {
        if let Err(e) = volume.delete_idempotent(path).await {
            tracing::warn!(%path, error = %e, "could not remove an uncommitted file");
        }
    }
}

/// Commits in one metadata-store transaction, one commit at a time per committer: no
/// transaction id, no log record, no crash recovery of uncommitted files. For the table
/// format's own tests and benchmarks; a deployment commits through `tern-txn`.
#[derive(Debug, Clone)]
pub struct LocalCommitter {
    inner: Arc<LocalInner>,
}

#[derive(Debug)]
struct LocalInner {
    deployment: DeploymentId,
    meta: MetaStore,
    volume: Arc<dyn ObjectStore>,
    clock: SharedClock,
    serial: tokio::sync::Mutex<()>,
    locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl LocalCommitter {
    /// A committer for the tables of `deployment`.
    pub fn new(
        deployment: DeploymentId,
        meta: MetaStore,
        volume: Arc<dyn ObjectStore>,
        clock: SharedClock,
    ) -> Self {
        Self {
            inner: Arc::new(LocalInner {
                deployment,
                meta,
                volume,
                clock,
                serial: tokio::sync::Mutex::new(()),
                locks: std::sync::Mutex::default(),
            }),
        }
    }
}

struct LocalTxn {
    inner: Arc<LocalInner>,
    files: Vec<Path>,
    locks: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

#[async_trait]
impl Committer for LocalCommitter {
    async fn begin(&self, _account: &AccountId) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(LocalTxn {
            inner: Arc::clone(&self.inner),
            files: Vec::new(),
            locks: Vec::new(),
        }))
    }
}

#[async_trait]
impl FileJournal for LocalTxn {
    async fn will_write(&mut self, path: &Path) -> Result<()> {
        self.files.push(path.clone());
        Ok(())
    }

    async fn new_mp(&mut self, _table: &TableId, prefix: &Path) -> Result<u64> {
        let n = self.inner.meta.next_unique("short_name")?;
        let path = layout::volume::mp_in(prefix, &layout::volume::numbered_mp(n));
        self.will_write(&path).await?;
        Ok(n)
    }
}

#[async_trait]
impl Transaction for LocalTxn {
    async fn lock(&mut self, names: &[String]) -> Result<()> {
        let mut names = names.to_vec();
        names.sort();
        for name in names {
            let lock = {
                let mut all = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
                Arc::clone(all.entry(name).or_default())
            };
            self.locks.push(lock.lock_owned().await);
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, changes: Vec<Change>) -> Result<Committed> {
        let c = Arc::clone(&self.inner);
        let _serial = c.serial.lock().await;
        let mut records = Vec::with_capacity(changes.len());
        for change in changes {
            match change.prepare(&c.meta, c.volume.as_ref(), &mut *self).await {
                Ok(r) => records.push(r),
                Err(e) => {
                    remove_files(c.volume.as_ref(), &self.files).await;
                    return Err(e);
                }
            }
        }
        let now = c.clock.now_millis();
        let published = c.meta.write(|tx| {
            for r in &records {
                publish(tx, r, None, &c.deployment, now)?;
            }
            Ok(())
        });
        if let Err(e) = published {
            remove_files(c.volume.as_ref(), &self.files).await;
            return Err(e.into());
        }
        Ok(Committed {
            txn_id: None,
            records,
        })
    }

    async fn abort(self: Box<Self>) {
        remove_files(self.inner.volume.as_ref(), &self.files).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_meta::ColumnType;

    fn col(name: &str, nullable: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty: ColumnType::Int64,
            nullable,
        }
    }

    #[test]
    fn an_append_takes_added_nullable_columns_and_conflicts_on_anything_else() {
        let t = TableId::new("t1").unwrap();
        let read = vec![col("id", false)];
        let wider = vec![col("id", false), col("extra", true)];
        assert_eq!(
            rebased_columns(&t, 1, 2, read.clone(), read.clone()).unwrap(),
            read
        );
        assert_eq!(
            rebased_columns(&t, 1, 2, read.clone(), wider.clone()).unwrap(),
            wider
        );
        for other in [
            vec![col("other", false)],
            vec![col("id", true), col("extra", true)],
            vec![col("id", false), col("required", false)],
            Vec::new(),
        ] {
            let e = rebased_columns(&t, 1, 2, read.clone(), other.clone()).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::SchemaConflict {
                        read: 1,
                        found: 2,
                        ..
                    }
                ) && e.is_conflict(),
                "{other:?}: {e}"
            );
        }
    }
}
