//! The deployment's monitor (DESIGN.md §12, seed 000): one worker that, every
//! `workers.monitor_interval`, reads the agents' counter blocks (`tern_monitor`), measures
//! the instantaneous figures, and reports them.
//!
//! ```text
//!  tick ─▶ blocks: cumulative + interval (avg/max end-to-end latency, throughput)
//!       ─▶ measured: queue depths per channel (messages by peer/direction/state, from
//!          the indexes of live work) and per peer's jobs (kind/state), outbox, inbound
//!          backlog bytes per peer, lag / RPO exposure per replica,
//!          workers down, rejections in the interval
//!       ─▶ thresholds (`[monitor]`) ─▶ events fired/cleared once per crossing
//!       ─▶ reports: history row `mon/h/…` (kept `history_retention`) · events `mon/e/…`
//!          · webhook queue `mon/k/…` (retried with backoff) · log lines
//!          · the Prometheus text `/metrics` serves until the next tick
//! ```
//!
//! A scrape of `/metrics` copies the last tick's text: no scan, no listing. The figures
//! are therefore as old as `tern_monitor_snapshot_age_seconds` says (at most one
//! interval).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tern_meta::{Dpo, Key};

use tern_monitor::{Active, AgentKind, AlertEvent, AlertKind, Alerts, KindReport, Observation};

use crate::api::ApiError;
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::supervisor::{RunState, Worker, WorkerState, WorkerStatus};

/// `[monitor]`: history, thresholds and notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// How long history rows and notification events are kept.
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
    /// A queue with work that has not shrunk for this many intervals raises
    /// `queue_not_draining` (0: never).
    pub queue_stuck_intervals: u32,
    /// More rejected messages than this in one interval raises `rejections`.
    pub rejections_per_interval: u64,
    /// The lag limit of a replica whose group has no RPO (`max_data_loss`) in its policy.
    #[serde(with = "humantime_serde")]
    pub default_rpo: Duration,
    /// Notification events are POSTed here as JSON (`http://host:port/path`), retried
    /// with backoff up to `webhook_attempts` times.
    pub webhook: Option<String>,
    /// Attempts per event before the webhook gives up (logged).
    pub webhook_attempts: u32,
    /// Apply agents measure the end-to-end latency of one transaction in this many.
    pub latency_sampling: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            history_retention: Duration::from_secs(7 * 24 * 3600),
            queue_stuck_intervals: 5,
            rejections_per_interval: 10,
            default_rpo: Duration::from_secs(300),
            webhook: None,
            webhook_attempts: 10,
            latency_sampling: 1,
        }
    }
}

impl MonitorConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.history_retention.is_zero() {
            return Err(("monitor.history_retention", "must be positive".into()));
        }
        if self.default_rpo.is_zero() {
            return Err(("monitor.default_rpo", "must be positive".into()));
        }
        if self.webhook_attempts == 0 {
            return Err(("monitor.webhook_attempts", "must be at least 1".into()));
        }
        if self.latency_sampling == 0 {
            return Err(("monitor.latency_sampling", "must be at least 1".into()));
        }
        if let Some(w) = &self.webhook {
            tern_replication::failover::webhook_target(w).map_err(|e| ("monitor.webhook", e))?;
        }
        Ok(())
    }
}

/// Figures of one secondary replica at a tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaFigures {
    /// The local database.
    pub database: String,
    /// Its database group.
    pub group: String,
    /// Where it gets its changes.
    pub upstream: String,
    /// How far its data trails the primary.
    pub lag_ms: i64,
    /// The limit its group's RPO sets.
    pub rpo_ms: i64,
    /// Table versions behind.
    pub versions_behind: u64,
    /// Transactions behind the primary's last heartbeat.
    pub txns_behind: u64,
}

/// One queue of one message channel at a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelFigures {
    /// The peer at the channel's other end.
    pub peer: String,
    /// `out` (to the peer) or `in` (from it).
    pub direction: String,
    /// The state its messages wait in.
    pub state: String,
    /// How many.
    pub depth: u64,
}

impl ChannelFigures {
    /// Its name in alerts: `messages out/ReadyToSend d2`.
    pub fn subject(&self) -> String {
        format!("messages {}/{} {}", self.direction, self.state, self.peer)
    }
}

/// The replication jobs of one peer, kind and state at a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFigures {
    /// The peer that asked (snapshot) or answered (import).
    pub peer: String,
    /// `snapshot` or `import`.
    pub kind: String,
    /// `waiting`, `backing_off` or `failed`.
    pub state: String,
    /// How many.
    pub depth: u64,
}

impl JobFigures {
    /// Its name in alerts: `jobs import/waiting d1`.
    pub fn subject(&self) -> String {
        format!("jobs {}/{} {}", self.kind, self.state, self.peer)
    }
}

/// Figures of one database group held here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupFigures {
    /// The group.
    pub group: String,
    /// The local database.
    pub database: String,
    /// `primary`, `secondary` or `local`.
    pub role: String,
    /// The newest epoch known.
    pub epoch: u64,
    /// Who holds the primary.
    pub primary: Option<String>,
    /// Data a failover could lose now.
    pub rpo_exposure_ms: i64,
    /// `hub` (the primary ships to every replica) or `chain` (some replica follows
    /// another replica).
    pub topology: String,
}

/// One monitor interval, as kept in the history (`mon/h/…`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// The interval's number since the daemon started.
    pub interval: u64,
    /// When it began.
    pub from_ms: i64,
    /// When it closed.
    pub at_ms: i64,
    /// Cumulative figures count from here.
    pub since_ms: i64,
    /// Agent figures by kind (`apply`, `copy`, `import`, `ship`).
    pub agents: BTreeMap<AgentKind, KindReport>,
    /// Queue depths summed over peers: `messages in/ready`, `jobs snapshot/waiting`,
    /// `outbox`, …
    pub queues: BTreeMap<String, u64>,
    /// Each message channel's queues (per peer, direction and state).
    #[serde(default)]
    pub channels: Vec<ChannelFigures>,
    /// Replication jobs per peer, kind and state.
    #[serde(default)]
    pub jobs: Vec<JobFigures>,
    /// Bytes waiting in each peer's inbound stage here.
    pub inbound_backlog_bytes: BTreeMap<String, u64>,
    /// Secondary replicas held here.
    pub replicas: Vec<ReplicaFigures>,
    /// Database groups held here.
    pub groups: Vec<GroupFigures>,
    /// Peer deployments and their availability.
    pub peers: BTreeMap<String, String>,
    /// Workers not running.
    pub workers_down: Vec<String>,
    /// Messages rejected in the interval.
    pub rejections: u64,
    /// Alerts firing at the end of the interval.
    pub alerts: Vec<Active>,
}
impl Dpo for HistoryRow {
    const WHAT: &'static str = "monitor history row";
    const VERSION: u32 = 1;
}

/// A notification event as stored (`mon/e/…`) and POSTed to the webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// Its number (grows).
    pub seq: u64,
    /// The deployment that raised it.
    pub deployment: String,
    /// The crossing.
    #[serde(flatten)]
    pub event: AlertEvent,
}
impl Dpo for EventRow {
    const WHAT: &'static str = "monitor notification";
    const VERSION: u32 = 1;
}

/// An event waiting for the webhook (`mon/k/<seq>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookRow {
    /// The event.
    pub event: EventRow,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before (clock).
    pub next_at_ms: i64,
}
impl Dpo for HookRow {
    const WHAT: &'static str = "monitor webhook delivery";
    const VERSION: u32 = 1;
}

// Newest first: history and events are keyed by `u64::MAX - n`, so "the last N" is the
// first N of the prefix.
fn history_prefix() -> Key {
    Key::root("mon").str("h")
}
fn history_key(at_ms: i64) -> Key {
    history_prefix().u64(u64::MAX - u64::try_from(at_ms).unwrap_or(0))
}
fn events_prefix() -> Key {
    Key::root("mon").str("e")
}
fn event_key(seq: u64) -> Key {
    events_prefix().u64(u64::MAX - seq)
}
fn hooks_prefix() -> Key {
    Key::root("mon").str("k")
}

/// What the last tick published: what scrapes and the status page read.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was taken (clock).
    pub at_ms: i64,
    /// The Prometheus text.
    pub metrics: String,
    /// The interval's figures.
    pub row: HistoryRow,
    /// How long the tick took to measure and render them (what each scrape cost when
    /// `/metrics` measured on every request).
    pub took: Duration,
}

/// The monitor's shared state (in [`Daemon`]).
#[derive(Debug, Default)]
pub struct MonitorState {
    last: Mutex<Option<Arc<Snapshot>>>,
    reset: AtomicBool,
}

impl MonitorState {
    /// The last snapshot (none before the first tick).
    pub fn last(&self) -> Option<Arc<Snapshot>> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, s: Snapshot) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(s));
    }

    /// Asks the next tick to restart cumulative figures from zero.
    pub fn request_reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }
}

/// The monitor worker.
pub struct MonitorWorker {
    daemon: Weak<Daemon>,
    interval: Duration,
    status: WorkerStatus,
    monitor: Option<tern_monitor::Monitor>,
    alerts: Alerts,
    restored: bool,
    rejected_before: Option<u64>,
}

impl MonitorWorker {
    /// The monitor of `daemon`, ticking every `interval`.
    pub fn new(daemon: Weak<Daemon>, interval: Duration) -> Self {
        Self {
            daemon,
            interval,
            status: WorkerStatus::default(),
            monitor: None,
            alerts: Alerts::new(),
            restored: false,
            rejected_before: None,
        }
    }

    async fn tick(&mut self, d: &Arc<Daemon>) -> Result<()> {
        let started = std::time::Instant::now();
        let cfg = &d.config.monitor;
        let agents = d.replication.agents();
        let monitor = self.monitor.get_or_insert_with(|| {
            let m = tern_monitor::Monitor::new(d.clock(), agents);
            m.set_sampling(agents, cfg.latency_sampling);
            m
        });
        if d.monitor.reset.swap(false, Ordering::SeqCst) {
            monitor.reset(agents);
        }
        let report = monitor.tick(agents);
        let now = report.at_ms;
        if !self.restored {
            // What the last run left firing: cleared once over, not raised again.
            let last = history(d, 1)?;
            self.alerts.restore(last.into_iter().flat_map(|r| r.alerts));
            self.restored = true;
        }

        // Instantaneous figures.
        let rs = d.replication.status().await?;
        let mut queues = BTreeMap::new();
        let channels: Vec<ChannelFigures> = d
            .queue_depths()
            .await?
            .into_iter()
            .map(|q| ChannelFigures {
                peer: q.peer,
                direction: q.direction.name().into(),
                state: q.state.into(),
                depth: q.depth,
            })
            .collect();
        for c in &channels {
            *queues
                .entry(format!("messages {}/{}", c.direction, c.state))
                .or_default() += c.depth;
        }
        // Every peer's job queues, zeros included (a drained queue reads 0).
        let mut job_depths: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for p in d.member_ids()?.into_iter().filter(|p| p != d.id.as_str()) {
            for kind in ["snapshot", "import"] {
                for state in ["waiting", "backing_off", "failed"] {
                    job_depths.insert((p.clone(), kind.into(), state.into()), 0);
                }
            }
        }
        for j in &rs.jobs {
            let (kind, state) = (
                crate::api::enum_name(&j.kind),
                crate::api::enum_name(&j.state),
            );
            *queues.entry(format!("jobs {kind}/{state}")).or_default() += 1;
            *job_depths
                .entry((j.peer.to_string(), kind, state))
                .or_default() += 1;
        }
        let jobs: Vec<JobFigures> = job_depths
            .into_iter()
            .map(|((peer, kind, state), depth)| JobFigures {
                peer,
                kind,
                state,
                depth,
            })
            .collect();
        queues.insert("outbox".into(), rs.outbox);
        let mut backlog = BTreeMap::new();
        for p in &rs.peers {
            let prefix = tern_storage::Path::from(format!("from/{}/inbound", p.peer));
            let bytes: u64 = d
                .bucket()
                .list(Some(&prefix))
                .try_fold(0u64, |n, m| async move { Ok(n + m.size) })
                .await
                .unwrap_or(0);
            backlog.insert(p.peer.to_string(), bytes);
        }
        let policies: BTreeMap<&str, i64> = rs
            .groups
            .iter()
            .filter_map(|g| {
                let rpo = g.policy.max_data_loss?;
                Some((g.group.as_str(), ms(rpo)))
            })
            .collect();
        let replicas: Vec<ReplicaFigures> = rs
            .replicas
            .iter()
            .map(|r| ReplicaFigures {
                database: r.database.clone(),
                group: r.group.clone(),
                upstream: r.upstream.to_string(),
                lag_ms: r.lag_ms,
                rpo_ms: policies
                    .get(r.group.as_str())
                    .copied()
                    .unwrap_or(ms(cfg.default_rpo)),
                versions_behind: r.versions_behind,
                txns_behind: r.txns_behind,
            })
            .collect();
        let me = d.id.to_string();
        let groups = rs
            .groups
            .iter()
            .map(|g| {
                // A replica here following another replica, or a downstream of ours that
                // is a secondary shipping on: a chain; else a hub.
                let chained = rs.replicas.iter().any(|r| {
                    r.group == g.group && g.primary.as_ref().is_some_and(|p| *p != r.upstream)
                });
                GroupFigures {
                    group: g.group.clone(),
                    database: g.database.clone(),
                    role: crate::api::enum_name(&g.role),
                    epoch: g.group_epoch,
                    primary: g.primary.as_ref().map(|p| p.to_string()),
                    rpo_exposure_ms: g.rpo_exposure_ms,
                    topology: if chained { "chain" } else { "hub" }.into(),
                }
            })
            .collect();
        let peers = rs
            .peers
            .iter()
            .filter(|p| p.peer.as_str() != me)
            .map(|p| (p.peer.to_string(), p.state.name().to_string()))
            .collect();
        let workers_down: Vec<String> = if d.stopping() {
            Vec::new()
        } else {
            d.supervisor
                .reports()
                .into_iter()
                .filter(|r| matches!(r.state, RunState::Stopped | RunState::Failed))
                .map(|r| r.name)
                .collect()
        };
        let rejected_now = d.messaging.counters().rejected().values().sum::<u64>()
            + tern_replication::service::Counters::get(&d.replication.counters().rejected);
        let rejections = rejected_now
            - self
                .rejected_before
                .unwrap_or(rejected_now)
                .min(rejected_now);
        self.rejected_before = Some(rejected_now);

        // Thresholds.
        let mut obs = Vec::new();
        for r in &replicas {
            obs.push(Observation {
                kind: AlertKind::LagOverRpo,
                subject: format!("replica {}", r.database),
                value: r.lag_ms as f64 / 1000.0,
                limit: r.rpo_ms as f64 / 1000.0,
                breached: r.lag_ms > r.rpo_ms,
            });
        }
        // Queues of work watched one channel (and one peer's jobs) at a time: a peer whose
        // queue is stuck is seen even while another's drains.
        let stuck = cfg.queue_stuck_intervals;
        for c in channels.iter().filter(|c| is_pending(&c.state)) {
            obs.push(self.alerts.queue(&c.subject(), c.depth, stuck));
        }
        for j in jobs.iter().filter(|j| is_pending(&j.state)) {
            obs.push(self.alerts.queue(&j.subject(), j.depth, stuck));
        }
        obs.push(self.alerts.queue("outbox", rs.outbox, stuck));
        obs.push(Observation {
            kind: AlertKind::Rejections,
            subject: "messages".into(),
            value: rejections as f64,
            limit: cfg.rejections_per_interval as f64,
            breached: rejections > cfg.rejections_per_interval,
        });
        for w in &workers_down {
            obs.push(Observation {
                kind: AlertKind::WorkerDown,
                subject: format!("worker {w}"),
                value: 1.0,
                limit: 0.0,
                breached: true,
            });
        }
        let events = self.alerts.evaluate(now, &obs);

        let row = HistoryRow {
            interval: report.interval,
            from_ms: report.from_ms,
            at_ms: now,
            since_ms: report.since_ms,
            agents: report.kinds,
            queues,
            channels,
            jobs,
            inbound_backlog_bytes: backlog,
            replicas,
            groups,
            peers,
            workers_down,
            rejections,
            alerts: self.alerts.active(),
        };
        let retention = ms(cfg.history_retention);
        let webhook = cfg.webhook.is_some();
        let stored = d.meta.write(|tx| {
            tx.put(&history_key(now), &row)?;
            let mut stored = Vec::new();
            for e in &events {
                let seq = tx.next_sequence("mon-event")?;
                let ev = EventRow {
                    seq,
                    deployment: me.clone(),
                    event: e.clone(),
                };
                tx.put(&event_key(seq), &ev)?;
                if webhook {
                    tx.put(
                        &hooks_prefix().u64(seq),
                        &HookRow {
                            event: ev.clone(),
                            attempts: 0,
                            next_at_ms: now,
                        },
                    )?;
                }
                stored.push(ev);
            }
            prune(tx, &history_prefix(), now - retention)?;
            prune_events(tx, now - retention)?;
            Ok(stored)
        })?;
        for e in &stored {
            tracing::warn!(seq = e.seq, kind = e.event.kind.name(), subject = %e.event.subject,
                transition = ?e.event.transition, value = e.event.value, limit = e.event.limit,
                "monitor notification");
        }
        let apply = row
            .agents
            .get(&AgentKind::Apply)
            .cloned()
            .unwrap_or_default();
        tracing::info!(
            interval = row.interval,
            applied = apply.cumulative.units,
            applied_in_interval = apply.interval.units,
            apply_per_sec = apply.units_per_sec,
            latency_avg_ms = apply.latency_avg_ms,
            latency_max_ms = apply.latency_max_ms,
            queues = ?row.queues,
            max_lag_ms = row.replicas.iter().map(|r| r.lag_ms).max().unwrap_or(0),
            alerts = row.alerts.len(),
            "monitor"
        );
        let mut metrics = crate::api::render_metrics(d).await?;
        render_monitor(&mut metrics, &row, d.config.workers.monitor_interval);
        self.status.figures = vec![
            ("intervals", row.interval),
            ("applied", apply.cumulative.units),
            ("alerts", row.alerts.len() as u64),
        ];
        d.monitor.publish(Snapshot {
            at_ms: now,
            metrics,
            row,
            took: started.elapsed(),
        });
        if let Some(url) = &cfg.webhook {
            deliver(d, url, cfg.webhook_attempts).await?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for MonitorWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorWorker").finish_non_exhaustive()
    }
}

#[async_trait]
impl Worker for MonitorWorker {
    fn name(&self) -> String {
        "monitor".into()
    }
    async fn work(&mut self) -> Result<WorkerState> {
        let Some(d) = self.daemon.upgrade() else {
            return Ok(WorkerState::Idle);
        };
        self.tick(&d).await?;
        self.status.busy_units += 1;
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await;
    }
    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
}

/// Whether a queue in `state` holds work still to do, not kept records: sent messages and
/// failed messages or jobs (those wait for an operator and have their own gauges) never
/// "drain".
pub fn is_pending(state: &str) -> bool {
    !(state.ends_with("Sent") || state.ends_with("failed"))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Deletes the history rows older than `cutoff_ms` (a bounded batch per tick).
fn prune(tx: &mut tern_meta::MetaTxn<'_>, prefix: &Key, cutoff_ms: i64) -> tern_meta::Result<()> {
    if cutoff_ms <= 0 {
        return Ok(());
    }
    let start = history_key(cutoff_ms);
    let (_, end) = prefix.prefix_range();
    let old = tx.raw().scan(start.as_bytes(), &end, 1000)?;
    for (k, _) in old {
        tx.delete(&Key::from_bytes(k))?;
    }
    Ok(())
}

/// Deletes the events older than `cutoff_ms` (newest first: stop at the first young one).
fn prune_events(tx: &mut tern_meta::MetaTxn<'_>, cutoff_ms: i64) -> tern_meta::Result<()> {
    if cutoff_ms <= 0 {
        return Ok(());
    }
    // Events are rare (one per crossing): reading them all is cheap.
    for (k, e) in tx.scan_prefix::<EventRow>(&events_prefix())? {
        if e.event.at_ms < cutoff_ms {
            tx.delete(&k)?;
        }
    }
    Ok(())
}

/// POSTs the events waiting for the webhook; retries with backoff, gives up (logged)
/// after `attempts`.
async fn deliver(d: &Daemon, url: &str, attempts: u32) -> Result<()> {
    let now = d.now_ms();
    let hooks = d
        .meta
        .read(|tx| tx.scan_prefix_limit::<HookRow>(&hooks_prefix(), 100))?;
    for (k, mut h) in hooks.into_iter().filter(|(_, h)| h.next_at_ms <= now) {
        let body = serde_json::to_vec(&h.event).unwrap_or_default();
        match tern_replication::failover::post_json(url, &body).await {
            Ok(()) => d.meta.write(|tx| tx.delete(&k))?,
            Err(e) => {
                h.attempts += 1;
                if h.attempts >= attempts {
                    tracing::error!(%url, event = h.event.seq, error = %e, "monitor webhook given up");
                    d.meta.write(|tx| tx.delete(&k))?;
                } else {
                    h.next_at_ms = now + 500 * (1 << h.attempts.min(8));
                    tracing::warn!(%url, event = h.event.seq, attempt = h.attempts, error = %e, "monitor webhook failed; will retry");
                    d.meta.write(|tx| tx.put(&k, &h))?;
                }
            }
        }
    }
    Ok(())
}

/// Appends the monitor's own figures to the Prometheus text.
fn render_monitor(m: &mut String, row: &HistoryRow, interval: Duration) {
    use std::fmt::Write as _;
    let mut family = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(m, "{name}{labels} {v}");
        }
    };
    let per_kind = |f: &dyn Fn(&KindReport) -> f64| -> Vec<(String, f64)> {
        row.agents
            .iter()
            .map(|(k, r)| (format!("{{kind=\"{}\"}}", k.name()), f(r)))
            .collect()
    };
    family(
        "tern_agent_units_total",
        "Units of work since the monitor started or was reset (apply: transactions applied; ship: records shipped; copy/import: snapshots).",
        "counter",
        per_kind(&|r| r.cumulative.units as f64),
    );
    family(
        "tern_agent_rows_total",
        "Rows carried by the agents' units since start or reset.",
        "counter",
        per_kind(&|r| r.cumulative.rows as f64),
    );
    family(
        "tern_agent_bytes_total",
        "Bytes moved by the agents' units since start or reset.",
        "counter",
        per_kind(&|r| r.cumulative.bytes as f64),
    );
    family(
        "tern_agent_errors_total",
        "Failed units since start or reset.",
        "counter",
        per_kind(&|r| r.cumulative.errors as f64),
    );
    family(
        "tern_agent_units_per_second",
        "Throughput over the last monitor interval.",
        "gauge",
        per_kind(&|r| r.units_per_sec),
    );
    family(
        "tern_agent_rows_per_second",
        "Rows per second over the last monitor interval.",
        "gauge",
        per_kind(&|r| r.rows_per_sec),
    );
    family(
        "tern_agent_bytes_per_second",
        "Bytes per second over the last monitor interval.",
        "gauge",
        per_kind(&|r| r.bytes_per_sec),
    );
    family(
        "tern_agent_latency_avg_seconds",
        "Average latency over the last interval (apply: source commit to visible here).",
        "gauge",
        per_kind(&|r| r.latency_avg_ms / 1000.0),
    );
    family(
        "tern_agent_latency_max_seconds",
        "Largest latency over the last interval (apply: source commit to visible here).",
        "gauge",
        per_kind(&|r| r.latency_max_ms as f64 / 1000.0),
    );
    family(
        "tern_agents",
        "Agents (counter blocks) that published at least once.",
        "gauge",
        per_kind(&|r| r.agents as f64),
    );
    family(
        "tern_queue_depth",
        "Queue depths at the last monitor tick: messages by direction/state, jobs by kind/state, outbox (states Sent and failed are kept records, not work).",
        "gauge",
        row.queues
            .iter()
            .map(|(q, n)| (format!("{{queue=\"{}\"}}", label(q)), *n as f64))
            .collect(),
    );
    family(
        "tern_channel_queue_depth",
        "Messages waiting per channel at the last monitor tick: peer, direction (out: to the peer; in: from it) and state.",
        "gauge",
        row.channels
            .iter()
            .map(|c| {
                (
                    format!(
                        "{{peer=\"{}\",direction=\"{}\",state=\"{}\"}}",
                        label(&c.peer),
                        c.direction,
                        c.state
                    ),
                    c.depth as f64,
                )
            })
            .collect(),
    );
    family(
        "tern_job_queue_depth",
        "Replication jobs per peer (that asked for a snapshot, or answered with one to import), kind and state at the last monitor tick.",
        "gauge",
        row.jobs
            .iter()
            .map(|j| {
                (
                    format!(
                        "{{peer=\"{}\",kind=\"{}\",state=\"{}\"}}",
                        label(&j.peer),
                        j.kind,
                        j.state
                    ),
                    j.depth as f64,
                )
            })
            .collect(),
    );
    family(
        "tern_inbound_backlog_bytes",
        "Bytes waiting in each peer's inbound stage here.",
        "gauge",
        row.inbound_backlog_bytes
            .iter()
            .map(|(p, n)| (format!("{{peer=\"{}\"}}", label(p)), *n as f64))
            .collect(),
    );
    family(
        "tern_replica_rpo_seconds",
        "Per secondary replica: the lag limit (its group's RPO, or monitor.default_rpo).",
        "gauge",
        row.replicas
            .iter()
            .map(|r| {
                (
                    format!(
                        "{{database=\"{}\",group=\"{}\"}}",
                        label(&r.database),
                        label(&r.group)
                    ),
                    r.rpo_ms as f64 / 1000.0,
                )
            })
            .collect(),
    );
    family(
        "tern_alert_firing",
        "Monitor alerts firing (1 per alert).",
        "gauge",
        row.alerts
            .iter()
            .map(|a| {
                (
                    format!(
                        "{{alert=\"{}\",subject=\"{}\"}}",
                        a.kind.name(),
                        label(&a.subject)
                    ),
                    1.0,
                )
            })
            .collect(),
    );
    family(
        "tern_monitor_interval_seconds",
        "The monitor's interval.",
        "gauge",
        vec![(String::new(), interval.as_secs_f64())],
    );
    family(
        "tern_monitor_snapshot_timestamp_seconds",
        "When the figures of this page were taken.",
        "gauge",
        vec![(String::new(), row.at_ms as f64 / 1000.0)],
    );
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

type ApiResult<T = axum::Json<Value>> = std::result::Result<T, ApiError>;

/// What a scrape asks: `fresh=true` renders the figures now (the scans a tick makes) for
/// tools that need this instant's figures, not the last tick's (tests, the demo).
#[derive(Deserialize)]
pub struct MetricsQuery {
    #[serde(default)]
    fresh: bool,
}

/// `GET /metrics`: the last snapshot's text (rendered now only before the first tick, or
/// when asked `?fresh=true`).
pub async fn metrics(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<MetricsQuery>,
) -> ApiResult<Response> {
    let last = if q.fresh { None } else { d.monitor.last() };
    let text = match last {
        Some(s) => {
            let age = (d.now_ms() - s.at_ms).max(0) as f64 / 1000.0;
            let mut t = String::with_capacity(s.metrics.len() + 160);
            t.push_str(&s.metrics);
            t.push_str("# HELP tern_monitor_snapshot_age_seconds How old the figures of this page are.\n# TYPE tern_monitor_snapshot_age_seconds gauge\n");
            t.push_str(&format!("tern_monitor_snapshot_age_seconds {age}\n"));
            t.push_str("# HELP tern_monitor_tick_seconds How long the monitor's last tick took to measure and render the figures.\n# TYPE tern_monitor_tick_seconds gauge\n");
            t.push_str(&format!(
                "tern_monitor_tick_seconds {}\n",
                s.took.as_secs_f64()
            ));
            t
        }
        None => crate::api::render_metrics(&d).await?,
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[derive(Deserialize)]
struct Last {
    last: Option<usize>,
}

/// The last `n` history rows, oldest first.
pub fn history(d: &Daemon, n: usize) -> Result<Vec<HistoryRow>> {
    let mut rows: Vec<HistoryRow> = d
        .meta
        .read(|tx| tx.scan_prefix_limit::<HistoryRow>(&history_prefix(), n))?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    rows.reverse();
    Ok(rows)
}

/// The last `n` notification events, oldest first.
pub fn events(d: &Daemon, n: usize) -> Result<Vec<EventRow>> {
    let mut rows: Vec<EventRow> = d
        .meta
        .read(|tx| tx.scan_prefix_limit::<EventRow>(&events_prefix(), n))?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    rows.reverse();
    Ok(rows)
}

fn limit(q: &Last) -> Result<usize> {
    match q.last {
        None => Ok(20),
        Some(0) => Err(Error::Invalid("last must be at least 1".into())),
        Some(n) if n > 10_000 => Err(Error::Invalid(format!(
            "last={n} is too many (at most 10000)"
        ))),
        Some(n) => Ok(n),
    }
}

async fn get_history(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Query(q): Query<Last>,
) -> ApiResult<axum::Json<tern_api::MonitorHistory>> {
    crate::api::operator(&d, &headers)?;
    let n = limit(&q)?;
    let rows = history(&d, n)?
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::internal("encode monitor rows")(e.to_string()))?;
    let alerts = d
        .monitor
        .last()
        .map(|s| s.row.alerts.clone())
        .unwrap_or_default();
    Ok(axum::Json(tern_api::MonitorHistory {
        deployment: d.id.as_str().to_string(),
        interval_ms: ms(d.config.workers.monitor_interval),
        rows,
        alerts: alerts
            .into_iter()
            .map(|a| tern_api::MonitorAlert {
                kind: crate::api::enum_name(&a.kind),
                subject: a.subject,
                since_ms: a.since_ms,
                value: Some(a.value),
                limit: Some(a.limit),
            })
            .collect(),
    }))
}

async fn get_events(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Query(q): Query<Last>,
) -> ApiResult<axum::Json<tern_api::MonitorEvents>> {
    crate::api::operator(&d, &headers)?;
    let n = limit(&q)?;
    let events = events(&d, n)?
        .into_iter()
        .map(|e| tern_api::MonitorEvent {
            seq: e.seq,
            deployment: e.deployment,
            kind: crate::api::enum_name(&e.event.kind),
            subject: e.event.subject,
            transition: crate::api::enum_name(&e.event.transition),
            at_ms: e.event.at_ms,
            value: Some(e.event.value),
            limit: Some(e.event.limit),
        })
        .collect();
    Ok(axum::Json(tern_api::MonitorEvents { events }))
}

async fn reset(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<tern_api::MonitorReset>> {
    crate::api::operator(&d, &headers)?;
    d.monitor.request_reset();
    Ok(axum::Json(tern_api::MonitorReset {
        reset: "at the next monitor tick".into(),
    }))
}

/// The monitor's API routes.
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/v1/monitor", get(get_history))
        .route("/v1/monitor/events", get(get_events))
        .route("/v1/monitor/reset", post(reset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_records_are_not_queues_of_work() {
        assert!(is_pending("ready"));
        assert!(is_pending("waiting"));
        assert!(is_pending("ReadyToSend"));
        assert!(!is_pending("Sent"));
        assert!(!is_pending("failed"));
    }

    /// What the daemon keeps and answers for an interval is what `tern monitor` reads
    /// (`tern_api::MonitorRow`): a renamed field here fails this, not the operator's view.
    #[test]
    fn a_history_row_reads_as_the_clients_monitor_row() {
        let mut apply = KindReport::default();
        apply.cumulative.units = 12;
        apply.units_per_sec = 1.5;
        apply.latency_max_ms = 30;
        let row = HistoryRow {
            interval: 7,
            from_ms: 1,
            at_ms: 2,
            since_ms: 0,
            agents: BTreeMap::from([(AgentKind::Apply, apply)]),
            queues: BTreeMap::from([("outbox".to_string(), 3)]),
            channels: vec![ChannelFigures {
                peer: "d2".into(),
                direction: "out".into(),
                state: "ReadyToSend".into(),
                depth: 4,
            }],
            jobs: vec![JobFigures {
                peer: "d3".into(),
                kind: "import".into(),
                state: "failed".into(),
                depth: 1,
            }],
            inbound_backlog_bytes: BTreeMap::new(),
            replicas: vec![ReplicaFigures {
                database: "r".into(),
                group: "g".into(),
                upstream: "d1".into(),
                lag_ms: 1500,
                rpo_ms: 0,
                versions_behind: 0,
                txns_behind: 0,
            }],
            groups: Vec::new(),
            peers: BTreeMap::new(),
            workers_down: Vec::new(),
            rejections: 0,
            alerts: Vec::new(),
        };
        let seen: tern_api::MonitorRow =
            serde_json::from_value(serde_json::to_value(&row).unwrap()).expect("a monitor row");
        assert_eq!((seen.interval, seen.at_ms), (7, 2));
        let a = &seen.agents["apply"];
        assert_eq!(
            (a.cumulative.units, a.units_per_sec, a.latency_max_ms),
            (12, 1.5, 30)
        );
        assert_eq!(seen.queues["outbox"], 3);
        assert_eq!(
            (seen.channels[0].peer.as_str(), seen.channels[0].depth),
            ("d2", 4)
        );
        assert_eq!(
            (seen.jobs[0].kind.as_str(), seen.jobs[0].state.as_str()),
            ("import", "failed")
        );
        assert_eq!(
            (seen.replicas[0].database.as_str(), seen.replicas[0].lag_ms),
            ("r", 1500)
        );
    }

    #[test]
    fn history_keys_sort_newest_first() {
        assert!(history_key(2_000).as_bytes() < history_key(1_000).as_bytes());
        assert!(event_key(9).as_bytes() < event_key(3).as_bytes());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = MonitorConfig {
            webhook: Some("https://x/y".into()),
            ..MonitorConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "monitor.webhook");
        let bad = MonitorConfig {
            latency_sampling: 0,
            ..MonitorConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "monitor.latency_sampling");
        assert!(MonitorConfig::default().validate().is_ok());
    }
}
