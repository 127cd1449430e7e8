//! `TERN_CRASH_AT`: named crash points of the real process, for tests of recovery.
//!
//! `TERN_CRASH_AT=rewind.table_rolled_back,begin:3` arms the points named (a point, or
//! `point:n` for its n-th time); when one is reached the daemon kills itself with
//! SIGKILL right there — no clean-up, no flush, exactly what `kill -9` at that moment
//! leaves. The points are the commit protocol's (`tern_txn::crash::POINTS`), the message
//! service's (`tern_messaging::crash::points::ALL`) and replication's
//! (`tern_replication::crash::ALL`). Unset (always, outside tests) nothing is armed. An
//! unknown name refuses the start, naming it.

use std::sync::Arc;

use crate::error::{Error, Result};

/// The variable.
pub const VAR: &str = "TERN_CRASH_AT";

/// The armed registries, handed to the commit protocol and the message service.
#[derive(Debug, Default)]
pub struct Armed {
    /// The commit protocol's.
    pub txn: tern_txn::CrashPoints,
    /// The message service's and replication's.
    pub messaging: tern_messaging::CrashPoints,
}

/// The points `TERN_CRASH_AT` arms (none when it is unset).
pub fn from_env() -> Result<Armed> {
    match std::env::var(VAR) {
        Ok(spec) => parse(&spec),
        Err(_) => Ok(Armed::default()),
    }
}

/// Arms the points of `spec` (see the module docs); the process kills itself when one fires.
pub fn parse(spec: &str) -> Result<Armed> {
    let armed = Armed::default();
    let bad = |reason: String| Error::Config {
        field: VAR.into(),
        reason,
    };
    let mut any = false;
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, nth) = match item.split_once(':') {
            None => (item, 1),
            Some((name, n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => (name, n),
                _ => {
                    return Err(bad(format!(
                        "{item:?}: the count after ':' must be a whole number from 1"
                    )));
                }
            },
        };
        let messaging = || {
            tern_messaging::crash::points::ALL
                .iter()
                .chain(tern_replication::crash::ALL)
        };
        if let Some(p) = tern_txn::crash::POINTS.iter().find(|p| **p == name) {
            armed.txn.arm(p, nth);
        } else if let Some(p) = messaging().find(|p| **p == name) {
            armed.messaging.arm_after(p, nth - 1);
        } else {
            let known: Vec<&str> = tern_txn::crash::POINTS
                .iter()
                .chain(messaging())
                .copied()
                .collect();
            return Err(bad(format!(
                "unknown crash point {name:?}; the points are {}",
                known.join(", ")
            )));
        }
        any = true;
    }
    if any {
        tracing::warn!(
            spec,
            "crash points armed: this process kills itself when one is reached (tests of recovery)"
        );
        armed.txn.on_fire(Arc::new(die));
        armed.messaging.on_fire(Arc::new(die));
    }
    Ok(armed)
}

/// SIGKILL to this process (what `kill -9` does), from a crash point.
fn die(point: &'static str) {
    tracing::error!(point, "crash point reached: killing this process");
    let _ = std::process::Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status();
    // `kill` is missing or failed: end the process anyway, with no clean-up.
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_armed_in_their_registry_and_bad_names_are_refused() {
        let a = parse(" begin:2, rewind.refresh_asked ").unwrap();
        assert!(
            format!("{:?}", a.txn).contains("\"begin\": 2"),
            "{:?}",
            a.txn
        );
        let m = format!("{:?}", a.messaging);
        assert!(
            m.contains("\"rewind.refresh_asked\": 0") && m.contains("on_fire: true"),
            "{m}"
        );
        let none = parse("").unwrap();
        assert!(format!("{:?}", none.messaging).contains("on_fire: false"));
        let e = parse("rewind.table_rolled_bak").unwrap_err().to_string();
        assert!(
            e.contains("TERN_CRASH_AT") && e.contains("rewind.table_rolled_bak"),
            "{e}"
        );
        assert!(e.contains("rewind.table_rolled_back"), "{e}");
        let e = parse("begin:0").unwrap_err().to_string();
        assert!(e.contains("\"begin:0\""), "{e}");
        let e = parse("begin:x").unwrap_err().to_string();
        assert!(e.contains("\"begin:x\""), "{e}");
    }
}
