//! A transaction commits whole or not at all; readers see snapshots.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tern_meta::{Error, MetaStore};

use crate::common::*;

on_both_backends!(
    failing_closure_leaves_previous_state,
    panicking_closure_leaves_previous_state,
    reads_are_snapshots_and_read_only,
    undone_writes_are_undone_and_earlier_ones_kept,
    a_prefix_is_deleted_whole_and_nothing_beside_it
);

/// `delete_prefix` removes every key extending the prefix (more than a scan batch of
/// them, values large or not) and nothing else: not the prefix's neighbours, not a key
/// that merely starts with the same characters; and not in a read transaction.
fn a_prefix_is_deleted_whole_and_nothing_beside_it(store: MetaStore) {
    use tern_meta::Key;
    let under = Key::root("t").str("f").u64(7);
    let keys: Vec<Key> = (0..600)
        .map(|i| under.clone().str(&format!("acct/a/file-{i}")))
        .collect();
    let beside = [
        Key::root("t").str("f").u64(6).str("x"),
        Key::root("t").str("f").u64(8),
        Key::root("t").str("f7"),
        Key::root("t").str("f"),
    ];
    store
        .write(|tx| {
            for (i, k) in keys.iter().chain(&beside).enumerate() {
                tx.raw().put(k.as_bytes(), &vec![b'x'; 1 + i % 3 * 4096])?;
            }
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        store.read(|tx| tx.delete_prefix(&under)),
        Err(Error::ReadOnly { .. })
    ));
    store.write(|tx| tx.delete_prefix(&under)).unwrap();
    store
        .read(|tx| {
            for k in &keys {
                assert_eq!(tx.raw().get(k.as_bytes())?, None, "{k}");
            }
            for k in &beside {
                assert!(tx.raw().get(k.as_bytes())?.is_some(), "{k}");
            }
            Ok(())
        })
        .unwrap();
}

/// (current version, active short names there, sequence `s`).
fn state(store: &MetaStore) -> (u64, Vec<String>, u64) {
    let t = tid("t1");
    let (version, seq) = store
        .read(|tx| {
            let version = tx.get_table(&t)?.map_or(0, |t| t.current_version);
            Ok((version, tx.current_sequence("s")?))
        })
        .unwrap();
    (version, active(store, &t, version), seq)
}

fn failing_closure_leaves_previous_state(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a"], &[]).unwrap();
    let before = state(&store);
    let err = store
        .write(|tx| {
            tx.next_sequence("s")?;
            tx.commit_table_version(
                &t,
                1,
                version_row(&t, 2),
                &[mp(&t, "b", 2)],
                &shorts(&["a"]),
            )?;
            tx.set_global_id("k", "g", "x")?;
            Err::<(), _>(Error::Invalid {
                what: "test",
                reason: "abort after writing".into(),
            })
        })
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { what: "test", .. }));
    assert_eq!(state(&store), before);
    assert!(store.read(|tx| tx.find_global("k", "g")).unwrap().is_none());
    // The store is usable afterwards.
    commit(&store, &t, 1, &["b"], &[]).unwrap();
}

fn panicking_closure_leaves_previous_state(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a"], &[]).unwrap();
    let before = state(&store);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        store.write(|tx| -> tern_meta::Result<()> {
            tx.next_sequence("s")?;
            tx.commit_table_version(&t, 1, version_row(&t, 2), &[mp(&t, "b", 2)], &[])?;
            panic!("boom inside a write transaction");
        })
    }));
    assert!(outcome.is_err(), "the panic propagates");
    assert_eq!(state(&store), before);
    // The writer (its mutex poisoned by the panic) is usable afterwards.
    commit(&store, &t, 1, &["b"], &[]).unwrap();
    assert_eq!(active(&store, &t, 2), ["a", "b"]);
}

fn reads_are_snapshots_and_read_only(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a"], &[]).unwrap();
    store
        .read(|tx| {
            let before = tx.get_table(&t)?.map(|t| t.current_version);
            // A commit lands while this read transaction is open…
            commit(&store, &t, 1, &["b"], &[])?;
            // …and stays invisible to it.
            assert_eq!(tx.get_table(&t)?.map(|t| t.current_version), before);
            assert!(tx.get_table_version(&t, 2)?.is_none());
            assert_eq!(tx.active_micro_partitions(&t, 1)?.len(), 1);
            let err = tx.next_sequence("s").unwrap_err();
            assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
            Ok(())
        })
        .unwrap();
    assert_eq!(active(&store, &t, 2), ["a", "b"]);
}

/// A check inside a transaction (`undone`) runs the code that would write, sees its own
/// writes while it runs, and leaves none behind — failing or not — while the writes made
/// before it in the same transaction commit.
fn undone_writes_are_undone_and_earlier_ones_kept(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a"], &[]).unwrap();
    let (checked, refused) = store
        .write(|tx| {
            tx.set_global_id("k", "before", "x")?;
            let checked = tx.undone(|tx| {
                tx.commit_table_version(
                    &t,
                    1,
                    version_row(&t, 2),
                    &[mp(&t, "b", 2)],
                    &shorts(&["a"]),
                )?;
                tx.set_global_id("k", "inside", "y")?;
                // Its own writes are visible to it.
                Ok(tx.find_global("k", "inside")?.is_some())
            })?;
            let refused = tx.undone(|tx| {
                tx.set_global_id("k", "failed", "z")?;
                Err::<(), _>(Error::Invalid {
                    what: "test",
                    reason: "refused after writing".into(),
                })
            })?;
            // Undone already, inside the transaction.
            assert!(tx.find_global("k", "inside")?.is_none());
            assert_eq!(tx.get_table(&t)?.map(|t| t.current_version), Some(1));
            Ok((checked, refused))
        })
        .unwrap();
    assert!(checked.unwrap(), "its own writes visible to it");
    assert!(matches!(refused, Err(Error::Invalid { what: "test", .. })));
    store
        .read(|tx| {
            assert!(
                tx.find_global("k", "before")?.is_some(),
                "earlier write kept"
            );
            assert!(tx.find_global("k", "inside")?.is_none());
            assert!(tx.find_global("k", "failed")?.is_none());
            assert_eq!(tx.get_table(&t)?.map(|t| t.current_version), Some(1));
            Ok(())
        })
        .unwrap();
    assert_eq!(active(&store, &t, 1), vec!["a".to_string()]);
}
