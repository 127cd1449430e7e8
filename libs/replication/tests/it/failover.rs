//! Failover between in-process deployments: availability, promotion under the policy,
//! fencing of the old primary, re-parenting, stale epochs refused.
//!
//! Faults are made where the tests say: a "lost" primary is one whose workers were killed
//! (it sends and receives nothing, as a region cut off from its peers' buckets) while its
//! tables keep taking statements, as a primary still serving its own clients would.

use std::path::Path as FsPath;
use std::time::Duration;

use tern_meta::DatabaseRole;
use tern_replication::{Availability, FailoverOptions, FailoverPolicy, ReplicationConfig};
use tern_replication::{replica_table_id, state::ReplicaDpo};
use tern_storage::layout::{AccountId, DeploymentId, TableId};

use crate::common::*;

pub(crate) fn fast() -> ReplicationConfig {
    ReplicationConfig {
        heartbeat_interval: Duration::from_millis(100),
        unavailable_after: Duration::from_millis(1200),
        drain_timeout: Duration::from_secs(5),
        vote_timeout: Duration::from_secs(2),
        ..repl_config()
    }
}

pub(crate) const FORCE: FailoverOptions = FailoverOptions {
    allow_data_loss: true,
};
pub(crate) const PLAIN: FailoverOptions = FailoverOptions {
    allow_data_loss: false,
};

async fn availability_of(n: &Node, peer: &str) -> Option<Availability> {
    n.repl
        .availability()
        .unwrap()
        .into_iter()
        .find(|p| p.peer.as_str() == peer)
        .map(|p| p.state)
}

pub(crate) async fn until_state(n: &Node, peer: &str, state: Availability) {
    eventually(
        WAIT,
        &format!("{} to judge {peer} {state}", n.id),
        || async { availability_of(n, peer).await == Some(state) },
    )
    .await;
}

pub(crate) fn role(n: &Node, account: &str, db: &str) -> DatabaseRole {
    let a = AccountId::new(account).unwrap();
    n.meta
        .read(|tx| tx.find_database(&a, db))
        .unwrap()
        .unwrap()
        .role
}

pub(crate) fn replica(n: &Node, account: &str, db: &str) -> Option<ReplicaDpo> {
    let a = AccountId::new(account).unwrap();
    let d = n.meta.read(|tx| tx.find_database(&a, db)).unwrap().unwrap();
    n.meta
        .read(|tx| tx.get::<ReplicaDpo>(&tern_replication::state::keys::replica(&d.id)))
        .unwrap()
}

/// Inserts rows `ids` (one transaction) and says whether it was acknowledged.
pub(crate) async fn write(n: &Node, t: &TableId, ids: std::ops::Range<i64>, tag: &str) -> bool {
    n.tables.insert(t, &[batch(ids, tag)]).await.is_ok()
}

/// Rows 0..10 on the primary of a group that just grew to three: it takes commits once a
/// majority confirmed it (no lease before; see `GroupDpo::lease_until`).
async fn leased_write(n: &Node, t: &TableId) {
    eventually(WAIT, "the primary's lease", || async {
        write(n, t, 0..10, "a").await
    })
    .await;
}

/// d2 (joining d1's keys under `root`) with its own replication bucket behind a store
/// that injects `plan`'s faults.
async fn open_d2_through(root: &FsPath, keys: &FsPath, plan: &tern_storage::FaultPlan) -> Node {
    open_through(root, "d2", keys, plan, fast()).await
}

async fn open3(root: &FsPath) -> (Node, Node, Node) {
    let d1 = open_with(root, "d1", None, fast()).await;
    let keys = root.join("d1").join("keys");
    let d2 = open_with(root, "d2", Some(&keys), fast()).await;
    let d3 = open_with(root, "d3", Some(&keys), fast()).await;
    (d1, d2, d3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_primary_is_replaced_the_hub_follows_and_the_old_primary_returns_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut d1, mut d2, mut d3) = open3(root).await;
    link(&d1, &d2).await;
    link(&d1, &d3).await;
    link(&d2, &d3).await;
    d1.start(&[&d2, &d3]);
    d2.start(&[&d1, &d3]);
    d3.start(&[&d1, &d2]);
    let (a1, _db, account_group) = primary(&d1).await;
    let t = d1
        .tables
        .create_table(&_db, "public", "t", columns())
        .await
        .unwrap();
    replicate_to(&d1, &a1, &account_group, &[(&d2, "a2"), (&d3, "a3")]).await;
    // A steady load with unique ids; every acknowledged write is remembered.
    let mut acked = Vec::new();
    for i in 0..5 {
        if write(&d1, &t, i * 10..i * 10 + 10, "p").await {
            acked.push(i);
        }
    }
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;
    until_state(&d2, "d1", Availability::Available).await;

    // While the primary is heard from, a failover is refused.
    let e = d2
        .repl
        .failover(&AccountId::new("a2").unwrap(), "sales", PLAIN)
        .await;
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("available") && e.contains("--allow-data-loss"),
        "{e}"
    );
    assert_eq!(role(&d2, "a2", "sales"), DatabaseRole::Secondary);

    // The primary's region is lost (killed: nothing more is sent or received).
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    let history = d2.repl.availability_history(100).unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.peer.as_str() == "d1" && e.to == "unavailable"),
        "{history:?}"
    );
    // Cut off from its group, the old primary's lease lapses: it stops taking commits by
    // itself (it still serves reads).
    let deadline = std::time::Instant::now() + WAIT;
    let e = loop {
        match d1.tables.insert(&t, &[batch(7000..7001, "cut")]).await {
            Err(e) => break e.to_string(),
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lease never lapsed"
                );
                // Acknowledged before the lease lapsed: a write the old primary keeps.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(e.contains("lease lapsed"), "{e}");
    // The group of three decides by majority: d3 accepts d2's epoch.
    let report = d2
        .repl
        .failover(&AccountId::new("a2").unwrap(), "sales", PLAIN)
        .await
        .unwrap();
    assert!(!report.forced, "{report:?}");
    assert_eq!(report.epoch, 2, "{report:?}");
    assert_eq!(
        report.previous_primary.as_ref().map(|p| p.as_str()),
        Some("d1")
    );
    assert_eq!(
        report.known_loss_txns, 0,
        "everything shipped was applied: {report:?}"
    );
    assert!(report.rto_ms < 5_000, "{report:?}");
    assert_eq!(role(&d2, "a2", "sales"), DatabaseRole::Primary);

    // Writes go on at the new primary; the other replica re-parents and follows.
    let rid = replica_table_id(&d1.id, &t);
    for i in 5..8 {
        assert!(write(&d2, &rid, i * 10..i * 10 + 10, "n").await);
        acked.push(i);
    }
    eventually(WAIT, "d3 to follow d2", || async {
        replica(&d3, "a3", "sales").is_some_and(|r| r.upstream.as_str() == "d2")
            && rows(&d3, &rid, None).await == rows(&d2, &rid, None).await
    })
    .await;
    // Every acknowledged write is on the new primary exactly once.
    let on_d2 = rows(&d2, &rid, None).await;
    assert_eq!(on_d2.len(), acked.len() * 10, "{on_d2:?}");

    // The old primary comes back: it learns epoch 2, is fenced, follows d2.
    let mut d1 = open_with(root, "d1", None, fast()).await;
    d1.start(&[&d2, &d3]);
    eventually(WAIT, "d1 to be fenced as a secondary of d2", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            && replica(&d1, "a1", "sales").is_some_and(|r| r.upstream.as_str() == "d2")
    })
    .await;
    let e = d1.tables.insert(&t, &[batch(1000..1001, "stale")]).await;
    assert!(e.is_err(), "a fenced old primary refuses writes");
    eventually(WAIT, "d1 to catch up with d2", || async {
        rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;
    assert!(
        d1.repl.conflicts().unwrap().is_empty(),
        "nothing was lost here"
    );
    let s1 = d1.repl.status().await.unwrap();
    let g = &s1.groups[0];
    assert_eq!(
        (g.role, g.group_epoch),
        (DatabaseRole::Secondary, 2),
        "{s1:?}"
    );
    d1.stop().await;
    d2.stop().await;
    d3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_primary_is_fenced_and_keeps_its_writes_as_conflicts() {
    let Pair {
        dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(fast()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    assert!(write(&d1, &t, 0..10, "before").await);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;

    // The primary is cut off from its peer (its workers stop: nothing crosses either way)
    // and keeps serving its clients.
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    for i in 1..4 {
        assert!(write(&d1, &t, i * 10..i * 10 + 10, "cut-off").await);
    }
    // A group of two promotes only when told to accept the loss.
    let a2 = AccountId::new("a2").unwrap();
    let e = d2.repl.failover(&a2, "sales", PLAIN).await.unwrap_err();
    assert!(e.to_string().contains("--allow-data-loss"), "{e}");
    let report = d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    assert!(report.forced);
    let rid = replica_table_id(&d1.id, &t);
    assert!(write(&d2, &rid, 100..110, "new-primary").await);

    // The cut heals: the old primary learns epoch 2 and is fenced.
    let mut d1 = open_with(dir.path(), "d1", None, fast()).await;
    d1.start(&[&d2]);
    eventually(
        WAIT,
        "d1 to be fenced and to keep what it wrote",
        || async {
            role(&d1, "a1", "sales") == DatabaseRole::Secondary
                && d1.repl.conflicts().unwrap().len() == 3
        },
    )
    .await;
    let e = d1
        .tables
        .insert(&t, &[batch(500..501, "late")])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("read-only") || e.to_string().contains("fenced"),
        "{e}"
    );
    // What it wrote while cut off is kept, one conflict record per transaction, never
    // applied on the new primary.
    let conflicts = d1.repl.conflicts().unwrap();
    assert_eq!(conflicts.len(), 3, "{conflicts:?}");
    assert!(
        conflicts
            .iter()
            .all(|c| c.epoch == 1 && c.origin.as_str() == "d1")
    );
    for c in &conflicts {
        for v in &c.versions {
            for f in &v.added {
                let path = tern_storage::Path::from(f.path.as_str());
                assert!(
                    object_store::ObjectStoreExt::head(d1.volume.as_ref(), &path)
                        .await
                        .is_ok(),
                    "a conflict's file stays: {}",
                    f.path
                );
            }
        }
    }
    eventually(WAIT, "d1 to equal the new primary", || async {
        rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;
    let on_d2 = rows(&d2, &rid, None).await;
    assert!(on_d2.iter().all(|r| !r.contains("cut-off")), "{on_d2:?}");
    assert_eq!(on_d2.len(), 20);
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_beyond_the_rpo_is_refused_unless_the_loss_is_accepted() {
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(fast()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    assert!(write(&d1, &t, 0..10, "a").await);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    d1.repl
        .set_policy(
            &a1,
            "sales",
            FailoverPolicy {
                max_data_loss_txns: Some(1),
                ..FailoverPolicy::default()
            },
        )
        .unwrap();
    // The replica stops following the log (refresh only): the primary's next commits are
    // heard of by heartbeat but not applied.
    let a2 = AccountId::new("a2").unwrap();
    let r2 = d2
        .meta
        .read(|tx| tx.find_database(&a2, "sales"))
        .unwrap()
        .unwrap()
        .id;
    d2.repl.set_follow_log(&r2, false).unwrap();
    eventually(WAIT, "d1 to stop shipping to d2", || async {
        d1.repl
            .status()
            .await
            .unwrap()
            .downstream
            .iter()
            .all(|d| !d.subscribed)
    })
    .await;
    for i in 1..4 {
        assert!(write(&d1, &t, i * 10..i * 10 + 10, "unshipped").await);
    }
    eventually(
        WAIT,
        "d2 to hear that it is 3 transactions behind",
        || async {
            let s = d2.repl.status().await.unwrap();
            s.groups
                .first()
                .is_some_and(|g| g.txns_behind == 3 && g.policy.max_data_loss_txns == Some(1))
        },
    )
    .await;
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    let e = d2
        .repl
        .failover(&a2, "sales", PLAIN)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("RPO") && e.contains("3 transactions") && e.contains("--allow-data-loss"),
        "{e}"
    );
    assert_eq!(role(&d2, "a2", "sales"), DatabaseRole::Secondary);
    assert!(
        !replica(&d2, "a2", "sales").unwrap().promoting,
        "a refused failover undoes its pause"
    );
    let report = d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    assert_eq!(report.known_loss_txns, 3, "{report:?}");
    assert!(report.known_loss_ms >= 0);
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_pauses_commits_no_replica_confirmed_within_the_rpo() {
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(fast()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    assert!(write(&d1, &t, 0..10, "a").await);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let a2 = AccountId::new("a2").unwrap();
    let r2 = d2
        .meta
        .read(|tx| tx.find_database(&a2, "sales"))
        .unwrap()
        .unwrap()
        .id;
    d2.repl.set_follow_log(&r2, false).unwrap();
    eventually(WAIT, "d1 to hear d2 confirm everything", || async {
        let s = d1.repl.status().await.unwrap();
        s.downstream.iter().all(|d| !d.subscribed)
            && s.groups.first().is_some_and(|g| g.txns_behind == 0)
    })
    .await;
    d1.repl
        .set_policy(
            &a1,
            "sales",
            FailoverPolicy {
                max_data_loss_txns: Some(2),
                block_commits_beyond_rpo: true,
                ..FailoverPolicy::default()
            },
        )
        .unwrap();
    // Two unconfirmed transactions are within the RPO; a third is accepted (exposure 2),
    // the fourth would make it 3: paused, with the policy named.
    for i in 1..4 {
        assert!(write(&d1, &t, i * 10..i * 10 + 10, "b").await, "commit {i}");
    }
    let e = d1
        .tables
        .insert(&t, &[batch(40..50, "b")])
        .await
        .unwrap_err();
    match &e {
        tern_table::Error::NotWritable(r) => {
            assert!(r.paused, "{e}");
            assert!(r.reason.contains("block_commits_beyond_rpo"), "{e}");
        }
        other => panic!("expected a pause, got {other}"),
    }
    // The replica catches up (a refresh) and confirms: commits resume.
    d2.repl.request_refresh(&r2, "operator").unwrap();
    eventually(WAIT, "commits to resume", || async {
        match d1.tables.insert(&t, &[batch(40..50, "b")]).await {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(error = %e, "still paused");
                false
            }
        }
    })
    .await;
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_makes_a_peer_unavailable_until_put_back() {
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        ..
    } = pair_with(fast()).await;
    until_state(&d2, "d1", Availability::Available).await;
    let d1id = DeploymentId::new("d1").unwrap();
    assert_eq!(
        d2.repl.set_maintenance(&d1id, true).unwrap(),
        Availability::Maintenance
    );
    // Heartbeats keep arriving; maintenance holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        availability_of(&d2, "d1").await,
        Some(Availability::Maintenance)
    );
    d2.repl.set_maintenance(&d1id, false).unwrap();
    until_state(&d2, "d1", Availability::Available).await;
    let e = d2
        .repl
        .set_maintenance(&DeploymentId::new("nope").unwrap(), true);
    assert!(e.unwrap_err().to_string().contains("nope"));
    let h = d2.repl.availability_history(100).unwrap();
    let to: Vec<&str> = h
        .iter()
        .filter(|e| e.peer == d1id)
        .map(|e| e.to.as_str())
        .collect();
    assert!(to.ends_with(&["maintenance", "available"]), "{to:?}");
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_unreachable_replica_delays_no_other() {
    one_replica_cut_off(tern_storage::Fault::Fail).await;
}

/// A replica region whose storage hangs (every call held for an hour, as a connection
/// that never answers until a long timeout) delays no other replica either: each peer is
/// shipped to on its own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hanging_replica_delays_no_other() {
    one_replica_cut_off(tern_storage::Fault::Delay(Duration::from_secs(3600))).await;
}

/// d2's region is cut off from d1 by `fault` while d1 commits: d3 follows meanwhile. A
/// failing region then comes back and catches up with nothing lost or duplicated.
async fn one_replica_cut_off(fault: tern_storage::Fault) {
    let hangs = matches!(fault, tern_storage::Fault::Delay(_));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut d1, mut d2, mut d3) = open3(root).await;
    link(&d1, &d2).await;
    link(&d1, &d3).await;
    link(&d2, &d3).await;
    // d1 reaches d2's bucket through a store that fails while the plan says so.
    let plan = tern_storage::FaultPlan::new();
    let to_d2: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(
        tern_storage::FaultStore::new(std::sync::Arc::clone(&d2.bucket), plan.clone()),
    );
    d1.start_with(&[
        (d2.id.clone(), to_d2),
        (d3.id.clone(), std::sync::Arc::clone(&d3.bucket)),
    ]);
    d2.start(&[&d1, &d3]);
    d3.start(&[&d1, &d2]);
    let (a1, db, account_group) = primary(&d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", "t", columns())
        .await
        .unwrap();
    replicate_to(&d1, &a1, &account_group, &[(&d2, "a2"), (&d3, "a3")]).await;
    leased_write(&d1, &t).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;

    // d2's region becomes unreachable from d1: every call fails, or hangs.
    let cut = plan.arm(tern_storage::FaultRule::any().always().fault(fault));
    for i in 1..6 {
        // Retried when refused: on a loaded machine the primary's short test lease (d3's
        // echoes keep it) may lapse for a moment; what is shown here is that d3 follows.
        eventually(WAIT, "a write on d1", || async {
            write(&d1, &t, i * 10..i * 10 + 10, "b").await
        })
        .await;
    }
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d3, std::slice::from_ref(&t)).await;
    assert!(plan.fired(cut) > 0, "the cut was hit");
    let rid = replica_table_id(&d1.id, &t);
    assert!(
        ver(&d2, &rid) < ver(&d1, &t),
        "d2 could not follow meanwhile"
    );
    if hangs {
        // d1's calls into d2's bucket stay held up: stopped mid-unit.
        d1.kill().await;
        d2.stop().await;
        d3.stop().await;
        return;
    }
    let s = d1.repl.status().await.unwrap();
    let down = s
        .downstream
        .iter()
        .find(|d| d.peer.as_str() == "d2")
        .unwrap();
    assert!(
        down.last_error.is_some(),
        "the failing peer's error is shown: {s:?}"
    );

    // d2's region is back: it catches up, nothing lost or duplicated.
    plan.disarm(cut);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    assert_eq!(rows(&d2, &rid, None).await.len(), 60);
    d1.stop().await;
    d2.stop().await;
    d3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_majority_a_failover_is_refused_and_names_who_did_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut d1, mut d2, mut d3) = open3(root).await;
    let (_a1, t) = group_of_three(&mut d1, &mut d2, &mut d3, "t").await;
    leased_write(&d1, &t).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;
    // The primary and the other replica are both lost: d2 alone is no majority of three.
    d1.kill().await;
    d3.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    let a2 = AccountId::new("a2").unwrap();
    let e = d2
        .repl
        .failover(&a2, "sales", PLAIN)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("majority") && e.contains("no answer from") && e.contains("d3"),
        "{e}"
    );
    assert_eq!(role(&d2, "a2", "sales"), DatabaseRole::Secondary);
    // Forced, it promotes (and the old primary, when it returns, keeps its writes).
    let report = d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    assert!(report.forced && report.epoch >= 2, "{report:?}");
    let rid = replica_table_id(&d1.id, &t);
    assert!(write(&d2, &rid, 10..20, "b").await);
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_head_of_a_chain_is_lost_the_next_link_follows_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut d1, mut d2, mut d3) = open3(root).await;
    link(&d1, &d2).await;
    link(&d1, &d3).await;
    link(&d2, &d3).await;
    d1.start(&[&d2, &d3]);
    d2.start(&[&d1, &d3]);
    d3.start(&[&d1, &d2]);
    let (a1, db, account_group) = primary(&d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", "t", columns())
        .await
        .unwrap();
    let group = d1.repl.enable_replication(&a1, "sales").unwrap();
    let a2 = d2.create_account("a2").unwrap();
    d2.repl
        .set_account_global(&a2, Some(&account_group))
        .unwrap();
    knows(&d2, &group, "d1").await;
    d2.repl.create_replica(&a2, "sales", &group, None).unwrap();
    let a3 = d3.create_account("a3").unwrap();
    d3.repl
        .set_account_global(&a3, Some(&account_group))
        .unwrap();
    knows(&d3, &group, "d2").await;
    // d3 follows d2: a chain d1 → d2 → d3.
    d3.repl
        .create_replica(
            &a3,
            "sales",
            &group,
            Some(&DeploymentId::new("d2").unwrap()),
        )
        .unwrap();
    leased_write(&d1, &t).await;
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;
    assert_eq!(replica(&d3, "a3", "sales").unwrap().upstream.as_str(), "d2");

    // The head of the chain is lost: d3 takes its place behind the primary.
    d2.kill().await;
    until_state(&d3, "d2", Availability::Unavailable).await;
    eventually(WAIT, "d3 to follow d1", || async {
        replica(&d3, "a3", "sales").is_some_and(|r| r.upstream.as_str() == "d1")
    })
    .await;
    // Retried when refused: while d3 re-parents, d1's short test lease may lapse a moment.
    eventually(WAIT, "a write on d1", || async {
        write(&d1, &t, 10..20, "b").await
    })
    .await;
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d3, std::slice::from_ref(&t)).await;
    // The primary keeps its lease with d3's confirmations (two of three): writes go on.
    // (Without them every write would be refused; under a loaded machine one heartbeat
    // may come late and a single write be refused, so the next one is awaited.)
    eventually(WAIT, "a write on d1 with d2 still gone", || async {
        write(&d1, &t, 20..30, "c").await
    })
    .await;
    d1.stop().await;
    d3.stop().await;
}

/// Tables t1, t2, t3 of `db` on `d1`, each of three files of 10 rows.
async fn three_tables_of_three_files(
    d1: &Node,
    db: &tern_storage::layout::DatabaseId,
) -> Vec<TableId> {
    let mut tables = Vec::new();
    for name in ["t1", "t2", "t3"] {
        let t = d1
            .tables
            .create_table(db, "public", name, columns())
            .await
            .unwrap();
        for i in 0..3 {
            assert!(write(d1, &t, i * 10..i * 10 + 10, name).await);
        }
        tables.push(t);
    }
    tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_during_an_import_waits_for_it_never_half_imported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut d1 = open_with(root, "d1", None, fast()).await;
    let keys = root.join("d1").join("keys");
    // d2's own bucket answers reads of its inbound stage slowly while the plan says so.
    let plan = tern_storage::FaultPlan::new();
    let mut d2 = open_d2_through(root, &keys, &plan).await;
    link(&d1, &d2).await;
    d1.start(&[&d2]);
    d2.start(&[&d1]);
    let (a1, db, account_group) = primary(&d1).await;
    let tables = three_tables_of_three_files(&d1, &db).await;
    let slow = plan.arm(
        tern_storage::FaultRule::on(tern_storage::Operation::Get)
            .under("from/d1/inbound")
            .always()
            .fault(tern_storage::Fault::Delay(Duration::from_millis(400))),
    );
    replicate(&d1, &a1, &d2, &account_group).await;
    eventually(WAIT, "the import to be copying", || async {
        plan.fired(slow) > 0
    })
    .await;
    // The primary is lost while the replica is half way through importing its snapshot.
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    let a2 = AccountId::new("a2").unwrap();
    let report = d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    // The import finished first: every table complete, none half there.
    for t in &tables {
        let rid = replica_table_id(&d1.id, t);
        assert_eq!(
            rows(&d2, &rid, None).await,
            rows(&d1, t, None).await,
            "{report:?}"
        );
    }
    plan.disarm(slow);
    d2.stop().await;
}

/// d1 (tables t1, t2, t3 of three files each) replicated to d2, whose import commits in
/// batches of 3 files (one table each) with a `drain_timeout` of 500 ms; d2 reads its own
/// inbound stage through a store that answers its `nth` read and every one after with
/// `fault` (5: the sections file and t1's files are read, t2's are not). Returns once
/// t1's batch is committed, with d1 killed and unavailable to d2: the directory, d1, d2,
/// the plan, the fault's rule, the tables.
async fn import_held_after_its_first_batch(
    nth: u64,
    fault: tern_storage::Fault,
) -> (
    tempfile::TempDir,
    Node,
    Node,
    tern_storage::FaultPlan,
    tern_storage::fault::RuleId,
    Vec<TableId>,
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = ReplicationConfig {
        import_batch_files: 3,
        drain_timeout: Duration::from_millis(500),
        ..fast()
    };
    let mut d1 = open_with(root, "d1", None, config.clone()).await;
    let keys = root.join("d1").join("keys");
    let plan = tern_storage::FaultPlan::new();
    let mut d2 = open_through(root, "d2", &keys, &plan, config).await;
    link(&d1, &d2).await;
    d1.start(&[&d2]);
    d2.start(&[&d1]);
    let (a1, db, account_group) = primary(&d1).await;
    let tables = three_tables_of_three_files(&d1, &db).await;
    // The import reads its sections file, then t1's 3 files (one batch: t1 alone), then
    // t2's.
    let rule = plan.arm(
        tern_storage::FaultRule::on(tern_storage::Operation::Get)
            .under("from/d1/inbound")
            .nth(nth)
            .always()
            .fault(fault),
    );
    replicate(&d1, &a1, &d2, &account_group).await;
    eventually(WAIT, "the first table's import committed", || async {
        plan.fired(rule) > 0 && import_job(&d2).is_some_and(|j| j.tables_done == 1)
    })
    .await;
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    (dir, d1, d2, plan, rule, tables)
}

/// The import job of `d2` (there is one at most in these tests).
fn import_job(d2: &Node) -> Option<tern_replication::state::ImportJobDpo> {
    d2.meta
        .read(|tx| {
            tx.scan_prefix::<tern_replication::state::ImportJobDpo>(
                &tern_replication::state::keys::import_jobs(),
            )
        })
        .unwrap()
        .into_iter()
        .map(|(_, j)| j)
        .next()
}

/// An import the drain cannot wait out, with some of its tables committed (they commit in
/// batches of `import_batch_files`), holds tables from different points in time: a
/// failover refuses to promote it (unless the loss is accepted) and promotes it complete
/// once the import has finished. The import is held half way by failing every read of its
/// inbound stage after its first batch's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_refuses_a_half_committed_import_until_it_finishes() {
    let (_dir, d1, mut d2, plan, held, tables) =
        import_held_after_its_first_batch(5, tern_storage::Fault::Fail).await;
    let a2 = AccountId::new("a2").unwrap();
    assert!(plan.fired(held) > 0, "the later tables' reads failed");
    let e = d2
        .repl
        .failover(&a2, "sales", PLAIN)
        .await
        .expect_err("a half-committed import is not promoted");
    assert!(e.to_string().contains("half committed"), "{e}");
    assert_eq!(
        rows(&d2, &replica_table_id(&d1.id, &tables[2]), None).await,
        Vec::<String>::new(),
        "t3 is not imported yet"
    );
    // The reads come back: the import finishes, and then the failover goes through.
    plan.disarm(held);
    eventually(WAIT, "the import to finish", || async {
        import_job(&d2).is_none()
    })
    .await;
    // (A group of two promotes only with the loss accepted: the old primary cannot be
    // proved stopped.)
    let report = d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    assert!(!report.drain_timed_out, "{report:?}");
    for t in &tables {
        assert_eq!(
            rows(&d2, &replica_table_id(&d1.id, t), None).await,
            rows(&d1, t, None).await,
            "{report:?}"
        );
    }
    d2.stop().await;
}

/// An import whose batch hangs on its own storage (reads of its inbound stage that never
/// answer) cannot hold a failover without end: after `drain_timeout` the failover takes
/// the importer — the batch's copies are dropped uncommitted — decides and promotes (the
/// loss accepted: the import is half committed), and no import commit lands after the
/// claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_is_not_held_by_an_import_hung_on_its_storage() {
    // After t1's batch and one of t2's files, every read of the inbound stage hangs: the
    // second batch never finishes copying.
    let (_dir, d1, mut d2, plan, hung, tables) =
        import_held_after_its_first_batch(6, tern_storage::Fault::Delay(Duration::from_secs(3600)))
            .await;
    let imported = |t: &TableId| replica_table_id(&d1.id, t);
    // How many files d2's volume holds of `t`'s replica.
    let files_of = |t: &TableId| {
        let dir = format!("tbl/{}/mp/", imported(t));
        let volume = std::sync::Arc::clone(&d2.volume);
        async move {
            objects(&volume, "")
                .await
                .into_iter()
                .filter(|p| p.contains(&dir))
                .count()
        }
    };
    eventually(WAIT, "one of t2's files copied, uncommitted", || async {
        files_of(&tables[1]).await == 1
    })
    .await;
    let a2 = AccountId::new("a2").unwrap();
    let report = tokio::time::timeout(WAIT, d2.repl.failover(&a2, "sales", FORCE))
        .await
        .expect("the failover is decided, not held by the hung import")
        .unwrap();
    assert!(report.drain_timed_out && report.forced, "{report:?}");
    assert_eq!(
        rows(&d2, &imported(&tables[0]), None).await,
        rows(&d1, &tables[0], None).await,
        "the first batch was committed before"
    );
    // The import, let go after the claim, finds no replica: dropped, committing nothing.
    plan.disarm(hung);
    eventually(WAIT, "the import job dropped", || async {
        import_job(&d2).is_none()
    })
    .await;
    for t in &tables[1..] {
        assert_eq!(
            rows(&d2, &imported(t), None).await,
            Vec::<String>::new(),
            "no import commit after the claim ({t})"
        );
        // Nor a file left behind: the dropped import deleted what its batch had copied.
        assert_eq!(files_of(t).await, 0, "no file of {t} left in the volume");
    }
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_three_fails_over_by_itself_when_its_policy_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut d1, mut d2, mut d3) = open3(root).await;
    let (a1, t) = group_of_three(&mut d1, &mut d2, &mut d3, "t").await;
    d1.repl
        .set_policy(
            &a1,
            "sales",
            FailoverPolicy {
                auto_failover: true,
                max_data_loss_txns: Some(10),
                ..FailoverPolicy::default()
            },
        )
        .unwrap();
    leased_write(&d1, &t).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;
    for n in [&d2, &d3] {
        eventually(WAIT, "the policy to reach the replicas", || async {
            n.repl.status().await.unwrap().groups[0]
                .policy
                .auto_failover
        })
        .await;
    }
    // The primary is lost; nobody is told to fail over.
    d1.kill().await;
    let rid = replica_table_id(&d1.id, &t);
    eventually(WAIT, "a secondary to take over", || async {
        role(&d2, "a2", "sales") == DatabaseRole::Primary
            || role(&d3, "a3", "sales") == DatabaseRole::Primary
    })
    .await;
    let (new, other, acct) = if role(&d2, "a2", "sales") == DatabaseRole::Primary {
        (&d2, &d3, "a3")
    } else {
        (&d3, &d2, "a2")
    };
    eventually(WAIT, "the new primary to take writes", || async {
        write(new, &rid, 10..20, "auto").await
    })
    .await;
    eventually(
        WAIT,
        "the other replica to follow the new primary",
        || async {
            replica(other, acct, "sales").is_some_and(|r| r.upstream == new.id)
                && rows(other, &rid, None).await == rows(new, &rid, None).await
        },
    )
    .await;
    assert_eq!(
        role(other, acct, "sales"),
        DatabaseRole::Secondary,
        "one primary"
    );
    d2.stop().await;
    d3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_applies_what_the_lost_primary_had_already_sent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut d1 = open_with(root, "d1", None, fast()).await;
    let keys = root.join("d1").join("keys");
    // d2's receiver reads d1's message files through a store that fails or delays them
    // while the plan says so.
    let plan = tern_storage::FaultPlan::new();
    let mut d2 = open_d2_through(root, &keys, &plan).await;
    link(&d1, &d2).await;
    d1.start(&[&d2]);
    d2.start(&[&d1]);
    let (a1, db, account_group) = primary(&d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", "t", columns())
        .await
        .unwrap();
    assert!(write(&d1, &t, 0..10, "a").await);
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;

    // d2 cannot read what d1 sends from here on.
    let unread = plan.arm(
        tern_storage::FaultRule::on(tern_storage::Operation::Get)
            .under("from/d1/msg")
            .always()
            .fault(tern_storage::Fault::Fail),
    );
    assert!(write(&d1, &t, 10..40, "sent before the loss").await);
    eventually(WAIT, "d1 to have sent the transaction to d2", || async {
        let s = d1.repl.status().await.unwrap();
        s.downstream.iter().all(|d| d.records_behind == 0)
            && d1.ctx.unsent_to(&d2.id).await.unwrap() == 0
    })
    .await;
    // The primary is lost with its last transaction in d2's bucket, not yet received.
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    let rid = replica_table_id(&d1.id, &t);
    assert_eq!(rows(&d2, &rid, None).await.len(), 10, "not received yet");
    // The receiver reads again, its next read slowly: the failover must wait for it.
    plan.disarm(unread);
    let slow = plan.arm(
        tern_storage::FaultRule::on(tern_storage::Operation::Get)
            .under("from/d1/msg")
            .times(1)
            .fault(tern_storage::Fault::Delay(Duration::from_millis(1500))),
    );
    let a2 = AccountId::new("a2").unwrap();
    let report = d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    assert!(!report.drain_timed_out, "{report:?}");
    assert!(report.drained >= 1, "{report:?}");
    assert_eq!(
        plan.fired(slow),
        1,
        "the slow read happened during the failover"
    );
    assert_eq!(
        rows(&d2, &rid, None).await,
        rows(&d1, &t, None).await,
        "everything d1 sent is on the new primary: {report:?}"
    );
    plan.disarm(slow);
    d2.stop().await;
}

/// A writer of single-row inserts with unique ids on `tables`/`t` until `stop`: the ids
/// acknowledged, and how many were refused.
fn load(
    tables: std::sync::Arc<tern_table::Tables>,
    t: TableId,
    first: i64,
    acked: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut refused = 0;
        let mut next = first;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tables.insert(&t, &[batch(next..next + 1, "load")]).await {
                Ok(_) => acked.lock().unwrap().push(next),
                Err(_) => refused += 1,
            }
            next += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        refused
    })
}

/// The ids in a table.
async fn ids_of(n: &Node, t: &TableId) -> Vec<i64> {
    let mut ids: Vec<i64> = rows(n, t, None)
        .await
        .iter()
        .map(|r| r.split('|').next().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switchover_under_load_loses_nothing_and_switches_back() {
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(fast()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    assert!(write(&d1, &t, 0..10, "a").await);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    until_state(&d2, "d1", Availability::Available).await;
    let a2 = AccountId::new("a2").unwrap();
    let rid = replica_table_id(&d1.id, &t);

    // A steady load on d1 while d2 takes over.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = load(
        std::sync::Arc::clone(&d1.tables),
        t.clone(),
        1000,
        acked.clone(),
        stop.clone(),
    );
    eventually(WAIT, "the load to be under way", || async {
        acked.lock().unwrap().len() >= 20
    })
    .await;
    let report = d2.repl.switchover(&a2, "sales").await.unwrap();
    assert!(report.epoch >= 2, "{report:?}");
    assert_eq!(
        report.previous_primary.as_ref().map(|p| p.as_str()),
        Some("d1")
    );
    assert_eq!(role(&d2, "a2", "sales"), DatabaseRole::Primary);
    // d1 learns the new epoch: from then on it refuses every write as a secondary.
    eventually(WAIT, "d1 to follow d2", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused = writer.await.unwrap();
    assert!(refused > 0, "the old primary paused, then refused");
    let e = d1
        .tables
        .insert(&t, &[batch(9000..9001, "late")])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("read-only") || e.contains("secondary"), "{e}");
    // Every acknowledged write is on the new primary exactly once; nothing was kept
    // aside as a conflict.
    let mut want: Vec<i64> = (0..10).collect();
    want.extend(acked.lock().unwrap().iter().copied());
    want.sort_unstable();
    assert_eq!(ids_of(&d2, &rid).await, want, "{report:?}");
    assert!(d1.repl.conflicts().unwrap().is_empty());
    assert!(write(&d2, &rid, 20_000..20_010, "on d2").await);
    eventually(WAIT, "d1 to catch up with d2", || async {
        rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;

    // And back, under load on d2: d1 is the primary again, nothing lost.
    until_state(&d1, "d2", Availability::Available).await;
    acked.lock().unwrap().clear();
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let writer = load(
        std::sync::Arc::clone(&d2.tables),
        rid.clone(),
        30_000,
        acked.clone(),
        stop.clone(),
    );
    eventually(WAIT, "the load to be under way", || async {
        acked.lock().unwrap().len() >= 20
    })
    .await;
    let back = d1.repl.switchover(&a1, "sales").await.unwrap();
    assert!(back.epoch > report.epoch, "{back:?}");
    eventually(WAIT, "d2 to follow d1", || async {
        role(&d2, "a2", "sales") == DatabaseRole::Secondary
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let on_d1 = ids_of(&d1, &t).await;
    for id in acked.lock().unwrap().iter() {
        assert_eq!(on_d1.iter().filter(|i| *i == id).count(), 1, "{id}");
    }
    assert!(d2.repl.conflicts().unwrap().is_empty());
    // Repeated on the primary: nothing to do.
    let again = d1.repl.switchover(&a1, "sales").await.unwrap();
    assert_eq!((again.epoch, again.previous_primary), (back.epoch, None));
    assert!(write(&d1, &t, 40_000..40_010, "back").await);
    eventually(WAIT, "d2 to equal d1", || async {
        rows(&d2, &rid, None).await == rows(&d1, &t, None).await
    })
    .await;
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_records_are_read_applied_refused_and_discarded_after_failing_back() {
    let Pair {
        dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(fast()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    assert!(write(&d1, &t, 0..10, "before").await);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    // Cut off, the old primary commits three transactions nobody else sees: an insert, a
    // delete (rewrites the file of rows 0..10), another insert.
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    assert!(write(&d1, &t, 10..20, "cut-off-a").await);
    d1.tables
        .delete(
            &t,
            &tern_table::Predicate::cmp("id", tern_table::CmpOp::Lt, 5i64),
        )
        .await
        .unwrap();
    assert!(write(&d1, &t, 20..30, "cut-off-c").await);
    let a2 = AccountId::new("a2").unwrap();
    d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    let rid = replica_table_id(&d1.id, &t);
    // The new primary changes one of the rows the delete had changed.
    d2.tables
        .delete(&rid, &tern_table::Predicate::eq("id", 3i64))
        .await
        .unwrap();
    let mut d1 = open_with(dir.path(), "d1", None, fast()).await;
    d1.start(&[&d2]);
    eventually(WAIT, "d1 fenced, its three transactions kept", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            && d1.repl.conflicts().unwrap().len() == 3
            && rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;
    let mut kept = d1.repl.conflicts().unwrap();
    kept.sort_by_key(|c| c.txn_id);
    let (a, b, c) = (kept[0].id.clone(), kept[1].id.clone(), kept[2].id.clone());
    // Readable: the rows each added and removed.
    let (_, tables) = d1.repl.conflict_rows(&a).await.unwrap();
    let added: usize = tables[0].added.iter().map(|b| b.num_rows()).sum();
    assert_eq!(added, 10);
    assert_eq!(tables[0].removed.as_ref().map(Vec::len), Some(0));
    let (_, tables) = d1.repl.conflict_rows(&b).await.unwrap();
    assert_eq!(
        tables[0].added.iter().map(|b| b.num_rows()).sum::<usize>(),
        0
    );
    if let Some(removed) = &tables[0].removed {
        assert_eq!(removed.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    }
    // Applied only on the primary.
    let e = d1.repl.apply_conflict(&a).await.unwrap_err().to_string();
    assert!(e.contains("switchover"), "{e}");
    until_state(&d1, "d2", Availability::Available).await;
    d1.repl.switchover(&a1, "sales").await.unwrap();
    // The insert applies: its rows are back, as a new transaction, and replicate.
    let applied = d1.repl.apply_conflict(&a).await.unwrap();
    assert_eq!(applied.versions.len(), 1, "{applied:?}");
    let on_d1 = rows(&d1, &t, None).await;
    assert_eq!(on_d1.iter().filter(|r| r.contains("cut-off-a")).count(), 10);
    // The delete's rows moved on (row 3 was deleted by the new primary): refused.
    let e = d1.repl.apply_conflict(&b).await.unwrap_err().to_string();
    assert!(e.contains("changed since"), "{e}");
    // Discarded: the record stays as history, its files go.
    let discarded = d1.repl.discard_conflict(&c).await.unwrap();
    assert_eq!(discarded.state.name(), "discarded");
    for f in discarded.versions.iter().flat_map(|v| &v.added) {
        let path = tern_storage::Path::from(f.path.as_str());
        assert!(
            object_store::ObjectStoreExt::head(d1.volume.as_ref(), &path)
                .await
                .is_err(),
            "{}",
            f.path
        );
    }
    let e = d1.repl.apply_conflict(&c).await.unwrap_err().to_string();
    assert!(e.contains("discarded already"), "{e}");
    let e = d1.repl.apply_conflict(&a).await.unwrap_err().to_string();
    assert!(e.contains("applied already"), "{e}");
    let states: Vec<&str> = {
        let mut all = d1.repl.conflicts().unwrap();
        all.sort_by_key(|c| c.txn_id);
        all.iter().map(|c| c.state.name()).collect()
    };
    assert_eq!(states, ["applied", "open", "discarded"]);
    eventually(WAIT, "d2 to follow d1 with the applied rows", || async {
        rows(&d2, &rid, None).await == rows(&d1, &t, None).await
    })
    .await;
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_old_primary_resyncs_only_the_divergence() {
    use tern_replication::service::Counters;
    let Pair {
        dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(fast()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    for i in 0..10 {
        assert!(write(&d1, &t, i * 100..i * 100 + 100, "shared").await);
    }
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    // The old primary's own divergence: two files that must never cross.
    for i in 0..2 {
        assert!(write(&d1, &t, 5000 + i * 10..5010 + i * 10, "diverged").await);
    }
    let a2 = AccountId::new("a2").unwrap();
    d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    let rid = replica_table_id(&d1.id, &t);
    for i in 0..3 {
        assert!(write(&d2, &rid, 9000 + i * 100..9100 + i * 100, "new").await);
    }
    let new_files: Vec<tern_meta::MicroPartitionDpo> = d2
        .meta
        .read(|tx| tx.active_micro_partitions(&rid, ver(&d2, &rid).unwrap()))
        .unwrap()
        .into_iter()
        .filter(|m| m.global_ref.origin.as_str() == "d2")
        .collect();
    assert_eq!(new_files.len(), 3);
    let changed: u64 = new_files.iter().map(|m| m.bytes).sum();
    let (files0, bytes0) = (
        Counters::get(&d2.repl.counters().files_copied),
        Counters::get(&d2.repl.counters().bytes_copied),
    );
    let mut d1 = open_with(dir.path(), "d1", None, fast()).await;
    d1.start(&[&d2]);
    eventually(WAIT, "d1 to rejoin and equal d2", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            // d1 rewinds meanwhile: a scan may lose the version it started at.
            && try_rows(&d1, &t, None).await.ok() == Some(rows(&d2, &rid, None).await)
    })
    .await;
    let files = Counters::get(&d2.repl.counters().files_copied) - files0;
    let bytes = Counters::get(&d2.repl.counters().bytes_copied) - bytes0;
    assert_eq!(files, 3, "only the new primary's three new files crossed");
    assert!(
        bytes as f64 <= changed as f64 * 1.05,
        "{bytes} bytes copied for {changed} changed"
    );
    // The old primary's own divergence never reached the new primary.
    let kept: Vec<tern_storage::layout::GlobalFileRef> = d1
        .repl
        .conflicts()
        .unwrap()
        .iter()
        .flat_map(|c| c.versions.iter().flat_map(|v| v.added.iter()))
        .map(|m| m.global_ref.clone())
        .collect();
    assert_eq!(kept.len(), 2);
    let on_d2 = d2.meta.read(|tx| tx.list_micro_partitions(&rid)).unwrap();
    assert!(
        on_d2.iter().all(|m| !kept.contains(&m.global_ref)),
        "{kept:?}"
    );
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn double_failover_then_failback_to_the_first_primary() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut d1, mut d2, mut d3) = open3(root).await;
    let (a1, t) = group_of_three(&mut d1, &mut d2, &mut d3, "t").await;
    let rid = replica_table_id(&d1.id, &t);
    leased_write(&d1, &t).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;

    // A → B: d1 lost, d2 wins the majority with d3.
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    let (a2, a3) = (AccountId::new("a2").unwrap(), AccountId::new("a3").unwrap());
    let r = d2.repl.failover(&a2, "sales", PLAIN).await.unwrap();
    assert_eq!(r.epoch, 2, "{r:?}");
    assert!(write(&d2, &rid, 10..20, "b").await);
    // d1 comes back, follows d2.
    let mut d1 = open_with(root, "d1", None, fast()).await;
    d1.start(&[&d2, &d3]);
    eventually(WAIT, "d1 to follow d2", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            && rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;

    // B → C: d2 lost, d3 wins the majority with d1.
    d2.kill().await;
    until_state(&d3, "d2", Availability::Unavailable).await;
    until_state(&d1, "d2", Availability::Unavailable).await;
    let r = d3.repl.failover(&a3, "sales", PLAIN).await.unwrap();
    assert!(r.epoch > 2 && !r.forced, "{r:?}");
    assert!(write(&d3, &rid, 20..30, "c").await);
    let mut d2 = open_with(root, "d2", Some(&root.join("d1").join("keys")), fast()).await;
    d2.start(&[&d1, &d3]);
    eventually(WAIT, "d1 and d2 to follow d3", || async {
        role(&d2, "a2", "sales") == DatabaseRole::Secondary
            && rows(&d1, &t, None).await == rows(&d3, &rid, None).await
            && rows(&d2, &rid, None).await == rows(&d3, &rid, None).await
    })
    .await;

    // Failback to A, planned: nothing lost.
    until_state(&d1, "d3", Availability::Available).await;
    let back = d1.repl.switchover(&a1, "sales").await.unwrap();
    assert_eq!(
        back.previous_primary.as_ref().map(|p| p.as_str()),
        Some("d3")
    );
    assert!(write(&d1, &t, 30..40, "a-again").await);
    eventually(WAIT, "every replica to equal d1", || async {
        let want = rows(&d1, &t, None).await;
        rows(&d2, &rid, None).await == want && rows(&d3, &rid, None).await == want
    })
    .await;
    assert_eq!(rows(&d1, &t, None).await.len(), 40);
    for n in [&d1, &d2, &d3] {
        assert!(n.repl.conflicts().unwrap().is_empty(), "{}", n.id);
    }
    for n in [&mut d1, &mut d2, &mut d3] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_cut_short_by_a_crash_releases_the_primary_and_can_be_done_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut d1 = open_with(root, "d1", None, fast()).await;
    let keys = root.join("d1").join("keys");
    // d2 reads d1's messages through a store that fails them while the plan says so: it
    // cannot catch up, nor hear the primary's answers.
    let plan = tern_storage::FaultPlan::new();
    let mut d2 = open_d2_through(root, &keys, &plan).await;
    link(&d1, &d2).await;
    d1.start(&[&d2]);
    d2.start(&[&d1]);
    let (a1, db, account_group) = primary(&d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", "t", columns())
        .await
        .unwrap();
    assert!(write(&d1, &t, 0..10, "a").await);
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    until_state(&d2, "d1", Availability::Available).await;
    let deaf = plan.arm(
        tern_storage::FaultRule::on(tern_storage::Operation::Get)
            .under("from/d1/msg")
            .always()
            .fault(tern_storage::Fault::Fail),
    );
    assert!(write(&d1, &t, 10..20, "b").await);
    // The switchover starts: the primary pauses for it...
    let a2 = AccountId::new("a2").unwrap();
    let repl = d2.repl.clone();
    let running = tokio::spawn(async move { repl.switchover(&a2, "sales").await });
    let group_of_d1 = || {
        let d = d1
            .meta
            .read(|tx| tx.find_database(&a1, "sales"))
            .unwrap()
            .unwrap();
        d1.repl.group_state(&d).unwrap()
    };
    eventually(WAIT, "d1 to pause for the switchover", || async {
        group_of_d1().handoff.is_some()
    })
    .await;
    let e = d1
        .tables
        .insert(&t, &[batch(90..91, "paused")])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("switchover"), "{e}");
    // ...and the candidate crashes before it could claim.
    running.abort();
    let _ = running.await;
    d2.kill().await;
    plan.disarm(deaf);
    let mut d2 = open_d2_through(root, &keys, &plan).await;
    d2.start(&[&d1]);
    // Back, it withdraws the candidacy it no longer stands for: the primary takes writes.
    eventually(WAIT, "d1 to take writes again", || async {
        group_of_d1().handoff.is_none() && write(&d1, &t, 20..30, "resumed").await
    })
    .await;
    assert_eq!(role(&d1, "a1", "sales"), DatabaseRole::Primary);
    // Done again, it completes, nothing lost.
    let a2 = AccountId::new("a2").unwrap();
    let r = d2.repl.switchover(&a2, "sales").await.unwrap();
    assert_eq!(r.previous_primary.as_ref().map(|p| p.as_str()), Some("d1"));
    let rid = replica_table_id(&d1.id, &t);
    eventually(WAIT, "d1 to follow d2", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            && rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;
    assert_eq!(rows(&d2, &rid, None).await.len(), 30);
    assert!(d1.repl.conflicts().unwrap().is_empty());
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_primary_shows_a_growing_lag_never_zero() {
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(fast()).await;
    assert!(write(&d1, &t, 0..10, "a").await);
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let status = || async { d2.repl.status().await.unwrap().replicas[0].clone() };
    eventually(WAIT, "d2 caught up and hearing d1", || async {
        let s = status().await;
        s.lag_ms == 0 && s.versions_behind == 0 && s.staleness_ms.is_some()
    })
    .await;
    // The primary goes silent: nothing new is known, so nothing is "behind" — but the lag
    // grows with the silence.
    d1.kill().await;
    eventually(WAIT, "the lag to grow past a second", || async {
        let s = status().await;
        s.versions_behind == 0 && s.lag_ms > 1_000 && s.staleness_ms.is_some_and(|a| a >= s.lag_ms)
    })
    .await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_whose_candidate_dies_after_winning_ends_and_the_primary_writes_again() {
    // The handoff ends after switchover_timeout + vote_timeout (3 s here).
    let config = ReplicationConfig {
        vote_timeout: Duration::from_secs(1),
        switchover_timeout: Duration::from_secs(2),
        ..fast()
    };
    let Pair {
        dir,
        keys,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(config.clone()).await;
    assert!(write(&d1, &t, 0..10, "before").await);
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    until_state(&d2, "d1", Availability::Available).await;
    // The candidate dies the moment it has won: the primary paused for it, nobody will
    // claim, and no cancel will come.
    d2.ctx
        .crash_points()
        .arm(tern_replication::crash::SWITCHOVER_WON);
    let e = d2
        .repl
        .switchover(&AccountId::new("a2").unwrap(), "sales")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("switchover.won"), "{e}");
    d2.kill().await;
    let paused = d1
        .tables
        .insert(&t, &[batch(90..91, "paused")])
        .await
        .unwrap_err()
        .to_string();
    assert!(paused.contains("switchover"), "{paused}");
    eventually(WAIT, "d1 to end the switchover and take writes", || async {
        write(&d1, &t, 10..20, "resumed").await
    })
    .await;
    let history = d1.repl.availability_history(50).unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.to == "cancelled" && e.reason.contains("did not complete")),
        "{history:?}"
    );
    assert_eq!(role(&d1, "a1", "sales"), DatabaseRole::Primary);
    // The candidate returns: it follows the primary, which it never replaced.
    let mut d2 = open_with(dir.path(), "d2", Some(&keys), config).await;
    d2.start(&[&d1]);
    let rid = replica_table_id(&d1.id, &t);
    eventually(WAIT, "d2 to follow d1 again", || async {
        role(&d2, "a2", "sales") == DatabaseRole::Secondary
            && rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;
    assert_eq!(rows(&d2, &rid, None).await.len(), 20);
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejoin_killed_mid_rewind_keeps_every_conflict_once_and_ends_equal() {
    let Pair {
        dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db,
        account_group,
        t,
    } = pair_with(fast()).await;
    let t2 = d1
        .tables
        .create_table(&db, "public", "t2", columns())
        .await
        .unwrap();
    replicate(&d1, &a1, &d2, &account_group).await;
    assert!(write(&d1, &t, 0..10, "before").await);
    assert!(write(&d1, &t2, 0..10, "before").await);
    caught_up(&d1, &d2, &[t.clone(), t2.clone()]).await;
    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    // Cut off, the old primary commits to both tables.
    assert!(write(&d1, &t, 10..20, "cut-off").await);
    assert!(write(&d1, &t2, 10..20, "cut-off").await);
    let a2 = AccountId::new("a2").unwrap();
    d2.repl.failover(&a2, "sales", FORCE).await.unwrap();
    let (r1, r2) = (replica_table_id(&d1.id, &t), replica_table_id(&d1.id, &t2));
    assert!(write(&d2, &r1, 100..110, "new").await);
    // It comes back and dies at the second transaction it begins: in the middle of its
    // rewind to the fork (one table rolled back, the other not yet).
    let mut d1 = open_with(dir.path(), "d1", None, fast()).await;
    d1.txn.crash_points().arm("begin", 2);
    d1.start(&[&d2]);
    eventually(WAIT, "the crash point", || async {
        d1.txn.crash_points().crashed()
    })
    .await;
    d1.kill().await;
    let mut d1 = open_with(dir.path(), "d1", None, fast()).await;
    d1.start(&[&d2]);
    eventually(WAIT, "d1 to finish its rejoin and equal d2", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            && rows(&d1, &t, None).await == rows(&d2, &r1, None).await
            && rows(&d1, &t2, None).await == rows(&d2, &r2, None).await
    })
    .await;
    let kept = d1.repl.conflicts().unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    for c in &kept {
        assert_eq!(c.versions.len(), 1, "{c:?}");
        assert_eq!(c.epoch, 1, "{c:?}");
    }
    let mut tables: Vec<_> = kept.iter().map(|c| c.versions[0].table.clone()).collect();
    tables.sort();
    let mut want = vec![t.clone(), t2.clone()];
    want.sort();
    assert_eq!(tables, want);
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_in_a_group_of_four_is_granted_once_the_handoff_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // As in production, the primary's silence a vote needs is longer than a candidate
    // waits for votes.
    let config = ReplicationConfig {
        unavailable_after: Duration::from_secs(10),
        vote_timeout: Duration::from_secs(5),
        ..fast()
    };
    let keys = root.join("d1").join("keys");
    let mut d1 = open_with(root, "d1", None, config.clone()).await;
    let mut d2 = open_with(root, "d2", Some(&keys), config.clone()).await;
    let mut d3 = open_with(root, "d3", Some(&keys), config.clone()).await;
    let mut d4 = open_with(root, "d4", Some(&keys), config).await;
    for (a, b) in [
        (&d1, &d2),
        (&d1, &d3),
        (&d1, &d4),
        (&d2, &d3),
        (&d2, &d4),
        (&d3, &d4),
    ] {
        link(a, b).await;
    }
    d1.start(&[&d2, &d3, &d4]);
    d2.start(&[&d1, &d3, &d4]);
    d3.start(&[&d1, &d2, &d4]);
    d4.start(&[&d1, &d2, &d3]);
    let (a1, db, account_group) = primary(&d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", "t", columns())
        .await
        .unwrap();
    replicate_to(
        &d1,
        &a1,
        &account_group,
        &[(&d2, "a2"), (&d3, "a3"), (&d4, "a4")],
    )
    .await;
    leased_write(&d1, &t).await;
    for n in [&d2, &d3, &d4] {
        caught_up(&d1, n, std::slice::from_ref(&t)).await;
        until_state(n, "d1", Availability::Available).await;
    }
    // d3 and d4 still hear d1 when d2 asks them: they grant once d1 announces the handoff
    // (before, they waited for d1's silence and refused, and d2 had to stand again).
    let r = d2
        .repl
        .switchover(&AccountId::new("a2").unwrap(), "sales")
        .await
        .unwrap();
    assert_eq!(r.epoch, 2, "granted at the first epoch asked for: {r:?}");
    let rid = replica_table_id(&d1.id, &t);
    assert!(write(&d2, &rid, 10..20, "b").await);
    eventually(WAIT, "everyone to follow d2", || async {
        let want = rows(&d2, &rid, None).await;
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            && rows(&d1, &t, None).await == want
            && rows(&d3, &rid, None).await == want
            && rows(&d4, &rid, None).await == want
    })
    .await;
    for n in [&mut d1, &mut d2, &mut d3, &mut d4] {
        n.stop().await;
    }
}
