//! The daemon's one error type, and the small [`Kind`] that decides an HTTP status and
//! whether a client may retry.

use axum::http::StatusCode;

/// What kind of failure, as far as a client needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The request is wrong (bad JSON, wrong types, unknown column, oversized body).
    InvalidInput,
    /// What it names does not exist (account, database, table, version, route).
    NotFound,
    /// It collides with what exists or with another writer; may be retried.
    Conflict,
    /// Not now (lock timeout, commit in doubt, shutting down); retry later.
    Unavailable,
    /// No token, or a token that is not known.
    Unauthorized,
    /// A valid token that does not reach what was asked for.
    Forbidden,
    /// A fault of the daemon or its storage.
    Internal,
}

impl Kind {
    /// The HTTP status of this kind.
    pub fn status(self) -> StatusCode {
        match self {
            Kind::InvalidInput => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Its name in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::InvalidInput => "invalid_input",
            Kind::NotFound => "not_found",
            Kind::Conflict => "conflict",
            Kind::Unavailable => "unavailable",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::Internal => "internal",
        }
    }
}

/// Errors of `ternd`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is missing or wrong (named).
    #[error("config {field}: {reason}")]
    Config {
        /// The field (`volume.url`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Something named in the configuration could not be opened.
    #[error("cannot open {field}: {source}")]
    Open {
        /// The config field that named it.
        field: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request that cannot be served as sent.
    #[error("{0}")]
    Invalid(String),
    /// An oversized body.
    #[error(
        "request body is larger than the limit of {limit} bytes (api.max_body_bytes): send less per request, load large files through POST …/rows (streamed, not bounded), or raise api.max_body_bytes"
    )]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Something named does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// What it is.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// It exists already.
    #[error("{what} {name:?} already exists")]
    Exists {
        /// What it is.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// Missing or unknown token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A token for another account.
    #[error("this token does not reach account {account:?}")]
    Forbidden {
        /// The account asked for.
        account: String,
    },
    /// Shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// A token that may only read, on a request that writes (403).
    #[error(
        "this token of account {account:?} is read-only: writes need a read-write token (tern token create {account})"
    )]
    ReadOnlyToken {
        /// Its account.
        account: String,
    },
    /// More requests at once than `api.max_concurrent_requests` (429).
    #[error(
        "too many requests at once (api.max_concurrent_requests = {limit}): retry after a second, with fewer parallel clients, or raise the limit"
    )]
    Busy {
        /// The limit.
        limit: usize,
    },
    /// A request not answered within `api.request_timeout` (503).
    #[error(
        "the request was not answered within api.request_timeout ({limit:?}) and was stopped: a write it began is completed or rolled back by recovery (send writes with an Idempotency-Key and retry with the same key); split large requests or raise the limit"
    )]
    TimedOut {
        /// The limit.
        limit: std::time::Duration,
    },
    /// An `Idempotency-Key` already used by the account with another request (422).
    #[error(
        "Idempotency-Key {key:?} was already used with a different request (method, path, Content-Type or body); send a new request with a new key"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// A retry with an `Idempotency-Key` whose first request is a transaction still in
    /// doubt: it will be committed by recovery; retry later (the same key) or look it up.
    #[error(
        "Idempotency-Key {key:?}: the request is transaction {txn_id}, which is in doubt: it is prepared and recovery will complete it (never rolled back); retry later with the same key, or look up its status"
    )]
    KeyInDoubt {
        /// The key.
        key: String,
        /// The transaction.
        txn_id: u64,
    },
    /// A table operation failed.
    #[error(transparent)]
    Table(#[from] tern_table::Error),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] tern_meta::Error),
    /// The commit protocol failed.
    #[error(transparent)]
    Txn(#[from] tern_txn::Error),
    /// The message service failed.
    #[error(transparent)]
    Messaging(#[from] tern_messaging::Error),
    /// Replication (global accounts and databases, replicas, refresh) failed (boxed: it
    /// is large, and this error travels through every API call).
    #[error(transparent)]
    Replication(Box<tern_replication::Error>),
    /// A name (account, database, deployment) is not valid.
    #[error("invalid name: {0}")]
    Name(#[from] tern_storage::Error),
    /// A peer added again with another genesis of its channel to us than the one
    /// registered here: not a re-run of the same link.
    #[error(
        "the channel from {peer} is registered here with another genesis (first file {known}, \
         this one names {given}): it is not the genesis {peer} made for this deployment, so \
         it is refused; a link run again sends the same genesis"
    )]
    GenesisMismatch {
        /// The peer.
        peer: String,
        /// The first file number of the genesis registered.
        known: u64,
        /// The first file number of the one sent.
        given: u64,
    },
    /// A blocking task or I/O failed.
    #[error("{what}: {reason}")]
    Internal {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl Error {
    /// The kind that decides the HTTP status.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Config { .. } | Error::Invalid(_) | Error::TooLarge { .. } | Error::Name(_) => {
                Kind::InvalidInput
            }
            Error::NotFound { .. } => Kind::NotFound,
            Error::Exists { .. } | Error::GenesisMismatch { .. } => Kind::Conflict,
            Error::Unauthorized(_) => Kind::Unauthorized,
            Error::Forbidden { .. } | Error::ReadOnlyToken { .. } => Kind::Forbidden,
            Error::ShuttingDown
            | Error::KeyInDoubt { .. }
            | Error::Busy { .. }
            | Error::TimedOut { .. } => Kind::Unavailable,
            Error::IdempotencyKeyReused { .. } => Kind::InvalidInput,
            Error::Table(e) => table_kind(e),
            Error::Meta(e) => meta_kind(e),
            Error::Txn(_) => Kind::Internal,
            Error::Messaging(e) => messaging_kind(e),
            Error::Replication(e) => replication_kind(e),
            Error::Open { .. } | Error::Internal { .. } => Kind::Internal,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            other => other.kind().status(),
        }
    }

    /// The transaction a commit in doubt is: the id a client looks the outcome up by.
    pub fn in_doubt_txn_id(&self) -> Option<u64> {
        match self {
            Error::Table(e) => e.in_doubt_txn_id(),
            Error::KeyInDoubt { txn_id, .. } => Some(*txn_id),
            _ => None,
        }
    }

    pub(crate) fn internal(what: &'static str) -> impl FnOnce(String) -> Error {
        move |reason| Error::Internal { what, reason }
    }
}

impl From<tern_replication::Error> for Error {
    fn from(e: tern_replication::Error) -> Self {
        Error::Replication(Box::new(e))
    }
}

fn messaging_kind(e: &tern_messaging::Error) -> Kind {
    match e {
        tern_messaging::Error::ChannelExists { .. } => Kind::Conflict,
        tern_messaging::Error::Invalid { .. }
        | tern_messaging::Error::InvalidConfig { .. }
        | tern_messaging::Error::UnknownType { .. }
        | tern_messaging::Error::MalformedPayload { .. } => Kind::InvalidInput,
        _ => Kind::Internal,
    }
}

fn replication_kind(e: &tern_replication::Error) -> Kind {
    use tern_replication::Error as R;
    match e {
        // A bad name or a request that does not fit the state (not a replica, no group).
        R::Invalid { .. } => Kind::InvalidInput,
        R::NotFound { .. } => Kind::NotFound,
        // The peer must be added first (`create deployment`): not retryable as sent.
        R::NoPeer { .. } => Kind::Conflict,
        // A replicated change waiting for an earlier one: later it applies.
        R::Gap { .. } => Kind::Unavailable,
        R::Drift { .. } => Kind::Conflict,
        R::Meta(m) => meta_kind(m),
        R::Table(t) => table_kind(t),
        R::Messaging(m) => messaging_kind(m),
        R::Storage(tern_storage::Error::InvalidName { .. }) => Kind::InvalidInput,
        _ => Kind::Internal,
    }
}

fn meta_kind(e: &tern_meta::Error) -> Kind {
    match e {
        tern_meta::Error::AlreadyExists { .. } | tern_meta::Error::VersionConflict { .. } => {
            Kind::Conflict
        }
        tern_meta::Error::NotFound { .. } => Kind::NotFound,
        tern_meta::Error::InUse { .. } | tern_meta::Error::Invalid { .. } => Kind::InvalidInput,
        tern_meta::Error::Busy { .. } => Kind::Unavailable,
        _ => Kind::Internal,
    }
}

fn table_kind(e: &tern_table::Error) -> Kind {
    use tern_table::{CommitFailure, Error as T};
    if e.is_conflict() {
        return Kind::Conflict;
    }
    match e {
        T::UnknownColumn { .. }
        | T::MissingColumn { .. }
        | T::TypeMismatch { .. }
        | T::NullInNonNullable { .. }
        | T::InvalidSchema { .. }
        | T::BadInput { .. }
        | T::DuplicateMergeKey { .. } => Kind::InvalidInput,
        T::Storage(tern_storage::Error::InvalidName { .. }) => Kind::InvalidInput,
        T::UnknownTable { .. } | T::VersionNotRetained { .. } => Kind::NotFound,
        // The key is gone by design (account dropped, version retired).
        T::AccountKeyDestroyed { .. } => Kind::NotFound,
        T::AccountKeyBusy { .. } => Kind::Unavailable,
        // Statements that write go to the group's primary.
        T::ReadOnlyReplica { .. } => Kind::Conflict,
        // Another request with the same key committed first (the API answers with its
        // outcome; this is only seen if that key was pruned meanwhile).
        T::IdempotencyKeyTaken { .. } => Kind::Conflict,
        // Fenced: write elsewhere (409, with the redirect); paused: retry here (503).
        T::NotWritable(r) if r.paused => Kind::Unavailable,
        T::NotWritable(_) => Kind::Conflict,
        T::Commit { kind, .. } => match kind {
            CommitFailure::Conflict => Kind::Conflict,
            CommitFailure::LockTimeout | CommitFailure::InDoubt => Kind::Unavailable,
            _ => Kind::Internal,
        },
        T::Meta(m) => meta_kind(m),
        _ => Kind::Internal,
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_a_replica_are_a_conflict() {
        let e = Error::from(tern_table::Error::ReadOnlyReplica {
            database: "sales_r".into(),
            group: "g1".into(),
        });
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.to_string().contains("read-only"), "{e}");
        // The same refusal reached through the replication service.
        let e = Error::from(tern_replication::Error::Table(
            tern_table::Error::ReadOnlyReplica {
                database: "sales_r".into(),
                group: "g1".into(),
            },
        ));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        let e = Error::from(tern_replication::Error::NotFound {
            what: "database replication group",
            name: "g".into(),
        });
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }
}
