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

/// `GET /v1/replication/status` (operator), the part the CLI follows a refresh with
/// (`--wait`); the whole answer is printed as the daemon sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// This deployment's secondary replicas.
    pub replicas: Vec<ReplicaStatus>,
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
    /// How far the data here trails the primary (ms).
    pub lag_ms: i64,
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
        golden::<ReplicationStatus>(json!({"replicas": [{
            "database": "copy", "account": "acme", "group": "g1", "upstream": "d1",
            "versions_behind": 2, "lag_ms": 10, "last_refresh_at_ms": null,
            "refresh_pending": "asked", "refreshes": 0, "records_applied": 5,
            "bytes_copied": 100, "last_error": null,
        }]}));
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
        golden::<ErrorBody>(
            json!({"error": {"kind": "conflict", "message": "m", "epoch": 2,
            "redirect": {"deployment": "d2", "url": "http://x", "epoch": 2}}}),
        );
    }

    #[test]
    fn the_wire_format_of_every_request_is_pinned() {
        golden::<Named>(json!({"name": "acme"}));
        golden::<CreateDeployment>(json!({"id": "d2", "region": "r", "cloud": "c",
            "replication_bucket_url": "", "genesis": null}));
        golden::<SetReplication>(json!({"enable": true, "accounts": ["bob"]}));
        golden::<CreateReplica>(json!({"name": "c", "group": "g", "upstream": null}));
        golden::<FailoverRequest>(json!({"allow_data_loss": true}));
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
