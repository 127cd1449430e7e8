//! Tern's table format.
//!
//! A table is a list of columns plus versions. Its rows live in **micro-partitions**:
//! immutable Parquet files (ZSTD) encrypted with a key derived from the table master key
//! and the file's path. Each commit writes one encrypted **metadata file** naming the
//! micro-partitions it added (with per-column min/max/null counts and global file
//! references) and removed, then makes version N+1 visible in the metadata store with a
//! compare-and-swap. Scans prune micro-partitions and row groups by statistics and read
//! only the columns asked for, at the current version or any retained one.
//!
//! ```text
//!  insert/delete/update/merge ──▶ new MPs (encrypted Parquet, PutMode::Create)
//!                              ──▶ metadata file (encrypted JSON, PutMode::Create)
//!                              ──▶ metadata store: CAS current_version N → N+1
//! ```
//!
//! Small files (one per single-row insert) are merged by [`compact`] as a commit of its
//! own that keeps every row.
//!
//! Each table master key is wrapped by its account's master key ([`account_key`]: made with
//! the account, rotated without rewriting files, destroyed when the account is dropped).

pub mod account_key;
pub mod aggregate;
pub mod commit;
pub mod compact;
pub mod ep;
pub mod error;
pub mod load;
pub mod mp;
pub mod pins;
pub mod predicate;
pub mod schema;
pub mod table;

pub use account_key::{AccountKeys, KEY_CHAIN_VERSION, Migration, Rotation};
pub use commit::{
    Change, ChangeRecord, Committed, Committer, IdempotencyKey, Landing, LocalCommitter, Planned,
    PlannedFile, RepairChange, Stamp, Transaction, WriteFence, with_idempotency_key,
    with_pending_idempotency_key,
};
pub use compact::{CompactionOptions, StagedCompaction};
pub use error::{CommitFailure, Error, Refusal, Result};
pub use pins::PinnedVersion;
pub use predicate::{CmpOp, Predicate};
pub use table::{
    Aggregate, CommitInfo, Part, ScanRequest, ScanResult, ScanStream, StagedRewrite, TableOptions,
    Tables,
};
pub use tern_meta::{ColumnDef, ColumnType, Scalar};
