//! `/metrics`: the Prometheus text of every figure (the monitor renders it once per
//! interval, see [`crate::monitor`]).

use super::*;

/// The Prometheus text of every figure `/metrics` serves, measured now (scans the metadata
/// store: the monitor runs it once per `monitor_interval` and scrapes get its last
/// result, see [`crate::monitor`]).
pub(crate) async fn render_metrics(d: &Daemon) -> Result<String> {
    let mut m = String::new();
    let stats = d.txn.phase_stats();
    let mut counter = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(m, "{name}{labels} {v}");
        }
    };
    counter(
        "tern_commits_total",
        "Commits through the commit protocol.",
        "counter",
        vec![(String::new(), stats.commits as f64)],
    );
    counter(
        "tern_commit_phase_seconds_total",
        "Time commits spent per phase.",
        "counter",
        [
            ("locks", stats.locks),
            ("prepare", stats.prepare),
            ("log_write", stats.log_write),
            ("publish", stats.publish),
        ]
        .into_iter()
        .map(|(p, t)| (format!("{{phase=\"{p}\"}}"), t.as_secs_f64()))
        .collect(),
    );
    let c = &d.counters;
    counter(
        "tern_api_requests_total",
        "HTTP requests served.",
        "counter",
        vec![(String::new(), c.requests.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_api_errors_total",
        "Refused or failed requests by kind.",
        "counter",
        c.errors
            .lock()
            .map(|e| {
                e.iter()
                    .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v as f64))
                    .collect()
            })
            .unwrap_or_default(),
    );
    counter(
        "tern_rows_inserted_total",
        "Rows inserted or loaded.",
        "counter",
        vec![(
            String::new(),
            c.rows_inserted.load(Ordering::Relaxed) as f64,
        )],
    );
    counter(
        "tern_rows_changed_total",
        "Rows deleted, updated or merged.",
        "counter",
        vec![(String::new(), c.rows_changed.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_rows_scanned_total",
        "Rows returned by scans.",
        "counter",
        vec![(String::new(), c.rows_scanned.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_load_bytes_total",
        "Request bytes accepted by inserts and loads.",
        "counter",
        vec![(String::new(), c.bytes_loaded.load(Ordering::Relaxed) as f64)],
    );
    counter(
        "tern_commits_in_doubt_total",
        "Commits reported in doubt (completed by recovery).",
        "counter",
        vec![(String::new(), c.in_doubt.load(Ordering::Relaxed) as f64)],
    );
    let mc = d.messaging.counters();
    use tern_messaging::Counters as C;
    counter(
        "tern_messaging_total",
        "Message service events.",
        "counter",
        [
            ("files_written", C::get(&mc.files_written)),
            ("messages_sent", C::get(&mc.messages_sent)),
            ("files_received", C::get(&mc.files_received)),
            ("messages_received", C::get(&mc.messages_received)),
            ("duplicates", C::get(&mc.duplicates)),
            ("handled", C::get(&mc.handled)),
            ("handler_failures", C::get(&mc.handler_failures)),
            ("cleaned", C::get(&mc.cleaned)),
            ("objects_deleted", C::get(&mc.objects_deleted)),
            ("resyncs", C::get(&mc.resyncs)),
            ("resent", C::get(&mc.resent)),
            ("resend_gaps", C::get(&mc.resend_gaps)),
        ]
        .into_iter()
        .map(|(e, v)| (format!("{{event=\"{e}\"}}"), v as f64))
        .collect(),
    );
    counter(
        "tern_message_rejections_total",
        "Message files or messages rejected, by reason.",
        "counter",
        mc.rejected()
            .into_iter()
            .map(|(r, v)| (format!("{{reason=\"{r:?}\"}}"), v as f64))
            .collect(),
    );
    counter(
        "tern_messages",
        "Messages in the metadata store by direction/state.",
        "gauge",
        d.message_states()
            .await?
            .into_iter()
            .map(|(s, v)| {
                let (dir, state) = s.split_once('/').unwrap_or(("", &s));
                (
                    format!("{{direction=\"{dir}\",state=\"{state}\"}}"),
                    v as f64,
                )
            })
            .collect(),
    );
    counter(
        "tern_transactions_unfinished",
        "Transactions not committed or aborted, by state.",
        "gauge",
        d.unfinished_transactions()?
            .into_iter()
            .map(|(s, v)| (format!("{{state=\"{s}\"}}"), v as f64))
            .collect(),
    );
    let reports = d.supervisor.reports();
    counter(
        "tern_worker_up",
        "1 when the worker runs (running, idle or backing off).",
        "gauge",
        reports
            .iter()
            .map(|r| {
                let up = !matches!(
                    r.state,
                    crate::supervisor::RunState::Stopped | crate::supervisor::RunState::Failed
                );
                (
                    format!("{{worker=\"{}\"}}", r.name),
                    if up { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    );
    counter(
        "tern_worker_errors_total",
        "Failed units of work per worker.",
        "counter",
        reports
            .iter()
            .map(|r| (format!("{{worker=\"{}\"}}", r.name), r.errors as f64))
            .collect(),
    );
    let rs = d.replication.status().await?;
    for (name, v) in &rs.counters {
        counter(
            &format!("tern_replication_{name}_total"),
            "Replication events since start (from `show replication status`).",
            "counter",
            vec![(String::new(), *v as f64)],
        );
    }
    counter(
        "tern_replication_queue",
        "Replication work waiting: snapshot requests, snapshot imports, outbox messages.",
        "gauge",
        [
            ("snapshot", rs.snapshot_jobs),
            ("import", rs.import_jobs),
            ("outbox", rs.outbox),
        ]
        .into_iter()
        .map(|(q, v)| (format!("{{queue=\"{q}\"}}"), v as f64))
        .collect(),
    );
    counter(
        "tern_peer_available",
        "Per peer deployment: 1 available, 0.5 suspect, 0 unavailable or in maintenance.",
        "gauge",
        rs.peers
            .iter()
            .map(|p| {
                let v = match p.state {
                    tern_replication::Availability::Available => 1.0,
                    tern_replication::Availability::Suspect => 0.5,
                    _ => 0.0,
                };
                (format!("{{peer=\"{}\"}}", label(p.peer.as_str())), v)
            })
            .collect(),
    );
    let group = |g: &tern_replication::GroupStatus| {
        format!(
            "{{database=\"{}\",group=\"{}\",role=\"{}\"}}",
            label(&g.database),
            label(&g.group),
            match g.role {
                tern_meta::DatabaseRole::Primary => "primary",
                tern_meta::DatabaseRole::Secondary => "secondary",
                tern_meta::DatabaseRole::Local => "local",
            }
        )
    };
    counter(
        "tern_group_epoch",
        "Per database group held here: the newest epoch known.",
        "gauge",
        rs.groups
            .iter()
            .map(|g| (group(g), g.group_epoch as f64))
            .collect(),
    );
    counter(
        "tern_group_rpo_exposure_seconds",
        "Per database group: a secondary's age of the newest primary commit not applied here (grows while the primary is silent); the primary's oldest unconfirmed commit.",
        "gauge",
        rs.groups
            .iter()
            .map(|g| (group(g), g.rpo_exposure_ms as f64 / 1000.0))
            .collect(),
    );
    counter(
        "tern_group_txns_behind",
        "Per database group: transactions a secondary lacks of the primary's last heartbeat, or the primary's unconfirmed ones.",
        "gauge",
        rs.groups
            .iter()
            .map(|g| (group(g), g.txns_behind as f64))
            .collect(),
    );
    let replica = |r: &tern_replication::ReplicaStatus| {
        format!(
            "{{account=\"{}\",database=\"{}\",upstream=\"{}\"}}",
            label(r.account.as_str()),
            label(&r.database),
            label(r.upstream.as_str())
        )
    };
    counter(
        "tern_replication_lag_seconds",
        "Per secondary replica: how far its data trails the primary as last heard of (newest known commit minus newest applied; a silent primary's silence beyond two heartbeats counts).",
        "gauge",
        rs.replicas
            .iter()
            .map(|r| (replica(r), r.lag_ms as f64 / 1000.0))
            .collect(),
    );
    counter(
        "tern_replication_staleness_seconds",
        "Per secondary replica: how long ago the primary's state (heartbeat) was last heard; absent before the first.",
        "gauge",
        rs.replicas
            .iter()
            .filter_map(|r| Some((replica(r), r.staleness_ms? as f64 / 1000.0)))
            .collect(),
    );
    counter(
        "tern_replication_versions_behind",
        "Per secondary replica: table versions behind the newest upstream versions known here.",
        "gauge",
        rs.replicas
            .iter()
            .map(|r| (replica(r), r.versions_behind as f64))
            .collect(),
    );
    counter(
        "tern_replication_records_behind",
        "Per downstream replica of a local database: log records not shipped yet.",
        "gauge",
        rs.downstream
            .iter()
            .map(|r| {
                (
                    format!(
                        "{{database=\"{}\",peer=\"{}\"}}",
                        label(&r.database),
                        label(r.peer.as_str())
                    ),
                    r.records_behind as f64,
                )
            })
            .collect(),
    );
    let failed = d.messaging.failed_count().await?;
    counter(
        "tern_messages_failed",
        "Received messages whose handler failed for good, kept for the operator (`tern messages failed`) until failed_retention.",
        "gauge",
        vec![(String::new(), failed as f64)],
    );
    counter(
        "tern_replication_refresh_needed",
        "Per downstream replica of a local database: 1 when it fell further behind than replication.log_retention, its log records were pruned and it must refresh.",
        "gauge",
        rs.downstream
            .iter()
            .map(|r| {
                (
                    format!(
                        "{{database=\"{}\",peer=\"{}\"}}",
                        label(&r.database),
                        label(r.peer.as_str())
                    ),
                    if r.refresh_needed { 1.0 } else { 0.0 },
                )
            })
            .collect(),
    );
    let mut jobs: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for j in &rs.jobs {
        *jobs
            .entry((enum_name(&j.kind), enum_name(&j.state)))
            .or_default() += 1.0;
    }
    counter(
        "tern_replication_jobs",
        "Copy (snapshot) and import jobs by state: waiting, backing_off, failed (a failed job waits for `tern replication retry|abandon`).",
        "gauge",
        jobs.into_iter()
            .map(|((k, st), n)| (format!("{{kind=\"{k}\",state=\"{st}\"}}"), n))
            .collect(),
    );
    Ok(m)
}

/// A Prometheus label value, escaped.
pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
