//! KMS-backed providers against LocalStack (started on demand; these tests fail, never skip,
//! when it cannot be reached).

use std::sync::Arc;

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use tern_clock::ManualClock;
use tern_crypto::{
    CachedWrapKeys, CustomerKey, CustomerPublicKey, DiversifierPolicy, EncryptOptions,
    EnvelopeContext, Error, KeyProvider, KmsConnection, KmsKeyProvider, KmsRsaCustomerKey,
    MessageFileKeys, RepMk, StaticCredentials, SystemRandom, WrapContext, decrypt_bytes,
    double_unwrap_repmk, double_wrap_repmk, encrypt_bytes, kms_client,
};

use crate::common::{D0, T0_MS, localstack};

struct Kms {
    client: aws_sdk_kms::Client,
    gmk: String,
    master: String,
}

async fn create_key(client: &aws_sdk_kms::Client, spec: KeySpec, usage: KeyUsageType) -> String {
    client
        .create_key()
        .key_spec(spec)
        .key_usage(usage)
        .description("tern-crypto integration test")
        .send()
        .await
        .expect("CreateKey on LocalStack")
        .key_metadata
        .expect("key metadata")
        .key_id
}

async fn kms() -> Kms {
    let emu = localstack().await;
    let client = kms_client(&KmsConnection {
        endpoint: Some(emu.endpoint.clone()),
        region: Some(emu.region.clone()),
        credentials: Some(StaticCredentials {
            access_key_id: emu.access_key_id.clone(),
            secret_access_key: emu.secret_access_key.clone(),
        }),
    })
    .await;
    let gmk = create_key(&client, KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac).await;
    let master = create_key(
        &client,
        KeySpec::SymmetricDefault,
        KeyUsageType::EncryptDecrypt,
    )
    .await;
    Kms {
        client,
        gmk,
        master,
    }
}

#[tokio::test]
async fn generate_mac_derivation_is_cached_and_deterministic() {
    let k = kms().await;
    let provider = Arc::new(KmsKeyProvider::new(k.client.clone(), &k.gmk, &k.master));
    let cache = Arc::new(CachedWrapKeys::new(provider.clone()));
    let clock = ManualClock::new(T0_MS + 5_000);
    let keys = MessageFileKeys::new(
        cache.clone(),
        "d1->d2",
        DiversifierPolicy::default(),
        clock.shared(),
        SystemRandom::shared(),
    );
    let mut files = Vec::new();
    for i in 0..20 {
        let name = format!("from/d1/body/m/{i}");
        files.push((
            name.clone(),
            encrypt_bytes(&name, &keys, name.as_bytes(), &EncryptOptions::default())
                .await
                .unwrap(),
        ));
    }
    assert_eq!(
        provider.kms_calls(),
        1,
        "20 DEKs wrapped with one GenerateMac"
    );

    // another deployment of the group (its own provider and cache, same GMK) reads them
    let peer = Arc::new(KmsKeyProvider::new(k.client.clone(), &k.gmk, &k.master));
    let peer_keys = MessageFileKeys::new(
        Arc::new(CachedWrapKeys::new(peer.clone())),
        "d1->d2",
        DiversifierPolicy::default(),
        clock.shared(),
        SystemRandom::shared(),
    );
    for (name, bytes) in &files {
        assert_eq!(
            decrypt_bytes(name, &peer_keys, bytes).await.unwrap(),
            name.as_bytes()
        );
    }
    assert_eq!(peer.kms_calls(), 1);

    let a = provider.derive_wrap_key(D0).await.unwrap();
    let b = peer.derive_wrap_key(D0).await.unwrap();
    let c = provider
        .derive_wrap_key(tern_crypto::Diversifier::from_unix_secs(
            D0.unix_secs() + 3600,
        ))
        .await
        .unwrap();
    assert_eq!(a.id(), b.id());
    assert_ne!(a.id(), c.id());

    // a key that is not an HMAC key is refused by KMS, with a typed error naming it
    let wrong = KmsKeyProvider::new(k.client.clone(), &k.master, &k.master);
    let e = wrong.derive_wrap_key(D0).await.unwrap_err();
    assert!(
        matches!(e, Error::Kms { operation: "GenerateMac", ref key_id, .. } if *key_id == k.master),
        "{e:?}"
    );
}

#[tokio::test]
async fn data_keys_are_bound_to_their_encryption_context() {
    let k = kms().await;
    let provider = KmsKeyProvider::new(k.client.clone(), &k.gmk, &k.master);
    let ctx = EnvelopeContext::table("acct-1", "tbl-7");
    let (key, wrapped) = provider.generate_data_key(&ctx).await.unwrap();
    let back = provider.decrypt_data_key(&wrapped, &ctx).await.unwrap();
    assert_eq!(back.id(), key.id());
    let amk_ctx = EnvelopeContext::account("acct-1");
    let (amk, amk_wrapped) = provider.generate_data_key(&amk_ctx).await.unwrap();
    assert_eq!(
        provider
            .decrypt_data_key(&amk_wrapped, &amk_ctx)
            .await
            .unwrap()
            .id(),
        amk.id()
    );
    for other in [
        EnvelopeContext::table("acct-1", "tbl-8"),
        EnvelopeContext::table("acct-2", "tbl-7"),
        EnvelopeContext::account("acct-1"),
    ] {
        let e = provider
            .decrypt_data_key(&wrapped, &other)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::KmsIntegrity {
                    operation: "Decrypt",
                    ..
                }
            ) && e.is_integrity_failure(),
            "{other:?}: {e:?}"
        );
    }
}

/// A wrapped key tampered with in storage is refused by KMS (`InvalidCiphertextException`):
/// that is an integrity failure (the file is rejected), not a KMS outage to retry; a KMS
/// that cannot be reached is the opposite.
#[tokio::test]
async fn tampered_wrapped_key_is_an_integrity_error_not_a_retryable_one() {
    let k = kms().await;
    let provider = KmsKeyProvider::new(k.client.clone(), &k.gmk, &k.master);
    let ctx = EnvelopeContext::table("acct-1", "tbl-7");
    let (_, wrapped) = provider.generate_data_key(&ctx).await.unwrap();
    let bytes = wrapped.as_bytes().to_vec();
    // A flipped bit in the key blob, the ciphertext and the tag, each on its own.
    for at in [bytes.len() / 4, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let e = provider
            .decrypt_data_key(&tern_crypto::WrappedKey::from_bytes(bad), &ctx)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::KmsIntegrity { operation: "Decrypt", ref key_id, .. } if *key_id == k.master)
                && e.is_integrity_failure(),
            "byte {at} flipped: {e:?}"
        );
    }
    // Truncated: the same.
    let e = provider
        .decrypt_data_key(
            &tern_crypto::WrappedKey::from_bytes(bytes[..bytes.len() - 8].to_vec()),
            &ctx,
        )
        .await
        .unwrap_err();
    assert!(e.is_integrity_failure(), "truncated: {e:?}");
    // No KMS at all (nothing listens on port 9 here): a transport failure, retryable.
    let down = kms_client(&KmsConnection {
        endpoint: Some("http://127.0.0.1:9".into()),
        region: Some("us-east-1".into()),
        credentials: Some(StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        }),
    })
    .await;
    let offline = KmsKeyProvider::new(down, &k.gmk, &k.master);
    let e = offline.decrypt_data_key(&wrapped, &ctx).await.unwrap_err();
    assert!(
        matches!(e, Error::Kms { .. }) && !e.is_integrity_failure(),
        "unreachable KMS: {e:?}"
    );
}

#[tokio::test]
async fn repmk_double_wrap_with_kms_rsa() {
    let k = kms().await;
    let rsa = create_key(&k.client, KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt).await;
    let customer = KmsRsaCustomerKey::new(k.client.clone(), &rsa);
    let public = customer.public_key().await.unwrap();
    assert!(matches!(public, CustomerPublicKey::RsaOaepSha256 { .. }));

    let gmk = KmsKeyProvider::new(k.client.clone(), &k.gmk, &k.master);
    let wrap_key = gmk.derive_wrap_key(D0).await.unwrap();
    let ctx = WrapContext::new("d1->d2", "response-7").with_diversifier(D0);
    let repmk = RepMk::generate(&SystemRandom::default()).unwrap();
    let sealed =
        double_wrap_repmk(&repmk, &wrap_key, &ctx, &public, &SystemRandom::default()).unwrap();
    assert_eq!(sealed.ciphertext.len(), 256, "RSA-2048 OAEP ciphertext");

    let back = double_unwrap_repmk(&sealed, &customer, &wrap_key, &ctx)
        .await
        .unwrap();
    assert_eq!(back.id(), repmk.id());

    // a flipped bit is refused by KMS (real OAEP), another customer key is refused up front
    let mut bad = sealed.clone();
    bad.ciphertext[100] ^= 1;
    assert!(
        double_unwrap_repmk(&bad, &customer, &wrap_key, &ctx)
            .await
            .is_err()
    );
    let other = KmsRsaCustomerKey::new(k.client.clone(), "some-other-key");
    assert!(matches!(
        double_unwrap_repmk(&sealed, &other, &wrap_key, &ctx).await,
        Err(Error::Unseal { .. })
    ));
    // the symmetric master key is not an RSA public key
    let not_rsa = KmsRsaCustomerKey::new(k.client.clone(), &k.master);
    assert!(not_rsa.public_key().await.is_err());
}

/// The keys `infra/` creates (not keys made by the test) are of the kinds DESIGN.md §4 asks
/// for, and work with the providers: the group's GMK is an `HMAC_256` /
/// `GENERATE_VERIFY_MAC` multi-Region key from which every deployment derives the same
/// wrapping key; each deployment's key is a symmetric `ENCRYPT_DECRYPT` key for envelopes.
#[tokio::test]
async fn infra_keys_have_the_designed_specs_and_work() {
    use tern_storage::emulator::{self, Target};

    let (outputs, admin) = tokio::task::spawn_blocking(|| {
        let outputs = emulator::infra_outputs(Target::LocalStack)?;
        let admin = emulator::admin(Target::LocalStack)?;
        Ok::<_, emulator::EmulatorError>((outputs, admin))
    })
    .await
    .expect("emulator task")
    .unwrap_or_else(|e| panic!("LocalStack with the local infra is required for this test: {e}"));
    let client = kms_client(&KmsConnection {
        endpoint: Some(admin.endpoint.clone()),
        region: Some(admin.region.clone()),
        credentials: Some(StaticCredentials {
            access_key_id: admin.access_key_id.clone(),
            secret_access_key: admin.secret_access_key.clone(),
        }),
    })
    .await;
    let text = |path: &[&str]| -> String {
        path.iter()
            .try_fold(&outputs, |v, k| v.get(k))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| panic!("infra outputs lack {path:?}"))
            .to_string()
    };
    let describe = |key: String| {
        let client = client.clone();
        async move {
            client
                .describe_key()
                .key_id(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("DescribeKey {key}: {e:?}"))
                .key_metadata
                .unwrap_or_else(|| panic!("DescribeKey {key}: no metadata"))
        }
    };

    // The alias is what configs name; it must resolve to the key the outputs give.
    let gmk_alias = text(&["gmk", "alias"]);
    let gmk = describe(gmk_alias.clone()).await;
    assert_eq!(gmk.key_id, text(&["gmk", "key_id"]), "{gmk_alias}");
    assert_eq!(gmk.key_spec, Some(KeySpec::Hmac256), "{gmk_alias}");
    assert_eq!(
        gmk.key_usage,
        Some(KeyUsageType::GenerateVerifyMac),
        "{gmk_alias}"
    );
    assert_eq!(gmk.multi_region, Some(true), "{gmk_alias}: multi-Region");

    let deployments: Vec<String> = outputs["deployments"]
        .as_object()
        .expect("deployments output")
        .keys()
        .cloned()
        .collect();
    assert_eq!(deployments.len(), 3, "envs/local makes a group of three");
    // Each deployment in its own region, as on AWS (infra/envs/aws): d1 next to the GMK
    // primary, the others with a multi-Region replica of it in their region (ReplicateKey,
    // which envs/aws does with aws_kms_replica_key). Each derives through a KMS client of
    // its own region and the key there, so the same wrapping key can only come from the
    // same key material, not from one key shared by name.
    let gmk_arn = text(&["gmk", "arn"]);
    let primary_region = admin.region.clone();
    let regions = [primary_region.as_str(), "eu-west-1", "ap-southeast-2"];
    let regional_client = |region: &str| {
        let connection = KmsConnection {
            endpoint: Some(admin.endpoint.clone()),
            region: Some(region.to_string()),
            credentials: Some(StaticCredentials {
                access_key_id: admin.access_key_id.clone(),
                secret_access_key: admin.secret_access_key.clone(),
            }),
        };
        async move { kms_client(&connection).await }
    };
    let mut wrap_key_ids = Vec::new();
    for (d, region) in deployments.iter().zip(regions) {
        let regional = regional_client(region).await;
        let gmk_here = if region == primary_region {
            gmk_arn.clone()
        } else {
            let replicated = client
                .replicate_key()
                .key_id(&gmk_arn)
                .replica_region(region)
                .description(format!("tern test: GMK replica for {d}"))
                .send()
                .await;
            match replicated {
                Ok(out) => out
                    .replica_key_metadata
                    .and_then(|m| m.arn)
                    .expect("replica ARN"),
                // A replica made by an earlier run on the same emulator.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_already_exists_exception()) =>
                {
                    gmk_arn.replacen(primary_region.as_str(), region, 1)
                }
                Err(e) => panic!("ReplicateKey {gmk_arn} to {region}: {e:?}"),
            }
        };
        let here = regional
            .describe_key()
            .key_id(&gmk_here)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeKey {gmk_here} in {region}: {e:?}"))
            .key_metadata
            .expect("metadata");
        assert_eq!(here.key_spec, Some(KeySpec::Hmac256), "{d}: {gmk_here}");
        assert!(
            here.arn.as_deref().is_some_and(|a| a.contains(region)),
            "{d}: the GMK it uses lives in its region {region}: {:?}",
            here.arn
        );
        let derive = KmsKeyProvider::new(regional.clone(), &gmk_here, &gmk_here);
        wrap_key_ids.push(derive.derive_wrap_key(D0).await.unwrap().id());
    }
    // The control: an HMAC key of the same spec in a deployment's region that is not a
    // replica derives another wrapping key (the equality above can fail).
    let other_region = regional_client(regions[1]).await;
    let stranger = create_key(
        &other_region,
        KeySpec::Hmac256,
        KeyUsageType::GenerateVerifyMac,
    )
    .await;
    let stranger_id = KmsKeyProvider::new(other_region.clone(), &stranger, &stranger)
        .derive_wrap_key(D0)
        .await
        .unwrap()
        .id();
    assert_ne!(
        stranger_id, wrap_key_ids[0],
        "a key with other material must derive another wrapping key"
    );
    for d in &deployments {
        let alias = text(&["deployments", d, "kms_alias"]);
        let key = describe(alias.clone()).await;
        assert_eq!(
            key.key_id,
            text(&["deployments", d, "kms_key_id"]),
            "{alias}"
        );
        assert_eq!(key.key_spec, Some(KeySpec::SymmetricDefault), "{alias}");
        assert_eq!(key.key_usage, Some(KeyUsageType::EncryptDecrypt), "{alias}");

        // Each deployment's provider, as ternd would configure it (by alias).
        let provider = KmsKeyProvider::new(client.clone(), &gmk_alias, &alias);
        assert_eq!(
            provider.derive_wrap_key(D0).await.unwrap().id(),
            wrap_key_ids[0],
            "{d}: by alias, the same key"
        );
        let ctx = EnvelopeContext::table("acct-1", "tbl-7");
        let (key, wrapped) = provider.generate_data_key(&ctx).await.unwrap();
        assert_eq!(
            provider
                .decrypt_data_key(&wrapped, &ctx)
                .await
                .unwrap()
                .id(),
            key.id(),
            "{d}: envelope round trip under its own key"
        );
    }
    assert!(
        wrap_key_ids.windows(2).all(|w| w[0] == w[1]),
        "every deployment derives the same wrapping key from the group's GMK, each in its \
         region: {wrap_key_ids:?}"
    );
}

/// The key policies `infra/` sets, as moto stores them: only d1's identity may use d1's
/// master key (administrators manage it, never use it), and only the group's deployment
/// identities may call GenerateMac with the GMK. With IAM enforced, d2's identity and a
/// peer identity are refused the key outright. (moto authorizes every KMS call against
/// the resource `*`, so a key-scoped identity grant is refused there for everyone, the
/// owner too: the positive half is read from the policies, not from a call.)
#[tokio::test]
async fn moto_key_policies_let_only_the_deployment_use_its_key_and_members_derive() {
    use tern_storage::emulator::{self, Emulator, Target};
    const OWNER: &str = "d1";
    const PEER: &str = "d2";
    let text = |v: &serde_json::Value, path: &[&str]| -> String {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_else(|| panic!("infra outputs lack {path:?}"))
            .to_string()
    };
    let (outputs, admin, d2, peer) = tokio::task::spawn_blocking(|| {
        Ok::<_, emulator::EmulatorError>((
            emulator::infra_outputs(Target::Moto)?,
            emulator::admin(Target::Moto)?,
            emulator::deployment(Target::Moto, PEER)?,
            emulator::peer(Target::Moto, OWNER, PEER)?,
        ))
    })
    .await
    .expect("emulator task")
    .unwrap_or_else(|e| panic!("moto with the local infra is required: {e}"));
    let kms = |e: Emulator| async move {
        kms_client(&KmsConnection {
            endpoint: Some(e.endpoint.clone()),
            region: Some(e.region.clone()),
            credentials: Some(StaticCredentials {
                access_key_id: e.access_key_id.clone(),
                secret_access_key: e.secret_access_key.clone(),
            }),
        })
        .await
    };
    let admin_kms = kms(admin).await;
    let d1_arn = text(&outputs, &["deployment_identities", OWNER, "arn"]);
    let key = text(&outputs, &["deployments", OWNER, "kms_key_arn"]);
    let policy = |key: String| {
        let admin_kms = admin_kms.clone();
        async move {
            let text = admin_kms
                .get_key_policy()
                .key_id(&key)
                .policy_name("default")
                .send()
                .await
                .unwrap_or_else(|e| panic!("GetKeyPolicy {key}: {e:?}"))
                .policy
                .expect("policy");
            serde_json::from_str::<serde_json::Value>(&text).expect("policy JSON")
        }
    };
    // Principals allowed each action, from the policy's Allow statements.
    let allowed = |doc: &serde_json::Value, action: &str| -> Vec<String> {
        let list = |v: &serde_json::Value| -> Vec<String> {
            match v {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => vec![],
            }
        };
        let mut out = Vec::new();
        for st in doc["Statement"].as_array().expect("statements") {
            let actions = list(&st["Action"]);
            let matches = actions.iter().any(|a| {
                a == action
                    || a == "kms:*"
                    || (a.ends_with('*') && action.starts_with(&a[..a.len() - 1]))
            });
            if st["Effect"] == "Allow" && matches {
                out.extend(list(&st["Principal"]["AWS"]));
            }
        }
        out.sort();
        out
    };
    let doc = policy(key.clone()).await;
    for action in ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"] {
        assert_eq!(
            allowed(&doc, action),
            vec![d1_arn.clone()],
            "{action} on {key}: {doc}"
        );
    }
    let gmk = text(&outputs, &["gmk", "arn"]);
    let doc = policy(gmk.clone()).await;
    let mut members: Vec<String> = ["d1", "d2", "d3"]
        .iter()
        .map(|d| text(&outputs, &["deployment_identities", d, "arn"]))
        .collect();
    members.sort();
    assert_eq!(
        allowed(&doc, "kms:GenerateMac"),
        members,
        "GenerateMac on {gmk}: {doc}"
    );

    // Enforced on moto: neither another deployment nor a peer identity can use d1's key.
    for (who, e) in [("d2", d2), ("peer d1.d2", peer)] {
        let client = kms(e).await;
        let err = client
            .generate_data_key()
            .key_id(&key)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .send()
            .await
            .expect_err("another identity must not use d1's master key");
        assert_eq!(
            err.raw_response().map(|r| r.status().as_u16()),
            Some(403),
            "{who}: {err:?}"
        );
    }
}
