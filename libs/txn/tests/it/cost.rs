//! The metadata cost of the protocol's lookups does not grow with history: rows read and
//! bytes written (counted by a [`tern_meta::CountingBackend`]) are the same after 10
//! commits and after 200.

use object_store::ObjectStoreExt as _;
use tern_clock::Clock as _;
use tern_meta::{CountingBackend, KvCounts};
use tern_storage::Path;
use tern_table::Committer as _;

use crate::common::{Deployment, quick_options, rows};

/// What `f` cost in the metadata store.
async fn cost<F: std::future::Future>(counting: &CountingBackend, f: F) -> KvCounts {
    let before = counting.counts();
    f.await;
    counting.counts().since(&before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_and_pruning_cost_the_same_after_10_and_200_commits() {
    let (dep, counting) = Deployment::counting();
    let (m, tables) = dep.start(quick_options()).await;
    let table = dep.create_table(&tables, "t").await;
    let mut ids = Vec::new();
    let measure = async |ids: &[u64]| {
        let first = ids[0];
        let stable = cost(&counting, async {
            assert_eq!(m.stable_log_id(&dep.account).unwrap(), *ids.last().unwrap());
        })
        .await;
        let status = cost(&counting, async {
            assert_eq!(
                m.status(&dep.account, first).await.unwrap(),
                Some(tern_txn::TxnOutcome::Committed)
            );
        })
        .await;
        // Nothing finished before the start of time: walks nothing.
        let prune = cost(&counting, async {
            assert_eq!(m.prune_finished(0).unwrap(), 0);
        })
        .await;
        (stable.rows_read(), status.rows_read(), prune.rows_read())
    };
    for i in 0..10 {
        ids.push(
            tables
                .insert(&table, &[rows(&[i])])
                .await
                .unwrap()
                .txn_id
                .unwrap(),
        );
    }
    let after_10 = measure(&ids).await;
    for i in 10..200 {
        ids.push(
            tables
                .insert(&table, &[rows(&[i])])
                .await
                .unwrap()
                .txn_id
                .unwrap(),
        );
    }
    let after_200 = measure(&ids).await;
    assert_eq!(
        after_10, after_200,
        "(stable_log_id, status, prune_finished) rows read after 10 commits vs after 200"
    );
    // Pruning still finds what it should.
    dep.clock.advance(std::time::Duration::from_secs(60));
    let now = dep.clock.now_millis();
    assert!(m.prune_finished(now).unwrap() >= 200);
    assert!(m.status(&dep.account, ids[0]).await.unwrap().is_some());
}

/// Journaling a transaction's files costs the same per file however many it has (one row
/// each, not a growing list rewritten per file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaling_a_file_costs_the_same_for_the_10th_and_the_200th() {
    let (dep, counting) = Deployment::counting();
    let (m, _tables) = dep.start(quick_options()).await;
    let mut txn = m.begin(&dep.account).await.unwrap();
    let path = |i: u32| Path::from(format!("acct/acme/scratch/{i:06}.mp"));
    for i in 0..10 {
        txn.will_write(&path(i)).await.unwrap();
    }
    let tenth = cost(&counting, async {
        txn.will_write(&path(10)).await.unwrap()
    })
    .await;
    for i in 11..200 {
        txn.will_write(&path(i)).await.unwrap();
    }
    let two_hundredth = cost(&counting, async {
        txn.will_write(&path(200)).await.unwrap()
    })
    .await;
    assert_eq!(tenth, two_hundredth, "cost of one journaled file");
    txn.abort().await;
    assert!(m.transactions().unwrap().iter().all(|t| t.state.is_final()));
}

/// Journaling many files at once (a replica's refresh copying in a table's files) is one
/// metadata commit, not one per file, and each is journaled: an abort removes every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaling_many_files_at_once_is_one_metadata_commit() {
    let (dep, counting) = Deployment::counting();
    let (m, _tables) = dep.start(quick_options()).await;
    let mut txn = m.begin(&dep.account).await.unwrap();
    // The transaction's row is made by its first journaling.
    txn.will_write(&Path::from("acct/acme/scratch/first.mp"))
        .await
        .unwrap();
    let paths: Vec<Path> = (0..500)
        .map(|i| Path::from(format!("acct/acme/scratch/{i:06}.mp")))
        .collect();
    let spent = cost(&counting, async {
        txn.will_write_all(&paths).await.unwrap()
    })
    .await;
    assert_eq!(spent.commits, 1, "metadata commits journaling 500 files");
    assert_eq!(spent.puts, 500, "one row per file");
    for p in &paths[..3] {
        dep.volume.put(p, b"x".to_vec().into()).await.unwrap();
    }
    txn.abort().await;
    for p in &paths[..3] {
        assert!(
            dep.volume.head(p).await.is_err(),
            "{p} left after the abort"
        );
    }
}

/// An insert costs two durable metadata commits: take the table lock, check the change
/// still lands where it was planned and publishes cleanly (undone), and prepare (id, log
/// record, sealed metadata file) — one transaction; make the version visible and release
/// the lock — one transaction. Its data file is covered by a block of numbers reserved for
/// the table (one commit per 64 files), not journaled on its own (one commit more per
/// insert). Taking the lock apart from preparing (the metadata file written in between), a
/// dry run of its own for the check, or releasing apart from publishing each cost one more
/// — each a WAL fsync on the commit path, and a turn at the single writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_costs_two_metadata_commits() {
    let (dep, counting) = Deployment::counting();
    let (_m, tables) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables, "orders").await;
    tables.insert(&t, &[rows(&[0])]).await.unwrap();
    const INSERTS: u64 = 10;
    const PER_INSERT: u64 = 2;
    let spent = cost(&counting, async {
        for i in 1..=INSERTS {
            tables.insert(&t, &[rows(&[i as i64])]).await.unwrap();
        }
    })
    .await;
    // Unique numbers come in blocks of 64, one reserving commit per block: over ten
    // inserts each of the three sequences used (handles, the table's file numbers,
    // metadata files) may need one more block.
    assert!(
        (PER_INSERT * INSERTS..=PER_INSERT * INSERTS + 3).contains(&spent.commits),
        "{} metadata commits for {INSERTS} inserts",
        spent.commits
    );
    assert!(
        (PER_INSERT * INSERTS..=PER_INSERT * INSERTS + 3).contains(&spent.write_transactions),
        "{} write transactions (dry runs included) for {INSERTS} inserts",
        spent.write_transactions
    );
    // Of the two, only the prepare waits for an fsync: the publish is re-done by recovery
    // from the Prepared row and the stored log record, so its durability is deferred.
    assert_eq!(
        spent.deferred_commits, INSERTS,
        "one deferred commit (the publish) per insert"
    );
}
