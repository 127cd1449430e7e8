//! Resynchronising a stalled channel: the operator's way out of a chain file that cannot be
//! read.
//!
//! A channel names the one file it reads next; the name of the file after it is *inside*
//! it. A file that is corrupt for good (its object rewritten by something other than the
//! sender) or lost (deleted by a lifecycle rule, an operator) therefore stalls its channel
//! for ever: nothing after it can be reached by the chain. Later files exist — a sender
//! writes at least one per diversifier rotation — and discovery reports them as out of chain.
//!
//! ```text
//!  receiver (operator: resync S)                      sender S
//!  ─────────────────────────────                      ────────
//!  list from/S/msg/ after the stalled file
//!  first later file that verifies (announced
//!   diversifier replaced by the acceptance window)
//!  one metadata transaction:
//!   channel still at the stalled file? ─ no ─▶ refused, nothing done
//!   skipped files recorded (reason `skipped`)
//!   channel jumps to that file, its messages persisted
//!   a tern.resend message {from, to} queued to S ──▶  one transaction with the message's
//!                                                     completion: every retained Sent
//!                                                     message of files from..to back to
//!                                                     ReadyToSend (same ids)
//!  the re-sent messages arrive in a later file; ids never persisted here are handled once
//! ```
//!
//! # Guarantees
//!
//! * **Nothing is handled twice.** The skipped files were never persisted here (a file is
//!   persisted whole or not at all), so none of their ids is known; a re-sent message that
//!   also came some other way is a duplicate by id and content and is dropped.
//! * **Nothing is lost that the sender still holds.** The sender keeps Sent messages for
//!   `sent_retention`; those of the skipped files are sent again. Older ones are gone:
//!   the sender logs how far back it could go (`resend_gaps` counts it) and the layers
//!   above heal such a gap themselves (replication asks for a refresh on a log gap).
//! * The jump is only taken from a channel that is stalled (its expected file rejected)
//!   or whose expected file is missing while a later one exists; a healthy channel is
//!   refused with the reason, and a channel that moved meanwhile is left as it is.
//! * The file jumped to passes every check a chained file passes (authenticated under
//!   this channel's keys, names this sender, this receiver and its own number, announces a
//!   later file of the chain), except that its diversifier need only be inside the
//!   acceptance window: the announcement that would have named it is in the skipped file.

use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tern_crypto::Header;
use tern_crypto::format::KeyRef;
use tern_storage::StoreExt as _;
use tern_storage::layout::{self, DeploymentId, MessageId};

use crate::error::{Error, Result};
use crate::message::GlobalMessage;
use crate::receiver::{Receiver, Reject, persist_txn, record_rejection};
use crate::registry::RESEND_TYPE;
use crate::sender::{enqueue_ready_in, queue_service_message};
use crate::service::{Counters, channel_name};
use crate::state::{InChannel, OutMessage, OutState, QueueEntry, RejectReason, keys};

/// The payload of a resend message: "files `from_seq..to_seq` of your channel to me were
/// skipped; send their messages again".
///
/// Version 1: JSON `{"v":1,"from_seq":<n>,"to_seq":<n>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendPayload {
    /// Format version (1).
    pub v: u32,
    /// The first skipped file's number.
    pub from_seq: u64,
    /// The number of the file the receiver resumed at (not skipped).
    pub to_seq: u64,
}

impl ResendPayload {
    /// Encodes it.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Invalid {
            what: "resend payload",
            reason: e.to_string(),
        })
    }

    /// Decodes and checks it.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let p: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if p.v != 1 {
            return Err(format!(
                "resend payload version {}, this build reads 1",
                p.v
            ));
        }
        if p.from_seq >= p.to_seq {
            return Err(format!(
                "resend range {}..{} is empty",
                p.from_seq, p.to_seq
            ));
        }
        Ok(p)
    }
}

/// What a resync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resynced {
    /// The channel (`sender->receiver`).
    pub channel: String,
    /// The number of the file the channel was stalled at (the first skipped one).
    pub from_seq: u64,
    /// The number of the file it resumed at.
    pub to_seq: u64,
    /// Files found between them and skipped (unreadable or failing a check).
    pub skipped_files: Vec<String>,
    /// Messages of the file it resumed at, persisted now.
    pub persisted: u64,
    /// The resend message queued to the sender, if this deployment has a channel to it.
    pub resend: Option<MessageId>,
}

/// A resync that cannot go ahead.
fn refused(channel: &str, reason: impl Into<String>) -> Error {
    Error::ResyncRefused {
        channel: channel.to_string(),
        reason: reason.into(),
    }
}

impl Receiver {
    /// Resynchronises the channel from `sender` past its stalled or missing file. See the
    /// module docs.
    pub async fn resync(&self, sender: &DeploymentId) -> Result<Resynced> {
        let ctx = self.ctx();
        let chan = ctx
            .inbound(sender)
            .await?
            .ok_or_else(|| Error::UnknownChannel {
                sender: sender.clone(),
                receiver: ctx.me().clone(),
            })?;
        let channel = channel_name(&chan.sender, &chan.receiver);
        let store = self.store();
        let expected = Path::from(chan.expected_file.as_str());
        if chan.stall.is_none() {
            match store.meta(&expected).await {
                Ok(_) => {
                    return Err(refused(
                        &channel,
                        format!(
                            "not stalled: its expected file {expected} is there and is read on the next poll; a resync is for a file that was rejected or is lost"
                        ),
                    ));
                }
                Err(tern_storage::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::storage("check expected file")(e)),
            }
        }
        let later = store
            .list_sorted_after(&layout::replication::msg_prefix(sender), &expected)
            .await
            .map_err(Error::storage("list chain"))?;
        if chan.stall.is_none() && later.is_empty() {
            return Err(refused(
                &channel,
                format!(
                    "not stalled: it waits for its next file {expected}, which the sender has not written yet (nothing after it exists)"
                ),
            ));
        }
        let mut skipped = vec![chan.expected_file.clone()];
        let mut found = None;
        for f in later {
            let Some(seq) = f
                .location
                .filename()
                .and_then(layout::replication::parse_msg)
                .filter(|s| {
                    *s > chan.expected_seq && layout::replication::msg(sender, *s) == f.location
                })
            else {
                continue;
            };
            match self.verify_candidate(&chan, seq, &f.location).await? {
                Ok((candidate, file)) => {
                    found = Some((candidate, file));
                    break;
                }
                Err(why) => {
                    tracing::warn!(channel = %channel, file = %f.location, reason = %why, "resync: later file skipped too");
                    skipped.push(f.location.to_string());
                }
            }
        }
        let Some((candidate, file)) = found else {
            return Err(refused(
                &channel,
                format!(
                    "no readable file after {expected} yet (the sender writes one at least every diversifier rotation): try again later"
                ),
            ));
        };
        let from_seq = chan.expected_seq;
        let to_seq = candidate.expected_seq;
        let resend = if ctx.outbound(sender).await?.is_some() {
            let id = format!("resend-{from_seq}-{to_seq}");
            Some(MessageId::new(id.as_str()).map_err(|e| Error::Invalid {
                what: "resend message id",
                reason: e.to_string(),
            })?)
        } else {
            None
        };
        let (registry, now, me) = (ctx.registry().clone(), ctx.now_ms(), ctx.me().clone());
        let (s, skipped_in, resend_in) = (sender.clone(), skipped.clone(), resend.clone());
        let path = candidate.expected_file.clone();
        let resumed_at = Path::from(path.as_str());
        let outcome = ctx
            .write("resync channel", move |tx| {
                let key = keys::in_channel(&s);
                let current: Option<InChannel> =
                    tx.get(&key).map_err(Error::meta("read channel"))?;
                if current.as_ref().map(|c| c.expected_seq) != Some(from_seq) {
                    return Ok(None);
                }
                for f in &skipped_in {
                    let r = Reject::file(
                        RejectReason::Skipped,
                        format!("skipped by an operator's resync to file {to_seq}"),
                    );
                    record_rejection(tx, s.as_str(), f, &r, now)?;
                }
                let mut jumped = candidate.clone();
                jumped.stall = None;
                jumped.reported.retain(|f| f.as_str() > path.as_str());
                tx.put(&key, &jumped)
                    .map_err(Error::meta("resync channel"))?;
                let persisted = persist_txn(tx, &registry, &s, &path, &file, now)?;
                if let Some(id) = &resend_in
                    && !tx
                        .contains(&keys::out_message(&s, id))
                        .map_err(Error::meta("read message"))?
                {
                    let payload = ResendPayload {
                        v: 1,
                        from_seq,
                        to_seq,
                    }
                    .encode()?;
                    queue_service_message(tx, &s, &me, RESEND_TYPE, id, payload, now)?;
                }
                Ok(Some(persisted))
            })
            .await?;
        let Some(persisted) = outcome else {
            return Err(refused(
                &channel,
                "it moved on while the resync looked for a later file; nothing was done",
            ));
        };
        for _ in &skipped {
            ctx.counters.reject(RejectReason::Skipped);
        }
        Counters::add(&ctx.counters.resyncs, 1);
        let n = persisted.as_ref().map_or(0, |p| p.persisted);
        tracing::warn!(channel = %channel, from_seq, to_seq, skipped = skipped.len(), resend = ?resend, "channel resynchronised: skipped files' messages asked again from the sender");
        if let Some(p) = persisted {
            self.persisted(&channel, &resumed_at, p);
        }
        Ok(Resynced {
            channel,
            from_seq,
            to_seq,
            skipped_files: skipped,
            persisted: n,
            resend,
        })
    }

    /// Checks the later file `seq` at `path` as the next of the chain, its diversifier
    /// inside the acceptance window. `Ok(Err(why))`: it does not qualify.
    async fn verify_candidate(
        &self,
        chan: &InChannel,
        seq: u64,
        path: &Path,
    ) -> Result<std::result::Result<(InChannel, crate::message::MessageFile), String>> {
        let ctx = self.ctx();
        let got = match self.store().get(path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(Err("gone".into())),
            Err(e) => {
                return Err(Error::Storage {
                    what: "read message file",
                    source: Box::new(tern_storage::Error::from_store(
                        tern_storage::Operation::Get,
                        path,
                        e,
                    )),
                });
            }
        };
        if got.meta.size > ctx.config().max_received_file_bytes {
            return Ok(Err(format!("{} bytes, over the limit", got.meta.size)));
        }
        let stored_at = got.meta.last_modified.timestamp_millis();
        let bytes = got.bytes().await.map_err(|e| Error::Storage {
            what: "read message file",
            source: Box::new(tern_storage::Error::from_store(
                tern_storage::Operation::Get,
                path,
                e,
            )),
        })?;
        let diversifier = match Header::parse(&bytes).map(|h| h.key_ref().clone()) {
            Ok(KeyRef::WrappedDek { diversifier, .. }) => diversifier,
            Ok(_) => return Ok(Err("not encrypted with a GMK-wrapped DEK".into())),
            Err(e) => return Ok(Err(format!("header: {e}"))),
        };
        if let Err(e) = ctx.config().diversifier.check(diversifier, &*ctx.clock) {
            return Ok(Err(e.to_string()));
        }
        let candidate = InChannel {
            expected_seq: seq,
            expected_file: path.to_string(),
            expected_diversifier: diversifier,
            ..chan.clone()
        };
        Ok(self
            .verify(&candidate, path, &bytes, stored_at)
            .await?
            .map(|file| (candidate, file))
            .map_err(|r| format!("{}: {}", r.reason, r.detail)))
    }
}

/// Handles a resend message (the sender's side): what [`requeue_txn`] does, in the
/// transaction that completes the message, then counted and logged.
pub(crate) fn resend(
    ctx: &crate::service::Context,
    msg: &GlobalMessage,
) -> std::result::Result<crate::registry::Commit, crate::registry::HandlerError> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let p =
        ResendPayload::decode(&msg.payload).map_err(crate::registry::HandlerError::permanent)?;
    let receiver = msg.origin.clone();
    let now = ctx.now_ms();
    // (re-queued, gap): set by the commit (which may run again), read after it.
    let outcome = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let (o, range) = (Arc::clone(&outcome), p.clone());
    let commit = move |tx: &mut tern_meta::MetaTxn<'_>| {
        let (n, gap) = requeue_txn(tx, &receiver, &range, now)?;
        o.0.store(n, Ordering::Relaxed);
        o.1.store(u64::from(gap), Ordering::Relaxed);
        Ok(())
    };
    let (counters, channel) = (
        Arc::clone(&ctx.counters),
        channel_name(ctx.me(), &msg.origin),
    );
    let after = move || {
        let (n, gap) = (
            outcome.0.load(Ordering::Relaxed),
            outcome.1.load(Ordering::Relaxed) == 1,
        );
        Counters::add(&counters.resent, n);
        if gap {
            Counters::add(&counters.resend_gaps, 1);
            tracing::error!(channel = %channel, from_seq = p.from_seq, to_seq = p.to_seq, resent = n, "resend asked for files older than sent_retention kept: some of their messages may be gone (replication heals a log gap by a refresh)");
        } else {
            tracing::warn!(channel = %channel, from_seq = p.from_seq, to_seq = p.to_seq, resent = n, "messages of files the receiver skipped sent again");
        }
    };
    Ok(crate::registry::Commit::with(commit).then(after))
}

/// The sender's side of a resend message from `receiver`: every retained Sent message of
/// files `p.from_seq..p.to_seq` goes back to ReadyToSend under its id. Returns (messages
/// re-queued, whether files of the range may already have been pruned).
pub(crate) fn requeue_txn(
    tx: &mut tern_meta::MetaTxn<'_>,
    receiver: &DeploymentId,
    p: &ResendPayload,
    now: i64,
) -> tern_meta::Result<(u64, bool)> {
    let mut requeued = 0;
    let mut oldest: Option<u64> = None;
    for (k, e) in tx.scan_prefix::<QueueEntry>(&keys::sent(receiver))? {
        let mkey = keys::out_message(receiver, &e.id);
        let Some(mut row) = tx.get::<OutMessage>(&mkey)? else {
            continue;
        };
        let Some(seq) = row.file_seq else { continue };
        oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
        if row.state != OutState::Sent || !(p.from_seq..p.to_seq).contains(&seq) {
            continue;
        }
        row.state = OutState::ReadyToSend;
        row.file_seq = None;
        row.ready_at_ms = Some(now);
        row.sent_at_ms = None;
        tx.delete(&k)?;
        tx.put(&mkey, &row)?;
        enqueue_ready_in(tx, receiver, &e.id)?;
        requeued += 1;
    }
    // The Sent index is pruned oldest first: if what is left starts after the range's
    // first file, messages of the files before it may be gone.
    let gap = oldest.is_none_or(|o| o > p.from_seq);
    Ok((requeued, gap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_bad_ones_are_named() {
        let p = ResendPayload {
            v: 1,
            from_seq: 5,
            to_seq: 9,
        };
        assert_eq!(ResendPayload::decode(&p.encode().unwrap()).unwrap(), p);
        let e = ResendPayload::decode(br#"{"v":2,"from_seq":1,"to_seq":2}"#).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let e = ResendPayload::decode(br#"{"v":1,"from_seq":3,"to_seq":3}"#).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        assert!(ResendPayload::decode(b"{}").is_err());
    }
}
