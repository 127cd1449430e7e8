use std::path::Path as FsPath;
use std::time::Duration;

use tern_meta::{ColumnDef, ColumnType, DatabaseRole, Scalar};
use tern_replication::{ReplicationConfig, replica_table_id};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_table::{CmpOp, Predicate};

use crate::common::*;

async fn three(root: &FsPath) -> (Node, Node, Node) {
    let d1 = open(root, "d1", None).await;
    let keys = root.join("d1").join("keys");
    let d2 = open(root, "d2", Some(&keys)).await;
    let d3 = open(root, "d3", Some(&keys)).await;
    (d1, d2, d3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_and_chain_replicas_follow_the_primary_transaction_by_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d1, mut d2, mut d3) = three(dir.path()).await;
    link(&d1, &d2).await;
    link(&d1, &d3).await;
    link(&d2, &d3).await;
    d1.start(&[&d2, &d3]);
    d2.start(&[&d1, &d3]);
    d3.start(&[&d1, &d2]);

    let (a1, db, account_group) = primary(&d1).await;
    let orders = d1
        .tables
        .create_table(&db, "public", "orders", columns())
        .await
        .unwrap();
    d1.tables
        .insert(&orders, &[batch(0..100, "a")])
        .await
        .unwrap();
    let group = d1.repl.enable_replication(&a1, "sales").unwrap();

    let a2 = d2.create_account("a2").unwrap();
    d2.repl
        .set_account_global(&a2, Some(&account_group))
        .unwrap();
    let a3 = d3.create_account("a3").unwrap();
    d3.repl
        .set_account_global(&a3, Some(&account_group))
        .unwrap();
    knows(&d2, &group, "d1").await;
    let r2 = d2
        .repl
        .create_replica(&a2, "sales_copy", &group, None)
        .unwrap();
    knows(&d3, &group, "d2").await;
    let upstream = DeploymentId::new("d2").unwrap();
    d3.repl
        .create_replica(&a3, "sales_chain", &group, Some(&upstream))
        .unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&orders)).await;
    caught_up(&d1, &d3, std::slice::from_ref(&orders)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&orders)).await;
    same_rows(&d1, &d3, std::slice::from_ref(&orders)).await;

    // Replicas are read-only.
    let rid = replica_table_id(&d1.id, &orders);
    let e = d2
        .tables
        .insert(&rid, &[batch(1000..1001, "x")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read-only secondary replica"), "{e}");
    let e = d2.tables.create_schema(&r2, "other").await.unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");

    // A mixed workload on the primary while the replicas follow; the replica's states are
    // sampled as it goes.
    let mut samples = Vec::new();
    d1.tables
        .insert(&orders, &[batch(100..200, "b")])
        .await
        .unwrap();
    samples.extend(sample(&d2, &rid).await);
    d1.tables
        .delete(&orders, &Predicate::cmp("id", CmpOp::Lt, 10i64))
        .await
        .unwrap();
    samples.extend(sample(&d2, &rid).await);
    d1.tables
        .update(
            &orders,
            &[("name".to_string(), Some(Scalar::from("updated")))],
            &Predicate::between("id", 50i64, 60i64),
        )
        .await
        .unwrap();
    samples.extend(sample(&d2, &rid).await);
    d1.tables
        .merge(&orders, &[batch(190..210, "m")], &["id"])
        .await
        .unwrap();
    samples.extend(sample(&d2, &rid).await);
    d1.tables
        .add_column(
            &orders,
            ColumnDef {
                name: "note".into(),
                ty: ColumnType::Utf8,
                nullable: true,
            },
        )
        .await
        .unwrap();
    let items = d1
        .tables
        .create_table(&db, "public", "items", columns())
        .await
        .unwrap();
    for i in 0..5 {
        d1.tables
            .insert(&items, &[batch(i * 10..i * 10 + 10, "i")])
            .await
            .unwrap();
        samples.extend(sample(&d2, &rid).await);
    }
    d1.tables
        .delete(&items, &Predicate::eq("id", 3i64))
        .await
        .unwrap();

    let all = [orders.clone(), items.clone()];
    caught_up(&d1, &d2, &all).await;
    caught_up(&d1, &d3, &all).await;
    same_rows(&d1, &d2, &all).await;
    same_rows(&d1, &d3, &all).await;
    // Every state a replica showed is one the primary had at that version (never torn).
    assert!(!samples.is_empty());
    for (v, rows) in samples {
        let at = d1
            .tables
            .scan(
                &orders,
                &tern_table::ScanRequest {
                    version: Some(v),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .rows();
        assert_eq!(rows, at, "replica rows at version {v}");
    }
    // The replica's columns followed the DDL.
    let t = d3.meta.read(|tx| tx.get_table(&rid)).unwrap().unwrap();
    assert!(
        t.columns.iter().any(|c| c.name == "note"),
        "{:?}",
        t.columns
    );

    // The same global lists from every account of the group.
    let from_d1 = d1.repl.global_databases(&a1).unwrap();
    eventually(
        WAIT,
        "every deployment to list the same global databases",
        || async {
            d2.repl.global_databases(&a2).unwrap() == from_d1
                && d3.repl.global_databases(&a3).unwrap() == from_d1
                && d1.repl.global_databases(&a1).unwrap().len() == 3
        },
    )
    .await;
    let from_d1 = d1.repl.global_databases(&a1).unwrap();
    let roles: Vec<_> = from_d1
        .iter()
        .map(|r| (r.deployment.to_string(), r.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("d1".to_string(), Some(DatabaseRole::Primary)),
            ("d2".to_string(), Some(DatabaseRole::Secondary)),
            ("d3".to_string(), Some(DatabaseRole::Secondary)),
        ]
    );
    assert_eq!(d2.repl.global_accounts(&a2).unwrap().len(), 3);

    // Status: caught up, records applied, shipping by hub (d1→d2) and chain (d2→d3).
    let s2 = d2.repl.status().await.unwrap();
    assert_eq!(s2.replicas.len(), 1);
    assert_eq!(s2.replicas[0].versions_behind, 0, "{s2:?}");
    assert!(s2.replicas[0].records_applied > 0, "{s2:?}");
    assert_eq!(s2.downstream.len(), 1, "d2 forwards to d3: {s2:?}");
    let s1 = d1.repl.status().await.unwrap();
    assert_eq!(s1.downstream.len(), 1, "d1 ships to d2 only: {s1:?}");

    d1.stop().await;
    d2.stop().await;
    d3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_copies_only_differences_and_repairs_drift() {
    // The replica refreshes itself every 2 s (drift correction).
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair(ReplicationConfig {
        refresh_interval: Duration::from_secs(2),
        ..repl_config()
    })
    .await;
    for i in 0..6 {
        d1.tables
            .insert(&t, &[batch(i * 100..i * 100 + 100, "r")])
            .await
            .unwrap();
    }
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    let files =
        |n: &Node| tern_replication::service::Counters::get(&n.repl.counters().files_copied);
    assert_eq!(files(&d1), 6, "the first refresh copies the 6 files");

    // Scheduled refreshes of an identical replica copy nothing.
    let refreshes = |n: &Node| {
        let n = n.repl.clone();
        async move { n.status().await.unwrap().replicas[0].refreshes }
    };
    let before = refreshes(&d2).await;
    eventually(WAIT, "a scheduled refresh", || async {
        refreshes(&d2).await > before
    })
    .await;
    assert_eq!(files(&d1), 6, "nothing differs, nothing is copied");

    // Drift: one file's metadata is lost on the replica behind its back.
    let rid = replica_table_id(&d1.id, &t);
    let version = ver(&d2, &rid).unwrap();
    let victim = d2
        .meta
        .read(|tx| tx.active_micro_partitions(&rid, version))
        .unwrap()
        .remove(2);
    d2.meta
        .write(|tx| tx.repair_micro_partitions(&rid, &[], std::slice::from_ref(&victim.short)))
        .unwrap();
    assert_eq!(
        rows(&d2, &rid, None).await.len(),
        500,
        "the drift is visible"
    );
    eventually(
        WAIT,
        "the scheduled refresh to repair the drift",
        || async { rows(&d2, &rid, None).await.len() == 600 },
    )
    .await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    assert_eq!(files(&d1), 7, "only the missing file crossed");
    assert_eq!(ver(&d2, &rid), ver(&d1, &t), "no version was made");

    d1.stop().await;
    d2.stop().await;
}

/// A drift repair is a logged change: a replica chained after the repaired one gets it by
/// log shipping, with no refresh of its own, and its versions keep mirroring the primary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drift_repair_reaches_a_chained_replica_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // No scheduled refreshes anywhere: only the one asked for below repairs anything.
    let quiet = ReplicationConfig {
        refresh_interval: Duration::ZERO,
        ..repl_config()
    };
    let mut d1 = open_with(dir.path(), "d1", None, quiet.clone()).await;
    let keys = dir.path().join("d1").join("keys");
    let mut d2 = open_with(dir.path(), "d2", Some(&keys), quiet.clone()).await;
    let mut d3 = open_with(dir.path(), "d3", Some(&keys), quiet).await;
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
    for i in 0..6 {
        d1.tables
            .insert(&t, &[batch(i * 100..i * 100 + 100, "r")])
            .await
            .unwrap();
    }
    let group = d1.repl.enable_replication(&a1, "sales").unwrap();
    let a2 = d2.create_account("a2").unwrap();
    d2.repl
        .set_account_global(&a2, Some(&account_group))
        .unwrap();
    knows(&d2, &group, "d1").await;
    let r2 = d2.repl.create_replica(&a2, "sales", &group, None).unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;

    // Drift on d2: one file's metadata lost behind its back.
    let rid = replica_table_id(&d1.id, &t);
    let version = ver(&d2, &rid).unwrap();
    let victim = d2
        .meta
        .read(|tx| tx.active_micro_partitions(&rid, version))
        .unwrap()
        .remove(2);
    d2.meta
        .write(|tx| tx.repair_micro_partitions(&rid, &[], std::slice::from_ref(&victim.short)))
        .unwrap();
    assert_eq!(
        rows(&d2, &rid, None).await.len(),
        500,
        "the drift is visible"
    );

    // d3 follows d2 (a chain); its first refresh copies d2's state, drift included.
    let a3 = d3.create_account("a3").unwrap();
    d3.repl
        .set_account_global(&a3, Some(&account_group))
        .unwrap();
    knows(&d3, &group, "d2").await;
    d3.repl
        .create_replica(&a3, "sales", &group, Some(&d2.id))
        .unwrap();
    let want = ver(&d1, &t);
    eventually(WAIT, "d3's first refresh from d2", || async {
        ver(&d3, &rid) == want && rows(&d3, &rid, None).await.len() == 500
    })
    .await;
    let refreshes = |n: &Node| {
        let n = n.repl.clone();
        async move { n.status().await.unwrap().replicas[0].refreshes }
    };
    let d3_refreshes = refreshes(&d3).await;
    assert_eq!(d3_refreshes, 1);
    let repairs = |n: &Node| tern_replication::service::Counters::get(&n.repl.counters().repairs);
    assert_eq!(repairs(&d3), 0);

    // d2's refresh repairs the drift; d3 gets the repair from d2's log.
    d2.repl.request_refresh(&r2, "operator").unwrap();
    eventually(WAIT, "d2's refresh to repair the drift", || async {
        rows(&d2, &rid, None).await.len() == 600
    })
    .await;
    assert_eq!(repairs(&d2), 1);
    eventually(
        Duration::from_secs(30),
        "d3 to apply d2's repair from the log",
        || async { rows(&d3, &rid, None).await.len() == 600 },
    )
    .await;
    same_rows(&d1, &d3, std::slice::from_ref(&t)).await;
    assert_eq!(refreshes(&d3).await, d3_refreshes, "d3 did not refresh");
    assert_eq!(repairs(&d3), 1, "d3 committed the repair (and logged it)");
    assert_eq!(ver(&d3, &rid), want, "no version was made");
    assert_eq!(ver(&d2, &rid), want, "no version was made");

    // The versions still mirror the primary's: later commits follow down the chain.
    d1.tables
        .delete(&t, &Predicate::cmp("id", CmpOp::Lt, 250i64))
        .await
        .unwrap();
    d1.tables
        .insert(&t, &[batch(1000..1100, "later")])
        .await
        .unwrap();
    caught_up(&d1, &d3, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d3, std::slice::from_ref(&t)).await;
    assert_eq!(refreshes(&d3).await, d3_refreshes, "d3 did not refresh");

    d1.stop().await;
    d2.stop().await;
    d3.stop().await;
}

/// A refresh's response is a manifest (a line per table) and a sections file the replica
/// reads as a stream: the import job stores a cursor, never the file lists, and an import
/// interrupted after committing some of its tables resumes after them (their files are
/// not copied again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_streams_its_sections_and_an_interrupted_import_resumes() {
    use tern_replication::state::{ImportJobDpo, keys as state_keys};
    let config = ReplicationConfig {
        refresh_interval: Duration::ZERO,
        snapshot_section_files: 2,
        import_batch_files: 3,
        ..repl_config()
    };
    let Pair {
        dir,
        keys,
        d1,
        d2,
        a1,
        db,
        account_group,
        t,
    } = pair_with(config.clone()).await;
    let u = d1
        .tables
        .create_table(&db, "public", "u", columns())
        .await
        .unwrap();
    let w = d1
        .tables
        .create_table(&db, "public", "w", columns())
        .await
        .unwrap();
    for i in 0..5 {
        d1.tables
            .insert(&t, &[batch(i * 10..i * 10 + 10, "t")])
            .await
            .unwrap();
    }
    for i in 0..4 {
        d1.tables
            .insert(&u, &[batch(i * 10..i * 10 + 10, "u")])
            .await
            .unwrap();
    }
    let all = [t.clone(), u.clone(), w.clone()];
    // The importer stops (as killed) after its first transaction: t's 5 files are more
    // than a batch of 3, so t is committed alone.
    d2.ctx
        .crash_points()
        .arm(tern_replication::crash::IMPORT_COMMITTED);
    replicate(&d1, &a1, &d2, &account_group).await;
    eventually(
        Duration::from_secs(60),
        "the import's first commit",
        || async {
            d2.ctx
                .crash_points()
                .fired()
                .contains(&tern_replication::crash::IMPORT_COMMITTED)
        },
    )
    .await;
    let jobs = d2
        .meta
        .read(|tx| tx.scan_prefix::<ImportJobDpo>(&state_keys::import_jobs()))
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0].1;
    // t's 5 files in sections of 2 are 3 sections, u's 4 are 2, w has none.
    assert_eq!(job.response.sections, 5);
    assert_eq!((job.tables_done, job.sections_done), (1, 3));
    let row = serde_json::to_string(job).unwrap();
    assert!(
        !row.contains("global_ref") && !row.contains("\"add\""),
        "the job row holds no file list: {row}"
    );
    assert_eq!(ver(&d2, &replica_table_id(&d1.id, &t)), ver(&d1, &t));
    assert_eq!(ver(&d2, &replica_table_id(&d1.id, &u)), Some(0));

    // Killed there and started again: the import goes on after t.
    let d2 = restart(d2, dir.path(), Some(&keys), &d1).await;
    caught_up(&d1, &d2, &all).await;
    same_rows(&d1, &d2, &all).await;
    assert_eq!(
        tern_replication::service::Counters::get(&d2.repl.counters().files_copied),
        4,
        "only u's files were copied after the restart"
    );
    let mut d1 = d1;
    let mut d2 = d2;
    d1.stop().await;
    d2.stop().await;
}

/// An import job the previous build stored (the whole response in its row, no sections
/// file) is still imported: the importer writes its sections file from the row first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_job_of_the_previous_build_is_still_imported() {
    use tern_replication::model::{SnapshotResponse, TableSnapshot, sections_path};
    use tern_replication::state::{ImportJobDpo, keys as state_keys};
    #[derive(serde::Serialize, serde::Deserialize)]
    struct OldJob {
        peer: DeploymentId,
        response: SnapshotResponse,
        received_at_ms: i64,
        attempts: u32,
    }
    impl tern_meta::Dpo for OldJob {
        const WHAT: &'static str = "import job";
        const VERSION: u32 = 1;
    }
    let config = ReplicationConfig {
        refresh_interval: Duration::ZERO,
        ..repl_config()
    };
    let Pair {
        dir,
        keys,
        d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(config).await;
    for i in 0..3 {
        d1.tables
            .insert(&t, &[batch(i * 10..i * 10 + 10, "o")])
            .await
            .unwrap();
    }
    // Stopped (as killed) with the job stored and nothing of the table imported.
    d2.ctx
        .crash_points()
        .arm(tern_replication::crash::IMPORT_DICTIONARY);
    replicate(&d1, &a1, &d2, &account_group).await;
    eventually(
        Duration::from_secs(60),
        "the import's dictionary",
        || async {
            d2.ctx
                .crash_points()
                .fired()
                .contains(&tern_replication::crash::IMPORT_DICTIONARY)
        },
    )
    .await;
    // Its workers end their unit: the crashed import records no failed attempt (a dead
    // process writes nothing), so nothing lands over the row written below.
    d2.stop().await;
    let mut jobs = d2
        .meta
        .read(|tx| tx.scan_prefix::<ImportJobDpo>(&state_keys::import_jobs()))
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let (key, job) = jobs.remove(0);
    assert_eq!(job.attempts, 0, "a crash is no failed attempt");
    // The same answer as the previous build stored it: every file in the row.
    let rid = replica_table_id(&d1.id, &t);
    let v = ver(&d1, &t).unwrap();
    let add: Vec<_> = d1
        .meta
        .read(|tx| tx.active_micro_partitions(&t, v))
        .unwrap()
        .into_iter()
        .map(|mut m| {
            m.table = rid.clone();
            m
        })
        .collect();
    let m = job.response;
    assert_eq!(m.tables.len(), 1);
    let old = OldJob {
        peer: job.peer,
        response: SnapshotResponse {
            v: m.v,
            request_id: m.request_id,
            response_id: m.response_id.clone(),
            group: m.group,
            lamport: m.lamport,
            repmk: m.repmk,
            schemas: m.schemas,
            tables: m
                .tables
                .iter()
                .map(|h| TableSnapshot {
                    table: h.table.clone(),
                    schema: h.schema.clone(),
                    name: h.name.clone(),
                    columns: h.columns.clone(),
                    version: h.version,
                    answered_version: h.answered_version,
                    add: add.clone(),
                    remove: Vec::new(),
                })
                .collect(),
            bytes: m.bytes,
            taken_at_ms: m.taken_at_ms,
            epoch: m.epoch,
            seq: m.seq,
        },
        received_at_ms: job.received_at_ms,
        attempts: job.attempts,
    };
    d2.meta.write(|tx| tx.put(&key, &old)).unwrap();
    // The previous build wrote no sections file.
    {
        use object_store::ObjectStoreExt as _;
        d2.bucket
            .delete(&sections_path(&d1.id, &m.response_id))
            .await
            .unwrap();
    }

    let d2 = restart(d2, dir.path(), Some(&keys), &d1).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    let mut d1 = d1;
    let mut d2 = d2;
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_while_following_resumes_without_loss_or_duplicates() {
    let Pair {
        dir,
        keys,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair(repl_config()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;

    // Commits keep coming while the replica is killed mid-work and restarted twice.
    for round in 0..3i64 {
        for i in 0..5i64 {
            let base = round * 1000 + i * 10;
            d1.tables
                .insert(&t, &[batch(base..base + 10, "k")])
                .await
                .unwrap();
            if i == 2 {
                d2 = restart(d2, dir.path(), Some(&keys), &d1).await;
            }
        }
        d1.tables
            .delete(&t, &Predicate::eq("id", round * 1000))
            .await
            .unwrap();
    }
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    let rid = replica_table_id(&d1.id, &t);
    let rows = rows(&d2, &rid, None).await;
    let mut dedup = rows.clone();
    dedup.dedup();
    assert_eq!(rows.len(), dedup.len(), "no duplicate rows");
    // Nothing left behind: no unfinished transaction, inbound stage empty after cleanup.
    eventually(WAIT, "the inbound stage to empty", || async {
        use futures::TryStreamExt as _;
        let left: Vec<_> = d2
            .bucket
            .list(Some(&object_store::path::Path::from("from/d1/inbound")))
            .try_collect()
            .await
            .unwrap_or_default();
        left.is_empty()
    })
    .await;
    d1.stop().await;
    d2.stop().await;
}

/// The replica's current version of `rid` and its row count there.
async fn sample(n: &Node, rid: &TableId) -> Option<(u64, usize)> {
    let v = ver(n, rid)?;
    let r = n
        .tables
        .scan(
            rid,
            &tern_table::ScanRequest {
                version: Some(v),
                ..Default::default()
            },
        )
        .await
        .ok()?;
    Some((v, r.rows()))
}

/// Polls until `prefix` of `store` holds something (or panics after `WAIT`).
async fn appears(store: &std::sync::Arc<dyn object_store::ObjectStore>, prefix: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while objects(store, prefix).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing appeared under {prefix}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The micro-partition files of the replica's volume that its index does not know.
async fn orphans(n: &Node, rid: &TableId) -> Vec<String> {
    let known: std::collections::BTreeSet<String> = n
        .meta
        .read(|tx| tx.list_micro_partitions(rid))
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    objects(&n.volume, "acct")
        .await
        .into_iter()
        .filter(|p| p.ends_with(".mp") && !known.contains(p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_killed_on_either_side_resumes_without_orphans() {
    let Pair {
        dir,
        keys,
        mut d1,
        mut d2,
        a1,
        db,
        account_group,
        t,
    } = pair(repl_config()).await;
    for i in 0..40 {
        d1.tables
            .insert(&t, &[batch(i * 20_000..(i + 1) * 20_000, "x")])
            .await
            .unwrap();
    }
    // The source's copy worker dies as soon as its first file lands in d2's inbound stage.
    replicate(&d1, &a1, &d2, &account_group).await;
    appears(&d2.bucket, "from/d1/inbound").await;
    d1 = restart(d1, dir.path(), None, &d2).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;

    // The replica dies while importing: its first copies have landed in its volume.
    for i in 40..60 {
        d1.tables
            .insert(&t, &[batch(i * 20_000..(i + 1) * 20_000, "y")])
            .await
            .unwrap();
    }
    let rid = replica_table_id(&d1.id, &t);
    let r2 = d2
        .meta
        .read(|tx| tx.find_global(tern_replication::state::GROUP_INDEX, &group_of(&d1, &db)))
        .unwrap()
        .unwrap();
    d2.repl
        .set_follow_log(&DatabaseId::new(r2).unwrap(), false)
        .unwrap();
    let before = objects(&d2.volume, "acct").await.len();
    let deadline = std::time::Instant::now() + WAIT;
    while objects(&d2.volume, "acct").await.len() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the import never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    d2 = restart(d2, dir.path(), Some(&keys), &d1).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    eventually(
        WAIT,
        "no orphan files and an empty inbound stage",
        || async {
            orphans(&d2, &rid).await.is_empty()
                && objects(&d2.bucket, "from/d1/inbound").await.is_empty()
        },
    )
    .await;
    d1.stop().await;
    d2.stop().await;
}

fn group_of(n: &Node, db: &DatabaseId) -> String {
    n.meta
        .read(|tx| tx.get_database(db))
        .unwrap()
        .unwrap()
        .replication_group
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_managed_key_seals_every_repmk_for_its_account() {
    use tern_crypto::{CustomerKey, SystemRandom, X25519CustomerKey};
    let Pair {
        dir,
        keys,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair(repl_config()).await;
    let key_path = dir.path().join("a2-customer.key");
    let customer: std::sync::Arc<dyn CustomerKey> = std::sync::Arc::new(
        X25519CustomerKey::create(&key_path, &SystemRandom::default()).unwrap(),
    );
    // Registered before the replica asks for its first refresh.
    let a2 = AccountId::new("a2").unwrap();
    d2.repl
        .set_customer_key(&a2, std::sync::Arc::clone(&customer));
    d1.tables.insert(&t, &[batch(0..100, "c")]).await.unwrap();
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    assert_eq!(
        sealed_to(&d1),
        Some(customer.key_id().to_string()),
        "the source seals to the account's key"
    );

    // Without its customer key the replica cannot open what arrives.
    d2 = restart(d2, dir.path(), Some(&keys), &d1).await;
    let before = ver(&d2, &replica_table_id(&d1.id, &t));
    d1.tables.insert(&t, &[batch(100..200, "c")]).await.unwrap();
    eventually(
        WAIT,
        "the replica to report the missing customer key",
        || async {
            d2.repl.status().await.unwrap().replicas[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("does not hold"))
        },
    )
    .await;
    assert_eq!(ver(&d2, &replica_table_id(&d1.id, &t)), before);
    // With it, the same message applies.
    d2.repl.set_customer_key(&a2, customer);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    d1.stop().await;
    d2.stop().await;
}

/// What `d1` keeps of its one downstream replica.
fn downstream(d1: &Node) -> tern_replication::state::DownstreamDpo {
    let downs = d1
        .meta
        .read(|tx| {
            tx.scan_prefix::<tern_replication::state::DownstreamDpo>(
                &tern_replication::state::keys::downstreams(),
            )
        })
        .unwrap();
    downs.into_iter().next().expect("a downstream replica").1
}

/// The key id the primary seals RepMKs for its downstream replica to (`None`: unsealed).
fn sealed_to(d1: &Node) -> Option<String> {
    downstream(d1).customer_key.map(|k| k.key_id().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registered_customer_key_is_stored_and_never_silently_skipped() {
    use tern_crypto::CustomerKeySpec;
    let Pair {
        dir,
        keys,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair(repl_config()).await;
    let rid = replica_table_id(&d1.id, &t);
    d1.tables.insert(&t, &[batch(0..100, "k")]).await.unwrap();
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    assert_eq!(sealed_to(&d1), None);
    let a2 = AccountId::new("a2").unwrap();
    let file = dir.path().join("a2.x25519");
    let spec = CustomerKeySpec::X25519 { file: file.clone() };

    // Bad input is refused by name and stores nothing.
    let err = d2
        .repl
        .register_customer_key(&a2, &spec, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("a2.x25519") && err.contains("a2"), "{err}");
    assert!(d2.repl.customer_key_status(&a2).unwrap().is_none());
    let err = d2
        .repl
        .register_customer_key(&AccountId::new("nobody").unwrap(), &spec, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nobody"), "{err}");
    assert!(!file.exists(), "no key made for an unknown account");

    // Registered (a new key pair): the replica's refresh tells the primary, which seals
    // every RepMK to it from then on.
    let key_id = d2
        .repl
        .register_customer_key(&a2, &spec, true)
        .await
        .unwrap();
    eventually(
        WAIT,
        "the primary to seal to the registered key",
        || async { sealed_to(&d1).as_deref() == Some(key_id.as_str()) },
    )
    .await;
    d1.tables.insert(&t, &[batch(100..200, "k")]).await.unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;

    // Stored: a restarted replica opens it again and goes on.
    d2 = restart(d2, dir.path(), Some(&keys), &d1).await;
    let status = d2.repl.customer_key_status(&a2).unwrap().unwrap();
    assert_eq!(status.key_id.as_deref(), Some(key_id.as_str()));
    d1.tables.insert(&t, &[batch(200..300, "k")]).await.unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;

    // A response sealed to the key arrives while the key file is gone: the replica says
    // so, applies nothing, never falls back to asking without the key, and drops that
    // response rather than let it block the imports behind it. To have it in flight: d1
    // is down while d2 asks, and d2 is down while d1 answers.
    let db2 = database_of(&d2, &rid);
    let served = downstream(&d1).snapshots;
    d1.tables.insert(&t, &[batch(300..400, "k")]).await.unwrap();
    d1.kill().await;
    d2.repl.request_refresh(&db2, "test").unwrap();
    // Out, not only queued: `sent` marks the request handed to the channel, whose worker
    // writes the message file a moment later. Killed in between, d2 would hold it back
    // until it returns, and d1 could not answer (CI's loaded run hit that window).
    let sender = tern_replication::Peers::sender(d2.peers.as_ref(), &d1.id).expect("channel");
    eventually(WAIT, "the refresh request to go out", || async {
        let Some(p) = d2
            .meta
            .read(|tx| {
                tx.get::<tern_replication::state::ReplicaDpo>(
                    &tern_replication::state::keys::replica(&db2),
                )
            })
            .unwrap()
            .and_then(|r| r.refresh)
            .filter(|p| p.sent)
        else {
            return false;
        };
        let id = tern_storage::layout::MessageId::new(p.request_id.as_str()).unwrap();
        sender
            .message(&id)
            .await
            .unwrap()
            .is_some_and(|m| m.state == tern_messaging::OutState::Sent)
    })
    .await;
    d2.kill().await;
    d1 = open(dir.path(), "d1", None).await;
    d1.start(&[&d2]);
    eventually(WAIT, "d1 to answer it", || async {
        downstream(&d1).snapshots > served
    })
    .await;
    let moved = dir.path().join("a2.x25519.away");
    std::fs::rename(&file, &moved).unwrap();
    let before = ver(&d2, &rid);
    d2 = open(dir.path(), "d2", Some(&keys)).await;
    d2.start(&[&d1]);
    let status = d2.repl.customer_key_status(&a2).unwrap().unwrap();
    assert!(
        status.key_id.is_none()
            && status
                .error
                .as_deref()
                .is_some_and(|e| e.contains("a2.x25519")),
        "{status:?}"
    );
    eventually(
        WAIT,
        "the sealed response dropped and the unopenable key reported",
        || async {
            let s = d2.repl.status().await.unwrap();
            s.import_jobs == 0
                && s.replicas[0]
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("cannot be opened"))
        },
    )
    .await;
    assert_eq!(ver(&d2, &rid), before);
    assert_eq!(sealed_to(&d1).as_deref(), Some(key_id.as_str()));

    // Back in place and registered again: it catches up.
    std::fs::rename(&moved, &file).unwrap();
    assert_eq!(
        d2.repl
            .register_customer_key(&a2, &spec, false)
            .await
            .unwrap(),
        key_id
    );
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;

    // Removed: the next refresh asks without it and the primary stops sealing.
    assert!(d2.repl.remove_customer_key(&a2).unwrap());
    assert!(d2.repl.customer_key_status(&a2).unwrap().is_none());
    eventually(WAIT, "the primary to stop sealing", || async {
        sealed_to(&d1).is_none()
    })
    .await;
    d1.tables.insert(&t, &[batch(400..500, "k")]).await.unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    d1.stop().await;
    d2.stop().await;
}

/// The database a replica table belongs to.
fn database_of(n: &Node, table: &TableId) -> DatabaseId {
    n.meta
        .read(|tx| tx.get_table(table))
        .unwrap()
        .unwrap()
        .database
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_gap_that_cannot_fill_turns_into_a_refresh() {
    let Pair {
        dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair(repl_config()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let refreshes = d2.repl.status().await.unwrap().replicas[0].refreshes;

    // The primary's workers pause; three commits; the middle one's log record expires.
    d1.stop().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        d1.tables
            .insert(&t, &[batch(i * 10..i * 10 + 10, "g")])
            .await
            .unwrap();
        ids.push(d1.txn.last_txn_id(&a1).unwrap());
    }
    let expired = tern_storage::layout::volume::txlog(&a1, ids[1]);
    object_store::ObjectStoreExt::delete(d1.volume.as_ref(), &expired)
        .await
        .unwrap();
    d1 = open(dir.path(), "d1", None).await;
    d1.start(&[&d2]);

    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    // The count moves just after the import's commit makes the versions visible.
    eventually(WAIT, "the gap to be filled by a refresh", || async {
        d2.repl.status().await.unwrap().replicas[0].refreshes > refreshes
    })
    .await;
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_can_be_made_local_or_dropped() {
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db,
        account_group,
        t,
    } = pair(repl_config()).await;
    d1.tables.insert(&t, &[batch(0..10, "l")]).await.unwrap();
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let a2 = AccountId::new("a2").unwrap();
    let rid = replica_table_id(&d1.id, &t);
    let downs = |n: &Node| {
        let r = n.repl.clone();
        async move { r.status().await.unwrap().downstream.len() }
    };
    assert_eq!(downs(&d1).await, 1);

    // Made local: the replica keeps its rows, becomes writable, and d1 stops shipping to it.
    d2.repl.disable_replication(&a2, "sales").unwrap();
    d2.tables
        .insert(&rid, &[batch(100..101, "mine")])
        .await
        .unwrap();
    assert_eq!(rows(&d2, &rid, None).await.len(), 11);
    eventually(WAIT, "d1 to forget the replica", || async {
        downs(&d1).await == 0
    })
    .await;
    d1.tables.insert(&t, &[batch(10..20, "l")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&d2, &rid, None).await.len(), 11, "no longer follows");

    // A new replica of the group in the same deployment (the old one, now local, keeps
    // its table ids: the new replica's tables get local ids of their own), then dropped:
    // gone here, forgotten upstream.
    let group = group_of(&d1, &db);
    let r = d2.repl.create_replica(&a2, "sales2", &group, None).unwrap();
    eventually(WAIT, "the second replica to catch up", || async {
        let tables = d2.meta.read(|tx| tx.list_tables(&r)).unwrap();
        match tables.first() {
            Some(t2) => rows(&d2, &t2.id, None).await.len() == 20,
            None => false,
        }
    })
    .await;
    let t2 = d2.meta.read(|tx| tx.list_tables(&r)).unwrap()[0].id.clone();
    assert_eq!(t2.as_str(), format!("{rid}_1"));
    assert_eq!(
        rows(&d2, &rid, None).await.len(),
        11,
        "the local copy is untouched"
    );
    d2.repl.drop_replica(&a2, "sales2").unwrap();
    eventually(WAIT, "d1 to forget the dropped replica", || async {
        downs(&d1).await == 0
    })
    .await;
    assert!(
        d2.meta
            .read(|tx| tx.find_database(&a2, "sales2"))
            .unwrap()
            .is_none()
    );
    d1.stop().await;
    d2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shipment_a_crash_left_unfinished_is_shipped_again_not_taken_as_sent() {
    use tern_messaging::crash::points::BODY_UPLOADED;
    use tern_replication::service::Counters;
    // Every shipment travels with a body file (the path a crash can cut in two), and no
    // scheduled refresh would heal a record lost on the way.
    let config = ReplicationConfig {
        inline_max_bytes: 1,
        refresh_interval: Duration::ZERO,
        ..repl_config()
    };
    let Pair {
        dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_with(config.clone()).await;
    d1.tables.insert(&t, &[batch(0..10, "a")]).await.unwrap();
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    // The first refresh is counted just after its commit, which `caught_up` can see.
    eventually(WAIT, "the first refresh counted", || async {
        Counters::get(&d2.repl.counters().snapshots_imported) >= 1
    })
    .await;
    let imported = Counters::get(&d2.repl.counters().snapshots_imported);
    // The primary dies after the next shipment's body is uploaded, before its message is
    // ready to send.
    d1.ctx.crash_points().arm(BODY_UPLOADED);
    d1.tables.insert(&t, &[batch(10..20, "b")]).await.unwrap();
    eventually(Duration::from_secs(30), "the crash point", || async {
        d1.ctx.crash_points().fired().contains(&BODY_UPLOADED)
    })
    .await;
    d1.kill().await;
    let mut d1 = open_with(dir.path(), "d1", None, config).await;
    d1.start(&[&d2]);
    // Back, it ships the record again: the replica has it by the log, not a refresh.
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let rid = replica_table_id(&d1.id, &t);
    assert_eq!(rows(&d2, &rid, None).await.len(), 20);
    assert_eq!(Counters::get(&d1.repl.counters().shipments_retried), 1);
    assert_eq!(
        Counters::get(&d2.repl.counters().snapshots_imported),
        imported
    );
    d1.stop().await;
    d2.stop().await;
}

/// An import that cannot succeed (its inbound files are gone) backs off, is marked
/// failed after its attempts — visible, skipped — while another replica's import goes
/// on; the operator's retry takes it up again, and abandoning it asks for a new refresh
/// that brings the replica up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_import_fails_visibly_and_blocks_no_other_import() {
    use tern_replication::jobs::{JobKind, JobState};
    use tern_storage::{Fault, FaultPlan, FaultRule, Operation};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = ReplicationConfig {
        job_attempts: 2,
        job_backoff: Duration::from_millis(50),
        refresh_interval: Duration::ZERO,
        ..repl_config()
    };
    let d1 = open_with(root, "d1", None, config.clone()).await;
    let keys = root.join("d1").join("keys");
    let plan = FaultPlan::new();
    let d2 = open_through(root, "d2", &keys, &plan, config).await;
    let Pair {
        dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_from(dir, keys, d1, d2).await;
    let root = dir.path();
    let hr = d1.create_database(&a1, "hr").unwrap();
    d1.tables.create_schema(&hr, "public").await.unwrap();
    let h = d1
        .tables
        .create_table(&hr, "public", "h", columns())
        .await
        .unwrap();
    d1.tables.insert(&t, &[batch(0..10, "a")]).await.unwrap();
    d1.tables.insert(&h, &[batch(0..10, "a")]).await.unwrap();
    // The replica of sales is made while d2 cannot read what d1 puts in its inbound
    // stage; the files of that import are then lost for good.
    let blind = plan.arm(
        FaultRule::on(Operation::Get)
            .under("from/d1/inbound")
            .always()
            .fault(Fault::Fail),
    );
    replicate(&d1, &a1, &d2, &account_group).await;
    let import = || {
        d2.repl
            .jobs()
            .unwrap()
            .into_iter()
            .find(|j| j.kind == JobKind::Import)
    };
    eventually(WAIT, "the import of sales", || async { import().is_some() }).await;
    let poison = import().unwrap().id;
    std::fs::remove_dir_all(
        root.join("d2")
            .join("repl")
            .join("from")
            .join("d1")
            .join("inbound")
            .join(&poison),
    )
    .unwrap();
    plan.disarm(blind);
    eventually(WAIT, "the poison import to be given up", || async {
        import().is_some_and(|j| j.id == poison && j.state == JobState::Failed && j.attempts == 2)
    })
    .await;
    let failed = import().unwrap();
    assert!(failed.last_error.is_some(), "{failed:?}");
    assert_eq!(d2.repl.status().await.unwrap().counters["jobs_failed"], 1);
    // Another replica's import is not held up by it.
    let hr_group = d1.repl.enable_replication(&a1, "hr").unwrap();
    knows(&d2, &hr_group, "d1").await;
    let a2 = AccountId::new("a2").unwrap();
    d2.repl.create_replica(&a2, "hr", &hr_group, None).unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&h)).await;
    assert_eq!(import().map(|j| j.state), Some(JobState::Failed));
    // Retried, it runs its attempts again (and fails again: its files are gone).
    let retried = d2.repl.retry_job(&poison).unwrap();
    assert_eq!((retried.attempts, retried.state), (0, JobState::Waiting));
    eventually(WAIT, "the retried import to fail again", || async {
        import().is_some_and(|j| j.state == JobState::Failed && j.attempts == 2)
    })
    .await;
    // Abandoned, its folder goes and a new refresh brings sales up.
    d2.repl.abandon_job(&poison).await.unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, &[t.clone(), h.clone()]).await;
    // The import's job row goes just after its commit makes the versions visible.
    eventually(WAIT, "the refresh's jobs to be done", || async {
        d2.repl.jobs().unwrap().is_empty()
    })
    .await;
    d1.stop().await;
    d2.stop().await;
}

/// A replica on a schedule (seed 001 [26]: some sites every few minutes, others once a
/// day) stops following the log and is brought up by refreshes on its schedule; set
/// back to continuous it follows the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_on_a_schedule_refreshes_on_it_instead_of_following_the_log() {
    use tern_replication::schedule::Schedule;
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair(repl_config()).await;
    d1.tables.insert(&t, &[batch(0..10, "a")]).await.unwrap();
    replicate(&d1, &a1, &d2, &account_group).await;
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let a2 = AccountId::new("a2").unwrap();
    let r2 = d2
        .meta
        .read(|tx| tx.find_database(&a2, "sales"))
        .unwrap()
        .unwrap()
        .id;
    let replica = || async { d2.repl.status().await.unwrap().replicas[0].clone() };
    let every = Schedule::Every(Duration::from_millis(300));
    d2.repl.set_schedule(&r2, every).unwrap();
    eventually(WAIT, "the schedule to take effect", || async {
        let r = replica().await;
        r.schedule == every && r.refresh_pending.is_none() && r.next_refresh_at_ms.is_some()
    })
    .await;
    let (applied, refreshes) = {
        let r = replica().await;
        (r.records_applied, r.refreshes)
    };
    for k in 1..4 {
        d1.tables
            .insert(&t, &[batch(k * 10..k * 10 + 10, "b")])
            .await
            .unwrap();
    }
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    // Counted just after the import's commit makes the versions visible.
    eventually(WAIT, "the scheduled refresh to be counted", || async {
        replica().await.refreshes > refreshes
    })
    .await;
    let r = replica().await;
    assert_eq!(
        r.records_applied, applied,
        "no record came by the log: {r:?}"
    );
    // Continuous again: the log, from the refresh that subscribes it (waited for: its
    // request may not be pending yet right after the switch).
    let before = replica().await.refreshes;
    d2.repl.set_schedule(&r2, Schedule::Continuous).unwrap();
    eventually(WAIT, "the replica to follow the log again", || async {
        // Its refresh imported, no other request or response under way (a scheduled one
        // sent before the switch is answered first), and the source shipping to it.
        let r = replica().await;
        let s = d1.repl.status().await.unwrap();
        let subscribed = s.downstream.iter().any(|d| d.subscribed);
        r.refreshes > before
            && r.refresh_pending.is_none()
            && subscribed
            && d1.repl.jobs().unwrap().is_empty()
            && d2.repl.jobs().unwrap().is_empty()
    })
    .await;
    d1.tables.insert(&t, &[batch(40..50, "c")]).await.unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    // The count moves just after the commit that makes the version visible: waited for.
    eventually(
        WAIT,
        "the record to be counted as applied from the log",
        || async { replica().await.records_applied > applied },
    )
    .await;
    let e = d2
        .repl
        .set_schedule(&DatabaseId::new("nope").unwrap(), every)
        .unwrap_err();
    assert!(e.to_string().contains("not a secondary replica"), "{e}");
    d1.stop().await;
    d2.stop().await;
}

/// A refresh request lists every file the replica holds: past the inline payload cap
/// (~30 000 files at the default 1 MiB) it travels as a body file — before, such a
/// replica could never refresh again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_of_many_files_still_refreshes_its_request_travels_as_a_body_file() {
    use tern_messaging::MessagingConfig;
    use tern_replication::local::{LocalDeployment, LocalOptions};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let d1 = open_with(root, "d1", None, repl_config()).await;
    let keys = root.join("d1").join("keys");
    // d2's inline payloads are capped at 4 KiB: a request listing 200 files is larger.
    let d2 = LocalDeployment::open(
        root,
        "d2",
        Some(&keys),
        LocalOptions {
            replication: ReplicationConfig {
                inline_max_bytes: 2048,
                ..repl_config()
            },
            messaging: MessagingConfig {
                max_payload_bytes: 4096,
                ..messaging_config()
            },
            txn: tern_txn::TxnOptions::default(),
        },
    )
    .await
    .unwrap();
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair_from(dir, keys, d1, d2).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    for i in 0..200 {
        d1.tables.insert(&t, &[batch(i..i + 1, "x")]).await.unwrap();
    }

    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let a2 = AccountId::new("a2").unwrap();
    let r2 = d2
        .meta
        .read(|tx| tx.find_database(&a2, "sales"))
        .unwrap()
        .unwrap()
        .id;
    let refreshes = || async { d2.repl.status().await.unwrap().replicas[0].refreshes };
    let before = refreshes().await;
    d2.repl.request_refresh(&r2, "operator").unwrap();
    eventually(
        WAIT,
        "the refresh listing 200 files to be answered",
        || async { refreshes().await > before },
    )
    .await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    d1.stop().await;
    d2.stop().await;
}

/// A compaction on the primary (40 one-row files merged into one, removed and added by
/// global reference) reaches the replica as one commit: the same rows in one file there,
/// and the replica's history before it still reads the small files. The replica itself
/// never compacts: it is read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compaction_on_the_primary_reaches_the_replica_with_equal_rows() {
    let Pair {
        dir: _dir,
        keys: _,
        mut d1,
        mut d2,
        a1,
        db: _,
        account_group,
        t,
    } = pair(repl_config()).await;
    replicate(&d1, &a1, &d2, &account_group).await;
    for i in 0..40i64 {
        d1.tables.insert(&t, &[batch(i..i + 1, "s")]).await.unwrap();
    }
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    let rid = replica_table_id(&d1.id, &t);
    let before = ver(&d2, &rid).unwrap();
    let active = |n: &Node, table: &TableId| {
        let v = ver(n, table).unwrap();
        n.meta
            .read(|tx| tx.active_micro_partitions(table, v))
            .unwrap()
            .len()
    };
    assert_eq!(active(&d2, &rid), 40);

    let opts = tern_table::CompactionOptions {
        min_files: 4,
        ..Default::default()
    };
    let e = d2.tables.compact(&rid, &opts).await.unwrap_err();
    assert!(
        matches!(e, tern_table::Error::ReadOnlyReplica { .. }),
        "{e}"
    );
    let info = d1.tables.compact(&t, &opts).await.unwrap();
    assert!(info.committed, "{info:?}");
    assert_eq!((info.files_removed, info.files_added), (40, 1));
    // A change after it, on the merged file, follows it.
    d1.tables
        .delete(&t, &Predicate::eq("id", 7i64))
        .await
        .unwrap();

    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    assert_eq!(rows(&d2, &rid, None).await.len(), 39);
    assert_eq!(active(&d2, &rid), 1, "the replica holds the merged file");
    assert_eq!(active(&d1, &t), 1);
    // The replica's version before the compaction still reads its 40 small files.
    assert_eq!(rows(&d2, &rid, Some(before)).await.len(), 40);
    assert_eq!(
        rows(&d2, &rid, Some(before)).await,
        rows(&d1, &t, Some(before)).await
    );
    d1.stop().await;
    d2.stop().await;
}

/// The source killed at each of its named crash points — a response sent ahead of its
/// files and none copied, a snapshot's files copied but no response (or, sent ahead, no
/// marker) yet, a response ready but its request not yet removed, a shipment ready but
/// the cursor not yet past it — comes back and the replica ends with every row exactly
/// once (by the log after the first refresh, never a second copy of a row).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_source_killed_at_each_crash_point_loses_and_duplicates_nothing() {
    use tern_replication::crash::{SHIP_SENT, SNAPSHOT_COPIED, SNAPSHOT_PLAN_SENT, SNAPSHOT_SENT};
    for point in [
        SNAPSHOT_PLAN_SENT,
        SNAPSHOT_COPIED,
        SNAPSHOT_SENT,
        SHIP_SENT,
    ] {
        let config = ReplicationConfig {
            refresh_interval: Duration::ZERO,
            ..repl_config()
        };
        let Pair {
            dir,
            keys: _,
            mut d1,
            mut d2,
            a1,
            db: _,
            account_group,
            t,
        } = pair_with(config.clone()).await;
        d1.tables.insert(&t, &[batch(0..10, "a")]).await.unwrap();
        if point == SHIP_SENT {
            replicate(&d1, &a1, &d2, &account_group).await;
            caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
            d1.ctx.crash_points().arm(point);
            d1.tables.insert(&t, &[batch(10..20, "b")]).await.unwrap();
        } else {
            d1.ctx.crash_points().arm(point);
            replicate(&d1, &a1, &d2, &account_group).await;
        }
        eventually(Duration::from_secs(30), point, || async {
            d1.ctx.crash_points().fired().contains(&point)
        })
        .await;
        d1.kill().await;
        let mut d1 = open_with(dir.path(), "d1", None, config).await;
        d1.start(&[&d2]);
        if point != SHIP_SENT {
            d1.tables.insert(&t, &[batch(10..20, "b")]).await.unwrap();
        }
        caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
        same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
        let rid = replica_table_id(&d1.id, &t);
        assert_eq!(rows(&d2, &rid, None).await.len(), 20, "after {point}");
        d1.stop().await;
        d2.stop().await;
    }
}

/// `enable replication to accounts ok`: an account not on the list cannot create a
/// replica (refused where it is created, the list having travelled with the primary's
/// entity), and a replica made before the list was narrowed is refused by the source:
/// its refresh request is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_allowed_accounts_replicate_a_database() {
    let p = pair(repl_config()).await;
    let (d1, d2) = (&p.d1, &p.d2);
    d1.tables.insert(&p.t, &[batch(0..10, "a")]).await.unwrap();
    let group = d1
        .repl
        .enable_replication_to(&p.a1, "sales", Some(&["d2.ok".to_string()]))
        .unwrap();
    let refused = d2.create_account("a2").unwrap();
    let ok = d2.create_account("ok").unwrap();
    for a in [&refused, &ok] {
        d2.repl
            .set_account_global(a, Some(&p.account_group))
            .unwrap();
    }
    knows(d2, &group, "d1").await;
    let e = d2
        .repl
        .create_replica(&refused, "sales", &group, None)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("account a2 of deployment d2 is not allowed") && msg.contains("d2.ok"),
        "{msg}"
    );
    d2.repl.create_replica(&ok, "sales", &group, None).unwrap();
    caught_up(d1, d2, std::slice::from_ref(&p.t)).await;

    // Narrowed to another account: the replica of `ok` is refused at the source.
    d1.repl
        .enable_replication_to(&p.a1, "sales", Some(&["nobody".to_string()]))
        .unwrap();
    assert!(
        d1.repl
            .check_allowed(&group, &d2.id, &ok)
            .unwrap_err()
            .to_string()
            .contains("enables replication to accounts nobody only")
    );
    let before = tern_replication::service::Counters::get(&d1.repl.counters().rejected);
    let db2 = d2
        .repl
        .known_entities()
        .unwrap()
        .into_iter()
        .find(|e| e.deployment == d2.id && e.group.as_deref() == Some(&group))
        .unwrap();
    assert_eq!(db2.role, Some(DatabaseRole::Secondary));
    let local = d2
        .meta
        .read(|tx| tx.list_databases(&ok))
        .unwrap()
        .into_iter()
        .find(|d| d.name == "sales")
        .unwrap();
    d2.repl.request_refresh(&local.id, "test").unwrap();
    eventually(WAIT, "d1 to refuse the refresh request", || async {
        tern_replication::service::Counters::get(&d1.repl.counters().rejected) > before
    })
    .await;

    // Bad lists are refused naming the entry.
    let e = d1
        .repl
        .enable_replication_to(&p.a1, "sales", Some(&["a.b.c".to_string()]))
        .unwrap_err();
    assert!(e.to_string().contains("allowed account \"a.b.c\""), "{e}");
}

/// Records pile up while the replica's bucket is cut off; once it is back the shipper
/// takes them up a turn at a time, reading and copying several at once, and the copy of
/// one of them fails: the records before it are shipped and the cursor moves past them,
/// the failing one and those after it go in the next turn — each record is sent once,
/// in order, and the replica ends with every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_failing_mid_turn_ships_the_ones_before_it_and_then_the_rest_once() {
    use tern_replication::service::Counters;
    use tern_storage::{Fault, FaultPlan, FaultRule, FaultStore, Operation};
    const RECORDS: i64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let mut d1 = open_with(dir.path(), "d1", None, repl_config()).await;
    let keys = dir.path().join("d1").join("keys");
    let mut d2 = open_with(dir.path(), "d2", Some(&keys), repl_config()).await;
    link(&d1, &d2).await;
    // d1 reaches d2's bucket through a store that fails as the plan says.
    let plan = FaultPlan::new();
    let to_d2: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(
        FaultStore::new(std::sync::Arc::clone(&d2.bucket), plan.clone()),
    );
    d1.start_with(&[(d2.id.clone(), to_d2)]);
    d2.start(&[&d1]);
    let (_, _, t) = replicated_table(&d1, &d2).await;
    let shipped0 = Counters::get(&d1.repl.counters().records_shipped);

    // Cut off: the records wait, each with a file to copy.
    let cut = plan.arm(FaultRule::any().always().fault(Fault::Fail));
    for i in 1..=RECORDS {
        d1.tables
            .insert(&t, &[batch(i * 10..i * 10 + 10, "b")])
            .await
            .unwrap();
    }
    // Back, but the sixth file copied into the inbound stage fails once.
    let inbound = tern_storage::Path::from("from/d1/inbound");
    let sixth = plan.arm(FaultRule::on(Operation::Put).under(inbound).nth(6));
    plan.disarm(cut);
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    assert_eq!(plan.fired(sixth), 1, "the sixth copy failed");
    let rid = replica_table_id(&d1.id, &t);
    assert_eq!(
        rows(&d2, &rid, None).await.len(),
        10 * (RECORDS as usize + 1)
    );
    // Each record sent once: none again, none skipped as already applied.
    assert_eq!(
        Counters::get(&d1.repl.counters().records_shipped) - shipped0,
        RECORDS as u64
    );
    assert_eq!(Counters::get(&d1.repl.counters().shipments_retried), 0);
    assert_eq!(Counters::get(&d2.repl.counters().records_skipped), 0);
    let down = d1.repl.status().await.unwrap().downstream;
    assert!(down.iter().all(|d| d.last_error.is_none()), "{down:?}");
    d1.stop().await;
    d2.stop().await;
}
