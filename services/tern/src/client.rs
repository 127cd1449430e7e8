//! The CLI's client of the daemon's HTTP JSON API.
//!
//! Every call returns the parsed JSON body, or [`ClientError::Api`] carrying the daemon's
//! `{"error": {"kind", "message"}}` so the CLI prints exactly what the daemon said.

use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error.
    #[error("{kind}: {message} (HTTP {status}){}", redirect.as_deref().map(Redirect::hint).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// The error kind (`not_found`, `invalid_input`, …).
        kind: String,
        /// The daemon's message.
        message: String,
        /// A write refused because another deployment holds the primary: where to go.
        redirect: Option<Box<Redirect>>,
        /// The daemon's whole error body (`{"error": {…}}`), for `--json`.
        body: Box<Value>,
    },
    /// The daemon could not be reached.
    #[error("cannot reach the daemon at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not JSON.
    #[error("the daemon at {url} answered HTTP {status} with something that is not JSON: {body}")]
    NotJson {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer was JSON, but not of the shape of its [`tern_api`] type (a field
    /// missing or of another type): never printed as blanks.
    #[error(
        "the daemon at {url} answered in an unexpected shape: {reason} (is this tern of another version than the daemon?)"
    )]
    Shape {
        /// The URL.
        url: String,
        /// What did not fit, naming the field.
        reason: String,
    },
    /// Input the CLI could not use.
    #[error("{0}")]
    Input(String),
    /// A `--wait` ended without the operation done: it failed, or the wait ran out.
    #[error("{0}")]
    Wait(String),
}

/// Where a refused write should go: the group's current primary (`error.redirect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The primary's deployment id.
    pub deployment: String,
    /// Its API URL, when it has published one.
    pub url: Option<String>,
    /// The group's epoch.
    pub epoch: u64,
}

impl Redirect {
    fn from_api(r: tern_api::Redirect) -> Self {
        Self {
            deployment: r.deployment,
            url: r.url,
            epoch: r.epoch,
        }
    }

    /// What an operator reads after the daemon's message.
    fn hint(&self) -> String {
        match &self.url {
            Some(url) => format!(
                "; the primary is now {} (epoch {}) at {url}: run it there (--url {url}), or name the connection (--connection) so the CLI finds the primary",
                self.deployment, self.epoch
            ),
            None => format!(
                "; the primary is now {} (epoch {}), which has not published its URL: run it on {}",
                self.deployment, self.epoch, self.deployment
            ),
        }
    }
}

/// The HTTP client every [`Client`] shares: the one [`configure_http`] made.
static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();

fn http() -> reqwest::Client {
    HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
    .clone()
}

/// How long connecting to a daemon may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sets up the HTTP client every [`Client`] shares: trust only the CA in `ca` (PEM) for
/// an `https://` daemon, present `cert` with `key` (PEM) when it asks for a client
/// certificate, give up on a request after `timeout`. Once, before the first [`Client`];
/// a file that cannot be read or used is an input error naming it.
pub fn configure_http(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    timeout: Option<std::time::Duration>,
) -> Result<(), ClientError> {
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ClientError::Input(format!("{flag} {}: {e}", p.display())))
    };
    let mut b = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if let Some(ca) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read("--ca", ca)?).map_err(|e| {
            ClientError::Input(format!("--ca {}: not PEM certificates: {e}", ca.display()))
        })?;
        if certs.is_empty() {
            return Err(ClientError::Input(format!(
                "--ca {}: holds no PEM certificate",
                ca.display()
            )));
        }
        b = b.tls_certs_only(certs);
    }
    match (cert, key) {
        (Some(c), Some(k)) => {
            let mut pem = read("--client-cert", c)?;
            pem.push(b'\n');
            pem.extend(read("--client-key", k)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ClientError::Input(format!(
                    "--client-cert {} / --client-key {}: {e}",
                    c.display(),
                    k.display()
                ))
            })?;
            b = b.identity(id);
        }
        (None, None) => {}
        _ => {
            return Err(ClientError::Input(
                "--client-cert and --client-key go together".into(),
            ));
        }
    }
    let client = b
        .build()
        .map_err(|e| ClientError::Input(format!("TLS settings: {e}")))?;
    HTTP.set(client)
        .map_err(|_| ClientError::Input("HTTP settings were already made".into()))
}

/// `name` as one URL path segment: every byte but ASCII letters, digits, `-`, `_`, `.`
/// and `~` percent-encoded, so a name can never add a segment, a query or a fragment.
/// `.` and `..` are refused (URLs resolve them as "here" and "up", whatever the escaping).
pub fn seg(name: &str) -> Result<String, ClientError> {
    if name == "." || name == ".." {
        return Err(ClientError::Input(format!(
            "name {name:?} cannot be sent in a URL path (names start with a letter or digit)"
        )));
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

/// A daemon's API at `base` with a token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    idempotency_key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the daemon at `base` (`http://127.0.0.1:7420`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            idempotency_key: None,
            http: http(),
        }
    }

    /// The same daemon, sending `key` as the `Idempotency-Key` of every request (writes
    /// that commit are applied once per key; other routes ignore it).
    pub fn with_idempotency_key(&self, key: Option<String>) -> Self {
        Self {
            idempotency_key: key,
            ..self.clone()
        }
    }

    /// The same daemon with another token.
    pub fn with_token(&self, token: Option<String>) -> Self {
        Self {
            token,
            ..self.clone()
        }
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, path, None, "application/json")
            .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(
            reqwest::Method::POST,
            path,
            Some(body.to_string().into()),
            "application/json",
        )
        .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::DELETE, path, None, "application/json")
            .await
    }

    /// `POST path` with raw bytes of `content_type`.
    pub async fn post_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, path, Some(body.into()), content_type)
            .await
    }

    /// `POST path` with a streamed body of `content_type` (a file being uploaded).
    pub async fn post_stream(
        &self,
        path: &str,
        body: reqwest::Body,
        content_type: &str,
    ) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, path, Some(body), content_type)
            .await
    }

    /// `GET path` as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        resp.text()
            .await
            .map_err(|source| ClientError::Connect { url, source })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
        content_type: &str,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = &self.idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| ClientError::NotJson {
            url: url.clone(),
            status,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string(),
        })?;
        if status >= 400 {
            return Err(api_error(status, v));
        }
        Ok(v)
    }

    /// `GET path`, answered as a `T`.
    pub async fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let v = self.get(path).await?;
        self.typed(path, v)
    }

    /// `POST path` with the JSON of `body`, answered as a `T`.
    pub async fn post_as<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ClientError::Input(format!("cannot encode the request: {e}")))?;
        let v = self.post(path, &body).await?;
        self.typed(path, v)
    }

    /// `DELETE path`, answered as a `T`.
    pub async fn delete_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let v = self.delete(path).await?;
        self.typed(path, v)
    }

    pub fn typed<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        v: Value,
    ) -> Result<T, ClientError> {
        serde_json::from_value(v).map_err(|e| ClientError::Shape {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })
    }
}

/// Receives a streamed scan's rows as they arrive ([`Client::scan`]).
pub trait RowSink: Send + 'static {
    /// The answer's members before its rows (`version`, `columns`, …).
    fn start(&mut self, head: &serde_json::Map<String, Value>);
    /// One row.
    fn row(&mut self, row: Value);
}

impl Client {
    /// `POST path` with `req` for a scan answered as one JSON document whose `rows` are
    /// handed to `sink` one at a time as they arrive (never held whole). Returns the
    /// document's other members; an `error` member (the scan failed after its answer
    /// started) is returned as [`ClientError::Api`].
    pub async fn scan<S: RowSink>(
        &self,
        path: &str,
        req: &Value,
        sink: S,
    ) -> Result<Value, ClientError> {
        let resp = self.send_raw(path, req).await?;
        let url = format!("{}{path}", self.base);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(8);
        let reader = tokio::task::spawn_blocking(move || read_document(rx, sink));
        let mut resp = resp;
        let mut failed = None;
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if tx.send(Ok(c)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    let _ = tx.send(Err(source.to_string())).await;
                    failed = Some(source);
                    break;
                }
            }
        }
        drop(tx);
        let parsed = reader
            .await
            .map_err(|e| ClientError::Input(format!("reading the answer: {e}")))?;
        let head = match (parsed, failed) {
            (Ok(head), _) => head,
            (Err(_), Some(source)) => return Err(ClientError::Connect { url, source }),
            (Err(e), None) => {
                return Err(ClientError::NotJson {
                    url,
                    status: 200,
                    body: e,
                });
            }
        };
        if let Some(e) = head.get("error") {
            return Err(api_error(200, serde_json::json!({ "error": e })));
        }
        Ok(Value::Object(head))
    }

    /// `POST path` with `req`, its answer's body copied to `out` as it arrives.
    pub async fn post_copy(
        &self,
        path: &str,
        req: &Value,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), ClientError> {
        let mut resp = self.send_raw(path, req).await?;
        let url = format!("{}{path}", self.base);
        while let Some(c) = resp.chunk().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })? {
            out.write_all(&c)
                .map_err(|e| ClientError::Input(format!("cannot write the answer: {e}")))?;
        }
        Ok(())
    }

    /// `POST path` with `req`: the response, its body unread, when its status is a
    /// success (an error answer is read and returned as [`ClientError::Api`]).
    pub(crate) async fn send_raw(
        &self,
        path: &str,
        req: &Value,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut r = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(req.to_string());
        if let Some(t) = &self.token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        let resp = r.send().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| ClientError::NotJson {
            url: url.clone(),
            status,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string(),
        })?;
        Err(api_error(status, v))
    }
}

/// The error a daemon answered with status `status` and body `v` ([`tern_api::ErrorBody`];
/// an error body of another shape, a proxy's, still fails with its status, its text and
/// what did not fit, naming the field). `v` is kept whole in the error as `Value`: it is
/// printed as it came for `--json`, whoever wrote it.
pub(crate) fn api_error(status: u16, v: Value) -> ClientError {
    let (kind, message, redirect) = match serde_json::from_value::<tern_api::ErrorBody>(v.clone()) {
        Ok(e) => (e.error.kind, e.error.message, e.error.redirect),
        Err(e) => (
            "unknown".to_string(),
            format!("{v} (not a tern error body: {e})"),
            None,
        ),
    };
    ClientError::Api {
        status,
        kind,
        message,
        redirect: redirect.map(|r| Box::new(Redirect::from_api(r))),
        body: Box::new(v),
    }
}

/// The chunks of a body as a blocking reader.
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Parse a scan document from `rx`, its rows handed to `sink` one by one.
fn read_document<S: RowSink>(
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    mut sink: S,
) -> Result<serde_json::Map<String, Value>, String> {
    use serde::de::DeserializeSeed as _;
    let reader = std::io::BufReader::new(Chunks {
        rx,
        current: bytes::Bytes::new(),
    });
    let mut de = serde_json::Deserializer::from_reader(reader);
    let head = Document(&mut sink)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    Ok(head)
}

struct Document<'a, S>(&'a mut S);

impl<'de, S: RowSink> serde::de::DeserializeSeed<'de> for Document<'_, S> {
    type Value = serde_json::Map<String, Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: RowSink> serde::de::Visitor<'de> for Document<'_, S> {
    type Value = serde_json::Map<String, Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a scan answer")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut head = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if k == "rows" {
                self.0.start(&head);
                map.next_value_seed(Rows(&mut *self.0))?;
            } else {
                let v: Value = map.next_value()?;
                head.insert(k, v);
            }
        }
        Ok(head)
    }
}

struct Rows<'a, S>(&'a mut S);

impl<'de, S: RowSink> serde::de::DeserializeSeed<'de> for Rows<'_, S> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: RowSink> serde::de::Visitor<'de> for Rows<'_, S> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of rows")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(row) = seq.next_element::<Value>()? {
            self.0.row(row);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one request with `{}` and returns the request's head, lower-cased.
    async fn one_request(client: impl FnOnce(String) -> Client) -> String {
        // As `main` does: reqwest takes rustls's process-wide provider.
        crate::install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            )
            .await
            .expect("answer");
            String::from_utf8_lossy(&head).to_ascii_lowercase()
        });
        client(url)
            .post("/v1/x", &serde_json::json!([]))
            .await
            .expect("call");
        server.await.expect("server")
    }

    #[tokio::test]
    async fn the_idempotency_key_goes_with_the_request() {
        let head =
            one_request(|url| Client::new(&url, None).with_idempotency_key(Some("order-1".into())))
                .await;
        assert!(head.contains("\r\nidempotency-key: order-1\r\n"), "{head}");
        let head = one_request(|url| Client::new(&url, None)).await;
        assert!(!head.contains("idempotency-key"), "{head}");
    }

    #[test]
    fn names_are_escaped_as_one_path_segment() {
        assert_eq!(seg("acme").expect("plain"), "acme");
        assert_eq!(seg("sales_copy-2.v~1").expect("plain"), "sales_copy-2.v~1");
        assert_eq!(seg("a/b").expect("slash"), "a%2Fb");
        assert_eq!(seg("x?y#z").expect("query"), "x%3Fy%23z");
        assert_eq!(seg("a b%").expect("space"), "a%20b%25");
        assert_eq!(seg("ü").expect("utf-8"), "%C3%BC");
        assert!(seg("..").is_err() && seg(".").is_err());
        // A name that looks like a route stays one segment.
        let path = format!(
            "/v1/accounts/{}/databases",
            seg("../../v1/status").expect("seg")
        );
        assert_eq!(path, "/v1/accounts/..%2F..%2Fv1%2Fstatus/databases");
    }
}
