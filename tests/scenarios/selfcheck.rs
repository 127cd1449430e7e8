//! `tern selfcheck`, the README's main job, on local folders.

use std::process::Command;

use tern_scenarios::binary;

#[test]
fn selfcheck_does_real_work_on_folders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(binary("tern"))
        .args(["selfcheck", "--size-mib", "8", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run tern selfcheck");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "selfcheck failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for expected in [
        "multipart write",
        "verified read",
        "message chain",
        "receiver cleanup",
    ] {
        assert!(
            steps.contains(&expected),
            "missing step {expected}: {steps:?}"
        );
    }
    // What it wrote is where the layout says, at the size asked for.
    let mp = dir
        .path()
        .join("d1/volume/acct/acme/db/sales/tbl/orders/mp/fdn1.mp");
    let len = std::fs::metadata(&mp).expect("micro-partition file").len();
    assert!(len >= 8 << 20, "{} is {len} bytes", mp.display());
    // The receiver cleaned its sub-bucket for d1.
    let sub = dir.path().join("d2/replication/from/d1");
    let left: Vec<_> = walk(&sub);
    assert!(left.is_empty(), "left behind in d2:from/d1: {left:?}");
}

#[test]
fn selfcheck_names_an_unusable_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").expect("write file");
    let out = Command::new(binary("tern"))
        .args(["selfcheck", "--dir"])
        .arg(&file)
        .output()
        .expect("run tern selfcheck");
    assert!(
        !out.status.success(),
        "selfcheck must fail on a file given as folder"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not-a-folder"),
        "error must name the path: {stderr}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
    }
    files
}
