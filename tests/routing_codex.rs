//! The real Codex CLI completing a turn with a tool call through the translating providers: `openai-chat`
//! (mock upstream speaking Chat Completions) and `anthropic` (mock upstream speaking Messages).

mod support;

use std::time::Duration;
use support::*;
use tollgate_testkit::{MockConfig, spawn};

const TURN: Duration = Duration::from_secs(120);

fn spec(kind: &str, upstream: &str, model: &str, upstream_model: &str) -> BrokerSpec {
    BrokerSpec {
        extra_config: format!(
            "[providers.up]\nkind = \"{kind}\"\nbase_url = \"{upstream}\"\napi_key_env = \"E2E_UPSTREAM_KEY\"\n\n\
             [[routes]]\nmodel = \"{model}\"\ntargets = [{{ provider = \"up\", model = \"{upstream_model}\" }}]\n\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1.25\", output = \"10\" }}\n"
        ),
        policy: "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nteam = \"e2e\"\nmodels = [\"*\"]\nmax_ttl_secs = 3600\n".into(),
        env: vec![
            ("E2E_UPSTREAM_KEY".into(), UPSTREAM_KEY.into()),
            // Debug for the translations, so the log shows which Codex tools were dropped.
            ("RUST_LOG".into(), "info,tollgate_broker::translate=debug".into()),
        ],
    }
}

/// Codex sends its full tool set (`apply_patch` as a `custom` tool, `namespace`, `web_search`, …) only for
/// models it knows, so the alias is a bundled slug routed to a non-OpenAI upstream model.
///
/// Runs one Codex turn that makes the mock ask for `echo tool-ran-ok`, and returns the upstream requests.
async fn tool_turn(
    kind: &str,
    path: &str,
    model: &str,
    upstream_model: &str,
) -> Vec<tollgate_testkit::RecordedRequest> {
    let mock = spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let broker = Broker::start(spec(kind, &mock.base_url(), model, upstream_model)).await;
    let codex = CodexEnv::new(
        &broker.url,
        model,
        "request_max_retries = 0\nstream_max_retries = 0",
    );
    let run = codex.exec("please USE_TOOL now", TURN).await;
    assert_eq!(
        run.status,
        Some(0),
        "codex failed:\n{}\n--- broker log ---\n{}",
        run.all(),
        broker.log()
    );
    // The mock answered the tool output with "tool said: …"; Codex printed it as the final message.
    assert!(
        run.stdout.contains("tool said:") && run.all().contains("tool-ran-ok"),
        "{}",
        run.all()
    );
    let posts = mock.requests_to(path);
    assert!(
        posts.len() >= 2,
        "expected the follow-up request with the tool output, got {}",
        posts.len()
    );
    for p in &posts {
        assert_eq!(p.body["model"], upstream_model);
    }
    assert_no_secret(&broker.log(), &[UPSTREAM_KEY, CREDENTIAL], "broker log");
    // Codex sent its hosted tools; they were dropped deliberately (and logged), not answered with a 400.
    let log = broker.log();
    for kind in ["web_search", "tool_search"] {
        assert!(
            log.lines()
                .any(|l| l.contains("dropping a tool")
                    && l.contains(&format!("tool_type=\"{kind}\""))),
            "expected {kind} to be dropped:\n{log}"
        );
    }
    posts
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_tool_call_through_openai_chat() {
    let posts = tool_turn(
        "openai-chat",
        "/v1/chat/completions",
        "gpt-5.5",
        "qwen2.5-coder",
    )
    .await;
    let first = &posts[0];
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    // Codex's tools arrive as chat functions; apply_patch is a function with one string argument.
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
    // The follow-up carries the assistant tool call and the tool message with Codex's output.
    let msgs = posts[1].body["messages"].as_array().expect("messages");
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
    assert!(
        tool["content"]
            .as_str()
            .unwrap_or("")
            .contains("tool-ran-ok"),
        "{tool}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_tool_call_through_anthropic() {
    let posts = tool_turn("anthropic", "/v1/messages", "gpt-5.5", "claude-sonnet-4-5").await;
    let first = &posts[0];
    assert_eq!(first.header("x-api-key"), Some(UPSTREAM_KEY));
    assert!(
        first.body["system"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );
    let tools = first.body["tools"].as_array().expect("tools");
    assert!(tools.iter().any(|t| t["name"] == "apply_patch"));
    assert!(
        tools.iter().all(|t| t["input_schema"].is_object()),
        "only translatable tools: {tools:?}"
    );
    let msgs = posts[1].body["messages"].as_array().expect("messages");
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
    assert!(
        result["content"]
            .as_str()
            .unwrap_or("")
            .contains("tool-ran-ok"),
        "{result}"
    );
}
