//! Micro-partition numbers covered by reserved blocks (`tern_txn::ReservedFilesDpo`): the
//! file of a number is removed when its statement does not commit — by the roll-back, or
//! after a crash by the next instance's recovery — and never while its statement runs.

use tern_meta::Key;
use tern_storage::layout::{TableId, volume};
use tern_storage::{Path, StoreExt};
use tern_table::Committer as _;
use tern_txn::{CrashPoints, ReservedFilesDpo};

use crate::common::{Deployment, quick_options};

fn blocks(dep: &Deployment) -> Vec<ReservedFilesDpo> {
    dep.meta
        .read(|tx| tx.scan_prefix::<ReservedFilesDpo>(&Key::root("txn").str("r")))
        .expect("blocks")
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

async fn exists(dep: &Deployment, path: &Path) -> bool {
    dep.volume.meta(path).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_file_goes_with_its_statement_and_never_while_it_runs() {
    let dep = Deployment::folder();
    let (m, _tables) = dep.start(quick_options()).await;
    let table = TableId::new("t1").unwrap();
    let prefix = Path::from("acct/acme/db/d/tbl/t1/mp");
    let file = |n: u64| volume::mp_in(&prefix, &volume::numbered_mp(n));
    let write = async |txn: &mut Box<dyn tern_table::Transaction>| {
        let n = txn.new_mp(&table, &prefix).await.expect("a number");
        dep.volume
            .put_new(
                &file(n),
                object_store::PutPayload::from_static(b"uncommitted"),
            )
            .await
            .expect("write");
        n
    };

    // A statement's file is written; a periodic recovery runs meanwhile: the file stays.
    let mut txn = m.begin(&dep.account).await.unwrap();
    let n = write(&mut txn).await;
    let report = m.recover().await.expect("recover");
    assert_eq!(report.files_removed, 0, "{report:?}");
    assert!(exists(&dep, &file(n)).await, "the running statement's file");
    assert_eq!(blocks(&dep).len(), 1, "one block covers it");
    // The statement gives up: its roll-back removes the file (no recovery needed).
    txn.abort().await;
    assert!(!exists(&dep, &file(n)).await);

    // The next number of the block: its process dies with the file written (nothing is
    // cleaned up: the transaction is dropped, the manager with it).
    let mut txn = m.begin(&dep.account).await.unwrap();
    let n2 = write(&mut txn).await;
    assert_eq!(n2, n + 1, "the same block, no new metadata commit");
    drop(txn);
    drop(m);
    // The next instance's recovery finds the file through the block, and the block goes.
    let m2 = dep.manager(CrashPoints::new(), quick_options());
    let report = m2.recover().await.expect("recover");
    assert_eq!(report.files_removed, 1, "{report:?}");
    assert!(!exists(&dep, &file(n2)).await, "the dead statement's file");
    assert!(blocks(&dep).is_empty(), "{:?}", blocks(&dep));

    // A stop closes the blocks no statement uses: their rows go at once.
    let mut txn = m2.begin(&dep.account).await.unwrap();
    let n3 = write(&mut txn).await;
    txn.abort().await;
    assert_eq!(blocks(&dep).len(), 1);
    m2.close_reservations();
    let report = m2.recover().await.expect("recover");
    assert_eq!(report.files_removed, 0, "{report:?}");
    assert!(blocks(&dep).is_empty(), "{:?}", blocks(&dep));
    assert!(!exists(&dep, &file(n3)).await);
}
