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
use tern_storage::layout::{AccountId, DatabaseId};
use tern_table::{Predicate, TableOptions};

use crate::fixture::{Fixture, columns, folder_volume, rows};

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
