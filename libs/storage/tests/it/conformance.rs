//! The object-store conformance scenario: what Tern assumes of every store, checked
//! against the folder store and LocalStack.

use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, UpdateVersion, WriteMultipart};
use tern_storage::{Error, Path, StoreExt};

use crate::backends::{self, Backend};

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// One scenario, any store.
pub async fn scenario(b: &Backend) {
    let s = &b.store;
    let name = b.name;

    // put / get / range / head
    let p = Path::from("conf/a/one");
    let data = pattern(100_000, 7);
    s.put_overwrite(&p, data.clone().into()).await.expect("put");
    assert_eq!(
        s.read_all(&p).await.expect("get"),
        data,
        "{name}: whole get"
    );
    assert_eq!(
        s.read_range(&p, 10..20).await.expect("range"),
        data.slice(10..20),
        "{name}: range"
    );
    assert_eq!(
        s.meta(&p).await.expect("head").size,
        100_000,
        "{name}: head size"
    );

    // list (recursive and delimited)
    for k in ["conf/a/two", "conf/a/sub/three", "conf/b/four"] {
        s.put_overwrite(&Path::from(k), Bytes::from_static(b"x").into())
            .await
            .expect("put");
    }
    let listed: Vec<String> = s
        .list_sorted(&Path::from("conf/a"))
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    assert_eq!(
        listed,
        ["conf/a/one", "conf/a/sub/three", "conf/a/two"],
        "{name}: list"
    );
    let delimited = s
        .list_with_delimiter(Some(&Path::from("conf/a")))
        .await
        .expect("list delimited");
    assert_eq!(
        delimited.common_prefixes,
        [Path::from("conf/a/sub")],
        "{name}: common prefixes"
    );
    assert_eq!(
        delimited.objects.len(),
        2,
        "{name}: objects beside the sub-folder"
    );
    // A prefix is matched by whole segments: `conf/a` does not include `conf/ab`.
    s.put_overwrite(&Path::from("conf/ab"), Bytes::from_static(b"y").into())
        .await
        .expect("put");
    assert_eq!(
        s.list_sorted(&Path::from("conf/a"))
            .await
            .expect("list")
            .len(),
        3,
        "{name}: segment prefix"
    );

    // delete → typed not found
    s.delete_idempotent(&p).await.expect("delete");
    s.delete_idempotent(&p)
        .await
        .expect("deleting an absent object succeeds");
    match s.read_all(&p).await {
        Err(Error::NotFound { path, .. }) => assert_eq!(path, "conf/a/one"),
        other => panic!("{name}: expected NotFound, got {other:?}"),
    }

    // multipart upload of a 64 MiB object in 8 MiB parts
    let big_path = Path::from("conf/big");
    let big = pattern(64 << 20, 3);
    let upload = s.put_multipart(&big_path).await.expect("start multipart");
    let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    for piece in big.chunks(3 << 20) {
        w.write(piece);
    }
    w.finish().await.expect("finish multipart");
    assert_eq!(
        s.meta(&big_path).await.expect("head").size,
        64 << 20,
        "{name}: multipart size"
    );
    assert!(
        s.read_all(&big_path).await.expect("get big") == big,
        "{name}: multipart content"
    );
    assert_eq!(
        s.read_range(&big_path, (40 << 20)..(40 << 20) + 5)
            .await
            .expect("range"),
        big.slice((40 << 20)..(40 << 20) + 5),
        "{name}: range inside a later part"
    );

    // PutMode::Create: a second create is a typed conflict and does not overwrite
    let c = Path::from("conf/create-once");
    let first = s
        .put_new(&c, Bytes::from_static(b"first").into())
        .await
        .expect("create");
    match s.put_new(&c, Bytes::from_static(b"second").into()).await {
        Err(Error::AlreadyExists { path, .. }) => assert_eq!(path, "conf/create-once"),
        other => panic!("{name}: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        s.read_all(&c).await.expect("get"),
        "first",
        "{name}: create kept the first"
    );

    // Concurrent creates: exactly one wins.
    let race = Path::from("conf/race");
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let (s, race) = (Arc::clone(s), race.clone());
            tokio::spawn(async move { s.put_new(&race, Bytes::from(vec![i; 16]).into()).await })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => winners += 1,
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("{name}: unexpected race error {e:?}"),
        }
    }
    assert_eq!(winners, 1, "{name}: exactly one concurrent create wins");

    // PutMode::Update: compare-and-swap on the version read
    let stale = UpdateVersion {
        e_tag: first.e_tag.clone(),
        version: first.version.clone(),
    };
    if b.supports_update {
        let second = s
            .put_replace(&c, Bytes::from_static(b"second").into(), stale.clone())
            .await
            .expect("update at the current version");
        assert_eq!(s.read_all(&c).await.expect("get"), "second");
        match s
            .put_replace(&c, Bytes::from_static(b"third").into(), stale)
            .await
        {
            Err(Error::Conflict { path, .. }) => assert_eq!(path, "conf/create-once"),
            other => panic!("{name}: expected Conflict for a stale version, got {other:?}"),
        }
        assert_eq!(
            s.read_all(&c).await.expect("get"),
            "second",
            "{name}: stale update wrote nothing"
        );
        let current = UpdateVersion {
            e_tag: second.e_tag,
            version: second.version,
        };
        s.put_replace(&c, Bytes::from_static(b"third").into(), current)
            .await
            .expect("update again");
    } else {
        match s
            .put_replace(&c, Bytes::from_static(b"second").into(), stale)
            .await
        {
            Err(e @ Error::NotSupported { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("conf/create-once") && msg.contains("not supported"),
                    "{msg}"
                );
            }
            other => panic!("{name}: expected NotSupported, got {other:?}"),
        }
        assert_eq!(
            s.read_all(&c).await.expect("get"),
            "first",
            "{name}: refused update wrote nothing"
        );
    }

    assert_eq!(
        s.delete_prefix(&Path::from("conf")).await.expect("cleanup"),
        7,
        "{name}: cleanup count"
    );
    assert!(
        s.list_sorted(&Path::from("conf"))
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn conformance_folder() {
    scenario(&backends::folder()).await;
}

#[tokio::test]
async fn conformance_localstack() {
    scenario(&backends::localstack("conformance").await).await;
}
