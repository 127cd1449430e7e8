//! Replication between two real `ternd` processes on local folders: a global account on
//! each, a primary database on d1, a read-only secondary replica on d2 that catches up,
//! refuses writes, survives a kill -9 without duplicates, and nothing plaintext or
//! Parquet-shaped lands in the buckets.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tern_scenarios::ternd::{Layout, OPERATOR_TOKEN, Ternd, request};

const PRIMARY: &str = "/v1/accounts/a1/databases/sales/schemas/public/tables/orders";
const CANARY: &str = "plaintext-canary-7f3a";

fn peer_config(other: &Layout) -> String {
    format!(
        "ship_interval = \"100ms\"\ncontrol_interval = \"100ms\"\nannounce_interval = \"1s\"\n\
         [workers]\nheartbeat_interval = \"1s\"\n[messaging]\npoll_interval = \"100ms\"\n\
         [[peers]]\nid = \"{}\"\n[peers.bucket]\nurl = \"file://{}/replication\"\n",
        other.id,
        other.home.display()
    )
}

/// `Layout::config` ends with the `[log]` table; the replication settings must go into
/// `[replication]`, so they are spliced in right after its `url`.
fn config(l: &Layout, other: &Layout) -> String {
    let base = l.config("");
    let extra = peer_config(other);
    let (settings, rest) = extra.split_once("[workers]").expect("split");
    let repl_url = format!("url = \"file://{}/replication\"\n", l.home.display());
    let with_settings = base.replacen(&repl_url, &format!("{repl_url}{settings}"), 1);
    assert_ne!(with_settings, base, "replication settings spliced in");
    format!("{with_settings}[workers]{rest}")
}

fn rows_json(from: i64, to: i64) -> String {
    let rows: Vec<Value> = (from..to)
        .map(|i| json!({"id": i, "customer": format!("{CANARY}-{i}"), "amount": i as f64 / 4.0}))
        .collect();
    Value::Array(rows).to_string()
}

/// All rows of a table, sorted by id.
fn scan_all(d: &Ternd, tbl: &str) -> Option<Vec<Value>> {
    let r = d.op("POST", &format!("{tbl}/scan"), "{}");
    if r.status != 200 {
        return None;
    }
    let mut rows = r.json()["rows"].as_array()?.clone();
    rows.sort_by_key(|r| r["id"].as_i64().unwrap_or(i64::MIN));
    Some(rows)
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().filter_map(|r| r["id"].as_i64()).collect()
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The replica's table path on d2 (found by listing the replica database's tables).
fn replica_table(d2: &Ternd) -> Option<String> {
    let r = d2.op("GET", "/v1/accounts/a2/databases/sales_replica/tables", "");
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    let t = v["tables"].as_array()?.first()?.clone();
    let name = t["name"].as_str()?;
    let schema = t["schema"].as_str().unwrap_or("public");
    Some(format!(
        "/v1/accounts/a2/databases/sales_replica/schemas/{schema}/tables/{name}"
    ))
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn ternd_replica_catches_up_is_read_only_and_survives_kill9() {
    let dir = tempfile::tempdir().expect("tmp");
    let (l1, l2) = (Layout::new(dir.path(), "d1"), Layout::new(dir.path(), "d2"));
    let d1 = Ternd::start(&l1.write_config(&config(&l1, &l2)), &[]);
    let join = format!("{}/keys", l1.home.display());
    let env = [("TERN_KEYS__JOIN", join.as_str())];
    let c2 = l2.write_config(&config(&l2, &l1));
    let mut d2 = Ternd::start(&c2, &env);
    // Link the two deployments (both channels).
    let r = d1.op("POST", "/v1/deployments", r#"{"id":"d2","region":"r2"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let g12 = r.json()["genesis"].clone();
    let r = d2.op(
        "POST",
        "/v1/deployments",
        &json!({"id":"d1","region":"r1","genesis":g12}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let g21 = r.json()["genesis"].to_string();
    let r = d1.op("POST", "/v1/deployments/d2/channel", &g21);
    assert_eq!(r.status, 200, "{}", r.body);
    // Global accounts in one account group.
    for (d, a) in [(&d1, "a1"), (&d2, "a2")] {
        let r = d.op("POST", "/v1/accounts", &json!({"name": a}).to_string());
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // a2 uses its own key: every RepMK sent to it is sealed to it (and it must be
    // registered again after the kill -9 below: it is stored).
    let key_file = l2.home.join("a2-customer.key");
    let r = d2.op(
        "POST",
        "/v1/accounts/a2/customer-key",
        r#"{"kind":"x25519","file":"nowhere/a2.key","create":false}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("nowhere/a2.key"), "{}", r.body);
    let r = d2.op(
        "POST",
        "/v1/accounts/a2/customer-key",
        r#"{"kind":"rot13"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("rot13"), "{}", r.body);
    let r = d2.op(
        "POST",
        "/v1/accounts/a2/customer-key",
        &json!({"kind":"x25519","file":key_file,"create":true}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let key_id = r.json()["key_id"].as_str().expect("key id").to_string();
    let r = d1.op("POST", "/v1/accounts/a1/global", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let account_group = r.json()["group"].as_str().expect("group").to_string();
    let r = d2.op(
        "POST",
        "/v1/accounts/a2/global",
        &json!({"group": account_group}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The primary: a table with 100 rows.
    let r = d1.op("POST", "/v1/accounts/a1/databases", r#"{"name":"sales"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = d1.op(
        "POST",
        "/v1/accounts/a1/databases/sales/schemas/public/tables",
        r#"{"name":"orders","columns":[{"name":"id","type":"int64","nullable":false},{"name":"customer","type":"utf8"},{"name":"amount","type":"float64"}]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = d1.op("POST", &format!("{PRIMARY}/rows"), &rows_json(0, 100));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = d1.op(
        "POST",
        "/v1/accounts/a1/databases/sales/replication",
        r#"{"enable":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let group = r.json()["group"].as_str().expect("group").to_string();
    // d2 learns of the database group.
    wait_until(
        "d2 lists the database group",
        Duration::from_secs(60),
        || {
            let v = d2.op("GET", "/v1/accounts/a2/global/databases", "").json();
            v["databases"]
                .as_array()?
                .iter()
                .any(|r| r["replication_group"] == group.as_str())
                .then_some(())
        },
    );
    let r = d2.op(
        "POST",
        "/v1/accounts/a2/replicas",
        &json!({"name":"sales_replica","group":group}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // The first refresh brings the 100 rows.
    let want = scan_all(&d1, PRIMARY).expect("primary scan");
    assert_eq!(want.len(), 100);
    let tbl = wait_until(
        "the replica has the 100 rows",
        Duration::from_secs(60),
        || {
            let t = replica_table(&d2)?;
            (scan_all(&d2, &t)? == want).then_some(t)
        },
    );
    // Log shipping brings 50 more.
    let r = d1.op("POST", &format!("{PRIMARY}/rows"), &rows_json(100, 150));
    assert_eq!(r.status, 200, "{}", r.body);
    let want = scan_all(&d1, PRIMARY).expect("primary scan");
    assert_eq!(want.len(), 150);
    wait_until("the replica has 150 rows", Duration::from_secs(60), || {
        (scan_all(&d2, &tbl)? == want).then_some(())
    });
    // The replica is read-only.
    let r = d2.op("POST", &format!("{tbl}/rows"), &rows_json(10_000, 10_001));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().1.contains("read-only"), "{}", r.body);
    // kill -9 d2 in the middle of a second batch of inserts on d1.
    let addr = d1.addr.clone();
    let batch = std::thread::spawn(move || {
        for k in 0..20 {
            let from = 1000 + k * 10;
            let r = request(
                &addr,
                "POST",
                &format!("{PRIMARY}/rows"),
                Some(OPERATOR_TOKEN),
                "application/json",
                rows_json(from, from + 10).as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    d2.kill9();
    std::thread::sleep(Duration::from_millis(200));
    d2 = Ternd::start(&c2, &env);
    batch.join().expect("insert batch");
    let want = scan_all(&d1, PRIMARY).expect("primary scan");
    assert_eq!(want.len(), 350);
    let got = wait_until(
        "the replica has the primary's rows after kill -9",
        Duration::from_secs(60),
        || {
            let got = scan_all(&d2, &tbl)?;
            (got == want).then_some(got)
        },
    );
    let mut unique = ids(&got);
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no duplicate rows");
    // Status: the replica is not behind.
    let s = wait_until("versions_behind 0", Duration::from_secs(30), || {
        let s = d2.op("GET", "/v1/replication/status", "").json();
        let r = s["replicas"]
            .as_array()?
            .iter()
            .find(|r| r["database"] == "sales_replica")?
            .clone();
        (r["versions_behind"] == 0).then_some(s)
    });
    let replicas = s["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1, "{s}");
    // The key survived the kill -9, and the primary seals to it.
    let r = d2.op("GET", "/v1/accounts/a2/customer-key", "");
    assert_eq!(
        r.json()["customer_key"]["key_id"],
        key_id.as_str(),
        "{}",
        r.body
    );
    let s1 = d1.op("GET", "/v1/replication/status", "").json();
    assert_eq!(s1["downstream"][0]["sealed_to"], key_id.as_str(), "{s1}");
    assert_eq!(replicas[0]["group"], group.as_str(), "{s}");
    // Nothing in the buckets is Parquet-shaped or plaintext.
    let mut files = Vec::new();
    for l in [&l1, &l2] {
        files_under(&l.home.join("replication"), &mut files);
        files_under(&l.home.join("volume"), &mut files);
    }
    assert!(files.len() > 10, "files were written: {files:?}");
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        assert!(
            !contains(&bytes, b"PAR1"),
            "Parquet magic in {}",
            f.display()
        );
        assert!(
            !contains(&bytes, CANARY.as_bytes()),
            "plaintext in {}",
            f.display()
        );
    }
    assert!(d1.terminate().success());
    assert!(d2.terminate().success());
}
