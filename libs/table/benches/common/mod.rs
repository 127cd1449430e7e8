//! The deployment the table benchmarks run on (shared by the bench programs).

use std::sync::Arc;

use tern_clock::ManualClock;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_meta::{AccountDpo, DatabaseDpo, MetaStore, SqliteOptions};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};
use tern_storage::{StoreConfig, open_store};
use tern_table::mp::WriteOptions;
use tern_table::{LocalCommitter, TableOptions, Tables};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A deployment on a folder volume under `dir`, with a SQLite metadata store and local
/// keys (as the integration tests' fixture), one account `acme` and one database `db1`,
/// writing files with `write`.
pub fn deployment(dir: &std::path::Path, write: WriteOptions) -> Result<Tables, BoxError> {
    std::fs::create_dir_all(dir)?;
    let volume = open_store(&StoreConfig {
        url: format!("file://{}", dir.join("volume").display()),
        ..Default::default()
    })?;
    let meta = MetaStore::open_sqlite(dir.join("meta.db"), SqliteOptions::default())?;
    let keys = LocalKeyProvider::open_or_create(&dir.join("keys"), SystemRandom::shared())?;
    let account = AccountId::new("acme")?;
    let db = DatabaseId::new("db1")?;
    meta.write(|tx| {
        tx.create_account(&AccountDpo::local(account.clone(), 0))?;
        tx.create_database(&DatabaseDpo::local(db.clone(), account.clone(), "bench", 0))
    })?;
    let options = TableOptions {
        write,
        ..Default::default()
    };
    let clock = ManualClock::new(1_700_000_000_000);
    let d1 = DeploymentId::new("d1")?;
    let committer = LocalCommitter::new(
        d1.clone(),
        meta.clone(),
        Arc::clone(&volume),
        clock.shared(),
    );
    Ok(Tables::new(
        d1,
        volume,
        meta,
        Arc::new(keys),
        clock.shared(),
        options,
        Arc::new(committer),
    ))
}
