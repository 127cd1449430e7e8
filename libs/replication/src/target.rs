//! The replica side: asking for refreshes, importing snapshot responses and applying
//! shipped log records (the apply agents are the message processor's handlers).
//!
//! Replica table versions mirror the upstream's: a shipped change from version `b` to
//! `v` applies when the table is at `b`, is skipped when it is at `v` or later (already
//! applied: idempotent), and when it is between them (a refresh or another path got there
//! first) the table is rolled back to `b` first — version `b` is the same state everywhere.
//! Below `b` there is a gap: the change waits, and a gap that does not fill turns into a
//! refresh.
//!
//! A drift repair (a refresh finding the table at the snapshot's version with other
//! files) makes no version — that would take the number of the upstream's next one — but
//! is committed as a [`Change::Repair`], whose log record is shipped like any change: a
//! replica downstream applies it at that version or later (putting back a file unless
//! it is active there or a later version removed it; ending a file that is active) and
//! logs it in turn, so a chain learns of a repair without refreshing.
//!
//! A snapshot response is imported from a stream: the manifest (tables and versions) is
//! in the job's row, the file lists are read section by section from the sections file
//! in the inbound folder, and the tables are committed in transactions of up to
//! `import_batch_files` files (a table always whole: its version's files are one log
//! record and one metadata file, which bounds the import's memory by the largest table,
//! not by the database). The job's cursor (tables and sections done) moves after each
//! transaction. Cross-table consistency: a response that fits in one batch is one
//! transaction as before; a larger one shows tables at their new versions one batch
//! after another while it imports (each table's version is the primary's, and the
//! refresh is recorded as done only after the last batch).
//!
//! Each file is copied from the inbound stage into the volume as soon as it has landed
//! there: this replica asks for the plan first (`stream` in its request), so the upstream
//! sends the response (manifest, sections file, wrapped RepMK) before it copies the files
//! and writes a marker ([`model::copied_path`]) once all are in — the replica's copies run
//! beside the upstream's. A batch's tables are still committed once, after all of its
//! files are in. Resuming: the names the batch's files get in the volume are reserved
//! when it begins and stored in the job's row with the cursor, so an interrupted import
//! finds what it already copied at those paths (a copy is published only whole) and
//! copies the rest; files a batch copied and did not commit are deleted when the job is
//! dropped (abandoned, superseded by a later answer to the same request, or no longer
//! fitting). An import waiting for a file gives the attempt up when no file landed for
//! `landing_timeout` (the backoff and failed state of [`crate::jobs`] follow).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tern_crypto::{KeySource, ReplicationFileKeys};
use tern_messaging::Draft;
use tern_meta::{ColumnDef, DictionaryChange, MicroPartitionDpo, SchemaDpo};
use tern_storage::layout::{
    self, AccountId, DatabaseId, DeploymentId, GlobalFileRef, MessageId, ResponseId, ShortName,
    TableId,
};
use tern_storage::{Path, StoreExt};
use tern_table::Stamp;
use tern_table::commit::{Change, DictionaryOp, RepairChange, TableChange, table_lock};

use crate::copy::{CopyTask, copy_all};
use crate::crash;
use crate::error::{Error, Result};
use crate::model::{
    self, PAYLOAD_VERSION, REFRESH_TYPE, RefreshRequest, SNAPSHOT_TYPE, SnapshotManifest,
    TableInventory, TableSection,
};
use crate::peers::Peers;
use crate::service::{Counters, Replication};
use crate::state::{ImportBatch, ImportJobDpo, ReplicaDpo, keys};

/// An imported response whose inbound folder can go (see [`Replication::clean_inbound`]).
#[derive(Debug, Clone)]
pub struct InboundCleanup {
    peer: DeploymentId,
    folder: ResponseId,
}

/// Where imported files come from: a peer's folder in our inbound stage and its keys.
pub(crate) struct ImportSource {
    pub peer: DeploymentId,
    pub folder: ResponseId,
    pub keys: Arc<ReplicationFileKeys>,
}

/// How the files of one table's local entries come into the volume from an import
/// source's inbound folder (see [`Replication::plan_copy_in`]).
pub(crate) struct CopyIn {
    src_store: Arc<dyn object_store::ObjectStore>,
    peer: DeploymentId,
    folder: ResponseId,
    src_keys: Arc<dyn KeySource>,
    dst_store: Arc<dyn object_store::ObjectStore>,
    account: AccountId,
    database: DatabaseId,
    dst_keys: Arc<dyn KeySource>,
}

impl CopyIn {
    /// Where the file of local entry `m` goes.
    fn dst_path(&self, m: &MicroPartitionDpo) -> Path {
        layout::volume::mp(&self.account, &self.database, &m.table, &m.short)
    }

    /// The copy of local entry `m`'s file.
    fn task(&self, m: &MicroPartitionDpo) -> CopyTask {
        CopyTask {
            src_store: Arc::clone(&self.src_store),
            src_path: layout::replication::inbound(&self.peer, &self.folder, &m.global_ref),
            src_keys: Arc::clone(&self.src_keys),
            dst_store: Arc::clone(&self.dst_store),
            dst_path: self.dst_path(m),
            dst_keys: Arc::clone(&self.dst_keys),
        }
    }

    /// The copies of `local`'s files.
    fn tasks(&self, local: &[MicroPartitionDpo]) -> Vec<CopyTask> {
        local.iter().map(|m| self.task(m)).collect()
    }
}

/// The short name an import reserves as its `n`th (`fdn<n>_g`).
fn reserved_name(n: u64) -> Result<ShortName> {
    Ok(ShortName::new(format!("fdn{n}_g"))?)
}

/// One table's step from `base` to `version`.
#[derive(Debug, Clone)]
pub(crate) struct TableStep {
    pub table: TableId,
    pub base: u64,
    pub version: u64,
    pub columns: Vec<ColumnDef>,
    pub add_column: Option<ColumnDef>,
    /// Files to add (upstream metadata; the file is in the inbound folder).
    pub add: Vec<MicroPartitionDpo>,
    /// Files to remove.
    pub remove: Vec<GlobalFileRef>,
    /// `add` holds the local entries, their files in the volume already (an import
    /// copies each file as it lands, before it commits); else upstream entries, copied
    /// when applied.
    pub landed: bool,
}

/// Folds the changes one shipped transaction made to the same table into one step per
/// table (in first-seen order), so that the transaction stays one commit on the replica:
/// a change must start at the version the previous one reached; a file added and removed
/// within the transaction is neither copied nor removed; the schema is the last change's.
/// The replica jumps over the transaction's intermediate versions (its versions mirror
/// the primary's, and versions may jump). Errors name the table whose changes do not
/// follow each other.
pub(crate) fn merge_steps(steps: Vec<TableStep>) -> std::result::Result<Vec<TableStep>, String> {
    let mut out: Vec<TableStep> = Vec::with_capacity(steps.len());
    for next in steps {
        let Some(prev) = out.iter_mut().find(|s| s.table == next.table) else {
            out.push(next);
            continue;
        };
        if next.base != prev.version {
            return Err(format!(
                "table {}: a change from version {} follows one that reached {}",
                next.table, next.base, prev.version
            ));
        }
        let removed_now: BTreeSet<&GlobalFileRef> = next.remove.iter().collect();
        let added_before: BTreeSet<GlobalFileRef> =
            prev.add.iter().map(|m| m.global_ref.clone()).collect();
        prev.add.retain(|m| !removed_now.contains(&m.global_ref));
        prev.remove.extend(
            next.remove
                .iter()
                .filter(|g| !added_before.contains(*g))
                .cloned(),
        );
        prev.add.extend(next.add);
        prev.version = next.version;
        prev.columns = next.columns;
        prev.add_column = next.add_column.or(prev.add_column.take());
    }
    Ok(out)
}

/// A drift repair of one (local) table: files to put back and to end, at `version`
/// (exactly, or at or after it).
#[derive(Debug, Clone)]
pub(crate) struct Repair {
    pub table: TableId,
    pub version: u64,
    pub exact: bool,
    /// Files to put back (upstream metadata; the file is in the inbound folder), or
    /// with `landed` their local entries (see [`TableStep::landed`]).
    pub add: Vec<MicroPartitionDpo>,
    /// Files to end.
    pub remove: Vec<GlobalFileRef>,
    /// `add` holds local entries whose files are in the volume already.
    pub landed: bool,
}

/// What applying steps did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub files: u64,
    pub bytes: u64,
    pub tables: u64,
}

/// How long a change whose predecessor is missing waits in its handler before it is
/// retried later (its predecessor is usually being applied beside it).
const GAP_WAIT: Duration = Duration::from_secs(2);

impl Replication {
    /// The replica of `group`, when this deployment holds one.
    pub(crate) fn replica_of(&self, group: &str) -> Result<Option<ReplicaDpo>> {
        let Some(db) = self.local_database(group)? else {
            return Ok(None);
        };
        Ok(self
            .meta()
            .read(|tx| tx.get::<ReplicaDpo>(&keys::replica(&db.id)))?)
    }

    /// The local id of canonical table `canonical` in `database` (a replica's, or the
    /// same database after its promotion), and whether it exists: the candidate live in
    /// `database`, else the first candidate no table holds.
    pub(crate) fn local_table(
        &self,
        database: &DatabaseId,
        canonical: &TableId,
    ) -> Result<(TableId, bool)> {
        // A table this deployment made itself (as the group's primary before a failover)
        // keeps its bare id here: `t5` is `t5--<me>` on the wire.
        let own = canonical
            .as_str()
            .strip_suffix(&format!("--{}", self.me()))
            .and_then(|bare| TableId::new(bare).ok());
        Ok(self.meta().read(|tx| {
            if let Some(bare) = &own
                && let Some(t) = tx.get_table(bare)?
                && t.database == *database
                && !t.dropped
            {
                return Ok((bare.clone(), true));
            }
            let mut n = 0;
            loop {
                let id = model::local_table_candidate(canonical, n);
                match tx.get_table(&id)? {
                    None => return Ok((id, false)),
                    Some(t) if t.database == *database && !t.dropped => return Ok((id, true)),
                    Some(_) => n += 1,
                }
            }
        })?)
    }

    /// Resolves canonical step tables to local ones (after the dictionary made them).
    pub(crate) fn localize(&self, r: &ReplicaDpo, steps: &mut [TableStep]) -> Result<()> {
        for s in steps {
            let (local, exists) = self.local_table(&r.database, &s.table)?;
            if !exists {
                // Not created here yet (a refresh that creates it may still be importing):
                // wait like for any missing predecessor; a gap that never fills refreshes.
                return Err(Error::Gap {
                    table: s.table.to_string(),
                    have: 0,
                    base: s.base,
                });
            }
            s.table = local.clone();
            for m in &mut s.add {
                m.table = local.clone();
            }
        }
        Ok(())
    }

    /// What a replica has: per live table, its version and active files.
    pub(crate) fn inventory(&self, r: &ReplicaDpo) -> Result<Vec<TableInventory>> {
        Ok(self.meta().read(|tx| {
            let mut out = Vec::new();
            for t in tx.list_tables(&r.database)? {
                if t.dropped {
                    continue;
                }
                let refs = tx
                    .active_micro_partitions(&t.id, t.current_version)?
                    .into_iter()
                    .map(|m| m.global_ref)
                    .collect();
                out.push(TableInventory {
                    table: crate::failover::wire_table_id(self.me(), &t.id),
                    version: t.current_version,
                    refs,
                });
            }
            Ok(out)
        })?)
    }

    /// Control worker: sends the refresh requests asked for, and asks for scheduled ones.
    pub(crate) async fn send_refresh_requests(&self, peers: &dyn Peers) -> Result<usize> {
        let now = self.now();
        let every = self.inner.p.config.refresh_interval;
        let replicas = self
            .meta()
            .read(|tx| tx.scan_prefix::<ReplicaDpo>(&keys::replicas()))?;
        let mut sent = 0;
        for (_, r) in replicas.into_iter().filter(|(_, r)| !r.promoting) {
            let due = if r.schedule.is_continuous() {
                !every.is_zero()
                    && r.last_refresh_at_ms.is_some_and(|at| {
                        now - at >= i64::try_from(every.as_millis()).unwrap_or(i64::MAX)
                    })
            } else {
                // Its own schedule, from its last refresh (or its creation).
                r.schedule
                    .due(Some(r.last_refresh_at_ms.unwrap_or(r.created_at_ms)), now)
            };
            let pending = match &r.refresh {
                None if due => {
                    self.ask_refresh(&r.database, "schedule", false)?;
                    continue;
                }
                None => continue,
                Some(p) if p.sent => {
                    // Unanswered for a whole interval (lost, or the upstream's data was
                    // reset): ask again.
                    if due
                        && now - p.asked_at_ms
                            >= i64::try_from(every.as_millis()).unwrap_or(i64::MAX)
                    {
                        self.meta().write(|tx| {
                            if let Some(mut cur) =
                                tx.get::<ReplicaDpo>(&keys::replica(&r.database))?
                            {
                                cur.refresh = None;
                                tx.put(&keys::replica(&r.database), &cur)?;
                            }
                            Ok(())
                        })?;
                        self.ask_refresh(&r.database, "retry", false)?;
                    }
                    continue;
                }
                Some(p) => p.clone(),
            };
            let Some(sender) = peers.sender(&r.upstream) else {
                continue;
            };
            let customer_key = match self.customer_key(&r.account) {
                Ok(Some(k)) => k.public_key().await.map(Some).map_err(Error::from),
                other => other.map(|_| None),
            };
            let customer_key = match customer_key {
                Ok(k) => k,
                Err(e) => {
                    // Never ask without the key the account registered: the answer would
                    // not be sealed to it.
                    tracing::warn!(database = %r.database, error = %e, "refresh request held back");
                    let msg = e.to_string();
                    self.with_replica(&r.group, |cur| cur.last_error = Some(msg.clone()))?;
                    continue;
                }
            };
            let request = RefreshRequest {
                v: PAYLOAD_VERSION,
                request_id: pending.request_id.clone(),
                group: r.group.clone(),
                account: r.account.clone(),
                database: r.database.clone(),
                subscribe: r.follow_log,
                tables: self.inventory(&r)?,
                customer_key,
                stream: self.inner.p.config.import_as_files_land,
            };
            let id = MessageId::new(pending.request_id.as_str())?;
            let earlier = sender.message(&id).await?;
            match &earlier {
                None => {}
                // Left half-made by a crash (created, its body not attached or not marked
                // ready): taken as sent it would never arrive. It is given up and the
                // request asked again under a new id (a clean-up of the old one's body
                // cannot touch the new one's).
                Some(m) if m.state == tern_messaging::OutState::Preparing => {
                    sender.abandon(&id).await?;
                    self.meta().write(|tx| {
                        if let Some(mut cur) = tx.get::<ReplicaDpo>(&keys::replica(&r.database))?
                            && cur
                                .refresh
                                .as_ref()
                                .is_some_and(|p| p.request_id == pending.request_id)
                        {
                            cur.refresh = None;
                            tx.put(&keys::replica(&r.database), &cur)?;
                        }
                        Ok(())
                    })?;
                    self.ask_refresh(&r.database, &pending.reason, false)?;
                    continue;
                }
                Some(_) => {}
            }
            if earlier.is_none() {
                let payload = model::encode(&request)?;
                if payload.len() <= self.inner.p.config.inline_max_bytes {
                    sender
                        .send(Draft::new(REFRESH_TYPE, payload).with_id(id))
                        .await?;
                } else {
                    // A replica of many files lists them all: the request travels as a
                    // body file (an inline payload is capped).
                    let head = model::encode(&crate::source::SnapshotHead {
                        v: PAYLOAD_VERSION,
                        response_id: ResponseId::new(pending.request_id.as_str())?,
                    })?;
                    sender
                        .create(Draft::new(REFRESH_TYPE, head).with_id(id.clone()))
                        .await?;
                    sender.attach_body_bytes(&id, &payload).await?;
                    sender.mark_ready(&id).await?;
                }
            }
            self.meta().write(|tx| {
                if let Some(mut cur) = tx.get::<ReplicaDpo>(&keys::replica(&r.database))? {
                    if let Some(p) = cur
                        .refresh
                        .as_mut()
                        .filter(|p| p.request_id == pending.request_id)
                    {
                        p.sent = true;
                    }
                    tx.put(&keys::replica(&r.database), &cur)?;
                }
                Ok(())
            })?;
            self.expect_reply();
            Counters::add(&self.inner.counters.refreshes_requested, 1);
            tracing::info!(database = %r.database, upstream = %r.upstream, reason = %pending.reason, "refresh requested");
            sent += 1;
        }
        Ok(sent)
    }

    /// Importer: imports the oldest waiting snapshot response. How many it imported, and
    /// the inbound folder to delete now that its files are in the volume (the caller
    /// deletes it off the import path: unlinking gigabytes can take seconds, and the next
    /// response should not wait for that).
    pub(crate) async fn import_snapshots(&self) -> Result<(usize, Option<InboundCleanup>)> {
        // The oldest job that is due: one backing off or failed blocks none behind it.
        let now = self.now();
        let mut jobs = self
            .meta()
            .read(|tx| tx.scan_prefix::<ImportJobDpo>(&keys::import_jobs()))?;
        // In the order they arrived, not by key (response ids sort as text).
        jobs.sort_by_key(|(_, j)| j.received_at_ms);
        let Some((key, mut job)) = jobs.into_iter().find(|(_, j)| j.retry.due(now)) else {
            return Ok((0, None));
        };
        // A failover waits for an import under way to finish (never half-imported).
        let _gate = self.inner.import_gate.lock().await;
        if job.superseded {
            self.drop_superseded(&key, &job).await?;
            return Ok((1, None));
        }
        if let Some(sections) = job.legacy_sections.take() {
            // A row a previous build stored with the whole response: its sections go into
            // the sections file, and the row is stored again without them.
            let upgraded = self
                .write_legacy_sections(&job.peer, &job.response, job.received_at_ms, sections)
                .await;
            if let Err(e) = upgraded {
                let msg = e.to_string();
                self.with_replica(&job.response.group, |r| r.last_error = Some(msg.clone()))?;
                self.job_attempt_failed(&key, &e, |j: &mut ImportJobDpo| {
                    j.attempts += 1;
                    (j.attempts, &mut j.retry)
                })?;
                return Err(e);
            }
            self.meta().write(|tx| tx.put(&key, &job))?;
        }
        let fits = match self.epoch_fits(&job.response.group, Some(job.response.epoch)) {
            Ok(f) => f,
            // A newer epoch than known: its claim is on its way; import after it.
            Err(e) => return Err(e),
        };
        if !fits {
            tracing::warn!(response = %job.response.response_id, epoch = job.response.epoch, "snapshot of an older epoch dropped");
            Counters::add(&self.inner.counters.stale_epoch, 1);
            self.finish_refresh(&job, None)?;
            if let Some(r) = self.replica_of(&job.response.group)? {
                self.ask_refresh(&r.database, "stale epoch", false)?;
            }
            self.drop_batch_files(&self.job_row(&key)?.unwrap_or(job))
                .await;
            self.meta().write(|tx| tx.delete(&key))?;
            return Ok((1, None));
        }
        match self.import(&key, &job).await {
            Ok(()) => {}
            Err(e) if e.is_in_doubt() => return Err(e),
            Err(Error::Superseded { .. }) => {
                let job = self.job_row(&key)?.unwrap_or(job);
                self.drop_superseded(&key, &job).await?;
                return Ok((1, None));
            }
            Err(e @ Error::Paused { .. }) => {
                // Not a failed attempt: taken up again after the failover.
                tracing::info!(response = %job.response.response_id, "{e}");
                return Ok((0, None));
            }
            Err(e @ (Error::Gap { .. } | Error::Drift { .. } | Error::CustomerKey { .. })) => {
                // The response no longer fits (the replica moved below what it answered,
                // or its RepMK is sealed to a key the account no longer holds or cannot
                // open): a new request gets a fitting one (held back while a registered
                // key does not open), and the jobs behind this one are not blocked.
                tracing::warn!(error = %e, response = %job.response.response_id, "snapshot no longer applies; asking again");
                self.drop_batch_files(&self.job_row(&key)?.unwrap_or_else(|| job.clone()))
                    .await;
                self.finish_refresh(&job, None)?;
                if let Some(r) = self.replica_of(&job.response.group)? {
                    self.ask_refresh(&r.database, "retry", false)?;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                self.with_replica(&job.response.group, |r| r.last_error = Some(msg.clone()))?;
                self.job_attempt_failed(&key, &e, |j: &mut ImportJobDpo| {
                    j.attempts += 1;
                    (j.attempts, &mut j.retry)
                })?;
                return Err(e);
            }
        }
        self.meta().write(|tx| tx.delete(&key))?;
        Ok((
            1,
            Some(InboundCleanup {
                peer: job.peer,
                folder: job.response.response_id,
            }),
        ))
    }

    /// The import job at `key` as stored now.
    fn job_row(&self, key: &tern_meta::Key) -> Result<Option<ImportJobDpo>> {
        Ok(self.meta().read(|tx| tx.get::<ImportJobDpo>(key))?)
    }

    /// Drops an import job a later answer to the same request superseded: what it copied
    /// and did not commit, its row and its inbound folder (the later answer is imported
    /// instead; the refresh stays pending for it).
    async fn drop_superseded(&self, key: &tern_meta::Key, job: &ImportJobDpo) -> Result<()> {
        tracing::warn!(response = %job.response.response_id, request = %job.response.request_id, "import superseded by a later answer to the same request: dropped");
        self.drop_batch_files(job).await;
        self.meta().write(|tx| tx.delete(key))?;
        self.remove_inbound(&job.peer, &job.response.response_id)
            .await;
        Ok(())
    }

    /// Deletes an imported response's inbound folder, and the folders of attempts its
    /// upstream abandoned before it. Safe to run beside imports: it never touches a folder
    /// with an import waiting, nor one numbered after the imported response.
    pub async fn clean_inbound(&self, done: InboundCleanup) {
        self.remove_inbound(&done.peer, &done.folder).await;
        self.remove_stale_snapshots(&done.peer, &done.folder).await;
    }

    /// Writes the sections file of a response that came whole (a previous build's), sealed
    /// like the files under its RepMK.
    pub(crate) async fn write_legacy_sections(
        &self,
        peer: &DeploymentId,
        res: &SnapshotManifest,
        received_at_ms: i64,
        sections: Vec<TableSection>,
    ) -> Result<()> {
        let Some(r) = self.replica_of(&res.group)? else {
            return Ok(());
        };
        let keys = self
            .open_repmk(
                peer,
                &r.account,
                res.response_id.as_str(),
                &res.repmk,
                received_at_ms,
            )
            .await?;
        crate::source::write_sections(
            &self.inner.p.bucket,
            &model::sections_path(peer, &res.response_id),
            keys.as_ref(),
            Box::new(sections.into_iter().map(Ok)),
        )
        .await?;
        Ok(())
    }

    /// Imports a response: the dictionary, then the tables in the manifest's order, their
    /// file lists read from the sections file as a stream. Tables are committed together
    /// until `import_batch_files` files are gathered (a small database is one transaction,
    /// as one consistent point; a large one several, each table always whole in one: a
    /// version's files are one log record), and the job's cursor moves after each, so an
    /// interrupted import resumes after what it committed.
    async fn import(&self, key: &tern_meta::Key, job: &ImportJobDpo) -> Result<()> {
        let res = &job.response;
        let Some(r) = self.replica_of(&res.group)? else {
            // Promoted (or made local) meanwhile: what its batch under way copied goes too.
            tracing::warn!(group = %res.group, "snapshot for a group without a replica here: dropped");
            self.drop_batch_files(job).await;
            return Ok(());
        };
        let keys = self
            .open_repmk(
                &job.peer,
                &r.account,
                res.response_id.as_str(),
                &res.repmk,
                job.received_at_ms,
            )
            .await?;
        let source = ImportSource {
            peer: job.peer.clone(),
            folder: res.response_id.clone(),
            keys: Arc::clone(&keys),
        };
        // Dictionary: schemas and tables it lacks, tables it has that are gone upstream.
        let live: BTreeMap<TableId, tern_meta::TableDpo> = self
            .meta()
            .read(|tx| tx.list_tables(&r.database))?
            .into_iter()
            .filter(|t| !t.dropped)
            .map(|t| (crate::failover::wire_table_id(self.me(), &t.id), t))
            .collect();
        let mut dict = Vec::new();
        for s in &res.schemas {
            dict.push(DictionaryChange::CreateSchema { name: s.clone() });
        }
        for t in &res.tables {
            if !live.contains_key(&t.table) {
                dict.push(DictionaryChange::CreateTable {
                    table: t.table.clone(),
                    schema: t.schema.clone(),
                    name: t.name.clone(),
                    columns: t.columns.clone(),
                });
            }
        }
        let wanted: BTreeSet<&TableId> = res.tables.iter().map(|t| &t.table).collect();
        for id in live.keys().filter(|id| !wanted.contains(id)) {
            dict.push(DictionaryChange::DropTable { table: id.clone() });
        }
        let stamp = Stamp {
            epoch: res.epoch,
            seq: res.seq,
        };
        self.apply_dictionary(&r, &dict, stamp).await?;
        self.crash_point(crash::IMPORT_DICTIONARY)?;

        let mut sections = SectionReader::open(
            &self.inner.p.bucket,
            &model::sections_path(&job.peer, &res.response_id),
            keys.as_ref(),
        )
        .await?;
        sections.skip(job.sections_done).await?;
        let budget = self.inner.p.config.import_batch_files.max(1) as u64;
        let landing = Arc::new(Landing::new(self, key, job));
        let mut done = (job.tables_done, job.sections_done);
        let mut resumed = job.batch;
        let mut files = 0;
        let mut bytes = 0;
        let mut i = usize::try_from(job.tables_done).unwrap_or(usize::MAX);
        while i < res.tables.len() {
            // A failover wants the importer (see `Replication::drain`): stepped aside
            // between batches, never in the middle of one; taken up again after it.
            if self.inner.draining.load(Ordering::Acquire) > 0 {
                return Err(Error::Paused {
                    response: res.response_id.to_string(),
                });
            }
            // The batch's tables and the volume names of their files: reserved once and
            // stored with the job, so a resumed import finds what it copied at the same
            // paths and copies only the rest.
            let batch = match resumed.take() {
                Some(b) => b,
                None => self.begin_batch(key, &res.tables[i..], budget)?,
            };
            let span = usize::try_from(batch.tables).unwrap_or(usize::MAX).max(1);
            let end = i.saturating_add(span).min(res.tables.len());
            let mut name = batch.first_name;
            let mut steps = Vec::new();
            let mut repairs = Vec::new();
            // Per table, how its landed entries' files come in; and the names each
            // table's copies were given (a range of the batch's reserved names).
            let mut copy_ins = BTreeMap::new();
            let mut reserved = Vec::new();
            for t in &res.tables[i..end] {
                let (add, remove) = sections.table(&t.table, t.adds, t.removes).await?;
                let (local, _) = self.local_table(&r.database, &t.table)?;
                let current = self.current_version(&local)?;
                let first = name;
                name += t.adds;
                // Asked at the version the snapshot has, and still there: the difference is
                // drift (the index changed behind the replica's back). Reached that version
                // by the log meanwhile: the difference is already applied (nothing copied).
                let repair = current == t.version
                    && t.answered_version == t.version
                    && (!add.is_empty() || !remove.is_empty());
                let landed = repair || current < t.version;
                let add = if landed {
                    let (copied, copy_in) = self
                        .plan_copy_in(&r, &source, &local, add, None, Some(first))
                        .await?;
                    reserved.push((local.clone(), first..name));
                    copy_ins.insert(local.clone(), copy_in);
                    copied
                } else {
                    add
                };
                if repair {
                    repairs.push(Repair {
                        table: local,
                        version: t.version,
                        exact: true,
                        add,
                        remove,
                        landed,
                    });
                } else {
                    steps.push(TableStep {
                        table: t.table.clone(),
                        base: t.answered_version,
                        version: t.version,
                        columns: t.columns.clone(),
                        add_column: None,
                        add,
                        remove,
                        landed,
                    });
                }
            }
            // Every file of the batch into the volume, each as soon as it has landed in
            // the inbound stage (a streamed response's upstream may still be copying); each
            // copy task made as it is started.
            let tasks: Vec<(&CopyIn, &MicroPartitionDpo)> = steps
                .iter()
                .filter(|s| s.landed)
                .map(|s| &s.add)
                .chain(repairs.iter().map(|rp| &rp.add))
                .flatten()
                .filter_map(|m| copy_ins.get(&m.table).map(|c| (c, m)))
                .collect();
            let copied = self.copy_landed(&landing, tasks).await?;
            files += copied.files;
            bytes += copied.bytes;
            self.localize(&r, &mut steps)?;
            let applied = self.apply_steps(&r, &source, steps, false, stamp).await?;
            files += applied.files;
            bytes += applied.bytes;
            for rp in repairs {
                let (f, b) = self.commit_repair(&r, &source, rp, stamp).await?;
                files += f;
                bytes += b;
            }
            // Copied for a table the log brought to its version meanwhile, or for a file a
            // repair left out: not part of any version, deleted.
            self.remove_uncommitted(&r.account, &r.database, &reserved)
                .await?;
            done = (end as u64, sections.read());
            if end < res.tables.len() {
                self.meta().write(|tx| {
                    if let Some(mut cur) = tx.get::<ImportJobDpo>(key)? {
                        (cur.tables_done, cur.sections_done) = done;
                        cur.batch = None;
                        tx.put(key, &cur)?;
                    }
                    Ok(())
                })?;
            }
            self.crash_point(crash::IMPORT_COMMITTED)?;
            i = end;
        }
        if done.1 != res.sections {
            return Err(Error::BadMessage {
                message_type: SNAPSHOT_TYPE,
                from: job.peer.clone(),
                reason: format!(
                    "{}: the manifest announces {} sections, the tables took {}",
                    res.response_id, res.sections, done.1
                ),
            });
        }
        self.inner.p.txn.observe(&r.account, res.lamport)?;
        let mut versions = BTreeMap::new();
        for t in &res.tables {
            versions.insert(self.local_table(&r.database, &t.table)?.0, t.version);
        }
        self.finish_refresh(job, Some((versions, files, bytes)))?;
        self.crash_point(crash::IMPORT_FINISHED)?;
        Counters::add(&self.inner.counters.snapshots_imported, 1);
        self.publish(
            tern_monitor::AgentKind::Import,
            tern_monitor::Unit {
                rows: 0,
                bytes,
                files,
                latency_ms: self.elapsed_ms(job.received_at_ms),
            },
        );
        self.committed();
        tracing::info!(database = %r.database, response = %res.response_id, files, bytes, "snapshot imported");
        Ok(())
    }

    /// Applies a repair made upstream (shipped in a log record) to this replica's copy,
    /// and commits it here as a repair of its own (so it travels on down a chain). The
    /// table must have reached the repair's version; with `wait`, waits up to
    /// [`GAP_WAIT`] for it, else [`Error::Gap`]. Files copied and bytes.
    pub(crate) async fn apply_repair(
        &self,
        r: &ReplicaDpo,
        source: &ImportSource,
        repair: Repair,
        stamp: Stamp,
    ) -> Result<(u64, u64)> {
        let started = std::time::Instant::now();
        loop {
            let applied = self.inner.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            let cur = self.current_version(&repair.table)?;
            if cur >= repair.version {
                break;
            }
            if started.elapsed() >= GAP_WAIT {
                return Err(Error::Gap {
                    table: repair.table.to_string(),
                    have: cur,
                    base: repair.version,
                });
            }
            tokio::select! {
                () = &mut applied => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.commit_repair(r, source, repair, stamp).await
    }

    /// Commits `repair` under the table's lock, at the table's current version (exactly
    /// the repair's with `exact`, else at or after it): a file is put back unless it is
    /// active here or was removed by a version after the repair's (the upstream removed
    /// it since: putting it back would undo that); a file is ended when it is active. A
    /// repair that finds nothing to do commits nothing. Files copied and bytes.
    async fn commit_repair(
        &self,
        r: &ReplicaDpo,
        source: &ImportSource,
        repair: Repair,
        stamp: Stamp,
    ) -> Result<(u64, u64)> {
        let Repair {
            table,
            version,
            exact,
            add,
            remove,
            landed,
        } = repair;
        if add.is_empty() && remove.is_empty() {
            return Ok((0, 0));
        }
        let p = &self.inner.p;
        let mut txn = p.tables.committer().begin(&r.account).await?;
        txn.replicated(&r.database, stamp);
        if let Err(e) = txn.lock(&[table_lock(&table)]).await {
            txn.abort().await;
            return Err(e.into());
        }
        let result = async {
            let current = self.current_version(&table)?;
            if current < version || (exact && current != version) {
                // A replicated change landed meanwhile (or the table went): not ours.
                return Ok(None);
            }
            let (put_back, remove) = self.meta().read(|tx| {
                let mut put_back = Vec::new();
                for m in &add {
                    let keep_out = tx
                        .find_micro_partition(&table, &m.global_ref)?
                        .is_some_and(|here| here.removed_version.is_none_or(|gone| gone > version));
                    put_back.push(!keep_out);
                }
                let mut end = Vec::new();
                for g in &remove {
                    if let Some(m) = tx.find_micro_partition(&table, g)?
                        && m.removed_version.is_none()
                    {
                        end.push(m);
                    }
                }
                Ok((put_back, end))
            })?;
            // Files copied ahead (an import's) that are not put back stay out; the import
            // deletes them with the rest of its batch's unused files.
            let add: Vec<MicroPartitionDpo> = add
                .into_iter()
                .zip(put_back)
                .filter_map(|(m, put)| put.then_some(m))
                .collect();
            if add.is_empty() && remove.is_empty() {
                return Ok(None);
            }
            let (mut added, tasks) = if landed {
                (add, Vec::new())
            } else {
                let (local, copy_in) = self
                    .plan_copy_in(r, source, &table, add, Some(txn.as_mut()), None)
                    .await?;
                let tasks = copy_in.tasks(&local);
                (local, tasks)
            };
            let copied = self.copy_tasks(tasks).await?;
            for m in &mut added {
                m.added_version = m.added_version.min(current);
            }
            let counts = (added.len(), remove.len());
            let change = Change::Repair(RepairChange {
                account: r.account.clone(),
                database: r.database.clone(),
                table: table.clone(),
                version: current,
                added,
                removed: remove,
                keys: p.tables.file_keys(&table).await?,
            });
            Ok(Some((change, copied, counts, current)))
        }
        .await;
        match result {
            Ok(Some((change, copied, (added, removed), at))) => {
                let committed = txn.commit(vec![change]).await;
                self.inner.applied.notify_waiters();
                committed?;
                Counters::add(&self.inner.counters.repairs, 1);
                tracing::warn!(%table, version = at, added, removed, "replica drift repaired");
                Ok((copied.files, copied.bytes))
            }
            Ok(None) => {
                txn.abort().await;
                Ok((0, 0))
            }
            Err(e) => {
                txn.abort().await;
                Err(e)
            }
        }
    }

    fn current_version(&self, table: &TableId) -> Result<u64> {
        Ok(self
            .meta()
            .read(|tx| tx.get_table(table))?
            .filter(|t| !t.dropped)
            .map_or(0, |t| t.current_version))
    }

    /// Marks the refresh of `job` done (figures when it imported something).
    pub(crate) fn finish_refresh(
        &self,
        job: &ImportJobDpo,
        imported: Option<(BTreeMap<TableId, u64>, u64, u64)>,
    ) -> Result<()> {
        let now = self.now();
        let request = job.response.request_id.clone();
        let taken = job.response.taken_at_ms;
        let seq = job.response.seq;
        self.with_replica(&job.response.group, |r| {
            if r.refresh.as_ref().is_some_and(|p| p.request_id == request) {
                r.refresh = None;
            }
            if let Some((versions, files, bytes)) = &imported {
                r.last_refresh_at_ms = Some(now);
                r.refreshes += 1;
                r.files_copied += files;
                r.bytes_copied += bytes;
                r.last_error = None;
                for (t, v) in versions {
                    let e = r.upstream_versions.entry(t.clone()).or_default();
                    *e = (*e).max(*v);
                }
                r.upstream_versions.retain(|t, _| versions.contains_key(t));
                r.upstream_commit_at_ms = Some(r.upstream_commit_at_ms.unwrap_or(taken).max(taken));
                r.applied_commit_at_ms = r.upstream_commit_at_ms;
                r.applied_seq = r.applied_seq.max(seq);
            }
        })
    }

    pub(crate) fn with_replica(&self, group: &str, f: impl Fn(&mut ReplicaDpo)) -> Result<()> {
        let Some(db) = self.local_database(group)? else {
            return Ok(());
        };
        self.meta().write(|tx| {
            if let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(&db.id))? {
                f(&mut r);
                tx.put(&keys::replica(&db.id), &r)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Deletes an inbound folder once its files are in the volume (best effort; what is
    /// left is logged).
    pub(crate) async fn remove_inbound(&self, peer: &DeploymentId, folder: &ResponseId) {
        let prefix = layout::replication::inbound_prefix(peer, folder);
        if let Err(e) = self.inner.p.bucket.delete_prefix(&prefix).await {
            tracing::warn!(%prefix, error = %e, "could not remove an inbound folder");
        }
    }

    /// Deletes the snapshot folders `peer` left in our inbound stage by attempts that
    /// never sent their response (a crash of its copy worker: it cannot delete in our
    /// bucket): those numbered before `current` with no import waiting for them. Newer
    /// folders may be copies still in progress and stay.
    pub(crate) async fn remove_stale_snapshots(&self, peer: &DeploymentId, current: &ResponseId) {
        let prefix = format!("rs-{peer}-");
        let number = |id: &str| id.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok());
        let Some(cur) = number(current.as_str()) else {
            return;
        };
        let root = layout::replication::sub_bucket(peer).join("inbound");
        let listed = match self.inner.p.bucket.list_with_delimiter(Some(&root)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(prefix = %root, error = %e, "could not list the inbound stage");
                return;
            }
        };
        for folder in listed.common_prefixes {
            let Some(name) = folder.filename().map(str::to_string) else {
                continue;
            };
            if number(&name).is_none_or(|n| n >= cur) {
                continue;
            }
            let Ok(id) = ResponseId::new(name.as_str()) else {
                continue;
            };
            let pending = self
                .meta()
                .read(|tx| tx.contains(&keys::import_job(peer, &id)))
                .unwrap_or(true);
            if !pending {
                tracing::info!(%peer, folder = %name, "removing an abandoned snapshot folder");
                self.remove_inbound(peer, &id).await;
            }
        }
    }

    /// Commits the dictionary changes the replica lacks (one transaction).
    pub(crate) async fn apply_dictionary(
        &self,
        r: &ReplicaDpo,
        changes: &[DictionaryChange],
        stamp: Stamp,
    ) -> Result<()> {
        let p = &self.inner.p;
        let schemas: BTreeSet<String> = self.meta().read(|tx| {
            Ok(tx
                .list_schemas(&r.database)?
                .into_iter()
                .map(|s| s.name)
                .collect())
        })?;
        let mut tables: BTreeMap<TableId, (TableId, bool)> = BTreeMap::new();
        for c in changes {
            if let DictionaryChange::CreateTable { table, .. }
            | DictionaryChange::DropTable { table } = c
            {
                tables.insert(table.clone(), self.local_table(&r.database, table)?);
            }
        }
        let now = self.now();
        let mut ops = Vec::new();
        let mut new_schemas = BTreeSet::new();
        for c in changes {
            match c {
                DictionaryChange::CreateSchema { name }
                    if !schemas.contains(name) && new_schemas.insert(name.clone()) =>
                {
                    ops.push(DictionaryOp::CreateSchema(SchemaDpo {
                        database: r.database.clone(),
                        name: name.clone(),
                        created_at_ms: now,
                    }));
                }
                DictionaryChange::DropSchema { name } if schemas.contains(name) => {
                    ops.push(DictionaryOp::DropSchema { name: name.clone() });
                }
                DictionaryChange::CreateTable {
                    table,
                    schema,
                    name,
                    columns,
                } if tables.get(table).is_some_and(|(_, exists)| !exists) => {
                    if !schemas.contains(schema) && new_schemas.insert(schema.clone()) {
                        ops.push(DictionaryOp::CreateSchema(SchemaDpo {
                            database: r.database.clone(),
                            name: schema.clone(),
                            created_at_ms: now,
                        }));
                    }
                    let dpo = p
                        .tables
                        .new_table(
                            &r.account,
                            &r.database,
                            tables[table].0.clone(),
                            schema,
                            name,
                            columns.clone(),
                        )
                        .await?;
                    ops.push(DictionaryOp::CreateTable(dpo));
                }
                DictionaryChange::DropTable { table }
                    if tables.get(table).is_some_and(|(_, exists)| *exists) =>
                {
                    ops.push(DictionaryOp::DropTable {
                        table: tables[table].0.clone(),
                    });
                }
                _ => {}
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let mut txn = p.tables.committer().begin(&r.account).await?;
        txn.replicated(&r.database, stamp);
        let changes = ops
            .into_iter()
            .map(|op| Change::Dictionary {
                account: r.account.clone(),
                database: r.database.clone(),
                op,
            })
            .collect();
        txn.commit(changes).await?;
        Ok(())
    }

    /// Runs copies (at most `copy_concurrency` at once) and counts them.
    async fn copy_tasks(&self, tasks: Vec<CopyTask>) -> Result<crate::copy::Copied> {
        let copied = copy_all(tasks, self.inner.p.config.copy_concurrency).await?;
        Counters::add(&self.inner.counters.files_copied, copied.files);
        Counters::add(&self.inner.counters.bytes_copied, copied.bytes);
        Ok(copied)
    }

    /// The local entries of `add` under new `_g` short names in the volume (`fdn<n>_g`,
    /// `n` from `first_name` on when given — names an import reserved — else fresh),
    /// their files not copied yet, and how to copy them in from the inbound folder (their
    /// destinations journaled in `journal` when given). The upstream entries are
    /// consumed: each local entry takes its statistics, reference and added version over
    /// instead of a copy, and its copy task is made only when it runs (a table of 100 000
    /// files is held as one list while it is planned and committed).
    async fn plan_copy_in(
        &self,
        r: &ReplicaDpo,
        source: &ImportSource,
        table: &TableId,
        add: Vec<MicroPartitionDpo>,
        journal: Option<&mut dyn tern_table::commit::FileJournal>,
        first_name: Option<u64>,
    ) -> Result<(Vec<MicroPartitionDpo>, CopyIn)> {
        let p = &self.inner.p;
        let dst = p.tables.file_keys(table).await?;
        // The copy is sealed under this deployment's table key: its reference names that
        // key, never the source's.
        let key_ref = tern_table::mp::key_ref(&dst);
        let copy_in = CopyIn {
            src_store: Arc::clone(&p.bucket),
            peer: source.peer.clone(),
            folder: source.folder.clone(),
            src_keys: Arc::clone(&source.keys) as Arc<dyn KeySource>,
            dst_store: Arc::clone(&p.volume),
            account: r.account.clone(),
            database: r.database.clone(),
            dst_keys: dst,
        };
        let mut local = Vec::with_capacity(add.len());
        for (j, up) in add.into_iter().enumerate() {
            let seq = match first_name {
                Some(first) => first + j as u64,
                None => p.meta.next_unique("short_name")?,
            };
            let short = reserved_name(seq)?;
            let path = layout::volume::mp(&r.account, &r.database, table, &short);
            local.push(MicroPartitionDpo {
                table: table.clone(),
                short,
                global_ref: up.global_ref,
                rows: up.rows,
                bytes: up.bytes,
                stats: up.stats,
                added_version: up.added_version,
                removed_version: None,
                path: path.to_string(),
                key_ref: key_ref.clone(),
            });
        }
        // Journaled before any is written, all in one record (one metadata transaction
        // for the table's files instead of one each).
        if let Some(j) = journal
            && !local.is_empty()
        {
            let paths: Vec<Path> = local.iter().map(|m| copy_in.dst_path(m)).collect();
            j.will_write_all(&paths).await?;
        }
        Ok((local, copy_in))
    }

    /// Brings each table from `step.base` to `step.version` in one transaction: rolls a
    /// table back to `base` when it is past it, skips tables already at `version`, copies
    /// the added files in, resolves removed global references. [`Error::Gap`] when a
    /// table is below `base`; with `wait`, first waits up to [`GAP_WAIT`] for it.
    pub(crate) async fn apply_steps(
        &self,
        r: &ReplicaDpo,
        source: &ImportSource,
        steps: Vec<TableStep>,
        wait: bool,
        stamp: Stamp,
    ) -> Result<Applied> {
        let p = &self.inner.p;
        let mut steps: Vec<TableStep> = steps;
        // Skip what is applied; wait (unlocked) for predecessors.
        let started = std::time::Instant::now();
        loop {
            // Registered before the check, so that a commit in between is not missed.
            let applied = self.inner.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            let mut gap = None;
            steps.retain(|s| match self.current_version(&s.table) {
                Ok(cur) if cur >= s.version => {
                    Counters::add(&self.inner.counters.records_skipped, 1);
                    false
                }
                Ok(cur) if cur < s.base => {
                    gap.get_or_insert(Error::Gap {
                        table: s.table.to_string(),
                        have: cur,
                        base: s.base,
                    });
                    true
                }
                _ => true,
            });
            match gap {
                None => break,
                Some(_) if wait && started.elapsed() < GAP_WAIT => {
                    tokio::select! {
                        () = &mut applied => {}
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                Some(e) => return Err(e),
            }
        }
        if steps.is_empty() {
            return Ok(Applied::default());
        }
        let mut txn = p.tables.committer().begin(&r.account).await?;
        txn.replicated(&r.database, stamp);
        let locks: Vec<String> = steps.iter().map(|s| table_lock(&s.table)).collect();
        if let Err(e) = txn.lock(&locks).await {
            txn.abort().await;
            return Err(e.into());
        }
        let result = async {
            let mut changes = Vec::new();
            let mut applied = Applied::default();
            let mut tasks = Vec::new();
            for s in steps.iter_mut() {
                let cur = self.current_version(&s.table)?;
                if cur >= s.version {
                    continue;
                }
                if cur < s.base {
                    return Err(Error::Gap {
                        table: s.table.to_string(),
                        have: cur,
                        base: s.base,
                    });
                }
                if cur > s.base {
                    let undone = self
                        .meta()
                        .write(|tx| tx.rollback_table_to(&s.table, s.base))?;
                    let files: Vec<Path> = undone
                        .unreferenced_paths()
                        .iter()
                        .map(|p| Path::from(p.as_str()))
                        .collect();
                    tern_table::commit::remove_files(p.volume.as_ref(), &files).await;
                    tracing::info!(table = %s.table, from = cur, to = s.base, "rolled back to apply a replicated change");
                }
                let removed = self.meta().read(|tx| {
                    let mut out = Vec::with_capacity(s.remove.len());
                    for g in &s.remove {
                        match tx.find_micro_partition(&s.table, g)? {
                            Some(m) if m.removed_version.is_none() => {
                                out.push(m)
                            }
                            _ => return Ok(Err(g.clone())),
                        }
                    }
                    Ok(Ok(out))
                })?;
                let removed = removed.map_err(|g| Error::Drift {
                    table: s.table.to_string(),
                    reason: format!("the change removes {g}, which is not active here"),
                })?;
                // The upstream's entries become the local ones (taken, not copied): a
                // large table's list is held once while it is planned and committed.
                let add = std::mem::take(&mut s.add);
                let added = if s.landed {
                    add
                } else {
                    let (local, copy_in) = self
                        .plan_copy_in(r, source, &s.table, add, Some(txn.as_mut()), None)
                        .await?;
                    tasks.extend(copy_in.tasks(&local));
                    local
                };
                applied.tables += 1;
                changes.push(Change::Table(TableChange {
                    account: r.account.clone(),
                    database: r.database.clone(),
                    table: s.table.clone(),
                    base_version: s.base,
                    rebase: false,
                    version: Some(s.version),
                    added,
                    removed,
                    columns: s.columns.clone(),
                    add_column: s.add_column.clone(),
                    rows: 0,
                    keys: p.tables.file_keys(&s.table).await?,
                }));
            }
            // Every table's files at once: a change of many tables with a file or two
            // each is not copied one table after the other.
            let copied = self.copy_tasks(tasks).await?;
            applied.files += copied.files;
            applied.bytes += copied.bytes;
            self.crash_point(crash::APPLY_COPIED)?;
            Ok((changes, applied))
        }
        .await;
        match result {
            Ok((changes, applied)) if !changes.is_empty() => {
                let committed = txn.commit(changes).await;
                self.inner.applied.notify_waiters();
                committed?;
                Ok(applied)
            }
            Ok((_, applied)) => {
                txn.abort().await;
                Ok(applied)
            }
            Err(e) => {
                txn.abort().await;
                Err(e)
            }
        }
    }

    /// Asks for a refresh of the replica of `group` (a gap or drift was found).
    pub(crate) fn refresh_for(&self, group: &str, reason: &str) -> Result<()> {
        if let Some(r) = self.replica_of(group)? {
            self.ask_refresh(&r.database, reason, false)?;
        }
        Ok(())
    }
}

/// How often an import waiting for a file to land looks for it at most.
const LANDING_POLL: Duration = Duration::from_millis(50);
/// How often a waiting import looks at its job row and the upstream's marker.
const LANDING_CHECK_MS: i64 = 250;

/// The files of one response landing in the inbound stage, as an import waits for them:
/// a streamed response is sent before its files are copied (see [`model::copied_path`]).
pub(crate) struct Landing {
    key: tern_meta::Key,
    response: ResponseId,
    marker: Path,
    timeout: Duration,
    /// Every file is in: the response came after its files, or the marker was seen.
    complete: AtomicBool,
    /// When a file last landed (or the wait began), and when the job row and the marker
    /// were last looked at (local clock).
    seen: std::sync::Mutex<(i64, i64)>,
}

impl Landing {
    fn new(repl: &Replication, key: &tern_meta::Key, job: &ImportJobDpo) -> Self {
        let res = &job.response;
        Landing {
            key: key.clone(),
            response: res.response_id.clone(),
            marker: model::copied_path(&job.peer, &res.response_id),
            timeout: repl.inner.p.config.landing_timeout,
            complete: AtomicBool::new(!res.streamed),
            seen: std::sync::Mutex::new((repl.now(), i64::MIN)),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, (i64, i64)> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Replication {
    /// Starts the batch of the import at `key` whose first table is `tables[0]`: tables
    /// until `budget` files (added and removed) are gathered, the last one whole, and a
    /// name reserved for each file it adds — stored with the job in one transaction.
    fn begin_batch(
        &self,
        key: &tern_meta::Key,
        tables: &[model::TableHead],
        budget: u64,
    ) -> Result<ImportBatch> {
        let (mut n, mut gathered, mut adds) = (0u64, 0u64, 0u64);
        for t in tables {
            n += 1;
            gathered += t.adds + t.removes;
            adds += t.adds;
            if gathered >= budget {
                break;
            }
        }
        Ok(self.meta().write(|tx| {
            let last = tx.reserve_sequence("short_name", adds.max(1))?;
            let batch = ImportBatch {
                tables: n,
                first_name: last + 1 - adds.max(1),
            };
            if let Some(mut cur) = tx.get::<ImportJobDpo>(key)? {
                cur.batch = Some(batch);
                tx.put(key, &cur)?;
            }
            Ok(batch)
        })?)
    }

    /// Deletes the files of the reserved names (per table, a range of `n` in `fdn<n>_g`)
    /// that no table version holds.
    async fn remove_uncommitted(
        &self,
        account: &AccountId,
        database: &DatabaseId,
        reserved: &[(TableId, std::ops::Range<u64>)],
    ) -> Result<()> {
        if reserved.iter().all(|(_, names)| names.is_empty()) {
            return Ok(());
        }
        let gone: Vec<Path> = self.meta().read(|tx| {
            let mut out = Vec::new();
            for (t, names) in reserved {
                for n in names.clone() {
                    let short = reserved_name(n).map_err(|e| tern_meta::Error::Invalid {
                        what: "reserved name",
                        reason: e.to_string(),
                    })?;
                    if tx.get_micro_partition(t, &short)?.is_none() {
                        out.push(layout::volume::mp(account, database, t, &short));
                    }
                }
            }
            Ok(out)
        })?;
        tern_table::commit::remove_files(self.inner.p.volume.as_ref(), &gone).await;
        Ok(())
    }

    /// Deletes what the batch under way of an import job that is dropped (abandoned,
    /// superseded, no longer fitting) copied into the volume and did not commit.
    pub(crate) async fn drop_batch_files(&self, job: &ImportJobDpo) {
        let Some(batch) = job.batch else {
            return;
        };
        let dropped = async {
            // The replica's database, or after a promotion the same database as primary.
            let (account, database) = match self.replica_of(&job.response.group)? {
                Some(r) => (r.account, r.database),
                None => match self.local_database(&job.response.group)? {
                    Some(d) => (d.account, d.id),
                    None => return Ok(()),
                },
            };
            let start = usize::try_from(job.tables_done).unwrap_or(usize::MAX);
            let span = usize::try_from(batch.tables).unwrap_or(usize::MAX);
            let mut name = batch.first_name;
            let mut reserved = Vec::new();
            for t in job.response.tables.iter().skip(start).take(span) {
                let (local, exists) = self.local_table(&database, &t.table)?;
                if exists {
                    reserved.push((local, name..name + t.adds));
                }
                name += t.adds;
            }
            self.remove_uncommitted(&account, &database, &reserved)
                .await
        };
        if let Err(e) = dropped.await {
            tracing::warn!(response = %job.response.response_id, error = %e, "could not remove the files of a dropped import");
        }
    }

    /// Copies the file of every local entry from the inbound stage into the volume (its
    /// task made when it starts), each as soon as it has landed, at most `copy_concurrency` at once; a file already at its destination
    /// (copied by an interrupted attempt under the same reserved name: a copy is published
    /// only whole) is not copied again. The first failure stops the rest.
    async fn copy_landed(
        &self,
        landing: &Arc<Landing>,
        files: Vec<(&CopyIn, &MicroPartitionDpo)>,
    ) -> Result<crate::copy::Copied> {
        let concurrency = self.inner.p.config.copy_concurrency.max(1);
        let mut pending = files.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut done = crate::copy::Copied::default();
        let mut failure = None;
        loop {
            // A failover wants the importer: the copies under way are dropped (a copy is
            // published only whole; the batch commits nothing) and made again after it.
            let drain = self.inner.drain_wake.notified();
            tokio::pin!(drain);
            drain.as_mut().enable();
            if failure.is_none() && self.inner.draining.load(Ordering::Acquire) > 0 {
                running.abort_all();
                failure = Some(Error::Paused {
                    response: landing.response.to_string(),
                });
            }
            while failure.is_none() && running.len() < concurrency {
                let Some((copy_in, m)) = pending.next() else {
                    break;
                };
                let t = copy_in.task(m);
                let (repl, landing) = (self.clone(), Arc::clone(landing));
                running.spawn(async move { repl.land_and_copy(&landing, t).await });
            }
            let joined = tokio::select! {
                joined = running.join_next() => joined,
                () = &mut drain => continue,
            };
            let Some(joined) = joined else {
                break;
            };
            match joined {
                Ok(Ok(Some(b))) => {
                    done.files += 1;
                    done.bytes += b;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(Error::invalid("import copy", e.to_string()));
                }
            }
        }
        Counters::add(&self.inner.counters.files_copied, done.files);
        Counters::add(&self.inner.counters.bytes_copied, done.bytes);
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// One file of [`Replication::copy_landed`]: bytes written, `None` when it was there.
    async fn land_and_copy(&self, landing: &Landing, t: CopyTask) -> Result<Option<u64>> {
        match t.dst_store.meta(&t.dst_path).await {
            Ok(_) => return Ok(None),
            Err(tern_storage::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.wait_landed(landing, &t.src_path).await?;
        let bytes = crate::copy::copy_one(t).await?;
        self.crash_point(crash::IMPORT_FILE_COPIED)?;
        Ok(Some(bytes))
    }

    /// Waits until `path` has landed in the inbound stage, or every file of the response
    /// is in (then a missing `path` is the copy's error, naming it). [`Error::Superseded`]
    /// when the job was dropped meanwhile; an error when no file landed for
    /// `landing_timeout` or a failover is waiting for the import.
    async fn wait_landed(&self, w: &Landing, path: &Path) -> Result<()> {
        let mut pause = Duration::from_millis(2);
        loop {
            if w.complete.load(Ordering::Acquire) {
                return Ok(());
            }
            match self.inner.p.bucket.meta(path).await {
                Ok(_) => {
                    w.seen().0 = self.now();
                    return Ok(());
                }
                Err(tern_storage::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.check_landing(w, path).await?;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LANDING_POLL);
        }
    }

    /// What a waiting import looks at now and then: the marker, its job row, the time
    /// since a file last landed, a failover waiting.
    async fn check_landing(&self, w: &Landing, path: &Path) -> Result<()> {
        let now = self.now();
        {
            let mut seen = w.seen();
            if now.saturating_sub(seen.1) < LANDING_CHECK_MS {
                return Ok(());
            }
            seen.1 = now;
            let timeout = i64::try_from(w.timeout.as_millis()).unwrap_or(i64::MAX);
            if now.saturating_sub(seen.0) > timeout {
                return Err(Error::invalid(
                    format!("import of {}", w.response),
                    format!(
                        "no file of it landed in the inbound stage for {:?}; {path} is still missing (the upstream's copy stopped)",
                        w.timeout
                    ),
                ));
            }
        }
        if self.inner.draining.load(Ordering::Acquire) > 0 {
            return Err(Error::Paused {
                response: w.response.to_string(),
            });
        }
        match self.inner.p.bucket.meta(&w.marker).await {
            Ok(_) => {
                w.complete.store(true, Ordering::Release);
                return Ok(());
            }
            Err(tern_storage::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match self.meta().read(|tx| tx.get::<ImportJobDpo>(&w.key))? {
            Some(j) if !j.superseded => Ok(()),
            _ => Err(Error::Superseded {
                response: w.response.to_string(),
            }),
        }
    }
}

impl std::fmt::Debug for ImportSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportSource")
            .field("peer", &self.peer)
            .field("folder", &self.folder)
            .finish_non_exhaustive()
    }
}

/// Reads a snapshot's sections file as a stream: a line (one [`TableSection`]) at a time,
/// holding no more than a read-ahead block and the table being gathered.
pub(crate) struct SectionReader {
    stream: futures::stream::BoxStream<'static, tern_crypto::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    ended: bool,
    read: u64,
    path: String,
}

impl SectionReader {
    async fn open(
        store: &Arc<dyn object_store::ObjectStore>,
        path: &Path,
        keys: &dyn KeySource,
    ) -> Result<Self> {
        let obj = tern_crypto::EncryptedObject::open(Arc::clone(store), path, keys).await?;
        Ok(SectionReader {
            stream: obj.into_stream(&tern_crypto::CopyOptions::default()),
            buf: Vec::new(),
            ended: false,
            read: 0,
            path: path.to_string(),
        })
    }

    /// Sections read so far.
    fn read(&self) -> u64 {
        self.read
    }

    fn bad(&self, reason: impl std::fmt::Display) -> Error {
        Error::invalid("snapshot sections file", format!("{}: {reason}", self.path))
    }

    /// The next section, `None` at the end.
    async fn next(&mut self) -> Result<Option<TableSection>> {
        use futures::StreamExt as _;
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                // Its format is the manifest's (checked when the manifest was read).
                let section = serde_json::from_slice::<TableSection>(&line[..end])
                    .map_err(|e| self.bad(format!("section {}: {e}", self.read + 1)))?;
                self.read += 1;
                return Ok(Some(section));
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.bad("it ends inside a section"));
            }
            match self.stream.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => self.ended = true,
            }
        }
    }

    /// Skips `n` sections (imported by an earlier attempt).
    async fn skip(&mut self, n: u64) -> Result<()> {
        while self.read < n {
            if self.next().await?.is_none() {
                return Err(self.bad(format!(
                    "it ends after {} sections, {n} were imported",
                    self.read
                )));
            }
        }
        Ok(())
    }

    /// The difference of `table`: its next sections, until `adds` files added and
    /// `removes` removed are gathered.
    async fn table(
        &mut self,
        table: &TableId,
        adds: u64,
        removes: u64,
    ) -> Result<(Vec<MicroPartitionDpo>, Vec<GlobalFileRef>)> {
        let mut add = Vec::with_capacity(usize::try_from(adds).unwrap_or(0));
        let mut remove = Vec::with_capacity(usize::try_from(removes).unwrap_or(0));
        while (add.len() as u64) < adds || (remove.len() as u64) < removes {
            let Some(s) = self.next().await? else {
                return Err(self.bad(format!("it ends before the files of {table}")));
            };
            if s.table != *table {
                return Err(self.bad(format!(
                    "a section of {} where the files of {table} were due",
                    s.table
                )));
            }
            add.extend(s.add);
            remove.extend(s.remove);
        }
        if add.len() as u64 != adds || remove.len() as u64 != removes {
            return Err(self.bad(format!(
                "{table}: {} files added and {} removed, the manifest says {adds} and {removes}",
                add.len(),
                remove.len()
            )));
        }
        Ok((add, remove))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_storage::layout::ShortName;

    fn mp(table: &str, short: &str) -> MicroPartitionDpo {
        let origin = DeploymentId::new("d1").unwrap();
        MicroPartitionDpo {
            table: TableId::new(table).unwrap(),
            short: ShortName::new(short).unwrap(),
            global_ref: GlobalFileRef::new(origin, ShortName::new(short).unwrap()),
            rows: 1,
            bytes: 1,
            stats: Vec::new(),
            added_version: 0,
            removed_version: None,
            path: short.into(),
            key_ref: String::new(),
        }
    }

    fn step(table: &str, base: u64, version: u64, add: &[&str], remove: &[&str]) -> TableStep {
        TableStep {
            table: TableId::new(table).unwrap(),
            base,
            version,
            columns: Vec::new(),
            add_column: None,
            add: add.iter().map(|s| mp(table, s)).collect(),
            remove: remove.iter().map(|s| mp(table, s).global_ref).collect(),
            landed: false,
        }
    }

    fn shorts(refs: impl IntoIterator<Item = GlobalFileRef>) -> Vec<String> {
        refs.into_iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn changes_of_one_table_in_one_transaction_fold_into_one_step() {
        let merged = merge_steps(vec![
            step("t1", 4, 5, &["fa", "fb"], &["f0"]),
            step("t2", 7, 8, &["fx"], &[]),
            // Removes fa (added by this transaction: never copied) and f1 (older).
            step("t1", 5, 6, &["fc"], &["fa", "f1"]),
        ])
        .unwrap();
        assert_eq!(merged.len(), 2);
        let t1 = &merged[0];
        assert_eq!((t1.base, t1.version), (4, 6));
        assert_eq!(
            shorts(t1.add.iter().map(|m| m.global_ref.clone())),
            shorts([mp("t1", "fb").global_ref, mp("t1", "fc").global_ref])
        );
        assert_eq!(
            shorts(t1.remove.clone()),
            shorts([mp("t1", "f0").global_ref, mp("t1", "f1").global_ref])
        );
        assert_eq!((merged[1].base, merged[1].version), (7, 8));
    }

    use proptest::prelude::*;

    /// One transaction's changes over a few tables: per change, which of the table's live
    /// files it removes (a bit mask over them) and how many new ones it adds.
    fn transactions() -> impl Strategy<Value = (Vec<u8>, Vec<(usize, u64, u8)>)> {
        (
            // Files each of three tables holds before the transaction.
            proptest::collection::vec(0u8..6, 3),
            // (table, removal mask, files added), in commit order.
            proptest::collection::vec((0usize..3, any::<u64>(), 0u8..4), 0..12),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(17), ..ProptestConfig::default() })]

        /// Applying the folded step gives the same files as applying every change in
        /// turn, per table; it never removes a file the transaction added itself (that
        /// file was never copied), never adds one it removed, and spans the first base
        /// to the last version.
        #[test]
        fn a_folded_step_lands_where_the_changes_one_by_one_land(
            (initial, changes) in transactions()
        ) {
            let tables = ["t0", "t1", "t2"];
            let mut live: Vec<BTreeSet<String>> = initial
                .iter()
                .enumerate()
                .map(|(t, n)| (0..*n).map(|i| format!("old{t}x{i}")).collect())
                .collect();
            let start = live.clone();
            let mut version = [10u64, 20, 30];
            let mut steps = Vec::new();
            let mut fresh = 0;
            for (t, mask, adds) in changes {
                let remove: Vec<String> = live[t]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
                    .map(|(_, f)| f.clone())
                    .collect();
                let add: Vec<String> = (0..adds)
                    .map(|_| {
                        fresh += 1;
                        format!("new{fresh}")
                    })
                    .collect();
                for f in &remove {
                    live[t].remove(f);
                }
                live[t].extend(add.iter().cloned());
                let r: Vec<&str> = remove.iter().map(String::as_str).collect();
                let a: Vec<&str> = add.iter().map(String::as_str).collect();
                steps.push(step(tables[t], version[t], version[t] + 1, &a, &r));
                version[t] += 1;
            }
            let merged = merge_steps(steps).unwrap();
            for (t, name) in tables.iter().enumerate() {
                let Some(s) = merged.iter().find(|s| s.table.as_str() == *name) else {
                    prop_assert_eq!(&live[t], &start[t], "untouched table {}", name);
                    continue;
                };
                prop_assert_eq!((s.base, s.version), ([10u64, 20, 30][t], version[t]));
                let ref_of = |f: &str| mp(name, f).global_ref.to_string();
                let removed: BTreeSet<String> = s.remove.iter().map(|g| g.to_string()).collect();
                let added: BTreeSet<String> =
                    s.add.iter().map(|m| m.global_ref.to_string()).collect();
                prop_assert_eq!(added.len(), s.add.len(), "a file added twice");
                let before: BTreeSet<String> = start[t].iter().map(|f| ref_of(f)).collect();
                prop_assert!(removed.is_subset(&before), "removes a file of this transaction");
                prop_assert!(added.is_disjoint(&before));
                let folded: BTreeSet<String> =
                    before.difference(&removed).cloned().chain(added).collect();
                let one_by_one: BTreeSet<String> = live[t].iter().map(|f| ref_of(f)).collect();
                prop_assert_eq!(folded, one_by_one, "table {}", name);
            }
        }
    }

    /// Sections written as a stream read back a table at a time; a file whose sections do
    /// not match the manifest, or that ends inside a line, is a named error.
    #[tokio::test]
    async fn sections_stream_back_by_table_and_bad_files_are_named() {
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let keys = tern_crypto::ReplicationFileKeys::new(Arc::new(tern_crypto::RepMk::from_bytes(
            [7; 32],
        )));
        let path = Path::from("from/d1/inbound/rs-d1-1/sections");
        let t1 = TableId::new("t1").unwrap();
        let t2 = TableId::new("t2").unwrap();
        let files: Vec<MicroPartitionDpo> = (0..5).map(|i| mp("t1", &format!("f{i}"))).collect();
        let refs: Vec<&MicroPartitionDpo> = files.iter().collect();
        let gone = vec![mp("t2", "g0").global_ref, mp("t2", "g1").global_ref];
        let sections: Vec<TableSection> = crate::source::section_iter(&t1, &refs, &[], 2)
            .chain(crate::source::section_iter(&t2, &[], &gone, 2))
            .collect();
        let n = crate::source::write_sections(
            &store,
            &path,
            &keys,
            Box::new(sections.into_iter().map(Ok)),
        )
        .await
        .unwrap();
        assert_eq!(n, 4, "5 files in sections of 2, then 2 removals");
        let mut r = SectionReader::open(&store, &path, &keys).await.unwrap();
        let (add, remove) = r.table(&t1, 5, 0).await.unwrap();
        assert_eq!(add, files);
        assert!(remove.is_empty());
        assert_eq!(r.read(), 3);
        let (add, remove) = r.table(&t2, 0, 2).await.unwrap();
        assert!(add.is_empty());
        assert_eq!(remove, gone);
        assert!(r.next().await.unwrap().is_none());

        // Resuming after the first table's sections.
        let mut r = SectionReader::open(&store, &path, &keys).await.unwrap();
        r.skip(3).await.unwrap();
        assert_eq!(r.table(&t2, 0, 2).await.unwrap().1, gone);
        // A manifest that expects another table first.
        let mut r = SectionReader::open(&store, &path, &keys).await.unwrap();
        let e = r.table(&t2, 0, 2).await.unwrap_err().to_string();
        assert!(
            e.contains("a section of t1 where the files of t2 were due"),
            "{e}"
        );
        // More files than the manifest says.
        let mut r = SectionReader::open(&store, &path, &keys).await.unwrap();
        let e = r.table(&t1, 3, 0).await.unwrap_err().to_string();
        assert!(
            e.contains("t1: 4 files added and 0 removed, the manifest says 3"),
            "{e}"
        );

        // A file cut inside a line.
        let cut = Path::from("from/d1/inbound/rs-d1-2/sections");
        let mut half: &[u8] = br#"{"table":"t1","remove":[{"origin":"d1","#;
        tern_crypto::upload_encrypted(
            &store,
            &cut,
            &keys,
            &mut half,
            &tern_crypto::EncryptOptions::default(),
            &tern_crypto::CopyOptions::default(),
        )
        .await
        .unwrap();
        let mut r = SectionReader::open(&store, &cut, &keys).await.unwrap();
        let e = r.next().await.unwrap_err().to_string();
        assert!(
            e.contains("ends inside a section") && e.contains("rs-d1-2"),
            "{e}"
        );
    }

    #[test]
    fn changes_that_do_not_follow_each_other_are_refused_by_table() {
        let err =
            merge_steps(vec![step("t1", 4, 5, &[], &[]), step("t1", 6, 7, &[], &[])]).unwrap_err();
        assert!(
            err.contains("t1") && err.contains("from version 6"),
            "{err}"
        );
    }
}
