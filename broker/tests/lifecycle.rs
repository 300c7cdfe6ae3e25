//! The real broker binary: graceful shutdown drains an in-flight stream while refusing new connections,
//! and OTLP traces with GenAI attributes reach a local collector endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use futures::StreamExt;
use nix::sys::signal::Signal;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_testkit::procs::{BrokerCmd, ChildGuard};

struct Running {
    child: ChildGuard,
    url: String,
    dir: tempfile::TempDir,
    mock: tollgate_testkit::MockHandle,
}

async fn spawn_broker(extra: &str) -> Running {
    let mock = tollgate_testkit::spawn(tollgate_testkit::MockConfig {
        input_tokens: Some(100),
        output_tokens: Some(20),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(dir.path(), &mock.base_url(), extra);
    let b = BrokerCmd::new(env!("CARGO_BIN_EXE_tollgate-broker"), &path)
        .log_to(dir.path().join("broker.log"))
        .env("RUST_LOG", "info")
        .start(Duration::from_secs(30))
        .await
        .unwrap();
    Running {
        child: b.guard,
        url: b.url,
        dir,
        mock,
    }
}

async fn mint(http: &reqwest::Client, url: &str) -> String {
    let v: serde_json::Value = http
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

#[tokio::test]
async fn sigterm_drains_a_slow_stream_and_refuses_new_connections() {
    let mut b = spawn_broker("").await;
    let http = reqwest::Client::new();
    let token = mint(&http, &b.url).await;
    // Every upstream event 250 ms apart: the stream lasts a few seconds.
    b.mock
        .push_fault(tollgate_testkit::Fault::event_delay_ms(250));
    let resp = http
        .post(format!("{}/v1/responses", b.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "gpt-5.5", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let mut text = String::from_utf8_lossy(&first).to_string();
    assert!(
        !text.contains("response.completed"),
        "stream finished too early to test draining"
    );

    b.child.signal_group(Signal::SIGTERM).unwrap();
    let addr = b.url.trim_start_matches("http://").to_string();
    let mut refused = false;
    for _ in 0..40 {
        match tokio::net::TcpStream::connect(&addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(refused, "new connections are still accepted after SIGTERM");

    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        text.contains("event: response.completed"),
        "stream cut short: {text}"
    );
    let status = b.child.wait_timeout(Duration::from_secs(20)).await.unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "broker exit: {status:?}"
    );
}

#[tokio::test]
async fn otlp_traces_carry_gen_ai_attributes() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
    use prost::Message;

    // A minimal OTLP/HTTP collector.
    let got: Arc<Mutex<Vec<(String, bytes::Bytes)>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                sink.lock().unwrap().push((ct, body));
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut b = spawn_broker(&format!(
        "[telemetry]\notlp_endpoint = \"{collector}\"\nservice_name = \"tollgate-test\"\n"
    ))
    .await;
    let http = reqwest::Client::new();
    let token = mint(&http, &b.url).await;
    for stream in [true, false] {
        let r = http
            .post(format!("{}/v1/responses", b.url))
            .bearer_auth(&token)
            .json(&serde_json::json!({"model": "gpt-5.5", "input": "secret prompt text", "stream": stream}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    // Shutdown flushes the batch exporter.
    b.child.signal_group(Signal::SIGTERM).unwrap();
    let status = b.child.wait_timeout(Duration::from_secs(20)).await.unwrap();
    assert!(status.is_some_and(|s| s.success()));

    let posts = got.lock().unwrap().clone();
    assert!(!posts.is_empty(), "no OTLP export received");
    let mut spans = Vec::new();
    for (ct, body) in &posts {
        assert_eq!(ct, "application/x-protobuf");
        assert!(!String::from_utf8_lossy(body).contains("secret prompt text"));
        let req = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.clone()?.value);
            assert_eq!(service, Some(Av::StringValue("tollgate-test".into())));
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    let gen_ai: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "responses gpt-5.5")
        .collect();
    assert_eq!(
        gen_ai.len(),
        2,
        "spans: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for s in gen_ai {
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone()?.value)
        };
        assert_eq!(
            attr("gen_ai.request.model"),
            Some(Av::StringValue("gpt-5.5".into()))
        );
        assert_eq!(
            attr("gen_ai.operation.name"),
            Some(Av::StringValue("responses".into()))
        );
        assert_eq!(
            attr("gen_ai.system"),
            Some(Av::StringValue("openai".into()))
        );
        assert_eq!(attr("gen_ai.usage.input_tokens"), Some(Av::IntValue(100)));
        assert_eq!(attr("gen_ai.usage.output_tokens"), Some(Av::IntValue(20)));
        assert_eq!(attr("http.response.status_code"), Some(Av::IntValue(200)));
        assert_eq!(
            attr("tollgate.provider"),
            Some(Av::StringValue("mock".into()))
        );
        assert_eq!(s.kind, 3, "SPAN_KIND_CLIENT");
    }
}

async fn cli(args: &[&str], admin_key: Option<&str>) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-broker"));
    cmd.args(args)
        .env_remove("TOLLGATE_ADMIN_KEY")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_BROKER_CONFIG")
        .env_remove("TOLLGATE_ADMIN_URL")
        .stdin(Stdio::null());
    if let Some(k) = admin_key {
        cmd.env("TOLLGATE_ADMIN_KEY", k);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn admin_and_audit_subcommands() {
    let mut b = spawn_broker("").await;
    let http = reqwest::Client::new();
    let token = mint(&http, &b.url).await;
    let r = http
        .post(format!("{}/v1/responses", b.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "gpt-5.5", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = b.url.clone();
    let key = Some(common::ADMIN_KEY);

    let (code, out, err) = cli(&["admin", "--url", &url, "grants"], key).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["grants"][0]["principal"], "alice");
    let (code, _, err) = cli(&["admin", "--url", &url, "grants"], None).await;
    assert_ne!(code, 0);
    assert!(err.contains("TOLLGATE_ADMIN_KEY"), "{err}");
    let (code, _, err) = cli(&["admin", "--url", &url, "grants"], Some("wrong")).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = cli(&["admin", "--url", &url, "spend", "--by", "team"], key).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"payments\""), "{out}");
    let (code, out, _) = cli(
        &[
            "admin",
            "--url",
            &url,
            "revoke",
            "--principal",
            "alice",
            "--reason",
            "laptop lost",
        ],
        key,
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("alice"));
    let r = http
        .post(format!("{}/v1/responses", b.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "gpt-5.5", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "revoked via the CLI");
    let (code, out, _) = cli(&["admin", "--url", &url, "dashboard-link"], key).await;
    assert_eq!(code, 0);
    assert!(
        out.trim()
            .starts_with(&format!("{url}/admin/login?ticket=")),
        "{out}"
    );
    let (code, out, _) = cli(&["admin", "--url", &url, "verify-audit"], key).await;
    assert_eq!(code, 0);
    assert!(out.contains("\"first_break\": null"), "{out}");

    // The binary's /metrics also carries governance's counters (global `metrics` macros, forwarded).
    let text = common::metrics_text(&http, &url).await;
    assert!(text.contains("tollgate_requests_total{"), "{text}");
    assert!(text.contains("tollgate_cost_nanodollars_total"), "{text}");

    b.child.signal_group(Signal::SIGTERM).unwrap();
    assert!(
        b.child
            .wait_timeout(Duration::from_secs(20))
            .await
            .unwrap()
            .is_some_and(|s| s.success())
    );

    // Offline: verify, export, then tamper and verify again.
    let config = b.dir.path().join("broker.toml");
    let config = config.to_str().unwrap();
    let (code, out, err) = cli(&["audit", "verify", "--config", config], None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("audit chain intact: "), "{out}");
    let export = b.dir.path().join("audit.jsonl");
    let (code, _, err) = cli(
        &[
            "audit",
            "export",
            "--config",
            config,
            "-o",
            export.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    kinds.sort();
    // The graceful shutdown signed a checkpoint of the last record.
    assert_eq!(
        kinds,
        ["checkpoint", "mint", "request", "revocation"],
        "{lines:?}"
    );
    let cp = lines.iter().find(|l| l["kind"] == "checkpoint").unwrap();
    assert_eq!(cp["detail"]["seq"], 3);
    assert_eq!(cp["detail"]["hash"], lines[2]["hash"]);
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    let rev = lines.iter().find(|l| l["kind"] == "revocation").unwrap();
    assert_eq!(rev["detail"]["reason"], "laptop lost");
    assert_eq!(rev["principal"], "alice");

    let sink =
        tollgate_broker::audit::sqlite::SqliteAudit::open(&b.dir.path().join("state/audit.sqlite"));
    let pool = sink.pool().await.unwrap();
    sqlx::raw_sql(
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET output_tokens = 0 WHERE seq = 2",
    )
    .execute(pool)
    .await
    .unwrap();
    pool.close().await;
    let (code, out, _) = cli(&["audit", "verify", "--config", config], None).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("BROKEN at seq 2"), "{out}");

    let (code, out, _) = cli(&["completions", "bash"], None).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("tollgate-broker") && out.contains("verify-audit"),
        "completions"
    );
}

/// The binary logs signed checkpoints; fed back to `audit verify --checkpoint`, they expose a truncated
/// tail that the chain alone cannot show. `admin rotate-keys` forces a rotation over the admin API.
#[tokio::test]
async fn logged_checkpoints_expose_truncation_and_rotate_keys_cli() {
    let mut b = spawn_broker("[audit]\ncheckpoint_every = 2\n").await;
    let http = reqwest::Client::new();
    let token = mint(&http, &b.url).await;
    let _ = mint(&http, &b.url).await;
    let r = http
        .post(format!("{}/v1/responses", b.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "gpt-5.5", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (code, out, err) = cli(
        &["admin", "--url", &b.url, "rotate-keys"],
        Some(common::ADMIN_KEY),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["kid"].is_string() && v["activates_at"].is_i64(), "{v}");
    assert_ne!(v["kid"], v["previous_kid"]);
    b.child.signal_group(Signal::SIGTERM).unwrap();
    assert!(
        b.child
            .wait_timeout(Duration::from_secs(20))
            .await
            .unwrap()
            .is_some_and(|s| s.success())
    );
    let log = b.dir.path().join("broker.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let cp_lines = text
        .lines()
        .filter(|l| l.contains("audit checkpoint"))
        .count();
    assert!(cp_lines >= 2, "{text}");
    let config = b.dir.path().join("broker.toml");
    let config = config.to_str().unwrap();
    let log = log.to_str().unwrap();
    let (code, out, err) = cli(
        &["audit", "verify", "--config", config, "--checkpoint", log],
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.matches(": ok, the chain reaches it").count(),
        cp_lines,
        "{out}"
    );

    // Cut the tail: the records from seq 4 on.
    let sink =
        tollgate_broker::audit::sqlite::SqliteAudit::open(&b.dir.path().join("state/audit.sqlite"));
    let pool = sink.pool().await.unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq >= 4")
        .execute(pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, out, _) = cli(&["audit", "verify", "--config", config], None).await;
    assert_eq!(code, 0, "a chain alone cannot see a cut tail: {out}");
    assert!(
        out.contains("audit chain intact: 3 record(s)") && out.contains("--checkpoint"),
        "{out}"
    );
    let (code, out, _) = cli(
        &["audit", "verify", "--config", config, "--checkpoint", log],
        None,
    )
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("FAILED: TRUNCATED: the chain ends at seq 3"),
        "{out}"
    );
    let (code, _, err) = cli(
        &[
            "audit",
            "verify",
            "--config",
            config,
            "--checkpoint",
            "not a checkpoint",
        ],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no audit checkpoint found"), "{err}");
}

/// `--listen 127.0.0.1:0` without `public_url`: discovery, the JWKS URL and the tokens' issuer name the
/// address the broker really listens on (not `:0`), and the JWKS there verifies the token. Two such brokers
/// on one PostgreSQL store both start: each issues as its own address and takes no part in the store's
/// shared-issuer check (docs/operations.md), so a token of one is refused by the other. (Replicas with
/// configured `public_url`s are checked: `revocation_restart.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_advertises_the_bound_address() {
    let schema = format!("listen0_{}", uuid::Uuid::new_v4().simple());
    let store = format!(
        "[store]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/test\"\nschema = \"{schema}\"\n"
    );
    let a = spawn_broker(&store).await;
    let b = spawn_broker(&store).await;
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for r in [&a, &b] {
        assert!(!r.url.ends_with(":0"), "{}", r.url);
        let d: serde_json::Value = http
            .get(format!("{}/.well-known/openid-configuration", r.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["issuer"], r.url.as_str(), "{d}");
        let jwks_uri = d["jwks_uri"].as_str().unwrap();
        assert_eq!(jwks_uri, format!("{}/.well-known/jwks.json", r.url));
        let jwks: serde_json::Value = http
            .get(jwks_uri)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = mint(&http, &r.url).await;
        let header = jsonwebtoken::decode_header(&token).unwrap();
        let kid = header.kid.unwrap();
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == kid.as_str()),
            "the advertised JWKS holds the signing key"
        );
        use base64::Engine;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], r.url.as_str());
        let usage = |url: &str, t: &str| {
            http.get(format!("{url}/v1/tollgate/usage"))
                .bearer_auth(t.to_string())
                .send()
        };
        assert_eq!(usage(&r.url, &token).await.unwrap().status(), 200);
        tokens.push(token);
    }
    // Each issuer is its own: A's token is foreign to B.
    let r = http
        .get(format!("{}/v1/tollgate/usage", b.url))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let log = std::fs::read_to_string(a.dir.path().join("broker.log")).unwrap();
    assert!(log.contains("no [server] public_url and port 0"), "{log}");
    drop((a, b));
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await;
}
