//! `tern selfcheck`: real work on local folders, checked step by step.
//!
//! Two deployments, d1 and d2, each with a volume folder, a replication folder, a SQLite
//! metadata store and local keys. d1 creates a table, loads rows and queries them; its
//! micro-partitions are then copied to d2 the way replication will copy them — re-encrypted
//! into d2's inbound stage under a replication key, then into d2's volume under d2's own
//! key — and a tampered copy is refused. d1 sends messages to d2 through the message
//! service under injected storage faults; each is handled exactly once and the receiver
//! cleans up. Any wrong result fails the command.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStore;
use serde::Serialize;
use tern_clock::SystemClock;
use tern_crypto::{
    CachedWrapKeys, CopyOptions, DataKey, EncryptOptions, EncryptedObject, Endpoint,
    LocalKeyProvider, RepMk, ReplicationFileKeys, SystemRandom, TableFileKeys,
};
use tern_messaging::{
    Bodies, Cleaner, Commit, Context, Draft, GlobalMessage, Handler, HandlerError, MessagingConfig,
    Processor, Receiver, Registry, Sender, Worker, worker,
};
use tern_meta::{AccountDpo, DatabaseDpo, MetaStore, SqliteOptions};
use tern_storage::layout::{self, AccountId, DatabaseId, DeploymentId, GlobalFileRef, ResponseId};
use tern_storage::{
    Fault, FaultPlan, FaultRule, FaultStore, Operation, Path, StoreConfig, StoreExt, open_store,
};
use tern_table::{
    Aggregate, CmpOp, ColumnDef, ColumnType, Predicate, Scalar, ScanRequest, TableOptions, Tables,
};
use tern_txn::{TxnManager, TxnOptions};

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A step's call failed.
    #[error("step {step:?} failed: {source}")]
    Failed {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step ran but its result was wrong.
    #[error("step {step:?} gave a wrong result: {detail}")]
    Wrong {
        /// The step.
        step: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The working folder could not be prepared.
    #[error("cannot prepare the folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = CheckError> = std::result::Result<T, E>;

fn failed<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
) -> impl FnOnce(E) -> CheckError {
    move |e| CheckError::Failed {
        step,
        source: Box::new(e),
    }
}

fn wrong(step: &'static str, detail: impl Into<String>) -> CheckError {
    CheckError::Wrong {
        step,
        detail: detail.into(),
    }
}

#[derive(Debug, Serialize)]
struct Step {
    name: &'static str,
    detail: String,
    millis: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    folder: String,
    steps: Vec<Step>,
}

/// One deployment on local folders.
struct Deployment {
    id: DeploymentId,
    volume: Arc<dyn ObjectStore>,
    replication: Arc<dyn ObjectStore>,
    keys: Arc<LocalKeyProvider>,
    tables: Tables,
    txn: TxnManager,
}

fn open_folder(dir: &FsPath) -> Result<Arc<dyn ObjectStore>> {
    open_store(&StoreConfig {
        url: format!("file://{}", dir.display()),
        ..Default::default()
    })
    .map_err(failed("open folder store"))
}

/// Deployment `id` under `root`; `group` is the key folder of a member whose group it joins
/// (the same global master key), `None` for the first member.
async fn deployment(root: &FsPath, id: &str, group: Option<&FsPath>) -> Result<Deployment> {
    let id = DeploymentId::new(id).map_err(failed("names"))?;
    let home = root.join(id.as_str());
    let volume = open_folder(&home.join("volume"))?;
    let replication = open_folder(&home.join("replication"))?;
    std::fs::create_dir_all(&home).map_err(|source| CheckError::Folder {
        path: home.clone(),
        source,
    })?;
    let meta = MetaStore::open_sqlite(home.join("meta.db"), SqliteOptions::default())
        .map_err(failed("open metadata store"))?;
    let key_dir = home.join("keys");
    let keys = match group {
        Some(member) if !key_dir.exists() => {
            LocalKeyProvider::create_joining(&key_dir, member, SystemRandom::shared())
        }
        _ => LocalKeyProvider::open_or_create(&key_dir, SystemRandom::shared()),
    }
    .map_err(failed("open keys"))?;
    let keys = Arc::new(keys);
    let txn = TxnManager::open(
        id.clone(),
        meta.clone(),
        Arc::clone(&volume),
        keys.clone(),
        SystemClock::shared(),
        TxnOptions::default(),
    )
    .map_err(failed("open transactions"))?;
    txn.recover()
        .await
        .map_err(failed("recover transactions"))?;
    let tables = Tables::new(
        id.clone(),
        Arc::clone(&volume),
        meta,
        keys.clone(),
        SystemClock::shared(),
        TableOptions::default(),
        Arc::new(txn.clone()),
    );
    Ok(Deployment {
        id,
        volume,
        replication,
        keys,
        tables,
        txn,
    })
}

fn orders(from: i64, to: i64) -> Result<RecordBatch> {
    let ids: Vec<i64> = (from..to).collect();
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| format!("customer-{:05}", i % 10_000))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            ids.iter()
                .map(|i| (i % 1000) as f64 / 4.0)
                .collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_from_iter(["id", "customer", "amount"].into_iter().zip(arrays))
        .map_err(failed("make rows"))
}

/// Run every step; print the report; fail at the first wrong result.
pub async fn run(dir: Option<PathBuf>, rows: u64, json: bool) -> Result<()> {
    let temp;
    let root = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).map_err(|source| CheckError::Folder {
                path: d.clone(),
                source,
            })?;
            if std::fs::read_dir(&d)
                .map(|mut e| e.next().is_some())
                .unwrap_or(false)
            {
                // Each run starts from an empty group so its checks mean something.
                let run = d.join(format!("run-{}", std::process::id()));
                std::fs::create_dir_all(&run).map_err(|source| CheckError::Folder {
                    path: run.clone(),
                    source,
                })?;
                run
            } else {
                d
            }
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("tern-selfcheck-")
                .tempdir()
                .map_err(|source| CheckError::Folder {
                    path: std::env::temp_dir(),
                    source,
                })?;
            temp.path().to_path_buf()
        }
    };
    let mut steps = Vec::new();
    let mut step = |name: &'static str, started: Instant, detail: String| {
        steps.push(Step {
            name,
            detail,
            millis: started.elapsed().as_secs_f64() * 1e3,
        });
    };
    let rows = i64::try_from(rows.max(1000)).map_err(|_| wrong("options", "too many rows"))?;

    let t = Instant::now();
    let d1 = deployment(&root, "d1", None).await?;
    let d2 = deployment(&root, "d2", Some(&root.join("d1").join("keys"))).await?;
    step(
        "open group",
        t,
        format!("deployments d1, d2 under {}", root.display()),
    );

    // A table on d1.
    let t = Instant::now();
    let account = AccountId::new("acme").map_err(failed("names"))?;
    let db = DatabaseId::new("sales").map_err(failed("names"))?;
    d1.tables
        .meta()
        .write(|tx| {
            tx.create_account(&AccountDpo::local(account.clone(), 0))?;
            tx.create_database(&DatabaseDpo::local(db.clone(), account.clone(), "sales", 0))
        })
        .map_err(failed("create table"))?;
    d1.tables
        .create_schema(&db, "public")
        .await
        .map_err(failed("create table"))?;
    let col = |name: &str, ty, nullable| ColumnDef {
        name: name.into(),
        ty,
        nullable,
    };
    let columns = vec![
        col("id", ColumnType::Int64, false),
        col("customer", ColumnType::Utf8, true),
        col("amount", ColumnType::Float64, true),
    ];
    let table = d1
        .tables
        .create_table(&db, "public", "orders", columns)
        .await
        .map_err(failed("create table"))?;
    step(
        "create table",
        t,
        format!("acme.sales.public.orders ({table}) with its own master key"),
    );

    // Load rows in a few commits.
    let t = Instant::now();
    let per_commit = (rows / 4).max(1);
    let mut start = 0;
    while start < rows {
        let end = (start + per_commit).min(rows);
        d1.tables
            .insert(&table, &[orders(start, end)?])
            .await
            .map_err(failed("insert"))?;
        start = end;
    }
    let secs = t.elapsed().as_secs_f64();
    step(
        "insert",
        t,
        format!(
            "{rows} rows in 4 commits, {:.0} rows/s (Parquet + encrypt + commit)",
            rows as f64 / secs
        ),
    );

    // Queries.
    let t = Instant::now();
    let count = d1
        .tables
        .aggregate(&table, &Aggregate::Count, None, None)
        .await
        .map_err(failed("query"))?;
    if count != Some(Scalar::Int64(rows)) {
        return Err(wrong(
            "query",
            format!("count(*) = {count:?}, expected {rows}"),
        ));
    }
    let probe = rows / 2;
    let point = d1
        .tables
        .scan(
            &table,
            &ScanRequest {
                predicate: Some(Predicate::eq("id", probe)),
                ..Default::default()
            },
        )
        .await
        .map_err(failed("query"))?;
    if point.rows() != 1 {
        return Err(wrong(
            "query",
            format!("point query returned {} rows", point.rows()),
        ));
    }
    let sum = d1
        .tables
        .aggregate(
            &table,
            &Aggregate::Sum("id".into()),
            Some(&Predicate::cmp("id", CmpOp::Lt, 1000i64)),
            None,
        )
        .await
        .map_err(failed("query"))?;
    if sum != Some(Scalar::Int64(999 * 1000 / 2)) {
        return Err(wrong("query", format!("sum(id) where id < 1000 = {sum:?}")));
    }
    step(
        "query",
        t,
        format!(
            "count, sum and a point query opening {} of {} files",
            point.files_read, point.files_total
        ),
    );

    // Delete, then time travel to before it.
    let t = Instant::now();
    let del = d1
        .tables
        .delete(&table, &Predicate::cmp("id", CmpOp::Lt, 1000i64))
        .await
        .map_err(failed("delete"))?;
    let now = d1
        .tables
        .aggregate(&table, &Aggregate::Count, None, None)
        .await
        .map_err(failed("delete"))?;
    let before = d1
        .tables
        .aggregate(&table, &Aggregate::Count, None, Some(del.version - 1))
        .await
        .map_err(failed("delete"))?;
    if now != Some(Scalar::Int64(rows - 1000)) || before != Some(Scalar::Int64(rows)) {
        return Err(wrong(
            "delete",
            format!("count after {now:?}, at the previous version {before:?}"),
        ));
    }
    step(
        "delete + time travel",
        t,
        format!(
            "1000 rows deleted at version {}; version {} still has {rows}",
            del.version,
            del.version - 1
        ),
    );

    // Every version is backed by its transaction's log record, in id order per table.
    let t = Instant::now();
    let versions = d1
        .tables
        .meta()
        .read(|tx| tx.table_versions(&table))
        .map_err(failed("transaction log"))?;
    let mut last = 0;
    for v in versions.iter().filter(|v| v.version > 0) {
        let id = v.txn_id.ok_or_else(|| {
            wrong(
                "transaction log",
                format!("version {} has no id", v.version),
            )
        })?;
        let record = d1
            .txn
            .read_log(&account, id)
            .await
            .map_err(failed("transaction log"))?;
        let logged = record
            .changes
            .iter()
            .any(|c| c.table_version() == Some((&table, v.version)));
        if !logged || id <= last {
            return Err(wrong(
                "transaction log",
                format!(
                    "version {} and log record {id} (after {last}) disagree",
                    v.version
                ),
            ));
        }
        last = id;
    }
    let records = d1
        .txn
        .log_ids(&account, 0)
        .await
        .map_err(failed("transaction log"))?
        .len();
    step(
        "transaction log",
        t,
        format!(
            "{records} encrypted log records (DDL and DML); each of the table's {} versions has its own, ids increasing",
            versions.len() - 1
        ),
    );

    // Copy d1's micro-partitions to d2: volume → inbound stage → volume, re-encrypted twice.
    let t = Instant::now();
    let d1_table = d1.tables.table(&table).map_err(failed("copy to peer"))?;
    let files = d1
        .tables
        .meta()
        .read(|tx| tx.active_micro_partitions(&table, d1_table.current_version))
        .map_err(failed("copy to peer"))?;
    let random = SystemRandom::shared();
    let d1_keys = d1
        .tables
        .file_keys(&table)
        .await
        .map_err(failed("copy to peer"))?;
    let repmk = Arc::new(RepMk::generate(random.as_ref()).map_err(failed("copy to peer"))?);
    let stage_keys = ReplicationFileKeys::new(Arc::clone(&repmk));
    let d2_keys = TableFileKeys::new(Arc::new(
        DataKey::generate(random.as_ref()).map_err(failed("copy to peer"))?,
    ));
    let response = ResponseId::new("r1").map_err(failed("names"))?;
    let (opts, enc) = (CopyOptions::default(), EncryptOptions::default());
    let mut copied = 0u64;
    let mut last_inbound = None;
    for mp in &files {
        let src = Path::from(mp.path.as_str());
        let global = GlobalFileRef::new(d1.id.clone(), mp.short.clone());
        let inbound = layout::replication::inbound(&d1.id, &response, &global);
        let local = tern_storage::layout::ShortName::new(format!("{}_g", mp.short))
            .map_err(failed("names"))?;
        let dst = layout::volume::mp(&account, &db, &table, &local);
        let stats = tern_crypto::reencrypt(
            Endpoint {
                store: &d1.volume,
                path: &src,
                keys: d1_keys.as_ref(),
            },
            Endpoint {
                store: &d2.replication,
                path: &inbound,
                keys: &stage_keys,
            },
            &opts,
            &enc,
        )
        .await
        .map_err(failed("copy to peer"))?;
        tern_crypto::reencrypt(
            Endpoint {
                store: &d2.replication,
                path: &inbound,
                keys: &stage_keys,
            },
            Endpoint {
                store: &d2.volume,
                path: &dst,
                keys: &d2_keys,
            },
            &opts,
            &enc,
        )
        .await
        .map_err(failed("copy to peer"))?;
        let original = EncryptedObject::open(Arc::clone(&d1.volume), &src, d1_keys.as_ref())
            .await
            .map_err(failed("copy to peer"))?;
        let copy = EncryptedObject::open(Arc::clone(&d2.volume), &dst, &d2_keys)
            .await
            .map_err(failed("copy to peer"))?;
        if original.read_all().await.map_err(failed("copy to peer"))?
            != copy.read_all().await.map_err(failed("copy to peer"))?
        {
            return Err(wrong("copy to peer", format!("{dst} differs from {src}")));
        }
        copied += stats.plaintext_bytes;
        last_inbound = Some(inbound);
    }
    step(
        "copy to peer",
        t,
        format!(
            "{} micro-partitions ({:.1} MiB) re-encrypted d1 volume → d2 inbound → d2 volume, verified",
            files.len(),
            copied as f64 / 1048576.0
        ),
    );

    // A tampered inbound file is refused and nothing is written.
    let t = Instant::now();
    let inbound = last_inbound.ok_or_else(|| wrong("tamper", "no file was copied"))?;
    let mut bytes = d2
        .replication
        .read_all(&inbound)
        .await
        .map_err(failed("tamper"))?
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    d2.replication
        .put_overwrite(&inbound, Bytes::from(bytes).into())
        .await
        .map_err(failed("tamper"))?;
    let target = Path::from("tampered/copy.mp");
    let refused = tern_crypto::reencrypt(
        Endpoint {
            store: &d2.replication,
            path: &inbound,
            keys: &stage_keys,
        },
        Endpoint {
            store: &d2.volume,
            path: &target,
            keys: &d2_keys,
        },
        &opts,
        &enc,
    )
    .await;
    let Err(e) = refused else {
        return Err(wrong("tamper", "a flipped bit was not detected"));
    };
    if d2.volume.meta(&target).await.is_ok() {
        return Err(wrong(
            "tamper",
            "a destination was written from a tampered source",
        ));
    }
    step(
        "tamper refused",
        t,
        format!("flipped bit in {inbound}: {e}"),
    );

    // Messages d1 → d2 through the message service: encrypted message files in d2's
    // replication bucket, written under injected faults (one write lands but reports
    // failure), each message handled once by d2, then d2 removes what it processed.
    let t = Instant::now();
    let notes = Arc::new(Notes::default());
    let ctx1 = messaging(&d1, Arc::clone(&notes))?;
    let ctx2 = messaging(&d2, Arc::clone(&notes))?;
    let genesis = ctx1
        .create_outbound(&d2.id)
        .await
        .map_err(failed("message chain"))?;
    ctx2.register_inbound(&genesis)
        .await
        .map_err(failed("message chain"))?;
    let plan = FaultPlan::new();
    let peer_bucket: Arc<dyn ObjectStore> =
        Arc::new(FaultStore::new(Arc::clone(&d2.replication), plan.clone()));
    let msg_files = layout::replication::msg_prefix(&d1.id);
    let faults = [
        plan.arm(
            FaultRule::on(Operation::Put)
                .under(msg_files.clone())
                .fault(Fault::FailAfterEffect),
        ),
        plan.arm(
            FaultRule::on(Operation::Put)
                .under(msg_files.clone())
                .nth(3)
                .fault(Fault::Fail),
        ),
    ];
    let mut sender = Sender::new(ctx1.clone(), d2.id.clone(), peer_bucket);
    let sent = 30usize;
    for batch in 0..3 {
        let drafts = (0..sent / 3)
            .map(|n| Draft::new(NOTE, format!("{{\"n\":{}}}", batch * 10 + n)))
            .collect();
        sender
            .send_batch(drafts)
            .await
            .map_err(failed("message chain"))?;
        // A failed write is retried the way the daemon's worker loop retries it.
        drive(&mut sender).await?;
    }
    let files = d2
        .replication
        .list_sorted(&msg_files)
        .await
        .map_err(failed("message chain"))?
        .len();
    let mut receiver = Receiver::new(ctx2.clone(), Arc::clone(&d2.replication));
    let mut processor = Processor::new(ctx2.clone(), Arc::clone(&d2.replication));
    let mut cleaner = Cleaner::new(ctx2.clone(), Arc::clone(&d2.replication));
    drive(&mut receiver).await?;
    drive(&mut processor).await?;
    drive(&mut cleaner).await?;
    let handled = notes.handled();
    if handled.len() != sent || notes.calls() != sent {
        return Err(wrong(
            "message chain",
            format!(
                "{sent} messages sent, {} handled ({} handler calls)",
                handled.len(),
                notes.calls()
            ),
        ));
    }
    let rejected: u64 = ctx2.counters().rejected().values().sum();
    if rejected > 0 {
        return Err(wrong("message chain", format!("{rejected} files rejected")));
    }
    // The copies staged for the import above go too: the receiver empties its stage.
    let staged = d2
        .replication
        .delete_prefix(&layout::replication::inbound_prefix(&d1.id, &response))
        .await
        .map_err(failed("message chain"))?;
    let left = d2
        .replication
        .list_sorted(&layout::replication::sub_bucket(&d1.id))
        .await
        .map_err(failed("message chain"))?;
    if !left.is_empty() {
        return Err(wrong(
            "message chain",
            format!(
                "{} files left in d2:from/d1/ after cleanup: {:?}",
                left.len(),
                left.iter()
                    .map(|m| m.location.to_string())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    step(
        "message chain",
        t,
        format!(
            "{sent} messages in {files} encrypted files d1 → d2 despite {} injected faults (one inconclusive); each handled once; d2 removed them and {staged} staged copies",
            faults.iter().map(|f| plan.fired(*f)).sum::<u64>()
        ),
    );

    print_report(
        &Report {
            folder: root.display().to_string(),
            steps,
        },
        json,
    );
    Ok(())
}

/// The message type the self-check sends.
const NOTE: &str = "selfcheck.note";

/// Records which messages were handled, and how often the handler ran.
#[derive(Debug, Default)]
struct Notes {
    ids: Mutex<BTreeSet<String>>,
    calls: Mutex<usize>,
}

impl Notes {
    fn handled(&self) -> BTreeSet<String> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn calls(&self) -> usize {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Handler for Notes {
    fn validate(&self, payload: &[u8]) -> std::result::Result<(), String> {
        serde_json::from_slice::<serde_json::Value>(payload)
            .map(|_| ())
            .map_err(|e| format!("not JSON: {e}"))
    }

    async fn handle(
        &self,
        msg: &GlobalMessage,
        _bodies: &Bodies,
    ) -> std::result::Result<Commit, HandlerError> {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(msg.id.to_string());
        Ok(Commit::none())
    }
}

/// One deployment's message service, knowing the self-check's message type.
fn messaging(d: &Deployment, notes: Arc<Notes>) -> Result<Context> {
    let mut registry = Registry::new();
    registry
        .register(NOTE, notes)
        .map_err(failed("message chain"))?;
    Context::new(
        d.id.clone(),
        d.tables.meta().clone(),
        Arc::new(CachedWrapKeys::new(d.keys.clone())),
        SystemClock::shared(),
        SystemRandom::shared(),
        registry,
        MessagingConfig::default(),
    )
    .map_err(failed("message chain"))
}

/// Run a worker until it is idle, retrying failed units a few times (storage faults).
async fn drive(w: &mut dyn Worker) -> Result<()> {
    let mut failures = 0;
    loop {
        match worker::drain(w).await {
            Ok(_) => return Ok(()),
            Err(e) if failures < 5 => {
                failures += 1;
                tracing::debug!(worker = %w.name(), error = %e, "unit failed; retrying");
            }
            Err(e) => return Err(failed("message chain")(e)),
        }
    }
}

#[allow(clippy::print_stdout)] // the report is the command's output
fn print_report(report: &Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => println!("{{\"error\": \"{e}\"}}"),
        }
        return;
    }
    let mut out = String::new();
    let _ = writeln!(out, "tern selfcheck — {}", report.folder);
    let width = report.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &report.steps {
        let _ = writeln!(
            out,
            "  ok  {:width$}  {:>9.1} ms  {}",
            s.name, s.millis, s.detail
        );
    }
    let _ = writeln!(out, "all {} steps passed", report.steps.len());
    print!("{out}");
}
