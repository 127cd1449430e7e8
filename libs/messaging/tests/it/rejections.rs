//! Every rejection case: nothing is applied, the rejection is counted once and recorded
//! with its file, and the receiver (and every other channel) keeps working.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{PutMode, PutOptions};
use tern_clock::ManualClock;
use tern_crypto::{Diversifier, EncryptOptions};
use tern_messaging::keys::ChannelKeys;
use tern_messaging::worker::drain;
use tern_messaging::{CrashPoints, Draft, GlobalMessage, Handler, MessageFile, RejectReason};
use tern_storage::StoreExt as _;
use tern_storage::layout::{self, MessageId};

use crate::common::*;

fn count(inbound: &Inbound, r: RejectReason) -> u64 {
    inbound.ctx.counters().rejected_for(r)
}

/// Writes a validly encrypted file of the `from -> to` chain at `seq`, claiming to be
/// number `claimed_seq`, holding `records`.
async fn forge(
    from: &Node,
    to: &Node,
    seq: u64,
    claimed_seq: u64,
    diversifier: Diversifier,
    records: &[Vec<u8>],
) -> Path {
    let keys = ChannelKeys::new(
        Arc::clone(&from.wrap_keys),
        tern_messaging::channel_name(&from.id, &to.id),
        from.config.diversifier,
        from.clock.shared(),
        tern_crypto::SystemRandom::shared(),
    );
    let path = layout::replication::msg(&from.id, seq);
    let next = layout::replication::msg(&from.id, claimed_seq + 1);
    let plain = MessageFile::encode_records(
        &from.id,
        &to.id,
        claimed_seq,
        next.as_ref(),
        diversifier,
        records,
    )
    .unwrap();
    tern_crypto::object::put_encrypted(
        &*to.bucket.store,
        &path,
        &keys.pinned(diversifier),
        &plain,
        &EncryptOptions::default(),
        PutOptions::from(PutMode::Create),
    )
    .await
    .unwrap();
    path
}

pub async fn scenario(kind: Kind) {
    let clock = clock();
    let mut d1 = Node::new("d1", kind, &clock, None, Recorder::default()).await;
    d1.registry
        .register(
            "test.other",
            Arc::new(Recorder::default()) as Arc<dyn Handler>,
        )
        .unwrap();
    let strict = Recorder {
        strict: true,
        ..Recorder::default()
    };
    let mut d2 = Node::new("d2", kind, &clock, Some(&d1.keys_dir), strict).await;
    // Rejections are pruned a few at a time (see the end).
    d2.config.clean_batch = 3;
    let d3 = Node::new("d3", kind, &clock, Some(&d1.keys_dir), Recorder::default()).await;
    let d4 = Node::new("d4", kind, &clock, Some(&d1.keys_dir), Recorder::default()).await;
    // d5's clock is 30 hours behind: its diversifiers are too old for d2.
    let skewed = ManualClock::new(clock.shared().now_millis() - 30 * 3600 * 1000);
    let d5 = Node::new("d5", kind, &skewed, Some(&d1.keys_dir), Recorder::default()).await;
    connect(&d1, &d2).await;
    connect(&d3, &d2).await;
    connect(&d5, &d2).await;
    // d4 creates its side only: d2 has never heard of it.
    d4.context(CrashPoints::new())
        .create_outbound(&d2.id)
        .await
        .unwrap();

    let mut s1 = sender(&d1, &d2, CrashPoints::new());
    let mut s3 = sender(&d3, &d2, CrashPoints::new());
    let mut s4 = sender(&d4, &d2, CrashPoints::new());
    let mut s5 = sender(&d5, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());

    // 1. A tampered file stalls its channel only, is counted once, and the channel resumes
    //    when the object is repaired.
    let m1 = s1.send(Draft::new(TYPE, payload("m1"))).await.unwrap();
    drain(&mut s1).await.unwrap();
    let f1 = Path::from(d2.objects("from/d1/msg").await[0].as_str());
    let original = d2.bucket.store.read_all(&f1).await.unwrap();
    let mut bad = original.to_vec();
    let mid = bad.len() - 20;
    bad[mid] ^= 0x40;
    d2.bucket
        .store
        .put_overwrite(&f1, bad.into())
        .await
        .unwrap();
    let m3 = s3.send(Draft::new(TYPE, payload("m3"))).await.unwrap();
    drain(&mut s3).await.unwrap();
    inbound.pump().await.unwrap();
    inbound.pump().await.unwrap();
    assert!(
        d2.applied(&d1.id, &m1).await.is_none(),
        "tampered file applied"
    );
    assert_eq!(
        d2.applied(&d3.id, &m3).await.unwrap().count,
        1,
        "other channel works"
    );
    assert_eq!(count(&inbound, RejectReason::Tampered), 1);
    let ch1 = inbound.ctx.inbound(&d1.id).await.unwrap().unwrap();
    let stall = ch1.stall.clone().expect("stalled");
    assert_eq!(stall.file, f1.to_string());
    assert_eq!(stall.reason, RejectReason::Tampered);
    d2.bucket
        .store
        .put_overwrite(&f1, original.into())
        .await
        .unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(
        d2.applied(&d1.id, &m1).await.unwrap().count,
        1,
        "repaired file applied"
    );
    assert!(
        inbound
            .ctx
            .inbound(&d1.id)
            .await
            .unwrap()
            .unwrap()
            .stall
            .is_none()
    );

    // 2. Unknown sender: d4's file is reported by discovery, once, and never read as a
    //    message.
    let m4 = s4.send(Draft::new(TYPE, payload("m4"))).await.unwrap();
    drain(&mut s4).await.unwrap();
    assert_eq!(inbound.receiver.discover().await.unwrap(), 1);
    assert_eq!(
        inbound.receiver.discover().await.unwrap(),
        0,
        "reported once"
    );
    inbound.pump().await.unwrap();
    assert!(d2.applied(&d4.id, &m4).await.is_none());
    assert_eq!(count(&inbound, RejectReason::UnknownSender), 1);

    // 3. A diversifier outside the acceptance window (a sender 30 h behind).
    let m5 = s5.send(Draft::new(TYPE, payload("m5"))).await.unwrap();
    drain(&mut s5).await.unwrap();
    inbound.pump().await.unwrap();
    inbound.pump().await.unwrap();
    assert!(d2.applied(&d5.id, &m5).await.is_none());
    assert_eq!(count(&inbound, RejectReason::Diversifier), 1);
    let ch5 = inbound.ctx.inbound(&d5.id).await.unwrap().unwrap();
    assert_eq!(ch5.stall.unwrap().reason, RejectReason::Diversifier);

    // 4. A file that is not the expected next one: planted five numbers ahead of d3's
    //    chain (validly encrypted by a group member), reported once by discovery; the
    //    chain itself goes on.
    let ch3 = inbound.ctx.inbound(&d3.id).await.unwrap().unwrap();
    let rogue = GlobalMessage {
        message_type: tern_messaging::MessageType::new(TYPE).unwrap(),
        id: MessageId::new("rogue-1").unwrap(),
        origin: d3.id.clone(),
        created_at_ms: 0,
        payload: payload("rogue"),
        bodies: vec![],
    };
    forge(
        &d3,
        &d2,
        ch3.expected_seq + 5,
        ch3.expected_seq + 5,
        ch3.expected_diversifier,
        &[rogue.encode().unwrap()],
    )
    .await;
    assert_eq!(inbound.receiver.discover().await.unwrap(), 1);
    assert_eq!(
        inbound.receiver.discover().await.unwrap(),
        0,
        "reported once"
    );
    let m3b = s3.send(Draft::new(TYPE, payload("m3b"))).await.unwrap();
    drain(&mut s3).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d3.id, &m3b).await.unwrap().count, 1);
    assert!(d2.applied(&d3.id, &rogue.id).await.is_none());
    assert_eq!(count(&inbound, RejectReason::OutOfChain), 1);

    // 5. A replayed id: the same id with different content is rejected; with the same
    //    content it is a duplicate, dropped. Sender rows are pruned first (retention), as
    //    a sender that lost its rows would do.
    let x = MessageId::new("x-1").unwrap();
    s1.send(Draft::new(TYPE, payload("one")).with_id(x.clone()))
        .await
        .unwrap();
    drain(&mut s1).await.unwrap();
    inbound.pump().await.unwrap();
    clock.advance(Duration::from_secs(11 * 60));
    drain(&mut s1).await.unwrap();
    assert!(s1.message(&x).await.unwrap().is_none(), "sent row pruned");
    s1.send(Draft::new(TYPE, payload("two")).with_id(x.clone()))
        .await
        .unwrap();
    drain(&mut s1).await.unwrap();
    inbound.pump().await.unwrap();
    let a = d2.applied(&d1.id, &x).await.unwrap();
    assert_eq!((a.count, a.payload.as_str()), (1, "one"));
    assert_eq!(count(&inbound, RejectReason::ReplayedId), 1);
    clock.advance(Duration::from_secs(11 * 60));
    drain(&mut s1).await.unwrap();
    s1.send(Draft::new(TYPE, payload("one")).with_id(x.clone()))
        .await
        .unwrap();
    drain(&mut s1).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &x).await.unwrap().count, 1);
    assert_eq!(
        tern_messaging::Counters::get(&inbound.ctx.counters().duplicates),
        1
    );
    assert_eq!(count(&inbound, RejectReason::ReplayedId), 1);

    // 6. Malformed: a payload the receiver's handler refuses, a type it does not know, and
    //    a record that does not parse — each rejected alone; the good message of the same
    //    file is applied.
    let bad_payload = s1
        .send(Draft::new(TYPE, payload("bad payload")))
        .await
        .unwrap();
    let unknown = s1
        .send(Draft::new("test.other", payload("x")))
        .await
        .unwrap();
    let good = s1.send(Draft::new(TYPE, payload("good"))).await.unwrap();
    drain(&mut s1).await.unwrap();
    inbound.pump().await.unwrap();
    assert!(d2.applied(&d1.id, &bad_payload).await.is_none());
    assert!(d2.applied(&d1.id, &unknown).await.is_none());
    assert_eq!(d2.applied(&d1.id, &good).await.unwrap().count, 1);
    assert_eq!(count(&inbound, RejectReason::Malformed), 2);
    let ch1 = inbound.ctx.inbound(&d1.id).await.unwrap().unwrap();
    let mut record = GlobalMessage {
        message_type: tern_messaging::MessageType::new(TYPE).unwrap(),
        id: MessageId::new("fine-1").unwrap(),
        origin: d1.id.clone(),
        created_at_ms: 0,
        payload: payload("fine"),
        bodies: vec![],
    }
    .encode()
    .unwrap();
    let fine = record.clone();
    record.truncate(record.len() - 3);
    // A message claiming another origin inside d1's chain.
    let impostor = GlobalMessage {
        message_type: tern_messaging::MessageType::new(TYPE).unwrap(),
        id: MessageId::new("impostor-1").unwrap(),
        origin: d3.id.clone(),
        created_at_ms: 0,
        payload: payload("impostor"),
        bodies: vec![],
    };
    let forged = forge(
        &d1,
        &d2,
        ch1.expected_seq,
        ch1.expected_seq,
        ch1.expected_diversifier,
        &[record, fine, impostor.encode().unwrap()],
    )
    .await;
    inbound.pump().await.unwrap();
    assert_eq!(count(&inbound, RejectReason::Malformed), 3);
    assert_eq!(count(&inbound, RejectReason::UnknownSender), 2);
    assert!(d2.applied(&d3.id, &impostor.id).await.is_none());
    assert!(d2.applied(&d1.id, &impostor.id).await.is_none());
    assert_eq!(
        d2.applied(&d1.id, &MessageId::new("fine-1").unwrap())
            .await
            .unwrap()
            .count,
        1
    );

    // 7. A file at the expected name that claims another number: out of chain, stalls.
    let ch1 = inbound.ctx.inbound(&d1.id).await.unwrap().unwrap();
    assert_ne!(ch1.expected_file, forged.to_string());
    forge(
        &d1,
        &d2,
        ch1.expected_seq,
        ch1.expected_seq + 1,
        ch1.expected_diversifier,
        &[],
    )
    .await;
    inbound.pump().await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(count(&inbound, RejectReason::OutOfChain), 2);
    assert_eq!(
        inbound
            .ctx
            .inbound(&d1.id)
            .await
            .unwrap()
            .unwrap()
            .stall
            .unwrap()
            .reason,
        RejectReason::OutOfChain
    );

    // Every rejection is recorded with its file; the other channel still works.
    let recorded = inbound.ctx.rejections().await.unwrap();
    assert_eq!(recorded.len(), 10, "{recorded:#?}");
    assert!(recorded.iter().all(|r| r.file.contains("/msg/")));
    let m3c = s3.send(Draft::new(TYPE, payload("m3c"))).await.unwrap();
    drain(&mut s3).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d3.id, &m3c).await.unwrap().count, 1);

    // Past their retention the recorded rejections are pruned (through their order index,
    // a batch at a time); the counters stay.
    let before = recorded.iter().map(|r| r.at_ms).max().unwrap();
    clock.advance(d2.config.rejection_retention + Duration::from_secs(3600));
    inbound.pump().await.unwrap();
    let left = inbound.ctx.rejections().await.unwrap();
    assert!(
        left.iter().all(|r| r.at_ms > before),
        "rejections past their retention are gone: {left:#?}"
    );
    assert_eq!(count(&inbound, RejectReason::OutOfChain), 2);
}

#[tokio::test]
async fn rejections_on_folder() {
    scenario(Kind::Folder).await;
}

#[tokio::test]
async fn rejections_on_localstack() {
    scenario(Kind::LocalStack).await;
}
