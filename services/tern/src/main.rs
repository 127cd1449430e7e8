//! `tern`: the Tern command-line interface.
//!
//! Most commands talk to a running `ternd` through its HTTP JSON API (`--url`/`TERN_URL`,
//! `--token`/`TERN_TOKEN`); results print as aligned tables, or as JSON with `--json`
//! (scans also as CSV with `--csv`). Tables are named `account.database.schema.table`
//! (`account.database.table` means schema `public`). `tern demo` runs a whole group of
//! daemons on local folders through a failover and back; `tern selfcheck` exercises the
//! libraries without a daemon (it runs the `tern-selfcheck` binary beside `tern`).
//!
//! The CLI is a thin client: it links no engine crate (so that its build is small), and
//! the answers it shows are read as the `tern-api` types `ternd` writes them with.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tern_api as api;

mod client;
mod demo;
mod link;
mod monitor;
mod output;
mod profile;
mod sql;
mod wait;

use client::{Client, ClientError};

/// Where the daemon is when neither a flag, a variable nor a profile says.
const DEFAULT_URL: &str = "http://127.0.0.1:7420";

/// What `tern --help` says after the commands.
const AFTER_HELP: &str = "\
Profiles: --profile NAME (or TERN_PROFILE) takes url, token or token_file, ca, client_cert,
client_key and timeout from [profiles.NAME] in $TERN_CONFIG_FILE, else
~/.config/tern/config.toml (its default_profile when none is named). A flag or its
variable overrides the profile. Keep tokens out of the command line: TERN_TOKEN or a
profile's token_file.

Exit status: 0 success; 1 any other failure (internal error, answer not understood);
2 invalid input (bad arguments, files or request: HTTP 400/413/422); 3 not found (404);
4 conflict (409: exists already, write to a replica, fenced primary); 5 unavailable or
unreachable (503/429, connection failed or timed out: retry later); 6 not allowed
(401 unknown, expired or revoked token; 403 token of another account or read-only).";

/// Tern: database replication and failover between regions through object storage.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The daemon's API (default http://127.0.0.1:7420, or the profile's url).
    #[arg(long, env = "TERN_URL", global = true)]
    url: Option<String>,
    /// A named profile of the profiles file (see below).
    #[arg(long, env = "TERN_PROFILE", global = true)]
    profile: Option<String>,
    /// Give up on a request after this long (`30s`, `5m`); none by default (loads and
    /// scans may take long). Connecting gives up after 10 s regardless.
    #[arg(long, env = "TERN_TIMEOUT", global = true, value_name = "DURATION")]
    timeout: Option<String>,
    /// Bearer token: the operator's, or an account's.
    #[arg(long, env = "TERN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the daemon's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Send the command to the current primary of a connection (`account/name`): it is
    /// resolved through the first reachable daemon of `--url` (a comma-separated list of
    /// members), so commands follow a failover.
    #[arg(long, env = "TERN_CONNECTION", global = true)]
    connection: Option<String>,
    /// Trust only this CA (PEM) for an `https://` daemon, e.g. one whose certificate your
    /// own CA signed.
    #[arg(long, env = "TERN_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A client certificate (PEM) for a daemon that requires one (`api.tls.client_ca`);
    /// with --client-key.
    #[arg(long, env = "TERN_CLIENT_CERT", global = true, value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "TERN_CLIENT_KEY", global = true, value_name = "FILE")]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accounts (operator).
    #[command(subcommand)]
    Account(AccountCmd),
    /// A deployment group as a whole: link every pair of its members.
    #[command(subcommand)]
    Group(GroupCmd),
    /// An account's tokens: make (read-only, expiring), list, revoke (operator).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Databases of an account.
    #[command(subcommand)]
    Database(DatabaseCmd),
    /// Schemas of a database.
    #[command(subcommand)]
    Schema(SchemaCmd),
    /// Tables: create, drop, add a column.
    #[command(subcommand)]
    Table(TableCmd),
    /// Show tables, versions, deployments.
    #[command(subcommand)]
    Show(ShowCmd),
    /// Connections: global names of a database group's current primary.
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Conflict records: what an old primary committed past a failover, kept for failback.
    #[command(subcommand)]
    Conflicts(ConflictsCmd),
    /// Copy (snapshot) and import jobs: list them, retry or abandon a failed one.
    #[command(subcommand)]
    Replication(ReplicationCmd),
    /// Received messages whose handler failed: list them, retry or discard one.
    #[command(subcommand)]
    Messages(MessagesCmd),
    /// SQL on a database (`POST /v1/sql`): queries, DML, DDL. Without a statement,
    /// statements (each ending with `;`) are read from standard input: an interactive
    /// shell on a terminal or with `-i`.
    Sql {
        /// account.database (just account for the replication statements:
        /// `SHOW GLOBAL DATABASES`, `CREATE DATABASE r AS REPLICA OF dep.acct.db`, …)
        database: String,
        /// The statement(s).
        sql: Option<String>,
        /// Print CSV instead of a table (`--json` prints the JSON lines).
        #[arg(long)]
        csv: bool,
        /// The interactive shell even when standard input is not a terminal (prompts,
        /// history in ~/.local/state/tern/sql_history or $TERN_SQL_HISTORY, \q).
        #[arg(short = 'i', long, conflicts_with = "sql")]
        interactive: bool,
    },
    /// Insert JSON rows (an array of objects, from --rows or stdin).
    Insert {
        /// account.database[.schema].table
        table: String,
        /// The rows as JSON; read from stdin when absent.
        #[arg(long)]
        rows: Option<String>,
        #[command(flatten)]
        key: Idempotency,
    },
    /// Load CSV (with a header), NDJSON or Parquet files; one commit per file.
    Load {
        /// account.database[.schema].table
        table: String,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// csv, ndjson or parquet (default: from each file's extension).
        #[arg(long)]
        format: Option<String>,
        /// With several files, file n (from 1) is sent with the key `<key>.<n>`, so the
        /// same command run again loads each file once.
        #[command(flatten)]
        key: Idempotency,
    },
    /// Delete the rows matching a predicate.
    Delete {
        /// account.database[.schema].table
        table: String,
        #[command(flatten)]
        filter: Where,
        #[command(flatten)]
        key: Idempotency,
    },
    /// Set columns in the rows matching a predicate.
    Update {
        /// account.database[.schema].table
        table: String,
        /// Assignments as JSON: '{"amount": 0, "note": null}'.
        #[arg(long)]
        set: String,
        #[command(flatten)]
        filter: Where,
        #[command(flatten)]
        key: Idempotency,
    },
    /// Upsert rows by key columns.
    Merge {
        /// account.database[.schema].table
        table: String,
        /// Key columns, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        keys: Vec<String>,
        /// The rows as JSON; read from stdin when absent.
        #[arg(long)]
        rows: Option<String>,
        #[command(flatten)]
        key: Idempotency,
    },
    /// Transactions: what became of a commit (e.g. one answered "in doubt").
    #[command(subcommand)]
    Txn(TxnCmd),
    /// Scan a table (optionally at a past version: time travel).
    Scan {
        /// account.database[.schema].table
        table: String,
        /// Columns to return, comma-separated.
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Predicate as JSON, e.g. '{"column":"id","op":"<","value":10}'.
        #[arg(long = "where")]
        predicate: Option<String>,
        /// A retained version (time travel).
        #[arg(long)]
        version: Option<u64>,
        /// Most rows to print.
        #[arg(long)]
        limit: Option<usize>,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Deployment group membership (operator).
    #[command(subcommand)]
    Deployment(DeploymentCmd),
    /// The daemon's workers, queues and unfinished transactions (operator).
    Status,
    /// Apply monitoring: the last N monitor intervals (throughput, end-to-end latency,
    /// lag, queues) as a table with sparklines, or the notification events (operator).
    Monitor {
        /// How many intervals (or events).
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Notification events (thresholds fired and cleared) instead of intervals.
        #[arg(long)]
        events: bool,
        /// Restart the cumulative figures from zero (at the next monitor tick).
        #[arg(long)]
        reset: bool,
    },
    /// Run the whole failover cycle on local folders with real daemons: a group formed, a
    /// database loaded and replicated (hub and chain), writes followed with their lag, the
    /// primary killed, failover (RTO, known loss), writes on the new primary, the old one
    /// back fenced (its conflict records), switchover back with nothing lost, every replica
    /// checked equal to the primary, every daemon stopped. No cloud needed.
    Demo {
        /// Folder for the group (default: a temporary folder, removed afterwards unless the
        /// demo fails).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Deployments in the group (3 to 9: d2 follows d1, d3 and the others follow d2).
        #[arg(long, default_value_t = 3)]
        deployments: usize,
        /// Rows in the sample data set (at least 1000).
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// The ternd binary (default: next to this tern).
        #[arg(long)]
        ternd: Option<PathBuf>,
    },
    /// Exercise storage, encryption and tables on local folders (no cloud needed) and report.
    Selfcheck {
        /// Folder for the group's buckets (default: a temporary folder, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rows loaded into the sample table (at least 1000).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
}

/// A write applied once however often it is sent: the daemon keeps the key (per account,
/// for its `api.idempotency_retention`) and answers a repeat with the first answer
/// (`replayed: true`), or "in doubt" with the transaction id while the first is.
#[derive(Debug, Args)]
struct Idempotency {
    /// Idempotency key (1–255 visible ASCII characters): run the command again with the
    /// same key after a failure or timeout, and the write is applied once.
    #[arg(long, value_name = "KEY", value_parser = idempotency_key_arg)]
    idempotency_key: Option<String>,
}

/// `--idempotency-key`: what the daemon accepts as an `Idempotency-Key` (checked here so
/// that a bad key is named rather than failing as an unsendable header).
fn idempotency_key_arg(k: &str) -> Result<String, String> {
    if k.is_empty() || k.len() > 255 {
        return Err(format!("must be 1 to 255 characters long, not {}", k.len()));
    }
    match k.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(format!(
            "may hold only visible ASCII characters (no spaces or controls); {c:?} is not one"
        )),
        None => Ok(k.to_string()),
    }
}

#[derive(Debug, Subcommand)]
enum TxnCmd {
    /// Whether a transaction committed or is still in doubt (recovery completes it).
    Status {
        /// The account.
        account: String,
        /// The transaction id (a commit's txn_id, or an in-doubt error's).
        id: u64,
    },
}

/// The key file `n` (from 1) of `count` is loaded with: the key itself for one file,
/// `<key>.<n>` for several (each file is its own commit).
fn file_key(key: Option<&str>, n: usize, count: usize) -> Option<String> {
    key.map(|k| {
        if count > 1 {
            format!("{k}.{n}")
        } else {
            k.to_string()
        }
    })
}

#[derive(Debug, Args)]
struct Where {
    /// Predicate as JSON ('{"column":"id","op":"=","value":1}', 'true' for every row).
    #[arg(long = "where")]
    predicate: String,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Make a token for an account; prints it once (only its digest is kept).
    Create {
        /// The account.
        account: String,
        /// Refused (403) on every request that writes.
        #[arg(long)]
        read_only: bool,
        /// Refused (401) after this long (`30d`, `12h`); never when absent.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// A name shown by `tern token list` (`ci`, `grafana`).
        #[arg(long)]
        name: Option<String>,
    },
    /// List an account's tokens (ids, names, read-only, expiry; never the secrets).
    List {
        /// The account.
        account: String,
    },
    /// Revoke a token by the id `tern token list` shows: refused from the next request on.
    Revoke {
        /// The account.
        account: String,
        /// The token's id (16 hex digits).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCmd {
    /// Create an account; prints its token.
    Create {
        /// The account.
        name: String,
    },
    /// List accounts.
    List,
    /// Make another token for an account (the same as `tern token create`).
    Token {
        /// The account.
        name: String,
    },
    /// Drop an account (operator): its local databases are dropped and its keys destroyed,
    /// so the files it leaves in the volume can never be decrypted again.
    Drop {
        /// The account.
        name: String,
    },
    /// The versions of an account's master key (which one is active, which are retired).
    Keys {
        /// The account.
        name: String,
    },
    /// Rotate an account's master key (operator): a new version wraps every table key and
    /// the older ones are retired; no data file is rewritten.
    RotateKey {
        /// The account.
        name: String,
    },
    /// `alter account … set global`: the account joins an account replication group
    /// (a new group unless --group names one); prints the group (operator).
    Global {
        /// The account.
        name: String,
        /// An existing account group to join (from `show global-accounts` elsewhere).
        #[arg(long)]
        group: Option<String>,
    },
    /// The account's customer-managed key: RepMKs sent to its replicas are sealed to it,
    /// so only it can open them. Without an option, shows the registered key (operator to
    /// change).
    CustomerKey {
        /// The account.
        name: String,
        /// A local X25519 key file (private key, mode 0600) on the daemon's host.
        #[arg(long, conflicts_with_all = ["kms_key_id", "remove"])]
        x25519_file: Option<String>,
        /// With --x25519-file: make a new key pair there when the file is missing (only
        /// inside the daemon's keys folder, `keys.dir`; a relative name is taken under it).
        #[arg(long, requires = "x25519_file")]
        create: bool,
        /// An RSA key (ENCRYPT_DECRYPT) of the deployment's KMS: id, ARN or alias.
        #[arg(long, conflicts_with = "remove")]
        kms_key_id: Option<String>,
        /// Stop using the registered key.
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DatabaseCmd {
    /// Create a database (with schema "public").
    Create {
        /// The account.
        account: String,
        /// The new database's name.
        name: String,
    },
    /// List an account's databases.
    List {
        /// The account.
        account: String,
    },
    /// `alter database … enable|disable replication`: enable makes the database the
    /// primary of a new database group (prints the group); disable makes it local again.
    Replication {
        /// The account.
        account: String,
        /// The database.
        database: String,
        /// `enable` or `disable`.
        action: OnOff,
    },
    /// `create database X as replica of <group>`: a read-only secondary replica in a
    /// global account; its first refresh starts at once.
    CreateReplica {
        /// The account.
        account: String,
        /// The new replica's name.
        name: String,
        /// The database replication group (from `show global-databases`).
        #[arg(long)]
        group: String,
        /// Replicate from this deployment's replica instead of the primary (a chain).
        #[arg(long)]
        upstream: Option<String>,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// Drop a secondary replica (its upstream stops shipping to it).
    DropReplica {
        /// The account.
        account: String,
        /// The secondary replica.
        name: String,
    },
    /// `alter database X refresh`: ask the upstream for a refresh now.
    Refresh {
        /// The account.
        account: String,
        /// The secondary replica.
        database: String,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// When a secondary replica is brought up to date: `continuous` (follows the
    /// upstream's log), `every <duration>` (e.g. `every 5m`) or `daily HH:MM` (UTC) —
    /// the last two refresh only, then.
    Schedule {
        /// The account.
        account: String,
        /// The database (its replica on this deployment).
        database: String,
        /// continuous | every <duration> | daily HH:MM
        schedule: String,
    },
    /// `alter database X primary`: promote this deployment's secondary replica. Refused
    /// while the primary is heard from, when the known loss exceeds the group's RPO, or
    /// without a majority; prints the measured RTO and the known loss.
    Failover {
        /// The account.
        account: String,
        /// The database (its replica on this deployment).
        database: String,
        /// Promote anyway (the old primary's unreplicated writes are kept as conflict
        /// records when it returns).
        #[arg(long)]
        allow_data_loss: bool,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// Planned switchover (also the way back after a failover): this deployment's
    /// secondary replica becomes the primary with nothing lost; the primary pauses writes
    /// meanwhile. Prints the write pause.
    Switchover {
        /// The account.
        account: String,
        /// The database (its replica on this deployment).
        database: String,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// One database in its group as this deployment sees it: role, epochs, the primary,
    /// whether it takes writes here, which members follow the primary, which are down, a
    /// replica's refresh figures (what `--wait` follows; the account's token suffices).
    Status {
        /// The account.
        account: String,
        /// The database.
        database: String,
    },
    /// Show or set the failover policy of a database's group (set on its primary).
    Policy {
        /// The account.
        account: String,
        /// The database (its replica on this deployment).
        database: String,
        /// RPO in time, e.g. 30s.
        #[arg(long)]
        max_data_loss: Option<String>,
        /// RPO in transactions.
        #[arg(long)]
        max_data_loss_txns: Option<u64>,
        /// RTO, e.g. 1m.
        #[arg(long)]
        max_unavailable: Option<String>,
        /// Pause commits while no replica confirmed them within the RPO.
        #[arg(long)]
        block_commits_beyond_rpo: bool,
        /// Fail over by majority when the primary is unavailable (groups of three or more).
        #[arg(long)]
        auto_failover: bool,
    },
}

/// Turn something on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    Enable,
    Disable,
}

#[derive(Debug, Subcommand)]
enum ConnectionCmd {
    /// `create connection`: clients resolving it are sent to the group's primary.
    Create {
        /// The account.
        account: String,
        /// The connection's name.
        name: String,
        /// The database group (from `show global-databases`).
        #[arg(long)]
        group: String,
    },
    /// Where a connection leads now.
    Resolve {
        /// The account.
        account: String,
        /// The connection's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConflictsCmd {
    /// The conflict records kept on this deployment.
    List,
    /// One record: its origin and the rows it added and removed, per table.
    Show {
        /// The conflict record's id (from `tern conflicts list`).
        id: String,
        /// The rows as CSV (columns: table, change, then the table's columns).
        #[arg(long)]
        csv: bool,
    },
    /// Re-execute it on this deployment, the group's primary, as a new transaction
    /// (refused when the rows it changed were changed since).
    Apply {
        /// The conflict record's id (from `tern conflicts list`).
        id: String,
    },
    /// Do not apply it: the record stays as history, its files are deleted.
    Discard {
        /// The conflict record's id (from `tern conflicts list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum MessagesCmd {
    /// Messages whose handler failed permanently or too often: kept for the operator
    /// until `[messaging] failed_retention`.
    Failed,
    /// Run a failed message's handler again, with fresh attempts.
    Retry {
        /// The deployment the message came from.
        peer: String,
        /// The message's id (from `tern messages failed`).
        id: String,
    },
    /// Give a failed message up: cleaned up, never applied.
    Discard {
        /// The deployment the message came from.
        peer: String,
        /// The message's id (from `tern messages failed`).
        id: String,
    },
    /// Move the channel from PEER past a message file it cannot read (rejected for good,
    /// or lost): it resumes at the next readable file, the skipped files are recorded
    /// (reason `skipped`), and PEER is asked to send their messages again (those it still
    /// holds: `[messaging] sent_retention`). Refused, changing nothing, when the channel
    /// is not stalled.
    Resync {
        /// The deployment whose channel into this one is stalled.
        #[arg(long = "from")]
        peer: String,
    },
}

#[derive(Debug, Subcommand)]
enum ReplicationCmd {
    /// Every copy and import job here: attempts, state (waiting, backing_off, failed),
    /// last error.
    Jobs,
    /// Take a job up again at once, with fresh attempts.
    Retry {
        /// The job's id (from `tern replication jobs`).
        id: String,
    },
    /// Give a job up: an import's files are deleted and a new refresh asked; a copy
    /// job's request is dropped (its replica asks again).
    Abandon {
        /// The job's id (from `tern replication jobs`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCmd {
    /// Create a schema.
    Create {
        /// The account.
        account: String,
        /// The database.
        database: String,
        /// The new schema's name.
        name: String,
    },
    /// List schemas.
    List {
        /// The account.
        account: String,
        /// The database.
        database: String,
    },
}

#[derive(Debug, Subcommand)]
enum TableCmd {
    /// Create a table: columns as name:type[:not-null], e.g. id:int64:not-null name:utf8.
    Create {
        /// account.database[.schema].table
        table: String,
        /// Columns.
        #[arg(required = true)]
        columns: Vec<String>,
    },
    /// Drop a table.
    Drop {
        /// The table: `account.database[.schema].table`.
        table: String,
    },
    /// Add a nullable column (name:type).
    AddColumn {
        /// The table: `account.database[.schema].table`.
        table: String,
        /// The new column: `name:type` (nullable; e.g. `note:utf8`).
        column: String,
    },
}

#[derive(Debug, Subcommand)]
enum ShowCmd {
    /// The tables of a database.
    Tables {
        /// The account.
        account: String,
        /// The database.
        database: String,
    },
    /// A table's versions.
    Versions {
        /// The table: `account.database[.schema].table`.
        table: String,
    },
    /// The deployment group, as this deployment knows it.
    Deployments,
    /// Every account of the account's replication group, in every deployment.
    GlobalAccounts {
        /// The account.
        account: String,
    },
    /// Every replica of every database group of the account's replication group.
    GlobalDatabases {
        /// The account.
        account: String,
    },
    /// Replicas here and downstream: lag, last refresh, bytes, errors (operator).
    ReplicationStatus,
    /// Every peer's availability and the recent availability notifications (operator).
    Availability,
    /// Transactions an old primary committed past a newer epoch's fork, kept (operator).
    Conflicts,
    /// Every connection of the account's group and where it leads now.
    Connections {
        /// The account.
        account: String,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Link every pair of these deployments in both directions (`deployment link` for
    /// each pair; pairs linked already are left alone, so it may be run again after
    /// adding a member). Each one's token: its profile's, else --token.
    Init {
        /// The members: API URLs or profile names (at least two).
        #[arg(num_args = 2.., required = true, value_name = "URL|PROFILE")]
        members: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeploymentCmd {
    /// Add a deployment to the group; prints the genesis of our channel to it (give it to
    /// that deployment's `deployment register-channel`).
    Create {
        /// The deployment's id.
        id: String,
        /// Its region (a label).
        #[arg(long, default_value = "")]
        region: String,
        /// Its cloud (a label).
        #[arg(long, default_value = "")]
        cloud: String,
        /// Its replication bucket URL (default: from this daemon's [[peers]] entry).
        #[arg(long, default_value = "")]
        bucket_url: String,
        /// The genesis of the peer's channel to us (JSON), if it made one already.
        #[arg(long)]
        genesis: Option<String>,
    },
    /// Register the channel a peer created to us (its genesis JSON).
    RegisterChannel {
        /// The peer that made the channel.
        id: String,
        /// Its genesis (JSON), as its `deployment create` printed it.
        genesis: String,
    },
    /// Link this deployment (--url/--profile) and another in both directions in one step:
    /// each adds the other to its group and the channels' geneses are exchanged, nothing
    /// copied by hand. Both need a [[peers]] entry for the other and the group's key
    /// (keys.join). A pair linked already is left alone.
    Link {
        /// The other deployment: its API URL, or the name of a profile.
        #[arg(long, value_name = "URL|PROFILE")]
        to: String,
        /// The other deployment's operator token, when --to is a URL or a profile without
        /// one (default: --token).
        #[arg(long, env = "TERN_TO_TOKEN", hide_env_values = true)]
        to_token: Option<String>,
    },
    /// The deployment group.
    List,
    /// Planned maintenance of a peer: it counts as unavailable until put back.
    Maintenance {
        /// The deployment's id.
        id: String,
        /// `on` (it counts as unavailable) or `off`.
        state: MaintenanceState,
    },
}

/// Maintenance on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MaintenanceState {
    On,
    Off,
}

/// Installs ring as rustls's process-wide provider (once; another one installed first is
/// just as good), as the engine's `tern_storage::config::install_tls_provider` does.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut cli = Cli::parse();
    // reqwest (the API client) takes rustls's process-wide provider: ring, as everywhere.
    install_tls_provider();
    if let Err(e) = resolve_settings(&mut cli) {
        let f = Failure::Client(e);
        f.report(cli.json);
        return ExitCode::from(f.exit_code());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            report_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let json_out = cli.json;
    let result: Result<(), Failure> = match cli.command {
        Command::Selfcheck { dir, rows } => {
            demo::selfcheck(dir, rows, cli.json).map_err(|e| Failure::Other(e.to_string()))
        }
        Command::Demo {
            dir,
            deployments,
            rows,
            ternd,
        } => runtime
            .block_on(demo::run(dir, deployments, rows, ternd, cli.json))
            .map_err(|e| Failure::Other(e.to_string())),
        command => runtime
            .block_on(async {
                let url = cli.url.as_deref().unwrap_or(DEFAULT_URL);
                let client = match &cli.connection {
                    None => Client::new(
                        url.split(',').next().unwrap_or_default().trim(),
                        cli.token.clone(),
                    ),
                    Some(conn) => through_connection(url, cli.token.clone(), conn).await?,
                };
                run(&client, command, cli.json).await
            })
            .map_err(Failure::Client),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report(json_out);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Fills what flags and variables left unset from `p`; the timeout to use.
fn apply_profile(
    cli: &mut Cli,
    p: profile::Profile,
) -> Result<Option<std::time::Duration>, ClientError> {
    cli.url = cli.url.take().or(p.url);
    cli.token = cli.token.take().or(p.token);
    cli.ca = cli.ca.take().or(p.ca);
    cli.client_cert = cli.client_cert.take().or(p.client_cert);
    cli.client_key = cli.client_key.take().or(p.client_key);
    match &cli.timeout {
        Some(t) => humantime_serde::re::humantime::parse_duration(t)
            .map(Some)
            .map_err(|e| ClientError::Input(format!("--timeout {t:?}: {e} (e.g. 30s, 5m)"))),
        None => Ok(p.timeout),
    }
}

/// Fills what flags and variables left unset from the profile, and sets up the HTTP
/// client (TLS files, timeout).
fn resolve_settings(cli: &mut Cli) -> Result<(), ClientError> {
    let p = profile::load(profile::default_path().as_deref(), cli.profile.as_deref())
        .map_err(ClientError::Input)?;
    let timeout = apply_profile(cli, p)?;
    client::configure_http(
        cli.ca.as_deref(),
        cli.client_cert.as_deref(),
        cli.client_key.as_deref(),
        timeout.filter(|t| !t.is_zero()),
    )
}

/// Why a command failed, as the operator reads it (`--json`: the daemon's own error
/// body, with its `redirect` and `epoch`, on stderr).
enum Failure {
    Client(ClientError),
    Other(String),
}

impl Failure {
    /// The exit status of this failure (documented in `tern --help`).
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Client(ClientError::Input(_)) => 2,
            Failure::Client(ClientError::Connect { .. }) => 5,
            Failure::Client(ClientError::Api { status, kind, .. }) => {
                match (*status, kind.as_str()) {
                    (400 | 413 | 422, _) | (_, "invalid_input") => 2,
                    (404, _) | (_, "not_found") => 3,
                    (409, _) | (_, "conflict") => 4,
                    (429 | 503, _) | (_, "unavailable") => 5,
                    (401 | 403, _) | (_, "unauthorized" | "forbidden") => 6,
                    _ => 1,
                }
            }
            Failure::Client(
                ClientError::NotJson { .. } | ClientError::Shape { .. } | ClientError::Wait(_),
            )
            | Failure::Other(_) => 1,
        }
    }

    fn report(&self, json_out: bool) {
        match (self, json_out) {
            (Failure::Client(ClientError::Api { body, .. }), true) => report_error_json(body),
            (Failure::Client(e), true) => {
                report_error_json(&json!({"error": {"kind": "client", "message": e.to_string()}}))
            }
            (Failure::Other(e), true) => {
                report_error_json(&json!({"error": {"kind": "client", "message": e}}))
            }
            (Failure::Client(e), false) => report_error(&e.to_string()),
            (Failure::Other(e), false) => report_error(e),
        }
    }
}

#[allow(clippy::print_stderr)] // the CLI's own error channel
fn report_error_json(body: &Value) {
    eprintln!("{body}");
}

/// A client of the current primary of connection `account/name`, resolved through the
/// first member of `urls` (comma-separated) that answers.
async fn through_connection(
    urls: &str,
    token: Option<String>,
    conn: &str,
) -> Result<Client, ClientError> {
    let (account, name) = conn.split_once('/').ok_or_else(|| {
        ClientError::Input(format!(
            "--connection {conn:?}: expected account/name (e.g. acme/sales_conn)"
        ))
    })?;
    let mut tried = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let member = Client::new(url, token.clone());
        match member
            .get_as::<api::Connection>(&format!(
                "/v1/accounts/{}/connections/{}",
                client::seg(account)?,
                client::seg(name)?
            ))
            .await
        {
            Ok(v) => {
                let Some(primary) = v.url else {
                    return Err(ClientError::Input(format!(
                        "connection {conn}: the primary ({}) has not published its URL yet",
                        v.primary.as_deref().unwrap_or("unknown")
                    )));
                };
                return Ok(Client::new(&primary, token));
            }
            // Unreachable: the next member may answer.
            Err(e @ ClientError::Connect { .. }) => tried.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Input(format!(
        "connection {conn}: no member of --url answered ({})",
        tried.join("; ")
    )))
}

#[allow(clippy::print_stderr)] // the CLI's own error channel
fn report_error(msg: &str) {
    eprintln!("error: {msg}");
}

/// `account.database[.schema].table` → the table's API path.
pub fn table_path(name: &str) -> Result<String, ClientError> {
    let parts: Vec<&str> = name.split('.').collect();
    let (a, d, s, t) = match parts.as_slice() {
        [a, d, t] => (*a, *d, "public", *t),
        [a, d, s, t] => (*a, *d, *s, *t),
        _ => {
            return Err(ClientError::Input(format!(
                "table {name:?}: expected account.database[.schema].table"
            )));
        }
    };
    if [a, d, s, t].iter().any(|p| p.is_empty()) {
        return Err(ClientError::Input(format!(
            "table {name:?} has an empty part"
        )));
    }
    // Each part is one path segment, escaped: a name can never add a segment or a query.
    Ok(format!(
        "/v1/accounts/{}/databases/{}/schemas/{}/tables/{}",
        client::seg(a)?,
        client::seg(d)?,
        client::seg(s)?,
        client::seg(t)?
    ))
}

fn parse_json(what: &str, s: &str) -> Result<Value, ClientError> {
    serde_json::from_str(s).map_err(|e| ClientError::Input(format!("{what} is not JSON: {e}")))
}

fn stdin_or(arg: Option<String>) -> Result<String, ClientError> {
    match arg {
        Some(s) => Ok(s),
        None => std::io::read_to_string(std::io::stdin())
            .map_err(|e| ClientError::Input(format!("cannot read stdin: {e}"))),
    }
}

/// `name:type[:not-null]` → the API's column object.
pub fn column_arg(spec: &str) -> Result<Value, ClientError> {
    let mut parts = spec.splitn(3, ':');
    let name = parts.next().unwrap_or_default();
    let ty = parts.next().ok_or_else(|| {
        ClientError::Input(format!("column {spec:?}: expected name:type[:not-null]"))
    })?;
    let nullable = match parts.next() {
        None | Some("null") => true,
        Some("not-null") | Some("notnull") => false,
        Some(other) => {
            return Err(ClientError::Input(format!(
                "column {spec:?}: {other:?} is not null/not-null"
            )));
        }
    };
    Ok(json!({"name": name, "type": ty, "nullable": nullable}))
}

fn format_of(path: &std::path::Path, forced: Option<&str>) -> Result<&'static str, ClientError> {
    let name = match forced {
        Some(f) => f.to_ascii_lowercase(),
        None => path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase(),
    };
    Ok(match name.as_str() {
        "csv" => "text/csv",
        "ndjson" | "jsonl" | "json" => "application/x-ndjson",
        "parquet" => "application/vnd.apache.parquet",
        other => {
            return Err(ClientError::Input(format!(
                "{}: unknown format {other:?} (csv, ndjson, parquet; use --format)",
                path.display()
            )));
        }
    })
}

fn print_list(v: &Value, key: &str, columns: &[&str], json_out: bool) {
    if json_out {
        output::print(&serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let rows: Vec<Value> = v[key].as_array().cloned().unwrap_or_default();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            if r.is_object() {
                r
            } else {
                json!({ columns[0]: r })
            }
        })
        .collect();
    let cols: Vec<String> = columns.iter().map(|c| (*c).to_string()).collect();
    output::print(&output::table(&cols, &rows));
}

/// The rows of `GET /v1/conflicts/{id}` as one table: which table, added or removed,
/// then the columns (in the order first seen).
fn conflict_rows(v: &api::ConflictShow) -> (Vec<String>, Vec<Value>) {
    let mut cols = vec!["table".to_string(), "change".to_string()];
    let mut rows = Vec::new();
    for t in &v.tables {
        let name = t.name.clone().unwrap_or_else(|| t.table.clone());
        for (change, list) in [("added", Some(&t.added)), ("removed", t.removed.as_ref())] {
            match list {
                Some(list) => {
                    for r in list {
                        let mut row = json!({"table": name, "change": change});
                        if let Some(o) = r.as_object() {
                            for (k, val) in o {
                                if !cols.contains(k) {
                                    cols.push(k.clone());
                                }
                                row[k] = val.clone();
                            }
                        }
                        rows.push(row);
                    }
                }
                None => rows.push(
                    json!({"table": name, "change": "removed (files no longer readable here)"}),
                ),
            }
        }
    }
    (cols, rows)
}

fn print_value(v: &Value, json_out: bool) {
    if json_out {
        output::print(&serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match v.as_object() {
        Some(o) => {
            let width = o.keys().map(String::len).max().unwrap_or(0);
            let mut s = String::new();
            for (k, val) in o {
                s.push_str(&format!("{k:<width$}  {}\n", output::cell(val)));
            }
            output::print(&s);
        }
        None => output::print(&v.to_string()),
    }
}

async fn run(c: &Client, command: Command, json_out: bool) -> Result<(), ClientError> {
    match command {
        Command::Token(TokenCmd::Create {
            account,
            read_only,
            expires_in,
            name,
        }) => {
            let req = api::NewToken {
                read_only,
                expires_in,
                name,
            };
            let v: api::TokenMade = c
                .post_as(
                    &format!("/v1/accounts/{}/tokens", client::seg(&account)?),
                    &req,
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Token(TokenCmd::List { account }) => {
            let v: api::TokenList = c
                .get_as(&format!("/v1/accounts/{}/tokens", client::seg(&account)?))
                .await?;
            print_list(
                &shown(&v),
                "tokens",
                &[
                    "id",
                    "name",
                    "read_only",
                    "created_at_ms",
                    "expires_at_ms",
                    "expired",
                ],
                json_out,
            );
        }
        Command::Token(TokenCmd::Revoke { account, id }) => {
            let v: api::TokenRevoked = c
                .delete_as(&format!(
                    "/v1/accounts/{}/tokens/{}",
                    client::seg(&account)?,
                    client::seg(&id)?
                ))
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Account(AccountCmd::Create { name }) => {
            let v: api::AccountCreated = c.post_as("/v1/accounts", &api::Named { name }).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Account(AccountCmd::List) => {
            let v: api::AccountList = c.get_as("/v1/accounts").await?;
            print_list(&shown(&v), "accounts", &["account"], json_out);
        }
        Command::Account(AccountCmd::Token { name }) => {
            let v: api::TokenMade = c
                .post_as(
                    &format!("/v1/accounts/{}/tokens", client::seg(&name)?),
                    &api::NewToken::default(),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Account(AccountCmd::Drop { name }) => {
            let v: api::AccountDropped = c
                .delete_as(&format!("/v1/accounts/{}", client::seg(&name)?))
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Account(AccountCmd::Keys { name }) => {
            let v: api::KeyList = c
                .get_as(&format!("/v1/accounts/{}/keys", client::seg(&name)?))
                .await?;
            print_list(
                &shown(&v),
                "keys",
                &["version", "state", "created_at_ms", "retired_at_ms"],
                json_out,
            );
        }
        Command::Account(AccountCmd::RotateKey { name }) => {
            let v: api::KeyRotated = c
                .post_as(
                    &format!("/v1/accounts/{}/keys/rotate", client::seg(&name)?),
                    &json!({}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Account(AccountCmd::Global { name, group }) => {
            let mut req = json!({});
            if let Some(g) = group {
                req["group"] = json!(g);
            }
            let v: api::AccountGlobal = c
                .post_as(
                    &format!("/v1/accounts/{}/global", client::seg(&name)?),
                    &req,
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Account(AccountCmd::CustomerKey {
            name,
            x25519_file,
            create,
            kms_key_id,
            remove,
        }) => {
            let p = format!("/v1/accounts/{}/customer-key", client::seg(&name)?);
            let register = |spec| api::RegisterCustomerKey { spec, create };
            let v = match (x25519_file, kms_key_id) {
                (Some(file), _) => shown(
                    &c.post_as::<_, api::CustomerKeyRegistered>(
                        &p,
                        &register(api::CustomerKeySpec::X25519 { file }),
                    )
                    .await?,
                ),
                (None, Some(key_id)) => shown(
                    &c.post_as::<_, api::CustomerKeyRegistered>(
                        &p,
                        &register(api::CustomerKeySpec::KmsRsa { key_id }),
                    )
                    .await?,
                ),
                (None, None) if remove => shown(&c.delete_as::<api::CustomerKeyRemoved>(&p).await?),
                (None, None) => shown(&c.get_as::<api::CustomerKeyView>(&p).await?),
            };
            print_value(&v, json_out);
        }
        Command::Database(DatabaseCmd::Replication {
            account,
            database,
            action,
        }) => {
            let p = format!(
                "/v1/accounts/{}/databases/{}/replication",
                client::seg(&account)?,
                client::seg(&database)?
            );
            let req = api::SetReplication {
                enable: action == OnOff::Enable,
                accounts: None,
            };
            let v: api::ReplicationSet = c.post_as(&p, &req).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Database(DatabaseCmd::CreateReplica {
            account,
            name,
            group,
            upstream,
            wait,
        }) => {
            let limit = wait.limit()?;
            let req = api::CreateReplica {
                name,
                group,
                upstream,
            };
            let v: api::ReplicaCreated = c
                .post_as(
                    &format!("/v1/accounts/{}/replicas", client::seg(&account)?),
                    &req,
                )
                .await?;
            print_value(&shown(&v), json_out);
            if let Some(limit) = limit {
                // Its first refresh was asked for with it.
                wait::refreshed(c, &account, &v.name, None, limit).await?;
                output::note(&format!("{account}.{}: first refresh imported", v.name));
            }
        }
        Command::Database(DatabaseCmd::DropReplica { account, name }) => {
            let v: api::ReplicaDropped = c
                .delete_as(&format!(
                    "/v1/accounts/{}/replicas/{}",
                    client::seg(&account)?,
                    client::seg(&name)?
                ))
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Database(DatabaseCmd::Refresh {
            account,
            database,
            wait,
        }) => {
            let limit = wait.limit()?;
            let p = format!(
                "/v1/accounts/{}/databases/{}/refresh",
                client::seg(&account)?,
                client::seg(&database)?
            );
            // What a new refresh is told apart by.
            let before = match limit {
                Some(_) => Some(wait::replica(c, &account, &database).await?),
                None => None,
            };
            let v: api::RefreshRequested = c.post_as(&p, &json!({})).await?;
            print_value(&shown(&v), json_out);
            if let Some(limit) = limit {
                wait::refreshed(c, &account, &database, before.as_ref(), limit).await?;
                output::note(&format!(
                    "{account}.{database}: refresh {} imported",
                    v.request
                ));
            }
        }
        Command::Database(DatabaseCmd::Schedule {
            account,
            database,
            schedule,
        }) => {
            let p = format!(
                "/v1/accounts/{}/databases/{}/schedule",
                client::seg(&account)?,
                client::seg(&database)?
            );
            let v: api::ScheduleSet = c.post_as(&p, &json!({ "schedule": schedule })).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Database(DatabaseCmd::Failover {
            account,
            database,
            allow_data_loss,
            wait,
        }) => {
            let limit = wait.limit()?;
            let p = format!(
                "/v1/accounts/{}/databases/{}/failover",
                client::seg(&account)?,
                client::seg(&database)?
            );
            if limit.is_some() {
                output::note(&format!(
                    "{account}.{database}: failing over (what arrived is applied first, then \
                     the primary is claimed)"
                ));
            }
            let v: api::FailoverReport = c
                .post_as(&p, &api::FailoverRequest { allow_data_loss })
                .await?;
            print_value(&shown(&v), json_out);
            if let Some(limit) = limit {
                output::note(&format!(
                    "{account}.{database}: primary at epoch {} after {} ms (was {}); known \
                     loss {} transactions",
                    v.epoch,
                    v.rto_ms,
                    v.previous_primary.as_deref().unwrap_or("unknown"),
                    v.known_loss_txns
                ));
                wait::promoted(c, &account, &database, v.epoch, "failover", limit).await?;
                output::note(&format!("{account}.{database}: failover done"));
            }
        }
        Command::Database(DatabaseCmd::Switchover {
            account,
            database,
            wait,
        }) => {
            let limit = wait.limit()?;
            let p = format!(
                "/v1/accounts/{}/databases/{}/switchover",
                client::seg(&account)?,
                client::seg(&database)?
            );
            if limit.is_some() {
                output::note(&format!(
                    "{account}.{database}: switching over (the primary pauses writes until \
                     this replica applied its last transaction)"
                ));
            }
            let v: api::SwitchoverReport = c.post_as(&p, &json!({})).await?;
            print_value(&shown(&v), json_out);
            if let Some(limit) = limit {
                output::note(&format!(
                    "{account}.{database}: primary at epoch {} after a {} ms write pause \
                     (was {})",
                    v.epoch,
                    v.pause_ms,
                    v.previous_primary
                        .as_deref()
                        .unwrap_or("this deployment already")
                ));
                wait::promoted(c, &account, &database, v.epoch, "switchover", limit).await?;
                output::note(&format!("{account}.{database}: switchover done"));
            }
        }
        Command::Database(DatabaseCmd::Status { account, database }) => {
            let v = wait::status(c, &account, &database).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Database(DatabaseCmd::Policy {
            account,
            database,
            max_data_loss,
            max_data_loss_txns,
            max_unavailable,
            block_commits_beyond_rpo,
            auto_failover,
        }) => {
            let p = format!(
                "/v1/accounts/{}/databases/{}/policy",
                client::seg(&account)?,
                client::seg(&database)?
            );
            let setting = max_data_loss.is_some()
                || max_data_loss_txns.is_some()
                || max_unavailable.is_some()
                || block_commits_beyond_rpo
                || auto_failover;
            let v = if setting {
                let mut policy = json!({
                    "block_commits_beyond_rpo": block_commits_beyond_rpo,
                    "auto_failover": auto_failover,
                });
                if let Some(d) = max_data_loss {
                    policy["max_data_loss"] = json!(d);
                }
                if let Some(n) = max_data_loss_txns {
                    policy["max_data_loss_txns"] = json!(n);
                }
                if let Some(d) = max_unavailable {
                    policy["max_unavailable"] = json!(d);
                }
                shown(&c.post_as::<_, api::PolicySet>(&p, &policy).await?)
            } else {
                shown(&c.get_as::<api::PolicyView>(&p).await?)
            };
            print_value(&v, json_out);
        }
        Command::Deployment(DeploymentCmd::Maintenance { id, state }) => {
            let v: api::MaintenanceSet = c
                .post_as(
                    &format!("/v1/deployments/{}/maintenance", client::seg(&id)?),
                    &json!({"on": state == MaintenanceState::On}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Show(ShowCmd::Availability) => {
            let v: api::AvailabilityView = c.get_as("/v1/availability").await?;
            let v = shown(&v);
            if json_out {
                print_value(&v, true);
            } else {
                print_list(
                    &v,
                    "peers",
                    &[
                        "peer",
                        "state",
                        "since_ms",
                        "last_heard_ms",
                        "maintenance",
                        "url",
                    ],
                    false,
                );
                print_list(
                    &v,
                    "history",
                    &["seq", "peer", "from", "to", "at_ms", "reason"],
                    false,
                );
            }
        }
        Command::Connection(ConnectionCmd::Create {
            account,
            name,
            group,
        }) => {
            let v: api::Connection = c
                .post_as(
                    &format!("/v1/accounts/{}/connections", client::seg(&account)?),
                    &api::CreateConnection { name, group },
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Txn(TxnCmd::Status { account, id }) => {
            let v: api::TxnStatus = c
                .get_as(&format!(
                    "/v1/accounts/{}/transactions/{id}",
                    client::seg(&account)?
                ))
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Conflicts(ConflictsCmd::List) | Command::Show(ShowCmd::Conflicts) => {
            let v: api::ConflictList = c.get_as("/v1/conflicts").await?;
            print_list(
                &shown(&v),
                "conflicts",
                &[
                    "id",
                    "group",
                    "origin",
                    "txn_id",
                    "epoch",
                    "committed_at_ms",
                    "state",
                    "resolution",
                ],
                json_out,
            );
        }
        Command::Conflicts(ConflictsCmd::Show { id, csv }) => {
            let v: api::ConflictShow = c
                .get_as(&format!("/v1/conflicts/{}", client::seg(&id)?))
                .await?;
            if json_out {
                print_json(&v);
            } else {
                let (cols, rows) = conflict_rows(&v);
                if csv {
                    output::print(&output::csv(&cols, &rows));
                } else {
                    let r = &v.conflict;
                    output::note(&format!(
                        "conflict {id}: transaction {} of {} (epoch {}), committed at {} ms, {}",
                        r.txn_id
                            .map_or_else(|| "NULL".to_string(), |t| t.to_string()),
                        r.origin,
                        r.epoch,
                        r.committed_at_ms,
                        r.state,
                    ));
                    output::print(&output::table(&cols, &rows));
                }
            }
        }
        Command::Messages(MessagesCmd::Failed) => {
            let v: api::FailedMessages = c.get_as("/v1/messages/failed").await?;
            print_list(
                &shown(&v),
                "messages",
                &[
                    "peer",
                    "id",
                    "message_type",
                    "attempts",
                    "last_error",
                    "failed_at_ms",
                    "expires_at_ms",
                ],
                json_out,
            );
        }
        Command::Messages(MessagesCmd::Retry { peer, id }) => {
            let p = format!(
                "/v1/messages/failed/{}/{}/retry",
                client::seg(&peer)?,
                client::seg(&id)?
            );
            let v: api::MessageActionDone = c.post_as(&p, &json!({})).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Messages(MessagesCmd::Discard { peer, id }) => {
            let p = format!(
                "/v1/messages/failed/{}/{}/discard",
                client::seg(&peer)?,
                client::seg(&id)?
            );
            let v: api::MessageActionDone = c.post_as(&p, &json!({})).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Messages(MessagesCmd::Resync { peer }) => {
            let p = format!("/v1/messages/channels/{}/resync", client::seg(&peer)?);
            let v: api::Resynced = c.post_as(&p, &json!({})).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Replication(ReplicationCmd::Jobs) => {
            let v: api::JobList = c.get_as("/v1/replication/jobs").await?;
            print_list(
                &shown(&v),
                "jobs",
                &[
                    "kind",
                    "id",
                    "peer",
                    "group",
                    "attempts",
                    "state",
                    "next_attempt_at_ms",
                    "last_error",
                ],
                json_out,
            );
        }
        Command::Replication(ReplicationCmd::Retry { id }) => {
            let v: api::Job = c
                .post_as(
                    &format!("/v1/replication/jobs/{}/retry", client::seg(&id)?),
                    &json!({}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Replication(ReplicationCmd::Abandon { id }) => {
            let v: api::Job = c
                .post_as(
                    &format!("/v1/replication/jobs/{}/abandon", client::seg(&id)?),
                    &json!({}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Conflicts(ConflictsCmd::Apply { id }) => {
            let v: api::ConflictApplied = c
                .post_as(
                    &format!("/v1/conflicts/{}/apply", client::seg(&id)?),
                    &json!({}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Conflicts(ConflictsCmd::Discard { id }) => {
            let v: api::Conflict = c
                .post_as(
                    &format!("/v1/conflicts/{}/discard", client::seg(&id)?),
                    &json!({}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Connection(ConnectionCmd::Resolve { account, name }) => {
            let v: api::Connection = c
                .get_as(&format!(
                    "/v1/accounts/{}/connections/{}",
                    client::seg(&account)?,
                    client::seg(&name)?
                ))
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Show(ShowCmd::Connections { account }) => {
            let v: api::ConnectionList = c
                .get_as(&format!(
                    "/v1/accounts/{}/connections",
                    client::seg(&account)?
                ))
                .await?;
            print_list(
                &shown(&v),
                "connections",
                &["name", "group", "primary", "epoch", "url", "made_on"],
                json_out,
            );
        }
        Command::Show(ShowCmd::GlobalAccounts { account }) => {
            let v: api::GlobalAccounts = c
                .get_as(&format!(
                    "/v1/accounts/{}/global/accounts",
                    client::seg(&account)?
                ))
                .await?;
            print_global(
                &shown(&v),
                "accounts",
                &["region", "deployment", "account", "replication_group"],
                json_out,
            );
        }
        Command::Show(ShowCmd::GlobalDatabases { account }) => {
            let v: api::GlobalDatabases = c
                .get_as(&format!(
                    "/v1/accounts/{}/global/databases",
                    client::seg(&account)?
                ))
                .await?;
            print_global(
                &shown(&v),
                "databases",
                &[
                    "region",
                    "deployment",
                    "account",
                    "replication_group",
                    "name",
                    "role",
                    "upstream",
                ],
                json_out,
            );
        }
        Command::Show(ShowCmd::ReplicationStatus) => {
            let v: api::ReplicationStatus = c.get_as("/v1/replication/status").await?;
            print_replication_status(&v, json_out);
        }
        Command::Database(DatabaseCmd::Create { account, name }) => {
            let v: api::DatabaseCreated = c
                .post_as(
                    &format!("/v1/accounts/{}/databases", client::seg(&account)?),
                    &api::Named { name },
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Database(DatabaseCmd::List { account }) => {
            let v: api::DatabaseList = c
                .get_as(&format!(
                    "/v1/accounts/{}/databases",
                    client::seg(&account)?
                ))
                .await?;
            print_list(&shown(&v), "databases", &["name", "id", "role"], json_out);
        }
        Command::Schema(SchemaCmd::Create {
            account,
            database,
            name,
        }) => {
            let p = format!(
                "/v1/accounts/{}/databases/{}/schemas",
                client::seg(&account)?,
                client::seg(&database)?
            );
            let v: api::SchemaCreated = c.post_as(&p, &api::Named { name }).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Schema(SchemaCmd::List { account, database }) => {
            let p = format!(
                "/v1/accounts/{}/databases/{}/schemas",
                client::seg(&account)?,
                client::seg(&database)?
            );
            let v: api::SchemaList = c.get_as(&p).await?;
            print_list(&shown(&v), "schemas", &["schema"], json_out);
        }
        Command::Table(TableCmd::Create { table, columns }) => {
            let path = table_path(&table)?;
            let (parent, name) = path
                .rsplit_once('/')
                .ok_or_else(|| ClientError::Input(table.clone()))?;
            let cols = columns
                .iter()
                .map(|c| column_arg(c))
                .collect::<Result<Vec<_>, _>>()?;
            let v: api::TableInfo = c
                .post_as(parent, &json!({"name": name, "columns": cols}))
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Table(TableCmd::Drop { table }) => {
            let v: api::TableDropped = c.delete_as(&table_path(&table)?).await?;
            print_value(&shown(&v), json_out);
        }
        Command::Table(TableCmd::AddColumn { table, column }) => {
            let v: api::CommitAnswer = c
                .post_as(
                    &format!("{}/columns", table_path(&table)?),
                    &column_arg(&column)?,
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Show(ShowCmd::Tables { account, database }) => {
            let v: api::TableList = c
                .get_as(&format!(
                    "/v1/accounts/{}/databases/{}/tables",
                    client::seg(&account)?,
                    client::seg(&database)?
                ))
                .await?;
            if json_out {
                print_json(&v);
            } else {
                let rows: Vec<Value> = v
                    .tables
                    .iter()
                    .map(|t| {
                        let cols: Vec<String> = t
                            .columns
                            .iter()
                            .map(|c| {
                                format!(
                                    "{} {}{}",
                                    c.name,
                                    c.ty,
                                    if c.nullable { "" } else { " not null" }
                                )
                            })
                            .collect();
                        json!({"schema": t.schema, "name": t.name, "version": t.version, "columns": cols.join(", ")})
                    })
                    .collect();
                let cols: Vec<String> = ["schema", "name", "version", "columns"]
                    .iter()
                    .map(|s| (*s).to_string())
                    .collect();
                output::print(&output::table(&cols, &rows));
            }
        }
        Command::Show(ShowCmd::Versions { table }) => {
            let v: api::VersionList = c
                .get_as(&format!("{}/versions", table_path(&table)?))
                .await?;
            print_list(
                &shown(&v),
                "versions",
                &[
                    "version",
                    "txn_id",
                    "committed_at_ms",
                    "files_added",
                    "files_removed",
                ],
                json_out,
            );
        }
        Command::Show(ShowCmd::Deployments) | Command::Deployment(DeploymentCmd::List) => {
            let v: api::DeploymentList = c.get_as("/v1/deployments").await?;
            print_deployments(&v, json_out);
        }
        Command::Sql {
            database,
            sql,
            csv,
            interactive,
        } => {
            let mode = if csv {
                sql::Mode::Csv
            } else if json_out {
                sql::Mode::Json
            } else {
                sql::Mode::Table
            };
            match sql {
                Some(s) => sql::run(c, &database, &s, mode).await?,
                None => sql::shell(c, &database, mode, interactive).await?,
            }
        }
        Command::Insert { table, rows, key } => {
            let rows = parse_json("--rows", &stdin_or(rows)?)?;
            let v: api::CommitAnswer = c
                .with_idempotency_key(key.idempotency_key)
                .post_as(&format!("{}/rows", table_path(&table)?), &rows)
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Load {
            table,
            files,
            format,
            key,
        } => {
            let path = format!("{}/rows", table_path(&table)?);
            let mut results = Vec::new();
            let mut total = 0u64;
            let started = std::time::Instant::now();
            for (i, f) in files.iter().enumerate() {
                let ct = format_of(f, format.as_deref())?;
                let cannot = |e: std::io::Error| {
                    ClientError::Input(format!("cannot read {}: {e}", f.display()))
                };
                let file = tokio::fs::File::open(f).await.map_err(cannot)?;
                let size = file.metadata().await.map_err(cannot)?.len();
                let progress = output::Progress::new(
                    format!("[{}/{}] {}", i + 1, files.len(), f.display()),
                    size,
                );
                let body = reqwest::Body::wrap_stream(upload_stream(file, progress.counter()));
                let keyed = c.with_idempotency_key(file_key(
                    key.idempotency_key.as_deref(),
                    i + 1,
                    files.len(),
                ));
                let post = keyed.post_stream(&path, body, ct);
                tokio::pin!(post);
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
                let v = loop {
                    tokio::select! {
                        r = &mut post => break r,
                        _ = tick.tick() => progress.draw(),
                    }
                };
                progress.finish();
                let v: api::CommitAnswer = keyed.typed(&path, v?)?;
                let rows = v.rows.unwrap_or(0);
                total += rows;
                output::note(&format!(
                    "[{}/{}] {}: {} rows, {:.1} MiB, version {} ({:.0} rows/s so far)",
                    i + 1,
                    files.len(),
                    f.display(),
                    rows,
                    size as f64 / 1_048_576.0,
                    v.version
                        .map_or_else(|| "unchanged".to_string(), |v| v.to_string()),
                    total as f64 / started.elapsed().as_secs_f64().max(1e-9)
                ));
                results.push(json!({"file": f.display().to_string(), "result": shown(&v)}));
            }
            print_value(
                &json!({"files": results.len(), "rows": total, "results": results}),
                json_out,
            );
        }
        Command::Delete { table, filter, key } => {
            let w = parse_json("--where", &filter.predicate)?;
            let v: api::CommitAnswer = c
                .with_idempotency_key(key.idempotency_key)
                .post_as(
                    &format!("{}/delete", table_path(&table)?),
                    &json!({"where": w}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Update {
            table,
            set,
            filter,
            key,
        } => {
            let w = parse_json("--where", &filter.predicate)?;
            let s = parse_json("--set", &set)?;
            let v: api::CommitAnswer = c
                .with_idempotency_key(key.idempotency_key)
                .post_as(
                    &format!("{}/update", table_path(&table)?),
                    &json!({"where": w, "set": s}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Merge {
            table,
            keys,
            rows,
            key,
        } => {
            let rows = parse_json("--rows", &stdin_or(rows)?)?;
            let v: api::CommitAnswer = c
                .with_idempotency_key(key.idempotency_key)
                .post_as(
                    &format!("{}/merge", table_path(&table)?),
                    &json!({"keys": keys, "rows": rows}),
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Scan {
            table,
            columns,
            predicate,
            version,
            limit,
            csv,
        } => {
            let mut req = json!({});
            if let Some(cols) = columns {
                req["columns"] = json!(cols);
            }
            if let Some(p) = predicate {
                req["where"] = parse_json("--where", &p)?;
            }
            if let Some(v) = version {
                req["version"] = json!(v);
            }
            if let Some(l) = limit {
                req["limit"] = json!(l);
            }
            // The answer streams: rows are printed as they arrive, never held whole.
            let path = format!("{}/scan", table_path(&table)?);
            if json_out {
                let mut stdout = std::io::stdout();
                c.post_copy(&path, &req, &mut stdout).await?;
                output::print("");
            } else {
                let printer =
                    std::sync::Arc::new(std::sync::Mutex::new(output::StreamRows::new(csv)));
                let v = c.scan(&path, &req, SharedRows(printer.clone())).await?;
                let mut p = printer.lock().unwrap_or_else(|e| e.into_inner());
                p.finish();
                if !csv {
                    let head: api::ScanHead = c.typed(&path, v.clone())?;
                    let tail: api::ScanTail = c.typed(&path, v)?;
                    output::note(&format!(
                        "{} rows at version {} ({} of {} files read){}",
                        tail.row_count,
                        head.version,
                        tail.files_read,
                        head.files_total,
                        if tail.truncated { ", truncated" } else { "" }
                    ));
                }
            }
        }
        Command::Deployment(DeploymentCmd::Create {
            id,
            region,
            cloud,
            bucket_url,
            genesis,
        }) => {
            let req = api::CreateDeployment {
                id,
                region,
                cloud,
                replication_bucket_url: bucket_url,
                genesis: genesis.map(|g| parse_json("--genesis", &g)).transpose()?,
            };
            let v: api::DeploymentCreated = c.post_as("/v1/deployments", &req).await?;
            if json_out {
                print_json(&v);
            } else {
                output::print(&format!(
                    "deployment {} added; genesis of our channel to it:\n{}",
                    v.deployment,
                    v.genesis.unwrap_or(Value::Null)
                ));
            }
        }
        Command::Deployment(DeploymentCmd::RegisterChannel { id, genesis }) => {
            let g = parse_json("genesis", &genesis)?;
            let v: api::ChannelRegistered = c
                .post_as(
                    &format!("/v1/deployments/{}/channel", client::seg(&id)?),
                    &g,
                )
                .await?;
            print_value(&shown(&v), json_out);
        }
        Command::Deployment(DeploymentCmd::Link { to, to_token }) => {
            let other = link::endpoint(&to, to_token.as_deref().or(c.token()))?;
            let l = link::link(c, &other).await?;
            print_links(&[l], json_out);
        }
        Command::Group(GroupCmd::Init { members }) => {
            let clients = members
                .iter()
                .map(|m| link::endpoint(m, c.token()))
                .collect::<Result<Vec<_>, _>>()?;
            let links = link::group(&clients, |l| {
                if !json_out {
                    output::print(&link_line(l));
                }
            })
            .await?;
            if json_out {
                print_json(&json!({ "links": links }));
            } else {
                output::print(&format!(
                    "{} pairs, every one linked both ways",
                    links.len()
                ));
            }
        }
        Command::Status => {
            let v: api::Status = c.get_as("/v1/status").await?;
            print_status(&v, json_out);
        }
        Command::Monitor {
            last,
            events,
            reset,
        } => {
            if reset {
                let v: api::MonitorReset = c.post_as("/v1/monitor/reset", &json!({})).await?;
                print_value(&shown(&v), json_out);
            } else if events {
                let v: api::MonitorEvents =
                    c.get_as(&format!("/v1/monitor/events?last={last}")).await?;
                if json_out {
                    print_json(&v);
                } else {
                    output::print(&monitor::render_events(&v));
                }
            } else {
                let path = format!("/v1/monitor?last={last}");
                let v: api::MonitorHistory = c.get_as(&path).await?;
                if json_out {
                    print_json(&v);
                } else {
                    let text = monitor::render(&v).map_err(|reason| ClientError::Shape {
                        url: format!("{}{path}", c.base()),
                        reason,
                    })?;
                    output::print(&text);
                }
            }
        }
        Command::Demo { .. } | Command::Selfcheck { .. } => {}
    }
    Ok(())
}

/// `show deployments`: the group as one deployment sees it.
pub fn print_deployments(v: &api::DeploymentList, json_out: bool) {
    if json_out {
        print_json(v);
        return;
    }
    let opt = |n: Option<u64>| n.map_or(Value::Null, Value::from);
    let rows: Vec<Value> = v
        .deployments
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "region": d.region, "cloud": d.cloud,
                "self": if d.is_self { "*" } else { "" },
                "files sent": opt(d.files_sent), "files received": opt(d.files_received),
                "messages from it": opt(d.peer_messages),
                "its group": d.peer_members.as_ref().map(|m| m.join(",")).unwrap_or_default(),
            })
        })
        .collect();
    let cols: Vec<String> = [
        "id",
        "self",
        "region",
        "cloud",
        "files sent",
        "files received",
        "messages from it",
        "its group",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    output::print(&output::table(&cols, &rows));
}

/// Prints `show global-accounts` / `show global-databases` (absent values blank).
pub fn print_global(v: &Value, key: &str, columns: &[&str], json_out: bool) {
    if json_out {
        output::print(&serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let rows: Vec<Value> = v[key]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| blank_nulls(r, columns))
        .collect();
    let cols: Vec<String> = columns.iter().map(|s| (*s).to_string()).collect();
    output::print(&output::table(&cols, &rows));
}

/// `row` with its null (or absent) `columns` as empty strings.
fn blank_nulls(mut row: Value, columns: &[&str]) -> Value {
    for c in columns {
        if row[*c].is_null() {
            row[*c] = json!("");
        }
    }
    row
}

/// Prints `show replication-status`.
pub fn print_replication_status(v: &api::ReplicationStatus, json_out: bool) {
    if json_out {
        print_json(v);
        return;
    }
    let counters = v
        .counters
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut s = format!(
        "queues: snapshot requests {}, imports {}, outbox {}\ncounters: {counters}\n\ngroups here (role, epoch, RPO exposure):\n",
        v.snapshot_jobs, v.import_jobs, v.outbox,
    );
    // The typed rows as objects for the table printer (every field was checked when
    // the answer was read).
    let rows_of = |list: Value, cols: &[&str]| -> Vec<Value> {
        match list {
            Value::Array(a) => a.into_iter().map(|r| blank_nulls(r, cols)).collect(),
            _ => Vec::new(),
        }
    };
    let group_cols = [
        "group",
        "database",
        "role",
        "epoch",
        "group_epoch",
        "primary",
        "primary_state",
        "txns_behind",
        "rpo_exposure_ms",
        "primary_heard_ago_ms",
        "conflicts",
    ];
    let rows = rows_of(shown(&v.groups), &group_cols);
    let cols: Vec<String> = group_cols.iter().map(|s| (*s).to_string()).collect();
    s.push_str(&output::table(&cols, &rows));
    s.push_str("\npeers:\n");
    let peer_cols = ["peer", "state", "since_ms", "last_heard_ms", "maintenance"];
    let rows = rows_of(shown(&v.peers), &peer_cols);
    let cols: Vec<String> = peer_cols.iter().map(|s| (*s).to_string()).collect();
    s.push_str(&output::table(&cols, &rows));
    s.push_str("\nreplicas here:\n");
    let replica_cols = [
        "database",
        "account",
        "group",
        "upstream",
        "schedule",
        "versions_behind",
        "txns_behind",
        "lag_ms",
        "staleness_ms",
        "last_refresh_at_ms",
        "refresh_pending",
        "refreshes",
        "records_applied",
        "bytes_copied",
        "last_error",
    ];
    let rows = rows_of(shown(&v.replicas), &replica_cols);
    let cols: Vec<String> = replica_cols.iter().map(|s| (*s).to_string()).collect();
    s.push_str(&output::table(&cols, &rows));
    s.push_str("\nreplicas downstream (of databases here):\n");
    let down_cols = [
        "database",
        "group",
        "peer",
        "subscribed",
        "records_behind",
        "records_shipped",
        "snapshots",
        "bytes_copied",
        "last_error",
    ];
    let rows = rows_of(shown(&v.downstream), &down_cols);
    let cols: Vec<String> = down_cols.iter().map(|s| (*s).to_string()).collect();
    s.push_str(&output::table(&cols, &rows));
    output::print(&s);
}

/// Prints `status`.
/// `status`: the daemon's workers and queues.
pub fn print_status(v: &api::Status, json_out: bool) {
    if json_out {
        print_json(v);
        return;
    }
    let mut s = format!(
        "deployment {} ({} / {}), up {:.0} s, {} commits, unfinished transactions: {}\nqueues: {}\n",
        v.deployment,
        v.region,
        v.cloud,
        v.uptime_secs,
        v.commits,
        json!(v.unfinished_transactions),
        json!(v.queues),
    );
    let rows: Vec<Value> = v
        .workers
        .iter()
        .map(|w| {
            let figures = w
                .figures
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            json!({"worker": w.name, "state": w.state, "busy units": w.busy_units, "errors": w.errors, "figures": figures})
        })
        .collect();
    let cols: Vec<String> = ["worker", "state", "busy units", "errors", "figures"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    s.push_str(&output::table(&cols, &rows));
    output::print(&s);
}

fn link_line(l: &link::Link) -> String {
    let what = if l.state == "linked" {
        "linked both ways"
    } else {
        "already linked"
    };
    format!("{} <-> {}: {what}", l.a, l.b)
}

fn print_links(links: &[link::Link], json_out: bool) {
    if json_out {
        print_json(&json!({ "links": links }));
    } else {
        for l in links {
            output::print(&link_line(l));
        }
    }
}

/// A typed answer as the JSON the daemon sent (`--json`).
fn print_json<T: serde::Serialize>(v: &T) {
    output::print(&serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A typed answer as a `Value`, for the generic printers (its types serialise infallibly).
fn shown<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A file's bytes in 1 MiB pieces, counting what was handed to the connection.
fn upload_stream(
    file: tokio::fs::File,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::try_unfold(file, move |mut file| {
        let sent = std::sync::Arc::clone(&sent);
        async move {
            let mut buf = vec![0u8; 1 << 20];
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(Some((bytes::Bytes::from(buf), file)))
        }
    })
}

/// A row printer shared between the reading thread and the command (which finishes it).
struct SharedRows(std::sync::Arc<std::sync::Mutex<output::StreamRows>>);

impl client::RowSink for SharedRows {
    fn start(&mut self, head: &serde_json::Map<String, serde_json::Value>) {
        client::RowSink::start(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()), head);
    }
    fn row(&mut self, row: serde_json::Value) {
        client::RowSink::row(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()), row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every subcommand and every argument of every subcommand, the global flags
    /// included, has help text (`tern … --help` never lists a bare name).
    #[test]
    fn every_flag_and_subcommand_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_global_set() && !path.is_empty() {
                    continue;
                }
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in c.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub
                    .get_about()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }

    /// A daemon stand-in: answers one request with `body` (200, JSON).
    async fn answering(body: &'static str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.expect("answer");
        });
        url
    }

    /// A daemon whose answer lacks a field the CLI shows (renamed on one side): the
    /// command fails naming the field, where walking untyped JSON printed a blank column.
    #[tokio::test]
    async fn a_renamed_field_fails_the_command_naming_it_instead_of_printing_blank() {
        let url =
            answering(r#"{"databases": [{"name": "sales", "id": "db1", "kind": "primary"}]}"#)
                .await;
        let c = Client::new(&url, None);
        let cmd = Command::Database(DatabaseCmd::List {
            account: "acme".into(),
        });
        let e = run(&c, cmd, false).await.expect_err("a field is missing");
        assert!(
            matches!(&e, ClientError::Shape { reason, .. } if reason.contains("missing field `role`")),
            "{e}"
        );
        assert_eq!(Failure::Client(e).exit_code(), 1);
        // The same answer with the field is shown.
        let url =
            answering(r#"{"databases": [{"name": "sales", "id": "db1", "role": "primary"}]}"#)
                .await;
        let cmd = Command::Database(DatabaseCmd::List {
            account: "acme".into(),
        });
        run(&Client::new(&url, None), cmd, false)
            .await
            .expect("shown");
    }

    /// The operator views the CLI walked as untyped JSON (replication status, a conflict,
    /// availability, a transaction, schemas): an answer lacking a field they show fails
    /// naming it; the SQL shell's table needs its column names (the header) likewise.
    #[tokio::test]
    async fn operator_views_fail_naming_a_missing_field() {
        let cases: [(&'static str, Command, &str); 5] = [
            (
                r#"{"groups": [], "peers": [], "replicas": [], "downstream": [],
                    "snapshot_jobs": 0, "import_jobs": 0, "jobs": [], "counters": {}}"#,
                Command::Show(ShowCmd::ReplicationStatus),
                "missing field `outbox`",
            ),
            (
                r#"{"conflict": {"id": "cf1", "group": "g1", "origin": "d1", "txn_id": 4,
                    "epoch": 1, "committed_at_ms": 3, "state": "open"},
                    "tables": [{"table": "t1", "name": null, "added": [], "removed": null}]}"#,
                Command::Conflicts(ConflictsCmd::Show {
                    id: "cf1".into(),
                    csv: false,
                }),
                "missing field `version`",
            ),
            (
                r#"{"peers": [{"peer": "d2", "status": "available", "since_ms": 1,
                    "last_heard_ms": null, "maintenance": false, "url": null}], "history": []}"#,
                Command::Show(ShowCmd::Availability),
                "missing field `state`",
            ),
            (
                r#"{"txn_id": 4}"#,
                Command::Txn(TxnCmd::Status {
                    account: "acme".into(),
                    id: 4,
                }),
                "missing field `status`",
            ),
            (
                r#"{"names": ["public"]}"#,
                Command::Schema(SchemaCmd::List {
                    account: "acme".into(),
                    database: "sales".into(),
                }),
                "missing field `schemas`",
            ),
        ];
        for (body, cmd, want) in cases {
            let url = answering(body).await;
            let e = run(&Client::new(&url, None), cmd, false)
                .await
                .expect_err("a field is missing");
            assert!(
                matches!(&e, ClientError::Shape { reason, .. } if reason.contains(want)),
                "{want}: {e}"
            );
        }
        // A monitor interval without its agents' figures.
        let url = answering(
            r#"{"deployment": "d1", "interval_ms": 1000, "alerts": [],
                "rows": [{"interval": 1, "at_ms": 5, "queues": {}, "replicas": [], "alerts": []}]}"#,
        )
        .await;
        let e = run(
            &Client::new(&url, None),
            Command::Monitor {
                last: 5,
                events: false,
                reset: false,
            },
            false,
        )
        .await
        .expect_err("a monitor row lacks its agents");
        assert!(
            matches!(&e, ClientError::Shape { reason, .. } if reason.contains("missing field `agents`")),
            "{e}"
        );
        let url = answering(r#"{"x": 1}"#).await;
        let e = sql::run(
            &Client::new(&url, None),
            "acme.sales",
            "SELECT 1",
            sql::Mode::Table,
        )
        .await
        .expect_err("no column names");
        assert!(
            matches!(&e, ClientError::Shape { reason, .. } if reason.contains("Tern-Columns")),
            "{e}"
        );
    }

    /// An error body not of tern's shape still fails with its status, and says which field
    /// it lacked instead of an empty message.
    #[test]
    fn an_error_body_of_another_shape_names_what_it_lacks() {
        let e = client::api_error(502, json!({"error": {"message": "bad gateway"}}));
        let text = e.to_string();
        assert!(text.contains("missing field `kind`"), "{text}");
        assert!(
            text.contains("bad gateway") && text.contains("HTTP 502"),
            "{text}"
        );
        let e = client::api_error(
            409,
            json!({"error": {"kind": "conflict", "message": "refused", "epoch": 2,
                "redirect": {"deployment": "d2", "url": null, "epoch": 2}}}),
        );
        assert!(
            matches!(&e, ClientError::Api { kind, redirect: Some(r), .. }
                if kind == "conflict" && r.deployment == "d2"),
            "{e}"
        );
    }

    fn parse(args: &[&str]) -> Command {
        let mut all = vec!["tern"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parses").command
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn idempotency_keys_and_txn_status_parse() {
        assert!(matches!(
            parse(&["insert", "a.d.t", "--rows", "[]", "--idempotency-key", "order-1"]),
            Command::Insert { key: Idempotency { idempotency_key: Some(k) }, .. } if k == "order-1"
        ));
        assert!(matches!(
            parse(&["insert", "a.d.t", "--rows", "[]"]),
            Command::Insert {
                key: Idempotency {
                    idempotency_key: None
                },
                ..
            }
        ));
        assert!(matches!(
            parse(&["load", "a.d.t", "x.csv", "--idempotency-key", "batch-7"]),
            Command::Load { key: Idempotency { idempotency_key: Some(k) }, .. } if k == "batch-7"
        ));
        assert!(matches!(
            parse(&["txn", "status", "acme", "42"]),
            Command::Txn(TxnCmd::Status { account, id: 42 }) if account == "acme"
        ));
        for bad in ["", "two words", "caf\u{e9}"] {
            let e = Cli::try_parse_from(["tern", "insert", "a.d.t", "--idempotency-key", bad])
                .expect_err("a bad key is refused");
            assert!(e.to_string().contains("--idempotency-key"), "{e}");
        }
        let mut all = vec!["tern", "txn", "status", "acme", "forty-two"];
        assert!(Cli::try_parse_from(&all).is_err(), "an id is a number");
        all.truncate(4);
        assert!(Cli::try_parse_from(&all).is_err(), "the id is required");
    }

    #[test]
    fn each_loaded_file_has_its_own_key() {
        assert_eq!(file_key(None, 1, 3), None);
        assert_eq!(file_key(Some("b"), 1, 1).as_deref(), Some("b"));
        assert_eq!(file_key(Some("b"), 1, 3).as_deref(), Some("b.1"));
        assert_eq!(file_key(Some("b"), 3, 3).as_deref(), Some("b.3"));
    }

    #[test]
    fn customer_key_options_parse_and_exclude_each_other() {
        assert!(matches!(
            parse(&["account", "customer-key", "acme", "--x25519-file", "/k/acme", "--create"]),
            Command::Account(AccountCmd::CustomerKey { x25519_file: Some(f), create: true, .. }) if f == "/k/acme"
        ));
        assert!(matches!(
            parse(&["account", "customer-key", "acme", "--kms-key-id", "alias/acme"]),
            Command::Account(AccountCmd::CustomerKey { kms_key_id: Some(k), create: false, .. }) if k == "alias/acme"
        ));
        assert!(matches!(
            parse(&["account", "customer-key", "acme"]),
            Command::Account(AccountCmd::CustomerKey {
                x25519_file: None,
                kms_key_id: None,
                remove: false,
                ..
            })
        ));
        for bad in [
            &[
                "account",
                "customer-key",
                "acme",
                "--x25519-file",
                "f",
                "--kms-key-id",
                "k",
            ][..],
            &[
                "account",
                "customer-key",
                "acme",
                "--kms-key-id",
                "k",
                "--remove",
            ],
            &["account", "customer-key", "acme", "--create"],
        ] {
            let mut all = vec!["tern"];
            all.extend_from_slice(bad);
            assert!(
                Cli::try_parse_from(all).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn replication_commands_parse() {
        assert!(matches!(
            parse(&["account", "global", "acme", "--group", "g1"]),
            Command::Account(AccountCmd::Global { name, group: Some(g) }) if name == "acme" && g == "g1"
        ));
        assert!(matches!(
            parse(&["account", "rotate-key", "acme"]),
            Command::Account(AccountCmd::RotateKey { name }) if name == "acme"
        ));
        assert!(matches!(
            parse(&["account", "drop", "acme"]),
            Command::Account(AccountCmd::Drop { name }) if name == "acme"
        ));
        assert!(matches!(
            parse(&["database", "replication", "acme", "sales", "disable"]),
            Command::Database(DatabaseCmd::Replication {
                action: OnOff::Disable,
                ..
            })
        ));
        assert!(matches!(
            parse(&["database", "create-replica", "acme", "r", "--group", "g", "--upstream", "d2"]),
            Command::Database(DatabaseCmd::CreateReplica { upstream: Some(u), .. }) if u == "d2"
        ));
        assert!(matches!(
            parse(&["database", "drop-replica", "acme", "r"]),
            Command::Database(DatabaseCmd::DropReplica { .. })
        ));
        assert!(matches!(
            parse(&["database", "refresh", "acme", "r"]),
            Command::Database(DatabaseCmd::Refresh { .. })
        ));
        assert!(matches!(
            parse(&["show", "global-accounts", "acme"]),
            Command::Show(ShowCmd::GlobalAccounts { .. })
        ));
        assert!(matches!(
            parse(&["show", "global-databases", "acme"]),
            Command::Show(ShowCmd::GlobalDatabases { .. })
        ));
        assert!(matches!(
            parse(&["--json", "show", "replication-status"]),
            Command::Show(ShowCmd::ReplicationStatus)
        ));
        // create-replica needs its group.
        assert!(Cli::try_parse_from(["tern", "database", "create-replica", "acme", "r"]).is_err());
    }

    #[test]
    fn null_cells_print_blank() {
        let row = blank_nulls(
            json!({"role": null, "name": "x"}),
            &["role", "name", "upstream"],
        );
        assert_eq!(row, json!({"role": "", "name": "x", "upstream": ""}));
    }

    #[test]
    fn exit_codes_follow_the_error_kind() {
        let api = |status: u16, kind: &str| {
            Failure::Client(ClientError::Api {
                status,
                kind: kind.into(),
                message: String::new(),
                redirect: None,
                body: Box::new(json!({})),
            })
            .exit_code()
        };
        assert_eq!(api(400, "invalid_input"), 2);
        assert_eq!(api(413, "invalid_input"), 2);
        assert_eq!(api(404, "not_found"), 3);
        assert_eq!(api(409, "conflict"), 4);
        assert_eq!(api(503, "unavailable"), 5);
        assert_eq!(api(429, "unavailable"), 5);
        assert_eq!(api(401, "unauthorized"), 6);
        assert_eq!(api(403, "forbidden"), 6);
        assert_eq!(api(500, "internal"), 1);
        assert_eq!(
            Failure::Client(ClientError::Input("x".into())).exit_code(),
            2
        );
        assert_eq!(Failure::Other("x".into()).exit_code(), 1);
        // The codes are documented where users look.
        for code in [
            "2 invalid input",
            "3 not found",
            "4 conflict",
            "5 unavailable",
            "6 not allowed",
        ] {
            assert!(AFTER_HELP.replace('\n', " ").contains(code), "{code}");
        }
    }

    #[test]
    fn a_flag_beats_the_profile_which_beats_the_default() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[profiles.eu]\nurl = \"https://eu:7420\"\ntoken = \"tern_eu\"\n",
        )
        .expect("write");
        let p = profile::load(Some(&file), Some("eu")).expect("eu");
        let mut cli = Cli::try_parse_from([
            "tern",
            "--profile",
            "eu",
            "--token",
            "flag",
            "account",
            "list",
        ])
        .expect("parse");
        let timeout = apply_profile(&mut cli, p.clone()).expect("apply");
        assert_eq!(cli.url.as_deref(), Some("https://eu:7420"));
        assert_eq!(cli.token.as_deref(), Some("flag"));
        assert_eq!(timeout, None);
        let mut cli =
            Cli::try_parse_from(["tern", "--timeout", "2m", "account", "list"]).expect("parse");
        let timeout = apply_profile(&mut cli, p.clone()).expect("apply");
        assert_eq!(timeout, Some(std::time::Duration::from_secs(120)));
        assert_eq!(cli.token.as_deref(), Some("tern_eu"));
        let mut cli =
            Cli::try_parse_from(["tern", "--timeout", "soon", "account", "list"]).expect("parse");
        let e = apply_profile(&mut cli, p).expect_err("bad duration");
        assert!(e.to_string().contains("--timeout"), "{e}");
    }
}
