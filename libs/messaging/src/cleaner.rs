//! Deletes what the receiver no longer needs: body files of handled messages, message
//! files whose messages are all handled, orphan body files, then the rows.
//!
//! ```text
//!  ReadyForCleanup ──delete bodies──▶ (rows removed, id remembered as seen,
//!                                      file's live count − 1; at 0 the file is queued)
//!  queued message file ──delete object──▶ record removed
//!  orphan (cleanup message / rejected upload) ──delete bodies unless a live message
//!                                               owns the id──▶ record removed
//! ```
//!
//! Every object deletion comes before the row that names it is removed and is idempotent,
//! so a crash between the two only repeats a deletion. Only this deployment's own
//! replication bucket is touched (the sender cannot delete: it is write-only there).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use object_store::ObjectStore;
use object_store::path::Path;
use tern_storage::StoreExt as _;
use tern_storage::layout::{self, DeploymentId, MessageId};

use crate::crash::points;
use crate::error::{Error, Result};
use crate::service::{Context, Counters};
use crate::state::{
    InMessage, InState, Orphan, QueueEntry, ReceivedFile, Rejection, RejectionOrder,
    RejectionsIndexed, Seen, SeenAt, SeenIndexed, keys,
};
use crate::worker::{Worker, WorkerState, WorkerStatus};

/// Deletes handled messages' files and rows. See the module docs.
pub struct Cleaner {
    ctx: Context,
    store: Arc<dyn ObjectStore>,
    last_prune_ms: Option<i64>,
    status: WorkerStatus,
}

impl std::fmt::Debug for Cleaner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleaner")
            .field("me", &self.ctx.me)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Cleaner {
    /// The cleaner of this deployment's replication bucket `store`.
    pub fn new(ctx: Context, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            ctx,
            store,
            last_prune_ms: None,
            status: WorkerStatus::default(),
        }
    }

    async fn delete_all(&self, paths: Vec<Path>) -> Result<()> {
        let n = paths.len() as u64;
        let results: Vec<tern_storage::Result<()>> = futures::stream::iter(paths)
            .map(|p| {
                let store = Arc::clone(&self.store);
                async move { store.delete_idempotent(&p).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r.map_err(Error::storage("delete"))?;
        }
        Counters::add(&self.ctx.counters.objects_deleted, n);
        Ok(())
    }

    /// Cleans up to a batch of handled messages; returns how many.
    async fn clean_messages(&self) -> Result<usize> {
        let limit = self.ctx.config.clean_batch;
        let rows: Vec<(tern_meta::Key, QueueEntry, Option<InMessage>)> = self
            .ctx
            .read("scan cleanup queue", move |tx| {
                let mut out = Vec::new();
                for (k, e) in tx
                    .scan_prefix_limit::<QueueEntry>(&keys::queue(InState::ReadyForCleanup), limit)
                    .map_err(Error::meta("scan cleanup"))?
                {
                    let row = tx
                        .get::<InMessage>(&keys::in_message(&e.peer, &e.id))
                        .map_err(Error::meta("read message"))?;
                    out.push((k, e, row));
                }
                Ok(out)
            })
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut paths = Vec::new();
        for (_, e, row) in &rows {
            if let Some(row) = row.as_ref().filter(|r| r.state == InState::ReadyForCleanup) {
                for b in &row.message.bodies {
                    paths.push(layout::replication::body(&e.peer, &e.id, b.n));
                }
            }
        }
        self.delete_all(paths).await?;
        self.ctx.crash.hit(points::BODIES_DELETED)?;
        let now = self.ctx.now_ms();
        let n = rows.len();
        self.ctx
            .write("remove cleaned messages", move |tx| {
                for (k, e, _) in &rows {
                    tx.delete(k).map_err(Error::meta("dequeue"))?;
                    let rkey = keys::in_message(&e.peer, &e.id);
                    let Some(row) = tx
                        .get::<InMessage>(&rkey)
                        .map_err(Error::meta("read message"))?
                    else {
                        continue;
                    };
                    if row.state != InState::ReadyForCleanup {
                        continue;
                    }
                    tx.delete(&rkey).map_err(Error::meta("remove message"))?;
                    tx.put(
                        &keys::seen(&e.peer, &e.id),
                        &Seen {
                            digest: row.digest.clone(),
                            at_ms: now,
                        },
                    )
                    .map_err(Error::meta("remember message"))?;
                    tx.put(
                        &keys::seen_at(now, &e.peer, &e.id),
                        &SeenAt {
                            peer: e.peer.clone(),
                            id: e.id.clone(),
                        },
                    )
                    .map_err(Error::meta("index seen message"))?;
                    let fkey = keys::file(&e.peer, row.file_seq);
                    if let Some(mut f) = tx
                        .get::<ReceivedFile>(&fkey)
                        .map_err(Error::meta("read file"))?
                    {
                        f.live = f.live.saturating_sub(1);
                        if f.live == 0 {
                            tx.delete(&fkey).map_err(Error::meta("remove file"))?;
                            tx.put(&keys::file_delete(&e.peer, row.file_seq), e)
                                .map_err(Error::meta("queue file delete"))?;
                        } else {
                            tx.put(&fkey, &f).map_err(Error::meta("update file"))?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
        self.ctx.crash.hit(points::ROWS_REMOVED)?;
        Counters::add(&self.ctx.counters.cleaned, n as u64);
        Ok(n)
    }

    /// Deletes message files whose messages are all gone; returns how many.
    async fn clean_files(&self) -> Result<usize> {
        let limit = self.ctx.config.clean_batch;
        let queued: Vec<tern_meta::Key> = self
            .ctx
            .read("scan file deletes", move |tx| {
                Ok(tx
                    .scan_prefix_limit::<QueueEntry>(&keys::file_deletes(), limit)
                    .map_err(Error::meta("scan file deletes"))?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect())
            })
            .await?;
        if queued.is_empty() {
            return Ok(0);
        }
        let mut paths = Vec::new();
        for k in &queued {
            let el = k.elements().map_err(Error::meta("parse key"))?;
            if let (Some(tern_meta::Element::Str(peer)), Some(tern_meta::Element::U64(seq))) =
                (el.get(2), el.get(3))
            {
                let peer = DeploymentId::new(peer.as_str()).map_err(|e| Error::Invalid {
                    what: "deployment id",
                    reason: e.to_string(),
                })?;
                paths.push(layout::replication::msg(&peer, *seq));
            }
        }
        self.delete_all(paths).await?;
        self.ctx.crash.hit(points::FILE_DELETED)?;
        let n = queued.len();
        self.ctx
            .write("remove file records", move |tx| {
                for k in &queued {
                    tx.delete(k).map_err(Error::meta("remove file record"))?;
                }
                Ok(())
            })
            .await?;
        Ok(n)
    }

    /// Deletes orphan body files (unless a live message owns the id); returns how many
    /// records were handled.
    async fn clean_orphans(&self) -> Result<usize> {
        let limit = self.ctx.config.clean_batch;
        let orphans: Vec<(tern_meta::Key, Orphan, bool)> = self
            .ctx
            .read("scan orphans", move |tx| {
                let mut out = Vec::new();
                for (k, o) in tx
                    .scan_prefix_limit::<Orphan>(&keys::orphans(), limit)
                    .map_err(Error::meta("scan orphans"))?
                {
                    let owned = match orphan_target(&k) {
                        Some((peer, id)) => tx
                            .contains(&keys::in_message(&peer, &id))
                            .map_err(Error::meta("read message"))?,
                        None => true,
                    };
                    out.push((k, o, owned));
                }
                Ok(out)
            })
            .await?;
        if orphans.is_empty() {
            return Ok(0);
        }
        let mut paths = Vec::new();
        for (k, o, owned) in &orphans {
            if let (Some((peer, id)), false) = (orphan_target(k), owned) {
                for n in 0..o.bodies {
                    paths.push(layout::replication::body(&peer, &id, n));
                }
            }
        }
        self.delete_all(paths).await?;
        let n = orphans.len();
        self.ctx
            .write("remove orphan records", move |tx| {
                for (k, _, _) in &orphans {
                    tx.delete(k).map_err(Error::meta("remove orphan"))?;
                }
                Ok(())
            })
            .await?;
        Ok(n)
    }

    /// Forgets seen ids older than the retention: through their age index, a batch per
    /// transaction, reading only what is due (not every id in one transaction). Ids
    /// remembered before the index existed are indexed first, once.
    async fn prune_seen(&self) -> Result<usize> {
        self.index_old_seen().await?;
        let cutoff = self.ctx.now_ms() - ms(self.ctx.config.seen_retention);
        let batch = self.ctx.config.clean_batch.max(1);
        let mut pruned = 0;
        loop {
            let n = self
                .ctx
                .write("prune seen ids", move |tx| {
                    let mut n = 0;
                    for (k, e) in tx
                        .scan_prefix_limit::<SeenAt>(&keys::seen_by_age(), batch)
                        .map_err(Error::meta("scan seen ages"))?
                    {
                        let at = match k.elements().ok().and_then(|el| el.get(2).cloned()) {
                            Some(tern_meta::Element::U64(at)) => at,
                            _ => 0,
                        };
                        if i64::try_from(at).unwrap_or(i64::MAX) >= cutoff {
                            break;
                        }
                        let sk = keys::seen(&e.peer, &e.id);
                        // A newer sighting of the same id has its own, later entry.
                        let current = tx
                            .get::<Seen>(&sk)
                            .map_err(Error::meta("read seen"))?
                            .is_some_and(|s| u64::try_from(s.at_ms).unwrap_or(0) == at);
                        if current {
                            tx.delete(&sk).map_err(Error::meta("prune seen"))?;
                        }
                        tx.delete(&k).map_err(Error::meta("prune seen age"))?;
                        n += 1;
                    }
                    Ok(n)
                })
                .await?;
            pruned += n;
            if n < batch {
                return Ok(pruned);
            }
        }
    }

    /// Forgets recorded rejections older than the retention: through their order index
    /// (oldest first), a batch per transaction, stopping at the first one still kept.
    /// Rejections recorded before the index existed are indexed first, once.
    async fn prune_rejections(&self) -> Result<usize> {
        self.index_old_rejections().await?;
        let cutoff = self.ctx.now_ms() - ms(self.ctx.config.rejection_retention);
        let batch = self.ctx.config.clean_batch.max(1);
        let mut pruned = 0;
        loop {
            let (n, done) = self
                .ctx
                .write("prune rejections", move |tx| {
                    let mut n = 0;
                    let entries = tx
                        .scan_prefix_limit::<RejectionOrder>(&keys::rejections_in_order(), batch)
                        .map_err(Error::meta("scan rejection order"))?;
                    let full = entries.len() == batch;
                    for (k, e) in entries {
                        let seq = match k.elements().ok().and_then(|el| el.last().cloned()) {
                            Some(tern_meta::Element::U64(seq)) => seq,
                            _ => 0,
                        };
                        let rk = keys::rejection(&e.sender, seq);
                        match tx
                            .get::<Rejection>(&rk)
                            .map_err(Error::meta("read rejection"))?
                        {
                            Some(r) if r.at_ms >= cutoff => return Ok((n, true)),
                            Some(_) => tx.delete(&rk).map_err(Error::meta("prune rejection"))?,
                            None => {}
                        }
                        tx.delete(&k)
                            .map_err(Error::meta("prune rejection order"))?;
                        n += 1;
                    }
                    Ok((n, !full))
                })
                .await?;
            pruned += n;
            if done {
                return Ok(pruned);
            }
        }
    }

    /// Puts the rejections recorded before the order index existed into it (once).
    async fn index_old_rejections(&self) -> Result<()> {
        self.ctx
            .write("index rejections", move |tx| {
                if tx
                    .contains(&keys::rejections_indexed())
                    .map_err(Error::meta("read rejections index mark"))?
                {
                    return Ok(());
                }
                for (k, r) in tx
                    .scan_prefix::<Rejection>(&keys::rejections())
                    .map_err(Error::meta("scan rejections"))?
                {
                    if let Some(tern_meta::Element::U64(seq)) =
                        k.elements().ok().and_then(|el| el.last().cloned())
                    {
                        tx.put(
                            &keys::rejection_order(seq),
                            &RejectionOrder { sender: r.sender },
                        )
                        .map_err(Error::meta("index rejection"))?;
                    }
                }
                tx.put(&keys::rejections_indexed(), &RejectionsIndexed { v: 1 })
                    .map_err(Error::meta("mark rejections index"))
            })
            .await
    }

    /// Puts the seen ids remembered before the age index existed into it (once).
    async fn index_old_seen(&self) -> Result<()> {
        self.ctx
            .write("index seen ids", move |tx| {
                if tx
                    .contains(&keys::seen_indexed())
                    .map_err(Error::meta("read seen index mark"))?
                {
                    return Ok(());
                }
                for (k, s) in tx
                    .scan_prefix::<Seen>(&keys::seen_all())
                    .map_err(Error::meta("scan seen"))?
                {
                    let Some((peer, id)) = orphan_target(&k) else {
                        continue;
                    };
                    tx.put(&keys::seen_at(s.at_ms, &peer, &id), &SeenAt { peer, id })
                        .map_err(Error::meta("index seen message"))?;
                }
                tx.put(&keys::seen_indexed(), &SeenIndexed { v: 1 })
                    .map_err(Error::meta("mark seen index"))
            })
            .await
    }

    /// One unit: messages, files, orphans. Returns how many things it cleaned.
    pub async fn clean(&mut self) -> Result<usize> {
        let now = self.ctx.now_ms();
        if self
            .last_prune_ms
            .is_none_or(|t| now - t >= ms(self.ctx.config.discovery_interval))
        {
            self.last_prune_ms = Some(now);
            self.prune_seen().await?;
            self.prune_rejections().await?;
            self.ctx.expire_failed(self.ctx.config.clean_batch).await?;
        }
        let a = self.clean_messages().await?;
        let b = self.clean_files().await?;
        let c = self.clean_orphans().await?;
        Ok(a + b + c)
    }
}

fn orphan_target(k: &tern_meta::Key) -> Option<(DeploymentId, MessageId)> {
    let el = k.elements().ok()?;
    match (el.get(2), el.get(3)) {
        (Some(tern_meta::Element::Str(p)), Some(tern_meta::Element::Str(i))) => Some((
            DeploymentId::new(p.as_str()).ok()?,
            MessageId::new(i.as_str()).ok()?,
        )),
        _ => None,
    }
}

#[async_trait]
impl Worker for Cleaner {
    fn name(&self) -> String {
        format!("cleaner {}", self.ctx.me)
    }

    async fn work(&mut self) -> Result<WorkerState> {
        let result = self.clean().await;
        self.status.record(result)
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            () = self.ctx.cleaner_wake.notified() => {}
            () = tokio::time::sleep(self.ctx.config.poll_interval) => {}
        }
    }

    fn status(&self) -> WorkerStatus {
        let c = &self.ctx.counters;
        WorkerStatus {
            figures: vec![
                ("cleaned", Counters::get(&c.cleaned)),
                ("objects_deleted", Counters::get(&c.objects_deleted)),
            ],
            ..self.status.clone()
        }
    }
}
