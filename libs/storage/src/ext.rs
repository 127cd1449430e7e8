//! Convenience calls on any [`ObjectStore`] that return this crate's typed [`Error`]
//! (with the path and operation in every message) instead of `object_store::Error`.

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult,
    UpdateVersion,
};

use crate::error::{Error, Operation, Result};

/// Typed-error helpers for every store (`Arc<dyn ObjectStore>` included).
#[async_trait]
pub trait StoreExt {
    /// Create `path`, failing with [`Error::AlreadyExists`] if it exists.
    async fn put_new(&self, path: &Path, payload: PutPayload) -> Result<PutResult>;
    /// Replace `path` only if it is still at `expected`, else [`Error::Conflict`].
    async fn put_replace(
        &self,
        path: &Path,
        payload: PutPayload,
        expected: UpdateVersion,
    ) -> Result<PutResult>;
    /// Write `path` unconditionally.
    async fn put_overwrite(&self, path: &Path, payload: PutPayload) -> Result<PutResult>;
    /// Read the whole object.
    async fn read_all(&self, path: &Path) -> Result<Bytes>;
    /// Read bytes `range` of the object.
    async fn read_range(&self, path: &Path, range: std::ops::Range<u64>) -> Result<Bytes>;
    /// Object metadata.
    async fn meta(&self, path: &Path) -> Result<ObjectMeta>;
    /// Every object under `prefix`, sorted by path.
    async fn list_sorted(&self, prefix: &Path) -> Result<Vec<ObjectMeta>>;
    /// Objects under `prefix` whose path sorts after `offset`, by path (S3 starts the
    /// listing there: the cost follows what is after the offset, not the whole prefix).
    async fn list_sorted_after(&self, prefix: &Path, offset: &Path) -> Result<Vec<ObjectMeta>>;
    /// Delete `path`, succeeding when it is already absent (S3 does not say which it was).
    async fn delete_idempotent(&self, path: &Path) -> Result<()>;
    /// Delete every object under `prefix`; returns how many there were.
    async fn delete_prefix(&self, prefix: &Path) -> Result<usize>;
}

#[async_trait]
impl<T: ObjectStore + ?Sized> StoreExt for T {
    async fn put_new(&self, path: &Path, payload: PutPayload) -> Result<PutResult> {
        self.put_opts(path, payload, PutOptions::from(PutMode::Create))
            .await
            .map_err(|e| Error::from_store(Operation::Put, path, e))
    }

    async fn put_replace(
        &self,
        path: &Path,
        payload: PutPayload,
        expected: UpdateVersion,
    ) -> Result<PutResult> {
        self.put_opts(path, payload, PutOptions::from(PutMode::Update(expected)))
            .await
            .map_err(|e| Error::from_store(Operation::Put, path, e))
    }

    async fn put_overwrite(&self, path: &Path, payload: PutPayload) -> Result<PutResult> {
        self.put_opts(path, payload, PutOptions::default())
            .await
            .map_err(|e| Error::from_store(Operation::Put, path, e))
    }

    async fn read_all(&self, path: &Path) -> Result<Bytes> {
        let got = self
            .get(path)
            .await
            .map_err(|e| Error::from_store(Operation::Get, path, e))?;
        got.bytes()
            .await
            .map_err(|e| Error::from_store(Operation::Get, path, e))
    }

    async fn read_range(&self, path: &Path, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.get_range(path, range)
            .await
            .map_err(|e| Error::from_store(Operation::Get, path, e))
    }

    async fn meta(&self, path: &Path) -> Result<ObjectMeta> {
        self.head(path)
            .await
            .map_err(|e| Error::from_store(Operation::Head, path, e))
    }

    async fn list_sorted(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        let mut all: Vec<ObjectMeta> = self
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| Error::from_store(Operation::List, prefix, e))?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    async fn list_sorted_after(&self, prefix: &Path, offset: &Path) -> Result<Vec<ObjectMeta>> {
        let mut all: Vec<ObjectMeta> = self
            .list_with_offset(Some(prefix), offset)
            .try_collect()
            .await
            .map_err(|e| Error::from_store(Operation::List, prefix, e))?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    async fn delete_idempotent(&self, path: &Path) -> Result<()> {
        match self.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::from_store(Operation::Delete, path, e)),
        }
    }

    async fn delete_prefix(&self, prefix: &Path) -> Result<usize> {
        let listed = self.list_sorted(prefix).await?;
        for meta in &listed {
            self.delete_idempotent(&meta.location).await?;
        }
        Ok(listed.len())
    }
}
