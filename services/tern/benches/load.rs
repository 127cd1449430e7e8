//! Bulk load through the daemon vs the library, in one run, on the folder store.
//!
//! ```sh
//! cargo bench -p tern --bench load                       # 10 M rows (the issue's figure)
//! TERN_BENCH_ROWS=500000 cargo bench -p tern --bench load   # a quick run
//! ```
//!
//! Three figures for the same rows (id int64, customer utf8, amount float64), cut into
//! chunks of `TERN_BENCH_CHUNK_ROWS` (default 1 M), one commit per chunk:
//!
//! * **library**: `Tables::insert` of ready Arrow batches through the commit protocol
//!   (the table-format benchmark's insert path), and the same with the CSV parsing
//!   (`tern_table::load::read_csv`) the daemon does for uploads;
//! * **API**: the CSV chunks POSTed to a running `ternd` (`/rows?format=csv`);
//! * **CLI**: `tern load <table> <chunk files…>` against the same daemon.
//!
//! Each is printed as rows/s with its ratio to the library figure.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use tern_clock::SystemClock;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_meta::{AccountDpo, DatabaseDpo, MetaStore, SqliteOptions};
use tern_storage::StoreConfig;
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};
use tern_table::{ColumnDef, ColumnType, TableOptions, Tables};
use tern_txn::{TxnManager, TxnOptions};

mod common;

use common::{BoxError, TOKEN, post, start_daemon};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn columns() -> Vec<ColumnDef> {
    let c = |name: &str, ty, nullable| ColumnDef {
        name: name.into(),
        ty,
        nullable,
    };
    vec![
        c("id", ColumnType::Int64, false),
        c("customer", ColumnType::Utf8, true),
        c("amount", ColumnType::Float64, true),
    ]
}

fn batch(from: u64, to: u64) -> Result<RecordBatch, BoxError> {
    let ids: Vec<i64> = (from as i64..to as i64).collect();
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| format!("customer-{:05}", i % 10_000))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            ids.iter()
                .map(|i| (i % 1000) as f64 / 4.0)
                .collect::<Vec<_>>(),
        )),
    ];
    Ok(RecordBatch::try_from_iter(
        ["id", "customer", "amount"].into_iter().zip(arrays),
    )?)
}

fn csv(from: u64, to: u64) -> Vec<u8> {
    let mut s = Vec::with_capacity(((to - from) * 32) as usize);
    s.extend_from_slice(b"id,customer,amount\n");
    for i in from..to {
        let _ = writeln!(
            s,
            "{i},customer-{:05},{}",
            i % 10_000,
            (i % 1000) as f64 / 4.0
        );
    }
    s
}

async fn library(dir: &Path, rows: u64, chunk: u64, parse_csv: bool) -> Result<Duration, BoxError> {
    let id = DeploymentId::new("lib")?;
    let volume = tern_storage::open_store(&StoreConfig {
        url: format!("file://{}/volume", dir.display()),
        ..Default::default()
    })?;
    let meta = MetaStore::open_sqlite(dir.join("meta.db"), SqliteOptions::default())?;
    let keys = Arc::new(LocalKeyProvider::open_or_create(
        &dir.join("keys"),
        SystemRandom::shared(),
    )?);
    let txn = TxnManager::open(
        id.clone(),
        meta.clone(),
        volume.clone(),
        keys.clone(),
        SystemClock::shared(),
        TxnOptions::default(),
    )?;
    txn.recover().await?;
    let tables = Tables::new(
        id,
        volume,
        meta.clone(),
        keys,
        SystemClock::shared(),
        TableOptions::default(),
        Arc::new(txn),
    );
    let account = AccountId::new("bench")?;
    let db = DatabaseId::new("db1")?;
    meta.write(|tx| {
        tx.create_account(&AccountDpo::local(account.clone(), 0))?;
        tx.create_database(&DatabaseDpo::local(db.clone(), account.clone(), "sales", 0))
    })?;
    tables.create_schema(&db, "public").await?;
    let table = tables
        .create_table(&db, "public", "orders", columns())
        .await?;
    // Inputs are made before the clock starts: only the load is timed.
    let mut inputs = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + chunk).min(rows);
        inputs.push(if parse_csv {
            Err(csv(start, end))
        } else {
            Ok(batch(start, end)?)
        });
        start = end;
    }
    let t = Instant::now();
    for input in inputs {
        let batches = match input {
            Ok(b) => vec![b],
            Err(bytes) => {
                tern_table::load::read_csv(bytes.as_slice(), &columns(), "bench", 64 * 1024)?
            }
        };
        tables.insert(&table, &batches).await?;
    }
    Ok(t.elapsed())
}

async fn make_table(http: &reqwest::Client, base: &str, table: &str) -> Result<(), BoxError> {
    let _ = post(
        http,
        &format!("{base}/v1/accounts"),
        br#"{"name":"bench"}"#.to_vec(),
        "application/json",
    )
    .await;
    let _ = post(
        http,
        &format!("{base}/v1/accounts/bench/databases"),
        br#"{"name":"sales"}"#.to_vec(),
        "application/json",
    )
    .await;
    let body = serde_json::json!({"name": table, "columns": [
        {"name":"id","type":"int64","nullable":false},{"name":"customer","type":"utf8"},{"name":"amount","type":"float64"}]});
    post(
        http,
        &format!("{base}/v1/accounts/bench/databases/sales/schemas/public/tables"),
        body.to_string().into_bytes(),
        "application/json",
    )
    .await?;
    Ok(())
}

async fn count(http: &reqwest::Client, base: &str, table: &str) -> Result<u64, BoxError> {
    let v = post(
        http,
        &format!("{base}/v1/accounts/bench/databases/sales/schemas/public/tables/{table}/scan"),
        br#"{"columns":["id"],"limit":0}"#.to_vec(),
        "application/json",
    )
    .await?;
    v["matched"].as_u64().ok_or_else(|| "no count".into())
}

#[allow(clippy::print_stdout)] // a benchmark program's report
fn report(name: &str, rows: u64, took: Duration, reference: Option<f64>) -> f64 {
    let rate = rows as f64 / took.as_secs_f64();
    let ratio = reference
        .map(|r| format!("  {:>6.2}× library", rate / r))
        .unwrap_or_default();
    println!(
        "{name:<44} {rows:>10} rows {:>8.2} s {rate:>12.0} rows/s{ratio}",
        took.as_secs_f64()
    );
    rate
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tern_storage::config::install_tls_provider();
    let rows = env_u64("TERN_BENCH_ROWS", 10_000_000);
    let chunk = env_u64("TERN_BENCH_CHUNK_ROWS", 1_000_000).max(1);
    let scratch = tempfile::Builder::new()
        .prefix("tern-load-bench-")
        .tempdir_in(
            std::env::var("CARGO_TARGET_TMPDIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )?;
    let root = scratch.path();
    #[allow(clippy::print_stdout)]
    {
        println!(
            "bulk load: {rows} rows in chunks of {chunk} (one commit each), folder store under {}",
            root.display()
        );
    }
    let ternd = common::release_binary("ternd")?;
    let tern = common::release_binary("tern")?;

    std::fs::create_dir_all(root.join("lib"))?;
    let lib = library(&root.join("lib"), rows, chunk, false).await?;
    let lib_rate = report("library: Tables::insert (Arrow batches)", rows, lib, None);
    std::fs::create_dir_all(root.join("lib-csv"))?;
    let lib_csv = library(&root.join("lib-csv"), rows, chunk, true).await?;
    report(
        "library: read_csv + Tables::insert",
        rows,
        lib_csv,
        Some(lib_rate),
    );

    std::fs::create_dir_all(root.join("daemon"))?;
    let d = start_daemon(
        &root.join("daemon"),
        &ternd,
        "",
        "max_body_bytes = 1073741824\n",
        "load",
    )?;
    let http = reqwest::Client::new();
    make_table(&http, &d.url, "api").await?;
    let mut bodies = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + chunk).min(rows);
        bodies.push(csv(start, end));
        start = end;
    }
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let url = format!(
        "{}/v1/accounts/bench/databases/sales/schemas/public/tables/api/rows?format=csv",
        d.url
    );
    let t = Instant::now();
    for b in bodies.drain(..) {
        post(&http, &url, b, "text/csv").await?;
    }
    let api = t.elapsed();
    if count(&http, &d.url, "api").await? != rows {
        return Err("the API load lost rows".into());
    }
    report(
        &format!(
            "API: POST CSV to ternd ({:.0} MiB)",
            bytes as f64 / 1048576.0
        ),
        rows,
        api,
        Some(lib_rate),
    );

    make_table(&http, &d.url, "cli").await?;
    let mut files = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + chunk).min(rows);
        let f = root.join(format!("chunk-{start}.csv"));
        std::fs::write(&f, csv(start, end))?;
        files.push(f);
        start = end;
    }
    let t = Instant::now();
    let out = Command::new(&tern)
        .args(["load", "bench.sales.cli", "--url", &d.url, "--token", TOKEN])
        .args(&files)
        .stderr(Stdio::null())
        .output()?;
    let cli = t.elapsed();
    if !out.status.success() {
        return Err(format!("tern load failed: {}", String::from_utf8_lossy(&out.stdout)).into());
    }
    if count(&http, &d.url, "cli").await? != rows {
        return Err("the CLI load lost rows".into());
    }
    report(
        "CLI: tern load <chunk files> into ternd",
        rows,
        cli,
        Some(lib_rate),
    );
    drop(d);
    Ok(())
}
