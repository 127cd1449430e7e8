//! The peers replication talks to: a message sender per peer and the peer's replication
//! bucket (where this deployment may only write into `from/<self>/`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use object_store::ObjectStore;
use tern_messaging::{Context, Sender};
use tern_storage::layout::DeploymentId;
use tokio::sync::Notify;

/// Access to the peers this deployment has channels to.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// A sender on the channel to `peer` (sharing the channel worker's waker), if there is
    /// a channel.
    fn sender(&self, peer: &DeploymentId) -> Option<Sender>;
    /// The peer's replication bucket.
    fn bucket(&self, peer: &DeploymentId) -> Option<Arc<dyn ObjectStore>>;
}

/// A peer's bucket and, once its channel's sender worker runs, that worker's waker.
type PeerEntry = (Arc<dyn ObjectStore>, Option<Arc<Notify>>);

/// A set of peers: bucket and, once its channel's sender worker runs, its waker.
#[derive(Debug)]
pub struct PeerSet {
    ctx: Context,
    peers: Mutex<HashMap<DeploymentId, PeerEntry>>,
}

impl PeerSet {
    /// No peers yet.
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            peers: Mutex::default(),
        }
    }

    /// Adds (or replaces) the bucket of `peer`.
    pub fn add(&self, peer: DeploymentId, bucket: Arc<dyn ObjectStore>) {
        self.lock().insert(peer, (bucket, None));
    }

    /// Records the waker of `peer`'s sender worker: from now on messages to it can be sent.
    pub fn set_waker(&self, peer: &DeploymentId, waker: Arc<Notify>) {
        if let Some(p) = self.lock().get_mut(peer) {
            p.1 = Some(waker);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeploymentId, PeerEntry>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Peers for PeerSet {
    fn sender(&self, peer: &DeploymentId) -> Option<Sender> {
        let peers = self.lock();
        let (bucket, waker) = peers.get(peer)?;
        let waker = waker.as_ref()?;
        Some(
            Sender::new(self.ctx.clone(), peer.clone(), Arc::clone(bucket))
                .sharing_waker(Arc::clone(waker)),
        )
    }

    fn bucket(&self, peer: &DeploymentId) -> Option<Arc<dyn ObjectStore>> {
        self.lock().get(peer).map(|(b, _)| Arc::clone(b))
    }
}
