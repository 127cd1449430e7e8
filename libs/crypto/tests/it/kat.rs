//! Known-answer tests: the primitives against RFC 4231 / RFC 5869, and our derivations
//! pinned to values computed by an independent implementation (Python's hmac/hashlib).

use tern_crypto::kdf::{hkdf_expand_sha256, hkdf_sha256, hmac_sha256};
use tern_crypto::{DataKey, FileKey, KeyId, KeyProvider, RepMk, SystemRandom};

use crate::common::{D0, hex, local_provider, unhex};

#[test]
fn hmac_sha256_rfc4231() {
    let long_key = [0xaau8; 131];
    let cases: [(&[u8], &[u8], &str); 6] = [
        (
            &[0x0b; 20],
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            &[0xaa; 20],
            &[0xdd; 50],
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        ),
        (
            &[
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                24, 25,
            ],
            &[0xcd; 50],
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        ),
        (
            &long_key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        (
            &long_key,
            b"This is a test using a larger than block-size key and a larger than block-size \
              data. The key needs to be hashed before being used by the HMAC algorithm.",
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ];
    for (i, (key, msg, want)) in cases.iter().enumerate() {
        assert_eq!(
            hex(&hmac_sha256(key, msg)),
            *want,
            "RFC 4231 case {}",
            i + 1
        );
    }
}

#[test]
fn hkdf_sha256_rfc5869() {
    let seq = |r: std::ops::Range<u8>| r.collect::<Vec<u8>>();
    // A.1
    let mut okm = [0u8; 42];
    hkdf_sha256(&seq(0..13), &[0x0b; 22], &seq(0xf0..0xfa), &mut okm).unwrap();
    assert_eq!(
        hex(&okm),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    );
    // A.1 expand step alone, from the RFC's PRK
    let prk = unhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
    let mut okm2 = [0u8; 42];
    hkdf_expand_sha256(&prk, &seq(0xf0..0xfa), &mut okm2).unwrap();
    assert_eq!(okm, okm2);
    // A.2
    let mut okm = [0u8; 82];
    let info: Vec<u8> = (0xb0..=0xffu8).collect();
    hkdf_sha256(&seq(0x60..0xb0), &seq(0..0x50), &info, &mut okm).unwrap();
    assert_eq!(
        hex(&okm),
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c\
         59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71\
         cc30c58179ec3e87c14c01d5c1f3434f1d87"
    );
    // A.3: empty salt and info
    let mut okm = [0u8; 42];
    hkdf_sha256(&[], &[0x0b; 22], &[], &mut okm).unwrap();
    assert_eq!(
        hex(&okm),
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    );
}

fn key32(h: &str) -> [u8; 32] {
    unhex(h).try_into().unwrap()
}

#[test]
fn key_id_is_pinned() {
    let id = DataKey::from_bytes([0x11; 32]).id();
    assert_eq!(id.to_string(), "2fbebed443e0d08552de22e9c71bf3b2");
    assert_eq!(
        id,
        KeyId(
            unhex("2fbebed443e0d08552de22e9c71bf3b2")
                .try_into()
                .unwrap()
        )
    );
}

#[test]
fn table_file_key_is_pinned() {
    let got = FileKey::for_table_file(
        &DataKey::from_bytes([0x11; 32]),
        "acct/a/db/1/tbl/2/mp/fdn27.mp",
    )
    .unwrap();
    let want = FileKey::from_bytes(key32(
        "90f7ca66081addd273a26b869a75dd5ef02ca96c5caeeefe2e9dc45b2498c82f",
    ));
    assert_eq!(got.id(), want.id());
}

#[test]
fn replicated_file_key_is_pinned() {
    let got = FileKey::for_replicated_file(
        &RepMk::from_bytes([0x44; 32]),
        "from/d1/inbound/r1/d1/fdn27",
    )
    .unwrap();
    let want = FileKey::from_bytes(key32(
        "f4ada959449e63ae95e353f7c232545ba959b89abdf27187628c7c17e6ffc64e",
    ));
    assert_eq!(got.id(), want.id());
}

#[tokio::test]
async fn local_wrap_key_is_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let p = local_provider(&tmp.path().join("keys"), 0x22, 0x33, SystemRandom::shared());
    let got = p.derive_wrap_key(D0).await.unwrap();
    let want = tern_crypto::WrapKey::from_bytes(key32(
        "a99202ce0104e67bcb43c63b8936488331450f52bc6289eeb15feb96977ebbaa",
    ));
    assert_eq!(got.id(), want.id());
    assert_eq!(
        D0.mac_message(),
        [
            b"tern/v1/wrap-key/".as_slice(),
            &1_763_730_000u64.to_be_bytes()
        ]
        .concat()
    );
}
