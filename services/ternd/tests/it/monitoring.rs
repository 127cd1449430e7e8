//! The daemon's monitor end to end, ticked by the test on a `ManualClock`: a threshold
//! crossing becomes one notification event (stored, logged, POSTed to the webhook with
//! retries), staying over raises nothing more, going back under clears it; history rows
//! answer `GET /v1/monitor`. The faults are real: a peer's bucket folder swapped for a file
//! (its channel's queue stops draining), a crash point failing a worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tern_clock::{Clock, ManualClock, SystemClock};
use tern_meta::DeploymentDpo;
use tern_storage::layout::DeploymentId;
use ternd::daemon::Daemon;
use ternd::monitor::MonitorWorker;
use ternd::supervisor::{RunState, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::harness::{call, config, config_with, serve};

/// A clock standing at the real time now, moved only by the test.
fn manual_clock() -> ManualClock {
    ManualClock::new(SystemClock.now_millis())
}

/// One monitor tick, 100 ms of (manual) time after the last.
async fn tick(clock: &ManualClock, m: &mut MonitorWorker) {
    clock.advance(Duration::from_millis(100));
    m.work().await.expect("tick");
}

/// `(kind, subject, transition)` of the events `GET /v1/monitor/events` lists.
async fn events(addr: std::net::SocketAddr) -> Vec<(String, String, String)> {
    let (st, v) = call(addr, "GET", "/v1/monitor/events?last=100", "").await;
    assert_eq!(st, 200, "{v}");
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (f("kind"), f("subject"), f("transition"))
        })
        .collect()
}

/// Polls `what` until it holds (the condition must come: a limit, never an either-way
/// sleep).
async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A webhook receiver that answers 500 to its first `fail_first` requests and 200 after;
/// every body it got, in order.
async fn hook(fail_first: usize) -> (String, mpsc::UnboundedReceiver<(u16, Value)>) {
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
            let status = if n <= fail_first { 500 } else { 200 };
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
    let (url, mut hook) = hook(1).await;
    let mut cfg = config(&dir.path().join("d1"));
    cfg.monitor.rejections_per_interval = 0;
    cfg.monitor.webhook = Some(url);
    let clock = manual_clock();
    let d = Daemon::open_with(cfg, Default::default(), clock.shared())
        .await
        .expect("open");
    let s = serve(Arc::clone(&d)).await;
    let mut m = MonitorWorker::new(Arc::downgrade(&d), Duration::from_secs(3600));
    let reject = |d: &Daemon| {
        d.replication
            .counters()
            .rejected
            .fetch_add(1, Ordering::Relaxed)
    };
    tick(&clock, &mut m).await; // baseline
    reject(&d);
    tick(&clock, &mut m).await; // 1 rejection > 0: fired (webhook answers 500)
    reject(&d);
    tick(&clock, &mut m).await; // still over: nothing new
    tick(&clock, &mut m).await; // none in this interval: cleared
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

    // The webhook: the fired event refused once (500) at 0.2 s, the cleared one delivered
    // at 0.4 s; the fired one waits for its backoff (1 s on the daemon's clock): not retried
    // at 1.199 s, retried at 1.2 s.
    let (status, first) = hook.recv().await.expect("first delivery");
    assert_eq!((status, first["transition"].as_str()), (500, Some("fired")));
    let (status, cleared) = hook.recv().await.expect("cleared delivery");
    assert_eq!(
        (
            status,
            cleared["seq"].as_u64(),
            cleared["transition"].as_str()
        ),
        (200, Some(2), Some("cleared"))
    );
    clock.advance(Duration::from_millis(799));
    m.work().await.expect("tick at 1.199 s");
    let pending = d
        .meta
        .read(|tx| tx.scan_prefix::<ternd::monitor::HookRow>(&tern_meta::Key::root("mon").str("k")))
        .expect("hook rows");
    assert_eq!(pending.len(), 1, "the fired event still waits: {pending:?}");
    assert_eq!(pending[0].1.attempts, 1);
    clock.advance(Duration::from_millis(1));
    m.work().await.expect("tick at 1.2 s");
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), hook.recv())
        .await
        .expect("the retry")
        .expect("hook open");
    assert_eq!(
        (status, body["seq"].as_u64(), body["transition"].as_str()),
        (200, Some(1), Some("fired"))
    );

    // History: one row per tick, oldest first, the alert firing only in the middle ones.
    let (st, v) = call(s.addr, "GET", "/v1/monitor?last=4", "").await;
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{v}");
    let intervals: Vec<u64> = rows.iter().filter_map(|r| r["interval"].as_u64()).collect();
    assert_eq!(intervals, [3, 4, 5, 6]);
    assert_eq!(rows[0]["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(rows[1]["alerts"].as_array().map(Vec::len), Some(0));
    let (st, v) = call(s.addr, "GET", "/v1/monitor?last=0", "").await;
    assert_eq!(st, 400, "{v}");
    s.task.abort();
}

/// A deployment of the group for `create_deployment` (its bucket from `[[peers]]`).
fn member(id: &str) -> DeploymentDpo {
    DeploymentDpo {
        id: DeploymentId::new(id).expect("id"),
        region: "local".into(),
        cloud: "local".into(),
        replication_bucket_url: String::new(),
        credentials_ref: None,
        added_at_ms: 0,
    }
}

/// `[[peers]]` d2 and d3 with buckets under `dir`, and a short worker backoff.
fn peers_toml(dir: &std::path::Path) -> String {
    let mut t = String::from("[workers]\nerror_backoff = \"20ms\"\n");
    for p in ["d2", "d3"] {
        t.push_str(&format!(
            "[[peers]]\nid = \"{p}\"\nbucket = {{ url = \"file://{}\" }}\n",
            dir.join(p).display()
        ));
    }
    t
}

/// The channel queue depths measured now: `(peer, direction, state) → depth`.
async fn depths(d: &Daemon) -> std::collections::BTreeMap<(String, String, String), u64> {
    d.queue_depths()
        .await
        .expect("depths")
        .into_iter()
        .map(|q| {
            (
                (q.peer, q.direction.name().to_string(), q.state.to_string()),
                q.depth,
            )
        })
        .collect()
}

fn out_total(q: &std::collections::BTreeMap<(String, String, String), u64>, peer: &str) -> u64 {
    q.iter()
        .filter(|((p, dir, _), _)| p == peer && dir == "out")
        .map(|(_, n)| n)
        .sum()
}

/// A figure of the snapshot's Prometheus text, by its full series name.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_s_queue_grows_alone_fires_once_and_clears_when_it_drains() {
    let dir = tempfile::tempdir().expect("dir");
    let (url, mut hook) = hook(0).await;
    let mut cfg = config_with(&dir.path().join("d1"), &peers_toml(dir.path()));
    cfg.monitor.queue_stuck_intervals = 2;
    cfg.monitor.webhook = Some(url);
    let clock = manual_clock();
    let d = Daemon::open_with(cfg, Default::default(), clock.shared())
        .await
        .expect("open");
    let s = serve(Arc::clone(&d)).await;
    // The fault: d2's bucket folder becomes a file, so nothing can be written to it.
    let b2 = dir.path().join("d2");
    std::fs::remove_dir_all(&b2).expect("rm d2 bucket");
    std::fs::write(&b2, b"not a folder").expect("d2 bucket as a file");
    d.create_deployment(member("d2"), None).await.expect("d2");
    d.create_deployment(member("d3"), None).await.expect("d3");
    // d2's sender claimed a file and failed to write it (so no further claim takes
    // messages from its ready queue); d3's sent everything.
    wait_for("d2's first file failed, d3 drained", async || {
        let q = depths(&d).await;
        let d2_failed = d
            .supervisor
            .reports()
            .iter()
            .any(|r| r.name.starts_with("sender") && r.name.contains("d2") && r.errors > 0);
        d2_failed
            && q.get(&("d2".into(), "out".into(), "Sending".into())) >= Some(&1)
            && out_total(&q, "d3") == 0
    })
    .await;
    let mut m = MonitorWorker::new(Arc::downgrade(&d), Duration::from_secs(3600));
    let ready = |d: &Daemon| {
        let row = d.monitor.last().expect("snapshot").row.clone();
        let depth = |peer: &str, state: &str| {
            row.channels
                .iter()
                .find(|c| c.peer == peer && c.direction == "out" && c.state == state)
                .map(|c| c.depth)
        };
        (depth("d2", "ReadyToSend"), depth("d3", "ReadyToSend"))
    };
    let mut seen = Vec::new();
    for i in 0..3 {
        if i < 2 {
            d.broadcast("tern.group").await.expect("broadcast");
        }
        wait_for("d3 drained", async || {
            out_total(&depths(&d).await, "d3") == 0
        })
        .await;
        tick(&clock, &mut m).await;
        seen.push(ready(&d));
        if i == 0 {
            assert!(events(s.addr).await.is_empty(), "stuck for 1 interval of 2");
        }
    }
    // d2's queue grew by one per broadcast and stayed; d3's stayed at 0.
    let (a, b, c) = (seen[0].0.expect("d2"), seen[1].0, seen[2].0);
    assert!(a >= 1, "{seen:?}");
    assert_eq!((b, c), (Some(a + 1), Some(a + 1)), "{seen:?}");
    assert!(seen.iter().all(|s| s.1 == Some(0)), "{seen:?}");
    // /metrics (the snapshot) carries the per-channel depths.
    let metrics = d.monitor.last().expect("snapshot").metrics.clone();
    assert_eq!(
        sample(
            &metrics,
            r#"tern_channel_queue_depth{peer="d2",direction="out",state="ReadyToSend"}"#
        ),
        Some((a + 1) as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tern_channel_queue_depth{peer="d3",direction="out",state="ReadyToSend"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tern_job_queue_depth{peer="d2",kind="import",state="waiting"}"#
        ),
        Some(0.0),
        "{metrics}"
    );
    // Fired once per stuck queue of d2 (at the 2nd tick), nothing more at the 3rd.
    let fired = [
        (
            "queue_not_draining".to_string(),
            "messages out/ReadyToSend d2".to_string(),
            "fired".to_string(),
        ),
        (
            "queue_not_draining".to_string(),
            "messages out/Sending d2".to_string(),
            "fired".to_string(),
        ),
    ];
    assert_eq!(events(s.addr).await, fired);

    // The fault ends: d2's folder is back, the sender drains its queue.
    std::fs::remove_file(&b2).expect("rm file");
    std::fs::create_dir_all(&b2).expect("d2 bucket");
    wait_for("d2 drained", async || {
        out_total(&depths(&d).await, "d2") == 0
    })
    .await;
    tick(&clock, &mut m).await;
    assert_eq!(ready(&d), (Some(0), Some(0)));
    tick(&clock, &mut m).await;
    let mut expected = fired.to_vec();
    for (k, s, _) in fired {
        expected.push((k, s, "cleared".into()));
    }
    assert_eq!(events(s.addr).await, expected);
    // The webhook got each event once.
    let mut posted = Vec::new();
    while posted.len() < 4 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), hook.recv())
            .await
            .expect("a delivery")
            .expect("hook open");
        assert_eq!(status, 200);
        posted.push((
            body["subject"].as_str().unwrap_or("").to_string(),
            body["transition"].as_str().unwrap_or("").to_string(),
        ));
    }
    posted.sort();
    assert_eq!(
        posted,
        [
            ("messages out/ReadyToSend d2".into(), "cleared".into()),
            ("messages out/ReadyToSend d2".into(), "fired".into()),
            ("messages out/Sending d2".into(), "cleared".into()),
            ("messages out/Sending d2".into(), "fired".into()),
        ]
    );
    assert!(hook.try_recv().is_err(), "nothing posted twice");
    s.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_failed_by_a_crash_point_fires_once_and_clears_after_the_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let home = dir.path().join("d1");
    let clock = manual_clock();
    let cfg = config_with(&home, &peers_toml(dir.path()));
    // The fault: d3's sender reaches a crash point at its first batch and fails (in this
    // process the point only fails the worker; TERN_CRASH_AT would kill the process).
    let armed = ternd::crash::Armed::default();
    armed
        .messaging
        .arm(tern_messaging::crash::points::BATCH_CLAIMED);
    let d = Daemon::open_with(cfg.clone(), armed, clock.shared())
        .await
        .expect("open");
    d.create_deployment(member("d3"), None).await.expect("d3");
    wait_for("d3's sender failed", async || {
        d.supervisor
            .reports()
            .iter()
            .any(|r| r.name.starts_with("sender") && r.state == RunState::Failed)
    })
    .await;
    let name = d
        .supervisor
        .reports()
        .into_iter()
        .find(|r| r.state == RunState::Failed)
        .expect("failed worker")
        .name;
    let subject = format!("worker {name}");
    let mut m = MonitorWorker::new(Arc::downgrade(&d), Duration::from_secs(3600));
    tick(&clock, &mut m).await;
    tick(&clock, &mut m).await;
    let s = serve(Arc::clone(&d)).await;
    let fired = (
        "worker_down".to_string(),
        subject.clone(),
        "fired".to_string(),
    );
    assert_eq!(events(s.addr).await, std::slice::from_ref(&fired));
    let metrics = d.monitor.last().expect("snapshot").metrics.clone();
    assert!(
        metrics.contains(&format!(
            "tern_alert_firing{{alert=\"worker_down\",subject=\"{subject}\"}} 1"
        )),
        "{metrics}"
    );
    s.task.abort();
    d.shutdown().await.expect("shutdown");
    drop((m, d));

    // The fault ends with the restart (nothing armed; workers are not started here so that
    // the test's monitor is the only one): the new monitor takes up the alert the last run
    // left firing and clears it — once.
    let d = Daemon::open_with(cfg, Default::default(), clock.shared())
        .await
        .expect("reopen");
    let mut m = MonitorWorker::new(Arc::downgrade(&d), Duration::from_secs(3600));
    tick(&clock, &mut m).await;
    tick(&clock, &mut m).await;
    let s = serve(Arc::clone(&d)).await;
    let evs = events(s.addr).await;
    let mine: Vec<_> = evs.iter().filter(|e| e.1 == subject).cloned().collect();
    assert_eq!(
        mine,
        [
            fired,
            ("worker_down".into(), subject.clone(), "cleared".into())
        ],
        "{evs:?}"
    );
    assert!(
        d.supervisor
            .reports()
            .iter()
            .all(|r| r.state != RunState::Failed),
        "no worker failed in the new run"
    );
    s.task.abort();
    d.shutdown().await.expect("shutdown");
}
