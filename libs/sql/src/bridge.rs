//! Arrow across the two versions in the tree.
//!
//! tern-table speaks the workspace's arrow (60.x); DataFusion 55.2, the newest release,
//! is built on arrow 59. A batch crosses between them through the Arrow IPC stream
//! format, which both read and write: safe code (the C data interface would need
//! `unsafe`), one copy of the buffers on the way.

use std::io::Cursor;

use datafusion::arrow as df_arrow;
use datafusion::error::DataFusionError;
use tern_meta::{ColumnDef, ColumnType};

/// DataFusion's Arrow schema of a table's columns (the same fields as
/// `tern_table::schema::arrow_schema`, in DataFusion's arrow).
pub fn df_schema(columns: &[ColumnDef]) -> df_arrow::datatypes::SchemaRef {
    use df_arrow::datatypes::{Field, Schema};
    std::sync::Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, df_type(&c.ty), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// DataFusion's Arrow type of a Tern column type.
pub fn df_type(ty: &ColumnType) -> df_arrow::datatypes::DataType {
    use df_arrow::datatypes::{DataType, TimeUnit};
    match ty {
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        ColumnType::Date => DataType::Date32,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
    }
}

fn ipc_err(context: &'static str) -> impl FnOnce(String) -> DataFusionError {
    move |e| DataFusionError::Execution(format!("arrow bridge ({context}): {e}"))
}

/// A tern-table batch as a DataFusion batch.
pub fn to_df(
    batch: &arrow::array::RecordBatch,
) -> Result<df_arrow::array::RecordBatch, DataFusionError> {
    let mut bytes = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())
            .map_err(|e| ipc_err("write")(e.to_string()))?;
        w.write(batch)
            .map_err(|e| ipc_err("write")(e.to_string()))?;
        w.finish().map_err(|e| ipc_err("write")(e.to_string()))?;
    }
    let mut r = df_arrow::ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| ipc_err("read")(e.to_string()))?;
    match r.next() {
        Some(b) => b.map_err(|e| ipc_err("read")(e.to_string())),
        None => Err(ipc_err("read")("no batch".into())),
    }
}

/// A DataFusion batch as a tern-table batch.
pub fn from_df(
    batch: &df_arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch, DataFusionError> {
    let mut bytes = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut w = df_arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())
            .map_err(|e| ipc_err("write")(e.to_string()))?;
        w.write(batch)
            .map_err(|e| ipc_err("write")(e.to_string()))?;
        w.finish().map_err(|e| ipc_err("write")(e.to_string()))?;
    }
    let mut r = arrow::ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| ipc_err("read")(e.to_string()))?;
    match r.next() {
        Some(b) => b.map_err(|e| ipc_err("read")(e.to_string())),
        None => Err(ipc_err("read")("no batch".into())),
    }
}
