//! `tern monitor`: the last N monitor intervals as a table, with a sparkline per figure.

use serde_json::{Value, json};
use tern_api as api;

use crate::output;

/// `▁▂▃▄▅▆▇█` for `values` (scaled to their maximum; an all-zero series is flat).
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 || !v.is_finite() {
                BARS[0]
            } else {
                let i = ((v / max) * 7.0).round().clamp(0.0, 7.0) as usize;
                BARS[i]
            }
        })
        .collect()
}

fn time(ms: i64) -> String {
    let s = ms / 1000;
    let (h, m, sec) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
    format!("{h:02}:{m:02}:{sec:02}Z")
}

/// The text `tern monitor` prints for the answer of `GET /v1/monitor`, or an error naming
/// the field a row lacks.
pub fn render(v: &api::MonitorHistory) -> Result<String, String> {
    let rows = v
        .rows
        .iter()
        .map(|r| serde_json::from_value::<api::MonitorRow>(r.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a monitor interval of the answer: {e}"))?;
    if rows.is_empty() {
        return Ok(
            "no monitor intervals yet (the first ends one monitor_interval after start)\n".into(),
        );
    }
    // A deployment with no apply agent (no replica here) applies nothing.
    let apply = |r: &api::MonitorRow| r.agents.get("apply").cloned();
    let applied = |r: &api::MonitorRow, pick: fn(&api::MonitorAgentFigures) -> f64| {
        apply(r).as_ref().map_or(0.0, pick)
    };
    let lag = |r: &api::MonitorRow| {
        r.replicas
            .iter()
            .map(|x| x.lag_ms as f64)
            .fold(0.0, f64::max)
            / 1000.0
    };
    let queued = |r: &api::MonitorRow| -> f64 {
        r.queues
            .iter()
            // Sent and failed are kept records, not work (ternd's `is_pending`).
            .filter(|(k, _)| !(k.ends_with("/Sent") || k.ends_with("/failed")))
            .map(|(_, n)| *n as f64)
            .sum()
    };
    let table: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "#": r.interval,
                "at": time(r.at_ms),
                "applied": apply(r).map_or(0, |a| a.cumulative.units),
                "txn/s": format!("{:.2}", applied(r, |a| a.units_per_sec)),
                "rows/s": format!("{:.1}", applied(r, |a| a.rows_per_sec)),
                "lat avg ms": format!("{:.1}", applied(r, |a| a.latency_avg_ms)),
                "lat max ms": applied(r, |a| a.latency_max_ms as f64),
                "max lag s": format!("{:.2}", lag(r)),
                "queued": queued(r),
                "alerts": r.alerts.len(),
            })
        })
        .collect();
    let cols: Vec<String> = [
        "#",
        "at",
        "applied",
        "txn/s",
        "rows/s",
        "lat avg ms",
        "lat max ms",
        "max lag s",
        "queued",
        "alerts",
    ]
    .map(String::from)
    .to_vec();
    let mut out = output::table(&cols, &table);
    out.push('\n');
    type Pick<'a> = Box<dyn Fn(&api::MonitorRow) -> f64 + 'a>;
    let series: [(&str, Pick<'_>); 5] = [
        ("txn/s", Box::new(|r| applied(r, |a| a.units_per_sec))),
        ("rows/s", Box::new(|r| applied(r, |a| a.rows_per_sec))),
        (
            "latency max ms",
            Box::new(|r| applied(r, |a| a.latency_max_ms as f64)),
        ),
        ("max lag s", Box::new(lag)),
        ("queued", Box::new(queued)),
    ];
    for (name, pick) in series {
        let vals: Vec<f64> = rows.iter().map(&pick).collect();
        let last = vals.last().copied().unwrap_or(0.0);
        let max = vals.iter().copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "{name:<15} {}  last {last:.2}  max {max:.2}\n",
            sparkline(&vals)
        ));
    }
    // Per peer: the work waiting on its channel and jobs, over the intervals, and the
    // queues holding some at the last one. Each queue as (peer, "channel in"/"job copy",
    // state, depth).
    let queues_of = |r: &api::MonitorRow| -> Vec<(String, String, String, u64)> {
        let channels = r.channels.iter().map(|x| {
            (
                x.peer.clone(),
                format!("channel {}", x.direction),
                x.state.clone(),
                x.depth,
            )
        });
        let jobs = r.jobs.iter().map(|x| {
            (
                x.peer.clone(),
                format!("job {}", x.kind),
                x.state.clone(),
                x.depth,
            )
        });
        channels.chain(jobs).collect()
    };
    let per_peer = |r: &api::MonitorRow| {
        let mut m = std::collections::BTreeMap::<String, f64>::new();
        for (peer, _, state, depth) in queues_of(r) {
            if !(state == "Sent" || state == "failed") {
                *m.entry(peer).or_default() += depth as f64;
            }
        }
        m
    };
    let peers: std::collections::BTreeSet<String> =
        rows.iter().flat_map(|r| per_peer(r).into_keys()).collect();
    if !peers.is_empty() {
        out.push_str("\nqueued per peer:\n");
        for p in &peers {
            let vals: Vec<f64> = rows
                .iter()
                .map(|r| per_peer(r).get(p).copied().unwrap_or(0.0))
                .collect();
            let last = vals.last().copied().unwrap_or(0.0);
            let max = vals.iter().copied().fold(0.0, f64::max);
            out.push_str(&format!(
                "  {p:<13} {}  last {last}  max {max}\n",
                sparkline(&vals)
            ));
        }
    }
    let queues: Vec<Value> = rows
        .last()
        .map(queues_of)
        .unwrap_or_default()
        .into_iter()
        .filter(|q| q.3 > 0)
        .map(|(peer, queue, state, depth)| {
            json!({"peer": peer, "queue": queue, "state": state, "depth": depth})
        })
        .collect();
    if !queues.is_empty() {
        out.push_str("\nqueues at the last interval:\n");
        let cols: Vec<String> = ["peer", "queue", "state", "depth"]
            .map(String::from)
            .to_vec();
        out.push_str(&output::table(&cols, &queues));
    }
    if !v.alerts.is_empty() {
        out.push_str("\nalerts firing:\n");
        for a in &v.alerts {
            out.push_str(&format!(
                "  {} {}: {} (limit {})\n",
                a.kind,
                a.subject,
                a.value.unwrap_or(f64::NAN),
                a.limit.unwrap_or(f64::NAN)
            ));
        }
    }
    Ok(out)
}

/// The text for `GET /v1/monitor/events`.
pub fn render_events(v: &api::MonitorEvents) -> String {
    let rows: Vec<Value> = v
        .events
        .iter()
        .map(|e| {
            json!({"#": e.seq, "at": time(e.at_ms), "alert": e.kind,
                "subject": e.subject, "change": e.transition,
                "value": e.value, "limit": e.limit})
        })
        .collect();
    let cols: Vec<String> = ["#", "at", "alert", "subject", "change", "value", "limit"]
        .map(String::from)
        .to_vec();
    output::table(&cols, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_maximum() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 4.0, 8.0]), "▁▂▃▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn the_table_shows_each_interval_and_a_sparkline_per_figure() {
        let v = json!({"deployment": "d1", "interval_ms": 10_000, "rows": [
            {"interval": 1, "at_ms": 3_600_000, "agents": {"apply": {"cumulative": {"units": 2},
              "units_per_sec": 0.2, "rows_per_sec": 20.0, "latency_avg_ms": 5.0, "latency_max_ms": 9}},
             "replicas": [{"database": "r", "lag_ms": 1500}], "queues": {"messages in/waiting": 3}, "alerts": []},
            {"interval": 2, "at_ms": 3_610_000, "agents": {"apply": {"cumulative": {"units": 12},
              "units_per_sec": 1.0, "rows_per_sec": 100.0, "latency_avg_ms": 7.0, "latency_max_ms": 30}},
             "replicas": [{"database": "r", "lag_ms": 0}], "queues": {}, "alerts": [{"kind": "lag_over_rpo"}],
             "channels": [{"peer": "d2", "direction": "out", "state": "ReadyToSend", "depth": 4},
                          {"peer": "d3", "direction": "out", "state": "ReadyToSend", "depth": 0}],
             "jobs": [{"peer": "d3", "kind": "import", "state": "failed", "depth": 1}]}
        ], "alerts": [{"kind": "lag_over_rpo", "subject": "replica r", "since_ms": 1, "value": 9.0,
            "limit": 5.0}]});
        let t = render(&serde_json::from_value(v).expect("a monitor answer")).expect("rendered");
        assert!(t.contains("01:00:10Z"), "{t}");
        assert!(t.contains("txn/s           ▂█"), "{t}");
        assert!(t.contains("max lag s       █▁"), "{t}");
        assert!(t.contains("lag_over_rpo replica r: 9 (limit 5)"), "{t}");
        // Per peer: d2's channel queue grew, d3 has nothing waiting (a failed job is kept,
        // not work); the last interval's non-empty queues are listed.
        assert!(t.contains("  d2            ▁█  last 4  max 4"), "{t}");
        assert!(t.contains("  d3            ▁▁  last 0  max 0"), "{t}");
        assert!(
            t.lines().any(|l| l.contains("d2")
                && l.contains("channel out")
                && l.contains("ReadyToSend")
                && l.contains('4')),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.contains("d3") && l.contains("job import") && l.contains("failed")),
            "{t}"
        );
    }
}
