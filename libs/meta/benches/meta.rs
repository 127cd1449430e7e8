//! Metadata store benchmark: `cargo bench -p tern-meta --bench meta`.
//!
//! Prints, each beside the reference it is judged against (measured in the same run, on
//! the same file system):
//!
//! * `commit_table_version` commits/s (1 micro-partition per commit) on an SQLite file,
//!   with `synchronous=FULL` (the default) and `NORMAL` — against raw rusqlite single-row
//!   `INSERT` transactions/s with the same settings (the floor: one fsync'd WAL commit);
//! * `active_micro_partitions` latency on a table with 100 000 micro-partitions — against
//!   a raw rusqlite scan of the same rows without decoding.
//!
//! `TERN_BENCH_DIR` picks the directory (default: cargo's target tmp dir, on disk — not a
//! tmpfs, where fsync would be free); `TERN_BENCH_SECS` the time per throughput figure.
#![allow(clippy::print_stdout)] // a benchmark program: printing is its output

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tern_meta::{
    AccountDpo, ColumnDef, ColumnStats, ColumnType, DatabaseDpo, EpFileRef, MetaStore,
    MicroPartitionDpo, Scalar, SchemaDpo, SqliteOptions, Synchronous, TableDpo, TableVersionDpo,
};
use tern_storage::layout::{
    AccountId, DatabaseId, DeploymentId, GlobalFileRef, ShortName, TableId,
};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BoxResult<()> {
    let base = std::env::var_os("TERN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let secs: f64 = std::env::var("TERN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let run_for = Duration::from_secs_f64(secs);
    println!(
        "tern-meta benchmark in {} ({secs} s per throughput figure)",
        dir.path().display()
    );
    let sample = serde_json::to_vec(&mp(&TableId::new("t")?, 1, 1)?)?.len();
    println!("micro-partition value: {sample} bytes of JSON (4 column stats)");
    println!();

    println!("commit_table_version, 1 MP per commit, one SQLite file, WAL:");
    for (i, sync) in [Synchronous::Full, Synchronous::Normal]
        .into_iter()
        .enumerate()
    {
        let mut raw = RawInserts::open(&dir.path().join(format!("raw{i}.db")), sync, sample)?;
        let mut ours = Commits::open(&dir.path().join(format!("commit{i}.db")), sync)?;
        // Alternate short slices so that both see the same machine load (fsync latency
        // on shared disks drifts by several times within a minute).
        let (mut raw_n, mut raw_t, mut our_n, mut our_t) =
            (0u64, Duration::ZERO, 0u64, Duration::ZERO);
        let slice = run_for / 10;
        for _ in 0..10 {
            let (n, t) = raw.run(slice)?;
            (raw_n, raw_t) = (raw_n + n, raw_t + t);
            let (n, t) = ours.run(slice)?;
            (our_n, our_t) = (our_n + n, our_t + t);
        }
        let (raw, ours) = (
            raw_n as f64 / raw_t.as_secs_f64(),
            our_n as f64 / our_t.as_secs_f64(),
        );
        println!(
            "  synchronous={:<6}  {:>8.0} commits/s   raw rusqlite 1-row INSERT txn {:>8.0} txn/s   ratio {:.2}",
            format!("{sync:?}").to_uppercase(),
            ours,
            raw,
            ours / raw
        );
    }
    println!();

    const MPS: u64 = 100_000;
    const PER_COMMIT: u64 = 1_000;
    let path = dir.path().join("large.db");
    let store = MetaStore::open_sqlite(
        &path,
        SqliteOptions {
            synchronous: Synchronous::Normal,
            ..SqliteOptions::default()
        },
    )?;
    let t = setup(&store)?;
    let started = Instant::now();
    for c in 0..MPS / PER_COMMIT {
        let v = c + 1;
        let adds = (0..PER_COMMIT)
            .map(|i| mp(&t, v, c * PER_COMMIT + i))
            .collect::<BoxResult<Vec<_>>>()?;
        store.write(|tx| tx.commit_table_version(&t, c, version_row(&t, v), &adds, &[]))?;
    }
    // Then churn: 50 commits each replacing 100 files (removed ones stay in the index).
    let mut current = MPS / PER_COMMIT;
    for c in 0..50u64 {
        let v = current + 1;
        let removes: Vec<ShortName> = (0..100)
            .map(|i| ShortName::new(format!("mp{}", c * 100 + i)))
            .collect::<Result<_, _>>()?;
        let adds = (0..100)
            .map(|i| mp(&t, v, MPS + c * 100 + i))
            .collect::<BoxResult<Vec<_>>>()?;
        store.write(|tx| {
            tx.commit_table_version(&t, current, version_row(&t, v), &adds, &removes)
        })?;
        current = v;
    }
    println!(
        "active_micro_partitions, table with {} MPs in the index ({} active at the current version), built in {:.1} s:",
        MPS + 5_000,
        MPS,
        started.elapsed().as_secs_f64()
    );
    for (label, version) in [
        ("current version", current),
        ("version 50 (time travel)", 50),
    ] {
        let mut n = 0;
        let lat = median(7, || {
            let t0 = Instant::now();
            n = store
                .read(|tx| tx.active_micro_partitions(&t, version))?
                .len();
            Ok(t0.elapsed())
        })?;
        println!("  {label:<26} {:>8.1} ms  ({n} MPs returned)", ms(lat));
    }
    let raw = median(7, || raw_scan(&path))?;
    println!(
        "  reference: raw rusqlite scan of the same {} rows, no decoding: {:.1} ms (current version: ratio {:.1})",
        MPS + 5_000,
        ms(raw),
        ms(median(3, || {
            let t0 = Instant::now();
            store.read(|tx| tx.active_micro_partitions(&t, current))?;
            Ok(t0.elapsed())
        })?) / ms(raw)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(n: usize, mut f: impl FnMut() -> BoxResult<Duration>) -> BoxResult<Duration> {
    let mut v = (0..n).map(|_| f()).collect::<BoxResult<Vec<_>>>()?;
    v.sort();
    Ok(v[n / 2])
}

fn apply_pragmas(c: &rusqlite::Connection, sync: Synchronous) -> rusqlite::Result<()> {
    let mode: String = c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    assert_eq!(mode, "wal");
    let s = match sync {
        Synchronous::Full => "FULL",
        _ => "NORMAL",
    };
    c.pragma_update(None, "synchronous", s)
}

/// The floor: one single-row INSERT per `BEGIN IMMEDIATE … COMMIT`, same settings.
struct RawInserts {
    conn: rusqlite::Connection,
    value: Vec<u8>,
    n: u64,
}

impl RawInserts {
    fn open(path: &Path, sync: Synchronous, size: usize) -> BoxResult<Self> {
        let conn = rusqlite::Connection::open(path)?;
        apply_pragmas(&conn, sync)?;
        conn.execute_batch(
            "CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        )?;
        Ok(Self {
            conn,
            value: vec![b'x'; size],
            n: 0,
        })
    }

    fn run(&mut self, run_for: Duration) -> BoxResult<(u64, Duration)> {
        let started = Instant::now();
        let first = self.n;
        while started.elapsed() < run_for {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.prepare_cached("INSERT INTO kv (key, value) VALUES (?1, ?2)")?
                .execute((&self.n.to_be_bytes()[..], &self.value[..]))?;
            tx.commit()?;
            self.n += 1;
        }
        Ok((self.n - first, started.elapsed()))
    }
}

/// `commit_table_version` with one micro-partition added per commit.
struct Commits {
    store: MetaStore,
    table: TableId,
    version: u64,
}

impl Commits {
    fn open(path: &Path, sync: Synchronous) -> BoxResult<Self> {
        let store = MetaStore::open_sqlite(
            path,
            SqliteOptions {
                synchronous: sync,
                ..SqliteOptions::default()
            },
        )?;
        let table = setup(&store)?;
        Ok(Self {
            store,
            table,
            version: 0,
        })
    }

    fn run(&mut self, run_for: Duration) -> BoxResult<(u64, Duration)> {
        let started = Instant::now();
        let first = self.version;
        let t = &self.table;
        while started.elapsed() < run_for {
            let v = self.version;
            let adds = [mp(t, v + 1, v)?];
            self.store
                .write(|tx| tx.commit_table_version(t, v, version_row(t, v + 1), &adds, &[]))?;
            self.version += 1;
        }
        Ok((self.version - first, started.elapsed()))
    }
}

fn raw_scan(path: &Path) -> BoxResult<Duration> {
    let c = rusqlite::Connection::open(path)?;
    let t0 = Instant::now();
    let mut stmt =
        c.prepare("SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")?;
    let mut rows = stmt.query((
        &b"\x01tbl\x00\x01t1\x00\x01mp\x00"[..],
        &b"\x01tbl\x00\x01t1\x00\x01mp\x00\xff"[..],
    ))?;
    let mut bytes = 0usize;
    while let Some(r) = rows.next()? {
        bytes += r.get_ref(1)?.as_blob()?.len();
    }
    assert!(bytes > 0);
    Ok(t0.elapsed())
}

fn setup(store: &MetaStore) -> BoxResult<TableId> {
    let account = AccountId::new("acme")?;
    let db = DatabaseId::new("db1")?;
    let t = TableId::new("t1")?;
    store.write(|tx| {
        tx.create_account(&AccountDpo::local(account.clone(), 0))?;
        tx.create_database(&DatabaseDpo::local(db.clone(), account.clone(), "sales", 0))?;
        tx.create_schema(&SchemaDpo {
            database: db.clone(),
            name: "public".into(),
            created_at_ms: 0,
        })?;
        tx.create_table(&TableDpo {
            id: t.clone(),
            database: db.clone(),
            schema: "public".into(),
            name: "orders".into(),
            columns: columns(),
            master_key_ref: "tmk/t1".into(),
            current_version: 0,
            retention_ms: None,
            created_at_ms: 0,
            dropped: false,
        })
    })?;
    Ok(t)
}

fn columns() -> Vec<ColumnDef> {
    ["id", "amount", "customer", "ts"]
        .iter()
        .zip([
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Utf8,
            ColumnType::Timestamp,
        ])
        .map(|(n, ty)| ColumnDef {
            name: (*n).into(),
            ty,
            nullable: true,
        })
        .collect()
}

fn version_row(t: &TableId, v: u64) -> TableVersionDpo {
    TableVersionDpo {
        table: t.clone(),
        version: v,
        ep_files: vec![EpFileRef {
            seq: v,
            path: format!("acct/acme/db/db1/tbl/{t}/ep/{v:020}.ep"),
        }],
        committed_at_ms: 0,
        txn_id: Some(v),
        origin: None,
        columns: columns(),
        added: Vec::new(),
        removed: Vec::new(),
    }
}

fn mp(t: &TableId, version: u64, n: u64) -> BoxResult<MicroPartitionDpo> {
    let short = ShortName::new(format!("mp{n}"))?;
    let i = i64::try_from(n)?;
    Ok(MicroPartitionDpo {
        table: t.clone(),
        short: short.clone(),
        global_ref: GlobalFileRef::new(DeploymentId::new("d1")?, short.clone()),
        rows: 100_000,
        bytes: 16 << 20,
        stats: vec![
            ColumnStats {
                column: "id".into(),
                min: Some(Scalar::Int64(i * 100_000)),
                max: Some(Scalar::Int64(i * 100_000 + 99_999)),
                null_count: 0,
            },
            ColumnStats {
                column: "amount".into(),
                min: Some(Scalar::Float64(0.01)),
                max: Some(Scalar::Float64(9_999.99)),
                null_count: 12,
            },
            ColumnStats {
                column: "customer".into(),
                min: Some(Scalar::Utf8("aaron".into())),
                max: Some(Scalar::Utf8("zoe".into())),
                null_count: 0,
            },
            ColumnStats {
                column: "ts".into(),
                min: Some(Scalar::Timestamp(1_700_000_000_000_000)),
                max: Some(Scalar::Timestamp(1_700_000_360_000_000)),
                null_count: 0,
            },
        ],
        added_version: version,
        removed_version: None,
        path: format!("acct/acme/db/db1/tbl/{t}/mp/{short}.mp"),
        key_ref: format!("tmk/{t}/{short}"),
    })
}
