//! The agents' counter blocks follow what replication does (seed 000).

use tern_monitor::{AgentKind, Figures};
use tern_replication::service::Counters;

use crate::common::*;

fn sum(n: &Node, kind: AgentKind) -> Figures {
    let mut f = Figures::default();
    for (_, r) in n.repl.agents().pool(kind).read() {
        f.add(&r.cumulative);
    }
    f
}

/// Each shipped transaction is one unit in the shipper's blocks on the primary and one
/// in the apply agents' blocks on the replica, with its rows and a measured end-to-end
/// latency; the snapshot that brought the replica up is one copy and one import unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_blocks_count_every_shipped_and_applied_transaction() {
    let p = pair(repl_config()).await;
    p.d1.tables
        .insert(&p.t, &[batch(0..10, "before")])
        .await
        .unwrap();
    replicate(&p.d1, &p.a1, &p.d2, &p.account_group).await;
    caught_up(&p.d1, &p.d2, std::slice::from_ref(&p.t)).await;
    for i in 0..5 {
        let from = 100 + i * 7;
        p.d1.tables
            .insert(&p.t, &[batch(from..from + 7, "after")])
            .await
            .unwrap();
        p.d1.repl.committed();
    }
    caught_up(&p.d1, &p.d2, std::slice::from_ref(&p.t)).await;
    // The apply counter moves just after the commit that makes a version visible (CI's
    // loaded run read 4 the moment the fifth version showed).
    eventually(WAIT, "the five applies to be counted", || async {
        Counters::get(&p.d2.repl.counters().records_applied) >= 5
            && sum(&p.d2, AgentKind::Apply).units
                == Counters::get(&p.d2.repl.counters().records_applied)
    })
    .await;
    let applied = Counters::get(&p.d2.repl.counters().records_applied);
    let shipped = Counters::get(&p.d1.repl.counters().records_shipped);
    assert!(applied >= 5, "{applied}");
    let apply = sum(&p.d2, AgentKind::Apply);
    assert_eq!(apply.units, applied);
    assert_eq!(apply.errors, 0);
    assert_eq!(apply.rows, 35, "rows of the five shipped inserts");
    assert_eq!(apply.latency_count, apply.units);
    assert!(apply.files >= 5 && apply.bytes > 0, "{apply:?}");
    let ship = sum(&p.d1, AgentKind::Ship);
    assert_eq!(ship.units, shipped);
    assert_eq!(ship.rows, 35);
    assert_eq!(sum(&p.d1, AgentKind::Copy).units, 1);
    eventually(WAIT, "the import to be counted", || async {
        sum(&p.d2, AgentKind::Import).units == 1
    })
    .await;
}
