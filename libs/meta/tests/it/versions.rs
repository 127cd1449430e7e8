//! Table version commits, the micro-partition index, rollback, retention and vacuum.

use tern_meta::{ColumnDef, ColumnType, Error, MetaStore};
use tern_storage::layout::{DeploymentId, GlobalFileRef, TableId};

use crate::common::*;

on_both_backends!(
    commits_and_active_sets,
    commit_errors_change_nothing,
    rollback,
    retention_and_vacuum,
    retired_rows_keep_what_replay_needs,
    schema_changes_follow_versions
);

fn commits_and_active_sets(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a", "b"], &[]).unwrap();
    commit(&store, &t, 1, &["c"], &["a"]).unwrap();
    commit(&store, &t, 2, &["d", "e"], &["b", "c"]).unwrap();

    assert!(active(&store, &t, 0).is_empty());
    assert_eq!(active(&store, &t, 1), ["a", "b"]);
    assert_eq!(active(&store, &t, 2), ["b", "c"]);
    assert_eq!(active(&store, &t, 3), ["d", "e"]);
    // The names alone, in the same order (an older version's removed-later files sorted
    // in among the active rows).
    for v in 0..=3 {
        let names: Vec<String> = store
            .read(|tx| tx.active_short_names(&t, v))
            .unwrap()
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        assert_eq!(names, active(&store, &t, v), "version {v}");
    }
    assert!(store.read(|tx| tx.active_short_names(&t, 4)).is_err());
    let err = store
        .read(|tx| tx.active_micro_partitions(&t, 4))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "table version",
                ..
            }
        ),
        "{err}"
    );

    let table = store.read(|tx| tx.get_table(&t)).unwrap().unwrap();
    assert_eq!(table.current_version, 3);

    // Version rows hold their own EP file and what the commit added and removed; the list
    // of version N is derived.
    let v3 = store
        .read(|tx| tx.get_table_version(&t, 3))
        .unwrap()
        .unwrap();
    assert_eq!(v3.added, shorts(&["d", "e"]));
    assert_eq!(v3.removed, shorts(&["b", "c"]));
    let seqs: Vec<u64> = store
        .read(|tx| tx.ep_files_at(&t, 2))
        .unwrap()
        .into_iter()
        .map(|f| f.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(store.read(|tx| tx.ep_files_at(&t, 3)).unwrap().len(), 3);
    assert_eq!(store.read(|tx| tx.table_versions(&t)).unwrap().len(), 4);

    // Lookups by short name and by global reference.
    let a = store
        .read(|tx| tx.get_micro_partition(&t, &short("a")))
        .unwrap()
        .unwrap();
    assert_eq!((a.added_version, a.removed_version), (1, Some(2)));
    let gref = GlobalFileRef::new(DeploymentId::new("d1").unwrap(), short("d"));
    let d = store
        .read(|tx| tx.find_micro_partition(&t, &gref))
        .unwrap()
        .unwrap();
    assert_eq!((d.short, d.added_version), (short("d"), 3));
    let unknown = GlobalFileRef::new(DeploymentId::new("d2").unwrap(), short("d"));
    assert!(
        store
            .read(|tx| tx.find_micro_partition(&t, &unknown))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.read(|tx| tx.list_micro_partitions(&t)).unwrap().len(),
        5
    );

    // Compare-and-swap on the current version.
    let err = commit(&store, &t, 2, &["x"], &[]).unwrap_err();
    assert!(
        matches!(&err, Error::VersionConflict { table, expected: 2, found: 3 } if *table == t),
        "{err}"
    );
    assert!(err.is_conflict());
}

/// Like `commit`, but the surrounding transaction commits even when the table commit
/// fails: a typed error must have written nothing.
fn commit_swallowed(
    store: &MetaStore,
    table: &TableId,
    expected: u64,
    add: &[&str],
    remove: &[&str],
) -> tern_meta::Result<()> {
    let v = expected + 1;
    let adds: Vec<_> = add.iter().map(|n| mp(table, n, v)).collect();
    let removes = shorts(remove);
    store
        .write(|tx| {
            Ok(tx.commit_table_version(table, expected, version_row(table, v), &adds, &removes))
        })
        .unwrap()
}

fn commit_errors_change_nothing(store: MetaStore) {
    let t = setup_table(&store, "t1");
    let t2 = setup_table(&store, "t2");
    commit(&store, &t, 0, &["a", "b"], &[]).unwrap();
    commit(&store, &t, 1, &[], &["a"]).unwrap();

    let check_unchanged = || {
        assert_eq!(
            store
                .read(|tx| tx.get_table(&t))
                .unwrap()
                .unwrap()
                .current_version,
            2
        );
        assert_eq!(active(&store, &t, 2), ["b"]);
        assert!(
            store
                .read(|tx| tx.get_table_version(&t, 3))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .read(|tx| tx.get_micro_partition(&t, &short("new")))
                .unwrap()
                .is_none()
        );
    };

    // Removing an unknown or an already removed micro-partition.
    for gone in ["zz", "a"] {
        let err = commit_swallowed(&store, &t, 2, &["new"], &[gone]).unwrap_err();
        assert!(
            matches!(&err, Error::NotFound { what: "micro-partition", name } if *name == format!("t1/{gone}")),
            "{err}"
        );
        check_unchanged();
    }
    // Adding a short name that exists (even removed), or twice in one commit.
    for add in [&["new", "a"][..], &["new", "new"]] {
        let err = commit_swallowed(&store, &t, 2, add, &[]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::AlreadyExists {
                    what: "micro-partition",
                    ..
                }
            ),
            "{err}"
        );
        check_unchanged();
    }
    // A valid removal next to an invalid addition, or the same removal twice.
    let err = commit_swallowed(&store, &t, 2, &["a"], &["b"]).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    check_unchanged();
    let err = commit_swallowed(&store, &t, 2, &[], &["b", "b"]).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    check_unchanged();
    // Global references are unique per table: another table may hold the same one (a
    // replica made local beside a new replica of the same group).
    commit(&store, &t2, 0, &["g"], &[]).unwrap();
    let gref = GlobalFileRef::new(DeploymentId::new("d1").unwrap(), short("g"));
    assert!(
        store
            .read(|tx| tx.find_micro_partition(&t, &gref))
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .read(|tx| tx.find_micro_partition(&t2, &gref))
            .unwrap()
            .is_some()
    );
    check_unchanged();

    // Malformed requests.
    let bad_row = store
        .write(|tx| tx.commit_table_version(&t, 2, version_row(&t, 7), &[mp(&t, "new", 3)], &[]));
    assert!(matches!(bad_row, Err(Error::Invalid { .. })), "{bad_row:?}");
    let bad_mp = store
        .write(|tx| tx.commit_table_version(&t, 2, version_row(&t, 3), &[mp(&t, "new", 2)], &[]));
    assert!(matches!(bad_mp, Err(Error::Invalid { .. })), "{bad_mp:?}");
    check_unchanged();

    // Unknown and dropped tables.
    let err = commit(&store, &tid("nope"), 0, &["new"], &[]).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { what: "table", .. }),
        "{err}"
    );
    store.write(|tx| tx.drop_table(&t2)).unwrap();
    let err = commit(&store, &t2, 1, &["new"], &[]).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { what: "table", .. }),
        "{err}"
    );
}

fn rollback(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a", "b"], &[]).unwrap();
    commit(&store, &t, 1, &["c"], &["a"]).unwrap();
    commit(&store, &t, 2, &["d"], &["b", "c"]).unwrap();
    commit(&store, &t, 3, &["e"], &["d"]).unwrap();
    let before: Vec<Vec<String>> = (0..=4).map(|v| active(&store, &t, v)).collect();

    // Nothing to undo at the current version.
    let none = store.write(|tx| tx.rollback_table_to(&t, 4)).unwrap();
    assert!(none.versions.is_empty() && none.deleted.is_empty() && none.restored.is_empty());
    let err = store.write(|tx| tx.rollback_table_to(&t, 5)).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");

    let undone = store.write(|tx| tx.rollback_table_to(&t, 1)).unwrap();
    let vs: Vec<u64> = undone.versions.iter().map(|v| v.version).collect();
    assert_eq!(vs, [4, 3, 2]);
    let mut deleted: Vec<String> = undone.deleted.iter().map(|m| m.short.to_string()).collect();
    deleted.sort();
    assert_eq!(deleted, ["c", "d", "e"]); // added after 1 (c also removed after 1)
    assert_eq!(undone.restored, shorts(&["a", "b"]));

    assert_eq!(
        store
            .read(|tx| tx.get_table(&t))
            .unwrap()
            .unwrap()
            .current_version,
        1
    );
    assert_eq!(active(&store, &t, 1), before[1]);
    assert_eq!(active(&store, &t, 0), before[0]);
    assert!(
        store
            .read(|tx| tx.get_table_version(&t, 2))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.read(|tx| tx.list_micro_partitions(&t)).unwrap().len(),
        2
    );
    let gref = GlobalFileRef::new(DeploymentId::new("d1").unwrap(), short("d"));
    assert!(
        store
            .read(|tx| tx.find_micro_partition(&t, &gref))
            .unwrap()
            .is_none()
    );

    // The table continues at 2; names of deleted files can be reused.
    commit(&store, &t, 1, &["d"], &["a"]).unwrap();
    assert_eq!(active(&store, &t, 2), ["b", "d"]);
    let err = commit(&store, &t, 1, &["x"], &[]).unwrap_err();
    assert!(
        matches!(err, Error::VersionConflict { found: 2, .. }),
        "{err}"
    );
}

fn retention_and_vacuum(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a", "b"], &[]).unwrap();
    commit(&store, &t, 1, &["c"], &["a"]).unwrap();
    commit(&store, &t, 2, &["d"], &["b"]).unwrap();
    commit(&store, &t, 3, &["e"], &["c"]).unwrap();
    assert_eq!(store.read(|tx| tx.oldest_retained_version(&t)).unwrap(), 0);
    assert!(
        store
            .read(|tx| tx.unreferenced_micro_partitions(&t))
            .unwrap()
            .is_empty()
    );

    let dropped = store.write(|tx| tx.drop_versions_before(&t, 3)).unwrap();
    let vs: Vec<u64> = dropped.iter().map(|v| v.version).collect();
    assert_eq!(vs, [0, 1, 2]);
    assert_eq!(store.read(|tx| tx.oldest_retained_version(&t)).unwrap(), 3);
    assert_eq!(active(&store, &t, 3), ["c", "d"]);
    for v in [0, 2] {
        let err = store
            .read(|tx| tx.active_micro_partitions(&t, v))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotFound {
                    what: "table version",
                    ..
                }
            ),
            "{err}"
        );
    }
    assert!(matches!(
        store.write(|tx| tx.rollback_table_to(&t, 2)),
        Err(Error::NotFound { .. })
    ));
    // The dropped rows' metadata files are still listed: version 3 is rebuilt from them
    // (c, active at 3, was added by commit 2). Commit 1's file is no longer needed (a and b
    // are removed at or before 3), commit 2's is.
    assert_eq!(ep_seqs(&store, &t, 4), [1, 2, 3, 4]);
    assert_eq!(releasable(&store, &t), [1]);
    let err = store
        .write(|tx| tx.forget_retired_versions(&t, &[1, 2]))
        .unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    let err = store
        .write(|tx| tx.forget_retired_versions(&t, &[3]))
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    store
        .write(|tx| tx.forget_retired_versions(&t, &[1]))
        .unwrap();
    assert_eq!(ep_seqs(&store, &t, 4), [2, 3, 4]);

    // a (removed at 2) and b (removed at 3) are referenced by no retained version; c
    // (removed at 4) still is, by version 3.
    let mut unref: Vec<String> = store
        .read(|tx| tx.unreferenced_micro_partitions(&t))
        .unwrap()
        .into_iter()
        .map(|m| m.short.to_string())
        .collect();
    unref.sort();
    assert_eq!(unref, ["a", "b"]);
    let err = store
        .write(|tx| tx.forget_micro_partitions(&t, &shorts(&["a", "c"])))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InUse {
                what: "micro-partition",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.read(|tx| tx.list_micro_partitions(&t)).unwrap().len(),
        5
    );
    store
        .write(|tx| tx.forget_micro_partitions(&t, &shorts(&["a", "b"])))
        .unwrap();
    assert_eq!(
        store.read(|tx| tx.list_micro_partitions(&t)).unwrap().len(),
        3
    );
    let gref = GlobalFileRef::new(DeploymentId::new("d1").unwrap(), short("a"));
    assert!(
        store
            .read(|tx| tx.find_micro_partition(&t, &gref))
            .unwrap()
            .is_none()
    );

    // Dropping up to the current version keeps the current one.
    store.write(|tx| tx.drop_versions_before(&t, 4)).unwrap();
    assert_eq!(active(&store, &t, 4), ["d", "e"]);
    assert_eq!(releasable(&store, &t), [2]);
    assert!(matches!(
        store.write(|tx| tx.drop_versions_before(&t, 5)),
        Err(Error::NotFound { .. })
    ));
}

fn ep_seqs(store: &MetaStore, t: &TableId, version: u64) -> Vec<u64> {
    store
        .read(|tx| tx.ep_files_at(t, version))
        .unwrap()
        .into_iter()
        .map(|f| f.seq)
        .collect()
}

fn releasable(store: &MetaStore, t: &TableId) -> Vec<u64> {
    store
        .read(|tx| tx.releasable_retired_versions(t))
        .unwrap()
        .into_iter()
        .map(|v| v.version)
        .collect()
}

/// A retired commit that only removed files is kept while the commit that added them is:
/// replaying without it would bring a removed file back.
fn retired_rows_keep_what_replay_needs(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a", "b"], &[]).unwrap();
    commit(&store, &t, 1, &[], &["a"]).unwrap();
    commit(&store, &t, 2, &["c"], &[]).unwrap();
    store.write(|tx| tx.drop_versions_before(&t, 3)).unwrap();
    // b (added by 1) is active at 3, so 1 stays; 2 removed a, which 1 adds.
    assert!(releasable(&store, &t).is_empty());
    assert_eq!(ep_seqs(&store, &t, 3), [1, 2, 3]);

    commit(&store, &t, 3, &[], &["b"]).unwrap();
    store.write(|tx| tx.drop_versions_before(&t, 4)).unwrap();
    // Nothing 1 or 2 added is active at 4 any more; 3 added c, which still is.
    assert_eq!(releasable(&store, &t), [1, 2]);
    store
        .write(|tx| tx.forget_retired_versions(&t, &[1, 2]))
        .unwrap();
    assert_eq!(ep_seqs(&store, &t, 4), [3, 4]);
    assert_eq!(
        store
            .read(|tx| tx.retired_versions(&t))
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [3]
    );
}

fn schema_changes_follow_versions(store: MetaStore) {
    let t = setup_table(&store, "t1");
    commit(&store, &t, 0, &["a"], &[]).unwrap();
    let mut row = version_row(&t, 2);
    row.columns.push(ColumnDef {
        name: "note".into(),
        ty: ColumnType::Utf8,
        nullable: true,
    });
    let wider = row.columns.clone();
    store
        .write(|tx| tx.commit_table_version(&t, 1, row.clone(), &[], &[]))
        .unwrap();
    assert_eq!(
        store.read(|tx| tx.get_table(&t)).unwrap().unwrap().columns,
        wider
    );
    assert_eq!(
        store
            .read(|tx| tx.get_table_version(&t, 1))
            .unwrap()
            .unwrap()
            .columns,
        columns()
    );

    // A later commit computed from the older columns cannot undo the added column.
    let narrow = version_row(&t, 3);
    let err = store
        .write(|tx| tx.commit_table_version(&t, 2, narrow.clone(), &[], &[]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::ColumnsConflict { current: 2, version: 3, missing, .. } if missing == &["note".to_string()]),
        "{err}"
    );
    let table = store.read(|tx| tx.get_table(&t)).unwrap().unwrap();
    assert_eq!((table.current_version, &table.columns), (2, &wider));

    store.write(|tx| tx.rollback_table_to(&t, 1)).unwrap();
    assert_eq!(
        store.read(|tx| tx.get_table(&t)).unwrap().unwrap().columns,
        columns()
    );
}
