//! Log pruning: the transaction log stops growing with history.
//!
//! Every committed transaction leaves a record under `acct/<account>/txlog/`. Its readers
//! are the shipper (each subscribed downstream replica reads the records after its
//! cursor), recovery (which rewrites a Prepared transaction's record from the copy in its
//! metadata row, never from the volume) and the status lookup of a transaction id. The
//! control worker, every `log_prune_interval`, deletes a record when all of these hold:
//!
//! 1. it is older than `log_retention` (`0s`: the log is kept for ever). How old records
//!    are is known without reading them: each pass notes the account's stable log id with
//!    the time ([`tern_txn::TxnManager::log_stored_before`]), so "stored before now −
//!    retention" is the id noted by the newest pass at least a retention ago;
//! 2. every subscribed downstream replica of every database of the account has a cursor
//!    at or past it (refresh-only replicas read no log);
//! 3. no unfinished transaction needs it: it is at or below the stable log id (below the
//!    first Prepared or Committing transaction).
//!
//! A replica that is down keeps the log for it — for at most the retention. Once its
//! cursor is older than that (it still needs a record older than the retention), it is
//! marked `refresh needed` instead: nothing more is shipped to it, it is sent a
//! `tern.repl.refresh_needed` notice (through the outbox, in the same metadata transaction
//! as the mark, so a crash loses neither), and it no longer holds the log back. When it
//! comes back it reads the notice, asks for a refresh, and the snapshot brings it up to
//! date and resets its cursor: nothing is lost, and the log never holds more than about a
//! retention (plus what the live replicas have not received yet).
//!
//! ```text
//!  pass (per account):  aged = stable id noted ≥ retention ago
//!     downstream cursor < aged ─▶ refresh needed (+ notice)     ─┐
//!     bound = min(aged, cursors of the others, stable id)        │ shipper skips it;
//!     watermark := bound  ─▶ delete records ≤ bound, in batches   │ its refresh resets it
//! ```
//!
//! The watermark (`txn/logpruned/<account>`) is raised before anything is deleted: a
//! reader that misses a record at or below it knows it was pruned — the shipper asks the
//! replica for a refresh (never skips silently), a status lookup answers "committed (log
//! record pruned)".

use std::sync::atomic::Ordering;

use tern_meta::Key;
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};

use crate::error::Result;
use crate::model::{PAYLOAD_VERSION, REFRESH_NEEDED_TYPE, RefreshNeeded};
use crate::service::Replication;
use crate::state::{self, DownstreamDpo, keys};

/// Batches of deletions per account per pass (the next pass goes on).
const MAX_BATCHES: usize = 64;

/// What one pruning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Log records deleted.
    pub deleted: usize,
    /// Downstream replicas (local database, peer) marked to need a refresh: their log
    /// was older than the retention.
    pub refresh_needed: Vec<(DatabaseId, DeploymentId)>,
}

impl Replication {
    /// [`Replication::prune_log`] when `log_prune_interval` has passed since the last pass
    /// (control worker); records deleted.
    pub(crate) async fn prune_log_if_due(&self) -> Result<usize> {
        let c = self.config();
        if c.log_retention.is_zero() {
            return Ok(0);
        }
        let now = self.now();
        let every = i64::try_from(c.log_prune_interval.as_millis()).unwrap_or(i64::MAX);
        let last = self.inner.last_prune_ms.load(Ordering::Relaxed);
        if last != 0 && now - last < every {
            return Ok(0);
        }
        self.inner.last_prune_ms.store(now, Ordering::Relaxed);
        Ok(self.prune_log().await?.deleted)
    }

    /// One pruning pass over every account (see the [module docs](self)).
    #[tracing::instrument(level = "debug", skip(self), fields(deployment = %self.me()))]
    pub async fn prune_log(&self) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let retention = self.config().log_retention;
        if retention.is_zero() {
            return Ok(report);
        }
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let accounts: Vec<AccountId> = self
            .meta()
            .read(|tx| tx.list_accounts())?
            .into_iter()
            .map(|a| a.name)
            .collect();
        let txn = &self.inner.p.txn;
        let batch = self.config().log_prune_batch;
        for account in accounts {
            let aged = txn.log_stored_before(&account, self.now().saturating_sub(retention_ms))?;
            let downs = self.downstreams_of_account(&account)?;
            let mut bound = aged;
            for (dk, d) in downs {
                if !d.subscribed || d.refresh_needed_since_ms.is_some() {
                    continue;
                }
                if d.cursor < aged {
                    // Down (or stuck) for longer than the retention: refreshed instead.
                    if self.mark_refresh_needed(&dk, aged)? {
                        report.refresh_needed.push((d.database, d.peer));
                    }
                    continue;
                }
                bound = bound.min(d.cursor);
            }
            if bound == 0 {
                continue;
            }
            for _ in 0..MAX_BATCHES {
                let n = txn.prune_log(&account, bound, batch).await?;
                report.deleted += n;
                if n < batch {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Every downstream replica of `account`'s databases.
    fn downstreams_of_account(&self, account: &AccountId) -> Result<Vec<(Key, DownstreamDpo)>> {
        Ok(self.meta().read(|tx| {
            let mut out = Vec::new();
            for db in tx.list_databases(account)? {
                out.extend(tx.scan_prefix::<DownstreamDpo>(&keys::downstreams_of(&db.id))?);
            }
            Ok(out)
        })?)
    }

    /// Marks downstream `dk` to need a refresh because the log after its cursor is pruned
    /// (or about to be) up to `pruned_up_to`, and queues the notice to its replica, in one
    /// metadata transaction. Whether it was marked now (not already, and still behind).
    pub(crate) fn mark_refresh_needed(&self, dk: &Key, pruned_up_to: u64) -> Result<bool> {
        let now = self.now();
        let marked = self.meta().write(|tx| {
            let Some(mut d) = tx.get::<DownstreamDpo>(dk)? else {
                return Ok(false);
            };
            if !d.subscribed || d.refresh_needed_since_ms.is_some() || d.cursor >= pruned_up_to
            {
                return Ok(false);
            }
            d.refresh_needed_since_ms = Some(now);
            d.last_error = Some(format!(
                "needs a refresh: the log after record {} is pruned up to {pruned_up_to} (behind by more than the log retention)",
                d.cursor
            ));
            let id = format!(
                "rn-{}-{}-{}",
                d.database,
                d.peer,
                tx.next_sequence("repl-refresh-needed")?
            );
            state::put_outbox(
                tx,
                &d.peer,
                id,
                REFRESH_NEEDED_TYPE,
                &RefreshNeeded {
                    v: PAYLOAD_VERSION,
                    group: d.group.clone(),
                    cursor: d.cursor,
                    pruned_up_to,
                },
            )?;
            tx.put(dk, &d)?;
            Ok(true)
        })?;
        if marked {
            tracing::warn!(downstream = %dk, pruned_up_to, "a downstream replica fell behind the log retention: asked to refresh");
            self.inner.control_wake.notify_one();
        }
        Ok(marked)
    }
}
