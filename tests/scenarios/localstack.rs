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
    // kill -9 during a bulk load: all or nothing after the restart.
    let addr = d.addr.clone();
    let body = csv(1000, 101_000);
    let loader = std::thread::spawn(move || {
        request(
            &addr,
            "POST",
            &format!("{TBL}/rows?format=csv"),
            Some(OPERATOR_TOKEN),
            "text/csv",
            &body,
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    d.kill9();
    let answered = loader.join().map(|r| r.status == 200).unwrap_or(false);
    let d = Ternd::start(&copy, &env);
    let n = count(&d, None);
    assert!(
        n == 900 || n == 100_900,
        "{n} rows after kill -9 and restart"
    );
    if answered {
        assert_eq!(n, 100_900);
    }
    let s = d.op("GET", "/v1/status", "").json();
    assert_eq!(s["unfinished_transactions"], json!({}), "{s}");
    // The customer key is stored and opens again from KMS after the kill -9.
    let k = d.op("GET", "/v1/accounts/acme/customer-key", "").json();
    assert_eq!(k["customer_key"]["key_id"], customer_key.as_str(), "{k}");
    assert_eq!(k["customer_key"]["error"], json!(null), "{k}");
    let status = d.terminate();
    assert!(status.success(), "exit {status}");
}
