//! A refresh's import takes each file as it lands in the inbound stage, while the
//! upstream still copies the others, and resumes after a crash in the middle of that
//! overlap from what it stored.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tern_replication::service::Counters;
use tern_replication::state::{ImportJobDpo, keys as state_keys};
use tern_replication::{ReplicationConfig, replica_table_id};
use tokio::sync::watch;

use crate::common::*;

/// d1's view of d2's replication bucket: the first `allowed` inbound file copies go
/// through, the next ones wait until the test opens the gate — an upstream still copying,
/// held exactly there.
struct Gate {
    inner: Arc<dyn ObjectStore>,
    allowed: usize,
    passed: AtomicUsize,
    open: watch::Receiver<bool>,
}

impl Gate {
    /// An inbound file copy (`from/<peer>/inbound/<response>/<origin>.<short>`), not the
    /// sections file or the marker.
    async fn pass(&self, location: &Path) {
        let parts: Vec<_> = location.parts().collect();
        let file =
            parts.len() == 5 && parts[2].as_ref() == "inbound" && parts[4].as_ref().contains('.');
        if !file || self.passed.fetch_add(1, Ordering::SeqCst) < self.allowed {
            return;
        }
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gate({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Gate {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.pass(location).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.pass(location).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// 8 files; the upstream's copies held after 5 of them; the replica killed after it copied
/// its 3rd file into its volume — the upstream still copying (no marker, 5 files at most
/// in the inbound stage). Started again, the import resumes the same job: the files it
/// copied stay and are not copied again, the others are copied as they land once the
/// upstream goes on, and the table ends with the 8 files exactly once — no orphan, no
/// second answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_killed_while_the_upstream_copies_resumes_from_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = ReplicationConfig {
        refresh_interval: std::time::Duration::ZERO,
        ..repl_config()
    };
    let mut d1 = open_with(root, "d1", None, config.clone()).await;
    let keys = root.join("d1").join("keys");
    let mut d2 = open_with(root, "d2", Some(&keys), config.clone()).await;
    link(&d1, &d2).await;
    let (opened, open) = watch::channel(false);
    let gate: Arc<dyn ObjectStore> = Arc::new(Gate {
        inner: tern_replication::local::folder(&root.join("d2").join("repl")).unwrap(),
        allowed: 5,
        passed: AtomicUsize::new(0),
        open,
    });
    d1.start_with(&[(d2.id.clone(), gate)]);
    d2.start(&[&d1]);
    let (a1, _, account_group, t) = primary_with_t(&d1).await;
    for i in 0..8 {
        d1.tables
            .insert(&t, &[batch(i * 10..i * 10 + 10, "x")])
            .await
            .unwrap();
    }
    d2.ctx
        .crash_points()
        .arm_after(tern_replication::crash::IMPORT_FILE_COPIED, 2);
    replicate(&d1, &a1, &d2, &account_group).await;
    eventually(WAIT, "the replica's third file copy", || async {
        d2.ctx
            .crash_points()
            .fired()
            .contains(&tern_replication::crash::IMPORT_FILE_COPIED)
    })
    .await;
    d2.kill().await;

    // What the killed replica left: the job (plan, wrapped RepMK, the batch's reserved
    // names) and the files it copied; the upstream still copying.
    let mut d2 = open_with(root, "d2", Some(&keys), config.clone()).await;
    let jobs = d2
        .meta
        .read(|tx| tx.scan_prefix::<ImportJobDpo>(&state_keys::import_jobs()))
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0].1;
    assert!(job.response.streamed && !job.response.repmk.wrapped.is_empty());
    assert_eq!(job.tables_done, 0);
    assert!(job.batch.is_some(), "{job:?}");
    let response = job.response.response_id.clone();
    let marker = tern_replication::model::copied_path(&d1.id, &response);
    assert!(
        objects(&d2.bucket, marker.as_ref()).await.is_empty(),
        "the upstream had not finished"
    );
    let landed = objects(&d2.bucket, &format!("from/d1/inbound/{response}"))
        .await
        .into_iter()
        .filter(|p| p.rsplit('/').next().is_some_and(|f| f.contains('.')))
        .count();
    assert!(landed <= 5, "{landed} files landed past the gate");
    let rid = replica_table_id(&d1.id, &t);
    let in_volume = |n: &Node| {
        let volume = Arc::clone(&n.volume);
        let rid = rid.clone();
        async move {
            objects(&volume, "acct")
                .await
                .into_iter()
                .filter(|p| p.contains(&format!("/tbl/{rid}/mp/")))
                .collect::<Vec<_>>()
        }
    };
    let before = in_volume(&d2).await;
    assert!(
        (3..=landed).contains(&before.len()),
        "{} files copied before the crash, {landed} landed",
        before.len()
    );
    assert_eq!(ver(&d2, &rid), Some(0), "nothing committed yet");

    d2.start(&[&d1]);
    opened.send(true).unwrap();
    caught_up(&d1, &d2, std::slice::from_ref(&t)).await;
    same_rows(&d1, &d2, std::slice::from_ref(&t)).await;
    assert_eq!(
        Counters::get(&d2.repl.counters().files_copied) as usize,
        8 - before.len(),
        "only the files not copied before the crash were copied after it"
    );
    let active = d2
        .meta
        .read(|tx| tx.active_micro_partitions(&rid, ver(&d2, &rid).unwrap()))
        .unwrap();
    let refs: std::collections::BTreeSet<_> = active.iter().map(|m| &m.global_ref).collect();
    assert_eq!((active.len(), refs.len()), (8, 8));
    let after = in_volume(&d2).await;
    assert_eq!(after.len(), 8, "no orphan or second copy: {after:?}");
    assert!(before.iter().all(|p| after.contains(p)), "kept: {before:?}");
    assert_eq!(
        Counters::get(&d1.repl.counters().snapshots_served),
        1,
        "answered once: the same import resumed"
    );
    eventually(WAIT, "the import job to be done", || async {
        d2.repl.jobs().unwrap().is_empty()
    })
    .await;
    d1.stop().await;
    d2.stop().await;
}
