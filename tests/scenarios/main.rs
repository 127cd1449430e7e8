//! Scenario tests: Tern's real binaries run as child processes.

mod selfcheck;
mod ternd;
