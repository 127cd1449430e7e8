//! The in-process daemon the tests talk to: opened on a temporary folder, its router
//! served on a loopback port, requests over plain HTTP/1.1 with the operator's token.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use ternd::config::Config;
use ternd::daemon::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const OPERATOR: &str = "operator-secret-for-tests";
pub const TBL: &str = "/v1/accounts/acme/databases/sales/schemas/public/tables/orders";

pub fn config(home: &Path) -> Config {
    config_with(home, "")
}

/// [`config`] with `extra` TOML appended (tables such as `[api]`, `[[peers]]`, `[workers]`).
pub fn config_with(home: &Path, extra: &str) -> Config {
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
{extra}
"#
    );
    let path = home.join("d1.toml");
    std::fs::create_dir_all(home).expect("home");
    std::fs::write(&path, text).expect("config");
    Config::load(Some(&path), std::iter::empty()).expect("valid config")
}

/// A daemon's router served on a loopback port until the returned handle is aborted.
pub struct Served {
    pub addr: std::net::SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn serve(d: Arc<Daemon>) -> Served {
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
pub async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let r = call_with(addr, method, path, body, &[]).await;
    (r.status, r.body)
}

/// An answer: its status, its head (status line and headers, lower-cased) and JSON body.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Value,
}

/// One request with extra `headers` (name, value).
pub async fn call_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    call_as(addr, Some(OPERATOR), method, path, body, headers).await
}

/// One request with `token` (none: no Authorization header) and extra `headers`.
pub async fn call_as(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    if let Some(t) = token {
        extra.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    parse_reply(&raw)
}

/// The status, head and JSON body (or `{"text": …}` for a body that is not JSON) of a
/// raw HTTP/1.1 answer.
pub fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("response head");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    // Bodies are JSON, sent whole or chunked (scans stream).
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let json = match (rest.find(['{', '[']), rest.rfind(['}', ']'])) {
        (Some(a), Some(b)) if head.to_ascii_lowercase().contains("application/json") => {
            serde_json::from_str(&rest[a..=b]).expect("JSON body")
        }
        (Some(a), Some(b)) => serde_json::from_str(&rest[a..=b])
            .unwrap_or_else(|_| serde_json::json!({ "text": rest })),
        _ => serde_json::json!({ "text": rest }),
    };
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: json,
    }
}

/// One request whose answer is bytes (not JSON): its status, its head (lower-cased) and
/// its body, de-chunked.
pub async fn call_bytes(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let mut rest = &raw[end + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (status, head, rest.to_vec());
    }
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
        rest = &rest[eol + 2 + n..];
        rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
    }
    (status, head, out)
}

/// The payload of a chunked body: each chunk is `<hex size>\r\n<data>\r\n`, the last of
/// size 0.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n..];
        body = body.strip_prefix("\r\n").unwrap_or(body);
    }
    out
}

pub fn ids(scan: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = scan["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids
}

/// Account `acme`, database `sales` and table `orders (id int64 not null)`.
pub async fn create_orders(addr: std::net::SocketAddr) {
    for (path, body) in [
        ("/v1/accounts", r#"{"name":"acme"}"#),
        ("/v1/accounts/acme/databases", r#"{"name":"sales"}"#),
        (
            "/v1/accounts/acme/databases/sales/schemas/public/tables",
            r#"{"name":"orders","columns":[{"name":"id","type":"int64","nullable":false}]}"#,
        ),
    ] {
        let (status, v) = call(addr, "POST", path, body).await;
        assert_eq!(status, 201, "{path}: {v}");
    }
}
