//! Fixtures: deployments with their own metadata store, key folder and replication bucket
//! (folder or LocalStack), a recording handler, and helpers that drive the workers by hand.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tern_clock::{Clock, ManualClock, SystemClock};
use tern_crypto::{CachedWrapKeys, LocalKeyProvider, SystemRandom};
use tern_messaging::worker::drain;
use tern_messaging::{
    Bodies, Cleaner, Commit, Context, CrashPoints, GlobalMessage, Handler, HandlerError,
    MessagingConfig, Processor, Receiver, Registry, Sender,
};
use tern_meta::{Dpo, Key, MetaStore, SqliteOptions, Synchronous};
use tern_storage::admin::BucketAdmin;
use tern_storage::layout::{DeploymentId, MessageId};
use tern_storage::{S3Options, StoreConfig, StoreExt as _, emulator, open_store};

/// Which object store the deployments' replication buckets live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Folder,
    LocalStack,
}

/// A replication bucket.
pub struct Bucket {
    pub store: Arc<dyn ObjectStore>,
    _cleanup: Cleanup,
}

enum Cleanup {
    None,
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Bucket { admin: BucketAdmin, bucket: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Bucket { admin, bucket } = self {
            let (admin, bucket) = (admin.clone(), bucket.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    let _ = rt.block_on(admin.delete_bucket(&bucket));
                }
            })
            .join();
        }
    }
}

pub async fn localstack_options() -> S3Options {
    let emu = tokio::task::spawn_blocking(emulator::localstack)
        .await
        .expect("emulator task")
        .unwrap_or_else(|e| panic!("LocalStack is required for this test: {e}"));
    emu.s3_options()
}

fn unique_bucket(test: &str) -> String {
    let nanos = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut name: String = format!("tern-msg-{test}-{}-{nanos}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

pub async fn bucket(kind: Kind, test: &str) -> Bucket {
    match kind {
        Kind::Folder => {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open_store(&StoreConfig {
                url: format!("file://{}", dir.path().display()),
                ..Default::default()
            })
            .expect("folder store");
            Bucket {
                store,
                _cleanup: Cleanup::Dir(dir),
            }
        }
        Kind::LocalStack => {
            let opts = localstack_options().await;
            let admin = BucketAdmin::new(&opts).await;
            let name = unique_bucket(test);
            admin
                .create_bucket(&name, &opts.region)
                .await
                .expect("create bucket");
            let store = open_store(&StoreConfig {
                url: format!("s3://{name}"),
                s3: opts,
            })
            .expect("s3 store");
            Bucket {
                store,
                _cleanup: Cleanup::Bucket {
                    admin,
                    bucket: name,
                },
            }
        }
    }
}

/// What the recording handler stores in the metadata store (its exactly-once effect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub count: u32,
    pub payload: String,
    pub body_digests: Vec<String>,
}
impl Dpo for Applied {
    const WHAT: &'static str = "test applied";
    const VERSION: u32 = 1;
}

pub fn applied_key(origin: &DeploymentId, id: &MessageId) -> Key {
    Key::root("test")
        .str("applied")
        .str(origin.as_str())
        .str(id.as_str())
}

/// A handler that validates payloads (UTF-8, not starting with `bad` when strict), reads
/// every body, counts its runs (external effect) and commits an `Applied` row.
#[derive(Debug, Default)]
pub struct Recorder {
    pub strict: bool,
    pub runs: Mutex<HashMap<String, u32>>,
    /// Fail the first N runs of each message (retry tests).
    pub fail_first: u32,
    /// Refuse (for good) messages whose payload starts with `stale`.
    pub refuse_stale: bool,
    pub notify: Option<Arc<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// Message ids whose completion committed (pushed by `Commit::then`).
    pub committed: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Handler for Recorder {
    fn validate(&self, payload: &[u8]) -> Result<(), String> {
        let s = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_string())?;
        if self.strict && s.starts_with("bad") {
            return Err("payload starts with `bad`".into());
        }
        Ok(())
    }

    async fn handle(&self, msg: &GlobalMessage, bodies: &Bodies) -> Result<Commit, HandlerError> {
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let n = runs.entry(msg.id.to_string()).or_default();
            *n += 1;
            *n
        };
        if run <= self.fail_first {
            return Err(HandlerError::retry(format!("injected failure {run}")));
        }
        if self.refuse_stale && msg.payload.starts_with(b"stale") {
            return Err(HandlerError::refuse("stale: refused"));
        }
        let mut digests = Vec::new();
        for b in &msg.bodies {
            let data = bodies
                .read(msg, b.n)
                .await
                .map_err(|e| HandlerError::retry(e.to_string()))?;
            digests.push(hex(&tern_crypto::kdf::sha256(&data)));
        }
        if let Some(tx) = &self.notify {
            let _ = tx.send(msg.id.to_string());
        }
        let key = applied_key(&msg.origin, &msg.id);
        let payload = String::from_utf8_lossy(&msg.payload).into_owned();
        let (committed, id) = (Arc::clone(&self.committed), msg.id.to_string());
        Ok(Commit::with(move |tx| {
            let mut a: Applied = tx.get(&key)?.unwrap_or(Applied {
                count: 0,
                payload: payload.clone(),
                body_digests: digests.clone(),
            });
            a.count += 1;
            tx.put(&key, &a)
        })
        .then(move || committed.lock().unwrap().push(id)))
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub const TYPE: &str = "test.record";

/// Test configuration: short intervals, real-time windows.
pub fn config() -> MessagingConfig {
    MessagingConfig {
        poll_interval: Duration::from_millis(20),
        send_interval: Duration::from_millis(20),
        max_batch: 16,
        process_batch: 16,
        clean_batch: 16,
        discovery_interval: Duration::from_secs(3600),
        lease: Duration::from_secs(60),
        retry_backoff: Duration::from_millis(0),
        ..MessagingConfig::default()
    }
}

/// One deployment: metadata store, key folder, replication bucket.
pub struct Node {
    pub id: DeploymentId,
    pub meta: MetaStore,
    pub keys_dir: std::path::PathBuf,
    pub wrap_keys: Arc<CachedWrapKeys>,
    pub bucket: Bucket,
    pub clock: ManualClock,
    pub recorder: Arc<Recorder>,
    pub registry: Registry,
    pub config: MessagingConfig,
    _dir: tempfile::TempDir,
}

impl Node {
    /// A deployment; `group` is a key folder of another member (same GMK), if any.
    pub async fn new(
        id: &str,
        kind: Kind,
        clock: &ManualClock,
        group: Option<&FsPath>,
        recorder: Recorder,
    ) -> Node {
        let b = bucket(kind, id).await;
        Self::with_bucket(id, b, clock, group, recorder)
    }

    /// A deployment whose replication bucket is `store` (owned elsewhere).
    pub fn with_store(
        id: &str,
        store: Arc<dyn ObjectStore>,
        clock: &ManualClock,
        group: Option<&FsPath>,
    ) -> Node {
        let b = Bucket {
            store,
            _cleanup: Cleanup::None,
        };
        Self::with_bucket(id, b, clock, group, Recorder::default())
    }

    fn with_bucket(
        id: &str,
        bucket: Bucket,
        clock: &ManualClock,
        group: Option<&FsPath>,
        recorder: Recorder,
    ) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys_dir = dir.path().join("keys");
        let provider = match group {
            None => LocalKeyProvider::create(&keys_dir, SystemRandom::shared()),
            Some(g) => LocalKeyProvider::create_joining(&keys_dir, g, SystemRandom::shared()),
        }
        .expect("key folder");
        let meta = MetaStore::open_sqlite(
            dir.path().join("meta.db"),
            SqliteOptions {
                synchronous: Synchronous::Normal,
                ..SqliteOptions::default()
            },
        )
        .expect("meta store");
        let recorder = Arc::new(recorder);
        let registry = Registry::new()
            .with(TYPE, recorder.clone() as Arc<dyn Handler>)
            .expect("registry");
        Node {
            id: DeploymentId::new(id).expect("id"),
            meta,
            keys_dir,
            wrap_keys: Arc::new(CachedWrapKeys::new(Arc::new(provider))),
            bucket,
            clock: clock.clone(),
            recorder,
            registry,
            config: config(),
            _dir: dir,
        }
    }

    /// A fresh service instance over this node's durable state (as after a restart).
    pub fn context(&self, crash: CrashPoints) -> Context {
        Context::new(
            self.id.clone(),
            self.meta.clone(),
            Arc::clone(&self.wrap_keys),
            self.clock.shared(),
            SystemRandom::shared(),
            self.registry.clone(),
            self.config.clone(),
        )
        .expect("context")
        .with_crash_points(crash)
    }

    pub async fn applied(&self, origin: &DeploymentId, id: &MessageId) -> Option<Applied> {
        let key = applied_key(origin, id);
        self.meta
            .read(|tx| tx.get::<Applied>(&key))
            .expect("read applied")
    }

    pub async fn objects(&self, prefix: &str) -> Vec<String> {
        self.bucket
            .store
            .list_sorted(&object_store::path::Path::from(prefix))
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.location.to_string())
            .collect()
    }
}

/// The receiving-side workers of a node.
pub struct Inbound {
    pub ctx: Context,
    pub receiver: Receiver,
    pub processor: Processor,
    pub cleaner: Cleaner,
}

impl Inbound {
    pub fn new(node: &Node, crash: CrashPoints) -> Self {
        let ctx = node.context(crash);
        let store = Arc::clone(&node.bucket.store);
        Self {
            receiver: Receiver::new(ctx.clone(), Arc::clone(&store)),
            processor: Processor::new(ctx.clone(), Arc::clone(&store)),
            cleaner: Cleaner::new(ctx.clone(), store),
            ctx,
        }
    }

    /// Receive, process and clean until nothing is left to do.
    pub async fn pump(&mut self) -> tern_messaging::Result<()> {
        loop {
            let a = drain(&mut self.receiver).await?;
            let b = drain(&mut self.processor).await?;
            let c = drain(&mut self.cleaner).await?;
            if a + b + c == 0 {
                return Ok(());
            }
        }
    }
}

/// A sender of `from` into `to`'s bucket (full-access store here).
pub fn sender(from: &Node, to: &Node, crash: CrashPoints) -> Sender {
    Sender::new(
        from.context(crash),
        to.id.clone(),
        Arc::clone(&to.bucket.store),
    )
}

/// Creates the channel `from -> to` on both sides.
pub async fn connect(from: &Node, to: &Node) {
    let genesis = from
        .context(CrashPoints::new())
        .create_outbound(&to.id)
        .await
        .expect("create channel");
    to.context(CrashPoints::new())
        .register_inbound(&genesis)
        .await
        .expect("register channel");
}

/// A manual clock at the real time (storage timestamps agree with it).
pub fn clock() -> ManualClock {
    ManualClock::new(SystemClock.now_millis())
}

pub fn payload(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}
