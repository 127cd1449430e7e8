//! `count`, `sum`, `min`, `max` over scanned batches.

use arrow::array::{Array, Decimal128Array, Float64Array, Int64Array, RecordBatch};
use arrow::compute::kernels::aggregate;
use tern_meta::{ColumnStats, Scalar};

use crate::error::{Error, Result};
use crate::schema::{batch_stats_of, merge_stats};
use crate::table::Aggregate;

/// Compute `agg` over single-column batches (`count` counts rows).
pub fn compute(agg: &Aggregate, batches: &[RecordBatch]) -> Result<Option<Scalar>> {
    match agg {
        Aggregate::Count => {
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            Ok(Some(Scalar::Int64(i64::try_from(rows).unwrap_or(i64::MAX))))
        }
        Aggregate::Sum(column) => sum(column, batches),
        Aggregate::Min(column) | Aggregate::Max(column) => {
            let mut acc: Option<ColumnStats> = None;
            for b in batches {
                let Some(array) = b.column_by_name(column) else {
                    return Err(Error::UnknownColumn {
                        column: column.clone(),
                    });
                };
                let s = batch_stats_of(column, array.as_ref());
                acc = Some(match acc {
                    Some(a) => merge_stats(&a, &s),
                    None => s,
                });
            }
            Ok(acc.and_then(|s| {
                if matches!(agg, Aggregate::Min(_)) {
                    s.min
                } else {
                    s.max
                }
            }))
        }
    }
}

fn sum(column: &str, batches: &[RecordBatch]) -> Result<Option<Scalar>> {
    let mut total: Option<Scalar> = None;
    for b in batches {
        let array = b
            .column_by_name(column)
            .ok_or_else(|| Error::UnknownColumn {
                column: column.to_string(),
            })?;
        let any = array.as_any();
        let part = if let Some(x) = any.downcast_ref::<Int64Array>() {
            // Checked: an overflowing sum is an error, not a wrong answer.
            let mut s: Option<i64> = None;
            for v in x.iter().flatten() {
                s = Some(
                    s.unwrap_or(0)
                        .checked_add(v)
                        .ok_or_else(|| overflow(column))?,
                );
            }
            s.map(Scalar::Int64)
        } else if let Some(x) = any.downcast_ref::<Float64Array>() {
            aggregate::sum(x).map(Scalar::Float64)
        } else if let Some(x) = any.downcast_ref::<Decimal128Array>() {
            let mut s: Option<i128> = None;
            for v in x.iter().flatten() {
                s = Some(
                    s.unwrap_or(0)
                        .checked_add(v)
                        .ok_or_else(|| overflow(column))?,
                );
            }
            s.map(Scalar::Decimal)
        } else {
            return Err(Error::TypeMismatch {
                column: column.to_string(),
                expected: "a numeric column".into(),
                found: array.data_type().to_string(),
            });
        };
        total = match (total, part) {
            (Some(Scalar::Int64(a)), Some(Scalar::Int64(b))) => Some(Scalar::Int64(
                a.checked_add(b).ok_or_else(|| overflow(column))?,
            )),
            (Some(Scalar::Float64(a)), Some(Scalar::Float64(b))) => Some(Scalar::Float64(a + b)),
            (Some(Scalar::Decimal(a)), Some(Scalar::Decimal(b))) => Some(Scalar::Decimal(
                a.checked_add(b).ok_or_else(|| overflow(column))?,
            )),
            (a, b) => a.or(b),
        };
    }
    Ok(total)
}

fn overflow(column: &str) -> Error {
    Error::TypeMismatch {
        column: column.to_string(),
        expected: "a sum within range".into(),
        found: "an overflow".into(),
    }
}
