//! Property test: random commits (adding and removing micro-partitions), rollbacks and
//! retention drops give, at every retained version, the active set of a simple in-memory
//! model; the unreferenced set and the retained versions match too.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tern_meta::MetaStore;
use tern_storage::layout::TableId;

use crate::common::*;

#[derive(Debug, Clone)]
enum Op {
    /// Add `adds` new files, remove the active files picked by the indexes.
    Commit { adds: usize, removes: Vec<Index> },
    /// Roll back to a retained version picked by the index.
    Rollback(Index),
    /// Drop the versions before a retained version picked by the index.
    DropBefore(Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, proptest::collection::vec(any::<Index>(), 0..3))
            .prop_map(|(adds, removes)| Op::Commit { adds, removes }),
        2 => any::<Index>().prop_map(Op::Rollback),
        1 => any::<Index>().prop_map(Op::DropBefore),
    ]
}

#[derive(Default)]
struct Model {
    /// Active names at each retained version.
    versions: BTreeMap<u64, BTreeSet<String>>,
    /// Every file in the index (active somewhere or not yet forgotten).
    index: BTreeSet<String>,
    /// Added at which version (to undo on rollback).
    added_at: BTreeMap<String, u64>,
    next_name: usize,
}

impl Model {
    fn current(&self) -> u64 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    fn oldest(&self) -> u64 {
        self.versions.keys().next().copied().unwrap_or(0)
    }

    fn pick(&self, i: &Index) -> u64 {
        let span = usize::try_from(self.current() - self.oldest()).unwrap() + 1;
        self.oldest() + u64::try_from(i.index(span)).unwrap()
    }
}

fn apply(store: &MetaStore, t: &TableId, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let cur = model.current();
    match op {
        Op::Commit { adds, removes } => {
            let active: Vec<String> = model.versions[&cur].iter().cloned().collect();
            let remove: BTreeSet<String> = if active.is_empty() {
                BTreeSet::new()
            } else {
                removes.iter().map(|i| i.get(&active).clone()).collect()
            };
            let add: Vec<String> = (0..*adds)
                .map(|_| {
                    model.next_name += 1;
                    format!("m{}", model.next_name)
                })
                .collect();
            let add_refs: Vec<&str> = add.iter().map(String::as_str).collect();
            let remove_refs: Vec<&str> = remove.iter().map(String::as_str).collect();
            commit(store, t, cur, &add_refs, &remove_refs)
                .map_err(|e| TestCaseError::fail(format!("commit: {e}")))?;
            let mut next = model.versions[&cur].clone();
            next.retain(|n| !remove.contains(n));
            for n in add {
                next.insert(n.clone());
                model.index.insert(n.clone());
                model.added_at.insert(n, cur + 1);
            }
            model.versions.insert(cur + 1, next);
        }
        Op::Rollback(i) => {
            let target = model.pick(i);
            store
                .write(|tx| tx.rollback_table_to(t, target))
                .map_err(|e| TestCaseError::fail(format!("rollback to {target}: {e}")))?;
            model.versions.retain(|v, _| *v <= target);
            let gone: Vec<String> = model
                .added_at
                .iter()
                .filter(|(_, v)| **v > target)
                .map(|(n, _)| n.clone())
                .collect();
            for n in gone {
                model.added_at.remove(&n);
                model.index.remove(&n);
            }
        }
        Op::DropBefore(i) => {
            let keep = model.pick(i);
            store
                .write(|tx| tx.drop_versions_before(t, keep))
                .map_err(|e| TestCaseError::fail(format!("drop before {keep}: {e}")))?;
            model.versions.retain(|v, _| *v >= keep);
            // Vacuum: forget the metadata files and micro-partitions no retained version
            // needs (the check below replays what is left).
            let released: Vec<u64> = store
                .read(|tx| tx.releasable_retired_versions(t))
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect();
            store
                .write(|tx| tx.forget_retired_versions(t, &released))
                .map_err(|e| TestCaseError::fail(format!("forget retired: {e}")))?;
            let unreferenced: Vec<_> = store
                .read(|tx| tx.unreferenced_micro_partitions(t))
                .unwrap()
                .into_iter()
                .map(|m| m.short)
                .collect();
            store
                .write(|tx| tx.forget_micro_partitions(t, &unreferenced))
                .map_err(|e| TestCaseError::fail(format!("forget files: {e}")))?;
            for s in &unreferenced {
                model.index.remove(s.as_str());
                model.added_at.remove(s.as_str());
            }
        }
    }
    Ok(())
}

fn check(store: &MetaStore, t: &TableId, model: &Model) -> Result<(), TestCaseError> {
    let retained: Vec<u64> = store
        .read(|tx| tx.table_versions(t))
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    prop_assert_eq!(
        &retained,
        &model.versions.keys().copied().collect::<Vec<_>>()
    );
    let table = store.read(|tx| tx.get_table(t)).unwrap().unwrap();
    prop_assert_eq!(table.current_version, model.current());
    // The commits' own lists (retired rows, then retained rows up to v) replay to the
    // same set: what the metadata files in the volume rebuild.
    let retired = store.read(|tx| tx.retired_versions(t)).unwrap();
    let rows = store.read(|tx| tx.table_versions(t)).unwrap();
    for (v, expected) in &model.versions {
        let got: BTreeSet<String> = active(store, t, *v).into_iter().collect();
        prop_assert_eq!(&got, expected, "active set at version {}", v);
        let mut replayed: BTreeSet<String> = BTreeSet::new();
        for row in retired
            .iter()
            .chain(rows.iter().filter(|r| r.version <= *v))
        {
            for s in &row.removed {
                replayed.remove(s.as_str());
            }
            replayed.extend(row.added.iter().map(|s| s.to_string()));
        }
        prop_assert_eq!(&replayed, expected, "replayed set at version {}", v);
    }
    if model.oldest() > 0 {
        prop_assert!(
            store
                .read(|tx| tx.active_micro_partitions(t, model.oldest() - 1))
                .is_err()
        );
    }
    let referenced: BTreeSet<&String> = model.versions.values().flatten().collect();
    let expected_unref: BTreeSet<&String> = model
        .index
        .iter()
        .filter(|n| !referenced.contains(n))
        .collect();
    let unref: BTreeSet<String> = store
        .read(|tx| tx.unreferenced_micro_partitions(t))
        .unwrap()
        .into_iter()
        .map(|m| m.short.to_string())
        .collect();
    prop_assert_eq!(unref.iter().collect::<BTreeSet<_>>(), expected_unref);
    Ok(())
}

fn run(cases: u32, make: impl Fn() -> (MetaStore, Option<tempfile::TempDir>)) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x7e_a1_5e_ed),
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..30), |ops| {
        let (store, _dir) = make();
        let t = setup_table(&store, "t1");
        let mut model = Model::default();
        model.versions.insert(0, BTreeSet::new());
        for op in &ops {
            apply(&store, &t, &mut model, op)?;
            check(&store, &t, &model)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn model_memory() {
    run(256, || (MetaStore::in_memory(), None));
}

#[test]
fn model_sqlite() {
    run(24, || {
        let (store, dir) = sqlite_store();
        (store, Some(dir))
    });
}
