//! Streamed inserts and loads: a request body decoded into record batches while it
//! arrives.
//!
//! ```text
//!  HTTP body chunks ──(bounded channel, hashed as they pass)──▶ decoder (blocking thread:
//!  JSON rows / NDJSON / CSV parsed incrementally; Parquet spooled to a temporary file,
//!  its footer being at the end) ──(bounded channel of batches)──▶ Tables::insert_stream
//!  (files encoded and stored as they fill, one commit at the end)
//! ```
//!
//! Both channels are bounded, so a slow store slows the decoder, which slows the reading
//! of the body: memory holds a few body chunks, a batch or two and the files being
//! encoded, never the body. A decoding error names the line or row and ends the
//! statement before its commit, so nothing becomes visible and the files written so far
//! are removed with its transaction.

use std::io::Read;
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tern_meta::ColumnDef;
use tern_table::load::{self, Format};
use tokio::sync::mpsc;

use crate::rows;

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8 * 1024;
/// Body chunks buffered between the connection and the decoder.
const CHUNKS_AHEAD: usize = 8;
/// Decoded batches buffered between the decoder and the file writer.
const BATCHES_AHEAD: usize = 2;

/// What reading a streamed body came to.
#[derive(Debug, Clone, Default)]
pub struct BodyRead {
    /// Bytes read.
    pub bytes: u64,
}

/// A request body being decoded: its batches, and (once the body has been read to its
/// end) its digest and length.
pub struct Ingest {
    /// The rows, batch by batch; an error (bad input, a broken connection) ends it.
    pub batches: futures::stream::BoxStream<'static, tern_table::Result<RecordBatch>>,
    /// SHA-256 (hex) of the request parts given to [`ingest`] followed by the body; set
    /// when the body has been read to its end, before `batches` ends.
    pub request_hash: Arc<OnceLock<String>>,
    /// The body's length, known at the same time.
    pub body: Arc<OnceLock<BodyRead>>,
}

/// Start decoding `body` in `format` (`None`: JSON rows, an array of row objects or
/// `{"rows": [...]}`) for a table of `columns`. `hash_parts` (method, target, content
/// type) are digested ahead of the body for the request's idempotency hash.
pub fn ingest<B, E>(
    body: B,
    format: Option<Format>,
    columns: Vec<ColumnDef>,
    hash_parts: Vec<Vec<u8>>,
) -> Ingest
where
    B: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (chunk_tx, chunk_rx) = mpsc::channel::<std::result::Result<Bytes, String>>(CHUNKS_AHEAD);
    let (batch_tx, mut batch_rx) = mpsc::channel(BATCHES_AHEAD);
    let request_hash = Arc::new(OnceLock::new());
    let read = Arc::new(OnceLock::new());
    let (hash, done) = (Arc::clone(&request_hash), Arc::clone(&read));
    tokio::spawn(async move {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for part in &hash_parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let mut len = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    h.update(&b);
                    len += b.len() as u64;
                    if chunk_tx.send(Ok(b)).await.is_err() {
                        // The decoder stopped (bad input, or the statement failed).
                        return;
                    }
                }
                Err(e) => {
                    let _ = chunk_tx
                        .send(Err(format!("cannot read the request body: {e}")))
                        .await;
                    return;
                }
            }
        }
        // The body's length closes the digest (it is not known before the end).
        h.update(len.to_be_bytes());
        let hex = h.finalize().iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        let _ = hash.set(hex);
        let _ = done.set(BodyRead { bytes: len });
        // Dropping the sender after the digest is set: the decoder sees the end of the body
        // only now, so the digest is there before the last batch is.
        drop(chunk_tx);
    });
    tokio::task::spawn_blocking(move || {
        let feed = Feed {
            rx: chunk_rx,
            current: Bytes::new(),
        };
        let sink_tx = batch_tx.clone();
        let sink = move |b: RecordBatch| {
            sink_tx
                .blocking_send(Ok(b))
                .map_err(|_| bad(None, "the statement stopped reading".into()))
        };
        if let Err(e) = decode(format, &columns, feed, sink) {
            let _ = batch_tx.blocking_send(Err(e));
        }
    });
    let batches = futures::stream::poll_fn(move |cx| batch_rx.poll_recv(cx)).boxed();
    Ingest {
        batches,
        request_hash,
        body: read,
    }
}

fn bad(line: Option<u64>, detail: String) -> tern_table::Error {
    tern_table::Error::BadInput {
        source_name: "request body".into(),
        line,
        detail,
    }
}

/// The body as a blocking reader of the chunks the connection hands over.
struct Feed {
    rx: mpsc::Receiver<std::result::Result<Bytes, String>>,
    current: Bytes,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn decode(
    format: Option<Format>,
    columns: &[ColumnDef],
    feed: Feed,
    mut sink: impl FnMut(RecordBatch) -> tern_table::Result<()>,
) -> tern_table::Result<()> {
    match format {
        Some(Format::Csv) => load::for_each_csv(feed, columns, "uploaded CSV", BATCH_ROWS, sink),
        Some(Format::Ndjson) => {
            load::for_each_ndjson(feed, columns, "uploaded NDJSON", BATCH_ROWS, sink)
        }
        Some(Format::Parquet) => {
            // A Parquet file's footer is at its end: it is spooled to a temporary file
            // (removed when dropped), then read a row group at a time.
            let mut spool = tempfile::tempfile().map_err(|e| {
                bad(
                    None,
                    format!("cannot make a temporary file for the upload: {e}"),
                )
            })?;
            let mut feed = feed;
            std::io::copy(&mut feed, &mut spool)
                .map_err(|e| bad(None, format!("cannot spool the upload: {e}")))?;
            load::for_each_parquet(spool, "uploaded Parquet", BATCH_ROWS, sink)
        }
        None => json_rows(feed, columns, &mut sink),
    }
}

/// JSON rows read one row at a time: `[{...}, ...]` or `{"rows": [{...}, ...]}` (other
/// keys of the object are skipped). Rows are converted a batch at a time, as
/// [`rows::rows_to_batches`] converts a whole body.
fn json_rows(
    feed: Feed,
    columns: &[ColumnDef],
    sink: &mut dyn FnMut(RecordBatch) -> tern_table::Result<()>,
) -> tern_table::Result<()> {
    let mut state = RowSink {
        columns,
        sink,
        pending: Vec::with_capacity(BATCH_ROWS),
        first_row: 0,
        failed: None,
    };
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 << 10, feed));
    let outcome = Body(&mut state)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(e) = state.failed.take() {
        return Err(e);
    }
    outcome.map_err(|e| {
        let line = (e.line() > 0).then_some(e.line() as u64);
        bad(line, format!("bad JSON body: {e}"))
    })?;
    state.flush()
}

struct RowSink<'a> {
    columns: &'a [ColumnDef],
    sink: &'a mut dyn FnMut(RecordBatch) -> tern_table::Result<()>,
    pending: Vec<Value>,
    /// The number (from 0) of the first pending row.
    first_row: u64,
    /// The error that stopped the parse (reported instead of the parser's).
    failed: Option<tern_table::Error>,
}

impl RowSink<'_> {
    fn push(&mut self, row: Value) -> tern_table::Result<()> {
        self.pending.push(row);
        if self.pending.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> tern_table::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        let first = self.first_row;
        self.first_row += rows.len() as u64;
        let batches = rows::rows_to_batches(&rows, self.columns).map_err(|e| {
            // Row numbers in the error count from the batch's first row.
            bad(
                None,
                format!(
                    "in rows {first}–{} (numbered from 0): {e}",
                    first + rows.len() as u64 - 1
                ),
            )
        })?;
        for b in batches {
            (self.sink)(b)?;
        }
        Ok(())
    }

    fn fail<E: serde::de::Error>(&mut self, e: tern_table::Error) -> E {
        let message = e.to_string();
        self.failed = Some(e);
        E::custom(message)
    }
}

/// The body: an array of rows, or an object with a `rows` array.
struct Body<'s, 'a>(&'s mut RowSink<'a>);

const EXPECTED: &str = "{\"rows\": [...]} or an array of rows";

impl<'de> DeserializeSeed<'de> for Body<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Body<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(EXPECTED)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Rows(self.0).visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut found = false;
        while let Some(k) = map.next_key::<String>()? {
            if k == "rows" && !found {
                map.next_value_seed(Rows(&mut *self.0))?;
                found = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !found {
            return Err(serde::de::Error::custom(format!("expected {EXPECTED}")));
        }
        Ok(())
    }
}

/// The array of rows, read one row at a time.
struct Rows<'s, 'a>(&'s mut RowSink<'a>);

impl<'de> DeserializeSeed<'de> for Rows<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of row objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(row) = seq.next_element::<Value>()? {
            if let Err(e) = self.0.push(row) {
                return Err(self.0.fail(e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_meta::ColumnType;

    fn columns() -> Vec<ColumnDef> {
        vec![
            ColumnDef {
                name: "id".into(),
                ty: ColumnType::Int64,
                nullable: false,
            },
            ColumnDef {
                name: "x".into(),
                ty: ColumnType::Float64,
                nullable: true,
            },
        ]
    }

    /// Decode `body` cut into `chunk`-byte pieces; the row count or the error.
    async fn decode_in_chunks(
        body: &[u8],
        chunk: usize,
        format: Option<Format>,
    ) -> tern_table::Result<usize> {
        let pieces: Vec<std::result::Result<Bytes, std::convert::Infallible>> = body
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut ingest = ingest(futures::stream::iter(pieces), format, columns(), vec![]);
        let mut rows = 0;
        while let Some(b) = ingest.batches.next().await {
            rows += b?.num_rows();
        }
        assert!(ingest.request_hash.get().is_some(), "digest set by the end");
        Ok(rows)
    }

    #[tokio::test]
    async fn json_rows_are_read_in_pieces_in_both_shapes() {
        let rows: Vec<String> = (0..20_000)
            .map(|i| format!("{{\"id\": {i}, \"x\": \"NaN\"}}"))
            .collect();
        let array = format!("[{}]", rows.join(",\n"));
        assert_eq!(
            decode_in_chunks(array.as_bytes(), 7, None)
                .await
                .expect("array"),
            20_000
        );
        let object = format!("{{\"note\": [1, {{\"a\": 2}}], \"rows\": {array}, \"z\": 1}}");
        assert_eq!(
            decode_in_chunks(object.as_bytes(), 4096, None)
                .await
                .expect("object"),
            20_000
        );
    }

    #[tokio::test]
    async fn bad_json_mid_body_names_its_line_or_row() {
        let mut body = String::from("[\n");
        for i in 0..10_000 {
            body.push_str(&format!("{{\"id\": {i}}},\n"));
        }
        body.push_str("{\"id\": oops}\n]");
        let e = decode_in_chunks(body.as_bytes(), 1000, None)
            .await
            .expect_err("bad");
        assert!(e.to_string().contains("line 10002"), "{e}");
        let mut body = String::from("[");
        for i in 0..10_000 {
            body.push_str(&format!("{{\"id\": {i}}},"));
        }
        body.push_str("{\"id\": \"ten\"}]");
        let e = decode_in_chunks(body.as_bytes(), 1000, None)
            .await
            .expect_err("bad");
        let msg = e.to_string();
        assert!(msg.contains("8192") && msg.contains("10000"), "{msg}");
        let e = decode_in_chunks(b"{\"lines\": []}", 3, None)
            .await
            .expect_err("no rows");
        assert!(e.to_string().contains("expected"), "{e}");
    }

    #[tokio::test]
    async fn csv_and_ndjson_are_read_in_pieces() {
        let mut csv = String::from("id,x\n");
        let mut nd = String::new();
        for i in 0..30_000 {
            csv.push_str(&format!("{i},{i}.5\n"));
            nd.push_str(&format!("{{\"id\":{i},\"x\":1.5}}\n"));
        }
        assert_eq!(
            decode_in_chunks(csv.as_bytes(), 333, Some(Format::Csv))
                .await
                .expect("csv"),
            30_000
        );
        assert_eq!(
            decode_in_chunks(nd.as_bytes(), 333, Some(Format::Ndjson))
                .await
                .expect("nd"),
            30_000
        );
        csv.push_str("30000,not-a-number\n");
        let e = decode_in_chunks(csv.as_bytes(), 333, Some(Format::Csv))
            .await
            .expect_err("bad");
        assert!(e.to_string().contains("line 30002"), "{e}");
    }
}
