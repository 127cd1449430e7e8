//! Commits per second of single-row inserts through the full protocol (locks, prepare,
//! log record, publish), on one table and on 16 tables in parallel, with the time split by
//! phase; beside them, in the same run and on the same store, the floor — the latency of
//! one small `PutMode::Create` object write — and the same inserts through
//! `LocalCommitter` (one metadata transaction, no log record), so the protocol's overhead
//! is the figure to read.
//!
//! ```sh
//! cargo bench -p tern-txn --bench commit                       # folder store, fsync on and off
//! TERN_BENCH_LOCALSTACK=1 cargo bench -p tern-txn --bench commit   # and LocalStack
//! TERN_BENCH_COMMITS=100 …                                     # a quicker run
//! ```

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use tern_clock::SystemClock;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_meta::{AccountDpo, DatabaseDpo, MetaStore, SqliteOptions};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_storage::{ObjectStore, Path, StoreConfig, StoreExt, emulator, open_store};
use tern_table::schema::arrow_schema;
use tern_table::{ColumnDef, ColumnType, Committer, LocalCommitter, TableOptions, Tables};
use tern_txn::{PhaseStats, TxnManager, TxnOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        ColumnDef {
            name: "note".into(),
            ty: ColumnType::Utf8,
            nullable: true,
        },
    ]
}

fn one_row(id: i64) -> Result<RecordBatch, BoxError> {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![id])),
        Arc::new(StringArray::from(vec![format!("row-{id}")])),
    ];
    Ok(RecordBatch::try_new(arrow_schema(&columns()), arrays)?)
}

struct Setup {
    _dir: tempfile::TempDir,
    tables: Arc<Tables>,
    txn: Option<TxnManager>,
    db: DatabaseId,
}

/// A deployment over `volume`: tables committing through the protocol, or through
/// `LocalCommitter` when `protocol` is false.
async fn setup(volume: Arc<dyn ObjectStore>, protocol: bool) -> Result<Setup, BoxError> {
    let dir = tempfile::tempdir()?;
    let meta = MetaStore::open_sqlite(dir.path().join("meta.db"), SqliteOptions::default())?;
    let keys = Arc::new(LocalKeyProvider::open_or_create(
        &dir.path().join("keys"),
        SystemRandom::shared(),
    )?);
    let d1 = DeploymentId::new("d1")?;
    let account = AccountId::new("acme")?;
    let db = DatabaseId::new("db1")?;
    meta.write(|tx| {
        tx.create_account(&AccountDpo::local(account.clone(), 0))?;
        tx.create_database(&DatabaseDpo::local(db.clone(), account.clone(), "bench", 0))
    })?;
    let clock = SystemClock::shared();
    let (committer, txn): (Arc<dyn Committer>, _) = if protocol {
        let m = TxnManager::open(
            d1.clone(),
            meta.clone(),
            Arc::clone(&volume),
            keys.clone(),
            clock.clone(),
            TxnOptions::default(),
        )?;
        m.recover().await?;
        (Arc::new(m.clone()), Some(m))
    } else {
        let c = LocalCommitter::new(d1.clone(), meta.clone(), Arc::clone(&volume), clock.clone());
        (Arc::new(c), None)
    };
    let tables = Tables::new(
        d1,
        volume,
        meta,
        keys,
        clock,
        TableOptions::default(),
        committer,
    );
    tables.create_schema(&db, "public").await?;
    Ok(Setup {
        _dir: dir,
        tables: Arc::new(tables),
        txn,
        db,
    })
}

/// Latencies of `n` small object creates, sorted.
async fn raw_puts(volume: &Arc<dyn ObjectStore>, n: usize) -> Result<Vec<Duration>, BoxError> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let path = Path::from(format!("bench/raw/{i:08}"));
        let t = Instant::now();
        volume.put_new(&path, vec![7u8; 512].into()).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Run {
    commits: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }
}

/// `per_table` single-row inserts into each of `tables` tables, the tables in parallel.
async fn inserts(s: &Setup, tables: usize, per_table: usize) -> Result<Run, BoxError> {
    let mut ids: Vec<TableId> = Vec::new();
    for n in 0..tables {
        ids.push(
            s.tables
                .create_table(
                    &s.db,
                    "public",
                    &format!("t{n}_{}", rand_suffix()),
                    columns(),
                )
                .await?,
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for table in ids {
        let tables = Arc::clone(&s.tables);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_table);
            for i in 0..per_table {
                let row = one_row(i64::try_from(i)?)?;
                let t = Instant::now();
                tables.insert(&table, &[row]).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, BoxError>(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Run {
        commits: tables * per_table,
        elapsed,
        latencies,
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn phase_line(before: PhaseStats, after: PhaseStats, total: Duration) {
    let n = (after.commits - before.commits).max(1) as f64;
    let per = |a: Duration, b: Duration| ms(a.saturating_sub(b)) / n;
    let locks = per(after.locks, before.locks);
    let prepare = per(after.prepare, before.prepare);
    let log = per(after.log_write, before.log_write);
    let publish = per(after.publish, before.publish);
    let statement = ms(total) / n - locks - prepare - log - publish;
    println!(
        "    per commit: statement (files, begin) {statement:.2} ms · locks {locks:.2} ms · prepare (EP file, check, id) {prepare:.2} ms · log write {log:.2} ms · publish {publish:.2} ms"
    );
}

async fn bench_store(
    name: &str,
    make: &dyn Fn() -> Result<Arc<dyn ObjectStore>, BoxError>,
    commits: usize,
) -> Result<(), BoxError> {
    println!("\n== {name} ==");
    let floor = raw_puts(&make()?, commits.min(200)).await?;
    let floor_p50 = pct(&floor, 0.5);
    println!(
        "  floor: one small PUT (create) p50 {:.2} ms, p99 {:.2} ms",
        ms(floor_p50),
        ms(pct(&floor, 0.99))
    );

    let local = setup(make()?, false).await?;
    let base = inserts(&local, 1, commits).await?;
    println!(
        "  reference, LocalCommitter (one metadata transaction, no log), 1 table: {:.0} commits/s, p50 {:.2} ms",
        base.per_second(),
        ms(pct(&base.latencies, 0.5))
    );

    let s = setup(make()?, true).await?;
    let txn = s.txn.as_ref().ok_or("protocol setup without a manager")?;
    let before = txn.phase_stats();
    let one = inserts(&s, 1, commits).await?;
    let p50 = pct(&one.latencies, 0.5);
    println!(
        "  protocol, 1 table:  {:.0} commits/s, p50 {:.2} ms, p99 {:.2} ms = {:.1}× the PUT floor, {:.2}× LocalCommitter's rate",
        one.per_second(),
        ms(p50),
        ms(pct(&one.latencies, 0.99)),
        ms(p50) / ms(floor_p50).max(1e-9),
        one.per_second() / base.per_second()
    );
    phase_line(before, txn.phase_stats(), one.latencies.iter().sum());

    let before = txn.phase_stats();
    let per_table = (commits / 16).max(4);
    let many = inserts(&s, 16, per_table).await?;
    println!(
        "  protocol, 16 tables in parallel: {:.0} commits/s ({:.2}× one table), p50 {:.2} ms, p99 {:.2} ms",
        many.per_second(),
        many.per_second() / one.per_second(),
        ms(pct(&many.latencies, 0.5)),
        ms(pct(&many.latencies, 0.99))
    );
    phase_line(before, txn.phase_stats(), many.latencies.iter().sum());
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let commits: usize = std::env::var("TERN_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("commit protocol: single-row inserts, {commits} commits per figure");
    rt.block_on(async {
        let root = tempfile::tempdir()?;
        let n = std::sync::atomic::AtomicU64::new(0);
        // Durable writes (the default: fsync of file and directories) and without them,
        // side by side, so the cost of durability is read off the same run.
        for (name, query) in [
            ("folder store (durable writes, the default)", ""),
            ("folder store (?fsync=false)", "?fsync=false"),
        ] {
            let folder = || -> Result<Arc<dyn ObjectStore>, BoxError> {
                let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(open_store(&StoreConfig {
                    url: format!(
                        "file://{}{query}",
                        root.path().join(format!("v{i}")).display()
                    ),
                    ..Default::default()
                })?)
            };
            bench_store(name, &folder, commits).await?;
        }
        if std::env::var("TERN_BENCH_LOCALSTACK").is_ok_and(|v| v == "1") {
            let mut stores = Vec::new();
            for i in 0..3 {
                stores.push(
                    emulator::localstack_bucket(&format!("bench-commit-{i}"))
                        .await?
                        .0,
                );
            }
            let next = std::sync::Mutex::new(stores.into_iter());
            let s3 = || -> Result<Arc<dyn ObjectStore>, BoxError> {
                Ok(next
                    .lock()
                    .map_err(|_| "store list poisoned")?
                    .next()
                    .ok_or("no bucket left")?)
            };
            bench_store("LocalStack (S3 on loopback)", &s3, (commits / 4).max(16)).await?;
        }
        Ok::<_, BoxError>(())
    })?;
    Ok(())
}
