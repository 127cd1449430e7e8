//! Key providers, the wrap-key cache, envelopes and customer keys (local implementations).

use std::sync::Arc;
use std::time::Duration;

use tern_clock::ManualClock;
use tern_crypto::{
    CachedWrapKeys, CustomerKey, DiversifierPolicy, EncryptOptions, EnvelopeContext, Error,
    KeyProvider, LocalKeyProvider, MessageFileKeys, RepMk, SystemRandom, TableFileKeys,
    WrapContext, X25519CustomerKey, decrypt_bytes, double_unwrap_repmk, double_wrap_repmk,
    encrypt_bytes,
};

use crate::common::{CountingProvider, D0, T0_MS, local_provider};

#[tokio::test]
async fn wrap_keys_are_derived_once_per_diversifier() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = Arc::new(CountingProvider::new(local_provider(
        &tmp.path().join("k"),
        1,
        2,
        SystemRandom::shared(),
    )));
    let cache = Arc::new(CachedWrapKeys::new(provider.clone()));
    let clock = ManualClock::new(T0_MS + 1000);
    let keys = MessageFileKeys::new(
        cache.clone(),
        "d1->d2",
        DiversifierPolicy::default(),
        clock.shared(),
        SystemRandom::shared(),
    );
    let mut files = Vec::new();
    for i in 0..100 {
        let name = format!("from/d1/body/m1/{i}");
        let bytes = encrypt_bytes(&name, &keys, b"body", &EncryptOptions::default())
            .await
            .unwrap();
        files.push((name, bytes));
    }
    assert_eq!(
        provider.derives(),
        1,
        "100 DEKs under one diversifier: one HMAC call"
    );
    assert_eq!(cache.provider_calls(), 1);
    for (name, bytes) in &files {
        assert_eq!(decrypt_bytes(name, &keys, bytes).await.unwrap(), b"body");
    }
    assert_eq!(provider.derives(), 1, "decrypting uses the cache too");

    // the next hour rotates to a new diversifier: one more call
    clock.advance(Duration::from_secs(3600));
    encrypt_bytes("from/d1/body/m2/0", &keys, b"x", &EncryptOptions::default())
        .await
        .unwrap();
    assert_eq!(provider.derives(), 2);

    // concurrent first requests for a diversifier share one call
    let d = tern_crypto::Diversifier::from_unix_secs(D0.unix_secs() + 7200);
    let gets = (0..16).map(|_| cache.get(d));
    let keys: Vec<_> = futures::future::try_join_all(gets).await.unwrap();
    assert!(keys.windows(2).all(|w| w[0].id() == w[1].id()));
    assert_eq!(provider.derives(), 3);
}

#[tokio::test]
async fn cache_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = Arc::new(CountingProvider::new(local_provider(
        &tmp.path().join("k"),
        1,
        2,
        SystemRandom::shared(),
    )));
    let cache = CachedWrapKeys::with_capacity(provider.clone(), 2);
    let d = |h: u64| tern_crypto::Diversifier::from_unix_secs(h * 3600);
    for h in [1, 2, 3, 3, 2, 1] {
        cache.get(d(h)).await.unwrap();
    }
    // 1, 2, 3 derived; 3 and 2 cached; 1 was evicted (oldest) and derived again
    assert_eq!(provider.derives(), 4);
}

#[tokio::test]
async fn table_keys_under_the_account_envelope() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d1-keys");
    let provider = LocalKeyProvider::create(&dir, SystemRandom::shared()).unwrap();
    let rng = SystemRandom::default();
    // AMK from the provider (envelope bound to the account); TMK wrapped by the AMK
    let (amk, amk_wrapped) = provider
        .generate_data_key(&EnvelopeContext::account("acct-1"))
        .await
        .unwrap();
    let tmk = tern_crypto::DataKey::generate(&rng).unwrap();
    let tmk_ctx = WrapContext::new("acct-1", "tbl-7");
    let tmk_wrapped = amk.wrap_table_key(&tmk, &tmk_ctx, &rng).unwrap();
    let name = "acct/acct-1/db/1/tbl/tbl-7/mp/fdn1.mp";
    let file = encrypt_bytes(
        name,
        &TableFileKeys::new(Arc::new(tmk)),
        b"rows",
        &EncryptOptions::default(),
    )
    .await
    .unwrap();

    // after a restart: reopen the key folder, unwrap AMK then TMK, read the file
    let provider = LocalKeyProvider::open(&dir, SystemRandom::shared()).unwrap();
    let amk = provider
        .decrypt_data_key(&amk_wrapped, &EnvelopeContext::account("acct-1"))
        .await
        .unwrap();
    let tmk = amk.unwrap_table_key(&tmk_wrapped, &tmk_ctx).unwrap();
    let keys = TableFileKeys::new(Arc::new(tmk));
    assert_eq!(decrypt_bytes(name, &keys, &file).await.unwrap(), b"rows");
    // the AMK envelope names its account
    assert!(matches!(
        provider
            .decrypt_data_key(&amk_wrapped, &EnvelopeContext::account("acct-2"))
            .await,
        Err(Error::Unwrap { .. })
    ));
}

#[tokio::test]
async fn repmk_double_wrap_with_local_x25519() {
    let tmp = tempfile::tempdir().unwrap();
    let rng = SystemRandom::default();
    // the target account's key pair; its public key travels in the refresh request
    let customer = X25519CustomerKey::create(&tmp.path().join("cust/x25519.key"), &rng).unwrap();
    let request_key = customer.public_key().await.unwrap();
    let request_json = serde_json::to_string(&request_key).unwrap();

    // source and target share the GMK (same group), not the master keys
    let src = LocalKeyProvider::create(&tmp.path().join("d1"), SystemRandom::shared()).unwrap();
    let dst = LocalKeyProvider::create_joining(
        &tmp.path().join("d2"),
        &tmp.path().join("d1"),
        SystemRandom::shared(),
    )
    .unwrap();
    let ctx = WrapContext::new("d1->d2", "response-42").with_diversifier(D0);
    let repmk = RepMk::generate(&rng).unwrap();
    let sealed = double_wrap_repmk(
        &repmk,
        &src.derive_wrap_key(D0).await.unwrap(),
        &ctx,
        &serde_json::from_str(&request_json).unwrap(),
        &rng,
    )
    .unwrap();
    let response_json = serde_json::to_string(&sealed).unwrap();

    let sealed = serde_json::from_str(&response_json).unwrap();
    let customer = X25519CustomerKey::open(&tmp.path().join("cust/x25519.key")).unwrap();
    let back = double_unwrap_repmk(
        &sealed,
        &customer,
        &dst.derive_wrap_key(D0).await.unwrap(),
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(back.id(), repmk.id());
    // the customer key alone is not enough: the GMK layer still binds the context
    let wrong_ctx = WrapContext::new("d1->d2", "response-43").with_diversifier(D0);
    assert!(
        double_unwrap_repmk(
            &sealed,
            &customer,
            &dst.derive_wrap_key(D0).await.unwrap(),
            &wrong_ctx
        )
        .await
        .is_err()
    );
}
