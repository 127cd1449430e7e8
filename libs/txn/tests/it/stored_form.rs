//! How a Prepared transaction is kept in the metadata store until it is committed: its
//! row (format version 2) without its log record, the record beside it as the record's own
//! bytes (zstd-packed when large), and each sealed metadata file as the file's own bytes — and rows stored in the
//! earlier form (format 1: the record inside the row, the file as hex in JSON) are still
//! recovered.

use tern_meta::Key;
use tern_storage::StoreExt as _;
use tern_storage::layout::TableId;
use tern_txn::{CrashPoints, LogRecord};

use crate::common::{Deployment, ids, quick_options, rows};

/// A table `orders` with one committed insert, by a manager instance that is gone since
/// (the tests go on with a new one, as after a restart).
async fn orders_with_a_version(dep: &Deployment) -> TableId {
    let (m0, tables0) = dep.start(quick_options()).await;
    let t = dep.create_table(&tables0, "orders").await;
    tables0
        .insert(&t, &[rows(&[1, 2, 3])])
        .await
        .expect("first insert");
    drop((m0, tables0));
    t
}

/// A deployment with a table holding rows 1, 2, 3, and an insert of 100, 101, 102 that
/// stopped at the crash point "prepared" (its commit in doubt): the table, the
/// transaction's handle and id.
async fn prepared_insert(dep: &Deployment) -> (TableId, u64, u64) {
    let t = orders_with_a_version(dep).await;
    let crash = CrashPoints::new();
    let m1 = dep.manager(crash.clone(), quick_options());
    crash.arm("prepared", 1);
    let err = dep
        .tables(&m1)
        .insert(&t, &[rows(&[100, 101, 102])])
        .await
        .expect_err("crashed");
    let txn_id = err.in_doubt_txn_id().expect("in doubt from Prepared on");
    let handle = dep
        .meta
        .read(|tx| {
            let (start, end) = Key::root("txn").str("id").prefix_range();
            let rows = tx.raw().scan(&start, &end, usize::MAX)?;
            let (_, v) = rows.last().expect("an id index entry").clone();
            let v: serde_json::Value = serde_json::from_slice(&v).expect("json");
            Ok(v["d"]["handle"].as_u64().expect("handle"))
        })
        .expect("read");
    (t, handle, txn_id)
}

/// Every `(key, value)` under `prefix`, raw.
fn raw_under(dep: &Deployment, prefix: &Key) -> Vec<(Key, Vec<u8>)> {
    dep.meta
        .read(|tx| {
            let (start, end) = prefix.prefix_range();
            Ok(tx
                .raw()
                .scan(&start, &end, usize::MAX)?
                .into_iter()
                .map(|(k, v)| (Key::from_bytes(k), v))
                .collect())
        })
        .expect("read")
}

fn txn_keys(handle: u64) -> (Key, Key, Key, Key) {
    let txn = Key::root("txn");
    (
        txn.clone().str("t").u64(handle),
        txn.clone().str("rec").u64(handle),
        txn.clone().str("sb").u64(handle),
        txn.str("s").u64(handle),
    )
}

/// The record is stored once, as the bytes sealed into the log; the metadata file as the
/// bytes written to the volume; the row is small. (Before, the row held the record as
/// JSON and the file as hex inside JSON: every read of the row carried both.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_transaction_keeps_its_record_and_metadata_file_as_their_bytes() {
    let dep = Deployment::folder();
    let (t, handle, txn_id) = prepared_insert(&dep).await;
    let (row_key, record_key, staged, old_staged) = txn_keys(handle);

    let row = raw_under(&dep, &row_key).pop().expect("row").1;
    let row = String::from_utf8(row).expect("utf-8");
    assert!(row.starts_with(r#"{"v":2,"d":{"handle":"#), "{row}");
    assert!(
        row.contains(r#""state":"prepared""#)
            && row.contains(&format!(
                r#""txn_id":{txn_id},"record":null,"stamps":{{"db1":"#
            )),
        "{row}"
    );
    // The record's canonical bytes, as they are (a small record: not zstd-packed, whose
    // set-up would cost more than it saves; large ones are, see the manager's tests).
    let plain = raw_under(&dep, &record_key).pop().expect("record").1;
    assert_eq!(plain.first(), Some(&b'{'), "the record's own bytes");
    let record = LogRecord::from_bytes(&plain, "record").expect("a log record");
    assert_eq!(record.txn_id, txn_id);
    assert_eq!(record.to_bytes().expect("encode"), plain, "canonical bytes");
    let files = raw_under(&dep, &staged);
    assert_eq!(files.len(), 1, "one metadata file");
    assert!(
        raw_under(&dep, &old_staged).is_empty(),
        "no file in the old form"
    );
    let (key, sealed) = files.into_iter().next().expect("file");
    let path = match key.elements().expect("key").pop() {
        Some(tern_meta::Element::Str(p)) => p,
        other => panic!("{other:?}"),
    };
    assert!(path.contains("/ep/"), "{path}");

    // Recovery writes exactly these bytes, and the rows go with the transaction.
    let m2 = dep.manager(CrashPoints::new(), quick_options());
    let report = m2.recover().await.expect("recover");
    assert_eq!(report.rolled_forward, vec![txn_id]);
    let written = dep
        .volume
        .read_all(&tern_storage::Path::from(path.as_str()))
        .await
        .expect("metadata file");
    assert_eq!(written.as_ref(), sealed.as_slice());
    // The file (sealed as it was encoded from the record) opens and lists the insert's file.
    let keys = dep.tables(&m2).file_keys(&t).await.expect("keys");
    let opened = tern_crypto::stream::decrypt_bytes(&path, keys.as_ref(), &written)
        .await
        .expect("opens");
    let file = tern_table::ep::MetadataFile::from_bytes(&opened, &path).expect("parses");
    assert_eq!((file.version, file.added.len()), (2, 1));
    let tern_table::ChangeRecord::TableVersion { added, .. } = &record.changes[0] else {
        panic!("{:?}", record.changes[0]);
    };
    assert_eq!(file.added[0].short, added[0].short);
    assert_eq!(
        m2.read_log(&dep.account, txn_id)
            .await
            .expect("log record")
            .to_bytes()
            .expect("encode"),
        plain
    );
    assert!(raw_under(&dep, &record_key).is_empty());
    assert!(raw_under(&dep, &staged).is_empty());
    assert_eq!(
        ids(&dep.tables(&m2), &t, None).await,
        vec![1, 2, 3, 100, 101, 102]
    );
}

/// A store written by an earlier build: the Prepared row holds its record (format 1) and
/// its metadata file is hex in JSON. Recovery reads both and rolls the transaction forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_transaction_stored_in_the_old_form_is_recovered() {
    let dep = Deployment::folder();
    let (t, handle, txn_id) = prepared_insert(&dep).await;
    let (row_key, record_key, staged, old_staged) = txn_keys(handle);
    let plain = raw_under(&dep, &record_key).pop().expect("record").1;
    let (file_key, sealed) = raw_under(&dep, &staged).pop().expect("file");
    let path = match file_key.elements().expect("key").pop() {
        Some(tern_meta::Element::Str(p)) => p,
        other => panic!("{other:?}"),
    };
    // Rewritten as the earlier build stored them.
    dep.meta
        .write(|tx| {
            // (An envelope starts with its version: written by hand, not as a JSON map.)
            let row = tx.raw().get(row_key.as_bytes())?.expect("row");
            let row: serde_json::Value = serde_json::from_slice(&row).expect("json");
            let mut d = row["d"].clone();
            let d = d.as_object_mut().expect("body");
            d.remove("stamps");
            d.insert(
                "record".into(),
                serde_json::from_slice(&plain).expect("record json"),
            );
            let v1 = format!(r#"{{"v":1,"d":{}}}"#, serde_json::Value::from(d.clone()));
            tx.raw().put(row_key.as_bytes(), v1.as_bytes())?;
            tx.raw().delete(record_key.as_bytes())?;
            tx.raw().delete(file_key.as_bytes())?;
            let old = format!(
                r#"{{"v":1,"d":{{"path":{},"sealed":"{}"}}}}"#,
                serde_json::Value::from(path.clone()),
                tern_crypto::to_hex(&sealed)
            );
            tx.raw()
                .put(old_staged.clone().str(&path).as_bytes(), old.as_bytes())
        })
        .expect("rewrite");

    let m2 = dep.manager(CrashPoints::new(), quick_options());
    let report = m2.recover().await.expect("recover");
    assert_eq!(report.rolled_forward, vec![txn_id], "{report:?}");
    let written = dep
        .volume
        .read_all(&tern_storage::Path::from(path.as_str()))
        .await
        .expect("metadata file");
    assert_eq!(written.as_ref(), sealed.as_slice());
    assert_eq!(
        m2.read_log(&dep.account, txn_id)
            .await
            .expect("log record")
            .to_bytes()
            .expect("encode"),
        plain
    );
    assert!(raw_under(&dep, &old_staged).is_empty());
    let row = String::from_utf8(raw_under(&dep, &row_key).pop().expect("row").1).expect("utf-8");
    assert!(
        row.starts_with(r#"{"v":2,"#) && row.contains(r#""state":"committed""#),
        "{row}"
    );
    assert_eq!(
        ids(&dep.tables(&m2), &t, None).await,
        vec![1, 2, 3, 100, 101, 102]
    );
}

/// Options under which every metadata file of a change that cannot move is written before
/// the prepare transaction (the threshold is 1 MiB by default: only large imports).
fn prewrite_all() -> tern_txn::TxnOptions {
    tern_txn::TxnOptions {
        prewrite_metadata_min_bytes: 0,
        ..quick_options()
    }
}

/// The metadata files of `t` in the volume.
async fn ep_files(dep: &Deployment, t: &TableId) -> Vec<String> {
    let prefix = tern_storage::layout::volume::ep_prefix(&dep.account, &dep.db, t);
    let mut out: Vec<String> = dep
        .volume
        .list_sorted(&prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    out.sort();
    out
}

/// A large metadata file of a change that cannot move (here a delete, with the
/// threshold at 0) is in the volume before the transaction is Prepared, and not kept in
/// the metadata store; recovery rolls the transaction forward without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_metadata_file_of_a_change_that_cannot_move_is_written_before_prepare() {
    let dep = Deployment::folder();
    let t = orders_with_a_version(&dep).await;
    let before = ep_files(&dep, &t).await;
    let crash = CrashPoints::new();
    let m1 = dep.manager(crash.clone(), prewrite_all());
    crash.arm("prepared", 1);
    let err = dep
        .tables(&m1)
        .delete(&t, &tern_table::Predicate::eq("id", 2i64))
        .await
        .expect_err("crashed");
    let txn_id = err.in_doubt_txn_id().expect("in doubt");
    drop(m1);
    let after = ep_files(&dep, &t).await;
    assert_eq!(after.len(), before.len() + 1, "written before Prepared");
    let staged = raw_under(&dep, &Key::root("txn").str("sb"));
    assert!(staged.is_empty(), "not kept in the metadata store");
    let m2 = dep.manager(CrashPoints::new(), quick_options());
    let report = m2.recover().await.expect("recover");
    assert_eq!(report.rolled_forward, vec![txn_id]);
    assert_eq!(ep_files(&dep, &t).await, after);
    assert_eq!(ids(&dep.tables(&m2), &t, None).await, vec![1, 3]);
    crate::common::check_invariants(&dep, &m2, std::slice::from_ref(&t)).await;
}

/// Refuses every statement (as a fenced primary would).
#[derive(Debug)]
struct Fenced;

impl tern_table::WriteFence for Fenced {
    fn check(
        &self,
        _tx: &mut tern_meta::MetaTxn<'_>,
        database: &tern_storage::layout::DatabaseId,
    ) -> tern_meta::Result<Result<u64, tern_table::Error>> {
        Ok(Err(tern_table::Error::ReadOnlyReplica {
            database: database.to_string(),
            group: "g".into(),
        }))
    }
}

/// A commit refused after its metadata file was written early removes the file: nothing
/// of it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_file_written_early_goes_when_the_commit_is_refused() {
    let dep = Deployment::folder();
    let t = orders_with_a_version(&dep).await;
    let before = ep_files(&dep, &t).await;
    let m1 = dep.manager(CrashPoints::new(), prewrite_all());
    m1.set_write_fence(std::sync::Arc::new(Fenced));
    let err = dep
        .tables(&m1)
        .delete(&t, &tern_table::Predicate::eq("id", 2i64))
        .await
        .expect_err("refused");
    assert!(err.in_doubt_txn_id().is_none(), "{err}");
    assert_eq!(ep_files(&dep, &t).await, before, "the early file is gone");
    assert_eq!(ids(&dep.tables(&m1), &t, None).await, vec![1, 2, 3]);
}
