//! Support for Tern's workspace scenario tests: building and finding the real binaries,
//! which the tests then run as child processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The path of a workspace binary (`tern`, later `ternd`), built first (once per test
/// process) into the same target directory as the running test.
///
/// `cargo test` builds a package's plain binaries only for that package's own integration
/// tests, and a binary left from an earlier build may be stale, so this always asks cargo
/// to build it: a no-op when it is fresh. Cargo releases its build lock before tests run.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--package", name, "--bin", name])
        // The package folder cargo gives the running test (the one compiled in may be
        // another checkout's when a target folder is shared between checkouts).
        .current_dir(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from),
        );
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "cargo built {name} but {} is missing",
        path.display()
    );
    built.insert(name.to_string(), path.clone());
    path
}

pub mod ternd;
