//! Commits per second through the API, as a new user would load data: 8 clients, each
//! inserting one row per request into its own table, against a real `ternd` on the folder
//! store.
//!
//! ```sh
//! cargo bench -p tern --bench commits                          # 4000 commits per run
//! TERN_BENCH_COMMITS=1000 cargo bench -p tern --bench commits  # a quick run
//! TERN_BENCH_CLIENTS=16 cargo bench -p tern --bench commits
//! TERN_BENCH_TERND=/tmp/ternd-base cargo bench -p tern --bench commits   # another build
//! ```
//!
//! Two runs side by side, each on a fresh daemon: **durable** (the default: the folder
//! store fsyncs every file and its directory, the metadata store fsyncs its WAL at every
//! commit) and **fsync off on the volume** (`file://…?fsync=false`; the metadata store
//! stays durable). Each prints commits/s beside the target of 1000/s (issue 18) as a ratio,
//! the mean latency of one request, and where the commit protocol spent its time (from the
//! daemon's `/metrics`, per commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{BoxError, call, start_daemon};

/// Commits per second the issue asks for, with durable writes on.
const TARGET: f64 = 1000.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// `target/release/ternd`, built by cargo (a no-op when fresh), or the binary named by
/// `TERN_BENCH_TERND` (to measure another build, e.g. the base commit's, side by side).
fn ternd_binary() -> Result<PathBuf, BoxError> {
    if let Ok(path) = std::env::var("TERN_BENCH_TERND") {
        return Ok(PathBuf::from(path));
    }
    common::release_binary("ternd")
}

/// The commit protocol's phase counters from `/metrics` (seconds, summed over commits).
async fn phases(http: &reqwest::Client, base: &str) -> Result<HashMap<String, f64>, BoxError> {
    let text = http
        .get(format!("{base}/metrics?fresh=true"))
        .send()
        .await?
        .text()
        .await?;
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("tern_commit_phase_seconds_total{phase=\"")
            && let Some((phase, value)) = rest.split_once("\"} ")
        {
            out.insert(phase.to_string(), value.trim().parse().unwrap_or(0.0));
        }
    }
    Ok(out)
}

struct Run {
    commits: u64,
    took: Duration,
    latency_sum: Duration,
    phases: Vec<(String, f64)>,
}

async fn run(
    ternd: &Path,
    dir: &Path,
    volume_query: &str,
    clients: u64,
    commits: u64,
) -> Result<Run, BoxError> {
    let d = start_daemon(dir, ternd, volume_query, "", "commits")?;
    let http = reqwest::Client::new();
    let base = d.url.clone();
    call(
        &http,
        &format!("{base}/v1/accounts"),
        r#"{"name":"bench"}"#.into(),
    )
    .await?;
    call(
        &http,
        &format!("{base}/v1/accounts/bench/databases"),
        r#"{"name":"sales"}"#.into(),
    )
    .await?;
    let tables = format!("{base}/v1/accounts/bench/databases/sales/schemas/public/tables");
    for c in 0..clients {
        let body = serde_json::json!({"name": format!("t{c}"), "columns": [
            {"name":"id","type":"int64","nullable":false},{"name":"customer","type":"utf8"},{"name":"amount","type":"float64"}]});
        call(&http, &tables, body.to_string()).await?;
    }
    let per_client = commits.div_ceil(clients);
    let row = |i: u64| {
        format!(
            r#"{{"rows":[{{"id":{i},"customer":"customer-{i:05}","amount":{}.25}}]}}"#,
            i % 1000
        )
    };
    // Warm up (first commit of each table: keys fetched, connections opened).
    for c in 0..clients {
        call(&http, &format!("{tables}/t{c}/rows"), row(0)).await?;
    }
    let before = phases(&http, &base).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let url = format!("{tables}/t{c}/rows");
        tasks.push(tokio::spawn(async move {
            let mut latency = Duration::ZERO;
            for i in 1..=per_client {
                let t = Instant::now();
                call(&http, &url, row(i)).await?;
                latency += t.elapsed();
            }
            Ok::<_, BoxError>(latency)
        }));
    }
    let mut latency_sum = Duration::ZERO;
    for t in tasks {
        latency_sum += t.await??;
    }
    let took = started.elapsed();
    let after = phases(&http, &base).await?;
    let done = per_client * clients;
    let mut phases: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) / done as f64,
            )
        })
        .collect();
    phases.sort_by(|a, b| a.0.cmp(&b.0));
    // Every acknowledged row is there.
    for c in 0..clients {
        let v = call(
            &http,
            &format!("{tables}/t{c}/scan"),
            r#"{"columns":["id"],"limit":0}"#.into(),
        )
        .await?;
        if v["matched"].as_u64() != Some(per_client + 1) {
            return Err(format!("table t{c} lost rows: {v}").into());
        }
    }
    drop(d);
    Ok(Run {
        commits: done,
        took,
        latency_sum,
        phases,
    })
}

#[allow(clippy::print_stdout)] // a benchmark program's report
fn report(name: &str, r: &Run) {
    let rate = r.commits as f64 / r.took.as_secs_f64();
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|(k, v)| format!("{k} {:.2} ms", v * 1000.0))
        .collect();
    println!(
        "{name:<34} {:>6} commits {:>6.2} s {rate:>8.0} commits/s  target {TARGET:.0}/s  {:>5.2}×  latency {:.2} ms  per commit: {}",
        r.commits,
        r.took.as_secs_f64(),
        rate / TARGET,
        r.latency_sum.as_secs_f64() * 1000.0 / r.commits as f64,
        phases.join(", ")
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tern_storage::config::install_tls_provider();
    let clients = env_u64("TERN_BENCH_CLIENTS", 8).max(1);
    let commits = env_u64("TERN_BENCH_COMMITS", 4000).max(clients);
    let scratch = tempfile::Builder::new()
        .prefix("tern-commits-bench-")
        .tempdir_in(
            std::env::var("CARGO_TARGET_TMPDIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )?;
    let root = scratch.path();
    #[allow(clippy::print_stdout)]
    {
        println!(
            "commits through the API: {clients} clients, one row per request into a table each, {commits} commits per run, folder store under {}",
            root.display()
        );
    }
    let ternd = ternd_binary()?;
    let durable = run(&ternd, &root.join("durable"), "", clients, commits).await?;
    report("durable writes (default)", &durable);
    let fast = run(
        &ternd,
        &root.join("nofsync"),
        "?fsync=false",
        clients,
        commits,
    )
    .await?;
    report("volume fsync=false", &fast);
    Ok(())
}
