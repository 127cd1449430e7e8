//! Loading files into a table: CSV (with a header), NDJSON and Parquet. Input is checked
//! against the table's columns; a malformed line names the file and the line, and nothing
//! is committed.

use std::io::{BufRead, Read};
use std::sync::Arc;

use arrow::array::RecordBatch;
use tern_meta::ColumnDef;

use crate::error::{Error, Result};
use crate::schema::arrow_schema;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header line naming the columns.
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// Guess from a file name's extension.
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(Format::Csv)
        } else if lower.ends_with(".ndjson")
            || lower.ends_with(".jsonl")
            || lower.ends_with(".json")
        {
            Some(Format::Ndjson)
        } else if lower.ends_with(".parquet") {
            Some(Format::Parquet)
        } else {
            None
        }
    }
}

fn bad(source_name: &str, line: Option<u64>, detail: impl Into<String>) -> Error {
    Error::BadInput {
        source_name: source_name.to_string(),
        line,
        detail: detail.into(),
    }
}

/// Extract "line N" from an Arrow parse error, when it says.
fn line_of(message: &str) -> Option<u64> {
    let at = message.find("line ")?;
    message[at + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Read CSV with a header. Columns are matched by the header's names.
pub fn read_csv<R: Read>(
    reader: R,
    columns: &[ColumnDef],
    source_name: &str,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for_each_csv(reader, columns, source_name, batch_rows, |b| {
        out.push(b);
        Ok(())
    })?;
    Ok(out)
}

/// Read CSV with a header, handing each batch of `batch_rows` rows to `sink` as it is
/// parsed (memory holds one batch, whatever the input's length). An error of `sink` ends
/// the reading with that error.
pub fn for_each_csv<R: Read>(
    reader: R,
    columns: &[ColumnDef],
    source_name: &str,
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let mut reader = std::io::BufReader::new(reader);
    let mut header = String::new();
    reader
        .read_line(&mut header)
        .map_err(|e| bad(source_name, Some(1), e.to_string()))?;
    let names: Vec<String> = header
        .trim_end_matches(['\r', '\n'])
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect();
    if names.iter().all(String::is_empty) {
        return Err(bad(source_name, Some(1), "empty header line"));
    }
    let mut file_columns = Vec::with_capacity(names.len());
    for n in &names {
        let c = columns.iter().find(|c| &c.name == n).ok_or_else(|| {
            bad(
                source_name,
                Some(1),
                format!("unknown column {n:?} in header"),
            )
        })?;
        file_columns.push(c.clone());
    }
    let schema = arrow_schema(&file_columns);
    let csv = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
        .with_header(false)
        .with_batch_size(batch_rows.max(1))
        .build(reader)
        .map_err(|e| bad(source_name, None, e.to_string()))?;
    for batch in csv {
        let batch = batch.map_err(|e| {
            let msg = e.to_string();
            // Arrow numbers the failing row from 0 across the whole input (not inside its
            // batch); the file line is that plus the header line and 1.
            let line = line_of(&msg).map(|l| l + 2);
            bad(source_name, line, msg)
        })?;
        sink(batch)?;
    }
    Ok(())
}

/// Read newline-delimited JSON objects.
pub fn read_ndjson<R: Read>(
    reader: R,
    columns: &[ColumnDef],
    source_name: &str,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for_each_ndjson(reader, columns, source_name, batch_rows, |b| {
        out.push(b);
        Ok(())
    })?;
    Ok(out)
}

/// Read newline-delimited JSON objects, handing each batch to `sink` as it is parsed
/// (see [`for_each_csv`]).
pub fn for_each_ndjson<R: Read>(
    reader: R,
    columns: &[ColumnDef],
    source_name: &str,
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let schema = arrow_schema(columns);
    let reader = arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(batch_rows.max(1))
        .with_strict_mode(true)
        .build(std::io::BufReader::new(reader))
        .map_err(|e| bad(source_name, None, e.to_string()))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| {
            bad(
                source_name,
                line_of(&e.to_string()),
                format!("{e} (after {rows} good rows)"),
            )
        })?;
        rows += batch.num_rows() as u64;
        sink(batch)?;
    }
    Ok(())
}

/// Read a Parquet file, handing each batch to `sink` as it is decoded (one row group's
/// pages are read at a time).
pub fn for_each_parquet(
    file: std::fs::File,
    source_name: &str,
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(source_name, None, e.to_string()))?;
    let reader = builder
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| bad(source_name, None, e.to_string()))?;
    for b in reader {
        sink(b.map_err(|e| bad(source_name, None, e.to_string()))?)?;
    }
    Ok(())
}

/// Read a Parquet file.
pub fn read_parquet(
    file: std::fs::File,
    source_name: &str,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(source_name, None, e.to_string()))?;
    let reader = builder
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| bad(source_name, None, e.to_string()))?;
    reader
        .map(|b| b.map_err(|e| bad(source_name, None, e.to_string())))
        .collect()
}

/// Read a file of `format` at `path`.
pub fn read_file(
    path: &std::path::Path,
    format: Format,
    columns: &[ColumnDef],
) -> Result<Vec<RecordBatch>> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| bad(&name, None, e.to_string()))?;
    const BATCH: usize = 64 * 1024;
    match format {
        Format::Csv => read_csv(file, columns, &name, BATCH),
        Format::Ndjson => read_ndjson(file, columns, &name, BATCH),
        Format::Parquet => read_parquet(file, &name, BATCH),
    }
}
