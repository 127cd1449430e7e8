//! Threshold crossings → notification events, once per crossing.
//!
//! ```text
//!            breached                 not breached (or no longer observed)
//!  clear ────────────▶ firing ─────────────────────────────────────────▶ clear
//!          event "fired"            event "cleared"
//! ```
//!
//! Each tick the daemon hands [`Alerts::evaluate`] one [`Observation`] per thing watched
//! (a replica's lag against its group's RPO, a queue, the rejections of the interval, a
//! worker). A condition that stays breached raises nothing more; one that is no longer
//! observed (a dropped replica, a worker that went away) clears.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A replica's lag is over its group's RPO.
    LagOverRpo,
    /// A queue has work and has not shrunk for N intervals.
    QueueNotDraining,
    /// Rejected messages in one interval over the limit.
    Rejections,
    /// A worker stopped or failed.
    WorkerDown,
}

impl AlertKind {
    /// Its name in events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::LagOverRpo => "lag_over_rpo",
            AlertKind::QueueNotDraining => "queue_not_draining",
            AlertKind::Rejections => "rejections",
            AlertKind::WorkerDown => "worker_down",
        }
    }
}

/// One watched thing at one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// What kind of threshold.
    pub kind: AlertKind,
    /// Which one (`replica d2/sales`, `queue in/waiting`, `worker shipper`).
    pub subject: String,
    /// Its value now.
    pub value: f64,
    /// The threshold.
    pub limit: f64,
    /// Whether the threshold is crossed.
    pub breached: bool,
}

/// Fired or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// The threshold was crossed.
    Fired,
    /// It is back under.
    Cleared,
}

/// A notification event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// What kind of threshold.
    pub kind: AlertKind,
    /// Which one.
    pub subject: String,
    /// Fired or cleared.
    pub transition: Transition,
    /// When (clock).
    pub at_ms: i64,
    /// The value that crossed (or the last one seen, when cleared).
    pub value: f64,
    /// The threshold.
    pub limit: f64,
}

/// An alert currently firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    /// What kind of threshold.
    pub kind: AlertKind,
    /// Which one.
    pub subject: String,
    /// Since when.
    pub since_ms: i64,
    /// The last value seen.
    pub value: f64,
    /// The threshold.
    pub limit: f64,
}

/// The firing alerts, and how long each queue has not drained.
#[derive(Debug, Default, Clone)]
pub struct Alerts {
    active: BTreeMap<(AlertKind, String), Active>,
    queues: BTreeMap<String, (u64, u32)>,
}

impl Alerts {
    /// None firing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Alerts firing now.
    pub fn active(&self) -> Vec<Active> {
        self.active.values().cloned().collect()
    }

    /// Takes up the alerts a previous run left firing (its last history row), so that a
    /// restarted monitor clears them once their condition is over instead of leaving
    /// "fired" without an end, and raises nothing again for one still breached. A queue
    /// alert keeps counting as stuck from the depth it had.
    pub fn restore(&mut self, firing: impl IntoIterator<Item = Active>) {
        for a in firing {
            if a.kind == AlertKind::QueueNotDraining {
                let intervals = a.limit.max(0.0) as u32;
                self.queues
                    .insert(a.subject.clone(), (a.value.max(0.0) as u64, intervals));
            }
            self.active.insert((a.kind, a.subject.clone()), a);
        }
    }

    /// Feeds a queue's depth at this tick; the observation says whether it has had work
    /// without shrinking for `intervals` ticks in a row.
    pub fn queue(&mut self, queue: &str, depth: u64, intervals: u32) -> Observation {
        let e = self.queues.entry(queue.to_string()).or_insert((0, 0));
        let stuck = if depth > 0 && depth >= e.0 {
            e.1 + 1
        } else {
            0
        };
        *e = (depth, stuck);
        Observation {
            kind: AlertKind::QueueNotDraining,
            subject: queue.to_string(),
            value: depth as f64,
            limit: f64::from(intervals),
            breached: intervals > 0 && stuck >= intervals,
        }
    }

    /// Compares `observations` with the alerts firing: one event per crossing either way.
    pub fn evaluate(&mut self, now_ms: i64, observations: &[Observation]) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for o in observations {
            let key = (o.kind, o.subject.clone());
            seen.insert(key.clone());
            match (o.breached, self.active.get_mut(&key)) {
                (true, Some(a)) => a.value = o.value,
                (true, None) => {
                    events.push(AlertEvent {
                        kind: o.kind,
                        subject: o.subject.clone(),
                        transition: Transition::Fired,
                        at_ms: now_ms,
                        value: o.value,
                        limit: o.limit,
                    });
                    self.active.insert(
                        key,
                        Active {
                            kind: o.kind,
                            subject: o.subject.clone(),
                            since_ms: now_ms,
                            value: o.value,
                            limit: o.limit,
                        },
                    );
                }
                (false, Some(_)) => {
                    self.active.remove(&key);
                    events.push(AlertEvent {
                        kind: o.kind,
                        subject: o.subject.clone(),
                        transition: Transition::Cleared,
                        at_ms: now_ms,
                        value: o.value,
                        limit: o.limit,
                    });
                }
                (false, None) => {}
            }
        }
        let gone: Vec<_> = self
            .active
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(a) = self.active.remove(&k) {
                events.push(AlertEvent {
                    kind: a.kind,
                    subject: a.subject,
                    transition: Transition::Cleared,
                    at_ms: now_ms,
                    value: a.value,
                    limit: a.limit,
                });
            }
        }
        self.queues.retain(|q, _| {
            observations
                .iter()
                .any(|o| o.kind == AlertKind::QueueNotDraining && &o.subject == q)
        });
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(v: f64) -> Observation {
        Observation {
            kind: AlertKind::LagOverRpo,
            subject: "replica d2/sales".into(),
            value: v,
            limit: 30.0,
            breached: v > 30.0,
        }
    }

    fn transitions(e: &[AlertEvent]) -> Vec<(AlertKind, Transition)> {
        e.iter().map(|e| (e.kind, e.transition)).collect()
    }

    #[test]
    fn a_threshold_fires_once_per_crossing_and_clears() {
        let mut a = Alerts::new();
        assert!(a.evaluate(1, &[lag(10.0)]).is_empty());
        let e = a.evaluate(2, &[lag(31.0)]);
        assert_eq!(
            transitions(&e),
            [(AlertKind::LagOverRpo, Transition::Fired)]
        );
        assert_eq!((e[0].value, e[0].limit, e[0].at_ms), (31.0, 30.0, 2));
        // Still over: nothing more, the value is followed.
        assert!(a.evaluate(3, &[lag(90.0)]).is_empty());
        assert_eq!(a.active()[0].value, 90.0);
        assert_eq!(a.active()[0].since_ms, 2);
        let e = a.evaluate(4, &[lag(3.0)]);
        assert_eq!(
            transitions(&e),
            [(AlertKind::LagOverRpo, Transition::Cleared)]
        );
        assert!(a.active().is_empty());
        assert!(a.evaluate(5, &[lag(3.0)]).is_empty());
        // A second crossing is a second event.
        assert_eq!(a.evaluate(6, &[lag(40.0)]).len(), 1);
        // No longer observed (the replica was dropped): cleared.
        let e = a.evaluate(7, &[]);
        assert_eq!(
            transitions(&e),
            [(AlertKind::LagOverRpo, Transition::Cleared)]
        );
    }

    #[test]
    fn restored_alerts_clear_once_over_and_stay_quiet_while_breached() {
        let mut before = Alerts::new();
        before.evaluate(1, &[lag(40.0)]);
        let o = before.queue("out/ReadyToSend d2", 7, 1);
        before.evaluate(2, &[lag(40.0), o]);
        assert_eq!(before.active().len(), 2);
        let mut after = Alerts::new();
        after.restore(before.active());
        // Still over and still stuck: nothing new.
        let o = after.queue("out/ReadyToSend d2", 7, 1);
        assert!(after.evaluate(3, &[lag(41.0), o]).is_empty());
        // Over: one clear each (the worker that was down is no longer observed at all).
        let o = after.queue("out/ReadyToSend d2", 0, 1);
        let e = after.evaluate(4, &[lag(1.0), o]);
        assert_eq!(
            transitions(&e),
            [
                (AlertKind::LagOverRpo, Transition::Cleared),
                (AlertKind::QueueNotDraining, Transition::Cleared)
            ]
        );
    }

    #[test]
    fn a_queue_fires_after_n_intervals_without_draining() {
        let mut a = Alerts::new();
        let tick = |a: &mut Alerts, t: i64, depth: u64| {
            let o = a.queue("in/waiting", depth, 3);
            a.evaluate(t, &[o])
        };
        assert!(tick(&mut a, 1, 5).is_empty());
        assert!(tick(&mut a, 2, 5).is_empty());
        let e = tick(&mut a, 3, 6);
        assert_eq!(
            transitions(&e),
            [(AlertKind::QueueNotDraining, Transition::Fired)]
        );
        assert!(tick(&mut a, 4, 6).is_empty());
        // Shrinking is draining.
        let e = tick(&mut a, 5, 4);
        assert_eq!(
            transitions(&e),
            [(AlertKind::QueueNotDraining, Transition::Cleared)]
        );
        // An empty queue never fires.
        for t in 6..12 {
            assert!(tick(&mut a, t, 0).is_empty());
        }
    }
}
