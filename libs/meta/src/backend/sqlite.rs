//! The SQLite backend: the embedded default metadata store, one file.
//!
//! ```text
//! kv(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID   the key space
//! meta_schema(version INTEGER NOT NULL)                         one row: schema version
//! ```
//!
//! * **WAL journal**: readers never block the writer nor each other, and a crash (process
//!   or power) at any point leaves the last committed state: SQLite replays or discards the
//!   WAL tail on the next open.
//! * **Durability** ([`Synchronous`]): `FULL` by default — the WAL is fsynced after every
//!   durable commit and before it returns, so a commit that returned `Ok` survives power
//!   loss. Tern acts on commits outside the store right after they return (it
//!   acknowledges a DML commit to the client, deletes a message file it has just
//!   persisted from the replication bucket, names the next message file in a chain);
//!   with `NORMAL` a power loss may silently roll back the last commits while those
//!   external effects stay done — messages lost, a chain name reused. `NORMAL` (fsync only
//!   at checkpoints; same crash-consistency, only the last commits at risk on power loss)
//!   is offered for tests and benchmarks.
//! * **Several processes** may open the same file (on a local file system: SQLite's WAL
//!   needs shared memory, so not NFS/SMB). Write transactions start with
//!   `BEGIN IMMEDIATE`, which takes the write lock up front: writers queue (for up to
//!   `busy_timeout`, then retried with backoff `busy_retries` times) instead of failing
//!   with a deadlock when two read-then-write transactions meet.
//! * **Connections**: one writer connection behind a mutex (one write transaction at a
//!   time per process; SQLite allows only one per file anyway) and a small pool of reader
//!   connections (`query_only`), so reads run in parallel with a write.
//! * **Group commit**: writers that queue for the writer connection share one SQLite
//!   transaction. Each runs its body in a `SAVEPOINT` of the open transaction (a body
//!   that fails or panics is rolled back to it alone); the writer that finds nobody else
//!   queued (or the batch full) commits, and every member returns only
//!   when that commit did — with its outcome. So an `Ok` is still a durable commit, an
//!   `Err` still means nothing of that body was written, and the members run one after
//!   another, each seeing the ones before (serializable, in that order). A lone writer
//!   commits at once, as before.
//! * **The WAL fsync outside the writer lock**: the writer connection commits at
//!   `synchronous=NORMAL` (the WAL is appended to, not fsynced; SQLite still fsyncs it
//!   before every checkpoint), and a durable writer, once its group committed and the
//!   writer connection is let go, fsyncs the WAL file itself: one fsync at a time, each
//!   covering every group committed before it started, so writers waiting for one share
//!   the next ([`CommitCounts::synced`]). The next group runs its bodies meanwhile; before,
//!   every group held the writer connection for its fsync. An `Ok` is a durable commit as
//!   before. What changed: a durable write's effects can be read (by another reader or
//!   writer of this process) before its fsync ended. Whatever a reader acts on inside the
//!   store comes after it in the WAL, so is durable only with it; a reader acting outside
//!   the store on what it read has the guarantee of a deferred write (below).
//! * **Deferred writes** ([`Backend::write_deferred`]): a write whose effect recovery
//!   re-does from durable state (a commit's publish step: its Prepared row, log record and
//!   files are durable already) need not wait for an fsync of its own. It joins any group
//!   and returns once that group committed; it becomes durable with the next WAL fsync
//!   (the WAL is one file, fsynced whole) or checkpoint; a power loss before that rolls it
//!   back whole, never in part.
//!
//!   ```text
//!   writer A: lock ─ BEGIN IMMEDIATE ─ SAVEPOINT ─ body ─ RELEASE ─ (B queued) unlock ─ wait ┐
//!   writer B:        (queued) ──────────────── lock ─ SAVEPOINT ─ body ─ RELEASE ─ COMMIT ─┴▶ both Ok
//!   ```
//! * **Migrations**: [`SCHEMA_VERSION`] and an ordered list of migrations, applied at
//!   open in one transaction. A file with a newer version is refused
//!   ([`Error::UnknownSchemaVersion`]); a file of another application is refused and left
//!   untouched ([`Error::NotAMetaStore`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, KvTxn};
use crate::error::{Error, Result};
use crate::key::Key;

/// Commits of the writer connection, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Group transactions committed.
    pub groups: u64,
    /// fsyncs of the WAL made for durable writes (each covers every group committed before
    /// it started).
    pub synced: u64,
}

/// Writers that share one SQLite transaction at most (see the module docs): bounds how
/// long the first one waits for the commit while others keep coming.
const MAX_GROUP: usize = 64;

/// The schema version this build creates and migrates to.
pub const SCHEMA_VERSION: u32 = 3;

/// `PRAGMA application_id` of a Tern metadata store ("Tern"), so that `file(1)` and Tern
/// itself can tell the file apart from other SQLite databases.
pub const APPLICATION_ID: i32 = 0x5465_726E;

struct Migration {
    version: u32,
    what: &'static str,
    apply: fn(&Connection, &str) -> Result<()>,
}

/// Applied in order; a migration is never edited once released (add a new one).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "create the key-value table",
        apply: create_kv,
    },
    Migration {
        version: 2,
        what: "stamp the file with Tern's application_id",
        apply: stamp_application_id,
    },
    Migration {
        version: 3,
        what: "index the active micro-partitions of every table (tbl/<t>/mpa/<short>)",
        apply: index_active_micro_partitions,
    },
];

fn create_kv(c: &Connection, path: &str) -> Result<()> {
    c.execute_batch("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;")
        .map_err(sql_err(path, "apply migration"))
}

fn stamp_application_id(c: &Connection, path: &str) -> Result<()> {
    c.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sql_err(path, "apply migration"))
}

/// A key-space step: the active-set query reads only active rows from here on, so the rows
/// of the files active now are copied there once (see `versions.rs`).
fn index_active_micro_partitions(c: &Connection, path: &str) -> Result<()> {
    let mut kv = SqliteTxn {
        conn: c,
        writable: true,
        path,
    };
    let n = crate::store::MetaTxn::over(&mut kv).index_active_micro_partitions()?;
    tracing::info!(
        store = path,
        active = n,
        "indexed the active micro-partitions"
    );
    Ok(())
}

/// SQLite's `synchronous` setting for the writer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync the WAL at every commit: an acknowledged commit survives power loss.
    #[default]
    Full,
    /// fsync only at checkpoints: survives process crashes; a power loss may roll back the
    /// last commits (never corrupts). Tests and benchmarks only.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "PRAGMA synchronous = FULL",
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
        }
    }
}

/// Settings of the SQLite backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteOptions {
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How long SQLite itself waits for a lock held by another connection or process.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// How many more times a transaction that still found the store busy is retried
    /// (with backoff) before [`Error::Busy`].
    pub busy_retries: u32,
    /// Reader connections kept open between reads.
    pub max_idle_readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            busy_retries: 5,
            max_idle_readers: 4,
        }
    }
}

/// The SQLite backend. See the module docs.
pub struct SqliteBackend {
    path: PathBuf,
    display: String,
    options: SqliteOptions,
    writer: Mutex<Writer>,
    /// Writers waiting for `writer` (they join the open group instead of a new one).
    queued: AtomicUsize,
    readers: Mutex<Vec<Connection>>,
    /// Groups committed (the last one's number).
    groups: AtomicU64,
    synced: AtomicU64,
    /// The WAL's durable end: held across each fsync, so one runs at a time.
    wal: Mutex<WalSync>,
}

/// How far the WAL is known durable.
#[derive(Default)]
struct WalSync {
    /// Groups committed before the last WAL fsync started (all durable).
    durable_upto: u64,
    /// The WAL file, opened at the first fsync (SQLite keeps it while the writer
    /// connection is open).
    file: Option<std::fs::File>,
}

/// The writer connection and the group whose transaction is open on it.
struct Writer {
    conn: Connection,
    /// Open while members have run and their commit is pending.
    group: Option<Arc<Group>>,
    /// Members of `group` whose bodies succeeded (the ones the commit decides for).
    members: usize,
}

/// What a group's commit came to: the group's number (see [`SqliteBackend::sync_wal`]).
type GroupOutcome = std::result::Result<u64, GroupFailure>;

/// One shared write transaction: its members wait for its outcome.
#[derive(Default)]
struct Group {
    outcome: Mutex<Option<GroupOutcome>>,
    done: Condvar,
}

/// Why a group's transaction did not commit (each member gets an [`Error::Sqlite`] of it).
#[derive(Clone, Debug)]
struct GroupFailure {
    op: &'static str,
    code: Option<rusqlite::ffi::Error>,
    message: String,
}

impl GroupFailure {
    fn of(op: &'static str, e: &rusqlite::Error) -> Self {
        let code = match e {
            rusqlite::Error::SqliteFailure(c, _) => Some(*c),
            _ => None,
        };
        Self {
            op,
            code,
            message: e.to_string(),
        }
    }

    fn error(&self, path: &str) -> Error {
        let code = self
            .code
            .unwrap_or_else(|| rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR));
        Error::Sqlite {
            path: path.to_string(),
            op: self.op,
            source: rusqlite::Error::SqliteFailure(code, Some(self.message.clone())),
        }
    }
}

impl Group {
    fn finish(&self, outcome: GroupOutcome) {
        *lock(&self.outcome) = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> GroupOutcome {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(o) = outcome.as_ref() {
                return o.clone();
            }
            outcome = self
                .done
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A panic inside a transaction body unwinds through rusqlite's `Transaction`, whose drop
/// rolls back; the connection is reusable, so a poisoned lock is taken over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run a statement of the write path that takes no parameters, prepared once per
/// connection: a group member's `SAVEPOINT`/`RELEASE` and the group's `BEGIN`/`COMMIT` are
/// run for every write, and parsing them each time was a visible share of a commit's CPU.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn sql_err<'a>(path: &'a str, op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |source| {
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
            Error::NotAMetaStore {
                path: path.to_string(),
                reason: "not an SQLite database",
            }
        } else {
            Error::Sqlite {
                path: path.to_string(),
                op,
                source,
            }
        }
    }
}

impl SqliteBackend {
    /// Open (creating if needed) the store file at `path` and bring its schema to
    /// [`SCHEMA_VERSION`]. The parent directory must exist.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let display = path.display().to_string();
        let writer = open_connection(&path, &display, &options)?;
        // Refuse someone else's database before changing anything in it.
        check_ownership(&writer, &display)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql_err(&display, "set journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Sqlite {
                path: display,
                op: "set journal_mode=WAL",
                source: rusqlite::Error::InvalidQuery,
            });
        }
        // The migration below commits at the configured setting; the writer's groups then
        // at NORMAL, their WAL fsync made by `sync_wal` (see the module docs).
        run_cached(&writer, options.synchronous.pragma())
            .map_err(sql_err(&display, "set synchronous"))?;
        // Truncate the WAL file after checkpoints instead of letting it keep its peak size.
        writer
            .pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(sql_err(&display, "set journal_size_limit"))?;
        let backend = Self {
            path,
            display,
            options,
            writer: Mutex::new(Writer {
                conn: writer,
                group: None,
                members: 0,
            }),
            queued: AtomicUsize::new(0),
            readers: Mutex::new(Vec::new()),
            groups: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            wal: Mutex::new(WalSync::default()),
        };
        backend.with_busy_retry("migrate", || {
            let mut w = lock(&backend.writer);
            migrate(&mut w.conn, &backend.display)
        })?;
        run_cached(&lock(&backend.writer).conn, Synchronous::Normal.pragma())
            .map_err(sql_err(&backend.display, "set synchronous"))?;
        Ok(backend)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<i64> {
        let w = lock(&self.writer);
        w.conn
            .query_row("SELECT version FROM meta_schema", [], |r| r.get(0))
            .map_err(sql_err(&self.display, "read schema version"))
    }

    /// Run SQLite's `integrity_check`: the problems found (empty when the file is sound).
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let w = lock(&self.writer);
        let mut stmt = w
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(sql_err(&self.display, "integrity check"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_err(&self.display, "integrity check"))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// Run `op`, retrying with backoff while another connection holds the lock.
    fn with_busy_retry<T>(&self, op: &'static str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 0u32;
        loop {
            match f() {
                Err(e) if e.is_busy() => {
                    attempt += 1;
                    if attempt > self.options.busy_retries {
                        return Err(match e {
                            Error::Sqlite { source, .. } => Error::Busy {
                                path: self.display.clone(),
                                op,
                                attempts: attempt,
                                source,
                            },
                            other => other,
                        });
                    }
                    let backoff = Duration::from_millis(10u64 << attempt.min(6));
                    tracing::warn!(store = %self.display, op, attempt, ?backoff, "metadata store busy, retrying");
                    std::thread::sleep(backoff);
                }
                other => return other,
            }
        }
    }

    /// The commits of the writer connection so far.
    pub fn commit_counts(&self) -> CommitCounts {
        CommitCounts {
            groups: self.groups.load(Ordering::Relaxed),
            synced: self.synced.load(Ordering::Relaxed),
        }
    }

    /// One attempt of [`Backend::write`] (`durable`) or [`Backend::write_deferred`] with
    /// group commit (see the module docs).
    fn write_in_group(
        &self,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
        durable: bool,
    ) -> Result<()> {
        // With `synchronous=NORMAL` configured nothing is fsynced.
        let sync = durable && self.options.synchronous == Synchronous::Full;
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut w = lock(&self.writer);
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let group = match &w.group {
            Some(g) if !w.conn.is_autocommit() => Arc::clone(g),
            stale => {
                if let Some(g) = stale {
                    // SQLite ended the group's transaction by itself (an I/O error, a full
                    // disk): none of its members committed.
                    g.finish(Err(GroupFailure {
                        op: "commit",
                        code: None,
                        message: "SQLite rolled the shared transaction back".into(),
                    }));
                }
                if !w.conn.is_autocommit() {
                    // Defensive: a transaction left open would make BEGIN fail forever.
                    w.conn
                        .execute_batch("ROLLBACK")
                        .map_err(sql_err(&self.display, "roll back a stale transaction"))?;
                }
                w.group = None;
                w.members = 0;
                run_cached(&w.conn, "BEGIN IMMEDIATE")
                    .map_err(sql_err(&self.display, "begin write transaction"))?;
                let g = Arc::new(Group::default());
                w.group = Some(Arc::clone(&g));
                g
            }
        };
        let own = self.run_member(&mut w, f);
        let joined = matches!(own, Ok(Ok(())));
        if joined {
            w.members += 1;
        }
        let alone = self.queued.load(Ordering::SeqCst) == 0;
        let committed = if alone || w.members >= MAX_GROUP || w.conn.is_autocommit() {
            let outcome = self.end_group(&mut w);
            drop(w);
            outcome
        } else {
            drop(w);
            match own {
                Ok(Ok(())) => group.wait(),
                // Not waited for: this body's writes were rolled back.
                _ => Ok(0),
            }
        };
        match own {
            Ok(Ok(())) => {
                let number = committed.map_err(|e| e.error(&self.display))?;
                if sync { self.sync_wal(number) } else { Ok(()) }
            }
            Ok(Err(e)) => Err(e),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Make the WAL durable up to group `number` at least (committed before this call):
    /// returns at once when an fsync that started after it committed has ended; else
    /// waits for the one running (if any) and fsyncs the WAL, for every group committed
    /// by then. Called without the writer connection, so the next group runs meanwhile.
    fn sync_wal(&self, number: u64) -> Result<()> {
        let mut wal = lock(&self.wal);
        if wal.durable_upto >= number {
            return Ok(());
        }
        // Every group up to here has been written to the WAL (its COMMIT returned).
        let upto = self.groups.load(Ordering::SeqCst);
        let fsync_failed = |e: std::io::Error| Error::Sqlite {
            path: self.display.clone(),
            op: "fsync the WAL",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                Some(e.to_string()),
            ),
        };
        let file = match &mut wal.file {
            Some(f) => f,
            none => none.insert(
                std::fs::File::open(format!("{}-wal", self.path.display()))
                    .map_err(fsync_failed)?,
            ),
        };
        file.sync_data().map_err(fsync_failed)?;
        wal.durable_upto = upto;
        self.synced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Run one member's body in a savepoint of the open transaction; a body that fails or
    /// panics is rolled back to it (the others' writes stay).
    #[allow(clippy::type_complexity)]
    fn run_member(
        &self,
        w: &mut Writer,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> std::result::Result<Result<()>, Box<dyn std::any::Any + Send>> {
        if let Err(e) = run_cached(&w.conn, "SAVEPOINT member") {
            return Ok(Err(sql_err(&self.display, "begin write transaction")(e)));
        }
        let conn = &w.conn;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&mut SqliteTxn {
                conn,
                writable: true,
                path: &self.display,
            })
        }));
        if w.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (the savepoint with it).
            return match out {
                Ok(Ok(())) => Ok(Err(Error::Sqlite {
                    path: self.display.clone(),
                    op: "write transaction",
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("SQLite rolled the transaction back".into()),
                    ),
                })),
                other => other,
            };
        }
        let end = match &out {
            Ok(Ok(())) => run_cached(&w.conn, "RELEASE member"),
            _ => w.conn.execute_batch("ROLLBACK TO member; RELEASE member"),
        };
        match (end, out) {
            (Ok(()), out) => out,
            (Err(e), Ok(Ok(()))) => Ok(Err(sql_err(&self.display, "end savepoint")(e))),
            (Err(_), out) => out,
        }
    }

    /// Commit the open group's transaction and tell its members the outcome.
    fn end_group(&self, w: &mut Writer) -> GroupOutcome {
        let outcome = self.commit_group(w).map(|()| {
            if w.members > 0 {
                self.groups.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                self.groups.load(Ordering::SeqCst)
            }
        });
        w.members = 0;
        if let Some(group) = w.group.take() {
            group.finish(outcome.clone());
        }
        outcome
    }

    /// Commit the open group's transaction (roll it back when no member is left in it).
    fn commit_group(&self, w: &mut Writer) -> std::result::Result<(), GroupFailure> {
        if w.conn.is_autocommit() {
            return Err(GroupFailure {
                op: "commit",
                code: None,
                message: "SQLite rolled the shared transaction back".into(),
            });
        }
        let (op, sql) = if w.members == 0 {
            ("roll back", "ROLLBACK")
        } else {
            ("commit", "COMMIT")
        };
        match run_cached(&w.conn, sql) {
            Ok(()) => Ok(()),
            Err(e) => {
                if !w.conn.is_autocommit() {
                    let _ = w.conn.execute_batch("ROLLBACK");
                }
                Err(GroupFailure::of(op, &e))
            }
        }
    }

    fn take_reader(&self) -> Result<Connection> {
        if let Some(c) = lock(&self.readers).pop() {
            return Ok(c);
        }
        let c = open_connection(&self.path, &self.display, &self.options)?;
        c.pragma_update(None, "query_only", true)
            .map_err(sql_err(&self.display, "set query_only"))?;
        Ok(c)
    }

    fn return_reader(&self, c: Connection) {
        // A connection still inside a transaction (a failed rollback) is not reused.
        if c.is_autocommit() {
            let mut pool = lock(&self.readers);
            if pool.len() < self.options.max_idle_readers {
                pool.push(c);
            }
        }
    }
}

fn open_connection(path: &Path, display: &str, options: &SqliteOptions) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql_err(display, "open"))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(sql_err(display, "set busy_timeout"))?;
    Ok(conn)
}

/// Refuse files that belong to another application. Reads only.
fn check_ownership(conn: &Connection, path: &str) -> Result<()> {
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(sql_err(path, "read application_id"))?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(Error::NotAMetaStore {
            path: path.to_string(),
            reason: "its application_id belongs to another application",
        });
    }
    let (ours, others): (i64, i64) = conn
        .query_row(
            "SELECT count(*) FILTER (WHERE name = 'meta_schema'), \
                    count(*) FILTER (WHERE name <> 'meta_schema') \
             FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql_err(path, "read the schema"))?;
    if ours == 0 && others > 0 {
        return Err(Error::NotAMetaStore {
            path: path.to_string(),
            reason: "it has tables but no meta_schema table",
        });
    }
    Ok(())
}

/// Bring the schema to [`SCHEMA_VERSION`] in one transaction (concurrent openers
/// serialize on `BEGIN IMMEDIATE`; the second finds the work done).
fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    let tx = Transaction::new(conn, TransactionBehavior::Immediate)
        .map_err(sql_err(path, "begin migration"))?;
    check_ownership(&tx, path)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS meta_schema (version INTEGER NOT NULL);")
        .map_err(sql_err(path, "create meta_schema"))?;
    let versions: Vec<i64> = tx
        .prepare("SELECT version FROM meta_schema")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(sql_err(path, "read schema version"))?;
    let current = match versions.as_slice() {
        [] => {
            tx.execute("INSERT INTO meta_schema (version) VALUES (0)", [])
                .map_err(sql_err(path, "initialize meta_schema"))?;
            0
        }
        [v] => *v,
        _ => {
            return Err(Error::NotAMetaStore {
                path: path.to_string(),
                reason: "meta_schema holds more than one row",
            });
        }
    };
    if current > i64::from(SCHEMA_VERSION) {
        return Err(Error::UnknownSchemaVersion {
            path: path.to_string(),
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    if current < 0 {
        return Err(Error::NotAMetaStore {
            path: path.to_string(),
            reason: "meta_schema holds a negative version",
        });
    }
    for m in MIGRATIONS.iter().filter(|m| i64::from(m.version) > current) {
        tracing::info!(
            store = path,
            version = m.version,
            what = m.what,
            "migrating metadata store"
        );
        (m.apply)(&tx, path)?;
    }
    if current < i64::from(SCHEMA_VERSION) {
        tx.execute("UPDATE meta_schema SET version = ?1", [SCHEMA_VERSION])
            .map_err(sql_err(path, "record schema version"))?;
    }
    tx.commit().map_err(sql_err(path, "commit migration"))
}

impl Backend for SqliteBackend {
    fn write(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        self.with_busy_retry("write transaction", || self.write_in_group(f, true))
    }

    fn write_deferred(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        self.with_busy_retry("write transaction", || self.write_in_group(f, false))
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        let mut conn = self.take_reader()?;
        let result = self.with_busy_retry("read transaction", || {
            // A deferred transaction takes its snapshot at the first read and keeps it.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(sql_err(&self.display, "begin read transaction"))?;
            f(&mut SqliteTxn {
                conn: &tx,
                writable: false,
                path: &self.display,
            })?;
            tx.rollback()
                .map_err(sql_err(&self.display, "end read transaction"))
        });
        self.return_reader(conn);
        result
    }
}

struct SqliteTxn<'c> {
    conn: &'c Connection,
    writable: bool,
    path: &'c str,
}

impl SqliteTxn<'_> {
    fn check_writable(&self, key: &[u8]) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                key: Key::from_bytes(key.to_vec()).to_string(),
            })
        }
    }
}

impl KvTxn for SqliteTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(sql_err(self.path, "get"))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_writable(key)?;
        self.conn
            .prepare_cached(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute((key, value)))
            .map(drop)
            .map_err(sql_err(self.path, "put"))
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.check_writable(key)?;
        self.conn
            .prepare_cached("DELETE FROM kv WHERE key = ?1")
            .and_then(|mut s| s.execute([key]))
            .map(drop)
            .map_err(sql_err(self.path, "delete"))
    }

    fn delete_range(&mut self, start: &[u8], end: &[u8]) -> Result<()> {
        self.check_writable(start)?;
        self.conn
            .prepare_cached("DELETE FROM kv WHERE key >= ?1 AND key < ?2")
            .and_then(|mut s| s.execute((start, end)))
            .map(drop)
            .map_err(sql_err(self.path, "delete a range"))
    }

    fn undone(&mut self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>) -> Result<()> {
        if !self.writable {
            // Nothing it could write (its writes fail): nothing to undo.
            return f(self);
        }
        // A savepoint nested in the member's own (see the module docs).
        self.conn
            .execute_batch("SAVEPOINT undone")
            .map_err(sql_err(self.path, "begin an undone body"))?;
        let out = f(self);
        self.conn
            .execute_batch("ROLLBACK TO undone; RELEASE undone")
            .map_err(sql_err(self.path, "undo a body"))?;
        out
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(
                "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map((start, end, limit), |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql_err(self.path, "scan"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::sqlite_is_busy;

    #[test]
    fn migrations_are_ordered_and_end_at_the_schema_version() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<u32> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn options_from_config() {
        let o: SqliteOptions =
            serde_json::from_str(r#"{"synchronous":"normal","busy_timeout":"250ms"}"#).unwrap();
        assert_eq!(o.synchronous, Synchronous::Normal);
        assert_eq!(o.busy_timeout, Duration::from_millis(250));
        assert_eq!(
            o.max_idle_readers,
            SqliteOptions::default().max_idle_readers
        );
        assert!(serde_json::from_str::<SqliteOptions>(r#"{"sync":"full"}"#).is_err());
    }

    #[test]
    fn write_read_and_busy_classification() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(dir.path().join("m.db"), SqliteOptions::default()).unwrap();
        assert_eq!(b.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
        b.write(&mut |t| {
            t.put(b"a", b"1")?;
            t.put(b"b", b"2")?;
            t.put(b"a", b"3")?;
            t.delete(b"b")?;
            assert_eq!(t.get(b"a")?.as_deref(), Some(&b"3"[..]));
            Ok(())
        })
        .unwrap();
        b.read(&mut |t| {
            assert_eq!(
                t.scan(b"", b"\xff", 10)?,
                vec![(b"a".to_vec(), b"3".to_vec())]
            );
            assert!(matches!(t.put(b"x", b"y"), Err(Error::ReadOnly { .. })));
            Ok(())
        })
        .unwrap();
        assert!(b.integrity_check().unwrap().is_empty());
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(sqlite_is_busy(&busy));
    }

    /// Runs `first` (durable or deferred) with a body that holds the group open until a
    /// second writer (`second`) is queued for the writer connection, then that writer:
    /// the group `first` opened is still open when `second` comes.
    fn two_writers(b: &Arc<SqliteBackend>, first: bool, second: bool) {
        let (running, started) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let b = Arc::clone(b);
            std::thread::spawn(move || {
                // Queue only once the first writer's body is running.
                started.recv().unwrap();
                let body = &mut |t: &mut dyn KvTxn| t.put(b"second", b"2");
                if second {
                    b.write(body)
                } else {
                    b.write_deferred(body)
                }
                .unwrap();
            })
        };
        let body = &mut |t: &mut dyn KvTxn| {
            t.put(b"first", b"1")?;
            let _ = running.send(());
            // Deterministic: the body returns once the other writer waits for the lock.
            while b.queued.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            Ok(())
        };
        if first {
            b.write(body)
        } else {
            b.write_deferred(body)
        }
        .unwrap();
        waiter.join().unwrap();
    }

    fn synchronous_now(b: &SqliteBackend) -> i64 {
        let w = lock(&b.writer);
        w.conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_durable_write_fsyncs_the_wal_and_a_deferred_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(
            SqliteBackend::open(dir.path().join("m.db"), SqliteOptions::default()).unwrap(),
        );
        let counts = |groups, synced| CommitCounts { groups, synced };
        b.write_deferred(&mut |t| t.put(b"a", b"1")).unwrap();
        assert_eq!(b.commit_counts(), counts(1, 0), "a lone deferred write");
        b.read(&mut |t| {
            assert_eq!(t.get(b"a")?.as_deref(), Some(&b"1"[..]), "visible at once");
            Ok(())
        })
        .unwrap();
        b.write(&mut |t| t.put(b"b", b"2")).unwrap();
        assert_eq!(b.commit_counts(), counts(2, 1), "a lone durable write");
        assert_eq!(
            synchronous_now(&b),
            1,
            "the WAL fsync is ours, not COMMIT's"
        );

        // A durable writer joins a deferred group and fsyncs it.
        two_writers(&b, false, true);
        assert_eq!(b.commit_counts(), counts(3, 2));
        // A deferred writer joins a durable group (fsynced with it).
        two_writers(&b, true, false);
        assert_eq!(b.commit_counts(), counts(4, 3));
        // Two deferred writers share one group, unsynced.
        two_writers(&b, false, false);
        assert_eq!(b.commit_counts(), counts(5, 3));
        b.read(&mut |t| {
            assert_eq!(t.scan(b"", b"\xff", 10)?.len(), 4);
            Ok(())
        })
        .unwrap();
    }

    /// The WAL fsync is made without the writer connection: while one runs (here: held
    /// by the test), the next groups commit, and their writers share the next fsync.
    #[test]
    fn groups_commit_while_the_wal_is_fsynced_and_share_the_next_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(
            SqliteBackend::open(dir.path().join("m.db"), SqliteOptions::default()).unwrap(),
        );
        let committed = |n: u64| {
            while b.commit_counts().groups < n {
                std::thread::yield_now();
            }
        };
        let held = lock(&b.wal);
        let writer = |key: &'static [u8]| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || b.write(&mut |t| t.put(key, b"v")))
        };
        let first = writer(b"first");
        committed(1);
        // The first writer waits for the WAL; the writer connection is free.
        let second = writer(b"second");
        committed(2);
        b.read(&mut |t| {
            assert_eq!(t.scan(b"", b"\xff", 10)?.len(), 2, "both committed");
            Ok(())
        })
        .unwrap();
        assert!(
            !first.is_finished() && !second.is_finished(),
            "neither durable yet"
        );
        drop(held);
        first.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
        assert_eq!(
            b.commit_counts(),
            CommitCounts {
                groups: 2,
                synced: 1
            },
            "one fsync made both durable"
        );
    }

    #[test]
    fn with_synchronous_normal_configured_every_write_is_one_kind() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            synchronous: Synchronous::Normal,
            ..SqliteOptions::default()
        };
        let b = Arc::new(SqliteBackend::open(dir.path().join("m.db"), options).unwrap());
        two_writers(&b, false, true);
        assert_eq!(
            b.commit_counts(),
            CommitCounts {
                groups: 1,
                synced: 0
            }
        );
        assert_eq!(synchronous_now(&b), 1);
    }
}
