//! Database replication: enable it, replicas, schedules, refresh, replication status
//! and jobs.

use super::*;

/// `alter database X enable replication [to accounts …]` (it becomes the primary of a new
/// database group; only the listed accounts may replicate it) or, with `enable: false`,
/// makes a global database local again.
pub(super) async fn set_replication(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: Body,
) -> ApiResult<axum::Json<api::ReplicationSet>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let req: api::SetReplication = body.json()?;
    let group = if req.enable {
        Some(
            d.replication
                .enable_replication_to(&id, &db.name, req.accounts.as_deref())?,
        )
    } else {
        d.replication.disable_replication(&id, &db.name)?;
        None
    };
    Ok(axum::Json(api::ReplicationSet {
        database: db.name,
        enabled: req.enable,
        group,
        accounts: req.accounts,
    }))
}

/// `create database X as replica of <group>`: a read-only secondary replica; its first
/// refresh is asked for at once.
pub(super) async fn create_replica(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<api::ReplicaCreated>)> {
    let id = account(&d, &headers, &acct)?;
    let req: api::CreateReplica = body.json()?;
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
        axum::Json(api::ReplicaCreated {
            database: db.as_str().to_string(),
            group: req.group.trim().to_string(),
            name: req.name,
            upstream: upstream.map(|u| u.as_str().to_string()),
        }),
    ))
}

pub(super) async fn drop_replica(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::ReplicaDropped>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    d.replication.drop_replica(&id, &db.name)?;
    Ok(axum::Json(api::ReplicaDropped { dropped: db.name }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetSchedule {
    schedule: String,
}

/// `alter database X set schedule = …`: when a replica is brought up to date
/// (`continuous`, `every 5m`, `daily 02:30` UTC).
pub(super) async fn set_schedule(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: Body,
) -> ApiResult<axum::Json<api::ScheduleSet>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let req: SetSchedule = body.json()?;
    let schedule: tern_replication::schedule::Schedule =
        req.schedule.parse().map_err(Error::Invalid)?;
    let request = d.replication.set_schedule(&db.id, schedule)?;
    Ok(axum::Json(api::ScheduleSet {
        database: db.name,
        schedule: schedule.to_string(),
        request,
    }))
}

/// `alter database X refresh`: ask the upstream for a refresh now (an already pending
/// request is kept and returned).
pub(super) async fn refresh(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::RefreshRequested>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let request = d
        .replication
        .request_refresh(&db.id, "requested through the API")?;
    Ok(axum::Json(api::RefreshRequested {
        database: db.name,
        request,
    }))
}

/// Every copy and import job (operator).
pub(super) async fn replication_jobs(
    State(d): St,
    headers: HeaderMap,
) -> ApiResult<axum::Json<api::JobList>> {
    operator(&d, &headers)?;
    let jobs = d
        .replication
        .jobs()?
        .into_iter()
        .map(|j| api::Job {
            kind: enum_name(&j.kind),
            id: j.id,
            peer: j.peer.as_str().to_string(),
            group: j.group,
            attempts: j.attempts,
            state: enum_name(&j.state),
            next_attempt_at_ms: j.next_attempt_at_ms,
            last_error: j.last_error,
        })
        .collect();
    Ok(axum::Json(api::JobList { jobs }))
}

/// `retry` or `abandon` a copy or import job (operator).
pub(super) async fn replication_job_action(
    State(d): St,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::Job>> {
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
    Ok(axum::Json(wire("job", &job)?))
}

pub(super) async fn replication_status(
    State(d): St,
    headers: HeaderMap,
) -> ApiResult<axum::Json<api::ReplicationStatus>> {
    operator(&d, &headers)?;
    let status = d.replication.status().await?;
    Ok(axum::Json(wire("replication status", &status)?))
}

/// One database's place in its group as this deployment sees it (the account's token):
/// what `tern … --wait` follows a refresh, a failover or a switchover with.
pub(super) async fn database_replication(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::DatabaseReplication>> {
    let id = account(&d, &headers, &acct)?;
    let db = database(&d, &id, &dbname)?;
    let me = d.replication.me().clone();
    let names = |v: &[DeploymentId]| v.iter().map(|m| m.as_str().to_string()).collect();
    let peers = d.replication.availability()?;
    let down: Vec<DeploymentId> = peers
        .iter()
        .filter(|p| p.state.is_down())
        .map(|p| p.peer.clone())
        .collect();
    let mut out = api::DatabaseReplication {
        deployment: me.as_str().to_string(),
        account: id.as_str().to_string(),
        database: db.name.clone(),
        role: enum_name(&db.role),
        group: db.replication_group.clone(),
        epoch: db.epoch,
        group_epoch: db.epoch,
        primary: None,
        primary_state: None,
        writable: db.role == tern_meta::DatabaseRole::Local,
        members: Vec::new(),
        following: Vec::new(),
        down: names(&down),
        replica: None,
    };
    if db.replication_group.is_none() {
        return Ok(axum::Json(out));
    }
    let g = d.replication.group_state(&db)?;
    out.group_epoch = g.epoch;
    out.primary = g.primary.as_ref().map(|p| p.as_str().to_string());
    out.primary_state = g.primary.as_ref().and_then(|p| {
        peers
            .iter()
            .find(|x| &x.peer == p)
            .map(|x| enum_name(&x.state))
    });
    if db.role == tern_meta::DatabaseRole::Primary && g.primary.as_ref() == Some(&me) {
        let now = d.now_ms();
        out.writable = g.handoff.is_none()
            && g.epoch == db.epoch
            && g.lease_until(&me, d.replication.lease())
                .is_none_or(|until| now < until);
        out.members = names(&g.members);
        out.following = g
            .acks
            .keys()
            .filter(|m| **m != me)
            .map(|m| m.as_str().to_string())
            .collect();
    }
    if db.role == tern_meta::DatabaseRole::Secondary {
        let status = d.replication.status().await?;
        out.replica = status
            .replicas
            .into_iter()
            .find(|r| r.account == id && r.database == db.name)
            .map(|r| wire("replica status", &r))
            .transpose()?;
    }
    Ok(axum::Json(out))
}
