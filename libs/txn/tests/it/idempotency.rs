//! A statement's idempotency key is stored in the metadata write that makes its
//! transaction Prepared: killed before that, the key is not there (nothing will commit);
//! from Prepared on, it is, naming the transaction and its answer; a second transaction
//! with the key is refused, nothing of it committed. Keys are pruned by age through their
//! age index, never while their transaction is in doubt.

use std::time::Duration;

use tern_table::{IdempotencyKey, Tables, with_idempotency_key};
use tern_txn::{CrashPoints, IdempotentOutcome, TxnManager};

use crate::common::{Deployment, ids, quick_options, rows};

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: k.into(),
        request_hash: format!("hash-of-{k}"),
    }
}

async fn insert_keyed(
    tables: &Tables,
    t: &tern_storage::layout::TableId,
    k: &str,
    row_ids: &[i64],
) -> tern_table::Result<tern_table::CommitInfo> {
    with_idempotency_key(key(k), tables.insert(t, &[rows(row_ids)])).await
}

/// A manager of a new process (what the last one left recovered) whose statement stops
/// at `point`.
async fn crashing(dep: &Deployment, point: &'static str) -> (TxnManager, Tables, CrashPoints) {
    let crash = CrashPoints::new();
    let m = dep.manager(crash.clone(), quick_options());
    m.recover().await.expect("recover");
    let tables = dep.tables(&m);
    crash.arm(point, 1);
    (m, tables, crash)
}

#[tokio::test]
async fn the_key_is_stored_with_the_prepared_mark() {
    let dep = Deployment::folder();
    let (m, tables) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables, "orders").await;

    // Committed with a key: the key names the transaction and the answer.
    let info = insert_keyed(&tables, &t, "k-ok", &[1, 2])
        .await
        .expect("insert");
    let row = m
        .idempotency(&dep.account, "k-ok")
        .expect("lookup")
        .expect("the key is stored");
    assert_eq!(row.txn_id, info.txn_id);
    assert!(info.txn_id.is_some());
    assert_eq!(row.request_hash, "hash-of-k-ok");
    assert_eq!(row.outcome, Some(IdempotentOutcome::from(&info)));
    assert_eq!(
        row.outcome.map(|o| o.commit_info(row.txn_id)),
        Some(info),
        "the stored answer is the statement's answer"
    );

    // The same key again: refused at prepare, nothing of it committed.
    let e = insert_keyed(&tables, &t, "k-ok", &[1, 2])
        .await
        .expect_err("a key is taken once");
    assert!(
        matches!(&e, tern_table::Error::IdempotencyKeyTaken { key, txn_id } if key == "k-ok" && *txn_id == info.txn_id),
        "{e}"
    );
    assert_eq!(ids(&tables, &t, None).await, [1, 2]);
    drop((m, tables));

    // Killed before Prepared: nothing will commit, and no key is stored.
    let (m, tables, crash) = crashing(&dep, "journaled").await;
    insert_keyed(&tables, &t, "k-before", &[3])
        .await
        .expect_err("crashed");
    assert!(crash.crashed());
    assert_eq!(
        m.idempotency(&dep.account, "k-before").expect("lookup"),
        None
    );
    drop((m, tables));

    // Killed right after Prepared: in doubt, and the key is already there with its id.
    let (m, tables, crash) = crashing(&dep, "prepared").await;
    let e = insert_keyed(&tables, &t, "k-doubt", &[4])
        .await
        .expect_err("crashed");
    assert!(crash.crashed());
    let id = e.in_doubt_txn_id().expect("in doubt, with an id");
    let row = m
        .idempotency(&dep.account, "k-doubt")
        .expect("lookup")
        .expect("stored with the Prepared mark");
    assert_eq!(row.txn_id, Some(id));
    assert_eq!(row.outcome.map(|o| o.rows), Some(1));
    drop((m, tables));

    // Recovery commits it; a retry with the key is refused, the row is there once.
    let (m, tables) = dep.start(quick_options()).await;
    insert_keyed(&tables, &t, "k-doubt", &[4])
        .await
        .expect_err("the key is taken by the recovered transaction");
    assert_eq!(ids(&tables, &t, None).await, [1, 2, 4]);
    // Without a key a statement is not checked at all.
    tables.insert(&t, &[rows(&[5])]).await.expect("insert");
    assert_eq!(
        m.idempotency(&dep.account, "k-before").expect("lookup"),
        None
    );
}

#[tokio::test]
async fn keys_are_pruned_by_age_but_not_while_in_doubt() {
    let dep = Deployment::folder();
    let (m, tables) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables, "orders").await;
    let t0 = dep.clock.shared().now_millis();
    insert_keyed(&tables, &t, "old", &[1])
        .await
        .expect("insert");
    dep.clock.advance(Duration::from_secs(3600));
    insert_keyed(&tables, &t, "newer", &[2])
        .await
        .expect("insert");
    // A statement that changed nothing keeps its key through the API's call.
    let noop = tern_table::CommitInfo {
        version: 2,
        ..Default::default()
    };
    m.remember_idempotent(&dep.account, &key("noop"), &noop)
        .expect("remember");
    let has = |k: &str| m.idempotency(&dep.account, k).expect("lookup").is_some();

    assert_eq!(m.prune_idempotency(t0).expect("prune"), 0, "none older");
    assert_eq!(m.prune_idempotency(t0 + 1).expect("prune"), 1);
    assert!(!has("old") && has("newer") && has("noop"));
    drop((m, tables));

    // A transaction in doubt keeps its key however old it is.
    let (m, tables, crash) = crashing(&dep, "logged").await;
    insert_keyed(&tables, &t, "stuck", &[3])
        .await
        .expect_err("crashed");
    assert!(crash.crashed());
    drop((m, tables));
    let m = dep.manager(CrashPoints::new(), quick_options());
    let has = |k: &str| m.idempotency(&dep.account, k).expect("lookup").is_some();
    dep.clock.advance(Duration::from_secs(48 * 3600));
    let far = dep.clock.shared().now_millis();
    assert_eq!(
        m.prune_idempotency(far).expect("prune"),
        0,
        "nothing stored after the in-doubt transaction began is pruned"
    );
    assert!(has("stuck") && has("newer") && has("noop"));
    m.recover().await.expect("recover");
    assert_eq!(m.prune_idempotency(far).expect("prune"), 3);
    assert!(!has("stuck") && !has("newer") && !has("noop"));
}
