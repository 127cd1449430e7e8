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
use tern_storage::layout::TableId;
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
    let r = n
        .tables
        .scan(
            table,
            &ScanRequest {
                version,
                ..ScanRequest::default()
            },
        )
        .await
        .unwrap();
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
    out
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
