//! A commit the daemon could not see through after its log record was stored is answered
//! "in doubt" with the transaction id, never a plain failure; the id's status can be looked
//! up, and after the restart (recovery) it is committed — the rows are there once.
//!
//! Driven by the commit protocol's crash point `logged` (record stored, versions not yet
//! visible): the daemon stops there as a killed process would, and a new one opens on the
//! same folders.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use tern_txn::CrashPoints;
use ternd::config::Config;
use ternd::daemon::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR: &str = "operator-secret-for-tests";
const TBL: &str = "/v1/accounts/acme/databases/sales/schemas/public/tables/orders";

fn config(home: &Path) -> Config {
    let h = home.display();
    let text = format!(
        r#"deployment_id = "d1"
listen = "127.0.0.1:0"
metadata_path = "{h}/meta.db"
operator_token = "{OPERATOR}"
[volume]
url = "file://{h}/volume"
[replication]
url = "file://{h}/replication"
[keys]
kind = "local"
dir = "{h}/keys"
"#
    );
    let path = home.join("d1.toml");
    std::fs::create_dir_all(home).expect("home");
    std::fs::write(&path, text).expect("config");
    Config::load(Some(&path), std::iter::empty()).expect("valid config")
}

/// A daemon's router served on a loopback port until the returned handle is aborted.
struct Served {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(d: Arc<Daemon>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = ternd::api::router(d);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Served { addr, task }
}

/// One request (Connection: close); the status and the JSON body.
async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("response head");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    // Bodies are JSON, sent whole or chunked: take from the first brace to the last.
    let json = match (rest.find(['{', '[']), rest.rfind(['}', ']'])) {
        (Some(a), Some(b)) => serde_json::from_str(&rest[a..=b]).expect("JSON body"),
        _ => Value::Null,
    };
    (status, json)
}

fn ids(scan: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = scan["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_stopped_after_its_log_record_is_in_doubt_then_committed() {
    let dir = tempfile::tempdir().expect("dir");
    let home = dir.path().join("d1");

    // First life: set up, one committed insert, then an insert that stops at `logged`.
    let crash = CrashPoints::new();
    let d = Daemon::open_with_crash_points(config(&home), crash.clone())
        .await
        .expect("open");
    let s = serve(Arc::clone(&d)).await;
    for (path, body) in [
        ("/v1/accounts", r#"{"name":"acme"}"#),
        ("/v1/accounts/acme/databases", r#"{"name":"sales"}"#),
        (
            "/v1/accounts/acme/databases/sales/schemas/public/tables",
            r#"{"name":"orders","columns":[{"name":"id","type":"int64","nullable":false}]}"#,
        ),
    ] {
        let (status, v) = call(s.addr, "POST", path, body).await;
        assert_eq!(status, 201, "{path}: {v}");
    }
    let (status, v) = call(s.addr, "POST", &format!("{TBL}/rows"), r#"[{"id":1}]"#).await;
    assert_eq!(status, 200, "{v}");

    crash.arm("logged", 1);
    let (status, v) = call(s.addr, "POST", &format!("{TBL}/rows"), r#"[{"id":2}]"#).await;
    assert!(crash.crashed(), "the crash point was reached");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["kind"], "unavailable", "{v}");
    let txn_id = v["error"]["txn_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an in-doubt answer names its transaction: {v}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("transaction {txn_id} is in doubt"))),
        "{v}"
    );
    s.task.abort();
    drop(d);

    // Second life: recovery at open rolls the prepared transaction forward.
    let d = Daemon::open(config(&home)).await.expect("reopen");
    let s = serve(Arc::clone(&d)).await;
    let status_path = format!("/v1/accounts/acme/transactions/{txn_id}");
    let (status, v) = call(s.addr, "GET", &status_path, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "committed", "{v}");
    assert_eq!(v["txn_id"], txn_id, "{v}");
    let (status, v) = call(s.addr, "POST", &format!("{TBL}/scan"), "{}").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ids(&v), [1, 2], "the in-doubt insert is there, once");

    // Ids never issued, and ids that are not ids.
    let (status, v) = call(
        s.addr,
        "GET",
        &format!("/v1/accounts/acme/transactions/{}", txn_id + 100),
        "",
    )
    .await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = call(s.addr, "GET", "/v1/accounts/acme/transactions/abc", "").await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"abc\"")),
        "{v}"
    );
    s.task.abort();
}
