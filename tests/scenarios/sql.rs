//! SQL against real daemons: `POST /v1/sql` and `tern sql` create a table, insert, query
//! with the right rows; errors name the problem; a replica on a second daemon answers
//! the same query and refuses a write with 409 and the redirect.

use std::time::Duration;

use serde_json::{Value, json};
use tern_scenarios::binary;
use tern_scenarios::ternd::{Layout, OPERATOR_TOKEN, Ternd, request};

use crate::replication::{
    PRIMARY, create_replica, primary, replica_table, scan_all, two_with, wait_until,
};

/// `POST /v1/sql` on `account.database` with `token`: status and body.
fn sql_as(
    d: &Ternd,
    token: &str,
    account: &str,
    database: &str,
    sql: &str,
    format: &str,
) -> (u16, String) {
    let body = json!({"account": account, "database": database, "sql": sql, "format": format});
    let r = request(
        &d.addr,
        "POST",
        "/v1/sql",
        Some(token),
        "application/json",
        body.to_string().as_bytes(),
    );
    (r.status, r.body)
}

/// The rows of a successful ndjson answer.
fn rows(status: u16, body: &str) -> Vec<Value> {
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn error_of(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["error"]["kind"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// A daemon with account `acme` (its token) and database `sales`, in a temporary folder.
fn acme_sales() -> (tempfile::TempDir, Ternd, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let d = Ternd::start(&l.write_config(&l.config("")), &[]);
    let r = d.op("POST", "/v1/accounts", r#"{"name":"acme"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().expect("token").to_string();
    let r = d.op("POST", "/v1/accounts/acme/databases", r#"{"name":"sales"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    (dir, d, token)
}

#[test]
fn ternd_sql_endpoint_and_cli_create_insert_query() {
    let (_dir, d, token) = acme_sales();
    let q = |sql: &str| sql_as(&d, &token, "acme", "sales", sql, "ndjson");

    let (s, b) = q("CREATE TABLE orders (id BIGINT NOT NULL, customer VARCHAR, amount DOUBLE)");
    assert_eq!(
        rows(s, &b),
        vec![json!({"status": "table public.orders created"})]
    );
    let (s, b) = q("INSERT INTO orders VALUES (1, 'ann', 2.5), (2, 'bob', 4.0), (3, 'ann', 1.5)");
    assert_eq!(rows(s, &b), vec![json!({"count": 3})]);
    let (s, b) = q(
        "SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer ORDER BY customer",
    );
    assert_eq!(
        rows(s, &b),
        vec![
            json!({"customer": "ann", "total": 4.0, "n": 2}),
            json!({"customer": "bob", "total": 4.0, "n": 1}),
        ]
    );
    // What SQL wrote, the table API reads.
    let r = d.op(
        "POST",
        "/v1/accounts/acme/databases/sales/schemas/public/tables/orders/scan",
        "{}",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["rows"].as_array().expect("rows").len(), 3);
    // CSV.
    let (s, b) = sql_as(
        &d,
        &token,
        "acme",
        "sales",
        "SELECT id, customer FROM orders WHERE id >= 2 ORDER BY id",
        "csv",
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, "id,customer\n2,bob\n3,ann\n");
    // Errors: 400 naming the problem (with the position for syntax); nothing changed.
    let (s, b) = q("SELECT * FROM orders WHERE id = = 1");
    assert_eq!(s, 400, "{b}");
    assert!(error_of(&b).1.contains("Line: 1, Column"), "{b}");
    let (s, b) = q("INSERT INTO orders VALUES (4, 'cy', 1.0), (NULL, 'dee', 2.0)");
    assert_eq!(s, 400, "{b}");
    assert!(error_of(&b).1.contains("id"), "{b}");
    let (s, b) = q("SELECT count(*) AS n FROM orders");
    assert_eq!(rows(s, &b), vec![json!({"n": 3})]);
    let (s, b) = q("SELECT * FROM nowhere");
    assert_eq!(s, 400, "{b}");
    assert!(error_of(&b).1.contains("nowhere"), "{b}");
    // Another account's token does not reach acme.
    let r = d.op("POST", "/v1/accounts", r#"{"name":"other"}"#);
    let other = r.json()["token"].as_str().expect("token").to_string();
    let (s, b) = sql_as(&d, &other, "acme", "sales", "SELECT 1", "ndjson");
    assert_eq!(s, 403, "{b}");

    // The CLI.
    let out = std::process::Command::new(binary("tern"))
        .args(["--url", &d.url(), "--token", &token])
        .args([
            "sql",
            "acme.sales",
            "SELECT id, customer FROM orders ORDER BY id",
        ])
        .output()
        .expect("run tern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert_eq!(
        lines,
        vec![
            "id | customer",
            "---+---------",
            "1  | ann",
            "2  | bob",
            "3  | ann"
        ],
        "{text}"
    );
    let out = std::process::Command::new(binary("tern"))
        .args(["--url", &d.url(), "--token", &token])
        .args(["sql", "acme.sales", "DELETE FROM nowhere WHERE id = 1"])
        .output()
        .expect("run tern");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nowhere"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.terminate().success());
}

#[test]
fn ternd_sql_on_a_replica_answers_queries_and_refuses_writes() {
    let two = two_with(&[], "");
    let (d1, d2) = (&two.d1, &two.d2);
    let group = primary(d1, d2, 2, 50);
    create_replica(d2, &group);
    let want = scan_all(d1, PRIMARY).expect("primary scan");
    assert_eq!(want.len(), 100);
    wait_until("the replica has the rows", Duration::from_secs(60), || {
        let t = replica_table(d2)?;
        (scan_all(d2, &t)?.len() == 100).then_some(())
    });
    let query = "SELECT count(*) AS n, sum(id) AS s, min(id) AS lo, max(id) AS hi FROM orders";
    let on_primary = rows_of(sql_as(d1, OPERATOR_TOKEN, "a1", "sales", query, "ndjson"));
    assert_eq!(
        on_primary,
        vec![json!({"n": 100, "s": 4950, "lo": 0, "hi": 99})]
    );
    let on_replica = rows_of(sql_as(
        d2,
        OPERATOR_TOKEN,
        "a2",
        "sales_replica",
        query,
        "ndjson",
    ));
    assert_eq!(on_replica, on_primary);
    for write in [
        "INSERT INTO orders VALUES (1000, 'x', 1.0)",
        "DELETE FROM orders WHERE id = 1",
        "UPDATE orders SET amount = 0 WHERE id = 1",
        "CREATE TABLE t2 (id BIGINT)",
    ] {
        let (s, b) = sql_as(d2, OPERATOR_TOKEN, "a2", "sales_replica", write, "ndjson");
        assert_eq!(s, 409, "{write}: {b}");
        let v: Value = serde_json::from_str(&b).expect("json");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("read-only"),
            "{write}: {b}"
        );
        assert_eq!(v["error"]["redirect"]["deployment"], "d1", "{write}: {b}");
    }
    let again = rows_of(sql_as(
        d2,
        OPERATOR_TOKEN,
        "a2",
        "sales_replica",
        query,
        "ndjson",
    ));
    assert_eq!(again, on_primary);
}

fn rows_of((status, body): (u16, String)) -> Vec<Value> {
    rows(status, &body)
}

/// The `psql` of the machine (PostgreSQL 15 client).
fn psql_binary() -> std::path::PathBuf {
    let lib = std::path::PathBuf::from("/usr/lib/postgresql/15/bin/psql");
    if lib.exists() { lib } else { "psql".into() }
}

/// `psql -c sql` as `user` on `dbname` of the daemon whose config is `config` (its
/// PostgreSQL address is in `<config>.pg`): (success, stdout, stderr).
fn psql(config: &std::path::Path, user: &str, dbname: &str, sql: &str) -> (bool, String, String) {
    let addr =
        std::fs::read_to_string(config.with_extension("pg")).expect("the PostgreSQL address file");
    let (host, port) = addr.trim().rsplit_once(':').expect("host:port");
    let out = std::process::Command::new(psql_binary())
        .arg(format!(
            "host={host} port={port} user={user} dbname={dbname} sslmode=disable connect_timeout=10"
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", OPERATOR_TOKEN)
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn psql_creates_inserts_and_queries_and_a_replica_answers_the_same() {
    let two = two_with(&[("TERN_SQL__PG_LISTEN", "127.0.0.1:0")], "");
    let (d1, d2) = (&two.d1, &two.d2);
    let r = d1.op("POST", "/v1/accounts/a1/databases", r#"{"name":"sales"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let ok = |(ok, out, err): (bool, String, String)| {
        assert!(ok, "psql failed: {err}");
        out
    };
    ok(psql(
        &two.c1,
        "a1",
        "sales",
        "CREATE TABLE orders (id BIGINT NOT NULL, customer VARCHAR, amount DOUBLE)",
    ));
    ok(psql(
        &two.c1,
        "a1",
        "sales",
        "INSERT INTO orders VALUES (1, 'ann', 2.5), (2, 'bob', 4), (3, 'ann', 1.5)",
    ));
    let query =
        "SELECT customer, count(*), sum(amount) FROM orders GROUP BY customer ORDER BY customer";
    let on_primary = ok(psql(&two.c1, "a1", "sales", query));
    assert_eq!(on_primary, "ann|2|4.0\nbob|1|4.0\n");
    let rows = ok(psql(
        &two.c1,
        "a1",
        "sales",
        "SELECT id, customer FROM orders WHERE id >= 2 ORDER BY id",
    ));
    assert_eq!(rows, "2|bob\n3|ann\n");
    // A wrong password is refused.
    let addr = std::fs::read_to_string(two.c1.with_extension("pg")).expect("pg address");
    let (host, port) = addr.trim().rsplit_once(':').expect("host:port");
    let out = std::process::Command::new(psql_binary())
        .arg(format!(
            "host={host} port={port} user=a1 dbname=sales sslmode=disable"
        ))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", "not-a-token")
        .output()
        .expect("run psql");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("password"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A syntax error names the place.
    let (ok_, _, err) = psql(
        &two.c1,
        "a1",
        "sales",
        "SELECT * FROM orders WHERE id = = 1",
    );
    assert!(!ok_);
    assert!(err.contains("Line: 1, Column"), "{err}");

    // The database replicates to d2, whose psql answers the same query and refuses writes.
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
    create_replica(d2, &group);
    wait_until("the replica has the rows", Duration::from_secs(60), || {
        let t = replica_table(d2)?;
        (scan_all(d2, &t)?.len() == 3).then_some(())
    });
    assert_eq!(ok(psql(&two.c2, "a2", "sales_replica", query)), on_primary);
    let (ok_, _, err) = psql(
        &two.c2,
        "a2",
        "sales_replica",
        "INSERT INTO orders VALUES (9, 'zed', 1)",
    );
    assert!(!ok_, "a write on the replica must fail");
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(ok(psql(&two.c2, "a2", "sales_replica", query)), on_primary);
}

/// `POST /v1/sql` for a replication statement (no database) as `account` with `token`.
fn admin_sql(d: &Ternd, token: &str, account: &str, sql: &str) -> (u16, String) {
    let body = json!({"account": account, "sql": sql});
    let r = request(
        &d.addr,
        "POST",
        "/v1/sql",
        Some(token),
        "application/json",
        body.to_string().as_bytes(),
    );
    (r.status, r.body)
}

/// The seed's replication statements between two real daemons: replication enabled to
/// one account only, the replica created by SQL on the second daemon (`tern sql` and
/// psql too), global databases shown, refreshed; another account is refused, through
/// SQL and through the JSON API; operator-only statements need the operator token.
#[test]
fn seed_replication_statements_between_two_daemons() {
    let two = two_with(&[("TERN_SQL__PG_LISTEN", "127.0.0.1:0")], "");
    let (d1, d2) = (&two.d1, &two.d2);
    let r = d1.op("POST", "/v1/accounts/a1/databases", r#"{"name":"sales"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let q1 = |sql: &str| sql_as(d1, OPERATOR_TOKEN, "a1", "sales", sql, "ndjson");
    let (s, b) = q1("CREATE TABLE orders (id BIGINT NOT NULL, customer VARCHAR)");
    rows(s, &b);
    let (s, b) = q1("INSERT INTO orders VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')");
    rows(s, &b);

    let deployments = rows_of(admin_sql(d1, OPERATOR_TOKEN, "a1", "SHOW DEPLOYMENTS"));
    let ids: Vec<&str> = deployments
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["d1", "d2"], "{deployments:?}");

    let enabled = rows_of(admin_sql(
        d1,
        OPERATOR_TOKEN,
        "a1",
        "ALTER DATABASE sales ENABLE REPLICATION TO ACCOUNTS a2",
    ));
    assert_eq!(enabled.len(), 1, "{enabled:?}");
    assert_eq!(enabled[0]["allowed_accounts"], "a2");
    let group = enabled[0]["group"].as_str().expect("group").to_string();

    // A second account of the same account group on d2, made global by SQL.
    let accounts = rows_of(admin_sql(d1, OPERATOR_TOKEN, "a1", "SHOW GLOBAL ACCOUNTS"));
    let account_group = accounts[0]["replication_group"]
        .as_str()
        .expect("account group")
        .to_string();
    let r = d2.op("POST", "/v1/accounts", r#"{"name":"eve"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let eve = r.json()["token"].as_str().expect("token").to_string();
    let set = format!("ALTER ACCOUNT eve SET GLOBAL GROUP = '{account_group}'");
    let (s, b) = admin_sql(d2, &eve, "eve", &set);
    assert_eq!(s, 403, "operator only: {b}");
    let joined = rows_of(admin_sql(d2, OPERATOR_TOKEN, "eve", &set));
    assert_eq!(joined[0]["group"], account_group.as_str());

    wait_until("d2 knows the group", Duration::from_secs(60), || {
        let (s, b) = admin_sql(d2, OPERATOR_TOKEN, "a2", "SHOW GLOBAL DATABASES");
        (s == 200 && b.contains(&group)).then_some(())
    });

    // eve is not on the list: refused through SQL and through the JSON API.
    let (s, b) = admin_sql(
        d2,
        &eve,
        "eve",
        "CREATE DATABASE stolen AS REPLICA OF d1.a1.sales",
    );
    assert_eq!(s, 400, "{b}");
    let (_, message) = error_of(&b);
    assert!(
        message.contains("account eve of deployment d2 is not allowed")
            && message.contains("to accounts a2 only"),
        "{message}"
    );
    let r = d2.op(
        "POST",
        "/v1/accounts/eve/replicas",
        &json!({"name": "stolen", "group": group}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("is not allowed"), "{}", r.body);

    // a2 is: its replica, created by `tern sql`, gets the rows.
    let out = std::process::Command::new(binary("tern"))
        .args(["--url", &d2.url(), "--token", OPERATOR_TOKEN])
        .args([
            "sql",
            "a2",
            "CREATE DATABASE sales_replica AS REPLICA OF d1.a1.sales",
        ])
        .output()
        .expect("run tern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&group),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let count = "SELECT count(*) AS n FROM orders";
    let n_on_replica = || {
        let (s, b) = sql_as(d2, OPERATOR_TOKEN, "a2", "sales_replica", count, "ndjson");
        (s == 200).then(|| rows(s, &b)[0]["n"].as_i64()).flatten()
    };
    wait_until("the replica has 3 rows", Duration::from_secs(60), || {
        (n_on_replica() == Some(3)).then_some(())
    });
    let (s, b) = q1("INSERT INTO orders VALUES (4, 'dee')");
    rows(s, &b);
    let refreshed = rows_of(admin_sql(
        d2,
        OPERATOR_TOKEN,
        "a2",
        "ALTER DATABASE sales_replica REFRESH",
    ));
    assert_eq!(refreshed[0]["database"], "sales_replica");
    assert!(refreshed[0]["request"].is_string(), "{refreshed:?}");
    wait_until("the replica has 4 rows", Duration::from_secs(60), || {
        (n_on_replica() == Some(4)).then_some(())
    });

    // Both replicas of the group, as psql shows them from d2.
    let addr = std::fs::read_to_string(two.c2.with_extension("pg")).expect("pg address");
    let (host, port) = addr.trim().rsplit_once(':').expect("host:port");
    let out = std::process::Command::new(psql_binary())
        .arg(format!(
            "host={host} port={port} user=a2 dbname=sales_replica sslmode=disable connect_timeout=10"
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "SHOW GLOBAL DATABASES"])
        .env("PGPASSWORD", OPERATOR_TOKEN)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mine: Vec<&str> = text.lines().filter(|l| l.contains(&group)).collect();
    assert_eq!(mine.len(), 2, "{text}");
    assert!(
        mine.iter()
            .any(|l| l.contains("|d1|a1|sales|") && l.contains("primary")),
        "{text}"
    );
    assert!(
        mine.iter()
            .any(|l| l.contains("|d2|a2|sales_replica|") && l.contains("secondary|d1")),
        "{text}"
    );

    // Operator-only, and bad statements name the problem.
    let r = d2.op("POST", "/v1/accounts/a2/tokens", "");
    assert_eq!(r.status, 201, "{}", r.body);
    let a2 = r.json()["token"].as_str().expect("token").to_string();
    let (s, b) = admin_sql(d2, &a2, "a2", "SHOW REPLICATION STATUS");
    assert_eq!(s, 403, "{b}");
    let status = rows_of(admin_sql(
        d2,
        OPERATOR_TOKEN,
        "a2",
        "SHOW REPLICATION STATUS",
    ));
    assert!(
        status.iter().any(
            |r| r["section"] == "replicas" && r["item"].as_str().unwrap_or("").contains(&group)
        ),
        "{status:?}"
    );
    let (s, b) = admin_sql(d2, &a2, "a2", "ALTER DATABASE sales_replica VACUUM");
    assert_eq!(s, 400, "{b}");
    assert!(
        error_of(&b)
            .1
            .contains("Expected: ENABLE REPLICATION, DISABLE REPLICATION, REFRESH or PRIMARY"),
        "{b}"
    );
    // CREATE DEPLOYMENT is the operator's, and a bad genesis changes nothing.
    let add = "CREATE DEPLOYMENT d3 REGION = 'r3' GENESIS = 'nope'";
    let (s, b) = admin_sql(d2, &a2, "a2", add);
    assert_eq!(s, 403, "{b}");
    let (s, b) = admin_sql(d2, OPERATOR_TOKEN, "a2", add);
    assert_eq!(s, 400, "{b}");
    assert!(
        error_of(&b).1.contains("GENESIS: not a channel genesis"),
        "{b}"
    );
    let deployments = rows_of(admin_sql(d2, OPERATOR_TOKEN, "a2", "SHOW DEPLOYMENTS"));
    assert_eq!(deployments.len(), 2, "{deployments:?}");
    let (s, b) = admin_sql(d2, &a2, "a2", "SELECT 1");
    assert_eq!(s, 400, "{b}");
    assert!(error_of(&b).1.contains("database"), "{b}");
}

#[test]
fn the_sql_shell_runs_statements_as_they_end_keeps_history_and_survives_errors() {
    use std::io::Write as _;
    let (dir, d, token) = acme_sales();
    let history = dir.path().join("state").join("sql_history");
    let shell = |flags: &[&str], input: &str| {
        let mut child = std::process::Command::new(binary("tern"))
            .args(["--url", &d.url(), "--token", &token])
            .args(["sql", "acme.sales"])
            .args(flags)
            .env("TERN_SQL_HISTORY", &history)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run tern sql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write statements");
        let out = child.wait_with_output().expect("tern sql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Interactive (-i through a pipe): a statement over several lines, two on one line,
    // a bad one in between (printed, the shell goes on), then \q — what follows is not run.
    let (ok, out, err) = shell(
        &["-i"],
        "CREATE TABLE t (id BIGINT NOT NULL,\n  name VARCHAR);\n\
         INSERT INTO t VALUES (1, 'a;b'); INSERT INTO t VALUES (2, 'c');\n\
         SELECT * FROM nowhere;\n\
         SELECT id, name\n  FROM t\n  ORDER BY id;\n\
         \\q\n\
         DROP TABLE t;\n",
    );
    assert!(ok, "an error inside the shell does not fail it: {err}");
    assert!(err.contains("nowhere"), "the error is printed: {err}");
    assert!(
        err.contains("tern> ") && err.contains("  ... "),
        "prompts: {err}"
    );
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    let table = lines
        .iter()
        .position(|l| *l == "id | name")
        .unwrap_or_else(|| panic!("no table in {out}"));
    assert_eq!(
        &lines[table..table + 4],
        ["id | name", "---+-----", "1  | a;b", "2  | c"],
        "{out}"
    );
    let kept = std::fs::read_to_string(&history).expect("history file");
    assert_eq!(
        kept.lines().collect::<Vec<_>>(),
        [
            "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR);",
            "INSERT INTO t VALUES (1, 'a;b');",
            "INSERT INTO t VALUES (2, 'c');",
            "SELECT * FROM nowhere;",
            "SELECT id, name FROM t ORDER BY id;",
        ],
        "{kept}"
    );
    // \q left before DROP TABLE: the table is still there; --csv is kept in the shell.
    let (ok, out, err) = shell(&["-i", "--csv"], "SELECT count(*) AS n FROM t;\n");
    assert!(ok, "{err}");
    assert_eq!(out, "n\n2\n");
    // Piped without -i: no history, and a failed statement fails the run.
    let before = std::fs::read_to_string(&history).expect("history");
    let (ok, _, err) = shell(&[], "SELECT 1;\nSELECT * FROM nowhere;\n");
    assert!(!ok && err.contains("nowhere"), "{err}");
    assert_eq!(std::fs::read_to_string(&history).expect("history"), before);
    assert!(d.terminate().success());
}

/// What a process wrote so far, read by a thread as it comes (waiters are woken by each
/// piece read).
struct Output(std::sync::Arc<(std::sync::Mutex<Vec<u8>>, std::sync::Condvar)>);

impl Output {
    fn read_from(mut r: impl std::io::Read + Send + 'static) -> Self {
        let out =
            std::sync::Arc::new((std::sync::Mutex::new(Vec::new()), std::sync::Condvar::new()));
        let shared = std::sync::Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shared
                    .0
                    .lock()
                    .expect("output")
                    .extend_from_slice(&buf[..n]);
                shared.1.notify_all();
            }
        });
        Self(out)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().expect("output")).into_owned()
    }

    /// Waits until `done` holds for what was written (a minute at most).
    fn wait(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut written = self.0.0.lock().expect("output");
        while !done(&String::from_utf8_lossy(&written)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "waited for {what}; the terminal shows:\n{}",
                String::from_utf8_lossy(&written)
            );
            written = self.0.1.wait_timeout(written, left).expect("output").0;
        }
    }

    /// Waits for the shell's prompt after its `answers`-th answer: the line editor has
    /// the terminal then (keys typed before would reach a terminal in line mode, where
    /// Ctrl-C interrupts the process).
    fn wait_prompt(&self, answers: usize) {
        self.wait(&format!("the prompt after answer {answers}"), |t| {
            t.split("(1 row)")
                .nth(answers)
                .is_some_and(|after| after.contains("tern> "))
        });
    }
}

/// On a terminal (a pseudo-terminal from `script`) the shell edits lines: ↑ recalls the
/// last statement and Enter runs it again; Ctrl-C drops a half-typed statement and the
/// shell goes on; the history file keeps what ran.
#[test]
fn the_sql_shell_on_a_terminal_recalls_statements_with_the_arrow_keys() {
    use std::io::Write as _;
    let (dir, d, token) = acme_sales();
    let history = dir.path().join("sql_history");
    let command = format!(
        "'{}' --url '{}' --token '{token}' sql acme.sales",
        binary("tern").display(),
        d.url()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qfe", "-c", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("TERN_SQL_HISTORY", &history)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run tern sql under script");
    let out = Output::read_from(child.stdout.take().expect("stdout"));
    let mut keys = child.stdin.take().expect("stdin");
    let mut type_keys = |k: &str| {
        keys.write_all(k.as_bytes()).expect("type");
        keys.flush().expect("flush");
    };
    out.wait_prompt(0);
    type_keys("SELECT 40 + 2 AS answer;\r");
    out.wait_prompt(1);
    // ↑ then Enter: the statement again (without line editing the escape sequence would
    // be a line of its own and nothing would run).
    type_keys("\x1b[A\r");
    out.wait_prompt(2);
    // Half a statement, Ctrl-C: dropped; the next one runs alone.
    type_keys("SELECT 1 +");
    out.wait("the half statement echoed", |t| t.contains("SELECT 1 +"));
    type_keys("\x03");
    out.wait("a fresh prompt after Ctrl-C", |t| {
        t.rsplit("SELECT 1 +")
            .next()
            .is_some_and(|after| after.contains("tern> "))
    });
    type_keys("SELECT 6 * 7 AS again;\r");
    out.wait_prompt(3);
    let shown = out.text();
    let answers = shown.lines().filter(|l| l.trim() == "42").count();
    assert_eq!(answers, 3, "{shown}");
    type_keys("\\q\r");
    let status = child.wait().expect("tern sql");
    assert!(status.success(), "{status}: {}", out.text());
    assert!(!out.text().contains("error"), "{}", out.text());
    let kept = std::fs::read_to_string(&history).expect("history file");
    assert_eq!(
        kept.lines().collect::<Vec<_>>(),
        [
            "SELECT 40 + 2 AS answer;",
            "SELECT 40 + 2 AS answer;",
            "SELECT 6 * 7 AS again;",
        ],
        "{kept}"
    );
    assert!(d.terminate().success());
}
