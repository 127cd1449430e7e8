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

use arrow::array::RecordBatch;
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
    serde_json::from_slice(&buf).map_err(|e| Error::internal("encode rows")(e.to_string()))
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
