//! Two writers racing for the same table version: exactly one wins, the other gets
//! `VersionConflict`. (Two processes: see `sqlite::two_processes_race_for_versions`.)

use std::sync::{Arc, Barrier};

use tern_meta::{Error, MetaStore};

use crate::common::*;

on_both_backends!(two_threads_race_for_each_version);

const ROUNDS: u64 = 25;

fn two_threads_race_for_each_version(store: MetaStore) {
    let t = setup_table(&store, "t1");
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2u64)
        .map(|id| {
            let (store, t, barrier) = (store.clone(), t.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for round in 0..ROUNDS {
                    // Both read the same version, then both try to commit on top of it.
                    let base = store
                        .read(|tx| Ok(tx.get_table(&t)?.map(|t| t.current_version)))
                        .unwrap()
                        .unwrap();
                    assert_eq!(base, round);
                    barrier.wait();
                    let name = format!("r{round}w{id}");
                    let mut row = version_row(&t, base + 1);
                    row.txn_id = Some(id);
                    let adds = [mp(&t, &name, base + 1)];
                    let r = store
                        .write(|tx| tx.commit_table_version(&t, base, row.clone(), &adds, &[]));
                    outcomes.push(r);
                    // Nobody starts the next round before both finished this one.
                    barrier.wait();
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<Vec<_>> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    for round in 0..ROUNDS {
        let r: Vec<_> = outcomes.iter().map(|o| &o[round as usize]).collect();
        let wins = r.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {r:?}");
        let loser = r.iter().find(|r| r.is_err()).unwrap();
        assert!(
            matches!(loser, Err(Error::VersionConflict { expected, found, .. })
                if *expected == round && *found == round + 1),
            "round {round}: {loser:?}"
        );
        // The winner's file is the one in the version.
        let v = store
            .read(|tx| tx.get_table_version(&t, round + 1))
            .unwrap()
            .unwrap();
        let winner = v.txn_id.unwrap();
        assert!(r[usize::try_from(winner).unwrap()].is_ok());
        assert_eq!(v.added, shorts(&[&format!("r{round}w{winner}")]));
    }
    assert_eq!(
        store
            .read(|tx| tx.get_table(&t))
            .unwrap()
            .unwrap()
            .current_version,
        ROUNDS
    );
    assert_eq!(
        store.read(|tx| tx.list_micro_partitions(&t)).unwrap().len(),
        ROUNDS as usize
    );
}

on_both_backends!(concurrent_writers_fail_and_panic_alone);

/// Writers at once (SQLite: they share a group commit): a body that fails or panics writes
/// nothing and takes nothing of the others with it; every `Ok` is there afterwards, each
/// writer sees the writes acknowledged before it, and a counter read-modify-written by all
/// ends exact (serializable).
fn concurrent_writers_fail_and_panic_alone(store: MetaStore) {
    const THREADS: u64 = 8;
    const EACH: u64 = 40;
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|id| {
            let (store, barrier) = (store.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut kept = Vec::new();
                for i in 0..EACH {
                    let key = format!("w{id}-{i}");
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        store.write(|tx| {
                            tx.next_sequence("counter")?;
                            tx.next_sequence(&key)?;
                            match i % 5 {
                                3 => Err(Error::Invalid {
                                    what: "test",
                                    reason: "this body fails".into(),
                                }),
                                4 => panic!("this body panics"),
                                _ => Ok(()),
                            }
                        })
                    }));
                    match (i % 5, outcome) {
                        (3, Ok(Err(Error::Invalid { .. }))) | (4, Err(_)) => {}
                        (_, Ok(Ok(()))) => {
                            // Acknowledged: visible to a fresh read at once.
                            assert_eq!(store.read(|tx| tx.current_sequence(&key)).unwrap(), 1);
                            kept.push(key);
                        }
                        (n, other) => {
                            panic!("write {key} (kind {n}): {:?}", other.map(|r| r.err()))
                        }
                    }
                }
                kept
            })
        })
        .collect();
    let mut kept = 0;
    for h in handles {
        for key in h.join().unwrap() {
            assert_eq!(store.read(|tx| tx.current_sequence(&key)).unwrap(), 1);
            kept += 1;
        }
    }
    assert_eq!(kept, THREADS * EACH * 3 / 5);
    assert_eq!(
        store.read(|tx| tx.current_sequence("counter")).unwrap(),
        kept
    );
    for id in 0..THREADS {
        for i in (3..EACH).step_by(5).chain((4..EACH).step_by(5)) {
            let key = format!("w{id}-{i}");
            assert_eq!(
                store.read(|tx| tx.current_sequence(&key)).unwrap(),
                0,
                "{key}"
            );
        }
    }
}
