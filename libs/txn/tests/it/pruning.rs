//! Log pruning: records at or below the bound the caller gives (and the stable id) are
//! deleted in bounded batches behind a watermark raised first; a status lookup of a pruned
//! id answers "committed (log record pruned)", not "unknown"; age marks tell how old
//! records are without reading them.

use std::time::Duration;

use tern_txn::TxnOutcome;

use crate::common::{Deployment, quick_options, rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_up_to_the_bound_and_status_tells_pruned_from_unknown() {
    let dep = Deployment::folder();
    let (m, tables) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables, "orders").await;
    tables.insert(&t, &[rows(&[1])]).await.expect("insert");
    tables.insert(&t, &[rows(&[2])]).await.expect("insert");
    let a = &dep.account;
    assert_eq!(m.log_ids(a, 0).await.expect("ids"), [1, 2, 3, 4]);

    // No mark is old enough yet: nothing is known to be older than the retention.
    let t0 = dep.clock.shared().now_millis();
    assert_eq!(m.log_stored_before(a, t0 - 1).expect("marks"), 0);
    dep.clock.advance(Duration::from_secs(10));
    tables.insert(&t, &[rows(&[3])]).await.expect("insert");
    tables.insert(&t, &[rows(&[4])]).await.expect("insert");
    // The mark taken at t0 (stable id 4) is the newest one at or before t0.
    assert_eq!(m.log_stored_before(a, t0).expect("marks"), 4);
    assert_eq!(m.log_stored_before(a, t0 - 1).expect("marks"), 0);

    // Bounded batches up to the bound; nothing above it.
    assert_eq!(m.log_pruned_up_to(a).expect("watermark"), 0);
    assert_eq!(m.prune_log(a, 4, 3).await.expect("prune"), 3);
    assert_eq!(m.log_pruned_up_to(a).expect("watermark"), 4, "raised first");
    assert_eq!(m.prune_log(a, 4, 3).await.expect("prune"), 1);
    assert_eq!(m.prune_log(a, 4, 3).await.expect("prune"), 0);
    assert_eq!(m.log_ids(a, 0).await.expect("ids"), [5, 6]);
    let w = m.log_pruning(a).expect("row");
    assert_eq!((w.up_to, w.cleared, w.deleted), (4, 4, 4));

    // Once its row is forgotten too, a pruned id is committed with its record pruned; a
    // kept one committed; an id never issued is unknown.
    m.prune_finished(i64::MAX).expect("forget rows");
    assert_eq!(
        m.status(a, 2).await.expect("status"),
        Some(TxnOutcome::CommittedPruned)
    );
    assert_eq!(
        m.status(a, 5).await.expect("status"),
        Some(TxnOutcome::Committed)
    );
    assert_eq!(m.status(a, 99).await.expect("status"), None);

    // A bound past the stable id is lowered to it: an id not issued yet is never taken for
    // a pruned one.
    assert_eq!(m.prune_log(a, 1_000, 10).await.expect("prune"), 2);
    assert_eq!(m.log_pruned_up_to(a).expect("watermark"), 6);
    assert!(m.log_ids(a, 0).await.expect("ids").is_empty());
    assert_eq!(m.status(a, 7).await.expect("status"), None);
    tables.insert(&t, &[rows(&[5])]).await.expect("insert");
    m.prune_finished(i64::MAX).expect("forget rows");
    assert_eq!(m.log_ids(a, 0).await.expect("ids"), [7]);
    assert_eq!(
        m.status(a, 7).await.expect("status"),
        Some(TxnOutcome::Committed)
    );
}
