//! Tables: DDL, inserts and loads, DML, scans, versions, and idempotent writes
//! (`Idempotency-Key`, see the module docs of [`crate::api`]).

use super::*;

pub(super) fn table_info(t: &TableDpo) -> api::TableInfo {
    api::TableInfo {
        schema: t.schema.clone(),
        name: t.name.clone(),
        id: t.id.as_str().to_string(),
        version: t.current_version,
        columns: t
            .columns
            .iter()
            .map(|c| api::ColumnInfo {
                name: c.name.clone(),
                ty: c.ty.to_string(),
                nullable: c.nullable,
            })
            .collect(),
    }
}

pub(super) async fn list_tables(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::TableList>> {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let tables = d.meta.read(|tx| tx.list_tables(&db.id))?;
    Ok(axum::Json(api::TableList {
        tables: tables.iter().map(table_info).collect(),
    }))
}

#[derive(Deserialize)]
pub(super) struct ColumnReq {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default = "yes")]
    nullable: bool,
}

pub(super) fn yes() -> bool {
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
pub(super) struct CreateTable {
    name: String,
    columns: Vec<ColumnReq>,
}

pub(super) async fn create_table(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname, schema)): Path<(String, String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<api::TableInfo>)> {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let req: CreateTable = body.json()?;
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
    Ok((StatusCode::CREATED, axum::Json(table_info(&t))))
}

pub(super) type TablePath = Path<(String, String, String, String)>;

pub(super) fn resolve(
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
pub(super) fn resolve_writable(
    d: &Daemon,
    headers: &HeaderMap,
    p: &(String, String, String, String),
) -> Result<(AccountId, TableDpo)> {
    let t = resolve(d, headers, p)?;
    Ok((AccountId::new(p.0.as_str())?, t))
}

pub(super) async fn describe_table(
    State(d): St,
    headers: HeaderMap,
    Path(p): TablePath,
) -> ApiResult<axum::Json<api::TableInfo>> {
    let t = resolve(&d, &headers, &p)?;
    Ok(axum::Json(table_info(&t)))
}

pub(super) async fn drop_table(
    State(d): St,
    headers: HeaderMap,
    Path(p): TablePath,
) -> ApiResult<axum::Json<api::TableDropped>> {
    let t = resolve(&d, &headers, &p)?;
    d.tables.drop_table(&t.id).await?;
    Ok(axum::Json(api::TableDropped { dropped: t.name }))
}

pub(super) async fn add_column(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: Body,
) -> ApiResult<Response> {
    let (account, t) = resolve_writable(&d, &headers, &p)?;
    let bytes = body.bytes()?;
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
pub(super) fn changed(d: &Daemon, result: tern_table::Result<CommitInfo>) -> Result<CommitInfo> {
    let info = result.map_err(|e| in_doubt(d, e))?;
    d.counters
        .rows_changed
        .fetch_add(info.rows_affected, Ordering::Relaxed);
    Ok(info)
}

pub(super) fn commit_answer(i: &CommitInfo) -> api::CommitAnswer {
    api::CommitAnswer {
        version: Some(i.version),
        committed: i.committed,
        rows: Some(i.rows_affected),
        files_added: Some(i.files_added as u64),
        files_removed: Some(i.files_removed as u64),
        txn_id: i.txn_id,
        replayed: None,
    }
}

/// The header a write's idempotency key comes in.
pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header that marks an answer given again for a retried key.
pub(super) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, checked, with the digest of what it came with
/// (`method`, path and query of `uri`, its Content-Type — which can decide how an insert
/// reads its body — and `body`); `None` without the header.
pub(super) async fn idempotency_key(
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
pub(super) fn request_hash(parts: &[&[u8]]) -> String {
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
pub(super) fn check_idempotency_key(raw: &[u8]) -> Result<String> {
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
pub(super) async fn statement(
    d: &Daemon,
    account: &AccountId,
    key: Option<IdempotencyKey>,
    run: impl std::future::Future<Output = Result<CommitInfo>>,
) -> ApiResult<Response> {
    let Some(key) = key else {
        return Ok(axum::Json(commit_answer(&run.await?)).into_response());
    };
    if let Some(first) = d.txn.idempotency(account, &key.key)? {
        return replay(d, account, &key, first).await;
    }
    let outcome = tern_table::with_idempotency_key(key.clone(), run).await;
    keyed_outcome(d, account, &key, outcome).await
}

/// The answer to a statement run with idempotency `key`.
pub(super) async fn keyed_outcome(
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
            Ok(axum::Json(commit_answer(&info)).into_response())
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
pub(super) async fn replay(
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
        Some(o) => commit_answer(&o.commit_info(first.txn_id)),
        None => api::CommitAnswer {
            version: None,
            committed: true,
            rows: None,
            files_added: None,
            files_removed: None,
            txn_id: first.txn_id,
            replayed: None,
        },
    };
    body.replayed = Some(true);
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
pub(super) fn in_doubt(d: &Daemon, e: tern_table::Error) -> Error {
    let e = redirected(d, e);
    if e.is_in_doubt() {
        d.counters.in_doubt.fetch_add(1, Ordering::Relaxed);
        d.recover_wake.notify_one();
    }
    e.into()
}

#[derive(Deserialize)]
pub(super) struct InsertQuery {
    format: Option<String>,
}

pub(super) fn body_format(
    headers: &HeaderMap,
    q: &InsertQuery,
) -> Result<Option<tern_table::load::Format>> {
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
pub(super) async fn insert(
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
        return Ok(axum::Json(commit_answer(&info)).into_response());
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
pub(super) fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>> {
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
pub(super) async fn drain_digest(mut ingest: crate::ingest::Ingest) -> Result<String> {
    while let Some(b) = ingest.batches.next().await {
        b?;
    }
    ingest
        .request_hash
        .get()
        .cloned()
        .ok_or_else(|| Error::Invalid("the request body was not read to its end".into()))
}

pub(super) async fn insert_rows(
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
pub(super) struct DmlReq {
    #[serde(rename = "where")]
    predicate: Option<Value>,
    set: Option<Value>,
    keys: Option<Vec<String>>,
    rows: Option<Vec<Value>>,
}

pub(super) fn where_of(r: &DmlReq, columns: &[ColumnDef]) -> Result<tern_table::Predicate> {
    let w = r.predicate.as_ref().ok_or_else(|| {
        Error::Invalid("\"where\" is required (use \"where\": true for every row)".into())
    })?;
    rows::predicate(w, columns)
}

/// A DML request: the table, its account, the request parsed, and its idempotency key.
pub(super) async fn dml(
    d: &Daemon,
    headers: &HeaderMap,
    uri: &Uri,
    p: &(String, String, String, String),
    body: Body,
) -> Result<(AccountId, TableDpo, DmlReq, Option<IdempotencyKey>)> {
    let (account, t) = resolve_writable(d, headers, p)?;
    let bytes = body.bytes()?;
    let key = idempotency_key(headers, "POST", uri, &bytes).await?;
    Ok((account, t, json_body(&bytes)?, key))
}

pub(super) async fn delete_rows(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: Body,
) -> ApiResult<Response> {
    let (account, t, r, key) = dml(&d, &headers, &uri, &p, body).await?;
    statement(&d, &account, key, async {
        let pred = where_of(&r, &t.columns)?;
        changed(&d, d.tables.delete(&t.id, &pred).await)
    })
    .await
}

pub(super) async fn update_rows(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: Body,
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

pub(super) async fn merge_rows(
    State(d): St,
    headers: HeaderMap,
    uri: Uri,
    Path(p): TablePath,
    body: Body,
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
pub(super) struct ScanReq {
    columns: Option<Vec<String>>,
    #[serde(rename = "where")]
    predicate: Option<Value>,
    version: Option<u64>,
    limit: Option<usize>,
    format: Option<String>,
}

/// How a scan's rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanFormat {
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
pub(super) async fn scan(
    State(d): St,
    headers: HeaderMap,
    Path(p): TablePath,
    Query(q): Query<InsertQuery>,
    body: Body,
) -> ApiResult<Response> {
    let t = resolve(&d, &headers, &p)?;
    let r: ScanReq = body.json_or_default()?;
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
            let mut head = serde_json::to_string(&api::ScanHead {
                version: scan.version,
                columns: names.clone(),
                files_total: scan.files_total as u64,
            })
            .map_err(|e| Error::internal("encode scan head")(e.to_string()))?;
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
pub(super) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The state of a streamed scan answer.
pub(super) struct ScanBody {
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
                            (Some(n), _) => Some(n),
                            (None, false) => Some(self.returned as u64),
                            (None, true) => None,
                        };
                        let tail = serde_json::to_string(&api::ScanTail {
                            row_count: self.returned as u64,
                            matched,
                            truncated: self.truncated,
                            files_read: (self.files_read)() as u64,
                        })
                        .unwrap_or_default();
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
        let error = api::ErrorBody {
            error: api::ErrorDetail {
                kind: e.kind().name().to_string(),
                message: e.to_string(),
                txn_id: None,
                epoch: None,
                redirect: None,
            },
        };
        match self.format {
            ScanFormat::Json => {
                out.extend_from_slice(b"],\"error\":");
                // Strings and options only: serialising cannot fail.
                out.extend_from_slice(
                    serde_json::to_string(&error.error)
                        .unwrap_or_default()
                        .as_bytes(),
                );
                out.push(b'}');
            }
            ScanFormat::Ndjson => {
                out.extend_from_slice(serde_json::to_string(&error).unwrap_or_default().as_bytes());
                out.push(b'\n');
            }
            ScanFormat::Csv => {}
        }
        self.abort = Some(e.to_string());
        Bytes::from(out)
    }
}

pub(super) async fn versions(
    State(d): St,
    headers: HeaderMap,
    Path(p): TablePath,
) -> ApiResult<axum::Json<api::VersionList>> {
    let t = resolve(&d, &headers, &p)?;
    let v = d.meta.read(|tx| tx.table_versions(&t.id))?;
    Ok(axum::Json(api::VersionList {
        table: t.name,
        current: t.current_version,
        versions: v
            .iter()
            .map(|v| api::VersionInfo {
                version: v.version,
                committed_at_ms: v.committed_at_ms,
                txn_id: v.txn_id,
                files_added: v.added.len() as u64,
                files_removed: v.removed.len() as u64,
            })
            .collect(),
    }))
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
