//! Ordered tuple keys.
//!
//! A key is a tuple of elements, each encoded as a tag byte followed by its body:
//!
//! | element | tag | body |
//! |---|---|---|
//! | string | `0x01` | the UTF-8 bytes with every `0x00` written as `0x00 0xFF`, then `0x00` |
//! | `u64` | `0x02` | 8 bytes big-endian |
//!
//! Properties the store relies on (tested below):
//!
//! * **Order**: comparing two encoded keys byte-wise orders them as tuples (element by
//!   element; strings lexically, numbers numerically), so a range scan walks versions in
//!   numeric order.
//! * **Prefix**: the encoding of a tuple is a prefix of the encoding of every longer tuple
//!   that starts with it, and no key of another tuple falls between them. Every element
//!   starts with a tag byte below `0xFF`, so all keys below prefix `P` lie in
//!   `[P, P ++ 0xFF)` ([`Key::prefix_range`]).
//! * **Unambiguous**: the encoding decodes back to the same tuple ([`Key::elements`]).

use std::fmt;

use crate::error::{Error, Result};

const TAG_STR: u8 = 0x01;
const TAG_U64: u8 = 0x02;

/// An encoded tuple key. Build with [`Key::root`] and the chaining methods.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Vec<u8>);

/// One decoded element of a [`Key`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// A string element.
    Str(String),
    /// A number element.
    U64(u64),
}

impl Key {
    /// A key whose first element is the namespace `ns` (`"tbl"`, `"db"`, …).
    pub fn root(ns: &str) -> Self {
        Key(Vec::with_capacity(64)).str(ns)
    }

    /// Append a string element.
    pub fn str(mut self, s: &str) -> Self {
        self.0.push(TAG_STR);
        for &b in s.as_bytes() {
            self.0.push(b);
            if b == 0 {
                self.0.push(0xFF);
            }
        }
        self.0.push(0);
        self
    }

    /// Append a number element.
    pub fn u64(mut self, n: u64) -> Self {
        self.0.push(TAG_U64);
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Wrap raw bytes read back from a backend (not validated: see [`Key::elements`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Key(bytes)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `[start, end)`: this key and every key that extends it.
    pub fn prefix_range(&self) -> (Vec<u8>, Vec<u8>) {
        let mut end = self.0.clone();
        end.push(0xFF);
        (self.0.clone(), end)
    }

    /// Decode the elements.
    pub fn elements(&self) -> Result<Vec<Element>> {
        let bad = |reason| Error::MalformedKey {
            key: hex(&self.0),
            reason,
        };
        let mut out = Vec::new();
        let mut rest = self.0.as_slice();
        while let Some((&tag, body)) = rest.split_first() {
            match tag {
                TAG_STR => {
                    let mut s = Vec::new();
                    let mut i = 0;
                    loop {
                        match body.get(i) {
                            None => return Err(bad("unterminated string")),
                            Some(0) if body.get(i + 1) == Some(&0xFF) => {
                                s.push(0);
                                i += 2;
                            }
                            Some(0) => break,
                            Some(&b) => {
                                s.push(b);
                                i += 1;
                            }
                        }
                    }
                    let s = String::from_utf8(s).map_err(|_| bad("string is not UTF-8"))?;
                    out.push(Element::Str(s));
                    rest = &body[i + 1..];
                }
                TAG_U64 => {
                    let (n, tail) = body
                        .split_first_chunk::<8>()
                        .ok_or_else(|| bad("truncated number"))?;
                    out.push(Element::U64(u64::from_be_bytes(*n)));
                    rest = tail;
                }
                _ => return Err(bad("unknown element tag")),
            }
        }
        Ok(out)
    }

    /// The last element as a number (e.g. the version of a `tbl/<t>/ver/<v>` key).
    pub fn last_u64(&self) -> Result<u64> {
        match self.elements()?.pop() {
            Some(Element::U64(n)) => Ok(n),
            _ => Err(Error::MalformedKey {
                key: hex(&self.0),
                reason: "expected a number as last element",
            }),
        }
    }
}

/// The smallest key strictly greater than `key` (used to continue a scan after it).
pub(crate) fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders `tbl/t1/ver/5`; a key that does not decode is shown in hex.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.elements() {
            Ok(elements) => {
                for (i, e) in elements.iter().enumerate() {
                    if i > 0 {
                        f.write_str("/")?;
                    }
                    match e {
                        Element::Str(s) => write!(f, "{}", s.escape_debug())?,
                        Element::U64(n) => write!(f, "{n}")?,
                    }
                }
                Ok(())
            }
            Err(_) => write!(f, "0x{}", hex(&self.0)),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_bytes() {
        // Stored format: changing these bytes needs a migration of every stored key.
        let k = Key::root("tbl").str("t1").str("ver").u64(5);
        assert_eq!(
            k.as_bytes(),
            b"\x01tbl\x00\x01t1\x00\x01ver\x00\x02\x00\x00\x00\x00\x00\x00\x00\x05"
        );
        assert_eq!(k.to_string(), "tbl/t1/ver/5");
        assert_eq!(Key::root("a\0b").as_bytes(), b"\x01a\x00\xffb\x00");
    }

    #[test]
    fn malformed_keys_are_errors() {
        for bad in [
            &b"\x01abc"[..],
            b"\x02\x00\x01",
            b"\x07",
            b"\x01\xff\xfe\x00",
        ] {
            let k = Key::from_bytes(bad.to_vec());
            assert!(
                matches!(k.elements(), Err(Error::MalformedKey { .. })),
                "{bad:?}"
            );
            assert!(k.to_string().starts_with("0x"));
        }
        assert!(Key::root("x").last_u64().is_err());
    }

    fn element() -> impl Strategy<Value = Element> {
        prop_oneof![
            any::<u64>().prop_map(Element::U64),
            // Bias towards NUL and short strings, where escaping and prefixes matter.
            proptest::collection::vec(
                prop_oneof![Just('\0'), Just('a'), Just('b'), any::<char>()],
                0..4
            )
            .prop_map(|c| Element::Str(c.into_iter().collect())),
        ]
    }

    fn encode(elements: &[Element]) -> Key {
        let mut k = Key(Vec::new());
        for e in elements {
            k = match e {
                Element::Str(s) => k.str(s),
                Element::U64(n) => k.u64(*n),
            };
        }
        k
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn order_prefix_and_round_trip(
            a in proptest::collection::vec(element(), 0..4),
            b in proptest::collection::vec(element(), 0..4),
        ) {
            let (ka, kb) = (encode(&a), encode(&b));
            prop_assert_eq!(ka.elements().unwrap(), a.clone());
            // Byte order equals tuple order (Element orders Str before U64, like the tags).
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            // b extends a exactly when b's key lies in a's prefix range.
            let (start, end) = ka.prefix_range();
            let inside = kb.as_bytes() >= start.as_slice() && kb.as_bytes() < end.as_slice();
            prop_assert_eq!(inside, b.starts_with(&a));
        }
    }
}
