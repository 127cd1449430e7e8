//! Apply monitoring on two real `ternd` processes: the replica's monitor counts the
//! transactions its apply agents commit (history, `tern monitor`, `/metrics` from the last
//! snapshot), and the `/ui` status page, loaded in a real headless Chromium, shows the live
//! figures and its chart moves as new transactions are applied.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tern_scenarios::ternd::{OPERATOR_TOKEN, Ternd, request};
use tungstenite::{Message, WebSocket};

use crate::replication::{
    PRIMARY, create_replica, primary, replica_table_in, rows_json, scan_all, two_with, wait_until,
};

const WAIT: Duration = Duration::from_secs(60);

/// The Chromium to drive: `TERN_CHROMIUM`, or Debian's `/usr/bin/chromium` (`.ci/run`
/// installs it). Missing is a failure, never a skip.
fn chromium_path() -> String {
    let p = std::env::var("TERN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&p).exists(),
        "{p} not found: install Chromium (apt-get install -y chromium) or set TERN_CHROMIUM"
    );
    p
}

/// A headless Chromium and a DevTools connection to its page.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile");
        let mut child = Command::new(chromium_path())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("chromium ended before listening")
                .expect("read chromium stderr");
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().expect("port").to_string();
            }
        };
        // Keep draining its stderr so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = format!("127.0.0.1:{port}");
        let targets = wait_until("chromium's page target", WAIT, || {
            let r = request(&addr, "GET", "/json/list", None, "application/json", b"");
            let v: Value = serde_json::from_str(&r.body).ok()?;
            v.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
        });
        let stream = TcpStream::connect(&addr).expect("connect devtools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let (ws, _) = tungstenite::client(targets.as_str(), stream).expect("devtools handshake");
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 1,
        }
    }

    /// One DevTools command; its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .expect("send devtools command");
        loop {
            let m = self.ws.read().expect("read devtools");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("devtools json");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page; the page's state when it is not.
    fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.eval(expression) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let state = self.eval("document.body.dataset.status + ' / ' + document.getElementById('status').textContent + ' / ' + document.body.innerText.slice(0, 2000)");
                panic!("the page never showed {what}: {state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn applied(d: &Ternd) -> u64 {
    let v = d.op("GET", "/v1/monitor?last=1", "").json();
    v["rows"][0]["agents"]["apply"]["cumulative"]["units"]
        .as_u64()
        .unwrap_or(0)
}

fn insert(d1: &Ternd, from: i64, to: i64) {
    let r = d1.op("POST", &format!("{PRIMARY}/rows"), &rows_json(from, to));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn ternd_status_page_shows_live_replication_figures_in_a_real_browser() {
    chromium_path();
    let env = [("TERN_WORKERS__MONITOR_INTERVAL", "200ms")];
    let t = two_with(&env, "");
    let group = primary(&t.d1, &t.d2, 1, 10);
    create_replica(&t.d2, &group);
    let table = wait_until("d2 has its replica", WAIT, || {
        let tbl = replica_table_in(&t.d2, "a2")?;
        (scan_all(&t.d2, &tbl)?.len() == 10).then_some(tbl)
    });
    insert(&t.d1, 100, 105);
    insert(&t.d1, 105, 110);
    wait_until(
        "d2's monitor to count two applied transactions",
        WAIT,
        || (applied(&t.d2) >= 2).then_some(()),
    );

    // The history as `tern monitor --json` reads it, and its table with sparklines.
    let v = t.d2.op("GET", "/v1/monitor?last=5", "").json();
    let rows = v["rows"].as_array().expect("rows");
    assert!(!rows.is_empty() && rows.len() <= 5, "{v}");
    let last = &rows[rows.len() - 1];
    assert_eq!(last["replicas"][0]["database"], "sales_replica", "{last}");
    assert!(last["agents"]["apply"]["cumulative"]["latency_count"].as_u64() >= Some(2));
    let out = Command::new(tern_scenarios::binary("tern"))
        .args([
            "--url",
            &t.d2.url(),
            "--token",
            OPERATOR_TOKEN,
            "monitor",
            "--last",
            "5",
        ])
        .output()
        .expect("run tern monitor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("txn/s") && text.contains("lat max ms"),
        "{text}"
    );
    assert!(
        text.chars().any(|c| ('▁'..='█').contains(&c)),
        "sparklines: {text}"
    );

    // /metrics is the monitor's snapshot: apply figures, and how old they are.
    let m = request(&t.d2.addr, "GET", "/metrics", None, "text/plain", b"");
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("tern_agent_units_total{kind=\"apply\"}"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("tern_monitor_snapshot_age_seconds"),
        "{}",
        m.body
    );
    // The Grafana dashboard and the Prometheus rules use only figures ternd exports.
    for file in ["grafana-dashboard.json", "alerts.yml"] {
        let path = format!("{}/../infra/monitoring/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("infra/monitoring file");
        let mut names: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tern_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 8, "{file}: {names:?}");
        for n in names {
            assert!(
                m.body.contains(&format!("# TYPE {n} ")),
                "{file} uses {n}, which /metrics does not export"
            );
        }
    }

    // The page needs the operator's token, like the API.
    let r = request(&t.d2.addr, "GET", "/ui", None, "text/html", b"");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = request(
        &t.d2.addr,
        "GET",
        "/ui?token=wrong-token-0123456789",
        None,
        "text/html",
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = request(
        &t.d2.addr,
        "GET",
        "/ui",
        Some(OPERATOR_TOKEN),
        "text/html",
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("src=\"http") && !r.body.contains("href=\"http"),
        "no external assets"
    );

    // A real browser: logs in with ?token=, is redirected, polls /ui/data with its cookie.
    let mut b = Browser::start();
    b.call("Page.enable", json!({}));
    b.call(
        "Page.navigate",
        json!({"url": format!("{}/ui?token={OPERATOR_TOKEN}", t.d2.url())}),
    );
    b.wait_for("its first figures", "document.body.dataset.status === 'ok'");
    assert_eq!(
        b.eval("location.pathname"),
        json!("/ui"),
        "the token left the address"
    );
    assert_eq!(
        b.eval("document.getElementById('deployment').textContent"),
        json!("d2")
    );
    b.wait_for(
        "d1 available, the replica and its group",
        "(() => { const t = (id) => document.getElementById(id).innerText; \
         return /d1\\s+r-d1\\s+.*available/.test(t('deployments')) \
           && t('replicas').includes('sales_replica') && t('replicas').includes('d1') \
           && t('groups').includes('secondary') && t('groups').includes('hub'); })()",
    );
    b.wait_for(
        "the applied transactions and a chart",
        "Number(document.getElementById('applied-total').dataset.value) >= 2 \
         && Number(document.getElementById('chart-throughput').dataset.points) >= 2 \
         && document.querySelector('#chart-throughput polyline') !== null",
    );
    let before_applied = b
        .eval("Number(document.getElementById('applied-total').dataset.value)")
        .as_u64()
        .expect("applied");
    let before_at = b
        .eval("Number(document.getElementById('chart-throughput').dataset.lastAt)")
        .as_f64()
        .expect("last point");
    let before_updates = b
        .eval("Number(document.body.dataset.updates)")
        .as_u64()
        .expect("updates");

    // New transactions on the primary: the open page follows without a reload.
    insert(&t.d1, 110, 120);
    insert(&t.d1, 120, 130);
    insert(&t.d1, 130, 140);
    b.wait_for(
        "the new transactions",
        &format!(
            "Number(document.getElementById('applied-total').dataset.value) >= {} \
             && Number(document.getElementById('chart-throughput').dataset.lastAt) > {before_at} \
             && Number(document.body.dataset.updates) > {before_updates}",
            before_applied + 3
        ),
    );
    // The chart saw throughput above zero at some point, and the page never reloaded.
    let points =
        b.eval("document.querySelector('#chart-throughput polyline').getAttribute('points')");
    assert!(
        points.as_str().is_some_and(|p| p.split(' ').count() >= 2),
        "{points}"
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('navigation').length"),
        json!(1)
    );
    assert_eq!(scan_all(&t.d2, &table).map(|r| r.len()), Some(50));
}

/// A webhook receiver on a loopback port answering 200; the JSON bodies it got.
fn webhook() -> (String, std::sync::mpsc::Receiver<Value>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(k) = s.read(&mut chunk) else {
                    break None;
                };
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
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Some(b) = body
                && tx
                    .send(serde_json::from_str(&b).unwrap_or(Value::Null))
                    .is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}

/// `(kind, subject, transition)` of d's notification events of `kind`.
fn events_of(d: &Ternd, kind: &str) -> Vec<(String, String, String)> {
    let v = d.op("GET", "/v1/monitor/events?last=1000", "").json();
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (f("kind"), f("subject"), f("transition"))
        })
        .collect()
}

/// d's monitor intervals so far.
fn intervals(d: &Ternd) -> u64 {
    let v = d.op("GET", "/v1/monitor?last=1", "").json();
    v["rows"][0]["interval"].as_u64().unwrap_or(0)
}

/// A replica's lag past its group's RPO on real processes: the primary's deployment is
/// killed (the fault), its silence becomes the replica's lag, which crosses the RPO
/// (`monitor.default_rpo` 3 s) — one "fired" event, stored and POSTed, however many ticks
/// it stays over; the primary restarted, heartbeats bring the lag back under — one
/// "cleared".
#[test]
fn a_replica_lagging_past_its_rpo_notifies_once_and_clears_when_the_primary_is_back() {
    let (url, hook) = webhook();
    let env = [
        ("TERN_WORKERS__MONITOR_INTERVAL", "200ms"),
        ("TERN_MONITOR__DEFAULT_RPO", "3s"),
        ("TERN_MONITOR__WEBHOOK", url.as_str()),
    ];
    let t = two_with(
        &env,
        "heartbeat_interval = \"300ms\"\nunavailable_after = \"1s\"\n",
    );
    let group = primary(&t.d1, &t.d2, 1, 10);
    create_replica(&t.d2, &group);
    wait_until("d2 has its replica", WAIT, || {
        let tbl = replica_table_in(&t.d2, "a2")?;
        (scan_all(&t.d2, &tbl)?.len() == 10).then_some(())
    });
    let subject = "replica sales_replica".to_string();
    let lag = (
        "lag_over_rpo".to_string(),
        subject.clone(),
        "fired".to_string(),
    );
    // Caught up, no lag alert firing (the replica's first copy may have crossed and come
    // back under already: those events are its own, not this test's).
    let firing_lag = |d: &Ternd| {
        let v = d.op("GET", "/v1/monitor?last=1", "").json();
        v["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["kind"] == "lag_over_rpo")
            .cloned()
    };
    wait_until("no lag alert firing", WAIT, || {
        firing_lag(&t.d2).is_none().then_some(())
    });
    let n0 = events_of(&t.d2, "lag_over_rpo").len();
    let since = |d: &Ternd| events_of(d, "lag_over_rpo").split_off(n0);

    // The fault: d1 is gone; d2's lag grows with the silence past the 3 s RPO.
    let crate::replication::Two {
        dir: _dir,
        c1,
        d1,
        d2,
        ..
    } = t;
    d1.kill9();
    wait_until("the lag alert", WAIT, || {
        (!since(&d2).is_empty()).then_some(())
    });
    // Still over for five more intervals: nothing more.
    let at = intervals(&d2);
    wait_until("five more monitor intervals", WAIT, || {
        (intervals(&d2) >= at + 5).then_some(())
    });
    assert_eq!(since(&d2), std::slice::from_ref(&lag));
    let firing = firing_lag(&d2).expect("the lag alert firing");
    assert!(firing["value"].as_f64() > Some(3.0), "{firing}");
    // The CLI shows both, through the typed answers: the alert firing under the history,
    // the event in the events table.
    let tern = |args: &[&str]| {
        let out = Command::new(tern_scenarios::binary("tern"))
            .args(["--url", &d2.url(), "--token", OPERATOR_TOKEN])
            .args(args)
            .output()
            .expect("run tern monitor");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = tern(&["monitor", "--last", "1"]);
    assert!(
        text.contains("alerts firing:") && text.contains("lag_over_rpo replica sales_replica:"),
        "{text}"
    );
    let text = tern(&["monitor", "--events", "--last", "1000"]);
    assert!(
        text.lines().any(|l| l.contains("lag_over_rpo")
            && l.contains("replica sales_replica")
            && l.contains("fired")),
        "{text}"
    );

    // The fault ends: d1 back, its heartbeats reach d2, the lag drops under the RPO.
    let d1 = Ternd::start(&c1, &env);
    wait_until("the lag alert cleared", WAIT, || {
        (since(&d2).len() >= 2).then_some(())
    });
    let cleared = ("lag_over_rpo".to_string(), subject, "cleared".to_string());
    assert_eq!(since(&d2), [lag, cleared]);
    // The webhook got each once, in order (other alerts — d1's channel not draining while
    // it was down — are posted too; the first `n0` lag events were the copy's).
    let mut posted = Vec::new();
    while posted.len() < n0 + 2 {
        let e = hook.recv_timeout(WAIT).expect("a webhook delivery");
        if e["kind"] == "lag_over_rpo" {
            posted.push(e["transition"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(posted[n0..], ["fired", "cleared"]);
    drop(d1);
}
