//! The replication service of one deployment: configuration, the operator and tenant
//! commands (global accounts and databases, replicas, refresh), and status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tern_clock::SharedClock;
use tern_crypto::{CachedWrapKeys, DiversifierPolicy, SharedRandom};
use tern_meta::{AccountDpo, AccountKind, DatabaseDpo, DatabaseRole, MetaStore, MetaTxn};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};
use tern_table::Tables;
use tern_txn::TxnManager;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::model::{self, EntityKind, GlobalEntity, UNSUBSCRIBE_TYPE, Unsubscribe};
use crate::state::{
    self, AllowedDpo, AnnounceDpo, CustomerKeyDpo, DownstreamDpo, GROUP_INDEX, KnownEntitiesDpo,
    OutboxDpo, PendingRefresh, ReplicaDpo, keys,
};

/// Replication settings (`[replication]` of the daemon's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Global entities are re-sent to every peer this often even without change.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// Every replica asks for a refresh this often (drift correction); `0s` = never.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often the shipper looks for new log records (it is also woken by commits).
    #[serde(with = "humantime_serde")]
    pub ship_interval: Duration,
    /// How often the control worker looks for work.
    #[serde(with = "humantime_serde")]
    pub control_interval: Duration,
    /// File copies in flight per job.
    pub copy_concurrency: usize,
    /// Log records shipped per downstream replica per unit of work.
    pub ship_batch: usize,
    /// A refresh's import commits its tables together until this many files (added and
    /// removed) are gathered, then goes on in a new transaction: a small database imports
    /// as one transaction, a large one never holds more than this (or one table, which is
    /// always whole) in memory.
    pub import_batch_files: usize,
    /// Files (added and removed) a line of a snapshot's sections file lists at most: what
    /// a replica holds of the response at once, besides the table it gathers.
    pub snapshot_section_files: usize,
    /// A log shipment or refresh request whose payload is larger than this travels as a
    /// body file (it is sent inline otherwise; the message service caps inline payloads
    /// at its `max_payload_bytes`).
    pub inline_max_bytes: usize,
    /// Attempts of a copy or import job before it is marked failed (see
    /// [`crate::jobs`]).
    pub job_attempts: u32,
    /// Wait after a job's first failed attempt (doubling after each, at most 5 minutes).
    #[serde(with = "humantime_serde")]
    pub job_backoff: Duration,
    /// A log record that cannot be applied yet (an earlier one is missing) is retried this
    /// many times; then the replica asks for a refresh instead.
    pub gap_attempts: u32,
    /// How often a heartbeat (availability, epochs, progress) goes to every peer.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A peer silent this long is unavailable (half of it: suspect).
    #[serde(with = "humantime_serde")]
    pub unavailable_after: Duration,
    /// How long a failover waits for what already arrived to be applied before it judges
    /// the loss (what is left counts as lost).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a failover candidate waits for the group's majority to accept its epoch.
    #[serde(with = "humantime_serde")]
    pub vote_timeout: Duration,
    /// How long a planned switchover waits for the candidate to apply the primary's last
    /// transaction and for the group to accept it (then it is cancelled: the primary takes
    /// commits again).
    #[serde(with = "humantime_serde")]
    pub switchover_timeout: Duration,
    /// This deployment's API URL as clients should reach it (published in heartbeats, so
    /// that clients are redirected to a group's primary).
    pub public_url: Option<String>,
    /// Availability notifications are POSTed here as JSON (`http://host:port/path`),
    /// retried with backoff.
    pub webhook: Option<String>,
    /// Log records are kept at least this long, then deleted once every subscribed
    /// downstream replica has them; a replica still missing records older than this is
    /// asked to refresh instead, so the log never grows without bound (see
    /// [`crate::prune`]). `0s` = keep the log for ever.
    #[serde(with = "humantime_serde")]
    pub log_retention: Duration,
    /// How often the control worker prunes the log (and notes how old the records are).
    #[serde(with = "humantime_serde")]
    pub log_prune_interval: Duration,
    /// Log records deleted per batch (one listing, then one delete each).
    pub log_prune_batch: usize,
    /// A replica's refresh imports each file as soon as it lands in the inbound stage,
    /// while the upstream still copies the others (the upstream sends the plan first);
    /// `false`: the response comes once every file is copied, and is imported after.
    pub import_as_files_land: bool,
    /// An import waiting for the files of a response sent ahead of them gives the
    /// attempt up (backing off, see [`crate::jobs`]) when no file landed for this long.
    #[serde(with = "humantime_serde")]
    pub landing_timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            announce_interval: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(3600),
            ship_interval: Duration::from_millis(200),
            control_interval: Duration::from_millis(500),
            copy_concurrency: 4,
            ship_batch: 64,
            import_batch_files: 10_000,
            snapshot_section_files: crate::model::SECTION_FILES,
            inline_max_bytes: 256 << 10,
            job_attempts: 5,
            job_backoff: Duration::from_secs(1),
            gap_attempts: 3,
            heartbeat_interval: Duration::from_secs(5),
            unavailable_after: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            vote_timeout: Duration::from_secs(10),
            switchover_timeout: Duration::from_secs(30),
            public_url: None,
            webhook: None,
            log_retention: Duration::from_secs(7 * 24 * 3600),
            log_prune_interval: Duration::from_secs(600),
            log_prune_batch: 1000,
            import_as_files_land: true,
            landing_timeout: Duration::from_secs(600),
        }
    }
}

impl ReplicationConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.copy_concurrency == 0
            || self.ship_batch == 0
            || self.inline_max_bytes == 0
            || self.job_attempts == 0
        {
            return Err(Error::invalid(
                "replication config",
                "copy_concurrency, ship_batch, inline_max_bytes and job_attempts must be at least 1",
            ));
        }
        if self.heartbeat_interval.is_zero()
            || self.unavailable_after < self.heartbeat_interval.saturating_mul(2)
        {
            return Err(Error::invalid(
                "replication config",
                "heartbeat_interval must be more than 0 and unavailable_after at least twice heartbeat_interval",
            ));
        }
        if let Some(w) = &self.webhook
            && !w.starts_with("http://")
        {
            return Err(Error::invalid(
                "replication config",
                format!("webhook {w:?}: only http:// URLs are supported"),
            ));
        }
        if self.log_prune_batch == 0 {
            return Err(Error::invalid(
                "replication config",
                "log_prune_batch must be at least 1",
            ));
        }
        if !self.log_retention.is_zero() && self.log_prune_interval.is_zero() {
            return Err(Error::invalid(
                "replication config",
                "log_prune_interval must be more than 0 when log_retention is set (log_retention = \"0s\" keeps the log for ever)",
            ));
        }
        if self.ship_interval.is_zero() || self.control_interval.is_zero() {
            return Err(Error::invalid(
                "replication config",
                "ship_interval and control_interval must be more than 0",
            ));
        }
        Ok(())
    }
}

/// Cumulative figures since start (the persistent per-replica figures are in the metadata
/// store, see [`ReplicaStatus`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// Files copied (inbound stages and volume).
    pub files_copied: AtomicU64,
    /// Bytes copied.
    pub bytes_copied: AtomicU64,
    /// Log records shipped.
    pub records_shipped: AtomicU64,
    /// Log records applied.
    pub records_applied: AtomicU64,
    /// Replicated table changes skipped as already applied (idempotent re-delivery).
    pub records_skipped: AtomicU64,
    /// Drift repairs committed here: a refresh's, or one shipped from the upstream and
    /// set right here too (each is logged, so the replicas downstream get it).
    pub repairs: AtomicU64,
    /// Log shipments an earlier attempt left unfinished, abandoned and shipped again.
    pub shipments_retried: AtomicU64,
    /// Copy and import jobs given up after their attempts.
    pub jobs_failed: AtomicU64,
    /// Snapshots served.
    pub snapshots_served: AtomicU64,
    /// Snapshots imported.
    pub snapshots_imported: AtomicU64,
    /// Refresh requests sent.
    pub refreshes_requested: AtomicU64,
    /// Replication messages refused (malformed, unknown group, not from the upstream).
    pub rejected: AtomicU64,
    /// Shipments and snapshots refused because they were made under an older epoch.
    pub stale_epoch: AtomicU64,
    /// Newer epochs learned.
    pub epochs_learned: AtomicU64,
    /// Failovers made here.
    pub failovers: AtomicU64,
    /// Conflict records kept.
    pub conflicts_kept: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What a deployment's replication is built from.
#[derive(Debug, Clone)]
pub struct Parts {
    /// This deployment.
    pub me: DeploymentId,
    /// Its region.
    pub region: String,
    /// Its metadata store.
    pub meta: MetaStore,
    /// Its tables.
    pub tables: Arc<Tables>,
    /// Its commit protocol (log records, Lamport clocks).
    pub txn: TxnManager,
    /// Its volume.
    pub volume: Arc<dyn ObjectStore>,
    /// Its own replication bucket (peers' inbound stages are there).
    pub bucket: Arc<dyn ObjectStore>,
    /// GMK-derived wrapping keys.
    pub wrap_keys: Arc<CachedWrapKeys>,
    /// The clock.
    pub clock: SharedClock,
    /// Randomness (RepMKs).
    pub random: SharedRandom,
    /// Settings.
    pub config: ReplicationConfig,
    /// Opens the customer-managed keys accounts register.
    pub customer_keys: tern_crypto::CustomerKeys,
}

/// One deployment's replication service (cheap to clone).
#[derive(Debug, Clone)]
pub struct Replication {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) p: Parts,
    pub(crate) policy: DiversifierPolicy,
    pub(crate) counters: Counters,
    /// Wakes the control worker (something to send).
    pub(crate) control_wake: Notify,
    /// Wakes the shipper (a commit).
    pub(crate) ship_wake: Notify,
    /// Wakes the copy workers (a job arrived).
    pub(crate) job_wake: Notify,
    /// Woken whenever a replicated change committed here (apply agents waiting for a
    /// predecessor re-check at once).
    pub(crate) applied: Notify,
    /// Customer-managed keys of local accounts that use one; a registered key that could
    /// not be opened holds why (its replicas then ask for nothing rather than ask without it).
    pub(crate) customer_keys: std::sync::Mutex<std::collections::HashMap<AccountId, OpenedKey>>,
    /// Attempts of log records waiting for a predecessor, by message id.
    pub(crate) gaps: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Peers whose shipping failed: not before, and the last wait (per-peer backoff).
    pub(crate) peer_backoff:
        std::sync::Mutex<std::collections::HashMap<DeploymentId, (std::time::Instant, Duration)>>,
    /// Held by the importer while it imports a response (a failover waits for it).
    pub(crate) import_gate: tokio::sync::Mutex<()>,
    /// Failovers waiting for the import gate: an import steps aside for them — waiting
    /// for files to land (it cannot finish while its upstream is gone), between batches,
    /// and in the middle of a batch's copies (dropped uncommitted, copied again after).
    pub(crate) draining: std::sync::atomic::AtomicUsize,
    /// Woken when a failover starts waiting for the import gate.
    pub(crate) drain_wake: Notify,
    /// One rewind to a fork at a time (a heartbeat's and the control worker's).
    pub(crate) rewinding: tokio::sync::Mutex<()>,
    /// Heartbeats are due at the next control unit.
    pub(crate) beat_due: std::sync::atomic::AtomicBool,
    /// When heartbeats last went out.
    pub(crate) last_beat_ms: std::sync::atomic::AtomicI64,
    /// Vote replies to this deployment's candidacies, by (group, epoch).
    pub(crate) votes: std::sync::Mutex<
        std::collections::HashMap<(String, u64), BTreeMap<DeploymentId, crate::model::VoteReply>>,
    >,
    /// Woken by each vote reply.
    pub(crate) vote_wake: Notify,
    /// When an automatic failover of each group was last tried here.
    pub(crate) auto_attempts:
        std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Groups a failover or switchover of this process is standing for right now.
    pub(crate) standing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Vote requests to decide once the primary has been silent long enough.
    pub(crate) deferred_votes: std::sync::Mutex<Vec<crate::failover::DeferredVote>>,
    /// This deployment's API URL as clients reach it (configured, or the address the
    /// daemon listens on).
    pub(crate) public_url: std::sync::RwLock<Option<String>>,
    /// The message service (what a failover drains).
    pub(crate) messages: std::sync::OnceLock<tern_messaging::Context>,
    /// When the log was last pruned (0: not yet).
    pub(crate) last_prune_ms: std::sync::atomic::AtomicI64,
    /// The agents' counter blocks (see [`crate::monitoring`]).
    pub(crate) agents: tern_monitor::Agents,
}

/// A customer key as opened here, or why it could not be.
pub(crate) type OpenedKey = std::result::Result<Arc<dyn tern_crypto::CustomerKey>, String>;

/// An account's registered customer-managed key, as `show customer key` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerKeyStatus {
    /// The account.
    pub account: AccountId,
    /// Where the key is.
    pub spec: tern_crypto::CustomerKeySpec,
    /// Its key id, when it opened.
    pub key_id: Option<String>,
    /// Why it did not open.
    pub error: Option<String>,
}

/// How a replica follows its upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaOptions {
    /// The deployment it replicates from (default: the group's primary).
    pub upstream: Option<DeploymentId>,
    /// Follow the upstream's log (continuous) or only refresh (on demand, on schedule).
    pub follow_log: bool,
}

/// One row of `show global accounts` / `show global databases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRow {
    /// Region of the deployment holding it.
    pub region: String,
    /// The deployment.
    pub deployment: DeploymentId,
    /// The account.
    pub account: AccountId,
    /// The replication group (account group for accounts, database group for databases).
    pub replication_group: String,
    /// The name (account or database).
    pub name: String,
    /// Databases: primary or secondary.
    pub role: Option<DatabaseRole>,
    /// Secondary replicas: where they replicate from.
    pub upstream: Option<DeploymentId>,
}

/// `show replication status`: one local secondary replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The database name.
    pub database: String,
    /// Its account.
    pub account: AccountId,
    /// The group.
    pub group: String,
    /// Where it replicates from.
    pub upstream: DeploymentId,
    /// Versions behind the newest upstream versions known here (summed over tables).
    pub versions_behind: u64,
    /// Transactions behind the primary's last heartbeat.
    #[serde(default)]
    pub txns_behind: u64,
    /// How far the data here trails the primary as last heard of (heartbeat or
    /// shipment): the newest known primary commit minus the newest applied when behind,
    /// and never less than the primary's silence beyond two heartbeat intervals — a silent
    /// upstream shows a growing lag, never 0.
    pub lag_ms: i64,
    /// How long ago the primary's state was last heard (heartbeat); `None` before the
    /// first.
    #[serde(default)]
    pub staleness_ms: Option<i64>,
    /// When it is brought up to date (`continuous`, `every 5m`, `daily 02:30`).
    #[serde(default)]
    pub schedule: crate::schedule::Schedule,
    /// When its next scheduled refresh is due (scheduled replicas).
    #[serde(default)]
    pub next_refresh_at_ms: Option<i64>,
    /// When the last refresh was imported.
    pub last_refresh_at_ms: Option<i64>,
    /// A refresh asked for and not imported yet (its reason).
    pub refresh_pending: Option<String>,
    /// Refreshes imported.
    pub refreshes: u64,
    /// Log records applied.
    pub records_applied: u64,
    /// Bytes copied into the volume.
    pub bytes_copied: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// A replica's lag (see [`ReplicaStatus::lag_ms`]): `behind` of the primary's last known
/// state whose newest commit is `newest`, the newest applied here `applied`, the primary
/// last heard `staleness_ms` ago.
pub fn replica_lag_ms(
    behind: bool,
    newest: Option<i64>,
    applied: Option<i64>,
    staleness_ms: Option<i64>,
    heartbeat_interval: Duration,
    now: i64,
) -> i64 {
    let trailing = if behind {
        match (newest, applied) {
            (Some(u), Some(a)) => (u - a).max(0),
            (Some(u), None) => (now - u).max(0),
            _ => 0,
        }
    } else {
        0
    };
    // Heard within two heartbeats: as fresh as this deployment can know. Beyond, what
    // the primary committed meanwhile is unknown: the silence counts.
    let expected =
        i64::try_from(heartbeat_interval.as_millis().saturating_mul(2)).unwrap_or(i64::MAX);
    let silent = staleness_ms.filter(|s| *s > expected).unwrap_or(0);
    trailing.max(silent)
}

/// `show replication status`: one replica a peer keeps of a local database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownstreamStatus {
    /// The database name.
    pub database: String,
    /// The group.
    pub group: String,
    /// The replica's deployment.
    pub peer: DeploymentId,
    /// Whether log records are shipped.
    pub subscribed: bool,
    /// Transactions of the database not shipped yet: its commit sequence here minus the
    /// one shipped up to; for rows from before that was kept, the account's log ids
    /// between the cursor and the stable id (a bound: ids the clock skipped count too).
    /// Read from the metadata store only, never by listing the log.
    pub records_behind: u64,
    /// Log records shipped.
    pub records_shipped: u64,
    /// Snapshots answered.
    pub snapshots: u64,
    /// Bytes copied to the peer.
    pub bytes_copied: u64,
    /// The customer-managed key every RepMK for this replica is sealed to (its id), if
    /// the replica's account uses one.
    pub sealed_to: Option<String>,
    /// The replica fell further behind than the log retention and the records it needed
    /// were pruned: nothing is shipped to it until its refresh.
    #[serde(default)]
    pub refresh_needed: bool,
    /// The last error.
    pub last_error: Option<String>,
}

/// See [`DownstreamStatus::records_behind`].
fn records_behind(tx: &mut MetaTxn<'_>, d: &DownstreamDpo) -> tern_meta::Result<u64> {
    if !d.subscribed {
        return Ok(0);
    }
    Ok(match d.shipped_seq {
        Some(shipped) => tern_txn::database_seq(tx, &d.database)?.saturating_sub(shipped),
        None => tern_txn::last_txn_id(tx, &d.account)?.saturating_sub(d.cursor),
    })
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The database groups held here: role, epoch, RPO exposure.
    pub groups: Vec<crate::failover::GroupStatus>,
    /// Every peer's availability.
    pub peers: Vec<crate::failover::PeerDpo>,
    /// Local secondary replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas peers keep of local databases.
    pub downstream: Vec<DownstreamStatus>,
    /// Snapshot requests waiting for the copy workers.
    pub snapshot_jobs: u64,
    /// Snapshot responses waiting to be imported.
    pub import_jobs: u64,
    /// Every copy and import job, with its attempts and state.
    #[serde(default)]
    pub jobs: Vec<crate::jobs::JobStatus>,
    /// Messages waiting in the outbox.
    pub outbox: u64,
    /// Cumulative figures since start, by name.
    pub counters: BTreeMap<String, u64>,
}

/// A new random UUID (version 4), as text.
pub(crate) fn new_uuid(random: &dyn tern_crypto::Random) -> Result<String> {
    let mut b = [0u8; 16];
    random.fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

impl Replication {
    /// The replication service of the deployment made of `parts`.
    pub fn new(parts: Parts) -> Result<Self> {
        parts.config.validate()?;
        let registered = parts
            .meta
            .read(|tx| tx.scan_prefix::<CustomerKeyDpo>(&keys::customer_keys()))?;
        let mut customer_keys = std::collections::HashMap::new();
        for (_, k) in registered {
            let opened = parts
                .customer_keys
                .open(&k.spec, false, parts.random.as_ref())
                .map_err(|e| {
                    tracing::error!(account = %k.account, key = %k.spec, error = %e,
                        "the account's customer key cannot be opened: its replicas will not refresh until it can");
                    format!("{}: {e}", k.spec)
                });
            customer_keys.insert(k.account, opened);
        }
        let public_url = parts.config.public_url.clone();
        Ok(Self {
            inner: Arc::new(Inner {
                p: parts,
                policy: DiversifierPolicy::default(),
                counters: Counters::default(),
                control_wake: Notify::new(),
                ship_wake: Notify::new(),
                job_wake: Notify::new(),
                applied: Notify::new(),
                customer_keys: std::sync::Mutex::new(customer_keys),
                gaps: std::sync::Mutex::default(),
                peer_backoff: std::sync::Mutex::default(),
                import_gate: tokio::sync::Mutex::new(()),
                draining: std::sync::atomic::AtomicUsize::new(0),
                drain_wake: Notify::new(),
                rewinding: tokio::sync::Mutex::new(()),
                beat_due: std::sync::atomic::AtomicBool::new(true),
                last_beat_ms: std::sync::atomic::AtomicI64::new(0),
                public_url: std::sync::RwLock::new(public_url),
                votes: std::sync::Mutex::default(),
                vote_wake: Notify::new(),
                auto_attempts: std::sync::Mutex::default(),
                standing: std::sync::Mutex::default(),
                deferred_votes: std::sync::Mutex::default(),
                messages: std::sync::OnceLock::new(),
                last_prune_ms: std::sync::atomic::AtomicI64::new(0),
                agents: tern_monitor::Agents::default(),
            }),
        })
    }

    /// The message service this replication's messages travel through (a failover
    /// drains what arrived through it). Set once.
    pub fn set_messages(&self, ctx: tern_messaging::Context) {
        let _ = self.inner.messages.set(ctx);
    }

    /// A request went out (a refresh, a vote): its answer is looked for often for a
    /// while ([`tern_messaging::Context::expect_reply`]).
    pub(crate) fn expect_reply(&self) {
        if let Some(ctx) = self.inner.messages.get() {
            ctx.expect_reply();
        }
    }

    /// Crash point `point` ([`crate::crash`]), in the message service's registry.
    pub(crate) fn crash_point(&self, point: &'static str) -> Result<()> {
        match self.inner.messages.get() {
            Some(ctx) => ctx.crash_points().hit(point).map_err(Error::Messaging),
            None => Ok(()),
        }
    }

    /// This deployment.
    pub fn me(&self) -> &DeploymentId {
        &self.inner.p.me
    }

    /// The figures since start.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The settings.
    pub fn config(&self) -> &ReplicationConfig {
        &self.inner.p.config
    }

    /// `account` uses its own key pair: RepMKs for its replicas are sealed to its public
    /// key as well as wrapped under the GMK-derived key, so only it can open them
    /// (DESIGN.md §4). Held in memory only (an embedding that manages its keys itself);
    /// [`Replication::register_customer_key`] is the stored form. Takes effect with the
    /// replica's next refresh request.
    pub fn set_customer_key(&self, account: &AccountId, key: Arc<dyn tern_crypto::CustomerKey>) {
        self.customer_key_map().insert(account.clone(), Ok(key));
    }

    /// Registers where `account`'s customer-managed key is, after opening it (with
    /// `create`, a missing X25519 key file is made). Stored, so it holds after a restart;
    /// every replica of the account asks its upstream for a refresh, which carries the
    /// key's public half, so that from then on every RepMK sent to it is sealed to the key.
    /// Returns the key id.
    pub async fn register_customer_key(
        &self,
        account: &AccountId,
        spec: &tern_crypto::CustomerKeySpec,
        create: bool,
    ) -> Result<String> {
        self.require_account(account)?;
        let p = &self.inner.p;
        let refused = |e: tern_crypto::Error| {
            Error::invalid(
                format!("customer key of account {account}"),
                format!("{spec}: {e}"),
            )
        };
        let key = p
            .customer_keys
            .open(spec, create, p.random.as_ref())
            .map_err(refused)?;
        // Usable as well as present: a KMS key must hand out its public half.
        key.public_key().await.map_err(refused)?;
        let id = key.key_id().to_string();
        self.meta().write(|tx| {
            tx.put(
                &keys::customer_key(account),
                &CustomerKeyDpo {
                    account: account.clone(),
                    spec: spec.clone(),
                },
            )
        })?;
        self.customer_key_map().insert(account.clone(), Ok(key));
        self.refresh_account(account, "customer key registered")?;
        tracing::info!(%account, key = %spec, key_id = %id, "customer key registered");
        Ok(id)
    }

    /// Stops using a customer-managed key for `account` (the key itself is left where it
    /// is). Its replicas ask for a refresh without it. Whether one was registered.
    pub fn remove_customer_key(&self, account: &AccountId) -> Result<bool> {
        self.require_account(account)?;
        let stored = self.meta().write(|tx| {
            let k = keys::customer_key(account);
            let had = tx.contains(&k)?;
            tx.delete(&k)?;
            Ok(had)
        })?;
        let held = self.customer_key_map().remove(account).is_some();
        if stored || held {
            self.refresh_account(account, "customer key removed")?;
            tracing::info!(%account, "customer key removed");
        }
        Ok(stored || held)
    }

    /// The customer-managed key registered for `account`, and whether it opened.
    pub fn customer_key_status(&self, account: &AccountId) -> Result<Option<CustomerKeyStatus>> {
        self.require_account(account)?;
        let Some(k) = self
            .meta()
            .read(|tx| tx.get::<CustomerKeyDpo>(&keys::customer_key(account)))?
        else {
            return Ok(None);
        };
        let (key_id, error) = match self.customer_key_map().get(account) {
            Some(Ok(key)) => (Some(key.key_id().to_string()), None),
            Some(Err(e)) => (None, Some(e.clone())),
            None => (None, Some("not opened".into())),
        };
        Ok(Some(CustomerKeyStatus {
            account: account.clone(),
            spec: k.spec,
            key_id,
            error,
        }))
    }

    fn require_account(&self, account: &AccountId) -> Result<()> {
        if self.meta().read(|tx| tx.get_account(account))?.is_none() {
            return Err(Error::NotFound {
                what: "account",
                name: account.to_string(),
            });
        }
        Ok(())
    }

    /// Sends every replica of `account` a new refresh request (one already sent carried
    /// the old key, or none).
    fn refresh_account(&self, account: &AccountId, reason: &str) -> Result<()> {
        let replicas = self
            .meta()
            .read(|tx| tx.scan_prefix::<ReplicaDpo>(&keys::replicas()))?;
        for (_, r) in replicas.into_iter().filter(|(_, r)| &r.account == account) {
            self.ask_refresh(&r.database, reason, true)?;
        }
        Ok(())
    }

    fn customer_key_map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<AccountId, OpenedKey>> {
        self.inner
            .customer_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `account`'s customer key: `None` when it uses none; an error when one is registered
    /// but could not be opened (nothing may then go out as if it used none).
    pub(crate) fn customer_key(
        &self,
        account: &AccountId,
    ) -> Result<Option<Arc<dyn tern_crypto::CustomerKey>>> {
        match self.customer_key_map().get(account) {
            None => Ok(None),
            Some(Ok(k)) => Ok(Some(Arc::clone(k))),
            Some(Err(e)) => Err(Error::CustomerKey {
                account: account.to_string(),
                reason: format!("cannot be opened ({e}); register it again or remove it"),
            }),
        }
    }

    /// Tells the shipper that something committed (it also polls).
    pub fn committed(&self) {
        self.inner.ship_wake.notify_one();
    }

    pub(crate) fn meta(&self) -> &MetaStore {
        &self.inner.p.meta
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.p.clock.now_millis()
    }

    // ---- global accounts and databases ----

    /// `alter account … set global`: the account joins account replication group `group`,
    /// or a new group when `None` (an account already global keeps its group). Returns the
    /// group id. Idempotent; joining a different group than the account's is refused.
    pub fn set_account_global(&self, account: &AccountId, group: Option<&str>) -> Result<String> {
        let fresh = new_uuid(self.inner.p.random.as_ref())?;
        let asked = group;
        let group = match group {
            Some(g) if g.trim().is_empty() => {
                return Err(Error::invalid("account group", "must not be empty"));
            }
            Some(g) => g.trim().to_string(),
            None => fresh,
        };
        let out = self.meta().write(|tx| {
            let mut a = require_account(tx, account)?;
            match &a.kind {
                AccountKind::Global { group_id } if *group_id == group || asked.is_none() => {
                    return Ok(Ok(group_id.clone()));
                }
                AccountKind::Global { group_id } => {
                    return Ok(Err(Error::invalid(
                        format!("account {account}"),
                        format!("is already global in group {group_id}"),
                    )));
                }
                AccountKind::Local => {}
            }
            a.kind = AccountKind::Global {
                group_id: group.clone(),
            };
            a.global_id = Some(group.clone());
            tx.update_account(&a)?;
            mark_dirty(tx)?;
            Ok(Ok(group.clone()))
        })?;
        let group = out?;
        self.inner.control_wake.notify_one();
        tracing::info!(%account, %group, "account is global");
        Ok(group)
    }

    /// `alter database … enable replication`: the database becomes the primary of a new
    /// database replication group (its account must be global). Returns the group.
    pub fn enable_replication(&self, account: &AccountId, database: &str) -> Result<String> {
        self.enable_replication_to(account, database, None)
    }

    /// `alter database … enable replication to accounts a, b`: as
    /// [`Self::enable_replication`], and only the accounts listed (`account`, any
    /// deployment, or `deployment.account`) may hold a replica; a list replaces the one
    /// kept, `None` keeps it (every account of the account group when there is none).
    pub fn enable_replication_to(
        &self,
        account: &AccountId,
        database: &str,
        allowed: Option<&[String]>,
    ) -> Result<String> {
        if let Some(list) = allowed {
            if list.is_empty() {
                return Err(Error::invalid(
                    "allowed accounts",
                    "name at least one account",
                ));
            }
            if let Some(bad) = list.iter().find(|a| {
                a.is_empty() || a.split('.').count() > 2 || a.split('.').any(str::is_empty)
            }) {
                return Err(Error::invalid(
                    format!("allowed account {bad:?}"),
                    "use `account` or `deployment.account`",
                ));
            }
        }
        let keep_allowed = |tx: &mut MetaTxn<'_>, group: &str| -> tern_meta::Result<()> {
            if let Some(list) = allowed {
                tx.put(
                    &keys::allowed(group),
                    &AllowedDpo {
                        group: group.to_string(),
                        accounts: list.to_vec(),
                    },
                )?;
                mark_dirty(tx)?;
            }
            Ok(())
        };
        let fresh = new_uuid(self.inner.p.random.as_ref())?;
        let me = self.me().clone();
        let now = self.now();
        let group = self.meta().write(|tx| {
            let a = require_account(tx, account)?;
            if a.kind == AccountKind::Local {
                return Ok(Err(Error::invalid(
                    format!("database {database}"),
                    format!("account {account} is local: make it global first"),
                )));
            }
            let mut db = find_db(tx, account, database)?;
            match db.role {
                DatabaseRole::Primary => {
                    let group = db.replication_group.clone().unwrap_or_default();
                    keep_allowed(tx, &group)?;
                    return Ok(Ok(group));
                }
                DatabaseRole::Secondary => {
                    return Ok(Err(Error::invalid(
                        format!("database {database}"),
                        "is a secondary replica already",
                    )));
                }
                DatabaseRole::Local => {}
            }
            db.replication_group = Some(fresh.clone());
            db.global_id = Some(fresh.clone());
            db.role = DatabaseRole::Primary;
            db.epoch += 1;
            tx.update_database(&db)?;
            tx.set_global_id(GROUP_INDEX, &fresh, db.id.as_str())?;
            crate::failover::found_group(tx, &fresh, &me, db.epoch, now)?;
            keep_allowed(tx, &fresh)?;
            mark_dirty(tx)?;
            Ok(Ok(fresh.clone()))
        })??;
        self.inner.control_wake.notify_one();
        tracing::info!(%account, database, %group, "database is global (primary)");
        Ok(group)
    }

    /// `create database X as replica of <group>`: a read-only secondary replica in
    /// `account` (a global account of the same account group as the primary's), following
    /// `upstream` (default: the group's primary; another replica for a chain). Its first
    /// refresh is asked for at once.
    pub fn create_replica(
        &self,
        account: &AccountId,
        name: &str,
        group: &str,
        upstream: Option<&DeploymentId>,
    ) -> Result<DatabaseId> {
        self.create_replica_with(
            account,
            name,
            group,
            &ReplicaOptions {
                upstream: upstream.cloned(),
                follow_log: true,
            },
        )
    }

    /// [`Self::create_replica`] with every option.
    pub fn create_replica_with(
        &self,
        account: &AccountId,
        name: &str,
        group: &str,
        options: &ReplicaOptions,
    ) -> Result<DatabaseId> {
        let upstream = options.upstream.as_ref();
        let me = self.me().clone();
        let entities = self.known_entities()?;
        let members: Vec<&GlobalEntity> = entities
            .iter()
            .filter(|e| e.kind == EntityKind::Database && e.group.as_deref() == Some(group))
            .collect();
        let primary = members
            .iter()
            .find(|e| e.role == Some(DatabaseRole::Primary))
            .ok_or_else(|| Error::NotFound {
                what: "database replication group (no primary known here yet)",
                name: group.to_string(),
            })?;
        if !primary.allows(&me, account) {
            return Err(not_allowed(group, &me, account, primary));
        }
        let upstream = match upstream {
            None => primary.deployment.clone(),
            Some(u) => {
                if !members.iter().any(|e| e.deployment == *u) {
                    return Err(Error::invalid(
                        format!("replica of {group}"),
                        format!("deployment {u} holds no replica of the group"),
                    ));
                }
                u.clone()
            }
        };
        if upstream == me {
            return Err(Error::invalid(
                format!("replica of {group}"),
                "this deployment cannot replicate from itself",
            ));
        }
        let account_group = primary.account_group.clone();
        let (known_primary, known_epoch) = (primary.deployment.clone(), primary.epoch);
        let now = self.now();
        let request_id = self.next_id("rq")?;
        let db = self.meta().write(|tx| {
            let a = require_account(tx, account)?;
            match &a.kind {
                AccountKind::Global { group_id } if *group_id == account_group => {}
                _ => {
                    return Ok(Err(Error::invalid(
                        format!("account {account}"),
                        format!(
                            "must be global in account group {account_group} (the primary's) to hold a replica"
                        ),
                    )));
                }
            }
            if let Some(local) = tx.find_global(GROUP_INDEX, group)? {
                return Ok(Err(Error::invalid(
                    format!("replica of {group}"),
                    format!("this deployment already holds database {local} of the group"),
                )));
            }
            let seq = tx.next_sequence("database")?;
            let id = DatabaseId::new(format!("db{seq}")).map_err(meta_name)?;
            let mut d = DatabaseDpo::local(id.clone(), account.clone(), name, now);
            d.replication_group = Some(group.to_string());
            d.global_id = Some(group.to_string());
            d.role = DatabaseRole::Secondary;
            d.epoch = known_epoch;
            tx.create_database(&d)?;
            tx.set_global_id(GROUP_INDEX, group, id.as_str())?;
            tx.put(
                &keys::replica(&id),
                &ReplicaDpo::new(
                    id.clone(),
                    account.clone(),
                    group.to_string(),
                    upstream.clone(),
                    options.follow_log,
                    PendingRefresh {
                        request_id: request_id.clone(),
                        sent: false,
                        asked_at_ms: now,
                        reason: "create".into(),
                    },
                ),
            )?;
            crate::failover::join_group(tx, group, &known_primary, known_epoch, now)?;
            mark_dirty(tx)?;
            Ok(Ok(id))
        })??;
        // Heartbeats at once: the primary counts us, and waits for our echo.
        self.beat_soon();
        tracing::info!(%account, name, group, %upstream, database = %db, "replica created");
        Ok(db)
    }

    /// `alter database X refresh`: ask the upstream for a refresh now. Returns the request
    /// id. A request not sent yet is kept; one already sent went out before this call, so
    /// a new one goes (its answer reflects the upstream as of now), and the answer to the
    /// old one is still imported when it comes.
    pub fn request_refresh(&self, database: &DatabaseId, reason: &str) -> Result<String> {
        self.ask_refresh(database, reason, true)
    }

    /// [`Replication::request_refresh`]; with `replace_sent`, a request already sent does
    /// not count (it went out before whatever changed): a new one goes, and the answer to
    /// the old one, when it comes, is imported without ending the new one.
    pub(crate) fn ask_refresh(
        &self,
        database: &DatabaseId,
        reason: &str,
        replace_sent: bool,
    ) -> Result<String> {
        let id = self.next_id("rq")?;
        let now = self.now();
        let out = self.meta().write(|tx| {
            let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(database))? else {
                return Ok(Err(Error::invalid(
                    format!("database {database}"),
                    "is not a secondary replica: nothing to refresh",
                )));
            };
            if let Some(p) = r.refresh.as_ref().filter(|p| !(replace_sent && p.sent)) {
                return Ok(Ok(p.request_id.clone()));
            }
            r.refresh = Some(PendingRefresh {
                request_id: id.clone(),
                sent: false,
                asked_at_ms: now,
                reason: reason.to_string(),
            });
            tx.put(&keys::replica(database), &r)?;
            Ok(Ok(id.clone()))
        })??;
        self.inner.control_wake.notify_one();
        Ok(out)
    }

    /// Switch a replica between following its upstream's log and refreshing only; takes
    /// effect with a refresh, asked for now.
    pub fn set_follow_log(&self, database: &DatabaseId, follow: bool) -> Result<String> {
        let changed = self.meta().write(|tx| {
            let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(database))? else {
                return Ok(Err(Error::invalid(
                    format!("database {database}"),
                    "is not a secondary replica",
                )));
            };
            let changed = r.follow_log != follow;
            r.follow_log = follow;
            if changed {
                // A pending request carries (or the control worker, having read the row
                // before this change, may still send it with) the old choice: a new
                // request replaces it; the upstream answers them in the order they arrive.
                r.refresh = None;
            }
            tx.put(&keys::replica(database), &r)?;
            Ok(Ok(changed))
        })??;
        tracing::info!(%database, follow, changed, "replica log following set");
        self.ask_refresh(database, if follow { "follow" } else { "unfollow" }, false)
    }

    /// Sets when replica `database` is brought up to date: continuous follows the
    /// upstream's log; a schedule (`every …`, `daily HH:MM`) refreshes only, then. Takes
    /// effect with a refresh, asked for now.
    pub fn set_schedule(
        &self,
        database: &DatabaseId,
        schedule: crate::schedule::Schedule,
    ) -> Result<String> {
        self.meta().write(|tx| {
            let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(database))? else {
                return Ok(Err(Error::invalid(
                    format!("database {database}"),
                    "is not a secondary replica: it has no schedule",
                )));
            };
            r.schedule = schedule;
            tx.put(&keys::replica(database), &r)?;
            Ok(Ok(()))
        })??;
        tracing::info!(%database, %schedule, "replica schedule set");
        self.set_follow_log(database, schedule.is_continuous())
    }

    /// Make a global database local again: a primary stops replicating (its downstream
    /// replicas are forgotten; they stop receiving), a secondary stops following its
    /// upstream (it keeps its data and becomes writable).
    pub fn disable_replication(&self, account: &AccountId, database: &str) -> Result<()> {
        self.meta().write(|tx| {
            let mut db = find_db(tx, account, database)?;
            let Some(group) = db.replication_group.clone() else {
                return Ok(());
            };
            detach(tx, &db.id, &group)?;
            db.role = DatabaseRole::Local;
            db.replication_group = None;
            db.global_id = None;
            tx.update_database(&db)?;
            Ok(())
        })?;
        self.inner.control_wake.notify_one();
        Ok(())
    }

    /// Drop a secondary replica (its upstream is told to stop shipping).
    pub fn drop_replica(&self, account: &AccountId, database: &str) -> Result<()> {
        self.meta().write(|tx| {
            let db = find_db(tx, account, database)?;
            if db.role != DatabaseRole::Secondary {
                return Ok(Err(Error::invalid(
                    format!("database {database}"),
                    "is not a secondary replica",
                )));
            }
            detach(
                tx,
                &db.id,
                db.replication_group.as_deref().unwrap_or_default(),
            )?;
            tx.drop_database(&db.id)?;
            Ok(Ok(()))
        })??;
        self.inner.control_wake.notify_one();
        Ok(())
    }

    /// The global entities this deployment holds itself.
    pub fn own_entities(&self) -> Result<Vec<GlobalEntity>> {
        let me = self.me().clone();
        let region = self.inner.p.region.clone();
        Ok(self.meta().read(|tx| {
            let mut out = Vec::new();
            for a in tx.list_accounts()? {
                let AccountKind::Global { group_id } = &a.kind else {
                    continue;
                };
                out.push(GlobalEntity {
                    kind: EntityKind::Account,
                    deployment: me.clone(),
                    region: region.clone(),
                    account: a.name.clone(),
                    account_group: group_id.clone(),
                    group: None,
                    name: None,
                    role: None,
                    epoch: 0,
                    upstream: None,
                    allowed_accounts: None,
                });
                for (_, c) in tx.scan_prefix::<crate::connection::ConnectionDpo>(
                    &crate::connection::keys::of_account(&a.name),
                )? {
                    out.push(GlobalEntity {
                        kind: EntityKind::Connection,
                        deployment: me.clone(),
                        region: region.clone(),
                        account: a.name.clone(),
                        account_group: group_id.clone(),
                        group: Some(c.group),
                        name: Some(c.name),
                        role: None,
                        epoch: 0,
                        upstream: None,
                        allowed_accounts: None,
                    });
                }
                for d in tx.list_databases(&a.name)? {
                    let Some(group) = d.replication_group.clone() else {
                        continue;
                    };
                    let upstream = tx
                        .get::<ReplicaDpo>(&keys::replica(&d.id))?
                        .map(|r| r.upstream);
                    let allowed_accounts = if d.role == DatabaseRole::Primary {
                        tx.get::<AllowedDpo>(&keys::allowed(&group))?
                            .map(|a| a.accounts)
                    } else {
                        None
                    };
                    out.push(GlobalEntity {
                        kind: EntityKind::Database,
                        deployment: me.clone(),
                        region: region.clone(),
                        account: a.name.clone(),
                        account_group: group_id.clone(),
                        group: Some(group),
                        name: Some(d.name.clone()),
                        role: Some(d.role),
                        epoch: d.epoch,
                        upstream,
                        allowed_accounts,
                    });
                }
            }
            Ok(out)
        })?)
    }

    /// Whether `account` of `deployment` may hold a replica of database group `group`:
    /// the refusal when the group's primary (as known here) does not allow it. A group
    /// whose primary is not known here is not refused (nothing to check against).
    pub fn check_allowed(
        &self,
        group: &str,
        deployment: &DeploymentId,
        account: &AccountId,
    ) -> Result<()> {
        let entities = self.known_entities()?;
        match entities.iter().find(|e| {
            e.kind == EntityKind::Database
                && e.group.as_deref() == Some(group)
                && e.role == Some(DatabaseRole::Primary)
        }) {
            Some(p) if !p.allows(deployment, account) => {
                Err(not_allowed(group, deployment, account, p))
            }
            _ => Ok(()),
        }
    }

    /// Every global entity known here: our own and what each peer last said.
    pub fn known_entities(&self) -> Result<Vec<GlobalEntity>> {
        let mut all = self.own_entities()?;
        let me = self.me().clone();
        let peers = self
            .meta()
            .read(|tx| tx.scan_prefix::<KnownEntitiesDpo>(&keys::known_all()))?;
        for (_, k) in peers {
            if k.deployment != me {
                all.extend(k.entities);
            }
        }
        Ok(all)
    }

    /// `show global accounts` as seen from `account`: every account of its account group,
    /// in every deployment (the same list from any account of the group).
    pub fn global_accounts(&self, account: &AccountId) -> Result<Vec<GlobalRow>> {
        self.global_rows(account, EntityKind::Account)
    }

    /// `show global databases` as seen from `account`: every replica of every database
    /// group of its account group.
    pub fn global_databases(&self, account: &AccountId) -> Result<Vec<GlobalRow>> {
        self.global_rows(account, EntityKind::Database)
    }

    fn global_rows(&self, account: &AccountId, kind: EntityKind) -> Result<Vec<GlobalRow>> {
        let a = self
            .meta()
            .read(|tx| tx.get_account(account))?
            .ok_or_else(|| Error::NotFound {
                what: "account",
                name: account.to_string(),
            })?;
        let AccountKind::Global { group_id } = a.kind else {
            return Ok(Vec::new());
        };
        let mut rows: Vec<GlobalRow> = self
            .known_entities()?
            .into_iter()
            .filter(|e| e.kind == kind && e.account_group == group_id)
            .map(|e| GlobalRow {
                region: e.region,
                deployment: e.deployment,
                replication_group: match kind {
                    EntityKind::Account => e.account_group,
                    EntityKind::Database | EntityKind::Connection => e.group.unwrap_or_default(),
                },
                name: match kind {
                    EntityKind::Account => e.account.to_string(),
                    EntityKind::Database | EntityKind::Connection => e.name.unwrap_or_default(),
                },
                account: e.account,
                role: e.role,
                upstream: e.upstream,
            })
            .collect();
        rows.sort_by(|x, y| {
            (&x.replication_group, &x.deployment, &x.account, &x.name).cmp(&(
                &y.replication_group,
                &y.deployment,
                &y.account,
                &y.name,
            ))
        });
        Ok(rows)
    }

    /// `show replication status`.
    pub async fn status(&self) -> Result<Status> {
        let now = self.now();
        // The job rows are read once (an import job holds a whole snapshot response): the
        // counts come from the list.
        let jobs = self.jobs()?;
        let count = |kind| jobs.iter().filter(|j| j.kind == kind).count();
        let (snap, import) = (
            count(crate::jobs::JobKind::Snapshot),
            count(crate::jobs::JobKind::Import),
        );
        let (replicas, downs, outbox) = self.meta().read(|tx| {
            let replicas = tx.scan_prefix::<ReplicaDpo>(&keys::replicas())?;
            let downs = tx.scan_prefix::<DownstreamDpo>(&keys::downstreams())?;
            let outbox = tx.scan_prefix::<OutboxDpo>(&state::outbox_all())?.len();
            let mut r = Vec::new();
            for (_, rep) in replicas {
                let db = tx.get_database(&rep.database)?;
                let beat = match &db {
                    Some(d) => crate::failover::group_of(tx, d, self.me())?.primary_beat,
                    None => None,
                };
                let name = db.map(|d| d.name).unwrap_or_default();
                let mut behind = 0;
                for (t, v) in &rep.upstream_versions {
                    let have = tx.get_table(t)?.map_or(0, |t| t.current_version);
                    behind += v.saturating_sub(have);
                }
                r.push((name, behind, beat, rep));
            }
            let mut d = Vec::new();
            for (_, down) in downs {
                let name = tx
                    .get_database(&down.database)?
                    .map(|d| d.name)
                    .unwrap_or_default();
                let behind = records_behind(tx, &down)?;
                d.push((name, behind, down));
            }
            Ok((r, d, outbox))
        })?;
        let replicas = replicas
            .into_iter()
            .map(|(name, behind, beat, r)| {
                let txns_behind = beat
                    .as_ref()
                    .map_or(0, |b| b.seq.saturating_sub(r.applied_seq));
                let staleness_ms = beat.as_ref().map(|b| (now - b.heard_at_ms).max(0));
                let newest = r
                    .upstream_commit_at_ms
                    .max(beat.as_ref().and_then(|b| b.commit_at_ms));
                ReplicaStatus {
                    lag_ms: replica_lag_ms(
                        behind > 0 || txns_behind > 0,
                        newest,
                        r.applied_commit_at_ms,
                        staleness_ms,
                        self.config().heartbeat_interval,
                        now,
                    ),
                    database: name,
                    account: r.account,
                    group: r.group,
                    upstream: r.upstream,
                    versions_behind: behind,
                    txns_behind,
                    staleness_ms,
                    schedule: r.schedule,
                    next_refresh_at_ms: r
                        .schedule
                        .next_after(Some(r.last_refresh_at_ms.unwrap_or(r.created_at_ms)), now),
                    last_refresh_at_ms: r.last_refresh_at_ms,
                    refresh_pending: r.refresh.map(|p| p.reason),
                    refreshes: r.refreshes,
                    records_applied: r.records_applied,
                    bytes_copied: r.bytes_copied,
                    last_error: r.last_error,
                }
            })
            .collect();
        let mut downstream = Vec::new();
        for (name, behind, d) in downs {
            downstream.push(DownstreamStatus {
                database: name,
                group: d.group,
                peer: d.peer,
                subscribed: d.subscribed,
                records_behind: behind,
                records_shipped: d.records_shipped,
                snapshots: d.snapshots,
                bytes_copied: d.bytes_copied,
                sealed_to: d.customer_key.as_ref().map(|k| k.key_id().to_string()),
                refresh_needed: d.refresh_needed_since_ms.is_some(),
                last_error: d.last_error,
            });
        }
        let c = &self.inner.counters;
        let counters = [
            ("files_copied", &c.files_copied),
            ("bytes_copied", &c.bytes_copied),
            ("records_shipped", &c.records_shipped),
            ("records_applied", &c.records_applied),
            ("records_skipped", &c.records_skipped),
            ("repairs", &c.repairs),
            ("shipments_retried", &c.shipments_retried),
            ("jobs_failed", &c.jobs_failed),
            ("snapshots_served", &c.snapshots_served),
            ("snapshots_imported", &c.snapshots_imported),
            ("refreshes_requested", &c.refreshes_requested),
            ("rejected", &c.rejected),
            ("stale_epoch", &c.stale_epoch),
            ("epochs_learned", &c.epochs_learned),
            ("failovers", &c.failovers),
            ("conflicts_kept", &c.conflicts_kept),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Counters::get(v)))
        .collect();
        Ok(Status {
            groups: self.group_statuses()?,
            peers: self.availability()?,
            replicas,
            downstream,
            snapshot_jobs: snap as u64,
            import_jobs: import as u64,
            jobs,
            outbox: outbox as u64,
            counters,
        })
    }

    /// A new id unique in this deployment: `<prefix>-<deployment>-<n>`.
    pub(crate) fn next_id(&self, prefix: &str) -> Result<String> {
        let n = self.meta().next_unique("repl-id")?;
        Ok(format!("{prefix}-{}-{n}", self.me()))
    }

    /// The local database of `group`, if this deployment holds one.
    pub(crate) fn local_database(&self, group: &str) -> Result<Option<DatabaseDpo>> {
        Ok(self.meta().read(|tx| {
            let Some(id) = tx.find_global(GROUP_INDEX, group)? else {
                return Ok(None);
            };
            tx.get_database(&DatabaseId::new(id).map_err(meta_name)?)
        })?)
    }
}

/// Our entities changed: the control worker announces them.
pub(crate) fn mark_dirty(tx: &mut MetaTxn<'_>) -> tern_meta::Result<()> {
    let mut a: AnnounceDpo = tx.get(&keys::announce())?.unwrap_or_default();
    a.dirty = true;
    tx.put(&keys::announce(), &a)
}

fn find_db(
    tx: &mut MetaTxn<'_>,
    account: &AccountId,
    name: &str,
) -> tern_meta::Result<DatabaseDpo> {
    tx.find_database(account, name)?
        .ok_or_else(|| tern_meta::Error::NotFound {
            what: "database",
            name: format!("{account}.{name}"),
        })
}

/// Forget a database's replication state: its downstream links and, for a replica, tell
/// the upstream to stop (through the outbox).
fn detach(tx: &mut MetaTxn<'_>, db: &DatabaseId, group: &str) -> tern_meta::Result<()> {
    for (k, _) in tx.scan_prefix::<DownstreamDpo>(&keys::downstreams_of(db))? {
        tx.delete(&k)?;
    }
    if let Some(r) = tx.get::<ReplicaDpo>(&keys::replica(db))? {
        let id = format!("un-{db}-{}", tx.next_sequence("repl-unsub")?);
        state::put_outbox(
            tx,
            &r.upstream,
            id,
            UNSUBSCRIBE_TYPE,
            &Unsubscribe {
                v: model::PAYLOAD_VERSION,
                group: group.to_string(),
                database: db.clone(),
            },
        )?;
        tx.delete(&keys::replica(db))?;
    }
    tx.remove_global(GROUP_INDEX, group)?;
    mark_dirty(tx)
}

/// A name error inside a metadata transaction.
pub(crate) fn meta_name(e: tern_storage::Error) -> tern_meta::Error {
    tern_meta::Error::Invalid {
        what: "name",
        reason: e.to_string(),
    }
}

fn require_account(tx: &mut MetaTxn<'_>, account: &AccountId) -> tern_meta::Result<AccountDpo> {
    tx.get_account(account)?
        .ok_or_else(|| tern_meta::Error::NotFound {
            what: "account",
            name: account.to_string(),
        })
}

fn not_allowed(
    group: &str,
    deployment: &DeploymentId,
    account: &AccountId,
    primary: &GlobalEntity,
) -> Error {
    Error::invalid(
        format!("replica of {group}"),
        format!(
            "account {account} of deployment {deployment} is not allowed to replicate it (database {} of {} enables replication to accounts {} only)",
            primary.name.as_deref().unwrap_or("?"),
            primary.deployment,
            primary
                .allowed_accounts
                .as_deref()
                .unwrap_or_default()
                .join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_log_pruning_settings_name_the_field() {
        let bad = ReplicationConfig {
            log_prune_batch: 0,
            ..ReplicationConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("log_prune_batch"), "{e}");
        let bad = ReplicationConfig {
            log_prune_interval: Duration::ZERO,
            ..ReplicationConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("log_prune_interval"), "{e}");
        // Keeping the log for ever needs no interval.
        ReplicationConfig {
            log_retention: Duration::ZERO,
            log_prune_interval: Duration::ZERO,
            ..ReplicationConfig::default()
        }
        .validate()
        .unwrap();
        let d = ReplicationConfig::default();
        assert_eq!(d.log_retention, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn lag_is_the_trail_behind_the_primary_or_its_silence_never_zero_when_silent() {
        let hb = Duration::from_millis(100);
        // Caught up, heard a moment ago: no lag.
        assert_eq!(
            replica_lag_ms(false, Some(900), Some(900), Some(50), hb, 1_000),
            0
        );
        // Behind: the newest known primary commit minus the newest applied.
        assert_eq!(
            replica_lag_ms(true, Some(900), Some(600), Some(50), hb, 1_000),
            300
        );
        // Nothing applied yet: since the newest known commit.
        assert_eq!(
            replica_lag_ms(true, Some(900), None, Some(50), hb, 1_000),
            100
        );
        // Silent past two heartbeats: the silence, even with nothing known to be behind.
        assert_eq!(
            replica_lag_ms(false, Some(900), Some(900), Some(5_000), hb, 10_000),
            5_000
        );
        assert_eq!(
            replica_lag_ms(true, Some(900), Some(800), Some(5_000), hb, 10_000),
            5_000
        );
        // Never heard: only what is known.
        assert_eq!(replica_lag_ms(false, None, None, None, hb, 10_000), 0);
    }
}
