//! `tern sql account.database "SELECT …"`: SQL statements through `POST /v1/sql`.
//!
//! Rows print as an aligned table (the default), as the daemon's JSON lines (`--json`)
//! or as CSV (`--csv`). Without a statement argument, statements are read from standard
//! input, one per `;`-terminated piece (a prompt is shown when it is a terminal), so a
//! file of statements can be piped in or typed one after another.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::{Value, json};

use crate::client::{Client, ClientError};
use crate::output;

/// How rows print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Aligned text table.
    Table,
    /// The JSON lines as the daemon sent them.
    Json,
    /// CSV with a header line.
    Csv,
}

/// Run `sql` on `target` (`account.database`, or just `account` for the replication
/// statements such as `SHOW GLOBAL DATABASES`) and print its answer.
pub async fn run(c: &Client, target: &str, sql: &str, mode: Mode) -> Result<(), ClientError> {
    let (account, database) = match target.split_once('.') {
        Some((a, d)) => (a, Some(d)),
        None => (target, None),
    };
    if account.is_empty() {
        return Err(ClientError::Input(format!(
            "{target:?}: name the account (account.database, or account for replication statements)"
        )));
    }
    let format = if mode == Mode::Csv { "csv" } else { "ndjson" };
    let body = json!({"account": account, "database": database, "sql": sql, "format": format});
    let resp = c.send_raw("/v1/sql", &body).await?;
    let columns: Vec<String> = resp
        .headers()
        .get("tern-columns")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let url = format!("{}/v1/sql", c.base());
    let text = resp
        .text()
        .await
        .map_err(|source| ClientError::Connect { url, source })?;
    match mode {
        Mode::Csv | Mode::Json => output::print(&text),
        Mode::Table => {
            let mut rows = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| ClientError::Input(format!("bad answer line {line:?}: {e}")))?;
                if let Some(e) = v.get("error") {
                    output::print(&output::table(&columns, &rows));
                    return Err(ClientError::Api {
                        status: 200,
                        kind: e["kind"].as_str().unwrap_or("unknown").to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                        redirect: None,
                        body: Box::new(v),
                    });
                }
                rows.push(v);
            }
            output::print(&output::table(&columns, &rows));
            output::note(&format!(
                "({} row{})",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" }
            ));
        }
    }
    Ok(())
}

/// Statements read from standard input, each run as it is complete (ends with `;`); an
/// error is printed and the next statement is read.
pub async fn shell(c: &Client, target: &str, mode: Mode) -> Result<(), ClientError> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut pending = String::new();
    let mut failed = None;
    let prompt = |pending: &str| {
        if interactive {
            let p = if pending.trim().is_empty() {
                "tern> "
            } else {
                "  ... "
            };
            let mut err = std::io::stderr();
            let _ = write!(err, "{p}");
            let _ = err.flush();
        }
    };
    prompt(&pending);
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| ClientError::Input(format!("reading statements: {e}")))?;
        pending.push_str(&line);
        pending.push('\n');
        if line.trim_end().ends_with(';') {
            let sql = std::mem::take(&mut pending);
            if let Err(e) = run(c, target, &sql, mode).await {
                output::note(&format!("error: {e}"));
                failed = Some(e);
            }
        }
        prompt(&pending);
    }
    if !pending.trim().is_empty() {
        run(c, target, &pending, mode).await?;
    }
    match failed {
        // Piped statements: the exit status says whether one failed.
        Some(e) if !interactive => Err(e),
        _ => Ok(()),
    }
}
