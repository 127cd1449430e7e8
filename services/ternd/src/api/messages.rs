//! The message service's failed messages and channel resync (operator).

use super::*;

/// Failed messages kept for the operator (oldest first).
pub(super) async fn failed_messages(State(d): St, headers: HeaderMap) -> ApiResult {
    operator(&d, &headers)?;
    let failed = d.messaging.failed_messages(1000).await?;
    Ok(axum::Json(json!({ "messages": failed })))
}

/// `retry` or `discard` a failed message (operator).
pub(super) async fn failed_message_action(
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
pub(super) async fn resync_channel(
    State(d): St,
    headers: HeaderMap,
    Path(peer): Path<String>,
) -> ApiResult {
    operator(&d, &headers)?;
    let peer = DeploymentId::new(peer.as_str())?;
    let r = d.resync_channel(&peer).await?;
    let v =
        serde_json::to_value(&r).map_err(|e| Error::internal("encode resync")(e.to_string()))?;
    Ok(axum::Json(v))
}
