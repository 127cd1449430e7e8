//! The dictionary persistent objects (DPOs): what the metadata store holds.
//!
//! Every DPO is stored as JSON in a versioned envelope (`{"v":1,"d":{…}}`, see
//! [`Dpo`](crate::Dpo)). Timestamps are milliseconds since the Unix epoch from the caller's injected
//! clock (`*_at_ms`); the store itself never reads the time. Names are the validated
//! newtypes of [`tern_storage::layout`], so a DPO can never carry a name that would
//! escape its object-storage prefix.

use serde::{Deserialize, Serialize};
use tern_storage::layout::{
    AccountId, DatabaseId, DeploymentId, GlobalFileRef, ShortName, TableId,
};

use crate::envelope::{f64_json, i128_string};

use crate::impl_dpo as dpo;

/// A member of the deployment group (DESIGN.md §2): every deployment keeps the full list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDpo {
    /// The deployment's id (`aws-us-west-2`).
    pub id: DeploymentId,
    /// Its region (`us-west-2`).
    pub region: String,
    /// Its cloud (`aws`, `gcp`, `local`).
    pub cloud: String,
    /// URL of its replication bucket, where this deployment writes into `from/<self>/`.
    pub replication_bucket_url: String,
    /// Reference to the credentials for writing into that sub-bucket (never the secret).
    pub credentials_ref: Option<String>,
    /// When it was added to the group here.
    pub added_at_ms: i64,
}
dpo!(DeploymentDpo, "deployment");

/// Whether an account is local or a member of an account replication group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// Exists only in this deployment.
    Local,
    /// Member of the account replication group `group_id`.
    Global {
        /// The account group id.
        group_id: String,
    },
}

/// A tenant of this deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDpo {
    /// The account name (unique in the deployment).
    pub name: AccountId,
    /// Local or global.
    pub kind: AccountKind,
    /// When it was created.
    pub created_at_ms: i64,
    /// Its global id, if it is a global entity.
    pub global_id: Option<String>,
}
dpo!(AccountDpo, "account");

impl AccountDpo {
    /// A local (not replicated) account.
    pub fn local(name: AccountId, created_at_ms: i64) -> Self {
        Self {
            name,
            kind: AccountKind::Local,
            created_at_ms,
            global_id: None,
        }
    }
}

/// A database's role in its replication group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseRole {
    /// Not replicated.
    Local,
    /// The writable replica of its group.
    Primary,
    /// A read-only replica, kept current by replication.
    Secondary,
}

/// A database: the root of its schemas and tables.
///
/// `(account, name)` is unique among databases that are not dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseDpo {
    /// Stable id (survives renames).
    pub id: DatabaseId,
    /// The owning account (never changes).
    pub account: AccountId,
    /// The name users see.
    pub name: String,
    /// Its global id, if it is a global entity.
    pub global_id: Option<String>,
    /// The database replication group (a UUID), if replicated.
    pub replication_group: Option<String>,
    /// Its role in the group.
    pub role: DatabaseRole,
    /// Role-change epoch: only ever grows; a holder of an older epoch is fenced.
    pub epoch: u64,
    /// When it was created.
    pub created_at_ms: i64,
    /// Dropped databases keep their row (for undrop and cleanup) but lose their name.
    pub dropped: bool,
}
dpo!(DatabaseDpo, "database");

impl DatabaseDpo {
    /// A local (not replicated) database of `account`.
    pub fn local(
        id: DatabaseId,
        account: AccountId,
        name: impl Into<String>,
        created_at_ms: i64,
    ) -> Self {
        Self {
            id,
            account,
            name: name.into(),
            global_id: None,
            replication_group: None,
            role: DatabaseRole::Local,
            epoch: 0,
            created_at_ms,
            dropped: false,
        }
    }
}

/// A schema of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDpo {
    /// The database.
    pub database: DatabaseId,
    /// The schema name (unique in the database).
    pub name: String,
    /// When it was created.
    pub created_at_ms: i64,
}
dpo!(SchemaDpo, "schema");

/// A column's type (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// UTF-8 string.
    Utf8,
    /// Boolean.
    Bool,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// Days since the Unix epoch.
    Date,
    /// Fixed-point decimal.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point (may be negative).
        scale: i8,
    },
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::Utf8 => f.write_str("utf8"),
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may hold nulls.
    pub nullable: bool,
}

/// A table's definition and its current version.
///
/// `(database, schema, name)` is unique among tables that are not dropped. Its versions
/// are [`TableVersionDpo`]s and its files [`MicroPartitionDpo`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDpo {
    /// Stable id (survives renames).
    pub id: TableId,
    /// The database.
    pub database: DatabaseId,
    /// The schema name.
    pub schema: String,
    /// The table name.
    pub name: String,
    /// The current columns (those of `current_version`).
    pub columns: Vec<ColumnDef>,
    /// Which table master key encrypts its files (a key reference, never key material).
    pub master_key_ref: String,
    /// The latest committed version; 0 for a new table. Changed only by
    /// [`MetaTxn::commit_table_version`](crate::MetaTxn::commit_table_version) and
    /// [`MetaTxn::rollback_table_to`](crate::MetaTxn::rollback_table_to).
    pub current_version: u64,
    /// How long past versions stay readable ("time travel"); `None` = the deployment default.
    pub retention_ms: Option<u64>,
    /// When it was created.
    pub created_at_ms: i64,
    /// Dropped tables keep their rows (for undrop and cleanup) but lose their name.
    pub dropped: bool,
}
dpo!(TableDpo, "table");

/// One metadata (EP) file of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpFileRef {
    /// The commit sequence number in its name.
    pub seq: u64,
    /// Its object path in the volume.
    pub path: String,
}

/// One version of a table: what the commit that made it wrote.
///
/// A version row stores only **its own** metadata file(s); the full list of version N
/// (the files of commits 1..N, DESIGN.md §2) is derived by scanning the retained versions
/// up to N: [`MetaTxn::ep_files_at`](crate::MetaTxn::ep_files_at). Version 0 is written
/// when the table is created (no files; the creation columns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableVersionDpo {
    /// The table.
    pub table: TableId,
    /// The version number.
    pub version: u64,
    /// The metadata file(s) written by this commit.
    pub ep_files: Vec<EpFileRef>,
    /// When it was committed.
    pub committed_at_ms: i64,
    /// The transaction id (Lamport) of the commit, if made by a transaction.
    pub txn_id: Option<u64>,
    /// The deployment where the change originated (for replicated changes).
    pub origin: Option<DeploymentId>,
    /// The table's columns at this version.
    pub columns: Vec<ColumnDef>,
    /// Micro-partitions this commit added (filled in by the commit).
    pub added: Vec<ShortName>,
    /// Micro-partitions this commit removed (filled in by the commit).
    pub removed: Vec<ShortName>,
}
dpo!(TableVersionDpo, "table version");

/// A change to a database's dictionary (DDL), in the order it was made. Recorded in the
/// same transaction as the change itself, numbered per database, so that replication can
/// ship exactly the DDL a replica has not seen yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DictionaryChange {
    /// `create schema`.
    CreateSchema {
        /// The schema.
        name: String,
    },
    /// `drop schema`.
    DropSchema {
        /// The schema.
        name: String,
    },
    /// `create table`.
    CreateTable {
        /// Its id.
        table: TableId,
        /// Its schema.
        schema: String,
        /// Its name.
        name: String,
        /// Its columns.
        columns: Vec<ColumnDef>,
    },
    /// `drop table`.
    DropTable {
        /// Its id.
        table: TableId,
    },
    /// `alter table … add column`, made visible as table version `version`.
    AddColumn {
        /// The table.
        table: TableId,
        /// The new column.
        column: ColumnDef,
        /// The table version that added it.
        version: u64,
    },
}

/// One recorded dictionary change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DictionaryChangeDpo {
    /// The database.
    pub database: DatabaseId,
    /// Position in the database's change log (1, 2, …).
    pub seq: u64,
    /// When it was made.
    pub at_ms: i64,
    /// What changed.
    pub change: DictionaryChange,
}
dpo!(DictionaryChangeDpo, "dictionary change");

/// A typed value of a column statistic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scalar {
    /// `Int64`.
    Int64(i64),
    /// `Float64` (non-finite values are stored as `"NaN"`, `"NaN:<bits>"`, `"inf"`, `"-inf"`,
    /// so every value, NaN sign and payload included, reads back bit for bit).
    Float64(#[serde(with = "f64_json")] f64),
    /// `Utf8`.
    Utf8(String),
    /// `Bool`.
    Bool(bool),
    /// `Timestamp`: microseconds since the epoch, UTC.
    Timestamp(i64),
    /// `Date`: days since the epoch.
    Date(i32),
    /// `Decimal`: the unscaled value (stored as a decimal string).
    Decimal(#[serde(with = "i128_string")] i128),
}

impl From<i64> for Scalar {
    fn from(v: i64) -> Self {
        Scalar::Int64(v)
    }
}

impl From<f64> for Scalar {
    fn from(v: f64) -> Self {
        Scalar::Float64(v)
    }
}

impl From<&str> for Scalar {
    fn from(v: &str) -> Self {
        Scalar::Utf8(v.to_string())
    }
}

impl From<String> for Scalar {
    fn from(v: String) -> Self {
        Scalar::Utf8(v)
    }
}

impl From<bool> for Scalar {
    fn from(v: bool) -> Self {
        Scalar::Bool(v)
    }
}

/// Statistics of one column in one micro-partition (for pruning without opening files).
///
/// Values are ordered as scans and pruning order them: floats by IEEE 754 total order
/// (`-NaN < -inf < … < -0.0 < +0.0 < … < inf < NaN`), so a micro-partition holding NaN
/// has `max = NaN` (not, as Parquet's own statistics would have it, the largest number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// The column name.
    pub column: String,
    /// Smallest non-null value, if known.
    pub min: Option<Scalar>,
    /// Largest non-null value, if known.
    pub max: Option<Scalar>,
    /// Number of nulls.
    pub null_count: u64,
}

/// One micro-partition of a table: an immutable encrypted Parquet file in the volume.
///
/// Active at version `v` when `added_version <= v` and (`removed_version` is `None` or
/// `> v`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicroPartitionDpo {
    /// The table.
    pub table: TableId,
    /// Its deployment-local name (unique in the table).
    pub short: ShortName,
    /// Its name across the deployment group (unique in the deployment; imported files
    /// keep their original reference).
    pub global_ref: GlobalFileRef,
    /// Row count.
    pub rows: u64,
    /// Size of its Parquet content in bytes: compressed, before encryption (the stored
    /// object is larger by the encryption header and one tag per chunk). The same on every
    /// deployment that holds a copy, since copies are re-encrypted, not re-encoded.
    pub bytes: u64,
    /// Per-column statistics.
    pub stats: Vec<ColumnStats>,
    /// The version whose commit added it.
    pub added_version: u64,
    /// The version whose commit removed it, if any.
    pub removed_version: Option<u64>,
    /// Its object path in the volume.
    pub path: String,
    /// Which key encrypts it and how it is derived, never key material: for files Tern
    /// writes, `tmk-hkdf-path:<table master key id>` (see `tern_table::mp::key_ref`).
    pub key_ref: String,
}
dpo!(MicroPartitionDpo, "micro-partition");

impl MicroPartitionDpo {
    /// Whether it belongs to the table's state at `version`.
    pub fn is_active_at(&self, version: u64) -> bool {
        self.added_version <= version && self.removed_version.is_none_or(|r| r > version)
    }
}

// Index entries (small values pointing at the entity they index).

/// `dbname/<account>/<name>` → the database's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DatabaseNameEntry {
    pub id: DatabaseId,
}
dpo!(DatabaseNameEntry, "database name index entry");

/// `tblname/<db>/<schema>/<name>` → the table's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TableNameEntry {
    pub id: TableId,
}
dpo!(TableNameEntry, "table name index entry");

/// `mpg/<origin>/<short>` → where the micro-partition with that global reference lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GlobalFileEntry {
    pub table: TableId,
    pub short: ShortName,
}
dpo!(GlobalFileEntry, "global file reference index entry");

/// `gid/<kind>/<global id>` → the local key of the entity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GlobalIdEntry {
    pub local_key: String,
}
dpo!(GlobalIdEntry, "global id index entry");

/// `seq/<name>` → the last value issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SequenceEntry {
    pub last: u64,
}
dpo!(SequenceEntry, "sequence");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode, encode};
    use crate::key::Key;

    fn mp() -> MicroPartitionDpo {
        MicroPartitionDpo {
            table: TableId::new("t1").unwrap(),
            short: ShortName::new("fdn27").unwrap(),
            global_ref: GlobalFileRef::new(
                DeploymentId::new("d1").unwrap(),
                ShortName::new("fdn27").unwrap(),
            ),
            rows: 10,
            bytes: 2048,
            stats: vec![
                ColumnStats {
                    column: "x".into(),
                    min: Some(Scalar::Float64(f64::NEG_INFINITY)),
                    max: Some(Scalar::Float64(1.5)),
                    null_count: 0,
                },
                ColumnStats {
                    column: "d".into(),
                    min: Some(Scalar::Decimal(
                        -170_141_183_460_469_231_731_687_303_715_884_105_728,
                    )),
                    max: Some(Scalar::Decimal(12_345)),
                    null_count: 2,
                },
            ],
            added_version: 3,
            removed_version: None,
            path: "acct/a/db/d/tbl/t1/mp/fdn27.mp".into(),
            key_ref: "tmk:1".into(),
        }
    }

    /// Golden JSON: a change here changes the stored format (bump `VERSION` or make the
    /// change backward-compatible).
    #[test]
    fn micro_partition_golden_json() {
        let k = Key::root("tbl").str("t1").str("mp").str("fdn27");
        let bytes = encode(&k, &mp()).unwrap();
        let golden = concat!(
            r#"{"v":1,"d":{"table":"t1","short":"fdn27","global_ref":{"origin":"d1","short":"fdn27"},"#,
            r#""rows":10,"bytes":2048,"stats":[{"column":"x","min":{"float64":"-inf"},"max":{"float64":1.5},"null_count":0},"#,
            r#"{"column":"d","min":{"decimal":"-170141183460469231731687303715884105728"},"max":{"decimal":"12345"},"null_count":2}],"#,
            r#""added_version":3,"removed_version":null,"path":"acct/a/db/d/tbl/t1/mp/fdn27.mp","key_ref":"tmk:1"}}"#
        );
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), golden);
        assert_eq!(decode::<MicroPartitionDpo>(&k, &bytes).unwrap(), mp());
    }

    #[test]
    fn table_and_account_golden_json() {
        let t = TableDpo {
            id: TableId::new("t1").unwrap(),
            database: DatabaseId::new("db1").unwrap(),
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    ty: ColumnType::Int64,
                    nullable: false,
                },
                ColumnDef {
                    name: "amount".into(),
                    ty: ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    nullable: true,
                },
            ],
            master_key_ref: "tmk/t1".into(),
            current_version: 4,
            retention_ms: Some(86_400_000),
            created_at_ms: 1,
            dropped: false,
        };
        let k = Key::root("tbl").str("t1").str("def");
        let bytes = encode(&k, &t).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            concat!(
                r#"{"v":1,"d":{"id":"t1","database":"db1","schema":"public","name":"orders","#,
                r#""columns":[{"name":"id","ty":"int64","nullable":false},"#,
                r#"{"name":"amount","ty":{"decimal":{"precision":12,"scale":2}},"nullable":true}],"#,
                r#""master_key_ref":"tmk/t1","current_version":4,"retention_ms":86400000,"created_at_ms":1,"dropped":false}}"#
            )
        );
        assert_eq!(decode::<TableDpo>(&k, &bytes).unwrap(), t);

        let a = AccountDpo {
            name: AccountId::new("acme").unwrap(),
            kind: AccountKind::Global {
                group_id: "g1".into(),
            },
            created_at_ms: 5,
            global_id: None,
        };
        let bytes = encode(&k, &a).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"d":{"name":"acme","kind":{"global":{"group_id":"g1"}},"created_at_ms":5,"global_id":null}}"#
        );
        assert_eq!(decode::<AccountDpo>(&k, &bytes).unwrap(), a);
    }

    #[test]
    fn non_finite_floats_survive() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e300] {
            let s = ColumnStats {
                column: "c".into(),
                min: Some(Scalar::Float64(x)),
                max: None,
                null_count: 0,
            };
            let bytes = serde_json::to_vec(&s).unwrap();
            let back: ColumnStats = serde_json::from_slice(&bytes).unwrap();
            match back.min {
                Some(Scalar::Float64(y)) => {
                    assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn invalid_names_are_refused_on_read() {
        let k = Key::root("x");
        let bad = br#"{"v":1,"d":{"database":"../etc","name":"s","created_at_ms":0}}"#;
        assert!(matches!(
            decode::<SchemaDpo>(&k, bad),
            Err(crate::Error::Decode { .. })
        ));
    }

    #[test]
    fn activity_window() {
        let mut m = mp();
        assert!(!m.is_active_at(2));
        assert!(m.is_active_at(3) && m.is_active_at(100));
        m.removed_version = Some(5);
        assert!(m.is_active_at(4) && !m.is_active_at(5));
    }
}
