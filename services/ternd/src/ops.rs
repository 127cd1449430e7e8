//! What operators and their load balancers see of the API besides its resources: the
//! probes, who may read `/metrics` and what it names, and the request limits.
//!
//! * `GET /healthz` (liveness): 200 `{"status":"ok"}` while serving; 503
//!   `{"status":"stopping"}` from the shutdown signal on. For `api.drain_period` after the
//!   signal every other request is still served, so a load balancer that polls the probe
//!   takes the deployment out before requests are refused; then the listener closes and
//!   in-flight requests finish.
//! * `GET /readyz` (readiness): 200 once recovery finished (in `Daemon::open`, before the
//!   API listens) and the workers run; 503 while stopping. The API port opens only after
//!   recovery, so no answer of this daemon ever precedes it.
//! * `GET /metrics`: behind `api.metrics_token` (or the operator token) when set; tenant
//!   names (labels `account`, `database`, `group`, `subject`) replaced by a stable digest
//!   unless `api.metrics_tenant_labels` ([`redact_tenants`]).
//! * Limits ([`limits`]): at most `api.max_concurrent_requests` requests are handled at once
//!   (one more: 429 with `Retry-After: 1`); a request not answered within
//!   `api.request_timeout` gets 503 (inserts and loads, whose body streams, are exempt);
//!   bodies read whole are bounded by `api.max_body_bytes` (413). The probes pass every
//!   limit. Every refusal is the usual error body, saying what to do.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::Digest as _;
use tokio::sync::Semaphore;

use crate::api::{ApiError, ApiResult};
use crate::config::ApiConfig;
use crate::daemon::Daemon;
use crate::error::Error;

/// Whether `path` is one of the probes (never refused by limits or shutdown).
pub fn is_probe(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// `GET /healthz`.
pub async fn healthz(State(d): State<Arc<Daemon>>) -> Response {
    let (status, word) = if d.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        status,
        axum::Json(json!({"status": word, "deployment": d.id.as_str()})),
    )
        .into_response()
}

/// `GET /readyz`.
pub async fn readyz(State(d): State<Arc<Daemon>>) -> Response {
    let (status, word) = if d.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if d.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    (
        status,
        axum::Json(json!({"status": word, "deployment": d.id.as_str()})),
    )
        .into_response()
}

/// Whether `presented` is `secret`, compared by digest in constant time.
fn same_secret(presented: &str, secret: &str) -> bool {
    let a: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
    let b: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `GET /metrics`: the monitor's page ([`crate::monitor::metrics`]), behind the metrics
/// token when one is configured, with tenant names as digests unless enabled.
pub async fn metrics(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    q: Query<crate::monitor::MetricsQuery>,
) -> ApiResult<Response> {
    if let Some(secret) = &d.config.api.metrics_token {
        let token = crate::api::bearer(&headers).map_err(|_| {
            Error::Unauthorized(
                "/metrics needs Authorization: Bearer <api.metrics_token> (or the operator token)",
            )
        })?;
        if !(same_secret(token, secret) || d.is_operator(token)) {
            return Err(Error::Unauthorized(
                "this token does not open /metrics: use api.metrics_token or the operator token",
            )
            .into());
        }
    }
    let page = crate::monitor::metrics(State(Arc::clone(&d)), q).await?;
    if d.config.api.metrics_tenant_labels {
        return Ok(page);
    }
    let (parts, body) = page.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Error::internal("render /metrics")(e.to_string()))?;
    let text = redact_tenants(&String::from_utf8_lossy(&bytes));
    Ok(Response::from_parts(parts, Body::from(text)))
}

/// Labels whose values name tenants (accounts, databases, their groups; alerts' subjects
/// name databases).
pub const TENANT_LABELS: &[&str] = &["account", "database", "group", "subject"];

/// The digest a tenant name is shown as: `t-` and 8 hex digits of its SHA-256 (stable,
/// so series and dashboards keep working; an operator can compute it for a name).
pub fn tenant_digest(name: &str) -> String {
    let d = sha2::Sha256::digest(name.as_bytes());
    format!("t-{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// The Prometheus text with every [`TENANT_LABELS`] value replaced by its
/// [`tenant_digest`] (comment lines and other labels as they were).
pub fn redact_tenants(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match line.find('{') {
            Some(open) if !line.starts_with('#') => {
                out.push_str(&line[..=open]);
                redact_labels(&line[open + 1..], &mut out);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// Copies `rest` (the text after a sample's `{`) to `out`, redacting tenant labels.
fn redact_labels(rest: &str, out: &mut String) {
    let mut s = rest;
    loop {
        // `name="value"` pairs, separated by commas, until `}`.
        let Some(eq) = s.find("=\"") else {
            out.push_str(s);
            return;
        };
        if s[..eq].contains('}') {
            out.push_str(s);
            return;
        }
        let name = s[..eq].trim_start_matches([',', ' ']);
        out.push_str(&s[..eq + 2]);
        let value_start = eq + 2;
        // The value ends at the first `"` not escaped by a backslash.
        let bytes = s.as_bytes();
        let mut i = value_start;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        let end = i.min(bytes.len());
        let value = &s[value_start..end];
        if TENANT_LABELS.contains(&name) {
            out.push_str(&tenant_digest(&unescape(value)));
        } else {
            out.push_str(value);
        }
        // Past the closing quote (kept).
        match s.get(end..end + 1) {
            Some("\"") => {
                out.push('"');
                s = &s[end + 1..];
            }
            _ => {
                out.push_str(&s[end..]);
                return;
            }
        }
    }
}

fn unescape(v: &str) -> String {
    v.replace("\\n", "\n")
        .replace("\\\"", "\"")
        .replace("\\\\", "\\")
}

/// The request limits of `[api]`.
#[derive(Debug, Clone)]
pub struct Limits {
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
}

impl Limits {
    /// The limits `api` sets.
    pub fn new(api: &ApiConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(api.max_concurrent_requests)),
            max: api.max_concurrent_requests,
            timeout: api.request_timeout,
        }
    }
}

/// Whether a request streams its body into the daemon (inserts and loads): exempt from
/// `api.request_timeout`, since a large file may take long to arrive.
fn streams_body(path: &str) -> bool {
    path.ends_with("/rows")
}

/// Middleware: the concurrency limit (429) and the request timeout (503).
pub async fn limits(
    State(l): State<Limits>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if is_probe(req.uri().path()) {
        return next.run(req).await;
    }
    // Held until the answer's head is ready (a streamed answer's rest is not counted).
    let Ok(_permit) = Arc::clone(&l.permits).try_acquire_owned() else {
        let mut r = ApiError(Error::Busy { limit: l.max }).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    if streams_body(req.uri().path()) {
        return next.run(req).await;
    }
    match tokio::time::timeout(l.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(Error::TimedOut { limit: l.timeout }).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_become_digests_and_the_rest_stays() {
        let page = "# HELP tern_x Per database.\n# TYPE tern_x gauge\n\
            tern_x{account=\"acme\",database=\"sales\",upstream=\"d1\"} 3\n\
            tern_y{peer=\"d2\"} 1\n\
            tern_alert_firing{alert=\"lag\",subject=\"acme.sa\\\"les\"} 1\n\
            tern_z 5\n";
        let out = redact_tenants(page);
        assert!(!out.contains("acme") && !out.contains("sales"), "{out}");
        assert!(out.contains("# HELP tern_x Per database.\n"), "{out}");
        assert!(
            out.contains(&format!(
                "tern_x{{account=\"{}\",database=\"{}\",upstream=\"d1\"}} 3\n",
                tenant_digest("acme"),
                tenant_digest("sales")
            )),
            "{out}"
        );
        assert!(out.contains("tern_y{peer=\"d2\"} 1\n"), "{out}");
        assert!(
            out.contains(&format!(
                "subject=\"{}\"}} 1\n",
                tenant_digest("acme.sa\"les")
            )),
            "{out}"
        );
        assert!(out.ends_with("tern_z 5\n"), "{out}");
        // Stable: the same name, the same digest.
        assert_eq!(tenant_digest("sales"), tenant_digest("sales"));
        assert_ne!(tenant_digest("sales"), tenant_digest("sales2"));
    }

    #[test]
    fn the_metrics_token_is_compared_whole() {
        assert!(same_secret(
            "metrics-token-0123456789",
            "metrics-token-0123456789"
        ));
        assert!(!same_secret(
            "metrics-token-012345678",
            "metrics-token-0123456789"
        ));
    }
}
