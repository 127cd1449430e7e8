//! The replication statements of SQL (see `tern_sql::admin`), run on the same
//! operations as the JSON API's handlers: each row set answers what the API's JSON does.
//!
//! The caller is checked as the API does: `account` was authenticated (its token or the
//! operator's); operator-only statements need the operator token, which a `POST /v1/sql`
//! request shows in its headers (a PostgreSQL connection, signed in as an account, runs
//! only the account's statements).

use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::Value;
use tern_replication::model::EntityKind;
use tern_sql::Answer;
use tern_sql::admin::{Admin, ReplicaSource};
use tern_sql::datafusion::arrow::array::{ArrayRef, StringArray};
use tern_sql::datafusion::arrow::datatypes::{DataType, Field, Schema};
use tern_sql::datafusion::arrow::record_batch::RecordBatch;
use tern_sql::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use tern_storage::layout::{AccountId, DeploymentId};

use crate::api::{database, new_database_name, operator};
use crate::daemon::Daemon;
use crate::error::{Error, Result};

/// Runs `stmt` for `account`; `headers` are the HTTP request's (`None` on a PostgreSQL
/// connection, which cannot show the operator token).
pub(crate) async fn run(
    d: &Arc<Daemon>,
    headers: Option<&HeaderMap>,
    account: &AccountId,
    stmt: Admin,
) -> Result<Answer> {
    if stmt.operator_only() {
        match headers {
            Some(h) => operator(d, h)?,
            None => {
                return Err(Error::Forbidden {
                    account: format!(
                        "(operator only: run it through POST /v1/sql or `tern sql` with the operator token; signed in as {account})"
                    ),
                });
            }
        }
    }
    let (columns, rows): (&[&str], Vec<Value>) = match stmt {
        Admin::CreateDeployment {
            id,
            region,
            cloud,
            url,
            genesis,
        } => {
            let genesis = genesis
                .map(|g| {
                    serde_json::from_str::<tern_messaging::ChannelGenesis>(&g)
                        .map_err(|e| Error::Invalid(format!("GENESIS: not a channel genesis: {e}")))
                })
                .transpose()?;
            let dpo = tern_meta::DeploymentDpo {
                id: DeploymentId::new(id.as_str())?,
                region,
                cloud,
                replication_bucket_url: url,
                credentials_ref: None,
                added_at_ms: 0,
            };
            let genesis = d.create_deployment(dpo, genesis).await?.genesis;
            let genesis = serde_json::to_string(&genesis)
                .map_err(|e| Error::internal("encode genesis")(e.to_string()))?;
            (
                &["deployment", "genesis"],
                vec![serde_json::json!({"deployment": id, "genesis": genesis})],
            )
        }
        Admin::ShowDeployments => {
            let members = d.meta.read(|tx| tx.list_deployments())?;
            let rows = members
                .into_iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id.as_str(),
                        "region": m.region,
                        "cloud": m.cloud,
                        "replication_bucket_url": m.replication_bucket_url,
                        "self": m.id == d.id,
                    })
                })
                .collect();
            (
                &["id", "region", "cloud", "replication_bucket_url", "self"],
                rows,
            )
        }
        Admin::SetGlobal {
            account: named,
            group,
        } => {
            let id = AccountId::new(&named)?;
            if d.meta.read(|tx| tx.get_account(&id))?.is_none() {
                return Err(Error::NotFound {
                    what: "account",
                    name: named,
                });
            }
            let group = d.replication.set_account_global(&id, group.as_deref())?;
            (
                &["account", "group"],
                vec![serde_json::json!({"account": id.as_str(), "group": group})],
            )
        }
        Admin::ShowGlobalAccounts => (GLOBAL, to_rows(d.replication.global_accounts(account)?)?),
        Admin::ShowGlobalDatabases => (GLOBAL, to_rows(d.replication.global_databases(account)?)?),
        Admin::EnableReplication {
            database: name,
            accounts,
        } => {
            let db = database(d, account, &name)?;
            let group =
                d.replication
                    .enable_replication_to(account, &db.name, accounts.as_deref())?;
            (
                &["database", "group", "allowed_accounts"],
                vec![serde_json::json!({
                    "database": db.name,
                    "group": group,
                    "allowed_accounts": accounts.map(|a| a.join(", ")),
                })],
            )
        }
        Admin::DisableReplication { database: name } => {
            let db = database(d, account, &name)?;
            d.replication.disable_replication(account, &db.name)?;
            (
                &["status"],
                vec![serde_json::json!({"status": format!("replication of {} disabled", db.name)})],
            )
        }
        Admin::CreateReplica {
            name,
            source,
            upstream,
        } => {
            new_database_name(d, account, &name).map_err(|e| e.0)?;
            let group = match source {
                ReplicaSource::Group(g) => g,
                ReplicaSource::Database {
                    deployment,
                    account: acct,
                    database: db,
                } => d
                    .replication
                    .known_entities()?
                    .into_iter()
                    .find(|e| {
                        e.kind == EntityKind::Database
                            && e.deployment.as_str() == deployment
                            && e.account.as_str() == acct
                            && e.name.as_deref() == Some(db.as_str())
                    })
                    .and_then(|e| e.group)
                    .ok_or_else(|| Error::NotFound {
                        what: "global database (not announced here yet, or not replicated)",
                        name: format!("{deployment}.{acct}.{db}"),
                    })?,
            };
            let upstream = upstream.map(DeploymentId::new).transpose()?;
            let db = d
                .replication
                .create_replica(account, &name, &group, upstream.as_ref())?;
            (
                &["database", "name", "group", "upstream"],
                vec![serde_json::json!({
                    "database": db.as_str(),
                    "name": name,
                    "group": group,
                    "upstream": upstream.as_ref().map(DeploymentId::as_str),
                })],
            )
        }
        Admin::Refresh { database: name } => {
            let db = database(d, account, &name)?;
            let request = d
                .replication
                .request_refresh(&db.id, "requested through SQL")?;
            (
                &["database", "request"],
                vec![serde_json::json!({"database": db.name, "request": request})],
            )
        }
        Admin::Primary {
            database: name,
            allow_data_loss,
        } => {
            let db = database(d, account, &name)?;
            let report = d
                .replication
                .failover(
                    account,
                    &db.name,
                    tern_replication::FailoverOptions { allow_data_loss },
                )
                .await?;
            let v = serde_json::to_value(&report)
                .map_err(|e| Error::internal("encode failover report")(e.to_string()))?;
            return object_answer(&v);
        }
        Admin::ShowReplicationStatus => {
            let status = d.replication.status().await?;
            let v = serde_json::to_value(&status)
                .map_err(|e| Error::internal("encode replication status")(e.to_string()))?;
            // One row per item of each section; scalar sections as one row.
            let mut rows = Vec::new();
            if let Value::Object(map) = v {
                for (section, value) in map {
                    match value {
                        Value::Array(items) => {
                            for item in items {
                                rows.push(serde_json::json!({"section": section, "item": item}));
                            }
                        }
                        other => rows.push(serde_json::json!({"section": section, "item": other})),
                    }
                }
            }
            (&["section", "item"], rows)
        }
    };
    answer(columns, &rows)
}

const GLOBAL: &[&str] = &[
    "region",
    "deployment",
    "account",
    "name",
    "replication_group",
    "role",
    "upstream",
];

fn to_rows<T: serde::Serialize>(items: Vec<T>) -> Result<Vec<Value>> {
    items
        .iter()
        .map(|r| serde_json::to_value(r).map_err(|e| Error::internal("encode rows")(e.to_string())))
        .collect()
}

/// One row of an object's fields (nested values as JSON text).
fn object_answer(v: &Value) -> Result<Answer> {
    let Value::Object(map) = v else {
        return answer(&["result"], &[serde_json::json!({"result": v})]);
    };
    let columns: Vec<&str> = map.keys().map(String::as_str).collect();
    answer(&columns, std::slice::from_ref(v))
}

/// Rows of text columns: a field's string as is, null as NULL, anything else as JSON.
fn answer(columns: &[&str], rows: &[Value]) -> Result<Answer> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|c| {
            let values: Vec<Option<String>> = rows
                .iter()
                .map(|r| match r.get(*c) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                })
                .collect();
            Arc::new(StringArray::from(values)) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)
        .map_err(|e| Error::internal("encode rows")(e.to_string()))?;
    let stream = futures::stream::iter([Ok(batch)]);
    Ok(Answer {
        schema: Arc::clone(&schema),
        stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
    })
}
