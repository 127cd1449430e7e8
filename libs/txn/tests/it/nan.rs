//! A table holding NaN commits like any other: the statistics of its micro-partition hold
//! NaN (Arrow orders NaN above every number, so `max = NaN`), and the log record holding
//! them is recognised as the same record when a retry or recovery finds it stored
//! already. And recovery with one transaction it cannot complete still completes the
//! others.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use tern_storage::layout::{self, TableId};
use tern_storage::{Fault, FaultRule, Operation};
use tern_table::commit::ChangeRecord;
use tern_table::schema::arrow_schema;
use tern_table::{ColumnDef, ColumnType, Scalar, ScanRequest, Tables};
use tern_txn::{CrashPoints, TxnState};

use crate::common::{Deployment, check_invariants, ids, quick_options, rows};

fn float_columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        ColumnDef {
            name: "x".into(),
            ty: ColumnType::Float64,
            nullable: true,
        },
    ]
}

fn float_rows(ids: &[i64], xs: &[f64]) -> RecordBatch {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.to_vec())),
        Arc::new(Float64Array::from(xs.to_vec())),
    ];
    RecordBatch::try_new(arrow_schema(&float_columns()), arrays).expect("batch")
}

async fn float_table(dep: &Deployment, tables: &Tables) -> TableId {
    tables
        .create_schema(&dep.db, "public")
        .await
        .expect("schema");
    tables
        .create_table(&dep.db, "public", "floats", float_columns())
        .await
        .expect("create table")
}

/// The bit patterns of column `x` at the current version, in id order.
async fn xs(tables: &Tables, t: &TableId) -> Vec<u64> {
    let scan = tables.scan(t, &ScanRequest::default()).await.expect("scan");
    let mut out: Vec<(i64, u64)> = Vec::new();
    for b in &scan.batches {
        let id = b
            .column_by_name("id")
            .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
            .expect("id");
        let x = b
            .column_by_name("x")
            .and_then(|a| a.as_any().downcast_ref::<Float64Array>())
            .expect("x");
        for i in 0..b.num_rows() {
            out.push((id.value(i), x.value(i).to_bits()));
        }
    }
    out.sort_unstable();
    out.into_iter().map(|(_, x)| x).collect()
}

/// The insert's log write takes effect but reports failure: the retry finds the stored
/// record, holding `max = NaN`, and must accept it as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_log_write_of_a_nan_commit_succeeds() {
    let dep = Deployment::folder();
    let (m, tables) = dep.start(quick_options()).await;
    let t = float_table(&dep, &tables).await;
    let rule = dep.plan.arm(
        FaultRule::on(Operation::Put)
            .under(layout::volume::txlog_prefix(&dep.account))
            .fault(Fault::FailAfterEffect),
    );
    let c = tables
        .insert(&t, &[float_rows(&[1, 2], &[1.5, f64::NAN])])
        .await
        .expect("a retried commit of a NaN row succeeds");
    assert_eq!(
        dep.plan.fired(rule),
        1,
        "the first attempt was inconclusive"
    );
    assert!(c.committed);
    assert_eq!(
        xs(&tables, &t).await,
        vec![1.5f64.to_bits(), f64::NAN.to_bits()]
    );

    // The record holds NaN as the column's max (NaN above every number), and 1.5 as its
    // min, as the scan and pruning code order floats.
    let v = dep
        .meta
        .read(|tx| tx.get_table_version(&t, c.version))
        .expect("read")
        .expect("version row");
    let record = m
        .read_log(&dep.account, v.txn_id.expect("txn id"))
        .await
        .expect("log record");
    let stats = match &record.changes[..] {
        [ChangeRecord::TableVersion { added, .. }] => added[0]
            .stats
            .iter()
            .find(|s| s.column == "x")
            .cloned()
            .expect("stats of x"),
        other => panic!("unexpected record {other:?}"),
    };
    assert!(
        matches!(stats.max, Some(Scalar::Float64(x)) if x.is_nan()),
        "{stats:?}"
    );
    assert_eq!(stats.min, Some(Scalar::Float64(1.5)), "{stats:?}");

    // Nothing is left prepared or locked: the table takes another write.
    tables
        .insert(&t, &[float_rows(&[3], &[f64::NAN])])
        .await
        .expect("next insert");
    check_invariants(&dep, &m, &[t]).await;
}

/// A process dies after storing the log record of a NaN commit and before making it
/// visible; recovery rewrites the record (finding it stored) and rolls it forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_of_a_stored_nan_commit_rolls_it_forward() {
    let dep = Deployment::folder();
    let (m0, tables0) = dep.start(quick_options()).await;
    let t = float_table(&dep, &tables0).await;
    drop((m0, tables0));

    let crash = CrashPoints::new();
    let m1 = dep.manager(crash.clone(), quick_options());
    let tables1 = dep.tables(&m1);
    crash.arm("logged", 1);
    tables1
        .insert(&t, &[float_rows(&[1], &[f64::NAN])])
        .await
        .expect_err("crashed after the log write");
    assert!(crash.crashed());
    drop((m1, tables1));

    let m2 = dep.manager(CrashPoints::new(), quick_options());
    let report = m2.recover().await.expect("recover");
    assert_eq!(report.rolled_forward.len(), 1, "{report:?}");
    assert!(report.is_complete(), "{report:?}");
    let tables2 = dep.tables(&m2);
    assert_eq!(xs(&tables2, &t).await, vec![f64::NAN.to_bits()]);
    check_invariants(&dep, &m2, &[t]).await;
}

/// Two prepared transactions left by dead processes; the log record of the first (lower
/// id) cannot be stored. Recovery reports it and still rolls the second forward; once
/// storage is back, the next recovery completes the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reports_a_stuck_transaction_and_completes_the_others() {
    let dep = Deployment::folder();
    let (m0, tables0) = dep.start(quick_options()).await;
    let a = dep.create_table(&tables0, "a").await;
    let b = tables0
        .create_table(&dep.db, "public", "b", crate::common::columns())
        .await
        .expect("table b");
    drop((m0, tables0));

    // Each insert dies right after its transaction is prepared (id issued, record kept in
    // the metadata store, nothing stored in the volume).
    let mut prepared = Vec::new();
    for (table, id) in [(&a, 1), (&b, 2)] {
        let crash = CrashPoints::new();
        let m = dep.manager(crash.clone(), quick_options());
        let tables = dep.tables(&m);
        crash.arm("prepared", 1);
        tables
            .insert(table, &[rows(&[id])])
            .await
            .expect_err("crashed when prepared");
        let t = m
            .transactions()
            .expect("transactions")
            .into_iter()
            .find(|t| t.state == TxnState::Prepared && !prepared.contains(&t.handle))
            .expect("a prepared transaction");
        prepared.push(t.handle);
    }
    // Any manager reads the stored rows; this one never commits or recovers.
    let probe = dep.manager(CrashPoints::new(), quick_options());
    let rows_of = |handle: u64| {
        probe
            .transactions()
            .expect("transactions")
            .into_iter()
            .find(|t| t.handle == handle)
            .expect("transaction row")
    };
    let (first, second) = (rows_of(prepared[0]), rows_of(prepared[1]));
    let (first_id, second_id) = (
        first.txn_id.expect("first id"),
        second.txn_id.expect("second id"),
    );
    assert!(first_id < second_id, "recovery meets the stuck one first");

    // The first record's path refuses every write.
    let stuck = dep.plan.arm(
        FaultRule::on(Operation::Put)
            .under(layout::volume::txlog(&dep.account, first_id))
            .fault(Fault::Fail)
            .always(),
    );
    let m = dep.manager(CrashPoints::new(), quick_options());
    let report = m
        .recover()
        .await
        .expect("recovery runs despite one stuck transaction");
    assert_eq!(report.rolled_forward, vec![second_id], "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let failure = &report.failed[0];
    assert_eq!(
        (failure.handle, failure.txn_id, failure.state),
        (first.handle, Some(first_id), TxnState::Prepared),
        "{report:?}"
    );
    assert!(failure.reason.contains("injected fault"), "{failure:?}");
    let tables = dep.tables(&m);
    assert_eq!(
        ids(&tables, &b, None).await,
        vec![2],
        "the second is visible"
    );
    assert!(ids(&tables, &a, None).await.is_empty(), "the first is not");
    assert_eq!(
        rows_of(first.handle).state,
        TxnState::Prepared,
        "never rolled back"
    );

    // Storage is back: the next recovery completes it.
    dep.plan.disarm(stuck);
    let report = m.recover().await.expect("recover");
    assert_eq!(report.rolled_forward, vec![first_id], "{report:?}");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(ids(&tables, &a, None).await, vec![1]);
    check_invariants(&dep, &m, &[a, b]).await;
}
