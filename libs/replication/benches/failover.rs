//! Failover benchmark (issue 14), on the folder store with in-process deployments (every
//! worker running as in the daemon):
//!
//! * (a) **RTO, command → first accepted write** for a database of 1 000 tables with 1 GB
//!   of shipped transactions already in the secondary's inbound stage (the secondary was
//!   down while the primary shipped them; it comes back, the primary is lost). The failover
//!   applies every one of them before the database becomes writable, so the figure
//!   includes re-encrypting that gigabyte into the volume. The old primary is in planned
//!   maintenance (availability is judged at once; detection is what (b) measures), and a
//!   group of two fails over with `--allow-data-loss`. Target ≤ 5 s.
//! * (b) **automatic failover, kill → writable** in a group of three under a steady
//!   unique-id write load, with the shipped defaults for heartbeats and unavailability:
//!   the primary is killed, a secondary judges it unavailable, stands, wins a majority and
//!   takes writes; the other follows it. Printed beside it: the replication lag measured
//!   in the same run before the kill and the **loss** — the acknowledged writes missing on
//!   the new primary, as the span of commit times they cover. Target: loss ≤ the lag.
//!
//! * (c) **failback** (issue 15): a database of ≥ 2 GB, failed over, 1 % of it changed on
//!   the new primary; the old primary returns and resyncs: bytes copied to it against the
//!   bytes changed (target ≤ 1.05 ×) and its time against the full refresh of the same
//!   database measured in the same run (target ≤ 5 %); then a planned switchover back
//!   under 100 commits/s: the longest gap between acknowledged commits (target ≤ 2 s).
//!
//! (a) and (b) are printed beside the anchors' published figures: Aurora global database
//! "under a minute" (60 s), Azure SQL failover groups 30 s (their SLA).
//!
//! Environment: `TERN_BENCH_PHASES` (`rto,auto,failback`), `TERN_BENCH_FAILBACK_MB`
//! (2048), `TERN_BENCH_FAILBACK_TABLES` (16), `TERN_BENCH_SWITCHOVER_RATE` (100), `TERN_BENCH_TABLES` (1000),
//! `TERN_BENCH_INBOUND_MB` (1024), `TERN_BENCH_INBOUND_COMMITS` (64),
//! `TERN_BENCH_LOAD_RATE` (50 commits/s), `TERN_BENCH_LOAD_SECS` (10),
//! `TERN_BENCH_HEARTBEAT_MS` and `TERN_BENCH_UNAVAILABLE_MS` (the defaults, 5 000 and
//! 30 000). Scratch data goes under the cargo target's tmp folder and is removed at the end.

#![allow(clippy::print_stdout)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use tern_crypto::reference::fill;
use tern_messaging::MessagingConfig;
use tern_meta::{ColumnDef, ColumnType, DatabaseRole};
use tern_replication::local::{LocalDeployment, LocalOptions, link};
use tern_replication::{FailoverOptions, FailoverPolicy, ReplicationConfig, replica_table_id};
use tern_storage::layout::{AccountId, TableId};
use tern_table::ScanRequest;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn options(replication: ReplicationConfig) -> LocalOptions {
    LocalOptions {
        replication: ReplicationConfig {
            ship_interval: Duration::from_millis(100),
            ..replication
        },
        messaging: MessagingConfig {
            poll_interval: Duration::from_millis(100),
            ..MessagingConfig::default()
        },
        ..LocalOptions::default()
    }
}

const COLUMNS: [&str; 4] = ["id", "a", "b", "c"];

fn columns() -> Vec<ColumnDef> {
    COLUMNS
        .iter()
        .map(|c| ColumnDef {
            name: (*c).into(),
            ty: ColumnType::Int64,
            nullable: false,
        })
        .collect()
}

/// Rows `first..first+n`: the id and three pseudo-random columns (incompressible).
fn batch(first: i64, n: usize, seed: u64) -> RecordBatch {
    let schema = Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Int64, false))
            .collect::<Vec<_>>(),
    ));
    let mut cols: Vec<Arc<dyn Array>> = vec![Arc::new(Int64Array::from_iter_values(
        first..first + n as i64,
    ))];
    for k in 0..3u64 {
        let mut bytes = vec![0u8; n * 8];
        fill(&mut bytes, seed * 4 + k + 1);
        let values = bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()));
        cols.push(Arc::new(Int64Array::from_iter_values(values)));
    }
    RecordBatch::try_new(schema, cols).unwrap_or_else(|e| panic!("batch: {e}"))
}

/// Polls `f` every 10 ms until it is true; an error after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, BoxError>>,
{
    let deadline = Instant::now() + limit;
    while !f().await? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Files and bytes under a folder (recursively).
fn folder_size(dir: &FsPath) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .fold((0, 0), |(n, b), e| match e.metadata() {
            Ok(m) if m.is_dir() => {
                let (n2, b2) = folder_size(&e.path());
                (n + n2, b + b2)
            }
            Ok(m) => (n + 1, b + m.len()),
            Err(_) => (n, b),
        })
}

fn role(d: &LocalDeployment, account: &str) -> Result<DatabaseRole, BoxError> {
    let a = AccountId::new(account)?;
    Ok(d.meta
        .read(|tx| tx.find_database(&a, "sales"))?
        .ok_or("no database sales")?
        .role)
}

/// The ids in a table now.
async fn ids(d: &LocalDeployment, table: &TableId) -> Result<BTreeSet<i64>, BoxError> {
    let r = d.tables.scan(table, &ScanRequest::default()).await?;
    let mut out = BTreeSet::new();
    for b in &r.batches {
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or("id is not Int64")?;
        out.extend(col.iter().flatten());
    }
    Ok(out)
}

/// `d1` holding global account `a1` with database `sales` (schema `public`) and `tables`
/// tables, and every other deployment a global account `a<n>` of the same group; every
/// pair linked and started; the database replicated to each, caught up.
struct Group {
    nodes: Vec<LocalDeployment>,
    tables: Vec<TableId>,
    a1: AccountId,
    /// How long the replicas' first (full) refresh took.
    refresh: Duration,
}

async fn group(
    root: &FsPath,
    n: usize,
    tables: usize,
    preload: usize,
    replication: ReplicationConfig,
) -> Result<Group, BoxError> {
    let mut nodes = Vec::new();
    let keys = root.join("d1").join("keys");
    for i in 1..=n {
        let join = (i > 1).then_some(keys.as_path());
        nodes.push(
            LocalDeployment::open(root, &format!("d{i}"), join, options(replication.clone()))
                .await?,
        );
    }
    for i in 0..n {
        for j in i + 1..n {
            link(&nodes[i], &nodes[j]).await?;
        }
    }
    start_all(&mut nodes, &[]);
    let d1 = &nodes[0];
    let a1 = d1.create_account("a1")?;
    let db = d1.create_database(&a1, "sales")?;
    d1.tables.create_schema(&db, "public").await?;
    let account_group = d1.repl.set_account_global(&a1, None)?;
    let t = Instant::now();
    let mut ts = Vec::with_capacity(tables);
    for i in 0..tables {
        ts.push(
            d1.tables
                .create_table(&db, "public", &format!("t{i:04}"), columns())
                .await?,
        );
    }
    println!(
        "  setup: {tables} tables created on d1 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if preload > 0 {
        let commits = (preload >> 24).clamp(1, 4096);
        let rows = preload / commits / 32;
        let t = Instant::now();
        for i in 0..commits {
            d1.tables
                .insert(
                    &ts[i % tables],
                    &[batch((i * rows) as i64, rows, 1_000 + i as u64)],
                )
                .await?;
        }
        println!(
            "  setup: {:.2} GB loaded on d1 in {commits} commits in {:.1} s",
            preload as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
    }
    let group = d1.repl.enable_replication(&a1, "sales")?;
    let t = Instant::now();
    for (i, d) in nodes.iter().enumerate().skip(1) {
        let a = d.create_account(&format!("a{}", i + 1))?;
        d.repl.set_account_global(&a, Some(&account_group))?;
        until("the group to be known", Duration::from_secs(60), || async {
            Ok(d.repl
                .known_entities()?
                .iter()
                .any(|e| e.group.as_deref() == Some(group.as_str())))
        })
        .await?;
        d.repl.create_replica(&a, "sales", &group, None)?;
    }
    for d in &nodes[1..] {
        until("the replica's import", Duration::from_secs(600), || async {
            for t in &ts {
                if d.version(&replica_table_id(&nodes[0].id, t))? != nodes[0].version(t)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
    }
    let refresh = t.elapsed();
    until(
        "the primary to ship to every replica",
        Duration::from_secs(60),
        || async {
            let s = nodes[0].repl.status().await?;
            Ok(s.downstream.len() == n - 1 && s.downstream.iter().all(|d| d.subscribed))
        },
    )
    .await?;
    println!(
        "  setup: replicated to {} deployment(s) in {:.1} s",
        n - 1,
        t.elapsed().as_secs_f64()
    );
    Ok(Group {
        nodes,
        tables: ts,
        a1,
        refresh,
    })
}

/// Starts every node of `nodes` but those in `except`, each linked to every other.
fn start_all(nodes: &mut [LocalDeployment], except: &[usize]) {
    for i in 0..nodes.len() {
        if except.contains(&i) {
            continue;
        }
        let peers: Vec<_> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| (p.id.clone(), Arc::clone(&p.bucket)))
            .collect();
        nodes[i].start_with(&peers);
    }
}

const AURORA_S: f64 = 60.0;
const AZURE_S: f64 = 30.0;

fn anchors(what: &str, secs: f64) {
    println!(
        "  {what}: {secs:.2} s | Aurora global database \"under a minute\" {AURORA_S:.0} s: ratio {:.3} | Azure SQL failover groups {AZURE_S:.0} s SLA: ratio {:.3}",
        secs / AURORA_S,
        secs / AZURE_S
    );
}

async fn rto(root: &FsPath) -> Result<(), BoxError> {
    let n_tables = env_usize("TERN_BENCH_TABLES", 1000).max(1);
    let total = env_usize("TERN_BENCH_INBOUND_MB", 1024) << 20;
    let commits = env_usize("TERN_BENCH_INBOUND_COMMITS", 64).clamp(1, n_tables);
    println!(
        "(a) RTO, failover command → first accepted write: {n_tables} tables, {} MB shipped into the secondary's inbound stage while it was down",
        total >> 20
    );
    let replication = ReplicationConfig::default();
    let mut g = group(root, 2, n_tables, 0, replication.clone()).await?;
    let keys = root.join("d1").join("keys");
    // The secondary's region goes down; the primary keeps committing and shipping.
    g.nodes[1].kill().await;
    let rows = (total / commits / 32).max(1);
    let t = Instant::now();
    let mut written = Vec::with_capacity(commits);
    for i in 0..commits {
        let table = &g.tables[i * n_tables / commits];
        g.nodes[0]
            .tables
            .insert(table, &[batch((i * rows) as i64, rows, i as u64)])
            .await?;
        g.nodes[0].repl.committed();
        written.push(table.clone());
    }
    let d2_id = g.nodes[1].id.clone();
    until(
        "the primary to ship everything",
        Duration::from_secs(600),
        || async {
            let s = g.nodes[0].repl.status().await?;
            Ok(s.downstream.iter().all(|d| d.records_behind == 0)
                && g.nodes[0].ctx.unsent_to(&d2_id).await? == 0)
        },
    )
    .await?;
    println!(
        "  setup: {commits} commits of {rows} rows written and shipped in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let inbound = root.join("d2").join("repl").join("from").join("d1");
    let (files, bytes) = folder_size(&inbound.join("inbound"));
    let (messages, _) = folder_size(&inbound.join("msg"));
    // The primary's region is lost; the secondary's comes back.
    g.nodes[0].kill().await;
    let d1_id = g.nodes[0].id.clone();
    let mut d2 = LocalDeployment::open(root, "d2", Some(&keys), options(replication)).await?;
    d2.repl.set_maintenance(&d1_id, true)?;
    d2.start_with(&[(d1_id.clone(), Arc::clone(&g.nodes[0].bucket))]);
    println!(
        "  at the command: {files} files, {:.2} GB in the inbound stage; {messages} message files",
        bytes as f64 / 1e9
    );
    let a2 = AccountId::new("a2")?;
    let start = Instant::now();
    let report = d2
        .repl
        .failover(
            &a2,
            "sales",
            FailoverOptions {
                allow_data_loss: true,
            },
        )
        .await?;
    let rid = replica_table_id(&d1_id, &g.tables[0]);
    d2.tables.insert(&rid, &[batch(-1, 1, 0)]).await?;
    let secs = start.elapsed().as_secs_f64();
    // Everything shipped was applied before the first write.
    let mut behind = 0;
    for t in &written {
        let on_d1 = g.nodes[0].version(t)?;
        let on_d2 = d2.version(&replica_table_id(&d1_id, t))?;
        if *t == g.tables[0] {
            behind += usize::from(on_d2 != on_d1.map(|v| v + 1));
        } else {
            behind += usize::from(on_d2 != on_d1);
        }
    }
    println!(
        "  failover report: epoch {}, drained {}, drain timed out {}, known loss {} txns, rto (command → writable) {} ms",
        report.epoch, report.drained, report.drain_timed_out, report.known_loss_txns, report.rto_ms
    );
    println!(
        "  tables at the primary's last version when writable: {} of {} written ({})",
        written.len() - behind,
        written.len(),
        if behind == 0 { "all" } else { "NOT all" }
    );
    anchors("command → first accepted write", secs);
    println!(
        "  target ≤ 5 s: ratio {:.3} ({})",
        secs / 5.0,
        if secs <= 5.0 { "met" } else { "NOT met" }
    );
    d2.stop().await;
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn auto(root: &FsPath) -> Result<(), BoxError> {
    let defaults = ReplicationConfig::default();
    let heartbeat = Duration::from_millis(env_usize(
        "TERN_BENCH_HEARTBEAT_MS",
        defaults.heartbeat_interval.as_millis() as usize,
    ) as u64);
    let unavailable = Duration::from_millis(env_usize(
        "TERN_BENCH_UNAVAILABLE_MS",
        defaults.unavailable_after.as_millis() as usize,
    ) as u64);
    let rate = env_usize("TERN_BENCH_LOAD_RATE", 50).max(1) as u64;
    let secs = env_usize("TERN_BENCH_LOAD_SECS", 10) as u64;
    println!(
        "(b) automatic failover, primary killed → a secondary writable; group of three, heartbeat every {heartbeat:?}, unavailable after {unavailable:?}, {rate} commits/s of unique ids"
    );
    let replication = ReplicationConfig {
        heartbeat_interval: heartbeat,
        unavailable_after: unavailable,
        ..defaults
    };
    let mut g = group(root, 3, 1, 0, replication).await?;
    let t = g.tables[0].clone();
    let rid = replica_table_id(&g.nodes[0].id, &t);
    g.nodes[0].repl.set_policy(
        &g.a1,
        "sales",
        FailoverPolicy {
            auto_failover: true,
            ..FailoverPolicy::default()
        },
    )?;
    until(
        "the policy to reach the replicas",
        Duration::from_secs(60),
        || async {
            for d in &g.nodes[1..] {
                let s = d.repl.status().await?;
                if !s.groups.first().is_some_and(|g| g.policy.auto_failover) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    // Lag: each commit's version seen on both replicas.
    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let metas = [g.nodes[1].meta.clone(), g.nodes[2].meta.clone()];
        let rid = rid.clone();
        tokio::spawn(async move {
            let version = |m: &tern_meta::MetaStore| {
                m.read(|tx| tx.get_table(&rid))
                    .ok()
                    .flatten()
                    .map_or(0, |t| t.current_version)
            };
            let mut last = metas.iter().map(version).min().unwrap_or(0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = metas.iter().map(version).min().unwrap_or(0);
                if v > last {
                    let now = Instant::now();
                    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                    for x in last + 1..=v {
                        s.insert(x, now);
                    }
                    last = v;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // Unique ids, 10 a commit; each acknowledged one with its commit time and version.
    let mut acked: Vec<(i64, Instant, u64)> = Vec::new();
    let period = Duration::from_micros(1_000_000 / rate);
    let start = Instant::now();
    let n = rate * secs;
    for i in 0..n {
        let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let first = (i * 10) as i64;
        if let Ok(info) = g.nodes[0].tables.insert(&t, &[batch(first, 10, i)]).await {
            g.nodes[0].repl.committed();
            acked.push((first, Instant::now(), info.version));
        }
    }
    // The primary's region is lost, mid-load.
    let killed = Instant::now();
    g.nodes[0].kill().await;
    let (new, other) = loop {
        if role(&g.nodes[1], "a2")? == DatabaseRole::Primary {
            break (1, 2);
        }
        if role(&g.nodes[2], "a3")? == DatabaseRole::Primary {
            break (2, 1);
        }
        if killed.elapsed() > unavailable * 4 + Duration::from_secs(60) {
            return Err("no secondary took over".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let promoted = killed.elapsed();
    until(
        "the new primary to take a write",
        Duration::from_secs(60),
        || async {
            Ok(g.nodes[new]
                .tables
                .insert(&rid, &[batch(-1, 1, 0)])
                .await
                .is_ok())
        },
    )
    .await?;
    let writable = killed.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await?;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lags: Vec<Duration> = acked
        .iter()
        .filter_map(|(_, c, v)| seen.get(v).map(|s| s.saturating_duration_since(*c)))
        .collect();
    lags.sort();
    let on_new = ids(&g.nodes[new], &rid).await?;
    let lost: Vec<&(i64, Instant, u64)> = acked
        .iter()
        .filter(|(first, _, _)| !on_new.contains(first))
        .collect();
    // The loss as time: from the oldest lost acknowledged commit to the kill.
    let loss = lost.first().map_or(Duration::ZERO, |(_, c, _)| {
        killed.saturating_duration_since(*c)
    });
    let follows = until(
        "the other secondary to follow the new primary",
        Duration::from_secs(120),
        || async { Ok(ids(&g.nodes[other], &rid).await? == ids(&g.nodes[new], &rid).await?) },
    )
    .await
    .is_ok();
    println!(
        "  d{} took over: judged + promoted {:.2} s after the kill, first write accepted at {:.2} s; d{} follows it: {follows}",
        new + 1,
        promoted.as_secs_f64(),
        writable.as_secs_f64(),
        other + 1,
    );
    anchors("kill → writable (automatic)", writable.as_secs_f64());
    let (p50, p99, max) = (
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default(),
    );
    println!(
        "  replication lag before the kill ({} of {} commits seen on both replicas): p50 {:.0} ms | p99 {:.0} ms | max {:.0} ms",
        lags.len(),
        acked.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    println!(
        "  loss: {} of {} acknowledged commits missing on the new primary, {:.0} ms of commits | vs max lag {:.0} ms: ratio {:.2} ({})",
        lost.len(),
        acked.len(),
        loss.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        if max.is_zero() {
            0.0
        } else {
            loss.as_secs_f64() / max.as_secs_f64()
        },
        if loss <= max { "met" } else { "NOT met" }
    );
    for i in [new, other] {
        g.nodes[i].stop().await;
    }
    Ok(())
}

/// Whether every table of `tables` (d1's ids) is at the same version on `a` (as `a_ids`
/// maps them) and on `b`.
fn same_versions(
    tables: &[TableId],
    a: &LocalDeployment,
    a_id: impl Fn(&TableId) -> TableId,
    b: &LocalDeployment,
    b_id: impl Fn(&TableId) -> TableId,
) -> Result<bool, BoxError> {
    for t in tables {
        if a.version(&a_id(t))? != b.version(&b_id(t))? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn failback(root: &FsPath) -> Result<(), BoxError> {
    let total = env_usize("TERN_BENCH_FAILBACK_MB", 2048) << 20;
    let n_tables = env_usize("TERN_BENCH_FAILBACK_TABLES", 16).max(1);
    let rate = env_usize("TERN_BENCH_SWITCHOVER_RATE", 100).max(1) as u64;
    println!(
        "(c) failback after a failover: {:.2} GB in {n_tables} tables, 1 % changed on the new primary, the old primary rejoins; then a planned switchover back at {rate} commits/s",
        total as f64 / 1e9
    );
    let replication = ReplicationConfig {
        heartbeat_interval: Duration::from_millis(200),
        unavailable_after: Duration::from_secs(2),
        ..ReplicationConfig::default()
    };
    let mut g = group(root, 2, n_tables, total, replication.clone()).await?;
    println!(
        "  full refresh of the database into d2 (reference): {:.2} s",
        g.refresh.as_secs_f64()
    );
    let d1_id = g.nodes[0].id.clone();
    let rid = |t: &TableId| replica_table_id(&d1_id, t);
    // The primary's region is lost; d2 takes over.
    g.nodes[0].kill().await;
    g.nodes[1].repl.set_maintenance(&d1_id, true)?;
    g.nodes[1]
        .repl
        .failover(
            &AccountId::new("a2")?,
            "sales",
            FailoverOptions {
                allow_data_loss: true,
            },
        )
        .await?;
    // 1 % of the database changes on the new primary.
    let change = total / 100;
    let commits = 4.min(n_tables);
    let rows = change / commits / 32;
    for i in 0..commits {
        g.nodes[1]
            .tables
            .insert(
                &rid(&g.tables[i]),
                &[batch((1 << 40) + (i * rows) as i64, rows, 9_000 + i as u64)],
            )
            .await?;
    }
    let mut changed = 0;
    for t in &g.tables {
        let t = rid(t);
        let v = g.nodes[1].version(&t)?.unwrap_or(0);
        changed += g.nodes[1]
            .meta
            .read(|tx| tx.active_micro_partitions(&t, v))?
            .iter()
            .filter(|m| m.global_ref.origin.as_str() == "d2")
            .map(|m| m.bytes)
            .sum::<u64>();
    }
    let counters = g.nodes[1].repl.counters();
    let (files0, bytes0) = (
        tern_replication::service::Counters::get(&counters.files_copied),
        tern_replication::service::Counters::get(&counters.bytes_copied),
    );
    // The old primary comes back: it rejoins as a secondary and resyncs.
    g.nodes[1].repl.set_maintenance(&d1_id, false)?;
    let mut d1 = LocalDeployment::open(root, "d1", None, options(replication.clone())).await?;
    let start = Instant::now();
    d1.start_with(&[(g.nodes[1].id.clone(), Arc::clone(&g.nodes[1].bucket))]);
    until(
        "d1 to rejoin and catch up",
        Duration::from_secs(600),
        || async {
            Ok(role(&d1, "a1")? == DatabaseRole::Secondary
                && same_versions(&g.tables, &d1, TableId::clone, &g.nodes[1], rid)?)
        },
    )
    .await?;
    let resync = start.elapsed();
    let files = tern_replication::service::Counters::get(&counters.files_copied) - files0;
    let bytes = tern_replication::service::Counters::get(&counters.bytes_copied) - bytes0;
    println!(
        "  resync of the returning old primary: {files} files, {:.1} MB copied for {:.1} MB changed: ratio {:.3} (target ≤ 1.05: {})",
        bytes as f64 / 1e6,
        changed as f64 / 1e6,
        bytes as f64 / changed.max(1) as f64,
        if bytes as f64 <= changed as f64 * 1.05 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  resync time {:.2} s vs full refresh {:.2} s: ratio {:.3} (target ≤ 0.05: {})",
        resync.as_secs_f64(),
        g.refresh.as_secs_f64(),
        resync.as_secs_f64() / g.refresh.as_secs_f64(),
        if resync.as_secs_f64() <= g.refresh.as_secs_f64() * 0.05 {
            "met"
        } else {
            "NOT met"
        }
    );
    // Planned switchover back to d1 under a steady load on the primary: the write pause is
    // the longest gap between two acknowledged commits (the client follows the 409s to the
    // new primary).
    until("d1 to hear d2", Duration::from_secs(60), || async {
        Ok(d1.repl.availability()?.iter().any(|p| {
            p.peer == g.nodes[1].id && p.state == tern_replication::Availability::Available
        }))
    })
    .await?;
    // Several clients (a table each) share the rate: one client's commit latency would
    // cap it.
    let clients = 8.min(g.tables.len());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::with_capacity(clients);
    for k in 0..clients {
        let (on_d2, on_d1, stop) = (
            Arc::clone(&g.nodes[1].tables),
            Arc::clone(&d1.tables),
            Arc::clone(&stop),
        );
        let (t2, t1) = (rid(&g.tables[k]), g.tables[k].clone());
        writers.push(tokio::spawn(async move {
            let period = Duration::from_micros(1_000_000 * clients as u64 / rate);
            let start = Instant::now();
            let mut acks: Vec<Instant> = Vec::new();
            let mut moved = false;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
                tokio::time::sleep_until(due.into()).await;
                let b = batch(
                    (2 << 40) + ((k as u64) << 32) as i64 + (i * 10) as i64,
                    10,
                    i,
                );
                let r = if moved {
                    on_d1.insert(&t1, &[b]).await
                } else {
                    on_d2.insert(&t2, &[b]).await
                };
                match r {
                    Ok(_) => acks.push(Instant::now()),
                    Err(e) if !moved && !e.to_string().contains("paused") => moved = true,
                    Err(_) => {}
                }
                i += 1;
            }
            acks
        }));
    }
    let load_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = d1.repl.switchover(&AccountId::new("a1")?, "sales").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(w.await?);
    }
    acks.sort();
    let achieved = acks.len() as f64 / load_start.elapsed().as_secs_f64();
    let pause = acks
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default();
    println!(
        "  switchover back to d1 at {rate} commits/s asked ({achieved:.0}/s achieved by {clients} clients): longest gap between acknowledged commits {:.0} ms, the command took {} ms ({} commits acknowledged): ratio to the 2 s target {:.3} ({})",
        pause.as_secs_f64() * 1e3,
        report.pause_ms,
        acks.len(),
        pause.as_secs_f64() / 2.0,
        if pause <= Duration::from_secs(2) {
            "met"
        } else {
            "NOT met"
        }
    );
    d1.stop().await;
    g.nodes[1].stop().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    // RUST_LOG=info shows each deployment's steps with their times.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let phases = std::env::var("TERN_BENCH_PHASES").unwrap_or_else(|_| "rto,auto,failback".into());
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("failover-bench");
    let _ = std::fs::remove_dir_all(&tmp);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        for phase in phases.split(',').map(str::trim) {
            let root = tmp.join(phase);
            std::fs::create_dir_all(&root)?;
            match phase {
                "rto" => rto(&root).await?,
                "auto" => auto(&root).await?,
                "failback" => failback(&root).await?,
                other => {
                    return Err(format!("unknown phase {other:?} (rto, auto, failback)").into());
                }
            }
            std::fs::remove_dir_all(&root)?;
        }
        Ok::<(), BoxError>(())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
