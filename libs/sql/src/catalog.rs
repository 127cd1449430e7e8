//! A database's schemas and tables as DataFusion's catalog, looked up in the metadata
//! store when a statement names them (so a table made by another statement, the API or
//! replication is seen at once, at its current version).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, SchemaProvider, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::Expr;
use tern_storage::layout::DatabaseId;
use tern_table::Tables;

use crate::provider::{TernTable, external};

/// The schema unqualified names are looked up in.
pub const DEFAULT_SCHEMA: &str = "public";

/// One database as a DataFusion catalog.
#[derive(Debug)]
pub struct TernCatalog {
    tables: Arc<Tables>,
    db: DatabaseId,
}

impl TernCatalog {
    /// The catalog of `db`.
    pub fn new(tables: Arc<Tables>, db: DatabaseId) -> Self {
        Self { tables, db }
    }
}

impl CatalogProvider for TernCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.tables
            .meta()
            .read(|tx| tx.list_schemas(&self.db))
            .map(|s| s.into_iter().map(|s| s.name).collect())
            .unwrap_or_default()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let exists = self
            .tables
            .meta()
            .read(|tx| tx.get_schema(&self.db, name))
            .ok()
            .flatten()
            .is_some();
        exists.then(|| {
            Arc::new(TernSchema {
                tables: Arc::clone(&self.tables),
                db: self.db.clone(),
                schema: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

/// One schema of a database.
#[derive(Debug)]
pub struct TernSchema {
    tables: Arc<Tables>,
    db: DatabaseId,
    schema: String,
}

#[async_trait]
impl SchemaProvider for TernSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables
            .meta()
            .read(|tx| tx.list_tables(&self.db))
            .map(|ts| {
                ts.into_iter()
                    .filter(|t| t.schema == self.schema && !t.dropped)
                    .map(|t| t.name)
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        match self.tables.find_table(&self.db, &self.schema, name) {
            Ok(t) => Ok(Some(Arc::new(
                TernTable::open(Arc::clone(&self.tables), &t.id, None).map_err(external)?,
            ))),
            Err(tern_table::Error::UnknownTable { .. }) => Ok(None),
            Err(tern_table::Error::Meta(tern_meta::Error::NotFound { .. })) => Ok(None),
            Err(e) => Err(external(e)),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.find_table(&self.db, &self.schema, name).is_ok()
    }
}

/// `at_version('table', n)`: the table as it was at version `n` (time travel), for as
/// long as that version is retained. `'schema.table'` names a table of another schema.
#[derive(Debug)]
pub struct AtVersion {
    tables: Arc<Tables>,
    db: DatabaseId,
}

impl AtVersion {
    /// The function over `db`'s tables.
    pub fn new(tables: Arc<Tables>, db: DatabaseId) -> Self {
        Self { tables, db }
    }
}

impl TableFunctionImpl for AtVersion {
    fn call_with_args(
        &self,
        args: TableFunctionArgs<'_, '_>,
    ) -> datafusion::common::Result<Arc<dyn TableProvider>> {
        let usage = || {
            DataFusionError::Plan(
                "at_version takes a table name and a version: at_version('orders', 3)".into(),
            )
        };
        let [name, version] = args.exprs() else {
            return Err(usage());
        };
        let name = match name {
            Expr::Literal(ScalarValue::Utf8(Some(s)), _) => s.clone(),
            _ => return Err(usage()),
        };
        let version = match version {
            Expr::Literal(v, _) => match v.cast_to(&datafusion::arrow::datatypes::DataType::UInt64)
            {
                Ok(ScalarValue::UInt64(Some(v))) => v,
                _ => return Err(usage()),
            },
            _ => return Err(usage()),
        };
        let (schema, table) = match name.split_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => (DEFAULT_SCHEMA.to_string(), name.clone()),
        };
        let t = self
            .tables
            .find_table(&self.db, &schema, &table)
            .map_err(external)?;
        Ok(Arc::new(
            TernTable::open(Arc::clone(&self.tables), &t.id, Some(version)).map_err(external)?,
        ))
    }
}
