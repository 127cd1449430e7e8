//! Property test: random DML sequences give the same rows as a simple in-memory model at
//! every version, time travel included.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use object_store::memory::InMemory;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tern_table::mp::WriteOptions;
use tern_table::{Predicate, Scalar, ScanRequest, TableOptions};

use crate::fixture::{Fixture, rows};

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<i64>),
    Delete(i64, i64),
    Update(i64, i64, u8),
    Merge(Vec<i64>, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec(0i64..200, 1..40).prop_map(Op::Insert),
        (0i64..200, 0i64..60).prop_map(|(a, w)| Op::Delete(a, a + w)),
        (0i64..200, 0i64..60, any::<u8>()).prop_map(|(a, w, t)| Op::Update(a, a + w, t)),
        (proptest::collection::vec(0i64..200, 1..30), any::<u8>())
            .prop_map(|(v, t)| Op::Merge(v, t)),
    ]
}

type Model = BTreeMap<i64, Option<String>>;

fn scanned(batches: &[RecordBatch]) -> Model {
    let mut m = BTreeMap::new();
    for b in batches {
        let ids = b
            .column_by_name("id")
            .and_then(|a| a.as_any().downcast_ref::<Int64Array>().cloned())
            .expect("id");
        let names = b
            .column_by_name("name")
            .and_then(|a| a.as_any().downcast_ref::<StringArray>().cloned())
            .expect("name");
        for i in 0..b.num_rows() {
            let name = (!names.is_null(i)).then(|| names.value(i).to_string());
            assert!(
                m.insert(ids.value(i), name).is_none(),
                "id {} twice",
                ids.value(i)
            );
        }
    }
    m
}

fn with_name(ids: &[i64], name: &str) -> RecordBatch {
    let b = rows(ids);
    let mut cols = b.columns().to_vec();
    cols[1] = Arc::new(StringArray::from(vec![Some(name); ids.len()]));
    RecordBatch::try_new(b.schema(), cols).expect("batch")
}

async fn run(ops: Vec<Op>) {
    // Tiny files so that every operation spans and rewrites several micro-partitions.
    let options = TableOptions {
        write: WriteOptions {
            target_bytes: 2 << 10,
            row_group_rows: 8,
            zstd_level: 1,
        },
        ..Default::default()
    };
    let f = Fixture::new(Arc::new(InMemory::new()), options);
    let t = f.create("model").await;
    let mut model: Model = BTreeMap::new();
    let mut history = vec![(0u64, model.clone())];
    for op in ops {
        match &op {
            Op::Insert(ids) => {
                let mut fresh: Vec<i64> = ids
                    .iter()
                    .copied()
                    .filter(|i| !model.contains_key(i))
                    .collect();
                fresh.sort_unstable();
                fresh.dedup();
                if fresh.is_empty() {
                    continue;
                }
                f.tables.insert(&t, &[rows(&fresh)]).await.expect("insert");
                for i in fresh {
                    model.insert(i, (i % 7 != 0).then(|| format!("name-{i}")));
                }
            }
            Op::Delete(a, b) => {
                f.tables
                    .delete(&t, &Predicate::between("id", *a, *b))
                    .await
                    .expect("delete");
                model.retain(|k, _| !(a..=b).contains(&k));
            }
            Op::Update(a, b, tag) => {
                let name = format!("u{tag}");
                let set = [("name".to_string(), Some(Scalar::Utf8(name.clone())))];
                f.tables
                    .update(&t, &set, &Predicate::between("id", *a, *b))
                    .await
                    .expect("update");
                for (_, v) in model.range_mut(a..=b) {
                    *v = Some(name.clone());
                }
            }
            Op::Merge(ids, tag) => {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids.dedup();
                let name = format!("m{tag}");
                f.tables
                    .merge(&t, &[with_name(&ids, &name)], &["id"])
                    .await
                    .expect("merge");
                for i in ids {
                    model.insert(i, Some(name.clone()));
                }
            }
        }
        let current = f.tables.table(&t).expect("table").current_version;
        let got = f
            .tables
            .scan(&t, &ScanRequest::default())
            .await
            .expect("scan");
        assert_eq!(
            scanned(&got.batches),
            model,
            "after {op:?} (version {current})"
        );
        if history.last().is_some_and(|(v, _)| *v != current) {
            history.push((current, model.clone()));
        }
    }
    for (version, expected) in history {
        let got = f
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
        assert_eq!(
            scanned(&got.batches),
            expected,
            "time travel to version {version}"
        );
    }
}

#[test]
fn dml_matches_the_reference_model_at_every_version() {
    let config = Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    runner
        .run(&proptest::collection::vec(op(), 1..10), |ops| {
            rt.block_on(run(ops));
            Ok(())
        })
        .expect("property holds");
}
