//! The buckets `infra/` creates have the settings the design asks for, read back through
//! `BucketAdmin` on LocalStack: default encryption (SSE-KMS with the deployment key on the
//! volume, SSE-S3 on the replication bucket), public access blocked, versioning never
//! enabled; and every deployment has a write-only identity for each of its peers.

use tern_storage::admin::BucketAdmin;
use tern_storage::emulator::{self, Target};

fn text<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| panic!("infra output {} missing", path.join(".")))
}

#[tokio::test]
async fn localstack_buckets_have_the_designed_settings() {
    let (outputs, admin) = tokio::task::spawn_blocking(|| {
        let outputs =
            emulator::infra_outputs(Target::LocalStack).expect("infra applied on LocalStack");
        let admin = emulator::admin(Target::LocalStack).expect("admin identity");
        (outputs, admin)
    })
    .await
    .expect("emulator task");
    let buckets = BucketAdmin::new(&admin.s3_options()).await;
    let deployments = outputs["deployments"]
        .as_object()
        .expect("deployments output");
    assert_eq!(deployments.len(), 3, "envs/local makes a group of three");
    for (id, d) in deployments {
        let volume = text(d, &["volume_bucket"]);
        let repl = text(d, &["replication_bucket"]);
        for bucket in [volume, repl] {
            assert!(
                buckets.bucket_exists(bucket).await.expect("head bucket"),
                "{bucket} exists"
            );
            let pab = buckets.public_access_block(bucket).await.expect("read PAB");
            assert!(
                pab.is_some_and(|p| p.all_blocked()),
                "{bucket}: public access blocked ({pab:?})"
            );
            let versioning = buckets.versioning(bucket).await.expect("read versioning");
            assert_ne!(
                versioning.as_deref(),
                Some("Enabled"),
                "{bucket}: versioning off"
            );
        }
        let enc = buckets
            .encryption(volume)
            .await
            .expect("read encryption")
            .expect("volume encrypted");
        assert_eq!(enc.algorithm, "aws:kms", "{volume}");
        let key = enc.kms_key_id.expect("volume names its key");
        assert!(
            key.ends_with(text(d, &["kms_key_id"])),
            "{volume} uses {id}'s key, not {key}"
        );
        let enc = buckets
            .encryption(repl)
            .await
            .expect("read encryption")
            .expect("replication encrypted");
        assert_eq!(enc.algorithm, "AES256", "{repl}");
        for peer in deployments.keys().filter(|p| *p != id) {
            let cred = &outputs["peer_credentials"][format!("{id}.{peer}")];
            assert_eq!(
                text(cred, &["bucket"]),
                repl,
                "{peer} writes into {id}'s replication bucket"
            );
            assert_eq!(
                text(cred, &["prefix"]).trim_end_matches('/'),
                format!("from/{peer}")
            );
        }
    }
}
