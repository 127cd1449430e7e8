//! The message service's failed messages and channel resync (operator).

use super::*;

/// Failed messages kept for the operator (oldest first).
pub(super) async fn failed_messages(
    State(d): St,
    headers: HeaderMap,
) -> ApiResult<axum::Json<api::FailedMessages>> {
    operator(&d, &headers)?;
    let failed = d.messaging.failed_messages(1000).await?;
    Ok(axum::Json(api::FailedMessages {
        messages: wire("failed messages", &failed)?,
    }))
}

/// `retry` or `discard` a failed message (operator).
pub(super) async fn failed_message_action(
    State(d): St,
    headers: HeaderMap,
    Path((peer, id, action)): Path<(String, String, String)>,
) -> ApiResult<axum::Json<api::MessageActionDone>> {
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
    Ok(axum::Json(api::MessageActionDone {
        peer: peer.as_str().to_string(),
        id: id.as_str().to_string(),
        done: action,
    }))
}

/// Resynchronises the channel from `peer` past a file it cannot read (operator): see
/// `tern_messaging::resync`.
pub(super) async fn resync_channel(
    State(d): St,
    headers: HeaderMap,
    Path(peer): Path<String>,
) -> ApiResult<axum::Json<api::Resynced>> {
    operator(&d, &headers)?;
    let peer = DeploymentId::new(peer.as_str())?;
    let r = d.resync_channel(&peer).await?;
    Ok(axum::Json(wire("resync", &r)?))
}
