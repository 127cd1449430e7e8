//! The HTTP JSON API (axum).
//!
//! Every route but `/healthz` and `/metrics` needs `Authorization: Bearer <token>`: the
//! operator's token (config `operator_token`) reaches everything; an account token (made
//! when the operator creates the account, or later with `POST /v1/accounts/{a}/tokens`;
//! only its SHA-256 is stored) reaches only routes under its own account.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness, no token: 200, or 503 once stopping (load balancers drain) |
//! | `GET /readyz` | readiness, no token: 200 once recovery finished and the workers run; 503 while stopping |
//! | `GET /metrics` | (behind `api.metrics_token` when set; tenant names as digests unless `api.metrics_tenant_labels`) Prometheus text: commits, bytes, rows, messages by state, rejections, workers, apply monitoring; served from the monitor's last snapshot (no scans per scrape; `?fresh=true` renders now) |
//! | `GET /v1/monitor?last=N` | the last N monitor intervals (history rows) and the alerts firing (operator) |
//! | `GET /v1/monitor/events?last=N` | notification events: thresholds fired and cleared (operator) |
//! | `POST /v1/monitor/reset` | cumulative figures restart from zero (operator) |
//! | `GET /ui` | status page (operator token: header, or `?token=` once, kept in a cookie) |
//! | `GET /v1/status` | workers, queues, unfinished transactions (operator) |
//! | `GET/POST /v1/deployments` | `show deployments` / `create deployment` (operator) |
//! | `POST /v1/deployments/{id}/channel` | register the channel a peer created to us |
//! | `GET/POST /v1/accounts` | list / create (returns the account's token) |
//! | `GET/POST /v1/accounts/{a}/tokens`, `DELETE …/tokens/{id}` | list / make (read-only, expiring) / revoke the account's tokens (see [`crate::tokens`]) |
//! | `GET/POST /v1/accounts/{a}/databases` | list / create |
//! | `GET/POST …/databases/{db}/schemas` | list / create |
//! | `GET …/databases/{db}/tables` | show tables (all schemas) |
//! | `POST …/schemas/{s}/tables` | create table `{name, columns:[{name,type,nullable}]}` |
//! | `DELETE …/tables/{t}` | drop table |
//! | `POST …/tables/{t}/columns` | add a nullable column |
//! | `POST …/tables/{t}/rows` | insert: JSON rows, or a CSV/NDJSON/Parquet file (`?format=` or Content-Type); the body streams (decoded and written as it arrives, one commit at the end; not bounded by `api.max_body_bytes`) |
//! | `POST …/tables/{t}/delete` `…/update` `…/merge` | DML with the JSON predicate form |
//! | `POST …/tables/{t}/scan` | `{columns, where, version, limit, format}` → rows, streamed as they are read (`format`: `json` document, default; `ndjson`; `csv`); `limit` stops the reading (a non-finite float64 is `"NaN"`, `"Infinity"` or `"-Infinity"`, never `null`) |
//! | `GET …/tables/{t}/versions` | show versions |
//! | `GET /v1/accounts/{a}/transactions/{id}` | what became of a commit: `{txn_id, status: committed \| in_doubt, state?}`; 404 for an id never issued. A write answered 503 in doubt carries `error.txn_id` to ask about (do not retry it blindly: recovery commits it) |
//! | `POST /v1/accounts/{a}/global` | `alter account … set global` `{group?}` → `{group}` (operator) |
//! | `GET /v1/accounts/{a}/global/accounts` | `show global accounts` |
//! | `GET /v1/accounts/{a}/global/databases` | `show global databases` |
//! | `POST /v1/accounts/{a}/customer-key` | use a customer-managed key `{kind: "x25519", file, create?}` or `{kind: "kms_rsa", key_id}` → `{key_id}` (operator; stored, asks the account's replicas for a refresh) |
//! | `GET /v1/accounts/{a}/customer-key` | the registered key, its id, or why it does not open |
//! | `DELETE /v1/accounts/{a}/customer-key` | stop using it (operator) |
//! | `POST …/databases/{db}/replication` | `{enable: true}` → `{group}` (primary of a new group); `{enable: false}` makes it local |
//! | `POST /v1/accounts/{a}/replicas` | `create database X as replica of <group>` `{name, group, upstream?}` → `{database}` |
//! | `DELETE /v1/accounts/{a}/replicas/{db}` | drop a secondary replica |
//! | `POST …/databases/{db}/refresh` | `alter database X refresh` → `{request}` |
//! | `GET /v1/replication/status` | `show replication status` (operator) |
//!
//! # Idempotent writes
//!
//! `POST …/rows` (inserts and loads), `…/delete`, `…/update`, `…/merge` and `…/columns`
//! take an `Idempotency-Key` header (1–255 visible ASCII characters, per account): a retry
//! with the same key is applied once. The key is stored with the statement's transaction
//! in the metadata write that makes it Prepared, so it is found exactly when that
//! transaction is (or will be) committed. A request with a known key is not run again:
//!
//! * the first one committed (or changed nothing): its answer again, with
//!   `"replayed": true` and the header `Idempotent-Replayed: true`;
//! * the first one is still in doubt: 503 with `error.txn_id`, as it was answered (retry
//!   later with the same key; after recovery the answer is the committed one);
//! * the key was used with another method, path, Content-Type or body: 422 naming the key.
//!
//! Keys are kept for `api.idempotency_retention` (default 24 h), and while their
//! transaction is in doubt. Other routes ignore the header.
//!
//! Statements that write to a secondary replica are refused with 409 (kind `conflict`):
//! write to the group's primary. After every successful write request the replication
//! shipper is woken, so log records go to replicas at once.
//!
//! Errors are `{"error": {"kind": …, "message": …}}` with the kind's status (see
//! [`crate::error::Kind`]); an oversized body (of a request read whole) is 413 with kind
//! `invalid_input`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tern_meta::{AccountDpo, DatabaseDpo, DeploymentDpo, TableDpo};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};
use tern_table::{ColumnDef, CommitInfo, IdempotencyKey, ScanRequest};

use crate::daemon::{Daemon, PeerViewDpo, TokenDpo, peer_view_key};
use crate::error::{Error, Result};
use crate::rows;

type St = State<Arc<Daemon>>;

/// An error response.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}
macro_rules! api_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ApiError(e.into())
            }
        }
    )*};
}
api_error_from!(
    tern_table::Error,
    tern_meta::Error,
    tern_storage::Error,
    tern_messaging::Error,
    tern_replication::Error,
    tern_txn::Error
);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.0.kind();
        let status = self.0.status();
        let mut message = self.0.to_string();
        // Name the cause too when the top line is generic.
        let mut src = std::error::Error::source(&self.0);
        while let Some(s) = src {
            let t = s.to_string();
            if !message.contains(&t) {
                let _ = write!(message, ": {t}");
            }
            src = s.source();
        }
        if status.is_server_error() {
            tracing::error!(kind = kind.name(), %message, "request failed");
        } else {
            tracing::info!(kind = kind.name(), %message, "request refused");
        }
        let mut body = json!({"error": {"kind": kind.name(), "message": message}});
        // A commit in doubt names its transaction: look it up
        // (`GET /v1/accounts/{account}/transactions/{txn_id}`) instead of retrying.
        if let Some(id) = self.0.in_doubt_txn_id() {
            body["error"]["txn_id"] = json!(id);
        }
        // A write refused because another deployment holds the primary names it.
        if let Error::Table(tern_table::Error::NotWritable(r)) = &self.0 {
            body["error"]["epoch"] = json!(r.epoch);
            if !r.paused {
                body["error"]["redirect"] = json!({
                    "deployment": r.primary,
                    "url": r.primary_url,
                    "epoch": r.epoch,
                });
            }
        }
        (status, axum::Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T = axum::Json<Value>> = std::result::Result<T, ApiError>;

/// Who a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    Operator,
    Account(String),
}

/// The bearer token of a request, when it carries a well-formed one.
pub(crate) fn bearer_opt(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).ok()
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str> {
    let v = headers
        .get(header::AUTHORIZATION)
        .ok_or(Error::Unauthorized(
            "missing Authorization: Bearer <token> header",
        ))?;
    let v = v
        .to_str()
        .map_err(|_| Error::Unauthorized("malformed Authorization header"))?;
    v.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Error::Unauthorized(
            "Authorization must be \"Bearer <token>\"",
        ))
}

fn principal(d: &Daemon, headers: &HeaderMap) -> Result<Principal> {
    let token = bearer(headers)?;
    if d.is_operator(token) {
        return Ok(Principal::Operator);
    }
    // Unknown, revoked and expired tokens are refused here (401).
    let t = crate::tokens::lookup(d, token)?;
    Ok(Principal::Account(t.account))
}

pub(crate) fn operator(d: &Daemon, headers: &HeaderMap) -> Result<()> {
    match principal(d, headers)? {
        Principal::Operator => Ok(()),
        Principal::Account(a) => Err(Error::Forbidden {
            account: format!("(operator only; token of {a})"),
        }),
    }
}

pub(crate) fn account(d: &Daemon, headers: &HeaderMap, name: &str) -> Result<AccountId> {
    let p = principal(d, headers)?;
    if let Principal::Account(a) = &p
        && a != name
    {
        return Err(Error::Forbidden {
            account: name.to_string(),
        });
    }
    let id = AccountId::new(name)?;
    if d.meta.read(|tx| tx.get_account(&id))?.is_none() {
        return Err(Error::NotFound {
            what: "account",
            name: name.to_string(),
        });
    }
    Ok(id)
}

pub(crate) fn database(d: &Daemon, account: &AccountId, name: &str) -> Result<DatabaseDpo> {
    d.meta
        .read(|tx| tx.find_database(account, name))?
        .ok_or_else(|| Error::NotFound {
            what: "database",
            name: format!("{account}.{name}"),
        })
}

fn table(d: &Daemon, db: &DatabaseDpo, schema: &str, name: &str) -> Result<TableDpo> {
    match d.tables.find_table(&db.id, schema, name) {
        Ok(t) => Ok(t),
        // Name the table as the client did, not by the database's internal id.
        Err(tern_table::Error::UnknownTable { .. }) => Err(Error::NotFound {
            what: "table",
            name: format!("{}.{}.{schema}.{name}", db.account, db.name),
        }),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: std::result::Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T> {
    let bytes = body_bytes(body, limit)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("bad JSON body: {e}")))
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("bad JSON body: {e}")))
}

pub(crate) fn body_bytes(
    body: std::result::Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::TooLarge { limit }
        } else {
            Error::Invalid(format!("cannot read the request body: {r}"))
        }
    })
}

/// The router of `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    let limit = daemon.config.api.max_body_bytes;
    let acct = "/v1/accounts/{account}";
    let db = "/v1/accounts/{account}/databases/{db}";
    let tbl = "/v1/accounts/{account}/databases/{db}/schemas/{schema}/tables/{table}";
    Router::new()
        .route("/healthz", get(crate::ops::healthz))
        .route("/readyz", get(crate::ops::readyz))
        .route("/metrics", get(crate::ops::metrics))
        .merge(crate::monitor::routes())
        .merge(crate::ui::routes())
        .route("/v1/status", get(status))
        .route("/v1/sql", post(crate::sql::run_sql))
        .route(
            "/v1/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route("/v1/deployments/{id}/channel", post(register_channel))
        .route("/v1/accounts", get(list_accounts).post(create_account))
        .route(acct, delete(drop_account))
        .route(&format!("{acct}/keys"), get(account_keys))
        .route(&format!("{acct}/keys/rotate"), post(rotate_account_key))
        .route(
            &format!("{acct}/tokens"),
            get(crate::tokens::list).post(crate::tokens::create),
        )
        .route(
            &format!("{acct}/tokens/{{id}}"),
            delete(crate::tokens::revoke),
        )
        .route(
            &format!("{acct}/databases"),
            get(list_databases).post(create_database),
        )
        .route(
            &format!("{db}/schemas"),
            get(list_schemas).post(create_schema),
        )
        .route(&format!("{db}/tables"), get(list_tables))
        .route(
            &format!("{db}/schemas/{{schema}}/tables"),
            post(create_table),
        )
        .route(tbl, delete(drop_table).get(describe_table))
        .route(&format!("{tbl}/columns"), post(add_column))
        .route(&format!("{tbl}/rows"), post(insert))
        .route(&format!("{tbl}/delete"), post(delete_rows))
        .route(&format!("{tbl}/update"), post(update_rows))
        .route(&format!("{tbl}/merge"), post(merge_rows))
        .route(&format!("{tbl}/scan"), post(scan))
        .route(&format!("{tbl}/versions"), get(versions))
        .route(&format!("{acct}/transactions/{{txn}}"), get(txn_status))
        .route(&format!("{acct}/global"), post(set_global))
        .route(&format!("{acct}/global/accounts"), get(global_accounts))
        .route(&format!("{acct}/global/databases"), get(global_databases))
        .route(
            &format!("{acct}/customer-key"),
            post(register_customer_key)
                .get(customer_key)
                .delete(remove_customer_key),
        )
        .route(&format!("{db}/replication"), post(set_replication))
        .route(&format!("{db}/refresh"), post(refresh))
        .route(&format!("{db}/schedule"), post(set_schedule))
        .route(&format!("{db}/failover"), post(failover))
        .route(&format!("{db}/switchover"), post(switchover))
        .route(
            &format!("{db}/policy"),
            get(get_policy).put(set_policy).post(set_policy),
        )
        .route("/v1/deployments/{id}/maintenance", post(maintenance))
        .route("/v1/availability", get(availability))
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/conflicts/{id}", get(conflict_show))
        .route("/v1/conflicts/{id}/apply", post(conflict_apply))
        .route("/v1/conflicts/{id}/discard", post(conflict_discard))
        .route(
            &format!("{acct}/connections"),
            get(list_connections).post(create_connection),
        )
        .route(
            &format!("{acct}/connections/{{name}}"),
            get(resolve_connection),
        )
        .route(&format!("{acct}/replicas"), post(create_replica))
        .route(&format!("{acct}/replicas/{{db}}"), delete(drop_replica))
        .route("/v1/replication/status", get(replication_status))
        .route("/v1/messages/failed", get(failed_messages))
        .route(
            "/v1/messages/failed/{peer}/{id}/{action}",
            post(failed_message_action),
        )
        .route("/v1/messages/channels/{peer}/resync", post(resync_channel))
        .route("/v1/replication/jobs", get(replication_jobs))
        .route(
            "/v1/replication/jobs/{id}/{action}",
            post(replication_job_action),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&daemon),
            crate::tokens::read_only_guard,
        ))
        // Outermost but for the guard: a refused request (429, 503) is counted by it.
        .layer(axum::middleware::from_fn_with_state(
            crate::ops::Limits::new(&daemon.config.api),
            crate::ops::limits,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&daemon),
            guard,
        ))
        .with_state(daemon)
}

/// Refuses new requests once shutdown began, counts requests and errors.
async fn guard(
    State(d): St,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The probes answer for themselves while stopping (503 with what is going on).
    if d.stopping() && !crate::ops::is_probe(req.uri().path()) {
        return ApiError(Error::ShuttingDown).into_response();
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", deployment = %d.id, %method, %path);
    let started = std::time::Instant::now();
    let resp = {
        let _e = span.enter();
        drop(_e);
        tracing::Instrument::instrument(next.run(req), span.clone()).await
    };
    d.counters.requests.fetch_add(1, Ordering::Relaxed);
    if method != axum::http::Method::GET && resp.status().is_success() {
        // A write may have committed: the shipper sends new log records at once (it also
        // polls every `replication.ship_interval`).
        d.replication.committed();
    }
    if !resp.status().is_success() {
        let kind = match resp.status() {
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => "invalid_input",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => "unavailable",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "internal",
        };
        d.counters.error(kind);
    }
    let _e = span.enter();
    tracing::debug!(
        status = resp.status().as_u16(),
        millis = started.elapsed().as_millis() as u64,
        "served"
    );
    resp
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(Error::NotFound {
        what: "route",
        name: uri.path().to_string(),
    })
}

async fn status(State(d): St, headers: HeaderMap) -> ApiResult {
    operator(&d, &headers)?;
    let stats = d.txn.phase_stats();
    Ok(axum::Json(json!({
        "deployment": d.id.as_str(),
        "region": d.config.region,
        "cloud": d.config.cloud,
        "uptime_secs": d.uptime().as_secs_f64(),
        "stopping": d.stopping(),
        "workers": d.supervisor.reports(),
        "queues": d.message_states().await?,
        "unfinished_transactions": d.unfinished_transactions()?,
        "commits": stats.commits,
        "rows_inserted": d.counters.rows_inserted.load(Ordering::Relaxed),
    })))
}

/// The Prometheus text of every figure `/metrics` serves, measured now (scans the metadata
/// store: the monitor runs it once per `monitor_interval` and scrapes get its last
/// result, see [`crate::monitor`]).
pub(crate) async fn render_metrics(d: &Daemon) -> Result<String> {
    let mut m = String::new();
    let stats = d.txn.phase_stats();
    let mut counter = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(m, "{name}{labels} {v}");
        }
    };
    counter(
        "tern_commits_total",
        "Commits through the commit protocol.",
        "counter",
        vec![(String::new(), stats.commits as f64)],
    );
    counter(
        "tern_commit_phase_seconds_total",
        "Time commits spent per phase.",
        "counter",
        [
            ("locks", stats.locks),
            ("prepare", stats.prepare),
            ("log_write", stats.log_write),
            ("publish", stats.publish),
        ]
        .into_iter()
        .map(|(p, t)| (format!("{{phase=\"{p}\"}}"), t.as_secs_f64()))
        .collect(),
    );
    let c = &d.counters;
    counter(
        "tern_api_requests_total",
        "HTTP requests served.",
        "counter",
        vec![(String::new(), c.requests.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_api_errors_total",
        "Refused or failed requests by kind.",
        "counter",
        c.errors
            .lock()
            .map(|e| {
                e.iter()
                    .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v as f64))
                    .collect()
            })
            .unwrap_or_default(),
    );
    counter(
        "tern_rows_inserted_total",
        "Rows inserted or loaded.",
        "counter",
        vec![(
            String::new(),
            c.rows_inserted.load(Ordering::Relaxed) as f64,
        )],
    );
    counter(
        "tern_rows_changed_total",
        "Rows deleted, updated or merged.",
        "counter",
        vec![(String::new(), c.rows_changed.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_rows_scanned_total",
        "Rows returned by scans.",
        "counter",
        vec![(String::new(), c.rows_scanned.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_load_bytes_total",
        "Request bytes accepted by inserts and loads.",
        "counter",
        vec![(String::new(), c.bytes_loaded.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_commits_in_doubt_total",
        "Commits reported in doubt (completed by recovery).",
        "counter",
        vec![(String::new(), c.in_doubt.load(Ordering::Relaxed) as f64)],
    );
    let mc = d.messaging.counters();
    use tern_messaging::Counters as C;
    counter(
        "tern_messaging_total",
        "Message service events.",
        "counter",
        [
            ("files_written", C::get(&mc.files_written)),
            ("messages_sent", C::get(&mc.messages_sent)),
            ("files_received", C::get(&mc.files_received)),
            ("messages_received", C::get(&mc.messages_received)),
            ("duplicates", C::get(&mc.duplicates)),
            ("handled", C::get(&mc.handled)),
            ("handler_failures", C::get(&mc.handler_failures)),
            ("cleaned", C::get(&mc.cleaned)),
            ("objects_deleted", C::get(&mc.objects_deleted)),
            ("resyncs", C::get(&mc.resyncs)),
            ("resent", C::get(&mc.resent)),
            ("resend_gaps", C::get(&mc.resend_gaps)),
        ]
        .into_iter()
        .map(|(e, v)| (format!("{{event=\"{e}\"}}"), v as f64))
        .collect(),
    );
    counter(
        "tern_message_rejections_total",
        "Message files or messages rejected, by reason.",
        "counter",
        mc.rejected()
            .into_iter()
            .map(|(r, v)| (format!("{{reason=\"{r:?}\"}}"), v as f64))
            .collect(),
    );
    counter(
        "tern_messages",
        "Messages in the metadata store by direction/state.",
        "gauge",
        d.message_states()
            .await?
            .into_iter()
            .map(|(s, v)| {
                let (dir, state) = s.split_once('/').unwrap_or(("", &s));
                (
                    format!("{{direction=\"{dir}\",state=\"{state}\"}}"),
                    v as f64,
                )
            })
            .collect(),
    );
    counter(
        "tern_transactions_unfinished",
        "Transactions not committed or aborted, by state.",
        "gauge",
        d.unfinished_transactions()?
            .into_iter()
            .map(|(s, v)| (format!("{{state=\"{s}\"}}"), v as f64))
            .collect(),
    );
    let reports = d.supervisor.reports();
    counter(
        "tern_worker_up",
        "1 when the worker runs (running, idle or backing off).",
        "gauge",
        reports
            .iter()
            .map(|r| {
                let up = !matches!(
                    r.state,
                    crate::supervisor::RunState::Stopped | crate::supervisor::RunState::Failed
                );
                (
                    format!("{{worker=\"{}\"}}", r.name),
                    if up { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    );
    counter(
        "tern_worker_errors_total",
        "Failed units of work per worker.",
        "counter",
        reports
            .iter()
            .map(|r| (format!("{{worker=\"{}\"}}", r.name), r.errors as f64))
            .collect(),
    );
    let rs = d.replication.status().await?;
    for (name, v) in &rs.counters {
        counter(
            &format!("tern_replication_{name}_total"),
            "Replication events since start (from `show replication status`).",
            "counter",
            vec![(String::new(), *v as f64)],
        );
    }
    counter(
        "tern_replication_queue",
        "Replication work waiting: snapshot requests, snapshot imports, outbox messages.",
        "gauge",
        [
            ("snapshot", rs.snapshot_jobs),
            ("import", rs.import_jobs),
            ("outbox", rs.outbox),
        ]
        .into_iter()
        .map(|(q, v)| (format!("{{queue=\"{q}\"}}"), v as f64))
        .collect(),
    );
    counter(
        "tern_peer_available",
        "Per peer deployment: 1 available, 0.5 suspect, 0 unavailable or in maintenance.",
        "gauge",
        rs.peers
            .iter()
            .map(|p| {
                let v = match p.state {
                    tern_replication::Availability::Available => 1.0,
                    tern_replication::Availability::Suspect => 0.5,
                    _ => 0.0,
                };
                (format!("{{peer=\"{}\"}}", label(p.peer.as_str())), v)
            })
            .collect(),
    );
    let group = |g: &tern_replication::GroupStatus| {
        format!(
            "{{database=\"{}\",group=\"{}\",role=\"{}\"}}",
            label(&g.database),
            label(&g.group),
            match g.role {
                tern_meta::DatabaseRole::Primary => "primary",
                tern_meta::DatabaseRole::Secondary => "secondary",
                tern_meta::DatabaseRole::Local => "local",
            }
        )
    };
    counter(
        "tern_group_epoch",
        "Per database group held here: the newest epoch known.",
        "gauge",
        rs.groups
            .iter()
            .map(|g| (group(g), g.group_epoch as f64))
            .collect(),
    );
    counter(
        "tern_group_rpo_exposure_seconds",
        "Per database group: a secondary's age of the newest primary commit not applied here (grows while the primary is silent); the primary's oldest unconfirmed commit.",
        "gauge",
        rs.groups
            .iter()
            .map(|g| (group(g), g.rpo_exposure_ms as f64 / 1000.0))
            .collect(),
    );
    counter(
        "tern_group_txns_behind",
        "Per database group: transactions a secondary lacks of the primary's last heartbeat, or the primary's unconfirmed ones.",
        "gauge",
        rs.groups
            .iter()
            .map(|g| (group(g), g.txns_behind as f64))
            .collect(),
    );
    let replica = |r: &tern_replication::ReplicaStatus| {
        format!(
            "{{account=\"{}\",database=\"{}\",upstream=\"{}\"}}",
            label(r.account.as_str()),
            label(&r.database),
            label(r.upstream.as_str())
        )
    };
    counter(
        "tern_replication_lag_seconds",
        "Per secondary replica: how far its data trails the primary as last heard of (newest known commit minus newest applied; a silent primary's silence beyond two heartbeats counts).",
        "gauge",
        rs.replicas
            .iter()
            .map(|r| (replica(r), r.lag_ms as f64 / 1000.0))
            .collect(),
    );
    counter(
        "tern_replication_staleness_seconds",
        "Per secondary replica: how long ago the primary's state (heartbeat) was last heard; absent before the first.",
        "gauge",
        rs.replicas
            .iter()
            .filter_map(|r| Some((replica(r), r.staleness_ms? as f64 / 1000.0)))
            .collect(),
    );
    counter(
        "tern_replication_versions_behind",
        "Per secondary replica: table versions behind the newest upstream versions known here.",
        "gauge",
        rs.replicas
            .iter()
            .map(|r| (replica(r), r.versions_behind as f64))
            .collect(),
    );
    counter(
        "tern_replication_records_behind",
        "Per downstream replica of a local database: log records not shipped yet.",
        "gauge",
        rs.downstream
            .iter()
            .map(|r| {
                (
                    format!(
                        "{{database=\"{}\",peer=\"{}\"}}",
                        label(&r.database),
                        label(r.peer.as_str())
                    ),
                    r.records_behind as f64,
                )
            })
            .collect(),
    );
    let failed = d.messaging.failed_count().await?;
    counter(
        "tern_messages_failed",
        "Received messages whose handler failed for good, kept for the operator (`tern messages failed`) until failed_retention.",
        "gauge",
        vec![(String::new(), failed as f64)],
    );
    counter(
        "tern_replication_refresh_needed",
        "Per downstream replica of a local database: 1 when it fell further behind than replication.log_retention, its log records were pruned and it must refresh.",
        "gauge",
        rs.downstream
            .iter()
            .map(|r| {
                (
                    format!(
                        "{{database=\"{}\",peer=\"{}\"}}",
                        label(&r.database),
                        label(r.peer.as_str())
                    ),
                    if r.refresh_needed { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    );
    let mut jobs: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for j in &rs.jobs {
        *jobs
            .entry((enum_name(&j.kind), enum_name(&j.state)))
            .or_default() += 1.0;
    }
    counter(
        "tern_replication_jobs",
        "Copy (snapshot) and import jobs by state: waiting, backing_off, failed (a failed job waits for `tern replication retry|abandon`).",
        "gauge",
        jobs.into_iter()
            .map(|((k, st), n)| (format!("{{kind=\"{k}\",state=\"{st}\"}}"), n))
            .collect(),
    );
    Ok(m)
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Deserialize)]
struct CreateDeployment {
    id: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    cloud: String,
    #[serde(default)]
    replication_bucket_url: String,
    #[serde(default)]
    genesis: Option<tern_messaging::ChannelGenesis>,
}

async fn create_deployment(
    State(d): St,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    operator(&d, &headers)?;
    let req: CreateDeployment = parse_json(body, d.config.api.max_body_bytes)?;
    let dpo = DeploymentDpo {
        id: DeploymentId::new(req.id.as_str())?,
        region: req.region,
        cloud: req.cloud,
        replication_bucket_url: req.replication_bucket_url,
        credentials_ref: None,
        added_at_ms: 0,
    };
    let genesis = d.create_deployment(dpo, req.genesis).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"deployment": req.id, "genesis": genesis})),
    ))
}

async fn register_channel(
    State(d): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    operator(&d, &headers)?;
    let g: tern_messaging::ChannelGenesis = parse_json(body, d.config.api.max_body_bytes)?;
    if g.sender.as_str() != id {
        return Err(Error::Invalid(format!(
            "the genesis is of a channel from {}, not {id}",
            g.sender
        ))
        .into());
    }
    d.register_channel(&g).await?;
    Ok(axum::Json(
        json!({"registered": format!("{}->{}", g.sender, g.receiver)}),
    ))
}

async fn list_deployments(State(d): St, headers: HeaderMap) -> ApiResult {
    principal(&d, &headers)?;
    let members = d.meta.read(|tx| tx.list_deployments())?;
    let mut out = Vec::new();
    for m in members {
        let me = m.id == d.id;
        let view: Option<PeerViewDpo> = d.meta.read(|tx| tx.get(&peer_view_key(m.id.as_str())))?;
        let outbound = d.messaging.outbound(&m.id).await?;
        let inbound = d.messaging.inbound(&m.id).await?;
        out.push(json!({
            "id": m.id.as_str(),
            "region": m.region,
            "cloud": m.cloud,
            "replication_bucket_url": m.replication_bucket_url,
            "added_at_ms": m.added_at_ms,
            "self": me,
            "files_sent": outbound.as_ref().map(|c| c.files_written),
            "files_received": inbound.as_ref().map(|c| c.files_received),
            "peer_members": view.as_ref().map(|v| v.members.clone()),
            "peer_messages": view.as_ref().map(|v| v.messages),
            "last_heartbeat_ms": view.as_ref().and_then(|v| v.last_heartbeat_ms),
        }));
    }
    Ok(axum::Json(json!({"deployments": out})))
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

async fn create_account(
    State(d): St,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    operator(&d, &headers)?;
    let req: Named = parse_json(body, d.config.api.max_body_bytes)?;
    let id = AccountId::new(req.name.as_str())?;
    let dpo = AccountDpo::local(id.clone(), d.now_ms());
    d.meta
        .write(|tx| tx.create_account(&dpo))
        .map_err(|e| match e {
            tern_meta::Error::AlreadyExists { .. } => Error::Exists {
                what: "account",
                name: req.name.clone(),
            },
            other => other.into(),
        })?;
    // The account's master key is made with it (DESIGN.md §4): its tables' keys go under it.
    d.tables.account_keys().create(&id).await?;
    let (token, _) = crate::tokens::issue(&d, &id, &crate::tokens::NewToken::default())?;
    tracing::info!(account = %id, "account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"account": id.as_str(), "token": token})),
    ))
}

async fn list_accounts(State(d): St, headers: HeaderMap) -> ApiResult {
    let p = principal(&d, &headers)?;
    let all = d.meta.read(|tx| tx.list_accounts())?;
    let names: Vec<&str> = all
        .iter()
        .map(|a| a.name.as_str())
        .filter(|n| match &p {
            Principal::Operator => true,
            Principal::Account(a) => a == n,
        })
        .collect();
    Ok(axum::Json(json!({"accounts": names})))
}

/// A name a new database of `account` may take: not empty, not taken by a live database.
pub(crate) fn new_database_name(d: &Daemon, account: &AccountId, name: &str) -> ApiResult<()> {
    // The rule of every user-given name (the error states it).
    tern_storage::layout::check_identifier("database name", name).map_err(Error::Name)?;
    if d.meta.read(|tx| tx.find_database(account, name))?.is_some() {
        return Err(Error::Exists {
            what: "database",
            name: format!("{account}.{name}"),
        }
        .into());
    }
    Ok(())
}

async fn create_database(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let account = account(&d, &headers, &acct)?;
    let req: Named = parse_json(body, d.config.api.max_body_bytes)?;
    new_database_name(&d, &account, &req.name)?;
    let now = d.now_ms();
    let db = d.meta.write(|tx| {
        let n = tx.next_sequence("database")?;
        let id = DatabaseId::new(format!("db{n}")).map_err(|e| tern_meta::Error::Invalid {
            what: "database id",
            reason: e.to_string(),
        })?;
        let dpo = DatabaseDpo::local(id, account.clone(), req.name.clone(), now);
        tx.create_database(&dpo)?;
        Ok(dpo)
    })?;
    // Every database starts with schema "public".
    d.tables.create_schema(&db.id, "public").await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"database": db.name, "id": db.id.as_str()})),
    ))
}

/// What became of a transaction of the account: `committed`, or `in_doubt` (prepared:
/// recovery will commit it) with its state; 404 for an id this deployment never issued to
/// the account. A statement answered "in doubt" names the id to ask about.
async fn txn_status(
    State(d): St,
    headers: HeaderMap,
    Path((acct, txn)): Path<(String, String)>,
) -> ApiResult {
    let account = account(&d, &headers, &acct)?;
    let txn_id: u64 = txn.parse().map_err(|_| {
        Error::Invalid(format!(
            "transaction id {txn:?} is not a number (the txn_id a commit answered)"
        ))
    })?;
    let answer = match d.txn.status(&account, txn_id).await.map_err(Error::from)? {
        None => {
            return Err(Error::NotFound {
                what: "transaction",
                name: format!("{acct}/{txn_id}"),
            }
            .into());
        }
        Some(tern_txn::TxnOutcome::Committed) => json!({"txn_id": txn_id, "status": "committed"}),
        // Still "committed" for clients that only read the status; said plainly beside it.
        Some(tern_txn::TxnOutcome::CommittedPruned) => json!({
            "txn_id": txn_id,
            "status": "committed",
            "log_record": "pruned",
            "detail": "committed (log record pruned)",
        }),
        Some(tern_txn::TxnOutcome::InDoubt { state }) => json!({
            "txn_id": txn_id,
            "status": "in_doubt",
            "state": crate::daemon::state_name(state),
        }),
    };
    Ok(axum::Json(answer))
}

async fn list_databases(State(d): St, headers: HeaderMap, Path(acct): Path<String>) -> ApiResult {
    let account = account(&d, &headers, &acct)?;
    let dbs = d.meta.read(|tx| tx.list_databases(&account))?;
    let out: Vec<Value> = dbs
        .iter()
        .filter(|db| !db.dropped)
        .map(|db| json!({"name": db.name, "id": db.id.as_str(), "role": db.role}))
        .collect();
    Ok(axum::Json(json!({"databases": out})))
}

async fn create_schema(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let req: Named = parse_json(body, d.config.api.max_body_bytes)?;
    // Checked by the table layer too (SQL goes there directly); here the error is named.
    tern_storage::layout::check_identifier("schema name", &req.name).map_err(Error::Name)?;
    d.tables.create_schema(&db.id, &req.name).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"schema": req.name}))))
}

async fn list_schemas(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let s = d.meta.read(|tx| tx.list_schemas(&db.id))?;
    let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    Ok(axum::Json(json!({"schemas": names})))
}

fn table_json(t: &TableDpo) -> Value {
    json!({
        "schema": t.schema,
        "name": t.name,
        "id": t.id.as_str(),
        "version": t.current_version,
        "columns": t.columns.iter().map(|c| json!({"name": c.name, "type": c.ty.to_string(), "nullable": c.nullable})).collect::<Vec<_>>(),
    })
}

async fn list_tables(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let tables = d.meta.read(|tx| tx.list_tables(&db.id))?;
    Ok(axum::Json(
        json!({"tables": tables.iter().map(table_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
struct ColumnReq {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default = "yes")]
    nullable: bool,
}

fn yes() -> bool {
    true
}

impl ColumnReq {
    fn def(&self) -> Result<ColumnDef> {
        Ok(ColumnDef {
            name: self.name.clone(),
            ty: rows::column_type(&self.ty)?,
            nullable: self.nullable,
        })
    }
}

#[derive(Deserialize)]
struct CreateTable {
    name: String,
    columns: Vec<ColumnReq>,
}

async fn create_table(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname, schema)): Path<(String, String, String)>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let req: CreateTable = parse_json(body, d.config.api.max_body_bytes)?;
    if d.meta.read(|tx| tx.get_schema(&db.id, &schema))?.is_none() {
        return Err(Error::NotFound {
            what: "schema",
            name: format!("{dbname}.{schema}"),
        }
        .into());
    }
    if d.meta
        .read(|tx| tx.find_table(&db.id, &schema, &req.name))?
        .is_some()
    {
        return Err(Error::Exists {
            what: "table",
            name: format!("{dbname}.{schema}.{}", req.name),
        }
        .into());
    }
    let columns = req
        .columns
        .iter()
        .map(ColumnReq::def)
        .collect::<Result<Vec<_>>>()?;
    let id = d
        .tables
        .create_table(&db.id, &schema, &req.name, columns)
        .await?;
    let t = d.tables.table(&id)?;
    tracing::info!(account = %account, table = %id, name = %req.name, "table created");
    Ok((StatusCode::CREATED, axum::Json(table_json(&t))))
}

type TablePath = Path<(String, String, String, String)>;

fn resolve(
    d: &Daemon,
    headers: &HeaderMap,
    p: &(String, String, String, String),
) -> Result<TableDpo> {
    let account = account(d, headers, &p.0)?;
    let db = database(d, &account, &p.1)?;
    table(d, &db, &p.2, &p.3)
}

/// [`resolve`], with the account the table belongs to (a write's idempotency key is the
/// account's).
fn resolve_writable(
    d: &Daemon,
    headers: &HeaderMap,
    p: &(String, String, String, String),
) -> Result<(AccountId, TableDpo)> {
    let t = resolve(d, headers, p)?;
    Ok((AccountId::new(p.0.as_str())?, t))
}

async fn describe_table(State(d): St, headers: HeaderMap, Path(p): TablePath) -> ApiResult {
    let t = resolve(&d, &headers, &p)?;
    Ok(axum::Json(table_json(&t)))
}

async fn drop_table(State(d): St, headers: HeaderMap, Path(p): TablePath) -> ApiResult {
    let t = resolve(&d, &headers, &p)?;
    d.tables.drop_table(&t.id).await?;
    Ok(axum::Json(json!({"dropped": t.name})))
}

async fn add_column(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (account, t) = resolve_writable(&d, &headers, &p)?;
    let bytes = body_bytes(body, d.config.api.max_body_bytes)?;
    let key = idempotency_key(&headers, "POST", &uri, &bytes).await?;
    statement(&d, &account, key, async {
        let c: ColumnReq = json_body(&bytes)?;
        d.tables
            .add_column(&t.id, c.def()?)
            .await
            .map_err(|e| in_doubt(&d, e))
    })
    .await
}

/// A delete/update/merge's commit, with the rows it changed counted.
fn changed(d: &Daemon, result: tern_table::Result<CommitInfo>) -> Result<CommitInfo> {
    let info = result.map_err(|e| in_doubt(d, e))?;
    d.counters
        .rows_changed
        .fetch_add(info.rows_affected, Ordering::Relaxed);
    Ok(info)
}

fn commit_json(i: &CommitInfo) -> Value {
    json!({
        "version": i.version,
        "committed": i.committed,
        "rows": i.rows_affected,
        "files_added": i.files_added,
        "files_removed": i.files_removed,
        "txn_id": i.txn_id,
    })
}

/// The header a write's idempotency key comes in.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header that marks an answer given again for a retried key.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, checked, with the digest of what it came with
/// (`method`, path and query of `uri`, its Content-Type — which can decide how an insert
/// reads its body — and `body`); `None` without the header.
async fn idempotency_key(
    headers: &HeaderMap,
    method: &'static str,
    uri: &Uri,
    body: &Bytes,
) -> Result<Option<IdempotencyKey>> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::Invalid(
            "Idempotency-Key header is given more than once; send one key per request".into(),
        ));
    }
    let key = check_idempotency_key(value.as_bytes())?;
    let target = uri.path_and_query().map_or("", |p| p.as_str()).to_string();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let body = body.clone();
    // A load's body can be hundreds of MiB: digest it off the async workers.
    let request_hash = tokio::task::spawn_blocking(move || {
        request_hash(&[method.as_bytes(), target.as_bytes(), &content_type, &body])
    })
    .await
    .map_err(|e| Error::internal("digest the request")(e.to_string()))?;
    Ok(Some(IdempotencyKey { key, request_hash }))
}

/// SHA-256 (hex) of a request's parts, each length-prefixed so that no two different
/// requests give the same input.
fn request_hash(parts: &[&[u8]]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An `Idempotency-Key` value: 1 to 255 visible ASCII characters (`!` to `~`).
fn check_idempotency_key(raw: &[u8]) -> Result<String> {
    const MAX: usize = 255;
    if raw.is_empty() || raw.len() > MAX {
        return Err(Error::Invalid(format!(
            "Idempotency-Key header must be 1 to {MAX} characters long, not {}",
            raw.len()
        )));
    }
    if let Some((i, b)) = raw
        .iter()
        .enumerate()
        .find(|(_, b)| !(0x21..=0x7e).contains(*b))
    {
        return Err(Error::Invalid(format!(
            "Idempotency-Key header may hold only visible ASCII characters (no spaces, controls or non-ASCII); byte 0x{b:02x} at position {i} is not one"
        )));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// Run a write statement, applied once per idempotency `key` (see the module docs): a
/// known key answers its first request's outcome instead of running `run` again.
async fn statement(
    d: &Daemon,
    account: &AccountId,
    key: Option<IdempotencyKey>,
    run: impl std::future::Future<Output = Result<CommitInfo>>,
) -> ApiResult<Response> {
    let Some(key) = key else {
        return Ok(axum::Json(commit_json(&run.await?)).into_response());
    };
    if let Some(first) = d.txn.idempotency(account, &key.key)? {
        return replay(d, account, &key, first).await;
    }
    let outcome = tern_table::with_idempotency_key(key.clone(), run).await;
    keyed_outcome(d, account, &key, outcome).await
}

/// The answer to a statement run with idempotency `key`.
async fn keyed_outcome(
    d: &Daemon,
    account: &AccountId,
    key: &IdempotencyKey,
    outcome: Result<CommitInfo>,
) -> ApiResult<Response> {
    match outcome {
        Ok(info) => {
            if !info.committed {
                // Nothing changed and no transaction kept the key: keep it here, so that a
                // retry answers this instead of changing what has appeared since.
                d.txn.remember_idempotent(account, key, &info)?;
            }
            Ok(axum::Json(commit_json(&info)).into_response())
        }
        // Another request with this key got to its commit first: its outcome is the answer.
        Err(e @ Error::Table(tern_table::Error::IdempotencyKeyTaken { .. })) => {
            match d.txn.idempotency(account, &key.key)? {
                Some(first) => replay(d, account, key, first).await,
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The answer to a request whose idempotency key is stored as `first`.
async fn replay(
    d: &Daemon,
    account: &AccountId,
    key: &IdempotencyKey,
    first: tern_txn::IdempotencyDpo,
) -> ApiResult<Response> {
    if first.request_hash != key.request_hash {
        return Err(Error::IdempotencyKeyReused {
            key: key.key.clone(),
        }
        .into());
    }
    if let Some(txn_id) = first.txn_id
        && let Some(tern_txn::TxnOutcome::InDoubt { .. }) = d.txn.status(account, txn_id).await?
    {
        d.recover_wake.notify_one();
        return Err(Error::KeyInDoubt {
            key: key.key.clone(),
            txn_id,
        }
        .into());
    }
    // A stored key means its transaction reached Prepared, which always ends committed.
    let mut body = match &first.outcome {
        Some(o) => commit_json(&o.commit_info(first.txn_id)),
        None => json!({"committed": true, "txn_id": first.txn_id}),
    };
    body["replayed"] = json!(true);
    tracing::info!(key = %key.key, txn_id = first.txn_id, "idempotent write replayed");
    Ok((
        [(
            HeaderName::from_static(IDEMPOTENT_REPLAYED),
            HeaderValue::from_static("true"),
        )],
        axum::Json(body),
    )
        .into_response())
}

/// A write refused on a secondary or fenced database, with where to write instead: the
/// group's newest epoch, its primary and that primary's URL.
pub(crate) fn redirected(d: &Daemon, e: tern_table::Error) -> tern_table::Error {
    let (database, group, reason) = match &e {
        tern_table::Error::ReadOnlyReplica { database, group } => {
            (database.clone(), group.clone(), e.to_string())
        }
        tern_table::Error::NotWritable(r) if !r.paused => {
            (r.database.clone(), r.group.clone(), r.reason.clone())
        }
        _ => return e,
    };
    let Ok((epoch, primary, url)) = d.replication.primary_of(&group) else {
        return e;
    };
    let primary = primary.filter(|p| p != d.replication.me());
    let reason = match (&primary, &url) {
        (Some(p), Some(u)) => format!("{reason} (primary: {p} at {u}, epoch {epoch})"),
        (Some(p), None) => format!("{reason} (primary: {p}, epoch {epoch})"),
        _ => reason,
    };
    tern_table::Error::NotWritable(Box::new(tern_table::Refusal {
        database,
        group,
        reason,
        epoch,
        primary: primary.map(|p| p.to_string()),
        primary_url: url,
        paused: false,
    }))
}

/// A commit in doubt will be completed by recovery: wake the recovery worker.
fn in_doubt(d: &Daemon, e: tern_table::Error) -> Error {
    let e = redirected(d, e);
    if e.is_in_doubt() {
        d.counters.in_doubt.fetch_add(1, Ordering::Relaxed);
        d.recover_wake.notify_one();
    }
    e.into()
}

#[derive(Deserialize)]
struct InsertQuery {
    format: Option<String>,
}

fn body_format(headers: &HeaderMap, q: &InsertQuery) -> Result<Option<tern_table::load::Format>> {
    use tern_table::load::Format;
    let name = match &q.format {
        Some(f) => f.to_ascii_lowercase(),
        None => headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_ascii_lowercase(),
    };
    let name = name
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(match name.as_str() {
        "json" | "application/json" | "rows" => None,
        "csv" | "text/csv" => Some(Format::Csv),
        "ndjson" | "jsonl" | "application/x-ndjson" | "application/jsonl" => Some(Format::Ndjson),
        "parquet" | "application/vnd.apache.parquet" | "application/x-parquet" => {
            Some(Format::Parquet)
        }
        other => {
            return Err(Error::Invalid(format!(
                "unknown input format {other:?} (json, csv, ndjson, parquet)"
            )));
        }
    })
}

/// `POST …/rows`: the body is decoded while it arrives and its rows are written into
/// micro-partitions as they fill ([`crate::ingest`]); the rows become visible in one
/// commit at the end. The body is not held whole, so `api.max_body_bytes` does not bound
/// it: a load is as large as the volume allows.
async fn insert(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    Query(q): Query<InsertQuery>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let (account, t) = resolve_writable(&d, &headers, &p)?;
    let format = body_format(&headers, &q)?;
    let key = idempotency_header(&headers)?;
    let target = uri.path_and_query().map_or("", |p| p.as_str()).to_string();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let parts = vec![b"POST".to_vec(), target.into_bytes(), content_type];
    let ingest = crate::ingest::ingest(body.into_data_stream(), format, t.columns.clone(), parts);
    let Some(key) = key else {
        let info = insert_rows(&d, &t, ingest).await?;
        return Ok(axum::Json(commit_json(&info)).into_response());
    };
    if let Some(first) = d.txn.idempotency(&account, &key)? {
        // A known key: the body is read only to compare its digest with the first one's.
        let full = drain_digest(ingest).await?;
        let key = IdempotencyKey {
            key,
            request_hash: full,
        };
        return replay(&d, &account, &key, first).await;
    }
    let hash = Arc::clone(&ingest.request_hash);
    let run = insert_rows(&d, &t, ingest);
    let outcome =
        tern_table::with_pending_idempotency_key(key.clone(), Arc::clone(&hash), run).await;
    let full = IdempotencyKey {
        key,
        request_hash: hash.get().cloned().unwrap_or_default(),
    };
    keyed_outcome(&d, &account, &full, outcome).await
}

/// The `Idempotency-Key` header, checked; `None` without it.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::Invalid(
            "Idempotency-Key header is given more than once; send one key per request".into(),
        ));
    }
    check_idempotency_key(value.as_bytes()).map(Some)
}

/// Read a streamed body to its end for its digest only.
async fn drain_digest(mut ingest: crate::ingest::Ingest) -> Result<String> {
    while let Some(b) = ingest.batches.next().await {
        b?;
    }
    ingest
        .request_hash
        .get()
        .cloned()
        .ok_or_else(|| Error::Invalid("the request body was not read to its end".into()))
}

async fn insert_rows(
    d: &Daemon,
    t: &TableDpo,
    ingest: crate::ingest::Ingest,
) -> Result<CommitInfo> {
    let info = d
        .tables
        .insert_stream(&t.id, ingest.batches)
        .await
        .map_err(|e| in_doubt(d, e))?;
    let len = ingest.body.get().map_or(0, |b| b.bytes);
    d.counters
        .rows_inserted
        .fetch_add(info.rows_affected, Ordering::Relaxed);
    d.counters.bytes_loaded.fetch_add(len, Ordering::Relaxed);
    tracing::info!(table = %t.id, rows = info.rows_affected, bytes = len, version = info.version, txn_id = info.txn_id, "rows inserted");
    Ok(info)
}

#[derive(Deserialize)]
struct DmlReq {
    #[serde(rename = "where")]
    predicate: Option<Value>,
    set: Option<Value>,
    keys: Option<Vec<String>>,
    rows: Option<Vec<Value>>,
}

fn where_of(r: &DmlReq, columns: &[ColumnDef]) -> Result<tern_table::Predicate> {
    let w = r.predicate.as_ref().ok_or_else(|| {
        Error::Invalid("\"where\" is required (use \"where\": true for every row)".into())
    })?;
    rows::predicate(w, columns)
}

/// A DML request: the table, its account, the request parsed, and its idempotency key.
async fn dml(
    d: &Daemon,
    headers: &HeaderMap,
    uri: &Uri,
    p: &(String, String, String, String),
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<(AccountId, TableDpo, DmlReq, Option<IdempotencyKey>)> {
    let (account, t) = resolve_writable(d, headers, p)?;
    let bytes = body_bytes(body, d.config.api.max_body_bytes)?;
    let key = idempotency_key(headers, "POST", uri, &bytes).await?;
    Ok((account, t, json_body(&bytes)?, key))
}

async fn delete_rows(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (account, t, r, key) = dml(&d, &headers, &uri, &p, body).await?;
    statement(&d, &account, key, async {
        let pred = where_of(&r, &t.columns)?;
        changed(&d, d.tables.delete(&t.id, &pred).await)
    })
    .await
}

async fn update_rows(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (account, t, r, key) = dml(&d, &headers, &uri, &p, body).await?;
    statement(&d, &account, key, async {
        let pred = where_of(&r, &t.columns)?;
        let set = rows::assignments(
            r.set
                .as_ref()
                .ok_or_else(|| Error::Invalid("\"set\" is required".into()))?,
            &t.columns,
        )?;
        changed(&d, d.tables.update(&t.id, &set, &pred).await)
    })
    .await
}

async fn merge_rows(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (account, t, r, key) = dml(&d, &headers, &uri, &p, body).await?;
    statement(&d, &account, key, async {
        let keys = r
            .keys
            .clone()
            .ok_or_else(|| Error::Invalid("\"keys\" is required".into()))?;
        let source = rows::rows_to_batches(
            r.rows
                .as_deref()
                .ok_or_else(|| Error::Invalid("\"rows\" is required".into()))?,
            &t.columns,
        )?;
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        changed(&d, d.tables.merge(&t.id, &source, &key_refs).await)
    })
    .await
}

#[derive(Deserialize, Default)]
struct ScanReq {
    columns: Option<Vec<String>>,
    #[serde(rename = "where")]
    predicate: Option<Value>,
    version: Option<u64>,
    limit: Option<usize>,
    format: Option<String>,
}

/// How a scan's rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanFormat {
    /// One JSON document: `{version, columns, files_total, rows: [...], row_count,
    /// matched, truncated, files_read}`.
    Json,
    /// One JSON object per row and line.
    Ndjson,
    /// CSV with a header line.
    Csv,
}

impl ScanFormat {
    fn parse(name: Option<&str>) -> Result<Self> {
        Ok(match name.map(str::to_ascii_lowercase).as_deref() {
            None | Some("json") => ScanFormat::Json,
            Some("ndjson" | "jsonl") => ScanFormat::Ndjson,
            Some("csv") => ScanFormat::Csv,
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "unknown scan format {other:?} (json, ndjson, csv)"
                )));
            }
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            ScanFormat::Json => "application/json",
            ScanFormat::Ndjson => "application/x-ndjson",
            ScanFormat::Csv => "text/csv",
        }
    }
}

/// `POST …/scan`: rows streamed as they are read (a chunked body; see
/// [`Tables::scan_stream`](tern_table::Tables::scan_stream)). Each batch is encoded when
/// the connection can take it, so a slow client slows the reading down instead of making
/// the daemon buffer, and `limit` stops the reading once its rows are out.
///
/// Formats (`"format"` in the request, or `?format=`): `json` (default), one document
/// whose `rows` array is written row by row and whose counts come after it; `ndjson`, one
/// row object per line; `csv`, a header line then rows. `truncated` says rows were left
/// out by the limit; `matched` counts the matching rows when that is known — always
/// without a `where`, otherwise when the scan read to its end (`null` when a limit
/// stopped it first). An error after the answer has started ends the body early (for
/// `json` after an `"error"` member, for `ndjson` after an `{"error": …}` line), so a
/// client never takes a cut answer for a whole one.
async fn scan(
    State(d): St,
    headers: HeaderMap,
    Path(p): TablePath,
    Query(q): Query<InsertQuery>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let t = resolve(&d, &headers, &p)?;
    let bytes = body_bytes(body, d.config.api.max_body_bytes)?;
    let r: ScanReq = if bytes.iter().all(u8::is_ascii_whitespace) {
        ScanReq::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("bad JSON body: {e}")))?
    };
    let format = ScanFormat::parse(q.format.as_deref().or(r.format.as_deref()))?;
    if let Some(cols) = &r.columns {
        for c in cols {
            if !t.columns.iter().any(|x| &x.name == c) {
                return Err(
                    Error::Table(tern_table::Error::UnknownColumn { column: c.clone() }).into(),
                );
            }
        }
    }
    let predicate = r
        .predicate
        .as_ref()
        .map(|w| rows::predicate(w, &t.columns))
        .transpose()?;
    let limit = r
        .limit
        .unwrap_or(usize::MAX)
        .min(d.config.api.max_scan_rows);
    let request = ScanRequest {
        version: r.version,
        columns: r.columns.clone(),
        predicate,
    };
    // Whether rows are left out is known from the row counts without a predicate;
    // otherwise one row more than the limit is read to tell.
    let probe = d.tables.scan_stream(&t.id, &request, Some(limit)).await?;
    let scan = if probe.rows_total.is_some() {
        probe
    } else {
        drop(probe);
        d.tables
            .scan_stream(&t.id, &request, Some(limit.saturating_add(1)))
            .await?
    };
    let names: Vec<String> = scan.columns.iter().map(|c| c.name.clone()).collect();
    let head = match format {
        ScanFormat::Json => {
            let mut head = json!({
                "version": scan.version,
                "columns": names,
                "files_total": scan.files_total,
            })
            .to_string();
            head.pop();
            head.push_str(",\"rows\":[");
            head.into_bytes()
        }
        ScanFormat::Ndjson => Vec::new(),
        ScanFormat::Csv => {
            let quoted: Vec<String> = names.iter().map(|n| csv_field(n)).collect();
            format!("{}\n", quoted.join(",")).into_bytes()
        }
    };
    let state = ScanBody {
        files_read: Box::new(scan.files_read_counter()),
        rows_total: scan.rows_total,
        batches: scan.batches,
        format,
        limit,
        returned: 0,
        truncated: false,
        head: Some(head),
        done: false,
        abort: None,
        daemon: Arc::clone(&d),
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((chunk, s))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (
                HeaderName::from_static("x-tern-version"),
                HeaderValue::from(scan.version),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// A CSV field, quoted when it must be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The state of a streamed scan answer.
struct ScanBody {
    batches: futures::stream::BoxStream<'static, tern_table::Result<arrow::array::RecordBatch>>,
    files_read: Box<dyn Fn() -> usize + Send + Sync>,
    rows_total: Option<u64>,
    format: ScanFormat,
    limit: usize,
    returned: usize,
    truncated: bool,
    head: Option<Vec<u8>>,
    done: bool,
    /// Set after an error's text is written: the body then ends with an error.
    abort: Option<String>,
    daemon: Arc<Daemon>,
}

impl ScanBody {
    /// The next piece of the body; `None` at its end.
    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if let Some(message) = self.abort.take() {
            self.done = true;
            return Some(Err(std::io::Error::other(message)));
        }
        if self.done {
            return None;
        }
        let mut out = self.head.take().unwrap_or_default();
        loop {
            match self.batches.next().await {
                Some(Ok(batch)) => {
                    let keep = batch.num_rows().min(self.limit - self.returned);
                    if keep < batch.num_rows() {
                        self.truncated = true;
                    }
                    if keep == 0 {
                        continue;
                    }
                    let batch = batch.slice(0, keep);
                    let first = self.returned == 0;
                    self.returned += keep;
                    self.daemon
                        .counters
                        .rows_scanned
                        .fetch_add(keep as u64, Ordering::Relaxed);
                    if let Err(e) = self.encode(&batch, first, &mut out) {
                        return Some(Ok(self.fail(out, &e)));
                    }
                    return Some(Ok(Bytes::from(out)));
                }
                Some(Err(e)) => {
                    let e = Error::from(e);
                    return Some(Ok(self.fail(out, &e)));
                }
                None => {
                    self.done = true;
                    if let Some(total) = self.rows_total {
                        self.truncated = total > self.returned as u64;
                    }
                    if self.format == ScanFormat::Json {
                        let matched = match (self.rows_total, self.truncated) {
                            (Some(n), _) => json!(n),
                            (None, false) => json!(self.returned),
                            (None, true) => Value::Null,
                        };
                        let tail = json!({
                            "row_count": self.returned,
                            "matched": matched,
                            "truncated": self.truncated,
                            "files_read": (self.files_read)(),
                        })
                        .to_string();
                        out.extend_from_slice(b"],");
                        out.extend_from_slice(&tail.as_bytes()[1..]);
                    }
                    return (!out.is_empty()).then(|| Ok(Bytes::from(out)));
                }
            }
        }
    }

    /// Write `batch`'s rows to `out` in the answer's format.
    fn encode(
        &self,
        batch: &arrow::array::RecordBatch,
        first: bool,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let encode = |e: &dyn std::fmt::Display| Error::internal("encode rows")(e.to_string());
        match self.format {
            ScanFormat::Json | ScanFormat::Ndjson => {
                let rows = rows::batches_to_json(std::slice::from_ref(batch))?;
                let Value::Array(rows) = rows else {
                    return Ok(());
                };
                for (i, row) in rows.iter().enumerate() {
                    if self.format == ScanFormat::Json && !(first && i == 0) {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, row).map_err(|e| encode(&e))?;
                    if self.format == ScanFormat::Ndjson {
                        out.push(b'\n');
                    }
                }
            }
            ScanFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .build(&mut *out);
                w.write(batch).map_err(|e| encode(&e))?;
            }
        }
        Ok(())
    }

    /// `out` followed by the error's text where the format has room for it; the body
    /// ends with an error after it.
    fn fail(&mut self, mut out: Vec<u8>, e: &Error) -> Bytes {
        tracing::warn!(error = %e, "scan failed after its answer started");
        let error = json!({"kind": e.kind().name(), "message": e.to_string()});
        match self.format {
            ScanFormat::Json => {
                out.extend_from_slice(b"],\"error\":");
                out.extend_from_slice(error.to_string().as_bytes());
                out.push(b'}');
            }
            ScanFormat::Ndjson => {
                out.extend_from_slice(json!({"error": error}).to_string().as_bytes());
                out.push(b'\n');
            }
            ScanFormat::Csv => {}
        }
        self.abort = Some(e.to_string());
        Bytes::from(out)
    }
}

async fn versions(State(d): St, headers: HeaderMap, Path(p): TablePath) -> ApiResult {
    let t = resolve(&d, &headers, &p)?;
    let v = d.meta.read(|tx| tx.table_versions(&t.id))?;
    let out: Vec<Value> = v
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "committed_at_ms": v.committed_at_ms,
                "txn_id": v.txn_id,
                "files_added": v.added.len(),
                "files_removed": v.removed.len(),
            })
        })
        .collect();
    Ok(axum::Json(
        json!({"table": t.name, "current": t.current_version, "versions": out}),
    ))
}

// ---- replication (DESIGN.md §9, §11) ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SetGlobal {
    #[serde(default)]
    group: Option<String>,
}

/// `alter account … set global`: the account joins an account replication group (a new
/// one when none is named). Operator only.
async fn set_global(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let bytes = body_bytes(body, d.config.api.max_body_bytes)?;
    let req: SetGlobal = if bytes.iter().all(u8::is_ascii_whitespace) {
        SetGlobal::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("bad JSON body: {e}")))?
    };
    let group = d
        .replication
        .set_account_global(&id, req.group.as_deref())?;
    tracing::info!(account = %id, %group, "account is global");
    Ok(axum::Json(json!({"account": id.as_str(), "group": group})))
}

async fn global_accounts(State(d): St, headers: HeaderMap, Path(acct): Path<String>) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let rows = d.replication.global_accounts(&id)?;
    Ok(axum::Json(json!({"accounts": rows})))
}

async fn global_databases(State(d): St, headers: HeaderMap, Path(acct): Path<String>) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let rows = d.replication.global_databases(&id)?;
    Ok(axum::Json(json!({"databases": rows})))
}

/// Registers the account's customer-managed key: `{kind: "x25519", file, create?}` (a key
/// file on this deployment's host; `create` makes a new key pair when it is missing) or
/// `{kind: "kms_rsa", key_id}` (an RSA key of this deployment's KMS). Operator only.
async fn register_customer_key(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let bytes = body_bytes(body, d.config.api.max_body_bytes)?;
    let mut req: serde_json::Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("bad JSON body: {e}")))?;
    let create = match req.remove("create") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(
                Error::Invalid(format!("`create` must be true or false, not {other}")).into(),
            );
        }
    };
    let spec: tern_crypto::CustomerKeySpec = serde_json::from_value(Value::Object(req))
        .map_err(|e| {
            Error::Invalid(format!(
                "bad customer key: {e} (expected {{\"kind\": \"x25519\", \"file\": …}} or {{\"kind\": \"kms_rsa\", \"key_id\": …}})"
            ))
        })?;
    // A key file the daemon makes is written only inside the keys folder.
    let spec = match spec {
        tern_crypto::CustomerKeySpec::X25519 { file } if create => {
            let crate::config::KeysConfig::Local { dir, .. } = &d.config.keys else {
                return Err(Error::Invalid(
                    "create: the daemon makes key files only in a local keys folder ([keys] kind = \"local\"); make the file yourself and register it without create".into(),
                )
                .into());
            };
            tern_crypto::CustomerKeySpec::X25519 {
                file: crate::input::confine(dir, &file)?,
            }
        }
        other => other,
    };
    let key_id = d
        .replication
        .register_customer_key(&id, &spec, create)
        .await?;
    Ok(axum::Json(
        json!({"account": id.as_str(), "key_id": key_id, "spec": spec}),
    ))
}

async fn customer_key(State(d): St, headers: HeaderMap, Path(acct): Path<String>) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let status = d.replication.customer_key_status(&id)?;
    Ok(axum::Json(json!({"customer_key": status})))
}

/// `drop account A` (operator): its local databases are dropped, every version of its
/// master key and its log key are destroyed, its tokens revoked, and the account removed,
/// in one metadata transaction. Files it left in the volume can no longer be decrypted
/// (crypto-shredding). Refused while one of its databases replicates.
async fn drop_account(State(d): St, headers: HeaderMap, Path(acct): Path<String>) -> ApiResult {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let owner = id.clone();
    let destroyed = d
        .tables
        .drop_account(&id, &|tx| {
            tern_txn::TxnManager::destroy_log_key_in(tx, &owner)?;
            for (k, t) in tx.scan_prefix::<TokenDpo>(&tern_meta::Key::root("tok"))? {
                if t.account == owner.as_str() {
                    tx.delete(&k)?;
                }
            }
            Ok(())
        })
        .await?;
    d.txn.forget_log_key(&id);
    Ok(axum::Json(json!({
        "account": id.as_str(),
        "dropped": true,
        "key_versions_destroyed": destroyed,
    })))
}

fn key_versions_json(d: &Daemon, id: &AccountId) -> Result<Value> {
    let versions = d
        .meta
        .read(|tx| tern_table::account_key::versions_in(tx, id))?;
    Ok(Value::Array(
        versions
            .iter()
            .map(|v| {
                json!({
                    "version": v.version,
                    "state": if v.wrapped.is_some() { "active" } else { "retired" },
                    "created_at_ms": v.created_at_ms,
                    "retired_at_ms": v.retired_at_ms,
                })
            })
            .collect(),
    ))
}

/// The versions of an account's master key (never key material).
async fn account_keys(State(d): St, headers: HeaderMap, Path(acct): Path<String>) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    Ok(axum::Json(
        json!({"account": id.as_str(), "keys": key_versions_json(&d, &id)?}),
    ))
}

/// Rotates an account's master key (operator): a new version wraps every table key, the
/// older versions are retired; no data file is rewritten.
async fn rotate_account_key(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let r = d.tables.rotate_account_key(&id).await?;
    Ok(axum::Json(json!({
        "account": id.as_str(),
        "version": r.version,
        "retired": r.retired,
        "tables_rewrapped": r.tables,
        "keys": key_versions_json(&d, &id)?,
    })))
}

async fn remove_customer_key(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let removed = d.replication.remove_customer_key(&id)?;
    Ok(axum::Json(
        json!({"account": id.as_str(), "removed": removed}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetReplication {
    enable: bool,
    /// `enable replication to accounts a, b`: only these accounts (`account` or
    /// `deployment.account`) may hold a replica; absent: the list kept is unchanged.
    #[serde(default)]
    accounts: Option<Vec<String>>,
}

/// `alter database X enable replication [to accounts …]` (it becomes the primary of a new
/// database group; only the listed accounts may replicate it) or, with `enable: false`,
/// makes a global database local again.
async fn set_replication(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let req: SetReplication = parse_json(body, d.config.api.max_body_bytes)?;
    let group = if req.enable {
        Some(
            d.replication
                .enable_replication_to(&id, &db.name, req.accounts.as_deref())?,
        )
    } else {
        d.replication.disable_replication(&id, &db.name)?;
        None
    };
    Ok(axum::Json(json!({
        "database": db.name,
        "enabled": req.enable,
        "group": group,
        "accounts": req.accounts,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReplica {
    name: String,
    group: String,
    #[serde(default)]
    upstream: Option<String>,
}

/// `create database X as replica of <group>`: a read-only secondary replica; its first
/// refresh is asked for at once.
async fn create_replica(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let id = account(&d, &headers, &acct)?;
    let req: CreateReplica = parse_json(body, d.config.api.max_body_bytes)?;
    if req.group.trim().is_empty() {
        return Err(Error::Invalid("group is empty".into()).into());
    }
    new_database_name(&d, &id, &req.name)?;
    let upstream = req
        .upstream
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(DeploymentId::new)
        .transpose()?;
    let db = d
        .replication
        .create_replica(&id, &req.name, req.group.trim(), upstream.as_ref())?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "database": db.as_str(),
            "name": req.name,
            "group": req.group.trim(),
            "upstream": upstream.as_ref().map(DeploymentId::as_str),
        })),
    ))
}

async fn drop_replica(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    d.replication.drop_replica(&id, &db.name)?;
    Ok(axum::Json(json!({"dropped": db.name})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetSchedule {
    schedule: String,
}

/// `alter database X set schedule = …`: when a replica is brought up to date
/// (`continuous`, `every 5m`, `daily 02:30` UTC).
async fn set_schedule(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let req: SetSchedule = parse_json(body, d.config.api.max_body_bytes)?;
    let schedule: tern_replication::schedule::Schedule =
        req.schedule.parse().map_err(Error::Invalid)?;
    let request = d.replication.set_schedule(&db.id, schedule)?;
    Ok(axum::Json(json!({
        "database": db.name,
        "schedule": schedule.to_string(),
        "request": request,
    })))
}

/// `alter database X refresh`: ask the upstream for a refresh now (an already pending
/// request is kept and returned).
async fn refresh(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let request = d
        .replication
        .request_refresh(&db.id, "requested through the API")?;
    Ok(axum::Json(json!({"database": db.name, "request": request})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FailoverRequest {
    #[serde(default)]
    allow_data_loss: bool,
}

/// `alter database X primary`: promote this deployment's secondary replica (see
/// `tern_replication::failover`). Answers the measured RTO and the known loss; refused
/// with the reason (primary still heard, loss beyond the RPO, no majority) unless
/// `allow_data_loss`.
async fn failover(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let req: FailoverRequest = parse_json(body, d.config.api.max_body_bytes)?;
    let report = d
        .replication
        .failover(
            &id,
            &db.name,
            tern_replication::FailoverOptions {
                allow_data_loss: req.allow_data_loss,
            },
        )
        .await?;
    let v = serde_json::to_value(&report)
        .map_err(|e| Error::internal("encode failover report")(e.to_string()))?;
    Ok(axum::Json(v))
}

/// Planned switchover: this deployment's secondary replica becomes the group's primary
/// with nothing lost (see `Replication::switchover`); on the primary already, nothing to
/// do. Answers the write pause.
async fn switchover(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let report = d.replication.switchover(&id, &db.name).await?;
    let v = serde_json::to_value(&report)
        .map_err(|e| Error::internal("encode switchover report")(e.to_string()))?;
    Ok(axum::Json(v))
}

/// The failover policy of a database's group.
async fn get_policy(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let g = d.replication.group_state(&db)?;
    Ok(axum::Json(json!({
        "database": db.name,
        "group": g.group,
        "epoch": g.epoch,
        "primary": g.primary,
        "policy": g.policy,
    })))
}

/// Sets the failover policy (on the group's primary; heartbeats carry it to the members).
async fn set_policy(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let policy: tern_replication::FailoverPolicy = parse_json(body, d.config.api.max_body_bytes)?;
    d.replication.set_policy(&id, &db.name, policy.clone())?;
    Ok(axum::Json(json!({"database": db.name, "policy": policy})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Maintenance {
    on: bool,
}

/// Planned maintenance of a peer (operator): it counts as unavailable until put back.
async fn maintenance(
    State(d): St,
    headers: HeaderMap,
    Path(peer): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult {
    operator(&d, &headers)?;
    let req: Maintenance = parse_json(body, d.config.api.max_body_bytes)?;
    let peer = DeploymentId::new(&peer)?;
    let state = d.replication.set_maintenance(&peer, req.on)?;
    Ok(axum::Json(json!({"deployment": peer, "state": state})))
}

/// `show availability` (operator): every peer's state and the recent notifications.
async fn availability(State(d): St, headers: HeaderMap) -> ApiResult {
    operator(&d, &headers)?;
    Ok(axum::Json(json!({
        "peers": d.replication.availability()?,
        "history": d.replication.availability_history(200)?,
    })))
}

/// Conflict records kept here (operator).
async fn conflicts(State(d): St, headers: HeaderMap) -> ApiResult {
    operator(&d, &headers)?;
    let v = serde_json::to_value(d.replication.conflicts()?)
        .map_err(|e| Error::internal("encode conflicts")(e.to_string()))?;
    Ok(axum::Json(json!({ "conflicts": v })))
}

/// One conflict record with the rows it added and removed per table (operator).
async fn conflict_show(State(d): St, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    operator(&d, &headers)?;
    let (record, tables) = d.replication.conflict_rows(&id).await?;
    let mut out = Vec::with_capacity(tables.len());
    for t in &tables {
        out.push(json!({
            "table": t.table,
            "name": t.name,
            "version": t.version,
            "added": rows::batches_to_json(&t.added)?,
            "removed": match &t.removed {
                Some(r) => rows::batches_to_json(r)?,
                None => Value::Null,
            },
        }));
    }
    let record = serde_json::to_value(&record)
        .map_err(|e| Error::internal("encode conflict")(e.to_string()))?;
    Ok(axum::Json(json!({ "conflict": record, "tables": out })))
}

/// Applies a conflict record on this deployment, the group's primary (operator): 400 when
/// the rows it changed were changed since, or this is not the primary.
async fn conflict_apply(State(d): St, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    operator(&d, &headers)?;
    let applied = d.replication.apply_conflict(&id).await?;
    let v = serde_json::to_value(&applied)
        .map_err(|e| Error::internal("encode apply")(e.to_string()))?;
    Ok(axum::Json(v))
}

/// Discards a conflict record (operator): kept as history, its files deleted.
async fn conflict_discard(State(d): St, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    operator(&d, &headers)?;
    let record = d.replication.discard_conflict(&id).await?;
    let v = serde_json::to_value(&record)
        .map_err(|e| Error::internal("encode conflict")(e.to_string()))?;
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConnection {
    name: String,
    group: String,
}

/// `create connection`: a global object naming a database group; resolving it on any
/// member gives the group's current primary and its URL.
async fn create_connection(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let id = account(&d, &headers, &acct)?;
    let req: CreateConnection = parse_json(body, d.config.api.max_body_bytes)?;
    let view = d
        .replication
        .create_connection(&id, req.name.trim(), req.group.trim())?;
    let v = serde_json::to_value(&view)
        .map_err(|e| Error::internal("encode connection")(e.to_string()))?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// `show connections`: every connection of the account's group, resolved here.
async fn list_connections(State(d): St, headers: HeaderMap, Path(acct): Path<String>) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let v = serde_json::to_value(d.replication.connections(&id)?)
        .map_err(|e| Error::internal("encode connections")(e.to_string()))?;
    Ok(axum::Json(json!({ "connections": v })))
}

/// Where a connection leads now (what `tern --connection` asks any reachable member).
async fn resolve_connection(
    State(d): St,
    headers: HeaderMap,
    Path((acct, name)): Path<(String, String)>,
) -> ApiResult {
    let id = account(&d, &headers, &acct)?;
    let view = d.replication.resolve_connection(&id, &name)?;
    let v = serde_json::to_value(&view)
        .map_err(|e| Error::internal("encode connection")(e.to_string()))?;
    Ok(axum::Json(v))
}

/// `show replication status` (operator).
/// A unit enum's serde name (`backing_off`).
pub(crate) fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Failed messages kept for the operator (oldest first).
async fn failed_messages(State(d): St, headers: HeaderMap) -> ApiResult {
    operator(&d, &headers)?;
    let failed = d.messaging.failed_messages(1000).await?;
    Ok(axum::Json(json!({ "messages": failed })))
}

/// `retry` or `discard` a failed message (operator).
async fn failed_message_action(
    State(d): St,
    headers: HeaderMap,
    Path((peer, id, action)): Path<(String, String, String)>,
) -> ApiResult {
    operator(&d, &headers)?;
    let peer = DeploymentId::new(peer.as_str())?;
    let id = tern_storage::layout::MessageId::new(id.as_str())
        .map_err(|e| Error::Invalid(format!("message id: {e}")))?;
    match action.as_str() {
        "retry" => d.messaging.retry_failed(&peer, &id).await?,
        "discard" => d.messaging.discard_failed(&peer, &id).await?,
        other => {
            return Err(Error::Invalid(format!(
                "message action {other:?}: expected retry or discard"
            ))
            .into());
        }
    }
    Ok(axum::Json(
        json!({"peer": peer.as_str(), "id": id.as_str(), "done": action}),
    ))
}

/// Resynchronises the channel from `peer` past a file it cannot read (operator): see
/// `tern_messaging::resync`.
async fn resync_channel(State(d): St, headers: HeaderMap, Path(peer): Path<String>) -> ApiResult {
    operator(&d, &headers)?;
    let peer = DeploymentId::new(peer.as_str())?;
    let r = d.resync_channel(&peer).await?;
    let v =
        serde_json::to_value(&r).map_err(|e| Error::internal("encode resync")(e.to_string()))?;
    Ok(axum::Json(v))
}

/// Every copy and import job (operator).
async fn replication_jobs(State(d): St, headers: HeaderMap) -> ApiResult {
    operator(&d, &headers)?;
    Ok(axum::Json(json!({ "jobs": d.replication.jobs()? })))
}

/// `retry` or `abandon` a copy or import job (operator).
async fn replication_job_action(
    State(d): St,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    operator(&d, &headers)?;
    let job = match action.as_str() {
        "retry" => d.replication.retry_job(&id)?,
        "abandon" => d.replication.abandon_job(&id).await?,
        other => {
            return Err(
                Error::Invalid(format!("job action {other:?}: expected retry or abandon")).into(),
            );
        }
    };
    let v = serde_json::to_value(&job).map_err(|e| Error::internal("encode job")(e.to_string()))?;
    Ok(axum::Json(v))
}

async fn replication_status(State(d): St, headers: HeaderMap) -> ApiResult {
    operator(&d, &headers)?;
    let status = d.replication.status().await?;
    let v = serde_json::to_value(&status)
        .map_err(|e| Error::internal("encode replication status")(e.to_string()))?;
    Ok(axum::Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_checked_naming_the_header() {
        assert_eq!(check_idempotency_key(b"order-1").expect("valid"), "order-1");
        let longest = "~".repeat(255);
        assert_eq!(
            check_idempotency_key(longest.as_bytes()).expect("255 is allowed"),
            longest
        );
        for (bad, says) in [
            (&b""[..], "1 to 255 characters long, not 0"),
            (&[b'k'; 256][..], "not 256"),
            (&b"two words"[..], "byte 0x20 at position 3"),
            (&b"tab\there"[..], "byte 0x09 at position 3"),
            ("caf\u{e9}".as_bytes(), "byte 0xc3 at position 3"),
            (&b"del\x7f"[..], "byte 0x7f at position 3"),
        ] {
            let e = check_idempotency_key(bad).expect_err("refused");
            let m = e.to_string();
            assert!(m.contains("Idempotency-Key") && m.contains(says), "{m}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{m}");
        }
    }

    #[tokio::test]
    async fn the_request_hash_covers_method_path_content_type_and_body() {
        let uri = |s: &str| s.parse::<Uri>().expect("uri");
        let mut headers = HeaderMap::new();
        assert_eq!(
            idempotency_key(&headers, "POST", &uri("/a"), &Bytes::new())
                .await
                .expect("no key"),
            None
        );
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
        let mut as_csv = headers.clone();
        as_csv.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
        let csv = idempotency_key(
            &as_csv,
            "POST",
            &uri("/t/rows"),
            &Bytes::from_static(b"[1]"),
        )
        .await
        .expect("valid")
        .expect("keyed")
        .request_hash;
        let hash = |method, target: &str, body: &'static [u8]| {
            let headers = headers.clone();
            let target = uri(target);
            async move {
                idempotency_key(&headers, method, &target, &Bytes::from_static(body))
                    .await
                    .expect("valid")
                    .expect("keyed")
                    .request_hash
            }
        };
        let base = hash("POST", "/t/rows", b"[1]").await;
        assert_eq!(base, hash("POST", "/t/rows", b"[1]").await, "deterministic");
        assert_eq!(base.len(), 64);
        for other in [
            hash("PUT", "/t/rows", b"[1]").await,
            hash("POST", "/t/rows?format=csv", b"[1]").await,
            hash("POST", "/t/rows", b"[2]").await,
            // Parts are length-prefixed: moving bytes between them changes the hash.
            hash("POST", "/t/rows[", b"1]").await,
            // The same bytes read as another format.
            csv.clone(),
        ] {
            assert_ne!(base, other);
        }
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("k2"));
        let e = idempotency_key(&headers, "POST", &uri("/a"), &Bytes::new())
            .await
            .expect_err("two keys");
        assert!(e.to_string().contains("more than once"), "{e}");
    }

    #[test]
    fn a_reused_key_is_422_and_a_key_in_doubt_names_its_transaction() {
        let e = Error::IdempotencyKeyReused { key: "k".into() };
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.to_string().contains("\"k\""), "{e}");
        let e = Error::KeyInDoubt {
            key: "k".into(),
            txn_id: 42,
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.in_doubt_txn_id(), Some(42));
    }
}
