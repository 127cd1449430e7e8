//! Tern's metadata store: the deployment's mutable, transactional dictionary (DESIGN.md
//! §3, §6), separate from the data in object storage.
//!
//! Two layers:
//!
//! * [`Backend`] / [`KvTxn`]: an ordered key-value store with serializable transactions
//!   (FoundationDB-style: get, put, delete, range scan). [`SqliteBackend`] is the embedded
//!   default (one file, WAL); [`MemoryBackend`] is for tests of the layers above. A shared
//!   backend (PostgreSQL, for several `ternd` workers) only has to implement this trait.
//! * [`MetaStore`] / [`MetaTxn`]: the typed dictionary objects ([`dpo`]) over any backend —
//!   deployments, accounts, databases, schemas, tables, table versions, the
//!   micro-partition index, the global id index and sequences — with uniqueness and
//!   reference checks that return typed errors.
//!
//! ```
//! # fn main() -> tern_meta::Result<()> {
//! use tern_meta::{MetaStore, SqliteOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let store = MetaStore::open_sqlite(dir.path().join("meta.db"), SqliteOptions::default())?;
//! let n = store.write(|tx| tx.next_sequence("short-names"))?;
//! assert_eq!(n, 1);
//! assert_eq!(store.read(|tx| tx.current_sequence("short-names"))?, 1);
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! * **Atomic**: everything one [`MetaStore::write`] closure does commits together or not
//!   at all. A closure that returns an error or panics leaves the previous state. A table
//!   version commit (version row + micro-partitions added and removed + global-reference
//!   index + the table's current version) is one transaction, so readers see a table at
//!   version N or N+1, never in between.
//! * **Isolation**: write transactions are serializable (one writer at a time per store
//!   file, across processes); a [`MetaStore::read`] sees one consistent snapshot and never
//!   blocks or is blocked by the writer. Read-then-write races between transactions are
//!   caught where they matter by compare-and-swap ([`Error::VersionConflict`] on the
//!   table version, [`Error::StaleEpoch`] on role epochs).
//! * **Crash**: after a crash (process killed, or power loss) the store reopens at its
//!   last committed state. With the default [`Synchronous::Full`] every commit that
//!   returned `Ok` survives power loss; see [`backend::sqlite`] for why that is the default.
//! * **Several processes** may share one SQLite file on a local file system.
//! * **Retries**: a write closure may run more than once (lock conflicts with another
//!   process are retried with backoff): keep side effects out of it.
//! * **Formats**: every value is JSON in a versioned envelope (`{"v":1,"d":…}`); reading an
//!   unknown version is [`Error::UnknownFormatVersion`]. The SQLite file has a schema
//!   version and migrations; a newer file is [`Error::UnknownSchemaVersion`].
//!
//! # Key space
//!
//! Keys are ordered tuples ([`Key`]: a tag byte per element; strings escaped and
//! NUL-terminated, numbers 8-byte big-endian), so every listing below is a range scan in
//! key order.
//!
//! | key | value | notes |
//! |---|---|---|
//! | `dep/<deployment>` | [`DeploymentDpo`] | the deployment group |
//! | `acct/<account>` | [`AccountDpo`] | |
//! | `db/<db-id>` | [`DatabaseDpo`] | dropped ones kept |
//! | `dbname/<account>/<name>` | → db id | databases not dropped: unique `(account, name)` |
//! | `schema/<db-id>/<schema>` | [`SchemaDpo`] | |
//! | `tbl/<table-id>/def` | [`TableDpo`] | dropped ones kept |
//! | `tbl/<table-id>/ver/<u64>` | [`TableVersionDpo`] | retained versions; row 0 = creation |
//! | `tbl/<table-id>/retired/<u64>` | [`TableVersionDpo`] | dropped by retention, metadata files still needed |
//! | `tbl/<table-id>/mp/<short>` | [`MicroPartitionDpo`] | active and removed, until forgotten |
//! | `tbl/<table-id>/mpa/<short>` | [`MicroPartitionDpo`] | copy of the row while active: the active set reads only these |
//! | `tblname/<db-id>/<schema>/<name>` | → table id | tables not dropped: unique name |
//! | `mpg/<origin>/<short>` | → (table, short) | global file reference index |
//! | `gid/<kind>/<global-id>` | → local key | global id index |
//! | `dict/<db>/<u64>` | DictionaryChangeDpo | a database's DDL log, in order |
//! | `seq/<name>` | last value issued | sequences |
//!
//! Namespaces `txn`, `msg`, `chan`, `mon` are reserved for the transaction, messaging and
//! monitoring DPOs of later layers.
//! Namespaces `amk` (`amk/<account>/<version>`: account master keys, wrapped) and
//! `keychain` (the key chain version) belong to `tern-table`'s `account_key` module.

#![forbid(unsafe_code)]

pub mod backend;
mod ddl_log;
mod dictionary;
pub mod dpo;
mod envelope;
pub mod error;
mod key;
mod keys;
mod store;
mod versions;

pub use backend::counting::{CountingBackend, KvCounts};
pub use backend::memory::MemoryBackend;
pub use backend::sqlite::{SCHEMA_VERSION, SqliteBackend, SqliteOptions, Synchronous};
pub use backend::{Backend, KvTxn};
pub use dpo::{
    AccountDpo, AccountKind, ColumnDef, ColumnStats, ColumnType, DatabaseDpo, DatabaseRole,
    DeploymentDpo, DictionaryChange, DictionaryChangeDpo, EpFileRef, MicroPartitionDpo, Scalar,
    SchemaDpo, TableDpo, TableVersionDpo,
};
pub use envelope::{Dpo, decode_versioned};
pub use error::{Error, Result};
pub use key::{Element, Key};
pub use store::{MetaStore, MetaTxn};
pub use versions::RolledBack;
