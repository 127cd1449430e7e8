//! The replication message handlers (registered in the message service's registry). The
//! log handler is the apply agent: the processor's pool runs several at once, and each
//! applies one shipped transaction in one local commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tern_messaging::{Bodies, Commit, GlobalMessage, Handler, HandlerError};
use tern_meta::DictionaryChange;
use tern_storage::layout::{DeploymentId, ResponseId, TableId};
use tern_table::ChangeRecord;
use tern_table::commit::DictionaryOp;

use crate::error::{Error, Result};
use crate::model::{
    self, ENTITIES_TYPE, EntitiesPayload, HEARTBEAT_TYPE, Heartbeat, LOG_TYPE, LogShipment,
    REFRESH_NEEDED_TYPE, REFRESH_TYPE, RefreshNeeded, RefreshRequest, SNAPSHOT_TYPE,
    SnapshotManifest, SnapshotResponse, UNSUBSCRIBE_TYPE, Unsubscribe, replica_table_id,
};
use crate::service::{Counters, Replication};
use crate::source::SnapshotHead;
use crate::state::{
    DownstreamDpo, ImportJobDpo, KnownEntitiesDpo, ReplicaDpo, SnapshotJobDpo, keys,
};
use crate::target::{ImportSource, TableStep};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Entities,
    Refresh,
    Snapshot,
    Log,
    Unsubscribe,
    Heartbeat,
    Vote,
    VoteReply,
    RefreshNeeded,
}

/// One message type's handler.
#[derive(Debug)]
struct ReplHandler {
    repl: Replication,
    kind: Kind,
}

impl Replication {
    /// The handlers to register, by message type.
    pub fn handlers(&self) -> Vec<(&'static str, Arc<dyn Handler>)> {
        [
            (ENTITIES_TYPE, Kind::Entities),
            (REFRESH_TYPE, Kind::Refresh),
            (SNAPSHOT_TYPE, Kind::Snapshot),
            (LOG_TYPE, Kind::Log),
            (UNSUBSCRIBE_TYPE, Kind::Unsubscribe),
            (HEARTBEAT_TYPE, Kind::Heartbeat),
            (crate::model::VOTE_TYPE, Kind::Vote),
            (crate::model::VOTE_REPLY_TYPE, Kind::VoteReply),
            (REFRESH_NEEDED_TYPE, Kind::RefreshNeeded),
        ]
        .into_iter()
        .map(|(t, kind)| {
            let h: Arc<dyn Handler> = Arc::new(ReplHandler {
                repl: self.clone(),
                kind,
            });
            (t, h)
        })
        .collect()
    }

    fn reject(&self, msg: &GlobalMessage, reason: impl std::fmt::Display) -> HandlerError {
        Counters::add(&self.inner.counters.rejected, 1);
        tracing::warn!(message = %msg.id, from = %msg.origin, message_type = %msg.message_type, %reason, "replication message refused");
        HandlerError::refuse(reason)
    }
}

fn retry(e: Error) -> HandlerError {
    HandlerError::retry(e)
}

#[async_trait]
impl Handler for ReplHandler {
    fn validate(&self, payload: &[u8]) -> std::result::Result<(), String> {
        match self.kind {
            Kind::Entities => model::decode::<EntitiesPayload>(payload).map(|_| ()),
            Kind::Refresh => model::decode::<RefreshRequest>(payload)
                .map(|_| ())
                .or_else(|_| model::decode::<SnapshotHead>(payload).map(|_| ())),
            Kind::Snapshot => model::decode::<SnapshotHead>(payload).map(|_| ()),
            Kind::Log => model::decode::<LogShipment>(payload)
                .map(|_| ())
                .or_else(|_| model::decode::<SnapshotHead>(payload).map(|_| ())),
            Kind::Unsubscribe => model::decode::<Unsubscribe>(payload).map(|_| ()),
            Kind::Heartbeat => model::decode::<Heartbeat>(payload).map(|_| ()),
            Kind::Vote => model::decode::<model::VoteRequest>(payload).map(|_| ()),
            Kind::VoteReply => model::decode::<model::VoteReply>(payload).map(|_| ()),
            Kind::RefreshNeeded => model::decode::<RefreshNeeded>(payload).map(|_| ()),
        }
    }

    async fn handle(
        &self,
        msg: &GlobalMessage,
        bodies: &Bodies,
    ) -> std::result::Result<Commit, HandlerError> {
        let r = &self.repl;
        let from = msg.origin.clone();
        let now = r.now();
        match self.kind {
            Kind::Entities => {
                let p: EntitiesPayload =
                    model::decode(&msg.payload).map_err(|e| r.reject(msg, e))?;
                if let Some(e) = p.entities.iter().find(|e| e.deployment != from) {
                    return Err(r.reject(
                        msg,
                        format!("lists an entity of deployment {}", e.deployment),
                    ));
                }
                Ok(Commit::with(move |tx| {
                    tx.put(
                        &keys::known(&from),
                        &KnownEntitiesDpo {
                            deployment: from.clone(),
                            entities: p.entities.clone(),
                            received_at_ms: now,
                        },
                    )
                }))
            }
            Kind::Refresh => {
                // Inline, or (a replica of many files) in body file 0.
                let request: RefreshRequest = match model::decode(&msg.payload) {
                    Ok(req) => req,
                    Err(_) => {
                        let body = bodies.read(msg, 0).await.map_err(|e| retry(e.into()))?;
                        model::decode(&body).map_err(|e| r.reject(msg, e))?
                    }
                };
                match r.local_database(&request.group).map_err(retry)? {
                    Some(db) if db.role != tern_meta::DatabaseRole::Local => {}
                    _ => {
                        return Err(r.reject(
                            msg,
                            format!("no replicated database of group {} here", request.group),
                        ));
                    }
                }
                // The source is where the allowed-accounts list is enforced for sure:
                // whatever the replica's deployment knew, nothing is shipped to an account
                // the primary does not allow.
                if let Err(e) = r.check_allowed(&request.group, &from, &request.account) {
                    return Err(match e {
                        Error::Invalid { .. } => r.reject(msg, e),
                        other => retry(other),
                    });
                }
                let placeholder =
                    ResponseId::new(request.request_id.as_str()).map_err(|e| r.reject(msg, e))?;
                let wake = Arc::clone(&r.inner);
                let key = keys::snapshot_job(&from, &request.request_id);
                let commit = Commit::with(move |tx| {
                    if !tx.contains(&key)? {
                        tx.put(
                            &key,
                            &SnapshotJobDpo {
                                peer: from.clone(),
                                request: request.clone(),
                                response_id: placeholder.clone(),
                                received_at_ms: now,
                                attempts: 0,
                                retry: Default::default(),
                                sent: None,
                            },
                        )?;
                    }
                    Ok(())
                });
                Ok(commit.then(move || {
                    wake.job_wake.notify_waiters();
                    wake.job_wake.notify_one();
                }))
            }
            Kind::Snapshot => {
                // Body 0 holds the manifest (small: a line per table); the file lists are in
                // the sections file in the inbound folder, read by the importer as a stream.
                let body = bodies.read(msg, 0).await.map_err(|e| retry(e.into()))?;
                let (response, legacy) = match model::decode::<SnapshotManifest>(&body) {
                    Ok(m) => (m, None),
                    Err(e) => match model::decode::<SnapshotResponse>(&body) {
                        // A previous build's upstream: the whole response in the body.
                        Ok(whole) => {
                            let (m, sections) = SnapshotManifest::split(whole);
                            (m, Some(sections))
                        }
                        Err(_) => return Err(r.reject(msg, e)),
                    },
                };
                drop(body);
                let replica = r.replica_of(&response.group).map_err(retry)?;
                match replica {
                    Some(rep) if rep.upstream == from => {}
                    _ => {
                        return Err(r.reject(
                            msg,
                            format!(
                                "snapshot of group {} from {from}, which is not this deployment's upstream for it",
                                response.group
                            ),
                        ));
                    }
                }
                if !r
                    .epoch_fits(&response.group, Some(response.epoch))
                    .map_err(retry)?
                {
                    Counters::add(&r.inner.counters.stale_epoch, 1);
                    return Err(r.reject(
                        msg,
                        format!(
                            "snapshot of group {} made under epoch {}, older than the newest known here",
                            response.group, response.epoch
                        ),
                    ));
                }
                let key = keys::import_job(&from, &response.response_id);
                let at = msg.created_at_ms;
                if let Some(sections) = legacy {
                    // Its sections file is written here (the body goes with the message).
                    r.write_legacy_sections(&from, &response, at, sections)
                        .await
                        .map_err(retry)?;
                }
                let commit = Commit::with(move |tx| {
                    if !tx.contains(&key)? {
                        // An earlier answer to the same request whose upstream began again
                        // (a streamed response cut short: its files will never all land)
                        // is dropped by the importer, even while it waits for them.
                        let prefix = keys::import_jobs().str(from.as_str());
                        for (k, mut j) in tx.scan_prefix::<ImportJobDpo>(&prefix)? {
                            if j.response.request_id == response.request_id && !j.superseded {
                                j.superseded = true;
                                tx.put(&k, &j)?;
                            }
                        }
                        tx.put(
                            &key,
                            &ImportJobDpo {
                                peer: from.clone(),
                                response: response.clone(),
                                received_at_ms: at,
                                attempts: 0,
                                retry: Default::default(),
                                tables_done: 0,
                                sections_done: 0,
                                batch: None,
                                superseded: false,
                                legacy_sections: None,
                            },
                        )?;
                    }
                    Ok(())
                });
                let wake = Arc::clone(&r.inner);
                Ok(commit.then(move || {
                    wake.job_wake.notify_waiters();
                    wake.job_wake.notify_one();
                }))
            }
            Kind::Log => {
                let shipment: LogShipment = match model::decode(&msg.payload) {
                    Ok(s) => s,
                    Err(_) => {
                        let body = bodies.read(msg, 0).await.map_err(|e| retry(e.into()))?;
                        model::decode(&body).map_err(|e| r.reject(msg, e))?
                    }
                };
                r.apply_log(msg, shipment).await
            }
            Kind::Heartbeat => {
                let hb: Heartbeat = model::decode(&msg.payload).map_err(|e| r.reject(msg, e))?;
                r.heard(&from, hb).await.map_err(retry)?;
                Ok(Commit::none())
            }
            Kind::Vote => {
                let req: model::VoteRequest =
                    model::decode(&msg.payload).map_err(|e| r.reject(msg, e))?;
                r.vote(&from, &req).map_err(retry)?;
                Ok(Commit::none())
            }
            Kind::VoteReply => {
                let reply: model::VoteReply =
                    model::decode(&msg.payload).map_err(|e| r.reject(msg, e))?;
                r.vote_replied(&from, reply);
                Ok(Commit::none())
            }
            Kind::RefreshNeeded => {
                // The upstream pruned log records this replica never received: only a
                // refresh brings it up to date.
                let n: RefreshNeeded = model::decode(&msg.payload).map_err(|e| r.reject(msg, e))?;
                match r.replica_of(&n.group).map_err(retry)? {
                    Some(rep) if rep.upstream == from => {
                        tracing::warn!(group = %n.group, upstream = %from, cursor = n.cursor,
                            pruned_up_to = n.pruned_up_to, "the upstream pruned log records not received here: refreshing");
                        r.refresh_for(&n.group, "log pruned").map_err(retry)?;
                    }
                    // Following another upstream now: its notice no longer concerns us.
                    _ => {}
                }
                Ok(Commit::none())
            }
            Kind::Unsubscribe => {
                let u: Unsubscribe = model::decode(&msg.payload).map_err(|e| r.reject(msg, e))?;
                let db = r.local_database(&u.group).map_err(retry)?;
                Ok(Commit::with(move |tx| {
                    if let Some(db) = &db {
                        let k = keys::downstream(&db.id, &from);
                        if tx.get::<DownstreamDpo>(&k)?.is_some() {
                            tx.delete(&k)?;
                        }
                    }
                    Ok(())
                }))
            }
        }
    }
}

impl Replication {
    /// Apply agent: one shipped transaction.
    async fn apply_log(
        &self,
        msg: &GlobalMessage,
        s: LogShipment,
    ) -> std::result::Result<Commit, HandlerError> {
        let from = msg.origin.clone();
        let Some(replica) = self.replica_of(&s.group).map_err(retry)? else {
            return Err(self.reject(msg, format!("no replica of group {} here", s.group)));
        };
        if replica.upstream != from {
            return Err(self.reject(
                msg,
                format!("{from} is not the upstream of group {} here", s.group),
            ));
        }
        if !self
            .epoch_fits(&s.group, s.stamp.map(|st| st.epoch))
            .map_err(retry)?
        {
            Counters::add(&self.inner.counters.stale_epoch, 1);
            self.remove_inbound(&from, &s.shipment_id).await;
            return Err(self.reject(
                msg,
                format!(
                    "transaction {} of group {} was made under epoch {}, older than the newest known here",
                    s.txn_id,
                    s.group,
                    s.stamp.map_or(0, |st| st.epoch)
                ),
            ));
        }
        match self
            .apply_shipment(&from, &replica, &s, msg.created_at_ms)
            .await
        {
            Ok(figures) => {
                let (rows, _) = crate::monitoring::added(&s.changes);
                self.publish(
                    tern_monitor::AgentKind::Apply,
                    tern_monitor::Unit {
                        rows,
                        bytes: figures.bytes,
                        files: figures.files,
                        latency_ms: self.elapsed_ms(s.committed_at_ms),
                    },
                );
                self.remove_inbound(&from, &s.shipment_id).await;
                Counters::add(&self.inner.counters.records_applied, 1);
                self.committed();
                let db = replica.database.clone();
                let now = self.now();
                Ok(Commit::with(move |tx| {
                    let Some(mut r) = tx.get::<ReplicaDpo>(&keys::replica(&db))? else {
                        return Ok(());
                    };
                    r.applied_txn = r.applied_txn.max(s.txn_id);
                    r.applied_commit_at_ms =
                        Some(r.applied_commit_at_ms.unwrap_or(0).max(s.committed_at_ms));
                    r.upstream_commit_at_ms =
                        Some(r.upstream_commit_at_ms.unwrap_or(0).max(s.committed_at_ms));
                    r.applied_at_ms = Some(now);
                    for (t, v) in &figures.versions {
                        let e = r.upstream_versions.entry(t.clone()).or_default();
                        *e = (*e).max(*v);
                    }
                    for t in &figures.dropped {
                        r.upstream_versions.remove(t);
                    }
                    r.records_applied += 1;
                    if let Some(st) = s.stamp {
                        r.applied_seq = r.applied_seq.max(st.seq);
                    }
                    r.files_copied += figures.files;
                    r.bytes_copied += figures.bytes;
                    r.last_error = None;
                    tx.put(&keys::replica(&db), &r)
                }))
            }
            Err(e @ Error::Gap { .. }) => {
                let attempts = self.gap_attempt(&msg.id.to_string());
                if attempts < self.inner.p.config.gap_attempts {
                    return Err(HandlerError::retry(e));
                }
                tracing::warn!(error = %e, message = %msg.id, "log gap does not fill; refreshing instead");
                self.refresh_for(&s.group, "gap").map_err(retry)?;
                self.remove_inbound(&from, &s.shipment_id).await;
                Ok(Commit::none())
            }
            Err(e @ Error::Drift { .. }) => {
                tracing::warn!(error = %e, message = %msg.id, "replica drift; refreshing");
                self.refresh_for(&s.group, "drift").map_err(retry)?;
                self.remove_inbound(&from, &s.shipment_id).await;
                Ok(Commit::none())
            }
            Err(e) => {
                self.publish_error(tern_monitor::AgentKind::Apply);
                let text = e.to_string();
                let _ = self.with_replica(&s.group, |r| r.last_error = Some(text.clone()));
                Err(retry(e))
            }
        }
    }

    fn gap_attempt(&self, id: &str) -> u32 {
        let mut g = self
            .inner
            .gaps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.len() > 10_000 {
            g.clear();
        }
        let n = g.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }

    async fn apply_shipment(
        &self,
        from: &DeploymentId,
        replica: &ReplicaDpo,
        s: &LogShipment,
        sent_at_ms: i64,
    ) -> Result<ShipmentFigures> {
        let mut dict = Vec::new();
        let mut steps = Vec::new();
        let mut repairs = Vec::new();
        let mut figures = ShipmentFigures::default();
        for c in &s.changes {
            match c {
                ChangeRecord::Repair {
                    table,
                    version,
                    added,
                    removed,
                    ..
                } => {
                    let id = replica_table_id(from, table);
                    repairs.push(crate::target::Repair {
                        table: id.clone(),
                        version: *version,
                        exact: false,
                        add: added
                            .iter()
                            .cloned()
                            .map(|mut m| {
                                m.table = id.clone();
                                m
                            })
                            .collect(),
                        remove: removed.iter().map(|r| r.global_ref.clone()).collect(),
                        landed: false,
                    });
                }
                ChangeRecord::Dictionary { op, .. } => {
                    let change = match op {
                        DictionaryOp::CreateSchema(sc) => DictionaryChange::CreateSchema {
                            name: sc.name.clone(),
                        },
                        DictionaryOp::DropSchema { name } => {
                            DictionaryChange::DropSchema { name: name.clone() }
                        }
                        DictionaryOp::CreateTable(t) => DictionaryChange::CreateTable {
                            table: replica_table_id(from, &t.id),
                            schema: t.schema.clone(),
                            name: t.name.clone(),
                            columns: t.columns.clone(),
                        },
                        DictionaryOp::DropTable { table } => {
                            let id = replica_table_id(from, table);
                            if let (local, true) = self.local_table(&replica.database, &id)? {
                                figures.dropped.push(local);
                            }
                            DictionaryChange::DropTable { table: id }
                        }
                    };
                    dict.push(change);
                }
                ChangeRecord::TableVersion {
                    table,
                    base_version,
                    version,
                    columns,
                    added,
                    removed,
                    ddl,
                    ..
                } => {
                    let id = replica_table_id(from, table);
                    steps.push(TableStep {
                        table: id.clone(),
                        base: *base_version,
                        version: *version,
                        columns: columns.clone(),
                        add_column: match ddl {
                            Some(DictionaryChange::AddColumn { column, .. }) => {
                                Some(column.clone())
                            }
                            _ => None,
                        },
                        add: added
                            .iter()
                            .cloned()
                            .map(|mut m| {
                                m.table = id.clone();
                                m
                            })
                            .collect(),
                        remove: removed.iter().map(|r| r.global_ref.clone()).collect(),
                        landed: false,
                    });
                }
            }
        }
        let mut steps = crate::target::merge_steps(steps).map_err(|reason| Error::BadMessage {
            message_type: LOG_TYPE,
            from: from.clone(),
            reason,
        })?;
        let stamp = match s.stamp {
            Some(st) => st,
            None => self.known_stamp(&s.group)?,
        };
        self.apply_dictionary(replica, &dict, stamp).await?;
        self.localize(replica, &mut steps)?;
        for st in &steps {
            figures.versions.insert(st.table.clone(), st.version);
        }
        for rp in &mut repairs {
            let (local, exists) = self.local_table(&replica.database, &rp.table)?;
            if !exists {
                return Err(Error::Gap {
                    table: rp.table.to_string(),
                    have: 0,
                    base: rp.version,
                });
            }
            for m in &mut rp.add {
                m.table = local.clone();
            }
            rp.table = local;
        }
        if !steps.is_empty() || !repairs.is_empty() {
            let keys = match &s.repmk {
                Some(w) => {
                    self.open_repmk(
                        from,
                        &replica.account,
                        s.shipment_id.as_str(),
                        w,
                        sent_at_ms,
                    )
                    .await?
                }
                None if steps.iter().all(|st| st.add.is_empty())
                    && repairs.iter().all(|rp| rp.add.is_empty()) =>
                {
                    // No files: any key will do, none is used.
                    Arc::new(tern_crypto::ReplicationFileKeys::new(Arc::new(
                        tern_crypto::RepMk::from_bytes([0; 32]),
                    )))
                }
                None => {
                    return Err(Error::BadMessage {
                        message_type: LOG_TYPE,
                        from: from.clone(),
                        reason: "files without a RepMK".into(),
                    });
                }
            };
            let source = ImportSource {
                peer: from.clone(),
                folder: s.shipment_id.clone(),
                keys,
            };
            let applied = self
                .apply_steps(replica, &source, steps, true, stamp)
                .await?;
            figures.files = applied.files;
            figures.bytes = applied.bytes;
            // A repair made upstream after the versions above (its own transaction there):
            // set right here too, and logged here for the replicas after this one.
            for rp in repairs {
                let (files, bytes) = self.apply_repair(replica, &source, rp, stamp).await?;
                figures.files += files;
                figures.bytes += bytes;
            }
        }
        self.inner.p.txn.observe(&replica.account, s.txn_id)?;
        Ok(figures)
    }
}

#[derive(Debug, Default)]
struct ShipmentFigures {
    versions: BTreeMap<TableId, u64>,
    dropped: Vec<TableId>,
    files: u64,
    bytes: u64,
}
