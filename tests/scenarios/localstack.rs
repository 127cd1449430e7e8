//! `ternd` on LocalStack, started from the example config `localstack/ternd-d1.localstack.toml`
//! (buckets and KMS keys of `infra/envs/local`), each run under its own bucket prefix.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tern_scenarios::ternd::{OPERATOR_TOKEN, Ternd, request};
use tern_storage::emulator::{Target, infra_outputs};

const TBL: &str = "/v1/accounts/acme/databases/sales/schemas/public/tables/orders";

fn csv(from: i64, to: i64) -> Vec<u8> {
    let mut s = String::from("id,customer,amount\n");
    for i in from..to {
        s.push_str(&format!("{i},customer-{i},{}\n", i as f64 / 2.0));
    }
    s.into_bytes()
}

/// A new RSA key (`ENCRYPT_DECRYPT`) in LocalStack's KMS: what an account's own
/// customer-managed key would be.
fn localstack_rsa_key(endpoint: &str) -> String {
    use aws_sdk_kms::types::{KeySpec, KeyUsageType};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = tern_crypto::kms_client(&tern_crypto::KmsConnection {
            endpoint: Some(endpoint.to_string()),
            region: Some("us-east-1".into()),
            credentials: Some(tern_crypto::StaticCredentials {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
            }),
        })
        .await;
        client
            .create_key()
            .key_spec(KeySpec::Rsa2048)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .description("tern scenario: an account's customer-managed key")
            .send()
            .await
            .expect("CreateKey on LocalStack")
            .key_metadata
            .expect("key metadata")
            .key_id
    })
}

#[test]
fn ternd_localstack_example_config_serves_ddl_dml_scans_and_survives_kill9() {
    let outputs = infra_outputs(Target::LocalStack).expect("LocalStack with infra/envs/local");
    let endpoint = outputs["endpoint"].as_str().expect("endpoint").to_string();
    let deployments = &outputs["deployments"];
    let volume = deployments["d1"]["volume_bucket"].as_str().expect("bucket");
    let repl = deployments["d1"]["replication_bucket"]
        .as_str()
        .expect("bucket");
    let peer_repl = deployments["d2"]["replication_bucket"]
        .as_str()
        .expect("bucket");
    let dir = tempfile::tempdir().expect("tmp");
    let run = format!(
        "scenario-{}-{}",
        std::process::id(),
        tern_clock::SystemClock::shared().now_millis()
    );
    let config: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "localstack",
        "ternd-d1.localstack.toml",
    ]
    .iter()
    .collect();
    // The example file as it is, with this run's own prefixes, folder and token.
    let example = std::fs::read_to_string(&config).expect("example config");
    let copy = dir.path().join("d1.toml");
    std::fs::write(&copy, example).expect("copy config");
    let meta = dir.path().join("meta.db").display().to_string();
    let vol_url = format!("s3://{volume}/{run}");
    let repl_url = format!("s3://{repl}/{run}");
    let peer_url = format!("s3://{peer_repl}/{run}");
    let env: Vec<(&str, &str)> = vec![
        ("TERN_LISTEN", "127.0.0.1:0"),
        ("TERN_METADATA_PATH", &meta),
        ("TERN_OPERATOR_TOKEN", OPERATOR_TOKEN),
        ("TERN_VOLUME__URL", &vol_url),
        ("TERN_REPLICATION__URL", &repl_url),
        ("TERN_PEERS__0__BUCKET__URL", &peer_url),
        ("TERN_VOLUME__S3__ENDPOINT", &endpoint),
        ("TERN_REPLICATION__S3__ENDPOINT", &endpoint),
        ("TERN_PEERS__0__BUCKET__S3__ENDPOINT", &endpoint),
        ("TERN_KEYS__ENDPOINT", &endpoint),
        ("TERN_LOG__FORMAT", "json"),
    ];
    let d = Ternd::start(&copy, &env);
    let r = d.op("POST", "/v1/accounts", r#"{"name":"acme"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    // acme's own key: an RSA key of the same KMS, opened through the daemon's [keys] KMS.
    let r = d.op(
        "POST",
        "/v1/accounts/acme/customer-key",
        r#"{"kind":"kms_rsa","key_id":"alias/tern/no-such-key"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().1.contains("alias/tern/no-such-key"), "{}", r.body);
    let customer_key = localstack_rsa_key(&endpoint);
    let r = d.op(
        "POST",
        "/v1/accounts/acme/customer-key",
        &json!({"kind": "kms_rsa", "key_id": customer_key}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["key_id"], customer_key.as_str(), "{}", r.body);
    let r = d.op("POST", "/v1/accounts/acme/databases", r#"{"name":"sales"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = d.op(
        "POST",
        "/v1/accounts/acme/databases/sales/schemas/public/tables",
        r#"{"name":"orders","columns":[{"name":"id","type":"int64","nullable":false},{"name":"customer","type":"utf8"},{"name":"amount","type":"float64"}]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let load = |d: &Ternd, from: i64, to: i64| {
        request(
            &d.addr,
            "POST",
            &format!("{TBL}/rows?format=csv"),
            Some(OPERATOR_TOKEN),
            "text/csv",
            &csv(from, to),
        )
    };
    let r = load(&d, 0, 1000);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = d.op(
        "POST",
        &format!("{TBL}/delete"),
        r#"{"where":{"column":"id","op":"<","value":100}}"#,
    );
    assert_eq!(r.json()["rows"], 100, "{}", r.body);
    let r = d.op(
        "POST",
        &format!("{TBL}/update"),
        r#"{"set":{"customer":"vip"},"where":{"column":"id","op":"=","value":500}}"#,
    );
    assert_eq!(r.json()["rows"], 1, "{}", r.body);
    let v = d
        .op(
            "POST",
            &format!("{TBL}/scan"),
            r#"{"where":{"column":"id","op":"=","value":500}}"#,
        )
        .json();
    assert_eq!(v["rows"][0]["customer"], "vip", "{v}");
    let count = |d: &Ternd, version: Option<u64>| {
        let mut req = json!({"columns":["id"],"limit":0});
        if let Some(v) = version {
            req["version"] = json!(v);
        }
        d.op("POST", &format!("{TBL}/scan"), &req.to_string())
            .json()["matched"]
            .as_u64()
            .expect("matched")
    };
    assert_eq!(count(&d, None), 900);
    assert_eq!(count(&d, Some(1)), 1000, "time travel to before the delete");
    // kill -9 during a bulk load's commit, after its log record is in the bucket and
    // before its versions are visible (`TERN_CRASH_AT=logged`: the daemon kills itself -9
    // right there): the restart rolls it forward, all of it.
    assert!(d.terminate().success());
    let crash_env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("TERN_CRASH_AT", "logged")])
        .collect();
    let mut d = Ternd::start(&copy, &crash_env);
    let r = request(
        &d.addr,
        "POST",
        &format!("{TBL}/rows?format=csv"),
        Some(OPERATOR_TOKEN),
        "text/csv",
        &csv(1000, 101_000),
    );
    let status = tern_scenarios::ternd::wait_exit(&mut d.child, Duration::from_secs(300));
    let logs = d.logs();
    assert_eq!(r.status, 0, "the load was answered ({}): {logs}", r.body);
    assert!(
        !status.success() && logs.contains("crash point reached") && logs.contains("logged"),
        "ternd was to kill itself at `logged`; it exited {status}: {logs}"
    );
    drop(d);
    let d = Ternd::start(&copy, &env);
    let n = count(&d, None);
    assert_eq!(n, 100_900, "{n} rows after kill -9 at `logged` and restart");
    let s = d.op("GET", "/v1/status", "").json();
    assert_eq!(s["unfinished_transactions"], json!({}), "{s}");
    // The customer key is stored and opens again from KMS after the kill -9.
    let k = d.op("GET", "/v1/accounts/acme/customer-key", "").json();
    assert_eq!(k["customer_key"]["key_id"], customer_key.as_str(), "{k}");
    assert_eq!(k["customer_key"]["error"], json!(null), "{k}");
    let status = d.terminate();
    assert!(status.success(), "exit {status}");
}

/// A daemon's config on LocalStack: its volume and replication buckets (and its peer's
/// replication bucket) from `infra/envs/local`, each under this run's prefix; KMS keys by
/// alias (the group's GMK, its own deployment key); fast replication intervals.
/// Access key pairs a daemon of [`two_daemon_config`] uses. (Not run on moto with IAM
/// enforced, with each daemon's own and write-only identities: moto 5.2.1 rejects every
/// ListObjects whose prefix holds a '/' with SignatureDoesNotMatch once auth is on, the
/// admin's too, so ternd cannot open a volume there.)
struct Keys {
    /// Its own buckets.
    own: (String, String),
    /// KMS.
    kms: (String, String),
    /// Writing into its peer's replication bucket.
    into_peer: (String, String),
}

impl Keys {
    /// LocalStack's: `test` everywhere (it checks nothing).
    fn localstack() -> Self {
        let t = || ("test".to_string(), "test".to_string());
        Keys {
            own: t(),
            kms: t(),
            into_peer: t(),
        }
    }
}

fn two_daemon_config(
    outputs: &serde_json::Value,
    dir: &std::path::Path,
    run: &str,
    id: &str,
    peer: &str,
    keys: &Keys,
) -> PathBuf {
    let endpoint = outputs["endpoint"].as_str().expect("endpoint");
    let region = outputs["region"].as_str().expect("region");
    let group = outputs["group"].as_str().expect("group");
    let bucket = |d: &str, which: &str| {
        outputs["deployments"][d][which]
            .as_str()
            .expect("bucket")
            .to_string()
    };
    let s3 = |(key, secret): &(String, String)| {
        format!(
            "endpoint = \"{endpoint}\"\nregion = \"{region}\"\naccess_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\n"
        )
    };
    let (own, kms, into_peer) = (s3(&keys.own), s3(&keys.kms), s3(&keys.into_peer));
    let home = dir.join(id);
    std::fs::create_dir_all(&home).expect("home");
    let text = format!(
        r#"deployment_id = "{id}"
region = "{region}"
cloud = "aws"
listen = "127.0.0.1:0"
metadata_path = "{meta}"
operator_token = "{OPERATOR_TOKEN}"
[volume]
url = "s3://{volume}/{run}"
[volume.s3]
{own}
[replication]
url = "s3://{repl}/{run}"
ship_interval = "100ms"
control_interval = "100ms"
announce_interval = "1s"
[replication.s3]
{own}
[keys]
kind = "kms"
gmk_key_id = "alias/tern/{group}/gmk"
master_key_id = "alias/tern/{group}/{id}"
{kms}
[workers]
heartbeat_interval = "1s"
[messaging]
poll_interval = "100ms"
[[peers]]
id = "{peer}"
[peers.bucket]
url = "s3://{peer_repl}/{run}"
[peers.bucket.s3]
{into_peer}
[log]
format = "json"
level = "info"
"#,
        meta = home.join("meta.db").display(),
        volume = bucket(id, "volume_bucket"),
        repl = bucket(id, "replication_bucket"),
        peer_repl = bucket(peer, "replication_bucket"),
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).expect("config");
    path
}

/// Every object under `s3://<bucket>/<prefix>/` on LocalStack: (key, bytes).
fn objects_under(
    outputs: &serde_json::Value,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, Vec<u8>)> {
    use tern_storage::object_store::ObjectStoreExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let opts = tern_storage::S3Options::with_endpoint(
        outputs["endpoint"].as_str().expect("endpoint").to_string(),
        outputs["region"].as_str().expect("region").to_string(),
        "test".to_string(),
        "test".to_string(),
    );
    let store = tern_storage::open_store(&tern_storage::StoreConfig {
        url: format!("s3://{bucket}/{prefix}"),
        s3: opts,
    })
    .expect("store");
    rt.block_on(async {
        let mut out = Vec::new();
        let mut dirs = vec![None::<tern_storage::Path>];
        while let Some(dir) = dirs.pop() {
            let listed = store
                .list_with_delimiter(dir.as_ref())
                .await
                .unwrap_or_else(|e| panic!("list s3://{bucket}/{prefix}/{dir:?}: {e}"));
            dirs.extend(listed.common_prefixes.into_iter().map(Some));
            for o in listed.objects {
                let got = store.get(&o.location).await;
                let bytes = match got {
                    Ok(g) => g.bytes().await,
                    Err(e) => Err(e),
                }
                .unwrap_or_else(|e| panic!("get {}: {e}", o.location));
                out.push((o.location.to_string(), bytes.to_vec()));
            }
        }
        out
    })
}

/// Puts `bytes` at `s3://<bucket>/<prefix>/<key>` on LocalStack.
fn put_object(outputs: &serde_json::Value, bucket: &str, prefix: &str, key: &str, bytes: &[u8]) {
    use tern_storage::object_store::ObjectStoreExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = tern_storage::open_store(&tern_storage::StoreConfig {
        url: format!("s3://{bucket}/{prefix}"),
        s3: tern_storage::S3Options::with_endpoint(
            outputs["endpoint"].as_str().expect("endpoint").to_string(),
            outputs["region"].as_str().expect("region").to_string(),
            "test".to_string(),
            "test".to_string(),
        ),
    })
    .expect("store");
    rt.block_on(store.put(&tern_storage::Path::from(key), bytes.to_vec().into()))
        .expect("put");
}

/// Replication between two real daemons whose volumes, replication buckets and keys are
/// LocalStack's (the buckets and KMS keys of `infra/envs/local`): d2's replica of d1's
/// database catches up (first refresh, then log shipping), is read-only, and afterwards
/// nothing in any of the four buckets is Parquet-shaped or holds a row's plaintext.
#[test]
fn ternd_two_daemons_replicate_on_localstack_and_the_buckets_hold_no_plaintext() {
    use crate::replication::{
        CANARY, PRIMARY, contains, create_replica, global_accounts, link, primary, replica_table,
        rows_json, scan_all, wait_until,
    };
    const WAIT: Duration = Duration::from_secs(120);
    let outputs = infra_outputs(Target::LocalStack).expect("LocalStack with infra/envs/local");
    assert_eq!(
        outputs["emulator"], "localstack",
        "this test is named for LocalStack: {}",
        outputs["emulator"]
    );
    let dir = tempfile::tempdir().expect("tmp");
    let run = format!(
        "repl-{}-{}",
        std::process::id(),
        tern_clock::SystemClock::shared().now_millis()
    );
    let c1 = two_daemon_config(&outputs, dir.path(), &run, "d1", "d2", &Keys::localstack());
    let c2 = two_daemon_config(&outputs, dir.path(), &run, "d2", "d1", &Keys::localstack());
    let d1 = Ternd::start(&c1, &[]);
    let d2 = Ternd::start(&c2, &[]);
    link(&d1, "d1", &d2, "d2");
    global_accounts(&[(&d1, "a1"), (&d2, "a2")]);
    let group = primary(&d1, &d2, 2, 100);
    create_replica(&d2, &group);
    let want = scan_all(&d1, PRIMARY).expect("primary scan");
    assert_eq!(want.len(), 200);
    let tbl = wait_until("the replica has the 200 rows", WAIT, || {
        let t = replica_table(&d2)?;
        (scan_all(&d2, &t)? == want).then_some(t)
    });
    let r = d1.op("POST", &format!("{PRIMARY}/rows"), &rows_json(200, 250));
    assert_eq!(r.status, 200, "{}", r.body);
    let want = scan_all(&d1, PRIMARY).expect("primary scan");
    assert_eq!(want.len(), 250);
    wait_until("log shipping brings the 50 more", WAIT, || {
        (scan_all(&d2, &tbl)? == want).then_some(())
    });
    let r = d2.op("POST", &format!("{tbl}/rows"), &rows_json(10_000, 10_001));
    assert_eq!(r.status, 409, "{}", r.body);
    // The scan, once both stopped (running daemons delete message and inbound files).
    assert!(d1.terminate().success());
    assert!(d2.terminate().success());
    let mut scanned = 0;
    for d in ["d1", "d2"] {
        for which in ["volume_bucket", "replication_bucket"] {
            let bucket = outputs["deployments"][d][which].as_str().expect("bucket");
            let objects = objects_under(&outputs, bucket, &run);
            assert!(
                !objects.is_empty() || which == "replication_bucket",
                "{bucket}/{run}: empty"
            );
            for (key, bytes) in &objects {
                assert!(
                    !contains(bytes, b"PAR1"),
                    "Parquet magic in s3://{bucket}/{run}/{key}"
                );
                assert!(
                    !contains(bytes, CANARY.as_bytes()),
                    "plaintext in s3://{bucket}/{run}/{key}"
                );
            }
            scanned += objects.len();
        }
    }
    assert!(
        scanned > 10,
        "the buckets hold the group's files ({scanned} objects)"
    );
    // The control: the same scan finds a plaintext row where one is (it reads contents).
    let bucket = outputs["deployments"]["d1"]["replication_bucket"]
        .as_str()
        .expect("bucket");
    let control = format!("{run}-control");
    put_object(&outputs, bucket, &control, "from/d2/x", CANARY.as_bytes());
    let found = objects_under(&outputs, bucket, &control);
    assert!(
        found.iter().any(|(_, b)| contains(b, CANARY.as_bytes())),
        "the scan must see a plaintext object: {found:?}"
    );
}
