//! [`MetaStore`] and [`MetaTxn`]: typed transactions over any [`Backend`].

use std::path::Path;
use std::sync::Arc;

use crate::backend::memory::MemoryBackend;
use crate::backend::sqlite::{SqliteBackend, SqliteOptions};
use crate::backend::{Backend, KvTxn};
use crate::dpo::{GlobalIdEntry, SequenceEntry};
use crate::envelope::{Dpo, decode, encode};
use crate::error::{Error, Result};
use crate::key::{Key, successor};
use crate::keys;

/// Keys fetched per backend round-trip when walking a range.
const SCAN_CHUNK: usize = 1024;

/// Values reserved at once by [`MetaStore::next_unique`].
const UNIQUE_BLOCK: u64 = 64;

/// The deployment's metadata store: typed transactions over a [`Backend`].
///
/// Cheap to clone (shares the backend).
#[derive(Clone, Debug)]
pub struct MetaStore {
    backend: Arc<dyn Backend>,
    /// Per sequence, the values `[next, end)` reserved by this process and not handed out.
    blocks: Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>>,
}

impl MetaStore {
    /// A store over any backend.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            blocks: Arc::default(),
        }
    }

    /// A value of the sequence `name` that no caller, in this process or another, ever
    /// gets again — without a write transaction of its own for most calls: values are
    /// reserved in blocks. Increasing within a process; a restart skips what was left of a
    /// block. For names that must be unique, not gapless (file names, handles).
    pub fn next_unique(&self, name: &str) -> Result<u64> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((next, end)) = blocks.get_mut(name)
            && *next < *end
        {
            *next += 1;
            return Ok(*next - 1);
        }
        let last = self.write(|tx| tx.reserve_sequence(name, UNIQUE_BLOCK))?;
        let first = last + 1 - UNIQUE_BLOCK;
        blocks.insert(name.to_string(), (first + 1, last + 1));
        Ok(first)
    }

    /// Open (or create) the SQLite store file at `path`.
    pub fn open_sqlite(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Ok(Self::new(Arc::new(SqliteBackend::open(path, options)?)))
    }

    /// A fresh in-memory store — **for tests only**: nothing survives the process.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemoryBackend::new()))
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Run `f` in one serializable read-write transaction and return its result. If `f`
    /// returns an error (or panics) nothing is written. `f` may run more than once (the
    /// backend retries lock conflicts with other processes): keep side effects out of it.
    pub fn write<T>(&self, mut f: impl FnMut(&mut MetaTxn<'_>) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.backend.write(&mut |kv| {
            out = Some(f(&mut MetaTxn { kv })?);
            Ok(())
        })?;
        out.ok_or_else(|| self.contract_broken())
    }

    /// [`MetaStore::write`] for a write whose effect recovery re-does from durable state:
    /// committed and visible when it returns, durable with the next durable write (see
    /// [`Backend::write_deferred`]).
    pub fn write_deferred<T>(&self, mut f: impl FnMut(&mut MetaTxn<'_>) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.backend.write_deferred(&mut |kv| {
            out = Some(f(&mut MetaTxn { kv })?);
            Ok(())
        })?;
        out.ok_or_else(|| self.contract_broken())
    }

    /// Run `f` on a consistent snapshot and return its result. Writes fail with
    /// [`Error::ReadOnly`].
    pub fn read<T>(&self, mut f: impl FnMut(&mut MetaTxn<'_>) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.backend.read(&mut |kv| {
            out = Some(f(&mut MetaTxn { kv })?);
            Ok(())
        })?;
        out.ok_or_else(|| self.contract_broken())
    }

    /// [`MetaStore::write`] on the runtime's blocking pool: for async code, so that an
    /// SQLite call (its fsync, or its wait for the single writer) never holds one of the
    /// few async worker threads that serve every request. A panic in `f` resumes here.
    pub async fn write_async<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut MetaTxn<'_>) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        join_blocking(tokio::task::spawn_blocking(move || store.write(f)).await)
    }

    /// [`MetaStore::write_deferred`] on the runtime's blocking pool (see
    /// [`MetaStore::write_async`]).
    pub async fn write_deferred_async<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut MetaTxn<'_>) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        join_blocking(tokio::task::spawn_blocking(move || store.write_deferred(f)).await)
    }

    /// [`MetaStore::read`] on the runtime's blocking pool (see [`MetaStore::write_async`]).
    pub async fn read_async<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut MetaTxn<'_>) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        join_blocking(tokio::task::spawn_blocking(move || store.read(f)).await)
    }

    /// [`MetaStore::dry_run`] on the runtime's blocking pool (see [`MetaStore::write_async`]).
    pub async fn dry_run_async<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut MetaTxn<'_>) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        join_blocking(tokio::task::spawn_blocking(move || store.dry_run(f)).await)
    }

    /// Run `f` in a read-write transaction and always roll it back: whether a change would
    /// succeed on the current state, checked by the same code that makes it, without
    /// making it. Returns `f`'s result.
    pub fn dry_run<T>(&self, mut f: impl FnMut(&mut MetaTxn<'_>) -> Result<T>) -> Result<T> {
        let mut out = None;
        let outcome = self.backend.write(&mut |kv| {
            out = Some(f(&mut MetaTxn { kv }));
            Err(Error::DryRun)
        });
        match (outcome, out) {
            (Err(Error::DryRun), Some(result)) => result,
            (Err(e), _) => Err(e),
            (Ok(()), _) => Err(self.contract_broken()),
        }
    }

    fn contract_broken(&self) -> Error {
        Error::BackendContract {
            backend: format!("{:?}", self.backend),
            reason: "transaction reported success without running its body",
        }
    }
}

/// The outcome of a blocking-pool call: its result, its panic resumed, or
/// [`Error::ShuttingDown`] when it never ran.
fn join_blocking<T>(joined: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    match joined {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::ShuttingDown),
    }
}

/// One transaction of a [`MetaStore`]: typed access to the DPOs.
///
/// The typed methods (deployments, accounts, databases, schemas, tables, table versions,
/// micro-partitions, global ids, sequences) check uniqueness and references and keep the
/// secondary indexes in step. The generic ones ([`get`](Self::get), [`put`](Self::put),
/// [`scan_prefix`](Self::scan_prefix)) let other crates keep their own [`Dpo`]s in a key
/// namespace of their own (see the key space in the crate docs for the taken ones).
///
/// The typed methods check before they write, so one that returns a typed error
/// (`AlreadyExists`, `NotFound`, `VersionConflict`, …) has written nothing. After a backend
/// error the transaction's state is undefined: return the error (the `?` operator does) so
/// that the whole transaction rolls back.
pub struct MetaTxn<'t> {
    kv: &'t mut dyn KvTxn,
}

impl<'t> MetaTxn<'t> {
    /// Typed access over a backend's transaction (migrations of the key space).
    pub(crate) fn over(kv: &'t mut dyn KvTxn) -> Self {
        Self { kv }
    }
}

impl MetaTxn<'_> {
    /// The value under `key`.
    pub fn get<D: Dpo>(&mut self, key: &Key) -> Result<Option<D>> {
        match self.kv.get(key.as_bytes())? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Store `value` under `key` (insert or replace).
    pub fn put<D: Dpo>(&mut self, key: &Key, value: &D) -> Result<()> {
        let bytes = encode(key, value)?;
        self.kv.put(key.as_bytes(), &bytes)
    }

    /// Remove `key` (a no-op if absent).
    pub fn delete(&mut self, key: &Key) -> Result<()> {
        self.kv.delete(key.as_bytes())
    }

    /// Remove every key extending `prefix`, without reading their values
    /// ([`KvTxn::delete_range`]).
    pub fn delete_prefix(&mut self, prefix: &Key) -> Result<()> {
        let (start, end) = prefix.prefix_range();
        self.kv.delete_range(&start, &end)
    }

    /// Run `f` in this transaction and undo its writes (keeping the ones made before),
    /// whatever it returns: whether a change would succeed here, checked by the code that
    /// makes it — [`MetaStore::dry_run`] inside a transaction. Returns `f`'s result; the
    /// outer error is the undo's own (the transaction's state is then undefined: return it).
    pub fn undone<T>(
        &mut self,
        mut f: impl FnMut(&mut MetaTxn<'_>) -> Result<T>,
    ) -> Result<Result<T>> {
        let mut out = None;
        self.kv.undone(&mut |kv| {
            out = Some(f(&mut MetaTxn { kv }));
            Ok(())
        })?;
        out.ok_or_else(|| Error::BackendContract {
            backend: "transaction".into(),
            reason: "undone body reported success without running",
        })
    }

    /// Whether `key` holds a value.
    pub fn contains(&mut self, key: &Key) -> Result<bool> {
        Ok(self.kv.get(key.as_bytes())?.is_some())
    }

    /// Every value under `prefix` (keys extending it), in key order.
    pub fn scan_prefix<D: Dpo>(&mut self, prefix: &Key) -> Result<Vec<(Key, D)>> {
        let (start, end) = prefix.prefix_range();
        let mut out = Vec::new();
        self.for_each(start, &end, |k, v| {
            out.push((k, v));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The first `limit` values under `prefix`, in key order (work queues take a batch
    /// from their head without reading the whole queue).
    pub fn scan_prefix_limit<D: Dpo>(
        &mut self,
        prefix: &Key,
        limit: usize,
    ) -> Result<Vec<(Key, D)>> {
        let (start, end) = prefix.prefix_range();
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.for_each(start, &end, |k, v| {
            out.push((k, v));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Whether any key extends `prefix`.
    pub(crate) fn any_under(&mut self, prefix: &Key) -> Result<bool> {
        let (start, end) = prefix.prefix_range();
        Ok(!self.kv.scan(&start, &end, 1)?.is_empty())
    }

    /// The first value in `[start, end)`.
    pub(crate) fn first_in<D: Dpo>(
        &mut self,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<(Key, D)>> {
        match self.kv.scan(start, end, 1)?.pop() {
            Some((k, v)) => {
                let k = Key::from_bytes(k);
                let d = decode(&k, &v)?;
                Ok(Some((k, d)))
            }
            None => Ok(None),
        }
    }

    /// Call `f` on each value in `[start, end)` in key order, until it returns `false`.
    pub(crate) fn for_each<D: Dpo>(
        &mut self,
        mut start: Vec<u8>,
        end: &[u8],
        mut f: impl FnMut(Key, D) -> Result<bool>,
    ) -> Result<()> {
        loop {
            let chunk = self.kv.scan(&start, end, SCAN_CHUNK)?;
            let full = chunk.len() == SCAN_CHUNK;
            let mut last = None;
            for (k, v) in chunk {
                let key = Key::from_bytes(k);
                let value = decode(&key, &v)?;
                last = Some(successor(key.as_bytes()));
                if !f(key, value)? {
                    return Ok(());
                }
            }
            match last {
                Some(next) if full => start = next,
                _ => return Ok(()),
            }
        }
    }

    /// Direct access to the key-value transaction (for backends' own tests and tools).
    pub fn raw(&mut self) -> &mut dyn KvTxn {
        self.kv
    }

    // ---- sequences ----

    /// The next value of the sequence `name`: 1, 2, 3, … — monotonic and never reused
    /// (persisted with the transaction; a rolled-back transaction does not consume one).
    pub fn next_sequence(&mut self, name: &str) -> Result<u64> {
        self.reserve_sequence(name, 1)
    }

    /// Take the next `count` values of the sequence `name` (at least one); returns the
    /// last of them.
    pub fn reserve_sequence(&mut self, name: &str, count: u64) -> Result<u64> {
        let key = keys::sequence(name);
        let last = self.get::<SequenceEntry>(&key)?.map_or(0, |e| e.last);
        let next = last
            .checked_add(count.max(1))
            .ok_or_else(|| Error::SequenceExhausted {
                name: name.to_string(),
            })?;
        self.put(&key, &SequenceEntry { last: next })?;
        Ok(next)
    }

    /// The last value issued by the sequence `name` (0 if none yet).
    pub fn current_sequence(&mut self, name: &str) -> Result<u64> {
        Ok(self
            .get::<SequenceEntry>(&keys::sequence(name))?
            .map_or(0, |e| e.last))
    }

    // ---- global id index ----

    /// Record that the entity of `kind` with `global_id` is `local_key` here. Idempotent
    /// for the same `local_key`; [`Error::AlreadyExists`] if it points elsewhere.
    pub fn set_global_id(&mut self, kind: &str, global_id: &str, local_key: &str) -> Result<()> {
        let key = keys::global_id(kind, global_id);
        match self.get::<GlobalIdEntry>(&key)? {
            Some(e) if e.local_key == local_key => Ok(()),
            Some(e) => Err(Error::already_exists(
                "global id",
                format!("{kind}/{global_id} (points to {})", e.local_key),
            )),
            None => self.put(
                &key,
                &GlobalIdEntry {
                    local_key: local_key.to_string(),
                },
            ),
        }
    }

    /// The local key of the entity of `kind` with `global_id`.
    pub fn find_global(&mut self, kind: &str, global_id: &str) -> Result<Option<String>> {
        Ok(self
            .get::<GlobalIdEntry>(&keys::global_id(kind, global_id))?
            .map(|e| e.local_key))
    }

    /// Forget a global id; whether it was there.
    pub fn remove_global(&mut self, kind: &str, global_id: &str) -> Result<bool> {
        let key = keys::global_id(kind, global_id);
        let existed = self.contains(&key)?;
        self.delete(&key)?;
        Ok(existed)
    }
}
