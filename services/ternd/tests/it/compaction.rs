//! The compaction worker: the small files of a local database's table are merged by the
//! running daemon (seen through the API's scan), and a secondary replica's are not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ternd::daemon::Daemon;

use crate::harness::{TBL, call, config, create_orders, ids, serve};

const MIRROR: &str = "/v1/accounts/acme/databases/mirror/schemas/public/tables/orders";

async fn scan(addr: std::net::SocketAddr, table: &str) -> (Vec<i64>, u64) {
    let (status, v) = call(addr, "POST", &format!("{table}/scan"), "{}").await;
    assert_eq!(status, 200, "{v}");
    (ids(&v), v["files_total"].as_u64().expect("files_total"))
}

fn figure(d: &Daemon, name: &str) -> u64 {
    d.supervisor
        .reports()
        .into_iter()
        .find(|r| r.name == "compaction")
        .and_then(|r| r.figures.into_iter().find(|(n, _)| n == name))
        .map_or(0, |(_, v)| v)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_compacts_local_tables_and_never_a_secondary() {
    let dir = tempfile::tempdir().expect("dir");
    let home = dir.path().join("d1");
    let mut c = config(&home);
    c.compaction.interval = Duration::from_millis(100);
    c.compaction.min_files = 4;
    let d = Daemon::open(c).await.expect("open");
    let s = serve(Arc::clone(&d)).await;
    create_orders(s.addr).await;
    for i in 0..12 {
        let (status, v) = call(
            s.addr,
            "POST",
            &format!("{TBL}/rows"),
            &format!(r#"[{{"id":{i}}}]"#),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    // A second database with the same small files, then made a secondary replica (as
    // replication would): the worker must leave it to its primary.
    for (path, body) in [
        ("/v1/accounts/acme/databases", r#"{"name":"mirror"}"#),
        (
            "/v1/accounts/acme/databases/mirror/schemas/public/tables",
            r#"{"name":"orders","columns":[{"name":"id","type":"int64","nullable":false}]}"#,
        ),
    ] {
        let (status, v) = call(s.addr, "POST", path, body).await;
        assert_eq!(status, 201, "{path}: {v}");
    }
    for i in 0..8 {
        let (status, v) = call(
            s.addr,
            "POST",
            &format!("{MIRROR}/rows"),
            &format!(r#"[{{"id":{i}}}]"#),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    d.meta
        .write(|tx| {
            let acme = tern_storage::layout::AccountId::new("acme").expect("id");
            let mut db = tx
                .list_databases(&acme)?
                .into_iter()
                .find(|db| db.name == "mirror")
                .expect("mirror");
            db.role = tern_meta::DatabaseRole::Secondary;
            db.replication_group = Some("g1".into());
            tx.update_database(&db)
        })
        .expect("make mirror a secondary");
    assert_eq!(scan(s.addr, TBL).await, ((0..12).collect(), 12));
    assert_eq!(scan(s.addr, MIRROR).await.1, 8);

    d.start_workers().await.expect("workers");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, files) = scan(s.addr, TBL).await;
        assert_eq!(rows, (0..12).collect::<Vec<_>>(), "rows while compacting");
        if files == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "still {files} files");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker counts its commit once the commit returns, just after a scan can see it.
    until("the compaction's commit counted", || {
        figure(&d, "commits") >= 1
    })
    .await;
    assert_eq!(figure(&d, "files_removed"), 12);
    // Two more full rounds over every table: the secondary is still as it was.
    let rounds = figure(&d, "rounds");
    until("two more compaction rounds", || {
        figure(&d, "rounds") >= rounds + 2
    })
    .await;
    assert_eq!(scan(s.addr, MIRROR).await, ((0..8).collect(), 8));
    assert_eq!(figure(&d, "failures"), 0);

    // The worker shows in the daemon's status.
    let (status, v) = call(s.addr, "GET", "/v1/status", "").await;
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("compaction"), "{v}");

    s.task.abort();
    let left = d.shutdown().await.expect("shutdown");
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_of_zero_turns_compaction_off() {
    let dir = tempfile::tempdir().expect("dir");
    let home = dir.path().join("d1");
    let mut c = config(&home);
    c.compaction.interval = Duration::ZERO;
    c.compaction.min_files = 2;
    let d = Daemon::open(c).await.expect("open");
    let s = serve(Arc::clone(&d)).await;
    create_orders(s.addr).await;
    for i in 0..4 {
        let (status, v) = call(
            s.addr,
            "POST",
            &format!("{TBL}/rows"),
            &format!(r#"[{{"id":{i}}}]"#),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    d.start_workers().await.expect("workers");
    assert!(
        d.supervisor
            .reports()
            .iter()
            .all(|r| r.name != "compaction"),
        "no compaction worker when off"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(scan(s.addr, TBL).await.1, 4);
    s.task.abort();
    d.shutdown().await.expect("shutdown");
}
