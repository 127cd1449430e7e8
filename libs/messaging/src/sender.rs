//! The sending side of one channel (this deployment → a peer).
//!
//! ```text
//!  create ──▶ Preparing ──mark_ready──▶ ReadyToSend ──claim──▶ Sending ──PUT──▶ Sent ──▶ (pruned)
//!               │  attach_body (upload, then record)
//!               └─ failed / aged out ──▶ cleanup message (ReadyToSend) ; row removed
//! ```
//!
//! # The chain
//!
//! The channel row holds `next_seq` and the diversifier announced for that file. A unit of
//! work **claims** a batch in one transaction: the messages move to Sending and the
//! channel records a *pending file* — its number, its messages, the number and the
//! diversifier it announces. Only then is the file written, with `PutMode::Create`, its
//! DEK wrapped under `HMAC(GMK, announced diversifier)`. A second transaction marks the
//! messages Sent and advances the channel to the pending file's announcement.
//!
//! A crash anywhere leaves either no pending file (nothing was written: the batch is
//! claimed again later) or a pending file whose content is fixed by the metadata: the next
//! instance writes it again. If the earlier attempt had landed, `Create` answers "already
//! exists", which means exactly that (only this sender writes under `from/<me>/msg/`, and
//! numbers come from the pending record), so the chain continues with no gap and no reused
//! name, and the sender never needs to read (its identity is write-only).
//!
//! When no message is ready but the announced diversifier is older than the current
//! rotation period, an empty file is written to announce a fresh one, so the receiver
//! never sees a diversifier older than about one rotation period.
//!
//! A sender that was down longer than the acceptance window (`max_age`) finds its
//! announced diversifier expired: it then encrypts under the current one instead (a
//! re-key), which the receiver accepts only in that case and only for a later diversifier.
//!
//! Assumes: this sender's metadata (the channel row) is never lost or rolled back; if it
//! were, numbers would be reused and the receiver would stop at the first unexpected file.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::{ObjectStore, PutMode, PutOptions};
use tern_crypto::object::{CopyOptions, put_encrypted, upload_encrypted};
use tern_crypto::{Diversifier, EncryptOptions};
use tern_storage::layout::{self, DeploymentId, MessageId};
use tokio::io::AsyncRead;
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::cleanup::CleanupPayload;
use crate::crash::points;
use crate::error::{Error, Result};
use crate::keys::ChannelKeys;
use crate::message::{BodyRef, GlobalMessage, MessageFile, MessageType};
use crate::registry::CLEANUP_TYPE;
use crate::service::{Context, Counters, channel_name};
use crate::state::{OutChannel, OutMessage, OutState, PendingFile, QueueEntry, keys};
use crate::worker::{Worker, WorkerState, WorkerStatus};

/// A message to create.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Its type (must be registered).
    pub message_type: String,
    /// Its payload (must validate).
    pub payload: Bytes,
    /// An id chosen by the caller (an idempotency key), else one is generated.
    pub id: Option<MessageId>,
}

impl Draft {
    /// A draft with a generated id.
    pub fn new(message_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            message_type: message_type.into(),
            payload: payload.into(),
            id: None,
        }
    }

    /// The same draft with a chosen id.
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = Some(id);
        self
    }
}

/// The sending side of the channel to one peer. See the module docs.
pub struct Sender {
    ctx: Context,
    peer: DeploymentId,
    channel: String,
    store: Arc<dyn ObjectStore>,
    keys: ChannelKeys,
    wake: Arc<Notify>,
    enc: EncryptOptions,
    copy: CopyOptions,
    last_housekeeping_ms: Option<i64>,
    /// When the last file was written (monotonic): files are spaced by `send_linger`.
    last_write: Option<tokio::time::Instant>,
    status: WorkerStatus,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// The sender of the channel to `peer`, writing through `store` (the peer's replication
    /// bucket, typically with a write-only identity for `from/<me>/`). The channel must
    /// have been created ([`Context::create_outbound`]).
    pub fn new(ctx: Context, peer: DeploymentId, store: Arc<dyn ObjectStore>) -> Self {
        let keys = ctx.channel_keys(&ctx.me, &peer);
        let channel = channel_name(&ctx.me, &peer);
        let enc = EncryptOptions::default().with_random(Arc::clone(&ctx.random));
        Self {
            ctx,
            peer,
            channel,
            store,
            keys,
            wake: Arc::new(Notify::new()),
            enc,
            copy: CopyOptions::default(),
            last_housekeeping_ms: None,
            last_write: None,
            status: WorkerStatus::default(),
        }
    }

    /// The same sender with other upload settings (part size, single-put limit) and chunk
    /// size for body files.
    pub fn with_upload_options(mut self, copy: CopyOptions, chunk_size: u32) -> Self {
        self.copy = copy;
        self.enc = self.enc.with_chunk_size(chunk_size);
        self
    }

    /// The same sender waking `wake` instead of its own (so that an instance used for the
    /// API and the instance run as the worker share one wake-up).
    pub fn sharing_waker(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// A handle that wakes this sender's worker (marking a message ready does it).
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The peer.
    pub fn peer(&self) -> &DeploymentId {
        &self.peer
    }

    fn message_from_draft(&self, draft: Draft, id: MessageId) -> Result<GlobalMessage> {
        let msg = GlobalMessage {
            message_type: MessageType::new(draft.message_type)?,
            id,
            origin: self.ctx.me.clone(),
            created_at_ms: self.ctx.now_ms(),
            payload: draft.payload,
            bodies: Vec::new(),
        };
        if crate::registry::is_builtin(msg.message_type.as_str()) {
            return Err(Error::Invalid {
                what: "message type",
                reason: format!("{} is sent by the service itself", msg.message_type),
            });
        }
        if msg.payload.len() > self.ctx.config.max_payload_bytes {
            return Err(Error::Invalid {
                what: "payload",
                reason: format!(
                    "{} bytes, more than max_payload_bytes ({}): put the data in body files",
                    msg.payload.len(),
                    self.ctx.config.max_payload_bytes
                ),
            });
        }
        self.ctx.registry.check(&msg)?;
        Ok(msg)
    }

    fn new_id(&self) -> Result<MessageId> {
        let mut r = [0u8; 8];
        self.ctx
            .random
            .fill(&mut r)
            .map_err(Error::crypto("message id"))?;
        let ms = self.ctx.now_ms();
        MessageId::new(format!("{}-{ms:x}-{}", self.ctx.me, crate::state::hex(&r))).map_err(|e| {
            Error::Invalid {
                what: "message id",
                reason: e.to_string(),
            }
        })
    }

    /// Creates a message in Preparing (persisted). Attach bodies, then [`Self::mark_ready`].
    pub async fn create(&self, draft: Draft) -> Result<MessageId> {
        let ids = self.insert(vec![draft], false).await?;
        ids.into_iter().next().ok_or_else(|| Error::Invalid {
            what: "create",
            reason: "no id returned".into(),
        })
    }

    /// Creates a message without bodies and marks it ready, in one transaction.
    pub async fn send(&self, draft: Draft) -> Result<MessageId> {
        let ids = self.send_batch(vec![draft]).await?;
        ids.into_iter().next().ok_or_else(|| Error::Invalid {
            what: "send",
            reason: "no id returned".into(),
        })
    }

    /// Creates messages without bodies and marks them ready, all in one transaction (all
    /// or none): one metadata commit for many messages.
    pub async fn send_batch(&self, drafts: Vec<Draft>) -> Result<Vec<MessageId>> {
        let ids = self.insert(drafts, true).await?;
        self.wake.notify_one();
        Ok(ids)
    }

    async fn insert(&self, drafts: Vec<Draft>, ready: bool) -> Result<Vec<MessageId>> {
        let mut msgs = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let id = match draft.id.clone() {
                Some(id) => id,
                None => self.new_id()?,
            };
            msgs.push(self.message_from_draft(draft, id)?);
        }
        let ids: Vec<MessageId> = msgs.iter().map(|m| m.id.clone()).collect();
        let me = self.ctx.me.clone();
        let peer = self.peer.clone();
        let channel = self.channel.clone();
        let now = self.ctx.now_ms();
        let span = tracing::debug_span!("create_messages", channel = %self.channel, messages = msgs.len(), first = ?ids.first());
        self.ctx
            .write("create messages", move |tx| {
                if !tx
                    .contains(&keys::out_channel(&peer))
                    .map_err(Error::meta("read channel"))?
                {
                    return Err(Error::UnknownChannel {
                        sender: me.clone(),
                        receiver: peer.clone(),
                    });
                }
                for msg in &msgs {
                    let key = keys::out_message(&peer, &msg.id);
                    if tx.contains(&key).map_err(Error::meta("read message"))? {
                        return Err(Error::DuplicateMessage {
                            channel: channel.clone(),
                            id: msg.id.clone(),
                        });
                    }
                    let state = if ready {
                        enqueue_ready(tx, &peer, &msg.id)?;
                        OutState::ReadyToSend
                    } else {
                        let entry = QueueEntry {
                            peer: peer.clone(),
                            id: msg.id.clone(),
                        };
                        tx.put(&keys::preparing_entry(&peer, &msg.id), &entry)
                            .map_err(Error::meta("index message"))?;
                        OutState::Preparing
                    };
                    let row = OutMessage {
                        message: msg.clone(),
                        state,
                        bodies_started: 0,
                        file_seq: None,
                        ready_at_ms: ready.then_some(now),
                        sent_at_ms: None,
                    };
                    tx.put(&key, &row).map_err(Error::meta("create message"))?;
                }
                Ok(())
            })
            .instrument(span)
            .await?;
        self.ctx.crash.hit(points::CREATED)?;
        Ok(ids)
    }

    /// Uploads the next body file of a Preparing message from `reader` (streamed, multipart
    /// when large), encrypted with its own DEK. If the upload fails the message is
    /// abandoned (a cleanup message removes whatever reached the bucket) and the error is
    /// returned.
    pub async fn attach_body<R>(&self, id: &MessageId, reader: &mut R) -> Result<BodyRef>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
    {
        let (n, diversifier) = self.start_body(id).await?;
        let path = layout::replication::body(&self.ctx.me, id, n);
        let keys = self.keys.pinned(diversifier);
        let span = tracing::debug_span!("attach_body", channel = %self.channel, message = %id, n);
        let uploaded = upload_encrypted(&self.store, &path, &keys, reader, &self.enc, &self.copy)
            .instrument(span)
            .await;
        let len = match uploaded {
            Ok(len) => len,
            Err(e) => {
                tracing::warn!(channel = %self.channel, message = %id, n, error = %e, "body upload failed; abandoning the message");
                if let Err(abandon) = self.abandon(id).await {
                    tracing::warn!(channel = %self.channel, message = %id, error = %abandon, "could not abandon; it will age out");
                }
                return Err(Error::crypto("upload body file")(e));
            }
        };
        self.ctx.crash.hit(points::BODY_UPLOADED)?;
        let body = BodyRef {
            n,
            len,
            diversifier,
        };
        let peer = self.peer.clone();
        let channel = self.channel.clone();
        let id2 = id.clone();
        self.ctx
            .write("record body file", move |tx| {
                let key = keys::out_message(&peer, &id2);
                let mut row = load_preparing(tx, &key, &channel, &id2, "attach a body")?;
                if row.message.bodies.len() != n as usize {
                    return Err(Error::Body {
                        id: id2.clone(),
                        n,
                        reason: "an earlier body upload of this message did not complete".into(),
                    });
                }
                row.message.bodies.push(body);
                tx.put(&key, &row).map_err(Error::meta("record body"))
            })
            .await?;
        Ok(body)
    }

    /// [`Self::attach_body`] from memory.
    pub async fn attach_body_bytes(&self, id: &MessageId, data: &[u8]) -> Result<BodyRef> {
        let mut reader = data;
        self.attach_body(id, &mut reader).await
    }

    /// Reserves the next body index and picks the diversifier (the one announced for the
    /// channel's next file).
    async fn start_body(&self, id: &MessageId) -> Result<(u32, Diversifier)> {
        let me = self.ctx.me.clone();
        let peer = self.peer.clone();
        let channel = self.channel.clone();
        let id = id.clone();
        self.ctx
            .write("start body upload", move |tx| {
                let key = keys::out_message(&peer, &id);
                let mut row = load_preparing(tx, &key, &channel, &id, "attach a body")?;
                let chan: OutChannel = tx
                    .get(&keys::out_channel(&peer))
                    .map_err(Error::meta("read channel"))?
                    .ok_or_else(|| Error::UnknownChannel {
                        sender: me.clone(),
                        receiver: peer.clone(),
                    })?;
                let n = row.bodies_started;
                row.bodies_started += 1;
                tx.put(&key, &row).map_err(Error::meta("start body"))?;
                Ok((n, chan.next_diversifier))
            })
            .await
            .map(|(n, announced)| (n, self.effective(announced)))
    }

    /// The diversifier to encrypt under: the announced one while it is inside the
    /// acceptance window, else (the sender was down longer than `max_age`) the current
    /// one — a re-key the receiver accepts only in exactly that case.
    fn effective(&self, announced: Diversifier) -> Diversifier {
        let policy = &self.ctx.config.diversifier;
        match policy.check(announced, &*self.ctx.clock) {
            Ok(()) => announced,
            Err(_) => {
                let current = policy.current(&*self.ctx.clock);
                tracing::warn!(channel = %self.channel, %announced, %current, "announced diversifier expired; re-keying under the current one");
                current.max(announced)
            }
        }
    }

    /// Moves a Preparing message to ReadyToSend and wakes the worker.
    pub async fn mark_ready(&self, id: &MessageId) -> Result<()> {
        let peer = self.peer.clone();
        let channel = self.channel.clone();
        let id = id.clone();
        let now = self.ctx.now_ms();
        self.ctx
            .write("mark ready", move |tx| {
                let key = keys::out_message(&peer, &id);
                let mut row = load_preparing(tx, &key, &channel, &id, "mark it ready")?;
                if row.bodies_started as usize != row.message.bodies.len() {
                    return Err(Error::Body {
                        id: id.clone(),
                        n: row.bodies_started.saturating_sub(1),
                        reason: "a body upload did not complete".into(),
                    });
                }
                row.state = OutState::ReadyToSend;
                row.ready_at_ms = Some(now);
                enqueue_ready(tx, &peer, &id)?;
                tx.delete(&keys::preparing_entry(&peer, &id))
                    .map_err(Error::meta("unindex message"))?;
                tx.put(&key, &row).map_err(Error::meta("mark ready"))
            })
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Gives up a Preparing message: its row goes, and if body uploads were started a
    /// cleanup message is queued so the receiver deletes them.
    pub async fn abandon(&self, id: &MessageId) -> Result<()> {
        let cleanup_id = self.new_id()?;
        let queued = abandon_txn(&self.ctx, &self.peer, &self.channel, id, cleanup_id).await?;
        if queued {
            Counters::add(&self.ctx.counters.cleanups_queued, 1);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// A message's sender-side row.
    pub async fn message(&self, id: &MessageId) -> Result<Option<OutMessage>> {
        let key = keys::out_message(&self.peer, id);
        self.ctx
            .read("read message", move |tx| {
                tx.get(&key).map_err(Error::meta("read message"))
            })
            .await
    }

    /// Abandons messages too long in Preparing; prunes Sent rows past retention.
    async fn housekeeping(&mut self) -> Result<()> {
        let now = self.ctx.now_ms();
        let max_age = ms(self.ctx.config.preparing_max_age);
        let peer = self.peer.clone();
        let old: Vec<MessageId> = self
            .ctx
            .read("scan preparing", move |tx| {
                let mut old = Vec::new();
                for (_, e) in tx
                    .scan_prefix::<QueueEntry>(&keys::preparing(&peer))
                    .map_err(Error::meta("scan preparing"))?
                {
                    let row: Option<OutMessage> = tx
                        .get(&keys::out_message(&peer, &e.id))
                        .map_err(Error::meta("read message"))?;
                    if row.is_some_and(|r| now - r.message.created_at_ms > max_age) {
                        old.push(e.id);
                    }
                }
                Ok(old)
            })
            .await?;
        for id in old {
            tracing::info!(channel = %self.channel, message = %id, "message aged out in Preparing; abandoning");
            self.abandon(&id).await?;
        }
        let cutoff = u64::try_from(now - ms(self.ctx.config.sent_retention)).unwrap_or(0);
        let peer = self.peer.clone();
        self.ctx
            .write("prune sent", move |tx| {
                let prefix = keys::sent(&peer);
                for (k, e) in tx
                    .scan_prefix_limit::<QueueEntry>(&prefix, 1000)
                    .map_err(Error::meta("scan sent"))?
                {
                    let at = k
                        .elements()
                        .ok()
                        .and_then(|el| match el.get(3) {
                            Some(tern_meta::Element::U64(n)) => Some(*n),
                            _ => None,
                        })
                        .unwrap_or(0);
                    if at > cutoff {
                        break;
                    }
                    tx.delete(&k).map_err(Error::meta("prune sent"))?;
                    tx.delete(&keys::out_message(&peer, &e.id))
                        .map_err(Error::meta("prune sent"))?;
                }
                Ok(())
            })
            .await
    }

    /// Claims a batch (or a diversifier-rotation file) as the pending file, or returns the
    /// pending file left by an earlier instance.
    async fn claim(&self) -> Result<Option<(OutChannel, PendingFile)>> {
        let me = self.ctx.me.clone();
        let peer = self.peer.clone();
        let max = self.ctx.config.max_batch;
        let max_bytes = self.ctx.config.max_file_bytes;
        let now = self.ctx.now_ms();
        let current = self.ctx.config.diversifier.current(&*self.ctx.clock);
        self.ctx
            .write("claim batch", move |tx| {
                let ckey = keys::out_channel(&peer);
                let mut chan: OutChannel = tx
                    .get(&ckey)
                    .map_err(Error::meta("read channel"))?
                    .ok_or_else(|| Error::UnknownChannel {
                        sender: me.clone(),
                        receiver: peer.clone(),
                    })?;
                if let Some(p) = chan.pending.clone() {
                    return Ok(Some((chan, p)));
                }
                let ready = tx
                    .scan_prefix_limit::<QueueEntry>(&keys::ready_queue(&peer), max)
                    .map_err(Error::meta("scan ready"))?;
                let stale = chan.next_diversifier < current;
                if ready.is_empty() && !stale {
                    return Ok(None);
                }
                let mut ids = Vec::with_capacity(ready.len());
                let mut bytes = 0usize;
                for (k, e) in ready {
                    let mkey = keys::out_message(&peer, &e.id);
                    let Some(mut row) = tx
                        .get::<OutMessage>(&mkey)
                        .map_err(Error::meta("read message"))?
                    else {
                        tx.delete(&k).map_err(Error::meta("dequeue"))?;
                        continue;
                    };
                    bytes += row.message.payload.len();
                    if !ids.is_empty() && bytes > max_bytes {
                        break;
                    }
                    tx.delete(&k).map_err(Error::meta("dequeue"))?;
                    row.state = OutState::Sending;
                    row.file_seq = Some(chan.next_seq);
                    tx.put(&mkey, &row).map_err(Error::meta("claim message"))?;
                    ids.push(e.id);
                }
                let p = PendingFile {
                    seq: chan.next_seq,
                    ids,
                    next_seq: chan.next_seq + 1,
                    next_diversifier: current.max(chan.next_diversifier),
                    claimed_at_ms: now,
                };
                chan.pending = Some(p.clone());
                tx.put(&ckey, &chan)
                    .map_err(Error::meta("record pending file"))?;
                Ok(Some((chan, p)))
            })
            .await
    }

    /// Writes the pending file (again, if an earlier attempt may have landed) and commits.
    async fn write_pending(&self, chan: OutChannel, p: PendingFile) -> Result<()> {
        let peer = self.peer.clone();
        let ids = p.ids.clone();
        let messages: Vec<GlobalMessage> = self
            .ctx
            .read("load batch", move |tx| {
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    let row: OutMessage = tx
                        .get(&keys::out_message(&peer, id))
                        .map_err(Error::meta("read message"))?
                        .ok_or_else(|| Error::UnknownMessage {
                            channel: String::new(),
                            id: id.clone(),
                        })?;
                    out.push(row.message);
                }
                Ok(out)
            })
            .await?;
        let path = layout::replication::msg(&self.ctx.me, p.seq);
        let next = layout::replication::msg(&self.ctx.me, p.next_seq);
        let plain = MessageFile::encode(
            &self.ctx.me,
            &self.peer,
            p.seq,
            next.as_ref(),
            p.next_diversifier,
            &messages,
        )?;
        let keys = self.keys.pinned(self.effective(chan.next_diversifier));
        let span = tracing::info_span!("write_message_file", channel = %self.channel, file = %path, messages = messages.len());
        let put = put_encrypted(
            &*self.store,
            &path,
            &keys,
            &plain,
            &self.enc,
            PutOptions::from(PutMode::Create),
        )
        .instrument(span)
        .await;
        match put {
            Ok(_) => {}
            Err(tern_crypto::Error::Store {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                // Only this channel's pending record names this file: an earlier attempt
                // (inconclusive, or before a crash) wrote it.
                tracing::info!(channel = %self.channel, file = %path, "message file already written by an earlier attempt");
            }
            Err(e) => return Err(Error::crypto("write message file")(e)),
        }
        self.ctx.crash.hit(points::FILE_WRITTEN)?;
        let peer = self.peer.clone();
        let channel = self.channel.clone();
        let now = self.ctx.now_ms();
        let p2 = p.clone();
        self.ctx
            .write("mark sent", move |tx| {
                let ckey = keys::out_channel(&peer);
                let mut chan: OutChannel = tx
                    .get(&ckey)
                    .map_err(Error::meta("read channel"))?
                    .ok_or_else(|| Error::ChainBroken {
                        channel: channel.clone(),
                        reason: "the channel vanished".into(),
                    })?;
                if chan.pending.as_ref() != Some(&p2) {
                    // Another worker of this deployment completed it.
                    return Ok(());
                }
                for id in &p2.ids {
                    let mkey = keys::out_message(&peer, id);
                    if let Some(mut row) = tx
                        .get::<OutMessage>(&mkey)
                        .map_err(Error::meta("read message"))?
                    {
                        row.state = OutState::Sent;
                        row.sent_at_ms = Some(now);
                        tx.put(&mkey, &row).map_err(Error::meta("mark sent"))?;
                        tx.put(
                            &keys::sent(&peer)
                                .u64(u64::try_from(now).unwrap_or(0))
                                .str(id.as_str()),
                            &QueueEntry {
                                peer: peer.clone(),
                                id: id.clone(),
                            },
                        )
                        .map_err(Error::meta("index sent"))?;
                    }
                }
                chan.next_seq = p2.next_seq;
                chan.next_diversifier = p2.next_diversifier;
                chan.pending = None;
                chan.files_written += 1;
                chan.last_file_at_ms = Some(now);
                tx.put(&ckey, &chan).map_err(Error::meta("advance channel"))
            })
            .await?;
        self.ctx.crash.hit(points::MARKED_SENT)?;
        Counters::add(&self.ctx.counters.files_written, 1);
        Counters::add(&self.ctx.counters.messages_sent, p.ids.len() as u64);
        Ok(())
    }
}

/// Append message `id` to the channel's ready queue (in the caller's transaction).
pub(crate) fn enqueue_ready(
    tx: &mut tern_meta::MetaTxn<'_>,
    peer: &DeploymentId,
    id: &MessageId,
) -> Result<()> {
    enqueue_ready_in(tx, peer, id).map_err(Error::meta("queue message"))
}

/// Queues a message of the service's own `message_type` (cleanup, resend) to `peer`,
/// ready to send, in the caller's transaction.
pub(crate) fn queue_service_message(
    tx: &mut tern_meta::MetaTxn<'_>,
    peer: &DeploymentId,
    me: &DeploymentId,
    message_type: &str,
    id: &MessageId,
    payload: Vec<u8>,
    now: i64,
) -> Result<()> {
    let message = GlobalMessage {
        message_type: MessageType::new(message_type)?,
        id: id.clone(),
        origin: me.clone(),
        created_at_ms: now,
        payload: Bytes::from(payload),
        bodies: Vec::new(),
    };
    enqueue_ready(tx, peer, id)?;
    tx.put(
        &keys::out_message(peer, id),
        &OutMessage {
            message,
            state: OutState::ReadyToSend,
            bodies_started: 0,
            file_seq: None,
            ready_at_ms: Some(now),
            sent_at_ms: None,
        },
    )
    .map_err(Error::meta("queue service message"))
}

/// [`enqueue_ready`] for code that runs inside a handler's commit.
pub(crate) fn enqueue_ready_in(
    tx: &mut tern_meta::MetaTxn<'_>,
    peer: &DeploymentId,
    id: &MessageId,
) -> tern_meta::Result<()> {
    let n = tx.next_sequence("msg-ready")?;
    tx.put(
        &keys::ready_queue(peer).u64(n),
        &QueueEntry {
            peer: peer.clone(),
            id: id.clone(),
        },
    )
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn load_preparing(
    tx: &mut tern_meta::MetaTxn<'_>,
    key: &tern_meta::Key,
    channel: &str,
    id: &MessageId,
    action: &'static str,
) -> Result<OutMessage> {
    let row: OutMessage = tx
        .get(key)
        .map_err(Error::meta("read message"))?
        .ok_or_else(|| Error::UnknownMessage {
            channel: channel.to_string(),
            id: id.clone(),
        })?;
    if row.state != OutState::Preparing {
        return Err(Error::WrongState {
            channel: channel.to_string(),
            id: id.clone(),
            state: row.state.name(),
            action,
        });
    }
    Ok(row)
}

/// Removes a Preparing message and, if it may have left body files, queues a cleanup
/// message for them. Returns whether a cleanup message was queued.
async fn abandon_txn(
    ctx: &Context,
    peer: &DeploymentId,
    channel: &str,
    id: &MessageId,
    cleanup_id: MessageId,
) -> Result<bool> {
    let peer = peer.clone();
    let channel = channel.to_string();
    let id = id.clone();
    let me = ctx.me.clone();
    let now = ctx.now_ms();
    ctx.write("abandon message", move |tx| {
        let key = keys::out_message(&peer, &id);
        let row = load_preparing(tx, &key, &channel, &id, "abandon it")?;
        tx.delete(&key).map_err(Error::meta("remove message"))?;
        tx.delete(&keys::preparing_entry(&peer, &id))
            .map_err(Error::meta("unindex message"))?;
        if row.bodies_started == 0 {
            return Ok(false);
        }
        let payload = CleanupPayload::new(id.clone(), row.bodies_started).encode()?;
        queue_service_message(tx, &peer, &me, CLEANUP_TYPE, &cleanup_id, payload, now)?;
        Ok(true)
    })
    .await
}

#[async_trait]
impl Worker for Sender {
    fn name(&self) -> String {
        format!("sender {}", self.channel)
    }

    async fn work(&mut self) -> Result<WorkerState> {
        let result: Result<WorkerState> = async {
            let now = self.ctx.now_ms();
            let due = self
                .last_housekeeping_ms
                .is_none_or(|t| now - t >= ms(self.ctx.config.send_interval));
            if due {
                self.housekeeping().await?;
                self.last_housekeeping_ms = Some(now);
            }
            // Under load, space files by the linger so that each takes what arrived
            // meanwhile (fewer, fuller files; at most `send_linger` of added latency).
            if let Some(last) = self.last_write {
                let since = last.elapsed();
                if since < self.ctx.config.send_linger {
                    tokio::time::sleep(self.ctx.config.send_linger - since).await;
                }
            }
            match self.claim().await? {
                None => Ok(WorkerState::Idle),
                Some((chan, p)) => {
                    self.ctx.crash.hit(points::BATCH_CLAIMED)?;
                    self.write_pending(chan, p).await?;
                    self.last_write = Some(tokio::time::Instant::now());
                    Ok(WorkerState::Busy)
                }
            }
        }
        .await;
        match &result {
            Ok(WorkerState::Busy) => self.status.busy_units += 1,
            Ok(WorkerState::Idle) => self.status.last_error = None,
            Err(e) => {
                self.status.errors += 1;
                self.status.last_error = Some(e.to_string());
            }
        }
        result
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            () = self.wake.notified() => {
                // Let the messages that follow this one join its file.
                tokio::time::sleep(self.ctx.config.send_linger).await;
            }
            () = tokio::time::sleep(self.ctx.config.send_interval) => {}
        }
    }

    fn status(&self) -> WorkerStatus {
        let c = &self.ctx.counters;
        WorkerStatus {
            figures: vec![
                ("files_written", Counters::get(&c.files_written)),
                ("messages_sent", Counters::get(&c.messages_sent)),
                ("cleanups_queued", Counters::get(&c.cleanups_queued)),
            ],
            ..self.status.clone()
        }
    }
}
