//! What operators and load balancers see (issue 21): the probes and draining at
//! shutdown, `/metrics` behind its token and without tenant names, tokens that are
//! listed, revoked, expire or only read, and the request limits' 413/429/503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ternd::daemon::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{
    OPERATOR, Reply, TBL, call, call_as, config_with, create_orders, parse_reply, serve,
};

/// Polls `GET path` (no token) until `want` answers, at most 30 s; the last answer.
async fn until_status(addr: std::net::SocketAddr, path: &str, want: u16) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call_as(addr, None, "GET", path, "", &[]).await;
        if r.status == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_say_ready_after_start_and_drain_at_shutdown() {
    let dir = tempfile::tempdir().expect("dir");
    let d = Daemon::open(config_with(
        &dir.path().join("d1"),
        "[api]\ndrain_period = \"60s\"\n",
    ))
    .await
    .expect("open");
    // The router alone (workers not started): alive, not ready.
    let bare = serve(Arc::clone(&d)).await;
    let h = call_as(bare.addr, None, "GET", "/healthz", "", &[]).await;
    assert_eq!((h.status, h.body["status"].as_str()), (200, Some("ok")));
    let r = call_as(bare.addr, None, "GET", "/readyz", "", &[]).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (503, Some("starting"))
    );
    bare.task.abort();

    // Served as ternd serves: ready once the workers run.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ternd::serve(Arc::clone(&d), listener, async move {
        let _ = stopped.await;
    }));
    let r = until_status(addr, "/readyz", 200).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ready")));

    // SIGTERM: both probes answer 503 while requests are still served (the drain).
    stop.send(()).expect("signal");
    let h = until_status(addr, "/healthz", 503).await;
    assert_eq!(
        (h.status, h.body["status"].as_str()),
        (503, Some("stopping")),
        "{}",
        h.body
    );
    let r = call_as(addr, None, "GET", "/readyz", "", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let (status, v) = call(addr, "GET", "/v1/status", "").await;
    assert_eq!(status, 200, "requests are served while draining: {v}");
    server.abort();
}

async fn metrics(addr: std::net::SocketAddr, token: Option<&str>) -> Reply {
    call_as(addr, token, "GET", "/metrics?fresh=true", "", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_their_token_and_hide_tenant_names() {
    const METRICS: &str = "metrics-scraper-token-0123";
    for show_tenants in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let d = Daemon::open(config_with(
            &dir.path().join("d1"),
            &format!(
                "[api]\nmetrics_token = \"{METRICS}\"\nmetrics_tenant_labels = {show_tenants}\n"
            ),
        ))
        .await
        .expect("open");
        let s = serve(Arc::clone(&d)).await;
        create_orders(s.addr).await;
        // A replicated database is a series of its own (its group's epoch).
        let (status, v) = call(s.addr, "POST", "/v1/accounts/acme/global", "{}").await;
        assert_eq!(status, 200, "{v}");
        let (status, v) = call(
            s.addr,
            "POST",
            "/v1/accounts/acme/databases/sales/replication",
            r#"{"enable":true}"#,
        )
        .await;
        assert_eq!(status, 200, "{v}");

        let none = metrics(s.addr, None).await;
        assert_eq!(none.status, 401, "{}", none.body);
        assert!(
            none.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("api.metrics_token")),
            "{}",
            none.body
        );
        let wrong = metrics(s.addr, Some("not-the-metrics-token-000")).await;
        assert_eq!(wrong.status, 401, "{}", wrong.body);
        for token in [METRICS, OPERATOR] {
            let m = metrics(s.addr, Some(token)).await;
            assert_eq!(m.status, 200, "{}", m.body);
            let text = m.body["text"].as_str().expect("text").to_string();
            assert!(text.contains("tern_group_epoch{database=\""), "{text}");
            if show_tenants {
                assert!(text.contains("sales"), "{text}");
            } else {
                assert!(!text.contains("sales") && !text.contains("acme"), "{text}");
                assert!(text.contains("tern_group_epoch{database=\"t-"), "{text}");
            }
        }
        s.task.abort();
    }
}

async fn as_token(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Reply {
    call_as(addr, Some(token), method, path, body, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_revoked_expire_and_may_only_read() {
    let dir = tempfile::tempdir().expect("dir");
    let d = Daemon::open(config_with(&dir.path().join("d1"), ""))
        .await
        .expect("open");
    let s = serve(Arc::clone(&d)).await;
    create_orders(s.addr).await;
    let tokens = "/v1/accounts/acme/tokens";
    let make = |body: Value| {
        let body = body.to_string();
        async move {
            let (status, v) = call(s.addr, "POST", tokens, &body).await;
            assert_eq!(status, 201, "{v}");
            v
        }
    };
    let rw = make(json!({"name": "app"})).await;
    let ro = make(json!({"name": "grafana", "read_only": true})).await;
    let short = make(json!({"expires_in": "1ms"})).await;
    let secret = |v: &Value| v["token"].as_str().expect("token").to_string();
    let (rw_t, ro_t, short_t) = (secret(&rw), secret(&ro), secret(&short));

    // Listed by id, never with a secret.
    let (status, list) = call(s.addr, "GET", tokens, "").await;
    assert_eq!(status, 200, "{list}");
    let listed = list["tokens"].as_array().expect("tokens");
    // The account's first token (made with it) and the three above.
    assert_eq!(listed.len(), 4, "{list}");
    for t in [&rw_t, &ro_t, &short_t] {
        assert!(
            !list.to_string().contains(t.as_str()),
            "a secret is listed: {list}"
        );
    }
    let ro_entry = listed
        .iter()
        .find(|t| t["name"] == "grafana")
        .expect("grafana listed");
    assert_eq!(ro_entry["read_only"], true);
    assert_eq!(ro_entry["id"], ro["id"]);

    // Read-only: reads and scans pass, every write is 403.
    let rows = format!("{TBL}/rows");
    let r = as_token(s.addr, &ro_t, "POST", &format!("{TBL}/scan"), "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = as_token(s.addr, &ro_t, "GET", "/v1/accounts/acme/databases", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (method, path, body) in [
        ("POST", rows.as_str(), r#"[{"id":1}]"#),
        ("POST", "/v1/accounts/acme/databases", r#"{"name":"more"}"#),
        ("DELETE", TBL, ""),
        (
            "POST",
            "/v1/sql",
            r#"{"account":"acme","database":"sales","sql":"INSERT INTO orders VALUES (1)"}"#,
        ),
    ] {
        let r = as_token(s.addr, &ro_t, method, path, body).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("read-only")),
            "{}",
            r.body
        );
    }
    let r = as_token(
        s.addr,
        &ro_t,
        "POST",
        "/v1/sql",
        r#"{"account":"acme","database":"sales","sql":"SELECT count(*) FROM orders"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The read-write token writes.
    let r = as_token(s.addr, &rw_t, "POST", &rows, r#"[{"id":1}]"#).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Expired: refused, and listed as expired (its 1 ms are over by now: the clock
    // only moves forward past the instant it was made).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = as_token(s.addr, &short_t, "POST", &format!("{TBL}/scan"), "{}").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{}",
        r.body
    );
    let (_, list) = call(s.addr, "GET", tokens, "").await;
    let e = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["id"] == short["id"])
        .expect("listed");
    assert_eq!(e["expired"], true, "{list}");

    // Revoked: refused from the next request on; its id is gone from the list.
    let id = rw["id"].as_str().expect("id");
    let (status, v) = call(s.addr, "DELETE", &format!("{tokens}/{id}"), "").await;
    assert_eq!(status, 200, "{v}");
    let r = as_token(s.addr, &rw_t, "POST", &format!("{TBL}/scan"), "{}").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let (_, list) = call(s.addr, "GET", tokens, "").await;
    assert!(!list.to_string().contains(id), "{list}");
    let (status, v) = call(s.addr, "DELETE", &format!("{tokens}/{id}"), "").await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = call(s.addr, "DELETE", &format!("{tokens}/nothex"), "").await;
    assert_eq!(status, 400, "{v}");
    // Only the operator makes and revokes tokens.
    let r = as_token(s.addr, &ro_t, "POST", tokens, "{}").await;
    assert_eq!(r.status, 403, "{}", r.body);
    s.task.abort();
}

/// Sends a request whose body never completes (the head says 100 bytes more), and keeps
/// the connection open.
async fn stalled(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{{\"id\":"
    );
    s.write_all(head.as_bytes()).await.expect("send");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_429_and_503_saying_what_to_do() {
    let dir = tempfile::tempdir().expect("dir");
    let d = Daemon::open(config_with(
        &dir.path().join("d1"),
        "[api]\nmax_body_bytes = 1024\nmax_concurrent_requests = 1\nrequest_timeout = \"1s\"\n",
    ))
    .await
    .expect("open");
    let s = serve(Arc::clone(&d)).await;
    create_orders(s.addr).await;

    // 413: a body read whole over api.max_body_bytes.
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2000));
    let (status, v) = call(s.addr, "POST", "/v1/accounts", &big).await;
    assert_eq!(status, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.max_body_bytes") && m.contains("…/rows")),
        "{v}"
    );

    // 429: one request in flight (a load whose body has not all arrived: its handler is
    // running by construction), so the next is refused, with Retry-After; the probes
    // still answer.
    let mut load = stalled(s.addr, &format!("{TBL}/rows")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let busy = loop {
        let r = call(s.addr, "GET", "/v1/accounts", "").await;
        if r.0 == 429 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(busy.0, 429, "{}", busy.1);
    assert!(
        busy.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.max_concurrent_requests")),
        "{}",
        busy.1
    );
    let h = call_as(s.addr, None, "GET", "/healthz", "", &[]).await;
    assert_eq!(h.status, 200);
    // The load is exempt from the timeout: after more than request_timeout it is still
    // waiting for its body, and completes when the body arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load.write_all(format!("1}}]{}", " ".repeat(90)).as_bytes())
        .await
        .expect("rest of the body");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), load.read_to_end(&mut raw)).await;
    let answer = parse_reply(&raw);
    assert_eq!(answer.status, 200, "{}", answer.body);

    // 503: a request read whole whose body never comes is stopped at request_timeout.
    let mut slow = stalled(s.addr, "/v1/accounts/acme/databases").await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut raw)).await;
    let answer = parse_reply(&raw);
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.request_timeout")),
        "{}",
        answer.body
    );
    s.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_key_is_made_only_inside_the_keys_folder() {
    let dir = tempfile::tempdir().expect("dir");
    let home = dir.path().join("d1");
    let d = Daemon::open(config_with(&home, "")).await.expect("open");
    let s = serve(Arc::clone(&d)).await;
    create_orders(s.addr).await;
    let path = "/v1/accounts/acme/customer-key";
    let outside = dir.path().join("escaped.key");
    for file in [
        "../escaped.key".to_string(),
        outside.display().to_string(),
        "sub/../../escaped.key".to_string(),
    ] {
        let body = json!({"kind": "x25519", "file": file, "create": true}).to_string();
        let (status, v) = call(s.addr, "POST", path, &body).await;
        assert_eq!(status, 400, "{file}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("keys folder")),
            "{v}"
        );
    }
    assert!(
        !outside.exists(),
        "a key file was written outside the keys folder"
    );
    let body = json!({"kind": "x25519", "file": "acme.key", "create": true}).to_string();
    let (status, v) = call(s.addr, "POST", path, &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(home.join("keys/acme.key").exists(), "{v}");
    s.task.abort();
}
