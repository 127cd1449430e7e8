//! Connections (DESIGN.md §10, client redirect): a global object of an account group that
//! names a database group; resolving it through any member of the account group gives the
//! group's current primary deployment and its API URL, so clients that connect through it
//! follow a failover. Connections travel with the other global entities.

use serde::{Deserialize, Serialize};
use tern_meta::{DatabaseRole, Key, impl_dpo};
use tern_storage::layout::{AccountId, DeploymentId};

use crate::error::{Error, Result};
use crate::failover::{PeerDpo, fkeys};
use crate::model::EntityKind;
use crate::service::{Replication, mark_dirty};

/// A connection made on this deployment (`repl/conn/<account>/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionDpo {
    /// Its account.
    pub account: AccountId,
    /// Its name (unique in the account group).
    pub name: String,
    /// The database group it sends clients to.
    pub group: String,
    /// When it was made.
    pub created_at_ms: i64,
}
impl_dpo!(ConnectionDpo, "connection");

/// Keys.
pub mod keys {
    use super::*;

    /// `repl/conn/<account>/<name>`.
    pub fn connection(account: &AccountId, name: &str) -> Key {
        of_account(account).str(name)
    }
    /// The connections of `account`.
    pub fn of_account(account: &AccountId) -> Key {
        Key::root("repl").str("conn").str(account.as_str())
    }
}

/// A connection and where it leads now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// Its name.
    pub name: String,
    /// The database group.
    pub group: String,
    /// The deployment holding the group's primary (the newest epoch known here).
    pub primary: Option<DeploymentId>,
    /// That epoch.
    pub epoch: u64,
    /// The primary's API URL, when it published one.
    pub url: Option<String>,
    /// The deployment the connection was made on.
    pub made_on: DeploymentId,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("connection name {name:?}"),
            "must be 1 to 63 characters of a-z, 0-9, _ and -",
        ))
    }
}

impl Replication {
    /// This deployment's public API URL, when it has one.
    pub fn public_url(&self) -> Option<String> {
        self.inner
            .public_url
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Uses `url` as the public API URL unless one was configured (the daemon passes the
    /// address it listens on).
    pub fn default_public_url(&self, url: String) {
        let mut u = self
            .inner
            .public_url
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if u.is_none() {
            *u = Some(url);
        }
    }

    /// `create connection <name> for <group>` in global `account`: clients resolving it
    /// are sent to the group's current primary.
    pub fn create_connection(
        &self,
        account: &AccountId,
        name: &str,
        group: &str,
    ) -> Result<ConnectionView> {
        check_name(name)?;
        let entities = self.known_entities()?;
        let a = self
            .meta()
            .read(|tx| tx.get_account(account))?
            .ok_or_else(|| Error::NotFound {
                what: "account",
                name: account.to_string(),
            })?;
        let tern_meta::AccountKind::Global { group_id } = &a.kind else {
            return Err(Error::invalid(
                format!("account {account}"),
                "is local: connections belong to global accounts",
            ));
        };
        if !entities.iter().any(|e| {
            e.kind == EntityKind::Database
                && e.group.as_deref() == Some(group)
                && &e.account_group == group_id
        }) {
            return Err(Error::NotFound {
                what: "database group of the account's group",
                name: group.to_string(),
            });
        }
        if entities.iter().any(|e| {
            e.kind == EntityKind::Connection
                && e.name.as_deref() == Some(name)
                && &e.account_group == group_id
        }) {
            return Err(Error::invalid(
                format!("connection {name}"),
                "exists in the account group already",
            ));
        }
        let now = self.now();
        self.meta().write(|tx| {
            tx.put(
                &keys::connection(account, name),
                &ConnectionDpo {
                    account: account.clone(),
                    name: name.to_string(),
                    group: group.to_string(),
                    created_at_ms: now,
                },
            )?;
            mark_dirty(tx)
        })?;
        self.inner.control_wake.notify_one();
        self.resolve_connection(account, name)
    }

    /// Every connection of `account`'s account group, resolved.
    pub fn connections(&self, account: &AccountId) -> Result<Vec<ConnectionView>> {
        let Some(group_id) = self.account_group_of(account)? else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = self
            .known_entities()?
            .into_iter()
            .filter(|e| e.kind == EntityKind::Connection && e.account_group == group_id)
            .filter_map(|e| e.name)
            .collect();
        names.sort();
        names.dedup();
        names
            .iter()
            .map(|n| self.resolve_connection(account, n))
            .collect()
    }

    /// Where connection `name` of `account`'s account group leads now: the deployment
    /// holding the newest epoch's primary of its group, and that deployment's URL.
    pub fn resolve_connection(&self, account: &AccountId, name: &str) -> Result<ConnectionView> {
        let group_id = self.account_group_of(account)?;
        let entities = self.known_entities()?;
        let conn = entities
            .iter()
            .find(|e| {
                e.kind == EntityKind::Connection
                    && e.name.as_deref() == Some(name)
                    && Some(&e.account_group) == group_id.as_ref()
            })
            .ok_or_else(|| Error::NotFound {
                what: "connection",
                name: name.to_string(),
            })?;
        let group = conn.group.clone().unwrap_or_default();
        let primary = entities
            .iter()
            .filter(|e| {
                e.kind == EntityKind::Database
                    && e.group.as_deref() == Some(group.as_str())
                    && e.role == Some(DatabaseRole::Primary)
            })
            .max_by_key(|e| e.epoch);
        let (primary, epoch) = match primary {
            Some(e) => (Some(e.deployment.clone()), e.epoch),
            None => (None, 0),
        };
        let url = match &primary {
            Some(p) if p == self.me() => self.public_url(),
            Some(p) => self
                .meta()
                .read(|tx| tx.get::<PeerDpo>(&fkeys::peer(p)))?
                .and_then(|p| p.url),
            None => None,
        };
        Ok(ConnectionView {
            name: name.to_string(),
            group,
            primary,
            epoch,
            url,
            made_on: conn.deployment.clone(),
        })
    }

    fn account_group_of(&self, account: &AccountId) -> Result<Option<String>> {
        let a = self
            .meta()
            .read(|tx| tx.get_account(account))?
            .ok_or_else(|| Error::NotFound {
                what: "account",
                name: account.to_string(),
            })?;
        Ok(match a.kind {
            tern_meta::AccountKind::Global { group_id } => Some(group_id),
            tern_meta::AccountKind::Local => None,
        })
    }
}
