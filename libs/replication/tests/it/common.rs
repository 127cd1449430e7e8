use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use tern_messaging::MessagingConfig;
use tern_meta::{ColumnDef, ColumnType};
use tern_replication::ReplicationConfig;
use tern_replication::local::{LocalDeployment, LocalOptions};
use tern_replication::replica_table_id;
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_table::ScanRequest;
use tern_txn::TxnOptions;

pub type Node = LocalDeployment;

pub fn repl_config() -> ReplicationConfig {
    ReplicationConfig {
        ship_interval: Duration::from_millis(50),
        control_interval: Duration::from_millis(100),
        ..ReplicationConfig::default()
    }
}

pub fn messaging_config() -> MessagingConfig {
    MessagingConfig {
        poll_interval: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(200),
        // A killed processor's messages are taken up again after this.
        lease: Duration::from_secs(3),
        ..MessagingConfig::default()
    }
}

pub async fn open(root: &FsPath, id: &str, join: Option<&FsPath>) -> Node {
    open_with(root, id, join, repl_config()).await
}

/// Kills `node` (every task aborted and awaited, as a crash), opens it again from its
/// folders and starts it linked to `peer`.
pub async fn restart(mut node: Node, root: &FsPath, join: Option<&FsPath>, peer: &Node) -> Node {
    let id = node.id.to_string();
    node.kill().await;
    let mut again = open(root, &id, join).await;
    again.start(&[peer]);
    again
}

pub async fn open_with(
    root: &FsPath,
    id: &str,
    join: Option<&FsPath>,
    replication: ReplicationConfig,
) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    LocalDeployment::open(
        root,
        id,
        join,
        LocalOptions {
            replication,
            messaging: messaging_config(),
            txn: TxnOptions {
                lock_timeout: Duration::from_secs(10),
                lock_poll: Duration::from_millis(5),
                ..TxnOptions::default()
            },
        },
    )
    .await
    .unwrap()
}

pub async fn link(a: &Node, b: &Node) {
    tern_replication::local::link(a, b).await.unwrap();
}

/// The rows of `table` (at `version`), sorted, as text.
pub async fn rows(n: &Node, table: &TableId, version: Option<u64>) -> Vec<String> {
    try_rows(n, table, version).await.unwrap()
}

/// [`rows`], or the scan's error: for conditions polled while the table may change under
/// the scan (a rewind drops the version it started reading).
pub async fn try_rows(
    n: &Node,
    table: &TableId,
    version: Option<u64>,
) -> tern_table::Result<Vec<String>> {
    let r = n
        .tables
        .scan(
            table,
            &ScanRequest {
                version,
                ..ScanRequest::default()
            },
        )
        .await?;
    let mut out = Vec::new();
    for b in &r.batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = (0..b.num_columns())
                .map(|c| arrow::util::display::array_value_to_string(b.column(c), i).unwrap())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    Ok(out)
}

/// The current version of a live table.
pub fn ver(n: &Node, table: &TableId) -> Option<u64> {
    n.version(table).unwrap()
}

pub fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        ColumnDef {
            name: "name".into(),
            ty: ColumnType::Utf8,
            nullable: true,
        },
        ColumnDef {
            name: "v".into(),
            ty: ColumnType::Float64,
            nullable: true,
        },
    ]
}

pub fn batch(ids: std::ops::Range<i64>, tag: &str) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("v", DataType::Float64, true),
    ]));
    let ids: Vec<i64> = ids.collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("{tag}-{i}")).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.iter().map(|i| *i as f64 * 0.5).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Polls `f` until it is true or `limit` passes (then panics with `what`).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a test waits for replication to get somewhere.
pub const WAIT: Duration = Duration::from_secs(120);

/// `d1` with a global account `a1` holding database `sales` (schema `public`), and the
/// account group id.
pub async fn primary(d1: &Node) -> (AccountId, DatabaseId, String) {
    let a1 = d1.create_account("a1").unwrap();
    let db = d1.create_database(&a1, "sales").unwrap();
    d1.tables.create_schema(&db, "public").await.unwrap();
    let group = d1.repl.set_account_global(&a1, None).unwrap();
    (a1, db, group)
}

/// Waits until `node` knows a replica of `group` on `on`.
pub async fn knows(node: &Node, group: &str, on: &str) {
    let on = DeploymentId::new(on).unwrap();
    eventually(
        WAIT,
        &format!("{} to learn of {group} on {on}", node.id),
        || async {
            node.repl
                .known_entities()
                .unwrap()
                .iter()
                .any(|e| e.group.as_deref() == Some(group) && e.deployment == on)
        },
    )
    .await;
}

/// Waits until every table of the primary database is on `replica` at the primary's version.
pub async fn caught_up(primary: &Node, replica: &Node, tables: &[TableId]) {
    for t in tables {
        let want = ver(primary, t).unwrap();
        let rid = replica_table_id(&primary.id, t);
        eventually(
            WAIT,
            &format!("{} to reach {rid}@{want}", replica.id),
            || async { ver(replica, &rid) == Some(want) },
        )
        .await;
    }
}

pub async fn same_rows(primary: &Node, replica: &Node, tables: &[TableId]) {
    for t in tables {
        let rid = replica_table_id(&primary.id, t);
        assert_eq!(
            rows(replica, &rid, None).await,
            rows(primary, t, None).await,
            "{} differs from the primary's {t}",
            replica.id
        );
    }
}

/// Deployment `id` (joining the GMK in `keys`) whose replication bucket — what it
/// reads of its peers' messages and inbound files — fails as `plan` says.
pub async fn open_through(
    root: &FsPath,
    id: &str,
    keys: &FsPath,
    plan: &tern_storage::FaultPlan,
    replication: ReplicationConfig,
) -> Node {
    let bucket: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(tern_storage::FaultStore::new(
            tern_replication::local::folder(&root.join(id).join("repl")).unwrap(),
            plan.clone(),
        ));
    let volume = tern_replication::local::folder(&root.join(id).join("volume")).unwrap();
    LocalDeployment::open_on(
        root,
        id,
        Some(keys),
        tern_replication::local::LocalOptions {
            replication,
            messaging: messaging_config(),
            txn: tern_txn::TxnOptions::default(),
        },
        volume,
        bucket,
    )
    .await
    .unwrap()
}

/// [`primary`], and an empty table `t` (schema `public`) in its database `sales`.
pub async fn primary_with_t(d1: &Node) -> (AccountId, DatabaseId, String, TableId) {
    let (a1, db, account_group) = primary(d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", "t", columns())
        .await
        .unwrap();
    (a1, db, account_group, t)
}

/// `d1`'s database `sales` made global with a table `t` of ten rows, replicated to `d2`
/// (both started) and caught up: d1's account, database and table.
pub async fn replicated_table(d1: &Node, d2: &Node) -> (AccountId, DatabaseId, TableId) {
    let (a1, db, account_group, t) = primary_with_t(d1).await;
    d1.tables.insert(&t, &[batch(0..10, "a")]).await.unwrap();
    replicate(d1, &a1, d2, &account_group).await;
    caught_up(d1, d2, std::slice::from_ref(&t)).await;
    (a1, db, t)
}

/// Makes `sales` of `a1` on `primary` global and creates its replica in a new global
/// account `a2` of `replica`.
pub async fn replicate(primary: &Node, a1: &AccountId, replica: &Node, account_group: &str) {
    let group = primary.repl.enable_replication(a1, "sales").unwrap();
    let a2 = replica.create_account("a2").unwrap();
    replica
        .repl
        .set_account_global(&a2, Some(account_group))
        .unwrap();
    knows(replica, &group, primary.id.as_str()).await;
    replica
        .repl
        .create_replica(&a2, "sales", &group, None)
        .unwrap();
}

/// Makes `primary`'s database `sales` of `a1` global and a replica of it in a new global
/// account (of `account_group`) on each of `replicas`; its database group.
pub async fn replicate_to(
    primary: &Node,
    a1: &AccountId,
    account_group: &str,
    replicas: &[(&Node, &str)],
) -> String {
    let group = primary.repl.enable_replication(a1, "sales").unwrap();
    for (n, acct) in replicas {
        let a = n.create_account(acct).unwrap();
        n.repl.set_account_global(&a, Some(account_group)).unwrap();
        knows(n, &group, primary.id.as_str()).await;
        n.repl.create_replica(&a, "sales", &group, None).unwrap();
    }
    group
}

/// Links and starts `d1`, `d2`, `d3`, makes `d1` the primary of database `sales` (account
/// a1) with table `table`, replicated to a2@d2 and a3@d3: a1 and the table.
pub async fn group_of_three(
    d1: &mut Node,
    d2: &mut Node,
    d3: &mut Node,
    table: &str,
) -> (AccountId, TableId) {
    link(d1, d2).await;
    link(d1, d3).await;
    link(d2, d3).await;
    d1.start(&[&*d2, &*d3]);
    d2.start(&[&*d1, &*d3]);
    d3.start(&[&*d1, &*d2]);
    let (a1, db, account_group) = primary(d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", table, columns())
        .await
        .unwrap();
    replicate_to(d1, &a1, &account_group, &[(&*d2, "a2"), (&*d3, "a3")]).await;
    (a1, t)
}

/// Every object under `prefix` of `store`, sorted.
pub async fn objects(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: &str,
) -> Vec<String> {
    use futures::TryStreamExt as _;
    let p = object_store::path::Path::from(prefix);
    let mut out: Vec<String> = store
        .list(Some(&p))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap_or_default();
    out.sort();
    out
}

/// A primary `d1` (global account `a1`, database `sales` with schema `public` and an empty
/// table `t`) and a deployment `d2` sharing its GMK, linked and running; `d2` runs with
/// `replication`.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub keys: std::path::PathBuf,
    pub d1: Node,
    pub d2: Node,
    pub a1: AccountId,
    pub db: DatabaseId,
    pub account_group: String,
    pub t: TableId,
}

pub async fn pair(replication: ReplicationConfig) -> Pair {
    pair_of(repl_config(), replication).await
}

/// [`pair`] with both deployments on `replication`.
pub async fn pair_with(replication: ReplicationConfig) -> Pair {
    pair_of(replication.clone(), replication).await
}

async fn pair_of(first: ReplicationConfig, replication: ReplicationConfig) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let d1 = open_with(dir.path(), "d1", None, first).await;
    let keys = dir.path().join("d1").join("keys");
    let d2 = open_with(dir.path(), "d2", Some(&keys), replication).await;
    pair_from(dir, keys, d1, d2).await
}

/// [`pair`] of deployments opened by the caller under `dir` (`d2` joined `keys`).
pub async fn pair_from(
    dir: tempfile::TempDir,
    keys: std::path::PathBuf,
    mut d1: Node,
    mut d2: Node,
) -> Pair {
    link(&d1, &d2).await;
    d1.start(&[&d2]);
    d2.start(&[&d1]);
    let (a1, db, account_group, t) = primary_with_t(&d1).await;
    Pair {
        dir,
        keys,
        d1,
        d2,
        a1,
        db,
        account_group,
        t,
    }
}
