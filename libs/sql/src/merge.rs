//! `MERGE INTO target USING source ON cond WHEN [NOT] MATCHED [AND …] THEN …`, as one
//! commit of the target table.
//!
//! How it runs: the target is pinned at its current version `v`; DataFusion computes the
//! target's new content from a full outer join of the target at `v` (each row numbered)
//! with the source (a table or a subquery):
//!
//! * a matched target row takes the first `WHEN MATCHED` clause whose condition holds:
//!   `UPDATE SET …` gives the updated row, `DELETE` drops it; with none, it is kept;
//! * a source row no target row matches takes the first `WHEN NOT MATCHED [BY TARGET]`
//!   clause whose condition holds: `INSERT … VALUES …` adds a row; with none, it adds
//!   nothing;
//! * a target row no source row matches takes the first `WHEN NOT MATCHED BY SOURCE`
//!   clause whose condition holds (`UPDATE SET …` or `DELETE`; its expressions see the
//!   source's columns as nulls); with none, it is kept as it is.
//!
//! The rows stream into new files ([`Tables::stage_rewrite`], which replaces the files
//! active at `v`) and become visible in one commit. A target row matched by more than
//! one source row is an error (the SQL standard's cardinality violation, Snowflake's
//! nondeterministic merge): which source row should win is not defined. Any error —
//! planning, a value of the wrong type, a null in a `NOT NULL` column, the cardinality
//! check, or a writer that committed on the table meanwhile ([`tern_table::Error::Conflict`])
//! — ends the statement with nothing changed (its files are removed by its transaction's
//! abort). A MERGE that changes no row makes no version.
//!
//! Cost: the whole target is read and rewritten (like a compaction of the table), not
//! only the files holding matched rows.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt64Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options, filter};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::DataFusionError;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Ident, Merge, MergeAction, MergeClauseKind, MergeInsertKind, ObjectName,
    TableFactor,
};
use futures::StreamExt;

use crate::error::SqlError;
use crate::provider::TernTable;
use crate::session::{Answer, SqlSession};

/// What a clause does to the row it takes.
#[derive(Debug)]
enum Action {
    /// `UPDATE SET`: `(column index, SQL expression)`.
    Update(Vec<(usize, String)>),
    Delete,
    /// `INSERT`: the SQL expression of each target column (`NULL` when not listed).
    Insert(Vec<String>),
}

/// Rows counted and the cardinality check, shared by the stream and the statement.
#[derive(Debug, Default)]
struct Progress {
    inserted: u64,
    updated: u64,
    deleted: u64,
    /// Numbers of the matched target rows seen.
    matched: HashSet<u64>,
    /// The error that ended the stream, as the statement reports it.
    error: Option<SqlError>,
}

/// An identifier as DataFusion resolves it (unquoted names are lower-cased).
fn normalized(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// The column an assignment or an insert list names (`c` or `alias.c`).
fn column_name(name: &ObjectName) -> Result<String, SqlError> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(normalized)
        .ok_or_else(|| SqlError::Unsupported(format!("MERGE: column name {name}")))
}

/// A column name quoted for the generated SQL.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqlSession {
    /// Run a `MERGE` statement (see the module docs).
    pub(crate) async fn merge(&self, m: &Merge) -> Result<Answer, SqlError> {
        if m.output.is_some() {
            return Err(SqlError::Unsupported("MERGE … OUTPUT".into()));
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            version: None,
            ..
        } = &m.table
        else {
            return Err(SqlError::Unsupported(format!(
                "MERGE INTO {}: the target must be a table of this database",
                m.table
            )));
        };
        let (schema, table) = self.name_of(name)?;
        let t = self.tables.find_table(&self.db, &schema, &table)?;
        // The version the new content is computed from; the commit checks it is still
        // current.
        let pin = self.tables.pin(&t.id, None)?;
        let version = pin.version();
        let target = TernTable::open(Arc::clone(&self.tables), &t.id, Some(version))?;
        let target_schema = target.schema();
        let columns: Vec<String> = target_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let t_ref = match alias {
            Some(a) => a.name.to_string(),
            None => name
                .0
                .last()
                .map(|p| p.to_string())
                .unwrap_or_else(|| table.clone()),
        };
        let s_ref = match &m.source {
            TableFactor::Table { alias: Some(a), .. }
            | TableFactor::Derived { alias: Some(a), .. } => a.name.to_string(),
            TableFactor::Table {
                name, alias: None, ..
            } => name
                .0
                .last()
                .map(|p| p.to_string())
                .ok_or_else(|| SqlError::Unsupported(format!("MERGE … USING {name}")))?,
            TableFactor::Derived { alias: None, .. } => {
                return Err(SqlError::Unsupported(
                    "MERGE … USING (subquery): give the subquery an alias, as in USING (SELECT …) AS s"
                        .into(),
                ));
            }
            other => {
                return Err(SqlError::Unsupported(format!(
                    "MERGE … USING {other}: the source must be a table or a subquery"
                )));
            }
        };
        let index_of = |c: &str| {
            columns.iter().position(|x| x == c).ok_or_else(|| {
                SqlError::Query(DataFusionError::Plan(format!(
                    "MERGE: table {schema}.{table} has no column {c:?}"
                )))
            })
        };

        // The clauses, checked before anything runs.
        let mut actions = Vec::new();
        let mut matched = Vec::new();
        let mut not_matched = Vec::new();
        let mut by_source = Vec::new();
        for (i, c) in m.clauses.iter().enumerate() {
            let number = i as i64 + 1;
            let condition = c
                .predicate
                .as_ref()
                .map_or_else(|| "TRUE".to_string(), |p| format!("({p})"));
            let action = match &c.action {
                MergeAction::Update(u) => {
                    if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                        return Err(SqlError::Unsupported(
                            "MERGE … UPDATE SET … WHERE / DELETE WHERE: use WHEN MATCHED AND …"
                                .into(),
                        ));
                    }
                    let mut set: Vec<(usize, String)> = Vec::new();
                    for a in &u.assignments {
                        let AssignmentTarget::ColumnName(col) = &a.target else {
                            return Err(SqlError::Unsupported(format!(
                                "MERGE … UPDATE SET {}: set one column at a time",
                                a.target
                            )));
                        };
                        let i = index_of(&column_name(col)?)?;
                        if set.iter().any(|(j, _)| *j == i) {
                            return Err(SqlError::Unsupported(format!(
                                "MERGE … UPDATE SET: column {} is set twice",
                                columns[i]
                            )));
                        }
                        set.push((i, format!("({})", a.value)));
                    }
                    Action::Update(set)
                }
                MergeAction::Delete { .. } => Action::Delete,
                MergeAction::Insert(ins) => {
                    if ins.insert_predicate.is_some() {
                        return Err(SqlError::Unsupported("MERGE … INSERT … WHERE".into()));
                    }
                    let MergeInsertKind::Values(values) = &ins.kind else {
                        return Err(SqlError::Unsupported(
                            "MERGE … INSERT ROW: list the values, as in INSERT (a, b) VALUES (s.a, s.b)"
                                .into(),
                        ));
                    };
                    let [row] = values.rows.as_slice() else {
                        return Err(SqlError::Unsupported(
                            "MERGE … INSERT VALUES: exactly one row of values".into(),
                        ));
                    };
                    let listed: Vec<usize> = if ins.columns.is_empty() {
                        (0..columns.len()).collect()
                    } else {
                        ins.columns
                            .iter()
                            .map(|c| index_of(&column_name(c)?))
                            .collect::<Result<_, _>>()?
                    };
                    let row = &row.content;
                    if listed.len() != row.len() {
                        return Err(SqlError::Unsupported(format!(
                            "MERGE … INSERT: {} column(s) but {} value(s)",
                            listed.len(),
                            row.len()
                        )));
                    }
                    let mut exprs = vec!["NULL".to_string(); columns.len()];
                    for (i, v) in listed.into_iter().zip(row) {
                        if exprs[i] != "NULL" {
                            return Err(SqlError::Unsupported(format!(
                                "MERGE … INSERT: column {} is listed twice",
                                columns[i]
                            )));
                        }
                        exprs[i] = format!("({v})");
                    }
                    Action::Insert(exprs)
                }
            };
            match (&c.clause_kind, &action) {
                (MergeClauseKind::Matched, Action::Update(_) | Action::Delete) => {
                    matched.push((number, condition))
                }
                (
                    MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget,
                    Action::Insert(_),
                ) => not_matched.push((number, condition)),
                (MergeClauseKind::NotMatchedBySource, Action::Update(_) | Action::Delete) => {
                    by_source.push((number, condition))
                }
                (kind, _) => {
                    return Err(SqlError::Unsupported(format!(
                        "MERGE … WHEN {kind} THEN {}: MATCHED and NOT MATCHED BY SOURCE take UPDATE or DELETE, NOT MATCHED [BY TARGET] takes INSERT",
                        c.action
                    )));
                }
            }
            actions.push(action);
        }

        // The statement as one query over the target at `version` and the source.
        let is_matched = format!("({t_ref}.__tern_t IS NOT NULL AND {s_ref}.__tern_s IS NOT NULL)");
        let case_of = |clauses: &[(i64, String)], otherwise: i64| {
            if clauses.is_empty() {
                return otherwise.to_string();
            }
            let mut e = "CASE".to_string();
            for (n, c) in clauses {
                let _ = write!(e, " WHEN {c} THEN {n}");
            }
            let _ = write!(e, " ELSE {otherwise} END");
            e
        };
        // 0: the target row as it is; n: clause n applies; -1: the source row adds nothing.
        let action = format!(
            "(CASE WHEN {is_matched} THEN {} WHEN {t_ref}.__tern_t IS NULL THEN {} ELSE {} END)",
            case_of(&matched, 0),
            case_of(&not_matched, -1),
            case_of(&by_source, 0)
        );
        let mut select = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            let mut e = String::new();
            for (n, a) in actions.iter().enumerate() {
                let value = match a {
                    Action::Update(set) => set.iter().find(|(j, _)| *j == i).map(|(_, v)| v),
                    Action::Insert(exprs) => Some(&exprs[i]),
                    Action::Delete => None,
                };
                if let Some(v) = value {
                    let _ = write!(e, " WHEN {} THEN {v}", n + 1);
                }
            }
            let current = format!("{t_ref}.{}", quoted(c));
            select.push(if e.is_empty() {
                format!("{current} AS {}", quoted(c))
            } else {
                format!("CASE {action}{e} ELSE {current} END AS {}", quoted(c))
            });
        }
        select.push(format!(
            "CASE WHEN {is_matched} THEN {t_ref}.__tern_t END AS __tern_t"
        ));
        select.push(format!("{action} AS __tern_a"));
        let target_name = format!("{schema}.{table}").replace('\'', "''");
        let query = format!(
            "SELECT {} FROM (SELECT *, row_number() OVER () AS __tern_t FROM at_version('{target_name}', {version})) AS {t_ref} \
             FULL OUTER JOIN (SELECT *, TRUE AS __tern_s FROM {}) AS {s_ref} ON ({}) WHERE {action} >= 0",
            select.join(", "),
            m.source,
            m.on
        );
        tracing::debug!(%query, "merge");
        let df = self.ctx.sql(&query).await?;
        let rows = df.execute_stream().await?;

        let progress = Arc::new(Mutex::new(Progress::default()));
        let kinds: Vec<Kind> = actions
            .iter()
            .map(|a| match a {
                Action::Update(_) => Kind::Updated,
                Action::Delete => Kind::Deleted,
                Action::Insert(_) => Kind::Inserted,
            })
            .collect();
        let out_schema = Arc::new(Schema::new(
            target_schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let shared = Arc::clone(&progress);
        let target_rows = rows.map(move |b| {
            let mut p = shared.lock().unwrap_or_else(|e| e.into_inner());
            let out = b
                .map_err(SqlError::from)
                .and_then(|b| new_rows(&b, &out_schema, &kinds, &mut p));
            out.map_err(|e| {
                let message = e.to_string();
                p.error.get_or_insert(e);
                tern_table::Error::BadInput {
                    source_name: "MERGE".into(),
                    line: None,
                    detail: message,
                }
            })
        });
        let staged = self.tables.stage_rewrite(&t.id, version, target_rows).await;
        drop(pin);
        let (staged, p) = {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            match (staged, p.error.take()) {
                (Err(_), Some(e)) => return Err(e),
                (Err(e), None) => return Err(e.into()),
                (Ok(s), _) => (s, (p.inserted, p.updated, p.deleted)),
            }
        };
        let count = p.0 + p.1 + p.2;
        if count == 0 {
            staged.abort().await;
        } else {
            let info = self.tables.commit_rewrite(staged, count).await?;
            tracing::debug!(table = %t.id, version = info.version, inserted = p.0, updated = p.1, deleted = p.2, "merged");
        }
        Ok(Answer::count(count))
    }
}

/// What a clause did to a row.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Updated,
    Deleted,
    Inserted,
}

/// The target rows of one joined batch (the target's columns, then `__tern_t` and
/// `__tern_a`), cast to the target's types, as a tern-table batch.
fn new_rows(
    batch: &RecordBatch,
    schema: &SchemaRef,
    kinds: &[Kind],
    p: &mut Progress,
) -> Result<arrow::array::RecordBatch, SqlError> {
    let n = schema.fields().len();
    let internal =
        |what: &str| SqlError::Query(DataFusionError::Internal(format!("MERGE: {what}")));
    let ids = batch
        .column(n)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| internal("row numbers are not UInt64"))?;
    let actions = batch
        .column(n + 1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| internal("actions are not Int64"))?;
    let mut keep = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if ids.is_valid(row) && !p.matched.insert(ids.value(row)) {
            return Err(SqlError::Unsupported(
                "MERGE: a target row is matched by more than one source row (the ON condition \
                 must match at most one source row per target row); nothing was changed"
                    .into(),
            ));
        }
        let a = actions.value(row);
        let kind = usize::try_from(a - 1).ok().and_then(|i| kinds.get(i));
        keep.push(match kind {
            None => true,
            Some(Kind::Updated) => {
                p.updated += 1;
                true
            }
            Some(Kind::Inserted) => {
                p.inserted += 1;
                true
            }
            Some(Kind::Deleted) => {
                p.deleted += 1;
                false
            }
        });
    }
    let keep = BooleanArray::from(keep);
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(n);
    for (i, field) in schema.fields().iter().enumerate() {
        let kept = filter(batch.column(i), &keep).map_err(DataFusionError::from)?;
        let cast = cast_with_options(&kept, field.data_type(), &options).map_err(|e| {
            SqlError::Query(DataFusionError::Plan(format!(
                "MERGE: column {}: {e}",
                field.name()
            )))
        })?;
        arrays.push(cast);
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), arrays).map_err(DataFusionError::from)?)
}
