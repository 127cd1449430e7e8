//! The monitor: reads every block once per `monitor_interval` and derives the seed's
//! figures.
//!
//! ```text
//!  tick k (clock: t_k)
//!   1. command: interval k+1 begins      (Agents::begin_interval)
//!   2. read every block                  (consistent readings, see crate::block)
//!   3. cumulative = Σ readings' cumulative figures (0 for a block that has not applied
//!      the last reset: nothing was published there since)
//!      interval k = Σ readings' figures of interval k; throughput = interval / (t_k − t_{k−1})
//! ```
//!
//! Instantaneous figures (queue depths, backlog, lag) are not in blocks: the daemon
//! measures them at the tick and hands them to the report (see the daemon's monitor).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_clock::SharedClock;

use crate::block::{AgentKind, Agents, Figures};

/// One kind's figures at a tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    /// Blocks of this kind ever used.
    pub agents: usize,
    /// Since the monitor started or was reset.
    pub cumulative: Figures,
    /// The interval that just closed.
    pub interval: Figures,
    /// Units per second over the interval.
    pub units_per_sec: f64,
    /// Rows per second over the interval.
    pub rows_per_sec: f64,
    /// Bytes per second over the interval.
    pub bytes_per_sec: f64,
    /// Average measured latency over the interval (apply: source commit → visible here).
    pub latency_avg_ms: f64,
    /// Largest measured latency over the interval.
    pub latency_max_ms: u64,
}

/// What one tick derives from the blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The interval's number (1, 2, …).
    pub interval: u64,
    /// When it began (clock).
    pub from_ms: i64,
    /// When it closed (clock).
    pub at_ms: i64,
    /// Cumulative figures start here (monitor start or the last reset).
    pub since_ms: i64,
    /// By kind of agent (`apply`, `copy`, `import`, `ship`).
    pub kinds: BTreeMap<AgentKind, KindReport>,
}

impl Report {
    /// The figures of `kind` (zeros when none).
    pub fn kind(&self, kind: AgentKind) -> KindReport {
        self.kinds.get(&kind).cloned().unwrap_or_default()
    }
}

/// The monitor's state between ticks.
#[derive(Debug)]
pub struct Monitor {
    clock: SharedClock,
    interval: u64,
    from_ms: i64,
    since_ms: i64,
    reset_asked: u64,
}

impl Monitor {
    /// A monitor of `agents`; interval 1 begins now.
    pub fn new(clock: SharedClock, agents: &Agents) -> Self {
        let now = clock.now_millis();
        agents.begin_interval(1);
        Self {
            clock,
            interval: 1,
            from_ms: now,
            since_ms: now,
            reset_asked: agents.resets(),
        }
    }

    /// The interval in progress.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// Command to the agents: cumulative figures restart from zero now.
    pub fn reset(&mut self, agents: &Agents) {
        self.reset_asked = agents.reset();
        self.since_ms = self.clock.now_millis();
    }

    /// Command to the agents: measure one unit's latency in `every`.
    pub fn set_sampling(&self, agents: &Agents, every: u64) {
        agents.set_sampling(every);
    }

    /// Closes the interval in progress and reports it.
    pub fn tick(&mut self, agents: &Agents) -> Report {
        let now = self.clock.now_millis();
        let closing = self.interval;
        self.interval += 1;
        agents.begin_interval(self.interval);
        let secs = ((now - self.from_ms).max(1)) as f64 / 1000.0;
        let mut kinds = BTreeMap::new();
        for pool in agents.pools() {
            let mut k = KindReport::default();
            for (_, r) in pool.read() {
                k.agents += 1;
                if r.reset_ack == self.reset_asked {
                    k.cumulative.add(&r.cumulative);
                }
                k.interval.add(&r.interval(closing));
            }
            k.units_per_sec = k.interval.units as f64 / secs;
            k.rows_per_sec = k.interval.rows as f64 / secs;
            k.bytes_per_sec = k.interval.bytes as f64 / secs;
            k.latency_avg_ms = k.interval.latency_avg_ms();
            k.latency_max_ms = k.interval.latency_max_ms;
            kinds.insert(pool.kind(), k);
        }
        let report = Report {
            interval: closing,
            from_ms: self.from_ms,
            at_ms: now,
            since_ms: self.since_ms,
            kinds,
        };
        self.from_ms = now;
        report
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tern_clock::ManualClock;

    use super::*;
    use crate::block::Unit;

    fn txn(rows: u64, latency: u64) -> Unit {
        Unit {
            rows,
            bytes: rows * 10,
            files: 1,
            latency_ms: Some(latency),
        }
    }

    /// Interval figures follow the injected clock: averages, maxima and rates of each
    /// interval are of its units only; cumulative ones keep growing.
    #[test]
    fn interval_figures_against_a_manual_clock() {
        let clock = ManualClock::new(1_000_000);
        let agents = Agents::new(4);
        let mut m = Monitor::new(clock.shared(), &agents);
        let apply = agents.pool(AgentKind::Apply);
        let (a, b) = (apply.claim(), apply.claim());
        a.publish(&txn(100, 40));
        b.publish(&txn(300, 200));
        a.publish(&txn(200, 60));
        clock.advance(Duration::from_secs(2));
        let r1 = m.tick(&agents);
        let k = r1.kind(AgentKind::Apply);
        assert_eq!(
            (r1.interval, r1.from_ms, r1.at_ms),
            (1, 1_000_000, 1_002_000)
        );
        assert_eq!(k.agents, 2);
        assert_eq!(k.interval.units, 3);
        assert_eq!(k.interval.rows, 600);
        assert_eq!(k.latency_max_ms, 200);
        assert_eq!(k.latency_avg_ms, 100.0);
        assert_eq!(k.units_per_sec, 1.5);
        assert_eq!(k.rows_per_sec, 300.0);
        assert_eq!(k.bytes_per_sec, 3000.0);

        // Interval 2: one slow agent only; the other's earlier maximum does not leak in.
        a.publish(&txn(10, 5));
        clock.advance(Duration::from_millis(500));
        let r2 = m.tick(&agents);
        let k = r2.kind(AgentKind::Apply);
        assert_eq!((k.interval.units, k.latency_max_ms), (1, 5));
        assert_eq!(k.latency_avg_ms, 5.0);
        assert_eq!(k.units_per_sec, 2.0);
        assert_eq!(k.cumulative.units, 4);
        assert_eq!(k.cumulative.rows, 610);
        assert_eq!(k.cumulative.latency_max_ms, 200);

        // Interval 3: nothing happened.
        clock.advance(Duration::from_secs(1));
        let r3 = m.tick(&agents);
        let k = r3.kind(AgentKind::Apply);
        assert_eq!(k.interval, Figures::default());
        assert_eq!((k.units_per_sec, k.latency_avg_ms), (0.0, 0.0));
        assert_eq!(k.cumulative.units, 4);

        // A reset: cumulative figures restart at once (idle agents too), intervals go on.
        clock.advance(Duration::from_secs(1));
        m.reset(&agents);
        let r4 = m.tick(&agents);
        assert_eq!(r4.since_ms, 1_004_500);
        assert_eq!(r4.kind(AgentKind::Apply).cumulative, Figures::default());
        b.publish(&txn(7, 1));
        clock.advance(Duration::from_secs(1));
        let k = m.tick(&agents).kind(AgentKind::Apply);
        assert_eq!((k.cumulative.units, k.cumulative.rows), (1, 7));
        assert_eq!(k.interval.units, 1);
    }
}
