//! Socket tests of the mock upstream: wire shapes, scripted flows, faults, recording.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_testkit::sse::{self, SseEvent};
use tollgate_testkit::{Fault, MockConfig, MockHandle, spawn};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn events(&self) -> Vec<SseEvent> {
        sse::parse(&self.body)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req.send().await.unwrap();
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

async fn post(h: &MockHandle, path: &str, body: Value) -> Resp {
    send(
        client()
            .post(h.url(path))
            .header("anthropic-version", "2023-06-01")
            .json(&body),
    )
    .await
}

fn names(events: &[SseEvent]) -> Vec<String> {
    sse::names(events)
}

fn responses_body(text: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-5.5",
        "stream": stream,
        "store": false,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sys"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        ],
        "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}],
        "x_unknown_field": {"kept": true},
    })
}

/// Asserts every event's `event:` line matches its JSON `type`.
fn assert_event_lines_match_type(events: &[SseEvent]) {
    for e in events {
        let j = e.json().unwrap();
        assert_eq!(e.event.as_deref(), j["type"].as_str(), "{e:?}");
    }
}

#[tokio::test]
async fn responses_stream_has_the_full_event_sequence_and_usage() {
    let h = spawn(MockConfig {
        cached_tokens: 5,
        ..MockConfig::default()
    })
    .await;
    let body = responses_body("hello there world", true);
    let bytes_len = serde_json::to_vec(&body).unwrap().len() as u64;
    let r = post(&h, "/v1/responses", body).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let ev = r.events();
    assert_event_lines_match_type(&ev);
    let n = names(&ev);
    let deltas = n
        .iter()
        .filter(|x| *x == "response.output_text.delta")
        .count();
    assert!(deltas >= 3, "{n:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(n, expected);
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e.json().unwrap()["sequence_number"], json!(i));
    }
    let text: String = ev
        .iter()
        .filter(|e| e.event.as_deref() == Some("response.output_text.delta"))
        .map(|e| e.json().unwrap()["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "mock reply to: hello there world");

    let item = &ev[ev.len() - 2].json().unwrap()["item"];
    assert_eq!(item["type"], "message");
    assert_eq!(item["status"], "completed");
    assert_eq!(item["role"], "assistant");
    assert!(item["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], text);
    assert_eq!(item["content"][0]["annotations"], json!([]));

    let done = ev.last().unwrap().json().unwrap();
    let resp = &done["response"];
    assert!(resp["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(resp["status"], "completed");
    assert_eq!(resp["model"], "gpt-5.5");
    assert_eq!(resp["output"][0], *item);
    let u = &resp["usage"];
    let input = bytes_len.div_ceil(4);
    assert_eq!(u["input_tokens"], json!(input));
    assert_eq!(u["input_tokens_details"]["cached_tokens"], json!(5));
    assert_eq!(u["output_tokens"], json!(7)); // 6 words + 1
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], json!(0));
    assert_eq!(u["total_tokens"], json!(input + 7));
    // created/in_progress carry the same id, no usage yet.
    assert_eq!(ev[0].json().unwrap()["response"]["id"], resp["id"]);
    assert_eq!(ev[0].json().unwrap()["response"]["status"], "in_progress");

    assert!(
        h.wait_until(Duration::from_secs(2), |r| r.len() == 1 && r[0].completed)
            .await
    );
    let rec = &h.requests()[0];
    assert!(rec.stream);
    assert_eq!(rec.status, 200);
    assert_eq!(rec.events_sent, ev.len());
    let ru = rec.usage.as_ref().unwrap();
    assert_eq!(ru.wire, *u);
    assert_eq!(
        (ru.input_tokens, ru.cached_tokens, ru.output_tokens),
        (input, 5, 7)
    );
    assert_eq!(rec.body["x_unknown_field"], json!({"kept": true}));
    assert_eq!(rec.body_bytes as u64, bytes_len);
}

#[tokio::test]
async fn responses_non_streaming_returns_the_response_object() {
    let h = spawn(MockConfig {
        input_tokens: Some(123),
        output_tokens: Some(45),
        cached_tokens: 23,
        ..MockConfig::default()
    })
    .await;
    let r = post(
        &h,
        "/v1/responses",
        json!({"model": "m", "input": "just a string"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "mock reply to: just a string"
    );
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 123, "input_tokens_details": {"cached_tokens": 23},
               "output_tokens": 45, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": 168})
    );
    let rec = &h.requests()[0];
    assert!(rec.completed && !rec.stream);
    assert_eq!(rec.usage.as_ref().unwrap().total_tokens, 168);
}

#[tokio::test]
async fn responses_tool_call_flow() {
    let h = spawn(MockConfig {
        tool_command: "echo custom".into(),
        ..MockConfig::default()
    })
    .await;
    let r = post(
        &h,
        "/v1/responses",
        responses_body("please USE_TOOL now", true),
    )
    .await;
    let ev = r.events();
    assert_event_lines_match_type(&ev);
    let n = names(&ev);
    let frags = n
        .iter()
        .filter(|x| *x == "response.function_call_arguments.delta")
        .count();
    assert!(frags >= 2);
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ];
    expected.extend(std::iter::repeat_n(
        "response.function_call_arguments.delta",
        frags,
    ));
    expected.extend([
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(n, expected);
    let args: String = ev
        .iter()
        .filter(|e| e.event.as_deref() == Some("response.function_call_arguments.delta"))
        .map(|e| e.json().unwrap()["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args, r#"{"cmd":"echo custom"}"#);
    let item = ev[ev.len() - 2].json().unwrap()["item"].clone();
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["name"], "exec_command");
    assert_eq!(item["arguments"], args);
    assert_eq!(item["status"], "completed");
    assert!(item["id"].as_str().unwrap().starts_with("fc_"));
    let call_id = item["call_id"].as_str().unwrap().to_owned();
    assert!(call_id.starts_with("call_"));

    // Codex's follow-up: echoed call + its output.
    let mut next = responses_body("please USE_TOOL now", true);
    let input = next["input"].as_array_mut().unwrap();
    input.push(item);
    let long_output = format!(
        "Process exited with code 0\nOutput:\ntool-ran-ok\n{}",
        "x".repeat(400)
    );
    input.push(json!({"type": "function_call_output", "call_id": call_id, "output": long_output}));
    let r = post(&h, "/v1/responses", next).await;
    let ev = r.events();
    let done = &ev[ev.len() - 2].json().unwrap()["item"];
    let text = done["content"][0]["text"].as_str().unwrap();
    let expected: String = long_output.chars().take(200).collect();
    assert_eq!(text, format!("tool said: {expected}"));
}

#[tokio::test]
async fn chat_completions_non_stream_and_stream() {
    let h = spawn(MockConfig::default()).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "hi chat"}]},
    ]});
    let r = post(&h, "/v1/chat/completions", body.clone()).await;
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mock reply to: hi chat"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], json!(6));
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 6
    );
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], json!(0));

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let r = post(&h, "/v1/chat/completions", sbody).await;
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let ev = r.events();
    assert!(ev.iter().all(|e| e.event.is_none()));
    assert!(ev.last().unwrap().is_done());
    let chunks: Vec<Value> = ev.iter().filter_map(SseEvent::json).collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "mock reply to: hi chat");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], json!(6));
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        h.wait_until(Duration::from_secs(2), |r| r.len() == 2 && r[1].completed)
            .await
    );
    assert_eq!(
        h.requests()[1].usage.as_ref().unwrap().wire,
        usage_chunk["usage"]
    );

    // Without include_usage: no usage chunk, nothing recorded as reported.
    let mut sbody = body;
    sbody["stream"] = json!(true);
    let ev = post(&h, "/v1/chat/completions", sbody).await.events();
    assert!(
        ev.iter()
            .filter_map(SseEvent::json)
            .all(|c| c.get("usage").is_none())
    );
    assert!(
        h.wait_until(Duration::from_secs(2), |r| r.len() == 3 && r[2].completed)
            .await
    );
    assert_eq!(h.requests()[2].usage, None);
}

#[tokio::test]
async fn chat_completions_tool_flow() {
    let h = spawn(MockConfig::default()).await;
    let tools = json!([{"type": "function", "function": {"name": "shell", "parameters": {"type": "object"}}}]);
    let body = json!({"model": "m", "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "USE_TOOL"}]});
    let ev = post(&h, "/v1/chat/completions", body).await.events();
    let chunks: Vec<Value> = ev.iter().filter_map(SseEvent::json).collect();
    let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["function"]["name"], "shell");
    assert!(first["id"].as_str().unwrap().starts_with("call_"));
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"cmd":"echo tool-ran-ok"}"#);
    assert!(chunks.len() >= 4, "arguments must be streamed in fragments");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    let body = json!({"model": "m", "tools": tools, "messages": [
        {"role": "user", "content": "USE_TOOL"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "shell", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "tool-ran-ok"},
    ]});
    let v = post(&h, "/v1/chat/completions", body).await.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "tool said: tool-ran-ok"
    );
    let v = post(
        &h,
        "/v1/chat/completions",
        json!({"model": "m", "tools": tools,
        "messages": [{"role": "user", "content": "USE_TOOL"}]}),
    )
    .await
    .json();
    let tc = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(tc["function"]["name"], "shell");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
}

/// Like a real model, the mock calls only a tool the request declares (none: text), and fills a
/// free-form tool (one `input` string, as a gateway presents Codex's `apply_patch` or `exec`) by `input`.
#[tokio::test]
async fn scripted_calls_only_reach_declared_tools() {
    let h = spawn(MockConfig {
        tool_command: "text(1)".into(),
        ..MockConfig::default()
    })
    .await;
    let v = post(
        &h,
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "USE_TOOL"}]}),
    )
    .await
    .json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mock reply to: USE_TOOL"
    );
    assert!(v["choices"][0]["message"]["tool_calls"].is_null());
    let v = post(
        &h,
        "/v1/messages",
        json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "USE_TOOL"}]}),
    )
    .await
    .json();
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "end_turn");

    let free_form = json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]});
    let v = post(
        &h,
        "/v1/chat/completions",
        json!({"model": "m", "tools": [{"type": "function", "function": {"name": "exec", "parameters": free_form}}],
            "messages": [{"role": "user", "content": "USE_TOOL"}]}),
    )
    .await
    .json();
    let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "exec");
    assert_eq!(call["arguments"], r#"{"input":"text(1)"}"#);
    let v = post(
        &h,
        "/v1/messages",
        json!({"model": "c", "max_tokens": 10, "tools": [{"name": "exec", "input_schema": free_form}],
            "messages": [{"role": "user", "content": "USE_TOOL"}]}),
    )
    .await
    .json();
    assert_eq!(v["content"][0]["name"], "exec");
    assert_eq!(v["content"][0]["input"], json!({"input": "text(1)"}));

    // A named tool, when declared, gets the call, with its one required argument or none.
    h.update_config(|c| c.tool_name = Some("tool_search".into()));
    let tools = json!([
        {"type": "function", "function": {"name": "exec", "parameters": free_form}},
        {"type": "function", "function": {"name": "tool_search", "parameters": {"type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "number"}}, "required": ["query"]}}},
        {"type": "function", "function": {"name": "list_agents", "parameters": {"type": "object",
            "properties": {"path_prefix": {"type": "string"}}}}}
    ]);
    let call = |v: Value| v["choices"][0]["message"]["tool_calls"][0]["function"].clone();
    let body = json!({"model": "m", "tools": tools, "messages": [{"role": "user", "content": "USE_TOOL"}]});
    let v = post(&h, "/v1/chat/completions", body.clone()).await.json();
    assert_eq!(
        call(v),
        json!({"name": "tool_search", "arguments": r#"{"query":"text(1)"}"#})
    );
    h.update_config(|c| c.tool_name = Some("list_agents".into()));
    let v = post(&h, "/v1/chat/completions", body.clone()).await.json();
    assert_eq!(call(v), json!({"name": "list_agents", "arguments": "{}"}));
    h.update_config(|c| c.tool_name = Some("not_declared".into()));
    let v = post(&h, "/v1/chat/completions", body).await.json();
    assert_eq!(call(v)["name"], "exec");
}

#[tokio::test]
async fn anthropic_messages_shapes_and_tool_flow() {
    let h = spawn(MockConfig {
        api_key: Some("sk-ant".into()),
        cached_tokens: 2,
        input_tokens: Some(10),
        ..MockConfig::default()
    })
    .await;
    let tools = json!([{"name": "bash", "input_schema": {"type": "object"}}]);
    let req = |body: Value| {
        client()
            .post(h.url("/v1/messages"))
            .header("x-api-key", "sk-ant")
            .header("anthropic-version", "2023-06-01")
            .json(&body)
    };
    let r = send(req(json!({"model": "claude", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi claude"}]})))
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0],
        json!({"type": "text", "text": "mock reply to: hi claude"})
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 8, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 2, "output_tokens": 6})
    );
    let rec = &h.requests()[0];
    assert_eq!(rec.usage.as_ref().unwrap().input_tokens, 10);

    let r = send(req(
        json!({"model": "claude", "max_tokens": 100, "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "USE_TOOL"}]}]}),
    ))
    .await;
    let ev = r.events();
    assert_event_lines_match_type(&ev);
    let n: Vec<String> = names(&ev).into_iter().filter(|n| n != "ping").collect();
    let deltas = n.iter().filter(|x| *x == "content_block_delta").count();
    assert!(deltas >= 2);
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(n, expected);
    let start = ev[0].json().unwrap();
    assert_eq!(start["message"]["usage"]["input_tokens"], json!(8));
    assert_eq!(
        start["message"]["usage"]["cache_read_input_tokens"],
        json!(2)
    );
    let block = ev
        .iter()
        .find(|e| e.event.as_deref() == Some("content_block_start"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(block["content_block"]["type"], "tool_use");
    assert_eq!(block["content_block"]["name"], "bash");
    let tool_id = block["content_block"]["id"].as_str().unwrap().to_owned();
    let args: String = ev
        .iter()
        .filter_map(|e| e.json())
        .filter(|j| j["delta"]["type"] == "input_json_delta")
        .map(|j| j["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args, r#"{"cmd":"echo tool-ran-ok"}"#);
    let md = ev
        .iter()
        .find(|e| e.event.as_deref() == Some("message_delta"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(md["delta"]["stop_reason"], "tool_use");
    assert_eq!(md["usage"]["output_tokens"], json!(3));

    let v = send(req(json!({"model": "claude", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "USE_TOOL"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id,
            "content": [{"type": "text", "text": "tool-ran-ok"}]}]},
    ]})))
    .await
    .json();
    assert_eq!(v["content"][0]["text"], "tool said: tool-ran-ok");

    // Missing anthropic-version → 400 in Anthropic's error shape.
    let r = send(
        client()
            .post(h.url("/v1/messages"))
            .header("x-api-key", "sk-ant")
            .json(&json!({"model": "c", "messages": []})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn auth_is_enforced_in_each_providers_shape() {
    let h = spawn(MockConfig {
        api_key: Some("sk-test".into()),
        ..MockConfig::default()
    })
    .await;
    let body = json!({"model": "m", "input": "x", "messages": [{"role": "user", "content": "x"}]});
    for path in ["/v1/responses", "/v1/chat/completions"] {
        let r = send(client().post(h.url(path)).json(&body)).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        let r = send(client().post(h.url(path)).bearer_auth("wrong").json(&body)).await;
        assert_eq!(r.status, 401);
        let r = send(
            client()
                .post(h.url(path))
                .bearer_auth("sk-test")
                .json(&body),
        )
        .await;
        assert_eq!(r.status, 200);
        let r = send(
            client()
                .post(h.url(path))
                .header("api-key", "sk-test")
                .json(&body),
        )
        .await;
        assert_eq!(r.status, 200, "azure-style api-key");
    }
    let r = send(
        client()
            .post(h.url("/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .header("x-api-key", "nope")
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = send(client().get(h.url("/v1/models"))).await;
    assert_eq!(r.status, 401);
    let r = send(client().get(h.url("/v1/models")).bearer_auth("sk-test")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-5.5")
    );
    // Control routes need no auth.
    assert_eq!(
        send(client().get(h.url("/_mock/requests"))).await.status,
        200
    );
}

#[tokio::test]
async fn error_faults_are_consumed_in_order_then_normal() {
    let h = spawn(MockConfig::default()).await;
    h.push_faults([
        Fault::status(500),
        Fault::rate_limited(2),
        Fault {
            status: Some(429),
            code: Some("insufficient_quota".into()),
            ..Fault::default()
        },
    ]);
    // GET /v1/models does not consume faults meant for inference.
    assert_eq!(send(client().get(h.url("/v1/models"))).await.status, 200);
    let body = json!({"model": "m", "input": "x"});
    let r = post(&h, "/v1/responses", body.clone()).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "server_error");
    let r = post(&h, "/v1/responses", body.clone()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let r = post(&h, "/v1/responses", body.clone()).await;
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    assert_eq!(r.header("retry-after"), None);
    let r = post(&h, "/v1/responses", body.clone()).await;
    assert_eq!(r.status, 200);
    let recs = h.requests();
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[1].fault, Some(Fault::status(500)));
    assert_eq!(recs[1].usage, None);
    assert_eq!(recs[4].fault, None);

    // Anthropic error shape for a 529 on /v1/messages.
    h.push_fault(Fault::status(529));
    let r = post(&h, "/v1/messages", json!({"model": "c", "messages": []})).await;
    assert_eq!(r.status, 529);
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn path_scoped_faults_skip_other_routes() {
    let h = spawn(MockConfig::default()).await;
    h.push_fault(Fault::status(503).on_path("/v1/chat/completions"));
    let r = post(&h, "/v1/responses", json!({"model": "m", "input": "x"})).await;
    assert_eq!(r.status, 200);
    let r = post(
        &h,
        "/v1/chat/completions",
        json!({"model": "m", "messages": []}),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(h.pending_faults().is_empty());
}

#[tokio::test]
async fn close_fault_drops_the_connection_without_a_response() {
    let h = spawn(MockConfig::default()).await;
    h.push_fault(Fault::close());
    let err = client()
        .post(h.url("/v1/responses"))
        .json(&json!({"model": "m", "input": "x", "stream": true}))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status(), "{err:?}");
    // Next request is normal (fresh connection).
    let r = post(&h, "/v1/responses", json!({"model": "m", "input": "x"})).await;
    assert_eq!(r.status, 200);
    let recs = h.requests();
    assert_eq!(recs[0].fault, Some(Fault::close()));
    assert!(!recs[0].completed);
}

#[tokio::test]
async fn first_byte_delay_and_global_latency() {
    let h = spawn(MockConfig::default()).await;
    h.push_fault(Fault::first_byte_delay_ms(300));
    let t = Instant::now();
    let r = client()
        .post(h.url("/v1/responses"))
        .json(&json!({"model": "m", "input": "x", "stream": true}))
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();

    h.set_latency_ms(200);
    let t = Instant::now();
    let r = send(client().get(h.url("/v1/models"))).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn drop_after_events_cuts_the_stream_abruptly() {
    let h = spawn(MockConfig::default()).await;
    h.push_fault(Fault::drop_after_events(3));
    let mut r = client()
        .post(h.url("/v1/responses"))
        .json(&json!({"model": "m", "input": "x y z", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = Vec::new();
    let err = loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => panic!("body ended cleanly; expected an abrupt drop"),
            Err(e) => break e,
        }
    };
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err:?}"
    );
    let ev = sse::parse(&got);
    assert_eq!(
        names(&ev),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added"
        ]
    );
    let rec = &h.requests()[0];
    assert_eq!(rec.events_sent, 3);
    assert!(!rec.completed);
    assert_eq!(rec.usage, None, "usage was never on the wire");

    // Non-streaming: half a JSON body, then the connection dies.
    h.push_fault(Fault::drop_after_events(0));
    let r = client()
        .post(h.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.is_err());
}

#[tokio::test]
async fn eof_after_events_ends_the_body_cleanly_before_completed() {
    let h = spawn(MockConfig::default()).await;
    h.push_fault(Fault::eof_after_events(4));
    let r = post(
        &h,
        "/v1/responses",
        json!({"model": "m", "input": "x", "stream": true}),
    )
    .await;
    let n = names(&r.events());
    assert_eq!(n.len(), 4);
    assert!(!n.contains(&"response.completed".to_owned()));
    assert!(!h.requests()[0].completed);
}

#[tokio::test]
async fn event_delay_makes_a_slow_stream() {
    let h = spawn(MockConfig::default()).await;
    h.push_fault(Fault::event_delay_ms(40));
    let t = Instant::now();
    let r = post(
        &h,
        "/v1/responses",
        json!({"model": "m", "input": "a b", "stream": true}),
    )
    .await;
    let n = r.events().len();
    assert!(n >= 9);
    assert!(t.elapsed() >= Duration::from_millis(40 * (n as u64 - 1)));
    assert_eq!(names(&r.events()).last().unwrap(), "response.completed");
}

#[tokio::test]
async fn http_control_routes_script_faults_config_and_reset() {
    let h = spawn(MockConfig::default()).await;
    let c = client();
    let r = send(
        c.post(h.url("/_mock/faults"))
            .json(&json!([{"status": 500}, {"status": 429, "retry_after": 2}, {"close": true}])),
    )
    .await;
    assert_eq!(r.json()["queued"], 3);
    let r = send(
        c.post(h.url("/_mock/faults"))
            .json(&json!({"drop_after_events": 2})),
    )
    .await;
    assert_eq!(r.json()["queued"], 4);
    let r = send(c.post(h.url("/_mock/faults")).json(&json!({"bogus": 1}))).await;
    assert_eq!(r.status, 400, "unknown fault fields are rejected");
    let listed = send(c.get(h.url("/_mock/faults"))).await.json();
    assert_eq!(listed[1], json!({"status": 429, "retry_after": 2}));
    assert_eq!(listed[2], json!({"close": true}));
    assert_eq!(send(c.delete(h.url("/_mock/faults"))).await.status, 204);
    assert!(h.pending_faults().is_empty());

    let r = send(
        c.post(h.url("/_mock/config"))
            .json(&json!({"output_tokens": 7})),
    )
    .await;
    assert_eq!(r.json()["output_tokens"], 7);
    assert_eq!(h.config().output_tokens, Some(7));

    let r = post(&h, "/v1/responses", json!({"model": "m", "input": "x"})).await;
    assert_eq!(r.json()["usage"]["output_tokens"], 7);
    let recs = send(c.get(h.url("/_mock/requests"))).await.json();
    assert_eq!(recs.as_array().unwrap().len(), 1);
    assert_eq!(recs[0]["path"], "/v1/responses");
    assert_eq!(recs[0]["usage"]["output_tokens"], 7);
    assert_eq!(send(c.post(h.url("/_mock/reset"))).await.status, 204);
    assert!(h.requests().is_empty());
}

#[tokio::test]
async fn recording_keeps_headers_query_and_sums_usage() {
    let h = spawn(MockConfig::default()).await;
    let r = send(
        client()
            .get(h.url("/v1/models?client_version=0.169.0"))
            .header("originator", "codex_exec")
            .header("X-Custom", "a"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["models"], json!([]), "Codex's models key");
    assert_eq!(
        send(client().get(h.url("/v1/models")))
            .await
            .json()
            .get("models"),
        None
    );
    let mut totals = 0;
    for text in ["one", "two words"] {
        let r = send(
            client()
                .post(h.url("/v1/responses"))
                .header("session-id", "s-1")
                .json(&json!({"model": "m", "input": text, "stream": true})),
        )
        .await;
        let done = r.events().last().unwrap().json().unwrap();
        totals += done["response"]["usage"]["total_tokens"].as_u64().unwrap();
    }
    assert!(
        h.wait_until(Duration::from_secs(2), |r| r.len() == 4 && r[3].completed)
            .await
    );
    let recs = h.requests();
    assert_eq!(recs[0].query.as_deref(), Some("client_version=0.169.0"));
    assert_eq!(recs[0].header("Originator"), Some("codex_exec"));
    assert_eq!(recs[0].header("x-custom"), Some("a"));
    assert_eq!(recs[2].header("session-id"), Some("s-1"));
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(h.total_reported_usage().total_tokens, totals);
    assert_eq!(h.requests_to("/v1/responses").len(), 2);
}

#[tokio::test]
async fn concurrent_slow_streams_are_served_in_parallel() {
    // Each stream sends its first event at once and the next one ten minutes later, so eight streams that
    // have all sent their first event are eight streams open at the same time: a server that answered one
    // stream at a time would never hand the second one its first byte. No wall-clock bound is asserted;
    // the timeout only turns a serialising server into a failure instead of a hang.
    let h = spawn(MockConfig::default()).await;
    h.push_faults(std::iter::repeat_n(Fault::event_delay_ms(600_000), 8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let url = h.url("/v1/responses");
            tokio::spawn(async move {
                let mut r = client()
                    .post(url)
                    .json(&json!({"model": "m", "input": format!("n{i}"), "stream": true}))
                    .send()
                    .await
                    .unwrap();
                let first = r.chunk().await.unwrap().unwrap();
                (r, first)
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        let (r, first) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a stream got no first event while others were open: streams are serialised")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&first).contains("response.created"),
            "{first:?}"
        );
        open.push(r);
    }
    let recorded = h.requests_to("/v1/responses");
    assert_eq!(recorded.len(), 8);
    assert!(
        recorded.iter().all(|r| r.events_sent >= 1 && !r.completed),
        "{recorded:?}"
    );
    drop(open);
}
