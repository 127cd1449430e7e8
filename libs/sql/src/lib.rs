//! SQL over Tern tables, by Apache DataFusion.
//!
//! [`SqlSession`] runs statements on one database of a deployment:
//!
//! * queries (joins, aggregates, windows, …) are planned and run by DataFusion over
//!   [`TernTable`]s, which push projections and simple filters into micro-partition
//!   pruning, answer `count(*)`/`min`/`max` from the metadata store's statistics, and
//!   stream rows a row group at a time;
//! * `INSERT` (values or a query), `DELETE … WHERE` and `UPDATE … SET … WHERE` run as one
//!   table-API statement each, through the commit protocol (so a secondary replica refuses
//!   them as the API does: [`SqlError::is_write_refusal`]);
//! * `CREATE TABLE`, `CREATE SCHEMA`, `ALTER TABLE … ADD COLUMN`, `DROP TABLE` run on the
//!   table API's DDL;
//! * time travel: `SELECT … FROM orders AT (VERSION => 3)` or `SELECT … FROM
//!   at_version('orders', 3)`;
//! * `MERGE INTO … USING … ON … WHEN [NOT] MATCHED …` as one commit (see `merge`).
//!
//! A statement that fails changes nothing: DDL checks every part before the first
//! change, and each DML statement is one commit (files written by a failed one are
//! removed by its transaction's abort).
//!
//! The workspace's arrow/parquet are the versions DataFusion is built on, so a batch of a
//! Tern scan is handed to DataFusion as it is (and an inserted one back), never copied.

pub mod admin;
pub mod catalog;
pub mod error;
mod merge;
pub mod provider;
pub mod session;
pub mod time_travel;

pub use catalog::{AtVersion, DEFAULT_SCHEMA, TernCatalog, TernSchema};
pub use error::SqlError;
pub use provider::{TernScanExec, TernTable};
pub use session::{Answer, SqlSession};

/// DataFusion, as this crate uses it (its arrow is `datafusion::arrow`).
pub use datafusion;
