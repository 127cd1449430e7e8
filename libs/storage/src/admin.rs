//! Bucket administration that `object_store` does not do, through `aws-sdk-s3`: create
//! and delete buckets, and read back the settings Terraform is meant to have made
//! (default encryption, public access block, versioning, bucket policy).
//!
//! The SDK's HTTP client runs on rustls with ring (the workspace builds no other TLS
//! crypto); [`sdk_config`] is shared with other AWS clients (KMS) of the workspace.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::config::S3Options;
use crate::error::{Error, Result};

/// An AWS SDK configuration for `options`: its region and endpoint, static credentials when
/// given (else the default credential chain), and the ring-based HTTPS client.
pub async fn sdk_config(options: &S3Options) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(options.region.clone()));
    if let Some(endpoint) = &options.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(id), Some(secret)) = (&options.access_key_id, &options.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret,
            options.session_token.clone(),
            None,
            "tern-static",
        ));
    }
    loader.load().await
}

/// An S3 client for `options` (path-style unless virtual hosting is asked for).
pub async fn s3_client(options: &S3Options) -> aws_sdk_s3::Client {
    let shared = sdk_config(options).await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(!options.virtual_hosted_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A bucket's default encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketEncryption {
    /// `AES256`, `aws:kms` or `aws:kms:dsse`.
    pub algorithm: String,
    /// The KMS key for `aws:kms`.
    pub kms_key_id: Option<String>,
}

/// A bucket's public access block (all four should be true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublicAccessBlock {
    /// Reject public ACLs on writes.
    pub block_public_acls: bool,
    /// Ignore existing public ACLs.
    pub ignore_public_acls: bool,
    /// Reject public bucket policies.
    pub block_public_policy: bool,
    /// Restrict access under public policies to the owner.
    pub restrict_public_buckets: bool,
}

impl PublicAccessBlock {
    /// True when every kind of public access is blocked.
    pub fn all_blocked(&self) -> bool {
        self.block_public_acls
            && self.ignore_public_acls
            && self.block_public_policy
            && self.restrict_public_buckets
    }
}

/// Bucket-level administration.
#[derive(Debug, Clone)]
pub struct BucketAdmin {
    client: aws_sdk_s3::Client,
}

fn admin_err<E>(bucket: &str, action: &'static str, e: aws_sdk_s3::error::SdkError<E>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    Error::Admin {
        bucket: bucket.to_string(),
        action,
        source: Box::new(e),
    }
}

fn code_of<E: ProvideErrorMetadata>(e: &aws_sdk_s3::error::SdkError<E>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

impl BucketAdmin {
    /// Administration through `options`' endpoint and credentials.
    pub async fn new(options: &S3Options) -> Self {
        Self {
            client: s3_client(options).await,
        }
    }

    /// Administration through an existing client.
    pub fn from_client(client: aws_sdk_s3::Client) -> Self {
        Self { client }
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Create `bucket`; succeeds if this account already owns it.
    pub async fn create_bucket(&self, bucket: &str, region: &str) -> Result<()> {
        let mut req = self.client.create_bucket().bucket(bucket);
        if region != "us-east-1" {
            use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(admin_err(bucket, "create bucket", e)),
        }
    }

    /// Whether `bucket` exists and is reachable with these credentials.
    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(admin_err(bucket, "head bucket", e)),
        }
    }

    /// Delete every object of `bucket`, then the bucket itself. For tests and teardown.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| admin_err(bucket, "list objects", e))?;
            for obj in page.contents() {
                if let Some(key) = obj.key() {
                    self.client
                        .delete_object()
                        .bucket(bucket)
                        .key(key)
                        .send()
                        .await
                        .map_err(|e| admin_err(bucket, "delete object", e))?;
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        self.client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| admin_err(bucket, "delete bucket", e))?;
        Ok(())
    }

    /// The bucket's default encryption, `None` when it has none.
    pub async fn encryption(&self, bucket: &str) -> Result<Option<BucketEncryption>> {
        match self
            .client
            .get_bucket_encryption()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => {
                let rule = out
                    .server_side_encryption_configuration()
                    .and_then(|c| c.rules().first())
                    .and_then(|r| r.apply_server_side_encryption_by_default());
                Ok(rule.map(|r| BucketEncryption {
                    algorithm: r.sse_algorithm().as_str().to_string(),
                    kms_key_id: r.kms_master_key_id().map(str::to_string),
                }))
            }
            Err(e) if code_of(&e) == Some("ServerSideEncryptionConfigurationNotFoundError") => {
                Ok(None)
            }
            Err(e) => Err(admin_err(bucket, "get bucket encryption", e)),
        }
    }

    /// The bucket's public access block, `None` when none is set.
    pub async fn public_access_block(&self, bucket: &str) -> Result<Option<PublicAccessBlock>> {
        match self
            .client
            .get_public_access_block()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .public_access_block_configuration()
                .map(|c| PublicAccessBlock {
                    block_public_acls: c.block_public_acls().unwrap_or(false),
                    ignore_public_acls: c.ignore_public_acls().unwrap_or(false),
                    block_public_policy: c.block_public_policy().unwrap_or(false),
                    restrict_public_buckets: c.restrict_public_buckets().unwrap_or(false),
                })),
            Err(e) if code_of(&e) == Some("NoSuchPublicAccessBlockConfiguration") => Ok(None),
            Err(e) => Err(admin_err(bucket, "get public access block", e)),
        }
    }

    /// The bucket's versioning status (`Enabled`, `Suspended`), `None` if never enabled.
    pub async fn versioning(&self, bucket: &str) -> Result<Option<String>> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| admin_err(bucket, "get bucket versioning", e))?;
        Ok(out.status().map(|s| s.as_str().to_string()))
    }

    /// The bucket policy document (JSON), `None` when the bucket has none.
    pub async fn policy(&self, bucket: &str) -> Result<Option<String>> {
        match self.client.get_bucket_policy().bucket(bucket).send().await {
            Ok(out) => Ok(out.policy().map(str::to_string)),
            Err(e) if code_of(&e) == Some("NoSuchBucketPolicy") => Ok(None),
            Err(e) => Err(admin_err(bucket, "get bucket policy", e)),
        }
    }
}
