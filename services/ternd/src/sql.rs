//! `POST /v1/sql`: SQL statements on one database (DataFusion over the deployment's
//! tables, see `tern-sql`).
//!
//! Body: `{"account": "acme", "database": "sales", "sql": "SELECT …", "format": "ndjson"}`
//! with an account token (of that account) or the operator token. The replication
//! statements (`SHOW GLOBAL DATABASES`, `ALTER DATABASE … ENABLE REPLICATION TO ACCOUNTS
//! …`, `CREATE DATABASE … AS REPLICA OF …`, …; see `tern_sql::admin`) run for the account
//! and need no `database`; `ALTER ACCOUNT … SET GLOBAL` and `SHOW REPLICATION STATUS` need
//! the operator token. `format` is `ndjson`
//! (default: one JSON object per row, a non-finite float as a string as in scans) or
//! `csv` (a header line, then the rows). Several statements separated by `;` run in
//! order, each committing on its own; the answer is the last one's rows. DDL answers one
//! `status` row, DML one `count` row.
//!
//! The answer is streamed as it is computed. Errors found before the first row (syntax
//! with line and column, unknown table or column, wrong type, unsupported construct: 400;
//! a write on a secondary replica or fenced primary: 409 with the redirect, as the table
//! API) get the usual error body and status; an error after rows were sent ends an
//! `ndjson` answer with a last line `{"error": {…}}` (a CSV answer just ends). The
//! column names, in order, are in the `Tern-Columns` header (a JSON array).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tern_sql::datafusion::arrow::record_batch::RecordBatch as DfBatch;
use tern_sql::{SqlError, SqlSession};

use crate::api::{ApiError, account, database, parse_json, redirected};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::rows;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SqlReq {
    account: String,
    /// The database the statement runs on (not needed by the replication statements).
    #[serde(default)]
    database: Option<String>,
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ndjson,
    Csv,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Self> {
        match s.unwrap_or("ndjson") {
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            other => Err(Error::Invalid(format!(
                "format {other:?}: use \"ndjson\" or \"csv\""
            ))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv",
        }
    }
}

/// A statement's error as the API's: bad statements are invalid input, writes refused
/// on a replica carry the redirect, table errors keep their kind.
fn api_error(d: &Daemon, e: SqlError) -> Error {
    if e.is_write_refusal() {
        if let SqlError::Table(t) = e {
            return Error::Table(redirected(d, t));
        }
        return Error::Table(tern_table::Error::NotWritable(Box::new(
            tern_table::Refusal {
                database: String::new(),
                group: String::new(),
                reason: e.to_string(),
                epoch: 0,
                primary: None,
                primary_url: None,
                paused: false,
            },
        )));
    }
    match e {
        SqlError::Table(t) => Error::Table(t),
        e if e.is_bad_statement() => Error::Invalid(e.to_string()),
        e => Error::internal("sql")(e.to_string()),
    }
}

fn encode(format: Format, batch: &DfBatch, out: &mut Vec<u8>) -> Result<()> {
    let batch = tern_sql::bridge::from_df(batch)
        .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
    match format {
        Format::Ndjson => {
            let rows = rows::batches_to_json(std::slice::from_ref(&batch))?;
            if let serde_json::Value::Array(rows) = rows {
                for r in rows {
                    serde_json::to_writer(&mut *out, &r)
                        .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
                    out.push(b'\n');
                }
            }
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(false)
                .build(&mut *out);
            w.write(&batch)
                .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
        }
    }
    Ok(())
}

/// `POST /v1/sql`.
pub(crate) async fn run_sql(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, ApiError> {
    let req: SqlReq = parse_json(body, d.config.api.max_body_bytes)?;
    let format = Format::parse(req.format.as_deref())?;
    let account = account(&d, &headers, &req.account)?;
    // A read-only token runs queries only.
    crate::tokens::check_sql(&d, &headers, &req.sql)?;
    let answer = match tern_sql::admin::parse(&req.sql).map_err(|e| api_error(&d, e))? {
        Some(stmt) => crate::sql_admin::run(&d, Some(&headers), &account, stmt).await?,
        None => {
            let name = req
                .database
                .as_deref()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    Error::Invalid("database: name the database the statement runs on".into())
                })?;
            let db = database(&d, &account, name)?;
            let session = SqlSession::new(Arc::clone(&d.tables), db.id.clone());
            session.run(&req.sql).await.map_err(|e| api_error(&d, e))?
        }
    };
    let names: Vec<String> = answer
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut stream = answer.stream;
    // The first batch is computed before the status is sent: a statement that fails at
    // once (DML runs here) gets its own status.
    let first = match stream.next().await {
        Some(Err(e)) => return Err(api_error(&d, SqlError::from(e)).into()),
        other => other,
    };
    let mut head = Vec::new();
    let names_for_csv = names.clone();
    if format == Format::Csv {
        let quoted: Vec<String> = names_for_csv
            .iter()
            .map(|n| {
                if n.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", n.replace('"', "\"\""))
                } else {
                    n.clone()
                }
            })
            .collect();
        head.extend_from_slice(quoted.join(",").as_bytes());
        head.push(b'\n');
    }
    let daemon = Arc::clone(&d);
    let body = futures::stream::unfold(
        (Some(head), first, stream, false),
        move |(head, first, mut stream, done)| {
            let daemon = Arc::clone(&daemon);
            async move {
                if done {
                    return None;
                }
                let mut out = head.unwrap_or_default();
                let next = match first {
                    Some(b) => Some(b),
                    None => stream.next().await,
                };
                match next {
                    None => (!out.is_empty())
                        .then(|| (Ok(Bytes::from(out)), (None, None, stream, true))),
                    Some(Ok(batch)) => match encode(format, &batch, &mut out) {
                        Ok(()) => Some((Ok(Bytes::from(out)), (None, None, stream, false))),
                        Err(e) => Some((
                            Err(std::io::Error::other(e.to_string())),
                            (None, None, stream, true),
                        )),
                    },
                    Some(Err(e)) => {
                        let e = api_error(&daemon, SqlError::from(e));
                        tracing::warn!(error = %e, "SQL answer failed after it started");
                        if format == Format::Ndjson {
                            let line = json!({"error": {"kind": e.kind().name(), "message": e.to_string()}});
                            out.extend_from_slice(line.to_string().as_bytes());
                            out.push(b'\n');
                        }
                        // The body ends with an error after what was written.
                        Some((Ok(Bytes::from(out)), (None, None, stream, true)))
                    }
                }
            }
        },
    );
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // The columns in order (JSON objects do not keep it for every reader).
    if let Ok(v) = HeaderValue::from_str(&serde_json::Value::from(names).to_string()) {
        response.headers_mut().insert("tern-columns", v);
    }
    Ok(response)
}
