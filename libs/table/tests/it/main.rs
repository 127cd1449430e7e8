//! Integration tests of tern-table: one binary. Storage scenarios run on the folder store
//! and on LocalStack.

mod account_keys;
mod compaction;
mod coverage;
mod errors;
mod fixture;
mod golden;
mod model;
mod pruning;
mod scenarios;
mod schema_race;
mod streaming;
mod vacuum;
