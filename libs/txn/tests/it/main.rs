//! Integration tests of tern-txn: one binary. Storage scenarios run on the folder store
//! and on LocalStack.

mod common;
mod concurrency;
mod cost;
mod crash;
mod idempotency;
mod log_write;
mod nan;
mod pruning;
mod reader;
mod reserve;
mod stored_form;
