//! A transaction commits whole or not at all; readers see snapshots.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tern_meta::{Error, MetaStore};

use crate::common::*;

on_both_backends!(
    failing_closure_leaves_previous_state,
    panicking_closure_leaves_previous_state,
    reads_are_snapshots_and_read_only
);

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
