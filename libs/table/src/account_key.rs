//! Account master keys (AMKs): the middle of the key chain of DESIGN.md §4.
//!
//! ```text
//!   master key (KMS key / key file)
//!     └─wraps─▶ AMK  amk/<account>/<version>   one active version per account
//!                 └─wraps─▶ TMK  TableDpo.master_key_ref = "tmk:v2:<amk version>:<hex>"
//!                             └─HKDF(path)─▶ file keys of the table's MPs and metadata files
//! ```
//!
//! What this module promises:
//!
//! - **An AMK per account**, random (the key provider's `GenerateDataKey`), stored only
//!   wrapped by the deployment's master key and bound to the account. It is made when the
//!   account is created ([`AccountKeys::create`]), or at the latest when its first table
//!   is ([`AccountKeys::current`]); two processes making the first one race harmlessly (the
//!   first stored wins).
//! - **Crypto-shredding**: [`destroy_in`] deletes the wrapped key of every version of an
//!   account's AMK in the caller's metadata transaction (dropping the account). The TMKs of
//!   the account's tables are stored only under those AMKs, so the account's files left in
//!   the volume can no longer be decrypted by anyone, with the metadata store and the master
//!   key in hand: reading one is [`Error::AccountKeyDestroyed`]. The rows stay as
//!   tombstones, so an account re-created under the same name starts at the next version
//!   and the old tables' references keep naming a destroyed version (never a new key).
//! - **Rotation without rewriting data** ([`AccountKeys::rotate`]): a new AMK version; every
//!   TMK of the account (dropped tables included) is re-wrapped under it and the older
//!   versions are retired (their wrapped key deleted, the row kept as a tombstone so that
//!   versions are never reused), all in one metadata transaction. The TMKs themselves do not
//!   change, so no file is rewritten and reads go on across the rotation.
//! - **Migration** ([`AccountKeys::migrate`]): stores written before AMKs existed (key chain
//!   version 1: `tmk:v1:<hex>`, the TMK wrapped directly by the master key) get an AMK per
//!   account and every TMK re-wrapped under it in **one** metadata transaction that also
//!   records key chain version 2 (`keychain`). The key-provider calls come first and leave
//!   nothing behind, so a crash or failure anywhere leaves the store in the old format, and
//!   the next open redoes the migration; once it is recorded, opening does nothing more.
//!
//! Unwrapped AMKs are cached in memory per (account, version); [`DataKey`] zeroizes on
//! drop, and a destroyed or retired version is evicted at once by the process that did it.
//! Other processes sharing the metadata store keep their cached keys until they restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tern_clock::SharedClock;
use tern_crypto::{DataKey, EnvelopeContext, KeyProvider, SharedRandom, WrapContext, WrappedKey};
use tern_meta::{Key, MetaStore, MetaTxn, TableDpo};
use tern_storage::layout::{AccountId, DatabaseId, TableId};

use crate::error::{Error, Result};

/// The key chain this build writes: 2 = TMKs wrapped by their account's AMK. Version 1
/// (no `keychain` row) wrapped TMKs directly by the master key.
pub const KEY_CHAIN_VERSION: u32 = 2;

const TMK_V1: &str = "tmk:v1:";
const TMK_V2: &str = "tmk:v2:";
/// How often a rotation or migration that raced with a concurrent change starts over.
const ATTEMPTS: usize = 5;

/// One version of an account's master key (`amk/<account>/<version>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountKeyDpo {
    /// The account.
    pub account: AccountId,
    /// The version: 1 for the first key, one more at each rotation.
    pub version: u64,
    /// The AMK wrapped by the deployment's master key (hex); `None` once the version is
    /// retired: the key is gone for good.
    pub wrapped: Option<String>,
    /// When it was made.
    pub created_at_ms: i64,
    /// When it was retired.
    pub retired_at_ms: Option<i64>,
}
tern_meta::impl_dpo!(AccountKeyDpo, "account master key");

/// The store's key chain version (`keychain`), written by the migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChainDpo {
    /// [`KEY_CHAIN_VERSION`] when written by this build.
    pub version: u32,
    /// When the store reached it.
    pub migrated_at_ms: i64,
}
tern_meta::impl_dpo!(KeyChainDpo, "key chain");

fn amk_key(account: &AccountId, version: u64) -> Key {
    amks_of(account).u64(version)
}

fn amks_of(account: &AccountId) -> Key {
    Key::root("amk").str(account.as_str())
}

fn keychain_key() -> Key {
    Key::root("keychain")
}

/// Where a table's TMK is stored, parsed from [`TableDpo::master_key_ref`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TmkRef {
    /// Key chain 1: wrapped by the master key, bound to (account, table).
    Master(WrappedKey),
    /// Key chain 2: wrapped by version `version` of the account's AMK, bound to
    /// (account, table).
    Account {
        /// The AMK version.
        version: u64,
        /// The wrapped TMK.
        wrapped: WrappedKey,
    },
}

impl TmkRef {
    /// Parses a stored reference; `None` when it is not one of the two forms.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(hex) = text.strip_prefix(TMK_V1) {
            return WrappedKey::from_hex(hex).map(TmkRef::Master);
        }
        let (version, hex) = text.strip_prefix(TMK_V2)?.split_once(':')?;
        Some(TmkRef::Account {
            version: version.parse().ok()?,
            wrapped: WrappedKey::from_hex(hex)?,
        })
    }

    /// The stored form.
    pub fn render(&self) -> String {
        match self {
            TmkRef::Master(w) => format!("{TMK_V1}{}", w.to_hex()),
            TmkRef::Account { version, wrapped } => {
                format!("{TMK_V2}{version}:{}", wrapped.to_hex())
            }
        }
    }
}

fn parse_ref(t: &TableDpo) -> Result<TmkRef> {
    TmkRef::parse(&t.master_key_ref).ok_or_else(|| Error::BadMasterKeyRef {
        table: t.id.clone(),
    })
}

fn tmk_context(account: &AccountId, table: &TableId) -> WrapContext {
    WrapContext::new(account.as_str(), table.as_str())
}

/// Deletes the wrapped key of every version of `account`'s master key in `tx`
/// (crypto-shredding: the account's TMKs, and so its files, cannot be opened once this
/// commits); the rows stay as tombstones (`wrapped: None`). Returns how many versions
/// still held a key. The caller drops the account in the same transaction and then calls
/// [`AccountKeys::forget`].
pub fn destroy_in(
    tx: &mut MetaTxn<'_>,
    account: &AccountId,
    now_ms: i64,
) -> tern_meta::Result<usize> {
    let mut live = 0;
    for (k, mut r) in tx.scan_prefix::<AccountKeyDpo>(&amks_of(account))? {
        if r.wrapped.take().is_some() {
            r.retired_at_ms = Some(now_ms);
            tx.put(&k, &r)?;
            live += 1;
        }
    }
    Ok(live)
}

/// The versions of `account`'s master key, oldest first (retired ones have no key).
pub fn versions_in(
    tx: &mut MetaTxn<'_>,
    account: &AccountId,
) -> tern_meta::Result<Vec<AccountKeyDpo>> {
    Ok(tx
        .scan_prefix::<AccountKeyDpo>(&amks_of(account))?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Refuses to publish `table` when its TMK is wrapped by an AMK version that is not active
/// (retired by a rotation or destroyed with its account after the TMK was wrapped): the
/// table would be unreadable from its first file. The statement fails and may be retried.
pub(crate) fn check_publishable(
    tx: &mut MetaTxn<'_>,
    account: &AccountId,
    table: &TableDpo,
) -> tern_meta::Result<()> {
    if let Some(TmkRef::Account { version, .. }) = TmkRef::parse(&table.master_key_ref) {
        let live = tx
            .get::<AccountKeyDpo>(&amk_key(account, version))?
            .is_some_and(|r| r.wrapped.is_some());
        if !live {
            return Err(tern_meta::Error::NotFound {
                what: "active account master key",
                name: format!("{account}/{version} (table {}; retry)", table.id),
            });
        }
    }
    Ok(())
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The account.
    pub account: AccountId,
    /// The new active version.
    pub version: u64,
    /// The versions retired by it.
    pub retired: Vec<u64>,
    /// Table keys re-wrapped (dropped tables included).
    pub tables: usize,
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// Accounts that got their first AMK.
    pub accounts: usize,
    /// Table keys re-wrapped from the master key to their account's AMK.
    pub tables: usize,
}

/// The account master keys of one deployment.
pub struct AccountKeys {
    meta: MetaStore,
    provider: Arc<dyn KeyProvider>,
    clock: SharedClock,
    random: SharedRandom,
    cache: Mutex<HashMap<(AccountId, u64), Arc<DataKey>>>,
}

impl std::fmt::Debug for AccountKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKeys").finish_non_exhaustive()
    }
}

/// The rows a rotation or migration changes, prepared before its transaction.
struct Rewrap {
    table: TableId,
    old_ref: String,
    new_ref: String,
}

/// The transaction found the store changed since the preparation: start over.
struct Raced;

impl AccountKeys {
    /// The AMKs kept in `meta`, wrapped by `provider`'s master key.
    pub fn new(
        meta: MetaStore,
        provider: Arc<dyn KeyProvider>,
        clock: SharedClock,
        random: SharedRandom,
    ) -> Self {
        AccountKeys {
            meta,
            provider,
            clock,
            random,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(AccountId, u64), Arc<DataKey>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key provider holding the master key.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// The store's key chain version (1 before [`Self::migrate`] ran).
    pub fn chain_version(&self) -> Result<u32> {
        Ok(self
            .meta
            .read(|tx| tx.get::<KeyChainDpo>(&keychain_key()))?
            .map_or(1, |k| k.version))
    }

    /// Makes `account`'s first AMK unless it has one; returns the active version.
    pub async fn create(&self, account: &AccountId) -> Result<u64> {
        Ok(self.current(account).await?.0)
    }

    /// The active version of `account`'s AMK and the key, made now if the account has
    /// none yet.
    pub async fn current(&self, account: &AccountId) -> Result<(u64, Arc<DataKey>)> {
        let active = self.meta.read(|tx| active_in(tx, account))?;
        if let Some(row) = active {
            let key = self.open(&row).await?;
            return Ok((row.version, key));
        }
        if self.meta.read(|tx| tx.get_account(account))?.is_none() {
            return Err(tern_meta::Error::NotFound {
                what: "account",
                name: account.to_string(),
            }
            .into());
        }
        let (key, wrapped) = self
            .provider
            .generate_data_key(&EnvelopeContext::account(account.as_str()))
            .await?;
        let fresh_hex = wrapped.to_hex();
        let now = self.clock.now_millis();
        // Two first uses may race: the first stored key wins, the other is discarded. The
        // version follows any tombstone of an earlier account of the same name.
        let (stored, made) = self.meta.write(|tx| {
            if tx.get_account(account)?.is_none() {
                return Err(tern_meta::Error::NotFound {
                    what: "account",
                    name: account.to_string(),
                });
            }
            match tx.scan_prefix::<AccountKeyDpo>(&amks_of(account))?.pop() {
                Some((_, row)) if row.wrapped.is_some() => Ok((row, false)),
                last => {
                    let row = AccountKeyDpo {
                        account: account.clone(),
                        version: last.map_or(1, |(_, r)| r.version + 1),
                        wrapped: Some(fresh_hex.clone()),
                        created_at_ms: now,
                        retired_at_ms: None,
                    };
                    tx.put(&amk_key(account, row.version), &row)?;
                    Ok((row, true))
                }
            }
        })?;
        if made {
            tracing::info!(%account, version = stored.version, "account master key created");
            let key = Arc::new(key);
            self.lock()
                .insert((account.clone(), stored.version), Arc::clone(&key));
            return Ok((stored.version, key));
        }
        Ok((stored.version, self.open(&stored).await?))
    }

    /// Unwraps a stored AMK version (from the cache when it was unwrapped before).
    async fn open(&self, row: &AccountKeyDpo) -> Result<Arc<DataKey>> {
        let slot = (row.account.clone(), row.version);
        if let Some(k) = self.lock().get(&slot) {
            return Ok(Arc::clone(k));
        }
        let destroyed = || Error::AccountKeyDestroyed {
            account: row.account.clone(),
            version: row.version,
        };
        let hex = row.wrapped.as_deref().ok_or_else(destroyed)?;
        let wrapped = WrappedKey::from_hex(hex).ok_or_else(|| Error::BadAccountKey {
            account: row.account.clone(),
            version: row.version,
        })?;
        let key = Arc::new(
            self.provider
                .decrypt_data_key(&wrapped, &EnvelopeContext::account(row.account.as_str()))
                .await?,
        );
        self.lock().insert(slot, Arc::clone(&key));
        Ok(key)
    }

    /// Version `version` of `account`'s AMK; [`Error::AccountKeyDestroyed`] when it was
    /// retired or destroyed.
    async fn version(&self, account: &AccountId, version: u64) -> Result<Arc<DataKey>> {
        if let Some(k) = self.lock().get(&(account.clone(), version)) {
            return Ok(Arc::clone(k));
        }
        let row = self
            .meta
            .read(|tx| tx.get::<AccountKeyDpo>(&amk_key(account, version)))?
            .ok_or_else(|| Error::AccountKeyDestroyed {
                account: account.clone(),
                version,
            })?;
        self.open(&row).await
    }

    /// A new table key for table `table` of `account`, and its stored reference (wrapped
    /// by the account's active AMK).
    pub async fn new_table_key(
        &self,
        account: &AccountId,
        table: &TableId,
    ) -> Result<(DataKey, String)> {
        let (version, amk) = self.current(account).await?;
        let tmk = DataKey::generate(&*self.random)?;
        let wrapped = amk.wrap_table_key(&tmk, &tmk_context(account, table), &*self.random)?;
        Ok((tmk, TmkRef::Account { version, wrapped }.render()))
    }

    /// The TMK of `table` (of `account`), unwrapped through its key chain.
    pub async fn table_key(&self, account: &AccountId, table: &TableDpo) -> Result<DataKey> {
        match parse_ref(table)? {
            TmkRef::Master(wrapped) => Ok(self
                .provider
                .decrypt_data_key(
                    &wrapped,
                    &EnvelopeContext::table(account.as_str(), table.id.as_str()),
                )
                .await?),
            TmkRef::Account { version, wrapped } => {
                let amk = self.version(account, version).await?;
                Ok(amk.unwrap_table_key(&wrapped, &tmk_context(account, &table.id))?)
            }
        }
    }

    /// Forgets the cached keys of `account` (after its keys were destroyed).
    pub fn forget(&self, account: &AccountId) {
        self.lock().retain(|(a, _), _| a != account);
    }

    /// Rotates `account`'s AMK: see the module docs. No data file is read or written.
    pub async fn rotate(&self, account: &AccountId) -> Result<Rotation> {
        for _ in 0..ATTEMPTS {
            let (old, _) = self.current(account).await?;
            let (amk, wrapped) = self
                .provider
                .generate_data_key(&EnvelopeContext::account(account.as_str()))
                .await?;
            let version = old + 1;
            let tables = self.meta.read(|tx| tables_of(tx, Some(account)))?;
            let mut rewraps = Vec::with_capacity(tables.len());
            for (_, t) in &tables {
                let tmk = match self.table_key(account, t).await {
                    Ok(k) => k,
                    // A table of an earlier, dropped account of this name: shredded already.
                    Err(Error::AccountKeyDestroyed { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let w = amk.wrap_table_key(&tmk, &tmk_context(account, &t.id), &*self.random)?;
                rewraps.push(Rewrap {
                    table: t.id.clone(),
                    old_ref: t.master_key_ref.clone(),
                    new_ref: TmkRef::Account {
                        version,
                        wrapped: w,
                    }
                    .render(),
                });
            }
            let now = self.clock.now_millis();
            let row = AccountKeyDpo {
                account: account.clone(),
                version,
                wrapped: Some(wrapped.to_hex()),
                created_at_ms: now,
                retired_at_ms: None,
            };
            let outcome = self.meta.write(|tx| {
                if active_in(tx, account)?.map(|r| r.version) != Some(old) {
                    return Ok(Err(Raced));
                }
                if !apply_rewraps(tx, Some(account), &rewraps)? {
                    return Ok(Err(Raced));
                }
                let mut retired = Vec::new();
                for mut r in versions_in(tx, account)? {
                    if r.wrapped.is_some() {
                        r.wrapped = None;
                        r.retired_at_ms = Some(now);
                        tx.put(&amk_key(account, r.version), &r)?;
                        retired.push(r.version);
                    }
                }
                tx.put(&amk_key(account, version), &row)?;
                Ok(Ok(retired))
            })?;
            match outcome {
                Ok(retired) => {
                    self.lock().retain(|(a, _), _| a != account);
                    self.lock()
                        .insert((account.clone(), version), Arc::new(amk));
                    tracing::info!(%account, version, ?retired, tables = rewraps.len(), "account master key rotated");
                    return Ok(Rotation {
                        account: account.clone(),
                        version,
                        retired,
                        tables: rewraps.len(),
                    });
                }
                Err(Raced) => continue,
            }
        }
        Err(Error::AccountKeyBusy {
            scope: format!("account {account}"),
        })
    }

    /// Brings a store of key chain 1 to [`KEY_CHAIN_VERSION`]: see the module docs.
    /// Returns what it changed (nothing when the store is already migrated).
    pub async fn migrate(&self) -> Result<Migration> {
        self.migrate_with(&mut || Ok(())).await
    }

    /// [`Self::migrate`] with a hook run after the key-provider work and before the
    /// metadata transaction (tests place a crash there).
    #[doc(hidden)]
    pub async fn migrate_with(
        &self,
        before_commit: &mut (dyn FnMut() -> Result<()> + Send),
    ) -> Result<Migration> {
        for _ in 0..ATTEMPTS {
            if self.chain_version()? >= KEY_CHAIN_VERSION {
                return Ok(Migration::default());
            }
            let (accounts, tables) = self.meta.read(|tx| {
                let accounts = tx.list_accounts()?;
                let mut out = Vec::with_capacity(accounts.len());
                for a in accounts {
                    let active = active_in(tx, &a.name)?;
                    out.push((a.name, active));
                }
                Ok((out, tables_of(tx, None)?))
            })?;
            // Every account gets an AMK (an account without tables too: its next table
            // is wrapped under it); one made meanwhile by this build is reused.
            let mut amks: BTreeMap<AccountId, (u64, Arc<DataKey>, Option<AccountKeyDpo>)> =
                BTreeMap::new();
            for (account, active) in accounts {
                let entry = match active {
                    Some(row) => (row.version, self.open(&row).await?, None),
                    None => {
                        let (key, wrapped) = self
                            .provider
                            .generate_data_key(&EnvelopeContext::account(account.as_str()))
                            .await?;
                        let row = AccountKeyDpo {
                            account: account.clone(),
                            version: 1,
                            wrapped: Some(wrapped.to_hex()),
                            created_at_ms: self.clock.now_millis(),
                            retired_at_ms: None,
                        };
                        (1, Arc::new(key), Some(row))
                    }
                };
                amks.insert(account, entry);
            }
            let mut rewraps = Vec::new();
            for (account, t) in &tables {
                let TmkRef::Master(_) = parse_ref(t)? else {
                    continue;
                };
                let Some((version, amk, _)) = amks.get(account) else {
                    return Err(tern_meta::Error::NotFound {
                        what: "account",
                        name: format!("{account} (of table {})", t.id),
                    }
                    .into());
                };
                let tmk = self.table_key(account, t).await?;
                let w = amk.wrap_table_key(&tmk, &tmk_context(account, &t.id), &*self.random)?;
                rewraps.push(Rewrap {
                    table: t.id.clone(),
                    old_ref: t.master_key_ref.clone(),
                    new_ref: TmkRef::Account {
                        version: *version,
                        wrapped: w,
                    }
                    .render(),
                });
            }
            before_commit()?;
            let now = self.clock.now_millis();
            let outcome = self.meta.write(|tx| {
                if tx
                    .get::<KeyChainDpo>(&keychain_key())?
                    .is_some_and(|k| k.version >= KEY_CHAIN_VERSION)
                {
                    return Ok(Ok(false));
                }
                for (account, (_, _, fresh)) in &amks {
                    let active = active_in(tx, account)?;
                    match (fresh, active) {
                        (Some(row), None) => tx.put(&amk_key(account, 1), row)?,
                        (None, Some(_)) => {}
                        // Made, rotated or destroyed meanwhile.
                        _ => return Ok(Err(Raced)),
                    }
                }
                if !apply_rewraps(tx, None, &rewraps)? {
                    return Ok(Err(Raced));
                }
                tx.put(
                    &keychain_key(),
                    &KeyChainDpo {
                        version: KEY_CHAIN_VERSION,
                        migrated_at_ms: now,
                    },
                )?;
                Ok(Ok(true))
            })?;
            match outcome {
                Ok(false) => return Ok(Migration::default()),
                Ok(true) => {
                    let made = amks
                        .values()
                        .filter(|(_, _, fresh)| fresh.is_some())
                        .count();
                    let mut cache = self.lock();
                    for (account, (version, key, _)) in amks {
                        cache.insert((account, version), key);
                    }
                    tracing::info!(
                        accounts = made,
                        tables = rewraps.len(),
                        "key chain migrated: table keys are wrapped by account master keys"
                    );
                    return Ok(Migration {
                        accounts: made,
                        tables: rewraps.len(),
                    });
                }
                Err(Raced) => continue,
            }
        }
        Err(Error::AccountKeyBusy {
            scope: "the key chain migration".into(),
        })
    }
}

/// The active (not retired) version of `account`'s AMK.
fn active_in(
    tx: &mut MetaTxn<'_>,
    account: &AccountId,
) -> tern_meta::Result<Option<AccountKeyDpo>> {
    Ok(versions_in(tx, account)?
        .into_iter()
        .rev()
        .find(|r| r.wrapped.is_some()))
}

/// Every table (dropped ones included) with its account; only `account`'s when given.
fn tables_of(
    tx: &mut MetaTxn<'_>,
    account: Option<&AccountId>,
) -> tern_meta::Result<Vec<(AccountId, TableDpo)>> {
    let mut owners: HashMap<DatabaseId, AccountId> = HashMap::new();
    let mut out = Vec::new();
    for t in tx.list_all_tables()? {
        let owner = match owners.get(&t.database) {
            Some(a) => a.clone(),
            None => {
                let db =
                    tx.get_database(&t.database)?
                        .ok_or_else(|| tern_meta::Error::NotFound {
                            what: "database",
                            name: format!("{} (of table {})", t.database, t.id),
                        })?;
                owners.insert(t.database.clone(), db.account.clone());
                db.account
            }
        };
        if account.is_none_or(|a| *a == owner) {
            out.push((owner, t));
        }
    }
    Ok(out)
}

/// Writes the prepared references; `false` (nothing to keep) when a table's reference
/// changed or a table to re-wrap appeared since the preparation.
fn apply_rewraps(
    tx: &mut MetaTxn<'_>,
    account: Option<&AccountId>,
    rewraps: &[Rewrap],
) -> tern_meta::Result<bool> {
    let prepared: HashSet<&TableId> = rewraps.iter().map(|r| &r.table).collect();
    for (owner, t) in tables_of(tx, account)? {
        let needs = match TmkRef::parse(&t.master_key_ref) {
            // Both re-wrap the tables still under the master key.
            Some(TmkRef::Master(_)) | None => true,
            // A rotation, every table under a version that still has its key.
            Some(TmkRef::Account { version, .. }) => {
                account.is_some()
                    && tx
                        .get::<AccountKeyDpo>(&amk_key(&owner, version))?
                        .is_some_and(|r| r.wrapped.is_some())
            }
        };
        if needs && !prepared.contains(&t.id) {
            return Ok(false);
        }
    }
    for r in rewraps {
        let Some(mut t) = tx.get_table(&r.table)? else {
            return Ok(false);
        };
        if t.master_key_ref != r.old_ref {
            return Ok(false);
        }
        t.master_key_ref = r.new_ref.clone();
        tx.update_table(&t)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_refuse_garbage() {
        let w = WrappedKey::from_bytes(vec![1, 2, 0xff]);
        for r in [
            TmkRef::Master(w.clone()),
            TmkRef::Account {
                version: 12,
                wrapped: w.clone(),
            },
        ] {
            assert_eq!(TmkRef::parse(&r.render()), Some(r.clone()));
        }
        assert_eq!(
            TmkRef::Account {
                version: 3,
                wrapped: w
            }
            .render(),
            "tmk:v2:3:0102ff"
        );
        for bad in [
            "tmk:v1:zz",
            "tmk:v2:0102ff",
            "tmk:v2:x:0102ff",
            "tmk:v3:1:00",
            "tmk/t1",
        ] {
            assert_eq!(TmkRef::parse(bad), None, "{bad}");
        }
    }
}
