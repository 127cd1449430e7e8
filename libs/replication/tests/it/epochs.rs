//! A model of the epoch protocol driven by proptest (fixed seeds): members of a group of
//! three or five exchange heartbeats, echoes, vote requests and replies over a network that
//! delays, reorders and loses messages, while members crash, restart and get partitioned.
//! The decisions are the library's own (`judge`, `vote_decision`, `GroupDpo::lease_until`,
//! the claim rule); the model only moves messages and time. Invariant, checked at every
//! step: at most one member is a writable primary (primary role, not fenced by a newer
//! epoch it knows, alive, holding its lease).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tern_meta::DatabaseRole;
use tern_replication::failover::{Availability, GroupDpo, ReplicaAck, judge, vote_decision};
use tern_replication::model::{Claim, VoteRequest};
use tern_storage::layout::DeploymentId;

const STEP: i64 = 25;
const HEARTBEAT: i64 = 100;
const UNAVAILABLE_AFTER: i64 = 800;
const LEASE: i64 = UNAVAILABLE_AFTER / 2;

#[derive(Debug, Clone)]
enum Msg {
    Beat {
        sent_at: i64,
        role: DatabaseRole,
        epoch: u64,
        claim: Option<Claim>,
        echo: Option<i64>,
        since: Option<i64>,
    },
    Vote(VoteRequest),
    Reply {
        epoch: u64,
        granted: bool,
    },
}

#[derive(Debug, Clone)]
struct Node {
    id: DeploymentId,
    alive: bool,
    role: DatabaseRole,
    /// The epoch of its role (DatabaseDpo::epoch).
    epoch: u64,
    g: GroupDpo,
    last_heard_primary: Option<i64>,
    next_beat: i64,
    grants: BTreeMap<u64, usize>,
}

/// What the network and the faults do, drawn by proptest.
#[derive(Clone)]
struct Script {
    /// Per message: delay in steps (0..12), or lost.
    delays: Vec<Option<u8>>,
    /// Per step: a node to crash or restart (index), if any.
    faults: Vec<Option<(usize, bool)>>,
    /// Per step: a node cut off from the others (both directions) or healed.
    cuts: Vec<Option<(usize, bool)>>,
    /// Per step: a node that stands if it judges the primary unavailable.
    stand: Vec<Option<usize>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The failure message carries the trace; the script itself is too long to read.
        write!(f, "Script({} steps)", self.faults.len())
    }
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop::collection::vec(prop::option::weighted(0.9, 0u8..12), 4000),
        prop::collection::vec(
            prop::option::weighted(0.02, (0usize..5, any::<bool>())),
            400,
        ),
        prop::collection::vec(
            prop::option::weighted(0.02, (0usize..5, any::<bool>())),
            400,
        ),
        prop::collection::vec(prop::option::weighted(0.1, 0usize..5), 400),
    )
        .prop_map(|(delays, faults, cuts, stand)| Script {
            delays,
            faults,
            cuts,
            stand,
        })
}

fn run(n: usize, s: &Script) -> std::result::Result<u64, String> {
    let ids: Vec<DeploymentId> = (0..n)
        .map(|i| DeploymentId::new(format!("d{i}")).unwrap())
        .collect();
    let mut nodes: Vec<Node> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let g = GroupDpo {
                group: "g".into(),
                epoch: 1,
                primary: Some(ids[0].clone()),
                claim: Some(Claim {
                    epoch: 1,
                    primary: ids[0].clone(),
                    fork: BTreeMap::new(),
                    fork_seq: 0,
                    claimed_at_ms: 0,
                }),
                policy: Default::default(),
                primary_beat: None,
                acks: BTreeMap::new(),
                promised: 1,
                members: ids.clone(),
                since_ms: 0,
                promised_to: None,
                excluded: Vec::new(),
                handoff: None,
                rewind: None,
            };
            Node {
                id: id.clone(),
                alive: true,
                role: if i == 0 {
                    DatabaseRole::Primary
                } else {
                    DatabaseRole::Secondary
                },
                epoch: 1,
                g,
                last_heard_primary: None,
                next_beat: 0,
                grants: BTreeMap::new(),
            }
        })
        .collect();
    let mut cut = vec![false; n];
    let mut in_flight: Vec<(i64, usize, usize, Msg)> = Vec::new();
    let mut sent = 0usize;
    let mut max_epoch = 1;
    let mut trace: Vec<String> = Vec::new();
    let lease = Duration::from_millis(LEASE as u64);
    for step in 0..s.faults.len() {
        let now = step as i64 * STEP;
        let mut send = |from: usize, to: usize, m: Msg, in_flight: &mut Vec<_>, cut: &[bool]| {
            let d = s.delays[sent % s.delays.len()];
            sent += 1;
            if let (Some(d), false) = (d, cut[from] || cut[to]) {
                in_flight.push((now + i64::from(d) * STEP, from, to, m));
            }
        };
        if let Some((i, crash)) = s.faults[step] {
            let i = i % n;
            nodes[i].alive = !crash;
            trace.push(format!(
                "{now}: {} {}",
                nodes[i].id,
                if crash { "crashes" } else { "runs" }
            ));
        }
        if let Some((i, c)) = s.cuts[step] {
            cut[i % n] = c;
            trace.push(format!(
                "{now}: d{} {}",
                i % n,
                if c { "cut off" } else { "healed" }
            ));
        }
        // Deliveries due now.
        let (due, later): (Vec<_>, Vec<_>) = in_flight.drain(..).partition(|m| m.0 <= now);
        in_flight = later;
        for (_, from, to, m) in due {
            if !nodes[to].alive {
                continue;
            }
            let fid = nodes[from].id.clone();
            let node = &mut nodes[to];
            match m {
                Msg::Beat {
                    sent_at,
                    role,
                    epoch,
                    claim,
                    echo,
                    since,
                } => {
                    if let Some(c) = claim
                        && c.epoch > node.g.epoch
                    {
                        trace.push(format!(
                            "{now}: {} learns epoch {} of {} from {fid}",
                            node.id, c.epoch, c.primary
                        ));
                        // learn_claim: the role first.
                        node.g.epoch = c.epoch;
                        node.g.primary = Some(c.primary.clone());
                        node.g.promised = node.g.promised.max(c.epoch);
                        node.g.since_ms = now;
                        node.g.acks.clear();
                        node.g.primary_beat = None;
                        node.g.claim = Some(c.clone());
                        if node.role == DatabaseRole::Primary && c.primary != node.id {
                            node.role = DatabaseRole::Secondary;
                        }
                        node.epoch = c.epoch;
                        node.last_heard_primary = None;
                    }
                    if role == DatabaseRole::Primary
                        && epoch == node.g.epoch
                        && node.g.primary.as_ref() == Some(&fid)
                    {
                        node.last_heard_primary = Some(now);
                        node.g.primary_beat = Some(tern_replication::failover::PrimaryBeat {
                            sent_at_ms: sent_at,
                            seq: 0,
                            commit_at_ms: None,
                            heard_at_ms: now,
                            handoff_to: None,
                        });
                    }
                    if node.role == DatabaseRole::Primary
                        && role == DatabaseRole::Secondary
                        && epoch == node.g.epoch
                    {
                        node.g.acks.insert(
                            fid,
                            ReplicaAck {
                                seq: 0,
                                commit_at_ms: None,
                                heard_at_ms: now,
                                echo,
                                since_ms: since,
                            },
                        );
                    }
                }
                Msg::Vote(req) => {
                    let silence = now - node.last_heard_primary.unwrap_or(0).max(node.g.since_ms);
                    let granted = vote_decision(
                        &node.g,
                        node.role,
                        silence,
                        0,
                        &req,
                        &fid,
                        UNAVAILABLE_AFTER,
                    )
                    .is_ok();
                    trace.push(format!(
                        "{now}: {} {} epoch {} to {fid} (silence {silence})",
                        node.id,
                        if granted { "grants" } else { "refuses" },
                        req.epoch
                    ));
                    if granted {
                        node.g.promised = req.epoch;
                        node.g.promised_to = Some(fid.clone());
                    }
                    send(
                        to,
                        from,
                        Msg::Reply {
                            epoch: req.epoch,
                            granted,
                        },
                        &mut in_flight,
                        &cut,
                    );
                }
                Msg::Reply { epoch, granted } => {
                    if granted
                        && node.g.promised == epoch
                        && node.g.promised_to.as_ref() == Some(&node.id)
                    {
                        let c = node.grants.entry(epoch).or_insert(1);
                        *c += 1;
                        if *c == n / 2 + 1 && epoch > node.g.epoch {
                            // The claim (failover's last transaction).
                            trace.push(format!("{now}: {} claims epoch {epoch}", node.id));
                            node.role = DatabaseRole::Primary;
                            node.epoch = epoch;
                            node.g.epoch = epoch;
                            node.g.primary = Some(node.id.clone());
                            node.g.claim = Some(Claim {
                                epoch,
                                primary: node.id.clone(),
                                fork: BTreeMap::new(),
                                fork_seq: 0,
                                claimed_at_ms: now,
                            });
                            node.g.acks.clear();
                        }
                    }
                }
            }
        }
        // Candidates.
        if let Some(i) = s.stand[step] {
            let i = i % n;
            let node = &mut nodes[i];
            let silence = Some(now - node.last_heard_primary.unwrap_or(0).max(node.g.since_ms));
            let down = judge(
                silence,
                Duration::from_millis(UNAVAILABLE_AFTER as u64),
                false,
            ) == Availability::Unavailable;
            if node.alive && node.role == DatabaseRole::Secondary && down {
                let epoch = node.g.epoch.max(node.g.promised).max(node.epoch) + 1;
                trace.push(format!("{now}: {} stands for epoch {epoch}", node.id));
                node.g.promised = epoch;
                node.g.promised_to = Some(node.id.clone());
                node.grants.insert(epoch, 1);
                max_epoch = max_epoch.max(epoch);
                for j in (0..n).filter(|j| *j != i) {
                    send(
                        i,
                        j,
                        Msg::Vote(VoteRequest {
                            v: 1,
                            group: "g".into(),
                            epoch,
                            seq: 0,
                            handoff: false,
                            cancel: false,
                        }),
                        &mut in_flight,
                        &cut,
                    );
                }
            }
        }
        // Heartbeats.
        let mut beats = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            if !node.alive || node.next_beat > now {
                continue;
            }
            node.next_beat = now + HEARTBEAT;
            beats.push((
                i,
                Msg::Beat {
                    sent_at: now,
                    role: node.role,
                    epoch: if node.role == DatabaseRole::Primary {
                        node.epoch
                    } else {
                        node.g.epoch
                    },
                    claim: node.g.claim.clone(),
                    echo: match (&node.g.primary_beat, node.role) {
                        (Some(b), DatabaseRole::Secondary) if node.g.promised <= node.g.epoch => {
                            Some(b.sent_at_ms)
                        }
                        _ => None,
                    },
                    since: (node.role == DatabaseRole::Secondary
                        && node.g.promised <= node.g.epoch)
                        .then_some(node.g.since_ms),
                },
            ));
        }
        for (i, beat) in beats {
            for j in (0..n).filter(|j| *j != i) {
                send(i, j, beat.clone(), &mut in_flight, &cut);
            }
        }
        // The invariant.
        let writable: Vec<&DeploymentId> = nodes
            .iter()
            .filter(|x| {
                x.alive
                    && x.role == DatabaseRole::Primary
                    && x.epoch >= x.g.epoch
                    && x.g.lease_until(&x.id, lease).is_none_or(|u| now < u)
            })
            .map(|x| &x.id)
            .collect();
        if writable.len() > 1 {
            let state: Vec<String> = nodes
                .iter()
                .map(|x| {
                    format!(
                        "{} alive={} role={:?} epoch={} g.epoch={} promised={} lease_until={:?} acks={:?}",
                        x.id,
                        x.alive,
                        x.role,
                        x.epoch,
                        x.g.epoch,
                        x.g.promised,
                        x.g.lease_until(&x.id, lease),
                        x.g.acks.iter().map(|(k, a)| (k.to_string(), a.echo)).collect::<Vec<_>>()
                    )
                })
                .collect();
            let tail = trace.len().saturating_sub(40);
            return Err(format!(
                "n={n}: at {now} ms two writable primaries: {writable:?}\n{}\n--\n{}",
                state.join("\n"),
                trace[tail..].join("\n")
            ));
        }
    }
    Ok(max_epoch)
}

#[test]
fn at_most_one_writable_primary_under_delays_losses_crashes_and_partitions() {
    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let epochs = std::cell::Cell::new(0);
    for (n, seed) in [(3usize, [7u8; 32]), (5, [11u8; 32])] {
        let mut runner = TestRunner::new_with_rng(
            config.clone(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        runner
            .run(&script(), |s| {
                let max = run(n, &s).map_err(TestCaseError::fail)?;
                epochs.set(epochs.get().max(max));
                Ok(())
            })
            .unwrap();
    }
    // The scripts did make failovers happen (not only quiet runs).
    assert!(epochs.get() >= 3, "newest epoch reached: {}", epochs.get());
}
