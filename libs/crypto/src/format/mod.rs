//! The encrypted file format (one format for every encrypted file Tern writes).
//!
//! ```text
//! header (69 bytes for derived keys, 122 for a wrapped DEK)
//!  off len field
//!   0   4  magic "TERN"
//!   4   1  format version (1)
//!   5   1  key reference kind: 1 = derived from a master key, 2 = wrapped DEK
//!   6   2  header length in bytes, u16 big-endian (everything up to and including the tag)
//!   8   4  chunk size: plaintext bytes per chunk, u32 big-endian (16 B ..= 16 MiB)
//!  12   8  nonce prefix (random per file)
//!  20   …  key reference body
//!            kind 1: master kind (1 = table master key, 2 = RepMK) ‖ master key id (16)
//!            kind 2: diversifier (u64be Unix seconds) ‖ wrapped length (1) ‖ wrapped DEK (61)
//! len-32 32 header tag = HMAC-SHA256(header key, header[0 .. len-32])
//!
//! chunks: chunk i = AES-256-GCM(aead key,
//!                               nonce = nonce prefix ‖ u32be(i),
//!                               aad   = SHA-256(header) ‖ u32be(i) ‖ last (0 | 1),
//!                               plaintext[i * chunk_size ..][.. chunk_size]) ‖ tag (16)
//! ```
//!
//! The file key `K` (see [`crate::keysource`]) is never used directly: the AEAD key is
//! `HKDF-Expand(K, "tern/v1/file/aead")` and the header key `HKDF-Expand(K,
//! "tern/v1/file/header")`.
//!
//! Guarantees:
//!
//! - **Every chunk is full except the last**, which holds 1..=chunk_size bytes (0 only when
//!   the file is empty: an empty file is one empty final chunk). So the plaintext length,
//!   the chunk count and the byte range of every chunk follow from the object length alone,
//!   and range reads fetch only the chunks they need.
//! - **STREAM construction** (Hoang, Reyhanitabar, Rogaway, Vizár 2015): the chunk index is in
//!   the nonce and the associated data, and only the final chunk is sealed with `last = 1`.
//!   Reordering, dropping, duplicating or appending chunks, or truncating the file at any
//!   point, makes some chunk fail to open.
//! - **The header is authenticated twice**: by its own tag (checked before any chunk, which
//!   also commits to the key, as GCM alone does not) and by its digest in every chunk's
//!   associated data.
//! - **Nonces never repeat under a key**: file keys are unique per file (random DEKs, or
//!   HKDF of a master key with the file's path/name), the nonce prefix is random, and the
//!   counter is unique within the file.
//! - A file needs at most 2^32 chunks (1 PiB at the default chunk size).

use std::ops::Range;

use ring::aead;

use crate::diversifier::Diversifier;
use crate::error::{Error, HeaderFault, Result};
use crate::kdf;
use crate::keys::{FileKey, KEY_LEN, KeyId, WrappedKey};

/// The four bytes every encrypted file starts with.
pub const MAGIC: [u8; 4] = *b"TERN";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of a chunk's authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of the per-file nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 8;
/// Length of the header tag.
pub const HEADER_TAG_LEN: usize = 32;
/// Smallest allowed chunk size.
pub const MIN_CHUNK_SIZE: u32 = 16;
/// Largest allowed chunk size (bounds the memory a reader needs for one chunk).
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Default chunk size: 256 KiB of plaintext per chunk.
///
/// Re-encryption throughput is the same from 64 KiB to 1 MiB chunks (the per-chunk cost,
/// one GCM finalisation and 16 tag bytes, is under 0.5 % at 256 KiB; copies are bound by
/// memory bandwidth). Smaller chunks cut what a range read must fetch and verify (a Parquet
/// footer read pulls one chunk) and the buffer each open reader or writer holds, and a
/// 256 KiB chunk stays in a core's L2 cache while it is copied, opened and sealed.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;
/// Largest header this build accepts.
pub const MAX_HEADER_LEN: usize = 1024;

const FIXED_LEN: usize = 20;
const KIND_DERIVED: u8 = 1;
const KIND_WRAPPED: u8 = 2;

/// Which master key a derived file key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MasterKind {
    /// A table master key; the file key is bound to the object path.
    Table,
    /// A replication master key; the file key is bound to the file name.
    Replication,
}

impl MasterKind {
    fn code(self) -> u8 {
        match self {
            MasterKind::Table => 1,
            MasterKind::Replication => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(MasterKind::Table),
            2 => Some(MasterKind::Replication),
            _ => None,
        }
    }
}

/// Which key encrypts a file and how it is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRef {
    /// `HKDF(master, info = path or file name)`; the header names the master key by id.
    Derived {
        /// Kind of master key.
        master: MasterKind,
        /// Its id.
        master_id: KeyId,
    },
    /// A random DEK wrapped under `HMAC(GMK, diversifier)`.
    WrappedDek {
        /// The wrapping key's diversifier.
        diversifier: Diversifier,
        /// The wrapped DEK.
        wrapped: WrappedKey,
    },
}

impl KeyRef {
    /// A short name of the kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            KeyRef::Derived {
                master: MasterKind::Table,
                ..
            } => "table-derived key",
            KeyRef::Derived {
                master: MasterKind::Replication,
                ..
            } => "replication-derived key",
            KeyRef::WrappedDek { .. } => "GMK-wrapped DEK",
        }
    }

    fn body_len(&self) -> usize {
        match self {
            KeyRef::Derived { .. } => 17,
            KeyRef::WrappedDek { wrapped, .. } => 9 + wrapped.as_bytes().len(),
        }
    }
}

/// A parsed (or freshly built) file header. Holds its encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    chunk_size: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    key_ref: KeyRef,
    bytes: Vec<u8>,
}

impl Header {
    /// The header length declared by the first 8 bytes of a file, after checking magic and
    /// version. Lets a reader fetch exactly the header.
    pub fn declared_len(prefix: &[u8]) -> Result<usize, HeaderFault> {
        let fixed: &[u8; 8] = prefix
            .get(..8)
            .and_then(|p| p.try_into().ok())
            .ok_or(HeaderFault::TooShort)?;
        if fixed[..4] != MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if fixed[4] != FORMAT_VERSION {
            return Err(HeaderFault::UnsupportedVersion(fixed[4]));
        }
        let len = u16::from_be_bytes([fixed[6], fixed[7]]);
        let n = usize::from(len);
        if !(FIXED_LEN + HEADER_TAG_LEN..=MAX_HEADER_LEN).contains(&n) {
            return Err(HeaderFault::BadLength(len));
        }
        Ok(n)
    }

    /// Parses the header at the start of `bytes` (which may continue with chunks). Never
    /// panics; checks structure only — the tag is checked when a key is supplied.
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderFault> {
        let len = Self::declared_len(bytes)?;
        let raw = bytes.get(..len).ok_or(HeaderFault::TooShort)?;
        let bad_len = || HeaderFault::BadLength(u16::try_from(len).unwrap_or(u16::MAX));
        let chunk_size = u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(HeaderFault::BadChunkSize(chunk_size));
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&raw[12..FIXED_LEN]);
        let body = &raw[FIXED_LEN..len - HEADER_TAG_LEN];
        let key_ref = match raw[5] {
            KIND_DERIVED => {
                if body.len() != 17 {
                    return Err(bad_len());
                }
                let master = MasterKind::from_code(body[0])
                    .ok_or(HeaderFault::UnknownMasterKind(body[0]))?;
                let mut id = [0u8; 16];
                id.copy_from_slice(&body[1..17]);
                KeyRef::Derived {
                    master,
                    master_id: KeyId(id),
                }
            }
            KIND_WRAPPED => {
                let (div, rest) = body.split_at_checked(8).ok_or_else(bad_len)?;
                let (&wlen, wrapped) = rest.split_first().ok_or_else(bad_len)?;
                if wrapped.len() != usize::from(wlen) {
                    return Err(bad_len());
                }
                let mut d = [0u8; 8];
                d.copy_from_slice(div);
                KeyRef::WrappedDek {
                    diversifier: Diversifier::from_unix_secs(u64::from_be_bytes(d)),
                    wrapped: WrappedKey::from_bytes(wrapped.to_vec()),
                }
            }
            other => return Err(HeaderFault::UnknownKeyKind(other)),
        };
        Ok(Header {
            chunk_size,
            nonce_prefix,
            key_ref,
            bytes: raw.to_vec(),
        })
    }

    /// Encodes a header and computes its tag with `file_key`.
    fn build(
        file_key: &FileKey,
        key_ref: KeyRef,
        chunk_size: u32,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<Header> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(Error::InvalidConfig {
                field: "chunk_size",
                reason: "must be between 16 bytes and 16 MiB",
            });
        }
        let len = FIXED_LEN + key_ref.body_len() + HEADER_TAG_LEN;
        let len16 = u16::try_from(len)
            .ok()
            .filter(|_| len <= MAX_HEADER_LEN)
            .ok_or(Error::Internal {
                what: "header too long",
            })?;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&MAGIC);
        b.push(FORMAT_VERSION);
        match &key_ref {
            KeyRef::Derived { master, master_id } => {
                b.push(KIND_DERIVED);
                b.extend_from_slice(&len16.to_be_bytes());
                b.extend_from_slice(&chunk_size.to_be_bytes());
                b.extend_from_slice(&nonce_prefix);
                b.push(master.code());
                b.extend_from_slice(&master_id.0);
            }
            KeyRef::WrappedDek {
                diversifier,
                wrapped,
            } => {
                let w = wrapped.as_bytes();
                let wlen = u8::try_from(w.len()).map_err(|_| Error::Internal {
                    what: "wrapped key too long",
                })?;
                b.push(KIND_WRAPPED);
                b.extend_from_slice(&len16.to_be_bytes());
                b.extend_from_slice(&chunk_size.to_be_bytes());
                b.extend_from_slice(&nonce_prefix);
                b.extend_from_slice(&diversifier.unix_secs().to_be_bytes());
                b.push(wlen);
                b.extend_from_slice(w);
            }
        }
        let tag = header_tag(file_key, &b)?;
        b.extend_from_slice(tag.as_ref());
        Ok(Header {
            chunk_size,
            nonce_prefix,
            key_ref,
            bytes: b,
        })
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a header is never empty. (Pairs with [`Self::len`].)
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The encoded header.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The per-file nonce prefix.
    pub fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        self.nonce_prefix
    }

    /// Which key encrypts the file.
    pub fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }

    /// The format version (always [`FORMAT_VERSION`] for a parsed header).
    pub fn version(&self) -> u8 {
        FORMAT_VERSION
    }
}

fn header_tag(file_key: &FileKey, bytes: &[u8]) -> Result<ring::hmac::Tag> {
    let mut hk = zeroize::Zeroizing::new([0u8; KEY_LEN]);
    kdf::hkdf_expand_sha256(file_key.secret(), kdf::FILE_HEADER_INFO, &mut hk[..])?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hk[..]);
    Ok(ring::hmac::sign(&key, bytes))
}

/// Where the chunks of a file lie, computed from the header length, the chunk size and the
/// plaintext or object length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Header length.
    pub header_len: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u64,
    /// Number of chunks (at least 1).
    pub chunks: u64,
    /// Plaintext bytes in the last chunk.
    pub last_len: u64,
}

impl Layout {
    const MAX_CHUNKS: u64 = 1 << 32;

    /// Layout of a file holding `plaintext_len` bytes; `None` if it needs more than 2^32
    /// chunks.
    pub fn for_plaintext(header_len: usize, chunk_size: u32, plaintext_len: u64) -> Option<Self> {
        let c = u64::from(chunk_size);
        let chunks = plaintext_len.div_ceil(c).max(1);
        if chunks > Self::MAX_CHUNKS {
            return None;
        }
        Some(Layout {
            header_len: header_len as u64,
            chunk_size: c,
            chunks,
            last_len: plaintext_len - (chunks - 1) * c,
        })
    }

    /// Layout of an object of `object_len` bytes; `None` if no valid file has that length.
    pub fn for_object(header_len: usize, chunk_size: u32, object_len: u64) -> Option<Self> {
        let c = u64::from(chunk_size);
        let stride = c + TAG_LEN as u64;
        let body = object_len.checked_sub(header_len as u64)?;
        let chunks = body.div_ceil(stride);
        if chunks == 0 || chunks > Self::MAX_CHUNKS {
            return None;
        }
        let last_ct = body - (chunks - 1) * stride;
        let last_len = last_ct.checked_sub(TAG_LEN as u64)?;
        if last_len == 0 && chunks > 1 {
            return None; // only an empty file has an empty final chunk
        }
        Some(Layout {
            header_len: header_len as u64,
            chunk_size: c,
            chunks,
            last_len,
        })
    }

    /// Plaintext length.
    pub fn plaintext_len(&self) -> u64 {
        (self.chunks - 1) * self.chunk_size + self.last_len
    }

    /// Object (ciphertext) length.
    pub fn object_len(&self) -> u64 {
        self.header_len + self.plaintext_len() + self.chunks * TAG_LEN as u64
    }

    /// Bytes of one sealed full chunk.
    pub fn stride(&self) -> u64 {
        self.chunk_size + TAG_LEN as u64
    }

    /// Plaintext bytes in chunk `i`.
    pub fn chunk_plain_len(&self, i: u64) -> u64 {
        if i + 1 == self.chunks {
            self.last_len
        } else {
            self.chunk_size
        }
    }

    /// Byte range of sealed chunks `chunks` in the object.
    pub fn sealed_range(&self, chunks: Range<u64>) -> Range<u64> {
        let start = self.header_len + chunks.start * self.stride();
        let end = if chunks.end >= self.chunks {
            self.object_len()
        } else {
            self.header_len + chunks.end * self.stride()
        };
        start..end
    }

    /// The chunks holding plaintext bytes `range` (non-empty, within the plaintext).
    pub fn chunks_for(&self, range: &Range<u64>) -> Range<u64> {
        let first = range.start / self.chunk_size;
        let end = (range.end.saturating_sub(1) / self.chunk_size + 1).min(self.chunks);
        first..end.max(first)
    }
}

/// The keyed state of one file: its AEAD key, nonce prefix and header digest.
pub(crate) struct FileCipher {
    aead: aead::LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    digest: [u8; 32],
}

impl FileCipher {
    /// A header for a new file and the cipher that seals its chunks.
    pub(crate) fn create(
        file_key: &FileKey,
        key_ref: KeyRef,
        chunk_size: u32,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<(Header, FileCipher)> {
        let header = Header::build(file_key, key_ref, chunk_size, nonce_prefix)?;
        let cipher = Self::keyed(file_key, &header)?;
        Ok((header, cipher))
    }

    /// Checks `header`'s tag under `file_key` and returns the cipher that opens the chunks.
    pub(crate) fn open(file_key: &FileKey, header: &Header, path: &str) -> Result<FileCipher> {
        let (signed, tag) = header.bytes.split_at(header.bytes.len() - HEADER_TAG_LEN);
        let mut hk = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        kdf::hkdf_expand_sha256(file_key.secret(), kdf::FILE_HEADER_INFO, &mut hk[..])?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hk[..]);
        ring::hmac::verify(&key, signed, tag).map_err(|_| Error::decrypt(path))?;
        Self::keyed(file_key, header)
    }

    fn keyed(file_key: &FileKey, header: &Header) -> Result<FileCipher> {
        let mut ak = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        kdf::hkdf_expand_sha256(file_key.secret(), kdf::FILE_AEAD_INFO, &mut ak[..])?;
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &ak[..])
            .map_err(|_| Error::Internal { what: "aead key" })?;
        Ok(FileCipher {
            aead: aead::LessSafeKey::new(unbound),
            nonce_prefix: header.nonce_prefix,
            digest: kdf::sha256(&header.bytes),
        })
    }

    fn nonce_aad(&self, index: u64, last: bool) -> Option<(aead::Nonce, [u8; 37])> {
        let i = u32::try_from(index).ok()?.to_be_bytes();
        let mut nonce = [0u8; 12];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..].copy_from_slice(&i);
        let mut aad = [0u8; 37];
        aad[..32].copy_from_slice(&self.digest);
        aad[32..36].copy_from_slice(&i);
        aad[36] = u8::from(last);
        Some((aead::Nonce::assume_unique_for_key(nonce), aad))
    }

    /// Seals chunk `index` in place: `buf` holds the plaintext followed by [`TAG_LEN`] bytes
    /// of room for the tag.
    pub(crate) fn seal(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<()> {
        let fail = || Error::Internal { what: "chunk seal" };
        let split = buf.len().checked_sub(TAG_LEN).ok_or_else(fail)?;
        let (nonce, aad) = self.nonce_aad(index, last).ok_or_else(fail)?;
        let (plain, tag_out) = buf.split_at_mut(split);
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), plain)
            .map_err(|_| fail())?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens chunk `index` in place (`buf` = sealed chunk including its tag); the plaintext
    /// is then `buf[..buf.len() - TAG_LEN]`. `Err(())` if it does not authenticate.
    pub(crate) fn open_chunk(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<(), ()> {
        if buf.len() < TAG_LEN {
            return Err(());
        }
        let (nonce, aad) = self.nonce_aad(index, last).ok_or(())?;
        self.aead
            .open_in_place(nonce, aead::Aad::from(aad), buf)
            .map(|_| ())
            .map_err(|_| ())
    }
}

/// Encrypts `plaintext` in memory under `file_key` (the key `key_ref` names).
pub fn seal_bytes(
    file_key: &FileKey,
    key_ref: KeyRef,
    chunk_size: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    plaintext: &[u8],
    name: &str,
) -> Result<Vec<u8>> {
    let (header, cipher) = FileCipher::create(file_key, key_ref, chunk_size, nonce_prefix)?;
    let layout = Layout::for_plaintext(header.len(), chunk_size, plaintext.len() as u64)
        .ok_or_else(|| Error::TooLarge {
            path: name.to_owned(),
        })?;
    let total = usize::try_from(layout.object_len()).map_err(|_| Error::TooLarge {
        path: name.to_owned(),
    })?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(header.as_bytes());
    let c = chunk_size as usize;
    for i in 0..layout.chunks {
        let start = i as usize * c;
        let end = (start + c).min(plaintext.len());
        let at = out.len();
        out.extend_from_slice(&plaintext[start..end]);
        out.resize(out.len() + TAG_LEN, 0);
        cipher.seal(i, i + 1 == layout.chunks, &mut out[at..])?;
    }
    Ok(out)
}

/// Decrypts a whole file held in memory whose key is `file_key`. `path` names the file in
/// errors.
pub fn open_bytes(file_key: &FileKey, ciphertext: &[u8], path: &str) -> Result<Vec<u8>> {
    let header = Header::parse(ciphertext).map_err(|f| Error::header(path, f))?;
    let cipher = FileCipher::open(file_key, &header, path)?;
    open_body(&cipher, &header, &ciphertext[header.len()..], path)
}

/// Decrypts the chunks following a verified header.
pub(crate) fn open_body(
    cipher: &FileCipher,
    header: &Header,
    body: &[u8],
    path: &str,
) -> Result<Vec<u8>> {
    let layout = Layout::for_object(
        header.len(),
        header.chunk_size,
        (header.len() + body.len()) as u64,
    )
    .ok_or_else(|| Error::decrypt(path))?;
    let mut buf = body.to_vec();
    let stride = layout.stride() as usize;
    let mut plain_len = 0usize;
    for (i, sealed) in buf.chunks_mut(stride).enumerate() {
        let i = i as u64;
        cipher
            .open_chunk(i, i + 1 == layout.chunks, sealed)
            .map_err(|()| Error::decrypt(path))?;
        plain_len += sealed.len() - TAG_LEN;
    }
    // squeeze out the tags
    let c = header.chunk_size as usize;
    let mut w = 0usize;
    for i in 0..layout.chunks as usize {
        let n = layout.chunk_plain_len(i as u64) as usize;
        buf.copy_within(i * stride..i * stride + n, w);
        w += n;
        debug_assert!(n <= c);
    }
    buf.truncate(plain_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        for c in [16u32, 17, 64, 1000] {
            for p in [0u64, 1, 15, 16, 17, 63, 64, 65, 1000, 4096, 10_000] {
                let l = Layout::for_plaintext(69, c, p).unwrap();
                assert_eq!(l.plaintext_len(), p);
                let o = Layout::for_object(69, c, l.object_len()).unwrap();
                assert_eq!(o, l, "c={c} p={p}");
            }
        }
        // a full chunk followed by an empty final chunk is not a valid layout
        assert!(Layout::for_object(69, 16, 69 + 32 + 16).is_none());
        assert!(Layout::for_object(69, 16, 69 + 15).is_none());
        assert!(Layout::for_object(69, 16, 68).is_none());
    }

    #[test]
    fn chunks_for_ranges() {
        let l = Layout::for_plaintext(0, 16, 40).unwrap(); // 16 16 8
        assert_eq!(l.chunks_for(&(0..1)), 0..1);
        assert_eq!(l.chunks_for(&(15..17)), 0..2);
        assert_eq!(l.chunks_for(&(16..32)), 1..2);
        assert_eq!(l.chunks_for(&(0..40)), 0..3);
        assert_eq!(l.chunks_for(&(39..40)), 2..3);
        assert_eq!(l.sealed_range(0..3), 0..40 + 48);
        assert_eq!(l.sealed_range(2..3), 64..88);
    }

    #[test]
    fn seal_open_in_memory() {
        let k = FileKey::from_bytes([5u8; 32]);
        let r = KeyRef::Derived {
            master: MasterKind::Table,
            master_id: KeyId([1; 16]),
        };
        for n in [0usize, 1, 15, 16, 17, 100] {
            let p: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let c = seal_bytes(&k, r.clone(), 16, [7; 8], &p, "f").unwrap();
            assert_eq!(open_bytes(&k, &c, "f").unwrap(), p);
        }
    }
}
