//! A deployment's tables on a given volume, with a SQLite metadata store and local keys.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use tern_clock::ManualClock;
use tern_crypto::{LocalKeyProvider, SystemRandom};
use tern_meta::{AccountDpo, DatabaseDpo, MetaStore, SqliteOptions};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};
use tern_storage::{ObjectStore, StoreConfig, emulator, open_store};
use tern_table::schema::arrow_schema;
use tern_table::{ColumnDef, ColumnType, Committer, LocalCommitter, TableOptions, Tables};

pub struct Fixture {
    pub tables: Tables,
    pub db: DatabaseId,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    pub volume: Arc<dyn ObjectStore>,
}

pub fn columns() -> Vec<ColumnDef> {
    let c = |name: &str, ty, nullable| ColumnDef {
        name: name.into(),
        ty,
        nullable,
    };
    vec![
        c("id", ColumnType::Int64, false),
        c("name", ColumnType::Utf8, true),
        c("amount", ColumnType::Float64, true),
        c("day", ColumnType::Date, true),
        c(
            "price",
            ColumnType::Decimal {
                precision: 10,
                scale: 2,
            },
            true,
        ),
        c("ts", ColumnType::Timestamp, true),
        c("flag", ColumnType::Bool, true),
    ]
}

/// Rows `ids` with values derived from the id.
pub fn rows(ids: &[i64]) -> RecordBatch {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.to_vec())),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| {
                    if i % 7 == 0 {
                        None
                    } else {
                        Some(format!("name-{i}"))
                    }
                })
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            ids.iter().map(|i| *i as f64 * 1.5).collect::<Vec<_>>(),
        )),
        Arc::new(Date32Array::from(
            ids.iter()
                .map(|i| 19_000 + (*i % 365) as i32)
                .collect::<Vec<_>>(),
        )),
        Arc::new(
            Decimal128Array::from(
                ids.iter()
                    .map(|i| i128::from(*i) * 100 + 99)
                    .collect::<Vec<_>>(),
            )
            .with_precision_and_scale(10, 2)
            .expect("decimal"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(
                ids.iter()
                    .map(|i| 1_700_000_000_000_000 + i)
                    .collect::<Vec<_>>(),
            )
            .with_timezone("+00:00"),
        ),
        Arc::new(BooleanArray::from(
            ids.iter().map(|i| i % 2 == 0).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(arrow_schema(&columns()), arrays).expect("batch")
}

pub fn folder_volume(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    open_store(&StoreConfig {
        url: format!("file://{}", dir.join("volume").display()),
        ..Default::default()
    })
    .expect("volume")
}

pub async fn localstack_volume(test: &str) -> Arc<dyn ObjectStore> {
    emulator::localstack_bucket(&format!("table-{test}"))
        .await
        .unwrap_or_else(|e| panic!("LocalStack is required: {e}"))
        .0
}

impl Fixture {
    /// Tables over `volume`, with metadata and keys in a fresh folder.
    pub fn new(volume: Arc<dyn ObjectStore>, options: TableOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::open(volume, options, dir, true)
    }

    /// Open (or reopen) the deployment whose metadata and keys live in `dir`.
    pub fn open(
        volume: Arc<dyn ObjectStore>,
        options: TableOptions,
        dir: tempfile::TempDir,
        fresh: bool,
    ) -> Self {
        Self::open_with(volume, options, dir, fresh, |c| Arc::new(c))
    }

    /// [`Fixture::open`], committing through what `wrap` makes of the local committer.
    pub fn open_with(
        volume: Arc<dyn ObjectStore>,
        options: TableOptions,
        dir: tempfile::TempDir,
        fresh: bool,
        wrap: impl FnOnce(LocalCommitter) -> Arc<dyn Committer>,
    ) -> Self {
        let meta = MetaStore::open_sqlite(dir.path().join("meta.db"), SqliteOptions::default())
            .expect("meta");
        let keys =
            LocalKeyProvider::open_or_create(&dir.path().join("keys"), SystemRandom::shared())
                .expect("keys");
        let clock = ManualClock::new(1_700_000_000_000);
        let db = DatabaseId::new("db1").expect("id");
        if fresh {
            let acme = AccountId::new("acme").expect("id");
            meta.write(|tx| {
                tx.create_account(&AccountDpo::local(acme.clone(), 0))?;
                tx.create_database(&DatabaseDpo::local(db.clone(), acme.clone(), "sales", 0))
            })
            .expect("account and database");
        }
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
            options,
            wrap(committer),
        );
        Self {
            tables,
            db,
            clock,
            dir,
            volume,
        }
    }

    pub async fn create(&self, name: &str) -> TableId {
        self.tables
            .create_schema(&self.db, "public")
            .await
            .expect("schema");
        self.tables
            .create_table(&self.db, "public", name, columns())
            .await
            .expect("create table")
    }
}

/// All `id`s of a scan, sorted.
pub fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut out: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("id").expect("id column");
            a.as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64")
                .values()
                .to_vec()
        })
        .collect();
    out.sort_unstable();
    out
}
