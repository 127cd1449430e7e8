//! Compaction: a table's small micro-partitions (many single-row inserts make one file
//! each) merged into few files of about the target size, as a normal commit.
//!
//! A compaction is a table change like any other — new files written through the
//! transaction's journal, a metadata file, a version made by the [`Committer`] (in a
//! deployment: a log record, so replication ships it like any commit: the replica removes
//! the inputs by their global references and copies the merged file in). It keeps every
//! row as it is: the merged files hold exactly the rows of the files they replace, with
//! statistics computed by the same writer as any insert.
//!
//! ```text
//!  plan:   pin version v ─▶ active files of v smaller than small_file_bytes, oldest first,
//!          at most max_files; fewer than min_files ─▶ nothing to do
//!  stage:  read the inputs one by one ─▶ encoder ─▶ merged files (PutMode::Create)
//!  commit: under the table lock, on the current version c ≥ v:
//!          every input still active at c ─▶ version c+1: inputs removed, merged added
//!          an input removed since v       ─▶ Error::Conflict, merged files removed
//! ```
//!
//! It locks nothing while it reads and writes (writers are never held up by it); its
//! commit rebases like an insert's, onto whatever version is current, *unless* a writer
//! removed one of its inputs meanwhile (a delete or update of those rows, or another
//! compaction): then it is refused with a typed conflict ([`crate::Error::is_conflict`])
//! and nothing of it is visible, so rows are never lost nor duplicated. The caller tries
//! again later, on the new version.
//!
//! Time travel: versions before the compaction still name the small files; they are
//! deleted by vacuum once no retained version needs them, never here.

use tern_meta::MicroPartitionDpo;
use tern_storage::layout::TableId;

use crate::commit::{FileJournal, TableChange, Transaction};
use crate::error::{Error, Result};
use crate::mp::{self, WriteOptions};
use crate::predicate::Predicate;
use crate::schema::arrow_schema;
use crate::table::{CommitInfo, Tables};

/// When a table is compacted and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionOptions {
    /// Compact a table when it has at least this many small files (at least 2).
    pub min_files: usize,
    /// Most small files merged by one compaction commit (bounds its work; the rest are
    /// merged by the next one).
    pub max_files: usize,
    /// A file whose stored Parquet size is below this is small (a compaction input).
    pub small_file_bytes: u64,
    /// Merged files are closed at about this compressed size.
    pub target_file_bytes: u64,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        Self {
            min_files: 16,
            max_files: 1000,
            small_file_bytes: 1 << 20,
            target_file_bytes: 16 << 20,
        }
    }
}

impl CompactionOptions {
    /// Checks the thresholds; the error names the bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::InvalidCompactionOptions {
                field: field.to_string(),
                reason,
            })
        };
        if self.min_files < 2 {
            return bad(
                "min_files",
                format!(
                    "must be at least 2 (merging one file gains nothing), got {}",
                    self.min_files
                ),
            );
        }
        if self.max_files < self.min_files {
            return bad(
                "max_files",
                format!(
                    "must be at least min_files ({}), got {}",
                    self.min_files, self.max_files
                ),
            );
        }
        if self.small_file_bytes == 0 {
            return bad("small_file_bytes", "must be positive".into());
        }
        if self.target_file_bytes < self.small_file_bytes {
            return bad(
                "target_file_bytes",
                format!(
                    "must be at least small_file_bytes ({}), got {} (merged files would be small again)",
                    self.small_file_bytes, self.target_file_bytes
                ),
            );
        }
        Ok(())
    }
}

/// A compaction whose merged files are written but not committed: commit it with
/// [`Tables::commit_compaction`] or give it up with [`StagedCompaction::abort`] (dropped,
/// its files are left to the committer's recovery).
pub struct StagedCompaction {
    txn: Box<dyn Transaction>,
    change: TableChange,
    /// The version its inputs were read at.
    pub base_version: u64,
    /// Small files it replaces.
    pub inputs: usize,
    /// Merged files it adds.
    pub outputs: usize,
    /// Rows moved (the same rows, in fewer files).
    pub rows: u64,
}

impl std::fmt::Debug for StagedCompaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedCompaction")
            .field("table", &self.change.table)
            .field("base_version", &self.base_version)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl StagedCompaction {
    /// Gives the compaction up: its merged files are removed.
    pub async fn abort(self) {
        self.txn.abort().await;
    }
}

/// The inputs of a compaction among `active` files: small ones, oldest first, at most
/// `max_files`; none when fewer than `min_files`.
pub fn plan(active: Vec<MicroPartitionDpo>, opts: &CompactionOptions) -> Vec<MicroPartitionDpo> {
    let mut small: Vec<MicroPartitionDpo> = active
        .into_iter()
        .filter(|m| m.bytes < opts.small_file_bytes)
        .collect();
    if small.len() < opts.min_files {
        return Vec::new();
    }
    small.sort_by(|a, b| {
        (a.added_version, a.short.as_str()).cmp(&(b.added_version, b.short.as_str()))
    });
    small.truncate(opts.max_files);
    small
}

impl Tables {
    /// Compact `table` if it has enough small files: merge them and commit
    /// ([`Tables::stage_compaction`] then [`Tables::commit_compaction`]). A
    /// [`CommitInfo`] with `committed: false` when there was nothing to do;
    /// [`Error::Conflict`] when a writer removed one of the inputs meanwhile (retry later).
    /// A secondary replica is refused ([`Error::ReadOnlyReplica`]): it receives its
    /// primary's compactions by replication.
    pub async fn compact(&self, table: &TableId, opts: &CompactionOptions) -> Result<CommitInfo> {
        match self.stage_compaction(table, opts).await? {
            Some(staged) => self.commit_compaction(staged).await,
            None => Ok(CommitInfo {
                version: self.table(table)?.current_version,
                ..Default::default()
            }),
        }
    }

    /// Plan a compaction of `table` at its current version and write its merged files;
    /// nothing is visible until [`Tables::commit_compaction`]. `None` when the table has
    /// fewer than `min_files` small files, or when merging would not make fewer files.
    pub async fn stage_compaction(
        &self,
        table: &TableId,
        opts: &CompactionOptions,
    ) -> Result<Option<StagedCompaction>> {
        opts.validate()?;
        let ctx = self.ctx(table).await?;
        self.account_of(&ctx.table.database)?;
        // Held while the inputs are read: vacuum keeps them even if a writer removes them.
        let pin = self.pin(table, None)?;
        let version = pin.version();
        let active = self
            .meta()
            .read(|tx| tx.active_micro_partitions(table, version))?;
        let inputs = plan(active, opts);
        if inputs.is_empty() {
            return Ok(None);
        }
        // The columns of the version read: the inputs' rows are conformed to them.
        let mut ctx = ctx;
        if let Some(v) = self
            .meta()
            .read(|tx| tx.get_table_version(table, version))?
        {
            ctx.table.columns = v.columns;
        }
        ctx.table.current_version = version;
        let mut txn = self.committer().begin(&ctx.account).await?;
        let written = self.merge_files(&ctx, &inputs, opts, txn.as_mut()).await;
        drop(pin);
        let added = match written {
            Ok(a) => a,
            Err(e) => {
                txn.abort().await;
                return Err(e);
            }
        };
        if added.len() >= inputs.len() {
            // Files that do not shrink when merged (wide rows, a low target): nothing gained.
            tracing::debug!(%table, inputs = inputs.len(), outputs = added.len(), "compaction would not reduce the file count");
            txn.abort().await;
            return Ok(None);
        }
        let rows: u64 = inputs.iter().map(|m| m.rows).sum();
        let written_rows: u64 = added.iter().map(|m| m.rows).sum();
        if rows != written_rows {
            txn.abort().await;
            return Err(Error::CompactionRowCount {
                table: table.clone(),
                read: rows,
                written: written_rows,
            });
        }
        let (n_in, n_out) = (inputs.len(), added.len());
        let mut change = self.change(&ctx, added, inputs, 0);
        // Lands on the current version when every input is still active there (see the
        // module docs); a statement's rows are untouched.
        change.rebase = true;
        Ok(Some(StagedCompaction {
            txn,
            change,
            base_version: version,
            inputs: n_in,
            outputs: n_out,
            rows,
        }))
    }

    /// Commit a staged compaction: a new version with its inputs replaced by the merged
    /// files, on the current version. [`Error::Conflict`] (and nothing visible, merged
    /// files removed) when one of its inputs was removed since it was planned.
    pub async fn commit_compaction(&self, staged: StagedCompaction) -> Result<CommitInfo> {
        let StagedCompaction {
            txn,
            change,
            inputs,
            outputs,
            rows,
            base_version,
        } = staged;
        let table = change.table.clone();
        let info = self.commit(txn, change).await?;
        tracing::info!(%table, base_version, version = info.version, inputs, outputs, rows, txn_id = info.txn_id, "compacted");
        Ok(info)
    }

    /// Read `inputs` one at a time into files of about `target_file_bytes`: memory holds
    /// one input and the file being encoded, however many inputs there are.
    async fn merge_files(
        &self,
        ctx: &crate::table::Ctx,
        inputs: &[MicroPartitionDpo],
        opts: &CompactionOptions,
        journal: &mut dyn FileJournal,
    ) -> Result<Vec<MicroPartitionDpo>> {
        let write = WriteOptions {
            target_bytes: usize::try_from(opts.target_file_bytes).unwrap_or(usize::MAX),
            ..self.write_options().clone()
        };
        let schema = arrow_schema(&ctx.table.columns);
        let mut encoder = mp::Encoder::new(&schema, &ctx.table.columns, &write)?;
        let mut written = Vec::new();
        let mut in_flight = None;
        let mut result = Ok(());
        'inputs: for m in inputs {
            let batches = match self.read_file(ctx, m, &Predicate::True, None).await {
                Ok(b) => b,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            for b in &batches {
                let done = match encoder.push(b) {
                    Ok(d) => d,
                    Err(e) => {
                        result = Err(e);
                        break 'inputs;
                    }
                };
                for e in done {
                    if let Err(e) = self
                        .store_next(ctx, e, journal, &mut in_flight, &mut written)
                        .await
                    {
                        result = Err(e);
                        break 'inputs;
                    }
                }
            }
        }
        if result.is_ok() {
            result = match encoder.finish() {
                Ok(Some(e)) => {
                    self.store_next(ctx, e, journal, &mut in_flight, &mut written)
                        .await
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
        }
        // Nothing may still be written when the caller aborts and removes the files.
        let last = Self::land(&mut in_flight, &mut written).await;
        result.and(last).map(|()| written)
    }
}
