//! Integration tests of tern-storage: one binary, one module per concern. Every storage
//! scenario runs against the local folder store and the S3 emulator (LocalStack).

mod access;
mod backends;
mod conformance;
mod infra;
mod wrappers;
