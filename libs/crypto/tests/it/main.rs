//! Integration tests of `tern-crypto` (one binary).

mod common;
mod copy;
mod golden;
mod kat;
mod kms;
mod props;
mod providers;
mod roundtrip;
mod tamper;
