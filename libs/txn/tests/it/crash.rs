//! A transaction killed at every crash point, then recovery by a new instance: before
//! Prepared it is rolled back (its files gone), from Prepared on it is rolled forward, and
//! the invariants hold either way — at the crash point itself, before recovery, no version
//! is visible without its stored log record. Run for each kind of statement, on the folder
//! store and on LocalStack. And the order guarantee a crash must not break: a transaction
//! that read another's version stores its record after that other's.

use tern_table::{ColumnDef, ColumnType, Predicate, Tables};
use tern_txn::{CrashPoints, TxnOutcome, TxnState, crash::POINTS};

use crate::common::{
    Deployment, check_invariants, check_visible_have_records, ids, quick_options, rows,
};

#[derive(Debug, Clone, Copy)]
enum Statement {
    Insert,
    Delete,
    AddColumn,
    CreateTable,
}

/// Whether a crash at `point` leaves the statement committed (after recovery).
fn survives(point: &str) -> bool {
    let prepared = POINTS
        .iter()
        .position(|p| *p == "prepared")
        .expect("prepared is a crash point");
    POINTS
        .iter()
        .position(|p| *p == point)
        .expect("known point")
        >= prepared
}

async fn run(
    statement: Statement,
    tables: &Tables,
    dep: &Deployment,
    t: &tern_storage::layout::TableId,
) -> Result<(), tern_table::Error> {
    match statement {
        Statement::Insert => tables
            .insert(t, &[rows(&[100, 101, 102])])
            .await
            .map(|_| ()),
        Statement::Delete => tables
            .delete(t, &Predicate::eq("id", 2i64))
            .await
            .map(|_| ()),
        Statement::AddColumn => tables
            .add_column(
                t,
                ColumnDef {
                    name: "extra".into(),
                    ty: ColumnType::Int64,
                    nullable: true,
                },
            )
            .await
            .map(|_| ()),
        Statement::CreateTable => tables
            .create_table(&dep.db, "public", "other", crate::common::columns())
            .await
            .map(|_| ()),
    }
}

/// One statement killed at `point`, recovered, checked.
async fn crash_at(dep: Deployment, statement: Statement, point: &'static str) {
    let (m0, tables0) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables0, "orders").await;
    tables0
        .insert(&t, &[rows(&[1, 2, 3])])
        .await
        .expect("first insert");
    drop((m0, tables0));

    // The process that crashes.
    let crash = CrashPoints::new();
    let m1 = dep.manager(crash.clone(), quick_options());
    let tables1 = dep.tables(&m1);
    crash.arm(point, 1);
    let outcome = run(statement, &tables1, &dep, &t).await;
    let ctx = format!("{statement:?} crashed at {point}");
    assert!(crash.crashed(), "{ctx}: the crash point was not reached");
    let err = outcome.expect_err("a crashed statement reported success");
    // From Prepared on the statement will commit: its caller hears "in doubt" with the id
    // to look up, never a plain failure it would retry (and duplicate).
    let in_doubt = err.in_doubt_txn_id();
    assert_eq!(
        in_doubt.is_some(),
        survives(point),
        "{ctx}: in doubt (with an id) exactly from Prepared on: {err}"
    );
    assert_eq!(err.is_in_doubt(), survives(point), "{ctx}: {err}");
    drop((m1, tables1));

    // At the crash point, before anyone recovers: nothing is visible without its stored
    // log record.
    let m2 = dep.manager(CrashPoints::new(), quick_options());
    check_visible_have_records(&dep, &m2, &ctx).await;
    if let Some(id) = in_doubt {
        let before = m2.status(&dep.account, id).await.expect("status");
        let expected = match point {
            "prepared" | "logged" => TxnOutcome::InDoubt {
                state: TxnState::Prepared,
            },
            _ => TxnOutcome::Committed,
        };
        assert_eq!(before, Some(expected), "{ctx}: status before recovery");
    }

    // The next process recovers.
    let report = m2.recover().await.expect("recover");
    if let Some(id) = in_doubt {
        assert_eq!(
            m2.status(&dep.account, id).await.expect("status"),
            Some(TxnOutcome::Committed),
            "{ctx}: status after recovery"
        );
        assert_eq!(
            m2.status(&dep.account, id + 1).await.expect("status"),
            None,
            "{ctx}: an id never issued"
        );
    }
    let tables2 = dep.tables(&m2);
    let committed = survives(point);
    if committed {
        assert!(
            report.rolled_forward.len() + report.finished.len() == 1 || point == "committed",
            "{ctx}: {report:?}"
        );
    } else {
        // A transaction that stored nothing yet ("begin"; before its commit, a create
        // table, or an insert whose data file is covered by a reserved block) has nothing
        // to roll back...
        let stored = match (statement, point) {
            (_, "begin")
            | (Statement::Insert, "journaled" | "written")
            | (Statement::CreateTable, "written") => 0,
            _ => 1,
        };
        assert_eq!(report.rolled_back.len(), stored, "{ctx}: {report:?}");
        // ...but the data file it wrote is swept (found through its block).
        if matches!(statement, Statement::Insert) && point == "written" {
            assert_eq!(report.files_removed, 1, "{ctx}: {report:?}");
        }
        assert!(
            report.rolled_forward.is_empty() && report.finished.is_empty(),
            "{ctx}: {report:?}"
        );
    }
    let table = tables2.table(&t).expect("table");
    match statement {
        Statement::Insert => {
            let want: Vec<i64> = if committed {
                vec![1, 2, 3, 100, 101, 102]
            } else {
                vec![1, 2, 3]
            };
            assert_eq!(ids(&tables2, &t, None).await, want, "{ctx}");
        }
        Statement::Delete => {
            let want: Vec<i64> = if committed { vec![1, 3] } else { vec![1, 2, 3] };
            assert_eq!(ids(&tables2, &t, None).await, want, "{ctx}");
        }
        Statement::AddColumn => {
            assert_eq!(
                table.columns.len() == 3,
                committed,
                "{ctx}: {:?}",
                table.columns
            );
        }
        Statement::CreateTable => {
            let found = tables2.find_table(&dep.db, "public", "other").is_ok();
            assert_eq!(found, committed, "{ctx}");
        }
    }
    assert_eq!(
        table.current_version,
        if committed && !matches!(statement, Statement::CreateTable) {
            2
        } else {
            1
        },
        "{ctx}"
    );
    // (d) the acknowledged first insert is still there at its version.
    assert!(
        ids(&tables2, &t, Some(1)).await.starts_with(&[1, 2, 3]),
        "{ctx}"
    );
    check_invariants(&dep, &m2, std::slice::from_ref(&t)).await;
    // Nothing stays locked: the table takes another write at once.
    tables2
        .insert(&t, &[rows(&[7])])
        .await
        .unwrap_or_else(|e| panic!("{ctx}: write after recovery: {e}"));
    check_invariants(&dep, &m2, &[t]).await;
}

async fn every_point(make: impl AsyncFn(&str) -> Deployment) {
    for statement in [
        Statement::Insert,
        Statement::Delete,
        Statement::AddColumn,
        Statement::CreateTable,
    ] {
        for point in POINTS {
            if matches!(statement, Statement::CreateTable | Statement::AddColumn)
                && *point == "journaled"
            {
                // These write no data file: the only file journaled is the metadata file,
                // with the Prepared mark ("prepared").
                continue;
            }
            let dep = make(&format!("{statement:?}-{point}").to_lowercase()).await;
            crash_at(dep, statement, point).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_point_then_recover_on_folders() {
    every_point(async |_| Deployment::folder()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_point_then_recover_on_localstack() {
    every_point(async |name| Deployment::localstack(name).await).await;
}

/// Guarantee 2 of DESIGN.md §7: a transaction that read a version made by another stores
/// its log record after that other's. T1 inserts into table A with its log write held up;
/// a reader polls A all along and, the moment it sees T1's version, writes what it read
/// into table B (T2). Whatever the timing, A@v cannot be seen before T1's record is stored,
/// so T2's record is stored after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_transaction_stores_its_record_after_the_one_it_read() {
    use std::sync::Arc;
    use std::time::Duration;

    use tern_storage::layout;
    use tern_storage::{Fault, FaultRule, Operation};
    use tern_table::ScanRequest;

    let dep = Deployment::folder();
    let (m, tables) = dep.start(quick_options()).await;
    let tables = Arc::new(tables);
    let a = dep.create_table(&tables, "a").await;
    let b = tables
        .create_table(&dep.db, "public", "b", crate::common::columns())
        .await
        .expect("table b");
    let log_prefix = layout::volume::txlog_prefix(&dep.account);
    dep.plan.arm(
        FaultRule::on(Operation::Put)
            .under(log_prefix.clone())
            .fault(Fault::Delay(Duration::from_millis(300))),
    );
    let t1 = {
        let (tables, a) = (Arc::clone(&tables), a.clone());
        tokio::spawn(async move { tables.insert(&a, &[rows(&[1])]).await })
    };
    // Poll A from T1's start: the first scan that sees T1's row comes after its record
    // was stored (here the record's write is held up, so many scans come before).
    let seen = loop {
        let scan = tables
            .scan(&a, &ScanRequest::default())
            .await
            .expect("scan a");
        if scan.rows() > 0 {
            break scan;
        }
        tokio::task::yield_now().await;
    };
    // T2: write what was read into B.
    let t2 = tables.insert(&b, &seen.batches).await.expect("T2");
    let t1 = t1.await.expect("task").expect("T1");
    assert_eq!(seen.version, t1.version, "T2 read T1's version");

    let txn_of = |table: &tern_storage::layout::TableId, version: u64| {
        dep.meta
            .read(|tx| tx.get_table_version(table, version))
            .expect("read")
            .and_then(|v| v.txn_id)
            .expect("version's transaction")
    };
    let (id1, id2) = (txn_of(&a, t1.version), txn_of(&b, t2.version));
    let order = dep.plan.puts_under(&log_prefix);
    let at = |id: u64| {
        let path = layout::volume::txlog(&dep.account, id);
        order
            .iter()
            .position(|p| *p == path)
            .unwrap_or_else(|| panic!("record {id} was never stored"))
    };
    assert!(
        at(id1) < at(id2),
        "T2 (record {id2}) read T1's version but its record was stored first: {order:?}"
    );
    assert!(id1 < id2, "{id1} {id2}");
    check_invariants(&dep, &m, &[a, b]).await;
}
