//! `/ui`: the deployment's status page (one self-contained HTML page: inline CSS, JS and
//! SVG charts, no external assets), and `/ui/data`, the JSON it polls.
//!
//! Auth is the API's operator token: an `Authorization: Bearer` header, or — for a
//! browser, which cannot set headers on a navigation — `/ui?token=…` once, answered with a
//! redirect to `/ui` that keeps the token in an `HttpOnly`, `SameSite=Strict` cookie
//! scoped to `/ui` (the token leaves the address bar and history at once).
//!
//! `/ui/data` reads the monitor's last snapshot, the last history rows and events, and
//! the deployment list: no scans of tables or queues.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::api::ApiError;
use crate::daemon::Daemon;
use crate::error::Error;

const PAGE: &str = include_str!("ui.html");
const COOKIE: &str = "tern_ui";
/// History rows the page charts.
const CHART_ROWS: usize = 120;

/// The status page's routes.
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/data", get(data))
}

#[derive(Deserialize)]
struct PageQuery {
    token: Option<String>,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

/// The operator, by header or cookie.
fn authorized(d: &Daemon, headers: &HeaderMap) -> Result<(), Error> {
    match bearer(headers).or_else(|| cookie_token(headers)) {
        Some(t) if d.is_operator(&t) => Ok(()),
        Some(_) => Err(Error::Unauthorized("not the operator's token")),
        None => Err(Error::Unauthorized(
            "no token: open /ui?token=<operator token> or send Authorization: Bearer",
        )),
    }
}

async fn page(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    if let Some(t) = q.token {
        if !d.is_operator(&t) {
            return Err(Error::Unauthorized("not the operator's token").into());
        }
        // Only visible ASCII reaches a cookie; anything else is refused above (the
        // operator token is checked for that at start) or here.
        let cookie = HeaderValue::from_str(&format!(
            "{COOKIE}={t}; Path=/ui; HttpOnly; SameSite=Strict"
        ))
        .map_err(|_| Error::Invalid("token is not a cookie value".into()))?;
        return Ok((
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, cookie),
                (header::LOCATION, HeaderValue::from_static("/ui")),
            ],
        )
            .into_response());
    }
    authorized(&d, &headers)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response())
}

async fn data(State(d): State<Arc<Daemon>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorized(&d, &headers)?;
    let snap = d.monitor.last();
    let history = crate::monitor::history(&d, CHART_ROWS)?;
    let events = crate::monitor::events(&d, 20)?;
    let deployments = d.meta.read(|tx| tx.list_deployments())?;
    let row = snap.as_ref().map(|s| &s.row);
    let deployments: Vec<_> = deployments
        .iter()
        .map(|x| {
            let me = x.id == d.id;
            let availability = if me {
                "self".to_string()
            } else {
                row.and_then(|r| r.peers.get(x.id.as_str()).cloned())
                    .unwrap_or_else(|| "unknown".into())
            };
            json!({
                "id": x.id.as_str(),
                "region": x.region,
                "cloud": x.cloud,
                "availability": availability,
            })
        })
        .collect();
    let chart: Vec<_> = history
        .iter()
        .map(|h| {
            let apply = h
                .agents
                .get(&tern_monitor::AgentKind::Apply)
                .cloned()
                .unwrap_or_default();
            json!({
                "at_ms": h.at_ms,
                "apply_per_sec": apply.units_per_sec,
                "rows_per_sec": apply.rows_per_sec,
                "latency_avg_ms": apply.latency_avg_ms,
                "latency_max_ms": apply.latency_max_ms,
                "max_lag_ms": h.replicas.iter().map(|r| r.lag_ms).max().unwrap_or(0),
                "queued": h.queues.iter().filter(|(q, _)| crate::monitor::is_pending(q)).map(|(_, n)| n).sum::<u64>(),
            })
        })
        .collect();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "deployment": d.id.as_str(),
            "now_ms": d.now_ms(),
            "interval_ms": d.config.workers.monitor_interval.as_millis() as u64,
            "snapshot": row,
            "deployments": deployments,
            "chart": chart,
            "events": events,
        })),
    )
        .into_response())
}
