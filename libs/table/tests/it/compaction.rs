//! Compaction: small files merged as a commit that keeps every row, with history intact,
//! and refused (typed conflict) when a writer removed one of its inputs meanwhile.

use futures::TryStreamExt as _;
use tern_meta::{ColumnDef, ColumnType, Scalar};
use tern_storage::ObjectStore;
use tern_storage::layout::TableId;
use tern_table::{CompactionOptions, Error, Predicate, ScanRequest, TableOptions};

use crate::fixture::{Fixture, folder_volume, ids, rows};

fn options() -> CompactionOptions {
    CompactionOptions {
        min_files: 4,
        max_files: 1000,
        ..CompactionOptions::default()
    }
}

async fn one_row_inserts(f: &Fixture, t: &TableId, ids: std::ops::Range<i64>) {
    for i in ids {
        f.tables.insert(t, &[rows(&[i])]).await.expect("insert");
    }
}

async fn scan_at(f: &Fixture, t: &TableId, version: Option<u64>) -> (Vec<i64>, usize) {
    let r = f
        .tables
        .scan(
            t,
            &ScanRequest {
                version,
                ..Default::default()
            },
        )
        .await
        .expect("scan");
    (ids(&r.batches), r.files_total)
}

/// Every row of a scan rendered as text, sorted (all columns compared, not just ids).
async fn rendered(f: &Fixture, t: &TableId, version: Option<u64>) -> Vec<String> {
    let r = f
        .tables
        .scan(
            t,
            &ScanRequest {
                version,
                ..Default::default()
            },
        )
        .await
        .expect("scan");
    let mut out = Vec::new();
    for b in &r.batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = (0..b.num_columns())
                .map(|c| arrow::util::display::array_value_to_string(b.column(c), i).expect("cell"))
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

async fn mp_objects(volume: &std::sync::Arc<dyn ObjectStore>) -> usize {
    volume
        .list(None)
        .try_filter(|m| std::future::ready(m.location.as_ref().ends_with(".mp")))
        .try_collect::<Vec<_>>()
        .await
        .expect("list")
        .len()
}

#[tokio::test]
async fn two_hundred_one_row_inserts_become_one_file_with_the_same_rows_and_history() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("small").await;
    one_row_inserts(&f, &t, 0..200).await;
    let before_version = f.tables.table(&t).expect("table").current_version;
    let before = rendered(&f, &t, None).await;
    let (before_ids, before_files) = scan_at(&f, &t, None).await;
    assert_eq!(before_ids, (0..200).collect::<Vec<_>>());
    assert_eq!(before_files, 200);

    let info = f.tables.compact(&t, &options()).await.expect("compact");
    assert!(info.committed, "{info:?}");
    assert_eq!(info.version, before_version + 1);
    assert_eq!((info.files_removed, info.files_added), (200, 1));
    assert_eq!(info.rows_affected, 0, "compaction changes no row");

    let (after_ids, after_files) = scan_at(&f, &t, None).await;
    assert_eq!(after_ids, before_ids);
    assert!(after_files <= 2, "{after_files} files after compaction");
    assert_eq!(rendered(&f, &t, None).await, before, "every column kept");

    // The merged file's statistics cover exactly its rows.
    let active = f
        .tables
        .meta()
        .read(|tx| tx.active_micro_partitions(&t, info.version))
        .expect("active");
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].rows, 200);
    let id = active[0]
        .stats
        .iter()
        .find(|s| s.column == "id")
        .expect("id");
    assert_eq!(
        (id.min.clone(), id.max.clone(), id.null_count),
        (Some(Scalar::Int64(0)), Some(Scalar::Int64(199)), 0)
    );
    let name = active[0]
        .stats
        .iter()
        .find(|s| s.column == "name")
        .expect("name");
    // Every 7th name is null (ids 0, 7, …, 196).
    assert_eq!(name.null_count, 29);

    // History: the versions before still read the small files, row for row.
    let (old_ids, old_files) = scan_at(&f, &t, Some(before_version)).await;
    assert_eq!((old_ids, old_files), (before_ids.clone(), 200));
    assert_eq!(rendered(&f, &t, Some(before_version)).await, before);
    let (half, _) = scan_at(&f, &t, Some(before_version - 100)).await;
    assert_eq!(half, (0..100).collect::<Vec<_>>());
    // The inputs stay in the volume: vacuum deletes them when no retained version needs
    // them, compaction never does.
    assert_eq!(mp_objects(&f.volume).await, 201);

    // Nothing left to do: fewer small files than min_files.
    let again = f.tables.compact(&t, &options()).await.expect("compact");
    assert!(!again.committed);
    assert_eq!(again.version, info.version);
}

#[tokio::test]
async fn a_compaction_whose_input_was_deleted_meanwhile_is_refused_and_retried() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("race").await;
    one_row_inserts(&f, &t, 0..20).await;
    let staged = f
        .tables
        .stage_compaction(&t, &options())
        .await
        .expect("stage")
        .expect("enough small files");
    assert_eq!((staged.inputs, staged.outputs, staged.rows), (20, 1, 20));
    let v = staged.base_version;
    // A delete of a row in one of the inputs commits first.
    let deleted = f
        .tables
        .delete(&t, &Predicate::eq("id", 5i64))
        .await
        .expect("delete");
    assert_eq!((deleted.version, deleted.rows_affected), (v + 1, 1));

    let e = f
        .tables
        .commit_compaction(staged)
        .await
        .expect_err("an input is gone");
    assert!(e.is_conflict(), "{e}");
    assert!(
        matches!(e, Error::Conflict { read, found, .. } if read == v && found == v + 1),
        "{e}"
    );
    // Nothing of the compaction is visible, and its merged file was removed.
    let expected: Vec<i64> = (0..20).filter(|i| *i != 5).collect();
    let (now, files) = scan_at(&f, &t, None).await;
    assert_eq!(now, expected);
    assert_eq!(files, 19);
    assert_eq!(f.tables.table(&t).expect("t").current_version, v + 1);
    assert_eq!(mp_objects(&f.volume).await, 20, "the merged file is gone");

    // Retried on the new version, it goes through: no row lost, none duplicated.
    let info = f.tables.compact(&t, &options()).await.expect("retry");
    assert!(info.committed);
    assert_eq!(info.files_removed, 19);
    let (now, files) = scan_at(&f, &t, None).await;
    assert_eq!(now, expected);
    assert_eq!(files, 1);
}

#[tokio::test]
async fn a_compaction_lands_after_concurrent_inserts_and_added_columns() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("appends").await;
    one_row_inserts(&f, &t, 0..10).await;
    let staged = f
        .tables
        .stage_compaction(&t, &options())
        .await
        .expect("stage")
        .expect("enough small files");
    let v = staged.base_version;
    // Writers that remove none of its inputs do not stop it.
    f.tables.insert(&t, &[rows(&[100])]).await.expect("insert");
    f.tables
        .add_column(
            &t,
            ColumnDef {
                name: "note".into(),
                ty: ColumnType::Utf8,
                nullable: true,
            },
        )
        .await
        .expect("add column");
    let info = f
        .tables
        .commit_compaction(staged)
        .await
        .expect("rebased onto the appends");
    assert_eq!(info.version, v + 3);
    let (now, files) = scan_at(&f, &t, None).await;
    let mut expected: Vec<i64> = (0..10).collect();
    expected.push(100);
    assert_eq!(now, expected);
    assert_eq!(files, 2, "the merged file and the concurrent insert's");
    let columns = f.tables.table(&t).expect("t").columns;
    assert!(columns.iter().any(|c| c.name == "note"), "{columns:?}");
    let r = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    let notes: usize = r
        .batches
        .iter()
        .map(|b| b.column_by_name("note").expect("note").null_count())
        .sum();
    assert_eq!(notes, 11, "the added column reads as nulls everywhere");
}

#[tokio::test]
async fn bad_thresholds_are_named() {
    let cases = [
        (
            CompactionOptions {
                min_files: 1,
                ..CompactionOptions::default()
            },
            "min_files",
        ),
        (
            CompactionOptions {
                min_files: 10,
                max_files: 5,
                ..CompactionOptions::default()
            },
            "max_files",
        ),
        (
            CompactionOptions {
                small_file_bytes: 0,
                ..CompactionOptions::default()
            },
            "small_file_bytes",
        ),
        (
            CompactionOptions {
                small_file_bytes: 100,
                target_file_bytes: 10,
                ..CompactionOptions::default()
            },
            "target_file_bytes",
        ),
    ];
    for (opts, field) in cases {
        let e = opts.validate().expect_err(field).to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    CompactionOptions::default().validate().expect("defaults");
}

#[tokio::test]
async fn a_secondary_replica_is_never_compacted() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("replica").await;
    one_row_inserts(&f, &t, 0..8).await;
    f.tables
        .meta()
        .write(|tx| {
            let mut d = tx.get_database(&f.db)?.expect("db");
            d.role = tern_meta::DatabaseRole::Secondary;
            d.replication_group = Some("g1".into());
            tx.update_database(&d)
        })
        .expect("make it a secondary");
    let e = f
        .tables
        .compact(&t, &options())
        .await
        .expect_err("a replica is read-only");
    assert!(matches!(e, Error::ReadOnlyReplica { .. }), "{e}");
    assert_eq!(scan_at(&f, &t, None).await.1, 8);
}
