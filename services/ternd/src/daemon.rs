//! One deployment, opened from its configuration: metadata store, buckets, keys, the
//! commit protocol (recovered before anything is served), tables, the message service and
//! the background workers.
//!
//! ```text
//!  open:  config ─▶ metadata store ─▶ volume, replication, peer buckets ─▶ keys
//!         ─▶ TxnManager + recover() ─▶ Tables ─▶ Replication ─▶ messaging Context
//!         (+ group and replication handlers) ─▶ PeerSet (peer buckets, sender wakers)
//!  start: supervisor ◀─ receiver, processor, cleaner, one sender per peer channel,
//!                       recovery (in-doubt commits), heartbeat, monitor,
//!                       replication control, copier, importer, shipper,
//!                       compaction (unless `compaction.interval = "0s"`)
//!  stop:  API stops taking requests, in-flight ones finish ─▶ workers stop after their
//!         unit ─▶ recover() finishes any in-doubt commit ─▶ exit 0
//! ```
//!
//! Deployment-group membership travels as messages: `create deployment` on a member adds
//! the peer, creates the outbound channel (its genesis goes to the peer's
//! `register channel`), and sends `tern.group` (the member list) to every peer; each
//! deployment also sends `tern.heartbeat` to its peers every `workers.heartbeat_interval`.
//! Receivers record what each peer said (`peer/<id>` rows) — that is what `show
//! deployments` shows beside the local list.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tern_clock::{SharedClock, SystemClock};
use tern_crypto::{
    CustomerKeys, KeyProvider, KmsConnection, KmsKeyProvider, LocalKeyProvider, StaticCredentials,
    SystemRandom,
};
use tern_messaging::{
    Bodies, ChannelGenesis, Cleaner, Commit, Context, Draft, GlobalMessage, Handler, HandlerError,
    Processor, Receiver, Sender,
};
use tern_meta::{DeploymentDpo, Dpo, Key, MetaStore, SqliteOptions};
use tern_replication::local::{ServiceParts, Services};
use tern_replication::{PeerSet, Peers, Replication, ReplicationWorker, Role};
use tern_storage::StoreConfig;
use tern_storage::layout::DeploymentId;
use tern_table::Tables;
use tern_txn::{TxnManager, TxnOptions, TxnState};
use tokio::sync::Notify;

use crate::config::{Config, KeysConfig};
use crate::error::{Error, Result};
use crate::supervisor::{
    MessagingWorker, ReplicationTask, Supervisor, Worker, WorkerState, WorkerStatus,
};

/// Message type of deployment-group membership lists.
pub const GROUP_TYPE: &str = "tern.group";
/// Message type of heartbeats.
pub const HEARTBEAT_TYPE: &str = "tern.heartbeat";

/// Counters of the API, for `/metrics`.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Requests served, by status class.
    pub requests: AtomicU64,
    /// Rows inserted (insert, load, merge source).
    pub rows_inserted: AtomicU64,
    /// Rows changed by delete/update/merge.
    pub rows_changed: AtomicU64,
    /// Request body bytes accepted for loads.
    pub bytes_loaded: AtomicU64,
    /// Rows returned by scans.
    pub rows_scanned: AtomicU64,
    /// Errors by kind.
    pub errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Commits reported in doubt.
    pub in_doubt: AtomicU64,
}

impl ApiCounters {
    /// Count an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }
}

/// What a peer last told this deployment (`peer/<id>` in the metadata store).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerViewDpo {
    /// The peer.
    pub id: String,
    /// The group members it listed in its last `tern.group` message.
    pub members: Vec<String>,
    /// When that arrived (here, ms).
    pub group_at_ms: Option<i64>,
    /// Its last heartbeat's creation time (its clock, ms).
    pub last_heartbeat_ms: Option<i64>,
    /// Messages handled from it.
    pub messages: u64,
}
impl Dpo for PeerViewDpo {
    const WHAT: &'static str = "peer view";
    const VERSION: u32 = 1;
}

/// An account token (only its SHA-256 is stored, under `tok/<hex>`; the first 16 hex
/// digits are its public id, which lists and revokes it).
///
/// The fields after `created_at_ms` were added later with `#[serde(default)]`: rows
/// written before read as read-write tokens that never expire (no format bump).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenDpo {
    /// The account it reaches.
    pub account: String,
    /// When it was made.
    pub created_at_ms: i64,
    /// Refused (403) on every request that writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Refused (401) from this instant (ms since the epoch) on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// What the operator called it (`ci`, `grafana`), shown by `tern token list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl Dpo for TokenDpo {
    const WHAT: &'static str = "account token";
    const VERSION: u32 = 1;
}

/// The metadata key of a token.
pub fn token_key(token: &str) -> Key {
    Key::root("tok").str(&hex(&sha2::Sha256::digest(token.as_bytes())))
}

/// The metadata key of a peer view.
pub fn peer_view_key(id: &str) -> Key {
    Key::root("peer").str(id)
}

/// The channel geneses exchanged with a peer (`link/<id>` in the metadata store), kept so
/// that a link cut short can be completed by running it again: adding the peer again
/// answers the genesis made the first time, and registering the same genesis again is a
/// no-op, while another genesis under the same id is refused
/// ([`Error::GenesisMismatch`]). Neither genesis can be rebuilt from the channels once
/// files have crossed them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDpo {
    /// Our channel to the peer, as made here.
    pub outbound: Option<ChannelGenesis>,
    /// The peer's channel to us, as registered here.
    pub inbound: Option<ChannelGenesis>,
}
impl Dpo for LinkDpo {
    const WHAT: &'static str = "peer link";
    const VERSION: u32 = 1;
}

/// The metadata key of a peer's [`LinkDpo`].
pub fn link_key(id: &str) -> Key {
    Key::root("link").str(id)
}

/// What [`Daemon::create_deployment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The genesis of our channel to the peer (none without a `[[peers]]` entry).
    pub genesis: Option<ChannelGenesis>,
    /// The peer is new here (false: it was known, and this completed or repeated a link).
    pub created: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Payload of [`GROUP_TYPE`] and [`HEARTBEAT_TYPE`] messages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupPayload {
    /// The sender's group members (ids).
    pub members: Vec<String>,
}

#[derive(Debug)]
struct GroupHandler {
    heartbeat: bool,
    clock: SharedClock,
}

#[async_trait]
impl Handler for GroupHandler {
    fn validate(&self, payload: &[u8]) -> std::result::Result<(), String> {
        serde_json::from_slice::<GroupPayload>(payload)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn handle(
        &self,
        msg: &GlobalMessage,
        _bodies: &Bodies,
    ) -> std::result::Result<Commit, HandlerError> {
        let payload: GroupPayload =
            serde_json::from_slice(&msg.payload).map_err(HandlerError::permanent)?;
        let from = msg.origin.to_string();
        let heartbeat = self.heartbeat;
        let at = msg.created_at_ms;
        let now = self.clock.now_millis();
        tracing::info!(from = %from, kind = if heartbeat { HEARTBEAT_TYPE } else { GROUP_TYPE },
            members = ?payload.members, "group message");
        Ok(Commit::with(move |tx| {
            let key = peer_view_key(&from);
            let mut v: PeerViewDpo = tx.get(&key)?.unwrap_or_else(|| PeerViewDpo {
                id: from.clone(),
                ..Default::default()
            });
            v.messages += 1;
            if heartbeat {
                v.last_heartbeat_ms = Some(v.last_heartbeat_ms.map_or(at, |h| h.max(at)));
            } else {
                v.members = payload.members.clone();
                v.group_at_ms = Some(now);
            }
            tx.put(&key, &v)
        }))
    }
}

/// A peer's bucket and, once the channel exists, the waker of its sender worker.
struct Peer {
    store: Arc<dyn ObjectStore>,
    waker: Option<Arc<Notify>>,
}

/// One running deployment.
pub struct Daemon {
    /// The configuration it was opened with.
    pub config: Config,
    /// This deployment.
    pub id: DeploymentId,
    /// The metadata store.
    pub meta: MetaStore,
    /// The commit protocol.
    pub txn: TxnManager,
    /// The tables.
    pub tables: Arc<Tables>,
    /// The message service.
    pub messaging: Context,
    /// The replication service (global entities, replicas, refresh, log shipping).
    pub replication: Replication,
    /// The peers replication talks to (kept in step with `peers`: buckets at open,
    /// sender wakers as senders start).
    pub peer_set: Arc<PeerSet>,
    /// The workers.
    pub supervisor: Supervisor,
    /// API counters.
    pub counters: ApiCounters,
    /// Wakes the recovery worker (a commit was in doubt).
    pub recover_wake: Arc<Notify>,
    /// The monitor's last snapshot (what `/metrics` and `/ui` serve).
    pub monitor: crate::monitor::MonitorState,
    clock: SharedClock,
    bucket: Arc<dyn ObjectStore>,
    peers: Mutex<HashMap<DeploymentId, Peer>>,
    stopping: AtomicBool,
    /// Set once recovery finished and the workers started (`/readyz`).
    ready: AtomicBool,
    /// Set at the shutdown signal: the probes answer 503 (`api.drain_period`).
    draining: AtomicBool,
    started: Instant,
    operator_digest: [u8; 32],
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn open_err<E: std::error::Error + Send + Sync + 'static>(
    field: &'static str,
) -> impl FnOnce(E) -> Error {
    move |e| Error::Open {
        field,
        source: Box::new(e),
    }
}

fn open_store(field: &'static str, c: &StoreConfig) -> Result<Arc<dyn ObjectStore>> {
    tern_storage::open_store(c).map_err(open_err(field))
}

/// Opens the key provider the configuration names, and the opener of the accounts'
/// customer-managed keys (KMS RSA keys in the same KMS when the keys are there, X25519
/// key files always). Local keys are created only when `may_create` (a metadata store
/// that already holds accounts needs the keys its data was written with: new ones would
/// leave that data unreadable).
pub async fn open_keys(
    keys: &KeysConfig,
    may_create: bool,
) -> Result<(Arc<dyn KeyProvider>, CustomerKeys)> {
    let random = SystemRandom::shared();
    match keys {
        KeysConfig::None => Err(Error::Config {
            field: "keys".into(),
            reason: "is required".into(),
        }),
        KeysConfig::Local { dir, create, join } => {
            let has_keys = dir.join(tern_crypto::provider::GMK_FILE).exists()
                || dir.join(tern_crypto::provider::MASTER_KEY_FILE).exists();
            if !has_keys && *create && !may_create {
                return Err(Error::Open {
                    field: "keys.dir",
                    source: format!(
                        "{} holds no keys, but the metadata store already holds accounts: \
                         refusing to create new keys (the existing data could not be read)",
                        dir.display()
                    )
                    .into(),
                });
            }
            let p = if has_keys || !*create {
                LocalKeyProvider::open(dir, random)
            } else if let Some(member) = join {
                LocalKeyProvider::create_joining(dir, member, random)
            } else {
                LocalKeyProvider::create(dir, random)
            };
            Ok((
                Arc::new(p.map_err(open_err("keys.dir"))?),
                CustomerKeys::local(),
            ))
        }
        KeysConfig::Kms {
            gmk_key_id,
            master_key_id,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
        } => {
            let credentials = match (access_key_id, secret_access_key) {
                (Some(a), Some(s)) => Some(StaticCredentials {
                    access_key_id: a.clone(),
                    secret_access_key: s.clone(),
                }),
                _ => None,
            };
            let client = tern_crypto::kms_client(&KmsConnection {
                endpoint: endpoint.clone(),
                region: region.clone(),
                credentials,
            })
            .await;
            Ok((
                Arc::new(KmsKeyProvider::new(
                    client.clone(),
                    gmk_key_id.clone(),
                    master_key_id.clone(),
                )),
                CustomerKeys::with_kms(client),
            ))
        }
    }
}

impl Daemon {
    /// Opens everything the configuration names and runs recovery. Nothing is served and
    /// no worker runs yet.
    /// `TERN_CRASH_AT` arms crash points (tests; see [`crate::crash`]).
    pub async fn open(config: Config) -> Result<Arc<Daemon>> {
        Self::open_with(config, crate::crash::from_env()?, SystemClock::shared()).await
    }

    /// [`Daemon::open`] with the commit protocol's crash points to arm (tests of what a
    /// client sees when the daemon dies mid-commit, and of the restart after it).
    pub async fn open_with_crash_points(
        config: Config,
        txn: tern_txn::CrashPoints,
    ) -> Result<Arc<Daemon>> {
        let crash = crate::crash::Armed {
            txn,
            ..Default::default()
        };
        Self::open_with(config, crash, SystemClock::shared()).await
    }

    /// [`Daemon::open`] with the crash points to arm (without `TERN_CRASH_AT`'s
    /// self-kill: a fired point fails its worker, as a test in this process wants) and the
    /// clock everything here reads (a `ManualClock` in tests that move time by hand).
    pub async fn open_with(
        config: Config,
        crash: crate::crash::Armed,
        clock: SharedClock,
    ) -> Result<Arc<Daemon>> {
        config.validate()?;
        let id = DeploymentId::new(config.deployment_id.as_str())?;
        if let Some(parent) = config.metadata_path.parent() {
            std::fs::create_dir_all(parent).map_err(open_err("metadata_path"))?;
        }
        let meta = MetaStore::open_sqlite(&config.metadata_path, SqliteOptions::default())
            .map_err(open_err("metadata_path"))?;
        let volume = open_store("volume.url", &config.volume)?;
        let bucket = open_store("replication.url", &config.replication.bucket)?;
        // A store that cannot be listed is found now rather than at the first request.
        use futures::StreamExt as _;
        if let Some(Err(e)) = volume.list(None).next().await {
            return Err(open_err("volume.url")(e));
        }
        if let Some(Err(e)) = bucket.list(None).next().await {
            return Err(open_err("replication.url")(e));
        }
        let mut peers = HashMap::new();
        for p in &config.peers {
            let pid = DeploymentId::new(p.id.as_str())?;
            let store = tern_storage::open_store(&p.bucket).map_err(|e| Error::Config {
                field: format!("peers[{}].bucket.url", p.id),
                reason: e.to_string(),
            })?;
            peers.insert(pid, Peer { store, waker: None });
        }
        let has_data = !meta.read(|tx| tx.list_accounts())?.is_empty();
        let (provider, customer_keys) = open_keys(&config.keys, !has_data).await?;
        // A key provider that cannot derive keys is found now (KMS unreachable, wrong id).
        provider
            .derive_wrap_key(tern_crypto::DiversifierPolicy::default().current(&*clock))
            .await
            .map_err(open_err("keys"))?;
        let txn = TxnManager::open_with_crash_points(
            id.clone(),
            meta.clone(),
            Arc::clone(&volume),
            Arc::clone(&provider),
            Arc::clone(&clock),
            TxnOptions {
                lock_timeout: config.txn.lock_timeout,
                ..TxnOptions::default()
            },
            crash.txn,
        )?;
        let report = txn.recover().await?;
        tracing::info!(
            rolled_back = report.rolled_back.len(),
            rolled_forward = report.rolled_forward.len(),
            finished = report.finished.len(),
            files_removed = report.files_removed,
            "recovery done"
        );
        let group_handlers: Vec<(&'static str, Arc<dyn Handler>)> =
            [(GROUP_TYPE, false), (HEARTBEAT_TYPE, true)]
                .into_iter()
                .map(|(t, heartbeat)| {
                    let h: Arc<dyn Handler> = Arc::new(GroupHandler {
                        heartbeat,
                        clock: Arc::clone(&clock),
                    });
                    (t, h)
                })
                .collect();
        let Services {
            tables,
            repl: replication,
            ctx: messaging,
        } = tern_replication::local::services(ServiceParts {
            me: id.clone(),
            region: config.region.clone(),
            meta: meta.clone(),
            volume: Arc::clone(&volume),
            bucket: Arc::clone(&bucket),
            provider: Arc::clone(&provider),
            txn: txn.clone(),
            clock: Arc::clone(&clock),
            replication: config.replication.settings.clone(),
            messaging: config.messaging.clone(),
            handlers: group_handlers,
            customer_keys,
            crash: crash.messaging,
        })?;
        // Stores written before account master keys re-wrap their table keys now, before
        // anything is served (one metadata transaction; nothing to do once done).
        let migrated = tables.account_keys().migrate().await?;
        if migrated != tern_table::Migration::default() {
            tracing::info!(
                accounts = migrated.accounts,
                tables = migrated.tables,
                "table keys moved under account master keys"
            );
        }
        let peer_set = Arc::new(PeerSet::new(messaging.clone()));
        for (pid, p) in &peers {
            peer_set.add(pid.clone(), Arc::clone(&p.store));
        }
        // This deployment is a member of its own group.
        let me = DeploymentDpo {
            id: id.clone(),
            region: config.region.clone(),
            cloud: config.cloud.clone(),
            replication_bucket_url: config.replication.bucket.url.clone(),
            credentials_ref: None,
            added_at_ms: clock.now_millis(),
        };
        meta.write(|tx| match tx.get_deployment(&me.id)? {
            Some(mut d) => {
                d.region = me.region.clone();
                d.cloud = me.cloud.clone();
                d.replication_bucket_url = me.replication_bucket_url.clone();
                tx.update_deployment(&d)
            }
            None => tx.add_deployment(&me),
        })?;
        let operator_digest = sha2::Sha256::digest(config.operator_token.as_bytes()).into();
        Ok(Arc::new(Daemon {
            supervisor: Supervisor::new(config.workers.error_backoff),
            config,
            id,
            meta,
            txn,
            tables,
            messaging,
            replication,
            peer_set,
            counters: ApiCounters::default(),
            recover_wake: Arc::new(Notify::new()),
            monitor: Default::default(),
            clock,
            bucket,
            peers: Mutex::new(peers),
            stopping: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            operator_digest,
        }))
    }

    /// The clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_millis()
    }

    /// The clock, shared.
    pub fn clock(&self) -> SharedClock {
        Arc::clone(&self.clock)
    }

    /// This deployment's replication bucket (peers' inbound stages are there).
    pub fn bucket(&self) -> &Arc<dyn ObjectStore> {
        &self.bucket
    }

    /// Forgets writes' idempotency keys older than `api.idempotency_retention` (run by the
    /// recovery worker); how many.
    pub fn prune_idempotency_keys(&self) -> Result<usize> {
        let retention =
            i64::try_from(self.config.api.idempotency_retention.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .txn
            .prune_idempotency(self.now_ms().saturating_sub(retention))?)
    }

    /// Seconds since the daemon opened.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether shutdown began.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether it is ready for traffic: recovery finished (it does in [`Daemon::open`]),
    /// the workers were started, and shutdown has not begun.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining()
    }

    /// Whether the shutdown signal came (the probes answer 503; requests are still
    /// served until `api.drain_period` passed, then [`Daemon::stopping`]).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst) || self.stopping()
    }

    /// Marks the shutdown signal as come.
    pub fn drain_now(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Marks it ready (after [`Daemon::start_workers`]).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Marks shutdown as begun: new requests are refused.
    pub fn stopping_now(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// True when `token` is the operator's (compared by digest, in constant time).
    pub fn is_operator(&self, token: &str) -> bool {
        let d: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        d.iter()
            .zip(self.operator_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<DeploymentId, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resynchronises the inbound channel from `peer` past a file it cannot read (the
    /// running receiver and this one agree through the channel row).
    pub async fn resync_channel(
        &self,
        peer: &DeploymentId,
    ) -> std::result::Result<tern_messaging::Resynced, tern_messaging::Error> {
        Receiver::new(self.messaging.clone(), Arc::clone(&self.bucket))
            .resync(peer)
            .await
    }

    /// Starts every background worker.
    pub async fn start_workers(self: &Arc<Self>) -> Result<()> {
        let store = &self.bucket;
        let ctx = &self.messaging;
        let s = &self.supervisor;
        s.spawn(Box::new(MessagingWorker(Receiver::new(
            ctx.clone(),
            Arc::clone(store),
        ))));
        s.spawn(Box::new(MessagingWorker(Processor::new(
            ctx.clone(),
            Arc::clone(store),
        ))));
        s.spawn(Box::new(MessagingWorker(Cleaner::new(
            ctx.clone(),
            Arc::clone(store),
        ))));
        let members = self.meta.read(|tx| tx.list_deployments())?;
        for d in members.iter().filter(|d| d.id != self.id) {
            if self.messaging.outbound(&d.id).await?.is_some() {
                self.start_sender(&d.id)?;
            }
        }
        s.spawn(Box::new(RecoverWorker {
            daemon: Arc::downgrade(self),
            interval: self.config.workers.recover_interval,
            wake: Arc::clone(&self.recover_wake),
            status: WorkerStatus::default(),
            last: None,
        }));
        s.spawn(Box::new(HeartbeatWorker {
            daemon: Arc::downgrade(self),
            interval: self.config.workers.heartbeat_interval,
            status: WorkerStatus::default(),
            sent: 0,
        }));
        s.spawn(Box::new(crate::monitor::MonitorWorker::new(
            Arc::downgrade(self),
            self.config.workers.monitor_interval,
        )));
        if self.config.compaction.enabled() {
            s.spawn(Box::new(CompactionWorker {
                daemon: Arc::downgrade(self),
                waited: false,
                interval: self.config.compaction.interval,
                options: self.config.compaction.options(),
                status: WorkerStatus::default(),
                totals: CompactionTotals::default(),
            }));
        }
        let peers: Arc<dyn Peers> = Arc::clone(&self.peer_set) as Arc<dyn Peers>;
        for role in Role::ALL {
            s.spawn(Box::new(ReplicationTask::new(ReplicationWorker::new(
                self.replication.clone(),
                Arc::clone(&peers),
                role,
            ))));
        }
        Ok(())
    }

    /// Starts the sender worker of the channel to `peer`; API-side senders share its
    /// waker, so a message sent by the API goes out at once.
    fn start_sender(&self, peer: &DeploymentId) -> Result<()> {
        let mut peers = self.lock_peers();
        let Some(p) = peers.get_mut(peer) else {
            tracing::warn!(peer = %peer, "group member without a [[peers]] entry: not sending to it");
            return Ok(());
        };
        if p.waker.is_some() {
            return Ok(());
        }
        let worker = Sender::new(self.messaging.clone(), peer.clone(), Arc::clone(&p.store));
        let waker = worker.waker();
        p.waker = Some(Arc::clone(&waker));
        drop(peers);
        // Replication sends on the same channel, sharing the worker's waker.
        self.peer_set.set_waker(peer, waker);
        self.supervisor.spawn(Box::new(MessagingWorker(worker)));
        Ok(())
    }

    /// The ids of the group members other than this one.
    pub fn member_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .meta
            .read(|tx| tx.list_deployments())?
            .into_iter()
            .map(|d| d.id.to_string())
            .collect())
    }

    /// Sends a message of `message_type` to every peer with a channel; how many got it.
    pub async fn broadcast(&self, message_type: &str) -> Result<usize> {
        let payload = serde_json::to_vec(&GroupPayload {
            members: self.member_ids()?,
        })
        .map_err(|e| Error::internal("encode group message")(e.to_string()))?;
        let senders: Vec<Sender> = {
            let peers = self.lock_peers();
            peers
                .iter()
                .filter_map(|(id, p)| {
                    let waker = p.waker.as_ref()?;
                    Some(
                        Sender::new(self.messaging.clone(), id.clone(), Arc::clone(&p.store))
                            .sharing_waker(Arc::clone(waker)),
                    )
                })
                .collect()
        };
        let mut n = 0;
        for s in senders {
            s.send(Draft::new(message_type, payload.clone())).await?;
            n += 1;
        }
        Ok(n)
    }

    /// `create deployment`: adds `d` to the group, creates the outbound channel (when this
    /// deployment has credentials for the peer's bucket), registers the peer's channel to
    /// us when its genesis is given, and tells every peer the new member list. Returns the
    /// genesis of our channel to the peer, for the peer's `register channel`.
    pub async fn create_deployment(
        &self,
        mut d: DeploymentDpo,
        peer_genesis: Option<ChannelGenesis>,
    ) -> Result<Added> {
        if d.id == self.id {
            return Err(Error::Invalid(format!(
                "{} is this deployment itself",
                d.id
            )));
        }
        let configured = self.config.peers.iter().find(|p| p.id == d.id.as_str());
        if d.replication_bucket_url.is_empty() {
            d.replication_bucket_url = configured.map(|p| p.bucket.url.clone()).unwrap_or_default();
        }
        d.added_at_ms = self.now_ms();
        // A peer known already is added again by a link run again after it was cut
        // short: the record is kept, the genesis made the first time answered, and the
        // peer's genesis registered unless it is the same one (see `LinkDpo`).
        let known = self.meta.read(|tx| tx.get_deployment(&d.id))?.is_some();
        if !known {
            self.meta.write(|tx| tx.add_deployment(&d))?;
        }
        let link_key = link_key(d.id.as_str());
        let link: LinkDpo = self.meta.read(|tx| tx.get(&link_key))?.unwrap_or_default();
        let genesis = if let Some(g) = link.outbound {
            self.start_sender(&d.id)?;
            Some(g)
        } else if configured.is_some() {
            // Before any file was written this answers the same genesis again; after,
            // a channel made without a `LinkDpo` (an older version) is a conflict.
            let g = self.messaging.create_outbound(&d.id).await?;
            self.meta.write(|tx| {
                let mut l: LinkDpo = tx.get(&link_key)?.unwrap_or_default();
                l.outbound = Some(g.clone());
                tx.put(&link_key, &l)
            })?;
            self.start_sender(&d.id)?;
            Some(g)
        } else {
            tracing::warn!(peer = %d.id, "no [[peers]] entry: added to the group without a channel to it");
            None
        };
        if let Some(g) = peer_genesis {
            self.register_channel(&g).await?;
        }
        let n = self.broadcast(GROUP_TYPE).await?;
        self.announce_global_entities();
        tracing::info!(peer = %d.id, told = n, known, "deployment added to the group");
        Ok(Added {
            genesis,
            created: !known,
        })
    }

    /// Registers the channel a peer created to us.
    pub async fn register_channel(&self, genesis: &ChannelGenesis) -> Result<()> {
        let known = self
            .meta
            .read(|tx| tx.get_deployment(&genesis.sender))?
            .is_some();
        if !known {
            return Err(Error::NotFound {
                what: "deployment",
                name: genesis.sender.to_string(),
            });
        }
        let key = link_key(genesis.sender.as_str());
        let link: LinkDpo = self.meta.read(|tx| tx.get(&key))?.unwrap_or_default();
        match &link.inbound {
            // Registered already (a link run again): nothing to do.
            Some(g) if g == genesis => return Ok(()),
            Some(g) => {
                return Err(Error::GenesisMismatch {
                    peer: genesis.sender.to_string(),
                    known: g.first_seq,
                    given: genesis.first_seq,
                });
            }
            None => {}
        }
        self.messaging.register_inbound(genesis).await?;
        self.meta.write(|tx| {
            let mut l: LinkDpo = tx.get(&key)?.unwrap_or_default();
            l.inbound = Some(genesis.clone());
            tx.put(&key, &l)
        })?;
        self.announce_global_entities();
        Ok(())
    }

    /// Has replication announce our global entities at once (a new peer or channel).
    /// A failure is logged: the entities are re-announced every
    /// `replication.announce_interval` anyway.
    fn announce_global_entities(&self) {
        if let Err(e) = self.replication.announce_soon() {
            tracing::warn!(error = %e, "could not schedule the announcement of global entities");
        }
    }

    /// Transactions not in a final state, by state.
    pub fn unfinished_transactions(&self) -> Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for t in self.txn.transactions()? {
            if !t.state.is_final() {
                *out.entry(state_name(t.state).to_string()).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Messages waiting, by direction and state, summed over the channels (see
    /// [`Daemon::queue_depths`]; Sent messages are kept records, not counted).
    pub async fn message_states(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for q in self.queue_depths().await? {
            *out.entry(format!("{}/{}", q.direction.name(), q.state))
                .or_default() += q.depth;
        }
        Ok(out)
    }

    /// Every channel's queue depths (per peer, direction and state), counted from the
    /// message service's indexes of live work: the cost follows what waits, not what went
    /// through.
    pub async fn queue_depths(&self) -> Result<Vec<tern_messaging::ChannelDepth>> {
        Ok(self.messaging.queue_depths().await?)
    }

    /// Stops the workers and completes in-doubt commits. Returns the unfinished
    /// transactions left (none after a clean stop).
    pub async fn shutdown(&self) -> Result<BTreeMap<String, usize>> {
        self.stopping.store(true, Ordering::SeqCst);
        let abandoned = self
            .supervisor
            .shutdown(self.config.workers.shutdown_grace)
            .await;
        self.txn.close_reservations();
        let report = self.txn.recover().await?;
        let left = self.unfinished_transactions()?;
        tracing::info!(
            abandoned_workers = abandoned,
            rolled_forward = report.rolled_forward.len(),
            unfinished = ?left,
            "stopped"
        );
        Ok(left)
    }
}

/// The name of a transaction state.
pub fn state_name(s: TxnState) -> &'static str {
    match s {
        TxnState::Active => "active",
        TxnState::PreCommitting => "pre_committing",
        TxnState::Prepared => "prepared",
        TxnState::Committing => "committing",
        TxnState::Committed => "committed",
        TxnState::Aborted => "aborted",
    }
}

/// Completes commits reported in doubt, and forgets old finished transaction rows and
/// expired idempotency keys.
struct RecoverWorker {
    daemon: std::sync::Weak<Daemon>,
    interval: Duration,
    wake: Arc<Notify>,
    status: WorkerStatus,
    last: Option<Instant>,
}

#[async_trait]
impl Worker for RecoverWorker {
    fn name(&self) -> String {
        "recovery".into()
    }
    async fn work(&mut self) -> Result<WorkerState> {
        let Some(d) = self.daemon.upgrade() else {
            return Ok(WorkerState::Idle);
        };
        if self.last.is_some_and(|t| t.elapsed() < self.interval / 2) {
            return Ok(WorkerState::Idle);
        }
        self.last = Some(Instant::now());
        let r = d.txn.recover().await?;
        let retention =
            i64::try_from(d.config.workers.txn_retention.as_millis()).unwrap_or(i64::MAX);
        let pruned = d.txn.prune_finished(d.now_ms().saturating_sub(retention))?;
        let keys_pruned = d.prune_idempotency_keys()?;
        let done = r.rolled_forward.len() + r.finished.len();
        if done > 0 || pruned > 0 || keys_pruned > 0 {
            self.status.busy_units += 1;
        }
        self.status.figures = vec![
            ("rolled_forward", r.rolled_forward.len() as u64),
            ("pruned", pruned as u64),
            ("idempotency_keys_pruned", keys_pruned as u64),
        ];
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        tokio::select! {
            () = tokio::time::sleep(self.interval) => {}
            () = self.wake.notified() => { self.last = None; }
        }
    }
    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
}

/// Sends `tern.heartbeat` to every peer.
struct HeartbeatWorker {
    daemon: std::sync::Weak<Daemon>,
    interval: Duration,
    status: WorkerStatus,
    sent: u64,
}

#[async_trait]
impl Worker for HeartbeatWorker {
    fn name(&self) -> String {
        "heartbeat".into()
    }
    async fn work(&mut self) -> Result<WorkerState> {
        let Some(d) = self.daemon.upgrade() else {
            return Ok(WorkerState::Idle);
        };
        let n = d.broadcast(HEARTBEAT_TYPE).await?;
        self.sent += n as u64;
        if n > 0 {
            self.status.busy_units += 1;
        }
        self.status.figures = vec![("heartbeats_sent", self.sent)];
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await;
    }
    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
}

/// What the compaction worker did since the daemon started.
#[derive(Debug, Default, Clone, Copy)]
struct CompactionTotals {
    rounds: u64,
    commits: u64,
    files_removed: u64,
    files_added: u64,
    conflicts: u64,
    failures: u64,
}

/// Merges the small files of every table of the local and primary databases
/// ([`Tables::compact`]). A secondary replica is never compacted here: it changes only by
/// replication, which brings it its primary's compaction commits. A compaction that lost
/// a race with a writer (one of its inputs was removed meanwhile) is counted and tried
/// again at the next round, on the new version; a table that fails does not stop the
/// others.
struct CompactionWorker {
    daemon: std::sync::Weak<Daemon>,
    /// The first round waits an interval: a deployment that was down (an old primary)
    /// hears the group's newer epoch first and never compacts under a stale one (such a
    /// compaction would come back as a conflict record of rows it did not change).
    waited: bool,
    interval: Duration,
    options: tern_table::CompactionOptions,
    status: WorkerStatus,
    totals: CompactionTotals,
}

impl CompactionWorker {
    /// The live tables of every database that may compact: local or primary, not dropped.
    fn tables(d: &Daemon) -> Result<Vec<tern_meta::TableDpo>> {
        Ok(d.meta.read(|tx| {
            let mut out = Vec::new();
            for a in tx.list_accounts()? {
                for db in tx.list_databases(&a.name)? {
                    if db.dropped || db.role == tern_meta::DatabaseRole::Secondary {
                        continue;
                    }
                    out.extend(tx.list_tables(&db.id)?.into_iter().filter(|t| !t.dropped));
                }
            }
            Ok(out)
        })?)
    }
}

#[async_trait]
impl Worker for CompactionWorker {
    fn name(&self) -> String {
        "compaction".into()
    }
    async fn work(&mut self) -> Result<WorkerState> {
        if !std::mem::replace(&mut self.waited, true) {
            return Ok(WorkerState::Idle);
        }
        let Some(d) = self.daemon.upgrade() else {
            return Ok(WorkerState::Idle);
        };
        let (mut committed, mut failed) = (0, None);
        for t in Self::tables(&d)? {
            if d.stopping() {
                break;
            }
            match d.tables.compact(&t.id, &self.options).await {
                Ok(info) if info.committed => {
                    committed += 1;
                    self.totals.files_removed += info.files_removed as u64;
                    self.totals.files_added += info.files_added as u64;
                }
                Ok(_) => {}
                Err(e) if e.is_conflict() => {
                    self.totals.conflicts += 1;
                    tracing::debug!(table = %t.id, error = %e, "compaction lost a race; retried next round");
                }
                // A database that became a secondary (or was fenced) since it was listed.
                Err(
                    tern_table::Error::ReadOnlyReplica { .. } | tern_table::Error::NotWritable(_),
                ) => {}
                Err(e) => {
                    self.totals.failures += 1;
                    failed = Some(format!("{}: {e}", t.id));
                    tracing::warn!(table = %t.id, error = %e, "compaction failed; retried next round");
                }
            }
        }
        self.totals.rounds += 1;
        self.totals.commits += committed;
        self.status.errors = self.totals.failures;
        self.status.last_error = failed;
        let c = self.totals;
        self.status.figures = vec![
            ("rounds", c.rounds),
            ("commits", c.commits),
            ("files_removed", c.files_removed),
            ("files_added", c.files_added),
            ("conflicts", c.conflicts),
            ("failures", c.failures),
        ];
        if committed > 0 {
            self.status.busy_units += 1;
            // A table with more than max_files small files needs another commit now.
            return Ok(WorkerState::Busy);
        }
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await;
    }
    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's own stored objects keep their bytes: a format change must be on
    /// purpose (bump `VERSION`, convert old rows).
    #[test]
    fn stored_formats_are_golden() {
        let meta = MetaStore::in_memory();
        let token = TokenDpo {
            account: "acme".into(),
            created_at_ms: 1_700_000_000_000,
            read_only: false,
            expires_at_ms: None,
            name: None,
        };
        let view = PeerViewDpo {
            id: "d2".into(),
            members: vec!["d1".into(), "d2".into()],
            group_at_ms: Some(5),
            last_heartbeat_ms: Some(7),
            messages: 3,
        };
        let (tk, vk) = (token_key("tern_secret"), peer_view_key("d2"));
        let raw = meta
            .write(|tx| {
                tx.put(&tk, &token)?;
                tx.put(&vk, &view)?;
                let t = tx.raw().get(tk.as_bytes())?.unwrap_or_default();
                let v = tx.raw().get(vk.as_bytes())?.unwrap_or_default();
                Ok((t, v))
            })
            .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&raw.0),
            r#"{"v":1,"d":{"account":"acme","created_at_ms":1700000000000}}"#
        );
        assert_eq!(
            String::from_utf8_lossy(&raw.1),
            r#"{"v":1,"d":{"id":"d2","members":["d1","d2"],"group_at_ms":5,"last_heartbeat_ms":7,"messages":3}}"#
        );
        // Only the token's digest is in the key, never the token.
        assert!(!tk.to_string().contains("tern_secret"));
        let back: Option<TokenDpo> = meta.read(|tx| tx.get(&tk)).expect("read");
        assert_eq!(back, Some(token));
        // A read-only token with an expiry and a name: the optional fields appear only
        // when set, so tokens made before them keep their bytes (above).
        let limited = TokenDpo {
            account: "acme".into(),
            created_at_ms: 1_700_000_000_000,
            read_only: true,
            expires_at_ms: Some(1_700_000_600_000),
            name: Some("grafana".into()),
        };
        let tk2 = token_key("tern_other");
        let raw = meta
            .write(|tx| {
                tx.put(&tk2, &limited)?;
                Ok(tx.raw().get(tk2.as_bytes())?.unwrap_or_default())
            })
            .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&raw),
            r#"{"v":1,"d":{"account":"acme","created_at_ms":1700000000000,"read_only":true,"expires_at_ms":1700000600000,"name":"grafana"}}"#
        );
        let back: Option<TokenDpo> = meta.read(|tx| tx.get(&tk2)).expect("read");
        assert_eq!(back, Some(limited));
    }
}
