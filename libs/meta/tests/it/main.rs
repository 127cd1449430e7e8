//! Integration tests of `tern-meta`.
//!
//! Every scenario is one `fn scenario(store: MetaStore)` run twice by
//! [`on_both_backends!`]: on an SQLite file (production settings) and on the in-memory
//! backend. SQLite-only concerns (reopen, migrations, killed processes, several processes
//! on one file) are in [`sqlite`].

/// For each scenario function `f(store: MetaStore)`, a module `f` with tests `sqlite` and
/// `memory`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn sqlite() {
                let (store, _dir) = crate::common::sqlite_store();
                super::$scenario(store);
            }

            #[test]
            fn memory() {
                super::$scenario(tern_meta::MetaStore::in_memory());
            }
        }
    )*};
}

mod atomicity;
mod common;
mod concurrency;
mod cost;
mod dictionary;
mod model;
mod sqlite;
mod versions;
