//! Named profiles (`tern --profile eu …`), as kubectl contexts or aws profiles: where a
//! deployment's API is and how to reach it, kept in a file instead of on every command
//! line (and out of shell history for the token).
//!
//! The file is `$TERN_CONFIG_FILE`, else `$XDG_CONFIG_HOME/tern/config.toml`, else
//! `~/.config/tern/config.toml`:
//!
//! ```toml
//! default_profile = "eu"          # used when no --profile / TERN_PROFILE is given
//!
//! [profiles.eu]
//! url = "https://eu.example:7420"
//! token_file = "~/.config/tern/eu.token"   # or token = "…" (keep the file 0600)
//! ca = "/etc/tern/ca.crt"
//! client_cert = "/etc/tern/me.crt"       # with client_key, for mutual TLS
//! client_key = "/etc/tern/me.key"
//! timeout = "60s"
//! ```
//!
//! A flag or its environment variable (`--url`/`TERN_URL`, `--token`/`TERN_TOKEN`, …)
//! overrides the profile's value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One profile.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The daemon's API (`--url`).
    pub url: Option<String>,
    /// A bearer token (`--token`).
    pub token: Option<String>,
    /// A file holding the bearer token (its first line).
    pub token_file: Option<PathBuf>,
    /// The CA to trust (`--ca`).
    pub ca: Option<PathBuf>,
    /// A client certificate (`--client-cert`).
    pub client_cert: Option<PathBuf>,
    /// Its key (`--client-key`).
    pub client_key: Option<PathBuf>,
    /// The client timeout (`--timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default_profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// Where the profiles file is (see the module docs); `None` without a home folder.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TERN_CONFIG_FILE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tern").join("config.toml"))
}

fn expand(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// The profile `name` (or the file's `default_profile` when `name` is `None`) from the
/// file at `path`. No file and no name: an empty profile. Errors name the file and what
/// is wrong in it.
pub fn load(path: Option<&Path>, name: Option<&str>) -> Result<Profile, String> {
    let text = match path.map(std::fs::read_to_string) {
        Some(Ok(t)) => t,
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound && name.is_none() => {
            return Ok(Profile::default());
        }
        Some(Err(e)) => {
            return Err(format!(
                "cannot read the profiles file {}: {e}",
                path.map(|p| p.display().to_string()).unwrap_or_default()
            ));
        }
        None if name.is_none() => return Ok(Profile::default()),
        None => return Err("--profile: no profiles file (set TERN_CONFIG_FILE or HOME)".into()),
    };
    let shown = path.map(|p| p.display().to_string()).unwrap_or_default();
    let file: File =
        toml::from_str(&text).map_err(|e| format!("profiles file {shown}: {}", e.message()))?;
    let Some(name) = name.or(file.default_profile.as_deref()) else {
        return Ok(Profile::default());
    };
    let mut p = file.profiles.get(name).cloned().ok_or_else(|| {
        format!(
            "profile {name:?} is not in {shown} (it has: {})",
            file.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    if let Some(f) = &p.token_file {
        let f = expand(f);
        let t = std::fs::read_to_string(&f)
            .map_err(|e| format!("profile {name}: token_file {}: {e}", f.display()))?;
        p.token = Some(t.lines().next().unwrap_or_default().trim().to_string());
    }
    for path in [&mut p.ca, &mut p.client_cert, &mut p.client_key]
        .into_iter()
        .flatten()
    {
        *path = expand(path);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_by_name_or_default_and_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("config.toml");
        let token = dir.path().join("eu.token");
        std::fs::write(&token, "tern_secret_eu\n").expect("token");
        std::fs::write(
            &file,
            format!(
                "default_profile = \"us\"\n[profiles.eu]\nurl = \"https://eu:7420\"\ntoken_file = \"{}\"\nca = \"/ca.pem\"\ntimeout = \"90s\"\n[profiles.us]\nurl = \"http://us:7420\"\ntoken = \"tern_us\"\n",
                token.display()
            ),
        )
        .expect("write");
        let eu = load(Some(&file), Some("eu")).expect("eu");
        assert_eq!(eu.url.as_deref(), Some("https://eu:7420"));
        assert_eq!(eu.token.as_deref(), Some("tern_secret_eu"));
        assert_eq!(eu.ca.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(eu.timeout, Some(Duration::from_secs(90)));
        let us = load(Some(&file), None).expect("default");
        assert_eq!(us.token.as_deref(), Some("tern_us"));
        let e = load(Some(&file), Some("asia")).expect_err("unknown");
        assert!(e.contains("asia") && e.contains("eu, us"), "{e}");
        let missing = dir.path().join("none.toml");
        assert!(load(Some(&missing), None).expect("no file").url.is_none());
        let e = load(Some(&missing), Some("eu")).expect_err("named, no file");
        assert!(e.contains("none.toml"), "{e}");
        std::fs::write(&file, "[profiles.eu]\nurll = \"x\"\n").expect("write");
        let e = load(Some(&file), Some("eu")).expect_err("typo");
        assert!(e.contains("config.toml") && e.contains("urll"), "{e}");
    }
}
