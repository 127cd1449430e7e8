//! Key material.
//!
//! Every key is 256 bits. Key types hold their bytes in a buffer that is zeroized on drop,
//! implement neither `Clone` nor `Display`, and their `Debug` prints only the key's
//! [`KeyId`] (a one-way fingerprint). Share a key with `Arc` rather than copying it.
//!
//! | type | what it is |
//! |---|---|
//! | [`WrapKey`] | `HMAC(GMK, diversifier)`: wraps DEKs and RepMKs on a replication channel |
//! | [`DataKey`] | a key under the deployment's envelope (AMK, TMK) |
//! | [`RepMk`] | a replication master key, random per snapshot response / batch |
//! | [`FileKey`] | the key of one file: a random DEK, or derived from a TMK or RepMK |
//!
//! `ring` expands keys into its own AES and GHASH schedules when a file is opened; those
//! copies live only while the file is being processed and `ring` does not wipe them.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Result;
use crate::kdf;
use crate::random::Random;

/// Key length in bytes.
pub const KEY_LEN: usize = 32;

#[derive(Zeroize, ZeroizeOnDrop)]
struct Secret([u8; KEY_LEN]);

/// A one-way fingerprint of a key: `HMAC-SHA256(key, "tern/v1/key-id")[..16]`. Safe to log,
/// store in headers and compare; reveals nothing about the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    fn of(secret: &[u8; KEY_LEN]) -> Self {
        let mac = kdf::hmac_sha256(secret, kdf::KEY_ID_LABEL);
        let mut id = [0u8; 16];
        id.copy_from_slice(&mac[..16]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&kdf::hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(Secret);

        impl $name {
            /// Takes raw key bytes (from a KMS response or a test vector). New keys come from
            /// [`Self::generate`]. The caller should zeroize its own copy of `bytes`.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(Secret(bytes))
            }

            /// A fresh random key.
            pub fn generate(random: &dyn Random) -> Result<Self> {
                let mut key = Self(Secret([0u8; KEY_LEN]));
                random.fill(&mut key.0 .0)?;
                Ok(key)
            }

            /// The key's fingerprint.
            pub fn id(&self) -> KeyId {
                KeyId::of(&self.0 .0)
            }

            pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
                &self.0 .0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.id())
            }
        }
    };
}

secret_key!(
    /// A wrapping key derived from the global master key for one diversifier:
    /// `HMAC-SHA256(GMK, "tern/v1/wrap-key/" ‖ u64be(diversifier))`, computed by a
    /// [`KeyProvider`](crate::provider::KeyProvider).
    WrapKey
);
secret_key!(
    /// A key protected by the deployment's envelope: an account master key (AMK) or a table
    /// master key (TMK). Produced by
    /// [`KeyProvider::generate_data_key`](crate::provider::KeyProvider::generate_data_key).
    DataKey
);
secret_key!(
    /// A replication master key: random, made by the source for one snapshot response or
    /// replication batch; inbound-stage files are encrypted under keys derived from it.
    RepMk
);
secret_key!(
    /// The key of one encrypted file: a random DEK (message and body files) or a key derived
    /// from a TMK (volume files) or a RepMK (inbound-stage files).
    FileKey
);

impl FileKey {
    /// The key of a volume file: `HKDF-SHA256(salt = "tern/v1/file-key/table", IKM = TMK,
    /// info = path)`. `path` is the object path of the file in its volume.
    pub fn for_table_file(tmk: &DataKey, path: &str) -> Result<Self> {
        let mut key = Self(Secret([0u8; KEY_LEN]));
        kdf::hkdf_sha256(
            kdf::TABLE_FILE_KEY_SALT,
            tmk.secret(),
            path.as_bytes(),
            &mut key.0.0,
        )?;
        Ok(key)
    }

    /// The key of an inbound-stage file: `HKDF-SHA256(salt = "tern/v1/file-key/replication",
    /// IKM = RepMK, info = name)`.
    pub fn for_replicated_file(repmk: &RepMk, name: &str) -> Result<Self> {
        let mut key = Self(Secret([0u8; KEY_LEN]));
        kdf::hkdf_sha256(
            kdf::REPLICATION_FILE_KEY_SALT,
            repmk.secret(),
            name.as_bytes(),
            &mut key.0.0,
        )?;
        Ok(key)
    }
}

/// A key wrapped (encrypted) under another key: opaque bytes, safe to store and send.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Wraps stored bytes (read back from a header, a message or a KMS ciphertext blob).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        WrappedKey(bytes)
    }

    /// The wrapped bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex, to keep the key in text (metadata rows, key references).
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses what [`WrappedKey::to_hex`] wrote; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        from_hex(text).map(WrappedKey)
    }
}

/// `bytes` as lowercase hex, to keep sealed bytes in text (metadata rows).
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses what [`to_hex`] wrote; `None` for anything else.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_key_hex_round_trip() {
        let k = WrappedKey::from_bytes(vec![0, 1, 0xab, 0xff]);
        assert_eq!(k.to_hex(), "0001abff");
        assert_eq!(WrappedKey::from_hex("0001abff"), Some(k));
        for bad in ["0", "zz", "0g", "é0"] {
            assert_eq!(WrappedKey::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_shows_only_the_id() {
        let k = DataKey::from_bytes([7u8; 32]);
        let shown = format!("{k:?}");
        assert!(shown.starts_with("DataKey("), "{shown}");
        assert!(!shown.contains("0707"), "{shown}");
        assert_eq!(shown, format!("DataKey({})", k.id()));
    }

    #[test]
    fn derived_file_keys_differ_by_name_and_master() {
        let tmk = DataKey::from_bytes([1u8; 32]);
        let a = FileKey::for_table_file(&tmk, "a").unwrap();
        let b = FileKey::for_table_file(&tmk, "b").unwrap();
        assert_ne!(a.secret(), b.secret());
        let repmk = RepMk::from_bytes([1u8; 32]);
        let c = FileKey::for_replicated_file(&repmk, "a").unwrap();
        assert_ne!(
            a.secret(),
            c.secret(),
            "table and replication derivations are separated"
        );
    }
}
