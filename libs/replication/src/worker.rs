//! The background workers of replication. Each does one unit of work at a time and waits
//! for a wake-up or its poll interval; the daemon's supervisor (or a test) runs them.
//!
//! | worker | unit of work |
//! |---|---|
//! | control | judge peers' availability, send heartbeats and availability notifications, send the outbox, announce global entities (on change and every `announce_interval`), send refresh requests (asked for or scheduled), prune the log (every `log_prune_interval`, see [`crate::prune`]) |
//! | copier | answer one refresh request: consistent snapshot, copy the difference to the peer's inbound stage, send the response |
//! | importer | import one snapshot response: inbound → volume, roll back / jump versions, commit |
//! | shipper | ship new log records to every subscribed downstream replica, each peer on its own task |

use std::collections::HashMap;
use std::sync::Arc;

use tern_messaging::Draft;
use tern_storage::layout::{DeploymentId, MessageId};
use tokio::task::JoinSet;

use crate::error::Result;
use crate::model::{self, ENTITIES_TYPE, EntitiesPayload, PAYLOAD_VERSION};
use crate::peers::Peers;
use crate::service::Replication;
use crate::state::{self, AnnounceDpo, OutboxDpo, keys};

/// What a [`ReplicationWorker`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Outbox, entity announcements, refresh requests.
    Control,
    /// Snapshot responses (copy workers on the source side).
    Copier,
    /// Snapshot imports (copy workers on the replica side).
    Importer,
    /// Log shipping.
    Shipper,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Control, Role::Copier, Role::Importer, Role::Shipper];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Control => "replication control",
            Role::Copier => "replication copier",
            Role::Importer => "replication importer",
            Role::Shipper => "replication shipper",
        }
    }
}

/// One replication worker.
#[derive(Debug)]
pub struct ReplicationWorker {
    repl: Replication,
    peers: Arc<dyn Peers>,
    role: Role,
    /// The importer's inbound deletions, running beside the next imports; dropped (so
    /// aborted) with the worker.
    cleanups: JoinSet<()>,
    /// The shipper's tasks, one per peer at most (their peers in `shipping_to`): a peer
    /// whose storage hangs holds up only its own.
    shipping: JoinSet<Result<usize>>,
    shipping_to: HashMap<tokio::task::Id, DeploymentId>,
}

impl ReplicationWorker {
    /// A worker of `role`.
    pub fn new(repl: Replication, peers: Arc<dyn Peers>, role: Role) -> Self {
        Self {
            repl,
            peers,
            role,
            cleanups: JoinSet::new(),
            shipping: JoinSet::new(),
            shipping_to: HashMap::new(),
        }
    }

    /// Its name.
    pub fn name(&self) -> String {
        self.role.name().to_string()
    }

    /// One unit of work; how many items it handled (0 = idle).
    pub async fn work(&mut self) -> Result<usize> {
        let peers = self.peers.as_ref();
        match self.role {
            Role::Control => {
                // Availability first: a peer's silence is judged even when sending fails.
                self.repl.judge_peers()?;
                self.repl.count_members()?;
                self.repl.withdraw_stale_candidacies()?;
                self.repl.expire_handoffs()?;
                self.repl.resume_rewinds().await?;
                self.repl.retry_deferred_votes()?;
                self.repl.auto_failover()?;
                let mut n = self.repl.send_heartbeats(peers).await?;
                n += self.repl.deliver_notifications().await?;
                n += self.repl.send_outbox(peers).await?;
                n += self.repl.announce(peers).await?;
                n += self.repl.send_refresh_requests(peers).await?;
                // Last, and never failing the unit: storage trouble while pruning delays
                // no heartbeat or message.
                if let Err(e) = self.repl.prune_log_if_due().await {
                    tracing::warn!(error = %e, "log pruning failed; tried again next interval");
                }
                Ok(n)
            }
            Role::Copier => self.repl.serve_snapshots(peers).await,
            Role::Importer => {
                while self.cleanups.try_join_next().is_some() {}
                let (n, cleanup) = self.repl.import_snapshots().await?;
                if let Some(c) = cleanup {
                    let repl = self.repl.clone();
                    self.cleanups
                        .spawn(async move { repl.clean_inbound(c).await });
                }
                Ok(n)
            }
            Role::Shipper => self.ship(),
        }
    }

    /// The shipper's unit: collects the peers' finished shipping tasks and starts one for
    /// each peer with records due and none under way. How many records the finished ones
    /// shipped (their errors are recorded per replica and back the peer off).
    fn ship(&mut self) -> Result<usize> {
        let mut shipped = 0;
        while let Some(done) = self.shipping.try_join_next_with_id() {
            let id = match &done {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            let peer = self.shipping_to.remove(&id);
            match done {
                Ok((_, n)) => shipped += n?,
                Err(e) => tracing::error!(?peer, error = %e, "a shipping task failed"),
            }
        }
        for (peer, downs) in self.repl.shipments_due()? {
            if self.shipping_to.values().any(|p| *p == peer) {
                continue;
            }
            let (repl, peers) = (self.repl.clone(), Arc::clone(&self.peers));
            let task = self.shipping.spawn(async move {
                let n = repl.ship_peer(downs, peers.as_ref()).await;
                // The worker collects it now, not at its next poll.
                repl.inner.ship_wake.notify_one();
                n
            });
            self.shipping_to.insert(task.id(), peer);
        }
        Ok(shipped)
    }

    /// Waits for a wake-up or the poll interval.
    pub async fn wait_for_work(&mut self) {
        let inner = &self.repl.inner;
        let c = &inner.p.config;
        let (notify, every) = match self.role {
            Role::Control => (&inner.control_wake, c.control_interval),
            // Jobs are recorded by message handlers whose transaction may land just after
            // the wake-up: poll as often as the shipper.
            Role::Copier | Role::Importer => (&inner.job_wake, c.ship_interval),
            Role::Shipper => (&inner.ship_wake, c.ship_interval),
        };
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}

impl Replication {
    /// Sends what the outbox holds.
    pub(crate) async fn send_outbox(&self, peers: &dyn Peers) -> Result<usize> {
        let items = self
            .meta()
            .read(|tx| tx.scan_prefix::<OutboxDpo>(&state::outbox_all()))?;
        let mut n = 0;
        for (k, o) in items {
            let Some(sender) = peers.sender(&o.peer) else {
                continue;
            };
            let id = MessageId::new(o.id.as_str())?;
            let sent = async {
                if sender.message(&id).await?.is_none() {
                    sender
                        .send(
                            Draft::new(o.message_type.as_str(), o.payload.clone().into_bytes())
                                .with_id(id.clone()),
                        )
                        .await?;
                }
                Ok::<_, crate::Error>(())
            };
            // One peer's trouble holds up no other's messages.
            if let Err(e) = sent.await {
                tracing::warn!(peer = %o.peer, message = %o.id, error = %e, "outbox message not sent; will retry");
                continue;
            }
            self.meta().write(|tx| tx.delete(&k))?;
            n += 1;
        }
        Ok(n)
    }

    /// Marks our entities as changed, so they are announced at once (a new peer).
    pub fn announce_soon(&self) -> Result<()> {
        self.meta().write(crate::service::mark_dirty)?;
        self.inner.control_wake.notify_one();
        Ok(())
    }

    /// Announces our global entities to every peer when they changed or the interval
    /// passed. How many peers got them.
    pub(crate) async fn announce(&self, peers: &dyn Peers) -> Result<usize> {
        let now = self.now();
        let every =
            i64::try_from(self.inner.p.config.announce_interval.as_millis()).unwrap_or(i64::MAX);
        let a: AnnounceDpo = self
            .meta()
            .read(|tx| tx.get(&keys::announce()))?
            .unwrap_or_default();
        let due = a.dirty || a.sent_at_ms.is_none_or(|at| now - at >= every);
        if !due {
            return Ok(0);
        }
        // Cleared first: a change made while sending marks it dirty again.
        self.meta().write(|tx| {
            tx.put(
                &keys::announce(),
                &AnnounceDpo {
                    dirty: false,
                    sent_at_ms: Some(now),
                },
            )
        })?;
        let payload = model::encode(&EntitiesPayload {
            v: PAYLOAD_VERSION,
            entities: self.own_entities()?,
        })?;
        let me = self.me().clone();
        let members = self.meta().read(|tx| tx.list_deployments())?;
        let mut n = 0;
        // A peer without a channel yet gets them when its channel is made (`announce_soon`)
        // or at the next interval.
        for d in members.iter().filter(|d| d.id != me) {
            let Some(s) = peers.sender(&d.id) else {
                continue;
            };
            match s.send(Draft::new(ENTITIES_TYPE, payload.clone())).await {
                Ok(_) => n += 1,
                Err(e) => {
                    tracing::warn!(peer = %d.id, error = %e, "could not announce global entities");
                }
            }
        }
        Ok(n)
    }
}
