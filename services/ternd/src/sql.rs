//! `POST /v1/sql`: SQL statements on one database (DataFusion over the deployment's
//! tables, see `tern-sql`).
//!
//! Body: `{"account": "acme", "database": "sales", "sql": "SELECT …", "format": "ndjson"}`
//! with an account token (of that account) or the operator token. The replication
//! statements (`SHOW GLOBAL DATABASES`, `ALTER DATABASE … ENABLE REPLICATION TO ACCOUNTS
//! …`, `CREATE DATABASE … AS REPLICA OF …`, …; see `tern_sql::admin`) run for the account
//! and need no `database`; `ALTER ACCOUNT … SET GLOBAL` and `SHOW REPLICATION STATUS` need
//! the operator token. `format` is `ndjson`
//! (default: one JSON object per row, a non-finite float as a string as in scans),
//! `csv` (a header line, then the rows) or `arrow` (an Arrow IPC stream,
//! `application/vnd.apache.arrow.stream`: the schema, then one record batch per batch
//! computed, then the end-of-stream marker; a stream cut short has no marker). Several statements separated by `;` run in
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
use tern_sql::datafusion::arrow::datatypes::SchemaRef as DfSchemaRef;
use tern_sql::datafusion::arrow::ipc::writer::StreamWriter as IpcWriter;
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
    Arrow,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Self> {
        match s.unwrap_or("ndjson") {
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            "arrow" | "arrow-ipc" => Ok(Format::Arrow),
            other => Err(Error::Invalid(format!(
                "format {other:?}: use \"ndjson\", \"csv\" or \"arrow\""
            ))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Bytes an IPC writer wrote, taken out after each message.
#[derive(Clone, Default)]
struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Turns an answer's batches into the body's bytes.
enum Encoder {
    /// JSON lines (`false`) or CSV.
    Text {
        csv: bool,
    },
    Arrow(Box<IpcWriter<SharedBuf>>, SharedBuf),
}

impl Encoder {
    /// The encoder and the bytes that open the body (CSV's header, Arrow's schema).
    fn new(format: Format, schema: &DfSchemaRef, names: &[String]) -> Result<(Self, Vec<u8>)> {
        match format {
            Format::Ndjson => Ok((Encoder::Text { csv: false }, Vec::new())),
            Format::Csv => {
                let quoted: Vec<String> = names
                    .iter()
                    .map(|n| {
                        if n.contains([',', '"', '\n', '\r']) {
                            format!("\"{}\"", n.replace('"', "\"\""))
                        } else {
                            n.clone()
                        }
                    })
                    .collect();
                let mut head = quoted.join(",").into_bytes();
                head.push(b'\n');
                Ok((Encoder::Text { csv: true }, head))
            }
            Format::Arrow => {
                let buf = SharedBuf::default();
                let w = IpcWriter::try_new(buf.clone(), schema)
                    .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
                let head = buf.take();
                Ok((Encoder::Arrow(Box::new(w), buf), head))
            }
        }
    }

    fn batch(&mut self, batch: &DfBatch, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Encoder::Text { csv } => encode(*csv, batch, out),
            Encoder::Arrow(w, buf) => {
                w.write(batch)
                    .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
                out.extend(buf.take());
                Ok(())
            }
        }
    }

    /// What ends a complete body (Arrow's end-of-stream marker).
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if let Encoder::Arrow(w, buf) = self {
            w.finish()
                .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
            out.extend(buf.take());
        }
        Ok(())
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

/// A batch as JSON lines (`csv: false`) or CSV rows.
fn encode(csv: bool, batch: &DfBatch, out: &mut Vec<u8>) -> Result<()> {
    match csv {
        false => {
            let rows = rows::batches_to_json(std::slice::from_ref(batch))?;
            if let serde_json::Value::Array(rows) = rows {
                for r in rows {
                    serde_json::to_writer(&mut *out, &r)
                        .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
                    out.push(b'\n');
                }
            }
        }
        true => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(false)
                .build(&mut *out);
            w.write(batch)
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
    let (encoder, head) = Encoder::new(format, &answer.schema, &names)?;
    let daemon = Arc::clone(&d);
    let body = futures::stream::unfold(
        (Some(head), first, stream, false, encoder),
        move |(head, first, mut stream, done, mut encoder)| {
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
                    None => match encoder.finish(&mut out) {
                        Ok(()) => (!out.is_empty())
                            .then(|| (Ok(Bytes::from(out)), (None, None, stream, true, encoder))),
                        Err(e) => Some((
                            Err(std::io::Error::other(e.to_string())),
                            (None, None, stream, true, encoder),
                        )),
                    },
                    Some(Ok(batch)) => match encoder.batch(&batch, &mut out) {
                        Ok(()) => {
                            Some((Ok(Bytes::from(out)), (None, None, stream, false, encoder)))
                        }
                        Err(e) => Some((
                            Err(std::io::Error::other(e.to_string())),
                            (None, None, stream, true, encoder),
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
                        Some((Ok(Bytes::from(out)), (None, None, stream, true, encoder)))
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
