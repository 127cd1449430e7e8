//! Database replication between Tern deployments (DESIGN.md §9, §11): global accounts and
//! databases, refresh (inventory → snapshot → import), log shipping, copy workers and
//! apply agents.
//!
//! ```text
//!  primary D1                                   replica D2 (hub) ── replica D3 (chain)
//!  commit ─▶ log record (volume)                 create database X as replica of G
//!  shipper ─▶ added MPs → D2 inbound ─▶ tern.repl.log ─▶ apply agent: inbound → volume,
//!                                                        same version, own log record
//!                                                   D2's shipper forwards to D3 (chain)
//!  copier ◀─ tern.repl.refresh (versions + refs) ◀── control worker
//!         ─▶ difference → D2 inbound ─▶ tern.repl.snapshot ─▶ importer: roll back to the
//!                                                             answered version, jump
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`model`] | message payloads, `replica_table_id` |
//! | [`state`] | what is kept in the metadata store |
//! | [`service`] | [`Replication`]: commands, global entities, status |
//! | [`source`] | snapshots and log shipping (source side) |
//! | [`target`] | refresh requests, import, apply (replica side) |
//! | [`handlers`] | the message handlers (apply agents) |
//! | [`copy`] | copy workers: streamed re-encrypting copies on every core |
//! | [`connection`] | connections: where clients of a database group write (its current primary) |
//! | [`failover`] | availability, epochs and claims, the write fence, failover |
//! | [`worker`] | the background workers |
//! | [`peers`] | senders and buckets of peers |
//! | [`prune`] | log pruning: records every replica has, older than the retention |
//! | [`local`] | a whole deployment in one process on folders (tests, benchmarks) |
//!
//! # Guarantees
//!
//! * **Replica versions mirror the primary's**: a replica at version N of a table holds
//!   exactly what the primary held at N; a shipped transaction is applied in one local
//!   commit (never torn), and a refresh imports every table of the database in one commit.
//! * **Idempotent**: applying a change at or below the replica's version is a no-op; a
//!   change above a gap waits, and a gap that does not fill becomes a refresh.
//! * **Only differences cross**: a refresh sends the files the replica lacks (by global
//!   reference) and names the ones it should drop; a file added and removed meanwhile is
//!   never copied.
//! * **Encrypted all the way**: files are re-encrypted volume (source TMK) → inbound stage
//!   (HKDF(RepMK, path)) → volume (replica TMK); the RepMK travels wrapped under a
//!   GMK-derived key bound to the channel and the folder.
//! * **Replicas are read-only** for statements (`tern_table::Error::ReadOnlyReplica`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conflicts;
pub mod connection;
pub mod copy;
pub mod crash;
mod error;
pub mod failover;
#[cfg(test)]
mod golden;
pub mod handlers;
pub mod jobs;
pub mod local;
pub mod model;
pub mod monitoring;
pub mod peers;
pub mod prune;
pub mod schedule;
pub mod service;
pub mod source;
pub mod state;
pub mod target;
pub mod worker;

pub use error::{Error, Result};
pub use failover::{
    Availability, AvailabilityEvent, ConflictDpo, FailoverOptions, FailoverReport, GroupStatus,
    PeerDpo, SwitchoverReport,
};
pub use model::FailoverPolicy;
pub use model::replica_table_id;
pub use peers::{PeerSet, Peers};
pub use prune::PruneReport;
pub use service::{
    DownstreamStatus, GlobalRow, Parts, ReplicaOptions, ReplicaStatus, Replication,
    ReplicationConfig, Status,
};
pub use worker::{ReplicationWorker, Role};
