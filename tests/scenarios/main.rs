//! Scenario tests: Tern's real binaries run as child processes.

mod account_keys;
mod cli;
mod failover;
mod localstack;
mod monitoring;
mod replication;
mod selfcheck;
mod sql;
mod ternd;
mod tls;
