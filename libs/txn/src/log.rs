//! Transaction log records: one encrypted file per committed transaction,
//! `acct/<account>/txlog/<txn-id:020>.log` in the deployment's volume.
//!
//! A record holds everything needed to reproduce the transaction on another deployment:
//! per change the database and table, the base and new versions, the metadata file, the
//! micro-partitions added (statistics and global references) and removed (global
//! references), DDL; and the origin deployment, transaction id and commit time.
//!
//! Format: JSON `{"format":"tern-txlog","v":1,…}`, sealed in the common encrypted file
//! format with a key derived from the account's log key and the record's path. A record is
//! written with `PutMode::Create`; writing it again (recovery, or a retry after an
//! inconclusive write) finds it and succeeds if it holds the same record, so the write is
//! idempotent and a record, once stored, never changes.
//!
//! "The same record" means the same canonical encoding ([`LogRecord::to_bytes`] of the
//! stored record and of the one being written), never derived `==`: a float statistic
//! holding NaN is not `==` to itself, and comparing with `==` would make a retried or
//! recovered commit of a table holding NaN fail forever. The encoding keeps every float
//! bit for bit (NaN payloads included, see `tern_meta`'s float encoding), so equal bytes
//! mean the same record.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::{ObjectStore, PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use tern_crypto::{EncryptOptions, KeySource};
use tern_storage::layout::{self, AccountId, DatabaseId, DeploymentId};
use tern_storage::{Path, StoreExt};
use tern_table::{ChangeRecord, Stamp};

use crate::error::{Error, Result};

/// The format tag of log records.
pub const FORMAT: &str = "tern-txlog";
/// The current format version.
pub const VERSION: u32 = 1;

/// One committed transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// The transaction id (the account's Lamport clock).
    pub txn_id: u64,
    /// The deployment where it was committed.
    pub origin: DeploymentId,
    /// The account.
    pub account: AccountId,
    /// Commit time (milliseconds since the epoch), also stamped on its table versions.
    pub committed_at_ms: i64,
    /// The changes, in the order the transaction made them.
    pub changes: Vec<ChangeRecord>,
    /// Per database changed: the role epoch it was changed under and the transaction's
    /// number among the database's transactions (a replicated change keeps its
    /// upstream's). Records written before epochs existed have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stamps: BTreeMap<DatabaseId, Stamp>,
}

impl LogRecord {
    /// A record of the current format.
    pub fn new(
        txn_id: u64,
        origin: DeploymentId,
        account: AccountId,
        committed_at_ms: i64,
        changes: Vec<ChangeRecord>,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            v: VERSION,
            txn_id,
            origin,
            account,
            committed_at_ms,
            changes,
            stamps: BTreeMap::new(),
        }
    }

    /// The stamp of `database`'s changes, when the record has one.
    pub fn stamp(&self, database: &DatabaseId) -> Option<Stamp> {
        self.stamps.get(database).copied()
    }

    /// Where it is stored.
    pub fn path(&self) -> Path {
        layout::volume::txlog(&self.account, self.txn_id)
    }

    /// Serialize (plaintext; the caller encrypts). The encoding is canonical: two records
    /// are the same record exactly when their bytes are equal.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::EncodeLogRecord {
            txn_id: self.txn_id,
            source,
        })
    }

    /// The bytes [`LogRecord::to_bytes`] gives for a record of these parts, its changes
    /// borrowed: a commit encodes its record once, from the changes it planned, without
    /// first copying every file they list into a record of its own.
    pub fn encode_parts(
        txn_id: u64,
        origin: &DeploymentId,
        account: &AccountId,
        committed_at_ms: i64,
        changes: &[ChangeRecord],
        stamps: &BTreeMap<DatabaseId, Stamp>,
    ) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::new();
        Self::encode_parts_to(
            &mut out,
            txn_id,
            origin,
            account,
            committed_at_ms,
            changes,
            stamps,
        )?;
        Ok(out)
    }

    /// [`LogRecord::encode_parts`] into `out` (a compressor, say), never held whole.
    pub fn encode_parts_to<W: std::io::Write>(
        out: W,
        txn_id: u64,
        origin: &DeploymentId,
        account: &AccountId,
        committed_at_ms: i64,
        changes: &[ChangeRecord],
        stamps: &BTreeMap<DatabaseId, Stamp>,
    ) -> serde_json::Result<()> {
        /// [`LogRecord`]'s fields, in its order, borrowed.
        #[derive(Serialize)]
        struct Parts<'a> {
            format: &'a str,
            v: u32,
            txn_id: u64,
            origin: &'a DeploymentId,
            account: &'a AccountId,
            committed_at_ms: i64,
            changes: &'a [ChangeRecord],
            #[serde(skip_serializing_if = "no_stamps")]
            stamps: &'a BTreeMap<DatabaseId, Stamp>,
        }
        fn no_stamps(s: &&BTreeMap<DatabaseId, Stamp>) -> bool {
            s.is_empty()
        }
        serde_json::to_writer(
            out,
            &Parts {
                format: FORMAT,
                v: VERSION,
                txn_id,
                origin,
                account,
                committed_at_ms,
                changes,
                stamps,
            },
        )
    }

    /// Parse, checking the format tag and version. `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self> {
        tern_meta::decode_versioned(bytes, Some(FORMAT), "log record", VERSION).map_err(|reason| {
            Error::BadLogRecord {
                path: path.to_string(),
                reason,
            }
        })
    }
}

/// Store `record` once: create it, or accept an identical record already there. The
/// record is encoded straight into its encryption and stored from the sealed chunks: a
/// record of 100 000 files is never held as one JSON string nor as one sealed buffer.
pub(crate) async fn write(
    volume: &Arc<dyn ObjectStore>,
    keys: &dyn KeySource,
    record: &LogRecord,
) -> Result<()> {
    let path = record.path();
    let mut sealing =
        tern_crypto::stream::sealing_writer(path.as_ref(), keys, &EncryptOptions::default())
            .await?;
    serde_json::to_writer(&mut sealing, record).map_err(|source| Error::EncodeLogRecord {
        txn_id: record.txn_id,
        source,
    })?;
    let sealed = object_store::PutPayload::from_iter(sealing.finish()?);
    let put = volume
        .put_opts(&path, sealed, PutOptions::from(PutMode::Create))
        .await;
    match put {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let stored = read(volume, keys, &path).await?;
            if stored.to_bytes()? == record.to_bytes()? {
                Ok(())
            } else {
                Err(Error::LogRecordMismatch {
                    path: path.to_string(),
                    txn_id: record.txn_id,
                })
            }
        }
        Err(source) => {
            Err(tern_storage::Error::from_store(tern_storage::Operation::Put, &path, source).into())
        }
    }
}

/// Read and verify the record at `path`.
pub(crate) async fn read(
    volume: &Arc<dyn ObjectStore>,
    keys: &dyn KeySource,
    path: &Path,
) -> Result<LogRecord> {
    let plain = tern_crypto::get_decrypted(volume, path, keys).await?;
    LogRecord::from_bytes(&plain, path.as_ref())
}

/// The transaction ids of `account`'s stored records from `from_id` on, ascending.
pub(crate) async fn list(
    volume: &Arc<dyn ObjectStore>,
    account: &AccountId,
    from_id: u64,
) -> Result<Vec<u64>> {
    let prefix = layout::volume::txlog_prefix(account);
    // Record names are zero-padded ids: the listing starts after the one before
    // `from_id` (a shipper's cursor), not at the beginning of the log.
    let listed = match from_id.checked_sub(1) {
        Some(before) => {
            volume
                .list_sorted_after(&prefix, &layout::volume::txlog(account, before))
                .await?
        }
        None => volume.list_sorted(&prefix).await?,
    };
    let mut ids: Vec<u64> = listed
        .iter()
        .filter_map(|m| m.location.filename().and_then(layout::volume::parse_txlog))
        .filter(|id| *id >= from_id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Up to `limit` ids of `account`'s stored records in `(after, up_to]`, and whether the
/// listing was read to its end (then there are no others in that range). The listing is
/// streamed from `after` and stops as soon as `limit` are found: it is never held whole.
/// The ids come in the store's listing order (not necessarily ascending).
pub(crate) async fn list_range(
    volume: &Arc<dyn ObjectStore>,
    account: &AccountId,
    after: u64,
    up_to: u64,
    limit: usize,
) -> Result<(Vec<u64>, bool)> {
    use futures::TryStreamExt as _;
    let prefix = layout::volume::txlog_prefix(account);
    let mut listed = if after == 0 {
        volume.list(Some(&prefix))
    } else {
        volume.list_with_offset(Some(&prefix), &layout::volume::txlog(account, after))
    };
    let mut ids = Vec::new();
    while let Some(m) = listed.try_next().await.map_err(|source| {
        tern_storage::Error::from_store(tern_storage::Operation::List, &prefix, source)
    })? {
        let Some(id) = m.location.filename().and_then(layout::volume::parse_txlog) else {
            continue;
        };
        if id > after && id <= up_to {
            ids.push(id);
            if ids.len() >= limit {
                return Ok((ids, false));
            }
        }
    }
    Ok((ids, true))
}

/// Delete the record of `txn_id` (absent already is fine).
pub(crate) async fn delete(
    volume: &Arc<dyn ObjectStore>,
    account: &AccountId,
    txn_id: u64,
) -> Result<()> {
    volume
        .delete_idempotent(&layout::volume::txlog(account, txn_id))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listing_from_an_id_starts_there_and_keeps_it() {
        use object_store::ObjectStoreExt as _;
        let volume: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let a = AccountId::new("acme").unwrap();
        for id in [1, 2, 7, 9, 10, 100, 1_000] {
            volume
                .put(&layout::volume::txlog(&a, id), b"x".to_vec().into())
                .await
                .unwrap();
        }
        // Another account's log and a stray object are not records of this one.
        volume
            .put(
                &layout::volume::txlog(&AccountId::new("other").unwrap(), 8),
                b"x".to_vec().into(),
            )
            .await
            .unwrap();
        volume
            .put(
                &layout::volume::txlog_prefix(&a).join("notes.txt"),
                b"x".to_vec().into(),
            )
            .await
            .unwrap();
        assert_eq!(
            list(&volume, &a, 0).await.unwrap(),
            [1, 2, 7, 9, 10, 100, 1_000]
        );
        assert_eq!(list(&volume, &a, 7).await.unwrap(), [7, 9, 10, 100, 1_000]);
        assert_eq!(list(&volume, &a, 8).await.unwrap(), [9, 10, 100, 1_000]);
        assert_eq!(list(&volume, &a, 101).await.unwrap(), [1_000]);
        assert!(list(&volume, &a, 1_001).await.unwrap().is_empty());
        // A range, bounded on both ends, in batches.
        let (mut ids, done) = list_range(&volume, &a, 2, 100, 10).await.unwrap();
        ids.sort_unstable();
        assert_eq!((ids, done), (vec![7, 9, 10, 100], true));
        let (ids, done) = list_range(&volume, &a, 0, 1_000, 3).await.unwrap();
        assert_eq!((ids.len(), done), (3, false));
        assert_eq!(
            list_range(&volume, &a, 100, 999, 3).await.unwrap(),
            (vec![], true)
        );
    }

    /// A record encoded from its parts, the changes borrowed, is the record's own
    /// encoding byte for byte (with and without stamps).
    #[test]
    fn a_record_encoded_from_its_parts_is_the_record() {
        use tern_meta::{EpFileRef, MicroPartitionDpo};
        use tern_storage::layout::{GlobalFileRef, ShortName, TableId};
        let d1 = DeploymentId::new("d1").unwrap();
        let table = TableId::new("t1").unwrap();
        let short = ShortName::new("fdn7").unwrap();
        let change = ChangeRecord::TableVersion {
            database: DatabaseId::new("db1").unwrap(),
            table: table.clone(),
            base_version: 1,
            version: 2,
            ep_file: EpFileRef {
                seq: 3,
                path: "acct/acme/db/db1/tbl/t1/ep/3.ep".into(),
            },
            columns: Vec::new(),
            added: vec![MicroPartitionDpo {
                table,
                short: short.clone(),
                global_ref: GlobalFileRef::new(d1.clone(), short),
                rows: 1,
                bytes: 2,
                stats: Vec::new(),
                added_version: 2,
                removed_version: None,
                path: "acct/acme/db/db1/tbl/t1/mp/fdn7.mp".into(),
                key_ref: "k".into(),
            }],
            removed: Vec::new(),
            ddl: None,
            rows: 1,
        };
        let mut r = LogRecord::new(
            7,
            d1,
            AccountId::new("acme").unwrap(),
            1_700_000_000_000,
            vec![change],
        );
        for stamped in [false, true] {
            if stamped {
                r.stamps
                    .insert(DatabaseId::new("db1").unwrap(), Stamp { epoch: 2, seq: 9 });
            }
            let parts = LogRecord::encode_parts(
                r.txn_id,
                &r.origin,
                &r.account,
                r.committed_at_ms,
                &r.changes,
                &r.stamps,
            )
            .unwrap();
            assert_eq!(
                String::from_utf8(parts).unwrap(),
                String::from_utf8(r.to_bytes().unwrap()).unwrap()
            );
        }
    }

    /// The plaintext format is pinned: a change here is a format change.
    #[test]
    fn golden_bytes() {
        let r = LogRecord::new(
            7,
            DeploymentId::new("d1").unwrap(),
            AccountId::new("acme").unwrap(),
            1_700_000_000_000,
            Vec::new(),
        );
        let golden = r#"{"format":"tern-txlog","v":1,"txn_id":7,"origin":"d1","account":"acme","committed_at_ms":1700000000000,"changes":[]}"#;
        assert_eq!(String::from_utf8(r.to_bytes().unwrap()).unwrap(), golden);
        assert_eq!(LogRecord::from_bytes(golden.as_bytes(), "x").unwrap(), r);
        assert_eq!(
            r.path().to_string(),
            "acct/acme/txlog/00000000000000000007.log"
        );
        let future = golden.replace(r#""v":1"#, r#""v":9"#);
        let e = LogRecord::from_bytes(future.as_bytes(), "txlog/7.log").unwrap_err();
        assert!(e.to_string().contains("txlog/7.log") && e.to_string().contains("version 9"));
        assert!(LogRecord::from_bytes(b"{}", "p").is_err());
    }
}
