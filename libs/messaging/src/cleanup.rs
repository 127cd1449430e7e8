//! Cleanup messages: the sender's request to delete body files it cannot delete itself.
//!
//! A message that failed or aged out in Preparing may have left body files under
//! `from/<sender>/body/<id>/` of the receiver's bucket; the sender holds a write-only
//! identity there. It sends a message of the built-in type [`CLEANUP_TYPE`] naming the
//! abandoned id and how many body uploads it started; the receiver records them as
//! orphans and its cleaner deletes them (unless a live message of that id owns them).
//!
//! Payload, version 1: JSON `{"v":1,"id":"<message id>","bodies":<n>}`.
//!
//! [`CLEANUP_TYPE`]: crate::registry::CLEANUP_TYPE

use serde::{Deserialize, Serialize};
use tern_storage::layout::MessageId;

/// The payload of a cleanup message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupPayload {
    /// Format version (1).
    pub v: u32,
    /// The abandoned message.
    pub id: MessageId,
    /// Body indexes `0..bodies` may exist.
    pub bodies: u32,
}

impl CleanupPayload {
    /// A version-1 payload.
    pub fn new(id: MessageId, bodies: u32) -> Self {
        Self { v: 1, id, bodies }
    }

    /// Encodes it.
    pub fn encode(&self) -> crate::Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| crate::Error::Invalid {
            what: "cleanup payload",
            reason: e.to_string(),
        })
    }

    /// Decodes and checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let p: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if p.v != 1 {
            return Err(format!(
                "cleanup payload version {}, this build reads 1",
                p.v
            ));
        }
        Ok(p)
    }
}
