//! A full settlement queue, seen from the client (issue 17, "Unbounded queues"): the store stops taking
//! settlement writes (a test-owned transaction holds `spend` locked, so the writer's batch waits, as it would
//! on a store that hangs), finished requests pile up in the queue of `[accounting]
//! settlement_queue_capacity` (3 here), and the next request is refused before admission with the exact
//! 503 a client gets (OpenAI-shaped error, `Retry-After`) while `tollgate_settlement_queue` shows the depth.
//! Once the store is back, every request that was served is in `spend` and the budget counter agrees.

mod governance_support;

use governance_support::*;
use std::time::Duration;
use tollgate_testkit::mock::{self, MockConfig};

const CAPACITY: i64 = 3;

async fn queue_depth(c: &reqwest::Client, broker: &str) -> i64 {
    let text = c
        .get(format!("{broker}/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("tollgate_settlement_queue "))
        .map(|v| v.trim().parse::<f64>().expect("number") as i64)
        .unwrap_or_else(|| panic!("no tollgate_settlement_queue in {text}"))
}

/// Wait until some session waits for a lock on this schema's `spend` (the settlement writer's batch).
async fn wait_for_blocked_writer(pool: &sqlx::PgPool, schema: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = to_regclass($1)",
        )
        .bind(format!("{schema}.spend"))
        .fetch_one(pool)
        .await
        .expect("pg_locks");
        if waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the settlement writer never waited on the locked spend table"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_settlement_queue_refuses_with_503_and_loses_nothing_served() {
    let upstream = mock::spawn(MockConfig {
        input_tokens: Some(100),
        output_tokens: Some(10),
        ..MockConfig::default()
    })
    .await;
    let schema = unique_schema("backlog");
    let dir = tempfile::tempdir().expect("tmp");
    let extra = format!(
        "{}[accounting]\nsettlement_queue_capacity = {CAPACITY}\n\
         [pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"10\"\noutput = \"50\"\n\
         [[budgets]]\nid = \"alice\"\nscope = \"principal\"\namount_usd = \"100\"\nwindow = \"lifetime\"\n",
        store_toml(Some(&schema), 30)
    );
    let cfg = write_config(
        dir.path(),
        upstream.base_url().trim_end_matches("/v1"),
        &["alice"],
        &extra,
    );
    let broker = Broker::start(&cfg, "broker").await;
    let c = client();
    let (token, _) = mint(&c, &broker.url, "alice").await;
    let db = Db::pg(&schema).await;
    let Db::Pg(pool) = db.clone_pool() else {
        unreachable!()
    };

    // The store works: the first request settles (and grows the allotment, so admission stays in memory).
    let (s, body) = stream(&c, &broker.url, &token, "gpt-test", "hello", Some(10)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(db.wait_spend("alice", 1, Duration::from_secs(10)).await, 1);
    assert_eq!(queue_depth(&c, &broker.url).await, 0);

    // The store stops taking settlements: `spend` is locked by a transaction of ours.
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE spend IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");

    // One more request is served; the writer takes it (alone) and its batch blocks on the lock. Waiting for
    // that wait to show in `pg_locks` makes the count below exact: without it, a second request finishing
    // inside the writer's linger would join the blocked batch.
    let (s, body) = stream(&c, &broker.url, &token, "gpt-test", "hello", Some(10)).await;
    assert_eq!(s, 200, "{body}");
    let mut served = 2;
    wait_for_blocked_writer(&pool, &schema).await;

    let refused = loop {
        let r = c
            .post(format!("{}/v1/responses", broker.url))
            .bearer_auth(&token)
            .json(&serde_json::json!({"model": "gpt-test", "stream": true, "input": "hello", "max_output_tokens": 10}))
            .send()
            .await
            .expect("send");
        if r.status() != 200 {
            break r;
        }
        r.text().await.expect("stream");
        served += 1;
        assert!(
            served <= 20,
            "the queue of capacity {CAPACITY} never filled"
        );
    };
    // One batch is held by the blocked writer; the queue behind it holds the capacity.
    assert_eq!(served, 1 + 1 + CAPACITY, "served before the queue was full");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(refused.headers()["content-type"], "application/json");
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({"error": {
            "message": "Tollgate: the spend of earlier requests cannot be recorded right now (the governance store is failing), so new requests are refused until it catches up; retry in 5 s.",
            "type": "server_error",
            "param": null,
            "code": "store_unavailable"
        }})
    );
    assert_eq!(queue_depth(&c, &broker.url).await, CAPACITY);
    // Still refusing while the store is away; nothing was upstream for the refused requests.
    let upstream_before = upstream.requests().len();
    for _ in 0..3 {
        let (s, _) = stream(&c, &broker.url, &token, "gpt-test", "hello", Some(10)).await;
        assert_eq!(s, 503);
    }
    assert_eq!(upstream.requests().len(), upstream_before);
    assert_eq!(db.spend("alice").await.0, 1, "nothing stored while locked");

    // The store is back: every request served is stored, the counter is Σ spend, admission resumes.
    lock.rollback().await.expect("unlock");
    assert_eq!(
        db.wait_spend("alice", served, Duration::from_secs(20))
            .await,
        served,
        "nothing served is lost"
    );
    let (n, cost, ..) = db.spend("alice").await;
    assert_eq!(n, served);
    assert_eq!(cost, served * (100 * 10_000 + 10 * 50_000));
    assert_eq!(db.counter("alice").await.0, cost);
    assert_eq!(queue_depth(&c, &broker.url).await, 0);
    let (s, body) = stream(&c, &broker.url, &token, "gpt-test", "hello", Some(10)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        db.wait_spend("alice", served + 1, Duration::from_secs(10))
            .await,
        served + 1
    );
    broker.terminate().await;
    upstream.shutdown().await;
    drop_schema(&schema).await;
}
