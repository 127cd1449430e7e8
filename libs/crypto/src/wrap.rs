//! Key wrapping: AES-256-GCM with associated data that binds what the key is for.
//!
//! A wrapped key is `version (1) ‖ nonce (12) ‖ AES-256-GCM(kek, nonce, key, aad) (32 + 16)`,
//! 61 bytes. The nonce is random: a wrapping key wraps at most a few thousand keys in its
//! rotation period, far below the 2^32 random-nonce bound. The associated data is
//!
//! ```text
//! "tern/v1/wrap\0" ‖ purpose (1) ‖ u32be(len) ‖ channel ‖ u32be(len) ‖ name ‖ 0 | 1 ‖ u64be(diversifier)
//! ```
//!
//! so a wrapped key cannot be moved to another purpose (a DEK presented as a RepMK), another
//! channel (sender → receiver pair, or account), another name (file, response id, table) or
//! another diversifier without unwrapping failing.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::diversifier::Diversifier;
use crate::error::{Error, Result};
use crate::keys::{DataKey, FileKey, KEY_LEN, RepMk, WrapKey, WrappedKey};
use crate::random::{self, Random};

const WRAP_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of a wrapped 256-bit key.
pub const WRAPPED_KEY_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// What a wrapped key is; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyPurpose {
    /// A file's DEK, wrapped by a GMK-derived key.
    FileKey,
    /// A replication master key, wrapped by a GMK-derived key.
    RepMk,
    /// A table master key, wrapped by its account master key.
    TableKey,
}

impl KeyPurpose {
    fn code(self) -> u8 {
        match self {
            KeyPurpose::FileKey => 1,
            KeyPurpose::RepMk => 2,
            KeyPurpose::TableKey => 3,
        }
    }
}

impl fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPurpose::FileKey => "file key",
            KeyPurpose::RepMk => "replication master key",
            KeyPurpose::TableKey => "table master key",
        })
    }
}

/// What a wrapped key is bound to, besides its purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrapContext {
    /// The channel: for GMK-derived wrapping, the sender → receiver pair (e.g. `d1->d2`);
    /// for a TMK under an AMK, the account.
    pub channel: String,
    /// The name: a file name, a response id, a table id.
    pub name: String,
    /// The diversifier of a GMK-derived wrapping key.
    pub diversifier: Option<Diversifier>,
}

impl WrapContext {
    /// A context without diversifier.
    pub fn new(channel: impl Into<String>, name: impl Into<String>) -> Self {
        WrapContext {
            channel: channel.into(),
            name: name.into(),
            diversifier: None,
        }
    }

    /// The same context, bound to a diversifier.
    pub fn with_diversifier(mut self, diversifier: Diversifier) -> Self {
        self.diversifier = Some(diversifier);
        self
    }

    fn aad(&self, purpose: KeyPurpose) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32 + self.channel.len() + self.name.len());
        aad.extend_from_slice(b"tern/v1/wrap\0");
        aad.push(purpose.code());
        push_field(&mut aad, self.channel.as_bytes());
        push_field(&mut aad, self.name.as_bytes());
        match self.diversifier {
            None => aad.push(0),
            Some(d) => {
                aad.push(1);
                aad.extend_from_slice(&d.unix_secs().to_be_bytes());
            }
        }
        aad
    }

    fn unwrap_error(&self, purpose: KeyPurpose) -> Error {
        Error::Unwrap {
            purpose,
            name: self.name.clone(),
            diversifier: self.diversifier,
        }
    }
}

/// Appends `u32be(len) ‖ bytes`. Lengths beyond 4 GiB cannot occur for names.
pub(crate) fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Seals a 256-bit `secret` under `kek` with `aad`.
pub(crate) fn seal_key(
    kek: &[u8; KEY_LEN],
    secret: &[u8; KEY_LEN],
    aad: &[u8],
    random: &dyn Random,
) -> Result<WrappedKey> {
    use ring::aead;
    let nonce: [u8; NONCE_LEN] = random::array(random)?;
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, kek)
            .map_err(|_| Error::Internal { what: "key wrap" })?,
    );
    let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(secret);
    let tag = key
        .seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut out[1 + NONCE_LEN..],
        )
        .map_err(|_| Error::Internal { what: "key wrap" })?;
    out.extend_from_slice(tag.as_ref());
    Ok(WrappedKey::from_bytes(out))
}

/// Opens a key sealed by [`seal_key`]; `None` if anything does not match.
pub(crate) fn open_key(
    kek: &[u8; KEY_LEN],
    wrapped: &WrappedKey,
    aad: &[u8],
) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    use ring::aead;
    let bytes = wrapped.as_bytes();
    if bytes.len() != WRAPPED_KEY_LEN || bytes[0] != WRAP_VERSION {
        return None;
    }
    let nonce = aead::Nonce::try_assume_unique_for_key(&bytes[1..1 + NONCE_LEN]).ok()?;
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, kek).ok()?);
    let mut buf = Zeroizing::new([0u8; KEY_LEN + TAG_LEN]);
    buf.copy_from_slice(&bytes[1 + NONCE_LEN..]);
    let plain = key
        .open_in_place(nonce, aead::Aad::from(aad), &mut buf[..])
        .ok()?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(plain);
    Some(out)
}

impl WrapKey {
    /// Wraps a file's DEK for the file `ctx.name` on channel `ctx.channel`.
    pub fn wrap_file_key(
        &self,
        key: &FileKey,
        ctx: &WrapContext,
        random: &dyn Random,
    ) -> Result<WrappedKey> {
        seal_key(
            self.secret(),
            key.secret(),
            &ctx.aad(KeyPurpose::FileKey),
            random,
        )
    }

    /// Unwraps a DEK wrapped by [`Self::wrap_file_key`] with the same context.
    pub fn unwrap_file_key(&self, wrapped: &WrappedKey, ctx: &WrapContext) -> Result<FileKey> {
        open_key(self.secret(), wrapped, &ctx.aad(KeyPurpose::FileKey))
            .map(|k| FileKey::from_bytes(*k))
            .ok_or_else(|| ctx.unwrap_error(KeyPurpose::FileKey))
    }

    /// Wraps a RepMK (first layer; see [`crate::customer`] for the second).
    pub fn wrap_repmk(
        &self,
        key: &RepMk,
        ctx: &WrapContext,
        random: &dyn Random,
    ) -> Result<WrappedKey> {
        seal_key(
            self.secret(),
            key.secret(),
            &ctx.aad(KeyPurpose::RepMk),
            random,
        )
    }

    /// Unwraps a RepMK wrapped by [`Self::wrap_repmk`] with the same context.
    pub fn unwrap_repmk(&self, wrapped: &WrappedKey, ctx: &WrapContext) -> Result<RepMk> {
        open_key(self.secret(), wrapped, &ctx.aad(KeyPurpose::RepMk))
            .map(|k| RepMk::from_bytes(*k))
            .ok_or_else(|| ctx.unwrap_error(KeyPurpose::RepMk))
    }
}

impl DataKey {
    /// Wraps a table master key under this account master key (`ctx`: account, table).
    pub fn wrap_table_key(
        &self,
        tmk: &DataKey,
        ctx: &WrapContext,
        random: &dyn Random,
    ) -> Result<WrappedKey> {
        seal_key(
            self.secret(),
            tmk.secret(),
            &ctx.aad(KeyPurpose::TableKey),
            random,
        )
    }

    /// Unwraps a table master key wrapped by [`Self::wrap_table_key`].
    pub fn unwrap_table_key(&self, wrapped: &WrappedKey, ctx: &WrapContext) -> Result<DataKey> {
        open_key(self.secret(), wrapped, &ctx.aad(KeyPurpose::TableKey))
            .map(|k| DataKey::from_bytes(*k))
            .ok_or_else(|| ctx.unwrap_error(KeyPurpose::TableKey))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;

    #[test]
    fn wrap_binds_purpose_channel_name_and_diversifier() {
        let rng = SystemRandom::default();
        let wk = WrapKey::from_bytes([9u8; 32]);
        let dek = FileKey::generate(&rng).unwrap();
        let d = Diversifier::from_unix_secs(3600);
        let ctx = WrapContext::new("d1->d2", "msg/1").with_diversifier(d);
        let w = wk.wrap_file_key(&dek, &ctx, &rng).unwrap();
        assert_eq!(w.as_bytes().len(), WRAPPED_KEY_LEN);
        assert_eq!(wk.unwrap_file_key(&w, &ctx).unwrap().id(), dek.id());

        let others = [
            WrapContext::new("d1->d3", "msg/1").with_diversifier(d),
            WrapContext::new("d1->d2", "msg/2").with_diversifier(d),
            WrapContext::new("d1->d2", "msg/1").with_diversifier(Diversifier::from_unix_secs(7200)),
            WrapContext::new("d1->d2", "msg/1"),
            // field boundaries are length-prefixed: moving a byte between fields fails too
            WrapContext::new("d1->d2m", "sg/1").with_diversifier(d),
        ];
        for other in &others {
            assert!(matches!(
                wk.unwrap_file_key(&w, other),
                Err(Error::Unwrap {
                    purpose: KeyPurpose::FileKey,
                    ..
                })
            ));
        }
        assert!(wk.unwrap_repmk(&w, &ctx).is_err(), "purpose is bound");
        assert!(
            WrapKey::from_bytes([8u8; 32])
                .unwrap_file_key(&w, &ctx)
                .is_err()
        );
        let mut bad = w.as_bytes().to_vec();
        for i in 0..bad.len() {
            bad[i] ^= 1;
            assert!(
                wk.unwrap_file_key(&WrappedKey::from_bytes(bad.clone()), &ctx)
                    .is_err()
            );
            bad[i] ^= 1;
        }
        assert!(
            wk.unwrap_file_key(&WrappedKey::from_bytes(bad[..60].to_vec()), &ctx)
                .is_err()
        );
    }

    #[test]
    fn table_key_under_account_key() {
        let rng = SystemRandom::default();
        let amk = DataKey::generate(&rng).unwrap();
        let tmk = DataKey::generate(&rng).unwrap();
        let ctx = WrapContext::new("acct-1", "tbl-7");
        let w = amk.wrap_table_key(&tmk, &ctx, &rng).unwrap();
        assert_eq!(amk.unwrap_table_key(&w, &ctx).unwrap().id(), tmk.id());
        assert!(
            amk.unwrap_table_key(&w, &WrapContext::new("acct-1", "tbl-8"))
                .is_err()
        );
    }
}
