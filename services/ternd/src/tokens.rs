//! Account tokens: made, listed and revoked by the operator; optionally read-only,
//! optionally expiring.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/accounts/{a}/tokens` | a new token `{read_only?, expires_in?: "30d", name?}` → `{token, id, …}` (operator; the token is shown once) |
//! | `GET /v1/accounts/{a}/tokens` | the account's tokens: `{id, name, read_only, created_at_ms, expires_at_ms, expired}`, never the secrets (operator, or a token of the account) |
//! | `DELETE /v1/accounts/{a}/tokens/{id}` | revoke: refused from the next request on (operator) |
//!
//! Only a token's SHA-256 is stored (`tok/<hex>`, [`crate::daemon::TokenDpo`]); its
//! public id is the first [`ID_LEN`] hex digits of that digest, so listing and revoking
//! never need the secret. A revoked token is deleted: it is then as unknown as a token
//! never made (401). An expired one is kept (listed as expired) and refused (401) until
//! revoked.
//!
//! A read-only token is refused (403, kind `forbidden`) on every request that writes:
//! any method but `GET`/`HEAD`, except scans (`POST …/scan`, which only read) and
//! `POST /v1/sql`, where only queries pass ([`sql_reads_only`]). It cannot log in over
//! the PostgreSQL protocol, whose statements are not classified.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tern_meta::Key;
use tern_storage::layout::AccountId;

use crate::api::{ApiError, ApiResult};
use crate::daemon::{Daemon, TokenDpo, token_key};
use crate::error::{Error, Result};

/// Hex digits of a token's digest that make its public id.
pub const ID_LEN: usize = 16;

/// The stored row of `token`, when it is known and not expired.
pub(crate) fn lookup(d: &Daemon, token: &str) -> Result<TokenDpo> {
    match d.meta.read(|tx| tx.get::<TokenDpo>(&token_key(token)))? {
        None => Err(Error::Unauthorized("unknown or revoked token")),
        Some(t) => {
            check_expiry(&t, d.now_ms())?;
            Ok(t)
        }
    }
}

/// Refuses a token past its expiry.
pub(crate) fn check_expiry(t: &TokenDpo, now_ms: i64) -> Result<()> {
    match t.expires_at_ms {
        Some(at) if now_ms >= at => Err(Error::Unauthorized(
            "token expired: ask the operator for a new one (tern token create <account>)",
        )),
        _ => Ok(()),
    }
}

/// Whether a request writes, as far as read-only tokens go (`/v1/sql` is decided by its
/// statements, in [`sql_reads_only`]).
pub(crate) fn writes(method: &Method, path: &str) -> bool {
    !(method == Method::GET
        || method == Method::HEAD
        || path.ends_with("/scan")
        || path == "/v1/sql")
}

/// Whether every statement of `sql` only reads: each `;`-separated part starts with
/// `SELECT`, `SHOW`, `DESCRIBE`, `VALUES` or `EXPLAIN` (not `EXPLAIN ANALYZE`, which runs
/// its statement) and none says `INTO`. Conservative: a `;` or keyword inside a string
/// literal may refuse a query, never pass a write.
pub fn sql_reads_only(sql: &str) -> bool {
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|stmt| {
            let words: Vec<String> = stmt
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_uppercase)
                .collect();
            let first = words.first().map(String::as_str);
            let reads = match first {
                Some("SELECT" | "SHOW" | "DESCRIBE" | "VALUES") => true,
                Some("EXPLAIN") => words.get(1).map(String::as_str) != Some("ANALYZE"),
                _ => false,
            };
            // A statement starting with a comment or a parenthesis is refused too.
            let starts_plain = stmt.starts_with(|c: char| c.is_ascii_alphabetic());
            reads && starts_plain && !words.iter().any(|w| w == "INTO")
        })
}

/// Refuses `sql` to a read-only account token (the operator's and read-write tokens
/// pass).
pub(crate) fn check_sql(d: &Daemon, headers: &HeaderMap, sql: &str) -> Result<()> {
    let Some(token) = crate::api::bearer_opt(headers) else {
        return Ok(());
    };
    if d.is_operator(token) {
        return Ok(());
    }
    let t = lookup(d, token)?;
    if t.read_only && !sql_reads_only(sql) {
        return Err(Error::ReadOnlyToken { account: t.account });
    }
    Ok(())
}

/// Middleware: a read-only token is refused on a request that writes, before its handler
/// runs (unknown tokens are left to the handler's own check, which names them).
pub(crate) async fn read_only_guard(
    State(d): State<Arc<Daemon>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if writes(req.method(), req.uri().path())
        && let Some(token) = crate::api::bearer_opt(req.headers())
        && !d.is_operator(token)
        && let Ok(Some(t)) = d.meta.read(|tx| tx.get::<TokenDpo>(&token_key(token)))
        && t.read_only
    {
        return ApiError(Error::ReadOnlyToken { account: t.account }).into_response();
    }
    next.run(req).await
}

/// The public id of the token stored under `key` (`tok/<hex>`).
fn id_of(key: &Key) -> Option<String> {
    match key.elements().ok()?.get(1)? {
        tern_meta::Element::Str(hex) => Some(hex.chars().take(ID_LEN).collect()),
        tern_meta::Element::U64(_) => None,
    }
}

/// Every token of `account`: (key, id, row), sorted by creation.
fn tokens_of(d: &Daemon, account: &AccountId) -> Result<Vec<(Key, String, TokenDpo)>> {
    let mut out: Vec<(Key, String, TokenDpo)> = d
        .meta
        .read(|tx| tx.scan_prefix::<TokenDpo>(&Key::root("tok")))?
        .into_iter()
        .filter(|(_, t)| t.account == account.as_str())
        .filter_map(|(k, t)| id_of(&k).map(|id| (k, id, t)))
        .collect();
    out.sort_by(|a, b| (a.2.created_at_ms, &a.1).cmp(&(b.2.created_at_ms, &b.1)));
    Ok(out)
}

fn new_secret() -> Result<String> {
    let mut b = [0u8; 24];
    tern_crypto::SystemRandom::shared()
        .fill(&mut b)
        .map_err(|e| Error::internal("make a token")(e.to_string()))?;
    Ok(format!(
        "tern_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// What a new token may be.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// Refused on writes.
    #[serde(default)]
    pub read_only: bool,
    /// Refused after this long (`"30d"`, `"12h"`); never when absent.
    #[serde(default, with = "humantime_serde")]
    pub expires_in: Option<Duration>,
    /// A name for listings (`ci`, `grafana`).
    #[serde(default)]
    pub name: Option<String>,
}

/// Makes and stores a token for `account`; the secret and the answer that shows it.
pub(crate) fn issue(
    d: &Daemon,
    account: &AccountId,
    spec: &NewToken,
) -> Result<(String, tern_api::TokenMade)> {
    if let Some(n) = &spec.name
        && AccountId::new(n.as_str()).is_err()
    {
        // The rule of account names, which token names share.
        return Err(Error::Invalid(format!(
            "token name {n:?}: use 1 to 63 ASCII letters, digits, '-' or '_', starting with a letter or digit"
        )));
    }
    let now = d.now_ms();
    let expires_at_ms = match spec.expires_in {
        None => None,
        Some(t) if t.is_zero() => {
            return Err(Error::Invalid(
                "expires_in must be positive (\"30d\", \"12h\"); leave it out for a token that does not expire".into(),
            ));
        }
        Some(t) => Some(now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))),
    };
    let secret = new_secret()?;
    let dpo = TokenDpo {
        account: account.to_string(),
        created_at_ms: now,
        read_only: spec.read_only,
        expires_at_ms,
        name: spec.name.clone(),
    };
    let key = token_key(&secret);
    d.meta.write(|tx| tx.put(&key, &dpo))?;
    let id = id_of(&key).unwrap_or_default();
    let made = tern_api::TokenMade {
        info: describe(&id, &dpo, now),
        token: secret.clone(),
    };
    tracing::info!(account = %account, token_id = %id, read_only = dpo.read_only, "token made");
    Ok((secret, made))
}

fn describe(id: &str, t: &TokenDpo, now_ms: i64) -> tern_api::TokenInfo {
    tern_api::TokenInfo {
        account: t.account.clone(),
        id: id.to_string(),
        name: t.name.clone(),
        read_only: t.read_only,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        expired: check_expiry(t, now_ms).is_err(),
    }
}

/// `POST /v1/accounts/{a}/tokens` (operator).
pub(crate) async fn create(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: crate::api::Body,
) -> ApiResult<(StatusCode, axum::Json<tern_api::TokenMade>)> {
    crate::api::operator(&d, &headers)?;
    let id = crate::api::account(&d, &headers, &acct)?;
    let body = body.bytes()?;
    let spec: NewToken = if body.iter().all(u8::is_ascii_whitespace) {
        NewToken::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::Invalid(format!(
                "bad JSON body: {e} (fields: read_only, expires_in, name)"
            ))
        })?
    };
    let (_, v) = issue(&d, &id, &spec)?;
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// `GET /v1/accounts/{a}/tokens` (operator, or a token of the account).
pub(crate) async fn list(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<tern_api::TokenList>> {
    let id = crate::api::account(&d, &headers, &acct)?;
    let now = d.now_ms();
    let tokens = tokens_of(&d, &id)?
        .iter()
        .map(|(_, tid, t)| describe(tid, t, now))
        .collect();
    Ok(axum::Json(tern_api::TokenList {
        account: id.as_str().to_string(),
        tokens,
    }))
}

/// `DELETE /v1/accounts/{a}/tokens/{id}` (operator): the token is deleted.
pub(crate) async fn revoke(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    Path((acct, tid)): Path<(String, String)>,
) -> ApiResult<axum::Json<tern_api::TokenRevoked>> {
    crate::api::operator(&d, &headers)?;
    let id = crate::api::account(&d, &headers, &acct)?;
    if tid.len() != ID_LEN || !tid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "token id {tid:?}: expected the {ID_LEN} hex digits `tern token list {acct}` shows"
        ))
        .into());
    }
    let tid = tid.to_ascii_lowercase();
    let found = tokens_of(&d, &id)?
        .into_iter()
        .find(|(_, i, _)| *i == tid)
        .ok_or_else(|| Error::NotFound {
            what: "token",
            name: format!("{acct}/{tid}"),
        })?;
    d.meta.write(|tx| tx.delete(&found.0))?;
    tracing::info!(account = %id, token_id = %tid, "token revoked");
    Ok(axum::Json(tern_api::TokenRevoked {
        account: id.as_str().to_string(),
        id: tid,
        revoked: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queries_pass_for_read_only_tokens() {
        for ok in [
            "SELECT * FROM t",
            "select 1; show tables",
            "EXPLAIN SELECT 1",
            "  describe t ;",
            "VALUES (1)",
        ] {
            assert!(sql_reads_only(ok), "{ok}");
        }
        for write in [
            "INSERT INTO t VALUES (1)",
            "SELECT 1; DELETE FROM t",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "SELECT * INTO t2 FROM t",
            "CREATE TABLE t (a INT)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "/* hi */ INSERT INTO t VALUES (1)",
            "-- c\nDROP TABLE t",
            "(SELECT 1)",
            "UPDATE t SET a = 1",
        ] {
            assert!(!sql_reads_only(write), "{write}");
        }
    }

    #[test]
    fn writes_are_every_method_but_reads_scans_and_sql() {
        assert!(!writes(&Method::GET, "/v1/accounts/a/tokens"));
        assert!(!writes(
            &Method::POST,
            "/v1/accounts/a/databases/d/schemas/s/tables/t/scan"
        ));
        assert!(!writes(&Method::POST, "/v1/sql"));
        assert!(writes(
            &Method::POST,
            "/v1/accounts/a/databases/d/schemas/s/tables/t/rows"
        ));
        assert!(writes(
            &Method::DELETE,
            "/v1/accounts/a/databases/d/schemas/s/tables/t"
        ));
        assert!(writes(&Method::PUT, "/v1/accounts/a/databases/d/policy"));
    }

    #[test]
    fn a_token_is_refused_from_its_expiry_on() {
        let t = TokenDpo {
            account: "acme".into(),
            created_at_ms: 1_000,
            read_only: false,
            expires_at_ms: Some(5_000),
            name: None,
        };
        assert!(check_expiry(&t, 4_999).is_ok());
        let e = check_expiry(&t, 5_000).expect_err("expired");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(e.to_string().contains("expired"), "{e}");
        let forever = TokenDpo {
            expires_at_ms: None,
            ..t
        };
        assert!(check_expiry(&forever, i64::MAX).is_ok());
    }
}
