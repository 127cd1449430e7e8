//! The backend trait: an ordered key-value store with serializable transactions.
//!
//! Small on purpose (FoundationDB-style): `get`, `put`, `delete` and an ordered range
//! `scan`, inside a read-write or a read-only transaction. Everything typed lives above it
//! ([`MetaStore`](crate::MetaStore)), so another backend (PostgreSQL serving several
//! `ternd` workers of one deployment) is a short file.
//!
//! # Contract every backend keeps
//!
//! * [`Backend::write`] runs the body in one **serializable** transaction: it sees its
//!   own writes, and either all its writes commit or none do. If the body returns an
//!   error or panics, nothing is written.
//! * When `write` returns `Ok`, the transaction is committed (durable per the backend's
//!   documented setting); when it returns `Err`, it is not (no "maybe" outcome for local
//!   backends).
//! * The body may run **more than once** (the backend retries transient lock conflicts),
//!   so it must not have effects outside the transaction that a re-run would duplicate.
//! * [`Backend::write_deferred`] is `write` whose durability may wait for the next
//!   durable write; backends without such a mode make it durable at once.
//! * [`Backend::read`] runs the body on one consistent snapshot; writes in it fail with
//!   [`Error::ReadOnly`](crate::Error::ReadOnly).
//! * Keys compare as unsigned bytes (memcmp, shorter first on a tie).
//! * Transactions must not be nested on one thread (a write inside a write deadlocks).

pub mod counting;
pub mod memory;
pub mod sqlite;

use crate::error::Result;

/// An ordered key-value store with transactions.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Run `f` in one serializable read-write transaction: all its writes commit together
    /// or none do. `f` may be called again if the transaction had to be retried.
    fn write(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()>;

    /// [`Backend::write`] for a write whose effect recovery re-does from durable state:
    /// when it returns `Ok` it is committed and visible, but it may become durable only
    /// with the next durable write (a power loss before that rolls it back whole, never in
    /// part, and never a durable write after it). By default the same as `write`.
    fn write_deferred(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        self.write(f)
    }

    /// Run `f` on a consistent snapshot (no writes).
    fn read(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()>;
}

/// Operations inside one transaction.
pub trait KvTxn {
    /// The value under `key`, if any.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Insert or replace. An error in a read transaction.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Remove (a no-op if absent). An error in a read transaction.
    fn delete(&mut self, key: &[u8]) -> Result<()>;

    /// Keys in `[start, end)` in key order, with their values, at most `limit` of them.
    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Remove every key in `[start, end)`. An error in a read transaction. By default a
    /// batch of keys at a time through [`KvTxn::scan`] and [`KvTxn::delete`]; a backend
    /// that can delete a range without reading its values (SQLite) does: a range of large
    /// values, or of many rows, is removed without being loaded.
    fn delete_range(&mut self, start: &[u8], end: &[u8]) -> Result<()> {
        loop {
            let batch = self.scan(start, end, 256)?;
            if batch.is_empty() {
                return Ok(());
            }
            for (k, _) in batch {
                self.delete(&k)?;
            }
        }
    }

    /// Run `f` inside this transaction, then undo every write it made (whatever it
    /// returned), keeping the writes made before: a check by the code that would make a
    /// change, in the same transaction as other writes. Returns `f`'s result; an error of
    /// the undo itself leaves the transaction's state undefined (return it).
    fn undone(&mut self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()>;
}
