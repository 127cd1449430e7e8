//! `tern selfcheck`: real work on local folders, checked step by step.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::Serialize;
use tern_storage::layout::{self, AccountId, DatabaseId, DeploymentId, ShortName, TableId};
use tern_storage::{
    Error as StorageError, Fault, FaultPlan, FaultRule, FaultStore, Operation, RetryPolicy,
    RetryStore, StoreConfig, StoreExt, open_store,
};

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A step's storage call failed.
    #[error("step {step:?} failed: {source}")]
    Storage {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: StorageError,
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

fn wrong(step: &'static str, detail: impl Into<String>) -> CheckError {
    CheckError::Wrong {
        step,
        detail: detail.into(),
    }
}

fn storage(step: &'static str) -> impl FnOnce(StorageError) -> CheckError {
    move |source| CheckError::Storage { step, source }
}

fn object_store_err(
    step: &'static str,
    path: &tern_storage::Path,
    op: Operation,
) -> impl FnOnce(object_store::Error) -> CheckError {
    move |e| CheckError::Storage {
        step,
        source: StorageError::from_store(op, path, e),
    }
}

/// The buckets of one deployment on local folders.
struct Deployment {
    volume: Arc<dyn ObjectStore>,
    replication: Arc<dyn ObjectStore>,
}

fn open_folder(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>> {
    open_store(&StoreConfig {
        url: format!("file://{}", dir.display()),
        ..Default::default()
    })
    .map_err(storage("open folder store"))
}

fn deployment(root: &std::path::Path, id: &DeploymentId) -> Result<Deployment> {
    Ok(Deployment {
        volume: open_folder(&root.join(id.as_str()).join("volume"))?,
        replication: open_folder(&root.join(id.as_str()).join("replication"))?,
    })
}

fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Run every step; print the report; fail at the first wrong result.
pub async fn run(dir: Option<PathBuf>, size_mib: u64, json: bool) -> Result<()> {
    let temp;
    let root = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).map_err(|source| CheckError::Folder {
                path: d.clone(),
                source,
            })?;
            d
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

    let ids = |s: &str| DeploymentId::new(s).map_err(storage("names"));
    let (d1_id, d2_id) = (ids("d1")?, ids("d2")?);
    let t = Instant::now();
    let d1 = deployment(&root, &d1_id)?;
    let d2 = deployment(&root, &d2_id)?;
    step(
        "open group",
        t,
        format!("deployments d1, d2 under {}", root.display()),
    );

    // A micro-partition-sized file written into d1's volume as a multipart upload.
    let account = AccountId::new("acme").map_err(storage("names"))?;
    let db = DatabaseId::new("sales").map_err(storage("names"))?;
    let table = TableId::new("orders").map_err(storage("names"))?;
    let short = ShortName::new("fdn1").map_err(storage("names"))?;
    let mp = layout::volume::mp(&account, &db, &table, &short);
    let len = usize::try_from(size_mib << 20).map_err(|_| wrong("write", "size too large"))?;
    let data = Bytes::from(pattern(len));
    let t = Instant::now();
    let upload = d1
        .volume
        .put_multipart(&mp)
        .await
        .map_err(object_store_err("write", &mp, Operation::PutMultipart))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    w.write(&data);
    w.finish()
        .await
        .map_err(object_store_err("write", &mp, Operation::PutMultipart))?;
    step("multipart write", t, format!("{size_mib} MiB to d1:{mp}"));

    // Read back whole and by range.
    let t = Instant::now();
    let back = d1
        .volume
        .read_all(&mp)
        .await
        .map_err(storage("read back"))?;
    if back != data {
        return Err(wrong("read back", "content differs from what was written"));
    }
    let mid = (len / 2) as u64;
    let range = d1
        .volume
        .read_range(&mp, mid..mid + 4096)
        .await
        .map_err(storage("range read"))?;
    if range[..] != data[len / 2..len / 2 + 4096] {
        return Err(wrong("range read", "range content differs"));
    }
    step(
        "verified read",
        t,
        "whole object and a 4 KiB range match".into(),
    );

    // Copy into d2's inbound stage (d1 may only write under from/d1/ there).
    let response = layout::ResponseId::new("r1").map_err(storage("names"))?;
    let gref = layout::GlobalFileRef::new(d1_id.clone(), short.clone());
    let inbound = layout::replication::inbound(&d1_id, &response, &gref);
    let t = Instant::now();
    d2.replication
        .put_new(&inbound, back.clone().into())
        .await
        .map_err(storage("copy to inbound"))?;
    step("copy to inbound", t, format!("d2:{inbound}"));

    // Message files form a chain created exactly once each, even under inconclusive writes.
    let plan = FaultPlan::new();
    let flaky: Arc<dyn ObjectStore> =
        Arc::new(FaultStore::new(Arc::clone(&d2.replication), plan.clone()));
    let reliable = RetryStore::new(
        flaky,
        RetryPolicy {
            initial_backoff: std::time::Duration::from_millis(5),
            ..Default::default()
        },
    );
    let faults = [
        plan.arm(
            FaultRule::on(Operation::Put)
                .nth(2)
                .fault(Fault::FailAfterEffect),
        ),
        plan.arm(FaultRule::on(Operation::Put).nth(4).fault(Fault::Fail)),
    ];
    let t = Instant::now();
    for seq in 1..=5u64 {
        let path = layout::replication::msg(&d1_id, seq);
        reliable
            .put_new(&path, Bytes::from(format!("message file {seq}")).into())
            .await
            .map_err(storage("message chain"))?;
    }
    let chain = d2
        .replication
        .list_sorted(&layout::replication::msg_prefix(&d1_id))
        .await
        .map_err(storage("message chain"))?;
    let seqs: Vec<u64> = chain
        .iter()
        .filter_map(|m| {
            m.location
                .filename()
                .and_then(layout::replication::parse_msg)
        })
        .collect();
    if seqs != [1, 2, 3, 4, 5] {
        return Err(wrong(
            "message chain",
            format!("expected files 1..=5, found {seqs:?}"),
        ));
    }
    match d2
        .replication
        .put_new(
            &layout::replication::msg(&d1_id, 3),
            Bytes::from_static(b"replay").into(),
        )
        .await
    {
        Err(StorageError::AlreadyExists { .. }) => {}
        other => {
            return Err(wrong(
                "message chain",
                format!("a replayed file name was not refused: {other:?}"),
            ));
        }
    }
    step(
        "message chain",
        t,
        format!(
            "5 files created once each despite {} injected faults (one inconclusive); replay refused",
            faults.iter().map(|f| plan.fired(*f)).sum::<u64>()
        ),
    );

    // Receiver cleanup: d2 deletes what it processed.
    let t = Instant::now();
    let removed = d2
        .replication
        .delete_prefix(&layout::replication::sub_bucket(&d1_id))
        .await
        .map_err(storage("cleanup"))?;
    step(
        "receiver cleanup",
        t,
        format!("{removed} files removed from d2:from/d1/"),
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
