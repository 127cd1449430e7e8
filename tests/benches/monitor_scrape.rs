//! `/metrics` scrape cost (issue 20): two real `ternd` processes (debug or release, as the
//! bench is built); d1 holds 10 databases of 100 tables each (1 000 tables), all replicated
//! to d2 (10 replicas). d2's `/metrics` is scraped `TERN_BENCH_SCRAPES` (300) times over
//! plain HTTP/1.1 and the p50/p99 printed beside the 5 ms target, beside the same scrape
//! on an empty deployment (a scrape that scanned would grow with the tables), and beside
//! the monitor's own tick (`tern_monitor_tick_seconds`: the measuring and rendering every
//! scrape did before scrapes were served from the monitor's snapshot).
//!
//! Environment: `TERN_BENCH_SCRAPES` (300), `TERN_BENCH_DATABASES` (10),
//! `TERN_BENCH_TABLES` (100 per database).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use serde_json::json;
use tern_scenarios::ternd::{Layout, Ternd, request};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn config(l: &Layout, other: &Layout) -> String {
    let base = l.config(&format!(
        "[workers]\nheartbeat_interval = \"1s\"\nmonitor_interval = \"500ms\"\n[messaging]\npoll_interval = \"100ms\"\n[[peers]]\nid = \"{}\"\n[peers.bucket]\nurl = \"file://{}/replication\"\n",
        other.id,
        other.home.display()
    ));
    let url = format!("url = \"file://{}/replication\"\n", l.home.display());
    base.replacen(
        &url,
        &format!("{url}ship_interval = \"100ms\"\ncontrol_interval = \"100ms\"\nannounce_interval = \"1s\"\n"),
        1,
    )
}

fn ok(r: &tern_scenarios::ternd::Response, want: u16) -> serde_json::Value {
    assert_eq!(r.status, want, "{}", r.body);
    r.json()
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Times `n` scrapes of `d`'s `/metrics`: sorted durations and the last body.
fn scrapes(d: &Ternd, n: usize) -> (Vec<Duration>, String) {
    let mut times = Vec::with_capacity(n);
    let mut body = String::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = request(&d.addr, "GET", "/metrics", None, "text/plain", b"");
        times.push(t.elapsed());
        assert_eq!(r.status, 200);
        body = r.body;
    }
    times.sort();
    (times, body)
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn gauge(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    let n = env_usize("TERN_BENCH_SCRAPES", 300);
    let dbs = env_usize("TERN_BENCH_DATABASES", 10);
    let tables = env_usize("TERN_BENCH_TABLES", 100);
    let dir = tempfile::Builder::new()
        .prefix("tern-scrape-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let (l1, l2) = (Layout::new(dir.path(), "d1"), Layout::new(dir.path(), "d2"));
    let d1 = Ternd::start(&l1.write_config(&config(&l1, &l2)), &[]);
    let join = format!("{}/keys", l1.home.display());
    let d2 = Ternd::start(
        &l2.write_config(&config(&l2, &l1)),
        &[("TERN_KEYS__JOIN", &join)],
    );
    let snapshot = |d: &Ternd| {
        wait("a monitor snapshot", || {
            scrapes(d, 1)
                .1
                .contains("tern_monitor_snapshot_age_seconds")
        })
    };
    snapshot(&d2);
    let (empty, _) = scrapes(&d2, n);

    // Link, global accounts, 10 databases × 100 tables on d1, replicated to d2.
    let g = ok(
        &d1.op("POST", "/v1/deployments", &json!({"id": "d2"}).to_string()),
        201,
    )["genesis"]
        .clone();
    let g2 = ok(
        &d2.op(
            "POST",
            "/v1/deployments",
            &json!({"id": "d1", "genesis": g}).to_string(),
        ),
        201,
    )["genesis"]
        .to_string();
    ok(&d1.op("POST", "/v1/deployments/d2/channel", &g2), 200);
    ok(&d1.op("POST", "/v1/accounts", r#"{"name":"a1"}"#), 201);
    let group = ok(&d1.op("POST", "/v1/accounts/a1/global", ""), 200)["group"].clone();
    ok(&d2.op("POST", "/v1/accounts", r#"{"name":"a2"}"#), 201);
    ok(
        &d2.op(
            "POST",
            "/v1/accounts/a2/global",
            &json!({"group": group}).to_string(),
        ),
        200,
    );
    let setup = Instant::now();
    let mut groups = Vec::new();
    for db in 0..dbs {
        let name = format!("db{db}");
        ok(
            &d1.op(
                "POST",
                "/v1/accounts/a1/databases",
                &json!({"name": name}).to_string(),
            ),
            201,
        );
        for t in 0..tables {
            ok(
                &d1.op(
                    "POST",
                    &format!("/v1/accounts/a1/databases/{name}/schemas/public/tables"),
                    &json!({"name": format!("t{t}"), "columns": [{"name": "id", "type": "int64", "nullable": false}]}).to_string(),
                ),
                201,
            );
        }
        let g = ok(
            &d1.op(
                "POST",
                &format!("/v1/accounts/a1/databases/{name}/replication"),
                r#"{"enable":true}"#,
            ),
            200,
        )["group"]
            .as_str()
            .expect("group")
            .to_string();
        groups.push((name, g));
    }
    wait("d2 to know every group", || {
        let v = d2.op("GET", "/v1/accounts/a2/global/databases", "").json();
        groups.iter().all(|(_, g)| {
            v["databases"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["replication_group"] == g.as_str()))
        })
    });
    for (name, g) in &groups {
        ok(
            &d2.op(
                "POST",
                "/v1/accounts/a2/replicas",
                &json!({"name": format!("{name}_replica"), "group": g}).to_string(),
            ),
            201,
        );
    }
    wait("d2's 10 replicas to hold every table", || {
        let v = d2.op("GET", "/v1/replication/status", "").json();
        let reps = v["replicas"].as_array().map_or(0, Vec::len);
        let listed: usize = groups
            .iter()
            .map(|(name, _)| {
                d2.op(
                    "GET",
                    &format!("/v1/accounts/a2/databases/{name}_replica/tables"),
                    "",
                )
                .json()["tables"]
                    .as_array()
                    .map_or(0, Vec::len)
            })
            .sum();
        reps == dbs && listed == dbs * tables
    });
    println!(
        "set up {} tables in {dbs} databases on d1, replicated as {dbs} replicas on d2, in {:.0} s",
        dbs * tables,
        setup.elapsed().as_secs_f64()
    );
    // Two ticks after the replicas exist, so that the snapshot holds them.
    std::thread::sleep(Duration::from_millis(1200));
    let (full, body) = scrapes(&d2, n);
    assert!(
        body.matches("tern_replication_lag_seconds{").count() == dbs,
        "every replica in the snapshot"
    );
    let tick = gauge(&body, "tern_monitor_tick_seconds") * 1000.0;
    let (p50, p99) = (pct(&full, 0.5), pct(&full, 0.99));
    println!(
        "/metrics scrape of d2 ({} bytes, {n} scrapes, new connection each): p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms — target ≤ 5 ms: p99/target {:.3}",
        body.len(),
        pct(&full, 1.0),
        p99 / 5.0
    );
    println!(
        "  same scrape before any table or replica existed: p50 {:.3} ms, p99 {:.3} ms (ratio with 1 000 tables: p50 {:.2}×)",
        pct(&empty, 0.5),
        pct(&empty, 0.99),
        p50 / pct(&empty, 0.5)
    );
    println!(
        "  the monitor's tick that measured these figures (what every scrape did before): {tick:.2} ms → a scrape now costs {:.3} of it",
        p50 / tick
    );
    drop(d1);
    drop(d2);
}
