//! The real Claude Code CLI (`claude -p`, pinned in scripts/install-test-tools.sh) through the real broker
//! and helper, set up by `tollgate-token setup --agent claude-code`, against a faithful mock upstream:
//! once as an `anthropic` provider (passed through), once as an `openai-chat` provider (translated). A plain
//! turn, a tool turn that edits a file in a git repository, a 401 that makes Claude Code re-run the helper,
//! a budget refusal it shows in words; the broker's recorded usage equals what the mock reported.

mod support;

use std::time::Duration;
use support::claude::ClaudeEnv;
use support::{Broker, BrokerSpec, UPSTREAM_KEY, assert_no_secret};
use tollgate_testkit::mock::{MockConfig, spawn};

const TURN: Duration = Duration::from_secs(90);
const MODEL: &str = "claude-sonnet-4-5";
const ADMIN_KEY: &str = "e2e-claude-code-admin-key";
/// The session id the tool turn runs under (`claude --session-id`).
const SESSION: &str = "5b0f3c1e-8d2a-4c4e-9f57-0a3d2b1c9e11";

fn spec(kind: &str, upstream: &str, budget: &str) -> BrokerSpec {
    BrokerSpec {
        extra_config: format!(
            "[providers.up]\nkind = \"{kind}\"\nbase_url = \"{upstream}\"\napi_key_env = \"E2E_UPSTREAM_KEY\"\n\n\
             [[routes]]\nmodel = \"claude-haiku-4-5\"\ntargets = [{{ provider = \"up\" }}]\n\n\
             [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"up\" }}]\n\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1.25\", output = \"10\" }}\n\
             [admin]\nkey_sha256 = \"{admin}\"\n{budget}",
            admin = support::sha256_hex(ADMIN_KEY)
        ),
        policy: "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nteam = \"e2e\"\n\
                 models = [\"claude-*\"]\nmax_ttl_secs = 3600\n"
            .into(),
        env: vec![("E2E_UPSTREAM_KEY".into(), UPSTREAM_KEY.into())],
    }
}

/// The upstream path each provider kind is called on.
fn upstream_path(kind: &str) -> &'static str {
    if kind == "anthropic" {
        "/v1/messages"
    } else {
        "/v1/chat/completions"
    }
}

async fn turns_through(kind: &str) {
    let mock = spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        tool_name: Some("Bash".into()),
        tool_command: "echo edited-by-claude >> notes.txt".into(),
        cached_tokens: 16,
        cache_creation_tokens: if kind == "anthropic" { 8 } else { 0 },
        ..MockConfig::default()
    })
    .await;
    let mut broker = Broker::start(spec(kind, &mock.base_url(), "")).await;
    let env = ClaudeEnv::new(&broker.url);
    let settings = env.settings();
    assert_eq!(settings["env"]["ANTHROPIC_BASE_URL"], broker.url.as_str());
    assert_eq!(
        settings["env"]["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"],
        "240000"
    );
    let model = ["--model", MODEL];

    // A plain turn.
    let run = env.run("say hi", &model, TURN).await;
    assert_eq!(run.status, Some(0), "{kind}: {}", run.all());
    assert!(
        run.stdout.contains("mock reply to:"),
        "{kind}: {}",
        run.all()
    );
    assert_eq!(broker.mints(), 1, "{kind}: one mint for the first turn");

    // A tool turn: the model asks for Bash, Claude Code runs it in the repository, the result goes back.
    let before = mock.requests_to(upstream_path(kind)).len();
    let run = env
        .run(
            "USE_TOOL: append a line to notes.txt",
            &[
                "--model",
                MODEL,
                "--allowedTools",
                "Bash",
                "--session-id",
                SESSION,
            ],
            TURN,
        )
        .await;
    assert_eq!(run.status, Some(0), "{kind}: {}", run.all());
    let notes = std::fs::read_to_string(env.workdir().join("notes.txt")).expect("notes");
    assert_eq!(
        notes,
        "first line\nedited-by-claude\n",
        "{kind}: {}",
        run.all()
    );
    assert!(run.stdout.contains("tool said:"), "{kind}: {}", run.all());
    let posts = mock.requests_to(upstream_path(kind));
    let last = posts.last().expect("posts");
    if kind == "anthropic" {
        // Passed through: Claude Code's own body and beta flags, our key, never the Tollgate token.
        assert_eq!(last.header("x-api-key"), Some(UPSTREAM_KEY));
        assert!(last.header("authorization").is_none());
        assert!(
            last.header("anthropic-beta")
                .is_some_and(|b| b.contains("claude-code-"))
        );
        assert!(last.body["tools"].as_array().is_some_and(|t| t.len() > 5));
    } else {
        // Translated: a tool message answers the Bash call.
        let msgs = last.body["messages"].as_array().expect("messages");
        assert!(
            msgs.iter().any(|m| m["role"] == "tool"),
            "{kind}: {}",
            last.body
        );
        assert!(last.body.get("max_tokens").is_some());
    }

    // Claude Code's session (its `X-Claude-Code-Session-Id`) is a session of the broker's spend records:
    // every request of the tool turn, with the tokens the mock reported for them.
    let session_posts = &posts[before..];
    let r = reqwest::Client::new()
        .get(format!("{}/admin/v1/sessions/{SESSION}", broker.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("session report");
    assert_eq!(r.status(), 200, "{kind}");
    let v: serde_json::Value = r.json().await.expect("json");
    let sum = |f: fn(&tollgate_testkit::ReportedUsage) -> u64| -> u64 {
        session_posts
            .iter()
            .map(|p| p.usage.as_ref().map_or(0, f))
            .sum()
    };
    assert_eq!(v["totals"]["requests"], session_posts.len(), "{kind}: {v}");
    assert_eq!(
        v["totals"]["input_tokens"],
        sum(|u| u.input_tokens),
        "{kind}: {v}"
    );
    assert_eq!(
        v["totals"]["output_tokens"],
        sum(|u| u.output_tokens),
        "{kind}: {v}"
    );

    // What the broker recorded equals what the mock reported.
    let reported = mock.total_reported_usage();
    let token = broker.token().await;
    let usage = broker.usage(&token).await;
    assert_eq!(
        usage["usage"]["requests"],
        posts.len() as u64,
        "{kind}: {usage}"
    );
    assert_eq!(
        usage["usage"]["input_tokens"], reported.input_tokens,
        "{kind}: {usage}"
    );
    assert_eq!(
        usage["usage"]["output_tokens"], reported.output_tokens,
        "{kind}: {usage}"
    );
    assert_eq!(
        usage["usage"]["cached_input_tokens"], reported.cached_tokens,
        "{kind}: {usage}"
    );
    assert_eq!(
        usage["usage"]["cache_write_tokens"], reported.cache_creation_tokens,
        "{kind}: {usage}"
    );
    assert_no_secret(&broker.log(), &[UPSTREAM_KEY, &token], "broker log");

    // A 401: the broker restarts with new signing keys (and a new store), so the helper's cached token is
    // refused; Claude Code re-runs the helper, which sees the same Claude Code process ask again and mints
    // a new token.
    broker.restart(true).await;
    let before = broker.mints();
    let run = env.run("say hi again", &model, TURN).await;
    assert_eq!(run.status, Some(0), "{kind}: {}", run.all());
    assert!(
        run.stdout.contains("mock reply to:"),
        "{kind}: {}",
        run.all()
    );
    assert_eq!(broker.mints(), before + 1, "{kind}: the re-run minted once");
    let after = mock.total_reported_usage();
    let token = broker.token().await;
    let usage = broker.usage(&token).await;
    assert_eq!(usage["usage"]["requests"], 1, "{kind}: {usage}");
    assert_eq!(
        usage["usage"]["input_tokens"],
        after.input_tokens - reported.input_tokens,
        "{kind}: {usage}"
    );
    assert_no_secret(&broker.log(), &[UPSTREAM_KEY, &token], "broker log");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_through_an_anthropic_upstream() {
    turns_through("anthropic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_through_an_openai_chat_upstream() {
    turns_through("openai-chat").await;
}

/// A budget the first request cannot fit: Claude Code shows the broker's words at once (a 402, not
/// retried) and exits non-zero; nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_shows_a_budget_refusal_in_words() {
    let mock = spawn(MockConfig::default()).await;
    let budget = "\n[[budgets]]\nid = \"tiny\"\nscope = \"principal\"\namount_usd = \"0.000001\"\nwindow = \"daily\"\n\n[metrics]\npublic = true\n";
    let broker = Broker::start(spec("anthropic", &mock.base_url(), budget)).await;
    let env = ClaudeEnv::new(&broker.url);
    let started = std::time::Instant::now();
    let run = env.run("say hi", &["--model", MODEL], TURN).await;
    assert_ne!(run.status, Some(0), "{}", run.all());
    assert!(run.all().contains("budget 'tiny'"), "{}", run.all());
    assert!(run.all().contains("402"), "{}", run.all());
    assert!(mock.requests().is_empty(), "refused before any upstream");
    // Shown at once: not retried for minutes as a 429 or 403 would be.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Asked once, not retried (Claude Code retries a 400 about six times).
    let metrics = reqwest::get(format!("{}/metrics", broker.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("tollgate_refusals_total{reason=\"budget\"} 1\n"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("refusals"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const ANTHROPIC_SDK: &str = r#"
import json, sys
import anthropic
base, token = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base, api_key=token, max_retries=0)
out = {}
msgs = [{"role": "user", "content": "sdk hello"}]

# Whole answer.
m = client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=msgs)
out["text"] = m.content[0].text
out["usage"] = [m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens]

# Streaming, through the SDK's accumulator.
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=256, messages=[{"role": "user", "content": "sdk stream"}]) as s:
    deltas = "".join(s.text_stream)
    final = s.get_final_message()
out["stream_text"] = deltas
out["stream_final"] = final.content[0].text
out["stream_usage"] = [final.usage.input_tokens, final.usage.output_tokens]

# A tool the model calls, streamed.
tools = [{"name": "Bash", "description": "run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}]
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=256, tools=tools, messages=[{"role": "user", "content": "USE_TOOL"}]) as s:
    final = s.get_final_message()
out["tool"] = [final.stop_reason, final.content[-1].type, final.content[-1].input]

out["count"] = client.messages.count_tokens(model="claude-sonnet-4-5", messages=msgs).input_tokens
out["models"] = [x.id for x in client.models.list()]

# Errors as the SDK's typed exceptions, with the broker's words.
try:
    client.messages.create(model="gpt-5.5", max_tokens=8, messages=msgs)
except anthropic.APIStatusError as e:
    out["not_allowed"] = [type(e).__name__, e.status_code, e.body["error"]["type"], e.body["error"]["message"]]
bad = anthropic.Anthropic(base_url=base, api_key="not-a-token", max_retries=0)
try:
    bad.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=msgs)
except anthropic.APIStatusError as e:
    out["unauthorized"] = [type(e).__name__, e.status_code]
print(json.dumps(out))
"#;

/// The official Anthropic Python SDK as a second client of the Messages ingress, whole and streamed, on
/// both kinds of upstream.
#[tokio::test(flavor = "multi_thread")]
async fn anthropic_python_sdk_through_the_proxy() {
    for kind in ["anthropic", "openai-chat"] {
        let mock = spawn(MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            cached_tokens: 4,
            input_tokens: Some(40),
            ..MockConfig::default()
        })
        .await;
        let broker = Broker::start(spec(kind, &mock.base_url(), "")).await;
        let token = broker.token().await;
        let out = tokio::process::Command::new(support::python_bin())
            .arg("-c")
            .arg(ANTHROPIC_SDK)
            .arg(&broker.url)
            .arg(&token)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("ANTHROPIC_AUTH_TOKEN")
            .output()
            .await
            .expect("python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{kind}: sdk script failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
        assert_eq!(v["text"], "mock reply to: sdk hello", "{kind}: {v}");
        // Anthropic's input_tokens exclude cache reads: 40 - 4.
        assert_eq!(
            (v["usage"][0].as_u64(), v["usage"][1].as_u64()),
            (Some(36), Some(4)),
            "{kind}: {v}"
        );
        assert!(v["usage"][2].as_u64().is_some_and(|n| n > 0), "{kind}: {v}");
        assert_eq!(v["stream_text"], "mock reply to: sdk stream", "{kind}: {v}");
        assert_eq!(v["stream_final"], v["stream_text"], "{kind}: {v}");
        assert_eq!(v["stream_usage"][0], 36, "{kind}: {v}");
        assert_eq!(v["tool"][0], "tool_use", "{kind}: {v}");
        assert_eq!(v["tool"][1], "tool_use", "{kind}: {v}");
        assert!(v["tool"][2]["command"].is_string(), "{kind}: {v}");
        // Anthropic counts; a Chat server cannot, and the broker estimates.
        if kind == "anthropic" {
            assert_eq!(v["count"], 40, "{v}");
        } else {
            assert!(v["count"].as_u64().is_some_and(|n| n > 0), "{v}");
        }
        // The routed literal names the grant allows, in Anthropic's list (`anthropic-version` was sent).
        assert_eq!(
            v["models"],
            serde_json::json!(["claude-haiku-4-5"]),
            "{kind}: {v}"
        );
        assert_eq!(v["not_allowed"][0], "BadRequestError", "{kind}: {v}");
        assert_eq!(v["not_allowed"][1], 400);
        assert_eq!(v["not_allowed"][2], "invalid_request_error");
        assert!(
            v["not_allowed"][3]
                .as_str()
                .is_some_and(|m| m.contains("'gpt-5.5' is not allowed")),
            "{v}"
        );
        assert_eq!(
            v["unauthorized"],
            serde_json::json!(["AuthenticationError", 401]),
            "{kind}: {v}"
        );
        let usage = broker.usage(&token).await;
        let reported = mock.total_reported_usage();
        assert_eq!(usage["usage"]["requests"], 3, "{kind}: {usage}");
        assert_eq!(
            usage["usage"]["input_tokens"], reported.input_tokens,
            "{kind}: {usage}"
        );
        assert_eq!(
            usage["usage"]["output_tokens"], reported.output_tokens,
            "{kind}: {usage}"
        );
    }
}
