//! Diversifiers and the policy that chooses and accepts them.
//!
//! A [`Diversifier`] is a timestamp (Unix seconds, truncated to the policy's granularity,
//! one hour by default). The sender picks the diversifier of its *next* message file and
//! announces it in the current one; the wrapping key of that file is
//! `HMAC(GMK, diversifier)`. Because diversifiers are coarse timestamps, a sender triggers at
//! most one key-provider call per rotation period, and a receiver can refuse keys that are
//! too old (replay of stale material) or too far ahead (a sender with a broken clock, or
//! one trying to pre-compute keys):
//!
//! ```text
//!            max_age (24 h)                 now   max_future_skew (5 min)
//!   ──────[────────────────────────────────]──|──]──────▶ time
//!   reject │            accept                     │ reject
//! ```
//!
//! Time comes from an injected [`tern_clock::Clock`], so the window is testable without
//! sleeping. Rejections are typed errors ([`Error::DiversifierTooOld`],
//! [`Error::DiversifierInFuture`], [`Error::DiversifierMisaligned`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_clock::Clock;

use crate::error::{Error, Result};
use crate::kdf;

/// A timestamp naming a GMK-derived wrapping key. Seconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Diversifier(u64);

impl Diversifier {
    /// The diversifier for a Unix timestamp in seconds (not truncated).
    pub const fn from_unix_secs(secs: u64) -> Self {
        Diversifier(secs)
    }

    /// Seconds since the Unix epoch.
    pub const fn unix_secs(self) -> u64 {
        self.0
    }

    /// The message the GMK MACs for this diversifier: `"tern/v1/wrap-key/" ‖ u64be(secs)`.
    pub fn mac_message(self) -> Vec<u8> {
        let mut m = Vec::with_capacity(kdf::WRAP_KEY_LABEL.len() + 8);
        m.extend_from_slice(kdf::WRAP_KEY_LABEL);
        m.extend_from_slice(&self.0.to_be_bytes());
        m
    }
}

impl fmt::Display for Diversifier {
    /// ISO 8601 UTC, e.g. `2026-11-21T13:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / 86_400;
        let secs = self.0 % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

impl fmt::Debug for Diversifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Diversifier({self})")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// How diversifiers are chosen (sender) and accepted (receiver).
///
/// Loaded from configuration with human-readable durations (`"1h"`, `"24h"`, `"5m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiversifierPolicy {
    /// Diversifiers are multiples of this (default 1 h). Receivers reject others.
    #[serde(with = "humantime_serde")]
    pub granularity: Duration,
    /// How often a sender moves to a new diversifier (default 1 h); a multiple of
    /// `granularity`.
    #[serde(with = "humantime_serde")]
    pub rotation: Duration,
    /// Oldest diversifier a receiver accepts, measured from its start (default 24 h).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How far ahead of the receiver's clock a diversifier may be (default 5 min).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
}

impl Default for DiversifierPolicy {
    fn default() -> Self {
        DiversifierPolicy {
            granularity: Duration::from_secs(3600),
            rotation: Duration::from_secs(3600),
            max_age: Duration::from_secs(24 * 3600),
            max_future_skew: Duration::from_secs(5 * 60),
        }
    }
}

impl DiversifierPolicy {
    /// Checks the settings once, at start.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        let g = self.granularity.as_secs();
        if g == 0 || self.granularity.subsec_nanos() != 0 {
            return bad("granularity", "must be a positive whole number of seconds");
        }
        let r = self.rotation.as_secs();
        if r == 0 || self.rotation.subsec_nanos() != 0 || !r.is_multiple_of(g) {
            return bad("rotation", "must be a positive multiple of granularity");
        }
        if self.max_age < self.rotation {
            return bad("max_age", "must be at least one rotation period");
        }
        Ok(())
    }

    /// The diversifier a sender uses now: the clock truncated to the rotation period.
    pub fn current(&self, clock: &dyn Clock) -> Diversifier {
        let now = u64::try_from(clock.now_millis()).unwrap_or(0) / 1000;
        let r = self.rotation.as_secs().max(1);
        Diversifier(now - now % r)
    }

    /// The diversifier a sender announces for a file written `ahead` from now (e.g. the next
    /// message file): `current` advanced to the period containing `now + ahead`.
    pub fn next(&self, clock: &dyn Clock, ahead: Duration) -> Diversifier {
        let now = u64::try_from(clock.now_millis()).unwrap_or(0) / 1000;
        let t = now.saturating_add(ahead.as_secs());
        let r = self.rotation.as_secs().max(1);
        Diversifier(t - t % r)
    }

    /// Receiver-side acceptance: aligned to the granularity, not older than `max_age`, not
    /// more than `max_future_skew` ahead of the clock.
    pub fn check(&self, diversifier: Diversifier, clock: &dyn Clock) -> Result<()> {
        let g = self.granularity.as_secs().max(1);
        if !diversifier.0.is_multiple_of(g) {
            return Err(Error::DiversifierMisaligned {
                diversifier,
                granularity: self.granularity,
            });
        }
        let now_ms = i128::from(clock.now_millis());
        let div_ms = i128::from(diversifier.0) * 1000;
        let delta = now_ms - div_ms;
        let to_duration = |ms: i128| Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
        if delta < 0 {
            let ahead = to_duration(-delta);
            if ahead > self.max_future_skew {
                return Err(Error::DiversifierInFuture {
                    diversifier,
                    ahead,
                    max_skew: self.max_future_skew,
                });
            }
        } else {
            let age = to_duration(delta);
            if age > self.max_age {
                return Err(Error::DiversifierTooOld {
                    diversifier,
                    age,
                    max_age: self.max_age,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_clock::ManualClock;

    const T0: i64 = 1_763_730_000_000; // 2025-11-21T13:00:00Z

    #[test]
    fn display_is_utc_iso8601() {
        assert_eq!(Diversifier(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Diversifier::from_unix_secs(1_763_730_000).to_string(),
            "2025-11-21T13:00:00Z"
        );
        assert_eq!(
            Diversifier::from_unix_secs(951_782_400).to_string(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn current_truncates_to_rotation() {
        let clock = ManualClock::new(T0 + 3600 * 1000 - 1);
        let p = DiversifierPolicy::default();
        assert_eq!(p.current(&clock).unix_secs(), 1_763_730_000);
        clock.advance(Duration::from_millis(1));
        assert_eq!(p.current(&clock).unix_secs(), 1_763_733_600);
        assert_eq!(
            p.next(&clock, Duration::from_secs(3600)).unix_secs(),
            1_763_737_200
        );
    }

    #[test]
    fn window_edges() {
        let p = DiversifierPolicy::default();
        let d = Diversifier::from_unix_secs(1_763_730_000);
        let clock = ManualClock::new(T0);
        p.check(d, &clock).unwrap();
        clock.set_millis(T0 + 24 * 3600 * 1000);
        p.check(d, &clock).unwrap();
        clock.advance(Duration::from_millis(1));
        assert!(matches!(
            p.check(d, &clock),
            Err(Error::DiversifierTooOld { .. })
        ));
        clock.set_millis(T0 - 5 * 60 * 1000);
        p.check(d, &clock).unwrap();
        clock.set_millis(T0 - 5 * 60 * 1000 - 1);
        assert!(matches!(
            p.check(d, &clock),
            Err(Error::DiversifierInFuture { .. })
        ));
        clock.set_millis(T0);
        assert!(matches!(
            p.check(Diversifier::from_unix_secs(1_763_730_001), &clock),
            Err(Error::DiversifierMisaligned { .. })
        ));
    }

    #[test]
    fn validate_rejects_nonsense() {
        DiversifierPolicy::default().validate().unwrap();
        let p = DiversifierPolicy {
            rotation: Duration::from_secs(5400),
            ..DiversifierPolicy::default()
        };
        assert!(matches!(
            p.validate(),
            Err(Error::InvalidConfig {
                field: "rotation",
                ..
            })
        ));
        let p = DiversifierPolicy {
            max_age: Duration::from_secs(60),
            ..DiversifierPolicy::default()
        };
        assert!(p.validate().is_err());
    }

    #[test]
    fn policy_loads_human_durations() {
        let p: DiversifierPolicy =
            serde_json::from_str(r#"{"rotation": "2h", "max_age": "2days"}"#).unwrap();
        assert_eq!(p.rotation, Duration::from_secs(7200));
        assert_eq!(p.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(p.granularity, Duration::from_secs(3600));
    }
}
