use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use tern_clock::SystemClock;
use tern_crypto::{CachedWrapKeys, KeyProvider, LocalKeyProvider, SystemRandom};
use tern_messaging::{
    Cleaner, Context, MessagingConfig, Processor, Receiver, Registry, Sender, worker,
};
use tern_meta::{AccountDpo, ColumnDef, ColumnType, DatabaseDpo, MetaStore, SqliteOptions};
use tern_replication::{Parts, PeerSet, Replication, ReplicationConfig, ReplicationWorker, Role};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_table::{ScanRequest, TableOptions, Tables};
use tern_txn::{TxnManager, TxnOptions};
use tokio::sync::watch;

pub struct Node {
    pub id: DeploymentId,
    pub meta: MetaStore,
    pub tables: Arc<Tables>,
    pub repl: Replication,
    pub ctx: Context,
    pub peers: Arc<PeerSet>,
    pub dir: std::path::PathBuf,
    pub bucket: Arc<dyn ObjectStore>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn folder(path: &FsPath) -> Arc<dyn ObjectStore> {
    std::fs::create_dir_all(path).unwrap();
    Arc::new(LocalFileSystem::new_with_prefix(path).unwrap())
}

pub fn repl_config() -> ReplicationConfig {
    ReplicationConfig {
        ship_interval: Duration::from_millis(50),
        control_interval: Duration::from_millis(100),
        ..ReplicationConfig::default()
    }
}

pub fn messaging_config() -> MessagingConfig {
    MessagingConfig {
        poll_interval: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(200),
        // A killed processor's messages are taken up again after this.
        lease: Duration::from_secs(3),
        ..MessagingConfig::default()
    }
}

impl Node {
    /// Deployment `id` under `root` (its folders `root/<id>/…`); `join` is the key folder
    /// of a member whose GMK it shares.
    pub async fn open(root: &FsPath, id: &str, join: Option<&FsPath>) -> Node {
        Self::open_with(root, id, join, repl_config()).await
    }

    pub async fn open_with(
        root: &FsPath,
        id: &str,
        join: Option<&FsPath>,
        config: ReplicationConfig,
    ) -> Node {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("keys");
        let provider: Arc<dyn KeyProvider> = Arc::new(if keys.exists() {
            LocalKeyProvider::open(&keys, SystemRandom::shared()).unwrap()
        } else {
            match join {
                None => LocalKeyProvider::create(&keys, SystemRandom::shared()).unwrap(),
                Some(g) => {
                    LocalKeyProvider::create_joining(&keys, g, SystemRandom::shared()).unwrap()
                }
            }
        });
        let me = DeploymentId::new(id).unwrap();
        let meta = MetaStore::open_sqlite(dir.join("meta.db"), SqliteOptions::default()).unwrap();
        let volume = folder(&dir.join("volume"));
        let bucket = folder(&dir.join("repl"));
        let clock = SystemClock::shared();
        let txn = TxnManager::open(
            me.clone(),
            meta.clone(),
            Arc::clone(&volume),
            Arc::clone(&provider),
            Arc::clone(&clock),
            TxnOptions {
                lock_timeout: Duration::from_secs(10),
                lock_poll: Duration::from_millis(5),
                ..TxnOptions::default()
            },
        )
        .unwrap();
        txn.recover().await.unwrap();
        let tables = Arc::new(Tables::new(
            me.clone(),
            Arc::clone(&volume),
            meta.clone(),
            Arc::clone(&provider),
            Arc::clone(&clock),
            TableOptions::default(),
            Arc::new(txn.clone()),
        ));
        let wrap_keys = Arc::new(CachedWrapKeys::new(Arc::clone(&provider)));
        let repl = Replication::new(Parts {
            me: me.clone(),
            region: format!("region-{id}"),
            meta: meta.clone(),
            tables: Arc::clone(&tables),
            txn: txn.clone(),
            volume: Arc::clone(&volume),
            bucket: Arc::clone(&bucket),
            wrap_keys: Arc::clone(&wrap_keys),
            clock: Arc::clone(&clock),
            random: SystemRandom::shared(),
            config,
        })
        .unwrap();
        let mut registry = Registry::new();
        for (t, h) in repl.handlers() {
            registry.register(t, h).unwrap();
        }
        let ctx = Context::new(
            me.clone(),
            meta.clone(),
            wrap_keys,
            clock,
            SystemRandom::shared(),
            registry,
            messaging_config(),
        )
        .unwrap();
        let peers = Arc::new(PeerSet::new(ctx.clone()));
        let (stop, _) = watch::channel(false);
        meta.write(|tx| {
            if tx.get_deployment(&me)?.is_none() {
                tx.add_deployment(&deployment(&me, &dir))?;
            }
            Ok(())
        })
        .unwrap();
        Node {
            id: me,
            meta,
            tables,
            repl,
            ctx,
            peers,
            dir,
            bucket,
            stop,
            tasks: Vec::new(),
        }
    }

    /// Starts the message and replication workers (senders to every connected peer).
    pub async fn start(&mut self, peers: &[&Node]) {
        let backoff = Duration::from_millis(100);
        for p in peers {
            self.peers.add(p.id.clone(), Arc::clone(&p.bucket));
            let mut s = Sender::new(self.ctx.clone(), p.id.clone(), Arc::clone(&p.bucket));
            self.peers.set_waker(&p.id, s.waker());
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
                Arc::clone(&self.peers) as Arc<dyn tern_replication::Peers>,
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
                        Err(e) => tracing::warn!(worker = %w.name(), error = %e, "unit failed"),
                    }
                    tokio::select! {
                        () = w.wait_for_work() => {}
                        _ = stop.changed() => {}
                    }
                }
            }));
        }
    }

    /// Stops every worker at once, mid-unit (as a killed process would).
    pub fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    pub fn create_account(&self, name: &str) -> AccountId {
        let a = AccountId::new(name).unwrap();
        self.meta
            .write(|tx| tx.create_account(&AccountDpo::local(a.clone(), 0)))
            .unwrap();
        a
    }

    pub fn create_database(&self, account: &AccountId, name: &str) -> DatabaseId {
        let id = DatabaseId::new(format!("db-{name}")).unwrap();
        self.meta
            .write(|tx| {
                tx.create_database(&DatabaseDpo::local(id.clone(), account.clone(), name, 0))
            })
            .unwrap();
        id
    }

    /// The rows of `table` (at `version`), sorted, as text.
    pub async fn rows(&self, table: &TableId, version: Option<u64>) -> Vec<String> {
        let r = self
            .tables
            .scan(
                table,
                &ScanRequest {
                    version,
                    ..ScanRequest::default()
                },
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in &r.batches {
            for i in 0..b.num_rows() {
                let cells: Vec<String> = (0..b.num_columns())
                    .map(|c| arrow::util::display::array_value_to_string(b.column(c), i).unwrap())
                    .collect();
                out.push(cells.join("|"));
            }
        }
        out.sort();
        out
    }

    pub fn version(&self, table: &TableId) -> Option<u64> {
        self.meta
            .read(|tx| tx.get_table(table))
            .unwrap()
            .filter(|t| !t.dropped)
            .map(|t| t.current_version)
    }
}

fn deployment(id: &DeploymentId, dir: &FsPath) -> tern_meta::DeploymentDpo {
    tern_meta::DeploymentDpo {
        id: id.clone(),
        region: format!("region-{id}"),
        cloud: "local".into(),
        replication_bucket_url: format!("file://{}", dir.join("repl").display()),
        credentials_ref: None,
        added_at_ms: 0,
    }
}

/// Makes `a` and `b` members of one group with channels both ways.
pub async fn link(a: &Node, b: &Node) {
    for (x, y) in [(a, b), (b, a)] {
        x.meta
            .write(|tx| {
                if tx.get_deployment(&y.id)?.is_none() {
                    tx.add_deployment(&deployment(&y.id, &y.dir))?;
                }
                Ok(())
            })
            .unwrap();
        let genesis = x.ctx.create_outbound(&y.id).await.unwrap();
        y.ctx.register_inbound(&genesis).await.unwrap();
    }
}

pub fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        },
        ColumnDef {
            name: "name".into(),
            ty: ColumnType::Utf8,
            nullable: true,
        },
        ColumnDef {
            name: "v".into(),
            ty: ColumnType::Float64,
            nullable: true,
        },
    ]
}

pub fn batch(ids: std::ops::Range<i64>, tag: &str) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("v", DataType::Float64, true),
    ]));
    let ids: Vec<i64> = ids.collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("{tag}-{i}")).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.iter().map(|i| *i as f64 * 0.5).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Polls `f` until it is true or `limit` passes (then panics with `what`).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
