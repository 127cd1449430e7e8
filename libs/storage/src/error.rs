//! The crate's one error type.
//!
//! Every variant names the object (or bucket, or URL) it is about. Errors coming from
//! `object_store` are classified into the cases callers act on — already exists, conflict,
//! not found, not supported, permission denied — so that a commit protocol can treat
//! "already exists" as "someone else won" and retry at N+1, and never has to match on
//! backend-specific strings.

use std::fmt;

/// What a failed call was doing; part of every storage error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A single-request write.
    Put,
    /// A multipart (streamed) write.
    PutMultipart,
    /// A read of a whole object or of a byte range.
    Get,
    /// A metadata-only read.
    Head,
    /// A delete.
    Delete,
    /// A listing.
    List,
    /// A server-side copy.
    Copy,
    /// A rename (copy then delete on object stores).
    Rename,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Put => "put",
            Operation::PutMultipart => "multipart put",
            Operation::Get => "get",
            Operation::Head => "head",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Copy => "copy",
            Operation::Rename => "rename",
        })
    }
}

/// Errors of `tern-storage`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A create-only write (`PutMode::Create`) found the object already there.
    #[error("object {path} already exists")]
    AlreadyExists {
        /// The object's path.
        path: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },

    /// A conditional write (`PutMode::Update`) found the object changed since it was read.
    #[error("object {path} was changed by someone else (conditional {operation} refused)")]
    Conflict {
        /// What was being done.
        operation: Operation,
        /// The object's path.
        path: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },

    /// The object does not exist.
    #[error("object {path} not found")]
    NotFound {
        /// The object's path.
        path: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },

    /// The backend cannot do this kind of operation at all (e.g. `PutMode::Update` on the
    /// local folder store).
    #[error("{operation} on {path}: not supported by the {backend} store ({detail})")]
    NotSupported {
        /// What was being done.
        operation: Operation,
        /// The object's path.
        path: String,
        /// Which kind of store refused.
        backend: String,
        /// The store's own description of what it lacks.
        detail: String,
    },

    /// The credentials in use may not do this.
    #[error("{operation} on {path}: permission denied")]
    PermissionDenied {
        /// What was being done.
        operation: Operation,
        /// The object's path.
        path: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },

    /// Any other failure of a storage call (network, server, disk).
    #[error("{operation} on {path} failed")]
    Storage {
        /// What was being done.
        operation: Operation,
        /// The object's path (or listing prefix).
        path: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },

    /// A store URL that cannot be used.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// The store could not be constructed from its configuration.
    #[error("cannot open the store at {url}")]
    Open {
        /// The URL of the store.
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A name used in an object path is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// The kind of name (deployment id, account, short name, …).
        what: &'static str,
        /// The value as given.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A bucket administration call failed.
    #[error("bucket {bucket}: {action} failed")]
    Admin {
        /// The bucket.
        bucket: String,
        /// What was being done (e.g. "create bucket").
        action: &'static str,
        /// The SDK's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classify an `object_store` error raised while doing `operation` on `path`.
    pub fn from_store(
        operation: Operation,
        path: impl fmt::Display,
        source: object_store::Error,
    ) -> Self {
        let path = path.to_string();
        match source {
            object_store::Error::AlreadyExists { .. } => Error::AlreadyExists { path, source },
            object_store::Error::Precondition { .. } => Error::Conflict {
                operation,
                path,
                source,
            },
            object_store::Error::NotFound { .. } => Error::NotFound { path, source },
            object_store::Error::NotImplemented {
                operation: op,
                implementer,
            } => Error::NotSupported {
                operation,
                path,
                backend: implementer,
                detail: op,
            },
            object_store::Error::NotSupported { source } => Error::NotSupported {
                operation,
                path,
                backend: "object".into(),
                detail: source.to_string(),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::PermissionDenied {
                operation,
                path,
                source,
            },
            source => Error::Storage {
                operation,
                path,
                source,
            },
        }
    }

    /// The object path (or bucket, or URL) this error is about.
    pub fn subject(&self) -> &str {
        match self {
            Error::AlreadyExists { path, .. }
            | Error::Conflict { path, .. }
            | Error::NotFound { path, .. }
            | Error::NotSupported { path, .. }
            | Error::PermissionDenied { path, .. }
            | Error::Storage { path, .. } => path,
            Error::InvalidUrl { url, .. } | Error::Open { url, .. } => url,
            Error::InvalidName { value, .. } => value,
            Error::Admin { bucket, .. } => bucket,
        }
    }

    /// True when retrying the same call may succeed (network, server or disk hiccups);
    /// false for answers that will not change (exists, conflict, not found, denied, invalid).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

/// True when an `object_store` error may go away on retry.
pub fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}
