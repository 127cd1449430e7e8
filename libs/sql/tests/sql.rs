//! SQL over Tern tables against known answers: DDL, DML, joins, group by, windows, time
//! travel, pruning, statistics from metadata, errors, and refusals on a replica.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::{ExecutionPlan, collect};
use tern_clock::ManualClock;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_meta::{AccountDpo, DatabaseDpo, DatabaseRole, MetaStore, SqliteOptions};
use tern_sql::datafusion;
use tern_sql::{SqlError, SqlSession, TernScanExec};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};
use tern_storage::{ObjectStore, StoreConfig, StoreExt as _, open_store};
use tern_table::{LocalCommitter, Predicate, ScanRequest, TableOptions, Tables};

struct Fixture {
    tables: Arc<Tables>,
    db: DatabaseId,
    _dir: tempfile::TempDir,
    volume: Arc<dyn ObjectStore>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let volume = open_store(&StoreConfig {
        url: format!("file://{}", dir.path().join("volume").display()),
        ..Default::default()
    })
    .expect("volume");
    let meta =
        MetaStore::open_sqlite(dir.path().join("meta.db"), SqliteOptions::default()).expect("meta");
    let keys = LocalKeyProvider::open_or_create(&dir.path().join("keys"), SystemRandom::shared())
        .expect("keys");
    let clock = ManualClock::new(1_700_000_000_000);
    let db = DatabaseId::new("db1").expect("id");
    let acme = AccountId::new("acme").expect("id");
    meta.write(|tx| {
        tx.create_account(&AccountDpo::local(acme.clone(), 0))?;
        tx.create_database(&DatabaseDpo::local(db.clone(), acme.clone(), "sales", 0))
    })
    .expect("account and database");
    let d1 = DeploymentId::new("d1").expect("id");
    let committer = LocalCommitter::new(
        d1.clone(),
        meta.clone(),
        Arc::clone(&volume),
        clock.shared(),
    );
    let tables = Tables::new(
        d1,
        Arc::clone(&volume),
        meta,
        Arc::new(keys),
        clock.shared(),
        TableOptions::default(),
        Arc::new(committer),
    );
    Fixture {
        tables: Arc::new(tables),
        db,
        _dir: dir,
        volume,
    }
}

impl Fixture {
    fn session(&self) -> SqlSession {
        SqlSession::new(Arc::clone(&self.tables), self.db.clone())
    }
}

async fn run(s: &SqlSession, sql: &str) -> Vec<RecordBatch> {
    s.run(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn table_text(s: &SqlSession, sql: &str) -> String {
    pretty_format_batches(&run(s, sql).await)
        .expect("format")
        .to_string()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).collect()
}

async fn err(s: &SqlSession, sql: &str) -> SqlError {
    match s.run(sql).await {
        Err(e) => e,
        Ok(a) => match a.collect().await {
            Err(e) => e,
            Ok(b) => panic!("{sql}: expected an error, got {} batch(es)", b.len()),
        },
    }
}

async fn seed(s: &SqlSession) {
    run(
        s,
        "CREATE TABLE customers (id BIGINT NOT NULL, name VARCHAR, region VARCHAR)",
    )
    .await;
    run(
        s,
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer BIGINT, amount DECIMAL(10,2), day DATE)",
    )
    .await;
    run(
        s,
        "INSERT INTO customers VALUES (1, 'ann', 'eu'), (2, 'bob', 'us'), (3, 'cy', 'eu')",
    )
    .await;
    run(
        s,
        "INSERT INTO orders VALUES \
         (10, 1, 5.50, '2026-01-01'), (11, 1, 4.50, '2026-01-02'), \
         (12, 2, 10.00, '2026-01-02'), (13, 3, 1.25, '2026-01-03'), (14, 3, 2.75, '2026-01-04')",
    )
    .await;
}

#[tokio::test]
async fn joins_group_by_and_windows_give_known_answers() {
    let f = fixture();
    let s = f.session();
    seed(&s).await;
    let text = table_text(
        &s,
        "SELECT c.region, count(*) AS n, sum(o.amount) AS total \
         FROM orders o JOIN customers c ON o.customer = c.id \
         GROUP BY c.region ORDER BY c.region",
    )
    .await;
    assert_eq!(
        lines(&text),
        vec![
            "+--------+---+-------+",
            "| region | n | total |",
            "+--------+---+-------+",
            "| eu     | 4 | 14.00 |",
            "| us     | 1 | 10.00 |",
            "+--------+---+-------+",
        ],
        "{text}"
    );
    let text = table_text(
        &s,
        "SELECT id, customer, \
           row_number() OVER (PARTITION BY customer ORDER BY id) AS rn, \
           sum(amount) OVER (PARTITION BY customer) AS per_customer \
         FROM orders ORDER BY id",
    )
    .await;
    assert_eq!(
        lines(&text),
        vec![
            "+----+----------+----+--------------+",
            "| id | customer | rn | per_customer |",
            "+----+----------+----+--------------+",
            "| 10 | 1        | 1  | 10.00        |",
            "| 11 | 1        | 2  | 10.00        |",
            "| 12 | 2        | 1  | 10.00        |",
            "| 13 | 3        | 1  | 4.00         |",
            "| 14 | 3        | 2  | 4.00         |",
            "+----+----------+----+--------------+",
        ],
        "{text}"
    );
    // A left join keeps customers without orders; a filter on a date column.
    run(&s, "INSERT INTO customers VALUES (4, 'dee', NULL)").await;
    let text = table_text(
        &s,
        "SELECT c.name, count(o.id) AS n FROM customers c \
         LEFT JOIN orders o ON o.customer = c.id AND o.day >= DATE '2026-01-02' \
         GROUP BY c.name ORDER BY c.name",
    )
    .await;
    assert_eq!(
        lines(&text),
        vec![
            "+------+---+",
            "| name | n |",
            "+------+---+",
            "| ann  | 1 |",
            "| bob  | 1 |",
            "| cy   | 2 |",
            "| dee  | 0 |",
            "+------+---+",
        ],
        "{text}"
    );
}

/// The scan node of a physical plan, and the plan run to completion.
async fn run_plan(s: &SqlSession, sql: &str) -> (Vec<RecordBatch>, Arc<dyn ExecutionPlan>) {
    let df = s.context().sql(sql).await.expect("plan");
    let plan = df.create_physical_plan().await.expect("physical plan");
    let batches = collect(Arc::clone(&plan), s.context().task_ctx())
        .await
        .expect("run");
    (batches, plan)
}

fn metric(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    plan.metrics()
        .expect("metrics")
        .sum_by_name(name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .as_usize()
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Table `t (id, v)` made by four inserts: four micro-partitions with disjoint id ranges
/// (0..100, 100..200, 200..300, 300..400; `v` is the id's last two digits).
async fn four_files(s: &SqlSession) {
    run(s, "CREATE TABLE t (id BIGINT NOT NULL, v DOUBLE)").await;
    for k in 0..4 {
        let values: Vec<String> = (0..100)
            .map(|i| format!("({}, {})", k * 100 + i, i))
            .collect();
        run(s, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    }
}

#[tokio::test]
async fn filters_prune_micro_partitions_by_their_statistics() {
    let f = fixture();
    let s = f.session();
    four_files(&s).await;
    let (batches, plan) = run_plan(&s, "SELECT id, v FROM t WHERE id >= 250 AND id < 260").await;
    assert_eq!(rows(&batches), 10);
    let scan = TernScanExec::in_plan(&plan).pop().expect("a Tern scan");
    assert_eq!(metric(&scan, "files_total"), 4);
    assert_eq!(
        metric(&scan, "files_pruned"),
        3,
        "{}",
        datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
    );
    assert_eq!(metric(&scan, "files_read"), 1);
    // IN and OR prune too; a filter that cannot be pushed (a function of a column) reads all.
    let (batches, plan) = run_plan(&s, "SELECT id FROM t WHERE id IN (5, 305) OR id = 7").await;
    assert_eq!(rows(&batches), 3);
    assert_eq!(metric(&TernScanExec::in_plan(&plan)[0], "files_read"), 2);
    let (batches, plan) = run_plan(&s, "SELECT id FROM t WHERE id % 100 = 0").await;
    assert_eq!(rows(&batches), 4);
    assert_eq!(metric(&TernScanExec::in_plan(&plan)[0], "files_read"), 4);
}

/// A scan with a pushed-down filter reports its files' row count and column ranges as
/// bounds (inexact): the filter above it estimates its selectivity from them, and a join
/// builds its hash table on the input estimated smaller. Without them a filtered fact
/// table counted as unknown and the join built on the larger side.
#[tokio::test]
async fn a_filtered_scan_reports_its_files_ranges_as_bounds() {
    use datafusion::common::ScalarValue;
    use datafusion::common::stats::Precision;
    use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};
    let f = fixture();
    let s = f.session();
    four_files(&s).await;
    let (_, plan) = run_plan(&s, "SELECT id FROM t WHERE v < 10").await;
    let scan = TernScanExec::in_plan(&plan).pop().expect("a Tern scan");
    let stats = StatisticsContext::new()
        .compute(scan.as_ref(), &StatisticsArgs::new())
        .expect("statistics");
    assert_eq!(stats.num_rows, Precision::Inexact(400));
    let id = &stats.column_statistics[0];
    assert_eq!(
        id.min_value,
        Precision::Inexact(ScalarValue::Int64(Some(0)))
    );
    assert_eq!(
        id.max_value,
        Precision::Inexact(ScalarValue::Int64(Some(399)))
    );
    // Without a filter they are exact (count(*) and min/max are answered from them).
    let (_, plan) = run_plan(&s, "SELECT id FROM t").await;
    let scan = TernScanExec::in_plan(&plan).pop().expect("a Tern scan");
    let stats = StatisticsContext::new()
        .compute(scan.as_ref(), &StatisticsArgs::new())
        .expect("statistics");
    assert_eq!(stats.num_rows, Precision::Exact(400));
    assert_eq!(
        stats.column_statistics[0].max_value,
        Precision::Exact(ScalarValue::Int64(Some(399)))
    );
}

/// A scan is split into disjoint parts of the version's files, one per partition the
/// session runs (one per core by default): every row comes back once, each file is read
/// by one part, and a pushed-down limit keeps the scan whole.
#[tokio::test]
async fn a_scan_runs_in_disjoint_parts_one_per_partition() {
    let f = fixture();
    let s = f.session();
    s.context()
        .state_ref()
        .write()
        .config_mut()
        .options_mut()
        .execution
        .target_partitions = 3;
    four_files(&s).await;
    let (batches, plan) = run_plan(&s, "SELECT id FROM t").await;
    let scan = TernScanExec::in_plan(&plan).pop().expect("a Tern scan");
    assert_eq!(scan.properties().output_partitioning().partition_count(), 3);
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .expect("int64")
                .values()
                .to_vec()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..400).collect::<Vec<i64>>(), "every row once");
    assert_eq!(metric(&scan, "files_total"), 4);
    assert_eq!(metric(&scan, "files_read"), 4, "each file read by one part");
    // Pruning within the parts adds up as before.
    let (batches, plan) = run_plan(&s, "SELECT id FROM t WHERE id >= 250 AND id < 260").await;
    assert_eq!(rows(&batches), 10);
    let scan = TernScanExec::in_plan(&plan).pop().expect("a Tern scan");
    assert_eq!(metric(&scan, "files_pruned"), 3);
    assert_eq!(metric(&scan, "files_read"), 1);
    // Aggregates over the parts.
    assert_eq!(
        table_text(&s, "SELECT count(*) AS n, sum(v) AS s FROM t WHERE v >= 50").await,
        table_text(&s, "SELECT 200 AS n, 14900.0 AS s").await
    );
    // A limit keeps one part.
    let (batches, plan) = run_plan(&s, "SELECT id FROM t LIMIT 5").await;
    assert_eq!(rows(&batches), 5);
    let scan = TernScanExec::in_plan(&plan).pop().expect("a Tern scan");
    assert_eq!(scan.properties().output_partitioning().partition_count(), 1);
}

#[tokio::test]
async fn count_min_max_come_from_metadata_without_reading_a_file() {
    let f = fixture();
    let s = f.session();
    run(
        &s,
        "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR, v DOUBLE)",
    )
    .await;
    run(&s, "INSERT INTO t VALUES (1, 'a', 1.5), (2, NULL, 2.5)").await;
    run(&s, "INSERT INTO t VALUES (7, 'z', 0.5)").await;
    // Remove every micro-partition from the volume: an answer now can only come from the
    // metadata store.
    let t = f.tables.find_table(&f.db, "public", "t").expect("t");
    let files = f
        .tables
        .meta()
        .read(|tx| tx.active_micro_partitions(&t.id, t.current_version))
        .expect("files");
    assert_eq!(files.len(), 2);
    for m in &files {
        f.volume
            .delete_idempotent(&tern_storage::Path::from(m.path.as_str()))
            .await
            .expect("delete");
    }
    let text = table_text(
        &s,
        "SELECT count(*) AS n, min(id) AS lo, max(id) AS hi, count(name) AS named FROM t",
    )
    .await;
    assert_eq!(
        lines(&text),
        vec![
            "+---+----+----+-------+",
            "| n | lo | hi | named |",
            "+---+----+----+-------+",
            "| 3 | 1  | 7  | 2     |",
            "+---+----+----+-------+",
        ],
        "{text}"
    );
    // A query that needs the rows does read them (and fails here, the files being gone).
    err(&s, "SELECT sum(v) FROM t").await;
}

#[tokio::test]
async fn time_travel_reads_a_past_version() {
    let f = fixture();
    let s = f.session();
    run(&s, "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)").await;
    run(&s, "INSERT INTO t VALUES (1, 'a'), (2, 'b')").await; // version 1
    run(&s, "INSERT INTO t VALUES (3, 'c')").await; // version 2
    run(&s, "DELETE FROM t WHERE id = 1").await; // version 3
    run(&s, "ALTER TABLE t ADD COLUMN note VARCHAR").await; // version 4
    let now = table_text(&s, "SELECT * FROM t ORDER BY id").await;
    assert_eq!(
        lines(&now),
        vec![
            "+----+------+------+",
            "| id | name | note |",
            "+----+------+------+",
            "| 2  | b    |      |",
            "| 3  | c    |      |",
            "+----+------+------+",
        ],
        "{now}"
    );
    let v1 = table_text(&s, "SELECT * FROM at_version('t', 1) ORDER BY id").await;
    assert_eq!(
        lines(&v1),
        vec![
            "+----+------+",
            "| id | name |",
            "+----+------+",
            "| 1  | a    |",
            "| 2  | b    |",
            "+----+------+",
        ],
        "{v1}"
    );
    let n = table_text(&s, "SELECT count(*) AS n FROM at_version('public.t', 2)").await;
    assert!(n.contains("| 3 |"), "{n}");
    let e = err(&s, "SELECT * FROM at_version('t', 99)").await;
    assert!(e.to_string().contains("no retained version 99"), "{e}");
    let e = err(&s, "DELETE FROM at_version('t', 1) WHERE id = 2").await;
    assert!(e.is_bad_statement(), "{e}");

    // Snowflake's form: the version before the delete has the deleted row.
    let v2 = table_text(
        &s,
        "SELECT t.id, t.name FROM t AT (VERSION => 2) ORDER BY t.id",
    )
    .await;
    assert_eq!(
        lines(&v2),
        vec![
            "+----+------+",
            "| id | name |",
            "+----+------+",
            "| 1  | a    |",
            "| 2  | b    |",
            "| 3  | c    |",
            "+----+------+",
        ],
        "{v2}"
    );
    // Joined with itself now, under an alias.
    let both = table_text(
        &s,
        "SELECT old.id FROM public.t at(version=>2) AS old LEFT JOIN t ON old.id = t.id \
         WHERE t.id IS NULL",
    )
    .await;
    assert!(both.contains("| 1  |"), "{both}");
    let e = err(&s, "SELECT * FROM t AT (VERSION => 99)").await;
    assert!(e.to_string().contains("no retained version 99"), "{e}");
    assert!(e.is_bad_statement(), "{e:?}");
    let e = err(&s, "SELECT * FROM t AT (TIMESTAMP => '2026-01-01')").await;
    assert!(matches!(e, SqlError::Unsupported(_)), "{e:?}");
}

/// Every row of a table, sorted, printed.
async fn content(f: &Fixture, name: &str) -> String {
    let t = f.tables.find_table(&f.db, "public", name).expect("table");
    let scan = f
        .tables
        .scan(&t.id, &ScanRequest::default())
        .await
        .expect("scan");
    let mut rows: Vec<String> = pretty_format_batches(&scan.batches)
        .expect("format")
        .to_string()
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains(" id "))
        .map(str::to_string)
        .collect();
    rows.sort();
    rows.join("\n")
}

#[tokio::test]
async fn sql_dml_equals_the_table_api_dml() {
    let f = fixture();
    let s = f.session();
    for name in ["by_sql", "by_api"] {
        run(
            &s,
            &format!("CREATE TABLE {name} (id BIGINT NOT NULL, name VARCHAR, score DOUBLE)"),
        )
        .await;
        run(
            &s,
            &format!(
                "INSERT INTO {name} VALUES (1, 'a', 1.0), (2, 'b', 2.0), (3, 'c', 3.0), (4, NULL, 4.0)"
            ),
        )
        .await;
    }
    // SQL.
    run(&s, "DELETE FROM by_sql WHERE id = 2 OR name IS NULL").await;
    let n = table_text(&s, "UPDATE by_sql SET score = 9.5 WHERE id >= 3").await;
    assert!(n.contains("| 1 "), "one row updated: {n}");
    run(
        &s,
        "INSERT INTO by_sql SELECT id + 10, name, score FROM by_sql WHERE id = 1",
    )
    .await;
    // The same through the API.
    let api = f
        .tables
        .find_table(&f.db, "public", "by_api")
        .expect("t")
        .id;
    f.tables
        .delete(
            &api,
            &Predicate::eq("id", 2i64).or(Predicate::IsNull {
                column: "name".into(),
                negated: false,
            }),
        )
        .await
        .expect("delete");
    f.tables
        .update(
            &api,
            &[("score".into(), Some(tern_table::Scalar::Float64(9.5)))],
            &Predicate::cmp("id", tern_table::CmpOp::GtEq, 3i64),
        )
        .await
        .expect("update");
    let one = f
        .tables
        .scan(
            &api,
            &ScanRequest {
                predicate: Some(Predicate::eq("id", 1i64)),
                ..Default::default()
            },
        )
        .await
        .expect("scan");
    let shifted: Vec<arrow::array::RecordBatch> = one
        .batches
        .iter()
        .map(|b| {
            let ids = arrow::compute::kernels::numeric::add(
                b.column(0),
                &arrow::array::Int64Array::new_scalar(10),
            )
            .expect("add");
            let mut cols = b.columns().to_vec();
            cols[0] = ids;
            arrow::array::RecordBatch::try_new(b.schema(), cols).expect("batch")
        })
        .collect();
    f.tables.insert(&api, &shifted).await.expect("insert");
    let (a, b) = (content(&f, "by_sql").await, content(&f, "by_api").await);
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 3, "{a}");
}

#[tokio::test]
async fn bad_statements_name_the_problem_and_change_nothing() {
    let f = fixture();
    let s = f.session();
    run(&s, "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)").await;
    run(&s, "INSERT INTO t VALUES (1, 'a')").await;
    let t = f.tables.find_table(&f.db, "public", "t").expect("t");
    let version = |f: &Fixture| f.tables.table(&t.id).expect("t").current_version;
    let before = version(&f);

    let e = err(&s, "SELEC * FROM t").await;
    assert!(matches!(e, SqlError::Parse(_)), "{e:?}");
    let e = err(&s, "SELECT * FROM t WHERE id = = 1").await;
    assert!(e.to_string().contains("Line: 1, Column"), "{e}");

    let e = err(&s, "SELECT * FROM nope").await;
    assert!(e.to_string().contains("nope"), "{e}");
    let e = err(&s, "SELECT missing FROM t").await;
    assert!(e.to_string().contains("missing"), "{e}");
    let e = err(&s, "INSERT INTO t VALUES ('x', 'b')").await;
    assert!(e.to_string().to_lowercase().contains("cast"), "{e}");
    let e = err(&s, "INSERT INTO t VALUES (2, 'b'), (NULL, 'c')").await;
    assert!(e.to_string().contains("id"), "{e}");
    let e = err(&s, "CREATE TABLE u (id BLOB)").await;
    assert!(e.to_string().contains("BLOB"), "{e}");
    let e = err(&s, "ALTER TABLE t ADD COLUMN x BIGINT, ADD COLUMN y BLOB").await;
    assert!(e.to_string().contains("BLOB"), "{e}");
    let e = err(&s, "UPDATE t SET name = upper(name) WHERE id = 1").await;
    assert!(matches!(e, SqlError::Unsupported(_)), "{e:?}");
    let e = err(&s, "DELETE FROM t WHERE length(name) = 1").await;
    assert!(matches!(e, SqlError::Unsupported(_)), "{e:?}");
    let e = err(&s, "CREATE VIEW v AS SELECT * FROM t").await;
    assert!(matches!(e, SqlError::Unsupported(_)), "{e:?}");

    assert_eq!(version(&f), before, "no bad statement made a version");
    assert_eq!(
        f.tables.table(&t.id).expect("t").columns.len(),
        2,
        "no column was added"
    );
    assert!(f.tables.find_table(&f.db, "public", "u").is_err());
    let text = table_text(&s, "SELECT * FROM t").await;
    assert!(text.contains("| 1  | a    |"), "{text}");
}

#[tokio::test]
async fn a_secondary_replica_answers_queries_and_refuses_writes() {
    let f = fixture();
    let s = f.session();
    seed(&s).await;
    let seeded = version_of(&f, "orders");
    run(&s, "UPDATE orders SET amount = 0 WHERE id = 10").await;
    let before = table_text(&s, "SELECT count(*) AS n, sum(amount) AS s FROM orders").await;
    // The database becomes a secondary (what replication makes of a replica).
    f.tables
        .meta()
        .write(|tx| {
            let mut d = tx.get_database(&f.db)?.expect("db");
            d.role = DatabaseRole::Secondary;
            d.replication_group = Some("g1".into());
            tx.update_database(&d)
        })
        .expect("make secondary");
    assert_eq!(
        table_text(&s, "SELECT count(*) AS n, sum(amount) AS s FROM orders").await,
        before
    );
    for sql in [
        "INSERT INTO orders VALUES (99, 1, 1.00, '2026-02-01')",
        "DELETE FROM orders WHERE id = 10",
        "UPDATE orders SET amount = 0 WHERE id = 10",
        "CREATE TABLE x (id BIGINT)",
        "DROP TABLE orders",
        "ALTER TABLE orders ADD COLUMN note VARCHAR",
        "MERGE INTO orders o USING customers c ON o.customer = c.id WHEN MATCHED THEN DELETE",
    ] {
        let e = err(&s, sql).await;
        assert!(e.is_write_refusal(), "{sql}: {e:?}");
    }
    // Time travel on the replica: the amount before the update.
    let old = table_text(
        &s,
        &format!("SELECT amount FROM orders AT (VERSION => {seeded}) WHERE id = 10"),
    )
    .await;
    assert!(old.contains("| 5.50   |"), "{old}");
    assert_eq!(
        table_text(&s, "SELECT count(*) AS n, sum(amount) AS s FROM orders").await,
        before
    );
}

/// The table's current version.
fn version_of(f: &Fixture, name: &str) -> u64 {
    f.tables
        .find_table(&f.db, "public", name)
        .expect("table")
        .current_version
}

/// Table `stock`: apple 10, pear 5, plum 7, fig 1 (ids 1–4).
async fn stock(s: &SqlSession) {
    run(
        s,
        "CREATE TABLE stock (id BIGINT NOT NULL, item VARCHAR, qty BIGINT)",
    )
    .await;
    run(
        s,
        "INSERT INTO stock VALUES (1, 'apple', 10), (2, 'pear', 5), (3, 'plum', 7), (4, 'fig', 1)",
    )
    .await;
}

#[tokio::test]
async fn merge_updates_deletes_and_inserts_in_one_commit() {
    let f = fixture();
    let s = f.session();
    stock(&s).await;
    run(
        &s,
        "CREATE TABLE delivery (id BIGINT, item VARCHAR, qty BIGINT)",
    )
    .await;
    run(
        &s,
        "INSERT INTO delivery VALUES (1, 'apple', 5), (3, 'plum', -7), (5, 'kiwi', 3), (6, 'lime', 0)",
    )
    .await;
    let before = version_of(&f, "stock");
    let n = table_text(
        &s,
        "MERGE INTO stock t USING delivery d ON t.id = d.id \
         WHEN MATCHED AND t.qty + d.qty <= 0 THEN DELETE \
         WHEN MATCHED THEN UPDATE SET qty = t.qty + d.qty \
         WHEN NOT MATCHED AND d.qty > 0 THEN INSERT (id, item, qty) VALUES (d.id, upper(d.item), d.qty)",
    )
    .await;
    // 1 updated, 3 deleted, 5 inserted (6 has no stock to add).
    assert!(n.contains("| 3     |"), "{n}");
    assert_eq!(version_of(&f, "stock"), before + 1, "one commit");
    let now = table_text(&s, "SELECT * FROM stock ORDER BY id").await;
    assert_eq!(
        lines(&now),
        vec![
            "+----+-------+-----+",
            "| id | item  | qty |",
            "+----+-------+-----+",
            "| 1  | apple | 15  |",
            "| 2  | pear  | 5   |",
            "| 4  | fig   | 1   |",
            "| 5  | KIWI  | 3   |",
            "+----+-------+-----+",
        ],
        "{now}"
    );

    // A subquery as the source; INSERT without a column list; nothing matched.
    let n = table_text(
        &s,
        "MERGE INTO stock USING (SELECT id + 100 AS id, item, qty FROM delivery WHERE qty > 3) AS src \
         ON stock.id = src.id WHEN NOT MATCHED THEN INSERT VALUES (src.id, src.item, src.qty)",
    )
    .await;
    assert!(n.contains("| 1     |"), "{n}");
    let added = table_text(&s, "SELECT id, item, qty FROM stock WHERE id > 100").await;
    assert!(added.contains("| 101 | apple | 5   |"), "{added}");

    // A MERGE that changes nothing makes no version.
    let v = version_of(&f, "stock");
    let n = table_text(
        &s,
        "MERGE INTO stock t USING delivery d ON t.id = d.id AND d.qty > 1000 \
         WHEN MATCHED THEN DELETE",
    )
    .await;
    assert!(n.contains("| 0     |"), "{n}");
    assert_eq!(version_of(&f, "stock"), v);
}

/// `WHEN NOT MATCHED BY SOURCE` takes the target rows no source row matches: a table
/// made to follow a source (rows gone from it deleted or zeroed) in one statement.
#[tokio::test]
async fn merge_when_not_matched_by_source_updates_or_deletes_the_rows_left_out() {
    let f = fixture();
    let s = f.session();
    stock(&s).await;
    run(
        &s,
        "CREATE TABLE counted (id BIGINT, item VARCHAR, qty BIGINT)",
    )
    .await;
    run(
        &s,
        "INSERT INTO counted VALUES (1, 'apple', 11), (3, 'plum', 7), (5, 'kiwi', 2)",
    )
    .await;
    let before = version_of(&f, "stock");
    let n = table_text(
        &s,
        "MERGE INTO stock t USING counted c ON t.id = c.id \
         WHEN MATCHED THEN UPDATE SET qty = c.qty \
         WHEN NOT MATCHED THEN INSERT VALUES (c.id, c.item, c.qty) \
         WHEN NOT MATCHED BY SOURCE AND t.qty > 2 THEN DELETE \
         WHEN NOT MATCHED BY SOURCE THEN UPDATE SET qty = 0",
    )
    .await;
    // Updated 1, 3 (matched) and 4 (left out, qty 1); deleted 2; inserted 5.
    assert!(n.contains("| 5     |"), "{n}");
    assert_eq!(version_of(&f, "stock"), before + 1, "one commit");
    let now = table_text(&s, "SELECT * FROM stock ORDER BY id").await;
    assert_eq!(
        lines(&now),
        vec![
            "+----+-------+-----+",
            "| id | item  | qty |",
            "+----+-------+-----+",
            "| 1  | apple | 11  |",
            "| 3  | plum  | 7   |",
            "| 4  | fig   | 0   |",
            "| 5  | kiwi  | 2   |",
            "+----+-------+-----+",
        ],
        "{now}"
    );
}

#[tokio::test]
async fn merge_equals_the_same_change_by_update_and_insert() {
    let f = fixture();
    let s = f.session();
    for name in ["by_merge", "by_dml"] {
        run(
            &s,
            &format!("CREATE TABLE {name} (id BIGINT NOT NULL, name VARCHAR, score DOUBLE)"),
        )
        .await;
        run(
            &s,
            &format!(
                "INSERT INTO {name} VALUES (1, 'a', 1.0), (2, 'b', 2.0), (3, 'c', 3.0), (4, NULL, 4.0)"
            ),
        )
        .await;
    }
    run(&s, "CREATE TABLE changes (id BIGINT, score DOUBLE)").await;
    run(
        &s,
        "INSERT INTO changes VALUES (2, 9.5), (4, 9.5), (7, 7.0)",
    )
    .await;
    run(
        &s,
        "MERGE INTO by_merge USING changes c ON by_merge.id = c.id \
         WHEN MATCHED THEN UPDATE SET score = c.score \
         WHEN NOT MATCHED THEN INSERT (id, score) VALUES (c.id, c.score)",
    )
    .await;
    run(&s, "UPDATE by_dml SET score = 9.5 WHERE id IN (2, 4)").await;
    run(&s, "INSERT INTO by_dml (id, score) VALUES (7, 7.0)").await;
    let (a, b) = (content(&f, "by_merge").await, content(&f, "by_dml").await);
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 5, "{a}");
}

#[tokio::test]
async fn a_bad_merge_names_the_problem_and_changes_nothing() {
    let f = fixture();
    let s = f.session();
    run(&s, "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)").await;
    run(&s, "INSERT INTO t VALUES (1, 'a'), (2, 'b')").await;
    run(&s, "CREATE TABLE src (id BIGINT, name VARCHAR)").await;
    run(&s, "INSERT INTO src VALUES (1, 'x'), (1, 'y'), (3, 'z')").await;
    let before = version_of(&f, "t");
    let content_before = content(&f, "t").await;

    // Target row 1 is matched by two source rows.
    let e = err(
        &s,
        "MERGE INTO t USING src ON t.id = src.id \
         WHEN MATCHED THEN UPDATE SET name = src.name \
         WHEN NOT MATCHED THEN INSERT VALUES (src.id, src.name)",
    )
    .await;
    assert!(e.to_string().contains("more than one source row"), "{e}");
    assert!(e.is_bad_statement(), "{e:?}");
    let e = err(
        &s,
        "MERGE INTO t USING src ON t.id = src.id WHEN MATCHED THEN UPDATE SET nope = 1",
    )
    .await;
    assert!(e.to_string().contains("nope"), "{e}");
    let e = err(
        &s,
        "MERGE INTO t USING src ON t.id = src.id + 10 \
         WHEN NOT MATCHED THEN INSERT (name) VALUES (src.name)",
    )
    .await;
    assert!(e.to_string().contains("id"), "a null id: {e}");
    let e = err(
        &s,
        "MERGE INTO t USING (SELECT 5 AS id) ON t.id = 5 WHEN MATCHED THEN DELETE",
    )
    .await;
    assert!(
        matches!(e, SqlError::Unsupported(_) | SqlError::Parse(_)),
        "{e:?}"
    );
    let e = err(
        &s,
        "MERGE INTO t USING src ON t.id = src.id WHEN MATCHED THEN INSERT VALUES (src.id, src.name)",
    )
    .await;
    assert!(
        matches!(e, SqlError::Unsupported(_) | SqlError::Parse(_)),
        "{e:?}"
    );

    assert_eq!(version_of(&f, "t"), before, "no bad MERGE made a version");
    assert_eq!(content(&f, "t").await, content_before);

    // A rewrite computed from a version the table has moved on from is refused, so that
    // a MERGE never drops a change committed while it ran.
    run(&s, "INSERT INTO t VALUES (9, 'late')").await;
    let id = f.tables.find_table(&f.db, "public", "t").expect("t").id;
    let stale = f
        .tables
        .stage_rewrite(&id, before, futures::stream::empty())
        .await;
    assert!(
        matches!(stale, Err(tern_table::Error::Conflict { .. })),
        "{stale:?}"
    );
}
