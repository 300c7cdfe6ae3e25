//! Rate limits shared through Redis (127.0.0.1:6379): two broker processes count one principal's requests
//! in one bucket; a refusal is 429 with Retry-After. Without a reachable Redis the broker falls back to its
//! own in-process limiter.

mod governance_support;

use governance_support::*;
use tollgate_testkit::mock::{self, MockConfig};

async fn post(c: &reqwest::Client, broker: &str, token: &str) -> (u16, Option<u64>) {
    let r = c
        .post(format!("{broker}/v1/responses"))
        .bearer_auth(token)
        .json(&serde_json::json!({"model": "gpt-test", "input": "x"}))
        .send()
        .await
        .expect("send");
    let ra = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (r.status().as_u16(), ra)
}

fn extra(redis: &str, prefix: &str) -> String {
    format!(
        "[pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"1\"\n\
         [limits]\nrequests_per_minute = 4\nredis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_rate_limit_shared_across_replicas_via_redis() {
    let upstream = mock::spawn(MockConfig::default()).await;
    let base = upstream.base_url();
    let base = base.trim_end_matches("/v1");
    let prefix = format!("tollgate-test:{}:", uuid::Uuid::new_v4().simple());
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let a = Broker::start(
        &write_config(
            da.path(),
            base,
            &["alice"],
            &extra("redis://127.0.0.1:6379", &prefix),
        ),
        "a",
    )
    .await;
    let b = Broker::start(
        &write_config(
            db.path(),
            base,
            &["alice"],
            &extra("redis://127.0.0.1:6379", &prefix),
        ),
        "b",
    )
    .await;
    let c = client();
    let (ta, _) = mint(&c, &a.url, "alice").await;
    let (tb, _) = mint(&c, &b.url, "alice").await;
    // A burst of 4 per minute, shared: two here, two there.
    for (url, t) in [(&a.url, &ta), (&b.url, &tb), (&a.url, &ta), (&b.url, &tb)] {
        assert_eq!(post(&c, url, t).await.0, 200);
    }
    for (url, t) in [(&a.url, &ta), (&b.url, &tb)] {
        let (s, ra) = post(&c, url, t).await;
        assert_eq!(s, 429, "the shared bucket is empty on every replica");
        let ra = ra.expect("Retry-After");
        assert!((1..=15).contains(&ra), "retry-after {ra}");
    }
    assert!(
        !std::fs::read_to_string(da.path().join("a.log"))
            .expect("log")
            .contains("redis unavailable")
    );

    // No Redis at that address: each broker limits on its own.
    let dc = tempfile::tempdir().expect("tmp");
    let solo = Broker::start(
        &write_config(
            dc.path(),
            base,
            &["alice"],
            &extra("redis://127.0.0.1:1", &prefix),
        ),
        "c",
    )
    .await;
    let (tc, _) = mint(&c, &solo.url, "alice").await;
    for _ in 0..4 {
        assert_eq!(post(&c, &solo.url, &tc).await.0, 200);
    }
    assert_eq!(post(&c, &solo.url, &tc).await.0, 429);
    assert!(
        std::fs::read_to_string(dc.path().join("c.log"))
            .expect("log")
            .contains("redis unavailable")
    );
    upstream.shutdown().await;
}
