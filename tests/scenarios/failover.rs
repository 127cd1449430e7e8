//! Failover between two real `ternd` processes on local folders: under a unique-id write
//! load the primary's daemon is killed -9, the secondary judges it unavailable, a failover
//! without `--allow-data-loss` is refused (a group of two cannot prove the old primary is
//! fenced), with it the secondary becomes the primary (epoch 2) and takes writes; the old
//! primary's daemon comes back, learns epoch 2, refuses writes with a 409 that names the
//! new primary, and follows it. Every acknowledged write is on the new primary exactly
//! once. The way back: a switchover whose candidate is killed -9 the moment it has won
//! (`TERN_CRASH_AT`) pauses the primary only until the handoff times out; done again it
//! completes, and once more it changes nothing. A third test kills the returning old
//! primary at every point of its rejoin and resync.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tern_scenarios::binary;
use tern_scenarios::ternd::{OPERATOR_TOKEN, Ternd};

use crate::replication::{
    PRIMARY, Three, Two, create_replica, ids, primary, replica_table, rows_json, scan_all, three,
    two_with, wait_until, with_stopped,
};
use tern_scenarios::ternd::request;

pub(crate) const FAST: &str = "heartbeat_interval = \"200ms\"\nunavailable_after = \"1500ms\"\n";
/// A primary paused for a switchover whose candidate went silent resumes after 7 s.
pub(crate) const SWITCHOVER: &str = "switchover_timeout = \"5s\"\nvote_timeout = \"2s\"\n";
const WAIT: Duration = Duration::from_secs(60);

pub(crate) fn availability(d: &Ternd, peer: &str) -> Option<String> {
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
    } = two_with(&[], &format!("{FAST}{SWITCHOVER}"));
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
    // The CLI says where to go: in words, and with --json the daemon's error as it is.
    let insert = |json_out: bool| {
        let out = std::process::Command::new(binary("tern"))
            .args(["--url", &d1.url(), "--token", OPERATOR_TOKEN])
            .args(if json_out { &["--json"][..] } else { &[] })
            .args(["insert", "a1.sales.orders", "--rows"])
            .arg(rows_json(90_000, 90_001))
            .output()
            .expect("run tern");
        assert!(!out.status.success(), "a fenced write succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let words = insert(false);
    assert!(
        words.contains(&format!(
            "the primary is now d2 (epoch 2) at {}",
            d2.url().trim_end_matches('/')
        )),
        "{words}"
    );
    let err: Value = serde_json::from_str(insert(true).trim()).expect("a JSON error");
    assert_eq!(err["error"]["redirect"]["deployment"], "d2", "{err}");
    assert_eq!(err["error"]["epoch"], 2, "{err}");
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
    let kept = conflict_ids(&d1);
    assert_eq!(kept, stale);
    assert!(stale.iter().all(|i| !got.contains(i)));

    // Failback through the CLI: the records are read, d1 takes the primary back by a
    // planned switchover (nothing lost), then applies every record but one, which it
    // discards.
    let list = tern(&d1, &["conflicts", "list"]);
    let records: Vec<String> = list["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(records.len(), stale.len(), "{list}");
    if let Some(first) = records.first() {
        let csv = tern_text(&d1, &["conflicts", "show", first, "--csv"]);
        assert!(csv.starts_with("table,change,"), "{csv}");
        assert!(csv.contains("added"), "{csv}");
        // The table shows what the daemon answered: every id of the rows it added.
        let shown = tern(&d1, &["conflicts", "show", first]);
        let table = tern_text(&d1, &["conflicts", "show", first]);
        assert_eq!(shown["conflict"]["origin"], "d1", "{shown}");
        let added: Vec<i64> = shown["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .flat_map(|t| t["added"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["id"].as_i64())
            .collect();
        assert!(!added.is_empty(), "{shown}");
        for id in added {
            assert!(table.contains(&id.to_string()), "{id} not shown:\n{table}");
        }
        // `show replication-status` on the old primary, now a secondary of d2.
        let status = tern(&d1, &["show", "replication-status"]);
        let text = tern_text(&d1, &["show", "replication-status"]);
        let g = &status["groups"][0];
        assert_eq!(g["role"], "secondary", "{status}");
        for k in ["group", "database", "role", "primary"] {
            let x = g[k].as_str().expect("a string");
            assert!(text.contains(x), "{k} {x} not shown:\n{text}");
        }
        let refused = std::process::Command::new(binary("tern"))
            .args(["--url", &d1.url(), "--token", OPERATOR_TOKEN])
            .args(["conflicts", "apply", first])
            .output()
            .expect("run tern");
        assert!(!refused.status.success(), "applied on a secondary");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("switchover"), "{err}");
    }
    // A switchover whose candidate dies -9 the moment it has won: d2 paused for it, ends
    // the handoff once no claim can come any more, and takes writes again.
    d1.kill9();
    let mut candidate = Ternd::start(&c1, &[("TERN_CRASH_AT", "switchover.won")]);
    wait_until("the candidate hears d2", WAIT, || {
        (availability(&candidate, "d2")? == "available").then_some(())
    });
    let r = candidate.op("POST", "/v1/accounts/a1/databases/sales/switchover", "{}");
    assert_eq!(r.status, 0, "the candidate answered: {}", r.body);
    tern_scenarios::ternd::wait_exit(&mut candidate.child, WAIT);
    assert!(
        candidate.logs().contains("crash point reached"),
        "{}",
        candidate.logs()
    );
    let r = d2.op("POST", &format!("{tbl}/rows"), &rows_json(7000, 7001));
    assert_eq!(r.status, 503, "paused for the switchover: {}", r.body);
    let mut next = 7001;
    wait_until("d2 takes writes again", WAIT, || {
        let r = d2.op("POST", &format!("{tbl}/rows"), &rows_json(next, next + 1));
        assert!(r.status == 200 || r.status == 503, "{}", r.body);
        (r.status == 200).then(|| {
            acked.push(next);
            next += 1;
        })
    });
    let d1 = Ternd::start(&c1, &[]);
    wait_until("d1 hears d2 and has caught up", WAIT, || {
        let caught_up = scan_all(&d1, PRIMARY)? == scan_all(&d2, &tbl)?;
        (availability(&d1, "d2")? == "available" && caught_up).then_some(())
    });
    let back = tern(&d1, &["database", "switchover", "a1", "sales"]);
    assert_eq!(back["previous_primary"], "d2", "{back}");
    // Asked again, it is done already: nothing changes.
    let again = tern(&d1, &["database", "switchover", "a1", "sales"]);
    assert_eq!(again["epoch"], back["epoch"], "{again}");
    assert_eq!(again["previous_primary"], Value::Null, "{again}");
    // Records in the order of their transactions: all applied but the last, discarded.
    let by_txn = records_by_txn(&list);
    if let Some((last, rest)) = by_txn.split_last() {
        for id in rest {
            let applied = tern(&d1, &["conflicts", "apply", id]);
            assert_eq!(
                applied["versions"].as_array().map(Vec::len),
                Some(1),
                "{applied}"
            );
        }
        let discarded = tern(&d1, &["conflicts", "discard", last]);
        assert_eq!(discarded["state"], "discarded", "{discarded}");
    }
    let mut want: Vec<i64> = acked.clone();
    want.extend(stale.iter().take(stale.len().saturating_sub(1)));
    want.sort_unstable();
    let on_d1 = ids(&scan_all(&d1, PRIMARY).expect("scan d1"));
    assert_eq!(
        on_d1, want,
        "every acknowledged write once, the applied records, not the discarded one"
    );
    wait_until("d2 follows d1 again", WAIT, || {
        (scan_all(&d2, &tbl)? == scan_all(&d1, PRIMARY)?).then_some(())
    });
}

/// `tern --json <args>` against `d`, as JSON.
fn tern(d: &Ternd, args: &[&str]) -> Value {
    serde_json::from_str(&tern_text(d, &[&["--json"], args].concat())).expect("json")
}

/// `tern <args>` against `d`: its output; panics when it fails.
fn tern_text(d: &Ternd, args: &[&str]) -> String {
    let out = std::process::Command::new(binary("tern"))
        .args(["--url", &d.url(), "--token", OPERATOR_TOKEN])
        .args(args)
        .output()
        .expect("run tern");
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ids of the conflict records of `tern conflicts list`, in the order of their
/// transactions.
fn records_by_txn(list: &Value) -> Vec<String> {
    let mut by_txn: Vec<(i64, String)> = list["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .filter_map(|c| Some((c["txn_id"].as_i64()?, c["id"].as_str()?.to_string())))
        .collect();
    by_txn.sort();
    by_txn.into_iter().map(|(_, id)| id).collect()
}

/// The ids of single-row inserts an old primary kept as conflict records (sorted).
fn conflict_ids(d: &Ternd) -> Vec<i64> {
    let conflicts = d.op("GET", "/v1/conflicts", "").json();
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
    kept
}

/// Three daemons; a steady load of single-row inserts with unique ids on the primary d1,
/// killed -9 in the middle of it. d2 fails over without `--allow-data-loss` (d3 makes the
/// majority; if d3 applied more of d1's transactions the group refuses d2 and d3 is
/// promoted instead), takes writes; the other re-parents and follows. d1 comes back
/// fenced. Every
/// acknowledged write is on d2 exactly once or in exactly one conflict record on d1, and
/// the known loss d2 reported is no more than what d1 kept.
#[test]
fn ternd_three_primary_killed_under_load_majority_failover() {
    let Three {
        dir: _dir,
        configs,
        d1,
        d2,
        d3,
        t2,
        t3,
    } = three(FAST);
    wait_until("d2 and d3 hear d1", WAIT, || {
        (availability(&d2, "d1")? == "available" && availability(&d3, "d1")? == "available")
            .then_some(())
    });

    // A steady load of single-row inserts on d1.
    let load = Load::start(&d1, PRIMARY, 1000);
    load.until_acked(30);
    // The primary's region is lost in the middle of the load.
    d1.kill9();
    let acked_before = load.acked();
    wait_until("d2 judges d1 unavailable", WAIT, || {
        (availability(&d2, "d1")? == "unavailable").then_some(())
    });
    let (mut acked, unknown) = load.stop();
    assert_eq!(acked, acked_before, "nothing acknowledged after the kill");
    // The operator fails over on d2; the group refuses it if d3 applied more of d1's
    // transactions, and then d3 is the one to promote.
    let r = d2.op("POST", FAILOVER, r#"{"allow_data_loss":false}"#);
    let (r, new, new_t, other, other_t) = if r.status == 400
        && r.error()
            .1
            .contains("applied the old primary's transaction")
    {
        let r = d3.op(
            "POST",
            "/v1/accounts/a3/databases/sales_replica/failover",
            r#"{"allow_data_loss":false}"#,
        );
        (r, &d3, &t3, &d2, &t2)
    } else {
        (r, &d2, &t2, &d3, &t3)
    };
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert!(report["epoch"].as_u64().is_some_and(|e| e >= 2), "{report}");
    assert_eq!(report["forced"], false, "{report}");
    let new_id = if std::ptr::eq(new, &d2) { "d2" } else { "d3" };
    let known_loss = report["known_loss_txns"].as_u64().expect("known loss");
    for k in 0..3 {
        let id = 50_000 + k;
        let r = new.op("POST", &format!("{new_t}/rows"), &rows_json(id, id + 1));
        assert_eq!(r.status, 200, "{}", r.body);
        acked.push(id);
    }
    wait_until("the other secondary follows the new primary", WAIT, || {
        let s = other.op("GET", "/v1/replication/status", "").json();
        let up = s["replicas"].as_array()?.first()?["upstream"].as_str()? == new_id;
        (up && scan_all(other, other_t)? == scan_all(new, new_t)?).then_some(())
    });

    // d1 comes back: fenced, a secondary of the new primary, what it acknowledged but never shipped
    // kept as conflict records.
    let d1 = Ternd::start(&configs[0], &[]);
    wait_until("d1 equals the new primary", WAIT, || {
        let s = d1.op("GET", "/v1/replication/status", "").json();
        let fenced = s["groups"].as_array()?.first()?["role"] == "secondary";
        (fenced && scan_all(&d1, PRIMARY)? == scan_all(new, new_t)?).then_some(())
    });
    let r = d1.op(
        "POST",
        &format!("{PRIMARY}/rows"),
        &rows_json(90_000, 90_001),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let on_new = ids(&scan_all(new, new_t).expect("scan the new primary"));
    let kept = conflict_ids(&d1);
    check_each_once(10, &acked, &unknown, &[&on_new, &kept]);
    assert!(
        known_loss <= kept.len() as u64,
        "reported loss {known_loss} > kept {}",
        kept.len()
    );
    drop(d3);
}

/// A steady load of single-row inserts with unique ids (from `first` up) on one daemon's
/// table, from a thread: which were acknowledged, and which had no answer (the daemon died
/// under them: committed or not). A write refused before it could commit (503: the
/// primary paused) is neither.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    writer: std::thread::JoinHandle<Vec<i64>>,
}

impl Load {
    fn start(d: &Ternd, table: &str, first: i64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let (stop, acked, addr) = (stop.clone(), acked.clone(), d.addr.clone());
            let path = format!("{table}/rows");
            std::thread::spawn(move || {
                let mut unknown = Vec::new();
                let mut next = first;
                while !stop.load(Ordering::Relaxed) {
                    let body = rows_json(next, next + 1);
                    let r = request(
                        &addr,
                        "POST",
                        &path,
                        Some(OPERATOR_TOKEN),
                        "application/json",
                        body.as_bytes(),
                    );
                    match r.status {
                        200 => acked.lock().expect("acked").push(next),
                        503 => {}
                        0 => {
                            unknown.push(next);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        other => panic!("write {next}: {other} {}", r.body),
                    }
                    next += 1;
                }
                unknown
            })
        };
        Load {
            stop,
            acked,
            writer,
        }
    }

    /// The acknowledged ids so far.
    fn acked(&self) -> Vec<i64> {
        self.acked.lock().expect("acked").clone()
    }

    /// Waits until at least `n` writes were acknowledged.
    fn until_acked(&self, n: usize) {
        wait_until("the load to be under way", WAIT, || {
            (self.acked.lock().expect("acked").len() >= n).then_some(())
        });
    }

    /// Stops the load: (acknowledged, unanswered).
    fn stop(self) -> (Vec<i64>, Vec<i64>) {
        self.stop.store(true, Ordering::Relaxed);
        let unknown = self.writer.join().expect("writer");
        let acked = self.acked.lock().expect("acked").clone();
        (acked, unknown)
    }
}

/// Every point of a rejoin and of the resync after it, in the order they are met: the old
/// primary's daemon is started with each armed in turn (`TERN_CRASH_AT`) and kills itself
/// -9 there.
const REJOIN_POINTS: &[&str] = &[
    "rewind.table_rolled_back",
    "rewind.refresh_asked",
    "import.dictionary_applied",
    "apply.files_copied",
    "logged",
    "import.committed",
    "import.finished",
];

/// The whole cycle under a unique-id write load, with the rejoin and the resync killed -9
/// at each of their points: d1 (primary) killed under load; d2 fails over; d1 returns cut
/// off from d2 (its peer bucket unreachable) and acknowledges writes as the primary of
/// the old epoch; then it rejoins, and dies at every point of the rewind and the resync
/// in turn while d2 takes writes; started clean it ends equal to d2, every acknowledged
/// write on d2 exactly once or in exactly one conflict record on d1. A switchover takes
/// the primary back to d1, which applies every record: then every acknowledged write is
/// on d1 exactly once, and d2 equals it.
#[test]
fn ternd_rejoin_and_resync_killed_at_each_point_lose_nothing() {
    let Two {
        dir,
        l1,
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
    wait_until("d2 hears d1", WAIT, || {
        (availability(&d2, "d1")? == "available").then_some(())
    });
    let load = Load::start(&d1, PRIMARY, 1000);
    load.until_acked(30);
    d1.kill9();
    let (mut acked, mut unknown) = load.stop();
    wait_until("d2 judges d1 unavailable", WAIT, || {
        (availability(&d2, "d1")? == "unavailable").then_some(())
    });
    let r = d2.op("POST", FAILOVER, r#"{"allow_data_loss":true}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["epoch"], 2, "{}", r.body);

    // d1 returns cut off from d2: what d2 wrote into d1's bucket (its claim of epoch 2
    // among it) is out of reach, and d2 cannot write there (its folder is a file now).
    // d1 never hears of epoch 2 and acknowledges writes as the primary of epoch 1.
    let from_d2 = l1.home.join("replication").join("from").join("d2");
    let aside = dir.path().join("from-d2-aside");
    with_stopped(&d2, || {
        std::fs::rename(&from_d2, &aside).expect("move d2's folder aside");
        std::fs::write(&from_d2, b"cut off").expect("block d2's folder");
    });
    let cut_off = Ternd::start(&c1, &[]);
    let mut stale = Vec::new();
    for id in 20_000..20_010 {
        let r = cut_off.op("POST", &format!("{PRIMARY}/rows"), &rows_json(id, id + 1));
        assert_eq!(r.status, 200, "{}", r.body);
        stale.push(id);
    }
    cut_off.kill9();
    acked.extend(&stale);
    with_stopped(&d2, || {
        std::fs::remove_file(&from_d2).expect("unblock d2's folder");
        std::fs::rename(&aside, &from_d2).expect("put d2's folder back");
    });

    // It rejoins under d2's load and is killed at each point of the rejoin and resync.
    let load = Load::start(&d2, &tbl, 100_000);
    for point in REJOIN_POINTS {
        Ternd::run_to_crash(&c1, &[], point, WAIT);
    }
    let d1 = Ternd::start(&c1, &[]);
    let during = load.acked().len();
    let (more, lost) = load.stop();
    assert!(during > 0, "d2 took writes during the rejoin");
    acked.extend(more);
    unknown.extend(lost);
    wait_until("d1 is d2's fenced secondary and equals it", WAIT, || {
        let s = d1.op("GET", "/v1/replication/status", "").json();
        let fenced = s["groups"].as_array()?.first()?["role"] == "secondary";
        (fenced && scan_all(&d1, PRIMARY)? == scan_all(&d2, &tbl)?).then_some(())
    });
    let on_d2 = ids(&scan_all(&d2, &tbl).expect("scan d2"));
    let kept = conflict_ids(&d1);
    check_each_once(100, &acked, &unknown, &[&on_d2, &kept]);
    assert!(
        stale.iter().all(|i| kept.contains(i)),
        "what d1 acknowledged cut off is kept: {stale:?} vs {kept:?}"
    );

    // Failback: the primary returns to d1, which re-applies every record.
    wait_until("d1 hears d2", WAIT, || {
        (availability(&d1, "d2")? == "available").then_some(())
    });
    let back = tern(&d1, &["database", "switchover", "a1", "sales"]);
    assert_eq!(back["previous_primary"], "d2", "{back}");
    let list = tern(&d1, &["conflicts", "list"]);
    for id in &records_by_txn(&list) {
        let applied = tern(&d1, &["conflicts", "apply", id]);
        assert_eq!(applied["already"], false, "{applied}");
    }
    let on_d1 = ids(&scan_all(&d1, PRIMARY).expect("scan d1"));
    check_each_once(100, &acked, &unknown, &[&on_d1]);
    wait_until("d2 follows d1 again", WAIT, || {
        (scan_all(&d2, &tbl)? == scan_all(&d1, PRIMARY)?).then_some(())
    });
    // Nothing was left behind: no copy or import job waits or failed on either, no
    // message failed.
    for d in [&d1, &d2] {
        let jobs = tern(d, &["replication", "jobs"]);
        assert_eq!(jobs["jobs"], json!([]), "{jobs}");
        let failed = tern(d, &["messages", "failed"]);
        assert_eq!(failed["messages"], json!([]), "{failed}");
        let m = request(
            &d.addr,
            "GET",
            "/metrics?fresh=true",
            None,
            "text/plain",
            b"",
        )
        .body;
        assert!(m.contains("\ntern_messages_failed 0\n"), "{m}");
        // Failed jobs are counted per peer and kind (zeros listed): every count is 0.
        let failed_jobs: Vec<&str> = m
            .lines()
            .filter(|l| l.contains("state=\"failed\"") && !l.ends_with(" 0"))
            .collect();
        assert!(failed_jobs.is_empty(), "{failed_jobs:?}");
    }
    // d2, now a replica of d1, knows how fresh its view of the primary is.
    let m = request(
        &d2.addr,
        "GET",
        "/metrics?fresh=true",
        None,
        "text/plain",
        b"",
    )
    .body;
    assert!(m.contains("tern_replication_staleness_seconds{"), "{m}");
}

/// Every acknowledged id is in exactly one of `places` exactly once; nothing is there but
/// the rows loaded first (ids below `first`), acknowledged ids, and ids whose write had
/// no answer.
fn check_each_once(first: i64, acked: &[i64], unknown: &[i64], places: &[&[i64]]) {
    let mut count: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    for id in places.iter().flat_map(|p| p.iter()) {
        *count.entry(*id).or_default() += 1;
    }
    let twice: Vec<i64> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        twice.is_empty(),
        "in more than one place, or twice: {twice:?}"
    );
    let mut lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|i| !count.contains_key(i))
        .collect();
    lost.sort_unstable();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    let mut extra: Vec<i64> = count
        .keys()
        .copied()
        .filter(|i| *i >= first && !acked.contains(i) && !unknown.contains(i))
        .collect();
    extra.sort_unstable();
    assert!(extra.is_empty(), "never written: {extra:?}");
}
