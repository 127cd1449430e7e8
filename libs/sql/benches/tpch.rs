//! TPC-H-style queries through Tern SQL against DataFusion over the same rows as plain,
//! unencrypted Parquet files, in the same run; and `count(*)` answered from metadata.
//!
//! ```text
//! cargo bench -p tern-sql --bench tpch
//! TERN_BENCH_ROWS=2000000 TERN_BENCH_RUNS=5 cargo bench -p tern-sql --bench tpch
//! TERN_BENCH_EXPLAIN=1 cargo bench -p tern-sql --bench tpch   # EXPLAIN ANALYZE on both sides
//! ```
//!
//! `lineitem` (TERN_BENCH_ROWS rows, default 10 000 000, inserted TERN_BENCH_BATCH rows at
//! a time: one micro-partition each) and `orders` (a quarter as many) are loaded once into
//! a Tern database (encrypted micro-partitions, folder volume) and written as the same
//! batches to plain Parquet files with the writer settings Tern's files have (ZSTD level 1,
//! 64 Ki-row row groups), so that the ratio measures what Tern adds (decryption, its scan
//! and pruning), not a compression choice (`ArrowWriter`'s defaults are uncompressed, 1 Mi-row row
//! groups). Each query runs TERN_BENCH_RUNS times on each side; the
//! medians are printed with the ratio plain ÷ Tern (1.0: as fast as plain Parquet; target
//! ≥ 0.7). Both sides must give the same answer, or the program fails.

#![allow(clippy::print_stdout)] // a benchmark program: printing is its output

#[path = "../../table/benches/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::BoxError;
use tern_sql::datafusion;
use tern_sql::datafusion::arrow::array::RecordBatch as DfBatch;
use tern_sql::datafusion::physical_plan::collect;
use tern_sql::datafusion::prelude::{ParquetReadOptions, SessionContext};
use tern_sql::{SqlSession, TernScanExec};
use tern_storage::layout::DatabaseId;

const QUERIES: &[(&str, &str)] = &[
    (
        "Q1 (pricing summary)",
        "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, \
         sum(l_extendedprice) AS sum_base_price, \
         sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, \
         sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge, \
         avg(l_quantity) AS avg_qty, avg(l_discount) AS avg_disc, count(*) AS count_order \
         FROM lineitem WHERE l_shipdate <= DATE '1998-09-02' \
         GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
    ),
    (
        "Q6 (forecast revenue)",
        "SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem \
         WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' \
         AND l_discount >= 0.05 AND l_discount <= 0.07 AND l_quantity < 24",
    ),
    (
        "join (Q12-like)",
        "SELECT o_orderpriority, count(*) AS lines, sum(l_quantity) AS qty \
         FROM orders JOIN lineitem ON o_orderkey = l_orderkey \
         WHERE l_shipdate >= DATE '1995-01-01' AND l_shipdate < DATE '1996-01-01' \
         GROUP BY o_orderpriority ORDER BY o_orderpriority",
    ),
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so every run loads the same rows.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Days since 1970-01-01 of 1992-01-01 and the span TPC-H's dates cover.
const DAY_1992: i32 = 8035;
const DATE_SPAN: u64 = 2557;

fn lineitem(from: usize, n: usize, orders: usize, rng: &mut Rng) -> Result<RecordBatch, BoxError> {
    let flags = ["A", "N", "R"];
    let status = ["F", "O"];
    let mut orderkey = Vec::with_capacity(n);
    let (mut qty, mut price, mut disc, mut tax) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut flag, mut st, mut ship) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for i in from..from + n {
        orderkey.push(i64::try_from(i % orders)?);
        let q = 1 + rng.below(50) as i64;
        qty.push(q as f64);
        price.push(q as f64 * (900.0 + rng.below(100_000) as f64 / 100.0));
        disc.push(rng.below(11) as f64 / 100.0);
        tax.push(rng.below(9) as f64 / 100.0);
        flag.push(flags[rng.below(3) as usize]);
        st.push(status[rng.below(2) as usize]);
        ship.push(DAY_1992 + i32::try_from(rng.below(DATE_SPAN))?);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(orderkey)),
        Arc::new(Float64Array::from(qty)),
        Arc::new(Float64Array::from(price)),
        Arc::new(Float64Array::from(disc)),
        Arc::new(Float64Array::from(tax)),
        Arc::new(StringArray::from(flag)),
        Arc::new(StringArray::from(st)),
        Arc::new(Date32Array::from(ship)),
    ];
    Ok(RecordBatch::try_new(lineitem_schema(), columns)?)
}

fn lineitem_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("l_orderkey", DataType::Int64, false),
        Field::new("l_quantity", DataType::Float64, true),
        Field::new("l_extendedprice", DataType::Float64, true),
        Field::new("l_discount", DataType::Float64, true),
        Field::new("l_tax", DataType::Float64, true),
        Field::new("l_returnflag", DataType::Utf8, true),
        Field::new("l_linestatus", DataType::Utf8, true),
        Field::new("l_shipdate", DataType::Date32, true),
    ]))
}

fn orders(from: usize, n: usize, rng: &mut Rng) -> Result<RecordBatch, BoxError> {
    let priorities = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"];
    let keys: Vec<i64> = (from..from + n)
        .map(i64::try_from)
        .collect::<Result<_, _>>()?;
    let prio: Vec<&str> = (0..n).map(|_| priorities[rng.below(5) as usize]).collect();
    let dates: Vec<i32> = (0..n)
        .map(|_| Ok(DAY_1992 + i32::try_from(rng.below(DATE_SPAN))?))
        .collect::<Result<_, BoxError>>()?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("o_orderkey", DataType::Int64, false),
        Field::new("o_orderpriority", DataType::Utf8, true),
        Field::new("o_orderdate", DataType::Date32, true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(StringArray::from(prio)),
            Arc::new(Date32Array::from(dates)),
        ],
    )?)
}

/// Loads `batches` into the Tern table `name` (one insert each) and writes them as
/// numbered Parquet files under `plain/<name>/`.
async fn load(
    tables: &tern_table::Tables,
    db: &DatabaseId,
    plain: &std::path::Path,
    name: &str,
    mut next: impl FnMut(usize) -> Result<Option<RecordBatch>, BoxError>,
) -> Result<(usize, u64), BoxError> {
    let table = tables.find_table(db, "public", name)?;
    let dir = plain.join(name);
    std::fs::create_dir_all(&dir)?;
    let (mut files, mut plain_bytes) = (0, 0);
    while let Some(batch) = next(files)? {
        tables
            .insert(&table.id, std::slice::from_ref(&batch))
            .await?;
        let path = dir.join(format!("{files:05}.parquet"));
        let props = tern_table::mp::writer_props(&tern_table::mp::WriteOptions::default())?;
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path)?,
            batch.schema(),
            Some(props),
        )?;
        w.write(&batch)?;
        w.close()?;
        plain_bytes += std::fs::metadata(&path)?.len();
        files += 1;
    }
    Ok((files, plain_bytes))
}

/// Every cell of an answer as text, numbers rounded so that the order of a float sum
/// (which differs between plans) does not count as a different answer.
fn cells(batches: &[DfBatch]) -> Result<Vec<String>, BoxError> {
    let text = datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string();
    Ok(text
        .split(['|', '\n'])
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with('+'))
        .map(|c| match c.parse::<f64>() {
            Ok(x) => format!("{:.6e}", x),
            Err(_) => c.to_string(),
        })
        .collect())
}

async fn plain_answer(ctx: &SessionContext, sql: &str) -> Result<Vec<DfBatch>, BoxError> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

async fn tern_answer(s: &SqlSession, sql: &str) -> Result<Vec<DfBatch>, BoxError> {
    Ok(s.run(sql).await?.collect().await?)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let rows = env_usize("TERN_BENCH_ROWS", 10_000_000);
    let batch = env_usize("TERN_BENCH_BATCH", 500_000).clamp(1, rows.max(1));
    let runs = env_usize("TERN_BENCH_RUNS", 3).max(1);
    let order_rows = (rows / 4).max(1);
    let dir = tempfile::tempdir()?;
    let tables = Arc::new(common::deployment(
        &dir.path().join("tern"),
        Default::default(),
    )?);
    let db = DatabaseId::new("db1")?;
    let plain = dir.path().join("plain");
    let session = SqlSession::new(Arc::clone(&tables), db.clone());
    for ddl in [
        "CREATE TABLE lineitem (l_orderkey BIGINT NOT NULL, l_quantity DOUBLE, \
         l_extendedprice DOUBLE, l_discount DOUBLE, l_tax DOUBLE, l_returnflag VARCHAR, \
         l_linestatus VARCHAR, l_shipdate DATE)",
        "CREATE TABLE orders (o_orderkey BIGINT NOT NULL, o_orderpriority VARCHAR, \
         o_orderdate DATE)",
    ] {
        tern_answer(&session, ddl).await?;
    }

    let started = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (li_files, li_plain) = load(&tables, &db, &plain, "lineitem", |i| {
        let from = i * batch;
        (from < rows)
            .then(|| lineitem(from, batch.min(rows - from), order_rows, &mut rng))
            .transpose()
    })
    .await?;
    let (o_files, _) = load(&tables, &db, &plain, "orders", |i| {
        let from = i * batch;
        (from < order_rows)
            .then(|| orders(from, batch.min(order_rows - from), &mut rng))
            .transpose()
    })
    .await?;
    println!(
        "loaded {rows} lineitem rows ({li_files} micro-partitions, {:.0} MB as plain Parquet) and {order_rows} orders ({o_files}) in {:.1} s",
        li_plain as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let plain_ctx = SessionContext::new();
    for name in ["lineitem", "orders"] {
        plain_ctx
            .register_parquet(
                name,
                plain.join(name).to_string_lossy().as_ref(),
                ParquetReadOptions::default(),
            )
            .await?;
    }
    println!(
        "{} partitions per scan on both sides; {runs} runs each, medians",
        session.context().state().config().target_partitions()
    );
    println!(
        "{:<24} {:>12} {:>14} {:>22}",
        "query", "Tern SQL", "plain Parquet", "plain ÷ Tern (≥ 0.70)"
    );
    let mut worst = f64::INFINITY;
    for (name, sql) in QUERIES {
        let want = cells(&plain_answer(&plain_ctx, sql).await?)?;
        let got = cells(&tern_answer(&session, sql).await?)?;
        if got != want {
            return Err(format!("{name}: Tern answered {got:?}, plain Parquet {want:?}").into());
        }
        if std::env::var_os("TERN_BENCH_EXPLAIN").is_some() {
            let explain = format!("EXPLAIN ANALYZE {sql}");
            for (side, plan) in [
                ("Tern", tern_answer(&session, &explain).await?),
                ("plain", plain_answer(&plain_ctx, &explain).await?),
            ] {
                println!(
                    "{name}, {side}:\n{}",
                    datafusion::arrow::util::pretty::pretty_format_batches(&plan)?
                );
            }
        }
        let (mut t, mut p) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let s = Instant::now();
            tern_answer(&session, sql).await?;
            t.push(s.elapsed());
            let s = Instant::now();
            plain_answer(&plain_ctx, sql).await?;
            p.push(s.elapsed());
        }
        let (t, p) = (median(t), median(p));
        let ratio = p.as_secs_f64() / t.as_secs_f64();
        worst = worst.min(ratio);
        println!(
            "{name:<24} {:>9.1} ms {:>11.1} ms {:>17.2}{}",
            ms(t),
            ms(p),
            ratio,
            if ratio >= 0.7 { "" } else { "  (below)" }
        );
    }
    println!("worst ratio {worst:.2} (target ≥ 0.70)");

    // count(*) from metadata: no file is read.
    let df = session
        .context()
        .sql("SELECT count(*) FROM lineitem")
        .await?;
    let plan = df.create_physical_plan().await?;
    let s = Instant::now();
    let out = collect(Arc::clone(&plan), session.context().task_ctx()).await?;
    let took = s.elapsed();
    let files_read: usize = TernScanExec::in_plan(&plan)
        .iter()
        .filter_map(|p| p.metrics()?.sum_by_name("files_read"))
        .map(|m| m.as_usize())
        .sum();
    let n = out
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .ok_or("count(*) gave no number")?;
    if usize::try_from(n)? != rows || files_read != 0 {
        return Err(
            format!("count(*) = {n} with {files_read} files read; expected {rows}, none").into(),
        );
    }
    let s = Instant::now();
    plain_answer(&plain_ctx, "SELECT count(*) FROM lineitem").await?;
    let plain_took = s.elapsed();
    println!(
        "count(*) = {n}: {:.2} ms from metadata, {files_read} files read (plain Parquet, footers: {:.2} ms)",
        ms(took),
        ms(plain_took)
    );
    Ok(())
}
