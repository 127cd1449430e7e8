//! The log reader and the Lamport clock: records of DDL and DML are listed and read from a
//! given id, ids keep increasing across restarts, and an observed higher id moves the
//! clock forward.

use tern_table::commit::{ChangeRecord, DictionaryOp};
use tern_txn::CrashPoints;

use crate::common::{Deployment, quick_options, rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_are_listed_in_id_order_and_ids_survive_restarts() {
    let dep = Deployment::folder();
    let (m, tables) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables, "orders").await;
    tables.insert(&t, &[rows(&[1, 2])]).await.expect("insert");
    tables.insert(&t, &[rows(&[3])]).await.expect("insert");

    let all = m
        .read_log_from(&dep.account, 0, 100)
        .await
        .expect("read log");
    let ids: Vec<u64> = all.iter().map(|r| r.txn_id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "schema, table, two inserts");
    assert!(matches!(
        &all[0].changes[..],
        [ChangeRecord::Dictionary { op: DictionaryOp::CreateSchema(s), .. }] if s.name == "public"
    ));
    assert!(matches!(
        &all[1].changes[..],
        [ChangeRecord::Dictionary { op: DictionaryOp::CreateTable(d), .. }] if d.id == t
    ));
    match &all[3].changes[..] {
        [
            ChangeRecord::TableVersion {
                table,
                base_version,
                version,
                added,
                removed,
                ..
            },
        ] => {
            assert_eq!((table, *base_version, *version), (&t, 1, 2));
            assert_eq!(added.len(), 1);
            assert!(removed.is_empty());
            assert_eq!(added[0].global_ref.origin, dep.deployment);
        }
        other => panic!("unexpected record {other:?}"),
    }
    assert!(all.iter().all(|r| r.origin == dep.deployment));
    assert_eq!(
        m.log_ids(&dep.account, 3).await.expect("ids from 3"),
        vec![3, 4]
    );
    assert_eq!(
        m.read_log_from(&dep.account, 2, 1)
            .await
            .expect("read")
            .len(),
        1
    );
    assert!(
        m.read_log(&dep.account, 99).await.is_err(),
        "no such record"
    );

    // A restart continues the clock.
    drop((m, tables));
    let m2 = dep.manager(CrashPoints::new(), quick_options());
    let tables2 = dep.tables(&m2);
    assert_eq!(m2.last_txn_id(&dep.account).expect("clock"), 4);
    let c = tables2.insert(&t, &[rows(&[4])]).await.expect("insert");
    let v = dep
        .meta
        .read(|tx| tx.get_table_version(&t, c.version))
        .expect("read")
        .expect("version");
    assert_eq!(v.txn_id, Some(5));

    // An id observed from elsewhere moves the clock; a lower one does not move it back.
    assert_eq!(m2.observe(&dep.account, 1000).expect("observe"), 1000);
    assert_eq!(m2.observe(&dep.account, 10).expect("observe"), 1000);
    let c = tables2.insert(&t, &[rows(&[5])]).await.expect("insert");
    let v = dep
        .meta
        .read(|tx| tx.get_table_version(&t, c.version))
        .expect("read")
        .expect("version");
    assert_eq!(v.txn_id, Some(1001));

    // Records are sealed: the stored bytes are not the JSON record.
    let path = tern_storage::layout::volume::txlog(&dep.account, 1001);
    let raw = tern_storage::StoreExt::read_all(dep.volume.as_ref(), &path)
        .await
        .expect("raw record");
    assert!(
        !raw.windows(10).any(|w| w == b"tern-txlog"),
        "plaintext log record"
    );
}
