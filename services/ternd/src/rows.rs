//! JSON rows and predicates of the HTTP API, converted with the table's own column types.
//!
//! Rows in: a JSON array of objects (`[{"id": 1, "name": "a"}]`), decoded by Arrow's
//! strict JSON reader against the table's schema, so a wrong type or an unknown column is
//! an error naming the column and the row. Rows out: Arrow's JSON writer (nulls explicit).
//!
//! Predicates, a small JSON form:
//!
//! ```text
//! {"column": "id", "op": ">=", "value": 10}        ops: = != < <= > >=
//! {"column": "id", "between": [1, 10]}
//! {"column": "city", "in": ["Oslo", "Lima"]}
//! {"column": "note", "is_null": true}               (false: IS NOT NULL)
//! {"and": [ … ]}   {"or": [ … ]}   true             (every row)
//! ```
//!
//! Literals are read as the column's type (a timestamp may be an RFC 3339 string, a
//! decimal a string or number), so comparisons are never between mismatched types.

use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch};
use arrow::datatypes::{Field, Schema};
use serde_json::Value;
use tern_table::schema::{arrow_type, scalar_at};
use tern_table::{CmpOp, ColumnDef, Predicate, Scalar};

use crate::error::{Error, Result};

/// Decodes a JSON array of row objects into batches for `columns`.
pub fn rows_to_batches(rows: &[Value], columns: &[ColumnDef]) -> Result<Vec<RecordBatch>> {
    let mut lines = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if !r.is_object() {
            return Err(Error::Invalid(format!(
                "row {i} is not a JSON object: {}",
                short(r)
            )));
        }
        serde_json::to_writer(&mut lines, r)
            .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
        lines.push(b'\n');
    }
    Ok(tern_table::load::read_ndjson(
        lines.as_slice(),
        columns,
        "request rows",
        64 * 1024,
    )?)
}

/// Encodes batches as a JSON array of row objects (nulls written as `null`).
///
/// JSON numbers cannot be NaN or infinite, and Arrow's JSON writer would write such a
/// `float64` value as `null`, indistinguishable from NULL. So a non-finite `float64` is
/// written as a string: `"NaN"` (any NaN), `"Infinity"` or `"-Infinity"`; a finite value
/// is a number and a NULL is `null`. (CSV and Arrow answers keep the values as they are.)
pub fn batches_to_json(batches: &[RecordBatch]) -> Result<Value> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buf);
        for b in batches {
            w.write(b)
                .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
        }
        w.finish()
            .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
    }
    if buf.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    let mut rows: Value =
        serde_json::from_slice(&buf).map_err(|e| Error::internal("encode rows")(e.to_string()))?;
    if let Value::Array(items) = &mut rows {
        non_finite_as_strings(batches, items);
    }
    Ok(rows)
}

/// The JSON text of a non-finite float (see [`batches_to_json`]).
fn non_finite_name(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// Put the non-finite `float64` values of `batches` back into `rows` (one object per
/// row, in order) as strings, where Arrow's writer left `null`.
fn non_finite_as_strings(batches: &[RecordBatch], rows: &mut [Value]) {
    let mut first = 0;
    for b in batches {
        let schema = b.schema();
        for (field, column) in schema.fields().iter().zip(b.columns()) {
            let Some(floats) = column.as_any().downcast_ref::<Float64Array>() else {
                continue;
            };
            for (i, x) in floats.iter().enumerate() {
                if let Some(x) = x.filter(|x| !x.is_finite())
                    && let Some(Value::Object(row)) = rows.get_mut(first + i)
                {
                    row.insert(
                        field.name().clone(),
                        Value::String(non_finite_name(x).into()),
                    );
                }
            }
        }
        first += b.num_rows();
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", &s[..s.floor_char_boundary(80)])
    } else {
        s
    }
}

fn column<'a>(columns: &'a [ColumnDef], name: &str) -> Result<&'a ColumnDef> {
    columns.iter().find(|c| c.name == name).ok_or_else(|| {
        Error::Table(tern_table::Error::UnknownColumn {
            column: name.to_string(),
        })
    })
}

/// A JSON literal read as `column`'s type; `null` is `None`.
pub fn scalar(v: &Value, column: &ColumnDef) -> Result<Option<Scalar>> {
    if v.is_null() {
        return Ok(None);
    }
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        arrow_type(&column.ty),
        true,
    )]));
    let line = serde_json::json!({ "v": v }).to_string();
    let mismatch = || {
        Error::Table(tern_table::Error::TypeMismatch {
            column: column.name.clone(),
            expected: column.ty.to_string(),
            found: short(v),
        })
    };
    let mut reader = arrow::json::ReaderBuilder::new(schema)
        .build(line.as_bytes())
        .map_err(|_| mismatch())?;
    let batch = reader
        .next()
        .ok_or_else(mismatch)?
        .map_err(|_| mismatch())?;
    Ok(scalar_at(batch.column(0).as_ref(), 0))
}

fn required(v: &Value, column: &ColumnDef) -> Result<Scalar> {
    scalar(v, column)?.ok_or_else(|| {
        Error::Invalid(format!(
            "a comparison with null on column {:?} matches nothing; use is_null",
            column.name
        ))
    })
}

/// Parses the JSON predicate form (see the module docs).
pub fn predicate(v: &Value, columns: &[ColumnDef]) -> Result<Predicate> {
    let bad = |what: &str| Error::Invalid(format!("bad predicate {}: {what}", short(v)));
    match v {
        Value::Bool(true) => return Ok(Predicate::True),
        Value::Object(_) => {}
        _ => return Err(bad("expected an object (or true for every row)")),
    }
    if let Some(list) = v.get("and").or_else(|| v.get("or")) {
        let items = list
            .as_array()
            .ok_or_else(|| bad("and/or takes an array"))?
            .iter()
            .map(|p| predicate(p, columns))
            .collect::<Result<Vec<_>>>()?;
        return Ok(if v.get("and").is_some() {
            Predicate::And(items)
        } else {
            Predicate::Or(items)
        });
    }
    let name = v
        .get("column")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing \"column\""))?;
    let col = column(columns, name)?;
    if let Some(op) = v.get("op") {
        let op = match op.as_str().unwrap_or_default() {
            "=" | "==" => CmpOp::Eq,
            "!=" | "<>" => CmpOp::NotEq,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::LtEq,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::GtEq,
            other => return Err(bad(&format!("unknown op {other:?}"))),
        };
        let value = v.get("value").ok_or_else(|| bad("missing \"value\""))?;
        return Ok(Predicate::Cmp {
            column: name.to_string(),
            op,
            value: required(value, col)?,
        });
    }
    if let Some(b) = v.get("between") {
        let [low, high] = b.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(bad("between takes [low, high]"));
        };
        return Ok(Predicate::Between {
            column: name.to_string(),
            low: required(low, col)?,
            high: required(high, col)?,
        });
    }
    if let Some(list) = v.get("in") {
        let values = list
            .as_array()
            .ok_or_else(|| bad("in takes an array"))?
            .iter()
            .map(|x| required(x, col))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Predicate::In {
            column: name.to_string(),
            values,
        });
    }
    if let Some(n) = v.get("is_null") {
        let is = n
            .as_bool()
            .ok_or_else(|| bad("is_null takes true or false"))?;
        return Ok(Predicate::IsNull {
            column: name.to_string(),
            negated: !is,
        });
    }
    Err(bad("expected op/value, between, in or is_null"))
}

/// Parses `{"col": value, …}` assignments of an update.
pub fn assignments(v: &Value, columns: &[ColumnDef]) -> Result<Vec<(String, Option<Scalar>)>> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Invalid("\"set\" must be an object of column: value".into()))?;
    if obj.is_empty() {
        return Err(Error::Invalid("\"set\" names no column".into()));
    }
    obj.iter()
        .map(|(k, val)| Ok((k.clone(), scalar(val, column(columns, k)?)?)))
        .collect()
}

/// Parses a column type name: `int64`, `float64`, `utf8` (`string`), `bool`, `timestamp`,
/// `date`, `decimal(p,s)`.
pub fn column_type(name: &str) -> Result<tern_table::ColumnType> {
    use tern_table::ColumnType as T;
    let n = name.trim().to_ascii_lowercase();
    Ok(match n.as_str() {
        "int64" | "bigint" | "int" | "integer" => T::Int64,
        "float64" | "double" | "float" => T::Float64,
        "utf8" | "string" | "text" | "varchar" => T::Utf8,
        "bool" | "boolean" => T::Bool,
        "timestamp" => T::Timestamp,
        "date" => T::Date,
        _ => {
            let inner = n
                .strip_prefix("decimal(")
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| Error::Invalid(format!("unknown column type {name:?} (int64, float64, utf8, bool, timestamp, date, decimal(p,s))")))?;
            let (p, s) = inner.split_once(',').ok_or_else(|| {
                Error::Invalid(format!("decimal type {name:?} needs (precision,scale)"))
            })?;
            let precision = p
                .trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("bad precision in {name:?}")))?;
            let scale = s
                .trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("bad scale in {name:?}")))?;
            T::Decimal { precision, scale }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_table::ColumnType;

    fn cols() -> Vec<ColumnDef> {
        vec![
            ColumnDef {
                name: "id".into(),
                ty: ColumnType::Int64,
                nullable: false,
            },
            ColumnDef {
                name: "name".into(),
                ty: ColumnType::Utf8,
                nullable: true,
            },
        ]
    }

    #[test]
    fn rows_round_trip_and_types_are_checked() {
        let rows: Vec<Value> =
            serde_json::from_str(r#"[{"id":1,"name":"a"},{"id":2,"name":null}]"#).expect("json");
        let b = rows_to_batches(&rows, &cols()).expect("rows");
        let back = batches_to_json(&b).expect("json");
        assert_eq!(
            back,
            serde_json::json!([{"id":1,"name":"a"},{"id":2,"name":null}])
        );
        let wrong: Vec<Value> = serde_json::from_str(r#"[{"id":"x"}]"#).expect("json");
        let err = rows_to_batches(&wrong, &cols())
            .expect_err("wrong type")
            .to_string();
        assert!(err.contains("id"), "{err}");
    }

    /// NaN and the infinities come back as documented strings, never as `null` (which
    /// is NULL), and those strings are read back as the same values on insert.
    #[test]
    fn non_finite_floats_are_not_null_in_json() {
        let cols = vec![
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
        ];
        let schema = tern_table::schema::arrow_schema(&cols);
        let batch = |ids: Vec<i64>, xs: Vec<Option<f64>>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(arrow::array::Int64Array::from(ids)),
                    Arc::new(Float64Array::from(xs)),
                ],
            )
            .expect("batch")
        };
        // Two batches, so the row positions of the second are offset.
        let batches = vec![
            batch(vec![1, 2], vec![Some(1.5), Some(f64::NAN)]),
            batch(
                vec![3, 4, 5],
                vec![None, Some(f64::INFINITY), Some(f64::NEG_INFINITY)],
            ),
        ];
        let json = batches_to_json(&batches).expect("json");
        assert_eq!(
            json,
            serde_json::json!([
                {"id": 1, "x": 1.5},
                {"id": 2, "x": "NaN"},
                {"id": 3, "x": null},
                {"id": 4, "x": "Infinity"},
                {"id": 5, "x": "-Infinity"},
            ])
        );
        let Value::Array(rows) = json else {
            panic!("not an array")
        };
        let back = rows_to_batches(&rows, &cols).expect("the strings are accepted on insert");
        let xs: Vec<Option<u64>> = back
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("float64")
                    .iter()
                    .map(|x| x.map(f64::to_bits))
                    .collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<Option<u64>> = [
            Some(1.5),
            Some(f64::NAN),
            None,
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
        ]
        .iter()
        .map(|x| x.map(f64::to_bits))
        .collect();
        assert_eq!(xs, want);
    }

    #[test]
    fn predicates_parse_with_column_types() {
        let p = predicate(
            &serde_json::json!({"and":[{"column":"id","op":">=","value":2},{"column":"name","is_null":false}]}),
            &cols(),
        )
        .expect("predicate");
        assert!(matches!(p, Predicate::And(ref v) if v.len() == 2));
        let err = predicate(
            &serde_json::json!({"column":"id","op":"=","value":"x"}),
            &cols(),
        )
        .expect_err("type");
        assert!(err.to_string().contains("\"id\""), "{err}");
        let err = predicate(
            &serde_json::json!({"column":"nope","op":"=","value":1}),
            &cols(),
        )
        .expect_err("column");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
