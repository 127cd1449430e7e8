//! Tables of one deployment: DDL, DML and scans over encrypted micro-partitions.
//!
//! Every change makes one new table version:
//!
//! ```text
//!   write new micro-partitions (PutMode::Create) ─▶ write the commit's metadata file
//!     ─▶ metadata-store transaction: compare-and-swap current_version N → N+1,
//!        add/remove micro-partition entries, record the version
//! ```
//!
//! Files are written before anything is committed, so a version is never visible without
//! its files. Every statement runs in a transaction of the [`Committer`] the tables were
//! built with (in a deployment, `tern-txn`'s protocol with transaction ids, table locks and
//! log records, DESIGN.md §7): each file is journaled before it is written, and a
//! transaction that does not commit has its files removed. Statements that change what
//! they read (delete, update, merge, add column) lock their table before reading, so they
//! never commit on a version they did not read; inserts write their files unlocked and
//! lock only to commit, landing on whatever version is current then. Lock waits end with
//! an error after the committer's timeout.
//!
//! `delete`, `update` and `merge` rewrite only the micro-partitions whose statistics can
//! match, and only when a row really changes; the rest are untouched.
//!
//! Vacuum never deletes what a reader needs: a scan pins the version it reads for as long
//! as it reads ([`Tables::pin`], [`crate::pins`]), vacuum keeps every version from the
//! oldest pin on, and the metadata files that rebuild a retained version from the volume
//! stay until no retained version needs them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::kernels::zip::zip;
use arrow::row::{RowConverter, SortField};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use tern_clock::SharedClock;
use tern_crypto::{DataKey, KeyProvider, SystemRandom, TableFileKeys};
use tern_meta::{
    ColumnDef, ColumnStats, MetaStore, MicroPartitionDpo, Scalar, SchemaDpo, TableDpo,
};
use tern_storage::layout::{
    self, AccountId, DatabaseId, DeploymentId, GlobalFileRef, ShortName, TableId,
};
use tern_storage::{Path, StoreExt};

use crate::account_key::{AccountKeys, Rotation};
use crate::commit::{
    Change, ChangeRecord, Committer, DictionaryOp, FileJournal, TableChange, Transaction,
};
use crate::ep::MetadataFile;
use crate::error::{Error, Result};
use crate::mp::{self, WriteOptions};
use crate::pins::{PinnedVersion, Pins};
use crate::predicate::{Predicate, coerce};
use crate::schema::{arrow_schema, arrow_type, check_columns, conform};

/// Settings of a deployment's tables.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// How micro-partitions are written.
    pub write: WriteOptions,
    /// How long past versions stay readable when a table sets no retention (default 24 h).
    pub default_retention_ms: u64,
    /// Micro-partitions read at once by a scan.
    pub read_concurrency: usize,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            write: WriteOptions::default(),
            default_retention_ms: 24 * 3600 * 1000,
            read_concurrency: 4,
        }
    }
}

/// The outcome of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitInfo {
    /// The table's version after the change (unchanged when nothing changed).
    pub version: u64,
    /// Whether a new version was made.
    pub committed: bool,
    /// Micro-partitions written.
    pub files_added: usize,
    /// Micro-partitions replaced or dropped.
    pub files_removed: usize,
    /// Rows inserted, deleted or updated (by the statement's meaning).
    pub rows_affected: u64,
    /// The transaction that made the version, when the committer issues ids.
    pub txn_id: Option<u64>,
}

impl CommitInfo {
    /// What a committed table version record says of its statement (`None` for a
    /// dictionary change).
    pub fn of_record(record: &ChangeRecord, txn_id: Option<u64>) -> Option<Self> {
        match record {
            ChangeRecord::TableVersion {
                version,
                added,
                removed,
                rows,
                ..
            } => Some(CommitInfo {
                version: *version,
                committed: true,
                files_added: added.len(),
                files_removed: removed.len(),
                rows_affected: *rows,
                txn_id,
            }),
            ChangeRecord::Dictionary { .. } | ChangeRecord::Repair { .. } => None,
        }
    }
}

/// One of `of` disjoint parts of a version's micro-partitions (file `i` of the version's
/// list is in part `i % of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    index: usize,
    of: usize,
}

impl Part {
    /// Every file.
    pub const WHOLE: Part = Part { index: 0, of: 1 };

    /// Part `index` of `of`; `None` unless `index < of`.
    pub fn new(index: usize, of: usize) -> Option<Part> {
        (index < of).then_some(Part { index, of })
    }
}

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanRequest {
    /// A retained version (time travel); the current one when `None`.
    pub version: Option<u64>,
    /// Columns to return (all when `None`).
    pub columns: Option<Vec<String>>,
    /// Rows to return (all when `None`).
    pub predicate: Option<Predicate>,
}

/// A scan's rows and what it cost.
#[derive(Debug, Clone)]
pub struct ScanResult {
    /// The version scanned.
    pub version: u64,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// Micro-partitions at that version.
    pub files_total: usize,
    /// Micro-partitions opened (the rest were pruned by their statistics).
    pub files_read: usize,
    /// Row groups skipped inside the files read.
    pub row_groups_skipped: usize,
}

impl ScanResult {
    /// Total rows returned.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What a streamed scan has done so far.
#[derive(Debug, Default)]
struct ScanProgress {
    files_read: AtomicUsize,
    row_groups_skipped: AtomicUsize,
}

/// A scan's rows as they are read ([`Tables::scan_stream`]).
pub struct ScanStream {
    /// The version scanned (pinned until this is dropped).
    pub version: u64,
    /// The columns of the rows, in order.
    pub columns: Vec<ColumnDef>,
    /// Micro-partitions at that version.
    pub files_total: usize,
    /// Micro-partitions that will be opened at most (the rest were pruned by their
    /// statistics, or hold no row a `limit` needs).
    pub files_planned: usize,
    /// Rows the scan matches, when known without reading (a scan without predicate: the
    /// metadata store's row counts).
    pub rows_total: Option<u64>,
    /// The rows, batch by batch; an error ends the stream.
    pub batches: futures::stream::BoxStream<'static, Result<RecordBatch>>,
    progress: Arc<ScanProgress>,
}

impl std::fmt::Debug for ScanStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanStream")
            .field("version", &self.version)
            .field("files_total", &self.files_total)
            .field("files_planned", &self.files_planned)
            .finish_non_exhaustive()
    }
}

impl ScanStream {
    /// Micro-partitions opened so far.
    pub fn files_read(&self) -> usize {
        self.progress.files_read.load(Ordering::Relaxed)
    }

    /// Row groups skipped so far inside the files opened.
    pub fn row_groups_skipped(&self) -> usize {
        self.progress.row_groups_skipped.load(Ordering::Relaxed)
    }

    /// A handle that reads [`ScanStream::files_read`] after `batches` has been moved out.
    pub fn files_read_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let progress = Arc::clone(&self.progress);
        move || progress.files_read.load(Ordering::Relaxed)
    }
}

/// `batches` cut after `limit` rows (all when `None`); the stream is not polled again
/// once the limit is reached, so nothing more is read. `pin` lives as long as the stream.
fn limited(
    batches: futures::stream::BoxStream<'static, Result<RecordBatch>>,
    limit: Option<usize>,
    pin: PinnedVersion,
) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
    let left = limit.unwrap_or(usize::MAX);
    futures::stream::unfold(
        (batches, left, pin),
        |(mut batches, left, pin)| async move {
            if left == 0 {
                return None;
            }
            match batches.next().await? {
                Ok(b) => {
                    let n = b.num_rows().min(left);
                    let b = if n < b.num_rows() { b.slice(0, n) } else { b };
                    Some((Ok(b), (batches, left - n, pin)))
                }
                // An error ends the stream.
                Err(e) => Some((Err(e), (batches, 0, pin))),
            }
        },
    )
    .boxed()
}

/// An aggregate function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    /// `count(*)`.
    Count,
    /// `sum(column)` (int64, float64, decimal).
    Sum(String),
    /// `min(column)`.
    Min(String),
    /// `max(column)`.
    Max(String),
}

/// One table's identity and keys, resolved for an operation.
pub(crate) struct Ctx {
    pub(crate) table: TableDpo,
    pub(crate) account: AccountId,
    pub(crate) keys: Arc<TableFileKeys>,
}

/// The tables of one deployment: its volume, metadata store and key chain.
pub struct Tables {
    deployment: DeploymentId,
    volume: Arc<dyn ObjectStore>,
    meta: MetaStore,
    account_keys: AccountKeys,
    clock: SharedClock,
    options: TableOptions,
    committer: Arc<dyn Committer>,
    /// Unwrapped table keys, with the account whose key chain they came from.
    tmks: Mutex<HashMap<TableId, (AccountId, Arc<DataKey>)>>,
    pins: Pins,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("deployment", &self.deployment)
            .field("volume", &self.volume)
            .finish_non_exhaustive()
    }
}

fn arrow_err(context: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |source| Error::Arrow { context, source }
}

impl Tables {
    /// The tables of `deployment`, stored in `volume`, indexed in `meta`, keyed by
    /// `provider`, committed by `committer`.
    pub fn new(
        deployment: DeploymentId,
        volume: Arc<dyn ObjectStore>,
        meta: MetaStore,
        provider: Arc<dyn KeyProvider>,
        clock: SharedClock,
        options: TableOptions,
        committer: Arc<dyn Committer>,
    ) -> Self {
        let account_keys = AccountKeys::new(
            meta.clone(),
            provider,
            Arc::clone(&clock),
            SystemRandom::shared(),
        );
        Self {
            deployment,
            volume,
            meta,
            account_keys,
            clock,
            options,
            committer,
            tmks: Mutex::new(HashMap::new()),
            pins: Pins::default(),
        }
    }

    /// The account master keys (DESIGN.md §4): made, rotated, destroyed, migrated.
    pub fn account_keys(&self) -> &AccountKeys {
        &self.account_keys
    }

    /// Rotates `account`'s master key: every table key is re-wrapped under a new version
    /// and the older versions are retired; no data file is rewritten.
    pub async fn rotate_account_key(&self, account: &AccountId) -> Result<Rotation> {
        self.account_keys.rotate(account).await
    }

    /// Drops `account` and destroys its keys (crypto-shredding, [`crate::account_key`]):
    /// its databases are dropped, every version of its master key is deleted and the
    /// account is removed, in one metadata transaction, together with what `also` removes
    /// (the commit protocol's key of the account's log). Files the account left in the
    /// volume cannot be decrypted afterwards. Refused while one of its databases is a
    /// member of a replication group (drop the replica or disable replication first).
    pub async fn drop_account(
        &self,
        account: &AccountId,
        also: &(dyn Fn(&mut tern_meta::MetaTxn<'_>) -> tern_meta::Result<()> + Sync),
    ) -> Result<usize> {
        // A store still wrapping table keys under the master key would keep them readable.
        self.account_keys.migrate().await?;
        let now = self.clock.now_millis();
        let destroyed = self.meta.write(|tx| {
            if tx.get_account(account)?.is_none() {
                return Err(tern_meta::Error::NotFound {
                    what: "account",
                    name: account.to_string(),
                });
            }
            for db in tx.list_databases(account)? {
                if db.dropped {
                    continue;
                }
                if db.role != tern_meta::DatabaseRole::Local {
                    return Err(tern_meta::Error::InUse {
                        what: "account",
                        name: account.to_string(),
                        by: format!(
                            "database {} is a replication {:?}: drop the replica or disable replication first",
                            db.name, db.role
                        ),
                    });
                }
                tx.drop_database(&db.id)?;
            }
            let destroyed = crate::account_key::destroy_in(tx, account, now)?;
            also(tx)?;
            tx.remove_account(account)?;
            Ok(destroyed)
        })?;
        self.account_keys.forget(account);
        self.lock_tmks().retain(|_, (a, _)| a != account);
        tracing::info!(%account, key_versions = destroyed, "account dropped; its keys are destroyed");
        Ok(destroyed)
    }

    /// The key of `table`'s files (dropped tables included), unwrapped through its key
    /// chain now, bypassing every cache: what anyone holding the metadata store and the
    /// master key can still open.
    pub async fn file_keys_uncached(&self, table: &TableDpo) -> Result<TableFileKeys> {
        // The database row outlives its drop (and its account's): it still names the owner.
        let account = self.meta.read(|tx| {
            tx.get_database(&table.database)?
                .map(|d| d.account)
                .ok_or_else(|| tern_meta::Error::NotFound {
                    what: "database",
                    name: table.database.to_string(),
                })
        })?;
        let fresh = AccountKeys::new(
            self.meta.clone(),
            Arc::clone(self.account_keys.provider()),
            Arc::clone(&self.clock),
            SystemRandom::shared(),
        );
        Ok(TableFileKeys::new(Arc::new(
            fresh.table_key(&account, table).await?,
        )))
    }

    /// The metadata store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// How micro-partitions are written.
    pub fn write_options(&self) -> &WriteOptions {
        &self.options.write
    }

    /// The volume.
    pub fn volume(&self) -> &Arc<dyn ObjectStore> {
        &self.volume
    }

    // ---- DDL ----

    /// Create schema `name` in database `db` (idempotent).
    pub async fn create_schema(&self, db: &DatabaseId, name: &str) -> Result<()> {
        tern_storage::layout::check_identifier("schema name", name)?;
        let account = self.account_of(db)?;
        if self.meta.read(|tx| tx.get_schema(db, name))?.is_some() {
            return Ok(());
        }
        let op = DictionaryOp::CreateSchema(SchemaDpo {
            database: db.clone(),
            name: name.to_string(),
            created_at_ms: self.clock.now_millis(),
        });
        match self.commit_dictionary(account, db, op).await {
            // Created meanwhile by another statement: what was asked for exists.
            Err(Error::Meta(tern_meta::Error::AlreadyExists { .. })) => Ok(()),
            other => other,
        }
    }

    /// Drop schema `name` of database `db` (it must hold no live table).
    pub async fn drop_schema(&self, db: &DatabaseId, name: &str) -> Result<()> {
        let account = self.account_of(db)?;
        let op = DictionaryOp::DropSchema {
            name: name.to_string(),
        };
        self.commit_dictionary(account, db, op).await
    }

    /// Create a table with its own master key; returns its id.
    pub async fn create_table(
        &self,
        db: &DatabaseId,
        schema: &str,
        name: &str,
        columns: Vec<ColumnDef>,
    ) -> Result<TableId> {
        tern_storage::layout::check_identifier("table name", name)?;
        check_columns(&columns)?;
        let account = self.account_of(db)?;
        let seq = self.meta.write(|tx| tx.next_sequence("table"))?;
        let id = TableId::new(format!("t{seq}"))?;
        let table = self
            .new_table(&account, db, id.clone(), schema, name, columns)
            .await?;
        self.commit_dictionary(account, db, DictionaryOp::CreateTable(table))
            .await?;
        Ok(id)
    }

    /// The definition of a new, empty table `id` with its own freshly generated table
    /// master key (wrapped by `account`'s master key, made now if the account has none
    /// yet; the key is cached here). Nothing is
    /// committed: `create table` and replication commit it as
    /// [`DictionaryOp::CreateTable`].
    pub async fn new_table(
        &self,
        account: &AccountId,
        db: &DatabaseId,
        id: TableId,
        schema: &str,
        name: &str,
        columns: Vec<ColumnDef>,
    ) -> Result<TableDpo> {
        check_columns(&columns)?;
        let (tmk, master_key_ref) = self.account_keys.new_table_key(account, &id).await?;
        self.lock_tmks()
            .insert(id.clone(), (account.clone(), Arc::new(tmk)));
        Ok(TableDpo {
            id,
            database: db.clone(),
            schema: schema.to_string(),
            name: name.to_string(),
            columns,
            master_key_ref,
            current_version: 0,
            retention_ms: None,
            created_at_ms: self.clock.now_millis(),
            dropped: false,
        })
    }

    /// The committer statements commit through (replication commits its changes there
    /// too).
    pub fn committer(&self) -> &Arc<dyn Committer> {
        &self.committer
    }

    /// This deployment.
    pub fn deployment(&self) -> &DeploymentId {
        &self.deployment
    }

    /// Find a live table by name.
    pub fn find_table(&self, db: &DatabaseId, schema: &str, name: &str) -> Result<TableDpo> {
        self.meta
            .read(|tx| tx.find_table(db, schema, name))?
            .ok_or_else(|| Error::UnknownTable {
                name: format!("{db}.{schema}.{name}"),
            })
    }

    /// A live table by id.
    pub fn table(&self, id: &TableId) -> Result<TableDpo> {
        self.meta
            .read(|tx| tx.get_table(id))?
            .filter(|t| !t.dropped)
            .ok_or_else(|| Error::UnknownTable {
                name: id.to_string(),
            })
    }

    /// Drop a table (its files go when vacuum or retention says so).
    pub async fn drop_table(&self, id: &TableId) -> Result<()> {
        let t = self.table(id)?;
        let account = self.account_of(&t.database)?;
        let op = DictionaryOp::DropTable { table: id.clone() };
        self.commit_dictionary(account, &t.database, op).await
    }

    /// The DDL of database `db` numbered after `after_seq`, in order.
    pub fn dictionary_changes(
        &self,
        db: &DatabaseId,
        after_seq: u64,
    ) -> Result<Vec<tern_meta::DictionaryChangeDpo>> {
        Ok(self.meta.read(|tx| tx.dictionary_changes(db, after_seq))?)
    }

    /// Add a nullable column: a new version with no file changes (older files read the
    /// column as nulls).
    pub async fn add_column(&self, table: &TableId, column: ColumnDef) -> Result<CommitInfo> {
        if !column.nullable {
            return Err(Error::InvalidSchema {
                reason: format!("added column {:?} must be nullable", column.name),
            });
        }
        let (txn, ctx) = self.locked(table).await?;
        let mut columns = ctx.table.columns.clone();
        columns.push(column.clone());
        if let Err(e) = check_columns(&columns) {
            txn.abort().await;
            return Err(e);
        }
        let mut change = self.change(&ctx, Vec::new(), Vec::new(), 0);
        change.columns = columns;
        change.add_column = Some(column);
        self.commit(txn, change).await
    }

    // ---- DML ----

    /// Insert rows (columns matched by name; missing nullable columns become nulls).
    pub async fn insert(&self, table: &TableId, batches: &[RecordBatch]) -> Result<CommitInfo> {
        let ctx = self.ctx(table).await?;
        // Checked before any file is written.
        for b in batches {
            conform(b, &ctx.table.columns)?;
        }
        let batches = futures::stream::iter(batches.iter().cloned().map(Ok));
        self.insert_ctx(ctx, batches).await
    }

    /// Insert rows as they come (a load): each batch is checked and encoded as it
    /// arrives and files are stored as they fill, so memory holds a file or two whatever
    /// the input's size; the rows become visible in one commit once the stream ends. An
    /// error from the stream (bad input half way) or from a batch ends the statement
    /// with that error: nothing is committed and the files written so far are removed
    /// (they were journaled in the statement's transaction, whose abort — or recovery,
    /// after a crash — removes them).
    pub async fn insert_stream<S>(&self, table: &TableId, batches: S) -> Result<CommitInfo>
    where
        S: futures::Stream<Item = Result<RecordBatch>> + Send,
    {
        let ctx = self.ctx(table).await?;
        self.insert_ctx(ctx, batches).await
    }

    async fn insert_ctx<S>(&self, ctx: Ctx, batches: S) -> Result<CommitInfo>
    where
        S: futures::Stream<Item = Result<RecordBatch>> + Send,
    {
        self.account_of(&ctx.table.database)?;
        let mut batches = std::pin::pin!(batches);
        let mut txn = self.committer.begin(&ctx.account).await?;
        let mut w = match self.file_writer(&ctx) {
            Ok(w) => w,
            Err(e) => {
                txn.abort().await;
                return Err(e);
            }
        };
        let mut result = Ok(());
        while let Some(batch) = batches.next().await {
            result = match batch.and_then(|b| conform(&b, &ctx.table.columns)) {
                Ok(b) => w.push(self, &ctx, &b, txn.as_mut()).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                break;
            }
        }
        let rows = w.rows();
        let added = match w.finish(self, &ctx, txn.as_mut(), result).await {
            Ok(a) => a,
            Err(e) => {
                txn.abort().await;
                return Err(e);
            }
        };
        if rows == 0 {
            txn.abort().await;
            return Ok(CommitInfo {
                version: ctx.table.current_version,
                ..Default::default()
            });
        }
        let mut change = self.change(&ctx, added, Vec::new(), rows);
        // An append does not depend on what it read: it lands on the version current at
        // commit, under the table lock the commit takes.
        change.rebase = true;
        self.commit(txn, change).await
    }

    /// Delete the rows matching `predicate`.
    pub async fn delete(&self, table: &TableId, predicate: &Predicate) -> Result<CommitInfo> {
        self.rewrite(table, predicate, |batch, matched| {
            let keep = arrow::compute::not(matched).map_err(arrow_err("delete"))?;
            let kept =
                arrow::compute::filter_record_batch(batch, &keep).map_err(arrow_err("delete"))?;
            Ok(kept)
        })
        .await
    }

    /// Set columns to values (`None` = null) in the rows matching `predicate`.
    pub async fn update(
        &self,
        table: &TableId,
        set: &[(String, Option<Scalar>)],
        predicate: &Predicate,
    ) -> Result<CommitInfo> {
        let columns = self.table(table)?.columns;
        let mut assignments = Vec::with_capacity(set.len());
        for (name, value) in set {
            let def =
                columns
                    .iter()
                    .find(|c| &c.name == name)
                    .ok_or_else(|| Error::UnknownColumn {
                        column: name.clone(),
                    })?;
            let value = match value {
                None if !def.nullable => {
                    return Err(Error::NullInNonNullable {
                        column: name.clone(),
                        count: 1,
                    });
                }
                None => None,
                Some(v) => Some(coerce(v, &def.ty).ok_or_else(|| Error::TypeMismatch {
                    column: name.clone(),
                    expected: def.ty.to_string(),
                    found: format!("{v:?}"),
                })?),
            };
            assignments.push((name.clone(), value));
        }
        self.rewrite(table, predicate, move |batch, matched| {
            let schema = batch.schema();
            let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
            for (name, value) in &assignments {
                let i = schema.index_of(name).map_err(arrow_err("update"))?;
                let ty = schema.field(i).data_type().clone();
                let literal: ArrayRef = match value {
                    None => new_null_array(&ty, 1),
                    Some(v) => crate::predicate::literal_array(v, &ty)?,
                };
                let new = zip(matched, &arrow::array::Scalar::new(literal), &arrays[i])
                    .map_err(arrow_err("update"))?;
                arrays[i] = new;
            }
            RecordBatch::try_new(schema, arrays).map_err(arrow_err("update"))
        })
        .await
    }

    /// Upsert: rows of `source` replace the rows with the same `keys` values, the others
    /// are inserted. A key present twice in `source` is an error.
    pub async fn merge(
        &self,
        table: &TableId,
        source: &[RecordBatch],
        keys: &[&str],
    ) -> Result<CommitInfo> {
        let (mut txn, ctx) = self.locked(table).await?;
        let staged = self.merge_locked(&ctx, txn.as_mut(), source, keys).await;
        self.commit_staged(txn, &ctx, staged).await
    }

    async fn merge_locked(
        &self,
        ctx: &Ctx,
        txn: &mut dyn Transaction,
        source: &[RecordBatch],
        keys: &[&str],
    ) -> Result<Option<TableChange>> {
        let columns = &ctx.table.columns;
        if keys.is_empty() {
            return Err(Error::InvalidSchema {
                reason: "merge needs at least one key column".into(),
            });
        }
        for k in keys {
            if !columns.iter().any(|c| c.name == *k) {
                return Err(Error::UnknownColumn {
                    column: (*k).to_string(),
                });
            }
        }
        let source = source
            .iter()
            .map(|b| conform(b, columns))
            .collect::<Result<Vec<_>>>()?;
        let source_rows: u64 = source.iter().map(|b| b.num_rows() as u64).sum();
        if source_rows == 0 {
            return Ok(None);
        }
        let converter = key_converter(columns, keys)?;
        let mut source_keys = HashSet::new();
        let mut key_stats: Option<ColumnStats> = None;
        for b in &source {
            let rows = converter
                .convert_columns(&key_arrays(b, keys)?)
                .map_err(arrow_err("merge keys"))?;
            for (i, row) in rows.iter().enumerate() {
                if !source_keys.insert(row.owned()) {
                    return Err(Error::DuplicateMergeKey {
                        key: render_key(b, keys, i),
                    });
                }
            }
            let s = crate::schema::batch_stats(b, columns)
                .into_iter()
                .find(|s| s.column == keys[0]);
            key_stats = match (key_stats, s) {
                (Some(a), Some(b)) => Some(crate::schema::merge_stats(&a, &b)),
                (a, b) => a.or(b),
            };
        }
        // Only files whose first-key range overlaps the source's can hold a replaced row.
        let prune = match key_stats
            .as_ref()
            .and_then(|s| Some((s.min.clone()?, s.max.clone()?)))
        {
            Some((low, high)) => Predicate::Between {
                column: keys[0].to_string(),
                low,
                high,
            },
            None => Predicate::True,
        };
        let mut removed = Vec::new();
        let mut survivors = Vec::new();
        let mut replaced = 0u64;
        for mp in self.candidates(ctx, ctx.table.current_version, &prune)? {
            let batches = self.read_file(ctx, &mp, &Predicate::True, None).await?;
            let mut kept_batches = Vec::new();
            let mut changed = false;
            for b in batches {
                let rows = converter
                    .convert_columns(&key_arrays(&b, keys)?)
                    .map_err(arrow_err("merge keys"))?;
                let keep: BooleanArray = rows
                    .iter()
                    .map(|r| Some(!source_keys.contains(&r.owned())))
                    .collect();
                let dropped = b.num_rows() - keep.true_count();
                if dropped > 0 {
                    changed = true;
                    replaced += dropped as u64;
                }
                kept_batches.push(
                    arrow::compute::filter_record_batch(&b, &keep).map_err(arrow_err("merge"))?,
                );
            }
            if changed {
                removed.push(mp);
                survivors.extend(kept_batches.into_iter().filter(|b| b.num_rows() > 0));
            }
        }
        survivors.extend(source);
        tracing::debug!(table = %ctx.table.id, replaced, inserted = source_rows - replaced, "merge");
        let added = self.write_files(ctx, &survivors, txn).await?;
        Ok(Some(self.change(ctx, added, removed, source_rows)))
    }

    /// Stage a replacement of every row of `table` by `rows` (a statement that computes
    /// the table's new content, such as SQL's `MERGE`): under the table's lock, the files
    /// active at `version` are to be removed and `rows` are written into new files as they
    /// come. Nothing is visible until [`Tables::commit_rewrite`]; [`StagedRewrite::abort`]
    /// (or an error from `rows`, which ends staging with that error) removes the new files.
    ///
    /// `version` is the version `rows` were computed from (pinned by the caller):
    /// [`Error::Conflict`] when the table has moved on since, so that no change made
    /// meanwhile is lost. A secondary replica is refused ([`Error::ReadOnlyReplica`]).
    pub async fn stage_rewrite<S>(
        &self,
        table: &TableId,
        version: u64,
        rows: S,
    ) -> Result<StagedRewrite>
    where
        S: futures::Stream<Item = Result<RecordBatch>> + Send,
    {
        // The lock's holder is refused on a secondary replica.
        let (mut txn, ctx) = self.locked(table).await?;
        if ctx.table.current_version != version {
            txn.abort().await;
            return Err(Error::Conflict {
                table: table.clone(),
                read: version,
                found: ctx.table.current_version,
            });
        }
        let removed = match self
            .meta
            .read(|tx| tx.active_micro_partitions(table, version))
        {
            Ok(r) => r,
            Err(e) => {
                txn.abort().await;
                return Err(e.into());
            }
        };
        let mut w = match self.file_writer(&ctx) {
            Ok(w) => w,
            Err(e) => {
                txn.abort().await;
                return Err(e);
            }
        };
        let mut rows = std::pin::pin!(rows);
        let mut result = Ok(());
        while let Some(batch) = rows.next().await {
            result = match batch.and_then(|b| conform(&b, &ctx.table.columns)) {
                Ok(b) if b.num_rows() == 0 => Ok(()),
                Ok(b) => w.push(self, &ctx, &b, txn.as_mut()).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                break;
            }
        }
        let added = match w.finish(self, &ctx, txn.as_mut(), result).await {
            Ok(a) => a,
            Err(e) => {
                txn.abort().await;
                return Err(e);
            }
        };
        let change = self.change(&ctx, added, removed, 0);
        Ok(StagedRewrite { txn, change })
    }

    /// Commit a staged rewrite as one new version; `rows_affected` is what the statement
    /// reports (rows inserted, updated and deleted).
    pub async fn commit_rewrite(
        &self,
        staged: StagedRewrite,
        rows_affected: u64,
    ) -> Result<CommitInfo> {
        let StagedRewrite { txn, mut change } = staged;
        change.rows = rows_affected;
        self.commit(txn, change).await
    }

    /// Delete/update share this: files whose statistics may match are read; a file where
    /// some row matches is replaced by `apply(batch, matched)`'s output.
    async fn rewrite<F>(
        &self,
        table: &TableId,
        predicate: &Predicate,
        apply: F,
    ) -> Result<CommitInfo>
    where
        F: Fn(&RecordBatch, &BooleanArray) -> Result<RecordBatch>,
    {
        let (mut txn, ctx) = self.locked(table).await?;
        let staged = self
            .rewrite_locked(&ctx, txn.as_mut(), predicate, apply)
            .await;
        self.commit_staged(txn, &ctx, staged).await
    }

    /// The change of a delete/update, `None` when no row matches.
    ///
    /// Streams: a candidate file is first read for the predicate's columns only, to
    /// count its matching rows; a file with a match is then read again batch by batch,
    /// each batch changed by `apply` and pushed into the new files as it comes, so memory
    /// holds a row group and a file being encoded, never a file's (or the table's) rows.
    async fn rewrite_locked<F>(
        &self,
        ctx: &Ctx,
        txn: &mut dyn Transaction,
        predicate: &Predicate,
        apply: F,
    ) -> Result<Option<TableChange>>
    where
        F: Fn(&RecordBatch, &BooleanArray) -> Result<RecordBatch>,
    {
        let predicate = predicate.bind(&ctx.table.columns)?;
        let mut removed = Vec::new();
        let mut affected = 0u64;
        let mut w = self.file_writer(ctx)?;
        let mut result = Ok(());
        for mp in self.candidates(ctx, ctx.table.current_version, &predicate)? {
            let hits = match self.matching_rows(ctx, &mp, &predicate).await {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            result = self
                .rewrite_file(ctx, &mp, &predicate, &apply, &mut w, txn)
                .await;
            if result.is_err() {
                break;
            }
            affected += hits;
            removed.push(mp);
        }
        let added = w.finish(self, ctx, txn, result).await?;
        if removed.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.change(ctx, added, removed, affected)))
    }

    /// Rows of micro-partition `m` matching `predicate` (unknown counts as no match),
    /// reading only the predicate's columns.
    async fn matching_rows(
        &self,
        ctx: &Ctx,
        m: &MicroPartitionDpo,
        predicate: &Predicate,
    ) -> Result<u64> {
        if *predicate == Predicate::True {
            return Ok(m.rows);
        }
        let (mut batches, _) = mp::read_stream(
            Arc::clone(&self.volume),
            &Path::from(m.path.as_str()),
            ctx.keys.as_ref(),
            &ctx.table.columns,
            Some(&[]),
            predicate,
        )
        .await?;
        let mut n = 0u64;
        while let Some(b) = batches.next().await {
            n += b?.num_rows() as u64;
        }
        Ok(n)
    }

    /// Push `apply`'s output for every batch of `m` into `w`.
    async fn rewrite_file<F>(
        &self,
        ctx: &Ctx,
        m: &MicroPartitionDpo,
        predicate: &Predicate,
        apply: &F,
        w: &mut FileWriter,
        journal: &mut dyn FileJournal,
    ) -> Result<()>
    where
        F: Fn(&RecordBatch, &BooleanArray) -> Result<RecordBatch>,
    {
        let mut batches = self.read_file_stream(ctx, m).await?;
        while let Some(b) = batches.next().await {
            let b = b?;
            // Unknown (null) counts as not matched.
            let matched: BooleanArray = predicate
                .evaluate(&b)?
                .iter()
                .map(|v| Some(v.unwrap_or(false)))
                .collect();
            let out = apply(&b, &matched)?;
            if out.num_rows() > 0 {
                w.push(self, ctx, &out, journal).await?;
            }
        }
        Ok(())
    }

    // ---- reads ----

    /// Scan a table (see [`ScanRequest`]), every row collected. For large answers use
    /// [`Tables::scan_stream`], which holds a row group at a time instead.
    pub async fn scan(&self, table: &TableId, request: &ScanRequest) -> Result<ScanResult> {
        let scan = self.scan_stream(table, request, None).await?;
        let (version, files_total) = (scan.version, scan.files_total);
        let progress = Arc::clone(&scan.progress);
        let batches: Vec<RecordBatch> = scan.batches.try_collect().await?;
        Ok(ScanResult {
            version,
            batches,
            files_total,
            files_read: progress.files_read.load(Ordering::Relaxed),
            row_groups_skipped: progress.row_groups_skipped.load(Ordering::Relaxed),
        })
    }

    /// Scan a table, its rows streamed: micro-partitions are opened
    /// `read_concurrency` at a time (header and footer), and their rows decoded one row
    /// group at a time as the stream is polled, so memory does not grow with the answer
    /// and a consumer that reads slowly slows the reading down.
    ///
    /// `limit` is pushed down: the stream ends after `limit` rows, and no file is opened
    /// once they are produced. Without a predicate the files holding the first `limit`
    /// rows are known from the metadata store's row counts, so only those are opened.
    ///
    /// The version stays pinned (vacuum keeps it) until the stream is dropped.
    pub async fn scan_stream(
        &self,
        table: &TableId,
        request: &ScanRequest,
        limit: Option<usize>,
    ) -> Result<ScanStream> {
        self.scan_stream_part(table, request, limit, Part::WHOLE)
            .await
    }

    /// [`Tables::scan_stream`] over one part of the version's micro-partitions: the
    /// parts of one `of` are disjoint and together hold every file (a query engine scans
    /// them on separate cores). `files_total` and the counters are the part's.
    pub async fn scan_stream_part(
        &self,
        table: &TableId,
        request: &ScanRequest,
        limit: Option<usize>,
        part: Part,
    ) -> Result<ScanStream> {
        let ctx = self.ctx(table).await?;
        // Held until the stream is dropped: vacuum keeps everything this version needs.
        let pin = self.pin_for(table, request.version, false)?;
        let version = pin.version();
        let columns = self
            .meta
            .read(|tx| tx.get_table_version(table, version))?
            .map(|v| v.columns)
            .unwrap_or_else(|| ctx.table.columns.clone());
        let predicate = request
            .predicate
            .clone()
            .unwrap_or(Predicate::True)
            .bind(&columns)?;
        let projected: Vec<ColumnDef> = match &request.columns {
            None => columns.clone(),
            Some(names) => names
                .iter()
                .map(|n| {
                    columns
                        .iter()
                        .find(|c| &c.name == n)
                        .cloned()
                        .ok_or_else(|| Error::UnknownColumn { column: n.clone() })
                })
                .collect::<Result<_>>()?,
        };
        let names: Vec<String> = projected.iter().map(|c| c.name.clone()).collect();
        let active: Vec<_> = self
            .meta
            .read(|tx| tx.active_micro_partitions(table, version))?
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % part.of == part.index)
            .map(|(_, m)| m)
            .collect();
        let files_total = active.len();
        let rows_total =
            (predicate == Predicate::True).then(|| active.iter().map(|m| m.rows).sum());
        let mut candidates = prune(active, &predicate);
        if let Some(limit) = limit {
            if limit == 0 {
                candidates.clear();
            } else if predicate == Predicate::True {
                // Every row of a file is returned: the files up to `limit` rows suffice.
                let mut rows = 0u64;
                let needed = candidates
                    .iter()
                    .position(|m| {
                        rows += m.rows;
                        rows >= limit as u64
                    })
                    .map_or(candidates.len(), |i| i + 1);
                candidates.truncate(needed);
            }
        }
        let files_planned = candidates.len();
        let progress = Arc::new(ScanProgress::default());
        let (volume, keys) = (Arc::clone(&self.volume), Arc::clone(&ctx.keys));
        let opened = Arc::clone(&progress);
        let read_columns = columns.clone();
        let files = futures::stream::iter(candidates)
            .map(move |m| {
                let (volume, keys, progress) =
                    (Arc::clone(&volume), Arc::clone(&keys), Arc::clone(&opened));
                let (names, predicate, columns) =
                    (names.clone(), predicate.clone(), read_columns.clone());
                async move {
                    let path = Path::from(m.path.as_str());
                    progress.files_read.fetch_add(1, Ordering::Relaxed);
                    let (rows, stats) = mp::read_stream(
                        volume,
                        &path,
                        keys.as_ref(),
                        &columns,
                        Some(&names),
                        &predicate,
                    )
                    .await?;
                    progress
                        .row_groups_skipped
                        .fetch_add(stats.row_groups_skipped, Ordering::Relaxed);
                    Ok::<_, Error>(rows)
                }
            })
            .buffered(self.options.read_concurrency.max(1))
            .try_flatten();
        let out_columns = projected.clone();
        let conformed = files.map(move |b| b.and_then(|b| conform(&b, &out_columns)));
        let batches = limited(conformed.boxed(), limit, pin);
        Ok(ScanStream {
            version,
            columns: projected,
            files_total,
            files_planned,
            rows_total,
            batches,
            progress,
        })
    }

    /// Compute an aggregate over the rows matching `predicate` at `version` (current when
    /// `None`). `count(*)` without a predicate reads no file.
    pub async fn aggregate(
        &self,
        table: &TableId,
        agg: &Aggregate,
        predicate: Option<&Predicate>,
        version: Option<u64>,
    ) -> Result<Option<Scalar>> {
        if *agg == Aggregate::Count && predicate.is_none_or(|p| *p == Predicate::True) {
            let t = self.table(table)?;
            let v = self.retained(&t, version)?;
            let files = self.meta.read(|tx| tx.active_micro_partitions(table, v))?;
            let rows: u64 = files.iter().map(|m| m.rows).sum();
            return Ok(Some(Scalar::Int64(i64::try_from(rows).unwrap_or(i64::MAX))));
        }
        let column = match agg {
            Aggregate::Count => None,
            Aggregate::Sum(c) | Aggregate::Min(c) | Aggregate::Max(c) => Some(c.clone()),
        };
        let t = self.table(table)?;
        let first = t
            .columns
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let request = ScanRequest {
            version,
            columns: Some(vec![column.clone().unwrap_or(first)]),
            predicate: predicate.cloned(),
        };
        let scanned = self.scan(table, &request).await?;
        crate::aggregate::compute(agg, &scanned.batches)
    }

    // ---- maintenance ----

    /// Pin `version` of `table` (the current one when `None`) for a reader: until the pin
    /// is dropped, vacuum keeps that version and every file it needs, even after its
    /// retention has passed. [`Error::VersionNotRetained`] if the version is no longer
    /// retained (or a running vacuum has claimed it). See [`crate::pins`].
    pub fn pin(&self, table: &TableId, version: Option<u64>) -> Result<PinnedVersion> {
        self.pin_for(table, version, false)
    }

    fn pin_for(
        &self,
        table: &TableId,
        version: Option<u64>,
        reads_metadata_files: bool,
    ) -> Result<PinnedVersion> {
        self.pins.pin(table, reads_metadata_files, || {
            let t = self.table(table)?;
            Ok((self.retained(&t, version)?, t.current_version))
        })
    }

    /// Apply retention and delete files no retained version needs. Returns the number of
    /// micro-partitions deleted.
    ///
    /// Kept: every version committed after the retention cutoff, the newest one at or
    /// before it (the state at the cutoff), and every version a reader has pinned
    /// ([`Tables::pin`]; scans pin the version they read). Deleted: the micro-partitions no
    /// kept version refers to, and the metadata files of dropped versions that no kept
    /// version is rebuilt from (the volume alone must still rebuild every kept version; see
    /// `tern_meta::versions`).
    ///
    /// Takes no table lock: it only removes what no retained version refers to, and commits
    /// only ever add versions on top. Files are deleted before their index entries are
    /// forgotten, so a crash in between leaves entries whose files are gone (deleted again,
    /// idempotently, by the next vacuum), never files nothing names.
    pub async fn vacuum(&self, table: &TableId) -> Result<usize> {
        let t = self.table(table)?;
        let cutoff = self.clock.now_millis()
            - i64::try_from(t.retention_ms.unwrap_or(self.options.default_retention_ms))
                .unwrap_or(i64::MAX);
        let versions = self.meta.read(|tx| tx.table_versions(table))?;
        let oldest = versions.first().map_or(0, |v| v.version);
        let by_retention = versions
            .iter()
            .filter(|v| v.committed_at_ms <= cutoff)
            .map(|v| v.version)
            .max()
            .unwrap_or(oldest)
            .min(t.current_version);
        let claim = self.pins.claim(table, by_retention);
        if claim.keep_from > oldest {
            let dropped = self
                .meta
                .write(|tx| tx.drop_versions_before(table, claim.keep_from))?;
            tracing::debug!(%table, keep_from = claim.keep_from, dropped = dropped.len(), "vacuum: versions dropped");
        }
        if claim.release_metadata_files {
            let released = self.meta.read(|tx| tx.releasable_retired_versions(table))?;
            for v in &released {
                for ep in &v.ep_files {
                    self.volume
                        .delete_idempotent(&Path::from(ep.path.as_str()))
                        .await?;
                }
            }
            let numbers: Vec<u64> = released.iter().map(|v| v.version).collect();
            self.meta
                .write(|tx| tx.forget_retired_versions(table, &numbers))?;
        }
        let unreferenced = self
            .meta
            .read(|tx| tx.unreferenced_micro_partitions(table))?;
        for m in &unreferenced {
            self.volume
                .delete_idempotent(&Path::from(m.path.as_str()))
                .await?;
        }
        let shorts: Vec<ShortName> = unreferenced.iter().map(|m| m.short.clone()).collect();
        self.meta
            .write(|tx| tx.forget_micro_partitions(table, &shorts))?;
        Ok(unreferenced.len())
    }

    /// The micro-partitions of `version`, derived from the table's metadata files alone:
    /// the files of commits 1..N replayed in order (DESIGN.md §2). Equals the metadata
    /// store's index for every version whose history is still retained; used to check one
    /// against the other and, by replication, to read what a commit changed.
    pub async fn active_from_metadata_files(
        &self,
        table: &TableId,
        version: u64,
    ) -> Result<Vec<ShortName>> {
        let ctx = self.ctx(table).await?;
        let pin = self.pin_for(table, Some(version), true)?;
        let files = self.meta.read(|tx| tx.ep_files_at(table, pin.version()))?;
        let mut active = std::collections::BTreeSet::new();
        for ep in files {
            let path = Path::from(ep.path.as_str());
            let plain = tern_crypto::get_decrypted(&self.volume, &path, ctx.keys.as_ref()).await?;
            let file = MetadataFile::from_bytes(&plain, &ep.path)?;
            for r in &file.removed {
                active.remove(r);
            }
            active.extend(file.added.into_iter().map(|a| a.short));
        }
        Ok(active.into_iter().collect())
    }

    /// The file keys of a table's micro-partitions and metadata files (what a copy worker
    /// needs to read them); the table master key is unwrapped through its account's master
    /// key.
    pub async fn file_keys(&self, table: &TableId) -> Result<Arc<TableFileKeys>> {
        Ok(self.ctx(table).await?.keys)
    }

    // ---- internals ----

    fn lock_tmks(&self) -> std::sync::MutexGuard<'_, HashMap<TableId, (AccountId, Arc<DataKey>)>> {
        self.tmks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transaction holding `table`'s lock, and the table as it is under the lock.
    async fn locked(&self, table: &TableId) -> Result<(Box<dyn Transaction>, Ctx)> {
        let account = self.account_of(&self.table(table)?.database)?;
        let mut txn = self.committer.begin(&account).await?;
        if let Err(e) = txn.lock(&[crate::commit::table_lock(table)]).await {
            txn.abort().await;
            return Err(e);
        }
        match self.ctx(table).await {
            Ok(ctx) => Ok((txn, ctx)),
            Err(e) => {
                txn.abort().await;
                Err(e)
            }
        }
    }

    pub(crate) async fn ctx(&self, table: &TableId) -> Result<Ctx> {
        let t = self.table(table)?;
        let account = self.meta.read(|tx| {
            tx.get_database(&t.database)?
                .map(|d| d.account)
                .ok_or_else(|| tern_meta::Error::NotFound {
                    what: "database",
                    name: t.database.to_string(),
                })
        })?;
        let cached = self.lock_tmks().get(table).map(|(_, k)| Arc::clone(k));
        let tmk = match cached {
            Some(k) => k,
            None => {
                let key = Arc::new(self.account_keys.table_key(&account, &t).await?);
                self.lock_tmks()
                    .insert(table.clone(), (account.clone(), Arc::clone(&key)));
                key
            }
        };
        Ok(Ctx {
            table: t,
            account,
            keys: Arc::new(TableFileKeys::new(tmk)),
        })
    }

    fn retained(&self, t: &TableDpo, version: Option<u64>) -> Result<u64> {
        let v = version.unwrap_or(t.current_version);
        let oldest = self.meta.read(|tx| tx.oldest_retained_version(&t.id))?;
        if v > t.current_version || v < oldest {
            return Err(Error::VersionNotRetained {
                table: t.id.clone(),
                version: v,
                current: t.current_version,
                oldest,
            });
        }
        Ok(v)
    }

    /// Active files at `version` whose statistics may match `predicate`.
    fn candidates(
        &self,
        ctx: &Ctx,
        version: u64,
        predicate: &Predicate,
    ) -> Result<Vec<MicroPartitionDpo>> {
        let files = self
            .meta
            .read(|tx| tx.active_micro_partitions(&ctx.table.id, version))?;
        Ok(prune(files, predicate))
    }

    pub(crate) async fn read_file(
        &self,
        ctx: &Ctx,
        m: &MicroPartitionDpo,
        predicate: &Predicate,
        projection: Option<&[String]>,
    ) -> Result<Vec<RecordBatch>> {
        let path = Path::from(m.path.as_str());
        let (batches, _) = mp::read(
            Arc::clone(&self.volume),
            &path,
            ctx.keys.as_ref(),
            &ctx.table.columns,
            projection,
            predicate,
        )
        .await?;
        batches
            .iter()
            .map(|b| conform(b, &ctx.table.columns))
            .collect()
    }

    /// Every row of micro-partition `m`, conformed to the table's columns, batch by batch.
    pub(crate) async fn read_file_stream(
        &self,
        ctx: &Ctx,
        m: &MicroPartitionDpo,
    ) -> Result<mp::BatchStream> {
        let (batches, _) = mp::read_stream(
            Arc::clone(&self.volume),
            &Path::from(m.path.as_str()),
            ctx.keys.as_ref(),
            &ctx.table.columns,
            None,
            &Predicate::True,
        )
        .await?;
        let columns = ctx.table.columns.clone();
        Ok(batches
            .map(move |b| b.and_then(|b| conform(&b, &columns)))
            .boxed())
    }

    /// Encode, encrypt and store new micro-partitions; their entries (version unset).
    /// Every file is announced to `journal` before it is written; on an error the files
    /// already written are left for the transaction's abort to remove.
    async fn write_files(
        &self,
        ctx: &Ctx,
        batches: &[RecordBatch],
        journal: &mut dyn FileJournal,
    ) -> Result<Vec<MicroPartitionDpo>> {
        let mut w = self.file_writer(ctx)?;
        let mut result = Ok(());
        for batch in batches {
            result = w.push(self, ctx, batch, journal).await;
            if result.is_err() {
                break;
            }
        }
        w.finish(self, ctx, journal, result).await
    }

    /// A writer of new micro-partitions for the table in `ctx`.
    pub(crate) fn file_writer(&self, ctx: &Ctx) -> Result<FileWriter> {
        let schema = arrow_schema(&ctx.table.columns);
        Ok(FileWriter {
            encoder: mp::Encoder::new(&schema, &ctx.table.columns, &self.options.write)?,
            in_flight: None,
            written: Vec::new(),
            rows: 0,
        })
    }

    /// Wait for the file in flight, then start storing `e`.
    pub(crate) async fn store_next(
        &self,
        ctx: &Ctx,
        e: mp::Encoded,
        journal: &mut dyn FileJournal,
        in_flight: &mut Option<tokio::task::JoinHandle<Result<MicroPartitionDpo>>>,
        written: &mut Vec<MicroPartitionDpo>,
    ) -> Result<()> {
        Self::land(in_flight, written).await?;
        let prefix = layout::volume::mp_prefix(&ctx.account, &ctx.table.database, &ctx.table.id);
        let short = layout::volume::numbered_mp(journal.new_mp(&ctx.table.id, &prefix).await?);
        let path = layout::volume::mp_in(&prefix, &short);
        let (volume, keys) = (Arc::clone(&self.volume), Arc::clone(&ctx.keys));
        let entry = MicroPartitionDpo {
            table: ctx.table.id.clone(),
            global_ref: GlobalFileRef::new(self.deployment.clone(), short.clone()),
            short,
            rows: e.rows,
            bytes: 0,
            stats: Vec::new(),
            added_version: 0,
            removed_version: None,
            path: path.to_string(),
            key_ref: mp::key_ref(&ctx.keys),
        };
        *in_flight = Some(tokio::spawn(async move {
            let bytes = mp::store(volume.as_ref(), &path, keys.as_ref(), &e).await?;
            Ok(MicroPartitionDpo {
                bytes,
                stats: e.stats,
                ..entry
            })
        }));
        Ok(())
    }

    /// Wait for the file in flight, if any, and record it as written.
    pub(crate) async fn land(
        in_flight: &mut Option<tokio::task::JoinHandle<Result<MicroPartitionDpo>>>,
        written: &mut Vec<MicroPartitionDpo>,
    ) -> Result<()> {
        if let Some(task) = in_flight.take() {
            let entry = task.await.map_err(|e| {
                Error::Storage(tern_storage::Error::Open {
                    url: "micro-partition writer".into(),
                    source: Box::new(e),
                })
            })??;
            written.push(entry);
        }
        Ok(())
    }

    /// The account of a live database that statements may change: a secondary replica
    /// is read-only (replication changes it through the committer, not through
    /// statements).
    pub(crate) fn account_of(&self, db: &DatabaseId) -> Result<AccountId> {
        let d = self.meta.read(|tx| {
            tx.get_database(db)?
                .filter(|d| !d.dropped)
                .ok_or_else(|| tern_meta::Error::NotFound {
                    what: "database",
                    name: db.to_string(),
                })
        })?;
        if d.role == tern_meta::DatabaseRole::Secondary {
            return Err(Error::ReadOnlyReplica {
                database: d.name,
                group: d.replication_group.unwrap_or_default(),
            });
        }
        Ok(d.account)
    }

    /// A change of the table in `ctx` on the version it was read at.
    pub(crate) fn change(
        &self,
        ctx: &Ctx,
        added: Vec<MicroPartitionDpo>,
        removed: Vec<MicroPartitionDpo>,
        rows: u64,
    ) -> TableChange {
        TableChange {
            account: ctx.account.clone(),
            database: ctx.table.database.clone(),
            table: ctx.table.id.clone(),
            base_version: ctx.table.current_version,
            rebase: false,
            version: None,
            added,
            removed,
            columns: ctx.table.columns.clone(),
            add_column: None,
            rows,
            keys: Arc::clone(&ctx.keys),
        }
    }

    /// Commit what a locked statement staged; `None` (nothing to change) or an error ends
    /// the transaction without a version.
    async fn commit_staged(
        &self,
        txn: Box<dyn Transaction>,
        ctx: &Ctx,
        staged: Result<Option<TableChange>>,
    ) -> Result<CommitInfo> {
        match staged {
            Ok(Some(change)) => self.commit(txn, change).await,
            Ok(None) => {
                txn.abort().await;
                Ok(CommitInfo {
                    version: ctx.table.current_version,
                    ..Default::default()
                })
            }
            Err(e) => {
                txn.abort().await;
                Err(e)
            }
        }
    }

    /// Commit one table change, with the statement's idempotency key if it has one
    /// ([`crate::commit::with_idempotency_key`]).
    pub(crate) async fn commit(
        &self,
        mut txn: Box<dyn Transaction>,
        change: TableChange,
    ) -> Result<CommitInfo> {
        let (rows, table) = (change.rows, change.table.clone());
        if let Some(key) = crate::commit::statement_idempotency_key()
            && let Err(e) = txn.idempotency(key)
        {
            // Its files were journaled: the abort removes them.
            txn.abort().await;
            return Err(e);
        }
        let committed = txn.commit(vec![Change::Table(change)]).await?;
        match committed.records.first() {
            Some(
                record @ ChangeRecord::TableVersion {
                    version,
                    added,
                    removed,
                    ..
                },
            ) => {
                tracing::debug!(%table, version, files_added = added.len(), files_removed = removed.len(), txn_id = committed.txn_id, "committed");
                let mut info =
                    CommitInfo::of_record(record, committed.txn_id).ok_or_else(|| {
                        Error::NoTableVersion {
                            table: table.clone(),
                        }
                    })?;
                // The statement's own count (a record's is the same; a committer may not
                // carry it).
                info.rows_affected = rows;
                Ok(info)
            }
            _ => Err(Error::NoTableVersion { table }),
        }
    }

    /// Commit one dictionary change.
    async fn commit_dictionary(
        &self,
        account: AccountId,
        database: &DatabaseId,
        op: DictionaryOp,
    ) -> Result<()> {
        let txn = self.committer.begin(&account).await?;
        txn.commit(vec![Change::Dictionary {
            account,
            database: database.clone(),
            op,
        }])
        .await?;
        Ok(())
    }
}

/// A rewrite of a table's rows written but not committed ([`Tables::stage_rewrite`]): it
/// holds the table's lock until [`Tables::commit_rewrite`] or [`StagedRewrite::abort`]
/// (dropped, its files are left to the committer's recovery).
pub struct StagedRewrite {
    txn: Box<dyn Transaction>,
    change: TableChange,
}

impl std::fmt::Debug for StagedRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedRewrite")
            .field("table", &self.change.table)
            .field("base_version", &self.change.base_version)
            .field("files_added", &self.change.added.len())
            .field("files_removed", &self.change.removed.len())
            .finish_non_exhaustive()
    }
}

impl StagedRewrite {
    /// Gives the rewrite up: nothing changes, its new files are removed.
    pub async fn abort(self) {
        self.txn.abort().await;
    }
}

/// The new micro-partitions of one statement, written as rows come: rows are pushed
/// batch by batch, each file is stored (on another worker) as soon as it fills while the
/// next is encoded, so memory holds a file or two whatever the statement's size.
pub(crate) struct FileWriter {
    encoder: mp::Encoder,
    in_flight: Option<tokio::task::JoinHandle<Result<MicroPartitionDpo>>>,
    written: Vec<MicroPartitionDpo>,
    rows: u64,
}

impl FileWriter {
    /// Add rows (conforming to the table's columns).
    pub(crate) async fn push(
        &mut self,
        tables: &Tables,
        ctx: &Ctx,
        batch: &RecordBatch,
        journal: &mut dyn FileJournal,
    ) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        for e in self.encoder.push(batch)? {
            tables
                .store_next(ctx, e, journal, &mut self.in_flight, &mut self.written)
                .await?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Close the last file (when `result` is still good) and wait for the file in flight
    /// either way, so that nothing is still being written when the caller aborts and
    /// removes the journaled files. Returns the files written.
    pub(crate) async fn finish(
        mut self,
        tables: &Tables,
        ctx: &Ctx,
        journal: &mut dyn FileJournal,
        mut result: Result<()>,
    ) -> Result<Vec<MicroPartitionDpo>> {
        if result.is_ok() {
            result = match self.encoder.finish() {
                Ok(Some(e)) => {
                    tables
                        .store_next(ctx, e, journal, &mut self.in_flight, &mut self.written)
                        .await
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let last = Tables::land(&mut self.in_flight, &mut self.written).await;
        result.and(last).map(|()| self.written)
    }
}

/// The files whose statistics may match `predicate`.
fn prune(mut files: Vec<MicroPartitionDpo>, predicate: &Predicate) -> Vec<MicroPartitionDpo> {
    files.retain(|m| {
        let stats_of = |c: &str| m.stats.iter().find(|s| s.column == c);
        predicate.may_match(&stats_of, m.rows)
    });
    files
}

fn key_converter(columns: &[ColumnDef], keys: &[&str]) -> Result<RowConverter> {
    let fields = keys
        .iter()
        .map(|k| {
            columns
                .iter()
                .find(|c| c.name == *k)
                .map(|c| SortField::new(arrow_type(&c.ty)))
                .ok_or_else(|| Error::UnknownColumn {
                    column: (*k).to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    RowConverter::new(fields).map_err(arrow_err("merge keys"))
}

fn key_arrays(batch: &RecordBatch, keys: &[&str]) -> Result<Vec<ArrayRef>> {
    keys.iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| Error::UnknownColumn {
                    column: (*k).to_string(),
                })
        })
        .collect()
}

fn render_key(batch: &RecordBatch, keys: &[&str], row: usize) -> String {
    keys.iter()
        .filter_map(|k| batch.column_by_name(k))
        .map(|a| arrow::util::display::array_value_to_string(a, row).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names of a table's micro-partitions at a version, for tests and tools.
pub fn short_names(files: &[MicroPartitionDpo]) -> Vec<&str> {
    files.iter().map(|m| m.short.as_str()).collect()
}
