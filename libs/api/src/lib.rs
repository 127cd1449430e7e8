//! The request and response bodies of `ternd`'s HTTP API (see `ternd::api` for the
//! routes), shared by the daemon, which serialises them, and the `tern` CLI, which
//! deserialises them.
//!
//! One type per body means a field renamed on one side is renamed on the other, and a
//! field the CLI needs but the daemon does not send is an error naming the field, not a
//! blank column. The types hold only what the wire carries: engine types are not
//! dependencies here (an enum such as a database's role is its wire name, a string), so
//! the CLI builds without the engine.
//!
//! Fields the CLI does not interpret (a worker's figures, a refresh request) are kept as
//! [`serde_json::Value`]: their shape belongs to the engine crate that produces them.
//! Unknown fields are ignored when reading (a newer daemon may add some); the wire
//! format of every type is pinned by the golden tests at the bottom of this file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An error answer: `{"error": {...}}` with the HTTP status of its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, in an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The error kind (`invalid_input`, `not_found`, `conflict`, `unavailable`, …).
    pub kind: String,
    /// The message, with its causes.
    pub message: String,
    /// A commit in doubt: the transaction to ask about (`GET …/transactions/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<u64>,
    /// A write refused on a replica: the role epoch it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// A write refused on a replica: where the primary is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
}

/// Where the writable primary of a database is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    /// Its deployment.
    pub deployment: String,
    /// Its API URL, when known.
    pub url: Option<String>,
    /// The role epoch.
    pub epoch: u64,
}

/// A request naming one new thing: `POST /v1/accounts`, `…/databases`, `…/schemas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Named {
    /// Its name.
    pub name: String,
}

/// `GET /v1/status` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This deployment's id.
    pub deployment: String,
    /// Its region.
    pub region: String,
    /// Its cloud.
    pub cloud: String,
    /// Seconds since the daemon started.
    pub uptime_secs: f64,
    /// Shutdown has begun.
    pub stopping: bool,
    /// The supervised workers.
    pub workers: Vec<Worker>,
    /// Messages by `direction/state`.
    pub queues: BTreeMap<String, u64>,
    /// Transactions not final, by state.
    pub unfinished_transactions: BTreeMap<String, usize>,
    /// Commits since start.
    pub commits: u64,
    /// Rows inserted since start.
    pub rows_inserted: u64,
}

/// One supervised worker in a [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    /// Its name.
    pub name: String,
    /// `running`, `idle`, `backoff`, `stopped` or `failed`.
    pub state: String,
    /// Units that did something.
    pub busy_units: u64,
    /// Units that failed.
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Worker-specific figures, `(name, value)`.
    pub figures: Vec<(String, u64)>,
    /// Seconds since its last unit ended.
    pub last_unit_secs_ago: Option<f64>,
}

/// `POST /v1/deployments`: add a deployment to the group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateDeployment {
    /// Its id.
    pub id: String,
    /// Its region.
    #[serde(default)]
    pub region: String,
    /// Its cloud.
    #[serde(default)]
    pub cloud: String,
    /// Its replication bucket (empty: from the daemon's `[[peers]]` entry).
    #[serde(default)]
    pub replication_bucket_url: String,
    /// The genesis of its channel to us, when it made one already (registered at once).
    #[serde(default)]
    pub genesis: Option<Value>,
}

/// The answer to [`CreateDeployment`] (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentCreated {
    /// Its id.
    pub deployment: String,
    /// The genesis of our channel to it, for its `POST /v1/deployments/{us}/channel`
    /// (none without a `[[peers]]` entry for it).
    pub genesis: Option<Value>,
}

/// The answer to `POST /v1/deployments/{id}/channel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRegistered {
    /// `sender->receiver`.
    pub registered: String,
}

/// `GET /v1/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentList {
    /// The group, this deployment included.
    pub deployments: Vec<Deployment>,
}

/// One member of the group, as one deployment sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Its cloud.
    pub cloud: String,
    /// Its replication bucket.
    pub replication_bucket_url: String,
    /// When it was added (ms since the epoch).
    pub added_at_ms: i64,
    /// It is the deployment answering.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Message files written to it.
    pub files_sent: Option<u64>,
    /// Message files received from it.
    pub files_received: Option<u64>,
    /// The group as it last told us.
    pub peer_members: Option<Vec<String>>,
    /// Messages it last said it handled.
    pub peer_messages: Option<u64>,
    /// Its last heartbeat (ms since the epoch).
    pub last_heartbeat_ms: Option<i64>,
}

/// `GET /v1/accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountList {
    /// The account names the caller may see.
    pub accounts: Vec<String>,
}

/// The answer to `POST /v1/accounts` (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountCreated {
    /// Its name.
    pub account: String,
    /// Its first token (shown once; only its hash is stored).
    pub token: String,
}

/// `GET /v1/accounts/{a}/databases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseList {
    /// The live databases.
    pub databases: Vec<DatabaseInfo>,
}

/// One database in a [`DatabaseList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    /// Its name.
    pub name: String,
    /// Its internal id.
    pub id: String,
    /// `local`, `primary` or `secondary`.
    pub role: String,
}

/// The answer to `POST /v1/accounts/{a}/databases` (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseCreated {
    /// Its name.
    pub database: String,
    /// Its internal id.
    pub id: String,
}

/// `POST …/databases/{db}/replication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetReplication {
    /// On (the database becomes the primary of a new group) or off (local again).
    pub enable: bool,
    /// Only these accounts (`account` or `deployment.account`) may hold a replica;
    /// absent: the list kept is unchanged.
    #[serde(default)]
    pub accounts: Option<Vec<String>>,
}

/// The answer to [`SetReplication`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationSet {
    /// The database.
    pub database: String,
    /// Replication is on.
    pub enabled: bool,
    /// Its group, when on.
    pub group: Option<String>,
    /// The accounts allowed, as asked.
    pub accounts: Option<Vec<String>>,
}

/// `POST /v1/accounts/{a}/replicas`: `create database X as replica of <group>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateReplica {
    /// The new database's name.
    pub name: String,
    /// The group (id, or `deployment.account.database`).
    pub group: String,
    /// The deployment to refresh from (chain topology); default the primary.
    #[serde(default)]
    pub upstream: Option<String>,
}

/// The answer to [`CreateReplica`] (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaCreated {
    /// Its internal id.
    pub database: String,
    /// Its name.
    pub name: String,
    /// Its group.
    pub group: String,
    /// Its upstream, when not the primary.
    pub upstream: Option<String>,
}

/// The answer to `DELETE /v1/accounts/{a}/replicas/{db}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDropped {
    /// Its name.
    pub dropped: String,
}

/// The answer to `POST …/databases/{db}/refresh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshRequested {
    /// The database.
    pub database: String,
    /// The refresh request's id (a pending one is kept and named).
    pub request: String,
}

/// One secondary replica in a [`ReplicationStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The database name.
    pub database: String,
    /// Its account.
    pub account: String,
    /// Its group.
    pub group: String,
    /// Where it replicates from.
    pub upstream: String,
    /// Versions behind the newest upstream versions known here.
    pub versions_behind: u64,
    /// Transactions behind the primary's last heartbeat.
    pub txns_behind: u64,
    /// How far the data here trails the primary (ms).
    pub lag_ms: i64,
    /// How long ago the primary's state was last heard (none: never).
    pub staleness_ms: Option<i64>,
    /// When it is brought up to date (`continuous`, `every 5m`, `daily 02:30`).
    pub schedule: String,
    /// When its next scheduled refresh is due.
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

/// `GET …/databases/{db}/replication` (the account's token): one database's place in its
/// group as this deployment sees it. What `--wait` follows a refresh, a failover or a
/// switchover with, so it needs no more than the token the command itself needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseReplication {
    /// The deployment answering.
    pub deployment: String,
    /// The account.
    pub account: String,
    /// The database.
    pub database: String,
    /// `local`, `primary` or `secondary`.
    pub role: String,
    /// Its database group (none: local).
    pub group: Option<String>,
    /// The epoch of its role here.
    pub epoch: u64,
    /// The newest epoch of the group known here.
    pub group_epoch: u64,
    /// Who holds the primary at `group_epoch`.
    pub primary: Option<String>,
    /// The primary's availability as judged here (secondaries).
    pub primary_state: Option<String>,
    /// This deployment takes commits for it now: it holds the primary, no switchover
    /// pauses it, and in a group of three or more a majority confirmed its lease.
    pub writable: bool,
    /// The primary: the group's members it counts (itself included).
    pub members: Vec<String>,
    /// The primary: members whose heartbeat at `epoch` arrived (they follow it).
    pub following: Vec<String>,
    /// Members judged unavailable (or in maintenance) here.
    pub down: Vec<String>,
    /// A secondary replica: its refresh figures.
    pub replica: Option<ReplicaStatus>,
}

/// `POST …/databases/{db}/failover`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// Promote even when the known loss is beyond the RPO or no majority is reached.
    #[serde(default)]
    pub allow_data_loss: bool,
}

/// The answer to `POST …/databases/{db}/failover`: what the promotion did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverReport {
    /// The database group.
    pub group: String,
    /// The database promoted.
    pub database: String,
    /// The epoch claimed.
    pub epoch: u64,
    /// The primary it replaced.
    pub previous_primary: Option<String>,
    /// Its availability when the failover started.
    pub previous_primary_state: Option<String>,
    /// Transactions the old primary had committed (by its last heartbeat here) that were
    /// not applied here.
    pub known_loss_txns: u64,
    /// Time between the newest commit applied here and the newest the old primary
    /// reported (ms).
    pub known_loss_ms: i64,
    /// How long ago the old primary was last heard (ms; none: never).
    pub primary_silent_ms: Option<i64>,
    /// Import jobs and messages drained before judging.
    pub drained: u64,
    /// Whether the drain ran out of time.
    pub drain_timed_out: bool,
    /// From the command to writable (ms): the measured RTO.
    pub rto_ms: u64,
    /// Whether the new primary held its lease when the command returned.
    pub lease_held: bool,
    /// The policy's RTO, when it has one (ms).
    pub max_unavailable_ms: Option<u64>,
    /// Whether `--allow-data-loss` was needed.
    pub forced: bool,
}

/// The answer to `POST …/databases/{db}/switchover`: what the planned handover did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchoverReport {
    /// The database group.
    pub group: String,
    /// The database promoted.
    pub database: String,
    /// The epoch it holds.
    pub epoch: u64,
    /// The primary it replaced (none: it was the primary already).
    pub previous_primary: Option<String>,
    /// The old primary's last transaction, applied here before the claim.
    pub applied_seq: u64,
    /// From the command to writable (ms).
    pub pause_ms: u64,
    /// Whether the new primary held its lease when the command returned.
    pub lease_held: bool,
}

// ---- tables, DML, scans ----

/// One column of a [`TableInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Its name.
    pub name: String,
    /// Its type (`int64`, `utf8`, …).
    #[serde(rename = "type")]
    pub ty: String,
    /// NULLs allowed.
    pub nullable: bool,
}

/// A table: `GET …/tables/{t}`, the answer to `POST …/schemas/{s}/tables`, and each
/// table of a [`TableList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its internal id.
    pub id: String,
    /// Its current version.
    pub version: u64,
    /// Its columns.
    pub columns: Vec<ColumnInfo>,
}

/// `GET …/databases/{db}/tables`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableList {
    /// Every table of every schema.
    pub tables: Vec<TableInfo>,
}

/// The answer to `DELETE …/tables/{t}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDropped {
    /// Its name.
    pub dropped: String,
}

/// The answer to a write (`…/rows`, `…/delete`, `…/update`, `…/merge`, `…/columns`):
/// its commit. A retried idempotent write whose outcome was not kept answers only
/// `committed`, `txn_id` and `replayed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitAnswer {
    /// The table version it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// It committed (false: nothing to change).
    pub committed: bool,
    /// Rows written or changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Files added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_added: Option<u64>,
    /// Files removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_removed: Option<u64>,
    /// Its transaction.
    pub txn_id: Option<u64>,
    /// The answer of an earlier request with the same `Idempotency-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
}

/// One version in a [`VersionList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version.
    pub version: u64,
    /// When it committed (ms since the epoch).
    pub committed_at_ms: i64,
    /// Its transaction.
    pub txn_id: Option<u64>,
    /// Files it added.
    pub files_added: u64,
    /// Files it removed.
    pub files_removed: u64,
}

/// `GET …/tables/{t}/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionList {
    /// The table.
    pub table: String,
    /// Its current version.
    pub current: u64,
    /// Every version kept.
    pub versions: Vec<VersionInfo>,
}

/// What a JSON scan answer (`POST …/tables/{t}/scan`) says before its rows: it streams
/// as `{version, columns, files_total, "rows": [...], ` then a [`ScanTail`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanHead {
    /// The version read.
    pub version: u64,
    /// The columns, in the rows' order.
    pub columns: Vec<String>,
    /// Files of that version.
    pub files_total: u64,
}

/// What a JSON scan answer says after its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanTail {
    /// Rows returned.
    pub row_count: u64,
    /// Rows matching (none: not known, the scan stopped at its limit).
    pub matched: Option<u64>,
    /// The limit cut the answer short.
    pub truncated: bool,
    /// Files read.
    pub files_read: u64,
}

// ---- tokens and keys ----

/// `POST /v1/accounts/{a}/tokens`: what a new token may be.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Refused on writes.
    #[serde(default)]
    pub read_only: bool,
    /// Refused after this long (`30d`, `12h`); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    /// A name for listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One token of an account (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The account.
    pub account: String,
    /// Its id (for `DELETE …/tokens/{id}`).
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// Refused on writes.
    pub read_only: bool,
    /// When it was made (ms since the epoch).
    pub created_at_ms: i64,
    /// When it stops working.
    pub expires_at_ms: Option<i64>,
    /// It stopped working.
    pub expired: bool,
}

/// The answer to [`NewToken`] (201): the token and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenMade {
    /// The token.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// Its secret (only its hash is stored).
    pub token: String,
}

/// `GET /v1/accounts/{a}/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    /// The account.
    pub account: String,
    /// Its tokens.
    pub tokens: Vec<TokenInfo>,
}

/// The answer to `DELETE /v1/accounts/{a}/tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// The account.
    pub account: String,
    /// The token.
    pub id: String,
    /// Revoked.
    pub revoked: bool,
}

/// One version of an account's master key (never key material).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The version.
    pub version: u64,
    /// `active` or `retired`.
    pub state: String,
    /// When it was made (ms since the epoch).
    pub created_at_ms: i64,
    /// When it was retired.
    pub retired_at_ms: Option<i64>,
}

/// `GET /v1/accounts/{a}/keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyList {
    /// The account.
    pub account: String,
    /// Its master key's versions.
    pub keys: Vec<KeyVersion>,
}

/// The answer to `POST /v1/accounts/{a}/keys/rotate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRotated {
    /// The account.
    pub account: String,
    /// The new version.
    pub version: u64,
    /// Versions retired.
    pub retired: Vec<u64>,
    /// Table keys wrapped again.
    pub tables_rewrapped: u64,
    /// Every version now.
    pub keys: Vec<KeyVersion>,
}

// ---- global accounts and databases, connections, jobs, conflicts, policy ----

/// The answer to `POST /v1/accounts/{a}/global`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountGlobal {
    /// The account.
    pub account: String,
    /// Its account group.
    pub group: String,
}

/// One row of `GET …/global/accounts` and `…/global/databases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalRow {
    /// Region of the deployment holding it.
    pub region: String,
    /// The deployment.
    pub deployment: String,
    /// The account.
    pub account: String,
    /// The replication group.
    pub replication_group: String,
    /// The name (account or database).
    pub name: String,
    /// Databases: `primary` or `secondary`.
    pub role: Option<String>,
    /// Secondary replicas: where they replicate from.
    pub upstream: Option<String>,
}

/// `GET /v1/accounts/{a}/global/accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalAccounts {
    /// The account group's members.
    pub accounts: Vec<GlobalRow>,
}

/// `GET /v1/accounts/{a}/global/databases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalDatabases {
    /// The group's databases and replicas.
    pub databases: Vec<GlobalRow>,
}

/// `POST /v1/accounts/{a}/connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    /// Its name.
    pub name: String,
    /// The database group it names.
    pub group: String,
}

/// A connection and where it leads now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// Its name.
    pub name: String,
    /// The database group.
    pub group: String,
    /// The deployment holding the group's primary.
    pub primary: Option<String>,
    /// Its epoch.
    pub epoch: u64,
    /// The primary's API URL, when it published one.
    pub url: Option<String>,
    /// The deployment the connection was made on.
    pub made_on: String,
}

/// `GET /v1/accounts/{a}/connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionList {
    /// The account's connections.
    pub connections: Vec<Connection>,
}

/// One copy or import job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `snapshot` (copy) or `import`.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The peer that asked or answered.
    pub peer: String,
    /// The database group.
    pub group: String,
    /// Attempts so far.
    pub attempts: u32,
    /// `waiting`, `backing_off` or `failed`.
    pub state: String,
    /// When it is tried again.
    pub next_attempt_at_ms: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// `GET /v1/replication/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// Every job.
    pub jobs: Vec<Job>,
}

/// One conflict record: what an old primary committed past a failover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Its id.
    pub id: String,
    /// The database group.
    pub group: String,
    /// The deployment that committed it.
    pub origin: String,
    /// Its transaction.
    pub txn_id: Option<u64>,
    /// The epoch it was committed under.
    pub epoch: u64,
    /// When (ms since the epoch).
    pub committed_at_ms: i64,
    /// `open`, `applied` or `discarded`.
    pub state: String,
    /// How it was resolved.
    #[serde(default)]
    pub resolution: Option<String>,
    /// The rest of the record (database, versions, times) as the engine keeps it.
    #[serde(flatten)]
    pub more: BTreeMap<String, Value>,
}

/// `GET /v1/conflicts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictList {
    /// Every record kept here.
    pub conflicts: Vec<Conflict>,
}

/// `GET …/databases/{db}/policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    /// The database.
    pub database: String,
    /// Its group.
    pub group: String,
    /// The newest epoch known here.
    pub epoch: u64,
    /// Who holds the primary.
    pub primary: Option<String>,
    /// The failover policy (its shape is the engine's).
    pub policy: Value,
}

/// The answer to `POST …/databases/{db}/policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySet {
    /// The database.
    pub database: String,
    /// The policy now.
    pub policy: Value,
}

// ---- schemas, transactions, accounts' keys ----

/// The answer to `POST …/databases/{db}/schemas` (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaCreated {
    /// Its name.
    pub schema: String,
}

/// `GET …/databases/{db}/schemas`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaList {
    /// The schema names.
    pub schemas: Vec<String>,
}

/// `GET /v1/accounts/{a}/transactions/{id}`: what became of a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnStatus {
    /// The transaction.
    pub txn_id: u64,
    /// `committed` or `in_doubt` (prepared: recovery will commit it).
    pub status: String,
    /// `pruned`: committed, its log record pruned since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_record: Option<String>,
    /// The status in words, when the status alone does not say it all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// In doubt: the state it was left in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The answer to `DELETE /v1/accounts/{a}` (operator): the account crypto-shredded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountDropped {
    /// The account.
    pub account: String,
    /// Dropped.
    pub dropped: bool,
    /// Versions of its master key destroyed.
    pub key_versions_destroyed: u64,
}

/// Where an account's customer-managed key is (the key stays there; only this reference
/// is stored). Also the body of `POST /v1/accounts/{a}/customer-key`, with `create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CustomerKeySpec {
    /// A static X25519 key pair whose private key is in a file on the daemon's host.
    X25519 {
        /// The private key file.
        file: String,
    },
    /// An RSA key of the deployment's KMS.
    KmsRsa {
        /// The KMS key id, ARN or alias.
        key_id: String,
    },
}

/// `POST /v1/accounts/{a}/customer-key` (operator): a key to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCustomerKey {
    /// Where the key is.
    #[serde(flatten)]
    pub spec: CustomerKeySpec,
    /// Make a new key pair when the file is missing (only inside the keys folder).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
}

/// The answer to [`RegisterCustomerKey`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerKeyRegistered {
    /// The account.
    pub account: String,
    /// The key's id.
    pub key_id: String,
    /// Where it is.
    pub spec: CustomerKeySpec,
}

/// One account's customer-managed key and whether it opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerKeyStatus {
    /// The account.
    pub account: String,
    /// Where the key is.
    pub spec: CustomerKeySpec,
    /// Its key id, when it opened.
    pub key_id: Option<String>,
    /// Why it did not open.
    pub error: Option<String>,
}

/// `GET /v1/accounts/{a}/customer-key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerKeyView {
    /// The key (none: the account uses none).
    pub customer_key: Option<CustomerKeyStatus>,
}

/// The answer to `DELETE /v1/accounts/{a}/customer-key` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerKeyRemoved {
    /// The account.
    pub account: String,
    /// There was one to remove.
    pub removed: bool,
}

// ---- peers' availability, replication status, jobs, conflicts, messages ----

/// The answer to `POST /v1/deployments/{id}/maintenance` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceSet {
    /// The peer.
    pub deployment: String,
    /// Its availability now (`maintenance`, or as judged again).
    pub state: String,
}

/// One peer's availability as this deployment judges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAvailability {
    /// The peer.
    pub peer: String,
    /// `available`, `suspect`, `unavailable` or `maintenance`.
    pub state: String,
    /// Since when (ms since the epoch, local clock).
    pub since_ms: i64,
    /// When its last heartbeat arrived.
    pub last_heard_ms: Option<i64>,
    /// Taken out by an operator.
    pub maintenance: bool,
    /// Its public API URL (from its heartbeats).
    pub url: Option<String>,
}

/// One change of a peer's availability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityEvent {
    /// Its number (ascending).
    pub seq: u64,
    /// The peer.
    pub peer: String,
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// When (ms since the epoch, local clock).
    pub at_ms: i64,
    /// Why.
    pub reason: String,
}

/// `GET /v1/availability` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityView {
    /// Every peer.
    pub peers: Vec<PeerAvailability>,
    /// The newest changes.
    pub history: Vec<AvailabilityEvent>,
}

/// The answer to `POST …/databases/{db}/schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSet {
    /// The database.
    pub database: String,
    /// The schedule now (`continuous`, `every 5m`, `daily 02:30`).
    pub schedule: String,
    /// The refresh request it made or kept.
    pub request: String,
}

/// One database group held here, in a [`ReplicationStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// The local database.
    pub database: String,
    /// `local`, `primary` or `secondary`.
    pub role: String,
    /// The epoch of its role here.
    pub epoch: u64,
    /// The newest epoch known here.
    pub group_epoch: u64,
    /// Who holds the primary.
    pub primary: Option<String>,
    /// The primary's availability (secondaries).
    pub primary_state: Option<String>,
    /// Secondaries: transactions behind; primary: transactions no replica confirmed.
    pub txns_behind: u64,
    /// The age of the oldest commit at risk (ms).
    pub rpo_exposure_ms: i64,
    /// Secondaries: how long ago the primary was last heard.
    pub primary_heard_ago_ms: Option<i64>,
    /// The failover policy (its shape is the engine's).
    pub policy: Value,
    /// Conflict records not yet applied or discarded.
    pub conflicts: u64,
}

/// One replica a peer keeps of a local database, in a [`ReplicationStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownstreamStatus {
    /// The database name.
    pub database: String,
    /// The group.
    pub group: String,
    /// The replica's deployment.
    pub peer: String,
    /// Log records are shipped.
    pub subscribed: bool,
    /// Transactions not shipped yet.
    pub records_behind: u64,
    /// Log records shipped.
    pub records_shipped: u64,
    /// Snapshots answered.
    pub snapshots: u64,
    /// Bytes copied to the peer.
    pub bytes_copied: u64,
    /// The customer-managed key the replica's keys are sealed to.
    pub sealed_to: Option<String>,
    /// Nothing is shipped to it until its refresh (it fell behind the log retention).
    pub refresh_needed: bool,
    /// The last error.
    pub last_error: Option<String>,
}

/// `GET /v1/replication/status` (operator): `show replication-status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// The database groups held here.
    pub groups: Vec<GroupStatus>,
    /// Every peer's availability.
    pub peers: Vec<PeerAvailability>,
    /// Local secondary replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas peers keep of local databases.
    pub downstream: Vec<DownstreamStatus>,
    /// Snapshot requests waiting for the copy workers.
    pub snapshot_jobs: u64,
    /// Snapshot responses waiting to be imported.
    pub import_jobs: u64,
    /// Every copy and import job.
    pub jobs: Vec<Job>,
    /// Messages waiting in the outbox.
    pub outbox: u64,
    /// Cumulative figures since start, by name.
    pub counters: BTreeMap<String, u64>,
}

/// The rows one table's version of a conflict record added and removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictTable {
    /// The table (local id).
    pub table: String,
    /// Its qualified name, when the table still exists.
    pub name: Option<String>,
    /// The version the conflict made.
    pub version: u64,
    /// Rows it added: free-form objects, column name to value (the columns are the
    /// user's, so they stay `Value`).
    pub added: Vec<Value>,
    /// Rows it removed (none: those files are no longer readable here).
    pub removed: Option<Vec<Value>>,
}

/// `GET /v1/conflicts/{id}` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictShow {
    /// The record.
    pub conflict: Conflict,
    /// Its rows per table.
    pub tables: Vec<ConflictTable>,
}

/// The answer to `POST /v1/conflicts/{id}/apply` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictApplied {
    /// The record.
    pub id: String,
    /// The versions made on the primary, `(table id, version)`.
    pub versions: Vec<(String, u64)>,
    /// It had been applied before (nothing made now).
    pub already: bool,
}

/// One message whose handler failed, kept for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedMessage {
    /// Its sender.
    pub peer: String,
    /// Its id.
    pub id: String,
    /// Its type.
    pub message_type: String,
    /// Handler runs.
    pub attempts: u32,
    /// The last handler error.
    pub last_error: Option<String>,
    /// When it failed.
    pub failed_at_ms: Option<i64>,
    /// When it is cleaned up by itself.
    pub expires_at_ms: Option<i64>,
}

/// `GET /v1/messages/failed` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedMessages {
    /// Oldest first.
    pub messages: Vec<FailedMessage>,
}

/// The answer to `POST /v1/messages/failed/{peer}/{id}/{retry|discard}` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageActionDone {
    /// The sender.
    pub peer: String,
    /// The message.
    pub id: String,
    /// `retry` or `discard`.
    pub done: String,
}

/// The answer to `POST /v1/messages/channels/{peer}/resync` (operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resynced {
    /// The channel (`sender->receiver`).
    pub channel: String,
    /// The file the channel was stalled at (the first skipped).
    pub from_seq: u64,
    /// The file it resumed at.
    pub to_seq: u64,
    /// Files skipped.
    pub skipped_files: Vec<String>,
    /// Messages of the file it resumed at, persisted now.
    pub persisted: u64,
    /// The resend message queued to the sender.
    pub resend: Option<String>,
}

// ---- monitor ----

/// An alert firing, in a [`MonitorHistory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorAlert {
    /// What kind of threshold (`lag_over_rpo`, …).
    pub kind: String,
    /// Which one.
    pub subject: String,
    /// Since when (ms since the epoch).
    pub since_ms: i64,
    /// The last value seen (none: not a finite number).
    pub value: Option<f64>,
    /// The threshold.
    pub limit: Option<f64>,
}

/// `GET /v1/monitor?last=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorHistory {
    /// The deployment answering.
    pub deployment: String,
    /// Its monitor interval (ms).
    pub interval_ms: i64,
    /// The last intervals, oldest first, as the monitor keeps them (figures per agent,
    /// replicas, queues, channels, jobs, alerts): a client reads each as a [`MonitorRow`].
    pub rows: Vec<Value>,
    /// The alerts firing now.
    pub alerts: Vec<MonitorAlert>,
}

/// One interval of a [`MonitorHistory`]: the figures a client reads of it (the row holds
/// more; unknown fields are skipped). A missing or renamed field is an error naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorRow {
    /// The interval's number since the daemon started.
    pub interval: u64,
    /// When it closed (ms since the epoch).
    pub at_ms: i64,
    /// Agent figures by kind (`apply`, `copy`, `import`, `ship`); a kind with no agent on
    /// this deployment is absent.
    pub agents: BTreeMap<String, MonitorAgentFigures>,
    /// Queue depths summed over peers, by `<queue>/<state>`.
    pub queues: BTreeMap<String, u64>,
    /// Each message channel's queues (absent from rows of builds before per-peer figures).
    #[serde(default)]
    pub channels: Vec<MonitorChannelQueue>,
    /// Replication jobs per peer, kind and state (absent as `channels`).
    #[serde(default)]
    pub jobs: Vec<MonitorJobQueue>,
    /// Secondary replicas held here.
    pub replicas: Vec<MonitorReplicaLag>,
    /// Alerts firing at the end of the interval.
    pub alerts: Vec<Value>,
}

/// One agent kind's figures in a [`MonitorRow`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorAgentFigures {
    /// Counted since the last reset.
    pub cumulative: MonitorCumulative,
    /// Units (transactions, files, messages) a second in the interval.
    pub units_per_sec: f64,
    /// Rows a second in the interval.
    pub rows_per_sec: f64,
    /// Mean latency of a unit in the interval.
    pub latency_avg_ms: f64,
    /// Longest latency of a unit in the interval.
    pub latency_max_ms: u64,
}

/// Cumulative figures of a [`MonitorAgentFigures`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorCumulative {
    /// Units since the last reset.
    pub units: u64,
}

/// A message channel's queue in a [`MonitorRow`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorChannelQueue {
    /// The peer deployment.
    pub peer: String,
    /// `in` or `out`.
    pub direction: String,
    /// The messages' state.
    pub state: String,
    /// How many.
    pub depth: u64,
}

/// A replication job queue in a [`MonitorRow`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorJobQueue {
    /// The peer deployment.
    pub peer: String,
    /// The job kind.
    pub kind: String,
    /// The jobs' state.
    pub state: String,
    /// How many.
    pub depth: u64,
}

/// A replica's lag in a [`MonitorRow`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorReplicaLag {
    /// The replica database.
    pub database: String,
    /// Its lag behind the primary (ms).
    pub lag_ms: i64,
}

/// One notification event: a threshold fired or cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// Its number (grows).
    pub seq: u64,
    /// The deployment that raised it.
    pub deployment: String,
    /// What kind of threshold.
    pub kind: String,
    /// Which one.
    pub subject: String,
    /// `fired` or `cleared`.
    pub transition: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The value that crossed (none: not a finite number).
    pub value: Option<f64>,
    /// The threshold.
    pub limit: Option<f64>,
}

/// `GET /v1/monitor/events?last=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorEvents {
    /// The newest events.
    pub events: Vec<MonitorEvent>,
}

/// The answer to `POST /v1/monitor/reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorReset {
    /// When it takes effect.
    pub reset: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// `v` reads as `T` and writes back as exactly `v`: the wire format is pinned.
    fn golden<T: Serialize + DeserializeOwned>(v: Value) {
        let t: T = serde_json::from_value(v.clone()).expect("reads");
        assert_eq!(serde_json::to_value(&t).expect("writes"), v);
    }

    #[test]
    fn the_wire_format_of_every_answer_is_pinned() {
        golden::<Status>(json!({
            "deployment": "d1", "region": "eu", "cloud": "aws", "uptime_secs": 1.5,
            "stopping": false,
            "workers": [{"name": "heartbeat", "state": "idle", "busy_units": 3, "errors": 0,
                "last_error": null, "figures": [["sent", 2]], "last_unit_secs_ago": 0.5}],
            "queues": {"outbound/sent": 4}, "unfinished_transactions": {"prepared": 1},
            "commits": 7, "rows_inserted": 70,
        }));
        golden::<DeploymentList>(json!({"deployments": [{
            "id": "d2", "region": "r2", "cloud": "", "replication_bucket_url": "file:///b",
            "added_at_ms": 5, "self": false, "files_sent": 1, "files_received": null,
            "peer_members": ["d1", "d2"], "peer_messages": 3, "last_heartbeat_ms": 9,
        }]}));
        golden::<DeploymentCreated>(json!({"deployment": "d2", "genesis": {"sender": "d1"}}));
        golden::<ChannelRegistered>(json!({"registered": "d2->d1"}));
        golden::<AccountList>(json!({"accounts": ["acme"]}));
        golden::<AccountCreated>(json!({"account": "acme", "token": "tern_x"}));
        golden::<DatabaseList>(
            json!({"databases": [{"name": "sales", "id": "db1", "role": "primary"}]}),
        );
        golden::<DatabaseCreated>(json!({"database": "sales", "id": "db1"}));
        golden::<ReplicationSet>(
            json!({"database": "sales", "enabled": true, "group": "g1", "accounts": null}),
        );
        golden::<ReplicaCreated>(
            json!({"database": "db2", "name": "copy", "group": "g1", "upstream": "d2"}),
        );
        golden::<ReplicaDropped>(json!({"dropped": "copy"}));
        golden::<RefreshRequested>(json!({"database": "copy", "request": "rq4"}));
        let replica = json!({
            "database": "copy", "account": "acme", "group": "g1", "upstream": "d1",
            "versions_behind": 2, "txns_behind": 1, "lag_ms": 10, "staleness_ms": 3,
            "schedule": "every 5m", "next_refresh_at_ms": 9, "last_refresh_at_ms": null,
            "refresh_pending": "asked", "refreshes": 0, "records_applied": 5,
            "bytes_copied": 100, "last_error": null,
        });
        golden::<ReplicationStatus>(json!({
            "groups": [{"group": "g1", "database": "sales", "role": "primary", "epoch": 2,
                "group_epoch": 2, "primary": "d1", "primary_state": null, "txns_behind": 0,
                "rpo_exposure_ms": 0, "primary_heard_ago_ms": null,
                "policy": {"auto_failover": false}, "conflicts": 1}],
            "peers": [{"peer": "d2", "state": "available", "since_ms": 4,
                "last_heard_ms": 5, "maintenance": false, "url": null}],
            "replicas": [replica],
            "downstream": [{"database": "sales", "group": "g1", "peer": "d2",
                "subscribed": true, "records_behind": 0, "records_shipped": 8,
                "snapshots": 1, "bytes_copied": 64, "sealed_to": null,
                "refresh_needed": false, "last_error": null}],
            "snapshot_jobs": 0, "import_jobs": 1,
            "jobs": [{"kind": "import", "id": "j1", "peer": "d2", "group": "g1",
                "attempts": 1, "state": "waiting", "next_attempt_at_ms": null,
                "last_error": null}],
            "outbox": 2, "counters": {"records_shipped": 8},
        }));
        golden::<SchemaCreated>(json!({"schema": "public"}));
        golden::<SchemaList>(json!({"schemas": ["public"]}));
        golden::<TxnStatus>(json!({"txn_id": 7, "status": "committed"}));
        golden::<TxnStatus>(
            json!({"txn_id": 7, "status": "committed", "log_record": "pruned",
            "detail": "committed (log record pruned)"}),
        );
        golden::<TxnStatus>(json!({"txn_id": 7, "status": "in_doubt", "state": "prepared"}));
        golden::<AccountDropped>(
            json!({"account": "acme", "dropped": true, "key_versions_destroyed": 2}),
        );
        golden::<CustomerKeyRegistered>(json!({"account": "acme", "key_id": "k1",
            "spec": {"kind": "x25519", "file": "/keys/acme"}}));
        golden::<CustomerKeyView>(json!({"customer_key": {"account": "acme",
            "spec": {"kind": "kms_rsa", "key_id": "alias/acme"}, "key_id": null,
            "error": "denied"}}));
        golden::<CustomerKeyView>(json!({"customer_key": null}));
        golden::<CustomerKeyRemoved>(json!({"account": "acme", "removed": true}));
        golden::<MaintenanceSet>(json!({"deployment": "d2", "state": "maintenance"}));
        golden::<AvailabilityView>(json!({
            "peers": [{"peer": "d2", "state": "suspect", "since_ms": 4, "last_heard_ms": null,
                "maintenance": false, "url": "http://d2"}],
            "history": [{"seq": 1, "peer": "d2", "from": "available", "to": "suspect",
                "at_ms": 4, "reason": "silent"}],
        }));
        golden::<ScheduleSet>(
            json!({"database": "copy", "schedule": "daily 02:30", "request": "rq1"}),
        );
        golden::<ConflictShow>(json!({
            "conflict": {"id": "cf1", "group": "g1", "origin": "d1", "txn_id": null,
                "epoch": 1, "committed_at_ms": 3, "state": "open", "resolution": null,
                "database": "db1"},
            "tables": [{"table": "t1", "name": "public.orders", "version": 4,
                "added": [{"id": 1, "city": "Oslo"}], "removed": null}],
        }));
        golden::<ConflictApplied>(json!({"id": "cf1", "versions": [["t1", 5]], "already": false}));
        golden::<Conflict>(
            json!({"id": "cf1", "group": "g1", "origin": "d1", "txn_id": 4,
            "epoch": 1, "committed_at_ms": 3, "state": "discarded", "resolution": null}),
        );
        golden::<Job>(
            json!({"kind": "snapshot", "id": "j1", "peer": "d2", "group": "g1",
            "attempts": 3, "state": "failed", "next_attempt_at_ms": null, "last_error": "e"}),
        );
        golden::<FailedMessages>(json!({"messages": [{"peer": "d2", "id": "m1",
            "message_type": "heartbeat", "attempts": 2, "last_error": "e",
            "failed_at_ms": 4, "expires_at_ms": 9}]}));
        golden::<MessageActionDone>(json!({"peer": "d2", "id": "m1", "done": "retry"}));
        golden::<Resynced>(json!({"channel": "d2->d1", "from_seq": 3, "to_seq": 5,
            "skipped_files": ["3", "4"], "persisted": 2, "resend": null}));
        golden::<DatabaseReplication>(json!({
            "deployment": "d2", "account": "acme", "database": "copy", "role": "primary",
            "group": "g1", "epoch": 2, "group_epoch": 2, "primary": "d2",
            "primary_state": null, "writable": true, "members": ["d1", "d2"],
            "following": ["d1"], "down": [], "replica": null,
        }));
        golden::<FailoverReport>(json!({
            "group": "g1", "database": "copy", "epoch": 2, "previous_primary": "d1",
            "previous_primary_state": "unavailable", "known_loss_txns": 0, "known_loss_ms": 0,
            "primary_silent_ms": 1600, "drained": 1, "drain_timed_out": false, "rto_ms": 40,
            "lease_held": true, "max_unavailable_ms": null, "forced": true,
        }));
        golden::<SwitchoverReport>(json!({
            "group": "g1", "database": "sales", "epoch": 3, "previous_primary": "d2",
            "applied_seq": 9, "pause_ms": 120, "lease_held": true,
        }));
        golden::<TableList>(json!({"tables": [{"schema": "public", "name": "orders",
            "id": "t1", "version": 2,
            "columns": [{"name": "id", "type": "int64", "nullable": false}]}]}));
        golden::<TableDropped>(json!({"dropped": "orders"}));
        golden::<CommitAnswer>(json!({"version": 2, "committed": true, "rows": 3,
            "files_added": 1, "files_removed": 0, "txn_id": 7}));
        golden::<CommitAnswer>(json!({"committed": true, "txn_id": 7, "replayed": true}));
        golden::<VersionList>(json!({"table": "orders", "current": 2, "versions": [{
            "version": 2, "committed_at_ms": 5, "txn_id": null, "files_added": 1,
            "files_removed": 0}]}));
        golden::<ScanHead>(json!({"version": 2, "columns": ["id"], "files_total": 3}));
        golden::<ScanTail>(
            json!({"row_count": 1, "matched": null, "truncated": true, "files_read": 1}),
        );
        golden::<TokenMade>(json!({"account": "acme", "id": "ab12", "name": null,
            "read_only": true, "created_at_ms": 1, "expires_at_ms": 9, "expired": false,
            "token": "tern_x"}));
        golden::<TokenList>(json!({"account": "acme", "tokens": []}));
        golden::<TokenRevoked>(json!({"account": "acme", "id": "ab12", "revoked": true}));
        golden::<KeyRotated>(json!({"account": "acme", "version": 2, "retired": [1],
            "tables_rewrapped": 3, "keys": [{"version": 2, "state": "active",
            "created_at_ms": 4, "retired_at_ms": null}]}));
        golden::<KeyList>(json!({"account": "acme", "keys": []}));
        golden::<AccountGlobal>(json!({"account": "acme", "group": "ag1"}));
        golden::<GlobalDatabases>(json!({"databases": [{"region": "eu", "deployment": "d1",
            "account": "acme", "replication_group": "g1", "name": "sales",
            "role": "primary", "upstream": null}]}));
        golden::<GlobalAccounts>(json!({"accounts": []}));
        golden::<ConnectionList>(json!({"connections": [{"name": "c", "group": "g1",
            "primary": "d1", "epoch": 1, "url": null, "made_on": "d1"}]}));
        golden::<JobList>(json!({"jobs": [{"kind": "import", "id": "j1", "peer": "d2",
            "group": "g1", "attempts": 2, "state": "backing_off",
            "next_attempt_at_ms": 8, "last_error": "e"}]}));
        golden::<ConflictList>(json!({"conflicts": [{"id": "cf1", "group": "g1",
            "origin": "d1", "txn_id": 4, "epoch": 1, "committed_at_ms": 3, "state": "open",
            "resolution": null, "database": "db1", "versions": [], "found_at_ms": 6,
            "resolved_at_ms": null}]}));
        golden::<PolicyView>(json!({"database": "sales", "group": "g1", "epoch": 1,
            "primary": "d1", "policy": {"auto_failover": false}}));
        golden::<PolicySet>(json!({"database": "sales", "policy": {}}));
        golden::<MonitorHistory>(json!({"deployment": "d1", "interval_ms": 10000,
            "rows": [{"interval": 1}], "alerts": [{"kind": "lag_over_rpo", "subject": "r",
            "since_ms": 5, "value": 9.0, "limit": 5.0}]}));
        golden::<MonitorEvents>(json!({"events": [{"seq": 3, "deployment": "d1",
            "kind": "lag_over_rpo", "subject": "r", "transition": "fired", "at_ms": 5,
            "value": null, "limit": 5.0}]}));
        golden::<MonitorReset>(json!({"reset": "at the next monitor tick"}));
        golden::<ErrorBody>(
            json!({"error": {"kind": "conflict", "message": "m", "epoch": 2,
            "redirect": {"deployment": "d2", "url": "http://x", "epoch": 2}}}),
        );
        golden::<ErrorBody>(json!({"error": {"kind": "unavailable", "message": "m",
            "txn_id": 7}}));
        golden::<ErrorBody>(json!({"error": {"kind": "conflict", "message": "paused",
            "epoch": 3}}));
    }

    #[test]
    fn the_wire_format_of_every_request_is_pinned() {
        golden::<Named>(json!({"name": "acme"}));
        golden::<CreateDeployment>(json!({"id": "d2", "region": "r", "cloud": "c",
            "replication_bucket_url": "", "genesis": null}));
        golden::<SetReplication>(json!({"enable": true, "accounts": ["bob"]}));
        golden::<CreateReplica>(json!({"name": "c", "group": "g", "upstream": null}));
        golden::<FailoverRequest>(json!({"allow_data_loss": true}));
        golden::<NewToken>(json!({"read_only": true, "expires_in": "30d", "name": "ci"}));
        golden::<CreateConnection>(json!({"name": "c", "group": "g1"}));
        golden::<RegisterCustomerKey>(
            json!({"kind": "x25519", "file": "acme.key", "create": true}),
        );
        golden::<RegisterCustomerKey>(json!({"kind": "kms_rsa", "key_id": "alias/a"}));
    }

    #[test]
    fn a_missing_field_is_an_error_naming_it_not_a_blank() {
        let e = serde_json::from_value::<DatabaseList>(
            json!({"databases": [{"name": "sales", "id": "db1", "kind": "primary"}]}),
        )
        .expect_err("role is missing");
        assert!(e.to_string().contains("missing field `role`"), "{e}");
        let e = serde_json::from_value::<AccountCreated>(json!({"account": "a", "tok": "t"}))
            .expect_err("token is missing");
        assert!(e.to_string().contains("missing field `token`"), "{e}");
    }
}
