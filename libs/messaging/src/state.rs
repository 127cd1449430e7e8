//! What the message service keeps in the metadata store, and where.
//!
//! | key | value | side |
//! |---|---|---|
//! | `chan/out/<peer>` | [`OutChannel`]: next seq, its diversifier, pending file | sender |
//! | `msg/out/<peer>/<id>` | [`OutMessage`] | sender |
//! | `msg/ready/<peer>/<u64>` | [`QueueEntry`] ready-to-send order | sender |
//! | `msg/prep/<peer>/<id>` | [`QueueEntry`] messages in Preparing (aging) | sender |
//! | `msg/sent/<peer>/<u64 ms>/<id>` | [`QueueEntry`] Sent rows to prune | sender |
//! | `chan/in/<peer>` | [`InChannel`]: expected seq and diversifier, stall | receiver |
//! | `chan/rej/<peer>/<u64>` | [`Rejection`] | receiver |
//! | `msg/in/<peer>/<id>` | [`InMessage`] | receiver |
//! | `msg/q/<state>/<u64>` | [`QueueEntry`] per-state work queues | receiver |
//! | `msg/file/<peer>/<seq>` | [`ReceivedFile`]: messages still live | receiver |
//! | `msg/filedel/<peer>/<seq>` | [`QueueEntry`] message files to delete | receiver |
//! | `msg/orphan/<peer>/<id>` | [`Orphan`]: body files to delete | receiver |
//! | `msg/seen/<peer>/<id>` | [`Seen`]: digest of a processed message (dedupe) | receiver |
//!
//! Every value is JSON in `tern-meta`'s versioned envelope (version 1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_crypto::Diversifier;
use tern_meta::Key;
use tern_storage::layout::{DeploymentId, MessageId};

use crate::message::GlobalMessage;

use tern_meta::impl_dpo as dpo;

/// The sender's side of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutChannel {
    /// This deployment.
    pub sender: DeploymentId,
    /// The peer.
    pub receiver: DeploymentId,
    /// Sequence number of the next file to write.
    pub next_seq: u64,
    /// The diversifier announced for it (agreed at creation for the first file).
    pub next_diversifier: Diversifier,
    /// A file claimed but not yet confirmed written.
    pub pending: Option<PendingFile>,
    /// Files written so far.
    pub files_written: u64,
    /// When the last file was written.
    pub last_file_at_ms: Option<i64>,
    /// When the channel was created.
    pub created_at_ms: i64,
}
dpo!(OutChannel, "outbound channel");

/// A message file decided (its content is fixed) but not yet known to be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFile {
    /// Its sequence number (= the channel's `next_seq`).
    pub seq: u64,
    /// Its messages, in order.
    pub ids: Vec<MessageId>,
    /// The sequence number it announces.
    pub next_seq: u64,
    /// The diversifier it announces.
    pub next_diversifier: Diversifier,
    /// When it was claimed.
    pub claimed_at_ms: i64,
}

/// Sender-side state of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutState {
    /// Created; body files may be uploading.
    Preparing,
    /// Waiting for the next message file.
    ReadyToSend,
    /// In a pending message file.
    Sending,
    /// In a written message file.
    Sent,
}

impl OutState {
    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            OutState::Preparing => "Preparing",
            OutState::ReadyToSend => "ReadyToSend",
            OutState::Sending => "Sending",
            OutState::Sent => "Sent",
        }
    }
}

/// A message on the sender side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutMessage {
    /// The message (bodies filled in as they upload).
    pub message: GlobalMessage,
    /// Its state.
    pub state: OutState,
    /// Body uploads started (an upload may have left an object even if it failed):
    /// a cleanup message deletes indexes `0..bodies_started`.
    pub bodies_started: u32,
    /// The file it went out in.
    pub file_seq: Option<u64>,
    /// When it was marked ready / sent.
    pub ready_at_ms: Option<i64>,
    /// When it was sent.
    pub sent_at_ms: Option<i64>,
}
dpo!(OutMessage, "outbound message");

/// The receiver's side of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InChannel {
    /// The peer.
    pub sender: DeploymentId,
    /// This deployment.
    pub receiver: DeploymentId,
    /// Sequence number of the next file expected.
    pub expected_seq: u64,
    /// Its object path (announced by the previous file).
    pub expected_file: String,
    /// The diversifier it must use.
    pub expected_diversifier: Diversifier,
    /// Files accepted so far.
    pub files_received: u64,
    /// When the last file was accepted.
    pub last_file_at_ms: Option<i64>,
    /// The expected file exists but was rejected: the channel waits for an operator.
    pub stall: Option<Stall>,
    /// Files already reported by discovery (out of chain), to count each once.
    #[serde(default)]
    pub reported: Vec<String>,
}
dpo!(InChannel, "inbound channel");

/// Why a channel is stalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    /// The rejected file.
    pub file: String,
    /// Why.
    pub reason: RejectReason,
    /// What the object looked like (size, e-tag): a changed object is examined again.
    pub object: String,
    /// Since when.
    pub since_ms: i64,
}

/// Why something received was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// Authentication failed: bit flip, truncation, wrong key or file name.
    Tampered,
    /// Files from a deployment with no channel here, or messages claiming another origin.
    UnknownSender,
    /// The diversifier is outside the acceptance window, or not the announced one.
    Diversifier,
    /// A file that is not the expected next one of its chain.
    OutOfChain,
    /// A message id seen before with different content.
    ReplayedId,
    /// A message record or payload that does not parse or validate, or of an unknown type.
    Malformed,
    /// A file an operator's resync went past (it was rejected or lost); its messages are
    /// asked again from the sender ([`crate::resync`]).
    Skipped,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Tampered,
        RejectReason::UnknownSender,
        RejectReason::Diversifier,
        RejectReason::OutOfChain,
        RejectReason::ReplayedId,
        RejectReason::Malformed,
        RejectReason::Skipped,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::Tampered => "tampered",
            RejectReason::UnknownSender => "unknown_sender",
            RejectReason::Diversifier => "diversifier",
            RejectReason::OutOfChain => "out_of_chain",
            RejectReason::ReplayedId => "replayed_id",
            RejectReason::Malformed => "malformed",
            RejectReason::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A recorded rejection (the operator's view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The channel's sender (or the unknown sub-bucket's name).
    pub sender: String,
    /// The file.
    pub file: String,
    /// The message, for message-level rejections.
    pub message: Option<MessageId>,
    /// Why.
    pub reason: RejectReason,
    /// Details (never key material).
    pub detail: String,
    /// When.
    pub at_ms: i64,
}
dpo!(Rejection, "message rejection");

/// An entry of the rejections' order index (`keys::rejection_order`): whose row it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionOrder {
    /// The row's sender part.
    pub sender: String,
}
dpo!(RejectionOrder, "message rejection order entry");

/// The mark that the rejections' order index is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionsIndexed {
    /// Its version.
    pub v: u32,
}
dpo!(RejectionsIndexed, "message rejections index mark");

/// Receiver-side state of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InState {
    /// Persisted from its file.
    Received,
    /// In a batch for the worker pool.
    ReadyForProcessing,
    /// A worker runs its handler (until the lease ends).
    Processing,
    /// Handled; its files and row are to be removed.
    ReadyForCleanup,
    /// The handler failed permanently or too often; kept for the operator.
    Failed,
}

impl InState {
    /// Queue name in `msg/q/<name>/…`.
    pub fn queue(self) -> &'static str {
        match self {
            InState::Received => "received",
            InState::ReadyForProcessing => "ready",
            InState::Processing => "processing",
            InState::ReadyForCleanup => "cleanup",
            InState::Failed => "failed",
        }
    }
}

/// A message on the receiver side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InMessage {
    /// The message.
    pub message: GlobalMessage,
    /// Its state.
    pub state: InState,
    /// Its position in the state's queue.
    pub queue_seq: u64,
    /// The file it came in.
    pub file_seq: u64,
    /// SHA-256 of its record, hex.
    pub digest: String,
    /// When it was persisted.
    pub received_at_ms: i64,
    /// Handler runs started.
    pub attempts: u32,
    /// Not to be claimed before (retry backoff).
    pub not_before_ms: i64,
    /// The current claim (Processing): its token and lease end.
    pub claim: Option<(u64, i64)>,
    /// The last handler error.
    pub last_error: Option<String>,
    /// When it became Failed (its retention counts from then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at_ms: Option<i64>,
}
dpo!(InMessage, "inbound message");

/// An index entry pointing at a message row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The channel's sender (receiver side) or receiver (sender side).
    pub peer: DeploymentId,
    /// The message.
    pub id: MessageId,
}
dpo!(QueueEntry, "message queue entry");

/// A received file whose messages are not all cleaned up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedFile {
    /// Messages of the file still having rows.
    pub live: u32,
    /// When it was received.
    pub received_at_ms: i64,
}
dpo!(ReceivedFile, "received message file");

/// Body files to delete (a cleanup message, or a rejected message's uploads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// Body indexes `0..bodies`.
    pub bodies: u32,
    /// Why.
    pub why: String,
}
dpo!(Orphan, "orphan body files");

/// A processed message remembered for duplicate detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// SHA-256 of its record, hex.
    pub digest: String,
    /// When it was cleaned up.
    pub at_ms: i64,
}
dpo!(Seen, "seen message");

/// An entry of the seen ids' age index (`keys::seen_at`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenAt {
    /// The sender.
    pub peer: DeploymentId,
    /// The message.
    pub id: MessageId,
}
dpo!(SeenAt, "seen message age entry");

/// The mark that the seen ids' age index is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenIndexed {
    /// Its version.
    pub v: u32,
}
dpo!(SeenIndexed, "seen index mark");

/// Per-reason rejection counts kept with an inbound channel.
pub type RejectCounts = BTreeMap<RejectReason, u64>;

pub(crate) mod keys {
    use super::*;

    pub fn out_channels() -> Key {
        Key::root("chan").str("out")
    }
    pub fn out_channel(peer: &DeploymentId) -> Key {
        out_channels().str(peer.as_str())
    }
    pub fn in_channels() -> Key {
        Key::root("chan").str("in")
    }
    pub fn in_channel(peer: &DeploymentId) -> Key {
        in_channels().str(peer.as_str())
    }
    pub fn rejections() -> Key {
        Key::root("chan").str("rej")
    }
    pub fn rejection(sender: &str, n: u64) -> Key {
        rejections().str(sender).u64(n)
    }
    /// `chan/rej-order/<n>`: rejections in the order they were recorded (the sequence
    /// numbers their rows carry), so that pruning reads only what is due.
    pub fn rejections_in_order() -> Key {
        Key::root("chan").str("rej-order")
    }
    pub fn rejection_order(n: u64) -> Key {
        rejections_in_order().u64(n)
    }
    /// Set once every rejection recorded before the order index existed is in it.
    pub fn rejections_indexed() -> Key {
        Key::root("chan").str("rej-indexed")
    }
    pub fn out_messages(peer: &DeploymentId) -> Key {
        Key::root("msg").str("out").str(peer.as_str())
    }
    pub fn out_message(peer: &DeploymentId, id: &MessageId) -> Key {
        out_messages(peer).str(id.as_str())
    }
    pub fn ready_queue(peer: &DeploymentId) -> Key {
        Key::root("msg").str("ready").str(peer.as_str())
    }
    pub fn preparing(peer: &DeploymentId) -> Key {
        Key::root("msg").str("prep").str(peer.as_str())
    }
    pub fn preparing_entry(peer: &DeploymentId, id: &MessageId) -> Key {
        preparing(peer).str(id.as_str())
    }
    pub fn sent(peer: &DeploymentId) -> Key {
        Key::root("msg").str("sent").str(peer.as_str())
    }
    pub fn in_message(peer: &DeploymentId, id: &MessageId) -> Key {
        in_messages(peer).str(id.as_str())
    }
    pub fn in_messages(peer: &DeploymentId) -> Key {
        Key::root("msg").str("in").str(peer.as_str())
    }
    pub fn queue(state: InState) -> Key {
        Key::root("msg").str("q").str(state.queue())
    }
    pub fn file(peer: &DeploymentId, seq: u64) -> Key {
        Key::root("msg").str("file").str(peer.as_str()).u64(seq)
    }
    pub fn file_deletes() -> Key {
        Key::root("msg").str("filedel")
    }
    pub fn file_delete(peer: &DeploymentId, seq: u64) -> Key {
        file_deletes().str(peer.as_str()).u64(seq)
    }
    pub fn orphans() -> Key {
        Key::root("msg").str("orphan")
    }
    pub fn orphan(peer: &DeploymentId, id: &MessageId) -> Key {
        orphans().str(peer.as_str()).str(id.as_str())
    }
    pub fn seen_all() -> Key {
        Key::root("msg").str("seen")
    }
    pub fn seen(peer: &DeploymentId, id: &MessageId) -> Key {
        seen_all().str(peer.as_str()).str(id.as_str())
    }
    /// `msg/seen-at/<at_ms>/<peer>/<id>`: seen ids in the order they were remembered,
    /// so that pruning reads only what is due.
    pub fn seen_by_age() -> Key {
        Key::root("msg").str("seen-at")
    }
    pub fn seen_at(at_ms: i64, peer: &DeploymentId, id: &MessageId) -> Key {
        seen_by_age()
            .u64(u64::try_from(at_ms).unwrap_or(0))
            .str(peer.as_str())
            .str(id.as_str())
    }
    /// Set once every seen id written before the age index existed is in it.
    pub fn seen_indexed() -> Key {
        Key::root("msg").str("seen-indexed")
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
