//! The source side: answering refresh requests with snapshots (copy workers put the
//! difference into the replica's inbound stage) and shipping log records.
//!
//! ```text
//!  refresh request ─(handler)─▶ SnapshotJob ─(copy worker)─▶ one consistent read:
//!      tables, versions, active files, log position ─▶ difference per table
//!      ─▶ files re-encrypted volume → peer inbound (HKDF(RepMK, path))
//!      ─▶ the difference streamed as a sections file into the same inbound folder
//!      ─▶ response message (manifest in body 0) ─▶ downstream cursor = log position
//!  (a replica that imports files as they land: the sections file and the response
//!   first, then the files, then the `copied` marker, then the downstream cursor)
//!  shipper: per downstream, log records after the cursor up to the stable id
//!      ─▶ the database's changes ─▶ added files → peer inbound ─▶ log message ─▶ cursor
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tern_clock::Clock;
use tern_crypto::{
    CustomerPublicKey, KeySource, RepMk, ReplicationFileKeys, WrapContext, double_unwrap_repmk,
    double_wrap_repmk,
};
use tern_messaging::{Draft, OutState, channel_name};
use tern_meta::{DatabaseRole, MicroPartitionDpo};
use tern_storage::layout::{
    self, AccountId, DeploymentId, GlobalFileRef, MessageId, ResponseId, TableId,
};
use tern_table::ChangeRecord;
use tern_table::commit::DictionaryOp;

use crate::copy::{CopyTask, copy_all};
use crate::crash;
use crate::error::{Error, Result};
use crate::model::{
    self, LOG_TYPE, LogShipment, PAYLOAD_VERSION, SNAPSHOT_TYPE, SnapshotManifest, TableHead,
    TableSection, WrappedRepMk, canonical_table_id, replica_table_id,
};
use crate::peers::Peers;
use crate::service::{Counters, Replication};
use crate::state::{DownstreamDpo, SnapshotJobDpo, SnapshotSent, keys};

/// A fixed instant, for judging a diversifier at the time its message arrived.
#[derive(Debug)]
pub(crate) struct At(pub(crate) i64);

impl Clock for At {
    fn now_millis(&self) -> i64 {
        self.0
    }
}

impl Replication {
    /// A fresh RepMK for files going to `peer` under `name`, wrapped for it (and sealed to
    /// `customer`, the receiving account's key, when it has one).
    async fn new_repmk(
        &self,
        peer: &DeploymentId,
        name: &str,
        customer: Option<&CustomerPublicKey>,
    ) -> Result<(Arc<ReplicationFileKeys>, WrappedRepMk)> {
        let p = &self.inner.p;
        let repmk = RepMk::generate(p.random.as_ref())?;
        let diversifier = self.inner.policy.current(&*p.clock);
        let wk = p.wrap_keys.get(diversifier).await?;
        let ctx = WrapContext::new(channel_name(&p.me, peer), name).with_diversifier(diversifier);
        let wrapped = match customer {
            None => WrappedRepMk {
                diversifier,
                wrapped: wk.wrap_repmk(&repmk, &ctx, p.random.as_ref())?.to_hex(),
                sealed: None,
            },
            Some(public) => WrappedRepMk {
                diversifier,
                wrapped: String::new(),
                sealed: Some(double_wrap_repmk(
                    &repmk,
                    &wk,
                    &ctx,
                    public,
                    p.random.as_ref(),
                )?),
            },
        };
        Ok((Arc::new(ReplicationFileKeys::new(Arc::new(repmk))), wrapped))
    }

    /// The keys of files `peer` put into our inbound stage under `name` for `account`,
    /// after checking the diversifier as of `received_at_ms` (when the message carrying it
    /// arrived). A RepMK sealed to a customer key needs the account's key.
    pub(crate) async fn open_repmk(
        &self,
        peer: &DeploymentId,
        account: &AccountId,
        name: &str,
        w: &WrappedRepMk,
        received_at_ms: i64,
    ) -> Result<Arc<ReplicationFileKeys>> {
        let p = &self.inner.p;
        self.inner
            .policy
            .check(w.diversifier, &At(received_at_ms))?;
        let wk = p.wrap_keys.get(w.diversifier).await?;
        let ctx = WrapContext::new(channel_name(peer, &p.me), name).with_diversifier(w.diversifier);
        let repmk = match &w.sealed {
            Some(sealed) => {
                let key = self
                    .customer_key(account)?
                    .filter(|k| k.key_id() == sealed.key_id)
                    .ok_or_else(|| Error::CustomerKey {
                        account: account.to_string(),
                        reason: format!(
                            "{name} from {peer}: the RepMK is sealed to customer key {}, which the account does not hold here",
                            sealed.key_id
                        ),
                    })?;
                double_unwrap_repmk(sealed, key.as_ref(), &wk, &ctx).await?
            }
            None => {
                let wrapped = w.key().ok_or_else(|| Error::BadMessage {
                    message_type: "replication",
                    from: peer.clone(),
                    reason: format!("{name}: the wrapped RepMK is not hex"),
                })?;
                wk.unwrap_repmk(&wrapped, &ctx)?
            }
        };
        Ok(Arc::new(ReplicationFileKeys::new(Arc::new(repmk))))
    }

    /// Copies `files` of our volume into `peer`'s inbound folder `folder`, at most
    /// `copy_concurrency` at once.
    async fn to_inbound(
        &self,
        peer: &DeploymentId,
        folder: &ResponseId,
        files: &[&MicroPartitionDpo],
        keys: &Arc<ReplicationFileKeys>,
        peers: &dyn Peers,
    ) -> Result<crate::copy::Copied> {
        let p = &self.inner.p;
        let bucket = peers
            .bucket(peer)
            .ok_or_else(|| Error::NoPeer { peer: peer.clone() })?;
        let mut table_keys: BTreeMap<_, Arc<dyn KeySource>> = BTreeMap::new();
        let mut tasks = Vec::with_capacity(files.len());
        for mp in files.iter().copied() {
            let src_keys = match table_keys.get(&mp.table) {
                Some(k) => Arc::clone(k),
                None => {
                    let k: Arc<dyn KeySource> = p.tables.file_keys(&mp.table).await?;
                    table_keys.insert(mp.table.clone(), Arc::clone(&k));
                    k
                }
            };
            tasks.push(CopyTask {
                src_store: Arc::clone(&p.volume),
                src_path: tern_storage::Path::from(mp.path.as_str()),
                src_keys,
                dst_store: Arc::clone(&bucket),
                dst_path: layout::replication::inbound(&p.me, folder, &mp.global_ref),
                dst_keys: Arc::clone(keys) as Arc<dyn KeySource>,
            });
        }
        copy_all(tasks, p.config.copy_concurrency).await
    }

    fn count_copied(&self, files: u64, bytes: u64) {
        let c = &self.inner.counters;
        Counters::add(&c.files_copied, files);
        Counters::add(&c.bytes_copied, bytes);
    }

    /// Copy worker: answers the oldest waiting refresh request. How many it answered.
    pub(crate) async fn serve_snapshots(&self, peers: &dyn Peers) -> Result<usize> {
        // The oldest job of a peer that is not backing off: a peer whose storage fails
        // holds up no other peer's refresh.
        // A job backing off or failed (a poison request) holds up none behind it either.
        let now = self.now();
        let mut jobs = self
            .meta()
            .read(|tx| tx.scan_prefix::<SnapshotJobDpo>(&keys::snapshot_jobs()))?;
        // In the order they arrived (keys sort request ids as text: rq-…-10 before
        // rq-…-9): a replica's later request — following the log again, or not — is
        // answered after its earlier one, so its choice is the one that stays.
        jobs.sort_by_key(|(_, j)| j.received_at_ms);
        let Some((key, job)) = jobs
            .into_iter()
            .find(|(_, j)| j.retry.due(now) && !self.backing_off(&j.peer))
        else {
            return Ok(0);
        };
        if let Err(e) = self.serve_snapshot(&key, job.clone(), peers).await {
            self.peer_failed(&job.peer);
            // The attempt was counted when it began.
            self.job_attempt_failed(&key, &e, |j: &mut SnapshotJobDpo| {
                (j.attempts, &mut j.retry)
            })?;
            tracing::warn!(peer = %job.peer, request = %job.request.request_id, error = %e, "snapshot failed; will retry");
            if let Some(db) = self.local_database(&job.request.group)? {
                let msg = e.to_string();
                let dk = keys::downstream(&db.id, &job.peer);
                self.update_downstream(&dk, |d| d.last_error = Some(msg.clone()))?;
            }
            return Err(e);
        }
        Ok(1)
    }

    async fn serve_snapshot(
        &self,
        key: &tern_meta::Key,
        mut job: SnapshotJobDpo,
        peers: &dyn Peers,
    ) -> Result<()> {
        let p = &self.inner.p;
        let peer = job.peer.clone();
        let sender = peers
            .sender(&peer)
            .ok_or_else(|| Error::NoPeer { peer: peer.clone() })?;
        // An earlier attempt that got as far as sending: finish it (its source crashed
        // after sending, before recording the replica's position).
        let earlier = MessageId::new(job.response_id.as_str())?;
        match sender.message(&earlier).await? {
            Some(m) if m.state != OutState::Preparing => {
                match (job.sent, self.local_database(&job.request.group)?) {
                    (Some(sent), Some(db)) => {
                        self.snapshot_sent(key, &job, &db, sent)?;
                        return Ok(());
                    }
                    // A streamed answer cut short while its files were being copied: it
                    // is answered again from the start under a new id (the replica drops
                    // the earlier answer to the same request when the new one arrives).
                    (None, Some(_)) if job.request.stream => {}
                    _ => {
                        self.meta().write(|tx| tx.delete(key))?;
                        return Ok(());
                    }
                }
            }
            Some(_) => sender.abandon(&earlier).await?,
            None => {}
        }
        // A fresh inbound folder per attempt: files of an interrupted attempt are never
        // mixed with another key's.
        job.attempts += 1;
        job.response_id = ResponseId::new(self.next_id("rs")?)?;
        self.meta().write(|tx| tx.put(key, &job))?;

        let Some(db) = self.local_database(&job.request.group)? else {
            self.meta().write(|tx| tx.delete(key))?;
            return Err(Error::NotFound {
                what: "database of replication group",
                name: job.request.group.clone(),
            });
        };
        if db.role == DatabaseRole::Local {
            self.meta().write(|tx| tx.delete(key))?;
            return Err(Error::invalid(
                format!("refresh of {}", job.request.group),
                "the database is no longer replicated here",
            ));
        }
        if db.role == DatabaseRole::Secondary {
            // A chain link serves what it has imported, never a half-built first copy.
            let ready = self
                .meta()
                .read(|tx| tx.get::<crate::state::ReplicaDpo>(&keys::replica(&db.id)))?
                .is_some_and(|r| r.last_refresh_at_ms.is_some());
            if !ready {
                return Err(Error::invalid(
                    format!("refresh of {}", job.request.group),
                    "this replica has not imported its own first refresh yet; will answer after it",
                ));
            }
        }
        // One consistent read: every table at its current version (the names of its files,
        // not their rows: a table of 100 000 files is a few MiB of names), and the log
        // position those versions correspond to.
        let account = db.account.clone();
        let (schemas, tables, lamport, stable, seq, settled, epoch) = self.meta().read(|tx| {
            let schemas: Vec<String> = tx
                .list_schemas(&db.id)?
                .into_iter()
                .map(|s| s.name)
                .collect();
            let mut tables = Vec::new();
            for t in tx.list_tables(&db.id)? {
                if t.dropped {
                    continue;
                }
                let names = tx.active_short_names(&t.id, t.current_version)?;
                tables.push((t, names));
            }
            let lamport = tern_txn::last_txn_id(tx, &account)?;
            let stable = tern_txn::stable_log_id(tx, &account)?;
            let seq = tern_txn::database_seq(tx, &db.id)?;
            let settled = tern_txn::settled_database_seq(tx, &account, &db.id)?;
            let epoch = tx.get_database(&db.id)?.map_or(db.epoch, |d| d.epoch);
            Ok((schemas, tables, lamport, stable, seq, settled, epoch))
        })?;
        let have: BTreeMap<_, _> = job
            .request
            .tables
            .iter()
            .map(|t| (t.table.clone(), t))
            .collect();
        let name = job.response_id.to_string();
        let (file_keys, wrapped) = self
            .new_repmk(&peer, &name, job.request.customer_key.as_ref())
            .await?;
        // Per table, the difference, a page of `per_section` files at a time: the files
        // the replica lacks are copied page by page (first pass), then written as sections
        // from the same pages read again (second pass); only the names and the replica's
        // references that match no file (the removes) are held whole.
        let per_section = p.config.snapshot_section_files.max(1);
        // A replica that imports each file as it lands gets the plan first and the files
        // after it (copied in the order the sections file lists them).
        let stream = job.request.stream;
        let mut planned_bytes = 0u64;
        let mut heads = Vec::with_capacity(tables.len());
        let mut listed: Vec<Listed<'_>> = Vec::with_capacity(tables.len());
        let mut copied = crate::copy::Copied::default();
        for (t, names) in &tables {
            // A chain upstream's own tables may carry a local suffix: the wire has the
            // group-wide id.
            let id = replica_table_id(&p.me, &canonical_table_id(&t.id));
            let (answered, refs): (u64, BTreeSet<&GlobalFileRef>) = match have.get(&id) {
                Some(inv) => (inv.version, inv.refs.iter().collect()),
                None => (0, BTreeSet::new()),
            };
            let mut unmatched = refs.clone();
            let mut adds = 0u64;
            for chunk in names.chunks(per_section) {
                let page = self.file_page(&t.id, t.current_version, chunk)?;
                let add: Vec<&MicroPartitionDpo> = page
                    .iter()
                    .filter(|m| !refs.contains(&m.global_ref))
                    .collect();
                for m in &page {
                    unmatched.remove(&m.global_ref);
                }
                adds += add.len() as u64;
                if stream {
                    planned_bytes += add.iter().map(|m| m.bytes).sum::<u64>();
                    continue;
                }
                let c = self
                    .to_inbound(&peer, &job.response_id, &add, &file_keys, peers)
                    .await?;
                copied.files += c.files;
                copied.bytes += c.bytes;
            }
            let remove: Vec<GlobalFileRef> = unmatched.into_iter().cloned().collect();
            heads.push(TableHead {
                table: id.clone(),
                schema: t.schema.clone(),
                name: t.name.clone(),
                columns: t.columns.clone(),
                version: t.current_version,
                answered_version: answered,
                adds,
                removes: remove.len() as u64,
            });
            listed.push(Listed {
                id,
                table: &t.id,
                version: t.current_version,
                names,
                refs,
                remove,
            });
        }
        if !stream {
            self.crash_point(crash::SNAPSHOT_COPIED)?;
            self.count_copied(copied.files, copied.bytes);
        }
        // The difference, streamed into the sections file beside the files.
        let bucket = peers
            .bucket(&peer)
            .ok_or_else(|| Error::NoPeer { peer: peer.clone() })?;
        let sections = write_sections(
            &bucket,
            &model::sections_path(&p.me, &job.response_id),
            file_keys.as_ref(),
            Box::new(
                listed
                    .iter()
                    .flat_map(|l| self.listed_sections(l, per_section)),
            ),
        )
        .await?;
        let response = SnapshotManifest {
            v: PAYLOAD_VERSION,
            request_id: job.request.request_id.clone(),
            response_id: job.response_id.clone(),
            group: job.request.group.clone(),
            lamport,
            repmk: wrapped,
            schemas,
            tables: heads,
            sections,
            bytes: if stream { planned_bytes } else { copied.bytes },
            taken_at_ms: self.now(),
            epoch,
            seq,
            streamed: stream,
        };
        // The manifest grows with the tables (one entry each): it travels as a body file.
        let msg_id = MessageId::new(job.response_id.as_str())?;
        let head = model::encode(&SnapshotHead {
            v: PAYLOAD_VERSION,
            response_id: job.response_id.clone(),
        })?;
        let mut send = Some(async {
            sender
                .create(Draft::new(SNAPSHOT_TYPE, head).with_id(msg_id.clone()))
                .await?;
            sender
                .attach_body_bytes(&msg_id, &model::encode(&response)?)
                .await?;
            sender.mark_ready(&msg_id).await?;
            Ok::<_, Error>(())
        });
        if stream && let Some(send) = send.take() {
            // The plan goes first; the replica imports each file as it lands while the
            // rest are copied. `sent` is recorded only once every file is in: an attempt
            // cut short before is begun again (above).
            send.await?;
            self.crash_point(crash::SNAPSHOT_PLAN_SENT)?;
            for l in &listed {
                for chunk in l.names.chunks(per_section) {
                    let page = self.file_page(l.table, l.version, chunk)?;
                    let add: Vec<&MicroPartitionDpo> = page
                        .iter()
                        .filter(|m| !l.refs.contains(&m.global_ref))
                        .collect();
                    let c = self
                        .to_inbound(&peer, &job.response_id, &add, &file_keys, peers)
                        .await?;
                    copied.files += c.files;
                    copied.bytes += c.bytes;
                }
            }
            self.crash_point(crash::SNAPSHOT_COPIED)?;
            // The marker: every file is in (the replica reads only that it exists).
            let count = copied.files.to_string();
            tern_crypto::upload_encrypted(
                &bucket,
                &model::copied_path(&p.me, &job.response_id),
                file_keys.as_ref(),
                &mut count.as_bytes(),
                &tern_crypto::EncryptOptions::default(),
                &tern_crypto::CopyOptions::default(),
            )
            .await?;
            self.count_copied(copied.files, copied.bytes);
        }
        drop(listed);
        drop(tables);
        let sent = SnapshotSent {
            stable,
            settled,
            bytes: copied.bytes,
        };
        job.sent = Some(sent);
        self.meta().write(|tx| tx.put(key, &job))?;
        if let Some(send) = send.take() {
            send.await?;
        }
        self.crash_point(crash::SNAPSHOT_SENT)?;
        self.snapshot_sent(key, &job, &db, sent)?;
        self.publish(
            tern_monitor::AgentKind::Copy,
            tern_monitor::Unit {
                rows: 0,
                bytes: copied.bytes,
                files: copied.files,
                latency_ms: self.elapsed_ms(job.received_at_ms),
            },
        );
        tracing::info!(peer = %peer, group = %job.request.group, files = copied.files,
            bytes = copied.bytes, log_position = stable, "snapshot sent");
        Ok(())
    }

    /// The rows of `names`, files of `table` at `version` listed by one earlier read
    /// ([`tern_meta::MetaTxn::active_short_names`]), in one read. A row gone or no longer
    /// active at `version` (the version left retention, or a rollback undid it since) fails
    /// the attempt, which lists again: a snapshot never mixes two states of a table.
    fn file_page(
        &self,
        table: &TableId,
        version: u64,
        names: &[tern_storage::layout::ShortName],
    ) -> Result<Vec<MicroPartitionDpo>> {
        let page = self.meta().read(|tx| {
            let mut page = Vec::with_capacity(names.len());
            for short in names {
                match tx.get_micro_partition(table, short)? {
                    Some(m) if m.is_active_at(version) => page.push(m),
                    _ => return Ok(Err(short.clone())),
                }
            }
            Ok(Ok(page))
        })?;
        page.map_err(|short| {
            Error::invalid(
                format!("snapshot of {table}@{version}"),
                format!("{short} is no longer part of that version (the table changed while it was listed); will list again"),
            )
        })
    }

    /// The sections of one listed table: its added files a page at a time (pages read
    /// again, the files the replica holds left out), then its removes.
    fn listed_sections<'a>(
        &'a self,
        l: &'a Listed<'a>,
        per_section: usize,
    ) -> impl Iterator<Item = Result<TableSection>> + Send + 'a {
        let adds = l
            .names
            .chunks(per_section)
            .map(move |chunk| {
                let page = self.file_page(l.table, l.version, chunk)?;
                let add: Vec<MicroPartitionDpo> = page
                    .into_iter()
                    .filter(|m| !l.refs.contains(&m.global_ref))
                    .map(|mut m| {
                        m.table = l.id.clone();
                        m
                    })
                    .collect();
                Ok((!add.is_empty()).then(|| TableSection {
                    table: l.id.clone(),
                    add,
                    remove: Vec::new(),
                }))
            })
            .filter_map(Result::transpose);
        let removes = l.remove.chunks(per_section).map(move |chunk| {
            Ok(TableSection {
                table: l.id.clone(),
                add: Vec::new(),
                remove: chunk.to_vec(),
            })
        });
        adds.chain(removes)
    }

    /// Records that the snapshot of `job` was sent: the replica's downstream record (log
    /// position, subscription) and the request removed, in one transaction.
    fn snapshot_sent(
        &self,
        key: &tern_meta::Key,
        job: &SnapshotJobDpo,
        db: &tern_meta::DatabaseDpo,
        sent: SnapshotSent,
    ) -> Result<()> {
        let now = self.now();
        self.meta().write(|tx| {
            let dk = keys::downstream(&db.id, &job.peer);
            let mut d = tx.get::<DownstreamDpo>(&dk)?.unwrap_or(DownstreamDpo {
                database: db.id.clone(),
                account: db.account.clone(),
                group: job.request.group.clone(),
                peer: job.peer.clone(),
                peer_database: job.request.database.clone(),
                subscribed: false,
                customer_key: None,
                cursor: 0,
                records_shipped: 0,
                snapshots: 0,
                bytes_copied: 0,
                shipped_at_ms: None,
                last_error: None,
                shipping: None,
                shipped_seq: None,
                refresh_needed_since_ms: None,
            });
            // A refresh is what a replica behind the pruned log needed.
            d.refresh_needed_since_ms = None;
            d.shipped_seq = Some(d.shipped_seq.unwrap_or(0).max(sent.settled));
            if job.request.subscribe {
                // Shipping continues after the snapshot's log position (records at or below
                // it that arrive later are skipped by the replica as already applied).
                if !d.subscribed || d.cursor < sent.stable {
                    d.cursor = sent.stable;
                }
                d.subscribed = true;
            } else {
                d.subscribed = false;
            }
            d.peer_database = job.request.database.clone();
            d.customer_key = job.request.customer_key.clone();
            d.snapshots += 1;
            d.bytes_copied += sent.bytes;
            d.shipped_at_ms = Some(now);
            d.last_error = None;
            tx.put(&dk, &d)?;
            tx.delete(key)
        })?;
        Counters::add(&self.inner.counters.snapshots_served, 1);
        self.inner.ship_wake.notify_one();
        Ok(())
    }

    /// Shipper: the subscribed downstream replicas with records to ship, by peer (a peer
    /// backing off after a failure is left out). Each peer's are shipped by
    /// [`Replication::ship_peer`], every peer on its own task: a peer whose storage fails or
    /// hangs until a timeout holds up no other peer's shipments.
    pub(crate) fn shipments_due(
        &self,
    ) -> Result<BTreeMap<DeploymentId, Vec<(tern_meta::Key, DownstreamDpo)>>> {
        let downs = self
            .meta()
            .read(|tx| tx.scan_prefix::<DownstreamDpo>(&keys::downstreams()))?;
        let mut by_peer: BTreeMap<DeploymentId, Vec<_>> = BTreeMap::new();
        for (dk, d) in downs {
            // A replica waiting for a refresh gets no records: the ones after its cursor
            // were pruned.
            if !d.subscribed || d.refresh_needed_since_ms.is_some() || self.backing_off(&d.peer) {
                continue;
            }
            by_peer.entry(d.peer.clone()).or_default().push((dk, d));
        }
        Ok(by_peer)
    }

    /// Ships to one peer's downstream replicas in turn, until one fails (the peer backs
    /// off). How many records it shipped.
    pub(crate) async fn ship_peer(
        &self,
        downs: Vec<(tern_meta::Key, DownstreamDpo)>,
        peers: &dyn Peers,
    ) -> Result<usize> {
        let mut shipped = 0;
        for (dk, d) in downs {
            let Some(sender) = peers.sender(&d.peer) else {
                continue;
            };
            match self.ship_to(&dk, &d, &sender, peers).await {
                Ok(n) => {
                    self.peer_ok(&d.peer);
                    shipped += n;
                }
                Err(e) => {
                    let wait = self.peer_failed(&d.peer);
                    tracing::warn!(peer = %d.peer, database = %d.database, error = %e,
                        retry_in_ms = wait.as_millis() as u64, "shipping to a replica failed; the others go on");
                    let msg = e.to_string();
                    self.update_downstream(&dk, |cur| cur.last_error = Some(msg.clone()))?;
                    break;
                }
            }
        }
        Ok(shipped)
    }

    /// Whether `peer` failed recently and waits out its backoff.
    fn backing_off(&self, peer: &DeploymentId) -> bool {
        let now = std::time::Instant::now();
        self.inner
            .peer_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(peer)
            .is_some_and(|(until, _)| *until > now)
    }

    fn peer_ok(&self, peer: &DeploymentId) {
        self.inner
            .peer_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(peer);
    }

    /// Records a failure of `peer`; how long it is left alone.
    fn peer_failed(&self, peer: &DeploymentId) -> std::time::Duration {
        let mut all = self
            .inner
            .peer_backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = self.inner.p.config.ship_interval;
        let wait = match all.get(peer) {
            Some((_, last)) => (*last * 2).min(std::time::Duration::from_secs(60)),
            None => first,
        };
        all.insert(peer.clone(), (std::time::Instant::now() + wait, wait));
        wait
    }

    /// Ships `d`'s records after its cursor; how many. Up to `ship_batch` records a
    /// turn: each record is read and its files copied into the peer's inbound stage
    /// concurrently (at most `copy_concurrency` records at once), then the messages go
    /// out in record order — those without body files together, in one metadata commit —
    /// and the cursor moves past them in one more. A stop in between ships again what the
    /// cursor does not cover: a message already sent is found by its id, never sent
    /// twice. (One record after the other, a replica could not follow a primary
    /// committing a few hundred times a second: every record waited for three fsyncs.)
    async fn ship_to(
        &self,
        dk: &tern_meta::Key,
        d: &DownstreamDpo,
        sender: &tern_messaging::Sender,
        peers: &dyn Peers,
    ) -> Result<usize> {
        let p = &self.inner.p;
        let stable = p.txn.stable_log_id(&d.account)?;
        if stable <= d.cursor {
            return Ok(0);
        }
        // Records after the cursor may be gone: pruned, never skipped as if there were
        // none. Only a refresh brings this replica up to date.
        let pruned = p.txn.log_pruned_up_to(&d.account)?;
        if d.cursor < pruned {
            self.mark_refresh_needed(dk, pruned)?;
            return Ok(0);
        }
        let ids: Vec<u64> = p
            .txn
            .log_ids(&d.account, d.cursor + 1)
            .await?
            .into_iter()
            .filter(|id| *id <= stable)
            .take(p.config.ship_batch)
            .collect();
        let mut shipped = Shipped {
            cursor: d.cursor,
            ..Shipped::default()
        };
        let outcome = self
            .ship_records(dk, d, sender, peers, &ids, &mut shipped)
            .await;
        if let Err(e) = &outcome
            && e.is_crash()
        {
            return outcome.map(|()| 0);
        }
        // Nothing listed up to `stable`: the records in between belong to no stored
        // transaction of the account (ids taken by aborted transactions).
        if outcome.is_ok() && ids.len() < p.config.ship_batch {
            shipped.cursor = shipped.cursor.max(stable);
        }
        let now = self.now();
        self.update_downstream(dk, |cur| {
            cur.cursor = cur.cursor.max(shipped.cursor);
            if let Some(s) = shipped.seq {
                cur.shipped_seq = Some(cur.shipped_seq.unwrap_or(0).max(s));
            }
            if cur
                .shipping
                .as_ref()
                .is_some_and(|s| s.txn_id <= cur.cursor)
            {
                cur.shipping = None;
            }
            cur.records_shipped += shipped.records;
            cur.bytes_copied += shipped.bytes;
            if shipped.records > 0 {
                cur.shipped_at_ms = Some(now);
            }
            if outcome.is_ok() {
                cur.last_error = None;
            }
        })?;
        outcome?;
        Ok(shipped.records as usize)
    }

    /// Changes the downstream row at `dk` with `f`, when it is still there (a replica
    /// dropped meanwhile is not written back).
    fn update_downstream(&self, dk: &tern_meta::Key, f: impl Fn(&mut DownstreamDpo)) -> Result<()> {
        Ok(self.meta().write(|tx| {
            if let Some(mut cur) = tx.get::<DownstreamDpo>(dk)? {
                f(&mut cur);
                tx.put(dk, &cur)?;
            }
            Ok(())
        })?)
    }

    /// Prepares the records `ids` (at most `copy_concurrency` at once) and sends them in
    /// order, noting in `shipped` how far it got: up to the first failure, which it
    /// returns after sending what was ready before it.
    async fn ship_records(
        &self,
        dk: &tern_meta::Key,
        d: &DownstreamDpo,
        sender: &tern_messaging::Sender,
        peers: &dyn Peers,
        ids: &[u64],
        shipped: &mut Shipped,
    ) -> Result<()> {
        type Preparing<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outgoing>> + Send + 'a>>;
        let width = self.inner.p.config.copy_concurrency.max(1);
        let mut pending = ids.iter().copied();
        let mut preparing: futures::stream::FuturesOrdered<Preparing<'_>> =
            futures::stream::FuturesOrdered::new();
        // Ready, without body files (or with nothing to send): sent together when a
        // record with body files comes, or at the end.
        let mut batch: Vec<Outgoing> = Vec::new();
        let mut failure = None;
        loop {
            while failure.is_none() && preparing.len() < width {
                let Some(id) = pending.next() else { break };
                preparing.push_back(Box::pin(self.prepare_shipment(sender, dk, d, id, peers)));
            }
            let Some(next) = futures::StreamExt::next(&mut preparing).await else {
                break;
            };
            let out = match next {
                Ok(out) => out,
                Err(e) => {
                    // The records after it wait for the next turn (their copies, if any,
                    // are made again under the same names).
                    failure = Some(e);
                    break;
                }
            };
            match &out.message {
                Some(m) if !m.inline => {
                    if let Err(e) = self.send_inline(sender, &mut batch, shipped).await {
                        failure = Some(e);
                        break;
                    }
                    if let Err(e) = self.send_with_body(sender, dk, &out).await {
                        failure = Some(e);
                        break;
                    }
                    self.shipped(out, shipped);
                }
                // In order behind the ones waiting to be sent, even with nothing to send:
                // the cursor never passes a record not sent yet.
                _ => batch.push(out),
            }
        }
        drop(preparing);
        let sent = self.send_inline(sender, &mut batch, shipped).await;
        match failure {
            Some(e) => Err(e),
            None => sent,
        }
    }

    /// Sends the messages of `batch` (none with body files) in one metadata commit, and
    /// notes its records shipped, in order.
    async fn send_inline(
        &self,
        sender: &tern_messaging::Sender,
        batch: &mut Vec<Outgoing>,
        shipped: &mut Shipped,
    ) -> Result<()> {
        let drafts: Vec<Draft> = batch
            .iter_mut()
            .filter_map(|o| o.message.as_mut())
            .map(|m| Draft::new(LOG_TYPE, std::mem::take(&mut m.payload)).with_id(m.msg_id.clone()))
            .collect();
        if !drafts.is_empty() {
            sender.send_batch(drafts).await?;
            self.crash_point(crash::SHIP_SENT)?;
        }
        for out in batch.drain(..) {
            self.shipped(out, shipped);
        }
        Ok(())
    }

    /// Sends a message whose payload travels as a body file: created, body attached,
    /// then ready — an attempt can stop in between, so its id is recorded first for the
    /// next attempt to find.
    async fn send_with_body(
        &self,
        sender: &tern_messaging::Sender,
        dk: &tern_meta::Key,
        out: &Outgoing,
    ) -> Result<()> {
        let Some(m) = &out.message else {
            return Ok(());
        };
        self.update_downstream(dk, |cur| {
            cur.shipping = Some(crate::state::Shipping {
                txn_id: out.txn_id,
                message_id: m.msg_id.to_string(),
            });
        })?;
        let head = model::encode(&SnapshotHead {
            v: PAYLOAD_VERSION,
            response_id: ResponseId::new(m.msg_id.as_str())?,
        })?;
        sender
            .create(Draft::new(LOG_TYPE, head).with_id(m.msg_id.clone()))
            .await?;
        sender.attach_body_bytes(&m.msg_id, &m.payload).await?;
        sender.mark_ready(&m.msg_id).await?;
        self.crash_point(crash::SHIP_SENT)?;
        Ok(())
    }

    /// Notes record `out` as shipped (sent now, sent by an earlier attempt, or nothing of
    /// the database in it).
    fn shipped(&self, out: Outgoing, shipped: &mut Shipped) {
        shipped.cursor = shipped.cursor.max(out.txn_id);
        if out.changes {
            // Counted with its stamp whether sent now or by an earlier attempt.
            shipped.records += 1;
            if let Some(seq) = out.seq {
                shipped.seq = Some(shipped.seq.unwrap_or(0).max(seq));
            }
        }
        if let Some(m) = out.message {
            shipped.bytes += m.bytes;
            Counters::add(&self.inner.counters.records_shipped, 1);
            self.publish(
                tern_monitor::AgentKind::Ship,
                tern_monitor::Unit {
                    rows: m.rows,
                    bytes: m.bytes,
                    files: m.files,
                    latency_ms: self.elapsed_ms(m.committed_at_ms),
                },
            );
        }
    }

    /// Record `txn_id` made ready to send to `d`: its changes of `d`'s database, their
    /// files copied into the peer's inbound stage, the message encoded (none when it has
    /// no such changes, or an earlier attempt sent it).
    async fn prepare_shipment(
        &self,
        sender: &tern_messaging::Sender,
        dk: &tern_meta::Key,
        d: &DownstreamDpo,
        txn_id: u64,
        peers: &dyn Peers,
    ) -> Result<Outgoing> {
        let p = &self.inner.p;
        let record = p.txn.read_log(&d.account, txn_id).await?;
        let stamp = record.stamp(&d.database);
        let changes: Vec<ChangeRecord> = record
            .changes
            .into_iter()
            .filter(|c| change_database(c) == &d.database)
            .collect();
        if changes.is_empty() {
            return Ok(Outgoing {
                txn_id,
                changes: false,
                seq: None,
                message: None,
            });
        }
        let seq = stamp.map(|s| s.seq);
        let base = format!("lg-{}-{}-{txn_id}", d.database, p.me);
        // Earlier attempts at this record: under the first id, or under the one recorded
        // before a message with body files was created (a retry's).
        let recorded = self
            .meta()
            .read(|tx| tx.get::<DownstreamDpo>(dk))?
            .and_then(|cur| cur.shipping)
            .filter(|s| s.txn_id == txn_id)
            .map(|s| s.message_id);
        let mut retry = recorded.is_some();
        for earlier in std::iter::once(&base).chain(&recorded) {
            let earlier = MessageId::new(earlier.as_str())?;
            match sender.message(&earlier).await? {
                // Sent (or on its way) by an attempt whose cursor update did not land.
                Some(m) if m.state != OutState::Preparing => {
                    return Ok(Outgoing {
                        txn_id,
                        changes: true,
                        seq,
                        message: None,
                    });
                }
                // An attempt that stopped before its message was ready (a crash between
                // its body upload and `mark_ready`): taken as sent, the record would be
                // lost until a refresh. It is given up (its bodies cleaned) and shipped
                // again under a new id, whose bodies that clean-up cannot touch.
                Some(_) => {
                    tracing::warn!(message = %earlier, peer = %d.peer, txn_id, "a shipment left unfinished by an earlier attempt: abandoned and shipped again");
                    sender.abandon(&earlier).await?;
                    Counters::add(&self.inner.counters.shipments_retried, 1);
                    retry = true;
                }
                None => {}
            }
        }
        let id = if retry {
            format!("{base}-{}", self.next_id("again")?)
        } else {
            base
        };
        let msg_id = MessageId::new(id.as_str())?;
        let folder = ResponseId::new(id.as_str())?;
        let changes: Vec<ChangeRecord> = changes.into_iter().map(canonical_change).collect();
        let added: Vec<&MicroPartitionDpo> = changes
            .iter()
            .flat_map(|c| match c {
                ChangeRecord::TableVersion { added, .. } | ChangeRecord::Repair { added, .. } => {
                    added.iter().collect()
                }
                ChangeRecord::Dictionary { .. } => Vec::new(),
            })
            .collect();
        let (repmk, bytes) = if added.is_empty() {
            (None, 0)
        } else {
            let (keys, wrapped) = self
                .new_repmk(&d.peer, folder.as_str(), d.customer_key.as_ref())
                .await?;
            let copied = self
                .to_inbound(&d.peer, &folder, &added, &keys, peers)
                .await?;
            self.count_copied(copied.files, copied.bytes);
            (Some(wrapped), copied.bytes)
        };
        let (rows, files) = crate::monitoring::added(&changes);
        let shipment = LogShipment {
            v: PAYLOAD_VERSION,
            group: d.group.clone(),
            shipment_id: folder,
            txn_id,
            origin: record.origin,
            committed_at_ms: record.committed_at_ms,
            changes,
            repmk,
            stamp,
        };
        let payload = model::encode(&shipment)?;
        Ok(Outgoing {
            txn_id,
            changes: true,
            seq,
            message: Some(OutgoingMessage {
                msg_id,
                inline: payload.len() <= p.config.inline_max_bytes,
                payload,
                bytes,
                rows,
                files,
                committed_at_ms: record.committed_at_ms,
            }),
        })
    }
}

/// How far a turn of shipping to one replica got.
#[derive(Debug, Default)]
struct Shipped {
    /// The last record shipped (or without changes of the database).
    cursor: u64,
    /// The highest stamp sequence of the records shipped.
    seq: Option<u64>,
    /// Records with changes of the database shipped (now or by an earlier attempt).
    records: u64,
    /// Bytes copied into the peer's inbound stage.
    bytes: u64,
}

/// One record of a turn, ready to send.
struct Outgoing {
    txn_id: u64,
    /// It has changes of the database.
    changes: bool,
    /// Its stamp's sequence for the database.
    seq: Option<u64>,
    /// The message to send; none when it has no changes of the database or an earlier
    /// attempt sent it.
    message: Option<OutgoingMessage>,
}

/// A log shipment's message, its files in the peer's inbound stage.
struct OutgoingMessage {
    msg_id: MessageId,
    /// Small enough to travel in the message itself (else as a body file).
    inline: bool,
    payload: Vec<u8>,
    bytes: u64,
    rows: u64,
    files: u64,
    committed_at_ms: i64,
}

/// One table of a snapshot being served: what its second pass (the sections) needs.
struct Listed<'a> {
    /// Its id on the wire.
    id: TableId,
    /// Its id here.
    table: &'a TableId,
    version: u64,
    /// Its files at `version`, by name.
    names: &'a [tern_storage::layout::ShortName],
    /// The files the replica holds.
    refs: BTreeSet<&'a GlobalFileRef>,
    /// The replica's files that are not the table's.
    remove: Vec<GlobalFileRef>,
}

/// The payload of a message whose content is in body file 0.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotHead {
    /// Format version.
    pub v: u32,
    /// The response (or shipment, or refresh request) the body holds.
    pub response_id: ResponseId,
}

/// The database a change belongs to.
pub(crate) fn change_database(c: &ChangeRecord) -> &tern_storage::layout::DatabaseId {
    c.database()
}

/// A change with group-wide table ids (a replica's local ids may carry a suffix, see
/// [`canonical_table_id`]).
fn canonical_change(mut c: ChangeRecord) -> ChangeRecord {
    match &mut c {
        ChangeRecord::TableVersion { table, added, .. }
        | ChangeRecord::Repair { table, added, .. } => {
            *table = canonical_table_id(table);
            for m in added {
                m.table = canonical_table_id(&m.table);
            }
        }
        ChangeRecord::Dictionary { op, .. } => match op {
            DictionaryOp::CreateTable(t) => t.id = canonical_table_id(&t.id),
            DictionaryOp::DropTable { table } => *table = canonical_table_id(table),
            DictionaryOp::CreateSchema(_) | DictionaryOp::DropSchema { .. } => {}
        },
    }
    c
}

/// A table's difference as sections of at most `per_section` files, made one at a time
/// (the files cloned a section at a time, their table the wire id `id`): the sections a
/// difference held in memory makes (tests; a snapshot's are read a page at a time).
#[cfg(test)]
pub(crate) fn section_iter<'a>(
    id: &'a TableId,
    add: &'a [&'a MicroPartitionDpo],
    remove: &'a [GlobalFileRef],
    per_section: usize,
) -> impl Iterator<Item = TableSection> + 'a {
    let adds = add.chunks(per_section).map(move |chunk| TableSection {
        table: id.clone(),
        add: chunk
            .iter()
            .map(|m| {
                let mut m = (*m).clone();
                m.table = id.clone();
                m
            })
            .collect(),
        remove: Vec::new(),
    });
    let removes = remove.chunks(per_section).map(move |chunk| TableSection {
        table: id.clone(),
        add: Vec::new(),
        remove: chunk.to_vec(),
    });
    adds.chain(removes)
}

/// Writes `sections` as the sections file `path` (one JSON line each), sealed with
/// `keys`, streaming: at most a buffer's worth is held besides the section being encoded.
/// How many sections it holds.
pub(crate) async fn write_sections(
    store: &Arc<dyn object_store::ObjectStore>,
    path: &tern_storage::Path,
    keys: &dyn KeySource,
    sections: Box<dyn Iterator<Item = Result<TableSection>> + Send + '_>,
) -> Result<u64> {
    use tokio::io::AsyncWriteExt as _;
    let (mut writer, mut reader) = tokio::io::duplex(256 << 10);
    let produce = async move {
        let mut n = 0u64;
        for section in sections {
            let mut line = model::encode(&section?)?;
            line.push(b'\n');
            writer
                .write_all(&line)
                .await
                .map_err(|e| Error::invalid("snapshot sections", e.to_string()))?;
            n += 1;
        }
        writer
            .shutdown()
            .await
            .map_err(|e| Error::invalid("snapshot sections", e.to_string()))?;
        Ok::<u64, Error>(n)
    };
    // The reader is the upload's own: when the upload stops (an error), the writer's
    // next write fails instead of waiting for ever.
    let upload = async move {
        tern_crypto::upload_encrypted(
            store,
            path,
            keys,
            &mut reader,
            &tern_crypto::EncryptOptions::default(),
            &tern_crypto::CopyOptions::default(),
        )
        .await
    };
    let (produced, uploaded) = tokio::join!(produce, upload);
    uploaded?;
    produced
}
