//! Many writers on few tables: conflicting transactions serialize on table locks and get
//! increasing ids, transactions on different tables commit in parallel, and the
//! invariants hold after every run.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tern_storage::layout::{self, TableId};
use tern_storage::{Fault, FaultRule, Operation};
use tern_table::{Predicate, Tables};
use tern_txn::{TxnOptions, TxnState};

use crate::common::{Deployment, check_invariants, ids, quick_options, rows, wait_for_state};

/// `tasks` writers, each inserting its own ids into random tables and deleting some of
/// them again; every acknowledged change must be in the final state.
pub async fn stress(dep: Deployment, tasks: u64, statements: u64) {
    let options = TxnOptions {
        lock_timeout: Duration::from_secs(60),
        ..quick_options()
    };
    let (m, tables) = dep.start(options).await;
    let tables = Arc::new(tables);
    let mut table_ids = Vec::new();
    for n in 0..4 {
        table_ids.push(dep.create_table(&tables, &format!("t{n}")).await);
    }
    let table_ids = Arc::new(table_ids);
    // Recovery runs all along, as a daemon's periodic worker does: it must leave this
    // instance's running commits alone.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let recovery = {
        let m = m.clone();
        tokio::spawn(async move {
            let mut runs = 0u64;
            while !*stopped.borrow() {
                let report = m.recover().await.expect("recovery beside running commits");
                assert_eq!(
                    report,
                    tern_txn::RecoveryReport::default(),
                    "nothing to recover"
                );
                runs += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            runs
        })
    };
    let mut workers = Vec::new();
    for task in 0..tasks {
        let (tables, table_ids) = (Arc::clone(&tables), Arc::clone(&table_ids));
        workers.push(tokio::spawn(async move {
            // Deterministic per task: table = f(task, step).
            let mut expected: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); table_ids.len()];
            for step in 0..statements {
                let n =
                    usize::try_from((task * 7 + step * 3) % table_ids.len() as u64).expect("index");
                let t = &table_ids[n];
                let id = i64::try_from(task * 1000 + step).expect("id");
                if step % 3 == 2 {
                    // Delete the row this task inserted into this table most recently.
                    if let Some(&victim) = expected[n].iter().next_back() {
                        retry(&tables, t, |tb, t| async move {
                            tb.delete(&t, &Predicate::eq("id", victim)).await
                        })
                        .await;
                        expected[n].remove(&victim);
                    }
                } else {
                    tables.insert(t, &[rows(&[id])]).await.expect("insert");
                    expected[n].insert(id);
                }
            }
            expected
        }));
    }
    let mut expected: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); table_ids.len()];
    for w in workers {
        for (all, mine) in expected.iter_mut().zip(w.await.expect("worker")) {
            all.extend(mine);
        }
    }
    stop.send(true).expect("stop recovery");
    assert!(recovery.await.expect("recovery task") > 0);
    // (d) every acknowledged change is there.
    for (t, want) in table_ids.iter().zip(&expected) {
        assert_eq!(
            ids(&tables, t, None).await,
            want.iter().copied().collect::<Vec<_>>(),
            "{t}"
        );
    }
    check_invariants(&dep, &m, &table_ids).await;
}

/// A delete computed from what it read conflicts when another process's commit moved the
/// table first; within one process statements take turns and do not. Retried here to be
/// safe either way.
async fn retry<F, Fut>(tables: &Arc<Tables>, t: &TableId, f: F)
where
    F: Fn(Arc<Tables>, TableId) -> Fut,
    Fut: Future<Output = tern_table::Result<tern_table::CommitInfo>>,
{
    for _ in 0..20 {
        match f(Arc::clone(tables), t.clone()).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("still conflicting after 20 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_many_writers_few_tables_on_folders() {
    stress(Deployment::folder(), 16, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_many_writers_few_tables_on_localstack() {
    stress(Deployment::localstack("stress").await, 8, 6).await;
}

/// While one commit is held in its log write, a commit on another table completes, and a
/// commit on the same table waits (and here gives up, naming the lock and its holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_tables_commit_in_parallel_same_table_waits() {
    let dep = Deployment::folder();
    let options = TxnOptions {
        log_write_timeout: Duration::from_secs(30),
        ..quick_options()
    };
    let (m, tables) = dep.start(options).await;
    let tables = Arc::new(tables);
    let a = dep.create_table(&tables, "a").await;
    let b = dep.create_table(&tables, "b").await;
    dep.plan.arm(
        FaultRule::on(Operation::Put)
            .under(layout::volume::txlog_prefix(&dep.account))
            .fault(Fault::Delay(Duration::from_secs(3))),
    );
    let slow = {
        let (tables, a) = (Arc::clone(&tables), a.clone());
        tokio::spawn(async move { tables.insert(&a, &[rows(&[1])]).await })
    };
    let held = wait_for_state(&m, TxnState::Prepared).await;
    // Another table: commits while the first is still in its log write.
    tables.insert(&b, &[rows(&[2])]).await.expect("other table");
    let first = m
        .transactions()
        .expect("transactions")
        .into_iter()
        .find(|t| t.handle == held)
        .expect("first transaction");
    assert_eq!(first.state, TxnState::Prepared, "b waited for a");
    // The same table: waits for the lock, times out naming it.
    let err = tables
        .delete(&a, &Predicate::True)
        .await
        .expect_err("a is locked");
    assert!(
        err.to_string()
            .contains(&format!("lock table/{a} is held by transaction {held}")),
        "{err}"
    );
    slow.await.expect("task").expect("slow commit");
    assert_eq!(ids(&tables, &a, None).await, vec![1]);
    // The ids follow commit order: b's commit took its id after a's.
    let va = dep
        .meta
        .read(|tx| tx.get_table_version(&a, 1))
        .expect("read")
        .expect("a@1");
    let vb = dep
        .meta
        .read(|tx| tx.get_table_version(&b, 1))
        .expect("read")
        .expect("b@1");
    assert!(va.txn_id < vb.txn_id, "{:?} {:?}", va.txn_id, vb.txn_id);
    check_invariants(&dep, &m, &[a, b]).await;
}

/// Two managers (processes) on one metadata store: their writers of one table serialize
/// on the stored locks, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_locks_through_the_metadata_store() {
    let dep = Deployment::folder();
    let options = TxnOptions {
        lock_timeout: Duration::from_secs(60),
        ..quick_options()
    };
    let (m1, t1) = dep.start(options.clone()).await;
    let m2 = dep.manager(tern_txn::CrashPoints::new(), options);
    let t2 = dep.tables(&m2);
    let table = dep.create_table(&t1, "shared").await;
    let (t1, t2) = (Arc::new(t1), Arc::new(t2));
    let mut tasks = Vec::new();
    for i in 0..20i64 {
        let tables = if i % 2 == 0 {
            Arc::clone(&t1)
        } else {
            Arc::clone(&t2)
        };
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            tables.insert(&table, &[rows(&[i])]).await.expect("insert")
        }));
    }
    let mut versions = BTreeSet::new();
    for t in tasks {
        assert!(
            versions.insert(t.await.expect("task").version),
            "version twice"
        );
    }
    assert_eq!(versions, (1..=20).collect());
    assert_eq!(ids(&t1, &table, None).await, (0..20).collect::<Vec<_>>());
    check_invariants(&dep, &m1, &[table]).await;
}

/// A waiter for a lock held in this process is woken when the holder releases it, not at
/// its next poll: with a poll of ten minutes it still proceeds at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_is_woken_by_the_release_not_the_poll() {
    use tern_table::Committer as _;
    let dep = Deployment::folder();
    let options = TxnOptions {
        lock_timeout: Duration::from_secs(3600),
        lock_poll: Duration::from_secs(600),
        ..quick_options()
    };
    let (m, _tables) = dep.start(options).await;
    let lock = vec!["table/woken".to_string()];
    let mut holder = m.begin(&dep.account).await.expect("begin");
    holder.lock(&lock).await.expect("first lock");
    let waiter = {
        let (m, account, lock) = (m.clone(), dep.account.clone(), lock.clone());
        tokio::spawn(async move {
            let mut t = m.begin(&account).await.expect("begin");
            t.lock(&lock).await.expect("second lock");
            t.abort().await;
        })
    };
    // The waiter found the lock held and waits (observed, not assumed after a pause).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m.lock_waiters() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never waited"
        );
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "the lock was taken twice");
    let released = std::time::Instant::now();
    holder.abort().await;
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter slept until its poll instead of being woken by the release")
        .expect("waiter");
    assert!(released.elapsed() < Duration::from_secs(10));
    check_invariants(&dep, &m, &[]).await;
}

/// Two inserts planned while a third transaction holds their table's lock: whichever takes
/// the lock second finds the table moved on from the version it planned and plans again
/// (its metadata file sealed anew for the next version), rather than preparing a stale
/// plan. Both commit, on consecutive versions, with every metadata file stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_table_moved_while_it_waited_plans_again() {
    use tern_table::Committer as _;
    let dep = Deployment::folder();
    let (m, tables) = dep.start(quick_options()).await;
    let tables = Arc::new(tables);
    let table = dep.create_table(&tables, "moved").await;
    let first = tables.insert(&table, &[rows(&[0])]).await.expect("insert");
    let mut holder = m.begin(&dep.account).await.expect("begin");
    holder
        .lock(&[tern_table::commit::table_lock(&table)])
        .await
        .expect("lock");
    let inserts: Vec<_> = [1i64, 2]
        .into_iter()
        .map(|i| {
            let (tables, table) = (Arc::clone(&tables), table.clone());
            tokio::spawn(async move { tables.insert(&table, &[rows(&[i])]).await })
        })
        .collect();
    // Both planned on the first version and wait for the lock (observed, not assumed).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m.lock_waiters() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the inserts never both waited"
        );
        tokio::task::yield_now().await;
    }
    holder.abort().await;
    let mut versions = BTreeSet::new();
    for insert in inserts {
        versions.insert(insert.await.expect("task").expect("insert").version);
    }
    assert_eq!(
        versions,
        BTreeSet::from([first.version + 1, first.version + 2]),
        "the insert that planned on a stale version landed on the next one"
    );
    assert_eq!(ids(&tables, &table, None).await, [0, 1, 2]);
    check_invariants(&dep, &m, &[table]).await;
}
