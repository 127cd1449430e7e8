//! What replication's agents publish to their counter blocks (DESIGN.md §12, seed 000).
//!
//! | agent | pool | one unit | latency |
//! |---|---|---|---|
//! | apply agent (log handler) | `apply` | a shipped transaction committed here | source commit → visible here |
//! | shipper | `ship` | a log record sent to one replica | source commit → sent |
//! | copier | `copy` | a snapshot response sent | request received → response sent |
//! | importer | `import` | a snapshot imported | response received → imported |
//!
//! The blocks are the daemon monitor's to read ([`Replication::agents`]); publishing is a
//! few stores on the agent's own cache lines (see `tern_monitor::block`).

use tern_monitor::{AgentKind, Agents, Unit};
use tern_table::commit::ChangeRecord;

use crate::service::Replication;

impl Replication {
    /// The counter blocks of this deployment's agents.
    pub fn agents(&self) -> &Agents {
        &self.inner.agents
    }

    /// Publishes one unit of `kind` (in a block only this call writes meanwhile).
    pub(crate) fn publish(&self, kind: AgentKind, unit: Unit) {
        if !self.inner.agents.enabled() {
            return;
        }
        self.inner.agents.pool(kind).claim().publish(&unit);
    }

    /// Publishes one failed unit of `kind`.
    pub(crate) fn publish_error(&self, kind: AgentKind) {
        if !self.inner.agents.enabled() {
            return;
        }
        self.inner
            .agents
            .pool(kind)
            .claim()
            .publish_error(&Unit::default());
    }

    /// Milliseconds from `since_ms` (clock) to now; never negative (clocks of two
    /// deployments may disagree a little).
    pub(crate) fn elapsed_ms(&self, since_ms: i64) -> Option<u64> {
        Some(u64::try_from(self.now() - since_ms).unwrap_or(0))
    }
}

/// Rows and files a log record adds.
pub(crate) fn added(changes: &[ChangeRecord]) -> (u64, u64) {
    let mut rows = 0;
    let mut files = 0;
    for c in changes {
        if let ChangeRecord::TableVersion { added, .. } = c {
            files += added.len() as u64;
            rows += added.iter().map(|m| m.rows).sum::<u64>();
        }
    }
    (rows, files)
}
