//! Copy workers: re-encrypting file copies, several at once on the runtime's worker
//! threads (each copy is one task, so copies use every core), each streamed with bounded
//! memory by [`tern_crypto::reencrypt`] (every chunk verified; nothing published unless
//! the whole source verified).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use tern_crypto::{CopyOptions, EncryptOptions, Endpoint, KeySource};
use tokio::task::JoinSet;

use crate::error::{Error, Result};

/// One file to copy.
#[derive(Debug, Clone)]
pub struct CopyTask {
    /// Where it is.
    pub src_store: Arc<dyn ObjectStore>,
    /// Its path there.
    pub src_path: Path,
    /// Its keys.
    pub src_keys: Arc<dyn KeySource>,
    /// Where it goes.
    pub dst_store: Arc<dyn ObjectStore>,
    /// Its path there.
    pub dst_path: Path,
    /// The keys to seal it with there.
    pub dst_keys: Arc<dyn KeySource>,
}

/// What a batch of copies did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Files copied.
    pub files: u64,
    /// Bytes written (destination objects).
    pub bytes: u64,
}

/// Copies every task, at most `concurrency` at once; the first failure stops the rest
/// (copies already published stay: the caller's transaction journal or inbound folder
/// owns them) and is returned.
pub async fn copy_all(tasks: Vec<CopyTask>, concurrency: usize) -> Result<Copied> {
    let mut pending = tasks.into_iter();
    let mut running = JoinSet::new();
    let mut done = Copied::default();
    let mut failure = None;
    loop {
        while failure.is_none() && running.len() < concurrency.max(1) {
            let Some(t) = pending.next() else { break };
            running.spawn(copy_one(t));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        match joined {
            Ok(Ok(bytes)) => {
                done.files += 1;
                done.bytes += bytes;
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(Error::invalid("copy worker", e.to_string()));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// One copy: the bytes written.
pub(crate) async fn copy_one(t: CopyTask) -> Result<u64> {
    let stats = tern_crypto::reencrypt(
        Endpoint {
            store: &t.src_store,
            path: &t.src_path,
            keys: t.src_keys.as_ref(),
        },
        Endpoint {
            store: &t.dst_store,
            path: &t.dst_path,
            keys: t.dst_keys.as_ref(),
        },
        &CopyOptions::default(),
        &EncryptOptions::default(),
    )
    .await
    .map_err(|source| Error::Copy {
        path: t.src_path.to_string(),
        source,
    })?;
    Ok(stats.object_bytes)
}
