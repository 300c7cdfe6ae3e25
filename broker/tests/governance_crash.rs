//! `kill -9` of a broker under load, then restart: no settled spend is lost, the killed broker's
//! allotments (its pool reservation, backing the requests it had in flight) expire with their lease (3 s
//! here) instead of pinning the budget, and the requests it had in flight — which the provider bills — are
//! charged their reserved estimate once (by one replica), marked `estimated` in spend, reports and audit.
//! The requests in flight come through every ingress (Responses, Chat Completions, Anthropic Messages), each
//! with its own output-limit field, so each is charged the reservation its own limit sized.

mod governance_support;

use governance_support::*;
use std::time::{Duration, Instant};
use tollgate_testkit::mock::{self, MockConfig};

const LEASE_SECS: u64 = 3;

/// The ingresses of the requests in flight: path, the output-limit field and its value (distinct per
/// ingress, so the charged rows tell them apart), and the streaming body.
const INGRESSES: [(&str, &str, u64); 3] = [
    ("/v1/responses", "max_output_tokens", 10),
    ("/v1/chat/completions", "max_completion_tokens", 7),
    ("/v1/messages", "max_tokens", 5),
];
/// Requests in flight per ingress at the kill.
const PER_INGRESS: usize = 10;

fn inflight_body(path: &str, field: &str, limit: u64) -> serde_json::Value {
    let mut body = match path {
        "/v1/responses" => {
            serde_json::json!({"model": "gpt-test", "stream": true, "input": "slow"})
        }
        "/v1/chat/completions" => serde_json::json!({"model": "gpt-test", "stream": true,
            "messages": [{"role": "user", "content": "slow"}]}),
        _ => serde_json::json!({"model": "gpt-test", "stream": true,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "slow"}]}]}),
    };
    body[field] = limit.into();
    body
}

/// A streaming request through one ingress (the token as each client sends it); (status, body).
async fn post_inflight(
    c: &reqwest::Client,
    broker: &str,
    token: &str,
    (path, field, limit): (&str, &str, u64),
) -> (u16, String) {
    let mut req = c
        .post(format!("{broker}{path}"))
        .json(&inflight_body(path, field, limit));
    req = if path == "/v1/messages" {
        req.header("x-api-key", token)
            .header("anthropic-version", "2023-06-01")
    } else {
        req.bearer_auth(token)
    };
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn scenario(pg_schema: Option<&str>) {
    let upstream = mock::spawn(MockConfig {
        input_tokens: Some(100),
        output_tokens: Some(10),
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let extra = format!(
        "{}[pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"10\"\noutput = \"50\"\n\
         [[budgets]]\nid = \"alice\"\nscope = \"principal\"\namount_usd = \"100\"\nwindow = \"lifetime\"\n",
        store_toml(pg_schema, LEASE_SECS)
    );
    let cfg = write_config(
        dir.path(),
        upstream.base_url().trim_end_matches("/v1"),
        &["alice"],
        &extra,
    );
    let db = match pg_schema {
        Some(s) => {
            let b = Broker::start(&cfg, "first").await;
            drop(b);
            Db::pg(s).await
        }
        None => {
            let b = Broker::start(&cfg, "first").await;
            drop(b);
            Db::sqlite(&dir.path().join("state/governance.db")).await
        }
    };
    let mut broker = Broker::start(&cfg, "broker").await;
    let c = client();
    let (token, _) = mint(&c, &broker.url, "alice").await;

    // 20 requests that complete and settle.
    for _ in 0..20 {
        let (s, body) = stream(&c, &broker.url, &token, "gpt-test", "hello", Some(10)).await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(
        db.wait_spend("alice", 20, Duration::from_secs(10)).await,
        20
    );
    let (spent_before, _) = db.counter("alice").await;
    let (n_before, cost_before, ..) = db.spend("alice").await;
    assert_eq!(n_before, 20);
    assert_eq!(spent_before, cost_before);
    assert_eq!(spent_before, 20 * (100 * 10_000 + 10 * 50_000));

    // 30 slow requests in flight, 10 through each ingress, then SIGKILL.
    upstream.set_latency_ms(30_000);
    let mut inflight = Vec::new();
    for ingress in INGRESSES {
        for _ in 0..PER_INGRESS {
            let c = c.clone();
            let (url, token) = (broker.url.clone(), token.clone());
            inflight.push(tokio::spawn(async move {
                post_inflight(&c, &url, &token, ingress).await
            }));
        }
    }
    upstream
        .wait_for_requests(20 + 30, Duration::from_secs(20))
        .await;
    let (_, reserved) = db.counter("alice").await;
    assert!(
        reserved > 0,
        "the in-flight requests are backed by reserved budget"
    );
    // The broker's next background round records them in the store (off the request path).
    assert_eq!(
        db.wait_inflight(30, Duration::from_secs(10)).await,
        30,
        "the requests in flight are known to the store"
    );
    assert_eq!(
        reserved,
        db.pool_held("alice").await,
        "everything reserved is the broker's allotment"
    );
    assert_eq!(db.live_reservations().await, 1, "one pool per broker");
    broker.guard.kill_group();
    let _ = broker.guard.wait_timeout(Duration::from_secs(5)).await;
    for t in inflight {
        let (s, _) = t.await.expect("task");
        assert_ne!(s, 200, "a killed broker cannot have completed a stream");
    }
    upstream.set_latency_ms(0);

    // Settled spend survived the crash.
    let (spent_after_kill, reserved_after_kill) = db.counter("alice").await;
    assert_eq!(spent_after_kill, spent_before);
    assert_eq!(reserved_after_kill, reserved);

    // Restart (on PostgreSQL two replicas, both expiring leases): the dead broker's reservations expire
    // with their lease, and its 30 requests in flight are charged their estimate, once.
    let t0 = Instant::now();
    let broker2 = Broker::start(&cfg, "restarted").await;
    let broker3 = match pg_schema {
        Some(_) => Some(Broker::start(&cfg, "replica").await),
        None => None,
    };
    assert_eq!(
        db.wait_spend("alice", 50, Duration::from_secs(6 * LEASE_SECS))
            .await,
        50,
        "every request in flight at the kill is charged"
    );
    let (spent, reserved) = db
        .wait_settled("alice", Duration::from_secs(4 * LEASE_SECS))
        .await;
    eprintln!(
        "stale reservations released and requests in flight charged {:?} after restart",
        t0.elapsed()
    );
    assert_eq!(reserved, 0, "stale reservations must expire");
    assert_eq!(db.live_reservations().await, 0);
    assert_eq!(db.wait_inflight(0, Duration::from_secs(1)).await, 0);
    let rows = db.spend_rows("alice").await;
    let estimated: Vec<_> = rows.iter().filter(|r| r.1 == "estimated").collect();
    assert_eq!(estimated.len(), 30, "{rows:?}");
    // Each is charged exactly its reservation: the input estimate (the forwarded body's bytes / 3) at
    // $10/M, the output reserve (its own ingress's limit field) at $50/M, and the 3 n$ rounding pad.
    for (usage_reported, _, input, output, cost, reserved) in &estimated {
        assert_eq!(*usage_reported, 0);
        assert_eq!(*cost, *reserved, "charged exactly what was reserved");
        assert_eq!(*cost, input * 10_000 + output * 50_000 + 3);
    }
    for (path, field, limit) in INGRESSES {
        let n = estimated.iter().filter(|r| r.3 == limit as i64).count();
        assert_eq!(n, PER_INGRESS, "{path} with {field} = {limit}: {rows:?}");
    }
    // The Responses body is forwarded as sent: its input estimate is known exactly.
    let body_len = serde_json::to_vec(&inflight_body(
        INGRESSES[0].0,
        INGRESSES[0].1,
        INGRESSES[0].2,
    ))
    .expect("json")
    .len() as i64;
    assert!(
        estimated
            .iter()
            .filter(|r| r.3 == 10)
            .all(|r| r.2 == (body_len + 2) / 3),
        "{rows:?}"
    );
    let estimates: i64 = estimated.iter().map(|r| r.4).sum();
    assert_eq!(
        spent,
        spent_before + estimates,
        "no settled spend lost, and the requests in flight charged once"
    );
    let (_, cost_all, ..) = db.spend("alice").await;
    assert_eq!(spent, cost_all, "the budget counter is Σ spend");
    // In the spend report (from the store, whichever replica answers) and the audit trail.
    let report: serde_json::Value = c
        .get(format!("{}/admin/v1/report?by=principal", broker2.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("report")
        .json()
        .await
        .expect("json");
    assert_eq!(report["totals"]["estimated_requests"], 30, "{report}");
    assert_eq!(
        report["totals"]["estimated_cost_nanos"], estimates,
        "{report}"
    );
    assert_eq!(report["totals"]["cost_nanos"], spent, "{report}");
    let audit = match pg_schema {
        Some(_) => db.clone_pool(),
        None => Db::sqlite(&dir.path().join("state/audit.sqlite")).await,
    };
    assert_eq!(
        audit
            .wait_count(
                "SELECT COUNT(*) FROM audit_log WHERE kind = 'request' AND detail LIKE '%\"end\":\"estimated\"%'",
                30,
                Duration::from_secs(10)
            )
            .await,
        30,
        "one audit record per request charged its estimate"
    );

    // The restarted broker still verifies the token (keys are in the store) and settles new requests.
    let (s, body) = stream(&c, &broker2.url, &token, "gpt-test", "again", Some(10)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        db.wait_spend("alice", 51, Duration::from_secs(10)).await,
        51
    );
    let (spent, _) = db.counter("alice").await;
    assert_eq!(spent, 21 * (100 * 10_000 + 10 * 50_000) + estimates);
    // A graceful stop gives the allotment back.
    broker2.terminate().await;
    if let Some(b) = broker3 {
        b.terminate().await;
    }
    assert_eq!(db.counter("alice").await, (spent, 0));
    assert_eq!(db.live_reservations().await, 0);
    upstream.shutdown().await;
    if let Some(s) = pg_schema {
        drop_schema(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_kill9_sqlite() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_kill9_postgres() {
    scenario(Some(&unique_schema("gov_kill"))).await;
}

/// The store goes away (its schema is dropped under the broker): requests the broker's allotment already
/// backs are served; the first one that needs to grow the allotment fails closed with 503 and the log says
/// so; with `on_unavailable = "allow"` requests go through instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_store_down_fails_closed() {
    let upstream = mock::spawn(MockConfig::default()).await;
    let c = client();
    for (mode, want) in [("refuse", 503u16), ("allow", 200u16)] {
        let schema = unique_schema("gov_down");
        let dir = tempfile::tempdir().expect("tmp");
        let extra = format!(
            "{}on_unavailable = \"{mode}\"\n[pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"1\"\n\
             [[budgets]]\nid = \"p\"\nscope = \"principal\"\namount_usd = \"100\"\nwindow = \"daily\"\n",
            store_toml(Some(&schema), 30)
        );
        let cfg = write_config(
            dir.path(),
            upstream.base_url().trim_end_matches("/v1"),
            &["alice"],
            &extra,
        );
        let broker = Broker::start(&cfg, "broker").await;
        let (token, _) = mint(&c, &broker.url, "alice").await;
        assert_eq!(
            stream(&c, &broker.url, &token, "gpt-test", "hi", None)
                .await
                .0,
            200
        );
        let Db::Pg(pool) = Db::pg(&schema).await else {
            unreachable!()
        };
        // The broker's background work (lease renewal, key polling) touches the same tables, so the drop
        // can lose a deadlock to it: PostgreSQL aborts one side, and we simply try again.
        let mut dropped = Err(String::new());
        for _ in 0..10 {
            dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{schema}\" CASCADE"
            )))
            .execute(&pool)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
            if dropped.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        dropped.expect("drop schema");
        // The allotment grown by the first request covers some more (each settles from it, and it is
        // not given back while the store is away); at most 1 + 16 estimates of them.
        let mut last = (0u16, String::new());
        for _ in 0..40 {
            last = stream(&c, &broker.url, &token, "gpt-test", "hi", None).await;
            if last.0 != 200 {
                break;
            }
        }
        let (s, body) = last;
        assert_eq!(s, want, "{mode}: {body}");
        if want == 503 {
            assert!(body.contains("store_unavailable"), "{body}");
        }
        let log = std::fs::read_to_string(dir.path().join("broker.log")).expect("log");
        assert!(log.contains("governance store unavailable"), "{log}");
    }
    upstream.shutdown().await;
}
