//! The crate's one error type.
//!
//! Every variant names what it is about: the channel (`d1->d2`), the message id, the object
//! path. Rejections of received files are *not* errors of the receiver (they are counted and
//! recorded, see [`crate::Rejection`]); errors are what stops a unit of work: storage or
//! metadata trouble, bad configuration, a crash point.

use tern_storage::layout::{DeploymentId, MessageId};

/// Errors of `tern-messaging`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The metadata store failed.
    #[error("metadata store: {what}")]
    Meta {
        /// What was being done.
        what: &'static str,
        /// The store's error.
        #[source]
        source: Box<tern_meta::Error>,
    },

    /// Object storage failed.
    #[error("storage: {what}")]
    Storage {
        /// What was being done.
        what: &'static str,
        /// The storage error (names the object).
        #[source]
        source: Box<tern_storage::Error>,
    },

    /// Encryption, decryption or a key provider failed (names the file).
    #[error("crypto: {what}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The crypto error.
        #[source]
        source: Box<tern_crypto::Error>,
    },

    /// No channel from `sender` to `receiver` is registered here.
    #[error("no channel {sender}->{receiver}")]
    UnknownChannel {
        /// The sending deployment.
        sender: DeploymentId,
        /// The receiving deployment.
        receiver: DeploymentId,
    },

    /// The channel already exists (with another genesis).
    #[error("channel {channel} already exists")]
    ChannelExists {
        /// The channel (`d1->d2`).
        channel: String,
    },

    /// The message does not exist on this side (or was already sent/removed).
    #[error("message {id} on channel {channel} not found")]
    UnknownMessage {
        /// The channel.
        channel: String,
        /// The message id.
        id: MessageId,
    },

    /// A message with this id exists already on this channel.
    #[error("message {id} on channel {channel} already exists")]
    DuplicateMessage {
        /// The channel.
        channel: String,
        /// The message id.
        id: MessageId,
    },

    /// The operation needs the message in another state.
    #[error("message {id} on channel {channel} is {state}, cannot {action}")]
    WrongState {
        /// The channel.
        channel: String,
        /// The message id.
        id: MessageId,
        /// Its state.
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },

    /// The message's type is not registered (the sender checks before persisting).
    #[error("message type {message_type:?} is not registered")]
    UnknownType {
        /// The type.
        message_type: String,
    },

    /// The payload does not pass its type's validation (the sender checks too).
    #[error("message {id}: payload of type {message_type:?} is malformed: {reason}")]
    MalformedPayload {
        /// The message id.
        id: MessageId,
        /// Its type.
        message_type: String,
        /// The handler's reason.
        reason: String,
    },

    /// A value does not fit the format or a name is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What is invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// A configuration value is out of range.
    #[error("invalid messaging setting `{field}`: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A body file's upload did not produce what the message declares.
    #[error("body {n} of message {id}: {reason}")]
    Body {
        /// The message id.
        id: MessageId,
        /// Body index.
        n: u32,
        /// What is wrong.
        reason: String,
    },

    /// The sender's chain state is inconsistent with the bucket (e.g. the next message file
    /// exists but this sender has no record of writing it): the channel must be repaired.
    #[error("channel {channel}: {reason}")]
    ChainBroken {
        /// The channel.
        channel: String,
        /// What is inconsistent.
        reason: String,
    },

    /// An operator's resync cannot go ahead (the channel is healthy, no later file is
    /// readable yet, or the channel moved meanwhile). Nothing was changed.
    #[error("cannot resync channel {channel}: {reason}")]
    ResyncRefused {
        /// The channel.
        channel: String,
        /// Why, and what to do.
        reason: String,
    },

    /// An injected crash point fired: the instance must be dropped without cleanup, as if
    /// the process had died here.
    #[error("crash point {point} fired")]
    Crashed {
        /// The crash point's name.
        point: &'static str,
    },

    /// A blocking task (a metadata transaction) was cancelled or panicked.
    #[error("background task for {what} failed")]
    Task {
        /// What the task did.
        what: &'static str,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is, for the daemon's API (HTTP status, retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller asked for something invalid (bad type, payload, id, setting).
    InvalidInput,
    /// The channel or message does not exist.
    NotFound,
    /// It exists already, or is in another state.
    Conflict,
    /// Storage, metadata store or key provider trouble: retry later.
    Unavailable,
    /// Anything else (a broken chain, a crash point, a bug).
    Internal,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::UnknownType { .. }
            | Error::MalformedPayload { .. }
            | Error::Invalid { .. }
            | Error::InvalidConfig { .. }
            | Error::Body { .. } => ErrorKind::InvalidInput,
            Error::UnknownChannel { .. } | Error::UnknownMessage { .. } => ErrorKind::NotFound,
            Error::ChannelExists { .. }
            | Error::DuplicateMessage { .. }
            | Error::WrongState { .. }
            | Error::ResyncRefused { .. } => ErrorKind::Conflict,
            Error::Meta { .. }
            | Error::Storage { .. }
            | Error::Crypto { .. }
            | Error::Task { .. }
                if self.is_transient() =>
            {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Internal,
        }
    }

    /// Whether this is an injected crash (tests stop the instance here).
    pub fn is_crash(&self) -> bool {
        matches!(self, Error::Crashed { .. })
    }

    /// Whether retrying the same unit of work later may succeed (storage, metadata or KMS
    /// trouble) as opposed to a caller error.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Meta { source, .. } => source.is_busy(),
            Error::Storage { source, .. } => source.is_transient(),
            Error::Crypto { source, .. } => !source.is_integrity_failure(),
            Error::Task { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn meta(what: &'static str) -> impl FnOnce(tern_meta::Error) -> Self {
        move |source| Error::Meta {
            what,
            source: Box::new(source),
        }
    }

    pub(crate) fn storage(what: &'static str) -> impl FnOnce(tern_storage::Error) -> Self {
        move |source| Error::Storage {
            what,
            source: Box::new(source),
        }
    }

    pub(crate) fn crypto(what: &'static str) -> impl FnOnce(tern_crypto::Error) -> Self {
        move |source| Error::Crypto {
            what,
            source: Box::new(source),
        }
    }
}
