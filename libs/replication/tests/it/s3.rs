//! Replication with the volume and replication buckets on S3 emulators.
//!
//! * LocalStack: fresh buckets for d1's and d2's volume and replication bucket; a replica on
//!   d2 follows the primary on d1, and no object in any of the four buckets holds plaintext
//!   (no Parquet magic, no inserted value).
//! * moto with IAM enforced: each deployment writes into the other's replication bucket only
//!   through the write-only peer identity `infra/` gives it for `from/<self>/`, and
//!   replication still works end to end.
//!
//! Like every emulator test, these start the emulator on demand (`tern_storage::emulator`)
//! and fail, never skip, when it cannot be had.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _};
use tern_replication::local::{LocalDeployment, LocalOptions};
use tern_replication::replica_table_id;
use tern_storage::emulator::{self, Target};
use tern_storage::layout::TableId;
use tern_storage::{StoreConfig, open_store};
use tern_table::{CmpOp, Predicate};
use tern_txn::TxnOptions;

use crate::common::*;

/// A value inserted on the primary that must never appear in any object.
const CANARY: &str = "plaintext-canary-q7x";

async fn open_s3(
    root: &FsPath,
    id: &str,
    join: Option<&FsPath>,
    volume: Arc<dyn ObjectStore>,
    bucket: Arc<dyn ObjectStore>,
) -> Node {
    open_s3_with(root, id, join, volume, bucket, repl_config()).await
}

async fn open_s3_with(
    root: &FsPath,
    id: &str,
    join: Option<&FsPath>,
    volume: Arc<dyn ObjectStore>,
    bucket: Arc<dyn ObjectStore>,
    replication: tern_replication::ReplicationConfig,
) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    LocalDeployment::open_on(
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
        volume,
        bucket,
    )
    .await
    .unwrap()
}

/// The primary/replica scenario on d1 and d2 (already started): a table on d1, a replica
/// on d2, inserts and deletes followed.
async fn follow(d1: &Node, d2: &Node) -> TableId {
    let (a1, db, account_group) = primary(d1).await;
    let orders = d1
        .tables
        .create_table(&db, "public", "orders", columns())
        .await
        .unwrap();
    d1.tables
        .insert(&orders, &[batch(0..100, CANARY)])
        .await
        .unwrap();
    replicate(d1, &a1, d2, &account_group).await;
    let one = std::slice::from_ref(&orders);
    caught_up(d1, d2, one).await;
    same_rows(d1, d2, one).await;

    d1.tables
        .insert(&orders, &[batch(100..200, CANARY)])
        .await
        .unwrap();
    d1.tables
        .delete(&orders, &Predicate::cmp("id", CmpOp::Lt, 10i64))
        .await
        .unwrap();
    d1.tables
        .insert(&orders, &[batch(200..250, CANARY)])
        .await
        .unwrap();
    d1.tables
        .delete(&orders, &Predicate::eq("id", 150i64))
        .await
        .unwrap();
    caught_up(d1, d2, one).await;
    same_rows(d1, d2, one).await;
    let r = rows(d2, &replica_table_id(&d1.id, &orders), None).await;
    assert_eq!(r.len(), 250 - 10 - 1, "{r:?}");
    orders
}

/// Reads every object of `store` (`name` in messages): how many it read; panics on one
/// that holds the Parquet magic or the canary.
async fn no_plaintext(name: &str, store: &dyn ObjectStore) -> usize {
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut read = 0;
    for m in &metas {
        let got = match store.get(&m.location).await {
            Ok(g) => g.bytes().await,
            Err(e) => Err(e),
        };
        let body = match got {
            Ok(body) => body,
            // Deleted (cleaned up) between the listing and the read: the error may come
            // wrapped (a body read whose retry found the object gone), so ask again.
            Err(e) => match store.head(&m.location).await {
                Err(object_store::Error::NotFound { .. }) => continue,
                _ => panic!("{name}/{}: {e}", m.location),
            },
        };
        read += 1;
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(!has(b"PAR1"), "{name}/{}: Parquet magic", m.location);
        assert!(
            !has(CANARY.as_bytes()),
            "{name}/{}: plaintext value",
            m.location
        );
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_follows_on_localstack() {
    let stores = localstack_buckets(&[
        "repl-s3-d1-volume",
        "repl-s3-d1-repl",
        "repl-s3-d2-volume",
        "repl-s3-d2-repl",
    ])
    .await;
    let store = |i: usize| Arc::clone(&stores[i].1);
    let dir = tempfile::tempdir().unwrap();
    let mut d1 = open_s3(dir.path(), "d1", None, store(0), store(1)).await;
    let keys = dir.path().join("d1").join("keys");
    let mut d2 = open_s3(dir.path(), "d2", Some(&keys), store(2), store(3)).await;
    tern_replication::local::link(&d1, &d2).await.unwrap();
    d1.start(&[&d2]);
    d2.start(&[&d1]);

    // The replication buckets hold messages only until the receiver cleans them up: they
    // are scanned over and over while the workload runs; every bucket once more at the end.
    let (stop_scan, mut stopped) = tokio::sync::watch::channel(false);
    let scanner = tokio::spawn({
        let repl = [stores[1].clone(), stores[3].clone()];
        async move {
            let mut seen = 0usize;
            loop {
                for (bucket, s) in &repl {
                    seen += no_plaintext(bucket, s.as_ref()).await;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stopped.changed() => return seen,
                }
            }
        }
    });
    follow(&d1, &d2).await;
    stop_scan.send(true).unwrap();
    let seen = scanner.await.expect("the scan found plaintext");
    d1.stop().await;
    d2.stop().await;
    let mut counts = Vec::new();
    for (bucket, s) in &stores {
        counts.push(no_plaintext(bucket, s.as_ref()).await);
    }
    // The check is not vacuous: both volumes hold data files, and the replication
    // buckets carried messages while the workload ran.
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
    assert!(
        seen > 0,
        "no message object was ever seen in the replication buckets"
    );
    drop_buckets(&stores).await;
}

/// Fresh LocalStack buckets of these names, with a store on each.
async fn localstack_buckets(names: &[&str]) -> Vec<(String, Arc<dyn ObjectStore>)> {
    let mut stores = Vec::new();
    for name in names {
        let (store, bucket) = emulator::localstack_bucket(name)
            .await
            .unwrap_or_else(|e| panic!("LocalStack is required for this test: {e}"));
        stores.push((bucket, store));
    }
    stores
}

/// Deletes the buckets and what they hold. Best effort: the emulator is wiped between CI
/// runs anyway.
async fn drop_buckets(stores: &[(String, Arc<dyn ObjectStore>)]) {
    let admin = tern_storage::admin::BucketAdmin::new(
        &tokio::task::spawn_blocking(emulator::localstack)
            .await
            .unwrap()
            .unwrap()
            .s3_options(),
    )
    .await;
    for (bucket, s) in stores {
        let metas: Vec<_> = s.list(None).try_collect().await.unwrap_or_default();
        for m in metas {
            let _ = s.delete(&m.location).await;
        }
        let _ = admin.delete_bucket(bucket).await;
    }
}

/// Failover with every bucket on LocalStack, in a group of three: the primary is lost,
/// a secondary wins the majority (no `--allow-data-loss`) and takes writes, the other
/// re-parents and follows, and the old primary comes back fenced, follows the new one
/// and keeps nothing as a conflict; no object holds plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_on_localstack() {
    use crate::failover::{PLAIN, fast, replica, role, until_state, write};
    use tern_meta::DatabaseRole;
    use tern_replication::Availability;
    use tern_storage::layout::AccountId;

    let stores = localstack_buckets(&[
        "fo-s3-d1-volume",
        "fo-s3-d1-repl",
        "fo-s3-d2-volume",
        "fo-s3-d2-repl",
        "fo-s3-d3-volume",
        "fo-s3-d3-repl",
    ])
    .await;
    let store = |i: usize| Arc::clone(&stores[i].1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let keys = root.join("d1").join("keys");
    let open = |i: usize| {
        let (join, volume, bucket) = (
            (i > 0).then_some(keys.as_path()),
            store(2 * i),
            store(2 * i + 1),
        );
        // The emulator's latency is the slow part of a heartbeat's round trip: a longer
        // lease than the in-process tests' so that it is not what lapses.
        let config = tern_replication::ReplicationConfig {
            heartbeat_interval: Duration::from_millis(200),
            unavailable_after: Duration::from_secs(3),
            ..fast()
        };
        async move { open_s3_with(root, &format!("d{}", i + 1), join, volume, bucket, config).await }
    };
    let mut d1 = open(0).await;
    let mut d2 = open(1).await;
    let mut d3 = open(2).await;
    for (a, b) in [(&d1, &d2), (&d1, &d3), (&d2, &d3)] {
        tern_replication::local::link(a, b).await.unwrap();
    }
    d1.start(&[&d2, &d3]);
    d2.start(&[&d1, &d3]);
    d3.start(&[&d1, &d2]);
    let (a1, db, account_group) = primary(&d1).await;
    let t = d1
        .tables
        .create_table(&db, "public", "orders", columns())
        .await
        .unwrap();
    replicate_to(&d1, &a1, &account_group, &[(&d2, "a2"), (&d3, "a3")]).await;
    // The primary of a group that just grew to three takes commits once a majority has
    // confirmed it (no lease before): the first write waits for that.
    eventually(WAIT, "the primary's lease", || async {
        write(&d1, &t, 0..10, CANARY).await
    })
    .await;
    for i in 1..4 {
        d1.tables
            .insert(&t, &[batch(i * 10..i * 10 + 10, CANARY)])
            .await
            .unwrap();
    }
    let one = std::slice::from_ref(&t);
    caught_up(&d1, &d2, one).await;
    caught_up(&d1, &d3, one).await;

    d1.kill().await;
    until_state(&d2, "d1", Availability::Unavailable).await;
    let a2 = AccountId::new("a2").unwrap();
    let report = d2.repl.failover(&a2, "sales", PLAIN).await.unwrap();
    assert!(!report.forced && report.epoch == 2, "{report:?}");
    assert_eq!(report.known_loss_txns, 0, "{report:?}");
    let rid = replica_table_id(&d1.id, &t);
    assert!(write(&d2, &rid, 40..50, CANARY).await);
    eventually(WAIT, "d3 to follow d2", || async {
        replica(&d3, "a3", "sales").is_some_and(|r| r.upstream.as_str() == "d2")
            && rows(&d3, &rid, None).await == rows(&d2, &rid, None).await
    })
    .await;
    assert_eq!(rows(&d2, &rid, None).await.len(), 50);

    let mut d1 = open(0).await;
    d1.start(&[&d2, &d3]);
    eventually(WAIT, "d1 to come back fenced, following d2", || async {
        role(&d1, "a1", "sales") == DatabaseRole::Secondary
            && rows(&d1, &t, None).await == rows(&d2, &rid, None).await
    })
    .await;
    assert!(
        d1.tables
            .insert(&t, &[batch(90..91, "stale")])
            .await
            .is_err()
    );
    assert!(d1.repl.conflicts().unwrap().is_empty());
    for n in [&mut d1, &mut d2, &mut d3] {
        n.stop().await;
    }
    let mut read = 0;
    for (bucket, s) in &stores {
        read += no_plaintext(bucket, s.as_ref()).await;
    }
    assert!(read > 0);
    drop_buckets(&stores).await;
}

/// Deletes every object under `from/` of a replication bucket (left by an earlier run,
/// they would be read as the next files of the new channels). Lists without a prefix:
/// moto 5.2.1 miscomputes signatures of listings whose prefix holds a '/'.
async fn clear_from(store: &dyn ObjectStore) {
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    for m in metas {
        if m.location.as_ref().starts_with("from/") {
            match store.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => panic!("delete {}: {e}", m.location),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_with_peer_identities_on_moto() {
    let (outputs, admin, d1_in_d2, d2_in_d1) = tokio::task::spawn_blocking(|| {
        let outputs = emulator::infra_outputs(Target::Moto)?;
        let admin = emulator::admin(Target::Moto)?;
        let d1_in_d2 = emulator::peer(Target::Moto, "d2", "d1")?;
        let d2_in_d1 = emulator::peer(Target::Moto, "d1", "d2")?;
        Ok::<_, emulator::EmulatorError>((outputs, admin, d1_in_d2, d2_in_d1))
    })
    .await
    .expect("emulator task")
    .unwrap_or_else(|e| panic!("moto with the local infra is required for this test: {e}"));
    assert_eq!(
        outputs
            .get("iam_enforced")
            .and_then(serde_json::Value::as_bool),
        Some(true),
        "this test needs moto with IAM enforced"
    );
    let repl_bucket = |d: &str| {
        outputs["deployments"][d]["replication_bucket"]
            .as_str()
            .unwrap_or_else(|| panic!("{d} replication bucket in the infra outputs"))
            .to_string()
    };
    let open = |bucket: &str, who: &emulator::Emulator| {
        open_store(&StoreConfig {
            url: format!("s3://{bucket}"),
            s3: who.s3_options(),
        })
        .unwrap()
    };
    // The volumes are on LocalStack: moto 5.2.1 miscomputes signatures of listings whose
    // prefix holds a '/', and the shipper lists the volume's transaction logs
    // (`acct/<a>/txlog/`). The replication buckets are the infra's on moto, since the peer
    // identities are scoped to them (the receiver's discovery listing fails there, and
    // polling goes on without it).
    let mut volumes = Vec::new();
    for name in ["repl-moto-d1-volume", "repl-moto-d2-volume"] {
        let (store, bucket) = emulator::localstack_bucket(name)
            .await
            .unwrap_or_else(|e| panic!("LocalStack is required for this test: {e}"));
        volumes.push((bucket, store));
    }
    let (b1, b2) = (repl_bucket("d1"), repl_bucket("d2"));
    let (own1, own2) = (open(&b1, &admin), open(&b2, &admin));
    clear_from(own1.as_ref()).await;
    clear_from(own2.as_ref()).await;

    let dir = tempfile::tempdir().unwrap();
    let mut d1 = open_s3(
        dir.path(),
        "d1",
        None,
        Arc::clone(&volumes[0].1),
        Arc::clone(&own1),
    )
    .await;
    let keys = dir.path().join("d1").join("keys");
    let mut d2 = open_s3(
        dir.path(),
        "d2",
        Some(&keys),
        Arc::clone(&volumes[1].1),
        Arc::clone(&own2),
    )
    .await;
    tern_replication::local::link(&d1, &d2).await.unwrap();
    // Each writes into the other's bucket only as its write-only peer identity.
    d1.start_with(&[(d2.id.clone(), open(&b2, &d1_in_d2))]);
    d2.start_with(&[(d1.id.clone(), open(&b1, &d2_in_d1))]);

    follow(&d1, &d2).await;
    // Both directions carried traffic (d2 announces its replica to d1, d1 ships to d2).
    let s1 = d1.repl.status().await.unwrap();
    assert_eq!(s1.downstream.len(), 1, "d1 ships to d2: {s1:?}");
    d1.stop().await;
    d2.stop().await;

    clear_from(own1.as_ref()).await;
    clear_from(own2.as_ref()).await;
    for (_, s) in &volumes {
        let metas: Vec<_> = s.list(None).try_collect().await.unwrap_or_default();
        for m in metas {
            let _ = s.delete(&m.location).await;
        }
    }
}
