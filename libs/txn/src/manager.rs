//! [`TxnManager`]: the commit protocol, as the [`Committer`] of a deployment's tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStore;
use tern_clock::SharedClock;
use tern_crypto::{EnvelopeContext, KeyProvider, TableFileKeys, WrappedKey};
use tern_meta::{MetaStore, MicroPartitionDpo};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_storage::{Path, StoreExt};
use tern_table::commit::{Change, FileJournal, publish, remove_files};
use tern_table::{
    ChangeRecord, CommitInfo, Committed, Committer, IdempotencyKey, Landing, Stamp, Transaction,
    WriteFence,
};
use tokio::sync::Notify;

use crate::crash::CrashPoints;
use crate::error::{Error, Result};
use crate::log::{self, LogRecord};
use crate::reserve::{BLOCK, Reservations, ReservedFilesDpo, all_reserved, reserved_key};
use crate::state::{
    IdempotencyAtDpo, IdempotencyDpo, IdempotentOutcome, LamportDpo, LockDpo, LogKeyDpo,
    LogMarkDpo, LogPrunedDpo, StagedFileDpo, TXN_INDEXES, TxnDpo, TxnFileDpo, TxnHead,
    TxnIndexesDpo, TxnRefDpo, TxnState, all_pending, by_id_key, db_seq_key, done, done_key,
    idempotency_ages, idempotency_key, indexes_key, lamport_key, lock_key, log_key_key,
    log_mark_key, log_marks, log_pruned_key, pending, pending_key, put_idempotency, record_key,
    staged_bytes, staged_bytes_key, staged_files, txn_file_key, txn_files, txn_key, txns,
};

/// Settings of the commit protocol.
#[derive(Debug, Clone)]
pub struct TxnOptions {
    /// How long a transaction waits for its locks before giving up.
    pub lock_timeout: Duration,
    /// How often a waiting transaction looks again for locks released by another process
    /// (releases in this process wake waiters at once).
    pub lock_poll: Duration,
    /// Attempts to store a log record before the commit is reported in doubt.
    pub log_write_attempts: u32,
    /// How long one attempt may take; a slower write counts as inconclusive.
    pub log_write_timeout: Duration,
    /// Pause between attempts (doubled each time).
    pub log_retry_backoff: Duration,
    /// A sealed metadata file at least this large, of a change that cannot move (it lands
    /// where it was planned or not at all: every change but a rebasing append), is journaled
    /// and written before the prepare transaction instead of being kept in the metadata
    /// store until it is written beside the log record: a replica's import of 100 000
    /// files does not pass tens of MiB through a metadata row. Smaller files (every usual
    /// statement's) keep the two-writes-at-once path.
    pub prewrite_metadata_min_bytes: usize,
}

impl Default for TxnOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(30),
            lock_poll: Duration::from_millis(20),
            log_write_attempts: 4,
            log_write_timeout: Duration::from_secs(30),
            log_retry_backoff: Duration::from_millis(50),
            prewrite_metadata_min_bytes: 1 << 20,
        }
    }
}

/// Where commits spent their time, summed over all commits since the manager opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseStats {
    /// Commits completed.
    pub commits: u64,
    /// Waiting for and taking locks, checking the plan and issuing the id: the metadata
    /// transaction that enters Prepared (tried again when the plan no longer holds).
    pub locks: Duration,
    /// Planning where the changes land and sealing their metadata files (outside locks).
    pub prepare: Duration,
    /// Storing the metadata files and the log record (at once).
    pub log_write: Duration,
    /// Making versions visible and releasing locks.
    pub publish: Duration,
}

#[derive(Debug, Default)]
struct PhaseTimes {
    commits: AtomicU64,
    locks: AtomicU64,
    prepare: AtomicU64,
    log_write: AtomicU64,
    publish: AtomicU64,
}

fn add(counter: &AtomicU64, since: Instant) -> Instant {
    let now = Instant::now();
    let nanos = u64::try_from((now - since).as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(nanos, Ordering::Relaxed);
    now
}

/// What [`TxnManager::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Transactions rolled back (Active or PreCommitting): their files removed.
    pub rolled_back: Vec<u64>,
    /// Transactions rolled forward from Prepared (log record rewritten, versions made
    /// visible), by transaction id.
    pub rolled_forward: Vec<u64>,
    /// Transactions finished from Committing, by transaction id.
    pub finished: Vec<u64>,
    /// Files removed.
    pub files_removed: usize,
    /// Transactions recovery could not complete this time, with the reason. Each stays
    /// as it was (a Prepared one keeps its locks and is never rolled back) and is tried
    /// again by the next recovery; the others were completed regardless.
    pub failed: Vec<RecoveryFailure>,
}

impl RecoveryReport {
    /// Whether every unfinished transaction found was completed.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// A transaction [`TxnManager::recover`] could not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFailure {
    /// Its handle.
    pub handle: u64,
    /// Its transaction id, if it had one (Prepared or later).
    pub txn_id: Option<u64>,
    /// The state it stays in.
    pub state: TxnState,
    /// Why, with its causes (the error itself is logged; a report is compared and cloned,
    /// which the crate's error type is not).
    pub reason: String,
}

/// What became of a transaction, by id ([`TxnManager::status`]).
///
/// There is no "rolled back": an id is issued only at Prepared, and a prepared transaction
/// is never rolled back. A statement that failed before it had an id committed nothing
/// and has nothing to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Its versions are visible (or were: retention may have dropped them since).
    Committed,
    /// Prepared or Committing: recovery completes it; it will be committed.
    InDoubt {
        /// Where it is.
        state: TxnState,
    },
    /// Committed, and its log record since pruned (every replica had it and it was older
    /// than the retention): the id is at or below the account's pruning watermark and its
    /// stable id. (An id the account's clock skipped — it jumps to ids observed from
    /// peers — cannot be told apart from a pruned one any more.)
    CommittedPruned,
}

/// The commit protocol of one deployment (DESIGN.md §7), as the [`Committer`] of its
/// tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TxnManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    deployment: DeploymentId,
    meta: MetaStore,
    volume: Arc<dyn ObjectStore>,
    provider: Arc<dyn KeyProvider>,
    clock: SharedClock,
    options: TxnOptions,
    instance: u64,
    crash: CrashPoints,
    released: Notify,
    /// Transactions of this process waiting for a lock now.
    lock_waiters: AtomicU64,
    log_keys: Mutex<HashMap<AccountId, Arc<TableFileKeys>>>,
    phases: PhaseTimes,
    /// Handles of this instance's commits running now: recovery leaves them alone.
    in_flight: Mutex<std::collections::HashSet<u64>>,
    /// Blocks of micro-partition numbers this instance reserved ([`crate::reserve`]).
    reserved: Mutex<Reservations>,
    /// Who decides whether statements may write a database (replication's roles and
    /// epochs); without one, every database that is not a secondary replica may.
    fence: std::sync::RwLock<Option<Arc<dyn WriteFence>>>,
}

impl TxnManager {
    /// A manager for `deployment`'s tables in `volume`, with its state in `meta`. Each
    /// manager is a new instance: transactions left unfinished by earlier instances are
    /// completed or rolled back by [`TxnManager::recover`], which a deployment runs before
    /// it serves.
    pub fn open(
        deployment: DeploymentId,
        meta: MetaStore,
        volume: Arc<dyn ObjectStore>,
        provider: Arc<dyn KeyProvider>,
        clock: SharedClock,
        options: TxnOptions,
    ) -> Result<Self> {
        Self::open_with_crash_points(
            deployment,
            meta,
            volume,
            provider,
            clock,
            options,
            CrashPoints::new(),
        )
    }

    /// [`TxnManager::open`] with crash points to arm (tests of recovery).
    pub fn open_with_crash_points(
        deployment: DeploymentId,
        meta: MetaStore,
        volume: Arc<dyn ObjectStore>,
        provider: Arc<dyn KeyProvider>,
        clock: SharedClock,
        options: TxnOptions,
        crash: CrashPoints,
    ) -> Result<Self> {
        let instance = meta.write(|tx| {
            index_transactions(tx)?;
            tx.next_sequence("txn-instance")
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                deployment,
                meta,
                volume,
                provider,
                clock,
                options,
                instance,
                crash,
                released: Notify::new(),
                lock_waiters: AtomicU64::new(0),
                log_keys: Mutex::new(HashMap::new()),
                phases: PhaseTimes::default(),
                in_flight: Mutex::default(),
                reserved: Mutex::default(),
                fence: std::sync::RwLock::new(None),
            }),
        })
    }

    /// Installs the [`WriteFence`] every statement's commit is checked against when it is
    /// prepared (replication installs its own once it is built).
    pub fn set_write_fence(&self, fence: Arc<dyn WriteFence>) {
        *self
            .inner
            .fence
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fence);
    }

    /// The last transaction sequence number stamped for `database` here.
    pub fn database_seq(&self, database: &DatabaseId) -> Result<u64> {
        Ok(self.inner.meta.read(|tx| database_seq(tx, database))?)
    }

    /// This manager's instance number (unique per metadata store).
    pub fn instance(&self) -> u64 {
        self.inner.instance
    }

    /// The crash points of this manager.
    pub fn crash_points(&self) -> &CrashPoints {
        &self.inner.crash
    }

    /// Complete what earlier instances left unfinished, and this instance's commits that
    /// were reported in doubt: Active/PreCommitting → rolled back (files removed);
    /// Prepared → log record rewritten (idempotently) and rolled forward; Committing →
    /// finished. Run at start-up, before serving, and whenever a commit was in doubt.
    ///
    /// A transaction that cannot be completed now (its log record cannot be stored, a
    /// file cannot be removed) is listed in [`RecoveryReport::failed`] and left as it is;
    /// the others are completed anyway. An error means recovery could not run at all (the
    /// metadata store failed, or this instance crashed).
    ///
    /// Only one live instance may use a metadata store while this runs on it (an instance
    /// cannot tell a transaction of another live instance from one of a dead one). Commits
    /// of this instance that are still running are left to finish by themselves, so it is
    /// safe to call from a periodic worker.
    #[tracing::instrument(level = "info", skip(self), fields(instance = self.inner.instance))]
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let inner = &self.inner;
        inner.crash.alive("recover")?;
        let mut pending: Vec<TxnDpo> = inner
            .meta
            .read(|tx| tx.scan_prefix::<TxnDpo>(&txns()))?
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| {
                !t.state.is_final()
                    && (t.instance != inner.instance
                        || (matches!(t.state, TxnState::Prepared | TxnState::Committing)
                            && !inner.is_in_flight(t.handle)))
            })
            .collect();
        // Roll forward in id order (conflicting transactions cannot both be pending: they
        // hold the same lock), then everything else.
        pending.sort_by_key(|t| (t.txn_id.unwrap_or(u64::MAX), t.handle));
        let mut report = RecoveryReport::default();
        // One transaction that cannot be completed (a log write that keeps failing, a file
        // that cannot be removed) must not keep the others from being completed: each is
        // reported and the next one is tried. Only a crash of this instance stops here.
        for t in pending {
            let (handle, state, txn_id) = (t.handle, t.state, t.txn_id);
            if let Err(e) = inner.recover_one(t, &mut report).await {
                if e.is_crash() {
                    return Err(e);
                }
                let reason = error_chain(&e);
                tracing::warn!(handle, ?txn_id, ?state, error = %reason, "could not recover a transaction; it stays as it is and is retried by the next recovery");
                report.failed.push(RecoveryFailure {
                    handle,
                    txn_id,
                    state,
                    reason,
                });
            }
        }
        // Files of reserved numbers are swept only when no transaction is left unfinished
        // (one that failed here may still be rolled forward and reference its files).
        if report.failed.is_empty() {
            inner.sweep_reserved(&mut report).await?;
        }
        if report != RecoveryReport::default() {
            tracing::info!(?report, "recovered transactions");
        }
        Ok(report)
    }

    /// Before a stop: every reserved block of micro-partition numbers no running
    /// statement holds a number of is closed, so that the next recovery deletes its row
    /// instead of looking for files of the numbers never handed out. The stop's own
    /// [`recover`](Self::recover) deletes them.
    pub fn close_reservations(&self) {
        self.inner.lock_reserved().close_idle();
    }

    /// What became of transaction `txn_id` of `account`: `None` when this deployment never
    /// issued that id (or issued it to a transaction of another account). Found from the
    /// transaction's row while it is kept (in doubt rows are never pruned), else from its
    /// stored log record: a record stored by a transaction whose row is gone means it
    /// finished, and finishing a prepared transaction always commits it.
    pub async fn status(&self, account: &AccountId, txn_id: u64) -> Result<Option<TxnOutcome>> {
        let key = by_id_key(account, txn_id);
        let row = self
            .inner
            .meta
            .read_async(move |tx| match tx.get::<TxnRefDpo>(&key)? {
                Some(r) => tx.get::<TxnDpo>(&txn_key(r.handle)),
                None => Ok(None),
            })
            .await?;
        if let Some(t) = row {
            return Ok(Some(match t.state {
                TxnState::Committed => TxnOutcome::Committed,
                state => TxnOutcome::InDoubt { state },
            }));
        }
        let path = tern_storage::layout::volume::txlog(account, txn_id);
        match tern_storage::StoreExt::meta(self.inner.volume.as_ref(), &path).await {
            Ok(_) => Ok(Some(TxnOutcome::Committed)),
            Err(tern_storage::Error::NotFound { .. }) => {
                // Missing below the watermark: pruned (finished, hence committed), not lost.
                let (pruned, stable) = self.inner.meta.read(|tx| {
                    Ok((
                        tx.get::<LogPrunedDpo>(&log_pruned_key(account))?
                            .map_or(0, |w| w.up_to),
                        stable_log_id(tx, account)?,
                    ))
                })?;
                Ok((txn_id > 0 && txn_id <= pruned && txn_id <= stable)
                    .then_some(TxnOutcome::CommittedPruned))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `account`'s log key in `tx` (the account is being dropped: its log records
    /// left in the volume can no longer be opened). Call [`Self::forget_log_key`] once
    /// `tx` committed.
    pub fn destroy_log_key_in(
        tx: &mut tern_meta::MetaTxn<'_>,
        account: &AccountId,
    ) -> tern_meta::Result<()> {
        tx.delete(&log_key_key(account))
    }

    /// Forgets the cached log key of `account`.
    pub fn forget_log_key(&self, account: &AccountId) {
        self.inner.lock_log_keys().remove(account);
    }

    /// The id up to which `account`'s log records may have been pruned (0: none): a
    /// record at or below it that is not found was pruned, not lost.
    pub fn log_pruned_up_to(&self, account: &AccountId) -> Result<u64> {
        Ok(self.inner.meta.read(|tx| {
            Ok(tx
                .get::<LogPrunedDpo>(&log_pruned_key(account))?
                .map_or(0, |w| w.up_to))
        })?)
    }

    /// `account`'s pruning watermark row (all zero before the first pruning).
    pub fn log_pruning(&self, account: &AccountId) -> Result<LogPrunedDpo> {
        Ok(self.inner.meta.read(|tx| {
            Ok(tx
                .get::<LogPrunedDpo>(&log_pruned_key(account))?
                .unwrap_or_default())
        })?)
    }

    /// The highest id whose record is known to have been stored before `before_ms`, from
    /// the marks this call keeps (no record is read): takes a mark of the account's stable
    /// id now (when it moved since the newest mark), answers the stable id of the newest
    /// mark taken at or before `before_ms` (0 when none is that old yet) and forgets the
    /// marks older than that one. Called periodically (log pruning), it keeps about one
    /// mark per call over the retention.
    pub fn log_stored_before(&self, account: &AccountId, before_ms: i64) -> Result<u64> {
        let now = self.inner.clock.now_millis();
        Ok(self.inner.meta.write(|tx| {
            let stable = stable_log_id(tx, account)?;
            let marks = tx.scan_prefix::<LogMarkDpo>(&log_marks(account))?;
            if marks.last().is_none_or(|(_, m)| m.stable < stable) {
                tx.put(
                    &log_mark_key(account, now),
                    &LogMarkDpo { at_ms: now, stable },
                )?;
            }
            let old: Vec<_> = marks
                .into_iter()
                .take_while(|(_, m)| m.at_ms <= before_ms)
                .collect();
            let Some((_, newest_old)) = old.last().cloned() else {
                return Ok(0);
            };
            for (k, _) in &old[..old.len() - 1] {
                tx.delete(k)?;
            }
            Ok(newest_old.stable)
        })?)
    }

    /// Delete up to `limit` of `account`'s log records with ids at or below `up_to`
    /// (lowered to the stable id: no unfinished transaction's record is touched); how many.
    /// The watermark ([`TxnManager::log_pruned_up_to`]) is raised first, so a reader that
    /// misses a record below it knows why, and a crash half-way leaves records that the
    /// next call deletes. Called again until it returns fewer than `limit`.
    ///
    /// The caller decides that nobody needs those records any more (replication: every
    /// subscribed downstream replica has them, and they are older than the retention).
    #[tracing::instrument(level = "debug", skip(self), fields(deployment = %self.inner.deployment))]
    pub async fn prune_log(&self, account: &AccountId, up_to: u64, limit: usize) -> Result<usize> {
        let now = self.inner.clock.now_millis();
        let key = log_pruned_key(account);
        let w = self.inner.meta.write(|tx| {
            let stable = stable_log_id(tx, account)?;
            let mut w = tx.get::<LogPrunedDpo>(&key)?.unwrap_or_default();
            let target = up_to.min(stable);
            if target > w.up_to {
                w.up_to = target;
                w.pruned_at_ms = now;
                tx.put(&key, &w)?;
            }
            Ok(w)
        })?;
        if w.cleared >= w.up_to {
            return Ok(0);
        }
        let (ids, complete) = log::list_range(
            &self.inner.volume,
            account,
            w.cleared,
            w.up_to,
            limit.max(1),
        )
        .await?;
        for id in &ids {
            log::delete(&self.inner.volume, account, *id).await?;
        }
        let n = ids.len();
        self.inner.meta.write(|tx| {
            let mut cur = tx.get::<LogPrunedDpo>(&key)?.unwrap_or_default();
            cur.deleted += n as u64;
            if complete {
                // Everything up to the watermark this pass worked on is gone.
                cur.cleared = cur.cleared.max(w.up_to);
            }
            tx.put(&key, &cur)
        })?;
        if n > 0 {
            tracing::info!(%account, deleted = n, up_to = w.up_to, "log records pruned");
        }
        Ok(n)
    }

    /// The log record of transaction `txn_id` of `account`.
    pub async fn read_log(&self, account: &AccountId, txn_id: u64) -> Result<LogRecord> {
        let keys = self.inner.log_keys(account).await?;
        let path = tern_storage::layout::volume::txlog(account, txn_id);
        log::read(&self.inner.volume, keys.as_ref(), &path).await
    }

    /// The ids of `account`'s stored log records from `from_id` on, ascending. Records of
    /// unrelated transactions may be stored out of id order (DESIGN.md §7): a record with a
    /// lower id can still appear while its transaction is Prepared.
    pub async fn log_ids(&self, account: &AccountId, from_id: u64) -> Result<Vec<u64>> {
        log::list(&self.inner.volume, account, from_id).await
    }

    /// Up to `limit` of `account`'s log records from `from_id` on, in id order.
    pub async fn read_log_from(
        &self,
        account: &AccountId,
        from_id: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        for id in self
            .log_ids(account, from_id)
            .await?
            .into_iter()
            .take(limit)
        {
            out.push(self.read_log(account, id).await?);
        }
        Ok(out)
    }

    /// Merge an id observed elsewhere (a replicated transaction) into `account`'s Lamport
    /// clock: later ids are higher. Returns the clock's value.
    pub fn observe(&self, account: &AccountId, txn_id: u64) -> Result<u64> {
        Ok(self.inner.meta.write(|tx| {
            let key = lamport_key(account);
            let last = tx
                .get::<LamportDpo>(&key)?
                .map_or(0, |c| c.last)
                .max(txn_id);
            tx.put(&key, &LamportDpo { last })?;
            Ok(last)
        })?)
    }

    /// The last id `account`'s clock issued or observed (0 if none).
    pub fn last_txn_id(&self, account: &AccountId) -> Result<u64> {
        Ok(self.inner.meta.read(|tx| {
            Ok(tx
                .get::<LamportDpo>(&lamport_key(account))?
                .map_or(0, |c| c.last))
        })?)
    }

    /// The highest id up to which `account`'s log is complete: every transaction with an
    /// id at or below it has its log record stored (ids above may still appear out of
    /// order, DESIGN.md §7). A log shipper advances its cursor only up to here.
    pub fn stable_log_id(&self, account: &AccountId) -> Result<u64> {
        Ok(self.inner.meta.read(|tx| stable_log_id(tx, account))?)
    }

    /// How many transactions of this process wait for a lock now.
    pub fn lock_waiters(&self) -> u64 {
        self.inner.lock_waiters.load(Ordering::SeqCst)
    }

    /// Every transaction row (unfinished ones, and finished ones not yet pruned).
    pub fn transactions(&self) -> Result<Vec<TxnDpo>> {
        Ok(self
            .inner
            .meta
            .read(|tx| tx.scan_prefix::<TxnDpo>(&txns()))?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    /// Forget finished transactions that ended before `before_ms`; how many. Walks the
    /// index of finished transactions by end time (`txn/done/…`) only as far as the first
    /// one to keep, in bounded batches.
    pub fn prune_finished(&self, before_ms: i64) -> Result<usize> {
        const BATCH: usize = 512;
        let mut pruned = 0;
        loop {
            let (finished, n) = self.inner.meta.write(|tx| {
                // Only the entries that ended before `before_ms`: the key range stops there.
                let (start, _) = done().prefix_range();
                let end = done().u64(u64::try_from(before_ms).unwrap_or(0));
                let batch = tx.raw().scan(&start, end.as_bytes(), BATCH)?;
                let full = batch.len() == BATCH;
                let mut n = 0;
                for (k, _) in batch {
                    let k = tern_meta::Key::from_bytes(k);
                    let handle = k.last_u64()?;
                    if let Some(t) = tx.get::<TxnDpo>(&txn_key(handle))?
                        && t.state.is_final()
                    {
                        if let Some(id) = t.txn_id {
                            tx.delete(&by_id_key(&t.account, id))?;
                        }
                        tx.delete(&txn_key(handle))?;
                        n += 1;
                    }
                    tx.delete(&k)?;
                }
                Ok((!full, n))
            })?;
            pruned += n;
            if finished {
                return Ok(pruned);
            }
        }
    }

    /// `account`'s idempotency key `key`, if a statement stored it (and it is not pruned).
    pub fn idempotency(&self, account: &AccountId, key: &str) -> Result<Option<IdempotencyDpo>> {
        let k = idempotency_key(account, key);
        Ok(self.inner.meta.read(|tx| tx.get::<IdempotencyDpo>(&k))?)
    }

    /// Keep `key` for a statement that committed no transaction (it changed nothing), with
    /// its answer `info`, so that a retry answers the same instead of acting. A statement
    /// that commits stores its key with its transaction ([`Transaction::idempotency`]).
    /// The row stored under the key: this one, or one stored first by another request.
    pub fn remember_idempotent(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        info: &CommitInfo,
    ) -> Result<IdempotencyDpo> {
        let row = IdempotencyDpo {
            key: key.key.clone(),
            request_hash: key.request_hash.clone(),
            txn_id: info.txn_id,
            created_at_ms: self.inner.clock.now_millis(),
            outcome: Some(IdempotentOutcome::from(info)),
        };
        Ok(self
            .inner
            .meta
            .write(|tx| put_idempotency(tx, account, &row))?)
    }

    /// Forget idempotency keys stored before `before_ms`, oldest first, walking the age
    /// index (`txn/idem-at/…`) only as far as the first key to keep; how many. A key whose
    /// transaction is still in doubt is kept whatever its age: a retry must keep finding it
    /// until the transaction is committed.
    pub fn prune_idempotency(&self, before_ms: i64) -> Result<usize> {
        const BATCH: usize = 512;
        let oldest_in_doubt = self.inner.meta.read(|tx| {
            let mut oldest: Option<i64> = None;
            for (_, r) in tx.scan_prefix::<TxnRefDpo>(&all_pending())? {
                if let Some(t) = tx.get::<TxnDpo>(&txn_key(r.handle))? {
                    oldest = Some(oldest.map_or(t.started_at_ms, |o| o.min(t.started_at_ms)));
                }
            }
            Ok(oldest)
        })?;
        let cutoff = oldest_in_doubt.map_or(before_ms, |t| t.min(before_ms));
        let mut pruned = 0;
        loop {
            // One bounded metadata transaction per batch: pruning never holds the store long.
            let (done, n) = self.inner.meta.write(|tx| {
                let batch = tx.scan_prefix_limit::<IdempotencyAtDpo>(&idempotency_ages(), BATCH)?;
                let full = batch.len() == BATCH;
                let mut n = 0;
                for (at, row) in batch {
                    if row.created_at_ms >= cutoff {
                        return Ok((true, n));
                    }
                    tx.delete(&idempotency_key(&row.account, &row.key))?;
                    tx.delete(&at)?;
                    n += 1;
                }
                Ok((!full, n))
            })?;
            pruned += n;
            if done {
                return Ok(pruned);
            }
        }
    }

    /// Time spent per phase by the commits of this manager.
    pub fn phase_stats(&self) -> PhaseStats {
        let p = &self.inner.phases;
        let d = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        PhaseStats {
            commits: p.commits.load(Ordering::Relaxed),
            locks: d(&p.locks),
            prepare: d(&p.prepare),
            log_write: d(&p.log_write),
            publish: d(&p.publish),
        }
    }
}

#[async_trait]
impl Committer for TxnManager {
    /// Writes nothing yet: the transaction's row is stored with its first file or lock,
    /// the first moment there is something to recover.
    async fn begin(&self, account: &AccountId) -> tern_table::Result<Box<dyn Transaction>> {
        let inner = &self.inner;
        inner.crash.alive("begin")?;
        let id = Begun {
            handle: inner.meta.next_unique("txn-handle")?,
            account: account.clone(),
            started_at_ms: inner.clock.now_millis(),
        };
        inner.crash.check("begin")?;
        Ok(Box::new(Txn {
            inner: Arc::clone(inner),
            id,
            replicated: None,
            idempotency: None,
        }))
    }
}

/// Who a transaction is.
#[derive(Debug, Clone)]
struct Begun {
    handle: u64,
    account: AccountId,
    started_at_ms: i64,
}

/// One open transaction.
struct Txn {
    inner: Arc<Inner>,
    id: Begun,
    /// A replicated change's database and upstream stamp.
    replicated: Option<(DatabaseId, Stamp)>,
    /// The statement's idempotency key, stored with the Prepared mark.
    idempotency: Option<IdempotencyKey>,
}

#[async_trait]
impl FileJournal for Txn {
    async fn will_write(&mut self, path: &Path) -> tern_table::Result<()> {
        Ok(self
            .inner
            .journal(&self.id, std::slice::from_ref(path))
            .await?)
    }

    async fn will_write_all(&mut self, paths: &[Path]) -> tern_table::Result<()> {
        Ok(self.inner.journal(&self.id, paths).await?)
    }

    async fn new_mp(&mut self, table: &TableId, prefix: &Path) -> tern_table::Result<u64> {
        Ok(self.inner.new_mp(self.id.handle, table, prefix).await?)
    }
}

#[async_trait]
impl Transaction for Txn {
    async fn lock(&mut self, names: &[String]) -> tern_table::Result<()> {
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        Ok(self
            .inner
            .acquire(&self.id, &names, TxnState::Active)
            .await?)
    }

    fn replicated(&mut self, database: &DatabaseId, stamp: Stamp) {
        self.replicated = Some((database.clone(), stamp));
    }

    fn idempotency(&mut self, key: IdempotencyKey) -> tern_table::Result<()> {
        self.idempotency = Some(key);
        Ok(())
    }

    async fn commit(self: Box<Self>, changes: Vec<Change>) -> tern_table::Result<Committed> {
        let Txn {
            inner,
            id,
            replicated,
            idempotency,
        } = *self;
        inner.crash.check("written")?;
        let span = tracing::info_span!("commit", deployment = %inner.deployment, account = %id.account, handle = id.handle);
        // The commit runs on its own task: a caller that goes away (a dropped request)
        // cannot stop it half-way with locks held.
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                inner
                    .commit(&id, changes, replicated, idempotency.as_ref())
                    .await
            },
            span,
        ));
        Ok(task.await.map_err(Error::Task)??)
    }

    async fn abort(self: Box<Self>) {
        if self.inner.crash.crashed() {
            return;
        }
        if let Err(e) = self.inner.roll_back(self.id.handle).await {
            tracing::warn!(handle = self.id.handle, error = %e, "could not roll back; recovery will");
        }
    }
}

impl Inner {
    /// Journals `paths` (files about to be written) in one metadata transaction.
    async fn journal(&self, id: &Begun, paths: &[Path]) -> Result<()> {
        self.crash.alive("journaled")?;
        if paths.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_millis();
        let paths: Vec<String> = paths.iter().map(ToString::to_string).collect();
        let (id, instance) = (id.clone(), self.instance);
        self.meta
            .write_async(move |tx| {
                if !tx.contains(&txn_key(id.handle))? {
                    let mut t = txn_or_new(tx, &id, instance)?;
                    t.updated_at_ms = now;
                    tx.put(&txn_key(id.handle), &t)?;
                }
                for path in &paths {
                    tx.put(
                        &txn_file_key(id.handle, path),
                        &TxnFileDpo { path: path.clone() },
                    )?;
                }
                Ok(())
            })
            .await?;
        self.crash.check("journaled")
    }

    /// A number for a new micro-partition of `table` for transaction `handle`, covered by
    /// a reserved block ([`crate::reserve`]): one metadata transaction per [`BLOCK`]
    /// numbers of a table, which also deletes the rows of blocks all settled.
    async fn new_mp(&self, handle: u64, table: &TableId, prefix: &Path) -> Result<u64> {
        self.crash.alive("journaled")?;
        loop {
            if let Some(n) = self.lock_reserved().take(handle, table) {
                self.crash.check("journaled")?;
                return Ok(n);
            }
            let done = self.lock_reserved().take_done();
            let (gone, instance) = (done.clone(), self.instance);
            let (table, prefix) = (table.clone(), prefix.to_string());
            let stored = self
                .meta
                .write_async(move |tx| {
                    for first in &gone {
                        tx.delete(&reserved_key(*first))?;
                    }
                    let last = tx.reserve_sequence("short_name", BLOCK)?;
                    let row = ReservedFilesDpo {
                        instance,
                        table: table.clone(),
                        prefix: prefix.clone(),
                        first: last + 1 - BLOCK,
                        end: last + 1,
                    };
                    tx.put(&reserved_key(row.first), &row)?;
                    Ok(row)
                })
                .await;
            let mut reserved = self.lock_reserved();
            match stored {
                Ok(row) => reserved.add(row),
                Err(e) => {
                    reserved.give_back_done(done);
                    return Err(e.into());
                }
            }
        }
    }

    fn lock_reserved(&self) -> std::sync::MutexGuard<'_, Reservations> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove the files of the numbers `handle` was handed, and settle them: a block one
    /// of them stays in is left to recovery's sweep. How many there were.
    async fn remove_held(&self, handle: u64) -> usize {
        let held = self.lock_reserved().held(handle);
        let left = self.remove_uncommitted(&held).await;
        if let Some(f) = left.first() {
            tracing::warn!(handle, path = %f, "an uncommitted file stays; recovery's sweep removes it");
        }
        self.lock_reserved().settle(handle, left.is_empty());
        held.len()
    }

    /// Remove `files` (best effort; what fails is logged) and answer those still there.
    async fn remove_uncommitted(&self, files: &[Path]) -> Vec<Path> {
        remove_files(self.volume.as_ref(), files).await;
        let mut left = Vec::new();
        for f in files {
            if self.volume.meta(f).await.is_ok() {
                left.push(f.clone());
            }
        }
        left
    }

    /// Remove the files of reserved numbers no micro-partition row names, from blocks
    /// no running transaction of this instance uses ([`crate::reserve`]), then the
    /// blocks' rows. A block whose files cannot all be removed stays for the next sweep.
    async fn sweep_reserved(&self, report: &mut RecoveryReport) -> Result<()> {
        let rows = self
            .meta
            .read_async(|tx| tx.scan_prefix::<ReservedFilesDpo>(&all_reserved()))
            .await?;
        for (key, row) in rows {
            let (sweepable, done) = {
                let r = self.lock_reserved();
                (
                    r.sweepable(self.instance, row.instance, row.first),
                    r.is_done(row.first),
                )
            };
            if !sweepable {
                continue;
            }
            if done {
                self.meta.write_async(move |tx| tx.delete(&key)).await?;
                self.lock_reserved().swept(row.first);
                continue;
            }
            let unnamed = {
                let row = row.clone();
                self.meta
                    .read_async(move |tx| {
                        let mut out = Vec::new();
                        for n in row.first..row.end {
                            let short = tern_storage::layout::volume::numbered_mp(n);
                            if tx.get_micro_partition(&row.table, &short)?.is_none() {
                                out.push(n);
                            }
                        }
                        Ok(out)
                    })
                    .await?
            };
            let mut left = 0;
            for n in unnamed {
                let path = row.path(n);
                if self.volume.meta(&path).await.is_err() {
                    continue;
                }
                match self.volume.delete_idempotent(&path).await {
                    Ok(()) => report.files_removed += 1,
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "could not remove an uncommitted file; the next recovery retries");
                        left += 1;
                    }
                }
            }
            if left == 0 {
                self.meta.write_async(move |tx| tx.delete(&key)).await?;
                self.lock_reserved().swept(row.first);
            }
        }
        Ok(())
    }

    fn is_in_flight(&self, handle: u64) -> bool {
        self.lock_in_flight().contains(&handle)
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Complete one unfinished transaction `t` (see [`TxnManager::recover`]), noting what
    /// was done in `report`.
    async fn recover_one(&self, t: TxnDpo, report: &mut RecoveryReport) -> Result<()> {
        match t.state {
            TxnState::Active | TxnState::PreCommitting => {
                report.files_removed += self.roll_back(t.handle).await?;
                report.rolled_back.push(t.handle);
            }
            TxnState::Prepared => {
                let handle = t.handle;
                // Its record: beside the row (format 2), or in it (format 1).
                let record = match t.record {
                    Some(record) => record,
                    None => {
                        // Read with the row: a commit of this instance may have finished it
                        // since it was listed (and its record gone with it).
                        let key = record_key(handle);
                        let (state, packed) = self
                            .meta
                            .read_async(move |tx| {
                                let state = tx.get::<TxnHead>(&txn_key(handle))?.map(|h| h.state);
                                Ok((state, tx.raw().get(record_key(handle).as_bytes())?))
                            })
                            .await?;
                        match (state, packed) {
                            (Some(TxnState::Prepared), Some(packed)) => {
                                let plain = unpack_record(handle, &packed)?;
                                LogRecord::from_bytes(&plain, &key.to_string())?
                            }
                            (Some(TxnState::Prepared), None) => {
                                return Err(Error::BadLogRecord {
                                    path: format!("transaction {handle}"),
                                    reason: "prepared without a log record".into(),
                                });
                            }
                            // Finished meanwhile (or going Committing → Committed by it).
                            _ => return Ok(()),
                        }
                    }
                };
                let staged = self.staged(handle).await?;
                self.write_staged(&payloads(&staged)).await?;
                self.store_log(&record).await?;
                drop(staged);
                // A commit of this instance may have finished it meanwhile.
                let record = Arc::new(record);
                if self.finish(t.handle, Arc::clone(&record)).await? {
                    report.rolled_forward.push(record.txn_id);
                }
            }
            TxnState::Committing => {
                if self.release(t.handle, TxnState::Committed).await? {
                    report.finished.push(t.txn_id.unwrap_or_default());
                }
            }
            TxnState::Committed | TxnState::Aborted => {}
        }
        Ok(())
    }

    async fn commit(
        &self,
        id: &Begun,
        changes: Vec<Change>,
        replicated: Option<(DatabaseId, Stamp)>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Committed> {
        /// Takes the handle off the running set however the commit ends.
        struct Running<'a>(&'a Inner, u64);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.lock_in_flight().remove(&self.1);
            }
        }
        self.lock_in_flight().insert(id.handle);
        let _running = Running(self, id.handle);
        let outcome = self
            .commit_in_flight(id, changes, replicated, idempotency)
            .await;
        if let Ok(_) | Err(Error::InDoubt { .. }) = &outcome {
            // Its files are referenced by its versions, or by the prepared record recovery
            // rolls forward. (A failure before that rolled it back, files and all.)
            self.lock_reserved().settle(id.handle, true);
        }
        outcome
    }

    async fn commit_in_flight(
        &self,
        id: &Begun,
        changes: Vec<Change>,
        replicated: Option<(DatabaseId, Stamp)>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Committed> {
        let (handle, account) = (id.handle, &id.account);
        let started = Instant::now();
        if let Some(other) = changes.iter().find(|c| c.account() != account) {
            let e = Error::CrossAccount {
                account: account.clone(),
                other: other.account().clone(),
            };
            return self.fail(handle, e).await;
        }
        let mut names: Vec<String> = changes.iter().flat_map(Change::lock_names).collect();
        names.sort();
        names.dedup();
        // The metadata file each table change will write, numbered now.
        let mut ep_seqs = Vec::with_capacity(changes.len());
        for change in &changes {
            ep_seqs.push(match change {
                Change::Table(_) => match self.meta.next_unique("ep") {
                    Ok(seq) => seq,
                    Err(e) => return self.fail(handle, e.into()).await,
                },
                Change::Dictionary { .. } | Change::Repair(_) => 0,
            });
        }
        let log_keys = match self.log_keys(account).await {
            Ok(k) => k,
            Err(e) => return self.fail(handle, e).await,
        };
        let fence = self
            .fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Each change's added files leave the change: a plan moves them into its record
        // (a plan that no longer holds hands them on to the next) instead of copying them —
        // a change of 100 000 files is held once, not once per plan.
        let mut changes = changes;
        let mut added: Vec<Vec<MicroPartitionDpo>> =
            changes.iter_mut().map(Change::take_added).collect();
        let planning = Arc::new(Planning {
            changes,
            ep_seqs,
            deployment: self.deployment.clone(),
            account: account.clone(),
            handle,
            idempotency: idempotency.cloned(),
            replicated,
            fence,
        });
        let mut t = started;
        // Metadata files written before the prepare transaction (see
        // `TxnOptions::prewrite_metadata_min_bytes`): not sealed or written again.
        let mut written: std::collections::HashSet<Path> = std::collections::HashSet::new();
        let (prepared, changes, staged) = loop {
            // Where the changes land now, read outside the locks; planned there, their
            // metadata files sealed: then one metadata transaction takes the locks, finds
            // they still land there (else plans again) and prepares — the files are written
            // after it, beside the log record, not in between with the locks held.
            let landings = {
                let planning = Arc::clone(&planning);
                self.meta
                    .read_async(move |tx| Ok(planning.landings(tx)))
                    .await
            };
            let landings = match landings {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return self.fail(handle, e.into()).await,
                Err(e) => return self.fail(handle, e.into()).await,
            };
            let mut planned = Vec::with_capacity(planning.changes.len());
            for ((change, landing), (files, &seq)) in planning
                .changes
                .iter()
                .zip(&landings)
                .zip(added.drain(..).zip(&planning.ep_seqs))
            {
                match change.plan_landed(landing.as_ref(), files, seq) {
                    Ok(p) => planned.push(p),
                    Err(e) => return self.fail(handle, e.into()).await,
                }
            }
            let mut staged = Vec::new();
            let mut predicted = Vec::with_capacity(planned.len());
            for (p, change) in planned.into_iter().zip(&planning.changes) {
                if let Some(file) = &p.metadata_file
                    && !written.contains(&file.path)
                {
                    // Sealed as it is encoded from the record: no plaintext held.
                    let parts = match p.seal_metadata_file().await {
                        Ok(parts) => parts.unwrap_or_default(),
                        Err(e) => return self.fail(handle, e.into()).await,
                    };
                    let len: usize = parts.iter().map(Bytes::len).sum();
                    // A change that cannot move plans the same file again or fails: a
                    // large one is written now, journaled first (a failure removes it).
                    let cannot_move =
                        matches!(change, Change::Table(t) if !t.rebase || t.version.is_some());
                    if cannot_move && len >= self.options.prewrite_metadata_min_bytes {
                        let one = [(
                            file.path.clone(),
                            object_store::PutPayload::from_iter(parts),
                        )];
                        if let Err(e) = self.journal(id, std::slice::from_ref(&file.path)).await {
                            return self.fail(handle, e).await;
                        }
                        if let Err(e) = self.write_staged(&one).await {
                            return self.fail(handle, e).await;
                        }
                        written.insert(file.path.clone());
                    } else {
                        // Kept in the metadata store until written: one piece.
                        let mut sealed = Vec::with_capacity(len);
                        for part in parts {
                            sealed.extend_from_slice(&part);
                        }
                        staged.push((file.path.clone(), Bytes::from(sealed)));
                    }
                }
                // The plaintext goes as soon as it is sealed.
                predicted.push(p.record);
            }
            t = add(&self.phases.prepare, t);
            let now = self.clock.now_millis();
            // Shared with the locking closure, not cloned: a large table's metadata file
            // is megabytes, and its record lists every file.
            let staged = Arc::new(staged);
            let predicted = Arc::new(predicted);
            let attempt = {
                let (planning, staged, predicted) = (
                    Arc::clone(&planning),
                    Arc::clone(&staged),
                    Arc::clone(&predicted),
                );
                self.take_locks(id, &names, move |tx, txn| {
                    planning.prepare(tx, txn, &predicted, &staged, now)
                })
                .await
            };
            t = add(&self.phases.locks, t);
            match attempt {
                Ok(Prepare::Done(prepared)) => {
                    // The record's changes are the planned ones (the closure has let go).
                    let changes = Arc::try_unwrap(predicted).unwrap_or_else(|p| (*p).clone());
                    break (prepared, changes, staged);
                }
                Ok(Prepare::Moved) => {
                    // The next plan takes this one's files (the closure has let go of them).
                    let mut records = Arc::try_unwrap(predicted).unwrap_or_else(|p| (*p).clone());
                    added = records.iter_mut().map(ChangeRecord::take_added).collect();
                }
                Ok(Prepare::Refused(e)) => return self.fail(handle, e).await,
                Err(e) => return self.fail(handle, e).await,
            }
        };
        // Prepared: the changes (their files moved into the record) are not needed again.
        drop(planning);
        let Prepared {
            txn_id,
            committed_at_ms,
            stamps,
        } = prepared;
        let record = LogRecord {
            stamps,
            ..LogRecord::new(
                txn_id,
                self.deployment.clone(),
                account.clone(),
                committed_at_ms,
                changes,
            )
        };
        // Soft point of no return passed: from here the transaction only rolls forward, so
        // whatever stops this call leaves it to recovery and its caller in doubt, with the
        // id to look its outcome up by — never a plain failure the client would retry.
        let in_doubt = |e: Error| {
            if !e.is_crash() {
                tracing::error!(txn_id, error = %e, "commit in doubt; recovery completes it");
            }
            Error::InDoubt {
                txn_id,
                source: Box::new(e),
            }
        };
        self.crash.check("prepared").map_err(in_doubt)?;
        // The metadata files and the log record, at once: both are stored before the
        // version is visible, and a crash in between leaves recovery both to write again.
        let staged_payloads = payloads(&staged);
        let (files, logged) = tokio::join!(
            self.write_staged(&staged_payloads),
            self.write_log(&log_keys, &record)
        );
        // Stored: the metadata files' bytes are not needed again.
        drop((staged_payloads, staged));
        files.map_err(in_doubt)?;
        logged.map_err(in_doubt)?;
        self.crash.check("logged").map_err(in_doubt)?;
        let t = add(&self.phases.log_write, t);
        let record = Arc::new(record);
        self.finish(handle, Arc::clone(&record))
            .await
            .map_err(in_doubt)?;
        add(&self.phases.publish, t);
        self.phases.commits.fetch_add(1, Ordering::Relaxed);
        // The caller gets the changes themselves (the finishing closure has let go of its
        // share by now): one copy of a large commit's file list less.
        let records = Arc::try_unwrap(record).map_or_else(|r| r.changes.clone(), |r| r.changes);
        tracing::debug!(txn_id, changes = records.len(), "committed");
        Ok(Committed {
            txn_id: Some(txn_id),
            records,
        })
    }

    /// Versions visible and locks released, in one metadata transaction (Committed). A
    /// transaction a crash left Committing (visible, locks held: stores written before
    /// these two steps were one) is released. Does each step only if the transaction is
    /// still before it, so two finishers (a commit and a recovery) cannot apply it twice.
    /// Whether this call made it visible.
    /// The record is shared with the metadata closure, not cloned: a large commit's record
    /// lists every file it adds.
    async fn finish(&self, handle: u64, record: Arc<LogRecord>) -> Result<bool> {
        self.crash.alive("logged")?;
        let now = self.clock.now_millis();
        // Deferred durability: everything this write does is re-done by recovery from
        // durable state (the Prepared row, the stored log record and files), so it need not
        // wait for an fsync of its own; the next durable metadata write makes it durable.
        let published = self
            .meta
            .write_deferred_async(move |tx| {
                let mut t = require_txn(tx, handle)?;
                let published = t.state == TxnState::Prepared;
                if published {
                    for r in &record.changes {
                        publish(
                            tx,
                            r,
                            Some(record.txn_id),
                            &record.origin,
                            record.committed_at_ms,
                        )?;
                    }
                } else if t.state != TxnState::Committing {
                    return Ok(false);
                }
                release_in(tx, handle, &mut t, TxnState::Committed, now)?;
                Ok(published)
            })
            .await?;
        self.released.notify_waiters();
        self.crash.check("committed")?;
        Ok(published)
    }

    /// Store the log record, retrying failed and inconclusive attempts: the write is
    /// idempotent, so an attempt that took effect but reported failure is found by the next.
    async fn write_log(&self, keys: &TableFileKeys, record: &LogRecord) -> Result<()> {
        self.retrying(&record.path(), || log::write(&self.volume, keys, record))
            .await
    }

    /// Run one idempotent write of `path` until it succeeds, retrying failed and
    /// inconclusive attempts (each bounded by the log write timeout): an attempt that took
    /// effect but reported failure is found by the next. A mismatch is final.
    async fn retrying<F, Fut>(&self, path: &Path, attempt_write: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut backoff = self.options.log_retry_backoff;
        let attempts = self.options.log_write_attempts.max(1);
        let mut attempt = 1;
        loop {
            self.crash.alive("prepared")?;
            let outcome =
                tokio::time::timeout(self.options.log_write_timeout, attempt_write()).await;
            let e = match outcome {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(
                    e @ (Error::LogRecordMismatch { .. } | Error::StagedFileMismatch { .. }),
                )) => {
                    return Err(e);
                }
                Ok(Err(e)) => e,
                Err(_) => Error::LogWriteTimeout {
                    path: path.to_string(),
                    after: self.options.log_write_timeout,
                },
            };
            if attempt >= attempts {
                return Err(e);
            }
            tracing::warn!(%path, attempt, error = %e, "write of a prepared transaction's file failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn store_log(&self, record: &LogRecord) -> Result<()> {
        let keys = self.log_keys(&record.account).await?;
        self.write_log(&keys, record).await
    }

    /// The sealed metadata files a Prepared transaction keeps, in either stored form.
    async fn staged(&self, handle: u64) -> Result<Vec<(Path, Bytes)>> {
        let (raw, hex) = self
            .meta
            .read_async(move |tx| {
                let (start, end) = staged_bytes(handle).prefix_range();
                let raw = tx.raw().scan(&start, &end, usize::MAX)?;
                let hex = tx.scan_prefix::<StagedFileDpo>(&staged_files(handle))?;
                Ok((raw, hex))
            })
            .await?;
        let mut out = Vec::with_capacity(raw.len() + hex.len());
        for (key, sealed) in raw {
            let key = tern_meta::Key::from_bytes(key);
            let path = match key.elements()?.pop() {
                Some(tern_meta::Element::Str(path)) => path,
                _ => {
                    return Err(Error::BadLogRecord {
                        path: key.to_string(),
                        reason: format!(
                            "transaction {handle}: a staged metadata file's key names no path"
                        ),
                    });
                }
            };
            out.push((Path::from(path), Bytes::from(sealed)));
        }
        // Stores written before the files were kept as bytes.
        for (_, f) in hex {
            let sealed = tern_crypto::from_hex(&f.sealed).ok_or_else(|| Error::BadLogRecord {
                path: f.path.clone(),
                reason: format!("transaction {handle}: its staged metadata file is not hex"),
            })?;
            out.push((Path::from(f.path), Bytes::from(sealed)));
        }
        Ok(out)
    }

    /// Take every lock in `names` for `handle` at once (those it holds already count) and
    /// enter `state`, waiting while any is held by another transaction.
    async fn acquire(&self, id: &Begun, names: &[String], state: TxnState) -> Result<()> {
        self.take_locks(id, names, move |_, t| {
            t.state = state;
            Ok(Prepare::Done(()))
        })
        .await
        .map(|_| ())
    }

    /// Take every lock in `names` for `handle` at once (those it holds already count) and
    /// run `body` in the same metadata transaction, waiting while any lock is held by
    /// another transaction. `body` sees the transaction row with the locks added and may
    /// change it; the locks and the row are stored only when it answers
    /// [`Prepare::Done`] — otherwise nothing is written (and `body` must write nothing).
    async fn take_locks<T, F>(&self, id: &Begun, names: &[String], body: F) -> Result<Prepare<T>>
    where
        T: Send + 'static,
        F: Fn(&mut tern_meta::MetaTxn<'_>, &mut TxnDpo) -> tern_meta::Result<Prepare<T>>
            + Send
            + Sync
            + 'static,
    {
        let handle = id.handle;
        let started = Instant::now();
        let body = Arc::new(body);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let now = self.clock.now_millis();
            let (names, id, instance, body) =
                (names.to_vec(), id.clone(), self.instance, Arc::clone(&body));
            let outcome = self
                .meta
                .write_async(move |tx| {
                    let names = &names;
                    for name in names {
                        if let Some(l) = tx.get::<LockDpo>(&lock_key(name))?
                            && l.handle != handle
                        {
                            return Ok(Err((name.clone(), l.handle)));
                        }
                    }
                    let mut t = txn_or_new(tx, &id, instance)?;
                    for name in names {
                        if !t.locks.contains(name) {
                            t.locks.push(name.clone());
                        }
                    }
                    t.updated_at_ms = now;
                    let outcome = body(tx, &mut t)?;
                    if matches!(outcome, Prepare::Done(_)) {
                        for name in names {
                            tx.put(
                                &lock_key(name),
                                &LockDpo {
                                    handle,
                                    since_ms: now,
                                },
                            )?;
                        }
                        tx.put(&txn_key(handle), &t)?;
                    }
                    Ok(Ok(outcome))
                })
                .await?;
            let (lock, holder) = match outcome {
                Ok(outcome) => return Ok(outcome),
                Err(blocked) => blocked,
            };
            let waited = started.elapsed();
            let Some(left) = self.options.lock_timeout.checked_sub(waited) else {
                return Err(Error::LockTimeout {
                    lock,
                    holder,
                    waited,
                });
            };
            let _waiting = Waiting::new(&self.lock_waiters);
            tokio::select! {
                () = released => {}
                () = tokio::time::sleep(left.min(self.options.lock_poll)) => {}
            }
        }
    }

    /// Store a Prepared transaction's sealed metadata files, create-once: a file found
    /// stored already is one an earlier attempt wrote (its path is numbered for this
    /// transaction alone) when it holds the same bytes.
    async fn write_staged(&self, staged: &[(Path, object_store::PutPayload)]) -> Result<()> {
        let writes = staged.iter().map(|(path, sealed)| {
            self.retrying(path, move || async move {
                // Shared with the payload, not copied.
                let put = self.volume.put_new(path, sealed.clone()).await;
                match put {
                    Ok(_) => Ok(()),
                    Err(tern_storage::Error::AlreadyExists { .. }) => {
                        if same_bytes(self.volume.read_all(path).await?.as_ref(), sealed) {
                            Ok(())
                        } else {
                            Err(Error::StagedFileMismatch {
                                path: path.to_string(),
                            })
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            })
        });
        futures::future::try_join_all(writes).await?;
        Ok(())
    }

    /// Move `handle` to a final state and release its locks, in one transaction; whether
    /// this call did (it was not final already).
    async fn release(&self, handle: u64, state: TxnState) -> Result<bool> {
        let now = self.clock.now_millis();
        let released = self
            .meta
            .write_async(move |tx| {
                let mut t = require_txn(tx, handle)?;
                release_in(tx, handle, &mut t, state, now)
            })
            .await?;
        self.released.notify_waiters();
        Ok(released)
    }

    /// Remove every file of `handle`, then mark it Aborted and release its locks (in that
    /// order: a crash in between leaves it to be rolled back again, never an orphan file).
    /// How many files it had.
    async fn roll_back(&self, handle: u64) -> Result<usize> {
        let Some((t, journaled)) = self
            .meta
            .read_async(move |tx| {
                let Some(t) = tx.get::<TxnDpo>(&txn_key(handle))? else {
                    return Ok(None);
                };
                let files = tx.scan_prefix::<TxnFileDpo>(&txn_files(handle))?;
                Ok(Some((t, files)))
            })
            .await?
        else {
            // Nothing stored yet: only the files of reserved numbers to undo.
            return Ok(self.remove_held(handle).await);
        };
        if t.state.is_final() {
            return Ok(0);
        }
        if !matches!(t.state, TxnState::Active | TxnState::PreCommitting) {
            return Err(Error::CannotRollBack {
                handle,
                state: t.state,
            });
        }
        let held = self.remove_held(handle).await;
        // Rows written before files were journaled one row each keep them in `files`.
        let files: Vec<Path> = t
            .files
            .iter()
            .map(String::as_str)
            .chain(journaled.iter().map(|(_, f)| f.path.as_str()))
            .map(Path::from)
            .collect();
        // An Aborted row must not forget a file that is still there.
        if let Some(f) = self.remove_uncommitted(&files).await.first() {
            return Err(Error::FileNotRemoved {
                handle,
                path: f.to_string(),
            });
        }
        self.release(handle, TxnState::Aborted).await?;
        Ok(files.len() + held)
    }

    /// A commit failed before its point of no return: roll back (unless this instance
    /// crashed: a dead process cleans nothing up) and return `e`.
    async fn fail<T>(&self, handle: u64, e: Error) -> Result<T> {
        if e.is_crash() || self.crash.crashed() {
            return Err(e);
        }
        if let Err(rb) = self.roll_back(handle).await {
            tracing::warn!(handle, error = %rb, "could not roll back; recovery will");
        }
        Err(e)
    }

    /// The key that seals `account`'s log records: `HKDF(log key, path)`, the log key made
    /// once per account by the key provider and kept wrapped in the metadata store.
    async fn log_keys(&self, account: &AccountId) -> Result<Arc<TableFileKeys>> {
        if let Some(k) = self.lock_log_keys().get(account) {
            return Ok(Arc::clone(k));
        }
        let ctx = EnvelopeContext::account(format!("{account}/txlog"));
        let key = log_key_key(account);
        let stored = self.meta.read(|tx| tx.get::<LogKeyDpo>(&key))?;
        let wrapped = match stored {
            Some(s) => s.wrapped,
            None => {
                let (_, wrapped) = self.provider.generate_data_key(&ctx).await?;
                let fresh = wrapped.to_hex();
                // Two first commits may race: the first stored key wins.
                self.meta.write(|tx| match tx.get::<LogKeyDpo>(&key)? {
                    Some(s) => Ok(s.wrapped),
                    None => {
                        tx.put(
                            &key,
                            &LogKeyDpo {
                                wrapped: fresh.clone(),
                            },
                        )?;
                        Ok(fresh.clone())
                    }
                })?
            }
        };
        let wrapped = WrappedKey::from_hex(&wrapped).ok_or_else(|| Error::BadLogRecord {
            path: key.to_string(),
            reason: "the stored log key is not hex".into(),
        })?;
        let dek = self.provider.decrypt_data_key(&wrapped, &ctx).await?;
        let keys = Arc::new(TableFileKeys::new(Arc::new(dek)));
        self.lock_log_keys()
            .insert(account.clone(), Arc::clone(&keys));
        Ok(keys)
    }

    fn lock_log_keys(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Arc<TableFileKeys>>> {
        self.log_keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A commit's changes and what preparing them checks, shared by its attempts.
struct Planning {
    changes: Vec<Change>,
    /// The number of each change's metadata file (0 for a dictionary change).
    ep_seqs: Vec<u64>,
    deployment: DeploymentId,
    account: AccountId,
    handle: u64,
    idempotency: Option<IdempotencyKey>,
    replicated: Option<(DatabaseId, Stamp)>,
    fence: Option<Arc<dyn WriteFence>>,
}

/// What a metadata transaction under fresh locks decided ([`Inner::take_locks`]).
enum Prepare<T> {
    /// Done: the locks and the transaction row are stored with it.
    Done(T),
    /// The plan no longer holds (another commit moved a table on): plan again.
    Moved,
    /// Refused: nothing is stored.
    Refused(Error),
}

impl Planning {
    /// Where every change lands on the state `tx` reads (with every check of planning).
    fn landings(
        &self,
        tx: &mut tern_meta::MetaTxn<'_>,
    ) -> tern_table::Result<Vec<Option<Landing>>> {
        self.changes.iter().map(|c| c.landing_in(tx)).collect()
    }

    /// Under the locks just taken, in their metadata transaction: if the changes still
    /// land where they were planned (`predicted`) and publish cleanly, issue the id and
    /// enter Prepared with the log record and the sealed metadata files (`staged`).
    fn prepare(
        &self,
        tx: &mut tern_meta::MetaTxn<'_>,
        t: &mut TxnDpo,
        predicted: &[ChangeRecord],
        staged: &[(Path, Bytes)],
        now: i64,
    ) -> tern_meta::Result<Prepare<Prepared>> {
        // Where the changes land now, checked as planning checks them; landing where they
        // were planned, they plan the same: the predicted records are the records (and are
        // not made again, a copy of every added file less under the locks).
        let landings = match self.landings(tx) {
            Ok(l) => l,
            Err(e) => return Ok(Prepare::Refused(e.into())),
        };
        if landings
            .into_iter()
            .ne(predicted.iter().map(ChangeRecord::landing))
        {
            return Ok(Prepare::Moved);
        }
        let records = predicted;
        let account = &self.account;
        // Under the locks nothing else changes these tables: what publishes cleanly now
        // publishes cleanly after the log write. Checked by the code that publishes, its
        // writes undone — in this transaction, before it writes anything (a refusal
        // commits nothing), rather than in one of its own that would wait for the writer
        // once more.
        let checked = tx.undone(|tx| {
            for r in records {
                publish(tx, r, Some(0), &self.deployment, now)?;
            }
            Ok(())
        })?;
        if let Err(e) = checked {
            return Ok(Prepare::Refused(Error::from(e)));
        }
        // A statement's idempotency key is taken here, with the Prepared mark: it is found
        // exactly when the transaction is (or will be) committed. Taken by another
        // transaction meanwhile (two requests with one key at once), this one yields.
        if let Some(k) = &self.idempotency
            && let Some(held) = tx.get::<IdempotencyDpo>(&idempotency_key(account, &k.key))?
        {
            return Ok(Prepare::Refused(Error::from(
                tern_table::Error::IdempotencyKeyTaken {
                    key: k.key.clone(),
                    txn_id: held.txn_id,
                },
            )));
        }
        // The fence decides in this same metadata transaction: a database fenced before it
        // never takes the commit, one fenced after finds it prepared (and the record
        // stamped with the epoch it was made under).
        let stamps = match stamp(tx, records, self.fence.as_deref(), self.replicated.as_ref())? {
            Ok(s) => s,
            Err(refused) => return Ok(Prepare::Refused(Error::from(refused))),
        };
        // The id comes from the account's clock only now, with every lock held, so
        // conflicting transactions get ids in commit order.
        let key = lamport_key(account);
        let txn_id = tx.get::<LamportDpo>(&key)?.map_or(0, |c| c.last) + 1;
        tx.put(&key, &LamportDpo { last: txn_id })?;
        // The record, encoded from the planned changes (borrowed) and kept beside the row:
        // as it is when small (every usual statement's: a compressor's set-up would cost
        // more than it saves, inside the single writer), else straight into a compressor
        // (a record of 100 000 files is tens of MiB of JSON, a few MiB packed), never held
        // whole as JSON.
        let handle = self.handle;
        let encode_failed = |source| tern_meta::Error::Encode {
            what: "log record",
            key: record_key(handle).to_string(),
            source,
        };
        let mut packer = RecordPacker::default();
        LogRecord::encode_parts_to(
            &mut packer,
            txn_id,
            &self.deployment,
            account,
            now,
            records,
            &stamps,
        )
        .map_err(encode_failed)?;
        let packed = packer
            .finish()
            .map_err(|e| encode_failed(serde_json::Error::io(e)))?;
        t.state = TxnState::Prepared;
        t.txn_id = Some(txn_id);
        t.record = None;
        t.stamps.clone_from(&stamps);
        tx.raw().put(record_key(handle).as_bytes(), &packed)?;
        tx.put(&pending_key(account, txn_id), &TxnRefDpo { handle })?;
        tx.put(&by_id_key(account, txn_id), &TxnRefDpo { handle })?;
        // Journaled (as every file is before it is written) and kept sealed, as bytes, so
        // that recovery writes exactly these bytes.
        for (path, sealed) in staged {
            let path = path.to_string();
            tx.put(
                &txn_file_key(handle, &path),
                &TxnFileDpo { path: path.clone() },
            )?;
            tx.raw()
                .put(staged_bytes_key(handle, &path).as_bytes(), sealed)?;
        }
        if let Some(k) = &self.idempotency {
            let outcome = records
                .iter()
                .find_map(|r| CommitInfo::of_record(r, Some(txn_id)))
                .map(|i| IdempotentOutcome::from(&i));
            put_idempotency(
                tx,
                account,
                &IdempotencyDpo {
                    key: k.key.clone(),
                    request_hash: k.request_hash.clone(),
                    txn_id: Some(txn_id),
                    created_at_ms: now,
                    outcome,
                },
            )?;
        }
        Ok(Prepare::Done(Prepared {
            txn_id,
            committed_at_ms: now,
            stamps,
        }))
    }
}

/// What entering Prepared made: the id, the commit time and the stamps of the record.
struct Prepared {
    txn_id: u64,
    committed_at_ms: i64,
    stamps: BTreeMap<DatabaseId, Stamp>,
}

/// The staged files as payloads (sharing their bytes).
fn payloads(staged: &[(Path, Bytes)]) -> Vec<(Path, object_store::PutPayload)> {
    staged
        .iter()
        .map(|(path, sealed)| (path.clone(), object_store::PutPayload::from(sealed.clone())))
        .collect()
}

/// Whether `stored` holds exactly the bytes of `payload` (its parts in order).
fn same_bytes(stored: &[u8], payload: &object_store::PutPayload) -> bool {
    let mut rest = stored;
    for part in payload.iter() {
        match rest.split_at_checked(part.len()) {
            Some((head, tail)) if head == part.as_ref() => rest = tail,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// The zstd level a Prepared transaction's record is kept at (fast; the JSON of file
/// lists packs about tenfold even so).
const RECORD_ZSTD_LEVEL: i32 = 1;

/// A record this large or larger is kept zstd-packed; a smaller one as its bytes.
const RECORD_PACK_MIN: usize = 64 * 1024;

/// The first bytes of a zstd frame; a record's own bytes start with `{`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Where a Prepared transaction's record is encoded to: its bytes as they are until they
/// reach [`RECORD_PACK_MIN`], from there on a zstd stream (the bytes so far first).
#[derive(Default)]
enum RecordPacker {
    #[default]
    Empty,
    Plain(Vec<u8>),
    Packing(zstd::Encoder<'static, Vec<u8>>),
}

impl RecordPacker {
    /// The bytes to store: the record's own, or one zstd frame of them.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            RecordPacker::Empty => Ok(Vec::new()),
            RecordPacker::Plain(plain) => Ok(plain),
            RecordPacker::Packing(encoder) => encoder.finish(),
        }
    }
}

impl std::io::Write for RecordPacker {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RecordPacker::Packing(encoder) => encoder.write(buf),
            RecordPacker::Plain(plain) if plain.len() + buf.len() < RECORD_PACK_MIN => {
                plain.extend_from_slice(buf);
                Ok(buf.len())
            }
            RecordPacker::Empty if buf.len() < RECORD_PACK_MIN => {
                *self = RecordPacker::Plain(buf.to_vec());
                Ok(buf.len())
            }
            _ => {
                let mut encoder = zstd::Encoder::new(Vec::new(), RECORD_ZSTD_LEVEL)?;
                if let RecordPacker::Plain(plain) = std::mem::take(self) {
                    encoder.write_all(&plain)?;
                }
                encoder.write_all(buf)?;
                *self = RecordPacker::Packing(encoder);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RecordPacker::Packing(encoder) => encoder.flush(),
            _ => Ok(()),
        }
    }
}

/// The record's bytes from their form beside the row (`txn/rec/<handle>`): as they are, or
/// a zstd frame of them.
fn unpack_record(handle: u64, packed: &[u8]) -> Result<Vec<u8>> {
    if !packed.starts_with(&ZSTD_MAGIC) {
        return Ok(packed.to_vec());
    }
    zstd::decode_all(packed).map_err(|e| Error::BadLogRecord {
        path: record_key(handle).to_string(),
        reason: format!("transaction {handle}: its stored record does not unpack: {e}"),
    })
}

/// Build the indexes of the transaction rows once, for a store written before them
/// ([`TXN_INDEXES`]): pending ids, ids, finished-by-time. A key-space migration step of its
/// own, run when a manager opens the store; the marker makes it a no-op afterwards.
fn index_transactions(tx: &mut tern_meta::MetaTxn<'_>) -> tern_meta::Result<()> {
    if tx
        .get::<TxnIndexesDpo>(&indexes_key())?
        .is_some_and(|i| i.version >= TXN_INDEXES)
    {
        return Ok(());
    }
    for (_, t) in tx.scan_prefix::<TxnDpo>(&txns())? {
        let handle = t.handle;
        if let Some(id) = t.txn_id {
            tx.put(&by_id_key(&t.account, id), &TxnRefDpo { handle })?;
            if matches!(t.state, TxnState::Prepared | TxnState::Committing) {
                tx.put(&pending_key(&t.account, id), &TxnRefDpo { handle })?;
            }
        }
        if t.state.is_final() {
            tx.put(&done_key(t.updated_at_ms, handle), &TxnRefDpo { handle })?;
        }
    }
    tx.put(
        &indexes_key(),
        &TxnIndexesDpo {
            version: TXN_INDEXES,
        },
    )
}

/// The transaction's row, or a new Active one (the first time it stores anything).
fn txn_or_new(
    tx: &mut tern_meta::MetaTxn<'_>,
    id: &Begun,
    instance: u64,
) -> tern_meta::Result<TxnDpo> {
    Ok(tx
        .get::<TxnDpo>(&txn_key(id.handle))?
        .unwrap_or_else(|| TxnDpo {
            handle: id.handle,
            account: id.account.clone(),
            instance,
            state: TxnState::Active,
            started_at_ms: id.started_at_ms,
            updated_at_ms: id.started_at_ms,
            files: Vec::new(),
            locks: Vec::new(),
            txn_id: None,
            record: None,
            stamps: BTreeMap::new(),
        }))
}

/// Release every lock and journaled file of `handle` and enter the final `state`, in the
/// caller's metadata transaction; false (and nothing written) when it is final already.
fn release_in(
    tx: &mut tern_meta::MetaTxn<'_>,
    handle: u64,
    t: &mut TxnDpo,
    state: TxnState,
    now: i64,
) -> tern_meta::Result<bool> {
    if t.state.is_final() {
        return Ok(false);
    }
    for name in &t.locks {
        let key = lock_key(name);
        if tx.get::<LockDpo>(&key)?.is_some_and(|l| l.handle == handle) {
            tx.delete(&key)?;
        }
    }
    // Ranges, not rows read one by one: a commit copying in 100 000 files journaled as
    // many, and a staged metadata file or record can be megabytes.
    tx.delete_prefix(&txn_files(handle))?;
    tx.delete_prefix(&staged_files(handle))?;
    tx.delete_prefix(&staged_bytes(handle))?;
    tx.delete(&record_key(handle))?;
    if let Some(id) = t.txn_id {
        tx.delete(&pending_key(&t.account, id))?;
    }
    tx.put(&done_key(now, handle), &TxnRefDpo { handle })?;
    t.state = state;
    t.locks.clear();
    t.files.clear();
    t.record = None;
    t.stamps.clear();
    t.updated_at_ms = now;
    tx.put(&txn_key(handle), t)?;
    Ok(true)
}

/// The row of `handle` for a state change that ends its log record's life (finishing,
/// releasing: [`release_in`] drops the record): read as a [`TxnHead`], the record skipped
/// unread, so a commit of a large table does not decode its whole file list once more.
fn require_txn(tx: &mut tern_meta::MetaTxn<'_>, handle: u64) -> tern_meta::Result<TxnDpo> {
    tx.get::<TxnHead>(&txn_key(handle))?
        .map(TxnHead::without_record)
        .ok_or_else(|| tern_meta::Error::NotFound {
            what: "transaction",
            name: handle.to_string(),
        })
}

/// `e` and its causes, `: `-separated.
fn error_chain(e: &Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// [`TxnManager::stable_log_id`] inside a metadata transaction, so that a snapshot of the
/// tables and the log position it corresponds to are read at one point: the account's
/// clock, lowered below the first transaction that has an id but may not have stored its
/// log record yet (Prepared), or whose versions may not be visible yet (Committing).
pub fn stable_log_id(
    tx: &mut tern_meta::MetaTxn<'_>,
    account: &AccountId,
) -> tern_meta::Result<u64> {
    let last = last_txn_id(tx, account)?;
    // The first entry of the account's pending index (ids in key order).
    let pending = match tx
        .scan_prefix_limit::<TxnRefDpo>(&pending(account), 1)?
        .pop()
    {
        Some((k, _)) => Some(k.last_u64()?),
        None => None,
    };
    Ok(pending.map_or(last, |id| id.saturating_sub(1).min(last)))
}

/// [`database_seq`] lowered below the first transaction of `database` that has a number
/// but is not visible yet (Prepared or Committing): every transaction of the database
/// numbered at or below it is committed and visible.
pub fn settled_database_seq(
    tx: &mut tern_meta::MetaTxn<'_>,
    account: &AccountId,
    database: &DatabaseId,
) -> tern_meta::Result<u64> {
    let last = database_seq(tx, database)?;
    let mut pending: Option<u64> = None;
    for (_, r) in tx.scan_prefix::<TxnRefDpo>(&self::pending(account))? {
        let seq = tx
            .get::<TxnDpo>(&txn_key(r.handle))?
            .and_then(|t| t.record_stamps().get(database).copied())
            .map(|s| s.seq);
        if let Some(seq) = seq {
            pending = Some(pending.map_or(seq, |p| p.min(seq)));
        }
    }
    Ok(pending.map_or(last, |s| s.saturating_sub(1).min(last)))
}

/// The last transaction sequence number stamped for `database` (0: none yet).
pub fn database_seq(
    tx: &mut tern_meta::MetaTxn<'_>,
    database: &DatabaseId,
) -> tern_meta::Result<u64> {
    Ok(tx
        .get::<LamportDpo>(&db_seq_key(database))?
        .map_or(0, |c| c.last))
}

/// The stamp of each database `records` change: a replicated change keeps its upstream's
/// (and the database's counter follows it), a statement's is asked of the fence and numbered
/// next. `Ok(Err(_))` when the fence refuses.
fn stamp(
    tx: &mut tern_meta::MetaTxn<'_>,
    records: &[ChangeRecord],
    fence: Option<&dyn WriteFence>,
    replicated: Option<&(DatabaseId, Stamp)>,
) -> tern_meta::Result<std::result::Result<BTreeMap<DatabaseId, Stamp>, tern_table::Error>> {
    let databases: BTreeSet<&DatabaseId> = records.iter().map(ChangeRecord::database).collect();
    let mut stamps = BTreeMap::new();
    for db in databases {
        let last = database_seq(tx, db)?;
        let stamp = match replicated {
            Some((d, s)) if d == db => *s,
            _ => {
                let epoch = match fence {
                    Some(f) => match f.check(tx, db)? {
                        Ok(epoch) => epoch,
                        Err(refused) => return Ok(Err(refused)),
                    },
                    None => tx.get_database(db)?.map_or(0, |d| d.epoch),
                };
                Stamp {
                    epoch,
                    seq: last + 1,
                }
            }
        };
        tx.put(
            &db_seq_key(db),
            &LamportDpo {
                last: last.max(stamp.seq),
            },
        )?;
        stamps.insert(db.clone(), stamp);
    }
    Ok(Ok(stamps))
}

/// [`TxnManager::last_txn_id`] inside a metadata transaction.
pub fn last_txn_id(tx: &mut tern_meta::MetaTxn<'_>, account: &AccountId) -> tern_meta::Result<u64> {
    Ok(tx
        .get::<LamportDpo>(&lamport_key(account))?
        .map_or(0, |c| c.last))
}

/// Counts one lock waiter while it lives (a cancelled wait is uncounted too).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn packed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut packer = RecordPacker::default();
        for c in chunks {
            packer.write_all(c).expect("write");
        }
        packer.finish().expect("finish")
    }

    #[test]
    fn a_small_record_is_kept_as_it_is_and_a_large_one_packed() {
        let small = br#"{"format":"tern-txlog","v":1}"#;
        assert_eq!(packed(&[small, b" "]), [&small[..], b" "].concat());
        assert_eq!(unpack_record(1, &packed(&[small])).unwrap(), small);
        // Over the bound, in one write or across many: one zstd frame of the same bytes.
        let big: Vec<u8> = (0..RECORD_PACK_MIN + 10)
            .map(|i| b"{abcdefgh"[i % 9])
            .collect();
        for chunks in [
            vec![&big[..]],
            big.chunks(1000).collect::<Vec<_>>(),
            vec![&big[..10], &big[10..]],
        ] {
            let stored = packed(&chunks);
            assert!(stored.starts_with(&ZSTD_MAGIC), "a zstd frame");
            assert!(stored.len() < big.len() / 10, "packed");
            assert_eq!(unpack_record(1, &stored).unwrap(), big);
        }
        // Just under the bound stays plain.
        let under = &big[..RECORD_PACK_MIN - 1];
        assert_eq!(packed(&[under]), under);
        let bad = [&ZSTD_MAGIC[..], b"not a frame"].concat();
        assert!(matches!(
            unpack_record(7, &bad),
            Err(Error::BadLogRecord { .. })
        ));
    }
}
