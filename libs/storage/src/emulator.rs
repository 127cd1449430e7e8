//! Test support: the S3/KMS emulators of `localstack/`, started on demand.
//!
//! Every crate's emulator tests get their endpoint and credentials here, so that a test run
//! on a fresh machine installs and starts what it needs, and CI (which starts the emulators
//! itself with the same scripts) and a developer's `cargo test` behave the same. Nothing is
//! skipped silently: if an emulator cannot be started, the error says which script failed
//! and ends with its stderr, and the test fails.
//!
//! | function                 | server                            | credentials           |
//! |--------------------------|-----------------------------------|-----------------------|
//! | [`localstack`]           | LocalStack, `127.0.0.1:4566` (**) | `test`/`test`         |
//! | [`moto`]                 | moto, `127.0.0.1:4600`            | `test`/`test` (*)     |
//! | [`infra_outputs`]        | `infra/envs/local` applied on one | (in the JSON)         |
//! | [`admin`], [`peer`],     | an emulator with the infra        | IAM users' keys       |
//! | [`deployment`]           |                                   |                       |
//!
//! (*) moto is the emulator that enforces IAM: once `infra_outputs(Target::Moto)` has
//! applied the infra, `localstack/infra-up.sh` switches enforcement on and moto accepts only
//! the keys of IAM users it knows; use [`admin`]`(Target::Moto)` then.
//! (**) the scripts' ports are `TERN_LOCALSTACK_PORT` (default 4566) and `TERN_MOTO_PORT`
//! (default 4600), so that several emulator pairs can run on one machine.
//!
//! Environment overrides (an emulator someone else runs; no script is called):
//! `TERN_LOCALSTACK_URL` (+ `TERN_LOCALSTACK_REGION`), `TERN_MOTO_URL` (+ `TERN_MOTO_REGION`),
//! `TERN_INFRA_LOCALSTACK_JSON` / `TERN_INFRA_MOTO_JSON` (a file written by `infra-up.sh`).
//! The repository (for the scripts) is found from `TERN_REPO_ROOT`, else from the crate's
//! manifest directory upwards.
//!
//! These functions block (they run shell scripts with [`std::process::Command`]; the first
//! call in a process may take seconds, or minutes when the emulator must be installed). In
//! async tests call them through `tokio::task::spawn_blocking`; blocking a `#[tokio::test]`
//! runtime thread briefly also works, since every such test owns its runtime. Results are
//! kept per process behind a mutex, so parallel tests of one binary start an emulator once;
//! the scripts themselves take file locks, so parallel test *processes* (nextest) do too.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::config::S3Options;

/// How many trailing lines of a failed script's stderr an error carries.
const STDERR_TAIL_LINES: usize = 40;

/// Which emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// LocalStack: the default integration target; enforces no access control.
    LocalStack,
    /// moto: enforces IAM once the infra is applied.
    Moto,
}

impl Target {
    /// The scripts' name for the target.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::LocalStack => "localstack",
            Target::Moto => "moto",
        }
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Target::LocalStack => "TERN_LOCALSTACK",
            Target::Moto => "TERN_MOTO",
        }
    }

    fn infra_env(self) -> &'static str {
        match self {
            Target::LocalStack => "TERN_INFRA_LOCALSTACK_JSON",
            Target::Moto => "TERN_INFRA_MOTO_JSON",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A running emulator and the credentials to use with it.
#[derive(Clone, PartialEq, Eq)]
pub struct Emulator {
    /// `http://127.0.0.1:4566` and the like.
    pub endpoint: String,
    /// The region to sign requests for.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl Emulator {
    /// Store options for this emulator (path style, plain HTTP allowed).
    pub fn s3_options(&self) -> S3Options {
        S3Options::with_endpoint(
            self.endpoint.clone(),
            self.region.clone(),
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
        )
    }
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Why an emulator or its infra is not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// No directory containing `localstack/start.sh` above the crate.
    #[error(
        "cannot find the Tern repository (a directory with localstack/start.sh) above {}; \
         set TERN_REPO_ROOT",
        searched_from.display()
    )]
    RepoNotFound {
        /// Where the search started.
        searched_from: PathBuf,
    },
    /// A script could not be run at all.
    #[error("could not run {} {arg}", script.display())]
    Spawn {
        /// The script.
        script: PathBuf,
        /// Its argument (the target).
        arg: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A script ran and failed.
    #[error("{} {arg} failed ({status}); last lines of its stderr:\n{stderr_tail}", script.display())]
    ScriptFailed {
        /// The script.
        script: PathBuf,
        /// Its argument (the target).
        arg: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of what it wrote to stderr.
        stderr_tail: String,
    },
    /// A script succeeded but printed nothing usable on stdout.
    #[error("{} {arg} succeeded but printed no {what} on stdout", script.display())]
    NoOutput {
        /// The script.
        script: PathBuf,
        /// Its argument (the target).
        arg: String,
        /// What it should have printed.
        what: &'static str,
    },
    /// The infra outputs file could not be read.
    #[error("cannot read the infra outputs {}", path.display())]
    ReadOutputs {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The infra outputs file is not the JSON `infra-up.sh` writes.
    #[error("the infra outputs {} are not valid JSON", path.display())]
    ParseOutputs {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A value the caller asked for is not in the infra outputs.
    #[error("the {target} infra outputs have no {key} (is infra/envs/local out of date?)")]
    MissingOutput {
        /// The emulator.
        target: Target,
        /// The missing key path, e.g. `peer_credentials."d1.d2".access_key_id`.
        key: String,
    },
    /// The first failure of a request, shared with the process-wide cache (displays as the
    /// failure itself).
    #[error(transparent)]
    Shared(Arc<EmulatorError>),
    /// The same request already failed earlier in this process; not retried, so that a
    /// broken emulator fails each test quickly instead of timing out in every one.
    #[error("{what} for {target} failed earlier in this process: {source}")]
    EarlierFailure {
        /// The emulator.
        target: Target,
        /// `start` or `infra`.
        what: &'static str,
        /// The first failure.
        #[source]
        source: Arc<EmulatorError>,
    },
}

/// Per-process results, per target; `None` until first used (a `HashMap` cannot be built
/// in a `static` initialiser).
type Cache<T> = Mutex<Option<HashMap<Target, Result<T, Arc<EmulatorError>>>>>;

static EMULATORS: Cache<Emulator> = Mutex::new(None);
static INFRA: Cache<Value> = Mutex::new(None);

/// Runs `make` once per target and process; later calls get the first result (success or
/// failure). The lock is held while `make` runs: concurrent callers wait for it.
fn cached<T: Clone>(
    cache: &Cache<T>,
    target: Target,
    what: &'static str,
    make: impl FnOnce() -> Result<T, EmulatorError>,
) -> Result<T, EmulatorError> {
    // A test that panicked while holding the lock leaves valid data behind: carry on.
    let mut guard = cache.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(earlier) = map.get(&target) {
        return match earlier {
            Ok(value) => Ok(value.clone()),
            Err(first) => Err(EmulatorError::EarlierFailure {
                target,
                what,
                source: Arc::clone(first),
            }),
        };
    }
    match make() {
        Ok(value) => {
            map.insert(target, Ok(value.clone()));
            Ok(value)
        }
        Err(err) => {
            let err = Arc::new(err);
            map.insert(target, Err(Arc::clone(&err)));
            Err(EmulatorError::Shared(err))
        }
    }
}

/// LocalStack (S3, KMS, IAM, STS; no access control) with `test`/`test` credentials.
///
/// `TERN_LOCALSTACK_URL` if set (region `TERN_LOCALSTACK_REGION`, default `us-east-1`), else
/// `localstack/start.sh localstack` (installs and starts it if needed; on a machine without
/// Python 3.13 the script serves moto on the same port instead, and says so).
pub fn localstack() -> Result<Emulator, EmulatorError> {
    emulator(Target::LocalStack)
}

/// A new bucket `tern-<name>-<pid>` on [`localstack`] (started if needed) and a store over
/// it: the volume of one test or benchmark. Its name is returned so the caller can remove
/// it; the emulator is wiped between CI runs anyway.
pub async fn localstack_bucket(
    name: &str,
) -> Result<(Arc<dyn object_store::ObjectStore>, String), Box<dyn std::error::Error + Send + Sync>>
{
    let emu = tokio::task::spawn_blocking(localstack).await??;
    let opts = emu.s3_options();
    let bucket = format!("tern-{name}-{}", std::process::id());
    crate::admin::BucketAdmin::new(&opts)
        .await
        .create_bucket(&bucket, &opts.region)
        .await?;
    let store = crate::config::open_store(&crate::config::StoreConfig {
        url: format!("s3://{bucket}"),
        s3: opts,
    })?;
    Ok((store, bucket))
}

/// moto with `test`/`test` credentials: `TERN_MOTO_URL` if set, else `localstack/start.sh
/// moto` (`127.0.0.1:${TERN_MOTO_PORT:-4600}`). Once the infra is applied on it, moto enforces
/// IAM and rejects `test`: use [`admin`]`(Target::Moto)` for a full-access identity then.
pub fn moto() -> Result<Emulator, EmulatorError> {
    emulator(Target::Moto)
}

fn emulator(target: Target) -> Result<Emulator, EmulatorError> {
    cached(&EMULATORS, target, "start", || {
        let region = env_nonempty(&format!("{}_REGION", target.env_prefix()))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = match env_nonempty(&format!("{}_URL", target.env_prefix())) {
            Some(url) => url,
            None => {
                let stdout = run_script("start.sh", target)?;
                last_line(&stdout).ok_or_else(|| EmulatorError::NoOutput {
                    script: script_path_for_error("start.sh"),
                    arg: target.to_string(),
                    what: "endpoint URL",
                })?
            }
        };
        tracing::info!(%target, %endpoint, "emulator ready");
        Ok(Emulator {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        })
    })
}

/// The outputs of `infra/envs/local` applied on `target`, as written by
/// `localstack/infra-up.sh`: `{output name: value}` plus `target`, `emulator` and
/// `iam_enforced`. Keys: `endpoint`, `region`, `group`, `gmk {key_id, arn, alias}`,
/// `deployments {d1: {volume_bucket, replication_bucket, kms_key_id, kms_key_arn,
/// kms_alias}, …}`, `peer_credentials {"<owner>.<peer>": {access_key_id,
/// secret_access_key, user_name, user_arn, bucket, prefix, owner, peer}}`,
/// `admin {user_name, access_key_id, secret_access_key}`,
/// `deployment_identities {d1: {arn, name, access_key_id, secret_access_key}, …}`.
///
/// Reads the file named by `TERN_INFRA_<TARGET>_JSON` if set, else runs `infra-up.sh
/// <target>` (which starts the emulator and applies only if this emulator instance does not
/// have the infra yet). On moto, IAM is enforced afterwards.
pub fn infra_outputs(target: Target) -> Result<Value, EmulatorError> {
    cached(&INFRA, target, "infra", || {
        let path = match env_nonempty(target.infra_env()) {
            Some(path) => PathBuf::from(path),
            None => {
                let stdout = run_script("infra-up.sh", target)?;
                last_line(&stdout)
                    .map(PathBuf::from)
                    .ok_or_else(|| EmulatorError::NoOutput {
                        script: script_path_for_error("infra-up.sh"),
                        arg: target.to_string(),
                        what: "outputs file path",
                    })?
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| EmulatorError::ReadOutputs {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| EmulatorError::ParseOutputs { path, source })
    })
}

/// The infra's full-access identity on `target` (works on moto with IAM enforced).
pub fn admin(target: Target) -> Result<Emulator, EmulatorError> {
    let outputs = infra_outputs(target)?;
    identity(target, &outputs, &["admin"])
}

/// Deployment `id`'s own identity (`deployment_identities.<id>`): what its ternd runs as,
/// reaching only its own buckets and KMS key (and GenerateMac on the GMK).
pub fn deployment(target: Target, id: &str) -> Result<Emulator, EmulatorError> {
    let outputs = infra_outputs(target)?;
    identity(target, &outputs, &["deployment_identities", id])
}

/// The identity `peer` uses to write under `from/<peer>/` of `owner`'s replication bucket
/// (`peer_credentials."<owner>.<peer>"`).
pub fn peer(target: Target, owner: &str, peer: &str) -> Result<Emulator, EmulatorError> {
    let outputs = infra_outputs(target)?;
    let key = format!("{owner}.{peer}");
    identity(target, &outputs, &["peer_credentials", &key])
}

fn identity(target: Target, outputs: &Value, path: &[&str]) -> Result<Emulator, EmulatorError> {
    let text = |path: &[&str]| -> Result<String, EmulatorError> {
        path.iter()
            .try_fold(outputs, |v, k| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| EmulatorError::MissingOutput {
                target,
                key: path
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join("."),
            })
    };
    let with = |leaf: &'static str| -> Vec<&str> { path.iter().copied().chain([leaf]).collect() };
    Ok(Emulator {
        endpoint: text(&["endpoint"])?,
        region: text(&["region"])?,
        access_key_id: text(&with("access_key_id"))?,
        secret_access_key: text(&with("secret_access_key"))?,
    })
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn last_line(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

/// The repository root: `TERN_REPO_ROOT`, else the first ancestor of the running test's
/// manifest directory (or of this crate's, as built) that holds `localstack/start.sh`.
fn repo_root() -> Result<PathBuf, EmulatorError> {
    let has_scripts = |dir: &Path| dir.join("localstack").join("start.sh").is_file();
    if let Some(root) = env_nonempty("TERN_REPO_ROOT") {
        let root = PathBuf::from(root);
        return if has_scripts(&root) {
            Ok(root)
        } else {
            Err(EmulatorError::RepoNotFound {
                searched_from: root,
            })
        };
    }
    let starts = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    for start in starts.iter().flatten() {
        if let Some(root) = start.ancestors().find(|d| has_scripts(d)) {
            return Ok(root.to_path_buf());
        }
    }
    Err(EmulatorError::RepoNotFound {
        searched_from: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    })
}

fn script_path_for_error(name: &str) -> PathBuf {
    repo_root()
        .map(|r| r.join("localstack").join(name))
        .unwrap_or_else(|_| PathBuf::from("localstack").join(name))
}

/// Runs `<repo>/localstack/<name> <target>` to completion; its stdout on success.
fn run_script(name: &str, target: Target) -> Result<String, EmulatorError> {
    let script = repo_root()?.join("localstack").join(name);
    let arg = target.to_string();
    tracing::info!(script = %script.display(), %arg, "running emulator script");
    // Servers the script starts redirect their own output to log files, so the pipes close
    // when the script exits.
    let output = Command::new(&script)
        .arg(&arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| EmulatorError::Spawn {
            script: script.clone(),
            arg: arg.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(EmulatorError::ScriptFailed {
            script,
            arg,
            status: output.status,
            stderr_tail: tail(&stderr, STDERR_TAIL_LINES),
        });
    }
    tracing::debug!(script = %script.display(), stderr = %stderr, "emulator script done");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn last_line_skips_blank_lines() {
        assert_eq!(
            last_line("x\nhttp://127.0.0.1:4566\n\n").as_deref(),
            Some("http://127.0.0.1:4566")
        );
        assert_eq!(last_line("\n  \n"), None);
    }

    #[test]
    fn identities_come_from_the_outputs() {
        let outputs = serde_json::json!({
            "endpoint": "http://127.0.0.1:4600",
            "region": "us-east-1",
            "admin": { "access_key_id": "AKADMIN", "secret_access_key": "s" },
            "peer_credentials": { "d1.d2": { "access_key_id": "AKPEER", "secret_access_key": "p" } },
        });
        let admin = identity(Target::Moto, &outputs, &["admin"]).expect("admin");
        assert_eq!(admin.access_key_id, "AKADMIN");
        assert_eq!(admin.endpoint, "http://127.0.0.1:4600");
        let peer = identity(Target::Moto, &outputs, &["peer_credentials", "d1.d2"]).expect("peer");
        assert_eq!(peer.access_key_id, "AKPEER");
        let missing = identity(Target::Moto, &outputs, &["peer_credentials", "d9.d2"]);
        assert!(
            matches!(&missing, Err(EmulatorError::MissingOutput { key, .. }) if key.contains("d9.d2")),
            "{missing:?}"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let e = Emulator {
            endpoint: "http://x".into(),
            region: "r".into(),
            access_key_id: "id".into(),
            secret_access_key: "very-secret".into(),
        };
        assert!(!format!("{e:?}").contains("very-secret"));
    }

    #[test]
    fn the_repository_is_found_from_the_crate() {
        let root = repo_root().expect("repo root");
        assert!(root.join("localstack/start.sh").is_file());
    }
}
