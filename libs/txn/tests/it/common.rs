//! A deployment for the protocol's tests: a volume (folder or LocalStack) behind a
//! fault-injecting store, a SQLite metadata store and local keys, and the invariants of
//! DESIGN.md §7 checked against what is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use tern_clock::ManualClock;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_meta::{
    AccountDpo, CountingBackend, DatabaseDpo, MetaStore, SqliteBackend, SqliteOptions,
};
use tern_storage::layout::{self, AccountId, DatabaseId, DeploymentId, TableId};
use tern_storage::{
    FaultPlan, FaultStore, ObjectStore, Path, StoreConfig, StoreExt, emulator, open_store,
};
use tern_table::commit::{ChangeRecord, DictionaryOp};
use tern_table::schema::arrow_schema;
use tern_table::{ColumnDef, ColumnType, ScanRequest, TableOptions, Tables};
use tern_txn::{CrashPoints, TxnManager, TxnOptions, TxnState};

pub struct Deployment {
    /// Holds the metadata store and keys (removed on drop).
    pub _dir: tempfile::TempDir,
    pub plan: FaultPlan,
    /// The volume as the code under test sees it (faults applied).
    pub volume: Arc<dyn ObjectStore>,
    pub meta: MetaStore,
    pub keys: Arc<LocalKeyProvider>,
    pub clock: ManualClock,
    pub deployment: DeploymentId,
    pub account: AccountId,
    pub db: DatabaseId,
}

pub fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        ColumnDef {
            name: "note".into(),
            ty: ColumnType::Utf8,
            nullable: true,
        },
    ]
}

pub fn rows(ids: &[i64]) -> RecordBatch {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.to_vec())),
        Arc::new(StringArray::from(
            ids.iter().map(|i| format!("row-{i}")).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(arrow_schema(&columns()), arrays).expect("batch")
}

/// Short lock waits and quick retries, so failure cases finish fast.
pub fn quick_options() -> TxnOptions {
    TxnOptions {
        lock_timeout: Duration::from_millis(300),
        lock_poll: Duration::from_millis(10),
        log_write_attempts: 3,
        log_write_timeout: Duration::from_millis(500),
        log_retry_backoff: Duration::from_millis(5),
        ..TxnOptions::default()
    }
}

pub fn folder_volume(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    open_store(&StoreConfig {
        url: format!("file://{}", dir.join("volume").display()),
        ..Default::default()
    })
    .expect("volume")
}

pub async fn localstack_volume(test: &str) -> Arc<dyn ObjectStore> {
    emulator::localstack_bucket(&format!("txn-{test}"))
        .await
        .unwrap_or_else(|e| panic!("LocalStack is required: {e}"))
        .0
}

impl Deployment {
    /// A deployment whose volume is a folder.
    pub fn folder() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let volume = folder_volume(dir.path());
        Self::over(volume, dir)
    }

    /// A deployment whose volume is a LocalStack bucket.
    pub async fn localstack(test: &str) -> Self {
        let volume = localstack_volume(test).await;
        Self::over(volume, tempfile::tempdir().expect("temp dir"))
    }

    /// A deployment over `volume`, with an account `acme` and a database `db1`.
    pub fn over(base: Arc<dyn ObjectStore>, dir: tempfile::TempDir) -> Self {
        let meta = MetaStore::open_sqlite(dir.path().join("meta.db"), SqliteOptions::default())
            .expect("meta");
        Self::over_meta(base, dir, meta)
    }

    /// A folder deployment whose metadata store counts the rows each call reads and writes.
    pub fn counting() -> (Self, Arc<CountingBackend>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let volume = folder_volume(dir.path());
        let sqlite = SqliteBackend::open(dir.path().join("meta.db"), SqliteOptions::default())
            .expect("meta");
        let counting = Arc::new(CountingBackend::new(Arc::new(sqlite)));
        let meta = MetaStore::new(counting.clone());
        (Self::over_meta(volume, dir, meta), counting)
    }

    /// A deployment over `volume` and `meta`, with an account `acme` and a database `db1`.
    pub fn over_meta(base: Arc<dyn ObjectStore>, dir: tempfile::TempDir, meta: MetaStore) -> Self {
        let plan = FaultPlan::new();
        let volume: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(base, plan.clone()));
        let keys = Arc::new(
            LocalKeyProvider::open_or_create(&dir.path().join("keys"), SystemRandom::shared())
                .expect("keys"),
        );
        let account = AccountId::new("acme").expect("id");
        let db = DatabaseId::new("db1").expect("id");
        meta.write(|tx| {
            tx.create_account(&AccountDpo::local(account.clone(), 0))?;
            tx.create_database(&DatabaseDpo::local(db.clone(), account.clone(), "sales", 0))
        })
        .expect("account and database");
        Self {
            _dir: dir,
            plan,
            volume,
            meta,
            keys,
            clock: ManualClock::new(1_700_000_000_000),
            deployment: DeploymentId::new("d1").expect("id"),
            account,
            db,
        }
    }

    /// A new manager instance (a process start), with `crash` points.
    pub fn manager(&self, crash: CrashPoints, options: TxnOptions) -> TxnManager {
        TxnManager::open_with_crash_points(
            self.deployment.clone(),
            self.meta.clone(),
            Arc::clone(&self.volume),
            self.keys.clone(),
            self.clock.shared(),
            options,
            crash,
        )
        .expect("manager")
    }

    /// The tables, committing through `manager`.
    pub fn tables(&self, manager: &TxnManager) -> Tables {
        Tables::new(
            self.deployment.clone(),
            Arc::clone(&self.volume),
            self.meta.clone(),
            self.keys.clone(),
            self.clock.shared(),
            TableOptions::default(),
            Arc::new(manager.clone()),
        )
    }

    /// A started deployment: a manager (recovery run) and its tables.
    pub async fn start(&self, options: TxnOptions) -> (TxnManager, Tables) {
        let m = self.manager(CrashPoints::new(), options);
        m.recover().await.expect("recover");
        let t = self.tables(&m);
        (m, t)
    }

    pub async fn create_table(&self, tables: &Tables, name: &str) -> TableId {
        tables
            .create_schema(&self.db, "public")
            .await
            .expect("schema");
        tables
            .create_table(&self.db, "public", name, columns())
            .await
            .expect("create table")
    }
}

/// The ids of a table at `version` (current when `None`), sorted.
pub async fn ids(tables: &Tables, table: &TableId, version: Option<u64>) -> Vec<i64> {
    let scan = tables
        .scan(
            table,
            &ScanRequest {
                version,
                ..Default::default()
            },
        )
        .await
        .expect("scan");
    let mut out: Vec<i64> = scan
        .batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .expect("id")
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64")
                .values()
                .to_vec()
        })
        .collect();
    out.sort_unstable();
    out
}

/// The invariants of DESIGN.md §7, checked against the stored state once every
/// transaction has finished (after recovery):
///
/// (a) every visible table version has a stored log record naming it, made by the
///     transaction its version row names;
/// (b) the log record of version v of a table was stored before that of version v+1 (the
///     commit that made v+1 read v);
/// (c) a table's versions carry increasing transaction ids;
/// (e) no transaction is unfinished, no lock is held, and every file in the volume is
///     referenced by the metadata store (no orphans).
///
/// (d), nothing acknowledged lost, is checked by each test against what it was told.
pub async fn check_invariants(dep: &Deployment, manager: &TxnManager, tables: &[TableId]) {
    // (e) transactions and locks
    for t in manager.transactions().expect("transactions") {
        assert!(
            t.state.is_final(),
            "transaction {} left in {:?}",
            t.handle,
            t.state
        );
        assert!(t.locks.is_empty(), "transaction {} holds locks", t.handle);
    }
    let log_prefix = layout::volume::txlog_prefix(&dep.account);
    let put_order: BTreeMap<Path, usize> = dep
        .plan
        .puts_under(&log_prefix)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    let mut referenced = BTreeSet::new();
    for table in tables {
        let versions = dep
            .meta
            .read(|tx| tx.table_versions(table))
            .expect("versions");
        let mut last_id = 0;
        let mut last_put = None;
        for v in versions.iter().filter(|v| v.version > 0) {
            // (a)
            let id = v
                .txn_id
                .unwrap_or_else(|| panic!("{table}@{} has no transaction id", v.version));
            let record = manager
                .read_log(&dep.account, id)
                .await
                .unwrap_or_else(|e| panic!("{table}@{}: log record {id}: {e}", v.version));
            assert!(
                record.changes.iter().any(|c| matches!(c,
                    ChangeRecord::TableVersion { table: t, version, .. } if t == table && *version == v.version)),
                "log record {id} does not hold {table}@{}",
                v.version
            );
            // (c)
            assert!(
                id > last_id,
                "{table}@{}: id {id} after {last_id}",
                v.version
            );
            last_id = id;
            // (b) when the test saw every put (records rewritten by recovery of another
            // plan's store are absent from this plan's order, and skipped)
            if let Some(&at) = put_order.get(&record.path()) {
                if let Some(before) = last_put {
                    assert!(
                        at > before,
                        "{table}@{}: record {id} stored before the record of the version it read",
                        v.version
                    );
                }
                last_put = Some(at);
            }
            // (d) every version's metadata file is stored (the volume can rebuild it)
            for ep in &v.ep_files {
                dep.volume
                    .meta(&Path::from(ep.path.as_str()))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{table}@{}: metadata file {}: {e}", v.version, ep.path)
                    });
            }
            referenced.extend(v.ep_files.iter().map(|e| e.path.clone()));
        }
        let files = dep
            .meta
            .read(|tx| tx.list_micro_partitions(table))
            .expect("micro-partitions");
        referenced.extend(files.into_iter().map(|m| m.path));
    }
    // (e) orphans: every table file in the volume is referenced.
    let account_prefix = layout::volume::account_prefix(&dep.account);
    for object in dep
        .volume
        .list_sorted(&account_prefix)
        .await
        .expect("list volume")
    {
        let path = object.location.to_string();
        if object.location.prefix_matches(&log_prefix) {
            continue;
        }
        assert!(referenced.contains(&path), "orphan file {path}");
    }
}

/// Guarantee 1 of DESIGN.md §7 checked on the stored state as it is *now* — meant for the
/// moment right after a crash, before any recovery: every table of `dep`'s database that
/// is visible (created) has the stored log record of its creation, and every visible
/// version of it has the stored log record of the transaction its version row names,
/// holding that version. `reader` only reads the log (it must not have recovered).
pub async fn check_visible_have_records(dep: &Deployment, reader: &TxnManager, ctx: &str) {
    let mut records = Vec::new();
    for id in reader.log_ids(&dep.account, 0).await.expect("log ids") {
        records.push(
            reader
                .read_log(&dep.account, id)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: listed log record {id}: {e}")),
        );
    }
    let visible = dep.meta.read(|tx| tx.list_tables(&dep.db)).expect("tables");
    for table in visible {
        let created = records.iter().any(|r| {
            r.changes.iter().any(|c| {
                matches!(c, ChangeRecord::Dictionary { op: DictionaryOp::CreateTable(d), .. } if d.id == table.id)
            })
        });
        assert!(
            created,
            "{ctx}: table {} is visible without the stored log record of its creation",
            table.id
        );
        let versions = dep
            .meta
            .read(|tx| tx.table_versions(&table.id))
            .expect("versions");
        for v in versions.iter().filter(|v| v.version > 0) {
            let id = v.txn_id.unwrap_or_else(|| {
                panic!("{ctx}: {}@{} has no transaction id", table.id, v.version)
            });
            let stored = records.iter().find(|r| r.txn_id == id).unwrap_or_else(|| {
                panic!(
                    "{ctx}: {}@{} is visible without its stored log record {id}",
                    table.id, v.version
                )
            });
            assert!(
                stored
                    .changes
                    .iter()
                    .any(|c| c.table_version() == Some((&table.id, v.version))),
                "{ctx}: log record {id} does not hold {}@{}",
                table.id,
                v.version
            );
        }
    }
}

/// Wait until some transaction of `manager` is in `state` (a commit running on another
/// task reached it).
pub async fn wait_for_state(manager: &TxnManager, state: TxnState) -> u64 {
    for _ in 0..500 {
        if let Some(t) = manager
            .transactions()
            .expect("transactions")
            .into_iter()
            .find(|t| t.state == state)
        {
            return t.handle;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no transaction reached {state:?}");
}
