//! What rotating an account master key costs, beside what it would cost to re-key the
//! account's data, in one run.
//!
//! ```text
//! cargo bench -p tern-table --bench account_key
//! TERN_BENCH_TABLES=10 TERN_BENCH_ROWS=5000 cargo bench -p tern-table --bench account_key
//! ```
//!
//! `TERN_BENCH_TABLES` tables (default 50) of `TERN_BENCH_ROWS` rows each (default 20 000;
//! `id` int64, `name` utf8, `v` float64; one insert, one micro-partition) in one account on
//! the folder store (SQLite metadata store, local keys, the local committer). Measured: a
//! key rotation (`Tables::rotate_account_key`: metadata only, the median of three), and as
//! the reference the work a rotation that rewrote data would do: every file of the account
//! read, decrypted and written again encrypted under a new table key (to a scratch path, so
//! the tables stay readable). Printed: both times, the bytes the reference rewrote, and the
//! ratio. A final scan of every table checks the rows are still there. The exit status is 0
//! either way.
//!
//! One core: everything runs on a *current-thread* Tokio runtime.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use tern_crypto::{DataKey, EncryptOptions, SystemRandom, TableFileKeys};
use tern_storage::layout::{AccountId, DatabaseId};
use tern_storage::{ObjectStore, Path};
use tern_table::schema::arrow_schema;
use tern_table::{ColumnDef, ColumnType, ScanRequest};

mod common;

use common::BoxError;

fn env_num(name: &str, default: usize) -> Result<usize, BoxError> {
    match std::env::var(name) {
        Ok(v) => Ok(v
            .parse()
            .map_err(|e| format!("{name}={v:?} is not a number: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), BoxError> {
    let tables = env_num("TERN_BENCH_TABLES", 50)?;
    let rows = env_num("TERN_BENCH_ROWS", 20_000)?;
    if tables == 0 || rows == 0 {
        return Err("TERN_BENCH_TABLES and TERN_BENCH_ROWS must be at least 1".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::Builder::new()
        .prefix("tern-account-key-bench-")
        .tempdir_in("/tmp")?;
    rt.block_on(run(scratch.path(), tables, rows))
}

fn batch(rows: usize) -> Result<RecordBatch, BoxError> {
    let ids: Vec<i64> = (0..rows as i64).collect();
    Ok(RecordBatch::try_new(
        arrow_schema(&columns()),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(
                ids.iter()
                    .map(|i| format!("name-{i:08}"))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.iter().map(|i| *i as f64 * 0.5).collect::<Vec<_>>(),
            )),
        ],
    )?)
}

fn columns() -> Vec<ColumnDef> {
    let c = |name: &str, ty| ColumnDef {
        name: name.into(),
        ty,
        nullable: true,
    };
    vec![
        c("id", ColumnType::Int64),
        c("name", ColumnType::Utf8),
        c("v", ColumnType::Float64),
    ]
}

async fn run(dir: &std::path::Path, count: usize, rows: usize) -> Result<(), BoxError> {
    let tables = common::deployment(dir, tern_table::mp::WriteOptions::default())?;
    let db = DatabaseId::new("db1")?;
    let account = AccountId::new("acme")?;
    tables.create_schema(&db, "public").await?;
    let data = batch(rows)?;
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let t = tables
            .create_table(&db, "public", &format!("t{i}"), columns())
            .await?;
        tables.insert(&t, std::slice::from_ref(&data)).await?;
        ids.push(t);
    }

    let mut rotations = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let r = tables.rotate_account_key(&account).await?;
        rotations.push(start.elapsed());
        assert_eq!(r.tables, count);
    }
    rotations.sort();
    let rotation = rotations[1];

    // The reference: re-key every file of the account (read, decrypt, encrypt under a new
    // table key, write).
    let volume: Arc<dyn ObjectStore> = Arc::clone(tables.volume());
    let files: Vec<_> = volume
        .list(Some(&Path::from("acct/acme")))
        .try_collect()
        .await?;
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut rewritten = 0usize;
    for f in &files {
        let path = f.location.to_string();
        let Some(table) = path.split("/tbl/").nth(1).and_then(|r| r.split('/').next()) else {
            continue;
        };
        let old = tables
            .file_keys(&tern_storage::layout::TableId::new(table)?)
            .await?;
        let plain = tern_crypto::get_decrypted(&volume, &f.location, old.as_ref()).await?;
        let new = TableFileKeys::new(Arc::new(DataKey::generate(&SystemRandom::default())?));
        let target = Path::from(format!("rekeyed/{path}"));
        tern_crypto::put_encrypted(
            volume.as_ref(),
            &target,
            &new,
            &plain,
            &EncryptOptions::default(),
            object_store::PutOptions::default(),
        )
        .await?;
        bytes += f.size;
        rewritten += 1;
    }
    let rewrite = start.elapsed();

    for t in &ids {
        let r = tables.scan(t, &ScanRequest::default()).await?;
        assert_eq!(r.rows(), rows, "{t}");
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "account key rotation: {count} tables of {rows} rows ({rewritten} files, {:.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  rotate (metadata only, median of 3):   {:>10.2} ms  ({:.3} ms per table)",
        ms(rotation),
        ms(rotation) / count as f64
    );
    println!(
        "  reference: re-key every file:          {:>10.2} ms",
        ms(rewrite)
    );
    println!(
        "  ratio reference / rotation:            {:>10.1}x",
        rewrite.as_secs_f64() / rotation.as_secs_f64().max(1e-9)
    );
    Ok(())
}
