//! 200 concurrent streaming requests against one budget, slow mock upstream: settled spend stays within the
//! documented bound (docs/governance.md) and equals Σ reported usage × price. On SQLite (one broker) and on
//! PostgreSQL (three broker processes sharing the budget and the signing keys).

mod governance_support;

use governance_support::*;
use std::time::{Duration, Instant};
use tollgate_testkit::mock::{self, Fault, MockConfig};

/// Prices: input $10/Mtok = 10_000 n$/token, output $50/Mtok = 50_000 n$/token.
const IN_NANOS: i64 = 10_000;
const OUT_NANOS: i64 = 50_000;
/// The mock reports exactly this usage on every answer.
const IN_TOKENS: u64 = 1000;
const OUT_TOKENS: u64 = 200;
const BUDGET_USD: &str = "1.00";
const BUDGET_NANOS: i64 = 1_000_000_000;
const N: usize = 200;
/// Output reserve cap in config. Phase 1 asks for max_output_tokens = 200 (reserve 200, exact); phase 2
/// sets none (reserve = the cap) while the mock produces 400, so each request under-reserves by
/// (400 − 256) × 50_000 n$ — the excess the bound accounts for.
const CAP: u64 = 256;
const OUT2_TOKENS: u64 = 400;

fn extra(store: &str) -> String {
    format!(
        "{store}\
         [pricing]\ndefaults = false\noutput_reserve_cap_tokens = {CAP}\n\
         [pricing.models.\"gpt-test\"]\ninput = \"10\"\noutput = \"50\"\n\
         [[budgets]]\nid = \"exact\"\nscope = \"principal\"\nmatch = \"alice\"\namount_usd = \"{BUDGET_USD}\"\nwindow = \"daily\"\n\
         [[budgets]]\nid = \"capped\"\nscope = \"principal\"\nmatch = \"bob\"\namount_usd = \"{BUDGET_USD}\"\nwindow = \"monthly\"\n\
         [[budgets]]\nid = \"team\"\nscope = \"team\"\namount_usd = \"1000\"\nwindow = \"weekly\"\n"
    )
}

struct Run {
    ok: usize,
    refused_budget: usize,
    other: Vec<(u16, String)>,
    elapsed: Duration,
}

async fn fire(brokers: &[String], token: &str, max_out: Option<u64>) -> Run {
    let c = client();
    // ~3.3 KB of input: the bytes/3 estimate (~1100 tokens) covers the 1000 tokens the mock reports.
    let input = "word ".repeat(660);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = c.clone();
        let url = brokers[i % brokers.len()].clone();
        let token = token.to_string();
        let input = input.clone();
        tasks.push(tokio::spawn(async move {
            stream(&c, &url, &token, "gpt-test", &input, max_out).await
        }));
    }
    let mut run = Run {
        ok: 0,
        refused_budget: 0,
        other: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (status, body) = t.await.expect("task");
        if status == 200 && body.contains("response.completed") {
            run.ok += 1;
        } else if status == 400 && body.contains("budget_exceeded") {
            run.refused_budget += 1;
        } else {
            run.other.push((status, body.chars().take(300).collect()));
        }
    }
    run.elapsed = started.elapsed();
    run
}

async fn scenario(pg_schema: Option<&str>, replicas: usize) {
    let upstream = mock::spawn(MockConfig {
        latency_ms: 400,
        input_tokens: Some(IN_TOKENS),
        output_tokens: Some(OUT_TOKENS),
        ..MockConfig::default()
    })
    .await;
    // Slow streams too: every answer spaces its SSE events 30 ms apart.
    upstream.push_faults((0..2 * N).map(|_| Fault::event_delay_ms(30)));
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        upstream.base_url().trim_end_matches("/v1"),
        &["alice", "bob"],
        &extra(&store_toml(pg_schema, 30)),
    );
    let mut brokers = Vec::new();
    for i in 0..replicas {
        brokers.push(Broker::start(&cfg, &format!("broker{i}")).await);
    }
    let urls: Vec<String> = brokers.iter().map(|b| b.url.clone()).collect();
    let c = client();
    // Minted on replica 0, used on every replica: the signing keys are shared through the store.
    let (alice, _) = mint(&c, &urls[0], "alice").await;
    let (bob, _) = mint(&c, &urls[0], "bob").await;
    let db = match pg_schema {
        Some(s) => Db::pg(s).await,
        None => Db::sqlite(&dir.path().join("state/governance.db")).await,
    };

    // Phase 1: max_output_tokens = 200 ≥ real output, input estimate ≥ real input: the reservation covers
    // every request, so the bound is exactly the budget.
    let r1 = fire(&urls, &alice, Some(OUT_TOKENS)).await;
    db.wait_spend("alice", r1.ok as i64, Duration::from_secs(20))
        .await;
    let (spent1, reserved1) = db.counter("exact").await;
    // Settled: what is still reserved is only the brokers' free allotments (nothing in flight).
    let reserved1 = reserved1 - db.pool_held("exact").await;
    let (n1, cost1, excess1, in1, out1) = db.spend("alice").await;
    let per_request = IN_TOKENS as i64 * IN_NANOS + OUT_TOKENS as i64 * OUT_NANOS;
    eprintln!(
        "[{}] exact: {} ok, {} refused for budget, other {:?}; spent {} of {} n$, reserved {}, {:?}",
        pg_schema.unwrap_or("sqlite"),
        r1.ok,
        r1.refused_budget,
        r1.other,
        spent1,
        BUDGET_NANOS,
        reserved1,
        r1.elapsed
    );
    assert!(r1.other.is_empty(), "unexpected answers: {:?}", r1.other);
    assert_eq!(r1.ok + r1.refused_budget, N);
    assert!(
        r1.refused_budget > 0,
        "the budget must have refused some of the {N} requests"
    );
    assert_eq!(reserved1, 0, "every reservation settled or released");
    assert_eq!(excess1, 0, "no request cost more than it reserved");
    assert!(
        spent1 <= BUDGET_NANOS,
        "spent {spent1} > budget {BUDGET_NANOS}"
    );
    assert_eq!(n1 as usize, r1.ok);
    assert_eq!(spent1, cost1, "counter == Σ recorded spend");
    assert_eq!(
        cost1,
        r1.ok as i64 * per_request,
        "recorded spend == Σ usage × price"
    );
    assert_eq!(
        (in1, out1),
        (
            r1.ok as i64 * IN_TOKENS as i64,
            r1.ok as i64 * OUT_TOKENS as i64
        )
    );

    // Phase 2: no max_output_tokens, so the reserve is the cap (256) while the upstream really produces 400:
    // each request can overspend by (400 − 256) × 50_000 n$. Bound: Σ over the requests in flight at the
    // last admission of (cost − reserved)⁺ ≤ N × 7_200_000 n$.
    upstream.update_config(|c| c.output_tokens = Some(OUT2_TOKENS));
    let per_request2 = IN_TOKENS as i64 * IN_NANOS + OUT2_TOKENS as i64 * OUT_NANOS;
    let r2 = fire(&urls, &bob, None).await;
    db.wait_spend("bob", r2.ok as i64, Duration::from_secs(20))
        .await;
    let (spent2, reserved2) = db.counter("capped").await;
    let reserved2 = reserved2 - db.pool_held("capped").await;
    let (n2, cost2, excess2, ..) = db.spend("bob").await;
    let per_request_excess = (OUT2_TOKENS - CAP) as i64 * OUT_NANOS;
    eprintln!(
        "[{}] capped: {} ok, {} refused, other {:?}; spent {} of {} n$ (overspend {} ≤ Σ excess {} ≤ {}), {:?}",
        pg_schema.unwrap_or("sqlite"),
        r2.ok,
        r2.refused_budget,
        r2.other,
        spent2,
        BUDGET_NANOS,
        spent2 - BUDGET_NANOS,
        excess2,
        N as i64 * per_request_excess,
        r2.elapsed
    );
    assert!(r2.other.is_empty(), "unexpected answers: {:?}", r2.other);
    assert!(r2.refused_budget > 0);
    assert_eq!(reserved2, 0);
    assert_eq!(n2 as usize, r2.ok);
    assert_eq!(spent2, cost2);
    assert_eq!(cost2, r2.ok as i64 * per_request2);
    assert!(excess2 > 0 && excess2 <= r2.ok as i64 * per_request_excess);
    assert!(
        spent2 <= BUDGET_NANOS + excess2,
        "spent {spent2} beyond budget + Σ excess {excess2}"
    );
    assert!(spent2 <= BUDGET_NANOS + N as i64 * per_request_excess);

    // Σ reported usage at the mock × price == everything recorded.
    let rep = upstream.total_reported_usage();
    assert_eq!(
        rep.input_tokens as i64 * IN_NANOS + rep.output_tokens as i64 * OUT_NANOS,
        cost1 + cost2
    );
    // The team budget saw both principals' spend.
    let (team_spent, _) = db.counter("team").await;
    assert_eq!(team_spent, cost1 + cost2);
    // Graceful stops give every allotment back: nothing stays reserved.
    for b in brokers {
        b.terminate().await;
    }
    for budget in ["exact", "capped", "team"] {
        assert_eq!(
            db.counter(budget).await.1,
            0,
            "{budget}: reserved after stop"
        );
    }
    assert_eq!(db.live_reservations().await, 0);
    upstream.shutdown().await;
    if let Some(s) = pg_schema {
        drop_schema(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn governance_200_concurrent_sqlite() {
    scenario(None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn governance_200_concurrent_postgres_three_brokers() {
    let schema = unique_schema("gov_conc");
    scenario(Some(&schema), 3).await;
}
