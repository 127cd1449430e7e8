//! A wrapper store that retries transient failures with exponential backoff and jitter.
//!
//! What is retried: single-request calls (`put`, `get`, `head`, ranged reads, `delete`,
//! `copy`, `rename`, delimited listing, starting a multipart upload) whose error is
//! transient ([`is_transient`]: network, server or disk hiccups). Answers that will not
//! change — already exists, conflict, not found, permission denied — are returned at once.
//! Streams (the body of a `get`, a recursive `list`) and multipart parts are not retried
//! mid-way: their callers restart them.
//!
//! Inconclusive writes: a write whose request failed may still have happened. When a retry
//! of a conditional write then answers "already exists" (`PutMode::Create`) or "changed"
//! (`PutMode::Update`), the store reads the object back: if it holds exactly the bytes this
//! call wrote, the earlier attempt succeeded and the call reports success; otherwise the
//! conflict is real and is returned. Likewise a retried `delete` that finds nothing
//! succeeded. This makes "create once" steps idempotent under retries without ever
//! mistaking someone else's object for ours.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::is_transient;

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retries).
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound on one delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): full jitter over an exponentially
    /// growing cap, so that many clients retrying together spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .initial_backoff
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        if cap_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
    }
}

/// Retries transient failures of the wrapped store; see the module docs.
pub struct RetryStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl RetryStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// Run `op` until it succeeds, fails for good, or retries run out. `attempt` starts at 0.
    async fn retry<T, F, Fut>(&self, what: &str, location: &Path, mut op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match op(attempt).await {
                Err(e) if is_transient(&e) && attempt < self.policy.max_retries => {
                    attempt += 1;
                    let delay = self.policy.backoff(attempt);
                    tracing::warn!(op = what, path = %location, attempt, ?delay, error = %e, "transient storage error, retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// After an inconclusive attempt, decide whether `location` holds what we wrote.
    async fn holds(&self, location: &Path, written: &PutPayload) -> bool {
        let Ok(got) = self.inner.get(location).await else {
            return false;
        };
        let Ok(bytes) = got.bytes().await else {
            return false;
        };
        let expected: Bytes = written.clone().into();
        bytes == expected
    }
}

impl fmt::Debug for RetryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryStore")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl fmt::Display for RetryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retry({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let conditional = !matches!(opts.mode, PutMode::Overwrite);
        self.retry("put", location, |attempt| {
                let (payload, opts) = (payload.clone(), opts.clone());
                async move {
                    match self.inner.put_opts(location, payload.clone(), opts).await {
                        Err(
                            e @ (object_store::Error::AlreadyExists { .. }
                            | object_store::Error::Precondition { .. }),
                        ) if conditional && attempt > 0 => {
                            if self.holds(location, &payload).await {
                                tracing::info!(path = %location, "inconclusive conditional put had succeeded");
                                let meta = self.inner.head(location).await?;
                                Ok(PutResult { e_tag: meta.e_tag, version: meta.version, extensions: Default::default() })
                            } else {
                                Err(e)
                            }
                        }
                        other => other,
                    }
                }
            })
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.retry("put_multipart", location, |_| {
            self.inner.put_multipart_opts(location, opts.clone())
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.retry("get", location, |_| {
            self.inner.get_opts(location, options.clone())
        })
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.retry("get_ranges", location, |_| {
            self.inner.get_ranges(location, ranges)
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let policy = self.policy.clone();
        locations
            .then(move |location| {
                let store = RetryStore {
                    inner: Arc::clone(&inner),
                    policy: policy.clone(),
                };
                async move {
                    let location = location?;
                    store
                        .retry("delete", &location, |attempt| {
                            let store = &store;
                            let location = location.clone();
                            async move {
                                match store.inner.delete(&location).await {
                                    // The earlier, inconclusive attempt removed it.
                                    Err(object_store::Error::NotFound { .. }) if attempt > 0 => {
                                        Ok(())
                                    }
                                    other => other,
                                }
                            }
                        })
                        .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.retry("list", &at, |_| self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.retry("copy", to, |_| {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.retry("rename", to, |_| {
            self.inner.rename_opts(from, to, options.clone()).boxed()
        })
        .await
    }
}
