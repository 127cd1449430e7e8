//! Memory bounded by design: peak RSS of a real `ternd` while it loads a large table in
//! one streamed request and while it scans the table back, against the 512 MiB bound.
//!
//! ```sh
//! cargo bench -p tern --bench memory                                  # 256 MiB (CI)
//! TERN_BENCH_LOAD_BYTES=10GiB cargo bench -p tern --bench memory      # the issue's figure
//! TERN_BENCH_FORMAT=json TERN_BENCH_LOAD_BYTES=1GiB cargo bench -p tern --bench memory
//! ```
//!
//! The daemon runs on the folder store. The body is generated while it is sent (the bench
//! holds no more than a chunk of it): `TERN_BENCH_LOAD_BYTES` of rows (id int64, customer
//! utf8, amount float64, note utf8) in `TERN_BENCH_FORMAT` (`csv` default, `ndjson`, or
//! `json` — one JSON array of row objects). Then a fresh daemon on the same folders
//! scans the whole table back through the API (`TERN_BENCH_SCAN_FORMAT`, `csv` default,
//! or `json`/`ndjson`), the client counting rows as they arrive. Each phase runs in its own
//! daemon process, so each peak (`VmHWM` of `/proc/<pid>/status`, read when the phase
//! ends, plus samples of `VmRSS` while it runs) is that phase's alone. Each peak is printed
//! beside the bound as a ratio; the program exits non-zero when a peak is above it
//! (`TERN_BENCH_RSS_BOUND_MIB`, default 512).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

mod common;

use common::{BoxError, TOKEN, call, start_daemon};

/// Scans answer every row of the table.
const MAX_SCAN_ROWS: &str = "max_scan_rows = 9223372036854775807\n";

const TABLE: &str = "/v1/accounts/bench/databases/sales/schemas/public/tables/big";

/// A size like `256MiB`, `10GiB`, `1.5GB` or a plain number of bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().replace('_', "");
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s.as_str(), ""), |i| s.split_at(i));
    let n: f64 = num.trim().parse().ok()?;
    let m = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        _ => return None,
    };
    Some((n * m) as u64)
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A `VmHWM`/`VmRSS`-style line of `/proc/<pid>/status`, in bytes.
fn proc_kib(pid: u32, field: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed status line")?
        .parse()?;
    Ok(kib * 1024)
}

/// Samples `VmRSS` every 100 ms while a phase runs; the largest sample.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&max));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(rss) = proc_kib(pid, "VmRSS:") {
                    m.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, max, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.max.load(Ordering::Relaxed)
    }
}

/// The rows of the load, generated a chunk at a time while the body is sent.
struct Rows {
    format: String,
    target: u64,
    sent: Arc<AtomicU64>,
    next_id: u64,
    started: bool,
    finished: bool,
}

const NOTE: &str = "a note long enough to make the rows of this benchmark about a hundred bytes";

impl Rows {
    fn chunk(&mut self) -> Option<Bytes> {
        use std::fmt::Write as _;
        if self.finished {
            return None;
        }
        let mut s = String::with_capacity(1 << 20);
        if !self.started {
            self.started = true;
            match self.format.as_str() {
                "csv" => s.push_str("id,customer,amount,note\n"),
                "json" => s.push('['),
                _ => {}
            }
        }
        while s.len() < (1 << 20) - 256 {
            if self.sent.load(Ordering::Relaxed) + s.len() as u64 >= self.target {
                self.finished = true;
                break;
            }
            let i = self.next_id;
            self.next_id += 1;
            let (customer, amount) = (i % 10_000, (i % 1000) as f64 / 4.0);
            let _ = match self.format.as_str() {
                "csv" => writeln!(s, "{i},customer-{customer:05},{amount},{NOTE} {i}"),
                "json" => writeln!(
                    s,
                    "{}{{\"id\":{i},\"customer\":\"customer-{customer:05}\",\"amount\":{amount},\"note\":\"{NOTE} {i}\"}}",
                    if i == 0 { "" } else { "," }
                ),
                _ => writeln!(
                    s,
                    "{{\"id\":{i},\"customer\":\"customer-{customer:05}\",\"amount\":{amount},\"note\":\"{NOTE} {i}\"}}"
                ),
            };
        }
        if self.finished && self.format == "json" {
            s.push(']');
        }
        self.sent.fetch_add(s.len() as u64, Ordering::Relaxed);
        Some(Bytes::from(s))
    }
}

#[allow(clippy::print_stdout)] // a benchmark program's report
fn report(phase: &str, hwm: u64, sampled: u64, bound: u64, detail: &str) -> bool {
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "{phase:<6} peak RSS {:>8.1} MiB (VmHWM; sampled VmRSS max {:>7.1} MiB)   bound {:>5.0} MiB   ratio {:.2}   {detail}",
        mib(hwm),
        mib(sampled),
        mib(bound),
        hwm as f64 / bound as f64
    );
    hwm <= bound
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    tern_storage::config::install_tls_provider();
    let target = parse_size(&env("TERN_BENCH_LOAD_BYTES", "256MiB"))
        .ok_or("TERN_BENCH_LOAD_BYTES: a size like 256MiB or 10GiB")?;
    let format = env("TERN_BENCH_FORMAT", "csv");
    let scan_format = env("TERN_BENCH_SCAN_FORMAT", "csv");
    let bound: u64 = env("TERN_BENCH_RSS_BOUND_MIB", "512").parse::<u64>()? << 20;
    let (content_type, query) = match format.as_str() {
        "csv" => ("text/csv", "?format=csv"),
        "ndjson" => ("application/x-ndjson", "?format=ndjson"),
        "json" => ("application/json", ""),
        other => return Err(format!("TERN_BENCH_FORMAT {other:?}: csv, ndjson or json").into()),
    };
    let scratch = tempfile::Builder::new()
        .prefix("tern-memory-bench-")
        .tempdir_in(
            std::env::var("TERN_BENCH_DIR")
                .or_else(|_| std::env::var("CARGO_TARGET_TMPDIR"))
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )?;
    let root = scratch.path();
    #[allow(clippy::print_stdout)]
    {
        println!(
            "memory: load {:.2} GiB of {format} in one streamed request, scan it back as {scan_format}; ternd on a folder store under {}",
            target as f64 / 1073741824.0,
            root.display()
        );
    }
    let ternd = common::release_binary("ternd")?;
    let http = reqwest::Client::new();

    // Load.
    let d = start_daemon(root, &ternd, "", MAX_SCAN_ROWS, "load")?;
    let _ = call(
        &http,
        &format!("{}/v1/accounts", d.url),
        r#"{"name":"bench"}"#.into(),
    )
    .await?;
    call(
        &http,
        &format!("{}/v1/accounts/bench/databases", d.url),
        r#"{"name":"sales"}"#.into(),
    )
    .await?;
    call(
        &http,
        &format!(
            "{}/v1/accounts/bench/databases/sales/schemas/public/tables",
            d.url
        ),
        serde_json::json!({"name": "big", "columns": [
            {"name":"id","type":"int64","nullable":false},
            {"name":"customer","type":"utf8"},
            {"name":"amount","type":"float64"},
            {"name":"note","type":"utf8"}]})
        .to_string(),
    )
    .await?;
    let sent = Arc::new(AtomicU64::new(0));
    let rows = Rows {
        format: format.clone(),
        target,
        sent: Arc::clone(&sent),
        next_id: 0,
        started: false,
        finished: false,
    };
    let body = futures::stream::unfold(rows, |mut r| async move {
        let c = r.chunk()?;
        Some((Ok::<_, std::io::Error>(c), r))
    });
    let sampler = Sampler::start(d.pid());
    let t = Instant::now();
    let resp = http
        .post(format!("{}{TABLE}/rows{query}", d.url))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    let status = resp.status();
    let answer: serde_json::Value = serde_json::from_slice(&resp.bytes().await?)?;
    let load_time = t.elapsed();
    if !status.is_success() {
        return Err(format!("load: {status} {answer}").into());
    }
    let load_hwm = proc_kib(d.pid(), "VmHWM:")?;
    let load_sampled = sampler.finish();
    let loaded_rows = answer["rows"].as_u64().unwrap_or(0);
    d.stop()?;
    let bytes = sent.load(Ordering::Relaxed);
    let load_ok = report(
        "load",
        load_hwm,
        load_sampled,
        bound,
        &format!(
            "{loaded_rows} rows, {:.2} GiB in {:.1} s ({:.0} MiB/s), {} files",
            bytes as f64 / 1073741824.0,
            load_time.as_secs_f64(),
            bytes as f64 / 1048576.0 / load_time.as_secs_f64(),
            answer["files_added"]
        ),
    );

    // Scan, in a fresh daemon.
    let d = start_daemon(root, &ternd, "", MAX_SCAN_ROWS, "scan")?;
    let sampler = Sampler::start(d.pid());
    let t = Instant::now();
    let mut resp = http
        .post(format!("{}{TABLE}/scan", d.url))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"format": scan_format}).to_string())
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(format!("scan: {} {}", resp.status(), resp.text().await?).into());
    }
    let (mut scanned_bytes, mut lines) = (0u64, 0u64);
    while let Some(c) = resp.chunk().await? {
        scanned_bytes += c.len() as u64;
        lines += c.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let scan_time = t.elapsed();
    let scan_hwm = proc_kib(d.pid(), "VmHWM:")?;
    let scan_sampled = sampler.finish();
    d.stop()?;
    let scanned_rows = match scan_format.as_str() {
        "csv" => lines.saturating_sub(1),
        "ndjson" => lines,
        _ => lines, // the json document: one row per line is not promised; shown as is
    };
    let scan_ok = report(
        "scan",
        scan_hwm,
        scan_sampled,
        bound,
        &format!(
            "{scanned_rows} rows, {:.2} GiB answer in {:.1} s ({:.0} MiB/s)",
            scanned_bytes as f64 / 1073741824.0,
            scan_time.as_secs_f64(),
            scanned_bytes as f64 / 1048576.0 / scan_time.as_secs_f64()
        ),
    );
    if scan_format != "json" && scanned_rows != loaded_rows {
        return Err(format!("scanned {scanned_rows} rows of {loaded_rows} loaded").into());
    }
    drop(scratch);
    Ok(if load_ok && scan_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
