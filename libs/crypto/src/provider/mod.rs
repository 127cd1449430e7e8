//! Key providers: where the deployment's root keys live.
//!
//! A [`KeyProvider`] holds two root keys and never hands them out:
//!
//! - the **GMK** (global master key, one per deployment group, the same in every member):
//!   used only to compute `wrap_key = HMAC-SHA256(GMK, diversifier message)`
//!   ([`KeyProvider::derive_wrap_key`]);
//! - the deployment's **master key**: the root of the AMK/TMK envelope
//!   ([`KeyProvider::generate_data_key`], [`KeyProvider::decrypt_data_key`]), with an
//!   encryption context naming the account and table so that a wrapped key cannot be
//!   replayed for another one.
//!
//! Two implementations: [`LocalKeyProvider`] (key files, for the embedded mode and tests) and
//! [`KmsKeyProvider`] (AWS KMS `GenerateMac` / `GenerateDataKey` / `Decrypt`).
//!
//! [`CachedWrapKeys`] sits in front of a provider: wrapping keys are cached per diversifier,
//! so wrapping every DEK of an hour costs one provider call, and concurrent requests for the
//! same diversifier share that call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::diversifier::Diversifier;
use crate::error::Result;
use crate::keys::{DataKey, WrapKey, WrappedKey};

pub(crate) mod kms;
pub(crate) mod local;

pub use kms::{KmsConnection, KmsKeyProvider, StaticCredentials, kms_client};
pub use local::{GMK_FILE, LocalKeyProvider, MASTER_KEY_FILE};

/// What an envelope key belongs to: bound into the wrapped key (the KMS encryption context
/// `{"tern:account": .., "tern:table": ..}`, or the associated data locally).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EnvelopeContext {
    /// The account.
    pub account: String,
    /// The table, for a TMK wrapped directly by the master key (key chain 1, read only
    /// until a store is migrated; `tern_table::account_key`); `None` for an AMK.
    pub table: Option<String>,
}

impl EnvelopeContext {
    /// Context of an account master key.
    pub fn account(account: impl Into<String>) -> Self {
        EnvelopeContext {
            account: account.into(),
            table: None,
        }
    }

    /// Context of a table master key.
    pub fn table(account: impl Into<String>, table: impl Into<String>) -> Self {
        EnvelopeContext {
            account: account.into(),
            table: Some(table.into()),
        }
    }
}

/// A deployment's root-key operations.
#[async_trait]
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// `HMAC-SHA256(GMK, diversifier.mac_message())`, computed where the GMK lives.
    async fn derive_wrap_key(&self, diversifier: Diversifier) -> Result<WrapKey>;

    /// A fresh 256-bit key and the same key wrapped under the deployment master key, bound
    /// to `ctx`.
    async fn generate_data_key(&self, ctx: &EnvelopeContext) -> Result<(DataKey, WrappedKey)>;

    /// Unwraps a key made by [`Self::generate_data_key`] with the same `ctx`.
    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EnvelopeContext,
    ) -> Result<DataKey>;
}

/// Wrapping keys cached per diversifier in front of a [`KeyProvider`].
///
/// Holds at most `capacity` diversifiers (the newest are kept). Counts the provider calls it
/// makes, which is what the "HSM is called rarely" promise is measured by.
#[derive(Debug)]
pub struct CachedWrapKeys {
    provider: Arc<dyn KeyProvider>,
    cells: Mutex<BTreeMap<Diversifier, Arc<OnceCell<Arc<WrapKey>>>>>,
    capacity: usize,
    calls: AtomicU64,
}

impl CachedWrapKeys {
    /// Default number of cached diversifiers: two days of hourly keys.
    pub const DEFAULT_CAPACITY: usize = 48;

    /// A cache in front of `provider`.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self::with_capacity(provider, Self::DEFAULT_CAPACITY)
    }

    /// A cache holding at most `capacity` (at least 1) diversifiers.
    pub fn with_capacity(provider: Arc<dyn KeyProvider>, capacity: usize) -> Self {
        CachedWrapKeys {
            provider,
            cells: Mutex::new(BTreeMap::new()),
            capacity: capacity.max(1),
            calls: AtomicU64::new(0),
        }
    }

    /// The wrapping key for `diversifier`, from the cache or (once) from the provider.
    ///
    /// This does not apply a [`DiversifierPolicy`](crate::DiversifierPolicy); receivers
    /// check the diversifier first.
    pub async fn get(&self, diversifier: Diversifier) -> Result<Arc<WrapKey>> {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
            let cell = cells.entry(diversifier).or_default().clone();
            while cells.len() > self.capacity {
                cells.pop_first();
            }
            cell
        };
        let key = cell
            .get_or_try_init(|| async {
                self.calls.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%diversifier, "deriving wrapping key from the GMK");
                self.provider
                    .derive_wrap_key(diversifier)
                    .await
                    .map(Arc::new)
            })
            .await?;
        Ok(key.clone())
    }

    /// How many times this cache has called the provider.
    pub fn provider_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The provider behind the cache.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }
}
