//! Message service benchmark: messages per second and end-to-end latency (create → handler
//! ran) at a steady offered load of small messages, between two deployments whose
//! replication buckets are on the folder store and on LocalStack, with every worker
//! (sender, receiver, processor, cleaner) running as it would in the daemon. The floor is
//! the raw small-object PUT + GET latency of the same store, measured in the same run.
//!
//! ```text
//! cargo bench -p tern-messaging --bench messaging
//! TERN_BENCH_RATE=1000 TERN_BENCH_SECONDS=10 TERN_BENCH_POLL_MS=100 \
//! TERN_BENCH_STORES=folder,localstack TERN_BENCH_SYNC=full|normal
//! ```

#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;
use tern_clock::SystemClock;
use tern_crypto::{CachedWrapKeys, LocalKeyProvider, SystemRandom};
use tern_messaging::worker::run;
use tern_messaging::{
    Bodies, Cleaner, Commit, Context, Draft, GlobalMessage, Handler, HandlerError, MessagingConfig,
    Processor, Receiver, Registry, Sender,
};
use tern_meta::{MetaStore, SqliteOptions, Synchronous};
use tern_storage::admin::BucketAdmin;
use tern_storage::layout::DeploymentId;
use tern_storage::{StoreConfig, StoreExt as _, emulator, open_store};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records create → handled latency; the payload carries the creation instant.
#[derive(Debug)]
struct Timing {
    epoch: Instant,
    latencies: Mutex<Vec<Duration>>,
    last: Mutex<Option<Instant>>,
}

#[async_trait]
impl Handler for Timing {
    fn validate(&self, payload: &[u8]) -> Result<(), String> {
        std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.split(':').next())
            .and_then(|n| n.parse::<u64>().ok())
            .map(|_| ())
            .ok_or_else(|| "expected <nanos>:<padding>".into())
    }

    async fn handle(&self, msg: &GlobalMessage, _: &Bodies) -> Result<Commit, HandlerError> {
        let now = Instant::now();
        let nanos: u64 = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|s| s.split(':').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| HandlerError::permanent("bad payload"))?;
        let created = self.epoch + Duration::from_nanos(nanos);
        if let Ok(mut l) = self.latencies.lock() {
            l.push(now.saturating_duration_since(created));
        }
        if let Ok(mut l) = self.last.lock() {
            *l = Some(now);
        }
        Ok(Commit::none())
    }
}

struct Store {
    name: &'static str,
    store: Arc<dyn ObjectStore>,
    _dir: Option<tempfile::TempDir>,
    cleanup: Option<(BucketAdmin, String)>,
}

async fn open(name: &str) -> Store {
    match name {
        "folder" => {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open_store(&StoreConfig {
                url: format!("file://{}", dir.path().display()),
                ..Default::default()
            })
            .expect("folder store");
            Store {
                name: "folder",
                store,
                _dir: Some(dir),
                cleanup: None,
            }
        }
        _ => {
            let emu = tokio::task::spawn_blocking(emulator::localstack)
                .await
                .expect("task")
                .expect("LocalStack (localstack/start.sh localstack)");
            let opts = emu.s3_options();
            let admin = BucketAdmin::new(&opts).await;
            let bucket = format!("tern-bench-msg-{}", std::process::id());
            admin
                .create_bucket(&bucket, &opts.region)
                .await
                .expect("bucket");
            let store = open_store(&StoreConfig {
                url: format!("s3://{bucket}"),
                s3: opts,
            })
            .expect("s3 store");
            Store {
                name: "localstack",
                store,
                _dir: None,
                cleanup: Some((admin, bucket)),
            }
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Raw small-object PUT + GET round trips on the store: the floor.
async fn floor(store: &Arc<dyn ObjectStore>, n: usize) -> (Duration, Duration) {
    let body = Bytes::from(vec![7u8; 200]);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let p = Path::from(format!("floor/{i}"));
        let t = Instant::now();
        store
            .put_overwrite(&p, body.clone().into())
            .await
            .expect("put");
        store.read_all(&p).await.expect("get");
        lat.push(t.elapsed());
    }
    let _ = store.delete_prefix(&Path::from("floor")).await;
    lat.sort();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

async fn bench(store_name: &str, rate: u64, seconds: u64, poll: Duration, sync: Synchronous) {
    let bucket = open(store_name).await;
    let (floor_p50, floor_p99) = floor(&bucket.store, 200).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let k1 =
        LocalKeyProvider::create(&dir.path().join("k1"), SystemRandom::shared()).expect("keys");
    let k2 = LocalKeyProvider::create_joining(
        &dir.path().join("k2"),
        &dir.path().join("k1"),
        SystemRandom::shared(),
    )
    .expect("keys");
    let meta = |name: &str| {
        MetaStore::open_sqlite(
            dir.path().join(name),
            SqliteOptions {
                synchronous: sync,
                ..SqliteOptions::default()
            },
        )
        .expect("meta")
    };
    let timing = Arc::new(Timing {
        epoch: Instant::now(),
        latencies: Mutex::new(Vec::new()),
        last: Mutex::new(None),
    });
    let registry = Registry::new()
        .with("bench", timing.clone() as Arc<dyn Handler>)
        .expect("registry");
    let config = MessagingConfig {
        poll_interval: poll,
        send_interval: poll,
        max_batch: 1000,
        process_batch: 512,
        clean_batch: 512,
        concurrency: 8,
        ..MessagingConfig::default()
    };
    let (d1, d2) = (
        DeploymentId::new("d1").expect("id"),
        DeploymentId::new("d2").expect("id"),
    );
    let ctx = |id: &DeploymentId, meta: MetaStore, keys: LocalKeyProvider| {
        Context::new(
            id.clone(),
            meta,
            Arc::new(CachedWrapKeys::new(Arc::new(keys))),
            SystemClock::shared(),
            SystemRandom::shared(),
            registry.clone(),
            config.clone(),
        )
        .expect("context")
    };
    let c1 = ctx(&d1, meta("d1.db"), k1);
    let c2 = ctx(&d2, meta("d2.db"), k2);
    let genesis = c1.create_outbound(&d2).await.expect("channel");
    c2.register_inbound(&genesis).await.expect("channel");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut worker = Sender::new(c1.clone(), d2.clone(), Arc::clone(&bucket.store));
    let api = Arc::new(
        Sender::new(c1.clone(), d2.clone(), Arc::clone(&bucket.store))
            .sharing_waker(worker.waker()),
    );
    let backoff = Duration::from_millis(50);
    let mut tasks = Vec::new();
    {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            run(&mut worker, stop, backoff).await
        }));
    }
    {
        let mut w = Receiver::new(c2.clone(), Arc::clone(&bucket.store));
        let stop = stop.clone();
        tasks.push(tokio::spawn(
            async move { run(&mut w, stop, backoff).await },
        ));
    }
    {
        let mut w = Processor::new(c2.clone(), Arc::clone(&bucket.store));
        let stop = stop.clone();
        tasks.push(tokio::spawn(
            async move { run(&mut w, stop, backoff).await },
        ));
    }
    {
        let mut w = Cleaner::new(c2.clone(), Arc::clone(&bucket.store));
        let stop = stop.clone();
        tasks.push(tokio::spawn(
            async move { run(&mut w, stop, backoff).await },
        ));
    }

    // Offered load: message i is due at start + i/rate; producers send on schedule (a
    // few in parallel, so one slow metadata commit does not hold the others back).
    let total = rate * seconds;
    let start = Instant::now();
    let producers = 4u64;
    let mut prod = Vec::new();
    for p in 0..producers {
        let api = Arc::clone(&api);
        let timing = Arc::clone(&timing);
        prod.push(tokio::spawn(async move {
            let mut i = p;
            let mut late = 0u64;
            while i < total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep(due - now).await;
                } else if now - due > Duration::from_millis(100) {
                    late += 1;
                }
                let nanos = timing.epoch.elapsed().as_nanos();
                let payload = format!("{nanos}:{:0>80}", i);
                api.send(Draft::new("bench", payload)).await.expect("send");
                i += producers;
            }
            late
        }));
    }
    let mut late = 0;
    for p in prod {
        late += p.await.expect("producer");
    }
    let offered_for = start.elapsed();
    // Wait for every message to be handled (bounded).
    let deadline = Instant::now() + Duration::from_secs(60 + seconds);
    loop {
        let n = timing.latencies.lock().map(|l| l.len()).unwrap_or(0) as u64;
        if n >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let mut lat = timing
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort();
    let last = timing
        .last
        .lock()
        .ok()
        .and_then(|l| *l)
        .unwrap_or_else(Instant::now);
    let elapsed = last.saturating_duration_since(start);
    let handled = lat.len() as u64;
    let throughput = handled as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
    let target = poll + Duration::from_millis(50);
    let c = c1.counters();
    let files = tern_messaging::Counters::get(&c.files_written);
    println!(
        "{:<10} offered {rate}/s for {seconds} s ({:.1} s to offer, {late} sends >100 ms late), poll interval {} ms, SQLite {sync:?}",
        bucket.name,
        offered_for.as_secs_f64(),
        poll.as_millis(),
    );
    println!(
        "{:<10}   handled {handled}/{total} in {:.2} s: {throughput:.0} msg/s ({:.2}× offered), {files} message files ({:.0} msg/file)",
        "",
        elapsed.as_secs_f64(),
        throughput / rate as f64,
        handled as f64 / files.max(1) as f64,
    );
    println!(
        "{:<10}   end-to-end latency p50 {:.1} ms, p99 {:.1} ms; floor (raw PUT+GET) p50 {:.2} ms, p99 {:.2} ms",
        "",
        ms(p50),
        ms(p99),
        ms(floor_p50),
        ms(floor_p99),
    );
    println!(
        "{:<10}   p50 / floor p50 = {:.1}×;  p50 / poll interval = {:.2}×;  target p50 ≤ poll + 50 ms = {:.0} ms: {}",
        "",
        ms(p50) / ms(floor_p50).max(1e-9),
        ms(p50) / ms(poll),
        ms(target),
        if p50 <= target { "met" } else { "NOT met" },
    );
    if let Some((admin, b)) = bucket.cleanup {
        let _ = bucket.store.delete_prefix(&Path::from("from")).await;
        let _ = admin.delete_bucket(&b).await;
    }
}

fn main() {
    let rate: u64 = env("TERN_BENCH_RATE", 1000);
    let seconds: u64 = env("TERN_BENCH_SECONDS", 10);
    let poll = Duration::from_millis(env("TERN_BENCH_POLL_MS", 100));
    let stores: String = env("TERN_BENCH_STORES", "folder,localstack".to_string());
    let sync = match env("TERN_BENCH_SYNC", "full".to_string()).as_str() {
        "normal" => Synchronous::Normal,
        _ => Synchronous::Full,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for s in stores.split(',').filter(|s| !s.is_empty()) {
            bench(s, rate, seconds, poll, sync).await;
        }
    });
}
