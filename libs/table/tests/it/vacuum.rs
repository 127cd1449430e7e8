//! Vacuum against readers: a running scan and a pinned version keep their files past their
//! retention, and the metadata files that rebuild a retained version stay in the volume.
//!
//! The running scan is held deterministically: a store wrapper parks the first read of a
//! micro-partition until the test has committed, vacuumed and opened the gate.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use tern_storage::layout::{self, AccountId, ShortName, TableId};
use tern_storage::{ObjectStore, Path, StoreExt};
use tern_table::ep::MetadataFile;
use tern_table::{Error, Predicate, ScanRequest, TableOptions, mp};
use tokio::sync::{Notify, Semaphore};

use crate::fixture::{Fixture, columns, folder_volume, ids, rows};

const DAY_AND_MORE: Duration = Duration::from_secs(25 * 3600);

/// Parks the first read of a micro-partition after [`Gate::arm`] until [`Gate::open`].
struct Gate {
    armed: AtomicBool,
    arrived: Notify,
    open: Semaphore,
}

impl Gate {
    fn new() -> Self {
        Self {
            armed: AtomicBool::new(false),
            arrived: Notify::new(),
            open: Semaphore::new(0),
        }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn open(&self) {
        self.open.close();
    }

    async fn hold(&self, location: &Path) {
        if location.as_ref().ends_with(".mp") && self.armed.swap(false, Ordering::SeqCst) {
            self.arrived.notify_one();
            // Closed = open: every waiter proceeds.
            let _ = self.open.acquire().await;
        }
    }
}

struct GatedStore {
    inner: Arc<dyn ObjectStore>,
    gate: Arc<Gate>,
}

impl fmt::Debug for GatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

impl fmt::Display for GatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for GatedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if !options.head {
            self.gate.hold(location).await;
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.gate.hold(location).await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

fn at(version: u64) -> ScanRequest {
    ScanRequest {
        version: Some(version),
        ..Default::default()
    }
}

/// A scan of version 2 is parked inside its first file read; meanwhile every row is
/// deleted, a day passes and vacuum runs. The scan then finishes with all of version 2's
/// rows; the next vacuum (no reader left) reclaims the files.
#[tokio::test]
async fn a_running_scan_keeps_its_files() {
    let dir = tempfile::tempdir().expect("dir");
    let gate = Arc::new(Gate::new());
    let volume: Arc<dyn ObjectStore> = Arc::new(GatedStore {
        inner: folder_volume(dir.path()),
        gate: Arc::clone(&gate),
    });
    let f = Fixture::new(volume, TableOptions::default());
    let t = f.create("orders").await;
    let first: Vec<i64> = (1..=10).collect();
    let second: Vec<i64> = (11..=20).collect();
    f.tables.insert(&t, &[rows(&first)]).await.expect("v1");
    f.tables.insert(&t, &[rows(&second)]).await.expect("v2");

    gate.arm();
    let current = ScanRequest::default();
    let scan = f.tables.scan(&t, &current);
    let meanwhile = async {
        gate.arrived.notified().await;
        // The scan has listed version 2's files and is reading the first one.
        let deleted = f
            .tables
            .delete(&t, &Predicate::True)
            .await
            .expect("delete all (v3)");
        assert_eq!(deleted.files_removed, 2);
        f.clock.advance(DAY_AND_MORE);
        let reclaimed = f.tables.vacuum(&t).await.expect("vacuum under the scan");
        gate.open();
        reclaimed
    };
    let (scanned, reclaimed) = tokio::join!(scan, meanwhile);
    let scanned = scanned.expect("the scan finishes after vacuum");
    assert_eq!(scanned.version, 2);
    assert_eq!(ids(&scanned.batches), (1..=20).collect::<Vec<_>>());
    assert_eq!(reclaimed, 0, "nothing version 2 reads was deleted");

    // The reader is gone: its version and files go now.
    assert_eq!(f.tables.vacuum(&t).await.expect("vacuum"), 2);
    let gone = f.tables.scan(&t, &at(2)).await;
    assert!(
        matches!(gone, Err(Error::VersionNotRetained { .. })),
        "{gone:?}"
    );
    assert_eq!(
        f.tables
            .scan(&t, &ScanRequest::default())
            .await
            .expect("scan")
            .rows(),
        0
    );
}

/// A pinned version stays readable past its retention, through any number of vacuums;
/// once the pin is dropped, vacuum reclaims it. A version already vacuumed cannot be
/// pinned.
#[tokio::test]
async fn a_pinned_version_outlives_its_retention() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("orders").await;
    f.tables.insert(&t, &[rows(&[1, 2, 3])]).await.expect("v1");
    f.tables.insert(&t, &[rows(&[4, 5, 6])]).await.expect("v2");

    let pin = f.tables.pin(&t, None).expect("pin the current version");
    assert_eq!(pin.version(), 2);
    f.tables
        .delete(&t, &Predicate::eq("id", 2i64))
        .await
        .expect("v3");
    f.tables
        .delete(&t, &Predicate::eq("id", 5i64))
        .await
        .expect("v4");
    f.clock.advance(DAY_AND_MORE);
    for _ in 0..2 {
        assert_eq!(f.tables.vacuum(&t).await.expect("vacuum"), 0);
        let old = f.tables.scan(&t, &at(2)).await.expect("pinned version");
        assert_eq!(ids(&old.batches), [1, 2, 3, 4, 5, 6]);
    }
    // Versions after the pin are kept too (vacuum drops only versions before it).
    let v3 = f.tables.scan(&t, &at(3)).await.expect("v3");
    assert_eq!(ids(&v3.batches), [1, 3, 4, 5, 6]);
    let too_old = f.tables.pin(&t, Some(1));
    assert!(
        matches!(too_old, Err(Error::VersionNotRetained { version: 1, .. })),
        "{too_old:?}"
    );

    drop(pin);
    assert_eq!(f.tables.vacuum(&t).await.expect("vacuum"), 2);
    for v in [2, 3] {
        let gone = f.tables.pin(&t, Some(v));
        assert!(
            matches!(gone, Err(Error::VersionNotRetained { .. })),
            "{v}: {gone:?}"
        );
    }
    let now = f
        .tables
        .scan(&t, &ScanRequest::default())
        .await
        .expect("v4");
    assert_eq!(ids(&now.batches), [1, 3, 4, 6]);
}

/// The table at a retained version, rebuilt from the volume alone: every metadata file
/// under the table's `ep/` prefix replayed in commit order, then the named
/// micro-partitions read. Returns the short names and the ids.
async fn rebuild_from_volume(f: &Fixture, t: &TableId) -> (Vec<ShortName>, Vec<i64>) {
    let account = AccountId::new("acme").expect("id");
    let keys = f.tables.file_keys(t).await.expect("keys");
    let prefix = layout::volume::ep_prefix(&account, &f.db, t);
    let mut active = std::collections::BTreeMap::new();
    // Names are `<seq:020>.ep`: listing order is commit order.
    for object in f.volume.list_sorted(&prefix).await.expect("list") {
        let plain = tern_crypto::get_decrypted(&f.volume, &object.location, keys.as_ref())
            .await
            .expect("decrypt metadata file");
        let file = MetadataFile::from_bytes(&plain, object.location.as_ref()).expect("parse");
        for r in &file.removed {
            active.remove(r);
        }
        for a in file.added {
            active.insert(a.short.clone(), a);
        }
    }
    let mut batches = Vec::new();
    for a in active.values() {
        let (bs, _) = mp::read(
            Arc::clone(&f.volume),
            &Path::from(a.path.as_str()),
            keys.as_ref(),
            &columns(),
            None,
            &Predicate::True,
        )
        .await
        .expect("read micro-partition");
        batches.extend(bs);
    }
    (active.into_keys().collect(), ids(&batches))
}

/// After vacuum drops the versions before the cutoff, the metadata files the retained
/// versions are rebuilt from stay in the volume (commit 1 added a file that is still
/// active); only a metadata file whose every effect is gone is deleted.
#[tokio::test]
async fn metadata_files_of_retained_versions_survive_vacuum() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("orders").await;
    let first: Vec<i64> = (1..=10).collect();
    let second: Vec<i64> = (11..=20).collect();
    f.tables.insert(&t, &[rows(&first)]).await.expect("v1");
    f.tables.insert(&t, &[rows(&second)]).await.expect("v2");
    f.tables
        .delete(&t, &Predicate::eq("id", 15i64))
        .await
        .expect("v3 rewrites the second file");
    let eps_before = f
        .tables
        .meta()
        .read(|tx| tx.ep_files_at(&t, 3))
        .expect("ep files");
    assert_eq!(eps_before.len(), 3);
    f.clock.advance(DAY_AND_MORE);
    assert_eq!(f.tables.vacuum(&t).await.expect("vacuum"), 1);
    assert!(
        matches!(
            f.tables.scan(&t, &at(2)).await,
            Err(Error::VersionNotRetained { .. })
        ),
        "version 2 expired"
    );

    let expected: Vec<i64> = (1..=20).filter(|i| *i != 15).collect();
    let indexed: Vec<ShortName> = f
        .tables
        .meta()
        .read(|tx| tx.active_micro_partitions(&t, 3))
        .expect("index")
        .into_iter()
        .map(|m| m.short)
        .collect();
    assert_eq!(indexed.len(), 2);
    let (rebuilt, rebuilt_ids) = rebuild_from_volume(&f, &t).await;
    assert_eq!(rebuilt, indexed, "the volume rebuilds version 3");
    assert_eq!(rebuilt_ids, expected);
    assert_eq!(
        f.tables
            .active_from_metadata_files(&t, 3)
            .await
            .expect("replay"),
        indexed
    );
    // Commit 2's metadata file only added the file commit 3 replaced: it went.
    let exists = |p: &str| {
        let volume = Arc::clone(&f.volume);
        let path = Path::from(p);
        async move { volume.head(&path).await.is_ok() }
    };
    assert!(
        exists(&eps_before[0].path).await,
        "commit 1's metadata file"
    );
    assert!(
        !exists(&eps_before[1].path).await,
        "commit 2's metadata file"
    );
    assert!(
        exists(&eps_before[2].path).await,
        "commit 3's metadata file"
    );

    // A day later the first file is replaced too: nothing needs commit 1's file any more.
    f.tables
        .delete(&t, &Predicate::eq("id", 1i64))
        .await
        .expect("v4");
    f.clock.advance(DAY_AND_MORE);
    f.tables.insert(&t, &[rows(&[21])]).await.expect("v5");
    assert_eq!(f.tables.vacuum(&t).await.expect("vacuum"), 1);
    assert!(
        !exists(&eps_before[0].path).await,
        "commit 1's metadata file"
    );
    let (rebuilt, rebuilt_ids) = rebuild_from_volume(&f, &t).await;
    let indexed: Vec<ShortName> = f
        .tables
        .meta()
        .read(|tx| tx.active_micro_partitions(&t, 5))
        .expect("index")
        .into_iter()
        .map(|m| m.short)
        .collect();
    assert_eq!(rebuilt, indexed, "the volume rebuilds version 5");
    let mut expected: Vec<i64> = (2..=21).filter(|i| *i != 15).collect();
    expected.sort_unstable();
    assert_eq!(rebuilt_ids, expected);
}
