//! Failover (DESIGN.md §10): peer availability, role epochs and claims, the write fence,
//! promotion of a secondary, and what every member does when it learns of a newer epoch.
//!
//! # Protocol
//!
//! ```text
//!  every member, every heartbeat_interval ─ tern.repl.heartbeat ─▶ every peer:
//!     per group held: role, epoch, seq (primary: last committed; secondary: last applied),
//!     commit time, the newest Claim known (gossip), the policy (primary)
//!  receiver: peer heard ─▶ available;  silence ≥ unavailable_after/2 ─▶ suspect;
//!            silence ≥ unavailable_after (or maintenance) ─▶ unavailable
//!            (each change: log line, history row, counter, webhook)
//!
//!  failover on secondary S of group G (primary P):
//!     refuse if P is available (planned: switchover) unless --allow-data-loss
//!     promoting: no refresh asked for from now on ─▶ drain what already arrived (import
//!       jobs, received log messages) until drain_timeout ─▶ the importer's gate, held
//!       until the claim: an import under way steps aside at its next batch, none starts
//!     known loss = P's last heartbeat (seq, commit time) − what S applied
//!     refuse if loss > RPO unless --allow-data-loss; a group of two is only promoted
//!       with --allow-data-loss; a group of three or more asks every member for its vote
//!       (tern.repl.vote) and needs a majority's grants (a grant is a stored promise not
//!       to grant an older claim nor to echo the old primary)
//!     one metadata transaction: epoch N+1, role primary, Claim{N+1, S, fork = S's table
//!       versions, fork_seq} ─▶ writable; heartbeats carry the claim at once
//!
//!  member M learns Claim{N+1} (any heartbeat, from anyone):
//!     M primary (the old one): fenced at once (the write fence refuses statements), role
//!       secondary of the claimant; tables rolled back to the fork — every transaction it
//!       committed past the fork is kept as a conflict record with its files (never
//!       applied silently, never deleted); then it refreshes from the new primary
//!     M secondary: tables past the fork rolled back (those versions were the old
//!       primary's, lost); a replica of the old primary re-parents to the claimant; refresh
//!  shipments and snapshots carry their epoch: older than the newest known ─▶ refused
//!  (counted); newer ─▶ retried until the claim is learned
//! ```
//!
//! # Guarantees
//!
//! * A database takes a statement's commit only if the [`WriteFence`] says so in the
//!   metadata transaction that prepares it: a primary whose group knows a newer epoch
//!   refuses (409 naming the epoch and the primary), so after a member learns a claim it
//!   never commits under the old epoch again.
//! * No member applies a change of an epoch older than the newest it knows.
//! * Versions are the same state everywhere up to a claim's fork; every member rewinds to
//!   the fork before it follows the new epoch, so no member keeps a stale epoch's change as
//!   if it were the group's.
//! * What an old primary committed past the fork is kept (conflict records and their
//!   files), never silently dropped.
//!
//! * In a group of three or more the primary takes commits only while it holds a lease:
//!   a majority echoed one of its heartbeats within `unavailable_after / 2`. A member
//!   grants a vote only after the primary has been silent to it for `unavailable_after`,
//!   so by the time a majority can elect a successor, the old primary's lease has lapsed
//!   and it has stopped committing by itself (`epochs.rs` checks this as a model).
//!
//! Planned switchover ([`Replication::switchover`]) hands the group over with nothing lost;
//! conflict records are read, applied or discarded in [`crate::conflicts`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_clock::SharedClock;
use tern_meta::{DatabaseDpo, DatabaseRole, Key, MetaTxn, MicroPartitionDpo, impl_dpo};
use tern_storage::Path;
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, ShortName, TableId};
use tern_table::commit::table_lock;
use tern_table::{Stamp, WriteFence};

use crate::error::{Error, Result};
use crate::model::{
    self, Claim, FailoverPolicy, GroupBeat, HEARTBEAT_TYPE, Heartbeat, PAYLOAD_VERSION,
    canonical_table_id, replica_table_id,
};
use crate::peers::Peers;
use crate::service::{Counters, Replication, mark_dirty};
use crate::state::{GROUP_INDEX, PendingRefresh, ReplicaDpo, keys};

/// A peer's availability, as this deployment judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Heard within half of `unavailable_after`.
    Available,
    /// Silent for half of `unavailable_after` or more.
    Suspect,
    /// Silent for `unavailable_after` or more.
    Unavailable,
    /// Taken out by an operator (planned maintenance): unavailable until put back.
    Maintenance,
}

impl Availability {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Availability::Available => "available",
            Availability::Suspect => "suspect",
            Availability::Unavailable => "unavailable",
            Availability::Maintenance => "maintenance",
        }
    }

    /// Whether a primary in this state may be failed over from without
    /// `--allow-data-loss` on availability grounds.
    pub fn is_down(self) -> bool {
        matches!(self, Availability::Unavailable | Availability::Maintenance)
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What silence of `silence_ms` (none: never heard) makes of a peer.
pub fn judge(
    silence_ms: Option<i64>,
    unavailable_after: Duration,
    maintenance: bool,
) -> Availability {
    if maintenance {
        return Availability::Maintenance;
    }
    let limit = i64::try_from(unavailable_after.as_millis()).unwrap_or(i64::MAX);
    match silence_ms {
        None => Availability::Unavailable,
        Some(s) if s >= limit => Availability::Unavailable,
        Some(s) if s >= limit / 2 => Availability::Suspect,
        Some(_) => Availability::Available,
    }
}

/// A peer deployment's availability (`repl/peer/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDpo {
    /// The peer.
    pub peer: DeploymentId,
    /// Its state.
    pub state: Availability,
    /// Since when (local clock).
    pub since_ms: i64,
    /// When its last heartbeat arrived (local clock).
    pub last_heard_ms: Option<i64>,
    /// Taken out by an operator.
    pub maintenance: bool,
    /// Its public API URL (from its heartbeats).
    pub url: Option<String>,
}
impl_dpo!(PeerDpo, "peer availability");

/// An availability notification (`repl/availlog/<seq>`): one change of a peer's state, or
/// of a group's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityEvent {
    /// Its number (ascending).
    pub seq: u64,
    /// The peer it is about.
    pub peer: DeploymentId,
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// When (local clock).
    pub at_ms: i64,
    /// Why.
    pub reason: String,
}
impl_dpo!(AvailabilityEvent, "availability notification");

/// A notification waiting for the webhook (`repl/hook/<seq>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookDpo {
    /// The notification.
    pub event: AvailabilityEvent,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before (local clock).
    pub next_at_ms: i64,
}
impl_dpo!(HookDpo, "webhook delivery");

/// The primary's state as its last heartbeat told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryBeat {
    /// When the primary sent it (its clock): echoed back to renew its lease.
    #[serde(default)]
    pub sent_at_ms: i64,
    /// Its last committed transaction's sequence number.
    pub seq: u64,
    /// When that was committed (its clock).
    pub commit_at_ms: Option<i64>,
    /// When the heartbeat arrived (local clock).
    pub heard_at_ms: i64,
    /// The member it is handing the group over to (planned switchover).
    #[serde(default)]
    pub handoff_to: Option<DeploymentId>,
}

/// A primary handing its group over (planned switchover): it takes no commits until it
/// learns the new epoch, or the candidate cancels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The candidate.
    pub to: DeploymentId,
    /// When the primary stopped taking commits (its clock).
    pub since_ms: i64,
    /// The account's newest transaction id then: once every transaction up to it has
    /// settled, the primary's last transaction is known.
    pub txn: u64,
}

/// What a replica last said it applied (kept by the primary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// The last sequence number it applied.
    pub seq: u64,
    /// When that was committed here.
    pub commit_at_ms: Option<i64>,
    /// When its heartbeat arrived.
    pub heard_at_ms: i64,
    /// The send time of the newest primary heartbeat it heard (renews the lease).
    #[serde(default)]
    pub echo: Option<i64>,
    /// When it joined the group or learned its epoch (it votes for no one before
    /// `unavailable_after` since).
    #[serde(default)]
    pub since_ms: Option<i64>,
}

/// A database group as this member knows it (`repl/group/<group>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDpo {
    /// The group.
    pub group: String,
    /// The newest epoch known.
    pub epoch: u64,
    /// Who holds the primary at `epoch`.
    pub primary: Option<DeploymentId>,
    /// The claim of `epoch`, when known.
    pub claim: Option<Claim>,
    /// The group's policy.
    pub policy: FailoverPolicy,
    /// The primary's last heartbeat (secondaries).
    pub primary_beat: Option<PrimaryBeat>,
    /// What each replica last said it applied (the primary).
    pub acks: BTreeMap<DeploymentId, ReplicaAck>,
    /// The newest epoch this member voted for (or stood for): it echoes no older
    /// primary's heartbeats and grants no other vote at or below it.
    #[serde(default)]
    pub promised: u64,
    /// The primary: the group's members when last counted (itself included).
    #[serde(default)]
    pub members: Vec<DeploymentId>,
    /// When this member joined the group or learned its epoch (a primary never heard
    /// counts as heard then).
    #[serde(default)]
    pub since_ms: i64,
    /// Who `promised` went to.
    #[serde(default)]
    pub promised_to: Option<DeploymentId>,
    /// The primary: members a forced promotion left out (they were down); each counts
    /// again once it is heard from.
    #[serde(default)]
    pub excluded: Vec<DeploymentId>,
    /// The primary: a planned switchover in progress.
    #[serde(default)]
    pub handoff: Option<Handoff>,
    /// A rewind to the claim's fork is not finished. Resumed by the control worker after
    /// a crash.
    #[serde(default)]
    pub rewind: Option<Rewind>,
}

/// A pending rewind to the fork of the newest claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewind {
    /// Keep what is rolled back as conflict records: this member was the old primary.
    pub keep: bool,
    /// The epoch this member held when it learned the claim (the conflicts' epoch).
    pub epoch: u64,
}
impl_dpo!(GroupDpo, "database group");

impl GroupDpo {
    pub(crate) fn new(group: &str, primary: &DeploymentId, epoch: u64) -> Self {
        Self {
            group: group.to_string(),
            epoch,
            primary: Some(primary.clone()),
            claim: None,
            policy: FailoverPolicy::default(),
            primary_beat: None,
            acks: BTreeMap::new(),
            promised: epoch,
            members: Vec::new(),
            since_ms: 0,
            promised_to: None,
            excluded: Vec::new(),
            handoff: None,
            rewind: None,
        }
    }

    /// Whether the primary's commits need a lease: groups of three or more decide by
    /// majority, so their primary must know a majority still follows it.
    pub fn needs_lease(&self) -> bool {
        self.members.len() >= 3
    }

    /// Until when the primary (`me`) holds its lease (`lease` long after the newest
    /// heartbeat of its own that a majority echoed), or `None` when it needs none.
    pub fn lease_until(&self, me: &DeploymentId, lease: Duration) -> Option<i64> {
        if !self.needs_lease() {
            return None;
        }
        let need = self.members.len() / 2; // others besides itself
        // A member confirms the primary until a lease after the newest of: the primary's
        // heartbeat it echoed, and the moment it joined or learned the epoch (it cannot
        // vote for another before twice the lease has passed since either).
        let mut echoes: Vec<i64> = self
            .members
            .iter()
            .filter(|m| *m != me)
            .filter_map(|m| {
                let a = self.acks.get(m)?;
                a.echo.max(a.since_ms)
            })
            .collect();
        echoes.sort_unstable_by(|a, b| b.cmp(a));
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let confirmed = echoes.get(need.saturating_sub(1)).map(|e| e + lease);
        // No grace: a claim just won, or members that just joined, give no lease until a
        // majority echoes (a grace let a second candidate win while the first still wrote,
        // found by the epoch model test).
        Some(confirmed.unwrap_or(0))
    }

    /// The primary's exposure: transactions committed at `seq` that no replica has
    /// confirmed, and how old the oldest of them can be at most (ms).
    pub fn exposure(&self, seq: u64, now: i64) -> (u64, i64) {
        let best = self.acks.values().max_by_key(|a| a.seq);
        match best {
            None => (0, 0),
            Some(a) if a.seq >= seq => (0, 0),
            Some(a) => (seq - a.seq, a.commit_at_ms.map_or(0, |c| (now - c).max(0))),
        }
    }

    /// Why the policy pauses commits at `seq` now, if it does.
    fn beyond_rpo(&self, seq: u64, now: i64) -> Option<String> {
        if !self.policy.block_commits_beyond_rpo {
            return None;
        }
        let (txns, ms) = self.exposure(seq, now);
        if let Some(max) = self.policy.max_data_loss_txns
            && txns > max
        {
            return Some(format!(
                "no replica has confirmed the last {txns} transactions (max_data_loss_txns = {max}, block_commits_beyond_rpo)"
            ));
        }
        if let Some(max) = self.policy.max_data_loss
            && txns > 0
            && ms > i64::try_from(max.as_millis()).unwrap_or(i64::MAX)
        {
            return Some(format!(
                "no replica has confirmed commits of the last {ms} ms (max_data_loss = {}, block_commits_beyond_rpo)",
                humantime_serde::re::humantime::format_duration(max)
            ));
        }
        None
    }
}

/// Where a conflict record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictState {
    /// Kept for the operator.
    Open,
    /// Re-executed on the primary.
    Applied,
    /// Not to be applied; kept as history (its files are gone).
    Discarded,
}

impl ConflictState {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            ConflictState::Open => "open",
            ConflictState::Applied => "applied",
            ConflictState::Discarded => "discarded",
        }
    }
}

/// One table version of a conflict record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictVersion {
    /// The table (local id).
    pub table: TableId,
    /// The version it made.
    pub version: u64,
    /// Files it added (kept in the volume for the record).
    pub added: Vec<MicroPartitionDpo>,
    /// Files it removed (short names).
    pub removed: Vec<ShortName>,
}

/// A transaction this deployment committed as primary past the fork of a newer epoch
/// (`repl/conflict/<id>`): never shipped to the new primary, kept for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictDpo {
    /// Its id.
    pub id: String,
    /// The database group.
    pub group: String,
    /// The local database.
    pub database: DatabaseId,
    /// Where it was committed.
    pub origin: DeploymentId,
    /// Its transaction id there.
    pub txn_id: Option<u64>,
    /// The epoch it was committed under.
    pub epoch: u64,
    /// When it was committed.
    pub committed_at_ms: i64,
    /// The table versions it made.
    pub versions: Vec<ConflictVersion>,
    /// When it was found.
    pub found_at_ms: i64,
    /// Its state.
    pub state: ConflictState,
    /// When it was applied or discarded.
    #[serde(default)]
    pub resolved_at_ms: Option<i64>,
    /// How (the versions an apply made).
    #[serde(default)]
    pub resolution: Option<String>,
}
impl_dpo!(ConflictDpo, "conflict record");

/// Keys of this module's DPOs.
pub mod fkeys {
    use super::*;

    /// `repl/group/<group>`.
    pub fn group(group: &str) -> Key {
        Key::root("repl").str("group").str(group)
    }
    /// `repl/peer/<id>`.
    pub fn peer(peer: &DeploymentId) -> Key {
        Key::root("repl").str("peer").str(peer.as_str())
    }
    /// All peers.
    pub fn peers() -> Key {
        Key::root("repl").str("peer")
    }
    /// `repl/availlog/<seq>`.
    pub fn event(seq: u64) -> Key {
        Key::root("repl").str("availlog").u64(seq)
    }
    /// All notifications.
    pub fn events() -> Key {
        Key::root("repl").str("availlog")
    }
    /// `repl/hook/<seq>`.
    pub fn hook(seq: u64) -> Key {
        Key::root("repl").str("hook").u64(seq)
    }
    /// All webhook deliveries.
    pub fn hooks() -> Key {
        Key::root("repl").str("hook")
    }
    /// `repl/conflict/<id>`.
    pub fn conflict(id: &str) -> Key {
        Key::root("repl").str("conflict").str(id)
    }
    /// All conflict records.
    pub fn conflicts() -> Key {
        Key::root("repl").str("conflict")
    }
}

/// A new group: `me` holds its primary at `epoch`.
pub(crate) fn found_group(
    tx: &mut MetaTxn<'_>,
    group: &str,
    me: &DeploymentId,
    epoch: u64,
    now: i64,
) -> tern_meta::Result<()> {
    let mut g = GroupDpo::new(group, me, epoch);
    g.members = vec![me.clone()];
    g.since_ms = now;
    g.claim = Some(Claim {
        epoch,
        primary: me.clone(),
        fork: BTreeMap::new(),
        fork_seq: 0,
        claimed_at_ms: now,
    });
    tx.put(&fkeys::group(group), &g)
}

/// This deployment joins `group` as a secondary: what it knows of the group so far.
pub(crate) fn join_group(
    tx: &mut MetaTxn<'_>,
    group: &str,
    primary: &DeploymentId,
    epoch: u64,
    now: i64,
) -> tern_meta::Result<()> {
    if tx.get::<GroupDpo>(&fkeys::group(group))?.is_none() {
        let mut g = GroupDpo::new(group, primary, epoch);
        g.since_ms = now;
        tx.put(&fkeys::group(group), &g)?;
    }
    Ok(())
}

/// The group state of `db`, made from the database row when there is none yet (databases
/// replicated before epochs were kept).
pub(crate) fn group_of(
    tx: &mut MetaTxn<'_>,
    db: &DatabaseDpo,
    me: &DeploymentId,
) -> tern_meta::Result<GroupDpo> {
    let group = db.replication_group.clone().unwrap_or_default();
    if let Some(g) = tx.get::<GroupDpo>(&fkeys::group(&group))? {
        return Ok(g);
    }
    let primary = match db.role {
        DatabaseRole::Primary => Some(me.clone()),
        _ => tx
            .get::<ReplicaDpo>(&keys::replica(&db.id))?
            .map(|r| r.upstream),
    };
    Ok(GroupDpo {
        primary,
        ..GroupDpo::new(&group, me, db.epoch)
    })
}

/// The group-wide id of local table `local` of this deployment (`me`).
pub fn wire_table_id(me: &DeploymentId, local: &TableId) -> TableId {
    replica_table_id(me, &canonical_table_id(local))
}

/// The write fence replication installs in the commit protocol (see [`WriteFence`]).
#[derive(Debug)]
pub struct Fence {
    clock: SharedClock,
    me: DeploymentId,
    lease: Duration,
}

impl WriteFence for Fence {
    fn check(
        &self,
        tx: &mut MetaTxn<'_>,
        database: &DatabaseId,
    ) -> tern_meta::Result<std::result::Result<u64, tern_table::Error>> {
        let Some(d) = tx.get_database(database)? else {
            return Ok(Ok(0));
        };
        match d.role {
            DatabaseRole::Local => Ok(Ok(d.epoch)),
            DatabaseRole::Secondary => Ok(Err(tern_table::Error::ReadOnlyReplica {
                database: d.name,
                group: d.replication_group.unwrap_or_default(),
            })),
            DatabaseRole::Primary => {
                let group = d.replication_group.clone().unwrap_or_default();
                let Some(g) = tx.get::<GroupDpo>(&fkeys::group(&group))? else {
                    return Ok(Ok(d.epoch));
                };
                if g.epoch > d.epoch {
                    return Ok(Err(tern_table::Error::NotWritable(Box::new(
                        tern_table::Refusal {
                            database: d.name,
                            group,
                            reason: format!(
                                "fenced: epoch {} of the group is held by {}; write to it",
                                g.epoch,
                                g.primary
                                    .as_ref()
                                    .map_or("another deployment", |p| p.as_str())
                            ),
                            epoch: g.epoch,
                            primary: g.primary.map(|p| p.to_string()),
                            primary_url: None,
                            paused: false,
                        },
                    ))));
                }
                if let Some(h) = &g.handoff {
                    return Ok(Err(tern_table::Error::NotWritable(Box::new(
                        tern_table::Refusal {
                            database: d.name,
                            group,
                            reason: format!(
                                "paused: planned switchover to {} in progress (since its clock's {}); retry, then write to the new primary",
                                h.to, h.since_ms
                            ),
                            epoch: g.epoch,
                            primary: Some(h.to.to_string()),
                            primary_url: None,
                            paused: true,
                        },
                    ))));
                }
                let now = self.clock.now_millis();
                if let Some(until) = g.lease_until(&self.me, self.lease)
                    && now >= until
                {
                    return Ok(Err(tern_table::Error::NotWritable(Box::new(
                        tern_table::Refusal {
                            database: d.name,
                            group,
                            reason: format!(
                                "paused: the primary's lease lapsed {} ms ago (no majority of the group's {} members confirmed it within {} ms); it takes commits again when they do, and another member may be promoted meanwhile",
                                now - until,
                                g.members.len(),
                                self.lease.as_millis()
                            ),
                            epoch: g.epoch,
                            primary: None,
                            primary_url: None,
                            paused: true,
                        },
                    ))));
                }
                let seq = tern_txn::database_seq(tx, &d.id)?;
                if let Some(reason) = g.beyond_rpo(seq, now) {
                    return Ok(Err(tern_table::Error::NotWritable(Box::new(
                        tern_table::Refusal {
                            database: d.name,
                            group,
                            reason: format!("paused: {reason}; retry when a replica catches up"),
                            epoch: g.epoch,
                            primary: None,
                            primary_url: None,
                            paused: true,
                        },
                    ))));
                }
                Ok(Ok(d.epoch))
            }
        }
    }
}

/// The conflict records (one per transaction, this table's part only) of what a rollback
/// of `table` undid on the old primary `me`.
fn conflict_parts(
    db: &DatabaseDpo,
    me: &DeploymentId,
    epoch: u64,
    table: &TableId,
    undone: &tern_meta::RolledBack,
    found_at_ms: i64,
) -> Vec<ConflictDpo> {
    let files: BTreeMap<&ShortName, &MicroPartitionDpo> =
        undone.deleted.iter().map(|m| (&m.short, m)).collect();
    let mut out: BTreeMap<(Option<u64>, i64), ConflictDpo> = BTreeMap::new();
    for v in &undone.versions {
        let c = out
            .entry((v.txn_id, v.committed_at_ms))
            .or_insert_with(|| ConflictDpo {
                id: match v.txn_id {
                    Some(id) => format!("cf-{}-{me}-{id}", db.id),
                    None => format!("cf-{}-{me}-t{}", db.id, v.committed_at_ms),
                },
                group: claim_group(db),
                database: db.id.clone(),
                origin: me.clone(),
                txn_id: v.txn_id,
                epoch,
                committed_at_ms: v.committed_at_ms,
                versions: Vec::new(),
                found_at_ms,
                state: ConflictState::Open,
                resolved_at_ms: None,
                resolution: None,
            });
        c.versions.push(ConflictVersion {
            table: table.clone(),
            version: v.version,
            added: v
                .added
                .iter()
                .filter_map(|s| files.get(s).map(|m| (*m).clone()))
                .collect(),
            removed: v.removed.clone(),
        });
    }
    out.into_values().collect()
}

/// A vote request a member decides later (see [`Replication::retry_deferred_votes`]).
#[derive(Debug, Clone)]
pub(crate) struct DeferredVote {
    from: DeploymentId,
    req: model::VoteRequest,
    /// When to decide again.
    at: Instant,
    /// When to stop deferring (refuse).
    deadline: Instant,
}

/// A failover or switchover standing for a group in this process (see
/// [`Replication::withdraw_stale_candidacies`]).
struct Standing {
    repl: Replication,
    group: String,
}

impl Drop for Standing {
    fn drop(&mut self) {
        self.repl
            .inner
            .standing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.group);
    }
}

/// What `tern database failover` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverOptions {
    /// Promote even when the known loss exceeds the RPO, the primary is still heard from,
    /// or the group cannot decide by majority.
    pub allow_data_loss: bool,
}

/// What a planned switchover did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverReport {
    /// The database group.
    pub group: String,
    /// The database promoted.
    pub database: String,
    /// The epoch it holds.
    pub epoch: u64,
    /// The primary it replaced (none: it was the primary already).
    pub previous_primary: Option<DeploymentId>,
    /// The old primary's last transaction, applied here before the claim.
    pub applied_seq: u64,
    /// From the command to writable (ms): the longest the group could not take writes
    /// (the old primary paused once it received the request).
    pub pause_ms: u64,
    /// Whether the new primary holds its lease when the command returns.
    pub lease_held: bool,
}

/// What a failover did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverReport {
    /// The database group.
    pub group: String,
    /// The database promoted.
    pub database: String,
    /// The epoch claimed.
    pub epoch: u64,
    /// The primary it replaced.
    pub previous_primary: Option<DeploymentId>,
    /// Its availability when the failover started.
    pub previous_primary_state: Option<Availability>,
    /// Transactions the old primary had committed (by its last heartbeat here) that were
    /// not applied here: lost unless the old primary returns (then conflict records).
    pub known_loss_txns: u64,
    /// Time between the newest commit applied here and the newest the old primary reported.
    pub known_loss_ms: i64,
    /// How long ago the old primary was last heard (ms; none: never).
    pub primary_silent_ms: Option<i64>,
    /// Import jobs and messages drained before judging.
    pub drained: u64,
    /// Whether the drain ran out of time (what was left counts as loss).
    pub drain_timed_out: bool,
    /// From the command to writable (ms): the measured RTO.
    pub rto_ms: u64,
    /// Whether the new primary holds its lease (a majority echoed it) when the command
    /// returns; a group of three or more takes commits only then.
    pub lease_held: bool,
    /// The policy's RTO, when it has one.
    pub max_unavailable_ms: Option<u64>,
    /// Whether `--allow-data-loss` was needed.
    pub forced: bool,
}

/// `show replication status`: one database group held here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// The local database.
    pub database: String,
    /// Its role here.
    pub role: DatabaseRole,
    /// The epoch of its role here.
    pub epoch: u64,
    /// The newest epoch known here.
    pub group_epoch: u64,
    /// Who holds the primary.
    pub primary: Option<DeploymentId>,
    /// The primary's availability (secondaries).
    pub primary_state: Option<Availability>,
    /// Secondaries: transactions behind the last primary state heard of; primary:
    /// transactions no replica confirmed yet.
    pub txns_behind: u64,
    /// Secondaries: the age of the newest primary commit not applied here (grows while the
    /// primary is silent); primary: how old its oldest unconfirmed commit can be.
    pub rpo_exposure_ms: i64,
    /// Secondaries: how long ago the primary was last heard.
    pub primary_heard_ago_ms: Option<i64>,
    /// The policy.
    pub policy: FailoverPolicy,
    /// Conflict records kept and not yet applied or discarded.
    pub conflicts: u64,
}

impl Replication {
    /// The write fence to install in this deployment's commit protocol.
    pub fn write_fence(&self) -> Arc<dyn WriteFence> {
        Arc::new(Fence {
            clock: Arc::clone(&self.inner.p.clock),
            me: self.me().clone(),
            lease: self.lease(),
        })
    }

    /// How long a primary of a group of three or more holds its lease after the newest
    /// heartbeat a majority confirmed: half of `unavailable_after`, so that members judge
    /// it unavailable (and may vote for another) only after it stopped taking commits.
    pub fn lease(&self) -> Duration {
        self.config().unavailable_after / 2
    }

    fn local_db(&self, account: &AccountId, database: &str) -> Result<DatabaseDpo> {
        self.meta()
            .read(|tx| tx.find_database(account, database))?
            .ok_or_else(|| Error::NotFound {
                what: "database",
                name: format!("{account}.{database}"),
            })
    }

    /// The group state of local database `db`.
    pub fn group_state(&self, db: &DatabaseDpo) -> Result<GroupDpo> {
        let me = self.me().clone();
        Ok(self.meta().read(|tx| group_of(tx, db, &me))?)
    }

    /// Where writes of `group` go: the newest epoch known here, the deployment holding the
    /// primary, and its API URL when it published one (client redirects).
    pub fn primary_of(&self, group: &str) -> Result<(u64, Option<DeploymentId>, Option<String>)> {
        let Some(db) = self.local_database(group)? else {
            return Ok((0, None, None));
        };
        let g = self.group_state(&db)?;
        let url = match &g.primary {
            Some(p) if p == self.me() => self.public_url(),
            Some(p) => self
                .meta()
                .read(|tx| tx.get::<PeerDpo>(&fkeys::peer(p)))?
                .and_then(|p| p.url),
            None => None,
        };
        Ok((g.epoch, g.primary, url))
    }

    /// Sets the failover policy of a primary database's group (carried to every member by
    /// heartbeats).
    pub fn set_policy(
        &self,
        account: &AccountId,
        database: &str,
        policy: FailoverPolicy,
    ) -> Result<()> {
        let db = self.local_db(account, database)?;
        if db.role != DatabaseRole::Primary {
            return Err(Error::invalid(
                format!("database {database}"),
                "the failover policy is set on the group's primary",
            ));
        }
        let me = self.me().clone();
        self.meta().write(|tx| {
            let mut g = group_of(tx, &db, &me)?;
            g.policy = policy.clone();
            tx.put(&fkeys::group(&g.group), &g)
        })?;
        self.beat_soon();
        tracing::info!(%account, database, ?policy, "failover policy set");
        Ok(())
    }

    /// Heartbeats go out at the next control unit.
    pub(crate) fn beat_soon(&self) {
        self.inner
            .beat_due
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.control_wake.notify_one();
    }

    /// Every peer's availability.
    pub fn availability(&self) -> Result<Vec<PeerDpo>> {
        Ok(self
            .meta()
            .read(|tx| tx.scan_prefix::<PeerDpo>(&fkeys::peers()))?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// The newest `limit` availability notifications, oldest first.
    pub fn availability_history(&self, limit: usize) -> Result<Vec<AvailabilityEvent>> {
        let all = self
            .meta()
            .read(|tx| tx.scan_prefix::<AvailabilityEvent>(&fkeys::events()))?;
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).map(|(_, e)| e).collect())
    }

    /// Conflict records kept here.
    pub fn conflicts(&self) -> Result<Vec<ConflictDpo>> {
        Ok(self
            .meta()
            .read(|tx| tx.scan_prefix::<ConflictDpo>(&fkeys::conflicts()))?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Planned maintenance: `peer` counts as unavailable until put back (`on = false`).
    pub fn set_maintenance(&self, peer: &DeploymentId, on: bool) -> Result<Availability> {
        if peer == self.me() {
            return Err(Error::invalid(
                format!("deployment {peer}"),
                "is this deployment: set maintenance on its peers",
            ));
        }
        let known = self.meta().read(|tx| tx.get_deployment(peer))?.is_some();
        if !known {
            return Err(Error::NotFound {
                what: "deployment",
                name: peer.to_string(),
            });
        }
        let now = self.now();
        let unavailable_after = self.config().unavailable_after;
        let reason = if on {
            "maintenance on (operator)"
        } else {
            "maintenance off (operator)"
        };
        let state = self.meta().write(|tx| {
            let mut p = peer_row(tx, peer, now)?;
            p.maintenance = on;
            let to = judge(p.last_heard_ms.map(|h| now - h), unavailable_after, on);
            transition(tx, &mut p, to, now, reason)?;
            tx.put(&fkeys::peer(peer), &p)?;
            Ok(to)
        })?;
        self.notified();
        Ok(state)
    }

    /// Counts, logs and hands to the webhook notifications recorded since the last call.
    fn notified(&self) {
        self.inner.control_wake.notify_one();
    }

    /// Control worker: re-judges every peer's availability by its silence; a replica whose
    /// upstream (not the primary) became unavailable follows the primary instead (the next
    /// link takes the lost head's place). How many changed.
    pub(crate) fn judge_peers(&self) -> Result<usize> {
        let now = self.now();
        let me = self.me().clone();
        let unavailable_after = self.config().unavailable_after;
        let members: Vec<DeploymentId> = self
            .meta()
            .read(|tx| tx.list_deployments())?
            .into_iter()
            .map(|d| d.id)
            .filter(|d| *d != me)
            .collect();
        let mut changed = 0;
        let mut lost = Vec::new();
        for peer in members {
            let to = self.meta().write(|tx| {
                let mut p = peer_row(tx, &peer, now)?;
                let to = judge(
                    p.last_heard_ms.map(|h| now - h),
                    unavailable_after,
                    p.maintenance,
                );
                if to == p.state && tx.contains(&fkeys::peer(&peer))? {
                    return Ok(None);
                }
                let silence = p.last_heard_ms.map_or("never heard".to_string(), |h| {
                    format!("silent for {} ms", now - h)
                });
                transition(tx, &mut p, to, now, &silence)?;
                tx.put(&fkeys::peer(&peer), &p)?;
                Ok(Some(to))
            })?;
            if let Some(to) = to {
                changed += 1;
                if to.is_down() {
                    lost.push(peer);
                }
            }
        }
        for peer in lost {
            self.reparent_from(&peer)?;
        }
        if changed > 0 {
            self.notified();
        }
        Ok(changed)
    }

    /// Replicas following `lost` (a chain link, not the primary) follow the group's primary.
    fn reparent_from(&self, lost: &DeploymentId) -> Result<()> {
        let replicas = self
            .meta()
            .read(|tx| tx.scan_prefix::<ReplicaDpo>(&keys::replicas()))?;
        for (_, r) in replicas.into_iter().filter(|(_, r)| &r.upstream == lost) {
            let Some(db) = self.meta().read(|tx| tx.get_database(&r.database))? else {
                continue;
            };
            let g = self.group_state(&db)?;
            let Some(primary) = g.primary.filter(|p| p != lost && p != self.me()) else {
                continue;
            };
            self.meta().write(|tx| {
                if let Some(mut cur) = tx.get::<ReplicaDpo>(&keys::replica(&r.database))? {
                    cur.upstream = primary.clone();
                    cur.refresh = None;
                    tx.put(&keys::replica(&r.database), &cur)?;
                }
                mark_dirty(tx)
            })?;
            self.ask_refresh(&r.database, "upstream lost", false)?;
            tracing::warn!(database = %r.database, %lost, %primary, "upstream unavailable: following the primary");
        }
        Ok(())
    }

    /// Control worker: sends heartbeats when due. How many peers got one.
    pub(crate) async fn send_heartbeats(&self, peers: &dyn Peers) -> Result<usize> {
        let now = self.now();
        let every = i64::try_from(self.config().heartbeat_interval.as_millis()).unwrap_or(i64::MAX);
        let last = self
            .inner
            .last_beat_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        let forced = self
            .inner
            .beat_due
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if !forced && now - last < every {
            return Ok(0);
        }
        self.inner
            .last_beat_ms
            .store(now, std::sync::atomic::Ordering::SeqCst);
        let payload = model::encode(&self.heartbeat(now)?)?;
        let me = self.me().clone();
        let members = self.meta().read(|tx| tx.list_deployments())?;
        let mut n = 0;
        for d in members.iter().filter(|d| d.id != me) {
            let Some(s) = peers.sender(&d.id) else {
                continue;
            };
            match s
                .send(tern_messaging::Draft::new(HEARTBEAT_TYPE, payload.clone()))
                .await
            {
                Ok(_) => n += 1,
                Err(e) => tracing::warn!(peer = %d.id, error = %e, "heartbeat not sent"),
            }
        }
        Ok(n)
    }

    /// This deployment's heartbeat.
    pub fn heartbeat(&self, now: i64) -> Result<Heartbeat> {
        let me = self.me().clone();
        let groups = self.meta().read(|tx| {
            let mut out = Vec::new();
            for a in tx.list_accounts()? {
                for d in tx.list_databases(&a.name)? {
                    let Some(group) = d.replication_group.clone() else {
                        continue;
                    };
                    let g = group_of(tx, &d, &me)?;
                    let (seq, commit_at_ms) = match d.role {
                        DatabaseRole::Primary => {
                            let mut newest = None;
                            for t in tx.list_tables(&d.id)? {
                                if let Some(v) = tx.get_table_version(&t.id, t.current_version)? {
                                    newest = newest.max(Some(v.committed_at_ms));
                                }
                            }
                            (tern_txn::database_seq(tx, &d.id)?, newest)
                        }
                        _ => match tx.get::<ReplicaDpo>(&keys::replica(&d.id))? {
                            Some(r) => (r.applied_seq, r.applied_commit_at_ms),
                            None => (0, None),
                        },
                    };
                    out.push(GroupBeat {
                        group,
                        role: d.role,
                        // A secondary follows the newest epoch it knows.
                        epoch: match d.role {
                            DatabaseRole::Primary => d.epoch,
                            _ => g.epoch,
                        },
                        seq,
                        commit_at_ms,
                        claim: g.claim.clone(),
                        policy: (d.role == DatabaseRole::Primary).then(|| g.policy.clone()),
                        echo: match (&g.primary_beat, d.role) {
                            (Some(b), DatabaseRole::Secondary) if g.promised <= g.epoch => {
                                Some(b.sent_at_ms)
                            }
                            _ => None,
                        },
                        since_ms: (d.role == DatabaseRole::Secondary && g.promised <= g.epoch)
                            .then_some(g.since_ms),
                        handoff_to: match d.role {
                            DatabaseRole::Primary => g.handoff.as_ref().map(|h| h.to.clone()),
                            _ => None,
                        },
                    });
                }
            }
            Ok(out)
        })?;
        Ok(Heartbeat {
            v: PAYLOAD_VERSION,
            sent_at_ms: now,
            url: self.public_url(),
            groups,
        })
    }

    /// A heartbeat from `from` arrived: it is available; learn any newer claim; keep the
    /// primary's progress (secondaries) and the replicas' confirmations (primary).
    pub(crate) async fn heard(&self, from: &DeploymentId, hb: Heartbeat) -> Result<()> {
        let now = self.now();
        let unavailable_after = self.config().unavailable_after;
        let changed = self.meta().write(|tx| {
            let mut p = peer_row(tx, from, now)?;
            p.last_heard_ms = Some(now);
            if hb.url.is_some() {
                p.url = hb.url.clone();
            }
            let to = judge(Some(0), unavailable_after, p.maintenance);
            let changed = to != p.state;
            transition(tx, &mut p, to, now, "heartbeat")?;
            tx.put(&fkeys::peer(from), &p)?;
            Ok(changed)
        })?;
        if changed {
            self.notified();
        }
        let mut first_beat = false;
        let mut stale_member = false;
        for beat in hb.groups {
            let Some(db) = self.local_database(&beat.group)? else {
                continue;
            };
            if let Some(claim) = &beat.claim {
                let known = self.group_state(&db)?.epoch;
                if claim.epoch > known {
                    self.learn_claim(&db, claim.clone()).await?;
                }
            }
            let me = self.me().clone();
            self.meta().write(|tx| {
                let Some(db) = tx.get_database(&db.id)? else {
                    return Ok(());
                };
                let mut g = group_of(tx, &db, &me)?;
                stale_member |= beat.epoch < g.epoch;
                if beat.epoch == g.epoch
                    && beat.role == DatabaseRole::Primary
                    && g.primary.as_ref() == Some(from)
                {
                    if g.primary_beat.is_none() {
                        // The first heartbeat of this primary: echo it at once (its lease).
                        first_beat = true;
                    }
                    let newer = g
                        .primary_beat
                        .as_ref()
                        .is_none_or(|b| hb.sent_at_ms >= b.sent_at_ms);
                    if newer {
                        g.primary_beat = Some(PrimaryBeat {
                            sent_at_ms: hb.sent_at_ms,
                            seq: beat.seq,
                            commit_at_ms: beat.commit_at_ms,
                            heard_at_ms: now,
                            handoff_to: beat.handoff_to.clone(),
                        });
                    }
                    if let Some(policy) = &beat.policy {
                        g.policy = policy.clone();
                    }
                }
                if db.role == DatabaseRole::Primary
                    && beat.role == DatabaseRole::Secondary
                    && beat.epoch == g.epoch
                {
                    // Heartbeats may be handled out of order: an older one never takes
                    // back what a newer one confirmed.
                    let old = g.acks.get(from).cloned();
                    let seq = old.as_ref().map_or(beat.seq, |o| o.seq.max(beat.seq));
                    let newer = old.as_ref().is_none_or(|o| beat.seq >= o.seq);
                    g.acks.insert(
                        from.clone(),
                        ReplicaAck {
                            seq,
                            commit_at_ms: if newer {
                                beat.commit_at_ms
                            } else {
                                old.as_ref().and_then(|o| o.commit_at_ms)
                            },
                            heard_at_ms: now,
                            echo: beat.echo.max(old.as_ref().and_then(|o| o.echo)),
                            since_ms: beat.since_ms.max(old.as_ref().and_then(|o| o.since_ms)),
                        },
                    );
                }
                tx.put(&fkeys::group(&g.group), &g)
            })?;
        }
        if first_beat {
            self.beat_soon();
        }
        if stale_member {
            // A member with a stale view (an old primary back, a replica that slept): it
            // will learn the newer epoch from this deployment's heartbeat and ask for a
            // refresh — read that request as soon as it lands.
            self.expect_reply();
        }
        Ok(())
    }

    /// Learns `claim` (newer than any epoch known here) for local database `db`: the old
    /// primary fences itself and keeps what it committed past the fork as conflict
    /// records; every member rewinds to the fork; replicas of the old primary follow the
    /// claimant.
    pub(crate) async fn learn_claim(&self, db: &DatabaseDpo, claim: Claim) -> Result<()> {
        let me = self.me().clone();
        let now = self.now();
        let group = db.replication_group.clone().unwrap_or_default();
        // The role first, in one transaction: from here no statement commits under the old
        // epoch (the fence reads this), whatever happens next.
        let step = self.meta().write(|tx| {
            let Some(mut d) = tx.get_database(&db.id)? else {
                return Ok(None);
            };
            let mut g = group_of(tx, &d, &me)?;
            if claim.epoch <= g.epoch && g.claim.is_some() {
                return Ok(None);
            }
            let old_primary = g.primary.clone();
            g.epoch = claim.epoch;
            g.primary = Some(claim.primary.clone());
            g.claim = Some(claim.clone());
            g.primary_beat = None;
            g.acks.clear();
            g.promised = g.promised.max(claim.epoch);
            g.since_ms = now;
            g.handoff = None;
            if d.role != DatabaseRole::Local {
                // A rewind not finished yet keeps its own mark (its conflicts' epoch).
                g.rewind = Some(g.rewind.unwrap_or(Rewind {
                    keep: d.role == DatabaseRole::Primary,
                    epoch: d.epoch,
                }));
            }
            tx.put(&fkeys::group(&group), &g)?;
            let was = d.role;
            match d.role {
                DatabaseRole::Primary if claim.primary != me => {
                    d.role = DatabaseRole::Secondary;
                    d.epoch = claim.epoch;
                    tx.update_database(&d)?;
                    let id = format!("rq-{me}-{}", tx.next_sequence("repl-id")?);
                    let mut r = ReplicaDpo::new(
                        d.id.clone(),
                        d.account.clone(),
                        group.clone(),
                        claim.primary.clone(),
                        true,
                        PendingRefresh {
                            request_id: id,
                            sent: true,
                            asked_at_ms: now,
                            reason: format!("fenced by epoch {}", claim.epoch),
                        },
                    );
                    // Asked for only once its tables are at the fork (below).
                    r.refresh = None;
                    r.applied_seq = claim.fork_seq;
                    tx.put(&keys::replica(&d.id), &r)?;
                    // Shipping to our old downstreams stops: they follow the claimant.
                    for (k, _) in
                        tx.scan_prefix::<crate::state::DownstreamDpo>(&keys::downstreams_of(&d.id))?
                    {
                        tx.delete(&k)?;
                    }
                }
                DatabaseRole::Secondary => {
                    d.epoch = claim.epoch;
                    tx.update_database(&d)?;
                    if let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(&d.id))? {
                        if old_primary.as_ref() == Some(&r.upstream)
                            || r.upstream == claim.primary
                            || r.upstream == me
                        {
                            r.upstream = claim.primary.clone();
                        }
                        r.refresh = None;
                        r.promoting = false;
                        r.applied_seq = r.applied_seq.min(claim.fork_seq);
                        tx.put(&keys::replica(&d.id), &r)?;
                    }
                }
                _ => {}
            }
            mark_dirty(tx)?;
            let seq = tx.next_sequence("repl-availlog")?;
            let event = AvailabilityEvent {
                seq,
                peer: claim.primary.clone(),
                from: format!("epoch {}", claim.epoch.saturating_sub(1)),
                to: format!("epoch {}", claim.epoch),
                at_ms: now,
                reason: format!(
                    "group {group}: {} claimed the primary (was {}); this deployment's {} is {}",
                    claim.primary,
                    old_primary.as_ref().map_or("unknown", |p| p.as_str()),
                    d.name,
                    match (was, d.role) {
                        (DatabaseRole::Primary, DatabaseRole::Secondary) =>
                            "fenced: now a secondary",
                        _ => "a secondary",
                    }
                ),
            };
            record_event(tx, &event)?;
            Ok(Some(was))
        })?;
        let Some(was) = step else {
            return Ok(());
        };
        Counters::add(&self.inner.counters.epochs_learned, 1);
        tracing::warn!(%group, epoch = claim.epoch, primary = %claim.primary, role_was = ?was, "newer epoch learned");
        if was == DatabaseRole::Local {
            return Ok(());
        }
        // The new primary needs our echo for its lease: answer at once.
        self.beat_soon();
        self.finish_rewind(db).await?;
        self.notified();
        Ok(())
    }

    /// Rewinds `db` to its group's claim's fork if that is pending (`GroupDpo::rewind`),
    /// then asks the new primary for a refresh and clears the mark — in that order, so a
    /// crash anywhere leaves the mark for [`Self::resume_rewinds`] (every step may run
    /// again: rewound tables are skipped, a refresh request replaces the pending one).
    async fn finish_rewind(&self, db: &DatabaseDpo) -> Result<()> {
        let _one = self.inner.rewinding.lock().await;
        let g = self.group_state(db)?;
        let (Some(mark), Some(claim)) = (g.rewind, g.claim.clone()) else {
            return Ok(());
        };
        self.rewind_to_fork(db, &claim, mark).await?;
        self.ask_refresh(&db.id, &format!("epoch {}", claim.epoch), false)?;
        self.crash_point(crate::crash::REWIND_ASKED)?;
        let me = self.me().clone();
        self.meta().write(|tx| {
            let d = tx.get_database(&db.id)?.unwrap_or_else(|| db.clone());
            let mut g = group_of(tx, &d, &me)?;
            if g.claim.as_ref().map(|c| c.epoch) == Some(claim.epoch) {
                g.rewind = None;
                tx.put(&fkeys::group(&g.group), &g)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Control worker: finishes rewinds a crash cut short. How many.
    pub(crate) async fn resume_rewinds(&self) -> Result<usize> {
        let me = self.me().clone();
        let pending: Vec<DatabaseDpo> = self.meta().read(|tx| {
            let mut out = Vec::new();
            for a in tx.list_accounts()? {
                for d in tx.list_databases(&a.name)? {
                    if d.replication_group.is_some() && group_of(tx, &d, &me)?.rewind.is_some() {
                        out.push(d);
                    }
                }
            }
            Ok(out)
        })?;
        for d in &pending {
            tracing::warn!(database = %d.id, "resuming a rewind to the fork of a newer epoch");
            // One database's failure stalls no other, nor the rest of the control worker.
            if let Err(e) = self.finish_rewind(d).await {
                tracing::warn!(database = %d.id, error = %e, "rewind not finished; will try again");
            }
        }
        Ok(pending.len())
    }

    /// Rolls every table of `db` that is past `claim`'s fork back to it. With `keep`
    /// (this deployment committed those versions as the old primary), each rolled-back
    /// transaction becomes a conflict record and its files stay; otherwise they go.
    async fn rewind_to_fork(&self, db: &DatabaseDpo, claim: &Claim, mark: Rewind) -> Result<()> {
        let keep = mark.keep;
        let p = &self.inner.p;
        let me = self.me().clone();
        let tables = self.meta().read(|tx| tx.list_tables(&db.id))?;
        let mut kept = 0;
        for t in tables.into_iter().filter(|t| !t.dropped) {
            let wire = wire_table_id(&me, &t.id);
            let fork = claim.fork.get(&wire).copied().unwrap_or(0);
            if t.current_version <= fork {
                continue;
            }
            let mut txn = p.tables.committer().begin(&db.account).await?;
            txn.lock(&[table_lock(&t.id)]).await?;
            // The rollback and the conflict records of what it undid: one transaction.
            let found_at = self.now();
            let undone = self.meta().write(|tx| {
                let undone = tx.rollback_table_to(&t.id, fork)?;
                if keep {
                    for c in conflict_parts(db, &me, mark.epoch, &t.id, &undone, found_at) {
                        let merged = match tx.get::<ConflictDpo>(&fkeys::conflict(&c.id))? {
                            Some(mut old) => {
                                old.versions.retain(|v| v.table != t.id);
                                old.versions.extend(c.versions);
                                old
                            }
                            None => c,
                        };
                        tx.put(&fkeys::conflict(&merged.id), &merged)?;
                    }
                }
                Ok(undone)
            });
            let undone = match undone {
                Ok(u) => u,
                Err(e) => {
                    txn.abort().await;
                    let msg = format!(
                        "cannot rewind table {} to version {fork} of epoch {}: {e}",
                        t.id, claim.epoch
                    );
                    let group = claim_group(db);
                    self.with_replica(&group, |r| r.last_error = Some(msg.clone()))?;
                    return Err(Error::invalid(format!("table {}", t.id), msg));
                }
            };
            txn.abort().await;
            tracing::warn!(table = %t.id, from = t.current_version, to = fork, keep, "rewound to the fork of a newer epoch");
            if keep {
                let n = undone
                    .versions
                    .iter()
                    .map(|v| (v.txn_id, v.committed_at_ms))
                    .collect::<BTreeSet<_>>()
                    .len();
                kept += n;
            } else {
                let files: Vec<Path> = undone
                    .unreferenced_paths()
                    .iter()
                    .map(|p| Path::from(p.as_str()))
                    .collect();
                tern_table::commit::remove_files(p.volume.as_ref(), &files).await;
            }
            self.crash_point(crate::crash::REWIND_TABLE)?;
        }
        if kept > 0 {
            Counters::add(&self.inner.counters.conflicts_kept, kept as u64);
            tracing::warn!(database = %db.id, versions = kept, "transactions committed past the fork kept as conflict records");
        }
        self.inner.applied.notify_waiters();
        Ok(())
    }

    /// `alter database X primary`: promotes the local secondary `database` of `account`
    /// (see the [module docs](self)).
    pub async fn failover(
        &self,
        account: &AccountId,
        database: &str,
        options: FailoverOptions,
    ) -> Result<FailoverReport> {
        let started = Instant::now();
        let db = self.local_db(account, database)?;
        let group = db.replication_group.clone().unwrap_or_default();
        if db.role != DatabaseRole::Secondary {
            return Err(Error::invalid(
                format!("database {database}"),
                match db.role {
                    DatabaseRole::Primary => "is the group's primary already",
                    _ => "is not a secondary replica",
                },
            ));
        }
        let g = self.group_state(&db)?;
        let previous = g.primary.clone();
        let prev_state = match &previous {
            Some(p) => self
                .meta()
                .read(|tx| tx.get::<PeerDpo>(&fkeys::peer(p)))?
                .map(|p| p.state),
            None => None,
        };
        let mut forced = false;
        if !prev_state.is_some_and(Availability::is_down) {
            if !options.allow_data_loss {
                return Err(Error::invalid(
                    format!("failover of {database}"),
                    format!(
                        "the primary {} is {} here: a failover would leave two writable primaries until it learns of the new epoch; wait until it is unavailable (unavailable_after), put it into maintenance, or pass --allow-data-loss",
                        previous.as_ref().map_or("(unknown)", |p| p.as_str()),
                        prev_state.map_or("not judged yet", Availability::name)
                    ),
                ));
            }
            forced = true;
        }
        // Stop intake, then let an import already running finish (never half-imported).
        self.meta().write(|tx| {
            if let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(&db.id))? {
                r.promoting = true;
                r.refresh = None;
                tx.put(&keys::replica(&db.id), &r)?;
            }
            Ok(())
        })?;
        // The importer's gate is held from here until the claim (or the refusal): no
        // import commits between what is judged below and the claim.
        let (drained, timed_out) = self.drain(&db, &group).await;
        let (drained, importer) = match drained {
            Ok(d) => d,
            Err(e) => {
                self.stop_promoting(&db)?;
                return Err(e);
            }
        };
        // An import the drain could not wait out, with some of its tables committed: the
        // database holds tables from different points in time until it finishes.
        let half_imported = self.meta().read(|tx| {
            Ok(tx
                .scan_prefix::<crate::state::ImportJobDpo>(&keys::import_jobs())?
                .into_iter()
                .map(|(_, j)| j)
                .find(|j| {
                    j.response.group == group
                        && j.tables_done > 0
                        && j.tables_done < j.response.tables.len() as u64
                })
                .map(|j| (j.tables_done, j.response.tables.len())))
        })?;
        if let Some((done, of)) = half_imported {
            if !options.allow_data_loss {
                self.stop_promoting(&db)?;
                return Err(Error::invalid(
                    format!("failover of {database}"),
                    format!(
                        "a refresh's import is half committed here ({done} of {of} tables at the new snapshot, the others older): promoted now, the database would hold tables from different points in time; let the import finish (it is retried; see show replication-status) or pass --allow-data-loss to promote it as it is"
                    ),
                ));
            }
            tracing::warn!(%group, done, of, "promoting a half-imported replica (--allow-data-loss)");
            forced = true;
        }
        let now = self.now();
        let g = self.group_state(&db)?;
        let r = self
            .meta()
            .read(|tx| tx.get::<ReplicaDpo>(&keys::replica(&db.id)))?
            .ok_or_else(|| Error::invalid(format!("database {database}"), "is not a replica"))?;
        let (loss_txns, loss_ms, silent) = match &g.primary_beat {
            Some(b) => (
                b.seq.saturating_sub(r.applied_seq),
                if b.seq > r.applied_seq {
                    match (b.commit_at_ms, r.applied_commit_at_ms) {
                        (Some(p), Some(a)) => (p - a).max(0),
                        (Some(p), None) => (now - p).max(0),
                        _ => 0,
                    }
                } else {
                    0
                },
                Some(now - b.heard_at_ms),
            ),
            None => (0, 0, None),
        };
        let policy = &g.policy;
        let mut over = Vec::new();
        if let Some(max) = policy.max_data_loss_txns
            && loss_txns > max
        {
            over.push(format!(
                "{loss_txns} transactions > max_data_loss_txns {max}"
            ));
        }
        if let Some(max) = policy.max_data_loss
            && loss_ms > i64::try_from(max.as_millis()).unwrap_or(i64::MAX)
        {
            over.push(format!(
                "{loss_ms} ms > max_data_loss {}",
                humantime_serde::re::humantime::format_duration(max)
            ));
        }
        if g.primary_beat.is_none()
            && (policy.max_data_loss.is_some() || policy.max_data_loss_txns.is_some())
        {
            over.push("the primary's state was never heard here, so the loss is unknown".into());
        }
        if !over.is_empty() {
            if !options.allow_data_loss {
                self.stop_promoting(&db)?;
                return Err(Error::invalid(
                    format!("failover of {database}"),
                    format!(
                        "known loss exceeds the group's RPO: {} (the replica applied up to transaction {} of the primary's {}); pass --allow-data-loss to promote anyway",
                        over.join(", "),
                        r.applied_seq,
                        g.primary_beat.as_ref().map_or(0, |b| b.seq)
                    ),
                ));
            }
            forced = true;
        }
        let members = self.members_of(&group)?;
        let _standing = self.standing(&group);
        let mut voted = None;
        if members.len() >= 3 {
            match self.stand(&db, &members, r.applied_seq, false).await? {
                Ok(epoch) => voted = Some(epoch),
                Err(why) if options.allow_data_loss => {
                    tracing::warn!(%group, %why, "no majority; promoting anyway (--allow-data-loss)");
                    forced = true;
                }
                Err(why) => {
                    self.withdraw_candidacy(&db)?;
                    self.stop_promoting(&db)?;
                    return Err(Error::invalid(
                        format!("failover of {database}"),
                        format!(
                            "no majority of the group accepted the new epoch: {why}; pass --allow-data-loss to promote anyway (the old primary's writes meanwhile are kept as conflict records when it returns)"
                        ),
                    ));
                }
            }
        } else if members.len() == 2 {
            if !options.allow_data_loss {
                self.stop_promoting(&db)?;
                return Err(Error::invalid(
                    format!("failover of {database}"),
                    "a group of two has no majority to prove the old primary stopped: it may take writes until it learns of the new epoch; pass --allow-data-loss (its writes meanwhile are kept as conflict records when it returns)",
                ));
            }
            forced = true;
        }
        // A forced promotion counts only the members it can hear: the operator accepted
        // that the others are gone, and a primary that needed their confirmations would
        // pause at once. They count again once they are heard from.
        let excluded: Vec<DeploymentId> = if forced {
            let down = self.down_peers()?;
            members
                .iter()
                .filter(|m| down.contains(m))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let members: Vec<DeploymentId> = members
            .into_iter()
            .filter(|m| !excluded.contains(m))
            .collect();
        let claimed = self.claim_primary(
            &db,
            voted,
            &members,
            &excluded,
            &format!(
                "failover; {database} is the primary (was {}); known loss {loss_txns} transactions, {loss_ms} ms",
                previous.as_ref().map_or("unknown", |p| p.as_str())
            ),
        )?;
        // Claimed: the replica row is gone, an import waiting for the gate finds none.
        // (The gate is the deployment's, not the group's: other replicas' imports go on.)
        drop(importer);
        self.beat_soon();
        self.notified();
        Counters::add(&self.inner.counters.failovers, 1);
        // In a group of three or more the first commit needs the lease: a majority's echo
        // of the new primary's heartbeat. The RTO reported is to that point.
        let lease_held = self.wait_for_lease(&db).await?;
        let rto_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let report = FailoverReport {
            group,
            database: database.to_string(),
            epoch: claimed,
            previous_primary: previous,
            previous_primary_state: prev_state,
            known_loss_txns: loss_txns,
            known_loss_ms: loss_ms,
            primary_silent_ms: silent,
            drained,
            drain_timed_out: timed_out,
            rto_ms,
            lease_held,
            max_unavailable_ms: policy
                .max_unavailable
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            forced,
        };
        tracing::warn!(?report, "failover: this deployment holds the primary");
        Ok(report)
    }

    /// Planned switchover (`tern database switchover`): the local secondary `database` of
    /// `account` becomes the group's primary with nothing lost. It asks the primary to hand
    /// the group over: the primary stops taking commits (503 while it lasts) and grants
    /// once this replica applied its last transaction; in a group of three or more a
    /// majority accepts the new epoch while the primary announces the handoff. Then the
    /// claim (epoch N+1, fork = the primary's last state); the old primary learns it and
    /// follows. Run on the primary already: nothing to do (repeatable). After
    /// `switchover_timeout` it is cancelled and the primary takes commits again.
    pub async fn switchover(
        &self,
        account: &AccountId,
        database: &str,
    ) -> Result<SwitchoverReport> {
        let started = Instant::now();
        let db = self.local_db(account, database)?;
        let group = db.replication_group.clone().unwrap_or_default();
        let g = self.group_state(&db)?;
        match db.role {
            DatabaseRole::Primary if g.primary.as_ref() == Some(self.me()) => {
                return Ok(SwitchoverReport {
                    group,
                    database: database.to_string(),
                    epoch: db.epoch,
                    previous_primary: None,
                    applied_seq: self.meta().read(|tx| tern_txn::database_seq(tx, &db.id))?,
                    pause_ms: 0,
                    lease_held: true,
                });
            }
            DatabaseRole::Secondary => {}
            _ => {
                return Err(Error::invalid(
                    format!("database {database}"),
                    "is not a secondary replica",
                ));
            }
        }
        let previous = g.primary.clone().ok_or_else(|| {
            Error::invalid(
                format!("database {database}"),
                "its group's primary is not known here",
            )
        })?;
        let state = self
            .meta()
            .read(|tx| tx.get::<PeerDpo>(&fkeys::peer(&previous)))?
            .map(|p| p.state);
        if state.is_none_or(Availability::is_down) {
            return Err(Error::invalid(
                format!("switchover of {database}"),
                format!(
                    "the primary {previous} is {} here: a switchover needs it; use failover",
                    state.map_or("not judged yet", Availability::name)
                ),
            ));
        }
        // No refresh asked for or imported from now on: this replica follows the log.
        self.meta().write(|tx| {
            if let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(&db.id))? {
                r.promoting = true;
                r.refresh = None;
                tx.put(&keys::replica(&db.id), &r)?;
            }
            Ok(())
        })?;
        let members = self.members_of(&group)?;
        let _standing = self.standing(&group);
        let deadline = Instant::now() + self.config().switchover_timeout;
        let epoch = loop {
            let applied = self
                .meta()
                .read(|tx| tx.get::<ReplicaDpo>(&keys::replica(&db.id)))?
                .map_or(0, |r| r.applied_seq);
            match self.stand(&db, &members, applied, true).await? {
                Ok(epoch) => break epoch,
                Err(why) if Instant::now() >= deadline => {
                    self.withdraw_candidacy(&db)?;
                    self.stop_promoting(&db)?;
                    return Err(Error::invalid(
                        format!("switchover of {database}"),
                        format!(
                            "not done within {} ({why}); cancelled: {previous} takes commits again",
                            humantime_serde::re::humantime::format_duration(
                                self.config().switchover_timeout
                            )
                        ),
                    ));
                }
                Err(why) => {
                    // Each attempt stands for the next epoch (its replies are its own).
                    tracing::debug!(%group, %why, "switchover: not yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.crash_point(crate::crash::SWITCHOVER_WON)?;
        let claimed = self.claim_primary(
            &db,
            Some(epoch),
            &members,
            &[],
            &format!(
                "planned switchover; {database} is the primary (was {previous}); nothing lost"
            ),
        )?;
        self.beat_soon();
        self.notified();
        Counters::add(&self.inner.counters.failovers, 1);
        let lease_held = self.wait_for_lease(&db).await?;
        let report = SwitchoverReport {
            group,
            database: database.to_string(),
            epoch: claimed,
            previous_primary: Some(previous),
            applied_seq: self.meta().read(|tx| tern_txn::database_seq(tx, &db.id))?,
            pause_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            lease_held,
        };
        tracing::warn!(?report, "switchover: this deployment holds the primary");
        Ok(report)
    }

    /// Withdraws this deployment's candidacy for `db`'s group (a failover or switchover
    /// that will not claim: refused, timed out, or cut short by a crash): its own promise
    /// goes, and every other member is told, so that members that granted it may echo the
    /// primary and grant others again, and a primary handing the group over takes commits
    /// again. Safe because the candidate never claims an epoch it withdrew.
    fn withdraw_candidacy(&self, db: &DatabaseDpo) -> Result<()> {
        let me = self.me().clone();
        let group = claim_group(db);
        let members = self.members_of(&group)?;
        let withdrawn = self.meta().write(|tx| {
            let d = tx.get_database(&db.id)?.unwrap_or_else(|| db.clone());
            let mut g = group_of(tx, &d, &me)?;
            if g.promised_to.as_ref() != Some(&me) || g.promised <= g.epoch {
                return Ok(None);
            }
            let epoch = g.promised;
            g.promised = g.epoch;
            g.promised_to = None;
            tx.put(&fkeys::group(&group), &g)?;
            let req = model::VoteRequest {
                v: PAYLOAD_VERSION,
                group: group.clone(),
                epoch,
                seq: 0,
                handoff: false,
                cancel: true,
            };
            for m in members.iter().filter(|m| **m != me) {
                let id = format!("vote-cancel-{group}-{epoch}-{me}");
                crate::state::put_outbox(tx, m, id, model::VOTE_TYPE, &req)?;
            }
            Ok(Some(epoch))
        })?;
        if let Some(epoch) = withdrawn {
            tracing::warn!(%group, epoch, "candidacy withdrawn");
            self.inner.control_wake.notify_one();
        }
        Ok(())
    }

    /// Control worker: withdraws candidacies this deployment promised itself and no
    /// failover or switchover of this process stands for (the one that stood was cut short
    /// by a crash). How many.
    pub(crate) fn withdraw_stale_candidacies(&self) -> Result<usize> {
        let me = self.me().clone();
        let stale: Vec<DatabaseDpo> = self.meta().read(|tx| {
            let mut out = Vec::new();
            for a in tx.list_accounts()? {
                for d in tx.list_databases(&a.name)? {
                    if d.replication_group.is_none() || d.role != DatabaseRole::Secondary {
                        continue;
                    }
                    let g = group_of(tx, &d, &me)?;
                    if g.promised_to.as_ref() == Some(&me) && g.promised > g.epoch {
                        out.push(d);
                    }
                }
            }
            Ok(out)
        })?;
        let mut n = 0;
        for d in stale {
            let standing = self
                .inner
                .standing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&claim_group(&d));
            if !standing {
                self.withdraw_candidacy(&d)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Control worker: ends switchovers whose candidate went silent. A candidate gives up
    /// after `switchover_timeout` (each attempt waiting at most `vote_timeout` for its
    /// votes) and says so; one that died cannot, and the primary would stay paused for
    /// ever. Past both, the handoff ends here and commits resume. (Should a candidate
    /// stopped after winning its votes claim later still, this primary learns the newer
    /// epoch and keeps what it committed meanwhile as conflict records: nothing is lost.)
    /// How many ended.
    pub(crate) fn expire_handoffs(&self) -> Result<usize> {
        let me = self.me().clone();
        let now = self.now();
        let limit = self.config().switchover_timeout + self.config().vote_timeout;
        let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
        let expired = |tx: &mut MetaTxn<'_>| -> tern_meta::Result<Vec<(DatabaseDpo, GroupDpo)>> {
            let mut out = Vec::new();
            for a in tx.list_accounts()? {
                for d in tx.list_databases(&a.name)? {
                    if d.replication_group.is_none() || d.role != DatabaseRole::Primary {
                        continue;
                    }
                    let g = group_of(tx, &d, &me)?;
                    if g.handoff
                        .as_ref()
                        .is_some_and(|h| now - h.since_ms >= limit_ms)
                    {
                        out.push((d, g));
                    }
                }
            }
            Ok(out)
        };
        // Every control unit looks; only a handoff past its time takes a write.
        if self.meta().read(|tx| expired(tx))?.is_empty() {
            return Ok(0);
        }
        let ended = self.meta().write(|tx| {
            let mut ended = Vec::new();
            for (d, mut g) in expired(tx)? {
                let Some(h) = g.handoff.clone() else { continue };
                g.handoff = None;
                tx.put(&fkeys::group(&g.group), &g)?;
                let seq = tx.next_sequence("repl-availlog")?;
                record_event(
                    tx,
                    &AvailabilityEvent {
                        seq,
                        peer: h.to.clone(),
                        from: "switchover".into(),
                        to: "cancelled".into(),
                        at_ms: now,
                        reason: format!(
                            "group {}: the switchover of {} to {} did not complete within {}: commits resume here",
                            g.group,
                            d.name,
                            h.to,
                            humantime_serde::re::humantime::format_duration(limit)
                        ),
                    },
                )?;
                ended.push(d.name.clone());
            }
            Ok(ended)
        })?;
        if !ended.is_empty() {
            self.notified();
        }
        Ok(ended.len())
    }

    /// Marks `group` as stood for by this process until the guard drops.
    fn standing(&self, group: &str) -> Standing {
        self.inner
            .standing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(group.to_string());
        Standing {
            repl: self.clone(),
            group: group.to_string(),
        }
    }

    /// The claim of a promotion (failover or switchover) of local secondary `db`: one
    /// metadata transaction, so the deployment is writable exactly when the claim exists.
    /// `voted`: the epoch a majority accepted (none: the next one, forced). `why` goes into
    /// the availability history. The epoch claimed.
    fn claim_primary(
        &self,
        db: &DatabaseDpo,
        voted: Option<u64>,
        members: &[DeploymentId],
        excluded: &[DeploymentId],
        why: &str,
    ) -> Result<u64> {
        let me = self.me().clone();
        let now = self.now();
        let database = db.name.as_str();
        let group = claim_group(db);
        self.meta().write(|tx| {
            let Some(mut d) = tx.get_database(&db.id)? else {
                return Ok(Err(Error::NotFound {
                    what: "database",
                    name: db.id.to_string(),
                }));
            };
            let mut g = group_of(tx, &d, &me)?;
            if d.role != DatabaseRole::Secondary {
                return Ok(Err(Error::invalid(
                    format!("database {database}"),
                    "changed role during the failover",
                )));
            }
            let epoch = match voted {
                Some(e) if e > g.epoch => e,
                Some(e) => {
                    return Ok(Err(Error::invalid(
                        format!("failover of {database}"),
                        format!(
                            "epoch {} was claimed meanwhile (this candidacy stood for {e})",
                            g.epoch
                        ),
                    )));
                }
                None => g.epoch.max(g.promised).max(d.epoch) + 1,
            };
            let mut fork = BTreeMap::new();
            for t in tx.list_tables(&d.id)? {
                if !t.dropped {
                    fork.insert(wire_table_id(&me, &t.id), t.current_version);
                }
            }
            let fork_seq = tern_txn::database_seq(tx, &d.id)?;
            let claim = Claim {
                epoch,
                primary: me.clone(),
                fork,
                fork_seq,
                claimed_at_ms: now,
            };
            d.role = DatabaseRole::Primary;
            d.epoch = epoch;
            tx.update_database(&d)?;
            tx.delete(&keys::replica(&d.id))?;
            g.epoch = epoch;
            g.primary = Some(me.clone());
            g.claim = Some(claim);
            g.primary_beat = None;
            g.acks.clear();
            g.promised = epoch;
            g.promised_to = Some(me.clone());
            g.members = members.to_vec();
            g.excluded = excluded.to_vec();
            g.handoff = None;
            tx.put(&fkeys::group(&group), &g)?;
            mark_dirty(tx)?;
            let seq = tx.next_sequence("repl-availlog")?;
            record_event(
                tx,
                &AvailabilityEvent {
                    seq,
                    peer: me.clone(),
                    from: format!("epoch {}", epoch - 1),
                    to: format!("epoch {epoch}"),
                    at_ms: now,
                    reason: format!("group {group}: {why}"),
                },
            )?;
            Ok(Ok(epoch))
        })?
    }

    /// Waits (up to `vote_timeout`) until the primary `db` may take commits by its lease;
    /// whether it may.
    async fn wait_for_lease(&self, db: &DatabaseDpo) -> Result<bool> {
        let me = self.me().clone();
        let lease = self.lease();
        let deadline = Instant::now() + self.config().vote_timeout;
        loop {
            let now = self.now();
            let g = self.group_state(db)?;
            if g.lease_until(&me, lease).is_none_or(|u| now < u) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stop_promoting(&self, db: &DatabaseDpo) -> Result<()> {
        self.meta().write(|tx| {
            if let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(&db.id))? {
                r.promoting = false;
                tx.put(&keys::replica(&db.id), &r)?;
            }
            Ok(())
        })?;
        self.inner.control_wake.notify_one();
        Ok(())
    }

    /// Waits until what already arrived for `db` is applied: import jobs of the group
    /// and received messages from its upstream are handled — up to `drain_timeout`. Then
    /// takes the importer's gate, which the caller holds until the promotion is decided:
    /// an import under way steps aside at its next batch (never in the middle of one) and
    /// none starts, so that no import commits between what the failover judges and its
    /// claim (an import copying its batch's files drops them uncommitted and takes them
    /// up again afterwards). How many items were waited for and the gate, and whether
    /// time ran out; an error when the gate is not free within another `drain_timeout` (a
    /// batch still committing), never a wait without end.
    async fn drain(
        &self,
        db: &DatabaseDpo,
        group: &str,
    ) -> (Result<(u64, tokio::sync::MutexGuard<'_, ()>)>, bool) {
        let timeout = self.config().drain_timeout;
        let deadline = Instant::now() + timeout;
        let upstream = match self
            .meta()
            .read(|tx| tx.get::<ReplicaDpo>(&keys::replica(&db.id)))
        {
            Ok(Some(r)) => r.upstream,
            Ok(None) => {
                return (
                    Err(Error::invalid(
                        format!("database {}", db.name),
                        "is not a replica",
                    )),
                    false,
                );
            }
            Err(e) => return (Err(e.into()), false),
        };
        let mut most = 0;
        let timed_out = loop {
            let jobs = match self.meta().read(|tx| {
                Ok(tx
                    .scan_prefix::<crate::state::ImportJobDpo>(&keys::import_jobs())?
                    .into_iter()
                    .filter(|(_, j)| j.response.group == group)
                    .count() as u64)
            }) {
                Ok(n) => n,
                Err(e) => return (Err(e.into()), false),
            };
            // Messages received and not yet handled, and one more while the next message
            // file from the upstream lies in the bucket unread (sent before it was lost).
            let messages = match self.inner.messages.get() {
                Some(ctx) => {
                    ctx.pending_from(&upstream).await.unwrap_or(0)
                        + u64::from(
                            ctx.unreceived_from(&upstream, self.inner.p.bucket.as_ref())
                                .await
                                .unwrap_or(false),
                        )
                }
                None => 0,
            };
            let left = jobs + messages;
            most = most.max(left);
            if left == 0 {
                break false;
            }
            if Instant::now() >= deadline {
                tracing::warn!(%group, left, "failover drain timed out; what is left counts as loss");
                break true;
            }
            self.inner.job_wake.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.inner
            .draining
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.drain_wake.notify_waiters();
        let gate = tokio::time::timeout(timeout, self.inner.import_gate.lock()).await;
        self.inner
            .draining
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        match gate {
            Ok(gate) => (Ok((most, gate)), timed_out),
            Err(_) => (
                Err(Error::invalid(
                    format!("failover of {}", db.name),
                    format!(
                        "an import batch of the replica was still being committed {} after the drain (drain_timeout); try again once it has committed (show replication-status)",
                        humantime_serde::re::humantime::format_duration(timeout)
                    ),
                )),
                timed_out,
            ),
        }
    }

    /// `show replication status`: the groups held here.
    pub(crate) fn group_statuses(&self) -> Result<Vec<GroupStatus>> {
        let now = self.now();
        let me = self.me().clone();
        let conflicts = self.conflicts()?;
        Ok(self.meta().read(|tx| {
            let mut out = Vec::new();
            for a in tx.list_accounts()? {
                for d in tx.list_databases(&a.name)? {
                    if d.replication_group.is_none() {
                        continue;
                    }
                    let g = group_of(tx, &d, &me)?;
                    let primary_state = match (&g.primary, d.role) {
                        (Some(p), DatabaseRole::Secondary) => {
                            tx.get::<PeerDpo>(&fkeys::peer(p))?.map(|p| p.state)
                        }
                        _ => None,
                    };
                    let (txns, exposure, heard) = match d.role {
                        DatabaseRole::Primary => {
                            let seq = tern_txn::database_seq(tx, &d.id)?;
                            let (t, ms) = g.exposure(seq, now);
                            (t, ms, None)
                        }
                        _ => {
                            let r = tx.get::<ReplicaDpo>(&keys::replica(&d.id))?;
                            let applied = r.as_ref().map_or(0, |r| r.applied_seq);
                            let applied_at = r.as_ref().and_then(|r| r.applied_commit_at_ms);
                            match &g.primary_beat {
                                Some(b) => {
                                    let behind = b.seq.saturating_sub(applied);
                                    // Never 0 for a silent primary: what it may have
                                    // committed since it was last heard is exposed too.
                                    let silent = now - b.heard_at_ms;
                                    let exposure = if behind > 0 {
                                        applied_at.map_or(silent, |a| (now - a).max(0))
                                    } else {
                                        silent
                                    };
                                    (behind, exposure, Some(silent))
                                }
                                None => (0, applied_at.map_or(0, |a| (now - a).max(0)), None),
                            }
                        }
                    };
                    out.push(GroupStatus {
                        group: g.group.clone(),
                        database: d.name.clone(),
                        role: d.role,
                        epoch: d.epoch,
                        group_epoch: g.epoch,
                        primary: g.primary.clone(),
                        primary_state,
                        txns_behind: txns,
                        rpo_exposure_ms: exposure,
                        primary_heard_ago_ms: heard,
                        policy: g.policy.clone(),
                        conflicts: conflicts
                            .iter()
                            .filter(|c| c.database == d.id && c.state == ConflictState::Open)
                            .count() as u64,
                    });
                }
            }
            Ok(out)
        })?)
    }

    /// The epoch check of a shipment or snapshot of `group` made under `epoch` (`None`:
    /// unstamped, from before epochs): `Ok(true)` applies, `Ok(false)` is stale (refuse),
    /// `Err` waits (a newer epoch whose claim has not arrived yet).
    pub(crate) fn epoch_fits(&self, group: &str, epoch: Option<u64>) -> Result<bool> {
        let Some(db) = self.local_database(group)? else {
            return Ok(true);
        };
        let known = self.group_state(&db)?.epoch;
        match epoch {
            None | Some(0) => Ok(known <= 1),
            Some(e) if e < known => Ok(false),
            Some(e) if e > known => Err(Error::invalid(
                format!("group {group}"),
                format!(
                    "a change of epoch {e} arrived before the claim of it (epoch {known} known here); waiting for the claim"
                ),
            )),
            Some(_) => Ok(true),
        }
    }

    /// The stamp replicated commits of `group` carry when the upstream's is unknown.
    pub(crate) fn known_stamp(&self, group: &str) -> Result<Stamp> {
        let epoch = match self.local_database(group)? {
            Some(db) => self.group_state(&db)?.epoch,
            None => 0,
        };
        Ok(Stamp { epoch, seq: 0 })
    }

    /// Control worker: posts waiting notifications to the webhook (retrying with backoff;
    /// given up after 10 attempts, which is logged). How many were delivered.
    pub(crate) async fn deliver_notifications(&self) -> Result<usize> {
        let now = self.now();
        let hooks = self
            .meta()
            .read(|tx| tx.scan_prefix::<HookDpo>(&fkeys::hooks()))?;
        let Some(url) = self.config().webhook.clone() else {
            if !hooks.is_empty() {
                self.meta().write(|tx| {
                    for (k, _) in &hooks {
                        tx.delete(k)?;
                    }
                    Ok(())
                })?;
            }
            return Ok(0);
        };
        let mut delivered = 0;
        for (k, mut h) in hooks.into_iter().filter(|(_, h)| h.next_at_ms <= now) {
            let body = serde_json::to_vec(&h.event).unwrap_or_default();
            let ok = post_json(&url, &body).await;
            match ok {
                Ok(()) => {
                    self.meta().write(|tx| tx.delete(&k))?;
                    delivered += 1;
                }
                Err(e) => {
                    h.attempts += 1;
                    if h.attempts >= 10 {
                        tracing::error!(%url, event = h.event.seq, error = %e, "availability webhook given up after 10 attempts");
                        self.meta().write(|tx| tx.delete(&k))?;
                    } else {
                        h.next_at_ms = now + 500 * (1 << h.attempts.min(8));
                        tracing::warn!(%url, event = h.event.seq, attempt = h.attempts, error = %e, "availability webhook failed; will retry");
                        self.meta().write(|tx| tx.put(&k, &h))?;
                    }
                }
            }
        }
        Ok(delivered)
    }
}

impl Replication {
    /// Control worker: automatic failover. A secondary of a group whose policy asks for it,
    /// of three or more members, whose primary is unavailable (not in planned
    /// maintenance), stands after `rank × 2 × heartbeat_interval` of the primary's
    /// unavailability (rank: its place among the group's members by id), on its own task
    /// (its votes travel through this worker's outbox). A refused attempt (no majority, loss
    /// beyond the RPO) is logged, its candidacy withdrawn, and tried again after
    /// `(1 + rank) × vote_timeout`. How many started.
    pub(crate) fn auto_failover(&self) -> Result<usize> {
        let now = self.now();
        let me = self.me().clone();
        let replicas = self
            .meta()
            .read(|tx| tx.scan_prefix::<ReplicaDpo>(&keys::replicas()))?;
        let mut started = 0;
        for (_, r) in replicas.into_iter().filter(|(_, r)| !r.promoting) {
            let Some(db) = self.meta().read(|tx| tx.get_database(&r.database))? else {
                continue;
            };
            let g = self.group_state(&db)?;
            let Some(primary) = g.primary.clone().filter(|p| *p != me) else {
                continue;
            };
            if !g.policy.auto_failover {
                continue;
            }
            let members = self.members_of(&r.group)?;
            if members.len() < 3 {
                continue;
            }
            let Some(p) = self
                .meta()
                .read(|tx| tx.get::<PeerDpo>(&fkeys::peer(&primary)))?
            else {
                continue;
            };
            if p.state != Availability::Unavailable {
                continue;
            }
            let rank = members
                .iter()
                .filter(|m| **m != primary)
                .position(|m| *m == me)
                .unwrap_or(0) as i64;
            let every = i64::try_from(self.config().heartbeat_interval.as_millis()).unwrap_or(0);
            if now - p.since_ms < rank * 2 * every {
                continue;
            }
            {
                let mut attempts = self
                    .inner
                    .auto_attempts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Retries spaced by rank: two candidates whose attempts collided (each
                // promised itself the epoch) do not collide again and again.
                let spacing = self.config().vote_timeout * (1 + rank as u32);
                if attempts
                    .get(&r.group)
                    .is_some_and(|at| at.elapsed() < spacing)
                {
                    continue;
                }
                attempts.insert(r.group.clone(), Instant::now());
            }
            let repl = self.clone();
            let (account, name, group) = (db.account.clone(), db.name.clone(), r.group.clone());
            tracing::warn!(%group, %primary, "primary unavailable: automatic failover");
            tokio::spawn(async move {
                match repl
                    .failover(&account, &name, FailoverOptions::default())
                    .await
                {
                    Ok(report) => {
                        tracing::warn!(?report, "automatic failover done");
                    }
                    Err(e) => {
                        tracing::warn!(%group, error = %e, "automatic failover refused; will try again");
                    }
                }
            });
            started += 1;
        }
        Ok(started)
    }

    /// The deployments holding a replica of `group` (this one included), from the entities
    /// they announce.
    fn members_of(&self, group: &str) -> Result<Vec<DeploymentId>> {
        let me = self.me().clone();
        let members: BTreeSet<DeploymentId> = self
            .known_entities()?
            .into_iter()
            .filter(|e| {
                e.kind == crate::model::EntityKind::Database && e.group.as_deref() == Some(group)
            })
            .map(|e| e.deployment)
            .chain(std::iter::once(me))
            .collect();
        Ok(members.into_iter().collect())
    }

    /// Peers judged down (unavailable or in maintenance).
    fn down_peers(&self) -> Result<BTreeSet<DeploymentId>> {
        Ok(self
            .availability()?
            .into_iter()
            .filter(|p| p.state.is_down())
            .map(|p| p.peer)
            .collect())
    }

    /// The primary of each group held here re-counts its members; members that joined
    /// give it one lease of grace to collect their confirmations.
    pub(crate) fn count_members(&self) -> Result<()> {
        let me = self.me().clone();
        let primaries: Vec<DatabaseDpo> =
            self.meta().read(|tx| {
                let mut out = Vec::new();
                for a in tx.list_accounts()? {
                    out.extend(tx.list_databases(&a.name)?.into_iter().filter(|d| {
                        d.role == DatabaseRole::Primary && d.replication_group.is_some()
                    }));
                }
                Ok(out)
            })?;
        let down = self.down_peers()?;
        let mut grew = false;
        for d in primaries {
            let group = claim_group(&d);
            let all = self.members_of(&group)?;
            self.meta().write(|tx| {
                let mut g = group_of(tx, &d, &me)?;
                let before = g.excluded.len();
                g.excluded.retain(|m| down.contains(m));
                let members: Vec<DeploymentId> = all
                    .iter()
                    .filter(|m| !g.excluded.contains(m))
                    .cloned()
                    .collect();
                if g.members == members && g.excluded.len() == before {
                    return Ok(());
                }
                g.members = members.clone();
                tx.put(&fkeys::group(&group), &g)?;
                grew = true;
                Ok(())
            })?;
        }
        if grew {
            // New members echo as soon as they hear us: no waiting for the interval.
            self.beat_soon();
        }
        Ok(())
    }

    /// A member's answer to `from`'s vote request; a grant is a promise (stored with the
    /// reply in the outbox, in one transaction): no echo of an older primary and no other
    /// grant at or below the epoch from now on.
    pub(crate) fn vote(&self, from: &DeploymentId, req: &model::VoteRequest) -> Result<()> {
        if req.cancel {
            // A withdrawn candidacy's deferred requests are not decided any more.
            self.inner
                .deferred_votes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|d| d.from != *from || d.req.group != req.group || d.req.epoch > req.epoch);
        }
        self.vote_until(from, req, Instant::now() + self.config().vote_timeout)
    }

    /// Control worker: decides the vote requests deferred until now. How many.
    pub(crate) fn retry_deferred_votes(&self) -> Result<usize> {
        let due: Vec<DeferredVote> = {
            let mut all = self
                .inner
                .deferred_votes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = all.drain(..).partition(|d| d.at <= now);
            *all = later;
            due
        };
        for d in &due {
            self.vote_until(&d.from, &d.req, d.deadline)?;
        }
        Ok(due.len())
    }

    /// [`Self::vote`]: a member that would grant but has heard the primary less than
    /// `unavailable_after` ago defers its answer (to the control worker) until the silence
    /// is long enough, or `deadline` (then it refuses): a candidate that judged the
    /// primary unavailable a moment earlier than this member is not refused for it.
    fn vote_until(
        &self,
        from: &DeploymentId,
        req: &model::VoteRequest,
        deadline: Instant,
    ) -> Result<()> {
        let me = self.me().clone();
        let now = self.now();
        let unavailable_after =
            i64::try_from(self.config().unavailable_after.as_millis()).unwrap_or(i64::MAX);
        let left_ms = i64::try_from(
            deadline
                .saturating_duration_since(Instant::now())
                .as_millis(),
        )
        .unwrap_or(i64::MAX);
        let db = self.local_database(&req.group)?;
        let mut defer_ms = None;
        let reply = self.meta().write(|tx| {
            let refuse = |reason: String| model::VoteReply {
                v: PAYLOAD_VERSION,
                group: req.group.clone(),
                epoch: req.epoch,
                granted: false,
                reason,
            };
            let reply = match &db {
                None => refuse("holds no replica of the group".into()),
                Some(db) => {
                    let db = tx.get_database(&db.id)?.unwrap_or_else(|| db.clone());
                    let mut g = group_of(tx, &db, &me)?;
                    let heard = match &g.primary {
                        Some(p) => tx
                            .get::<PeerDpo>(&fkeys::peer(p))?
                            .and_then(|p| p.last_heard_ms),
                        None => None,
                    };
                    let silence = now - heard.unwrap_or(0).max(g.since_ms);
                    let applied = tx
                        .get::<ReplicaDpo>(&keys::replica(&db.id))?
                        .map_or(0, |r| r.applied_seq);
                    let decision = if req.cancel {
                        // The candidate withdrew: its promise goes, a handoff to it ends.
                        let mut changed = false;
                        if g.promised_to.as_ref() == Some(from)
                            && g.promised > g.epoch
                            && g.promised <= req.epoch
                        {
                            g.promised = g.epoch;
                            g.promised_to = None;
                            changed = true;
                        }
                        if g.handoff.as_ref().is_some_and(|h| h.to == *from) {
                            g.handoff = None;
                            changed = true;
                            tracing::warn!(group = %g.group, to = %from, "switchover cancelled: commits resume");
                        }
                        if changed {
                            tx.put(&fkeys::group(&g.group), &g)?;
                        }
                        Err("withdrawn".into())
                    } else if req.handoff && db.role == DatabaseRole::Primary {
                        handoff_decision(tx, &db, &mut g, from, req, now)?
                    } else {
                        // A member grants a switchover while the primary announces it.
                        let handed = req.handoff
                            && g.primary_beat
                                .as_ref()
                                .is_some_and(|b| b.handoff_to.as_ref() == Some(from));
                        let silence = if handed { i64::MAX } else { silence };
                        let decision = vote_decision(
                            &g,
                            db.role,
                            silence,
                            applied,
                            req,
                            from,
                            unavailable_after,
                        );
                        let only_silence = decision.is_err()
                            && vote_decision(
                                &g,
                                db.role,
                                i64::MAX,
                                applied,
                                req,
                                from,
                                unavailable_after,
                            )
                            .is_ok();
                        // A switchover's request may come before the primary's heartbeat
                        // announcing the handoff: wait for that (up to the deadline) and
                        // look again soon.
                        if only_silence
                            && left_ms > 0
                            && (req.handoff || unavailable_after - silence <= left_ms)
                        {
                            let wait = unavailable_after - silence;
                            defer_ms = Some(if req.handoff { wait.min(50) } else { wait });
                            return Ok(None);
                        }
                        decision
                    };
                    if let Err(reason) = decision {
                        refuse(format!("{me} {reason}"))
                    } else if req.epoch == g.promised {
                        // Granted before (a re-delivered request): the same answer.
                        model::VoteReply {
                            v: PAYLOAD_VERSION,
                            group: req.group.clone(),
                            epoch: req.epoch,
                            granted: true,
                            reason: String::new(),
                        }
                    } else {
                        g.promised = req.epoch;
                        g.promised_to = Some(from.clone());
                        tx.put(&fkeys::group(&g.group), &g)?;
                        model::VoteReply {
                            v: PAYLOAD_VERSION,
                            group: req.group.clone(),
                            epoch: req.epoch,
                            granted: true,
                            reason: String::new(),
                        }
                    }
                }
            };
            let id = format!("vr-{}-{}-{me}", req.group, req.epoch);
            crate::state::put_outbox(tx, from, id, model::VOTE_REPLY_TYPE, &reply)?;
            Ok(Some(reply))
        })?;
        let Some(reply) = reply else {
            let wait = Duration::from_millis(u64::try_from(defer_ms.unwrap_or(0)).unwrap_or(0));
            tracing::info!(candidate = %from, group = %req.group, epoch = req.epoch, ?wait, handoff = req.handoff, "vote deferred: the primary was heard too recently (or has not announced the handoff yet)");
            self.inner
                .deferred_votes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(DeferredVote {
                    from: from.clone(),
                    req: req.clone(),
                    at: Instant::now() + wait,
                    deadline,
                });
            return Ok(());
        };
        tracing::warn!(candidate = %from, group = %req.group, epoch = req.epoch, granted = reply.granted, reason = %reply.reason, handoff = req.handoff, "vote");
        if req.handoff {
            // Members grant a switchover once they hear the primary announce it.
            self.beat_soon();
        }
        self.inner.control_wake.notify_one();
        Ok(())
    }

    /// A vote reply arrived for a candidacy of this deployment.
    pub(crate) fn vote_replied(&self, from: &DeploymentId, reply: model::VoteReply) {
        self.inner
            .votes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((reply.group.clone(), reply.epoch))
            .or_default()
            .insert(from.clone(), reply);
        self.inner.vote_wake.notify_waiters();
    }

    /// Stands for `epoch` of `group`: promises it to itself, asks every other member, and
    /// waits up to `vote_timeout` for a majority. `Err` names who refused and why, and
    /// who did not answer.
    async fn stand(
        &self,
        db: &DatabaseDpo,
        members: &[DeploymentId],
        seq: u64,
        handoff: bool,
    ) -> Result<std::result::Result<u64, String>> {
        let me = self.me().clone();
        let group = claim_group(db);
        let epoch = self.meta().write(|tx| {
            let d = tx.get_database(&db.id)?.unwrap_or_else(|| db.clone());
            let mut g = group_of(tx, &d, &me)?;
            let epoch = g.epoch.max(g.promised).max(d.epoch) + 1;
            g.promised = epoch;
            g.promised_to = Some(me.clone());
            tx.put(&fkeys::group(&group), &g)?;
            let req = model::VoteRequest {
                v: PAYLOAD_VERSION,
                group: group.clone(),
                epoch,
                seq,
                handoff,
                cancel: false,
            };
            for m in members.iter().filter(|m| **m != me) {
                let id = format!("vote-{group}-{epoch}-{me}");
                crate::state::put_outbox(tx, m, id, model::VOTE_TYPE, &req)?;
            }
            Ok(epoch)
        })?;
        self.expect_reply();
        self.inner.control_wake.notify_one();
        let need = members.len() / 2 + 1;
        let deadline = Instant::now() + self.config().vote_timeout;
        loop {
            let woken = self.inner.vote_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let replies = self
                .inner
                .votes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&(group.clone(), epoch))
                .cloned()
                .unwrap_or_default();
            let granted = 1 + replies.values().filter(|r| r.granted).count();
            if granted >= need {
                tracing::warn!(%group, epoch, granted, members = members.len(), "majority won");
                return Ok(Ok(epoch));
            }
            let refused = replies.values().filter(|r| !r.granted).count();
            let out_of_reach = granted + (members.len() - 1 - replies.len()) < need;
            if out_of_reach || Instant::now() >= deadline {
                let mut why: Vec<String> = replies
                    .iter()
                    .filter(|(_, r)| !r.granted)
                    .map(|(m, r)| format!("{m} refused: {}", r.reason))
                    .collect();
                let silent: Vec<&str> = members
                    .iter()
                    .filter(|m| **m != me && !replies.contains_key(*m))
                    .map(DeploymentId::as_str)
                    .collect();
                if !silent.is_empty() {
                    why.push(format!("no answer from {}", silent.join(", ")));
                }
                return Ok(Err(format!(
                    "{granted} of {} members accepted epoch {epoch} (a majority is {need}; {refused} refused): {}",
                    members.len(),
                    why.join("; ")
                )));
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

/// The primary's answer to a switchover request (`req.handoff`) from `from`, in the
/// metadata transaction `tx`: the first request starts the handoff (`g.handoff`: no
/// commit from now on — the write fence reads it); the primary grants once every
/// transaction that could have committed before has settled and the candidate applied the
/// last of them. (A cancel from the candidate, handled by the caller, ends it.)
fn handoff_decision(
    tx: &mut MetaTxn<'_>,
    db: &DatabaseDpo,
    g: &mut GroupDpo,
    from: &DeploymentId,
    req: &model::VoteRequest,
    now: i64,
) -> tern_meta::Result<std::result::Result<(), String>> {
    let repeat = req.epoch == g.promised && g.promised_to.as_ref() == Some(from);
    if !repeat && req.epoch <= g.epoch.max(g.promised) {
        return Ok(Err(format!(
            "knows or promised epoch {}, not older than the {} asked for",
            g.epoch.max(g.promised),
            req.epoch
        )));
    }
    let h = match &g.handoff {
        Some(h) if h.to != *from => {
            return Ok(Err(format!("a switchover to {} is in progress", h.to)));
        }
        Some(h) => h.clone(),
        None => {
            let h = Handoff {
                to: from.clone(),
                since_ms: now,
                txn: tern_txn::last_txn_id(tx, &db.account)?,
            };
            g.handoff = Some(h.clone());
            tx.put(&fkeys::group(&g.group), g)?;
            tracing::warn!(group = %g.group, to = %from, "planned switchover: commits paused");
            h
        }
    };
    if tern_txn::stable_log_id(tx, &db.account)? < h.txn {
        return Ok(Err(
            "switchover: the primary's last transactions are still committing; retry".into(),
        ));
    }
    let last = tern_txn::database_seq(tx, &db.id)?;
    if req.seq < last {
        return Ok(Err(format!(
            "switchover: {from} applied transaction {} of the primary's last {last}; retry once it has",
            req.seq
        )));
    }
    Ok(Ok(()))
}

/// Whether a member in state `g` (its database's `role`, silent from the primary for
/// `silence_ms`, having applied the old primary's transaction `applied`) grants `from`'s
/// request; the reason when not. A grant (or a repeat of one) is what makes a majority
/// safe: the member has not heard the primary for `unavailable_after` (twice the lease),
/// and promises to echo no older primary and grant nothing else at or below the epoch.
pub fn vote_decision(
    g: &GroupDpo,
    role: DatabaseRole,
    silence_ms: i64,
    applied: u64,
    req: &model::VoteRequest,
    from: &DeploymentId,
    unavailable_after_ms: i64,
) -> std::result::Result<(), String> {
    if req.epoch == g.promised && g.promised_to.as_ref() == Some(from) {
        return Ok(());
    }
    if req.epoch <= g.epoch.max(g.promised) {
        return Err(format!(
            "knows or promised epoch {}, not older than the {} asked for",
            g.epoch.max(g.promised),
            req.epoch
        ));
    }
    if role == DatabaseRole::Primary {
        return Err(format!("holds the primary (epoch {})", g.epoch));
    }
    if silence_ms < unavailable_after_ms {
        return Err(format!(
            "heard the primary {} {silence_ms} ms ago",
            g.primary.as_ref().map_or("(unknown)", |p| p.as_str())
        ));
    }
    if applied > req.seq {
        return Err(format!(
            "applied the old primary's transaction {applied}, the candidate only {} (fail over on this member instead)",
            req.seq
        ));
    }
    Ok(())
}

/// The host and path (without its leading `/`) of a webhook URL, `http://host:port/path`;
/// an error naming the URL for anything else.
pub fn webhook_target(url: &str) -> std::result::Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// webhooks are supported"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((host, path))
}

/// POSTs `body` (JSON) to the webhook `url` over plain HTTP/1.1 (availability and
/// monitoring notifications); an error says what failed, a non-2xx answer included.
pub async fn post_json(url: &str, body: &[u8]) -> std::result::Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, path) = webhook_target(url)?;
    let connect = tokio::net::TcpStream::connect(host);
    let mut s = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let io = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status in the answer".to_string())?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn claim_group(db: &DatabaseDpo) -> String {
    db.replication_group.clone().unwrap_or_default()
}

/// The availability row of `peer` (a new one starts unavailable: never heard).
fn peer_row(tx: &mut MetaTxn<'_>, peer: &DeploymentId, now: i64) -> tern_meta::Result<PeerDpo> {
    Ok(tx.get(&fkeys::peer(peer))?.unwrap_or(PeerDpo {
        peer: peer.clone(),
        state: Availability::Unavailable,
        since_ms: now,
        last_heard_ms: None,
        maintenance: false,
        url: None,
    }))
}

/// Moves `p` to `to` (a notification when it changes).
fn transition(
    tx: &mut MetaTxn<'_>,
    p: &mut PeerDpo,
    to: Availability,
    now: i64,
    reason: &str,
) -> tern_meta::Result<()> {
    if p.state == to {
        return Ok(());
    }
    let seq = tx.next_sequence("repl-availlog")?;
    record_event(
        tx,
        &AvailabilityEvent {
            seq,
            peer: p.peer.clone(),
            from: p.state.name().into(),
            to: to.name().into(),
            at_ms: now,
            reason: reason.to_string(),
        },
    )?;
    p.state = to;
    p.since_ms = now;
    Ok(())
}

/// Stores a notification (history and webhook queue) and logs it.
fn record_event(tx: &mut MetaTxn<'_>, e: &AvailabilityEvent) -> tern_meta::Result<()> {
    tracing::warn!(peer = %e.peer, from = %e.from, to = %e.to, reason = %e.reason, "availability notification");
    tx.put(&fkeys::event(e.seq), e)?;
    tx.put(
        &fkeys::hook(e.seq),
        &HookDpo {
            event: e.clone(),
            attempts: 0,
            next_at_ms: e.at_ms,
        },
    )
}

/// The group index kind (re-exported for callers that look a group up).
pub const GROUP_KIND: &str = GROUP_INDEX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_makes_a_peer_suspect_then_unavailable() {
        let after = Duration::from_secs(30);
        assert_eq!(judge(Some(0), after, false), Availability::Available);
        assert_eq!(judge(Some(14_999), after, false), Availability::Available);
        assert_eq!(judge(Some(15_000), after, false), Availability::Suspect);
        assert_eq!(judge(Some(29_999), after, false), Availability::Suspect);
        assert_eq!(judge(Some(30_000), after, false), Availability::Unavailable);
        assert_eq!(judge(None, after, false), Availability::Unavailable);
        assert_eq!(judge(Some(0), after, true), Availability::Maintenance);
        assert!(Availability::Maintenance.is_down() && Availability::Unavailable.is_down());
        assert!(!Availability::Suspect.is_down());
    }

    #[test]
    fn a_primary_of_three_holds_its_lease_while_a_majority_echoes_it() {
        let ids: Vec<DeploymentId> = ["d1", "d2", "d3", "d4", "d5"]
            .iter()
            .map(|d| DeploymentId::new(*d).unwrap())
            .collect();
        let me = &ids[0];
        let lease = Duration::from_millis(1_000);
        let mut g = GroupDpo::new("g", me, 1);
        // One or two members: no lease (a group of two has no majority to lose).
        g.members = ids[..2].to_vec();
        assert_eq!(g.lease_until(me, lease), None);
        // Three: itself and one echo make a majority; the newest echo counts.
        g.members = ids[..3].to_vec();
        assert_eq!(g.lease_until(me, lease), Some(0), "no echo: no lease");
        g.acks.insert(ids[1].clone(), ack(1, 2_000));
        g.acks.insert(ids[2].clone(), ack(1, 7_000));
        assert_eq!(g.lease_until(me, lease), Some(8_000));
        // Five: two echoes needed, so the second newest decides.
        g.members = ids.clone();
        assert_eq!(g.lease_until(me, lease), Some(3_000));
        g.acks.insert(ids[3].clone(), ack(1, 6_000));
        assert_eq!(g.lease_until(me, lease), Some(7_000));
        // An echo of a member that left the group does not count.
        g.members = vec![ids[0].clone(), ids[1].clone(), ids[4].clone()];
        assert_eq!(g.lease_until(me, lease), Some(3_000));
    }

    fn ack(seq: u64, at: i64) -> ReplicaAck {
        ReplicaAck {
            seq,
            commit_at_ms: Some(at),
            heard_at_ms: at,
            echo: Some(at),
            since_ms: None,
        }
    }

    #[test]
    fn the_primary_pauses_only_beyond_its_rpo() {
        let d2 = DeploymentId::new("d2").unwrap();
        let d3 = DeploymentId::new("d3").unwrap();
        let mut g = GroupDpo::new("g", &DeploymentId::new("d1").unwrap(), 1);
        g.policy = FailoverPolicy {
            max_data_loss: Some(Duration::from_secs(5)),
            max_data_loss_txns: Some(10),
            max_unavailable: None,
            block_commits_beyond_rpo: true,
            auto_failover: false,
        };
        // No replica yet: nothing to protect against.
        assert_eq!(g.beyond_rpo(100, 0), None);
        g.acks.insert(d2.clone(), ack(95, 1_000));
        g.acks.insert(d3.clone(), ack(50, 1_000));
        // The best replica is 5 behind, its newest commit 2 s old.
        assert_eq!(g.exposure(100, 3_000), (5, 2_000));
        assert_eq!(g.beyond_rpo(100, 3_000), None);
        // 6 s: beyond the time RPO.
        let why = g.beyond_rpo(100, 7_000).unwrap();
        assert!(why.contains("max_data_loss"), "{why}");
        // 11 transactions behind: beyond the count RPO.
        let why = g.beyond_rpo(106, 3_000).unwrap();
        assert!(why.contains("11 transactions"), "{why}");
        // Caught up: nothing exposed however old.
        g.acks.insert(d2, ack(106, 1_000));
        assert_eq!(g.beyond_rpo(106, 1_000_000), None);
        g.policy.block_commits_beyond_rpo = false;
        assert_eq!(g.beyond_rpo(500, 1_000_000), None);
    }
}
