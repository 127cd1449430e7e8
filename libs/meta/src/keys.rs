//! Where each DPO lives in the key space (the table is in the crate docs).

use tern_storage::layout::{
    AccountId, DatabaseId, DeploymentId, GlobalFileRef, ShortName, TableId,
};

use crate::key::Key;

pub(crate) fn deployments() -> Key {
    Key::root("dep")
}

pub(crate) fn deployment(id: &DeploymentId) -> Key {
    deployments().str(id.as_str())
}

pub(crate) fn accounts() -> Key {
    Key::root("acct")
}

pub(crate) fn account(name: &AccountId) -> Key {
    accounts().str(name.as_str())
}

pub(crate) fn databases() -> Key {
    Key::root("db")
}

pub(crate) fn database(id: &DatabaseId) -> Key {
    databases().str(id.as_str())
}

pub(crate) fn database_names(account: &AccountId) -> Key {
    Key::root("dbname").str(account.as_str())
}

pub(crate) fn database_name(account: &AccountId, name: &str) -> Key {
    database_names(account).str(name)
}

pub(crate) fn schemas(db: &DatabaseId) -> Key {
    Key::root("schema").str(db.as_str())
}

pub(crate) fn schema(db: &DatabaseId, name: &str) -> Key {
    schemas(db).str(name)
}

pub(crate) fn all_tables() -> Key {
    Key::root("tbl")
}

/// Every row of one table (its definition, versions, micro-partitions).
pub(crate) fn table_rows(id: &TableId) -> Key {
    all_tables().str(id.as_str())
}

pub(crate) fn table(id: &TableId) -> Key {
    Key::root("tbl").str(id.as_str()).str("def")
}

pub(crate) fn table_versions(id: &TableId) -> Key {
    Key::root("tbl").str(id.as_str()).str("ver")
}

pub(crate) fn table_version(id: &TableId, version: u64) -> Key {
    table_versions(id).u64(version)
}

/// Version rows dropped by retention whose metadata files are still needed to rebuild a
/// retained version from the volume.
pub(crate) fn retired_versions(id: &TableId) -> Key {
    Key::root("tbl").str(id.as_str()).str("retired")
}

pub(crate) fn retired_version(id: &TableId, version: u64) -> Key {
    retired_versions(id).u64(version)
}

pub(crate) fn micro_partitions(id: &TableId) -> Key {
    Key::root("tbl").str(id.as_str()).str("mp")
}

pub(crate) fn micro_partition(id: &TableId, short: &ShortName) -> Key {
    micro_partitions(id).str(short.as_str())
}

/// The active micro-partitions of a table (a copy of each one's row while it is active).
pub(crate) fn active_micro_partitions(id: &TableId) -> Key {
    Key::root("tbl").str(id.as_str()).str("mpa")
}

pub(crate) fn active_micro_partition(id: &TableId, short: &ShortName) -> Key {
    active_micro_partitions(id).str(short.as_str())
}

/// Live tables of a database, ordered by schema then name.
pub(crate) fn table_names(db: &DatabaseId) -> Key {
    Key::root("tblname").str(db.as_str())
}

pub(crate) fn table_names_in_schema(db: &DatabaseId, schema: &str) -> Key {
    table_names(db).str(schema)
}

pub(crate) fn table_name(db: &DatabaseId, schema: &str, name: &str) -> Key {
    table_names_in_schema(db, schema).str(name)
}

/// A table's micro-partition by global reference: references are unique per table (a
/// deployment may hold the same group's files twice, e.g. a replica made local and a new
/// replica of the same group).
pub(crate) fn global_file(table: &TableId, r: &GlobalFileRef) -> Key {
    Key::root("mpg")
        .str(table.as_str())
        .str(r.origin.as_str())
        .str(r.short.as_str())
}

pub(crate) fn global_id(kind: &str, global_id: &str) -> Key {
    Key::root("gid").str(kind).str(global_id)
}

pub(crate) fn sequence(name: &str) -> Key {
    Key::root("seq").str(name)
}

pub(crate) fn dictionary_changes(db: &DatabaseId) -> Key {
    Key::root("dict").str(db.as_str())
}

pub(crate) fn dictionary_change(db: &DatabaseId, seq: u64) -> Key {
    dictionary_changes(db).u64(seq)
}
