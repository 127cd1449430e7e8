//! Customer-managed keys and the double wrap of a RepMK.
//!
//! When the target account of a replication uses its own key, the refresh request carries a
//! [`CustomerPublicKey`] of that account, and the source wraps the RepMK twice:
//!
//! ```text
//!  RepMK ──AES-256-GCM under HMAC(GMK, diversifier)──▶ wrapped (61 B)
//!        ──seal to the customer public key──────────▶ SealedKey  (travels in the response)
//! ```
//!
//! Unwrapping takes the customer's private key first (only the target account can do it),
//! then the GMK-derived key (only a member of the deployment group can do it).
//!
//! Two kinds of customer key:
//!
//! - [`KmsRsaCustomerKey`]: an RSA key (2048 bits or more) in the target's KMS. The source
//!   encrypts with RSA-OAEP-SHA256 (`rsa` crate; `ring` cannot RSA-encrypt) to the public
//!   key from `GetPublicKey`; the target unwraps with KMS `Decrypt(RSAES_OAEP_SHA_256)`.
//! - [`X25519CustomerKey`]: a static X25519 key in a local file (0600). The source seals with
//!   an ephemeral `ring` X25519 key: `k = HKDF-SHA256(salt = eph_pub ‖ recipient_pub,
//!   IKM = X25519(eph, recipient), info = "tern/v1/seal/x25519")`, then AES-256-GCM under `k`
//!   (single-use key, zero nonce, the key id as associated data). Sealed bytes are
//!   `eph_pub (32) ‖ ciphertext ‖ tag (16)`. The receiving side uses `x25519-dalek`
//!   because `ring` cannot load a stored X25519 private key.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::EncryptionAlgorithmSpec;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::kdf;
use crate::keys::{KEY_LEN, RepMk, WrapKey, WrappedKey};
use crate::provider::local::{read_private_key_file, write_private_key_file};
use crate::random::Random;
use crate::wrap::WrapContext;

const X25519_INFO: &[u8] = b"tern/v1/seal/x25519";
const MIN_RSA_BYTES: usize = 256;

/// How a [`SealedKey`] was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SealScheme {
    /// RSA-OAEP with SHA-256 (and MGF1-SHA-256), no label.
    RsaOaepSha256,
    /// Ephemeral-static X25519, HKDF-SHA256, AES-256-GCM.
    X25519HkdfAes256Gcm,
}

/// A public key of a target account, carried in a refresh request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CustomerPublicKey {
    /// An RSA key held in a KMS (SubjectPublicKeyInfo DER, as `GetPublicKey` returns it).
    RsaOaepSha256 {
        /// The KMS key id, ARN or alias.
        key_id: String,
        /// DER-encoded SubjectPublicKeyInfo.
        spki_der: Vec<u8>,
    },
    /// A local X25519 key.
    X25519 {
        /// The key id (`x25519:` and a fingerprint of the public key).
        key_id: String,
        /// The public key.
        public: [u8; 32],
    },
}

impl fmt::Debug for CustomerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CustomerPublicKey::RsaOaepSha256 { key_id, .. } => {
                write!(f, "CustomerPublicKey::RsaOaepSha256({key_id})")
            }
            CustomerPublicKey::X25519 { key_id, .. } => {
                write!(f, "CustomerPublicKey::X25519({key_id})")
            }
        }
    }
}

/// A secret sealed to a customer key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// How it was sealed.
    pub scheme: SealScheme,
    /// Which customer key can open it.
    pub key_id: String,
    /// The sealed bytes.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedKey")
            .field("scheme", &self.scheme)
            .field("key_id", &self.key_id)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

impl CustomerPublicKey {
    /// The customer key id.
    pub fn key_id(&self) -> &str {
        match self {
            CustomerPublicKey::RsaOaepSha256 { key_id, .. }
            | CustomerPublicKey::X25519 { key_id, .. } => key_id,
        }
    }

    /// Seals `secret` (at most 190 bytes for RSA-2048) so only the customer key can open it.
    /// Randomness (OAEP seed, ephemeral key) comes from the operating system.
    pub fn seal(&self, secret: &[u8]) -> Result<SealedKey> {
        match self {
            CustomerPublicKey::RsaOaepSha256 { key_id, spki_der } => {
                use rsa::pkcs8::DecodePublicKey as _;
                use rsa::traits::PublicKeyParts as _;
                let bad = |reason| Error::PublicKey {
                    key_id: key_id.clone(),
                    reason,
                };
                let key = rsa::RsaPublicKey::from_public_key_der(spki_der)
                    .map_err(|_| bad("not an RSA SubjectPublicKeyInfo"))?;
                if key.size() < MIN_RSA_BYTES {
                    return Err(bad("RSA keys must have at least 2048 bits"));
                }
                let ciphertext = key
                    .encrypt(
                        &mut rsa::rand_core::OsRng,
                        rsa::Oaep::new::<sha2::Sha256>(),
                        secret,
                    )
                    .map_err(|_| bad("the secret is too long for this key"))?;
                Ok(SealedKey {
                    scheme: SealScheme::RsaOaepSha256,
                    key_id: key_id.clone(),
                    ciphertext,
                })
            }
            CustomerPublicKey::X25519 { key_id, public } => {
                use ring::agreement;
                let bad = |reason| Error::PublicKey {
                    key_id: key_id.clone(),
                    reason,
                };
                let rng = ring::rand::SystemRandom::new();
                let eph = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
                    .map_err(|_| Error::Random)?;
                let eph_pub = eph.compute_public_key().map_err(|_| Error::Random)?;
                let mut eph_pub_bytes = [0u8; 32];
                eph_pub_bytes.copy_from_slice(eph_pub.as_ref());
                let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, public);
                let key = agreement::agree_ephemeral(eph, &peer, |shared| {
                    x25519_seal_key(shared, &eph_pub_bytes, public)
                })
                .map_err(|_| bad("not a usable X25519 public key"))??;
                let mut ciphertext = Vec::with_capacity(32 + secret.len() + 16);
                ciphertext.extend_from_slice(&eph_pub_bytes);
                ciphertext.extend_from_slice(secret);
                let tag = single_use_aead(&key)?
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key([0u8; 12]),
                        ring::aead::Aad::from(key_id.as_bytes()),
                        &mut ciphertext[32..],
                    )
                    .map_err(|_| Error::Internal {
                        what: "x25519 seal",
                    })?;
                ciphertext.extend_from_slice(tag.as_ref());
                Ok(SealedKey {
                    scheme: SealScheme::X25519HkdfAes256Gcm,
                    key_id: key_id.clone(),
                    ciphertext,
                })
            }
        }
    }
}

fn x25519_seal_key(
    shared: &[u8],
    eph_pub: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_pub);
    salt[32..].copy_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    kdf::hkdf_sha256(&salt, shared, X25519_INFO, &mut key[..])?;
    Ok(key)
}

fn single_use_aead(key: &[u8; KEY_LEN]) -> Result<ring::aead::LessSafeKey> {
    ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
        .map(ring::aead::LessSafeKey::new)
        .map_err(|_| Error::Internal { what: "aead key" })
}

/// A customer-managed key pair whose private half the target account controls.
#[async_trait]
pub trait CustomerKey: Send + Sync + fmt::Debug {
    /// The key id, as it appears in [`CustomerPublicKey::key_id`] and [`SealedKey::key_id`].
    fn key_id(&self) -> &str;

    /// The public half, to put in a refresh request.
    async fn public_key(&self) -> Result<CustomerPublicKey>;

    /// Opens a [`SealedKey`] sealed to this key.
    async fn unseal(&self, sealed: &SealedKey) -> Result<Zeroizing<Vec<u8>>>;
}

/// An RSA key pair in KMS (`RSA_2048` or larger, usage `ENCRYPT_DECRYPT`).
pub struct KmsRsaCustomerKey {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl fmt::Debug for KmsRsaCustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsRsaCustomerKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KmsRsaCustomerKey {
    /// The KMS key `key_id` (id, ARN or alias).
    pub fn new(client: aws_sdk_kms::Client, key_id: impl Into<String>) -> Self {
        KmsRsaCustomerKey {
            client,
            key_id: key_id.into(),
        }
    }
}

#[async_trait]
impl CustomerKey for KmsRsaCustomerKey {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn public_key(&self) -> Result<CustomerPublicKey> {
        const OP: &str = "GetPublicKey";
        let out = self
            .client
            .get_public_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(|e| crate::provider::kms::kms_error(OP, &self.key_id, e))?;
        let oaep = out
            .encryption_algorithms
            .as_deref()
            .unwrap_or_default()
            .contains(&EncryptionAlgorithmSpec::RsaesOaepSha256);
        if !oaep {
            return Err(Error::PublicKey {
                key_id: self.key_id.clone(),
                reason: "the KMS key does not support RSAES_OAEP_SHA_256 encryption",
            });
        }
        let spki_der = out
            .public_key
            .ok_or_else(|| Error::KmsResponse {
                operation: OP,
                key_id: self.key_id.clone(),
                reason: "no public key in the response",
            })?
            .into_inner();
        Ok(CustomerPublicKey::RsaOaepSha256 {
            key_id: self.key_id.clone(),
            spki_der,
        })
    }

    async fn unseal(&self, sealed: &SealedKey) -> Result<Zeroizing<Vec<u8>>> {
        const OP: &str = "Decrypt";
        if sealed.scheme != SealScheme::RsaOaepSha256 || sealed.key_id != self.key_id {
            return Err(Error::Unseal {
                key_id: sealed.key_id.clone(),
            });
        }
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .encryption_algorithm(EncryptionAlgorithmSpec::RsaesOaepSha256)
            .ciphertext_blob(Blob::new(sealed.ciphertext.as_slice()))
            .send()
            .await
            .map_err(|e| crate::provider::kms::kms_decrypt_error(&self.key_id, e))?;
        let plain = out.plaintext.ok_or_else(|| Error::KmsResponse {
            operation: OP,
            key_id: self.key_id.clone(),
            reason: "no plaintext in the response",
        })?;
        Ok(Zeroizing::new(plain.into_inner()))
    }
}

/// A static X25519 key pair whose private key lives in a local file (mode 0600).
pub struct X25519CustomerKey {
    key_id: String,
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl fmt::Debug for X25519CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519CustomerKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl X25519CustomerKey {
    /// Generates a key pair and writes the private key to `path` (which must not exist).
    pub fn create(path: &Path, random: &dyn Random) -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        random.fill(&mut bytes[..])?;
        write_private_key_file(path, &bytes)?;
        Ok(Self::from_secret(*bytes))
    }

    /// Loads the private key from `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read_private_key_file(path)?;
        Ok(Self::from_secret(*bytes))
    }

    fn from_secret(mut bytes: [u8; 32]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(bytes);
        bytes.zeroize();
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        let fp = kdf::sha256(&public);
        X25519CustomerKey {
            key_id: format!("x25519:{}", kdf::hex(&fp[..8])),
            secret,
            public,
        }
    }
}

#[async_trait]
impl CustomerKey for X25519CustomerKey {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn public_key(&self) -> Result<CustomerPublicKey> {
        Ok(CustomerPublicKey::X25519 {
            key_id: self.key_id.clone(),
            public: self.public,
        })
    }

    async fn unseal(&self, sealed: &SealedKey) -> Result<Zeroizing<Vec<u8>>> {
        let fail = || Error::Unseal {
            key_id: sealed.key_id.clone(),
        };
        if sealed.scheme != SealScheme::X25519HkdfAes256Gcm
            || sealed.key_id != self.key_id
            || sealed.ciphertext.len() < 32 + 16
        {
            return Err(fail());
        }
        let mut eph_pub = [0u8; 32];
        eph_pub.copy_from_slice(&sealed.ciphertext[..32]);
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(eph_pub));
        if !shared.was_contributory() {
            return Err(fail());
        }
        let key = x25519_seal_key(shared.as_bytes(), &eph_pub, &self.public)?;
        let mut buf = Zeroizing::new(sealed.ciphertext[32..].to_vec());
        let len = single_use_aead(&key)?
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key([0u8; 12]),
                ring::aead::Aad::from(self.key_id.as_bytes()),
                &mut buf[..],
            )
            .map_err(|_| fail())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Wraps `repmk` twice: under the GMK-derived `wrap_key` (bound to `ctx`), then sealed to
/// the customer's public key.
pub fn double_wrap_repmk(
    repmk: &RepMk,
    wrap_key: &WrapKey,
    ctx: &WrapContext,
    recipient: &CustomerPublicKey,
    random: &dyn Random,
) -> Result<SealedKey> {
    let inner = wrap_key.wrap_repmk(repmk, ctx, random)?;
    recipient.seal(inner.as_bytes())
}

/// Reverses [`double_wrap_repmk`]: the customer key opens the outer layer, then `wrap_key`
/// (for the same diversifier and `ctx`) the inner one.
pub async fn double_unwrap_repmk(
    sealed: &SealedKey,
    customer: &dyn CustomerKey,
    wrap_key: &WrapKey,
    ctx: &WrapContext,
) -> Result<RepMk> {
    let inner = customer.unseal(sealed).await?;
    wrap_key.unwrap_repmk(&WrappedKey::from_bytes(inner.to_vec()), ctx)
}

/// Where an account's customer-managed key is: what an operator registers (the key itself
/// stays where it is; only this reference is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum CustomerKeySpec {
    /// A static X25519 key pair whose private key is in a local file (mode 0600).
    X25519 {
        /// The private key file.
        file: std::path::PathBuf,
    },
    /// An RSA key (2048 bits or more, usage `ENCRYPT_DECRYPT`) of the deployment's KMS.
    KmsRsa {
        /// The KMS key id, ARN or alias.
        key_id: String,
    },
}

impl fmt::Display for CustomerKeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CustomerKeySpec::X25519 { file } => write!(f, "X25519 key file {}", file.display()),
            CustomerKeySpec::KmsRsa { key_id } => write!(f, "KMS RSA key {key_id}"),
        }
    }
}

/// Opens the customer keys [`CustomerKeySpec`]s name: X25519 key files always, KMS RSA keys
/// when the deployment has a KMS client.
#[derive(Debug, Clone, Default)]
pub struct CustomerKeys {
    kms: Option<aws_sdk_kms::Client>,
}

impl CustomerKeys {
    /// Key files only (a deployment without KMS).
    pub fn local() -> Self {
        Self::default()
    }

    /// Key files and keys of the KMS `client` talks to.
    pub fn with_kms(client: aws_sdk_kms::Client) -> Self {
        Self { kms: Some(client) }
    }

    /// Opens the key `spec` names. With `create`, a missing X25519 key file is made (a new
    /// key pair); an existing one is never replaced.
    pub fn open(
        &self,
        spec: &CustomerKeySpec,
        create: bool,
        random: &dyn Random,
    ) -> Result<Arc<dyn CustomerKey>> {
        match spec {
            CustomerKeySpec::X25519 { file } => {
                if create && !file.exists() {
                    return Ok(Arc::new(X25519CustomerKey::create(file, random)?));
                }
                Ok(Arc::new(X25519CustomerKey::open(file)?))
            }
            CustomerKeySpec::KmsRsa { key_id } => {
                let client = self.kms.clone().ok_or(Error::InvalidConfig {
                    field: "customer key",
                    reason: "a KMS RSA customer key needs the deployment's keys in KMS ([keys] kind = \"kms\")",
                })?;
                Ok(Arc::new(KmsRsaCustomerKey::new(client, key_id.clone())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diversifier::Diversifier;
    use crate::random::SystemRandom;

    #[tokio::test]
    async fn specs_open_their_keys_and_say_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let rng = SystemRandom::default();
        let file = tmp.path().join("a1.x25519");
        let spec = CustomerKeySpec::X25519 { file: file.clone() };
        let keys = CustomerKeys::local();
        let err = keys.open(&spec, false, &rng).unwrap_err();
        assert!(err.to_string().contains("a1.x25519"), "{err}");
        let made = keys.open(&spec, true, &rng).unwrap();
        // Never replaced: opening again (with or without create) gives the same key.
        assert_eq!(
            keys.open(&spec, true, &rng).unwrap().key_id(),
            made.key_id()
        );
        assert_eq!(
            keys.open(&spec, false, &rng).unwrap().key_id(),
            made.key_id()
        );
        let kms = CustomerKeySpec::KmsRsa {
            key_id: "alias/a1".into(),
        };
        let err = keys.open(&kms, false, &rng).unwrap_err();
        assert!(err.to_string().contains("kind = \"kms\""), "{err}");
        // The stored form names its kind; unknown fields are refused.
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"kind\":\"x25519\""), "{json}");
        assert_eq!(
            serde_json::from_str::<CustomerKeySpec>(&json).unwrap(),
            spec
        );
        assert!(
            serde_json::from_str::<CustomerKeySpec>(r#"{"kind":"kms_rsa","key_id":"k","x":1}"#)
                .is_err()
        );
    }

    #[tokio::test]
    async fn x25519_double_wrap_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let rng = SystemRandom::default();
        let path = tmp.path().join("cust").join("x25519.key");
        let cust = X25519CustomerKey::create(&path, &rng).unwrap();
        let reopened = X25519CustomerKey::open(&path).unwrap();
        assert_eq!(cust.key_id(), reopened.key_id());
        let public = cust.public_key().await.unwrap();

        let wk = WrapKey::from_bytes([3u8; 32]);
        let ctx = WrapContext::new("d1->d2", "resp-1")
            .with_diversifier(Diversifier::from_unix_secs(3600));
        let repmk = RepMk::generate(&rng).unwrap();
        let sealed = double_wrap_repmk(&repmk, &wk, &ctx, &public, &rng).unwrap();
        let back = double_unwrap_repmk(&sealed, &reopened, &wk, &ctx)
            .await
            .unwrap();
        assert_eq!(back.id(), repmk.id());

        // another customer key, a flipped bit, or the wrong GMK-derived key all fail
        let other = X25519CustomerKey::create(&tmp.path().join("o.key"), &rng).unwrap();
        assert!(matches!(
            double_unwrap_repmk(&sealed, &other, &wk, &ctx).await,
            Err(Error::Unseal { .. })
        ));
        let mut bad = sealed.clone();
        bad.ciphertext[40] ^= 1;
        assert!(double_unwrap_repmk(&bad, &cust, &wk, &ctx).await.is_err());
        assert!(matches!(
            double_unwrap_repmk(&sealed, &cust, &WrapKey::from_bytes([4u8; 32]), &ctx).await,
            Err(Error::Unwrap { .. })
        ));
    }

    #[test]
    fn rsa_rejects_garbage_public_keys() {
        let pk = CustomerPublicKey::RsaOaepSha256 {
            key_id: "k".into(),
            spki_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        };
        assert!(matches!(pk.seal(b"x"), Err(Error::PublicKey { .. })));
    }
}
