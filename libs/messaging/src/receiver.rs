//! The receiving side of every channel into this deployment.
//!
//! ```text
//!  poll expected file ──GET──▶ verify ──▶ one transaction: messages Received
//!      │ not there: wait poll_interval        + channel expects the announced next file
//!      │ rejected: record, count, stall this channel (other channels go on)
//!  discovery (every discovery_interval): list from/ — unknown senders, out-of-chain
//!      files, leftovers of already consumed files
//! ```
//!
//! # Guarantees
//!
//! * In the steady state no listing is needed: each channel's row names the one object to
//!   read next (announced by the previous file, the first by the channel's genesis).
//! * A file's messages and the channel's advance commit in **one** metadata transaction
//!   that first checks the channel still expects this file: a crash before it means the
//!   file is read again; after it, never again. No message is lost or persisted twice.
//! * Verification before anything is applied: the header's diversifier must be the one
//!   announced and inside the acceptance window ([`crate::keys`]); every chunk must
//!   authenticate under a DEK bound to this channel and this object path; the plaintext
//!   must name this sender, this receiver and this sequence number, and announce a next
//!   file of the same chain. A file failing any check is rejected whole — counted,
//!   logged with channel and file, recorded in `chan/rej/` — and its channel stalls on it
//!   (the next name is inside it) until the object changes; the receiver itself goes on.
//! * Message-level checks (origin, known type, payload validation, duplicate id) reject
//!   single messages while the rest of the file is accepted. A duplicate id with the same
//!   content is dropped silently (counted); with different content it is rejected.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use tern_crypto::Header;
use tern_crypto::format::KeyRef;
use tern_storage::StoreExt as _;
use tern_storage::layout::{self, DeploymentId, MessageId};
use tracing::Instrument as _;

use crate::crash::points;
use crate::error::{Error, Result};
use crate::message::MessageFile;
use crate::registry::Registry;
use crate::service::{Context, Counters, channel_name};
use crate::state::{
    InChannel, InMessage, InState, Orphan, QueueEntry, ReceivedFile, RejectReason, Rejection, Seen,
    Stall, hex, keys,
};
use crate::worker::{Worker, WorkerState, WorkerStatus};

/// A rejection to record.
#[derive(Debug, Clone)]
pub(crate) struct Reject {
    pub(crate) reason: RejectReason,
    pub(crate) message: Option<MessageId>,
    pub(crate) detail: String,
}

impl Reject {
    pub(crate) fn file(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            message: None,
            detail: detail.into(),
        }
    }
}

/// What polling one channel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// The expected file is not there (yet).
    Absent,
    /// It was accepted.
    Accepted,
    /// It was rejected (or is still the rejected one).
    Stalled,
}

/// Reads every inbound channel's next file. See the module docs.
pub struct Receiver {
    ctx: Context,
    store: Arc<dyn ObjectStore>,
    last_discovery_ms: Option<i64>,
    unknown_reported: HashSet<String>,
    status: WorkerStatus,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("me", &self.ctx.me)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// The receiver of this deployment, reading its own replication bucket `store` (full
    /// access).
    pub fn new(ctx: Context, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            ctx,
            store,
            last_discovery_ms: None,
            unknown_reported: HashSet::new(),
            status: WorkerStatus::default(),
        }
    }

    /// Polls every channel once; returns how many files were accepted.
    pub async fn poll_all(&mut self) -> Result<usize> {
        let channels: Vec<InChannel> = self
            .ctx
            .read("list inbound channels", |tx| {
                Ok(tx
                    .scan_prefix::<InChannel>(&keys::in_channels())
                    .map_err(Error::meta("scan channels"))?
                    .into_iter()
                    .map(|(_, c)| c)
                    .collect())
            })
            .await?;
        let results: Vec<Result<Polled>> = futures::stream::iter(channels)
            .map(|c| self.poll_channel(c))
            .buffer_unordered(8)
            .collect()
            .await;
        let mut accepted = 0;
        for r in results {
            if r? == Polled::Accepted {
                accepted += 1;
            }
        }
        Ok(accepted)
    }

    async fn poll_channel(&self, chan: InChannel) -> Result<Polled> {
        let channel = channel_name(&chan.sender, &chan.receiver);
        let path = Path::from(chan.expected_file.as_str());
        let span = tracing::debug_span!("poll", channel = %channel, file = %path);
        async {
            if let Some(stall) = &chan.stall {
                match self.store.meta(&path).await {
                    Ok(m) if describe(m.size, m.e_tag.as_deref()) == stall.object => {
                        return Ok(Polled::Stalled);
                    }
                    Ok(_) => {}
                    Err(tern_storage::Error::NotFound { .. }) => return Ok(Polled::Absent),
                    Err(e) => return Err(Error::storage("check stalled file")(e)),
                }
            }
            let got = match self.store.get(&path).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(Polled::Absent),
                Err(e) => {
                    return Err(Error::Storage {
                        what: "read message file",
                        source: Box::new(tern_storage::Error::from_store(
                            tern_storage::Operation::Get,
                            &path,
                            e,
                        )),
                    });
                }
            };
            let object = describe(got.meta.size, got.meta.e_tag.as_deref());
            let stored_at = got.meta.last_modified.timestamp_millis();
            let limit = self.ctx.config.max_received_file_bytes;
            if got.meta.size > limit {
                let reject = Reject::file(
                    RejectReason::Malformed,
                    format!("{} bytes, more than the accepted {limit}", got.meta.size),
                );
                self.stall(&chan, &path, object, reject).await?;
                return Ok(Polled::Stalled);
            }
            let bytes = got.bytes().await.map_err(|e| Error::Storage {
                what: "read message file",
                source: Box::new(tern_storage::Error::from_store(
                    tern_storage::Operation::Get,
                    &path,
                    e,
                )),
            })?;
            match self.verify(&chan, &path, &bytes, stored_at).await? {
                Err(reject) => {
                    self.stall(&chan, &path, object, reject).await?;
                    Ok(Polled::Stalled)
                }
                Ok(file) => {
                    self.ctx.crash.hit(points::FILE_READ)?;
                    self.persist(&chan, &path, file).await?;
                    self.ctx.crash.hit(points::PERSISTED)?;
                    Ok(Polled::Accepted)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Checks a file; `Ok(Err(_))` is a rejection, `Err(_)` a failure to retry.
    pub(crate) async fn verify(
        &self,
        chan: &InChannel,
        path: &Path,
        bytes: &[u8],
        stored_at_ms: i64,
    ) -> Result<Result<MessageFile, Reject>> {
        use RejectReason as R;
        let name = path.to_string();
        let header = match Header::parse(bytes) {
            Ok(h) => h,
            Err(fault) => return Ok(Err(Reject::file(R::Tampered, format!("header: {fault}")))),
        };
        let KeyRef::WrappedDek { diversifier, .. } = header.key_ref() else {
            return Ok(Err(Reject::file(
                R::Tampered,
                "not encrypted with a GMK-wrapped DEK",
            )));
        };
        let policy = &self.ctx.config.diversifier;
        // A re-key is accepted only when the announced diversifier has expired (the sender
        // was down longer than max_age) and the new one is later (see `Sender`).
        let rekey = *diversifier > chan.expected_diversifier
            && matches!(
                policy.check(chan.expected_diversifier, &*self.ctx.clock),
                Err(tern_crypto::Error::DiversifierTooOld { .. })
            );
        if *diversifier != chan.expected_diversifier && !rekey {
            return Ok(Err(Reject::file(
                R::Diversifier,
                format!(
                    "diversifier {diversifier}, but {} was announced",
                    chan.expected_diversifier
                ),
            )));
        }
        let keys = self.ctx.channel_keys(&chan.sender, &chan.receiver);
        let keys = match keys.for_reading(*diversifier, Some(stored_at_ms)) {
            Ok(k) => k,
            Err(e) => return Ok(Err(Reject::file(R::Diversifier, e.to_string()))),
        };
        let plain = match tern_crypto::decrypt_bytes(&name, &keys, bytes).await {
            Ok(p) => p,
            Err(e) if e.is_integrity_failure() => {
                let reason = match e {
                    tern_crypto::Error::DiversifierTooOld { .. }
                    | tern_crypto::Error::DiversifierInFuture { .. }
                    | tern_crypto::Error::DiversifierMisaligned { .. }
                    | tern_crypto::Error::UnexpectedDiversifier { .. } => R::Diversifier,
                    _ => R::Tampered,
                };
                return Ok(Err(Reject::file(reason, e.to_string())));
            }
            Err(e) => return Err(Error::crypto("decrypt message file")(e)),
        };
        let file = match MessageFile::decode(&plain) {
            Ok(f) => f,
            Err(e) => return Ok(Err(Reject::file(R::Malformed, e.to_string()))),
        };
        if file.sender != chan.sender || file.receiver != chan.receiver {
            return Ok(Err(Reject::file(
                R::UnknownSender,
                format!(
                    "the file says {}->{}, it sits in channel {}",
                    file.sender,
                    file.receiver,
                    channel_name(&chan.sender, &chan.receiver)
                ),
            )));
        }
        if file.seq != chan.expected_seq {
            return Ok(Err(Reject::file(
                R::OutOfChain,
                format!(
                    "the file says it is number {}, {} was expected",
                    file.seq, chan.expected_seq
                ),
            )));
        }
        let next = Path::from(file.next_file.as_str());
        let next_seq = next
            .filename()
            .and_then(layout::replication::parse_msg)
            .filter(|s| {
                *s > file.seq
                    && layout::replication::msg(&chan.sender, *s).as_ref() == file.next_file
            });
        if next_seq.is_none() {
            return Ok(Err(Reject::file(
                R::Malformed,
                format!(
                    "announced next file {:?} is not a later file of this chain",
                    file.next_file
                ),
            )));
        }
        Ok(Ok(file))
    }

    async fn stall(&self, chan: &InChannel, path: &Path, object: String, r: Reject) -> Result<()> {
        let channel = channel_name(&chan.sender, &chan.receiver);
        tracing::error!(channel = %channel, file = %path, reason = %r.reason, detail = %r.detail, "message file rejected; channel stalled until the file changes");
        let sender = chan.sender.clone();
        let file = path.to_string();
        let now = self.ctx.now_ms();
        let reason = r.reason;
        let recorded = self
            .ctx
            .write("record stall", move |tx| {
                let key = keys::in_channel(&sender);
                let Some(mut c) = tx
                    .get::<InChannel>(&key)
                    .map_err(Error::meta("read channel"))?
                else {
                    return Ok(false);
                };
                if c.expected_file != file
                    || c.stall
                        .as_ref()
                        .is_some_and(|s| s.object == object && s.reason == r.reason)
                {
                    return Ok(false);
                }
                c.stall = Some(Stall {
                    file: file.clone(),
                    reason: r.reason,
                    object: object.clone(),
                    since_ms: now,
                });
                tx.put(&key, &c).map_err(Error::meta("record stall"))?;
                record_rejection(tx, sender.as_str(), &file, &r, now)?;
                Ok(true)
            })
            .await?;
        if recorded {
            self.ctx.counters.reject(reason);
        }
        Ok(())
    }

    async fn persist(&self, chan: &InChannel, path: &Path, file: MessageFile) -> Result<()> {
        let channel = channel_name(&chan.sender, &chan.receiver);
        let registry = Arc::clone(&self.ctx.registry);
        let sender = chan.sender.clone();
        let file_name = path.to_string();
        let now = self.ctx.now_ms();
        let outcome = self
            .ctx
            .write("persist message file", move |tx| {
                persist_txn(tx, &registry, &sender, &file_name, &file, now)
            })
            .await?;
        if let Some(o) = outcome {
            self.persisted(&channel, path, o);
        }
        Ok(())
    }

    /// Counts, logs and wakes after a file's messages were persisted.
    pub(crate) fn persisted(&self, channel: &str, path: &Path, o: Persisted) {
        for r in &o.rejects {
            tracing::warn!(channel = %channel, file = %path, message = ?r.message, reason = %r.reason, detail = %r.detail, "message rejected");
            self.ctx.counters.reject(r.reason);
        }
        tracing::debug!(channel = %channel, file = %path, persisted = o.persisted, duplicates = o.duplicates, "message file accepted");
        let c = &self.ctx.counters;
        Counters::add(&c.files_received, 1);
        Counters::add(&c.messages_received, o.persisted);
        Counters::add(&c.duplicates, o.duplicates);
        if o.persisted > 0 {
            self.ctx.processor_wake.notify_one();
        }
        if o.persisted == 0 || o.orphans > 0 {
            self.ctx.cleaner_wake.notify_one();
        }
    }

    pub(crate) fn ctx(&self) -> &Context {
        &self.ctx
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Lists the replication bucket for files outside the chains: unknown senders,
    /// out-of-chain files (reported once each), leftovers below a chain's position
    /// (deleted). Returns how many files it reported.
    pub async fn discover(&mut self) -> Result<usize> {
        let listing = self
            .store
            .list_with_delimiter(Some(&Path::from("from")))
            .await
            .map_err(|e| Error::Storage {
                what: "list senders",
                source: Box::new(tern_storage::Error::from_store(
                    tern_storage::Operation::List,
                    "from/",
                    e,
                )),
            })?;
        let mut reported = 0;
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename() else {
                continue;
            };
            let Ok(sender) = DeploymentId::new(name) else {
                continue;
            };
            reported += self.discover_sender(&sender).await?;
        }
        Ok(reported)
    }

    async fn discover_sender(&mut self, sender: &DeploymentId) -> Result<usize> {
        let Some(before) = self.ctx.inbound(sender).await? else {
            let files = self
                .store
                .list_sorted(&layout::replication::msg_prefix(sender))
                .await
                .map_err(Error::storage("list unknown sender"))?;
            let mut n = 0;
            for f in files {
                let file = f.location.to_string();
                if !self.unknown_reported.insert(file.clone()) {
                    continue;
                }
                let r = Reject::file(
                    RejectReason::UnknownSender,
                    format!("no channel from {sender} to {}", self.ctx.me),
                );
                tracing::error!(sender = %sender, file = %file, "message file from an unknown sender rejected");
                let s = sender.to_string();
                let now = self.ctx.now_ms();
                self.ctx
                    .write("record rejection", move |tx| {
                        record_rejection(tx, &s, &file, &r, now)
                    })
                    .await?;
                self.ctx.counters.reject(RejectReason::UnknownSender);
                n += 1;
            }
            return Ok(n);
        };
        let files = self
            .store
            .list_sorted(&layout::replication::msg_prefix(sender))
            .await
            .map_err(Error::storage("list chain"))?;
        // Files beyond the expected one are out of chain only if the expected one is still
        // absent *after* the listing (the sender writes a file only after its predecessor).
        let expected_path = Path::from(before.expected_file.as_str());
        let expected_absent = matches!(
            self.store.meta(&expected_path).await,
            Err(tern_storage::Error::NotFound { .. })
        );
        let Some(after) = self.ctx.inbound(sender).await? else {
            return Ok(0);
        };
        let mut n = 0;
        for f in files {
            let Some(seq) = f
                .location
                .filename()
                .and_then(layout::replication::parse_msg)
            else {
                continue;
            };
            let file = f.location.to_string();
            if seq < after.expected_seq {
                // Consumed already. A file with no record here is a leftover (e.g. written
                // again by a sender that crashed after our cleaner deleted it): delete it.
                let s = sender.clone();
                let tracked = self
                    .ctx
                    .read("read file record", move |tx| {
                        Ok(tx
                            .contains(&keys::file(&s, seq))
                            .map_err(Error::meta("read file"))?
                            || tx
                                .contains(&keys::file_delete(&s, seq))
                                .map_err(Error::meta("read file"))?)
                    })
                    .await?;
                if !tracked {
                    tracing::info!(sender = %sender, file = %file, "deleting a leftover message file");
                    self.store
                        .delete_idempotent(&f.location)
                        .await
                        .map_err(Error::storage("delete leftover"))?;
                    Counters::add(&self.ctx.counters.objects_deleted, 1);
                }
            } else if seq > after.expected_seq
                && expected_absent
                && after.expected_seq == before.expected_seq
                && !after.reported.contains(&file)
            {
                let r = Reject::file(
                    RejectReason::OutOfChain,
                    format!(
                        "number {seq} while the chain waits for {}",
                        after.expected_seq
                    ),
                );
                tracing::error!(channel = %channel_name(sender, &self.ctx.me), file = %file, "message file outside the chain rejected");
                let s = sender.clone();
                let now = self.ctx.now_ms();
                let f2 = file.clone();
                let recorded = self
                    .ctx
                    .write("record out-of-chain file", move |tx| {
                        let key = keys::in_channel(&s);
                        let Some(mut c) = tx
                            .get::<InChannel>(&key)
                            .map_err(Error::meta("read channel"))?
                        else {
                            return Ok(false);
                        };
                        if c.reported.contains(&f2) {
                            return Ok(false);
                        }
                        c.reported.push(f2.clone());
                        if c.reported.len() > 1000 {
                            c.reported.remove(0);
                        }
                        tx.put(&key, &c).map_err(Error::meta("record report"))?;
                        record_rejection(tx, s.as_str(), &f2, &r, now)?;
                        Ok(true)
                    })
                    .await?;
                if recorded {
                    self.ctx.counters.reject(RejectReason::OutOfChain);
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

fn describe(size: u64, e_tag: Option<&str>) -> String {
    format!("{size}/{}", e_tag.unwrap_or("-"))
}

pub(crate) fn record_rejection(
    tx: &mut tern_meta::MetaTxn<'_>,
    sender: &str,
    file: &str,
    r: &Reject,
    now: i64,
) -> Result<()> {
    let n = tx
        .next_sequence("msg-rejections")
        .map_err(Error::meta("sequence"))?;
    tx.put(
        &keys::rejection_order(n),
        &crate::state::RejectionOrder {
            sender: sender.to_string(),
        },
    )
    .map_err(Error::meta("index rejection"))?;
    tx.put(
        &keys::rejection(sender, n),
        &Rejection {
            sender: sender.to_string(),
            file: file.to_string(),
            message: r.message.clone(),
            reason: r.reason,
            detail: r.detail.clone(),
            at_ms: now,
        },
    )
    .map_err(Error::meta("record rejection"))
}

pub(crate) struct Persisted {
    pub(crate) persisted: u64,
    duplicates: u64,
    orphans: u64,
    rejects: Vec<Reject>,
}

pub(crate) fn persist_txn(
    tx: &mut tern_meta::MetaTxn<'_>,
    registry: &Registry,
    sender: &DeploymentId,
    file_name: &str,
    file: &MessageFile,
    now: i64,
) -> Result<Option<Persisted>> {
    use RejectReason as R;
    let ckey = keys::in_channel(sender);
    let Some(mut chan) = tx
        .get::<InChannel>(&ckey)
        .map_err(Error::meta("read channel"))?
    else {
        return Ok(None);
    };
    if chan.expected_seq != file.seq {
        // Persisted already (by an earlier run or another worker).
        return Ok(None);
    }
    let mut out = Persisted {
        persisted: 0,
        duplicates: 0,
        orphans: 0,
        rejects: Vec::new(),
    };
    let mut live = 0u32;
    for (i, m) in file.messages.iter().enumerate() {
        let msg = match m {
            Err(reason) => {
                out.rejects.push(Reject {
                    reason: R::Malformed,
                    message: None,
                    detail: format!("record {i}: {reason}"),
                });
                continue;
            }
            Ok(msg) => msg,
        };
        let reject = |reason, detail: String| Reject {
            reason,
            message: Some(msg.id.clone()),
            detail,
        };
        let row_key = keys::in_message(sender, &msg.id);
        let live_row: Option<InMessage> = tx.get(&row_key).map_err(Error::meta("read message"))?;
        let seen: Option<Seen> = tx
            .get(&keys::seen(sender, &msg.id))
            .map_err(Error::meta("read seen"))?;
        let orphan_bodies = |tx: &mut tern_meta::MetaTxn<'_>, why: &str| -> Result<u64> {
            if msg.bodies.is_empty() || live_row.is_some() {
                return Ok(0);
            }
            tx.put(
                &keys::orphan(sender, &msg.id),
                &Orphan {
                    bodies: u32::try_from(msg.bodies.len()).unwrap_or(u32::MAX),
                    why: why.to_string(),
                },
            )
            .map_err(Error::meta("record orphan"))?;
            Ok(1)
        };
        if msg.origin != *sender {
            out.rejects.push(reject(
                R::UnknownSender,
                format!("origin {} in the channel of {sender}", msg.origin),
            ));
            continue;
        }
        if let Err(e) = registry.check(msg) {
            out.orphans += orphan_bodies(tx, "malformed message")?;
            out.rejects.push(reject(R::Malformed, e.to_string()));
            continue;
        }
        let digest = hex(&msg.digest()?);
        let known = live_row
            .as_ref()
            .map(|r| r.digest.clone())
            .or_else(|| seen.as_ref().map(|s| s.digest.clone()));
        if let Some(known) = known {
            if known == digest {
                out.duplicates += 1;
            } else {
                out.orphans += orphan_bodies(tx, "replayed message id")?;
                out.rejects.push(reject(
                    R::ReplayedId,
                    "this id was received before with different content".into(),
                ));
            }
            continue;
        }
        let qseq = tx.next_sequence("msg-q").map_err(Error::meta("sequence"))?;
        tx.put(
            &keys::queue(InState::Received).u64(qseq),
            &QueueEntry {
                peer: sender.clone(),
                id: msg.id.clone(),
            },
        )
        .map_err(Error::meta("queue message"))?;
        tx.put(
            &row_key,
            &InMessage {
                message: msg.clone(),
                state: InState::Received,
                queue_seq: qseq,
                file_seq: file.seq,
                digest,
                received_at_ms: now,
                attempts: 0,
                not_before_ms: 0,
                claim: None,
                last_error: None,
                failed_at_ms: None,
            },
        )
        .map_err(Error::meta("persist message"))?;
        live += 1;
        out.persisted += 1;
    }
    if live > 0 {
        tx.put(
            &keys::file(sender, file.seq),
            &ReceivedFile {
                live,
                received_at_ms: now,
            },
        )
        .map_err(Error::meta("record file"))?;
    } else {
        tx.put(
            &keys::file_delete(sender, file.seq),
            &QueueEntry {
                peer: sender.clone(),
                id: MessageId::new(format!("file-{}", file.seq)).map_err(|e| Error::Invalid {
                    what: "file id",
                    reason: e.to_string(),
                })?,
            },
        )
        .map_err(Error::meta("queue file delete"))?;
    }
    for r in &out.rejects {
        record_rejection(tx, sender.as_str(), file_name, r, now)?;
    }
    chan.expected_seq = file
        .next_file
        .rsplit('/')
        .next()
        .and_then(layout::replication::parse_msg)
        .unwrap_or(file.seq + 1);
    chan.expected_file = file.next_file.clone();
    chan.expected_diversifier = file.next_diversifier;
    chan.files_received += 1;
    chan.last_file_at_ms = Some(now);
    chan.stall = None;
    tx.put(&ckey, &chan)
        .map_err(Error::meta("advance channel"))?;
    Ok(Some(out))
}

#[async_trait]
impl Worker for Receiver {
    fn name(&self) -> String {
        format!("receiver {}", self.ctx.me)
    }

    async fn work(&mut self) -> Result<WorkerState> {
        let result: Result<WorkerState> = async {
            let now = self.ctx.now_ms();
            let interval =
                i64::try_from(self.ctx.config.discovery_interval.as_millis()).unwrap_or(i64::MAX);
            if self.last_discovery_ms.is_none_or(|t| now - t >= interval) {
                self.last_discovery_ms = Some(now);
                // Discovery only finds what lies outside the chains: its failure must not
                // stop the steady-state polling.
                if let Err(e) = self.discover().await {
                    tracing::warn!(receiver = %self.ctx.me, error = %e, "discovery failed; polling goes on");
                    self.status.errors += 1;
                    self.status.last_error = Some(e.to_string());
                }
            }
            Ok(if self.poll_all().await? > 0 {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            })
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
            () = tokio::time::sleep(self.ctx.receive_wait()) => {}
            () = self.ctx.receiver_wake.notified() => {}
        }
    }

    fn status(&self) -> WorkerStatus {
        let c = &self.ctx.counters;
        let mut figures = vec![
            ("files_received", Counters::get(&c.files_received)),
            ("messages_received", Counters::get(&c.messages_received)),
            ("duplicates", Counters::get(&c.duplicates)),
        ];
        for r in RejectReason::ALL {
            figures.push((r.name(), c.rejected_for(r)));
        }
        WorkerStatus {
            figures,
            ..self.status.clone()
        }
    }
}
