//! The versioned envelope around every stored value: `{"v":<format version>,"d":<value>}`.
//!
//! Values are JSON (serde_json): self-describing, so adding an optional field
//! (`#[serde(default)]`) needs no format bump and old rows keep reading; and readable with
//! the `sqlite3` shell when an operator has to look. Decoding reads `"v"` first and refuses
//! a version it does not know with [`Error::UnknownFormatVersion`] before looking at the
//! body, so a newer build's rows are never misread as garbage.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::key::Key;

/// A value stored in the metadata store under its own format version.
///
/// Other crates may store their own objects through [`MetaTxn::get`](crate::MetaTxn::get)
/// and friends by implementing this trait (in a key namespace of their own).
pub trait Dpo: Serialize + DeserializeOwned {
    /// What it is, for error messages (`"table"`, `"micro-partition"`).
    const WHAT: &'static str;
    /// The format version written in the envelope. Bump it when a change is not
    /// backward-compatible (an older build then refuses the new rows instead of misreading
    /// them), and read the older versions still stored ([`Dpo::OLDEST_READ`]).
    const VERSION: u32;
    /// The oldest format version still read: every version from this one to
    /// [`Dpo::VERSION`] deserializes into this type (the type converts what differs).
    /// By default only [`Dpo::VERSION`].
    const OLDEST_READ: u32 = Self::VERSION;
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    v: u32,
    d: &'a T,
}

/// Serialize `value` in its envelope.
pub(crate) fn encode<D: Dpo>(key: &Key, value: &D) -> Result<Vec<u8>> {
    serde_json::to_vec(&EnvelopeRef {
        v: D::VERSION,
        d: value,
    })
    .map_err(|source| Error::Encode {
        what: D::WHAT,
        key: key.to_string(),
        source,
    })
}

/// Parse an envelope written by [`encode`].
pub(crate) fn decode<D: Dpo>(key: &Key, bytes: &[u8]) -> Result<D> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let decoded = EnvelopeSeed::<D>(PhantomData)
        .deserialize(&mut de)
        .and_then(|d| de.end().map(|()| d))
        .map_err(|source| Error::Decode {
            what: D::WHAT,
            key: key.to_string(),
            source,
        })?;
    match decoded {
        Decoded::Value(d) => Ok(d),
        Decoded::UnknownVersion(found) => Err(Error::UnknownFormatVersion {
            what: D::WHAT,
            key: key.to_string(),
            found,
            supported: D::VERSION,
        }),
    }
}

enum Decoded<T> {
    Value(T),
    UnknownVersion(u32),
}

struct EnvelopeSeed<D>(PhantomData<D>);

impl<'de, D: Dpo> DeserializeSeed<'de> for EnvelopeSeed<D> {
    type Value = Decoded<D>;

    fn deserialize<De: Deserializer<'de>>(self, de: De) -> Result<Self::Value, De::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, D: Dpo> Visitor<'de> for EnvelopeSeed<D> {
    type Value = Decoded<D>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an envelope {\"v\": version, \"d\": value}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if map.next_key::<String>()?.as_deref() != Some("v") {
            return Err(de::Error::custom("envelope must start with \"v\""));
        }
        let version: u32 = map.next_value()?;
        if !(D::OLDEST_READ..=D::VERSION).contains(&version) {
            // Do not try to read a body we do not understand.
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Decoded::UnknownVersion(version));
        }
        if map.next_key::<String>()?.as_deref() != Some("d") {
            return Err(de::Error::missing_field("d"));
        }
        let value: D = map.next_value()?;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Decoded::Value(value))
    }
}

/// Serde helper: `i128` as a decimal string (JSON readers lose precision beyond 2^53).
pub(crate) mod i128_string {
    use super::*;

    pub fn serialize<S: serde::Serializer>(n: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, De: Deserializer<'de>>(de: De) -> Result<i128, De::Error> {
        let s = String::deserialize(de)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Serde helper: `f64` as a JSON number when finite, else `"NaN"` (canonical NaN),
/// `"NaN:<16 hex digits>"` (any other NaN, bit for bit), `"inf"`, `"-inf"`
/// (serde_json would write non-finite floats as `null` and then fail to read them back).
pub(crate) mod f64_json {
    use super::*;

    pub fn serialize<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else if x.is_nan() && x.to_bits() == f64::NAN.to_bits() {
            s.serialize_str("NaN")
        } else if x.is_nan() {
            // Keep the sign and payload: statistics order floats totally (as Arrow does),
            // where -NaN sorts below -inf and payloads order NaNs; a canonical NaN read
            // back in their place would narrow a min/max and prune wrongly.
            s.serialize_str(&format!("NaN:{:016x}", x.to_bits()))
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    struct F64Visitor;

    impl Visitor<'_> for F64Visitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or \"NaN\", \"NaN:<bits>\", \"inf\", \"-inf\"")
        }
        fn visit_f64<E: de::Error>(self, x: f64) -> Result<f64, E> {
            Ok(x)
        }
        #[allow(clippy::cast_precision_loss)] // JSON integers in a float field
        fn visit_i64<E: de::Error>(self, x: i64) -> Result<f64, E> {
            Ok(x as f64)
        }
        #[allow(clippy::cast_precision_loss)]
        fn visit_u64<E: de::Error>(self, x: u64) -> Result<f64, E> {
            Ok(x as f64)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<f64, E> {
            match s {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => match other
                    .strip_prefix("NaN:")
                    .map(|h| u64::from_str_radix(h, 16))
                {
                    Some(Ok(bits)) if f64::from_bits(bits).is_nan() => Ok(f64::from_bits(bits)),
                    _ => Err(E::custom(format!("not a float: {other:?}"))),
                },
            }
        }
    }

    pub fn deserialize<'de, De: Deserializer<'de>>(de: De) -> Result<f64, De::Error> {
        de.deserialize_any(F64Visitor)
    }
}

/// Parses a versioned JSON document `{"format": …, "v": …, …}` — a file or message
/// format of its own, not a DPO: checks the `format` tag when `format` is given (`what` names
/// the kind of document in the reason) and refuses any `v` but `version`, before reading the
/// rest. The error is a reason for the caller to put beside the file or message it names.
pub fn decode_versioned<T: DeserializeOwned>(
    bytes: &[u8],
    format: Option<&str>,
    what: &str,
    version: u32,
) -> std::result::Result<T, String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        format: Option<String>,
        v: u32,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if let Some(want) = format
        && probe.format.as_deref() != Some(want)
    {
        return Err(format!(
            "not a {what} (format {:?})",
            probe.format.unwrap_or_default()
        ));
    }
    if probe.v != version {
        return Err(format!(
            "format version {} is not supported (this build reads {version})",
            probe.v
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Implements [`Dpo`] at envelope version 1 for a serde type: `impl_dpo!(MyDpo, "my thing")`
/// (the name is what errors call a value of the type).
#[macro_export]
macro_rules! impl_dpo {
    ($t:ty, $what:literal) => {
        impl $crate::Dpo for $t {
            const WHAT: &'static str = $what;
            const VERSION: u32 = 1;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        a: u32,
    }
    impl Dpo for Thing {
        const WHAT: &'static str = "thing";
        const VERSION: u32 = 1;
    }

    #[test]
    fn round_trip_and_golden() {
        let k = Key::root("x");
        let bytes = encode(&k, &Thing { a: 7 }).unwrap();
        assert_eq!(bytes, br#"{"v":1,"d":{"a":7}}"#);
        assert_eq!(decode::<Thing>(&k, &bytes).unwrap(), Thing { a: 7 });
        // Unknown fields (written by a newer compatible build) are ignored.
        assert_eq!(
            decode::<Thing>(&k, br#"{"v":1,"d":{"a":7,"b":2},"x":0}"#).unwrap(),
            Thing { a: 7 }
        );
    }

    #[test]
    fn unknown_version_is_a_clear_error() {
        let k = Key::root("x").u64(3);
        let err = decode::<Thing>(&k, br#"{"v":2,"d":{"whatever":[1,2]}}"#).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownFormatVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "thing at x/3 has format version 2; this build reads version 1"
        );
    }

    /// A type that reads older versions reads them, and still refuses newer ones.
    #[test]
    fn older_versions_read_when_the_type_says_so() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Grown {
            a: u32,
            #[serde(default)]
            b: u32,
        }
        impl Dpo for Grown {
            const WHAT: &'static str = "grown";
            const VERSION: u32 = 3;
            const OLDEST_READ: u32 = 2;
        }
        let k = Key::root("x");
        assert_eq!(
            encode(&k, &Grown { a: 1, b: 2 }).unwrap(),
            br#"{"v":3,"d":{"a":1,"b":2}}"#
        );
        assert_eq!(
            decode::<Grown>(&k, br#"{"v":2,"d":{"a":1}}"#).unwrap(),
            Grown { a: 1, b: 0 }
        );
        for refused in [&br#"{"v":1,"d":{"a":1}}"#[..], br#"{"v":4,"d":{"a":1}}"#] {
            assert!(matches!(
                decode::<Grown>(&k, refused),
                Err(Error::UnknownFormatVersion { supported: 3, .. })
            ));
        }
        // A type that says nothing reads its own version only.
        assert!(decode::<Thing>(&k, br#"{"v":0,"d":{"a":7}}"#).is_err());
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let k = Key::root("x");
        for bad in [
            &br#"{"d":{"a":1},"v":1}"#[..],
            br#"{"v":1}"#,
            br#"{"v":1,"d":{"a":"no"}}"#,
            b"not json",
            br#"{"v":1,"d":{"a":1}} trailing"#,
        ] {
            let err = decode::<Thing>(&k, bad).unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn floats_round_trip_bit_for_bit() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct F(#[serde(with = "f64_json")] f64);
        let payload_nan = f64::from_bits(0x7ff8_0000_0000_0001);
        let negative_nan = f64::from_bits(0xfff8_0000_0000_0000);
        for x in [
            0.0,
            -0.0,
            1.5,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            payload_nan,
            negative_nan,
        ] {
            let json = serde_json::to_string(&F(x)).unwrap();
            let back: F = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0.to_bits(), x.to_bits(), "{x} via {json}");
        }
        assert_eq!(serde_json::to_string(&F(f64::NAN)).unwrap(), "\"NaN\"");
        assert_eq!(
            serde_json::to_string(&F(negative_nan)).unwrap(),
            "\"NaN:fff8000000000000\""
        );
        assert!(
            serde_json::from_str::<F>("\"NaN:0000000000000001\"").is_err(),
            "not a NaN"
        );
    }
}
