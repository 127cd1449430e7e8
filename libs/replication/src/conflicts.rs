//! Conflict records (failback): what an old primary committed past a newer epoch's fork,
//! kept by [`Replication::learn_claim`](crate::failover) with its files. The operator reads
//! each one's rows, then applies it (re-executed on the current primary as a new
//! transaction, refused when the rows it changed were changed since) or discards it (the
//! record stays, as an audit history; its files go).
//!
//! # Pre-version comparison
//!
//! A conflict's change is a set of files added and removed per table. The files it
//! removed are the rows it changed or deleted, as they were at the fork. If every one of
//! them is still active in the table, nobody changed those rows since, and the change can
//! be made again as it was: the same files removed, its own files added. If one is gone,
//! the rows moved on and applying is refused, naming the file and the table. Files are
//! identified by their global reference, which is unique in a table, so an apply that
//! already happened (its files are active) is recognised and not made twice.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};
use tern_meta::{ColumnDef, DatabaseRole, MicroPartitionDpo};
use tern_storage::Path;
use tern_storage::layout::TableId;
use tern_table::Predicate;
use tern_table::commit::{Change, TableChange, table_lock};

use crate::error::{Error, Result};
use crate::failover::{ConflictDpo, ConflictState, fkeys};
use crate::service::Replication;

/// The rows one table version of a conflict record added and removed.
#[derive(Debug, Clone)]
pub struct ConflictTableRows {
    /// The table (local id).
    pub table: TableId,
    /// Its qualified name, when the table still exists.
    pub name: Option<String>,
    /// The version the conflict made.
    pub version: u64,
    /// Rows it added (in its files, not in the files it replaced).
    pub added: Vec<RecordBatch>,
    /// Rows it removed (in the files it replaced, not in its own); `None` when those
    /// files are no longer readable here.
    pub removed: Option<Vec<RecordBatch>>,
}

/// How an apply ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The conflict record.
    pub id: String,
    /// The versions made on the primary, per table.
    pub versions: Vec<(TableId, u64)>,
    /// Whether it had been applied before (nothing made now).
    pub already: bool,
}

impl Replication {
    fn conflict(&self, id: &str) -> Result<ConflictDpo> {
        self.meta()
            .read(|tx| tx.get::<ConflictDpo>(&fkeys::conflict(id)))?
            .ok_or_else(|| Error::NotFound {
                what: "conflict record",
                name: id.to_string(),
            })
    }

    /// The rows conflict record `id` added and removed, per table.
    pub async fn conflict_rows(&self, id: &str) -> Result<(ConflictDpo, Vec<ConflictTableRows>)> {
        let c = self.conflict(id)?;
        let p = &self.inner.p;
        let mut out = Vec::with_capacity(c.versions.len());
        for v in &c.versions {
            let table = self.meta().read(|tx| tx.get_table(&v.table))?;
            let columns: Vec<ColumnDef> = table
                .as_ref()
                .map(|t| t.columns.clone())
                .unwrap_or_default();
            let keys = p.tables.file_keys(&v.table).await?;
            let read = |m: MicroPartitionDpo| {
                let (volume, keys, columns) =
                    (Arc::clone(&p.volume), Arc::clone(&keys), columns.clone());
                async move {
                    tern_table::mp::read(
                        volume,
                        &Path::from(m.path.as_str()),
                        keys.as_ref(),
                        &columns,
                        None,
                        &Predicate::True,
                    )
                    .await
                    .map(|(b, _)| b)
                }
            };
            let mut added = Vec::new();
            for m in &v.added {
                added.extend(read(m.clone()).await?);
            }
            let removed_files = self.meta().read(|tx| {
                let all = tx.list_micro_partitions(&v.table)?;
                Ok(v.removed
                    .iter()
                    .map(|s| all.iter().find(|m| m.short == *s).cloned())
                    .collect::<Vec<_>>())
            })?;
            let mut removed = Some(Vec::new());
            for m in removed_files {
                match (m, removed.as_mut()) {
                    (Some(m), Some(r)) => match read(m).await {
                        Ok(b) => r.extend(b),
                        Err(_) => removed = None,
                    },
                    _ => removed = None,
                }
            }
            // A rewritten file holds the rows it kept: those were neither added nor removed.
            let (added, removed) = match removed {
                Some(r) => {
                    let (a, r) = difference(&added, &r)?;
                    (a, Some(r))
                }
                None => (added, None),
            };
            out.push(ConflictTableRows {
                table: v.table.clone(),
                name: table.map(|t| format!("{}.{}", t.schema, t.name)),
                version: v.version,
                added,
                removed,
            });
        }
        Ok((c, out))
    }

    /// Applies conflict record `id` on this deployment, which must hold the group's
    /// primary: one new transaction that removes the files the conflict removed (all
    /// still active, or it is refused: the rows moved on) and adds its files again.
    pub async fn apply_conflict(&self, id: &str) -> Result<Applied> {
        let c = self.conflict(id)?;
        if c.state != ConflictState::Open {
            return Err(Error::invalid(
                format!("conflict record {id}"),
                format!("is {} already", c.state.name()),
            ));
        }
        let db = self
            .meta()
            .read(|tx| tx.get_database(&c.database))?
            .ok_or_else(|| Error::NotFound {
                what: "database",
                name: c.database.to_string(),
            })?;
        if db.role != DatabaseRole::Primary {
            return Err(Error::invalid(
                format!("conflict record {id}"),
                format!(
                    "is kept on {}, where database {} is a {:?} replica of group {}: apply it on the primary — make this deployment the primary first (tern database switchover) — or discard it",
                    self.me(),
                    db.name,
                    db.role,
                    c.group
                ),
            ));
        }
        let p = &self.inner.p;
        let mut txn = p.tables.committer().begin(&db.account).await?;
        let locks: Vec<String> = c.versions.iter().map(|v| table_lock(&v.table)).collect();
        if let Err(e) = txn.lock(&locks).await {
            txn.abort().await;
            return Err(e.into());
        }
        let prepared = async {
            let mut changes = Vec::new();
            let mut already = 0;
            for v in &c.versions {
                let t = self
                    .meta()
                    .read(|tx| tx.get_table(&v.table))?
                    .filter(|t| !t.dropped)
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("conflict record {id}"),
                            format!("table {} was dropped since", v.table),
                        )
                    })?;
                let (removed, added_now) = self.meta().read(|tx| {
                    let all = tx.list_micro_partitions(&v.table)?;
                    let mut removed = Vec::new();
                    for s in &v.removed {
                        match all.iter().find(|m| m.short == *s).cloned() {
                            Some(m) if m.removed_version.is_none() => removed.push(Ok(m)),
                            Some(m) => removed.push(Err(format!(
                                "file {s} was replaced at version {}",
                                m.removed_version.unwrap_or_default()
                            ))),
                            None => removed.push(Err(format!("file {s} is gone"))),
                        }
                    }
                    let mut added_now = 0;
                    for m in &v.added {
                        if tx
                            .find_micro_partition(&v.table, &m.global_ref)?
                            .is_some_and(|m| m.removed_version.is_none())
                        {
                            added_now += 1;
                        }
                    }
                    Ok((removed, added_now))
                })?;
                if !v.added.is_empty() && added_now == v.added.len() {
                    already += 1;
                    continue;
                }
                let removed = removed
                    .into_iter()
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map_err(|why| {
                        Error::invalid(
                            format!("conflict record {id}"),
                            format!(
                                "cannot be applied: the rows it changed in {}.{} were changed since ({why}); discard it, or re-enter its rows by hand",
                                t.schema, t.name
                            ),
                        )
                    })?;
                let added: Vec<MicroPartitionDpo> = v
                    .added
                    .iter()
                    .map(|m| MicroPartitionDpo {
                        removed_version: None,
                        ..m.clone()
                    })
                    .collect();
                changes.push(Change::Table(TableChange {
                    account: db.account.clone(),
                    database: db.id.clone(),
                    table: v.table.clone(),
                    base_version: t.current_version,
                    rebase: false,
                    version: None,
                    rows: added.iter().map(|m| m.rows).sum(),
                    added,
                    removed,
                    columns: t.columns.clone(),
                    add_column: None,
                    keys: p.tables.file_keys(&v.table).await?,
                }));
            }
            Ok::<_, Error>((changes, already))
        }
        .await;
        let (changes, already) = match prepared {
            Ok(x) => x,
            Err(e) => {
                txn.abort().await;
                return Err(e);
            }
        };
        let made = if changes.is_empty() {
            txn.abort().await;
            Vec::new()
        } else {
            let committed = txn.commit(changes).await?;
            committed
                .records
                .iter()
                .filter_map(|r| r.table_version().map(|(t, v)| (t.clone(), v)))
                .collect()
        };
        let now = self.now();
        let resolution = if made.is_empty() {
            "applied before".to_string()
        } else {
            format!(
                "applied as {}",
                made.iter()
                    .map(|(t, v)| format!("{t} v{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        self.meta().write(|tx| {
            if let Some(mut c) = tx.get::<ConflictDpo>(&fkeys::conflict(id))? {
                c.state = ConflictState::Applied;
                c.resolved_at_ms = Some(now);
                c.resolution = Some(resolution.clone());
                tx.put(&fkeys::conflict(id), &c)?;
            }
            Ok(())
        })?;
        tracing::warn!(conflict = %id, %resolution, "conflict record applied");
        Ok(Applied {
            id: id.to_string(),
            already: made.is_empty() && already > 0,
            versions: made,
        })
    }

    /// Discards conflict record `id`: its rows will not be applied; the record stays (an
    /// audit history) and its files are deleted.
    pub async fn discard_conflict(&self, id: &str) -> Result<ConflictDpo> {
        let c = self.conflict(id)?;
        if c.state != ConflictState::Open {
            return Err(Error::invalid(
                format!("conflict record {id}"),
                format!("is {} already", c.state.name()),
            ));
        }
        let now = self.now();
        let c = self.meta().write(|tx| {
            let mut c = tx
                .get::<ConflictDpo>(&fkeys::conflict(id))?
                .unwrap_or_else(|| c.clone());
            c.state = ConflictState::Discarded;
            c.resolved_at_ms = Some(now);
            c.resolution = Some("discarded by the operator".into());
            tx.put(&fkeys::conflict(id), &c)?;
            Ok(c)
        })?;
        let files: Vec<Path> = c
            .versions
            .iter()
            .flat_map(|v| v.added.iter().map(|m| Path::from(m.path.as_str())))
            .collect();
        tern_table::commit::remove_files(self.inner.p.volume.as_ref(), &files).await;
        tracing::warn!(conflict = %id, files = files.len(), "conflict record discarded");
        Ok(c)
    }
}

/// `added − removed` and `removed − added`, as multisets of rows (both sides with the
/// same columns).
fn difference(
    added: &[RecordBatch],
    removed: &[RecordBatch],
) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let Some(schema) = added.first().or(removed.first()).map(RecordBatch::schema) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let arrow_err = |e: arrow::error::ArrowError| Error::invalid("conflict rows", e.to_string());
    let converter = RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(arrow_err)?;
    let rows_of = |batches: &[RecordBatch]| -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for b in batches {
            let rows = converter.convert_columns(b.columns()).map_err(arrow_err)?;
            out.extend(rows.iter().map(|r| r.as_ref().to_vec()));
        }
        Ok(out)
    };
    let (a, r) = (rows_of(added)?, rows_of(removed)?);
    let minus =
        |from: &[RecordBatch], keys: &[Vec<u8>], other: &[Vec<u8>]| -> Result<Vec<RecordBatch>> {
            let mut count: HashMap<&[u8], usize> = HashMap::new();
            for k in other {
                *count.entry(k.as_slice()).or_default() += 1;
            }
            let mut i = 0;
            let mut out = Vec::new();
            for b in from {
                let keep: BooleanArray = (0..b.num_rows())
                    .map(|_| {
                        let k = keys[i].as_slice();
                        i += 1;
                        match count.get_mut(k) {
                            Some(n) if *n > 0 => {
                                *n -= 1;
                                Some(false)
                            }
                            _ => Some(true),
                        }
                    })
                    .collect();
                let kept = arrow::compute::filter_record_batch(b, &keep).map_err(arrow_err)?;
                if kept.num_rows() > 0 {
                    out.push(kept);
                }
            }
            Ok(out)
        };
    Ok((minus(added, &a, &r)?, minus(removed, &r, &a)?))
}
