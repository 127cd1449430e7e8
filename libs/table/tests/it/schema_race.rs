//! A schema change and a data commit racing on one table compose: an insert that read the
//! table before another writer added a column lands on top of that version and keeps the
//! new column (its own files lack it; scans read it as nulls). Driven deterministically:
//! the other writer's `add_column` runs inside the insert's commit, after the insert read
//! the columns and wrote its files and before it takes the table lock.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_storage::Path;
use tern_storage::layout::{AccountId, DeploymentId, TableId};
use tern_table::commit::{Change, FileJournal};
use tern_table::{
    ColumnDef, ColumnType, Committed, Committer, LocalCommitter, Predicate, ScanRequest,
    TableOptions, Tables, Transaction,
};

use crate::fixture::{Fixture, folder_volume, ids, rows};

type Hook = Arc<Mutex<Option<BoxFuture<'static, ()>>>>;

/// A local committer that runs a hook (once) at the start of a commit.
struct Interleave {
    inner: LocalCommitter,
    hook: Hook,
}

impl std::fmt::Debug for Interleave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interleave")
    }
}

struct HookTxn {
    inner: Box<dyn Transaction>,
    hook: Hook,
}

#[async_trait]
impl Committer for Interleave {
    async fn begin(&self, account: &AccountId) -> tern_table::Result<Box<dyn Transaction>> {
        Ok(Box::new(HookTxn {
            inner: self.inner.begin(account).await?,
            hook: Arc::clone(&self.hook),
        }))
    }
}

#[async_trait]
impl FileJournal for HookTxn {
    async fn will_write(&mut self, path: &Path) -> tern_table::Result<()> {
        self.inner.will_write(path).await
    }

    async fn new_mp(&mut self, table: &TableId, prefix: &Path) -> tern_table::Result<u64> {
        self.inner.new_mp(table, prefix).await
    }
}

#[async_trait]
impl Transaction for HookTxn {
    async fn lock(&mut self, names: &[String]) -> tern_table::Result<()> {
        self.inner.lock(names).await
    }

    async fn commit(self: Box<Self>, changes: Vec<Change>) -> tern_table::Result<Committed> {
        let hook = self.hook.lock().expect("hook").take();
        if let Some(hook) = hook {
            hook.await;
        }
        self.inner.commit(changes).await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}

fn extra() -> ColumnDef {
    ColumnDef {
        name: "extra".into(),
        ty: ColumnType::Int64,
        nullable: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_racing_add_column_keeps_the_new_column() {
    let hook: Hook = Arc::default();
    let dir = tempfile::tempdir().expect("temp dir");
    let volume = folder_volume(dir.path());
    let f = Fixture::open_with(
        Arc::clone(&volume),
        TableOptions::default(),
        dir,
        true,
        |inner| {
            Arc::new(Interleave {
                inner,
                hook: Arc::clone(&hook),
            })
        },
    );
    let t = f.create("orders").await;
    f.tables.insert(&t, &[rows(&[1])]).await.expect("insert");

    // Another process on the same metadata store, volume and keys.
    let d1 = DeploymentId::new("d1").expect("id");
    let other = Arc::new(Tables::new(
        d1.clone(),
        Arc::clone(&volume),
        f.tables.meta().clone(),
        Arc::new(
            LocalKeyProvider::open_or_create(&f.dir.path().join("keys"), SystemRandom::shared())
                .expect("keys"),
        ),
        f.clock.shared(),
        TableOptions::default(),
        Arc::new(LocalCommitter::new(
            d1,
            f.tables.meta().clone(),
            Arc::clone(&volume),
            f.clock.shared(),
        )),
    ));
    {
        let (other, t) = (Arc::clone(&other), t.clone());
        *hook.lock().expect("hook") = Some(Box::pin(async move {
            let c = other.add_column(&t, extra()).await.expect("add column");
            assert_eq!(c.version, 2);
        }));
    }
    // Reads the columns (without the new one), writes its file, then — inside its commit,
    // before its lock — the other process adds the column.
    let c = f.tables.insert(&t, &[rows(&[2])]).await.expect("insert");
    assert!(hook.lock().expect("hook").is_none(), "the hook ran");
    assert_eq!(
        c.version, 3,
        "the insert landed on the add_column's version"
    );

    let names = |cols: &[ColumnDef]| cols.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let table = f.tables.table(&t).expect("table");
    assert!(
        table.columns.contains(&extra()),
        "the added column was lost: {:?}",
        names(&table.columns)
    );
    let v3 = f
        .tables
        .meta()
        .read(|tx| tx.get_table_version(&t, 3))
        .expect("read")
        .expect("version 3");
    assert_eq!(v3.columns, table.columns, "the version row agrees");

    // Both rows, the new column null in each (neither file has it); a predicate on the new
    // column reads files that lack it as nulls too.
    let scan = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&scan.batches), vec![1, 2]);
    for b in &scan.batches {
        let e = b.column_by_name("extra").expect("extra in the scan");
        assert_eq!(e.null_count(), e.len());
    }
    let nulls = f
        .tables
        .scan(
            &t,
            &ScanRequest {
                predicate: Some(Predicate::IsNull {
                    column: "extra".into(),
                    negated: false,
                }),
                ..Default::default()
            },
        )
        .await
        .expect("scan where extra is null");
    assert_eq!(ids(&nulls.batches), vec![1, 2]);
    let none = f
        .tables
        .scan(
            &t,
            &ScanRequest {
                predicate: Some(Predicate::eq("extra", 5i64)),
                ..Default::default()
            },
        )
        .await
        .expect("scan where extra = 5");
    assert!(ids(&none.batches).is_empty());

    // The next insert carries the column like any other.
    f.tables.insert(&t, &[rows(&[3])]).await.expect("insert");
    assert!(
        f.tables
            .table(&t)
            .expect("table")
            .columns
            .contains(&extra())
    );
}
