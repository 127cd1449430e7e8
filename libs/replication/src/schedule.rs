//! When a secondary replica is brought up to date (seed 001 [26]: some sites every few
//! minutes, others once a day): `continuous` follows the upstream's log (and refreshes
//! every `refresh_interval` to correct drift), `every <duration>` and `daily HH:MM`
//! (UTC) only refresh, on that schedule — less frequent synchronisation at lower cost.
//! Written and read as that text (`"every 5m"`, `"daily 02:30"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 86_400_000;

/// A replica's schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Schedule {
    /// Follows the upstream's log.
    #[default]
    Continuous,
    /// Refreshes this long after the last refresh.
    Every(Duration),
    /// Refreshes once a day at this minute of the day (UTC).
    Daily {
        /// Minutes after midnight UTC.
        minute: u32,
    },
}

impl Schedule {
    /// Follows the log.
    pub fn is_continuous(&self) -> bool {
        matches!(self, Schedule::Continuous)
    }

    /// Whether a scheduled refresh is due at `now` after the last one at `last` (`None`:
    /// never). A continuous replica's drift refresh is the caller's (`refresh_interval`).
    pub fn due(&self, last: Option<i64>, now: i64) -> bool {
        self.next_after(last, now).is_some_and(|at| at <= now)
    }

    /// When the next scheduled refresh is due (`None` for a continuous replica).
    pub fn next_after(&self, last: Option<i64>, now: i64) -> Option<i64> {
        match *self {
            Schedule::Continuous => None,
            Schedule::Every(d) => {
                let d = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                Some(last.map_or(now, |l| l.saturating_add(d)))
            }
            Schedule::Daily { minute } => {
                // The latest daily instant at or before now; due when the last refresh
                // was before it, else the next one.
                let today = now - now.rem_euclid(DAY_MS) + i64::from(minute) * 60_000;
                let latest = if today <= now { today } else { today - DAY_MS };
                Some(match last {
                    Some(l) if l >= latest => latest + DAY_MS,
                    _ => latest,
                })
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Continuous => write!(f, "continuous"),
            Schedule::Every(d) => write!(
                f,
                "every {}",
                humantime_serde::re::humantime::format_duration(*d)
            ),
            Schedule::Daily { minute } => write!(f, "daily {:02}:{:02}", minute / 60, minute % 60),
        }
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "schedule {s:?}: {why} (expected continuous, every <duration> such as every 5m, or daily HH:MM in UTC)"
            )
        };
        let s = s.trim();
        if s == "continuous" {
            return Ok(Schedule::Continuous);
        }
        if let Some(d) = s.strip_prefix("every ") {
            let d = humantime_serde::re::humantime::parse_duration(d.trim())
                .map_err(|e| bad(&e.to_string()))?;
            if d < Duration::from_millis(100) {
                return Err(bad("the interval must be at least 100ms"));
            }
            return Ok(Schedule::Every(d));
        }
        if let Some(t) = s.strip_prefix("daily ") {
            let (h, m) = t.trim().split_once(':').ok_or_else(|| bad("no HH:MM"))?;
            let (h, m) = match (h.parse::<u32>(), m.parse::<u32>()) {
                (Ok(hh), Ok(mm)) if hh < 24 && mm < 60 && h.len() <= 2 && m.len() == 2 => (hh, mm),
                _ => return Err(bad("HH must be 00-23 and MM 00-59")),
            };
            return Ok(Schedule::Daily { minute: h * 60 + m });
        }
        Err(bad("unknown form"))
    }
}

impl TryFrom<String> for Schedule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Schedule> for String {
    fn from(s: Schedule) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_read_and_write_as_text() {
        for text in [
            "continuous",
            "every 5m",
            "every 1h 30m",
            "daily 02:30",
            "daily 00:00",
        ] {
            let s: Schedule = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        }
        for bad in [
            "sometimes",
            "every",
            "every soon",
            "every 10ms",
            "daily 24:00",
            "daily 2",
            "daily 07:60",
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.contains(bad) && e.contains("expected"), "{e}");
        }
    }

    #[test]
    fn every_is_due_an_interval_after_the_last_refresh() {
        let s = Schedule::Every(Duration::from_secs(60));
        assert!(s.due(None, 5));
        assert!(!s.due(Some(1_000), 60_999));
        assert!(s.due(Some(1_000), 61_000));
        assert_eq!(s.next_after(Some(1_000), 0), Some(61_000));
        assert!(!Schedule::Continuous.due(None, 0));
    }

    #[test]
    fn daily_is_due_once_a_day_at_its_minute() {
        let s = Schedule::Daily { minute: 150 }; // 02:30 UTC
        let day = 20_000 * DAY_MS;
        let at = day + 150 * 60_000;
        // Refreshed yesterday after 02:30: not due before today's 02:30, due from it.
        let yesterday = at - DAY_MS + 1;
        assert!(!s.due(Some(yesterday), at - 1));
        assert!(s.due(Some(yesterday), at));
        assert_eq!(s.next_after(Some(yesterday), at - 1), Some(at));
        // Refreshed at or after today's 02:30: next is tomorrow's.
        assert!(!s.due(Some(at), at + 3_600_000));
        assert_eq!(s.next_after(Some(at), at + 1), Some(at + DAY_MS));
        // Never refreshed: due at once (it missed the latest 02:30).
        assert!(s.due(None, at - 1));
    }
}
