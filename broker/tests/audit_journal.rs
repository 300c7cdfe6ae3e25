//! The audit journal (issue 17, "nothing lost"): records the store cannot take wait in a local, fsync'd,
//! bounded journal and are replayed in order — exactly once, even after a crash mid-replay — when it is
//! back; a full journal refuses new requests (or, configured so, drops and counts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use tollgate_broker::audit::journal::{Journal, JournalConfig, OnFull};
use tollgate_broker::audit::sqlite::SqliteAudit;
use tollgate_broker::audit::{
    AuditError, AuditEvent, AuditLog, AuditRecord, AuditSink, EventKind, GrantRow, GroupBy,
    SpendRow, verify,
};

/// An audit store that can be "down", and that can lose the answer to an append it committed.
struct Flaky {
    inner: SqliteAudit,
    down: AtomicBool,
    /// Appends still to commit whose answer is then lost (the connection breaks after `COMMIT`).
    lose: AtomicU32,
    /// The store goes down with the lost answer (it was an outage beginning).
    down_on_loss: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), AuditError> {
        if self.down.load(Ordering::SeqCst) {
            Err(AuditError::Store("connection refused (test outage)".into()))
        } else {
            Ok(())
        }
    }

    /// The answer to a committed append, unless it is one to lose.
    fn answer(&self, committed: Result<(), AuditError>) -> Result<(), AuditError> {
        committed?;
        if self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            if self.down_on_loss.load(Ordering::SeqCst) {
                self.down.store(true, Ordering::SeqCst);
            }
            return Err(AuditError::Store(
                "connection closed after COMMIT was sent (test)".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl AuditSink for Flaky {
    async fn head(&self) -> Result<Option<(i64, String)>, AuditError> {
        self.check()?;
        self.inner.head().await
    }
    async fn append(&self, record: &AuditRecord) -> Result<(), AuditError> {
        self.check()?;
        self.inner.append(record).await
    }
    async fn append_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        self.check()?;
        self.answer(self.inner.append_batch(records).await)
    }
    async fn scan(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, AuditError> {
        self.check()?;
        self.inner.scan(after, limit).await
    }
    async fn spend(
        &self,
        by: GroupBy,
        since: i64,
        until: i64,
    ) -> Result<Vec<SpendRow>, AuditError> {
        self.check()?;
        self.inner.spend(by, since, until).await
    }
    async fn live_grants(&self, now: i64) -> Result<Vec<GrantRow>, AuditError> {
        self.check()?;
        self.inner.live_grants(now).await
    }
    async fn revocations(&self, now: i64) -> Result<Vec<AuditRecord>, AuditError> {
        self.check()?;
        self.inner.revocations(now).await
    }
    async fn append_journaled(
        &self,
        records: &[AuditRecord],
        journal_id: &str,
        last_n: u64,
    ) -> Result<(), AuditError> {
        self.check()?;
        self.answer(
            self.inner
                .append_journaled(records, journal_id, last_n)
                .await,
        )
    }
    async fn journal_progress(&self, journal_id: &str) -> Result<Option<u64>, AuditError> {
        self.check()?;
        self.inner.journal_progress(journal_id).await
    }
}

fn ev(i: usize) -> AuditEvent {
    AuditEvent {
        ts: 1_800_000_000 + i as i64,
        kind: Some(EventKind::Request),
        actor: format!("e{i}"),
        detail: serde_json::json!({"i": i}),
        ..Default::default()
    }
}

fn flaky(dir: &std::path::Path) -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: SqliteAudit::open(&dir.join("audit.sqlite")),
        down: AtomicBool::new(false),
        lose: AtomicU32::new(0),
        down_on_loss: AtomicBool::new(false),
    })
}

fn journal_cfg(dir: &std::path::Path, max_bytes: u64, on_full: OnFull) -> JournalConfig {
    let mut c = JournalConfig::new(dir.join("journal"));
    c.max_bytes = max_bytes;
    c.on_full = on_full;
    c
}

/// Actors of the stored records, in chain order, after checking the chain.
async fn stored(sink: &Flaky) -> Vec<String> {
    let v = verify(&sink.inner).await.expect("verify");
    assert_eq!(v.first_break, None, "chain intact");
    sink.inner
        .scan(0, 100_000)
        .await
        .expect("scan")
        .into_iter()
        .map(|r| r.event.actor)
        .collect()
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("e{i}")).collect()
}

#[tokio::test]
async fn outage_spills_to_the_journal_and_replays_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let sink = flaky(dir.path());
    let log = AuditLog::new(sink.clone())
        .with_journal(&journal_cfg(dir.path(), 1 << 20, OnFull::Refuse))
        .expect("journal");
    for i in 0..10 {
        log.record(ev(i));
    }
    log.flush().await;
    assert_eq!(stored(&sink).await, names(0..10));

    sink.down.store(true, Ordering::SeqCst);
    for i in 10..60 {
        log.record(ev(i));
    }
    log.flush().await;
    assert_eq!(log.journal_backlog().0, 50, "safe in the journal");
    assert_eq!(log.errors(), 0);
    assert!(log.accepting());

    sink.down.store(false, Ordering::SeqCst);
    for i in 60..70 {
        log.record(ev(i));
    }
    log.flush().await;
    assert_eq!(log.journal_backlog(), (0, 0), "drained and emptied");
    assert_eq!(stored(&sink).await, names(0..70), "every record, in order");
    assert_eq!(log.errors(), 0);
    let j = dir.path().join("journal").join(Journal::FILE);
    assert_eq!(std::fs::metadata(&j).expect("journal").len(), 0);
}

#[tokio::test]
async fn a_full_journal_refuses_new_requests_then_recovers_without_loss() {
    let dir = tempfile::tempdir().expect("tmp");
    let sink = flaky(dir.path());
    let log = AuditLog::new(sink.clone())
        .with_journal(&journal_cfg(dir.path(), 4096, OnFull::Refuse))
        .expect("journal");
    sink.down.store(true, Ordering::SeqCst);
    for i in 0..200 {
        log.record(ev(i));
    }
    log.flush().await;
    assert!(!log.accepting(), "fail closed: the journal is full");
    assert_eq!(log.errors(), 0, "nothing dropped");
    sink.down.store(false, Ordering::SeqCst);
    log.flush().await;
    // The overflow waited in memory and drains through the journal, a journal's worth per round.
    for _ in 0..50 {
        if log.accepting() && log.journal_backlog().0 == 0 {
            break;
        }
        log.flush().await;
    }
    assert!(log.accepting());
    assert_eq!(stored(&sink).await, names(0..200));
    assert_eq!(log.errors(), 0);
}

#[tokio::test]
async fn a_full_journal_with_drop_counts_what_it_loses() {
    let dir = tempfile::tempdir().expect("tmp");
    let sink = flaky(dir.path());
    let log = AuditLog::new(sink.clone())
        .with_journal(&journal_cfg(dir.path(), 4096, OnFull::Drop))
        .expect("journal");
    sink.down.store(true, Ordering::SeqCst);
    for i in 0..200 {
        log.record(ev(i));
    }
    log.flush().await;
    assert!(log.accepting(), "drop does not refuse");
    let lost = log.errors();
    assert!(lost > 0);
    sink.down.store(false, Ordering::SeqCst);
    log.flush().await;
    let kept = stored(&sink).await;
    assert_eq!(
        kept.len() as u64 + lost,
        200,
        "stored + counted as lost = all"
    );
    assert_eq!(
        kept,
        names(0..kept.len()),
        "what was kept is the oldest, in order"
    );
}

/// A process dies with records in its journal, after a replay had committed part of them: the next one
/// replays the rest — none twice, none lost.
#[tokio::test]
async fn replay_after_a_crash_is_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let sink = flaky(dir.path());
    let cfg = journal_cfg(dir.path(), 1 << 20, OnFull::Refuse);
    {
        let log = AuditLog::new(sink.clone())
            .with_journal(&cfg)
            .expect("journal");
        sink.down.store(true, Ordering::SeqCst);
        for i in 0..20 {
            log.record(ev(i));
        }
        log.flush().await;
        assert_eq!(log.journal_backlog().0, 20);
    }
    // Let the first writer task end and release the journal.
    tokio::task::yield_now().await;
    sink.down.store(false, Ordering::SeqCst);
    // Its replay had committed entries 1..=8 (with their progress) when it died.
    let id = {
        let text = std::fs::read_to_string(dir.path().join("journal").join(Journal::FILE))
            .expect("journal file");
        let header: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("header")).expect("json");
        header["journal"].as_str().expect("id").to_string()
    };
    let mut prev = tollgate_broker::audit::GENESIS.to_string();
    let mut recs = Vec::new();
    for (seq, i) in (1..=8).zip(0..8) {
        let r = AuditRecord::chain(seq, prev, ev(i));
        prev = r.hash.clone();
        recs.push(r);
    }
    sink.inner
        .append_journaled(&recs, &id, 8)
        .await
        .expect("partial replay");

    let mut log = None;
    for _ in 0..100 {
        // The dead writer's lock goes with its task; retry briefly until it has.
        match AuditLog::new(sink.clone()).with_journal(&cfg) {
            Ok(l) => {
                log = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    let log = log.expect("journal");
    let path = dir.path().join("journal").join(Journal::FILE);
    assert!(
        std::fs::metadata(&path).expect("journal").len() > 0,
        "the new process opened the same journal"
    );
    log.resume();
    log.flush().await;
    assert_eq!(stored(&sink).await, names(0..20), "exactly once, in order");
    assert_eq!(log.journal_backlog(), (0, 0));
}

/// Open a journal a dead writer held: its lock goes with its task, so retry briefly until it has.
async fn reopen(sink: &Arc<Flaky>, cfg: &JournalConfig) -> AuditLog {
    tokio::task::yield_now().await;
    for _ in 0..100 {
        match AuditLog::new(sink.clone()).with_journal(cfg) {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    panic!("the journal stayed locked");
}

/// The store commits an append but its answer is lost with the connection (the PostgreSQL outage test
/// once found such records stored twice: the writer took the failure at its word and appended them
/// again). Every combination: the append made live or replayed from the journal; the store answering
/// again at once or staying down through the retries (then the events wait in the journal, marked with
/// what they may be stored as); the process kept or restarted before the store is back. Each stores every
/// event exactly once, in order.
#[tokio::test]
async fn an_append_whose_answer_was_lost_is_stored_once() {
    for replayed in [false, true] {
        for stays_down in [false, true] {
            for restart in [false, true] {
                let case = format!("replayed={replayed} stays_down={stays_down} restart={restart}");
                let dir = tempfile::tempdir().expect("tmp");
                let sink = flaky(dir.path());
                let cfg = journal_cfg(dir.path(), 1 << 20, OnFull::Refuse);
                let mut log = AuditLog::new(sink.clone())
                    .with_journal(&cfg)
                    .expect("journal");
                for i in 0..5 {
                    log.record(ev(i));
                }
                log.flush().await;
                if replayed {
                    sink.down.store(true, Ordering::SeqCst);
                    for i in 5..15 {
                        log.record(ev(i));
                    }
                    log.flush().await;
                    assert_eq!(log.journal_backlog().0, 10, "{case}");
                }
                sink.down_on_loss.store(stays_down, Ordering::SeqCst);
                sink.lose.store(1, Ordering::SeqCst);
                sink.down.store(false, Ordering::SeqCst);
                if !replayed {
                    for i in 5..15 {
                        log.record(ev(i));
                    }
                }
                log.flush().await;
                assert_eq!(
                    sink.lose.load(Ordering::SeqCst),
                    0,
                    "{case}: an answer was lost"
                );
                if stays_down {
                    assert_eq!(
                        log.journal_backlog().0,
                        10,
                        "{case}: waiting in the journal"
                    );
                    if !replayed {
                        let text =
                            std::fs::read_to_string(dir.path().join("journal").join(Journal::FILE))
                                .expect("journal file");
                        assert_eq!(text.matches("\"maybe\":").count(), 10, "{case}: {text}");
                    }
                } else {
                    assert_eq!(log.journal_backlog(), (0, 0), "{case}");
                }
                if restart {
                    drop(log);
                    log = reopen(&sink, &cfg).await;
                    log.resume();
                }
                sink.down.store(false, Ordering::SeqCst);
                for i in 15..20 {
                    log.record(ev(i));
                }
                log.flush().await;
                assert_eq!(
                    stored(&sink).await,
                    names(0..20),
                    "{case}: exactly once, in order"
                );
                assert_eq!(log.journal_backlog(), (0, 0), "{case}");
                assert_eq!(log.errors(), 0, "{case}");
            }
        }
    }
}

async fn call(
    app: &Arc<tollgate_broker::app::AppState>,
    req: http::Request<axum::body::Body>,
) -> (u16, String) {
    let (status, _, body) = call_with_headers(app, req).await;
    (status, body)
}

async fn call_with_headers(
    app: &Arc<tollgate_broker::app::AppState>,
    req: http::Request<axum::body::Body>,
) -> (u16, http::HeaderMap, String) {
    use tower::ServiceExt;
    let resp = tollgate_broker::routes::router(app.clone())
        .oneshot(req)
        .await
        .expect("serve");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn exchange() -> http::Request<axum::body::Body> {
    let body = serde_urlencoded::to_string([
        ("grant_type", tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE),
        ("subject_token", "alice-credential"),
        ("subject_token_type", tollgate::exchange::TOKEN_TYPE_STATIC),
    ])
    .expect("form");
    http::Request::post("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .expect("request")
}

/// What a client sees while the journal is full (`refuse`): token exchanges and proxy requests get 503
/// with a message saying why, `/readyz` says not ready, health and JWKS still answer; once the audit store
/// is back everything resumes and every record is in the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_503_while_the_journal_is_full() {
    use sha2::Digest;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rule]]\nname = \"all\"\nmatch = { kind = \"static\", subject = \"*\" }\nprincipal = \"{subject}\"\nmodels = [\"*\"]\n",
    )
    .expect("policy");
    let text = format!(
        "policy_file = \"policy.toml\"\n[server]\nstate_dir = \"state\"\n[tokens]\naudience = \"tollgate\"\n\
         [[credentials]]\nsubject = \"alice\"\nsha256 = \"{}\"\n\
         [providers.demo]\nkind = \"demo\"\n[[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"demo\" }}]\n\
         [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1\", output = \"2\" }}\n\
         [audit]\njournal_max_bytes = 4096\non_journal_full = \"refuse\"\ncheckpoint_every = 0\ncheckpoint_interval_secs = 0\n",
        hex::encode(sha2::Sha256::digest(b"alice-credential"))
    );
    std::fs::write(dir.path().join("broker.toml"), &text).expect("config");
    let config = tollgate_broker::config::Config::from_source(
        tollgate_broker::config::Source {
            path: dir.path().join("broker.toml"),
            text,
        },
        &std::collections::BTreeMap::<String, String>::new(),
    )
    .expect("config");
    // The audit database cannot be opened: a directory stands where its file should be.
    let blocker = dir.path().join("state").join("audit.sqlite");
    std::fs::create_dir_all(&blocker).expect("blocker");
    let clock = tollgate_broker::clock::FakeClock::new(1_800_000_000);
    let app = tollgate_broker::app::AppState::build(&config, Arc::new(clock))
        .await
        .expect("state");
    let audit = app.audit().as_ref().expect("audit");

    let mut token = None;
    let mut minted = 0;
    while audit.accepting() {
        let (s, body) = call(&app, exchange()).await;
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        token = v["access_token"].as_str().map(str::to_string);
        minted += 1;
        audit.flush().await;
        assert!(minted < 100, "the 4 KiB journal never filled");
    }
    assert_eq!(audit.errors(), 0, "nothing lost");
    let (s, body) = call(&app, exchange()).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("temporarily_unavailable"), "{body}");
    // Every ingress is refused in its own protocol's error shape (the edge's stages: the refusal inside
    // the Anthropic shape inside the request id).
    let token = token.expect("token");
    let ingresses = [
        (
            "/v1/responses",
            r#"{"model":"gpt-5.5","input":"hi"}"#,
            false,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-5.5","messages":[{"role":"user","content":"hi"}]}"#,
            false,
        ),
        (
            "/v1/messages",
            r#"{"model":"claude-x","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
            true,
        ),
    ];
    for (path, body, anthropic) in ingresses {
        let mut req = http::Request::post(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"));
        if anthropic {
            req = req.header("anthropic-version", "2023-06-01");
        }
        let req = req.body(axum::body::Body::from(body)).expect("request");
        let (s, headers, body) = call_with_headers(&app, req).await;
        assert_eq!(s, 503, "{path}: {body}");
        assert!(body.contains("journal is full"), "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        if anthropic {
            assert_eq!(v["type"], "error", "{path}: {body}");
            assert!(v["error"]["type"].is_string(), "{path}: {body}");
        } else {
            assert_eq!(v["error"]["code"], "audit_unavailable", "{path}: {body}");
        }
        assert!(headers.contains_key("x-request-id"), "{path}");
        assert_eq!(
            headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"5"[..]),
            "{path}"
        );
    }
    let get = |p: &str| {
        http::Request::get(p)
            .body(axum::body::Body::empty())
            .expect("request")
    };
    assert_eq!(call(&app, get("/readyz")).await.0, 503);
    assert_eq!(call(&app, get("/healthz")).await.0, 200);
    assert_eq!(call(&app, get("/.well-known/jwks.json")).await.0, 200);

    // The store comes back: the journal drains, requests are served again, nothing was lost.
    std::fs::remove_dir(&blocker).expect("unblock");
    for _ in 0..50 {
        audit.flush().await;
        if audit.accepting() {
            break;
        }
    }
    assert!(audit.accepting());
    assert_eq!(call(&app, exchange()).await.0, 200);
    minted += 1;
    audit.flush().await;
    let v = verify(audit.sink().as_ref()).await.expect("verify");
    assert_eq!(v.first_break, None);
    assert_eq!(v.records, minted, "one mint record per token, none lost");
}
