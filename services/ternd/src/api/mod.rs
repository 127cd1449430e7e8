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
//! | `GET …/databases/{db}/replication` | one database in its group as seen here: role, epochs, primary, `writable`, members following the primary, members down, a replica's refresh figures (the account's token; what `tern … --wait` follows) |
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
//! # Where the handlers are
//!
//! The router and what every route shares (authentication, errors, the one body
//! extractor [`Body`], `/v1/status`) are here; the handlers are in one module per
//! resource: [`accounts`] (accounts, databases, schemas, transactions, global accounts,
//! keys), [`tables`] (DDL, loads, DML, scans, idempotent writes), [`deployments`] (the
//! group, maintenance, availability), [`replication`], [`failover`] (promotion, policy,
//! conflicts, connections), [`messages`], [`metrics`]. Request and response bodies the
//! CLI reads are the types of the `tern-api` crate, shared with it.
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
use serde_json::Value;
use tern_api as api;
use tern_meta::{AccountDpo, DatabaseDpo, DeploymentDpo, TableDpo};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};
use tern_table::{ColumnDef, CommitInfo, IdempotencyKey, ScanRequest};

use crate::daemon::{Daemon, PeerViewDpo, TokenDpo, peer_view_key};
use crate::error::{Error, Result};
use crate::rows;

mod accounts;
mod deployments;
mod failover;
mod messages;
mod metrics;
mod replication;
mod tables;

// The handlers, by resource; the router below mounts them.
use accounts::*;
use deployments::*;
use failover::*;
use messages::*;
use replication::*;
use tables::*;

pub(crate) use accounts::new_database_name;
pub(crate) use metrics::render_metrics;
pub(crate) use tables::redirected;

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
        let mut error = api::ErrorDetail {
            kind: kind.name().to_string(),
            message,
            // A commit in doubt names its transaction: look it up
            // (`GET /v1/accounts/{account}/transactions/{txn_id}`) instead of retrying.
            txn_id: self.0.in_doubt_txn_id(),
            epoch: None,
            redirect: None,
        };
        // A write refused because another deployment holds the primary names it.
        if let Error::Table(tern_table::Error::NotWritable(r)) = &self.0 {
            error.epoch = Some(r.epoch);
            // Only where there is somewhere to go: a redirect naming no deployment (the
            // primary not known here) was `"deployment": null`, which no client could use.
            if let (false, Some(primary)) = (r.paused, &r.primary) {
                error.redirect = Some(api::Redirect {
                    deployment: primary.clone(),
                    url: r.primary_url.clone(),
                    epoch: r.epoch,
                });
            }
        }
        (status, axum::Json(api::ErrorBody { error })).into_response()
    }
}

pub(crate) type ApiResult<T> = std::result::Result<T, ApiError>;

/// An engine value as the `tern_api` type that mirrors it on the wire (same field names
/// and shapes; ids and enums as strings). Debug builds check that no field was lost on
/// the way, so an engine field the API type lacks fails the tests instead of vanishing
/// from answers.
pub(crate) fn wire<T: serde::Serialize, U: serde::Serialize + serde::de::DeserializeOwned>(
    what: &'static str,
    v: &T,
) -> Result<U> {
    let v = serde_json::to_value(v).map_err(|e| Error::internal(what)(e.to_string()))?;
    let u: U =
        serde_json::from_value(v.clone()).map_err(|e| Error::internal(what)(e.to_string()))?;
    debug_assert_eq!(
        serde_json::to_value(&u).ok().as_ref(),
        Some(&v),
        "{what}: the API type does not carry every field of the engine's"
    );
    Ok(u)
}

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
    json_body(&bytes)
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

/// The body of a request read whole (at most `api.max_body_bytes`: 413 beyond), the one
/// extractor of every handler that takes a body it does not stream. A body that could not
/// be read is an error only when the handler asks for it, after its token and path were
/// checked (a 401 or 404 is answered first, as before the body mattered).
pub(crate) struct Body(Result<Bytes>);

impl Body {
    /// The bytes (the idempotency hash covers them exactly).
    pub(crate) fn bytes(self) -> Result<Bytes> {
        self.0
    }

    /// The body as JSON of type `T`.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        json_body(&self.0?)
    }

    /// The body as JSON of type `T`, or `T::default()` when it is empty or blank.
    pub(crate) fn json_or_default<T: serde::de::DeserializeOwned + Default>(self) -> Result<T> {
        let bytes = self.0?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(T::default())
        } else {
            json_body(&bytes)
        }
    }
}

impl axum::extract::FromRequest<Arc<Daemon>> for Body {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &Arc<Daemon>,
    ) -> std::result::Result<Self, ApiError> {
        let body = Bytes::from_request(req, state).await;
        Ok(Body(body_bytes(body, state.config.api.max_body_bytes)))
    }
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
        .route(
            &format!("{db}/replication"),
            get(database_replication).post(set_replication),
        )
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

async fn status(State(d): St, headers: HeaderMap) -> ApiResult<axum::Json<api::Status>> {
    operator(&d, &headers)?;
    let stats = d.txn.phase_stats();
    let workers = d
        .supervisor
        .reports()
        .into_iter()
        .map(|w| api::Worker {
            name: w.name,
            state: enum_name(&w.state),
            busy_units: w.busy_units,
            errors: w.errors,
            last_error: w.last_error,
            figures: w.figures,
            last_unit_secs_ago: w.last_unit_secs_ago,
        })
        .collect();
    Ok(axum::Json(api::Status {
        deployment: d.id.as_str().to_string(),
        region: d.config.region.clone(),
        cloud: d.config.cloud.clone(),
        uptime_secs: d.uptime().as_secs_f64(),
        stopping: d.stopping(),
        workers,
        queues: d.message_states().await?,
        unfinished_transactions: d.unfinished_transactions()?,
        commits: stats.commits,
        rows_inserted: d.counters.rows_inserted.load(Ordering::Relaxed),
    }))
}

/// `show replication status` (operator).
/// A unit enum's serde name (`backing_off`).
pub(crate) fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
