//! Metadata (EP) files: one immutable, encrypted file per commit of a table, listing the
//! micro-partitions the commit added (with their statistics and global references) and the
//! short names it removed. A table's version N is the ordered list of metadata files of
//! commits 1..N; the metadata store indexes them, and the files are what replication copies.
//!
//! Format: JSON with a format tag and version (`{"format":"tern-ep","v":1,…}`), sealed with
//! the table's file key for its path. An unknown version is refused with a clear error.

use serde::{Deserialize, Serialize};
use tern_meta::{ColumnDef, ColumnStats, MicroPartitionDpo};
use tern_storage::layout::{GlobalFileRef, ShortName, TableId};

use crate::error::{Error, Result};

/// The format tag of metadata files.
pub const FORMAT: &str = "tern-ep";
/// The current format version.
pub const VERSION: u32 = 1;

/// One added micro-partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddedFile {
    /// Local short name.
    pub short: ShortName,
    /// Name across the group.
    pub global_ref: GlobalFileRef,
    /// Object path in the volume.
    pub path: String,
    /// Rows.
    pub rows: u64,
    /// Parquet bytes, compressed, before encryption ([`MicroPartitionDpo::bytes`]).
    pub bytes: u64,
    /// Per-column statistics.
    pub stats: Vec<ColumnStats>,
}

impl AddedFile {
    /// The entry for a micro-partition row.
    pub fn from_dpo(mp: &MicroPartitionDpo) -> Self {
        Self {
            short: mp.short.clone(),
            global_ref: mp.global_ref.clone(),
            path: mp.path.clone(),
            rows: mp.rows,
            bytes: mp.bytes,
            stats: mp.stats.clone(),
        }
    }
}

/// The content of one metadata file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// The table.
    pub table: TableId,
    /// The version this commit made.
    pub version: u64,
    /// The table's columns at that version (DDL travels with the data).
    pub columns: Vec<ColumnDef>,
    /// Files added.
    pub added: Vec<AddedFile>,
    /// Short names removed.
    pub removed: Vec<ShortName>,
}

impl MetadataFile {
    /// A metadata file of the current format.
    pub fn new(
        table: TableId,
        version: u64,
        columns: Vec<ColumnDef>,
        added: Vec<AddedFile>,
        removed: Vec<ShortName>,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            v: VERSION,
            table,
            version,
            columns,
            added,
            removed,
        }
    }

    /// Serialize (plaintext; the caller encrypts). An encode failure is an error, never an
    /// empty file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::EncodeMetadataFile {
            table: self.table.clone(),
            version: self.version,
            source,
        })
    }

    /// Parse, checking the format tag and version. `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self> {
        tern_meta::decode_versioned(bytes, Some(FORMAT), "metadata file", VERSION).map_err(
            |reason| Error::BadMetadataFile {
                path: path.to_string(),
                reason,
            },
        )
    }
}

/// The bytes of the [`MetadataFile`] of a version adding `added` (their entries read from
/// the micro-partition rows, borrowed): exactly [`MetadataFile::to_bytes`] of
/// `MetadataFile::new(table, version, columns, added.map(AddedFile::from_dpo), removed)`,
/// without building that list first — for a commit of 100 000 files, a copy of every
/// name, path and statistic less while it is planned.
pub fn metadata_file_bytes(
    table: &TableId,
    version: u64,
    columns: &[ColumnDef],
    added: &[MicroPartitionDpo],
    removed: &[ShortName],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_metadata_file(&mut out, table, version, columns, added, removed, |s| s)?;
    Ok(out)
}

/// [`metadata_file_bytes`] into `out` (a [`tern_crypto::stream::SealingWriter`]: the file
/// is sealed as it is encoded, its plaintext never held), the removed names read from
/// `removed` through `short`.
pub(crate) fn write_metadata_file<W: std::io::Write, R>(
    out: W,
    table: &TableId,
    version: u64,
    columns: &[ColumnDef],
    added: &[MicroPartitionDpo],
    removed: &[R],
    short: fn(&R) -> &ShortName,
) -> Result<()> {
    struct Removed<'a, R>(&'a [R], fn(&R) -> &ShortName);
    impl<R> Serialize for Removed<'_, R> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(self.1))
        }
    }
    /// [`AddedFile`]'s fields, in its order, borrowed from a row.
    #[derive(Serialize)]
    struct AddedRef<'a> {
        short: &'a ShortName,
        global_ref: &'a GlobalFileRef,
        path: &'a str,
        rows: u64,
        bytes: u64,
        stats: &'a [ColumnStats],
    }
    struct Added<'a>(&'a [MicroPartitionDpo]);
    impl Serialize for Added<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|m| AddedRef {
                short: &m.short,
                global_ref: &m.global_ref,
                path: &m.path,
                rows: m.rows,
                bytes: m.bytes,
                stats: &m.stats,
            }))
        }
    }
    /// [`MetadataFile`]'s fields, in its order, borrowed.
    #[derive(Serialize)]
    #[serde(bound = "")]
    struct FileRef<'a, R> {
        format: &'a str,
        v: u32,
        table: &'a TableId,
        version: u64,
        columns: &'a [ColumnDef],
        added: Added<'a>,
        removed: Removed<'a, R>,
    }
    serde_json::to_writer(
        out,
        &FileRef {
            format: FORMAT,
            v: VERSION,
            table,
            version,
            columns,
            added: Added(added),
            removed: Removed(removed, short),
        },
    )
    .map_err(|source| Error::EncodeMetadataFile {
        table: table.clone(),
        version,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_meta::{ColumnType, Scalar};
    use tern_storage::layout::DeploymentId;

    fn sample() -> MetadataFile {
        let short = ShortName::new("fdn7").unwrap();
        MetadataFile::new(
            TableId::new("t1").unwrap(),
            3,
            vec![ColumnDef {
                name: "id".into(),
                ty: ColumnType::Int64,
                nullable: false,
            }],
            vec![AddedFile {
                short: short.clone(),
                global_ref: GlobalFileRef::new(DeploymentId::new("d1").unwrap(), short),
                path: "acct/a/db/d/tbl/t1/mp/fdn7.mp".into(),
                rows: 10,
                bytes: 1234,
                stats: vec![ColumnStats {
                    column: "id".into(),
                    min: Some(Scalar::Int64(1)),
                    max: Some(Scalar::Int64(10)),
                    null_count: 0,
                }],
            }],
            vec![ShortName::new("fdn2").unwrap()],
        )
    }

    /// The plaintext format is pinned: a change here is a format change and needs a new
    /// version and a migration, never an accident.
    #[test]
    fn golden_bytes() {
        let golden = r#"{"format":"tern-ep","v":1,"table":"t1","version":3,"columns":[{"name":"id","ty":"int64","nullable":false}],"added":[{"short":"fdn7","global_ref":{"origin":"d1","short":"fdn7"},"path":"acct/a/db/d/tbl/t1/mp/fdn7.mp","rows":10,"bytes":1234,"stats":[{"column":"id","min":{"int64":1},"max":{"int64":10},"null_count":0}]}],"removed":["fdn2"]}"#;
        assert_eq!(
            String::from_utf8(sample().to_bytes().unwrap()).unwrap(),
            golden
        );
        assert_eq!(
            MetadataFile::from_bytes(golden.as_bytes(), "x").unwrap(),
            sample()
        );
    }

    /// The file encoded from the rows it adds, borrowed, is the file itself, byte for byte.
    #[test]
    fn the_file_encoded_from_borrowed_rows_is_the_same_file() {
        let file = sample();
        let rows: Vec<MicroPartitionDpo> = file
            .added
            .iter()
            .map(|a| MicroPartitionDpo {
                table: file.table.clone(),
                short: a.short.clone(),
                global_ref: a.global_ref.clone(),
                rows: a.rows,
                bytes: a.bytes,
                stats: a.stats.clone(),
                added_version: file.version,
                removed_version: None,
                path: a.path.clone(),
                key_ref: "tmk-hkdf-path:k1".into(),
            })
            .collect();
        let borrowed = metadata_file_bytes(
            &file.table,
            file.version,
            &file.columns,
            &rows,
            &file.removed,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(borrowed).unwrap(),
            String::from_utf8(file.to_bytes().unwrap()).unwrap()
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let future = String::from_utf8(sample().to_bytes().unwrap())
            .unwrap()
            .replace(r#""v":1"#, r#""v":2"#);
        let e = MetadataFile::from_bytes(future.as_bytes(), "ep/1.ep").unwrap_err();
        assert!(
            e.to_string().contains("ep/1.ep") && e.to_string().contains("version 2"),
            "{e}"
        );
        assert!(MetadataFile::from_bytes(b"{\"format\":\"other\",\"v\":1}", "p").is_err());
        assert!(MetadataFile::from_bytes(b"\x00\x01", "p").is_err());
    }
}
