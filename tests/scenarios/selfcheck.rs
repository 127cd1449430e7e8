//! `tern selfcheck`, the README's main job, on local folders.

use std::process::Command;

use tern_scenarios::binary;

#[test]
fn selfcheck_does_real_work_on_folders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(binary("tern"))
        .args(["selfcheck", "--rows", "20000", "--json", "--dir"])
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
        "create table",
        "insert",
        "query",
        "delete + time travel",
        "copy to peer",
        "tamper refused",
        "message chain",
        "transaction log",
    ] {
        assert!(
            steps.contains(&expected),
            "missing step {expected}: {steps:?}"
        );
    }
    // What it wrote is where the layout says: d1's table files, d2's imported copies.
    let d1_files = walk(&dir.path().join("d1/volume/acct/acme/db/sales/tbl"));
    let has = |ext: &str| {
        d1_files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == ext))
    };
    assert!(has("mp") && has("ep"), "{d1_files:?}");
    let d2_files = walk(&dir.path().join("d2/volume/acct/acme/db/sales/tbl"));
    assert!(!d2_files.is_empty(), "d2 received copies");
    assert!(
        d2_files
            .iter()
            .all(|p| p.to_string_lossy().ends_with("_g.mp")),
        "{d2_files:?}"
    );
    // Nothing stored is plaintext.
    for f in d1_files.iter().chain(&d2_files) {
        let bytes = std::fs::read(f).expect("read");
        assert!(
            !bytes.windows(4).any(|w| w == b"PAR1"),
            "{} holds plaintext Parquet",
            f.display()
        );
        assert!(
            !bytes.windows(9).any(|w| w == b"customer-"),
            "{} holds plaintext values",
            f.display()
        );
    }
    // The receiver cleaned its sub-bucket for d1.
    let left = walk(&dir.path().join("d2/replication/from/d1"));
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
