//! The re-encrypting copy (FIG. 17) and the storage scenario every backend runs.

use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutOptions, PutPayload};
use tern_crypto::format::TAG_LEN;
use tern_crypto::{
    CopyOptions, EncryptOptions, EncryptedObject, Endpoint, Error, Header, RepMk,
    ReplicationFileKeys, get_decrypted, get_decrypted_range, put_encrypted, reencrypt,
    reencrypt_with, upload_encrypted, upload_encrypted_with,
};
use tern_storage::admin::BucketAdmin;
use tern_storage::{FaultPlan, FaultRule, FaultStore, Operation, StoreConfig, open_store};

use crate::common::{data, folder, localstack, memory, table_keys};

fn repl_keys(byte: u8) -> ReplicationFileKeys {
    ReplicationFileKeys::new(Arc::new(RepMk::from_bytes([byte; 32])))
}

fn small_copy() -> CopyOptions {
    CopyOptions {
        block_size: 1000,
        read_ahead: 2,
        part_size: 2048,
        max_concurrency: 2,
        single_put_max: 2048,
    }
}

/// Source volume (TMK of d1) → inbound stage of d2 (RepMK) → volume of d2 (TMK of d2).
async fn double_copy(store: &Arc<dyn ObjectStore>, n: usize, opts: &CopyOptions, multipart: bool) {
    let plain = data(n);
    let src = Path::from(format!("d1/acct/a/db/1/tbl/2/mp/fdn{n}.mp"));
    let inbound = Path::from(format!("d2/from/d1/inbound/r1/d1.fdn{n}"));
    let dst = Path::from(format!("d2/acct/b/db/9/tbl/3/mp/fdn{n}_g.mp"));
    let (d1, d2, rep) = (table_keys(1), table_keys(2), repl_keys(3));
    let enc = EncryptOptions::default().with_chunk_size(256);
    put_encrypted(&**store, &src, &d1, &plain, &enc, PutOptions::default())
        .await
        .unwrap();

    let s1 = reencrypt(
        Endpoint {
            store,
            path: &src,
            keys: &d1,
        },
        Endpoint {
            store,
            path: &inbound,
            keys: &rep,
        },
        opts,
        &enc,
    )
    .await
    .unwrap();
    assert_eq!(s1.plaintext_bytes, n as u64);
    assert_eq!(s1.multipart, multipart, "size {n}");
    assert_eq!(store.head(&inbound).await.unwrap().size, s1.object_bytes);
    let s2 = reencrypt(
        Endpoint {
            store,
            path: &inbound,
            keys: &rep,
        },
        Endpoint {
            store,
            path: &dst,
            keys: &d2,
        },
        opts,
        &enc,
    )
    .await
    .unwrap();
    assert_eq!(s2.chunks, s1.chunks);
    assert_eq!(
        &get_decrypted(store, &dst, &d2).await.unwrap()[..],
        &plain[..]
    );
    // each copy is under its own key and bound to its own name
    assert!(matches!(
        get_decrypted(store, &inbound, &d2).await,
        Err(Error::UnexpectedKeyRef { .. })
    ));
    assert!(matches!(
        get_decrypted(store, &dst, &d1).await,
        Err(Error::WrongKey { .. })
    ));
}

#[tokio::test]
async fn copies_in_memory_single_put_and_multipart() {
    let store = memory();
    for (n, multipart) in [
        (0, false),
        (1, false),
        (255, false),
        (1500, false),
        (10_000, true),
        (256 * 40, true),
    ] {
        double_copy(&store, n, &small_copy(), multipart).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_between_folders() {
    let (_dir, store) = folder();
    for (n, multipart) in [(700, false), (100_000, true)] {
        double_copy(&store, n, &small_copy(), multipart).await;
    }
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    fn walk(d: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copies_leave_nothing_behind() {
    let (dir, store) = folder();
    let keys = table_keys(1);
    let rep = repl_keys(3);
    let src = Path::from("src/f.mp");
    let dst = Path::from("dst/f");
    // bigger than the 64 KiB `open` fetches, so the copy reads in several requests
    let plain = data(300_000);
    let enc = EncryptOptions::default().with_chunk_size(256);
    put_encrypted(&*store, &src, &keys, &plain, &enc, PutOptions::default())
        .await
        .unwrap();
    let good = store.get(&src).await.unwrap().bytes().await.unwrap();
    let hlen = Header::parse(&good).unwrap().len();
    let stride = 256 + TAG_LEN;
    let enc = &enc;
    let copy = |store: Arc<dyn ObjectStore>| {
        let (src, dst) = (src.clone(), dst.clone());
        let (keys, rep) = (&keys, &rep);
        async move {
            reencrypt(
                Endpoint {
                    store: &store,
                    path: &src,
                    keys,
                },
                Endpoint {
                    store: &store,
                    path: &dst,
                    keys: rep,
                },
                &small_copy(),
                enc,
            )
            .await
        }
    };

    // a bad chunk near the end, after several parts were uploaded; and a missing final chunk
    let mut bad = good.to_vec();
    bad[good.len() - 20] ^= 1;
    let cut = good.slice(..hlen + (plain.len() / 256) * stride);
    for (what, bytes) in [("flipped bit", bytes::Bytes::from(bad)), ("truncated", cut)] {
        store.put(&src, PutPayload::from(bytes)).await.unwrap();
        let e = copy(store.clone()).await.unwrap_err();
        assert!(
            matches!(e, Error::Decrypt { ref path } if path == "src/f.mp"),
            "{what}: {e:?}"
        );
        assert!(
            store.head(&dst).await.is_err(),
            "{what}: destination must not exist"
        );
        assert_eq!(
            leftovers(dir.path()),
            vec![dir.path().join("src/f.mp").display().to_string()],
            "{what}"
        );
    }

    // a read failure in the middle of the copy, and a failing destination
    store
        .put(&src, PutPayload::from(good.clone()))
        .await
        .unwrap();
    let plan = FaultPlan::new();
    let faulty: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(store.clone(), plan.clone()));
    plan.arm(FaultRule::on(Operation::Get).under("src").nth(5));
    let e = copy(faulty.clone()).await.unwrap_err();
    assert!(matches!(e, Error::Store { .. }), "{e:?}");
    assert!(store.head(&dst).await.is_err());
    plan.disarm_all();
    plan.arm(FaultRule::on(Operation::PutMultipart).under("dst"));
    assert!(copy(faulty.clone()).await.is_err());
    assert!(store.head(&dst).await.is_err());
    assert_eq!(
        leftovers(dir.path()).len(),
        1,
        "no staging files left: {:?}",
        leftovers(dir.path())
    );

    plan.disarm_all();
    copy(faulty).await.unwrap();
    assert_eq!(
        &get_decrypted(&store, &dst, &rep).await.unwrap()[..],
        &plain[..]
    );
}

/// The in-memory store's reads share its own buffer, so the copy opens chunks in buffers of
/// its own (the folder store's reads are the copy's alone and are opened where they are):
/// that path too verifies every chunk and publishes nothing on a bad one.
#[tokio::test]
async fn failed_copies_from_shared_buffers_leave_nothing_behind() {
    let store = memory();
    let (keys, rep) = (table_keys(1), repl_keys(3));
    let (src, dst) = (Path::from("src/f.mp"), Path::from("dst/f"));
    let plain = data(300_000);
    let enc = EncryptOptions::default().with_chunk_size(256);
    put_encrypted(&*store, &src, &keys, &plain, &enc, PutOptions::default())
        .await
        .unwrap();
    let good = store.get(&src).await.unwrap().bytes().await.unwrap();
    let hlen = Header::parse(&good).unwrap().len();
    let stride = 256 + TAG_LEN;
    let opts = small_copy();
    let copy = || {
        reencrypt(
            Endpoint {
                store: &store,
                path: &src,
                keys: &keys,
            },
            Endpoint {
                store: &store,
                path: &dst,
                keys: &rep,
            },
            &opts,
            &enc,
        )
    };
    // a flipped bit in the first chunk (inside the prefix `open` fetched), in a middle one,
    // in the last one; and a missing final chunk
    let mut cases = Vec::new();
    for at in [hlen + 10, hlen + 600 * stride + 7, good.len() - 20] {
        let mut bad = good.to_vec();
        bad[at] ^= 1;
        cases.push(bytes::Bytes::from(bad));
    }
    cases.push(good.slice(..hlen + (plain.len() / 256) * stride));
    for (n, bytes) in cases.into_iter().enumerate() {
        store.put(&src, PutPayload::from(bytes)).await.unwrap();
        let e = copy().await.unwrap_err();
        assert!(
            matches!(e, Error::Decrypt { ref path } if path == "src/f.mp"),
            "case {n}: {e:?}"
        );
        assert!(
            store.head(&dst).await.is_err(),
            "case {n}: destination must not exist"
        );
    }
    store.put(&src, PutPayload::from(good)).await.unwrap();
    let stats = copy().await.unwrap();
    assert!(stats.multipart);
    assert_eq!(
        &get_decrypted(&store, &dst, &rep).await.unwrap()[..],
        &plain[..]
    );
}

/// What every backend must do for encrypted files.
pub async fn scenario(store: Arc<dyn ObjectStore>, copy: &CopyOptions) {
    let keys = table_keys(1);
    let rep = repl_keys(2);
    let enc = EncryptOptions::default();
    let small = data(10_000);
    let big = data(3 * copy.part_size + 12_345);

    let p_small = Path::from("scenario/small.mp");
    put_encrypted(
        &*store,
        &p_small,
        &keys,
        &small,
        &enc,
        PutOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        &get_decrypted(&store, &p_small, &keys).await.unwrap()[..],
        &small[..]
    );

    let p_big = Path::from("scenario/big.mp");
    let n = upload_encrypted(&store, &p_big, &keys, &mut &big[..], &enc, copy)
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    let obj = EncryptedObject::open(store.clone(), &p_big, &keys)
        .await
        .unwrap();
    assert_eq!(obj.plaintext_len(), big.len() as u64);
    let streamed: Vec<_> = obj.into_stream(copy).try_collect().await.unwrap();
    assert_eq!(streamed.concat(), big);
    let r = 2_000_000..2_100_000u64;
    assert_eq!(
        &get_decrypted_range(&store, &p_big, &keys, r.clone())
            .await
            .unwrap()[..],
        &big[r.start as usize..r.end as usize]
    );

    let p_copy = Path::from("scenario/inbound/big");
    let stats = reencrypt(
        Endpoint {
            store: &store,
            path: &p_big,
            keys: &keys,
        },
        Endpoint {
            store: &store,
            path: &p_copy,
            keys: &rep,
        },
        copy,
        &enc,
    )
    .await
    .unwrap();
    assert!(stats.multipart);
    assert_eq!(
        &get_decrypted(&store, &p_copy, &rep).await.unwrap()[..],
        &big[..]
    );

    // a tampered source is never copied
    let mut bytes = store
        .get(&p_big)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let p_bad = Path::from("scenario/bad.mp");
    store.put(&p_bad, PutPayload::from(bytes)).await.unwrap();
    let p_bad_copy = Path::from("scenario/inbound/bad");
    let e = reencrypt(
        Endpoint {
            store: &store,
            path: &p_bad,
            keys: &keys,
        },
        Endpoint {
            store: &store,
            path: &p_bad_copy,
            keys: &rep,
        },
        copy,
        &enc,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Decrypt { .. }), "{e:?}");
    assert!(store.head(&p_bad_copy).await.is_err());

    create_once_at_any_size(&store, copy, &big).await;
}

fn already_exists(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            source: object_store::Error::AlreadyExists { .. },
            ..
        }
    )
}

/// `PutMode::Create` holds on the multipart path too: the first large write creates the
/// file, a second one (upload or re-encrypting copy) fails with `AlreadyExists` and leaves
/// the first file as it was, and no staging object is left behind.
async fn create_once_at_any_size(store: &Arc<dyn ObjectStore>, copy: &CopyOptions, big: &[u8]) {
    let keys = table_keys(1);
    let enc = EncryptOptions::default();
    let create = || PutOptions::from(object_store::PutMode::Create);
    let once = Path::from("create-once/big.mp");
    let n = upload_encrypted_with(store, &once, &keys, &mut &big[..], &enc, copy, create())
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    let other: Vec<u8> = big.iter().map(|b| b ^ 0x5a).collect();
    let e = upload_encrypted_with(store, &once, &keys, &mut &other[..], &enc, copy, create())
        .await
        .unwrap_err();
    assert!(already_exists(&e), "second create-once upload: {e:?}");
    // The same when the destination appears while the upload runs (after the early check).
    let raced = Path::from("create-once/raced.mp");
    let mut racing = RacingReader {
        inner: big,
        store: store.clone(),
        path: raced.clone(),
        fired: false,
    };
    let e = upload_encrypted_with(store, &raced, &keys, &mut racing, &enc, copy, create())
        .await
        .unwrap_err();
    assert!(
        racing.fired && already_exists(&e),
        "raced create-once upload: {e:?}"
    );
    assert_eq!(
        &store.get(&raced).await.unwrap().bytes().await.unwrap()[..],
        b"first",
        "the file that won the race is kept"
    );
    let src = Path::from("create-once/src.mp");
    upload_encrypted(store, &src, &keys, &mut &other[..], &enc, copy)
        .await
        .unwrap();
    let e = reencrypt_with(
        Endpoint {
            store,
            path: &src,
            keys: &keys,
        },
        Endpoint {
            store,
            path: &once,
            keys: &keys,
        },
        copy,
        &enc,
        create(),
    )
    .await
    .unwrap_err();
    assert!(
        already_exists(&e),
        "create-once copy onto an existing file: {e:?}"
    );
    assert_eq!(
        &get_decrypted(store, &once, &keys).await.unwrap()[..],
        big,
        "the first file is untouched"
    );
    let fresh = Path::from("create-once/copied.mp");
    let stats = reencrypt_with(
        Endpoint {
            store,
            path: &src,
            keys: &keys,
        },
        Endpoint {
            store,
            path: &fresh,
            keys: &keys,
        },
        copy,
        &enc,
        create(),
    )
    .await
    .unwrap();
    assert!(stats.multipart, "the path under test is the multipart one");
    assert_eq!(
        &get_decrypted(store, &fresh, &keys).await.unwrap()[..],
        &other[..]
    );
    let left: Vec<String> = store
        .list(Some(&Path::from("create-once")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(
        left.iter().all(|p| !p.contains(".upload-")),
        "staging objects left behind: {left:?}"
    );
}

/// Yields `inner`; after the first read, puts `b"first"` at `path` (another writer won).
struct RacingReader<'a> {
    inner: &'a [u8],
    store: Arc<dyn ObjectStore>,
    path: Path,
    fired: bool,
}

impl tokio::io::AsyncRead for RacingReader<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.fired && self.inner.is_empty() {
            // The whole body was handed out: the other writer creates the file now,
            // after the upload's early existence check and before it is published.
            let store = self.store.clone();
            let path = self.path.clone();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(store.put(&path, b"first".to_vec().into()))
            })
            .expect("the other writer's put");
            self.fired = true;
        }
        let n = buf.remaining().min(self.inner.len());
        buf.put_slice(&self.inner[..n]);
        self.inner = &self.inner[n..];
        let _ = cx;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_create_once_in_memory() {
    let store = memory();
    create_once_at_any_size(&store, &small_copy(), &data(20_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_on_folder() {
    let (_dir, store) = folder();
    scenario(store, &CopyOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_on_localstack_s3() {
    let emu = localstack().await;
    let opts = emu.s3_options();
    let admin = BucketAdmin::new(&opts).await;
    let bucket = format!("tern-crypto-it-{}", std::process::id());
    admin.create_bucket(&bucket, &opts.region).await.unwrap();
    let store = open_store(&StoreConfig {
        url: format!("s3://{bucket}"),
        s3: opts,
    })
    .unwrap();
    // S3 parts are at least 5 MiB
    let copy = CopyOptions {
        part_size: 5 << 20,
        single_put_max: 5 << 20,
        ..CopyOptions::default()
    };
    scenario(store, &copy).await;
    // The tampered source's copy was multipart (the big file, its last byte flipped): parts
    // were uploaded before the bad chunk was found, and the upload must have been aborted,
    // not left behind (on S3 an unaborted upload keeps its parts, and costs, forever).
    let uploads = admin
        .client()
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    let pending: Vec<_> = uploads.uploads().iter().filter_map(|u| u.key()).collect();
    assert!(
        pending.is_empty(),
        "multipart uploads left behind: {pending:?}"
    );
    let _ = admin.delete_bucket(&bucket).await;
}
