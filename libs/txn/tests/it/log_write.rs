//! The log record write under storage faults: a failed attempt is retried, an attempt that
//! took effect but reported failure is found and accepted, a write that never succeeds
//! leaves the transaction prepared (in doubt, locks held, nothing visible) and recovery
//! rolls it forward — a prepared transaction is never rolled back.

use std::time::Duration;

use tern_storage::layout;
use tern_storage::{Fault, FaultRule, Operation};
use tern_txn::TxnState;

use crate::common::{Deployment, check_invariants, ids, quick_options, rows, wait_for_state};

fn log_puts(dep: &Deployment) -> FaultRule {
    FaultRule::on(Operation::Put).under(layout::volume::txlog_prefix(&dep.account))
}

pub async fn scenario(dep: Deployment) {
    let (m, tables) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables, "orders").await;

    // A failed attempt, then success.
    let rule = dep.plan.arm(log_puts(&dep).fault(Fault::Fail));
    let v = tables.insert(&t, &[rows(&[1])]).await.expect("insert");
    assert_eq!(dep.plan.fired(rule), 1);
    assert!(v.committed);

    // Succeeded but reported failure (inconclusive): the retry finds the same record.
    let rule = dep.plan.arm(log_puts(&dep).fault(Fault::FailAfterEffect));
    tables.insert(&t, &[rows(&[2])]).await.expect("insert");
    assert_eq!(dep.plan.fired(rule), 1);

    // Too slow (a timeout: outcome unknown), then success.
    let rule = dep
        .plan
        .arm(log_puts(&dep).fault(Fault::Delay(Duration::from_secs(2))));
    tables.insert(&t, &[rows(&[3])]).await.expect("insert");
    assert_eq!(dep.plan.fired(rule), 1);
    assert_eq!(ids(&tables, &t, None).await, vec![1, 2, 3]);

    // Never stored (every attempt succeeds at the store but reports failure, then every
    // attempt fails): in doubt, not visible, not rolled back, locks held.
    let inconclusive = dep
        .plan
        .arm(log_puts(&dep).fault(Fault::FailAfterEffect).times(1));
    let failing = dep
        .plan
        .arm(log_puts(&dep).fault(Fault::Fail).nth(2).always());
    let err = tables
        .insert(&t, &[rows(&[4])])
        .await
        .expect_err("the log write cannot succeed");
    assert!(err.is_in_doubt(), "{err}");
    assert!(
        err.to_string().contains("recovery will complete it"),
        "{err}"
    );
    assert_eq!(dep.plan.fired(inconclusive), 1);
    assert_eq!(
        ids(&tables, &t, None).await,
        vec![1, 2, 3],
        "not visible yet"
    );
    let handle = wait_for_state(&m, TxnState::Prepared).await;
    // Another writer of the table waits for the lock and gives up naming it.
    let blocked = tables
        .insert(&t, &[rows(&[5])])
        .await
        .expect_err("the table is locked by the prepared transaction");
    assert!(
        blocked.to_string().contains(&format!("table/{t}"))
            && blocked
                .to_string()
                .contains(&format!("transaction {handle}")),
        "{blocked}"
    );
    // Recovery with storage still failing keeps it prepared, and says so.
    let report = m.recover().await.expect("recover");
    assert!(
        report.rolled_forward.is_empty() && report.failed.len() == 1,
        "{report:?}"
    );
    assert_eq!(
        (report.failed[0].handle, report.failed[0].state),
        (handle, TxnState::Prepared),
        "{report:?}"
    );
    assert_eq!(wait_for_state(&m, TxnState::Prepared).await, handle);
    // Storage back: recovery rolls it forward.
    dep.plan.disarm(failing);
    let report = m.recover().await.expect("recover");
    assert_eq!(report.rolled_forward.len(), 1, "{report:?}");
    assert_eq!(ids(&tables, &t, None).await, vec![1, 2, 3, 4]);
    tables.insert(&t, &[rows(&[5])]).await.expect("unlocked");
    assert_eq!(ids(&tables, &t, None).await, vec![1, 2, 3, 4, 5]);
    check_invariants(&dep, &m, &[t]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_write_faults_on_folders() {
    scenario(Deployment::folder()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_write_faults_on_localstack() {
    scenario(Deployment::localstack("logwrite").await).await;
}
