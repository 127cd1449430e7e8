//! Row predicates: evaluated on Arrow batches, and checked against micro-partition
//! statistics to skip files (and Parquet row groups) that cannot hold a matching row.
//!
//! Semantics are SQL's: a comparison with NULL is unknown, `AND`/`OR` use three-valued
//! logic, and a row matches only when the predicate is *true*. Pruning is conservative:
//! [`Predicate::may_match`] returns `false` only when no row described by the statistics
//! can make the predicate true. Floating-point values are ordered totally (NaN above every
//! number), exactly as Arrow's comparison kernels and min/max aggregates order them, so
//! statistics and evaluation never disagree.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    Scalar as ArrowScalar, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::kernels::cmp;
use arrow::compute::{and_kleene, is_not_null, is_null, not, or_kleene};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use tern_meta::{ColumnDef, ColumnStats, ColumnType, Scalar};

use crate::error::{Error, Result};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// A predicate over one table's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Predicate {
    /// Every row.
    True,
    /// `column <op> value`.
    Cmp {
        /// Column name.
        column: String,
        /// Operator.
        op: CmpOp,
        /// Literal.
        value: Scalar,
    },
    /// `column BETWEEN low AND high` (inclusive).
    Between {
        /// Column name.
        column: String,
        /// Lower bound.
        low: Scalar,
        /// Upper bound.
        high: Scalar,
    },
    /// `column IN (values…)`.
    In {
        /// Column name.
        column: String,
        /// Candidate values.
        values: Vec<Scalar>,
    },
    /// `column IS NULL` (or `IS NOT NULL` when `negated`).
    IsNull {
        /// Column name.
        column: String,
        /// `IS NOT NULL`.
        negated: bool,
    },
    /// All of these.
    And(Vec<Predicate>),
    /// Any of these.
    Or(Vec<Predicate>),
}

impl Predicate {
    /// `column = value`
    pub fn eq(column: impl Into<String>, value: impl Into<Scalar>) -> Self {
        Self::cmp(column, CmpOp::Eq, value)
    }

    /// `column <op> value`
    pub fn cmp(column: impl Into<String>, op: CmpOp, value: impl Into<Scalar>) -> Self {
        Predicate::Cmp {
            column: column.into(),
            op,
            value: value.into(),
        }
    }

    /// `column BETWEEN low AND high`
    pub fn between(
        column: impl Into<String>,
        low: impl Into<Scalar>,
        high: impl Into<Scalar>,
    ) -> Self {
        Predicate::Between {
            column: column.into(),
            low: low.into(),
            high: high.into(),
        }
    }

    /// `self AND other`
    pub fn and(self, other: Predicate) -> Self {
        match self {
            Predicate::True => other,
            Predicate::And(mut v) => {
                v.push(other);
                Predicate::And(v)
            }
            p => Predicate::And(vec![p, other]),
        }
    }

    /// `self OR other`
    pub fn or(self, other: Predicate) -> Self {
        match self {
            Predicate::Or(mut v) => {
                v.push(other);
                Predicate::Or(v)
            }
            p => Predicate::Or(vec![p, other]),
        }
    }

    /// The columns the predicate reads.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Predicate::True => {}
            Predicate::Cmp { column, .. }
            | Predicate::Between { column, .. }
            | Predicate::In { column, .. }
            | Predicate::IsNull { column, .. } => out.push(column),
            Predicate::And(ps) | Predicate::Or(ps) => {
                ps.iter().for_each(|p| p.collect_columns(out))
            }
        }
    }

    /// Check the predicate against a table's columns and convert its literals to the
    /// columns' types (an integer literal against a float column becomes a float).
    /// Errors name the unknown column or the mismatched literal.
    pub fn bind(&self, columns: &[ColumnDef]) -> Result<Predicate> {
        let col = |name: &str| {
            columns
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| Error::UnknownColumn {
                    column: name.to_string(),
                })
        };
        let lit = |name: &str, v: &Scalar| -> Result<Scalar> {
            let c = col(name)?;
            coerce(v, &c.ty).ok_or_else(|| Error::TypeMismatch {
                column: name.to_string(),
                expected: c.ty.to_string(),
                found: format!("{v:?}"),
            })
        };
        Ok(match self {
            Predicate::True => Predicate::True,
            Predicate::Cmp { column, op, value } => Predicate::Cmp {
                column: column.clone(),
                op: *op,
                value: lit(column, value)?,
            },
            Predicate::Between { column, low, high } => Predicate::Between {
                column: column.clone(),
                low: lit(column, low)?,
                high: lit(column, high)?,
            },
            Predicate::In { column, values } => Predicate::In {
                column: column.clone(),
                values: values
                    .iter()
                    .map(|v| lit(column, v))
                    .collect::<Result<_>>()?,
            },
            Predicate::IsNull { column, negated } => {
                col(column)?;
                Predicate::IsNull {
                    column: column.clone(),
                    negated: *negated,
                }
            }
            Predicate::And(ps) => {
                Predicate::And(ps.iter().map(|p| p.bind(columns)).collect::<Result<_>>()?)
            }
            Predicate::Or(ps) => {
                Predicate::Or(ps.iter().map(|p| p.bind(columns)).collect::<Result<_>>()?)
            }
        })
    }

    /// Evaluate on a batch: `true` where the row matches, `false` or null where it does not.
    /// The predicate must be [bound](Predicate::bind) to the batch's table.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let rows = batch.num_rows();
        let column = |name: &str| -> Result<&ArrayRef> {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::UnknownColumn {
                    column: name.to_string(),
                })
        };
        let arrow = |e: arrow::error::ArrowError| Error::Arrow {
            context: "evaluating a predicate",
            source: e,
        };
        Ok(match self {
            Predicate::True => BooleanArray::from(vec![true; rows]),
            Predicate::Cmp {
                column: name,
                op,
                value,
            } => {
                let array = column(name)?;
                let lit = scalar_datum(value, array.data_type())?;
                let f = match op {
                    CmpOp::Eq => cmp::eq,
                    CmpOp::NotEq => cmp::neq,
                    CmpOp::Lt => cmp::lt,
                    CmpOp::LtEq => cmp::lt_eq,
                    CmpOp::Gt => cmp::gt,
                    CmpOp::GtEq => cmp::gt_eq,
                };
                f(array, &lit).map_err(arrow)?
            }
            Predicate::Between {
                column: name,
                low,
                high,
            } => {
                let array = column(name)?;
                let ge =
                    cmp::gt_eq(array, &scalar_datum(low, array.data_type())?).map_err(arrow)?;
                let le =
                    cmp::lt_eq(array, &scalar_datum(high, array.data_type())?).map_err(arrow)?;
                and_kleene(&ge, &le).map_err(arrow)?
            }
            Predicate::In {
                column: name,
                values,
            } => {
                let array = column(name)?;
                let mut acc = BooleanArray::from(vec![false; rows]);
                for v in values {
                    let hit =
                        cmp::eq(array, &scalar_datum(v, array.data_type())?).map_err(arrow)?;
                    acc = or_kleene(&acc, &hit).map_err(arrow)?;
                }
                acc
            }
            Predicate::IsNull {
                column: name,
                negated,
            } => {
                let array = column(name)?;
                if *negated {
                    is_not_null(array)
                } else {
                    is_null(array)
                }
                .map_err(arrow)?
            }
            Predicate::And(ps) => {
                let mut acc = BooleanArray::from(vec![true; rows]);
                for p in ps {
                    acc = and_kleene(&acc, &p.evaluate(batch)?).map_err(arrow)?;
                }
                acc
            }
            Predicate::Or(ps) => {
                let mut acc = BooleanArray::from(vec![false; rows]);
                for p in ps {
                    acc = or_kleene(&acc, &p.evaluate(batch)?).map_err(arrow)?;
                }
                acc
            }
        })
    }

    /// Rows where the predicate is *not* true (false or unknown): the rows a `DELETE …
    /// WHERE predicate` keeps.
    pub fn evaluate_keep(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let m = self.evaluate(batch)?;
        // null (unknown) → keep: replace nulls by false before negating.
        let definite: BooleanArray = m.iter().map(|v| Some(v.unwrap_or(false))).collect();
        not(&definite).map_err(|e| Error::Arrow {
            context: "evaluating a predicate",
            source: e,
        })
    }

    /// Whether a file (or row group) with these statistics may hold a matching row.
    /// `stats_of(column)` returns the column's statistics, `None` when unknown (which
    /// never prunes); `rows` is the number of rows described.
    pub fn may_match<'a>(
        &self,
        stats_of: &dyn Fn(&str) -> Option<&'a ColumnStats>,
        rows: u64,
    ) -> bool {
        match self {
            Predicate::True => true,
            Predicate::Cmp { column, op, value } => stats_of(column).is_none_or(|s| {
                let (Some(min), Some(max)) = (&s.min, &s.max) else {
                    // No min/max: either every row is null (a comparison is never true on
                    // null) or the bounds are unknown (never prune).
                    return s.null_count < rows;
                };
                let (lo, hi) = (order(min, value), order(max, value));
                match op {
                    CmpOp::Eq => lo != Ordering::Greater && hi != Ordering::Less,
                    CmpOp::NotEq => !(lo == Ordering::Equal && hi == Ordering::Equal),
                    CmpOp::Lt => lo == Ordering::Less,
                    CmpOp::LtEq => lo != Ordering::Greater,
                    CmpOp::Gt => hi == Ordering::Greater,
                    CmpOp::GtEq => hi != Ordering::Less,
                }
            }),
            Predicate::Between { column, low, high } => {
                stats_of(column).is_none_or(|s| match (&s.min, &s.max) {
                    (Some(min), Some(max)) => {
                        order(max, low) != Ordering::Less && order(min, high) != Ordering::Greater
                    }
                    _ => s.null_count < rows,
                })
            }
            Predicate::In { column, values } => values.iter().any(|v| {
                Predicate::Cmp {
                    column: column.clone(),
                    op: CmpOp::Eq,
                    value: v.clone(),
                }
                .may_match(stats_of, rows)
            }),
            Predicate::IsNull { column, negated } => stats_of(column).is_none_or(|s| {
                if *negated {
                    s.null_count < rows
                } else {
                    s.null_count > 0
                }
            }),
            Predicate::And(ps) => ps.iter().all(|p| p.may_match(stats_of, rows)),
            Predicate::Or(ps) => ps.iter().any(|p| p.may_match(stats_of, rows)),
        }
    }
}

/// Total order between two scalars of the same type (floats: NaN above all numbers, as in
/// Arrow). Scalars of different types compare as equal, which never prunes.
pub fn order(a: &Scalar, b: &Scalar) -> Ordering {
    match (a, b) {
        (Scalar::Int64(x), Scalar::Int64(y)) => x.cmp(y),
        (Scalar::Float64(x), Scalar::Float64(y)) => x.total_cmp(y),
        (Scalar::Utf8(x), Scalar::Utf8(y)) => x.cmp(y),
        (Scalar::Bool(x), Scalar::Bool(y)) => x.cmp(y),
        (Scalar::Timestamp(x), Scalar::Timestamp(y)) => x.cmp(y),
        (Scalar::Date(x), Scalar::Date(y)) => x.cmp(y),
        (Scalar::Decimal(x), Scalar::Decimal(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Convert a literal to a column type, if it is representable exactly.
pub fn coerce(v: &Scalar, ty: &ColumnType) -> Option<Scalar> {
    Some(match (v, ty) {
        (Scalar::Int64(i), ColumnType::Int64) => Scalar::Int64(*i),
        (Scalar::Int64(i), ColumnType::Float64) => Scalar::Float64(*i as f64),
        (Scalar::Float64(f), ColumnType::Float64) => Scalar::Float64(*f),
        (Scalar::Utf8(s), ColumnType::Utf8) => Scalar::Utf8(s.clone()),
        (Scalar::Bool(b), ColumnType::Bool) => Scalar::Bool(*b),
        (Scalar::Timestamp(t) | Scalar::Int64(t), ColumnType::Timestamp) => Scalar::Timestamp(*t),
        (Scalar::Date(d), ColumnType::Date) => Scalar::Date(*d),
        (Scalar::Int64(d), ColumnType::Date) => Scalar::Date(i32::try_from(*d).ok()?),
        (Scalar::Decimal(d), ColumnType::Decimal { .. }) => Scalar::Decimal(*d),
        (Scalar::Int64(i), ColumnType::Decimal { scale, .. }) => {
            let factor = 10i128.checked_pow(u32::try_from(*scale).ok()?)?;
            Scalar::Decimal(i128::from(*i).checked_mul(factor)?)
        }
        _ => return None,
    })
}

/// A one-row Arrow array for a literal, typed like the column it is compared with.
fn scalar_datum(v: &Scalar, ty: &arrow::datatypes::DataType) -> Result<ArrowScalar<ArrayRef>> {
    Ok(ArrowScalar::new(literal_array(v, ty)?))
}

/// A one-row Arrow array holding `v` as type `ty`.
pub fn literal_array(v: &Scalar, ty: &arrow::datatypes::DataType) -> Result<ArrayRef> {
    use arrow::datatypes::DataType;
    let array: ArrayRef = match (v, ty) {
        (Scalar::Int64(i), DataType::Int64) => Arc::new(Int64Array::from(vec![*i])),
        (Scalar::Float64(f), DataType::Float64) => Arc::new(Float64Array::from(vec![*f])),
        (Scalar::Utf8(s), DataType::Utf8) => Arc::new(StringArray::from(vec![s.as_str()])),
        (Scalar::Bool(b), DataType::Boolean) => Arc::new(BooleanArray::from(vec![*b])),
        (Scalar::Timestamp(t), DataType::Timestamp(_, tz)) => {
            Arc::new(TimestampMicrosecondArray::from(vec![*t]).with_timezone_opt(tz.clone()))
        }
        (Scalar::Date(d), DataType::Date32) => Arc::new(Date32Array::from(vec![*d])),
        (Scalar::Decimal(d), DataType::Decimal128(p, s)) => Arc::new(
            Decimal128Array::from(vec![*d])
                .with_precision_and_scale(*p, *s)
                .map_err(|e| Error::Arrow {
                    context: "building a decimal literal",
                    source: e,
                })?,
        ),
        _ => {
            return Err(Error::TypeMismatch {
                column: String::from("<literal>"),
                expected: ty.to_string(),
                found: format!("{v:?}"),
            });
        }
    };
    Ok(array)
}
