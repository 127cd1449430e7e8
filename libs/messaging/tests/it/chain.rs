//! End to end between two deployments: messages with and without bodies go out in a chain
//! of message files, are applied exactly once, and every file is cleaned up.

use tern_crypto::Header;
use tern_crypto::format::KeyRef;
use tern_messaging::{CrashPoints, Draft, OutState};
use tern_storage::StoreExt as _;
use tern_storage::layout;

use crate::common::*;

/// Sends `n` messages (every third with two bodies) in several files and checks the whole
/// life cycle.
pub async fn scenario(kind: Kind) {
    let clock = clock();
    let d1 = Node::new("d1", kind, &clock, None, Recorder::default()).await;
    let d2 = Node::new("d2", kind, &clock, Some(&d1.keys_dir), Recorder::default()).await;
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());

    let mut ids = Vec::new();
    for i in 0..40u32 {
        let id = if i % 3 == 0 {
            let id = s
                .create(Draft::new(TYPE, payload(&format!("m{i}"))))
                .await
                .expect("create");
            s.attach_body_bytes(&id, format!("body a of {i}").as_bytes())
                .await
                .expect("body a");
            s.attach_body_bytes(&id, &vec![i as u8; 1000 + i as usize])
                .await
                .expect("body b");
            s.mark_ready(&id).await.expect("ready");
            id
        } else {
            s.send(Draft::new(TYPE, payload(&format!("m{i}"))))
                .await
                .expect("send")
        };
        ids.push(id);
        if i % 10 == 9 {
            tern_messaging::worker::drain(&mut s).await.expect("sender");
        }
    }
    let out = d1
        .context(CrashPoints::new())
        .outbound(&d2.id)
        .await
        .unwrap()
        .unwrap();
    // 40 messages, batches of at most 16, drained every 10: 4 files.
    assert_eq!(out.files_written, 4, "{out:?}");
    assert!(out.pending.is_none());
    for id in &ids {
        assert_eq!(s.message(id).await.unwrap().unwrap().state, OutState::Sent);
    }

    // The files form a chain: consecutive numbers, each under the announced diversifier.
    let files = d2.objects("from/d1/msg").await;
    assert_eq!(files.len(), 4, "{files:?}");
    let seqs: Vec<u64> = files
        .iter()
        .map(|f| layout::replication::parse_msg(f.rsplit('/').next().unwrap()).unwrap())
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "no gap: {seqs:?}");
    }
    for f in &files {
        let bytes = d2
            .bucket
            .store
            .read_all(&object_store::path::Path::from(f.as_str()))
            .await
            .unwrap();
        let header = Header::parse(&bytes).expect("header");
        assert!(matches!(header.key_ref(), KeyRef::WrappedDek { .. }));
    }

    inbound.pump().await.expect("pump");
    for (i, id) in ids.iter().enumerate() {
        let a = d2
            .applied(&d1.id, id)
            .await
            .unwrap_or_else(|| panic!("{id} not applied"));
        assert_eq!(a.count, 1, "{id} applied once");
        assert_eq!(a.payload, format!("m{i}"));
        if i % 3 == 0 {
            assert_eq!(a.body_digests.len(), 2);
        }
    }
    // Everything is cleaned up: no message or body file, no row.
    assert_eq!(d2.objects("from/d1").await, Vec::<String>::new());
    let inc = inbound.ctx.inbound(&d1.id).await.unwrap().unwrap();
    assert_eq!(
        inc.expected_seq, out.next_seq,
        "receiver expects what the sender writes next"
    );
    assert_eq!(inc.expected_diversifier, out.next_diversifier);
    assert_eq!(inc.files_received, 4);
    let c = inbound.ctx.counters();
    assert_eq!(tern_messaging::Counters::get(&c.messages_received), 40);
    assert_eq!(tern_messaging::Counters::get(&c.handled), 40);
    assert_eq!(tern_messaging::Counters::get(&c.cleaned), 40);
    assert!(c.rejected().is_empty(), "{:?}", c.rejected());
    let rows = d2
        .meta
        .read(|tx| {
            tx.scan_prefix::<tern_messaging::state::InMessage>(
                &tern_meta::Key::root("msg").str("in"),
            )
        })
        .unwrap();
    assert!(rows.is_empty(), "rows left: {}", rows.len());

    // The chain goes on after the cleanup.
    let id = s.send(Draft::new(TYPE, payload("after"))).await.unwrap();
    tern_messaging::worker::drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert_eq!(d2.applied(&d1.id, &id).await.unwrap().count, 1);
    // Ask only the provider rarely: one derivation per diversifier per side.
    assert!(
        d1.wrap_keys.provider_calls() <= 2,
        "{}",
        d1.wrap_keys.provider_calls()
    );
}

#[tokio::test]
async fn end_to_end_on_folder() {
    scenario(Kind::Folder).await;
}

#[tokio::test]
async fn end_to_end_on_localstack() {
    scenario(Kind::LocalStack).await;
}

/// The workers run as the daemon runs them: `worker::run` loops woken by the sender's
/// notify and the poll interval, stopped through one watch channel.
#[tokio::test]
async fn workers_run_until_stopped_on_folder() {
    use std::sync::Arc;
    use tern_messaging::worker::run;
    use tern_messaging::{Cleaner, Processor, Receiver, Sender};

    let clock = clock();
    let d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    let d2 = Node::new(
        "d2",
        Kind::Folder,
        &clock,
        Some(&d1.keys_dir),
        Recorder::default(),
    )
    .await;
    connect(&d1, &d2).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let c1 = d1.context(CrashPoints::new());
    let c2 = d2.context(CrashPoints::new());
    let mut worker = Sender::new(c1.clone(), d2.id.clone(), Arc::clone(&d2.bucket.store));
    let api =
        Sender::new(c1, d2.id.clone(), Arc::clone(&d2.bucket.store)).sharing_waker(worker.waker());
    let store = Arc::clone(&d2.bucket.store);
    let mut receiver = Receiver::new(c2.clone(), Arc::clone(&store));
    let mut processor = Processor::new(c2.clone(), Arc::clone(&store));
    let mut cleaner = Cleaner::new(c2, store);
    let backoff = std::time::Duration::from_millis(10);
    let tasks = vec![
        tokio::spawn({
            let stop = stop.clone();
            async move { run(&mut worker, stop, backoff).await }
        }),
        tokio::spawn({
            let stop = stop.clone();
            async move { run(&mut receiver, stop, backoff).await }
        }),
        tokio::spawn({
            let stop = stop.clone();
            async move { run(&mut processor, stop, backoff).await }
        }),
        tokio::spawn(async move { run(&mut cleaner, stop, backoff).await }),
    ];
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            api.send(Draft::new(TYPE, payload(&format!("r{i}"))))
                .await
                .unwrap(),
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut done = 0;
        for id in &ids {
            if d2.applied(&d1.id, id).await.is_some() {
                done += 1;
            }
        }
        if done == ids.len() && d2.objects("from/d1").await.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done}/{} applied",
            ids.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap().expect("worker stopped cleanly");
    }
    for id in &ids {
        assert_eq!(d2.applied(&d1.id, id).await.unwrap().count, 1);
    }
}

/// Files stop at `max_file_bytes` of payload; payloads above `max_payload_bytes` are
/// refused (they belong in body files).
#[tokio::test]
async fn file_and_payload_size_limits_on_folder() {
    let clock = clock();
    let mut d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    d1.config.max_file_bytes = 1000;
    d1.config.max_payload_bytes = 400;
    let d2 = Node::new(
        "d2",
        Kind::Folder,
        &clock,
        Some(&d1.keys_dir),
        Recorder::default(),
    )
    .await;
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    let too_big = s.send(Draft::new(TYPE, payload(&"x".repeat(401)))).await;
    assert!(matches!(
        too_big,
        Err(tern_messaging::Error::Invalid {
            what: "payload",
            ..
        })
    ));
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            s.send(Draft::new(
                TYPE,
                payload(&format!("{i}{}", "y".repeat(299))),
            ))
            .await
            .unwrap(),
        );
    }
    tern_messaging::worker::drain(&mut s).await.unwrap();
    // 300 bytes each, at most 1000 per file: 3 per file, 4 files.
    assert_eq!(d2.objects("from/d1/msg").await.len(), 4);
    inbound.pump().await.unwrap();
    for id in &ids {
        assert_eq!(d2.applied(&d1.id, id).await.unwrap().count, 1);
    }
}

/// Many messages in one metadata transaction; an oversized file is refused unread.
#[tokio::test]
async fn send_batch_and_oversized_files_on_folder() {
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
    d2.config.max_received_file_bytes = 4096;
    connect(&d1, &d2).await;
    let mut s = sender(&d1, &d2, CrashPoints::new());
    let mut inbound = Inbound::new(&d2, CrashPoints::new());
    let ids = s
        .send_batch(
            (0..10)
                .map(|i| Draft::new(TYPE, payload(&format!("b{i}"))))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 10);
    // A duplicate id anywhere in a batch refuses the whole batch.
    let dup = s
        .send_batch(vec![
            Draft::new(TYPE, payload("new")),
            Draft::new(TYPE, payload("again")).with_id(ids[3].clone()),
        ])
        .await;
    assert!(matches!(
        dup,
        Err(tern_messaging::Error::DuplicateMessage { .. })
    ));
    tern_messaging::worker::drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    for id in &ids {
        assert_eq!(d2.applied(&d1.id, id).await.unwrap().count, 1);
    }
    // 20 messages of 3 KiB: over 4 KiB, refused before it is read.
    let big: Vec<_> = (0..20)
        .map(|i| Draft::new(TYPE, payload(&format!("{i}{}", "z".repeat(3000)))))
        .collect();
    let big_ids = s.send_batch(big).await.unwrap();
    tern_messaging::worker::drain(&mut s).await.unwrap();
    inbound.pump().await.unwrap();
    assert!(d2.applied(&d1.id, &big_ids[0]).await.is_none());
    assert_eq!(
        inbound
            .ctx
            .counters()
            .rejected_for(tern_messaging::RejectReason::Malformed),
        1
    );
}

/// API errors carry a kind the daemon maps to a status.
#[tokio::test]
async fn api_errors_have_kinds_on_folder() {
    use tern_messaging::{Error, ErrorKind};
    let clock = clock();
    let d1 = Node::new("d1", Kind::Folder, &clock, None, Recorder::default()).await;
    let d2 = Node::new(
        "d2",
        Kind::Folder,
        &clock,
        Some(&d1.keys_dir),
        Recorder::default(),
    )
    .await;
    let s = sender(&d1, &d2, CrashPoints::new());
    let e = s.send(Draft::new(TYPE, payload("x"))).await.unwrap_err();
    assert!(matches!(e, Error::UnknownChannel { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    connect(&d1, &d2).await;
    let e = s
        .send(Draft::new("no.such.type", payload("x")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e:?}");
    let id = s.send(Draft::new(TYPE, payload("x"))).await.unwrap();
    let e = s.mark_ready(&id).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongState {
                state: "ReadyToSend",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::Conflict);
    let e = s
        .send(Draft::new(TYPE, payload("x")).with_id(id.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
}

/// While a reply is expected (`Context::expect_reply`: a request went out) the receiver
/// looks every `reply_poll_interval`: with a poll interval of an hour, the answer is read
/// at once only because of that; once the window is over it waits the hour again.
#[tokio::test]
async fn an_expected_reply_is_read_without_waiting_for_the_poll_interval() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use tern_messaging::worker::{drain, run};
    use tern_messaging::{Receiver, Sender};

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
    d2.config.poll_interval = Duration::from_secs(3600);
    d2.config.reply_poll_interval = Duration::from_millis(10);
    d2.config.reply_window = Duration::from_millis(300);
    connect(&d1, &d2).await;
    let c2 = d2.context(CrashPoints::new());
    assert_eq!(c2.receive_wait(), Duration::from_secs(3600));
    let mut sender: Sender = sender(&d1, &d2, CrashPoints::new());
    let received = || c2.counters().files_received.load(Ordering::SeqCst);
    // A first message is read at the receiver's first look; then it sleeps for an hour.
    sender
        .send(Draft::new(TYPE, payload("first")))
        .await
        .unwrap();
    drain(&mut sender).await.unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut receiver = Receiver::new(c2.clone(), Arc::clone(&d2.bucket.store));
    let task = tokio::spawn(async move { run(&mut receiver, stop, Duration::ZERO).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received() < 1 {
        assert!(std::time::Instant::now() < deadline, "the first file");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The answer to a request lands: it is read within the reply poll interval.
    sender
        .send(Draft::new(TYPE, payload("answer")))
        .await
        .unwrap();
    drain(&mut sender).await.unwrap();
    c2.expect_reply();
    assert_eq!(c2.receive_wait(), Duration::from_millis(10));
    while received() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the answer was not read"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The window (300 ms) ends: the receiver waits its hour again.
    while c2.receive_wait() != Duration::from_secs(3600) {
        assert!(
            std::time::Instant::now() < deadline,
            "the window never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}
