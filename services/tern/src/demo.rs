//! `tern demo`: a whole deployment group on local folders, as real `ternd` processes.
//!
//! Steps: write one config per deployment (d1 makes the group's GMK; the others join
//! its key folder so they share it, each with its own master key); start the daemons;
//! form the group (every member runs `create deployment` for every other, and registers
//! the channel each peer made to it); create an account, a database and a table on d1;
//! load a sample data set; run queries (count, point, range, delete + time travel); wait
//! until the group-membership messages have crossed every channel; show the group as
//! each member sees it, and the message traffic; stop every daemon with SIGTERM and check
//! each exits 0. Any wrong result fails the command.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

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

struct Node {
    id: String,
    child: Child,
    client: Client,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ternd_binary(explicit: Option<PathBuf>) -> Result<PathBuf, DemoError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| fail("find ternd", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| fail("find ternd", "no folder of tern"))?;
    let path = dir.join("ternd");
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
        .ok_or_else(|| fail("find ternd", "no target folder"))?;
    output::note(&format!(
        "ternd is not beside tern: building it (cargo build -p ternd, {profile})"
    ));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", "ternd", "--bin", "ternd", "--target-dir"])
        .arg(target);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| fail("build ternd", e))?;
    if !status.success() || !path.exists() {
        return Err(fail(
            "build ternd",
            format!("{status}; build it with `cargo build -p ternd` or pass --ternd"),
        ));
    }
    Ok(path)
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

fn start(ternd: &Path, root: &Path, id: &str, all: &[String]) -> Result<Node, DemoError> {
    let cfg = root.join(format!("{id}.toml"));
    std::fs::write(&cfg, config(root, id, all)).map_err(|e| fail("write configs", e))?;
    let ready = root.join(format!("{id}.addr"));
    let _ = std::fs::remove_file(&ready);
    let log = root.join(format!("{id}.log"));
    let stderr = std::fs::File::create(&log).map_err(|e| fail("start deployments", e))?;
    let child = Command::new(ternd)
        .arg("--config")
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| fail("start deployments", format!("{}: {e}", ternd.display())))?;
    let mut node = Node {
        id: id.to_string(),
        child,
        client: Client::new("http://127.0.0.1:1", Some(TOKEN.into())),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&ready)
            && !addr.is_empty()
        {
            node.client = Client::new(&format!("http://{addr}"), Some(TOKEN.into()));
            return Ok(node);
        }
        if let Ok(Some(status)) = node.child.try_wait() {
            return Err(fail(
                "start deployments",
                format!(
                    "ternd {id} exited ({status}): {}",
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                ),
            ));
        }
        if Instant::now() > deadline {
            return Err(fail(
                "start deployments",
                format!("ternd {id} did not start in 60 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sample_csv(rows: u64) -> Vec<u8> {
    const CITIES: [&str; 6] = ["Oslo", "Lima", "Pune", "Perth", "Quito", "Turin"];
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

struct Report {
    steps: Vec<Value>,
    json: bool,
}

impl Report {
    fn step(&mut self, name: &str, started: Instant, detail: String) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if !self.json {
            output::print(&format!("  ok  {name:<22} {ms:>9.1} ms  {detail}"));
        }
        self.steps
            .push(json!({"name": name, "millis": ms, "detail": detail}));
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
    if !(2..=9).contains(&deployments) {
        return Err(fail("options", "--deployments must be 2..=9"));
    }
    let rows = rows.max(1000);
    let temp;
    let root = match dir {
        Some(d) => {
            let run = d.join(format!("demo-{}", std::process::id()));
            std::fs::create_dir_all(&run)
                .map_err(|e| fail("folder", format!("{}: {e}", run.display())))?;
            run
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("tern-demo-")
                .tempdir()
                .map_err(|e| fail("folder", e))?;
            temp.path().to_path_buf()
        }
    };
    let mut report = Report {
        steps: Vec::new(),
        json: json_out,
    };
    report.show(&format!(
        "tern demo — {} deployments under {}",
        deployments,
        root.display()
    ));
    let ternd = ternd_binary(ternd)?;
    let ids: Vec<String> = (1..=deployments).map(|i| format!("d{i}")).collect();

    // Start: d1 first (it creates the group's GMK), then the others joining it.
    let t = Instant::now();
    let mut nodes = Vec::new();
    for id in &ids {
        nodes.push(start(&ternd, &root, id, &ids)?);
    }
    report.step(
        "start deployments",
        t,
        format!(
            "{} ternd processes: {}",
            nodes.len(),
            nodes
                .iter()
                .map(|n| format!("{} at {} (pid {})", n.id, n.client.base(), n.child.id()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let result = demo_steps(&nodes, rows, &mut report).await;
    // Stop every daemon, whatever happened.
    let t = Instant::now();
    let mut stopped = Vec::new();
    for n in &mut nodes {
        let _ = Command::new("kill")
            .args(["-TERM", &n.child.id().to_string()])
            .status();
    }
    for n in &mut nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
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
        stopped.push((n.id.clone(), status.is_some_and(|s| s.success()) && clean));
    }
    result?;
    if let Some((id, _)) = stopped.iter().find(|(_, ok)| !ok) {
        return Err(fail(
            "stop",
            format!("{id} did not stop cleanly (see {id}.log)"),
        ));
    }
    report.step(
        "stop",
        t,
        format!(
            "SIGTERM: all {} exited 0 with no unfinished transactions",
            stopped.len()
        ),
    );
    if json_out {
        output::print(
            &serde_json::to_string_pretty(
                &json!({"folder": root.display().to_string(), "steps": report.steps}),
            )
            .unwrap_or_default(),
        );
    } else {
        output::print(&format!("all {} steps passed", report.steps.len()));
    }
    Ok(())
}

async fn demo_steps(nodes: &[Node], rows: u64, report: &mut Report) -> Result<(), DemoError> {
    // The group: every member adds every other and registers the channel it made to it.
    let t = Instant::now();
    let mut geneses = Vec::new();
    for a in nodes {
        for b in nodes.iter().filter(|b| b.id != a.id) {
            let v = a
                .client
                .post(
                    "/v1/deployments",
                    &json!({"id": b.id, "region": format!("local-{}", b.id), "cloud": "local"}),
                )
                .await
                .map_err(step_err("form the group"))?;
            geneses.push((b, a.id.clone(), v["genesis"].clone()));
        }
    }
    for (b, from, g) in &geneses {
        b.client
            .post(&format!("/v1/deployments/{from}/channel"), g)
            .await
            .map_err(step_err("form the group"))?;
    }
    let n = nodes.len();
    report.step(
        "form the group",
        t,
        format!(
            "{} channels, each created by its sender and registered by its receiver",
            n * (n - 1)
        ),
    );

    // Data on d1.
    let d1 = &nodes[0].client;
    let t = Instant::now();
    let acct = d1
        .post("/v1/accounts", &json!({"name": "demo"}))
        .await
        .map_err(step_err("create account"))?;
    let tenant = d1.with_token(acct["token"].as_str().map(String::from));
    tenant
        .post("/v1/accounts/demo/databases", &json!({"name": "sales"}))
        .await
        .map_err(step_err("create account"))?;
    let cols = json!([
        {"name": "id", "type": "int64", "nullable": false},
        {"name": "customer", "type": "utf8"},
        {"name": "city", "type": "utf8"},
        {"name": "amount", "type": "float64"},
    ]);
    tenant
        .post(
            "/v1/accounts/demo/databases/sales/schemas/public/tables",
            &json!({"name": "orders", "columns": cols}),
        )
        .await
        .map_err(step_err("create account"))?;
    report.step(
        "create account",
        t,
        "account demo (with its own token), database sales, table public.orders on d1".into(),
    );
    let tbl = "/v1/accounts/demo/databases/sales/schemas/public/tables/orders";
    let t = Instant::now();
    let data = sample_csv(rows);
    let size = data.len();
    let v = tenant
        .post_bytes(&format!("{tbl}/rows"), data, "text/csv")
        .await
        .map_err(step_err("load"))?;
    if v["rows"].as_u64() != Some(rows) {
        return Err(fail(
            "load",
            format!("loaded {} rows, expected {rows}", v["rows"]),
        ));
    }
    report.step(
        "load",
        t,
        format!(
            "{rows} rows ({:.1} MiB CSV) in one commit, version {}, {:.0} rows/s",
            size as f64 / 1048576.0,
            v["version"],
            rows as f64 / t.elapsed().as_secs_f64()
        ),
    );

    let t = Instant::now();
    let count = |v: &Value| v["matched"].as_u64().unwrap_or(u64::MAX);
    let all = tenant
        .post(
            &format!("{tbl}/scan"),
            &json!({"columns": ["id"], "limit": 0}),
        )
        .await
        .map_err(step_err("query"))?;
    if count(&all) != rows {
        return Err(fail("query", format!("count {} != {rows}", all["matched"])));
    }
    let probe = rows / 2;
    let point = tenant
        .post(
            &format!("{tbl}/scan"),
            &json!({"where": {"column": "id", "op": "=", "value": probe}}),
        )
        .await
        .map_err(step_err("query"))?;
    if point["row_count"] != 1 || point["rows"][0]["id"] != probe {
        return Err(fail("query", format!("point query: {point}")));
    }
    let oslo = tenant
        .post(
            &format!("{tbl}/scan"),
            &json!({"columns": ["id", "city", "amount"], "where": {"and": [{"column": "city", "op": "=", "value": "Oslo"}, {"column": "id", "op": "<", "value": 30}]}}),
        )
        .await
        .map_err(step_err("query"))?;
    if count(&oslo) != 5 {
        return Err(fail("query", format!("Oslo orders below 30: {oslo}")));
    }
    report.step(
        "query",
        t,
        format!(
            "count = {rows}; point query read {} of {} files; Oslo orders with id < 30:",
            point["files_read"], point["files_total"]
        ),
    );
    let ocols: Vec<String> = ["id", "city", "amount"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    report.show(&indent(&output::table(
        &ocols,
        oslo["rows"].as_array().map_or(&[][..], Vec::as_slice),
    )));

    let t = Instant::now();
    let del = tenant
        .post(
            &format!("{tbl}/delete"),
            &json!({"where": {"column": "city", "op": "=", "value": "Lima"}}),
        )
        .await
        .map_err(step_err("delete + time travel"))?;
    let version = del["version"].as_u64().unwrap_or(0);
    let now = tenant
        .post(
            &format!("{tbl}/scan"),
            &json!({"columns": ["id"], "limit": 0}),
        )
        .await
        .map_err(step_err("delete + time travel"))?;
    let before = tenant
        .post(
            &format!("{tbl}/scan"),
            &json!({"columns": ["id"], "limit": 0, "version": version - 1}),
        )
        .await
        .map_err(step_err("delete + time travel"))?;
    let deleted = del["rows"].as_u64().unwrap_or(0);
    if count(&now) != rows - deleted || count(&before) != rows || deleted == 0 {
        return Err(fail(
            "delete + time travel",
            format!(
                "deleted {deleted}; now {}, before {}",
                now["matched"], before["matched"]
            ),
        ));
    }
    report.step(
        "delete + time travel",
        t,
        format!(
            "{deleted} Lima rows deleted at version {version}; version {} still has {rows}",
            version - 1
        ),
    );

    // Message traffic: wait until every member heard the full group from every peer.
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut complete = true;
        for node in nodes {
            let v = node
                .client
                .get("/v1/deployments")
                .await
                .map_err(step_err("group messages"))?;
            for d in v["deployments"].as_array().map_or(&[][..], Vec::as_slice) {
                if d["self"] == true {
                    continue;
                }
                let heard = d["peer_members"].as_array().map_or(0, Vec::len);
                if heard != nodes.len() || d["last_heartbeat_ms"].is_null() {
                    complete = false;
                }
            }
        }
        if complete {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(
                "group messages",
                "membership messages did not arrive in 60 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.step(
        "group messages",
        t,
        "every member received the full member list and heartbeats from every peer".into(),
    );
    for node in nodes {
        let v = node
            .client
            .get("/v1/deployments")
            .await
            .map_err(step_err("show deployments"))?;
        report.show(&format!(
            "\n  show deployments — as {} sees the group:",
            node.id
        ));
        if !report.json {
            report.show(&indent(&deployments_table(&v)));
        }
    }
    let mut traffic = Vec::new();
    for node in nodes {
        let m = node
            .client
            .get_text("/metrics")
            .await
            .map_err(step_err("traffic"))?;
        let metric = |event: &str| {
            m.lines()
                .find(|l| l.starts_with(&format!("tern_messaging_total{{event=\"{event}\"}}")))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or("0")
                .to_string()
        };
        traffic.push(json!({
            "deployment": node.id,
            "files written": metric("files_written"),
            "messages sent": metric("messages_sent"),
            "files received": metric("files_received"),
            "messages received": metric("messages_received"),
            "handled": metric("handled"),
            "cleaned": metric("cleaned"),
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
    report.show("\n  message traffic (from each deployment's /metrics):");
    report.show(&indent(&output::table(&tcols, &traffic)));
    report
        .steps
        .push(json!({"name": "traffic", "detail": traffic}));
    Ok(())
}

fn deployments_table(v: &Value) -> String {
    let rows: Vec<Value> = v["deployments"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            json!({
                "id": d["id"], "self": if d["self"] == true { "*" } else { "" }, "region": d["region"],
                "files sent": d["files_sent"], "files received": d["files_received"],
                "its group": d["peer_members"].as_array().map(|m| m.iter().map(output::cell).collect::<Vec<_>>().join(",")).unwrap_or_default(),
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
