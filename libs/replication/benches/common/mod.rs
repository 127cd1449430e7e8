//! Shared by the replication crate's bench programs (`replication`, `monitoring`): the
//! environment knobs, the deployments' options, and the pair every bench starts from —
//! two in-process deployments on the folder store with every worker running as in the
//! daemon, linked, a global account on each and a table on d1. Each program uses a part.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use tern_messaging::MessagingConfig;
use tern_meta::ColumnDef;
use tern_replication::local::{LocalDeployment, LocalOptions, link};
use tern_replication::{ReplicationConfig, replica_table_id};
use tern_storage::layout::{AccountId, TableId};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `name` from the environment, or `default` when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Whether a refresh imports each file as it lands (`TERN_BENCH_IMPORT_AS_FILES_LAND`,
/// 1 by default; 0: the response comes after every file is copied, as before).
pub fn import_as_files_land() -> bool {
    env_usize("TERN_BENCH_IMPORT_AS_FILES_LAND", 1) != 0
}

/// Deployment options whose ship and message poll intervals are both `interval`.
pub fn options(interval: Duration) -> LocalOptions {
    LocalOptions {
        replication: ReplicationConfig {
            ship_interval: interval,
            import_as_files_land: import_as_files_land(),
            ..ReplicationConfig::default()
        },
        messaging: MessagingConfig {
            poll_interval: interval,
            ..MessagingConfig::default()
        },
        ..LocalOptions::default()
    }
}

/// Two linked, started deployments: account `a1` on d1 (global) with database `sales`,
/// schema `public` and `table`; account `a2` on d2 in the same account group.
pub struct Pair {
    pub d1: LocalDeployment,
    pub d2: LocalDeployment,
    pub a1: AccountId,
    pub a2: AccountId,
    pub table: TableId,
    /// The database group, once [`make_global`] ran.
    pub group: String,
}

/// The pair, under `root`, its intervals `interval`, d1's table `name` with `columns`.
pub async fn pair(
    root: &Path,
    interval: Duration,
    name: &str,
    columns: Vec<ColumnDef>,
) -> Result<Pair, BoxError> {
    let mut d1 = LocalDeployment::open(root, "d1", None, options(interval)).await?;
    let keys = root.join("d1").join("keys");
    let mut d2 = LocalDeployment::open(root, "d2", Some(&keys), options(interval)).await?;
    link(&d1, &d2).await?;
    d1.start(&[&d2]);
    d2.start(&[&d1]);
    let a1 = d1.create_account("a1")?;
    let db = d1.create_database(&a1, "sales")?;
    d1.tables.create_schema(&db, "public").await?;
    let account_group = d1.repl.set_account_global(&a1, None)?;
    let table = d1.tables.create_table(&db, "public", name, columns).await?;
    let a2 = d2.create_account("a2")?;
    d2.repl.set_account_global(&a2, Some(&account_group))?;
    Ok(Pair {
        d1,
        d2,
        a1,
        a2,
        table,
        group: String::new(),
    })
}

/// Makes the database global and waits until d2 knows the group.
pub async fn make_global(p: &mut Pair) -> Result<(), BoxError> {
    p.group = p.d1.repl.enable_replication(&p.a1, "sales")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p
        .d2
        .repl
        .known_entities()?
        .iter()
        .any(|e| e.group.as_deref() == Some(p.group.as_str()))
    {
        if Instant::now() > deadline {
            return Err("d2 never learned of the group".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits (polling every `poll`) until d2's replica of `table` is at d1's version.
pub async fn caught_up_table(
    p: &Pair,
    table: &TableId,
    limit: Duration,
    poll: Duration,
) -> Result<(), BoxError> {
    let rid = replica_table_id(&p.d1.id, table);
    let want = p.d1.version(table)?;
    let deadline = Instant::now() + limit;
    while p.d2.version(&rid)? != want {
        if Instant::now() > deadline {
            return Err(format!("replica did not reach version {want:?}").into());
        }
        tokio::time::sleep(poll).await;
    }
    Ok(())
}
