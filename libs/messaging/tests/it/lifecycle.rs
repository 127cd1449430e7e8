//! Diversifier rotation across hours (injected clock), large body files (several chunks,
//! multipart), and cleanup messages for abandoned, aged-out and failed messages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;
use tern_crypto::format::KeyRef;
use tern_crypto::object::CopyOptions;
use tern_crypto::{Diversifier, Header};
use tern_messaging::worker::drain;
use tern_messaging::{CrashPoints, Draft, Sender};
use tern_storage::fault::{Fault, FaultPlan, FaultRule, FaultStore};
use tern_storage::{Operation, StoreExt as _};

use crate::common::*;

async fn file_diversifiers(node: &Node, prefix: &str) -> Vec<Diversifier> {
    let mut out = Vec::new();
    for f in node.objects(prefix).await {
        let bytes = node
            .bucket
            .store
            .read_all(&Path::from(f.as_str()))
            .await
            .unwrap();
        match Header::parse(&bytes).unwrap().key_ref() {
            KeyRef::WrappedDek { diversifier, .. } => out.push(*diversifier),
            other => panic!("{f}: {other:?}"),
        }
    }
    out
}

pub async fn rotation(kind: Kind) {
    let clock = clock();
    let d1 = Node::new("d1", kind, &clock, None, Recorder::default()).await;
    let d2 = Node::new("d2", kind, &clock, Some(&d1.keys_dir), Recorder::default()).await;
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    let policy = d1.config.diversifier;
    let mut used = BTreeSet::new();

    // 30 hours: a message every other hour; in the other hours the idle sender writes an
    // empty file to announce the new hour's diversifier.
    let mut ids = Vec::new();
    for h in 0..30 {
        let announced = s_state(&d1, &d2).await.next_diversifier;
        if h % 2 == 0 {
            ids.push(
                s.send(Draft::new(TYPE, payload(&format!("h{h}"))))
                    .await
                    .unwrap(),
            );
        }
        drain(&mut s).await.unwrap();
        let divs = file_diversifiers(&d2, "from/d1/msg").await;
        if h == 0 || h % 2 == 0 || announced < policy.current(&clock) {
            assert_eq!(
                divs,
                vec![announced],
                "hour {h}: the file uses the announced diversifier"
            );
        }
        used.extend(divs);
        inbound.pump().await.unwrap();
        assert!(d2.objects("from/d1/msg").await.is_empty());
        // After each file the sender announces the current hour.
        assert_eq!(
            s_state(&d1, &d2).await.next_diversifier,
            policy.current(&clock)
        );
        clock.advance(Duration::from_secs(3600));
    }
    for id in &ids {
        let a = d2.applied(&d1.id, id).await;
        assert_eq!(
            a.map(|a| a.count),
            Some(1),
            "{id}: rejections {:?}, status {:?}",
            inbound.ctx.rejections().await.unwrap(),
            tern_messaging::Worker::status(&inbound.processor)
        );
    }
    assert!(
        used.len() >= 29,
        "a new diversifier about every hour: {}",
        used.len()
    );
    // One provider call per diversifier and side, not per file.
    assert!(d1.wrap_keys.provider_calls() <= used.len() as u64 + 1);
    assert!(d2.wrap_keys.provider_calls() <= used.len() as u64 + 1);
}

/// Both deployments down for 30 hours (longer than max_age): the receiver still reads the
/// file written before (its diversifier was current when the store recorded it), and the
/// sender re-keys under the current diversifier because the announced one expired.
pub async fn long_outage(kind: Kind) {
    let clock = clock();
    let d1 = Node::new("d1", kind, &clock, None, Recorder::default()).await;
    let d2 = Node::new("d2", kind, &clock, Some(&d1.keys_dir), Recorder::default()).await;
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let early = s.send(Draft::new(TYPE, payload("early"))).await.unwrap();
    drain(&mut s).await.unwrap();
    drop(s);
    clock.advance(Duration::from_secs(30 * 3600));
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    inbound.pump().await.unwrap();
    assert_eq!(
        d2.applied(&d1.id, &early).await.map(|a| a.count),
        Some(1),
        "{:#?}",
        inbound.ctx.rejections().await.unwrap()
    );
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let late = s.send(Draft::new(TYPE, payload("late"))).await.unwrap();
    let with_body = s
        .create(Draft::new(TYPE, payload("with body")))
        .await
        .unwrap();
    let body = s
        .attach_body_bytes(&with_body, b"after the outage")
        .await
        .unwrap();
    assert_eq!(body.diversifier, d1.config.diversifier.current(&clock));
    s.mark_ready(&with_body).await.unwrap();
    drain(&mut s).await.unwrap();
    let divs = file_diversifiers(&d2, "from/d1/msg").await;
    assert_eq!(
        divs,
        vec![d1.config.diversifier.current(&clock)],
        "re-keyed"
    );
    inbound.pump().await.unwrap();
    assert_eq!(
        d2.applied(&d1.id, &late).await.map(|a| a.count),
        Some(1),
        "{:#?}",
        inbound.ctx.rejections().await.unwrap()
    );
    assert_eq!(
        d2.applied(&d1.id, &with_body)
            .await
            .unwrap()
            .body_digests
            .len(),
        1
    );
    assert!(inbound.ctx.counters().rejected().is_empty());
    let recv = inbound.ctx.inbound(&d1.id).await.unwrap().unwrap();
    assert_eq!(recv.expected_seq, s_state(&d1, &d2).await.next_seq);
    // Files announced after the re-key follow the normal chain again.
    clock.advance(Duration::from_secs(3600));
    let again = s.send(Draft::new(TYPE, payload("again"))).await.unwrap();
    drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &again).await.map(|a| a.count), Some(1));
}

async fn s_state(d1: &Node, d2: &Node) -> tern_messaging::state::OutChannel {
    d1.context(CrashPoints::new())
        .outbound(&d2.id)
        .await
        .unwrap()
        .unwrap()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub async fn large_bodies(kind: Kind) {
    let clock = clock();
    let d1 = Node::new("d1", kind, &clock, None, Recorder::default()).await;
    let d2 = Node::new("d2", kind, &clock, Some(&d1.keys_dir), Recorder::default()).await;
    connect(&d1, &d2).await;
    let plan = FaultPlan::new();
    let counted: Arc<dyn ObjectStore> =
        Arc::new(FaultStore::new(Arc::clone(&d2.bucket.store), plan.clone()));
    let mut s = Sender::new(d1.context(CrashPoints::new()), d2.id.clone(), counted)
        .with_upload_options(
            CopyOptions {
                part_size: 5 << 20,
                single_put_max: 5 << 20,
                ..CopyOptions::default()
            },
            64 << 10,
        );
    let mut inbound = Inbound::new(&d2, CrashPoints::new());

    let small = data(300 << 10, 1); // several 64 KiB chunks, one PUT
    let big = data(12 << 20, 2); // multipart: 3 parts
    let id = s.create(Draft::new(TYPE, payload("big"))).await.unwrap();
    let b0 = s.attach_body_bytes(&id, &small).await.unwrap();
    let mut reader = std::io::Cursor::new(big.clone());
    let b1 = s.attach_body(&id, &mut reader).await.unwrap();
    assert_eq!((b0.n, b0.len), (0, small.len() as u64));
    assert_eq!((b1.n, b1.len), (1, big.len() as u64));
    assert!(
        plan.calls(Operation::PutMultipart) >= 1,
        "the big body went multipart"
    );
    s.mark_ready(&id).await.unwrap();
    drain(&mut s).await.unwrap();
    assert_eq!(d2.objects("from/d1/body").await.len(), 2);
    inbound.pump().await.unwrap();
    let a = d2.applied(&d1.id, &id).await.unwrap();
    assert_eq!(a.count, 1);
    assert_eq!(
        a.body_digests,
        vec![
            hex(&tern_crypto::kdf::sha256(&small)),
            hex(&tern_crypto::kdf::sha256(&big))
        ]
    );
    assert!(d2.objects("from/d1").await.is_empty(), "bodies cleaned up");
}

pub async fn cleanup_messages(kind: Kind) {
    let clock = clock();
    let d1 = Node::new("d1", kind, &clock, None, Recorder::default()).await;
    let d2 = Node::new("d2", kind, &clock, Some(&d1.keys_dir), Recorder::default()).await;
    connect(&d1, &d2).await;
    let plan = FaultPlan::new();
    let flaky: Arc<dyn ObjectStore> =
        Arc::new(FaultStore::new(Arc::clone(&d2.bucket.store), plan.clone()));
    let mut s = Sender::new(d1.context(CrashPoints::new()), d2.id.clone(), flaky);
    let mut inbound = Inbound::new(&d2, CrashPoints::new());

    // Abandoned by the application after two bodies.
    let a = s.create(Draft::new(TYPE, payload("a"))).await.unwrap();
    s.attach_body_bytes(&a, b"one").await.unwrap();
    s.attach_body_bytes(&a, b"two").await.unwrap();
    s.abandon(&a).await.unwrap();
    assert!(s.message(&a).await.unwrap().is_none());

    // Failed: the body's PUT lands but reports failure (inconclusive): the message is
    // abandoned automatically.
    let b = s.create(Draft::new(TYPE, payload("b"))).await.unwrap();
    plan.arm(
        FaultRule::on(Operation::Put)
            .under(Path::from(format!("from/d1/body/{b}")))
            .fault(Fault::FailAfterEffect),
    );
    assert!(s.attach_body_bytes(&b, b"lands anyway").await.is_err());
    assert!(
        s.message(&b).await.unwrap().is_none(),
        "abandoned on failure"
    );

    // Aged out in Preparing.
    let c = s.create(Draft::new(TYPE, payload("c"))).await.unwrap();
    s.attach_body_bytes(&c, b"stale").await.unwrap();
    // A message created and prepared in time still goes out.
    let d = s.create(Draft::new(TYPE, payload("d"))).await.unwrap();
    s.attach_body_bytes(&d, b"fresh").await.unwrap();
    s.mark_ready(&d).await.unwrap();
    drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &d).await.unwrap().count, 1);
    // The two cleanup messages went with it; a's and b's bodies are gone, c's not yet.
    let left = d2.objects("from/d1/body").await;
    assert_eq!(left, vec![format!("from/d1/body/{c}/0")]);
    clock.advance(d1.config.preparing_max_age + Duration::from_secs(1));
    drain(&mut s).await.unwrap();
    assert!(s.message(&c).await.unwrap().is_none(), "aged out");
    inbound.pump().await.unwrap();
    assert!(
        d2.objects("from/d1").await.is_empty(),
        "every orphan deleted"
    );
    for id in [&a, &b, &c] {
        assert!(d2.applied(&d1.id, id).await.is_none());
    }
    let queued = tern_messaging::Worker::status(&s)
        .figures
        .into_iter()
        .find(|(k, _)| *k == "cleanups_queued");
    assert_eq!(
        queued,
        Some(("cleanups_queued", 3)),
        "three cleanup messages"
    );
}

#[tokio::test]
async fn rotation_across_hours_on_folder() {
    rotation(Kind::Folder).await;
}

#[tokio::test]
async fn rotation_across_hours_on_localstack() {
    rotation(Kind::LocalStack).await;
}

#[tokio::test]
async fn long_outage_on_folder() {
    long_outage(Kind::Folder).await;
}

#[tokio::test]
async fn long_outage_on_localstack() {
    long_outage(Kind::LocalStack).await;
}

#[tokio::test]
async fn large_bodies_on_folder() {
    large_bodies(Kind::Folder).await;
}

#[tokio::test]
async fn large_bodies_on_localstack() {
    large_bodies(Kind::LocalStack).await;
}

#[tokio::test]
async fn cleanup_messages_on_folder() {
    cleanup_messages(Kind::Folder).await;
}

#[tokio::test]
async fn cleanup_messages_on_localstack() {
    cleanup_messages(Kind::LocalStack).await;
}

/// A handler that fails is retried (with backoff) and its effect applied once; one that
/// fails permanently leaves the message Failed — not applied, not cleaned, kept for the
/// operator — and the channel goes on.
#[tokio::test]
async fn handler_failures_retry_then_fail_on_folder() {
    let clock = clock();
    let d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    let flaky = Recorder {
        fail_first: 2,
        ..Recorder::default()
    };
    let mut d2 = Node::new("d2", Kind::Folder, &clock, Some(&d1.keys_dir), flaky).await;
    d2.config.max_attempts = 3;
    d2.config.retry_backoff = Duration::from_secs(10);
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    let id = s.send(Draft::new(TYPE, payload("flaky"))).await.unwrap();
    drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert!(d2.applied(&d1.id, &id).await.is_none(), "first run failed");
    assert!(
        d2.recorder.committed.lock().unwrap().is_empty(),
        "Commit::then runs only after a completion that committed"
    );
    // Backoff: nothing happens until the clock passes it.
    inbound.pump().await.unwrap();
    assert_eq!(d2.recorder.runs.lock().unwrap()[id.as_str()], 1);
    clock.advance(Duration::from_secs(11));
    inbound.pump().await.unwrap();
    clock.advance(Duration::from_secs(21));
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &id).await.unwrap().count, 1);
    assert_eq!(d2.recorder.runs.lock().unwrap()[id.as_str()], 3);
    assert_eq!(
        *d2.recorder.committed.lock().unwrap(),
        vec![id.to_string()],
        "after the commit, once"
    );

    // Permanently failing: three attempts, then Failed; its body stays.
    let mut d3 = Node::new(
        "d3",
        Kind::Folder,
        &clock,
        Some(&d1.keys_dir),
        Recorder {
            fail_first: u32::MAX,
            ..Recorder::default()
        },
    )
    .await;
    d3.config.max_attempts = 3;
    d3.config.retry_backoff = Duration::from_secs(0);
    connect(&d1, &d3).await;
    let mut s3 = sender(&d1, &d3, CrashPoints::new());
    let mut in3 = Inbound::new(&d3, CrashPoints::new());
    let doomed = s3
        .create(Draft::new(TYPE, payload("doomed")))
        .await
        .unwrap();
    s3.attach_body_bytes(&doomed, b"kept").await.unwrap();
    s3.mark_ready(&doomed).await.unwrap();
    drain(&mut s3).await.unwrap();
    for _ in 0..5 {
        in3.pump().await.unwrap();
    }
    assert_eq!(d3.recorder.runs.lock().unwrap()[doomed.as_str()], 3);
    assert!(d3.applied(&d1.id, &doomed).await.is_none());
    let row: tern_messaging::state::InMessage = d3
        .meta
        .read(|tx| {
            tx.get(
                &tern_meta::Key::root("msg")
                    .str("in")
                    .str("d1")
                    .str(doomed.as_str()),
            )
        })
        .unwrap()
        .expect("row kept");
    assert_eq!(row.state, tern_messaging::InState::Failed);
    assert!(row.last_error.unwrap().contains("injected"));
    assert_eq!(
        d3.objects("from/d1/body").await.len(),
        1,
        "body kept for the operator"
    );
    let next = s3
        .send(Draft::new("test.record", payload("next")))
        .await
        .unwrap();
    drain(&mut s3).await.unwrap();
    in3.pump().await.unwrap();
    // The channel goes on: the next message arrives and is attempted (this handler fails
    // everything, so it too ends Failed after its attempts).
    assert_eq!(
        in3.ctx
            .inbound(&d1.id)
            .await
            .unwrap()
            .unwrap()
            .files_received,
        2
    );
    assert_eq!(d3.recorder.runs.lock().unwrap()[next.as_str()], 3);
}

/// Failed messages are the operator's for `failed_retention`, never for ever: one retried
/// is handled (once), one discarded and one past its retention are cleaned up — body
/// files, rows and at last the message files — and remembered as seen.
#[tokio::test]
async fn failed_messages_are_retried_discarded_or_expire() {
    let clock = clock();
    let d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    // Every message's first run fails, and one run is all it gets: it ends Failed.
    let once = Recorder {
        fail_first: 1,
        ..Recorder::default()
    };
    let mut d2 = Node::new("d2", Kind::Folder, &clock, Some(&d1.keys_dir), once).await;
    d2.config.max_attempts = 1;
    d2.config.failed_retention = Duration::from_secs(3600);
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    let mut ids = Vec::new();
    for name in ["retried", "discarded", "expired"] {
        let id = s.create(Draft::new(TYPE, payload(name))).await.unwrap();
        s.attach_body_bytes(&id, name.as_bytes()).await.unwrap();
        s.mark_ready(&id).await.unwrap();
        ids.push(id);
    }
    drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    let ctx = inbound.ctx.clone();
    let failed = ctx.failed_messages(10).await.unwrap();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().all(|f| {
        f.attempts == 1
            && f.last_error
                .as_deref()
                .is_some_and(|e| e.contains("injected"))
            && f.expires_at_ms == f.failed_at_ms.map(|t| t + 3_600_000)
    }));
    assert_eq!(d2.objects("from/d1/body").await.len(), 3);

    // Retried: handled now, once.
    ctx.retry_failed(&d1.id, &ids[0]).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &ids[0]).await.unwrap().count, 1);
    // Discarded: cleaned up, never applied.
    ctx.discard_failed(&d1.id, &ids[1]).await.unwrap();
    inbound.pump().await.unwrap();
    assert!(d2.applied(&d1.id, &ids[1]).await.is_none());
    assert_eq!(ctx.failed_messages(10).await.unwrap().len(), 1);
    assert_eq!(d2.objects("from/d1/body").await.len(), 1);
    let e = ctx.discard_failed(&d1.id, &ids[1]).await.unwrap_err();
    assert!(e.to_string().contains(ids[1].as_str()), "{e}");

    // The last is kept until its retention has passed, then cleaned up by itself.
    clock.advance(Duration::from_secs(1800));
    inbound.pump().await.unwrap();
    assert_eq!(ctx.failed_messages(10).await.unwrap().len(), 1);
    clock.advance(Duration::from_secs(3 * 3600));
    inbound.pump().await.unwrap();
    assert!(ctx.failed_messages(10).await.unwrap().is_empty());
    assert!(d2.applied(&d1.id, &ids[2]).await.is_none());
    assert!(
        d2.objects("from/d1").await.is_empty(),
        "bodies and message files gone: {:?}",
        d2.objects("from/d1").await
    );
    assert_eq!(
        tern_messaging::service::Counters::get(&ctx.counters().failed_expired),
        1
    );
}

/// Seen ids (what makes a replay a duplicate) are kept `seen_retention`, then pruned
/// through their age index a batch at a time — those remembered before the index existed
/// too; younger ones stay.
#[tokio::test]
async fn seen_ids_are_pruned_by_age_in_batches() {
    use tern_messaging::state::Seen;
    let clock = clock();
    let d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    let mut d2 = Node::new(
        "d2",
        Kind::Folder,
        &clock,
        Some(&d1.keys_dir),
        Recorder::default(),
    )
    .await;
    d2.config.seen_retention = Duration::from_secs(3600);
    d2.config.clean_batch = 4;
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    let seen_rows = || {
        d2.meta
            .read(|tx| tx.scan_prefix::<Seen>(&tern_meta::Key::root("msg").str("seen")))
            .unwrap()
            .len()
    };
    // An id remembered by an older build (no age entry).
    let legacy = tern_meta::Key::root("msg")
        .str("seen")
        .str("d1")
        .str("old-1");
    d2.meta
        .write(|tx| {
            tx.put(
                &legacy,
                &Seen {
                    digest: "00".into(),
                    at_ms: tern_clock::Clock::now_millis(&clock),
                },
            )
        })
        .unwrap();
    for i in 0..10 {
        s.send(Draft::new(TYPE, payload(&format!("m{i}"))))
            .await
            .unwrap();
    }
    drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(seen_rows(), 11);
    // Younger than the retention: kept.
    clock.advance(Duration::from_secs(1800));
    let young = s.send(Draft::new(TYPE, payload("young"))).await.unwrap();
    drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(seen_rows(), 12);
    // Past the first eleven's retention (and the cleaner's pruning interval): only the
    // young one is left.
    clock.advance(Duration::from_secs(3200));
    inbound.pump().await.unwrap();
    assert_eq!(seen_rows(), 1);
    let left: Vec<_> = d2
        .meta
        .read(|tx| tx.scan_prefix::<Seen>(&tern_meta::Key::root("msg").str("seen")))
        .unwrap();
    assert!(left[0].0.to_string().contains(young.as_str()), "{left:?}");
}

/// A message its handler refuses for good (stale, not meant for this deployment) is
/// counted, cleaned up with its files and remembered — never kept as Failed.
#[tokio::test]
async fn a_refused_message_is_cleaned_up_not_kept_as_failed() {
    let clock = clock();
    let d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    let refusing = Recorder {
        refuse_stale: true,
        ..Recorder::default()
    };
    let d2 = Node::new("d2", Kind::Folder, &clock, Some(&d1.keys_dir), refusing).await;
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    let stale = s
        .create(Draft::new(TYPE, payload("stale-1")))
        .await
        .unwrap();
    s.attach_body_bytes(&stale, b"body").await.unwrap();
    s.mark_ready(&stale).await.unwrap();
    let fresh = s.send(Draft::new(TYPE, payload("fresh"))).await.unwrap();
    drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert!(d2.applied(&d1.id, &stale).await.is_none());
    assert_eq!(d2.applied(&d1.id, &fresh).await.unwrap().count, 1);
    let ctx = inbound.ctx.clone();
    assert!(ctx.failed_messages(10).await.unwrap().is_empty());
    assert_eq!(
        d2.recorder.runs.lock().unwrap()[stale.as_str()],
        1,
        "refused once, not retried"
    );
    assert!(
        d2.objects("from/d1").await.is_empty(),
        "{:?}",
        d2.objects("from/d1").await
    );
    assert_eq!(
        tern_messaging::service::Counters::get(&ctx.counters().refused),
        1
    );
}
