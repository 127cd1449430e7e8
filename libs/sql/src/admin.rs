//! The replication statements (Snowflake's, as the seed names them), recognised by
//! their leading keywords and parsed with sqlparser's tokenizer and parser (Snowflake
//! dialect); none of them is planned by DataFusion. The daemon maps each onto the same
//! operation as its JSON API:
//!
//! | statement | operation |
//! |---|---|
//! | `SHOW DEPLOYMENTS` | the deployments linked with this one |
//! | `ALTER ACCOUNT a SET GLOBAL [GROUP = 'g']` | the account joins an account group (operator) |
//! | `SHOW GLOBAL ACCOUNTS` | every account of the caller's account group |
//! | `ALTER DATABASE d ENABLE REPLICATION [TO ACCOUNTS a, dep.b]` | `d` becomes a group's primary; only the listed accounts may replicate it |
//! | `ALTER DATABASE d DISABLE REPLICATION` | the group is dissolved |
//! | `CREATE DATABASE r AS REPLICA OF 'group' \| dep.acct.db [FROM dep]` | a secondary replica |
//! | `SHOW GLOBAL DATABASES` | every replica of the account group's databases |
//! | `ALTER DATABASE r REFRESH` | ask the upstream for a refresh now |
//! | `ALTER DATABASE r PRIMARY [ALLOW DATA LOSS]` | failover: promote this replica |
//! | `SHOW REPLICATION STATUS` | the replication status (operator) |

use datafusion::sql::sqlparser::dialect::SnowflakeDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::SqlError;

/// Where a replica's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaSource {
    /// A database replication group, by id.
    Group(String),
    /// A replica by where it is: deployment, account, database.
    Database {
        /// The deployment holding it.
        deployment: String,
        /// Its account.
        account: String,
        /// Its name.
        database: String,
    },
}

/// A replication statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// `CREATE DEPLOYMENT id [REGION = 'r'] [CLOUD = 'c'] [URL = 'u'] [GENESIS = 'json']`.
    CreateDeployment {
        /// The deployment's id.
        id: String,
        /// Its region.
        region: String,
        /// Its cloud.
        cloud: String,
        /// Its replication bucket URL (default: from the daemon's `[[peers]]` entry).
        url: String,
        /// The genesis of its channel to us (JSON), if it made one already.
        genesis: Option<String>,
    },
    /// `SHOW DEPLOYMENTS`.
    ShowDeployments,
    /// `ALTER ACCOUNT a SET GLOBAL [GROUP = 'g']`.
    SetGlobal {
        /// The account.
        account: String,
        /// The account group to join (a new one when none).
        group: Option<String>,
    },
    /// `SHOW GLOBAL ACCOUNTS`.
    ShowGlobalAccounts,
    /// `ALTER DATABASE d ENABLE REPLICATION [TO ACCOUNTS …]`.
    EnableReplication {
        /// The database.
        database: String,
        /// The accounts allowed (`account` or `deployment.account`); `None`: unchanged.
        accounts: Option<Vec<String>>,
    },
    /// `ALTER DATABASE d DISABLE REPLICATION`.
    DisableReplication {
        /// The database.
        database: String,
    },
    /// `CREATE DATABASE r AS REPLICA OF … [FROM upstream]`.
    CreateReplica {
        /// The new database's name.
        name: String,
        /// What it replicates.
        source: ReplicaSource,
        /// The deployment to replicate from (default: the primary's).
        upstream: Option<String>,
    },
    /// `SHOW GLOBAL DATABASES`.
    ShowGlobalDatabases,
    /// `ALTER DATABASE r REFRESH`.
    Refresh {
        /// The replica.
        database: String,
    },
    /// `ALTER DATABASE r PRIMARY [ALLOW DATA LOSS]`.
    Primary {
        /// The replica to promote.
        database: String,
        /// Promote even if writes of the old primary may be lost.
        allow_data_loss: bool,
    },
    /// `SHOW REPLICATION STATUS`.
    ShowReplicationStatus,
}

impl Admin {
    /// Whether only the operator token may run it (as its JSON API).
    pub fn operator_only(&self) -> bool {
        matches!(
            self,
            Admin::CreateDeployment { .. } | Admin::SetGlobal { .. } | Admin::ShowReplicationStatus
        )
    }
}

/// The statement's leading words, upper-cased (at most `n`).
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let dialect = SnowflakeDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return Vec::new();
    };
    tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(n)
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        })
        .collect()
}

/// A replication statement, when `sql` is one (`Ok(None)`: a statement for DataFusion).
/// A statement that starts as one but is malformed is an error naming what was
/// expected and where.
pub fn parse(sql: &str) -> Result<Option<Admin>, SqlError> {
    let w = leading_words(sql, 6);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let ours = match w.as_slice() {
        ["SHOW", "DEPLOYMENTS" | "GLOBAL" | "REPLICATION", ..] => true,
        ["ALTER", "ACCOUNT" | "DATABASE", ..] => true,
        ["CREATE", "DEPLOYMENT", ..] => true,
        // `CREATE DATABASE x AS REPLICA …` (a plain CREATE DATABASE is DataFusion's).
        ["CREATE", "DATABASE", _, "AS", ..] => true,
        _ => false,
    };
    if !ours {
        return Ok(None);
    }
    let dialect = SnowflakeDialect {};
    let mut p = Parser::new(&dialect)
        .try_with_sql(sql)
        .map_err(|e| SqlError::Parse(e.to_string()))?;
    let stmt = statement(&mut p).map_err(|e| SqlError::Parse(e.to_string()))?;
    // One statement, optionally ended by `;`.
    while p.consume_token(&Token::SemiColon) {}
    let next = p.peek_token();
    if next.token != Token::EOF {
        return Err(SqlError::Parse(format!(
            "unexpected {} after the statement{}",
            next.token, next.span.start
        )));
    }
    Ok(Some(stmt))
}

/// Consumes the (unquoted) word `word` if it is next.
fn word(p: &mut Parser<'_>, word: &str) -> bool {
    match &p.peek_token().token {
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word) => {
            p.next_token();
            true
        }
        _ => false,
    }
}

fn expect(p: &mut Parser<'_>, words: &[&str]) -> Result<(), ParserError> {
    for w in words {
        if !word(p, w) {
            let found: TokenWithSpan = p.peek_token();
            return p.expected(w, found);
        }
    }
    Ok(())
}

fn one_of<T>(p: &mut Parser<'_>, what: &str) -> Result<T, ParserError> {
    let found = p.peek_token();
    p.expected(what, found)
}

/// A name: an identifier or a quoted string.
fn name(p: &mut Parser<'_>) -> Result<String, ParserError> {
    if let Token::SingleQuotedString(s) = &p.peek_token().token {
        let s = s.clone();
        p.next_token();
        return Ok(s);
    }
    Ok(p.parse_identifier()?.value)
}

/// Dot-separated names (`acct`, `dep.acct`, `dep.acct.db`).
fn dotted(p: &mut Parser<'_>) -> Result<Vec<String>, ParserError> {
    let mut parts = vec![name(p)?];
    while p.consume_token(&Token::Period) {
        parts.push(name(p)?);
    }
    Ok(parts)
}

fn statement(p: &mut Parser<'_>) -> Result<Admin, ParserError> {
    if word(p, "SHOW") {
        if word(p, "DEPLOYMENTS") {
            return Ok(Admin::ShowDeployments);
        }
        if word(p, "GLOBAL") {
            if word(p, "ACCOUNTS") {
                return Ok(Admin::ShowGlobalAccounts);
            }
            if word(p, "DATABASES") {
                return Ok(Admin::ShowGlobalDatabases);
            }
            return one_of(p, "ACCOUNTS or DATABASES");
        }
        expect(p, &["REPLICATION", "STATUS"])?;
        return Ok(Admin::ShowReplicationStatus);
    }
    if word(p, "ALTER") {
        if word(p, "ACCOUNT") {
            let account = name(p)?;
            expect(p, &["SET", "GLOBAL"])?;
            let group = if word(p, "GROUP") {
                let _ = p.consume_token(&Token::Eq);
                Some(name(p)?)
            } else {
                None
            };
            return Ok(Admin::SetGlobal { account, group });
        }
        expect(p, &["DATABASE"])?;
        let database = name(p)?;
        if word(p, "ENABLE") {
            expect(p, &["REPLICATION"])?;
            let accounts = if word(p, "TO") {
                expect(p, &["ACCOUNTS"])?;
                let list = p.parse_comma_separated(|p| {
                    let parts = dotted(p)?;
                    if parts.len() > 2 {
                        return Err(ParserError::ParserError(format!(
                            "account {} has {} parts: name `account` or `deployment.account`",
                            parts.join("."),
                            parts.len()
                        )));
                    }
                    Ok(parts.join("."))
                })?;
                Some(list)
            } else {
                None
            };
            return Ok(Admin::EnableReplication { database, accounts });
        }
        if word(p, "DISABLE") {
            expect(p, &["REPLICATION"])?;
            return Ok(Admin::DisableReplication { database });
        }
        if word(p, "REFRESH") {
            return Ok(Admin::Refresh { database });
        }
        if word(p, "PRIMARY") {
            let allow_data_loss = word(p, "ALLOW");
            if allow_data_loss {
                expect(p, &["DATA", "LOSS"])?;
            }
            return Ok(Admin::Primary {
                database,
                allow_data_loss,
            });
        }
        return one_of(
            p,
            "ENABLE REPLICATION, DISABLE REPLICATION, REFRESH or PRIMARY",
        );
    }
    expect(p, &["CREATE"])?;
    if word(p, "DEPLOYMENT") {
        let id = name(p)?;
        let (mut region, mut cloud, mut url, mut genesis) =
            (String::new(), String::new(), String::new(), None);
        loop {
            let slot = if word(p, "REGION") {
                &mut region
            } else if word(p, "CLOUD") {
                &mut cloud
            } else if word(p, "URL") {
                &mut url
            } else if word(p, "GENESIS") {
                let _ = p.consume_token(&Token::Eq);
                genesis = Some(name(p)?);
                continue;
            } else {
                break;
            };
            let _ = p.consume_token(&Token::Eq);
            *slot = name(p)?;
        }
        return Ok(Admin::CreateDeployment {
            id,
            region,
            cloud,
            url,
            genesis,
        });
    }
    expect(p, &["DATABASE"])?;
    let name_ = name(p)?;
    expect(p, &["AS", "REPLICA", "OF"])?;
    let parts = dotted(p)?;
    let source = match <[String; 3]>::try_from(parts) {
        Ok([deployment, account, database]) => ReplicaSource::Database {
            deployment,
            account,
            database,
        },
        Err(parts) if parts.len() == 1 => ReplicaSource::Group(parts[0].clone()),
        Err(parts) => {
            return Err(ParserError::ParserError(format!(
                "replica of {}: name a group ('id') or deployment.account.database",
                parts.join(".")
            )));
        }
    };
    let upstream = if word(p, "FROM") {
        Some(name(p)?)
    } else {
        None
    };
    Ok(Admin::CreateReplica {
        name: name_,
        source,
        upstream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> Admin {
        parse(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: not recognised"))
    }

    fn bad(sql: &str) -> String {
        match parse(sql) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{sql}: parsed as {v:?}"),
        }
    }

    #[test]
    fn the_seed_statements_map_onto_operations() {
        assert_eq!(ok("show deployments"), Admin::ShowDeployments);
        assert_eq!(
            ok("ALTER ACCOUNT acme SET GLOBAL;"),
            Admin::SetGlobal {
                account: "acme".into(),
                group: None
            }
        );
        assert_eq!(
            ok("alter account acme set global group = 'g-1'"),
            Admin::SetGlobal {
                account: "acme".into(),
                group: Some("g-1".into())
            }
        );
        assert_eq!(ok("SHOW GLOBAL ACCOUNTS"), Admin::ShowGlobalAccounts);
        assert_eq!(ok("show global databases;"), Admin::ShowGlobalDatabases);
        assert_eq!(
            ok("ALTER DATABASE sales ENABLE REPLICATION TO ACCOUNTS bob, d2.eve"),
            Admin::EnableReplication {
                database: "sales".into(),
                accounts: Some(vec!["bob".into(), "d2.eve".into()])
            }
        );
        assert_eq!(
            ok("alter database sales enable replication"),
            Admin::EnableReplication {
                database: "sales".into(),
                accounts: None
            }
        );
        assert_eq!(
            ok("alter database sales disable replication"),
            Admin::DisableReplication {
                database: "sales".into()
            }
        );
        assert_eq!(
            ok("CREATE DATABASE copy AS REPLICA OF d1.acme.sales"),
            Admin::CreateReplica {
                name: "copy".into(),
                source: ReplicaSource::Database {
                    deployment: "d1".into(),
                    account: "acme".into(),
                    database: "sales".into()
                },
                upstream: None
            }
        );
        assert_eq!(
            ok("create database copy as replica of '0b7f-uuid' from d2"),
            Admin::CreateReplica {
                name: "copy".into(),
                source: ReplicaSource::Group("0b7f-uuid".into()),
                upstream: Some("d2".into())
            }
        );
        assert_eq!(
            ok("ALTER DATABASE copy REFRESH"),
            Admin::Refresh {
                database: "copy".into()
            }
        );
        assert_eq!(
            ok("alter database copy primary allow data loss"),
            Admin::Primary {
                database: "copy".into(),
                allow_data_loss: true
            }
        );
        assert_eq!(ok("SHOW REPLICATION STATUS"), Admin::ShowReplicationStatus);
        assert_eq!(
            ok("CREATE DEPLOYMENT d2 REGION = 'eu-west' URL = 'file:///b' GENESIS = '{}'"),
            Admin::CreateDeployment {
                id: "d2".into(),
                region: "eu-west".into(),
                cloud: String::new(),
                url: "file:///b".into(),
                genesis: Some("{}".into())
            }
        );
        assert!(ok("create deployment d3").operator_only());
        assert!(Admin::ShowReplicationStatus.operator_only());
        assert!(!Admin::ShowGlobalDatabases.operator_only());
    }

    #[test]
    fn other_statements_are_left_to_datafusion() {
        for sql in [
            "select 1",
            "SHOW TABLES",
            "CREATE DATABASE plain",
            "create table t (a int)",
            "",
        ] {
            assert_eq!(parse(sql).unwrap(), None, "{sql}");
        }
    }

    #[test]
    fn bad_statements_name_the_problem() {
        let e = bad("SHOW GLOBAL TABLES");
        assert!(
            e.contains("Expected: ACCOUNTS or DATABASES, found: TABLES"),
            "{e}"
        );
        let e = bad("alter database sales enable replication to accounts");
        assert!(e.contains("Expected: identifier"), "{e}");
        let e = bad("alter database sales enable replication to accounts a.b.c");
        assert!(e.contains("account a.b.c has 3 parts"), "{e}");
        let e = bad("alter database sales vacuum");
        assert!(
            e.contains(
                "ENABLE REPLICATION, DISABLE REPLICATION, REFRESH or PRIMARY, found: vacuum"
            ),
            "{e}"
        );
        let e = bad("create database copy as replica of d1.sales");
        assert!(e.contains("replica of d1.sales: name a group"), "{e}");
        let e = bad("alter database copy refresh now");
        assert!(
            e.contains("unexpected now after the statement at Line: 1, Column: 29"),
            "{e}"
        );
        let e = bad("alter account acme set local");
        assert!(e.contains("Expected: GLOBAL, found: local"), "{e}");
        let e = bad("create deployment d3 zone = 'x'");
        assert!(e.contains("unexpected zone after the statement"), "{e}");
        assert!(bad("show replication").contains("Expected: STATUS"));
    }
}
