//! The write-only sub-bucket guarantee (DESIGN.md §3), checked against the identities
//! `infra/modules/deployment` creates, on moto with IAM enforced (the only emulator that
//! checks permissions).
//!
//! With peer P's credentials on deployment D's replication bucket, P may create objects
//! under `from/P/` (single PUT and multipart) and abort its uploads, and nothing else: no
//! write under another prefix, no read (not even of what it wrote), no listing, no delete,
//! no access at all to D's volume bucket or to another deployment's buckets.
//!
//! Each deployment's own identity (what its ternd runs as) reaches its own volume and
//! replication buckets and nothing of another deployment's (its KMS rights:
//! `tern-crypto`'s `kms::moto_key_policies_…` test).
//!
//! A denial is asserted precisely: HTTP 403 with error code `AccessDenied`. moto answers a
//! denied GetObject/HeadObject/DeleteObject with a bare 403 and no body (so no code); those
//! are accepted as denials only because the same identity's PUT succeeded in the same test,
//! which rules out the other 403s (unknown key id, bad signature).

use std::fmt::Debug;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use tern_storage::admin::s3_client;
use tern_storage::emulator::{self, Emulator, Target};

/// Receiver, writing peer, and a third deployment of the group in `infra/envs/local`.
const OWNER: &str = "d1";
const PEER: &str = "d2";
const OTHER: &str = "d3";

struct Setup {
    /// P's identity for D's replication bucket.
    peer: aws_sdk_s3::Client,
    /// Full access, to check what P did and did not manage.
    admin: aws_sdk_s3::Client,
    repl: String,
    volume: String,
    other_repl: String,
}

fn text<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| panic!("infra outputs lack {path:?}"))
}

async fn setup() -> Setup {
    let (outputs, peer, admin) = tokio::task::spawn_blocking(|| {
        let outputs = emulator::infra_outputs(Target::Moto)?;
        let peer = emulator::peer(Target::Moto, OWNER, PEER)?;
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
        "these tests need moto with IAM enforced (infra outputs: emulator {:?}, target {:?})",
        outputs.get("emulator"),
        outputs.get("target"),
    );
    let client = |e: Emulator| async move { s3_client(&e.s3_options()).await };
    Setup {
        peer: client(peer).await,
        admin: client(admin).await,
        repl: text(&outputs, &["deployments", OWNER, "replication_bucket"]).to_string(),
        volume: text(&outputs, &["deployments", OWNER, "volume_bucket"]).to_string(),
        other_repl: text(&outputs, &["deployments", OTHER, "replication_bucket"]).to_string(),
    }
}

/// A key no other test (or earlier run against the same emulator) uses.
fn unique(prefix: &str, name: &str) -> String {
    let nanos = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}{name}-{}-{nanos}", std::process::id())
}

#[track_caller]
fn assert_denied<T: Debug, E: ProvideErrorMetadata + Debug>(
    what: &str,
    result: Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) {
    let err = match result {
        Ok(out) => panic!("{what}: expected AccessDenied, but it succeeded: {out:?}"),
        Err(err) => err,
    };
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(
        status,
        Some(403),
        "{what}: expected HTTP 403 AccessDenied, got {err:?}"
    );
    match err.code() {
        Some("AccessDenied") => {}
        // moto's bodiless 403 (see the module docs).
        None => {
            let body = err
                .raw_response()
                .and_then(|r| r.body().bytes())
                .unwrap_or_default();
            assert!(
                body.is_empty(),
                "{what}: 403 without error code but with a body: {err:?}"
            );
        }
        Some(code) => panic!("{what}: expected AccessDenied, got error code {code}: {err:?}"),
    }
}

async fn admin_has(s: &Setup, bucket: &str, key: &str) -> Option<i64> {
    match s.admin.head_object().bucket(bucket).key(key).send().await {
        Ok(head) => Some(head.content_length().unwrap_or_default()),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
        Err(e) => panic!("admin HEAD {bucket}/{key}: {e:?}"),
    }
}

async fn peer_put(s: &Setup, bucket: &str, key: &str, body: &'static [u8]) -> Result<(), String> {
    s.peer
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from_static(body))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn peer_can_put_under_its_own_prefix() {
    let s = setup().await;
    let key = unique(&format!("from/{PEER}/msg/"), "put");
    peer_put(&s, &s.repl, &key, b"sealed message")
        .await
        .unwrap_or_else(|e| panic!("peer PUT {}/{key} must succeed: {e}", s.repl));
    assert_eq!(
        admin_has(&s, &s.repl, &key).await,
        Some(14),
        "the object is there, whole"
    );
}

#[tokio::test]
async fn peer_can_upload_multipart_under_its_own_prefix_and_abort() {
    const PART: usize = 5 * 1024 * 1024 + 1; // above S3's 5 MiB minimum for non-last parts
    let s = setup().await;
    let key = unique(&format!("from/{PEER}/inbound/"), "multipart");

    let upload = s
        .peer
        .create_multipart_upload()
        .bucket(&s.repl)
        .key(&key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("peer CreateMultipartUpload {key}: {e:?}"));
    let upload_id = upload.upload_id().expect("upload id").to_string();
    let mut parts = Vec::new();
    for number in 1..=2 {
        let body = vec![u8::try_from(number).unwrap_or(0); PART];
        let part = s
            .peer
            .upload_part()
            .bucket(&s.repl)
            .key(&key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("peer UploadPart {number} of {key}: {e:?}"));
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag)
                .build(),
        );
    }
    let complete = s
        .peer
        .complete_multipart_upload()
        .bucket(&s.repl)
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await;
    match complete {
        Ok(_) => {}
        // moto 5.2.1 answers 200 with the root element <CompleteMultipartUploadResponse>
        // instead of <CompleteMultipartUploadResult>, which the SDK refuses to parse. The
        // server accepted the request: the HEAD below checks the object is there, whole.
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {}
        Err(e) => panic!("peer CompleteMultipartUpload {key}: {e:?}"),
    }
    assert_eq!(admin_has(&s, &s.repl, &key).await, Some(2 * PART as i64));

    // A failed copy cleans up after itself.
    let aborted = unique(&format!("from/{PEER}/inbound/"), "aborted");
    let upload = s
        .peer
        .create_multipart_upload()
        .bucket(&s.repl)
        .key(&aborted)
        .send()
        .await
        .unwrap_or_else(|e| panic!("peer CreateMultipartUpload {aborted}: {e:?}"));
    s.peer
        .abort_multipart_upload()
        .bucket(&s.repl)
        .key(&aborted)
        .upload_id(upload.upload_id().expect("upload id"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("peer AbortMultipartUpload {aborted}: {e:?}"));
    assert_eq!(admin_has(&s, &s.repl, &aborted).await, None);
}

#[tokio::test]
async fn peer_cannot_write_outside_its_prefix() {
    let s = setup().await;
    let bucket = &s.repl;
    for key in [
        unique(&format!("from/{OTHER}/msg/"), "impersonate"),
        unique(&format!("from/{PEER}-x/"), "sibling-prefix"),
        unique(&format!("from/{OWNER}/"), "owner-prefix"),
        unique("from/", "bare"),
        unique("", "top-level"),
    ] {
        let put = s
            .peer
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await;
        assert_denied(&format!("peer PUT {bucket}/{key}"), put);
        assert_eq!(
            admin_has(&s, bucket, &key).await,
            None,
            "{key} must not exist"
        );

        let create = s
            .peer
            .create_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .send()
            .await;
        assert_denied(
            &format!("peer CreateMultipartUpload {bucket}/{key}"),
            create,
        );
    }
}

#[tokio::test]
async fn peer_cannot_read_list_or_delete_even_its_own_objects() {
    let s = setup().await;
    let bucket = &s.repl;
    let own = unique(&format!("from/{PEER}/msg/"), "own");
    peer_put(&s, bucket, &own, b"mine")
        .await
        .unwrap_or_else(|e| panic!("peer PUT {own}: {e}"));
    let theirs = unique(&format!("from/{OTHER}/msg/"), "theirs");
    s.admin
        .put_object()
        .bucket(bucket)
        .key(&theirs)
        .body(ByteStream::from_static(b"theirs"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin PUT {theirs}: {e:?}"));

    for key in [&own, &theirs] {
        assert_denied(
            &format!("peer GET {bucket}/{key}"),
            s.peer.get_object().bucket(bucket).key(key).send().await,
        );
        assert_denied(
            &format!("peer HEAD {bucket}/{key}"),
            s.peer.head_object().bucket(bucket).key(key).send().await,
        );
        assert_denied(
            &format!("peer DELETE {bucket}/{key}"),
            s.peer.delete_object().bucket(bucket).key(key).send().await,
        );
    }
    assert_denied(
        &format!("peer LIST {bucket}"),
        s.peer.list_objects_v2().bucket(bucket).send().await,
    );
    // The prefix has no '/': moto 5.2.1 miscomputes the signature of a query value with a
    // '/' in it (SignatureDoesNotMatch for every client), which would hide the real answer.
    assert_denied(
        &format!("peer LIST {bucket} prefix from"),
        s.peer
            .list_objects_v2()
            .bucket(bucket)
            .prefix("from")
            .send()
            .await,
    );
    assert_denied(
        &format!("peer ListMultipartUploads {bucket}"),
        s.peer.list_multipart_uploads().bucket(bucket).send().await,
    );

    // DeleteObjects answers 200 and reports each key's failure.
    let batch = Delete::builder()
        .objects(
            ObjectIdentifier::builder()
                .key(&own)
                .build()
                .expect("object id"),
        )
        .build()
        .expect("delete batch");
    let out = s
        .peer
        .delete_objects()
        .bucket(bucket)
        .delete(batch)
        .send()
        .await;
    match out {
        Ok(out) => {
            assert!(
                out.deleted().is_empty(),
                "peer DeleteObjects deleted {:?}",
                out.deleted()
            );
            let codes: Vec<_> = out.errors().iter().map(|e| (e.key(), e.code())).collect();
            assert_eq!(
                codes,
                [(Some(own.as_str()), Some("AccessDenied"))],
                "peer DeleteObjects"
            );
        }
        Err(e) => assert_denied("peer DeleteObjects", Err::<(), _>(e)),
    }

    // Nothing was removed.
    assert_eq!(admin_has(&s, bucket, &own).await, Some(4));
    assert_eq!(admin_has(&s, bucket, &theirs).await, Some(6));
}

#[tokio::test]
async fn peer_has_no_access_to_the_volume_bucket_or_other_deployments() {
    let s = setup().await;
    let volume = &s.volume;
    let seeded = unique("acct/a/txlog/", "seeded");
    s.admin
        .put_object()
        .bucket(volume)
        .key(&seeded)
        .body(ByteStream::from_static(b"volume data"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin PUT {volume}/{seeded}: {e:?}"));

    for key in [
        unique(&format!("from/{PEER}/"), "volume-put"),
        unique("acct/a/", "volume-put"),
    ] {
        assert_denied(
            &format!("peer PUT {volume}/{key}"),
            s.peer
                .put_object()
                .bucket(volume)
                .key(&key)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
        );
        assert_eq!(
            admin_has(&s, volume, &key).await,
            None,
            "{key} must not exist"
        );
    }
    assert_denied(
        &format!("peer GET {volume}/{seeded}"),
        s.peer.get_object().bucket(volume).key(&seeded).send().await,
    );
    assert_denied(
        &format!("peer LIST {volume}"),
        s.peer.list_objects_v2().bucket(volume).send().await,
    );

    // The identity is D's grant to P: it is worth nothing at another receiver, even under
    // from/P/ (that receiver gave P a different identity).
    let other = &s.other_repl;
    let key = unique(&format!("from/{PEER}/msg/"), "other-receiver");
    assert_denied(
        &format!("peer PUT {other}/{key}"),
        s.peer
            .put_object()
            .bucket(other)
            .key(&key)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
    );
    assert_eq!(admin_has(&s, other, &key).await, None);
}

#[tokio::test]
async fn moto_enforces_iam_for_unknown_keys() {
    // The denials above mean something only if moto checks credentials at all.
    let s = setup().await;
    let outputs = tokio::task::spawn_blocking(|| emulator::infra_outputs(Target::Moto))
        .await
        .expect("emulator task")
        .expect("infra outputs");
    let stranger = Emulator {
        endpoint: text(&outputs, &["endpoint"]).to_string(),
        region: text(&outputs, &["region"]).to_string(),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
    };
    let client = s3_client(&stranger.s3_options()).await;
    let err = client
        .list_objects_v2()
        .bucket(&s.repl)
        .send()
        .await
        .expect_err("unknown credentials must be rejected");
    assert_eq!(
        err.raw_response().map(|r| r.status().as_u16()),
        Some(403),
        "{err:?}"
    );
    assert_eq!(err.code(), Some("InvalidAccessKeyId"), "{err:?}");
}

/// S3 clients for deployment `id`'s own identity, and the admin, with the infra outputs.
async fn deployment_clients(id: &'static str) -> (aws_sdk_s3::Client, Setup, serde_json::Value) {
    let s = setup().await;
    let (me, outputs) = tokio::task::spawn_blocking(move || {
        Ok::<_, emulator::EmulatorError>((
            emulator::deployment(Target::Moto, id)?,
            emulator::infra_outputs(Target::Moto)?,
        ))
    })
    .await
    .expect("emulator task")
    .unwrap_or_else(|e| panic!("moto with the local infra is required: {e}"));
    (s3_client(&me.s3_options()).await, s, outputs)
}

#[tokio::test]
async fn deployment_identity_reaches_its_own_buckets() {
    let (me, _s, outputs) = deployment_clients(OWNER).await;
    for which in ["volume_bucket", "replication_bucket"] {
        let bucket = text(&outputs, &["deployments", OWNER, which]).to_string();
        let key = unique("acct/a/", "own");
        me.put_object()
            .bucket(&bucket)
            .key(&key)
            .body(ByteStream::from_static(b"mine"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{OWNER} PUT {bucket}/{key}: {e:?}"));
        let got = me
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{OWNER} GET {bucket}/{key}: {e:?}"));
        assert_eq!(&got.body.collect().await.unwrap().into_bytes()[..], b"mine");
        // (No positive LIST here: moto answers a bucket-level GET signed by the Rust SDK
        // with SignatureDoesNotMatch for every identity, the admin's too; boto3's works.
        // The denied LISTs below are checked before the signature and stand.)
        me.delete_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{OWNER} DELETE {bucket}/{key}: {e:?}"));
    }
}

#[tokio::test]
async fn deployment_cannot_read_or_write_another_deployments_volume_or_replication_bucket() {
    // d2's own identity against d1's buckets (objects seeded by the admin).
    let (other, s, outputs) = deployment_clients(PEER).await;
    for which in ["volume_bucket", "replication_bucket"] {
        let bucket = text(&outputs, &["deployments", OWNER, which]).to_string();
        let seeded = unique(&format!("from/{PEER}/"), "seeded");
        s.admin
            .put_object()
            .bucket(&bucket)
            .key(&seeded)
            .body(ByteStream::from_static(b"d1 data"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin PUT {bucket}/{seeded}: {e:?}"));
        // The same identity may write its own volume (so a 403 below is a denial).
        let own = text(&outputs, &["deployments", PEER, "volume_bucket"]).to_string();
        let probe = unique("acct/a/", "probe");
        other
            .put_object()
            .bucket(&own)
            .key(&probe)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{PEER} PUT its own {own}/{probe}: {e:?}"));
        assert_denied(
            &format!("{PEER} GET {bucket}/{seeded}"),
            other.get_object().bucket(&bucket).key(&seeded).send().await,
        );
        assert_denied(
            &format!("{PEER} LIST {bucket}"),
            other.list_objects_v2().bucket(&bucket).send().await,
        );
        assert_denied(
            &format!("{PEER} DELETE {bucket}/{seeded}"),
            other
                .delete_object()
                .bucket(&bucket)
                .key(&seeded)
                .send()
                .await,
        );
        // Not even under from/d2/ of d1's replication bucket: that is the write-only peer
        // identity's grant, not the deployment's.
        let key = unique(&format!("from/{PEER}/"), "by-deployment-identity");
        assert_denied(
            &format!("{PEER} PUT {bucket}/{key}"),
            other
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
        );
        assert_eq!(admin_has(&s, &bucket, &key).await, None);
        assert_eq!(admin_has(&s, &bucket, &seeded).await, Some(7), "untouched");
    }
}
