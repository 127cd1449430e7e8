//! Replication between two real `ternd` processes on local folders: a global account on
//! each, a primary database on d1, a read-only secondary replica on d2 that catches up,
//! refuses writes, survives a kill -9 while following without duplicates, uses its
//! account's stored customer key, and nothing plaintext or Parquet-shaped lands in the
//! buckets; and a first refresh whose source is killed -9 mid-copy and whose replica is
//! killed -9 mid-import, which resumes to exactly the primary's rows with no orphan file.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tern_scenarios::ternd::{Layout, OPERATOR_TOKEN, Ternd, request};

pub(crate) const PRIMARY: &str = "/v1/accounts/a1/databases/sales/schemas/public/tables/orders";
pub(crate) const CANARY: &str = "plaintext-canary-7f3a";

fn peer_config(others: &[&Layout], replication: &str) -> String {
    let peers: String = others
        .iter()
        .map(|o| {
            format!(
                "[[peers]]\nid = \"{}\"\n[peers.bucket]\nurl = \"file://{}/replication\"\n",
                o.id,
                o.home.display()
            )
        })
        .collect();
    format!(
        "ship_interval = \"100ms\"\ncontrol_interval = \"100ms\"\nannounce_interval = \"1s\"\n{replication}\
         [workers]\nheartbeat_interval = \"1s\"\n[messaging]\npoll_interval = \"100ms\"\n{peers}"
    )
}

/// `Layout::config` ends with the `[log]` table; the replication settings must go into
/// `[replication]`, so they are spliced in right after its `url`.
pub(crate) fn config(l: &Layout, others: &[&Layout], replication: &str) -> String {
    let base = l.config("");
    let extra = peer_config(others, replication);
    let (settings, rest) = extra.split_once("[workers]").expect("split");
    let repl_url = format!("url = \"file://{}/replication\"\n", l.home.display());
    let with_settings = base.replacen(&repl_url, &format!("{repl_url}{settings}"), 1);
    assert_ne!(with_settings, base, "replication settings spliced in");
    format!("{with_settings}[workers]{rest}")
}

/// Links two running daemons (a channel each way).
pub(crate) fn link(a: &Ternd, a_id: &str, b: &Ternd, b_id: &str) {
    let r = a.op(
        "POST",
        "/v1/deployments",
        &json!({"id": b_id, "region": format!("r-{b_id}")}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let g_ab = r.json()["genesis"].clone();
    let r = b.op(
        "POST",
        "/v1/deployments",
        &json!({"id": a_id, "region": format!("r-{a_id}"), "genesis": g_ab}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let g_ba = r.json()["genesis"].to_string();
    let r = a.op("POST", &format!("/v1/deployments/{b_id}/channel"), &g_ba);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Makes the accounts (`(daemon, account)`, the first founding) global accounts of one
/// account group.
pub(crate) fn global_accounts(members: &[(&Ternd, &str)]) {
    let mut group: Option<String> = None;
    for (d, a) in members {
        let r = d.op("POST", "/v1/accounts", &json!({"name": a}).to_string());
        assert_eq!(r.status, 201, "{}", r.body);
        let body = match &group {
            None => String::new(),
            Some(g) => json!({"group": g}).to_string(),
        };
        let r = d.op("POST", &format!("/v1/accounts/{a}/global"), &body);
        assert_eq!(r.status, 200, "{}", r.body);
        group.get_or_insert_with(|| r.json()["group"].as_str().expect("group").to_string());
    }
}

pub(crate) fn rows_json(from: i64, to: i64) -> String {
    let rows: Vec<Value> = (from..to)
        .map(|i| json!({"id": i, "customer": format!("{CANARY}-{i}"), "amount": i as f64 / 4.0}))
        .collect();
    Value::Array(rows).to_string()
}

/// All rows of a table, sorted by id.
pub(crate) fn scan_all(d: &Ternd, tbl: &str) -> Option<Vec<Value>> {
    let r = d.op("POST", &format!("{tbl}/scan"), "{}");
    if r.status != 200 {
        return None;
    }
    let mut rows = r.json()["rows"].as_array()?.clone();
    rows.sort_by_key(|r| r["id"].as_i64().unwrap_or(i64::MIN));
    Some(rows)
}

pub(crate) fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().filter_map(|r| r["id"].as_i64()).collect()
}

pub(crate) fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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
pub(crate) fn replica_table(d2: &Ternd) -> Option<String> {
    replica_table_in(d2, "a2")
}

/// The replica's table path in `account` of `d`.
pub(crate) fn replica_table_in(d: &Ternd, account: &str) -> Option<String> {
    let r = d.op(
        "GET",
        &format!("/v1/accounts/{account}/databases/sales_replica/tables"),
        "",
    );
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    let t = v["tables"].as_array()?.first()?.clone();
    let name = t["name"].as_str()?;
    let schema = t["schema"].as_str().unwrap_or("public");
    Some(format!(
        "/v1/accounts/{account}/databases/sales_replica/schemas/{schema}/tables/{name}"
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

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Two linked daemons, d1 and d2, each with a global account (a1, a2) of one account
/// group; `env` goes to both (d2 also joins d1's key group: `env2`).
pub(crate) struct Two {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) l1: Layout,
    pub(crate) l2: Layout,
    pub(crate) c1: std::path::PathBuf,
    pub(crate) c2: std::path::PathBuf,
    pub(crate) d1: Ternd,
    pub(crate) d2: Ternd,
    pub(crate) join: String,
}

/// d2's environment: d1's key folder to join, and `env`.
pub(crate) fn env2<'a>(join: &'a str, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![("TERN_KEYS__JOIN", join)];
    all.extend_from_slice(env);
    all
}

fn two(env: &[(&str, &str)]) -> Two {
    two_with(env, "")
}

/// [`two`] with more `[replication]` settings (TOML lines).
pub(crate) fn two_with(env: &[(&str, &str)], replication: &str) -> Two {
    let dir = tempfile::tempdir().expect("tmp");
    let (l1, l2) = (Layout::new(dir.path(), "d1"), Layout::new(dir.path(), "d2"));
    let c1 = l1.write_config(&config(&l1, &[&l2], replication));
    let d1 = Ternd::start(&c1, env);
    let join = format!("{}/keys", l1.home.display());
    let c2 = l2.write_config(&config(&l2, &[&l1], replication));
    let d2 = Ternd::start(&c2, &env2(&join, env));
    link(&d1, "d1", &d2, "d2");
    global_accounts(&[(&d1, "a1"), (&d2, "a2")]);
    Two {
        dir,
        l1,
        l2,
        c1,
        c2,
        d1,
        d2,
        join,
    }
}

/// The primary on d1: `sales.public.orders` loaded by `batches` inserts of `rows` rows
/// (a micro-partition each), made global; its database group, once d2 knows it.
pub(crate) fn primary(d1: &Ternd, d2: &Ternd, batches: i64, rows: i64) -> String {
    let r = d1.op("POST", "/v1/accounts/a1/databases", r#"{"name":"sales"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = d1.op(
        "POST",
        "/v1/accounts/a1/databases/sales/schemas/public/tables",
        r#"{"name":"orders","columns":[{"name":"id","type":"int64","nullable":false},{"name":"customer","type":"utf8"},{"name":"amount","type":"float64"}]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    for b in 0..batches {
        let (from, to) = (b * rows, (b + 1) * rows);
        let r = d1.op("POST", &format!("{PRIMARY}/rows"), &rows_json(from, to));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = d1.op(
        "POST",
        "/v1/accounts/a1/databases/sales/replication",
        r#"{"enable":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let group = r.json()["group"].as_str().expect("group").to_string();
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
    group
}

pub(crate) fn create_replica(d2: &Ternd, group: &str) {
    create_replica_in(d2, "a2", group);
}

/// A replica `sales_replica` of `group` in `account` of `d`.
pub(crate) fn create_replica_in(d: &Ternd, account: &str, group: &str) {
    let r = d.op(
        "POST",
        &format!("/v1/accounts/{account}/replicas"),
        &json!({"name":"sales_replica","group":group}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

/// Three linked daemons: the primary `sales` on d1 (10 rows), made global, and a replica of
/// it on d2 and on d3, both caught up.
pub(crate) struct Three {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) configs: Vec<std::path::PathBuf>,
    pub(crate) d1: Ternd,
    pub(crate) d2: Ternd,
    pub(crate) d3: Ternd,
    /// The replica's table on d2 and on d3.
    pub(crate) t2: String,
    pub(crate) t3: String,
}

/// [`Three`], with `replication` (TOML lines) in every daemon's `[replication]`.
pub(crate) fn three(replication: &str) -> Three {
    const WAIT: Duration = Duration::from_secs(60);
    let dir = tempfile::tempdir().expect("tmp");
    let ls: Vec<Layout> = ["d1", "d2", "d3"]
        .iter()
        .map(|id| Layout::new(dir.path(), id))
        .collect();
    let join = format!("{}/keys", ls[0].home.display());
    let configs: Vec<_> = (0..3)
        .map(|i| {
            let others: Vec<&Layout> = (0..3).filter(|j| *j != i).map(|j| &ls[j]).collect();
            ls[i].write_config(&config(&ls[i], &others, replication))
        })
        .collect();
    let d1 = Ternd::start(&configs[0], &[]);
    let d2 = Ternd::start(&configs[1], &[("TERN_KEYS__JOIN", &join)]);
    let d3 = Ternd::start(&configs[2], &[("TERN_KEYS__JOIN", &join)]);
    link(&d1, "d1", &d2, "d2");
    link(&d1, "d1", &d3, "d3");
    link(&d2, "d2", &d3, "d3");
    global_accounts(&[(&d1, "a1"), (&d2, "a2"), (&d3, "a3")]);
    let group = primary(&d1, &d2, 1, 10);
    wait_until("d3 lists the database group", WAIT, || {
        let v = d3.op("GET", "/v1/accounts/a3/global/databases", "").json();
        v["databases"]
            .as_array()?
            .iter()
            .any(|r| r["replication_group"] == group.as_str())
            .then_some(())
    });
    create_replica_in(&d2, "a2", &group);
    create_replica_in(&d3, "a3", &group);
    let t2 = wait_until("d2 has its replica", WAIT, || {
        let t = replica_table_in(&d2, "a2")?;
        (scan_all(&d2, &t)?.len() == 10).then_some(t)
    });
    let t3 = wait_until("d3 has its replica", WAIT, || {
        let t = replica_table_in(&d3, "a3")?;
        (scan_all(&d3, &t)?.len() == 10).then_some(t)
    });
    Three {
        dir,
        configs,
        d1,
        d2,
        d3,
        t2,
        t3,
    }
}

/// Runs `f` while `d`'s process is stopped (SIGSTOP … SIGCONT): it does nothing meanwhile.
pub(crate) fn with_stopped(d: &Ternd, f: impl FnOnce()) {
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &d.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP");
    f();
    signal("-CONT");
}

/// One replica region's storage fails while the primary commits: d1 can no longer write
/// into d2's replication bucket (its `from/d1` folder is swapped for a file, so every
/// create there fails; d2 comes first in d1's list of replicas). d3 keeps following within
/// seconds, d1 reports the error for d2 only; once the folder is back d2 catches up with
/// every row exactly once.
#[test]
fn ternd_one_replica_unwritable_holds_up_no_other_and_catches_up_after() {
    let Three {
        dir,
        d1,
        d2,
        d3,
        t2,
        t3,
        ..
    } = three("");
    let wait = Duration::from_secs(60);
    // The writer stands still while its folder is swapped (the folder store removes a
    // folder that empties, so it may be absent between messages).
    let inbox = dir.path().join("d2/replication/from/d1");
    let aside = dir.path().join("d2-from-d1-aside");
    with_stopped(&d1, || {
        std::fs::create_dir_all(&inbox).expect("d1's folder in d2's bucket");
        std::fs::rename(&inbox, &aside).expect("move the folder aside");
        std::fs::write(&inbox, b"not a folder").expect("a file in its place");
    });

    for b in 1..6 {
        let r = d1.op(
            "POST",
            &format!("{PRIMARY}/rows"),
            &rows_json(b * 10, b * 10 + 10),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let expected = ids(&scan_all(&d1, PRIMARY).expect("scan the primary"));
    assert_eq!(expected.len(), 60);
    // d3 follows although d2's storage fails on every write.
    wait_until("d3 follows while d2 is unwritable", wait, || {
        (ids(&scan_all(&d3, &t3)?) == expected).then_some(())
    });
    // The primary reports the failure, for d2 only.
    let fine = wait_until("d1 reports d2's storage failure", wait, || {
        let s = d1.op("GET", "/v1/replication/status", "").json();
        let down = s["downstream"].as_array()?.clone();
        let of = |peer: &str| down.iter().find(|d| d["peer"] == peer).cloned();
        let (failing, fine) = (of("d2")?, of("d3")?);
        (failing["last_error"].is_string() && failing["records_behind"].as_u64()? > 0)
            .then_some(fine)
    });
    assert!(fine["last_error"].is_null(), "d3 has no error: {fine}");
    assert_eq!(fine["records_behind"], 0, "d3 is not behind: {fine}");
    // Nothing reached d2.
    assert_eq!(
        ids(&scan_all(&d2, &t2).expect("scan d2")),
        (0..10).collect::<Vec<_>>()
    );

    // The storage comes back: d2 catches up, each row once.
    with_stopped(&d1, || {
        std::fs::remove_file(&inbox).expect("remove the file");
        std::fs::rename(&aside, &inbox).expect("put the folder back");
    });
    wait_until("d2 catches up", wait, || {
        (ids(&scan_all(&d2, &t2)?) == expected).then_some(())
    });
    wait_until("d1 clears d2's error", wait, || {
        let s = d1.op("GET", "/v1/replication/status", "").json();
        let d = s["downstream"]
            .as_array()?
            .iter()
            .find(|d| d["peer"] == "d2")?
            .clone();
        (d["last_error"].is_null() && d["records_behind"] == 0).then_some(())
    });
}

/// A message file d2 cannot read for good (its bytes changed in d2's bucket before d2 read
/// it): d2's channel from d1 stalls on it, with the rows it carried. `tern messages resync`
/// moves the channel past it, d1 sends the skipped file's messages again, and d2 ends with
/// every row exactly once. Refused (409, nothing changed) while the channel is healthy.
#[test]
fn ternd_a_channel_stalled_on_an_unreadable_file_is_resynced_by_the_operator() {
    let Two { dir, d1, d2, .. } = two(&[]);
    let wait = Duration::from_secs(60);
    let group = primary(&d1, &d2, 1, 10);
    create_replica(&d2, &group);
    let t2 = wait_until("d2 has its replica", wait, || {
        let t = replica_table(&d2)?;
        (scan_all(&d2, &t)?.len() == 10).then_some(t)
    });
    let resync = || {
        Command::new(tern_scenarios::binary("tern"))
            .args(["messages", "resync", "--from", "d1", "--json"])
            .env("TERN_URL", format!("http://{}", d2.addr))
            .env("TERN_TOKEN", OPERATOR_TOKEN)
            .output()
            .expect("run tern")
    };
    let refused = resync();
    assert!(
        !refused.status.success(),
        "a healthy channel is not resynced"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("not stalled"), "{err}");

    // While d2 stands still, d1 commits; the first file d1 writes after that is damaged.
    let inbox = dir.path().join("d2/replication/from/d1/msg");
    let listing = || -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir(&inbox)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    with_stopped(&d2, || {
        let before = listing();
        let r = d1.op("POST", &format!("{PRIMARY}/rows"), &rows_json(10, 20));
        assert_eq!(r.status, 200, "{}", r.body);
        let first = wait_until("d1 writes a file d2 has not read", wait, || {
            listing().difference(&before).next().cloned()
        });
        let mut bytes = std::fs::read(&first).expect("read the file");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&first, bytes).expect("damage the file");
    });
    let expected = ids(&scan_all(&d1, PRIMARY).expect("scan the primary"));
    assert_eq!(expected.len(), 20);

    // d2 stalls on it; the operator resyncs once it has.
    let done = wait_until("the operator's resync goes through", wait, || {
        let out = resync();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("not stalled") || err.contains("no readable"),
            "{err}"
        );
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("JSON"))
    });
    assert_eq!(
        done["skipped_files"].as_array().map(Vec::len),
        Some(1),
        "{done}"
    );
    assert!(done["resend"].is_string(), "{done}");
    wait_until("d2 has every row, once", wait, || {
        (ids(&scan_all(&d2, &t2)?) == expected).then_some(())
    });
    let metrics = d1.op("GET", "/metrics?fresh=true", "").body;
    assert!(
        metrics.lines().any(|l| l.starts_with(r#"tern_messaging_total{event="resent"}"#)
            && !l.ends_with(" 0")),
        "d1 sent the skipped messages again:\n{metrics}"
    );
    let metrics = d2.op("GET", "/metrics?fresh=true", "").body;
    assert!(
        metrics.contains(r#"tern_message_rejections_total{reason="Skipped"} 1"#),
        "{metrics}"
    );
}

#[test]
fn ternd_replica_catches_up_is_read_only_and_survives_kill9() {
    let Two {
        dir: _dir,
        l1,
        l2,
        c1: _,
        c2,
        d1,
        mut d2,
        join,
    } = two(&[]);
    let env = env2(&join, &[]);
    // a2 uses its own key: every RepMK sent to it is sealed to it (stored: it holds
    // after the kill -9 below).
    // (inside d2's keys folder: the only place the daemon makes key files)
    let key_file = l2.home.join("keys").join("a2-customer.key");
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
    // The primary: a table with 100 rows.
    let group = primary(&d1, &d2, 1, 100);
    create_replica(&d2, &group);
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
    // Nothing in the buckets is Parquet-shaped or plaintext (read once both daemons have
    // stopped: running ones delete message and inbound files while the scan reads).
    assert!(d1.terminate().success());
    assert!(d2.terminate().success());
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
}

/// Files under `dir` (every depth) whose name passes `keep`.
fn count_files(dir: &Path, keep: impl Fn(&str) -> bool) -> usize {
    let mut all = Vec::new();
    files_under(dir, &mut all);
    all.iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .count()
}

/// Polls `f` every millisecond (to catch a moment in the middle of a copy).
fn wait_fast(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn ternd_refresh_killed_on_either_side_resumes_without_orphans() {
    // One file copy at a time, so that a refresh of 40 files can be caught half done.
    let env = [("TERN_REPLICATION__COPY_CONCURRENCY", "1")];
    let Two {
        dir: _dir,
        l1: _,
        l2,
        c1,
        c2,
        mut d1,
        mut d2,
        join,
    } = two(&env);
    const FILES: usize = 40;
    let group = primary(&d1, &d2, FILES as i64, 2000);
    let want = scan_all(&d1, PRIMARY).expect("primary scan");
    let inbound = l2.home.join("replication/from/d1/inbound");
    // Object files only (the folder store stages a put under `<name>#<n>` first).
    let object = |n: &str| !n.contains('#');
    create_replica(&d2, &group);

    // kill -9 the source while its copy worker fills d2's inbound stage.
    wait_fast(
        "the first file in d2's inbound stage",
        Duration::from_secs(60),
        || count_files(&inbound, object) > 0,
    );
    d1.kill9();
    let landed = count_files(&inbound, object);
    assert!(
        landed < FILES,
        "killed mid-copy: {landed} of {FILES} had landed"
    );
    d1 = Ternd::start(&c1, &env);

    // kill -9 the replica while it copies the answer's files into its volume.
    let volume = l2.home.join("volume");
    let imported = |n: &str| n.ends_with("_g.mp");
    wait_fast(
        "the first imported file in d2's volume",
        Duration::from_secs(60),
        || count_files(&volume, imported) > 0,
    );
    d2.kill9();
    let copied = count_files(&volume, imported);
    assert!(
        copied < FILES,
        "killed mid-import: {copied} of {FILES} were in"
    );
    d2 = Ternd::start(&c2, &env2(&join, &env));

    // Both resume: the replica has exactly the primary's rows.
    let tbl = wait_until(
        "the replica has the primary's rows",
        Duration::from_secs(120),
        || {
            let t = replica_table(&d2)?;
            (scan_all(&d2, &t)? == want).then_some(t)
        },
    );
    // No orphans: the replica's volume holds exactly its table's files, and the inbound
    // stage (the killed attempt's folder included) empties.
    let r = d2.op("POST", &format!("{tbl}/scan"), r#"{"limit":1}"#);
    let live = r.json()["files_total"].as_u64().expect("files_total") as usize;
    assert_eq!(live, FILES, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Objects only: a put the killed source had begun leaves the folder store's
        // staging file (`<name>#<n>`), which no listing shows and no delete removes —
        // debris of the folder store, not an object (S3 puts are atomic).
        let (mps, left) = (
            count_files(&volume, imported),
            count_files(&inbound, object),
        );
        if (mps, left) == (live, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans: {mps} micro-partition files in d2's volume for {live} live, {left} left in the inbound stage"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d1.terminate().success());
    assert!(d2.terminate().success());
}
