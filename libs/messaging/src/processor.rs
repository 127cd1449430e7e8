//! Runs handlers on received messages, a batch at a time, on a pool of concurrent tasks.
//!
//! ```text
//!  Received ──form batch──▶ ReadyForProcessing ──claim (lease)──▶ Processing
//!      handler Ok ──▶ (its Commit + ReadyForCleanup, one transaction)
//!      handler Err ──▶ ReadyForProcessing after a backoff, or Failed (permanent / too many)
//!      lease expired (the worker died) ──▶ claimed again
//! ```
//!
//! A claim carries a token; the completing transaction applies the handler's [`Commit`]
//! only if the message is still Processing under that token. So the metadata effect of a
//! message is applied exactly once even when its handler ran twice (a crash between the
//! handler and the commit, or a lease that expired under a slow handler).
//!
//! [`Commit`]: crate::registry::Commit

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use object_store::ObjectStore;
use tern_storage::layout::DeploymentId;
use tracing::Instrument as _;

use crate::cleanup::CleanupPayload;
use crate::crash::points;
use crate::error::{Error, Result};
use crate::keys::ChannelKeys;
use crate::registry::{Bodies, CLEANUP_TYPE, Commit, CommitFn, HandlerError, RESEND_TYPE};
use crate::service::{Context, Counters};
use crate::state::{InMessage, InState, Orphan, QueueEntry, keys};
use crate::worker::{Worker, WorkerState, WorkerStatus};

/// Runs handlers. See the module docs.
pub struct Processor {
    ctx: Context,
    store: Arc<dyn ObjectStore>,
    bodies: HashMap<DeploymentId, Arc<Bodies>>,
    status: WorkerStatus,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("me", &self.ctx.me)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

type Claimed = (tern_meta::Key, InMessage, u64);

/// A handled message to complete: row key, queue position, claim token, its effect or
/// its failure.
type Completion = (
    tern_meta::Key,
    u64,
    u64,
    Option<CommitFn>,
    Option<HandlerError>,
);

impl Processor {
    /// The processor of this deployment; `store` is its own replication bucket (for body
    /// files).
    pub fn new(ctx: Context, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            ctx,
            store,
            bodies: HashMap::new(),
            status: WorkerStatus::default(),
        }
    }

    fn bodies_of(&mut self, sender: &DeploymentId) -> Arc<Bodies> {
        let ctx = &self.ctx;
        let store = &self.store;
        Arc::clone(self.bodies.entry(sender.clone()).or_insert_with(|| {
            Arc::new(Bodies {
                store: Arc::clone(store),
                keys: Arc::new(ChannelKeys::new(
                    Arc::clone(&ctx.wrap_keys),
                    crate::service::channel_name(sender, &ctx.me),
                    ctx.config.diversifier,
                    Arc::clone(&ctx.clock),
                    Arc::clone(&ctx.random),
                )),
                sender: sender.clone(),
            })
        }))
    }

    /// Moves up to a batch of Received messages to ReadyForProcessing.
    async fn form_batch(&self) -> Result<usize> {
        let limit = self.ctx.config.process_batch;
        self.ctx
            .write("form batch", move |tx| {
                let entries = tx
                    .scan_prefix_limit::<QueueEntry>(&keys::queue(InState::Received), limit)
                    .map_err(Error::meta("scan received"))?;
                let n = entries.len();
                for (k, e) in entries {
                    tx.delete(&k).map_err(Error::meta("dequeue"))?;
                    let rkey = keys::in_message(&e.peer, &e.id);
                    let Some(mut row) = tx
                        .get::<InMessage>(&rkey)
                        .map_err(Error::meta("read message"))?
                    else {
                        continue;
                    };
                    row.state = InState::ReadyForProcessing;
                    tx.put(
                        &keys::queue(InState::ReadyForProcessing).u64(row.queue_seq),
                        &e,
                    )
                    .map_err(Error::meta("queue message"))?;
                    tx.put(&rkey, &row).map_err(Error::meta("update message"))?;
                }
                Ok(n)
            })
            .await
    }

    /// Claims up to a batch: ready messages past their backoff, and Processing ones whose
    /// lease expired.
    async fn claim(&self) -> Result<Vec<Claimed>> {
        let limit = self.ctx.config.process_batch;
        let now = self.ctx.now_ms();
        let lease = ms(self.ctx.config.lease);
        self.ctx
            .write("claim messages", move |tx| {
                let token = tx
                    .next_sequence("msg-claim")
                    .map_err(Error::meta("sequence"))?;
                let mut out = Vec::new();
                let candidates = tx
                    .scan_prefix_limit::<QueueEntry>(
                        &keys::queue(InState::Processing),
                        limit,
                    )
                    .map_err(Error::meta("scan processing"))?
                    .into_iter()
                    .chain(
                        tx.scan_prefix_limit::<QueueEntry>(
                            &keys::queue(InState::ReadyForProcessing),
                            limit * 4,
                        )
                        .map_err(Error::meta("scan ready"))?,
                    )
                    .collect::<Vec<_>>();
                for (k, e) in candidates {
                    if out.len() >= limit {
                        break;
                    }
                    let rkey = keys::in_message(&e.peer, &e.id);
                    let Some(mut row) = tx
                        .get::<InMessage>(&rkey)
                        .map_err(Error::meta("read message"))?
                    else {
                        tx.delete(&k).map_err(Error::meta("dequeue"))?;
                        continue;
                    };
                    let claimable = match row.state {
                        InState::ReadyForProcessing => row.not_before_ms <= now,
                        InState::Processing => row.claim.is_none_or(|(_, until)| until <= now),
                        _ => false,
                    };
                    if !claimable {
                        continue;
                    }
                    if row.state == InState::Processing {
                        tracing::warn!(message = %e.id, "lease expired; claiming the message again");
                    }
                    tx.delete(&k).map_err(Error::meta("dequeue"))?;
                    row.state = InState::Processing;
                    row.attempts += 1;
                    row.claim = Some((token, now + lease));
                    tx.put(&keys::queue(InState::Processing).u64(row.queue_seq), &e)
                        .map_err(Error::meta("queue message"))?;
                    tx.put(&rkey, &row).map_err(Error::meta("claim message"))?;
                    out.push((rkey, row, token));
                }
                Ok(out)
            })
            .await
    }

    async fn run_handler(
        ctx: &Context,
        bodies: Arc<Bodies>,
        row: &InMessage,
    ) -> std::result::Result<Commit, HandlerError> {
        let msg = &row.message;
        let span = tracing::info_span!("handle", message = %msg.id, message_type = %msg.message_type, sender = %msg.origin, attempt = row.attempts);
        async {
            if msg.message_type.as_str() == CLEANUP_TYPE {
                let p = CleanupPayload::decode(&msg.payload).map_err(HandlerError::permanent)?;
                let sender = msg.origin.clone();
                let f: CommitFn = Box::new(move |tx| {
                    tx.put(
                        &keys::orphan(&sender, &p.id),
                        &Orphan {
                            bodies: p.bodies,
                            why: "cleanup message".into(),
                        },
                    )
                });
                return Ok(Commit(Some(f), None));
            }
            if msg.message_type.as_str() == RESEND_TYPE {
                return crate::resync::resend(ctx, msg);
            }
            let h = ctx
                .registry
                .get(&msg.message_type)
                .ok_or_else(|| HandlerError::permanent("message type no longer registered"))?;
            h.handle(msg, &bodies).await
        }
        .instrument(span)
        .await
    }

    /// One batch: form, claim, handle, commit. Returns how many messages were handled.
    pub async fn process_batch(&mut self) -> Result<usize> {
        let formed = self.form_batch().await?;
        if formed > 0 {
            self.ctx.crash.hit(points::BATCH_FORMED)?;
        }
        let claimed = self.claim().await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        self.ctx.crash.hit(points::CLAIMED)?;
        let jobs: Vec<(Claimed, Arc<Bodies>)> = claimed
            .into_iter()
            .map(|c| {
                let b = self.bodies_of(&c.1.message.origin);
                (c, b)
            })
            .collect();
        let ctx = self.ctx.clone();
        let results: Vec<(Claimed, std::result::Result<Commit, HandlerError>)> =
            futures::stream::iter(jobs)
                .map(|(c, bodies)| {
                    let ctx = ctx.clone();
                    async move {
                        let r = Self::run_handler(&ctx, bodies, &c.1).await;
                        (c, r)
                    }
                })
                .buffer_unordered(self.ctx.config.concurrency)
                .collect()
                .await;
        self.ctx.crash.hit(points::HANDLED)?;
        let n = results.len();
        let mut ok = 0u64;
        let mut failed = 0u64;
        let mut refused = 0u64;
        let mut work: Vec<Completion> = Vec::with_capacity(n);
        let mut afters = Vec::new();
        for ((key, row, token), r) in results {
            match r {
                Ok(commit) => {
                    ok += 1;
                    afters.extend(commit.1);
                    work.push((key, row.queue_seq, token, commit.0, None));
                }
                Err(e) if e.refused => {
                    refused += 1;
                    tracing::warn!(message = %row.message.id, from = %row.message.origin, reason = %e, "message refused by its handler; cleaned up");
                    work.push((key, row.queue_seq, token, None, Some(e)));
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(message = %row.message.id, attempt = row.attempts, error = %e, "handler failed");
                    work.push((key, row.queue_seq, token, None, Some(e)));
                }
            }
        }
        let now = self.ctx.now_ms();
        let max_attempts = self.ctx.config.max_attempts;
        let backoff = ms(self.ctx.config.retry_backoff);
        self.ctx
            .write("complete messages", move |tx| {
                for (rkey, qseq, token, commit, err) in work.iter_mut() {
                    let Some(mut row) = tx
                        .get::<InMessage>(rkey)
                        .map_err(Error::meta("read message"))?
                    else {
                        continue;
                    };
                    if row.state != InState::Processing || row.claim.map(|c| c.0) != Some(*token) {
                        // The lease expired and someone else has it now.
                        continue;
                    }
                    let entry: Option<QueueEntry> = tx
                        .get(&keys::queue(InState::Processing).u64(*qseq))
                        .map_err(Error::meta("read queue"))?;
                    tx.delete(&keys::queue(InState::Processing).u64(*qseq))
                        .map_err(Error::meta("dequeue"))?;
                    let entry = entry.unwrap_or(QueueEntry {
                        peer: row.message.origin.clone(),
                        id: row.message.id.clone(),
                    });
                    row.claim = None;
                    match err {
                        None => {
                            if let Some(f) = commit.as_mut() {
                                f(tx).map_err(Error::meta("apply handler effect"))?;
                            }
                            row.state = InState::ReadyForCleanup;
                            row.last_error = None;
                        }
                        Some(e) if e.refused => {
                            // Refused for good: cleaned up, never kept as Failed.
                            row.last_error = Some(e.reason.clone());
                            row.state = InState::ReadyForCleanup;
                        }
                        Some(e) => {
                            row.last_error = Some(e.reason.clone());
                            if e.permanent || row.attempts >= max_attempts {
                                row.state = InState::Failed;
                                row.failed_at_ms = Some(now);
                            } else {
                                row.state = InState::ReadyForProcessing;
                                let exp = row.attempts.saturating_sub(1).min(16);
                                row.not_before_ms = now + backoff.saturating_mul(1i64 << exp);
                            }
                        }
                    }
                    tx.put(&keys::queue(row.state).u64(*qseq), &entry)
                        .map_err(Error::meta("queue message"))?;
                    tx.put(rkey, &row)
                        .map_err(Error::meta("complete message"))?;
                }
                Ok(())
            })
            .await?;
        self.ctx.crash.hit(points::COMMITTED)?;
        for after in afters {
            after();
        }
        let c = &self.ctx.counters;
        Counters::add(&c.handled, ok);
        Counters::add(&c.handler_failures, failed);
        Counters::add(&c.refused, refused);
        if ok + refused > 0 {
            self.ctx.cleaner_wake.notify_one();
        }
        Ok(n)
    }
}

#[async_trait]
impl Worker for Processor {
    fn name(&self) -> String {
        format!("processor {}", self.ctx.me)
    }

    async fn work(&mut self) -> Result<WorkerState> {
        let result = self.process_batch().await;
        self.status.record(result)
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            () = self.ctx.processor_wake.notified() => {}
            () = tokio::time::sleep(self.ctx.config.poll_interval) => {}
        }
    }

    fn status(&self) -> WorkerStatus {
        let c = &self.ctx.counters;
        WorkerStatus {
            figures: vec![
                ("handled", Counters::get(&c.handled)),
                ("handler_failures", Counters::get(&c.handler_failures)),
                ("refused", Counters::get(&c.refused)),
            ],
            ..self.status.clone()
        }
    }
}
