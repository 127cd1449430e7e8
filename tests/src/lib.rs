//! Support for Tern's workspace scenario tests: finding (and if need be building) the real
//! binaries, which the tests then run as child processes.

use std::path::PathBuf;
use std::process::Command;

/// The path of a workspace binary (`tern`, later `ternd`) in the same target directory as
/// the running test, built first if it is missing.
///
/// `cargo test --workspace` builds every workspace binary before running tests; the build
/// here covers `cargo test -p tern-scenarios` alone.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf();
    let path = profile_dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
    }
    path
}
