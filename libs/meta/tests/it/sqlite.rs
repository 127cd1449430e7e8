//! SQLite-only concerns: reopen, migrations, foreign files, a writer killed with SIGKILL,
//! two processes on one file.
//!
//! Child processes are this test binary itself, started with `TERN_META_IT_CHILD` set
//! and filtered to [`child_process_entry`], which then plays the requested role.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tern_meta::{Error, MetaStore, SCHEMA_VERSION, SqliteBackend, SqliteOptions};
use tern_storage::layout::TableId;

use crate::common::*;

const CHILD_ENV: &str = "TERN_META_IT_CHILD";
const DB_ENV: &str = "TERN_META_IT_DB";
const ID_ENV: &str = "TERN_META_IT_ID";

fn open(path: &Path) -> MetaStore {
    MetaStore::open_sqlite(path, SqliteOptions::default()).expect("open store")
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let store = open(&path);
        let t = setup_table(&store, "t1");
        commit(&store, &t, 0, &["a", "b"], &[]).unwrap();
        commit(&store, &t, 1, &["c"], &["a"]).unwrap();
        assert_eq!(store.write(|tx| tx.next_sequence("s")).unwrap(), 1);
    }
    let store = open(&path);
    let t = tid("t1");
    assert_eq!(
        store
            .read(|tx| tx.get_table(&t))
            .unwrap()
            .unwrap()
            .current_version,
        2
    );
    assert_eq!(active(&store, &t, 1), ["a", "b"]);
    assert_eq!(active(&store, &t, 2), ["b", "c"]);
    assert_eq!(store.write(|tx| tx.next_sequence("s")).unwrap(), 2);
    commit(&store, &t, 2, &["d"], &[]).unwrap();

    // The file is in WAL mode (persistent: a plain connection sees it) and carries the
    // current schema version, which is what the next open checks.
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = c
        .query_row("SELECT version FROM meta_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, i64::from(SCHEMA_VERSION));
}

/// The schema of version 1, as released: kept here verbatim so that the migration from it
/// stays tested.
const V1_SQL: &str = "
    CREATE TABLE meta_schema (version INTEGER NOT NULL);
    INSERT INTO meta_schema (version) VALUES (1);
    CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

#[test]
fn migrates_a_v1_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(V1_SQL).unwrap();
        // seq/n = 41, written as v1 did.
        c.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)",
            (
                &b"\x01seq\x00\x01n\x00"[..],
                &br#"{"v":1,"d":{"last":41}}"#[..],
            ),
        )
        .unwrap();
    }
    let backend = SqliteBackend::open(&path, SqliteOptions::default()).unwrap();
    assert_eq!(backend.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
    drop(backend);
    let c = rusqlite::Connection::open(&path).unwrap();
    let app_id: i32 = c
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(app_id, tern_meta::backend::sqlite::APPLICATION_ID);
    drop(c);
    let store = open(&path);
    assert_eq!(store.write(|tx| tx.next_sequence("n")).unwrap(), 42);
}

#[test]
fn refuses_a_newer_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    drop(open(&path));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute("UPDATE meta_schema SET version = 99", [])
            .unwrap();
    }
    let err = MetaStore::open_sqlite(&path, SqliteOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::UnknownSchemaVersion { found: 99, supported, .. } if supported == SCHEMA_VERSION),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 99") && msg.contains("newer"),
        "{msg}"
    );
    // Refusing does not touch the file.
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("SELECT version FROM meta_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn refuses_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    // Another application's SQLite database: refused, left in its journal mode.
    let other = dir.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY);")
            .unwrap();
    }
    let err = MetaStore::open_sqlite(&other, SqliteOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotAMetaStore { .. }), "{err}");
    let c = rusqlite::Connection::open(&other).unwrap();
    let mode: String = c
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let stamped = dir.path().join("stamped.db");
    {
        let c = rusqlite::Connection::open(&stamped).unwrap();
        c.pragma_update(None, "application_id", 42).unwrap();
    }
    let err = MetaStore::open_sqlite(&stamped, SqliteOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotAMetaStore { .. }), "{err}");

    // Not SQLite at all.
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just some text that is long enough ".repeat(20),
    )
    .unwrap();
    let err = MetaStore::open_sqlite(&text, SqliteOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::NotAMetaStore { reason, .. } if reason.contains("not an SQLite")),
        "{err}"
    );
    // A missing directory is an error that names the file.
    let missing = dir.path().join("no/such/dir/meta.db");
    let err = MetaStore::open_sqlite(&missing, SqliteOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no/such/dir/meta.db"), "{err}");
}

#[test]
fn a_store_locked_too_long_is_busy_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let store = MetaStore::open_sqlite(
        &path,
        SqliteOptions {
            busy_timeout: Duration::from_millis(5),
            busy_retries: 2,
            ..SqliteOptions::default()
        },
    )
    .unwrap();
    // Another process (here: another connection) holds the write lock.
    let mut other = rusqlite::Connection::open(&path).unwrap();
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let err = store.write(|tx| tx.next_sequence("s")).unwrap_err();
    assert!(
        err.is_busy() && matches!(err, Error::Busy { attempts: 3, .. }),
        "{err}"
    );
    // Readers are not blocked by the writer.
    assert_eq!(store.read(|tx| tx.current_sequence("s")).unwrap(), 0);
    drop(lock);
    assert_eq!(store.write(|tx| tx.next_sequence("s")).unwrap(), 1);
}

// ---- child processes ----

/// Entry point of the child processes (a no-op in a normal test run).
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = std::env::var(DB_ENV).expect("db path");
    let store = open(Path::new(&path));
    let t = tid("t1");
    match role.as_str() {
        "writer" => crash_writer(&store, &t),
        "contender" => {
            let id: u64 = std::env::var(ID_ENV).expect("id").parse().expect("id");
            contender(&store, &t, id);
        }
        other => panic!("unknown child role {other}"),
    }
}

fn spawn_child(role: &str, path: &Path, id: u64) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sqlite::child_process_entry",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_ENV, role)
        .env(DB_ENV, path)
        .env(ID_ENV, id.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// Batch k = one transaction: version k with files `k.0..k.3`, removing `k-1.0`, and
/// sequence `crash` = k. Forever, until killed.
fn crash_writer(store: &MetaStore, t: &TableId) -> ! {
    loop {
        store
            .write(|tx| {
                let base = tx.get_table(t)?.map_or(0, |t| t.current_version);
                let v = base + 1;
                let adds: Vec<_> = (0..4).map(|i| mp(t, &format!("b{v}m{i}"), v)).collect();
                let removes = if base > 0 {
                    shorts(&[&format!("b{base}m0")])
                } else {
                    Vec::new()
                };
                tx.commit_table_version(t, base, version_row(t, v), &adds, &removes)?;
                let seq = tx.next_sequence("crash")?;
                assert_eq!(seq, v);
                Ok(())
            })
            .expect("writer commit");
    }
}

/// Every batch is wholly there or wholly absent, and the committed ones are a prefix.
fn check_consistent(path: &Path, t: &TableId) -> u64 {
    let backend = SqliteBackend::open(path, SqliteOptions::default()).expect("reopen");
    assert!(backend.integrity_check().unwrap().is_empty());
    let store = MetaStore::new(std::sync::Arc::new(backend));
    let (current, seq, versions) = store
        .read(|tx| {
            Ok((
                tx.get_table(t)?.unwrap().current_version,
                tx.current_sequence("crash")?,
                tx.table_versions(t)?,
            ))
        })
        .unwrap();
    assert_eq!(seq, current, "sequence and version commit together");
    let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (0..=current).collect::<Vec<_>>());
    let all = store.read(|tx| tx.list_micro_partitions(t)).unwrap();
    assert_eq!(all.len() as u64, current * 4, "no partial batch of files");
    for m in &all {
        assert!(m.added_version >= 1 && m.added_version <= current, "{m:?}");
    }
    let expected: Vec<String> = (1..=current)
        .flat_map(|v| (0..4).map(move |i| (v, i)))
        .filter(|&(v, i)| i != 0 || v == current)
        .map(|(v, i)| format!("b{v}m{i}"))
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(active(&store, t, current), expected);
    current
}

fn wait_for_version(path: &Path, t: &TableId, at_least: u64, child: &mut Child) {
    let store = open(path);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = store
            .read(|tx| Ok(tx.get_table(t)?.unwrap().current_version))
            .unwrap();
        if v >= at_least {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited early: {status}");
        }
        assert!(Instant::now() < deadline, "child stuck at version {v}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn writer_killed_with_sigkill_leaves_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let t = setup_table(&open(&path), "t1");
    let mut committed = 0;
    for round in 0..3 {
        let mut child = spawn_child("writer", &path, 0);
        wait_for_version(&path, &t, committed + 15, &mut child);
        child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
        child.wait().expect("reap");
        let now = check_consistent(&path, &t);
        assert!(now >= committed + 15, "round {round}: {now}");
        committed = now;
    }
}

/// A barrier for the two contender processes, through the store itself.
fn barrier(store: &MetaStore, name: &str) {
    store.write(|tx| tx.next_sequence(name)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.read(|tx| tx.current_sequence(name)).unwrap() < 2 {
        assert!(
            Instant::now() < deadline,
            "the other contender never reached {name}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Each round: both processes read the same version, then both try to commit on top of
/// it. Records its wins and conflicts.
fn contender(store: &MetaStore, t: &TableId, id: u64) {
    for round in 0..CONTENDER_ROUNDS {
        barrier(store, &format!("start/{round}"));
        let base = store
            .read(|tx| Ok(tx.get_table(t)?.unwrap().current_version))
            .unwrap();
        assert_eq!(base, round);
        barrier(store, &format!("read/{round}"));
        let mut row = version_row(t, base + 1);
        row.txn_id = Some(id);
        let adds = [mp(t, &format!("p{id}v{}", base + 1), base + 1)];
        let r = store.write(|tx| {
            tx.commit_table_version(t, base, row.clone(), &adds, &[])?;
            tx.next_sequence(&format!("wins/{id}"))
        });
        match r {
            Ok(_) => {}
            Err(Error::VersionConflict {
                expected, found, ..
            }) => {
                assert!(expected == base && found == base + 1);
                store
                    .write(|tx| tx.next_sequence(&format!("conflicts/{id}")))
                    .unwrap();
            }
            Err(e) => panic!("contender {id}: {e}"),
        }
    }
}

const CONTENDER_ROUNDS: u64 = 20;

#[test]
fn two_processes_race_for_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let t = setup_table(&open(&path), "t1");
    let children: Vec<Child> = (0..2)
        .map(|id| spawn_child("contender", &path, id))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a contender failed");
    }
    let store = open(&path);
    let versions = store.read(|tx| tx.table_versions(&t)).unwrap();
    let current = store
        .read(|tx| tx.get_table(&t))
        .unwrap()
        .unwrap()
        .current_version;
    assert_eq!(versions.len() as u64, current + 1);
    let (mut total_wins, mut total_conflicts) = (0, 0);
    for id in 0..2 {
        let (wins, conflicts) = store
            .read(|tx| {
                Ok((
                    tx.current_sequence(&format!("wins/{id}"))?,
                    tx.current_sequence(&format!("conflicts/{id}"))?,
                ))
            })
            .unwrap();
        assert_eq!(wins + conflicts, CONTENDER_ROUNDS, "contender {id}");
        // Each version was won by exactly one contender, whose file it holds.
        let won: Vec<_> = versions.iter().filter(|v| v.txn_id == Some(id)).collect();
        assert_eq!(won.len() as u64, wins);
        for v in won {
            assert_eq!(v.added, shorts(&[&format!("p{id}v{}", v.version)]));
        }
        total_wins += wins;
        total_conflicts += conflicts;
    }
    // Exactly one winner per version; the other got VersionConflict.
    assert_eq!(total_wins, current);
    assert_eq!(current, CONTENDER_ROUNDS);
    assert_eq!(total_conflicts, CONTENDER_ROUNDS);
}

/// Values from reserved blocks are never handed out twice — not by two stores on one file
/// (two processes), not after a reopen — and increase within one store.
#[test]
fn unique_values_from_blocks_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let (a, b) = (open(&path), open(&path));
    let mut seen = std::collections::BTreeSet::new();
    let mut last_a = 0;
    for i in 0..300 {
        let v = a.next_unique("names").unwrap();
        assert!(v > last_a, "not increasing: {v} after {last_a}");
        last_a = v;
        assert!(seen.insert(v), "{v} twice");
        if i % 3 == 0 {
            assert!(seen.insert(b.next_unique("names").unwrap()));
        }
    }
    drop((a, b));
    let c = open(&path);
    for _ in 0..100 {
        assert!(seen.insert(c.next_unique("names").unwrap()));
    }
    // The plain sequence of the same name continues after every reserved block.
    let next = c.write(|tx| tx.next_sequence("names")).unwrap();
    assert!(next > *seen.last().unwrap());
}
