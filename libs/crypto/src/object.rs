//! Encrypted files in object storage: put, get, ranged get, and the re-encrypting copy.
//!
//! Everything goes through `Arc<dyn ObjectStore>` and [`Path`]; the file's name for key
//! derivation and for errors is its object path (`path.to_string()`).
//!
//! Guarantees:
//!
//! - **Reads return only authenticated plaintext.** [`get_decrypted`] and
//!   [`EncryptedObject::read_range`] verify every chunk they return;
//!   [`EncryptedObject::into_stream`] yields chunks as they verify and ends (`None`) only
//!   after the final chunk verified, otherwise its last item is an error.
//! - **Range reads fetch only the chunks they need**: plaintext range → chunk range →
//!   one `get_range` of those sealed chunks. They verify the chunks they read, not the
//!   rest of the file.
//! - **[`reencrypt`] never publishes an unverified copy.** Large files go through a
//!   multipart upload that is completed only after the last source chunk verified, and is
//!   aborted on any error; small files (up to [`CopyOptions::single_put_max`]) are held in
//!   memory and put in one request after they verified. Memory is bounded by
//!   [`CopyOptions`] — (read-ahead + 1) blocks plus the in-flight parts — whatever the file
//!   size.
//!
//! - **Create-once writes hold for large files too.** With `PutMode::Create`
//!   ([`upload_encrypted_with`], [`reencrypt_with`]) a small file is one conditional `put`;
//!   a multipart upload cannot carry the condition through `object_store`, so it is
//!   uploaded to a staging object `<path>.upload-<nonce>` beside the destination and
//!   published with `copy_if_not_exists` (a hard link on `file://`; on S3 an
//!   `UploadPartCopy` completed with `If-None-Match: *`, see `tern_storage::config`), then
//!   the staging object is deleted. Either the destination did not exist and now holds
//!   this file, or the call fails with `AlreadyExists` and the destination is untouched.
//!   The copy reads the staging object: the writer needs `GetObject` on its own staging
//!   objects (peers writing replication files use the default overwrite mode). A crash
//!   between the copy and the delete leaves the staging object behind.
//!
//! Storage assumptions: `get_range` returns exactly the bytes asked for of one object
//! version (if the object is replaced between requests, the mix fails authentication:
//! each version has its own header digest); a multipart upload is invisible until
//! completed.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, PutResult,
    WriteMultipart,
};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::error::{Error, Result};
use crate::format::{FileCipher, Header, Layout, MAX_HEADER_LEN, TAG_LEN};
use crate::keysource::KeySource;
use crate::stream::{EncryptOptions, new_file, open_file};

/// How much is read ahead and uploaded at once by streaming reads, uploads and copies.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Target size of one ranged read (rounded to whole chunks, at least one chunk).
    pub block_size: usize,
    /// Ranged reads in flight ahead of the block being processed.
    pub read_ahead: usize,
    /// Multipart part size (S3 needs at least 5 MiB).
    pub part_size: usize,
    /// Parts uploading concurrently.
    pub max_concurrency: usize,
    /// Files up to this size are written with one `put` instead of a multipart upload.
    pub single_put_max: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            block_size: 2 << 20,
            read_ahead: 2,
            part_size: 5 << 20,
            max_concurrency: 2,
            single_put_max: 5 << 20,
        }
    }
}

/// Bytes fetched by the first request of a read: header plus, for small files, everything.
const OPEN_FETCH: u64 = 64 << 10;

/// An encrypted object opened for reading: header verified, key resolved, layout known.
pub struct EncryptedObject {
    store: Arc<dyn ObjectStore>,
    path: Path,
    name: String,
    header: Header,
    cipher: Arc<FileCipher>,
    layout: Layout,
    /// Bytes `0..prefix.len()` of the object, fetched by `open`.
    prefix: Bytes,
}

impl std::fmt::Debug for EncryptedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedObject")
            .field("path", &self.name)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl EncryptedObject {
    /// Fetches the header (one request, which also returns small files whole), finds the key
    /// in `keys` and verifies the header.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        path: &Path,
        keys: &dyn KeySource,
    ) -> Result<Self> {
        let name = path.to_string();
        let got = match store
            .get_opts(path, GetOptions::new().with_range(Some(0..OPEN_FETCH)))
            .await
        {
            Ok(got) => got,
            // A range request on an empty object fails; say what it means.
            Err(e) => {
                return Err(match store.head(path).await {
                    Ok(meta) if meta.size < 8 => Error::InvalidHeader {
                        path: name,
                        fault: crate::HeaderFault::TooShort,
                    },
                    _ => Error::store(path, e),
                });
            }
        };
        let size = got.meta.size;
        let prefix = got.bytes().await.map_err(|e| Error::store(path, e))?;
        debug_assert!(MAX_HEADER_LEN as u64 <= OPEN_FETCH);
        let header = Header::parse(&prefix).map_err(|f| Error::header(&name, f))?;
        let cipher = open_file(&name, keys, &header).await?;
        let layout = Layout::for_object(header.len(), header.chunk_size(), size)
            .ok_or_else(|| Error::decrypt(&name))?;
        Ok(EncryptedObject {
            store,
            path: path.clone(),
            name,
            header,
            cipher: Arc::new(cipher),
            layout,
            prefix,
        })
    }

    /// The verified header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The chunk layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Plaintext length.
    pub fn plaintext_len(&self) -> u64 {
        self.layout.plaintext_len()
    }

    /// Plaintext bytes `range`, fetching and verifying only the chunks that hold them.
    pub async fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        let len = self.plaintext_len();
        if range.start > range.end || range.end > len {
            return Err(Error::RangeOutOfBounds {
                path: self.name.clone(),
                start: range.start,
                end: range.end,
                len,
            });
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let chunks = self.layout.chunks_for(&range);
        let block = self.open_chunks(chunks.clone()).await?;
        let skip = (range.start - chunks.start * self.layout.chunk_size) as usize;
        let want = (range.end - range.start) as usize;
        Ok(compact(block, &self.layout, chunks, skip, want))
    }

    /// The whole plaintext, every chunk verified (including the final one of an empty file).
    pub async fn read_all(&self) -> Result<Bytes> {
        let all = 0..self.layout.chunks;
        let block = self.open_chunks(all.clone()).await?;
        let len = self.plaintext_len() as usize;
        Ok(compact(block, &self.layout, all, 0, len))
    }

    /// Fetches sealed chunks `chunks` in one request and opens them (in place when the
    /// store's buffer is ours alone).
    async fn open_chunks(&self, chunks: Range<u64>) -> Result<BytesMut> {
        let sealed = fetch(
            &self.store,
            &self.path,
            &self.name,
            &self.prefix,
            self.layout.sealed_range(chunks.clone()),
        )
        .await?;
        open_block(
            &self.cipher,
            &self.layout,
            chunks,
            sealed,
            &self.name,
            |_, _| Ok(()),
        )
    }

    /// The plaintext as a stream of verified chunks, read ahead in blocks. The stream ends
    /// only after the final chunk verified; on any failure its last item is the error.
    pub fn into_stream(self, opts: &CopyOptions) -> BoxStream<'static, Result<Bytes>> {
        let name = self.name.clone();
        let reader = BlockReader::new(&self, opts);
        let state = (self, reader, VecDeque::<Bytes>::new(), false);
        let stream =
            futures::stream::try_unfold(state, |(obj, mut reader, mut ready, done)| async move {
                loop {
                    if let Some(b) = ready.pop_front() {
                        return Ok(Some((b, (obj, reader, ready, done))));
                    }
                    if done {
                        return Ok(None);
                    }
                    let Some((chunks, sealed)) = reader.next().await? else {
                        return Ok(None);
                    };
                    let block = open_block(
                        &obj.cipher,
                        &obj.layout,
                        chunks.clone(),
                        sealed,
                        &obj.name,
                        |_, _| Ok(()),
                    )?
                    .freeze();
                    let stride = obj.layout.stride() as usize;
                    for (j, i) in chunks.clone().enumerate() {
                        let n = obj.layout.chunk_plain_len(i) as usize;
                        if n > 0 {
                            ready.push_back(block.slice(j * stride..j * stride + n));
                        }
                    }
                    if chunks.end == obj.layout.chunks && ready.is_empty() {
                        return Ok(None); // empty file: its one empty final chunk verified
                    }
                }
            });
        tracing::debug!(path = %name, "streaming decrypt");
        Box::pin(stream)
    }
}

/// Fetches `range` of the object, from the prefix fetched at open when it covers it.
async fn fetch(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    name: &str,
    prefix: &Bytes,
    range: Range<u64>,
) -> Result<Bytes> {
    let want = (range.end - range.start) as usize;
    let bytes = if range.end <= prefix.len() as u64 {
        prefix.slice(range.start as usize..range.end as usize)
    } else {
        store
            .get_range(path, range)
            .await
            .map_err(|e| Error::store(path, e))?
    };
    if bytes.len() != want {
        return Err(Error::decrypt(name));
    }
    Ok(bytes)
}

/// Opens the sealed chunks `chunks` (`sealed`: exactly their bytes, chunk after chunk) and
/// returns them opened in one buffer, each chunk at its sealed offset (its plaintext, then
/// the tag's room). After a chunk verified, `each(index, chunk)` may work on it in place
/// while it is still in cache (the copy re-seals it there).
///
/// When `sealed` is the only reference to its memory — what stores' reads return (a fresh
/// buffer per request) — the chunks are opened in that memory, no copy. When it is shared
/// (a slice of a buffer someone else keeps: the prefix fetched at open, an in-memory
/// store's object), each chunk is copied into a new buffer just before it is opened, so the
/// copy, the open and `each` pass over it while it is in cache, not after a whole-block
/// copy has pushed it out.
fn open_block(
    cipher: &FileCipher,
    layout: &Layout,
    chunks: Range<u64>,
    sealed: Bytes,
    name: &str,
    mut each: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<BytesMut> {
    let stride = layout.stride() as usize;
    debug_assert!({
        let r = layout.sealed_range(chunks.clone());
        sealed.len() as u64 == r.end - r.start
    });
    let mut open = |i: u64, chunk: &mut [u8]| -> Result<()> {
        cipher
            .open_chunk(i, i + 1 == layout.chunks, chunk)
            .map_err(|()| Error::decrypt(name))?;
        each(i, chunk)
    };
    match sealed.try_into_mut() {
        Ok(mut block) => {
            for (chunk, i) in block.chunks_mut(stride).zip(chunks) {
                open(i, chunk)?;
            }
            Ok(block)
        }
        Err(shared) => {
            let mut block = BytesMut::with_capacity(shared.len());
            for (src, i) in shared.chunks(stride).zip(chunks) {
                let at = block.len();
                block.extend_from_slice(src);
                open(i, &mut block[at..])?;
            }
            Ok(block)
        }
    }
}

/// Plaintext bytes `skip..skip + want` of opened chunks `chunks` in `block`.
fn compact(
    block: BytesMut,
    layout: &Layout,
    chunks: Range<u64>,
    skip: usize,
    want: usize,
) -> Bytes {
    let stride = layout.stride() as usize;
    let c = layout.chunk_size as usize;
    if skip + want <= c {
        return block.freeze().slice(skip..skip + want);
    }
    let mut block = block;
    let mut w = 0usize;
    for (j, i) in chunks.enumerate() {
        let n = layout.chunk_plain_len(i) as usize;
        block.copy_within(j * stride..j * stride + n, w);
        w += n;
    }
    block.freeze().slice(skip..skip + want)
}

enum Pending {
    Ready(Bytes),
    Task(JoinHandle<object_store::Result<Bytes>>),
}

/// Reads an object's sealed chunks in blocks of whole chunks, `read_ahead` requests ahead.
struct BlockReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    name: String,
    prefix: Bytes,
    layout: Layout,
    per_block: u64,
    depth: usize,
    next: u64,
    inflight: VecDeque<(Range<u64>, Pending)>,
}

impl BlockReader {
    fn new(obj: &EncryptedObject, opts: &CopyOptions) -> Self {
        let per_block = (opts.block_size as u64 / obj.layout.stride()).max(1);
        BlockReader {
            store: obj.store.clone(),
            path: obj.path.clone(),
            name: obj.name.clone(),
            prefix: obj.prefix.clone(),
            layout: obj.layout,
            per_block,
            depth: opts.read_ahead.max(1),
            next: 0,
            inflight: VecDeque::new(),
        }
    }

    fn fill(&mut self) {
        while self.inflight.len() < self.depth && self.next < self.layout.chunks {
            let chunks = self.next..(self.next + self.per_block).min(self.layout.chunks);
            self.next = chunks.end;
            let range = self.layout.sealed_range(chunks.clone());
            let pending = if range.end <= self.prefix.len() as u64 {
                Pending::Ready(self.prefix.slice(range.start as usize..range.end as usize))
            } else {
                let store = self.store.clone();
                let path = self.path.clone();
                Pending::Task(tokio::spawn(
                    async move { store.get_range(&path, range).await },
                ))
            };
            self.inflight.push_back((chunks, pending));
        }
    }

    /// The next block: its chunk indices and sealed bytes (as the store returned them).
    async fn next(&mut self) -> Result<Option<(Range<u64>, Bytes)>> {
        self.fill();
        let Some((chunks, pending)) = self.inflight.pop_front() else {
            return Ok(None);
        };
        let bytes = match pending {
            Pending::Ready(b) => b,
            Pending::Task(task) => task
                .await
                .map_err(|source| Error::Task {
                    path: self.name.clone(),
                    source,
                })?
                .map_err(|e| Error::store(&self.path, e))?,
        };
        // Start the next read before the caller spends CPU on this block.
        self.fill();
        let range = self.layout.sealed_range(chunks.clone());
        if bytes.len() as u64 != range.end - range.start {
            return Err(Error::decrypt(&self.name));
        }
        Ok(Some((chunks, bytes)))
    }
}

impl Drop for BlockReader {
    fn drop(&mut self) {
        for (_, p) in self.inflight.drain(..) {
            if let Pending::Task(t) = p {
                t.abort();
            }
        }
    }
}

/// Destination of an upload: one `put` if it stays small, else a multipart upload.
struct Sink {
    store: Arc<dyn ObjectStore>,
    path: Path,
    opts: CopyOptions,
    state: SinkState,
    /// Create-once: a multipart upload goes to this staging object, published at the end
    /// with `copy_if_not_exists` (see the module docs).
    staging: Option<Path>,
}

enum SinkState {
    Buffer(Vec<Bytes>, usize),
    Multipart(WriteMultipart),
}

impl Sink {
    fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        opts: &CopyOptions,
        mode: &PutMode,
        random: &crate::random::SharedRandom,
    ) -> Result<Self> {
        let staging = match mode {
            PutMode::Create => Some(staging_path(&path, random)?),
            _ => None,
        };
        Ok(Sink {
            store,
            path,
            opts: opts.clone(),
            state: SinkState::Buffer(Vec::new(), 0),
            staging,
        })
    }

    async fn put(&mut self, bytes: Bytes) -> Result<()> {
        if let SinkState::Buffer(parts, len) = &mut self.state {
            if *len + bytes.len() <= self.opts.single_put_max {
                *len += bytes.len();
                parts.push(bytes);
                return Ok(());
            }
            let target = self.staging.as_ref().unwrap_or(&self.path);
            if self.staging.is_some() {
                // Create-once: fail before uploading a large file for nothing (the
                // atomic check is the publishing copy).
                match self.store.head(&self.path).await {
                    Ok(_) => {
                        return Err(Error::store(
                            &self.path,
                            object_store::Error::AlreadyExists {
                                path: self.path.to_string(),
                                source: "the destination of a create-once write exists".into(),
                            },
                        ));
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::store(&self.path, e)),
                }
            }
            let upload = self
                .store
                .put_multipart(target)
                .await
                .map_err(|e| Error::store(target, e))?;
            let mut wm = WriteMultipart::new_with_chunk_size(upload, self.opts.part_size);
            for p in parts.drain(..) {
                wm.put(p);
            }
            self.state = SinkState::Multipart(wm);
        }
        if let SinkState::Multipart(wm) = &mut self.state {
            wm.wait_for_capacity(self.opts.max_concurrency)
                .await
                .map_err(|e| Error::store(&self.path, e))?;
            wm.put(bytes);
        }
        Ok(())
    }

    async fn finish(self, put: PutOptions) -> Result<PutResult> {
        match self.state {
            SinkState::Buffer(parts, _) => self
                .store
                .put_opts(&self.path, PutPayload::from_iter(parts), put)
                .await
                .map_err(|e| Error::store(&self.path, e)),
            SinkState::Multipart(wm) => match put.mode {
                PutMode::Overwrite => wm.finish().await.map_err(|e| Error::store(&self.path, e)),
                PutMode::Create => {
                    // The parts went to the staging object (see `Sink::put`): publish it
                    // only if the destination does not exist, atomically.
                    let staging = self.staging.clone().unwrap_or_else(|| self.path.clone());
                    let done = wm.finish().await.map_err(|e| Error::store(&staging, e));
                    let result = match done {
                        Ok(r) => self
                            .store
                            .copy_if_not_exists(&staging, &self.path)
                            .await
                            .map(|()| r)
                            .map_err(|e| Error::store(&self.path, e)),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = self.store.delete(&staging).await
                        && !matches!(e, object_store::Error::NotFound { .. })
                    {
                        tracing::warn!(path = %staging, error = %e, "could not delete staging object");
                    }
                    result
                }
                PutMode::Update(_) => {
                    let _ = wm.abort().await;
                    Err(Error::store(
                        &self.path,
                        object_store::Error::NotImplemented {
                            operation: "a conditional update (PutMode::Update) of a file larger than single_put_max".into(),
                            implementer: "tern_crypto::object".into(),
                        },
                    ))
                }
            },
        }
    }

    async fn abort(self) {
        if let SinkState::Multipart(wm) = self.state
            && let Err(e) = wm.abort().await
        {
            tracing::warn!(path = %self.path, error = %e, "could not abort multipart upload");
        }
    }
}

/// `<path>.upload-<nonce>`: where a create-once multipart upload is staged (a random
/// nonce: concurrent writers of the same path never share a staging object).
fn staging_path(path: &Path, random: &crate::random::SharedRandom) -> Result<Path> {
    let mut nonce = [0u8; 12];
    random.fill(&mut nonce)?;
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Path::from(format!("{path}.upload-{hex}")))
}

/// Encrypts `plaintext` as the object `path` with one `put` (honouring `put`'s mode, e.g.
/// `PutMode::Create` for files that must be written once).
pub async fn put_encrypted(
    store: &dyn ObjectStore,
    path: &Path,
    keys: &dyn KeySource,
    plaintext: &[u8],
    opts: &EncryptOptions,
    put: PutOptions,
) -> Result<PutResult> {
    let name = path.to_string();
    let span = tracing::debug_span!("put_encrypted", path = %name, len = plaintext.len());
    async {
        let data = crate::stream::encrypt_bytes(&name, keys, plaintext, opts).await?;
        store
            .put_opts(path, PutPayload::from(data), put)
            .await
            .map_err(|e| Error::store(path, e))
    }
    .instrument(span)
    .await
}

/// Encrypts everything `reader` yields into the object `path`, streaming: a multipart
/// upload once the file outgrows [`CopyOptions::single_put_max`], aborted on error. Returns
/// the plaintext length. Overwrites; [`upload_encrypted_with`] takes a [`PutMode`].
pub async fn upload_encrypted<R>(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    keys: &dyn KeySource,
    reader: &mut R,
    opts: &EncryptOptions,
    copy: &CopyOptions,
) -> Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
{
    upload_encrypted_with(store, path, keys, reader, opts, copy, PutOptions::default()).await
}

/// [`upload_encrypted`] honouring `put`'s mode at any size: `PutMode::Create` fails with
/// `AlreadyExists` (and leaves the object as it was) if `path` exists, also when the file
/// took a multipart upload (see the module docs). `PutMode::Update` only for files up to
/// [`CopyOptions::single_put_max`].
pub async fn upload_encrypted_with<R>(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    keys: &dyn KeySource,
    reader: &mut R,
    opts: &EncryptOptions,
    copy: &CopyOptions,
    put: PutOptions,
) -> Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let name = path.to_string();
    let span = tracing::debug_span!("upload_encrypted", path = %name);
    async {
        let (header, cipher) = new_file(&name, keys, opts.chunk_size, &opts.random).await?;
        let mut sink = Sink::new(store.clone(), path.clone(), copy, &put.mode, &opts.random)?;
        match upload_chunks(reader, &header, &cipher, &mut sink, &name).await {
            Ok(n) => {
                sink.finish(put).await?;
                Ok(n)
            }
            Err(e) => {
                sink.abort().await;
                Err(e)
            }
        }
    }
    .instrument(span)
    .await
}

async fn upload_chunks<R>(
    reader: &mut R,
    header: &Header,
    cipher: &FileCipher,
    sink: &mut Sink,
    name: &str,
) -> Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let c = header.chunk_size() as usize;
    sink.put(Bytes::copy_from_slice(header.as_bytes())).await?;
    let mut cur = BytesMut::zeroed(c + TAG_LEN);
    let mut n = read_full(reader, &mut cur[..c], name).await?;
    let mut index = 0u64;
    let mut total = 0u64;
    loop {
        let last = if n < c {
            true
        } else {
            // A full chunk: it is the last one only if nothing follows.
            let mut next = BytesMut::zeroed(c + TAG_LEN);
            let m = read_full(reader, &mut next[..c], name).await?;
            if m == 0 {
                true
            } else {
                seal_into(cipher, index, false, &mut cur, n, name)?;
                sink.put(std::mem::replace(&mut cur, next).freeze()).await?;
                total += n as u64;
                index += 1;
                n = m;
                continue;
            }
        };
        debug_assert!(last);
        seal_into(cipher, index, true, &mut cur, n, name)?;
        sink.put(cur.freeze()).await?;
        total += n as u64;
        return Ok(total);
    }
}

fn seal_into(
    cipher: &FileCipher,
    index: u64,
    last: bool,
    buf: &mut BytesMut,
    n: usize,
    name: &str,
) -> Result<()> {
    if u32::try_from(index).is_err() {
        return Err(Error::TooLarge {
            path: name.to_owned(),
        });
    }
    buf.truncate(n + TAG_LEN);
    cipher.seal(index, last, &mut buf[..])
}

async fn read_full<R>(reader: &mut R, buf: &mut [u8], name: &str) -> Result<usize>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut n = 0;
    while n < buf.len() {
        let m = reader
            .read(&mut buf[n..])
            .await
            .map_err(|e| Error::io(name, e))?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

/// Reads and verifies the whole object `path`.
pub async fn get_decrypted(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    keys: &dyn KeySource,
) -> Result<Bytes> {
    let span = tracing::debug_span!("get_decrypted", path = %path);
    async {
        EncryptedObject::open(store.clone(), path, keys)
            .await?
            .read_all()
            .await
    }
    .instrument(span)
    .await
}

/// Reads and verifies plaintext bytes `range` of the object `path`.
pub async fn get_decrypted_range(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    keys: &dyn KeySource,
    range: Range<u64>,
) -> Result<Bytes> {
    let span = tracing::debug_span!("get_decrypted_range", path = %path, start = range.start, end = range.end);
    async {
        EncryptedObject::open(store.clone(), path, keys)
            .await?
            .read_range(range)
            .await
    }
    .instrument(span)
    .await
}

/// One side of a [`reencrypt`]: an object and the keys for it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// The store.
    pub store: &'a Arc<dyn ObjectStore>,
    /// The object.
    pub path: &'a Path,
    /// Its keys.
    pub keys: &'a dyn KeySource,
}

/// What a [`reencrypt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Plaintext bytes copied.
    pub plaintext_bytes: u64,
    /// Bytes of the destination object.
    pub object_bytes: u64,
    /// Chunks verified and re-sealed.
    pub chunks: u64,
    /// Whether a multipart upload was used.
    pub multipart: bool,
}

/// Copies `src` to `dst`, decrypting with the source's key and re-encrypting with the
/// destination's, chunk by chunk in place. The copy keeps the source's chunk size. See the
/// [module docs](self) for what is guaranteed.
pub async fn reencrypt(
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    opts: &CopyOptions,
    enc: &EncryptOptions,
) -> Result<CopyStats> {
    reencrypt_with(src, dst, opts, enc, PutOptions::default()).await
}

/// [`reencrypt`] honouring `put`'s mode at any size (as [`upload_encrypted_with`]):
/// `PutMode::Create` publishes the copy only if the destination does not exist.
pub async fn reencrypt_with(
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    opts: &CopyOptions,
    enc: &EncryptOptions,
    put: PutOptions,
) -> Result<CopyStats> {
    let span = tracing::info_span!("reencrypt", src = %src.path, dst = %dst.path);
    reencrypt_inner(src, dst, opts, enc, put)
        .instrument(span)
        .await
}

async fn reencrypt_inner(
    src: Endpoint<'_>,
    dst: Endpoint<'_>,
    opts: &CopyOptions,
    enc: &EncryptOptions,
    put: PutOptions,
) -> Result<CopyStats> {
    let obj = EncryptedObject::open(src.store.clone(), src.path, src.keys).await?;
    let layout = obj.layout;
    let dst_name = dst.path.to_string();
    let (dst_header, dst_cipher) =
        new_file(&dst_name, dst.keys, obj.header.chunk_size(), &enc.random).await?;
    let dst_layout = Layout {
        header_len: dst_header.len() as u64,
        ..layout
    };
    let mut sink = Sink::new(
        dst.store.clone(),
        dst.path.clone(),
        opts,
        &put.mode,
        &enc.random,
    )?;
    let mut reader = BlockReader::new(&obj, opts);
    let copied = async {
        sink.put(Bytes::copy_from_slice(dst_header.as_bytes()))
            .await?;
        while let Some((chunks, sealed)) = reader.next().await? {
            // Each chunk is re-sealed right after it verified, while it is in cache.
            let block = open_block(&obj.cipher, &layout, chunks, sealed, &obj.name, |i, c| {
                dst_cipher.seal(i, i + 1 == layout.chunks, c)
            })?;
            // Blocks go to the upload as they are: it cuts parts by reference, no copy.
            sink.put(block.freeze()).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    drop(reader);
    if let Err(e) = copied {
        tracing::warn!(error = %e, "re-encrypting copy failed; nothing published");
        sink.abort().await;
        return Err(e);
    }
    let multipart = matches!(sink.state, SinkState::Multipart(_));
    sink.finish(put).await?;
    tracing::debug!(
        bytes = layout.plaintext_len(),
        chunks = layout.chunks,
        multipart,
        "re-encrypted copy published"
    );
    Ok(CopyStats {
        plaintext_bytes: layout.plaintext_len(),
        object_bytes: dst_layout.object_len(),
        chunks: layout.chunks,
        multipart,
    })
}
