//! Envelope encryption for Tern (DESIGN.md §4).
//!
//! Every file Tern writes to object storage — micro-partitions and metadata files in a
//! volume, message and body files and re-encrypted copies in a replication bucket — is
//! encrypted in one [format](mod@format) under a key unique to that file. This crate provides
//! the keys, the format, and the streaming operations on it.
//!
//! ```text
//!   GMK (KMS HMAC key / key file) ──HMAC(diversifier)──▶ WrapKey ──wraps──▶ DEK, RepMK
//!   master key (KMS / key file) ──envelope(account)──▶ AMK ──wrap_table_key──▶ TMK
//!   TMK ──HKDF(path)──▶ FileKey      RepMK ──HKDF(name)──▶ FileKey      DEK = FileKey
//!   RepMK ──WrapKey, then customer public key (RSA-OAEP in KMS, or X25519)──▶ SealedKey
//! ```
//!
//! | module | what it provides |
//! |---|---|
//! | [`provider`] | [`KeyProvider`] (local key files, AWS KMS) and [`CachedWrapKeys`] |
//! | [`customer`] | customer-managed keys and the double wrap of a RepMK |
//! | [`diversifier`] | [`Diversifier`] and the [`DiversifierPolicy`] that picks and accepts them |
//! | [`keys`], [`wrap`], [`kdf`] | key types, key wrapping with bound context, derivations |
//! | [`keysource`] | [`KeySource`]: which key a file uses (table, replication, message) |
//! | [`format`](mod@format) | the encrypted file format: header, chunk layout, STREAM sealing |
//! | [`stream`] | `AsyncRead`/`AsyncWrite` encryption and decryption, in-memory helpers |
//! | [`object`] | put/get/range-get on `object_store`, and the re-encrypting [`reencrypt`] copy |
//!
//! Guarantees, in one place:
//!
//! - Decryption returns only authenticated plaintext, and never presents a truncated,
//!   extended, reordered or spliced file as complete: streams end with an error instead of
//!   end-of-file.
//! - A file's key is bound to its name: a file moved or copied without re-encryption does
//!   not decrypt. A wrapped key is bound to its purpose, channel, name and diversifier.
//! - Errors name the file that failed ([`Error::Decrypt`] `{ path }`) and never say why in
//!   cryptographic detail.
//! - Key types zeroize on drop, cannot be cloned or displayed, and their `Debug` shows only
//!   a fingerprint ([`KeyId`]).
//! - Time and randomness are injected ([`tern_clock::Clock`], [`random::Random`]), so the
//!   diversifier window and the exact bytes of a file are testable.
//!
//! # Example
//!
//! ```
//! # async fn demo() -> tern_crypto::Result<()> {
//! use std::sync::Arc;
//! use object_store::{memory::InMemory, path::Path, ObjectStore, PutOptions};
//! use tern_crypto::{DataKey, EncryptOptions, TableFileKeys, SystemRandom};
//!
//! let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
//! let tmk = Arc::new(DataKey::generate(&SystemRandom::default())?);
//! let keys = TableFileKeys::new(tmk);
//! let path = Path::from("acct/a/db/1/tbl/2/mp/fdn27.mp");
//! tern_crypto::object::put_encrypted(
//!     &*store, &path, &keys, b"rows", &EncryptOptions::default(), PutOptions::default(),
//! ).await?;
//! let back = tern_crypto::object::get_decrypted(&store, &path, &keys).await?;
//! assert_eq!(&back[..], b"rows");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod customer;
pub mod diversifier;
mod error;
pub mod format;
pub mod kdf;
pub mod keys;
pub mod keysource;
pub mod object;
pub mod provider;
pub mod random;
pub mod reference;
pub mod stream;
pub mod wrap;

pub use customer::{
    CustomerKey, CustomerKeySpec, CustomerKeys, CustomerPublicKey, KmsRsaCustomerKey, SealScheme,
    SealedKey, X25519CustomerKey, double_unwrap_repmk, double_wrap_repmk,
};
pub use diversifier::{Diversifier, DiversifierPolicy};
pub use error::{BoxError, Error, HeaderFault, Result};
pub use format::{DEFAULT_CHUNK_SIZE, Header, KeyRef, Layout, MasterKind};
pub use keys::{DataKey, FileKey, KeyId, RepMk, WrapKey, WrappedKey, from_hex, to_hex};
pub use keysource::{KeySource, MessageFileKeys, ReplicationFileKeys, TableFileKeys};
pub use object::{
    CopyOptions, CopyStats, EncryptedObject, Endpoint, get_decrypted, get_decrypted_range,
    put_encrypted, reencrypt, reencrypt_with, upload_encrypted, upload_encrypted_with,
};
pub use provider::{
    CachedWrapKeys, EnvelopeContext, KeyProvider, KmsConnection, KmsKeyProvider, LocalKeyProvider,
    StaticCredentials, kms_client,
};
pub use random::{Random, SharedRandom, SystemRandom};
pub use stream::{
    DecryptReader, EncryptOptions, EncryptWriter, decrypt_bytes, decrypt_stream, encrypt_bytes,
    encrypt_stream, reencrypt_stream,
};
pub use wrap::{KeyPurpose, WrapContext};
