//! A SQL session over one database: statements parsed, DDL run on the table API,
//! queries and DML planned and run by DataFusion.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, ColumnOption, ObjectName, ObjectType, Statement,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use tern_meta::{ColumnDef, ColumnType};
use tern_storage::layout::DatabaseId;
use tern_table::Tables;

use crate::catalog::{AtVersion, DEFAULT_SCHEMA, TernCatalog};
use crate::error::SqlError;

/// The rows a statement answers, streamed. DDL answers one row with a `status` column;
/// DML one row with a `count` column (rows inserted, deleted or updated).
pub struct Answer {
    /// The columns of the rows.
    pub schema: SchemaRef,
    /// The rows, batch by batch (pulled: nothing more is read than what is consumed).
    pub stream: SendableRecordBatchStream,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Answer {
    /// Every row, collected.
    pub async fn collect(self) -> Result<Vec<RecordBatch>, SqlError> {
        use futures::TryStreamExt;
        Ok(self.stream.try_collect().await?)
    }

    /// One row with a `count` column: the rows a statement changed.
    pub(crate) fn count(n: u64) -> Self {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "count",
            DataType::UInt64,
            false,
        )]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(UInt64Array::from(vec![n]))],
        );
        let stream = futures::stream::once(async move { batch.map_err(DataFusionError::from) });
        Self {
            schema: Arc::clone(&schema),
            stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        }
    }

    fn status(message: String) -> Self {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "status",
            DataType::Utf8,
            false,
        )]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(vec![message]))],
        );
        let stream = futures::stream::once(async move { batch.map_err(DataFusionError::from) });
        Self {
            schema: Arc::clone(&schema),
            stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        }
    }
}

/// A SQL session on one database of a deployment.
///
/// Unqualified table names are looked up in schema `public`; `schema.table` names another
/// schema. Time travel: `SELECT … FROM t AT (VERSION => 3)` (Snowflake's form, see
/// [`crate::time_travel`]) or `SELECT … FROM at_version('t', 3)`.
pub struct SqlSession {
    pub(crate) tables: Arc<Tables>,
    pub(crate) db: DatabaseId,
    pub(crate) ctx: SessionContext,
}

impl std::fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSession")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// The catalog name DataFusion knows the session's database by.
const CATALOG: &str = "tern";

impl SqlSession {
    /// A session on database `db`.
    pub fn new(tables: Arc<Tables>, db: DatabaseId) -> Self {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        ctx.register_catalog(
            CATALOG,
            Arc::new(TernCatalog::new(Arc::clone(&tables), db.clone())),
        );
        ctx.register_udtf(
            "at_version",
            Arc::new(AtVersion::new(Arc::clone(&tables), db.clone())),
        );
        Self { tables, db, ctx }
    }

    /// DataFusion's context (to register more functions, or to inspect plans).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Run `sql`: one statement or several separated by `;`, run in order (each commits
    /// on its own; an error stops the rest). The last statement's rows are returned as a
    /// stream; the earlier ones' are consumed.
    pub async fn run(&self, sql: &str) -> Result<Answer, SqlError> {
        let sql = crate::time_travel::rewrite(sql)?;
        let mut statements =
            DFParser::parse_sql_with_dialect(&sql, &GenericDialect {}).map_err(SqlError::from)?;
        if statements.is_empty() {
            return Err(SqlError::Unsupported("empty statement".into()));
        }
        let last = statements.pop_back().expect("not empty");
        for s in statements {
            self.run_statement(s).await?.collect().await?;
        }
        self.run_statement(last).await
    }

    /// Run one parsed statement.
    async fn run_statement(&self, statement: DFStatement) -> Result<Answer, SqlError> {
        if let DFStatement::Statement(s) = &statement {
            if let Statement::Merge(m) = s.as_ref() {
                return self.merge(m).await;
            }
            if let Some(answer) = self.ddl(s).await? {
                return Ok(answer);
            }
        }
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        // DDL other than ours (views, external tables, in-memory tables) would live in
        // this session only: refused.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|_| SqlError::Unsupported(format!("statement {}", plan.display())))?;
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        Ok(Answer { schema, stream })
    }

    /// `(schema, table)` of a statement's table name.
    pub(crate) fn name_of(&self, name: &ObjectName) -> Result<(String, String), SqlError> {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| {
                p.as_ident()
                    .map(|i| {
                        if i.quote_style.is_some() {
                            i.value.clone()
                        } else {
                            i.value.to_lowercase()
                        }
                    })
                    .ok_or_else(|| SqlError::Unsupported(format!("table name {name}")))
            })
            .collect::<Result<_, _>>()?;
        match parts.as_slice() {
            [t] => Ok((DEFAULT_SCHEMA.to_string(), t.clone())),
            [s, t] => Ok((s.clone(), t.clone())),
            [c, s, t] if c == CATALOG => Ok((s.clone(), t.clone())),
            _ => Err(SqlError::Unsupported(format!(
                "table name {name}: use table or schema.table"
            ))),
        }
    }

    /// DDL statements, run on the table API; `None` for anything else.
    async fn ddl(&self, s: &Statement) -> Result<Option<Answer>, SqlError> {
        match s {
            Statement::CreateTable(ct) => {
                if ct.query.is_some() {
                    return Err(SqlError::Unsupported(
                        "CREATE TABLE … AS SELECT: create the table, then INSERT INTO … SELECT"
                            .into(),
                    ));
                }
                let (schema, name) = self.name_of(&ct.name)?;
                if ct.if_not_exists && self.tables.find_table(&self.db, &schema, &name).is_ok() {
                    return Ok(Some(Answer::status(format!(
                        "table {schema}.{name} already exists"
                    ))));
                }
                let mut columns = Vec::new();
                for c in &ct.columns {
                    columns.push(column_def(c)?);
                }
                for constraint in &ct.constraints {
                    if let Some(keys) = primary_key_columns(&constraint.to_string()) {
                        for k in keys {
                            if let Some(c) = columns.iter_mut().find(|c| c.name == k) {
                                c.nullable = false;
                            }
                        }
                    }
                }
                self.ensure_schema(&schema).await?;
                self.tables
                    .create_table(&self.db, &schema, &name, columns)
                    .await?;
                Ok(Some(Answer::status(format!(
                    "table {schema}.{name} created"
                ))))
            }
            Statement::CreateSchema {
                schema_name,
                if_not_exists,
                ..
            } => {
                let name = schema_name.to_string().trim_matches('"').to_lowercase();
                let exists = self
                    .tables
                    .meta()
                    .read(|tx| tx.get_schema(&self.db, &name))
                    .map_err(|e| SqlError::Table(e.into()))?
                    .is_some();
                if exists && *if_not_exists {
                    return Ok(Some(Answer::status(format!(
                        "schema {name} already exists"
                    ))));
                }
                self.tables.create_schema(&self.db, &name).await?;
                Ok(Some(Answer::status(format!("schema {name} created"))))
            }
            Statement::Drop {
                object_type: ObjectType::Table,
                if_exists,
                names,
                ..
            } => {
                // Every name is resolved before anything is dropped.
                let mut ids = Vec::new();
                for n in names {
                    let (schema, name) = self.name_of(n)?;
                    match self.tables.find_table(&self.db, &schema, &name) {
                        Ok(t) => ids.push((format!("{schema}.{name}"), t.id)),
                        Err(tern_table::Error::UnknownTable { .. }) if *if_exists => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                for (_, id) in &ids {
                    self.tables.drop_table(id).await?;
                }
                let names: Vec<String> = ids.into_iter().map(|(n, _)| n).collect();
                Ok(Some(Answer::status(format!(
                    "dropped {}",
                    if names.is_empty() {
                        "nothing".to_string()
                    } else {
                        names.join(", ")
                    }
                ))))
            }
            Statement::AlterTable(at) => {
                let (schema, name) = self.name_of(&at.name)?;
                let t = self.tables.find_table(&self.db, &schema, &name)?;
                // Every operation is checked before the first is applied.
                let mut added = Vec::new();
                for op in &at.operations {
                    match op {
                        AlterTableOperation::AddColumn {
                            column_def: c,
                            if_not_exists,
                            ..
                        } => {
                            let def = column_def(c)?;
                            if *if_not_exists && t.columns.iter().any(|x| x.name == def.name) {
                                continue;
                            }
                            if !def.nullable {
                                return Err(SqlError::Unsupported(format!(
                                    "ALTER TABLE … ADD COLUMN {} NOT NULL: an added column must be nullable (older rows have no value)",
                                    def.name
                                )));
                            }
                            added.push(def);
                        }
                        other => {
                            return Err(SqlError::Unsupported(format!(
                                "ALTER TABLE … {other}: only ADD COLUMN is supported"
                            )));
                        }
                    }
                }
                let mut version = t.current_version;
                for def in added {
                    version = self.tables.add_column(&t.id, def).await?.version;
                }
                Ok(Some(Answer::status(format!(
                    "table {schema}.{name} altered (version {version})"
                ))))
            }
            _ => Ok(None),
        }
    }

    async fn ensure_schema(&self, schema: &str) -> Result<(), SqlError> {
        let exists = self
            .tables
            .meta()
            .read(|tx| tx.get_schema(&self.db, schema))
            .map_err(|e| SqlError::Table(e.into()))?
            .is_some();
        if !exists {
            if schema != DEFAULT_SCHEMA {
                return Err(SqlError::Table(tern_table::Error::Meta(
                    tern_meta::Error::NotFound {
                        what: "schema",
                        name: schema.to_string(),
                    },
                )));
            }
            self.tables.create_schema(&self.db, schema).await?;
        }
        Ok(())
    }
}

/// The column names of a `PRIMARY KEY (a, b)` table constraint.
fn primary_key_columns(constraint: &str) -> Option<Vec<String>> {
    let upper = constraint.to_uppercase();
    let at = upper.find("PRIMARY KEY")?;
    let rest = &constraint[at + "PRIMARY KEY".len()..];
    let open = rest.find('(')?;
    let close = rest.find(')')?;
    Some(
        rest[open + 1..close]
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_lowercase())
            .collect(),
    )
}

/// A SQL column definition as a Tern column.
fn column_def(c: &datafusion::sql::sqlparser::ast::ColumnDef) -> Result<ColumnDef, SqlError> {
    let name = if c.name.quote_style.is_some() {
        c.name.value.clone()
    } else {
        c.name.value.to_lowercase()
    };
    let ty = column_type(&c.data_type.to_string()).ok_or_else(|| {
        SqlError::Unsupported(format!(
            "column {name} has type {}: Tern stores BIGINT/INT, DOUBLE/FLOAT, VARCHAR/TEXT, \
             BOOLEAN, TIMESTAMP, DATE and DECIMAL(p,s)",
            c.data_type
        ))
    })?;
    let mut nullable = true;
    for o in &c.options {
        match &o.option {
            ColumnOption::NotNull | ColumnOption::PrimaryKey(_) => nullable = false,
            ColumnOption::Null => nullable = true,
            other => {
                return Err(SqlError::Unsupported(format!(
                    "column {name} option {other}: only NULL, NOT NULL and PRIMARY KEY"
                )));
            }
        }
    }
    Ok(ColumnDef { name, ty, nullable })
}

/// The Tern type of a SQL type name.
fn column_type(sql: &str) -> Option<ColumnType> {
    let upper = sql.trim().to_uppercase();
    let (base, args) = match upper.find('(') {
        Some(i) => (
            upper[..i].trim(),
            Some(upper[i + 1..].trim_end_matches(')')),
        ),
        None => (upper.as_str(), None),
    };
    Some(match base {
        "BIGINT" | "INT" | "INTEGER" | "INT8" | "INT4" | "INT64" | "SMALLINT" | "TINYINT" => {
            ColumnType::Int64
        }
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "FLOAT8" | "FLOAT64" | "REAL" => {
            ColumnType::Float64
        }
        "VARCHAR" | "TEXT" | "STRING" | "CHAR" | "CHARACTER VARYING" | "CHARACTER" => {
            ColumnType::Utf8
        }
        "BOOLEAN" | "BOOL" => ColumnType::Bool,
        "TIMESTAMP" | "TIMESTAMPTZ" | "TIMESTAMP_NTZ" | "TIMESTAMP_TZ" | "DATETIME" => {
            ColumnType::Timestamp
        }
        "DATE" => ColumnType::Date,
        "DECIMAL" | "NUMERIC" | "NUMBER" => {
            let (p, s) = match args {
                None => (38, 0),
                Some(a) => match a.split_once(',') {
                    Some((p, s)) => (p.trim().parse().ok()?, s.trim().parse().ok()?),
                    None => (a.trim().parse().ok()?, 0),
                },
            };
            ColumnType::Decimal {
                precision: p,
                scale: s,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_types_map_to_tern_types() {
        assert_eq!(column_type("BIGINT"), Some(ColumnType::Int64));
        assert_eq!(column_type("varchar(20)"), Some(ColumnType::Utf8));
        assert_eq!(
            column_type("DECIMAL(12,2)"),
            Some(ColumnType::Decimal {
                precision: 12,
                scale: 2
            })
        );
        assert_eq!(column_type("TIMESTAMP"), Some(ColumnType::Timestamp));
        assert_eq!(column_type("BLOB"), None);
        assert_eq!(
            primary_key_columns("PRIMARY KEY (a, \"B\")"),
            Some(vec!["a".into(), "b".into()])
        );
    }
}
