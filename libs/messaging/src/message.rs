//! [`GlobalMessage`] and the versioned plaintext of a message file.
//!
//! A message file's plaintext (before encryption in Tern's file format) is, version 1:
//!
//! ```text
//! magic "TERNMSGF" (8) ‖ u16be version = 1
//! ‖ str sender ‖ str receiver ‖ u64be seq
//! ‖ str next_file (object path of the next file) ‖ u64be next_diversifier (Unix s)
//! ‖ u32be count ‖ count × (u32be len ‖ message record of len bytes)
//!
//! message record, version 1:
//!   u16be version = 1 ‖ str type ‖ str id ‖ str origin ‖ i64be created_at_ms
//!   ‖ bytes payload ‖ u32be bodies ‖ bodies × (u32be n ‖ u64be len ‖ u64be diversifier)
//! str = u16be len ‖ UTF-8;  bytes = u32be len ‖ bytes
//! ```
//!
//! Records are length-prefixed so that one malformed record is rejected alone while the
//! rest of the file (and the chain pointer) is still usable. Every length is checked
//! against what remains: decoding never panics and never allocates more than the input.
//! Changing these bytes needs a new version (the golden test pins version 1).

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_crypto::Diversifier;
use tern_storage::layout::{DeploymentId, MessageId};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"TERNMSGF";
/// The message file plaintext version this build writes and reads.
pub const FILE_FORMAT_VERSION: u16 = 1;
/// The message record version this build writes and reads.
pub const RECORD_FORMAT_VERSION: u16 = 1;

/// A message type name: what handler processes it (`tern.cleanup`, `heartbeat`, …).
/// ASCII letters, digits, `.`, `-`, `_`; 1–64 characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageType(String);

impl MessageType {
    /// Validate and wrap a type name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(Self(name))
        } else {
            Err(Error::Invalid {
                what: "message type",
                reason: format!("{name:?}: 1-64 of [A-Za-z0-9._-]"),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageType({:?})", self.0)
    }
}

impl TryFrom<String> for MessageType {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<MessageType> for String {
    fn from(t: MessageType) -> String {
        t.0
    }
}

/// A body file of a message: `from/<origin>/body/<id>/<n>` in the receiver's replication
/// bucket, encrypted with its own DEK wrapped under the GMK-derived key of `diversifier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRef {
    /// Index (the last path segment).
    pub n: u32,
    /// Plaintext length.
    pub len: u64,
    /// Diversifier of its wrapping key.
    pub diversifier: Diversifier,
}

/// A message between deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalMessage {
    /// What handler processes it.
    pub message_type: MessageType,
    /// Unique per sender.
    pub id: MessageId,
    /// The sending deployment.
    pub origin: DeploymentId,
    /// When the sender created it (sender's clock, ms since the epoch).
    pub created_at_ms: i64,
    /// The type-specific payload.
    #[serde(with = "bytes_hex")]
    pub payload: Bytes,
    /// Its body files, in index order.
    pub bodies: Vec<BodyRef>,
}

impl GlobalMessage {
    /// Encodes the message record (version 1).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::default();
        w.u16(RECORD_FORMAT_VERSION);
        w.str(self.message_type.as_str())?;
        w.str(self.id.as_str())?;
        w.str(self.origin.as_str())?;
        w.i64(self.created_at_ms);
        w.bytes(&self.payload)?;
        w.u32(len32(self.bodies.len(), "body count")?);
        for b in &self.bodies {
            w.u32(b.n);
            w.u64(b.len);
            w.u64(b.diversifier.unix_secs());
        }
        Ok(w.0)
    }

    /// Decodes a record written by [`Self::encode`].
    pub fn decode(record: &[u8]) -> Result<Self> {
        let mut r = Reader::new(record);
        let version = r.u16()?;
        if version != RECORD_FORMAT_VERSION {
            return Err(malformed(format!(
                "message record version {version}, this build reads {RECORD_FORMAT_VERSION}"
            )));
        }
        let message_type = MessageType::new(r.str()?)?;
        let id = MessageId::new(r.str()?).map_err(|e| malformed(e.to_string()))?;
        let origin = DeploymentId::new(r.str()?).map_err(|e| malformed(e.to_string()))?;
        let created_at_ms = r.i64()?;
        let payload = Bytes::copy_from_slice(r.bytes()?);
        let count = r.u32()?;
        let mut bodies = Vec::new();
        for _ in 0..count {
            bodies.push(BodyRef {
                n: r.u32()?,
                len: r.u64()?,
                diversifier: Diversifier::from_unix_secs(r.u64()?),
            });
        }
        r.end()?;
        for (i, b) in bodies.iter().enumerate() {
            if u32::try_from(i).ok() != Some(b.n) {
                return Err(malformed("body indexes are not 0, 1, 2, …"));
            }
        }
        Ok(Self {
            message_type,
            id,
            origin,
            created_at_ms,
            payload,
            bodies,
        })
    }

    /// What "the same message" means for a duplicate id: SHA-256 over the type, id, origin,
    /// payload and body lengths (not the creation time or the bodies' diversifiers, which
    /// differ when the same message is created again).
    pub fn digest(&self) -> Result<[u8; 32]> {
        let mut w = Writer::default();
        w.str(self.message_type.as_str())?;
        w.str(self.id.as_str())?;
        w.str(self.origin.as_str())?;
        w.bytes(&self.payload)?;
        w.u32(len32(self.bodies.len(), "body count")?);
        for b in &self.bodies {
            w.u64(b.len);
        }
        Ok(tern_crypto::kdf::sha256(&w.0))
    }
}

/// The plaintext of one message file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFile {
    /// The sending deployment.
    pub sender: DeploymentId,
    /// The receiving deployment.
    pub receiver: DeploymentId,
    /// This file's sequence number.
    pub seq: u64,
    /// Object path of the next file of the chain.
    pub next_file: String,
    /// The diversifier the next file's key is wrapped under.
    pub next_diversifier: Diversifier,
    /// The message records, each decoded separately: a malformed record is an `Err` here
    /// and does not spoil the others.
    pub messages: Vec<Result<GlobalMessage, String>>,
}

impl MessageFile {
    /// Encodes a file holding `messages`.
    pub fn encode(
        sender: &DeploymentId,
        receiver: &DeploymentId,
        seq: u64,
        next_file: &str,
        next_diversifier: Diversifier,
        messages: &[GlobalMessage],
    ) -> Result<Vec<u8>> {
        let records = messages
            .iter()
            .map(GlobalMessage::encode)
            .collect::<Result<Vec<_>>>()?;
        Self::encode_records(sender, receiver, seq, next_file, next_diversifier, &records)
    }

    /// Encodes a file from already encoded records (tests use it to plant bad records).
    pub fn encode_records(
        sender: &DeploymentId,
        receiver: &DeploymentId,
        seq: u64,
        next_file: &str,
        next_diversifier: Diversifier,
        records: &[Vec<u8>],
    ) -> Result<Vec<u8>> {
        let mut w = Writer::default();
        w.0.extend_from_slice(MAGIC);
        w.u16(FILE_FORMAT_VERSION);
        w.str(sender.as_str())?;
        w.str(receiver.as_str())?;
        w.u64(seq);
        w.str(next_file)?;
        w.u64(next_diversifier.unix_secs());
        w.u32(len32(records.len(), "message count")?);
        for r in records {
            w.bytes(r)?;
        }
        Ok(w.0)
    }

    /// Decodes a file's plaintext. A structural problem of the file itself is an error;
    /// problems inside one record are kept per record.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        let mut r = Reader::new(plain);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(malformed("not a message file (bad magic)"));
        }
        let version = r.u16()?;
        if version != FILE_FORMAT_VERSION {
            return Err(malformed(format!(
                "message file version {version}, this build reads {FILE_FORMAT_VERSION}"
            )));
        }
        let sender = DeploymentId::new(r.str()?).map_err(|e| malformed(e.to_string()))?;
        let receiver = DeploymentId::new(r.str()?).map_err(|e| malformed(e.to_string()))?;
        let seq = r.u64()?;
        let next_file = r.str()?.to_string();
        let next_diversifier = Diversifier::from_unix_secs(r.u64()?);
        let count = r.u32()?;
        let mut messages = Vec::new();
        for _ in 0..count {
            let record = r.bytes()?;
            messages.push(GlobalMessage::decode(record).map_err(|e| e.to_string()));
        }
        r.end()?;
        Ok(Self {
            sender,
            receiver,
            seq,
            next_file,
            next_diversifier,
            messages,
        })
    }
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Invalid {
        what: "message file",
        reason: reason.into(),
    }
}

fn len32(n: usize, what: &'static str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Invalid {
        what,
        reason: format!("{n} does not fit in 32 bits"),
    })
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) -> Result<()> {
        let n = u16::try_from(s.len()).map_err(|_| Error::Invalid {
            what: "string field",
            reason: "longer than 65535 bytes".into(),
        })?;
        self.u16(n);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.u32(len32(b.len(), "byte field")?);
        self.0.extend_from_slice(b);
        Ok(())
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(malformed("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<&'a str> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| malformed("string is not UTF-8"))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.u32()?).map_err(|_| malformed("length"))?;
        self.take(n)
    }
    fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed("trailing bytes"))
        }
    }
}

/// Serde helper: bytes as a hex string in metadata rows (JSON arrays of numbers are 4× larger).
pub(crate) mod bytes_hex {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(b.len() * 2);
        for &x in b.iter() {
            out.push(char::from(HEX[usize::from(x >> 4)]));
            out.push(char::from(HEX[usize::from(x & 15)]));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(de::Error::custom("not lowercase hex")),
        };
        let raw = s.as_bytes();
        if raw.len() % 2 != 0 {
            return Err(de::Error::custom("odd hex length"));
        }
        let mut out = Vec::with_capacity(raw.len() / 2);
        for pair in raw.chunks_exact(2) {
            out.push(digit(pair[0])? << 4 | digit(pair[1])?);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> GlobalMessage {
        GlobalMessage {
            message_type: MessageType::new("heartbeat").unwrap(),
            id: MessageId::new("m-1").unwrap(),
            origin: DeploymentId::new("d1").unwrap(),
            created_at_ms: 1_700_000_000_000,
            payload: Bytes::from_static(b"hi"),
            bodies: vec![BodyRef {
                n: 0,
                len: 5,
                diversifier: Diversifier::from_unix_secs(3600),
            }],
        }
    }

    #[test]
    fn golden_bytes_of_version_1() {
        let d1 = DeploymentId::new("d1").unwrap();
        let d2 = DeploymentId::new("d2").unwrap();
        let file = MessageFile::encode(
            &d1,
            &d2,
            7,
            "n",
            Diversifier::from_unix_secs(7200),
            &[sample()],
        )
        .unwrap();
        let hex: String = file.iter().map(|b| format!("{b:02x}")).collect();
        // Stored format: a change here needs a new FILE/RECORD_FORMAT_VERSION.
        assert_eq!(
            hex,
            "5445524e4d53474600010002643100026432000000000000000700016e0000000000001c20\
             000000010000003c0001000968656172746265617400036d2d310002643100000\
             18bcfe56800000000026869000000010000000000000000000000050000000000000e10"
        );
        let back = MessageFile::decode(&file).unwrap();
        assert_eq!(back.seq, 7);
        assert_eq!(back.next_file, "n");
        assert_eq!(back.messages, vec![Ok(sample())]);
    }

    #[test]
    fn one_bad_record_spoils_only_itself() {
        let d1 = DeploymentId::new("d1").unwrap();
        let good = sample().encode().unwrap();
        let mut bad = good.clone();
        bad[0] = 9; // unknown record version
        let file = MessageFile::encode_records(
            &d1,
            &d1,
            1,
            "x",
            Diversifier::from_unix_secs(0),
            &[good, bad, b"\x00\x01".to_vec()],
        )
        .unwrap();
        let f = MessageFile::decode(&file).unwrap();
        assert!(f.messages[0].is_ok());
        assert!(f.messages[1].is_err());
        assert!(f.messages[2].is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(0x7e51), ..ProptestConfig::default() })]

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = MessageFile::decode(&bytes);
            let _ = GlobalMessage::decode(&bytes);
        }

        #[test]
        fn truncations_are_errors(cut in 0usize..100) {
            let d1 = DeploymentId::new("d1").unwrap();
            let file = MessageFile::encode(&d1, &d1, 1, "x", Diversifier::from_unix_secs(0), &[sample()]).unwrap();
            let cut = cut % file.len();
            prop_assert!(MessageFile::decode(&file[..cut]).is_err());
        }
    }
}
