//! Account master keys through a real `ternd`: a store written before them is migrated when
//! the daemon opens it; `rotate-key` re-wraps table keys without touching a file; dropping
//! an account destroys its keys and revokes its tokens.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};
use tern_scenarios::ternd::{Layout, Ternd, request};

const PRE_AMK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../libs/table/tests/golden/pre-amk"
);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Every file under `dir`: relative path → bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .expect("under")
                    .display()
                    .to_string();
                out.insert(rel, std::fs::read(e.path()).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn scan_ids(d: &Ternd, table: &str) -> Vec<i64> {
    let r = d.op("POST", &format!("{table}/scan"), "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut ids: Vec<i64> = r.json()["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn ternd_migrates_a_store_written_before_account_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    copy_dir(Path::new(PRE_AMK), &l.home);
    let keys = l.home.join("keys");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for f in ["gmk.key", "master.key"] {
        std::fs::set_permissions(keys.join(f), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let config = l.write_config(&l.config(""));
    let d = Ternd::start(&config, &[]);
    assert!(
        d.logs()
            .contains("table keys moved under account master keys"),
        "{}",
        d.logs()
    );
    let orders = "/v1/accounts/acme/databases/sales/schemas/public/tables/orders";
    let mut want: Vec<i64> = (1..=20).filter(|i| *i != 7).collect();
    assert_eq!(scan_ids(&d, orders), want);
    let events = "/v1/accounts/beta/databases/ops/schemas/public/tables/events";
    assert_eq!(scan_ids(&d, events), [1, 2, 3]);
    let v = d.op("GET", "/v1/accounts/acme/keys", "").json();
    assert_eq!(v["keys"][0]["version"], 1, "{v}");
    assert_eq!(v["keys"][0]["state"], "active", "{v}");
    // Writes go on; a restart finds nothing more to migrate.
    let r = d.op("POST", &format!("{orders}/rows"), r#"[{"id":21}]"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(d.terminate().success());
    let d = Ternd::start(&config, &[]);
    assert!(
        !d.logs()
            .contains("table keys moved under account master keys")
    );
    want.push(21);
    assert_eq!(scan_ids(&d, orders), want);
    assert!(d.terminate().success());
}

#[test]
fn ternd_rotates_and_drops_account_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let config = l.write_config(&l.config(""));
    let d = Ternd::start(&config, &[]);
    let r = d.op("POST", "/v1/accounts", r#"{"name":"acme"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().expect("token").to_string();
    // The account's key exists from its creation on.
    let v = d.op("GET", "/v1/accounts/acme/keys", "").json();
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "{v}");
    for (path, body) in [
        ("/v1/accounts/acme/databases", json!({"name": "sales"})),
        (
            "/v1/accounts/acme/databases/sales/schemas/public/tables",
            json!({"name": "orders", "columns": [{"name": "id", "type": "int64", "nullable": false}]}),
        ),
    ] {
        let r = d.op("POST", path, &body.to_string());
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let orders = "/v1/accounts/acme/databases/sales/schemas/public/tables/orders";
    let r = d.op("POST", &format!("{orders}/rows"), r#"[{"id":1},{"id":2}]"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let volume = l.home.join("volume").join("acct").join("acme");
    let before = files(&volume);
    assert!(before.keys().any(|p| p.ends_with(".mp")), "{before:?}");

    // Rotation: an account token may not, the operator may.
    let r = request(
        &d.addr,
        "POST",
        "/v1/accounts/acme/keys/rotate",
        Some(&token),
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = d.op("POST", "/v1/accounts/acme/keys/rotate", "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (
            v["version"].clone(),
            v["retired"].clone(),
            v["tables_rewrapped"].clone()
        ),
        (json!(2), json!([1]), json!(1)),
        "{v}"
    );
    let states: Vec<Value> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["state"].clone())
        .collect();
    assert_eq!(states, [json!("retired"), json!("active")]);
    assert_eq!(files(&volume), before, "rotation rewrites no file");
    assert_eq!(scan_ids(&d, orders), [1, 2]);
    // After a restart the keys are unwrapped again through the new version.
    assert!(d.terminate().success());
    let d = Ternd::start(&config, &[]);
    assert_eq!(scan_ids(&d, orders), [1, 2]);

    // Drop: the keys go, the token goes, the files stay (unreadable).
    let r = request(
        &d.addr,
        "DELETE",
        "/v1/accounts/acme",
        Some(&token),
        "application/json",
        b"",
    );
    assert_eq!(
        r.status, 403,
        "only the operator drops accounts: {}",
        r.body
    );
    let r = d.op("DELETE", "/v1/accounts/acme", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["key_versions_destroyed"], 1, "{}", r.body);
    assert_eq!(files(&volume), before, "the files stay in the volume");
    let r = d.op("GET", "/v1/accounts/acme/keys", "");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = request(
        &d.addr,
        "GET",
        "/v1/accounts/acme/databases",
        Some(&token),
        "application/json",
        b"",
    );
    assert_eq!(r.status, 401, "the account's token is revoked: {}", r.body);
    // The name is free again, with a new key.
    let r = d.op("POST", "/v1/accounts", r#"{"name":"acme"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(d.terminate().success());
}
