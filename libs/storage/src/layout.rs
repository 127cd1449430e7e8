//! Names of every object Tern stores (DESIGN.md §3), built from validated names.
//!
//! ```text
//! volume bucket of D:
//!   acct/<account>/db/<db>/tbl/<table>/mp/<short>.mp           encrypted Parquet
//!   acct/<account>/db/<db>/tbl/<table>/ep/<commit-seq:020>.ep  encrypted metadata file
//!   acct/<account>/txlog/<txn-id:020>.log                      transaction log records
//! replication bucket of D:
//!   from/<P>/msg/<seq:020>.msg                     message files, one chain per sender P
//!   from/<P>/body/<message-id>/<n>                 message body files
//!   from/<P>/inbound/<response-id>/<global-ref>    re-encrypted MP/EP copies for D
//! ```
//!
//! Numbers are zero-padded to 20 digits so that a listing's lexical order is numeric
//! order. Names are restricted to characters that are safe in every object store and in a
//! file system path (no `/`, no `.` at the start, no spaces), so a name can never escape
//! its prefix. Callers never format object paths themselves.

use std::fmt;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Checks a name against its kind's rule: 1 to `max_len` bytes of ASCII letters, digits
/// and the `extra` characters, starting with a letter or digit. The error states the rule
/// (`rule`), whichever part was broken.
fn check_name(
    what: &'static str,
    value: &str,
    max_len: usize,
    extra: &[u8],
    rule: &'static str,
) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max_len
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            value: value.to_string(),
            reason: rule,
        })
    }
}

/// The rule of every name a user gives (accounts, databases, schemas, tables, tokens).
pub const IDENTIFIER_RULE: &str =
    "use 1 to 63 ASCII letters, digits, '_' or '-', starting with a letter or digit";

/// Checks a user-given name (`what`: "database name", "table name", …) against
/// [`IDENTIFIER_RULE`], the rule of account names, so that one rule holds everywhere.
pub fn check_identifier(what: &'static str, value: &str) -> Result<()> {
    check_name(what, value, 63, b"-_", IDENTIFIER_RULE)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $extra:expr, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validate and wrap a name.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                check_name($what, &value, $max, $extra, $rule)?;
                Ok(Self(value))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
    };
}

/// The rule of the ids Tern makes itself (databases, tables, files, messages).
const ID_RULE: &str =
    "use 1 to 64 ASCII letters, digits, '_' or '-', starting with a letter or digit";

name_type!(
    /// A deployment id: a short slug such as `aws-us-west-2` or `d1`.
    DeploymentId, "deployment id", 63, b"-",
    "use 1 to 63 ASCII letters, digits or '-', starting with a letter or digit"
);
name_type!(
    /// An account name inside a deployment.
    AccountId, "account name", 63, b"-_", IDENTIFIER_RULE
);
name_type!(
    /// A database id (stable across renames).
    DatabaseId, "database id", 64, b"-_", ID_RULE
);
name_type!(
    /// A table id (stable across renames).
    TableId, "table id", 64, b"-_", ID_RULE
);
name_type!(
    /// A deployment-local micro-partition name (`fdn27`, imported: `fdn25_g`).
    ShortName, "short name", 64, b"-_", ID_RULE
);
name_type!(
    /// A message id (unique per sender).
    MessageId, "message id", 64, b"-_", ID_RULE
);
name_type!(
    /// The id of a snapshot response or replication batch whose files share an inbound folder.
    ResponseId, "response id", 64, b"-_", ID_RULE
);

/// A micro-partition's name across the deployment group: `(origin deployment, short name)`.
/// Imported micro-partitions keep their original reference.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct GlobalFileRef {
    /// The deployment that first wrote the file.
    pub origin: DeploymentId,
    /// Its short name there.
    pub short: ShortName,
}

impl GlobalFileRef {
    /// A reference from its parts.
    pub fn new(origin: DeploymentId, short: ShortName) -> Self {
        Self { origin, short }
    }

    /// The single path segment used for this reference (`<origin>.<short>`): neither part
    /// may contain `.`, so it parses back unambiguously.
    pub fn segment(&self) -> String {
        format!("{}.{}", self.origin, self.short)
    }

    /// Parse a segment made by [`GlobalFileRef::segment`].
    pub fn parse_segment(segment: &str) -> Result<Self> {
        let (origin, short) = segment.split_once('.').ok_or_else(|| Error::InvalidName {
            what: "global file reference",
            value: segment.to_string(),
            reason: "expected <origin>.<short>",
        })?;
        Ok(Self {
            origin: DeploymentId::new(origin)?,
            short: ShortName::new(short)?,
        })
    }
}

impl fmt::Display for GlobalFileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.origin, self.short)
    }
}

fn seq(n: u64) -> String {
    format!("{n:020}")
}

/// Parse `<digits:020><suffix>` back to its number.
fn parse_seq(file_name: &str, suffix: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn path(parts: &[&str]) -> Path {
    // Every part is a validated name or a formatted number: no `/`, never empty.
    Path::from_iter(parts.iter().copied())
}

/// Paths in a deployment's volume bucket.
pub mod volume {
    use super::*;

    /// `acct/<account>/`: everything of one account.
    pub fn account_prefix(account: &AccountId) -> Path {
        path(&["acct", account.as_str()])
    }

    /// `acct/<account>/db/<db>/tbl/<table>/`: everything of one table.
    pub fn table_prefix(account: &AccountId, db: &DatabaseId, table: &TableId) -> Path {
        path(&[
            "acct",
            account.as_str(),
            "db",
            db.as_str(),
            "tbl",
            table.as_str(),
        ])
    }

    /// `…/tbl/<table>/mp/`: the table's micro-partitions.
    pub fn mp_prefix(account: &AccountId, db: &DatabaseId, table: &TableId) -> Path {
        table_prefix(account, db, table).join("mp")
    }

    /// `…/tbl/<table>/mp/<short>.mp`: one micro-partition.
    pub fn mp(account: &AccountId, db: &DatabaseId, table: &TableId, short: &ShortName) -> Path {
        mp_in(&mp_prefix(account, db, table), short)
    }

    /// `<prefix>/<short>.mp`: a micro-partition in a table's [`mp_prefix`].
    pub fn mp_in(prefix: &Path, short: &ShortName) -> Path {
        prefix.clone().join(format!("{short}.mp"))
    }

    /// `fdn<n>`: the short name of the micro-partition this deployment numbered `n` (from
    /// its `short_name` sequence).
    pub fn numbered_mp(n: u64) -> ShortName {
        ShortName(format!("fdn{n}"))
    }

    /// `…/tbl/<table>/ep/`: the table's metadata files.
    pub fn ep_prefix(account: &AccountId, db: &DatabaseId, table: &TableId) -> Path {
        table_prefix(account, db, table).join("ep")
    }

    /// `…/tbl/<table>/ep/<commit-seq:020>.ep`: the metadata file of one commit.
    pub fn ep(account: &AccountId, db: &DatabaseId, table: &TableId, commit_seq: u64) -> Path {
        ep_prefix(account, db, table).join(format!("{}.ep", seq(commit_seq)))
    }

    /// `acct/<account>/txlog/`: the account's transaction log.
    pub fn txlog_prefix(account: &AccountId) -> Path {
        account_prefix(account).join("txlog")
    }

    /// `acct/<account>/txlog/<txn-id:020>.log`: one transaction log record.
    pub fn txlog(account: &AccountId, txn_id: u64) -> Path {
        txlog_prefix(account).join(format!("{}.log", seq(txn_id)))
    }

    /// The transaction id of a log record path's last segment, if it is one.
    pub fn parse_txlog(file_name: &str) -> Option<u64> {
        parse_seq(file_name, ".log")
    }

    /// The commit sequence number of a metadata file's last segment, if it is one.
    pub fn parse_ep(file_name: &str) -> Option<u64> {
        parse_seq(file_name, ".ep")
    }

    /// The short name of a micro-partition path's last segment, if it is one.
    pub fn parse_mp(file_name: &str) -> Option<ShortName> {
        file_name
            .strip_suffix(".mp")
            .and_then(|s| ShortName::new(s).ok())
    }
}

/// Paths in a deployment's replication bucket. `peer` is always the *sender*: peer P
/// writes only below `from/P/` of the receiver's bucket.
pub mod replication {
    use super::*;

    /// `from/<peer>/`: the sub-bucket peer P may write into.
    pub fn sub_bucket(peer: &DeploymentId) -> Path {
        path(&["from", peer.as_str()])
    }

    /// `from/<peer>/msg/`: P's chain of message files.
    pub fn msg_prefix(peer: &DeploymentId) -> Path {
        sub_bucket(peer).join("msg")
    }

    /// `from/<peer>/msg/<seq:020>.msg`: one message file.
    pub fn msg(peer: &DeploymentId, seq_no: u64) -> Path {
        msg_prefix(peer).join(format!("{}.msg", seq(seq_no)))
    }

    /// The sequence number of a message file's last segment, if it is one.
    pub fn parse_msg(file_name: &str) -> Option<u64> {
        parse_seq(file_name, ".msg")
    }

    /// `from/<peer>/body/<message-id>/`: the body files of one message.
    pub fn body_prefix(peer: &DeploymentId, message: &MessageId) -> Path {
        sub_bucket(peer).join("body").join(message.as_str())
    }

    /// `from/<peer>/body/<message-id>/<n>`: body file number `n` of a message.
    pub fn body(peer: &DeploymentId, message: &MessageId, n: u32) -> Path {
        body_prefix(peer, message).join(n.to_string())
    }

    /// `from/<peer>/inbound/<response-id>/`: the inbound stage of one response.
    pub fn inbound_prefix(peer: &DeploymentId, response: &ResponseId) -> Path {
        sub_bucket(peer).join("inbound").join(response.as_str())
    }

    /// `from/<peer>/inbound/<response-id>/<origin>.<short>`: one re-encrypted file copy.
    pub fn inbound(peer: &DeploymentId, response: &ResponseId, file: &GlobalFileRef) -> Path {
        inbound_prefix(peer, response).join(file.segment())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (AccountId, DatabaseId, TableId) {
        (
            AccountId::new("acme").unwrap(),
            DatabaseId::new("db-7").unwrap(),
            TableId::new("t_1").unwrap(),
        )
    }

    #[test]
    fn volume_paths_follow_the_design() {
        let (a, d, t) = ids();
        let s = ShortName::new("fdn27").unwrap();
        assert_eq!(
            volume::mp(&a, &d, &t, &s).as_ref(),
            "acct/acme/db/db-7/tbl/t_1/mp/fdn27.mp"
        );
        assert_eq!(
            volume::ep(&a, &d, &t, 42).as_ref(),
            "acct/acme/db/db-7/tbl/t_1/ep/00000000000000000042.ep"
        );
        assert_eq!(
            volume::txlog(&a, 7).as_ref(),
            "acct/acme/txlog/00000000000000000007.log"
        );
        assert_eq!(volume::parse_txlog("00000000000000000007.log"), Some(7));
        assert_eq!(volume::parse_ep("00000000000000000042.ep"), Some(42));
        assert_eq!(volume::parse_mp("fdn27.mp"), Some(s));
        assert_eq!(volume::parse_txlog("7.log"), None);
    }

    #[test]
    fn replication_paths_follow_the_design() {
        let p = DeploymentId::new("aws-us-west-2").unwrap();
        let m = MessageId::new("m-1").unwrap();
        let r = ResponseId::new("r9").unwrap();
        let g = GlobalFileRef::new(
            DeploymentId::new("d1").unwrap(),
            ShortName::new("fdn25").unwrap(),
        );
        assert_eq!(
            replication::msg(&p, 3).as_ref(),
            "from/aws-us-west-2/msg/00000000000000000003.msg"
        );
        assert_eq!(
            replication::body(&p, &m, 0).as_ref(),
            "from/aws-us-west-2/body/m-1/0"
        );
        assert_eq!(
            replication::inbound(&p, &r, &g).as_ref(),
            "from/aws-us-west-2/inbound/r9/d1.fdn25"
        );
        assert_eq!(GlobalFileRef::parse_segment(&g.segment()).unwrap(), g);
        assert_eq!(replication::parse_msg("00000000000000000003.msg"), Some(3));
    }

    #[test]
    fn names_cannot_escape_their_prefix() {
        for bad in ["", "..", "a/b", "a b", ".hidden", "ü", "x\n"] {
            assert!(DeploymentId::new(bad).is_err(), "{bad:?} accepted");
            assert!(ShortName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            DeploymentId::new("d_1").is_err(),
            "underscore is not a slug character"
        );
        assert!(DeploymentId::new("x".repeat(64)).is_err());
        match AccountId::new("a/b") {
            Err(Error::InvalidName { what, .. }) => assert_eq!(what, "account name"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_error_states_the_rule_and_one_rule_holds_for_user_names() {
        for bad in ["", "a b", "-x", &"y".repeat(64)] {
            let e = AccountId::new(bad).expect_err(bad).to_string();
            assert!(e.contains(IDENTIFIER_RULE), "{bad:?}: {e}");
            let e = check_identifier("table name", bad)
                .expect_err(bad)
                .to_string();
            assert!(
                e.contains("table name") && e.contains(IDENTIFIER_RULE),
                "{e}"
            );
        }
        for good in ["acme", "sales_copy", "d-1", "A9", &"z".repeat(63)] {
            assert!(AccountId::new(good).is_ok() && check_identifier("x", good).is_ok());
        }
        let e = DeploymentId::new("d_1")
            .expect_err("underscore")
            .to_string();
        assert!(e.contains("'-'") && !e.contains("'_'"), "{e}");
    }

    #[test]
    fn names_round_trip_through_serde() {
        let d: DeploymentId = serde_json::from_str("\"d1\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"d1\"");
        assert!(serde_json::from_str::<DeploymentId>("\"../x\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn sequence_numbers_sort_lexically(a in 0u64..u64::MAX, b in 0u64..u64::MAX) {
            let p = DeploymentId::new("d1").unwrap();
            let (pa, pb) = (replication::msg(&p, a), replication::msg(&p, b));
            proptest::prop_assert_eq!(a.cmp(&b), pa.as_ref().cmp(pb.as_ref()));
            let name = pa.filename().unwrap().to_string();
            proptest::prop_assert_eq!(replication::parse_msg(&name), Some(a));
        }
    }
}
