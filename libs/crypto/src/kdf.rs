//! The primitive derivations: HMAC-SHA256, HKDF-SHA256 (RFC 5869) and SHA-256, all from
//! `ring`, plus the domain-separation labels Tern feeds them.
//!
//! Every derivation in Tern uses a distinct label so that one key can never be confused
//! with another derived from the same secret:
//!
//! | derivation | construction |
//! |---|---|
//! | GMK wrapping key | `HMAC-SHA256(GMK, "tern/v1/wrap-key/" ‖ u64be(diversifier))` (by the key provider) |
//! | table file key | `HKDF-SHA256(salt = "tern/v1/file-key/table", IKM = TMK, info = object path)` |
//! | replicated file key | `HKDF-SHA256(salt = "tern/v1/file-key/replication", IKM = RepMK, info = file name)` |
//! | file subkeys | `HKDF-Expand(file key, "tern/v1/file/aead")`, `HKDF-Expand(file key, "tern/v1/file/header")` |
//! | key id | `HMAC-SHA256(key, "tern/v1/key-id")[..16]` |

use crate::error::{Error, Result};

/// Salt of table file keys.
pub const TABLE_FILE_KEY_SALT: &[u8] = b"tern/v1/file-key/table";
/// Salt of replicated (inbound-stage) file keys.
pub const REPLICATION_FILE_KEY_SALT: &[u8] = b"tern/v1/file-key/replication";
/// Prefix of the message MACed by the GMK to derive a wrapping key.
pub const WRAP_KEY_LABEL: &[u8] = b"tern/v1/wrap-key/";
/// Info of the AEAD subkey of a file key.
pub const FILE_AEAD_INFO: &[u8] = b"tern/v1/file/aead";
/// Info of the header-MAC subkey of a file key.
pub const FILE_HEADER_INFO: &[u8] = b"tern/v1/file/header";
/// Message MACed to compute a key id.
pub const KEY_ID_LABEL: &[u8] = b"tern/v1/key-id";

/// HMAC-SHA256 (RFC 2104 / FIPS 198-1).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, message);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// HKDF-SHA256 extract-then-expand (RFC 5869), filling `out` (at most 8160 bytes).
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(ikm);
    expand(&prk, info, out)
}

/// HKDF-Expand with `prk` used directly as the pseudorandom key (RFC 5869 §2.3). Only for
/// keys that are already uniformly random (file keys are).
pub fn hkdf_expand_sha256(prk: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
    let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, prk);
    expand(&prk, info, out)
}

fn expand(prk: &ring::hkdf::Prk, info: &[u8], out: &mut [u8]) -> Result<()> {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let bad = || Error::InvalidConfig {
        field: "hkdf output length",
        reason: "at most 255 * 32 bytes",
    };
    let info = [info];
    prk.expand(&info, Len(out.len()))
        .map_err(|_| bad())?
        .fill(out)
        .map_err(|_| bad())
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parse lower- or upper-case hex into `out`; `None` unless `text` is exactly `2 * out.len()`
/// hex digits.
pub(crate) fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut out = [0u8; 3];
        unhex(b"00fFa1", &mut out).unwrap();
        assert_eq!(out, [0x00, 0xff, 0xa1]);
        assert_eq!(hex(&out), "00ffa1");
        assert!(unhex(b"0g0000", &mut out).is_none());
        assert!(unhex(b"00", &mut out).is_none());
    }

    #[test]
    fn hkdf_rejects_oversized_output() {
        let mut out = vec![0u8; 255 * 32 + 1];
        assert!(hkdf_sha256(b"s", b"k", b"i", &mut out).is_err());
    }
}
