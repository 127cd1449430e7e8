//! What every part of one deployment's message service shares: configuration, the
//! metadata store, keys, clock, registry, crash points and counters; and channel creation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_clock::SharedClock;
use tern_crypto::{CachedWrapKeys, Diversifier, DiversifierPolicy, SharedRandom};
use tern_meta::{MetaStore, MetaTxn};
use tern_storage::layout::{self, DeploymentId};

use crate::crash::CrashPoints;
use crate::error::{Error, Result};
use crate::keys::ChannelKeys;
use crate::registry::Registry;
use crate::state::{InChannel, OutChannel, RejectReason, keys};

/// Settings of the message service (TOML with human-readable durations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    /// How long the receiver waits before looking again for a channel's next file when it
    /// was not there.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the receiver looks while a reply is expected ([`Context::expect_reply`]:
    /// a refresh request, a vote request was sent), for at most `reply_window`: the
    /// answer is read within this rather than within `poll_interval`.
    #[serde(with = "humantime_serde")]
    pub reply_poll_interval: Duration,
    /// How long after a request the receiver keeps looking every `reply_poll_interval`.
    #[serde(with = "humantime_serde")]
    pub reply_window: Duration,
    /// How long an idle sender waits when nobody wakes it.
    #[serde(with = "humantime_serde")]
    pub send_interval: Duration,
    /// How long a woken sender waits for more messages before writing a file: fewer,
    /// fuller files under load for a few milliseconds of latency.
    #[serde(with = "humantime_serde")]
    pub send_linger: Duration,
    /// Most messages in one message file.
    pub max_batch: usize,
    /// A message file stops taking messages once their payloads reach this many bytes
    /// (it always takes at least one).
    pub max_file_bytes: usize,
    /// Largest payload of one message; more data goes into body files.
    pub max_payload_bytes: usize,
    /// The receiver refuses (as malformed) a message file larger than this, before
    /// reading it into memory.
    pub max_received_file_bytes: u64,
    /// Messages older than this in Preparing are abandoned (cleanup message).
    #[serde(with = "humantime_serde")]
    pub preparing_max_age: Duration,
    /// How long Sent rows stay on the sender (for inspection) before removal.
    #[serde(with = "humantime_serde")]
    pub sent_retention: Duration,
    /// Messages per processing batch.
    pub process_batch: usize,
    /// Handlers running at once.
    pub concurrency: usize,
    /// How long a claim on a message (Processing) lasts before another worker may retake it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Handler runs before a message is marked Failed.
    pub max_attempts: u32,
    /// Delay before a failed handler runs again (doubles per attempt).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Messages cleaned per cleaner unit.
    pub clean_batch: usize,
    /// How long a Failed message (its handler failed permanently or too often) is kept
    /// for the operator (`retry`, `discard`); then it is cleaned up like a handled one —
    /// its row, body files and, with its file's last message, its message file.
    #[serde(with = "humantime_serde")]
    pub failed_retention: Duration,
    /// How long processed message ids are remembered to detect replays.
    #[serde(with = "humantime_serde")]
    pub seen_retention: Duration,
    /// How long recorded rejections (tampered, replayed or stale files) are kept for the
    /// operator; the per-reason counters are kept for ever.
    #[serde(with = "humantime_serde")]
    pub rejection_retention: Duration,
    /// How often the receiver lists the replication bucket for files outside the chains
    /// (unknown senders, out-of-chain files, leftovers).
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// Diversifier rotation and acceptance.
    pub diversifier: DiversifierPolicy,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            reply_poll_interval: Duration::from_millis(20),
            reply_window: Duration::from_secs(10),
            send_interval: Duration::from_secs(1),
            send_linger: Duration::from_millis(5),
            max_batch: 1000,
            max_file_bytes: 8 << 20,
            max_payload_bytes: 1 << 20,
            max_received_file_bytes: 64 << 20,
            preparing_max_age: Duration::from_secs(3600),
            sent_retention: Duration::from_secs(600),
            process_batch: 256,
            concurrency: 8,
            lease: Duration::from_secs(300),
            max_attempts: 10,
            retry_backoff: Duration::from_secs(1),
            clean_batch: 256,
            seen_retention: Duration::from_secs(7 * 86_400),
            rejection_retention: Duration::from_secs(30 * 86_400),
            failed_retention: Duration::from_secs(7 * 86_400),
            discovery_interval: Duration::from_secs(60),
            diversifier: DiversifierPolicy::default(),
        }
    }
}

impl MessagingConfig {
    /// Checks the settings once, at start; the error names the bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.max_batch == 0 {
            return bad("max_batch", "must be at least 1");
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > self.max_file_bytes {
            return bad(
                "max_payload_bytes",
                "must be positive and at most max_file_bytes",
            );
        }
        if self.reply_poll_interval.is_zero() {
            return bad("reply_poll_interval", "must be more than 0");
        }
        if self.process_batch == 0 {
            return bad("process_batch", "must be at least 1");
        }
        if self.concurrency == 0 {
            return bad("concurrency", "must be at least 1");
        }
        if self.clean_batch == 0 {
            return bad("clean_batch", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.lease.is_zero() {
            return bad("lease", "must be positive");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must be positive");
        }
        if self.preparing_max_age < self.diversifier.rotation {
            // A body file uploaded under the announced diversifier must still be accepted
            // when its message goes out.
            return bad(
                "preparing_max_age",
                "must be at least one diversifier rotation",
            );
        }
        if self.preparing_max_age >= self.diversifier.max_age {
            return bad(
                "preparing_max_age",
                "must be shorter than the diversifier max_age",
            );
        }
        self.diversifier
            .validate()
            .map_err(Error::crypto("diversifier policy"))
    }
}

/// Counters of one service instance (monotonic since start). Cheap to read from any thread.
#[derive(Debug, Default)]
pub struct Counters {
    /// Message files written.
    pub files_written: AtomicU64,
    /// Messages sent in them.
    pub messages_sent: AtomicU64,
    /// Cleanup messages queued.
    pub cleanups_queued: AtomicU64,
    /// Message files accepted.
    pub files_received: AtomicU64,
    /// Messages persisted.
    pub messages_received: AtomicU64,
    /// Messages dropped as exact duplicates.
    pub duplicates: AtomicU64,
    /// Handler runs that completed.
    pub handled: AtomicU64,
    /// Handler runs that failed.
    pub handler_failures: AtomicU64,
    /// Failed messages cleaned up after `failed_retention`.
    pub failed_expired: AtomicU64,
    /// Messages their handler refused for good (stale, not for this deployment).
    pub refused: AtomicU64,
    /// Messages cleaned up.
    pub cleaned: AtomicU64,
    /// Objects deleted by the cleaner.
    pub objects_deleted: AtomicU64,
    /// Channels resynchronised past a stalled or lost file (operator).
    pub resyncs: AtomicU64,
    /// Messages sent again at a receiver's resync request.
    pub resent: AtomicU64,
    /// Resync requests reaching back past what `sent_retention` kept.
    pub resend_gaps: AtomicU64,
    rejected: Mutex<BTreeMap<RejectReason, u64>>,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn reject(&self, reason: RejectReason) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    /// Rejections counted by reason.
    pub fn rejected(&self) -> BTreeMap<RejectReason, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Rejections of one reason.
    pub fn rejected_for(&self, reason: RejectReason) -> u64 {
        self.rejected().get(&reason).copied().unwrap_or(0)
    }

    /// A value.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What the two ends of a channel agree on when it is created: the first file's number and
/// diversifier. The sender makes it ([`Context::create_outbound`]); the receiver registers
/// it ([`Context::register_inbound`]); it carries no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelGenesis {
    /// The sending deployment.
    pub sender: DeploymentId,
    /// The receiving deployment.
    pub receiver: DeploymentId,
    /// Number of the first message file.
    pub first_seq: u64,
    /// Diversifier of the first message file.
    pub first_diversifier: Diversifier,
}

/// One deployment's message service: shared by its senders, receiver, processor and
/// cleaner. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub(crate) me: DeploymentId,
    pub(crate) meta: MetaStore,
    pub(crate) wrap_keys: Arc<CachedWrapKeys>,
    pub(crate) clock: SharedClock,
    pub(crate) random: SharedRandom,
    pub(crate) config: Arc<MessagingConfig>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) crash: CrashPoints,
    pub(crate) counters: Arc<Counters>,
    pub(crate) processor_wake: Arc<tokio::sync::Notify>,
    pub(crate) cleaner_wake: Arc<tokio::sync::Notify>,
    /// Until when a reply is expected (the receiver looks every `reply_poll_interval`).
    pub(crate) reply_until: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Cuts the receiver's wait short when a reply becomes expected.
    pub(crate) receiver_wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("me", &self.me)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The message service of deployment `me`. Validates `config`.
    pub fn new(
        me: DeploymentId,
        meta: MetaStore,
        wrap_keys: Arc<CachedWrapKeys>,
        clock: SharedClock,
        random: SharedRandom,
        registry: Registry,
        config: MessagingConfig,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            me,
            meta,
            wrap_keys,
            clock,
            random,
            config: Arc::new(config),
            registry: Arc::new(registry),
            crash: CrashPoints::new(),
            counters: Arc::new(Counters::default()),
            processor_wake: Arc::new(tokio::sync::Notify::new()),
            cleaner_wake: Arc::new(tokio::sync::Notify::new()),
            reply_until: Arc::new(std::sync::Mutex::new(None)),
            receiver_wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// The same service with these crash points (tests).
    pub fn with_crash_points(mut self, crash: CrashPoints) -> Self {
        self.crash = crash;
        self
    }

    /// This deployment.
    pub fn me(&self) -> &DeploymentId {
        &self.me
    }

    /// The metadata store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// A message that asks for an answer was queued (a refresh request, a vote
    /// request): for the next `reply_window` the receiver looks for files every
    /// `reply_poll_interval` instead of every `poll_interval`, so the answer is read as
    /// soon as it lands. Requests are rare; the extra reads are bounded by the window.
    pub fn expect_reply(&self) {
        let until = std::time::Instant::now() + self.config.reply_window;
        let mut r = self
            .reply_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *r = Some(r.map_or(until, |u| u.max(until)));
        drop(r);
        self.receiver_wake.notify_one();
    }

    /// How long the receiver waits before it looks again.
    pub fn receive_wait(&self) -> Duration {
        let r = *self
            .reply_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match r {
            Some(until) if std::time::Instant::now() < until => self
                .config
                .reply_poll_interval
                .min(self.config.poll_interval),
            _ => self.config.poll_interval,
        }
    }

    /// The crash points.
    pub fn crash_points(&self) -> &CrashPoints {
        &self.crash
    }

    /// The configuration.
    pub fn config(&self) -> &MessagingConfig {
        &self.config
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_millis()
    }

    pub(crate) fn channel_keys(
        &self,
        sender: &DeploymentId,
        receiver: &DeploymentId,
    ) -> ChannelKeys {
        ChannelKeys::new(
            Arc::clone(&self.wrap_keys),
            channel_name(sender, receiver),
            self.config.diversifier,
            Arc::clone(&self.clock),
            Arc::clone(&self.random),
        )
    }

    /// Runs a metadata write transaction off the async runtime.
    pub(crate) async fn write<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut MetaTxn<'_>) -> Result<T> + Send + 'static,
    {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || run_txn(&meta, what, f, true))
            .await
            .map_err(|source| Error::Task { what, source })?
    }

    /// Runs a metadata read off the async runtime.
    pub(crate) async fn read<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut MetaTxn<'_>) -> Result<T> + Send + 'static,
    {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || run_txn(&meta, what, f, false))
            .await
            .map_err(|source| Error::Task { what, source })?
    }

    /// Creates the sending side of the channel to `receiver`: the first file's number is the
    /// current time in milliseconds (so a channel created again over a bucket that still
    /// holds files of an earlier incarnation never reuses their names), under the current
    /// diversifier. Idempotent: an existing channel returns its genesis
    /// only if it has not written anything yet, else [`Error::ChannelExists`].
    pub async fn create_outbound(&self, receiver: &DeploymentId) -> Result<ChannelGenesis> {
        let me = self.me.clone();
        let receiver = receiver.clone();
        let now = self.now_ms();
        let first = self.config.diversifier.current(&*self.clock);
        let first_seq = u64::try_from(now).unwrap_or(0).max(1);
        self.write("create outbound channel", move |tx| {
            let key = keys::out_channel(&receiver);
            if let Some(c) = tx
                .get::<OutChannel>(&key)
                .map_err(Error::meta("read channel"))?
            {
                if c.files_written == 0 && c.pending.is_none() {
                    return Ok(ChannelGenesis {
                        sender: c.sender,
                        receiver: c.receiver,
                        first_seq: c.next_seq,
                        first_diversifier: c.next_diversifier,
                    });
                }
                return Err(Error::ChannelExists {
                    channel: channel_name(&me, &receiver),
                });
            }
            let c = OutChannel {
                sender: me.clone(),
                receiver: receiver.clone(),
                next_seq: first_seq,
                next_diversifier: first,
                pending: None,
                files_written: 0,
                last_file_at_ms: None,
                created_at_ms: now,
            };
            tx.put(&key, &c).map_err(Error::meta("create channel"))?;
            Ok(ChannelGenesis {
                sender: me.clone(),
                receiver: receiver.clone(),
                first_seq,
                first_diversifier: first,
            })
        })
        .await
    }

    /// Registers the receiving side of a channel created by its sender. Idempotent for the
    /// same genesis.
    pub async fn register_inbound(&self, genesis: &ChannelGenesis) -> Result<()> {
        if genesis.receiver != self.me {
            return Err(Error::Invalid {
                what: "channel genesis",
                reason: format!("it is for {}, this is {}", genesis.receiver, self.me),
            });
        }
        let g = genesis.clone();
        self.write("register inbound channel", move |tx| {
            let key = keys::in_channel(&g.sender);
            let expected_file = layout::replication::msg(&g.sender, g.first_seq).to_string();
            if let Some(c) = tx
                .get::<InChannel>(&key)
                .map_err(Error::meta("read channel"))?
            {
                if c.files_received == 0
                    && c.expected_seq == g.first_seq
                    && c.expected_diversifier == g.first_diversifier
                {
                    return Ok(());
                }
                return Err(Error::ChannelExists {
                    channel: channel_name(&g.sender, &g.receiver),
                });
            }
            tx.put(
                &key,
                &InChannel {
                    sender: g.sender.clone(),
                    receiver: g.receiver.clone(),
                    expected_seq: g.first_seq,
                    expected_file,
                    expected_diversifier: g.first_diversifier,
                    files_received: 0,
                    last_file_at_ms: None,
                    stall: None,
                    reported: Vec::new(),
                },
            )
            .map_err(Error::meta("register channel"))
        })
        .await
    }

    /// The sending side of the channel to `receiver`.
    pub async fn outbound(&self, receiver: &DeploymentId) -> Result<Option<OutChannel>> {
        let r = receiver.clone();
        self.read("read outbound channel", move |tx| {
            tx.get(&keys::out_channel(&r))
                .map_err(Error::meta("read channel"))
        })
        .await
    }

    /// The receiving side of the channel from `sender`.
    pub async fn inbound(&self, sender: &DeploymentId) -> Result<Option<InChannel>> {
        let s = sender.clone();
        self.read("read inbound channel", move |tx| {
            tx.get(&keys::in_channel(&s))
                .map_err(Error::meta("read channel"))
        })
        .await
    }

    /// Messages received from `sender` whose handling has not finished (received, queued
    /// or being processed; failed ones do not count): what a failover drains before it
    /// judges what it has.
    pub async fn pending_from(&self, sender: &DeploymentId) -> Result<u64> {
        let prefix = keys::in_messages(sender);
        self.read("count pending messages", move |tx| {
            Ok(tx
                .scan_prefix::<crate::state::InMessage>(&prefix)
                .map_err(Error::meta("scan received messages"))?
                .into_iter()
                .filter(|(_, m)| {
                    matches!(
                        m.state,
                        crate::state::InState::Received
                            | crate::state::InState::ReadyForProcessing
                            | crate::state::InState::Processing
                    )
                })
                .count() as u64)
        })
        .await
    }

    /// Messages queued for `receiver` that are not yet in a written message file
    /// (preparing, ready or in a pending file).
    pub async fn unsent_to(&self, receiver: &DeploymentId) -> Result<u64> {
        let prefix = keys::out_messages(receiver);
        self.read("count unsent messages", move |tx| {
            Ok(tx
                .scan_prefix::<crate::state::OutMessage>(&prefix)
                .map_err(Error::meta("scan sent messages"))?
                .into_iter()
                .filter(|(_, m)| m.state != crate::state::OutState::Sent)
                .count() as u64)
        })
        .await
    }

    /// Whether the next message file from `sender` has landed in `bucket` (this
    /// deployment's replication bucket) but was not received yet (the receiver reads it at
    /// its next poll). A stalled channel (its expected file was rejected) has nothing more
    /// to receive until an operator acts. A failover drains these too: they were sent
    /// before the sender was lost.
    pub async fn unreceived_from(
        &self,
        sender: &DeploymentId,
        bucket: &dyn object_store::ObjectStore,
    ) -> Result<bool> {
        let Some(chan) = self.inbound(sender).await? else {
            return Ok(false);
        };
        if chan.stall.is_some() {
            return Ok(false);
        }
        let path = object_store::path::Path::from(chan.expected_file.as_str());
        match object_store::ObjectStoreExt::head(bucket, &path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::Storage {
                what: "look for the next message file",
                source: Box::new(tern_storage::Error::from_store(
                    tern_storage::Operation::Head,
                    &path,
                    e,
                )),
            }),
        }
    }

    /// Every recorded rejection, oldest first.
    pub async fn rejections(&self) -> Result<Vec<crate::state::Rejection>> {
        self.read("read rejections", |tx| {
            Ok(tx
                .scan_prefix(&keys::rejections())
                .map_err(Error::meta("scan rejections"))?
                .into_iter()
                .map(|(_, r)| r)
                .collect())
        })
        .await
    }
}

fn run_txn<T, F>(meta: &MetaStore, what: &'static str, mut f: F, write: bool) -> Result<T>
where
    F: FnMut(&mut MetaTxn<'_>) -> Result<T>,
{
    // The closure's own errors travel through tern-meta's error type as a marker and are
    // restored here, so callers see them unchanged.
    let mut ours: Option<Error> = None;
    let mut body = |tx: &mut MetaTxn<'_>| match f(tx) {
        Ok(v) => Ok(v),
        Err(Error::Meta { source, .. }) => Err(*source),
        Err(e) => {
            ours = Some(e);
            Err(tern_meta::Error::Invalid {
                what: "messaging transaction",
                reason: "aborted".into(),
            })
        }
    };
    let out = if write {
        meta.write(&mut body)
    } else {
        meta.read(&mut body)
    };
    match out {
        Ok(v) => Ok(v),
        Err(source) => Err(ours.take().unwrap_or(Error::Meta {
            what,
            source: Box::new(source),
        })),
    }
}

/// `d1->d2`: the channel's name in logs and in wrapped-key contexts.
pub fn channel_name(sender: &DeploymentId, receiver: &DeploymentId) -> String {
    format!("{sender}->{receiver}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_loads_human_durations_and_validates() {
        let c: MessagingConfig =
            serde_json::from_str(r#"{"poll_interval": "250ms", "lease": "2m"}"#).unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.lease, Duration::from_secs(120));
        c.validate().unwrap();
        assert!(serde_json::from_str::<MessagingConfig>(r#"{"pol_interval": "1s"}"#).is_err());
        for (bad, field) in [
            (
                MessagingConfig {
                    max_batch: 0,
                    ..MessagingConfig::default()
                },
                "max_batch",
            ),
            (
                MessagingConfig {
                    preparing_max_age: Duration::from_secs(48 * 3600),
                    ..MessagingConfig::default()
                },
                "preparing_max_age",
            ),
            (
                MessagingConfig {
                    poll_interval: Duration::ZERO,
                    ..MessagingConfig::default()
                },
                "poll_interval",
            ),
        ] {
            match bad.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
