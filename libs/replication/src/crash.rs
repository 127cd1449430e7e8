//! Replication's named crash points in source and target, for tests of recovery.
//!
//! They live in the message service's [`CrashPoints`](tern_messaging::CrashPoints)
//! registry (one per deployment): a test arms a point there
//! (`ctx.crash_points().arm(crash::REWIND_TABLE)`), or `ternd` does from `TERN_CRASH_AT`
//! and kills its own process when it fires. A fired point returns
//! [`Error::Messaging`](crate::Error::Messaging) with a crash inside, which ends the
//! worker as a killed process would (no clean-up).

/// Rejoin: one table was rolled back to the fork (its conflict records stored), before
/// the next table.
pub const REWIND_TABLE: &str = "rewind.table_rolled_back";
/// Rejoin: every table rewound and the refresh from the new primary asked, before the
/// rewind mark is cleared.
pub const REWIND_ASKED: &str = "rewind.refresh_asked";
/// Import: the snapshot's schemas and tables are in place, before its files.
pub const IMPORT_DICTIONARY: &str = "import.dictionary_applied";
/// Import or a shipment's apply: the files of every table it changes were copied into
/// the volume (journaled in the transaction, not committed).
pub const APPLY_COPIED: &str = "apply.files_copied";
/// Import: one file of the response was copied from the inbound stage into the volume
/// (the table's version not committed yet); arm it with `arm_after(n)` to stop an import
/// in the middle of its files — with a streamed response, while the upstream still copies.
pub const IMPORT_FILE_COPIED: &str = "import.file_copied";
/// Import: the import's transaction committed, before the refresh is recorded as done.
pub const IMPORT_COMMITTED: &str = "import.committed";
/// Import: the refresh is recorded as done, before the import job is removed.
pub const IMPORT_FINISHED: &str = "import.finished";

/// Source, refresh of a replica that imports as files land: the response (the plan) is
/// sent, before the files are copied.
pub const SNAPSHOT_PLAN_SENT: &str = "snapshot.plan_sent";
/// Source, refresh: the snapshot's files are copied into the replica's inbound stage,
/// before the response message is created (streamed: before the `copied` marker).
pub const SNAPSHOT_COPIED: &str = "snapshot.files_copied";
/// Source, refresh: the response message is ready to send, before the request is removed
/// and the replica's log position recorded.
pub const SNAPSHOT_SENT: &str = "snapshot.sent";
/// Source, log shipping: a record's shipment is ready to send, before the replica's
/// cursor moves past it.
pub const SHIP_SENT: &str = "ship.sent";

/// Switchover: the candidate won its votes (the primary paused for it), before it claims.
pub const SWITCHOVER_WON: &str = "switchover.won";

/// Every replication crash point: the target's in the order a rejoin meets them, then
/// the source's.
pub const ALL: &[&str] = &[
    REWIND_TABLE,
    REWIND_ASKED,
    IMPORT_DICTIONARY,
    APPLY_COPIED,
    IMPORT_FILE_COPIED,
    IMPORT_COMMITTED,
    IMPORT_FINISHED,
    SWITCHOVER_WON,
    SNAPSHOT_PLAN_SENT,
    SNAPSHOT_COPIED,
    SNAPSHOT_SENT,
    SHIP_SENT,
];
