//! Apply monitoring's cost (issue 20), measured in one run:
//!
//! * **apply throughput, monitoring on vs off**: two in-process deployments on the folder
//!   store (every worker as in the daemon); rounds of `TERN_BENCH_TXNS` (200) small
//!   transactions committed on d1 at once, timed from the first commit until d2's replica
//!   has applied the last; rounds alternate on/off (`Agents::set_enabled`), and the
//!   medians are compared. Target: on ≥ 0.98 × off.
//! * **the hot path itself**: ns per publication (claim a block, publish one unit) on one
//!   thread and on 8, beside the time one applied transaction took in the run above.
//!
//! Environment: `TERN_BENCH_TXNS` (200), `TERN_BENCH_ROUNDS` (4 per side).

#![allow(clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use common::{BoxError, Pair, env_usize, make_global, pair};
use tern_meta::{ColumnDef, ColumnType};
use tern_monitor::{AgentKind, Agents, Unit};

fn batch(first: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from_iter_values(first..first + 10))],
    )
    .unwrap_or_else(|e| panic!("batch: {e}"))
}

async fn caught_up(p: &Pair) -> Result<(), BoxError> {
    common::caught_up_table(
        p,
        &p.table,
        Duration::from_secs(300),
        Duration::from_millis(2),
    )
    .await
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn throughput(root: &std::path::Path) -> Result<f64, BoxError> {
    let txns = env_usize("TERN_BENCH_TXNS", 200);
    let rounds = env_usize("TERN_BENCH_ROUNDS", 4);
    let cols = vec![ColumnDef {
        name: "id".into(),
        ty: ColumnType::Int64,
        nullable: false,
    }];
    let mut p = pair(root, Duration::from_millis(20), "t", cols).await?;
    p.d1.tables.insert(&p.table, &[batch(0)]).await?;
    make_global(&mut p).await?;
    p.d2.repl.create_replica(&p.a2, "sales", &p.group, None)?;
    caught_up(&p).await?;
    let Pair { d1, d2, table, .. } = &p;
    println!(
        "apply throughput: {rounds} rounds per side of {txns} transactions (10 rows each), committed on d1 at once, until applied on d2 (folder store, poll/ship interval 20 ms)"
    );
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut next = 1_000i64;
    // Warm-up round (not counted), then alternate so that drift hits both sides alike.
    for round in 0..(2 * rounds + 1) {
        let enabled = round % 2 == 1;
        d1.repl.agents().set_enabled(enabled);
        d2.repl.agents().set_enabled(enabled);
        let start = Instant::now();
        for _ in 0..txns {
            d1.tables.insert(table, &[batch(next)]).await?;
            d1.repl.committed();
            next += 10;
        }
        caught_up(&p).await?;
        let rate = txns as f64 / start.elapsed().as_secs_f64();
        if round == 0 {
            println!("  warm-up: {rate:.1} txn/s");
            continue;
        }
        println!(
            "  round {round}: monitoring {}: {rate:.1} txn/s",
            if enabled { "on " } else { "off" }
        );
        if enabled {
            on.push(rate)
        } else {
            off.push(rate)
        }
    }
    let (m_on, m_off) = (median(&mut on), median(&mut off));
    println!(
        "apply throughput, median: on {m_on:.1} txn/s, off {m_off:.1} txn/s → ratio {:.3} (target ≥ 0.98)",
        m_on / m_off
    );
    Ok(1.0 / m_on)
}

fn publish_cost(threads: usize) -> f64 {
    const N: u64 = 2_000_000;
    let agents = Arc::new(Agents::default());
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let a = Arc::clone(&agents);
            std::thread::spawn(move || {
                for i in 0..N {
                    a.pool(AgentKind::Apply).claim().publish(&Unit {
                        rows: i & 63,
                        bytes: i,
                        files: 1,
                        latency_ms: Some(i & 1023),
                    });
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap_or_else(|_| panic!("publisher panicked"));
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::Builder::new()
        .prefix("tern-monitor-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let per_txn_s = rt.block_on(throughput(scratch.path()))?;
    let one = publish_cost(1);
    let eight = publish_cost(8);
    println!(
        "hot path: {one:.1} ns per publication on 1 thread, {eight:.1} ns per publication per thread with 8 threads sharing a pool; one applied transaction took {:.0} µs → publication overhead {:.4} % (target ≤ 2 %)",
        per_txn_s * 1e6,
        one / (per_txn_s * 1e9) * 100.0
    );
    Ok(())
}
