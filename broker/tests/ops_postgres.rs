//! Operations on the shared PostgreSQL store: a forced key rotation reaches a second replica (published on
//! its next key poll, signing only after the lead, tokens of either replica verify at both), the audit trail
//! is one chain for concurrent writers, tampering (edit, delete, reorder) is detected, and signed
//! checkpoints expose a truncated tail — also through `tollgate-broker audit verify` on a PostgreSQL config.
//! Each test works in its own schema. Fake clock: no test sleeps for the clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::json;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use tollgate_broker::app::AppState;
use tollgate_broker::audit::checkpoint::{CheckpointConfig, RingSigner, verify_checkpoints};
use tollgate_broker::audit::postgres::PgAudit;
use tollgate_broker::audit::{AuditEvent, AuditLog, AuditSink, EventKind, verify};
use tollgate_broker::clock::{Clock, FakeClock};
use tollgate_broker::config::{Config, Source};
use tollgate_broker::governance::store::{self, StorePool};
use tollgate_broker::keys::SigningKey;
use tollgate_broker::routes::router;
use tollgate_broker::token::KeyRing;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

struct Schema {
    name: String,
    dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
    config: Config,
}

/// A broker config on a fresh PostgreSQL schema (`extra` appended).
fn pg_config(extra: &str) -> Schema {
    let name = format!("ops_{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let config_path = common::write_config(
        dir.path(),
        "http://127.0.0.1:9/v1",
        &format!(
            "[store]\nkind = \"postgres\"\nurl = \"{PG_URL}\"\nschema = \"{name}\"\nmax_connections = 8\n{extra}"
        ),
    );
    let config = Config::from_source(
        Source::read(&config_path).unwrap(),
        &BTreeMap::<String, String>::new(),
    )
    .unwrap();
    Schema {
        name,
        dir,
        config_path,
        config,
    }
}

async fn raw_pool(schema: &str) -> sqlx::PgPool {
    let opts = sqlx::postgres::PgConnectOptions::from_str(PG_URL)
        .unwrap()
        .options([("search_path", schema)]);
    sqlx::PgPool::connect_with(opts).await.unwrap()
}

async fn drop_schema(schema: &str) {
    let pool = raw_pool("public").await;
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
}

/// A PostgreSQL audit sink on its own pool (one "replica").
async fn pg_sink(s: &Schema) -> Arc<PgAudit> {
    let st = store::open(&s.config.store).await.unwrap();
    match st.pool() {
        StorePool::Postgres(p) => Arc::new(PgAudit::new(p)),
        StorePool::Sqlite(_) => unreachable!(),
    }
}

fn ev(i: i64) -> AuditEvent {
    AuditEvent {
        ts: 1_800_000_000 + i,
        kind: Some(EventKind::Request),
        actor: format!("p{}", i % 2),
        principal: Some(format!("p{}", i % 2)),
        model: Some("gpt-5.5".into()),
        cost_nanos: Some(1000 * i),
        input_tokens: Some(10),
        output_tokens: Some(5),
        detail: json!({"latency_ms": i}),
        ..Default::default()
    }
}

async fn kids(url: &str) -> Vec<String> {
    let v: serde_json::Value = reqwest::get(format!("{url}/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn serve(state: Arc<AppState>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

async fn mint(url: &str) -> String {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/oauth/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", common::CREDENTIAL),
            ("subject_token_type", tollgate::exchange::TOKEN_TYPE_STATIC),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// Two replicas (two AppStates, one schema, one fake clock; key polls driven by hand). Rotating on A
/// publishes the key on A at once and on B at B's next poll; neither signs with it before `activates_at`,
/// both do after; every token verifies at both; the rotation is in the one shared audit chain.
#[tokio::test]
async fn forced_rotation_reaches_the_other_replica() {
    let s = pg_config("");
    // Mid-generation (rotate_secs defaults to a day), so no scheduled rotation interferes.
    let clock = FakeClock::new(1_800_000_000 - 1_800_000_000 % 86_400 + 40_000);
    let a = AppState::build(&s.config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let b = AppState::build(&s.config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let (ua, ub) = (serve(a.clone()).await, serve(b.clone()).await);
    let (ta0, tb0) = (mint(&ua).await, mint(&ub).await);
    let old = kid_of(&ta0);
    assert_eq!(kid_of(&tb0), old, "replicas share the generation key");

    let r = reqwest::Client::new()
        .post(format!("{ua}/admin/v1/keys/rotate"))
        .bearer_auth(common::ADMIN_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let new = v["kid"].as_str().unwrap().to_string();
    let lead = v["publish_lead_secs"].as_u64().unwrap();
    assert_eq!(v["activates_at"].as_u64().unwrap(), clock.now_secs() + lead);
    assert!(kids(&ua).await.contains(&new), "A publishes it at once");
    assert!(!kids(&ub).await.contains(&new), "B has not polled yet");
    // Publish before sign: nobody signs with it yet.
    assert_eq!(kid_of(&mint(&ua).await), old);
    b.sync_keys().await.unwrap();
    assert!(
        kids(&ub).await.contains(&new),
        "B publishes it after its poll"
    );
    assert_eq!(kid_of(&mint(&ub).await), old, "not yet active on B");

    clock.advance(lead);
    a.sync_keys().await.unwrap();
    b.sync_keys().await.unwrap();
    let (ta1, tb1) = (mint(&ua).await, mint(&ub).await);
    assert_eq!(kid_of(&ta1), new);
    assert_eq!(kid_of(&tb1), new);
    for t in [&ta0, &tb0, &ta1, &tb1] {
        for (name, st) in [("A", &a), ("B", &b)] {
            st.tokens()
                .verify(t)
                .unwrap_or_else(|e| panic!("{name} refuses a token with kid {}: {e}", kid_of(t)));
        }
    }
    for u in [&ua, &ub] {
        let k = kids(u).await;
        assert!(k.contains(&old) && k.contains(&new), "{k:?}");
    }

    // One chain in PostgreSQL for both replicas, with the rotation in it.
    a.audit().as_ref().unwrap().flush().await;
    b.audit().as_ref().unwrap().flush().await;
    let sink = b.audit().as_ref().unwrap().sink().clone();
    let v = verify(sink.as_ref()).await.unwrap();
    assert_eq!(v.first_break, None);
    let recs = sink.scan(0, 1000).await.unwrap();
    assert_eq!(
        recs.iter()
            .filter(|r| r.event.kind == Some(EventKind::Mint))
            .count(),
        6
    );
    let rot = recs
        .iter()
        .find(|r| r.event.detail["action"] == "rotate_keys")
        .expect("rotation audited");
    assert_eq!(rot.event.detail["detail"]["kid"], new.as_str());
    drop((a, b));
    drop_schema(&s.name).await;
}

/// Two writers on separate pools append concurrently: one chain, contiguous seqs, verifies.
#[tokio::test]
async fn concurrent_writers_make_one_contiguous_chain() {
    let s = pg_config("");
    let (x, y) = (pg_sink(&s).await, pg_sink(&s).await);
    let (lx, ly) = (AuditLog::new(x.clone()), AuditLog::new(y.clone()));
    for i in 1..=40 {
        lx.record(ev(i));
        ly.record(ev(100 + i));
    }
    tokio::join!(lx.flush(), ly.flush());
    assert_eq!((lx.errors(), ly.errors()), (0, 0));
    let v = verify(x.as_ref()).await.unwrap();
    assert_eq!((v.records, v.first_break), (80, None));
    let seqs: Vec<i64> = y
        .scan(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
    // Both writers' records are there.
    let recs = x.scan(0, 1000).await.unwrap();
    for i in [1, 40, 101, 140] {
        assert!(recs.iter().any(|r| r.event.ts == 1_800_000_000 + i), "{i}");
    }
    // The admin queries run on PostgreSQL: spend per day and principal, live grants, revocations.
    let spend = x
        .spend(tollgate_broker::audit::GroupBy::Principal, 0, i64::MAX)
        .await
        .unwrap();
    let total = |p: &str| -> (i64, i64) {
        spend
            .iter()
            .filter(|r| r.key == p)
            .fold((0, 0), |(n, c), r| (n + r.requests, c + r.cost_nanos))
    };
    let odd: i64 = (1..=40)
        .chain(101..=140)
        .filter(|i| i % 2 == 1)
        .map(|i| 1000 * i)
        .sum();
    assert_eq!(total("p1"), (40, odd));
    assert!(
        spend
            .iter()
            .all(|r| r.day % 86_400 == 0 && r.input_tokens == 10 * r.requests)
    );
    lx.record(AuditEvent {
        ts: 1_800_000_500,
        kind: Some(EventKind::Mint),
        actor: "alice".into(),
        principal: Some("alice".into()),
        jti: Some("j1".into()),
        expires_at: Some(1_800_003_600),
        detail: json!({"identity": {"kind": "static"}}),
        ..Default::default()
    });
    lx.record(AuditEvent {
        ts: 1_800_000_600,
        kind: Some(EventKind::Revocation),
        actor: "admin".into(),
        jti: Some("j1".into()),
        detail: json!({"kind": "jti", "value": "j1"}),
        ..Default::default()
    });
    lx.flush().await;
    let grants = y.live_grants(1_800_001_000).await.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(
        (grants[0].jti.as_str(), grants[0].identity_kind.as_deref()),
        ("j1", Some("static"))
    );
    assert!(y.live_grants(1_800_003_600).await.unwrap().is_empty());
    assert_eq!(y.revocations(1_800_001_000).await.unwrap().len(), 1);
    drop_schema(&s.name).await;
}

/// The table refuses UPDATE, DELETE and TRUNCATE; with the triggers disabled (an attacker with the
/// owner's rights), an edit, a deletion and a reordering are each found at the right record.
#[tokio::test]
async fn tampering_is_detected_on_postgres() {
    for (case, sql, bad_seq) in [
        (
            "edit",
            "UPDATE audit_log SET cost_nanos = 1 WHERE seq = 3",
            3,
        ),
        (
            "edit-detail",
            "UPDATE audit_log SET detail = '{\"latency_ms\":0}' WHERE seq = 4",
            4,
        ),
        ("delete", "DELETE FROM audit_log WHERE seq = 2", 3),
        (
            "reorder",
            "UPDATE audit_log SET seq = 100 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 100;",
            2,
        ),
    ] {
        let s = pg_config("");
        let sink = pg_sink(&s).await;
        let log = AuditLog::new(sink.clone());
        for i in 1..=5 {
            log.record(ev(i));
        }
        log.flush().await;
        assert_eq!(verify(sink.as_ref()).await.unwrap().first_break, None);
        let pool = raw_pool(&s.name).await;
        for refused in [
            "UPDATE audit_log SET cost_nanos = 0",
            "DELETE FROM audit_log WHERE seq = 5",
            "TRUNCATE audit_log",
        ] {
            let e = sqlx::query(refused).execute(&pool).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{refused}: {e}");
        }
        sqlx::raw_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&pool)
            .await
            .unwrap();
        let v = verify(sink.as_ref()).await.unwrap();
        let b = v
            .first_break
            .unwrap_or_else(|| panic!("{case}: tampering not detected"));
        assert_eq!(b.seq, bad_seq, "{case}: {b:?}");
        pool.close().await;
        drop_schema(&s.name).await;
    }
}

/// Checkpoints on PostgreSQL: every 4th record is checkpointed (by whichever writer wrote it) and logged.
/// Deleting the newest records leaves a chain that verifies on its own, but not against the checkpoint —
/// in the library and through `tollgate-broker audit verify --config` on the PostgreSQL config.
#[tokio::test]
async fn checkpoints_expose_a_truncated_tail_on_postgres() {
    let s = pg_config("[audit]\ncheckpoint_every = 4\ncheckpoint_interval_secs = 0\n");
    let st = store::open(&s.config.store).await.unwrap();
    // Sign with a key of the store, as the broker does, so the CLI finds it there.
    let km = tollgate_broker::governance::keys::KeyManager::new(86_400, 3_600);
    let ring = Arc::new(KeyRing::default());
    let clock = FakeClock::new(1_800_000_000);
    km.sync(st.as_ref(), &ring, clock.now_secs()).await.unwrap();
    let signer = Arc::new(RingSigner {
        keys: ring.clone(),
        issuer: "http://broker".into(),
    });
    let (x, y) = (pg_sink(&s).await, pg_sink(&s).await);
    let lx = AuditLog::new(x.clone()).with_checkpoints(
        s.config.audit.checkpoints,
        signer.clone(),
        Arc::new(clock.clone()),
    );
    let ly = AuditLog::new(y.clone()).with_checkpoints(
        s.config.audit.checkpoints,
        signer,
        Arc::new(clock.clone()),
    );
    for i in 1..=6 {
        lx.record(ev(i));
        ly.record(ev(100 + i));
    }
    tokio::join!(lx.flush(), ly.flush());
    let recs = x.scan(0, 1000).await.unwrap();
    let cps: Vec<&tollgate_broker::audit::AuditRecord> = recs
        .iter()
        .filter(|r| r.event.kind == Some(EventKind::Checkpoint))
        .collect();
    // 12 records and the checkpoints themselves: seqs 4, 8 (and 12 if it fell on an event) are covered.
    assert!(cps.len() >= 2, "{recs:?}");
    for c in &cps {
        let seq = c.event.detail["seq"].as_i64().unwrap();
        assert_eq!(seq % 4, 0);
        // After the record it covers (the other writer may have appended in between).
        assert!(c.seq > seq, "{c:?}");
        let covered = recs.iter().find(|r| r.seq == seq).unwrap();
        assert_eq!(c.event.detail["hash"], covered.hash.as_str());
    }
    let last_cp = cps.last().unwrap();
    let jws = last_cp.event.detail["jws"].as_str().unwrap().to_string();
    let cp_seq = last_cp.event.detail["seq"].as_i64().unwrap();
    let (v, checks) = verify_checkpoints(x.as_ref(), std::slice::from_ref(&jws), &ring)
        .await
        .unwrap();
    assert_eq!(v.first_break, None);
    assert_eq!(checks[0].problem, None, "{checks:?}");

    // The log line as an operator would grep it from the shipped logs.
    let log_file = s.dir.path().join("checkpoints.log");
    std::fs::write(
        &log_file,
        format!(
            "2026-01-01T00:00:00Z  INFO tollgate_audit_checkpoint: audit checkpoint seq={cp_seq} kid=x checkpoint={jws}\n"
        ),
    )
    .unwrap();
    let cfg = s.config_path.to_str().unwrap();
    let (code, out, err) = cli(&[
        "audit",
        "verify",
        "--config",
        cfg,
        "--checkpoint",
        log_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("checkpoint seq {cp_seq}")) && out.contains(": ok"),
        "{out}"
    );

    // Truncate: delete everything from the checkpointed record on.
    let pool = raw_pool(&s.name).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE audit_log DISABLE TRIGGER USER; DELETE FROM audit_log WHERE seq >= {}",
        cp_seq - 1
    )))
    .execute(&pool)
    .await
    .unwrap();
    let plain = verify(x.as_ref()).await.unwrap();
    assert_eq!(
        plain.first_break, None,
        "a chain alone cannot see a cut tail"
    );
    let (code, out, err) = cli(&["audit", "verify", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit chain intact"), "{out}");
    let (code, out, _) = cli(&[
        "audit",
        "verify",
        "--config",
        cfg,
        "--checkpoint",
        log_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "TRUNCATED: the chain ends at seq {}, but a checkpoint",
            cp_seq - 2
        )),
        "{out}"
    );
    // The export reads PostgreSQL too.
    let (code, out, _) = cli(&["audit", "export", "--config", cfg]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count() as i64, cp_seq - 2);
    pool.close().await;
    drop_schema(&s.name).await;
}

async fn cli(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-broker"))
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_BROKER_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A JWKS with only other keys cannot vouch for a checkpoint.
#[tokio::test]
async fn a_checkpoint_from_an_unknown_key_is_refused() {
    let s = pg_config("");
    let sink = pg_sink(&s).await;
    let ring = Arc::new(KeyRing::new(vec![SigningKey::generate(1).unwrap().0]));
    let log = AuditLog::new(sink.clone()).with_checkpoints(
        CheckpointConfig {
            every: 0,
            interval_secs: 0,
        },
        Arc::new(RingSigner {
            keys: ring,
            issuer: "x".into(),
        }),
        Arc::new(FakeClock::new(5)),
    );
    log.record(ev(1));
    let cp = log.checkpoint().await.expect("checkpoint");
    let other = KeyRing::new(vec![SigningKey::generate(1).unwrap().0]);
    let (_, checks) = verify_checkpoints(sink.as_ref(), &[cp.jws], &other)
        .await
        .unwrap();
    assert!(
        checks[0]
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("unknown key")),
        "{checks:?}"
    );
    drop_schema(&s.name).await;
}
