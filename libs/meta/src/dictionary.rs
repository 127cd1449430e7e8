//! Deployments, accounts, databases, schemas and tables: create / update / get / list /
//! drop, with uniqueness and reference checks and the name indexes kept in step.

use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};

use crate::dpo::{
    AccountDpo, DatabaseDpo, DatabaseNameEntry, DeploymentDpo, SchemaDpo, TableDpo, TableNameEntry,
    TableVersionDpo,
};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::MetaTxn;

impl MetaTxn<'_> {
    // ---- deployments ----

    /// Add a member of the deployment group; [`Error::AlreadyExists`] if known.
    pub fn add_deployment(&mut self, d: &DeploymentDpo) -> Result<()> {
        let key = keys::deployment(&d.id);
        if self.contains(&key)? {
            return Err(Error::already_exists("deployment", &d.id));
        }
        self.put(&key, d)
    }

    /// Replace a known deployment's record; [`Error::NotFound`] if unknown.
    pub fn update_deployment(&mut self, d: &DeploymentDpo) -> Result<()> {
        let key = keys::deployment(&d.id);
        if !self.contains(&key)? {
            return Err(Error::not_found("deployment", &d.id));
        }
        self.put(&key, d)
    }

    /// A deployment of the group.
    pub fn get_deployment(&mut self, id: &DeploymentId) -> Result<Option<DeploymentDpo>> {
        self.get(&keys::deployment(id))
    }

    /// The deployment group, ordered by id.
    pub fn list_deployments(&mut self) -> Result<Vec<DeploymentDpo>> {
        Ok(values(self.scan_prefix(&keys::deployments())?))
    }

    /// Remove a deployment from the group; whether it was there.
    pub fn remove_deployment(&mut self, id: &DeploymentId) -> Result<bool> {
        let key = keys::deployment(id);
        let existed = self.contains(&key)?;
        self.delete(&key)?;
        Ok(existed)
    }

    // ---- accounts ----

    /// Create an account; [`Error::AlreadyExists`] if the name is taken.
    pub fn create_account(&mut self, a: &AccountDpo) -> Result<()> {
        let key = keys::account(&a.name);
        if self.contains(&key)? {
            return Err(Error::already_exists("account", &a.name));
        }
        self.put(&key, a)
    }

    /// Replace an account's record; [`Error::NotFound`] if unknown.
    pub fn update_account(&mut self, a: &AccountDpo) -> Result<()> {
        let key = keys::account(&a.name);
        if !self.contains(&key)? {
            return Err(Error::not_found("account", &a.name));
        }
        self.put(&key, a)
    }

    /// An account.
    pub fn get_account(&mut self, name: &AccountId) -> Result<Option<AccountDpo>> {
        self.get(&keys::account(name))
    }

    /// All accounts, ordered by name.
    pub fn list_accounts(&mut self) -> Result<Vec<AccountDpo>> {
        Ok(values(self.scan_prefix(&keys::accounts())?))
    }

    /// Remove an account; [`Error::InUse`] while it has databases that are not dropped.
    pub fn remove_account(&mut self, name: &AccountId) -> Result<bool> {
        if self.any_under(&keys::database_names(name))? {
            return Err(Error::InUse {
                what: "account",
                name: name.to_string(),
                by: "it still has databases".into(),
            });
        }
        let key = keys::account(name);
        let existed = self.contains(&key)?;
        self.delete(&key)?;
        Ok(existed)
    }

    // ---- databases ----

    /// Create a database. Its account must exist; its id and its `(account, name)` must be
    /// free ([`Error::AlreadyExists`]).
    pub fn create_database(&mut self, d: &DatabaseDpo) -> Result<()> {
        if d.dropped {
            return Err(Error::invalid(
                "database",
                "cannot create a dropped database",
            ));
        }
        if !self.contains(&keys::account(&d.account))? {
            return Err(Error::not_found("account", &d.account));
        }
        let key = keys::database(&d.id);
        if self.contains(&key)? {
            return Err(Error::already_exists("database", &d.id));
        }
        self.claim_database_name(d)?;
        self.put(&key, d)
    }

    /// Replace a database's record: rename, role change, drop/undrop. The account cannot
    /// change; the epoch cannot go down ([`Error::StaleEpoch`]); a new name must be free.
    pub fn update_database(&mut self, d: &DatabaseDpo) -> Result<()> {
        let key = keys::database(&d.id);
        let old: DatabaseDpo = self
            .get(&key)?
            .ok_or_else(|| Error::not_found("database", &d.id))?;
        if old.account != d.account {
            return Err(Error::invalid(
                "database",
                format!("{}: the account cannot change", d.id),
            ));
        }
        if d.epoch < old.epoch {
            return Err(Error::StaleEpoch {
                database: d.id.clone(),
                current: old.epoch,
                offered: d.epoch,
            });
        }
        let old_live = !old.dropped;
        let new_live = !d.dropped;
        let renamed = old.name != d.name;
        let claim = new_live && (!old_live || renamed);
        if claim {
            self.check_database_name_free(d)?;
        }
        if old_live && (!new_live || renamed) {
            self.delete(&keys::database_name(&old.account, &old.name))?;
        }
        if claim {
            self.claim_database_name(d)?;
        }
        self.put(&key, d)
    }

    fn check_database_name_free(&mut self, d: &DatabaseDpo) -> Result<()> {
        if self.contains(&keys::database_name(&d.account, &d.name))? {
            return Err(Error::already_exists(
                "database",
                format!("{}/{}", d.account, d.name),
            ));
        }
        Ok(())
    }

    fn claim_database_name(&mut self, d: &DatabaseDpo) -> Result<()> {
        self.check_database_name_free(d)?;
        self.put(
            &keys::database_name(&d.account, &d.name),
            &DatabaseNameEntry { id: d.id.clone() },
        )
    }

    /// A database by id (dropped ones included).
    pub fn get_database(&mut self, id: &DatabaseId) -> Result<Option<DatabaseDpo>> {
        self.get(&keys::database(id))
    }

    /// The database of `account` called `name` that is not dropped.
    pub fn find_database(
        &mut self,
        account: &AccountId,
        name: &str,
    ) -> Result<Option<DatabaseDpo>> {
        match self.get::<DatabaseNameEntry>(&keys::database_name(account, name))? {
            Some(e) => self.get_database(&e.id),
            None => Ok(None),
        }
    }

    /// The databases of `account`, dropped ones included, ordered by id.
    pub fn list_databases(&mut self, account: &AccountId) -> Result<Vec<DatabaseDpo>> {
        let mut out = values::<DatabaseDpo>(self.scan_prefix(&keys::databases())?);
        out.retain(|d| &d.account == account);
        Ok(out)
    }

    /// Mark a database dropped (it keeps its row; its name becomes free).
    pub fn drop_database(&mut self, id: &DatabaseId) -> Result<DatabaseDpo> {
        let mut d = self
            .get_database(id)?
            .filter(|d| !d.dropped)
            .ok_or_else(|| Error::not_found("database", id))?;
        d.dropped = true;
        self.update_database(&d)?;
        Ok(d)
    }

    fn require_live_database(&mut self, id: &DatabaseId) -> Result<DatabaseDpo> {
        self.get_database(id)?
            .filter(|d| !d.dropped)
            .ok_or_else(|| Error::not_found("database", id))
    }

    // ---- schemas ----

    /// Create a schema in a database that is not dropped; [`Error::AlreadyExists`] if the
    /// name is taken there.
    pub fn create_schema(&mut self, s: &SchemaDpo) -> Result<()> {
        self.require_live_database(&s.database)?;
        let key = keys::schema(&s.database, &s.name);
        if self.contains(&key)? {
            return Err(Error::already_exists(
                "schema",
                format!("{}/{}", s.database, s.name),
            ));
        }
        self.put(&key, s)
    }

    /// A schema.
    pub fn get_schema(&mut self, db: &DatabaseId, name: &str) -> Result<Option<SchemaDpo>> {
        self.get(&keys::schema(db, name))
    }

    /// The schemas of a database, ordered by name.
    pub fn list_schemas(&mut self, db: &DatabaseId) -> Result<Vec<SchemaDpo>> {
        Ok(values(self.scan_prefix(&keys::schemas(db))?))
    }

    /// Remove a schema; [`Error::InUse`] while it holds tables that are not dropped.
    pub fn remove_schema(&mut self, db: &DatabaseId, name: &str) -> Result<bool> {
        if self.any_under(&keys::table_names_in_schema(db, name))? {
            return Err(Error::InUse {
                what: "schema",
                name: format!("{db}/{name}"),
                by: "it still has tables".into(),
            });
        }
        let key = keys::schema(db, name);
        let existed = self.contains(&key)?;
        self.delete(&key)?;
        Ok(existed)
    }

    // ---- tables ----

    /// Create a table at version 0 (also writes its version-0 row: no files, the creation
    /// columns). Its database (not dropped) and schema must exist; its id and its
    /// `(database, schema, name)` must be free.
    pub fn create_table(&mut self, t: &TableDpo) -> Result<()> {
        if t.dropped || t.current_version != 0 {
            return Err(Error::invalid(
                "table",
                format!(
                    "{}: a new table is not dropped and starts at version 0",
                    t.id
                ),
            ));
        }
        self.require_live_database(&t.database)?;
        if !self.contains(&keys::schema(&t.database, &t.schema))? {
            return Err(Error::not_found(
                "schema",
                format!("{}/{}", t.database, t.schema),
            ));
        }
        let key = keys::table(&t.id);
        if self.contains(&key)? {
            return Err(Error::already_exists("table", &t.id));
        }
        self.claim_table_name(t)?;
        self.put(&key, t)?;
        self.put(
            &keys::table_version(&t.id, 0),
            &TableVersionDpo {
                table: t.id.clone(),
                version: 0,
                ep_files: Vec::new(),
                committed_at_ms: t.created_at_ms,
                txn_id: None,
                origin: None,
                columns: t.columns.clone(),
                added: Vec::new(),
                removed: Vec::new(),
            },
        )
    }

    /// Replace a table's record: rename, move to another schema of its database, retention,
    /// key reference, drop/undrop. Not its version or columns (those change only by a
    /// commit: [`MetaTxn::commit_table_version`]).
    pub fn update_table(&mut self, t: &TableDpo) -> Result<()> {
        let key = keys::table(&t.id);
        let old: TableDpo = self
            .get(&key)?
            .ok_or_else(|| Error::not_found("table", &t.id))?;
        if old.database != t.database
            || old.current_version != t.current_version
            || old.columns != t.columns
        {
            return Err(Error::invalid(
                "table",
                format!(
                    "{}: database, current version and columns change only by a commit",
                    t.id
                ),
            ));
        }
        let old_live = !old.dropped;
        let new_live = !t.dropped;
        let renamed = old.schema != t.schema || old.name != t.name;
        let claim = new_live && (!old_live || renamed);
        if claim {
            if !self.contains(&keys::schema(&t.database, &t.schema))? {
                return Err(Error::not_found(
                    "schema",
                    format!("{}/{}", t.database, t.schema),
                ));
            }
            self.check_table_name_free(t)?;
        }
        if old_live && (!new_live || renamed) {
            self.delete(&keys::table_name(&old.database, &old.schema, &old.name))?;
        }
        if claim {
            self.claim_table_name(t)?;
        }
        self.put(&key, t)
    }

    fn check_table_name_free(&mut self, t: &TableDpo) -> Result<()> {
        if self.contains(&keys::table_name(&t.database, &t.schema, &t.name))? {
            return Err(Error::already_exists(
                "table",
                format!("{}/{}/{}", t.database, t.schema, t.name),
            ));
        }
        Ok(())
    }

    fn claim_table_name(&mut self, t: &TableDpo) -> Result<()> {
        self.check_table_name_free(t)?;
        self.put(
            &keys::table_name(&t.database, &t.schema, &t.name),
            &TableNameEntry { id: t.id.clone() },
        )
    }

    /// A table by id (dropped ones included).
    pub fn get_table(&mut self, id: &TableId) -> Result<Option<TableDpo>> {
        self.get(&keys::table(id))
    }

    /// The table `schema.name` of a database that is not dropped.
    pub fn find_table(
        &mut self,
        db: &DatabaseId,
        schema: &str,
        name: &str,
    ) -> Result<Option<TableDpo>> {
        match self.get::<TableNameEntry>(&keys::table_name(db, schema, name))? {
            Some(e) => self.get_table(&e.id),
            None => Ok(None),
        }
    }

    /// The tables of a database that are not dropped, ordered by schema then name.
    pub fn list_tables(&mut self, db: &DatabaseId) -> Result<Vec<TableDpo>> {
        let entries = values::<TableNameEntry>(self.scan_prefix(&keys::table_names(db))?);
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(self.require_table(&e.id)?);
        }
        Ok(out)
    }

    /// Every table of the store, dropped ones included, ordered by id: one seek per table
    /// (the rows under `tbl/<id>/` other than its definition are skipped, not read), for
    /// rare whole-store walks such as re-wrapping table keys.
    pub fn list_all_tables(&mut self) -> Result<Vec<TableDpo>> {
        let (mut start, end) = keys::all_tables().prefix_range();
        let mut out = Vec::new();
        while let Some((k, _)) = self.raw().scan(&start, &end, 1)?.pop() {
            let key = crate::key::Key::from_bytes(k);
            let id = match key.elements()?.get(1) {
                Some(crate::key::Element::Str(id)) => TableId::new(id.as_str())
                    .map_err(|e| Error::invalid("table", format!("stored id {id:?}: {e}")))?,
                _ => {
                    return Err(Error::MalformedKey {
                        key: key.to_string(),
                        reason: "expected a table id after tbl",
                    });
                }
            };
            if let Some(t) = self.get_table(&id)? {
                out.push(t);
            }
            start = keys::table_rows(&id).prefix_range().1;
        }
        Ok(out)
    }

    /// Mark a table dropped (it keeps its rows; its name becomes free).
    pub fn drop_table(&mut self, id: &TableId) -> Result<TableDpo> {
        let mut t = self
            .get_table(id)?
            .filter(|t| !t.dropped)
            .ok_or_else(|| Error::not_found("table", id))?;
        t.dropped = true;
        self.update_table(&t)?;
        Ok(t)
    }

    pub(crate) fn require_table(&mut self, id: &TableId) -> Result<TableDpo> {
        self.get_table(id)?
            .ok_or_else(|| Error::not_found("table", id))
    }
}

fn values<D>(entries: Vec<(crate::Key, D)>) -> Vec<D> {
    entries.into_iter().map(|(_, d)| d).collect()
}
