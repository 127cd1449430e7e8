//! Snowflake's time-travel syntax, `SELECT … FROM t AT (VERSION => 3)`, rewritten into
//! the `at_version` table function before the statement is parsed.
//!
//! sqlparser parses `AT (…)` only in dialects with table versioning (not the generic one
//! the session uses), and DataFusion's planner ignores a parsed table version — a query
//! would silently read the current version. So the text is rewritten first, on the
//! tokenizer's tokens (string literals, quoted identifiers and comments are never
//! mistaken for the syntax):
//!
//! ```text
//! orders AT (VERSION => 3)            →  at_version('public.orders', 3) AS orders
//! sales.orders AT(VERSION=>3) AS o    →  at_version('sales.orders', 3) AS o
//! ```
//!
//! The table reference keeps its name (the rewrite adds `AS <name>` unless an alias
//! follows), so `orders.id` still resolves. Other forms (`AT (TIMESTAMP => …)`,
//! `BEFORE (…)`) are refused with an error naming them.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::{Keyword, RESERVED_FOR_TABLE_ALIAS};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::catalog::DEFAULT_SCHEMA;
use crate::error::SqlError;

/// `sql` with every `name AT (VERSION => n)` replaced by `at_version('schema.name', n)`;
/// unchanged when it has none (or does not tokenize: the parser reports that).
pub fn rewrite(sql: &str) -> Result<String, SqlError> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return Ok(sql.to_string());
    };
    // Indices of the tokens that are not whitespace or comments.
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let tok = |k: usize| sig.get(k).map(|&i| &tokens[i].token);
    let is_word = |k: usize, word: &str| matches!(tok(k), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    let offsets = LineOffsets::new(sql);
    // (start byte, end byte, replacement), in order.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for k in 1..sig.len() {
        if !(is_word(k, "AT") || is_word(k, "BEFORE")) || tok(k + 1) != Some(&Token::LParen) {
            continue;
        }
        // The table name before it: `a`, `a.b` or `a.b.c`.
        let mut first = k - 1;
        if !matches!(tok(first), Some(Token::Word(_))) {
            continue;
        }
        while first >= 2
            && tok(first - 1) == Some(&Token::Period)
            && matches!(tok(first - 2), Some(Token::Word(_)))
        {
            first -= 2;
        }
        // Only where a table is named: after FROM, JOIN, USING or a comma of a FROM list.
        let after_from = first >= 1
            && (matches!(tok(first - 1), Some(Token::Comma))
                || ["FROM", "JOIN", "USING"]
                    .iter()
                    .any(|w| is_word(first - 1, w)));
        if !after_from {
            continue;
        }
        let what = if is_word(k, "BEFORE") {
            "BEFORE (…)".to_string()
        } else {
            match tok(k + 2) {
                Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("VERSION") => String::new(),
                Some(t) => format!("AT ({t} => …)"),
                None => "AT (".to_string(),
            }
        };
        if !what.is_empty() {
            return Err(SqlError::Unsupported(format!(
                "time travel {what}: Tern reads past versions by number, as in AT (VERSION => 3)"
            )));
        }
        let usage = || {
            SqlError::Parse(format!(
                "AT (VERSION => n) expects a version number{}",
                tokens[sig[k]].span.start
            ))
        };
        if tok(k + 3) != Some(&Token::RArrow) || tok(k + 5) != Some(&Token::RParen) {
            return Err(usage());
        }
        let version: u64 = match tok(k + 4) {
            Some(Token::Number(n, _)) => n.parse().map_err(|_| usage())?,
            _ => return Err(usage()),
        };
        let parts: Vec<String> = (first..k)
            .step_by(2)
            .filter_map(|j| match tok(j) {
                Some(Token::Word(w)) if w.quote_style.is_some() => Some(w.value.clone()),
                Some(Token::Word(w)) => Some(w.value.to_lowercase()),
                _ => None,
            })
            .collect();
        let name = match parts.as_slice() {
            [t] => format!("{DEFAULT_SCHEMA}.{t}"),
            [s, t] | [_, s, t] => format!("{s}.{t}"),
            _ => return Err(usage()),
        };
        let mut replacement = format!("at_version('{}', {version})", name.replace('\'', "''"));
        let aliased = match tok(k + 6) {
            Some(Token::Word(w)) => {
                w.keyword == Keyword::AS
                    || w.quote_style.is_some()
                    || !RESERVED_FOR_TABLE_ALIAS.contains(&w.keyword)
            }
            _ => false,
        };
        if !aliased {
            // The name as written (with its quotes), so that references to it resolve.
            replacement.push_str(&format!(" AS {}", tokens[sig[k - 1]].token));
        }
        let start = offsets.byte(tokens[sig[first]].span.start);
        let end = offsets.byte(span_end(&tokens[sig[k + 5]]));
        edits.push((start, end, replacement));
    }
    let mut out = String::with_capacity(sql.len() + 32 * edits.len());
    let mut at = 0;
    for (start, end, text) in edits {
        out.push_str(&sql[at..start]);
        out.push_str(&text);
        at = end;
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

fn span_end(t: &TokenWithSpan) -> Location {
    t.span.end
}

/// Line/column locations (1-based, columns in characters) as byte offsets.
struct LineOffsets<'a> {
    sql: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineOffsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Self { sql, starts }
    }

    fn byte(&self, l: Location) -> usize {
        let line = usize::try_from(l.line).unwrap_or(1).max(1) - 1;
        let Some(&start) = self.starts.get(line) else {
            return self.sql.len();
        };
        let col = usize::try_from(l.column).unwrap_or(1).max(1) - 1;
        self.sql[start..]
            .char_indices()
            .nth(col)
            .map_or(self.sql.len(), |(i, _)| start + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> String {
        rewrite(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    #[test]
    fn at_version_becomes_the_table_function() {
        assert_eq!(
            ok("SELECT * FROM orders AT (VERSION => 3)"),
            "SELECT * FROM at_version('public.orders', 3) AS orders"
        );
        assert_eq!(
            ok("select o.id from Sales.Orders at(version=>12) o where o.id > 1"),
            "select o.id from at_version('sales.orders', 12) o where o.id > 1"
        );
        assert_eq!(
            ok("SELECT * FROM \"Orders\" AT (VERSION => 1) AS x"),
            "SELECT * FROM at_version('public.Orders', 1) AS x"
        );
        assert_eq!(
            ok("SELECT * FROM a AT (VERSION => 1) JOIN b AT (VERSION => 2) ON a.id = b.id, c"),
            "SELECT * FROM at_version('public.a', 1) AS a JOIN at_version('public.b', 2) AS b ON a.id = b.id, c"
        );
        assert_eq!(
            ok("SELECT * FROM tern.s.t AT (VERSION => 4)\nWHERE x = 'é'"),
            "SELECT * FROM at_version('s.t', 4) AS t\nWHERE x = 'é'"
        );
        // A line break and a comment inside the syntax, a non-ASCII text before it.
        assert_eq!(
            ok("SELECT 'ü', * FROM t\n  AT ( -- past\n VERSION => 2 )"),
            "SELECT 'ü', * FROM at_version('public.t', 2) AS t"
        );
    }

    #[test]
    fn quotes_and_comments_are_left_alone() {
        for sql in [
            "SELECT 'FROM t AT (VERSION => 3)' FROM t",
            "SELECT * FROM t -- AT (VERSION => 3)",
            "SELECT * FROM t /* AT (VERSION => 3) */",
            "SELECT \"at\" FROM t",
            "SELECT * FROM t AS at",
            "SELECT at(1) FROM t",
        ] {
            assert_eq!(ok(sql), sql);
        }
    }

    #[test]
    fn other_forms_are_named_errors() {
        let e = rewrite("SELECT * FROM t AT (TIMESTAMP => '2026-01-01')").expect_err("refused");
        assert!(e.to_string().contains("TIMESTAMP"), "{e}");
        let e = rewrite("SELECT * FROM t BEFORE (STATEMENT => 'x')").expect_err("refused");
        assert!(e.to_string().contains("BEFORE"), "{e}");
        let e = rewrite("SELECT * FROM t AT (VERSION => -1)").expect_err("refused");
        assert!(e.to_string().contains("version number"), "{e}");
        let e = rewrite("SELECT * FROM t AT (VERSION => 'x')").expect_err("refused");
        assert!(e.to_string().contains("Line: 1"), "{e}");
    }
}
