//! Injected randomness.
//!
//! Everything this crate draws at random — file keys (DEKs), RepMKs, locally generated data
//! keys, nonce prefixes, wrapping nonces — comes from a [`Random`] passed in by the caller,
//! so tests can pin the bytes (the golden-file test does). Production code uses
//! [`SystemRandom`] (the operating system's CSPRNG through `ring`).
//!
//! Two draws do not go through this trait, on purpose: the ephemeral X25519 key and the
//! RSA-OAEP padding seed of a customer-key seal come from the operating system directly,
//! because a predictable value there would break confidentiality and no test needs them
//! fixed.

use std::sync::Arc;

use crate::error::{Error, Result};

/// A source of cryptographically secure random bytes.
pub trait Random: Send + Sync + std::fmt::Debug {
    /// Fill `dest` with random bytes.
    fn fill(&self, dest: &mut [u8]) -> Result<()>;
}

/// Shared handle to a [`Random`].
pub type SharedRandom = Arc<dyn Random>;

/// The operating system's CSPRNG.
#[derive(Debug)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl Default for SystemRandom {
    fn default() -> Self {
        SystemRandom(ring::rand::SystemRandom::new())
    }
}

impl SystemRandom {
    /// A shared handle to the system CSPRNG.
    pub fn shared() -> SharedRandom {
        Arc::new(SystemRandom::default())
    }
}

impl Random for SystemRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<()> {
        use ring::rand::SecureRandom as _;
        self.0.fill(dest).map_err(|_| Error::Random)
    }
}

pub(crate) fn array<const N: usize>(random: &dyn Random) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    random.fill(&mut out)?;
    Ok(out)
}
