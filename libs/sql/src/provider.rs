//! A Tern table as a DataFusion table.
//!
//! * **Projection** reaches the micro-partition reader: only the asked columns are
//!   decrypted and decoded.
//! * **Filters** of the form `column <op> literal`, `BETWEEN`, `IN`, `IS [NOT] NULL`, and
//!   `AND`/`OR` of those become a [`Predicate`] of the scan: micro-partitions whose
//!   statistics cannot match are never opened, row groups likewise, and rows are filtered
//!   as they are decoded. They are reported to DataFusion as `Inexact`, so DataFusion
//!   filters again (exactly the same rows) and any other filter stays DataFusion's.
//! * **Statistics** come from the metadata store: the exact row count and per-column
//!   null counts and min/max of the pinned version, without reading a file, so that
//!   `count(*)`, `min(c)` and `max(c)` are answered from metadata.
//! * **Streaming**: the scan yields a row group at a time as DataFusion polls it
//!   ([`Tables::scan_stream`]); memory does not grow with the table.
//! * **Versions**: a scan pins the version it planned on (vacuum keeps it until the plan
//!   is dropped); time travel reads a retained older version.
//! * **DML**: `INSERT` (values or a query), `DELETE … WHERE`, `UPDATE … SET … WHERE` run as
//!   one statement of the table API each, through its commit protocol.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, DataFusionError, ScalarValue, Statistics};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::expr::{Between, InList};
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use tern_meta::{ColumnDef, ColumnType, Scalar};
use tern_storage::layout::TableId;
use tern_table::{CmpOp, Part, PinnedVersion, Predicate, ScanRequest, Tables};

use tern_table::schema::{arrow_schema as df_schema, arrow_type as df_type};

/// A tern-table error as a DataFusion error (kept whole, so that callers can find the
/// refusals — read-only replica, not writable — and answer them as the API does).
pub fn external(e: tern_table::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// One table at one version (the current one when `version` is `None`), as DataFusion
/// sees it.
#[derive(Debug)]
pub struct TernTable {
    tables: Arc<Tables>,
    id: TableId,
    name: String,
    columns: Vec<ColumnDef>,
    version: Option<u64>,
    schema: SchemaRef,
}

impl TernTable {
    /// `id` at `version` (current when `None`), with the columns it has at that version.
    pub fn open(
        tables: Arc<Tables>,
        id: &TableId,
        version: Option<u64>,
    ) -> tern_table::Result<Self> {
        let t = tables.table(id)?;
        let columns = match version {
            None => t.columns.clone(),
            Some(v) => {
                // Checks the version is retained (a clear error otherwise).
                let pin = tables.pin(id, Some(v))?;
                tables
                    .meta()
                    .read(|tx| tx.get_table_version(id, pin.version()))?
                    .map(|tv| tv.columns)
                    .unwrap_or_else(|| t.columns.clone())
            }
        };
        let schema = df_schema(&columns);
        Ok(Self {
            tables,
            id: id.clone(),
            name: t.name,
            columns,
            version,
            schema,
        })
    }

    /// The table's id.
    pub fn id(&self) -> &TableId {
        &self.id
    }

    fn writable(&self) -> datafusion::common::Result<()> {
        if self.version.is_some() {
            return Err(DataFusionError::Plan(format!(
                "table {} is read at a past version (time travel): it cannot be changed",
                self.name
            )));
        }
        Ok(())
    }

    /// `filters` as one predicate; `None` if one of them cannot be one.
    fn predicate(&self, filters: &[Expr]) -> Option<Predicate> {
        let mut parts = Vec::new();
        for f in filters {
            parts.push(predicate_of(f, &self.columns)?);
        }
        Some(match parts.len() {
            0 => Predicate::True,
            1 => parts.remove(0),
            _ => Predicate::And(parts),
        })
    }
}

#[async_trait]
impl TableProvider for TernTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match predicate_of(f, &self.columns) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        // Pinned now: statistics and rows come from the same version.
        let pin = self.tables.pin(&self.id, self.version).map_err(external)?;
        let version = pin.version();
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let out_columns: Vec<ColumnDef> =
            indices.iter().map(|i| self.columns[*i].clone()).collect();
        // Only pushed filters arrive here, and each of them translates.
        let predicate = self.predicate(filters).unwrap_or(Predicate::True);
        let active = self
            .tables
            .meta()
            .read(|tx| tx.active_micro_partitions(&self.id, version))
            .map_err(|e| external(e.into()))?;
        let stats = statistics(&active, &out_columns, predicate == Predicate::True);
        // One part per core the session may use (DataFusion runs each on its own task), at
        // most one per file. A limit is pushed down whole: one part.
        let parts = match limit {
            Some(_) => 1,
            None => state.config().target_partitions().min(active.len()).max(1),
        };
        // A scan needs at least one column to count rows by.
        let read_columns = if out_columns.is_empty() {
            self.columns
                .iter()
                .take(1)
                .map(|c| c.name.clone())
                .collect()
        } else {
            out_columns.iter().map(|c| c.name.clone()).collect()
        };
        let request = ScanRequest {
            version: Some(version),
            columns: Some(read_columns),
            predicate: (predicate != Predicate::True).then_some(predicate),
        };
        Ok(Arc::new(TernScanExec::new(
            Arc::clone(&self.tables),
            self.id.clone(),
            self.name.clone(),
            request,
            limit,
            df_schema(&out_columns),
            stats,
            pin,
            parts,
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.writable()?;
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} into a Tern table (only INSERT INTO … appends)"
            )));
        }
        let sink = Dml {
            tables: Arc::clone(&self.tables),
            id: self.id.clone(),
            schema: Arc::clone(&self.schema),
            op: DmlOp::Insert,
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        filters: Vec<Expr>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.writable()?;
        let predicate = self.dml_predicate(&filters, "DELETE")?;
        self.dml_plan(DmlOp::Delete(predicate))
    }

    async fn update(
        &self,
        _state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.writable()?;
        let predicate = self.dml_predicate(&filters, "UPDATE")?;
        let mut set = Vec::new();
        for (name, e) in assignments {
            let Some(def) = self.columns.iter().find(|c| c.name == name) else {
                return Err(DataFusionError::Plan(format!(
                    "UPDATE: table {} has no column {name:?}",
                    self.name
                )));
            };
            // DataFusion lists every column; an untouched one is assigned to itself.
            if let Expr::Column(c) = &e
                && c.name == name
            {
                continue;
            }
            let value = constant(&e, &def.ty).ok_or_else(|| {
                DataFusionError::NotImplemented(format!(
                    "UPDATE … SET {name} = {e}: only constant values can be set (a value of type {})",
                    def.ty
                ))
            })?;
            set.push((name, value));
        }
        self.dml_plan(DmlOp::Update(set, predicate))
    }
}

impl TernTable {
    fn dml_predicate(&self, filters: &[Expr], what: &str) -> datafusion::common::Result<Predicate> {
        let mut parts = Vec::new();
        for f in filters {
            parts.push(predicate_of(f, &self.columns).ok_or_else(|| {
                DataFusionError::NotImplemented(format!(
                    "{what} … WHERE {f}: a condition must compare columns with constants \
                     (=, <>, <, <=, >, >=, BETWEEN, IN, IS [NOT] NULL, AND, OR)"
                ))
            })?);
        }
        Ok(match parts.len() {
            0 => Predicate::True,
            1 => parts.remove(0),
            _ => Predicate::And(parts),
        })
    }

    fn dml_plan(&self, op: DmlOp) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let sink = Dml {
            tables: Arc::clone(&self.tables),
            id: self.id.clone(),
            schema: Arc::clone(&self.schema),
            op,
        };
        // The sink runs the statement when the plan is executed (not when it is planned, so
        // EXPLAIN changes nothing); it reads no input.
        let input = Arc::new(EmptyExec::new(Arc::clone(&self.schema)));
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// What a DML sink does.
#[derive(Debug)]
enum DmlOp {
    Insert,
    Delete(Predicate),
    Update(Vec<(String, Option<Scalar>)>, Predicate),
}

/// A statement of the table API run when DataFusion executes the plan; it returns the
/// rows affected.
#[derive(Debug)]
struct Dml {
    tables: Arc<Tables>,
    id: TableId,
    schema: SchemaRef,
    op: DmlOp,
}

impl DisplayAs for Dml {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            DmlOp::Insert => write!(f, "TernInsert: table={}", self.id),
            DmlOp::Delete(p) => write!(f, "TernDelete: table={} where={p:?}", self.id),
            DmlOp::Update(s, p) => {
                write!(f, "TernUpdate: table={} set={s:?} where={p:?}", self.id)
            }
        }
    }
}

#[async_trait]
impl DataSink for Dml {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::common::Result<u64> {
        let info = match &self.op {
            DmlOp::Insert => {
                let rows = data.map(|b| {
                    b.map_err(|e| tern_table::Error::BadInput {
                        source_name: "INSERT".into(),
                        line: None,
                        detail: e.to_string(),
                    })
                });
                self.tables.insert_stream(&self.id, rows).await
            }
            DmlOp::Delete(p) => self.tables.delete(&self.id, p).await,
            DmlOp::Update(set, p) => self.tables.update(&self.id, set, p).await,
        }
        .map_err(external)?;
        Ok(info.rows_affected)
    }
}

/// Reads one table version through [`Tables::scan_stream`].
pub struct TernScanExec {
    tables: Arc<Tables>,
    id: TableId,
    name: String,
    request: ScanRequest,
    limit: Option<usize>,
    schema: SchemaRef,
    stats: Arc<Statistics>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    pin: Arc<PinnedVersion>,
    /// Disjoint parts of the version's files, one per DataFusion partition.
    parts: usize,
}

impl fmt::Debug for TernScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TernScanExec")
            .field("table", &self.id)
            .field("request", &self.request)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl TernScanExec {
    /// The Tern scans in `plan` (itself and its descendants), to read their metrics.
    pub fn in_plan(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
        let mut out = Vec::new();
        let any: &dyn std::any::Any = plan.as_ref();
        if any.downcast_ref::<TernScanExec>().is_some() {
            out.push(Arc::clone(plan));
        }
        for c in plan.children() {
            out.extend(Self::in_plan(c));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        tables: Arc<Tables>,
        id: TableId,
        name: String,
        request: ScanRequest,
        limit: Option<usize>,
        schema: SchemaRef,
        stats: Statistics,
        pin: PinnedVersion,
        parts: usize,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(parts),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            tables,
            id,
            name,
            request,
            limit,
            schema,
            stats: Arc::new(stats),
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
            pin: Arc::new(pin),
            parts,
        }
    }

    /// The version this scan reads.
    pub fn version(&self) -> u64 {
        self.pin.version()
    }

    /// The predicate pushed into the scan, if any.
    pub fn predicate(&self) -> Option<&Predicate> {
        self.request.predicate.as_ref()
    }
}

impl DisplayAs for TernScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TernScanExec: table={} version={} columns={:?}",
            self.name,
            self.pin.version(),
            self.request.columns.as_deref().unwrap_or_default()
        )?;
        if let Some(p) = &self.request.predicate {
            write!(f, " predicate={p:?}")?;
        }
        if let Some(l) = self.limit {
            write!(f, " limit={l}")?;
        }
        if self.parts > 1 {
            write!(f, " parts={}", self.parts)?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TernScanExec {
    fn name(&self) -> &str {
        "TernScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "TernScanExec has no children".into(),
            ));
        }
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let part = Part::new(partition, self.parts).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "TernScanExec has {} partitions, asked for {partition}",
                self.parts
            ))
        })?;
        let files_total = MetricBuilder::new(&self.metrics).gauge("files_total", partition);
        let files_pruned = MetricBuilder::new(&self.metrics).gauge("files_pruned", partition);
        let files_read = MetricBuilder::new(&self.metrics).gauge("files_read", partition);
        let (tables, id, request, limit) = (
            Arc::clone(&self.tables),
            self.id.clone(),
            self.request.clone(),
            self.limit,
        );
        let schema = Arc::clone(&self.schema);
        let pin = Arc::clone(&self.pin);
        let out_schema = Arc::clone(&schema);
        let open = async move {
            let scan = tables
                .scan_stream_part(&id, &request, limit, part)
                .await
                .map_err(external)?;
            files_total.set(scan.files_total);
            files_pruned.set(scan.files_total - scan.files_planned);
            let counter: Box<dyn Fn() -> usize + Send + Sync> = Box::new(scan.files_read_counter());
            let batches = scan.batches.map(move |b| {
                // The pin lives as long as the stream.
                let _ = &pin;
                files_read.set(counter());
                let b = b.map_err(external)?;
                if out_schema.fields().is_empty() {
                    let options = datafusion::arrow::array::RecordBatchOptions::new()
                        .with_row_count(Some(b.num_rows()));
                    return Ok(datafusion::arrow::array::RecordBatch::try_new_with_options(
                        Arc::clone(&out_schema),
                        vec![],
                        &options,
                    )?);
                }
                Ok(b)
            });
            Ok::<_, DataFusionError>(batches)
        };
        let stream = futures::stream::once(open).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    #[allow(deprecated)]
    fn partition_statistics(
        &self,
        partition: Option<usize>,
    ) -> datafusion::common::Result<Arc<Statistics>> {
        match partition {
            Some(_) if self.parts > 1 => Ok(Arc::new(Statistics::new_unknown(&self.schema))),
            _ => Ok(Arc::clone(&self.stats)),
        }
    }
}

/// The statistics of the rows of `files` (a version's active micro-partitions) for
/// `columns`: exact when the scan has no predicate (every row of every file is returned).
/// With one they are bounds (the rows are some of the files' rows), kept as inexact: a
/// filter above the scan estimates its selectivity from a column's range, and a join
/// picks its build side from that estimate (without them the larger input was built on).
fn statistics(
    files: &[tern_meta::MicroPartitionDpo],
    columns: &[ColumnDef],
    whole: bool,
) -> Statistics {
    let rows: u64 = files.iter().map(|m| m.rows).sum();
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    let mut stats = Statistics::new_unknown(&df_schema(columns));
    stats.num_rows = Precision::Exact(rows);
    stats.column_statistics = columns
        .iter()
        .map(|c| column_statistics(files, c))
        .collect();
    if whole { stats } else { stats.to_inexact() }
}

fn column_statistics(files: &[tern_meta::MicroPartitionDpo], c: &ColumnDef) -> ColumnStatistics {
    let mut out = ColumnStatistics::new_unknown();
    let mut nulls = 0u64;
    let mut min: Option<Scalar> = None;
    let mut max: Option<Scalar> = None;
    for m in files {
        match m.stats.iter().find(|s| s.column == c.name) {
            // A file written before the column was added: all nulls there.
            None => nulls += m.rows,
            Some(s) => {
                nulls += s.null_count;
                // Non-null values without a bound: min/max unknown.
                let has_values = s.null_count < m.rows;
                match (&s.min, &s.max) {
                    (Some(lo), Some(hi)) => {
                        if min
                            .as_ref()
                            .is_none_or(|v| tern_table::predicate::order(lo, v).is_lt())
                        {
                            min = Some(lo.clone());
                        }
                        if max
                            .as_ref()
                            .is_none_or(|v| tern_table::predicate::order(hi, v).is_gt())
                        {
                            max = Some(hi.clone());
                        }
                    }
                    _ if has_values => return ColumnStatistics::new_unknown(),
                    _ => {}
                }
            }
        }
    }
    out.null_count = Precision::Exact(usize::try_from(nulls).unwrap_or(usize::MAX));
    // Float bounds skip NaN, which SQL orders above every number: only a hint there.
    let exact = c.ty != ColumnType::Float64;
    let wrap = |v: ScalarValue| {
        if exact {
            Precision::Exact(v)
        } else {
            Precision::Inexact(v)
        }
    };
    if let Some(v) = min.and_then(|v| scalar_value(&v, &c.ty)) {
        out.min_value = wrap(v);
    }
    if let Some(v) = max.and_then(|v| scalar_value(&v, &c.ty)) {
        out.max_value = wrap(v);
    }
    out
}

/// A Tern scalar of a column of type `ty` as a DataFusion scalar of that column's type.
pub fn scalar_value(v: &Scalar, ty: &ColumnType) -> Option<ScalarValue> {
    Some(match (ty, v) {
        (ColumnType::Int64, Scalar::Int64(x)) => ScalarValue::Int64(Some(*x)),
        (ColumnType::Float64, Scalar::Float64(x)) => ScalarValue::Float64(Some(*x)),
        (ColumnType::Utf8, Scalar::Utf8(x)) => ScalarValue::Utf8(Some(x.clone())),
        (ColumnType::Bool, Scalar::Bool(x)) => ScalarValue::Boolean(Some(*x)),
        (ColumnType::Timestamp, Scalar::Timestamp(x)) => {
            ScalarValue::TimestampMicrosecond(Some(*x), Some("+00:00".into()))
        }
        (ColumnType::Date, Scalar::Date(x)) => ScalarValue::Date32(Some(*x)),
        (ColumnType::Decimal { precision, scale }, Scalar::Decimal(x)) => {
            ScalarValue::Decimal128(Some(*x), *precision, *scale)
        }
        _ => return None,
    })
}

/// A DataFusion literal as a Tern scalar for a column of type `ty`: only when the
/// literal has the column's type (DataFusion casts literals to the column's type where
/// it can, so a mismatch here means the comparison is not a plain one). `Some(None)` is
/// SQL `NULL`.
fn literal_for(v: &ScalarValue, ty: &ColumnType) -> Option<Option<Scalar>> {
    if v.is_null() {
        return Some(None);
    }
    if v.data_type() != df_type(ty) {
        // Timestamps in another zone are the same instants.
        if let (ColumnType::Timestamp, ScalarValue::TimestampMicrosecond(Some(x), _)) = (ty, v) {
            return Some(Some(Scalar::Timestamp(*x)));
        }
        return None;
    }
    Some(Some(match v {
        ScalarValue::Int64(Some(x)) => Scalar::Int64(*x),
        ScalarValue::Float64(Some(x)) => Scalar::Float64(*x),
        ScalarValue::Utf8(Some(x)) => Scalar::Utf8(x.clone()),
        ScalarValue::Boolean(Some(x)) => Scalar::Bool(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => Scalar::Timestamp(*x),
        ScalarValue::Date32(Some(x)) => Scalar::Date(*x),
        ScalarValue::Decimal128(Some(x), _, _) => Scalar::Decimal(*x),
        _ => return None,
    }))
}

/// A constant expression (a literal, maybe cast) as a value for a column of type `ty`.
fn constant(e: &Expr, ty: &ColumnType) -> Option<Option<Scalar>> {
    let v = match e {
        Expr::Literal(v, _) => v.clone(),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(v, _) => v.cast_to(&df_type(ty)).ok()?,
            _ => return None,
        },
        Expr::TryCast(c) => match c.expr.as_ref() {
            Expr::Literal(v, _) => v.cast_to(&df_type(ty)).ok()?,
            _ => return None,
        },
        _ => return None,
    };
    let v = if v.is_null() || v.data_type() == df_type(ty) {
        v
    } else {
        v.cast_to(&df_type(ty)).ok()?
    };
    literal_for(&v, ty)
}

fn column_of<'a>(e: &Expr, columns: &'a [ColumnDef]) -> Option<&'a ColumnDef> {
    match e {
        Expr::Column(c) => columns.iter().find(|d| d.name == c.name),
        _ => None,
    }
}

fn literal_of(e: &Expr, ty: &ColumnType) -> Option<Scalar> {
    match e {
        Expr::Literal(v, _) => literal_for(v, ty)?,
        _ => None,
    }
}

/// `e` as a Tern predicate over `columns`, if it is one exactly.
pub fn predicate_of(e: &Expr, columns: &[ColumnDef]) -> Option<Predicate> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(Predicate::And(vec![
                predicate_of(left, columns)?,
                predicate_of(right, columns)?,
            ])),
            Operator::Or => Some(Predicate::Or(vec![
                predicate_of(left, columns)?,
                predicate_of(right, columns)?,
            ])),
            _ => {
                let cmp = |op: &Operator| {
                    Some(match op {
                        Operator::Eq => CmpOp::Eq,
                        Operator::NotEq => CmpOp::NotEq,
                        Operator::Lt => CmpOp::Lt,
                        Operator::LtEq => CmpOp::LtEq,
                        Operator::Gt => CmpOp::Gt,
                        Operator::GtEq => CmpOp::GtEq,
                        _ => return None,
                    })
                };
                if let Some(c) = column_of(left, columns) {
                    let value = literal_of(right, &c.ty)?;
                    return Some(Predicate::cmp(c.name.clone(), cmp(op)?, value));
                }
                let c = column_of(right, columns)?;
                let value = literal_of(left, &c.ty)?;
                let swapped = op.swap()?;
                Some(Predicate::cmp(c.name.clone(), cmp(&swapped)?, value))
            }
        },
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let c = column_of(expr, columns)?;
            Some(Predicate::Between {
                column: c.name.clone(),
                low: literal_of(low, &c.ty)?,
                high: literal_of(high, &c.ty)?,
            })
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) => {
            let c = column_of(expr, columns)?;
            let values = list
                .iter()
                .map(|v| literal_of(v, &c.ty))
                .collect::<Option<Vec<_>>>()?;
            Some(Predicate::In {
                column: c.name.clone(),
                values,
            })
        }
        Expr::IsNull(x) => Some(Predicate::IsNull {
            column: column_of(x, columns)?.name.clone(),
            negated: false,
        }),
        Expr::IsNotNull(x) => Some(Predicate::IsNull {
            column: column_of(x, columns)?.name.clone(),
            negated: true,
        }),
        _ => None,
    }
}
