//! Revocation: effective at once on the replica that took it, and within 1 s on another replica
//! (PostgreSQL, two broker processes).

mod governance_support;

use governance_support::*;
use std::time::{Duration, Instant};
use tollgate_testkit::mock::{self, MockConfig};

async fn status(c: &reqwest::Client, broker: &str, token: &str) -> u16 {
    c.get(format!("{broker}/v1/tollgate/usage"))
        .bearer_auth(token)
        .send()
        .await
        .expect("usage")
        .status()
        .as_u16()
}

async fn revoke(c: &reqwest::Client, broker: &str, key: &str, body: serde_json::Value) -> u16 {
    c.post(format!("{broker}/admin/v1/revoke"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("revoke")
        .status()
        .as_u16()
}

/// Poll `broker` until `token` is refused; the time it took.
async fn until_refused(c: &reqwest::Client, broker: &str, token: &str) -> Duration {
    let t0 = Instant::now();
    while status(c, broker, token).await != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "never refused on the other replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_revocation_reaches_second_replica_within_1s() {
    let upstream = mock::spawn(MockConfig::default()).await;
    let schema = unique_schema("gov_rev");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        upstream.base_url().trim_end_matches("/v1"),
        &["alice", "carol"],
        &store_toml(Some(&schema), 30),
    );
    let a = Broker::start(&cfg, "a").await;
    let b = Broker::start(&cfg, "b").await;
    let c = client();
    let (t1, _) = mint(&c, &a.url, "alice").await;
    let (t2, _) = mint(&c, &a.url, "alice").await;
    let (carol, _) = mint(&c, &b.url, "carol").await;
    for url in [&a.url, &b.url] {
        assert_eq!(status(&c, url, &t1).await, 200);
        assert_eq!(status(&c, url, &t2).await, 200);
    }

    // The admin key is required.
    let claims1 = {
        let (_, claims) = mint(&c, &a.url, "alice").await;
        claims
    };
    assert_eq!(
        revoke(
            &c,
            &a.url,
            "wrong-key",
            serde_json::json!({"principal": "alice"})
        )
        .await,
        401
    );
    assert_eq!(
        revoke(
            &c,
            &a.url,
            ADMIN_KEY,
            serde_json::json!({"jti": "x", "principal": "y"})
        )
        .await,
        400
    );
    let _ = claims1;

    // One token by jti.
    let jti = {
        use base64::Engine;
        let payload = t1.split('.').nth(1).expect("jwt");
        let v: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("b64"),
        )
        .expect("json");
        v["jti"].as_str().expect("jti").to_string()
    };
    assert_eq!(
        revoke(&c, &a.url, ADMIN_KEY, serde_json::json!({"jti": jti})).await,
        200
    );
    assert_eq!(
        status(&c, &a.url, &t1).await,
        401,
        "effective at once on the replica that took it"
    );
    let seen = until_refused(&c, &b.url, &t1).await;
    eprintln!("jti revocation seen by the second replica after {seen:?}");
    assert!(seen < Duration::from_secs(1), "took {seen:?}");
    assert_eq!(
        status(&c, &b.url, &t2).await,
        200,
        "other tokens of the principal still work"
    );

    // A whole principal (every token issued before now).
    assert_eq!(
        revoke(
            &c,
            &b.url,
            ADMIN_KEY,
            serde_json::json!({"principal": "alice"})
        )
        .await,
        200
    );
    assert_eq!(status(&c, &b.url, &t2).await, 401);
    let seen = until_refused(&c, &a.url, &t2).await;
    eprintln!("principal revocation seen by the other replica after {seen:?}");
    assert!(seen < Duration::from_secs(1), "took {seen:?}");
    assert_eq!(
        status(&c, &a.url, &carol).await,
        200,
        "other principals unaffected"
    );
    drop((a, b));
    upstream.shutdown().await;
    drop_schema(&schema).await;
}
