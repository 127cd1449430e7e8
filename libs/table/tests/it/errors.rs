//! Errors that are not the caller's fault are not reported as bad input: a damaged master
//! key reference and a committer that breaks its contract get their own variants (the API
//! maps `InvalidSchema` to "invalid input").

use std::sync::Arc;

use async_trait::async_trait;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_storage::Path;
use tern_storage::layout::{AccountId, DeploymentId, TableId};
use tern_table::commit::{Change, FileJournal};
use tern_table::{
    Committed, Committer, Error, LocalCommitter, ScanRequest, TableOptions, Tables, Transaction,
};

use crate::fixture::{Fixture, folder_volume, rows};

/// Tables over `f`'s stores with a fresh key cache, committing through `committer`.
fn reopen(f: &Fixture, committer: Arc<dyn Committer>) -> Tables {
    Tables::new(
        DeploymentId::new("d1").expect("id"),
        Arc::clone(&f.volume),
        f.tables.meta().clone(),
        Arc::new(
            LocalKeyProvider::open_or_create(&f.dir.path().join("keys"), SystemRandom::shared())
                .expect("keys"),
        ),
        f.clock.shared(),
        TableOptions::default(),
        committer,
    )
}

fn local(f: &Fixture) -> LocalCommitter {
    LocalCommitter::new(
        DeploymentId::new("d1").expect("id"),
        f.tables.meta().clone(),
        Arc::clone(&f.volume),
        f.clock.shared(),
    )
}

#[tokio::test]
async fn an_unreadable_master_key_reference_is_not_bad_input() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("orders").await;
    f.tables.insert(&t, &[rows(&[1])]).await.expect("insert");
    let mut dpo = f.tables.table(&t).expect("table");
    dpo.master_key_ref = "tmk:v1:not-hex".into();
    f.tables
        .meta()
        .write(|tx| tx.update_table(&dpo))
        .expect("damage the reference");
    let fresh = reopen(&f, Arc::new(local(&f)));
    let e = fresh
        .scan(&t, &ScanRequest::default())
        .await
        .expect_err("the key cannot be read");
    assert!(
        matches!(&e, Error::BadMasterKeyRef { table } if *table == t),
        "{e:?}"
    );
}

/// Commits through a local committer, then reports no records.
#[derive(Debug)]
struct Forgetful(LocalCommitter);

struct ForgetfulTxn(Box<dyn Transaction>);

#[async_trait]
impl Committer for Forgetful {
    async fn begin(&self, account: &AccountId) -> tern_table::Result<Box<dyn Transaction>> {
        Ok(Box::new(ForgetfulTxn(self.0.begin(account).await?)))
    }
}

#[async_trait]
impl FileJournal for ForgetfulTxn {
    async fn will_write(&mut self, path: &Path) -> tern_table::Result<()> {
        self.0.will_write(path).await
    }

    async fn new_mp(&mut self, table: &TableId, prefix: &Path) -> tern_table::Result<u64> {
        self.0.new_mp(table, prefix).await
    }
}

#[async_trait]
impl Transaction for ForgetfulTxn {
    async fn lock(&mut self, names: &[String]) -> tern_table::Result<()> {
        self.0.lock(names).await
    }
    async fn commit(self: Box<Self>, changes: Vec<Change>) -> tern_table::Result<Committed> {
        let done = self.0.commit(changes).await?;
        Ok(Committed {
            records: Vec::new(),
            ..done
        })
    }
    async fn abort(self: Box<Self>) {
        self.0.abort().await;
    }
}

#[tokio::test]
async fn a_committer_that_returns_no_version_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let f = Fixture::new(folder_volume(dir.path()), TableOptions::default());
    let t = f.create("orders").await;
    let broken = reopen(&f, Arc::new(Forgetful(local(&f))));
    let e = broken
        .insert(&t, &[rows(&[1])])
        .await
        .expect_err("no version reported");
    assert!(
        matches!(&e, Error::NoTableVersion { table } if *table == t),
        "{e:?}"
    );
}
