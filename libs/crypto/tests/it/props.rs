//! Property tests with fixed seeds and modest case counts (they run in about a second).

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tern_crypto::format::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use tern_crypto::{
    DecryptReader, EncryptOptions, EncryptWriter, Header, decrypt_bytes, encrypt_bytes,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::table_keys;

fn runner(seed: u8, cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config::with_cases(cases),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn encrypt_decrypt_round_trips_for_random_sizes_and_chunk_sizes() {
    let strategy = (
        MIN_CHUNK_SIZE..600u32,
        proptest::collection::vec(any::<u8>(), 0..3000),
        1usize..200,
    );
    runner(1, 96)
        .run(&strategy, |(chunk, plain, piece)| {
            block_on(async {
                let keys = table_keys(1);
                let name = "p/f";
                let opts = EncryptOptions::default().with_chunk_size(chunk);
                let sealed = encrypt_bytes(name, &keys, &plain, &opts).await.unwrap();
                prop_assert_eq!(&decrypt_bytes(name, &keys, &sealed).await.unwrap(), &plain);

                // the streaming writer, fed in `piece`-sized writes, makes a file of the same
                // shape that the streaming reader opens
                let mut w = EncryptWriter::new(Vec::new(), name, &keys, &opts)
                    .await
                    .unwrap();
                for p in plain.chunks(piece) {
                    w.write_all(p).await.unwrap();
                }
                let streamed = w.finish().await.unwrap();
                prop_assert_eq!(streamed.len(), sealed.len());
                let mut r = DecryptReader::new(&streamed[..], name, &keys)
                    .await
                    .unwrap();
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                prop_assert_eq!(back, plain);
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn header_parser_never_panics_on_arbitrary_bytes() {
    runner(2, 2000)
        .run(&proptest::collection::vec(any::<u8>(), 0..300), |bytes| {
            let _ = Header::parse(&bytes);
            let _ = Header::declared_len(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn header_parser_never_panics_on_mutated_headers() {
    let valid = block_on(async {
        encrypt_bytes(
            "p/f",
            &table_keys(1),
            b"some plaintext",
            &EncryptOptions::default().with_chunk_size(16),
        )
        .await
        .unwrap()
    });
    let strategy = proptest::collection::vec((0usize..valid.len(), any::<u8>()), 1..6);
    runner(3, 2000)
        .run(&strategy, |edits| {
            let mut b = valid.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            if let Ok(h) = Header::parse(&b) {
                prop_assert!(h.len() <= b.len());
                prop_assert!((MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&h.chunk_size()));
            }
            // and decryption of the whole thing fails or returns the original, never panics
            let out = block_on(decrypt_bytes("p/f", &table_keys(1), &b));
            if let Ok(p) = out {
                prop_assert_eq!(&p[..], b"some plaintext");
            }
            Ok(())
        })
        .unwrap();
}
