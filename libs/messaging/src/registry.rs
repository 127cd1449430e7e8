//! Message types and their handlers.
//!
//! A [`Registry`] maps each [`MessageType`] to a [`Handler`]. The sender refuses types that
//! are not registered and payloads that do not [validate](Handler::validate); the receiver
//! checks again (a peer may run another build) and rejects such messages without applying
//! them.
//!
//! # Exactly-once effect
//!
//! The processor may call [`Handler::handle`] more than once for a message (a crash after
//! the handler ran and before its completion committed runs it again). Two ways keep the
//! effect single:
//!
//! * **Metadata effects** go into the returned [`Commit`]: it runs inside the same metadata
//!   transaction that moves the message to ReadyForCleanup, so it is applied exactly once
//!   (the transaction finds the message still Processing, or does nothing).
//! * **External effects** (copying files, calling out) must be idempotent by message id:
//!   the handler gets the id and must make a second run a no-op.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt as _};
use tern_crypto::object::EncryptedObject;
use tern_meta::MetaTxn;
use tern_storage::layout::{self, DeploymentId};

use crate::error::{Error, Result};
use crate::keys::ChannelKeys;
use crate::message::{GlobalMessage, MessageType};

/// The built-in type of cleanup messages (orphan body files of a message that was never
/// sent); handled by the receiver itself.
pub const CLEANUP_TYPE: &str = "tern.cleanup";

/// The built-in type of resend requests (a receiver resynchronised its channel past files
/// it could not read); handled by the sender's service itself ([`crate::resync`]).
pub const RESEND_TYPE: &str = "tern.resend";

/// Whether `t` is one of the service's own message types.
pub(crate) fn is_builtin(t: &str) -> bool {
    t == CLEANUP_TYPE || t == RESEND_TYPE
}

/// A metadata effect applied in the transaction that completes the message.
pub type CommitFn = Box<dyn FnMut(&mut MetaTxn<'_>) -> tern_meta::Result<()> + Send>;

/// Run once after the completing transaction committed.
pub type AfterFn = Box<dyn FnOnce() + Send>;

/// What a handler wants committed with the message's completion (may be nothing), and
/// what to do once it is committed.
#[derive(Default)]
pub struct Commit(pub(crate) Option<CommitFn>, pub(crate) Option<AfterFn>);

impl Commit {
    /// No metadata effect.
    pub fn none() -> Self {
        Self(None, None)
    }

    /// Run `f` in the completing transaction. It may run more than once if the store
    /// retries the transaction, like every metadata closure.
    pub fn with(f: impl FnMut(&mut MetaTxn<'_>) -> tern_meta::Result<()> + Send + 'static) -> Self {
        Self(Some(Box::new(f)), None)
    }

    /// Also run `after` once the completing transaction committed (not if it failed): to
    /// wake whoever works on what the effect recorded.
    pub fn then(mut self, after: impl FnOnce() + Send + 'static) -> Self {
        self.1 = Some(Box::new(after));
        self
    }
}

impl fmt::Debug for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Commit(effect)"
        } else {
            "Commit(none)"
        })
    }
}

/// Why a handler failed: retried later unless permanent.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct HandlerError {
    /// What went wrong.
    pub reason: String,
    /// Whether retrying cannot help (the message is then marked Failed).
    pub permanent: bool,
    /// The message is refused for good — stale, not meant for this deployment, out of
    /// date: counted and logged as a refusal and cleaned up like a handled one (its id
    /// remembered, so a replay is not handled), never applied and never kept as Failed
    /// for an operator who could do nothing with it.
    pub refused: bool,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retry(reason: impl fmt::Display) -> Self {
        Self {
            reason: reason.to_string(),
            permanent: false,
            refused: false,
        }
    }

    /// A failure retrying cannot fix.
    pub fn permanent(reason: impl fmt::Display) -> Self {
        Self {
            reason: reason.to_string(),
            permanent: true,
            refused: false,
        }
    }

    /// A message refused for good (see [`HandlerError::refused`]).
    pub fn refuse(reason: impl fmt::Display) -> Self {
        Self {
            reason: reason.to_string(),
            permanent: true,
            refused: true,
        }
    }
}

/// Access to a received message's body files, for handlers.
pub struct Bodies {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) keys: Arc<ChannelKeys>,
    pub(crate) sender: DeploymentId,
}

impl fmt::Debug for Bodies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bodies")
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl Bodies {
    /// Opens body `n` of `msg` for streaming or ranged reads (header verified, diversifier
    /// checked against the one the message declares).
    pub async fn open(&self, msg: &GlobalMessage, n: u32) -> Result<EncryptedObject> {
        let body = msg
            .bodies
            .iter()
            .find(|b| b.n == n)
            .ok_or_else(|| Error::Body {
                id: msg.id.clone(),
                n,
                reason: "the message has no such body".into(),
            })?;
        let path = layout::replication::body(&self.sender, &msg.id, n);
        // A backlog read after a long outage: judge the diversifier at the time the store
        // recorded the file (see `crate::keys`).
        let keys = match self.keys.for_reading(body.diversifier, None) {
            Ok(k) => k,
            Err(tern_crypto::Error::DiversifierTooOld { .. }) => {
                let meta = self.store.head(&path).await.map_err(|e| Error::Storage {
                    what: "check body file",
                    source: Box::new(tern_storage::Error::from_store(
                        tern_storage::Operation::Head,
                        &path,
                        e,
                    )),
                })?;
                self.keys
                    .for_reading(
                        body.diversifier,
                        Some(meta.last_modified.timestamp_millis()),
                    )
                    .map_err(Error::crypto("body file diversifier"))?
            }
            Err(e) => return Err(Error::crypto("body file diversifier")(e)),
        };
        let obj = EncryptedObject::open(Arc::clone(&self.store), &path, &keys)
            .await
            .map_err(Error::crypto("open body file"))?;
        Ok(obj)
    }

    /// Reads and verifies the whole body `n` of `msg`.
    pub async fn read(&self, msg: &GlobalMessage, n: u32) -> Result<Bytes> {
        let obj = self.open(msg, n).await?;
        let data = obj
            .read_all()
            .await
            .map_err(Error::crypto("read body file"))?;
        let declared = msg.bodies.iter().find(|b| b.n == n).map(|b| b.len);
        if Some(data.len() as u64) != declared {
            return Err(Error::Body {
                id: msg.id.clone(),
                n,
                reason: format!("{} bytes, the message declares {declared:?}", data.len()),
            });
        }
        Ok(data)
    }
}

/// Processes one message type.
#[async_trait]
pub trait Handler: Send + Sync + fmt::Debug {
    /// Checks a payload's structure (both the sender and the receiver call it). A message
    /// whose payload fails is rejected as malformed and never handled.
    fn validate(&self, payload: &[u8]) -> std::result::Result<(), String>;

    /// Applies the message. May run more than once for one message (see the module docs):
    /// put metadata effects in the returned [`Commit`], keep external effects idempotent
    /// by `msg.id`.
    async fn handle(
        &self,
        msg: &GlobalMessage,
        bodies: &Bodies,
    ) -> std::result::Result<Commit, HandlerError>;
}

/// The message types known to this deployment.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<MessageType, Arc<dyn Handler>>,
}

impl Registry {
    /// An empty registry (the built-in cleanup type is always known).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `message_type` (replacing an earlier one). The
    /// names `tern.cleanup` and `tern.resend` are reserved.
    pub fn register(&mut self, message_type: &str, handler: Arc<dyn Handler>) -> Result<()> {
        let t = MessageType::new(message_type)?;
        if is_builtin(t.as_str()) {
            return Err(Error::Invalid {
                what: "message type",
                reason: format!("{t} is reserved"),
            });
        }
        self.handlers.insert(t, handler);
        Ok(())
    }

    /// The same registry with `handler` registered (builder style).
    pub fn with(mut self, message_type: &str, handler: Arc<dyn Handler>) -> Result<Self> {
        self.register(message_type, handler)?;
        Ok(self)
    }

    /// The handler of `t`.
    pub fn get(&self, t: &MessageType) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(t)
    }

    /// Whether `t` is known (registered or built in).
    pub fn knows(&self, t: &MessageType) -> bool {
        is_builtin(t.as_str()) || self.handlers.contains_key(t)
    }

    /// Checks that `msg` may be sent or applied: known type, valid payload.
    pub fn check(&self, msg: &GlobalMessage) -> Result<()> {
        if msg.message_type.as_str() == CLEANUP_TYPE {
            return crate::cleanup::CleanupPayload::decode(&msg.payload)
                .map(|_| ())
                .map_err(|reason| Error::MalformedPayload {
                    id: msg.id.clone(),
                    message_type: CLEANUP_TYPE.into(),
                    reason,
                });
        }
        if msg.message_type.as_str() == RESEND_TYPE {
            return crate::resync::ResendPayload::decode(&msg.payload)
                .map(|_| ())
                .map_err(|reason| Error::MalformedPayload {
                    id: msg.id.clone(),
                    message_type: RESEND_TYPE.into(),
                    reason,
                });
        }
        let h = self
            .get(&msg.message_type)
            .ok_or_else(|| Error::UnknownType {
                message_type: msg.message_type.to_string(),
            })?;
        h.validate(&msg.payload)
            .map_err(|reason| Error::MalformedPayload {
                id: msg.id.clone(),
                message_type: msg.message_type.to_string(),
                reason,
            })
    }
}
