//! [`CountingBackend`]: a wrapper that counts what transactions read and write, so that
//! tests (and benchmarks) can show the metadata cost of an operation — and that it does
//! not grow with history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{Backend, KvTxn};
use crate::error::Result;

/// What the transactions through a [`CountingBackend`] did, summed since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvCounts {
    /// Point reads (`get`).
    pub gets: u64,
    /// Range reads (`scan`).
    pub scans: u64,
    /// Rows returned by range reads.
    pub rows_scanned: u64,
    /// Writes (`put`).
    pub puts: u64,
    /// Bytes written (keys and values of `put`s).
    pub put_bytes: u64,
    /// Deletes.
    pub deletes: u64,
    /// Read-write transactions that committed (each one durable metadata commit; bodies
    /// that fail, dry runs included, roll back and are not counted).
    pub commits: u64,
    /// Of `commits`, those made by [`Backend::write_deferred`] (durable with the next
    /// durable commit: no fsync of their own on the SQLite store).
    pub deferred_commits: u64,
    /// Read-write transactions run, committed or not (dry runs included): each waits its
    /// turn for the single writer.
    pub write_transactions: u64,
}

impl KvCounts {
    /// Rows read: point reads plus rows returned by range reads.
    pub fn rows_read(&self) -> u64 {
        self.gets + self.rows_scanned
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &KvCounts) -> KvCounts {
        KvCounts {
            gets: self.gets - earlier.gets,
            scans: self.scans - earlier.scans,
            rows_scanned: self.rows_scanned - earlier.rows_scanned,
            puts: self.puts - earlier.puts,
            put_bytes: self.put_bytes - earlier.put_bytes,
            deletes: self.deletes - earlier.deletes,
            commits: self.commits - earlier.commits,
            deferred_commits: self.deferred_commits - earlier.deferred_commits,
            write_transactions: self.write_transactions - earlier.write_transactions,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    gets: AtomicU64,
    scans: AtomicU64,
    rows_scanned: AtomicU64,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    deletes: AtomicU64,
    commits: AtomicU64,
    deferred_commits: AtomicU64,
    write_transactions: AtomicU64,
}

/// Any backend, with every transaction's reads and writes counted (including those of
/// bodies that fail and of retried attempts).
#[derive(Debug)]
pub struct CountingBackend {
    inner: Arc<dyn Backend>,
    counters: Arc<Counters>,
}

impl CountingBackend {
    /// Count what goes through `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> KvCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KvCounts {
            gets: l(&c.gets),
            scans: l(&c.scans),
            rows_scanned: l(&c.rows_scanned),
            puts: l(&c.puts),
            put_bytes: l(&c.put_bytes),
            deletes: l(&c.deletes),
            commits: l(&c.commits),
            deferred_commits: l(&c.deferred_commits),
            write_transactions: l(&c.write_transactions),
        }
    }
}

struct Counted<'a> {
    inner: &'a mut dyn KvTxn,
    counters: &'a Counters,
}

impl KvTxn for Counted<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.counters
            .put_bytes
            .fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
        self.inner.put(key, value)
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(key)
    }

    fn undone(&mut self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        let counters = self.counters;
        self.inner.undone(&mut |kv| {
            f(&mut Counted {
                inner: kv,
                counters,
            })
        })
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rows = self.inner.scan(start, end, limit)?;
        self.counters.scans.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rows_scanned
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows)
    }
}

impl CountingBackend {
    /// A write through `inner` (`deferred`: [`Backend::write_deferred`]), counted.
    fn counted_write(
        &self,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
        deferred: bool,
    ) -> Result<()> {
        self.counters
            .write_transactions
            .fetch_add(1, Ordering::Relaxed);
        let body = &mut |kv: &mut dyn KvTxn| {
            f(&mut Counted {
                inner: kv,
                counters: &self.counters,
            })
        };
        let outcome = if deferred {
            self.inner.write_deferred(body)
        } else {
            self.inner.write(body)
        };
        if outcome.is_ok() {
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            if deferred {
                self.counters
                    .deferred_commits
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }
}

impl Backend for CountingBackend {
    fn write(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        self.counted_write(f, false)
    }

    fn write_deferred(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        self.counted_write(f, true)
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        self.inner.read(&mut |kv| {
            f(&mut Counted {
                inner: kv,
                counters: &self.counters,
            })
        })
    }
}
