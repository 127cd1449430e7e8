//! Object storage access for Tern.
//!
//! Everything Tern stores — micro-partitions, metadata files, transaction log records,
//! message files, inbound copies — goes through an `Arc<dyn ObjectStore>` and an
//! `object_store` [`Path`]. This crate:
//!
//! * opens a store from a URL plus options ([`open_store`]): `file:///…` folders (the
//!   embedded default) and `s3://bucket` on AWS or an emulator;
//! * names every location of the storage layout ([`layout`]) from validated names, so no
//!   caller formats object paths by hand;
//! * classifies storage failures into one typed [`Error`] (already exists, conflict, not
//!   found, not supported, permission denied, other) that names the object;
//! * adds behaviour as wrapper stores: [`RetryStore`] (transient failures, with
//!   inconclusive-write detection) and [`FaultStore`] (fault injection and call counting
//!   for tests);
//! * administers buckets through `aws-sdk-s3` where `object_store` cannot ([`admin`]).
//!
//! # What Tern assumes of a store
//!
//! * A single put is atomic: readers see the whole old object or the whole new one.
//! * `PutMode::Create` is atomic "create if absent" — the basis of every "exactly once"
//!   step (message files, commit records). Both backends provide it.
//! * `PutMode::Update` (compare-and-swap on the ETag) is provided by S3 and emulators; the
//!   folder store reports it as [`Error::NotSupported`], so code that needs it must say so.
//! * Listing is eventually complete, not ordered: [`StoreExt::list_sorted`] sorts.
//!
//! ```
//! # async fn demo() -> tern_storage::Result<()> {
//! use tern_storage::{StoreConfig, StoreExt, open_store, layout::{self, DeploymentId}};
//! let dir = tempfile::tempdir().unwrap();
//! let store = open_store(&StoreConfig {
//!     url: format!("file://{}", dir.path().display()),
//!     ..Default::default()
//! })?;
//! let peer = DeploymentId::new("d2")?;
//! let path = layout::replication::msg(&peer, 1);
//! store.put_new(&path, "hello".into()).await?;
//! assert!(matches!(store.put_new(&path, "again".into()).await,
//!                  Err(tern_storage::Error::AlreadyExists { .. })));
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
pub mod emulator;
pub mod error;
pub mod ext;
pub mod fault;
pub mod layout;
pub mod retry;

pub use config::{
    FolderOptions, Location, S3Options, StoreConfig, open_folder, open_folder_with, open_store,
};
pub use error::{Error, Operation, Result};
pub use ext::StoreExt;
pub use fault::{Fault, FaultPlan, FaultRule, FaultStore};
pub use object_store::{self, ObjectStore, path::Path};
pub use retry::{RetryPolicy, RetryStore};
