//! Printing API answers: aligned text tables, CSV, or the JSON itself.

use std::fmt::Write as _;

use serde_json::Value;

/// A cell's text.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An aligned text table of `rows` (objects) under `columns`.
pub fn table(columns: &[String], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, vals: &[String]| {
        let parts: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join(" | ").trim_end());
    };
    line(&mut out, columns);
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for r in &cells {
        line(&mut out, r);
    }
    out
}

/// CSV of `rows` under `columns` (quoted when needed).
pub fn csv(columns: &[String], rows: &[Value]) -> String {
    let quote = |s: String| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = columns
        .iter()
        .map(|c| quote(c.clone()))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = columns
            .iter()
            .map(|c| match &r[c] {
                Value::Null => String::new(),
                v => quote(cell(v)),
            })
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Prints `s` to stdout (the CLI's result channel).
#[allow(clippy::print_stdout)]
pub fn print(s: &str) {
    print!("{s}");
    if !s.ends_with('\n') {
        println!();
    }
}

/// Prints a note to stderr (progress, not results).
#[allow(clippy::print_stderr)]
pub fn note(s: &str) {
    eprintln!("{s}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_csv_align_and_quote() {
        let cols = vec!["id".to_string(), "name".to_string()];
        let rows = vec![
            serde_json::json!({"id": 1, "name": "a,b"}),
            serde_json::json!({"id": 22, "name": null}),
        ];
        let t = table(&cols, &rows);
        assert!(t.starts_with("id | name\n---+-----"), "{t}");
        assert!(t.contains("22 | NULL"), "{t}");
        assert_eq!(csv(&cols, &rows), "id,name\n1,\"a,b\"\n22,\n");
    }
}
