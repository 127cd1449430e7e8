//! `tern sql account.database "SELECT …"`: SQL statements through `POST /v1/sql`.
//!
//! Rows print as an aligned table (the default), as the daemon's JSON lines (`--json`)
//! or as CSV (`--csv`). Without a statement argument, statements are read from standard
//! input, one per `;`-terminated piece, so a file of statements can be piped in; on a
//! terminal (or with `-i`) this is an interactive shell with a prompt, a history file and
//! `\q` to leave (see [`shell`]).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

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

/// Where an interactive shell keeps its history: `$TERN_SQL_HISTORY` (empty: none), else
/// `$XDG_STATE_HOME/tern/sql_history`, else `~/.local/state/tern/sql_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TERN_SQL_HISTORY") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(state.join("tern").join("sql_history"))
}

/// Adds `sql` (on one line) to the history file; a history that cannot be written is
/// noted once and the shell goes on.
fn remember(path: &Option<PathBuf>, sql: &str, warned: &mut bool) {
    let Some(path) = path else { return };
    let line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "{line}")
        });
    if let Err(e) = written
        && !*warned
    {
        *warned = true;
        output::note(&format!("history not kept ({}): {e}", path.display()));
    }
}

/// The complete statements at the start of `pending` (each ended by a `;` outside
/// quotes and comments, the `;` kept) and what remains.
fn split_statements(pending: &str) -> (Vec<String>, String) {
    #[derive(PartialEq)]
    enum In {
        Code,
        Quote(char),
        LineComment,
        BlockComment,
    }
    let mut state = In::Code;
    let mut done = Vec::new();
    let mut start = 0;
    let mut chars = pending.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        let next = chars.peek().map(|(_, c)| *c);
        match state {
            In::Code => match ch {
                '\'' | '"' => state = In::Quote(ch),
                '-' if next == Some('-') => state = In::LineComment,
                '/' if next == Some('*') => {
                    chars.next();
                    state = In::BlockComment;
                }
                ';' => {
                    let stmt = pending[start..=i].trim();
                    if stmt != ";" {
                        done.push(stmt.to_string());
                    }
                    start = i + 1;
                }
                _ => {}
            },
            // A doubled quote inside a quoted text reads as leaving and re-entering it.
            In::Quote(q) if ch == q => state = In::Code,
            In::LineComment if ch == '\n' => state = In::Code,
            In::BlockComment if ch == '*' && next == Some('/') => {
                chars.next();
                state = In::Code;
            }
            _ => {}
        }
    }
    (done, pending[start..].to_string())
}

const SHELL_HELP: &str = "statements end with ;  (several lines are one statement until then)\n\
    \\q        leave (or Ctrl-D)\n\
    \\s        show the history\n\
    \\?        this help";

/// The SQL shell: statements read from standard input, each run as soon as it is
/// complete (ends with `;` outside quotes and comments); an error is printed and the
/// next statement is read. `interactive` (a terminal, or `tern sql -i`): prompts, the
/// `\q`, `\s` and `\?` commands, statements kept in the history file
/// ([`history_path`]), and the exit status stays 0 whatever failed. Piped statements
/// without `-i` exit non-zero when one of them failed.
pub async fn shell(
    c: &Client,
    target: &str,
    mode: Mode,
    interactive: bool,
) -> Result<(), ClientError> {
    let stdin = std::io::stdin();
    let interactive = interactive || stdin.is_terminal();
    let history = if interactive { history_path() } else { None };
    let mut warned = false;
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
    if interactive {
        output::note(&format!(
            "SQL on {target}: end statements with ;  \\q to leave, \\? for help"
        ));
    }
    prompt(&pending);
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| ClientError::Input(format!("reading statements: {e}")))?;
        if interactive && pending.trim().is_empty() {
            match line.trim() {
                "\\q" | "quit" | "exit" => {
                    pending.clear();
                    break;
                }
                "\\?" | "help" => {
                    output::note(SHELL_HELP);
                    prompt(&pending);
                    continue;
                }
                "\\s" => {
                    if let Some(p) = &history {
                        let text = std::fs::read_to_string(p).unwrap_or_default();
                        output::print(&text);
                    }
                    prompt(&pending);
                    continue;
                }
                other if other.starts_with('\\') => {
                    output::note(&format!("unknown command {other}; \\? lists them"));
                    prompt(&pending);
                    continue;
                }
                _ => {}
            }
        }
        pending.push_str(&line);
        pending.push('\n');
        let (statements, rest) = split_statements(&pending);
        pending = rest;
        for sql in statements {
            remember(&history, &sql, &mut warned);
            if let Err(e) = run(c, target, &sql, mode).await {
                output::note(&format!("error: {e}"));
                failed = Some(e);
            }
        }
        prompt(&pending);
    }
    if interactive && !pending.trim().is_empty() {
        // Ctrl-D in the middle of a statement: it is not run.
        output::note("(the unfinished statement was not run)");
    } else if !pending.trim().is_empty() {
        run(c, target, &pending, mode).await?;
    }
    match failed {
        // Piped statements: the exit status says whether one failed.
        Some(e) if !interactive => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        let (done, rest) = split_statements("SELECT 1;\nSELECT ';' AS x; -- a; b\nSELECT\n");
        assert_eq!(done, ["SELECT 1;", "SELECT ';' AS x;"]);
        assert_eq!(rest, " -- a; b\nSELECT\n");
        let (done, rest) = split_statements("SELECT 'it''s;' /* ; */, \"a;b\"\nFROM t;");
        assert_eq!(done, ["SELECT 'it''s;' /* ; */, \"a;b\"\nFROM t;"]);
        assert_eq!(rest, "");
        let (done, rest) = split_statements(";;  SELECT 2");
        assert!(done.is_empty(), "{done:?}");
        assert_eq!(rest, "  SELECT 2");
    }
}
