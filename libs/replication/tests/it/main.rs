//! Replication between in-process deployments on folder stores: every worker runs as in
//! the daemon (message sender/receiver/processor/cleaner, the four replication workers).

mod common;
mod epochs;
mod failover;
mod keys;
mod landing;
mod monitoring;
mod pruning;
mod replicate;
mod s3;
