//! `Idempotency-Key` on writes: a retry with the same key is applied once — answered with
//! the first answer (marked replayed) once that committed, "in doubt" with the same
//! transaction id while it is, and refused with 422 when the key comes with another
//! request. Driven through a crash at `logged` and a restart, as in `in_doubt`.

use std::sync::Arc;

use serde_json::Value;
use tern_txn::CrashPoints;
use ternd::daemon::Daemon;

use crate::harness::{Reply, TBL, call, call_with, config, create_orders, ids, serve};

async fn keyed(addr: std::net::SocketAddr, path: &str, body: &str, key: &str) -> Reply {
    call_with(addr, "POST", path, body, &[("Idempotency-Key", key)]).await
}

async fn scan_ids(addr: std::net::SocketAddr) -> Vec<i64> {
    let (status, v) = call(addr, "POST", &format!("{TBL}/scan"), "{}").await;
    assert_eq!(status, 200, "{v}");
    ids(&v)
}

fn replayed(r: &Reply) -> bool {
    r.head.contains("\r\nidempotent-replayed: true") && r.body["replayed"] == Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let dir = tempfile::tempdir().expect("dir");
    let home = dir.path().join("d1");
    let crash = CrashPoints::new();
    let d = Daemon::open_with_crash_points(config(&home), crash.clone())
        .await
        .expect("open");
    let s = serve(Arc::clone(&d)).await;
    create_orders(s.addr).await;
    let rows = format!("{TBL}/rows");

    // A write with a key, then its retry: one row, the first answer again, marked.
    let first = keyed(s.addr, &rows, r#"[{"id":1}]"#, "order-1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!replayed(&first), "{}", first.body);
    let txn_id = first.body["txn_id"]
        .as_u64()
        .expect("the answer names its transaction");
    let again = keyed(s.addr, &rows, r#"[{"id":1}]"#, "order-1").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(replayed(&again), "{} / {}", again.head, again.body);
    for field in [
        "version",
        "committed",
        "rows",
        "files_added",
        "files_removed",
        "txn_id",
    ] {
        assert_eq!(
            again.body[field], first.body[field],
            "{field}: {}",
            again.body
        );
    }
    assert_eq!(scan_ids(s.addr).await, [1]);

    // The key with another body, or another path: 422 naming the key, nothing applied.
    let other = keyed(s.addr, &rows, r#"[{"id":9}]"#, "order-1").await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(
        other.body["error"]["kind"], "invalid_input",
        "{}",
        other.body
    );
    let message = other.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"order-1\""), "{message}");
    let other = keyed(
        s.addr,
        &format!("{rows}?format=json"),
        r#"[{"id":1}]"#,
        "order-1",
    )
    .await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(scan_ids(s.addr).await, [1]);

    // Keys are per account and per request, so another key is another write.
    let second = keyed(s.addr, &rows, r#"[{"id":1}]"#, "order-1b").await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_ne!(second.body["txn_id"], first.body["txn_id"]);
    assert_eq!(scan_ids(s.addr).await, [1, 1]);

    // A statement that changed nothing keeps its answer too: the retry does not delete
    // what was inserted in between.
    let del = format!("{TBL}/delete");
    let pred = r#"{"where":{"column":"id","op":"=","value":7}}"#;
    let noop = keyed(s.addr, &del, pred, "purge-7").await;
    assert_eq!(noop.status, 200, "{}", noop.body);
    assert_eq!(noop.body["committed"], false, "{}", noop.body);
    let (status, v) = call(s.addr, "POST", &rows, r#"[{"id":7}]"#).await;
    assert_eq!(status, 200, "{v}");
    let again = keyed(s.addr, &del, pred, "purge-7").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(replayed(&again), "{}", again.body);
    assert_eq!(again.body["committed"], false, "{}", again.body);
    assert_eq!(scan_ids(s.addr).await, [1, 1, 7]);

    // A bad key is refused before anything runs, naming the header.
    for bad in ["has space", &"k".repeat(256), "tab\there"] {
        let r = keyed(s.addr, &rows, r#"[{"id":5}]"#, bad).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        let m = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains("Idempotency-Key"), "{m}");
    }
    assert_eq!(scan_ids(s.addr).await, [1, 1, 7]);

    // Killed after the log record: 503 in doubt with the id …
    crash.arm("logged", 1);
    let doubt = keyed(s.addr, &rows, r#"[{"id":2}]"#, "order-2").await;
    assert!(crash.crashed(), "the crash point was reached");
    assert_eq!(doubt.status, 503, "{}", doubt.body);
    let doubt_id = doubt.body["error"]["txn_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("in doubt names its transaction: {}", doubt.body));
    assert!(doubt_id > txn_id);
    // … and a retry while it still is: in doubt again, the same id, nothing run.
    let retry = keyed(s.addr, &rows, r#"[{"id":2}]"#, "order-2").await;
    assert_eq!(retry.status, 503, "{}", retry.body);
    assert_eq!(retry.body["error"]["kind"], "unavailable", "{}", retry.body);
    assert_eq!(retry.body["error"]["txn_id"], doubt_id, "{}", retry.body);
    s.task.abort();
    drop(d);

    // After the restart (recovery commits it) the retry answers the committed insert.
    let d = Daemon::open(config(&home)).await.expect("reopen");
    let s = serve(Arc::clone(&d)).await;
    let retry = keyed(s.addr, &rows, r#"[{"id":2}]"#, "order-2").await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert!(replayed(&retry), "{}", retry.body);
    assert_eq!(retry.body["txn_id"], doubt_id, "{}", retry.body);
    assert_eq!(retry.body["committed"], true, "{}", retry.body);
    assert_eq!(retry.body["rows"], 1, "{}", retry.body);
    assert_eq!(
        scan_ids(s.addr).await,
        [1, 1, 2, 7],
        "the in-doubt insert, once"
    );
    let other = keyed(s.addr, &rows, r#"[{"id":3}]"#, "order-2").await;
    assert_eq!(other.status, 422, "{}", other.body);
    // Keys survive the restart: the first write's retry still replays.
    let again = keyed(s.addr, &rows, r#"[{"id":1}]"#, "order-1").await;
    assert!(replayed(&again), "{}", again.body);
    assert_eq!(again.body["txn_id"], txn_id, "{}", again.body);
    assert_eq!(scan_ids(s.addr).await, [1, 1, 2, 7]);
    s.task.abort();
}
