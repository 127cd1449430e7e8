//! Failover between two real `ternd` processes on local folders: under a unique-id write
//! load the primary's daemon is killed -9, the secondary judges it unavailable, a failover
//! without `--allow-data-loss` is refused (a group of two cannot prove the old primary is
//! fenced), with it the secondary becomes the primary (epoch 2) and takes writes; the old
//! primary's daemon comes back, learns epoch 2, refuses writes with a 409 that names the
//! new primary, and follows it. Every acknowledged write is on the new primary exactly
//! once.

use std::time::Duration;

use serde_json::{Value, json};
use tern_scenarios::binary;
use tern_scenarios::ternd::{OPERATOR_TOKEN, Ternd};

use crate::replication::{
    PRIMARY, Two, create_replica, ids, primary, replica_table, rows_json, scan_all, two_with,
    wait_until,
};

const FAST: &str = "heartbeat_interval = \"200ms\"\nunavailable_after = \"1500ms\"\n";
const WAIT: Duration = Duration::from_secs(60);

fn availability(d: &Ternd, peer: &str) -> Option<String> {
    let v = d.op("GET", "/v1/availability", "").json();
    v["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer"] == peer)
        .and_then(|p| p["state"].as_str().map(str::to_string))
}

const FAILOVER: &str = "/v1/accounts/a2/databases/sales_replica/failover";

#[test]
fn ternd_primary_killed_secondary_promoted_old_primary_returns_fenced() {
    let Two {
        dir: _dir,
        l1: _,
        l2: _,
        c1,
        c2: _,
        d1,
        d2,
        join: _,
    } = two_with(&[], FAST);
    let group = primary(&d1, &d2, 1, 100);
    create_replica(&d2, &group);
    let tbl = wait_until("the replica has the 100 rows", WAIT, || {
        let t = replica_table(&d2)?;
        (scan_all(&d2, &t)?.len() == 100).then_some(t)
    });
    // Acknowledged writes (unique ids) on the primary.
    let mut acked: Vec<i64> = (0..100).collect();
    for k in 0..5 {
        let from = 1000 + k * 10;
        let r = d1.op(
            "POST",
            &format!("{PRIMARY}/rows"),
            &rows_json(from, from + 10),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        acked.extend(from..from + 10);
    }
    wait_until("the replica has every acknowledged row", WAIT, || {
        (scan_all(&d2, &tbl)?.len() == acked.len()).then_some(())
    });
    wait_until("d2 hears d1", WAIT, || {
        (availability(&d2, "d1")? == "available").then_some(())
    });
    // A connection names the group; any member resolves it to the current primary.
    let r = d1.op(
        "POST",
        "/v1/accounts/a1/connections",
        &json!({"name": "sales_conn", "group": group}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["url"], d1.url().as_str(), "{}", r.body);
    wait_until("d2 resolves the connection to d1", WAIT, || {
        let v = d2
            .op("GET", "/v1/accounts/a2/connections/sales_conn", "")
            .json();
        (v["primary"] == "d1" && v["url"] == d1.url().as_str()).then_some(())
    });
    // While d1 is heard from, the failover is refused.
    let r = d2.op("POST", FAILOVER, r#"{"allow_data_loss":false}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("available"), "{}", r.body);

    // The primary's region is lost.
    let d1_url = d1.url();
    d1.kill9();
    wait_until("d2 judges d1 unavailable", WAIT, || {
        (availability(&d2, "d1")? == "unavailable").then_some(())
    });
    let r = d2.op("POST", FAILOVER, r#"{"allow_data_loss":false}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("--allow-data-loss"), "{}", r.body);
    let r = d2.op("POST", FAILOVER, r#"{"allow_data_loss":true}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert_eq!(report["epoch"], 2, "{report}");
    assert_eq!(report["previous_primary"], "d1", "{report}");
    assert_eq!(report["known_loss_txns"], 0, "{report}");
    assert!(
        report["rto_ms"].as_u64().is_some_and(|ms| ms < 5_000),
        "{report}"
    );
    // Writes go on at d2.
    for k in 0..3 {
        let from = 5000 + k * 10;
        let r = d2.op("POST", &format!("{tbl}/rows"), &rows_json(from, from + 10));
        assert_eq!(r.status, 200, "{}", r.body);
        acked.extend(from..from + 10);
    }
    // The connection follows the failover: the CLI, given both members (d1 is down),
    // resolves it through d2 and reaches the new primary.
    let out = std::process::Command::new(binary("tern"))
        .args([
            "--url",
            &format!("{},{}", d1_url, d2.url()),
            "--token",
            OPERATOR_TOKEN,
            "--connection",
            "a2/sales_conn",
            "--json",
            "show",
            "replication-status",
        ])
        .output()
        .expect("run tern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(via["groups"][0]["role"], "primary", "{via}");
    let status = d2.op("GET", "/v1/replication/status", "").json();
    let g = &status["groups"][0];
    assert_eq!(
        (g["role"].as_str(), g["epoch"].as_u64()),
        (Some("primary"), Some(2)),
        "{status}"
    );

    // d1 comes back. Until it hears of epoch 2 it still takes writes (a group of two has
    // no majority to ask): each acknowledged one must end in exactly one conflict record.
    let d1 = Ternd::start(&c1, &[]);
    let mut stale = Vec::new();
    let mut next = 9000;
    let refused = wait_until("d1 refuses writes and names d2", WAIT, || {
        let r = d1.op(
            "POST",
            &format!("{PRIMARY}/rows"),
            &rows_json(next, next + 1),
        );
        if r.status == 200 {
            stale.push(next);
        }
        next += 1;
        (r.status == 409).then_some(r)
    });
    let body: Value = refused.json();
    assert_eq!(body["error"]["redirect"]["deployment"], "d2", "{body}");
    assert_eq!(body["error"]["epoch"], 2, "{body}");
    wait_until("d1 equals d2", WAIT, || {
        let a = scan_all(&d1, PRIMARY)?;
        let b = scan_all(&d2, &tbl)?;
        (a == b).then_some(())
    });
    // Every acknowledged write is on the new primary exactly once, or in exactly one
    // conflict record on the old one.
    let got = ids(&scan_all(&d2, &tbl).expect("scan d2"));
    acked.sort_unstable();
    assert_eq!(got, acked);
    let conflicts = d1.op("GET", "/v1/conflicts", "").json();
    let mut kept: Vec<i64> = conflicts["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .flat_map(|c| c["versions"].as_array().cloned().unwrap_or_default())
        .flat_map(|v| v["added"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| {
            let id = f["stats"]
                .as_array()?
                .iter()
                .find(|s| s["column"] == "id")?
                .clone();
            let (lo, hi) = (id["min"]["int64"].as_i64()?, id["max"]["int64"].as_i64()?);
            (lo == hi).then_some(lo)
        })
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, stale, "{conflicts}");
    assert!(stale.iter().all(|i| !got.contains(i)));
}
