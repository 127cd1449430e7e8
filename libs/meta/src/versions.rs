//! Table versions and the micro-partition index.
//!
//! ```text
//!  commit_table_version(T, expected = N, version N+1, add, remove)   one transaction:
//!    T.current_version == N ?  else VersionConflict { expected: N, found }
//!    new columns ⊇ T's columns ?  else ColumnsConflict (a schema change is never undone)
//!    remove: each short must be active      → removed_version = N+1
//!    add:    each short / global ref new    → added_version = N+1
//!    version row N+1 (its own EP files, added, removed), T.current_version = N+1
//!
//!  versions of T:   [oldest retained ............ current]
//!                    ^ drop_versions_before(v)     ^ rollback_table_to(v) moves it back
//! ```
//!
//! A micro-partition is active at version `v` when `added_version <= v` and it was not
//! removed at or before `v`. The active set of any retained version is read from the
//! index, without replaying metadata files: the table's **active rows**
//! (`tbl/<t>/mpa/<short>`, a copy of each active micro-partition's row, kept in step by
//! every change below) give the current set by reading only active files, and an older
//! version `v` is that set minus what was added after `v`, plus what the version rows
//! after `v` removed — so the cost is the active set and the changes since `v`, never the
//! removed files a long history leaves in the index. Rollback undoes versions through their rows'
//! `added`/`removed` lists, so it costs the size of the undone changes, not of the table.
//!
//! # Retention and the metadata files
//!
//! The volume alone must be able to rebuild every retained version (DESIGN.md §2: version
//! N is the metadata files of commits 1..N replayed in order). So a version row dropped by
//! retention does not take its metadata files with it: it moves to the table's **retired**
//! rows, and [`MetaTxn::ep_files_at`] lists the retired rows' files before the retained
//! ones. A retired row is released — its files may be deleted, then the row forgotten —
//! only when replaying without it gives the same active set at every retained version:
//!
//! ```text
//!  retired rows, oldest first:   r1   r2   r3 ...        retained: [oldest ... current]
//!  kept(r) = r added a micro-partition still active at `oldest`
//!         or r removed one that a kept row added (else replay would resurrect it)
//!  releasable = the retired rows that are not kept    (one pass in commit order)
//! ```
//!
//! A removal only ever names a file added by an earlier commit, so one pass in commit order
//! decides every row.

use std::collections::BTreeSet;

use tern_storage::layout::{GlobalFileRef, ShortName, TableId};

use crate::dpo::{EpFileRef, GlobalFileEntry, MicroPartitionDpo, TableDpo, TableVersionDpo};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::MetaTxn;

/// What [`MetaTxn::rollback_table_to`] undid: the caller deletes the files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolledBack {
    /// The version rows dropped (newest first): their EP files are no longer referenced.
    pub versions: Vec<TableVersionDpo>,
    /// The micro-partitions deleted from the index (added after the target version).
    pub deleted: Vec<MicroPartitionDpo>,
    /// Micro-partitions removed after the target version and active again.
    pub restored: Vec<ShortName>,
}

impl RolledBack {
    /// The paths of the files nothing references any more: the deleted micro-partitions
    /// and the dropped versions' metadata files.
    pub fn unreferenced_paths(&self) -> Vec<String> {
        self.deleted
            .iter()
            .map(|m| m.path.clone())
            .chain(
                self.versions
                    .iter()
                    .flat_map(|v| v.ep_files.iter().map(|e| e.path.clone())),
            )
            .collect()
    }
}

fn mp_name(table: &TableId, short: &ShortName) -> String {
    format!("{table}/{short}")
}

impl MetaTxn<'_> {
    /// Commit version `new.version` of `table` on top of `expected_current`: the version
    /// row `new`, the micro-partitions `add` (their `added_version` must be the new
    /// version) and the removal of the active micro-partitions `remove`, atomically with
    /// `current_version = new.version` (and the table's columns = `new.columns`).
    ///
    /// A local commit makes `expected_current + 1`. A replicated commit may jump further:
    /// a replica's versions mirror its primary's, and a refresh collapses the versions it
    /// skipped into one (the versions in between are never readable there).
    ///
    /// Compare-and-swap: [`Error::VersionConflict`] if the table is no longer at
    /// `expected_current`; [`Error::ColumnsConflict`] if `new.columns` lacks a column the
    /// table has now (a schema change is never undone by a later commit).
    /// [`Error::NotFound`] for an unknown table or a `remove` name that is unknown or not
    /// active; [`Error::AlreadyExists`] for an `add` whose short name or global reference
    /// is taken. `new.added` / `new.removed` are filled in from `add` /
    /// `remove`.
    #[tracing::instrument(level = "debug", skip_all, fields(%table, expected_current, adds = add.len(), removes = remove.len()))]
    pub fn commit_table_version(
        &mut self,
        table: &TableId,
        expected_current: u64,
        mut new: TableVersionDpo,
        add: &[MicroPartitionDpo],
        remove: &[ShortName],
    ) -> Result<()> {
        let mut t = self
            .get_table(table)?
            .filter(|t| !t.dropped)
            .ok_or_else(|| Error::not_found("table", table))?;
        if t.current_version != expected_current {
            return Err(Error::VersionConflict {
                table: table.clone(),
                expected: expected_current,
                found: t.current_version,
            });
        }
        let version = new.version;
        if new.table != *table || version <= expected_current {
            return Err(Error::invalid(
                "table version",
                format!(
                    "expected a row for {table} after version {expected_current}, got {}@{}",
                    new.table, new.version
                ),
            ));
        }
        // A version never drops a column of the one it replaces: a change computed from
        // older columns must have been rebased onto the current ones (or be refused here),
        // never overwrite a schema change it did not see.
        let missing: Vec<String> = t
            .columns
            .iter()
            .filter(|c| !new.columns.contains(c))
            .map(|c| c.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(Error::ColumnsConflict {
                table: table.clone(),
                current: expected_current,
                version,
                missing,
            });
        }
        // Validate everything before the first write.
        let mut removed = Vec::with_capacity(remove.len());
        let mut seen = BTreeSet::new();
        for short in remove {
            let mp = self
                .get::<MicroPartitionDpo>(&keys::micro_partition(table, short))?
                .filter(|m| m.removed_version.is_none() && seen.insert(short))
                .ok_or_else(|| Error::not_found("micro-partition", mp_name(table, short)))?;
            removed.push(mp);
        }
        let mut shorts = BTreeSet::new();
        let mut refs = BTreeSet::new();
        for mp in add {
            if mp.table != *table || mp.added_version != version || mp.removed_version.is_some() {
                return Err(Error::invalid(
                    "micro-partition",
                    format!(
                        "{}: must belong to {table}, be added at version {version} and not removed",
                        mp_name(&mp.table, &mp.short)
                    ),
                ));
            }
            if !shorts.insert(&mp.short)
                || self.contains(&keys::micro_partition(table, &mp.short))?
            {
                return Err(Error::already_exists(
                    "micro-partition",
                    mp_name(table, &mp.short),
                ));
            }
            if !refs.insert(&mp.global_ref)
                || self.contains(&keys::global_file(table, &mp.global_ref))?
            {
                return Err(Error::already_exists(
                    "global file reference",
                    &mp.global_ref,
                ));
            }
        }
        for mut mp in removed {
            mp.removed_version = Some(version);
            self.put(&keys::micro_partition(table, &mp.short), &mp)?;
            self.delete(&keys::active_micro_partition(table, &mp.short))?;
        }
        for mp in add {
            self.put(&keys::micro_partition(table, &mp.short), mp)?;
            self.put(&keys::active_micro_partition(table, &mp.short), mp)?;
            self.put(
                &keys::global_file(table, &mp.global_ref),
                &GlobalFileEntry {
                    table: table.clone(),
                    short: mp.short.clone(),
                },
            )?;
        }
        new.added = add.iter().map(|m| m.short.clone()).collect();
        new.removed = remove.to_vec();
        self.put(&keys::table_version(table, version), &new)?;
        t.current_version = version;
        t.columns = new.columns;
        self.put(&keys::table(table), &t)
    }

    /// Drift repair without a new version (replication): put back the index entries `add`
    /// (with their global references; they keep their `added_version`) and end the entries
    /// `remove` at the current version. For a replica whose index lost or gained entries
    /// behind its back while its version already equals its primary's; a normal change
    /// always commits a version.
    pub fn repair_micro_partitions(
        &mut self,
        table: &TableId,
        add: &[MicroPartitionDpo],
        remove: &[ShortName],
    ) -> Result<()> {
        let t = self.require_table(table)?;
        for mp in add {
            if mp.table != *table || mp.added_version > t.current_version {
                return Err(Error::invalid(
                    "micro-partition",
                    format!(
                        "{}: must belong to {table} and be added at or before version {}",
                        mp_name(&mp.table, &mp.short),
                        t.current_version
                    ),
                ));
            }
            self.put(&keys::micro_partition(table, &mp.short), mp)?;
            if mp.removed_version.is_none() {
                self.put(&keys::active_micro_partition(table, &mp.short), mp)?;
            } else {
                self.delete(&keys::active_micro_partition(table, &mp.short))?;
            }
            self.put(
                &keys::global_file(table, &mp.global_ref),
                &GlobalFileEntry {
                    table: table.clone(),
                    short: mp.short.clone(),
                },
            )?;
        }
        for short in remove {
            let key = keys::micro_partition(table, short);
            if let Some(mut mp) = self.get::<MicroPartitionDpo>(&key)?
                && mp.removed_version.is_none()
            {
                mp.removed_version = Some(t.current_version);
                self.put(&key, &mp)?;
                self.delete(&keys::active_micro_partition(table, short))?;
            }
        }
        Ok(())
    }

    /// A retained version row.
    pub fn get_table_version(
        &mut self,
        table: &TableId,
        version: u64,
    ) -> Result<Option<TableVersionDpo>> {
        self.get(&keys::table_version(table, version))
    }

    /// The retained version rows of a table, oldest first.
    pub fn table_versions(&mut self, table: &TableId) -> Result<Vec<TableVersionDpo>> {
        Ok(self
            .scan_prefix(&keys::table_versions(table))?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// The oldest version still retained (0 until [`drop_versions_before`] dropped some).
    ///
    /// [`drop_versions_before`]: MetaTxn::drop_versions_before
    pub fn oldest_retained_version(&mut self, table: &TableId) -> Result<u64> {
        let (start, end) = keys::table_versions(table).prefix_range();
        match self.first_in::<TableVersionDpo>(&start, &end)? {
            Some((_, v)) => Ok(v.version),
            None => Err(Error::not_found("table", table)),
        }
    }

    /// The row of `version`, which must be retained (between the oldest retained version
    /// and the current one).
    fn require_version(&mut self, table: &TableId, version: u64) -> Result<TableVersionDpo> {
        self.get_table_version(table, version)?.ok_or_else(|| {
            Error::not_found("table version", format!("{table}@{version} (not retained)"))
        })
    }

    /// The metadata files of the commits up to `version`, in commit order: the files of the
    /// retired rows (dropped by retention, still needed to rebuild a retained version; see
    /// the module docs), then the retained version rows' own files. Replaying them gives
    /// the active set of `version`.
    pub fn ep_files_at(&mut self, table: &TableId, version: u64) -> Result<Vec<EpFileRef>> {
        self.require_version(table, version)?;
        let mut files: Vec<EpFileRef> = self
            .retired_versions(table)?
            .into_iter()
            .flat_map(|v| v.ep_files)
            .collect();
        let start = keys::table_versions(table).as_bytes().to_vec();
        let end = keys::table_version(table, version).as_bytes().to_vec();
        self.for_each::<TableVersionDpo>(start, &crate::key::successor(&end), |_, v| {
            files.extend(v.ep_files);
            Ok(true)
        })?;
        Ok(files)
    }

    /// The retired rows of `table` (version rows dropped by retention whose metadata files
    /// are kept), oldest first.
    pub fn retired_versions(&mut self, table: &TableId) -> Result<Vec<TableVersionDpo>> {
        Ok(self
            .scan_prefix(&keys::retired_versions(table))?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// The retired rows no retained version needs any more (see the module docs): their
    /// metadata files may be deleted, then the rows forgotten with
    /// [`MetaTxn::forget_retired_versions`]. Oldest first.
    pub fn releasable_retired_versions(&mut self, table: &TableId) -> Result<Vec<TableVersionDpo>> {
        let oldest = self.oldest_retained_version(table)?;
        let mut kept_adds: BTreeSet<ShortName> = BTreeSet::new();
        let mut releasable = Vec::new();
        for row in self.retired_versions(table)? {
            let mut live = false;
            for short in &row.added {
                let mp = self.get::<MicroPartitionDpo>(&keys::micro_partition(table, short))?;
                if mp.is_some_and(|m| m.is_active_at(oldest)) {
                    live = true;
                    break;
                }
            }
            let removes_kept = row.removed.iter().any(|s| kept_adds.contains(s));
            if live || removes_kept {
                kept_adds.extend(row.added.iter().cloned());
            } else {
                releasable.push(row);
            }
        }
        Ok(releasable)
    }

    /// Forget retired rows (after their metadata files are deleted). [`Error::InUse`] if one
    /// is still needed to rebuild a retained version; [`Error::NotFound`] if one is not a
    /// retired row.
    pub fn forget_retired_versions(&mut self, table: &TableId, versions: &[u64]) -> Result<()> {
        let releasable: BTreeSet<u64> = self
            .releasable_retired_versions(table)?
            .into_iter()
            .map(|v| v.version)
            .collect();
        for &version in versions {
            let key = keys::retired_version(table, version);
            if !self.contains(&key)? {
                return Err(Error::not_found(
                    "retired table version",
                    format!("{table}@{version}"),
                ));
            }
            if !releasable.contains(&version) {
                return Err(Error::InUse {
                    what: "metadata file",
                    name: format!("{table}@{version}"),
                    by: "a retained version is rebuilt from it".into(),
                });
            }
        }
        for &version in versions {
            self.delete(&keys::retired_version(table, version))?;
        }
        Ok(())
    }

    /// The micro-partitions that make up `table` at `version` (a retained version), ordered
    /// by short name. Reads the active rows, and for an older version the version rows
    /// after it and the files they removed (see the module docs): never the whole index.
    #[tracing::instrument(level = "debug", skip(self))]
    pub fn active_micro_partitions(
        &mut self,
        table: &TableId,
        version: u64,
    ) -> Result<Vec<MicroPartitionDpo>> {
        let mut out = Vec::new();
        let extra = self.each_active_at(table, version, |mp| out.push(mp))?;
        if extra {
            out.sort_by(|a, b| a.short.cmp(&b.short));
        }
        Ok(out)
    }

    /// The short names of the micro-partitions that make up `table` at `version`, ordered:
    /// [`MetaTxn::active_micro_partitions`] without holding the rows (each is read and
    /// dropped). What a large table's snapshot lists in one consistent read (a name is a
    /// few dozen bytes, a row with its statistics and path a few hundred), its rows then
    /// read a page at a time with [`MetaTxn::get_micro_partition`] — a row of a file
    /// active at a retained version stays while that version is retained.
    pub fn active_short_names(&mut self, table: &TableId, version: u64) -> Result<Vec<ShortName>> {
        let mut out = Vec::new();
        let extra = self.each_active_at(table, version, |mp| out.push(mp.short))?;
        if extra {
            out.sort();
        }
        Ok(out)
    }

    /// Calls `f` with each micro-partition of `table` at `version`: the active rows in
    /// short-name order, then (for an older version) the files removed after it, so
    /// whether any came out of order (`true`: the caller sorts).
    fn each_active_at(
        &mut self,
        table: &TableId,
        version: u64,
        mut f: impl FnMut(MicroPartitionDpo),
    ) -> Result<bool> {
        self.require_version(table, version)?;
        let (start, end) = keys::active_micro_partitions(table).prefix_range();
        self.for_each::<MicroPartitionDpo>(start, &end, |_, mp| {
            if mp.is_active_at(version) {
                f(mp);
            }
            Ok(true)
        })?;
        // Files removed after `version` were active at it when they were added by then.
        let start = crate::key::successor(keys::table_version(table, version).as_bytes());
        let (_, end) = keys::table_versions(table).prefix_range();
        let mut removed_later = BTreeSet::new();
        self.for_each::<TableVersionDpo>(start, &end, |_, v| {
            removed_later.extend(v.removed);
            Ok(true)
        })?;
        let mut extra = false;
        for short in removed_later {
            if let Some(mp) = self.get_micro_partition(table, &short)?
                && mp.is_active_at(version)
            {
                f(mp);
                extra = true;
            }
        }
        Ok(extra)
    }

    /// Fill in the active rows of every table from the index (a store written before they
    /// existed: the SQLite backend's migration 3). Reads every micro-partition row once;
    /// idempotent.
    pub(crate) fn index_active_micro_partitions(&mut self) -> Result<usize> {
        use crate::key::{Element, Key};
        let (mut start, end) = Key::root("tbl").prefix_range();
        let mut active = Vec::new();
        loop {
            let chunk = self.raw().scan(&start, &end, 1024)?;
            let full = chunk.len() == 1024;
            let Some((last, _)) = chunk.last() else { break };
            start = crate::key::successor(last);
            for (k, v) in chunk {
                let key = Key::from_bytes(k);
                let elements = key.elements()?;
                let [
                    _,
                    Element::Str(table),
                    Element::Str(kind),
                    Element::Str(short),
                ] = elements.as_slice()
                else {
                    continue;
                };
                if kind != "mp" {
                    continue;
                }
                let mp: MicroPartitionDpo = crate::envelope::decode(&key, &v)?;
                if mp.removed_version.is_none() {
                    let table =
                        TableId::new(table.as_str()).map_err(|e| Error::invalid("table id", e))?;
                    let short = ShortName::new(short.as_str())
                        .map_err(|e| Error::invalid("short name", e))?;
                    active.push((keys::active_micro_partition(&table, &short), v));
                }
            }
            if !full {
                break;
            }
        }
        for (k, v) in &active {
            self.raw().put(k.as_bytes(), v)?;
        }
        Ok(active.len())
    }

    /// A micro-partition of `table` by short name (removed ones included).
    pub fn get_micro_partition(
        &mut self,
        table: &TableId,
        short: &ShortName,
    ) -> Result<Option<MicroPartitionDpo>> {
        self.get(&keys::micro_partition(table, short))
    }

    /// A micro-partition of `table` by global file reference (through the secondary
    /// index; references are unique per table).
    pub fn find_micro_partition(
        &mut self,
        table: &TableId,
        global_ref: &GlobalFileRef,
    ) -> Result<Option<MicroPartitionDpo>> {
        match self.get::<GlobalFileEntry>(&keys::global_file(table, global_ref))? {
            Some(e) => self.get_micro_partition(&e.table, &e.short),
            None => Ok(None),
        }
    }

    /// Every micro-partition in the index for `table`, removed ones included.
    pub fn list_micro_partitions(&mut self, table: &TableId) -> Result<Vec<MicroPartitionDpo>> {
        Ok(self
            .scan_prefix(&keys::micro_partitions(table))?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// Micro-partitions no retained version refers to (removed at or before the oldest
    /// retained version): their files may be deleted, then the entries forgotten with
    /// [`MetaTxn::forget_micro_partitions`].
    pub fn unreferenced_micro_partitions(
        &mut self,
        table: &TableId,
    ) -> Result<Vec<MicroPartitionDpo>> {
        let oldest = self.oldest_retained_version(table)?;
        let mut all = self.list_micro_partitions(table)?;
        all.retain(|m| m.removed_version.is_some_and(|r| r <= oldest));
        Ok(all)
    }

    /// Delete index entries of unreferenced micro-partitions (after their files are gone).
    /// [`Error::InUse`] if one is still referenced by a retained version.
    pub fn forget_micro_partitions(&mut self, table: &TableId, shorts: &[ShortName]) -> Result<()> {
        let oldest = self.oldest_retained_version(table)?;
        let mut doomed = Vec::with_capacity(shorts.len());
        for short in shorts {
            let mp: MicroPartitionDpo = self
                .get(&keys::micro_partition(table, short))?
                .ok_or_else(|| Error::not_found("micro-partition", mp_name(table, short)))?;
            if mp.removed_version.is_none_or(|r| r > oldest) {
                return Err(Error::InUse {
                    what: "micro-partition",
                    name: mp_name(table, short),
                    by: format!("retained versions from {oldest} refer to it"),
                });
            }
            doomed.push(mp);
        }
        for mp in doomed {
            self.delete(&keys::micro_partition(table, &mp.short))?;
            self.delete(&keys::active_micro_partition(table, &mp.short))?;
            self.delete(&keys::global_file(table, &mp.global_ref))?;
        }
        Ok(())
    }

    /// Move `table` back to `version` (a retained version): drop the version rows after
    /// it, delete the micro-partitions added after it, make the ones removed after it
    /// active again, restore its columns. Returns what was undone so the caller can delete
    /// the files. A no-op at the current version.
    #[tracing::instrument(level = "debug", skip(self))]
    pub fn rollback_table_to(&mut self, table: &TableId, version: u64) -> Result<RolledBack> {
        let mut t: TableDpo = self
            .get_table(table)?
            .filter(|t| !t.dropped)
            .ok_or_else(|| Error::not_found("table", table))?;
        if version > t.current_version {
            return Err(Error::invalid(
                "rollback",
                format!(
                    "{table} is at version {}, cannot roll forward to {version}",
                    t.current_version
                ),
            ));
        }
        let target = self.require_version(table, version)?;
        let mut undone = RolledBack::default();
        let start = crate::key::successor(keys::table_version(table, version).as_bytes());
        let (_, end) = keys::table_versions(table).prefix_range();
        self.for_each::<TableVersionDpo>(start, &end, |_, v| {
            undone.versions.push(v);
            Ok(true)
        })?;
        undone.versions.reverse();
        let added: BTreeSet<&ShortName> = undone.versions.iter().flat_map(|v| &v.added).collect();
        let removed: BTreeSet<&ShortName> =
            undone.versions.iter().flat_map(|v| &v.removed).collect();
        for short in removed.difference(&added) {
            let key = keys::micro_partition(table, short);
            let mut mp: MicroPartitionDpo = self
                .get(&key)?
                .ok_or_else(|| Error::not_found("micro-partition", mp_name(table, short)))?;
            mp.removed_version = None;
            self.put(&key, &mp)?;
            self.put(&keys::active_micro_partition(table, short), &mp)?;
            undone.restored.push((*short).clone());
        }
        for short in &added {
            let key = keys::micro_partition(table, short);
            if let Some(mp) = self.get::<MicroPartitionDpo>(&key)? {
                self.delete(&key)?;
                self.delete(&keys::active_micro_partition(table, short))?;
                self.delete(&keys::global_file(table, &mp.global_ref))?;
                undone.deleted.push(mp);
            }
        }
        for v in &undone.versions {
            self.delete(&keys::table_version(table, v.version))?;
        }
        t.current_version = version;
        t.columns = target.columns;
        self.put(&keys::table(table), &t)?;
        Ok(undone)
    }

    /// Retention: drop the version rows older than `version` (which must be retained and
    /// not after the current version). Returns the dropped rows. Their metadata files are
    /// **not** free yet: rows with files become retired rows, released by
    /// [`MetaTxn::releasable_retired_versions`] once no retained version needs them.
    /// Micro-partitions removed at or before `version` become
    /// [unreferenced](MetaTxn::unreferenced_micro_partitions).
    pub fn drop_versions_before(
        &mut self,
        table: &TableId,
        version: u64,
    ) -> Result<Vec<TableVersionDpo>> {
        self.require_table(table)?;
        self.require_version(table, version)?;
        let start = keys::table_versions(table).as_bytes().to_vec();
        let end = keys::table_version(table, version).as_bytes().to_vec();
        let mut dropped = Vec::new();
        self.for_each::<TableVersionDpo>(start, &end, |_, v| {
            dropped.push(v);
            Ok(true)
        })?;
        for v in &dropped {
            self.delete(&keys::table_version(table, v.version))?;
            if !v.ep_files.is_empty() {
                self.put(&keys::retired_version(table, v.version), v)?;
            }
        }
        Ok(dropped)
    }
}
