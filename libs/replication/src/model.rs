//! What replication messages carry (JSON payloads of `tern.repl.*` messages, each with a
//! format version `v`; an unknown version is refused as malformed, never guessed at).
//!
//! | message type | from → to | payload |
//! |---|---|---|
//! | `tern.repl.entities` | every deployment → every peer | [`EntitiesPayload`]: its global accounts and databases |
//! | `tern.repl.refresh` | replica → its upstream | [`RefreshRequest`]: per table, version and active global file references |
//! | `tern.repl.snapshot` | upstream → replica | [`SnapshotManifest`] (in body file 0): dictionary, tables and versions; the difference in the [`TableSection`]s of the response's sections file, files in the inbound stage (a previous build's [`SnapshotResponse`], everything in body file 0, is still read) |
//! | `tern.repl.log` | upstream → replica | [`LogShipment`]: one committed log record's changes of the database, files in the inbound stage |
//! | `tern.repl.unsubscribe` | replica → its upstream | [`Unsubscribe`]: stop shipping |
//! | `tern.repl.refresh_needed` | upstream → replica | [`RefreshNeeded`]: the log it still needs was pruned; ask for a refresh |
//! | `tern.repl.vote` / `tern.repl.vote_reply` | failover candidate ↔ group members | [`VoteRequest`], [`VoteReply`] |
//! | `tern.repl.heartbeat` | every deployment → every peer | [`Heartbeat`]: per group held, role, epoch, progress, and the newest epoch claim known |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_crypto::{CustomerPublicKey, Diversifier, SealedKey, WrappedKey};
use tern_meta::{ColumnDef, DatabaseRole, MicroPartitionDpo};
use tern_storage::layout::{
    AccountId, DatabaseId, DeploymentId, GlobalFileRef, ResponseId, TableId,
};
use tern_table::{ChangeRecord, Stamp};

/// Message type of global-entity lists.
pub const ENTITIES_TYPE: &str = "tern.repl.entities";
/// Message type of refresh requests.
pub const REFRESH_TYPE: &str = "tern.repl.refresh";
/// Message type of snapshot responses.
pub const SNAPSHOT_TYPE: &str = "tern.repl.snapshot";
/// Message type of shipped log records.
pub const LOG_TYPE: &str = "tern.repl.log";
/// Message type of unsubscriptions.
pub const UNSUBSCRIBE_TYPE: &str = "tern.repl.unsubscribe";
/// Message type of "your log records were pruned, refresh" notices.
pub const REFRESH_NEEDED_TYPE: &str = "tern.repl.refresh_needed";

/// Message type of vote requests.
pub const VOTE_TYPE: &str = "tern.repl.vote";
/// Message type of vote replies.
pub const VOTE_REPLY_TYPE: &str = "tern.repl.vote_reply";
/// Message type of heartbeats (availability, epochs, progress).
pub const HEARTBEAT_TYPE: &str = "tern.repl.heartbeat";

/// The payload format version this build writes and reads.
pub const PAYLOAD_VERSION: u32 = 1;

/// Decodes a payload, checking its version; the error says what is wrong.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    tern_meta::decode_versioned(bytes, None, "replication payload", PAYLOAD_VERSION)
}

/// Encodes a payload. A failure is an error, never an empty message.
pub fn encode<T: Serialize>(value: &T) -> crate::Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| crate::Error::invalid("replication payload", format!("cannot encode: {e}")))
}

/// A global account or database, as the deployment holding it describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalEntity {
    /// Account or database.
    pub kind: EntityKind,
    /// The deployment holding it.
    pub deployment: DeploymentId,
    /// That deployment's region.
    pub region: String,
    /// The account (the entity itself, or the database's owner).
    pub account: AccountId,
    /// The account replication group of the account.
    pub account_group: String,
    /// Databases: the database replication group.
    pub group: Option<String>,
    /// Databases: the database name.
    pub name: Option<String>,
    /// Databases: primary or secondary.
    pub role: Option<DatabaseRole>,
    /// Databases: the role epoch.
    pub epoch: u64,
    /// Secondary replicas: the deployment they replicate from.
    pub upstream: Option<DeploymentId>,
    /// Primaries: the accounts allowed to hold a replica (`enable replication to accounts
    /// a, b`), each `account` (any deployment) or `deployment.account`; `None`: every
    /// account of the account group. Travels with the entity so that every deployment
    /// can check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_accounts: Option<Vec<String>>,
}

impl GlobalEntity {
    /// Whether `account` of `deployment` may hold a replica of this (primary) database.
    pub fn allows(&self, deployment: &DeploymentId, account: &AccountId) -> bool {
        match &self.allowed_accounts {
            None => true,
            Some(list) => list.iter().any(|a| allowed_matches(a, deployment, account)),
        }
    }
}

/// Whether one entry of an allowed-accounts list (`account` or `deployment.account`)
/// names `account` of `deployment`.
pub fn allowed_matches(entry: &str, deployment: &DeploymentId, account: &AccountId) -> bool {
    match entry.split_once('.') {
        Some((dep, acct)) => dep == deployment.as_str() && acct == account.as_str(),
        None => entry == account.as_str(),
    }
}

/// What a [`GlobalEntity`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// A global account.
    Account,
    /// A replica of a global database.
    Database,
    /// A connection: names a database group whose current primary clients are sent to.
    Connection,
}

/// `tern.repl.entities`: every global entity the sender holds (the receiver replaces what
/// it knew from the sender).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitiesPayload {
    /// Format version.
    pub v: u32,
    /// The entities.
    pub entities: Vec<GlobalEntity>,
}

/// One table of a refresh request: what the replica has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInventory {
    /// The table (replicated tables have the same id on every replica).
    pub table: TableId,
    /// Its version (replica versions mirror the primary's).
    pub version: u64,
    /// Its active files, by global reference.
    pub refs: Vec<GlobalFileRef>,
}

/// `tern.repl.refresh`: a replica asks its upstream for what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// Format version.
    pub v: u32,
    /// Unique per requesting deployment.
    pub request_id: String,
    /// The database replication group.
    pub group: String,
    /// The replica's account.
    pub account: AccountId,
    /// The replica database (its id on the requesting deployment).
    pub database: DatabaseId,
    /// Whether the upstream should ship the database's log records from the snapshot on.
    pub subscribe: bool,
    /// What the replica has, per table.
    pub tables: Vec<TableInventory>,
    /// The replica account's customer-managed public key, when it uses one: every RepMK
    /// for it is then sealed to this key as well (only that account can open it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key: Option<CustomerPublicKey>,
    /// The replica imports each file as it lands: the upstream may send its response (the
    /// plan: manifest, sections file and wrapped RepMK) before it copies the files, and
    /// writes [`copied_path`] once they are all in the inbound stage. A replica of a
    /// previous build leaves it out and gets the response after the files.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A replication master key wrapped for one receiver under a GMK-derived key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedRepMk {
    /// The diversifier of the wrapping key.
    pub diversifier: Diversifier,
    /// The wrapped key (hex); empty when `sealed`.
    pub wrapped: String,
    /// The GMK-wrapped key sealed again to the receiving account's customer-managed key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedKey>,
}

impl WrappedRepMk {
    /// The wrapped key bytes.
    pub fn key(&self) -> Option<WrappedKey> {
        WrappedKey::from_hex(&self.wrapped)
    }
}

/// One table of a snapshot response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSnapshot {
    /// The table.
    pub table: TableId,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its columns at `version`.
    pub columns: Vec<ColumnDef>,
    /// The primary's version the snapshot holds.
    pub version: u64,
    /// The replica version this answers (what the request said; the replica rolls back to
    /// it if it moved, then jumps to `version`).
    pub answered_version: u64,
    /// Files to add (source metadata; the file is in the inbound stage under its global
    /// reference).
    pub add: Vec<MicroPartitionDpo>,
    /// Files to remove, by global reference.
    pub remove: Vec<GlobalFileRef>,
}

/// `tern.repl.snapshot` as a previous build sends it (in body file 0, whatever its size):
/// the database at one consistent point of the source, every file listed. Still read (the
/// replica turns it into a [`SnapshotManifest`] and a sections file); no longer sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// Format version.
    pub v: u32,
    /// The request answered.
    pub request_id: String,
    /// Names the inbound-stage folder of the files.
    pub response_id: ResponseId,
    /// The database replication group.
    pub group: String,
    /// The source's Lamport clock at the snapshot (the replica merges it).
    pub lamport: u64,
    /// The RepMK the inbound files are encrypted under.
    pub repmk: WrappedRepMk,
    /// The database's schemas.
    pub schemas: Vec<String>,
    /// Every live table of the database.
    pub tables: Vec<TableSnapshot>,
    /// Bytes of the files copied into the inbound stage.
    pub bytes: u64,
    /// When the snapshot was taken (source clock).
    pub taken_at_ms: i64,
    /// The source's epoch when it took the snapshot (0: a source from before epochs).
    #[serde(default)]
    pub epoch: u64,
    /// The database's transaction sequence number the snapshot holds.
    #[serde(default)]
    pub seq: u64,
}

/// One table of a [`SnapshotManifest`]: what the replica makes of it, without its files
/// (those are in the response's sections file, see [`TableSection`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableHead {
    /// The table.
    pub table: TableId,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its columns at `version`.
    pub columns: Vec<ColumnDef>,
    /// The primary's version the snapshot holds.
    pub version: u64,
    /// The replica version this answers (see [`TableSnapshot::answered_version`]).
    pub answered_version: u64,
    /// How many files its sections add.
    pub adds: u64,
    /// How many files its sections remove.
    pub removes: u64,
}

/// `tern.repl.snapshot` (in body file 0): the database at one consistent point of the
/// source, without the file lists — its size grows with the number of tables, never with
/// the number of files. The difference is in the sections file the source put into the
/// replica's inbound folder beside the files ([`sections_path`]): one [`TableSection`] a
/// line, a table's sections together and in the order of `tables`, sealed like the files
/// under the response's RepMK. The replica reads it as a stream and keeps only a cursor
/// in its import job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Format version.
    pub v: u32,
    /// The request answered.
    pub request_id: String,
    /// Names the inbound-stage folder of the files and of the sections file.
    pub response_id: ResponseId,
    /// The database replication group.
    pub group: String,
    /// The source's Lamport clock at the snapshot (the replica merges it).
    pub lamport: u64,
    /// The RepMK the inbound files (and the sections file) are encrypted under.
    pub repmk: WrappedRepMk,
    /// The database's schemas.
    pub schemas: Vec<String>,
    /// Every live table of the database.
    pub tables: Vec<TableHead>,
    /// How many sections the sections file holds (what tells this payload from a
    /// [`SnapshotResponse`]).
    pub sections: u64,
    /// Bytes of the files copied into the inbound stage.
    pub bytes: u64,
    /// When the snapshot was taken (source clock).
    pub taken_at_ms: i64,
    /// The source's epoch when it took the snapshot.
    pub epoch: u64,
    /// The database's transaction sequence number the snapshot holds.
    pub seq: u64,
    /// Sent before its files were copied (the request asked for `stream`): the replica
    /// waits for each file to land, until [`copied_path`] says every file is in. `bytes`
    /// is then the files' stored size at the source.
    #[serde(default, skip_serializing_if = "is_false")]
    pub streamed: bool,
}

/// One line of a snapshot's sections file: part of one table's difference (at most the
/// source's `snapshot_section_files`, by default [`SECTION_FILES`], files added and
/// removed). Lines carry no version of their own: the file's format is the manifest's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSection {
    /// The table.
    pub table: TableId,
    /// Files to add (source metadata; the file is in the inbound stage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<MicroPartitionDpo>,
    /// Files to remove, by global reference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<GlobalFileRef>,
}

/// Files a [`TableSection`] lists at most by default (added and removed together).
pub const SECTION_FILES: usize = 1024;

/// Where a snapshot's sections file is: in the replica's inbound folder of the response,
/// beside the files (whose names always hold a `.`).
pub fn sections_path(peer: &DeploymentId, response: &ResponseId) -> tern_storage::Path {
    tern_storage::layout::replication::inbound_prefix(peer, response).join("sections")
}

/// The marker a streaming upstream writes into a response's inbound folder once every
/// file of the response is there (its content is not read: only its presence counts).
pub fn copied_path(peer: &DeploymentId, response: &ResponseId) -> tern_storage::Path {
    tern_storage::layout::replication::inbound_prefix(peer, response).join("copied")
}

impl SnapshotManifest {
    /// The manifest and the sections of a previous build's whole response.
    pub fn split(r: SnapshotResponse) -> (Self, Vec<TableSection>) {
        let mut sections = Vec::new();
        let mut tables = Vec::with_capacity(r.tables.len());
        for t in r.tables {
            tables.push(TableHead {
                table: t.table.clone(),
                schema: t.schema,
                name: t.name,
                columns: t.columns,
                version: t.version,
                answered_version: t.answered_version,
                adds: t.add.len() as u64,
                removes: t.remove.len() as u64,
            });
            sections.extend(sections_of(&t.table, t.add, t.remove));
        }
        let manifest = SnapshotManifest {
            v: r.v,
            request_id: r.request_id,
            response_id: r.response_id,
            group: r.group,
            lamport: r.lamport,
            repmk: r.repmk,
            schemas: r.schemas,
            tables,
            sections: sections.len() as u64,
            bytes: r.bytes,
            taken_at_ms: r.taken_at_ms,
            epoch: r.epoch,
            seq: r.seq,
            streamed: false,
        };
        (manifest, sections)
    }
}

/// A table's difference cut into sections of at most [`SECTION_FILES`] files (none for
/// a table without a difference).
pub fn sections_of(
    table: &TableId,
    add: Vec<MicroPartitionDpo>,
    remove: Vec<GlobalFileRef>,
) -> Vec<TableSection> {
    let mut out = Vec::new();
    let mut add = add.into_iter().peekable();
    let mut remove = remove.into_iter().peekable();
    while add.peek().is_some() || remove.peek().is_some() {
        let a: Vec<MicroPartitionDpo> = add.by_ref().take(SECTION_FILES).collect();
        let r: Vec<GlobalFileRef> = remove.by_ref().take(SECTION_FILES - a.len()).collect();
        out.push(TableSection {
            table: table.clone(),
            add: a,
            remove: r,
        });
    }
    out
}

/// `tern.repl.log`: one committed transaction's changes of a replicated database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogShipment {
    /// Format version.
    pub v: u32,
    /// The database replication group.
    pub group: String,
    /// Names the inbound-stage folder of the files it adds.
    pub shipment_id: ResponseId,
    /// The transaction id at the sender.
    pub txn_id: u64,
    /// The deployment that committed the record shipped (the sender, or for a chain its
    /// upstream's record as applied there).
    pub origin: DeploymentId,
    /// When it was committed there.
    pub committed_at_ms: i64,
    /// The changes of the database, in commit order.
    pub changes: Vec<ChangeRecord>,
    /// The RepMK of the files, when there are files.
    pub repmk: Option<WrappedRepMk>,
    /// The epoch and database sequence number the transaction was committed under (none:
    /// a record from before epochs were stamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<Stamp>,
}

/// How much a group may lose and how long it may be unwritable (per database group; set on
/// the primary, carried to every member by heartbeats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverPolicy {
    /// RPO in time: a failover may lose at most the commits of this long before the last
    /// primary state the secondary knows of.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_data_loss: Option<std::time::Duration>,
    /// RPO in transactions behind the last primary state the secondary knows of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_data_loss_txns: Option<u64>,
    /// RTO: how long the group may be without a writable primary (automatic failover and
    /// the failover report compare against it).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<std::time::Duration>,
    /// The primary pauses commits while no replica has confirmed its changes within the
    /// RPO (so a failover never has to lose more than the RPO).
    pub block_commits_beyond_rpo: bool,
    /// A group of three or more fails over by itself when its primary is unavailable: the
    /// secondaries stand in turn (by deployment id) and a majority decides; the RPO still
    /// applies (a failover beyond it waits for an operator).
    pub auto_failover: bool,
}

/// An epoch claim: from `epoch` on, `primary` holds the group's primary, starting from the
/// table versions in `fork` (group-wide table ids). Versions a member holds beyond `fork`
/// were made under an older epoch and are not part of the group's history any more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The epoch claimed.
    pub epoch: u64,
    /// Who holds the primary from then on.
    pub primary: DeploymentId,
    /// Table versions the new primary started from.
    pub fork: std::collections::BTreeMap<TableId, u64>,
    /// The database's transaction sequence number at the fork.
    pub fork_seq: u64,
    /// When it was claimed (claimant's clock).
    pub claimed_at_ms: i64,
}

/// One database group in a [`Heartbeat`]: what the sender holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBeat {
    /// The group.
    pub group: String,
    /// The sender's role in it.
    pub role: DatabaseRole,
    /// The epoch of the sender's role.
    pub epoch: u64,
    /// A primary: its last committed transaction's sequence number; a secondary: the last
    /// one it applied.
    pub seq: u64,
    /// When that transaction was committed at the primary.
    pub commit_at_ms: Option<i64>,
    /// The newest claim the sender knows of (gossiped, so every member learns it).
    pub claim: Option<Claim>,
    /// The group's policy (from the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<FailoverPolicy>,
    /// A secondary: the send time of the newest heartbeat of the group's primary it heard
    /// (at the epoch it follows, and only while it promised no newer one): what the
    /// primary's lease is renewed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<i64>,
    /// A secondary (under the same condition as `echo`): when it joined the group or
    /// learned its epoch. It cannot vote for another primary before `unavailable_after`
    /// has passed since, so until half of that it counts toward the primary's lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// A primary handing the group over (planned switchover): the member it hands it to.
    /// It takes no commits meanwhile; members may accept that member's claim although
    /// they still hear the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_to: Option<DeploymentId>,
}

/// `tern.repl.vote`: a candidate asks a member of a group of three or more to accept its
/// claim of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// Format version.
    pub v: u32,
    /// The group.
    pub group: String,
    /// The epoch it would claim.
    pub epoch: u64,
    /// The last transaction of the old primary it applied.
    pub seq: u64,
    /// A planned switchover: the primary is asked to hand the group over (it stops taking
    /// commits and grants once the candidate applied its last one), and members grant
    /// while the primary announces the handoff.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
    /// The candidate of a switchover gives up (it will not claim): the primary takes
    /// commits again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// `tern.repl.vote_reply`: a member's answer to a [`VoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteReply {
    /// Format version.
    pub v: u32,
    /// The group.
    pub group: String,
    /// The epoch asked for.
    pub epoch: u64,
    /// Whether it accepts (and promised to follow no older epoch's primary).
    pub granted: bool,
    /// Why not.
    pub reason: String,
}

/// `tern.repl.heartbeat`: sent to every peer every `heartbeat_interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Format version.
    pub v: u32,
    /// When it was sent (sender's clock).
    pub sent_at_ms: i64,
    /// The sender's public API URL, when it has one (clients are redirected there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The database groups it holds.
    pub groups: Vec<GroupBeat>,
}

/// `tern.repl.unsubscribe`: a replica stops following its upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Format version.
    pub v: u32,
    /// The database replication group.
    pub group: String,
    /// The replica database (its id on the sender).
    pub database: DatabaseId,
}

/// The upstream pruned log records a replica has not received (it fell further behind than
/// the log retention): it must ask for a refresh to catch up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshNeeded {
    /// Format version.
    pub v: u32,
    /// The database replication group.
    pub group: String,
    /// The last log record the upstream shipped it.
    pub cursor: u64,
    /// The upstream's log is pruned up to here.
    pub pruned_up_to: u64,
}

/// The id a replicated table has on every replica: tables keep their id, qualified once
/// with the deployment that created them (`t5` of `d1` → `t5--d1`), so that ids of tables
/// made on different deployments never collide and a chain forwards them unchanged.
pub fn replica_table_id(origin: &DeploymentId, table: &TableId) -> TableId {
    if table.as_str().contains("--") {
        return table.clone();
    }
    TableId::new(format!("{table}--{origin}")).unwrap_or_else(|_| table.clone())
}

/// The group-wide id of a replica's local table: local ids are the canonical id, or it
/// with `_<n>` when an earlier replica of the group in this deployment (made local or
/// dropped) still holds that id. Canonical ids never contain `_` (`t<seq>`, `t<seq>--<dep>`).
pub fn canonical_table_id(local: &TableId) -> TableId {
    match local.as_str().split_once('_') {
        Some((c, _)) => TableId::new(c).unwrap_or_else(|_| local.clone()),
        None => local.clone(),
    }
}

/// The `n`th local id candidate of canonical table `canonical` (see [`canonical_table_id`]).
pub fn local_table_candidate(canonical: &TableId, n: u32) -> TableId {
    if n == 0 {
        return canonical.clone();
    }
    TableId::new(format!("{canonical}_{n}")).unwrap_or_else(|_| canonical.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids_are_qualified_once() {
        let d1 = DeploymentId::new("d1").unwrap();
        let d2 = DeploymentId::new("d2").unwrap();
        let t = TableId::new("t5").unwrap();
        let r = replica_table_id(&d1, &t);
        assert_eq!(r.as_str(), "t5--d1");
        assert_eq!(replica_table_id(&d2, &r), r);
    }

    #[test]
    fn local_ids_map_back_to_canonical_ones() {
        let c = TableId::new("t5--d1").unwrap();
        for n in 0..3 {
            let local = local_table_candidate(&c, n);
            assert_eq!(canonical_table_id(&local), c);
        }
        assert_eq!(local_table_candidate(&c, 2).as_str(), "t5--d1_2");
    }

    #[test]
    fn unknown_versions_are_refused() {
        let u = Unsubscribe {
            v: 2,
            group: "g".into(),
            database: DatabaseId::new("db1").unwrap(),
        };
        let e = decode::<Unsubscribe>(&encode(&u).unwrap()).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        assert!(decode::<Unsubscribe>(b"not json").is_err());
    }
}
