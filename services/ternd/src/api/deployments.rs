//! The deployment group: `/v1/deployments` (add a peer, register its channel, list),
//! planned maintenance of a peer, availability.

use super::*;

pub(super) async fn create_deployment(
    State(d): St,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<api::DeploymentCreated>)> {
    operator(&d, &headers)?;
    let req: api::CreateDeployment = body.json()?;
    let peer_genesis: Option<tern_messaging::ChannelGenesis> = req
        .genesis
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Error::Invalid(format!("bad genesis: {e}")))?;
    let dpo = DeploymentDpo {
        id: DeploymentId::new(req.id.as_str())?,
        region: req.region,
        cloud: req.cloud,
        replication_bucket_url: req.replication_bucket_url,
        credentials_ref: None,
        added_at_ms: 0,
    };
    let added = d.create_deployment(dpo, peer_genesis).await?;
    let genesis = added
        .genesis
        .map(|g| {
            serde_json::to_value(g).map_err(|e| Error::internal("encode genesis")(e.to_string()))
        })
        .transpose()?;
    // 200 for a peer known already: a link run again, completed or repeated.
    Ok((
        if added.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(api::DeploymentCreated {
            deployment: req.id,
            genesis,
        }),
    ))
}

pub(super) async fn register_channel(
    State(d): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<axum::Json<api::ChannelRegistered>> {
    operator(&d, &headers)?;
    let g: tern_messaging::ChannelGenesis = body.json()?;
    if g.sender.as_str() != id {
        return Err(Error::Invalid(format!(
            "the genesis is of a channel from {}, not {id}",
            g.sender
        ))
        .into());
    }
    d.register_channel(&g).await?;
    Ok(axum::Json(api::ChannelRegistered {
        registered: format!("{}->{}", g.sender, g.receiver),
    }))
}

pub(super) async fn list_deployments(
    State(d): St,
    headers: HeaderMap,
) -> ApiResult<axum::Json<api::DeploymentList>> {
    principal(&d, &headers)?;
    let members = d.meta.read(|tx| tx.list_deployments())?;
    let mut deployments = Vec::new();
    for m in members {
        let view: Option<PeerViewDpo> = d.meta.read(|tx| tx.get(&peer_view_key(m.id.as_str())))?;
        let outbound = d.messaging.outbound(&m.id).await?;
        let inbound = d.messaging.inbound(&m.id).await?;
        deployments.push(api::Deployment {
            is_self: m.id == d.id,
            id: m.id.as_str().to_string(),
            region: m.region,
            cloud: m.cloud,
            replication_bucket_url: m.replication_bucket_url,
            added_at_ms: m.added_at_ms,
            files_sent: outbound.as_ref().map(|c| c.files_written),
            files_received: inbound.as_ref().map(|c| c.files_received),
            peer_members: view.as_ref().map(|v| v.members.clone()),
            peer_messages: view.as_ref().map(|v| v.messages),
            last_heartbeat_ms: view.as_ref().and_then(|v| v.last_heartbeat_ms),
        });
    }
    Ok(axum::Json(api::DeploymentList { deployments }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Maintenance {
    on: bool,
}

/// Planned maintenance of a peer (operator): it counts as unavailable until put back.
pub(super) async fn maintenance(
    State(d): St,
    headers: HeaderMap,
    Path(peer): Path<String>,
    body: Body,
) -> ApiResult<axum::Json<api::MaintenanceSet>> {
    operator(&d, &headers)?;
    let req: Maintenance = body.json()?;
    let peer = DeploymentId::new(&peer)?;
    let state = d.replication.set_maintenance(&peer, req.on)?;
    Ok(axum::Json(api::MaintenanceSet {
        deployment: peer.as_str().to_string(),
        state: state.name().to_string(),
    }))
}

/// `show availability` (operator): every peer's state and the recent notifications.
pub(super) async fn availability(
    State(d): St,
    headers: HeaderMap,
) -> ApiResult<axum::Json<api::AvailabilityView>> {
    operator(&d, &headers)?;
    Ok(axum::Json(api::AvailabilityView {
        peers: wire("availability", &d.replication.availability()?)?,
        history: wire(
            "availability history",
            &d.replication.availability_history(200)?,
        )?,
    }))
}
