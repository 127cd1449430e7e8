//! Opening a store from a URL plus options.
//!
//! Two kinds of URL are accepted:
//!
//! * `file:///abs/path[?fsync=false]` — a folder on the local file system: the embedded
//!   default, where a whole deployment group can live in one directory. The folder is
//!   created if missing. Writes are atomic (temporary file + rename) and `PutMode::Create`
//!   is honoured; `PutMode::Update` is not offered by this backend and fails with
//!   [`Error::NotSupported`]. Writes are durable by default ([`FolderOptions::fsync`]): a
//!   write is acknowledged only once the file and the directory entries naming it are on
//!   disk, as S3 acknowledges a put only once it is stored. The commit protocol relies on
//!   it: the metadata store (SQLite, fsynced) must never show a version whose log record
//!   and files an OS crash could still lose. `?fsync=false` turns it off.
//! * `s3://bucket[/prefix]` — an S3 bucket on AWS, LocalStack, MinIO or any S3-compatible
//!   server, configured by [`S3Options`]. Conditional writes use `If-None-Match: *` and
//!   `If-Match` (ETag) so `PutMode::Create` and `PutMode::Update` are both honoured.

use std::fmt;
use std::sync::Arc;
use std::sync::Once;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut, S3CopyIfNotExists};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};

/// Where a store lives and how to reach it. `Debug` never prints secrets.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `file:///…` or `s3://bucket[/prefix]`.
    pub url: String,
    /// Options used by `s3://` URLs; ignored for `file://`.
    pub s3: S3Options,
}

/// Options for S3-compatible stores. `Debug` never prints the secret key or session token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    /// Custom endpoint (`http://127.0.0.1:4566` for LocalStack); `None` for AWS.
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: String,
    /// Static access key id; `None` to use the environment's credential chain.
    pub access_key_id: Option<String>,
    /// Static secret access key (with `access_key_id`).
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Allow plain-HTTP endpoints (emulators). Defaults to true only when the endpoint is
    /// `http://`.
    pub allow_http: Option<bool>,
    /// Use virtual-hosted-style requests (`bucket.host`). Default false (path style), which
    /// every emulator understands.
    pub virtual_hosted_style: bool,
    /// Use conditional writes (`If-None-Match`/`If-Match`). Default true; turn off only for
    /// servers that reject the headers, and then `PutMode::Create`/`Update` fail clearly.
    pub conditional_put: bool,
    /// Request SSE-KMS with this key for every object written through this store.
    pub sse_kms_key_id: Option<String>,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: None,
            virtual_hosted_style: false,
            conditional_put: true,
            sse_kms_key_id: None,
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("conditional_put", &self.conditional_put)
            .field("sse_kms_key_id", &self.sse_kms_key_id)
            .finish()
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("s3", &self.s3)
            .finish()
    }
}

impl S3Options {
    /// Options for an emulator or other custom endpoint with static credentials.
    pub fn with_endpoint(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: Some(endpoint.into()),
            region: region.into(),
            access_key_id: Some(access_key_id.into()),
            secret_access_key: Some(secret_access_key.into()),
            ..Self::default()
        }
    }

    /// Whether plain HTTP is allowed: explicit setting, else only for `http://` endpoints.
    pub fn http_allowed(&self) -> bool {
        self.allow_http.unwrap_or_else(|| {
            self.endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"))
        })
    }
}

/// Options of a folder store, from its URL's query (`file:///path?fsync=false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderOptions {
    /// Durable writes (default true; `?fsync=false` turns them off): before a write (put,
    /// create, copy, rename, the end of a multipart upload) is acknowledged, the file is
    /// fsynced, and so are the directories whose entries it changed (on Unix). Turn off
    /// only where losing acknowledged writes to an OS crash or power loss is acceptable
    /// (tests, throw-away deployments): without it, after such a crash the metadata store
    /// can show a committed version whose log record or files are gone.
    pub fsync: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self { fsync: true }
    }
}

impl FolderOptions {
    /// The options in a parsed `file://` URL's query; an unknown option or value is an
    /// error naming it.
    fn from_url(url: &Url) -> std::result::Result<Self, String> {
        let mut options = Self::default();
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref()) {
                ("fsync", "true") => options.fsync = true,
                ("fsync", "false") => options.fsync = false,
                ("fsync", other) => {
                    return Err(format!("fsync must be true or false, not {other:?}"));
                }
                (other, _) => {
                    return Err(format!("unknown folder option {other:?} (known: fsync)"));
                }
            }
        }
        Ok(options)
    }
}

/// The kind of backend a URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A local folder (absolute path).
    Folder(std::path::PathBuf),
    /// An S3 bucket, with an optional key prefix inside it.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix (without leading or trailing `/`), empty for the bucket root.
        prefix: String,
    },
}

impl Location {
    /// Parse a store URL.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.trim().is_empty() {
            return Err(invalid("empty; expected file:///path or s3://bucket"));
        }
        let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(invalid(
                        "file URLs must not name a host (use file:///abs/path)",
                    ));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute local path"))?;
                FolderOptions::from_url(&parsed).map_err(|reason| invalid(&reason))?;
                Ok(Location::Folder(path))
            }
            "s3" => {
                let bucket = parsed.host_str().unwrap_or_default().to_string();
                if bucket.is_empty() {
                    return Err(invalid("missing bucket name (s3://bucket[/prefix])"));
                }
                if !valid_bucket_name(&bucket) {
                    return Err(invalid(
                        "bucket names are 3-63 characters of lowercase letters, digits, '-' and '.'",
                    ));
                }
                let prefix = parsed.path().trim_matches('/').to_string();
                Ok(Location::S3 { bucket, prefix })
            }
            other => Err(invalid(&format!(
                "unsupported scheme {other:?}; expected file or s3"
            ))),
        }
    }

    /// A short name of the backend for messages ("folder", "s3").
    pub fn backend(&self) -> &'static str {
        match self {
            Location::Folder(_) => "folder",
            Location::S3 { .. } => "s3",
        }
    }
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .as_bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Install ring as rustls' process-wide crypto provider (the workspace builds rustls with
/// ring only, and reqwest needs a process default). Safe to call many times.
pub fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A folder store rooted at `path` (created if missing), with durable writes (the
/// default [`FolderOptions`]). Deleting a folder's last object deletes the folder, as on
/// S3 where folders do not exist: inbound folders, message chains and journals leave no
/// empty directories behind.
pub fn open_folder(path: &std::path::Path) -> std::io::Result<Arc<dyn ObjectStore>> {
    open_folder_with(path, &FolderOptions::default())
}

/// [`open_folder`] with `options`.
pub fn open_folder_with(
    path: &std::path::Path,
    options: &FolderOptions,
) -> std::io::Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(path)?;
    let fs = LocalFileSystem::new_with_prefix(path)
        .map_err(std::io::Error::other)?
        .with_automatic_cleanup(true)
        .with_fsync(options.fsync);
    Ok(Arc::new(fs))
}

/// Open the store named by `config`.
pub fn open_store(config: &StoreConfig) -> Result<Arc<dyn ObjectStore>> {
    let location = Location::parse(&config.url)?;
    let open_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
        url: config.url.clone(),
        source,
    };
    match location {
        Location::Folder(path) => {
            // Location::parse checked the options already.
            let options = Url::parse(&config.url)
                .map_err(|e| open_err(Box::new(e)))
                .and_then(|u| FolderOptions::from_url(&u).map_err(|e| open_err(e.into())))?;
            open_folder_with(&path, &options).map_err(|e| open_err(Box::new(e)))
        }
        Location::S3 { bucket, prefix } => {
            install_tls_provider();
            let o = &config.s3;
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(&bucket)
                .with_region(&o.region)
                .with_allow_http(o.http_allowed())
                .with_virtual_hosted_style_request(o.virtual_hosted_style);
            if let Some(endpoint) = &o.endpoint {
                b = b.with_endpoint(endpoint);
            }
            if let (Some(id), Some(secret)) = (&o.access_key_id, &o.secret_access_key) {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
            }
            if let Some(token) = &o.session_token {
                b = b.with_token(token);
            }
            b = b.with_conditional_put(if o.conditional_put {
                S3ConditionalPut::ETagMatch
            } else {
                S3ConditionalPut::Disabled
            });
            if o.conditional_put {
                // `copy_if_not_exists` as an UploadPartCopy completed with
                // `If-None-Match: *`: how a create-once file too large for one PUT is
                // published (tern_crypto::object stages it, then copies it into place).
                b = b.with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
            }
            if let Some(key) = &o.sse_kms_key_id {
                b = b.with_sse_kms_encryption(key);
            }
            let s3 = b.build().map_err(|e| open_err(Box::new(e)))?;
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix.as_str())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_store_leaves_no_empty_folders_behind() {
        use object_store::ObjectStoreExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("bucket");
        let store = open_store(&StoreConfig {
            url: format!("file://{}", root.display()),
            ..StoreConfig::default()
        })
        .unwrap();
        use object_store::path::Path;
        let (a, b) = (
            Path::from("from/d1/inbound/rs-1/f1"),
            Path::from("from/d1/msg/m1"),
        );
        store.put(&a, b"x".to_vec().into()).await.unwrap();
        store.put(&b, b"y".to_vec().into()).await.unwrap();
        store.delete(&a).await.unwrap();
        assert!(!root.join("from/d1/inbound").exists(), "emptied folders go");
        assert!(root.join("from/d1/msg/m1").exists(), "others stay");
        store.delete(&b).await.unwrap();
        assert!(
            root.exists() && !root.join("from").exists(),
            "the root stays"
        );
        // And the store works on after its folders went.
        store.put(&a, b"z".to_vec().into()).await.unwrap();
        assert_eq!(
            store.get(&a).await.unwrap().bytes().await.unwrap().as_ref(),
            b"z"
        );
    }

    /// Folder stores acknowledge a write only once it is on disk unless the URL says
    /// `?fsync=false`. Writes, exclusive creates included, work either way.
    #[tokio::test]
    async fn folder_stores_write_durably_by_default() {
        use object_store::{ObjectStoreExt as _, PutMode, PutOptions};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("bucket");
        for (i, (query, durable)) in [("", true), ("?fsync=true", true), ("?fsync=false", false)]
            .into_iter()
            .enumerate()
        {
            let url = format!("file://{}{query}", root.display());
            let store = open_store(&StoreConfig {
                url,
                ..StoreConfig::default()
            })
            .unwrap();
            // The store as opened: LocalFileSystem shows its fsync setting in Debug.
            let shown = format!("{store:?}");
            assert!(
                shown.contains(&format!("fsync: {durable}")),
                "{query}: {shown}"
            );
            let path = object_store::path::Path::from(format!("a/b/c{i}"));
            let create = || PutOptions::from(PutMode::Create);
            store
                .put_opts(&path, b"x".to_vec().into(), create())
                .await
                .unwrap();
            let again = store.put_opts(&path, b"y".to_vec().into(), create()).await;
            assert!(
                matches!(again, Err(object_store::Error::AlreadyExists { .. })),
                "{query}: {again:?}"
            );
            assert_eq!(
                store
                    .get(&path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .as_ref(),
                b"x"
            );
        }
        for (query, needle) in [
            ("?fsync=maybe", "fsync must be"),
            ("?sync=false", "unknown"),
        ] {
            let url = format!("file://{}{query}", root.display());
            match Location::parse(&url) {
                Err(Error::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(needle), "{url}: {reason}")
                }
                other => panic!("{url}: expected InvalidUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn parses_folder_and_s3_urls() {
        assert_eq!(
            Location::parse("file:///tmp/x").ok(),
            Some(Location::Folder("/tmp/x".into()))
        );
        assert_eq!(
            Location::parse("s3://tern-d1-volume/some/prefix/").ok(),
            Some(Location::S3 {
                bucket: "tern-d1-volume".into(),
                prefix: "some/prefix".into()
            })
        );
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        for (url, needle) in [
            ("", "empty"),
            ("relative/path", "relative URL"),
            ("gs://bucket", "unsupported scheme"),
            ("s3:///key", "missing bucket"),
            ("s3://Upper_Case", "bucket names"),
            ("file://host/x", "must not name a host"),
        ] {
            match Location::parse(url) {
                Err(Error::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(needle), "{url}: {reason}")
                }
                other => panic!("{url}: expected InvalidUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let o = S3Options::with_endpoint(
            "http://127.0.0.1:4566",
            "us-east-1",
            "AKIDEXAMPLE",
            "s3cr3t-value",
        );
        let shown = format!(
            "{:?}",
            StoreConfig {
                url: "s3://b".into(),
                s3: o
            }
        );
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("s3cr3t-value"));
    }

    #[test]
    fn http_is_allowed_only_for_http_endpoints_by_default() {
        assert!(S3Options::with_endpoint("http://x", "r", "a", "b").http_allowed());
        assert!(!S3Options::with_endpoint("https://x", "r", "a", "b").http_allowed());
        assert!(!S3Options::default().http_allowed());
    }
}
