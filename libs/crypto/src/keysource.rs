//! Which key encrypts a file: [`KeySource`] and its three implementations.
//!
//! | source | file key | header key reference | used for |
//! |---|---|---|---|
//! | [`TableFileKeys`] | `HKDF(TMK, info = path)` | TMK id | MPs and metadata files in a volume |
//! | [`ReplicationFileKeys`] | `HKDF(RepMK, info = name)` | RepMK id | re-encrypted copies in an inbound stage |
//! | [`MessageFileKeys`] | random DEK | diversifier + DEK wrapped under `HMAC(GMK, diversifier)` | message and body files |
//!
//! The `name` passed to a source is the file's object path (or, for streams, whatever name
//! the caller binds the file to). Derived keys are bound to it, and a wrapped DEK's
//! associated data includes it, so a file renamed or copied elsewhere without
//! re-encryption does not decrypt.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tern_clock::SharedClock;

use crate::diversifier::{Diversifier, DiversifierPolicy};
use crate::error::{Error, Result};
use crate::format::{KeyRef, MasterKind};
use crate::keys::{DataKey, FileKey, KeyId, RepMk};
use crate::provider::CachedWrapKeys;
use crate::random::SharedRandom;
use crate::wrap::WrapContext;

/// Supplies file keys for encrypting and decrypting.
#[async_trait]
pub trait KeySource: Send + Sync + fmt::Debug {
    /// The key for a new file `name`, and the reference to store in its header.
    async fn encryption_key(&self, name: &str) -> Result<(KeyRef, FileKey)>;

    /// The key of the existing file `name` whose header holds `key_ref`.
    async fn decryption_key(&self, name: &str, key_ref: &KeyRef) -> Result<FileKey>;
}

fn unexpected(name: &str, expected: &'static str, found: &KeyRef) -> Error {
    Error::UnexpectedKeyRef {
        path: name.to_owned(),
        expected,
        found: found.kind_name(),
    }
}

/// Volume files: keys derived from a table master key and the object path.
pub struct TableFileKeys {
    tmk: Arc<DataKey>,
    id: KeyId,
}

impl TableFileKeys {
    /// Keys under `tmk`.
    pub fn new(tmk: Arc<DataKey>) -> Self {
        let id = tmk.id();
        TableFileKeys { tmk, id }
    }

    /// The id of the table master key (what the headers of files sealed with these keys
    /// name as their master key; not key material).
    pub fn master_id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for TableFileKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableFileKeys({})", self.id)
    }
}

#[async_trait]
impl KeySource for TableFileKeys {
    async fn encryption_key(&self, name: &str) -> Result<(KeyRef, FileKey)> {
        let key = FileKey::for_table_file(&self.tmk, name)?;
        Ok((
            KeyRef::Derived {
                master: MasterKind::Table,
                master_id: self.id,
            },
            key,
        ))
    }

    async fn decryption_key(&self, name: &str, key_ref: &KeyRef) -> Result<FileKey> {
        match key_ref {
            KeyRef::Derived {
                master: MasterKind::Table,
                master_id,
            } if *master_id == self.id => FileKey::for_table_file(&self.tmk, name),
            KeyRef::Derived {
                master: MasterKind::Table,
                master_id,
            } => Err(Error::WrongKey {
                path: name.to_owned(),
                expected: self.id,
                found: *master_id,
            }),
            other => Err(unexpected(name, "table-derived key", other)),
        }
    }
}

/// Inbound-stage files: keys derived from a replication master key and the file name.
pub struct ReplicationFileKeys {
    repmk: Arc<RepMk>,
    id: KeyId,
}

impl ReplicationFileKeys {
    /// Keys under `repmk`.
    pub fn new(repmk: Arc<RepMk>) -> Self {
        let id = repmk.id();
        ReplicationFileKeys { repmk, id }
    }
}

impl fmt::Debug for ReplicationFileKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicationFileKeys({})", self.id)
    }
}

#[async_trait]
impl KeySource for ReplicationFileKeys {
    async fn encryption_key(&self, name: &str) -> Result<(KeyRef, FileKey)> {
        let key = FileKey::for_replicated_file(&self.repmk, name)?;
        Ok((
            KeyRef::Derived {
                master: MasterKind::Replication,
                master_id: self.id,
            },
            key,
        ))
    }

    async fn decryption_key(&self, name: &str, key_ref: &KeyRef) -> Result<FileKey> {
        match key_ref {
            KeyRef::Derived {
                master: MasterKind::Replication,
                master_id,
            } if *master_id == self.id => FileKey::for_replicated_file(&self.repmk, name),
            KeyRef::Derived {
                master: MasterKind::Replication,
                master_id,
            } => Err(Error::WrongKey {
                path: name.to_owned(),
                expected: self.id,
                found: *master_id,
            }),
            other => Err(unexpected(name, "replication-derived key", other)),
        }
    }
}

/// Message and body files on one replication channel: a random DEK per file, wrapped under
/// the GMK-derived key of a diversifier, bound to the channel and the file name.
///
/// Encrypting uses the diversifier set with [`Self::with_diversifier`] (the one announced
/// in the previous message file) or else the policy's current one. Decrypting checks the
/// header's diversifier against the policy (and against the announced one, when set) before
/// asking for its wrapping key.
pub struct MessageFileKeys {
    wrap_keys: Arc<CachedWrapKeys>,
    channel: String,
    policy: DiversifierPolicy,
    clock: SharedClock,
    random: SharedRandom,
    diversifier: Option<Diversifier>,
}

impl fmt::Debug for MessageFileKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageFileKeys")
            .field("channel", &self.channel)
            .field("diversifier", &self.diversifier)
            .finish_non_exhaustive()
    }
}

impl MessageFileKeys {
    /// Keys for `channel` (e.g. `d1->d2`).
    pub fn new(
        wrap_keys: Arc<CachedWrapKeys>,
        channel: impl Into<String>,
        policy: DiversifierPolicy,
        clock: SharedClock,
        random: SharedRandom,
    ) -> Self {
        MessageFileKeys {
            wrap_keys,
            channel: channel.into(),
            policy,
            clock,
            random,
            diversifier: None,
        }
    }

    /// Pins the diversifier: encrypt under it, and accept only it when decrypting.
    pub fn with_diversifier(mut self, diversifier: Diversifier) -> Self {
        self.diversifier = Some(diversifier);
        self
    }

    fn context(&self, name: &str, diversifier: Diversifier) -> WrapContext {
        WrapContext::new(self.channel.clone(), name).with_diversifier(diversifier)
    }
}

#[async_trait]
impl KeySource for MessageFileKeys {
    async fn encryption_key(&self, name: &str) -> Result<(KeyRef, FileKey)> {
        let diversifier = self
            .diversifier
            .unwrap_or_else(|| self.policy.current(&*self.clock));
        self.policy.check(diversifier, &*self.clock)?;
        let wrap_key = self.wrap_keys.get(diversifier).await?;
        let dek = FileKey::generate(&*self.random)?;
        let wrapped =
            wrap_key.wrap_file_key(&dek, &self.context(name, diversifier), &*self.random)?;
        Ok((
            KeyRef::WrappedDek {
                diversifier,
                wrapped,
            },
            dek,
        ))
    }

    async fn decryption_key(&self, name: &str, key_ref: &KeyRef) -> Result<FileKey> {
        let KeyRef::WrappedDek {
            diversifier,
            wrapped,
        } = key_ref
        else {
            return Err(unexpected(name, "GMK-wrapped DEK", key_ref));
        };
        if let Some(expected) = self.diversifier
            && expected != *diversifier
        {
            return Err(Error::UnexpectedDiversifier {
                path: name.to_owned(),
                expected,
                found: *diversifier,
            });
        }
        self.policy.check(*diversifier, &*self.clock)?;
        let wrap_key = self.wrap_keys.get(*diversifier).await?;
        wrap_key
            .unwrap_file_key(wrapped, &self.context(name, *diversifier))
            .map_err(|_| Error::decrypt(name))
    }
}
