//! The key chain across replication: a replica's tables are keyed under the replica
//! account's own master key on the target deployment, and rotating either side's account
//! key does not disturb replication.

use tern_crypto::get_decrypted;
use tern_replication::replica_table_id;
use tern_storage::Path;
use tern_table::account_key::{TmkRef, versions_in};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_tables_are_keyed_under_the_replica_accounts_key() {
    let p = pair(repl_config()).await;
    p.d1.tables
        .insert(&p.t, &[batch(0..50, "a")])
        .await
        .unwrap();
    replicate(&p.d1, &p.a1, &p.d2, &p.account_group).await;
    caught_up(&p.d1, &p.d2, std::slice::from_ref(&p.t)).await;
    same_rows(&p.d1, &p.d2, std::slice::from_ref(&p.t)).await;

    let rid = replica_table_id(&p.d1.id, &p.t);
    let a2 = tern_storage::layout::AccountId::new("a2").unwrap();
    let replica = |n: &Node| {
        n.meta
            .read(|tx| tx.get_table(&rid))
            .unwrap()
            .expect("replica table")
    };
    let dpo = replica(&p.d2);
    let amks = p.d2.meta.read(|tx| versions_in(tx, &a2)).unwrap();
    assert_eq!(amks.len(), 1, "a2 has its own key on d2: {amks:?}");
    assert!(
        matches!(
            TmkRef::parse(&dpo.master_key_ref),
            Some(TmkRef::Account { version: 1, .. })
        ),
        "{}",
        dpo.master_key_ref
    );
    // The source's key ids never appear on the target: its files were re-encrypted under
    // the replica's TMK, which opens through a2's key chain on d2 alone.
    let src = p.d1.tables.file_keys(&p.t).await.unwrap();
    let dst = p.d2.tables.file_keys_uncached(&dpo).await.unwrap();
    assert_ne!(src.master_id(), dst.master_id());
    let table_files = |all: Vec<String>| -> Vec<String> {
        all.into_iter()
            .filter(|f| f.contains(&format!("/tbl/{rid}/")))
            .collect()
    };
    let files = table_files(objects(&p.d2.volume, "acct/a2").await);
    assert!(files.iter().any(|f| f.ends_with(".mp")), "{files:?}");
    for f in &files {
        get_decrypted(&p.d2.volume, &Path::from(f.as_str()), &dst)
            .await
            .unwrap_or_else(|e| panic!("{f}: {e}"));
    }

    // Rotating the replica account's key (target) and the primary account's key (source)
    // re-wraps table keys only: replication goes on, and the new files open too.
    let r = p.d2.tables.rotate_account_key(&a2).await.unwrap();
    assert_eq!((r.version, r.retired), (2, vec![1]));
    let r = p.d1.tables.rotate_account_key(&p.a1).await.unwrap();
    assert_eq!(r.version, 2);
    p.d1.tables
        .insert(&p.t, &[batch(50..80, "b")])
        .await
        .unwrap();
    caught_up(&p.d1, &p.d2, std::slice::from_ref(&p.t)).await;
    same_rows(&p.d1, &p.d2, std::slice::from_ref(&p.t)).await;
    let dpo = replica(&p.d2);
    assert!(matches!(
        TmkRef::parse(&dpo.master_key_ref),
        Some(TmkRef::Account { version: 2, .. })
    ));
    let dst = p.d2.tables.file_keys_uncached(&dpo).await.unwrap();
    let now = table_files(objects(&p.d2.volume, "acct/a2").await);
    assert!(now.len() > files.len(), "{now:?}");
    for f in now {
        get_decrypted(&p.d2.volume, &Path::from(f.as_str()), &dst)
            .await
            .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}
