//! [`LocalKeyProvider`]: root keys in files, for the embedded mode and tests.
//!
//! A deployment's key folder (mode `0700`) holds two files (mode `0600`), each 64 hex
//! digits and a newline:
//!
//! ```text
//! <keys>/gmk.key      the deployment group's GMK (the same bytes in every member)
//! <keys>/master.key   this deployment's master key (root of the AMK/TMK envelope)
//! ```
//!
//! Opening refuses files or a folder that group or others can access, like `ssh` does.
//! Wrapping keys are `HMAC-SHA256(GMK, diversifier message)` (`ring`); envelope keys are
//! sealed with AES-256-GCM under the master key with the account and table as associated
//! data.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::{EnvelopeContext, KeyProvider};
use crate::diversifier::Diversifier;
use crate::error::{Error, Result};
use crate::kdf;
use crate::keys::{DataKey, KEY_LEN, WrapKey, WrappedKey};
use crate::random::SharedRandom;
use crate::wrap::{open_key, push_field, seal_key};

/// File name of the GMK in a key folder.
pub const GMK_FILE: &str = "gmk.key";
/// File name of the deployment master key in a key folder.
pub const MASTER_KEY_FILE: &str = "master.key";

/// A [`KeyProvider`] whose root keys are files in a key folder.
pub struct LocalKeyProvider {
    dir: PathBuf,
    gmk: Zeroizing<[u8; KEY_LEN]>,
    master: Zeroizing<[u8; KEY_LEN]>,
    random: SharedRandom,
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalKeyProvider {
    /// Creates a key folder for the first deployment of a new group: a fresh GMK and master
    /// key. Fails if either file exists.
    pub fn create(dir: &Path, random: SharedRandom) -> Result<Self> {
        let mut gmk = Zeroizing::new([0u8; KEY_LEN]);
        random.fill(&mut gmk[..])?;
        Self::create_with_gmk(dir, gmk, random)
    }

    /// Creates a key folder for a deployment joining the group of `member_dir` (another
    /// deployment's key folder): the same GMK, a fresh master key.
    pub fn create_joining(dir: &Path, member_dir: &Path, random: SharedRandom) -> Result<Self> {
        let gmk = read_key(&member_dir.join(GMK_FILE))?;
        Self::create_with_gmk(dir, gmk, random)
    }

    /// Opens an existing key folder.
    pub fn open(dir: &Path, random: SharedRandom) -> Result<Self> {
        check_private(dir)?;
        Ok(LocalKeyProvider {
            dir: dir.to_owned(),
            gmk: read_key(&dir.join(GMK_FILE))?,
            master: read_key(&dir.join(MASTER_KEY_FILE))?,
            random,
        })
    }

    /// Opens the key folder, creating it (as a new group) if it has no key files yet.
    pub fn open_or_create(dir: &Path, random: SharedRandom) -> Result<Self> {
        if dir.join(GMK_FILE).exists() || dir.join(MASTER_KEY_FILE).exists() {
            Self::open(dir, random)
        } else {
            Self::create(dir, random)
        }
    }

    /// The key folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create_with_gmk(
        dir: &Path,
        gmk: Zeroizing<[u8; KEY_LEN]>,
        random: SharedRandom,
    ) -> Result<Self> {
        make_private_dir(dir)?;
        let mut master = Zeroizing::new([0u8; KEY_LEN]);
        random.fill(&mut master[..])?;
        write_key(&dir.join(GMK_FILE), &gmk)?;
        write_key(&dir.join(MASTER_KEY_FILE), &master)?;
        tracing::info!(dir = %dir.display(), "created local key folder");
        Ok(LocalKeyProvider {
            dir: dir.to_owned(),
            gmk,
            master,
            random,
        })
    }
}

fn envelope_aad(ctx: &EnvelopeContext) -> Vec<u8> {
    let mut aad = b"tern/v1/envelope\0".to_vec();
    push_field(&mut aad, ctx.account.as_bytes());
    match &ctx.table {
        None => aad.push(0),
        Some(t) => {
            aad.push(1);
            push_field(&mut aad, t.as_bytes());
        }
    }
    aad
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    async fn derive_wrap_key(&self, diversifier: Diversifier) -> Result<WrapKey> {
        let mut mac = Zeroizing::new(kdf::hmac_sha256(&self.gmk[..], &diversifier.mac_message()));
        Ok(WrapKey::from_bytes(std::mem::take(&mut *mac)))
    }

    async fn generate_data_key(&self, ctx: &EnvelopeContext) -> Result<(DataKey, WrappedKey)> {
        let key = DataKey::generate(&*self.random)?;
        let wrapped = seal_key(
            &self.master,
            key.secret(),
            &envelope_aad(ctx),
            &*self.random,
        )?;
        Ok((key, wrapped))
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &EnvelopeContext,
    ) -> Result<DataKey> {
        open_key(&self.master, wrapped, &envelope_aad(ctx))
            .map(|k| DataKey::from_bytes(*k))
            .ok_or_else(|| Error::Unwrap {
                purpose: crate::wrap::KeyPurpose::TableKey,
                name: match &ctx.table {
                    Some(t) => format!("{}/{}", ctx.account, t),
                    None => ctx.account.clone(),
                },
                diversifier: None,
            })
    }
}

fn key_file_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::KeyFile {
        path: path.to_owned(),
        source,
    }
}

fn make_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(key_file_err(dir))?;
    check_private(dir)
}

fn write_key(path: &Path, key: &[u8; KEY_LEN]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(key_file_err(path))?;
    let mut text = Zeroizing::new(kdf::hex(key));
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(key_file_err(path))
}

fn read_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    check_private(path)?;
    let text = Zeroizing::new(fs::read(path).map_err(key_file_err(path))?);
    let trimmed = text.trim_ascii_end();
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    kdf::unhex(trimmed, &mut key[..]).ok_or_else(|| Error::KeyFileFormat {
        path: path.to_owned(),
    })?;
    Ok(key)
}

/// Refuses a key file or folder that group or others can access.
pub(crate) fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(path)
            .map_err(key_file_err(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::KeyFilePermissions {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

/// Writes a new private key file (0600), failing if it exists.
pub(crate) fn write_private_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<()> {
    // Create missing folders private, but accept an existing folder as it is: the file
    // itself is what must be private.
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        make_private_dir(parent)?;
    }
    write_key(path, key)
}

/// Reads a private key file written by [`write_private_key_file`].
pub(crate) fn read_private_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    read_key(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;

    #[tokio::test]
    async fn files_are_private_and_reopen_to_the_same_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d1").join("keys");
        let p = LocalKeyProvider::create(&dir, SystemRandom::shared()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(GMK_FILE)), 0o600);
            assert_eq!(mode(&dir.join(MASTER_KEY_FILE)), 0o600);
        }
        assert!(LocalKeyProvider::create(&dir, SystemRandom::shared()).is_err());

        let d = Diversifier::from_unix_secs(3600);
        let ctx = EnvelopeContext::table("a", "t");
        let (k, w) = p.generate_data_key(&ctx).await.unwrap();
        let q = LocalKeyProvider::open(&dir, SystemRandom::shared()).unwrap();
        assert_eq!(q.decrypt_data_key(&w, &ctx).await.unwrap().id(), k.id());
        assert!(matches!(
            q.decrypt_data_key(&w, &EnvelopeContext::table("a", "u"))
                .await,
            Err(Error::Unwrap { .. })
        ));
        assert_eq!(
            p.derive_wrap_key(d).await.unwrap().id(),
            q.derive_wrap_key(d).await.unwrap().id()
        );

        // a second deployment of the group shares the GMK but not the master key
        let dir2 = tmp.path().join("d2").join("keys");
        let r = LocalKeyProvider::create_joining(&dir2, &dir, SystemRandom::shared()).unwrap();
        assert_eq!(
            r.derive_wrap_key(d).await.unwrap().id(),
            p.derive_wrap_key(d).await.unwrap().id()
        );
        assert!(r.decrypt_data_key(&w, &ctx).await.is_err());
    }

    #[cfg(unix)]
    #[test]
    fn open_refuses_readable_key_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        LocalKeyProvider::create(&dir, SystemRandom::shared()).unwrap();
        let gmk = dir.join(GMK_FILE);
        fs::set_permissions(&gmk, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            LocalKeyProvider::open(&dir, SystemRandom::shared()),
            Err(Error::KeyFilePermissions { mode: 0o644, .. })
        ));
        fs::set_permissions(&gmk, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&gmk, b"not hex\n").unwrap();
        assert!(matches!(
            LocalKeyProvider::open(&dir, SystemRandom::shared()),
            Err(Error::KeyFileFormat { .. })
        ));
    }
}
