//! The PostgreSQL wire protocol on an optional listener (`[sql] pg_listen`), so that
//! `psql`, drivers and BI tools run SQL on a deployment (see `tern-sql`).
//!
//! Connect with user = the account, database = the database, password = a token of that
//! account (or the operator token): `psql "host=127.0.0.1 port=… user=acme dbname=sales"`.
//! The password is sent in cleartext (PostgreSQL's `password` method) inside the
//! connection: when the API has TLS (`[api.tls]`), this listener offers TLS with the same
//! certificate, key and client CA, and refuses connections that do not negotiate it
//! (`psql "… sslmode=verify-full sslrootcert=ca.pem"`); without `[api.tls]` it is plain
//! TCP — listen on a loopback or private address.
//!
//! The simple query protocol is served (what `psql -c` and interactive `psql` use for
//! statements); the extended protocol (prepared statements with parameters) is not.
//! Values are sent as text. Errors carry a SQLSTATE: `42601` syntax, `42P01` unknown
//! table, `25006` a write on a read-only replica, `0A000` unsupported, `XX000` others.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, header};
use futures::{Sink, StreamExt};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, METADATA_DATABASE, METADATA_USER, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tern_sql::datafusion::arrow::datatypes::DataType;
use tern_sql::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use tern_sql::{SqlError, SqlSession};
use tern_storage::layout::AccountId;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{account, database};
use crate::daemon::Daemon;

/// Checks a connection's password as a bearer token of its user (the account).
#[derive(Debug)]
struct TokenAuth {
    daemon: Arc<Daemon>,
}

fn bearer(token: &[u8]) -> Option<HeaderMap> {
    let token = std::str::from_utf8(token).ok()?;
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    Some(h)
}

// The trait's `LoginInfo` lifetime is late-bound: naming it `'_` here does not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl AuthSource for TokenAuth {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Tokens are stored as digests: there is no password to hand out.
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default();
        // Statements here are not classified: a read-only token cannot log in.
        let ok = bearer(presented).is_some_and(|h| {
            account(&self.daemon, &h, user).is_ok()
                && crate::tokens::check_sql(&self.daemon, &h, "-- any statement").is_ok()
        });
        if ok {
            Ok(None)
        } else {
            Err(PgWireError::InvalidPassword(user.to_owned()))
        }
    }
}

/// Runs a connection's statements.
struct Queries {
    daemon: Arc<Daemon>,
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// A replication statement's error, with the SQLSTATE of its kind.
fn admin_error(e: &crate::error::Error) -> PgWireError {
    use crate::error::Error;
    let code = match e {
        Error::Forbidden { .. } | Error::Unauthorized(_) => "42501",
        Error::NotFound { .. } => "42704",
        Error::Exists { .. } => "42P04",
        Error::Invalid(_) => "22023",
        _ => "XX000",
    };
    user_error(code, e.to_string())
}

fn sql_error(e: &SqlError) -> PgWireError {
    let code = if e.is_write_refusal() {
        "25006"
    } else {
        match e {
            SqlError::Parse(_) => "42601",
            SqlError::Unsupported(_) => "0A000",
            _ if matches!(
                e.table_error(),
                Some(tern_table::Error::UnknownTable { .. })
            ) =>
            {
                "42P01"
            }
            _ if e.is_bad_statement() => "42000",
            _ => "XX000",
        }
    };
    user_error(code, e.to_string())
}

/// The PostgreSQL type a column is described as (values are sent as text).
fn pg_type(t: &DataType) -> Type {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Boolean => Type::BOOL,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => Type::NUMERIC,
        _ => Type::VARCHAR,
    }
}

/// The command tag of a statement that returns no rows, from its first word.
fn tag_of(sql: &str, rows: Option<usize>) -> Tag {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(str::to_uppercase)
        .collect();
    let command = match words.first().map(String::as_str) {
        Some("INSERT") => "INSERT 0".to_string(),
        Some(w @ ("CREATE" | "DROP" | "ALTER")) => {
            format!("{w} {}", words.get(1).map_or("", String::as_str))
        }
        Some(w) => w.to_string(),
        None => "OK".to_string(),
    };
    let tag = Tag::new(command.trim());
    match rows {
        Some(n) => tag.with_rows(n),
        None => tag,
    }
}

impl Queries {
    async fn run(&self, user: &str, db: &str, sql: &str) -> PgWireResult<Response> {
        let d = &self.daemon;
        let account = AccountId::new(user).map_err(|e| user_error("28000", e.to_string()))?;
        let answer = match tern_sql::admin::parse(sql).map_err(|e| sql_error(&e))? {
            Some(stmt) => crate::sql_admin::run(d, None, &account, stmt)
                .await
                .map_err(|e| admin_error(&e))?,
            None => {
                let db =
                    database(d, &account, db).map_err(|e| user_error("3D000", e.to_string()))?;
                let session = SqlSession::new(Arc::clone(&d.tables), db.id.clone());
                session.run(sql).await.map_err(|e| sql_error(&e))?
            }
        };
        let fields: Vec<FieldInfo> = answer
            .schema
            .fields()
            .iter()
            .map(|f| {
                FieldInfo::new(
                    f.name().clone(),
                    None,
                    None,
                    pg_type(f.data_type()),
                    FieldFormat::Text,
                )
            })
            .collect();
        let names: Vec<String> = answer
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // DDL and DML answer a tag, not rows: they run here, to completion.
        if names == ["status"] || names == ["count"] {
            let batches = answer.collect().await.map_err(|e| sql_error(&e))?;
            let count = (names == ["count"]).then(|| {
                batches
                    .iter()
                    .filter_map(|b| {
                        b.column(0)
                            .as_any()
                            .downcast_ref::<tern_sql::datafusion::arrow::array::UInt64Array>()
                            .map(|a| a.iter().flatten().sum::<u64>())
                    })
                    .sum::<u64>() as usize
            });
            return Ok(Response::Execution(tag_of(sql, count)));
        }
        let fields = Arc::new(fields);
        let schema = Arc::clone(&fields);
        let rows = answer
            .stream
            .map(move |batch| {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => return vec![Err(sql_error(&SqlError::from(e)))],
                };
                let options = FormatOptions::default();
                let formatters: Result<Vec<_>, _> = batch
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                    .collect();
                let formatters = match formatters {
                    Ok(f) => f,
                    Err(e) => return vec![Err(user_error("XX000", e.to_string()))],
                };
                (0..batch.num_rows())
                    .map(|i| {
                        let mut encoder = DataRowEncoder::new(Arc::clone(&schema));
                        for (c, f) in batch.columns().iter().zip(&formatters) {
                            let value = (!c.is_null(i)).then(|| f.value(i).to_string());
                            encoder.encode_field(&value)?;
                        }
                        Ok(encoder.take_row())
                    })
                    .collect()
            })
            .flat_map(futures::stream::iter);
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let db = client
            .metadata()
            .get(METADATA_DATABASE)
            .cloned()
            .unwrap_or_else(|| user.clone());
        Ok(vec![self.run(&user, &db, query).await?])
    }
}

type PasswordStartup =
    CleartextPasswordAuthStartupHandler<TokenAuth, DefaultServerParameterProvider>;

/// The startup of a connection: with TLS configured, a connection that did not
/// negotiate it is refused before its password is asked (it would cross in cleartext),
/// as PostgreSQL's `hostssl`-only `pg_hba.conf` does (SQLSTATE 28000).
struct Startup {
    password: PasswordStartup,
    require_tls: bool,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.require_tls && !client.is_secure() {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_owned(),
                "28000".to_owned(),
                "this server accepts TLS connections only (its API has [api.tls]): connect with sslmode=require or verify-full".to_owned(),
            ))));
        }
        self.password.on_startup(client, message).await
    }
}

/// The handlers of every connection.
struct Handlers {
    startup: Arc<Startup>,
    queries: Arc<Queries>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }
}

/// Serve the PostgreSQL protocol on `listener` until the task is dropped. With `tls`
/// (the API's `[api.tls]`, see [`crate::tls::pg_acceptor`]) connections must negotiate
/// TLS; others are refused at startup.
pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let mut params = DefaultServerParameterProvider::default();
    params.server_version = "15.0 (Tern)".to_string();
    let handlers = Arc::new(Handlers {
        startup: Arc::new(Startup {
            password: CleartextPasswordAuthStartupHandler::new(
                TokenAuth {
                    daemon: Arc::clone(&daemon),
                },
                params,
            ),
            require_tls: tls.is_some(),
        }),
        queries: Arc::new(Queries { daemon }),
    });
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handlers, tls) = (Arc::clone(&handlers), tls.clone());
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error");
            }
        });
    }
}
