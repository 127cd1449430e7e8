//! Account master keys: table keys under the account's key, crypto-shredding on account
//! drop, rotation without rewriting files.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_meta::TableDpo;
use tern_storage::layout::{AccountId, DeploymentId};
use tern_storage::{ObjectStore, Path, StoreExt as _};
use tern_table::account_key::{TmkRef, versions_in};
use tern_table::commit::{ChangeRecord, DictionaryOp, publish};
use tern_table::{Error, LocalCommitter, ScanRequest, TableOptions, Tables};

use crate::fixture::{Fixture, columns, folder_volume, ids, rows};

/// Every object of the volume: path → (bytes, etag).
pub(crate) async fn objects(
    volume: &Arc<dyn ObjectStore>,
) -> BTreeMap<String, (Vec<u8>, Option<String>)> {
    let metas: Vec<_> = volume.list(None).try_collect().await.expect("list");
    let mut out = BTreeMap::new();
    for m in metas {
        let bytes = volume.read_all(&m.location).await.expect("read");
        out.insert(m.location.to_string(), (bytes.to_vec(), m.e_tag));
    }
    out
}

/// Tables over `f`'s stores with empty key caches (another process, or a restart).
pub(crate) fn reopen(f: &Fixture) -> Tables {
    let d1 = DeploymentId::new("d1").expect("id");
    Tables::new(
        d1.clone(),
        Arc::clone(&f.volume),
        f.tables.meta().clone(),
        Arc::new(
            LocalKeyProvider::open(&f.dir.path().join("keys"), SystemRandom::shared())
                .expect("keys"),
        ),
        f.clock.shared(),
        TableOptions::default(),
        Arc::new(LocalCommitter::new(
            d1,
            f.tables.meta().clone(),
            Arc::clone(&f.volume),
            f.clock.shared(),
        )),
    )
}

fn acme() -> AccountId {
    AccountId::new("acme").expect("id")
}

/// Decrypts every file of `table` in `volume` with keys unwrapped from the metadata
/// store now (no cache).
async fn decrypt_all(tables: &Tables, table: &TableDpo, paths: &[String]) -> Result<(), Error> {
    let keys = tables.file_keys_uncached(table).await?;
    for p in paths {
        tern_crypto::get_decrypted(tables.volume(), &Path::from(p.as_str()), &keys).await?;
    }
    Ok(())
}

#[tokio::test]
async fn table_keys_are_wrapped_by_the_account_key() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("orders").await;
    let dpo = f.tables.table(&t).expect("table");
    match TmkRef::parse(&dpo.master_key_ref) {
        Some(TmkRef::Account { version: 1, .. }) => {}
        other => panic!("expected a TMK under AMK version 1, got {other:?}"),
    }
    let v = f
        .tables
        .meta()
        .read(|tx| versions_in(tx, &acme()))
        .expect("versions");
    assert_eq!(v.len(), 1);
    assert!(v[0].wrapped.is_some());
    assert_eq!(
        f.tables.account_keys().create(&acme()).await.expect("amk"),
        1
    );
}

#[tokio::test]
async fn dropping_an_account_shreds_its_files() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("orders").await;
    f.tables
        .insert(&t, &[rows(&[1, 2, 3])])
        .await
        .expect("insert");
    let dpo = f.tables.table(&t).expect("table");
    let before = objects(&f.volume).await;
    let paths: Vec<String> = before.keys().cloned().collect();
    assert!(paths.iter().any(|p| p.ends_with(".mp")), "{paths:?}");
    // Before the drop the raw files open, from this process and from a fresh one.
    decrypt_all(&f.tables, &dpo, &paths)
        .await
        .expect("readable before the drop");
    decrypt_all(&reopen(&f), &dpo, &paths)
        .await
        .expect("readable before the drop, uncached");

    let destroyed = f
        .tables
        .drop_account(&acme(), &|_| Ok(()))
        .await
        .expect("drop account");
    assert_eq!(destroyed, 1);

    // The files are still in the bucket, byte for byte, and the table's wrapped key is
    // still in the metadata store: only the account key is gone.
    assert_eq!(objects(&f.volume).await, before);
    let dropped_dpo = f
        .tables
        .meta()
        .read(|tx| tx.get_table(&t))
        .expect("read")
        .expect("the table row stays");
    assert_eq!(dropped_dpo.master_key_ref, dpo.master_key_ref);
    for tables in [&f.tables, &reopen(&f)] {
        match decrypt_all(tables, &dpo, &paths).await {
            Err(Error::AccountKeyDestroyed { account, version }) => {
                assert_eq!((account, version), (acme(), 1));
            }
            other => panic!("expected AccountKeyDestroyed, got {other:?}"),
        }
    }
    let e = decrypt_all(&f.tables, &dpo, &paths).await.unwrap_err();
    assert!(e.to_string().contains("destroyed"), "{e}");
    let tombstones = f
        .tables
        .meta()
        .read(|tx| versions_in(tx, &acme()))
        .expect("versions");
    assert_eq!(tombstones.len(), 1);
    assert!(tombstones[0].wrapped.is_none(), "{tombstones:?}");
    assert!(
        f.tables
            .meta()
            .read(|tx| tx.get_account(&acme()))
            .expect("read")
            .is_none()
    );
    assert!(f.tables.scan(&t, &ScanRequest::default()).await.is_err());

    // An account re-created under the name gets a new key version: the old table keys
    // still name the destroyed one, and its rotations pass over them.
    f.tables
        .meta()
        .write(|tx| tx.create_account(&tern_meta::AccountDpo::local(acme(), 1)))
        .expect("re-create");
    assert_eq!(
        f.tables.account_keys().create(&acme()).await.expect("amk"),
        2
    );
    assert!(matches!(
        decrypt_all(&reopen(&f), &dpo, &paths).await,
        Err(Error::AccountKeyDestroyed { version: 1, .. })
    ));
    let r = f.tables.rotate_account_key(&acme()).await.expect("rotate");
    assert_eq!((r.version, r.retired, r.tables), (3, vec![2], 0));
}

#[tokio::test]
async fn rotation_rewraps_table_keys_and_rewrites_no_file() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let orders = f.create("orders").await;
    let gone = f.create("gone").await;
    f.tables
        .insert(&orders, &[rows(&[1, 2, 3])])
        .await
        .expect("insert");
    f.tables.insert(&gone, &[rows(&[9])]).await.expect("insert");
    f.tables.drop_table(&gone).await.expect("drop table");
    let gone_before = f
        .tables
        .meta()
        .read(|tx| tx.get_table(&gone))
        .expect("read")
        .expect("row");
    let orders_before = f.tables.table(&orders).expect("table");
    let before = objects(&f.volume).await;

    let r = f.tables.rotate_account_key(&acme()).await.expect("rotate");
    assert_eq!((r.version, r.retired.clone(), r.tables), (2, vec![1], 2));

    // Metadata only: every file has the same bytes and etag.
    assert_eq!(objects(&f.volume).await, before);
    for t in [&orders, &gone] {
        let dpo = f
            .tables
            .meta()
            .read(|tx| tx.get_table(t))
            .expect("read")
            .expect("row");
        assert!(
            matches!(
                TmkRef::parse(&dpo.master_key_ref),
                Some(TmkRef::Account { version: 2, .. })
            ),
            "{t}: {}",
            dpo.master_key_ref
        );
    }
    let v = f
        .tables
        .meta()
        .read(|tx| versions_in(tx, &acme()))
        .expect("versions");
    assert_eq!(v.iter().map(|r| r.version).collect::<Vec<_>>(), [1, 2]);
    assert!(
        v[0].wrapped.is_none() && v[0].retired_at_ms.is_some(),
        "{v:?}"
    );
    assert!(v[1].wrapped.is_some());

    // Reads across the rotation: cached keys here, re-unwrapped keys in a fresh process,
    // and the dropped table's files too.
    let fresh = reopen(&f);
    for tables in [&f.tables, &fresh] {
        let got = tables
            .scan(&orders, &ScanRequest::default())
            .await
            .expect("scan");
        assert_eq!(ids(&got.batches), [1, 2, 3]);
    }
    let gone_now = f
        .tables
        .meta()
        .read(|tx| tx.get_table(&gone))
        .expect("read")
        .expect("row");
    let gone_paths: Vec<String> = before
        .keys()
        .filter(|p| p.contains(&format!("/tbl/{gone}/")))
        .cloned()
        .collect();
    assert!(!gone_paths.is_empty());
    decrypt_all(&fresh, &gone_now, &gone_paths)
        .await
        .expect("dropped table still readable");
    // The retired version is gone: the references it wrapped no longer open.
    for old in [&orders_before, &gone_before] {
        assert!(matches!(
            fresh.file_keys_uncached(old).await,
            Err(Error::AccountKeyDestroyed { version: 1, .. })
        ));
    }

    // Writes go on under the new version, and the account rotates again.
    fresh
        .insert(&orders, &[rows(&[4])])
        .await
        .expect("insert after rotation");
    let t3 = fresh
        .create_table(&f.db, "public", "later", columns())
        .await
        .expect("create after rotation");
    assert!(matches!(
        TmkRef::parse(&fresh.table(&t3).expect("t3").master_key_ref),
        Some(TmkRef::Account { version: 2, .. })
    ));
    let r = f.tables.rotate_account_key(&acme()).await.expect("rotate");
    assert_eq!((r.version, r.retired, r.tables), (3, vec![2], 3));
    let got = reopen(&f)
        .scan(&orders, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&got.batches), [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_table_keyed_under_a_retired_version_is_not_published() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    f.create("orders").await;
    // A table definition made before the rotation, committed after it.
    let id = tern_storage::layout::TableId::new("t99").expect("id");
    let late = f
        .tables
        .new_table(&acme(), &f.db, id, "public", "late", columns())
        .await
        .expect("definition");
    f.tables.rotate_account_key(&acme()).await.expect("rotate");
    let record = ChangeRecord::Dictionary {
        database: f.db.clone(),
        op: DictionaryOp::CreateTable(late),
    };
    let d1 = DeploymentId::new("d1").expect("id");
    let e = f
        .tables
        .meta()
        .write(|tx| publish(tx, &record, None, &d1, 0))
        .expect_err("its key is wrapped by a retired version");
    assert!(e.to_string().contains("active account master key"), "{e}");
}
