//! The stores every scenario runs against.

use std::sync::Arc;

use tern_storage::admin::BucketAdmin;
use tern_storage::emulator;
use tern_storage::{ObjectStore, S3Options, StoreConfig, open_store};

/// A store under test plus what its backend offers.
pub struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn ObjectStore>,
    /// `PutMode::Update` (compare-and-swap) is offered.
    pub supports_update: bool,
    _cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Bucket { admin: BucketAdmin, bucket: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Bucket { admin, bucket } = self {
            let (admin, bucket) = (admin.clone(), bucket.clone());
            // Best effort: the emulator is wiped between CI runs anyway.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    let _ = rt.block_on(admin.delete_bucket(&bucket));
                }
            })
            .join();
        }
    }
}

/// A fresh folder store in a temporary directory.
pub fn folder() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&StoreConfig {
        url: format!("file://{}", dir.path().display()),
        ..Default::default()
    })
    .expect("open folder store");
    Backend {
        name: "folder",
        store,
        supports_update: false,
        _cleanup: Cleanup::Dir(dir),
    }
}

/// S3 options for the LocalStack emulator (started on demand; never skipped).
pub async fn localstack_options() -> S3Options {
    let emu = tokio::task::spawn_blocking(emulator::localstack)
        .await
        .expect("emulator task")
        .unwrap_or_else(|e| panic!("LocalStack is required for this test: {e}"));
    S3Options::with_endpoint(
        emu.endpoint,
        emu.region,
        emu.access_key_id,
        emu.secret_access_key,
    )
}

/// A fresh bucket on LocalStack, deleted when the backend is dropped.
pub async fn localstack(test: &str) -> Backend {
    let opts = localstack_options().await;
    let admin = BucketAdmin::new(&opts).await;
    let bucket = unique_bucket(test);
    admin
        .create_bucket(&bucket, &opts.region)
        .await
        .expect("create test bucket");
    let store = open_store(&StoreConfig {
        url: format!("s3://{bucket}"),
        s3: opts,
    })
    .expect("open s3 store");
    Backend {
        name: "localstack",
        store,
        supports_update: true,
        _cleanup: Cleanup::Bucket { admin, bucket },
    }
}

fn unique_bucket(test: &str) -> String {
    let nanos = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mut name: String = format!("tern-it-{test}-{}-{nanos}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}
