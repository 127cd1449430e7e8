//! The daemon's configuration: one TOML file, every field overridable by environment
//! variables, validated once at start.
//!
//! # Environment overrides
//!
//! `TERN_<FIELD>` sets a top-level field; `__` (two underscores) descends into a table or,
//! with a number, into an array element. Names are matched in lower case:
//!
//! | variable | field |
//! |---|---|
//! | `TERN_DEPLOYMENT_ID=d1` | `deployment_id` |
//! | `TERN_VOLUME__URL=file:///data/d1/volume` | `volume.url` |
//! | `TERN_VOLUME__S3__ENDPOINT=http://127.0.0.1:4566` | `volume.s3.endpoint` |
//! | `TERN_KEYS__DIR=/data/d1/keys` | `keys.dir` |
//! | `TERN_PEERS__0__BUCKET__URL=s3://…` | `peers[0].bucket.url` |
//! | `TERN_WORKERS__RECOVER_INTERVAL=30s` | `workers.recover_interval` |
//! | `TERN_REPLICATION__SHIP_INTERVAL=100ms` | `replication.ship_interval` |
//! | `TERN_COMPACTION__INTERVAL=0s` | `compaction.interval` (`0s`: compaction off) |
//!
//! A value is read as a TOML value when it is a number, a boolean or an array
//! (`TERN_API__MAX_BODY_BYTES=1048576`), and as a string otherwise; quote it to force a
//! string (`TERN_OPERATOR_TOKEN='"12345"'`). Only variables whose first part names a
//! top-level field are applied (so `TERN_LOG` or `TERN_URL`, which belong to other
//! programs, are ignored); below that, an unknown name is an error naming it.
//!
//! # Validation
//!
//! [`Config::validate`] checks every field before anything is opened and names the first
//! bad one (`volume.url: unsupported scheme "ftp"`); opening the stores and keys later
//! reports failures under the field that named them too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_messaging::MessagingConfig;
use tern_replication::ReplicationConfig;
use tern_storage::StoreConfig;
use tern_storage::layout::DeploymentId;

use crate::error::{Error, Result};

/// Top-level field names, the only ones `TERN_*` variables may address.
pub const TOP_LEVEL_FIELDS: &[&str] = &[
    "deployment_id",
    "region",
    "cloud",
    "listen",
    "metadata_path",
    "operator_token",
    "volume",
    "replication",
    "keys",
    "peers",
    "workers",
    "api",
    "txn",
    "messaging",
    "compaction",
    "log",
    "sql",
    "monitor",
];

/// A deployment's configuration (`ternd --config deployment.toml`).
///
/// Its `Debug` redacts the secrets (operator and metrics tokens, KMS secret keys; store
/// credentials through [`StoreConfig`]'s own `Debug`), so a logged or printed config
/// never shows them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This deployment's id (`aws-us-west-2`, `d1`). Required.
    pub deployment_id: String,
    /// Its region (shown in `show deployments`).
    pub region: String,
    /// Its cloud (`aws`, `local`).
    pub cloud: String,
    /// Where the HTTP API listens (default `127.0.0.1:7420`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// The SQLite metadata store file. Required.
    pub metadata_path: PathBuf,
    /// The operator's bearer token. Required; at least 16 characters.
    pub operator_token: String,
    /// The volume bucket (micro-partitions, metadata files, log records). Required.
    pub volume: StoreConfig,
    /// This deployment's replication bucket (its mailbox; `url`, `s3`, required) and the
    /// replication service's settings (`ship_interval`, …), in one `[replication]` table.
    pub replication: ReplicationSection,
    /// Where the root keys are. Required.
    pub keys: KeysConfig,
    /// Peer deployments this one may write to.
    pub peers: Vec<PeerConfig>,
    /// Background workers.
    pub workers: WorkersConfig,
    /// HTTP API limits.
    pub api: ApiConfig,
    /// Commit protocol settings.
    pub txn: TxnConfig,
    /// Message service settings.
    pub messaging: MessagingConfig,
    /// The compaction worker: when small files are merged.
    pub compaction: CompactionConfig,
    /// Logging.
    pub log: LogConfig,
    /// SQL interfaces besides `POST /v1/sql` (the PostgreSQL protocol).
    pub sql: SqlConfig,
    /// Apply monitoring: history, thresholds, notifications (see [`crate::monitor`]).
    pub monitor: crate::monitor::MonitorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            deployment_id: String::new(),
            region: "local".into(),
            cloud: "local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            metadata_path: PathBuf::new(),
            operator_token: String::new(),
            volume: StoreConfig::default(),
            replication: ReplicationSection::default(),
            keys: KeysConfig::default(),
            peers: Vec::new(),
            workers: WorkersConfig::default(),
            api: ApiConfig::default(),
            txn: TxnConfig::default(),
            messaging: MessagingConfig::default(),
            compaction: CompactionConfig::default(),
            log: LogConfig::default(),
            sql: SqlConfig::default(),
            monitor: crate::monitor::MonitorConfig::default(),
        }
    }
}

/// What a redacted secret prints as.
const REDACTED: &str = "<redacted>";

/// `Some("<redacted>")` for a set secret, `None` for an unset one.
fn redacted(secret: Option<&String>) -> Option<&'static str> {
    secret.map(|_| REDACTED)
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field by name (an exhaustive destructuring: a new field must be listed).
        let Config {
            deployment_id,
            region,
            cloud,
            listen,
            metadata_path,
            operator_token: _,
            volume,
            replication,
            keys,
            peers,
            workers,
            api,
            txn,
            messaging,
            compaction,
            log,
            sql,
            monitor,
        } = self;
        f.debug_struct("Config")
            .field("deployment_id", deployment_id)
            .field("region", region)
            .field("cloud", cloud)
            .field("listen", listen)
            .field("metadata_path", metadata_path)
            .field("operator_token", &REDACTED)
            .field("volume", volume)
            .field("replication", replication)
            .field("keys", keys)
            .field("peers", peers)
            .field("workers", workers)
            .field("api", api)
            .field("txn", txn)
            .field("messaging", messaging)
            .field("compaction", compaction)
            .field("log", log)
            .field("sql", sql)
            .field("monitor", monitor)
            .finish()
    }
}

impl std::fmt::Debug for KeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeysConfig::None => f.write_str("None"),
            KeysConfig::Local { dir, create, join } => f
                .debug_struct("Local")
                .field("dir", dir)
                .field("create", create)
                .field("join", join)
                .finish(),
            KeysConfig::Kms {
                gmk_key_id,
                master_key_id,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
            } => f
                .debug_struct("Kms")
                .field("gmk_key_id", gmk_key_id)
                .field("master_key_id", master_key_id)
                .field("endpoint", endpoint)
                .field("region", region)
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &redacted(secret_access_key.as_ref()))
                .finish(),
        }
    }
}

/// The key provider.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeysConfig {
    /// Not configured (an error at validation).
    #[default]
    None,
    /// Key files in a private folder (`gmk.key`, `master.key`).
    Local {
        /// The key folder.
        #[serde(default)]
        dir: PathBuf,
        /// Create the folder and keys when it holds none (default true).
        #[serde(default = "yes")]
        create: bool,
        /// When creating: take the group's GMK from this member's key folder (a deployment
        /// joining an existing group); a new GMK otherwise.
        #[serde(default)]
        join: Option<PathBuf>,
    },
    /// AWS KMS (or an emulator).
    Kms {
        /// The group's HMAC_256 GMK (id, ARN or alias).
        #[serde(default)]
        gmk_key_id: String,
        /// This deployment's symmetric master key (id, ARN or alias).
        #[serde(default)]
        master_key_id: String,
        /// Endpoint URL (an emulator); AWS when absent.
        #[serde(default)]
        endpoint: Option<String>,
        /// Region.
        #[serde(default)]
        region: Option<String>,
        /// Static access key id (else the AWS default chain).
        #[serde(default)]
        access_key_id: Option<String>,
        /// Static secret access key.
        #[serde(default)]
        secret_access_key: Option<String>,
    },
}

fn yes() -> bool {
    true
}

/// A peer deployment: where its replication bucket is, with this deployment's
/// write-only credentials for `from/<this>/` in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's deployment id.
    pub id: String,
    /// Its replication bucket.
    pub bucket: StoreConfig,
}

/// The `[replication]` table: this deployment's replication bucket (the fields of
/// [`StoreConfig`]: `url`, `[replication.s3]`) and, beside them, the replication service's
/// settings (the fields of [`ReplicationConfig`]: `ship_interval`, `refresh_interval`, …).
///
/// ```toml
/// [replication]
/// url = "file:///data/d1/replication"
/// ship_interval = "100ms"
/// refresh_interval = "1h"
/// # log records are deleted once every replica has them and they are this old; a
/// # replica behind by more is asked to refresh ("0s": keep the log for ever)
/// log_retention = "7d"
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicationSection {
    /// The replication bucket.
    pub bucket: StoreConfig,
    /// The replication service's settings.
    pub settings: ReplicationConfig,
}

impl ReplicationSection {
    /// The names of the settings' fields (the rest of the table is the bucket's).
    fn setting_names() -> Vec<String> {
        toml::Table::try_from(ReplicationConfig::default())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for ReplicationSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let table = toml::Table::deserialize(d)?;
        let names = Self::setting_names();
        let (mut bucket, mut settings) = (toml::Table::new(), toml::Table::new());
        for (k, v) in table {
            if names.contains(&k) {
                settings.insert(k, v);
            } else {
                bucket.insert(k, v);
            }
        }
        let bucket = toml::Value::Table(bucket)
            .try_into()
            .map_err(|e: toml::de::Error| {
                let mut m = format!("[replication]: {}", e.message().trim_end());
                if m.contains("unknown field") {
                    m.push_str(&format!(
                        " (or a replication setting: {})",
                        names.join(", ")
                    ));
                }
                D::Error::custom(m)
            })?;
        let settings = toml::Value::Table(settings)
            .try_into()
            .map_err(|e: toml::de::Error| {
                D::Error::custom(format!("[replication]: {}", e.message().trim_end()))
            })?;
        Ok(Self { bucket, settings })
    }
}

impl Serialize for ReplicationSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut t = toml::Table::try_from(&self.bucket).map_err(S::Error::custom)?;
        t.extend(toml::Table::try_from(&self.settings).map_err(S::Error::custom)?);
        t.serialize(s)
    }
}

/// Background workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Pause after a failed unit of work.
    #[serde(with = "humantime_serde")]
    pub error_backoff: Duration,
    /// How often in-doubt commits are completed (`TxnManager::recover`).
    #[serde(with = "humantime_serde")]
    pub recover_interval: Duration,
    /// How often a heartbeat goes to every peer of the group.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How often the monitor reads the agents' counter blocks and reports (history row,
    /// `/metrics` snapshot, thresholds, log line).
    #[serde(with = "humantime_serde")]
    pub monitor_interval: Duration,
    /// Finished transaction rows are forgotten after this long.
    #[serde(with = "humantime_serde")]
    pub txn_retention: Duration,
    /// How long shutdown waits for in-flight requests and workers before abandoning them
    /// (whatever is abandoned is completed or rolled back by recovery at the next start).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            error_backoff: Duration::from_secs(1),
            recover_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            monitor_interval: Duration::from_secs(10),
            txn_retention: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `[api]`: the HTTP API's limits, TLS, and who may read `/metrics`.
///
/// ```toml
/// [api]
/// max_body_bytes = 268435456      # a larger body of a request read whole: 413
/// request_timeout = "5m"          # a request not answered by then: 503 (loads exempt)
/// max_concurrent_requests = 512   # one more at once: 429 with Retry-After
/// metrics_token = "…"             # /metrics needs this bearer token (or the operator's)
/// metrics_tenant_labels = false   # account/database names in /metrics labels (else digests)
/// drain_period = "10s"            # after SIGTERM: probes 503, requests still served
/// [api.tls]
/// cert = "/etc/tern/api.crt"      # PEM chain, the server's certificate first
/// key = "/etc/tern/api.key"       # PEM private key (PKCS#8, PKCS#1 or SEC1)
/// client_ca = "/etc/tern/ca.crt"  # optional: clients must show a certificate it signed
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest request body read whole (DDL, DML and scan requests), in bytes. Inserts and
    /// loads (`POST …/rows`) stream their body and are not bounded by it.
    pub max_body_bytes: usize,
    /// Most rows a scan returns unless the request asks for fewer (scans stream, so this
    /// bounds the answer's length, not the daemon's memory).
    pub max_scan_rows: usize,
    /// How long a write's `Idempotency-Key` is kept (a retry within it is applied once);
    /// older keys are pruned by the recovery worker. A key whose transaction is still in
    /// doubt is kept regardless.
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Duration,
    /// A request not answered within this long is answered 503 (kind `unavailable`) and
    /// its handler dropped (a commit it left in doubt is completed by recovery). Inserts
    /// and loads (`POST …/rows`), whose streamed body may take long, are exempt.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most requests handled at once; one more is answered 429 with `Retry-After: 1`.
    /// `/healthz` and `/readyz` are never refused by it.
    pub max_concurrent_requests: usize,
    /// When set, `/metrics` needs `Authorization: Bearer <metrics_token>` (or the
    /// operator's token); open to anyone who reaches the port otherwise. At least 16
    /// characters.
    pub metrics_token: Option<String>,
    /// Whether `/metrics` shows tenant names (the `account`, `database`, `group` and
    /// `subject` labels) as they are; by default each value is replaced by a short stable
    /// digest (`t-1a2b3c4d`), so a scraper sees series, not customers.
    pub metrics_tenant_labels: bool,
    /// After SIGTERM, how long `/healthz` and `/readyz` answer 503 while requests are
    /// still served, before the listener closes: set it above the load balancer's health
    /// check interval so it stops sending traffic first (default `0s`: stop at once).
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// Serve the API over TLS (`[api.tls]`); plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ApiConfig {
            max_body_bytes,
            max_scan_rows,
            idempotency_retention,
            request_timeout,
            max_concurrent_requests,
            metrics_token,
            metrics_tenant_labels,
            drain_period,
            tls,
        } = self;
        f.debug_struct("ApiConfig")
            .field("max_body_bytes", max_body_bytes)
            .field("max_scan_rows", max_scan_rows)
            .field("idempotency_retention", idempotency_retention)
            .field("request_timeout", request_timeout)
            .field("max_concurrent_requests", max_concurrent_requests)
            .field("metrics_token", &redacted(metrics_token.as_ref()))
            .field("metrics_tenant_labels", metrics_tenant_labels)
            .field("drain_period", drain_period)
            .field("tls", tls)
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024 * 1024,
            max_scan_rows: 1_000_000,
            idempotency_retention: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(300),
            max_concurrent_requests: 512,
            metrics_token: None,
            metrics_tenant_labels: false,
            drain_period: Duration::ZERO,
            tls: None,
        }
    }
}

/// `[api.tls]`: the API's certificate and key (PEM files), and optionally the CA whose
/// client certificates it requires (mutual TLS). Read at start; a file that cannot be
/// read or parsed stops the start, naming its field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM, the server's certificate first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, every client must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Commit protocol settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxnConfig {
    /// How long a statement waits for its table locks.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(30),
        }
    }
}

/// The compaction worker (`[compaction]`): every `interval` it merges the small
/// micro-partitions of every table of a local or primary database (a secondary replica
/// receives its primary's compactions by replication), as ordinary commits.
///
/// ```toml
/// [compaction]
/// interval = "1m"        # "0s" turns compaction off
/// min_files = 16         # compact a table once it has this many small files
/// max_files = 1000       # most files merged by one commit
/// small_file_bytes = 1048576
/// target_file_bytes = 16777216
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// How often every table is looked at; `0s` turns compaction off.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A table is compacted once it has at least this many small files (at least 2).
    pub min_files: usize,
    /// Most small files merged by one compaction commit (at least `min_files`); a table
    /// with more is merged by several, one after the other.
    pub max_files: usize,
    /// A file whose stored size is below this many bytes is small.
    pub small_file_bytes: u64,
    /// Merged files are closed at about this many bytes (at least `small_file_bytes`).
    pub target_file_bytes: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        let o = tern_table::CompactionOptions::default();
        Self {
            interval: Duration::from_secs(60),
            min_files: o.min_files,
            max_files: o.max_files,
            small_file_bytes: o.small_file_bytes,
            target_file_bytes: o.target_file_bytes,
        }
    }
}

impl CompactionConfig {
    /// Whether the worker runs.
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// The thresholds as the table layer takes them.
    pub fn options(&self) -> tern_table::CompactionOptions {
        tern_table::CompactionOptions {
            min_files: self.min_files,
            max_files: self.max_files,
            small_file_bytes: self.small_file_bytes,
            target_file_bytes: self.target_file_bytes,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Pretty,
}

/// `[sql]`: SQL interfaces besides `POST /v1/sql`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// Where the PostgreSQL wire protocol listens (`"127.0.0.1:5433"`; port 0 picks a free
    /// port); off when absent. User = account, password = a token of it, database = the
    /// database. Passwords travel in cleartext: keep it on a loopback or private address.
    pub pg_listen: Option<SocketAddr>,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `ternd=debug,info`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads `path` (TOML), applies `env` overrides (`(name, value)` pairs, normally
    /// `std::env::vars()`), and validates.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| invalid("--config", format!("cannot read {}: {e}", p.display())))?,
            None => String::new(),
        };
        let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            invalid(
                "--config",
                format!("{} is not valid TOML: {}", show(path), e.message()),
            )
        })?;
        apply_env(&mut doc, env)?;
        if let Some(toml::Value::Table(keys)) = doc.get("keys")
            && !keys.contains_key("kind")
        {
            return Err(invalid("keys.kind", "is required: \"local\" or \"kms\""));
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| {
                invalid("--config", format!("{}: {}", show(path), e.message()))
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.deployment_id.is_empty() {
            return Err(invalid("deployment_id", "is required"));
        }
        DeploymentId::new(self.deployment_id.as_str())
            .map_err(|e| invalid("deployment_id", e.to_string()))?;
        if self.metadata_path.as_os_str().is_empty() {
            return Err(invalid("metadata_path", "is required"));
        }
        if self.operator_token.is_empty() {
            return Err(invalid("operator_token", "is required"));
        }
        if self.operator_token.len() < 16 {
            return Err(invalid("operator_token", "must be at least 16 characters"));
        }
        check_store("volume.url", &self.volume)?;
        check_store("replication.url", &self.replication.bucket)?;
        self.replication.settings.validate().map_err(|e| match e {
            tern_replication::Error::Invalid { reason, .. } => invalid("replication", reason),
            other => invalid("replication", other.to_string()),
        })?;
        match &self.keys {
            KeysConfig::None => {
                return Err(invalid(
                    "keys",
                    "is required: [keys] kind = \"local\" with dir, or kind = \"kms\"",
                ));
            }
            KeysConfig::Local { dir, .. } => {
                if dir.as_os_str().is_empty() {
                    return Err(invalid("keys.dir", "is required"));
                }
                if !dir.is_absolute() {
                    return Err(invalid("keys.dir", "must be an absolute path"));
                }
            }
            KeysConfig::Kms {
                gmk_key_id,
                master_key_id,
                ..
            } => {
                if gmk_key_id.is_empty() {
                    return Err(invalid("keys.gmk_key_id", "is required"));
                }
                if master_key_id.is_empty() {
                    return Err(invalid("keys.master_key_id", "is required"));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.id.is_empty() {
                return Err(invalid(format!("peers[{i}].id"), "is required"));
            }
            DeploymentId::new(p.id.as_str())
                .map_err(|e| invalid(format!("peers[{i}].id"), e.to_string()))?;
            if p.id == self.deployment_id {
                return Err(invalid(
                    format!("peers[{i}].id"),
                    "is this deployment's own id",
                ));
            }
            if !seen.insert(p.id.clone()) {
                return Err(invalid(
                    format!("peers[{i}].id"),
                    format!("{} is listed twice", p.id),
                ));
            }
            check_store(&format!("peers[{i}].bucket.url"), &p.bucket)?;
        }
        let w = &self.workers;
        for (field, d) in [
            ("workers.error_backoff", w.error_backoff),
            ("workers.recover_interval", w.recover_interval),
            ("workers.heartbeat_interval", w.heartbeat_interval),
            ("workers.monitor_interval", w.monitor_interval),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be positive"));
            }
        }
        if self.api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be positive"));
        }
        if self.api.max_scan_rows == 0 {
            return Err(invalid("api.max_scan_rows", "must be positive"));
        }
        if self.api.idempotency_retention.is_zero() {
            return Err(invalid("api.idempotency_retention", "must be positive"));
        }
        if self.api.request_timeout.is_zero() {
            return Err(invalid("api.request_timeout", "must be positive"));
        }
        if self.api.max_concurrent_requests == 0 {
            return Err(invalid("api.max_concurrent_requests", "must be positive"));
        }
        if let Some(t) = &self.api.metrics_token
            && t.len() < 16
        {
            return Err(invalid(
                "api.metrics_token",
                "must be at least 16 characters",
            ));
        }
        if let Some(tls) = &self.api.tls {
            for (field, path) in [("api.tls.cert", &tls.cert), ("api.tls.key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    return Err(invalid(field, "is required with [api.tls]"));
                }
            }
        }
        if self.txn.lock_timeout.is_zero() {
            return Err(invalid("txn.lock_timeout", "must be positive"));
        }
        // Checked even when off, so that turning it on later cannot fail at start.
        self.compaction.options().validate().map_err(|e| match e {
            tern_table::Error::InvalidCompactionOptions { field, reason } => {
                invalid(format!("compaction.{field}"), reason)
            }
            other => invalid("compaction", other.to_string()),
        })?;
        self.messaging.validate().map_err(|e| match e {
            tern_messaging::Error::InvalidConfig { field, reason } => {
                invalid(format!("messaging.{field}"), reason)
            }
            other => invalid("messaging", other.to_string()),
        })?;
        self.monitor
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }
}

fn show(path: Option<&std::path::Path>) -> String {
    path.map_or_else(|| "(no file)".into(), |p| p.display().to_string())
}

fn check_store(field: &str, store: &StoreConfig) -> Result<()> {
    if store.url.is_empty() {
        return Err(invalid(field, "is required"));
    }
    tern_storage::Location::parse(&store.url).map_err(|e| invalid(field, e.to_string()))?;
    Ok(())
}

/// Applies `TERN_*` overrides to a parsed TOML document (see the module docs).
fn apply_env(doc: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<()> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("TERN_")?.to_ascii_lowercase();
            let top = rest.split("__").next().unwrap_or_default().to_string();
            TOP_LEVEL_FIELDS
                .contains(&top.as_str())
                .then_some((rest, v))
        })
        .collect();
    vars.sort();
    for (path, raw) in vars {
        let parts: Vec<&str> = path.split("__").collect();
        let value = env_value(&raw);
        set_path(doc, &parts, value).map_err(|reason| {
            invalid(
                parts.join("."),
                format!("from TERN_{}: {reason}", path.to_ascii_uppercase()),
            )
        })?;
    }
    Ok(())
}

fn env_value(raw: &str) -> toml::Value {
    let parsed = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(
            v @ (toml::Value::Integer(_)
            | toml::Value::Float(_)
            | toml::Value::Boolean(_)
            | toml::Value::Array(_)),
        ) => v,
        // A quoted value is a string on purpose.
        Some(toml::Value::String(s)) if raw.trim_start().starts_with(['"', '\'']) => {
            toml::Value::String(s)
        }
        _ => toml::Value::String(raw.to_string()),
    }
}

fn set_path(
    table: &mut toml::Table,
    parts: &[&str],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let Some((first, rest)) = parts.split_first() else {
        return Err("empty name".into());
    };
    if rest.is_empty() {
        table.insert((*first).to_string(), value);
        return Ok(());
    }
    let next_is_index = rest[0].parse::<usize>().is_ok();
    let entry = table.entry((*first).to_string()).or_insert_with(|| {
        if next_is_index {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    });
    set_in(entry, rest, value)
}

fn set_in(
    node: &mut toml::Value,
    parts: &[&str],
    value: toml::Value,
) -> std::result::Result<(), String> {
    match node {
        toml::Value::Table(t) => set_path(t, parts, value),
        toml::Value::Array(items) => {
            let (first, rest) = parts.split_first().ok_or("empty name")?;
            let i: usize = first
                .parse()
                .map_err(|_| format!("{first:?} is not an array index"))?;
            if i > items.len() {
                return Err(format!(
                    "index {i} skips elements (the array has {})",
                    items.len()
                ));
            }
            if i == items.len() {
                items.push(toml::Value::Table(toml::Table::new()));
            }
            if rest.is_empty() {
                items[i] = value;
                return Ok(());
            }
            set_in(&mut items[i], rest, value)
        }
        _ => Err("descends into a value that is not a table".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(String, String)> {
        [
            ("TERN_DEPLOYMENT_ID", "d1"),
            ("TERN_METADATA_PATH", "/tmp/x/meta.db"),
            ("TERN_OPERATOR_TOKEN", "0123456789abcdef0123"),
            ("TERN_VOLUME__URL", "file:///tmp/x/volume"),
            ("TERN_REPLICATION__URL", "file:///tmp/x/replication"),
            ("TERN_KEYS__KIND", "local"),
            ("TERN_KEYS__DIR", "/tmp/x/keys"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn env_alone_makes_a_config() {
        let mut env = base();
        env.push(("TERN_WORKERS__RECOVER_INTERVAL".into(), "5s".into()));
        env.push(("TERN_API__MAX_BODY_BYTES".into(), "1000".into()));
        env.push(("TERN_PEERS__0__ID".into(), "d2".into()));
        env.push(("TERN_PEERS__0__BUCKET__URL".into(), "file:///tmp/y".into()));
        env.push(("TERN_URL".into(), "ignored".into()));
        let c = Config::load(None, env).expect("valid");
        assert_eq!(c.deployment_id, "d1");
        assert_eq!(c.workers.recover_interval, Duration::from_secs(5));
        assert_eq!(c.api.max_body_bytes, 1000);
        assert_eq!(c.peers[0].bucket.url, "file:///tmp/y");
    }

    #[test]
    fn each_required_field_is_named() {
        for missing in [
            "TERN_DEPLOYMENT_ID",
            "TERN_METADATA_PATH",
            "TERN_OPERATOR_TOKEN",
            "TERN_VOLUME__URL",
            "TERN_REPLICATION__URL",
            "TERN_KEYS__DIR",
        ] {
            let env: Vec<_> = base().into_iter().filter(|(k, _)| k != missing).collect();
            let err = Config::load(None, env).expect_err(missing).to_string();
            let field = missing
                .trim_start_matches("TERN_")
                .to_ascii_lowercase()
                .replace("__", ".");
            assert!(err.contains(&field), "{missing}: {err}");
        }
    }

    #[test]
    fn bad_url_and_unknown_field_are_named() {
        let mut env = base();
        env.push(("TERN_VOLUME__URL".into(), "ftp://x/y".into()));
        let err = Config::load(None, env).expect_err("bad url").to_string();
        assert!(err.contains("volume.url") && err.contains("ftp"), "{err}");
        let mut env = base();
        env.push(("TERN_WORKERS__NO_SUCH".into(), "1".into()));
        let err = Config::load(None, env).expect_err("unknown").to_string();
        assert!(err.contains("no_such"), "{err}");
    }

    #[test]
    fn replication_settings_share_the_bucket_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d1.toml");
        std::fs::write(
            &path,
            "deployment_id = \"d1\"\nmetadata_path = \"/tmp/x/meta.db\"\n\
             operator_token = \"0123456789abcdef0123\"\n\
             [volume]\nurl = \"file:///tmp/x/volume\"\n\
             [replication]\nurl = \"file:///tmp/x/replication\"\n\
             ship_interval = \"50ms\"\ncopy_concurrency = 8\nlog_retention = \"3d\"\n\
             [replication.s3]\nregion = \"eu-west-1\"\n\
             [keys]\nkind = \"local\"\ndir = \"/tmp/x/keys\"\n",
        )
        .expect("write");
        let env = vec![
            (
                "TERN_REPLICATION__REFRESH_INTERVAL".to_string(),
                "10m".to_string(),
            ),
            (
                "TERN_REPLICATION__LOG_PRUNE_INTERVAL".to_string(),
                "1h".to_string(),
            ),
        ];
        let c = Config::load(Some(&path), env).expect("valid");
        assert_eq!(c.replication.bucket.url, "file:///tmp/x/replication");
        assert_eq!(c.replication.bucket.s3.region, "eu-west-1");
        let r = &c.replication.settings;
        assert_eq!(r.ship_interval, Duration::from_millis(50));
        assert_eq!(r.copy_concurrency, 8);
        assert_eq!(r.refresh_interval, Duration::from_secs(600));
        assert_eq!(r.log_retention, Duration::from_secs(3 * 24 * 3600));
        assert_eq!(r.log_prune_interval, Duration::from_secs(3600));
        // Unnamed settings keep their defaults.
        let d = ReplicationConfig::default();
        assert_eq!(r.announce_interval, d.announce_interval);
        assert_eq!(r.ship_batch, d.ship_batch);
        // The table round-trips (bucket and settings side by side).
        let text = toml::to_string(&c).expect("serialize");
        let back: Config = toml::from_str(&text).expect("parse back");
        assert_eq!(back.replication, c.replication);
    }

    #[test]
    fn replication_defaults_and_errors_are_named() {
        let c = Config::load(None, base()).expect("valid");
        assert_eq!(c.replication.settings, ReplicationConfig::default());
        let mut env = base();
        env.push(("TERN_REPLICATION__COPY_CONCURRENCY".into(), "0".into()));
        let err = Config::load(None, env).expect_err("zero").to_string();
        assert!(
            err.contains("replication") && err.contains("copy_concurrency"),
            "{err}"
        );
        let mut env = base();
        env.push(("TERN_REPLICATION__LOG_PRUNE_BATCH".into(), "0".into()));
        let err = Config::load(None, env).expect_err("zero").to_string();
        assert!(
            err.contains("replication") && err.contains("log_prune_batch"),
            "{err}"
        );
        let mut env = base();
        env.push(("TERN_REPLICATION__SHIP_EVERY".into(), "1s".into()));
        let err = Config::load(None, env).expect_err("unknown").to_string();
        assert!(
            err.contains("ship_every") && err.contains("ship_interval"),
            "{err}"
        );
        let mut env = base();
        env.push(("TERN_REPLICATION__SHIP_INTERVAL".into(), "soon".into()));
        let err = Config::load(None, env)
            .expect_err("bad duration")
            .to_string();
        assert!(err.contains("replication"), "{err}");
    }

    #[test]
    fn compaction_defaults_can_be_turned_off_and_bad_thresholds_are_named() {
        let c = Config::load(None, base()).expect("valid");
        assert!(c.compaction.enabled());
        assert_eq!(c.compaction.interval, Duration::from_secs(60));
        assert_eq!(
            c.compaction.options(),
            tern_table::CompactionOptions::default()
        );
        let mut env = base();
        env.push(("TERN_COMPACTION__INTERVAL".into(), "0s".into()));
        env.push(("TERN_COMPACTION__MIN_FILES".into(), "4".into()));
        let c = Config::load(None, env).expect("valid");
        assert!(!c.compaction.enabled());
        assert_eq!(c.compaction.min_files, 4);
        for (var, value, field) in [
            ("TERN_COMPACTION__MIN_FILES", "1", "compaction.min_files"),
            ("TERN_COMPACTION__MAX_FILES", "3", "compaction.max_files"),
            (
                "TERN_COMPACTION__SMALL_FILE_BYTES",
                "0",
                "compaction.small_file_bytes",
            ),
            (
                "TERN_COMPACTION__TARGET_FILE_BYTES",
                "1024",
                "compaction.target_file_bytes",
            ),
        ] {
            let mut env = base();
            env.push((var.into(), value.into()));
            let err = Config::load(None, env).expect_err(var).to_string();
            assert!(err.contains(field), "{var}: {err}");
        }
        let mut env = base();
        env.push(("TERN_COMPACTION__EVERY".into(), "1s".into()));
        let err = Config::load(None, env).expect_err("unknown").to_string();
        assert!(err.contains("every"), "{err}");
    }

    #[test]
    fn idempotency_retention_defaults_to_a_day_and_must_be_positive() {
        let c = Config::load(None, base()).expect("valid");
        assert_eq!(c.api.idempotency_retention, Duration::from_secs(24 * 3600));
        let mut env = base();
        env.push(("TERN_API__IDEMPOTENCY_RETENTION".into(), "2h".into()));
        let c = Config::load(None, env).expect("valid");
        assert_eq!(c.api.idempotency_retention, Duration::from_secs(7200));
        let mut env = base();
        env.push(("TERN_API__IDEMPOTENCY_RETENTION".into(), "0s".into()));
        let err = Config::load(None, env).expect_err("zero").to_string();
        assert!(err.contains("api.idempotency_retention"), "{err}");
    }

    #[test]
    fn debug_redacts_every_secret() {
        let mut env = base();
        env.push((
            "TERN_API__METRICS_TOKEN".into(),
            "metrics-secret-0123456789".into(),
        ));
        let mut c = Config::load(None, env).expect("valid");
        let shown = format!("{c:?}");
        assert!(shown.contains("deployment_id: \"d1\""), "{shown}");
        c.keys = KeysConfig::Kms {
            gmk_key_id: "alias/gmk".into(),
            master_key_id: "alias/master".into(),
            endpoint: None,
            region: Some("eu-west-1".into()),
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("kms-secret-key-value".into()),
        };
        let shown = format!("{c:?} {c:#?}");
        for secret in [
            "0123456789abcdef0123",
            "metrics-secret-0123456789",
            "kms-secret-key-value",
        ] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(
            shown.contains("<redacted>") && shown.contains("alias/gmk"),
            "{shown}"
        );
    }

    #[test]
    fn limits_and_tls_are_checked_naming_the_field() {
        let c = Config::load(None, base()).expect("valid");
        assert_eq!(c.api.request_timeout, Duration::from_secs(300));
        assert_eq!(c.api.max_concurrent_requests, 512);
        assert!(c.api.tls.is_none() && !c.api.metrics_tenant_labels);
        for (var, value, field) in [
            ("TERN_API__REQUEST_TIMEOUT", "0s", "api.request_timeout"),
            (
                "TERN_API__MAX_CONCURRENT_REQUESTS",
                "0",
                "api.max_concurrent_requests",
            ),
            ("TERN_API__METRICS_TOKEN", "short", "api.metrics_token"),
            ("TERN_API__TLS__CERT", "/etc/tern/api.crt", "api.tls.key"),
        ] {
            let mut env = base();
            env.push((var.into(), value.into()));
            let err = Config::load(None, env).expect_err(var).to_string();
            assert!(err.contains(field), "{var}: {err}");
        }
    }
}
