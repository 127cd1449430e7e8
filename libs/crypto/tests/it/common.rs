//! Shared test fixtures: deterministic randomness, fixed keys, stores, emulator access.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use tern_crypto::{
    DataKey, Diversifier, EnvelopeContext, KeyProvider, Random, Result, SharedRandom,
    TableFileKeys, WrapKey, WrappedKey,
};

/// 2025-11-21T13:00:00Z in milliseconds.
pub const T0_MS: i64 = 1_763_730_000_000;
/// The diversifier of the hour starting at `T0_MS`.
pub const D0: Diversifier = Diversifier::from_unix_secs(1_763_730_000);

/// A deterministic "random" stream: SHA-256(seed ‖ counter) blocks. Tests only.
#[derive(Debug)]
pub struct SeededRandom {
    seed: u64,
    state: Mutex<(u64, Vec<u8>)>,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        SeededRandom {
            seed,
            state: Mutex::new((0, Vec::new())),
        }
    }

    pub fn shared(seed: u64) -> SharedRandom {
        Arc::new(Self::new(seed))
    }
}

impl Random for SeededRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        for b in dest.iter_mut() {
            if st.1.is_empty() {
                let mut block = self.seed.to_be_bytes().to_vec();
                block.extend_from_slice(&st.0.to_be_bytes());
                st.0 += 1;
                let mut out = tern_crypto::kdf::sha256(&block).to_vec();
                out.reverse(); // pop() from the end yields bytes in order
                st.1 = out;
            }
            *b = st.1.pop().unwrap();
        }
        Ok(())
    }
}

pub fn tmk(byte: u8) -> Arc<DataKey> {
    Arc::new(DataKey::from_bytes([byte; 32]))
}

pub fn table_keys(byte: u8) -> TableFileKeys {
    TableFileKeys::new(tmk(byte))
}

/// `n` bytes of a recognisable pattern.
pub fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

pub fn memory() -> Arc<dyn ObjectStore> {
    Arc::new(InMemory::new())
}

pub fn folder() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    (dir, Arc::new(store))
}

/// Writes a key folder with known keys, as `LocalKeyProvider` would, and opens it.
pub fn local_provider(
    dir: &std::path::Path,
    gmk: u8,
    master: u8,
    random: SharedRandom,
) -> tern_crypto::LocalKeyProvider {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
    for (file, byte) in [("gmk.key", gmk), ("master.key", master)] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(file))
            .unwrap();
        writeln!(f, "{}", hex(&[byte; 32])).unwrap();
    }
    tern_crypto::LocalKeyProvider::open(dir, random).unwrap()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A provider wrapper that counts `derive_wrap_key` calls.
#[derive(Debug)]
pub struct CountingProvider<P> {
    pub inner: P,
    pub derives: AtomicU64,
}

impl<P> CountingProvider<P> {
    pub fn new(inner: P) -> Self {
        CountingProvider {
            inner,
            derives: AtomicU64::new(0),
        }
    }

    pub fn derives(&self) -> u64 {
        self.derives.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<P: KeyProvider> KeyProvider for CountingProvider<P> {
    async fn derive_wrap_key(&self, diversifier: Diversifier) -> Result<WrapKey> {
        self.derives.fetch_add(1, Ordering::SeqCst);
        // give concurrent callers a chance to pile up
        tokio::task::yield_now().await;
        self.inner.derive_wrap_key(diversifier).await
    }

    async fn generate_data_key(&self, ctx: &EnvelopeContext) -> Result<(DataKey, WrappedKey)> {
        self.inner.generate_data_key(ctx).await
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EnvelopeContext,
    ) -> Result<DataKey> {
        self.inner.decrypt_data_key(wrapped, ctx).await
    }
}

/// LocalStack, started on demand by `tern_storage::emulator` — never skipped.
pub async fn localstack() -> tern_storage::emulator::Emulator {
    tokio::task::spawn_blocking(tern_storage::emulator::localstack)
        .await
        .expect("emulator task")
        .unwrap_or_else(|e| {
            panic!("LocalStack is required for this test and could not be started: {e}")
        })
}
