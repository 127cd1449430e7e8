//! Pruning is conservative: whenever a predicate is true on some row of a batch, the
//! batch's statistics (as Tern computes and merges them) must not prune it. Property tests
//! with a fixed seed over small batches with nulls, NaN (both signs), ±0.0, ±inf, empty
//! strings and nested AND/OR; plus the converse check that pruning does prune, so the
//! property cannot pass with a `may_match` that always says yes.

use std::cell::Cell;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tern_meta::ColumnStats;
use tern_table::schema::{arrow_schema, batch_stats, merge_stats};
use tern_table::{CmpOp, ColumnDef, ColumnType, Predicate, Scalar};

fn runner(seed: u8) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}

fn columns() -> Vec<ColumnDef> {
    let c = |name: &str, ty| ColumnDef {
        name: name.into(),
        ty,
        nullable: true,
    };
    vec![
        c("i", ColumnType::Int64),
        c("f", ColumnType::Float64),
        c("s", ColumnType::Utf8),
    ]
}

/// One row of the three columns.
type Row = (Option<i64>, Option<f64>, Option<String>);

fn batch(rows: &[Row]) -> RecordBatch {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(arrow_schema(&columns()), arrays).expect("batch")
}

// ---- strategies: values and literals come from the same small pools, so they collide ----

fn int_value() -> impl Strategy<Value = i64> {
    prop_oneof![8 => -4i64..=4, 1 => Just(i64::MIN), 1 => Just(i64::MAX)]
}

/// A NaN with the sign bit set: what x86 computes for `0.0 / 0.0` or `sqrt(-1.0)`. In the
/// total order it sorts below every number.
const NEG_NAN: f64 = -f64::NAN;

/// A quiet NaN with a payload: above the canonical NaN in the total order.
fn payload_nan() -> f64 {
    f64::from_bits(0x7ff8_0000_0000_0001)
}

/// Floats near each other and every special value; with `odd_nans`, also NaNs other than
/// the canonical positive one.
fn float_value(odd_nans: bool) -> BoxedStrategy<f64> {
    let common = prop_oneof![
        4 => (-4i32..=4).prop_map(|v| f64::from(v) / 2.0),
        1 => Just(f64::NAN),
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ];
    if odd_nans {
        prop_oneof![9 => common, 1 => Just(NEG_NAN), 1 => Just(payload_nan())].boxed()
    } else {
        common.boxed()
    }
}

fn str_value() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        6 => "[abZé]{1,3}",
    ]
}

fn row(odd_nans: bool) -> impl Strategy<Value = Row> {
    (
        proptest::option::weighted(0.8, int_value()),
        proptest::option::weighted(0.8, float_value(odd_nans)),
        proptest::option::weighted(0.8, str_value()),
    )
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    proptest::collection::vec(row(true), 0..10)
}

/// A literal for column `col` (0 = i, 1 = f, 2 = s); float columns also get integer
/// literals, which `bind` converts.
fn literal(col: usize) -> BoxedStrategy<Scalar> {
    match col {
        0 => int_value().prop_map(Scalar::Int64).boxed(),
        1 => prop_oneof![
            4 => float_value(true).prop_map(Scalar::Float64),
            1 => (-3i64..=3).prop_map(Scalar::Int64),
        ]
        .boxed(),
        _ => str_value().prop_map(Scalar::Utf8).boxed(),
    }
}

const NAMES: [&str; 3] = ["i", "f", "s"];
const OPS: [CmpOp; 6] = [
    CmpOp::Eq,
    CmpOp::NotEq,
    CmpOp::Lt,
    CmpOp::LtEq,
    CmpOp::Gt,
    CmpOp::GtEq,
];

fn leaf() -> impl Strategy<Value = Predicate> {
    (0usize..3).prop_flat_map(|col| {
        let name = NAMES[col].to_string();
        prop_oneof![
            4 => (proptest::sample::select(OPS.to_vec()), literal(col))
                .prop_map({
                    let name = name.clone();
                    move |(op, value)| Predicate::Cmp { column: name.clone(), op, value }
                }),
            2 => (literal(col), literal(col)).prop_map({
                let name = name.clone();
                move |(low, high)| Predicate::Between { column: name.clone(), low, high }
            }),
            2 => proptest::collection::vec(literal(col), 0..4).prop_map({
                let name = name.clone();
                move |values| Predicate::In { column: name.clone(), values }
            }),
            1 => any::<bool>()
                .prop_map(move |negated| Predicate::IsNull { column: name.clone(), negated }),
        ]
    })
}

/// Leaves, and AND/OR of them nested at most two deep.
fn predicate() -> impl Strategy<Value = Predicate> {
    leaf().prop_recursive(2, 16, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Predicate::And),
            proptest::collection::vec(inner, 0..4).prop_map(Predicate::Or),
        ]
    })
}

fn may_match(p: &Predicate, stats: &[ColumnStats], rows: usize) -> bool {
    let stats_of = |c: &str| stats.iter().find(|s| s.column == c);
    p.may_match(&stats_of, rows as u64)
}

fn true_rows(p: &Predicate, b: &RecordBatch) -> usize {
    p.evaluate(b).expect("evaluate").true_count()
}

/// Statistics of `b` computed as a micro-partition's are: per slice, then merged.
fn merged_stats(b: &RecordBatch, split: usize) -> Vec<ColumnStats> {
    let split = split.min(b.num_rows());
    let cols = columns();
    let first = batch_stats(&b.slice(0, split), &cols);
    let second = batch_stats(&b.slice(split, b.num_rows() - split), &cols);
    first
        .iter()
        .zip(&second)
        .map(|(x, y)| merge_stats(x, y))
        .collect()
}

#[test]
fn a_batch_with_a_matching_row_is_never_pruned() {
    let cols = columns();
    let (matched, pruned) = (Cell::new(0usize), Cell::new(0usize));
    runner(7)
        .run(&(rows(), predicate(), 0usize..10), |(rows, p, split)| {
            let p = p.bind(&cols).expect("bind");
            let b = batch(&rows);
            let hits = true_rows(&p, &b);
            let stats = batch_stats(&b, &cols);
            let whole = may_match(&p, &stats, b.num_rows());
            let merged = may_match(&p, &merged_stats(&b, split), b.num_rows());
            if hits > 0 {
                matched.set(matched.get() + 1);
                prop_assert!(
                    whole,
                    "{hits} row(s) match, batch_stats prune: {p:?}\nrows {rows:?}\nstats {stats:?}"
                );
                prop_assert!(
                    merged,
                    "{hits} row(s) match, stats merged at {split} prune: {p:?}\nrows {rows:?}"
                );
            } else if !whole {
                pruned.set(pruned.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The strategies must exercise both sides, or the property says little.
    assert!(
        matched.get() >= 256 / 5,
        "only {} of 256 cases had a matching row",
        matched.get()
    );
    assert!(
        pruned.get() >= 256 / 10,
        "only {} of 256 cases were pruned",
        pruned.get()
    );
}

/// One row per value, each the only row of its batch: the tightest statistics (min = max),
/// where an ordering disagreement between evaluation and statistics shows first.
#[test]
fn a_single_row_that_matches_is_never_pruned() {
    let cols = columns();
    runner(11)
        .run(&(row(true), predicate()), |(r, p)| {
            let p = p.bind(&cols).expect("bind");
            let b = batch(std::slice::from_ref(&r));
            if true_rows(&p, &b) > 0 {
                let stats = batch_stats(&b, &cols);
                prop_assert!(
                    may_match(&p, &stats, 1),
                    "row {r:?} matches {p:?} but stats {stats:?} prune it"
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---- the converse: batches whose values all lie outside the predicate are pruned ----

fn assert_pruned(b: &RecordBatch, p: Predicate) {
    let p = p.bind(&columns()).expect("bind");
    assert_eq!(true_rows(&p, b), 0, "test setup: {p:?} matches a row");
    assert!(
        !may_match(&p, &batch_stats(b, &columns()), b.num_rows()),
        "not pruned: {p:?}"
    );
}

#[test]
fn a_batch_outside_a_simple_comparison_is_pruned() {
    // i in 10..=19, f in 10.0..=19.0, s in "m".."v", one null row each.
    let mut rs: Vec<Row> = (10..20)
        .map(|i| {
            (
                Some(i),
                Some(i as f64),
                Some(char::from(b'c' + i as u8).to_string()),
            )
        })
        .collect();
    rs.push((None, None, None));
    let b = batch(&rs);
    for (col, below, above) in [
        ("i", Scalar::Int64(10), Scalar::Int64(19)),
        ("f", Scalar::Float64(10.0), Scalar::Float64(19.0)),
        ("s", Scalar::from("m"), Scalar::from("v")),
    ] {
        assert_pruned(&b, Predicate::cmp(col, CmpOp::Lt, below.clone()));
        assert_pruned(&b, Predicate::cmp(col, CmpOp::Gt, above.clone()));
        let (lo, hi) = match (&below, &above) {
            (Scalar::Int64(lo), Scalar::Int64(hi)) => {
                (Scalar::Int64(lo - 1), Scalar::Int64(hi + 1))
            }
            (Scalar::Float64(lo), Scalar::Float64(hi)) => {
                (Scalar::Float64(lo - 0.5), Scalar::Float64(hi + 0.5))
            }
            _ => (Scalar::from("l"), Scalar::from("w")),
        };
        assert_pruned(&b, Predicate::cmp(col, CmpOp::LtEq, lo.clone()));
        assert_pruned(&b, Predicate::cmp(col, CmpOp::GtEq, hi.clone()));
        assert_pruned(&b, Predicate::cmp(col, CmpOp::Eq, lo.clone()));
        assert_pruned(&b, Predicate::cmp(col, CmpOp::Eq, hi.clone()));
        assert_pruned(&b, Predicate::between(col, hi.clone(), hi.clone()));
        assert_pruned(
            &b,
            Predicate::In {
                column: col.into(),
                values: vec![lo.clone(), hi.clone()],
            },
        );
        assert_pruned(
            &b,
            Predicate::cmp(col, CmpOp::Lt, below.clone()).or(Predicate::cmp(
                col,
                CmpOp::Gt,
                above.clone(),
            )),
        );
        assert_pruned(
            &b,
            Predicate::cmp(col, CmpOp::GtEq, below.clone()).and(Predicate::cmp(col, CmpOp::Eq, hi)),
        );
    }
    // NaN sorts above every number: `f > 19` does not prune a file holding NaN, `f < NaN`
    // prunes a file of NaNs only.
    let nans = batch(&[(None, Some(f64::NAN), None), (None, Some(f64::NAN), None)]);
    assert_pruned(&nans, Predicate::cmp("f", CmpOp::Lt, f64::NAN));
    assert_pruned(&nans, Predicate::cmp("f", CmpOp::NotEq, f64::NAN));

    // `<>` prunes a batch holding only that value; IS [NOT] NULL prunes by null count.
    let same = batch(&[
        (Some(7), Some(7.0), Some("x".into())),
        (Some(7), Some(7.0), Some("x".into())),
    ]);
    assert_pruned(&same, Predicate::cmp("i", CmpOp::NotEq, 7i64));
    assert_pruned(&same, Predicate::cmp("f", CmpOp::NotEq, 7i64));
    assert_pruned(&same, Predicate::cmp("s", CmpOp::NotEq, "x"));
    assert_pruned(
        &same,
        Predicate::IsNull {
            column: "s".into(),
            negated: false,
        },
    );
    let nulls = batch(&[(None, None, None), (None, None, None)]);
    for (col, v) in [
        ("i", Scalar::Int64(0)),
        ("f", Scalar::Float64(0.0)),
        ("s", Scalar::from("")),
    ] {
        assert_pruned(
            &nulls,
            Predicate::IsNull {
                column: col.into(),
                negated: true,
            },
        );
        // A comparison is never true on null, whatever the operator.
        for op in OPS {
            assert_pruned(&nulls, Predicate::cmp(col, op, v.clone()));
        }
        assert_pruned(&nulls, Predicate::between(col, v.clone(), v.clone()));
    }
}

// ---- end to end: file and row-group pruning (Parquet statistics) lose no row ----

/// Rows inserted into a table whose files and row groups hold a few rows each; a scan with
/// the predicate returns exactly the rows where it evaluates true. This exercises the
/// micro-partition statistics (as stored in the metadata store and read back) and, inside
/// files, Parquet's row-group statistics.
fn scan_returns_every_matching_row(odd_nans: bool, seed: u8) {
    use tern_table::mp::WriteOptions;
    use tern_table::{ScanRequest, TableOptions};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let options = TableOptions {
        write: WriteOptions {
            target_bytes: 1500,
            row_group_rows: 3,
            zstd_level: 1,
        },
        ..Default::default()
    };
    let f = crate::fixture::Fixture::new(crate::fixture::folder_volume(dir.path()), options);
    rt.block_on(f.tables.create_schema(&f.db, "public"))
        .expect("schema");
    let cols = columns();
    let n = Cell::new(0u32);
    let mut config = Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    };
    config.max_shrink_iters = 256;
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    );
    let data = proptest::collection::vec(row(odd_nans), 1..40);
    let ps = proptest::collection::vec(predicate(), 4);
    runner
        .run(&(data, ps), |(rows, ps)| {
            n.set(n.get() + 1);
            let b = batch(&rows);
            rt.block_on(async {
                let t = f
                    .tables
                    .create_table(&f.db, "public", &format!("t{}", n.get()), cols.clone())
                    .await
                    .expect("create");
                // Two inserts: more files, and row groups that do not start at row 0.
                let half = b.num_rows() / 2;
                f.tables
                    .insert(&t, &[b.slice(0, half)])
                    .await
                    .expect("insert");
                f.tables
                    .insert(&t, &[b.slice(half, b.num_rows() - half)])
                    .await
                    .expect("insert");
                for p in ps {
                    let bound = p.bind(&cols).expect("bind");
                    let want = arrow::compute::filter_record_batch(
                        &b,
                        &bound.evaluate(&b).expect("evaluate"),
                    )
                    .expect("filter");
                    let request = ScanRequest {
                        predicate: Some(p.clone()),
                        ..Default::default()
                    };
                    let got = f.tables.scan(&t, &request).await.expect("scan");
                    prop_assert_eq!(
                        render(&[want]),
                        render(&got.batches),
                        "{:?}: files read {} of {}, row groups skipped {}",
                        p,
                        got.files_read,
                        got.files_total,
                        got.row_groups_skipped
                    );
                }
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_scan_with_pruning_returns_every_matching_row() {
    scan_returns_every_matching_row(false, 13);
}

/// Regression: statistics were once stored with every NaN written `"NaN"` and read back as
/// the canonical positive NaN, so a file whose minimum is a negative NaN (x86's
/// `0.0 / 0.0`), or whose maximum is a NaN with a payload, got a narrower range than its
/// rows and scans skipped matching rows. Stored floats now keep their bits.
#[test]
fn a_scan_with_pruning_returns_every_matching_row_with_any_nan() {
    scan_returns_every_matching_row(true, 13);
}

/// The minimal cases of the regression above, one row each.
#[test]
fn a_scan_finds_a_negative_nan_and_a_nan_with_a_payload() {
    use tern_table::ScanRequest;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let f = crate::fixture::Fixture::new(
        crate::fixture::folder_volume(dir.path()),
        tern_table::TableOptions::default(),
    );
    rt.block_on(f.tables.create_schema(&f.db, "public"))
        .expect("schema");
    let cases = [
        (NEG_NAN, Predicate::cmp("f", CmpOp::Lt, 0.0)),
        (NEG_NAN, Predicate::cmp("f", CmpOp::Eq, NEG_NAN)),
        (payload_nan(), Predicate::cmp("f", CmpOp::Gt, f64::NAN)),
        (payload_nan(), Predicate::cmp("f", CmpOp::Eq, payload_nan())),
    ];
    let mut failures = Vec::new();
    for (n, (value, p)) in cases.into_iter().enumerate() {
        let b = batch(&[(None, Some(value), None)]);
        let bound = p.bind(&columns()).expect("bind");
        assert_eq!(
            true_rows(&bound, &b),
            1,
            "{p:?} matches {value:?} in memory"
        );
        // In memory the statistics are exact and do not prune.
        assert!(may_match(&bound, &batch_stats(&b, &columns()), 1));
        let got = rt.block_on(async {
            let t = f
                .tables
                .create_table(&f.db, "public", &format!("nan{n}"), columns())
                .await
                .expect("create");
            f.tables.insert(&t, &[b]).await.expect("insert");
            let request = ScanRequest {
                predicate: Some(p.clone()),
                ..Default::default()
            };
            f.tables.scan(&t, &request).await.expect("scan")
        });
        if got.rows() != 1 {
            failures.push(format!(
                "f = {:#018x}, {p:?}: {} rows, files read {} of {}",
                value.to_bits(),
                got.rows(),
                got.files_read,
                got.files_total
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "matching rows lost:\n{}",
        failures.join("\n")
    );
}

/// Rows as sorted strings (a scan may return them in another order); floats by bits, so
/// NaN and -0.0 compare exactly.
fn render(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let i = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i");
        let f = b
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("f");
        let s = b
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("s");
        for r in 0..b.num_rows() {
            use arrow::array::Array as _;
            let i = (!i.is_null(r)).then(|| i.value(r));
            let f = (!f.is_null(r)).then(|| f.value(r).to_bits());
            let s = (!s.is_null(r)).then(|| s.value(r));
            out.push(format!("{i:?} {f:?} {s:?}"));
        }
    }
    out.sort_unstable();
    out
}
