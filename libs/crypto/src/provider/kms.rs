//! [`KmsKeyProvider`]: the GMK and the deployment master key held in AWS KMS.
//!
//! - GMK: an `HMAC_256` key (multi-Region in production, so every deployment of the group
//!   holds it); `derive_wrap_key` is `GenerateMac(HMAC_SHA_256, diversifier message)`.
//! - Master key: a symmetric key; `generate_data_key` is `GenerateDataKey(AES_256)` and
//!   `decrypt_data_key` is `Decrypt`, both with the encryption context
//!   `{"tern:account": .., "tern:table": ..}`.
//!
//! The SDK talks HTTPS through rustls with `ring` (no aws-lc in the build).
//! The plaintext keys the SDK returns are copied into zeroizing key types and the SDK's
//! buffers are wiped; the SDK's own transient copies (HTTP body, JSON) are not under our
//! control.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, MacAlgorithmSpec};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::{EnvelopeContext, KeyProvider};
use crate::diversifier::Diversifier;
use crate::error::{Error, Result};
use crate::keys::{DataKey, KEY_LEN, WrapKey, WrappedKey};

/// Static credentials for an emulator or a test account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Where and as whom to reach KMS. Fields left `None` come from the AWS default chain
/// (environment, profile, instance metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsConnection {
    /// Endpoint URL (an emulator such as `http://127.0.0.1:4566`).
    pub endpoint: Option<String>,
    /// Region, e.g. `us-east-1`.
    pub region: Option<String>,
    /// Static credentials.
    pub credentials: Option<StaticCredentials>,
}

/// A KMS client for `conn`, on rustls with `ring`.
pub async fn kms_client(conn: &KmsConnection) -> aws_sdk_kms::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if let Some(endpoint) = &conn.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Some(region) = &conn.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(c) = &conn.credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            None,
            None,
            "tern-static",
        ));
    }
    let config = loader.load().await;
    aws_sdk_kms::Client::new(&config)
}

/// A [`KeyProvider`] on AWS KMS.
pub struct KmsKeyProvider {
    client: aws_sdk_kms::Client,
    gmk_key_id: String,
    master_key_id: String,
    calls: AtomicU64,
}

impl fmt::Debug for KmsKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsKeyProvider")
            .field("gmk_key_id", &self.gmk_key_id)
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

impl KmsKeyProvider {
    /// A provider using `gmk_key_id` (an `HMAC_256` key) and `master_key_id` (a symmetric
    /// key); ids may be key ids, ARNs or aliases.
    pub fn new(
        client: aws_sdk_kms::Client,
        gmk_key_id: impl Into<String>,
        master_key_id: impl Into<String>,
    ) -> Self {
        KmsKeyProvider {
            client,
            gmk_key_id: gmk_key_id.into(),
            master_key_id: master_key_id.into(),
            calls: AtomicU64::new(0),
        }
    }

    /// How many KMS requests this provider has made.
    pub fn kms_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// A KMS `Decrypt` failure: [`Error::KmsIntegrity`] when KMS refused the ciphertext itself
/// (tampered, other key, other context), else [`Error::Kms`] (transport, throttling,
/// permissions: worth a retry or an operator).
pub(crate) fn kms_decrypt_error(
    key_id: &str,
    e: aws_sdk_kms::error::SdkError<aws_sdk_kms::operation::decrypt::DecryptError>,
) -> Error {
    const OP: &str = "Decrypt";
    let refused = e
        .as_service_error()
        .is_some_and(|s| s.is_invalid_ciphertext_exception() || s.is_incorrect_key_exception());
    if refused {
        tracing::warn!(
            operation = OP,
            key_id,
            error = %aws_sdk_kms::error::DisplayErrorContext(&e),
            "KMS refused the ciphertext"
        );
        return Error::KmsIntegrity {
            operation: OP,
            key_id: key_id.to_owned(),
            source: Box::new(e),
        };
    }
    kms_error(OP, key_id, e)
}

pub(crate) fn kms_error<E>(operation: &'static str, key_id: &str, e: E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    tracing::warn!(
        operation,
        key_id,
        error = %aws_sdk_kms::error::DisplayErrorContext(&e),
        "KMS call failed"
    );
    Error::Kms {
        operation,
        key_id: key_id.to_owned(),
        source: Box::new(e),
    }
}

/// Moves a 32-byte secret out of an SDK blob, wiping the blob.
pub(crate) fn take_key(
    blob: Option<Blob>,
    operation: &'static str,
    key_id: &str,
) -> Result<[u8; KEY_LEN]> {
    let mut bytes = blob
        .ok_or_else(|| Error::KmsResponse {
            operation,
            key_id: key_id.to_owned(),
            reason: "no key material in the response",
        })?
        .into_inner();
    let out = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| Error::KmsResponse {
        operation,
        key_id: key_id.to_owned(),
        reason: "key material is not 32 bytes",
    });
    bytes.zeroize();
    out
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    #[tracing::instrument(level = "debug", skip(self), fields(key_id = %self.gmk_key_id))]
    async fn derive_wrap_key(&self, diversifier: Diversifier) -> Result<WrapKey> {
        const OP: &str = "GenerateMac";
        self.count();
        let out = self
            .client
            .generate_mac()
            .key_id(&self.gmk_key_id)
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .message(Blob::new(diversifier.mac_message()))
            .send()
            .await
            .map_err(|e| kms_error(OP, &self.gmk_key_id, e))?;
        let mut mac = take_key(out.mac, OP, &self.gmk_key_id)?;
        let key = WrapKey::from_bytes(mac);
        mac.zeroize();
        Ok(key)
    }

    #[tracing::instrument(level = "debug", skip(self), fields(key_id = %self.master_key_id))]
    async fn generate_data_key(&self, ctx: &EnvelopeContext) -> Result<(DataKey, WrappedKey)> {
        const OP: &str = "GenerateDataKey";
        self.count();
        let mut req = self
            .client
            .generate_data_key()
            .key_id(&self.master_key_id)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context("tern:account", &ctx.account);
        if let Some(table) = &ctx.table {
            req = req.encryption_context("tern:table", table);
        }
        let out = req
            .send()
            .await
            .map_err(|e| kms_error(OP, &self.master_key_id, e))?;
        let wrapped = out
            .ciphertext_blob
            .ok_or_else(|| Error::KmsResponse {
                operation: OP,
                key_id: self.master_key_id.clone(),
                reason: "no ciphertext blob in the response",
            })?
            .into_inner();
        let mut plain = take_key(out.plaintext, OP, &self.master_key_id)?;
        let key = DataKey::from_bytes(plain);
        plain.zeroize();
        Ok((key, WrappedKey::from_bytes(wrapped)))
    }

    #[tracing::instrument(level = "debug", skip(self, wrapped), fields(key_id = %self.master_key_id))]
    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EnvelopeContext,
    ) -> Result<DataKey> {
        const OP: &str = "Decrypt";
        self.count();
        let mut req = self
            .client
            .decrypt()
            .key_id(&self.master_key_id)
            .ciphertext_blob(Blob::new(wrapped.as_bytes()))
            .encryption_context("tern:account", &ctx.account);
        if let Some(table) = &ctx.table {
            req = req.encryption_context("tern:table", table);
        }
        let out = req
            .send()
            .await
            .map_err(|e| kms_decrypt_error(&self.master_key_id, e))?;
        let mut plain = take_key(out.plaintext, OP, &self.master_key_id)?;
        let key = DataKey::from_bytes(plain);
        plain.zeroize();
        Ok(key)
    }
}
