//! Scenario tests: Tern's real binaries run as child processes.

mod cli;
mod selfcheck;
mod ternd;
