//! Issue 15's proof: long sessions of the real Codex CLI through the broker, on every upstream kind
//! (`openai`, `openai-chat`, `anthropic`), over HTTP and over WebSocket, on both pinned Codex versions.
//!
//! Each session is one `codex exec` of more than 20 requests, scripted on the model's side by a
//! [`SessionScript`] that the two mock targets of the route share: shell commands (`exec_command`), two
//! `apply_patch` calls that create and then edit a file in Codex's workspace, a `tool_search` that finds
//! the tool of a small stdio MCP server the test ships (`support/mcp_marker.py`) and a call to it, a
//! `tool_search` for the sub-agent tools, a `spawn_agent` (namespace `multi_agent_v1`) whose sub-agent
//! answers through the broker, a `wait_agent` that brings its answer back, and one automatic compaction
//! (`model_auto_compact_token_limit`; the step before reports more prompt tokens than the limit). Midway,
//! the first target starts answering 500 before the first byte; the broker fails over to the second and
//! the session completes there. Then the broker's record of the session (`GET /admin/v1/sessions/{id}`)
//! must equal, to the token, the sum of what the two mocks reported, with compaction and sub-agent
//! requests in their own rows.
//!
//! The twelve sessions run concurrently, each with its own broker and pair of mocks (a session's script
//! and its usage sums must not mix with another's).

mod support;

use futures::future::join_all;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::*;
use tollgate_testkit::{
    Fault, MockConfig, MockHandle, RecordedRequest, ScriptStep, SessionScript, spawn,
};

const SESSION: Duration = Duration::from_secs(150);
const ADMIN_KEY: &str = "long-session-admin-key";
/// Codex's `model_auto_compact_token_limit`: far above what a request of this session costs (its mock
/// reports a quarter of the body's bytes, under 30 000), below what the step that forces it reports. (With
/// a tiny limit Codex compacts after every request, and each compaction drops the `tool_search` results
/// from its history, so the deferred MCP and sub-agent tools could never be called: one compaction at a
/// chosen place instead.)
const COMPACT_LIMIT: u64 = 150_000;
const FORCING_TOKENS: u64 = 160_000;
/// Prompt tokens every answer reports as read from the cache, and (Anthropic only) written to it.
const CACHED_TOKENS: u64 = 2_048;
const CACHE_WRITE_TOKENS: u64 = 512;
/// The first target starts failing once it has answered this many requests.
const FAIL_AFTER: usize = 8;
const MCP_MARKER: &str = "long-session-marker-7f3e";
const MODEL: &str = "gpt-5.5";

#[derive(Clone, Copy, Debug)]
enum Upstream {
    OpenAi,
    Chat,
    Anthropic,
}

impl Upstream {
    fn kind(self) -> &'static str {
        match self {
            Upstream::OpenAi => "openai",
            Upstream::Chat => "openai-chat",
            Upstream::Anthropic => "anthropic",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Upstream::OpenAi => "/v1/responses",
            Upstream::Chat => "/v1/chat/completions",
            Upstream::Anthropic => "/v1/messages",
        }
    }
    fn upstream_model(self) -> &'static str {
        match self {
            Upstream::OpenAi => MODEL,
            Upstream::Chat => "qwen2.5-coder",
            Upstream::Anthropic => "claude-sonnet-4-5",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Http,
    WebSocket,
}

/// Two targets of one kind for every model, `a` first.
fn spec(up: Upstream, a: &str, b: &str) -> BrokerSpec {
    let (kind, model) = (up.kind(), up.upstream_model());
    BrokerSpec {
        extra_config: format!(
            "[providers.a]\nkind = \"{kind}\"\nbase_url = \"{a}\"\napi_key_env = \"E2E_UPSTREAM_KEY\"\n\n\
             [providers.b]\nkind = \"{kind}\"\nbase_url = \"{b}\"\napi_key_env = \"E2E_UPSTREAM_KEY\"\n\n\
             [[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"a\", model = \"{model}\" }}, {{ provider = \"b\", model = \"{model}\" }}]\n\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1.25\", output = \"10\" }}\n\n\
             [admin]\nkey_sha256 = \"{admin}\"\n",
            admin = sha256_hex(ADMIN_KEY)
        ),
        policy: "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nteam = \"e2e\"\nmodels = [\"*\"]\nmax_ttl_secs = 3600\n".into(),
        env: vec![("E2E_UPSTREAM_KEY".into(), UPSTREAM_KEY.into())],
    }
}

const NOTES_V1: &str = "# Notes\nline one\n";
const NOTES_V2: &str = "# Notes\nline one\nline two from the second patch\n";

/// The model's side of the session, in order. 20 steps, then the final answer: with the compaction and
/// the sub-agent's request, 23 requests answered.
fn steps() -> Vec<ScriptStep> {
    let exec = |cmd: &str| ScriptStep::function("exec_command", json!({ "cmd": cmd }));
    vec![
        exec("mkdir -p src && echo start > src/log.txt && cat src/log.txt"),
        ScriptStep::custom(
            "apply_patch",
            "*** Begin Patch\n*** Add File: notes.md\n+# Notes\n+line one\n*** End Patch\n",
        ),
        exec("cat notes.md"),
        ScriptStep::tool_search("record marker"),
        ScriptStep::namespaced(
            "mcp__marker",
            "record_marker",
            json!({ "text": MCP_MARKER }),
        ),
        exec("echo 5 >> src/log.txt"),
        ScriptStep::custom(
            "apply_patch",
            "*** Begin Patch\n*** Update File: notes.md\n@@\n line one\n+line two from the second patch\n*** End Patch\n",
        ),
        ScriptStep::tool_search("spawn agent"),
        ScriptStep::namespaced(
            "multi_agent_v1",
            "spawn_agent",
            json!({ "message": "SUBAGENT_TASK: report back at once" }),
        ),
        ScriptStep::namespaced(
            "multi_agent_v1",
            "wait_agent",
            json!({ "targets": ["{{agent_id}}"], "timeout_ms": 60000 }),
        ),
        // Its answer reports more prompt tokens than the limit: Codex compacts before the next request.
        exec("echo 10 >> src/log.txt").reporting_input_tokens(FORCING_TOKENS),
        exec("echo 11 >> src/log.txt"),
        exec("echo 12 >> src/log.txt"),
        exec("echo 13 >> src/log.txt"),
        exec("echo 14 >> src/log.txt"),
        exec("echo 15 >> src/log.txt"),
        exec("echo 16 >> src/log.txt"),
        exec("echo 17 >> src/log.txt"),
        exec("cat notes.md"),
        exec("cat src/log.txt"),
    ]
}

/// What one session proved, for the summary line.
struct Outcome {
    name: String,
    /// `/v1/responses` exchanges the broker counted: WebSocket upgrades (101) and POSTs answered (200).
    upgrades: u64,
    posts: u64,
    requests: usize,
    compactions: usize,
    subagent: usize,
    on_a: usize,
    on_b: usize,
}

/// The id of the root session among the rollouts Codex wrote (the sub-agent has its own thread and file;
/// the root's starts first, so its file sorts first).
fn root_session_id(codex: &CodexEnv) -> String {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && name.starts_with("rollout-")
                && name.ends_with(".jsonl")
            {
                out.push(name.to_string());
            }
        }
    }
    let mut names = Vec::new();
    walk(&codex.codex_home().join("sessions"), &mut names);
    names.sort();
    let first = names.first().expect("a rollout file");
    let stem = first.trim_end_matches(".jsonl");
    stem[stem.len().saturating_sub(36)..].to_string()
}

/// Every answered inference request of the mocks, in the order the script answered them.
fn answered(mocks: &[&MockHandle], path: &str) -> Vec<RecordedRequest> {
    let mut all: Vec<RecordedRequest> = mocks
        .iter()
        .flat_map(|m| m.requests_to(path))
        .filter(|r| r.status == 200 && r.completed)
        .collect();
    all.sort_by_key(|r| r.scripted.as_ref().map_or(usize::MAX, |s| s.order));
    all
}

async fn session(version: String, up: Upstream, transport: Transport) -> Outcome {
    let name = format!("Codex {version}, {}, {transport:?}", up.kind());
    // Prompt-cache reads on every answer, cache writes too where the API reports them (Anthropic's
    // `cache_creation_input_tokens`), so the record is checked for every kind of token.
    let config = MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        cached_tokens: CACHED_TOKENS,
        cache_creation_tokens: CACHE_WRITE_TOKENS,
        ..MockConfig::default()
    };
    let (a, b) = (spawn(config.clone()).await, spawn(config).await);
    let script = SessionScript::new(steps());
    a.set_script(script.clone());
    b.set_script(script.clone());
    let broker = Broker::start(spec(up, &a.base_url(), &b.base_url())).await;

    let ws = matches!(transport, Transport::WebSocket);
    let codex = CodexEnv::new(
        &broker.url,
        MODEL,
        &format!("supports_websockets = {ws}\nrequest_max_retries = 0\nstream_max_retries = 0"),
    )
    .with_version(&version);
    let mcp_log = codex.home.path().join("mcp.log");
    let config_path = codex.codex_home().join("config.toml");
    let base = std::fs::read_to_string(&config_path).expect("codex config");
    std::fs::write(
        &config_path,
        format!(
            "model_auto_compact_token_limit = {COMPACT_LIMIT}\n{base}\n[mcp_servers.marker]\ncommand = {python:?}\nargs = [{server:?}, {log:?}]\n",
            python = python_bin().display().to_string(),
            server = repo_root().join("tests/support/mcp_marker.py").display().to_string(),
            log = mcp_log.display().to_string(),
        ),
    )
    .expect("codex config");

    // Midway, the first target starts failing before the first byte, for good (once its record shows
    // FAIL_AFTER answers; the watcher polls the record, it does not wait for time).
    let failing = {
        let state = a.state();
        let path = up.path();
        tokio::spawn(async move {
            loop {
                let served = state
                    .requests()
                    .iter()
                    .filter(|r| r.path == path && r.status == 200)
                    .count();
                if served >= FAIL_AFTER {
                    state.push_faults((0..100).map(|_| Fault {
                        status: Some(500),
                        ..Fault::default()
                    }));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let run = codex
        .exec("run the long session, step by step", SESSION)
        .await;
    failing.abort();
    let log = broker.log();
    assert_eq!(
        run.status,
        Some(0),
        "{name}: codex failed:\n{}\n--- broker log ---\n{log}",
        run.all()
    );
    assert!(
        run.stdout.contains(&script.final_text),
        "{name}: no final answer:\n{}",
        run.all()
    );
    if ws {
        assert!(
            !run.all().contains("Falling back from WebSockets"),
            "{name}: Codex fell back to HTTP:\n{}",
            run.all()
        );
    }

    let mocks = [&a, &b];
    let served = answered(&mocks, up.path());
    let what = |r: &RecordedRequest| {
        r.scripted
            .as_ref()
            .map(|s| s.what.clone())
            .unwrap_or_default()
    };
    let kinds: Vec<String> = served.iter().map(what).collect();
    let count = |k: &str| kinds.iter().filter(|w| w.as_str() == k).count();
    // Every step ran, in order, each on a tool the request declared.
    assert_eq!(script.steps_done(), steps().len(), "{name}: {kinds:?}");
    assert!(
        !kinds.iter().any(|k| k.contains("undeclared")),
        "{name}: a step's tool was not declared to the upstream: {kinds:?}"
    );
    assert_eq!(count("final"), 1, "{name}: {kinds:?}");
    assert!(served.len() >= 20, "{name}: {} requests", served.len());

    // The shell commands and both patches ran in Codex's workspace.
    let work = codex.workdir();
    assert_eq!(
        read(&work.join("notes.md")),
        NOTES_V2,
        "{name}: apply_patch did not edit the file"
    );
    let shell_log = read(&work.join("src/log.txt"));
    assert_eq!(
        shell_log.lines().collect::<Vec<_>>(),
        ["start", "5", "10", "11", "12", "13", "14", "15", "16", "17"],
        "{name}"
    );
    // What went back to the model: the request answered with step N carries step N-1's output.
    let carries = |step: usize, text: &str| {
        let escaped = serde_json::to_string(text).expect("json");
        let escaped = &escaped[1..escaped.len() - 1];
        let r = served
            .iter()
            .find(|r| what(r) == format!("step {step}"))
            .unwrap_or_else(|| panic!("{name}: no step {step}: {kinds:?}"));
        assert!(
            r.body.to_string().contains(escaped),
            "{name}: the request of step {step} does not carry {text:?}"
        );
    };
    carries(3, NOTES_V1);
    carries(19, NOTES_V2);

    // The MCP server was started, listed and called with the model's argument, and its answer went back.
    let mcp = read(&mcp_log);
    for line in [
        "method initialize",
        "method tools/list",
        "method tools/call",
        &format!("call {MCP_MARKER}"),
    ] {
        assert!(
            mcp.lines().any(|l| l == line),
            "{name}: {line:?} not in:\n{mcp}"
        );
    }
    carries(5, &format!("marker recorded: {MCP_MARKER}"));

    // The sub-agent: spawn_agent answered with its id and nickname, the sub-agent's one request went
    // through the broker, and wait_agent brought its answer back to the root agent.
    assert_eq!(count("subagent"), 1, "{name}: {kinds:?}");
    carries(9, "agent_id");
    carries(9, "nickname");
    carries(10, &script.subagent_reply);

    // One automatic compaction, right after the step that reported more than the limit.
    let compactions = count("summary");
    assert_eq!(compactions, 1, "{name}: {kinds:?}");
    let at = kinds.iter().position(|k| k == "summary").expect("summary");
    assert_eq!(kinds[at - 1], "step 10", "{name}: {kinds:?}");
    if let Upstream::OpenAi = up {
        let meta = served[at].header("x-codex-turn-metadata").unwrap_or("");
        assert!(
            meta.contains("\"request_kind\":\"compaction\""),
            "{name}: {meta}"
        );
    }

    // The first target failed midway and the second took over.
    let a_failed = a
        .requests_to(up.path())
        .iter()
        .filter(|r| r.status == 500)
        .count();
    let on_a = answered(&[&a], up.path()).len();
    let on_b = answered(&[&b], up.path()).len();
    // One failed attempt: the broker then keeps the session (root agent, sub-agent and compaction share
    // its `session-id`) on the second target, and the first is never tried again.
    assert_eq!(a_failed, 1, "{name}: failed attempts on the first target");
    assert!(
        on_a >= FAIL_AFTER && on_b >= 1,
        "{name}: a {on_a}, b {on_b}"
    );

    // The broker recorded exactly what the mocks reported, split by request kind and sub-agent.
    session_spend_matches(&broker, &codex, &served, &kinds, up, &name).await;
    assert_no_secret(&log, &[UPSTREAM_KEY, CREDENTIAL], "broker log");
    let (upgrades, posts) = (
        responses_exchanges(&broker, "101").await,
        responses_exchanges(&broker, "200").await,
    );
    if ws {
        // Codex held a WebSocket (the root agent's and the sub-agent's), and sent no turn as a POST.
        assert!(upgrades >= 1, "{name}: no WebSocket upgrade");
        assert_eq!(posts, 0, "{name}: turns went over HTTP");
    } else {
        assert_eq!(upgrades, 0, "{name}");
        assert_eq!(posts as usize, served.len(), "{name}");
    }
    Outcome {
        name,
        upgrades,
        posts,
        requests: served.len(),
        compactions,
        subagent: count("subagent"),
        on_a,
        on_b,
    }
}

/// The session row (`request_kind`, `subagent`) of a request by what the script answered.
fn row_of(what: &str) -> (&'static str, Value) {
    match what {
        "summary" => ("compaction", Value::Null),
        "subagent" => ("turn", json!("collab_spawn")),
        _ => ("turn", Value::Null),
    }
}

/// `tollgate_http_requests_total` for the route `/v1/responses` and `status` (from `/metrics`).
async fn responses_exchanges(broker: &Broker, status: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", broker.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("tollgate_http_requests_total{")
                && l.contains("route=\"/v1/responses\"")
                && l.contains(&format!("status=\"{status}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn session_spend_matches(
    broker: &Broker,
    codex: &CodexEnv,
    served: &[RecordedRequest],
    kinds: &[String],
    up: Upstream,
    name: &str,
) {
    let id = root_session_id(codex);
    let r = reqwest::Client::new()
        .get(format!("{}/admin/v1/sessions/{id}", broker.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("session report");
    assert_eq!(r.status(), 200, "{name}");
    let v: Value = r.json().await.expect("json");
    let sum = |pick: &dyn Fn(&str) -> bool, f: fn(&tollgate_testkit::ReportedUsage) -> u64| {
        served
            .iter()
            .zip(kinds)
            .filter(|(_, k)| pick(k))
            .map(|(r, _)| r.usage.as_ref().map_or(0, f))
            .sum::<u64>()
    };
    let check = |totals: &Value, pick: &dyn Fn(&str) -> bool, what: &str| {
        let n = kinds.iter().filter(|k| pick(k)).count();
        assert_eq!(totals["requests"], n, "{name}, {what}: {v}");
        assert_eq!(
            totals["input_tokens"],
            sum(pick, |u| u.input_tokens),
            "{name}, {what}: {v}"
        );
        assert_eq!(
            totals["cached_input_tokens"],
            sum(pick, |u| u.cached_tokens),
            "{name}, {what}: {v}"
        );
        assert_eq!(
            totals["output_tokens"],
            sum(pick, |u| u.output_tokens),
            "{name}, {what}: {v}"
        );
        // Only Anthropic's wire reports cache writes.
        let writes = match up {
            Upstream::Anthropic => sum(pick, |u| u.cache_creation_tokens),
            _ => 0,
        };
        assert_eq!(totals["cache_write_tokens"], writes, "{name}, {what}: {v}");
        assert!(writes > 0 || !matches!(up, Upstream::Anthropic), "{name}");
        assert!(sum(pick, |u| u.cached_tokens) > 0, "{name}, {what}");
    };
    check(&v["totals"], &|_| true, "totals");
    check(&v["compaction"], &|k| k == "summary", "compaction");
    check(&v["subagents"], &|k| k == "subagent", "sub-agents");
    // Each request in its row, over WebSocket as over HTTP: the root agent's turns, its compaction, the
    // sub-agent's turn (`x-openai-subagent: collab_spawn`).
    let rows = v["rows"].as_array().expect("rows");
    let expected = [
        ("turn", Value::Null),
        ("compaction", Value::Null),
        ("turn", json!("collab_spawn")),
    ];
    assert_eq!(rows.len(), expected.len(), "{name}: {v}");
    for (kind, subagent) in expected {
        let row = rows
            .iter()
            .find(|r| r["request_kind"] == kind && r["subagent"] == subagent)
            .unwrap_or_else(|| panic!("{name}: no row ({kind}, {subagent}) in {v}"));
        let pick = |k: &str| row_of(k) == (kind, subagent.clone());
        check(row, &pick, &format!("row ({kind}, {subagent})"));
    }
    assert_eq!(v["principals"], json!(["dev"]), "{name}");
    // The root agent's thread and turn, the sub-agent's thread and turn.
    assert_eq!(
        (&v["threads"], &v["turns"]),
        (&json!(2), &json!(2)),
        "{name}: {v}"
    );
}

/// Every (version, upstream, transport), concurrently; every failure is reported, not only the first.
async fn matrix(ups: &[Upstream]) {
    let started = std::time::Instant::now();
    let mut runs = Vec::new();
    for version in codex_versions() {
        for &up in ups {
            for transport in [Transport::Http, Transport::WebSocket] {
                let v = version.clone();
                runs.push(tokio::spawn(session(v, up, transport)));
            }
        }
    }
    let mut failures = Vec::new();
    for r in join_all(runs).await {
        match r {
            Ok(o) => eprintln!(
                "{}: {} requests ({} compaction, {} sub-agent), {} on the first target, {} on the second; {} WebSocket upgrades, {} POSTs",
                o.name, o.requests, o.compactions, o.subagent, o.on_a, o.on_b, o.upgrades, o.posts
            ),
            Err(e) => failures.push(
                e.try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_else(|| "a session was cancelled".into()),
            ),
        }
    }
    eprintln!(
        "{} sessions in {:?}",
        codex_versions().len() * ups.len() * 2,
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n=====\n\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn long_codex_sessions_through_openai() {
    matrix(&[Upstream::OpenAi]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_codex_sessions_through_openai_chat() {
    matrix(&[Upstream::Chat]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_codex_sessions_through_anthropic() {
    matrix(&[Upstream::Anthropic]).await;
}
