//! Streamed scans (limit pushed down), streamed inserts and streamed DML rewrites.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use tern_storage::layout::TableId;
use tern_storage::{FaultPlan, FaultStore, Operation, Path};
use tern_table::mp::WriteOptions;
use tern_table::{Error, Predicate, ScanRequest, TableOptions};

use crate::fixture::{self, Fixture, ids, rows};

fn small_files() -> TableOptions {
    TableOptions {
        write: WriteOptions {
            target_bytes: 4 << 10,
            row_group_rows: 64,
            zstd_level: 1,
        },
        ..Default::default()
    }
}

fn counted(dir: &std::path::Path) -> (Arc<dyn ObjectStore>, FaultPlan) {
    let plan = FaultPlan::new();
    let volume: Arc<dyn ObjectStore> =
        Arc::new(FaultStore::new(fixture::folder_volume(dir), plan.clone()));
    (volume, plan)
}

/// 20 micro-partitions of 100 rows each (ids 0..2000).
async fn twenty_files(f: &Fixture) -> TableId {
    let t = f.create("many").await;
    for k in 0..20i64 {
        let ids: Vec<i64> = (k * 100..k * 100 + 100).collect();
        f.tables.insert(&t, &[rows(&ids)]).await.expect("insert");
    }
    t
}

/// How many of the table's micro-partitions were read since the counts were reset.
fn files_touched(f: &Fixture, plan: &FaultPlan, t: &TableId) -> usize {
    let current = f.tables.table(t).expect("table").current_version;
    let files = f
        .tables
        .meta()
        .read(|tx| tx.active_micro_partitions(t, current))
        .expect("files");
    files
        .iter()
        .filter(|m| plan.calls_under(Operation::Get, &Path::from(m.path.as_str())) > 0)
        .count()
}

#[tokio::test]
async fn a_limit_scan_opens_only_the_files_it_needs() {
    let dir = tempfile::tempdir().expect("dir");
    let (volume, plan) = counted(dir.path());
    let f = Fixture::new(volume, TableOptions::default());
    let t = twenty_files(&f).await;

    plan.reset_counts();
    let scan = f
        .tables
        .scan_stream(&t, &ScanRequest::default(), Some(10))
        .await
        .expect("scan");
    assert_eq!((scan.files_total, scan.files_planned), (20, 1));
    assert_eq!(scan.rows_total, Some(2000));
    let batches: Vec<RecordBatch> = scan.batches.try_collect().await.expect("rows");
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
    assert_eq!(files_touched(&f, &plan, &t), 1, "limit 10 of 20 files");

    // With a predicate the row counts do not say which files suffice: reading stops
    // once the rows are there, a few files (those opened ahead) at most.
    plan.reset_counts();
    let request = ScanRequest {
        predicate: Some(Predicate::Cmp {
            column: "id".into(),
            op: tern_table::CmpOp::GtEq,
            value: tern_table::Scalar::Int64(0),
        }),
        ..Default::default()
    };
    let scan = f
        .tables
        .scan_stream(&t, &request, Some(10))
        .await
        .expect("scan");
    let read = scan.files_read_counter();
    let batches: Vec<RecordBatch> = scan.batches.try_collect().await.expect("rows");
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
    let concurrency = TableOptions::default().read_concurrency;
    let touched = files_touched(&f, &plan, &t);
    assert!(
        touched <= concurrency + 1 && read() <= concurrency + 1,
        "{touched} files read ({} opened) for 10 rows, {concurrency} opened at once",
        read()
    );

    // Without a limit every file is read, in full.
    plan.reset_counts();
    let all = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&all.batches), (0..2000).collect::<Vec<_>>());
    assert_eq!(files_touched(&f, &plan, &t), 20);
}

#[tokio::test]
async fn a_streamed_scan_yields_rows_before_reading_every_file() {
    let dir = tempfile::tempdir().expect("dir");
    let (volume, plan) = counted(dir.path());
    let f = Fixture::new(volume, TableOptions::default());
    let t = twenty_files(&f).await;
    plan.reset_counts();
    let mut scan = f
        .tables
        .scan_stream(&t, &ScanRequest::default(), None)
        .await
        .expect("scan");
    let first = scan.batches.next().await.expect("a batch").expect("rows");
    assert!(first.num_rows() > 0);
    // The first rows are out while most files have not been opened: a slow consumer
    // holds the reading back (at most `read_concurrency` files opened ahead).
    let touched = files_touched(&f, &plan, &t);
    assert!(
        touched <= TableOptions::default().read_concurrency + 1,
        "{touched} files read for the first batch"
    );
    let rest: Vec<RecordBatch> = scan.batches.try_collect().await.expect("rows");
    let n: usize = rest.iter().map(RecordBatch::num_rows).sum::<usize>() + first.num_rows();
    assert_eq!(n, 2000);
}

#[tokio::test]
async fn a_streamed_insert_stores_files_while_rows_still_come_and_commits_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (volume, plan) = counted(dir.path());
    let f = Fixture::new(volume, small_files());
    let t = f.create("load").await;
    let before = f.tables.table(&t).expect("table").current_version;
    plan.reset_counts();
    let puts_seen = Arc::new(AtomicUsize::new(0));
    let (p, seen) = (plan.clone(), Arc::clone(&puts_seen));
    let input = futures::stream::iter(0..40i64).map(move |k| {
        // What the volume holds when the last batch is produced.
        if k == 39 {
            seen.store(p.calls(Operation::Put) as usize, Ordering::SeqCst);
        }
        let ids: Vec<i64> = (k * 100..k * 100 + 100).collect();
        Ok(rows(&ids))
    });
    let info = f.tables.insert_stream(&t, input).await.expect("load");
    assert!(info.committed);
    assert_eq!(info.rows_affected, 4000);
    assert_eq!(info.version, before + 1, "one commit for the whole stream");
    assert!(info.files_added > 2, "{} files", info.files_added);
    assert!(
        puts_seen.load(Ordering::SeqCst) >= 2,
        "files are stored as they fill, before the input ends"
    );
    let all = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&all.batches), (0..4000).collect::<Vec<_>>());
}

async fn volume_files(volume: &Arc<dyn ObjectStore>) -> Vec<String> {
    let mut out: Vec<String> = volume
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    out.sort();
    out
}

#[tokio::test]
async fn a_streamed_insert_that_fails_half_way_changes_nothing_and_leaves_no_files() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(fixture::folder_volume(dir.path()), small_files());
    let t = f.create("load").await;
    f.tables
        .insert(&t, &[rows(&[1, 2, 3])])
        .await
        .expect("insert");
    let version = f.tables.table(&t).expect("table").current_version;
    let files_before = volume_files(&f.volume).await;
    let input = futures::stream::iter(0..20i64).map(|k| {
        if k == 15 {
            return Err(Error::BadInput {
                source_name: "test stream".into(),
                line: Some(1501),
                detail: "not a number".into(),
            });
        }
        let ids: Vec<i64> = (1000 + k * 100..1000 + k * 100 + 100).collect();
        Ok(rows(&ids))
    });
    match f.tables.insert_stream(&t, input).await {
        Err(Error::BadInput { line, .. }) => assert_eq!(line, Some(1501)),
        other => panic!("expected the input's error, got {other:?}"),
    }
    assert_eq!(f.tables.table(&t).expect("table").current_version, version);
    let all = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&all.batches), vec![1, 2, 3]);
    assert_eq!(
        volume_files(&f.volume).await,
        files_before,
        "no orphan files"
    );
}

#[tokio::test]
async fn streamed_rewrites_keep_every_surviving_row() {
    let dir = tempfile::tempdir().expect("dir");
    let (volume, plan) = counted(dir.path());
    let f = Fixture::new(volume, small_files());
    let t = f.create("dml").await;
    let all_ids: Vec<i64> = (0..3000).collect();
    f.tables
        .insert(&t, &[rows(&all_ids)])
        .await
        .expect("insert");
    let files = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan")
        .files_total;
    assert!(files > 4, "{files} files");
    // Every third row of the middle third.
    let pred = Predicate::And(vec![Predicate::Between {
        column: "id".into(),
        low: tern_table::Scalar::Int64(1000),
        high: tern_table::Scalar::Int64(1999),
    }]);
    plan.reset_counts();
    let info = f.tables.delete(&t, &pred).await.expect("delete");
    assert_eq!(info.rows_affected, 1000);
    assert!(
        info.files_removed < files,
        "only files with a match are rewritten"
    );
    let left = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    let expected: Vec<i64> = (0..1000).chain(2000..3000).collect();
    assert_eq!(ids(&left.batches), expected);
    let info = f
        .tables
        .update(
            &t,
            &[(
                "name".into(),
                Some(tern_table::Scalar::Utf8("changed".into())),
            )],
            &Predicate::Between {
                column: "id".into(),
                low: tern_table::Scalar::Int64(2500),
                high: tern_table::Scalar::Int64(2599),
            },
        )
        .await
        .expect("update");
    assert_eq!(info.rows_affected, 100);
    let after = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&after.batches), expected);
    let changed: usize = after
        .batches
        .iter()
        .map(|b| {
            let names = b
                .column_by_name("name")
                .expect("name")
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("utf8")
                .clone();
            names.iter().filter(|n| *n == Some("changed")).count()
        })
        .sum();
    assert_eq!(changed, 100);
}

#[tokio::test]
async fn a_scan_decodes_batches_of_read_batch_rows_not_parquets_default() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(fixture::folder_volume(dir.path()), TableOptions::default());
    let t = f.create("wide").await;
    let n = 3 * tern_table::mp::READ_BATCH_ROWS as i64 + 5;
    let all: Vec<i64> = (0..n).collect();
    f.tables.insert(&t, &[rows(&all)]).await.expect("insert");
    let scan = f
        .tables
        .scan_stream(&t, &ScanRequest::default(), None)
        .await
        .expect("scan");
    assert_eq!(scan.files_total, 1, "one file of one row group");
    let batches: Vec<RecordBatch> = scan.batches.try_collect().await.expect("rows");
    let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
    // Parquet's reader alone yields 1 024 rows a batch: DataFusion's operators above a
    // scan then pay their per-batch cost eight times as often.
    assert_eq!(
        sizes,
        [tern_table::mp::READ_BATCH_ROWS; 3]
            .into_iter()
            .chain([5])
            .collect::<Vec<_>>()
    );
}
