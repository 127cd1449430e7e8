//! An in-memory backend **for tests of the layers above** — not for production: nothing
//! survives the process.
//!
//! Same semantics as the SQLite backend: one writer at a time (a mutex held for the whole
//! write transaction, so transactions are serializable), writes buffered in an overlay and
//! applied only when the body returns `Ok` (an error or a panic leaves the previous state),
//! and readers on an immutable snapshot (`Arc` of the map) that writers never block.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backend::{Backend, KvTxn};
use crate::error::{Error, Result};
use crate::key::Key;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// The in-memory backend. See the module docs: tests only.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    /// The committed state; replaced copy-on-write by commits.
    state: Mutex<Arc<Map>>,
    /// Held for the whole of a write transaction.
    writer: Mutex<()>,
}

/// A panic in a transaction body leaves no half-applied state behind (the overlay is
/// dropped), so a poisoned lock is safe to take over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn snapshot(&self) -> Arc<Map> {
        Arc::clone(&lock(&self.state))
    }
}

impl Backend for MemoryBackend {
    fn write(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        let _writer = lock(&self.writer);
        let base = self.snapshot();
        let mut txn = MemTxn {
            base: &base,
            overlay: BTreeMap::new(),
            writable: true,
        };
        f(&mut txn)?;
        let overlay = txn.overlay;
        drop(base); // so that make_mut copies only if a reader holds the snapshot
        let mut state = lock(&self.state);
        let map = Arc::make_mut(&mut state);
        for (k, v) in overlay {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        let base = self.snapshot();
        let mut txn = MemTxn {
            base: &base,
            overlay: BTreeMap::new(),
            writable: false,
        };
        f(&mut txn)
    }
}

struct MemTxn<'a> {
    base: &'a Map,
    /// Pending writes: `None` is a delete.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    writable: bool,
}

impl MemTxn<'_> {
    fn check_writable(&self, key: &[u8]) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                key: Key::from_bytes(key.to_vec()).to_string(),
            })
        }
    }
}

impl KvTxn for MemTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(match self.overlay.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key).cloned(),
        })
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_writable(key)?;
        self.overlay.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn undone(&mut self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        let before = self.overlay.clone();
        let out = f(self);
        self.overlay = before;
        out
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.check_writable(key)?;
        self.overlay.insert(key.to_vec(), None);
        Ok(())
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let range = (Bound::Included(start), Bound::Excluded(end));
        let mut base = self.base.range::<[u8], _>(range).peekable();
        let mut over = self.overlay.range::<[u8], _>(range).peekable();
        // Merge the two ordered streams; the overlay wins on equal keys.
        while out.len() < limit {
            let take_overlay = match (base.peek(), over.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((bk, _)), Some((ok, _))) => {
                    if bk == ok {
                        base.next();
                        true
                    } else {
                        ok < bk
                    }
                }
            };
            if take_overlay {
                if let Some((k, Some(v))) = over.next() {
                    out.push((k.clone(), v.clone()));
                }
            } else if let Some((k, v)) = base.next() {
                out.push((k.clone(), v.clone()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_merges_overlay_and_base() {
        let b = MemoryBackend::new();
        b.write(&mut |t| {
            for k in [b"a", b"c", b"e"] {
                t.put(k, b"base")?;
            }
            Ok(())
        })
        .unwrap();
        b.write(&mut |t| {
            t.put(b"b", b"new")?;
            t.put(b"c", b"over")?;
            t.delete(b"e")?;
            let all = t.scan(b"a", b"z", 10)?;
            let keys: Vec<_> = all
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            assert_eq!(
                keys,
                [(&b"a"[..], &b"base"[..]), (b"b", b"new"), (b"c", b"over")]
            );
            assert_eq!(t.scan(b"a", b"z", 2)?.len(), 2);
            assert_eq!(t.scan(b"b", b"c", 10)?.len(), 1);
            assert!(t.scan(b"z", b"a", 10)?.is_empty());
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn readers_keep_their_snapshot() {
        let b = MemoryBackend::new();
        b.write(&mut |t| t.put(b"k", b"1")).unwrap();
        b.read(&mut |r| {
            b.write(&mut |t| t.put(b"k", b"2"))?;
            assert_eq!(r.get(b"k")?.as_deref(), Some(&b"1"[..]));
            assert!(matches!(r.put(b"k", b"3"), Err(Error::ReadOnly { .. })));
            Ok(())
        })
        .unwrap();
        b.read(&mut |r| {
            assert_eq!(r.get(b"k")?.as_deref(), Some(&b"2"[..]));
            Ok(())
        })
        .unwrap();
    }
}
