//! Integration tests of tern-monitor: exact counters under concurrency, no torn reads.

mod stress;
