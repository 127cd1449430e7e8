//! Failover and failback: promotion, switchover, the failover policy, conflict records,
//! connections (where a client should go now).

use super::*;

/// `alter database X primary`: promote this deployment's secondary replica (see
/// `tern_replication::failover`). Answers the measured RTO and the known loss; refused
/// with the reason (primary still heard, loss beyond the RPO, no majority) unless
/// `allow_data_loss`.
pub(super) async fn failover(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: Body,
) -> ApiResult<axum::Json<api::FailoverReport>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let req: api::FailoverRequest = body.json()?;
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
    Ok(axum::Json(api::FailoverReport {
        group: report.group,
        database: report.database,
        epoch: report.epoch,
        previous_primary: report.previous_primary.map(|p| p.as_str().to_string()),
        previous_primary_state: report.previous_primary_state.as_ref().map(enum_name),
        known_loss_txns: report.known_loss_txns,
        known_loss_ms: report.known_loss_ms,
        primary_silent_ms: report.primary_silent_ms,
        drained: report.drained,
        drain_timed_out: report.drain_timed_out,
        rto_ms: report.rto_ms,
        lease_held: report.lease_held,
        max_unavailable_ms: report.max_unavailable_ms,
        forced: report.forced,
    }))
}

/// Planned switchover: this deployment's secondary replica becomes the group's primary
/// with nothing lost (see `Replication::switchover`); on the primary already, nothing to
/// do. Answers the write pause.
pub(super) async fn switchover(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::SwitchoverReport>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let r = d.replication.switchover(&id, &db.name).await?;
    Ok(axum::Json(api::SwitchoverReport {
        group: r.group,
        database: r.database,
        epoch: r.epoch,
        previous_primary: r.previous_primary.map(|p| p.as_str().to_string()),
        applied_seq: r.applied_seq,
        pause_ms: r.pause_ms,
        lease_held: r.lease_held,
    }))
}

/// The failover policy of a database's group.
pub(super) async fn get_policy(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::PolicyView>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let g = d.replication.group_state(&db)?;
    Ok(axum::Json(api::PolicyView {
        database: db.name,
        group: g.group,
        epoch: g.epoch,
        primary: g.primary.map(|p| p.as_str().to_string()),
        policy: encode("policy", &g.policy)?,
    }))
}

/// `v` as JSON (a part of an answer whose shape is the engine's).
fn encode<T: serde::Serialize>(what: &'static str, v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::internal(what)(e.to_string()))
}

/// A connection as the API answers it.
fn connection(v: tern_replication::connection::ConnectionView) -> api::Connection {
    api::Connection {
        name: v.name,
        group: v.group,
        primary: v.primary.map(|p| p.as_str().to_string()),
        epoch: v.epoch,
        url: v.url,
        made_on: v.made_on.as_str().to_string(),
    }
}

/// Sets the failover policy (on the group's primary; heartbeats carry it to the members).
pub(super) async fn set_policy(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: Body,
) -> ApiResult<axum::Json<api::PolicySet>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let policy: tern_replication::FailoverPolicy = body.json()?;
    d.replication.set_policy(&id, &db.name, policy.clone())?;
    Ok(axum::Json(api::PolicySet {
        database: db.name,
        policy: encode("policy", &policy)?,
    }))
}

/// Conflict records kept here (operator).
pub(super) async fn conflicts(
    State(d): St,
    headers: HeaderMap,
) -> ApiResult<axum::Json<api::ConflictList>> {
    operator(&d, &headers)?;
    Ok(axum::Json(api::ConflictList {
        conflicts: wire("conflicts", &d.replication.conflicts()?)?,
    }))
}

/// One conflict record with the rows it added and removed per table (operator).
pub(super) async fn conflict_show(
    State(d): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<api::ConflictShow>> {
    operator(&d, &headers)?;
    let (record, tables) = d.replication.conflict_rows(&id).await?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        out.push(api::ConflictTable {
            table: t.table.as_str().to_string(),
            name: t.name,
            version: t.version,
            added: row_objects(&t.added)?,
            removed: t.removed.as_deref().map(row_objects).transpose()?,
        });
    }
    Ok(axum::Json(api::ConflictShow {
        conflict: wire("conflict", &record)?,
        tables: out,
    }))
}

/// Rows as JSON objects, column name to value (free-form: the columns are the user's).
fn row_objects(batches: &[arrow::array::RecordBatch]) -> Result<Vec<Value>> {
    match rows::batches_to_json(batches)? {
        Value::Array(rows) => Ok(rows),
        other => Err(Error::internal("encode rows")(format!(
            "not an array of rows: {other}"
        ))),
    }
}

/// Applies a conflict record on this deployment, the group's primary (operator): 400 when
/// the rows it changed were changed since, or this is not the primary.
pub(super) async fn conflict_apply(
    State(d): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<api::ConflictApplied>> {
    operator(&d, &headers)?;
    let applied = d.replication.apply_conflict(&id).await?;
    Ok(axum::Json(wire("apply", &applied)?))
}

/// Discards a conflict record (operator): kept as history, its files deleted.
pub(super) async fn conflict_discard(
    State(d): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<api::Conflict>> {
    operator(&d, &headers)?;
    let record = d.replication.discard_conflict(&id).await?;
    Ok(axum::Json(wire("conflict", &record)?))
}

/// `create connection`: a global object naming a database group; resolving it on any
/// member gives the group's current primary and its URL.
pub(super) async fn create_connection(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<api::Connection>)> {
    let id = account(&d, &headers, &acct)?;
    let req: api::CreateConnection = body.json()?;
    let view = d
        .replication
        .create_connection(&id, req.name.trim(), req.group.trim())?;
    Ok((StatusCode::CREATED, axum::Json(connection(view))))
}

/// `show connections`: every connection of the account's group, resolved here.
pub(super) async fn list_connections(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::ConnectionList>> {
    let id = account(&d, &headers, &acct)?;
    Ok(axum::Json(api::ConnectionList {
        connections: d
            .replication
            .connections(&id)?
            .into_iter()
            .map(connection)
            .collect(),
    }))
}

/// Where a connection leads now (what `tern --connection` asks any reachable member).
pub(super) async fn resolve_connection(
    State(d): St,
    headers: HeaderMap,
    Path((acct, name)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::Connection>> {
    let id = account(&d, &headers, &acct)?;
    let view = d.replication.resolve_connection(&id, &name)?;
    Ok(axum::Json(connection(view)))
}
