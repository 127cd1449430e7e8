//! Log pruning and a status without listing: records are deleted exactly when they are
//! older than the retention and every subscribed replica has them; a replica cut off for
//! longer than the retention is asked to refresh instead of holding the log for ever, and
//! catches up with nothing lost; `status()` counts what is not shipped yet from the
//! metadata store, never by listing the volume.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tern_replication::local::{LocalDeployment, LocalOptions, folder};
use tern_replication::state::{DownstreamDpo, keys};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_storage::{Fault, FaultPlan, FaultRule, FaultStore, Operation, Path};
use tern_txn::TxnOutcome;

use crate::common::*;

const RETENTION: Duration = Duration::from_secs(2);

struct Setup {
    _dir: tempfile::TempDir,
    d1: Node,
    d2: Node,
    /// Counts (and could fail) d1's volume calls.
    volume: FaultPlan,
    /// Fails d1's writes into d2's bucket when armed (d2 unreachable from d1).
    link: FaultPlan,
    a1: AccountId,
    db: DatabaseId,
    t: TableId,
}

fn config() -> tern_replication::ReplicationConfig {
    tern_replication::ReplicationConfig {
        log_retention: RETENTION,
        // The test runs every pass itself (the worker's first pass only notes the start).
        log_prune_interval: Duration::from_secs(3600),
        log_prune_batch: 2,
        ..repl_config()
    }
}

/// d1 (its volume behind a counting store) replicating `sales` to d2, caught up.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let volume = FaultPlan::new();
    let d1_volume: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(
        folder(&root.join("d1").join("volume")).unwrap(),
        volume.clone(),
    ));
    let mut d1 = LocalDeployment::open_on(
        root,
        "d1",
        None,
        LocalOptions {
            replication: config(),
            messaging: messaging_config(),
            txn: tern_txn::TxnOptions::default(),
        },
        d1_volume,
        folder(&root.join("d1").join("repl")).unwrap(),
    )
    .await
    .unwrap();
    let keys = root.join("d1").join("keys");
    let mut d2 = open_with(root, "d2", Some(&keys), config()).await;
    link(&d1, &d2).await;
    d2.start(&[&d1]);
    let link_plan = FaultPlan::new();
    let to_d2: Arc<dyn ObjectStore> =
        Arc::new(FaultStore::new(Arc::clone(&d2.bucket), link_plan.clone()));
    d1.start_with(&[(d2.id.clone(), to_d2)]);
    let (a1, db, t) = replicated_table(&d1, &d2).await;
    Setup {
        _dir: dir,
        d1,
        d2,
        volume,
        link: link_plan,
        a1,
        db,
        t,
    }
}

fn downstream(s: &Setup) -> DownstreamDpo {
    let k = keys::downstream(&s.db, &DeploymentId::new("d2").unwrap());
    s.d1.meta
        .read(|tx| tx.get(&k))
        .unwrap()
        .expect("downstream")
}

/// Waits until d1 has shipped d2 everything up to its stable id.
async fn shipped(s: &Setup) {
    eventually(WAIT, "d1 to ship everything to d2", || async {
        let stable = s.d1.txn.stable_log_id(&s.a1).unwrap();
        downstream(s).cursor >= stable
    })
    .await;
}

async fn insert(s: &Setup, ids: std::ops::Range<i64>) {
    s.d1.tables.insert(&s.t, &[batch(ids, "p")]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_deletes_exactly_the_records_old_enough_and_shipped_everywhere() {
    let s = setup().await;
    shipped(&s).await;
    let old = s.d1.txn.log_ids(&s.a1, 0).await.unwrap();
    assert!(old.len() >= 3, "schema, table, insert: {old:?}");
    // The first pass notes where the log stands; nothing is older than the retention yet.
    let r = s.d1.repl.prune_log().await.unwrap();
    assert_eq!(r.deleted, 0);
    insert(&s, 10..20).await;
    insert(&s, 20..30).await;
    caught_up(&s.d1, &s.d2, std::slice::from_ref(&s.t)).await;
    shipped(&s).await;
    let young =
        s.d1.txn
            .log_ids(&s.a1, old.last().unwrap() + 1)
            .await
            .unwrap();
    assert_eq!(young.len(), 2);
    tokio::time::sleep(RETENTION + Duration::from_millis(200)).await;

    // Old enough and shipped: deleted (in batches of 2); the younger ones are kept.
    let r = s.d1.repl.prune_log().await.unwrap();
    assert_eq!(r.deleted, old.len(), "{r:?}");
    assert!(r.refresh_needed.is_empty());
    assert_eq!(s.d1.txn.log_ids(&s.a1, 0).await.unwrap(), young);
    assert_eq!(
        s.d1.txn.log_pruned_up_to(&s.a1).unwrap(),
        *old.last().unwrap()
    );
    // Nothing more is old enough.
    assert_eq!(s.d1.repl.prune_log().await.unwrap().deleted, 0);
    assert_eq!(s.d1.txn.log_ids(&s.a1, 0).await.unwrap(), young);

    // A pruned transaction is still known as committed, and said to be pruned.
    s.d1.txn.prune_finished(i64::MAX).unwrap();
    assert_eq!(
        s.d1.txn.status(&s.a1, old[0]).await.unwrap(),
        Some(TxnOutcome::CommittedPruned)
    );
    assert_eq!(
        s.d1.txn.status(&s.a1, young[0]).await.unwrap(),
        Some(TxnOutcome::Committed)
    );

    // Shipping goes on after pruning.
    insert(&s, 30..40).await;
    caught_up(&s.d1, &s.d2, std::slice::from_ref(&s.t)).await;
    same_rows(&s.d1, &s.d2, std::slice::from_ref(&s.t)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_keeps_the_log_until_the_retention_then_refreshes_and_loses_nothing() {
    let s = setup().await;
    shipped(&s).await;
    s.d1.repl.prune_log().await.unwrap();
    let cursor = downstream(&s).cursor;
    // d2's bucket cannot be written: nothing reaches it.
    let cut = s.link.arm(FaultRule::any().fault(Fault::Fail).always());
    insert(&s, 10..20).await;
    s.d1.tables
        .delete(
            &s.t,
            &tern_table::Predicate::cmp("id", tern_table::CmpOp::Lt, 5i64),
        )
        .await
        .unwrap();
    let stable = s.d1.txn.stable_log_id(&s.a1).unwrap();
    assert!(stable > cursor);
    // Within the retention the log is kept for it.
    let r = s.d1.repl.prune_log().await.unwrap();
    assert_eq!((r.deleted, r.refresh_needed.len()), (0, 0));
    tokio::time::sleep(RETENTION + Duration::from_millis(200)).await;
    assert_eq!(
        downstream(&s).cursor,
        cursor,
        "nothing shipped while cut off"
    );
    let r = s.d1.repl.prune_log().await.unwrap();
    // Still cut off past the retention: the log is pruned anyway, and d2 is to refresh.
    assert_eq!(r.refresh_needed, vec![(s.db.clone(), s.d2.id.clone())]);
    assert!(r.deleted > 0);
    assert!(s.d1.txn.log_ids(&s.a1, 0).await.unwrap().is_empty());
    let d = downstream(&s);
    assert!(d.refresh_needed_since_ms.is_some());
    let status = s.d1.repl.status().await.unwrap();
    assert!(status.downstream[0].refresh_needed);

    // Back: d2 reads the notice, refreshes and has everything; shipping resumes.
    s.link.disarm(cut);
    caught_up(&s.d1, &s.d2, std::slice::from_ref(&s.t)).await;
    same_rows(&s.d1, &s.d2, std::slice::from_ref(&s.t)).await;
    eventually(WAIT, "the refresh to clear the mark", || async {
        downstream(&s).refresh_needed_since_ms.is_none()
    })
    .await;
    insert(&s, 100..110).await;
    caught_up(&s.d1, &s.d2, std::slice::from_ref(&s.t)).await;
    same_rows(&s.d1, &s.d2, std::slice::from_ref(&s.t)).await;
    assert!(
        s.d2.repl
            .status()
            .await
            .unwrap()
            .replicas
            .iter()
            .any(|r| r.refreshes >= 2),
        "d2 refreshed after the notice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_counts_what_is_not_shipped_without_listing_the_volume() {
    let mut s = setup().await;
    shipped(&s).await;
    // Workers stopped: only status() touches the volume from here.
    s.d1.stop().await;
    insert(&s, 10..20).await;
    insert(&s, 20..30).await;
    insert(&s, 30..40).await;
    s.volume.reset_counts();
    let status = s.d1.repl.status().await.unwrap();
    assert_eq!(
        s.volume.calls_under(Operation::List, &Path::from("acct")),
        0,
        "status() listed the volume"
    );
    assert_eq!(status.downstream.len(), 1);
    assert_eq!(status.downstream[0].records_behind, 3);
}
