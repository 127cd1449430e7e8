//! Concurrent agents and a monitor reading while they publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use tern_clock::ManualClock;
use tern_monitor::{AgentKind, Agents, Figures, Monitor, Unit};

/// A unit whose figures are tied together: bytes = 3 × rows, latency = rows, one file.
fn correlated(k: u64) -> Unit {
    Unit {
        rows: k,
        bytes: 3 * k,
        files: 1,
        latency_ms: Some(k),
    }
}

fn check_correlated(f: &Figures, what: &str) {
    assert_eq!(f.bytes, 3 * f.rows, "{what}: torn read {f:?}");
    assert_eq!(f.files, f.units, "{what}: torn read {f:?}");
    assert_eq!(f.latency_count, f.units, "{what}: torn read {f:?}");
    assert_eq!(f.latency_sum_ms, f.rows, "{what}: torn read {f:?}");
}

/// Eight agents publish while the monitor ticks as fast as it can: every reading keeps
/// the invariant between correlated figures, and the sums over agents — cumulative and
/// over all intervals — are exactly what was published.
#[test]
fn counters_are_exact_and_never_torn_under_concurrent_agents() {
    const AGENTS: usize = 8;
    const UNITS: u64 = 150_000;
    let agents = Arc::new(Agents::new(AGENTS));
    let clock = ManualClock::new(0);
    let mut monitor = Monitor::new(clock.shared(), &agents);
    let stop = Arc::new(AtomicBool::new(false));
    // Observed by the writers: they publish on (past UNITS) until the monitor ticked and
    // the hammer read a few times, so the overlap is made, not left to the scheduler.
    let ticks = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    // A reader hammering single blocks besides the monitor.
    let hammer = {
        let (agents, stop, reads) = (Arc::clone(&agents), Arc::clone(&stop), Arc::clone(&reads));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (_, r) in agents.pool(AgentKind::Apply).read() {
                    check_correlated(&r.cumulative, "cumulative");
                    check_correlated(&r.current, "current interval");
                    check_correlated(&r.previous, "previous interval");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let writers: Vec<_> = (0..AGENTS)
        .map(|a| {
            let (agents, ticks, reads) =
                (Arc::clone(&agents), Arc::clone(&ticks), Arc::clone(&reads));
            thread::spawn(move || {
                // Each agent holds its block for its whole life, like a copy worker.
                let claim = agents.pool(AgentKind::Apply).claim();
                let (mut units, mut rows) = (0u64, 0u64);
                while units < UNITS
                    || ticks.load(Ordering::Relaxed) < 3
                    || reads.load(Ordering::Relaxed) < 3
                {
                    let k = (units * 7 + a as u64) % 1000 + 1;
                    claim.publish(&correlated(k));
                    units += 1;
                    rows += k;
                }
                (units, rows)
            })
        })
        .collect();
    let mut interval_units = 0;
    let mut interval_rows = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        clock.advance(std::time::Duration::from_millis(10));
        let k = monitor.tick(&agents).kind(AgentKind::Apply);
        check_correlated(&k.interval, "interval sum");
        check_correlated(&k.cumulative, "cumulative sum");
        interval_units += k.interval.units;
        interval_rows += k.interval.rows;
        ticks.fetch_add(1, Ordering::Relaxed);
    }
    let (total, rows) = writers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold((0, 0), |(u, r), (wu, wr)| (u + wu, r + wr));
    stop.store(true, Ordering::Relaxed);
    hammer.join().unwrap();
    let (ticks, reads) = (ticks.load(Ordering::Relaxed), reads.load(Ordering::Relaxed));
    let last = monitor.tick(&agents).kind(AgentKind::Apply);
    interval_units += last.interval.units;
    interval_rows += last.interval.rows;
    assert!(total >= AGENTS as u64 * UNITS);
    assert_eq!(last.cumulative.units, total);
    assert_eq!(last.cumulative.rows, rows);
    assert!((1..=AGENTS).contains(&last.agents), "{}", last.agents);
    assert_eq!(interval_units, total, "every unit in exactly one interval");
    assert_eq!(interval_rows, rows);
    assert!(ticks > 1 && reads > 0, "ticks {ticks}, reads {reads}");
}

/// Agents that claim a block per unit (apply agents: in-flight handlers) share a pool
/// smaller than their number: claims are exclusive, so the sum stays exact.
#[test]
fn shared_pool_claims_keep_sums_exact() {
    const THREADS: usize = 6;
    const UNITS: u64 = 20_000;
    let agents = Arc::new(Agents::new(3));
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            let agents = Arc::clone(&agents);
            thread::spawn(move || {
                for _ in 0..UNITS {
                    agents.pool(AgentKind::Ship).claim().publish(&correlated(2));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let readings = agents.pool(AgentKind::Ship).read();
    let mut sum = Figures::default();
    for (_, r) in &readings {
        sum.add(&r.cumulative);
    }
    assert_eq!(sum.units, THREADS as u64 * UNITS);
    assert_eq!(sum.rows, 2 * THREADS as u64 * UNITS);
    check_correlated(&sum, "sum");
}
