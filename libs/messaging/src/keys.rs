//! Keys of one channel: every message and body file gets a fresh DEK wrapped under
//! `HMAC(GMK, diversifier)` ([`tern_crypto::MessageFileKeys`]), bound to the channel
//! (`d1->d2`) and the file's object path.
//!
//! # Acceptance window
//!
//! A receiver accepts a diversifier when the policy's window
//! ([`DiversifierPolicy::check`]) holds at its own clock, **or** — for a backlog read after
//! the receiver was down — at the time the storage service recorded the file, provided the
//! diversifier is not ahead of the receiver's clock by more than the skew bound. The
//! storage timestamp is set by the bucket, not by the sender, so a sender cannot stretch
//! the window; a receiver that was down for two days still reads the files written then.

use std::fmt;
use std::sync::Arc;

use tern_clock::{Clock, SharedClock};
use tern_crypto::{CachedWrapKeys, Diversifier, DiversifierPolicy, MessageFileKeys, SharedRandom};

/// A clock standing still at one instant (the storage timestamp of a file).
#[derive(Debug, Clone, Copy)]
struct FixedClock(i64);

impl Clock for FixedClock {
    fn now_millis(&self) -> i64 {
        self.0
    }
}

/// The key material and policy of one channel.
pub struct ChannelKeys {
    wrap_keys: Arc<CachedWrapKeys>,
    channel: String,
    policy: DiversifierPolicy,
    clock: SharedClock,
    random: SharedRandom,
}

impl fmt::Debug for ChannelKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelKeys")
            .field("channel", &self.channel)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ChannelKeys {
    /// Keys of `channel` (`d1->d2`).
    pub fn new(
        wrap_keys: Arc<CachedWrapKeys>,
        channel: impl Into<String>,
        policy: DiversifierPolicy,
        clock: SharedClock,
        random: SharedRandom,
    ) -> Self {
        Self {
            wrap_keys,
            channel: channel.into(),
            policy,
            clock,
            random,
        }
    }

    /// Keys pinned to `diversifier`, judged at the receiver's clock.
    pub fn pinned(&self, diversifier: Diversifier) -> MessageFileKeys {
        MessageFileKeys::new(
            Arc::clone(&self.wrap_keys),
            self.channel.clone(),
            self.policy,
            Arc::clone(&self.clock),
            Arc::clone(&self.random),
        )
        .with_diversifier(diversifier)
    }

    /// Keys pinned to `diversifier` for reading a file the store recorded at
    /// `stored_at_ms`, after checking the acceptance window (module docs).
    pub fn for_reading(
        &self,
        diversifier: Diversifier,
        stored_at_ms: Option<i64>,
    ) -> tern_crypto::Result<MessageFileKeys> {
        let now = self.policy.check(diversifier, &*self.clock);
        let clock: SharedClock = match (now, stored_at_ms) {
            (Ok(()), _) => Arc::clone(&self.clock),
            (Err(e @ tern_crypto::Error::DiversifierTooOld { .. }), Some(at)) => {
                let at = FixedClock(at.min(self.clock.now_millis()));
                match self.policy.check(diversifier, &at) {
                    Ok(()) => Arc::new(at),
                    Err(_) => return Err(e),
                }
            }
            (Err(e), _) => return Err(e),
        };
        Ok(MessageFileKeys::new(
            Arc::clone(&self.wrap_keys),
            self.channel.clone(),
            self.policy,
            clock,
            Arc::clone(&self.random),
        )
        .with_diversifier(diversifier))
    }

    /// The policy.
    pub fn policy(&self) -> &DiversifierPolicy {
        &self.policy
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The wrapping-key cache (its provider-call count is a figure worth reporting).
    pub fn wrap_keys(&self) -> &Arc<CachedWrapKeys> {
        &self.wrap_keys
    }

    /// The randomness source.
    pub fn random(&self) -> &SharedRandom {
        &self.random
    }
}
