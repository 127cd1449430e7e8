//! `tern demo`: the product's whole failover cycle on local folders, with real `ternd`
//! processes (DESIGN.md §9–§10).
//!
//! ```text
//!  start deployments     d1 d2 d3 … (d1 makes the group's GMK; the others join its key
//!                        folder, each with its own master key)
//!  form the group        every pair linked both ways, as `tern group init` does
//!  global accounts       a1@d1 a2@d2 a3@d3 …: one account group, each with its own token
//!  create database       sales.public.orders on d1: load, query, delete + time travel
//!  group messages        membership and heartbeats crossed every channel
//!  replicate             sales → a database group; d2 follows d1 (hub), d3 (and d4…)
//!                        follow d2 (chain); each first refresh brings every row
//!  follow writes         batches on d1; the time until each replica shows them (the lag)
//!  kill the primary      SIGKILL d1 under a load of single-row inserts
//!  primary unavailable   every other member judges d1 unavailable (heartbeats stopped)
//!  failover              d2 promoted without --allow-data-loss: a majority voted; the
//!                        report's RTO, known loss and epoch
//!  writes on new primary batches on d2, followed by d3 (and d4…)
//!  old primary returns   d1 restarted with its same config: learns the new epoch, is a
//!                        fenced secondary of d2 (a write answers 409 naming d2)
//!  conflict records      what d1 committed but never shipped: listed; every write
//!                        acknowledged before the kill is on d2 or in exactly one record
//!  switchover            d1 primary again, planned: nothing lost, no conflict made
//!  final check           one more batch on d1; every replica's rows equal d1's
//!  traffic, stop         the message counters; SIGTERM, every daemon exits 0
//! ```
//!
//! Each step prints one line with its duration. Any wrong result fails the command with
//! the step's name; every daemon started is stopped either way (a failed run keeps its
//! folder and logs). Failover timings are short so that the demo is quick: heartbeats
//! every 200 ms, a silent peer unavailable after 2 s (a primary's lease: 1 s).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use tern_api as api;

use crate::client::{Client, ClientError};
use crate::output;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A step failed.
    #[error("demo step {step:?} failed: {reason}")]
    Step {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// An API call failed.
    #[error("demo step {step:?}: {source}")]
    Api {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: ClientError,
    },
}

fn step_err(step: &'static str) -> impl FnOnce(ClientError) -> DemoError {
    move |source| DemoError::Api { step, source }
}

fn fail(step: &'static str, reason: impl std::fmt::Display) -> DemoError {
    DemoError::Step {
        step,
        reason: reason.to_string(),
    }
}

const TOKEN: &str = "demo-operator-token-0123456789";
/// The longest any one wait of the demo may take.
const WAIT: Duration = Duration::from_secs(60);
/// `[replication]` failover timings of every daemon.
const HEARTBEAT_INTERVAL: &str = "200ms";
const UNAVAILABLE_AFTER: &str = "2s";
/// Rows per followed batch.
const BATCH: i64 = 100;
/// The replica database's name on every deployment but d1.
const REPLICA: &str = "sales_replica";

struct Node {
    id: String,
    account: String,
    child: Child,
    client: Client,
    log: PathBuf,
}

impl Node {
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waiting for something, at most [`WAIT`].
struct Deadline {
    step: &'static str,
    what: String,
    until: Instant,
}

impl Deadline {
    fn new(step: &'static str, what: impl Into<String>) -> Self {
        Self {
            step,
            what: what.into(),
            until: Instant::now() + WAIT,
        }
    }

    /// Sleeps `every`, or fails the step when the time is up.
    async fn tick(&self, every: Duration) -> Result<(), DemoError> {
        if Instant::now() > self.until {
            return Err(fail(
                self.step,
                format!("{} did not happen in {} s", self.what, WAIT.as_secs()),
            ));
        }
        tokio::time::sleep(every).await;
        Ok(())
    }
}

/// The workspace binary `name` (package and binary of one name) beside `tern`: `explicit`
/// when given; under `cargo run` built (or brought up to date) by cargo into the same
/// target folder first.
fn sibling_binary(name: &str, explicit: Option<PathBuf>) -> Result<PathBuf, DemoError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| fail("find binary", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| fail("find binary", "no folder of tern"))?;
    let path = dir.join(name);
    // Under `cargo run` the daemon beside us may be stale: let cargo decide (a no-op when
    // it is up to date). Otherwise use the one installed beside `tern`.
    let under_cargo = std::env::var_os("CARGO").is_some();
    if path.exists() && !under_cargo {
        return Ok(path);
    }
    // Build the daemon beside `tern`, into the same target dir.
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
    let target = dir
        .parent()
        .ok_or_else(|| fail("find binary", "no target folder"))?;
    output::note(&if path.exists() {
        format!("bringing {name} up to date (cargo build -p {name}, {profile})")
    } else {
        format!("{name} is not beside tern: building it (cargo build -p {name}, {profile})")
    });
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", name, "--bin", name, "--target-dir"])
        .arg(target);
    if profile == "release" {
        cmd.arg("--release");
    }
    // `cargo run -p tern` hands this process its package's variables (`CARGO_PKG_NAME`,
    // `CARGO_MANIFEST_DIR`, …). Passed on, they make this build's environment differ from a
    // top-level one, and build scripts that watch them (ring's) would rebuild ring and all
    // that depends on it here, and again at the next `cargo run`: each run would compile
    // for minutes. Under another package's process (a test's), its builds had them too.
    if std::env::var_os("CARGO_PKG_NAME").is_some_and(|n| n == env!("CARGO_PKG_NAME")) {
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && (k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        k,
                        "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
                    ))
            {
                cmd.env_remove(k);
            }
        }
    }
    let status = cmd.status().map_err(|e| fail("build binary", e))?;
    if !status.success() || !path.exists() {
        return Err(fail(
            "build binary",
            format!("{status}; build it with `cargo build -p {name}` and put it beside tern"),
        ));
    }
    Ok(path)
}

fn ternd_binary(explicit: Option<PathBuf>) -> Result<PathBuf, DemoError> {
    sibling_binary("ternd", explicit)
}

/// `tern selfcheck`: runs `tern-selfcheck` (the engine in one process; its own binary so
/// that `tern` does not link the engine) beside `tern`, its report and exit status as its.
pub fn selfcheck(dir: Option<PathBuf>, rows: u64, json: bool) -> Result<(), DemoError> {
    let exe = sibling_binary("tern-selfcheck", None)?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--rows", &rows.to_string()]);
    if let Some(d) = dir {
        cmd.arg("--dir").arg(d);
    }
    if json {
        cmd.arg("--json");
    }
    let status = cmd
        .status()
        .map_err(|e| fail("selfcheck", format!("{}: {e}", exe.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(fail("selfcheck", format!("tern-selfcheck {status}")))
    }
}

fn config(root: &Path, id: &str, all: &[String]) -> String {
    let h = root.join(id);
    let h = h.display();
    let join = if id == all[0] {
        String::new()
    } else {
        format!("join = \"{}/{}/keys\"\n", root.display(), all[0])
    };
    let mut s = format!(
        r#"deployment_id = "{id}"
region = "local-{id}"
cloud = "local"
listen = "127.0.0.1:0"
metadata_path = "{h}/meta.db"
operator_token = "{TOKEN}"
[volume]
url = "file://{h}/volume"
[replication]
url = "file://{h}/replication"
control_interval = "100ms"
heartbeat_interval = "{HEARTBEAT_INTERVAL}"
unavailable_after = "{UNAVAILABLE_AFTER}"
[keys]
kind = "local"
dir = "{h}/keys"
{join}[workers]
heartbeat_interval = "2s"
monitor_interval = "10s"
[messaging]
poll_interval = "100ms"
send_interval = "200ms"
[log]
format = "json"
level = "info"
"#
    );
    for p in all.iter().filter(|p| p.as_str() != id) {
        let _ = write!(
            s,
            "[[peers]]\nid = \"{p}\"\n[peers.bucket]\nurl = \"file://{}/{p}/replication\"\n",
            root.display()
        );
    }
    s
}

/// Starts deployment `id` (its config written, or written again unchanged), logging to
/// `log_name` in `root`.
fn start(
    step: &'static str,
    ternd: &Path,
    root: &Path,
    id: &str,
    all: &[String],
    log_name: &str,
) -> Result<Node, DemoError> {
    let cfg = root.join(format!("{id}.toml"));
    std::fs::write(&cfg, config(root, id, all)).map_err(|e| fail(step, e))?;
    let ready = root.join(format!("{id}.addr"));
    let _ = std::fs::remove_file(&ready);
    let log = root.join(log_name);
    let stderr = std::fs::File::create(&log).map_err(|e| fail(step, e))?;
    let child = Command::new(ternd)
        .arg("--config")
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| fail(step, format!("{}: {e}", ternd.display())))?;
    let mut node = Node {
        id: id.to_string(),
        account: format!("a{}", id.trim_start_matches('d')),
        child,
        client: Client::new("http://127.0.0.1:1", Some(TOKEN.into())),
        log,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(addr) = std::fs::read_to_string(&ready)
            && !addr.is_empty()
        {
            node.client = Client::new(&format!("http://{addr}"), Some(TOKEN.into()));
            return Ok(node);
        }
        if let Ok(Some(status)) = node.child.try_wait() {
            return Err(fail(
                step,
                format!(
                    "ternd {id} exited ({status}): {}",
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                ),
            ));
        }
        if Instant::now() > deadline {
            return Err(fail(
                step,
                format!("ternd {id} did not start in {} s", WAIT.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CITIES: [&str; 6] = ["Oslo", "Lima", "Pune", "Perth", "Quito", "Turin"];

fn sample_csv(rows: u64) -> Vec<u8> {
    let mut s = String::with_capacity(rows as usize * 40);
    s.push_str("id,customer,city,amount\n");
    for i in 0..rows {
        let _ = writeln!(
            s,
            "{i},customer-{:05},{},{}",
            i % 10_000,
            CITIES[(i % 6) as usize],
            (i % 1000) as f64 / 4.0
        );
    }
    s.into_bytes()
}

/// Rows `from..to` as the insert route's JSON.
fn rows_json(from: i64, to: i64) -> Value {
    let rows: Vec<Value> = (from..to)
        .map(|i| {
            json!({
                "id": i,
                "customer": format!("customer-{:05}", i % 10_000),
                "city": CITIES[i.rem_euclid(6) as usize],
                "amount": i.rem_euclid(1000) as f64 / 4.0,
            })
        })
        .collect();
    Value::Array(rows)
}

struct Report {
    steps: Vec<Value>,
    json: bool,
}

impl Report {
    fn step(&mut self, name: &str, started: Instant, detail: String) {
        self.step_with(name, started, detail, Value::Null);
    }
    /// A step with figures for the JSON report.
    fn step_with(&mut self, name: &str, started: Instant, detail: String, data: Value) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if !self.json {
            output::print(&format!("  ok  {name:<22} {ms:>9.1} ms  {detail}"));
        }
        let mut step = json!({"name": name, "millis": ms, "detail": detail});
        if !data.is_null() {
            step["data"] = data;
        }
        self.steps.push(step);
    }
    /// What the next step is about to do, said before it starts (on stderr: the JSON
    /// report on stdout stays one document), so a slow step is never a silent one.
    fn doing(&self, what: &str) {
        output::note(&format!("  ..  {what}"));
    }
    fn show(&self, text: &str) {
        if !self.json {
            output::print(text);
        }
    }
}

/// Runs the demo.
pub async fn run(
    dir: Option<PathBuf>,
    deployments: usize,
    rows: u64,
    ternd: Option<PathBuf>,
    json_out: bool,
) -> Result<(), DemoError> {
    if !(3..=9).contains(&deployments) {
        return Err(fail(
            "options",
            "--deployments must be 3..=9: a failover that risks no data needs a majority \
             of the group, so a group of three at least",
        ));
    }
    let rows = rows.max(1000);
    let mut temp = None;
    let root = match dir {
        Some(d) => {
            let run = d.join(format!("demo-{}", std::process::id()));
            std::fs::create_dir_all(&run)
                .map_err(|e| fail("folder", format!("{}: {e}", run.display())))?;
            run
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("tern-demo-")
                .tempdir()
                .map_err(|e| fail("folder", e))?;
            let p = t.path().to_path_buf();
            temp = Some(t);
            p
        }
    };
    let ternd = ternd_binary(ternd)?;
    // The demo's own time, not building ternd's.
    let began = Instant::now();
    let mut demo = Demo {
        ternd,
        root: root.clone(),
        ids: (1..=deployments).map(|i| format!("d{i}")).collect(),
        nodes: Vec::new(),
        tokens: Vec::new(),
        tables: Vec::new(),
        report: Report {
            steps: Vec::new(),
            json: json_out,
        },
        rows,
        next_id: i64::try_from(rows).unwrap_or(i64::MAX / 2),
    };
    demo.report.show(&format!(
        "tern demo — {deployments} deployments under {}; heartbeats every \
         {HEARTBEAT_INTERVAL}, a silent peer unavailable after {UNAVAILABLE_AFTER}",
        root.display()
    ));

    let result = demo.steps().await;
    // Stop every daemon, whatever happened.
    let t = Instant::now();
    let mut stopped = Vec::new();
    for n in &mut demo.nodes {
        if n.running() {
            let _ = Command::new("kill")
                .args(["-TERM", &n.child.id().to_string()])
                .status();
        }
    }
    for n in &mut demo.nodes {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Ok(Some(s)) = n.child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let clean = std::fs::read_to_string(&n.log)
            .unwrap_or_default()
            .contains("clean stop: no unfinished transactions");
        let log = n
            .log
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        stopped.push((
            n.id.clone(),
            log,
            status.is_some_and(|s| s.success()) && clean,
        ));
    }
    let result = result.and_then(|()| match stopped.iter().find(|(_, _, ok)| !ok) {
        Some((id, log, _)) => Err(fail(
            "stop",
            format!("{id} did not stop cleanly (see {log})"),
        )),
        None => Ok(()),
    });
    if let Err(e) = result {
        // Keep the folders and logs of a failed run.
        let kept = temp.map_or(root, tempfile::TempDir::keep);
        output::note(&format!(
            "the deployments' folders and logs are kept in {}",
            kept.display()
        ));
        return Err(e);
    }
    demo.report.step(
        "stop",
        t,
        format!(
            "SIGTERM: all {} exited 0 with no unfinished transactions",
            stopped.len()
        ),
    );
    if json_out {
        output::print(
            &serde_json::to_string_pretty(&json!({
                "folder": root.display().to_string(),
                "seconds": began.elapsed().as_secs_f64(),
                "steps": demo.report.steps,
            }))
            .unwrap_or_default(),
        );
    } else {
        output::print(&format!(
            "all {} steps passed in {:.1} s",
            demo.report.steps.len(),
            began.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// Writes of the load the primary is killed under.
struct Load {
    /// Ids whose insert was acknowledged.
    acked: Vec<i64>,
    /// The id whose insert had no answer (the daemon died under it: committed or not).
    unknown: Option<i64>,
    /// Inserts refused (no lease, …).
    refused: u64,
    /// The next free id.
    next: i64,
}

/// Single-row inserts one after the other until `stop` or the daemon is gone.
async fn write_load(
    client: Client,
    path: String,
    from: i64,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> Load {
    let mut load = Load {
        acked: Vec::new(),
        unknown: None,
        refused: 0,
        next: from,
    };
    while !stop.load(Ordering::Relaxed) {
        let id = load.next;
        load.next += 1;
        match client.post(&path, &rows_json(id, id + 1)).await {
            Ok(_) => {
                load.acked.push(id);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Err(ClientError::Api { .. }) => load.refused += 1,
            Err(_) => {
                load.unknown = Some(id);
                break;
            }
        }
    }
    load
}

/// `POST path` answering the status and the whole body (the client keeps only an error's
/// kind and message; a refused write's `error.redirect` is wanted here).
async fn raw_post(
    step: &'static str,
    base: &str,
    token: Option<&str>,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), DemoError> {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.map_err(|e| fail(step, e))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| fail(step, e))?;
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, v))
}

/// `n thing` or `n things`.
fn plural(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// min / median / max of `ms`.
fn spread(ms: &[f64]) -> String {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(lo), Some(mid), Some(hi)) => format!("{lo:.0}/{mid:.0}/{hi:.0} ms"),
        _ => "no sample".into(),
    }
}

/// A JSON scan answer read whole: its head, rows and tail (`tern_api::ScanHead`, `…Tail`).
/// The rows stay `Value`: their columns are the table's.
#[derive(Debug, serde::Deserialize)]
struct ScanAnswer {
    #[serde(flatten)]
    head: api::ScanHead,
    rows: Vec<Value>,
    #[serde(flatten)]
    tail: api::ScanTail,
}

impl ScanAnswer {
    /// Rows matching (`u64::MAX`: not known, the scan stopped at its limit).
    fn matched(&self) -> u64 {
        self.tail.matched.unwrap_or(u64::MAX)
    }
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().filter_map(|r| r["id"].as_i64()).collect()
}

/// The running group and what the demo made in it.
struct Demo {
    ternd: PathBuf,
    root: PathBuf,
    ids: Vec<String>,
    nodes: Vec<Node>,
    /// Each deployment's account token (index as `nodes`).
    tokens: Vec<Option<String>>,
    /// Each deployment's path of the replicated table (index as `nodes`).
    tables: Vec<String>,
    report: Report,
    rows: u64,
    /// The next id no row has.
    next_id: i64,
}

impl Demo {
    /// Deployment `i` with its account's token.
    fn tenant(&self, i: usize) -> Client {
        self.nodes[i]
            .client
            .with_token(self.tokens.get(i).cloned().flatten())
    }

    /// The API path of deployment `i`'s database of the group.
    fn database(&self, i: usize) -> String {
        let name = if i == 0 { "sales" } else { REPLICA };
        format!("/v1/accounts/{}/databases/{name}", self.nodes[i].account)
    }

    /// Rows of deployment `i`'s table (0 while it has none).
    async fn count(&self, step: &'static str, i: usize) -> Result<u64, DemoError> {
        let v: ScanAnswer = self
            .tenant(i)
            .post_as(
                &format!("{}/scan", self.tables[i]),
                &json!({"columns": ["id"], "limit": 0}),
            )
            .await
            .map_err(step_err(step))?;
        Ok(v.tail.matched.unwrap_or(0))
    }

    /// Every row of deployment `i`'s table, by id.
    async fn rows_of(&self, step: &'static str, i: usize) -> Result<Vec<Value>, DemoError> {
        let v: ScanAnswer = self
            .tenant(i)
            .post_as(&format!("{}/scan", self.tables[i]), &json!({}))
            .await
            .map_err(step_err(step))?;
        if v.tail.truncated {
            return Err(fail(step, format!("the scan of {} was cut", self.ids[i])));
        }
        let mut rows = v.rows;
        rows.sort_by_key(|r| r["id"].as_i64().unwrap_or(i64::MIN));
        Ok(rows)
    }

    /// Inserts rows `from..to` on deployment `i`, retrying while it answers 503 (a new
    /// primary waiting for its lease, a switchover's pause).
    async fn insert(
        &self,
        step: &'static str,
        i: usize,
        from: i64,
        to: i64,
    ) -> Result<(), DemoError> {
        let wait = Deadline::new(step, format!("{} taking writes", self.ids[i]));
        loop {
            match self
                .tenant(i)
                .post(&format!("{}/rows", self.tables[i]), &rows_json(from, to))
                .await
            {
                Ok(_) => return Ok(()),
                Err(ClientError::Api { status: 503, .. }) => {
                    wait.tick(Duration::from_millis(50)).await?;
                }
                Err(e) => return Err(DemoError::Api { step, source: e }),
            }
        }
    }

    /// `batches` batches on `primary`; per replica, the milliseconds from each batch's
    /// acknowledgement until the replica shows it.
    async fn follow(
        &mut self,
        step: &'static str,
        primary: usize,
        replicas: &[usize],
        batches: usize,
    ) -> Result<Vec<Vec<f64>>, DemoError> {
        let mut expected = self.count(step, primary).await?;
        let mut lags = vec![Vec::new(); replicas.len()];
        for _ in 0..batches {
            let from = self.next_id;
            self.next_id += BATCH;
            self.insert(step, primary, from, from + BATCH).await?;
            let acked = Instant::now();
            expected += BATCH as u64;
            let wait = Deadline::new(step, "every replica showing the batch");
            let mut pending: Vec<usize> = (0..replicas.len()).collect();
            loop {
                let mut still = Vec::new();
                for k in pending {
                    if self.count(step, replicas[k]).await? >= expected {
                        lags[k].push(acked.elapsed().as_secs_f64() * 1e3);
                    } else {
                        still.push(k);
                    }
                }
                pending = still;
                if pending.is_empty() {
                    break;
                }
                wait.tick(Duration::from_millis(5)).await?;
            }
        }
        Ok(lags)
    }

    /// Deployment `i`'s `show replication status`.
    async fn status(
        &self,
        step: &'static str,
        i: usize,
    ) -> Result<api::ReplicationStatus, DemoError> {
        self.nodes[i]
            .client
            .get_as("/v1/replication/status")
            .await
            .map_err(step_err(step))
    }

    /// Whom deployment `i`'s replica follows.
    async fn upstream(&self, step: &'static str, i: usize) -> Result<String, DemoError> {
        let s = self.status(step, i).await?;
        let name = if i == 0 { "sales" } else { REPLICA };
        Ok(s.replicas
            .into_iter()
            .find(|r| r.database == name)
            .map_or_else(|| "nobody".to_string(), |r| r.upstream))
    }

    /// How deployment `i` judges `peer`.
    async fn judges(&self, step: &'static str, i: usize, peer: &str) -> Result<String, DemoError> {
        let v: api::AvailabilityView = self.nodes[i]
            .client
            .get_as("/v1/availability")
            .await
            .map_err(step_err(step))?;
        Ok(v.peers
            .into_iter()
            .find(|p| p.peer == peer)
            .map_or_else(|| "not judged".to_string(), |p| p.state))
    }

    /// A one-row write to deployment `i`: its status and body.
    async fn probe_write(
        &mut self,
        step: &'static str,
        i: usize,
    ) -> Result<(u16, Value), DemoError> {
        let id = self.next_id;
        self.next_id += 1;
        raw_post(
            step,
            self.nodes[i].client.base(),
            self.tokens.get(i).cloned().flatten().as_deref(),
            &format!("{}/rows", self.tables[i]),
            &rows_json(id, id + 1),
        )
        .await
    }

    /// Waits until deployment `i`'s rows equal the primary `p`'s (answers them).
    async fn until_equal(
        &self,
        step: &'static str,
        p: usize,
        i: usize,
    ) -> Result<Vec<Value>, DemoError> {
        let wait = Deadline::new(
            step,
            format!("{}'s rows equal to {}'s", self.ids[i], self.ids[p]),
        );
        loop {
            let want = self.rows_of(step, p).await?;
            if self.rows_of(step, i).await.ok().as_ref() == Some(&want) {
                return Ok(want);
            }
            wait.tick(Duration::from_millis(200)).await?;
        }
    }

    /// The story, step by step (the daemons are stopped by the caller).
    async fn steps(&mut self) -> Result<(), DemoError> {
        let say = |r: &Report, what: &str| r.doing(what);
        say(
            &self.report,
            "starting one ternd per deployment on local folders",
        );
        self.start_all()?;
        say(
            &self.report,
            "linking the deployments into a group (channels both ways)",
        );
        self.form_group().await?;
        say(
            &self.report,
            "loading, querying and time-travelling a table on d1",
        );
        self.data_on_d1().await?;
        say(
            &self.report,
            "waiting for group messages and heartbeats to cross",
        );
        self.group_messages().await?;
        say(
            &self.report,
            "replicating the database to the other deployments",
        );
        self.replicate().await?;
        say(
            &self.report,
            "writing on d1 and following the replicas' lag",
        );
        self.follow_writes().await?;
        say(&self.report, "killing d1 (-9) under a write load");
        let load = self.kill_primary().await?;
        say(&self.report, "failing over to d2 by majority");
        let failover = self.failover().await?;
        say(&self.report, "writing on the new primary");
        self.new_primary().await?;
        say(&self.report, "bringing d1 back as a fenced secondary");
        self.old_primary_returns(&failover).await?;
        say(
            &self.report,
            "checking every acknowledged write against the conflict records",
        );
        self.conflicts(&load, &failover).await?;
        say(&self.report, "switching over back to d1 with nothing lost");
        self.switchover(&failover).await?;
        say(&self.report, "checking every replica equals the primary");
        self.final_check().await?;
        say(&self.report, "showing the traffic between the deployments");
        self.traffic().await
    }

    /// d1 first (it creates the group's GMK), then the others joining it.
    fn start_all(&mut self) -> Result<(), DemoError> {
        let step = "start deployments";
        let t = Instant::now();
        for id in self.ids.clone() {
            let node = start(
                step,
                &self.ternd,
                &self.root,
                &id,
                &self.ids,
                &format!("{id}.log"),
            )?;
            self.nodes.push(node);
        }
        let detail = self
            .nodes
            .iter()
            .map(|n| format!("{} at {} (pid {})", n.id, n.client.base(), n.child.id()))
            .collect::<Vec<_>>()
            .join(", ");
        self.report.step(
            step,
            t,
            format!("{} ternd processes: {detail}", self.nodes.len()),
        );
        Ok(())
    }

    /// Batches on d1 and how long each replica takes to show them.
    async fn follow_writes(&mut self) -> Result<(), DemoError> {
        let step = "follow writes";
        let t = Instant::now();
        let replicas: Vec<usize> = (1..self.nodes.len()).collect();
        let lags = self.follow(step, 0, &replicas, 5).await?;
        let detail = replicas
            .iter()
            .zip(&lags)
            .map(|(i, l)| format!("{} after {}", self.ids[*i], spread(l)))
            .collect::<Vec<_>>()
            .join(", ");
        let data: Vec<Value> = replicas
            .iter()
            .zip(&lags)
            .map(|(i, l)| json!({"deployment": self.ids[*i], "ms": l}))
            .collect();
        self.report.step_with(
            step,
            t,
            format!("5 batches of {BATCH} rows on d1, shown (min/median/max) on {detail}"),
            json!({ "lag_ms": data }),
        );
        Ok(())
    }

    /// The group: every pair linked both ways by [`crate::link::group`], the code of
    /// `tern group init` and `tern deployment link` (one way to link).
    async fn form_group(&mut self) -> Result<(), DemoError> {
        let step = "form the group";
        let t = Instant::now();
        let clients: Vec<Client> = self.nodes.iter().map(|n| n.client.clone()).collect();
        let links = crate::link::group(&clients, |_| {})
            .await
            .map_err(step_err(step))?;
        self.report.step(
            step,
            t,
            format!(
                "{} pairs linked both ways ({} channels), as `tern group init` does",
                links.len(),
                2 * links.len()
            ),
        );

        // Global accounts: a1 founds the account group, the others join it.
        let step = "global accounts";
        let t = Instant::now();
        let mut group: Option<String> = None;
        for node in &self.nodes {
            let a = &node.account;
            let v: api::AccountCreated = node
                .client
                .post_as("/v1/accounts", &api::Named { name: a.clone() })
                .await
                .map_err(step_err(step))?;
            self.tokens.push(Some(v.token));
            let body = match &group {
                None => json!({}),
                Some(g) => json!({"group": g}),
            };
            let v: api::AccountGlobal = node
                .client
                .post_as(&format!("/v1/accounts/{a}/global"), &body)
                .await
                .map_err(step_err(step))?;
            if group.is_none() {
                group = Some(v.group);
            }
        }
        let names = self
            .nodes
            .iter()
            .map(|n| format!("{}@{}", n.account, n.id))
            .collect::<Vec<_>>()
            .join(", ");
        self.report.step(
            step,
            t,
            format!(
                "{names}: one account group {}, each account with its own token",
                group.unwrap_or_default()
            ),
        );
        Ok(())
    }

    /// sales.public.orders on d1: loaded, queried, time-travelled.
    async fn data_on_d1(&mut self) -> Result<(), DemoError> {
        let rows = self.rows;
        let tenant = self.tenant(0);
        let db = self.database(0);
        let t = Instant::now();
        tenant
            .post("/v1/accounts/a1/databases", &json!({"name": "sales"}))
            .await
            .map_err(step_err("create database"))?;
        let cols = json!([
            {"name": "id", "type": "int64", "nullable": false},
            {"name": "customer", "type": "utf8"},
            {"name": "city", "type": "utf8"},
            {"name": "amount", "type": "float64"},
        ]);
        tenant
            .post(
                &format!("{db}/schemas/public/tables"),
                &json!({"name": "orders", "columns": cols}),
            )
            .await
            .map_err(step_err("create database"))?;
        self.report.step(
            "create database",
            t,
            "database sales, table public.orders on d1 (with a1's token)".into(),
        );
        let tbl = format!("{db}/schemas/public/tables/orders");
        self.tables.push(tbl.clone());
        let t = Instant::now();
        let data = sample_csv(rows);
        let size = data.len();
        let v = tenant
            .post_bytes(&format!("{tbl}/rows"), data, "text/csv")
            .await
            .map_err(step_err("load"))?;
        let v: api::CommitAnswer = tenant
            .typed(&format!("{tbl}/rows"), v)
            .map_err(step_err("load"))?;
        if v.rows != Some(rows) {
            return Err(fail(
                "load",
                format!("loaded {:?} rows, expected {rows}", v.rows),
            ));
        }
        self.report.step(
            "load",
            t,
            format!(
                "{rows} rows ({:.1} MiB CSV) in one commit, version {}, {:.0} rows/s",
                size as f64 / 1048576.0,
                v.version.unwrap_or(0),
                rows as f64 / t.elapsed().as_secs_f64()
            ),
        );

        let t = Instant::now();
        let all: ScanAnswer = tenant
            .post_as(
                &format!("{tbl}/scan"),
                &json!({"columns": ["id"], "limit": 0}),
            )
            .await
            .map_err(step_err("query"))?;
        if all.matched() != rows {
            return Err(fail(
                "query",
                format!("count {:?} != {rows}", all.tail.matched),
            ));
        }
        let probe = rows / 2;
        let point: ScanAnswer = tenant
            .post_as(
                &format!("{tbl}/scan"),
                &json!({"where": {"column": "id", "op": "=", "value": probe}}),
            )
            .await
            .map_err(step_err("query"))?;
        if point.tail.row_count != 1 || ids(&point.rows) != [probe as i64] {
            return Err(fail("query", format!("point query: {point:?}")));
        }
        let oslo: ScanAnswer = tenant
            .post_as(
                &format!("{tbl}/scan"),
                &json!({"columns": ["id", "city", "amount"], "where": {"and": [{"column": "city", "op": "=", "value": "Oslo"}, {"column": "id", "op": "<", "value": 30}]}}),
            )
            .await
            .map_err(step_err("query"))?;
        if oslo.matched() != 5 {
            return Err(fail("query", format!("Oslo orders below 30: {oslo:?}")));
        }
        self.report.step(
            "query",
            t,
            format!(
                "count = {rows}; point query read {} of {} files; Oslo orders with id < 30:",
                point.tail.files_read, point.head.files_total
            ),
        );
        let ocols: Vec<String> = ["id", "city", "amount"]
            .iter()
            .map(|s| (*s).to_string())
            .collect();
        self.report
            .show(&indent(&output::table(&ocols, &oslo.rows)));

        let step = "delete + time travel";
        let t = Instant::now();
        let del: api::CommitAnswer = tenant
            .post_as(
                &format!("{tbl}/delete"),
                &json!({"where": {"column": "city", "op": "=", "value": "Lima"}}),
            )
            .await
            .map_err(step_err(step))?;
        let version = del
            .version
            .ok_or_else(|| fail(step, "the delete answered no version"))?;
        let now: ScanAnswer = tenant
            .post_as(
                &format!("{tbl}/scan"),
                &json!({"columns": ["id"], "limit": 0}),
            )
            .await
            .map_err(step_err(step))?;
        let before: ScanAnswer = tenant
            .post_as(
                &format!("{tbl}/scan"),
                &json!({"columns": ["id"], "limit": 0, "version": version.saturating_sub(1)}),
            )
            .await
            .map_err(step_err(step))?;
        let deleted = del.rows.unwrap_or(0);
        if now.matched() != rows - deleted || before.matched() != rows || deleted == 0 {
            return Err(fail(
                step,
                format!(
                    "deleted {deleted}; now {:?}, before {:?}",
                    now.tail.matched, before.tail.matched
                ),
            ));
        }
        self.report.step(
            step,
            t,
            format!(
                "{deleted} Lima rows deleted at version {version}; version {} still has {rows}",
                version - 1
            ),
        );
        Ok(())
    }

    /// Waits until every member heard the full group from every peer; shows the group.
    async fn group_messages(&mut self) -> Result<(), DemoError> {
        let step = "group messages";
        let t = Instant::now();
        let wait = Deadline::new(step, "membership messages crossing every channel");
        loop {
            let mut complete = true;
            for node in &self.nodes {
                let v: api::DeploymentList = node
                    .client
                    .get_as("/v1/deployments")
                    .await
                    .map_err(step_err(step))?;
                for d in v.deployments.iter().filter(|d| !d.is_self) {
                    let heard = d.peer_members.as_ref().map_or(0, Vec::len);
                    if heard != self.nodes.len() || d.last_heartbeat_ms.is_none() {
                        complete = false;
                    }
                }
            }
            if complete {
                break;
            }
            wait.tick(Duration::from_millis(200)).await?;
        }
        self.report.step(
            step,
            t,
            "every member received the full member list and heartbeats from every peer".into(),
        );
        let v: api::DeploymentList = self.nodes[0]
            .client
            .get_as("/v1/deployments")
            .await
            .map_err(step_err("show deployments"))?;
        self.report
            .show("\n  show deployments — the group as d1 sees it:");
        self.report.show(&indent(&deployments_table(&v)));
        Ok(())
    }

    /// The database group: d2 follows d1 (hub), d3 and the others follow d2 (chain). So no
    /// member is ever ahead of d2, which a failover to d2 needs: a member that applied more
    /// of the lost primary's transactions than the candidate refuses its vote.
    async fn replicate(&mut self) -> Result<(), DemoError> {
        let step = "replicate";
        let t = Instant::now();
        let v: api::ReplicationSet = self
            .tenant(0)
            .post_as(
                &format!("{}/replication", self.database(0)),
                &api::SetReplication {
                    enable: true,
                    accounts: None,
                },
            )
            .await
            .map_err(step_err(step))?;
        let group = v
            .group
            .ok_or_else(|| fail(step, "replication on, but no group answered"))?;
        let want = self.count(step, 0).await?;
        let mut shown = Vec::new();
        // d2 first: d3's chain needs it to have the data.
        let waves: Vec<Vec<usize>> = vec![vec![1], (2..self.nodes.len()).collect()];
        for wave in waves {
            for &i in &wave {
                let (tenant, account) = (self.tenant(i), self.nodes[i].account.clone());
                // A chained replica names d2 as its upstream, so it must have heard of
                // d2's replica too, not only of the primary.
                let upstream = if i >= 2 { &self.ids[1] } else { &self.ids[0] };
                let wait = Deadline::new(
                    step,
                    format!("{} listing group {group} on {upstream}", self.ids[i]),
                );
                loop {
                    let v: api::GlobalDatabases = tenant
                        .get_as(&format!("/v1/accounts/{account}/global/databases"))
                        .await
                        .map_err(step_err(step))?;
                    let listed = v
                        .databases
                        .iter()
                        .any(|r| r.replication_group == group && &r.deployment == upstream);
                    if listed {
                        break;
                    }
                    wait.tick(Duration::from_millis(100)).await?;
                }
                let mut body = json!({"name": REPLICA, "group": group});
                if i >= 2 {
                    body["upstream"] = json!(self.ids[1]);
                }
                tenant
                    .post(&format!("/v1/accounts/{account}/replicas"), &body)
                    .await
                    .map_err(step_err(step))?;
                self.tables
                    .push(format!("{}/schemas/public/tables/orders", self.database(i)));
            }
            for &i in &wave {
                let wait = Deadline::new(
                    step,
                    format!("{}'s first refresh bringing {want} rows", self.ids[i]),
                );
                while self.count(step, i).await.ok() != Some(want) {
                    wait.tick(Duration::from_millis(50)).await?;
                }
                let up = self.upstream(step, i).await?;
                let how = if up == self.ids[0] { "hub" } else { "chain" };
                shown.push(format!(
                    "{} follows {up} ({how}, {want} rows at {:.0} ms)",
                    self.ids[i],
                    t.elapsed().as_secs_f64() * 1e3
                ));
            }
        }
        self.report.step(
            step,
            t,
            format!("sales is database group {group}; {}", shown.join(", ")),
        );
        Ok(())
    }

    /// SIGKILL d1 under a load of single-row inserts; wait until the others judge it
    /// unavailable.
    async fn kill_primary(&mut self) -> Result<Load, DemoError> {
        let step = "kill the primary";
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_load(
            self.tenant(0),
            format!("{}/rows", self.tables[0]),
            self.next_id,
            Arc::clone(&stop),
            Arc::clone(&progress),
        ));
        let wait = Deadline::new(step, "the write load getting under way");
        while progress.load(Ordering::Relaxed) < 50 {
            wait.tick(Duration::from_millis(5)).await?;
        }
        let t = Instant::now();
        let pid = self.nodes[0].child.id();
        self.nodes[0].child.kill().map_err(|e| fail(step, e))?;
        self.nodes[0].child.wait().map_err(|e| fail(step, e))?;
        stop.store(true, Ordering::Relaxed);
        let load = writer.await.map_err(|e| fail(step, e))?;
        self.next_id = load.next;
        self.report.step(
            step,
            t,
            format!(
                "SIGKILL d1 (pid {pid}) under a load of single-row inserts: {} acknowledged, {} \
                 refused, {} without an answer",
                load.acked.len(),
                load.refused,
                usize::from(load.unknown.is_some())
            ),
        );

        let step = "primary unavailable";
        let others: Vec<usize> = (1..self.nodes.len()).collect();
        let wait = Deadline::new(step, "every other member judging d1 unavailable");
        loop {
            let mut all = true;
            for &i in &others {
                all &= self.judges(step, i, "d1").await? == "unavailable";
            }
            if all {
                break;
            }
            wait.tick(Duration::from_millis(50)).await?;
        }
        let names: Vec<&str> = others.iter().map(|i| self.ids[*i].as_str()).collect();
        self.report.step(
            step,
            t,
            format!(
                "{} judged d1 unavailable: no heartbeat for {UNAVAILABLE_AFTER} (sent every \
                 {HEARTBEAT_INTERVAL})",
                names.join(", ")
            ),
        );
        Ok(load)
    }

    /// d2 promoted without `allow_data_loss`: the others' majority decides.
    async fn failover(&mut self) -> Result<api::FailoverReport, DemoError> {
        let step = "failover";
        let t = Instant::now();
        let r: api::FailoverReport = self.nodes[1]
            .client
            .post_as(
                &format!("{}/failover", self.database(1)),
                &api::FailoverRequest {
                    allow_data_loss: false,
                },
            )
            .await
            .map_err(step_err(step))?;
        if r.previous_primary.as_deref() != Some("d1") || r.forced || r.epoch < 2 {
            return Err(fail(step, format!("unexpected report: {r:?}")));
        }
        let n = self.nodes.len();
        self.report.step_with(
            step,
            t,
            format!(
                "d2 holds the primary at epoch {}, granted by a majority of the {n} without \
                 --allow-data-loss: RTO {} ms, known loss {} / {} ms (by d1's last heartbeat), \
                 lease {}",
                r.epoch,
                r.rto_ms,
                plural(r.known_loss_txns, "transaction"),
                r.known_loss_ms,
                if r.lease_held { "held" } else { "not yet held" }
            ),
            json!(r),
        );
        Ok(r)
    }

    /// Writes on d2, followed by the other replicas (which now follow d2).
    async fn new_primary(&mut self) -> Result<(), DemoError> {
        let step = "writes on new primary";
        let t = Instant::now();
        let replicas: Vec<usize> = (2..self.nodes.len()).collect();
        let lags = self.follow(step, 1, &replicas, 3).await?;
        let mut shown = Vec::new();
        for (i, l) in replicas.iter().zip(&lags) {
            let up = self.upstream(step, *i).await?;
            if up != "d2" {
                return Err(fail(step, format!("{} follows {up}, not d2", self.ids[*i])));
            }
            let rows = self.until_equal(step, 1, *i).await?;
            shown.push(format!(
                "{} (follows d2) after {}, {} rows equal to d2's",
                self.ids[*i],
                spread(l),
                rows.len()
            ));
        }
        self.report.step(
            step,
            t,
            format!(
                "3 batches of {BATCH} rows on d2, shown on {}",
                shown.join("; ")
            ),
        );
        Ok(())
    }

    /// d1 restarted with its same config: a fenced secondary of d2.
    async fn old_primary_returns(
        &mut self,
        failover: &api::FailoverReport,
    ) -> Result<(), DemoError> {
        let step = "old primary returns";
        let t = Instant::now();
        let epoch = failover.epoch;
        let node = start(
            step,
            &self.ternd,
            &self.root,
            "d1",
            &self.ids,
            "d1.restarted.log",
        )?;
        let pid = node.child.id();
        self.nodes[0] = node;
        let wait = Deadline::new(step, format!("d1 a secondary of d2 at epoch {epoch}"));
        loop {
            if let Ok(s) = self.status(step, 0).await
                && s.groups.first().is_some_and(|g| {
                    g.role == "secondary" && g.epoch == epoch && g.primary.as_deref() == Some("d2")
                })
            {
                break;
            }
            wait.tick(Duration::from_millis(50)).await?;
        }
        let fenced_ms = t.elapsed().as_secs_f64() * 1e3;
        let rows = self.until_equal(step, 1, 0).await?;
        let (status, body) = self.probe_write(step, 0).await?;
        let redirect = match (status, redirect_of(&body)) {
            (409, Some(r)) if r.deployment == "d2" => r,
            _ => {
                return Err(fail(
                    step,
                    format!("a write to d1 answered {status} {body}, not 409 naming d2"),
                ));
            }
        };
        self.report.step(
            step,
            t,
            format!(
                "d1 (pid {pid}, same config) learned epoch {epoch} at {fenced_ms:.0} ms: a \
                 secondary of d2, its {} rows equal d2's; a write answers 409 → {} at {}",
                rows.len(),
                redirect.deployment,
                redirect.url.as_deref().unwrap_or("?")
            ),
        );
        Ok(())
    }

    /// The conflict records d1 kept, and where every write acknowledged before the kill is.
    async fn conflicts(
        &mut self,
        load: &Load,
        failover: &api::FailoverReport,
    ) -> Result<(), DemoError> {
        let step = "conflict records";
        let t = Instant::now();
        let v: api::ConflictList = self.nodes[0]
            .client
            .get_as("/v1/conflicts")
            .await
            .map_err(step_err(step))?;
        let records = v.conflicts;
        let mut kept = Vec::new();
        let mut table = Vec::new();
        for c in &records {
            // The versions' files and their column statistics are the engine's shape (the
            // record's `more`), read here only to name the rows a record holds.
            let files: Vec<&Value> = c
                .more
                .get("versions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|v| v["added"].as_array().into_iter().flatten())
                .collect();
            let mut rows = 0;
            let mut span = Vec::new();
            for f in files {
                rows += f["rows"].as_u64().unwrap_or(0);
                let id = f["stats"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["column"] == "id"));
                let lo = id.and_then(|s| s["min"]["int64"].as_i64());
                let hi = id.and_then(|s| s["max"]["int64"].as_i64());
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    // A one-row file names its row; a wider one only its range.
                    if lo == hi {
                        kept.push(lo);
                        span.push(lo.to_string());
                    } else {
                        span.push(format!("{lo}..={hi}"));
                    }
                }
            }
            table.push(json!({
                "record": c.id, "origin": c.origin, "txn": c.txn_id,
                "epoch": c.epoch, "state": c.state, "rows": rows, "ids": span.join(","),
            }));
        }
        kept.sort_unstable();
        let on_d2 = ids(&self.rows_of(step, 1).await?);
        let mut unique = on_d2.clone();
        unique.dedup();
        if unique.len() != on_d2.len() {
            return Err(fail(step, "d2 holds a row twice"));
        }
        let both: Vec<i64> = kept
            .iter()
            .copied()
            .filter(|i| on_d2.binary_search(i).is_ok())
            .collect();
        if !both.is_empty() {
            return Err(fail(
                step,
                format!("ids both on d2 and in a conflict record: {both:?}"),
            ));
        }
        let (mut there, mut recorded, mut lost) = (0, 0, Vec::new());
        for id in &load.acked {
            if on_d2.binary_search(id).is_ok() {
                there += 1;
            } else if kept.binary_search(id).is_ok() {
                recorded += 1;
            } else {
                lost.push(*id);
            }
        }
        if !lost.is_empty() {
            return Err(fail(
                step,
                format!("acknowledged before the kill, then lost: {lost:?}"),
            ));
        }
        // Nothing else is kept: only writes of the load (the unanswered one included).
        let stray: Vec<i64> = kept
            .iter()
            .copied()
            .filter(|i| !load.acked.contains(i) && Some(*i) != load.unknown)
            .collect();
        if !stray.is_empty() {
            return Err(fail(
                step,
                format!("conflict records of writes nobody made: {stray:?}"),
            ));
        }
        let unanswered = match load.unknown {
            Some(id) if on_d2.binary_search(&id).is_ok() => {
                "; the write that got no answer had committed: it is on d2"
            }
            Some(id) if kept.binary_search(&id).is_ok() => {
                "; the write that got no answer had committed: it is in a record"
            }
            Some(_) => "; the write that got no answer had not committed",
            None => "",
        };
        let known = failover.known_loss_txns;
        if known > records.len() as u64 {
            return Err(fail(
                step,
                format!(
                    "d2 reported a loss of {known} transactions, d1 kept {}",
                    records.len()
                ),
            ));
        }
        let what = if records.is_empty() {
            "none on d1: d2 had applied everything d1 committed".to_string()
        } else {
            format!(
                "{} on d1 (committed under epoch 1 past the fork, never shipped: kept, not \
                 applied)",
                plural(records.len() as u64, "record")
            )
        };
        self.report.step_with(
            step,
            t,
            format!(
                "{what}; of the {} writes acknowledged before the kill, {there} are on d2 and \
                 {recorded} in a record, none lost{unanswered}",
                load.acked.len()
            ),
            json!({"count": records.len(), "records": table, "acknowledged": load.acked.len(), "on_new_primary": there, "in_conflict_records": recorded}),
        );
        if !table.is_empty() {
            let cols: Vec<String> = ["record", "origin", "txn", "epoch", "state", "rows", "ids"]
                .iter()
                .map(|s| (*s).to_string())
                .collect();
            self.report.show(&indent(&output::table(&cols, &table)));
        }
        Ok(())
    }

    /// Planned switchover back to d1: nothing lost, no conflict made.
    async fn switchover(&mut self, failover: &api::FailoverReport) -> Result<(), DemoError> {
        let step = "switchover";
        let wait = Deadline::new(step, "d1 judging d2 available");
        while self.judges(step, 0, "d2").await? != "available" {
            wait.tick(Duration::from_millis(50)).await?;
        }
        let t = Instant::now();
        let r: api::SwitchoverReport = self.nodes[0]
            .client
            .post_as(&format!("{}/switchover", self.database(0)), &json!({}))
            .await
            .map_err(step_err(step))?;
        if r.previous_primary.as_deref() != Some("d2") || r.epoch <= failover.epoch {
            return Err(fail(step, format!("unexpected report: {r:?}")));
        }
        // Nothing lost: d2 took no commit since it paused, and d1 applied its last one.
        let (on_d1, on_d2) = (self.rows_of(step, 0).await?, self.rows_of(step, 1).await?);
        if on_d1 != on_d2 {
            return Err(fail(
                step,
                format!(
                    "d1 has {} rows, d2 had {} when it handed over",
                    on_d1.len(),
                    on_d2.len()
                ),
            ));
        }
        // d2 learns the claim: it refuses writes (409 naming d1) once its pause ends.
        let wait = Deadline::new(step, "d2 refusing writes with 409 naming d1");
        let redirect = loop {
            let (status, body) = self.probe_write(step, 1).await?;
            match (status, redirect_of(&body)) {
                (409, Some(r)) if r.deployment == "d1" => break r,
                (409 | 503, _) => wait.tick(Duration::from_millis(50)).await?,
                _ => {
                    return Err(fail(
                        step,
                        format!("a write to d2 after the switchover answered {status} {body}"),
                    ));
                }
            }
        };
        let made: api::ConflictList = self.nodes[1]
            .client
            .get_as("/v1/conflicts")
            .await
            .map_err(step_err(step))?;
        let made = made.conflicts.len();
        if made != 0 {
            return Err(fail(step, format!("d2 kept {made} conflict records")));
        }
        self.report.step_with(
            step,
            t,
            format!(
                "d1 primary again at epoch {}: writes paused {} ms, d2's last transaction \
                 applied first, so its {} rows are all on d1 and no conflict record was made; \
                 d2 answers 409 → {}",
                r.epoch,
                r.pause_ms,
                on_d2.len(),
                redirect.deployment
            ),
            json!(r),
        );
        Ok(())
    }

    /// One more batch on d1; every replica's rows equal d1's.
    async fn final_check(&mut self) -> Result<(), DemoError> {
        let step = "final check";
        let t = Instant::now();
        let from = self.next_id;
        self.next_id += BATCH;
        self.insert(step, 0, from, from + BATCH).await?;
        let mut shown = Vec::new();
        let mut replicas = Vec::new();
        let mut rows = 0;
        for i in 1..self.nodes.len() {
            rows = self.until_equal(step, 0, i).await?.len();
            let up = self.upstream(step, i).await?;
            shown.push(format!("{} (follows {up})", self.ids[i]));
            replicas.push(json!({"deployment": self.ids[i], "upstream": up, "equal": true}));
        }
        let s = self.status(step, 0).await?;
        let g = s
            .groups
            .first()
            .ok_or_else(|| fail(step, "d1 holds no database group"))?;
        if g.role != "primary" || g.primary.as_deref() != Some("d1") {
            return Err(fail(step, format!("d1's group: {g:?}")));
        }
        self.report.step_with(
            step,
            t,
            format!(
                "one more batch on d1 (primary, epoch {}); {} equal d1: {rows} rows each",
                g.epoch,
                shown.join(", ")
            ),
            json!({"primary": "d1", "epoch": g.epoch, "rows": rows, "replicas": replicas, "equal": true}),
        );
        Ok(())
    }

    /// The message counters of every deployment.
    async fn traffic(&mut self) -> Result<(), DemoError> {
        let mut traffic = Vec::new();
        for node in &self.nodes {
            let m = node
                .client
                .get_text("/metrics?fresh=true")
                .await
                .map_err(step_err("traffic"))?;
            let metric = |name: &str, label: &str| {
                m.lines()
                    .find(|l| l.starts_with(&format!("{name}{{{label}}}")))
                    .and_then(|l| l.rsplit(' ').next())
                    .unwrap_or("0")
                    .to_string()
            };
            let messaging =
                |event: &str| metric("tern_messaging_total", &format!("event=\"{event}\""));
            traffic.push(json!({
                "deployment": node.id,
                "files written": messaging("files_written"),
                "messages sent": messaging("messages_sent"),
                "files received": messaging("files_received"),
                "messages received": messaging("messages_received"),
                "handled": messaging("handled"),
                "cleaned": messaging("cleaned"),
            }));
        }
        let tcols: Vec<String> = [
            "deployment",
            "files written",
            "messages sent",
            "files received",
            "messages received",
            "handled",
            "cleaned",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        self.report.show(&format!(
            "\n  message traffic (from each deployment's /metrics; {} since its restart):",
            self.ids[0]
        ));
        self.report.show(&indent(&output::table(&tcols, &traffic)));
        self.report
            .steps
            .push(json!({"name": "traffic", "detail": traffic}));
        Ok(())
    }
}

/// Where a refused write's error body says the primary is (none: not such an answer).
fn redirect_of(body: &Value) -> Option<api::Redirect> {
    serde_json::from_value::<api::ErrorBody>(body.clone())
        .ok()?
        .error
        .redirect
}

fn deployments_table(v: &api::DeploymentList) -> String {
    let rows: Vec<Value> = v
        .deployments
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "self": if d.is_self { "*" } else { "" }, "region": d.region,
                "files sent": d.files_sent, "files received": d.files_received,
                "its group": d.peer_members.as_ref().map(|m| m.join(",")).unwrap_or_default(),
            })
        })
        .collect();
    let cols: Vec<String> = [
        "id",
        "self",
        "region",
        "files sent",
        "files received",
        "its group",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    output::table(&cols, &rows)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}
