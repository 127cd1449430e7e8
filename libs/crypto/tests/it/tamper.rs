//! Every modification of an encrypted file is detected, through every read path, with a
//! typed error that names the file.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use tern_clock::ManualClock;
use tern_crypto::format::TAG_LEN;
use tern_crypto::{
    CachedWrapKeys, CopyOptions, DecryptReader, DiversifierPolicy, EncryptOptions, Endpoint, Error,
    Header, KeySource, MessageFileKeys, SystemRandom, decrypt_bytes, encrypt_bytes, get_decrypted,
    reencrypt,
};
use tokio::io::AsyncReadExt as _;

use crate::common::{D0, T0_MS, data, local_provider, memory, table_keys};

const NAME: &str = "acct/a/db/1/tbl/2/mp/fdn27.mp";
const C: usize = 64;

async fn sealed() -> (Vec<u8>, Vec<u8>, usize) {
    let plain = data(5 * C + 17);
    let bytes = encrypt_bytes(
        NAME,
        &table_keys(1),
        &plain,
        &EncryptOptions::default().with_chunk_size(C as u32),
    )
    .await
    .unwrap();
    let hlen = Header::parse(&bytes).unwrap().len();
    (plain, bytes, hlen)
}

/// Decrypts `bytes` through the in-memory API, the `AsyncRead` and the object store, and
/// checks that each fails with an integrity error naming the file, and that the reader
/// never reached end-of-file.
async fn assert_rejected(bytes: &[u8], keys: &dyn KeySource, what: &str) {
    let e = decrypt_bytes(NAME, keys, bytes).await.expect_err(what);
    assert!(e.is_integrity_failure(), "{what}: {e:?}");
    assert!(
        e.to_string().contains(NAME),
        "{what}: error must name the file: {e}"
    );

    match DecryptReader::new(bytes, NAME, keys).await {
        Err(e) => assert!(e.is_integrity_failure(), "{what}: {e:?}"),
        Ok(mut r) => {
            let mut out = Vec::new();
            let e = r.read_to_end(&mut out).await.expect_err(what);
            let inner = e.into_inner().and_then(|b| b.downcast::<Error>().ok());
            assert!(
                matches!(inner.as_deref(), Some(Error::Decrypt { .. })),
                "{what}: {inner:?}"
            );
        }
    }

    let store = memory();
    let path = Path::from(NAME);
    store
        .put(&path, PutPayload::from(bytes.to_vec()))
        .await
        .unwrap();
    let e = get_decrypted(&store, &path, keys).await.expect_err(what);
    assert!(e.is_integrity_failure(), "{what}: {e:?}");
}

#[tokio::test]
async fn every_header_byte_and_bit_is_protected() {
    let (_, bytes, hlen) = sealed().await;
    let keys = table_keys(1);
    for i in 0..hlen {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            assert_rejected(&b, &keys, &format!("header byte {i} ^ {bit:#x}")).await;
        }
    }
}

#[tokio::test]
async fn chunk_bytes_are_protected() {
    let (_, bytes, hlen) = sealed().await;
    let keys = table_keys(1);
    let stride = C + TAG_LEN;
    let mut positions = Vec::new();
    for k in 0..6 {
        let s = hlen + k * stride;
        positions.extend([s, s + 1, s + C / 2, s + C - 1, s + C, s + stride - 1]);
    }
    positions.push(bytes.len() - 1);
    positions.retain(|p| *p < bytes.len());
    for p in positions {
        let mut b = bytes.clone();
        b[p] ^= 0x04;
        assert_rejected(&b, &keys, &format!("byte {p}")).await;
    }
}

#[tokio::test]
async fn truncation_anywhere_is_detected() {
    let (_, bytes, _) = sealed().await;
    let keys = table_keys(1);
    for len in 0..bytes.len() {
        assert_rejected(&bytes[..len], &keys, &format!("truncated to {len}")).await;
    }
}

#[tokio::test]
async fn dropped_swapped_duplicated_and_appended_chunks_are_detected() {
    let (_, bytes, hlen) = sealed().await;
    let keys = table_keys(1);
    let stride = C + TAG_LEN;
    let head = &bytes[..hlen];
    let chunks: Vec<&[u8]> = bytes[hlen..].chunks(stride).collect();
    assert_eq!(chunks.len(), 6);
    let build = |order: &[usize]| {
        let mut b = head.to_vec();
        for &i in order {
            b.extend_from_slice(chunks[i]);
        }
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("drop first", build(&[1, 2, 3, 4, 5])),
        ("drop middle", build(&[0, 1, 3, 4, 5])),
        ("drop last", build(&[0, 1, 2, 3, 4])),
        ("swap", build(&[0, 2, 1, 3, 4, 5])),
        ("duplicate", build(&[0, 1, 1, 2, 3, 4, 5])),
        ("duplicate last", build(&[0, 1, 2, 3, 4, 5, 5])),
        ("last moved up", build(&[0, 1, 2, 3, 5])),
        ("append byte", [bytes.clone(), vec![0]].concat()),
        ("append chunk", [bytes.clone(), chunks[2].to_vec()].concat()),
        ("append tag", [bytes.clone(), vec![0; TAG_LEN]].concat()),
    ];
    for (what, b) in cases {
        assert_rejected(&b, &keys, what).await;
    }
    // splicing a chunk from another file encrypted under the same key and name
    let other = encrypt_bytes(
        NAME,
        &keys,
        &data(5 * C + 17),
        &EncryptOptions::default().with_chunk_size(C as u32),
    )
    .await
    .unwrap();
    let mut spliced = bytes.clone();
    spliced[hlen + stride..hlen + 2 * stride]
        .copy_from_slice(&other[hlen + stride..hlen + 2 * stride]);
    assert_rejected(&spliced, &keys, "spliced from another file").await;
}

#[tokio::test]
async fn wrong_key_wrong_name_wrong_kind() {
    let (_, bytes, _) = sealed().await;
    // another TMK: the header names the TMK, so this is caught up front
    let e = decrypt_bytes(NAME, &table_keys(2), &bytes)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongKey { .. }), "{e:?}");
    // the right TMK but another file name: the derived key differs
    let e = decrypt_bytes("acct/a/db/1/tbl/2/mp/fdn28.mp", &table_keys(1), &bytes)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Decrypt { ref path } if path.ends_with("fdn28.mp")),
        "{e:?}"
    );
    // a replication key source for a table file
    let repl =
        tern_crypto::ReplicationFileKeys::new(Arc::new(tern_crypto::RepMk::from_bytes([1; 32])));
    let e = decrypt_bytes(NAME, &repl, &bytes).await.unwrap_err();
    assert!(matches!(e, Error::UnexpectedKeyRef { .. }), "{e:?}");
    // the error text says nothing about how it failed
    let text = format!(
        "{}",
        decrypt_bytes("x", &table_keys(1), &bytes)
            .await
            .unwrap_err()
    );
    for word in ["tag", "nonce", "aead", "chunk", "gcm"] {
        assert!(!text.to_lowercase().contains(word), "{text}");
    }
}

#[tokio::test]
async fn reader_delivers_only_verified_chunks_before_failing() {
    let (plain, bytes, hlen) = sealed().await;
    let keys = table_keys(1);
    let stride = C + TAG_LEN;
    // the final chunk is cut in half
    let cut = &bytes[..hlen + 5 * stride + 8];
    let mut r = DecryptReader::new(cut, NAME, &keys).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 10];
    let err = loop {
        match r.read(&mut buf).await {
            Ok(0) => panic!("EOF signalled for a truncated file"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(got, plain[..5 * C], "verified chunks only");
    // and it keeps failing
    assert!(r.read(&mut buf).await.is_err());
}

fn message_keys(
    clock: &ManualClock,
    wrap_keys: &Arc<CachedWrapKeys>,
    channel: &str,
) -> MessageFileKeys {
    MessageFileKeys::new(
        wrap_keys.clone(),
        channel,
        DiversifierPolicy::default(),
        clock.shared(),
        SystemRandom::shared(),
    )
}

#[tokio::test]
async fn message_files_are_bound_to_channel_name_and_diversifier_window() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = local_provider(&tmp.path().join("k"), 7, 8, SystemRandom::shared());
    let wrap_keys = Arc::new(CachedWrapKeys::new(Arc::new(provider)));
    let clock = ManualClock::new(T0_MS + 60_000);
    let keys = message_keys(&clock, &wrap_keys, "d1->d2");
    let name = "from/d1/msg/00000000000000000007.msg";
    let bytes = encrypt_bytes(name, &keys, b"payload", &EncryptOptions::default())
        .await
        .unwrap();
    let h = Header::parse(&bytes).unwrap();
    assert!(
        matches!(h.key_ref(), tern_crypto::KeyRef::WrappedDek { diversifier, .. } if *diversifier == D0)
    );
    assert_eq!(
        decrypt_bytes(name, &keys, &bytes).await.unwrap(),
        b"payload"
    );

    // another channel or name: the DEK does not unwrap
    let other = message_keys(&clock, &wrap_keys, "d3->d2");
    assert!(matches!(
        decrypt_bytes(name, &other, &bytes).await,
        Err(Error::Decrypt { .. })
    ));
    assert!(matches!(
        decrypt_bytes("from/d1/msg/00000000000000000008.msg", &keys, &bytes).await,
        Err(Error::Decrypt { .. })
    ));
    // a group member with another GMK cannot read it
    let stranger = local_provider(&tmp.path().join("s"), 9, 8, SystemRandom::shared());
    let stranger = message_keys(
        &clock,
        &Arc::new(CachedWrapKeys::new(Arc::new(stranger))),
        "d1->d2",
    );
    assert!(matches!(
        decrypt_bytes(name, &stranger, &bytes).await,
        Err(Error::Decrypt { .. })
    ));

    // stale: more than 24 h after the diversifier
    clock.set_millis(T0_MS + 24 * 3_600_000 + 1);
    assert!(matches!(
        decrypt_bytes(name, &keys, &bytes).await,
        Err(Error::DiversifierTooOld { diversifier, .. }) if diversifier == D0
    ));
    // from the future: the receiver's clock is 6 minutes behind
    clock.set_millis(T0_MS - 6 * 60_000);
    assert!(matches!(
        decrypt_bytes(name, &keys, &bytes).await,
        Err(Error::DiversifierInFuture { .. })
    ));
    // a sender cannot even write with a diversifier outside the window
    let late = message_keys(&clock, &wrap_keys, "d1->d2").with_diversifier(
        tern_crypto::Diversifier::from_unix_secs(1_763_730_000 + 7200),
    );
    assert!(matches!(
        encrypt_bytes(name, &late, b"x", &EncryptOptions::default()).await,
        Err(Error::DiversifierInFuture { .. })
    ));
    // an announced diversifier must match
    clock.set_millis(T0_MS + 2 * 3_600_000);
    let announced = message_keys(&clock, &wrap_keys, "d1->d2").with_diversifier(
        tern_crypto::Diversifier::from_unix_secs(1_763_730_000 + 3600),
    );
    assert!(matches!(
        decrypt_bytes(name, &announced, &bytes).await,
        Err(Error::UnexpectedDiversifier { .. })
    ));
}

#[tokio::test]
async fn reencrypt_refuses_tampered_sources() {
    let (_, bytes, hlen) = sealed().await;
    let store = memory();
    let src = Path::from(NAME);
    let dst = Path::from("from/d1/inbound/r1/fdn27");
    let mut b = bytes.clone();
    b[hlen + 3 * (C + TAG_LEN) + 5] ^= 1;
    store.put(&src, PutPayload::from(b)).await.unwrap();
    let repl =
        tern_crypto::ReplicationFileKeys::new(Arc::new(tern_crypto::RepMk::from_bytes([3; 32])));
    let keys = table_keys(1);
    let e = reencrypt(
        Endpoint {
            store: &store,
            path: &src,
            keys: &keys,
        },
        Endpoint {
            store: &store,
            path: &dst,
            keys: &repl,
        },
        &CopyOptions::default(),
        &EncryptOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::Decrypt { ref path } if path == NAME),
        "{e:?}"
    );
    assert!(store.head(&dst).await.is_err(), "nothing written");
    let _: &dyn ObjectStore = &*store;
}
