//! Accounts and what hangs off them: databases, schemas, transactions, global accounts,
//! account keys and customer-managed keys.

use super::*;

pub(super) async fn create_account(
    State(d): St,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<api::AccountCreated>)> {
    operator(&d, &headers)?;
    let req: api::Named = body.json()?;
    let id = AccountId::new(req.name.as_str())?;
    let dpo = AccountDpo::local(id.clone(), d.now_ms());
    d.meta
        .write(|tx| tx.create_account(&dpo))
        .map_err(|e| match e {
            tern_meta::Error::AlreadyExists { .. } => Error::Exists {
                what: "account",
                name: req.name.clone(),
            },
            other => other.into(),
        })?;
    // The account's master key is made with it (DESIGN.md §4): its tables' keys go under it.
    d.tables.account_keys().create(&id).await?;
    let (token, _) = crate::tokens::issue(&d, &id, &crate::tokens::NewToken::default())?;
    tracing::info!(account = %id, "account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(api::AccountCreated {
            account: id.as_str().to_string(),
            token,
        }),
    ))
}

pub(super) async fn list_accounts(
    State(d): St,
    headers: HeaderMap,
) -> ApiResult<axum::Json<api::AccountList>> {
    let p = principal(&d, &headers)?;
    let all = d.meta.read(|tx| tx.list_accounts())?;
    let accounts: Vec<String> = all
        .iter()
        .map(|a| a.name.as_str())
        .filter(|n| match &p {
            Principal::Operator => true,
            Principal::Account(a) => a == n,
        })
        .map(str::to_string)
        .collect();
    Ok(axum::Json(api::AccountList { accounts }))
}

/// A name a new database of `account` may take: not empty, not taken by a live database.
pub(crate) fn new_database_name(d: &Daemon, account: &AccountId, name: &str) -> ApiResult<()> {
    // The rule of every user-given name (the error states it).
    tern_storage::layout::check_identifier("database name", name).map_err(Error::Name)?;
    if d.meta.read(|tx| tx.find_database(account, name))?.is_some() {
        return Err(Error::Exists {
            what: "database",
            name: format!("{account}.{name}"),
        }
        .into());
    }
    Ok(())
}

pub(super) async fn create_database(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<api::DatabaseCreated>)> {
    let account = account(&d, &headers, &acct)?;
    let req: api::Named = body.json()?;
    new_database_name(&d, &account, &req.name)?;
    let now = d.now_ms();
    let db = d.meta.write(|tx| {
        let n = tx.next_sequence("database")?;
        let id = DatabaseId::new(format!("db{n}")).map_err(|e| tern_meta::Error::Invalid {
            what: "database id",
            reason: e.to_string(),
        })?;
        let dpo = DatabaseDpo::local(id, account.clone(), req.name.clone(), now);
        tx.create_database(&dpo)?;
        Ok(dpo)
    })?;
    // Every database starts with schema "public".
    d.tables.create_schema(&db.id, "public").await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(api::DatabaseCreated {
            database: db.name,
            id: db.id.as_str().to_string(),
        }),
    ))
}

/// What became of a transaction of the account: `committed`, or `in_doubt` (prepared:
/// recovery will commit it) with its state; 404 for an id this deployment never issued to
/// the account. A statement answered "in doubt" names the id to ask about.
pub(super) async fn txn_status(
    State(d): St,
    headers: HeaderMap,
    Path((acct, txn)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::TxnStatus>> {
    let account = account(&d, &headers, &acct)?;
    let txn_id: u64 = txn.parse().map_err(|_| {
        Error::Invalid(format!(
            "transaction id {txn:?} is not a number (the txn_id a commit answered)"
        ))
    })?;
    let answer = match d.txn.status(&account, txn_id).await.map_err(Error::from)? {
        None => {
            return Err(Error::NotFound {
                what: "transaction",
                name: format!("{acct}/{txn_id}"),
            }
            .into());
        }
        Some(tern_txn::TxnOutcome::Committed) => api::TxnStatus {
            txn_id,
            status: "committed".into(),
            log_record: None,
            detail: None,
            state: None,
        },
        // Still "committed" for clients that only read the status; said plainly beside it.
        Some(tern_txn::TxnOutcome::CommittedPruned) => api::TxnStatus {
            txn_id,
            status: "committed".into(),
            log_record: Some("pruned".into()),
            detail: Some("committed (log record pruned)".into()),
            state: None,
        },
        Some(tern_txn::TxnOutcome::InDoubt { state }) => api::TxnStatus {
            txn_id,
            status: "in_doubt".into(),
            log_record: None,
            detail: None,
            state: Some(crate::daemon::state_name(state).to_string()),
        },
    };
    Ok(axum::Json(answer))
}

pub(super) async fn list_databases(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::DatabaseList>> {
    let account = account(&d, &headers, &acct)?;
    let dbs = d.meta.read(|tx| tx.list_databases(&account))?;
    let databases = dbs
        .into_iter()
        .filter(|db| !db.dropped)
        .map(|db| api::DatabaseInfo {
            id: db.id.as_str().to_string(),
            role: enum_name(&db.role),
            name: db.name,
        })
        .collect();
    Ok(axum::Json(api::DatabaseList { databases }))
}

pub(super) async fn create_schema(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<api::SchemaCreated>)> {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let req: api::Named = body.json()?;
    // Checked by the table layer too (SQL goes there directly); here the error is named.
    tern_storage::layout::check_identifier("schema name", &req.name).map_err(Error::Name)?;
    d.tables.create_schema(&db.id, &req.name).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(api::SchemaCreated { schema: req.name }),
    ))
}

pub(super) async fn list_schemas(
    State(d): St,
    headers: HeaderMap,
    Path((acct, dbname)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::SchemaList>> {
    let account = account(&d, &headers, &acct)?;
    let db = database(&d, &account, &dbname)?;
    let s = d.meta.read(|tx| tx.list_schemas(&db.id))?;
    let schemas = s.into_iter().map(|s| s.name).collect();
    Ok(axum::Json(api::SchemaList { schemas }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SetGlobal {
    #[serde(default)]
    group: Option<String>,
}

/// `alter account … set global`: the account joins an account replication group (a new
/// one when none is named). Operator only.
pub(super) async fn set_global(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: Body,
) -> ApiResult<axum::Json<api::AccountGlobal>> {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let req: SetGlobal = body.json_or_default()?;
    let group = d
        .replication
        .set_account_global(&id, req.group.as_deref())?;
    tracing::info!(account = %id, %group, "account is global");
    Ok(axum::Json(api::AccountGlobal {
        account: id.as_str().to_string(),
        group,
    }))
}

pub(super) async fn global_accounts(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::GlobalAccounts>> {
    let id = account(&d, &headers, &acct)?;
    let rows = d.replication.global_accounts(&id)?;
    Ok(axum::Json(api::GlobalAccounts {
        accounts: rows.into_iter().map(global_row).collect(),
    }))
}

/// A row of `show global accounts|databases` as the API answers it.
fn global_row(r: tern_replication::GlobalRow) -> api::GlobalRow {
    api::GlobalRow {
        region: r.region,
        deployment: r.deployment.as_str().to_string(),
        account: r.account.as_str().to_string(),
        replication_group: r.replication_group,
        name: r.name,
        role: r.role.as_ref().map(enum_name),
        upstream: r.upstream.map(|u| u.as_str().to_string()),
    }
}

pub(super) async fn global_databases(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::GlobalDatabases>> {
    let id = account(&d, &headers, &acct)?;
    let rows = d.replication.global_databases(&id)?;
    Ok(axum::Json(api::GlobalDatabases {
        databases: rows.into_iter().map(global_row).collect(),
    }))
}

/// Registers the account's customer-managed key: `{kind: "x25519", file, create?}` (a key
/// file on this deployment's host; `create` makes a new key pair when it is missing) or
/// `{kind: "kms_rsa", key_id}` (an RSA key of this deployment's KMS). Operator only.
pub(super) async fn register_customer_key(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
    body: Body,
) -> ApiResult<axum::Json<api::CustomerKeyRegistered>> {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let bytes = body.bytes()?;
    let mut req: serde_json::Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("bad JSON body: {e}")))?;
    let create = match req.remove("create") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(
                Error::Invalid(format!("`create` must be true or false, not {other}")).into(),
            );
        }
    };
    let spec: tern_crypto::CustomerKeySpec = serde_json::from_value(Value::Object(req))
        .map_err(|e| {
            Error::Invalid(format!(
                "bad customer key: {e} (expected {{\"kind\": \"x25519\", \"file\": …}} or {{\"kind\": \"kms_rsa\", \"key_id\": …}})"
            ))
        })?;
    // A key file the daemon makes is written only inside the keys folder.
    let spec = match spec {
        tern_crypto::CustomerKeySpec::X25519 { file } if create => {
            let crate::config::KeysConfig::Local { dir, .. } = &d.config.keys else {
                return Err(Error::Invalid(
                    "create: the daemon makes key files only in a local keys folder ([keys] kind = \"local\"); make the file yourself and register it without create".into(),
                )
                .into());
            };
            tern_crypto::CustomerKeySpec::X25519 {
                file: crate::input::confine(dir, &file)?,
            }
        }
        other => other,
    };
    let key_id = d
        .replication
        .register_customer_key(&id, &spec, create)
        .await?;
    Ok(axum::Json(api::CustomerKeyRegistered {
        account: id.as_str().to_string(),
        key_id,
        spec: wire("customer key", &spec)?,
    }))
}

pub(super) async fn customer_key(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::CustomerKeyView>> {
    let id = account(&d, &headers, &acct)?;
    let status = d.replication.customer_key_status(&id)?;
    Ok(axum::Json(api::CustomerKeyView {
        customer_key: status
            .map(|s| wire("customer key status", &s))
            .transpose()?,
    }))
}

/// `drop account A` (operator): its local databases are dropped, every version of its
/// master key and its log key are destroyed, its tokens revoked, and the account removed,
/// in one metadata transaction. Files it left in the volume can no longer be decrypted
/// (crypto-shredding). Refused while one of its databases replicates.
pub(super) async fn drop_account(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::AccountDropped>> {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let owner = id.clone();
    let destroyed = d
        .tables
        .drop_account(&id, &|tx| {
            tern_txn::TxnManager::destroy_log_key_in(tx, &owner)?;
            for (k, t) in tx.scan_prefix::<TokenDpo>(&tern_meta::Key::root("tok"))? {
                if t.account == owner.as_str() {
                    tx.delete(&k)?;
                }
            }
            Ok(())
        })
        .await?;
    d.txn.forget_log_key(&id);
    Ok(axum::Json(api::AccountDropped {
        account: id.as_str().to_string(),
        dropped: true,
        key_versions_destroyed: destroyed as u64,
    }))
}

pub(super) fn key_versions(d: &Daemon, id: &AccountId) -> Result<Vec<api::KeyVersion>> {
    let versions = d
        .meta
        .read(|tx| tern_table::account_key::versions_in(tx, id))?;
    Ok(versions
        .iter()
        .map(|v| api::KeyVersion {
            version: v.version,
            state: if v.wrapped.is_some() {
                "active"
            } else {
                "retired"
            }
            .to_string(),
            created_at_ms: v.created_at_ms,
            retired_at_ms: v.retired_at_ms,
        })
        .collect())
}

/// The versions of an account's master key (never key material).
pub(super) async fn account_keys(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::KeyList>> {
    let id = account(&d, &headers, &acct)?;
    Ok(axum::Json(api::KeyList {
        keys: key_versions(&d, &id)?,
        account: id.as_str().to_string(),
    }))
}

/// Rotates an account's master key (operator): a new version wraps every table key, the
/// older versions are retired; no data file is rewritten.
pub(super) async fn rotate_account_key(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::KeyRotated>> {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let r = d.tables.rotate_account_key(&id).await?;
    Ok(axum::Json(api::KeyRotated {
        account: id.as_str().to_string(),
        version: r.version,
        retired: r.retired,
        tables_rewrapped: r.tables as u64,
        keys: key_versions(&d, &id)?,
    }))
}

pub(super) async fn remove_customer_key(
    State(d): St,
    headers: HeaderMap,
    Path(acct): Path<String>,
) -> ApiResult<axum::Json<api::CustomerKeyRemoved>> {
    operator(&d, &headers)?;
    let id = account(&d, &headers, &acct)?;
    let removed = d.replication.remove_customer_key(&id)?;
    Ok(axum::Json(api::CustomerKeyRemoved {
        account: id.as_str().to_string(),
        removed,
    }))
}
