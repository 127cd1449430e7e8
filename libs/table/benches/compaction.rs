//! Compaction's speed-up of scans, in one run: a table made by one-row inserts, scanned
//! before and after compaction.
//!
//! ```text
//! cargo bench -p tern-table --bench compaction
//! TERN_BENCH_ROWS=2000 cargo bench -p tern-table --bench compaction   # a quick run
//! ```
//!
//! `TERN_BENCH_ROWS` one-row inserts (default 10 000; `id` int64, `name` utf8, `v`
//! float64), each its own micro-partition and version, into a table on the folder store
//! (SQLite metadata store, local keys, the local committer). Then: a full `Tables::scan`
//! (the median of five) as the reference; `Tables::compact` with the default thresholds
//! until it has nothing left to do (each commit merges at most `max_files` files, so a
//! table of 10 000 files takes ten commits and an eleventh merging their outputs); the same
//! scan again, checked to return the same rows. Printed: both scans, the files each read,
//! the compaction's time, and the ratio with the target from the issue (≥ 10×). The exit
//! status is 0 either way.
//!
//! One core: everything runs on a *current-thread* Tokio runtime; the folder store does its
//! file I/O on Tokio's blocking pool.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use tern_storage::layout::{DatabaseId, TableId};
use tern_table::schema::arrow_schema;
use tern_table::{ColumnDef, ColumnType, CompactionOptions, ScanRequest, Tables};

const TARGET_SPEEDUP: f64 = 10.0;
const SCANS: usize = 5;

mod common;

use common::BoxError;

fn main() -> Result<(), BoxError> {
    let rows: i64 = match std::env::var("TERN_BENCH_ROWS") {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("TERN_BENCH_ROWS={v:?} is not a row count: {e}"))?,
        Err(_) => 10_000,
    };
    if rows < 2 {
        return Err(format!("TERN_BENCH_ROWS must be at least 2, got {rows}").into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::Builder::new()
        .prefix("tern-compaction-bench-")
        .tempdir_in("/tmp")?;
    rt.block_on(run(scratch.path(), rows))
}

async fn run(dir: &std::path::Path, rows: i64) -> Result<(), BoxError> {
    let columns = columns();
    let tables = common::deployment(dir, tern_table::mp::WriteOptions::default())?;
    let db = DatabaseId::new("db1")?;
    tables.create_schema(&db, "public").await?;
    let t = tables
        .create_table(&db, "public", "small", columns.clone())
        .await?;
    let opts = CompactionOptions::default();
    println!(
        "tern-table compaction bench: {rows} one-row inserts (id int64, name utf8, v float64); \
         compaction thresholds: min_files {}, max_files {}, small files < {} KiB, target {} MiB",
        opts.min_files,
        opts.max_files,
        opts.small_file_bytes >> 10,
        opts.target_file_bytes >> 20
    );
    println!(
        "one core: a current-thread Tokio runtime (folder-store file I/O on its blocking pool)"
    );

    let started = Instant::now();
    for i in 0..rows {
        tables.insert(&t, &[row(i, &columns)?]).await?;
    }
    println!(
        "inserted in {:.1} s ({:.0} commits/s)\n",
        started.elapsed().as_secs_f64(),
        rows as f64 / started.elapsed().as_secs_f64()
    );

    let (before, before_files, before_sum) = scans(&tables, &t, rows).await?;

    let started = Instant::now();
    let (mut commits, mut removed, mut added) = (0, 0, 0);
    loop {
        let info = tables.compact(&t, &opts).await?;
        if !info.committed {
            break;
        }
        commits += 1;
        removed += info.files_removed;
        added += info.files_added;
    }
    let compaction = started.elapsed();

    let (after, after_files, after_sum) = scans(&tables, &t, rows).await?;
    if after_sum != before_sum {
        return Err(format!(
            "compaction changed the rows: id sum {before_sum} before, {after_sum} after"
        )
        .into());
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = ms(before) / ms(after).max(1e-9);
    println!(
        "{:<34} {:>12} {:>12}",
        "full scan (median of 5)", "time", "files"
    );
    println!(
        "{:<34} {:>9.1} ms {:>12}",
        "  before compaction (reference)",
        ms(before),
        before_files
    );
    println!(
        "{:<34} {:>9.1} ms {:>12}",
        "  after compaction",
        ms(after),
        after_files
    );
    println!(
        "compaction: {commits} commits, {removed} files merged into {added} ({} left), {:.2} s",
        after_files,
        compaction.as_secs_f64()
    );
    println!(
        "ratio {ratio:.1}× faster (target ≥ {TARGET_SPEEDUP}: {})",
        if ratio >= TARGET_SPEEDUP {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

/// The median time of [`SCANS`] full scans, the files each read and the sum of the ids
/// (the rows are checked: `rows` of them, ids 0..rows).
async fn scans(
    tables: &Tables,
    t: &TableId,
    rows: i64,
) -> Result<(Duration, usize, i64), BoxError> {
    let mut times = Vec::with_capacity(SCANS);
    let (mut files, mut sum) = (0, 0);
    for _ in 0..SCANS {
        let started = Instant::now();
        let r = tables.scan(t, &ScanRequest::default()).await?;
        times.push(started.elapsed());
        if r.rows() != usize::try_from(rows)? {
            return Err(format!("scan returned {} rows, want {rows}", r.rows()).into());
        }
        files = r.files_read;
        sum = r
            .batches
            .iter()
            .map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .map_or(0, |a| a.values().iter().sum::<i64>())
            })
            .sum();
    }
    times.sort();
    Ok((times[SCANS / 2], files, sum))
}

fn columns() -> Vec<ColumnDef> {
    let c = |name: &str, ty, nullable| ColumnDef {
        name: name.into(),
        ty,
        nullable,
    };
    vec![
        c("id", ColumnType::Int64, false),
        c("name", ColumnType::Utf8, true),
        c("v", ColumnType::Float64, true),
    ]
}

fn row(i: i64, columns: &[ColumnDef]) -> Result<RecordBatch, BoxError> {
    Ok(RecordBatch::try_new(
        arrow_schema(columns),
        vec![
            Arc::new(Int64Array::from(vec![i])),
            Arc::new(StringArray::from(vec![format!("row-{i}")])),
            Arc::new(Float64Array::from(vec![i as f64 * 0.5])),
        ],
    )?)
}
