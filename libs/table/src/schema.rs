//! Table columns ↔ Arrow schemas, and the checks that keep bad input out of a table.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::array::{
    BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::kernels::aggregate;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tern_meta::{ColumnDef, ColumnStats, ColumnType, Scalar};

use crate::error::{Error, Result};

/// The Arrow type a column is stored as.
pub fn arrow_type(ty: &ColumnType) -> DataType {
    match ty {
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Bool => DataType::Boolean,
        // An offset zone rather than "UTC": Arrow parses offsets without a time-zone database.
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        ColumnType::Date => DataType::Date32,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
    }
}

/// The Arrow schema of a table's columns.
pub fn arrow_schema(columns: &[ColumnDef]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(&c.ty), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// The column type for an Arrow type, if Tern stores it.
pub fn column_type(dt: &DataType) -> Option<ColumnType> {
    Some(match dt {
        DataType::Int64 => ColumnType::Int64,
        DataType::Float64 => ColumnType::Float64,
        DataType::Utf8 => ColumnType::Utf8,
        DataType::Boolean => ColumnType::Bool,
        DataType::Timestamp(TimeUnit::Microsecond, _) => ColumnType::Timestamp,
        DataType::Date32 => ColumnType::Date,
        DataType::Decimal128(p, s) => ColumnType::Decimal {
            precision: *p,
            scale: *s,
        },
        _ => return None,
    })
}

/// Validate table columns: names unique and non-empty, decimals within Arrow's bounds.
pub fn check_columns(columns: &[ColumnDef]) -> Result<()> {
    if columns.is_empty() {
        return Err(Error::InvalidSchema {
            reason: "a table needs at least one column".into(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for c in columns {
        if c.name.is_empty() || c.name.len() > 128 || c.name.chars().any(|ch| ch.is_control()) {
            return Err(Error::InvalidSchema {
                reason: format!("invalid column name {:?}", c.name),
            });
        }
        if !seen.insert(c.name.as_str()) {
            return Err(Error::InvalidSchema {
                reason: format!("column {:?} appears twice", c.name),
            });
        }
        if let ColumnType::Decimal { precision, scale } = c.ty
            && (precision == 0
                || precision > 38
                || scale < 0
                || i16::from(scale) > i16::from(precision))
        {
            return Err(Error::InvalidSchema {
                reason: format!(
                    "column {:?}: decimal({precision},{scale}) is out of range",
                    c.name
                ),
            });
        }
    }
    Ok(())
}

/// Make a batch conform to the table: columns matched by name (order may differ, missing
/// nullable columns become nulls), exact types, and no nulls in non-nullable columns.
/// Errors name the column.
pub fn conform(batch: &RecordBatch, columns: &[ColumnDef]) -> Result<RecordBatch> {
    let schema = arrow_schema(columns);
    let rows = batch.num_rows();
    for field in batch.schema().fields() {
        if !columns.iter().any(|c| &c.name == field.name()) {
            return Err(Error::UnknownColumn {
                column: field.name().clone(),
            });
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (c, field) in columns.iter().zip(schema.fields()) {
        let array = match batch.column_by_name(&c.name) {
            Some(a) => {
                if a.data_type() != field.data_type() {
                    // Timestamps without a zone and other zones are the same instants.
                    let same_ts = matches!(
                        (a.data_type(), field.data_type()),
                        (
                            DataType::Timestamp(TimeUnit::Microsecond, _),
                            DataType::Timestamp(TimeUnit::Microsecond, _)
                        )
                    );
                    if !same_ts {
                        return Err(Error::TypeMismatch {
                            column: c.name.clone(),
                            expected: c.ty.to_string(),
                            found: a.data_type().to_string(),
                        });
                    }
                    arrow::compute::cast(a, field.data_type()).map_err(|e| Error::Arrow {
                        context: "converting timestamps",
                        source: e,
                    })?
                } else {
                    Arc::clone(a)
                }
            }
            None if c.nullable => arrow::array::new_null_array(field.data_type(), rows),
            None => {
                return Err(Error::MissingColumn {
                    column: c.name.clone(),
                });
            }
        };
        if !c.nullable && array.null_count() > 0 {
            return Err(Error::NullInNonNullable {
                column: c.name.clone(),
                count: array.null_count(),
            });
        }
        arrays.push(array);
    }
    RecordBatch::try_new(schema, arrays).map_err(|e| Error::Arrow {
        context: "assembling a batch",
        source: e,
    })
}

/// Per-column statistics of a batch (min/max in Arrow's total order, null count).
pub fn batch_stats(batch: &RecordBatch, columns: &[ColumnDef]) -> Vec<ColumnStats> {
    columns
        .iter()
        .filter_map(|c| batch.column_by_name(&c.name).map(|a| (c, a)))
        .map(|(c, a)| {
            let (min, max) = min_max(a.as_ref());
            ColumnStats {
                column: c.name.clone(),
                min,
                max,
                null_count: a.null_count() as u64,
            }
        })
        .collect()
}

/// Merge statistics of two parts of one column.
pub fn merge_stats(a: &ColumnStats, b: &ColumnStats) -> ColumnStats {
    use crate::predicate::order;
    use std::cmp::Ordering;
    let pick = |x: &Option<Scalar>, y: &Option<Scalar>, want: Ordering| match (x, y) {
        (Some(x), Some(y)) => Some(if order(y, x) == want {
            y.clone()
        } else {
            x.clone()
        }),
        (Some(v), None) | (None, Some(v)) => Some(v.clone()),
        (None, None) => None,
    };
    ColumnStats {
        column: a.column.clone(),
        min: pick(&a.min, &b.min, Ordering::Less),
        max: pick(&a.max, &b.max, Ordering::Greater),
        null_count: a.null_count + b.null_count,
    }
}

/// Statistics of one column array.
pub fn batch_stats_of(column: &str, a: &dyn Array) -> ColumnStats {
    let (min, max) = min_max(a);
    ColumnStats {
        column: column.to_string(),
        min,
        max,
        null_count: a.null_count() as u64,
    }
}

fn min_max(a: &dyn Array) -> (Option<Scalar>, Option<Scalar>) {
    let any = a.as_any();
    if let Some(x) = any.downcast_ref::<Int64Array>() {
        (
            aggregate::min(x).map(Scalar::Int64),
            aggregate::max(x).map(Scalar::Int64),
        )
    } else if let Some(x) = any.downcast_ref::<Float64Array>() {
        (
            aggregate::min(x).map(Scalar::Float64),
            aggregate::max(x).map(Scalar::Float64),
        )
    } else if let Some(x) = any.downcast_ref::<StringArray>() {
        (
            aggregate::min_string(x).map(|s| Scalar::Utf8(s.to_string())),
            aggregate::max_string(x).map(|s| Scalar::Utf8(s.to_string())),
        )
    } else if let Some(x) = any.downcast_ref::<BooleanArray>() {
        (
            aggregate::min_boolean(x).map(Scalar::Bool),
            aggregate::max_boolean(x).map(Scalar::Bool),
        )
    } else if let Some(x) = any.downcast_ref::<TimestampMicrosecondArray>() {
        (
            aggregate::min(x).map(Scalar::Timestamp),
            aggregate::max(x).map(Scalar::Timestamp),
        )
    } else if let Some(x) = any.downcast_ref::<Date32Array>() {
        (
            aggregate::min(x).map(Scalar::Date),
            aggregate::max(x).map(Scalar::Date),
        )
    } else if let Some(x) = any.downcast_ref::<Decimal128Array>() {
        (
            aggregate::min(x).map(Scalar::Decimal),
            aggregate::max(x).map(Scalar::Decimal),
        )
    } else {
        (None, None)
    }
}

/// The value at row `i` of a statistics array, as a scalar (`None` when null).
pub fn scalar_at(a: &dyn Array, i: usize) -> Option<Scalar> {
    if i >= a.len() || a.is_null(i) {
        return None;
    }
    let any = a.as_any();
    if let Some(x) = any.downcast_ref::<Int64Array>() {
        Some(Scalar::Int64(x.value(i)))
    } else if let Some(x) = any.downcast_ref::<Float64Array>() {
        Some(Scalar::Float64(x.value(i)))
    } else if let Some(x) = any.downcast_ref::<StringArray>() {
        Some(Scalar::Utf8(x.value(i).to_string()))
    } else if let Some(x) = any.downcast_ref::<BooleanArray>() {
        Some(Scalar::Bool(x.value(i)))
    } else if let Some(x) = any.downcast_ref::<TimestampMicrosecondArray>() {
        Some(Scalar::Timestamp(x.value(i)))
    } else if let Some(x) = any.downcast_ref::<Date32Array>() {
        Some(Scalar::Date(x.value(i)))
    } else {
        any.downcast_ref::<Decimal128Array>()
            .map(|x| Scalar::Decimal(x.value(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicate::{CmpOp, Predicate};

    fn x_column() -> Vec<ColumnDef> {
        vec![ColumnDef {
            name: "x".into(),
            ty: ColumnType::Float64,
            nullable: true,
        }]
    }

    fn batch(xs: &[Option<f64>]) -> RecordBatch {
        RecordBatch::try_new(
            arrow_schema(&x_column()),
            vec![Arc::new(Float64Array::from(xs.to_vec())) as ArrayRef],
        )
        .unwrap()
    }

    fn bits(s: &Option<Scalar>) -> Option<u64> {
        match s {
            Some(Scalar::Float64(x)) => Some(x.to_bits()),
            _ => None,
        }
    }

    /// NaN's place in statistics is the one scans and pruning give it: IEEE 754 total
    /// order, NaN above every number (and -0.0 below +0.0), so a file holding NaN has
    /// `max = NaN`, and pruning by those statistics never drops a row the predicate keeps.
    #[test]
    fn float_statistics_order_nan_above_every_number() {
        let cols = x_column();
        let b = batch(&[Some(1.5), Some(f64::NAN), None, Some(0.0), Some(-0.0)]);
        let s = &batch_stats(&b, &cols)[0];
        assert_eq!(bits(&s.max), Some(f64::NAN.to_bits()), "{s:?}");
        assert_eq!(bits(&s.min), Some((-0.0f64).to_bits()), "{s:?}");
        assert_eq!(s.null_count, 1);

        // Merging keeps NaN as the max whichever side holds it.
        let numbers = &batch_stats(&batch(&[Some(3.0), Some(f64::INFINITY)]), &cols)[0];
        for merged in [merge_stats(s, numbers), merge_stats(numbers, s)] {
            assert_eq!(bits(&merged.max), Some(f64::NAN.to_bits()), "{merged:?}");
            assert_eq!(bits(&merged.min), Some((-0.0f64).to_bits()), "{merged:?}");
        }

        // Statistics and row evaluation agree for every comparison with NaN and with a
        // number: a file is kept whenever one of its rows matches.
        let only_nan = batch(&[Some(f64::NAN)]);
        let nan_stats = &batch_stats(&only_nan, &cols)[0];
        for value in [f64::NAN, 5.0, f64::INFINITY, -1.0] {
            for op in [
                CmpOp::Eq,
                CmpOp::NotEq,
                CmpOp::Lt,
                CmpOp::LtEq,
                CmpOp::Gt,
                CmpOp::GtEq,
            ] {
                let p = Predicate::cmp("x", op, value);
                let matched = p.evaluate(&only_nan).unwrap();
                let any_row = matched.iter().any(|m| m == Some(true));
                let kept = p.may_match(&|_| Some(nan_stats), 1);
                assert!(
                    kept || !any_row,
                    "x {op:?} {value}: a NaN row matches but its file would be pruned"
                );
            }
        }
    }
}
