//! The sender needs nothing but the write-only identity the infra gives it: on moto with
//! IAM enforced, d1 sends into d2's replication bucket with `peer_credentials."d2.d1"`
//! (PUT under `from/d1/` only: no read, list or delete), and d2 receives, processes and
//! cleans up with full access to its own bucket.

use std::sync::Arc;

use tern_messaging::worker::drain;
use tern_messaging::{CrashPoints, Draft, Sender};
use tern_storage::emulator::{self, Target};
use tern_storage::{StoreConfig, StoreExt as _, open_store};

use crate::common::*;

#[tokio::test]
async fn write_only_sender_on_moto() {
    let (outputs, peer, admin) = tokio::task::spawn_blocking(|| {
        let outputs = emulator::infra_outputs(Target::Moto)?;
        let peer = emulator::peer(Target::Moto, "d2", "d1")?;
        let admin = emulator::admin(Target::Moto)?;
        Ok::<_, emulator::EmulatorError>((outputs, peer, admin))
    })
    .await
    .expect("emulator task")
    .unwrap_or_else(|e| panic!("moto with the local infra is required for this test: {e}"));
    assert_eq!(
        outputs
            .get("iam_enforced")
            .and_then(serde_json::Value::as_bool),
        Some(true),
        "this test needs moto with IAM enforced"
    );
    let bucket = outputs["deployments"]["d2"]["replication_bucket"]
        .as_str()
        .expect("d2 replication bucket");
    let url = format!("s3://{bucket}");
    let write_only = open_store(&StoreConfig {
        url: url.clone(),
        s3: peer.s3_options(),
    })
    .expect("peer store");
    let full = open_store(&StoreConfig {
        url,
        s3: admin.s3_options(),
    })
    .expect("admin store");

    // The identity really is write-only: reading is refused.
    let probe = object_store::path::Path::from("from/d1/msg/probe");
    write_only
        .put_overwrite(&probe, "x".into())
        .await
        .expect("peer PUT");
    assert!(matches!(
        write_only.read_all(&probe).await,
        Err(tern_storage::Error::PermissionDenied { .. })
    ));
    // (moto answers a denied bulk delete per key, which object_store reports as a plain
    // storage error: the object staying there is what matters.)
    assert!(write_only.delete_idempotent(&probe).await.is_err());
    assert_eq!(
        full.read_all(&probe).await.expect("still there").as_ref(),
        b"x"
    );
    full.delete_idempotent(&probe).await.expect("admin delete");

    let clock = clock();
    let d1 = Node::with_store("d1", Arc::clone(&full), &clock, None);
    let d2 = Node::with_store("d2", Arc::clone(&full), &clock, Some(&d1.keys_dir));
    connect(&d1, &d2).await;
    let mut s = Sender::new(d1.context(CrashPoints::new()), d2.id.clone(), write_only);
    let mut inbound = Inbound::new(&d2, CrashPoints::new());

    let plain = s.send(Draft::new(TYPE, payload("plain"))).await.unwrap();
    let with_body = s.create(Draft::new(TYPE, payload("body"))).await.unwrap();
    s.attach_body_bytes(&with_body, &vec![7u8; 300 << 10])
        .await
        .unwrap();
    s.mark_ready(&with_body).await.unwrap();
    let abandoned = s.create(Draft::new(TYPE, payload("gone"))).await.unwrap();
    s.attach_body_bytes(&abandoned, b"orphan").await.unwrap();
    s.abandon(&abandoned).await.unwrap();
    drain(&mut s).await.unwrap();
    // A restarted sender continues the chain without reading anything.
    drop(s);
    let mut s = Sender::new(
        d1.context(CrashPoints::new()),
        d2.id.clone(),
        open_store(&StoreConfig {
            url: format!("s3://{bucket}"),
            s3: peer.s3_options(),
        })
        .unwrap(),
    );
    let after = s.send(Draft::new(TYPE, payload("after"))).await.unwrap();
    drain(&mut s).await.unwrap();

    inbound.pump().await.unwrap();
    for id in [&plain, &with_body, &after] {
        assert_eq!(
            d2.applied(&d1.id, id).await.map(|a| a.count),
            Some(1),
            "{id}"
        );
    }
    assert!(d2.applied(&d1.id, &abandoned).await.is_none());
    assert!(inbound.ctx.counters().rejected().is_empty());
    // Everything this run wrote is gone: the receiver deleted it with its own identity.
    // (Checked object by object: moto 5.2.1 miscomputes signatures of listings whose
    // prefix holds a '/', so the receiver's discovery cannot run on it.)
    let chan = inbound.ctx.inbound(&d1.id).await.unwrap().unwrap();
    assert_eq!(chan.files_received, 2);
    let mut paths: Vec<_> = (chan.expected_seq - 2..chan.expected_seq)
        .map(|seq| tern_storage::layout::replication::msg(&d1.id, seq))
        .collect();
    paths.push(tern_storage::layout::replication::body(
        &d1.id, &with_body, 0,
    ));
    paths.push(tern_storage::layout::replication::body(
        &d1.id, &abandoned, 0,
    ));
    for p in paths {
        assert!(
            matches!(
                full.meta(&p).await,
                Err(tern_storage::Error::NotFound { .. })
            ),
            "{p} left behind"
        );
    }
}
