//! `ternd` as a real process on local folders: DDL, DML and scans through its API; a
//! kill -9 in the middle of a bulk load; bad configurations; bad requests; SIGTERM.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tern_scenarios::binary;
use tern_scenarios::ternd::{Layout, OPERATOR_TOKEN, Ternd, request};

const TBL: &str = "/v1/accounts/acme/databases/sales/schemas/public/tables/orders";

/// Account acme, database sales, table public.orders(id int64 not null, customer utf8,
/// amount float64). Returns acme's token.
fn setup(d: &Ternd) -> String {
    let r = d.op("POST", "/v1/accounts", r#"{"name":"acme"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().expect("token").to_string();
    let r = request(
        &d.addr,
        "POST",
        "/v1/accounts/acme/databases",
        Some(&token),
        "application/json",
        br#"{"name":"sales"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = request(
        &d.addr,
        "POST",
        "/v1/accounts/acme/databases/sales/schemas/public/tables",
        Some(&token),
        "application/json",
        br#"{"name":"orders","columns":[{"name":"id","type":"int64","nullable":false},{"name":"customer","type":"utf8"},{"name":"amount","type":"float64"}]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    token
}

fn scan(d: &Ternd, body: Value) -> Value {
    let r = d.op("POST", &format!("{TBL}/scan"), &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn ids(v: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids
}

fn csv(from: i64, to: i64) -> Vec<u8> {
    let mut s = String::from("id,customer,amount\n");
    for i in from..to {
        s.push_str(&format!(
            "{i},customer-{:05},{}\n",
            i % 10_000,
            (i % 1000) as f64 / 4.0
        ));
    }
    s.into_bytes()
}

#[test]
fn ternd_ddl_dml_and_scans_through_the_api() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let d = Ternd::start(&l.write_config(&l.config("")), &[]);
    let token = setup(&d);
    let t = |method: &str, path: &str, ct: &str, body: &[u8]| {
        request(&d.addr, method, path, Some(&token), ct, body)
    };
    // JSON rows, CSV and NDJSON files.
    let r = t(
        "POST",
        &format!("{TBL}/rows"),
        "application/json",
        br#"[{"id":1,"customer":"a","amount":1.5},{"id":2,"customer":"b","amount":2.5}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 1);
    let r = t(
        "POST",
        &format!("{TBL}/rows?format=csv"),
        "text/csv",
        b"id,customer,amount\n3,c,3.5\n4,d,4.5\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = t(
        "POST",
        &format!("{TBL}/rows"),
        "application/x-ndjson",
        b"{\"id\":5,\"customer\":\"e\"}\n{\"id\":6,\"amount\":6.0}\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 3);
    assert_eq!(ids(&scan(&d, json!({}))), [1, 2, 3, 4, 5, 6]);
    // Projection and predicate.
    let v = scan(
        &d,
        json!({"columns":["id"],"where":{"and":[{"column":"id","op":">=","value":2},{"column":"amount","is_null":false}]}}),
    );
    assert_eq!(ids(&v), [2, 3, 4, 6]);
    assert_eq!(
        v["rows"][0].as_object().expect("row").len(),
        1,
        "only id: {v}"
    );
    // Delete, update, merge.
    let r = t(
        "POST",
        &format!("{TBL}/delete"),
        "application/json",
        br#"{"where":{"column":"id","in":[1,2]}}"#,
    );
    assert_eq!(r.json()["rows"], 2, "{}", r.body);
    let r = t(
        "POST",
        &format!("{TBL}/update"),
        "application/json",
        br#"{"set":{"customer":"zed"},"where":{"column":"id","between":[3,4]}}"#,
    );
    assert_eq!(r.json()["rows"], 2, "{}", r.body);
    let r = t("POST", &format!("{TBL}/merge"), "application/json",
        br#"{"keys":["id"],"rows":[{"id":3,"customer":"m","amount":30.0},{"id":7,"customer":"n","amount":7.0}]}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let now = scan(&d, json!({"where":{"column":"id","op":"<=","value":4}}));
    let rows = now["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{now}");
    assert!(
        rows.iter()
            .any(|r| r["id"] == 3 && r["customer"] == "m" && r["amount"] == 30.0),
        "{now}"
    );
    assert!(
        rows.iter().any(|r| r["id"] == 4 && r["customer"] == "zed"),
        "{now}"
    );
    assert_eq!(ids(&scan(&d, json!({}))), [3, 4, 5, 6, 7]);
    // Time travel: version 3 is before the delete.
    assert_eq!(ids(&scan(&d, json!({"version": 3}))), [1, 2, 3, 4, 5, 6]);
    let v = t("GET", &format!("{TBL}/versions"), "application/json", b"").json();
    assert_eq!(v["current"], 6, "{v}");
    assert_eq!(v["versions"].as_array().expect("versions").len(), 7);
    // Show tables; add a column; drop.
    let v = t(
        "GET",
        "/v1/accounts/acme/databases/sales/tables",
        "application/json",
        b"",
    )
    .json();
    assert_eq!(v["tables"][0]["name"], "orders", "{v}");
    let r = t(
        "POST",
        &format!("{TBL}/columns"),
        "application/json",
        br#"{"name":"note","type":"utf8"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = scan(&d, json!({"where":{"column":"id","op":"=","value":7}}));
    assert_eq!(v["rows"][0]["note"], Value::Null, "{v}");
    // An account token reaches only its account.
    let r = d.op("POST", "/v1/accounts", r#"{"name":"other"}"#);
    assert_eq!(r.status, 201);
    let r = t(
        "GET",
        "/v1/accounts/other/databases",
        "application/json",
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error().0, "forbidden");
    let r = t("GET", "/v1/status", "application/json", b"");
    assert_eq!(r.status, 403, "status is the operator's: {}", r.body);
    // Metrics count what happened.
    let m = request(
        &d.addr,
        "GET",
        "/metrics?fresh=true",
        None,
        "text/plain",
        b"",
    );
    assert!(m.body.contains("tern_commits_total"), "{}", m.body);
    assert!(
        m.body.contains("tern_worker_up{worker=\"receiver d1\"} 1"),
        "{}",
        m.body
    );
    let status = d.terminate();
    assert!(status.success(), "exit {status}");
}

/// The rows of orders, counted by a scan.
fn count(d: &Ternd) -> u64 {
    scan(d, json!({"columns":["id"]}))["matched"]
        .as_u64()
        .expect("matched")
}

/// Where the bulk load is killed (`TERN_CRASH_AT`: the daemon kills itself -9 when its
/// commit reaches the point), the state the transaction is left in (none stored before
/// its commit: its data files are covered by a block of reserved numbers), and whether
/// recovery rolls it forward (Prepared and later: the log record may be out, DESIGN §7)
/// or back.
const LOAD_KILL_POINTS: &[(&str, Option<tern_txn::TxnState>, bool)] = &[
    ("journaled", None, false),
    ("written", None, false),
    ("prepared", Some(tern_txn::TxnState::Prepared), true),
    ("logged", Some(tern_txn::TxnState::Prepared), true),
];

#[test]
fn ternd_kill9_during_bulk_load_then_restart_is_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let config = l.write_config(&l.config(""));
    let d = Ternd::start(&config, &[]);
    setup(&d);
    let r = d.op(
        "POST",
        &format!("{TBL}/rows?format=csv"),
        &String::from_utf8(csv(0, 1000)).expect("utf8"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(d.terminate().success());
    const N: i64 = 50_000;
    let mut expected = 1000u64;
    // The daemon kills itself at each point of the load's commit in turn: the kill lands
    // inside the commit by construction, and the metadata left behind (read before the
    // restart) shows the transaction stopped in the state that point belongs to.
    for (i, &(point, state_at_kill, rolled_forward)) in LOAD_KILL_POINTS.iter().enumerate() {
        let first = 1000 + i as i64 * N;
        let body = csv(first, first + N);
        let d = Ternd::start(&config, &[("TERN_CRASH_AT", point)]);
        let r = request(
            &d.addr,
            "POST",
            &format!("{TBL}/rows?format=csv"),
            Some(OPERATOR_TOKEN),
            "text/csv",
            &body,
        );
        let mut d = d;
        let status = tern_scenarios::ternd::wait_exit(&mut d.child, Duration::from_secs(120));
        let logs = std::fs::read_to_string(&d.log).unwrap_or_default();
        assert_eq!(
            r.status, 0,
            "{point}: the load was answered ({}): {logs}",
            r.body
        );
        assert!(
            !status.success() && logs.contains("crash point reached") && logs.contains(point),
            "{point}: ternd was to kill itself there; it exited {status}: {logs}"
        );
        // The load's transaction (nothing else writes here) is the one left unfinished, in
        // the point's state.
        let unfinished: Vec<_> = transactions_after_exit(&l)
            .into_iter()
            .filter(|t| !t.state.is_final())
            .map(|t| t.state)
            .collect();
        assert_eq!(
            unfinished,
            Vec::from_iter(state_at_kill),
            "{point}: left behind"
        );
        // Restart: recovery runs before serving; no manual step.
        let d = Ternd::start(&config, &[]);
        let range = scan(
            &d,
            json!({"columns":["id"],"where":{"column":"id","between":[first, first + N - 1]}}),
        );
        let in_range = range["matched"].as_u64().expect("matched");
        let want = if rolled_forward { N as u64 } else { 0 };
        assert_eq!(
            in_range, want,
            "{point}: rows of the killed load after recovery"
        );
        expected += want;
        assert_eq!(count(&d), expected, "{point}: rows in all");
        let s = d.op("GET", "/v1/status", "").json();
        assert_eq!(s["unfinished_transactions"], json!({}), "{s}");
        // The deployment works on: another load commits.
        let r = d.op(
            "POST",
            &format!("{TBL}/rows?format=csv"),
            &String::from_utf8(csv(-10 * (i as i64 + 1), -10 * i as i64)).expect("utf8"),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        expected += 10;
        assert_eq!(count(&d), expected);
        assert!(d.terminate().success());
    }
    // No id is present twice.
    let d = Ternd::start(&config, &[]);
    let got = ids(&scan(&d, json!({"columns":["id"]})));
    let mut dedup = got.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), got.len(), "an id is there twice");
    assert!(d.terminate().success());
}

fn run_ternd(config: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(binary("ternd"));
    cmd.arg("--config").arg(config).arg("--check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ternd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn ternd_bad_config_names_the_field_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let good = l.config("");
    let (code, err) = run_ternd(&l.write_config(&good), &[]);
    assert_eq!(code, 0, "the good config passes: {err}");
    // Each required field missing.
    for (line_start, field) in [
        ("deployment_id", "deployment_id"),
        ("metadata_path", "metadata_path"),
        ("operator_token", "operator_token"),
        ("url = \"file://", "volume.url"),
    ] {
        let mut removed = false;
        let text: String = good
            .lines()
            .filter(|l| {
                let drop = !removed && l.starts_with(line_start);
                removed |= drop;
                !drop
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let (code, err) = run_ternd(&l.write_config(&text), &[]);
        assert_ne!(code, 0, "missing {field} must fail");
        assert!(
            err.contains(field) && err.contains("required"),
            "missing {field}: {err}"
        );
    }
    let no_replication = good.replace("[replication]\nurl", "[replication]\n#url");
    let (code, err) = run_ternd(&l.write_config(&no_replication), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("replication.url"), "{err}");
    let no_keys = good.replace("kind = \"local\"\ndir", "#kind\n#dir");
    let (code, err) = run_ternd(&l.write_config(&no_keys), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("keys"), "{err}");
    // A bad URL, in the file and through the environment.
    let bad = good.replace("file://", "ftp://");
    let (code, err) = run_ternd(&l.write_config(&bad), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("volume.url") && err.contains("ftp"), "{err}");
    let (code, err) = run_ternd(
        &l.write_config(&good),
        &[("TERN_REPLICATION__URL", "s3://")],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("replication.url") && err.contains("bucket"),
        "{err}"
    );
    // An unknown field, and a bad duration.
    let (code, err) = run_ternd(
        &l.write_config(&good),
        &[("TERN_WORKERS__HEARTBEAT_INTERVAL", "soon")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("soon"), "{err}");
    // An unreadable key folder: a file where the folder should be, and a folder others
    // can read (refused like ssh refuses such keys). These are found when ternd opens
    // them, so run it for real.
    let keys_file = dir.path().join("keys-file");
    std::fs::write(&keys_file, b"not a folder").expect("write");
    let cfg = good.replace(
        &format!("{}/keys", l.home.display()),
        &keys_file.display().to_string(),
    );
    let mut child = Command::new(binary("ternd"))
        .arg("--config")
        .arg(l.write_config(&cfg))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = tern_scenarios::ternd::wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("read");
    assert!(!status.success(), "a file as key folder must fail");
    assert!(err.contains("keys.dir"), "{err}");
    let open_keys = dir.path().join("open-keys");
    std::fs::create_dir_all(&open_keys).expect("mkdir");
    std::fs::write(open_keys.join("gmk.key"), format!("{}\n", "ab".repeat(32))).expect("w");
    std::fs::write(
        open_keys.join("master.key"),
        format!("{}\n", "cd".repeat(32)),
    )
    .expect("w");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open_keys, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = good.replace(
        &format!("{}/keys", l.home.display()),
        &open_keys.display().to_string(),
    );
    let mut child = Command::new(binary("ternd"))
        .arg("--config")
        .arg(l.write_config(&cfg))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = tern_scenarios::ternd::wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("read");
    assert!(
        !status.success(),
        "a key folder others can read must be refused"
    );
    assert!(err.contains("keys.dir"), "{err}");
    // A deployment with data whose key folder went missing is not given new keys.
    let d = Ternd::start(&l.write_config(&good), &[]);
    setup(&d);
    assert!(d.terminate().success());
    std::fs::rename(l.home.join("keys"), l.home.join("keys.moved")).expect("move keys");
    let mut child = Command::new(binary("ternd"))
        .arg("--config")
        .arg(l.write_config(&good))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = tern_scenarios::ternd::wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("read");
    assert!(
        !status.success(),
        "missing keys with existing data must fail"
    );
    assert!(
        err.contains("keys.dir") && err.contains("refusing"),
        "{err}"
    );
    assert!(!l.home.join("keys").exists(), "no new keys were made");
}

#[test]
fn ternd_bad_requests_get_4xx_json_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let d = Ternd::start(
        &l.write_config(&l.config("")),
        &[("TERN_API__MAX_BODY_BYTES", "4096")],
    );
    let token = setup(&d);
    let t =
        |path: &str, ct: &str, body: &[u8]| request(&d.addr, "POST", path, Some(&token), ct, body);
    // Unknown table.
    let r = t(
        "/v1/accounts/acme/databases/sales/schemas/public/tables/nope/scan",
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let (kind, msg) = r.error();
    assert_eq!(kind, "not_found");
    assert!(msg.contains("nope"), "{msg}");
    // Wrong types: a row, and a predicate literal.
    let r = t(
        &format!("{TBL}/rows"),
        "application/json",
        br#"[{"id":"seven","customer":"x"}]"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let (kind, msg) = r.error();
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("id"), "{msg}");
    let r = t(
        &format!("{TBL}/scan"),
        "application/json",
        br#"{"where":{"column":"amount","op":">","value":"lots"}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("amount"), "{}", r.body);
    let r = t(
        &format!("{TBL}/rows"),
        "application/json",
        br#"[{"id":1,"colour":"red"}]"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("colour"), "{}", r.body);
    // Bad token, no token.
    let r = request(
        &d.addr,
        "POST",
        &format!("{TBL}/scan"),
        Some("tern_wrong"),
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error().0, "unauthorized");
    assert!(r.error().1.contains("token"), "{}", r.body);
    let r = request(
        &d.addr,
        "POST",
        &format!("{TBL}/scan"),
        None,
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.error().1.contains("Authorization"), "{}", r.body);
    // Oversized body (a request that is read whole: inserts and loads stream).
    let big = json!({"where": {"column": "customer", "in": vec!["x".repeat(64); 100]}})
        .to_string()
        .into_bytes();
    assert!(big.len() > 4096);
    let r = t(&format!("{TBL}/delete"), "application/json", &big);
    assert_eq!(r.status, 413, "{}", r.body);
    let (kind, msg) = r.error();
    assert_eq!(kind, "invalid_input");
    assert!(
        msg.contains("4096") && msg.contains("max_body_bytes"),
        "{msg}"
    );
    // Malformed JSON, unknown route, missing "where".
    let r = t(&format!("{TBL}/delete"), "application/json", b"{not json");
    assert_eq!(r.status, 400);
    assert!(r.error().1.contains("JSON"), "{}", r.body);
    let r = t(&format!("{TBL}/delete"), "application/json", b"{}");
    assert_eq!(r.status, 400);
    assert!(r.error().1.contains("where"), "{}", r.body);
    let r = t("/v1/nowhere", "application/json", b"{}");
    assert_eq!(r.status, 404);
    assert!(r.error().1.contains("/v1/nowhere"), "{}", r.body);
    // A load that goes bad half way names the line, and commits nothing.
    let mut bad = csv(0, 20_000);
    bad.extend_from_slice(b"20000,late,not-a-number\n");
    bad.extend_from_slice(&csv(20_001, 30_000)[b"id,customer,amount\n".len()..]);
    let r = t(&format!("{TBL}/rows?format=csv"), "text/csv", &bad);
    assert_eq!(r.status, 400, "{}", r.body);
    let (kind, msg) = r.error();
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("line 20002"), "{msg}");
    let mut bad = String::from("[");
    for i in 0..20_000 {
        bad.push_str(&format!("{{\"id\":{i}}},\n"));
    }
    bad.push_str("{\"id\": 20000, \"amount\": }]");
    let r = t(&format!("{TBL}/rows"), "application/json", bad.as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("line 20001"), "{}", r.body);
    // Nothing was committed by any of them.
    assert_eq!(count(&d), 0);
    // A load many times `max_body_bytes` is taken: it is decoded and written as it
    // arrives, never held whole.
    let big = csv(0, 50_000);
    assert!(big.len() > 100 * 4096);
    let r = t(&format!("{TBL}/rows?format=csv"), "text/csv", &big);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(count(&d), 50_000);
    assert!(d.terminate().success());
}

#[test]
fn ternd_sigterm_during_a_load_exits_cleanly_with_no_unfinished_transactions() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let config = l.write_config(&l.config(""));
    let d = Ternd::start(&config, &[]);
    setup(&d);
    const N: i64 = 100_000;
    let body = csv(0, N);
    // The body streams (decoded as it arrives, one commit at the end): send the head and
    // the first half, and wait until the daemon has read every byte of it (its socket's
    // receive queue is empty), far more than the server buffers before a handler runs. So
    // the load's handler is running when SIGTERM is sent: in flight by construction, never
    // "not started yet". (Its transaction row appears only with its first file, 16 MiB in.)
    let mut conn = std::net::TcpStream::connect(&d.addr).expect("connect");
    let head = format!(
        "POST {TBL}/rows?format=csv HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: text/csv\r\nContent-Length: {}\r\n\
         Authorization: Bearer {OPERATOR_TOKEN}\r\n\r\n",
        d.addr,
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("head");
    let half = body[..body.len() / 2]
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("a line end")
        + 1;
    assert!(
        half > 1 << 20,
        "the first half outgrows any server-side buffer"
    );
    conn.write_all(&body[..half]).expect("first half");
    let server_port = d.addr.rsplit(':').next().expect("port").to_string();
    let client_port = conn.local_addr().expect("local addr").port();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let unread = server_receive_queue(&server_port, client_port);
        if unread == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never read the first half of the load ({unread:?} bytes unread)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = d.op("GET", "/v1/status", "").json();
    assert_eq!(
        s["rows_inserted"], 0,
        "the load is not finished before SIGTERM: {s}"
    );
    let pid = d.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    // The rest of the body after the signal: the in-flight load is finished, not cut off.
    conn.write_all(&body[half..]).expect("second half");
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw);
    let answer = String::from_utf8_lossy(&raw).to_string();
    let logs_path = d.log.clone();
    let mut d = d;
    let status = tern_scenarios::ternd::wait_exit(&mut d.child, Duration::from_secs(60));
    let logs = std::fs::read_to_string(&logs_path).unwrap_or_default();
    assert!(status.success(), "exit {status}: {logs}");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the load in flight at SIGTERM is answered: {answer}\n{logs}"
    );
    assert!(
        logs.contains("clean stop: no unfinished transactions"),
        "{logs}"
    );
    // The metadata store, read after exit: every transaction is final.
    let txns = transactions_after_exit(&l);
    assert!(!txns.is_empty(), "the setup committed transactions");
    assert!(
        txns.iter().all(|t| t.state.is_final()),
        "unfinished after SIGTERM: {:?}",
        txns.iter().map(|t| (t.handle, t.state)).collect::<Vec<_>>()
    );
    let d = Ternd::start(&config, &[]);
    assert_eq!(count(&d), N as u64, "the acknowledged load is there, whole");
    assert!(d.terminate().success());
}

/// Bytes received and not yet read by the daemon on its end of the connection from
/// `client_port` (`/proc/net/tcp`, loopback IPv4), if that socket is found.
fn server_receive_queue(server_port: &str, client_port: u16) -> Option<u64> {
    let server: u16 = server_port.parse().ok()?;
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        if port(f.get(1)?)? == server && port(f.get(2)?)? == client_port {
            u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}

fn transactions_after_exit(l: &Layout) -> Vec<tern_txn::TxnDpo> {
    let meta = tern_meta::MetaStore::open_sqlite(
        l.home.join("meta.db"),
        tern_meta::SqliteOptions::default(),
    )
    .expect("open metadata store");
    let volume = tern_storage::open_store(&tern_storage::StoreConfig {
        url: format!("file://{}/volume", l.home.display()),
        ..Default::default()
    })
    .expect("volume");
    let keys = tern_crypto::LocalKeyProvider::open(
        &l.home.join("keys"),
        tern_crypto::SystemRandom::shared(),
    )
    .expect("keys");
    let txn = tern_txn::TxnManager::open(
        tern_storage::layout::DeploymentId::new(l.id.as_str()).expect("id"),
        meta,
        volume,
        Arc::new(keys),
        tern_clock::SystemClock::shared(),
        tern_txn::TxnOptions::default(),
    )
    .expect("open txn manager");
    txn.transactions().expect("transactions")
}

#[test]
fn ternd_scans_stream_json_ndjson_and_csv_with_the_limit_pushed_down() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let d = Ternd::start(&l.write_config(&l.config("")), &[]);
    setup(&d);
    // 12 micro-partitions (one per insert) of 100 rows; row 5 has a NaN amount.
    for k in 0..12i64 {
        let r = d.op(
            "POST",
            &format!("{TBL}/rows?format=csv"),
            &String::from_utf8(csv(k * 100, k * 100 + 100)).expect("utf8"),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = d.op(
        "POST",
        &format!("{TBL}/update"),
        r#"{"where":{"column":"id","op":"=","value":5},"set":{"amount":"NaN"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // The whole table, as one JSON document written row by row.
    let all = scan(&d, json!({}));
    assert_eq!(ids(&all), (0..1200).collect::<Vec<_>>());
    assert_eq!(all["row_count"], 1200);
    assert_eq!(all["matched"], 1200);
    assert_eq!(all["truncated"], false);
    assert_eq!(all["files_read"], all["files_total"]);
    let five = all["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["id"] == 5)
        .expect("row 5");
    assert_eq!(five["amount"], "NaN", "the documented NaN encoding is kept");

    // A limit stops the reading: only the file holding the first rows is opened.
    let some = scan(&d, json!({"limit": 10}));
    assert_eq!(some["row_count"], 10);
    assert_eq!(some["truncated"], true);
    assert_eq!(some["matched"], 1200, "known from the row counts");
    assert_eq!(some["files_total"], 12);
    assert_eq!(some["files_read"], 1, "{some}");
    // With a predicate the count is unknown once the limit stops the scan.
    let cut = scan(
        &d,
        json!({"limit": 10, "where": {"column":"amount","op":">=","value":0}}),
    );
    assert_eq!(cut["row_count"], 10);
    assert_eq!(cut["truncated"], true);
    assert_eq!(cut["matched"], Value::Null);
    assert!(
        cut["files_read"].as_u64().expect("files_read") < 12,
        "{cut}"
    );
    let whole = scan(
        &d,
        json!({"limit": 100000, "where": {"column":"id","op":"<","value":150}}),
    );
    assert_eq!(
        (whole["matched"].clone(), whole["truncated"].clone()),
        (json!(150), json!(false))
    );

    // NDJSON: one row object per line.
    let r = d.op(
        "POST",
        &format!("{TBL}/scan?format=ndjson"),
        r#"{"columns":["id","amount"],"where":{"column":"id","op":"<","value":10}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[5], json!({"id": 5, "amount": "NaN"}));

    // CSV: a header, then rows.
    let r = d.op(
        "POST",
        &format!("{TBL}/scan"),
        r#"{"format":"csv","columns":["id","customer"],"limit":3}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.body);
    assert_eq!(lines[0], "id,customer");
    for line in &lines[1..] {
        let (id, customer) = line.split_once(',').expect("two fields");
        let id: i64 = id.parse().expect("an id");
        assert_eq!(customer, format!("customer-{id:05}"));
    }
    let r = d.op(
        "POST",
        &format!("{TBL}/scan"),
        r#"{"format":"csv","where":{"column":"id","op":"<","value":0}}"#,
    );
    assert_eq!(r.body, "id,customer,amount\n", "no rows: the header alone");
    let r = d.op("POST", &format!("{TBL}/scan"), r#"{"format":"xml"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("xml"), "{}", r.body);
    assert!(d.terminate().success());
}
