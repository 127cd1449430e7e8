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

/// Rows printed as they arrive, as an aligned table ([`table`]) or CSV ([`csv`]). A table's
/// column widths come from its first [`STREAM_HOLD`] rows (all of them when there are
/// fewer, so a small answer prints exactly as [`table`] does); later rows are printed as
/// they come with those widths (a longer cell widens its line only). Memory holds at most
/// those first rows, whatever the answer's size.
pub struct StreamRows {
    csv: bool,
    columns: Vec<String>,
    held: Vec<Value>,
    widths: Option<Vec<usize>>,
    /// Rows printed or held.
    pub rows: u64,
}

/// Rows a streamed table holds back to size its columns.
pub const STREAM_HOLD: usize = 1000;

impl StreamRows {
    /// A printer of rows as a table, or as CSV.
    pub fn new(csv: bool) -> Self {
        Self {
            csv,
            columns: Vec::new(),
            held: Vec::new(),
            widths: None,
            rows: 0,
        }
    }

    /// Print the rows still held (the whole table when it had fewer than
    /// [`STREAM_HOLD`] rows).
    pub fn finish(&mut self) {
        if !self.csv && self.widths.is_none() {
            print(&table(&self.columns, &self.held));
            self.held.clear();
        }
    }

    #[allow(clippy::print_stdout)] // the CLI's result channel
    fn out(s: &str) {
        print!("{s}");
    }
}

impl crate::client::RowSink for StreamRows {
    fn start(&mut self, head: &serde_json::Map<String, Value>) {
        self.columns = head
            .get("columns")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(cell).collect())
            .unwrap_or_default();
        if self.csv {
            Self::out(&csv(&self.columns, &[]));
        }
    }

    fn row(&mut self, row: Value) {
        self.rows += 1;
        if self.csv {
            let text = csv(&self.columns, std::slice::from_ref(&row));
            // Without its header line.
            Self::out(text.split_once('\n').map_or("", |(_, rest)| rest));
            return;
        }
        match &self.widths {
            None => {
                self.held.push(row);
                if self.held.len() >= STREAM_HOLD {
                    let text = table(&self.columns, &self.held);
                    self.widths = Some(widths_of(&text, &self.columns));
                    Self::out(&text);
                    self.held.clear();
                }
            }
            Some(widths) => {
                let parts: Vec<String> = self
                    .columns
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{:<w$}", cell(&row[c])))
                    .collect();
                Self::out(&format!("{}\n", parts.join(" | ").trim_end()));
            }
        }
    }
}

/// The column widths of a table made by [`table`] (from its separator line).
fn widths_of(table: &str, columns: &[String]) -> Vec<usize> {
    table
        .lines()
        .nth(1)
        .map(|sep| sep.split("-+-").map(|d| d.chars().count()).collect())
        .unwrap_or_else(|| columns.iter().map(|c| c.chars().count()).collect())
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

/// A progress bar on stderr for one upload, drawn only when stderr is a terminal (logs and
/// pipes get the one-line summary the caller prints when it is done).
pub struct Progress {
    label: String,
    total: u64,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    started: std::time::Instant,
    tty: bool,
}

impl Progress {
    /// A bar for `total` bytes of `label`.
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        use std::io::IsTerminal;
        Self {
            label: label.into(),
            total,
            done: std::sync::Arc::default(),
            started: std::time::Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// The byte counter the upload advances.
    pub fn counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        std::sync::Arc::clone(&self.done)
    }

    /// Redraw the bar.
    #[allow(clippy::print_stderr)] // the CLI's progress output
    pub fn draw(&self) {
        if self.tty {
            let done = self.done.load(std::sync::atomic::Ordering::Relaxed);
            let line = bar_line(&self.label, done, self.total, self.started.elapsed());
            eprint!("\r{line}\x1b[K");
        }
    }

    /// Clear the bar's line.
    #[allow(clippy::print_stderr)] // the CLI's progress output
    pub fn finish(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// `label [#####-----]  50%  5.0/10.0 MiB  2.5 MiB/s`, or `… committing` once every byte
/// is sent and the daemon is working on it.
pub fn bar_line(label: &str, done: u64, total: u64, elapsed: std::time::Duration) -> String {
    const WIDTH: u64 = 24;
    // An empty file is all sent at once.
    let (done, total) = if total == 0 {
        (1, 1)
    } else {
        (done.min(total), total)
    };
    let filled = usize::try_from(done * WIDTH / total).unwrap_or(0);
    let empty = usize::try_from(WIDTH).unwrap_or(0) - filled;
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let rate = mib(done) / elapsed.as_secs_f64().max(1e-3);
    let tail = if done == total {
        "committing".to_string()
    } else {
        format!("{rate:.1} MiB/s")
    };
    format!(
        "{label} [{}{}] {:>3}%  {:.1}/{:.1} MiB  {tail}",
        "#".repeat(filled),
        "-".repeat(empty),
        done * 100 / total,
        mib(done),
        mib(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_with_the_bytes_sent() {
        let s = std::time::Duration::from_secs(2);
        let half = bar_line("a.csv", 5 << 20, 10 << 20, s);
        assert_eq!(
            half,
            "a.csv [############------------]  50%  5.0/10.0 MiB  2.5 MiB/s"
        );
        let all = bar_line("a.csv", 10 << 20, 10 << 20, s);
        assert!(all.contains("[########################] 100%") && all.ends_with("committing"));
        assert!(bar_line("empty", 0, 0, s).contains("100%"));
    }

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
