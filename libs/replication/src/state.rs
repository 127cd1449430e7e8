//! What replication keeps in the metadata store (all under `repl/`).
//!
//! | key | DPO | side |
//! |---|---|---|
//! | `repl/ents/<deployment>` | [`KnownEntitiesDpo`] | every deployment: what each peer said it holds |
//! | `repl/announce` | [`AnnounceDpo`] | when our own entities were last sent, and whether they changed |
//! | `repl/replica/<db>` | [`ReplicaDpo`] | a local secondary replica: its upstream, refresh and apply state, figures |
//! | `repl/down/<db>/<peer>` | [`DownstreamDpo`] | a local database a peer replicates from us: log cursor, figures |
//! | `repl/job/snap/<peer>/<request>` | [`SnapshotJobDpo`] | a refresh request to answer (copy workers) |
//! | `repl/job/import/<peer>/<response>` | [`ImportJobDpo`] | a snapshot response to import |
//! | `repl/ckey/<account>` | [`CustomerKeyDpo`] | where a local account's customer-managed key is |
//!
//! The global index (`MetaTxn::set_global_id`) maps kind `dbgroup` + group → local database
//! id, on the primary and on every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_meta::{Key, impl_dpo};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, ResponseId, TableId};

use crate::model::{GlobalEntity, RefreshRequest};

fn yes() -> bool {
    true
}

/// Global-index kind of database replication groups.
pub const GROUP_INDEX: &str = "dbgroup";

/// What a deployment said it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownEntitiesDpo {
    /// The deployment.
    pub deployment: DeploymentId,
    /// Its entities.
    pub entities: Vec<GlobalEntity>,
    /// When its list was received (local clock).
    pub received_at_ms: i64,
}
impl_dpo!(KnownEntitiesDpo, "known global entities");

/// Our own entities' announcement state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceDpo {
    /// They changed since last sent.
    pub dirty: bool,
    /// When they were last sent.
    pub sent_at_ms: Option<i64>,
}
impl_dpo!(AnnounceDpo, "entity announcement");

/// A refresh this replica asked for and has not imported yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRefresh {
    /// The request id.
    pub request_id: String,
    /// Whether it was sent (else the worker sends it).
    pub sent: bool,
    /// When it was asked for.
    pub asked_at_ms: i64,
    /// Why (`create`, `operator`, `schedule`, `gap`, `drift`).
    pub reason: String,
}

/// A local secondary replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDpo {
    /// The local database.
    pub database: DatabaseId,
    /// Its account.
    pub account: AccountId,
    /// The database replication group.
    pub group: String,
    /// The deployment it replicates from (the primary: hub; another replica: chain).
    pub upstream: DeploymentId,
    /// Whether it follows the upstream's log (continuous); `false`: refreshes only (on
    /// demand and on schedule).
    #[serde(default = "yes")]
    pub follow_log: bool,
    /// A refresh asked for and not imported yet.
    pub refresh: Option<PendingRefresh>,
    /// When the last refresh was imported.
    pub last_refresh_at_ms: Option<i64>,
    /// Refreshes imported.
    pub refreshes: u64,
    /// The last upstream transaction applied by log shipping.
    pub applied_txn: u64,
    /// When the newest change applied here was committed upstream.
    pub applied_commit_at_ms: Option<i64>,
    /// When a change was last applied here.
    pub applied_at_ms: Option<i64>,
    /// The newest upstream version known per table (from shipments and snapshots).
    pub upstream_versions: BTreeMap<TableId, u64>,
    /// When the newest upstream change known here was committed.
    pub upstream_commit_at_ms: Option<i64>,
    /// Log records applied.
    pub records_applied: u64,
    /// Bytes copied into the volume (imports and applies).
    pub bytes_copied: u64,
    /// Files copied into the volume.
    pub files_copied: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at_ms: i64,
    /// The upstream database's transaction sequence number it has applied up to (from
    /// shipment and snapshot stamps): what "transactions behind" counts from.
    #[serde(default)]
    pub applied_seq: u64,
    /// A failover of this replica is under way: no refresh is asked for or imported any
    /// more.
    #[serde(default)]
    pub promoting: bool,
    /// When it is brought up to date (continuous: it follows the log).
    #[serde(
        default,
        skip_serializing_if = "crate::schedule::Schedule::is_continuous"
    )]
    pub schedule: crate::schedule::Schedule,
}
impl_dpo!(ReplicaDpo, "replica");

impl ReplicaDpo {
    /// A new replica of `group` following `upstream`, with `refresh` pending.
    pub fn new(
        database: DatabaseId,
        account: AccountId,
        group: String,
        upstream: DeploymentId,
        follow_log: bool,
        refresh: PendingRefresh,
    ) -> Self {
        Self {
            database,
            account,
            group,
            upstream,
            follow_log,
            created_at_ms: refresh.asked_at_ms,
            refresh: Some(refresh),
            last_refresh_at_ms: None,
            refreshes: 0,
            applied_txn: 0,
            applied_commit_at_ms: None,
            applied_at_ms: None,
            upstream_versions: BTreeMap::new(),
            upstream_commit_at_ms: None,
            records_applied: 0,
            bytes_copied: 0,
            files_copied: 0,
            last_error: None,
            applied_seq: 0,
            promoting: false,
            schedule: crate::schedule::Schedule::Continuous,
        }
    }
}

/// A peer's replica of a local database: what we ship it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownstreamDpo {
    /// The local database.
    pub database: DatabaseId,
    /// Its account.
    pub account: AccountId,
    /// The database replication group.
    pub group: String,
    /// The replica's deployment.
    pub peer: DeploymentId,
    /// The replica database (its id there).
    pub peer_database: DatabaseId,
    /// Whether log records are shipped (a refresh-only replica is not).
    pub subscribed: bool,
    /// The replica account's customer-managed public key (from its last request): every
    /// RepMK for it is sealed to it as well.
    #[serde(default)]
    pub customer_key: Option<tern_crypto::CustomerPublicKey>,
    /// The last log record id shipped (or covered by a snapshot).
    pub cursor: u64,
    /// Log records shipped.
    pub records_shipped: u64,
    /// Snapshots answered.
    pub snapshots: u64,
    /// Bytes copied into the peer's inbound stage.
    pub bytes_copied: u64,
    /// When something was last shipped.
    pub shipped_at_ms: Option<i64>,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// The message id of the shipment with body files last begun (its next attempt must
    /// find it: a message left unfinished is abandoned and shipped again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping: Option<Shipping>,
    /// The database's transaction sequence number shipped up to (from the stamps of the
    /// records shipped, and the snapshot's position): "records behind" is the database's
    /// sequence minus this, read without listing the log. `None` for rows older than it
    /// (then the log position stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped_seq: Option<u64>,
    /// Since when this replica needs a refresh instead of log records: the records after
    /// its cursor were pruned (it fell further behind than the log retention). Nothing is
    /// shipped to it until a refresh resets its cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_needed_since_ms: Option<i64>,
}
impl_dpo!(DownstreamDpo, "downstream replica");

/// A log shipment begun (see [`DownstreamDpo::shipping`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipping {
    /// The record.
    pub txn_id: u64,
    /// Its message.
    pub message_id: String,
}

/// A refresh request to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotJobDpo {
    /// Who asked.
    pub peer: DeploymentId,
    /// The request.
    pub request: RefreshRequest,
    /// The response id, fixed before the first file is copied (a retry reuses the inbound
    /// folder).
    pub response_id: ResponseId,
    /// When it arrived.
    pub received_at_ms: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// Failed attempts: backing off, or given up.
    #[serde(default, skip_serializing_if = "crate::jobs::JobRetry::is_fresh")]
    pub retry: crate::jobs::JobRetry,
    /// The log position of the response of attempt `response_id`, recorded before it is
    /// sent: an attempt that finds that response already sent (its source crashed
    /// after sending) records the replica's position from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<SnapshotSent>,
}
impl_dpo!(SnapshotJobDpo, "snapshot job");

/// What a snapshot response held, for the replica's downstream record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSent {
    /// The stable log id the snapshot holds (shipping continues after it).
    pub stable: u64,
    /// The database's settled transaction sequence number at the snapshot.
    pub settled: u64,
    /// Bytes copied into the replica's inbound stage.
    pub bytes: u64,
}

/// A snapshot response to import: its manifest and how far the import got — never its
/// file lists (those stay in the response's sections file in the inbound folder, read as
/// a stream), so the row's size grows with the database's tables, not its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ImportJobRow")]
pub struct ImportJobDpo {
    /// Who answered.
    pub peer: DeploymentId,
    /// The response's manifest.
    pub response: crate::model::SnapshotManifest,
    /// When it arrived.
    pub received_at_ms: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// Failed attempts: backing off, or given up.
    #[serde(default, skip_serializing_if = "crate::jobs::JobRetry::is_fresh")]
    pub retry: crate::jobs::JobRetry,
    /// Tables of the manifest whose import is committed (in its order).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tables_done: u64,
    /// Sections of the sections file those tables took (where reading resumes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sections_done: u64,
    /// The batch of tables (from `tables_done` on) whose files are being copied into the
    /// volume: their names there were reserved when it began, so an interrupted import
    /// finds the files it already copied at the same paths (and copies only the rest),
    /// and whoever drops the job knows which files to delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<ImportBatch>,
    /// A later answer to the same request arrived (its upstream began the response
    /// again): this one is dropped, never imported further.
    #[serde(default, skip_serializing_if = "is_false")]
    pub superseded: bool,
    /// A row stored by a previous build holds the whole response: its sections, until
    /// the importer writes them into the sections file and stores the row again without
    /// them (never stored in this form).
    #[serde(skip)]
    pub legacy_sections: Option<Vec<crate::model::TableSection>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The batch an import is copying files for: `tables` tables of the manifest from the
/// job's `tables_done` on, whose added files get the volume names `fdn<n>_g` for `n` from
/// `first_name` on, in the order the sections file lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportBatch {
    /// How many tables.
    pub tables: u64,
    /// The first reserved name number.
    pub first_name: u64,
}

/// [`ImportJobDpo`] as stored, by this build or a previous one.
#[derive(Deserialize)]
struct ImportJobRow {
    peer: DeploymentId,
    response: StoredResponse,
    received_at_ms: i64,
    attempts: u32,
    #[serde(default)]
    retry: crate::jobs::JobRetry,
    #[serde(default)]
    tables_done: u64,
    #[serde(default)]
    sections_done: u64,
    #[serde(default)]
    batch: Option<ImportBatch>,
    #[serde(default)]
    superseded: bool,
}

/// A manifest, or (a previous build's row) the whole response.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredResponse {
    Manifest(crate::model::SnapshotManifest),
    Whole(crate::model::SnapshotResponse),
}

impl From<ImportJobRow> for ImportJobDpo {
    fn from(r: ImportJobRow) -> Self {
        let (response, legacy_sections) = match r.response {
            StoredResponse::Manifest(m) => (m, None),
            StoredResponse::Whole(w) => {
                let (m, sections) = crate::model::SnapshotManifest::split(w);
                (m, Some(sections))
            }
        };
        ImportJobDpo {
            peer: r.peer,
            response,
            received_at_ms: r.received_at_ms,
            attempts: r.attempts,
            retry: r.retry,
            tables_done: r.tables_done,
            sections_done: r.sections_done,
            batch: r.batch,
            superseded: r.superseded,
            legacy_sections,
        }
    }
}
impl_dpo!(ImportJobDpo, "import job");

/// Keys.
pub mod keys {
    use super::*;

    /// `repl/ents/<deployment>`.
    pub fn known(deployment: &DeploymentId) -> Key {
        Key::root("repl").str("ents").str(deployment.as_str())
    }
    /// All known entity lists.
    pub fn known_all() -> Key {
        Key::root("repl").str("ents")
    }
    /// `repl/announce`.
    pub fn announce() -> Key {
        Key::root("repl").str("announce")
    }
    /// `repl/replica/<db>`.
    pub fn replica(db: &DatabaseId) -> Key {
        Key::root("repl").str("replica").str(db.as_str())
    }
    /// All replicas.
    pub fn replicas() -> Key {
        Key::root("repl").str("replica")
    }
    /// `repl/down/<db>/<peer>`.
    pub fn downstream(db: &DatabaseId, peer: &DeploymentId) -> Key {
        Key::root("repl")
            .str("down")
            .str(db.as_str())
            .str(peer.as_str())
    }
    /// All downstream replicas.
    pub fn downstreams() -> Key {
        Key::root("repl").str("down")
    }
    /// The downstream replicas of `db`.
    pub fn downstreams_of(db: &DatabaseId) -> Key {
        Key::root("repl").str("down").str(db.as_str())
    }
    /// `repl/job/snap/<peer>/<request>`.
    pub fn snapshot_job(peer: &DeploymentId, request: &str) -> Key {
        Key::root("repl")
            .str("job")
            .str("snap")
            .str(peer.as_str())
            .str(request)
    }
    /// All snapshot jobs.
    pub fn snapshot_jobs() -> Key {
        Key::root("repl").str("job").str("snap")
    }
    /// `repl/job/import/<peer>/<response>`.
    pub fn import_job(peer: &DeploymentId, response: &ResponseId) -> Key {
        Key::root("repl")
            .str("job")
            .str("import")
            .str(peer.as_str())
            .str(response.as_str())
    }
    /// All import jobs.
    pub fn import_jobs() -> Key {
        Key::root("repl").str("job").str("import")
    }
    /// `repl/ckey/<account>`.
    pub fn customer_key(account: &AccountId) -> Key {
        Key::root("repl").str("ckey").str(account.as_str())
    }
    /// All registered customer keys.
    pub fn customer_keys() -> Key {
        Key::root("repl").str("ckey")
    }
    /// `repl/allowed/<group>`: the accounts allowed to replicate a group (on its primary).
    pub fn allowed(group: &str) -> Key {
        Key::root("repl").str("allowed").str(group)
    }
}

/// `enable replication to accounts …`: the accounts allowed to hold a replica of a
/// database group, kept by the deployment holding the primary (and announced with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedDpo {
    /// The group.
    pub group: String,
    /// `account` or `deployment.account` entries.
    pub accounts: Vec<String>,
}
impl_dpo!(AllowedDpo, "allowed accounts");

/// A local account's customer-managed key: where it is (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerKeyDpo {
    /// The account.
    pub account: AccountId,
    /// Where its key is.
    pub spec: tern_crypto::CustomerKeySpec,
}
impl_dpo!(CustomerKeyDpo, "customer key");

/// A message to send to a peer, recorded with the state change that needs it (so that a
/// crash never loses it); the control worker sends it with this id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxDpo {
    /// The receiver.
    pub peer: DeploymentId,
    /// The message id.
    pub id: String,
    /// Its type.
    pub message_type: String,
    /// Its payload (JSON).
    pub payload: String,
}
impl_dpo!(OutboxDpo, "outbox message");

/// `repl/out/<peer>/<id>`.
pub fn outbox_key(peer: &DeploymentId, id: &str) -> Key {
    Key::root("repl").str("out").str(peer.as_str()).str(id)
}

/// Records message `id` of `message_type` with `payload` (JSON) for `peer` in the
/// outbox, in the caller's transaction.
pub fn put_outbox<T: Serialize>(
    tx: &mut tern_meta::MetaTxn<'_>,
    peer: &DeploymentId,
    id: String,
    message_type: &str,
    payload: &T,
) -> tern_meta::Result<()> {
    let key = outbox_key(peer, &id);
    let payload = serde_json::to_string(payload).map_err(|source| tern_meta::Error::Encode {
        what: "outbox message payload",
        key: format!("{key:?}"),
        source,
    })?;
    tx.put(
        &key,
        &OutboxDpo {
            peer: peer.clone(),
            id,
            message_type: message_type.into(),
            payload,
        },
    )
}

/// All outbox messages.
pub fn outbox_all() -> Key {
    Key::root("repl").str("out")
}
