//! Golden files: the exact bytes of the format for fixed keys and fixed randomness.
//!
//! A change to these bytes is a format change: bump `FORMAT_VERSION`, keep reading v1, and
//! only then regenerate with `TERN_BLESS_GOLDEN=1 cargo test -p tern-crypto --test it golden`.

use std::path::PathBuf;
use std::sync::Arc;

use tern_clock::ManualClock;
use tern_crypto::format::{self, HEADER_TAG_LEN, MasterKind, TAG_LEN};
use tern_crypto::{
    CachedWrapKeys, DiversifierPolicy, EncryptOptions, Header, KeyRef, MessageFileKeys,
    SystemRandom, decrypt_bytes, encrypt_bytes,
};

use crate::common::{D0, SeededRandom, T0_MS, hex, local_provider, table_keys};

const TABLE_PATH: &str = "acct/a/db/1/tbl/2/mp/fdn27.mp";
const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";
const MSG_PATH: &str = "from/d1/msg/00000000000000000001.msg";

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = golden(name);
    if std::env::var_os("TERN_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with TERN_BLESS_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(
        hex(bytes),
        hex(&want),
        "the encrypted-file format changed (golden file {name})"
    );
}

/// A file sealed as it is written, in any pieces, is the file sealed at once, byte for
/// byte (same key, same nonce prefix): at every length around chunk boundaries, empty
/// included, and for the pinned golden file.
#[tokio::test]
async fn a_file_sealed_as_it_is_written_is_the_file_sealed_at_once() {
    use std::io::Write as _;
    let keys = table_keys(0x11);
    let plain: Vec<u8> = (0..200u8).collect();
    for len in [0usize, 1, 15, 16, 17, 32, 33, 43, 200] {
        for piece in [1usize, 7, 16, 64] {
            let opts = EncryptOptions::default()
                .with_chunk_size(16)
                .with_random(SeededRandom::shared(1));
            let whole = encrypt_bytes(TABLE_PATH, &keys, &plain[..len], &opts)
                .await
                .unwrap();
            let opts = EncryptOptions::default()
                .with_chunk_size(16)
                .with_random(SeededRandom::shared(1));
            let mut w = tern_crypto::stream::sealing_writer(TABLE_PATH, &keys, &opts)
                .await
                .unwrap();
            for part in plain[..len].chunks(piece) {
                w.write_all(part).unwrap();
            }
            let parts = w.finish().unwrap();
            assert_eq!(
                parts.concat(),
                whole,
                "{len} bytes written {piece} at a time"
            );
        }
    }
    let opts = EncryptOptions::default()
        .with_chunk_size(16)
        .with_random(SeededRandom::shared(1));
    let mut w = tern_crypto::stream::sealing_writer(TABLE_PATH, &keys, &opts)
        .await
        .unwrap();
    w.write_all(FOX).unwrap();
    check_golden("v1_table.bin", &w.finish().unwrap().concat());
}

#[tokio::test]
async fn table_file_bytes_are_pinned() {
    let keys = table_keys(0x11);
    let opts = EncryptOptions::default()
        .with_chunk_size(16)
        .with_random(SeededRandom::shared(1));
    let bytes = encrypt_bytes(TABLE_PATH, &keys, FOX, &opts).await.unwrap();
    // header (69) + chunks of 16, 16, 11 plaintext bytes, each + 16 tag
    assert_eq!(bytes.len(), 69 + 43 + 3 * TAG_LEN);
    assert_eq!(
        &bytes[..12],
        &[b'T', b'E', b'R', b'N', 1, 1, 0, 69, 0, 0, 0, 16]
    );
    check_golden("v1_table.bin", &bytes);

    let golden = std::fs::read(golden("v1_table.bin")).unwrap();
    assert_eq!(
        decrypt_bytes(TABLE_PATH, &keys, &golden).await.unwrap(),
        FOX
    );
    let header = Header::parse(&golden).unwrap();
    assert_eq!(
        header.key_ref(),
        &KeyRef::Derived {
            master: MasterKind::Table,
            master_id: crate::common::tmk(0x11).id(),
        }
    );
}

#[tokio::test]
async fn message_file_bytes_are_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = local_provider(&tmp.path().join("keys"), 0x22, 0x33, SystemRandom::shared());
    let wrap_keys = Arc::new(CachedWrapKeys::new(Arc::new(provider)));
    let clock = ManualClock::new(T0_MS + 10 * 60 * 1000);
    let keys = MessageFileKeys::new(
        wrap_keys,
        "d1->d2",
        DiversifierPolicy::default(),
        clock.shared(),
        SeededRandom::shared(2),
    )
    .with_diversifier(D0);
    let opts = EncryptOptions::default()
        .with_chunk_size(64 << 10)
        .with_random(SeededRandom::shared(3));
    let bytes = encrypt_bytes(MSG_PATH, &keys, b"hello, d2", &opts)
        .await
        .unwrap();
    assert_eq!(bytes.len(), 122 + 9 + TAG_LEN);
    check_golden("v1_message.bin", &bytes);
    let golden = std::fs::read(golden("v1_message.bin")).unwrap();
    assert_eq!(
        decrypt_bytes(MSG_PATH, &keys, &golden).await.unwrap(),
        b"hello, d2"
    );
}

/// An independent reading of the documented format (RustCrypto `hkdf`, `sha2`, `aes-gcm`)
/// opens the golden file: the docs and the code say the same thing.
#[test]
fn golden_table_file_follows_the_documented_layout() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use sha2::Digest;

    let file = std::fs::read(golden("v1_table.bin")).unwrap();
    let hlen = u16::from_be_bytes([file[6], file[7]]) as usize;
    let chunk = u32::from_be_bytes(file[8..12].try_into().unwrap()) as usize;
    let prefix = &file[12..20];
    assert_eq!(file[20], 1, "master kind: table");

    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"tern/v1/file-key/table"), &[0x11; 32]);
    let mut file_key = [0u8; 32];
    hk.expand(TABLE_PATH.as_bytes(), &mut file_key).unwrap();
    let sub = hkdf::Hkdf::<sha2::Sha256>::from_prk(&file_key).unwrap();
    let (mut aead_key, mut header_key) = ([0u8; 32], [0u8; 32]);
    sub.expand(b"tern/v1/file/aead", &mut aead_key).unwrap();
    sub.expand(b"tern/v1/file/header", &mut header_key).unwrap();

    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &header_key);
    ring::hmac::verify(
        &hmac,
        &file[..hlen - HEADER_TAG_LEN],
        &file[hlen - HEADER_TAG_LEN..hlen],
    )
    .expect("header tag");
    let digest = sha2::Sha256::digest(&file[..hlen]);

    let cipher = aes_gcm::Aes256Gcm::new((&aead_key).into());
    let sealed: Vec<&[u8]> = file[hlen..].chunks(chunk + TAG_LEN).collect();
    let mut plain = Vec::new();
    for (i, c) in sealed.iter().enumerate() {
        let mut nonce = prefix.to_vec();
        nonce.extend_from_slice(&(i as u32).to_be_bytes());
        let mut aad = digest.to_vec();
        aad.extend_from_slice(&(i as u32).to_be_bytes());
        aad.push(u8::from(i + 1 == sealed.len()));
        let p = cipher
            .decrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload { msg: c, aad: &aad },
            )
            .expect("chunk");
        plain.extend_from_slice(&p);
    }
    assert_eq!(plain, FOX);
    // and the in-memory API agrees with it
    let _ = format::Layout::for_object(hlen, chunk as u32, file.len() as u64).unwrap();
}
