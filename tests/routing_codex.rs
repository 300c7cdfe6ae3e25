//! The real Codex CLI completing a turn with a tool call through the translating providers: `openai-chat`
//! (mock upstream speaking Chat Completions) and `anthropic` (mock upstream speaking Messages), on every
//! pinned Codex version (`support::CODEX_VERSIONS`; one version with `TOLLGATE_CODEX_VERSION`).

mod support;

use std::time::Duration;
use support::*;
use tollgate_testkit::{MockConfig, RecordedRequest, spawn};

const TURN: Duration = Duration::from_secs(120);
const ADMIN_KEY: &str = "routing-codex-admin-key";

/// Every model Codex asks for goes to `upstream_model` on the one provider.
fn spec(kind: &str, upstream: &str, upstream_model: &str) -> BrokerSpec {
    BrokerSpec {
        extra_config: format!(
            "[providers.up]\nkind = \"{kind}\"\nbase_url = \"{upstream}\"\napi_key_env = \"E2E_UPSTREAM_KEY\"\n\n\
             [[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"up\", model = \"{upstream_model}\" }}]\n\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1.25\", output = \"10\" }}\n\n\
             [admin]\nkey_sha256 = \"{admin}\"\n",
            admin = sha256_hex(ADMIN_KEY)
        ),
        policy: "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nteam = \"e2e\"\nmodels = [\"*\"]\nmax_ttl_secs = 3600\n".into(),
        env: vec![
            ("E2E_UPSTREAM_KEY".into(), UPSTREAM_KEY.into()),
            // Debug for the translations, so the log shows which Codex tools were removed.
            ("RUST_LOG".into(), "info,tollgate_broker::translate=debug".into()),
        ],
    }
}

/// The upstream API a test talks to.
#[derive(Clone, Copy)]
enum Upstream {
    Chat,
    Anthropic,
}

impl Upstream {
    fn kind(self) -> &'static str {
        match self {
            Upstream::Chat => "openai-chat",
            Upstream::Anthropic => "anthropic",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Upstream::Chat => "/v1/chat/completions",
            Upstream::Anthropic => "/v1/messages",
        }
    }
    fn upstream_model(self) -> &'static str {
        match self {
            Upstream::Chat => "qwen2.5-coder",
            Upstream::Anthropic => "claude-sonnet-4-5",
        }
    }
    /// The names of the tools a translated request declares.
    fn tool_names(self, r: &RecordedRequest) -> Vec<String> {
        r.body["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| match self {
                Upstream::Chat => t["function"]["name"].as_str().unwrap_or("").to_string(),
                Upstream::Anthropic => t["name"].as_str().unwrap_or("").to_string(),
            })
            .collect()
    }
    /// The text of the tool results in a translated request.
    fn tool_results(self, r: &RecordedRequest) -> Vec<String> {
        let msgs = r.body["messages"].as_array().cloned().unwrap_or_default();
        match self {
            Upstream::Chat => msgs
                .iter()
                .filter(|m| m["role"] == "tool")
                .map(|m| m["content"].as_str().unwrap_or("").to_string())
                .collect(),
            Upstream::Anthropic => msgs
                .iter()
                .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
                .filter(|b| b["type"] == "tool_result")
                .map(|b| b["content"].as_str().unwrap_or("").to_string())
                .collect(),
        }
    }
}

/// What one Codex turn left behind.
struct Turn {
    posts: Vec<RecordedRequest>,
    codex: CodexEnv,
    log: String,
}

/// What the mock's model asks Codex to do, and what the tool's output must then contain.
struct Ask<'a> {
    /// The tool to call (default: the first one the upstream is given).
    tool: Option<&'a str>,
    /// Its argument (default: `echo tool-ran-ok` for `exec_command`).
    command: Option<&'a str>,
    /// Text the tool's output, sent back upstream and printed by Codex, must contain.
    expect: &'a str,
}

const ECHO: Ask<'static> = Ask {
    tool: None,
    command: None,
    expect: "tool-ran-ok",
};

/// Runs one Codex turn (`version`, `model`; empty = Codex's default) in which the mock asks for one tool
/// call, and checks that the turn completed with the tool's output.
async fn tool_turn(version: &str, up: Upstream, model: &str, ask: Ask<'_>) -> Turn {
    let mut config = MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        tool_name: ask.tool.map(str::to_string),
        ..MockConfig::default()
    };
    if let Some(cmd) = ask.command {
        config.tool_command = cmd.to_string();
    }
    let mock = spawn(config).await;
    let broker = Broker::start(spec(up.kind(), &mock.base_url(), up.upstream_model())).await;
    let codex = CodexEnv::new(
        &broker.url,
        model,
        "request_max_retries = 0\nstream_max_retries = 0",
    )
    .with_version(version);
    let run = codex.exec("please USE_TOOL now", TURN).await;
    let what = format!("Codex {version}, model {model:?}, {}", up.kind());
    assert_eq!(
        run.status,
        Some(0),
        "{what}: codex failed:\n{}\n--- broker log ---\n{}",
        run.all(),
        broker.log()
    );
    let posts = mock.requests_to(up.path());
    // The mock answered the tool output with "tool said: …"; Codex printed it as the final message.
    assert!(
        run.stdout.contains("tool said:") && run.stdout.contains(ask.expect),
        "{what}: the tool did not run (upstream tools: {:?}):\n{}",
        posts.first().map(|p| up.tool_names(p)),
        run.all()
    );
    assert!(
        posts.len() >= 2,
        "{what}: expected the follow-up request with the tool output, got {}",
        posts.len()
    );
    for p in &posts {
        assert_eq!(p.body["model"], up.upstream_model(), "{what}");
    }
    // The follow-up carries the tool's output back to the model.
    let results = up.tool_results(&posts[posts.len() - 1]);
    assert!(
        results.iter().any(|r| r.contains(ask.expect)),
        "{what}: {results:?}"
    );
    session_spend_matches(&broker, &codex, &posts, &what).await;
    let log = broker.log();
    assert_no_secret(&log, &[UPSTREAM_KEY, CREDENTIAL], "broker log");
    Turn { posts, codex, log }
}

/// The id of the one session Codex recorded (its rollout file, `sessions/…/rollout-<time>-<id>.jsonl`).
fn codex_session_id(codex: &CodexEnv) -> String {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && name.starts_with("rollout-")
                && let Some(stem) = name.strip_suffix(".jsonl")
            {
                out.push(stem[stem.len().saturating_sub(36)..].to_string());
            }
        }
    }
    let mut ids = Vec::new();
    walk(&codex.codex_home().join("sessions"), &mut ids);
    assert_eq!(ids.len(), 1, "one Codex session recorded: {ids:?}");
    ids.remove(0)
}

/// The session Codex recorded is the one the broker recorded: `GET /admin/v1/sessions/{id}` counts every
/// request the upstream answered, as turns, with the tokens the mock reported.
async fn session_spend_matches(
    broker: &Broker,
    codex: &CodexEnv,
    posts: &[RecordedRequest],
    what: &str,
) {
    let id = codex_session_id(codex);
    let r = reqwest::Client::new()
        .get(format!("{}/admin/v1/sessions/{id}", broker.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("session report");
    assert_eq!(r.status(), 200, "{what}");
    let v: serde_json::Value = r.json().await.expect("json");
    let sum = |f: fn(&tollgate_testkit::ReportedUsage) -> u64| -> u64 {
        posts.iter().map(|p| p.usage.as_ref().map_or(0, f)).sum()
    };
    let t = &v["totals"];
    assert_eq!(t["requests"], posts.len(), "{what}: {v}");
    assert_eq!(t["input_tokens"], sum(|u| u.input_tokens), "{what}: {v}");
    assert_eq!(t["output_tokens"], sum(|u| u.output_tokens), "{what}: {v}");
    assert_eq!(v["principals"], serde_json::json!(["dev"]), "{what}");
    let turns = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["request_kind"] == "turn" && r["subagent"].is_null())
        .unwrap_or_else(|| panic!("{what}: no turn row in {v}"));
    assert_eq!(turns["requests"], posts.len(), "{what}: {v}");
}

/// A Codex model with its full tool set (a bundled non-lite slug: `apply_patch` as a `custom` tool,
/// `tool_search`, `web_search`, …) routed to a non-OpenAI upstream model.
async fn gpt55_turn(version: &str, up: Upstream) -> Turn {
    let turn = tool_turn(version, up, "gpt-5.5", ECHO).await;
    let first = &turn.posts[0];
    let names = up.tool_names(first);
    assert_eq!(names[0], "exec_command", "{names:?}");
    // apply_patch is a function with one string argument; the client tool_search is a function too.
    assert!(names.iter().any(|n| n == "apply_patch"), "{names:?}");
    assert!(names.iter().any(|n| n == "tool_search"), "{names:?}");
    // web_search cannot run there: it was removed (and logged), the model told so, never a 400.
    assert!(
        turn.log
            .lines()
            .any(|l| l.contains("dropping a tool") && l.contains("tool_type=\"web_search\"")),
        "expected web_search to be removed:\n{}",
        turn.log
    );
    assert!(
        first.body.to_string().contains("`web_search` cannot run"),
        "no note about web_search"
    );
    turn
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_tool_call_through_openai_chat() {
    for version in codex_versions() {
        let turn = gpt55_turn(&version, Upstream::Chat).await;
        let first = &turn.posts[0];
        assert_eq!(
            first.header("authorization"),
            Some(format!("Bearer {UPSTREAM_KEY}").as_str())
        );
        let tools = first.body["tools"].as_array().expect("tools");
        assert!(tools.iter().all(|t| t["type"] == "function"), "{tools:?}");
        let patch = tools
            .iter()
            .find(|t| t["function"]["name"] == "apply_patch")
            .expect("apply_patch");
        assert_eq!(
            patch["function"]["parameters"]["required"],
            serde_json::json!(["input"])
        );
        assert_eq!(first.body["messages"][0]["role"], "system");
        // Codex's reasoning effort, verbosity and cache key reach the chat upstream.
        assert!(first.body["reasoning_effort"].is_string(), "{version}");
        assert!(first.body["prompt_cache_key"].is_string(), "{version}");
        // The follow-up carries the assistant tool call and the tool message with Codex's output.
        let msgs = turn.posts[1].body["messages"].as_array().expect("messages");
        let call = msgs
            .iter()
            .find(|m| m["tool_calls"].is_array())
            .expect("assistant tool_calls");
        let call_id = call["tool_calls"][0]["id"].as_str().expect("id");
        let tool = msgs
            .iter()
            .find(|m| m["role"] == "tool")
            .expect("tool message");
        assert_eq!(tool["tool_call_id"], call_id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_tool_call_through_anthropic() {
    for version in codex_versions() {
        let turn = gpt55_turn(&version, Upstream::Anthropic).await;
        let first = &turn.posts[0];
        assert_eq!(first.header("x-api-key"), Some(UPSTREAM_KEY));
        assert!(
            first.body["system"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        );
        let tools = first.body["tools"].as_array().expect("tools");
        assert!(
            tools.iter().all(|t| t["input_schema"].is_object()),
            "only translatable tools: {tools:?}"
        );
        let msgs = turn.posts[1].body["messages"].as_array().expect("messages");
        let (use_msg, result_msg) = (&msgs[msgs.len() - 2], &msgs[msgs.len() - 1]);
        let tool_use = use_msg["content"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["type"] == "tool_use"))
            .expect("tool_use");
        let result = result_msg["content"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["type"] == "tool_result"))
            .expect("tool_result");
        assert_eq!(result["tool_use_id"], tool_use["id"]);
    }
}

/// What the mock's model writes into Codex's `exec` tool (JavaScript; code-mode models reach
/// `exec_command` and every other tool through it): run a command that leaves a file behind.
const LITE_JS: &str = r#"const r = await tools.exec_command({cmd: "echo tool-ran-ok > proof.txt && cat proof.txt"}); text(r.output);"#;

/// The bug of issue 15: for a responses-lite model (every bundled gpt-5.6/gpt-6 model, and Codex's
/// default model) Codex sends no `tools`, only an `additional_tools` input item. The translators dropped
/// it, the upstream got no tools, and Codex ended the turn having run nothing (exit 0). Now the tools
/// arrive flattened, the model's call comes back as Codex's `exec` (namespace `functions`), Codex runs it,
/// the file exists and its output goes back upstream.
async fn lite_turn(version: &str, up: Upstream, model: &str) {
    let ask = Ask {
        tool: None,
        command: Some(LITE_JS),
        expect: "tool-ran-ok",
    };
    let turn = tool_turn(version, up, model, ask).await;
    let what = format!("Codex {version}, model {model:?}, {}", up.kind());
    let first = &turn.posts[0];
    let names = up.tool_names(first);
    // The responses-lite shape: Codex's code-mode `exec` first, sub-agent tools from their namespace.
    assert_eq!(
        names.first().map(String::as_str),
        Some("exec"),
        "{what}: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "collaboration__spawn_agent"),
        "{what}: {names:?}"
    );
    let proof = turn.codex.workdir().join("proof.txt");
    assert_eq!(
        std::fs::read_to_string(&proof).unwrap_or_default().trim(),
        "tool-ran-ok",
        "{what}: the tool did not write {}",
        proof.display()
    );
    assert!(
        !turn.log.contains("additional_tools"),
        "{what}: {}",
        turn.log
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_responses_lite_model_runs_tools_through_openai_chat() {
    for version in codex_versions() {
        lite_turn(&version, Upstream::Chat, "gpt-5.6-sol").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_default_model_runs_tools_through_anthropic() {
    for version in codex_versions() {
        lite_turn(&version, Upstream::Anthropic, "").await;
    }
}

/// A sub-agent tool lives in a namespace (`collaboration.list_agents` for code-mode models). The
/// upstream sees it flattened (`collaboration__list_agents`); the call must come back to Codex with
/// `namespace: "collaboration"` and `name: "list_agents"`, or Codex answers "unsupported call" instead of
/// running it. Here it runs: its output lists the root agent.
#[tokio::test(flavor = "multi_thread")]
async fn codex_namespaced_tool_runs_through_anthropic() {
    for version in codex_versions() {
        let ask = Ask {
            tool: Some("collaboration__list_agents"),
            command: None,
            expect: "agent_name",
        };
        let turn = tool_turn(&version, Upstream::Anthropic, "gpt-5.6-sol", ask).await;
        let results = Upstream::Anthropic.tool_results(&turn.posts[1]);
        assert!(
            results.iter().all(|r| !r.contains("unsupported call")),
            "Codex {version}: {results:?}"
        );
    }
}

/// Codex defers tools behind its client-side `tool_search` (for gpt-5.5 the sub-agent tools). The
/// upstream gets `tool_search` as a function; a call comes back as a `tool_search_call`, Codex searches
/// and answers with a `tool_search_output`, and from then on the upstream is given the tools it found.
#[tokio::test(flavor = "multi_thread")]
async fn codex_tool_search_reaches_deferred_tools_through_openai_chat() {
    for version in codex_versions() {
        let ask = Ask {
            tool: Some("tool_search"),
            command: Some("spawn a sub-agent"),
            expect: "multi_agent_v1__spawn_agent",
        };
        let turn = tool_turn(&version, Upstream::Chat, "gpt-5.5", ask).await;
        let before = Upstream::Chat.tool_names(&turn.posts[0]);
        let after = Upstream::Chat.tool_names(&turn.posts[1]);
        assert!(
            !before.iter().any(|n| n == "multi_agent_v1__spawn_agent"),
            "Codex {version}: {before:?}"
        );
        assert!(
            after.iter().any(|n| n == "multi_agent_v1__spawn_agent"),
            "Codex {version}: {after:?}"
        );
    }
}
