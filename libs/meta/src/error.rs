//! The crate's one error type.
//!
//! Every variant says what it is about: the store file, the key, the table, the entity.
//! The cases callers act on have their own variants — [`Error::VersionConflict`] (someone
//! else committed first: re-read and retry at the new version), [`Error::AlreadyExists`],
//! [`Error::NotFound`], [`Error::InUse`], [`Error::StaleEpoch`] (fenced), [`Error::Busy`]
//! (the store stayed locked past the retry budget: transient) — so nobody matches on
//! SQLite messages.

use tern_storage::layout::{DatabaseId, TableId};

/// Errors of `tern-meta`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An SQLite call failed.
    #[error("metadata store {path}: {op} failed")]
    Sqlite {
        /// The store file.
        path: String,
        /// What was being done.
        op: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// The store stayed locked by other writers through every retry.
    #[error("metadata store {path}: still busy after {attempts} attempts ({op})")]
    Busy {
        /// The store file.
        path: String,
        /// What was being done.
        op: &'static str,
        /// How many times it was tried.
        attempts: u32,
        /// The last busy error.
        #[source]
        source: rusqlite::Error,
    },

    /// The store file was written by a newer build (schema version unknown here).
    #[error(
        "metadata store {path} has schema version {found}, newer than version {supported} \
         that this build knows; run a newer tern"
    )]
    UnknownSchemaVersion {
        /// The store file.
        path: String,
        /// The version recorded in the file.
        found: i64,
        /// The newest version this build can migrate to.
        supported: u32,
    },

    /// The file is not a Tern metadata store (another application's database, or not
    /// SQLite at all); it is left untouched.
    #[error("{path} is not a Tern metadata store: {reason}")]
    NotAMetaStore {
        /// The file.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A write was attempted inside a read-only transaction.
    #[error("write of {key} inside a read-only transaction")]
    ReadOnly {
        /// The key (rendered as a tuple).
        key: String,
    },

    /// A value could not be serialized.
    #[error("cannot encode {what} for {key}")]
    Encode {
        /// The kind of value.
        what: &'static str,
        /// The key (rendered as a tuple).
        key: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },

    /// A stored value could not be parsed.
    #[error("cannot decode {what} at {key}")]
    Decode {
        /// The kind of value.
        what: &'static str,
        /// The key (rendered as a tuple).
        key: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },

    /// A stored value has a format version this build does not know.
    #[error("{what} at {key} has format version {found}; this build reads version {supported}")]
    UnknownFormatVersion {
        /// The kind of value.
        what: &'static str,
        /// The key (rendered as a tuple).
        key: String,
        /// The version found in the envelope.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },

    /// A stored key does not follow the tuple encoding.
    #[error("malformed key {key}: {reason}")]
    MalformedKey {
        /// The key bytes in hex.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Creating something that must be unique found it already there.
    #[error("{what} {name} already exists")]
    AlreadyExists {
        /// The kind of entity.
        what: &'static str,
        /// Its name or id.
        name: String,
    },

    /// The entity does not exist (or is dropped/removed, where that matters).
    #[error("{what} {name} not found")]
    NotFound {
        /// The kind of entity.
        what: &'static str,
        /// Its name or id.
        name: String,
    },

    /// The entity cannot be removed: something still refers to it.
    #[error("{what} {name} is still in use: {by}")]
    InUse {
        /// The kind of entity.
        what: &'static str,
        /// Its name or id.
        name: String,
        /// What refers to it.
        by: String,
    },

    /// A table version commit found the table at another version than expected:
    /// someone else committed first. Re-read and retry on top of `found`.
    #[error("table {table} is at version {found}, not the expected {expected}")]
    VersionConflict {
        /// The table.
        table: TableId,
        /// The version the caller based its change on.
        expected: u64,
        /// The table's actual current version.
        found: u64,
    },

    /// A table version commit would silently undo a schema change: its columns lack a
    /// column of the current version (a change computed before another writer added it).
    /// Nothing was written; re-read the table and retry.
    #[error(
        "table {table}: version {version} lacks column(s) {missing:?} of the current version {current}; re-read the table and retry"
    )]
    ColumnsConflict {
        /// The table.
        table: TableId,
        /// The table's current version.
        current: u64,
        /// The version that was to be committed.
        version: u64,
        /// The current columns missing (or of another type) in the new version.
        missing: Vec<String>,
    },

    /// A role change carried an older epoch than the stored one: the caller is fenced.
    #[error("database {database}: epoch {offered} is older than the current epoch {current}")]
    StaleEpoch {
        /// The database.
        database: DatabaseId,
        /// The stored epoch.
        current: u64,
        /// The epoch offered.
        offered: u64,
    },

    /// An argument breaks an invariant (a caller bug, not a race).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// A sequence reached `u64::MAX`.
    #[error("sequence {name} is exhausted")]
    SequenceExhausted {
        /// The sequence.
        name: String,
    },

    /// The marker with which [`MetaStore::dry_run`](crate::MetaStore::dry_run) rolls its
    /// transaction back; never returned to callers.
    #[error("dry run rolled back")]
    DryRun,
    /// A call of [`MetaStore::write_async`](crate::MetaStore::write_async) or
    /// [`read_async`](crate::MetaStore::read_async) never ran: the runtime's blocking
    /// pool is shutting down. Nothing was written.
    #[error("metadata store call not run: the runtime is shutting down")]
    ShuttingDown,
    /// A backend broke the [`Backend`](crate::Backend) contract (e.g. reported success
    /// without running the transaction body).
    #[error("backend {backend} broke its contract: {reason}")]
    BackendContract {
        /// The backend.
        backend: String,
        /// What went wrong.
        reason: &'static str,
    },
}

impl Error {
    /// True for [`Error::VersionConflict`]: retry on top of the new version.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::VersionConflict { .. })
    }

    /// True if the store was locked by another writer (transient: worth retrying).
    pub fn is_busy(&self) -> bool {
        match self {
            Error::Busy { .. } => true,
            Error::Sqlite { source, .. } => sqlite_is_busy(source),
            _ => false,
        }
    }

    pub(crate) fn not_found(what: &'static str, name: impl ToString) -> Self {
        Error::NotFound {
            what,
            name: name.to_string(),
        }
    }

    pub(crate) fn already_exists(what: &'static str, name: impl ToString) -> Self {
        Error::AlreadyExists {
            what,
            name: name.to_string(),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl ToString) -> Self {
        Error::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}

/// SQLITE_BUSY / SQLITE_LOCKED: another connection holds a lock we need.
pub(crate) fn sqlite_is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
