//! A PostgreSQL outage under load loses no audit record (issue 17). Two replicas share PostgreSQL through a
//! TCP switch the test owns; the switch cuts every connection (and refuses new ones) for the outage, then
//! lets them through again. Meanwhile tokens are minted (minting needs no database, so its records keep
//! coming) and requests proxied. Afterwards every record the clients caused is in the one chain, none is
//! counted lost, and `tollgate-broker audit verify` passes.
//!
//! The outage lasts 15 s by default: longer than the ~13 s after which the writer used to drop a batch, so
//! the test fails without the journal. `TOLLGATE_AUDIT_OUTAGE_SECS=60` runs the 60 s.

mod governance_support;

use governance_support::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_testkit::mock::{self, MockConfig};

/// A TCP forwarder to PostgreSQL that the test can cut and restore.
struct Switch {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn start(target: &'static str) -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    // Down: the connection is closed at once, as a dead database host's would be reset.
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut c = conns2.lock().expect("conns");
                c.retain(|h| !h.is_finished());
                c.push(task.abort_handle());
            }
        });
        Switch {
            port,
            up,
            conns,
            accept,
        }
    }

    /// Every open connection is dropped and new ones are closed until [`Switch::restore`].
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[derive(Default)]
struct Counts {
    /// Exchanges and proxied requests sent; the answered ones below. Under load a client can time out on a
    /// request the broker completed (and recorded): stored records lie between the two.
    mint_attempts: AtomicU64,
    request_attempts: AtomicU64,
    mints: AtomicU64,
    mints_in_outage: AtomicU64,
    requests: AtomicU64,
    refused: AtomicU64,
}

async fn proxied(c: &reqwest::Client, broker: &str, token: &str) -> u16 {
    let r = c
        .post(format!("{broker}/v1/responses"))
        .bearer_auth(token)
        .json(&serde_json::json!({"model": "gpt-test", "input": "hi", "stream": false, "max_output_tokens": 16}))
        .send()
        .await;
    match r {
        Ok(r) => {
            let s = r.status().as_u16();
            // The whole answer, so the request has finished (and settled) when it is counted.
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

async fn try_mint(c: &reqwest::Client, broker: &str, principal: &str) -> Option<String> {
    let r = c
        .post(format!("{broker}/oauth/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", credential(principal).as_str()),
            (
                "subject_token_type",
                "urn:tollgate:params:token-type:static-credential",
            ),
        ])
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["access_token"].as_str().map(str::to_string)
}

async fn metric(c: &reqwest::Client, broker: &str, name: &str) -> f64 {
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
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_loses_no_audit_record() {
    let outage = Duration::from_secs(
        std::env::var("TOLLGATE_AUDIT_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(15),
    );
    let switch = Switch::start("127.0.0.1:5432").await;
    let upstream = mock::spawn(MockConfig::default()).await;
    let schema = unique_schema("audit_outage");
    let dir = tempfile::tempdir().expect("tmp");
    let store = format!(
        "[store]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:{}/test\"\nschema = \"{schema}\"\nmax_connections = 8\n\
         [pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"2\"\n\
         [audit]\ncheckpoint_every = 50\n",
        switch.port
    );
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("a");
    std::fs::create_dir_all(&db).expect("b");
    let mock_base = upstream.base_url().trim_end_matches("/v1").to_string();
    let cfg_a = write_config(&da, &mock_base, &["alice", "bob"], &store);
    let cfg_b = write_config(&db, &mock_base, &["alice", "bob"], &store);
    let a = Broker::start(&cfg_a, "a").await;
    let b = Broker::start(&cfg_b, "b").await;
    let c = client();

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let in_outage = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (w, url) in [&a.url, &b.url, &a.url, &b.url].into_iter().enumerate() {
        let (c, url, counts, stop, in_outage) = (
            c.clone(),
            url.clone(),
            counts.clone(),
            stop.clone(),
            in_outage.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let principal = if w % 2 == 0 { "alice" } else { "bob" };
            let mut token: Option<String> = None;
            while !stop.load(Ordering::Relaxed) {
                counts.mint_attempts.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = try_mint(&c, &url, principal).await {
                    counts.mints.fetch_add(1, Ordering::Relaxed);
                    if in_outage.load(Ordering::Relaxed) {
                        counts.mints_in_outage.fetch_add(1, Ordering::Relaxed);
                    }
                    token = Some(t);
                }
                if let Some(t) = &token {
                    counts.request_attempts.fetch_add(1, Ordering::Relaxed);
                    match proxied(&c, &url, t).await {
                        200 => counts.requests.fetch_add(1, Ordering::Relaxed),
                        _ => counts.refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("cutting PostgreSQL for {outage:?}");
    in_outage.store(true, Ordering::Relaxed);
    switch.cut();
    tokio::time::sleep(outage.saturating_sub(Duration::from_secs(1))).await;
    let journaled = metric(&c, &a.url, "tollgate_audit_journal_records").await
        + metric(&c, &b.url, "tollgate_audit_journal_records").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    switch.restore();
    in_outage.store(false, Ordering::Relaxed);
    eprintln!("PostgreSQL back");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load");
    }

    // Both replicas drain their journals into the one chain (a flush replays; wait for it).
    let t0 = tokio::time::Instant::now();
    loop {
        let mut pending = 0.0;
        for url in [&a.url, &b.url] {
            let _ = c
                .get(format!("{url}/admin/v1/audit/verify"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await;
            pending += metric(&c, url, "tollgate_audit_journal_records").await;
        }
        if pending == 0.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "journals not drained: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost = metric(&c, &a.url, "tollgate_audit_failures").await
        + metric(&c, &b.url, "tollgate_audit_failures").await;

    let Db::Pg(pool) = Db::pg(&schema).await else {
        unreachable!()
    };
    let count = |kind: &'static str| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE kind = $1")
                .bind(kind)
                .fetch_one(&pool)
                .await
                .expect("count");
            n as u64
        }
    };
    let (mints, requests) = (count("mint").await, count("request").await);
    let (want_mints, want_requests) = (
        counts.mints.load(Ordering::Relaxed),
        counts.requests.load(Ordering::Relaxed),
    );
    eprintln!(
        "mints {want_mints} ({} during the outage), requests {want_requests} answered, {} refused; \
         journaled at the outage's end: {journaled}; stored: {mints} mint, {requests} request records; lost {lost}",
        counts.mints_in_outage.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
    );
    assert!(
        counts.mints_in_outage.load(Ordering::Relaxed) > 0 && journaled > 0.0,
        "the outage produced records that had to wait"
    );
    // Nothing answered is missing from the trail, and nothing is in it that was not asked for.
    let (mint_attempts, request_attempts) = (
        counts.mint_attempts.load(Ordering::Relaxed),
        counts.request_attempts.load(Ordering::Relaxed),
    );
    assert!(
        (want_mints..=mint_attempts).contains(&mints),
        "every answered mint is stored: {mints} stored, {want_mints} answered, {mint_attempts} sent"
    );
    assert!(
        (want_requests..=request_attempts).contains(&requests),
        "every answered request is stored: {requests} stored, {want_requests} answered, {request_attempts} sent"
    );
    assert_eq!(lost, 0.0, "tollgate_audit_failures");

    drop((a, b));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-broker"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg_a)
        .output()
        .await
        .expect("audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("audit chain intact"), "{stdout}");
    upstream.shutdown().await;
    drop(switch);
    drop_schema(&schema).await;
}
