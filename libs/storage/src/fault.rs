//! A wrapper store that injects faults and counts calls, for tests of everything above
//! storage.
//!
//! A [`FaultPlan`] holds rules; each rule matches calls by operation and path prefix and,
//! from its `nth` matching call on, applies its [`Fault`] to `times` calls:
//!
//! * [`Fault::Fail`] — the call fails before reaching the store (nothing happened);
//! * [`Fault::FailAfterEffect`] — the call reaches the store and takes effect, then
//!   reports failure: an *inconclusive* write, like a timeout after the server committed;
//! * [`Fault::Delay`] — the call is held back, then proceeds (slow storage, or a timeout
//!   when the caller bounds the call).
//!
//! Injected errors are `object_store::Error::Generic` — the transient kind a real network
//! failure produces — wrapping an [`InjectedFault`], so code under test reacts as it would
//! in production and a test can still tell injected failures apart ([`is_injected`]).
//! Multipart uploads are judged when they complete. The plan also counts every call by
//! operation and path, which lets tests prove that something was *not* read.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

use crate::error::Operation;

/// What happens to a matched call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail before reaching the store.
    Fail,
    /// Let the call take effect, then report failure (inconclusive). For reads and
    /// listings this is the same as [`Fault::Fail`].
    FailAfterEffect,
    /// Wait this long, then proceed normally.
    Delay(Duration),
}

/// Which calls a fault applies to.
#[derive(Debug, Clone)]
pub struct FaultRule {
    op: Option<Operation>,
    prefix: Option<Path>,
    nth: u64,
    times: u64,
    fault: Fault,
}

impl FaultRule {
    /// A rule for calls of one operation (first matching call, once, failing).
    pub fn on(op: Operation) -> Self {
        Self {
            op: Some(op),
            prefix: None,
            nth: 1,
            times: 1,
            fault: Fault::Fail,
        }
    }

    /// A rule for every operation.
    pub fn any() -> Self {
        Self {
            op: None,
            prefix: None,
            nth: 1,
            times: 1,
            fault: Fault::Fail,
        }
    }

    /// Only calls on paths under `prefix` (segment-wise, like listings).
    pub fn under(mut self, prefix: impl Into<Path>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Start at the `n`th matching call counted from arming (1-based).
    pub fn nth(mut self, n: u64) -> Self {
        self.nth = n.max(1);
        self
    }

    /// Apply to this many consecutive matching calls ([`u64::MAX`]: all from then on).
    pub fn times(mut self, n: u64) -> Self {
        self.times = n;
        self
    }

    /// Apply to every matching call from the `nth` on.
    pub fn always(self) -> Self {
        self.times(u64::MAX)
    }

    /// The fault to apply.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn matches(&self, op: Operation, path: &Path) -> bool {
        self.op.is_none_or(|o| o == op)
            && self.prefix.as_ref().is_none_or(|p| path.prefix_matches(p))
    }
}

/// The error injected into failed calls (the `source` of an `object_store` Generic error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected fault: {operation} on {path}{}", if *.took_effect { " (after it took effect)" } else { "" })]
pub struct InjectedFault {
    /// The failed operation.
    pub operation: Operation,
    /// Its path.
    pub path: String,
    /// Whether the call had taken effect in the store before failing.
    pub took_effect: bool,
}

/// True when `error` (or anything in its source chain) is an [`InjectedFault`].
pub fn is_injected(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if e.is::<InjectedFault>() {
            return true;
        }
        cur = e.source();
    }
    false
}

fn injected(operation: Operation, path: &Path, took_effect: bool) -> object_store::Error {
    object_store::Error::Generic {
        store: "fault-injection",
        source: Box::new(InjectedFault {
            operation,
            path: path.to_string(),
            took_effect,
        }),
    }
}

/// Identifies an armed rule in its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

#[derive(Debug)]
struct Armed {
    rule: FaultRule,
    seen: u64,
    fired: u64,
    active: bool,
}

#[derive(Debug, Default)]
struct PlanState {
    rules: Vec<Armed>,
    calls: HashMap<(Operation, String), u64>,
    writes: Vec<(Operation, String)>,
}

/// The shared, mutable set of fault rules and call counters of one or more [`FaultStore`]s.
/// Cheap to clone; clones share state, so a test can arm faults while code runs.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
}

impl FaultPlan {
    /// An empty plan: no faults, counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, PlanState> {
        // A panic while holding this lock can only come from a test's own assertion; the
        // counters are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arm a rule; returns its id.
    pub fn arm(&self, rule: FaultRule) -> RuleId {
        let mut s = self.lock();
        s.rules.push(Armed {
            rule,
            seen: 0,
            fired: 0,
            active: true,
        });
        RuleId(s.rules.len() - 1)
    }

    /// Disarm one rule (its counters stay readable).
    pub fn disarm(&self, id: RuleId) {
        if let Some(r) = self.lock().rules.get_mut(id.0) {
            r.active = false;
        }
    }

    /// Disarm every rule.
    pub fn disarm_all(&self) {
        for r in &mut self.lock().rules {
            r.active = false;
        }
    }

    /// How many calls a rule has affected.
    pub fn fired(&self, id: RuleId) -> u64 {
        self.lock().rules.get(id.0).map_or(0, |r| r.fired)
    }

    /// How many `op` calls reached this plan's stores.
    pub fn calls(&self, op: Operation) -> u64 {
        self.lock()
            .calls
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// How many `op` calls were made on paths under `prefix`.
    pub fn calls_under(&self, op: Operation, prefix: &Path) -> u64 {
        let prefix = prefix.as_ref().to_string();
        self.lock()
            .calls
            .iter()
            .filter(|((o, p), _)| {
                *o == op
                    && (prefix.is_empty()
                        || p == &prefix
                        || p.strip_prefix(prefix.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// The single-request writes (puts) that took effect under `prefix`, in the order they
    /// completed: what a test checks ordering guarantees against.
    pub fn puts_under(&self, prefix: &Path) -> Vec<Path> {
        self.lock()
            .writes
            .iter()
            .filter(|(o, _)| *o == Operation::Put)
            .map(|(_, p)| Path::from(p.as_str()))
            .filter(|p| p.prefix_matches(prefix))
            .collect()
    }

    /// Reset every call counter to zero (rules stay armed).
    pub fn reset_counts(&self) {
        let mut s = self.lock();
        s.calls.clear();
        s.writes.clear();
    }

    /// Note that a write took effect.
    fn took_effect<T>(&self, op: Operation, path: &Path, outcome: &Result<T>) {
        if outcome.is_ok() && matches!(op, Operation::Put | Operation::Delete) {
            self.lock().writes.push((op, path.as_ref().to_string()));
        }
    }

    /// Record a call and decide its fault, if any.
    fn decide(&self, op: Operation, path: &Path) -> Option<Fault> {
        let mut s = self.lock();
        *s.calls.entry((op, path.as_ref().to_string())).or_insert(0) += 1;
        let mut decided = None;
        for armed in s
            .rules
            .iter_mut()
            .filter(|r| r.active && r.rule.matches(op, path))
        {
            armed.seen += 1;
            let start = armed.rule.nth;
            let in_window = armed.seen >= start && armed.seen - start < armed.rule.times;
            if in_window && decided.is_none() {
                armed.fired += 1;
                decided = Some(armed.rule.fault);
            }
        }
        decided
    }
}

/// Applies a [`FaultPlan`] to the wrapped store; see the module docs.
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
}

impl FaultStore {
    /// Wrap `inner`, obeying `plan`.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> Self {
        Self { inner, plan }
    }

    /// The plan this store obeys.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Run one call under the plan. `effect` performs it.
    async fn run<T, Fut>(&self, op: Operation, path: &Path, effect: Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let outcome = match self.plan.decide(op, path) {
            None => effect.await,
            Some(Fault::Fail) => return Err(injected(op, path, false)),
            Some(Fault::FailAfterEffect) => {
                self.plan.took_effect(op, path, &effect.await);
                return Err(injected(op, path, true));
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                effect.await
            }
        };
        self.plan.took_effect(op, path, &outcome);
        outcome
    }

    fn run_stream<T: Send + 'static>(
        &self,
        op: Operation,
        path: &Path,
        make: impl FnOnce() -> BoxStream<'static, Result<T>>,
    ) -> BoxStream<'static, Result<T>> {
        match self.plan.decide(op, path) {
            None => make(),
            Some(Fault::Fail | Fault::FailAfterEffect) => {
                stream::once(futures::future::ready(Err(injected(op, path, false)))).boxed()
            }
            Some(Fault::Delay(d)) => {
                let s = make();
                tokio::time::sleep(d)
                    .map(move |()| s)
                    .flatten_stream()
                    .boxed()
            }
        }
    }
}

impl fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fault({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.run(
            Operation::Put,
            location,
            self.inner.put_opts(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultUpload {
            inner: upload,
            plan: self.plan.clone(),
            path: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head {
            Operation::Head
        } else {
            Operation::Get
        };
        self.run(op, location, self.inner.get_opts(location, options))
            .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.run(
            Operation::Get,
            location,
            self.inner.get_ranges(location, ranges),
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let store = FaultStore {
            inner: Arc::clone(&self.inner),
            plan: self.plan.clone(),
        };
        let store = Arc::new(store);
        locations
            .then(move |location| {
                let store = Arc::clone(&store);
                async move {
                    let location = location?;
                    let one = stream::once(futures::future::ready(Ok(location.clone()))).boxed();
                    let effect = async {
                        match store.inner.delete_stream(one).next().await {
                            Some(r) => r.map(|_| ()),
                            None => Ok(()),
                        }
                    };
                    store.run(Operation::Delete, &location, effect).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        self.run_stream(Operation::List, &at, || self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        self.run_stream(Operation::List, &at, || {
            self.inner.list_with_offset(prefix, offset)
        })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.run(Operation::List, &at, self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.run(Operation::Copy, to, self.inner.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.run(
            Operation::Rename,
            to,
            self.inner.rename_opts(from, to, options),
        )
        .await
    }
}

/// A multipart upload judged by the plan when it completes.
#[derive(Debug)]
struct FaultUpload {
    inner: Box<dyn MultipartUpload>,
    plan: FaultPlan,
    path: Path,
}

#[async_trait]
impl MultipartUpload for FaultUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        match self.plan.decide(Operation::PutMultipart, &self.path) {
            None => self.inner.complete().await,
            Some(Fault::Fail) => {
                let _ = self.inner.abort().await;
                Err(injected(Operation::PutMultipart, &self.path, false))
            }
            Some(Fault::FailAfterEffect) => {
                let _ = self.inner.complete().await;
                Err(injected(Operation::PutMultipart, &self.path, true))
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.inner.complete().await
            }
        }
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
