//! Parts of the table format the scenarios do not reach: DML rewrites that read and
//! replace only the micro-partitions whose statistics can match, dropping tables and
//! schemas as versioned dictionary changes, and loading Parquet files.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use object_store::ObjectStore;
use parquet::arrow::ArrowWriter;
use tern_meta::DictionaryChange;
use tern_storage::layout::TableId;
use tern_storage::{FaultPlan, FaultStore, Operation};
use tern_table::load::{self, Format};
use tern_table::{CommitInfo, Error, Predicate, Scalar, ScanRequest, TableOptions};

use crate::fixture::{self, Fixture, ids, rows};

/// Per active micro-partition of `t`: its path and the min and max of its `id` column.
fn micro_partitions(f: &Fixture, t: &TableId) -> Vec<(object_store::path::Path, i64, i64)> {
    let version = f.tables.table(t).expect("table").current_version;
    f.tables
        .meta()
        .read(|tx| tx.active_micro_partitions(t, version))
        .expect("active set")
        .into_iter()
        .map(|m| {
            let stats = &m.stats[0];
            assert_eq!(stats.column, "id");
            let (Some(Scalar::Int64(lo)), Some(Scalar::Int64(hi))) =
                (stats.min.clone(), stats.max.clone())
            else {
                panic!("id statistics of {}: {stats:?}", m.short);
            };
            (object_store::path::Path::from(m.path), lo, hi)
        })
        .collect()
}

/// Runs `dml` on a table of 20 micro-partitions of 100 sorted ids each, and checks that
/// exactly the one holding ids `lo..=hi` was read and replaced, and no other was even opened.
async fn rewrites_one(
    what: &str,
    lo: i64,
    hi: i64,
    dml: impl AsyncFnOnce(&Fixture, &TableId) -> CommitInfo,
) {
    let dir = tempfile::tempdir().expect("dir");
    let plan = FaultPlan::new();
    let volume: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(
        fixture::folder_volume(dir.path()),
        plan.clone(),
    ));
    let f = Fixture::new(volume, TableOptions::default());
    let t = f.create("sorted").await;
    for k in 0..20i64 {
        let ids: Vec<i64> = (k * 100..k * 100 + 100).collect();
        f.tables.insert(&t, &[rows(&ids)]).await.expect("insert");
    }
    let files = micro_partitions(&f, &t);
    assert_eq!(files.len(), 20, "one micro-partition per insert");

    plan.reset_counts();
    let info = dml(&f, &t).await;
    assert!(info.committed, "{what}: {info:?}");
    assert_eq!(
        info.files_removed, 1,
        "{what}: only the matching file is replaced"
    );
    for (path, min, max) in &files {
        let reads = plan.calls_under(Operation::Get, path);
        if *max < lo || *min > hi {
            assert_eq!(
                reads, 0,
                "{what}: {path} ({min}..={max}) cannot match but was read"
            );
        } else {
            assert!(reads > 0, "{what}: {path} ({min}..={max}) holds the rows");
        }
    }
    let after = micro_partitions(&f, &t);
    let kept = files.iter().filter(|f| after.contains(f)).count();
    assert_eq!(
        kept, 19,
        "{what}: the other 19 files stay in the active set"
    );
}

#[tokio::test]
async fn dml_rewrites_read_and_replace_only_files_whose_stats_can_match() {
    rewrites_one("delete", 1234, 1234, async |f, t| {
        let info = f
            .tables
            .delete(t, &Predicate::eq("id", 1234i64))
            .await
            .expect("delete");
        assert_eq!(info.rows_affected, 1);
        info
    })
    .await;
    rewrites_one("update", 1510, 1519, async |f, t| {
        let set = [("name".to_string(), Some(Scalar::from("changed")))];
        let info = f
            .tables
            .update(t, &set, &Predicate::between("id", 1510i64, 1519i64))
            .await
            .expect("update");
        assert_eq!(info.rows_affected, 10);
        info
    })
    .await;
    rewrites_one("merge", 1700, 1705, async |f, t| {
        f.tables
            .merge(t, &[rows(&(1700..1706).collect::<Vec<_>>())], &["id"])
            .await
            .expect("merge")
    })
    .await;
}

#[tokio::test]
async fn drop_table_and_schema_are_versioned_dictionary_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(fixture::folder_volume(dir.path()), TableOptions::default());
    let t = f.create("doomed").await;
    f.tables
        .insert(&t, &[rows(&[1, 2, 3])])
        .await
        .expect("insert");
    let seen = f.tables.dictionary_changes(&f.db, 0).expect("ddl").len() as u64;

    // a schema that still holds a table is not dropped, and nothing is recorded
    assert!(f.tables.drop_schema(&f.db, "public").await.is_err());
    assert_eq!(
        f.tables.dictionary_changes(&f.db, seen).expect("ddl").len(),
        0,
        "a refused drop records nothing"
    );

    f.tables.drop_table(&t).await.expect("drop table");
    assert!(
        matches!(f.tables.table(&t), Err(Error::UnknownTable { .. })),
        "a dropped table is gone"
    );
    assert!(
        f.tables.scan(&t, &ScanRequest::default()).await.is_err(),
        "a dropped table cannot be scanned"
    );
    assert!(
        f.tables.drop_table(&t).await.is_err(),
        "dropping twice fails"
    );
    f.tables
        .drop_schema(&f.db, "public")
        .await
        .expect("drop schema");
    assert!(f.tables.drop_schema(&f.db, "public").await.is_err(), "gone");

    let changes = f.tables.dictionary_changes(&f.db, seen).expect("ddl");
    let got: Vec<(u64, String)> = changes
        .iter()
        .map(|c| {
            let what = match &c.change {
                DictionaryChange::DropTable { table } => format!("drop table {table}"),
                DictionaryChange::DropSchema { name } => format!("drop schema {name}"),
                other => format!("{other:?}"),
            };
            (c.seq, what)
        })
        .collect();
    assert_eq!(
        got,
        [
            (seen + 1, format!("drop table {t}")),
            (seen + 2, "drop schema public".to_string()),
        ]
    );
}

#[tokio::test]
async fn loads_parquet_files() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(fixture::folder_volume(dir.path()), TableOptions::default());
    let t = f.create("from_parquet").await;
    let cols = f.tables.table(&t).expect("table").columns;
    assert_eq!(Format::from_name("part-0.parquet"), Some(Format::Parquet));

    let write = |name: &str, batch: &RecordBatch| {
        let path = dir.path().join(name);
        let file = std::fs::File::create(&path).expect("create");
        let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        w.write(batch).expect("write");
        w.close().expect("close");
        path
    };
    let good = write("good.parquet", &rows(&(0..50).collect::<Vec<_>>()));
    let batches = load::read_file(&good, Format::Parquet, &cols).expect("read parquet");
    let info = f.tables.insert(&t, &batches).await.expect("insert");
    assert_eq!((info.version, info.rows_affected), (1, 50));
    let s = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&s.batches), (0..50).collect::<Vec<_>>());
    assert_eq!(
        s.batches
            .iter()
            .map(|b| b.column_by_name("name").expect("name").null_count())
            .sum::<usize>(),
        8,
        "nulls survive the load (ids divisible by 7)"
    );

    // Not Parquet: the error names the file.
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"PAR1 but not really").expect("write");
    let e = load::read_file(&junk, Format::Parquet, &cols).expect_err("junk");
    assert!(e.to_string().contains("junk.parquet"), "{e}");

    // Parquet with the wrong type for a column: refused by insert, nothing committed.
    let wrong = RecordBatch::try_from_iter([(
        "id",
        Arc::new(StringArray::from(vec!["x"])) as Arc<dyn Array>,
    )])
    .expect("batch");
    let wrong = write("wrong.parquet", &wrong);
    let batches = load::read_file(&wrong, Format::Parquet, &cols).expect("read parquet");
    match f.tables.insert(&t, &batches).await {
        Err(Error::TypeMismatch { column, .. }) => assert_eq!(column, "id"),
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    assert_eq!(f.tables.table(&t).expect("table").current_version, 1);
}
