//! Apply monitoring (DESIGN.md §12, seed 000): per-agent counter blocks, the monitor that
//! reads them every `monitor_interval`, and threshold alerts.
//!
//! ```text
//!  apply agents ─┐ publish(unit)        ┌──────────── monitor (every interval) ───────────┐
//!  copy workers ─┼─▶ own block (seqlock) ◀─ read all ─▶ cumulative · per interval (avg/max │
//!  shipper ──────┘   ◀── commands ────────┤             latency, throughput)              │
//!                  (interval, reset,      │  + instantaneous figures from the daemon       │
//!                   sampling)             │  → Alerts: fired/cleared once per crossing     │
//!                                         └────────────────────────────────────────────────┘
//! ```
//!
//! # Guarantees
//!
//! * An agent's publication takes no lock, sends nothing and allocates nothing: a few
//!   relaxed loads and stores on its own cache lines and one fence.
//! * A reading of a block is never torn: the figures of one unit (rows, bytes, files,
//!   latency) are in it all together or not at all ([`block`]).
//! * The sum over agents is exact: each unit is counted once, in the interval the monitor
//!   had begun when the unit's publication started.
//!
//! What the monitor does with a report (history rows, `/metrics`, notifications) is the
//! daemon's (`services/ternd/src/monitor.rs`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alerts;
pub mod block;
pub mod monitor;

pub use alerts::{Active, AlertEvent, AlertKind, Alerts, Observation, Transition};
pub use block::{AgentKind, Agents, Claim, Figures, Pool, Reading, Unit};
pub use monitor::{KindReport, Monitor, Report};
