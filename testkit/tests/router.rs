//! In-process router tests with `oneshot` (no socket).
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tollgate_testkit::mock::{MockConfig, MockState, app};
use tower::ServiceExt;

#[tokio::test]
async fn oneshot_chat_completion() {
    let state = MockState::new(MockConfig::default());
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": "m", "messages": [{"role": "user", "content": "hey"}]}).to_string(),
        ))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply to: hey");
    assert_eq!(state.requests().len(), 1);

    let req = Request::post("/v1/nope").body(Body::empty()).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 404);
}

async fn post(state: &MockState, path: &str, headers: &[(&str, &str)], body: Value) -> Vec<u8> {
    let mut req = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app(state.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

/// A session script shared by two mocks goes on across them, in each API's shape: a free-form call and a
/// `tool_search_call` on Responses (streamed and not), a flattened namespaced call on Chat, a function on
/// Messages; a compaction prompt is answered with the summary and does not use a step; then the final text.
#[tokio::test]
async fn a_session_script_goes_on_across_mocks_and_apis() {
    use tollgate_testkit::{ScriptStep, SessionScript};
    let script = SessionScript::new(vec![
        ScriptStep::custom(
            "apply_patch",
            "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n",
        ),
        ScriptStep::tool_search("record marker"),
        ScriptStep::namespaced("mcp__marker", "record_marker", json!({"text": "m"})),
        ScriptStep::function("exec_command", json!({"cmd": "ls"})).reporting_input_tokens(999),
    ]);
    let (a, b) = (
        MockState::new(MockConfig::default()),
        MockState::new(MockConfig::default()),
    );
    a.set_script(script.clone());
    b.set_script(script.clone());
    let responses = |stream: bool| {
        json!({"model": "m", "stream": stream, "tools": [{"type": "custom", "name": "apply_patch"}],
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}]})
    };

    // 1. Responses, streamed: the custom_tool_call, its input in deltas.
    let events =
        tollgate_testkit::sse::parse(&post(&a, "/v1/responses", &[], responses(true)).await);
    let json: Vec<Value> = events.iter().filter_map(|e| e.json()).collect();
    let deltas: String = json
        .iter()
        .filter(|e| e["type"] == "response.custom_tool_call_input.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    let done = json
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .unwrap();
    assert_eq!(done["item"]["type"], "custom_tool_call");
    assert_eq!(done["item"]["name"], "apply_patch");
    assert_eq!(done["item"]["input"].as_str(), Some(deltas.as_str()));
    assert!(deltas.starts_with("*** Begin Patch"));

    // 2. Responses on the other mock: the tool_search_call, arguments an object.
    let v: Value =
        serde_json::from_slice(&post(&b, "/v1/responses", &[], responses(false)).await).unwrap();
    let item = &v["output"][0];
    assert_eq!(item["type"], "tool_search_call");
    assert_eq!(item["execution"], "client");
    assert_eq!(item["arguments"], json!({"query": "record marker"}));

    // 3. Chat: the namespaced tool by its flattened name.
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "go"}],
        "tools": [{"type": "function", "function": {"name": "mcp__marker__record_marker", "parameters": {}}}]});
    let v: Value =
        serde_json::from_slice(&post(&a, "/v1/chat/completions", &[], chat).await).unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "mcp__marker__record_marker");
    assert_eq!(call["arguments"], r#"{"text":"m"}"#);

    // 4. Messages: Codex's compaction prompt gets the summary, then the last step with its token count.
    let messages = |text: &str| {
        json!({"model": "m", "max_tokens": 100, "tools": [{"name": "exec_command", "input_schema": {}}],
            "messages": [{"role": "user", "content": text}]})
    };
    let v1 = [("anthropic-version", "2023-06-01")];
    let compaction =
        messages("You are performing a CONTEXT CHECKPOINT COMPACTION. Create a handoff summary");
    let v: Value =
        serde_json::from_slice(&post(&b, "/v1/messages", &v1, compaction).await).unwrap();
    assert_eq!(v["content"][0]["text"], script.summary);
    let v: Value =
        serde_json::from_slice(&post(&b, "/v1/messages", &v1, messages("go")).await).unwrap();
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["input"], json!({"cmd": "ls"}));
    assert_eq!(v["usage"]["input_tokens"], 999);

    // 5. The final answer; every answer recorded with its place in the session.
    let v: Value =
        serde_json::from_slice(&post(&a, "/v1/responses", &[], responses(false)).await).unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], script.final_text);
    assert_eq!(script.steps_done(), 4);
    let mut seen: Vec<(usize, String)> = a
        .requests()
        .into_iter()
        .chain(b.requests())
        .filter_map(|r| r.scripted.map(|s| (s.order, s.what)))
        .collect();
    seen.sort();
    let whats: Vec<&str> = seen.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(
        whats,
        ["step 0", "step 1", "step 2", "summary", "step 3", "final"]
    );
    assert_eq!(
        seen.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
}
