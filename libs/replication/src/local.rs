//! A whole deployment in one process on local folders: metadata store, volume,
//! replication bucket, keys, commit protocol, tables, the message service and every
//! replication worker, as the daemon assembles them (no HTTP API). For the replication
//! tests and benchmarks, and for running a group of deployments without daemons.
//!
//! ```text
//!  <root>/<id>/keys      local key provider (a member joins another's GMK)
//!  <root>/<id>/meta.db   metadata store
//!  <root>/<id>/volume    volume bucket
//!  <root>/<id>/repl      replication bucket (peers write into from/<peer>/)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tern_clock::{SharedClock, SystemClock};
use tern_crypto::{CachedWrapKeys, KeyProvider, LocalKeyProvider, SystemRandom};
use tern_messaging::{
    Cleaner, Context, Handler, MessagingConfig, Processor, Receiver, Registry, Sender, worker,
};
use tern_meta::{AccountDpo, DatabaseDpo, DeploymentDpo, MetaStore, SqliteOptions};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_table::{TableOptions, Tables};
use tern_txn::{TxnManager, TxnOptions};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::peers::{PeerSet, Peers};
use crate::service::{Parts, Replication, ReplicationConfig};
use crate::worker::{ReplicationWorker, Role};

/// Settings of a [`LocalDeployment`].
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// Replication.
    pub replication: ReplicationConfig,
    /// The message service.
    pub messaging: MessagingConfig,
    /// The commit protocol.
    pub txn: TxnOptions,
}

/// One deployment in this process. See the [module docs](self).
pub struct LocalDeployment {
    /// Its id.
    pub id: DeploymentId,
    /// Its metadata store.
    pub meta: MetaStore,
    /// Its tables.
    pub tables: Arc<Tables>,
    /// Its commit protocol.
    pub txn: TxnManager,
    /// Its replication service.
    pub repl: Replication,
    /// Its message service.
    pub ctx: Context,
    /// Its peers.
    pub peers: Arc<PeerSet>,
    /// Its folder.
    pub dir: PathBuf,
    /// Its volume.
    pub volume: Arc<dyn ObjectStore>,
    /// Its replication bucket.
    pub bucket: Arc<dyn ObjectStore>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for LocalDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeployment")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What [`services`] wires together.
#[allow(missing_debug_implementations)]
pub struct ServiceParts {
    /// This deployment.
    pub me: DeploymentId,
    /// Its region.
    pub region: String,
    /// Its metadata store.
    pub meta: MetaStore,
    /// Its volume.
    pub volume: Arc<dyn ObjectStore>,
    /// Its replication bucket.
    pub bucket: Arc<dyn ObjectStore>,
    /// Its keys.
    pub provider: Arc<dyn KeyProvider>,
    /// Its commit protocol (recovered).
    pub txn: TxnManager,
    /// The clock.
    pub clock: SharedClock,
    /// Replication settings.
    pub replication: ReplicationConfig,
    /// Message-service settings.
    pub messaging: MessagingConfig,
    /// Message handlers besides replication's (the daemon's group membership).
    pub handlers: Vec<(&'static str, Arc<dyn Handler>)>,
    /// Opens the customer-managed keys accounts register.
    pub customer_keys: tern_crypto::CustomerKeys,
    /// The crash points of messaging and replication ([`crate::crash`]; none armed but in
    /// tests).
    pub crash: tern_messaging::CrashPoints,
}

/// The services of one deployment.
#[allow(missing_debug_implementations)]
pub struct Services {
    /// Tables, committing through the commit protocol.
    pub tables: Arc<Tables>,
    /// Replication.
    pub repl: Replication,
    /// The message service, with replication's handlers registered.
    pub ctx: Context,
}

/// Tables, replication and the message service of one deployment, wired the one way the
/// daemon and [`LocalDeployment`] both use (one cache of GMK-derived keys for messages
/// and replication).
pub fn services(p: ServiceParts) -> Result<Services> {
    let tables = Arc::new(Tables::new(
        p.me.clone(),
        Arc::clone(&p.volume),
        p.meta.clone(),
        Arc::clone(&p.provider),
        Arc::clone(&p.clock),
        TableOptions::default(),
        Arc::new(p.txn.clone()),
    ));
    let wrap_keys = Arc::new(CachedWrapKeys::new(Arc::clone(&p.provider)));
    let repl = Replication::new(Parts {
        me: p.me.clone(),
        region: p.region,
        meta: p.meta.clone(),
        tables: Arc::clone(&tables),
        txn: p.txn.clone(),
        volume: p.volume,
        bucket: p.bucket,
        wrap_keys: Arc::clone(&wrap_keys),
        clock: Arc::clone(&p.clock),
        random: SystemRandom::shared(),
        config: p.replication,
        customer_keys: p.customer_keys,
    })?;
    // Statements commit only where the group's roles and epochs say so.
    p.txn.set_write_fence(repl.write_fence());
    let mut registry = Registry::new();
    for (t, h) in p.handlers.into_iter().chain(repl.handlers()) {
        registry.register(t, h)?;
    }
    let ctx = Context::new(
        p.me,
        p.meta,
        wrap_keys,
        p.clock,
        SystemRandom::shared(),
        registry,
        p.messaging,
    )?
    .with_crash_points(p.crash);
    repl.set_messages(ctx.clone());
    Ok(Services { tables, repl, ctx })
}

/// A folder store (created if missing).
pub fn folder(path: &Path) -> Result<Arc<dyn ObjectStore>> {
    tern_storage::open_folder(path)
        .map_err(|e| Error::invalid(format!("folder {}", path.display()), e.to_string()))
}

fn member(id: &DeploymentId, dir: &Path) -> DeploymentDpo {
    DeploymentDpo {
        id: id.clone(),
        region: format!("region-{id}"),
        cloud: "local".into(),
        replication_bucket_url: format!("file://{}", dir.join("repl").display()),
        credentials_ref: None,
        added_at_ms: 0,
    }
}

impl LocalDeployment {
    /// Opens (creating on first use) deployment `id` under `root`; `join` is the key
    /// folder of a member whose GMK it shares. Recovery runs before it returns; no worker
    /// runs until [`Self::start`].
    pub async fn open(
        root: &Path,
        id: &str,
        join: Option<&Path>,
        options: LocalOptions,
    ) -> Result<LocalDeployment> {
        let dir = root.join(id);
        let volume = folder(&dir.join("volume"))?;
        let bucket = folder(&dir.join("repl"))?;
        Self::open_on(root, id, join, options, volume, bucket).await
    }

    /// [`Self::open`] with the volume and replication bucket on other stores (S3); the
    /// keys and the metadata store stay under `root/<id>`.
    pub async fn open_on(
        root: &Path,
        id: &str,
        join: Option<&Path>,
        options: LocalOptions,
        volume: Arc<dyn ObjectStore>,
        bucket: Arc<dyn ObjectStore>,
    ) -> Result<LocalDeployment> {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::invalid(format!("folder {}", dir.display()), e.to_string()))?;
        let keys = dir.join("keys");
        let random = SystemRandom::shared();
        let provider: Arc<dyn KeyProvider> = Arc::new(if keys.exists() {
            LocalKeyProvider::open(&keys, random)?
        } else {
            match join {
                None => LocalKeyProvider::create(&keys, random)?,
                Some(g) => LocalKeyProvider::create_joining(&keys, g, random)?,
            }
        });
        let me = DeploymentId::new(id)?;
        let meta = MetaStore::open_sqlite(dir.join("meta.db"), SqliteOptions::default())?;
        let clock = SystemClock::shared();
        let txn = TxnManager::open(
            me.clone(),
            meta.clone(),
            Arc::clone(&volume),
            Arc::clone(&provider),
            Arc::clone(&clock),
            options.txn,
        )?;
        txn.recover().await?;
        let Services { tables, repl, ctx } = services(ServiceParts {
            me: me.clone(),
            region: format!("region-{id}"),
            meta: meta.clone(),
            volume: Arc::clone(&volume),
            bucket: Arc::clone(&bucket),
            provider,
            txn: txn.clone(),
            clock,
            replication: options.replication,
            messaging: options.messaging,
            handlers: Vec::new(),
            customer_keys: tern_crypto::CustomerKeys::local(),
            crash: tern_messaging::CrashPoints::new(),
        })?;
        let peers = Arc::new(PeerSet::new(ctx.clone()));
        meta.write(|tx| {
            if tx.get_deployment(&me)?.is_none() {
                tx.add_deployment(&member(&me, &dir))?;
            }
            Ok(())
        })?;
        let (stop, _) = watch::channel(false);
        Ok(LocalDeployment {
            id: me,
            meta,
            tables,
            txn,
            repl,
            ctx,
            peers,
            dir,
            volume,
            bucket,
            stop,
            tasks: Vec::new(),
        })
    }

    /// Starts the message workers (a sender per peer in `peers`) and the four replication
    /// workers.
    pub fn start(&mut self, peers: &[&LocalDeployment]) {
        let buckets: Vec<_> = peers
            .iter()
            .map(|p| (p.id.clone(), Arc::clone(&p.bucket)))
            .collect();
        self.start_with(&buckets);
    }

    /// [`Self::start`] writing to each peer through the given store (for example one
    /// holding only the write-only identity for `from/<self>/` of the peer's bucket).
    pub fn start_with(&mut self, peers: &[(DeploymentId, Arc<dyn ObjectStore>)]) {
        let backoff = Duration::from_millis(100);
        for (id, bucket) in peers {
            self.peers.add(id.clone(), Arc::clone(bucket));
            let mut s = Sender::new(self.ctx.clone(), id.clone(), Arc::clone(bucket));
            self.peers.set_waker(id, s.waker());
            let stop = self.stop.subscribe();
            self.tasks.push(tokio::spawn(async move {
                let _ = worker::run(&mut s, stop, backoff).await;
            }));
        }
        let mut r = Receiver::new(self.ctx.clone(), Arc::clone(&self.bucket));
        let mut pr = Processor::new(self.ctx.clone(), Arc::clone(&self.bucket));
        let mut c = Cleaner::new(self.ctx.clone(), Arc::clone(&self.bucket));
        let (s1, s2, s3) = (
            self.stop.subscribe(),
            self.stop.subscribe(),
            self.stop.subscribe(),
        );
        self.tasks.push(tokio::spawn(async move {
            let _ = worker::run(&mut r, s1, backoff).await;
        }));
        self.tasks.push(tokio::spawn(async move {
            let _ = worker::run(&mut pr, s2, backoff).await;
        }));
        self.tasks.push(tokio::spawn(async move {
            let _ = worker::run(&mut c, s3, backoff).await;
        }));
        for role in Role::ALL {
            let mut w = ReplicationWorker::new(
                self.repl.clone(),
                Arc::clone(&self.peers) as Arc<dyn Peers>,
                role,
            );
            let mut stop = self.stop.subscribe();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    match w.work().await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(worker = %w.name(), error = %e, "unit of work failed");
                        }
                    }
                    tokio::select! {
                        () = w.wait_for_work() => {}
                        _ = stop.changed() => {}
                    }
                }
            }));
        }
    }

    /// Stops every worker at once, mid-unit, as a killed process would. Returns once none
    /// of them runs any more (an aborted task stops at its next await; a process killed
    /// with -9 stops at once, so nothing of this instance may run beside its successor).
    pub async fn kill(&mut self) {
        let tasks: Vec<_> = self.tasks.drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        // Blocking file writes already handed to the blocking pool cannot be aborted.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Stops the workers after their current unit.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// Creates local account `name`.
    pub fn create_account(&self, name: &str) -> Result<AccountId> {
        let a = AccountId::new(name)?;
        self.meta
            .write(|tx| tx.create_account(&AccountDpo::local(a.clone(), 0)))?;
        Ok(a)
    }

    /// Creates local database `name` of `account` (id `db-<name>`).
    pub fn create_database(&self, account: &AccountId, name: &str) -> Result<DatabaseId> {
        let id = DatabaseId::new(format!("db-{name}"))?;
        self.meta.write(|tx| {
            tx.create_database(&DatabaseDpo::local(id.clone(), account.clone(), name, 0))
        })?;
        Ok(id)
    }

    /// The current version of a live table.
    pub fn version(&self, table: &TableId) -> Result<Option<u64>> {
        Ok(self
            .meta
            .read(|tx| tx.get_table(table))?
            .filter(|t| !t.dropped)
            .map(|t| t.current_version))
    }
}

impl Drop for LocalDeployment {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Makes `a` and `b` members of one group with a channel each way.
pub async fn link(a: &LocalDeployment, b: &LocalDeployment) -> Result<()> {
    for (x, y) in [(a, b), (b, a)] {
        x.meta.write(|tx| {
            if tx.get_deployment(&y.id)?.is_none() {
                tx.add_deployment(&member(&y.id, &y.dir))?;
            }
            Ok(())
        })?;
        let genesis = x.ctx.create_outbound(&y.id).await?;
        y.ctx.register_inbound(&genesis).await?;
    }
    Ok(())
}
