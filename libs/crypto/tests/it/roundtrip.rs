//! Round trips through every API, for the sizes at chunk boundaries.

use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutOptions, PutPayload};
use tern_crypto::format::{Layout, TAG_LEN};
use tern_crypto::{
    CopyOptions, DEFAULT_CHUNK_SIZE, DecryptReader, EncryptOptions, EncryptWriter, EncryptedObject,
    Error, Header, decrypt_bytes, decrypt_stream, encrypt_bytes, encrypt_stream, get_decrypted,
    get_decrypted_range, put_encrypted, upload_encrypted,
};
use tern_storage::{FaultPlan, FaultStore, Operation};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{data, folder, memory, table_keys};

fn sizes(c: usize) -> Vec<usize> {
    vec![0, 1, c - 1, c, c + 1, 2 * c, 7 * c + 5]
}

fn small_copy() -> CopyOptions {
    CopyOptions {
        block_size: 300,
        read_ahead: 2,
        part_size: 256,
        max_concurrency: 2,
        single_put_max: 256,
    }
}

async fn round_trip(store: &Arc<dyn ObjectStore>, c: u32, n: usize) {
    let keys = table_keys(1);
    let name = format!("acct/a/db/1/tbl/2/mp/f{c}-{n}.mp");
    let plain = data(n);
    let opts = EncryptOptions::default().with_chunk_size(c);
    let ctx = format!("chunk {c}, size {n}");

    // in memory
    let sealed = encrypt_bytes(&name, &keys, &plain, &opts).await.unwrap();
    let header = Header::parse(&sealed).unwrap();
    let layout = Layout::for_plaintext(header.len(), c, n as u64).unwrap();
    assert_eq!(sealed.len() as u64, layout.object_len(), "{ctx}");
    assert_eq!(
        decrypt_bytes(&name, &keys, &sealed).await.unwrap(),
        plain,
        "{ctx}"
    );

    // streams
    let mut out = Vec::new();
    let m = encrypt_stream(&mut &plain[..], &mut out, &name, &keys, &opts)
        .await
        .unwrap();
    assert_eq!(m, n as u64);
    assert_eq!(out.len(), sealed.len());
    let mut back = Vec::new();
    let m = decrypt_stream(&mut &out[..], &mut back, &name, &keys)
        .await
        .unwrap();
    assert_eq!((m, &back), (n as u64, &plain), "{ctx}");
    let mut copy = Vec::new();
    let repl =
        tern_crypto::ReplicationFileKeys::new(Arc::new(tern_crypto::RepMk::from_bytes([9; 32])));
    let m = tern_crypto::reencrypt_stream(
        &mut &out[..],
        &mut copy,
        &name,
        &keys,
        "inbound/x",
        &repl,
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(m, n as u64);
    assert_eq!(
        decrypt_bytes("inbound/x", &repl, &copy).await.unwrap(),
        plain,
        "{ctx}"
    );

    // writer fed in odd pieces, reader drained in small reads
    let mut w = EncryptWriter::new(Vec::new(), &name, &keys, &opts)
        .await
        .unwrap();
    for piece in plain.chunks(7) {
        w.write_all(piece).await.unwrap();
    }
    w.shutdown().await.unwrap();
    let written = w.finish().await.unwrap();
    assert_eq!(written.len(), sealed.len(), "{ctx}");
    let mut r = DecryptReader::new(&written[..], &name, &keys)
        .await
        .unwrap();
    let mut back = Vec::new();
    let mut buf = [0u8; 5];
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        back.extend_from_slice(&buf[..k]);
    }
    assert_eq!(back, plain, "{ctx}");

    // object store: single put, streamed upload (multipart beyond 256 bytes), reads
    let path = Path::from(name.as_str());
    put_encrypted(&**store, &path, &keys, &plain, &opts, PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        &get_decrypted(store, &path, &keys).await.unwrap()[..],
        &plain[..],
        "{ctx}"
    );
    let up = Path::from(format!("{name}.up"));
    let k = upload_encrypted(store, &up, &keys, &mut &plain[..], &opts, &small_copy()).await;
    // the upload binds the key to its own path
    assert_eq!(k.unwrap(), n as u64);
    assert_eq!(store.head(&up).await.unwrap().size, layout.object_len());
    let obj = EncryptedObject::open(store.clone(), &up, &keys)
        .await
        .unwrap();
    assert_eq!(obj.plaintext_len(), n as u64);
    let parts: Vec<_> = obj.into_stream(&small_copy()).try_collect().await.unwrap();
    assert_eq!(parts.concat(), plain, "{ctx}");
    if n > 0 {
        let mid = n / 2;
        let got = get_decrypted_range(store, &path, &keys, mid as u64..n as u64)
            .await
            .unwrap();
        assert_eq!(&got[..], &plain[mid..], "{ctx}");
    }
}

#[tokio::test]
async fn all_sizes_all_apis_memory_store() {
    let store = memory();
    for c in [16u32, 64, 4096] {
        for n in sizes(c as usize) {
            round_trip(&store, c, n).await;
        }
    }
}

#[tokio::test]
async fn all_sizes_all_apis_folder_store() {
    let (_dir, store) = folder();
    for c in [64u32, 1000] {
        for n in sizes(c as usize) {
            round_trip(&store, c, n).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_chunk_size_many_chunks() {
    let store = memory();
    let c = DEFAULT_CHUNK_SIZE as usize;
    for n in [c - 1, c, c + 1, 5 * c + 12_345] {
        round_trip(&store, DEFAULT_CHUNK_SIZE, n).await;
    }
}

async fn stored(c: u32, n: usize) -> (Arc<dyn ObjectStore>, Path, Vec<u8>) {
    let store = memory();
    let path = Path::from("acct/a/db/1/tbl/2/mp/range.mp");
    let plain = data(n);
    put_encrypted(
        &*store,
        &path,
        &table_keys(1),
        &plain,
        &EncryptOptions::default().with_chunk_size(c),
        PutOptions::default(),
    )
    .await
    .unwrap();
    (store, path, plain)
}

#[tokio::test]
async fn range_reads_return_exact_bytes() {
    let (store, path, plain) = stored(64, 10 * 64 - 3).await;
    let keys = table_keys(1);
    let obj = EncryptedObject::open(store.clone(), &path, &keys)
        .await
        .unwrap();
    let n = plain.len() as u64;
    for (s, e) in [
        (0, 0),
        (0, 1),
        (63, 65),
        (64, 128),
        (100, 300),
        (n - 1, n),
        (0, n),
        (5, 5),
    ] {
        let got = obj.read_range(s..e).await.unwrap();
        assert_eq!(&got[..], &plain[s as usize..e as usize], "{s}..{e}");
    }
    for (s, e) in [(0, n + 1), (n + 1, n + 2)] {
        assert!(matches!(
            obj.read_range(s..e).await,
            Err(Error::RangeOutOfBounds { .. })
        ));
    }
}

#[tokio::test]
async fn range_reads_fetch_and_verify_only_their_chunks() {
    // 200 chunks of 1000 bytes: bigger than the 64 KiB fetched by `open`
    let c = 1000u32;
    let (inner, path, plain) = stored(c, 200 * 1000).await;
    let keys = table_keys(1);
    // corrupt chunk 60
    let mut bytes = inner
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let hlen = Header::parse(&bytes).unwrap().len();
    let stride = c as usize + TAG_LEN;
    bytes[hlen + 160 * stride + 10] ^= 1;
    inner.put(&path, PutPayload::from(bytes)).await.unwrap();

    let plan = FaultPlan::new();
    let store: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(inner, plan.clone()));
    let obj = EncryptedObject::open(store.clone(), &path, &keys)
        .await
        .unwrap();
    plan.reset_counts();
    let got = obj.read_range(160_000..161_000 - 1).await;
    assert!(matches!(got, Err(Error::Decrypt { .. })), "{got:?}");
    let got = obj.read_range(130_500..131_500).await.unwrap();
    assert_eq!(&got[..], &plain[130_500..131_500]);
    assert_eq!(plan.calls(Operation::Get), 2, "one ranged get per read");
    // a whole-file read meets the corrupt chunk
    let err = get_decrypted(&store, &path, &keys).await.unwrap_err();
    assert!(err.to_string().contains(path.as_ref()), "{err}");
}

#[tokio::test]
async fn stream_of_a_truncated_object_ends_in_an_error() {
    let (store, path, plain) = stored(64, 64 * 9).await;
    let keys = table_keys(1);
    let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
    // cut the final chunk off at a chunk boundary
    let cut = bytes.len() - (64 + TAG_LEN);
    store
        .put(&path, PutPayload::from(bytes.slice(..cut)))
        .await
        .unwrap();
    let obj = EncryptedObject::open(store.clone(), &path, &keys)
        .await
        .unwrap();
    let mut stream = obj.into_stream(&CopyOptions {
        block_size: 100,
        ..CopyOptions::default()
    });
    let mut got = Vec::new();
    let err = loop {
        match stream.try_next().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => panic!("a truncated file must not end cleanly"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Decrypt { .. }));
    assert!(
        plain.starts_with(&got),
        "only verified plaintext was returned"
    );
    assert!(got.len() < plain.len());
}
