//! Micro-partitions: immutable Parquet files (ZSTD), encrypted with the table's per-file
//! key, written once (`PutMode::Create`) into the volume.
//!
//! Reading goes through [`EncryptedParquet`], a Parquet `AsyncFileReader` over the
//! encrypted object: Parquet asks for the footer and then only the column chunks of the
//! row groups it needs, and only the encryption chunks covering those bytes are fetched and
//! decrypted. So a scan reads only the columns asked for, and row groups whose statistics
//! cannot match are skipped without being fetched.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::{ObjectStore, PutMode, PutOptions};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use tern_crypto::{EncryptOptions, EncryptedObject, KeySource, TableFileKeys};
use tern_meta::{ColumnDef, ColumnStats, ColumnType};
use tern_storage::Path;

use crate::error::{Error, Result};
use crate::predicate::Predicate;
use crate::schema::{batch_stats, merge_stats, scalar_at};

/// How micro-partitions are written.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Close a file once its compressed size reaches this (default 16 MiB).
    pub target_bytes: usize,
    /// Rows per Parquet row group (default 64 Ki): the unit of pruning inside a file.
    pub row_group_rows: usize,
    /// ZSTD level (default 1).
    pub zstd_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            target_bytes: 16 << 20,
            row_group_rows: 64 * 1024,
            zstd_level: 1,
        }
    }
}

/// One encoded (not yet encrypted) micro-partition.
#[derive(Debug)]
pub struct Encoded {
    /// Parquet bytes.
    pub parquet: Vec<u8>,
    /// Rows.
    pub rows: u64,
    /// Per-column statistics (Arrow's total order; exact).
    pub stats: Vec<ColumnStats>,
}

/// The Parquet writer settings micro-partitions are written with (benchmarks write their
/// plain-Parquet references with the same, so that a comparison measures what Tern adds,
/// not a compression choice).
pub fn writer_props(opts: &WriteOptions) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(opts.zstd_level).map_err(|e| Error::Parquet {
        path: "<writer settings>".into(),
        source: e,
    })?;
    Ok(props(opts, Compression::ZSTD(level)))
}

fn props(opts: &WriteOptions, compression: Compression) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(opts.row_group_rows.max(1)))
        .set_statistics_truncate_length(None)
        .build()
}

/// Files of fewer rows than this are written without compression: a file of a few rows
/// (one single-row insert) gains nothing from ZSTD, whose two contexts per column cost
/// more CPU than the rest of its encoding; compaction later merges such files into
/// compressed ones.
pub const SMALL_FILE_ROWS: usize = 1024;

/// Encodes rows into micro-partition files of about the target size, one file at a time,
/// so a caller can store each file while the next is being encoded and memory stays
/// bounded by a file or two whatever the input size.
///
/// A file's first rows are held back (fewer than [`SMALL_FILE_ROWS`], and less memory than
/// the target size) until more come: a file that ends that small is written uncompressed,
/// any other with ZSTD.
pub struct Encoder {
    schema: SchemaRef,
    columns: Vec<ColumnDef>,
    opts: WriteOptions,
    props: WriterProperties,
    /// The open file's writer, once it holds [`SMALL_FILE_ROWS`] rows or more.
    writer: Option<ArrowWriter<Vec<u8>>>,
    /// The open file's rows while it is small (in rows, and in memory below the target
    /// size), not yet given to a writer.
    held: Vec<RecordBatch>,
    held_bytes: usize,
    /// The open file's rows and statistics.
    rows: u64,
    stats: Vec<ColumnStats>,
}

fn encode_err(e: parquet::errors::ParquetError) -> Error {
    Error::Parquet {
        path: "<new micro-partition>".into(),
        source: e,
    }
}

impl Encoder {
    /// An encoder for rows conforming to `schema`/`columns`.
    pub fn new(schema: &SchemaRef, columns: &[ColumnDef], opts: &WriteOptions) -> Result<Self> {
        Ok(Self {
            schema: Arc::clone(schema),
            columns: columns.to_vec(),
            opts: opts.clone(),
            props: writer_props(opts)?,
            writer: None,
            held: Vec::new(),
            held_bytes: 0,
            rows: 0,
            stats: Vec::new(),
        })
    }

    /// A writer for the open file with `props`, given the rows held back so far.
    fn open(&mut self, props: WriterProperties) -> Result<ArrowWriter<Vec<u8>>> {
        let mut w = ArrowWriter::try_new(Vec::new(), Arc::clone(&self.schema), Some(props))
            .map_err(encode_err)?;
        self.held_bytes = 0;
        for b in self.held.drain(..) {
            w.write(&b).map_err(encode_err)?;
        }
        Ok(w)
    }

    /// Close the open file.
    fn close(&mut self, w: ArrowWriter<Vec<u8>>) -> Result<Encoded> {
        Ok(Encoded {
            parquet: w.into_inner().map_err(encode_err)?,
            rows: std::mem::take(&mut self.rows),
            stats: std::mem::take(&mut self.stats),
        })
    }

    /// Add a batch; returns the files it completed (usually none or one).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<Vec<Encoded>> {
        let mut done = Vec::new();
        // Slice large batches so the size check runs often enough to honour the target.
        let slice_rows = self.opts.row_group_rows.clamp(1, 64 * 1024);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = slice_rows.min(batch.num_rows() - offset);
            let part = batch.slice(offset, len);
            offset += len;
            self.rows += len as u64;
            let part_stats = batch_stats(&part, &self.columns);
            self.stats = if self.stats.is_empty() {
                part_stats
            } else {
                self.stats
                    .iter()
                    .zip(&part_stats)
                    .map(|(a, b)| merge_stats(a, b))
                    .collect()
            };
            let mut writer = match self.writer.take() {
                Some(w) => w,
                None if self.rows < SMALL_FILE_ROWS as u64
                    && self.held_bytes + part.get_array_memory_size() < self.opts.target_bytes =>
                {
                    self.held_bytes += part.get_array_memory_size();
                    self.held.push(part);
                    continue;
                }
                None => self.open(self.props.clone())?,
            };
            writer.write(&part).map_err(encode_err)?;
            if writer.bytes_written() + writer.in_progress_size() >= self.opts.target_bytes {
                done.push(self.close(writer)?);
            } else {
                self.writer = Some(writer);
            }
        }
        Ok(done)
    }

    /// Close the last, partly filled file, if any.
    pub fn finish(mut self) -> Result<Option<Encoded>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let writer = match self.writer.take() {
            Some(w) => w,
            None => self.open(props(&self.opts, Compression::UNCOMPRESSED))?,
        };
        self.close(writer).map(Some)
    }
}

/// Encode batches (already conformed to `schema`) into files of about the target size.
pub fn encode(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    columns: &[ColumnDef],
    opts: &WriteOptions,
) -> Result<Vec<Encoded>> {
    let mut encoder = Encoder::new(schema, columns, opts)?;
    let mut out = Vec::new();
    for batch in batches {
        out.extend(encoder.push(batch)?);
    }
    out.extend(encoder.finish()?);
    Ok(out)
}

/// The prefix of a micro-partition's key reference (`MicroPartitionDpo::key_ref`).
pub const KEY_REF_PREFIX: &str = "tmk-hkdf-path:";

/// Rows per decoded batch when reading a micro-partition: DataFusion's batch size. The
/// Parquet reader's default (1 024) made every operator above a scan (aggregates, hash
/// joins) pay its per-batch cost eight times as often.
pub const READ_BATCH_ROWS: usize = 8192;

/// The key reference of a micro-partition sealed with `keys`: which key and how its file
/// key is derived, as DESIGN.md §4 asks of a key reference — `tmk-hkdf-path:<id>`, the file
/// key being `HKDF-SHA256(TMK, info = object path)` under the table master key whose id
/// (fingerprint, never key material) is `<id>`, the id the file's header names. A copy on
/// another deployment is re-encrypted under that deployment's TMK, so its reference is set
/// where it is committed ([`Change::prepare`](crate::Change::prepare)), never copied.
pub fn key_ref(keys: &TableFileKeys) -> String {
    format!("{KEY_REF_PREFIX}{}", keys.master_id())
}

/// Encrypt and store one encoded micro-partition at `path` (created once). Returns its
/// Parquet length (compressed, before encryption): what `MicroPartitionDpo::bytes` holds.
pub async fn store(
    volume: &dyn ObjectStore,
    path: &Path,
    keys: &dyn KeySource,
    encoded: &Encoded,
) -> Result<u64> {
    let put = PutOptions::from(PutMode::Create);
    tern_crypto::put_encrypted(
        volume,
        path,
        keys,
        &encoded.parquet,
        &EncryptOptions::default(),
        put,
    )
    .await?;
    Ok(encoded.parquet.len() as u64)
}

/// A Parquet reader over an encrypted micro-partition: byte ranges are decrypted on demand.
pub struct EncryptedParquet {
    object: Arc<EncryptedObject>,
}

impl EncryptedParquet {
    /// Open the micro-partition at `path` (reads and checks its header).
    pub async fn open(
        volume: Arc<dyn ObjectStore>,
        path: &Path,
        keys: &dyn KeySource,
    ) -> Result<Self> {
        let object = EncryptedObject::open(volume, path, keys).await?;
        Ok(Self {
            object: Arc::new(object),
        })
    }
}

fn external(e: tern_crypto::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

fn external_any(message: String) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(message)
}

/// Ranges of one fetch closer than this are read as one span (the bytes between are read
/// and decrypted too, one request instead of several), as object_store's `get_ranges`
/// coalesces for plain files.
const COALESCE_GAP: u64 = 1 << 20;

/// `ranges` (in any order) grouped into spans to read: each span's range and the indices
/// of the ranges it covers.
fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<(Range<u64>, Vec<usize>)> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let mut spans: Vec<(Range<u64>, Vec<usize>)> = Vec::new();
    for i in order {
        let r = &ranges[i];
        match spans.last_mut() {
            Some((span, members)) if r.start <= span.end.saturating_add(gap) => {
                span.end = span.end.max(r.end);
                members.push(i);
            }
            _ => spans.push((r.clone(), vec![i])),
        }
    }
    spans
}

impl AsyncFileReader for EncryptedParquet {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let object = Arc::clone(&self.object);
        async move { object.read_range(range).await.map_err(external) }.boxed()
    }

    /// The column chunks of a row group in one read and decryption per span of nearby
    /// ranges (the trait's default reads them one after another, a request each).
    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let object = Arc::clone(&self.object);
        async move {
            let spans = coalesce(&ranges, COALESCE_GAP);
            let read = futures::future::try_join_all(
                spans
                    .iter()
                    .map(|(span, _)| object.read_range(span.clone())),
            )
            .await
            .map_err(external)?;
            let mut out = vec![Bytes::new(); ranges.len()];
            for ((span, members), bytes) in spans.iter().zip(read) {
                for &i in members {
                    let (start, end) = (ranges[i].start - span.start, ranges[i].end - span.start);
                    let (start, end) = (
                        usize::try_from(start).map_err(|e| external_any(e.to_string()))?,
                        usize::try_from(end).map_err(|e| external_any(e.to_string()))?,
                    );
                    if end > bytes.len() {
                        return Err(external_any(format!(
                            "range {:?} past the {} bytes read",
                            ranges[i],
                            bytes.len()
                        )));
                    }
                    out[i] = bytes.slice(start..end);
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let len = self.object.plaintext_len();
            // One read of the last 64 KiB usually holds the whole footer.
            let reader = ParquetMetaDataReader::new().with_prefetch_hint(Some(64 << 10));
            Ok(Arc::new(reader.load_and_finish(self, len).await?))
        }
        .boxed()
    }
}

/// What reading one micro-partition did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    /// Row groups in the file.
    pub row_groups: usize,
    /// Row groups skipped by their statistics.
    pub row_groups_skipped: usize,
}

/// Read a micro-partition: only `projection`'s columns (all when `None`), only row groups
/// whose statistics may match `predicate`, rows filtered by `predicate`.
pub async fn read(
    volume: Arc<dyn ObjectStore>,
    path: &Path,
    keys: &dyn KeySource,
    columns: &[ColumnDef],
    projection: Option<&[String]>,
    predicate: &Predicate,
) -> Result<(Vec<RecordBatch>, ReadStats)> {
    let (stream, stats) = read_stream(volume, path, keys, columns, projection, predicate).await?;
    Ok((stream.try_collect().await?, stats))
}

/// A micro-partition's rows as they are decoded, one Parquet batch at a time.
pub type BatchStream = BoxStream<'static, Result<RecordBatch>>;

/// Open a micro-partition for reading, as [`read`] does, without reading its rows: they
/// come from the returned stream one batch at a time (Parquet fetches and decrypts one
/// row group's column chunks at a time), so memory holds a row group, not the file.
/// Opening reads the file's header and footer only.
pub async fn read_stream(
    volume: Arc<dyn ObjectStore>,
    path: &Path,
    keys: &dyn KeySource,
    columns: &[ColumnDef],
    projection: Option<&[String]>,
    predicate: &Predicate,
) -> Result<(BatchStream, ReadStats)> {
    let name = path.to_string();
    let pq = |e| Error::Parquet {
        path: name.clone(),
        source: e,
    };
    let reader = EncryptedParquet::open(volume, path, keys).await?;
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(pq)?;
    let metadata = Arc::clone(builder.metadata());
    let arrow_schema = Arc::clone(builder.schema());
    let parquet_schema = builder.parquet_schema();

    // Row groups: keep those whose statistics may match.
    let groups = metadata.row_groups();
    let mut keep: Vec<usize> = (0..groups.len()).collect();
    if *predicate != Predicate::True {
        let mut per_column: Vec<(String, Vec<Option<ColumnStats>>)> = Vec::new();
        for col in predicate.columns() {
            let Some(def) = columns.iter().find(|c| c.name == col) else {
                continue;
            };
            // Parquet leaves NaN out of float statistics, where Arrow orders NaN above all
            // numbers: float row-group statistics would prune wrongly, so they are not used.
            if def.ty == ColumnType::Float64 {
                continue;
            }
            let Ok(conv) = StatisticsConverter::try_new(col, &arrow_schema, parquet_schema) else {
                continue;
            };
            let (Ok(mins), Ok(maxes), Ok(nulls)) = (
                conv.row_group_mins(groups.iter()),
                conv.row_group_maxes(groups.iter()),
                conv.row_group_null_counts(groups.iter()),
            ) else {
                continue;
            };
            let stats = (0..groups.len())
                .map(|i| {
                    Some(ColumnStats {
                        column: col.to_string(),
                        min: scalar_at(mins.as_ref(), i),
                        max: scalar_at(maxes.as_ref(), i),
                        null_count: if nulls.is_null(i) { 0 } else { nulls.value(i) },
                    })
                })
                .collect();
            per_column.push((col.to_string(), stats));
        }
        keep.retain(|&i| {
            let rows = u64::try_from(groups[i].num_rows()).unwrap_or(0);
            let stats_of = |c: &str| {
                per_column
                    .iter()
                    .find(|(n, _)| n == c)
                    .and_then(|(_, s)| s[i].as_ref())
            };
            predicate.may_match(&stats_of, rows)
        });
    }
    let read_stats = ReadStats {
        row_groups: groups.len(),
        row_groups_skipped: groups.len() - keep.len(),
    };
    if keep.is_empty() {
        return Ok((futures::stream::empty().boxed(), read_stats));
    }

    // Columns: those asked for plus those the predicate needs.
    let mut wanted: Vec<&str> = match projection {
        Some(p) => p.iter().map(String::as_str).collect(),
        None => columns.iter().map(|c| c.name.as_str()).collect(),
    };
    for c in predicate.columns() {
        if !wanted.contains(&c) {
            wanted.push(c);
        }
    }
    let indices: Vec<usize> = wanted
        .iter()
        .filter_map(|w| arrow_schema.fields().iter().position(|f| f.name() == w))
        .collect();
    let mask = ProjectionMask::roots(parquet_schema, indices);
    let stream = builder
        .with_batch_size(READ_BATCH_ROWS)
        .with_row_groups(keep)
        .with_projection(mask)
        .build()
        .map_err(pq)?;

    let out_columns: Vec<String> = match projection {
        Some(p) => p.to_vec(),
        None => columns.iter().map(|c| c.name.clone()).collect(),
    };
    let (columns, predicate) = (columns.to_vec(), predicate.clone());
    let batches = stream.map(move |batch| {
        let batch = batch.map_err(|e| Error::Parquet {
            path: name.clone(),
            source: e,
        })?;
        let batch = if predicate == Predicate::True {
            batch
        } else {
            // A column added after this file was written is null in every row of it.
            let batch = with_missing_as_nulls(batch, &columns, &predicate.columns())?;
            let mask = predicate.evaluate(&batch)?;
            arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| Error::Arrow {
                context: "filtering rows",
                source: e,
            })?
        };
        let names: Vec<&str> = out_columns.iter().map(String::as_str).collect();
        select(&batch, &names)
    });
    Ok((batches.boxed(), read_stats))
}

/// `batch` with each of `needed` that the table has but the batch lacks (a column added
/// after the file was written) appended as nulls.
fn with_missing_as_nulls(
    batch: RecordBatch,
    columns: &[ColumnDef],
    needed: &[&str],
) -> Result<RecordBatch> {
    let missing: Vec<&ColumnDef> = columns
        .iter()
        .filter(|c| needed.contains(&c.name.as_str()) && batch.column_by_name(&c.name).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(batch);
    }
    let schema = batch.schema();
    let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    for c in missing {
        let ty = crate::schema::arrow_type(&c.ty);
        arrays.push(arrow::array::new_null_array(&ty, batch.num_rows()));
        fields.push(Arc::new(arrow::datatypes::Field::new(&c.name, ty, true)));
    }
    RecordBatch::try_new_with_options(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        arrays,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| Error::Arrow {
        context: "adding a column the file lacks",
        source: e,
    })
}

/// The named columns of a batch, in that order (columns missing from an older file —
/// added later by DDL — are filled with nulls by the caller's conform step).
pub fn select(batch: &RecordBatch, names: &[&str]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(names.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(names.len());
    for n in names {
        if let Ok(i) = schema.index_of(n) {
            fields.push(schema.field(i).clone());
            arrays.push(Arc::clone(batch.column(i)));
        }
    }
    RecordBatch::try_new_with_options(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        arrays,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| Error::Arrow {
        context: "projecting columns",
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use bytes::Bytes;
    use parquet::basic::Compression;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use tern_meta::{ColumnDef, ColumnType, Scalar};

    use super::{Encoded, Encoder, SMALL_FILE_ROWS, WriteOptions, coalesce};

    fn ids(from: i64, n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let values: Vec<i64> = (from..from + n as i64).collect();
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    /// The compression of each column chunk and the values of the file, in order.
    fn read(file: &Encoded) -> (Vec<Compression>, Vec<i64>) {
        let reader = SerializedFileReader::new(Bytes::from(file.parquet.clone())).unwrap();
        let codecs = reader
            .metadata()
            .row_groups()
            .iter()
            .flat_map(|g| g.columns().iter().map(|c| c.compression()))
            .collect();
        let batches = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            Bytes::from(file.parquet.clone()),
        )
        .unwrap()
        .build()
        .unwrap();
        let mut values = Vec::new();
        for b in batches {
            let b = b.unwrap();
            let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            values.extend(col.values().iter().copied());
        }
        (codecs, values)
    }

    /// Pushes `sizes` rows at a time into one encoder; the one file it makes.
    fn encode(sizes: &[usize]) -> Encoded {
        let schema = ids(0, 0).schema();
        let columns = vec![ColumnDef {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
        }];
        let mut e = Encoder::new(&schema, &columns, &WriteOptions::default()).unwrap();
        let mut next = 0;
        for &n in sizes {
            assert!(e.push(&ids(next, n)).unwrap().is_empty());
            next += n as i64;
        }
        e.finish().unwrap().expect("a file")
    }

    #[test]
    fn a_small_file_is_written_uncompressed_and_any_other_with_zstd() {
        let one = encode(&[1]);
        let (codecs, values) = read(&one);
        assert_eq!(codecs, vec![Compression::UNCOMPRESSED]);
        assert_eq!((values, one.rows), (vec![0], 1));
        assert_eq!(one.stats[0].min, Some(Scalar::Int64(0)));

        // Small pushes that add up past the threshold: the held rows go first, all ZSTD.
        let sizes = [3, SMALL_FILE_ROWS - 4, 1, 500];
        let many = encode(&sizes);
        let (codecs, values) = read(&many);
        assert!(
            codecs.iter().all(|c| matches!(c, Compression::ZSTD(_))),
            "{codecs:?}"
        );
        let total: usize = sizes.iter().sum();
        assert_eq!(values, (0..total as i64).collect::<Vec<_>>());
        assert_eq!(many.rows, total as u64);
        assert_eq!(
            (many.stats[0].min.clone(), many.stats[0].max.clone()),
            (
                Some(Scalar::Int64(0)),
                Some(Scalar::Int64(total as i64 - 1))
            )
        );

        let just_under = encode(&[SMALL_FILE_ROWS - 1]);
        assert_eq!(read(&just_under).0, vec![Compression::UNCOMPRESSED]);
    }

    #[test]
    fn nearby_ranges_are_read_as_one_span_and_far_ones_apart() {
        // Out of order, one overlapping another, one past the gap.
        let ranges = [100..200, 0..50, 150..300, 5_000..5_100];
        let spans = coalesce(&ranges, 1_000);
        assert_eq!(
            spans,
            vec![(0..300, vec![1, 0, 2]), (5_000..5_100, vec![3])]
        );
        assert_eq!(
            coalesce(&ranges, 0).len(),
            3,
            "0..50 and 100..200 stay apart"
        );
        assert!(coalesce(&[], 1_000).is_empty());
    }
}
