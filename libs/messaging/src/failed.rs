//! Failed messages: kept for the operator, never for ever.
//!
//! A message whose handler failed permanently (or `max_attempts` times) is Failed: not
//! applied, its row and files kept so an operator can see why and act —
//! [`Context::retry_failed`] runs its handler again with fresh attempts,
//! [`Context::discard_failed`] gives it up. Either way, or by itself once
//! `failed_retention` has passed ([`Context::expire_failed`], run by the cleaner), a
//! given-up message is cleaned up like a handled one: body files deleted, its id
//! remembered as seen (a replay is not handled), its row removed, and its message file
//! deleted with the file's last live message.

use serde::{Deserialize, Serialize};
use tern_storage::layout::{DeploymentId, MessageId};

use crate::error::{Error, Result};
use crate::service::{Context, Counters};
use crate::state::{InMessage, InState, QueueEntry, keys};

/// A Failed message, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMessage {
    /// Its sender.
    pub peer: DeploymentId,
    /// Its id.
    pub id: MessageId,
    /// Its type.
    pub message_type: String,
    /// Handler runs.
    pub attempts: u32,
    /// The last handler error.
    pub last_error: Option<String>,
    /// When it failed.
    pub failed_at_ms: Option<i64>,
    /// When it is cleaned up by itself (`failed_retention` after it failed).
    pub expires_at_ms: Option<i64>,
}

impl Context {
    fn retention_ms(&self) -> i64 {
        i64::try_from(self.config.failed_retention.as_millis()).unwrap_or(i64::MAX)
    }

    /// Failed messages, oldest first (at most `limit`).
    pub async fn failed_messages(&self, limit: usize) -> Result<Vec<FailedMessage>> {
        let retention = self.retention_ms();
        self.read("list failed messages", move |tx| {
            let mut out = Vec::new();
            for (_, e) in tx
                .scan_prefix_limit::<QueueEntry>(&keys::queue(InState::Failed), limit)
                .map_err(Error::meta("scan failed"))?
            {
                if let Some(row) = tx
                    .get::<InMessage>(&keys::in_message(&e.peer, &e.id))
                    .map_err(Error::meta("read message"))?
                    .filter(|r| r.state == InState::Failed)
                {
                    out.push(FailedMessage {
                        peer: e.peer,
                        id: e.id,
                        message_type: row.message.message_type.to_string(),
                        attempts: row.attempts,
                        last_error: row.last_error.clone(),
                        failed_at_ms: row.failed_at_ms,
                        expires_at_ms: row.failed_at_ms.map(|f| f.saturating_add(retention)),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// How many messages are Failed (their queue entries only, no row is read).
    pub async fn failed_count(&self) -> Result<usize> {
        self.read("count failed messages", move |tx| {
            Ok(tx
                .scan_prefix::<QueueEntry>(&keys::queue(InState::Failed))
                .map_err(Error::meta("scan failed"))?
                .len())
        })
        .await
    }

    /// Moves Failed message `id` of `peer` to `to` (Ready for processing: its handler runs
    /// again with fresh attempts; ReadyForCleanup: given up).
    async fn move_failed(&self, peer: &DeploymentId, id: &MessageId, to: InState) -> Result<()> {
        let (peer, id) = (peer.clone(), id.clone());
        let now = self.now_ms();
        self.write("move a failed message", move |tx| {
            let rkey = keys::in_message(&peer, &id);
            let Some(mut row) = tx
                .get::<InMessage>(&rkey)
                .map_err(Error::meta("read message"))?
                .filter(|r| r.state == InState::Failed)
            else {
                return Err(Error::Invalid {
                    what: "failed message",
                    reason: format!("no Failed message {id} from {peer} here"),
                });
            };
            move_row(tx, &mut row, to, now)
        })
        .await?;
        match to {
            InState::ReadyForProcessing => self.processor_wake.notify_one(),
            _ => self.cleaner_wake.notify_one(),
        }
        Ok(())
    }

    /// Runs a Failed message's handler again, with fresh attempts.
    pub async fn retry_failed(&self, peer: &DeploymentId, id: &MessageId) -> Result<()> {
        self.move_failed(peer, id, InState::ReadyForProcessing)
            .await?;
        tracing::warn!(%peer, message = %id, "failed message retried by the operator");
        Ok(())
    }

    /// Gives a Failed message up: it is cleaned up (never applied; a replay is not handled).
    pub async fn discard_failed(&self, peer: &DeploymentId, id: &MessageId) -> Result<()> {
        self.move_failed(peer, id, InState::ReadyForCleanup).await?;
        tracing::warn!(%peer, message = %id, "failed message discarded by the operator");
        Ok(())
    }

    /// Cleaner: gives up (up to `limit`) Failed messages older than `failed_retention`.
    /// How many.
    pub async fn expire_failed(&self, limit: usize) -> Result<usize> {
        let cutoff = self.now_ms().saturating_sub(self.retention_ms());
        let now = self.now_ms();
        let n = self
            .write("expire failed messages", move |tx| {
                let mut n = 0;
                // The Failed queue is in the order messages reached it: the oldest first.
                for (_, e) in tx
                    .scan_prefix_limit::<QueueEntry>(&keys::queue(InState::Failed), limit)
                    .map_err(Error::meta("scan failed"))?
                {
                    let rkey = keys::in_message(&e.peer, &e.id);
                    let Some(mut row) = tx
                        .get::<InMessage>(&rkey)
                        .map_err(Error::meta("read message"))?
                        .filter(|r| r.state == InState::Failed)
                    else {
                        continue;
                    };
                    if row.failed_at_ms.unwrap_or(row.received_at_ms) > cutoff {
                        continue;
                    }
                    tracing::warn!(peer = %e.peer, message = %e.id, error = ?row.last_error, "failed message past its retention: cleaned up");
                    move_row(tx, &mut row, InState::ReadyForCleanup, now)?;
                    n += 1;
                }
                Ok(n)
            })
            .await?;
        if n > 0 {
            Counters::add(&self.counters.failed_expired, n as u64);
            self.cleaner_wake.notify_one();
        }
        Ok(n)
    }
}

/// Moves `row` (Failed) to the queue of `to`, under the same queue position.
fn move_row(
    tx: &mut tern_meta::MetaTxn<'_>,
    row: &mut InMessage,
    to: InState,
    now: i64,
) -> Result<()> {
    let entry = QueueEntry {
        peer: row.message.origin.clone(),
        id: row.message.id.clone(),
    };
    tx.delete(&keys::queue(InState::Failed).u64(row.queue_seq))
        .map_err(Error::meta("dequeue"))?;
    row.state = to;
    if to == InState::ReadyForProcessing {
        row.attempts = 0;
        row.not_before_ms = now;
        row.failed_at_ms = None;
    }
    tx.put(&keys::queue(to).u64(row.queue_seq), &entry)
        .map_err(Error::meta("queue message"))?;
    tx.put(&keys::in_message(&entry.peer, &entry.id), &*row)
        .map_err(Error::meta("move message"))
}
