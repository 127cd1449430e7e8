//! The crate's one error type. Errors name the database, table, peer or file at fault and
//! never carry key material.

use tern_storage::layout::DeploymentId;

/// Errors of `tern-replication`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request that cannot be carried out as asked (bad name, wrong state).
    #[error("{what}: {reason}")]
    Invalid {
        /// What was asked.
        what: String,
        /// Why it cannot be done.
        reason: String,
    },
    /// Something named that does not exist here.
    #[error("unknown {what} {name}")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A peer this deployment has no channel or bucket for.
    #[error("no channel to deployment {peer}: add it with `create deployment` first")]
    NoPeer {
        /// The peer.
        peer: DeploymentId,
    },
    /// A replication message that is malformed or does not fit this deployment's state.
    #[error("bad {message_type} message from {from}: {reason}")]
    BadMessage {
        /// The message type.
        message_type: &'static str,
        /// The sender.
        from: DeploymentId,
        /// What is wrong.
        reason: String,
    },
    /// A RepMK sealed to a customer key this deployment cannot use: the account holds no
    /// such key (removed, or another one registered since), or its key does not open.
    #[error("customer key of account {account}: {reason}")]
    CustomerKey {
        /// The account.
        account: String,
        /// What is wrong.
        reason: String,
    },
    /// A file copy (re-encryption) that failed.
    #[error("copying {path}: {source}")]
    Copy {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: tern_crypto::Error,
    },
    /// A replicated change that cannot be applied yet: an earlier version is missing.
    #[error("table {table} is at version {have}; the change needs version {base} first")]
    Gap {
        /// The table.
        table: String,
        /// Its version here.
        have: u64,
        /// The version the change was made on.
        base: u64,
    },
    /// The replica's state does not match what a replicated change expects (a file it
    /// removes is unknown here): only a refresh can repair it.
    #[error("replica drift in table {table}: {reason}")]
    Drift {
        /// The table.
        table: String,
        /// What does not match.
        reason: String,
    },
    /// An import dropped while it ran: a later answer to the same request arrived.
    #[error("import of {response}: superseded by a later answer to the same request")]
    Superseded {
        /// The response.
        response: String,
    },
    /// An import stepped aside for a failover that wants the importer (waiting for its
    /// files, between batches, or dropping a batch's copies uncommitted); it is taken up
    /// again after it.
    #[error("import of {response}: paused while a failover drains this deployment")]
    Paused {
        /// The response.
        response: String,
    },
    /// The metadata store.
    #[error(transparent)]
    Meta(#[from] tern_meta::Error),
    /// Tables and commits.
    #[error(transparent)]
    Table(#[from] tern_table::Error),
    /// The transaction log.
    #[error(transparent)]
    Txn(#[from] tern_txn::Error),
    /// The message service.
    #[error(transparent)]
    Messaging(#[from] tern_messaging::Error),
    /// Keys and encrypted files.
    #[error(transparent)]
    Crypto(#[from] tern_crypto::Error),
    /// Object storage.
    #[error(transparent)]
    Storage(#[from] tern_storage::Error),
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Whether a crash point fired (tests): the process is taken as dead from there on.
    pub(crate) fn is_crash(&self) -> bool {
        matches!(self, Error::Messaging(e) if e.is_crash())
    }

    /// Whether the commit this error ended may still complete (recovery will finish it).
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, Error::Table(e) if e.is_in_doubt())
    }
}

/// Results of `tern-replication`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
