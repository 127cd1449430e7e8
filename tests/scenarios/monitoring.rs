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
