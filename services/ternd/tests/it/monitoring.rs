//! The daemon's monitor end to end, ticked by the test: a threshold crossing becomes one
//! notification event (stored, logged, POSTed to the webhook with retries), staying over
//! raises nothing more, going back under clears it; history rows answer `GET /v1/monitor`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use ternd::daemon::Daemon;
use ternd::monitor::MonitorWorker;
use ternd::supervisor::Worker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::harness::{call, config, serve};

/// A webhook receiver that answers 500 to its first request and 200 after; every body it
/// got, in order.
async fn flaky_hook() -> (String, mpsc::UnboundedReceiver<(u16, Value)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            n += 1;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head and the Content-Length body.
            let body = loop {
                let k = s.read(&mut chunk).await.unwrap_or(0);
                if k == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body.to_string());
                    }
                }
            };
            let status = if n == 1 { 500 } else { 200 };
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await;
            if let Some(b) = body {
                let _ = tx.send((status, serde_json::from_str(&b).unwrap_or(Value::Null)));
            }
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_notifies_once_retries_the_webhook_and_clears() {
    let dir = tempfile::tempdir().expect("dir");
    let (url, mut hook) = flaky_hook().await;
    let mut cfg = config(&dir.path().join("d1"));
    cfg.monitor.rejections_per_interval = 0;
    cfg.monitor.webhook = Some(url);
    let d = Daemon::open(cfg).await.expect("open");
    let s = serve(Arc::clone(&d)).await;
    let mut m = MonitorWorker::new(Arc::downgrade(&d), Duration::from_secs(3600));
    let reject = |d: &Daemon| {
        d.replication
            .counters()
            .rejected
            .fetch_add(1, Ordering::Relaxed)
    };
    let tick = async |m: &mut MonitorWorker| {
        tokio::time::sleep(Duration::from_millis(5)).await;
        m.work().await.expect("tick");
    };
    tick(&mut m).await; // baseline
    reject(&d);
    tick(&mut m).await; // 1 rejection > 0: fired (webhook answers 500)
    reject(&d);
    tick(&mut m).await; // still over: nothing new
    tick(&mut m).await; // none in this interval: cleared
    let (st, v) = call(s.addr, "GET", "/v1/monitor/events?last=10", "").await;
    assert_eq!(st, 200, "{v}");
    let ev: Vec<(String, String)> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_string(),
                e["transition"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        ev,
        [
            ("rejections".to_string(), "fired".to_string()),
            ("rejections".to_string(), "cleared".to_string())
        ],
        "{v}"
    );
    assert_eq!(v["events"][0]["value"], 1.0);

    // The webhook: the fired event refused once (500), then its retry after the backoff
    // and the cleared event delivered.
    let (status, first) = hook.recv().await.expect("first delivery");
    assert_eq!((status, first["transition"].as_str()), (500, Some("fired")));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tick(&mut m).await;
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), hook.recv())
            .await
            .expect("a delivery")
            .expect("hook open");
        assert_eq!(status, 200);
        delivered.push((
            body["seq"].as_u64(),
            body["transition"].as_str().map(str::to_string),
        ));
    }
    delivered.sort();
    assert_eq!(
        delivered,
        [
            (Some(1), Some("fired".into())),
            (Some(2), Some("cleared".into()))
        ]
    );

    // History: one row per tick, oldest first, the alert firing only in the middle ones.
    let (st, v) = call(s.addr, "GET", "/v1/monitor?last=3", "").await;
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{v}");
    let intervals: Vec<u64> = rows.iter().filter_map(|r| r["interval"].as_u64()).collect();
    assert_eq!(intervals, [3, 4, 5]);
    assert_eq!(rows[0]["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(rows[1]["alerts"].as_array().map(Vec::len), Some(0));
    let (st, v) = call(s.addr, "GET", "/v1/monitor?last=0", "").await;
    assert_eq!(st, 400, "{v}");
    s.task.abort();
}
