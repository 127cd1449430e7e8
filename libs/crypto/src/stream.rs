//! Encrypting and decrypting over tokio readers and writers, and in memory.
//!
//! - [`EncryptWriter`] is an `AsyncWrite`: plaintext in, the encrypted file out to the inner
//!   writer. The final chunk is sealed by [`EncryptWriter::finish`] or `shutdown`; a writer
//!   dropped without either leaves a file that fails to decrypt (it has no final chunk), so
//!   an interrupted write can never pass for a complete one.
//! - [`DecryptReader`] is an `AsyncRead`: the encrypted file in, verified plaintext out. It
//!   hands out a chunk's plaintext only after the chunk authenticated, and it signals end of
//!   file (`Ok(0)`) only after the final chunk authenticated as final: a truncated,
//!   extended or reordered file ends in an error, never in a silent short read.
//!
//! Memory: one chunk (plus one byte of look-ahead) per reader or writer.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::error::{Error, Result};
use crate::format::{self, DEFAULT_CHUNK_SIZE, FileCipher, Header, NONCE_PREFIX_LEN, TAG_LEN};
use crate::keysource::KeySource;
use crate::random::{self, SharedRandom, SystemRandom};

/// Parameters for writing new encrypted files.
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// Plaintext bytes per chunk (default [`DEFAULT_CHUNK_SIZE`], 256 KiB).
    pub chunk_size: u32,
    /// Source of nonce prefixes.
    pub random: SharedRandom,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        EncryptOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            random: SystemRandom::shared(),
        }
    }
}

impl EncryptOptions {
    /// The same options with another chunk size.
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// The same options with another source of randomness.
    pub fn with_random(mut self, random: SharedRandom) -> Self {
        self.random = random;
        self
    }
}

/// Resolves the key for a new file `name` and builds its header and cipher.
pub(crate) async fn new_file(
    name: &str,
    keys: &dyn KeySource,
    chunk_size: u32,
    random: &SharedRandom,
) -> Result<(Header, FileCipher)> {
    let (key_ref, file_key) = keys.encryption_key(name).await?;
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = random::array(&**random)?;
    FileCipher::create(&file_key, key_ref, chunk_size, nonce_prefix)
}

/// Resolves the key of an existing file from its header and checks the header tag.
pub(crate) async fn open_file(
    name: &str,
    keys: &dyn KeySource,
    header: &Header,
) -> Result<FileCipher> {
    let file_key = keys.decryption_key(name, header.key_ref()).await?;
    FileCipher::open(&file_key, header, name)
}

/// Encrypts `plaintext` in memory as the file `name`.
pub async fn encrypt_bytes(
    name: &str,
    keys: &dyn KeySource,
    plaintext: &[u8],
    opts: &EncryptOptions,
) -> Result<Vec<u8>> {
    let (key_ref, file_key) = keys.encryption_key(name).await?;
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = random::array(&*opts.random)?;
    format::seal_bytes(
        &file_key,
        key_ref,
        opts.chunk_size,
        nonce_prefix,
        plaintext,
        name,
    )
}

/// Starts the file `name` sealed in memory as it is written ([`SealingWriter`]): for a
/// document encoded straight into its encryption (a large log record), so that neither its
/// plaintext nor one contiguous ciphertext is ever held — the sealed file is a list of
/// chunks, each ready to be a part of a payload.
pub async fn sealing_writer(
    name: &str,
    keys: &dyn KeySource,
    opts: &EncryptOptions,
) -> Result<SealingWriter> {
    let (header, cipher) = new_file(name, keys, opts.chunk_size, &opts.random).await?;
    let chunk_size = header.chunk_size() as usize;
    Ok(SealingWriter {
        name: name.to_owned(),
        cipher,
        chunk_size,
        sealed: vec![bytes::Bytes::copy_from_slice(header.as_bytes())],
        current: Vec::with_capacity(chunk_size + TAG_LEN),
        index: 0,
    })
}

/// A synchronous [`std::io::Write`] that seals what it is given chunk by chunk, in memory
/// (see [`sealing_writer`]). [`SealingWriter::finish`] seals the final chunk; the parts
/// are byte for byte what [`encrypt_bytes`] makes of the same plaintext (with the same
/// nonce prefix). Memory: the sealed chunks and one chunk of plaintext.
pub struct SealingWriter {
    name: String,
    cipher: FileCipher,
    chunk_size: usize,
    sealed: Vec<bytes::Bytes>,
    /// Plaintext of the chunk being filled (room for the tag is added when it is sealed).
    current: Vec<u8>,
    index: u64,
}

impl std::fmt::Debug for SealingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingWriter")
            .field("name", &self.name)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl SealingWriter {
    fn seal_current(&mut self, last: bool) -> Result<()> {
        if u32::try_from(self.index).is_err() {
            return Err(Error::TooLarge {
                path: self.name.clone(),
            });
        }
        let mut chunk = std::mem::replace(
            &mut self.current,
            Vec::with_capacity(self.chunk_size + TAG_LEN),
        );
        chunk.resize(chunk.len() + TAG_LEN, 0);
        self.cipher.seal(self.index, last, &mut chunk)?;
        self.sealed.push(bytes::Bytes::from(chunk));
        self.index += 1;
        Ok(())
    }

    /// Seals the final chunk and returns the sealed file, as parts in order.
    pub fn finish(mut self) -> Result<Vec<bytes::Bytes>> {
        self.seal_current(true)?;
        Ok(self.sealed)
    }
}

impl std::io::Write for SealingWriter {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            // A full chunk is sealed only once more plaintext follows it: the last chunk
            // (sealed by `finish`) is never empty unless the whole file is.
            if self.current.len() == self.chunk_size {
                self.seal_current(false)?;
            }
            let room = self.chunk_size - self.current.len();
            let take = room.min(buf.len());
            self.current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decrypts the whole file `name` held in memory.
pub async fn decrypt_bytes(name: &str, keys: &dyn KeySource, ciphertext: &[u8]) -> Result<Vec<u8>> {
    let header = Header::parse(ciphertext).map_err(|f| Error::header(name, f))?;
    let cipher = open_file(name, keys, &header).await?;
    format::open_body(&cipher, &header, &ciphertext[header.len()..], name)
}

/// Reads and parses a header from the start of a stream.
pub async fn read_header<R: AsyncRead + Unpin>(reader: &mut R, name: &str) -> Result<Header> {
    let mut buf = vec![0u8; 8];
    read_exact_or_short(reader, &mut buf, name).await?;
    let len = Header::declared_len(&buf).map_err(|f| Error::header(name, f))?;
    buf.resize(len, 0);
    read_exact_or_short(reader, &mut buf[8..], name).await?;
    Header::parse(&buf).map_err(|f| Error::header(name, f))
}

async fn read_exact_or_short<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    name: &str,
) -> Result<()> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::InvalidHeader {
            path: name.to_owned(),
            fault: crate::error::HeaderFault::TooShort,
        }),
        Err(e) => Err(Error::io(name, e)),
    }
}

/// Encrypts everything `reader` yields into `writer` as the file `name`; flushes `writer`
/// (without shutting it down). Returns the plaintext length.
pub async fn encrypt_stream<R, W>(
    reader: &mut R,
    writer: &mut W,
    name: &str,
    keys: &dyn KeySource,
    opts: &EncryptOptions,
) -> Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut enc = EncryptWriter::new(writer, name, keys, opts).await?;
    let cap = (opts.chunk_size as usize).min(1 << 20);
    let mut reader = tokio::io::BufReader::with_capacity(cap, reader);
    let n = tokio::io::copy_buf(&mut reader, &mut enc)
        .await
        .map_err(|e| Error::io(name, e))?;
    enc.finish().await?;
    Ok(n)
}

/// Decrypts the file `name` from `reader` into `writer`, which receives only authenticated
/// plaintext. Returns the plaintext length once the final chunk has authenticated; on error
/// `writer` may hold a verified prefix of the plaintext, which the caller must discard.
pub async fn decrypt_stream<R, W>(
    reader: &mut R,
    writer: &mut W,
    name: &str,
    keys: &dyn KeySource,
) -> Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut dec = DecryptReader::new(reader, name, keys).await?;
    let mut n = 0u64;
    while let Some(chunk) = dec.next_chunk().await? {
        n += chunk.len() as u64;
        writer
            .write_all(chunk)
            .await
            .map_err(|e| Error::io(name, e))?;
    }
    writer.flush().await.map_err(|e| Error::io(name, e))?;
    Ok(n)
}

/// Re-encrypts the file `src_name` read from `reader` (key from `src_keys`) into `writer` as
/// the file `dst_name` (key from `dst_keys`), chunk by chunk in place, keeping the chunk
/// size. Memory: one chunk. `writer` receives each chunk only after its source chunk
/// authenticated; on error it may hold a prefix of the copy, which the caller must discard
/// (the object-store [`reencrypt`](crate::object::reencrypt) does that for you). Returns the
/// plaintext length.
pub async fn reencrypt_stream<R, W>(
    reader: &mut R,
    writer: &mut W,
    src_name: &str,
    src_keys: &dyn KeySource,
    dst_name: &str,
    dst_keys: &dyn KeySource,
    opts: &EncryptOptions,
) -> Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut dec = DecryptReader::new(reader, src_name, src_keys).await?;
    let chunk_size =
        u32::try_from(dec.stride - TAG_LEN).map_err(|_| Error::Internal { what: "chunk size" })?;
    let (header, cipher) = new_file(dst_name, dst_keys, chunk_size, &opts.random).await?;
    writer
        .write_all(header.as_bytes())
        .await
        .map_err(|e| Error::io(dst_name, e))?;
    let mut n = 0u64;
    while std::future::poll_fn(|cx| dec.poll_chunk(cx)).await? {
        let len = dec.plain.len();
        let last = dec.state == ReadState::Last;
        let sealed = &mut dec.buf[..len + TAG_LEN];
        cipher.seal(dec.index - 1, last, sealed)?;
        dec.plain = 0..0;
        writer
            .write_all(sealed)
            .await
            .map_err(|e| Error::io(dst_name, e))?;
        n += len as u64;
    }
    writer.flush().await.map_err(|e| Error::io(dst_name, e))?;
    Ok(n)
}

/// An `AsyncWrite` that encrypts into an inner writer. See the [module docs](self).
pub struct EncryptWriter<W> {
    inner: W,
    path: String,
    cipher: FileCipher,
    chunk_size: usize,
    header: Vec<u8>,
    header_written: usize,
    /// Plaintext of the current chunk in `buf[..len]`; room for the tag after it.
    buf: Vec<u8>,
    len: usize,
    /// Sealed bytes of `buf` still to write to `inner`.
    pending: Range<usize>,
    index: u64,
    finished: bool,
}

impl<W> std::fmt::Debug for EncryptWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptWriter")
            .field("path", &self.path)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> EncryptWriter<W> {
    /// Starts the file `name` on `inner` with a key from `keys`.
    pub async fn new(
        inner: W,
        name: &str,
        keys: &dyn KeySource,
        opts: &EncryptOptions,
    ) -> Result<Self> {
        let (header, cipher) = new_file(name, keys, opts.chunk_size, &opts.random).await?;
        let chunk_size = header.chunk_size() as usize;
        Ok(EncryptWriter {
            inner,
            path: name.to_owned(),
            cipher,
            chunk_size,
            header: header.as_bytes().to_vec(),
            header_written: 0,
            buf: vec![0u8; chunk_size + TAG_LEN],
            len: 0,
            pending: 0..0,
            index: 0,
            finished: false,
        })
    }

    /// Seals the final chunk, writes everything out and flushes the inner writer (without
    /// shutting it down). Returns the inner writer.
    pub async fn finish(mut self) -> Result<W> {
        std::future::poll_fn(|cx| self.poll_finish(cx))
            .await
            .map_err(|e| Error::io(&self.path, e))?;
        self.inner
            .flush()
            .await
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(self.inner)
    }

    fn seal_current(&mut self, last: bool) -> io::Result<()> {
        if u32::try_from(self.index).is_err() {
            return Err(Error::TooLarge {
                path: self.path.clone(),
            }
            .into());
        }
        let end = self.len + TAG_LEN;
        self.cipher.seal(self.index, last, &mut self.buf[..end])?;
        self.index += 1;
        self.pending = 0..end;
        Ok(())
    }

    /// Writes the header and any sealed chunk to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.header_written < self.header.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.header[self.header_written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.header_written += n;
        }
        if !self.pending.is_empty() {
            while !self.pending.is_empty() {
                let n = ready!(
                    Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.pending.clone()])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.start += n;
            }
            self.len = 0;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if !self.finished {
            self.seal_current(true)?;
            self.finished = true;
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for EncryptWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the encrypted file was finished",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.len == this.chunk_size {
            // More data follows a full chunk, so that chunk is not the last one.
            this.seal_current(false)?;
            ready!(this.poll_drain(cx))?;
        }
        let n = (this.chunk_size - this.len).min(data.len());
        this.buf[this.len..this.len + n].copy_from_slice(&data[..n]);
        this.len += n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_finish(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// An `AsyncRead` that decrypts and verifies an inner reader. See the [module docs](self).
pub struct DecryptReader<R> {
    inner: R,
    path: String,
    cipher: FileCipher,
    /// Sealed chunk stride (chunk size + tag).
    stride: usize,
    /// `stride + 1` bytes: a sealed chunk and one byte of look-ahead.
    buf: Vec<u8>,
    filled: usize,
    eof: bool,
    index: u64,
    /// Authenticated plaintext in `buf` not yet handed out.
    plain: Range<usize>,
    /// Whether `buf[stride]` holds the look-ahead byte of the next chunk.
    carry: bool,
    state: ReadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    /// The final chunk authenticated; end of file once `plain` is drained.
    Last,
    Failed,
}

impl<R> std::fmt::Debug for DecryptReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptReader")
            .field("path", &self.path)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> DecryptReader<R> {
    /// Reads the header of the file `name` from `inner`, finds its key in `keys` and checks
    /// the header.
    pub async fn new(mut inner: R, name: &str, keys: &dyn KeySource) -> Result<Self> {
        let header = read_header(&mut inner, name).await?;
        let cipher = open_file(name, keys, &header).await?;
        let stride = header.chunk_size() as usize + TAG_LEN;
        Ok(DecryptReader {
            inner,
            path: name.to_owned(),
            cipher,
            stride,
            buf: vec![0u8; stride + 1],
            filled: 0,
            eof: false,
            index: 0,
            plain: 0..0,
            carry: false,
            state: ReadState::Reading,
        })
    }

    /// The next chunk of authenticated plaintext; `None` once the final chunk has been
    /// verified and returned.
    pub async fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        if self.plain.is_empty() {
            let more = std::future::poll_fn(|cx| self.poll_chunk(cx)).await?;
            if !more {
                return Ok(None);
            }
        }
        let range = self.plain.clone();
        self.plain.start = range.end;
        Ok(Some(&self.buf[range]))
    }

    fn fail(&mut self) -> Error {
        self.state = ReadState::Failed;
        self.plain = 0..0;
        Error::decrypt(&self.path)
    }

    /// Makes the next chunk's plaintext available in `self.plain`. `Ok(false)` at a verified
    /// end of file. Call only when `self.plain` is empty.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool>> {
        match self.state {
            ReadState::Failed => return Poll::Ready(Err(Error::decrypt(&self.path))),
            ReadState::Last => return Poll::Ready(Ok(false)),
            ReadState::Reading => {}
        }
        if self.carry {
            self.buf[0] = self.buf[self.stride];
            self.filled = 1;
            self.carry = false;
        }
        while self.filled < self.stride + 1 && !self.eof {
            let mut rb = ReadBuf::new(&mut self.buf[self.filled..]);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb)) {
                Ok(()) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                    } else {
                        self.filled += n;
                    }
                }
                Err(e) => {
                    self.state = ReadState::Failed;
                    return Poll::Ready(Err(Error::io(&self.path, e)));
                }
            }
        }
        let index = self.index;
        if self.filled == self.stride + 1 {
            // A full chunk with more data after it: not the last chunk.
            if self
                .cipher
                .open_chunk(index, false, &mut self.buf[..self.stride])
                .is_err()
            {
                return Poll::Ready(Err(self.fail()));
            }
            self.plain = 0..self.stride - TAG_LEN;
            self.carry = true;
        } else {
            // End of input: what we hold must be the final chunk, non-empty unless it is the
            // only chunk.
            let n = self.filled;
            if n < TAG_LEN || (n == TAG_LEN && index > 0) {
                return Poll::Ready(Err(self.fail()));
            }
            if self
                .cipher
                .open_chunk(index, true, &mut self.buf[..n])
                .is_err()
            {
                return Poll::Ready(Err(self.fail()));
            }
            self.plain = 0..n - TAG_LEN;
            self.state = ReadState::Last;
        }
        self.index += 1;
        if self.index > 1 << 32 {
            return Poll::Ready(Err(self.fail()));
        }
        Poll::Ready(Ok(true))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DecryptReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                out.put_slice(&this.buf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                return Poll::Ready(Ok(()));
            }
            match ready!(this.poll_chunk(cx)) {
                Ok(true) => {}
                Ok(false) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}
