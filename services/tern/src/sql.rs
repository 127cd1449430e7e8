//! `tern sql account.database "SELECT …"`: SQL statements through `POST /v1/sql`.
//!
//! Rows print as an aligned table (the default), as the daemon's JSON lines (`--json`)
//! or as CSV (`--csv`). Without a statement argument, statements are read from standard
//! input, one per `;`-terminated piece, so a file of statements can be piped in; on a
//! terminal (or with `-i`) this is an interactive shell with a prompt, a history file and
//! `\q` to leave (see [`shell`]); on a terminal lines are edited as in other shells
//! (arrow keys, ↑/↓ through the history, Ctrl-R to search it, Ctrl-C to drop what is
//! typed).

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
    let url = format!("{}/v1/sql", c.base());
    // The answer's columns (a JSON list of names); a table without them would be blank.
    let columns: Option<Vec<String>> = resp
        .headers()
        .get("tern-columns")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok());
    let text = resp.text().await.map_err(|source| ClientError::Connect {
        url: url.clone(),
        source,
    })?;
    match mode {
        Mode::Csv | Mode::Json => output::print(&text),
        Mode::Table => {
            let columns = columns.ok_or_else(|| ClientError::Shape {
                url: url.clone(),
                reason: "no `Tern-Columns` header (a JSON list of the column names)".into(),
            })?;
            // The rows stay `Value`: their columns are the user's, not a shape of the API.
            let mut rows = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| ClientError::Input(format!("bad answer line {line:?}: {e}")))?;
                if v.get("error").is_some() {
                    output::print(&output::table(&columns, &rows));
                    return Err(crate::client::api_error(200, v));
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
    ↑ ↓       earlier statements (on a terminal; Ctrl-R searches them, Ctrl-C drops a line)\n\
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
    let history = if interactive || std::io::stdin().is_terminal() {
        history_path()
    } else {
        None
    };
    let mut input = Input::open(interactive, history.as_deref());
    let interactive = input.is_interactive();
    let mut warned = false;
    let mut pending = String::new();
    let mut failed = None;
    if interactive {
        output::note(&format!(
            "SQL on {target}: end statements with ;  \\q to leave, \\? for help"
        ));
    }
    loop {
        let prompt = if pending.trim().is_empty() {
            "tern> "
        } else {
            "  ... "
        };
        let line = match input.read(prompt)? {
            Read::Line(line) => line,
            Read::Interrupted => {
                // Ctrl-C: what was typed of the statement is dropped, as in psql.
                pending.clear();
                continue;
            }
            Read::End => break,
        };
        if interactive && pending.trim().is_empty() {
            match line.trim() {
                "\\q" | "quit" | "exit" => {
                    pending.clear();
                    break;
                }
                "\\?" | "help" => {
                    output::note(SHELL_HELP);
                    continue;
                }
                "\\s" => {
                    if let Some(p) = &history {
                        let text = std::fs::read_to_string(p).unwrap_or_default();
                        output::print(&text);
                    }
                    continue;
                }
                other if other.starts_with('\\') => {
                    output::note(&format!("unknown command {other}; \\? lists them"));
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
            input.remember(&sql);
            if let Err(e) = run(c, target, &sql, mode).await {
                output::note(&format!("error: {e}"));
                failed = Some(e);
            }
        }
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

/// One read of the shell's input.
enum Read {
    Line(String),
    /// Ctrl-C at the line editor.
    Interrupted,
    /// Ctrl-D, or the end of the piped input.
    End,
}

/// Where the shell's lines come from: a line editor on a terminal, else standard input
/// line by line (with `-i`, prompts on standard error).
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Plain {
        lines: std::io::Lines<std::io::StdinLock<'static>>,
        prompts: bool,
    },
}

impl Input {
    /// A line editor when standard input and output are a terminal (its history loaded
    /// from `history`, one statement a line), else plain lines.
    fn open(interactive: bool, history: Option<&std::path::Path>) -> Self {
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            match rustyline::DefaultEditor::new() {
                Ok(mut editor) => {
                    let kept = history
                        .and_then(|p| std::fs::read_to_string(p).ok())
                        .unwrap_or_default();
                    for line in kept.lines().filter(|l| !l.trim().is_empty()) {
                        let _ = editor.add_history_entry(line);
                    }
                    return Self::Editor(Box::new(editor));
                }
                Err(e) => output::note(&format!("no line editing ({e}); reading lines as typed")),
            }
        }
        Self::Plain {
            lines: std::io::stdin().lock().lines(),
            prompts: interactive || std::io::stdin().is_terminal(),
        }
    }

    fn is_interactive(&self) -> bool {
        match self {
            Self::Editor(_) => true,
            Self::Plain { prompts, .. } => *prompts,
        }
    }

    fn read(&mut self, prompt: &str) -> Result<Read, ClientError> {
        match self {
            Self::Editor(editor) => match editor.readline(prompt) {
                Ok(line) => Ok(Read::Line(line)),
                Err(rustyline::error::ReadlineError::Interrupted) => Ok(Read::Interrupted),
                Err(rustyline::error::ReadlineError::Eof) => Ok(Read::End),
                Err(e) => Err(ClientError::Input(format!("reading statements: {e}"))),
            },
            Self::Plain { lines, prompts } => {
                if *prompts {
                    let mut err = std::io::stderr();
                    let _ = write!(err, "{prompt}");
                    let _ = err.flush();
                }
                match lines.next() {
                    Some(Ok(line)) => Ok(Read::Line(line)),
                    Some(Err(e)) => Err(ClientError::Input(format!("reading statements: {e}"))),
                    None => Ok(Read::End),
                }
            }
        }
    }

    /// A statement run: ↑ recalls it (on one line) at the editor.
    fn remember(&mut self, sql: &str) {
        if let Self::Editor(editor) = self {
            let line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = editor.add_history_entry(line);
        }
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
