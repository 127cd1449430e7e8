//! Golden stores: a deployment written by an older build (metadata store, key folder and
//! volume, checked in under `tests/golden/`) opens with this build and reads its rows.
//!
//! `pre-amk/` was written by [`write_pre_amk_fixture`] with the code before account master
//! keys (each TMK wrapped directly by the master key, `tmk:v1:` references). Regenerating
//! it needs that code (commit "Golden fixture of a store before account master keys"):
//!
//! ```text
//! TERN_GOLDEN_OUT=/tmp/pre-amk cargo test -p tern-table --test it \
//!     golden::write_pre_amk_fixture -- --ignored
//! ```

use std::path::Path;
use std::sync::Arc;

use tern_meta::{AccountDpo, DatabaseDpo};
use tern_storage::layout::{AccountId, DatabaseId, TableId};
use tern_table::account_key::{TmkRef, versions_in};
use tern_table::{Error, KEY_CHAIN_VERSION, Migration, Predicate, ScanRequest, TableOptions};

use crate::account_keys::objects;
use crate::fixture::{Fixture, columns, folder_volume, ids, rows};

const PRE_AMK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/pre-amk");

/// A private copy of the `pre-amk` fixture, opened (key files made private again: git
/// does not keep modes).
fn open_pre_amk() -> Fixture {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(Path::new(PRE_AMK), dir.path());
    let keys = dir.path().join("keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for f in ["gmk.key", "master.key"] {
        std::fs::set_permissions(keys.join(f), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let volume = folder_volume(dir.path());
    Fixture::open(volume, TableOptions::default(), dir, false)
}

fn table(id: &str) -> TableId {
    TableId::new(id).expect("id")
}

fn refs(f: &Fixture) -> Vec<Option<TmkRef>> {
    ["t1", "t2", "t3"]
        .iter()
        .map(|t| {
            let dpo = f
                .tables
                .meta()
                .read(|tx| tx.get_table(&table(t)))
                .expect("read")
                .expect("table");
            TmkRef::parse(&dpo.master_key_ref)
        })
        .collect()
}

/// The rows the fixture holds, read through `f`.
async fn assert_rows(f: &Fixture) {
    let scan = |t: &'static str, version: Option<u64>| {
        let tables = &f.tables;
        async move {
            let r = tables
                .scan(
                    &table(t),
                    &ScanRequest {
                        version,
                        ..ScanRequest::default()
                    },
                )
                .await
                .expect("scan");
            ids(&r.batches)
        }
    };
    let mut orders: Vec<i64> = (1..=20).collect();
    assert_eq!(
        scan("t1", Some(1)).await,
        orders,
        "orders before the delete"
    );
    orders.retain(|i| *i != 7);
    assert_eq!(scan("t1", None).await, orders);
    assert_eq!(scan("t2", None).await, (100..=105).collect::<Vec<_>>());
    assert_eq!(scan("t3", None).await, [1, 2, 3]);
}

#[tokio::test]
async fn a_store_from_before_account_keys_is_migrated_and_reads() {
    let f = open_pre_amk();
    let keys = f.tables.account_keys();
    assert_eq!(keys.chain_version().expect("chain"), 1);
    assert!(
        refs(&f)
            .iter()
            .all(|r| matches!(r, Some(TmkRef::Master(_)))),
        "the fixture holds TMKs under the master key"
    );
    let files = objects(&f.volume).await;

    let m = keys.migrate().await.expect("migrate");
    assert_eq!(
        m,
        Migration {
            accounts: 2,
            tables: 3
        }
    );
    assert_eq!(keys.chain_version().expect("chain"), KEY_CHAIN_VERSION);
    assert!(
        refs(&f)
            .iter()
            .all(|r| matches!(r, Some(TmkRef::Account { version: 1, .. }))),
        "{:?}",
        refs(&f)
    );
    for a in ["acme", "beta"] {
        let v = f
            .tables
            .meta()
            .read(|tx| versions_in(tx, &AccountId::new(a).expect("id")))
            .expect("versions");
        assert_eq!(v.len(), 1, "{a}");
    }
    // Opening again finds nothing to do.
    assert_eq!(keys.migrate().await.expect("again"), Migration::default());
    assert_rows(&f).await;
    let fresh = crate::account_keys::reopen(&f);
    assert_eq!(
        fresh.account_keys().migrate().await.expect("again"),
        Migration::default()
    );
    // No file was rewritten.
    assert_eq!(objects(&f.volume).await, files);
}

#[tokio::test]
async fn a_migration_interrupted_before_its_transaction_leaves_the_old_format() {
    let f = open_pre_amk();
    let before = refs(&f);
    let crash = f
        .tables
        .account_keys()
        .migrate_with(&mut || {
            Err(Error::BadInput {
                source_name: "crash point".into(),
                line: None,
                detail: "the process dies after the key-provider calls".into(),
            })
        })
        .await;
    assert!(crash.is_err());
    // Nothing of it was stored: the old format, still readable as such.
    assert_eq!(f.tables.account_keys().chain_version().expect("chain"), 1);
    assert_eq!(refs(&f), before);
    for a in ["acme", "beta"] {
        assert!(
            f.tables
                .meta()
                .read(|tx| versions_in(tx, &AccountId::new(a).expect("id")))
                .expect("versions")
                .is_empty()
        );
    }
    assert_rows(&f).await;
    // The next open migrates.
    let fresh = crate::account_keys::reopen(&f);
    let m = fresh.account_keys().migrate().await.expect("migrate");
    assert_eq!(
        m,
        Migration {
            accounts: 2,
            tables: 3
        }
    );
    let f2 = Fixture { tables: fresh, ..f };
    assert_rows(&f2).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Writes the `pre-amk` fixture into `$TERN_GOLDEN_OUT`: account `acme` with database
/// `sales` (tables `orders`: ids 1..=20 then id 7 deleted, and `items`: ids 100..=105),
/// account `beta` with database `ops` (table `events`: ids 1..=3).
#[tokio::test]
#[ignore = "writes a fixture; run by hand with the old code"]
async fn write_pre_amk_fixture() {
    let out = std::env::var("TERN_GOLDEN_OUT").expect("TERN_GOLDEN_OUT");
    let dir = tempfile::tempdir().expect("dir");
    let volume = folder_volume(dir.path());
    let f = Fixture::open(Arc::clone(&volume), TableOptions::default(), dir, true);
    let orders = f.create("orders").await;
    f.tables
        .insert(&orders, &[rows(&(1..=20).collect::<Vec<_>>())])
        .await
        .expect("insert");
    f.tables
        .delete(&orders, &Predicate::eq("id", 7i64))
        .await
        .expect("delete");
    let items = f.create("items").await;
    f.tables
        .insert(&items, &[rows(&(100..=105).collect::<Vec<_>>())])
        .await
        .expect("insert");
    let beta = AccountId::new("beta").expect("id");
    let ops = DatabaseId::new("db2").expect("id");
    f.tables
        .meta()
        .write(|tx| {
            tx.create_account(&AccountDpo::local(beta.clone(), 0))?;
            tx.create_database(&DatabaseDpo::local(ops.clone(), beta.clone(), "ops", 0))
        })
        .expect("account beta");
    f.tables
        .create_schema(&ops, "public")
        .await
        .expect("schema");
    let events = f
        .tables
        .create_table(&ops, "public", "events", columns())
        .await
        .expect("table");
    f.tables
        .insert(&events, &[rows(&[1, 2, 3])])
        .await
        .expect("insert");
    let Fixture { tables, dir, .. } = f;
    drop(tables);
    let root = dir.path().to_owned();
    let out = Path::new(&out);
    std::fs::create_dir_all(out).expect("out");
    for name in ["meta.db", "meta.db-wal"] {
        if root.join(name).exists() {
            std::fs::copy(root.join(name), out.join(name)).expect("copy the store");
        }
    }
    copy_dir(&root.join("keys"), &out.join("keys"));
    copy_dir(&root.join("volume"), &out.join("volume"));
}
