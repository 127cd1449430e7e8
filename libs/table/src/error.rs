//! The crate's one error type. Bad input errors name the column, line or file at fault.

use tern_storage::layout::{AccountId, TableId};

/// Errors of `tern-table`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A column that the table does not have.
    #[error("unknown column {column:?}")]
    UnknownColumn {
        /// The name as given.
        column: String,
    },
    /// A non-nullable column missing from the input.
    #[error("column {column:?} is required (not nullable) but missing from the input")]
    MissingColumn {
        /// The column.
        column: String,
    },
    /// A value or column of the wrong type.
    #[error("column {column:?} has type {expected}, got {found}")]
    TypeMismatch {
        /// The column.
        column: String,
        /// The column's type.
        expected: String,
        /// What was given.
        found: String,
    },
    /// Nulls in a column declared not nullable.
    #[error("column {column:?} is not nullable but the input has {count} null(s)")]
    NullInNonNullable {
        /// The column.
        column: String,
        /// How many nulls.
        count: usize,
    },
    /// A table definition that cannot be used.
    #[error("invalid table definition: {reason}")]
    InvalidSchema {
        /// What is wrong.
        reason: String,
    },
    /// A write to a secondary replica: it changes only through replication.
    #[error(
        "database {database} is a read-only secondary replica of group {group}: write to its primary"
    )]
    ReadOnlyReplica {
        /// The database.
        database: String,
        /// Its replication group.
        group: String,
    },
    /// A write to a database that may not take statements now: fenced by a newer epoch
    /// (another deployment is its group's primary), or a primary that paused itself (no
    /// replica confirmed it within its RPO, …).
    #[error("database {} does not take writes now: {}", .0.database, .0.reason)]
    NotWritable(Box<Refusal>),
    /// A table name or id that does not exist (or was dropped).
    #[error("unknown table {name}")]
    UnknownTable {
        /// The name or id.
        name: String,
    },
    /// A version outside the table's retained history.
    #[error("table {table} has no retained version {version} (current {current}, oldest {oldest})")]
    VersionNotRetained {
        /// The table.
        table: TableId,
        /// The version asked for.
        version: u64,
        /// The current version.
        current: u64,
        /// The oldest retained version.
        oldest: u64,
    },
    /// Malformed input data (CSV, NDJSON, Parquet) — nothing was committed.
    #[error("bad input in {source_name}{}: {detail}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    BadInput {
        /// The file or stream name.
        source_name: String,
        /// The line, when known.
        line: Option<u64>,
        /// What is wrong.
        detail: String,
    },
    /// A merge source with the same key twice.
    #[error("merge source has key {key} more than once")]
    DuplicateMergeKey {
        /// The key, rendered.
        key: String,
    },
    /// A metadata file that does not parse.
    #[error("metadata file {path} is invalid: {reason}")]
    BadMetadataFile {
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A metadata file could not be encoded (nothing was written: an encode failure never
    /// becomes an empty file).
    #[error("metadata file of {table}@{version} could not be encoded")]
    EncodeMetadataFile {
        /// The table.
        table: TableId,
        /// The version it would make.
        version: u64,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An Arrow computation failed.
    #[error("{context}")]
    Arrow {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A Parquet file could not be written or read.
    #[error("parquet file {path}")]
    Parquet {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The table moved on since the statement read it (another writer committed first);
    /// the statement may be retried.
    #[error(
        "table {table} changed while the statement ran (read version {read}, now {found}); retry"
    )]
    Conflict {
        /// The table.
        table: TableId,
        /// The version the statement read.
        read: u64,
        /// The version found at commit.
        found: u64,
    },
    /// The table's columns changed while the statement ran in a way its change cannot
    /// be carried over (anything but added nullable columns); nothing was committed and
    /// the statement may be retried.
    #[error(
        "table {table}: its columns changed while the statement ran (read version {read}, now {found}); retry"
    )]
    SchemaConflict {
        /// The table.
        table: TableId,
        /// The version the statement read.
        read: u64,
        /// The version found at commit.
        found: u64,
    },
    /// A table's stored master key reference cannot be read (stored data is damaged or
    /// from an unknown format); its files cannot be opened.
    #[error("table {table} has an unreadable master key reference")]
    BadMasterKeyRef {
        /// The table.
        table: TableId,
    },
    /// The account master key version a table key is wrapped by is gone: retired by a
    /// rotation or destroyed when the account was dropped. The files under it cannot be
    /// decrypted any more (crypto-shredding), by design.
    #[error(
        "account {account}: master key version {version} was destroyed (account dropped or key retired); its tables' files cannot be decrypted"
    )]
    AccountKeyDestroyed {
        /// The account.
        account: AccountId,
        /// The key version.
        version: u64,
    },
    /// A stored account master key cannot be read (damaged metadata).
    #[error("account {account}: master key version {version} is stored in an unreadable form")]
    BadAccountKey {
        /// The account.
        account: AccountId,
        /// The key version.
        version: u64,
    },
    /// A key rotation or the key chain migration kept finding the keys changed by a
    /// concurrent change (a table created, another rotation); nothing was changed.
    #[error("{scope}: table keys kept changing while being re-wrapped; nothing was changed, retry")]
    AccountKeyBusy {
        /// What was being re-keyed.
        scope: String,
    },
    /// The committer reported a table change committed without the table version it made
    /// (a broken [`Committer`](crate::Committer) implementation).
    #[error("the committer returned no table version for the change of table {table}")]
    NoTableVersion {
        /// The table.
        table: TableId,
    },
    /// A statement's idempotency key was taken by another transaction while this one ran
    /// (two requests with the same key at once): nothing of this one was committed; the
    /// other's outcome is the answer to both.
    #[error(
        "idempotency key {key:?} was taken by another request while this statement ran; nothing of it was committed"
    )]
    IdempotencyKeyTaken {
        /// The key.
        key: String,
        /// The transaction that holds it (none when that request changed nothing).
        txn_id: Option<u64>,
    },
    /// The committer keeps no idempotency keys (only the commit protocol of a deployment
    /// does): the statement was not run rather than run without the guarantee.
    #[error(
        "idempotency key {key:?}: this committer does not store idempotency keys; the statement was not run"
    )]
    IdempotencyUnsupported {
        /// The key.
        key: String,
    },
    /// The commit protocol refused or failed (see [`CommitFailure`]).
    #[error("{source}")]
    Commit {
        /// What kind of failure.
        kind: CommitFailure,
        /// The transaction id, when one was issued (always for [`CommitFailure::InDoubt`]:
        /// the id to look the outcome up by).
        txn_id: Option<u64>,
        /// The committer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Compaction thresholds that cannot be used.
    #[error("compaction option {field}: {reason}")]
    InvalidCompactionOptions {
        /// The option.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A compaction wrote another number of rows than its inputs hold (nothing was
    /// committed): a bug or damaged input, never a silent loss.
    #[error("compaction of {table} read {read} rows but wrote {written}; nothing was committed")]
    CompactionRowCount {
        /// The table.
        table: TableId,
        /// Rows in the inputs (by their index entries).
        read: u64,
        /// Rows in the merged files.
        written: u64,
    },
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

/// Why a database does not take writes now ([`Error::NotWritable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The database.
    pub database: String,
    /// Its replication group.
    pub group: String,
    /// Why, with what to do.
    pub reason: String,
    /// The newest epoch known here.
    pub epoch: u64,
    /// The deployment holding the group's primary, when another one does.
    pub primary: Option<String>,
    /// That deployment's API URL, when it published one.
    pub primary_url: Option<String>,
    /// Whether the same database takes writes again by itself (a pause: retry later)
    /// rather than elsewhere (fenced: write to `primary`).
    pub paused: bool,
}

/// How a commit failed, as far as a statement's caller needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitFailure {
    /// Another transaction won; nothing was committed and the statement may be retried.
    Conflict,
    /// A lock was not granted in time; nothing was committed.
    LockTimeout,
    /// The transaction passed its point of no return but could not finish: it is not
    /// visible yet and will be completed by recovery (never rolled back).
    InDoubt,
    /// Anything else; nothing was committed.
    Failed,
}

impl Error {
    /// True when the commit lost a race with another writer and may be retried.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Meta(
                tern_meta::Error::VersionConflict { .. } | tern_meta::Error::ColumnsConflict { .. }
            ) | Error::Conflict { .. }
                | Error::SchemaConflict { .. }
                | Error::Commit {
                    kind: CommitFailure::Conflict,
                    ..
                }
        )
    }

    /// The id of a transaction in doubt: its outcome is not known yet (recovery completes
    /// it); look it up by this id rather than retrying the statement.
    pub fn in_doubt_txn_id(&self) -> Option<u64> {
        match self {
            Error::Commit {
                kind: CommitFailure::InDoubt,
                txn_id,
                ..
            } => *txn_id,
            _ => None,
        }
    }

    /// True when the commit's outcome is not known yet: it will be completed by recovery.
    pub fn is_in_doubt(&self) -> bool {
        matches!(
            self,
            Error::Commit {
                kind: CommitFailure::InDoubt,
                ..
            }
        )
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
