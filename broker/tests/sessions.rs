//! Issue 15, spend by session: requests carrying Codex's session headers through a real broker (SQLite and
//! PostgreSQL), then `GET /admin/v1/sessions/{id}`, the report `by=session` / `by=request_kind`, the audit
//! detail and `tollgate-broker admin session` show exactly what the mock upstream reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{Value, json};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const SESSION: &str = "01a24d31-1601-74d1-a678-1b8208d6082a";
const SUB_THREAD: &str = "01a24d31-2222-7000-8000-000000000002";
const TURN: &str = "01a24d31-161e-7ce0-8b64-70316f7b0cc2";
const SUB_TURN: &str = "01a24d31-3333-7000-8000-000000000003";
const OTHER_SESSION: &str = "01a24d31-9999-7000-8000-000000000009";

/// The headers Codex 0.171 sends (`testdata/codex-0.171/`), for one request of a session.
fn codex_headers(
    session: &str,
    thread: &str,
    turn: &str,
    kind: &str,
    subagent: Option<&str>,
) -> Vec<(&'static str, String)> {
    let meta = json!({
        "installation_id": "00000000-0000-0000-0000-000000000000",
        "session_id": session, "thread_id": thread, "agent_name": "/root", "turn_id": turn,
        "window_id": format!("{thread}:0"), "window_number": 0, "request_kind": kind,
        "turn_trigger": "exec", "sandbox_mode": "danger-full-access", "model": "gpt-5.5",
    });
    let mut h = vec![
        ("session-id", session.to_string()),
        ("thread-id", thread.to_string()),
        ("originator", "codex_exec".to_string()),
        ("x-client-request-id", thread.to_string()),
        ("x-codex-window-id", format!("{thread}:0")),
        ("x-codex-beta-features", "remote_compaction_v2".to_string()),
        ("x-codex-turn-metadata", meta.to_string()),
    ];
    if let Some(s) = subagent {
        h.push(("x-openai-subagent", s.to_string()));
        h.push(("x-codex-parent-thread-id", session.to_string()));
    }
    h
}

async fn send(
    b: &common::Broker,
    token: &str,
    headers: &[(&'static str, String)],
    stream: bool,
) -> String {
    let mut req = b
        .http
        .post(format!("{}/v1/responses", b.url))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-5.5", "input": "hi", "stream": stream}));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Usage the mock reports from now on.
fn usage(b: &common::Broker, input: u64, cached: u64, output: u64) {
    b.mock.update_config(|c| {
        c.input_tokens = Some(input);
        c.cached_tokens = cached;
        c.output_tokens = Some(output);
    });
}

/// The price of the test config's `gpt-5.5` (1.25 / 0.125 / 10 USD per million tokens) in nano-dollars.
fn cost(input: i64, cached: i64, output: i64) -> i64 {
    (input - cached) * 1_250 + cached * 125 + output * 10_000
}

/// The sums of one split row (or subtotal) as `(requests, input, cached, output, cost_nanos)`.
fn sums(v: &Value) -> (i64, i64, i64, i64, i64) {
    let n = |k: &str| v[k].as_i64().unwrap_or_else(|| panic!("{k} in {v}"));
    (
        n("requests"),
        n("input_tokens"),
        n("cached_input_tokens"),
        n("output_tokens"),
        n("cost_nanos"),
    )
}

async fn session_spend(extra: &str) -> common::Broker {
    let b = common::start(extra).await;
    let alice = b.mint(common::CREDENTIAL).await;
    let bob = b.mint("bob-credential").await;
    let turn = codex_headers(SESSION, SESSION, TURN, "turn", None);
    // Two turn requests (one streamed), a compaction, and a sub-agent's turn, each with its own usage.
    usage(&b, 100, 40, 20);
    send(&b, &alice, &turn, true).await;
    send(&b, &alice, &turn, false).await;
    usage(&b, 300, 0, 50);
    send(
        &b,
        &alice,
        &codex_headers(SESSION, SESSION, TURN, "compaction", None),
        true,
    )
    .await;
    usage(&b, 70, 10, 7);
    send(
        &b,
        &alice,
        &codex_headers(SESSION, SUB_THREAD, SUB_TURN, "turn", Some("thread_spawn")),
        false,
    )
    .await;
    // Another session, a request without Codex headers, and one whose headers are all invalid.
    usage(&b, 1_000, 0, 100);
    send(
        &b,
        &bob,
        &codex_headers(OTHER_SESSION, OTHER_SESSION, TURN, "turn", None),
        false,
    )
    .await;
    send(&b, &bob, &[], false).await;
    send(
        &b,
        &bob,
        &[
            ("session-id", "a b".to_string()),
            ("thread-id", "x".repeat(129)),
            ("originator", "codex/exec".to_string()),
            ("x-openai-subagent", "sub agent".to_string()),
            ("x-codex-turn-metadata", "{not json".to_string()),
        ],
        false,
    )
    .await;

    // One admin call: the session's cost and tokens, split by request kind and sub-agent.
    let (s, v) = b.admin_get(&format!("/admin/v1/sessions/{SESSION}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["session_id"], SESSION);
    assert_eq!(v["principals"], json!(["alice"]));
    assert_eq!(
        (v["threads"].as_i64(), v["turns"].as_i64()),
        (Some(2), Some(2))
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    let row = |kind: &str, sub: Value| {
        rows.iter()
            .find(|r| r["request_kind"] == kind && r["subagent"] == sub)
            .unwrap_or_else(|| panic!("{kind}/{sub} in {v}"))
    };
    assert_eq!(
        sums(row("turn", Value::Null)),
        (2, 200, 80, 40, 2 * cost(100, 40, 20))
    );
    assert_eq!(
        sums(row("compaction", Value::Null)),
        (1, 300, 0, 50, cost(300, 0, 50))
    );
    assert_eq!(
        sums(row("turn", json!("thread_spawn"))),
        (1, 70, 10, 7, cost(70, 10, 7))
    );
    assert_eq!(sums(&v["compaction"]), (1, 300, 0, 50, cost(300, 0, 50)));
    assert_eq!(sums(&v["subagents"]), (1, 70, 10, 7, cost(70, 10, 7)));
    let total = 2 * cost(100, 40, 20) + cost(300, 0, 50) + cost(70, 10, 7);
    assert_eq!(sums(&v["totals"]), (4, 570, 90, 97, total));
    assert_eq!(
        v["totals"]["cost_usd"],
        tollgate_broker::governance::report::usd9(total)
    );

    // The report by session and by request kind: the same numbers, and the requests without a session.
    let (s, r) = b.admin_get("/admin/v1/report?by=session").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["by"], json!(["session"]));
    let by = |r: &Value, col: &str, key: Value| {
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x[col] == key)
            .map(sums)
            .unwrap_or_else(|| panic!("{key} in {r}"))
    };
    assert_eq!(by(&r, "session", json!(SESSION)), (4, 570, 90, 97, total));
    let big = cost(1_000, 0, 100);
    assert_eq!(
        by(&r, "session", json!(OTHER_SESSION)),
        (1, 1_000, 0, 100, big)
    );
    assert_eq!(by(&r, "session", Value::Null), (2, 2_000, 0, 200, 2 * big));
    let (s, r) = b.admin_get("/admin/v1/report?by=day,request_kind").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        by(&r, "request_kind", json!("compaction")),
        (1, 300, 0, 50, cost(300, 0, 50))
    );
    assert_eq!(
        by(&r, "request_kind", json!("turn")),
        (4, 1_270, 90, 147, total - cost(300, 0, 50) + big)
    );
    assert_eq!(by(&r, "request_kind", Value::Null).0, 2);

    // The audit detail carries the validated fields, and nothing for requests without them.
    let audit = b.state.audit().as_ref().unwrap();
    audit.flush().await;
    let recs = audit.sink().scan(0, 100_000).await.unwrap();
    let details: Vec<&Value> = recs
        .iter()
        .filter(|r| r.event.kind.map(|k| k.as_str()) == Some("request"))
        .map(|r| &r.event.detail)
        .collect();
    assert_eq!(details.len(), 7);
    let sub = details
        .iter()
        .find(|d| d["subagent"] == "thread_spawn")
        .expect("the sub-agent's record");
    assert_eq!(sub["session_id"], SESSION);
    assert_eq!(sub["thread_id"], SUB_THREAD);
    assert_eq!(sub["turn_id"], SUB_TURN);
    assert_eq!(sub["window_id"], format!("{SUB_THREAD}:0"));
    assert_eq!(sub["request_kind"], "turn");
    assert_eq!(sub["originator"], "codex_exec");
    assert_eq!(
        details
            .iter()
            .filter(|d| d["request_kind"] == "compaction")
            .count(),
        1
    );
    assert_eq!(
        details
            .iter()
            .filter(|d| d.get("session_id").is_none())
            .count(),
        2,
        "no session fields without (valid) headers"
    );
    assert!(details.iter().all(|d| {
        d.get("thread_id")
            .is_none_or(|t| t.as_str().unwrap().len() <= 128)
    }),);

    // An unknown session answers zeros; an id outside the character set is refused.
    let (s, v) = b.admin_get(&format!("/admin/v1/sessions/{SUB_TURN}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sums(&v["totals"]), (0, 0, 0, 0, 0));
    assert_eq!(v["rows"], json!([]));
    let (s, v) = b.admin_get("/admin/v1/sessions/a%20b").await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("session_id"),
        "{v}"
    );
    let r = b
        .http
        .get(format!("{}/admin/v1/sessions/{SESSION}", b.url))
        .bearer_auth("not-the-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    b
}

async fn cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-broker"));
    cmd.args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_ADMIN_URL")
        .env("TOLLGATE_ADMIN_KEY", common::ADMIN_KEY)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
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
async fn session_spend_sqlite_and_the_cli() {
    let b = session_spend("").await;
    let url = b.url.clone();
    let (code, out, err) = cli(&["admin", "--url", &url, "session", SESSION]).await;
    assert_eq!(code, 0, "{err}");
    let total = 2 * cost(100, 40, 20) + cost(300, 0, 50) + cost(70, 10, 7);
    let usd = tollgate_broker::governance::report::usd9(total);
    assert!(
        out.contains(&format!("Session {SESSION}: 4 requests")),
        "{out}"
    );
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("{start} in {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("turn")[..3], ["turn", "-", "2"], "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("turn") && l.contains("thread_spawn")),
        "{out}"
    );
    assert_eq!(
        line("compaction").last().copied(),
        Some(tollgate_broker::governance::report::usd9(cost(300, 0, 50)).as_str())
    );
    assert_eq!(
        line("sub-agents").last().copied(),
        Some(tollgate_broker::governance::report::usd9(cost(70, 10, 7)).as_str())
    );
    assert_eq!(line("total").last().copied(), Some(usd.as_str()), "{out}");
    let (code, out, err) = cli(&[
        "admin", "--url", &url, "session", SESSION, "--format", "json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"]["cost_nanos"], total);
    let (code, _, err) = cli(&["admin", "--url", &url, "session", "a/b"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("session id"), "{err}");
    let (code, out, err) = cli(&["admin", "--url", &url, "report", "--by", "session"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(SESSION) && out.contains("(none)"), "{out}");
}

#[tokio::test]
async fn session_spend_postgres() {
    let schema = format!("sessions_{}", uuid::Uuid::new_v4().simple());
    let b = session_spend(&format!(
        "[store]\nkind = \"postgres\"\nurl = \"{PG_URL}\"\nschema = \"{schema}\"\n"
    ))
    .await;
    if let tollgate_broker::governance::store::StorePool::Postgres(pool) =
        b.state.governance().store.pool()
    {
        // The columns are real columns (NULL where nothing valid was sent).
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM spend WHERE session_id IS NULL AND subagent IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(n, 2);
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
    } else {
        panic!("not on PostgreSQL");
    }
}
