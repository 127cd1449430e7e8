//! Retry and fault-injection wrappers, on both backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tern_storage::fault::is_injected;
use tern_storage::{
    Error, Fault, FaultPlan, FaultRule, FaultStore, Operation, Path, RetryPolicy, RetryStore,
    StoreExt,
};

use crate::backends::{self, Backend};

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

/// `(faulty store, retrying store over it, plan)` over a backend.
fn stack(b: &Backend) -> (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>, FaultPlan) {
    let plan = FaultPlan::new();
    let faulty: Arc<dyn ObjectStore> =
        Arc::new(FaultStore::new(Arc::clone(&b.store), plan.clone()));
    let retrying: Arc<dyn ObjectStore> = Arc::new(RetryStore::new(Arc::clone(&faulty), fast()));
    (faulty, retrying, plan)
}

pub async fn scenario(b: &Backend) {
    let name = b.name;
    let (faulty, retrying, plan) = stack(b);

    // Transient failures are retried until the call succeeds.
    let p = Path::from("w/retried");
    let rule = plan.arm(FaultRule::on(Operation::Put).under("w").times(2));
    retrying
        .put_new(&p, Bytes::from_static(b"v1").into())
        .await
        .expect("retried put");
    assert_eq!(plan.fired(rule), 2, "{name}");
    assert_eq!(
        plan.calls_under(Operation::Put, &p),
        3,
        "{name}: two failures then success"
    );

    // Definite answers are not retried.
    plan.reset_counts();
    match retrying.put_new(&p, Bytes::from_static(b"v2").into()).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("{name}: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        plan.calls(Operation::Put),
        1,
        "{name}: no retry of a definite answer"
    );

    // Retries run out: the last transient error comes back, typed and recognisable.
    let q = Path::from("w/never");
    plan.arm(FaultRule::on(Operation::Put).under(q.clone()).always());
    plan.reset_counts();
    match retrying.put_new(&q, Bytes::from_static(b"x").into()).await {
        Err(e @ Error::Storage { .. }) => {
            assert!(e.is_transient(), "{name}");
            assert!(is_injected(&e), "{name}: {e}");
            assert!(
                e.to_string().contains("w/never"),
                "{name}: error names the path: {e}"
            );
        }
        other => panic!("{name}: expected a storage error, got {other:?}"),
    }
    assert_eq!(
        plan.calls(Operation::Put),
        4,
        "{name}: 1 + max_retries attempts"
    );
    assert!(
        matches!(retrying.read_all(&q).await, Err(Error::NotFound { .. })),
        "{name}: nothing written"
    );

    // An inconclusive create (it happened, then reported failure) is recognised as ours.
    let r = Path::from("w/inconclusive");
    plan.arm(
        FaultRule::on(Operation::Put)
            .under(r.clone())
            .fault(Fault::FailAfterEffect),
    );
    retrying
        .put_new(&r, Bytes::from_static(b"mine").into())
        .await
        .expect("inconclusive create resolved");
    assert_eq!(retrying.read_all(&r).await.expect("get"), "mine");

    // …but someone else's object is never mistaken for ours.
    let t = Path::from("w/theirs");
    b.store
        .put_new(&t, Bytes::from_static(b"theirs").into())
        .await
        .expect("their create");
    plan.arm(
        FaultRule::on(Operation::Put)
            .under(t.clone())
            .fault(Fault::Fail),
    );
    match retrying
        .put_new(&t, Bytes::from_static(b"mine").into())
        .await
    {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("{name}: expected AlreadyExists for a foreign object, got {other:?}"),
    }
    assert_eq!(retrying.read_all(&t).await.expect("get"), "theirs");

    // An inconclusive delete: the retry finds nothing, which is success.
    plan.arm(
        FaultRule::on(Operation::Delete)
            .under(r.clone())
            .fault(Fault::FailAfterEffect),
    );
    retrying
        .delete_idempotent(&r)
        .await
        .expect("inconclusive delete resolved");
    assert!(matches!(
        retrying.read_all(&r).await,
        Err(Error::NotFound { .. })
    ));

    // Without the retry layer, the fault store's failures surface as they are.
    let u = Path::from("w/plain");
    plan.arm(
        FaultRule::on(Operation::Put)
            .under(u.clone())
            .fault(Fault::FailAfterEffect),
    );
    let e = faulty
        .put_new(&u, Bytes::from_static(b"x").into())
        .await
        .expect_err("injected");
    assert!(is_injected(&e) && e.is_transient(), "{name}: {e}");
    assert_eq!(faulty.read_all(&u).await.expect("it took effect"), "x");
    plan.arm(FaultRule::on(Operation::Get).under(u.clone()).nth(2));
    faulty.read_all(&u).await.expect("first get passes");
    assert!(
        faulty.read_all(&u).await.is_err(),
        "{name}: second get fails"
    );
    faulty.read_all(&u).await.expect("third get passes");

    // Listing faults and added latency.
    plan.arm(FaultRule::on(Operation::List).under("w"));
    assert!(
        faulty.list_sorted(&Path::from("w")).await.is_err(),
        "{name}: list fault"
    );
    plan.arm(FaultRule::on(Operation::Head).fault(Fault::Delay(Duration::from_millis(80))));
    let started = Instant::now();
    faulty.meta(&u).await.expect("delayed head");
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "{name}: latency injected"
    );

    // Multipart: a failed completion leaves nothing; an inconclusive one leaves the object.
    for (fault, expect_object) in [(Fault::Fail, false), (Fault::FailAfterEffect, true)] {
        let m = Path::from(format!("w/multipart-{expect_object}"));
        plan.arm(
            FaultRule::on(Operation::PutMultipart)
                .under(m.clone())
                .fault(fault),
        );
        let mut w = WriteMultipart::new_with_chunk_size(
            faulty.put_multipart(&m).await.expect("start"),
            5 << 20,
        );
        w.write(&vec![9u8; 6 << 20]);
        assert!(w.finish().await.is_err(), "{name}: {fault:?}");
        let exists = faulty.meta(&m).await.is_ok();
        assert_eq!(exists, expect_object, "{name}: {fault:?}");
    }

    // Counting: reads of one prefix are visible per path.
    plan.disarm_all();
    plan.reset_counts();
    faulty.read_all(&u).await.expect("get");
    faulty.read_all(&t).await.expect("get");
    assert_eq!(
        plan.calls_under(Operation::Get, &Path::from("w/plain")),
        1,
        "{name}"
    );
    assert_eq!(
        plan.calls_under(Operation::Get, &Path::from("w")),
        2,
        "{name}"
    );
    assert_eq!(
        plan.calls_under(Operation::Get, &Path::from("w/pl")),
        0,
        "{name}: segment match"
    );

    b.store
        .delete_prefix(&Path::from("w"))
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn wrappers_folder() {
    scenario(&backends::folder()).await;
}

#[tokio::test]
async fn wrappers_localstack() {
    scenario(&backends::localstack("wrappers").await).await;
}

#[test]
fn backoff_grows_and_is_bounded() {
    let p = RetryPolicy {
        max_retries: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
    };
    for _ in 0..100 {
        let d1 = p.backoff(1);
        assert!(
            d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
            "{d1:?}"
        );
        let d3 = p.backoff(3);
        assert!(
            d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
            "{d3:?}"
        );
        assert!(p.backoff(30) <= Duration::from_secs(1));
    }
}
