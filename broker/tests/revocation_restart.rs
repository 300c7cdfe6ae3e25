//! Revocation survives a restart (issue 17): a restarted replica refuses tokens revoked before it started
//! from its very first request (revocations are loaded before the listener accepts), a token minted in the
//! same second as a principal revocation — but after it — works, and replicas sharing a store must share
//! their issuer (`public_url`).

mod governance_support;

use governance_support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source, StoreConfig, StoreKind};
use tollgate_broker::governance::Governance;
use tollgate_broker::governance::store::{self, RevocationKind, Store, StoreError};
use tollgate_testkit::mock::{self, MockConfig};

async fn revoke(c: &reqwest::Client, broker: &str, body: serde_json::Value) {
    let r = c
        .post(format!("{broker}/admin/v1/revoke"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

async fn usage_status(c: &reqwest::Client, broker: &str, token: &str) -> u16 {
    match c
        .get(format!("{broker}/v1/tollgate/usage"))
        .bearer_auth(token)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn proxied_status(c: &reqwest::Client, broker: &str, token: &str) -> u16 {
    match c
        .post(format!("{broker}/v1/responses"))
        .bearer_auth(token)
        .json(&serde_json::json!({"model": "gpt-test", "input": "hi", "stream": false, "max_output_tokens": 16}))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Counts of answers to the revoked tokens (must stay 0 for 2xx) and to the good one.
#[derive(Default)]
struct Tally {
    revoked_accepted: AtomicU64,
    revoked_refused: AtomicU64,
    good_accepted: AtomicU64,
}

/// Hammer `broker` with `revoked` tokens and the `good` one from `workers` tasks until `stop`.
fn load(
    c: &reqwest::Client,
    broker: String,
    revoked: Vec<String>,
    good: String,
    workers: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (c, broker, revoked, good, stop, tally) = (
                c.clone(),
                broker.clone(),
                revoked.clone(),
                good.clone(),
                stop.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let t = &revoked[i % revoked.len()];
                    let s = if i % 2 == 0 {
                        usage_status(&c, &broker, t).await
                    } else {
                        proxied_status(&c, &broker, t).await
                    };
                    if (200..300).contains(&s) {
                        tally.revoked_accepted.fetch_add(1, Ordering::Relaxed);
                    } else if s == 401 {
                        tally.revoked_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    if i % 4 == 0 && proxied_status(&c, &broker, &good).await == 200 {
                        tally.good_accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

/// Revoke a token (by jti) and a principal, restart the replica under load, and count: not one request
/// with a revoked token may be accepted by the restarted replica (whose revocation poll is a minute away),
/// nor by the replica that stays up.
async fn restart_under_load(pg_schema: Option<&str>) {
    let upstream = mock::spawn(MockConfig::default()).await;
    let mock_base = upstream.base_url().trim_end_matches("/v1").to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("a");
    std::fs::create_dir_all(&db).expect("b");
    // Replica A polls revocations once a minute: only loading them at start can protect it.
    let store = store_toml(pg_schema, 30);
    let pricing = "[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"2\"\n";
    let cfg_a = write_config(
        &da,
        &mock_base,
        &["alice", "bob", "carol", "dave"],
        &format!("{store}poll_interval_ms = 60000\n{pricing}"),
    );
    let a = Broker::start(&cfg_a, "a").await;
    let b = match pg_schema {
        Some(_) => {
            let cfg_b = write_config(
                &db,
                &mock_base,
                &["alice", "bob", "carol"],
                &format!("{store}{pricing}"),
            );
            Some(Broker::start(&cfg_b, "b").await)
        }
        None => None,
    };
    let c = client();
    let (t_alice, claims_alice) = mint(&c, &a.url, "alice").await;
    let (t_bob, _) = mint(&c, &a.url, "bob").await;
    let (t_carol, _) = mint(&c, &a.url, "carol").await;
    revoke(&c, &a.url, serde_json::json!({"jti": claims_alice["jti"]})).await;
    revoke(&c, &a.url, serde_json::json!({"principal": "bob"})).await;
    let revoked = vec![t_alice.clone(), t_bob.clone()];
    for t in &revoked {
        assert_eq!(usage_status(&c, &a.url, t).await, 401);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tally_b = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    if let Some(b) = &b {
        // B learns the revocations by polling (250 ms), then stays under load across A's restart.
        let t0 = tokio::time::Instant::now();
        while usage_status(&c, &b.url, &t_bob).await != 401
            || usage_status(&c, &b.url, &t_alice).await != 401
        {
            assert!(t0.elapsed() < Duration::from_secs(5), "B never saw them");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tasks.extend(load(
            &c,
            b.url.clone(),
            revoked.clone(),
            t_carol.clone(),
            4,
            stop.clone(),
            tally_b.clone(),
        ));
    }

    a.terminate().await;
    let a2 = Broker::start(&cfg_a, "a2").await;
    // From the first moment the new process answers, for 1.5 s, 8 workers.
    let tally_a = Arc::new(Tally::default());
    let stop_a = Arc::new(AtomicBool::new(false));
    let a_tasks = load(
        &c,
        a2.url.clone(),
        revoked.clone(),
        t_carol.clone(),
        8,
        stop_a.clone(),
        tally_a.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_a.store(true, Ordering::Relaxed);
    for t in a_tasks {
        t.await.expect("load");
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load");
    }
    let (acc, refused, good) = (
        tally_a.revoked_accepted.load(Ordering::Relaxed),
        tally_a.revoked_refused.load(Ordering::Relaxed),
        tally_a.good_accepted.load(Ordering::Relaxed),
    );
    eprintln!("restarted replica: revoked accepted {acc}, refused {refused}; good accepted {good}");
    assert_eq!(acc, 0, "the restarted replica accepted revoked tokens");
    assert!(
        refused > 20 && good > 0,
        "the load reached the replica: {refused} refusals, {good} good answers"
    );
    assert_eq!(
        tally_b.revoked_accepted.load(Ordering::Relaxed),
        0,
        "the replica that stayed up accepted revoked tokens"
    );

    // The restarted replica: a principal revoked now and a token minted right after it (the same second,
    // most likely) — the new token works, the old one does not.
    let (t_old, _) = mint(&c, &a2.url, "dave").await;
    revoke(&c, &a2.url, serde_json::json!({"principal": "dave"})).await;
    let (t_new, _) = mint(&c, &a2.url, "dave").await;
    assert_eq!(usage_status(&c, &a2.url, &t_old).await, 401);
    assert_eq!(
        usage_status(&c, &a2.url, &t_new).await,
        200,
        "minted after the revocation"
    );
    drop((a2, b));
    upstream.shutdown().await;
    if let Some(s) = pg_schema {
        drop_schema(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_refuses_revoked_tokens_from_its_first_request_sqlite() {
    restart_under_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_refuses_revoked_tokens_from_its_first_request_postgres() {
    let schema = unique_schema("rev_restart");
    restart_under_load(Some(&schema)).await;
}

fn config(dir: &std::path::Path) -> Config {
    Config::from_source(
        Source {
            path: dir.join("broker.toml"),
            text: "policy_file = \"p.toml\"\n".into(),
        },
        &std::collections::BTreeMap::<String, String>::new(),
    )
    .expect("config")
}

async fn open_sqlite(path: &std::path::Path) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind: StoreKind::Sqlite,
        sqlite_path: path.to_path_buf(),
        url: None,
        schema: None,
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 4,
    })
    .await
    .expect("open")
}

async fn open_pg(schema: &str) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind: StoreKind::Postgres,
        sqlite_path: "unused".into(),
        url: Some(PG_URL.to_string().into()),
        schema: Some(schema.to_string()),
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 2,
    })
    .await
    .expect("open pg")
}

fn claims(principal: &str, iat: u64, jti: &str) -> tollgate::Claims {
    serde_json::from_value(serde_json::json!({
        "iss": "i", "aud": "a", "sub": principal, "iat": iat, "nbf": iat, "exp": iat + 3600, "jti": jti,
        "tollgate": {"principal": principal, "team": "t", "models": ["*"],
                     "identity": {"kind": "static", "subject": principal, "rule": "r"}}
    }))
    .expect("claims")
}

fn new_jti() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// On a fake clock that never moves (everything in one second): a token minted before a principal
/// revocation is refused, one minted after it is accepted — here and on a replica that loads the
/// revocations at start. A revocation recorded without a cutoff (before this change) keeps refusing every
/// token issued in its second.
async fn same_second(st: Arc<dyn Store>, dir: &std::path::Path) {
    let c = config(dir);
    let clock = FakeClock::new(10_000);
    let g = Governance::with_store(
        st.clone(),
        &c,
        Arc::new(clock.clone()),
        None,
        Arc::new(tollgate_broker::metrics::Metrics::new(
            c.metrics.clone(),
            &c.routes,
        )),
    );
    let iat = 10_000 - tollgate_broker::token::SKEW_SECS;
    let before = claims("alice", iat, &new_jti());
    g.revoke(RevocationKind::Principal, "alice")
        .await
        .expect("revoke");
    let after = claims("alice", iat, &new_jti());
    assert!(g.check_revoked(&before).is_err(), "minted before");
    assert!(
        g.check_revoked(&after).is_ok(),
        "minted after the revocation, in the same second: must not be dead on arrival"
    );

    // Another replica (or this one restarted) loads the same verdicts before serving.
    let g2 = Governance::with_store(
        st.clone(),
        &c,
        Arc::new(clock.clone()),
        None,
        Arc::new(tollgate_broker::metrics::Metrics::new(
            c.metrics.clone(),
            &c.routes,
        )),
    );
    assert!(g2.check_revoked(&before).is_ok(), "nothing loaded yet");
    assert_eq!(g2.load_revocations().await.expect("load"), 1);
    assert!(g2.check_revoked(&before).is_err());
    assert!(g2.check_revoked(&after).is_ok());

    // A legacy row (no cutoff): the whole second is refused.
    st.revoke(RevocationKind::Principal, "bob", 10_000, None)
        .await
        .expect("legacy revoke");
    g2.load_revocations().await.expect("load");
    assert!(g2.check_revoked(&claims("bob", iat, &new_jti())).is_err());
    assert!(
        g2.check_revoked(&claims("bob", iat + 1, &new_jti()))
            .is_ok()
    );
}

#[tokio::test]
async fn principal_revocation_orders_tokens_within_a_second_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = open_sqlite(&dir.path().join("g.db")).await;
    same_second(st, dir.path()).await;
}

#[tokio::test]
async fn principal_revocation_orders_tokens_within_a_second_postgres() {
    let dir = tempfile::tempdir().expect("tmp");
    let schema = unique_schema("rev_order");
    let st = open_pg(&schema).await;
    same_second(st, dir.path()).await;
    drop_schema(&schema).await;
}

/// The store records the issuer; a replica with another one is refused while one with the recorded issuer
/// is alive (its liveness is renewed with the leases), and may take over once none is.
async fn issuer(st: Arc<dyn Store>) {
    let x = "https://tollgate.example";
    let y = "http://10.0.0.7:8787";
    assert_eq!(st.claim_issuer(x, 1_000, 1_030).await.expect("first"), None);
    assert_eq!(st.claim_issuer(x, 1_010, 1_040).await.expect("same"), None);
    match st.claim_issuer(y, 1_020, 1_050).await {
        Err(StoreError::IssuerMismatch {
            store_issuer,
            issuer,
            live_until,
        }) => {
            assert_eq!((store_issuer.as_str(), issuer.as_str()), (x, y));
            assert_eq!(live_until, 1_040);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // A replica with issuer X renews its leases: X stays alive.
    st.renew("owner-x", 1_070).await.expect("renew");
    assert!(st.claim_issuer(y, 1_050, 1_080).await.is_err());
    // Nobody with X alive after 1_070: Y takes over.
    assert_eq!(
        st.claim_issuer(y, 1_071, 1_100).await.expect("takeover"),
        Some(x.to_string())
    );
}

#[tokio::test]
async fn store_refuses_a_replica_with_another_issuer_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    issuer(open_sqlite(&dir.path().join("g.db")).await).await;
}

#[tokio::test]
async fn store_refuses_a_replica_with_another_issuer_postgres() {
    let schema = unique_schema("issuer");
    issuer(open_pg(&schema).await).await;
    drop_schema(&schema).await;
}

/// Black box: a second replica whose public_url differs exits 78 at start, naming both URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_replica_with_another_public_url_does_not_start() {
    let schema = unique_schema("issuer_bin");
    let dir = tempfile::tempdir().expect("tmp");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("a");
    std::fs::create_dir_all(&db).expect("b");
    let store = store_toml(Some(&schema), 30);
    let cfg_a = write_config(&da, "http://127.0.0.1:9", &["alice"], &store);
    let a = Broker::start(&cfg_a, "a").await;
    let cfg_b = write_config(&db, "http://127.0.0.1:9", &["alice"], &store);
    let text = std::fs::read_to_string(&cfg_b).expect("cfg").replace(
        &format!("public_url = \"{PUBLIC_URL}\""),
        "public_url = \"https://elsewhere.example\"",
    );
    std::fs::write(&cfg_b, text).expect("cfg");
    let (status, stderr) =
        tollgate_testkit::procs::BrokerCmd::new(env!("CARGO_BIN_EXE_tollgate-broker"), &cfg_b)
            .run_to_exit(Duration::from_secs(30))
            .await
            .expect("B must refuse at once");
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("https://elsewhere.example")
            && stderr.contains(PUBLIC_URL)
            && stderr.contains("same public_url"),
        "{stderr}"
    );
    drop(a);
    drop_schema(&schema).await;
}
