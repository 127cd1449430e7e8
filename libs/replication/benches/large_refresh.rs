//! Refresh of a replica of many files (issue 17, item 3): the first refresh of a table of
//! `TERN_BENCH_LARGE_FILES` (30 000) micro-partitions into an empty replica, on the folder
//! store with two in-process deployments (every worker running as in the daemon). Prints
//! the time and the process's peak RSS during the refresh beside the 256 MiB target the
//! issue sets for 100 000 micro-partitions (both deployments live in this process: the
//! source's share is in the figure too).
//!
//! The files are made cheaply: one insert writes a small micro-partition, which is then
//! sealed again under `N` new names (each file is sealed for its own path) and registered
//! by writing its metadata rows directly — the refresh copies and imports each of them
//! as it would any file. Run: `cargo bench -p tern-replication --bench large_refresh`
//! (release), or in the test profile with `cargo test -p tern-replication --bench
//! large_refresh` (what CI's bench step runs, at 30 000 files).
//!
//! Environment: `TERN_BENCH_LARGE_FILES` (30000), `TERN_BENCH_IMPORT_BATCH`
//! (`import_batch_files`, 10000; no effect here: one table is always one transaction),
//! `TERN_BENCH_PROFILE=1` (print the RSS each time it passes its high by 4 MiB, with the
//! seconds since the refresh began; with `RUST_LOG=info` the log lines between say which
//! phase it is in).
//!
//! Where the bytes are (what the profile of this bench found, debug build, 100 000
//! files): the source listing every row of the table took the RSS from 108 to 219 MiB in
//! two seconds before it now reads names and pages (the source now stays under 75 MiB);
//! the replica's one commit of the table's 100 000 files is the peak (+400 MiB: the log
//! record and the staged metadata file encoded into the transaction row, see the README).
//! For attribution run it under heaptrack at a smaller size:
//! `TERN_BENCH_LARGE_FILES=8000 heaptrack <bench binary>`, then `heaptrack_print
//! --flamegraph-cost-type peak -F stacks.txt` and sum the stacks by Tern function.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions};
use tern_crypto::EncryptOptions;
use tern_meta::{ColumnDef, ColumnType, MicroPartitionDpo};
use tern_replication::local::{LocalDeployment, link};
use tern_replication::{ReplicaOptions, replica_table_id};
use tern_storage::layout::{self, GlobalFileRef, ShortName};

use common::{BoxError, env_usize, make_global};

/// With `TERN_BENCH_PROFILE=1`: a thread printing the RSS every time it passes its
/// previous high by 4 MiB, with the time since the refresh began (with `RUST_LOG=info`
/// the log lines around it say which phase it is in).
fn profile_rss(t0: Instant) {
    if std::env::var("TERN_BENCH_PROFILE").ok().as_deref() != Some("1") {
        return;
    }
    std::thread::spawn(move || {
        let mut high = 0u64;
        loop {
            let (_, now) = rss().unwrap_or_default();
            if now > high + (4 << 20) {
                high = now;
                eprintln!(
                    "profile {:8.1} s: RSS {:.0} MiB",
                    t0.elapsed().as_secs_f64(),
                    mib(now)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// Peak and current resident set size of this process (bytes), from `/proc/self/status`.
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Resets the peak RSS to the current one (Linux: `5` into `/proc/self/clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

async fn run(root: &std::path::Path) -> Result<(), BoxError> {
    let n = env_usize("TERN_BENCH_LARGE_FILES", 30_000).max(1);
    let batch_files = env_usize("TERN_BENCH_IMPORT_BATCH", 10_000);
    let mut options = common::options(Duration::from_millis(100));
    options.replication.import_batch_files = batch_files;
    options.replication.refresh_interval = Duration::ZERO;
    let mut d1 = LocalDeployment::open(root, "d1", None, options.clone()).await?;
    let keys = root.join("d1").join("keys");
    let mut d2 = LocalDeployment::open(root, "d2", Some(&keys), options).await?;
    link(&d1, &d2).await?;
    d1.start(&[&d2]);
    d2.start(&[&d1]);
    let a1 = d1.create_account("a1")?;
    let db = d1.create_database(&a1, "sales")?;
    d1.tables.create_schema(&db, "public").await?;
    let account_group = d1.repl.set_account_global(&a1, None)?;
    let columns = vec![ColumnDef {
        name: "id".into(),
        ty: ColumnType::Int64,
        nullable: false,
    }];
    let table = d1
        .tables
        .create_table(&db, "public", "big", columns)
        .await?;
    let a2 = d2.create_account("a2")?;
    d2.repl.set_account_global(&a2, Some(&account_group))?;

    // One small file, sealed again under n - 1 more names and registered directly.
    let load = Instant::now();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..16))])?;
    d1.tables.insert(&table, &[rows]).await?;
    let v = d1.version(&table)?.unwrap_or(0);
    let first = d1
        .meta
        .read(|tx| tx.active_micro_partitions(&table, v))?
        .remove(0);
    let table_keys = d1.tables.file_keys(&table).await?;
    let plain = tern_crypto::get_decrypted(
        &d1.volume,
        &ObjectPath::from(first.path.as_str()),
        table_keys.as_ref(),
    )
    .await?;
    // Sealed 8 at a time (each seal and write is its own task: both cores), registered
    // 10 000 rows a transaction.
    let mut pending = Vec::new();
    let mut writes = tokio::task::JoinSet::new();
    for i in 1..n {
        let seq = d1.meta.next_unique("short_name")?;
        let short = ShortName::new(format!("fdn{seq}"))?;
        let path = layout::volume::mp(&a1, &db, &table, &short);
        let path_text = path.to_string();
        let (volume, keys, plain) = (
            Arc::clone(&d1.volume),
            Arc::clone(&table_keys),
            plain.clone(),
        );
        writes.spawn(async move {
            tern_crypto::put_encrypted(
                volume.as_ref(),
                &path,
                keys.as_ref(),
                &plain,
                &EncryptOptions::default(),
                PutOptions::from(PutMode::Create),
            )
            .await
        });
        while writes.len() >= 8 {
            writes.join_next().await.ok_or("no write")???;
        }
        pending.push(MicroPartitionDpo {
            short: short.clone(),
            global_ref: GlobalFileRef::new(d1.id.clone(), short),
            path: path_text,
            ..first.clone()
        });
        if pending.len() == 10_000 || i + 1 == n {
            d1.meta
                .write(|tx| tx.repair_micro_partitions(&table, &pending, &[]))?;
            pending.clear();
        }
    }
    while let Some(w) = writes.join_next().await {
        w??;
    }
    drop(pending);
    // Names, not rows: the set-up's own reads stay out of the figure.
    let files = d1.meta.read(|tx| tx.active_short_names(&table, v))?.len();
    println!(
        "large refresh: one table of {files} micro-partitions on d1 (made in {:.1} s); import batches of {batch_files} files",
        load.elapsed().as_secs_f64()
    );

    let mut pair = common::Pair {
        d1,
        d2,
        a1,
        a2,
        table: table.clone(),
        group: String::new(),
    };
    make_global(&mut pair).await?;
    let (before_peak, before) = rss().unwrap_or_default();
    let reset = reset_peak();
    let t0 = Instant::now();
    profile_rss(t0);
    pair.d2.repl.create_replica_with(
        &pair.a2,
        "sales",
        &pair.group,
        &ReplicaOptions {
            upstream: None,
            follow_log: false,
        },
    )?;
    let rid = replica_table_id(&pair.d1.id, &table);
    let deadline = Instant::now() + Duration::from_secs(7200);
    while pair.d2.version(&rid)? != Some(v) {
        if Instant::now() > deadline {
            return Err("the replica never reached the primary's version".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = t0.elapsed();
    let (peak, after) = rss().unwrap_or_default();
    let replicated = pair
        .d2
        .meta
        .read(|tx| tx.active_short_names(&rid, v))?
        .len();
    let target = 256u64 << 20;
    println!(
        "  refresh of {files} files: {:.1} s ({:.0} files/s); replica holds {replicated} files",
        took.as_secs_f64(),
        files as f64 / took.as_secs_f64()
    );
    println!(
        "  peak RSS during the refresh (both deployments, this process): {:.0} MiB{} | before {:.0} MiB (peak before {:.0} MiB), after {:.0} MiB | target ≤ 256 MiB for 100 000 files: ratio {:.2} at {files} files ({})",
        mib(peak),
        if reset {
            ""
        } else {
            " (peak not reset: since start)"
        },
        mib(before),
        mib(before_peak),
        mib(after),
        peak as f64 / target as f64,
        if peak <= target { "within" } else { "over" }
    );
    if replicated != files {
        return Err(format!("the replica holds {replicated} files of {files}").into());
    }
    pair.d1.stop().await;
    pair.d2.stop().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::Builder::new()
        .prefix("tern-large-refresh")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    rt.block_on(run(scratch.path()))
}
