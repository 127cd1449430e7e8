//! The per-database log of dictionary changes (DDL): `dict/<db>/<seq>`.

use tern_storage::layout::DatabaseId;

use crate::dpo::{DictionaryChange, DictionaryChangeDpo};
use crate::error::Result;
use crate::keys;
use crate::store::MetaTxn;

impl MetaTxn<'_> {
    /// Record `change` as the next entry of `db`'s dictionary log; returns its number. Call
    /// it in the transaction that makes the change, so the two commit together.
    pub fn record_dictionary_change(
        &mut self,
        db: &DatabaseId,
        at_ms: i64,
        change: DictionaryChange,
    ) -> Result<u64> {
        let seq = self.next_sequence(&format!("dict/{db}"))?;
        let entry = DictionaryChangeDpo {
            database: db.clone(),
            seq,
            at_ms,
            change,
        };
        self.put(&keys::dictionary_change(db, seq), &entry)?;
        Ok(seq)
    }

    /// `db`'s dictionary changes numbered after `after_seq`, in order.
    pub fn dictionary_changes(
        &mut self,
        db: &DatabaseId,
        after_seq: u64,
    ) -> Result<Vec<DictionaryChangeDpo>> {
        Ok(self
            .scan_prefix::<DictionaryChangeDpo>(&keys::dictionary_changes(db))?
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| c.seq > after_seq)
            .collect())
    }
}
