//! Checks of what requests name on the daemon's host.
//!
//! A customer key file made by the daemon (`customer-key … --create`) is written only
//! inside the keys folder (`keys.dir`): a relative name is taken under it, an absolute
//! one must be in it, `..` is refused, and no existing part of the path below the folder
//! may be a symbolic link (which could point anywhere). Opening an existing key file the
//! operator made is not restricted.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `file` resolved inside `dir` (see the module docs), or why it is refused.
pub fn confine(dir: &Path, file: &Path) -> Result<PathBuf> {
    let refuse = |why: &str| {
        Err(Error::Invalid(format!(
            "key file {}: {why}; a key the daemon makes is written inside the keys folder {} (give a name relative to it)",
            file.display(),
            dir.display()
        )))
    };
    if file.components().any(|c| c == Component::ParentDir) {
        return refuse("`..` is not allowed");
    }
    let rel = if file.is_absolute() {
        match file.strip_prefix(dir) {
            Ok(r) => r,
            Err(_) => return refuse("is outside the keys folder"),
        }
    } else {
        file
    };
    let mut path = dir.to_path_buf();
    let mut named = false;
    for c in rel.components() {
        match c {
            Component::Normal(part) => {
                path.push(part);
                named = true;
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                    return refuse("goes through a symbolic link");
                }
            }
            Component::CurDir => {}
            _ => return refuse("is not a plain path"),
        }
    }
    if !named {
        return refuse("names the folder itself, not a file in it");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_stay_inside_the_keys_folder() {
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = tmp.path().join("keys");
        std::fs::create_dir_all(keys.join("customer")).expect("mkdir");
        assert_eq!(
            confine(&keys, Path::new("customer/a2.key")).expect("relative"),
            keys.join("customer/a2.key")
        );
        assert_eq!(
            confine(&keys, &keys.join("a2.key")).expect("absolute inside"),
            keys.join("a2.key")
        );
        for (bad, why) in [
            (PathBuf::from("../a2.key"), "`..`"),
            (keys.join("customer/../../a2.key"), "`..`"),
            (PathBuf::from("/etc/tern/a2.key"), "outside"),
            (tmp.path().join("a2.key"), "outside"),
            (PathBuf::from("."), "folder itself"),
        ] {
            let e = confine(&keys, &bad).expect_err(&bad.display().to_string());
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        }
        // A link inside the folder that points out of it.
        std::os::unix::fs::symlink(tmp.path(), keys.join("out")).expect("symlink");
        let e = confine(&keys, Path::new("out/a2.key")).expect_err("through a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink(tmp.path().join("x.key"), keys.join("l.key")).expect("link");
        assert!(confine(&keys, Path::new("l.key")).is_err());
    }
}
