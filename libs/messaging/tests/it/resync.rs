//! An operator's resync of a channel stalled on a file that cannot be read: the channel
//! resumes at the next readable file, the skipped file's messages come again from the
//! sender, and every message is handled exactly once.

use std::time::Duration;

use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use tern_clock::ManualClock;
use tern_messaging::worker::drain;
use tern_messaging::{
    Counters, CrashPoints, Draft, ErrorKind, MessagingConfig, RejectReason, Sender,
};
use tern_storage::StoreExt as _;

use crate::common::*;

/// What happens to the first file of the chain.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Its bytes are changed for good: rejected, the channel stalls on it.
    Tampered,
    /// It is deleted: the channel waits for it for ever.
    Lost,
}

/// Two deployments with channels both ways: each one's sender to the other and its
/// receiving side.
struct Two {
    clock: ManualClock,
    d1: Node,
    d2: Node,
    s12: Sender,
    s21: Sender,
    in1: Inbound,
    in2: Inbound,
}

/// [`Two`], d1's messaging settings changed by `configure` first.
async fn two(configure: impl FnOnce(&mut MessagingConfig)) -> Two {
    let clock = clock();
    let mut d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    configure(&mut d1.config);
    let d2 = Node::new(
        "d2",
        Kind::Folder,
        &clock,
        Some(&d1.keys_dir),
        Recorder::default(),
    )
    .await;
    connect(&d1, &d2).await;
    connect(&d2, &d1).await;
    Two {
        s12: sender(&d1, &d2, CrashPoints::new()),
        s21: sender(&d2, &d1, CrashPoints::new()),
        in1: Inbound::new(&d1, CrashPoints::new()),
        in2: Inbound::new(&d2, CrashPoints::new()),
        clock,
        d1,
        d2,
    }
}

async fn resync_past(fault: Fault) {
    let Two {
        d1,
        d2,
        mut s12,
        mut s21,
        mut in1,
        mut in2,
        ..
    } = two(|_| {}).await;

    // A healthy channel is not resynchronised.
    let m0 = s12.send(Draft::new(TYPE, payload("m0"))).await.unwrap();
    drain(&mut s12).await.unwrap();
    let e = in2.receiver.resync(&d1.id).await.unwrap_err();
    assert!(e.to_string().contains("not stalled"), "{e}");
    in2.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &m0).await.unwrap().count, 1);
    let e = in2.receiver.resync(&d1.id).await.unwrap_err();
    assert!(e.to_string().contains("not stalled"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Conflict);

    // m1 goes out in a file that becomes unreadable, m2 in the one after it.
    let m1 = s12.send(Draft::new(TYPE, payload("m1"))).await.unwrap();
    drain(&mut s12).await.unwrap();
    let f1 = Path::from(d2.objects("from/d1/msg").await.pop().unwrap().as_str());
    match fault {
        Fault::Tampered => {
            let mut bad = d2.bucket.store.read_all(&f1).await.unwrap().to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x01;
            d2.bucket
                .store
                .put_overwrite(&f1, bad.into())
                .await
                .unwrap();
        }
        Fault::Lost => d2.bucket.store.delete(&f1).await.unwrap(),
    }
    in2.pump().await.unwrap();
    // Nothing to resume at yet: refused, nothing changed. (A lost file looks like one not
    // yet written until a later one exists.)
    let e = in2.receiver.resync(&d1.id).await.unwrap_err();
    let why = match fault {
        Fault::Tampered => "no readable file after",
        Fault::Lost => "not stalled",
    };
    assert!(e.to_string().contains(why), "{e}");
    let m2 = s12.send(Draft::new(TYPE, payload("m2"))).await.unwrap();
    drain(&mut s12).await.unwrap();
    in2.pump().await.unwrap();
    assert!(d2.applied(&d1.id, &m1).await.is_none());
    assert!(
        d2.applied(&d1.id, &m2).await.is_none(),
        "the chain cannot reach the file after the broken one"
    );
    let before = in2.ctx.inbound(&d1.id).await.unwrap().unwrap();
    assert_eq!(before.expected_file, f1.to_string());

    // The resync: past f1, at m2's file.
    let r = in2.receiver.resync(&d1.id).await.unwrap();
    assert_eq!(r.from_seq, before.expected_seq);
    assert!(r.to_seq > r.from_seq);
    assert_eq!(r.skipped_files, vec![f1.to_string()]);
    assert_eq!(r.persisted, 1, "m2's file was persisted with the jump");
    assert!(r.resend.is_some());
    let after = in2.ctx.inbound(&d1.id).await.unwrap().unwrap();
    assert!(after.stall.is_none());
    assert!(
        after.expected_seq > r.to_seq,
        "the channel follows the chain again"
    );
    assert_eq!(in2.ctx.counters().rejected_for(RejectReason::Skipped), 1);
    assert_eq!(Counters::get(&in2.ctx.counters().resyncs), 1);
    let recorded = in2.ctx.rejections().await.unwrap();
    assert!(
        recorded
            .iter()
            .any(|x| x.reason == RejectReason::Skipped && x.file == f1.to_string()),
        "{recorded:?}"
    );
    in2.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &m2).await.unwrap().count, 1);
    assert!(d2.applied(&d1.id, &m1).await.is_none());

    // The resend request reaches d1, whose service puts m1 back in its queue.
    drain(&mut s21).await.unwrap();
    in1.pump().await.unwrap();
    assert_eq!(Counters::get(&in1.ctx.counters().resent), 1);
    assert_eq!(Counters::get(&in1.ctx.counters().resend_gaps), 0);
    drain(&mut s12).await.unwrap();
    in2.pump().await.unwrap();
    for (m, what) in [(&m0, "m0"), (&m1, "m1"), (&m2, "m2")] {
        assert_eq!(
            d2.applied(&d1.id, m).await.map(|a| a.count),
            Some(1),
            "{what} handled exactly once"
        );
    }

    // The channel goes on as before, and is healthy again.
    let m3 = s12.send(Draft::new(TYPE, payload("m3"))).await.unwrap();
    drain(&mut s12).await.unwrap();
    in2.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &m3).await.unwrap().count, 1);
    let e = in2.receiver.resync(&d1.id).await.unwrap_err();
    assert!(e.to_string().contains("not stalled"), "{e}");
}

#[tokio::test]
async fn a_channel_stalled_on_a_tampered_file_resyncs_and_loses_nothing() {
    resync_past(Fault::Tampered).await;
}

#[tokio::test]
async fn a_channel_waiting_for_a_lost_file_resyncs_and_loses_nothing() {
    resync_past(Fault::Lost).await;
}

/// A sender that no longer holds the skipped file's messages says so (and counts it).
#[tokio::test]
async fn a_resend_past_sent_retention_is_counted_as_a_gap() {
    let Two {
        clock,
        d1,
        d2,
        mut s12,
        mut s21,
        mut in1,
        mut in2,
    } = two(|c| c.sent_retention = Duration::from_secs(60)).await;

    let m1 = s12.send(Draft::new(TYPE, payload("m1"))).await.unwrap();
    drain(&mut s12).await.unwrap();
    let f1 = Path::from(d2.objects("from/d1/msg").await[0].as_str());
    d2.bucket.store.delete(&f1).await.unwrap();
    // Past the retention, the sender's housekeeping prunes m1's Sent row.
    clock.advance(Duration::from_secs(120));
    let m2 = s12.send(Draft::new(TYPE, payload("m2"))).await.unwrap();
    drain(&mut s12).await.unwrap();
    in2.pump().await.unwrap();
    let r = in2.receiver.resync(&d1.id).await.unwrap();
    assert_eq!(r.skipped_files, vec![f1.to_string()]);
    drain(&mut s21).await.unwrap();
    in1.pump().await.unwrap();
    assert_eq!(Counters::get(&in1.ctx.counters().resent), 0);
    assert_eq!(Counters::get(&in1.ctx.counters().resend_gaps), 1);
    in2.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &m2).await.unwrap().count, 1);
    assert!(d2.applied(&d1.id, &m1).await.is_none());
}
