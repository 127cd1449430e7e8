//! Integration tests of tern-messaging: one binary, one module per concern. Storage
//! scenarios run against the folder store and LocalStack (test names say which); the
//! write-only identity test runs on moto with IAM enforced.

mod access;
mod chain;
mod common;
mod crashes;
mod lifecycle;
mod rejections;
mod resync;
