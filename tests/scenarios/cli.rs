//! The `tern` CLI against a real `ternd`, and `tern demo`.

use std::process::Command;

use serde_json::Value;
use tern_scenarios::binary;
use tern_scenarios::ternd::{Layout, OPERATOR_TOKEN, Ternd};

struct Cli {
    url: String,
    token: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(binary("tern"))
            .args(args)
            .env("TERN_URL", &self.url)
            .env("TERN_TOKEN", &self.token)
            .output()
            .expect("run tern");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Runs `tern args`: its exit status and stderr.
    fn exit(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(binary("tern"))
            .args(args)
            .env("TERN_URL", &self.url)
            .env("TERN_TOKEN", &self.token)
            .output()
            .expect("run tern");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "tern {args:?} failed: {err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("tern {args:?}: not JSON ({e}): {out}"))
    }
}

#[test]
fn tern_cli_ddl_dml_scans_and_time_travel_against_ternd() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let d = Ternd::start(&l.write_config(&l.config("")), &[]);
    let op = Cli {
        url: d.url(),
        token: OPERATOR_TOKEN.into(),
    };
    let token = op.json(&["account", "create", "acme"])["token"]
        .as_str()
        .expect("token")
        .to_string();
    // From here on, the account's own token.
    let t = Cli {
        url: d.url(),
        token,
    };
    t.ok(&["database", "create", "acme", "sales"]);
    t.ok(&[
        "table",
        "create",
        "acme.sales.orders",
        "id:int64:not-null",
        "customer:utf8",
        "amount:float64",
    ]);
    let out = t.ok(&["show", "tables", "acme", "sales"]);
    assert!(
        out.contains("orders") && out.contains("id int64 not null"),
        "{out}"
    );
    t.ok(&[
        "insert",
        "acme.sales.orders",
        "--rows",
        r#"[{"id":1,"customer":"a","amount":1.0}]"#,
    ]);
    let csv = dir.path().join("orders.csv");
    std::fs::write(&csv, "id,customer,amount\n2,b,2.0\n3,c,3.0\n").expect("write");
    let ndjson = dir.path().join("more.ndjson");
    std::fs::write(&ndjson, "{\"id\":4,\"customer\":\"d\"}\n").expect("write");
    let v = t.json(&[
        "load",
        "acme.sales.orders",
        csv.to_str().expect("p"),
        ndjson.to_str().expect("p"),
    ]);
    assert_eq!(v["rows"], 3, "{v}");
    // Scans as a table, as CSV, as JSON.
    let out = t.ok(&[
        "scan",
        "acme.sales.orders",
        "--where",
        r#"{"column":"id","op":"<=","value":2}"#,
    ]);
    assert!(out.starts_with("id | customer | amount"), "{out}");
    assert!(out.contains("2  | b        | 2.0"), "{out}");
    let out = t.ok(&[
        "scan",
        "acme.sales.orders",
        "--columns",
        "id,customer",
        "--csv",
    ]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines[1..].sort_unstable();
    assert_eq!(lines, ["id,customer", "1,a", "2,b", "3,c", "4,d"]);
    // DML.
    let v = t.json(&[
        "delete",
        "acme.sales.orders",
        "--where",
        r#"{"column":"id","op":"=","value":1}"#,
    ]);
    assert_eq!(v["rows"], 1);
    let v = t.json(&[
        "update",
        "acme.sales.orders",
        "--set",
        r#"{"amount":9.5}"#,
        "--where",
        r#"{"column":"amount","is_null":true}"#,
    ]);
    assert_eq!(v["rows"], 1);
    let v = t.json(&[
        "merge",
        "acme.sales.orders",
        "--keys",
        "id",
        "--rows",
        r#"[{"id":2,"customer":"B"},{"id":5,"customer":"e"}]"#,
    ]);
    assert_eq!(v["committed"], true, "{v}");
    let v = t.json(&["scan", "acme.sales.orders"]);
    let mut got: Vec<(i64, String)> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().expect("id"),
                r["customer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (2, "B".into()),
            (3, "c".into()),
            (4, "d".into()),
            (5, "e".into())
        ]
    );
    // Versions and time travel.
    let v = t.json(&["show", "versions", "acme.sales.orders"]);
    let current = v["current"].as_u64().expect("current");
    assert_eq!(current, 6, "{v}");
    let v = t.json(&["scan", "acme.sales.orders", "--version", "3"]);
    assert_eq!(
        v["rows"].as_array().expect("rows").len(),
        4,
        "before the delete: {v}"
    );
    // Errors come back named, with a non-zero exit.
    let (ok, _, err) = t.run(&["scan", "acme.sales.nope"]);
    assert!(!ok);
    assert!(err.contains("not_found") && err.contains("nope"), "{err}");
    let (ok, _, err) = t.run(&["insert", "acme.sales.orders", "--rows", r#"[{"id":"x"}]"#]);
    assert!(!ok);
    assert!(err.contains("invalid_input") && err.contains("id"), "{err}");
    let (ok, _, err) = t.run(&["status"]);
    assert!(
        !ok && err.contains("forbidden"),
        "status is the operator's: {err}"
    );
    // Operator views.
    let out = op.ok(&["status"]);
    assert!(
        out.contains("receiver d1") && out.contains("recovery"),
        "{out}"
    );
    let v = op.json(&["show", "deployments"]);
    assert_eq!(v["deployments"][0]["id"], "d1", "{v}");
    assert!(d.terminate().success());
}

/// Every scalar value of `v` under a member named in `keys` (recursively; strings of
/// an array too), as the CLI's tables print them.
fn scalars(v: &Value, keys: &[&str], out: &mut Vec<String>) {
    match v {
        Value::String(s) if !s.is_empty() => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| scalars(x, keys, out)),
        Value::Object(o) => o
            .iter()
            .filter(|(k, x)| keys.contains(&k.as_str()) || x.is_array())
            .for_each(|(_, x)| scalars(x, keys, out)),
        _ => {}
    }
}

/// The CLI's tables show what the daemon answered: each value of the `--json` answer
/// (the daemon's body, through the typed `tern-api` types both sides share) appears in
/// the table of the same command, so a field renamed on one side is never a blank column.
#[test]
fn tern_cli_tables_show_the_values_the_daemon_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let d = Ternd::start(
        &l.write_config(&l.config("")),
        &[("TERN_REGION", "eu-test-1"), ("TERN_CLOUD", "local")],
    );
    let op = Cli {
        url: d.url(),
        token: OPERATOR_TOKEN.into(),
    };
    let created = op.json(&["account", "create", "acme"]);
    assert!(
        created["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{created}"
    );
    let created = op.json(&["database", "create", "acme", "sales"]);
    assert_eq!(created["database"], "sales", "{created}");
    op.ok(&["database", "create", "acme", "stock"]);
    // One command per resource group: tables, tokens, keys, global, connections, policy,
    // jobs, conflicts.
    op.ok(&[
        "table",
        "create",
        "acme.sales.orders",
        "id:int64:not-null",
        "customer:utf8",
    ]);
    op.ok(&[
        "insert",
        "acme.sales.orders",
        "--rows",
        r#"[{"id":1,"customer":"a"}]"#,
    ]);
    op.ok(&[
        "token",
        "create",
        "acme",
        "--read-only",
        "--name",
        "grafana",
    ]);
    let group = op.json(&["account", "global", "acme"]);
    assert!(
        group["group"].as_str().is_some_and(|g| !g.is_empty()),
        "{group}"
    );
    let made = op.json(&["database", "replication", "acme", "sales", "enable"]);
    let db_group = made["group"]
        .as_str()
        .expect("a database group")
        .to_string();
    op.ok(&[
        "connection",
        "create",
        "acme",
        "sales_conn",
        "--group",
        &db_group,
    ]);
    // The command, the members its table shows, values that must be among them.
    for (args, keys, must) in [
        (
            &["show", "tables", "acme", "sales"][..],
            &["schema", "name", "version"][..],
            &["public", "orders"][..],
        ),
        (
            &["show", "versions", "acme.sales.orders"],
            &["version", "txn_id", "committed_at_ms", "files_added"],
            &["1"],
        ),
        (
            &["token", "list", "acme"],
            &["id", "name", "created_at_ms"],
            &["grafana"],
        ),
        (
            &["account", "keys", "acme"],
            &["version", "state", "created_at_ms"],
            &["active"],
        ),
        (
            &["show", "global-accounts", "acme"],
            &["region", "deployment", "account", "replication_group"],
            &["d1", "acme", "eu-test-1"],
        ),
        (
            &["show", "global-databases", "acme"],
            &["deployment", "account", "replication_group", "name", "role"],
            &["sales", "primary", db_group.as_str()],
        ),
        (
            &["show", "connections", "acme"],
            &["name", "group", "primary", "epoch"],
            &["sales_conn", db_group.as_str(), "d1"],
        ),
        (&["replication", "jobs"], &["id", "state"], &[]),
        (
            &["show", "replication-status"],
            &[
                "group",
                "database",
                "role",
                "epoch",
                "primary",
                "rpo_exposure_ms",
            ],
            &[db_group.as_str(), "sales", "primary", "d1"],
        ),
        (&["conflicts", "list"], &["id", "origin"], &[]),
        (&["account", "list"], &[], &["acme"]),
        (
            &["database", "list", "acme"],
            &["name", "id", "role"],
            &["sales", "stock", "local"],
        ),
        (
            &["show", "deployments"],
            &["id", "region", "cloud"],
            &["d1", "eu-test-1", "local"],
        ),
    ] {
        let v = op.json(args);
        let table = op.ok(args);
        let mut values = Vec::new();
        scalars(&v, keys, &mut values);
        for m in must {
            assert!(
                values.iter().any(|x| x == m),
                "{args:?}: {m} not answered: {v}"
            );
        }
        for x in &values {
            assert!(
                table.contains(x.as_str()),
                "{args:?}: {x} answered but not shown:\n{table}\n{v}"
            );
        }
    }
    // `database policy` (one object): every scalar it answered is shown.
    let v = op.json(&["database", "policy", "acme", "sales"]);
    let out = op.ok(&["database", "policy", "acme", "sales"]);
    for k in ["database", "group", "epoch", "primary"] {
        let x = match &v[k] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert!(out.contains(&x), "policy {k} {x:?} not shown:\n{out}\n{v}");
    }
    // `status`: its head line names the deployment, region and cloud it answered.
    let v = op.json(&["status"]);
    let out = op.ok(&["status"]);
    let head = out.lines().next().unwrap_or_default();
    for k in ["deployment", "region", "cloud"] {
        let x = v[k].as_str().expect("a string");
        assert!(
            !x.is_empty() && head.contains(x),
            "{k} {x:?} not in {head:?}"
        );
    }
    assert!(d.terminate().success());
}

/// `tern demo` runs the whole failover cycle with three real daemons: replicated (hub and
/// chain), the primary killed, a majority failover to epoch 2 that loses no acknowledged
/// write (each is on the new primary or in one conflict record), the switchover back to
/// d1 at epoch 3, every replica equal to the primary, every daemon stopped cleanly.
#[test]
fn tern_demo_runs_a_group_of_daemons_and_stops_them_cleanly() {
    // The demo finds ternd beside tern; build it first.
    let _ = binary("ternd");
    let out = Command::new(binary("tern"))
        .args(["demo", "--rows", "5000", "--json"])
        .output()
        .expect("run tern demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let steps = report["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "start deployments",
            "form the group",
            "global accounts",
            "create database",
            "load",
            "query",
            "delete + time travel",
            "group messages",
            "replicate",
            "follow writes",
            "kill the primary",
            "primary unavailable",
            "failover",
            "writes on new primary",
            "old primary returns",
            "conflict records",
            "switchover",
            "final check",
            "traffic",
            "stop",
        ]
    );
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    };
    // Both replicas followed every batch, the chain one too.
    let lags = step("follow writes")["data"]["lag_ms"]
        .as_array()
        .expect("lags");
    assert_eq!(lags.len(), 2, "{lags:?}");
    assert!(
        lags.iter()
            .all(|l| l["ms"].as_array().map(Vec::len) == Some(5)),
        "{lags:?}"
    );
    assert!(
        step("replicate")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("d3 follows d2 (chain")),
        "{}",
        step("replicate")
    );
    // A majority failover: epoch 2, not forced, with its RTO.
    let failover = &step("failover")["data"];
    assert_eq!(failover["epoch"], 2, "{failover}");
    assert_eq!(failover["previous_primary"], "d1", "{failover}");
    assert_eq!(failover["forced"], false, "{failover}");
    assert!(failover["rto_ms"].as_u64().is_some(), "{failover}");
    // Every write acknowledged before the kill is on d2 or in a conflict record of d1.
    let conflicts = &step("conflict records")["data"];
    let acked = conflicts["acknowledged"].as_u64().expect("acknowledged");
    assert!(acked >= 50, "{conflicts}");
    assert_eq!(
        conflicts["on_new_primary"].as_u64().expect("on d2")
            + conflicts["in_conflict_records"].as_u64().expect("kept"),
        acked,
        "{conflicts}"
    );
    assert!(
        conflicts["count"].as_u64() >= conflicts["in_conflict_records"].as_u64(),
        "{conflicts}"
    );
    // Switched back to d1 with nothing lost.
    let switchover = &step("switchover")["data"];
    assert_eq!(switchover["epoch"], 3, "{switchover}");
    assert_eq!(switchover["previous_primary"], "d2", "{switchover}");
    // Every replica equals the primary d1.
    let last = &step("final check")["data"];
    assert_eq!(
        (&last["primary"], &last["epoch"], &last["equal"]),
        (&Value::from("d1"), &Value::from(3), &Value::from(true)),
        "{last}"
    );
    let replicas = last["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "{last}");
    assert!(replicas.iter().all(|r| r["equal"] == true), "{last}");
    assert!(last["rows"].as_u64().is_some_and(|r| r > 4000), "{last}");
    for row in step("traffic")["detail"].as_array().expect("rows") {
        let received: u64 = row["messages received"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            received >= 2,
            "membership + heartbeat messages crossed: {row}"
        );
    }
    assert!(
        step("stop")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("all 3 exited 0")),
        "{}",
        step("stop")
    );
}

/// Fast heartbeats and message polling, for tests that wait on messages crossing.
const QUICK: &str =
    "[workers]\nheartbeat_interval = \"1s\"\n[messaging]\npoll_interval = \"100ms\"\n";

/// Daemons `ids` on local folders under `dir`, each with `extra` settings and every other
/// as a peer (its replication bucket): the first makes the group key and the others join
/// it. Not linked yet. An operator CLI for each.
fn unlinked(dir: &std::path::Path, ids: &[&str], extra: &str) -> (Vec<Ternd>, Vec<Cli>) {
    let layouts: Vec<Layout> = ids.iter().map(|id| Layout::new(dir, id)).collect();
    let peers = |me: &Layout| {
        let mut s = extra.to_string();
        for o in layouts.iter().filter(|o| o.id != me.id) {
            s.push_str(&format!(
                "[[peers]]\nid = \"{}\"\n[peers.bucket]\nurl = \"file://{}/replication\"\n",
                o.id,
                o.home.display()
            ));
        }
        s
    };
    // The others join the first one's group key (same GMK, their own master keys) through
    // the environment.
    let join = format!("{}/keys", layouts[0].home.display());
    let daemons: Vec<Ternd> = layouts
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let env: &[(&str, &str)] = if i == 0 {
                &[]
            } else {
                &[("TERN_KEYS__JOIN", join.as_str())]
            };
            Ternd::start(&l.write_config(&l.config(&peers(l))), env)
        })
        .collect();
    let clis = daemons
        .iter()
        .map(|d| Cli {
            url: d.url(),
            token: OPERATOR_TOKEN.into(),
        })
        .collect();
    (daemons, clis)
}

/// [`unlinked`] for two, d1 and d2.
fn unlinked_pair(dir: &std::path::Path, extra: &str) -> ((Ternd, Ternd), (Cli, Cli)) {
    let (mut daemons, mut clis) = unlinked(dir, &["d1", "d2"], extra);
    let (d2, c2) = (daemons.pop().expect("d2"), clis.pop().expect("d2"));
    let (d1, c1) = (daemons.pop().expect("d1"), clis.pop().expect("d1"));
    ((d1, d2), (c1, c2))
}

#[test]
fn tern_cli_forms_a_two_deployment_group_and_messages_cross() {
    let dir = tempfile::tempdir().expect("tmp");
    let ((d1, d2), (c1, c2)) = unlinked_pair(dir.path(), QUICK);
    let g12 = c1.json(&["deployment", "create", "d2", "--region", "r2"])["genesis"].to_string();
    let g21 = c2.json(&[
        "deployment",
        "create",
        "d1",
        "--region",
        "r1",
        "--genesis",
        &g12,
    ])["genesis"]
        .to_string();
    c1.ok(&["deployment", "register-channel", "d2", &g21]);
    // Membership messages and heartbeats cross both channels.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let heard = |c: &Cli, peer: &str| {
            let v = c.json(&["show", "deployments"]);
            v["deployments"]
                .as_array()
                .expect("deployments")
                .iter()
                .find(|d| d["id"] == peer)
                .map(|d| {
                    d["peer_members"].as_array().map_or(0, Vec::len) == 2
                        && !d["last_heartbeat_ms"].is_null()
                })
                .unwrap_or(false)
        };
        if heard(&c1, "d2") && heard(&c2, "d1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages did not cross: {}",
            c1.ok(&["show", "deployments"])
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = c1.ok(&["show", "deployments"]);
    assert!(out.contains("d2") && out.contains("d1,d2"), "{out}");
    let metrics = request_text(&d2.addr, "/metrics?fresh=true");
    assert!(
        metrics.contains("tern_messaging_total{event=\"handled\"}"),
        "{metrics}"
    );
    assert!(d1.terminate().success());
    assert!(d2.terminate().success());
}

/// Until every deployment of `clis` lists the whole group of `ids` as its peers' view
/// and has heard a heartbeat from each peer: membership messages and heartbeats crossed
/// every channel, both ways.
fn wait_group(clis: &[(&str, &Cli)], ids: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let done = clis.iter().all(|(me, c)| {
            let v = c.json(&["show", "deployments"]);
            ids.iter().filter(|p| *p != me).all(|peer| {
                v["deployments"]
                    .as_array()
                    .expect("deployments")
                    .iter()
                    .any(|d| {
                        d["id"] == *peer
                            && d["peer_members"].as_array().map_or(0, Vec::len) == ids.len()
                            && !d["last_heartbeat_ms"].is_null()
                    })
            })
        });
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages did not cross: {}",
            clis.iter()
                .map(|(_, c)| c.ok(&["show", "deployments"]))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `deployment link --to` links two deployments both ways in one command, and `group
/// init` links every remaining pair of three (the linked pair left alone): messages and
/// heartbeats then cross every channel, with no genesis copied by hand. Run again, it
/// changes nothing.
#[test]
fn tern_links_deployments_in_one_step_and_inits_a_group() {
    let dir = tempfile::tempdir().expect("tmp");
    let ids = ["d1", "d2", "d3"];
    let (daemons, clis) = unlinked(dir.path(), &ids, QUICK);
    // One pair by `deployment link`, through d1.
    let out = clis[0].ok(&["deployment", "link", "--to", &daemons[1].url()]);
    assert_eq!(out.trim(), "d1 <-> d2: linked both ways", "{out}");
    wait_group(&[("d1", &clis[0]), ("d2", &clis[1])], &["d1", "d2"]);
    // The rest by `group init` (any member's address works as --url).
    let urls: Vec<String> = daemons.iter().map(Ternd::url).collect();
    let mut args = vec!["group", "init"];
    args.extend(urls.iter().map(String::as_str));
    let v = clis[2].json(&args);
    let states: Vec<(String, String, String)> = v["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| {
            let f = |k: &str| l[k].as_str().expect("a string").to_string();
            (f("a"), f("b"), f("state"))
        })
        .collect();
    let want = |a: &str, b: &str, s: &str| (a.to_string(), b.to_string(), s.to_string());
    assert_eq!(
        states,
        [
            want("d1", "d2", "already_linked"),
            want("d1", "d3", "linked"),
            want("d2", "d3", "linked"),
        ]
    );
    wait_group(
        &[("d1", &clis[0]), ("d2", &clis[1]), ("d3", &clis[2])],
        &ids,
    );
    // Again: nothing to do.
    let out = clis[0].ok(&args);
    assert_eq!(out.matches("already linked").count(), 3, "{out}");
    // A deployment linked to itself is refused, naming it.
    let (ok, _, err) = clis[0].run(&["deployment", "link", "--to", &urls[0]]);
    assert!(!ok && err.contains("same deployment d1"), "{err}");
    for d in daemons {
        assert!(d.terminate().success());
    }
}

/// `deployment link`'s error paths, each with its exit status, a message naming what was
/// wrong, and nothing linked on either side: a peer nobody answers at (5, its URL), and a
/// peer that refuses the token (6, its URL and `--to-token`).
#[test]
fn tern_link_unreachable_or_refused_says_what_and_links_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let ((d1, d2), (c1, c2)) = unlinked_pair(dir.path(), "");
    let members = |c: &Cli| -> Vec<String> {
        let v = c.json(&["show", "deployments"]);
        v["deployments"]
            .as_array()
            .expect("deployments")
            .iter()
            .map(|d| d["id"].as_str().expect("id").to_string())
            .collect()
    };
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let (code, err) = c1.exit(&["deployment", "link", "--to", &closed]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains(&closed),
        "the unreachable peer is not named: {err}"
    );
    let (code, err) = c1.exit(&[
        "deployment",
        "link",
        "--to",
        &d2.url(),
        "--to-token",
        "not-the-operator-token",
    ]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains(&d2.url()) && err.contains("--to-token"),
        "the refusing peer and the way out are not named: {err}"
    );
    assert_eq!(members(&c1), ["d1"], "half-linked after a failed link");
    assert_eq!(members(&c2), ["d2"], "half-linked after a failed link");
    assert!(d1.terminate().success());
    assert!(d2.terminate().success());
}

/// A link cut short (d1 added d2 through the API and made its channel to it; d2 never
/// heard of d1) is completed by running `deployment link` again: exit 0, both directions
/// linked, messages cross both ways. Adding the known peer again answers the genesis made
/// the first time and registering that same genesis again is a no-op; another genesis
/// under the known id is refused (conflict, exit 4, naming why) and changes nothing.
#[test]
fn a_link_cut_short_is_completed_by_running_it_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let ((d1, d2), (c1, c2)) = unlinked_pair(dir.path(), QUICK);
    // One direction only: d1 knows d2 and made its channel to it.
    let first = c1.json(&["deployment", "create", "d2", "--region", "r2"]);
    assert!(first["genesis"].is_object(), "{first}");
    let out = c1.ok(&["deployment", "link", "--to", &d2.url()]);
    assert_eq!(out.trim(), "d1 <-> d2: linked both ways", "{out}");
    wait_group(&[("d1", &c1), ("d2", &c2)], &["d1", "d2"]);
    let again = c1.ok(&["deployment", "link", "--to", &d2.url()]);
    assert!(again.contains("already linked"), "{again}");
    // d1 answers the same genesis for the known d2; d2 takes it again as a no-op.
    let same = c1.json(&["deployment", "create", "d2"]);
    assert_eq!(same["genesis"], first["genesis"], "{same}");
    let g = first["genesis"].to_string();
    c2.ok(&["deployment", "create", "d1", "--genesis", &g]);
    c2.ok(&["deployment", "register-channel", "d1", &g]);
    // Another genesis under d1: refused, naming why.
    let mut other = first["genesis"].clone();
    other["first_seq"] = (first["genesis"]["first_seq"].as_u64().expect("first_seq") + 1).into();
    let other = other.to_string();
    for args in [
        &["deployment", "create", "d1", "--genesis", &other][..],
        &["deployment", "register-channel", "d1", &other][..],
    ] {
        let (code, err) = c2.exit(args);
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(
            err.contains("registered here with another genesis"),
            "{args:?}: {err}"
        );
    }
    // The link still carries messages both ways.
    let seen = |c: &Cli, peer: &str| -> u64 {
        let v = c.json(&["show", "deployments"]);
        v["deployments"]
            .as_array()
            .expect("deployments")
            .iter()
            .find(|d| d["id"] == peer)
            .and_then(|d| d["peer_messages"].as_u64())
            .unwrap_or(0)
    };
    let (m1, m2) = (seen(&c1, "d2"), seen(&c2, "d1"));
    crate::replication::wait_until(
        "a heartbeat crossing both ways after the refused genesis",
        std::time::Duration::from_secs(60),
        || (seen(&c1, "d2") > m1 && seen(&c2, "d1") > m2).then_some(()),
    );
    assert!(d1.terminate().success());
    assert!(d2.terminate().success());
}

/// The CLI's replication commands end to end against two real daemons: `create-replica
/// --wait` returns once the first refresh is imported (its progress on stderr) and the
/// replica then holds the primary's rows; rows inserted on the primary are in the replica
/// once `refresh --wait` returns.
#[test]
fn tern_create_replica_and_refresh_wait_until_done_showing_progress() {
    let two = crate::replication::two_with(&[], "");
    let group = crate::replication::primary(&two.d1, &two.d2, 1, 10);
    let (c1, c2) = (
        Cli {
            url: two.d1.url(),
            token: OPERATOR_TOKEN.into(),
        },
        Cli {
            url: two.d2.url(),
            token: OPERATOR_TOKEN.into(),
        },
    );
    let (ok, out, err) = c2.run(&[
        "database",
        "create-replica",
        "a2",
        "copy",
        "--group",
        &group,
        "--wait",
        "--wait-timeout",
        "90s",
    ]);
    assert!(ok, "create-replica --wait failed: {err}");
    assert!(out.contains("copy"), "{out}");
    assert!(
        err.contains("a2.copy: refresh pending") && err.contains("a2.copy: first refresh imported"),
        "no progress shown: {err}"
    );
    let count = |c: &Cli| {
        let out = c.ok(&["scan", "a2.copy.orders", "--columns", "id", "--csv"]);
        out.lines().count() - 1
    };
    assert_eq!(count(&c2), 10);
    c1.ok(&[
        "insert",
        "a1.sales.orders",
        "--rows",
        r#"[{"id":100,"customer":"late","amount":1.0}]"#,
    ]);
    let (ok, out, err) = c2.run(&[
        "database",
        "refresh",
        "a2",
        "copy",
        "--wait",
        "--wait-timeout",
        "90s",
    ]);
    assert!(ok, "refresh --wait failed: {err}");
    assert!(out.contains("request"), "{out}");
    assert!(err.contains("imported"), "{err}");
    assert_eq!(
        count(&c2),
        11,
        "the refresh imported the row committed before it"
    );
    // A database that is no replica is named, before anything is asked.
    let (ok, _, err) = c1.run(&["database", "refresh", "a1", "sales", "--wait"]);
    assert!(
        !ok && err.contains("a1.sales is not a secondary replica"),
        "{err}"
    );
    assert!(two.d1.terminate().success());
    assert!(two.d2.terminate().success());
}

fn request_text(addr: &str, path: &str) -> String {
    tern_scenarios::ternd::request(addr, "GET", path, None, "text/plain", b"").body
}

/// A token of `account` on `d` (made by the operator).
fn account_token(d: &Ternd, account: &str) -> String {
    let r = d.op("POST", &format!("/v1/accounts/{account}/tokens"), "");
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["token"].as_str().expect("token").to_string()
}

/// `database failover --wait` and `database switchover --wait` against two real daemons,
/// run with the account's own token (not the operator's): the failover returns with the
/// new primary taking writes (a write at once succeeds), its progress on stderr; the way
/// back, `switchover --wait` on the returned old primary, returns only once the other
/// member follows the new epoch — read at once, d2 is its secondary at that epoch. A
/// `refresh --wait` with the account token works too (it read the operator-only
/// `/v1/replication/status` before).
#[test]
fn tern_failover_and_switchover_wait_until_settled_with_the_account_token() {
    use crate::failover::{FAST, SWITCHOVER, availability};
    use crate::replication::{
        PRIMARY, create_replica, primary, replica_table, rows_json, scan_all, two_with, wait_until,
    };
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let two = two_with(&[], &format!("{FAST}{SWITCHOVER}"));
    let group = primary(&two.d1, &two.d2, 1, 10);
    create_replica(&two.d2, &group);
    let tbl = wait_until("the replica has the 10 rows", WAIT, || {
        let t = replica_table(&two.d2)?;
        (scan_all(&two.d2, &t)?.len() == 10).then_some(t)
    });
    let c2 = Cli {
        url: two.d2.url(),
        token: account_token(&two.d2, "a2"),
    };
    let (ok, _, err) = c2.run(&[
        "database",
        "refresh",
        "a2",
        "sales_replica",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    assert!(ok, "refresh --wait with the account token failed: {err}");
    assert!(err.contains("imported"), "{err}");
    wait_until("d2 hears d1", WAIT, || {
        (availability(&two.d2, "d1")? == "available").then_some(())
    });

    // The primary's region is lost; the account's operator fails over and waits.
    two.d1.kill9();
    wait_until("d2 judges d1 unavailable", WAIT, || {
        (availability(&two.d2, "d1")? == "unavailable").then_some(())
    });
    let (ok, out, err) = c2.run(&[
        "--json",
        "database",
        "failover",
        "a2",
        "sales_replica",
        "--allow-data-loss",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    assert!(ok, "failover --wait failed: {err}");
    let report: Value = serde_json::from_str(&out).expect("the report as JSON");
    assert_eq!(report["epoch"], 2, "{report}");
    assert_eq!(report["previous_primary"], "d1", "{report}");
    assert!(
        err.contains("a2.sales_replica: failing over")
            && err.contains("a2.sales_replica: primary at epoch 2 after")
            && err.contains(
                "a2.sales_replica: primary at epoch 2 (group epoch 2, primary d2); takes writes"
            )
            && err.contains("down: d1")
            && err.trim_end().ends_with("a2.sales_replica: failover done"),
        "no progress shown: {err}"
    );
    let r = two
        .d2
        .op("POST", &format!("{tbl}/rows"), &rows_json(500, 501));
    assert_eq!(r.status, 200, "the new primary takes writes: {}", r.body);
    // `database status` shows the same with the account token.
    let st = c2.json(&["database", "status", "a2", "sales_replica"]);
    assert_eq!(
        (
            st["role"].as_str(),
            st["epoch"].as_u64(),
            st["writable"].as_bool()
        ),
        (Some("primary"), Some(2), Some(true)),
        "{st}"
    );

    // d1 returns, learns epoch 2 and follows d2; the way back is a switchover on d1.
    let d1 = Ternd::start(&two.c1, &[]);
    wait_until("d1 follows d2 and has caught up", WAIT, || {
        let caught_up = scan_all(&d1, PRIMARY)? == scan_all(&two.d2, &tbl)?;
        let s = d1.op("GET", "/v1/replication/status", "").json();
        let follows = s["groups"].as_array()?.first()?["role"] == "secondary";
        (follows && caught_up && availability(&d1, "d2")? == "available").then_some(())
    });
    let c1 = Cli {
        url: d1.url(),
        token: account_token(&d1, "a1"),
    };
    let (ok, out, err) = c1.run(&[
        "--json",
        "database",
        "switchover",
        "a1",
        "sales",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    assert!(ok, "switchover --wait failed: {err}");
    let back: Value = serde_json::from_str(&out).expect("the report as JSON");
    let epoch = back["epoch"].as_u64().expect("epoch");
    assert!(epoch >= 3, "{back}");
    assert!(
        err.contains("following: d2; waiting for: none")
            && err.trim_end().ends_with("a1.sales: switchover done"),
        "{err}"
    );
    // Settled when the command returned: d2 is d1's secondary at the new epoch.
    let s2 = c2.json(&["database", "status", "a2", "sales_replica"]);
    assert_eq!(
        (
            s2["role"].as_str(),
            s2["group_epoch"].as_u64(),
            s2["primary"].as_str()
        ),
        (Some("secondary"), Some(epoch), Some("d1")),
        "{s2}"
    );
    // A failover of a primary is refused before anything waits: exit 2, the reason named.
    let (code, err) = c1.exit(&["database", "failover", "a1", "sales", "--wait"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is the group's primary already"), "{err}");
    assert!(d1.terminate().success());
    assert!(two.d2.terminate().success());
}
