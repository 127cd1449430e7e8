//! The crate's one error type.

use std::time::Duration;

use tern_storage::layout::AccountId;
use tern_table::CommitFailure;

use crate::state::TxnState;

/// Errors of `tern-txn`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lock was not granted in time; nothing was committed.
    #[error("lock {lock} is held by transaction {holder}; gave up after {waited:?}")]
    LockTimeout {
        /// The lock waited for.
        lock: String,
        /// The handle of the transaction holding it.
        holder: u64,
        /// How long this transaction waited.
        waited: Duration,
    },
    /// The transaction passed its soft point of no return (Prepared: id issued) but the
    /// commit could not be seen through — its log record not stored yet, or stored and the
    /// new versions not yet visible or its locks not released. It is never rolled back:
    /// recovery completes it. The caller must not retry blindly; the id says which
    /// transaction to look up.
    #[error(
        "transaction {txn_id} is in doubt: it is prepared and recovery will complete it (never rolled back); look up its status instead of retrying"
    )]
    InDoubt {
        /// The transaction id.
        txn_id: u64,
        /// Why the log write failed.
        #[source]
        source: Box<Error>,
    },
    /// A crash point fired (tests only): the transaction stopped where a crashed process
    /// would have, without any clean-up.
    #[error("crash point {point} fired")]
    Crashed {
        /// The crash point.
        point: &'static str,
    },
    /// A log record already stored under this transaction id holds something else.
    #[error("log record {path} already exists with different content (transaction {txn_id})")]
    LogRecordMismatch {
        /// The record's path.
        path: String,
        /// The transaction id.
        txn_id: u64,
    },
    /// A prepared transaction's metadata file already stored holds something else.
    #[error("metadata file {path} already exists with different content")]
    StagedFileMismatch {
        /// The file's path.
        path: String,
    },
    /// A log record could not be encoded (nothing was written: an encode failure never
    /// becomes an empty record).
    #[error("log record of transaction {txn_id} could not be encoded")]
    EncodeLogRecord {
        /// The transaction id.
        txn_id: u64,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A log record that does not parse.
    #[error("log record {path} is invalid: {reason}")]
    BadLogRecord {
        /// The record's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// One attempt to store a log record took too long (its outcome is unknown).
    #[error("writing log record {path} did not finish within {after:?}")]
    LogWriteTimeout {
        /// The record's path.
        path: String,
        /// The time allowed.
        after: Duration,
    },
    /// A file of a transaction being rolled back is still there.
    #[error("transaction {handle}: could not remove its file {path}; recovery will retry")]
    FileNotRemoved {
        /// The transaction's handle.
        handle: u64,
        /// The file.
        path: String,
    },
    /// A transaction of one account was given a change of another account; nothing was
    /// committed.
    #[error("a transaction of account {account} cannot change account {other}")]
    CrossAccount {
        /// The transaction's account.
        account: AccountId,
        /// The account of the change.
        other: AccountId,
    },
    /// A transaction past its soft point of no return (Prepared or later) was asked to
    /// roll back: it only rolls forward.
    #[error("transaction {handle} is {state:?} and cannot roll back")]
    CannotRollBack {
        /// The transaction's handle.
        handle: u64,
        /// Its state.
        state: TxnState,
    },
    /// A background task of the commit failed.
    #[error("commit task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The statement's own work failed.
    #[error(transparent)]
    Table(#[from] tern_table::Error),
    /// The metadata store refused or failed.
    #[error(transparent)]
    Meta(#[from] tern_meta::Error),
    /// Object storage failed.
    #[error(transparent)]
    Storage(#[from] tern_storage::Error),
    /// Encryption or decryption failed (the message names the file).
    #[error(transparent)]
    Crypto(#[from] tern_crypto::Error),
}

impl Error {
    /// True for [`Error::Crashed`], directly or as the cause of an in-doubt commit.
    pub fn is_crash(&self) -> bool {
        match self {
            Error::Crashed { .. } => true,
            Error::InDoubt { source, .. } => source.is_crash(),
            Error::Table(tern_table::Error::Commit { source, .. }) => {
                source.downcast_ref::<Error>().is_some_and(Error::is_crash)
            }
            _ => false,
        }
    }
}

/// What a statement sees: table and metadata errors pass through unchanged, the protocol's
/// own errors are wrapped with their kind.
impl From<Error> for tern_table::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Table(_) | Error::Meta(_) => None,
            Error::LockTimeout { .. } => Some(CommitFailure::LockTimeout),
            Error::InDoubt { .. } => Some(CommitFailure::InDoubt),
            _ => Some(CommitFailure::Failed),
        };
        match (kind, e) {
            (None, Error::Table(t)) => t,
            (None, Error::Meta(m)) => tern_table::Error::Meta(m),
            (Some(kind), e) => tern_table::Error::Commit {
                kind,
                txn_id: match &e {
                    Error::InDoubt { txn_id, .. } => Some(*txn_id),
                    _ => None,
                },
                source: Box::new(e),
            },
            (None, e) => tern_table::Error::Commit {
                kind: CommitFailure::Failed,
                txn_id: None,
                source: Box::new(e),
            },
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
