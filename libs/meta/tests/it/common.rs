//! Fixtures shared by the scenarios.

use tempfile::TempDir;
use tern_meta::{
    AccountDpo, AccountKind, ColumnDef, ColumnStats, ColumnType, DatabaseDpo, DatabaseRole,
    EpFileRef, MetaStore, MicroPartitionDpo, Result, Scalar, SchemaDpo, SqliteOptions, TableDpo,
    TableVersionDpo,
};
use tern_storage::layout::{
    AccountId, DatabaseId, DeploymentId, GlobalFileRef, ShortName, TableId,
};

/// A fresh SQLite store with the production settings, in its own directory.
pub fn sqlite_store() -> (MetaStore, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MetaStore::open_sqlite(dir.path().join("meta.db"), SqliteOptions::default())
        .expect("open store");
    (store, dir)
}

pub fn account() -> AccountId {
    AccountId::new("acme").unwrap()
}

pub fn db_id() -> DatabaseId {
    DatabaseId::new("db1").unwrap()
}

pub fn tid(s: &str) -> TableId {
    TableId::new(s).unwrap()
}

pub fn short(s: &str) -> ShortName {
    ShortName::new(s).unwrap()
}

pub fn shorts(names: &[&str]) -> Vec<ShortName> {
    names.iter().map(|s| short(s)).collect()
}

pub fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        ColumnDef {
            name: "price".into(),
            ty: ColumnType::Decimal {
                precision: 10,
                scale: 2,
            },
            nullable: true,
        },
    ]
}

pub fn database(id: &str, name: &str) -> DatabaseDpo {
    DatabaseDpo {
        id: DatabaseId::new(id).unwrap(),
        account: account(),
        name: name.into(),
        global_id: None,
        replication_group: None,
        role: DatabaseRole::Local,
        epoch: 0,
        created_at_ms: 1_000,
        dropped: false,
    }
}

pub fn table(id: &str, name: &str) -> TableDpo {
    TableDpo {
        id: tid(id),
        database: db_id(),
        schema: "public".into(),
        name: name.into(),
        columns: columns(),
        master_key_ref: format!("tmk/{id}"),
        current_version: 0,
        retention_ms: None,
        created_at_ms: 1_000,
        dropped: false,
    }
}

/// Account `acme`, database `db1`, schema `public` (each if missing), then table `id`.
pub fn setup_table(store: &MetaStore, id: &str) -> TableId {
    store
        .write(|tx| {
            if tx.get_account(&account())?.is_none() {
                tx.create_account(&AccountDpo {
                    name: account(),
                    kind: AccountKind::Local,
                    created_at_ms: 1_000,
                    global_id: None,
                })?;
            }
            if tx.get_database(&db_id())?.is_none() {
                tx.create_database(&database("db1", "sales"))?;
            }
            if tx.get_schema(&db_id(), "public")?.is_none() {
                tx.create_schema(&SchemaDpo {
                    database: db_id(),
                    name: "public".into(),
                    created_at_ms: 1_000,
                })?;
            }
            tx.create_table(&table(id, id))
        })
        .expect("setup table");
    tid(id)
}

/// A micro-partition of `table` named `name`, added at `version`, from deployment `d1`.
pub fn mp(table: &TableId, name: &str, version: u64) -> MicroPartitionDpo {
    MicroPartitionDpo {
        table: table.clone(),
        short: short(name),
        global_ref: GlobalFileRef::new(DeploymentId::new("d1").unwrap(), short(name)),
        rows: 100,
        bytes: 4096,
        stats: vec![ColumnStats {
            column: "id".into(),
            min: Some(Scalar::Int64(0)),
            max: Some(Scalar::Int64(99)),
            null_count: 0,
        }],
        added_version: version,
        removed_version: None,
        path: format!("acct/acme/db/db1/tbl/{table}/mp/{name}.mp"),
        key_ref: format!("tmk/{table}"),
    }
}

/// The row of `version`, with one EP file numbered like the version.
pub fn version_row(table: &TableId, version: u64) -> TableVersionDpo {
    TableVersionDpo {
        table: table.clone(),
        version,
        ep_files: vec![EpFileRef {
            seq: version,
            path: format!("acct/acme/db/db1/tbl/{table}/ep/{version:020}.ep"),
        }],
        committed_at_ms: 2_000 + i64::try_from(version).unwrap(),
        txn_id: Some(version),
        origin: None,
        columns: columns(),
        added: Vec::new(),
        removed: Vec::new(),
    }
}

/// Commit version `expected + 1` adding `add` and removing `remove`.
pub fn commit(
    store: &MetaStore,
    table: &TableId,
    expected: u64,
    add: &[&str],
    remove: &[&str],
) -> Result<()> {
    let v = expected + 1;
    let adds: Vec<_> = add.iter().map(|n| mp(table, n, v)).collect();
    let removes = shorts(remove);
    store.write(|tx| {
        tx.commit_table_version(table, expected, version_row(table, v), &adds, &removes)
    })
}

/// The short names active at `version`, in order.
pub fn active(store: &MetaStore, table: &TableId, version: u64) -> Vec<String> {
    store
        .read(|tx| tx.active_micro_partitions(table, version))
        .expect("active micro-partitions")
        .into_iter()
        .map(|m| m.short.to_string())
        .collect()
}
