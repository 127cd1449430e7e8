//! A commit the daemon could not see through after its log record was stored is answered
//! "in doubt" with the transaction id, never a plain failure; the id's status can be looked
//! up, and after the restart (recovery) it is committed — the rows are there once.
//!
//! Driven by the commit protocol's crash point `logged` (record stored, versions not yet
//! visible): the daemon stops there as a killed process would, and a new one opens on the
//! same folders.

use std::sync::Arc;

use tern_txn::CrashPoints;
use ternd::daemon::Daemon;

use crate::harness::{TBL, call, config, ids, serve};

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
