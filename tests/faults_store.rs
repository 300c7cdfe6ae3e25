//! Fault suite: the governance store (PostgreSQL on 127.0.0.1:5432) goes away and comes back.
//!
//! The shared server is never stopped: the broker reaches it through a TCP proxy owned by this test,
//! which cuts every connection and refuses new ones ("away"), then forwards again ("back").
//! Documented behaviour: while away the proxy serves what its budget allotment (reserved in the store
//! before it went away) covers, then fails closed (503 `store_unavailable`, never a hang and
//! never an ungoverned request); once back it serves again without a restart; nothing lost: the spend
//! recorded equals the cost of the answers that were served, exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;

use faults::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tollgate_broker::clock::SystemClock;
use tollgate_testkit::mock::{self, MockConfig};

const PG: &str = "127.0.0.1:5432";

/// A TCP forwarder to PostgreSQL that can be switched off (cutting live connections) and on again.
struct Switch {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Switch {
    async fn start() -> Switch {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(tx);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = l.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(PG).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Switch {
            port,
            up,
            generation,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn spent_nanos(base: &str, token: &str) -> i64 {
    let v: serde_json::Value = client()
        .get(format!("{base}/v1/tollgate/usage"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["budgets"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["id"] == "principal-daily"))
        .and_then(|b| b["spent_nanos"].as_i64())
        .unwrap_or_else(|| panic!("no principal-daily budget in {v}"))
}

/// Wait (up to 10 s) until the schema's `spend` table has `n` rows: `(rows, Σ cost)`.
async fn wait_spend_rows(schema: &str, n: i64) -> (i64, i64) {
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("connect");
    let sql =
        format!("SELECT COUNT(*), CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM \"{schema}\".spend");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&pool)
            .await
            .expect("spend rows");
        if got.0 >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_goes_away_and_comes_back() {
    if TcpStream::connect(PG).await.is_err() {
        panic!("PostgreSQL is not listening on {PG}: start it (the CI script does)");
    }
    let switch = Switch::start().await;
    // Fixed token counts, so every answer costs the same.
    let up = mock::spawn(MockConfig {
        input_tokens: Some(1000),
        output_tokens: Some(100),
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[ProviderSpec {
            name: "only",
            base_url: up.base_url(),
            timeout_ms: 5_000,
        }],
    );
    let schema = format!(
        "faults_store_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[store]\nkind = \"sqlite\"\n",
        &format!(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:{}/test\"\nschema = \"{schema}\"\n",
            switch.port
        ),
    );
    assert!(text.contains("kind = \"postgres\""));
    std::fs::write(&cfg, text).unwrap();
    let broker = Broker::start(&load_config(&cfg), Arc::new(SystemClock)).await;
    let base = broker.base();
    let token = mint(&base).await;

    let mut served = 0i64;
    for stream in [false, true, false] {
        let (s, _, body) = responses(&base, &token, stream).await;
        assert_eq!(s, 200, "{body}");
        served += 1;
    }
    // Settlements are written behind the response: wait until the three have landed.
    let (n, total) = wait_spend_rows(&schema, served).await;
    assert_eq!(n, served);
    let per_answer = total / served;
    assert_eq!(spent_nanos(&base, &token).await, total);
    assert!(per_answer > 0, "answers are charged");

    // Away: requests the broker's allotment already backs (reserved in the store before it went away) are
    // served; the first that needs more fails closed, fast — and so does every one after it.
    switch.down();
    let mut refused = 0;
    for i in 0..60 {
        let stream = i % 2 == 1;
        let t = Instant::now();
        let (s, _, body) = responses(&base, &token, stream).await;
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "took {:?}",
            t.elapsed()
        );
        if s == 200 {
            assert_eq!(
                refused, 0,
                "served after a refusal: an ungoverned answer slipped through"
            );
            served += 1;
            continue;
        }
        assert_eq!(s, 503, "{body}");
        assert!(body.contains("store_unavailable"), "{body}");
        assert_openai_error(&body);
        refused += 1;
        if refused == 2 {
            break;
        }
    }
    assert_eq!(
        refused, 2,
        "the allotment ran out and the broker failed closed"
    );

    // Back: serves again without a restart.
    switch.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, _, body) = responses(&base, &token, false).await;
        if s == 200 {
            served += 1;
            break;
        }
        assert_eq!(s, 503, "{body}");
        assert!(Instant::now() < deadline, "store never came back: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _, _) = responses(&base, &token, true).await;
    assert_eq!(s, 200);
    served += 1;

    // Nothing lost, nothing double-charged: spend = answers served × cost of one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spent = spent_nanos(&base, &token).await;
        if spent == served * per_answer {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spent {spent} != {served} × {per_answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(broker);
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("connect for cleanup");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
}
