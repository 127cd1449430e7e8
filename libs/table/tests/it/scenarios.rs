//! Table scenarios on the folder store and LocalStack.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use bytes::Bytes;
use object_store::ObjectStore;
use tern_meta::DictionaryChange;
use tern_storage::layout::ShortName;
use tern_storage::{FaultPlan, FaultStore, Operation, Path, StoreExt};
use tern_table::load::{self, Format};
use tern_table::mp::WriteOptions;
use tern_table::{
    Aggregate, CmpOp, ColumnDef, ColumnType, Error, Predicate, Scalar, ScanRequest, TableOptions,
};

use crate::fixture::{self, Fixture, ids, rows};

fn small_files() -> TableOptions {
    TableOptions {
        write: WriteOptions {
            target_bytes: 4 << 10,
            row_group_rows: 64,
            zstd_level: 1,
        },
        ..Default::default()
    }
}

/// DML, scans, time travel, aggregates, DDL and vacuum on one volume.
pub async fn scenario(volume: Arc<dyn ObjectStore>) {
    let f = Fixture::new(volume, small_files());
    let t = f.create("orders").await;
    let all: Vec<i64> = (0..300).collect();
    let v1 = f
        .tables
        .insert(&t, &[rows(&all[..100]), rows(&all[100..300])])
        .await
        .expect("insert");
    assert_eq!((v1.version, v1.rows_affected), (1, 300));
    assert!(v1.files_added > 1, "small target size splits files: {v1:?}");

    let scan = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&scan.batches), all);
    let count = f
        .tables
        .aggregate(&t, &Aggregate::Count, None, None)
        .await
        .expect("count");
    assert_eq!(count, Some(Scalar::Int64(300)));

    // delete: only files that hold matching rows are rewritten
    let d = f
        .tables
        .delete(&t, &Predicate::cmp("id", CmpOp::Lt, 50i64))
        .await
        .expect("delete");
    assert_eq!((d.version, d.rows_affected), (2, 50));
    assert!(
        d.files_removed < v1.files_added,
        "untouched files stay: {d:?}"
    );
    // a delete that matches nothing makes no version
    let none = f
        .tables
        .delete(&t, &Predicate::eq("id", 10_000i64))
        .await
        .expect("no-op delete");
    assert!(!none.committed && none.version == 2);

    // update
    let set = [("name".to_string(), Some(Scalar::from("renamed")))];
    let u = f
        .tables
        .update(&t, &set, &Predicate::between("id", 100i64, 109i64))
        .await
        .expect("update");
    assert_eq!((u.version, u.rows_affected), (3, 10));
    let renamed = f
        .tables
        .scan(
            &t,
            &ScanRequest {
                predicate: Some(Predicate::eq("name", "renamed")),
                columns: Some(vec!["id".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("scan renamed");
    assert_eq!(ids(&renamed.batches), (100..110).collect::<Vec<_>>());
    assert_eq!(
        renamed.batches.first().map(|b| b.num_columns()),
        Some(1),
        "projection"
    );

    // merge: 290..310 replace 290..299 and add 300..309
    let m = f
        .tables
        .merge(&t, &[rows(&(290..310).collect::<Vec<_>>())], &["id"])
        .await
        .expect("merge");
    assert_eq!(m.version, 4);
    let after = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&after.batches), (50..310).collect::<Vec<_>>());
    // duplicate keys in a merge source are refused, nothing committed
    let dup = f
        .tables
        .merge(&t, &[rows(&[1, 1])], &["id"])
        .await
        .expect_err("duplicate key");
    assert!(matches!(dup, Error::DuplicateMergeKey { .. }), "{dup}");

    // aggregates
    let sum = f
        .tables
        .aggregate(&t, &Aggregate::Sum("id".into()), None, None)
        .await
        .expect("sum");
    assert_eq!(sum, Some(Scalar::Int64((50..310).sum())));
    let min = f
        .tables
        .aggregate(
            &t,
            &Aggregate::Min("amount".into()),
            Some(&Predicate::cmp("id", CmpOp::GtEq, 200i64)),
            None,
        )
        .await
        .expect("min");
    assert_eq!(min, Some(Scalar::Float64(300.0)));
    let max = f
        .tables
        .aggregate(&t, &Aggregate::Max("name".into()), None, None)
        .await
        .expect("max");
    assert_eq!(max, Some(Scalar::from("renamed")));

    // time travel
    for (version, expected) in [
        (1u64, (0..300).collect::<Vec<i64>>()),
        (2, (50..300).collect()),
        (0, vec![]),
    ] {
        let s = f
            .tables
            .scan(
                &t,
                &ScanRequest {
                    version: Some(version),
                    ..Default::default()
                },
            )
            .await
            .expect("time travel");
        assert_eq!(ids(&s.batches), expected, "version {version}");
    }
    let future = f
        .tables
        .scan(
            &t,
            &ScanRequest {
                version: Some(99),
                ..Default::default()
            },
        )
        .await
        .expect_err("future");
    assert!(
        matches!(future, Error::VersionNotRetained { version: 99, .. }),
        "{future}"
    );

    // DDL: add a nullable column; older files read it as nulls, older versions lack it
    let c = f
        .tables
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
    assert_eq!(c.version, 5);
    let s = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    let note = s.batches[0].column_by_name("note").expect("new column");
    assert_eq!(note.null_count(), note.len());
    let old = f
        .tables
        .scan(
            &t,
            &ScanRequest {
                version: Some(4),
                ..Default::default()
            },
        )
        .await
        .expect("scan v4");
    assert!(old.batches[0].column_by_name("note").is_none());
    let required = f
        .tables
        .add_column(
            &t,
            ColumnDef {
                name: "req".into(),
                ty: ColumnType::Int64,
                nullable: false,
            },
        )
        .await;
    assert!(matches!(required, Err(Error::InvalidSchema { .. })));

    // The metadata files alone reproduce every version's micro-partitions.
    for version in 0..=5u64 {
        let from_files = f
            .tables
            .active_from_metadata_files(&t, version)
            .await
            .expect("replay");
        let indexed: Vec<ShortName> = f
            .tables
            .meta()
            .read(|tx| tx.active_micro_partitions(&t, version))
            .expect("index")
            .into_iter()
            .map(|m| m.short)
            .collect();
        assert_eq!(from_files, indexed, "version {version}");
    }

    // DDL is recorded as numbered dictionary changes, in order.
    let ddl = f.tables.dictionary_changes(&f.db, 0).expect("ddl log");
    let kinds: Vec<(u64, String)> = ddl
        .iter()
        .map(|c| {
            let what = match &c.change {
                DictionaryChange::CreateSchema { name } => format!("create schema {name}"),
                DictionaryChange::CreateTable { name, .. } => format!("create table {name}"),
                DictionaryChange::AddColumn {
                    column, version, ..
                } => {
                    format!("add column {} at {version}", column.name)
                }
                other => format!("{other:?}"),
            };
            (c.seq, what)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "create schema public".to_string()),
            (2, "create table orders".to_string()),
            (3, "add column note at 5".to_string())
        ]
    );

    // vacuum: after the retention period only the current version stays; files no longer
    // referenced are deleted from the volume
    let files_before = f
        .volume
        .list_sorted(&Path::from("acct"))
        .await
        .expect("list")
        .len();
    assert_eq!(
        f.tables.vacuum(&t).await.expect("vacuum within retention"),
        0
    );
    f.clock.advance(Duration::from_secs(25 * 3600));
    f.tables
        .insert(&t, &[rows(&[1000])])
        .await
        .expect("insert after a day");
    let removed = f.tables.vacuum(&t).await.expect("vacuum");
    assert!(removed > 0, "vacuum removed replaced files");
    let files_after = f
        .volume
        .list_sorted(&Path::from("acct"))
        .await
        .expect("list")
        .len();
    assert!(
        files_after < files_before + 2,
        "files were deleted ({files_before} → {files_after})"
    );
    let s = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan after vacuum");
    assert_eq!(ids(&s.batches).len(), 261);
    let gone = f
        .tables
        .scan(
            &t,
            &ScanRequest {
                version: Some(1),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(gone, Err(Error::VersionNotRetained { .. })),
        "old versions expired"
    );
}

#[tokio::test]
async fn tables_on_folder_store() {
    let dir = tempfile::tempdir().expect("dir");
    scenario(fixture::folder_volume(dir.path())).await;
}

#[tokio::test]
async fn tables_on_localstack() {
    scenario(fixture::localstack_volume("scenario").await).await;
}

/// A point query on a sorted key opens one micro-partition, and only its bytes are read.
#[tokio::test]
async fn point_query_opens_one_file() {
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
    plan.reset_counts();
    let s = f
        .tables
        .scan(
            &t,
            &ScanRequest {
                predicate: Some(Predicate::eq("id", 1234i64)),
                ..Default::default()
            },
        )
        .await
        .expect("point query");
    assert_eq!(ids(&s.batches), vec![1234]);
    assert_eq!((s.files_total, s.files_read), (20, 1));
    let mps = s.files_total;
    let mp_reads = plan.calls_under(Operation::Get, &Path::from("acct"));
    assert!(
        (1..=4).contains(&mp_reads),
        "{mp_reads} reads for one of {mps} files"
    );
}

/// Bad input gets an error naming the problem, and nothing is committed.
#[tokio::test]
async fn bad_input_is_refused_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(fixture::folder_volume(dir.path()), TableOptions::default());
    let t = f.create("strict").await;
    f.tables.insert(&t, &[rows(&[1, 2])]).await.expect("insert");

    // wrong type
    let wrong = RecordBatch::try_from_iter([(
        "id",
        Arc::new(StringArray::from(vec!["x"])) as Arc<dyn Array>,
    )])
    .expect("batch");
    match f.tables.insert(&t, &[wrong]).await {
        Err(Error::TypeMismatch { column, .. }) => assert_eq!(column, "id"),
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    // unknown column
    let unknown = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![3])) as Arc<dyn Array>),
        (
            "colour",
            Arc::new(StringArray::from(vec!["red"])) as Arc<dyn Array>,
        ),
    ])
    .expect("batch");
    match f.tables.insert(&t, &[unknown]).await {
        Err(Error::UnknownColumn { column }) => assert_eq!(column, "colour"),
        other => panic!("expected UnknownColumn, got {other:?}"),
    }
    // null in a non-nullable column
    let nulls = RecordBatch::try_from_iter([(
        "id",
        Arc::new(Int64Array::from(vec![Some(4), None])) as Arc<dyn Array>,
    )])
    .expect("batch");
    assert!(matches!(
        f.tables.insert(&t, &[nulls]).await,
        Err(Error::NullInNonNullable { .. })
    ));
    // unknown column in a predicate, wrong literal type
    assert!(matches!(
        f.tables.delete(&t, &Predicate::eq("nope", 1i64)).await,
        Err(Error::UnknownColumn { .. })
    ));
    assert!(matches!(
        f.tables.delete(&t, &Predicate::eq("id", "one")).await,
        Err(Error::TypeMismatch { .. })
    ));

    // malformed CSV: the error names the file and the line
    let csv = "id,name,amount\n1,a,1.0\n2,b,not-a-number\n";
    let cols = f.tables.table(&t).expect("table").columns;
    let e = load::read_csv(csv.as_bytes(), &cols, "orders.csv", 1024).expect_err("bad csv");
    let msg = e.to_string();
    assert!(
        msg.contains("orders.csv") && msg.contains("line 3") && msg.contains("not-a-number"),
        "{msg}"
    );
    let e = load::read_csv("id,colour\n1,red\n".as_bytes(), &cols, "c.csv", 1024)
        .expect_err("unknown header");
    assert!(e.to_string().contains("colour"), "{e}");
    let e = load::read_ndjson(
        "{\"id\": 1}\n{\"id\": \"x\"}\n".as_bytes(),
        &cols,
        "rows.ndjson",
        1024,
    )
    .expect_err("bad json");
    assert!(e.to_string().contains("rows.ndjson"), "{e}");
    assert_eq!(Format::from_name("x.CSV"), Some(Format::Csv));

    assert_eq!(
        f.tables.table(&t).expect("table").current_version,
        1,
        "nothing committed"
    );
    let s = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&s.batches), vec![1, 2]);
}

/// Good CSV and NDJSON load; reopening the metadata store and volume gives the same rows.
#[tokio::test]
async fn loads_files_and_survives_restart() {
    let root = tempfile::tempdir().expect("dir");
    let volume = fixture::folder_volume(root.path());
    let f = Fixture::new(Arc::clone(&volume), TableOptions::default());
    let t = f.create("loaded").await;
    let cols = f.tables.table(&t).expect("table").columns;
    let csv = "name,id,amount\nx,10,1.5\n,11,\n";
    let batches = load::read_csv(csv.as_bytes(), &cols, "in.csv", 1024).expect("csv");
    f.tables.insert(&t, &batches).await.expect("insert csv");
    let nd = "{\"id\": 12, \"name\": \"y\", \"flag\": true}\n{\"id\": 13}\n";
    let batches = load::read_ndjson(nd.as_bytes(), &cols, "in.ndjson", 1024).expect("ndjson");
    f.tables.insert(&t, &batches).await.expect("insert ndjson");
    let before = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&before.batches), vec![10, 11, 12, 13]);

    let dir = f.dir;
    drop(f.tables);
    let reopened = Fixture::open(volume, TableOptions::default(), dir, false);
    let again = reopened
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan after restart");
    assert_eq!(ids(&again.batches), vec![10, 11, 12, 13]);
    assert_eq!(again.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
}

/// Nothing in the volume is plaintext: no Parquet magic, no sample values.
#[tokio::test]
async fn volume_holds_no_plaintext() {
    let dir = tempfile::tempdir().expect("dir");
    let volume = fixture::folder_volume(dir.path());
    let f = Fixture::new(Arc::clone(&volume), TableOptions::default());
    let t = f.create("secret").await;
    f.tables
        .insert(&t, &[rows(&(0..500).collect::<Vec<_>>())])
        .await
        .expect("insert");
    let files = volume.list_sorted(&Path::from("acct")).await.expect("list");
    assert!(files.len() >= 2, "a micro-partition and a metadata file");
    for meta in files {
        let bytes: Bytes = volume.read_all(&meta.location).await.expect("read");
        let hay = bytes.as_ref();
        for needle in [&b"PAR1"[..], b"name-13", b"tern-ep", b"\"id\""] {
            assert!(
                !hay.windows(needle.len()).any(|w| w == needle),
                "{} contains {:?}",
                meta.location,
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// A micro-partition's `bytes` is what its documentation says: the length of its Parquet
/// content (compressed, before encryption), not the size of the stored object.
#[tokio::test]
async fn micro_partition_bytes_is_its_parquet_length() {
    let dir = tempfile::tempdir().expect("dir");
    let volume = fixture::folder_volume(dir.path());
    let f = Fixture::new(Arc::clone(&volume), TableOptions::default());
    let t = f.create("sizes").await;
    f.tables
        .insert(&t, &[rows(&(0..500).collect::<Vec<_>>())])
        .await
        .expect("insert");
    let keys = f.tables.file_keys(&t).await.expect("keys");
    let files = f
        .tables
        .meta()
        .read(|tx| tx.list_micro_partitions(&t))
        .expect("micro-partitions");
    assert!(!files.is_empty());
    for m in files {
        let path = Path::from(m.path.as_str());
        let parquet = tern_crypto::get_decrypted(&volume, &path, keys.as_ref())
            .await
            .expect("decrypt");
        assert!(parquet.starts_with(b"PAR1"), "{path} is Parquet inside");
        let stored = volume.meta(&path).await.expect("head").size;
        assert_eq!(m.bytes, parquet.len() as u64, "{path}");
        assert!(stored > m.bytes, "{path}: the stored object holds more");
    }
}

/// A storage failure in the middle of a multi-file insert leaves no file behind and
/// commits nothing (files are stored while later ones are still being encoded).
#[tokio::test]
async fn failed_insert_leaves_no_files() {
    let dir = tempfile::tempdir().expect("dir");
    let plan = FaultPlan::new();
    let volume: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(
        fixture::folder_volume(dir.path()),
        plan.clone(),
    ));
    let f = Fixture::new(Arc::clone(&volume), small_files());
    let t = f.create("faulty").await;
    let rule = plan.arm(
        tern_storage::FaultRule::on(Operation::Put)
            .under("acct")
            .nth(3)
            .fault(tern_storage::Fault::Fail),
    );
    let err = f
        .tables
        .insert(&t, &[rows(&(0..2000).collect::<Vec<_>>())])
        .await;
    assert!(err.is_err(), "the injected failure surfaces");
    assert_eq!(plan.fired(rule), 1);
    plan.disarm_all();
    assert_eq!(
        f.tables.table(&t).expect("table").current_version,
        0,
        "nothing committed"
    );
    let left = volume.list_sorted(&Path::from("acct")).await.expect("list");
    assert!(left.is_empty(), "files left behind: {left:?}");
    // The table still works.
    f.tables
        .insert(&t, &[rows(&[1, 2, 3])])
        .await
        .expect("insert after the fault");
    let s = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("scan");
    assert_eq!(ids(&s.batches), vec![1, 2, 3]);
}

/// A micro-partition's key reference names the key its header names: the table master
/// key's id, with the derivation (HKDF over the object path).
#[tokio::test]
async fn micro_partition_key_ref_names_the_key_in_its_header() {
    let dir = tempfile::tempdir().expect("dir");
    let volume = fixture::folder_volume(dir.path());
    let f = Fixture::new(Arc::clone(&volume), TableOptions::default());
    let t = f.create("keys").await;
    f.tables.insert(&t, &[rows(&[1, 2])]).await.expect("insert");
    let keys = f.tables.file_keys(&t).await.expect("keys");
    let files = f
        .tables
        .meta()
        .read(|tx| tx.list_micro_partitions(&t))
        .expect("micro-partitions");
    assert!(!files.is_empty());
    for m in files {
        let path = Path::from(m.path.as_str());
        let object = tern_crypto::EncryptedObject::open(Arc::clone(&volume), &path, keys.as_ref())
            .await
            .expect("open");
        let master_id = match object.header().key_ref() {
            tern_crypto::KeyRef::Derived { master_id, .. } => *master_id,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(m.key_ref, format!("tmk-hkdf-path:{master_id}"), "{path}");
        assert_eq!(m.key_ref, tern_table::mp::key_ref(&keys));
    }
}
