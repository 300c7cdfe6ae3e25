//! Golden fixtures for every translation: Responses requests → Chat / Messages requests, and streamed and
//! non-streamed Chat / Messages answers → Responses. Inputs in `testdata/routing/` follow the providers'
//! documented wire formats; the expected outputs are `*.golden.*` beside them.
//!
//! Regenerate after an intended change with `TOLLGATE_BLESS=1 cargo test -p tollgate-broker --test
//! routing_translate` and review the diff.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use tollgate_broker::translate::{
    SeqIds, StreamTranslator, ToolContext, ToolKind, anthropic, chat,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/routing")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn golden(name: &str, actual: &str) {
    let path = dir().join(name);
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{name}: {e} (run with TOLLGATE_BLESS=1 to create it)"));
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("json") + "\n"
}

const CREATED: u64 = 1_764_000_000;

fn run_stream(tr: &mut dyn StreamTranslator, input: &[u8], chunk: usize) -> Result<String, String> {
    let mut out = Vec::new();
    for c in input.chunks(chunk.max(1)) {
        out.extend(tr.feed(c).map_err(|e| e.to_string())?);
    }
    out.extend(tr.finish().map_err(|e| e.to_string())?);
    Ok(String::from_utf8(out).expect("utf8"))
}

/// The `data:` payloads of an SSE text, parsed.
fn events(sse: &str) -> Vec<Value> {
    sse.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).expect("event json"))
        .collect()
}

fn types(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect()
}

fn ctx_with_apply_patch() -> ToolContext {
    ToolContext {
        custom_tools: ["apply_patch".to_string()].into(),
        model: "team-model".into(),
        ..ToolContext::default()
    }
}

// ------------------------------------------------------------------ requests

#[test]
fn codex_request_to_chat() {
    let (out, ctx) = chat::request(&json("codex_request.json"), "llama3.1").expect("translate");
    golden("chat_request.golden.json", &pretty(&out));
    assert!(ctx.custom_tools.contains("apply_patch"));
    // Every tool Codex can run is a function: apply_patch with one string argument, the namespace's
    // tools under reversible names, the client tool_search; web_search is removed with a note.
    let tools = out["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "exec_command",
            "apply_patch",
            "multi_agent_v1__spawn_agent",
            "tool_search"
        ]
    );
    assert_eq!(
        ctx.resolve("multi_agent_v1__spawn_agent")
            .namespace
            .as_deref(),
        Some("multi_agent_v1")
    );
    assert!(out["messages"][0]["content"].as_str().is_some_and(|s| {
        s.ends_with("were removed from this request; work without them.")
            && s.contains("`web_search`")
    }));
    assert_eq!(out["reasoning_effort"], "medium");
    assert_eq!(out["verbosity"], "low");
    assert_eq!(
        out["prompt_cache_key"],
        "0199a213-81c0-7800-8aa1-bbab2a035a53"
    );
    assert_eq!(
        tools[1]["function"]["parameters"]["required"],
        serde_json::json!(["input"])
    );
    // Both developer messages became one leading system message.
    let msgs = out["messages"].as_array().expect("messages");
    assert_eq!(msgs[0]["role"], "system");
    assert_eq!(msgs.iter().filter(|m| m["role"] == "system").count(), 1);
    // Tool calls are attached to an assistant message and answered by tool messages with the same id.
    let tool_msgs: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs.len(), 2);
    assert_eq!(tool_msgs[1]["tool_call_id"], "call_patch_1");
    assert!(
        out.get("reasoning").is_none()
            && out.get("store").is_none()
            && out.get("include").is_none()
    );
    assert_eq!(out["stream_options"]["include_usage"], true);
}

/// Numbers the client sent reach the upstream unchanged: the body is parsed and written again on its way
/// through a translation, and a float that did not parse back exactly would change by one unit in the last
/// place (found by the `translate_request` fuzz target; `fuzz/regressions/translate_request/`).
#[test]
fn client_floats_reach_the_upstream_exactly() {
    for text in [
        "555555555455555555555555555551.2",
        "0.30000000000000004",
        "1.7976931348623157e308",
    ] {
        let exact: f64 = text.parse().expect("a float");
        let body = format!(
            r#"{{"model":"m","input":"hi","temperature":{text},"top_p":{text},"stream":true}}"#
        );
        let body: Value = serde_json::from_str(&body).expect("the client's body");
        assert_eq!(
            body["temperature"].as_f64(),
            Some(exact),
            "{text} as parsed"
        );
        let (chat_out, _) = chat::request(&body, "upstream").expect("chat");
        let (anthropic_out, _) =
            anthropic::request(&body, "upstream", anthropic::Options::default())
                .expect("anthropic");
        for out in [chat_out, anthropic_out] {
            let sent = serde_json::to_string(&out).expect("serialise");
            let upstream_reads: Value = serde_json::from_str(&sent).expect("parse back");
            assert_eq!(
                upstream_reads["temperature"].as_f64(),
                Some(exact),
                "{text}: {sent}"
            );
            assert_eq!(
                upstream_reads["top_p"].as_f64(),
                Some(exact),
                "{text}: {sent}"
            );
        }
    }
}

#[test]
fn codex_request_to_anthropic() {
    let (out, _) = anthropic::request(
        &json("codex_request.json"),
        "claude-sonnet-4-5",
        anthropic::Options::default(),
    )
    .expect("translate");
    golden("anthropic_request.golden.json", &pretty(&out));
    // Two developer messages and the note about the removed web_search.
    let system = out["system"].as_array().expect("system");
    assert_eq!(system.len(), 3);
    assert!(
        system[2]["text"]
            .as_str()
            .is_some_and(|t| t.contains("`web_search`"))
    );
    let names: Vec<&str> = out["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "exec_command",
            "apply_patch",
            "multi_agent_v1__spawn_agent",
            "tool_search"
        ]
    );
    // Roles alternate: every tool_use is answered in the next user turn.
    let msgs = out["messages"].as_array().expect("messages");
    for w in msgs.windows(2) {
        assert_ne!(
            w[0]["role"], w[1]["role"],
            "consecutive turns must be merged"
        );
    }
    assert_eq!(out["thinking"]["budget_tokens"], 8192);
    assert!(out["max_tokens"].as_u64().expect("max_tokens") > 8192);
}

#[test]
fn anthropic_followup_keeps_thinking_images_and_tool_results() {
    let (out, _) = anthropic::request(
        &json("anthropic_followup_request.json"),
        "claude-sonnet-4-5",
        anthropic::Options::default(),
    )
    .expect("translate");
    golden("anthropic_followup_request.golden.json", &pretty(&out));
    let assistant = &out["messages"][1]["content"];
    assert_eq!(assistant[0]["type"], "thinking");
    assert_eq!(
        assistant[0]["signature"],
        "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
    );
    assert_eq!(assistant[2]["type"], "tool_use");
    assert_eq!(assistant[2]["input"]["cmd"], "cargo test");
    assert_eq!(out["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(
        out["messages"][0]["content"][1]["source"]["media_type"],
        "image/png"
    );
    assert_eq!(out["tool_choice"]["disable_parallel_tool_use"], true);
    assert!(
        out.get("temperature").is_none(),
        "no sampling params with thinking"
    );
}

// ------------------------------------------------------------------ streamed answers

fn chat_stream(name: &str, golden_name: &str) -> Vec<Value> {
    let input = read(name);
    let mk = || chat::ChatStream::new(ctx_with_apply_patch(), Box::new(SeqIds::default()), CREATED);
    let whole = run_stream(&mut mk(), input.as_bytes(), usize::MAX).expect("stream");
    golden(golden_name, &whole);
    // Any chunking gives the same bytes.
    for size in [1, 7, 64] {
        assert_eq!(
            run_stream(&mut mk(), input.as_bytes(), size).expect("stream"),
            whole,
            "chunk {size}"
        );
    }
    events(&whole)
}

fn anthropic_stream(name: &str, golden_name: &str) -> Vec<Value> {
    let input = read(name);
    let mk = || {
        anthropic::MessagesStream::new(ctx_with_apply_patch(), Box::new(SeqIds::default()), CREATED)
    };
    let whole = run_stream(&mut mk(), input.as_bytes(), usize::MAX).expect("stream");
    golden(golden_name, &whole);
    for size in [1, 5, 100] {
        assert_eq!(
            run_stream(&mut mk(), input.as_bytes(), size).expect("stream"),
            whole,
            "chunk {size}"
        );
    }
    events(&whole)
}

/// What Codex needs (codex-client.md §7/§8): every item added is done, and the response completes with
/// an id and full usage.
fn assert_codex_shape(evs: &[Value]) -> &Value {
    let t = types(evs);
    assert_eq!(t[0], "response.created");
    let added = t
        .iter()
        .filter(|x| **x == "response.output_item.added")
        .count();
    let done = t
        .iter()
        .filter(|x| **x == "response.output_item.done")
        .count();
    assert_eq!(added, done, "{t:?}");
    let last = evs.last().expect("events");
    assert_eq!(last["type"], "response.completed", "{t:?}");
    assert!(
        last["response"]["id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let u = &last["response"]["usage"];
    for k in ["input_tokens", "output_tokens", "total_tokens"] {
        assert!(u[k].is_u64(), "usage.{k}: {u}");
    }
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64(), "{u}");
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64);
    }
    last
}

#[test]
fn chat_stream_with_tool_call() {
    let evs = chat_stream("chat_stream_tool.sse", "chat_stream_tool.golden.sse");
    let done = assert_codex_shape(&evs);
    let out = done["response"]["output"].as_array().expect("output");
    assert_eq!(out[0]["type"], "message");
    assert_eq!(out[0]["content"][0]["text"], "Running the tests.");
    assert_eq!(out[1]["type"], "function_call");
    assert_eq!(out[1]["call_id"], "call_abc123");
    assert_eq!(out[1]["arguments"], "{\"cmd\":\"cargo test\"}");
    let u = &done["response"]["usage"];
    assert_eq!(
        (
            u["input_tokens"].as_u64(),
            u["input_tokens_details"]["cached_tokens"].as_u64()
        ),
        (Some(9120), Some(8960))
    );
    assert_eq!(u["total_tokens"], 9144);
}

#[test]
fn chat_stream_with_apply_patch_and_reasoning() {
    let evs = chat_stream(
        "chat_stream_apply_patch.sse",
        "chat_stream_apply_patch.golden.sse",
    );
    let done = assert_codex_shape(&evs);
    let out = done["response"]["output"].as_array().expect("output");
    assert_eq!(out[0]["type"], "reasoning");
    assert_eq!(out[1]["type"], "custom_tool_call");
    assert_eq!(out[1]["name"], "apply_patch");
    assert_eq!(
        out[1]["input"],
        "*** Begin Patch\n*** Update File: README.md\n@@\n-teh\n+the\n*** End Patch\n"
    );
    assert_eq!(out[2]["type"], "function_call", "a second, parallel call");
    assert_eq!(out[2]["arguments"], "{\"cmd\":\"git diff\"}");
}

#[test]
fn anthropic_stream_with_thinking_text_and_tool_use() {
    let evs = anthropic_stream(
        "anthropic_stream_tool.sse",
        "anthropic_stream_tool.golden.sse",
    );
    let done = assert_codex_shape(&evs);
    let out = done["response"]["output"].as_array().expect("output");
    assert_eq!(out[0]["type"], "reasoning");
    assert_eq!(out[0]["summary"][0]["text"], "I should run the test suite.");
    assert_eq!(
        out[0]["encrypted_content"],
        "tollgate.anthropic.thinking:EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
    );
    assert_eq!(out[1]["content"][0]["text"], "Running the tests now.");
    assert_eq!(out[2]["type"], "function_call");
    assert_eq!(out[2]["call_id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(out[2]["arguments"], "{\"cmd\": \"cargo test\"}");
    // input = 12 uncached + 8000 cache reads + 2048 cache writes.
    let u = &done["response"]["usage"];
    assert_eq!(u["input_tokens"], 10_060);
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 8000);
    assert_eq!(u["input_tokens_details"]["cache_write_tokens"], 2048);
    assert_eq!(u["output_tokens"], 89);
    assert_eq!(u["total_tokens"], 10_149);
}

#[test]
fn anthropic_stream_with_apply_patch() {
    let evs = anthropic_stream(
        "anthropic_stream_apply_patch.sse",
        "anthropic_stream_apply_patch.golden.sse",
    );
    let done = assert_codex_shape(&evs);
    let item = &done["response"]["output"][0];
    assert_eq!(item["type"], "custom_tool_call");
    assert_eq!(
        item["input"],
        "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"
    );
}

#[test]
fn anthropic_stream_error_becomes_response_failed() {
    let input = read("anthropic_stream_error.sse");
    let mut tr = anthropic::MessagesStream::new(
        ctx_with_apply_patch(),
        Box::new(SeqIds::default()),
        CREATED,
    );
    let out = run_stream(&mut tr, input.as_bytes(), usize::MAX).expect("stream");
    golden("anthropic_stream_error.golden.sse", &out);
    let evs = events(&out);
    assert_eq!(evs.last().expect("events")["type"], "response.failed");
}

#[test]
fn truncated_streams_are_errors_not_silent_ends() {
    let input = read("anthropic_stream_tool.sse");
    let cut = &input.as_bytes()[..input.len() / 2];
    let mut tr = anthropic::MessagesStream::new(
        ToolContext::default(),
        Box::new(SeqIds::default()),
        CREATED,
    );
    assert!(run_stream(&mut tr, cut, usize::MAX).is_err());
    let input = read("chat_stream_tool.sse");
    let cut = &input.as_bytes()[..input.len() / 2];
    let mut tr =
        chat::ChatStream::new(ToolContext::default(), Box::new(SeqIds::default()), CREATED);
    assert!(run_stream(&mut tr, cut, usize::MAX).is_err());
}

// ------------------------------------------------------------------ non-streamed answers

#[test]
fn chat_response_to_responses() {
    let out = chat::response(
        &json("chat_response.json"),
        &ctx_with_apply_patch(),
        &mut SeqIds::default(),
        CREATED,
    );
    golden("chat_response.golden.json", &pretty(&out));
    assert_eq!(out["output"][1]["type"], "function_call");
    assert_eq!(out["output"][2]["type"], "custom_tool_call");
    assert_eq!(out["usage"]["input_tokens_details"]["cached_tokens"], 64);
}

#[test]
fn anthropic_response_to_responses() {
    let out = anthropic::response(
        &json("anthropic_response.json"),
        &ctx_with_apply_patch(),
        &mut SeqIds::default(),
        CREATED,
    );
    golden("anthropic_response.golden.json", &pretty(&out));
    assert_eq!(out["usage"]["input_tokens"], 1150);
    assert_eq!(
        out["usage"]["input_tokens_details"]["cache_write_tokens"],
        100
    );
    assert_eq!(out["output"][3]["type"], "custom_tool_call");
}

// ------------------------------------------------------------------ Codex 0.171.0, recorded

/// The recorded Codex 0.171.0 requests (`testdata/codex-0.171/record.sh`): headers and body.
const CODEX_0171: [&str; 7] = [
    "lite_turn",
    "lite_exec_followup",
    "lite_namespace_followup",
    "plain_turn",
    "gpt55_turn",
    "tool_search_followup",
    "compaction",
];

fn codex_0171(scenario: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata/codex-0.171")
        .join(format!("{scenario}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{scenario}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{scenario}: {e}"));
    assert_eq!(v["codex_version"], "0.171.0");
    v["request"]["body"].clone()
}

/// (namespace, name) of every tool Codex can run in a request: leaves of `tools`, of `additional_tools`
/// and `tool_search_output` items, and the client `tool_search`; and the types of the others.
fn codex_tools(body: &Value) -> (BTreeSet<(Option<String>, String)>, BTreeSet<String>) {
    let mut callable = BTreeSet::new();
    let mut hosted = BTreeSet::new();
    let mut lists: Vec<&Value> = vec![&body["tools"]];
    for item in body["input"].as_array().into_iter().flatten() {
        if matches!(
            item["type"].as_str(),
            Some("additional_tools" | "tool_search_output")
        ) {
            lists.push(&item["tools"]);
        }
    }
    for t in lists.into_iter().filter_map(Value::as_array).flatten() {
        let name = t["name"].as_str().unwrap_or_default().to_string();
        match t["type"].as_str().unwrap_or_default() {
            "function" | "custom" => {
                callable.insert((None, name));
            }
            "namespace" => {
                for c in t["tools"].as_array().into_iter().flatten() {
                    callable.insert((
                        Some(name.clone()),
                        c["name"]
                            .as_str()
                            .expect("the shape under test")
                            .to_string(),
                    ));
                }
            }
            "tool_search" if t["execution"] == "client" => {
                callable.insert((None, "tool_search".to_string()));
            }
            other => {
                hosted.insert(other.to_string());
            }
        }
    }
    (callable, hosted)
}

fn identity(ctx: &ToolContext, upstream_name: &str) -> (Option<String>, String) {
    let t = ctx.resolve(upstream_name);
    (t.namespace, t.name)
}

/// The Codex identity of a history call item.
fn item_identity(item: &Value) -> (Option<String>, String) {
    if item["type"] == "tool_search_call" {
        return (None, "tool_search".into());
    }
    (
        item["namespace"].as_str().map(str::to_string),
        item["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn history_calls(body: &Value) -> Vec<(String, (Option<String>, String))> {
    body["input"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            matches!(
                i["type"].as_str(),
                Some("function_call" | "custom_tool_call" | "tool_search_call")
            )
        })
        .map(|i| {
            (
                i["call_id"]
                    .as_str()
                    .expect("the shape under test")
                    .to_string(),
                item_identity(i),
            )
        })
        .collect()
}

/// A short, stable picture of a translated request for the golden files: tool names, the message
/// sequence with tool calls by name, the note, and the scalar settings.
fn summary(out: &Value, chat: bool) -> Value {
    let mut s = serde_json::Map::new();
    let tools: Vec<&str> = out["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            if chat {
                t["function"]["name"].as_str().unwrap_or("?")
            } else {
                t["name"].as_str().unwrap_or("?")
            }
        })
        .collect();
    s.insert("tools".into(), serde_json::json!(tools));
    let messages: Vec<String> = out["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let role = m["role"].as_str().unwrap_or("?").to_string();
            let mut calls: Vec<String> = Vec::new();
            for tc in m["tool_calls"].as_array().into_iter().flatten() {
                calls.push(format!(
                    "call {}",
                    tc["function"]["name"].as_str().unwrap_or("?")
                ));
            }
            for b in m["content"].as_array().into_iter().flatten() {
                match b["type"].as_str() {
                    Some("tool_use") => {
                        calls.push(format!("tool_use {}", b["name"].as_str().unwrap_or("?")))
                    }
                    Some("tool_result") => calls.push("tool_result".into()),
                    _ => {}
                }
            }
            if calls.is_empty() {
                role
            } else {
                format!("{role}: {}", calls.join(", "))
            }
        })
        .collect();
    s.insert("messages".into(), serde_json::json!(messages));
    let system_text = if chat {
        out["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        out["system"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    if let Some(i) = system_text.find("Note from the gateway") {
        s.insert("note".into(), Value::String(system_text[i..].to_string()));
    }
    for (k, v) in out.as_object().expect("object") {
        if !matches!(k.as_str(), "messages" | "tools" | "system") {
            s.insert(k.clone(), v.clone());
        }
    }
    Value::Object(s)
}

/// Every recorded Codex 0.171.0 request through both translations: every tool Codex can run reaches the
/// upstream exactly once under a name that maps back to Codex's namespace and name, the hosted ones are
/// named in a note the model reads, and every call in the history names the upstream tool that maps
/// back to the call's own namespace and name.
#[test]
fn codex_0171_requests_lose_no_tool() {
    for scenario in CODEX_0171 {
        let body = codex_0171(scenario);
        let (callable, hosted) = codex_tools(&body);
        let (chat_out, chat_ctx) = chat::request(&body, "qwen3-coder").expect("chat");
        let (ant_out, ant_ctx) =
            anthropic::request(&body, "claude-sonnet-4-5", anthropic::Options::default())
                .expect("anthropic");
        golden(
            &format!("../codex-0.171/{scenario}.chat.golden.json"),
            &pretty(&summary(&chat_out, true)),
        );
        golden(
            &format!("../codex-0.171/{scenario}.anthropic.golden.json"),
            &pretty(&summary(&ant_out, false)),
        );
        for (out, ctx, chat) in [(&chat_out, &chat_ctx, true), (&ant_out, &ant_ctx, false)] {
            let names: Vec<&str> = out["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    if chat {
                        t["function"]["name"]
                            .as_str()
                            .expect("the shape under test")
                    } else {
                        t["name"].as_str().expect("the shape under test")
                    }
                })
                .collect();
            let reached: BTreeSet<(Option<String>, String)> =
                names.iter().map(|n| identity(ctx, n)).collect();
            assert_eq!(names.len(), reached.len(), "{scenario}: a tool twice");
            // `functions` is Codex's default namespace: a bare tool and `functions.x` are one tool.
            let norm =
                |s: &BTreeSet<(Option<String>, String)>| -> BTreeSet<(Option<String>, String)> {
                    s.iter()
                        .map(|(ns, n)| (ns.clone().filter(|ns| ns != "functions"), n.clone()))
                        .collect()
                };
            assert_eq!(norm(&reached), norm(&callable), "{scenario} (chat: {chat})");
            for n in &names {
                assert!(
                    n.len() <= 64
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                    "{scenario}: upstream tool name {n}"
                );
            }
            let text = serde_json::to_string(out).expect("the shape under test");
            for h in &hosted {
                assert!(
                    text.contains(&format!("`{h}`")),
                    "{scenario}: no note about {h}"
                );
            }
            assert!(!text.contains("\"additional_tools\""), "{scenario}");
            // The history's calls, in order, under names that map back to the calls.
            let mut upstream_calls: Vec<(String, String)> = Vec::new();
            for m in out["messages"].as_array().expect("the shape under test") {
                for tc in m["tool_calls"].as_array().into_iter().flatten() {
                    upstream_calls.push((
                        tc["id"].as_str().expect("the shape under test").into(),
                        tc["function"]["name"]
                            .as_str()
                            .expect("the shape under test")
                            .into(),
                    ));
                }
                for b in m["content"].as_array().into_iter().flatten() {
                    if b["type"] == "tool_use" {
                        upstream_calls.push((
                            b["id"].as_str().expect("the shape under test").into(),
                            b["name"].as_str().expect("the shape under test").into(),
                        ));
                    }
                }
            }
            let expected = history_calls(&body);
            assert_eq!(upstream_calls.len(), expected.len(), "{scenario}");
            for ((id, name), (call_id, who)) in upstream_calls.iter().zip(&expected) {
                assert_eq!(id, call_id);
                assert_eq!(&identity(ctx, name), who, "{scenario}: history call {name}");
                // (A compaction request declares no tools; its history still names them.)
                assert!(
                    names.is_empty() || names.contains(&name.as_str()),
                    "{scenario}: {name} is not a declared tool"
                );
            }
        }
        // Chat upstreams get the effort, verbosity and cache key Codex asked for.
        if let Some(e) = body.pointer("/reasoning/effort") {
            assert_eq!(&chat_out["reasoning_effort"], e, "{scenario}");
        }
        if let Some(v) = body.pointer("/text/verbosity") {
            assert_eq!(&chat_out["verbosity"], v, "{scenario}");
        }
        assert_eq!(
            chat_out["prompt_cache_key"], body["prompt_cache_key"],
            "{scenario}"
        );
        assert!(ant_out.get("prompt_cache_key").is_none());
    }
}

/// The bug this fixes: a responses-lite request (Codex's default model) has no top-level tools; the
/// upstream used to get none, so the model could not call any and the session did nothing.
#[test]
fn codex_0171_lite_turn_carries_its_tools() {
    let body = codex_0171("lite_turn");
    assert!(body.get("tools").is_none() && body["input"][0]["type"] == "additional_tools");
    let (out, ctx) = chat::request(&body, "qwen3-coder").expect("chat");
    let tools = out["tools"].as_array().expect("the upstream gets tools");
    assert!(tools.len() >= 10, "{}", tools.len());
    let exec = &tools[0]["function"];
    assert_eq!(exec["name"], "exec");
    assert_eq!(exec["parameters"]["required"], serde_json::json!(["input"]));
    assert!(
        exec["description"]
            .as_str()
            .expect("the shape under test")
            .contains("lark grammar")
    );
    assert_eq!(ctx.resolve("exec").kind, ToolKind::Custom);
    assert_eq!(out["parallel_tool_calls"], false);
    let (out, _) =
        anthropic::request(&body, "claude", anthropic::Options::default()).expect("anthropic");
    let tools = out["tools"].as_array().expect("the upstream gets tools");
    assert!(
        tools
            .iter()
            .any(|t| t["name"] == "collaboration__spawn_agent")
    );
    assert_eq!(out["tool_choice"]["disable_parallel_tool_use"], true);
}

fn chat_tool_sse(call_id: &str, name: &str, arguments: &str) -> String {
    let mut s = String::new();
    let mut chunk = |delta: Value, finish: Value| {
        let c = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        s.push_str(&format!("data: {c}\n\n"));
    };
    chunk(
        serde_json::json!({"role": "assistant", "tool_calls": [{"index": 0, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
        Value::Null,
    );
    let chars: Vec<char> = arguments.chars().collect();
    for part in chars.chunks(7) {
        let frag: String = part.iter().collect();
        chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
            Value::Null,
        );
    }
    chunk(serde_json::json!({}), serde_json::json!("tool_calls"));
    s.push_str("data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,\"total_tokens\":13}}\n\ndata: [DONE]\n\n");
    s
}

fn anthropic_tool_sse(call_id: &str, name: &str, arguments: &str) -> String {
    let mut s = String::new();
    let mut ev = |kind: &str, v: Value| {
        let mut v = v;
        v["type"] = Value::String(kind.into());
        s.push_str(&format!("event: {kind}\ndata: {v}\n\n"));
    };
    ev(
        "message_start",
        serde_json::json!({"message": {"id": "msg_1", "type": "message", "role": "assistant",
        "content": [], "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    );
    ev(
        "content_block_start",
        serde_json::json!({"index": 0, "content_block": {"type": "tool_use",
        "id": call_id, "name": name, "input": {}}}),
    );
    let chars: Vec<char> = arguments.chars().collect();
    for part in chars.chunks(7) {
        let frag: String = part.iter().collect();
        ev(
            "content_block_delta",
            serde_json::json!({"index": 0, "delta": {"type": "input_json_delta", "partial_json": frag}}),
        );
    }
    ev("content_block_stop", serde_json::json!({"index": 0}));
    ev(
        "message_delta",
        serde_json::json!({"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}}),
    );
    ev("message_stop", serde_json::json!({}));
    s
}

/// A call the upstream makes to a flattened tool comes back, streamed and not, through both
/// translations, as the exact item Codex 0.171.0 resolves (verified with the real CLI: a
/// `function_call` named `collaboration__list_agents` or `list_agents` without its namespace is
/// answered "unsupported call"; with `namespace: "collaboration"` it runs).
#[test]
fn codex_0171_namespaced_calls_come_back_as_codex_items() {
    // (fixture, upstream name, arguments, the item Codex expects without its ids)
    let cases = [
        (
            "lite_namespace_followup",
            "collaboration__list_agents",
            "{}",
            serde_json::json!({"type": "function_call", "status": "completed", "call_id": "call_up_1",
                "name": "list_agents", "namespace": "collaboration", "arguments": "{}"}),
        ),
        (
            "lite_exec_followup",
            "exec",
            r#"{"input":"text(await tools.exec_command({cmd: \"ls\"}))"}"#,
            serde_json::json!({"type": "custom_tool_call", "status": "completed", "call_id": "call_up_1",
                "name": "exec", "namespace": "functions",
                "input": "text(await tools.exec_command({cmd: \"ls\"}))"}),
        ),
        (
            "lite_turn",
            "clock__sleep",
            r#"{"duration_ms":1}"#,
            serde_json::json!({"type": "function_call", "status": "completed", "call_id": "call_up_1",
                "name": "sleep", "namespace": "clock", "arguments": "{\"duration_ms\":1}"}),
        ),
        (
            "plain_turn",
            "multi_agent_v1__spawn_agent",
            r#"{"message":"hi"}"#,
            serde_json::json!({"type": "function_call", "status": "completed", "call_id": "call_up_1",
                "name": "spawn_agent", "namespace": "multi_agent_v1", "arguments": "{\"message\":\"hi\"}"}),
        ),
        (
            "gpt55_turn",
            "apply_patch",
            r#"{"input":"*** Begin Patch\n*** End Patch\n"}"#,
            serde_json::json!({"type": "custom_tool_call", "status": "completed", "call_id": "call_up_1",
                "name": "apply_patch", "input": "*** Begin Patch\n*** End Patch\n"}),
        ),
        (
            "gpt55_turn",
            "tool_search",
            r#"{"query":"spawn agent"}"#,
            serde_json::json!({"type": "tool_search_call", "status": "completed", "call_id": "call_up_1",
                "execution": "client", "arguments": {"query": "spawn agent"}}),
        ),
        // Tools a tool_search brought are callable in the next request, with their namespace.
        (
            "tool_search_followup",
            "multi_agent_v1__wait_agent",
            r#"{"targets":["a"]}"#,
            serde_json::json!({"type": "function_call", "status": "completed", "call_id": "call_up_1",
                "name": "wait_agent", "namespace": "multi_agent_v1", "arguments": "{\"targets\":[\"a\"]}"}),
        ),
        (
            "gpt55_turn",
            "exec_command",
            r#"{"cmd":"ls"}"#,
            serde_json::json!({"type": "function_call", "status": "completed", "call_id": "call_up_1",
                "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}),
        ),
    ];
    let strip = |mut item: Value| {
        item.as_object_mut()
            .expect("the shape under test")
            .remove("id");
        item
    };
    for (scenario, name, args, expected) in cases {
        let body = codex_0171(scenario);
        let (_, chat_ctx) = chat::request(&body, "m").expect("chat");
        let (_, ant_ctx) =
            anthropic::request(&body, "m", anthropic::Options::default()).expect("anthropic");
        let what = format!("{scenario} / {name}");
        // Streamed.
        for chunk in [1, 5, usize::MAX] {
            let mut tr =
                chat::ChatStream::new(chat_ctx.clone(), Box::new(SeqIds::default()), CREATED);
            let out = run_stream(
                &mut tr,
                chat_tool_sse("call_up_1", name, args).as_bytes(),
                chunk,
            )
            .expect("chat stream");
            let evs = events(&out);
            let done = assert_codex_shape(&evs);
            assert_eq!(
                strip(done["response"]["output"][0].clone()),
                expected,
                "{what} (chat)"
            );
            let item_done = evs
                .iter()
                .find(|e| e["type"] == "response.output_item.done")
                .expect("the shape under test");
            assert_eq!(strip(item_done["item"].clone()), expected, "{what} (chat)");
            let added = evs
                .iter()
                .find(|e| e["type"] == "response.output_item.added")
                .expect("the shape under test");
            assert_eq!(added["item"]["type"], expected["type"]);
            assert_eq!(added["item"].get("namespace"), expected.get("namespace"));

            let mut tr = anthropic::MessagesStream::new(
                ant_ctx.clone(),
                Box::new(SeqIds::default()),
                CREATED,
            );
            let out = run_stream(
                &mut tr,
                anthropic_tool_sse("call_up_1", name, args).as_bytes(),
                chunk,
            )
            .expect("anthropic stream");
            let evs = events(&out);
            let done = assert_codex_shape(&evs);
            assert_eq!(
                strip(done["response"]["output"][0].clone()),
                expected,
                "{what} (anthropic)"
            );
        }
        // Not streamed.
        let chat_answer = serde_json::json!({"id": "c1", "object": "chat.completion", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_up_1", "type": "function",
            "function": {"name": name, "arguments": args}}]}, "finish_reason": "tool_calls"}]});
        let r = chat::response(&chat_answer, &chat_ctx, &mut SeqIds::default(), CREATED);
        assert_eq!(
            strip(r["output"][0].clone()),
            expected,
            "{what} (chat, not streamed)"
        );
        let ant_answer = serde_json::json!({"id": "m1", "type": "message", "role": "assistant", "content": [
            {"type": "tool_use", "id": "call_up_1", "name": name, "input": serde_json::from_str::<Value>(args).expect("the shape under test")}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}});
        let r = anthropic::response(&ant_answer, &ant_ctx, &mut SeqIds::default(), CREATED);
        let mut got = strip(r["output"][0].clone());
        // Anthropic's tool input is an object; its JSON text is what the arguments carry.
        if let (Some(a), Some(e)) = (got["arguments"].as_str(), expected["arguments"].as_str()) {
            assert_eq!(
                serde_json::from_str::<Value>(a).expect("the shape under test"),
                serde_json::from_str::<Value>(e).expect("the shape under test")
            );
            got["arguments"] = expected["arguments"].clone();
        }
        assert_eq!(got, expected, "{what} (anthropic, not streamed)");
    }
}

// ------------------------------------------------------------------ fuzz

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn stream_translators_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut c = chat::ChatStream::new(ToolContext::default(), Box::new(SeqIds::default()), 0);
            let _ = c.feed(&bytes);
            let _ = c.finish();
            let mut a = anthropic::MessagesStream::new(ToolContext::default(), Box::new(SeqIds::default()), 0);
            let _ = a.feed(&bytes);
            let _ = a.finish();
        }

        #[test]
        fn mutated_fixtures_never_panic(cut in 0usize..4000, junk in "[{}\\[\\]\":,a-z0-9 \n]{0,40}") {
            for name in ["chat_stream_tool.sse", "anthropic_stream_tool.sse", "chat_stream_apply_patch.sse"] {
                let mut s = read(name);
                let at = cut.min(s.len());
                let at = (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                s.insert_str(at, &junk);
                let mut c = chat::ChatStream::new(ctx_with_apply_patch(), Box::new(SeqIds::default()), 0);
                let _ = c.feed(s.as_bytes());
                let _ = c.finish();
                let mut a = anthropic::MessagesStream::new(ctx_with_apply_patch(), Box::new(SeqIds::default()), 0);
                let _ = a.feed(s.as_bytes());
                let _ = a.finish();
            }
        }

        #[test]
        fn request_translation_never_panics(v in arb_json()) {
            let _ = chat::request(&v, "m");
            let _ = anthropic::request(&v, "m", anthropic::Options::default());
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("message"),
                Just("function_call"),
                Just("custom_tool_call"),
                Just("reasoning"),
                Just("function_call_output"),
                Just("user"),
                Just("assistant"),
                Just("developer"),
                Just("custom"),
                Just("function"),
                Just("input_text"),
                Just("input_image"),
                Just("namespace"),
                Just("additional_tools"),
                Just("tool_search"),
                Just("tool_search_call"),
                Just("tool_search_output"),
                Just("client"),
                Just("x")
            ]
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("type"),
                        Just("role"),
                        Just("content"),
                        Just("input"),
                        Just("tools"),
                        Just("name"),
                        Just("arguments"),
                        Just("call_id"),
                        Just("output"),
                        Just("text"),
                        Just("model"),
                        Just("reasoning"),
                        Just("effort"),
                        Just("format"),
                        Just("image_url"),
                        Just("encrypted_content"),
                        Just("summary"),
                        Just("namespace"),
                        Just("execution")
                    ]
                    .prop_map(str::to_string),
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

// ------------------------------------------------ Messages ingress (Claude Code) → Chat Completions

use tollgate_broker::translate::messages;

#[test]
fn claude_code_request_to_chat_both_flavors() {
    let req = json("messages_request.json");
    for (flavor, name) in [
        (
            messages::ChatFlavor::Compatible,
            "messages_request.chat.golden.json",
        ),
        (
            messages::ChatFlavor::OpenAi,
            "messages_request.openai.golden.json",
        ),
    ] {
        let (out, ctx) = messages::request(&req, "upstream-model", flavor).expect("translate");
        golden(name, &pretty(&out));
        assert_eq!(ctx.model, "claude-opus-5-5");
        // The client's limit, in the one field this flavour reads.
        assert_eq!(out[flavor.limit_field()], 32000, "{name}");
        assert_eq!(
            FIELDS_OF_CHAT
                .iter()
                .filter(|f| out.get(**f).is_some())
                .count(),
            1,
            "{name}"
        );
        // Claude Code's custom tools are functions; the server tool is removed with a note.
        let names: Vec<&str> = out["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(names, ["Bash", "Edit", "mcp__github__get_issue"]);
        assert!(
            out["messages"][0]["content"]
                .as_str()
                .is_some_and(|s| s.contains("`web_search`")),
            "{name}"
        );
        assert_eq!(out["parallel_tool_calls"], false);
        let roles: Vec<&str> = out["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["role"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            roles,
            [
                "system",
                "user",
                "assistant",
                "tool",
                "user",
                "assistant",
                "tool"
            ]
        );
    }
}

const FIELDS_OF_CHAT: [&str; 3] = ["max_output_tokens", "max_completion_tokens", "max_tokens"];

#[test]
fn chat_answer_to_messages() {
    let ctx = messages::MessagesContext {
        model: "claude-opus-5-5".into(),
    };
    let out = messages::response(&json("chat_response.json"), &ctx, &mut SeqIds::default());
    golden("messages_response.golden.json", &pretty(&out));
    assert_eq!(out["stop_reason"], "tool_use");
    assert_eq!(out["content"][1]["input"], serde_json::json!({"cmd": "ls"}));
    // Anthropic's input_tokens exclude cache reads.
    assert_eq!(out["usage"]["input_tokens"], 36);
    assert_eq!(out["usage"]["cache_read_input_tokens"], 64);
}

#[test]
fn chat_stream_to_messages_at_any_chunking() {
    let input = read("chat_stream_tool.sse");
    let ctx = messages::MessagesContext {
        model: "claude-opus-5-5".into(),
    };
    let whole = run_stream(
        &mut messages::ChatToMessagesStream::new(ctx.clone(), Box::new(SeqIds::default())),
        input.as_bytes(),
        input.len(),
    )
    .expect("stream");
    golden("messages_stream_tool.golden.sse", &whole);
    for chunk in [1, 7, 64] {
        let got = run_stream(
            &mut messages::ChatToMessagesStream::new(ctx.clone(), Box::new(SeqIds::default())),
            input.as_bytes(),
            chunk,
        )
        .expect("stream");
        assert_eq!(got, whole, "chunk {chunk}");
    }
    let evs = events(&whole);
    assert_eq!(
        types(&evs),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let delta = &evs[evs.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["input_tokens"], 160);
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 8960);
    assert_eq!(delta["usage"]["output_tokens"], 24);
    // The broker's usage decoder reads the translated stream as the Messages ingress does.
    let mut d =
        tollgate_broker::usage::SseUsageDecoder::new(tollgate_broker::usage::Wire::Messages);
    d.feed(whole.as_bytes());
    assert_eq!(d.finish(), tollgate_broker::usage::StreamEnd::Completed);
    let u = d.usage.expect("usage");
    assert_eq!(
        (u.input_tokens, u.cached_input_tokens, u.output_tokens),
        (9120, 8960, 24)
    );
}

#[test]
fn chat_stream_error_becomes_an_anthropic_error_event() {
    let input = read("messages_chat_stream_error.sse");
    let out = run_stream(
        &mut messages::ChatToMessagesStream::new(
            messages::MessagesContext::default(),
            Box::new(SeqIds::default()),
        ),
        input.as_bytes(),
        5,
    )
    .expect("stream");
    golden("messages_chat_stream_error.golden.sse", &out);
    let evs = events(&out);
    assert_eq!(evs.last().map(|e| e["type"].clone()), Some("error".into()));
    assert_eq!(
        evs.last().map(|e| e["error"]["message"].clone()),
        Some("model overloaded, try again".into())
    );
}
