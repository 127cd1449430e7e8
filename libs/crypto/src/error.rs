//! The crate's one error type.
//!
//! Decryption failures name the file (`path`) and never say *why* in cryptographic detail:
//! a flipped bit, a truncated or reordered file, a wrong key and a wrong file name all
//! surface as [`Error::Decrypt`]. Format problems that are visible before any key is used
//! (bad magic, unknown version) have their own variants, because they help an operator and
//! reveal nothing about keys.

use std::path::PathBuf;
use std::time::Duration;

use crate::diversifier::Diversifier;
use crate::keys::KeyId;
use crate::wrap::KeyPurpose;

/// A boxed error from a dependency (the KMS SDK).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of `tern-crypto`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes at the start of the file are not a header this build can parse.
    #[error("{path}: not a Tern encrypted file ({fault})")]
    InvalidHeader {
        /// The file.
        path: String,
        /// What is wrong with the header.
        fault: HeaderFault,
    },

    /// The file was written in a format version this build does not read.
    #[error(
        "{path}: encrypted-file format version {version} is not supported (this build reads {supported})"
    )]
    UnsupportedVersion {
        /// The file.
        path: String,
        /// Version found in the header.
        version: u8,
        /// Version this build reads.
        supported: u8,
    },

    /// Authentication failed somewhere in the file: it is corrupt, truncated, extended,
    /// reordered, or was encrypted for another key or another file name.
    #[error(
        "cannot decrypt {path}: the file is corrupt, truncated, or encrypted for another key or file name"
    )]
    Decrypt {
        /// The file.
        path: String,
    },

    /// The header names a different master key than the one supplied.
    #[error("{path} is encrypted under key {found}, not under the supplied key {expected}")]
    WrongKey {
        /// The file.
        path: String,
        /// Id of the supplied master key.
        expected: KeyId,
        /// Id of the master key named by the header.
        found: KeyId,
    },

    /// The header's key reference is of another kind than the supplied key source handles.
    #[error("{path} is encrypted with a {found}, but a {expected} was supplied")]
    UnexpectedKeyRef {
        /// The file.
        path: String,
        /// Kind of key the supplied source provides.
        expected: &'static str,
        /// Kind of key named by the header.
        found: &'static str,
    },

    /// A wrapped key could not be unwrapped (wrong wrapping key, wrong context, or corrupt).
    #[error(
        "cannot unwrap the {purpose} for {name:?}: wrong wrapping key or context, or the wrapped key is corrupt"
    )]
    Unwrap {
        /// What the wrapped key is.
        purpose: KeyPurpose,
        /// The name the wrapped key is bound to (file name, response id, table).
        name: String,
        /// The diversifier of the wrapping key, when it is GMK-derived.
        diversifier: Option<Diversifier>,
    },

    /// A diversifier is older than the acceptance window allows.
    #[error("diversifier {diversifier} is {age:?} old, more than the accepted {max_age:?}")]
    DiversifierTooOld {
        /// The rejected diversifier.
        diversifier: Diversifier,
        /// Its age.
        age: Duration,
        /// The configured maximum age.
        max_age: Duration,
    },

    /// A diversifier lies further in the future than the clock-skew bound allows.
    #[error(
        "diversifier {diversifier} is {ahead:?} in the future, more than the accepted skew {max_skew:?}"
    )]
    DiversifierInFuture {
        /// The rejected diversifier.
        diversifier: Diversifier,
        /// How far ahead of the local clock it is.
        ahead: Duration,
        /// The configured maximum skew.
        max_skew: Duration,
    },

    /// A file's diversifier is not the one announced for it.
    #[error("{path} uses diversifier {found}, but {expected} was announced")]
    UnexpectedDiversifier {
        /// The file.
        path: String,
        /// The announced diversifier.
        expected: Diversifier,
        /// The diversifier in the file's header.
        found: Diversifier,
    },

    /// A diversifier is not a multiple of the policy's granularity.
    #[error("diversifier {diversifier} is not aligned to the {granularity:?} granularity")]
    DiversifierMisaligned {
        /// The rejected diversifier.
        diversifier: Diversifier,
        /// The configured granularity.
        granularity: Duration,
    },

    /// A configuration value is out of range.
    #[error("invalid crypto setting `{field}`: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A plaintext range lies outside the file.
    #[error("{path}: range {start}..{end} is outside the plaintext of {len} bytes")]
    RangeOutOfBounds {
        /// The file.
        path: String,
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// Plaintext length.
        len: u64,
    },

    /// The file would need more chunks than the format's 32-bit chunk counter allows.
    #[error("{path}: too large for its chunk size")]
    TooLarge {
        /// The file.
        path: String,
    },

    /// A call to the KMS failed.
    #[error("KMS {operation} with key {key_id} failed")]
    Kms {
        /// The KMS operation (`GenerateMac`, `Decrypt`, ...).
        operation: &'static str,
        /// The KMS key id or alias.
        key_id: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },

    /// The KMS refused a ciphertext as not its own (`InvalidCiphertextException`,
    /// `IncorrectKeyException`): the wrapped key was tampered with, is bound to another
    /// encryption context, or was wrapped by another key. An integrity failure, never
    /// retried: asking again gets the same answer.
    #[error(
        "KMS {operation} with key {key_id} refused the wrapped key: tampered, wrapped by another key, or bound to another context"
    )]
    KmsIntegrity {
        /// The KMS operation (`Decrypt`).
        operation: &'static str,
        /// The KMS key id or alias.
        key_id: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },

    /// The KMS answered without an expected field or with a value of the wrong size.
    #[error("KMS {operation} with key {key_id} returned an unusable response: {reason}")]
    KmsResponse {
        /// The KMS operation.
        operation: &'static str,
        /// The KMS key id or alias.
        key_id: String,
        /// What was wrong.
        reason: &'static str,
    },

    /// A local key file could not be read or written.
    #[error("key file {path}")]
    KeyFile {
        /// The key file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A local key file does not hold a key in the expected encoding.
    #[error("key file {path} does not hold a key of the expected form")]
    KeyFileFormat {
        /// The key file.
        path: PathBuf,
    },

    /// A local key file or folder is readable or writable by others.
    #[error(
        "key file {path} has permissions {mode:o}; it must not be accessible by group or others"
    )]
    KeyFilePermissions {
        /// The key file or folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A customer public key is unusable (wrong type, too small, not parseable).
    #[error("customer public key {key_id} is unusable: {reason}")]
    PublicKey {
        /// The customer key id.
        key_id: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A sealed key is not for this customer key or could not be opened.
    #[error("cannot open the key sealed to customer key {key_id}")]
    Unseal {
        /// The customer key id.
        key_id: String,
    },

    /// Object storage failed.
    #[error("object store operation on {path} failed")]
    Store {
        /// The object.
        path: String,
        /// The storage error.
        #[source]
        source: object_store::Error,
    },

    /// Reading or writing a stream failed.
    #[error("I/O on {path} failed")]
    Io {
        /// The file (or stream label) being read or written.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The source of randomness failed.
    #[error("the system random number generator failed")]
    Random,

    /// A cryptographic primitive refused inputs that this crate always makes valid. Seeing
    /// this is a bug in `tern-crypto`.
    #[error("internal error in {what}")]
    Internal {
        /// Which operation.
        what: &'static str,
    },

    /// A background task died (panicked or was cancelled).
    #[error("background task for {path} failed")]
    Task {
        /// The file the task worked on.
        path: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What is wrong with a header, found by parsing alone (no key involved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderFault {
    /// Fewer bytes than the header needs.
    #[error("too short")]
    TooShort,
    /// The magic bytes are wrong.
    #[error("bad magic")]
    BadMagic,
    /// The format version is not one this build reads.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The declared header length is out of range or inconsistent with its fields.
    #[error("bad header length {0}")]
    BadLength(u16),
    /// The chunk size is out of range.
    #[error("chunk size {0} out of range")]
    BadChunkSize(u32),
    /// Unknown key-reference kind.
    #[error("unknown key reference kind {0}")]
    UnknownKeyKind(u8),
    /// Unknown master-key kind in a derived key reference.
    #[error("unknown master key kind {0}")]
    UnknownMasterKind(u8),
}

impl Error {
    pub(crate) fn decrypt(path: &str) -> Self {
        Error::Decrypt {
            path: path.to_owned(),
        }
    }

    pub(crate) fn header(path: &str, fault: HeaderFault) -> Self {
        match fault {
            HeaderFault::UnsupportedVersion(version) => Error::UnsupportedVersion {
                path: path.to_owned(),
                version,
                supported: crate::format::FORMAT_VERSION,
            },
            fault => Error::InvalidHeader {
                path: path.to_owned(),
                fault,
            },
        }
    }

    pub(crate) fn io(path: &str, source: std::io::Error) -> Self {
        // An error that travelled through `std::io` (e.g. out of a `DecryptReader`) is ours:
        // hand it back unchanged instead of nesting it.
        if source.get_ref().is_some_and(|e| e.is::<Error>()) {
            let kind = source.kind();
            return match source.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(ours)) => *ours,
                Some(Err(other)) => Error::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(kind, other),
                },
                None => Error::Io {
                    path: path.to_owned(),
                    source: kind.into(),
                },
            };
        }
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn store(path: &impl std::fmt::Display, source: object_store::Error) -> Self {
        Error::Store {
            path: path.to_string(),
            source,
        }
    }

    /// Whether this error means the data failed verification or was refused (tampered,
    /// wrong key, stale diversifier), as opposed to I/O, storage or configuration trouble.
    /// Callers use it to tell "reject this file" from "retry".
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            Error::Decrypt { .. }
                | Error::InvalidHeader { .. }
                | Error::UnsupportedVersion { .. }
                | Error::WrongKey { .. }
                | Error::UnexpectedKeyRef { .. }
                | Error::Unwrap { .. }
                | Error::KmsIntegrity { .. }
                | Error::Unseal { .. }
                | Error::UnexpectedDiversifier { .. }
                | Error::DiversifierTooOld { .. }
                | Error::DiversifierInFuture { .. }
                | Error::DiversifierMisaligned { .. }
        )
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}
