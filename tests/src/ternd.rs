//! Running `ternd` as a child process on a free port, and a minimal HTTP/1.1 client for
//! its JSON API (std only: one request per connection).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The operator token every test deployment uses.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// A deployment's files under one folder: `<dir>/<id>/{meta.db,volume,replication,keys}`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The deployment id.
    pub id: String,
    /// Its home folder.
    pub home: PathBuf,
}

impl Layout {
    /// The layout of `id` under `dir`.
    pub fn new(dir: &Path, id: &str) -> Self {
        Self {
            id: id.to_string(),
            home: dir.join(id),
        }
    }

    /// A config file for this deployment on local folders, with `extra` TOML appended.
    pub fn config(&self, extra: &str) -> String {
        let h = self.home.display();
        format!(
            r#"deployment_id = "{id}"
listen = "127.0.0.1:0"
metadata_path = "{h}/meta.db"
operator_token = "{OPERATOR_TOKEN}"
[volume]
url = "file://{h}/volume"
[replication]
url = "file://{h}/replication"
[keys]
kind = "local"
dir = "{h}/keys"
[log]
format = "json"
level = "info"
{extra}
"#,
            id = self.id
        )
    }

    /// Writes `config` to `<home>.toml` and returns its path.
    pub fn write_config(&self, config: &str) -> PathBuf {
        let path = self.home.with_extension("toml");
        std::fs::create_dir_all(self.home.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, config).expect("write config");
        path
    }
}

/// A running `ternd`.
#[derive(Debug)]
pub struct Ternd {
    /// The child process.
    pub child: Child,
    /// `127.0.0.1:port` of its API.
    pub addr: String,
    /// Where its stderr (logs) goes.
    pub log: PathBuf,
}

impl Ternd {
    /// `ternd --config <config>` with `env`, its stderr to a log file; the file it
    /// writes its address to once it serves.
    fn spawn(config: &Path, env: &[(&str, &str)]) -> (Child, PathBuf, PathBuf) {
        let ready = config.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let log = config.with_extension(format!("{}.log", unique()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(crate::binary("ternd"));
        cmd.arg("--config")
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("spawn ternd"), ready, log)
    }

    /// Starts `ternd` with `TERN_CRASH_AT=<point>` (and `env`) and waits, at most
    /// `limit`, for it to reach the point and kill itself there (served or not yet).
    /// Its log; panics when it exits for another reason or not at all.
    pub fn run_to_crash(
        config: &Path,
        env: &[(&str, &str)],
        point: &str,
        limit: Duration,
    ) -> String {
        let env: Vec<(&str, &str)> = env
            .iter()
            .copied()
            .chain([("TERN_CRASH_AT", point)])
            .collect();
        let (mut child, _, log) = Self::spawn(config, &env);
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ternd did not reach crash point {point} within {limit:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        let name = point.split(':').next().unwrap_or(point);
        assert!(
            !status.success() && logs.contains("crash point reached") && logs.contains(name),
            "ternd was to kill itself at {point}; it exited {status}: {logs}"
        );
        logs
    }

    /// Starts `ternd --config <config>` with `env` and waits until it serves.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Ternd {
        let (mut child, ready, log) = Self::spawn(config, env);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&ready)
                && !addr.is_empty()
            {
                return Ternd { child, addr, log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ternd exited ({status}) before serving: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "ternd did not start in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A request with the operator token.
    pub fn op(&self, method: &str, path: &str, body: &str) -> Response {
        request(
            &self.addr,
            method,
            path,
            Some(OPERATOR_TOKEN),
            "application/json",
            body.as_bytes(),
        )
    }

    /// SIGTERM, then wait for the exit (at most 60 s).
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        wait_exit(&mut self.child, Duration::from_secs(60))
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ternd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Waits for `child` to exit.
pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The error kind and message of an error response.
    pub fn error(&self) -> (String, String) {
        let v = self.json();
        (
            v["error"]["kind"].as_str().unwrap_or_default().to_string(),
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

/// One HTTP/1.1 request (`Connection: close`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Response {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Response {
            status: 0,
            body: String::new(),
        };
    };
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) and close before the whole body is sent.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        // No answer (the server died): status 0.
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
