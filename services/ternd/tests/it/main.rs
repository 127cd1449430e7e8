//! Integration tests of ternd in-process: the daemon opened on local folders, its router
//! served on a loopback port, requests over plain HTTP/1.1.

mod compaction;
mod harness;
mod idempotency;
mod in_doubt;
mod monitoring;
mod ops;
mod sql;
