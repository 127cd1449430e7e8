//! The metadata cost of an operation does not grow with history: rows read (counted by a
//! [`CountingBackend`]) are the same after 10 commits and after 200.

use std::sync::Arc;

use tern_meta::{CountingBackend, Key, MemoryBackend, MetaStore, SqliteOptions};
use tern_storage::layout::TableId;

use crate::common::*;

fn counting_store() -> (MetaStore, Arc<CountingBackend>) {
    let counting = Arc::new(CountingBackend::new(Arc::new(MemoryBackend::new())));
    (MetaStore::new(counting.clone()), counting)
}

/// Rows read by the active set of `version`.
fn active_cost(store: &MetaStore, counting: &CountingBackend, t: &TableId, version: u64) -> u64 {
    let before = counting.counts();
    active(store, t, version);
    counting.counts().since(&before).rows_read()
}

/// Commit versions up to `to`: each adds a file and removes the one the previous commit
/// added, so the active set stays at three files while removed ones pile up.
fn replace_until(store: &MetaStore, t: &TableId, from: u64, to: u64) {
    for v in from..to {
        let add = format!("f{}", v + 1);
        let remove = if v == 1 {
            "c".to_string()
        } else {
            format!("f{v}")
        };
        commit(store, t, v, &[add.as_str()], &[remove.as_str()]).unwrap();
    }
}

#[test]
fn the_active_set_reads_only_active_files() {
    let (store, counting) = counting_store();
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a", "b", "c"], &[]).unwrap();
    replace_until(&store, &t, 1, 10);
    assert_eq!(active(&store, &t, 10), ["a", "b", "f10"]);
    assert_eq!(active(&store, &t, 9), ["a", "b", "f9"]);
    let current_10 = active_cost(&store, &counting, &t, 10);
    let past_10 = active_cost(&store, &counting, &t, 9);
    replace_until(&store, &t, 10, 200);
    assert_eq!(active(&store, &t, 200), ["a", "b", "f200"]);
    assert_eq!(active(&store, &t, 199), ["a", "b", "f199"]);
    assert_eq!(active(&store, &t, 1), ["a", "b", "c"]);
    let current_200 = active_cost(&store, &counting, &t, 200);
    let past_200 = active_cost(&store, &counting, &t, 199);
    assert_eq!(
        current_10, current_200,
        "the current active set read {current_10} rows after 10 commits, {current_200} after 200"
    );
    assert_eq!(
        past_10, past_200,
        "the previous version's active set read {past_10} rows after 10 commits, {past_200} after 200"
    );
}

/// A store written before the active rows existed (schema version 2) gets them from the
/// migration when it is opened.
#[test]
fn the_migration_indexes_the_active_files_of_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let t = {
        let store = MetaStore::open_sqlite(&path, SqliteOptions::default()).unwrap();
        let t = setup_table(&store, "t1");
        commit(&store, &t, 0, &["a", "b"], &[]).unwrap();
        commit(&store, &t, 1, &["c"], &["a"]).unwrap();
        // Back to what a version-2 store holds: no active rows.
        store
            .write(|tx| {
                for s in ["b", "c"] {
                    let k = Key::root("tbl").str(t.as_str()).str("mpa").str(s);
                    tx.raw().delete(k.as_bytes())?;
                }
                Ok(())
            })
            .unwrap();
        assert!(active(&store, &t, 2).is_empty(), "the active rows are gone");
        t
    };
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("UPDATE meta_schema SET version = 2", []).unwrap();
    drop(c);
    let store = MetaStore::open_sqlite(&path, SqliteOptions::default()).unwrap();
    assert_eq!(active(&store, &t, 2), ["b", "c"]);
    assert_eq!(active(&store, &t, 1), ["a", "b"]);
}
