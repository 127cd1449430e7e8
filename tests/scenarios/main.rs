//! Scenario tests: Tern's real binaries run as child processes.

mod cli;
mod localstack;
mod replication;
mod selfcheck;
mod ternd;
